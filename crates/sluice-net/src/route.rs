//! The `Router` seam: how a dial leaves. [`Direct`] sends every flow
//! straight out from this host; [`Routes`] implements the configuration's
//! `routes`: each flow leaves by its allow rule's `route`, else its zone's,
//! else the built-in `direct`, and a route's hops — `direct` (from a pinned
//! source address or interface), HTTP `CONNECT` or SOCKS5 parents — are
//! tried in order (`failover`) or by weight (`weighted`). The chosen hop is
//! the record's `route`: the route's name, or `name/host:port` of the
//! parent used.
//!
//! Through a parent, the dial stage has already resolved and checked every
//! address; the parent is asked for a checked IP address, never the name
//! ([`crate::parent`]).
//!
//! Health: every parent gets a TCP connect each `health_check.interval`
//! (a task per route, ending when a reload drops the route). A parent that
//! fails it, or [`EJECT_AFTER`] dials in a row, is passed over until a
//! check succeeds; when every hop is down they are all tried anyway, in
//! order, rather than failing without trying.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use sluice_observe::Metrics;
use sluice_policy::{
    Decision,
    model::{HealthCheck, Hop, HopKind, RouteDef, Select},
};
use tokio::net::TcpStream;

use crate::{
    dial::{Bind, DialError, Dialed, Dialer},
    flow::Flow,
    parent::{self, Credentials, ParentError},
};

/// Dial failures in a row that eject a parent until its next good check.
pub const EJECT_AFTER: u32 = 3;

/// How a dial leaves.
#[derive(Debug, Clone)]
pub enum Via {
    /// A connection from this host to the destination's address.
    Direct,
    /// By a configured route's hops.
    Hops(Arc<RouteSet>),
    /// The policy names a route this router does not know (a reload in
    /// between): refused, never sent out another way.
    Missing,
}

/// A route chosen for one flow.
#[derive(Debug, Clone)]
pub struct Route {
    /// The name recorded in the flow's `route` (a parent hop adds
    /// `/host:port` to it once dialed).
    pub name: Arc<str>,
    /// How it leaves.
    pub via: Via,
}

/// Chooses the route of each dial. Called once per dial, after the policy
/// allowed the flow and before anything is connected; must not block.
pub trait Router: Send + Sync {
    /// The route for `flow`.
    fn route(&self, flow: &Flow) -> Route;
}

/// Every flow leaves directly (the default without `routes`).
#[derive(Debug, Clone)]
pub struct Direct {
    route: Route,
}

impl Default for Direct {
    fn default() -> Direct {
        Direct {
            route: Route {
                name: Arc::from("direct"),
                via: Via::Direct,
            },
        }
    }
}

impl Router for Direct {
    fn route(&self, _: &Flow) -> Route {
        self.route.clone()
    }
}

/// The configured routes, swapped whole on reload; parents keep their
/// health across a reload that keeps them.
pub struct Routes {
    table: ArcSwap<HashMap<Arc<str>, Arc<RouteSet>>>,
    direct: Route,
    metrics: Arc<Metrics>,
    /// `SO_MARK` for health-check sockets, as the dialer marks the rest.
    mark: Option<u32>,
}

/// One configured route, compiled.
pub struct RouteSet {
    name: Arc<str>,
    hops: Vec<HopState>,
    select: Select,
    bind: Bind,
    check: HealthCheck,
    /// Turns of `select: weighted`.
    turn: AtomicUsize,
}

/// One hop and how it has been doing.
struct HopState {
    hop: Hop,
    /// The record's `route` when this hop carried the flow.
    label: Arc<str>,
    /// `host:port`, or `direct`: the metrics' `hop` label.
    target: Arc<str>,
    creds: Option<Credentials>,
    health: Arc<Health>,
}

/// A parent's health, shared by the versions of its route.
#[derive(Default)]
struct Health {
    down: AtomicBool,
    fails: AtomicU32,
}

impl std::fmt::Debug for RouteSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteSet")
            .field("name", &self.name)
            .field("hops", &self.hops.len())
            .finish()
    }
}

// === impl Routes ===

impl Routes {
    /// Routes as `defs` configure them, counted in `metrics`; health
    /// checks start on the current tokio runtime, their sockets marked
    /// with `mark` (`listen.transparent_mark`) like every dialed one.
    pub fn new(defs: &[RouteDef], mark: Option<u32>, metrics: Arc<Metrics>) -> Arc<Routes> {
        let routes = Arc::new(Routes {
            table: ArcSwap::from_pointee(HashMap::new()),
            direct: Direct::default().route,
            metrics,
            mark,
        });
        routes.update(defs);
        routes
    }

