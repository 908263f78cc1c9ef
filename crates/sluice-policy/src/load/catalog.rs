//! Every configuration key, once: one `key!` entry a key, in the order
//! "expected one of" messages list them. An entry names the key, the kind
//! of value it holds (how it is read and described), whether a reload
//! applies a change or a restart is needed, and what it means.
//!
//! The reload column is the truth about the running gateway, which reads
//! `listen`, `limits`, `dns`, `log.flows`, `detect`'s alert sinks and most
//! of `admin` once at start (crates/sluice/src/run.rs builds the listeners,
//! limiter, dialer, forwarder, flow sink, alert sinks and admin view from
//! them) and takes everything in the policy itself — zones, users, modes,
//! `tls_sni_must_match`, `admin.stale_after`, `admin.max_streams`,
//! `log.interim` — from the version each request loads.

use serde_json::Value as Json;

use super::{
    Cx, Need,
    inspect::{INSPECT, ZONE_INSPECT},
    items::{self, Routes, Rules, Users, Zones},
    kinds::{
        Address, AdminHosts, Blocked, Bool, BusUrl, Cidr, Cidrs, Count, Countries, Factor,
        FlowTarget, Fraction, HostPattern, Instant, Interface, Listener, Mark, Min, ModeName,
        OnOff, OpenPaths, PasswordHash, Path, PortSet, RouteRef, RuleId, SelectName, Size, Sources,
        StreamName, SyslogAddr, Text, Time, Upstreams, UserRefs, Vias, WebhookUrl,
    },
    table::{KeyDoc, Section, Table, key},
    yaml::{self, Node},
};
use crate::model::{
    Admin, BeaconingDetect, Bus, Config, DeniedBurstDetect, Detect, Dns, GeoDetect, HealthCheck,
    Limits, Listen, Log, Netflow, NewDestinationDetect, RouteDef, Rule, Syslog, Toggle, User,
    VolumeDetect, Webhook, Zone,
};

/// The largest admin ring or top-list size: a bound on the admin's memory.
const ADMIN_MAX_ENTRIES: u32 = 1_000_000;

/// The most live streams admin may allow: they hold admin connections,
/// and admin serves 128 at once before it closes idle ones for new ones
/// (crates/sluice/src/admin/conns.rs), so a quarter stays for the rest.
const ADMIN_MAX_STREAMS: u32 = 96;

/// The file itself.
pub(crate) static ROOT: Section<Config> = Section {
    what: "the configuration",
    label: "",
    keys: &[
        key!(listen: map &LISTEN, "Where Sluice listens. A listener that is not named does not run."),
        key!(admin: map &ADMIN, "Admin listener settings."),
        key!(mode: ModeName, Applies, "Default mode of zones that do not set their own: `enforce`, `open` or `report`."),
        key!(tls_sni_must_match: Bool, Applies, "Deny a CONNECT tunnel whose TLS SNI names another host than the CONNECT target (domain fronting)."),
        key!(zones: Zones, Applies, "Network segments and identities, each with its own egress policy; the first zone in file order whose conditions hold is selected."),
        key!(users: Users, Applies, "Users for proxy authentication."),
        key!(dns: map &DNS, "Name resolution for dialing and the DNS forwarder."),
        key!(limits: map &LIMITS, "Connection limits and timeouts."),
        key!(log: map &LOG, "Where flow records go."),
        key!(bus: map &BUS, "The flow bus: every flow record and alert published to NATS JetStream for fleet-wide detection; off unless `url` is set."),
        key!(routes: Routes, Applies, "Named ways out, chosen by `zones[].route` or `allow[].route` (`direct`, built in, is the default): hops tried in order or by weight, parents health-checked."),
        key!(detect: map &DETECT, "Detection: baselines of normal egress and alerts (volume, new destination, country, beaconing, DNS tunnelling, denied bursts), and where alerts go."),
        key!(netflow: map &NETFLOW, "The NetFlow v5/v9 and IPFIX collector (`listen.netflow`)."),
        key!(inspect: map &INSPECT, "Inspection: the TLS interception CA and extra upstream roots, the clamd and ICAP scanners and DLP patterns that zones' `inspect` use."),
    ],
    not_yet: &["tls", "geoip"],
};

