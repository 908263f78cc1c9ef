//! End-to-end tests of `sluice run`'s SOCKS5 listener with real clients on
//! loopback: curl (`--socks5`, `--socks5-hostname`, `--proxy-user`), Python
//! `requests` with PySocks (`socks5://`, `socks5h://`), and raw sockets for
//! malformed handshakes and unsupported commands. Each test starts the real
//! binary on port 0 and checks what the client saw and the flow record.
//!
//! Names resolve through the testkit's DNS server in its stub configuration
//! (`FixtureDns::stub`): `*.test` names map to loopback, so the guard
//! applies to them as it would to a public name that resolves to a special
//! address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_testkit::{
    FixtureDns, Origin, Sluice, argon2_hash, assert_fields, connect_with_timeout, curl,
    python_requests,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const SOURCES: &str = r#"[127.0.0.0/8, "::1"]"#;
/// Listeners on port 0, with a short handshake timeout for the raw cases.
const LISTEN: &str = "listen:\n  http: 127.0.0.1:0\n  socks5: 127.0.0.1:0\n  admin: 127.0.0.1:0\n\
                      limits:\n  header_timeout: 2s\n";

// === helpers ===

fn start(yaml: &str) -> (Sluice, SocketAddr) {
    let s = Sluice::start(BIN, &format!("{LISTEN}{yaml}"));
    let socks = s.socks5.expect("the SOCKS5 listening line");
    (s, socks)
}

/// The first SOCKS5 record for `dst:port`: by `dst_ip` (and no name) for
/// an address, by `dst_host` for a name.
fn record_for(s: &Sluice, dst: &str, port: u16) -> Value {
    let is_ip = dst.parse::<std::net::IpAddr>().is_ok();
    s.wait_record(&format!("{dst}:{port}"), |r| {
        r["listener"] == "socks5"
            && r["dst_port"] == port
            && if is_ip {
                r["dst_ip"] == dst && r["dst_host"].is_null()
            } else {
                r["dst_host"] == dst
            }
    })
}

/// A port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A SOCKS5 request message for `host` (an IP literal or a domain).
fn request(cmd: u8, host: &str, port: u16) -> Vec<u8> {
    let mut m = vec![5, cmd, 0];
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => {
            m.push(1);
            m.extend_from_slice(&v4.octets());
        }
        Ok(std::net::IpAddr::V6(v6)) => {
            m.push(4);
            m.extend_from_slice(&v6.octets());
        }
        Err(_) => {
            m.push(3);
            m.push(host.len() as u8);
            m.extend_from_slice(host.as_bytes());
        }
    }
    m.extend_from_slice(&port.to_be_bytes());
    m
}

/// Reads one reply (`VER REP RSV ATYP ADDR PORT`); `None` if the peer closed.
fn read_reply(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head).ok()?;
    let rest = match head[3] {
        1 => 6,
        4 => 18,
        _ => return Some(head.to_vec()),
    };
    let mut tail = vec![0u8; rest];
    s.read_exact(&mut tail).ok()?;
    let mut v = head.to_vec();
    v.extend(tail);
    Some(v)
}

/// A no-auth CONNECT (or another command) through raw bytes: the reply code
/// and, after success, the open tunnel.
fn raw_connect(socks: SocketAddr, cmd: u8, host: &str, port: u16) -> (u8, TcpStream) {
    let mut s = connect_with_timeout(socks, Duration::from_secs(10));
    s.write_all(&[5, 1, 0]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 0], "method");
    s.write_all(&request(cmd, host, port)).unwrap();
    let r = read_reply(&mut s).expect("a reply");
    assert_eq!(r[0], 5, "{r:?}");
    (r[1], s)
}

/// Everything the peer sends until it closes (bounded by the read timeout),
/// and whether it did close (rather than time out).
fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => return (got, false),
        }
    }
}

