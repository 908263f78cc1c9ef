//! The configuration model: what `sluice.yaml` says, already typed and
//! checked. `load` reads it (its key tables are where each key is defined,
//! with the schema `sluice schema` prints); the model serializes back to
//! JSON under the same names for `/api/v1/config`.
//!
//! The model is plain data. It does no I/O: a `password_hash_file` is a path
//! that the binary reads.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize, Serializer};

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Config {
    /// Where Sluice listens.
    pub listen: Listen,
    /// Admin listener settings.
    pub admin: Admin,
    /// Default mode for zones that do not set their own.
    pub mode: Mode,
    /// Deny a CONNECT tunnel whose TLS SNI names another host than the
    /// CONNECT target (domain fronting). Default `true`.
    pub tls_sni_must_match: bool,
    /// Network segments and identities, each with its own egress policy.
    /// The first zone in file order whose conditions hold is selected.
    pub zones: Vec<Zone>,
    /// Users for proxy authentication.
    pub users: Vec<User>,
    /// Name resolution for dialing.
    pub dns: Dns,
    /// Connection limits and timeouts.
    pub limits: Limits,
    /// Where flow records go.
    pub log: Log,
    /// The flow bus: every record and alert published to NATS JetStream.
    pub bus: Bus,
    /// Named ways out (`direct` is built in), chosen by `zones[].route`
    /// or `allow[].route`.
    pub routes: Vec<RouteDef>,
    /// Detection: baselines and alerts (`detect:`).
    pub detect: Detect,
    /// The NetFlow / IPFIX collector (`listen.netflow`).
    pub netflow: Netflow,
    /// `inspect`: the scanners zones may use and the interception CA.
    pub inspect: Inspect,
}

impl Default for Config {
    /// What an empty file means: no listeners, no zones, every setting at
    /// its default.
    fn default() -> Self {
        Config {
            listen: Listen::default(),
            admin: Admin::default(),
            mode: Mode::Enforce,
            tls_sni_must_match: true,
            zones: Vec::new(),
            users: Vec::new(),
            dns: Dns::default(),
            limits: Limits::default(),
            log: Log::default(),
            bus: Bus::default(),
            routes: Vec::new(),
            detect: Detect::default(),
            netflow: Netflow::default(),
            inspect: Inspect::default(),
        }
    }
}

/// Listener addresses. A listener that is not named does not run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Listen {
    /// HTTP forward proxy (CONNECT and absolute-form), e.g. `127.0.0.1:3128`.
    pub http: Option<SocketAddr>,
    /// Admin endpoints (`/healthz`, `/readyz`), e.g. `127.0.0.1:9901`.
    pub admin: Option<SocketAddr>,
    /// SOCKS5 proxy (RFC 1928 CONNECT, RFC 1929 user/password), e.g.
    /// `127.0.0.1:1080`.
    pub socks5: Option<SocketAddr>,
    /// Transparent listener (Linux), the target of an nftables `redirect`;
    /// bind the gateway interface's address, e.g. `192.0.2.1:3129`.
    pub transparent: Option<SocketAddr>,
    /// `SO_MARK` put on every socket Sluice dials, so that a redirect
    /// ruleset can exempt Sluice's own traffic (loop protection); a number
    /// such as `0x5c` or `92`. Needs `CAP_NET_ADMIN`.
    pub transparent_mark: Option<u32>,
    /// Load balancer CIDRs that must send a PROXY protocol v1/v2 header on
    /// the HTTP, SOCKS5 and transparent listeners; empty: none.
    pub proxy_protocol_from: Vec<IpNet>,
    /// Filtering DNS forwarder, UDP and TCP on the same address, e.g.
    /// `127.0.0.1:5353`.
    pub dns: Option<SocketAddr>,
    /// NetFlow v5/v9 and IPFIX collector (UDP), e.g. `0.0.0.0:2055`.
    pub netflow: Option<SocketAddr>,
}

