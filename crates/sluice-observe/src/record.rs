//! The flow record: one per tunnel, per absolute-form HTTP request and per
//! DNS query, with the same fields for every listener (docs/design.md "Flow
//! records"). It is data, not a log line: the sink serializes it as one JSON
//! object a line, and `sluice learn` / `replay` read it back.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    net::{IpAddr, SocketAddr},
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_policy::{Decision, Mode, Verdict};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// A record's JSON buffer to begin with ([`FlowRecord::json`]): records
/// of HTTP requests are 600 to 800 bytes.
const JSON_CAPACITY: usize = 1024;

/// The listener a flow came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Listener {
    /// The HTTP forward proxy (CONNECT and absolute-form).
    Http,
    /// The SOCKS5 proxy.
    Socks5,
    /// The transparent listener behind an nftables redirect.
    Transparent,
    /// The DNS forwarder.
    Dns,
    /// The NetFlow / IPFIX collector: flows a router, firewall or tap saw.
    Netflow,
}

/// What the flow spoke, as far as Sluice could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// An absolute-form HTTP request through the forward proxy.
    #[serde(rename = "http")]
    Http,
    /// A CONNECT tunnel.
    #[serde(rename = "connect")]
    Connect,
    /// A SOCKS5 CONNECT tunnel.
    #[serde(rename = "socks5")]
    Socks5,
    /// A redirected TLS connection, judged by its SNI.
    #[serde(rename = "tls")]
    Tls,
    /// A redirected plain HTTP connection, judged by its `Host`.
    #[serde(rename = "http-transparent")]
    HttpTransparent,
    /// A redirected connection Sluice could not classify further.
    #[serde(rename = "tcp")]
    Tcp,
    /// A DNS query.
    #[serde(rename = "dns")]
    Dns,
    /// A UDP flow seen by an exporter.
    #[serde(rename = "udp")]
    Udp,
    /// An ICMP flow seen by an exporter.
    #[serde(rename = "icmp")]
    Icmp,
    /// Another IP protocol seen by an exporter.
    #[serde(rename = "other")]
    Other,
}

/// Which side of a flow failed (the record's `error_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The client: malformed input, a failed login, gone mid-flow.
    Client,
    /// The destination's name did not resolve.
    Resolve,
    /// The destination refused or was unreachable.
    Connect,
    /// Something did not answer in time (connect, idle, head).
    Timeout,
    /// The destination closed or failed after the connection was made.
    UpstreamClosed,
    /// Sluice itself (draining, an internal failure).
    Internal,
}

impl ErrorKind {
    /// The name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Client => "client",
            ErrorKind::Resolve => "resolve",
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::UpstreamClosed => "upstream-closed",
            ErrorKind::Internal => "internal",
        }
    }
}

