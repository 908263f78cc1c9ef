//! The kinds of values a key can hold: how each is read from the YAML tree
//! (with the exact message for each way it can be wrong) and how the JSON
//! Schema describes it. A kind knows nothing of the key that uses it except
//! the label messages name it by.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ipnet::IpNet;
use serde_json::{Value as Json, json};

use super::{
    Cx,
    table::Nested,
    yaml::{self, Node},
};
use crate::{
    dest, guard,
    model::{
        BlockedAnswer, Hop, HopKind, Mode, Ports, Select, Switch, SyslogAddress, SyslogTransport,
    },
};

/// A kind of value: read from a node, described by a schema.
pub(crate) trait Kind {
    /// What the value is read as.
    type Out;
    /// The value to store, or `None` to leave the field as it was. Every
    /// problem is reported on `cx`; a kind may still return what it could
    /// read (a list with its good items) so that later checks see it.
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Self::Out>;
    /// The JSON Schema of the value, without a description.
    fn schema(&self) -> Json;
    /// Keys inside the value, for a list of mappings.
    fn nested(&self) -> Nested {
        Nested::Leaf
    }
}

// === scalar readers shared by the kinds ===

impl Cx<'_> {
    /// A scalar's text, any quoting; not null, not a collection.
    pub(crate) fn string(&mut self, n: &Node<'_>, what: &dyn std::fmt::Display) -> Option<String> {
        match yaml::scalar(n) {
            Some(s) if !yaml::is_null(n) => Some(s.to_owned()),
            _ => {
                self.err(
                    n,
                    format!("expected a string for {what}, found {}", yaml::kind(n)),
                );
                None
            }
        }
    }

    /// The items of a list.
    pub(crate) fn seq<'a>(
        &mut self,
        n: &Node<'a>,
        what: &dyn std::fmt::Display,
    ) -> Option<yaml::Items<'a>> {
        let items = yaml::items(n);
        if items.is_none() {
            self.err(
                n,
                format!("expected a list for {what}, found {}", yaml::kind(n)),
            );
        }
        items
    }

    fn socket(
        &mut self,
        n: &Node<'_>,
        what: &dyn std::fmt::Display,
        port0: bool,
    ) -> Option<SocketAddr> {
        let s = self.string(n, what)?;
        match s.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 || port0 => Some(a),
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

    fn cidr(&mut self, n: &Node<'_>) -> Option<IpNet> {
        let s = self.string(n, &"a CIDR")?;
        match parse_cidr(&s) {
            Ok(net) => Some(guard::canonical_net(net)),
            Err(msg) => {
                self.err(n, msg);
                None
            }
        }
    }
}

fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn string_schema() -> Json {
    json!({ "type": "string" })
}

fn list_of(items: Json) -> Json {
    json!({ "type": "array", "items": items })
}

// === kinds ===

/// `true` or `false`, unquoted.
pub(crate) struct Bool;

impl Kind for Bool {
    type Out = bool;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<bool> {
        match (yaml::scalar(n), yaml::plain(n)) {
            (Some("true"), true) => Some(true),
            (Some("false"), true) => Some(false),
            _ => {
                cx.err(n, format!("expected true or false for {}", cx.label()));
                None
            }
        }
    }
    fn schema(&self) -> Json {
        json!({ "type": "boolean" })
    }
}

/// A decimal whole number in `min..=max` (`min` at least 1).
pub(crate) struct Count(pub u32, pub u32);

impl Kind for Count {
    type Out = u32;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<u32> {
        let Count(min, max) = *self;
        let what = cx.label();
        let v = match yaml::scalar(n).filter(|_| yaml::plain(n)).and_then(decimal) {
            Some(v) if v <= u64::from(u32::MAX) => v as u32,
            _ => {
                cx.err(n, format!("expected a decimal whole number for {what}"));
                return None;
            }
        };
        if v == 0 {
            cx.err(n, format!("expected a number above zero for {what}"));
        } else if v < min {
            cx.err(n, format!("expected {what} of at least {min}"));
        } else if v > max {
            cx.err(n, format!("expected at most {max} for {what}"));
        } else {
            return Some(v);
        }
        None
    }
    fn schema(&self) -> Json {
        json!({ "type": "integer", "minimum": self.0.max(1), "maximum": self.1 })
    }
}