/// Admin listener settings.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Admin {
    /// File holding the bearer token; required when admin binds beyond loopback.
    pub token_file: Option<PathBuf>,
    /// Paths served without the bearer token, for probes: any of
    /// `/healthz`, `/readyz`, `/metrics`. Default `[/healthz, /readyz]`.
    pub open_paths: Vec<String>,
    /// Extra names (`name` or `name:port`) accepted in the `Host` header
    /// besides `localhost` and the address a connection arrived on.
    pub hosts: Vec<String>,
    /// Recent flows kept in memory for the API and dashboard.
    pub recent_flows: u32,
    /// Recent denials kept in memory, apart from the flow ring.
    pub recent_denials: u32,
    /// Recent alerts kept in memory for the API and dashboard (repeats
    /// within an alert's window only raise its count).
    pub recent_alerts: u32,
    /// How far back top sources, destinations and traffic reach (60 buckets).
    #[serde(with = "duration_text")]
    pub window: Duration,
    /// Distinct sources and destinations tracked per zone and bucket.
    pub top_entries: u32,
    /// A rule with no hit for this long (or none since start) is stale.
    #[serde(with = "duration_text")]
    pub stale_after: Duration,
    /// Live flow streams open at once; one more is answered 503.
    pub max_streams: u32,
}

fn default_open_paths() -> Vec<String> {
    vec!["/healthz".to_owned(), "/readyz".to_owned()]
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            token_file: None,
            open_paths: default_open_paths(),
            hosts: Vec::new(),
            recent_flows: 5_000,
            recent_denials: 1_000,
            recent_alerts: 1_000,
            window: Duration::from_secs(3600),
            top_entries: 100,
            stale_after: Duration::from_secs(24 * 3600),
            max_streams: 32,
        }
    }
}

/// How a zone's rules are applied. The guard is enforced in every mode.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Allowlist: deny rules, then allow rules, then default deny.
    #[default]
    Enforce,
    /// Blocklist: deny rules apply, everything else is allowed.
    Open,
    /// Judged like `enforce`, but the zone's denials are only recorded.
    Report,
}

impl Mode {
    /// The lower-case name used in files and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Open => "open",
            Mode::Report => "report",
        }
    }
}

/// A network segment or identity with its own egress policy.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Zone {
    /// `[a-z0-9_-]{1,63}`; `guard`, `default` and `inspect` are reserved.
    pub name: String,
    /// Client CIDRs; the client address must lie in one of them.
    pub sources: Option<Vec<IpNet>>,
    /// Authenticated users; the request's user must be one of them.
    pub users: Option<Vec<String>>,
    /// Overrides the top-level `mode`.
    pub mode: Option<Mode>,
    /// Allow rules (`ports` required).
    pub allow: Vec<Rule>,
    /// Deny rules (without `ports` they cover every port).
    pub deny: Vec<Rule>,
    /// The route this zone's flows leave by (a name under `routes`, or
    /// `direct`); `None`: direct.
    pub route: Option<String>,
    /// ISO 3166 country codes this zone's traffic may go to; a flow to any
    /// other country raises a `geo` warning. `None`: any country.
    pub countries: Option<Vec<String>>,
    /// `detect: off`: no detector looks at this zone's flows.
    pub detect: Switch,
    /// `inspect`: what this zone's flows are inspected for; nothing by default.
    pub inspect: ZoneInspect,
    /// `require_tls`: tunnels must start with a TLS ClientHello and
    /// plaintext absolute-form HTTP is denied (`inspect/require-tls`).
    pub require_tls: bool,
}

// === inspection ===

/// `inspect`: the scanners zones may use and the interception CA (read
/// once at start, except the DLP patterns, which follow the policy version).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Inspect {
    /// `ca`: the interception CA.
    pub ca: InspectCa,
    /// `extra_roots`: PEM files of CAs trusted for upstream certificates
    /// besides the system roots.
    pub extra_roots: Vec<FileRef>,
    /// The clamd malware scanner.
    pub clamd: ClamdConfig,
    /// ICAP services.
    pub icap: IcapConfig,
    /// DLP custom patterns and the findings' hash key.
    pub dlp: DlpConfig,
}