    /// Installs the routes of a reloaded configuration. A parent that stays
    /// (same route, same hop) keeps its health; checks of dropped routes
    /// stop at their next tick.
    pub fn update(&self, defs: &[RouteDef]) {
        let old = self.table.load_full();
        let mut table = HashMap::with_capacity(defs.len());
        for d in defs {
            let name: Arc<str> = Arc::from(d.name.as_str());
            let kept = old.get(&name);
            let hops = d
                .via
                .iter()
                .map(|hop| {
                    let target: Arc<str> = Arc::from(hop.target());
                    let health = kept
                        .and_then(|k| {
                            k.hops
                                .iter()
                                .find(|h| h.hop.kind == hop.kind && h.target == target)
                        })
                        .map_or_else(Arc::default, |h| h.health.clone());
                    HopState {
                        label: match hop.kind {
                            HopKind::Direct => name.clone(),
                            _ => Arc::from(format!("{name}/{target}")),
                        },
                        target,
                        creds: hop.user.as_ref().map(|u| Credentials {
                            user: u.clone(),
                            password: hop.password.clone().unwrap_or_default(),
                        }),
                        hop: hop.clone(),
                        health,
                    }
                })
                .collect();
            let set = Arc::new(RouteSet {
                name: name.clone(),
                hops,
                select: d.select,
                bind: Bind {
                    source: d.source,
                    interface: d.interface.as_deref().map(Arc::from),
                },
                check: d.health_check.clone(),
                turn: AtomicUsize::new(0),
            });
            for h in &set.hops {
                self.metrics
                    .route_up(&set.name, &h.target, !h.health.down.load(Ordering::Relaxed));
            }
            if set.hops.iter().any(|h| h.hop.kind != HopKind::Direct) {
                tokio::spawn(health_checks(
                    Arc::downgrade(&set),
                    self.mark,
                    self.metrics.clone(),
                ));
            }
            table.insert(name, set);
        }
        self.table.store(Arc::new(table));
    }

    /// The route named `name`, if configured.
    pub fn get(&self, name: &str) -> Option<Arc<RouteSet>> {
        self.table.load().get(name).cloned()
    }
}

impl Router for Routes {
    fn route(&self, flow: &Flow) -> Route {
        let Some(name) = flow.decision().and_then(|d| flow.policy().route_for(d)) else {
            return self.direct.clone();
        };
        if &**name == "direct" {
            return self.direct.clone();
        }
        match self.table.load().get(name) {
            Some(set) => Route {
                name: name.clone(),
                via: Via::Hops(set.clone()),
            },
            None => Route {
                name: name.clone(),
                via: Via::Missing,
            },
        }
    }
}

impl Router for Arc<Routes> {
    fn route(&self, flow: &Flow) -> Route {
        Routes::route(self, flow)
    }
}

// === impl RouteSet ===

impl RouteSet {
    /// The route's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The order hops are tried in for one dial: those up, by `select`;
    /// when none is up, every hop in written order.
    fn order(&self) -> Vec<usize> {
        let up: Vec<usize> = (0..self.hops.len())
            .filter(|&i| !self.hops[i].health.down.load(Ordering::Relaxed))
            .collect();
        if up.is_empty() {
            return (0..self.hops.len()).collect();
        }
        match self.select {
            Select::Failover => up,
            Select::Weighted => {
                let total: usize = up.iter().map(|&i| self.hops[i].hop.weight as usize).sum();
                let mut k = self.turn.fetch_add(1, Ordering::Relaxed) % total.max(1);
                let first = up
                    .iter()
                    .position(|&i| {
                        let w = self.hops[i].hop.weight as usize;
                        if k < w {
                            return true;
                        }
                        k -= w;
                        false
                    })
                    .unwrap_or(0);
                let mut order = up;
                order.rotate_left(first);
                order
            }
        }
    }

