//! Sluice's data path: the [`Gateway`] — the five stages every listener
//! runs, implemented once (identify → decide → dial → tunnel → record) —
//! and the listeners, each a protocol adapter over it. This crate does not
//! know where records go or what detection does with them; accept loops,
//! caps and drain come from `sluice-serve`.
//!
//! # Layout
//!
//! - `gateway`: [`Gateway`], the stages and what they share.
//! - `flow`: [`Flow`], one flow's typed state, and its one record mapping.
//! - `refusal`: [`Refusal`], every way a flow is refused, with its side.
//! - `inspect`: the [`Inspector`] seam (first tunnel bytes, HTTP heads and
//!   body chunks) and its first inspector, [`inspect::SniMatch`].
//! - `route`: the [`Router`] seam (how a dial leaves), [`route::Direct`]
//!   and [`route::Routes`] (the configured routes: source-pinned,
//!   parents, failover, health).
//! - `parent`: the client side of HTTP CONNECT and SOCKS5 parents.
//! - `http`: the HTTP/1.1 forward proxy (CONNECT and absolute-form).
//! - `socks5`: the SOCKS5 proxy (RFC 1928 CONNECT, RFC 1929 user/password).
//! - `transparent`: connections redirected by nftables/iptables (Linux),
//!   judged by SNI, `Host` or the original destination.
//! - `auth`: proxy credentials against argon2 hashes, with a bounded cache.
//! - `dial`: resolve once, check every address, happy eyeballs.
//! - `relay`: byte-counting bidirectional copy with idle timeout (splice).
//! - `tls`: ClientHello SNI parsing.
//! - `proxy_protocol`: PROXY protocol v1/v2 header parsing (pure).
//! - `sockopt`: `SO_ORIGINAL_DST`, `SO_MARK`, `SO_BINDTODEVICE` behind
//!   safe wrappers.

pub mod auth;
pub mod content;
pub mod dial;
pub mod flow;
pub mod gateway;
pub mod http;
pub mod inspect;
pub mod intercept;
pub mod parent;
pub mod proxy_protocol;
pub mod refusal;
pub mod relay;
pub mod route;
pub mod sockopt;
pub mod socks5;
#[cfg(target_os = "linux")]
pub mod splice;
mod timed;
pub mod tls;
pub mod transparent;

use std::{net::IpAddr, sync::Arc};

use sluice_policy::Policy;

pub use auth::{Authenticator, Users};
pub use dial::Dialer;
pub use flow::Flow;
pub use gateway::Gateway;
pub use inspect::{Inspection, Inspector};
pub use refusal::{Refusal, Side};
pub use route::{Route, Router, Routes};

/// DNS-derived grants (docs/design.md, the DNS forwarder): addresses that a
/// zone's clients learned from an allowed DNS answer, so that a redirected
/// connection without a name on the wire (`tcp`) can be judged by the name
/// it was resolved from. The binary adapts the DNS forwarder's store.
pub trait Grants: Send + Sync {
    /// The name whose answer gave `ip` to clients of `zone`, if a grant
    /// for it is still live.
    fn lookup(&self, zone: &str, ip: IpAddr) -> Option<String>;
}

/// One policy version and what was derived from the same file.
pub struct Version {
    /// The compiled policy.
    pub policy: Arc<Policy>,
    /// Users and their argon2 hashes.
    pub users: Arc<Users>,
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Version")
            .field("policy", &self.policy.hash())
            .field("users", &self.users.0.len())
            .finish()
    }
}
