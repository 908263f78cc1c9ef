//! Reading `sluice.yaml`: parse into a position-annotated YAML tree, then
//! walk it once, collecting every error with file, line, column and what was
//! expected. Nothing here trusts YAML's own scalar typing: scalars are read
//! as written (`early_parse` off), so `0x50` is not a port and `"443"` is.

use std::{collections::HashMap, fmt, net::SocketAddr, path::PathBuf, time::Duration};

use ipnet::IpNet;
use saphyr::{LoadableYamlNode, MarkedYaml, ScalarStyle, YamlData, YamlLoader};

use crate::{
    dest, guard,
    model::{
        Admin, BlockedAnswer, Config, Dns, Limits, Listen, Log, Mode, Ports, Rule, User, Zone,
    },
};

/// One configuration error, positioned in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name as given.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What was wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Every error found in a file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Parse and validate a configuration. `file` only names the source in errors.
pub fn parse_config(source: &str, file: &str) -> Result<Config, ConfigErrors> {
    let mut loader: YamlLoader<'_, MarkedYaml<'_>> = YamlLoader::default();
    loader.early_parse(false);
    let mut parser = saphyr_parser::Parser::new_from_str(source);
    let fail = |line: usize, col: usize, msg: String| {
        ConfigErrors(vec![ConfigError {
            file: file.to_owned(),
            line,
            column: col + 1,
            message: msg,
        }])
    };
    if let Err(e) = parser.load(&mut loader, true) {
        return Err(fail(
            e.marker().line(),
            e.marker().col(),
            e.info().to_owned(),
        ));
    }
    if let Some(e) = loader.error() {
        return Err(fail(
            e.marker().line(),
            e.marker().col(),
            e.info().to_owned(),
        ));
    }
    let docs = loader.into_documents();
    let mut cx = Cx {
        file,
        errors: Vec::new(),
    };
    let config = match docs.as_slice() {
        [] => Some(Config::empty()),
        [doc] if is_null(doc) => Some(Config::empty()),
        [doc] => cx.config(doc),
        [_, second, ..] => {
            cx.err(second, "expected one YAML document, found several");
            None
        }
    };
    let mut errors = cx.errors;
    errors.sort_by_key(|e| (e.line, e.column));
    match config {
        Some(c) if errors.is_empty() => Ok(c),
        _ => Err(ConfigErrors(errors)),
    }
}

// Reuse the trait so `MarkedYaml::load_from_str` remains available to tests.
#[allow(dead_code)]
fn _assert_loadable<'a>(s: &'a str) -> Result<Vec<MarkedYaml<'a>>, saphyr::ScanError> {
    MarkedYaml::load_from_str(s)
}

impl Config {
    fn empty() -> Config {
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
        }
    }
}

type Node<'a> = MarkedYaml<'a>;

fn is_null(n: &Node<'_>) -> bool {
    match &n.data {
        YamlData::Representation(s, ScalarStyle::Plain, _) => {
            matches!(s.as_ref(), "" | "~" | "null" | "Null" | "NULL")
        }
        _ => false,
    }
}

/// Features DESIGN.md names that this build does not implement yet. They are
/// rejected, never silently ignored.
const NOT_YET_TOP: &[&str] = &["routes", "inspect", "tls", "detect", "netflow", "geoip"];
const NOT_YET_LISTEN: &[&str] = &[];

/// Admin paths that may be served without the bearer token.
const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// The largest admin ring or top-list size: a bound on the admin's memory.
const ADMIN_MAX_ENTRIES: u32 = 1_000_000;

/// `name` or `name:port`, as the `Host` header carries it (lower-case
/// letters, digits, `-`, `.`; or a bracketed IPv6 address).
fn valid_admin_host(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && !p.contains(']') => (h, Some(p)),
        _ => (s, None),
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p != 0))
}

struct Cx<'f> {
    file: &'f str,
    errors: Vec<ConfigError>,
}