    /// Connects to vetted addresses by this route's hops, trying the next
    /// hop when one fails, all within the dial stage's deadline. Returns
    /// the record's `route` for the hop that carried (or last failed).
    pub(crate) async fn dial(
        &self,
        dialer: &Dialer,
        metrics: &Metrics,
        decision: Decision,
        allowed: &[IpAddr],
        port: u16,
        started: Instant,
    ) -> (Result<Dialed, DialError>, Arc<str>) {
        let mut last: Option<(DialError, Arc<str>)> = None;
        let deadline = started + dialer.connect_timeout();
        for i in self.order() {
            if Instant::now() >= deadline {
                break;
            }
            let h = &self.hops[i];
            let r = match h.hop.kind {
                HopKind::Direct => {
                    dialer
                        .connect(decision.clone(), allowed, port, &self.bind, started)
                        .await
                }
                _ => self
                    .through_parent(h, dialer, &decision, allowed, port, started, deadline)
                    .await
                    .map_err(|(e, broken)| {
                        if broken {
                            self.failed(h, metrics);
                        }
                        e
                    }),
            };
            metrics.route_dial(&self.name, &h.target, r.is_ok());
            match r {
                Ok(d) => {
                    if h.hop.kind != HopKind::Direct {
                        h.health.fails.store(0, Ordering::Relaxed);
                    }
                    return (Ok(d), h.label.clone());
                }
                // Sluice's own failure: no other hop would do better.
                Err(e @ DialError::NoDescriptors { .. }) => return (Err(e), h.label.clone()),
                Err(e) => {
                    tracing::debug!(route = %self.name, hop = %h.target, error = %e, "hop failed; trying the next");
                    last = Some((e, h.label.clone()));
                }
            }
        }
        match last {
            Some((e, label)) => (Err(e), label),
            None => (
                Err(DialError::Timeout(
                    dialer.connect_timeout(),
                    Box::new(decision),
                )),
                self.name.clone(),
            ),
        }
    }

    /// One parent: connect to it, ask it for each vetted address in turn
    /// until one answers. The error says whether the parent itself broke
    /// (which counts towards its ejection and moves on to the next hop).
    #[allow(clippy::too_many_arguments)]
    async fn through_parent(
        &self,
        h: &HopState,
        dialer: &Dialer,
        decision: &Decision,
        allowed: &[IpAddr],
        port: u16,
        started: Instant,
        deadline: Instant,
    ) -> Result<Dialed, (DialError, bool)> {
        let timed_out = || {
            (
                DialError::Timeout(dialer.connect_timeout(), Box::new(decision.clone())),
                true,
            )
        };
        let broken = |addr: SocketAddr, msg: String| {
            (
                DialError::Connect {
                    addr,
                    msg: format!("parent {}: {msg}", h.target),
                    kind: std::io::ErrorKind::ConnectionRefused,
                    decision: Box::new(decision.clone()),
                },
                true,
            )
        };
        let parent_addr = tokio::time::timeout_at(deadline.into(), parent_address(&h.hop))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| broken(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), h.hop.port), e))?;
        let mut last = None;
        for &ip in allowed {
            let target = SocketAddr::new(ip, port);
            let attempt = async {
                let mut s = dialer
                    .connect_one(parent_addr, &self.bind)
                    .await
                    .map_err(|e| ParentError::Broken(format!("cannot connect: {e}")))?;
                match h.hop.kind {
                    HopKind::Socks5 => {
                        parent::socks5_connect(&mut s, target, h.creds.as_ref()).await?;
                    }
                    _ => parent::http_connect(&mut s, target, h.creds.as_ref()).await?,
                }
                Ok::<TcpStream, ParentError>(s)
            };
            match tokio::time::timeout_at(deadline.into(), attempt).await {
                Err(_) => return Err(timed_out()),
                Ok(Ok(stream)) => {
                    return Ok(Dialed {
                        stream,
                        peer: target,
                        decision: decision.clone(),
                        elapsed: started.elapsed(),
                    });
                }
                Ok(Err(ParentError::Broken(msg))) => return Err(broken(parent_addr, msg)),
                Ok(Err(ParentError::Unreachable { msg, kind })) => {
                    last = Some(DialError::Connect {
                        addr: target,
                        msg: format!("via parent {}: {msg}", h.target),
                        kind,
                        decision: Box::new(decision.clone()),
                    });
                }
            }
        }
        Err((
            last.unwrap_or_else(|| {
                DialError::Denied(Box::new(decision.deny_with(
                    sluice_policy::ids::DEFAULT,
                    "no address left to ask the parent for",
                )))
            }),
            false,
        ))
    }

    /// A parent failed a dial: ejected after [`EJECT_AFTER`] in a row.
    fn failed(&self, h: &HopState, metrics: &Metrics) {
        let n = h.health.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= EJECT_AFTER && !h.health.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(route = %self.name, parent = %h.target, fails = n, "parent ejected after failed dials; back after a good health check");
            metrics.route_up(&self.name, &h.target, false);
        }
    }
}

