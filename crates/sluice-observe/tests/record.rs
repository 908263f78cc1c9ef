//! Flow records: the JSON line byte for byte, field order, spellings,
//! round trips, address strings, ids, and a decision copied into a record
//! (moved here from the in-file test module of `record`; the RFC 3339
//! formatter, private to the crate, is still tested there).

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashSet,
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use sluice_observe::{ErrorKind, FlowRecord, Listener, Protocol, addr_string, ip_string};
use sluice_policy::{Verdict, model::Mode};

/// The line the flow log writes, byte for byte: the fields and their
/// order as they were when the encoder was written by hand (c38e7e3),
/// with `error_kind` after `error` (docs/design.md: new fields go after it).
#[test]
fn json_line_is_byte_for_byte_the_documented_one() {
    let mut r = FlowRecord::with_id(
        Listener::Socks5,
        Protocol::Socks5,
        "[2001:db8::7]:40000".parse().unwrap(),
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        "00000000000000ff".into(),
    );
    r.finish(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_001_456));
    let mut w = Vec::new();
    r.write_json(&mut w);
    assert_eq!(
        String::from_utf8(w).unwrap(),
        concat!(
            r#"{"ts":"2023-11-14T22:13:21.456Z","start":"2023-11-14T22:13:20.123Z","#,
            r#""duration_ms":1333,"id":"00000000000000ff","listener":"socks5","#,
            r#""protocol":"socks5","src":"[2001:db8::7]:40000","user":null,"zone":null,"#,
            r#""mode":null,"dst_host":null,"dst_ip":null,"dst_port":null,"sni":null,"#,
            r#""original_dst":null,"grant":null,"method":null,"status":null,"#,
            r#""qtype":null,"answers":null,"verdict":"deny","enforced":true,"rule":"","#,
            r#""reason":"","bytes_out":0,"bytes_in":0,"route":null,"policy_hash":"","#,
            r#""error":null,"error_kind":null,"interim":null,"country":null,"tls":null,"#,
            r#""intercepted":null,"findings":null,"exporter":null,"packets":null}"#
        )
    );
    let odd = "q\"\\\u{8}\u{c}\n\r\t\u{0}\u{1f}é🦀";
    r.user = Some(odd.into());
    r.zone = Some("web".into());
    r.mode = Some(Mode::Enforce);
    r.dst_host = Some("example.com".into());
    r.dst_ip = Some("2001:db8::1".parse().unwrap());
    r.dst_port = Some(65535);
    r.sni = Some(String::new());
    r.original_dst = Some("10.0.0.1:443".into());
    r.grant = Some("g".into());
    r.method = Some("GET".into());
    r.status = Some(503);
    r.qtype = Some("AAAA".into());
    r.answers = Some(vec!["1.2.3.4".into(), "x".into()]);
    r.verdict = Verdict::Allow;
    r.enforced = false;
    r.rule = "web/allow/1".into();
    r.reason = "r".into();
    r.bytes_out = u64::MAX;
    r.bytes_in = 10;
    r.route = Some("direct".into());
    r.policy_hash = "0123abcd".into();
    r.error = Some("e".into());
    r.error_kind = Some(ErrorKind::UpstreamClosed);
    let mut w = Vec::new();
    r.write_json(&mut w);
    assert_eq!(
        String::from_utf8(w).unwrap(),
        concat!(
            r#"{"ts":"2023-11-14T22:13:21.456Z","start":"2023-11-14T22:13:20.123Z","#,
            r#""duration_ms":1333,"id":"00000000000000ff","listener":"socks5","#,
            r#""protocol":"socks5","src":"[2001:db8::7]:40000","#,
            r#""user":"q\"\\\b\f\n\r\t\u0000\u001fé🦀","zone":"web","#,
            r#""mode":"enforce","dst_host":"example.com","dst_ip":"2001:db8::1","#,
            r#""dst_port":65535,"sni":"","original_dst":"10.0.0.1:443","grant":"g","#,
            r#""method":"GET","status":503,"qtype":"AAAA","answers":["1.2.3.4","x"],"#,
            r#""verdict":"allow","enforced":false,"rule":"web/allow/1","reason":"r","#,
            r#""bytes_out":18446744073709551615,"bytes_in":10,"route":"direct","#,
            r#""policy_hash":"0123abcd","error":"e","error_kind":"upstream-closed","#,
            r#""interim":null,"country":null,"tls":null,"intercepted":null,"#,
            r#""findings":null,"exporter":null,"packets":null}"#
        )
    );
}