/// A zone for loopback clients: `origin.test` allowed by name on `port`
/// (`origin-name`), loopback lifted on `port` (`loopback-origin`),
/// `blocked.test` denied (`no-blocked`).
fn policy(dns: &FixtureDns, port: u16, mode: &str) -> String {
    format!(
        "dns:\n  upstreams: [\"{}\"]\nzones:\n  - name: local\n    sources: {SOURCES}\n    \
         mode: {mode}\n    allow:\n      - host: origin.test\n        ports: [{port}]\n        \
         id: origin-name\n      - cidr: 127.0.0.1/32\n        ports: [{port}]\n        \
         id: loopback-origin\n      - cidr: \"::1/128\"\n        ports: [{port}]\n        \
         id: loopback6-origin\n    deny:\n      - host: blocked.test\n        id: no-blocked\n",
        dns.addr
    )
}

// === curl ===

#[test]
fn curl_socks5_and_socks5_hostname_allowed_and_denied() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let dns = FixtureDns::stub(&[
        ("origin.test", &["127.0.0.1"]),
        ("blocked.test", &["127.0.0.1"]),
    ]);
    let (s, socks) = start(&policy(&dns, port, "enforce"));
    let proxy = socks.to_string();

    // socks5h: the name goes to Sluice, judged by the host rule.
    let url = format!("http://origin.test:{port}/bytes/1000");
    let c = curl(&["--socks5-hostname", &proxy, &url]);
    assert_eq!((c.exit, c.status, c.body.len()), (0, 200, 1000), "{c:?}");
    let rec = record_for(&s, "origin.test", port);
    assert_fields(
        &rec,
        &[
            ("listener", "socks5".into()),
            ("protocol", "socks5".into()),
            ("zone", "local".into()),
            ("mode", "enforce".into()),
            ("verdict", "allow".into()),
            ("enforced", true.into()),
            ("rule", "origin-name".into()),
            ("dst_ip", "127.0.0.1".into()),
            ("user", Value::Null),
            ("error", Value::Null),
        ],
    );
    assert!(rec["bytes_in"].as_u64().unwrap() > 1000, "{rec:#}");
    assert!(rec["bytes_out"].as_u64().unwrap() > 0, "{rec:#}");
    assert!(rec["policy_hash"].as_str().is_some_and(|h| !h.is_empty()));

    // socks5: curl resolves, Sluice sees an IPv4 address.
    let c = curl(&[
        "--socks5",
        &proxy,
        &format!("http://127.0.0.1:{port}/bytes/10"),
    ]);
    assert_eq!((c.exit, c.status), (0, 200), "{c:?}");
    let rec = record_for(&s, "127.0.0.1", port);
    assert_fields(
        &rec,
        &[
            ("dst_host", Value::Null),
            ("verdict", "allow".into()),
            ("rule", "loopback-origin".into()),
        ],
    );

    // Denied by a host rule: reply 0x02, the record names the rule.
    let before = origin.conns.load(Ordering::SeqCst);
    let c = curl(&[
        "--socks5-hostname",
        &proxy,
        &format!("http://blocked.test:{port}/"),
    ]);
    assert_ne!(c.exit, 0, "{c:?}");
    assert!(
        c.stderr.contains("(2)") || c.stderr.contains("not allowed"),
        "{c:?}"
    );
    let rec = record_for(&s, "blocked.test", port);
    assert_fields(
        &rec,
        &[
            ("verdict", "deny".into()),
            ("enforced", true.into()),
            ("rule", "no-blocked".into()),
            ("bytes_in", 0.into()),
        ],
    );
    // A port no rule allows: the name is judged on its address, which the
    // guard refuses (no cidr rule lifts it on that port).
    let other = closed_port();
    let c = curl(&[
        "--socks5-hostname",
        &proxy,
        &format!("http://origin.test:{other}/"),
    ]);
    assert_ne!(c.exit, 0, "{c:?}");
    assert_eq!(
        record_for(&s, "origin.test", other)["rule"],
        "guard/special-address"
    );
    assert_eq!(
        origin.conns.load(Ordering::SeqCst),
        before,
        "denied yet dialed"
    );

    // The same through `-x socks5h://`.
    let c = curl(&["-x", &format!("socks5h://{proxy}"), &url]);
    assert_eq!((c.exit, c.status), (0, 200), "{c:?}");
}