/// One flow, as written to the flow log. Field order is the JSON order.
///
/// Every field is always present; those that do not apply are `null`.
/// `bytes_out` counts client → destination, `bytes_in` destination → client.
/// Until [`FlowRecord::apply_decision`] runs, a record says `deny` with an
/// empty rule (a flow that failed before it could be judged, see `error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// End time, RFC 3339 (UTC, milliseconds).
    pub ts: String,
    /// Start time, RFC 3339 (UTC, milliseconds).
    pub start: String,
    /// Milliseconds from `start` to `ts`.
    pub duration_ms: u64,
    /// Unique within the process and short; also `Sluice-Request-Id`.
    id: String,
    /// The listener the flow came in on.
    pub listener: Listener,
    /// What it spoke.
    pub protocol: Protocol,
    /// The client, `ip:port`.
    #[serde(serialize_with = "addr_text")]
    pub src: SocketAddr,
    /// The authenticated user.
    pub user: Option<String>,
    /// The zone that judged it.
    pub zone: Option<String>,
    /// The zone's mode.
    pub mode: Option<Mode>,
    /// The destination name as the client gave it (normalised).
    pub dst_host: Option<String>,
    /// The address Sluice dialed (or, for an IP destination, was asked for).
    #[serde(serialize_with = "ip_text")]
    pub dst_ip: Option<IpAddr>,
    /// The destination port.
    pub dst_port: Option<u16>,
    /// The TLS server name, when a ClientHello was seen.
    pub sni: Option<String>,
    /// The pre-redirect destination of a transparent flow, `ip:port`.
    pub original_dst: Option<String>,
    /// The DNS-derived grant that let it out.
    pub grant: Option<String>,
    /// The HTTP method.
    pub method: Option<String>,
    /// The HTTP status Sluice or the destination answered.
    pub status: Option<u16>,
    /// The DNS query type.
    pub qtype: Option<String>,
    /// The DNS answers passed to the client.
    pub answers: Option<Vec<String>>,
    /// `allow` or `deny`.
    pub verdict: Verdict,
    /// False for report-mode would-be denials.
    pub enforced: bool,
    /// The rule that decided.
    pub rule: String,
    /// Why, in one line.
    pub reason: String,
    /// Bytes from the client to the destination.
    pub bytes_out: u64,
    /// Bytes from the destination to the client.
    pub bytes_in: u64,
    /// The route the flow left by.
    pub route: Option<String>,
    /// The policy version that decided.
    pub policy_hash: String,
    /// What went wrong, if anything did: one line for a person.
    pub error: Option<String>,
    /// Which side failed, when something did (`client`, `resolve`,
    /// `connect`, `timeout`, `upstream-closed`, `internal`).
    pub error_kind: Option<ErrorKind>,
    /// True on the interim records a long flow writes every `log.interim`;
    /// each record of a flow carries only the bytes since its previous one.
    #[serde(default)]
    pub interim: Option<bool>,
    /// ISO 3166 code of `dst_ip`'s country, when a country database is set.
    #[serde(default)]
    pub country: Option<String>,
    /// Whether the flow's first client bytes were a TLS ClientHello.
    #[serde(default)]
    pub tls: Option<bool>,
    /// Whether Sluice terminated the flow's TLS to inspect it.
    #[serde(default)]
    pub intercepted: Option<bool>,
    /// What inspection found (type, count, keyed hash; never the secret).
    #[serde(default)]
    pub findings: Option<Vec<Finding>>,
    /// The exporter that reported a `netflow` flow, `ip`.
    #[serde(default)]
    pub exporter: Option<String>,
    /// Packets of a `netflow` flow (scaled by the sampling rate).
    #[serde(default)]
    pub packets: Option<u64>,
    /// Start and end as clock values, so that finishing a record and
    /// aggregating it never parse the text fields back (not serialized).
    #[serde(skip)]
    times: Times,
}

/// One kind of finding in a flow: the detector's name, how often it
/// matched, and a keyed hash of the first match (so that the same secret
/// leaving twice can be recognised without storing it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The detector (`card`, `aws`, a custom pattern's name, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// How many matches.
    pub count: u64,
    /// Keyed hash of the first match, hex.
    pub hash: String,
}

/// Clock values of a record; equal whatever they hold, so that a record
/// read back from JSON equals the one written.
#[derive(Debug, Clone, Copy, Default)]
struct Times {
    start: Option<SystemTime>,
    end: Option<SystemTime>,
}

impl PartialEq for Times {
    fn eq(&self, _: &Times) -> bool {
        true
    }
}

impl Eq for Times {}

// === impl Listener ===

impl Listener {
    /// The lower-case name used in records and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Http => "http",
            Listener::Socks5 => "socks5",
            Listener::Transparent => "transparent",
            Listener::Dns => "dns",
            Listener::Netflow => "netflow",
        }
    }
}

// === impl Protocol ===

impl Protocol {
    /// The name used in records (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Connect => "connect",
            Protocol::Socks5 => "socks5",
            Protocol::Tls => "tls",
            Protocol::HttpTransparent => "http-transparent",
            Protocol::Tcp => "tcp",
            Protocol::Dns => "dns",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Other => "other",
        }
    }
}

// === impl FlowRecord ===

impl FlowRecord {
    /// A record for a flow that started at `start`, with a fresh id and
    /// every optional field `null`.
    pub fn new(listener: Listener, protocol: Protocol, src: SocketAddr, start: SystemTime) -> Self {
        FlowRecord::with_id(listener, protocol, src, start, next_id())
    }