#[test]
fn address_strings_match_display() {
    for a in [
        "0.0.0.0:0",
        "255.255.255.255:65535",
        "10.0.1.7:40000",
        "1.20.100.9:80",
        "[2001:db8::1]:443",
        "[::1]:9",
    ] {
        let a: SocketAddr = a.parse().unwrap();
        assert_eq!(addr_string(a), a.to_string());
        assert_eq!(ip_string(a.ip()), a.ip().to_string());
    }
}

#[test]
fn ipv4_mapped_clients_are_recorded_as_ipv4() {
    let src: SocketAddr = "[::ffff:10.1.2.3]:4000".parse().unwrap();
    let r = FlowRecord::new(Listener::Http, Protocol::Http, src, SystemTime::UNIX_EPOCH);
    assert_eq!(r.src.to_string(), "10.1.2.3:4000");
    let v6: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
    let r = FlowRecord::new(Listener::Http, Protocol::Http, v6, SystemTime::UNIX_EPOCH);
    assert_eq!(r.src.to_string(), "[2001:db8::1]:4000");
}

fn record() -> FlowRecord {
    let src = "10.0.1.7:40000".parse().unwrap();
    FlowRecord::new(Listener::Http, Protocol::Connect, src, UNIX_EPOCH)
}

#[test]
fn json_has_every_field_in_order_with_nulls() {
    let json = serde_json::to_string(&record()).unwrap();
    let keys: Vec<String> =
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&json)
            .unwrap()
            .keys()
            .cloned()
            .collect();
    // serde_json's Map is sorted without `preserve_order`: check order on the text.
    let fields = [
        "ts",
        "start",
        "duration_ms",
        "id",
        "listener",
        "protocol",
        "src",
        "user",
        "zone",
        "mode",
        "dst_host",
        "dst_ip",
        "dst_port",
        "sni",
        "original_dst",
        "grant",
        "method",
        "status",
        "qtype",
        "answers",
        "verdict",
        "enforced",
        "rule",
        "reason",
        "bytes_out",
        "bytes_in",
        "route",
        "policy_hash",
        "error",
        "error_kind",
        "interim",
        "country",
        "tls",
        "intercepted",
        "findings",
        "exporter",
        "packets",
    ];
    assert_eq!(keys.len(), fields.len());
    let positions: Vec<usize> = fields
        .iter()
        .map(|f| json.find(&format!("\"{f}\":")).unwrap())
        .collect();
    assert!(positions.is_sorted(), "{json}");
    assert!(json.contains(r#""user":null"#));
    assert!(json.contains(r#""answers":null"#));
    assert!(
        json.contains(r#""ts":"1970-01-01T00:00:00.000Z""#),
        "{json}"
    );
}

#[test]
fn protocol_and_listener_spellings() {
    let cases = [
        (Protocol::Http, "http"),
        (Protocol::Connect, "connect"),
        (Protocol::Socks5, "socks5"),
        (Protocol::Tls, "tls"),
        (Protocol::HttpTransparent, "http-transparent"),
        (Protocol::Tcp, "tcp"),
        (Protocol::Dns, "dns"),
        (Protocol::Udp, "udp"),
        (Protocol::Icmp, "icmp"),
        (Protocol::Other, "other"),
    ];
    for (p, s) in cases {
        assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{s}\""));
    }
    let cases = [
        (Listener::Http, "http"),
        (Listener::Socks5, "socks5"),
        (Listener::Transparent, "transparent"),
        (Listener::Dns, "dns"),
        (Listener::Netflow, "netflow"),
    ];
    for (l, s) in cases {
        assert_eq!(serde_json::to_string(&l).unwrap(), format!("\"{s}\""));
    }
}

#[test]
fn round_trips() {
    let mut r = record();
    r.answers = Some(vec!["192.0.2.1".into()]);
    r.dst_port = Some(443);
    let back: FlowRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(back, r);
}

#[test]
fn finish_sets_end_and_duration() {
    let mut r = record();
    r.finish(UNIX_EPOCH + Duration::from_millis(1_234_567));
    assert_eq!(r.duration_ms, 1_234_567);
    assert_eq!(r.ts, "1970-01-01T00:20:34.567Z");
    assert_eq!(r.start, "1970-01-01T00:00:00.000Z");
}

#[test]
fn ids_are_short_and_unique() {
    let ids: HashSet<String> = (0..10_000).map(|_| record().id().to_owned()).collect();
    assert_eq!(ids.len(), 10_000);
    assert!(ids.iter().all(|id| id.len() == 16));
}

#[test]
fn apply_decision_copies_the_explanation() {
    let policy = sluice_policy::Policy::load(
        "zones:\n  - name: web\n    sources: [10.0.1.0/24]\n    mode: report\n",
        "t.yaml",
    )
    .unwrap();
    let dest = sluice_policy::Destination::parse("example.com").unwrap();
    let decision = policy.decide(&sluice_policy::Request {
        src: "10.0.1.7".parse().unwrap(),
        user: None,
        dest: &dest,
        port: 443,
    });
    let mut r = record();
    r.apply_decision(&decision);
    assert_eq!(r.zone.as_deref(), Some("web"));
    assert_eq!(r.mode, Some(Mode::Report));
    assert_eq!(r.verdict, decision.verdict);
    assert_eq!(r.enforced, decision.enforced);
    assert_eq!(r.rule, &*decision.rule);
    assert_eq!(r.policy_hash, &*decision.policy_hash);
    assert!(!r.reason.is_empty());
}

/// A small deterministic generator (xorshift64*), so that a failure
/// names a seed that reproduces it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self) -> bool {
        self.next() & 1 == 1
    }

    /// Text mixing what needs escaping (quotes, backslashes, every control
    /// character, DEL) with plain ASCII and multi-byte UTF-8.
    fn text(&mut self) -> String {
        const PIECES: &[&str] = &[
            "a",
            "Z",
            "9",
            " ",
            "\"",
            "\\",
            "/",
            "\u{7f}",
            "é",
            "€",
            "𝄞",
            "\u{2028}",
            "\u{feff}",
            "api.example.com",
            "{}",
            "<script>",
            "%00",
        ];
        let len = self.below(12);
        let mut s = String::new();
        for _ in 0..len {
            if self.below(4) == 0 {
                s.push(char::from(self.below(0x20) as u8));
            } else {
                s.push_str(PIECES[self.below(PIECES.len() as u64) as usize]);
            }
        }
        s
    }

    fn opt_text(&mut self) -> Option<String> {
        self.chance().then(|| self.text())
    }

    fn ip(&mut self) -> std::net::IpAddr {
        match self.below(4) {
            0 => std::net::Ipv6Addr::from(u128::from(self.next()) << 64 | u128::from(self.next()))
                .into(),
            1 => std::net::Ipv6Addr::from(u128::from(self.next() as u32)).into(),
            _ => std::net::Ipv4Addr::from(self.next() as u32).into(),
        }
    }

    fn num(&mut self) -> u64 {
        match self.below(4) {
            0 => 0,
            1 => u64::MAX - self.below(3),
            2 => self.below(1000),
            _ => self.next() >> self.below(64),
        }
    }
}

