//! The [`Gateway`]: the five stages every listener runs, implemented once —
//! identify → decide → dial → tunnel → record — and the state they share
//! (the policy in force, the dialer, credentials, limits, drain, the
//! recorder, the router and the inspectors). A listener is a protocol
//! adapter: it parses its protocol, calls these methods in order on a
//! [`Flow`], and maps a [`Refusal`] to its own answer.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Instant, SystemTime},
};

use arc_swap::ArcSwap;
use sluice_observe::{DialFailure, Listener, Metrics, Protocol, RecordSink};
use sluice_policy::{
    Decision, Destination, Mode, Pending, Request as PolicyRequest, Verdict, ids, model::Limits,
};
use sluice_serve::{ConnLimiter, Cores, Drain};
use tokio::net::TcpStream;

use crate::{
    Grants, Version,
    auth::{AuthOutcome, Authenticator},
    dial::{Bind, DialError, Dialed, Dialer},
    flow::Flow,
    inspect::{self, Inspection, Inspector, SniMatch, Subject},
    intercept::{self, Interceptor},
    proxy_protocol,
    refusal::Refusal,
    relay::{self, HelloCheck, Preread, Timeouts},
    route::{Direct, Route, Router, Via},
    tls::{Hello, parse_client_hello},
};

/// The stages and what they share.
pub struct Gateway {
    current: ArcSwap<Version>,
    dialer: Dialer,
    auth: Authenticator,
    limits: Limits,
    limiter: Arc<ConnLimiter>,
    drain: Arc<Drain>,
    recorder: Arc<dyn RecordSink>,
    metrics: Arc<Metrics>,
    grants: Option<Arc<dyn Grants>>,
    router: Arc<dyn Router>,
    inspectors: Vec<Arc<dyn Inspector>>,
    /// Those of `inspectors` that look at HTTP exchanges.
    http_inspectors: Vec<Arc<dyn Inspector>>,
    /// `listen.proxy_protocol_from`, read at start.
    proxy_from: Vec<ipnet::IpNet>,
    /// TLS interception (`inspect.ca`), when configured.
    interceptor: Option<Arc<Interceptor>>,
    /// The per-core runtimes the proxy listeners serve on (without them,
    /// on the runtime that calls their `serve`).
    cores: Option<Arc<Cores>>,
}

// === impl Gateway ===

impl Gateway {
    /// A gateway for `version`, dialing with `dialer` and recording to
    /// `recorder`; limits are read from `version` once (they need a
    /// restart). Routes are direct and the one inspector is [`SniMatch`].
    pub fn new(
        version: Version,
        dialer: Dialer,
        recorder: Arc<dyn RecordSink>,
        metrics: Arc<Metrics>,
    ) -> Gateway {
        let limits = version.policy.config().limits.clone();
        let proxy_from = version.policy.config().listen.proxy_protocol_from.clone();
        Gateway {
            current: ArcSwap::from_pointee(version),
            dialer,
            auth: Authenticator::new(),
            limiter: {
                let m = metrics.clone();
                ConnLimiter::with_hook(
                    limits.max_connections,
                    limits.max_connections_per_source,
                    move |full| {
                        m.connection_rejected(full == sluice_serve::limits::Full::PerSource)
                    },
                )
            },
            limits,
            drain: Arc::new(Drain::new()),
            recorder,
            metrics,
            grants: None,
            router: Arc::new(Direct::default()),
            inspectors: vec![Arc::new(SniMatch)],
            http_inspectors: Vec::new(),
            proxy_from,
            interceptor: None,
            cores: None,
        }
    }

    /// Intercepts the TLS of destinations that zones list under
    /// `inspect.tls` with `interceptor` (without one, nothing is).
    pub fn with_interceptor(mut self, interceptor: Arc<Interceptor>) -> Gateway {
        self.interceptor = Some(interceptor.clone());
        self.with_inspector(interceptor)
    }

    /// The interceptor, when `inspect.ca` is configured.
    pub fn interceptor(&self) -> Option<&Arc<Interceptor>> {
        self.interceptor.as_ref()
    }

    /// Judges `tcp` flows by DNS-derived grants from now on.
    pub fn with_grants(mut self, grants: Arc<dyn Grants>) -> Gateway {
        self.grants = Some(grants);
        self
    }

    /// Serves the proxy listeners (HTTP, SOCKS5, transparent) on `cores`:
    /// each accepts on every core, and a connection stays on the core that
    /// accepted it (`sluice_serve::cores`).
    pub fn with_cores(mut self, cores: Arc<Cores>) -> Gateway {
        self.cores = Some(cores);
        self
    }

