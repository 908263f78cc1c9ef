//! The NetFlow v5/v9 and IPFIX collector (`listen.netflow`): flows that
//! routers, firewalls and taps (through a flow meter such as softflowd)
//! saw, judged by the same policy as the gateway's own flows and written
//! as `listener: netflow` flow records through the record stage. Flows
//! from a zone's host to an outside address that did not pass a Sluice
//! gateway (`netflow.gateways`) raise `bypass` alerts.
//!
//! It must not dial, block or enforce anything: it only sees.
//!
//! # Layout
//!
//! - `wire`: the pure decoder of datagrams (templates per exporter and
//!   observation domain, expiry, options templates for sampling), bounded
//!   and fuzzed.
//! - `judge`: one flow → the zone's host, the policy's decision, the
//!   record, the bypass alert; pure.
//! - `collector`: the handler `sluice_serve::run_udp` calls, the exporter
//!   allowlist and the metrics.

#![warn(missing_docs)]

mod collector;
mod judge;
pub mod wire;

pub use collector::{Collector, PolicyNow};
pub use judge::{Decisions, Judged, Names, judge, judge_cached};
pub use wire::{Decoder, Drop, Flow, Limits, Outcome};