/// The least a [`Time`] may be.
#[derive(Clone, Copy)]
pub(crate) enum Min {
    /// `0s` is allowed.
    Zero,
    /// Anything above zero.
    AboveZero,
    /// At least this many seconds.
    Secs(u64),
    /// At least this many milliseconds.
    Millis(u64),
}

/// A duration: a decimal number and a unit, `ms`, `s`, `m`, `h` or `d`.
pub(crate) struct Time(pub Min);

impl Kind for Time {
    type Out = Duration;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Duration> {
        let what = cx.label();
        let Some(d) = yaml::scalar(n).and_then(parse_duration) else {
            cx.err(
                n,
                format!(
                    "expected a duration for {what} such as `500ms`, `10s`, `5m`, `1h` or `7d`"
                ),
            );
            return None;
        };
        match self.0 {
            Min::AboveZero if d.is_zero() => {
                cx.err(n, format!("expected a duration above zero for {what}"));
                None
            }
            Min::Secs(s) if d < Duration::from_secs(s) => {
                cx.err(n, format!("expected {what} of at least {s}s"));
                None
            }
            Min::Millis(ms) if d < Duration::from_millis(ms) => {
                cx.err(n, format!("expected {what} of at least {ms}ms"));
                None
            }
            _ => Some(d),
        }
    }
    fn schema(&self) -> Json {
        json!({ "type": "string", "pattern": "^[0-9]+(ms|s|m|h|d)$" })
    }
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
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// An amount of bytes: a decimal number and a unit, `B`, `KB`, `MB` or
/// `GB` (powers of 1000), e.g. `100MB`.
pub(crate) struct Size;

impl Kind for Size {
    type Out = u64;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<u64> {
        let parsed = yaml::scalar(n).and_then(parse_size).filter(|v| *v > 0);
        if parsed.is_none() {
            cx.err(
                n,
                format!(
                    "expected an amount of bytes above zero for {} such as `64KB`, `100MB` or `2GB`",
                    cx.label()
                ),
            );
        }
        parsed
    }
    fn schema(&self) -> Json {
        json!({ "type": "string", "pattern": "^[0-9]+(B|KB|MB|GB)$" })
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n = decimal(num)?;
    let scale = match unit {
        "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// A number of at least 1 (a factor), e.g. `4` or `2.5`.
pub(crate) struct Factor;

impl Kind for Factor {
    type Out = f64;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<f64> {
        let parsed = yaml::scalar(n)
            .filter(|_| yaml::plain(n))
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|x| x.is_finite() && *x >= 1.0 && *x <= 1_000_000.0);
        if parsed.is_none() {
            cx.err(
                n,
                format!(
                    "expected a number from 1 to 1000000 for {} (e.g. `4`)",
                    cx.label()
                ),
            );
        }
        parsed
    }
    fn schema(&self) -> Json {
        json!({ "type": "number", "minimum": 1, "maximum": 1_000_000 })
    }
}

/// `on` or `off`.
pub(crate) struct OnOff;

impl Kind for OnOff {
    type Out = Switch;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Switch> {
        match yaml::scalar(n) {
            Some("on") => Some(Switch::On),
            Some("off") => Some(Switch::Off),
            _ => {
                cx.err(n, format!("expected `on` or `off` for {}", cx.label()));
                None
            }
        }
    }
    fn schema(&self) -> Json {
        json!({ "enum": ["on", "off"] })
    }
}

/// ISO 3166-1 alpha-2 country codes (`[DE, FR]`), upper case.
pub(crate) struct Countries;

impl Kind for Countries {
    type Out = Vec<String>;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Vec<String>> {
        let what = cx.label();
        let list = cx.seq(n, &what)?;
        let mut out = Vec::new();
        for item in list {
            let Some(code) = cx.string(&item, &"a country code") else {
                continue;
            };
            if code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()) {
                if !out.contains(&code) {
                    out.push(code);
                }
            } else {
                cx.err(
                    &item,
                    format!(
                        "expected an ISO 3166 alpha-2 country code in {what} (two upper-case letters such as `DE`), found `{code}`"
                    ),
                );
            }
        }
        Some(out)
    }
    fn schema(&self) -> Json {
        list_of(json!({ "type": "string", "pattern": "^[A-Z]{2}$" }))
    }
}

/// A listener's `ip:port`; port 0 lets the kernel pick.
pub(crate) struct Listener;

impl Kind for Listener {
    type Out = SocketAddr;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<SocketAddr> {
        let what = cx.label();
        cx.socket(n, &what, true)
    }
    fn schema(&self) -> Json {
        string_schema()
    }
}

/// A nonzero 32-bit `SO_MARK`, decimal or `0x` hexadecimal.
pub(crate) struct Mark;

impl Kind for Mark {
    type Out = u32;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<u32> {
        let parsed =
            yaml::scalar(n)
                .filter(|_| yaml::plain(n))
                .and_then(|s| match s.strip_prefix("0x") {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => decimal(s).and_then(|v| u32::try_from(v).ok()),
                });
        match parsed {
            Some(m) if m != 0 => Some(m),
            _ => {
                cx.err(
                    n,
                    format!(
                        "expected a nonzero 32-bit mark for {}, such as `0x5c` or `92`",
                        cx.label()
                    ),
                );
                None
            }
        }
    }
    fn schema(&self) -> Json {
        json!({ "oneOf": [
            { "type": "integer", "minimum": 1, "maximum": u32::MAX },
            { "type": "string", "pattern": "^0x[0-9a-fA-F]{1,8}$" }
        ] })
    }
}

/// NATS server URLs, comma-separated: each `nats://` or `tls://`, then a
/// host (and port). Returned even when wrong (the error is reported), so
/// that `bus.url` is not also reported missing.
pub(crate) struct BusUrl;

impl Kind for BusUrl {
    type Out = String;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<String> {
        let s = Text.read(cx, n)?;
        let bad = s.split(',').map(str::trim).find(|u| {
            let rest = u
                .strip_prefix("nats://")
                .or_else(|| u.strip_prefix("tls://"));
            // After any `user:password@`: a host, no path, no spaces.
            let host = rest.map(|r| r.rsplit_once('@').map_or(r, |(_, h)| h));
            !host.is_some_and(|h| {
                !h.is_empty() && !h.starts_with(':') && !h.contains(['/', ' ', '\t', '?', '#'])
            })
        });
        if let Some(bad) = bad {
            cx.err(
                n,
                format!(
                    "expected `nats://host:port` or `tls://host:port` (comma-separated for a cluster) for {}, found `{bad}`",
                    cx.label()
                ),
            );
        }
        Some(s)
    }
    fn schema(&self) -> Json {
        json!({ "type": "string", "pattern": "^(nats|tls)://" })
    }
}

/// A JetStream stream name: `[A-Za-z0-9_-]{1,64}` (NATS forbids `.`, `*`,
/// `>`, path separators and spaces; this is the portable subset).
pub(crate) struct StreamName;

impl Kind for StreamName {
    type Out = String;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<String> {
        let s = Text.read(cx, n)?;
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            cx.err(
                n,
                format!(
                    "expected a stream name of 1 to 64 letters, digits, `_` or `-` for {}, found `{s}`",
                    cx.label()
                ),
            );
            return None;
        }
        Some(s)
    }
    fn schema(&self) -> Json {
        json!({ "type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$" })
    }
}

/// Any string (not null).
pub(crate) struct Text;

impl Kind for Text {
    type Out = String;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<String> {
        let what = cx.label();
        cx.string(n, &what)
    }
    fn schema(&self) -> Json {
        string_schema()
    }
}

/// A file path.
pub(crate) struct Path;

impl Kind for Path {
    type Out = PathBuf;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<PathBuf> {
        Text.read(cx, n).map(PathBuf::from)
    }
    fn schema(&self) -> Json {
        string_schema()
    }
}

/// A file the binary reads, kept with its position so that problems
/// reading it are reported where it is named.
pub(crate) struct FilePath;

impl Kind for FilePath {
    type Out = crate::model::FileRef;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<crate::model::FileRef> {
        let s = Text.read(cx, n)?;
        if s.is_empty() {
            cx.err(n, format!("expected a file path for {}", cx.label()));
            return None;
        }
        let at = yaml::pos(n);
        Some(crate::model::FileRef {
            path: PathBuf::from(s),
            line: at.line,
            column: at.column,
        })
    }
    fn schema(&self) -> Json {
        string_schema()
    }
}

/// A list of files the binary reads (`inspect.extra_roots`).
pub(crate) struct FilePaths;

impl Kind for FilePaths {
    type Out = Vec<crate::model::FileRef>;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Vec<crate::model::FileRef>> {
        let what = cx.label();
        let list = cx.seq(n, &what)?;
        Some(list.filter_map(|f| FilePath.read(cx, &f)).collect())
    }
    fn schema(&self) -> Json {
        json!({ "type": "array", "items": { "type": "string" } })
    }
}

/// A list of host patterns, as `host` rules take them (`inspect.tls`).
pub(crate) struct HostPatterns;

impl Kind for HostPatterns {
    type Out = Vec<String>;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Vec<String>> {
        let what = cx.label();
        let list = cx.seq(n, &what)?;
        Some(list.filter_map(|h| HostPattern.read(cx, &h)).collect())
    }
    fn schema(&self) -> Json {
        json!({ "type": "array", "items": { "type": "string" } })
    }
}

/// Where flow records go: `stdout` or a file path.
pub(crate) struct FlowTarget;

impl Kind for FlowTarget {
    type Out = String;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<String> {
        let s = Text.read(cx, n)?;
        if s.is_empty() {
            cx.err(
                n,
                format!("expected `stdout` or a file path for {}", cx.label()),
            );
        }
        Some(s)
    }
    fn schema(&self) -> Json {
        json!({ "type": "string", "minLength": 1 })
    }
}

/// `http://host[:port][/path]`: where alerts are POSTed. Plain HTTP only
/// (Sluice has no TLS client); a name is resolved when a POST is made.
pub(crate) struct WebhookUrl;

impl Kind for WebhookUrl {
    type Out = String;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<String> {
        let s = Text.read(cx, n)?;
        let what = cx.label();
        if s.starts_with("https://") {
            cx.err(
                n,
                format!(
                    "{what}: https is not supported (Sluice has no TLS client); use http://, e.g. to a local relay"
                ),
            );
            return None;
        }
        match webhook_authority(&s) {
            Some(_) => Some(s),
            None => {
                cx.err(
                    n,
                    format!(
                        "expected `http://host[:port][/path]` for {what} (e.g. `http://127.0.0.1:8080/alerts`), found `{s}`"
                    ),
                );
                None
            }
        }
    }
    fn schema(&self) -> Json {
        json!({ "type": "string", "pattern": "^http://[^/?#\\s]+(/\\S*)?$" })
    }
}

/// The authority (`host[:port]`) of an `http://` URL with a nonempty host,
/// a valid port if any, and no user info or whitespace.
fn webhook_authority(s: &str) -> Option<&str> {
    let rest = s.strip_prefix("http://")?;
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    host_port(authority, true).map(|_| authority)
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` (the port required unless
/// `port_optional`); the host without brackets and the port.
fn host_port(s: &str, port_optional: bool) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        h.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':')?)),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() || (host.contains(['[', ']', ':']) && !s.starts_with('[')) {
        return None;
    }
    let port = match port {
        Some(p) => match decimal(p).and_then(|v| u16::try_from(v).ok()) {
            Some(v) if v != 0 => Some(v),
            _ => return None,
        },
        None if port_optional => None,
        None => return None,
    };
    Some((host, port))
}

/// `udp://host:port` or `tcp://host:port`: where alerts go as syslog.
pub(crate) struct SyslogAddr;

impl Kind for SyslogAddr {
    type Out = SyslogAddress;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<SyslogAddress> {
        let s = Text.read(cx, n)?;
        let parsed = s.split_once("://").and_then(|(scheme, rest)| {
            let transport = match scheme {
                "udp" => SyslogTransport::Udp,
                "tcp" => SyslogTransport::Tcp,
                _ => return None,
            };
            let (host, port) = host_port(rest, false)?;
            Some(SyslogAddress {
                transport,
                host: host.to_owned(),
                port: port?,
            })
        });
        if parsed.is_none() {
            cx.err(
                n,
                format!(
                    "expected `udp://host:port` or `tcp://host:port` for {} (e.g. `udp://127.0.0.1:514`), found `{s}`",
                    cx.label()
                ),
            );
        }
        parsed
    }
    fn schema(&self) -> Json {
        json!({ "type": "string", "pattern": "^(udp|tcp)://.+:[0-9]+$" })
    }
}

/// `enforce`, `open` or `report`.
pub(crate) struct ModeName;

impl Kind for ModeName {
    type Out = Mode;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Mode> {
        match yaml::scalar(n) {
            Some("enforce") => Some(Mode::Enforce),
            Some("open") => Some(Mode::Open),
            Some("report") => Some(Mode::Report),
            _ => {
                cx.err(n, "expected mode `enforce`, `open` or `report`");
                None
            }
        }
    }
    fn schema(&self) -> Json {
        json!({ "enum": ["enforce", "open", "report"] })
    }
}

/// Admin paths that may be served without the bearer token.
const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// A list of admin paths served without the token.
pub(crate) struct OpenPaths;

impl Kind for OpenPaths {
    type Out = Vec<String>;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Vec<String>> {
        let what = cx.label();
        let items = cx.seq(n, &what)?;
        let mut list = Vec::with_capacity(items.len());
        for item in items {
            let item = &item;
            let Some(s) = cx.string(item, &what) else {
                continue;
            };
            if !OPEN_PATHS.contains(&s.as_str()) {
                cx.err(
                    item,
                    format!(
                        "expected one of {} in {what}, found `{s}`",
                        OPEN_PATHS.join(", ")
                    ),
                );
            }
            list.push(s);
        }
        Some(list)
    }
    fn schema(&self) -> Json {
        list_of(json!({ "enum": OPEN_PATHS }))
    }
}

/// A list of `Host` header values: `name` or `name:port`.
pub(crate) struct AdminHosts;

impl Kind for AdminHosts {
    type Out = Vec<String>;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Vec<String>> {
        let what = cx.label();
        let items = cx.seq(n, &what)?;
        let mut list = Vec::with_capacity(items.len());
        for item in items {
            let item = &item;
            let Some(s) = cx.string(item, &what) else {
                continue;
            };
            if !valid_admin_host(&s) {
                cx.err(
                    item,
                    format!("expected a host name or `name:port` in {what}, found `{s}`"),
                );
            }
            list.push(s);
        }
        Some(list)
    }
    fn schema(&self) -> Json {
        list_of(string_schema())
    }
}

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
    host_ok && port.is_none_or(|p| crate::dest::parse_port(p).is_some())
}

/// A list of resolvers, `ip:port` with a nonzero port.
pub(crate) struct Upstreams;

impl Kind for Upstreams {
    type Out = Vec<SocketAddr>;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Vec<SocketAddr>> {
        let what = cx.label();
        let items = cx.seq(n, &what)?;
        Some(
            items
                .filter_map(|item| cx.socket(&item, &"a dns upstream", false))
                .collect(),
        )
    }
    fn schema(&self) -> Json {
        list_of(string_schema())
    }
}

/// `nxdomain`, `refused`, or a sinkhole address.
pub(crate) struct Blocked;

impl Kind for Blocked {
    type Out = BlockedAnswer;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<BlockedAnswer> {
        let what = cx.label();
        let s = cx.string(n, &what)?;
        match s.as_str() {
            "nxdomain" => Some(BlockedAnswer::Nxdomain),
            "refused" => Some(BlockedAnswer::Refused),
            _ => match s.parse::<std::net::IpAddr>() {
                Ok(ip) => Some(BlockedAnswer::Sinkhole(ip)),
                Err(_) => {
                    cx.err(
                        n,
                        format!(
                            "expected `nxdomain`, `refused` or a sinkhole IP address for {what}, found `{s}`"
                        ),
                    );
                    None
                }
            },
        }
    }
    fn schema(&self) -> Json {
        string_schema()
    }
}

/// A number above 0 and at most 1.
pub(crate) struct Fraction;

impl Kind for Fraction {
    type Out = f64;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<f64> {
        let parsed = yaml::scalar(n)
            .filter(|_| yaml::plain(n))
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|x| *x > 0.0 && *x <= 1.0);
        if parsed.is_none() {
            cx.err(
                n,
                format!(
                    "expected a number above 0 and at most 1 for {} (e.g. `0.6`)",
                    cx.label()
                ),
            );
        }
        parsed
    }
    fn schema(&self) -> Json {
        json!({ "type": "number", "exclusiveMinimum": 0, "maximum": 1 })
    }
}

