//! Serving: the part every listener shares before its protocol begins —
//! binding with a deep accept queue, the TCP accept loop and the UDP
//! receive loop, the connection caps, and graceful drain. In the manner of
//! mini-redis's `server::run(listener, shutdown)`: the caller binds (tests
//! bind port 0), hands the socket and a handler to [`run_tcp`] or
//! [`run_udp`], and the loop ends when the drain begins; work already
//! admitted holds a [`drain::Active`] guard, and [`Drain::wait_idle`]
//! completes when the last guard drops (no polling).
//!
//! This crate knows nothing of policies, records or protocols: HTTP,
//! SOCKS5, transparent, DNS, the admin server and (later) the NetFlow
//! collector all run on it.
//!
//! # Layout
//!
//! - `tcp`: [`bind`], [`run_tcp`] (admission by the caps, accept backoff).
//! - `cores`: [`Cores`], a current-thread runtime a core, and
//!   [`run_tcp_cores`], a TCP listener accepted on each through a
//!   descriptor of its own.
//! - `udp`: [`run_udp`] (inline answers, bounded work in flight).
//! - `limits`: [`ConnLimiter`], caps in total and per source address.
//! - `drain`: [`Drain`], begin / stop / wait for idle.

pub mod cores;
pub mod drain;
pub mod limits;
pub mod tcp;
pub mod udp;

pub use cores::{Cores, run_tcp_cores};
pub use drain::{Active, Drain};
pub use limits::{ConnLimiter, Slot};
pub use tcp::{BACKLOG, bind, fd_exhausted, run_tcp, run_tcp_with};
pub use udp::{Datagram, run_udp};
