//! Content scanners for Sluice's inspection: pure DLP detectors and the
//! clients of external scanners (clamd, ICAP). This crate knows nothing of
//! listeners, flows or policies: `sluice-net`'s content inspector decides
//! what to scan and what a verdict means; this crate only scans.
//!
//! # Layout
//!
//! - `dlp`: [`Dlp`] (built-in detectors and custom patterns, compiled
//!   once), [`dlp::Stream`] (a body in chunks, bounded memory, matches
//!   across chunk boundaries found), [`HashKey`] (the findings' keyed hash);
//!   `dlp::reference`, the first, full-scan scanner, kept only as what the
//!   differential tests and the bench compare with.
//! - `clamd`: [`Clamd`], `INSTREAM` and `PING` over a unix socket or TCP.
//! - `icap`: [`icap::Service`], RFC 3507 `REQMOD` / `RESPMOD` with preview,
//!   `204` and a connection pool.

pub mod clamd;
pub mod dlp;
pub mod icap;

pub use clamd::Clamd;
pub use dlp::{Dlp, HashKey};
