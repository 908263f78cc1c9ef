//! The metrics registry: every `sluice_*` family, and the small methods the
//! data path, the reloader and the admin server call.
//!
//! Labels are low-cardinality only (docs/design.md "Names and rule ids"): listener, zone,
//! verdict, enforced, and a rule only when it has an explicit id. Never a
//! destination or client address.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::{
    encoding::{EncodeLabelSet, text},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Metric, Registry, Unit},
};

use crate::{AlertKind, FlowRecord, Listener, Protocol, Severity};

/// The content type of [`Metrics::encode`]'s output (OpenMetrics text,
/// which Prometheus scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry and a handle to each family. Share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    tunnels: Family<FlowLabels, Counter>,
    requests: Family<FlowLabels, Counter>,
    bytes_out: Family<ZoneLabel, Counter>,
    bytes_in: Family<ZoneLabel, Counter>,
    decision_duration: Histogram,
    connect_duration: Histogram,
    active_tunnels: Family<ListenerLabel, Gauge>,
    pub(crate) flow_records_dropped: Counter,
    dial_failures: Family<KindLabel, Counter>,
    http_responses: Family<ClassLabel, Counter>,
    connections_rejected: Family<LimitLabel, Counter>,
    auth_failures: Family<ListenerLabel, Counter>,
    config_reloads: Family<ResultLabel, Counter>,
    config_last_reload_success: Gauge,
    config_loaded_timestamp: Gauge<f64, std::sync::atomic::AtomicU64>,
    policy_info: Family<HashLabel, Gauge>,
    rules_expired: Gauge,
    rule_hits: Family<RuleLabel, Counter>,
    dns_queries: Family<DnsLabels, Counter>,
    alerts: Family<AlertLabels, Counter>,
    dns_rate_limited: Counter,
    fd_exhausted: Family<ListenerLabel, Counter>,
    pool_idle: Gauge,
    route_up: Family<RouteLabels, Gauge>,
    route_dials: Family<RouteDialLabels, Counter>,
    alert_sink_delivered: Family<SinkLabel, Counter>,
    alert_sink_dropped: Family<SinkLabel, Counter>,
    detect_evictions: Counter,
    netflow_packets: Counter,
    netflow_flows: Counter,
    netflow_dropped: Family<ReasonLabel, Counter>,
    netflow_gateway_flows: Counter,
    netflow_templates: Gauge,
    inspect_scans: Family<ScanLabels, Counter>,
    inspect_scanner_up: Family<ScannerLabel, Gauge>,
    inspect_findings: Family<FindingLabel, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ScanLabels {
    scanner: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ScannerLabel {
    scanner: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FindingLabel {
    r#type: String,
}

/// One open tunnel in `sluice_active_tunnels`; it leaves the gauge when
/// dropped, however the tunnel ends.
#[derive(Debug)]
#[must_use = "the tunnel counts as active only while this is held"]
pub struct ActiveTunnel {
    gauge: Gauge,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FlowLabels {
    listener: &'static str,
    zone: String,
    verdict: &'static str,
    enforced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DnsLabels {
    zone: String,
    verdict: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AlertLabels {
    kind: &'static str,
    severity: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SinkLabel {
    sink: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ZoneLabel {
    zone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

/// Why a dial failed, in `sluice_dial_failures_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialFailure {
    /// The name did not resolve.
    Resolve,
    /// Every address refused or was unreachable.
    Connect,
    /// Resolve and connect did not finish within `limits.connect_timeout`.
    Timeout,
    /// Sluice had no file descriptor left for the socket.
    NoDescriptors,
}

impl DialFailure {
    const ALL: [DialFailure; 4] = [
        DialFailure::Resolve,
        DialFailure::Connect,
        DialFailure::Timeout,
        DialFailure::NoDescriptors,
    ];

    fn as_str(self) -> &'static str {
        match self {
            DialFailure::Resolve => "resolve",
            DialFailure::Connect => "connect",
            DialFailure::Timeout => "timeout",
            DialFailure::NoDescriptors => "no-descriptors",
        }
    }
}

/// Which connection cap refused a client, in
/// `sluice_connections_rejected_total{limit}` (the configuration key's name).
pub const LIMITS: [&str; 2] = ["max_connections", "max_connections_per_source"];

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The commit Sluice was built from (`build.rs`), or `unknown`.
pub const COMMIT: &str = env!("SLUICE_COMMIT");

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HashLabel {
    hash: String,
}

/// A route and one of its hops (`direct` or the parent's `host:port`):
/// both operator-defined, so bounded by the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    hop: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteDialLabels {
    route: String,
    hop: String,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

// === family names and help ===

/// A family's name, before the `_total` and unit suffixes that
/// prometheus-client appends, its help text, and its unit.
struct Spec {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
}

impl Spec {
    const fn new(name: &'static str, help: &'static str) -> Spec {
        Spec {
            name,
            help,
            unit: None,
        }
    }

    const fn seconds(name: &'static str, help: &'static str) -> Spec {
        Spec {
            name,
            help,
            unit: Some(Unit::Seconds),
        }
    }
}

const BUILD_INFO: Spec = Spec::new(
    "sluice_build_info",
    "The version and commit Sluice was built from (value always 1)",
);
const TUNNELS: Spec = Spec::new(
    "sluice_tunnels",
    "Tunnels (CONNECT, SOCKS5, transparent) by listener, zone and verdict",
);
const REQUESTS: Spec = Spec::new(
    "sluice_requests",
    "Absolute-form HTTP requests by listener, zone and verdict",
);
const BYTES_OUT: Spec = Spec::new(
    "sluice_bytes_out",
    "Bytes from clients to destinations, by zone",
);
const BYTES_IN: Spec = Spec::new(
    "sluice_bytes_in",
    "Bytes from destinations to clients, by zone",
);
const DECISION_DURATION: Spec = Spec::seconds(
    "sluice_decision_duration",
    "Time to decide a request (both phases)",
);
const CONNECT_DURATION: Spec = Spec::seconds(
    "sluice_connect_duration",
    "Time to resolve and connect to a destination",
);
const ACTIVE_TUNNELS: Spec = Spec::new("sluice_active_tunnels", "Tunnels open now, by listener");
const FLOW_RECORDS_DROPPED: Spec = Spec::new(
    "sluice_flow_records_dropped",
    "Flow records dropped because the sink's queue was full or its writer failed",
);
const DIAL_FAILURES: Spec = Spec::new(
    "sluice_dial_failures",
    "Dials that failed, by kind (resolve, connect, timeout, no-descriptors)",
);
const HTTP_RESPONSES: Spec = Spec::new(
    "sluice_http_responses",
    "HTTP answers to clients (absolute-form responses, CONNECT and refusals), by status class",
);
const CONNECTIONS_REJECTED: Spec = Spec::new(
    "sluice_connections_rejected",
    "Client connections closed at accept by a connection cap, by limit",
);
const AUTH_FAILURES: Spec = Spec::new(
    "sluice_auth_failures",
    "Failed proxy logins (wrong or unreadable credentials, and attempts refused unchecked from a throttled source), by listener",
);
const CONFIG_RELOADS: Spec = Spec::new(
    "sluice_config_reloads",
    "Configuration reloads by result (success, failure)",
);
const CONFIG_LAST_RELOAD_SUCCESS: Spec = Spec::new(
    "sluice_config_last_reload_success",
    "1 if the last configuration load succeeded, else 0",
);
const CONFIG_LOADED_TIMESTAMP: Spec = Spec::seconds(
    "sluice_config_loaded_timestamp",
    "When the running policy was loaded, Unix time",
);
const RULES_EXPIRED: Spec = Spec::new(
    "sluice_rules_expired",
    "Rules of the running policy past their `expires` (they match nothing)",
);
const POLICY_INFO: Spec = Spec::new(
    "sluice_policy_info",
    "The hash of the running policy (value always 1)",
);
const RULE_HITS: Spec = Spec::new(
    "sluice_rule_hits",
    "Decisions by rule, for rules with an explicit id",
);
const DNS_QUERIES: Spec = Spec::new(
    "sluice_dns_queries",
    "DNS queries answered by the DNS listener, by zone and verdict",
);
const ALERTS: Spec = Spec::new(
    "sluice_alerts",
    "Alerts emitted (repeats folded into a stored alert not counted), by kind and severity",
);
const DNS_RATE_LIMITED: Spec = Spec::new(
    "sluice_dns_rate_limited",
    "DNS queries dropped by the per-source rate limit",
);
const FD_EXHAUSTED: Spec = Spec::new(
    "sluice_fd_exhausted",
    "Accepts and dials that failed because Sluice is out of file descriptors (EMFILE, ENFILE), by listener",
);
const DETECT_EVICTIONS: Spec = Spec::new(
    "sluice_detect_evictions",
    "Detection baselines (sources, destinations) evicted, least recently seen first, to stay within bounds",
);
const POOL_IDLE: Spec = Spec::new(
    "sluice_pool_idle_connections",
    "Idle keep-alive origin connections in the HTTP proxy's pool",
);
const ROUTE_UP: Spec = Spec::new(
    "sluice_route_up",
    "Whether a route's hop is in use (1) or ejected (0) by its health check or failed dials, by route and hop",
);
const ROUTE_DIALS: Spec = Spec::new(
    "sluice_route_dials",
    "Dials by route and hop, by result (`ok`, `failed`); a failed hop is followed by the route's next",
);
const ALERT_SINK_DELIVERED: Spec = Spec::new(
    "sluice_alert_sink_delivered",
    "Alerts an alert sink delivered (webhook: a 2xx answer; syslog: sent), by sink",
);
const ALERT_SINK_DROPPED: Spec = Spec::new(
    "sluice_alert_sink_dropped",
    "Alerts an alert sink dropped (queue full, or every attempt failed), by sink",
);
const NETFLOW_PACKETS: Spec = Spec::new(
    "sluice_netflow_packets",
    "NetFlow/IPFIX datagrams received by the collector (from any address)",
);
const NETFLOW_FLOWS: Spec = Spec::new(
    "sluice_netflow_flows",
    "Flows decoded from NetFlow/IPFIX datagrams (before gateway flows are set apart)",
);
const NETFLOW_DROPPED: Spec = Spec::new(
    "sluice_netflow_dropped",
    "NetFlow/IPFIX datagrams, sets and templates dropped, by reason (unknown-exporter, malformed, unknown-version, unknown-template, template-limit)",
);
const NETFLOW_GATEWAY_FLOWS: Spec = Spec::new(
    "sluice_netflow_gateway_flows",
    "Exported flows to or from a Sluice gateway (netflow.gateways): counted, not recorded again",
);
const NETFLOW_TEMPLATES: Spec = Spec::new(
    "sluice_netflow_templates",
    "v9/IPFIX templates the collector holds now",
);
const INSPECT_SCANS: Spec = Spec::new(
    "sluice_inspect_scans",
    "Objects sent to a content scanner (clamd, icap) by result: clean, found, error, unscanned",
);
const INSPECT_SCANNER_UP: Spec = Spec::new(
    "sluice_inspect_scanner_up",
    "Whether a content scanner (clamd, icap) answered its last exchange or probe (1) or not (0)",
);
const INSPECT_FINDINGS: Spec = Spec::new(
    "sluice_inspect_findings",
    "Inspection findings in flow records by type (DLP detector, malware, unscanned)",
);

/// decide() takes microseconds: 1 µs .. ~0.26 s.
fn decision_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1e-6, 4.0, 10)
}

/// Resolve and dial: 1 ms .. ~16 s.
fn connect_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1e-3, 2.0, 15)
}

/// Registers families one after the other: the order of registration is
/// the order of the exposition.
struct Registrar(Registry);

impl Registrar {
    /// Registers `metric` under `spec` and returns a handle to it.
    fn add<M: Metric + Clone>(&mut self, spec: Spec, metric: M) -> M {
        let handle = metric.clone();
        match spec.unit {
            Some(unit) => self
                .0
                .register_with_unit(spec.name, spec.help, unit, metric),
            None => self.0.register(spec.name, spec.help, metric),
        }
        handle
    }

    /// Registers an empty metric under `spec` and returns a handle to it.
    fn empty<M: Metric + Clone + Default>(&mut self, spec: Spec) -> M {
        self.add(spec, M::default())
    }

    /// `sluice_build_info`, set once, and the process collector.
    fn build_info(&mut self) {
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: COMMIT,
            })
            .set(1);
        self.add(BUILD_INFO, build_info);
        self.0
            .register_collector(Box::new(crate::process::ProcessCollector::new()));
    }
}