/// `inspect.clamd`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClamdConfig {
    /// `unix:/path`, `tcp://host:port` or `host:port`; `None`: no clamd.
    pub address: Option<String>,
    /// Time allowed for one scan (connect, send, verdict).
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Largest object scanned, in bytes (bodies are buffered up to it).
    pub max_size: u64,
}

impl Default for ClamdConfig {
    fn default() -> Self {
        ClamdConfig {
            address: None,
            timeout: Duration::from_secs(30),
            max_size: 10 << 20,
        }
    }
}

/// `inspect.icap`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IcapConfig {
    /// `icap://host:port/service` for requests.
    pub reqmod: Option<String>,
    /// `icap://host:port/service` for responses.
    pub respmod: Option<String>,
    /// Time allowed for one exchange.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Bytes of the body sent as the `Preview` (0: no preview).
    pub preview: u64,
    /// Largest body sent to the service, in bytes (bodies are buffered up to it).
    pub max_size: u64,
}

impl Default for IcapConfig {
    fn default() -> Self {
        IcapConfig {
            reqmod: None,
            respmod: None,
            timeout: Duration::from_secs(30),
            preview: 4096,
            max_size: 10 << 20,
        }
    }
}

/// `inspect.dlp`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DlpConfig {
    /// Custom detectors.
    pub patterns: Vec<DlpPattern>,
    /// File holding the findings' hash key (at least 16 bytes); unset: a
    /// random key per process.
    pub hash_key_file: Option<PathBuf>,
}

/// One custom DLP detector.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DlpPattern {
    /// The detector's name (rule `inspect/dlp/<name>`).
    pub name: String,
    /// A `regex` with a bounded match length.
    pub regex: String,
}

/// The built-in DLP detectors.
pub const DLP_DETECTORS: &[&str] = &[
    "card", "iban", "aws", "gcp", "azure", "github", "gitlab", "slack", "stripe", "pem", "jwt",
];

/// What a zone does with a DLP detector's finding.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DlpAction {
    /// Refuse the request (`403`, rule `inspect/dlp/<detector>`).
    Block,
    /// Pass it and raise a `dlp` alert.
    Alert,
    /// Pass it; the finding is in the record only.
    Log,
}

/// What a zone does with a malware verdict.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MalwareAction {
    /// Refuse the object (rule `inspect/malware`).
    Block,
    /// Pass it and raise a `malware` alert.
    Alert,
}

/// What happens when a scanner cannot give a verdict (down, timed out,
/// the object over its size limit).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Refuse the exchange.
    #[default]
    Closed,
    /// Pass it, recorded as unscanned.
    Open,
}

/// A zone's `inspect`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ZoneInspect {
    /// `tls`: host patterns (as a `host` rule's) whose TLS is intercepted.
    pub tls: Vec<String>,
    /// Detector → action, in file order.
    pub dlp: DlpActions,
    /// Scan uploads and downloads with clamd.
    pub malware: Option<MalwareAction>,
    /// Send requests and responses to the ICAP services.
    pub icap: bool,
    /// When a scanner has no verdict.
    pub fail: FailMode,
    /// Where the zone's `inspect` key is, for errors that span sections.
    #[serde(skip)]
    pub line: usize,
    /// Its column.
    #[serde(skip)]
    pub column: usize,
}

impl ZoneInspect {
    /// Whether the zone inspects content (DLP, clamd or ICAP); `tls` alone
    /// only decides which tunnels are decrypted.
    pub fn any(&self) -> bool {
        !self.dlp.0.is_empty() || self.malware.is_some() || self.icap
    }
}

/// A zone's DLP detectors and actions, each with where it was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DlpActions(pub Vec<(String, DlpAction, (usize, usize))>);

impl Serialize for DlpActions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (name, action, _) in &self.0 {
            m.serialize_entry(name, action)?;
        }
        m.end()
    }
}

/// `inspect.ca`: the CA that signs the leaf certificates of intercepted
/// destinations.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct InspectCa {
    /// `cert_file`: the CA certificate (PEM).
    pub cert_file: Option<FileRef>,
    /// `key_file`: its private key (PEM, PKCS#8).
    pub key_file: Option<FileRef>,
}

