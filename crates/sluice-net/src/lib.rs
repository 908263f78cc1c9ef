//! Sluice's data path: listeners, the shared stages they run, and limits.
//!
//! Every listener parses only its protocol and maps outcomes to its
//! protocol's answers; the stages are shared: identify (`auth`, zone from the
//! policy) → decide (`sluice-policy`) → dial (`dial`) → relay (`relay`) →
//! record (`Recorder`). This crate does not know where records go or what
//! detection does with them.
//!
//! # Layout
//!
//! - `http`: the HTTP/1.1 forward proxy (CONNECT and absolute-form).
//! - `socks5`: the SOCKS5 proxy (RFC 1928 CONNECT, RFC 1929 user/password).
//! - `transparent`: connections redirected by nftables/iptables (Linux),
//!   judged by SNI, `Host` or the original destination.
//! - `sockopt`: `SO_ORIGINAL_DST` and `SO_MARK` behind safe wrappers.
//! - `accept`: the accept loop every TCP listener shares (caps, drain).
//! - `tunnel`: what every tunnel shares after the dial (fronting check,
//!   relay outcome into the record).
//! - `auth`: proxy credentials against argon2 hashes, with a bounded cache.
//! - `dial`: resolve once, check every address, happy eyeballs.
//! - `relay`: byte-counting bidirectional copy with idle timeout.
//! - `tls`: ClientHello SNI parsing for domain-fronting checks.
//! - `limits`: connection caps, total and per source.

pub mod accept;
pub mod auth;
pub mod dial;
pub mod http;
pub mod limits;
pub mod relay;
pub mod sockopt;
pub mod socks5;
#[cfg(target_os = "linux")]
pub mod splice;
mod timed;
pub mod tls;
pub mod transparent;
pub mod tunnel;

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use sluice_observe::{Alert, FlowRecord, Metrics};
use sluice_policy::{Policy, model::Limits};

use crate::limits::ConnLimiter;
use tokio::sync::watch;

pub use auth::{Authenticator, Users};
pub use dial::Dialer;

/// Where finished flow records go (the binary connects this to a sink).
pub trait Recorder: Send + Sync {
    /// Takes one finished record. Must not block.
    fn record(&self, r: FlowRecord);

    /// Takes one alert raised on the data path (the DNS forwarder's
    /// tunnelling signal). Must not block. By default it is dropped.
    fn alert(&self, _a: Alert) {}
}

/// DNS-derived grants (DESIGN.md, the DNS forwarder): addresses that a
/// zone's clients learned from an allowed DNS answer, so that a redirected
/// connection without a name on the wire (`tcp`) can be judged by the name
/// it was resolved from. Implemented by the DNS forwarder.
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

/// Everything the listeners share.
pub struct Ctx {
    /// The policy in force, swapped atomically on reload.
    pub current: ArcSwap<Version>,
    /// The dial stage.
    pub dialer: Dialer,
    /// Proxy credential checks.
    pub auth: Authenticator,
    /// Limits read at start.
    pub limits: Limits,
    /// Open client connections, shared by every listener (the caps are totals).
    pub limiter: Arc<ConnLimiter>,
    /// The record stage.
    pub recorder: Arc<dyn Recorder>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// DNS-derived grants, when a DNS forwarder provides them.
    grants: Option<Arc<dyn Grants>>,
    drain: Drain,
}

impl Ctx {
    /// A context for `version` with the given stages.
    pub fn new(
        version: Version,
        dialer: Dialer,
        recorder: Arc<dyn Recorder>,
        metrics: Arc<Metrics>,
    ) -> Ctx {
        let limits = version.policy.config().limits.clone();
        Ctx {
            current: ArcSwap::from_pointee(version),
            dialer,
            auth: Authenticator::new(),
            limiter: ConnLimiter::new(limits.max_connections, limits.max_connections_per_source),
            limits,
            recorder,
            metrics,
            grants: None,
            drain: Drain::new(),
        }
    }

    /// Judges `tcp` flows by DNS-derived grants from now on (set before the
    /// context is shared).
    pub fn set_grants(&mut self, grants: Arc<dyn Grants>) {
        self.grants = Some(grants);
    }

    /// The DNS-derived grants, if any.
    pub fn grants(&self) -> Option<&Arc<dyn Grants>> {
        self.grants.as_ref()
    }

    /// The dial stage with its latency metric; listeners dial through here.
    pub async fn dial(
        &self,
        policy: &Policy,
        decision: &sluice_policy::Decision,
        dest: &sluice_policy::Destination,
        port: u16,
    ) -> Result<dial::Dialed, dial::DialError> {
        let dialed = self.dialer.dial(policy, decision, dest, port).await?;
        self.metrics.observe_connect(dialed.elapsed);
        Ok(dialed)
    }

    /// The drain state shared by listeners and the run loop.
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    /// The record stage: stamps the end time and hands the record over.
    pub fn emit(&self, mut rec: FlowRecord) {
        rec.finish(std::time::SystemTime::now());
        self.recorder.record(rec);
    }
}

/// Graceful drain: stop accepting, let work finish, then stop tunnels.
pub struct Drain {
    draining: AtomicBool,
    active: Arc<AtomicUsize>,
    begin: watch::Sender<bool>,
    stop: watch::Sender<bool>,
}

/// Counts one connection or tunnel as active while held.
pub struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drain {
    fn new() -> Drain {
        Drain {
            draining: AtomicBool::new(false),
            active: Arc::new(AtomicUsize::new(0)),
            begin: watch::channel(false).0,
            stop: watch::channel(false).0,
        }
    }

    /// Whether a drain has begun (`/readyz` answers 503).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Begins draining: listeners stop accepting and close idle keep-alives.
    pub fn begin(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.begin.send_replace(true);
    }

    /// Stops every tunnel still open (the drain deadline passed).
    pub fn stop_all(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves when draining begins.
    pub fn began(&self) -> impl Future<Output = ()> + Send + 'static {
        wait_true(self.begin.subscribe())
    }

    /// Resolves when tunnels must stop.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        wait_true(self.stop.subscribe())
    }

    /// Marks one unit of work active until the guard drops.
    pub fn active(&self) -> Active {
        self.active.fetch_add(1, Ordering::SeqCst);
        Active(self.active.clone())
    }

    /// Connections and tunnels still open.
    pub fn active_count(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Waits until nothing is active or `timeout` passes; true if idle.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.active_count() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