    /// [`FlowRecord::new`] with an id the caller took from [`next_id`]
    /// earlier (an HTTP answer names it before the record is made).
    pub fn with_id(
        listener: Listener,
        protocol: Protocol,
        src: SocketAddr,
        start: SystemTime,
        id: String,
    ) -> Self {
        let start_time = start;
        let start = rfc3339(start);
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; records
        // name them as the IPv4 clients they are (as zone selection does).
        let src = match src.ip() {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(src, |v4| SocketAddr::new(v4.into(), src.port())),
            std::net::IpAddr::V4(_) => src,
        };
        FlowRecord {
            ts: start.clone(),
            start,
            duration_ms: 0,
            id,
            listener,
            protocol,
            src,
            user: None,
            zone: None,
            mode: None,
            dst_host: None,
            dst_ip: None,
            dst_port: None,
            sni: None,
            original_dst: None,
            grant: None,
            method: None,
            status: None,
            qtype: None,
            answers: None,
            verdict: Verdict::Deny,
            enforced: true,
            rule: String::new(),
            reason: String::new(),
            bytes_out: 0,
            bytes_in: 0,
            route: None,
            policy_hash: String::new(),
            error: None,
            error_kind: None,
            interim: None,
            country: None,
            tls: None,
            intercepted: None,
            findings: None,
            exporter: None,
            packets: None,
            times: Times {
                start: Some(start_time),
                end: None,
            },
        }
    }

    /// Appends the record as one JSON object (no newline): the same bytes
    /// serde_json writes for the derive above, by a hand-written encoder
    /// (`json.rs` says why; `tests/record.rs` holds the two equal).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        crate::json::write_record(self, out);
    }

    /// The record as one JSON object (no newline), in its own buffer to
    /// share: the recorder serializes each finished record once, and the
    /// flow log and the flow bus write these same bytes.
    pub fn json(&self) -> Bytes {
        // An HTTP record is about 700 bytes: one allocation, no regrowth.
        let mut out = Vec::with_capacity(JSON_CAPACITY);
        self.write_json(&mut out);
        Bytes::from(out)
    }

    /// The record's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Copies the decision's zone, mode, verdict, enforcement, rule, reason
    /// and policy hash. Call it again when a later phase changes the
    /// decision: the last one is the one that counted.
    pub fn apply_decision(&mut self, decision: &Decision) {
        self.zone = decision.zone.as_deref().map(str::to_owned);
        self.mode = decision.mode;
        self.verdict = decision.verdict;
        self.enforced = decision.enforced;
        self.rule = decision.rule.to_string();
        self.reason.clone_from(&decision.reason);
        self.policy_hash = decision.policy_hash.to_string();
    }

    /// Sets the end time and the duration since `start`.
    pub fn finish(&mut self, end: SystemTime) {
        let duration = match self.times.start {
            Some(start) => end.duration_since(start).map_or(0, |d| d.as_millis()),
            // A record read back from JSON: only the text says when it began.
            None => OffsetDateTime::parse(&self.start, &Rfc3339)
                .ok()
                .map(|s| (OffsetDateTime::from(end) - s).whole_milliseconds())
                .and_then(|ms| u128::try_from(ms).ok())
                .unwrap_or(0),
        };
        self.duration_ms = u64::try_from(duration).unwrap_or(u64::MAX);
        self.ts = rfc3339(end);
        self.times.end = Some(end);
    }

    /// When the flow ended, if this record was finished in this process
    /// (or its times were restored, [`FlowRecord::restore_times`]).
    pub fn end_time(&self) -> Option<SystemTime> {
        self.times.end
    }

    /// Restores the clock values of a record read back from JSON (they are
    /// not serialized) from its `start` and `ts`, so that it is judged like
    /// one finished here (the flow bus's followers). Whether `ts` was RFC
    /// 3339; a record without an end time is skipped by the detectors.
    pub fn restore_times(&mut self) -> bool {
        let parse = |s: &str| {
            OffsetDateTime::parse(s, &Rfc3339)
                .ok()
                .map(SystemTime::from)
        };
        self.times.start = parse(&self.start);
        self.times.end = parse(&self.ts);
        self.times.end.is_some()
    }
}