pub(crate) static LISTEN: Section<Listen> = Section {
    what: "listen",
    label: "listen",
    keys: &[
        key!(http: Listener, Restart, "HTTP forward proxy (CONNECT and absolute-form), e.g. `127.0.0.1:3128`."),
        key!(admin: Listener, Restart, "Admin endpoints: dashboard, `/api/v1/`, `/metrics`, `/healthz`, `/readyz`, e.g. `127.0.0.1:9901`."),
        key!(socks5: Listener, Restart, "SOCKS5 proxy (RFC 1928 CONNECT, RFC 1929 user/password), e.g. `127.0.0.1:1080`."),
        key!(dns: Listener, Restart, "Filtering DNS forwarder, UDP and TCP on the same address, e.g. `127.0.0.1:5353`."),
        key!(transparent: Listener, Restart, "Transparent listener (Linux), the target of an nftables `redirect`; bind the gateway interface's address."),
        key!(transparent_mark: Mark, Restart, "`SO_MARK` put on every socket Sluice dials, so that a redirect ruleset can exempt Sluice's own traffic; `0x5c` or `92`."),
        key!(netflow: Listener, Restart, "NetFlow v5/v9 and IPFIX collector (UDP), e.g. `0.0.0.0:2055`; needs `netflow.exporters`."),
        key!(proxy_protocol_from: Cidrs, Restart, "Load balancer CIDRs that must send a PROXY protocol v1/v2 header on the HTTP, SOCKS5 and transparent listeners; the header's client address is the one zones see. A header from any other address is refused."),
    ],
    not_yet: &[],
};

pub(crate) static ADMIN: Section<Admin> = Section {
    what: "admin",
    label: "admin",
    keys: &[
        key!(token_file: Path, Restart, "File holding the bearer token; required when admin binds beyond loopback."),
        key!(open_paths: OpenPaths, Restart, "Paths served without the bearer token, for probes: any of `/healthz`, `/readyz`, `/metrics`."),
        key!(hosts: AdminHosts, Restart, "Extra names (`name` or `name:port`) accepted in the `Host` header besides `localhost` and the address a connection arrived on."),
        key!(recent_flows: Count(1, ADMIN_MAX_ENTRIES), Restart, "Recent flows kept in memory for the API and dashboard."),
        key!(recent_denials: Count(1, ADMIN_MAX_ENTRIES), Restart, "Recent denials kept in memory, apart from the flow ring."),
        key!(window: Time(Min::Secs(60)), Restart, "How far back top sources, destinations and traffic reach (60 buckets)."),
        key!(top_entries: Count(1, ADMIN_MAX_ENTRIES), Restart, "Distinct sources and destinations tracked per zone and bucket."),
        key!(stale_after: Time(Min::AboveZero), Applies, "A rule with no hit for this long (or none since start) is shown stale."),
        key!(recent_alerts: Count(1, ADMIN_MAX_ENTRIES), Restart, "Recent alerts kept in memory for the API and dashboard."),
        key!(max_streams: Count(1, ADMIN_MAX_STREAMS), Applies, "Live flow streams (`/api/v1/flows/stream`) open at once; one more is answered 503. A lower value leaves open streams running."),
    ],
    not_yet: &[],
};

pub(crate) static DNS: Section<Dns> = Section {
    what: "dns",
    label: "dns",
    keys: &[
        key!(upstreams: Upstreams, Restart, "Resolvers (`ip:port`) for dialing and the forwarder, tried in order; default: the system resolver."),
        key!(upstream_timeout: Time(Min::AboveZero), Restart, "Time allowed for one upstream to answer before the next is tried."),
        key!(answer_ttl_max: Time(Min::AboveZero), Restart, "Longest TTL cached and handed to clients (longer TTLs are capped)."),
        key!(negative_ttl: Time(Min::Zero), Restart, "Longest time a negative answer (NXDOMAIN, no data) is cached; `0s`: never."),
        key!(cache_size: Count(1, u32::MAX), Restart, "Answers cached at most."),
        key!(blocked_answer: Blocked, Restart, "The answer to a name the zone may not resolve: `nxdomain`, `refused`, or a sinkhole address."),
        key!(rate_limit_qps: Count(1, u32::MAX), Restart, "Queries a second one source may send (token bucket, burst of the same size); more are dropped."),
        key!(grants_max: Count(1, u32::MAX), Restart, "DNS-derived grants (zone, address to name) remembered at most."),
        key!(tunnel_threshold: Fraction, Restart, "Tunnelling score (above 0, at most 1) at which a registrable domain raises an alert."),
        key!(tunnel_window: Time(Min::AboveZero), Restart, "The window over which tunnelling signals are measured."),
        key!(tunnel_min_queries: Count(1, u32::MAX), Restart, "Queries for one registrable domain in a window before it is scored."),
    ],
    not_yet: &[],
};