#[test]
fn curl_proxy_user_right_wrong_and_missing() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let yaml = format!(
        "zones:\n  - name: ci\n    users: [ci]\n    mode: enforce\n    allow:\n      \
         - cidr: 127.0.0.1/32\n        ports: [{port}]\n        id: ci-origin\n\
         users:\n  - name: ci\n    password_hash: \"{}\"\n",
        argon2_hash("s3cret-pass")
    );
    let (s, socks) = start(&yaml);
    let proxy = socks.to_string();
    let url = format!("http://127.0.0.1:{port}/bytes/64");

    let c = curl(&["--socks5", &proxy, "--proxy-user", "ci:s3cret-pass", &url]);
    assert_eq!((c.exit, c.status, c.body.len()), (0, 200, 64), "{c:?}");
    let rec = record_for(&s, "127.0.0.1", port);
    assert_fields(
        &rec,
        &[
            ("user", "ci".into()),
            ("zone", "ci".into()),
            ("verdict", "allow".into()),
            ("rule", "ci-origin".into()),
        ],
    );

    // Credentials in the proxy URL, socks5h.
    let c = curl(&["-x", &format!("socks5h://ci:s3cret-pass@{proxy}"), &url]);
    assert_eq!((c.exit, c.status), (0, 200), "{c:?}");

    // Wrong password, unknown user: RFC 1929 failure, recorded alike.
    for who in ["ci:not-it", "nobody:s3cret-pass"] {
        let n = s.records().len();
        let c = curl(&["--socks5", &proxy, "--proxy-user", who, &url]);
        assert_ne!(c.exit, 0, "{who}: {c:?}");
        let recs = s.wait_records(n + 1);
        let rec = recs.last().unwrap();
        assert_fields(
            rec,
            &[
                ("listener", "socks5".into()),
                ("verdict", "deny".into()),
                ("enforced", true.into()),
                ("rule", "default/auth-failed".into()),
                (
                    "reason",
                    format!(
                        "proxy authentication failed (user \"{}\")",
                        who.split(':').next().unwrap()
                    )
                    .into(),
                ),
                ("user", Value::Null),
                ("dst_port", Value::Null),
            ],
        );
    }

    // No credentials: only user/password is acceptable (0xFF).
    let n = s.records().len();
    let c = curl(&["--socks5", &proxy, &url]);
    assert_ne!(c.exit, 0, "{c:?}");
    let recs = s.wait_records(n + 1);
    assert_eq!(recs.last().unwrap()["rule"], "default/no-zone");
    let mut raw = connect_with_timeout(socks, Duration::from_secs(5));
    raw.write_all(&[5, 1, 0]).unwrap();
    let (got, closed) = read_to_close(&mut raw);
    assert_eq!((got, closed), (vec![5, 0xFF], true));
    // A client that offers user/password is asked for it.
    let mut raw = connect_with_timeout(socks, Duration::from_secs(5));
    raw.write_all(&[5, 2, 0, 2]).unwrap();
    let mut m = [0u8; 2];
    raw.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 2]);
    raw.write_all(&[1, 2, b'c', b'i', 3, b'b', b'a', b'd'])
        .unwrap();
    let (got, closed) = read_to_close(&mut raw);
    assert_eq!((got, closed), (vec![1, 1], true));
    assert_eq!(origin.hits.load(Ordering::SeqCst), 2);
}

// === Python requests with PySocks ===