/// A file the configuration names, with where it names it (the binary
/// reads it and reports problems at that position). Relative paths are
/// relative to the configuration file's folder. Two are equal when their
/// paths are.
#[derive(Debug, Clone)]
pub struct FileRef {
    /// The path as written.
    pub path: PathBuf,
    /// Line of the value.
    pub line: usize,
    /// Column of the value.
    pub column: usize,
}

impl PartialEq for FileRef {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

impl Serialize for FileRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.path.serialize(s)
    }
}

/// One allow or deny rule: exactly one of `host` and `cidr`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Rule {
    /// `example.com` (that name only) or `*.example.com` (every name below it).
    pub host: Option<String>,
    /// An address block, e.g. `198.51.100.0/24`.
    pub cidr: Option<IpNet>,
    /// Ports: a list of numbers and `"a-b"` ranges, or `any`.
    pub ports: Option<Ports>,
    /// Optional stable id, unique in the file; otherwise `zone/allow/N`.
    pub id: Option<String>,
    /// Who answers for the rule (free text).
    pub owner: Option<String>,
    /// The ticket or change that asked for it (free text).
    pub ticket: Option<String>,
    /// When the rule stops matching (RFC 3339).
    pub expires: Option<Expiry>,
    /// The route flows this (allow) rule lets out leave by, over the
    /// zone's.
    pub route: Option<String>,
    /// Allow rules only: the zone may reach this destination without the
    /// gateway, so a flow an exporter reports to it raises no `bypass` alert.
    pub bypass: bool,
    /// `require_tls` on an allow rule: what it allows must be TLS.
    pub require_tls: bool,
}

/// A rule's `expires`: the instant, as written, and where it was written
/// (for the warning once it has passed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    /// Unix time in milliseconds.
    pub unix_ms: i64,
    /// The RFC 3339 text as written.
    pub text: String,
    /// 1-based line of the value.
    pub line: usize,
    /// 1-based column of the value.
    pub column: usize,
}

impl Serialize for Expiry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// A set of destination ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    /// Every port.
    Any,
    /// Inclusive ranges in the order written.
    List(Vec<(u16, u16)>),
}

impl Ports {
    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        match self {
            Ports::Any => true,
            Ports::List(ranges) => ranges.iter().any(|&(a, b)| a <= port && port <= b),
        }
    }
}

impl Serialize for Ports {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Ports::Any => s.serialize_str("any"),
            Ports::List(ranges) => {
                let items: Vec<serde_json::Value> = ranges
                    .iter()
                    .map(|&(a, b)| {
                        if a == b {
                            serde_json::Value::from(a)
                        } else {
                            serde_json::Value::from(format!("{a}-{b}"))
                        }
                    })
                    .collect();
                items.serialize(s)
            }
        }
    }
}

/// A user for proxy authentication.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct User {
    /// The user name sent in `Proxy-Authorization`.
    pub name: String,
    /// An argon2 PHC string (`$argon2id$v=19$...`); never a clear password.
    #[serde(serialize_with = "redact")]
    pub password_hash: Option<String>,
    /// A file holding the argon2 PHC string instead.
    pub password_hash_file: Option<PathBuf>,
}

fn redact<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