/// A zone's client CIDRs: at least one.
pub(crate) struct Sources;

impl Kind for Sources {
    type Out = Vec<IpNet>;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Vec<IpNet>> {
        // Even a bad list names the zone's sources (as none), so that later
        // zones are not reported as shadowed by a zone that covers nothing.
        let mut nets = Vec::new();
        let what = cx.label();
        if let Some(list) = cx.seq(n, &what) {
            if list.is_empty() {
                cx.err(n, "expected at least one CIDR in sources");
            }
            nets.extend(list.filter_map(|s| cx.cidr(&s)));
        }
        Some(nets)
    }
    fn schema(&self) -> Json {
        json!({ "type": "array", "minItems": 1, "items": { "type": "string" } })
    }
}

/// A list of CIDRs that may be empty (`listen.proxy_protocol_from`).
pub(crate) struct Cidrs;

impl Kind for Cidrs {
    type Out = Vec<IpNet>;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Vec<IpNet>> {
        let what = cx.label();
        let list = cx.seq(n, &what)?;
        Some(list.filter_map(|s| cx.cidr(&s)).collect())
    }
    fn schema(&self) -> Json {
        json!({ "type": "array", "items": { "type": "string" } })
    }
}

/// A zone's users: at least one, each defined under `users` (checked once
/// every user is known).
pub(crate) struct UserRefs;