#[test]
fn python_requests_socks5_and_socks5h() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let dns = FixtureDns::stub(&[
        ("origin.test", &["127.0.0.1"]),
        ("blocked.test", &["127.0.0.1"]),
    ]);
    let mut yaml = policy(&dns, port, "enforce");
    yaml.push_str(&format!(
        "  - name: ci\n    users: [ci]\n    allow:\n      - host: origin.test\n        \
         ports: [{port}]\n        id: ci-origin\n\
         users:\n  - name: ci\n    password_hash: \"{}\"\n",
        argon2_hash("pw")
    ));
    let (s, socks) = start(&yaml);

    // socks5h: the name is resolved by Sluice.
    let got = python_requests(
        &format!("socks5h://{socks}"),
        None,
        &[
            format!("http://origin.test:{port}/bytes/300"),
            format!("http://blocked.test:{port}/"),
        ],
    );
    assert_eq!(
        (&got[0]["status"], &got[0]["len"]),
        (&200.into(), &300.into()),
        "{got:#?}"
    );
    assert!(got[1]["error"].is_string(), "{got:#?}");
    assert_eq!(record_for(&s, "origin.test", port)["rule"], "origin-name");
    assert_eq!(record_for(&s, "blocked.test", port)["rule"], "no-blocked");

    // socks5: the client resolves (the system resolver: use an address).
    let got = python_requests(
        &format!("socks5://{socks}"),
        None,
        &[format!("http://127.0.0.1:{port}/bytes/5")],
    );
    assert_eq!(got[0]["status"], 200, "{got:#?}");

    // Credentials: loopback clients match `local` first, so with a right
    // password the user is recorded and `local` still judges (first zone
    // in file order whose conditions hold).
    let got = python_requests(
        &format!("socks5h://ci:pw@{socks}"),
        None,
        &[format!("http://origin.test:{port}/bytes/7")],
    );
    assert_eq!(got[0]["status"], 200, "{got:#?}");
    let rec = s.wait_record("the authenticated flow", |r| r["user"] == "ci");
    assert_fields(
        &rec,
        &[("zone", "local".into()), ("verdict", "allow".into())],
    );
    let got = python_requests(
        &format!("socks5h://ci:wrong@{socks}"),
        None,
        &[format!("http://origin.test:{port}/")],
    );
    assert!(got[0]["error"].is_string(), "{got:#?}");
}

// === raw handshakes ===

#[test]
fn malformed_greetings_close_cleanly_and_the_listener_survives() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let dns = FixtureDns::stub(&[("origin.test", &["127.0.0.1"])]);
    let (mut s, socks) = start(&policy(&dns, port, "enforce"));

    let mut domain0 = vec![5, 1, 0];
    domain0.extend_from_slice(&[5, 1, 0, 3, 0, 0, 80]);
    let mut bad_atyp = vec![5, 1, 0];
    bad_atyp.extend_from_slice(&[5, 1, 0, 9, 1, 2, 3, 4, 0, 80]);
    let mut auth_v5 = vec![5, 1, 2];
    auth_v5.extend_from_slice(&[5, 1, b'a', 1, b'b']);
    let garbage: Vec<u8> = (0..4000u32).map(|i| (i * 7919 % 251) as u8).collect();
    // (name, bytes, shut the write side after, what Sluice answers before closing)
    let cases: Vec<(&str, Vec<u8>, bool, Vec<u8>)> = vec![
        ("bad version", vec![4, 1, 0], false, vec![]),
        (
            "HTTP instead of SOCKS",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            false,
            vec![],
        ),
        ("zero methods", vec![5, 0], false, vec![5, 0xFF]),
        ("truncated greeting, then EOF", vec![5, 3, 0], true, vec![]),
        (
            "truncated greeting, then silence",
            vec![5, 3, 0],
            false,
            vec![],
        ),
        ("nothing at all", vec![], false, vec![]),
        (
            "domain length 0",
            domain0,
            false,
            vec![5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0],
        ),
        (
            "unknown address type",
            bad_atyp,
            false,
            vec![5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0],
        ),
        (
            "truncated request, then EOF",
            vec![5, 1, 0, 5, 1, 0, 1, 127],
            true,
            vec![5, 0],
        ),
        (
            "truncated request, then silence",
            vec![5, 1, 0, 5, 1, 0, 3, 200, b'a'],
            false,
            vec![5, 0],
        ),
        (
            "user/password without user zones",
            auth_v5,
            false,
            vec![5, 2],
        ),
        ("garbage", garbage, false, vec![]),
    ];
    for (name, bytes, shut, want) in cases {
        let started = Instant::now();
        let mut c = connect_with_timeout(socks, Duration::from_secs(10));
        let _ = c.write_all(&bytes);
        if shut {
            let _ = c.shutdown(std::net::Shutdown::Write);
        }
        let (got, closed) = read_to_close(&mut c);
        assert!(closed, "{name}: not closed within 10 s (got {got:?})");
        assert_eq!(got, want, "{name}");
        // Silence ends at the 2 s handshake timeout, not later.
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{name}: {:?}",
            started.elapsed()
        );
    }
    assert!(s.is_running());
    // Malformed requests after a good greeting are recorded as bad requests.
    let rec = s.wait_record("domain length 0", |r| {
        r["listener"] == "socks5" && r["reason"] == "domain name of length 0"
    });
    assert_fields(
        &rec,
        &[
            ("rule", "default/bad-request".into()),
            ("verdict", "deny".into()),
        ],
    );

    // And a good request still works.
    let (code, mut t) = raw_connect(socks, 1, "origin.test", port);
    assert_eq!(code, 0);
    t.write_all(b"GET /bytes/3 HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (got, _) = read_to_close(&mut t);
    assert!(String::from_utf8_lossy(&got).ends_with("xxx"), "{got:?}");
}