pub(crate) static LIMITS: Section<Limits> = Section {
    what: "limits",
    label: "limits",
    keys: &[
        key!(max_connections: Count(1, u32::MAX), Restart, "Open client connections in total."),
        key!(max_connections_per_source: Count(1, u32::MAX), Restart, "Open client connections from one source address."),
        key!(header_timeout: Time(Min::AboveZero), Restart, "Time allowed to send a complete request head, from the connection's start or from the first byte of a later request on it."),
        key!(max_header_bytes: Count(1024, u32::MAX), Restart, "Largest request head accepted, in bytes."),
        key!(idle_timeout: Time(Min::AboveZero), Restart, "A tunnel, or a keep-alive client connection between requests, with no traffic this long is closed."),
        key!(connect_timeout: Time(Min::AboveZero), Restart, "Time allowed to resolve a destination's name and connect to it, together."),
        key!(drain_timeout: Time(Min::AboveZero), Restart, "On SIGTERM, how long open tunnels may continue."),
        key!(drain_grace: Time(Min::Zero), Restart, "On SIGTERM, how long `/readyz` answers 503 while the listeners still accept new connections, before the drain closes them: set it above a load balancer's health-check interval times its fall count."),
        key!(response_timeout: Time(Min::AboveZero), Applies, "Time an origin may take to send a response head once an absolute-form request was fully sent to it; past it the client gets `504`."),
        key!(pool_max_idle: Count(1, 1_000_000), Restart, "Idle keep-alive origin connections kept in total (absolute-form requests), counted against the descriptor budget."),
        key!(pool_max_idle_per_host: Count(1, 1_000_000), Restart, "Idle keep-alive origin connections kept per destination (name or address and port)."),
        key!(pool_idle_timeout: Time(Min::AboveZero), Restart, "An idle pooled origin connection is closed after this long, by a timer."),
    ],
    not_yet: &[],
};

pub(crate) static LOG: Section<Log> = Section {
    what: "log",
    label: "log",
    keys: &[
        key!(flows: FlowTarget, Restart, "`stdout` or a file path; JSON lines."),
        key!(interim: Time(Min::Millis(100)), Applies, "How often a long tunnel (CONNECT, SOCKS5, transparent) writes an interim record (`interim: true`) with the bytes since its previous record; at least `100ms`. A reload applies to tunnels opened after it."),
    ],
    not_yet: &[],
};

pub(crate) static WEBHOOK: Section<Webhook> = Section {
    what: "detect.webhook",
    label: "detect.webhook",
    keys: &[
        key!(url: WebhookUrl, Restart, "`http://host[:port][/path]` that each new alert is POSTed to (JSON body); retried with backoff on failures and 5xx/429. Plain HTTP only."),
        key!(timeout: Time(Min::AboveZero), Restart, "Time allowed for one POST: connect, send and the answer's head."),
        key!(queue: Count(1, 1_000_000), Restart, "Alerts waiting to be POSTed at most; more are dropped and counted in `sluice_alert_sink_dropped_total{sink=\"webhook\"}`."),
    ],
    not_yet: &[],
};

pub(crate) static SYSLOG: Section<Syslog> = Section {
    what: "detect.syslog",
    label: "detect.syslog",
    keys: &[
        key!(address: SyslogAddr, Restart, "`udp://host:port` or `tcp://host:port` (octet counting, RFC 6587) of a syslog receiver; each new alert is one RFC 5424 message, APP-NAME `sluice`, the alert's JSON as the message."),
    ],
    not_yet: &[],
};