impl Kind for UserRefs {
    type Out = Vec<String>;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Vec<String>> {
        let mut names = Vec::new();
        let what = cx.label();
        if let Some(list) = cx.seq(n, &what) {
            if list.is_empty() {
                cx.err(n, "expected at least one user in users");
            }
            for u in list {
                let u = &u;
                if let Some(name) = cx.string(u, &"a user name") {
                    cx.user_refs.push((name.clone(), yaml::pos(u)));
                    names.push(name);
                }
            }
        }
        Some(names)
    }
    fn schema(&self) -> Json {
        json!({ "type": "array", "minItems": 1, "items": { "type": "string" } })
    }
}

/// A rule's host pattern: `example.com` or `*.example.com`.
pub(crate) struct HostPattern;

impl Kind for HostPattern {
    type Out = String;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<String> {
        let s = Text.read(cx, n)?;
        if let Some(host) = url_host(&s) {
            cx.err(
                n,
                format!(
                    "invalid host pattern `{s}`: a host rule takes a host name, not a URL; write `host: {host}` and put the port under `ports`"
                ),
            );
            return None;
        }
        match dest::normalize_pattern(&s) {
            Ok(p) => Some(p),
            Err(e) => {
                cx.err(n, format!("invalid host pattern `{s}`: {e}"));
                None
            }
        }
    }
    fn schema(&self) -> Json {
        string_schema()
    }
}