/// RFC 3339 in UTC, truncated to milliseconds (the precision of
/// `duration_ms`): every timestamp Sluice writes, records and API alike.
pub fn rfc3339(t: SystemTime) -> String {
    // Hand-rolled: this runs twice per flow on the data path, and the
    // generic formatter was a visible share of it under load (perf).
    let (secs, millis) = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (d.as_secs(), d.subsec_millis()),
        Err(_) => (0, 0),
    };
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    let mut out = String::with_capacity(24);
    // Years outside 0..=9999 are not RFC 3339; clamp rather than misalign.
    let y = y.clamp(0, 9999) as u32;
    push_digits(&mut out, y / 100, 2);
    push_digits(&mut out, y % 100, 2);
    out.push('-');
    push_digits(&mut out, m, 2);
    out.push('-');
    push_digits(&mut out, d, 2);
    out.push('T');
    push_digits(&mut out, (rem / 3600) as u32, 2);
    out.push(':');
    push_digits(&mut out, (rem % 3600 / 60) as u32, 2);
    out.push(':');
    push_digits(&mut out, (rem % 60) as u32, 2);
    out.push('.');
    push_digits(&mut out, millis, 3);
    out.push('Z');
    out
}

/// Appends the last `width` decimal digits of `n`, zero-padded.
fn push_digits(out: &mut String, n: u32, width: u32) {
    let mut div = 10u32.pow(width - 1);
    while div > 0 {
        out.push(char::from(b'0' + (n / div % 10) as u8));
        div /= 10;
    }
}

/// Serializes `src` as [`addr_string`] writes it (the text `Display`
/// gives, without the formatting machinery: every record has one).
fn addr_text<S: serde::Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&addr_string(*a))
}

/// Serializes `dst_ip` as [`ip_string`] writes it.
fn ip_text<S: serde::Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
    match ip {
        Some(ip) => s.serialize_str(&ip_string(*ip)),
        None => s.serialize_none(),
    }
}

/// `ip:port` (`[v6]:port`) as `SocketAddr`'s `Display` writes it, without
/// the formatting machinery for the common IPv4 case (every record has one).
pub fn addr_string(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v4) => {
            let mut out = ip4_string(*v4.ip());
            out.push(':');
            push_u32(&mut out, u32::from(v4.port()));
            out
        }
        SocketAddr::V6(_) => a.to_string(),
    }
}

/// An IP address as its `Display` writes it (IPv4 without the formatter).
pub fn ip_string(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => ip4_string(v4),
        std::net::IpAddr::V6(v6) => v6.to_string(),
    }
}

fn ip4_string(ip: std::net::Ipv4Addr) -> String {
    let mut out = String::with_capacity(21);
    for (i, o) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_u32(&mut out, u32::from(o));
    }
    out
}

fn push_u32(out: &mut String, n: u32) {
    let digits = n.checked_ilog10().unwrap_or(0) + 1;
    push_digits(out, n, digits);
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A fresh id, unique within the process: 16 hex digits from a counter
/// that starts at a random point, so ids are also unlikely to collide
/// across restarts (flow records and alerts share it).
pub fn next_id() -> String {
    static NEXT: OnceLock<AtomicU64> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let mut h = RandomState::new().build_hasher();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        AtomicU64::new(h.finish())
    });
    // Sixteen hex digits without the formatting machinery (every record
    // takes one).
    let n = next.fetch_add(1, Ordering::Relaxed);
    (0..16)
        .rev()
        .map(|i| char::from(b"0123456789abcdef"[((n >> (i * 4)) & 0xF) as usize]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_the_time_crate() {
        use std::time::Duration;
        for secs in [
            0u64,
            951_782_400,
            1_700_000_000,
            1_795_000_000,
            4_102_444_800,
            253_402_300_799,
        ] {
            for ms in [0u64, 7, 700, 999] {
                let t = SystemTime::UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms);
                let ours = rfc3339(t);
                let theirs = OffsetDateTime::parse(&ours, &Rfc3339).unwrap();
                assert_eq!(SystemTime::from(theirs), t, "{ours}");
                assert_eq!(ours.len(), 24, "{ours}");
            }
        }
    }
}
