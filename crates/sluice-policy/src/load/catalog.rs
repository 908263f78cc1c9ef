//! Every configuration key, once: one `key!` entry a key, in the order
//! "expected one of" messages list them. An entry names the key, the kind
//! of value it holds (how it is read and described), whether a reload
//! applies a change or a restart is needed, and what it means.
//!
//! The reload column is the truth about the running gateway, which reads
//! `listen`, `limits`, `dns`, `log` and most of `admin` once at start
//! (crates/sluice/src/run.rs builds the listeners, limiter, dialer,
//! forwarder, flow sink and admin view from them) and takes everything in
//! the policy itself — zones, users, modes, `tls_sni_must_match`,
//! `admin.stale_after`, `admin.max_streams` — from the version each request loads.

use serde_json::Value as Json;

use super::{
    Cx, Need,
    inspect::{INSPECT, ZONE_INSPECT},
    items::{self, Rules, Users, Zones},
    kinds::{
        AdminHosts, Blocked, Bool, Cidr, Cidrs, Count, FlowTarget, Fraction, HostPattern, Instant,
        Listener, Mark, Min, ModeName, OpenPaths, PasswordHash, Path, PortSet, RuleId, Sources,
        Text, Time, Upstreams, UserRefs,
    },
    table::{KeyDoc, Section, Table, key},
    yaml::{self, Node},
};
use crate::model::{Admin, Config, Dns, Limits, Listen, Log, Rule, User, Zone};

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
        key!(inspect: map &INSPECT, "Inspection: the TLS interception CA and extra upstream roots, the clamd and ICAP scanners and DLP patterns that zones' `inspect` use."),
    ],
    not_yet: &["routes", "tls", "detect", "netflow", "geoip"],
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
    keys: &[key!(flows: FlowTarget, Restart, "`stdout` or a file path; JSON lines.")],
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

/// Reads the document into a configuration, then checks what spans
/// sections. `None` if the document is not a mapping.
pub(crate) fn read_config(cx: &mut Cx<'_>, doc: &Node<'_>, need: Need) -> Option<Config> {
    let mut c = Config::default();
    let seen = cx.section_into(&ROOT, doc, &mut c)?;
    items::check_user_refs(cx, &c.users);
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
