//! Sluice's filtering DNS forwarder (docs/design.md): it answers DNS for the
//! zones, lets a zone resolve only the names its policy could allow, strips
//! addresses the guard refuses from every answer (no rebinding through
//! Sluice's own resolver), remembers what it handed out as grants, and
//! records every query (the `dns-tunnel` detector of `sluice-detect` reads
//! those records, live and offline). It asks `sluice-policy`; it never decides itself.
//!
//! # Layout
//!
//! - `query`: client packets to checked questions (pure; fuzzed).
//! - `forward`: the [`Forwarder`] and the stages of one query.
//! - `filter`: an upstream answer as a zone may see it (pure).
//! - `cache`: upstream answers by name and type, honouring TTLs.
//! - `upstream`: UDP with TCP fallback, timeouts, failover.
//! - `grants`: (zone, address) → name, expiring, bounded.
//! - `ratelimit`: per-source token buckets.
//! - `server`: the UDP and TCP loops.

pub mod cache;
pub mod filter;
pub mod forward;
pub mod grants;
pub mod query;
pub mod ratelimit;
pub mod server;
pub mod upstream;

pub use forward::{Forwarder, PolicySource, Shared, Transport};
pub use grants::GrantStore;
pub use server::{serve_tcp, serve_udp, serve_udp_with};