// === impl Metrics ===

impl Metrics {
    /// A registry with every family registered and nothing counted yet.
    pub fn new() -> Self {
        let mut r = Registrar(Registry::default());
        r.build_info();
        // A struct expression evaluates its fields in the order written:
        // this is the order of registration, hence of the exposition.
        let mut m = Metrics {
            registry: Registry::default(), // `r`'s, once every family is in
            tunnels: r.empty(TUNNELS),
            requests: r.empty(REQUESTS),
            bytes_out: r.empty(BYTES_OUT),
            bytes_in: r.empty(BYTES_IN),
            decision_duration: r.add(DECISION_DURATION, Histogram::new(decision_buckets())),
            connect_duration: r.add(CONNECT_DURATION, Histogram::new(connect_buckets())),
            active_tunnels: r.empty(ACTIVE_TUNNELS),
            flow_records_dropped: r.empty(FLOW_RECORDS_DROPPED),
            dial_failures: r.empty(DIAL_FAILURES),
            http_responses: r.empty(HTTP_RESPONSES),
            connections_rejected: r.empty(CONNECTIONS_REJECTED),
            auth_failures: r.empty(AUTH_FAILURES),
            config_reloads: r.empty(CONFIG_RELOADS),
            config_last_reload_success: r.empty(CONFIG_LAST_RELOAD_SUCCESS),
            config_loaded_timestamp: r.empty(CONFIG_LOADED_TIMESTAMP),
            rules_expired: r.empty(RULES_EXPIRED),
            policy_info: r.empty(POLICY_INFO),
            rule_hits: r.empty(RULE_HITS),
            dns_queries: r.empty(DNS_QUERIES),
            alerts: r.empty(ALERTS),
            dns_rate_limited: r.empty(DNS_RATE_LIMITED),
            fd_exhausted: r.empty(FD_EXHAUSTED),
            detect_evictions: r.empty(DETECT_EVICTIONS),
            pool_idle: r.empty(POOL_IDLE),
            route_up: r.empty(ROUTE_UP),
            route_dials: r.empty(ROUTE_DIALS),
            alert_sink_delivered: r.empty(ALERT_SINK_DELIVERED),
            alert_sink_dropped: r.empty(ALERT_SINK_DROPPED),
            netflow_packets: r.empty(NETFLOW_PACKETS),
            netflow_flows: r.empty(NETFLOW_FLOWS),
            netflow_dropped: r.empty(NETFLOW_DROPPED),
            netflow_gateway_flows: r.empty(NETFLOW_GATEWAY_FLOWS),
            netflow_templates: r.empty(NETFLOW_TEMPLATES),
            inspect_scans: r.empty(INSPECT_SCANS),
            inspect_scanner_up: r.empty(INSPECT_SCANNER_UP),
            inspect_findings: r.empty(INSPECT_FINDINGS),
        };
        m.registry = r.0;
        m.declare_fixed_series();
        m
    }

