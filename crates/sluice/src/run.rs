//! `sluice run`: load the policy, bind the listeners, wire the stages to the
//! record sink and metrics, and handle signals — SIGHUP or a file change
//! reloads, SIGUSR1 reopens the flow log, SIGTERM/SIGINT drain and exit.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, bail};
use sluice_net::{Dialer, Gateway, Routes, Users, Version};
use sluice_observe::{AlertRing, FlowSink, FlowTarget, FlowView, Metrics, Recorder, ViewLimits};
use sluice_policy::{Config, Policy};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::listeners::Listeners;

/// The embedded default (docs/design.md): proxy and admin on loopback, one
/// report-mode zone for local clients, guard on.
pub const DEFAULT_CONFIG: &str = include_str!("default.yaml");

pub fn main(config: Option<PathBuf>, format: crate::log::Format) -> ExitCode {
    crate::log::init(format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            crate::log::fatal(&format!("cannot start the runtime: {e}"));
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::log::fatal(&format!("{e:#}"));
            ExitCode::from(2)
        }
    }
}

/// Reads, validates and compiles a policy, and reads password hash files.
pub fn load(path: Option<&Path>) -> Result<Version> {
    let (text, name) = match path {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (DEFAULT_CONFIG.to_owned(), "<embedded default>".to_owned()),
    };
    let policy = Policy::load_at(&text, &name, now_ms()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let users = read_users(policy.config(), path)?;
    Ok(Version {
        policy: Arc::new(policy),
        users: Arc::new(users),
    })
}

/// The wall clock as unix ms: the time a policy judges expiry at.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Compiles the running policy again at the current time once a rule's
/// `expires` has passed, so that it stops matching on time. Not a reload:
/// the file is not read again, and no reload counter moves.
fn expire(gw: &Gateway, declare: &dyn Fn(&Policy)) {
    let v = gw.version();
    let now = now_ms();
    if v.policy.same_at(now) {
        return;
    }
    let before = v.policy.expired_count();
    let policy = v.policy.recompiled_at(now);
    for w in policy.warnings() {
        tracing::warn!("{w}");
    }
    tracing::info!(
        policy = %policy.hash(),
        expired = policy.expired_count(),
        newly = policy.expired_count().saturating_sub(before),
        "rule expiry: policy compiled again"
    );
    declare(&policy);
    gw.reload(Version {
        policy: Arc::new(policy),
        users: v.users.clone(),
    });
}

fn read_users(config: &Config, path: Option<&Path>) -> Result<Users> {
    let base = path.and_then(Path::parent).unwrap_or(Path::new("."));
    let mut users = Users::default();
    for u in &config.users {
        let hash = match (&u.password_hash, &u.password_hash_file) {
            (Some(h), _) => h.clone(),
            (None, Some(f)) => {
                let f = base.join(f);
                std::fs::read_to_string(&f)
                    .with_context(|| {
                        format!(
                            "user {}: cannot read password_hash_file {}",
                            u.name,
                            f.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
            (None, None) => bail!("user {} has no password hash", u.name),
        };
        if !hash.starts_with("$argon2") {
            bail!("user {}: password hash is not an argon2 PHC string", u.name);
        }
        users.0.insert(u.name.clone(), hash);
    }
    Ok(users)
}

async fn run(path: Option<PathBuf>) -> Result<()> {
    // Before anything is announced: a supervisor may signal as soon as it
    // sees the listening lines, and SIGHUP's default action would kill us.
    // Signals that arrive during start-up wait in these streams.
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut stop = Stop::install()?;
    // The file's stamp before it is read: a change after this point (even
    // between the read and the watch loop starting, while listeners are
    // announced) is seen as a change; stamping after the read could take
    // a newer file's stamp for the loaded one and never reload it.
    let mut watch = FileWatch::new(path.as_deref());
    let version = crate::validate::load_runnable(path.as_deref())?;
    crate::validate::log_warnings(&version);
    let config = version.policy.config().clone();
    raise_nofile(&config.limits);

    let mut metrics = Metrics::new();
    // The bus's families join the registry before it is shared.
    let bus = sluice_bus::BusOptions::from_config(&config.bus)
        .map(|o| (o, sluice_bus::BusMetrics::register(metrics.registry_mut())));
    let metrics = Arc::new(metrics);
    metrics.policy_loaded(version.policy.hash(), SystemTime::now());
    let (sink, writer) = flow_log(&config, &metrics)?;
    let listeners = Listeners::bind(&config).await?;
    let running = listeners.proxies();
    let has_dns = listeners.has_dns();
    metrics.declare_zones(&version.policy, &running, has_dns);

    let (bus, publisher) = bus
        .map(|(opts, m)| {
            tracing::info!(
                url = %opts.url,
                stream = %opts.stream,
                partitions = opts.partitions,
                "flow bus: publishing records and alerts"
            );
            sluice_bus::Publisher::start(opts, m)
        })
        .unzip();
    let live = crate::detect::live(&config, path.as_deref(), &metrics)?;
    if !config.detect.embedded {
        tracing::info!(
            "detect.embedded is false: no detector here; a follower (sluice detect --follow) judges this replica's flows"
        );
    }
    let (view, recorder) = recorder(&config, &metrics, &sink, &live, bus)?;
    let Assembled {
        gw,
        routes,
        cores,
        grants,
        content,
    } = assemble(version, &listeners, &recorder, &metrics, path.as_deref())?;
    let status = admin_status(&config, view, recorder.clone(), content)?;
    let declare = |policy: &Policy| {
        metrics.declare_zones(policy, &running, has_dns);
        live.set_zones(sluice_detect::ZoneSettings::from_config(policy.config()));
    };
    listeners.announce()?;
    describe_modes(&gw.version().policy);
    let tasks = listeners.serve(&gw, recorder, status.clone(), &config, grants)?;

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut save = tokio::time::interval(SAVE_EVERY);
    loop {
        // The next rule expiry of whichever policy runs now (a reload may
        // have brought other rules).
        let expiry = until_expiry(gw.version().policy.next_expiry());
        tokio::select! {
            () = expiry => expire(&gw, &declare),
            _ = hup.recv() => reload(&gw, &routes, path.as_deref(), &config, &status, "SIGHUP", &declare),
            _ = tick.tick() => {
                if watch.changed() {
                    reload(&gw, &routes, path.as_deref(), &config, &status, "file change", &declare);
                }
            }
            _ = usr1.recv() => reopen_flow_log(&writer).await,
            _ = save.tick() => save_baselines(&live).await,
            () = stop.recv() => break,
        }
    }

    leave(&gw, config.limits.drain_grace).await;
    drain(&gw, tasks, config.limits.drain_timeout).await;
    save_baselines(&live).await;
    cores.stop();
    drop(gw);
    drop(sink);
    writer.close().await.context("flushing flow records")?;
    if let Some(p) = publisher {
        p.close(BUS_CLOSE).await;
    }
    tracing::info!("drained; exiting");
    Ok(())
}

/// The gateway and the parts of it that `run` keeps a handle on.
struct Assembled {
    gw: Arc<Gateway>,
    routes: Arc<Routes>,
    cores: Arc<sluice_serve::Cores>,
    grants: Arc<sluice_dns::GrantStore>,
    content: Arc<sluice_net::content::Content>,
}

/// The gateway for `version`: routes, per-core runtimes, TLS interception
/// when `inspect.ca` is set, DNS grants when a DNS listener runs, and the
/// content inspector (whose scanners' probes start here).
fn assemble(
    version: Version,
    listeners: &Listeners,
    recorder: &Arc<Recorder>,
    metrics: &Arc<Metrics>,
    path: Option<&Path>,
) -> Result<Assembled> {
    let config = version.policy.config().clone();
    // Never to Sluice's own listeners (`guard/self`).
    let dialer = Dialer::new(
        &config.dns.upstreams,
        config.dns.upstream_timeout,
        config.limits.connect_timeout,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?
    .with_mark(config.listen.transparent_mark);
    dialer.set_own_addrs(listeners.own_addrs()?);
    let routes = Routes::new(
        &config.routes,
        config.listen.transparent_mark,
        metrics.clone(),
    );
    let cores =
        sluice_serve::Cores::start(cores()).context("cannot start the per-core runtimes")?;
    let mut gw = Gateway::new(version, dialer, recorder.clone(), metrics.clone())
        .with_router(Arc::new(routes.clone()))
        .with_cores(cores.clone());
    if let Some(ic) = crate::ca::interceptor(&config, path)? {
        gw = gw.with_interceptor(ic);
    }
    let grants = Arc::new(sluice_dns::GrantStore::new(config.dns.grants_max as usize));
    if listeners.has_dns() {
        gw = gw.with_grants(Arc::new(crate::dns::DnsGrants(grants.clone())));
    }
    let content = content(&config, path, metrics)?;
    gw = gw.with_inspector(content.clone());
    spawn_probes(&content, &config);
    Ok(Assembled {
        gw: Arc::new(gw),
        routes,
        cores,
        grants,
        content,
    })
}

/// The flow log's writer (`log.flows`: `stdout` or a file).
fn flow_log(config: &Config, metrics: &Metrics) -> Result<(FlowSink, sluice_observe::FlowWriter)> {
    let target = match config.log.flows.as_str() {
        "stdout" => FlowTarget::Stdout,
        p => FlowTarget::File(PathBuf::from(p)),
    };
    FlowSink::start(target, sluice_observe::DEFAULT_CAPACITY, metrics)
        .with_context(|| format!("cannot open the flow log {}", config.log.flows))
}

/// SIGUSR1: the flow log is opened again (after rotation).
async fn reopen_flow_log(writer: &sluice_observe::FlowWriter) {
    match writer.reopen().await {
        Ok(0) => tracing::info!("flow log reopened"),
        Ok(lost) => tracing::warn!(
            lost,
            "flow log reopened; {lost} records the old file could not take were lost"
        ),
        Err(e) => tracing::error!(
            error = %e,
            "cannot reopen the flow log; still writing to the old file"
        ),
    }
}

/// SIGTERM and SIGINT, either of which ends `run` (with a drain) and
/// `detect --follow`.
pub(crate) struct Stop {
    term: Signal,
    int: Signal,
}

impl Stop {
    /// Installed before anything is announced, so that a signal during
    /// start-up waits here instead of killing the process.
    pub(crate) fn install() -> std::io::Result<Stop> {
        Ok(Stop {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves when either signal comes.
    pub(crate) async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// How many per-core runtimes serve the proxy listeners: one a CPU the
/// process may use (`sluice_serve::cores` says why, with the A/B against
/// tokio's multi-thread runtime).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// How long the flow bus may take at exit to publish what it still holds.
const BUS_CLOSE: Duration = Duration::from_secs(5);

/// How often detection baselines are written to `detect.state_dir`.
const SAVE_EVERY: Duration = Duration::from_secs(10);

/// Writes what the detectors learned since the last save (nothing without
/// `detect.state_dir`), on the blocking pool: never on the data path.
pub async fn save_baselines(live: &sluice_detect::Live) {
    let live = live.clone();
    match tokio::task::spawn_blocking(move || live.save()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot save detection baselines"),
        Err(e) => tracing::warn!(error = %e, "cannot save detection baselines"),
    }
}

/// The recent-flow view and the recorder that fans each record out to
/// metrics, the view, the flow log, detectors and the alert ring, and each
/// new alert to the configured alert sinks (`detect.webhook`,
/// `detect.syslog`); records and alerts also to the flow bus when
/// configured. With `detect.embedded: false` no detector runs here (a
/// follower judges this replica's flows from the bus).
fn recorder(
    config: &Config,
    metrics: &Arc<Metrics>,
    sink: &FlowSink,
    live: &sluice_detect::Live,
    bus: Option<sluice_bus::BusQueue>,
) -> Result<(Arc<FlowView>, Arc<Recorder>)> {
    let view = Arc::new(FlowView::new(ViewLimits {
        recent_flows: config.admin.recent_flows as usize,
        recent_denials: config.admin.recent_denials as usize,
        window: config.admin.window,
        top_entries: config.admin.top_entries as usize,
    }));
    let mut recorder = Recorder::new(
        metrics.clone(),
        view.clone(),
        sink.clone(),
        AlertRing::new(config.admin.recent_alerts as usize),
    );
    if config.detect.embedded {
        recorder = recorder.with_detector(Box::new(live.clone()));
    }
    for sink in crate::detect::alert_sinks(config, metrics)? {
        recorder = recorder.with_alert_sink(sink);
    }
    if let Some(bus) = bus {
        recorder = recorder.with_bus(Box::new(bus));
    }
    Ok((view, Arc::new(recorder)))
}

/// Sleeps until just past the running policy's next rule expiry (`at`,
/// unix ms), or forever when no rule expires.
async fn until_expiry(at: Option<i64>) {
    match at {
        Some(at) => {
            let wait = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0) + 1;
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// The content inspector (DLP, clamd, ICAP) from `inspect`, with the
/// findings' hash key from `inspect.dlp.hash_key_file` (relative to the
/// configuration file), or a random one for this process.
fn content(
    config: &Config,
    path: Option<&Path>,
    metrics: &Arc<Metrics>,
) -> Result<Arc<sluice_net::content::Content>> {
    let key = match &config.inspect.dlp.hash_key_file {
        Some(f) => {
            let f = path
                .and_then(Path::parent)
                .unwrap_or(Path::new("."))
                .join(f);
            let bytes = std::fs::read(&f).with_context(|| {
                format!("cannot read inspect.dlp.hash_key_file {}", f.display())
            })?;
            sluice_inspect::HashKey::from_bytes(&bytes)
                .with_context(|| format!("inspect.dlp.hash_key_file {}", f.display()))?
        }
        None => sluice_inspect::HashKey::random(),
    };
    let c = sluice_net::content::Content::new(&config.inspect, key, metrics.clone())
        .map_err(|e| anyhow::anyhow!("inspect: {e}"))?;
    Ok(Arc::new(c))
}

/// Asks clamd and the ICAP services every few seconds whether they answer
/// (`/readyz`, `sluice_inspect_scanner_up`), when any is configured.
fn spawn_probes(content: &Arc<sluice_net::content::Content>, config: &Config) {
    let i = &config.inspect;
    if i.clamd.address.is_none() && i.icap.reqmod.is_none() && i.icap.respmod.is_none() {
        return;
    }
    let c = content.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(PROBE_EVERY);
        loop {
            every.tick().await;
            c.probe().await;
        }
    });
}

/// How often scanners are probed.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// What the admin listener reads besides the gateway.
fn admin_status(
    config: &Config,
    view: Arc<FlowView>,
    recorder: Arc<Recorder>,
    content: Arc<sluice_net::content::Content>,
) -> Result<Arc<crate::admin::Status>> {
    let token = match &config.admin.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read admin.token_file {}", f.display()))?
                .trim()
                .to_owned(),
        )
        .filter(|t| !t.is_empty()),
        None => None,
    };
    if config.admin.token_file.is_some() && token.is_none() {
        bail!("admin.token_file is empty");
    }
    Ok(Arc::new(crate::admin::Status {
        last_reload_error: Mutex::new(None),
        access: crate::admin::Access {
            token,
            open_paths: config.admin.open_paths.clone(),
            hosts: config.admin.hosts.clone(),
        },
        view,
        recorder,
        content,
    }))
}

/// Before the drain: `/readyz` answers 503 for `grace` while the
/// listeners still accept, so that a load balancer's health checks take
/// the replica out before its listeners close (nothing sent meanwhile is
/// refused).
async fn leave(gw: &Gateway, grace: Duration) {
    if grace.is_zero() {
        return;
    }
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "leaving: /readyz answers 503; still accepting until the drain begins"
    );
    gw.drain().leave();
    tokio::time::sleep(grace).await;
}

/// Stops accepting, waits for the listeners to stop and for open work to
/// finish (up to `timeout`), then stops what is left.
async fn drain(gw: &Gateway, tasks: Vec<tokio::task::JoinHandle<()>>, timeout: Duration) {
    tracing::info!(
        active = gw.drain().active_count(),
        timeout_s = timeout.as_secs(),
        "draining: no new connections; open tunnels may finish"
    );
    gw.drain().begin();
    for t in tasks {
        let _ = t.await;
    }
    if !gw.drain().wait_idle(timeout).await {
        tracing::warn!(
            active = gw.drain().active_count(),
            "drain timeout: closing open tunnels"
        );
        gw.drain().stop_all();
        gw.drain().wait_idle(Duration::from_secs(5)).await;
    }
}

/// The start-up line (the harness's "started"): the policy and each
/// zone with the mode it really runs in (its own, or the top-level one).
fn describe_modes(policy: &Policy) {
    crate::log::line(&policy_line(policy));
}

fn policy_line(policy: &Policy) -> String {
    let c = policy.config();
    let zones: Vec<String> = c
        .zones
        .iter()
        .map(|z| {
            format!(
                "{} {} ({} allow, {} deny)",
                z.name,
                z.mode.unwrap_or(c.mode).as_str(),
                z.allow.len(),
                z.deny.len()
            )
        })
        .collect();
    format!(
        "policy {} with {} zone{} (default mode {}): {}",
        policy.hash(),
        c.zones.len(),
        if c.zones.len() == 1 { "" } else { "s" },
        c.mode.as_str(),
        if zones.is_empty() {
            "none, every request is denied".to_owned()
        } else {
            zones.join(", ")
        }
    )
}

/// Descriptors kept free beyond clients, origins and the pool: listeners,
/// the flow log, the resolver's sockets, admin connections.
const FD_MARGIN: u64 = 64;

/// Raises the soft open-file limit to the hard limit (as servers do), then
/// warns on stderr when `limits.max_connections` cannot fit it: each client
/// may hold its own socket and one to the origin, plus the idle pool and a
/// margin.
fn raise_nofile(limits: &sluice_policy::model::Limits) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => {
            tracing::debug!(limit = n, "open-file limit raised");
            n
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            match rlimit::getrlimit(rlimit::Resource::NOFILE) {
                Ok((soft, _)) => soft,
                Err(_) => return,
            }
        }
    };
    let need = fd_budget(limits);
    if need > limit {
        crate::log::warning(&format!(
            "limits.max_connections {} needs about {need} file descriptors \
             (2 a connection, client and origin, + limits.pool_max_idle {} + {FD_MARGIN}) \
             but the open-file limit (RLIMIT_NOFILE) is {limit}: past about {} connections, \
             clients get 503; raise the limit (ulimit -n, LimitNOFILE=) or lower max_connections",
            limits.max_connections,
            limits.pool_max_idle,
            limit.saturating_sub(u64::from(limits.pool_max_idle) + FD_MARGIN) / 2,
        ));
    }
}

/// File descriptors `limits` may need at once.
fn fd_budget(limits: &sluice_policy::model::Limits) -> u64 {
    u64::from(limits.max_connections) * 2 + u64::from(limits.pool_max_idle) + FD_MARGIN
}

fn reload(
    gw: &Gateway,
    routes: &Routes,
    path: Option<&Path>,
    started_with: &Config,
    status: &crate::admin::Status,
    why: &str,
    declare: &dyn Fn(&Policy),
) {
    let Some(path) = path else {
        tracing::info!(
            "reload requested ({why}) but running the embedded default; nothing to reload"
        );
        return;
    };
    match load(Some(path)) {
        Ok(v) => {
            crate::validate::log_warnings(&v);
            // Keys read once at start (listeners, limits, resolver, flow
            // log, admin view sizes) keep their start values; the key table
            // in sluice-policy says which they are.
            let pending = sluice_policy::restart_needed(started_with, v.policy.config());
            if !pending.is_empty() {
                let keys = pending.join(", ");
                tracing::warn!(
                    keys = %keys,
                    "{}: changes to {keys} need a restart to take effect; running with their start values until then",
                    path.display()
                );
            }
            let hash = v.policy.hash().clone();
            declare(&v.policy);
            // Routes first: the new policy may name new ones.
            routes.update(&v.policy.config().routes);
            gw.reload(v);
            gw.metrics().reload_succeeded(&hash, SystemTime::now());
            if let Ok(mut e) = status.last_reload_error.lock() {
                *e = None;
            }
            tracing::info!(policy = %hash, trigger = why, "policy reloaded");
        }
        Err(e) => {
            gw.metrics().reload_failed();
            let msg = format!("{e:#}");
            for line in msg.lines() {
                tracing::error!(
                    trigger = why,
                    "reload rejected, keeping the running policy: {line}"
                );
            }
            if let Ok(mut slot) = status.last_reload_error.lock() {
                *slot = Some(msg);
            }
        }
    }
}

/// Notices changes of the configuration file, including a Kubernetes
/// ConfigMap's symlink swap (the resolved target changes).
struct FileWatch {
    path: Option<PathBuf>,
    last: Option<(PathBuf, SystemTime, u64)>,
}

impl FileWatch {
    fn new(path: Option<&Path>) -> FileWatch {
        let mut w = FileWatch {
            path: path.map(Path::to_path_buf),
            last: None,
        };
        w.last = w.stamp();
        w
    }

    fn stamp(&self) -> Option<(PathBuf, SystemTime, u64)> {
        let p = self.path.as_ref()?;
        let real = std::fs::canonicalize(p).ok()?;
        let meta = std::fs::metadata(&real).ok()?;
        Some((real, meta.modified().ok()?, meta.len()))
    }

    fn changed(&mut self) -> bool {
        let now = self.stamp();
        if now.is_some() && now != self.last {
            self.last = now;
            return true;
        }
        false
    }
}