/// Where a parent listens: its address, or its name resolved (by the
/// system resolver: a parent is the operator's, not a destination).
async fn parent_address(hop: &Hop) -> Result<SocketAddr, String> {
    if let Ok(ip) = hop.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, hop.port));
    }
    tokio::net::lookup_host((hop.host.as_str(), hop.port))
        .await
        .map_err(|e| format!("cannot resolve the parent {}: {e}", hop.host))?
        .next()
        .ok_or_else(|| format!("the parent {} has no address", hop.host))
}

/// A route's active checks: every parent, every interval, a TCP connect
/// within the timeout. Ends when the route (or the dialer) is dropped.
async fn health_checks(set: Weak<RouteSet>, mark: Option<u32>, metrics: Arc<Metrics>) {
    let Some(interval) = set.upgrade().map(|s| s.check.interval) else {
        return;
    };
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(set) = set.upgrade() else {
            return;
        };
        let checks = set
            .hops
            .iter()
            .filter(|h| h.hop.kind != HopKind::Direct)
            .map(|h| {
                let bind = &set.bind;
                let timeout = set.check.timeout;
                async move {
                    let ok = match tokio::time::timeout(timeout, parent_address(&h.hop)).await {
                        Ok(Ok(a)) => matches!(
                            tokio::time::timeout(
                                timeout,
                                crate::dial::connect_marked(a, mark, bind)
                            )
                            .await,
                            Ok(Ok(_))
                        ),
                        _ => false,
                    };
                    (h, ok)
                }
            });
        for (h, ok) in futures_join(checks).await {
            let was_down = h.health.down.swap(!ok, Ordering::Relaxed);
            if ok {
                h.health.fails.store(0, Ordering::Relaxed);
            }
            if was_down == ok {
                if ok {
                    tracing::info!(route = %set.name, parent = %h.target, "parent up: health check passed");
                } else {
                    tracing::warn!(route = %set.name, parent = %h.target, "parent down: health check failed");
                }
                metrics.route_up(&set.name, &h.target, ok);
            }
        }
    }
}

/// Runs the checks of one route side by side (a handful of parents).
async fn futures_join<'a, F>(checks: impl Iterator<Item = F>) -> Vec<(&'a HopState, bool)>
where
    F: std::future::Future<Output = (&'a HopState, bool)>,
{
    let mut pending: Vec<std::pin::Pin<Box<F>>> = checks.map(Box::pin).collect();
    let mut done = Vec::with_capacity(pending.len());
    std::future::poll_fn(|cx| {
        pending.retain_mut(|f| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(r) => {
                done.push(r);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(target: &str, weight: u32) -> Hop {
        let (host, port) = target.rsplit_once(':').unwrap();
        Hop {
            kind: HopKind::Http,
            host: host.to_owned(),
            port: port.parse().unwrap(),
            user: None,
            password: None,
            weight,
        }
    }

    fn routes(select: Select) -> Arc<RouteSet> {
        let def = RouteDef {
            name: "r".into(),
            via: vec![hop("192.0.2.1:3128", 3), hop("192.0.2.2:3128", 1)],
            select,
            ..RouteDef::default()
        };
        // The health-check task is spawned but never runs: this test
        // never yields to it.
        Routes::new(&[def], None, Arc::new(Metrics::new()))
            .get("r")
            .unwrap()
    }

    #[tokio::test]
    async fn weighted_turns_follow_the_weights_and_failover_the_order() {
        let set = routes(Select::Weighted);
        let firsts: Vec<usize> = (0..8).map(|_| set.order()[0]).collect();
        assert_eq!(firsts.iter().filter(|&&i| i == 0).count(), 6);
        assert_eq!(firsts.iter().filter(|&&i| i == 1).count(), 2);
        // Every turn still lists the other hop to fall back on.
        assert!((0..4).all(|_| set.order().len() == 2));
        // A hop that is down is passed over; with all down, all are tried.
        set.hops[0].health.down.store(true, Ordering::Relaxed);
        assert!((0..4).all(|_| set.order() == [1]));
        set.hops[1].health.down.store(true, Ordering::Relaxed);
        assert_eq!(set.order(), [0, 1]);

        let set = routes(Select::Failover);
        assert!((0..4).all(|_| set.order() == [0, 1]));
    }

    #[tokio::test]
    async fn failed_dials_eject_a_parent_after_three_in_a_row() {
        let set = routes(Select::Failover);
        let metrics = Metrics::new();
        for _ in 0..EJECT_AFTER - 1 {
            set.failed(&set.hops[0], &metrics);
        }
        assert_eq!(set.order(), [0, 1]);
        set.failed(&set.hops[0], &metrics);
        assert_eq!(set.order(), [1]);
    }
}