    /// Declares at zero the series whose labels are known up front: every
    /// dial failure kind, status class and connection cap.
    fn declare_fixed_series(&self) {
        for kind in DialFailure::ALL {
            self.dial_failures.get_or_create_owned(&KindLabel {
                kind: kind.as_str(),
            });
        }
        for class in STATUS_CLASSES {
            self.http_responses
                .get_or_create_owned(&ClassLabel { class });
        }
        for limit in LIMITS {
            self.connections_rejected
                .get_or_create_owned(&LimitLabel { limit });
        }
    }

    /// Sets `sluice_route_up{route,hop}`.
    pub fn route_up(&self, route: &str, hop: &str, up: bool) {
        self.route_up
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                hop: hop.to_owned(),
            })
            .set(i64::from(up));
    }

    /// Counts a dial by a route's hop in `sluice_route_dials_total`.
    pub fn route_dial(&self, route: &str, hop: &str, ok: bool) {
        self.route_dials
            .get_or_create(&RouteDialLabels {
                route: route.to_owned(),
                hop: hop.to_owned(),
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    /// Declares `sluice_netflow_dropped_total` for each reason, at zero.
    pub fn declare_netflow(&self, reasons: &[&'static str]) {
        for &reason in reasons {
            self.netflow_dropped
                .get_or_create_owned(&ReasonLabel { reason });
        }
    }

    /// Counts one datagram received by the NetFlow collector.
    pub fn netflow_packet(&self) {
        self.netflow_packets.inc();
    }

    /// Counts flows decoded by the NetFlow collector.
    pub fn netflow_flows(&self, n: u64) {
        self.netflow_flows.inc_by(n);
    }

    /// Counts datagrams, sets or templates dropped for `reason`.
    pub fn netflow_dropped(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.netflow_dropped
                .get_or_create(&ReasonLabel { reason })
                .inc_by(n);
        }
    }

    /// Counts one exported flow to or from a gateway (not recorded).
    pub fn netflow_gateway_flow(&self) {
        self.netflow_gateway_flows.inc();
    }

    /// Sets `sluice_netflow_templates`.
    pub fn set_netflow_templates(&self, n: usize) {
        self.netflow_templates
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts an accept or a dial on `listener` that failed for want of a
    /// file descriptor, in `sluice_fd_exhausted_total{listener}`.
    pub fn fd_exhausted(&self, listener: Listener) {
        self.fd_exhausted
            .get_or_create(&ListenerLabel {
                listener: listener.as_str(),
            })
            .inc();
    }

    /// Counts one object sent to `scanner` with `result`.
    pub fn inspect_scan(&self, scanner: &'static str, result: &'static str) {
        self.inspect_scans
            .get_or_create(&ScanLabels { scanner, result })
            .inc();
    }

    /// Sets whether `scanner` answers.
    pub fn inspect_scanner_up(&self, scanner: &'static str, up: bool) {
        self.inspect_scanner_up
            .get_or_create(&ScannerLabel { scanner })
            .set(i64::from(up));
    }

    /// Sets `sluice_pool_idle_connections`.
    pub fn set_pool_idle(&self, n: usize) {
        self.pool_idle.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The registry, for crates that add their own families before the
    /// metrics are shared.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Declares the series of every zone of `policy` for the proxy
    /// `listeners` that run (and DNS queries when `dns` runs), at zero, so
    /// that dashboards and `rate()` see every zone × verdict before its
    /// first flow. Called at start and after each reload (a new zone gets
    /// its series; a removed zone's stay until restart).
    pub fn declare_zones(&self, policy: &sluice_policy::Policy, listeners: &[Listener], dns: bool) {
        self.rules_expired
            .set(i64::try_from(policy.expired_count()).unwrap_or(i64::MAX));
        let config = policy.config();
        for zone in &config.zones {
            let report = zone.mode.unwrap_or(config.mode) == sluice_policy::Mode::Report;
            // The guard's denials are enforced in every mode; a report-mode
            // zone's own rules deny with `enforced: false`.
            let mut verdicts = vec![("allow", true), ("deny", true)];
            if report {
                verdicts.push(("deny", false));
            }
            for &listener in listeners {
                for &(verdict, enforced) in &verdicts {
                    let labels = FlowLabels {
                        listener: listener.as_str(),
                        zone: zone.name.clone(),
                        verdict,
                        enforced,
                    };
                    if listener != Listener::Dns {
                        self.tunnels.get_or_create_owned(&labels);
                    }
                    if listener == Listener::Http {
                        self.requests.get_or_create_owned(&labels);
                    }
                }
            }
            if dns {
                for verdict in ["allow", "deny"] {
                    self.dns_queries.get_or_create_owned(&DnsLabels {
                        zone: zone.name.clone(),
                        verdict,
                    });
                }
            }
            let label = ZoneLabel {
                zone: zone.name.clone(),
            };
            self.bytes_out.get_or_create_owned(&label);
            self.bytes_in.get_or_create_owned(&label);
        }
        for &listener in listeners {
            if matches!(listener, Listener::Http | Listener::Socks5) {
                self.auth_failures.get_or_create_owned(&ListenerLabel {
                    listener: listener.as_str(),
                });
            }
        }
    }

    /// Counts a dial that failed, in `sluice_dial_failures_total{kind}`.
    pub fn dial_failed(&self, kind: DialFailure) {
        self.dial_failures
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Counts a client connection refused by a cap, in
    /// `sluice_connections_rejected_total{limit}`; `per_source` says which.
    pub fn connection_rejected(&self, per_source: bool) {
        self.connections_rejected
            .get_or_create(&LimitLabel {
                limit: LIMITS[usize::from(per_source)],
            })
            .inc();
    }

    /// Counts a finished flow: a tunnel in `sluice_tunnels_total`, an
    /// absolute-form request in `sluice_requests_total`, its HTTP answer's
    /// class, a failed login, and its bytes by zone. DNS queries only add
    /// their bytes; the DNS forwarder counts queries itself. An interim
    /// record only adds its bytes (those since the flow's previous record):
    /// the flow is counted once, by its closing record.
    pub fn record(&self, r: &FlowRecord) {
        if r.interim == Some(true) {
            self.add_bytes(r);
            return;
        }
        let class = r
            .status
            .filter(|_| r.listener != Listener::Dns)
            .and_then(|s| STATUS_CLASSES.get(usize::from(s / 100).wrapping_sub(1)));
        if let Some(&class) = class {
            self.http_responses
                .get_or_create(&ClassLabel { class })
                .inc();
        }
        if r.rule == sluice_policy::ids::AUTH_FAILED {
            self.auth_failures
                .get_or_create(&ListenerLabel {
                    listener: r.listener.as_str(),
                })
                .inc();
        }
        let zone = r.zone.clone().unwrap_or_default();
        let labels = FlowLabels {
            listener: r.listener.as_str(),
            zone,
            verdict: r.verdict.as_str(),
            enforced: r.enforced,
        };
        match r.protocol {
            Protocol::Http => self.requests.get_or_create(&labels).inc(),
            Protocol::Dns => 0,
            _ => self.tunnels.get_or_create(&labels).inc(),
        };
        for f in r.findings.iter().flatten() {
            self.inspect_findings
                .get_or_create(&FindingLabel {
                    r#type: f.kind.clone(),
                })
                .inc_by(f.count);
        }
        self.add_bytes(r);
    }

    /// [`Metrics::record`] for records that arrived together (the flows
    /// of one NetFlow datagram): the same counts, summed here first so
    /// that each label set is looked up once a batch instead of once a
    /// record (each lookup builds a label with an owned zone name and
    /// takes the family's lock). Records with an HTTP status, findings,
    /// a failed login or an interim flag go through [`Metrics::record`].
    pub fn record_batch<'r>(&self, rs: impl IntoIterator<Item = &'r FlowRecord>) {
        /// (listener, zone, verdict, enforced, is a request) → flows.
        type Flows<'a> = Vec<((Listener, Option<&'a str>, &'static str, bool, bool), u64)>;
        let mut flows: Flows<'r> = Vec::new();
        // zone → (bytes out, bytes in)
        let mut bytes: Vec<(Option<&'r str>, u64, u64)> = Vec::new();
        for r in rs {
            if r.interim.is_some()
                || r.status.is_some()
                || r.findings.is_some()
                || r.rule == sluice_policy::ids::AUTH_FAILED
            {
                self.record(r);
                continue;
            }
            let zone = r.zone.as_deref();
            if r.protocol != Protocol::Dns {
                let key = (
                    r.listener,
                    zone,
                    r.verdict.as_str(),
                    r.enforced,
                    r.protocol == Protocol::Http,
                );
                match flows.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, n)) => *n += 1,
                    None => flows.push((key, 1)),
                }
            }
            if r.bytes_out > 0 || r.bytes_in > 0 {
                match bytes.iter_mut().find(|(z, _, _)| *z == zone) {
                    Some((_, o, i)) => {
                        *o += r.bytes_out;
                        *i += r.bytes_in;
                    }
                    None => bytes.push((zone, r.bytes_out, r.bytes_in)),
                }
            }
        }
        for ((listener, zone, verdict, enforced, request), n) in flows {
            let labels = FlowLabels {
                listener: listener.as_str(),
                zone: zone.unwrap_or_default().to_owned(),
                verdict,
                enforced,
            };
            let family = if request {
                &self.requests
            } else {
                &self.tunnels
            };
            family.get_or_create(&labels).inc_by(n);
        }
        for (zone, out, inb) in bytes {
            let zone = ZoneLabel {
                zone: zone.unwrap_or_default().to_owned(),
            };
            if out > 0 {
                self.bytes_out.get_or_create(&zone).inc_by(out);
            }
            if inb > 0 {
                self.bytes_in.get_or_create(&zone).inc_by(inb);
            }
        }
    }

    /// Adds a record's bytes to `sluice_bytes_{out,in}_total{zone}`.
    fn add_bytes(&self, r: &FlowRecord) {
        if r.bytes_out == 0 && r.bytes_in == 0 {
            return;
        }
        let zone = ZoneLabel {
            zone: r.zone.clone().unwrap_or_default(),
        };
        if r.bytes_out > 0 {
            self.bytes_out.get_or_create(&zone).inc_by(r.bytes_out);
        }
        if r.bytes_in > 0 {
            self.bytes_in.get_or_create(&zone).inc_by(r.bytes_in);
        }
    }

    /// Counts one DNS query in `sluice_dns_queries_total{zone,verdict}`
    /// (zone `""` when the source matched none). The DNS listener calls this
    /// once per query; [`Metrics::record`] does not count DNS records.
    pub fn dns_query(&self, zone: Option<&str>, verdict: sluice_policy::Verdict) {
        self.dns_queries
            .get_or_create(&DnsLabels {
                zone: zone.unwrap_or_default().to_owned(),
                verdict: verdict.as_str(),
            })
            .inc();
    }

    /// Counts `n` detection baselines evicted to stay within bounds, in
    /// `sluice_detect_evictions_total`.
    pub fn detect_evicted(&self, n: u64) {
        self.detect_evictions.inc_by(n);
    }

    /// Counts one emitted alert in `sluice_alerts_total{kind,severity}`.
    /// [`crate::Recorder::alert`] calls this once per new alert; repeats
    /// that only raise a stored alert's count are not counted.
    pub fn alert(&self, kind: AlertKind, severity: Severity) {
        self.alerts
            .get_or_create(&AlertLabels {
                kind: kind.as_str(),
                severity: severity.as_str(),
            })
            .inc();
    }

    /// Declares an alert sink's series at zero (`sink`: `webhook`, `syslog`).
    pub fn declare_alert_sink(&self, sink: &'static str) {
        self.alert_sink_delivered
            .get_or_create_owned(&SinkLabel { sink });
        self.alert_sink_dropped
            .get_or_create_owned(&SinkLabel { sink });
    }

    /// Counts one alert `sink` delivered.
    pub fn alert_sink_delivered(&self, sink: &'static str) {
        self.alert_sink_delivered
            .get_or_create(&SinkLabel { sink })
            .inc();
    }

    /// Counts one alert `sink` dropped (queue full or delivery failed).
    pub fn alert_sink_dropped(&self, sink: &'static str) {
        self.alert_sink_dropped
            .get_or_create(&SinkLabel { sink })
            .inc();
    }

    /// Counts one DNS query dropped by the per-source rate limit.
    pub fn dns_rate_limited(&self) {
        self.dns_rate_limited.inc();
    }

    /// Observes how long a decision took.
    pub fn observe_decision(&self, took: Duration) {
        self.decision_duration.observe(took.as_secs_f64());
    }

    /// Observes how long resolving and connecting took.
    pub fn observe_connect(&self, took: Duration) {
        self.connect_duration.observe(took.as_secs_f64());
    }

    /// Counts a tunnel as active until the returned guard is dropped.
    pub fn active_tunnel(&self, listener: Listener) -> ActiveTunnel {
        let gauge = self.active_tunnels.get_or_create_owned(&ListenerLabel {
            listener: listener.as_str(),
        });
        gauge.inc();
        ActiveTunnel { gauge }
    }

    /// Counts a decision by a rule with an explicit id. The caller decides
    /// which rules qualify: generated ids (`web/allow/3`) shift with edits
    /// and stay in the admin API.
    pub fn rule_hit(&self, rule_id: &str) {
        self.rule_hits
            .get_or_create(&RuleLabel {
                rule: rule_id.to_owned(),
            })
            .inc();
    }

    /// A policy is running (at start-up or after a reload): its hash becomes
    /// the only `sluice_policy_info`, and the load time and success are set.
    pub fn policy_loaded(&self, hash: &str, at: SystemTime) {
        self.policy_info.clear();
        self.policy_info
            .get_or_create(&HashLabel {
                hash: hash.to_owned(),
            })
            .set(1);
        let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        self.config_loaded_timestamp.set(secs.as_secs_f64());
        self.config_last_reload_success.set(1);
    }

    /// A reload succeeded and the policy with `hash` now runs.
    pub fn reload_succeeded(&self, hash: &str, at: SystemTime) {
        self.config_reloads
            .get_or_create(&ResultLabel { result: "success" })
            .inc();
        self.policy_loaded(hash, at);
    }

    /// A reload failed; the old policy keeps running.
    pub fn reload_failed(&self) {
        self.config_reloads
            .get_or_create(&ResultLabel { result: "failure" })
            .inc();
        self.config_last_reload_success.set(0);
    }

    /// Every family in the text exposition format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; a metric that failed to encode
        // would only leave the output short.
        if let Err(e) = text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

// === impl ActiveTunnel ===

impl Drop for ActiveTunnel {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn flow(protocol: Protocol, zone: &str, verdict: &str) -> FlowRecord {
        let src: SocketAddr = "10.0.1.7:40000".parse().unwrap();
        let mut r = FlowRecord::new(Listener::Http, protocol, src, SystemTime::now());
        r.zone = Some(zone.into());
        r.verdict = match verdict {
            "allow" => sluice_policy::Verdict::Allow,
            _ => sluice_policy::Verdict::Deny,
        };
        r.bytes_out = 100;
        r.bytes_in = 2000;
        r
    }

    /// A minimal parse of the exposition: every sample line is
    /// `name{labels} value` with a numeric value, and it ends with `# EOF`.
    fn samples(text: &str) -> Vec<(String, f64)> {
        assert!(text.ends_with("# EOF\n"), "{text}");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                (series.to_owned(), value.parse::<f64>().unwrap())
            })
            .collect()
    }

    fn value(text: &str, series: &str) -> f64 {
        samples(text)
            .into_iter()
            .find(|(s, _)| s == series)
            .unwrap_or_else(|| panic!("{series} not in\n{text}"))
            .1
    }

    #[test]
    fn metrics_are_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<Metrics>();
        shared::<ActiveTunnel>();
    }

    /// A series of each family [`touch_every_family`] fills, by prefix.
    const EVERY_FAMILY: [&str; 23] = [
        "sluice_tunnels_total{",
        "sluice_build_info{",
        "sluice_dial_failures_total{",
        "sluice_http_responses_total{",
        "sluice_connections_rejected_total{",
        "process_cpu_seconds_total",
        "process_open_fds",
        "sluice_requests_total{",
        "sluice_bytes_out_total{",
        "sluice_bytes_in_total{",
        "sluice_decision_duration_seconds_bucket{",
        "sluice_connect_duration_seconds_count",
        "sluice_active_tunnels{",
        "sluice_flow_records_dropped_total",
        "sluice_config_reloads_total{",
        "sluice_config_last_reload_success",
        "sluice_config_loaded_timestamp_seconds",
        "sluice_policy_info{",
        "sluice_rule_hits_total{",
        "sluice_dns_queries_total{",
        "sluice_alerts_total{",
        "sluice_dns_rate_limited_total",
        "sluice_rules_expired",
    ];

    /// Counts something in each family; the tunnel stays active while the
    /// returned guard is held.
    fn touch_every_family(m: &Metrics) -> ActiveTunnel {
        m.record(&flow(Protocol::Connect, "web", "allow"));
        m.record(&flow(Protocol::Http, "web", "deny"));
        m.observe_decision(Duration::from_micros(3));
        m.observe_connect(Duration::from_millis(20));
        let tunnel = m.active_tunnel(Listener::Socks5);
        m.flow_records_dropped.inc();
        m.reload_failed();
        m.rule_hit("gh-content");
        m.dns_query(Some("web"), sluice_policy::Verdict::Deny);
        m.alert(AlertKind::DnsTunnel, Severity::Critical);
        m.dns_rate_limited();
        m.policy_loaded("abc", UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        tunnel
    }

    #[test]
    fn encodes_every_family_with_conventional_names() {
        let m = Metrics::new();
        let _tunnel = touch_every_family(&m);
        let text = m.encode();
        let names: Vec<String> = samples(&text).into_iter().map(|(s, _)| s).collect();
        for family in EVERY_FAMILY {
            assert!(
                names.iter().any(|n| n.starts_with(family)),
                "{family} in\n{text}"
            );
        }
        for (series, want) in [
            (
                r#"sluice_tunnels_total{listener="http",zone="web",verdict="allow",enforced="true"}"#,
                1.0,
            ),
            (
                r#"sluice_requests_total{listener="http",zone="web",verdict="deny",enforced="true"}"#,
                1.0,
            ),
            (r#"sluice_bytes_in_total{zone="web"}"#, 4000.0),
            (r#"sluice_active_tunnels{listener="socks5"}"#, 1.0),
            ("sluice_config_last_reload_success", 1.0),
            ("sluice_config_loaded_timestamp_seconds", 1.7e9),
            (
                r#"sluice_dns_queries_total{zone="web",verdict="deny"}"#,
                1.0,
            ),
            (
                r#"sluice_alerts_total{kind="dns-tunnel",severity="critical"}"#,
                1.0,
            ),
        ] {
            assert_eq!(value(&text, series), want, "{series}");
        }
        assert!(!text.contains("10.0.1.7"), "no addresses in labels");
    }

    #[test]
    fn interim_records_add_bytes_and_never_count_the_flow() {
        let m = Metrics::new();
        let mut interim = flow(Protocol::Connect, "web", "allow");
        interim.status = Some(200);
        interim.interim = Some(true);
        m.record(&interim);
        m.record(&interim);
        let mut last = interim.clone();
        last.interim = Some(false);
        m.record(&last);
        let text = m.encode();
        let conn =
            r#"sluice_tunnels_total{listener="http",zone="web",verdict="allow",enforced="true"}"#;
        assert_eq!(value(&text, conn), 1.0);
        assert_eq!(
            value(&text, r#"sluice_http_responses_total{class="2xx"}"#),
            1.0
        );
        assert_eq!(value(&text, r#"sluice_bytes_out_total{zone="web"}"#), 300.0);
        assert_eq!(value(&text, r#"sluice_bytes_in_total{zone="web"}"#), 6000.0);
    }

    #[test]
    fn tunnels_leave_the_gauge_when_dropped() {
        let m = Metrics::new();
        let series = r#"sluice_active_tunnels{listener="http"}"#;
        let a = m.active_tunnel(Listener::Http);
        let b = m.active_tunnel(Listener::Http);
        assert_eq!(value(&m.encode(), series), 2.0);
        drop(a);
        drop(b);
        assert_eq!(value(&m.encode(), series), 0.0);
    }

    #[test]
    fn policy_info_keeps_only_the_current_hash() {
        let m = Metrics::new();
        m.policy_loaded("old", SystemTime::now());
        m.reload_failed();
        assert_eq!(value(&m.encode(), "sluice_config_last_reload_success"), 0.0);
        m.reload_succeeded("new", SystemTime::now());
        let text = m.encode();
        assert_eq!(value(&text, r#"sluice_policy_info{hash="new"}"#), 1.0);
        assert!(!text.contains(r#"hash="old""#), "{text}");
        assert_eq!(
            value(&text, r#"sluice_config_reloads_total{result="success"}"#),
            1.0
        );
        assert_eq!(
            value(&text, r#"sluice_config_reloads_total{result="failure"}"#),
            1.0
        );
        assert_eq!(value(&text, "sluice_config_last_reload_success"), 1.0);
    }
}
