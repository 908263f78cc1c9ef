//! Dev-only helpers for Sluice's tests, shared instead of copied between
//! test files: start the real `sluice` binary on port 0 with a
//! configuration, read its flow records, run real clients and small local
//! origins and DNS servers. Nothing here is used by the gateway itself, and
//! nothing here asserts what a test expects (but [`assert_fields`], which
//! only names the field that differs).
//!
//! # Layout
//!
//! - `sluice`: [`Sluice`], the binary as a child process: its listeners,
//!   records, stderr, signals and admin probes.
//! - `http`: raw HTTP/1.1 exchanges over blocking sockets
//!   ([`send_raw`], [`connect_tunnel`], [`RawResponse`]).
//! - `clients`: real clients as child processes ([`curl`],
//!   [`python_requests`]), time-bounded ([`output_within`]) and with proxy
//!   variables cleared ([`client_command`]); proxy credentials
//!   ([`argon2_hash`]).
//! - `origin`: an HTTP [`Origin`] that counts what it served, and a test CA
//!   ([`make_certs`]).
//! - `dns`: the one DNS test server, [`FixtureDns`], and what tunnelled
//!   data looks like ([`random_label`]).
//! - `nats`: a real `nats-server` with JetStream, [`NatsServer`], that a
//!   test can kill and restart (the flow bus tests).
//! - `receivers`: what receives alerts: a [`WebhookReceiver`] and a
//!   [`SyslogReceiver`] (UDP or TCP).
//! - `geo`: country databases ([`write_mmdb`]) and [`GeoScenario`], an
//!   upload that leaves its zone's countries.
//! - `scanners`: real content scanners, [`Clamd`] (one test signature)
//!   and [`CIcap`] (virus_scan over that clamd), and [`require`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod clients;
mod dns;
mod geo;
mod http;
mod nats;
mod origin;
mod receivers;
mod scanners;
mod sluice;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

pub use clients::{
    CLIENT_TIMEOUT, Curl, KillOnDrop, argon2_hash, client_command, curl, header_in, output_within,
    python_requests, spawn_with_port,
};
pub use dns::{FixtureDns, random_label, silent_udp};
pub use geo::{GeoScenario, write_mmdb};
pub use http::{
    RawResponse, connect_tunnel, connect_with_timeout, get_on, get_via, get_via_from,
    post_via_from, read_response, send_raw,
};
pub use nats::NatsServer;
pub use origin::{Certs, Origin, TlsOrigin, make_certs};
pub use receivers::{Post, SyslogReceiver, WebhookReceiver};
pub use scanners::{CIcap, Clamd, require};
pub use sluice::{Sluice, assert_fields, finding};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates a unique directory.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "sluice-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `f` every 25 ms until it is true or `timeout` passes; whether it
/// became true.
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