pub(crate) static DETECT: Section<Detect> = Section {
    what: "detect",
    label: "detect",
    keys: &[
        key!(embedded: Bool, Restart, "Whether `sluice run` runs the detectors on its own flows (default `true`); `false` on replicas whose flows a follower (`sluice detect --follow`) judges from the flow bus, so that no alert is raised twice."),
        key!(geoip: Path, Restart, "A country database (`.mmdb`, GeoLite2-Country or DB-IP Country Lite layout), relative to the configuration file's folder; fills records' `country` and feeds the `geo` detector."),
        key!(state_dir: Path, Restart, "Folder where baselines persist across restarts (relative to the configuration file's folder); default: in memory only."),
        key!(learn: Time(Min::Zero), Restart, "How long a zone is observed before new destinations, beacons and volume are judged (default `7d`)."),
        key!(max_lateness: Time(Min::Zero), Restart, "How far out of order (event time) records may arrive at `sluice detect`, on files and `--follow` (a follower's alerts wait this long; default `5m`)."),
        key!(max_sources: Count(1, 10_000_000), Restart, "Sources whose baselines are kept; the least recently seen is evicted (`sluice_detect_evictions_total`)."),
        key!("volume" => volume: map &VOLUME, "The `volume` detector: bytes out per source per window against its baseline."),
        key!("new-destination" => new_destination: map &NEW_DESTINATION, "The `new-destination` detector: a destination the zone never used, once significant."),
        key!("geo" => geo: map &GEO, "The `geo` detector: destinations outside the zone's `countries`."),
        key!("beaconing" => beaconing: map &BEACONING, "The `beaconing` detector: regular small connections to one destination."),
        key!("dns-tunnel" => dns_tunnel: map &TOGGLE, "The `dns-tunnel` detector (its thresholds are `dns.tunnel_*`)."),
        key!("denied-burst" => denied_burst: map &DENIED_BURST, "The `denied-burst` detector: many distinct denied destinations from one source."),
        key!(webhook: map &WEBHOOK, "One HTTP POST per new alert, the alert's JSON the body."),
        key!(syslog: map &SYSLOG, "One RFC 5424 syslog message per new alert."),
    ],
    not_yet: &[],
};

pub(crate) static TOGGLE: Section<Toggle> = Section {
    what: "a detector",
    label: "detect",
    keys: &[key!(enabled: Bool, Restart, "Whether the detector runs (default `true`).")],
    not_yet: &[],
};

pub(crate) static GEO: Section<GeoDetect> = Section {
    what: "detect.geo",
    label: "detect.geo",
    keys: &[
        key!(enabled: Bool, Restart, "Whether the detector runs (default `true`)."),
        key!(min_bytes: Size, Restart, "Bytes out from one source to one destination outside the zone's countries before a warning (default `1MB`)."),
    ],
    not_yet: &[],
};

pub(crate) static VOLUME: Section<VolumeDetect> = Section {
    what: "detect.volume",
    label: "detect.volume",
    keys: &[
        key!(enabled: Bool, Restart, "Whether the detector runs (default `true`)."),
        key!(window: Time(Min::Secs(60)), Restart, "The window bytes out are summed over (default `10m`)."),
        key!(floor: Size, Restart, "Bytes out in one window below which nothing is raised, whatever the baseline (default `100MB`)."),
        key!(factor: Factor, Restart, "How many times its baseline a window must send (default `4`)."),
    ],
    not_yet: &[],
};

pub(crate) static NEW_DESTINATION: Section<NewDestinationDetect> = Section {
    what: "detect.new-destination",
    label: "detect.new-destination",
    keys: &[
        key!(enabled: Bool, Restart, "Whether the detector runs (default `true`)."),
        key!(min_bytes: Size, Restart, "Bytes out to a new destination that make it significant (default `5MB`)."),
        key!(min_flows: Count(1, u32::MAX), Restart, "Flows to a new destination that make it significant (default `30`)."),
    ],
    not_yet: &[],
};

pub(crate) static BEACONING: Section<BeaconingDetect> = Section {
    what: "detect.beaconing",
    label: "detect.beaconing",
    keys: &[
        key!(enabled: Bool, Restart, "Whether the detector runs (default `true`)."),
        key!(min_repeats: Count(4, 64), Restart, "Regular intervals in a row that make a beacon (default `12`)."),
        key!(max_jitter: Fraction, Restart, "Largest standard deviation of the intervals as a share of their mean (default `0.1`)."),
        key!(max_bytes: Size, Restart, "Largest mean bytes (out plus in) of one beacon connection (default `100KB`)."),
    ],
    not_yet: &[],
};