#[test]
fn bind_and_udp_associate_are_not_supported_ipv6_connect_is() {
    let origin = Origin::start("::1");
    let port = origin.addr.port();
    let dns = FixtureDns::stub(&[]);
    let (s, socks) = start(&policy(&dns, port, "enforce"));
    for (cmd, name) in [(2u8, "BIND"), (3, "UDP ASSOCIATE"), (9, "command 0x09")] {
        let (code, mut t) = raw_connect(socks, cmd, "::1", port);
        assert_eq!(code, 7, "{name}");
        assert!(read_to_close(&mut t).1, "{name}: closed after the reply");
        let rec = s.wait_record(name, |r| {
            r["reason"].as_str().is_some_and(|x| x.contains(name))
        });
        assert_fields(
            &rec,
            &[
                ("rule", "default/bad-request".into()),
                ("dst_ip", "::1".into()),
                ("dst_port", port.into()),
            ],
        );
    }
    assert_eq!(origin.conns.load(Ordering::SeqCst), 0);

    // CONNECT to an IPv6 address: the reply carries the bound IPv6 address.
    let mut t = connect_with_timeout(socks, Duration::from_secs(10));
    t.write_all(&[5, 1, 0]).unwrap();
    let mut m = [0u8; 2];
    t.read_exact(&mut m).unwrap();
    t.write_all(&request(1, "::1", port)).unwrap();
    let r = read_reply(&mut t).unwrap();
    assert_eq!((r[1], r[3], r.len()), (0, 4, 22), "{r:?}");
    t.write_all(b"GET /bytes/4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (got, _) = read_to_close(&mut t);
    assert!(String::from_utf8_lossy(&got).ends_with("xxxx"), "{got:?}");
    drop(t); // the record is written when the tunnel closes
    let rec = s.wait_record("the IPv6 tunnel", |r| r["rule"] == "loopback6-origin");
    assert_fields(
        &rec,
        &[
            ("verdict", "allow".into()),
            ("rule", "loopback6-origin".into()),
        ],
    );
}

// === replies for dial outcomes, report mode ===

#[test]
fn refused_unresolvable_and_report_mode_replies() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let dns = FixtureDns::stub(&[("origin.test", &["127.0.0.1"])]);
    let dead = closed_port();
    let yaml = format!(
        "dns:\n  upstreams: [\"{}\"]\nzones:\n  - name: local\n    sources: {SOURCES}\n    \
         mode: enforce\n    allow:\n      - cidr: 127.0.0.1/32\n        ports: [{port}, {dead}]\n        \
         id: loopback\n      - host: \"*.test\"\n        ports: any\n",
        dns.addr
    );
    let (s, socks) = start(&yaml);

    // Connection refused: 0x05.
    let (code, _) = raw_connect(socks, 1, "127.0.0.1", dead);
    assert_eq!(code, 5);
    let rec = record_for(&s, "127.0.0.1", dead);
    assert_fields(
        &rec,
        &[
            ("verdict", "allow".into()),
            ("rule", "loopback".into()),
            ("error_kind", "connect".into()),
            ("route", "direct".into()),
        ],
    );
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .starts_with("connect 127.0.0.1"),
        "{rec:#}"
    );

    // A name that does not resolve: 0x04 host unreachable.
    let (code, _) = raw_connect(socks, 1, "nxdomain.test", 443);
    assert_eq!(code, 4);
    let rec = record_for(&s, "nxdomain.test", 443);
    assert_eq!(
        (&rec["error_kind"], &rec["route"]),
        (&"resolve".into(), &Value::Null)
    );
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .starts_with("resolve nxdomain.test"),
        "{rec:#}"
    );

    // A name that is not a valid host: 0x02 (not allowed; 0x04 would tell
    // the client to retry elsewhere), rule default/invalid-destination.
    let (code, _) = raw_connect(socks, 1, "bad..name", 80);
    assert_eq!(code, 2);
    let rec = s.wait_record("bad..name", |r| r["rule"] == "default/invalid-destination");
    assert_eq!(rec["listener"], "socks5");
    // Names no resolver should see, whatever decoding a later stage does.
    for bad in [
        "a\0b.example",
        "a/b.example",
        "a%2eb.example",
        "user@origin.test",
        "a b.example",
        "a\r\nb.example",
        "origin.test:80",
    ] {
        let (code, _) = raw_connect(socks, 1, bad, 80);
        assert_eq!(code, 2, "{bad:?}");
        s.wait_record(bad, |r| {
            r["dst_host"] == bad && r["rule"] == "default/invalid-destination"
        });
    }
}