/// The host name inside a URL-like value (`https://api.github.com/`,
/// `api.github.com/v3`), which a host rule cannot take; `None` for anything
/// else, which the name parser judges.
fn url_host(s: &str) -> Option<&str> {
    let (scheme, rest) = match s.split_once("://") {
        Some((_, rest)) => (true, rest),
        None => (false, s),
    };
    if !scheme && !s.contains('/') {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(']') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    (!host.is_empty() && !host.contains(':')).then_some(host)
}

/// A rule's address block.
pub(crate) struct Cidr;

impl Kind for Cidr {
    type Out = IpNet;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<IpNet> {
        cx.cidr(n)
    }
    fn schema(&self) -> Json {
        string_schema()
    }
}

/// A rule's ports: a list of ports and `"a-b"` ranges, or `any`.
pub(crate) struct PortSet;

impl Kind for PortSet {
    type Out = Ports;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Ports> {
        if yaml::plain(n) && yaml::scalar(n) == Some("any") {
            return Some(Ports::Any);
        }
        // `ports: 443` and `ports: "8000-8100"`: a list of one.
        if let Some(s) = yaml::scalar(n).filter(|_| !yaml::is_null(n)) {
            return match parse_port_item(s) {
                Ok(r) => Some(Ports::List(vec![r])),
                Err(msg) => {
                    cx.err(n, msg);
                    None
                }
            };
        }
        let Some(items) = yaml::items(n) else {
            cx.err(n, "expected a list of ports and \"a-b\" ranges, or `any`");
            return None;
        };
        if items.is_empty() {
            cx.err(n, "expected at least one port (or `any`)");
            return None;
        }
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            let item = &item;
            match yaml::scalar(item).map(parse_port_item) {
                Some(Ok(r)) => out.push(r),
                Some(Err(msg)) => {
                    cx.err(item, msg);
                    ok = false;
                }
                None => {
                    cx.err(
                        item,
                        format!(
                            "expected a port or \"a-b\" range, found {}",
                            yaml::kind(item)
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(Ports::List(out))
    }
    fn schema(&self) -> Json {
        // A port is read as written, so `443` and `"443"` are both a port.
        let one = json!({ "oneOf": [
            { "type": "integer", "minimum": 1, "maximum": 65535 },
            { "type": "string", "pattern": "^[1-9][0-9]{0,4}(-[1-9][0-9]{0,4})?$" }
        ] });
        json!({
            "oneOf": [
                { "const": "any" },
                one,
                { "type": "array", "minItems": 1, "items": one }
            ]
        })
    }
}

/// One entry of a `ports` list: `443` or `"8000-8100"`, decimal only.
fn parse_port_item(s: &str) -> Result<(u16, u16), String> {
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
    let p = port(s)?;
    Ok((p, p))
}

/// An instant in RFC 3339, e.g. `2026-03-31T00:00:00Z`.
pub(crate) struct Instant;

impl Kind for Instant {
    type Out = crate::model::Expiry;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<crate::model::Expiry> {
        let text = Text.read(cx, n)?;
        let parsed =
            time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339);
        let Ok(t) = parsed else {
            cx.err(
                n,
                format!("invalid time `{text}`: expected RFC 3339, e.g. `2026-03-31T00:00:00Z`"),
            );
            return None;
        };
        let at = yaml::pos(n);
        Some(crate::model::Expiry {
            unix_ms: i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX),
            text,
            line: at.line,
            column: at.column,
        })
    }
    fn schema(&self) -> Json {
        json!({ "type": "string", "format": "date-time" })
    }
}

/// A rule's explicit id: unique in the file.
pub(crate) struct RuleId;

impl Kind for RuleId {
    type Out = String;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<String> {
        let id = Text.read(cx, n)?;
        if !valid_rule_id(&id) {
            cx.err(
                n,
                format!("invalid rule id `{id}`: expected 1 to 128 of [A-Za-z0-9_.:-]"),
            );
            return None;
        }
        let line = yaml::pos(n).line;
        if let Some(prev) = cx.rule_ids.insert(id.clone(), line) {
            cx.err(
                n,
                format!("duplicate rule id `{id}` (first used on line {prev})"),
            );
            return None;
        }
        Some(id)
    }
    fn schema(&self) -> Json {
        json!({ "type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$" })
    }
}

fn valid_rule_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// An argon2 PHC string; a clear password is refused.
pub(crate) struct PasswordHash;

impl Kind for PasswordHash {
    type Out = String;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<String> {
        let h = Text.read(cx, n)?;
        if !h.starts_with("$argon2") || h.split('$').count() < 5 {
            cx.err(
                n,
                "expected an argon2 PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`) for password_hash; clear passwords are not accepted",
            );
        }
        // Kept even when malformed, so the user is not also reported as
        // having no hash at all.
        Some(h)
    }
    fn schema(&self) -> Json {
        json!({ "type": "string", "pattern": "^\\$argon2" })
    }
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

/// The hops of a route: `direct`, `http://host:port`, `socks5://host:port`,
/// each with optional `user:password@` and `#weight=N`; at least one, no
/// hop twice.
pub(crate) struct Vias;

/// The heaviest weight a hop may have.
const MAX_WEIGHT: u32 = 1000;

impl Kind for Vias {
    type Out = Vec<Hop>;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Vec<Hop>> {
        let what = cx.label();
        let items = cx.seq(n, &what)?;
        let mut out: Vec<Hop> = Vec::new();
        if items.is_empty() {
            cx.err(n, format!("expected at least one hop in {what}"));
        }
        for item in items {
            let item = &item;
            let Some(s) = cx.string(item, &"a hop") else {
                continue;
            };
            match parse_hop(&s) {
                Ok(hop) => {
                    if out
                        .iter()
                        .any(|h| h.kind == hop.kind && h.target() == hop.target())
                    {
                        cx.err(item, format!("`{}` is named twice in {what}", hop.target()));
                    } else {
                        out.push(hop);
                    }
                }
                Err(msg) => cx.err(item, format!("{msg} in {what}")),
            }
        }
        Some(out)
    }
    fn schema(&self) -> Json {
        json!({ "type": "array", "minItems": 1, "items": {
            "type": "string",
            "pattern": "^(direct|(http|socks5)://[^/?]+:[0-9]+)(#weight=[0-9]+)?$"
        } })
    }
}

/// One hop as written (see [`Vias`]).
pub(crate) fn parse_hop(s: &str) -> Result<Hop, String> {
    let expected = "expected `direct`, `http://host:port` or `socks5://host:port` (optionally `user:password@` before the host and `#weight=N` after the port)";
    let (body, weight) = match s.split_once('#') {
        Some((b, w)) => {
            let n = w
                .strip_prefix("weight=")
                .and_then(decimal)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (1..=MAX_WEIGHT).contains(n))
                .ok_or_else(|| {
                    format!(
                        "bad weight in `{s}`: expected `#weight=N` with N from 1 to {MAX_WEIGHT}"
                    )
                })?;
            (b, n)
        }
        None => (s, 1),
    };
    if body == "direct" {
        return Ok(Hop {
            kind: HopKind::Direct,
            host: String::new(),
            port: 0,
            user: None,
            password: None,
            weight,
        });
    }
    let (kind, rest) = if let Some(r) = body.strip_prefix("http://") {
        (HopKind::Http, r)
    } else if let Some(r) = body.strip_prefix("socks5://") {
        (HopKind::Socks5, r)
    } else if body.starts_with("https://") {
        return Err(format!(
            "`{s}`: TLS to a parent proxy is not supported; {expected}"
        ));
    } else {
        return Err(format!("`{s}`: {expected}"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (user, password) = match userinfo {
        Some(u) => {
            let (name, pass) = u.split_once(':').unwrap_or((u, ""));
            if name.is_empty() || name.len() > 255 || pass.len() > 255 {
                return Err(format!(
                    "`{s}`: expected `user:password@` of 1 to 255 bytes each"
                ));
            }
            (Some(name.to_owned()), Some(pass.to_owned()))
        }
        None => (None, None),
    };
    let bad = || format!("`{s}`: {expected}");
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, p) = v6.split_once("]:").ok_or_else(bad)?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        (h.to_owned(), p)
    } else {
        let (h, p) = hostport.rsplit_once(':').ok_or_else(bad)?;
        let name_ok = !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !name_ok {
            return Err(bad());
        }
        (h.to_ascii_lowercase(), p)
    };
    let port = crate::dest::parse_port(port)
        .filter(|p| *p != 0)
        .ok_or_else(bad)?;
    Ok(Hop {
        kind,
        host,
        port,
        user,
        password,
        weight,
    })
}

/// An IP address (a route's `source`).
pub(crate) struct Address;

impl Kind for Address {
    type Out = std::net::IpAddr;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<std::net::IpAddr> {
        let what = cx.label();
        let s = cx.string(n, &what)?;
        match s.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                cx.err(
                    n,
                    format!("expected an IP address for {what} (e.g. `192.0.2.10`), found `{s}`"),
                );
                None
            }
        }
    }
    fn schema(&self) -> Json {
        string_schema()
    }
}

/// A network interface name (at most 15 bytes, no `/` or whitespace).
pub(crate) struct Interface;

impl Kind for Interface {
    type Out = String;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<String> {
        let what = cx.label();
        let s = cx.string(n, &what)?;
        let ok = (1..=15).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
        if !ok {
            cx.err(
                n,
                format!("expected an interface name of 1 to 15 characters for {what} (e.g. `eth1`), found `{s}`"),
            );
            return None;
        }
        Some(s)
    }
    fn schema(&self) -> Json {
        json!({ "type": "string", "maxLength": 15 })
    }
}

/// `failover` or `weighted`.
pub(crate) struct SelectName;

impl Kind for SelectName {
    type Out = Select;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Select> {
        match yaml::scalar(n) {
            Some("failover") => Some(Select::Failover),
            Some("weighted") => Some(Select::Weighted),
            _ => {
                cx.err(
                    n,
                    format!("expected `failover` or `weighted` for {}", cx.label()),
                );
                None
            }
        }
    }
    fn schema(&self) -> Json {
        json!({ "enum": ["failover", "weighted"] })
    }
}

/// A route's name (`direct` or one defined under `routes`, checked once
/// every route is known).
pub(crate) struct RouteRef;

impl Kind for RouteRef {
    type Out = String;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<String> {
        let what = cx.label();
        let name = cx.string(n, &what)?;
        cx.route_refs.push((name.clone(), yaml::pos(n)));
        Some(name)
    }
    fn schema(&self) -> Json {
        string_schema()
    }
}