    /// The per-core runtimes, when the listeners serve on them.
    pub fn cores(&self) -> Option<&Arc<Cores>> {
        self.cores.as_ref()
    }

    /// Chooses routes with `router` instead of [`Direct`].
    pub fn with_router(mut self, router: Arc<dyn Router>) -> Gateway {
        self.router = router;
        self
    }

    /// Adds an inspector after those already present.
    pub fn with_inspector(mut self, inspector: Arc<dyn Inspector>) -> Gateway {
        inspector.prepare(&self.current.load().policy);
        if inspector.inspects_http() {
            self.http_inspectors.push(inspector.clone());
        }
        self.inspectors.push(inspector);
        self
    }

    /// The policy version in force.
    pub fn version(&self) -> Arc<Version> {
        self.current.load_full()
    }

    /// Swaps in a new policy version (reload); flows already started keep
    /// theirs. Each inspector prepares for it first
    /// ([`Inspector::prepare`]).
    pub fn reload(&self, version: Version) {
        for i in &self.inspectors {
            i.prepare(&version.policy);
        }
        self.current.store(Arc::new(version));
    }

    /// The limits read at start.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The connection caps shared by every listener.
    pub fn limiter(&self) -> &Arc<ConnLimiter> {
        &self.limiter
    }

    /// The drain state.
    pub fn drain(&self) -> &Arc<Drain> {
        &self.drain
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What an accept loop calls when `accept` fails for want of a file
    /// descriptor: counts it in `sluice_fd_exhausted_total{listener}`.
    pub fn fd_exhausted_hook(&self, listener: Listener) -> impl Fn() + Clone + Send + 'static {
        let metrics = self.metrics.clone();
        move || metrics.fd_exhausted(listener)
    }

    /// The dialer (Sluice's own addresses are declared on it).
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// DNS-derived grants, when a DNS forwarder provides them.
    pub fn grants(&self) -> Option<&dyn Grants> {
        self.grants.as_deref()
    }