#[test]
fn report_mode_would_be_denials_pass_the_guard_does_not() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let dns = FixtureDns::stub(&[("blocked.test", &["127.0.0.1"])]);
    // A report zone: the deny rule only records; the cidr rule lifts the
    // guard for the origin's port, so the dial itself may happen.
    let yaml = format!(
        "dns:\n  upstreams: [\"{}\"]\nzones:\n  - name: rollout\n    sources: {SOURCES}\n    \
         mode: report\n    allow:\n      - cidr: 127.0.0.1/32\n        ports: [{port}]\n        \
         id: lift\n    deny:\n      - host: blocked.test\n        id: no-blocked\n",
        dns.addr
    );
    let (s, socks) = start(&yaml);
    let c = curl(&[
        "--socks5-hostname",
        &socks.to_string(),
        &format!("http://blocked.test:{port}/bytes/9"),
    ]);
    assert_eq!((c.exit, c.status, c.body.len()), (0, 200, 9), "{c:?}");
    let rec = record_for(&s, "blocked.test", port);
    assert_fields(
        &rec,
        &[
            ("zone", "rollout".into()),
            ("mode", "report".into()),
            ("verdict", "deny".into()),
            ("enforced", false.into()),
            ("rule", "no-blocked".into()),
        ],
    );
    assert!(rec["bytes_in"].as_u64().unwrap() > 9, "{rec:#}");

    // The guard is enforced in every mode: loopback on a port no cidr lifts.
    let other = Origin::start("127.0.0.1");
    let (code, _) = raw_connect(socks, 1, "127.0.0.1", other.addr.port());
    assert_eq!(code, 2);
    let rec = record_for(&s, "127.0.0.1", other.addr.port());
    assert_fields(
        &rec,
        &[
            ("rule", "guard/special-address".into()),
            ("enforced", true.into()),
        ],
    );
    assert_eq!(other.conns.load(Ordering::SeqCst), 0);
}