pub(crate) static DENIED_BURST: Section<DeniedBurstDetect> = Section {
    what: "detect.denied-burst",
    label: "detect.denied-burst",
    keys: &[
        key!(enabled: Bool, Restart, "Whether the detector runs (default `true`)."),
        key!(window: Time(Min::AboveZero), Restart, "The sliding window (default `5m`)."),
        key!(min_distinct: Count(2, 10_000), Restart, "Distinct denied destinations in the window that raise an alert (default `15`)."),
    ],
    not_yet: &[],
};

/// The largest template cache: a bound on the collector's memory.
const NETFLOW_MAX_TEMPLATES: u32 = 1_000_000;

pub(crate) static NETFLOW: Section<Netflow> = Section {
    what: "netflow",
    label: "netflow",
    keys: &[
        key!(exporters: Cidrs, Applies, "Exporter CIDRs (routers, firewalls, softflowd) whose packets are taken; required with `listen.netflow`. Packets from other addresses are dropped and counted."),
        key!(gateways: Cidrs, Applies, "Sluice gateways' addresses as the exporters see them: flows to or from them are counted (`sluice_netflow_gateway_flows_total`), not recorded again; a zone's flow to an outside address that avoids them raises `bypass`."),
        key!(max_templates: Count(1, NETFLOW_MAX_TEMPLATES), Restart, "Templates (v9 and IPFIX, data and options) kept at most over every exporter and observation domain; more are dropped and counted."),
        key!(template_timeout: Time(Min::Secs(1)), Restart, "A template not refreshed for this long is forgotten (its data is then dropped as `unknown-template`)."),
        key!(pending_sets: Count(1, 65_536), Restart, "Data sets kept while their template has not arrived yet (decoded when it does); past this the oldest is dropped and counted."),
    ],
    not_yet: &[],
};

/// The most flow partitions: one consumer each on the followers' side.
const BUS_MAX_PARTITIONS: u32 = 1024;

pub(crate) static BUS: Section<Bus> = Section {
    what: "bus",
    label: "bus",
    keys: &[
        key!(url: BusUrl, Restart, "NATS server(s): `nats://host:port` or `tls://host:port`, comma-separated for a cluster. Required when `bus` is set."),
        key!(stream: StreamName, Restart, "The JetStream stream holding `sluice.flows.>` and `sluice.alerts`; created if missing (`[A-Za-z0-9_-]`, at most 64)."),
        key!(partitions: Count(1, BUS_MAX_PARTITIONS), Restart, "Flow subjects per zone, `sluice.flows.<zone>.<p>` with `p` = FNV-1a 32 of the source address's bytes modulo this; every replica and follower must agree."),
        key!(queue: Count(1, 1_000_000), Restart, "Records and alerts waiting for the bus at most (during an outage); more are dropped and counted in `sluice_bus_dropped_total`."),
    ],
    not_yet: &[],
};

/// One item of `zones`.
pub(crate) static ZONE: Section<Zone> = Section {
    what: "a zone",
    label: "zones[]",
    keys: &[
        key!(name: Text, Applies, "`[a-z0-9_-]{1,63}`; `guard`, `default` and `inspect` are reserved."),
        key!(sources: Sources, Applies, "Client CIDRs; the client address must lie in one of them."),
        key!(users: UserRefs, Applies, "Authenticated users (defined under `users`); the request's user must be one of them."),
        key!(mode: ModeName, Applies, "This zone's mode, overriding the top-level `mode`."),
        key!(allow: Rules { allow: true }, Applies, "Allow rules (`ports` required)."),
        key!(deny: Rules { allow: false }, Applies, "Deny rules, applied first (without `ports` they cover every port)."),
        key!(route: RouteRef, Applies, "The route this zone's flows leave by: `direct` (the default) or a name under `routes`."),
        key!(countries: Countries, Applies, "ISO 3166 alpha-2 codes (`[DE, FR]`) this zone's traffic may go to; a flow to another country (from `detect.geoip`) raises a `geo` warning."),
        key!(detect: OnOff, Applies, "`off`: no detector looks at this zone's flows (default `on`)."),
        key!(inspect: map &ZONE_INSPECT, "What this zone's flows are inspected for: TLS interception of listed destinations, DLP detectors, malware, ICAP, and what happens when a scanner has no verdict."),
        key!(require_tls: Bool, Applies, "Deny plaintext absolute-form HTTP and tunnels whose first client bytes are not a TLS ClientHello (`inspect/require-tls`; recorded, not enforced, in `report` mode)."),
    ],
    not_yet: &[],
};