/// Name resolution settings: the dialer's resolver and the DNS forwarder
/// (`listen.dns`). Durations are written `500ms`, `10s`, `5m`, `1h`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Dns {
    /// Resolvers (`ip:port`); default: the system resolver.
    pub upstreams: Vec<SocketAddr>,
    /// Time allowed for one upstream to answer before the next is tried.
    #[serde(with = "duration_text")]
    pub upstream_timeout: Duration,
    /// Longest TTL cached and handed to clients (longer TTLs are capped).
    #[serde(with = "duration_text")]
    pub answer_ttl_max: Duration,
    /// Longest time a negative answer (NXDOMAIN, no data) is cached.
    #[serde(with = "duration_text")]
    pub negative_ttl: Duration,
    /// Answers cached at most.
    pub cache_size: u32,
    /// The answer to a name the zone may not resolve: `nxdomain`,
    /// `refused`, or a sinkhole address.
    pub blocked_answer: BlockedAnswer,
    /// Queries a second one source may send (token bucket, burst of the
    /// same size); more are dropped.
    pub rate_limit_qps: u32,
    /// DNS-derived grants (zone, address → name) remembered at most.
    pub grants_max: u32,
    /// Tunnelling score (0 to 1) at which a registrable domain raises an alert.
    pub tunnel_threshold: f64,
    /// The window over which tunnelling signals are measured.
    #[serde(with = "duration_text")]
    pub tunnel_window: Duration,
    /// Queries for one registrable domain in a window before it is scored.
    pub tunnel_min_queries: u32,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            upstreams: Vec::new(),
            upstream_timeout: Duration::from_secs(2),
            answer_ttl_max: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(60),
            cache_size: 10_000,
            blocked_answer: BlockedAnswer::Nxdomain,
            rate_limit_qps: 1000,
            grants_max: 100_000,
            tunnel_threshold: 0.6,
            tunnel_window: Duration::from_secs(60),
            tunnel_min_queries: 20,
        }
    }
}

/// What the DNS forwarder answers for a name the zone may not resolve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BlockedAnswer {
    /// `NXDOMAIN`: the name does not exist.
    #[default]
    Nxdomain,
    /// `REFUSED`.
    Refused,
    /// A sinkhole address for queries of its family (A or AAAA); other
    /// types get an empty answer.
    Sinkhole(IpAddr),
}

impl Serialize for BlockedAnswer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            BlockedAnswer::Nxdomain => s.serialize_str("nxdomain"),
            BlockedAnswer::Refused => s.serialize_str("refused"),
            BlockedAnswer::Sinkhole(ip) => s.serialize_str(&ip.to_string()),
        }
    }
}

/// Connection limits and timeouts. Durations are written `500ms`, `10s`, `5m`, `1h`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Limits {
    /// Open client connections in total.
    pub max_connections: u32,
    /// Open client connections from one source address.
    pub max_connections_per_source: u32,
    /// Time allowed to send a complete request head, from the connection's
    /// start or from the first byte of a later request on it.
    #[serde(with = "duration_text")]
    pub header_timeout: Duration,
    /// Largest request head accepted, in bytes.
    pub max_header_bytes: u32,
    /// A tunnel, or a keep-alive client connection between requests, with no
    /// traffic this long is closed.
    #[serde(with = "duration_text")]
    pub idle_timeout: Duration,
    /// Time allowed to resolve a destination's name and connect to it,
    /// together (one deadline for the dial stage).
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
    /// On SIGTERM, how long open tunnels may continue.
    #[serde(with = "duration_text")]
    pub drain_timeout: Duration,
    /// On SIGTERM, how long `/readyz` answers 503 while the listeners
    /// still accept, before the drain closes them (for load balancers to
    /// notice); `0s`: close at once.
    #[serde(with = "duration_text")]
    pub drain_grace: Duration,
    /// Time an origin may take to send a response head once the request
    /// was fully sent to it (absolute-form requests); past it, 504.
    #[serde(with = "duration_text")]
    pub response_timeout: Duration,
    /// Idle keep-alive origin connections kept in total.
    pub pool_max_idle: u32,
    /// Idle keep-alive origin connections kept per destination.
    pub pool_max_idle_per_host: u32,
    /// An idle pooled origin connection is closed after this long.
    #[serde(with = "duration_text")]
    pub pool_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_connections_per_source: 512,
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            drain_grace: Duration::ZERO,
            response_timeout: Duration::from_secs(60),
            pool_max_idle: 256,
            // 8 closed three in four connections when 32 clients shared one
            // origin (every response came back to a full list): a new
            // origin connection for ~30 % of keep-alive requests, measured
            // with bench/ab-http.sh (bench/README.md, issue 17).
            pool_max_idle_per_host: 64,
            pool_idle_timeout: Duration::from_secs(60),
        }
    }
}

mod duration_text {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let ms = d.as_millis();
        if ms % 1000 == 0 {
            s.serialize_str(&format!("{}s", ms / 1000))
        } else {
            s.serialize_str(&format!("{ms}ms"))
        }
    }
}