// === guard: SSRF through SOCKS, and Sluice's own listeners ===

#[test]
fn guard_denies_loopback_by_ip_and_by_name_and_sluice_itself() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let dns = FixtureDns::stub(&[("evil.test", &["127.0.0.1"]), ("self.test", &["127.0.0.1"])]);
    // A host rule allows evil.test, but a host rule never lifts the guard.
    let yaml = format!(
        "dns:\n  upstreams: [\"{}\"]\nmode: open\nzones:\n  - name: local\n    sources: {SOURCES}\n    \
         allow:\n      - host: evil.test\n        ports: any\n",
        dns.addr
    );
    let (s, socks) = start(&yaml);
    let proxy = socks.to_string();
    for (how, host) in [
        ("--socks5", "127.0.0.1"),
        ("--socks5-hostname", "127.0.0.1"),
        ("--socks5-hostname", "evil.test"),
        ("--socks5-hostname", "localhost"),
        ("--socks5-hostname", "2130706433"),
        ("--socks5-hostname", "0x7f.1"),
    ] {
        let n = s.records().len();
        let c = curl(&[how, &proxy, &format!("http://{host}:{port}/")]);
        assert_ne!(c.exit, 0, "{how} {host}: {c:?}");
        let recs = s.wait_records(n + 1);
        let rec = recs.last().unwrap();
        assert_fields(
            rec,
            &[
                ("listener", "socks5".into()),
                ("verdict", "deny".into()),
                ("enforced", true.into()),
                ("rule", "guard/special-address".into()),
            ],
        );
    }
    assert_eq!(origin.conns.load(Ordering::SeqCst), 0, "guard bypassed");
    drop(s);

    // With loopback lifted on every port, Sluice still never dials its own
    // listeners (HTTP, SOCKS5, admin), by address or by name.
    let yaml = format!(
        "dns:\n  upstreams: [\"{}\"]\nzones:\n  - name: local\n    sources: {SOURCES}\n    \
         mode: enforce\n    allow:\n      - cidr: 127.0.0.0/8\n        ports: any\n      \
         - host: self.test\n        ports: any\n",
        dns.addr
    );
    let (s, socks) = start(&yaml);
    let targets = [
        ("127.0.0.1", socks.port()),
        ("self.test", socks.port()),
        ("127.0.0.1", s.http.port()),
        ("self.test", s.admin.unwrap().port()),
    ];
    for (host, p) in targets {
        let (code, _) = raw_connect(socks, 1, host, p);
        assert_eq!(code, 2, "{host}:{p}");
        let rec = record_for(&s, host, p);
        assert_fields(
            &rec,
            &[("rule", "guard/self".into()), ("verdict", "deny".into())],
        );
    }
    // The lift itself works for another loopback port.
    let (code, _) = raw_connect(socks, 1, "127.0.0.1", port);
    assert_eq!(code, 0);
}

// === domain fronting through a SOCKS5 tunnel ===

#[test]
fn sni_must_match_the_socks_host() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let dns = FixtureDns::stub(&[
        ("origin.test", &["127.0.0.1"]),
        ("other.test", &["127.0.0.1"]),
    ]);
    let (s, socks) = start(&policy(&dns, port, "enforce"));
    // curl asks SOCKS for origin.test but sends SNI other.test.
    let c = curl(&[
        "-k",
        "--socks5-hostname",
        &socks.to_string(),
        "--connect-to",
        &format!("other.test:{port}:origin.test:{port}"),
        &format!("https://other.test:{port}/"),
    ]);
    assert_ne!(c.exit, 0, "{c:?}");
    let rec = record_for(&s, "origin.test", port);
    assert_fields(
        &rec,
        &[
            ("verdict", "deny".into()),
            ("rule", "guard/sni-mismatch".into()),
            ("sni", "other.test".into()),
            ("bytes_out", 0.into()),
        ],
    );
    assert_eq!(origin.hits.load(Ordering::SeqCst), 0);
}