    /// The relay's clocks.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            idle: self.limits.idle_timeout,
            hello: self.limits.header_timeout,
        }
    }

    // === stage 0: a new flow ===

    /// A flow from `src`, judged by the policy in force now (draining is
    /// checked by [`Gateway::admit`]).
    pub fn start(&self, listener: Listener, protocol: Protocol, src: SocketAddr) -> Flow {
        Flow::new(self.version(), listener, protocol, src)
    }

    /// The client of a new connection from `peer`, before any protocol
    /// byte: from a `listen.proxy_protocol_from` address, the one its
    /// PROXY protocol header names (read within `limits.header_timeout`;
    /// v2 LOCAL and v1 `UNKNOWN` keep `peer`); from any other address,
    /// `peer`, unless the connection starts with a PROXY header. `None`:
    /// refused and recorded (`default/bad-request`); close the connection.
    ///
    /// `client_first`: the listener's clients speak first, so waiting for
    /// their first bytes costs nothing (HTTP, SOCKS5); the transparent
    /// listener checks the bytes it peeks itself.
    pub async fn proxied_client(
        &self,
        listener: Listener,
        protocol: Protocol,
        stream: &mut TcpStream,
        peer: SocketAddr,
        client_first: bool,
    ) -> Option<SocketAddr> {
        let refuse = |why: String| {
            let flow = self.start(listener, protocol, peer);
            self.refuse(flow, &Refusal::BadRequest(why));
            None
        };
        let timeout = self.limits.header_timeout;
        if self.proxy_trusted(peer) {
            let read = tokio::time::timeout(timeout, proxy_protocol::read_header(stream)).await;
            return match read {
                Ok(Ok(proxy_protocol::Header::Proxy { src, .. })) => Some(src),
                Ok(Ok(proxy_protocol::Header::Local)) => Some(peer),
                Ok(Err(e)) => refuse(format!("PROXY protocol header required from {peer}: {e}")),
                Err(_) => refuse(format!(
                    "PROXY protocol header required from {peer}: none within {timeout:?}"
                )),
            };
        }
        // With no balancer trusted, a header fails the listener's own
        // parser anyway (a bad request): no peek on every connection.
        if client_first && !self.proxy_from.is_empty() {
            let mut first = [0u8; 12];
            let n = tokio::time::timeout(timeout, stream.peek(&mut first)).await;
            if let Ok(Ok(n)) = n
                && proxy_protocol::starts_with_header(&first[..n])
            {
                return refuse(untrusted_header(peer));
            }
        }
        Some(peer)
    }

    /// Whether `peer` is in `listen.proxy_protocol_from`.
    pub fn proxy_trusted(&self, peer: SocketAddr) -> bool {
        self.proxy_from.iter().any(|n| n.contains(&peer.ip()))
    }

    /// Refuses new work once a drain has begun.
    pub fn admit(&self) -> Result<(), Refusal> {
        if self.drain.is_draining() {
            return Err(Refusal::Draining);
        }
        Ok(())
    }

    // === stage 1: identify ===

    /// Checks a `Proxy-Authorization` header (none is not a failure: the
    /// decision may then ask for credentials).
    pub async fn identify_header(
        &self,
        flow: &mut Flow,
        header: Option<&str>,
    ) -> Result<(), Refusal> {
        let users = flow.version().users.clone();
        let outcome = self.auth.check(&users, header, flow.src().ip()).await;
        self.identified(flow, outcome)
    }

    /// Checks a user name and password (SOCKS5, RFC 1929).
    pub async fn identify_password(
        &self,
        flow: &mut Flow,
        user: &[u8],
        pass: &[u8],
    ) -> Result<(), Refusal> {
        let users = flow.version().users.clone();
        let src = flow.src().ip();
        let outcome = match (std::str::from_utf8(user), std::str::from_utf8(pass)) {
            (Ok(u), Ok(p)) => self.auth.verify(&users, u, p, src).await,
            // No configured user name or argon2 hash input is anything else.
            _ => AuthOutcome::Failed(String::from_utf8_lossy(user).into_owned()),
        };
        self.identified(flow, outcome)
    }

    /// The outcome into the flow; a failed login (throttled ones too) is
    /// recorded with `default/auth-failed`, which the metrics count in
    /// `sluice_auth_failures_total{listener}`.
    fn identified(&self, flow: &mut Flow, outcome: AuthOutcome) -> Result<(), Refusal> {
        let refusal = match outcome {
            AuthOutcome::Missing => return Ok(()),
            AuthOutcome::User(u) => {
                flow.user = Some(u);
                return Ok(());
            }
            AuthOutcome::Malformed => Refusal::AuthFailed {
                user: None,
                retry_after: None,
            },
            AuthOutcome::Failed(user) => Refusal::AuthFailed {
                user: Some(user),
                retry_after: None,
            },
            AuthOutcome::Throttled { user, retry_after } => Refusal::AuthFailed {
                user: Some(user),
                retry_after: Some(retry_after),
            },
        };
        Err(refusal)
    }

    /// Sets the destination from what the client wrote; a host that is
    /// neither a name nor an address is refused.
    pub fn target(&self, flow: &mut Flow, host: &str, port: u16) -> Result<(), Refusal> {
        flow.port = Some(port);
        match Destination::parse(host) {
            Ok(d) => {
                flow.dest = Some(d);
                Ok(())
            }
            Err(e) => {
                flow.raw_dest = Some(host.to_owned());
                Err(Refusal::InvalidDestination(e.to_string()))
            }
        }
    }

    // === stage 2: decide ===

    /// Phase one on the flow's destination. Only a final denial refuses
    /// here: a name that no host rule matched is still pending on the
    /// zone's cidr rules, judged on its addresses when dialed.
    pub fn decide(&self, flow: &mut Flow) -> Result<(), Refusal> {
        let (Some(dest), Some(port)) = (&flow.dest, flow.port) else {
            return Err(Refusal::Internal("decide before target".into()));
        };
        let t0 = Instant::now();
        let d = flow.policy().decide(&PolicyRequest {
            src: flow.src().ip(),
            user: flow.user.as_deref(),
            dest,
            port,
        });
        self.metrics.observe_decision(t0.elapsed());
        self.settle(flow, d)
    }

    /// Applies a phase-one decision made elsewhere (the transparent
    /// listener judges by SNI, Host or grant) with the same outcome rules.
    pub fn settle(&self, flow: &mut Flow, d: Decision) -> Result<(), Refusal> {
        if d.auth_required {
            flow.apply(&d);
            return Err(Refusal::AuthRequired(d.reason));
        }
        if !d.passes() && d.pending == Pending::Nothing {
            flow.apply(&d);
            return Err(Refusal::Denied(Box::new(d)));
        }
        // Passing: moved into the flow, not copied.
        flow.apply_owned(d);
        Ok(())
    }

    // === stage 3: dial ===

    /// Resolves the flow's destination once, checks every address, and
    /// connects by the route the router chooses.
    pub async fn dial(&self, flow: &mut Flow) -> Result<TcpStream, Refusal> {
        let started = Instant::now();
        let addrs = self.resolve(flow).await?;
        self.dial_addrs(flow, &addrs, started).await
    }

    /// The flow's destination resolved (once), or an IP destination as is.
    ///
    /// A name that no rule allowed, only pending on `cidr` allow rules, and
    /// that gets no address is a denial (`default/unresolved`: the client
    /// is told 403, SOCKS5 `0x02`), not a resolver failure: nothing allowed
    /// it. A name some rule allowed keeps its allow and fails on the
    /// resolver's side (`error_kind: resolve`).
    pub async fn resolve(&self, flow: &mut Flow) -> Result<Vec<IpAddr>, Refusal> {
        let Some(dest) = &flow.dest else {
            return Err(Refusal::Internal("dial before target".into()));
        };
        let resolved = self.until_stopped(async { Ok(self.dialer.resolve(dest).await) });
        let e = match resolved.await? {
            Ok(addrs) => return Ok(addrs),
            Err(e) => e,
        };
        // A name only pending on cidr allow rules that got no address was
        // never allowed: default/unresolved. Enforced, that is the answer;
        // in report mode it is recorded as the would-be denial and the flow
        // still fails on the resolver's side (nothing could be dialed).
        if let (DialError::Resolve { host, msg }, Some(d)) = (&e, flow.decision()) {
            if d.pending == Pending::CidrAllow && d.verdict == Verdict::Deny {
                let why = format!(
                    "{host} did not resolve ({msg}), so no address could fall in a cidr allow rule"
                );
                let mut unresolved = d.deny_with(ids::UNRESOLVED, why);
                if d.enforced {
                    return Err(Refusal::Denied(Box::new(unresolved)));
                }
                unresolved.enforced = false;
                flow.apply(&unresolved);
            }
        }
        self.count_dial_failure(&e);
        Err(refusal_of(e))
    }

    /// `work`, unless the drain deadline passes first: then the flow is
    /// refused as draining (and so still recorded before exit).
    async fn until_stopped<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, Refusal>>,
    ) -> Result<T, Refusal> {
        tokio::select! {
            r = work => r,
            () = self.drain.stopped() => Err(Refusal::Draining),
        }
    }

    /// Checks and connects to addresses already resolved; `started` is
    /// when the dial stage began (for the connect-latency metric).
    pub async fn dial_addrs(
        &self,
        flow: &mut Flow,
        addrs: &[IpAddr],
        started: Instant,
    ) -> Result<TcpStream, Refusal> {
        let (Some(current), Some(port)) = (flow.decision(), flow.port) else {
            return Err(Refusal::Internal("dial before decide".into()));
        };
        // Resolved and checked here, whichever way the flow leaves: a
        // parent is asked for a checked address, never the name. The
        // route follows the decision on the addresses (a name's cidr rule
        // may name its own route). The flow's decision is borrowed, and
        // the dialed one moved into it below: two copies of a decision
        // (and of its reason) fewer a tunnel.
        let (decision, allowed) = match self.dialer.vet(flow.policy(), current, addrs, port) {
            Ok(v) => v,
            Err(e) => return Err(refusal_of(e)),
        };
        flow.apply(&decision);
        let Route { name, via } = self.router.route(flow);
        let dial = async {
            match via {
                Via::Direct => {
                    let r = self
                        .dialer
                        .connect(decision, &allowed, port, &Bind::default(), started)
                        .await;
                    Ok((r, name))
                }
                Via::Hops(set) => Ok(set
                    .dial(
                        &self.dialer,
                        &self.metrics,
                        decision,
                        &allowed,
                        port,
                        started,
                    )
                    .await),
                Via::Missing => Err(Refusal::Internal(format!(
                    "route `{name}` is not configured in the running router"
                ))),
            }
        };
        let (result, name) = self.until_stopped(dial).await?;
        match result {
            Ok(Dialed {
                stream,
                peer,
                decision,
                elapsed,
            }) => {
                self.metrics.observe_connect(elapsed);
                flow.apply_owned(decision);
                flow.peer = Some(peer.ip());
                flow.route = Some(name);
                Ok(stream)
            }
            Err(e) => {
                match &e {
                    DialError::Connect { decision, .. }
                    | DialError::Timeout(_, decision)
                    | DialError::NoDescriptors { decision, .. } => {
                        flow.apply(decision);
                        flow.route = Some(name);
                    }
                    DialError::Resolve { .. } | DialError::Denied(_) => {}
                }
                if matches!(e, DialError::NoDescriptors { .. }) {
                    self.metrics.fd_exhausted(flow.listener());
                }
                self.count_dial_failure(&e);
                Err(refusal_of(e))
            }
        }
    }

    /// Counts a failed dial in `sluice_dial_failures_total{kind}` (a denial
    /// of every address is a decision, not a failure).
    fn count_dial_failure(&self, e: &DialError) {
        let kind = match e {
            DialError::Resolve { .. } => DialFailure::Resolve,
            DialError::Connect { .. } => DialFailure::Connect,
            DialError::Timeout(..) => DialFailure::Timeout,
            DialError::NoDescriptors { .. } => DialFailure::NoDescriptors,
            DialError::Denied(_) => return,
        };
        self.metrics.dial_failed(kind);
    }

    /// The name of the route a flow would leave by (pooled connections are
    /// kept per route).
    pub fn route_name(&self, flow: &Flow) -> Arc<str> {
        self.router.route(flow).name
    }

    /// Whether a pooled connection to `peer`, made by `route` (the record's
    /// `route` of the flow that made it), may carry this flow under the
    /// flow's policy (it may have changed since the connection was made);
    /// applies the second phase's decision when it may.
    pub fn reuse(&self, flow: &mut Flow, peer: SocketAddr, route: Arc<str>) -> bool {
        let (Some(decision), Some(port)) = (flow.decision(), flow.port) else {
            return false;
        };
        match self.dialer.vet(flow.policy(), decision, &[peer.ip()], port) {
            Ok((d, _)) => {
                // Moved in, and the one it replaces moved back out if the
                // route differs: no copy of either (this runs per pooled
                // request).
                let before = flow.apply_owned(d);
                // Only a connection made by the route this flow would
                // take now (`route` is the name or `name/parent`).
                let now = self.router.route(flow).name;
                if route.split('/').next() != Some(&*now) {
                    if let Some(b) = before {
                        flow.apply_owned(b);
                    }
                    return false;
                }
                flow.peer = Some(peer.ip());
                flow.route = Some(route);
                true
            }
            Err(_) => false,
        }
    }

    // === stage 4: tunnel ===

    /// What inspectors know of a dialed flow.
    pub fn subject(&self, flow: &Flow) -> Option<Subject> {
        Some(Subject {
            policy: flow.policy().clone(),
            src: flow.src().ip(),
            user: flow.user.clone(),
            dest: flow.dest.clone()?,
            port: flow.port?,
            peer: SocketAddr::new(flow.peer?, flow.port?),
            zone: flow.zone_arc(),
            report: flow.mode() == Some(sluice_policy::Mode::Report),
            flow: Arc::from(flow.id()),
            notes: flow.notes().clone(),
            decision: flow.decision().cloned(),
        })
    }

    /// The inspectors that look at HTTP exchanges (heads and bodies).
    pub fn http_inspectors(&self) -> &[Arc<dyn Inspector>] {
        &self.http_inspectors
    }

    /// Whether some HTTP inspector looks at this flow's content (its heads
    /// and bodies): the zone asks for DLP, malware scanning or ICAP.
    pub fn inspects_content(&self, flow: &Flow) -> bool {
        self.http_subject(flow).is_some_and(|s| {
            self.http_inspectors.iter().any(|i| {
                i.wants_bodies(&s)
                    || i.wants_object(&s, inspect::Direction::Out).is_some()
                    || i.wants_object(&s, inspect::Direction::In).is_some()
            })
        })
    }

    /// What HTTP inspectors know of this flow; `None` when no inspector
    /// looks at HTTP (nothing is built per request then).
    pub fn http_subject(&self, flow: &Flow) -> Option<Subject> {
        if self.http_inspectors.is_empty() {
            return None;
        }
        self.subject(flow)
    }

    /// Runs every HTTP inspector on a head; the first denial counts.
    pub fn inspect(&self, look: impl FnMut(&dyn Inspector) -> Inspection) -> Result<(), Refusal> {
        match inspect::first_denial(&self.http_inspectors, look) {
            Inspection::Pass | Inspection::Intercept { .. } => Ok(()),
            Inspection::Deny { rule, reason } => Err(Refusal::Inspected { rule, reason }),
            Inspection::Unavailable { rule, reason } => Err(Refusal::Unscanned { rule, reason }),
        }
    }

    /// The most bytes of a body going `dir` that some HTTP inspector
    /// wants to see whole; `None`: none does (the body streams).
    pub fn object_limit(&self, s: &Subject, dir: inspect::Direction) -> Option<u64> {
        self.http_inspectors
            .iter()
            .filter_map(|i| i.wants_object(s, dir))
            .max()
    }

    /// Runs every HTTP inspector that wants whole bodies on `obj`; the
    /// first refusal counts.
    pub async fn inspect_object(
        &self,
        s: &Subject,
        obj: &inspect::Object<'_>,
    ) -> Result<(), Refusal> {
        for i in &self.http_inspectors {
            if i.wants_object(s, obj.dir).is_none() {
                continue;
            }
            match i.object(s, obj).await {
                Inspection::Pass | Inspection::Intercept { .. } => {}
                Inspection::Deny { rule, reason } => {
                    return Err(Refusal::Inspected { rule, reason });
                }
                Inspection::Unavailable { rule, reason } => {
                    return Err(Refusal::Unscanned { rule, reason });
                }
            }
        }
        Ok(())
    }

    fn hello_check(&self, flow: &Flow) -> Option<HelloCheck> {
        let subject = self.subject(flow)?;
        let wanted: Vec<Arc<dyn Inspector>> = self
            .inspectors
            .iter()
            .filter(|i| i.wants_first_bytes(&subject))
            .cloned()
            .collect();
        if wanted.is_empty() {
            return None;
        }
        Some(Box::new(move |hello| {
            inspect::first_denial(&wanted, |i| i.first_bytes(&subject, hello))
        }))
    }

    /// `require_tls` (the zone's, or the deciding allow rule's): a flow
    /// that is not TLS (`tls` false) is refused with `inspect/require-tls`,
    /// or, in a `report` zone, recorded as the would-be denial and let on.
    pub fn require_tls(&self, flow: &mut Flow, tls: bool) -> Result<(), Refusal> {
        if tls {
            return Ok(());
        }
        let Some(d) = flow.decision() else {
            return Ok(());
        };
        if !flow.policy().requires_tls(d) {
            return Ok(());
        }
        let who = if flow
            .policy()
            .config()
            .zones
            .iter()
            .any(|z| Some(z.name.as_str()) == d.zone.as_deref() && z.require_tls)
        {
            format!("zone {}", d.zone.as_deref().unwrap_or("-"))
        } else {
            format!("allow rule {}", d.rule)
        };
        let what = if flow.protocol == Protocol::Http {
            "a plaintext HTTP request"
        } else {
            "a tunnel whose first client bytes are not a TLS ClientHello"
        };
        let reason = format!("{who} requires TLS: {what}");
        if d.mode == Some(Mode::Report) {
            flow.set_unenforced(ids::INSPECT_REQUIRE_TLS, reason);
            return Ok(());
        }
        Err(Refusal::Inspected {
            rule: Arc::from(ids::INSPECT_REQUIRE_TLS),
            reason,
        })
    }

    /// Whether a tunnel's first bytes must be judged before the relay
    /// starts (not by the relay's own hello check, which lets the
    /// destination's bytes flow meanwhile): the zone intercepts some
    /// destinations, or requires TLS.
    fn hello_first(&self, flow: &Flow) -> bool {
        let Some(d) = flow.decision() else {
            return false;
        };
        let p = flow.policy();
        (self.interceptor.is_some() && p.intercepts_zone(d)) || p.requires_tls(d)
    }

    /// Relays a dialed flow until it ends, then records it. With `inspect`,
    /// the inspectors see the client's first bytes before any is
    /// forwarded (the transparent listener passes the bytes it peeked in
    /// `pre` instead). Where the zone intercepts TLS or requires it, the
    /// first bytes are judged before the relay starts: a listed
    /// destination is intercepted (`crate::intercept`), a flow that must
    /// be TLS and is not is refused. Holds the drain's active count and the
    /// tunnel gauge.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn stores each argument twice in its future"
    )]
    pub fn tunnel(
        self: &Arc<Self>,
        mut flow: Box<Flow>,
        mut client: TcpStream,
        upstream: TcpStream,
        pre: Preread<'_>,
        inspect: bool,
    ) -> impl Future<Output = ()> {
        // An `async` block, not an `async fn`: an `async fn` keeps its
        // arguments in its future and a moved copy of each beside them,
        // the 584-byte `Flow` twice at every level, and an idle tunnel
        // holds its whole future. The flow comes boxed, so that the
        // callers' tasks, this future and `relay`'s hold a pointer each
        // instead of a copy (6,560 bytes a CONNECT tunnel's task before
        // either, 2,720 with both, 1,152 with `relay::Relay`; release
        // build, `-Zprint-type-sizes`).
        async move {
            let _active = self.drain.active();
            let _gauge = self.metrics.active_tunnel(flow.listener());
            // Plain HTTP caught by the transparent listener, in a zone that
            // inspects content: served request by request, so that each meets
            // the inspection an absolute-form request does.
            if flow.protocol == Protocol::HttpTransparent && self.inspects_content(&flow) {
                if let Err(r) = self.require_tls(&mut flow, false) {
                    flow.bytes_out += pre.out.len() as u64;
                    return self.refuse(*flow, &r);
                }
                let first = pre.out.to_vec();
                let gw = self.clone();
                // Boxed, as `intercept::run` below: inline, these rarely taken
                // paths would size every tunnel's future, idle ones included.
                let flow = Box::pin(self.heavy(*flow, client, upstream, move |f, c, u| {
                    intercept::serve_plain(gw, f, c, first, u)
                }))
                .await;
                return self.record_heavy(flow);
            }
            let peeked = flow.listener() == Listener::Transparent;
            if (inspect || peeked) && self.hello_first(&flow) {
                let mut first = pre.out.to_vec();
                let hello = if inspect {
                    relay::read_hello(&mut client, &mut first, self.limits.header_timeout).await
                } else {
                    parse_client_hello(&first)
                };
                flow.tls = Some(matches!(hello, Hello::ClientHello { .. }));
                if let Hello::ClientHello { sni: Some(s) } = &hello {
                    flow.sni = Some(s.clone());
                }
                let tls = flow.tls == Some(true);
                if let Err(r) = self.require_tls(&mut flow, tls) {
                    flow.bytes_out += first.len() as u64;
                    return self.refuse(*flow, &r);
                }
                // The inspectors' verdict (the transparent listener judged the
                // SNI itself: there only a request to intercept counts).
                let verdict = match self.hello_check(&flow) {
                    Some(check) => check(&hello),
                    None => Inspection::Pass,
                };
                match verdict {
                    Inspection::Deny { rule, reason } if inspect => {
                        flow.set_rule(&rule, reason);
                        return self.record(*flow);
                    }
                    Inspection::Intercept { name } if self.interceptor.is_some() => {
                        if let Some(ic) = self.interceptor.clone() {
                            let gw = self.clone();
                            let flow =
                                Box::pin(self.heavy(*flow, client, upstream, move |f, c, u| {
                                    intercept::run(gw, ic, f, c, first, u, name)
                                }))
                                .await;
                            return self.record_heavy(flow);
                        }
                    }
                    _ => {}
                }
                let pre = Preread {
                    out: &first,
                    inn: pre.inn,
                };
                return self.relay(flow, client, upstream, pre, None).await;
            }
            let check = if inspect {
                self.hello_check(&flow)
            } else {
                None
            };
            self.relay(flow, client, upstream, pre, check).await;
        }
    }

    /// Runs [`Gateway::tunnel`] in a task of its own, holding the
    /// connection's limiter `slot` and a drain guard taken now, before the
    /// spawn: a drain never sees the tunnel as gone before it began. The
    /// listener's connection task ends here; run in it, an idle tunnel held
    /// that task's largest state (the dial's, SOCKS5: 4,680 bytes; the
    /// peek's, transparent: 5,512 and its 2 KiB buffer; a CONNECT's head
    /// and stages: 9.2 against 22.5 KiB per idle tunnel) where the tunnel's
    /// own is 1,152 (`-Zprint-type-sizes`). `early`: client bytes read
    /// before the tunnel, delivered first, kept at their own size.
    pub(crate) fn spawn_tunnel(
        self: Arc<Self>,
        flow: Flow,
        client: TcpStream,
        upstream: TcpStream,
        mut early: Vec<u8>,
        inspect: bool,
        slot: Arc<sluice_serve::Slot>,
    ) {
        let active = self.drain.active();
        early.shrink_to_fit();
        // Boxed twice: the task moves a pointer, not the tunnel's future,
        // when it starts and ends (tokio copies a task's future by value),
        // and `tunnel` takes the flow boxed.
        let flow = Box::new(flow);
        tokio::spawn(Box::pin(async move {
            let _held = (slot, active);
            let pre = Preread {
                out: &early,
                inn: &[],
            };
            self.tunnel(flow, client, upstream, pre, inspect).await;
        }));
    }

    /// Runs `work`, the whole of a CPU-heavy flow (an intercepted tunnel,
    /// or plain HTTP a transparent zone inspects), on the inspection pool
    /// when the gateway serves on cores, with its two sockets registered
    /// there (`sluice_serve::cores` says why: a core would hold its other
    /// connections for every long poll of it); in place without cores.
    /// Interception alone goes too: with it on the pool, the median
    /// echo through a core's other tunnels was lower in 5 of 6 rounds
    /// (bench/hol.sh, sittings 3 and 4 in bench/README.md). `None`: the pool dropped it
    /// (it stopped, or the work panicked).
    async fn heavy<F, Fut>(
        &self,
        mut flow: Flow,
        client: TcpStream,
        upstream: TcpStream,
        work: F,
    ) -> Option<Flow>
    where
        F: FnOnce(Flow, TcpStream, TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = Flow> + Send + 'static,
    {
        let Some(cores) = &self.cores else {
            return Some(work(flow, client, upstream).await);
        };
        let moved = |e: std::io::Error| {
            Refusal::Internal(format!("cannot move the flow to the inspection pool: {e}"))
        };
        let (client, upstream) = match (client.into_std(), upstream.into_std()) {
            (Ok(c), Ok(u)) => (c, u),
            (Err(e), _) | (_, Err(e)) => {
                moved(e).apply(&mut flow);
                return Some(flow);
            }
        };
        cores
            .offload(async move {
                let mut flow = flow;
                match (TcpStream::from_std(client), TcpStream::from_std(upstream)) {
                    (Ok(c), Ok(u)) => work(flow, c, u).await,
                    (Err(e), _) | (_, Err(e)) => {
                        moved(e).apply(&mut flow);
                        flow
                    }
                }
            })
            .await
    }

    /// Records what [`Gateway::heavy`] gave back.
    fn record_heavy(&self, flow: Option<Flow>) {
        match flow {
            Some(f) => self.record(f),
            None => tracing::warn!(
                "an inspected flow ended without a record: the inspection pool dropped it"
            ),
        }
    }

    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn stores each argument twice in its future"
    )]
    fn relay(
        &self,
        mut flow: Box<Flow>,
        client: TcpStream,
        upstream: TcpStream,
        pre: Preread<'_>,
        check: Option<HelloCheck>,
    ) -> impl Future<Output = ()> {
        // An `async` block, as `tunnel`'s: one copy of the flow, not two.
        async move {
            // Interim records: every `log.interim` of the flow's policy version
            // (a reload applies to tunnels opened after it), a copy of the flow
            // with the bytes since its previous record, unless none moved.
            // `reported` is what earlier records of this flow carried.
            let (base_out, base_in) = (flow.bytes_out, flow.bytes_in);
            let mut reported = (0u64, 0u64);
            let every = flow.policy().config().log.interim;
            // Borrowed, and copied only when an interim record is written: a
            // short tunnel pays nothing for this.
            let snapshot: &Flow = &flow;
            let mut report = |out: u64, inn: u64, sni: Option<&str>| {
                let (out, inn) = (base_out + out, base_in + inn);
                if (out, inn) == reported {
                    return;
                }
                let mut interim = snapshot.clone();
                interim.bytes_out = out - reported.0;
                interim.bytes_in = inn - reported.1;
                interim.interim = Some(true);
                if let Some(name) = sni {
                    interim.sni = Some(name.to_owned());
                }
                reported = (out, inn);
                self.record(interim);
            };
            // Pinned here and lent: moved into `relay_with`, the drain's
            // wait was stored twice there (its argument and its select's).
            let stopped = std::pin::pin!(self.drain.stopped());
            let r = relay::relay_with(
                client,
                upstream,
                pre,
                check,
                self.timeouts(),
                stopped,
                Some(relay::Interim {
                    every,
                    report: &mut report,
                }),
            )
            .await;
            // The closing record carries the rest.
            flow.bytes_out = (base_out + r.bytes_out).saturating_sub(reported.0);
            flow.bytes_in = (base_in + r.bytes_in).saturating_sub(reported.1);
            flow.interim = Some(false);
            if r.sni.is_some() {
                flow.sni = r.sni;
            }
            if r.tls.is_some() {
                flow.tls = r.tls;
            }
            flow.error = r.error;
            flow.error_kind = r.error_kind;
            if let Some((rule, reason)) = r.denied {
                flow.set_rule(&rule, reason);
            }
            self.record(*flow);
        }
    }

    // === stage 5: record ===

    /// Ends the flow: its record goes to the recorder.
    pub fn record(&self, mut flow: Flow) {
        for a in flow.take_notes() {
            self.recorder.alert(a);
        }
        // A request inside an intercepted tunnel: the tunnel records (its
        // findings and denials folded in; its alerts are raised above, now).
        if let Some(tally) = flow.tally.take() {
            return tally.fold(flow);
        }
        self.recorder.record(flow.into_record(SystemTime::now()));
    }

    /// Ends a refused flow: the refusal is written into it, then recorded.
    pub fn refuse(&self, mut flow: Flow, refusal: &Refusal) {
        refusal.apply(&mut flow);
        self.record(flow);
    }
}

/// The dialer's failure as a refusal.
fn refusal_of(e: DialError) -> Refusal {
    match e {
        DialError::Resolve { host, msg } => Refusal::Resolve { host, msg },
        DialError::Denied(d) => Refusal::Denied(d),
        DialError::Connect {
            addr, msg, kind, ..
        } => Refusal::Connect { addr, msg, kind },
        DialError::Timeout(after, _) => Refusal::Timeout(after),
        DialError::NoDescriptors { msg, .. } => Refusal::NoDescriptors(msg),
    }
}

/// Why a PROXY header from an address outside `listen.proxy_protocol_from`
/// is refused.
pub(crate) fn untrusted_header(peer: SocketAddr) -> String {
    format!("PROXY protocol header from {peer}, not in listen.proxy_protocol_from")
}