/// The flow bus (docs/design.md "Fleet"): every flow record and alert
/// published to NATS JetStream, for followers that detect fleet-wide. Off
/// unless `url` is set.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bus {
    /// `nats://host:port` or `tls://host:port`; several, comma-separated,
    /// for a cluster. `None`: no bus.
    pub url: Option<String>,
    /// The JetStream stream that holds `sluice.flows.>` and
    /// `sluice.alerts`; created if missing.
    pub stream: String,
    /// Flow subjects per zone: `sluice.flows.<zone>.<p>` with `p` the
    /// source address's FNV-1a hash modulo this.
    pub partitions: u32,
    /// Records and alerts waiting to be published at most; more are
    /// dropped and counted.
    pub queue: u32,
}

impl Default for Bus {
    fn default() -> Self {
        Bus {
            url: None,
            stream: "SLUICE".to_owned(),
            partitions: 8,
            queue: 10_000,
        }
    }
}

/// Where flow records go.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Log {
    /// `stdout` or a file path; JSON lines.
    pub flows: String,
    /// How often a long tunnel writes an interim record with the bytes
    /// since its previous record.
    #[serde(with = "duration_text")]
    pub interim: Duration,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            flows: "stdout".to_owned(),
            interim: Duration::from_secs(60),
        }
    }
}

/// One named way out (`routes[]`): its hops, tried in order (`failover`)
/// or by weight (`weighted`), each checked by a TCP connect every
/// `health_check.interval`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteDef {
    /// `[a-z0-9_-]{1,63}`; `direct` is built in.
    pub name: String,
    /// The hops: `direct`, `http://host:port`, `socks5://host:port`.
    pub via: Vec<Hop>,
    /// The local address every connection of this route leaves from.
    pub source: Option<IpAddr>,
    /// The interface every connection of this route leaves by
    /// (`SO_BINDTODEVICE`, needs `CAP_NET_RAW`).
    pub interface: Option<String>,
    /// How a hop is chosen.
    pub select: Select,
    /// The active health check of parent hops.
    pub health_check: HealthCheck,
}

impl Default for RouteDef {
    fn default() -> Self {
        RouteDef {
            name: String::new(),
            via: Vec::new(),
            source: None,
            interface: None,
            select: Select::Failover,
            health_check: HealthCheck::default(),
        }
    }
}

/// How a route chooses among its hops that are up.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Select {
    /// The first hop that is up, in the order written.
    #[default]
    Failover,
    /// Hops that are up, in proportion to their `#weight=N`.
    Weighted,
}

/// A route's active health check: a TCP connect to each parent.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HealthCheck {
    /// How often each parent is checked.
    #[serde(with = "duration_text")]
    pub interval: Duration,
    /// How long one check may take.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }
}

/// `detect.webhook`: one alert per HTTP POST, its JSON the body.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Webhook {
    /// `http://host[:port]/path`; unset: no webhook.
    pub url: Option<String>,
    /// Time allowed for one POST (connect, send, answer).
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Alerts waiting to be sent at most; more are dropped and counted.
    pub queue: u32,
}

impl Default for Webhook {
    fn default() -> Self {
        Webhook {
            url: None,
            timeout: Duration::from_secs(5),
            queue: 1000,
        }
    }
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    /// Enabled (the default).
    #[default]
    On,
    /// Disabled.
    Off,
}