impl Cx<'_> {
    fn err(&mut self, n: &Node<'_>, msg: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line: n.span.start.line(),
            column: n.span.start.col() + 1,
            message: msg.into(),
        });
    }

    /// The entries of a mapping with string keys, in file order. Reports
    /// unknown keys against `known` and `not_yet`.
    fn mapping<'n, 'a>(
        &mut self,
        n: &'n Node<'a>,
        what: &str,
        known: &[&str],
        not_yet: &[&str],
    ) -> Option<Vec<(&'n str, &'n Node<'a>)>> {
        let YamlData::Mapping(map) = &n.data else {
            self.err(
                n,
                format!("expected a mapping for {what}, found {}", kind(n)),
            );
            return None;
        };
        let mut out = Vec::with_capacity(map.len());
        for (k, v) in map.iter() {
            let Some(key) = scalar(k) else {
                self.err(k, format!("expected a string key in {what}"));
                continue;
            };
            if known.contains(&key) {
                out.push((key, v));
            } else if not_yet.contains(&key) {
                self.err(
                    k,
                    format!("`{key}` in {what} is not supported yet by this version of Sluice"),
                );
            } else {
                self.err(
                    k,
                    format!(
                        "unknown key `{key}` in {what}; expected one of: {}",
                        known.join(", ")
                    ),
                );
            }
        }
        Some(out)
    }

    fn seq<'n, 'a>(&mut self, n: &'n Node<'a>, what: &str) -> Option<&'n [Node<'a>]> {
        match &n.data {
            YamlData::Sequence(s) => Some(s.as_slice()),
            _ => {
                self.err(n, format!("expected a list for {what}, found {}", kind(n)));
                None
            }
        }
    }

    fn string(&mut self, n: &Node<'_>, what: &str) -> Option<String> {
        match scalar(n) {
            Some(s) if !is_null(n) => Some(s.to_owned()),
            _ => {
                self.err(
                    n,
                    format!("expected a string for {what}, found {}", kind(n)),
                );
                None
            }
        }
    }

    fn bool(&mut self, n: &Node<'_>, what: &str) -> Option<bool> {
        match (scalar(n), plain(n)) {
            (Some("true"), true) => Some(true),
            (Some("false"), true) => Some(false),
            _ => {
                self.err(n, format!("expected true or false for {what}"));
                None
            }
        }
    }

    fn u32(&mut self, n: &Node<'_>, what: &str) -> Option<u32> {
        match scalar(n).filter(|_| plain(n)).and_then(decimal) {
            Some(v) if v <= u64::from(u32::MAX) => Some(v as u32),
            _ => {
                self.err(n, format!("expected a decimal whole number for {what}"));
                None
            }
        }
    }

    fn duration(&mut self, n: &Node<'_>, what: &str) -> Option<Duration> {
        let parsed = scalar(n).and_then(parse_duration);
        if parsed.is_none() {
            self.err(
                n,
                format!("expected a duration for {what} such as `500ms`, `10s`, `5m` or `1h`"),
            );
        }
        parsed
    }

    fn socket(&mut self, n: &Node<'_>, what: &str) -> Option<SocketAddr> {
        let s = self.string(n, what)?;
        // Listeners may bind port 0 (the kernel picks; Sluice prints it).
        let port0_ok = what.starts_with("listen.");
        match s.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 || port0_ok => Some(a),
            _ => {
                self.err(
                    n,
                    format!(
                        "expected `ip:port` for {what} (e.g. `127.0.0.1:3128` or `[::1]:3128`), found `{s}`"
                    ),
                );
                None
            }
        }
    }

    /// A nonzero 32-bit `SO_MARK`, decimal or `0x` hexadecimal.
    fn mark(&mut self, n: &Node<'_>) -> Option<u32> {
        let parsed = scalar(n)
            .filter(|_| plain(n))
            .and_then(|s| match s.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => decimal(s).and_then(|v| u32::try_from(v).ok()),
            });
        match parsed {
            Some(m) if m != 0 => Some(m),
            _ => {
                self.err(
                    n,
                    "expected a nonzero 32-bit mark for listen.transparent_mark, such as `0x5c` or `92`",
                );
                None
            }
        }
    }

    fn mode(&mut self, n: &Node<'_>) -> Option<Mode> {
        match scalar(n) {
            Some("enforce") => Some(Mode::Enforce),
            Some("open") => Some(Mode::Open),
            Some("report") => Some(Mode::Report),
            _ => {
                self.err(n, "expected mode `enforce`, `open` or `report`");
                None
            }
        }
    }

    fn config(&mut self, doc: &Node<'_>) -> Option<Config> {
        let known = [
            "listen",
            "admin",
            "mode",
            "tls_sni_must_match",
            "zones",
            "users",
            "dns",
            "limits",
            "log",
        ];
        let entries = self.mapping(doc, "the configuration", &known, NOT_YET_TOP)?;
        let mut c = Config::empty();
        let mut ok = true;
        let mut zones_node = None;
        let mut users_node = None;
        for (key, v) in entries {
            match key {
                "listen" => ok &= self.listen(v, &mut c.listen),
                "admin" => self.admin(v, &mut c.admin),
                "mode" => match self.mode(v) {
                    Some(m) => c.mode = m,
                    None => ok = false,
                },
                "tls_sni_must_match" => match self.bool(v, "tls_sni_must_match") {
                    Some(b) => c.tls_sni_must_match = b,
                    None => ok = false,
                },
                "zones" => zones_node = Some(v),
                "users" => users_node = Some(v),
                "dns" => self.dns(v, &mut c.dns),
                "limits" => self.limits(v, &mut c.limits),
                "log" => {
                    if let Some(m) = self.mapping(v, "log", &["flows"], &[]) {
                        for (_, fv) in m {
                            if let Some(s) = self.string(fv, "log.flows") {
                                if s.is_empty() {
                                    self.err(fv, "expected `stdout` or a file path for log.flows");
                                }
                                c.log.flows = s;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(u) = users_node {
            c.users = self.users(u);
        }
        if let Some(z) = zones_node {
            c.zones = self.zones(z, &c.users, c.mode);
        }
        self.check_admin(doc, &c);
        if let Some(a) = c.listen.dns.filter(|a| c.dns.upstreams.contains(a)) {
            self.err(
                doc,
                format!("dns.upstreams names listen.dns ({a}): the forwarder would ask itself"),
            );
        }
        ok.then_some(c)
    }

    fn check_admin(&mut self, doc: &Node<'_>, c: &Config) {
        if let Some(a) = c.listen.admin {
            if !a.ip().is_loopback() && c.admin.token_file.is_none() {
                self.err(
                    doc,
                    format!(
                        "listen.admin binds {a}, beyond loopback: admin.token_file is required"
                    ),
                );
            }
        }
    }

    fn admin(&mut self, n: &Node<'_>, out: &mut Admin) {
        let known = [
            "token_file",
            "open_paths",
            "hosts",
            "recent_flows",
            "recent_denials",
            "recent_alerts",
            "window",
            "top_entries",
            "stale_after",
        ];
        let Some(m) = self.mapping(n, "admin", &known, &[]) else {
            return;
        };
        for (key, v) in m {
            let what = format!("admin.{key}");
            match key {
                "token_file" => out.token_file = self.string(v, &what).map(PathBuf::from),
                "open_paths" | "hosts" => {
                    let Some(items) = self.seq(v, &what) else {
                        continue;
                    };
                    let mut list = Vec::with_capacity(items.len());
                    for item in items {
                        let Some(s) = self.string(item, &what) else {
                            continue;
                        };
                        if key == "open_paths" && !OPEN_PATHS.contains(&s.as_str()) {
                            self.err(
                                item,
                                format!(
                                    "expected one of {} in admin.open_paths, found `{s}`",
                                    OPEN_PATHS.join(", ")
                                ),
                            );
                        } else if key == "hosts" && !valid_admin_host(&s) {
                            self.err(
                                item,
                                format!(
                                    "expected a host name or `name:port` in admin.hosts, found `{s}`"
                                ),
                            );
                        }
                        list.push(s);
                    }
                    if key == "open_paths" {
                        out.open_paths = list;
                    } else {
                        out.hosts = list;
                    }
                }
                "window" | "stale_after" => {
                    let Some(d) = self.duration(v, &what) else {
                        continue;
                    };
                    if key == "window" {
                        if d < Duration::from_secs(60) {
                            self.err(v, "expected admin.window of at least 60s");
                        }
                        out.window = d;
                    } else {
                        if d.is_zero() {
                            self.err(v, "expected a duration above zero for admin.stale_after");
                        }
                        out.stale_after = d;
                    }
                }
                _ => {
                    let Some(x) = self.positive(v, &what) else {
                        continue;
                    };
                    if x > ADMIN_MAX_ENTRIES {
                        self.err(
                            v,
                            format!("expected at most {ADMIN_MAX_ENTRIES} for {what}"),
                        );
                    }
                    match key {
                        "recent_flows" => out.recent_flows = x,
                        "recent_denials" => out.recent_denials = x,
                        "recent_alerts" => out.recent_alerts = x,
                        _ => out.top_entries = x,
                    }
                }
            }
        }
    }

    fn listen(&mut self, n: &Node<'_>, out: &mut Listen) -> bool {
        let known = [
            "http",
            "admin",
            "socks5",
            "dns",
            "transparent",
            "transparent_mark",
        ];
        let Some(m) = self.mapping(n, "listen", &known, NOT_YET_LISTEN) else {
            return false;
        };
        for (key, v) in m {
            if key == "transparent_mark" {
                out.transparent_mark = self.mark(v);
                continue;
            }
            let addr = self.socket(v, &format!("listen.{key}"));
            match key {
                "http" => out.http = addr,
                "socks5" => out.socks5 = addr,
                "dns" => out.dns = addr,
                "transparent" => out.transparent = addr,
                _ => out.admin = addr,
            }
        }
        true
    }

    fn dns(&mut self, n: &Node<'_>, out: &mut Dns) {
        let known = [
            "upstreams",
            "upstream_timeout",
            "answer_ttl_max",
            "negative_ttl",
            "cache_size",
            "blocked_answer",
            "rate_limit_qps",
            "grants_max",
            "tunnel_threshold",
            "tunnel_window",
            "tunnel_min_queries",
        ];
        let Some(m) = self.mapping(n, "dns", &known, &[]) else {
            return;
        };
        for (key, v) in m {
            let what = format!("dns.{key}");
            match key {
                "upstreams" => {
                    if let Some(items) = self.seq(v, "dns.upstreams") {
                        for item in items {
                            if let Some(a) = self.socket(item, "a dns upstream") {
                                out.upstreams.push(a);
                            }
                        }
                    }
                }
                "upstream_timeout" | "answer_ttl_max" | "negative_ttl" | "tunnel_window" => {
                    let Some(d) = self.duration(v, &what) else {
                        continue;
                    };
                    if d.is_zero() && key != "negative_ttl" {
                        self.err(v, format!("expected a duration above zero for {what}"));
                    }
                    match key {
                        "upstream_timeout" => out.upstream_timeout = d,
                        "answer_ttl_max" => out.answer_ttl_max = d,
                        "negative_ttl" => out.negative_ttl = d,
                        _ => out.tunnel_window = d,
                    }
                }
                "cache_size" | "rate_limit_qps" | "grants_max" | "tunnel_min_queries" => {
                    let Some(x) = self.positive(v, &what) else {
                        continue;
                    };
                    match key {
                        "cache_size" => out.cache_size = x,
                        "rate_limit_qps" => out.rate_limit_qps = x,
                        "grants_max" => out.grants_max = x,
                        _ => out.tunnel_min_queries = x,
                    }
                }
                "blocked_answer" => {
                    let Some(s) = self.string(v, &what) else {
                        continue;
                    };
                    match s.as_str() {
                        "nxdomain" => out.blocked_answer = BlockedAnswer::Nxdomain,
                        "refused" => out.blocked_answer = BlockedAnswer::Refused,
                        _ => match s.parse::<std::net::IpAddr>() {
                            Ok(ip) => out.blocked_answer = BlockedAnswer::Sinkhole(ip),
                            Err(_) => self.err(
                                v,
                                format!(
                                    "expected `nxdomain`, `refused` or a sinkhole IP address for dns.blocked_answer, found `{s}`"
                                ),
                            ),
                        },
                    }
                }
                _ => {
                    let parsed = scalar(v)
                        .filter(|_| plain(v))
                        .and_then(|s| s.parse::<f64>().ok())
                        .filter(|x| *x > 0.0 && *x <= 1.0);
                    match parsed {
                        Some(x) => out.tunnel_threshold = x,
                        None => self.err(
                            v,
                            "expected a number above 0 and at most 1 for dns.tunnel_threshold (e.g. `0.6`)",
                        ),
                    }
                }
            }
        }
    }

    fn limits(&mut self, n: &Node<'_>, out: &mut Limits) {
        let known = [
            "max_connections",
            "max_connections_per_source",
            "header_timeout",
            "max_header_bytes",
            "idle_timeout",
            "connect_timeout",
            "drain_timeout",
        ];
        let Some(m) = self.mapping(n, "limits", &known, &[]) else {
            return;
        };
        for (key, v) in m {
            let what = format!("limits.{key}");
            match key {
                "max_connections" => {
                    if let Some(x) = self.positive(v, &what) {
                        out.max_connections = x;
                    }
                }
                "max_connections_per_source" => {
                    if let Some(x) = self.positive(v, &what) {
                        out.max_connections_per_source = x;
                    }
                }
                "max_header_bytes" => {
                    if let Some(x) = self.positive(v, &what) {
                        if x < 1024 {
                            self.err(v, "expected limits.max_header_bytes of at least 1024");
                        }
                        out.max_header_bytes = x;
                    }
                }
                _ => {
                    let Some(d) = self.duration(v, &what) else {
                        continue;
                    };
                    if d.is_zero() {
                        self.err(v, format!("expected a duration above zero for {what}"));
                    }
                    match key {
                        "header_timeout" => out.header_timeout = d,
                        "idle_timeout" => out.idle_timeout = d,
                        "connect_timeout" => out.connect_timeout = d,
                        _ => out.drain_timeout = d,
                    }
                }
            }
        }
    }

    fn positive(&mut self, n: &Node<'_>, what: &str) -> Option<u32> {
        let v = self.u32(n, what)?;
        if v == 0 {
            self.err(n, format!("expected a number above zero for {what}"));
            return None;
        }
        Some(v)
    }

    fn users(&mut self, n: &Node<'_>) -> Vec<User> {
        let mut out: Vec<User> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let Some(items) = self.seq(n, "users") else {
            return out;
        };
        for item in items {
            let known = ["name", "password_hash", "password_hash_file"];
            let Some(m) = self.mapping(item, "a user", &known, &[]) else {
                continue;
            };
            let mut user = User {
                name: String::new(),
                password_hash: None,
                password_hash_file: None,
            };
            let mut name_node = None;
            for (key, v) in m {
                match key {
                    "name" => {
                        name_node = Some(v);
                        user.name = self.string(v, "users[].name").unwrap_or_default();
                    }
                    "password_hash" => {
                        if let Some(h) = self.string(v, "users[].password_hash") {
                            if !h.starts_with("$argon2") || h.split('$').count() < 5 {
                                self.err(
                                    v,
                                    "expected an argon2 PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`) for password_hash; clear passwords are not accepted",
                                );
                            }
                            user.password_hash = Some(h);
                        }
                    }
                    _ => {
                        user.password_hash_file = self
                            .string(v, "users[].password_hash_file")
                            .map(PathBuf::from)
                    }
                }
            }
            let Some(name_node) = name_node else {
                self.err(item, "a user needs a `name`");
                continue;
            };
            if user.name.is_empty()
                || user.name.len() > 128
                || user.name.contains(':')
                || user.name.chars().any(char::is_control)
            {
                self.err(
                    name_node,
                    "expected a user name of 1 to 128 characters without `:` or control characters",
                );
            }
            match (&user.password_hash, &user.password_hash_file) {
                (None, None) => {
                    self.err(item, "a user needs `password_hash` or `password_hash_file`")
                }
                (Some(_), Some(_)) => self.err(
                    item,
                    "a user takes one of `password_hash` and `password_hash_file`, not both",
                ),
                _ => {}
            }
            if let Some(prev) = seen.insert(user.name.clone(), name_node.span.start.line()) {
                self.err(
                    name_node,
                    format!(
                        "duplicate user `{}` (first defined on line {prev})",
                        user.name
                    ),
                );
                continue;
            }
            out.push(user);
        }
        out
    }

    fn zones(&mut self, n: &Node<'_>, users: &[User], top_mode: Mode) -> Vec<Zone> {
        let mut out: Vec<Zone> = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut ids: HashMap<String, usize> = HashMap::new();
        let Some(items) = self.seq(n, "zones") else {
            return out;
        };
        for item in items {
            let known = ["name", "sources", "users", "mode", "allow", "deny"];
            let Some(m) = self.mapping(item, "a zone", &known, &[]) else {
                continue;
            };
            let mut zone = Zone {
                name: String::new(),
                sources: None,
                users: None,
                mode: None,
                allow: Vec::new(),
                deny: Vec::new(),
            };
            let mut name_node = None;
            let mut rule_nodes = Vec::new();
            for (key, v) in m {
                match key {
                    "name" => {
                        name_node = Some(v);
                        zone.name = self.string(v, "zones[].name").unwrap_or_default();
                    }
                    "sources" => {
                        let mut nets = Vec::new();
                        if let Some(list) = self.seq(v, "zones[].sources") {
                            if list.is_empty() {
                                self.err(v, "expected at least one CIDR in sources");
                            }
                            for s in list {
                                if let Some(net) = self.cidr(s) {
                                    nets.push(net);
                                }
                            }
                        }
                        zone.sources = Some(nets);
                    }
                    "users" => {
                        let mut names = Vec::new();
                        if let Some(list) = self.seq(v, "zones[].users") {
                            if list.is_empty() {
                                self.err(v, "expected at least one user in users");
                            }
                            for u in list {
                                if let Some(name) = self.string(u, "a user name") {
                                    if !users.iter().any(|x| x.name == name) {
                                        self.err(
                                            u,
                                            format!("user `{name}` is not defined under `users:`"),
                                        );
                                    }
                                    names.push(name);
                                }
                            }
                        }
                        zone.users = Some(names);
                    }
                    "mode" => zone.mode = self.mode(v),
                    "allow" | "deny" => rule_nodes.push((key, v)),
                    _ => {}
                }
            }
            let Some(name_node) = name_node else {
                self.err(item, "a zone needs a `name`");
                continue;
            };
            if !valid_zone_name(&zone.name) {
                self.err(
                    name_node,
                    format!(
                        "invalid zone name `{}`: expected [a-z0-9_-]{{1,63}}",
                        zone.name
                    ),
                );
            } else if zone.name == "guard" || zone.name == "default" {
                self.err(name_node, format!("zone name `{}` is reserved", zone.name));
            }
            if let Some(prev) = names.insert(zone.name.clone(), name_node.span.start.line()) {
                self.err(
                    name_node,
                    format!(
                        "duplicate zone `{}` (first defined on line {prev})",
                        zone.name
                    ),
                );
            }
            for (key, v) in rule_nodes {
                let allow = key == "allow";
                if let Some(list) = self.seq(v, &format!("zones[].{key}")) {
                    for r in list {
                        if let Some(rule) = self.rule(r, allow, &mut ids) {
                            if allow {
                                zone.allow.push(rule);
                            } else {
                                zone.deny.push(rule);
                            }
                        }
                    }
                }
            }
            let _ = top_mode;
            match shadowed_by(&out, &zone).as_slice() {
                [] => {}
                [earlier] => self.err(
                    name_node,
                    format!(
                        "zone `{}` can never be selected: earlier zone `{earlier}` covers every source and user it names",
                        zone.name
                    ),
                ),
                several => self.err(
                    name_node,
                    format!(
                        "zone `{}` can never be selected: earlier zones `{}` together cover every source and user it names",
                        zone.name,
                        several.join("`, `")
                    ),
                ),
            }
            out.push(zone);
        }
        out
    }

    fn cidr(&mut self, n: &Node<'_>) -> Option<IpNet> {
        let s = self.string(n, "a CIDR")?;
        match parse_cidr(&s) {
            Ok(net) => Some(guard::canonical_net(net)),
            Err(msg) => {
                self.err(n, msg);
                None
            }
        }
    }

    fn rule(
        &mut self,
        n: &Node<'_>,
        allow: bool,
        ids: &mut HashMap<String, usize>,
    ) -> Option<Rule> {
        let m = self.mapping(n, "a rule", &["host", "cidr", "ports", "id"], &[])?;
        let mut rule = Rule {
            host: None,
            cidr: None,
            ports: None,
            id: None,
        };
        let mut bad = false;
        let mut seen_host = false;
        let mut seen_cidr = false;
        for (key, v) in m {
            match key {
                "host" => {
                    seen_host = true;
                    let s = self.string(v, "host")?;
                    match dest::normalize_pattern(&s) {
                        Ok(p) => rule.host = Some(p),
                        Err(e) => {
                            self.err(v, format!("invalid host pattern `{s}`: {e}"));
                            bad = true;
                        }
                    }
                }
                "cidr" => {
                    seen_cidr = true;
                    match self.cidr(v) {
                        Some(net) => rule.cidr = Some(net),
                        None => bad = true,
                    }
                }
                "ports" => match self.ports(v) {
                    Some(p) => rule.ports = Some(p),
                    None => bad = true,
                },
                _ => {
                    let Some(id) = self.string(v, "id") else {
                        bad = true;
                        continue;
                    };
                    if !valid_rule_id(&id) {
                        self.err(
                            v,
                            format!("invalid rule id `{id}`: expected 1 to 128 of [A-Za-z0-9_.:-]"),
                        );
                        bad = true;
                    } else if let Some(prev) = ids.insert(id.clone(), v.span.start.line()) {
                        self.err(
                            v,
                            format!("duplicate rule id `{id}` (first used on line {prev})"),
                        );
                        bad = true;
                    }
                    rule.id = Some(id);
                }
            }
        }
        match (seen_host, seen_cidr) {
            (true, true) => {
                self.err(
                    n,
                    "a rule takes exactly one of `host` and `cidr`, found both",
                );
                bad = true;
            }
            (false, false) => {
                self.err(
                    n,
                    "a rule needs exactly one of `host` and `cidr`, found neither",
                );
                bad = true;
            }
            _ => {}
        }
        if allow && rule.ports.is_none() && !bad {
            self.err(
                n,
                "an allow rule needs `ports` (a list of ports and \"a-b\" ranges, or `any`)",
            );
            bad = true;
        }
        (!bad).then_some(rule)
    }

    fn ports(&mut self, n: &Node<'_>) -> Option<Ports> {
        if plain(n) && scalar(n) == Some("any") {
            return Some(Ports::Any);
        }
        let YamlData::Sequence(items) = &n.data else {
            self.err(n, "expected a list of ports and \"a-b\" ranges, or `any`");
            return None;
        };
        if items.is_empty() {
            self.err(n, "expected at least one port (or `any`)");
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            match scalar(item).map(|s| parse_port_item(s, plain(item))) {
                Some(Ok(r)) => out.push(r),
                Some(Err(msg)) => {
                    self.err(item, msg);
                    ok = false;
                }
                None => {
                    self.err(
                        item,
                        format!("expected a port or \"a-b\" range, found {}", kind(item)),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(Ports::List(out))
    }
}

fn scalar<'n>(n: &'n Node<'_>) -> Option<&'n str> {
    match &n.data {
        YamlData::Representation(s, _, _) => Some(s.as_ref()),
        _ => None,
    }
}

fn plain(n: &Node<'_>) -> bool {
    matches!(&n.data, YamlData::Representation(_, ScalarStyle::Plain, _))
}

fn kind(n: &Node<'_>) -> &'static str {
    match &n.data {
        YamlData::Mapping(_) => "a mapping",
        YamlData::Sequence(_) => "a list",
        YamlData::Representation(..) if is_null(n) => "nothing (null)",
        YamlData::Representation(..) | YamlData::Value(_) => "a scalar",
        YamlData::Alias(_) => "an alias",
        _ => "an invalid value",
    }
}

fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// One entry of a `ports` list: `443` or `"8000-8100"`, decimal only.
fn parse_port_item(s: &str, plain: bool) -> Result<(u16, u16), String> {
    let port = |p: &str| -> Result<u16, String> {
        if p.len() > 1 && p.starts_with('0') {
            return Err(format!(
                "invalid port `{s}`: expected a decimal number without leading zeros"
            ));
        }
        match decimal(p) {
            Some(0) => Err(format!(
                "invalid port `{s}`: port 0 is not a destination port"
            )),
            Some(v) if v <= 65535 => Ok(v as u16),
            Some(_) => Err(format!("invalid port `{s}`: expected 1 to 65535")),
            None => Err(format!(
                "invalid port `{s}`: expected a decimal port or \"a-b\" range"
            )),
        }
    };
    if let Some((a, b)) = s.split_once('-') {
        let (a, b) = (port(a)?, port(b)?);
        if a > b {
            return Err(format!("invalid port range `{s}`: start is above end"));
        }
        return Ok((a, b));
    }
    let _ = plain;
    let p = port(s)?;
    Ok((p, p))
}

fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n = decimal(num)?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// A CIDR as written in a configuration: `10.0.0.0/8`, `2001:db8::/32`, or a
/// bare address meaning a single host. Host bits must be zero.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let Some((addr, len)) = s.split_once('/') else {
        return Err(format!(
            "invalid CIDR `{s}`: expected an address block like `10.0.0.0/8` or `2001:db8::/32`"
        ));
    };
    let ip = addr
        .parse::<std::net::IpAddr>()
        .map_err(|_| format!("invalid CIDR `{s}`: `{addr}` is not an IPv4 or IPv6 address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match decimal(len) {
        Some(l) if l <= max && (len == "0" || !len.starts_with('0')) => l as u8,
        _ => {
            return Err(format!(
                "invalid CIDR `{s}`: prefix length must be 0 to {max}"
            ));
        }
    };
    let net = IpNet::new(ip, len).map_err(|_| format!("invalid CIDR `{s}`"))?;
    if net.network() != ip {
        return Err(format!(
            "invalid CIDR `{s}`: host bits are set; did you mean `{}`?",
            net.trunc()
        ));
    }
    Ok(net)
}

fn valid_zone_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn valid_rule_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// The earlier zones that make `z` unreachable (in file order; empty if it
/// is reachable). `z` is unreachable when every (source, user) case it
/// admits is admitted by earlier zones, which are selected first: by one
/// zone, or by several whose sources together cover the case.
fn shadowed_by<'z>(earlier: &'z [Zone], z: &Zone) -> Vec<&'z str> {
    // Source cases: each of z's nets, or "any source" (all of v4 and v6).
    let src_cases: Vec<IpNet> = match &z.sources {
        Some(nets) if !nets.is_empty() => nets.clone(),
        Some(_) => return Vec::new(),
        None => vec![IpNet::V4(Default::default()), IpNet::V6(Default::default())],
    };
    // User cases: each of z's users, or "any user, or none".
    let user_cases: Vec<Option<&str>> = match &z.users {
        Some(u) if !u.is_empty() => u.iter().map(|s| Some(s.as_str())).collect(),
        Some(_) => return Vec::new(),
        None => vec![None],
    };
    let mut covering: Vec<usize> = Vec::new();
    for s in &src_cases {
        for u in &user_cases {
            let admits_user = |a: &Zone| match (&a.users, u) {
                (None, _) => true,
                (Some(list), Some(name)) => list.iter().any(|x| x == name),
                (Some(_), None) => false,
            };
            let candidates = || earlier.iter().enumerate().filter(|(_, a)| admits_user(a));
            let single = candidates().find(|(_, a)| match &a.sources {
                None => true,
                Some(nets) => nets.iter().any(|n| n.contains(s)),
            });
            if let Some((i, _)) = single {
                covering.push(i);
                continue;
            }
            let mut parts = Vec::new();
            for (i, a) in candidates() {
                for n in a.sources.iter().flatten() {
                    if n.contains(s) || s.contains(n) {
                        parts.push(span(*n));
                        covering.push(i);
                    }
                }
            }
            if !covers(parts, span(*s)) {
                return Vec::new();
            }
        }
    }
    covering.sort_unstable();
    covering.dedup();
    covering
        .into_iter()
        .map(|i| earlier[i].name.as_str())
        .collect()
}

/// A block as an inclusive range of numbers, v4 and v6 kept apart.
fn span(net: IpNet) -> (bool, u128, u128) {
    match net {
        IpNet::V4(n) => (
            false,
            u32::from(n.network()).into(),
            u32::from(n.broadcast()).into(),
        ),
        IpNet::V6(n) => (true, n.network().into(), n.broadcast().into()),
    }
}

/// Whether the union of `parts` covers `whole`.
fn covers(mut parts: Vec<(bool, u128, u128)>, whole: (bool, u128, u128)) -> bool {
    parts.retain(|p| p.0 == whole.0);
    parts.sort_unstable();
    let mut next = whole.1;
    for (_, lo, hi) in parts {
        if lo > next {
            return false;
        }
        if hi >= whole.2 {
            return true;
        }
        next = next.max(hi + 1);
    }
    false
}

#[cfg(test)]
mod admin_tests {
    use super::*;

    #[test]
    fn admin_keys_load_with_defaults_and_positioned_errors() {
        let c = parse_config(
            "admin:\n  recent_flows: 10\n  recent_alerts: 20\n  window: 2m\n",
            "a.yaml",
        )
        .unwrap();
        assert_eq!(c.admin.recent_flows, 10);
        assert_eq!(c.admin.recent_alerts, 20);
        assert_eq!(c.admin.window, Duration::from_secs(120));
        assert_eq!(c.admin.recent_denials, 1_000);
        assert_eq!(c.admin.open_paths, ["/healthz", "/readyz"]);
        let c = parse_config("admin:\n  window: 2m\n", "a.yaml").unwrap();
        assert_eq!(c.admin.recent_alerts, 1_000);

        let bad = "admin:\n  open_paths: [/metrics, /api]\n  hosts: [\"Bad Host\", sluice.internal:9901]\n  window: 5s\n  top_entries: 0\n  recent_flows: 2000000\n  stale_after: soon\n  recent_alerts: 0\n";
        let errs = parse_config(bad, "b.yaml").unwrap_err().to_string();
        for want in [
            "b.yaml:2:26: expected one of /healthz, /readyz, /metrics in admin.open_paths, found `/api`",
            "b.yaml:3:11: expected a host name or `name:port` in admin.hosts",
            "b.yaml:4:11: expected admin.window of at least 60s",
            "b.yaml:5:16: expected a number above zero for admin.top_entries",
            "b.yaml:6:17: expected at most 1000000 for admin.recent_flows",
            "b.yaml:7:16: expected a duration for admin.stale_after",
            "b.yaml:8:18: expected a number above zero for admin.recent_alerts",
        ] {
            assert!(errs.contains(want), "{want}\nin\n{errs}");
        }
        let errs = parse_config("admin:\n  recent_alerts: 1000001\n", "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            errs.contains("c.yaml:2:18: expected at most 1000000 for admin.recent_alerts"),
            "{errs}"
        );
    }
}

#[cfg(test)]
mod dns_tests {
    use super::*;

    #[test]
    fn dns_keys_load_with_defaults_and_positioned_errors() {
        let c = parse_config(
            "listen:\n  dns: 127.0.0.1:0\ndns:\n  upstreams: [127.0.0.53:53]\n  blocked_answer: 0.0.0.0\n  tunnel_threshold: 0.8\n  negative_ttl: 0s\n",
            "d.yaml",
        )
        .unwrap();
        assert_eq!(c.listen.dns, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(
            c.dns.blocked_answer,
            BlockedAnswer::Sinkhole("0.0.0.0".parse().unwrap())
        );
        assert_eq!(c.dns.tunnel_threshold, 0.8);
        assert_eq!(c.dns.negative_ttl, Duration::ZERO);
        assert_eq!(c.dns.rate_limit_qps, Dns::default().rate_limit_qps);

        let bad = "listen:\n  dns: 127.0.0.1:5353\ndns:\n  upstreams: [127.0.0.1:5353]\n  blocked_answer: sinkhole\n  tunnel_threshold: 2\n  rate_limit_qps: 0\n  upstream_timeout: 0s\n  cache: 5\n";
        let errs = parse_config(bad, "b.yaml").unwrap_err().to_string();
        for want in [
            "b.yaml:1:1: dns.upstreams names listen.dns (127.0.0.1:5353)",
            "b.yaml:5:19: expected `nxdomain`, `refused` or a sinkhole IP address",
            "b.yaml:6:21: expected a number above 0 and at most 1",
            "b.yaml:7:19: expected a number above zero for dns.rate_limit_qps",
            "b.yaml:8:21: expected a duration above zero for dns.upstream_timeout",
            "b.yaml:9:3: unknown key `cache` in dns",
        ] {
            assert!(errs.contains(want), "{want}\nin\n{errs}");
        }
    }
}