/// One allow or deny rule: exactly one of `host` and `cidr`.
pub(crate) static RULE: Section<Rule> = Section {
    what: "a rule",
    label: "",
    keys: &[
        key!(host: HostPattern, Applies, "`example.com` (that name only) or `*.example.com` (every name below it)."),
        key!(cidr: Cidr, Applies, "An address block, e.g. `198.51.100.0/24`."),
        key!(ports: PortSet, Applies, "Ports: a list of numbers and `\"a-b\"` ranges (one may stand alone: `443`), or `any`."),
        key!(id: RuleId, Applies, "Optional stable id, unique in the file; otherwise `zone/allow/N` or `zone/deny/N`."),
        key!(owner: Text, Applies, "Who answers for the rule (free text), shown with its expiry and staleness."),
        key!(ticket: Text, Applies, "The ticket or change that asked for the rule (free text)."),
        key!(expires: Instant, Applies, "When the rule stops matching, in RFC 3339 (`2026-03-31T00:00:00Z`); the rule keeps its id and is reported expired."),
        key!(route: RouteRef, Applies, "Allow rules only: the route the flows it lets out leave by, over the zone's `route`."),
        key!(bypass: Bool, Applies, "Allow rules only: the zone may reach this destination without the gateway; flows exporters report to it raise no `bypass` alert."),
        key!(require_tls: Bool, Applies, "On an allow rule: what it allows must be TLS, as the zone's `require_tls` (`inspect/require-tls`)."),
    ],
    not_yet: &[],
};

/// One item of `users`.
pub(crate) static USER: Section<User> = Section {
    what: "a user",
    label: "users[]",
    keys: &[
        key!(name: Text, Applies, "The user name sent in `Proxy-Authorization`."),
        key!(password_hash: PasswordHash, Applies, "An argon2 PHC string (`$argon2id$v=19$...`); never a clear password."),
        key!(password_hash_file: Path, Applies, "A file holding the argon2 PHC string instead (relative to the configuration file)."),
    ],
    not_yet: &[],
};

/// One item of `routes`.
pub(crate) static ROUTE: Section<RouteDef> = Section {
    what: "a route",
    label: "routes[]",
    keys: &[
        key!(name: Text, Applies, "`[a-z0-9_-]{1,63}`, named by `zones[].route` and `allow[].route`; `direct` is built in."),
        key!(via: Vias, Applies, "Hops: `direct`, `http://host:port` (HTTP CONNECT) or `socks5://host:port`, optionally `user:password@` before the host and `#weight=N` after the port. Sluice resolves and checks the destination itself and asks a parent for the checked IP address."),
        key!(source: Address, Applies, "The local address every connection of the route leaves from (bound before connecting), e.g. the address partners allowlisted."),
        key!(interface: Interface, Applies, "The interface every connection of the route leaves by (`SO_BINDTODEVICE`; needs `CAP_NET_RAW`)."),
        key!(select: SelectName, Applies, "`failover` (the first hop that is up, in order) or `weighted` (hops that are up, in proportion to `#weight=N`)."),
        key!(health_check: map &HEALTH_CHECK, "The active check of each parent: a TCP connect every `interval`; a parent that fails it, or three dials in a row, is passed over until a check succeeds."),
    ],
    not_yet: &[],
};

/// A route's `health_check`.
pub(crate) static HEALTH_CHECK: Section<HealthCheck> = Section {
    what: "health_check",
    label: "routes[].health_check",
    keys: &[
        key!(interval: Time(Min::AboveZero), Applies, "How often each parent is checked (default `5s`)."),
        key!(timeout: Time(Min::AboveZero), Applies, "How long one check's TCP connect may take (default `2s`)."),
    ],
    not_yet: &[],
};