/// Detection (`detect:`): where the country database and the baselines
/// live, how long sources are learned before they are judged, and each
/// detector's thresholds (`detect.<kind>`). Every threshold has a default
/// that works without tuning.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Detect {
    /// Whether `sluice run` runs the detectors on its own flows; `false`
    /// on replicas whose flows a follower (`sluice detect --follow`)
    /// judges from the flow bus, so that no alert is raised twice.
    pub embedded: bool,
    /// A country `.mmdb` (GeoLite2-Country layout), relative to the
    /// configuration file's folder.
    pub geoip: Option<PathBuf>,
    /// Where baselines persist across restarts (relative to the
    /// configuration file's folder); none: in memory only.
    pub state_dir: Option<PathBuf>,
    /// How long a zone is observed before new destinations, beacons and
    /// volume are judged.
    #[serde(with = "duration_text")]
    pub learn: Duration,
    /// How far out of order (in event time) records may arrive.
    #[serde(with = "duration_text")]
    pub max_lateness: Duration,
    /// Sources remembered at most (least recently seen evicted).
    pub max_sources: u32,
    /// `detect.volume`.
    pub volume: VolumeDetect,
    /// `detect.new-destination`.
    pub new_destination: NewDestinationDetect,
    /// `detect.geo`.
    pub geo: GeoDetect,
    /// `detect.beaconing`.
    pub beaconing: BeaconingDetect,
    /// `detect.dns-tunnel` (its thresholds are `dns.tunnel_*`).
    pub dns_tunnel: Toggle,
    /// `detect.denied-burst`.
    pub denied_burst: DeniedBurstDetect,
    /// One HTTP POST per new alert.
    pub webhook: Webhook,
    /// One syslog message per new alert.
    pub syslog: Syslog,
}

impl Default for Detect {
    fn default() -> Self {
        Detect {
            embedded: true,
            geoip: None,
            state_dir: None,
            learn: Duration::from_secs(7 * 86_400),
            max_lateness: Duration::from_secs(300),
            max_sources: 100_000,
            volume: VolumeDetect::default(),
            new_destination: NewDestinationDetect::default(),
            geo: GeoDetect::default(),
            beaconing: BeaconingDetect::default(),
            dns_tunnel: Toggle::default(),
            denied_burst: DeniedBurstDetect::default(),
            webhook: Webhook::default(),
            syslog: Syslog::default(),
        }
    }
}

/// How a hop leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HopKind {
    /// Straight to the destination.
    Direct,
    /// Through an HTTP proxy, by `CONNECT ip:port`.
    Http,
    /// Through a SOCKS5 proxy, by `CONNECT` to an IP address.
    Socks5,
}

/// One hop of a route, as written: `direct`, `http://host:port` or
/// `socks5://host:port`, with optional `user:password@` and `#weight=N`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hop {
    /// How it leaves.
    pub kind: HopKind,
    /// The parent's host (an IP address or a name), empty for `direct`.
    pub host: String,
    /// The parent's port, 0 for `direct`.
    pub port: u16,
    /// Credentials for the parent, if the URL has them.
    pub user: Option<String>,
    /// The password (never serialized).
    pub password: Option<String>,
    /// The weight under `select: weighted` (default 1).
    pub weight: u32,
}

impl Hop {
    /// `direct`, or `host:port` of the parent (IPv6 in brackets): what a
    /// record names after the route.
    pub fn target(&self) -> String {
        match self.kind {
            HopKind::Direct => "direct".to_owned(),
            _ if self.host.contains(':') => format!("[{}]:{}", self.host, self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

/// A detector with no threshold of its own.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Toggle {
    /// Whether it runs.
    pub enabled: bool,
}

impl Default for Toggle {
    fn default() -> Self {
        Toggle { enabled: true }
    }
}

/// `detect.volume`: bytes out per source per window against its baseline.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VolumeDetect {
    /// Whether it runs.
    pub enabled: bool,
    /// The window bytes are summed over.
    #[serde(with = "duration_text")]
    pub window: Duration,
    /// Bytes out in a window below which nothing is raised, whatever the
    /// baseline.
    pub floor: u64,
    /// How many times its baseline a window must reach.
    pub factor: f64,
}

impl Default for VolumeDetect {
    fn default() -> Self {
        VolumeDetect {
            enabled: true,
            window: Duration::from_secs(600),
            floor: 100_000_000,
            factor: 4.0,
        }
    }
}

impl std::fmt::Display for Hop {
    /// The hop as written, with the password hidden.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.kind {
            HopKind::Direct => return f.write_str("direct"),
            HopKind::Http => "http",
            HopKind::Socks5 => "socks5",
        };
        write!(f, "{scheme}://")?;
        if let Some(u) = &self.user {
            write!(f, "{u}:***@")?;
        }
        f.write_str(&self.target())?;
        if self.weight != 1 {
            write!(f, "#weight={}", self.weight)?;
        }
        Ok(())
    }
}