fn random_record(g: &mut Rng) -> FlowRecord {
    use sluice_observe::Finding;
    const LISTENERS: [Listener; 5] = [
        Listener::Http,
        Listener::Socks5,
        Listener::Transparent,
        Listener::Dns,
        Listener::Netflow,
    ];
    const PROTOCOLS: [Protocol; 10] = [
        Protocol::Http,
        Protocol::Connect,
        Protocol::Socks5,
        Protocol::Tls,
        Protocol::HttpTransparent,
        Protocol::Tcp,
        Protocol::Dns,
        Protocol::Udp,
        Protocol::Icmp,
        Protocol::Other,
    ];
    const KINDS: [ErrorKind; 6] = [
        ErrorKind::Client,
        ErrorKind::Resolve,
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::UpstreamClosed,
        ErrorKind::Internal,
    ];
    let src = match g.ip() {
        std::net::IpAddr::V6(v6) if g.chance() => SocketAddr::V6(std::net::SocketAddrV6::new(
            v6,
            g.next() as u16,
            0,
            g.below(3) as u32,
        )),
        ip => SocketAddr::new(ip, g.next() as u16),
    };
    let start = UNIX_EPOCH + Duration::from_millis(g.below(4_102_444_800_000));
    let mut r = FlowRecord::with_id(
        LISTENERS[g.below(5) as usize],
        PROTOCOLS[g.below(10) as usize],
        src,
        start,
        g.text(),
    );
    r.user = g.opt_text();
    r.zone = g.opt_text();
    r.mode = [
        None,
        Some(Mode::Enforce),
        Some(Mode::Open),
        Some(Mode::Report),
    ][g.below(4) as usize];
    r.dst_host = g.opt_text();
    r.dst_ip = g.chance().then(|| g.ip());
    r.dst_port = g.chance().then(|| g.next() as u16);
    r.sni = g.opt_text();
    r.original_dst = g.opt_text();
    r.grant = g.opt_text();
    r.method = g.opt_text();
    r.status = g.chance().then(|| g.next() as u16);
    r.qtype = g.opt_text();
    r.answers = g
        .chance()
        .then(|| (0..g.below(4)).map(|_| g.text()).collect());
    r.verdict = if g.chance() {
        Verdict::Allow
    } else {
        Verdict::Deny
    };
    r.enforced = g.chance();
    r.rule = g.text();
    r.reason = g.text();
    r.bytes_out = g.num();
    r.bytes_in = g.num();
    r.route = g.opt_text();
    r.policy_hash = g.text();
    r.error = g.opt_text();
    r.error_kind = g.chance().then(|| KINDS[g.below(6) as usize]);
    r.interim = g.chance().then(|| g.chance());
    r.country = g.opt_text();
    r.tls = g.chance().then(|| g.chance());
    r.intercepted = g.chance().then(|| g.chance());
    r.findings = g.chance().then(|| {
        (0..g.below(3))
            .map(|_| Finding {
                kind: g.text(),
                count: g.num(),
                hash: g.text(),
            })
            .collect()
    });
    r.exporter = g.opt_text();
    r.packets = g.chance().then(|| g.num());
    if g.chance() {
        r.finish(start + Duration::from_millis(g.below(10_000_000)));
    }
    r
}

/// The hand-written encoder (`write_json`) writes exactly serde_json's
/// bytes for the serde derive, over many random records: every field,
/// `null`s, escapes of every control character, quotes and backslashes,
/// UTF-8 left as it is, IPv6 addresses with scopes, extreme numbers.
/// The serde derive is the format's definition; this keeps the fast
/// encoder from drifting away from it.
#[test]
fn hand_written_json_is_serde_json_byte_for_byte() {
    for seed in 1..=20_000u64 {
        let mut g = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let r = random_record(&mut g);
        let mut ours = Vec::new();
        r.write_json(&mut ours);
        let theirs = serde_json::to_vec(&r).unwrap();
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_slice(&ours)
                .unwrap_or_else(|e| panic!("seed {seed}: {e}: {}", String::from_utf8_lossy(&ours))),
            serde_json::from_slice(&theirs).unwrap(),
        );
        assert_eq!(a, b, "seed {seed}");
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs),
            "seed {seed}"
        );
        // And it reads back as the same record.
        assert_eq!(serde_json::from_slice::<FlowRecord>(&ours).unwrap(), r);
    }
}