/// Reads the document into a configuration, then checks what spans
/// sections. `None` if the document is not a mapping.
pub(crate) fn read_config(cx: &mut Cx<'_>, doc: &Node<'_>, need: Need) -> Option<Config> {
    let mut c = Config::default();
    let seen = cx.section_into(&ROOT, doc, &mut c)?;
    if let Some(at) = seen.at("bus").filter(|_| c.bus.url.is_none()) {
        cx.err_at(
            at,
            "bus.url is required when `bus` is set: the NATS server to publish to (`nats://host:4222`)",
        );
    }
    items::check_user_refs(cx, &c.users);
    items::check_route_refs(cx, &c.routes);
    super::inspect::check(cx, doc, &c);
    if let Some(a) = c.listen.admin {
        if !a.ip().is_loopback() && c.admin.token_file.is_none() {
            cx.err(
                doc,
                format!("listen.admin binds {a}, beyond loopback: admin.token_file is required"),
            );
        }
    }
    check_listeners(cx, doc, &c.listen);
    if c.listen.netflow.is_some() && c.netflow.exporters.is_empty() {
        cx.err(
            doc,
            "listen.netflow is set but netflow.exporters is empty: name the exporters' CIDRs (packets from any other address are dropped)",
        );
    }
    if let Some(a) = c.listen.dns.filter(|a| c.dns.upstreams.contains(a)) {
        cx.err(
            doc,
            format!("dns.upstreams names listen.dns ({a}): the forwarder would ask itself"),
        );
    }
    if need == Need::Zones && !seen.has("zones") {
        cx.err(
            doc,
            "no `zones` in the configuration: every request would be denied; name the zones (or write `zones: []` to deny everything on purpose)",
        );
    }
    Some(c)
}

/// Two listeners on one address (or one on a port's wildcard address and
/// another on the same port): the second could not bind. Port 0 lets
/// the kernel pick a free port for each, so it never clashes.
fn check_listeners(cx: &mut Cx<'_>, doc: &Node<'_>, listen: &Listen) {
    let Some(section) = yaml::entries(doc)
        .and_then(|mut e| e.find(|(k, _)| yaml::scalar(k) == Some("listen")))
        .map(|(_, v)| v)
    else {
        return;
    };
    let Some(entries) = yaml::entries(&section) else {
        return;
    };
    let mut bound: Vec<(&str, std::net::SocketAddr)> = Vec::new();
    for (k, v) in entries {
        let Some(name) = yaml::scalar(&k) else {
            continue;
        };
        let addr = match name {
            "http" => listen.http,
            "admin" => listen.admin,
            "socks5" => listen.socks5,
            "dns" => listen.dns,
            "transparent" => listen.transparent,
            "netflow" => listen.netflow,
            _ => None,
        };
        let Some(addr) = addr.filter(|a| a.port() != 0) else {
            continue;
        };
        // A wildcard address takes the port on every address.
        let clash = |a: &std::net::SocketAddr| {
            a.port() == addr.port()
                && (a.ip() == addr.ip() || a.ip().is_unspecified() || addr.ip().is_unspecified())
        };
        if let Some((first, at)) = bound.iter().find(|(_, a)| clash(a)) {
            cx.err(
                &v,
                format!(
                    "listen.{name} ({addr}) and listen.{first} ({at}) cannot both bind: each listener needs its own address or port"
                ),
            );
        } else if let Some(key) = LISTEN.keys.iter().find(|key| key.name == name) {
            bound.push((key.name, addr));
        }
    }
}

/// Every configuration key with its reload semantics and description, in
/// table order (a mapping before its keys).
pub fn keys() -> Vec<KeyDoc> {
    let mut out = Vec::new();
    ROOT.docs("", &mut out);
    out
}

/// The dotted names of keys that differ between `old` and `new` and that a
/// reload cannot apply (their new values wait for a restart), in table
/// order. Empty when the reload applies every change.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    ROOT.changed(old, new, "", &mut out);
    out
}

/// The JSON Schema of the configuration file (`sluice schema`).
pub fn schema() -> Json {
    let mut s = ROOT.schema();
    if let Json::Object(o) = &mut s {
        o.insert(
            "$schema".to_owned(),
            Json::from("https://json-schema.org/draft/2020-12/schema"),
        );
        // What `sluice validate` requires of a file (`Need::Zones`); every
        // other key has a default, so no mapping below requires its keys.
        o.insert("required".to_owned(), Json::from(vec!["zones"]));
        o.insert("title".to_owned(), Json::from("Sluice configuration"));
        o.insert(
            "description".to_owned(),
            Json::from("sluice.yaml: listeners, zones with their rules, users, limits."),
        );
    }
    s
}