impl Serialize for Hop {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// `detect.syslog`: one RFC 5424 message per alert.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Syslog {
    /// The receiver; unset: no syslog.
    pub address: Option<SyslogAddress>,
}

/// How syslog messages travel.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyslogTransport {
    /// One datagram a message (RFC 5426).
    Udp,
    /// A stream with octet counting (RFC 6587).
    Tcp,
}

/// `udp://host:port` or `tcp://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogAddress {
    /// UDP or TCP.
    pub transport: SyslogTransport,
    /// A name or an address (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl std::fmt::Display for SyslogAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.transport {
            SyslogTransport::Udp => "udp",
            SyslogTransport::Tcp => "tcp",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// `detect.new-destination`: a destination the zone never used, once it
/// is significant.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NewDestinationDetect {
    /// Whether it runs.
    pub enabled: bool,
    /// Bytes out to it (summed from its first flow) that make it significant.
    pub min_bytes: u64,
    /// Flows to it that make it significant.
    pub min_flows: u32,
}

impl Default for NewDestinationDetect {
    fn default() -> Self {
        NewDestinationDetect {
            enabled: true,
            min_bytes: 5_000_000,
            min_flows: 30,
        }
    }
}

impl Serialize for SyslogAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `detect.geo`: destinations outside the zone's `countries`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GeoDetect {
    /// Whether it runs.
    pub enabled: bool,
    /// Bytes out from one source to one destination outside the zone's
    /// countries before a warning (a page fetched abroad is not one).
    pub min_bytes: u64,
}

impl Default for GeoDetect {
    fn default() -> Self {
        GeoDetect {
            enabled: true,
            min_bytes: 1_000_000,
        }
    }
}

/// `detect.beaconing`: regular small connections to one destination.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BeaconingDetect {
    /// Whether it runs.
    pub enabled: bool,
    /// Intervals in a row that must be regular.
    pub min_repeats: u32,
    /// Largest standard deviation of the intervals, as a share of their mean.
    pub max_jitter: f64,
    /// Largest mean bytes (out plus in) of one connection.
    pub max_bytes: u64,
}

impl Default for BeaconingDetect {
    fn default() -> Self {
        BeaconingDetect {
            enabled: true,
            min_repeats: 12,
            max_jitter: 0.1,
            max_bytes: 100_000,
        }
    }
}

/// `detect.denied-burst`: many distinct denied destinations from one source.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeniedBurstDetect {
    /// Whether it runs.
    pub enabled: bool,
    /// The sliding window.
    #[serde(with = "duration_text")]
    pub window: Duration,
    /// Distinct denied destinations in the window that raise an alert.
    pub min_distinct: u32,
}

impl Default for DeniedBurstDetect {
    fn default() -> Self {
        DeniedBurstDetect {
            enabled: true,
            window: Duration::from_secs(300),
            min_distinct: 15,
        }
    }
}

/// The NetFlow / IPFIX collector's settings (`listen.netflow`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Netflow {
    /// Exporters (routers, firewalls, softflowd) whose packets are taken;
    /// packets from any other address are dropped and counted.
    pub exporters: Vec<IpNet>,
    /// Sluice gateways' addresses as the exporters see them: flows to and
    /// from them are counted, not recorded (the gateway recorded them), and
    /// flows that avoid them may raise `bypass`.
    pub gateways: Vec<IpNet>,
    /// Templates (v9 and IPFIX, data and options) kept at most, over every
    /// exporter and observation domain.
    pub max_templates: u32,
    /// A template not refreshed for this long is forgotten.
    #[serde(with = "duration_text")]
    pub template_timeout: Duration,
    /// Data sets kept while their template has not arrived yet, at most.
    pub pending_sets: u32,
}

impl Default for Netflow {
    fn default() -> Self {
        Netflow {
            exporters: Vec::new(),
            gateways: Vec::new(),
            max_templates: 4096,
            template_timeout: Duration::from_secs(1800),
            pending_sets: 256,
        }
    }
}
