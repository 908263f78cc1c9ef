//! The HTTP proxy under attack, through the real binary on loopback: SSRF
//! in every numeric, IPv6-embedded and name form through CONNECT and
//! absolute-form in `enforce` and `open` mode; DNS rebinding with a stub
//! resolver; malformed and smuggling-shaped requests; slowloris against the
//! per-source cap and the header timeout.
//!
//! Every attack aims at a real origin listening on 127.0.0.1 and asserts that
//! the origin never saw a connection, not only that the answer was a 403.
//!
//! Layout: SSRF, rebinding, malformed input and slowloris tests. Names
//! resolve through the testkit's DNS server in its stub configuration
//! (`FixtureDns::stub`); the rebinding name answers from a series.

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_testkit::{
    FixtureDns, Origin, RawResponse, Sluice, connect_tunnel, connect_with_timeout, curl, get_on,
    poll_until, send_raw,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const T: Duration = Duration::from_secs(10);

// === SSRF ===

/// What a hostile destination must get.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    /// 403 from the guard.
    Guard,
    /// 403 from the guard, or a 400 without a flow record where the request
    /// target is not valid HTTP (percent-escapes and non-ASCII in the host:
    /// hyper refuses them before Sluice sees a request).
    GuardOrBad,
}

/// Hosts that all mean a special address (most of them 127.0.0.1).
const SSRF_HOSTS: &[(&str, Want)] = &[
    ("127.0.0.1", Want::Guard),
    ("2130706433", Want::Guard),
    ("0x7f000001", Want::Guard),
    ("0177.0.0.1", Want::Guard),
    ("127.1", Want::Guard),
    ("0x7f.1", Want::Guard),
    ("0", Want::Guard),
    ("0.0.0.0", Want::Guard),
    ("169.254.169.254", Want::Guard),
    ("0251.0376.0251.0376", Want::Guard),
    ("2852039166", Want::Guard),
    ("0xa9fea9fe", Want::Guard),
    ("10.0.0.1", Want::Guard),
    ("192.168.1.1", Want::Guard),
    ("100.64.0.1", Want::Guard),
    ("[::1]", Want::Guard),
    ("[::ffff:127.0.0.1]", Want::Guard),
    ("[::ffff:7f00:1]", Want::Guard),
    ("[::127.0.0.1]", Want::Guard),
    ("[64:ff9b::7f00:1]", Want::Guard),
    ("[2002:7f00:1::1]", Want::Guard),
    // Teredo: public server 65.54.227.120, client 127.0.0.1 (obfuscated).
    ("[2001:0:4136:e378:8000:63bf:80ff:fffe]", Want::Guard),
    ("[fe80::1%25eth0]", Want::Guard),
    ("[fd00:ec2::254]", Want::Guard),
    ("%31%32%37.0.0.1", Want::GuardOrBad),
    ("１２７.０.０.１", Want::GuardOrBad),
    ("127.0.0.1.", Want::Guard),
    ("localhost", Want::Guard),
    ("localhost.", Want::Guard),
    ("LocalHost", Want::Guard),
    ("foo.localhost", Want::Guard),
    // Names the stub resolver maps to special addresses.
    ("evil.test", Want::Guard),
    ("meta.test", Want::Guard),
    ("v6.test", Want::Guard),
    ("mixed.test", Want::Guard),
    ("both.test", Want::Guard),
];

fn ssrf_dns() -> FixtureDns {
    FixtureDns::stub(&[
        ("evil.test", &["127.0.0.1"]),
        ("meta.test", &["169.254.169.254"]),
        ("v6.test", &["::1"]),
        ("mixed.test", &["127.0.0.1"]),
        ("both.test", &["127.0.0.1", "10.1.2.3", "::ffff:127.0.0.1"]),
    ])
}

/// Permissive public rules: everything public may leave; only the guard
/// stands between a client and loopback.
fn permissive(mode: &str, dns: SocketAddr) -> String {
    format!(
        "mode: {mode}
dns:
  upstreams: [\"{dns}\"]
zones:
  - name: local
    sources: [127.0.0.0/8, \"::1\"]
    allow:
      - cidr: 0.0.0.0/0
        ports: any
      - cidr: ::/0
        ports: any
      - host: \"*.test\"
        ports: any
"
    )
}

fn absolute_get(authority: &str) -> Vec<u8> {
    format!("GET http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\n\r\n").into_bytes()
}

fn connect_req(authority: &str) -> Vec<u8> {
    format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").into_bytes()
}

/// One line describing a response, for assertion messages.
fn show(r: &RawResponse) -> String {
    let body: String = r.text().chars().take(300).collect();
    format!(
        "status {:?}, rule {:?}, body {body:?}",
        r.status,
        r.header("sluice-rule"),
    )
}

#[test]
fn ssrf_forms_never_reach_loopback_in_enforce_and_open_mode() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let dns = ssrf_dns();
    for mode in ["enforce", "open"] {
        let sluice = Sluice::start(BIN, &permissive(mode, dns.addr));
        // Every request leaves one record: those Sluice judged (they carry
        // a request id) and those the HTTP parser refused (its own 400).
        let mut judged = 0;
        for &(host, want) in SSRF_HOSTS {
            let authority = format!("{host}:{port}");
            for (how, req) in [
                ("CONNECT", connect_req(&authority)),
                ("absolute-form", absolute_get(&authority)),
            ] {
                let r = send_raw(sluice.http, &req, T);
                let what = format!("{mode} {how} {authority}: {}", show(&r));
                match (r.status, want) {
                    (Some(403), _) => {
                        assert_eq!(
                            r.header("sluice-rule"),
                            Some("guard/special-address"),
                            "{what}"
                        );
                        assert!(
                            r.header("sluice-reason").is_some_and(|v| !v.is_empty()),
                            "{what}"
                        );
                        assert!(r.header("sluice-request-id").is_some(), "{what}");
                    }
                    (Some(400), Want::GuardOrBad) => {}
                    _ => panic!("{what}: expected 403 from the guard"),
                }
                judged += 1;
                assert_eq!(
                    origin.conns.load(Ordering::SeqCst),
                    0,
                    "{what}: origin was reached"
                );
            }
        }
        let records = sluice.wait_records(judged);
        assert_eq!(records.len(), judged, "one record per request");
        for r in &records {
            assert_eq!(r["verdict"], "deny", "{r}");
            assert_eq!(r["enforced"], true, "{r}");
            assert!(r["bytes_out"] == 0 && r["bytes_in"] == 0, "{r}");
        }
        // The names were judged after resolution, by the guard.
        for name in [
            "evil.test",
            "meta.test",
            "v6.test",
            "mixed.test",
            "both.test",
        ] {
            let rec = records
                .iter()
                .find(|r| r["dst_host"] == name)
                .unwrap_or_else(|| panic!("{mode}: no record for {name}"));
            assert_eq!(rec["rule"], "guard/special-address", "{rec}");
        }
    }
    assert!(
        dns.queries("evil.test", "A") > 0,
        "the stub resolver was asked"
    );
    assert_eq!(origin.hits.load(Ordering::SeqCst), 0);
    assert_eq!(origin.conns.load(Ordering::SeqCst), 0);
}

/// The harness can see a request that gets through: with the guard lifted
/// for exactly the origin, the same numeric forms reach it. Without this,
/// "the origin saw nothing" could also mean "the origin could not be seen".
#[test]
fn ssrf_control_lifted_guard_reaches_the_origin() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let sluice = Sluice::start(
        BIN,
        &format!(
            "mode: enforce
zones:
  - name: local
    sources: [127.0.0.0/8]
    allow:
      - cidr: 127.0.0.1/32
        ports: [{port}]
"
        ),
    );
    // `localhost` resolves locally to 127.0.0.1 and ::1 (RFC 6761) and
    // meets the guard as those addresses do: the loopback rule lets it out.
    let hosts = [
        "127.0.0.1",
        "2130706433",
        "0x7f.1",
        "[::ffff:127.0.0.1]",
        "localhost",
        "app.localhost",
    ];
    for host in hosts {
        let authority = format!("{host}:{port}");
        let r = send_raw(sluice.http, &absolute_get(&authority), T);
        assert_eq!(r.status, Some(200), "{authority}: {}", show(&r));
        let mut tunnel = connect_tunnel(sluice.http, &authority, T)
            .unwrap_or_else(|r| panic!("CONNECT {authority}: {}", show(&r)));
        let r = get_on(&mut tunnel, &authority, "/bytes/5");
        assert_eq!((r.status, r.body.len()), (Some(200), 5), "{authority}");
    }
    assert_eq!(origin.hits.load(Ordering::SeqCst), 2 * hosts.len());
    // Still not for a port the rule does not name.
    let other = format!("127.0.0.1:{}", port.wrapping_add(1).max(1));
    let r = send_raw(sluice.http, &absolute_get(&other), T);
    assert_eq!(r.status, Some(403), "{}", show(&r));
}

/// Special-use names that mean nothing on the Internet are denied by the
/// guard in every mode and never reach a resolver: `.onion` (RFC 7686),
/// `.local`, `.invalid`, `.alt`, and the private zones `internal` and
/// `home.arpa` without a host rule naming them.
const SPECIAL_USE: [&str; 6] = [
    "x.onion",
    "printer.local",
    "a.invalid",
    "b.alt",
    "nas.home.arpa",
    "x.internal",
];

#[test]
fn special_use_names_never_reach_the_resolver() {
    let dns = ssrf_dns();
    for name in SPECIAL_USE {
        // Were one asked, it would answer loopback: nothing leaves the host.
        dns.set_addresses(name, &["127.0.0.1"]);
    }
    for mode in ["enforce", "open", "report"] {
        let sluice = Sluice::start(BIN, &permissive(mode, dns.addr));
        for name in SPECIAL_USE {
            let authority = format!("{name}:443");
            let r = send_raw(sluice.http, &connect_req(&authority), T);
            assert_eq!(r.status, Some(403), "{mode} {authority}: {}", show(&r));
            assert_eq!(
                r.header("sluice-rule"),
                Some("guard/special-name"),
                "{mode} {authority}"
            );
            let r = send_raw(sluice.http, &absolute_get(&format!("{name}:80")), T);
            assert_eq!(r.status, Some(403), "{mode} {name}: {}", show(&r));
            assert_eq!(
                dns.queries_for(name),
                0,
                "{mode} {name} reached the resolver"
            );
        }
    }
}

// === DNS rebinding ===

/// A listener on `ip:port` that answers every connection with a small HTTP
/// response and counts accepts.
fn counting_server(listener: TcpListener) -> Arc<AtomicUsize> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            n.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(T));
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
                    if !matches!(s.read(&mut b), Ok(1)) {
                        return;
                    }
                    head.push(b[0]);
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            });
        }
    });
    accepted
}

/// Listeners on 127.0.0.2:P and 127.0.0.1:P (same port, distinct sockets).
fn twin_listeners() -> (TcpListener, TcpListener) {
    for _ in 0..50 {
        let two = TcpListener::bind("127.0.0.2:0").unwrap();
        let port = two.local_addr().unwrap().port();
        if let Ok(one) = TcpListener::bind(("127.0.0.1", port)) {
            return (two, one);
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.1");
}

/// The resolver answers 127.0.0.2 (allowed by a lifting `cidr` rule) first
/// and 127.0.0.1 afterwards, with TTL 0. Each request resolves once and
/// dials only what it checked, so 127.0.0.1 is never reached, whether the
/// rebinding happens between requests or between a check and a connect.
#[test]
fn dns_rebinding_never_reaches_loopback() {
    let (two, one) = twin_listeners();
    let port = two.local_addr().unwrap().port();
    let on_two = counting_server(two);
    let on_one = counting_server(one);
    let dns = FixtureDns::stub(&[("pair.test", &["127.0.0.1", "127.0.0.2"])]);
    dns.set_series(
        "rebind.test",
        0,
        &[&[("A", "127.0.0.2")], &[("A", "127.0.0.1")]],
    );
    let sluice = Sluice::start(
        BIN,
        &format!(
            "mode: enforce
dns:
  upstreams: [\"{}\"]
zones:
  - name: local
    sources: [127.0.0.0/8]
    allow:
      - cidr: 127.0.0.2/32
        ports: any
      - host: rebind.test
        ports: any
      - host: pair.test
        ports: any
",
            dns.addr
        ),
    );
    let mut statuses = Vec::new();
    for i in 0..20 {
        let authority = format!("rebind.test:{port}");
        let r = if i % 2 == 0 {
            match connect_tunnel(sluice.http, &authority, T) {
                Ok(mut tunnel) => get_on(&mut tunnel, &authority, "/"),
                Err(r) => r,
            }
        } else {
            send_raw(sluice.http, &absolute_get(&authority), T)
        };
        match r.status {
            Some(200) => assert_eq!(r.text(), "ok"),
            Some(403) => assert_eq!(r.header("sluice-rule"), Some("guard/special-address")),
            _ => panic!("request {i}: {}", show(&r)),
        }
        statuses.push(r.status.unwrap());
    }
    // An answer with both addresses: only the checked one is dialed.
    for _ in 0..5 {
        let r = send_raw(sluice.http, &absolute_get(&format!("pair.test:{port}")), T);
        assert_eq!(r.status, Some(200), "{}", show(&r));
    }
    assert_eq!(on_one.load(Ordering::SeqCst), 0, "127.0.0.1 was reached");
    assert!(
        statuses.contains(&200),
        "127.0.0.2 was never allowed: {statuses:?}"
    );
    assert!(
        statuses.contains(&403),
        "the rebinding never happened: {statuses:?}"
    );
    assert!(dns.queries("rebind.test", "A") >= 2);
    assert!(on_two.load(Ordering::SeqCst) >= 6);

    let records = sluice.wait_records(25);
    assert_eq!(records.len(), 25);
    for r in &records {
        let allowed_to_two = r["verdict"] == "allow" && r["dst_ip"] == "127.0.0.2";
        let guarded = r["verdict"] == "deny" && r["rule"] == "guard/special-address";
        assert!(allowed_to_two || guarded, "{r}");
        assert_ne!(r["dst_ip"], "127.0.0.1", "{r}");
    }
}

// === malformed input ===

/// Sluice with the guard lifted for exactly `origin`, so that a request is
/// refused only for its form.
fn allowing(origin: &Origin, extra: &str) -> Sluice {
    Sluice::start(
        BIN,
        &format!(
            "mode: enforce
{extra}zones:
  - name: local
    sources: [127.0.0.0/8]
    allow:
      - cidr: 127.0.0.1/32
        ports: [{}]
",
            origin.addr.port()
        ),
    )
}

/// What a malformed request may get.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    /// A 4xx, or a close without an answer.
    Refused,
    /// A 400 whose body contains this text.
    Explained(&'static str),
    /// Refused, or forwarded with the one length both headers agree on.
    RefusedOrOneLength,
}

/// Writes `bytes`, reads one answer, then reports whether the connection
/// closed without sending anything more (2 s bound).
fn exchange_then_close(addr: SocketAddr, bytes: &[u8]) -> (RawResponse, bool) {
    let mut s = connect_with_timeout(addr, T);
    let _ = s.write_all(bytes);
    let r = sluice_testkit::read_response(&mut s, bytes.starts_with(b"CONNECT "));
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut more = [0u8; 256];
    let closed = match s.read(&mut more) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    (r, closed)
}

#[test]
fn malformed_requests_get_4xx_or_close_and_the_proxy_lives_on() {
    let origin = Origin::start("127.0.0.1");
    let o = origin.addr;
    let mut sluice = allowing(&origin, "");
    let big = "a".repeat(100 * 1024);
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let smuggled = format!("GET http://{o}/smuggled HTTP/1.1\r\nHost: {o}\r\n\r\n");
    let cases: Vec<(&str, Vec<u8>, Outcome)> = vec![
        (
            "Content-Length then Transfer-Encoding",
            format!(
                "POST http://{o}/ HTTP/1.1\r\nHost: {o}\r\nContent-Length: 5\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            )
            .into_bytes(),
            Outcome::Explained("both Content-Length and Transfer-Encoding"),
        ),
        (
            "Transfer-Encoding then Content-Length",
            format!(
                "POST http://{o}/ HTTP/1.1\r\nHost: {o}\r\nTransfer-Encoding: chunked\r\n\
                 Content-Length: 60\r\n\r\n0\r\n\r\n{smuggled}"
            )
            .into_bytes(),
            Outcome::Explained("both Content-Length and Transfer-Encoding"),
        ),
        (
            "Transfer-Encoding not chunked",
            format!("POST http://{o}/ HTTP/1.1\r\nHost: {o}\r\nTransfer-Encoding: gzip\r\n\r\nxx")
                .into_bytes(),
            Outcome::Refused,
        ),
        (
            "duplicate equal Content-Length",
            format!(
                "POST http://{o}/ HTTP/1.1\r\nHost: {o}\r\nContent-Length: 3\r\n\
                 Content-Length: 3\r\n\r\nabc"
            )
            .into_bytes(),
            Outcome::RefusedOrOneLength,
        ),
        (
            "duplicate different Content-Length",
            format!(
                "POST http://{o}/ HTTP/1.1\r\nHost: {o}\r\nContent-Length: 3\r\n\
                 Content-Length: 30\r\n\r\nabc"
            )
            .into_bytes(),
            Outcome::Refused,
        ),
        (
            "Content-Length list",
            format!("POST http://{o}/ HTTP/1.1\r\nHost: {o}\r\nContent-Length: 3, 30\r\n\r\nabc")
                .into_bytes(),
            Outcome::Refused,
        ),
        (
            "obsolete line folding",
            format!("GET http://{o}/ HTTP/1.1\r\nHost: {o}\r\nX-Folded: a\r\n  b\r\n\r\n")
                .into_bytes(),
            Outcome::Refused,
        ),
        (
            "100 KiB header line",
            format!("GET http://{o}/ HTTP/1.1\r\nHost: {o}\r\nX-Big: {big}\r\n\r\n").into_bytes(),
            Outcome::Refused,
        ),
        (
            "100 KiB request line",
            format!("GET http://{o}/{big} HTTP/1.1\r\nHost: {o}\r\n\r\n").into_bytes(),
            Outcome::Refused,
        ),
        (
            "CONNECT with a Content-Length body",
            format!("CONNECT {o} HTTP/1.1\r\nHost: {o}\r\nContent-Length: 5\r\n\r\nhello")
                .into_bytes(),
            Outcome::Explained("CONNECT with a body"),
        ),
        (
            "CONNECT with a chunked body",
            format!(
                "CONNECT {o} HTTP/1.1\r\nHost: {o}\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n"
            )
            .into_bytes(),
            Outcome::Refused,
        ),
        (
            "CONNECT with a URL as its target",
            format!("CONNECT http://{o}/ HTTP/1.1\r\nHost: {o}\r\n\r\n").into_bytes(),
            Outcome::Explained("not a URL"),
        ),
        (
            "two Host headers",
            format!("GET http://{o}/ HTTP/1.1\r\nHost: {o}\r\nHost: other.example\r\n\r\n")
                .into_bytes(),
            Outcome::Explained("more than one Host"),
        ),
        (
            "an empty Host header",
            format!("GET http://{o}/ HTTP/1.1\r\nHost: \r\n\r\n").into_bytes(),
            Outcome::Explained("invalid Host"),
        ),
        (
            "a Host header with a path",
            format!("GET http://{o}/ HTTP/1.1\r\nHost: a.example/x\r\n\r\n").into_bytes(),
            Outcome::Explained("invalid Host"),
        ),
        (
            "CONNECT with a signed port",
            format!(
                "CONNECT {}:+{} HTTP/1.1\r\nHost: {o}\r\n\r\n",
                o.ip(),
                o.port()
            )
            .into_bytes(),
            Outcome::Refused,
        ),
        (
            "CONNECT with an empty port",
            format!("CONNECT {}: HTTP/1.1\r\nHost: {o}\r\n\r\n", o.ip()).into_bytes(),
            Outcome::Refused,
        ),
        (
            "absolute-form with a signed port",
            format!(
                "GET http://{}:+{}/ HTTP/1.1\r\nHost: {o}\r\n\r\n",
                o.ip(),
                o.port()
            )
            .into_bytes(),
            Outcome::Refused,
        ),
        (
            // A port the `http` crate cannot read must not become port 80.
            "absolute-form with a port above 65535",
            format!(
                "GET http://{}:{}/ HTTP/1.1\r\nHost: {o}\r\n\r\n",
                o.ip(),
                u32::from(o.port()) + 65536
            )
            .into_bytes(),
            Outcome::Explained("invalid port"),
        ),
        (
            "absolute-form with letters after the port",
            format!(
                "GET http://{}:{}x/ HTTP/1.1\r\nHost: {o}\r\n\r\n",
                o.ip(),
                o.port()
            )
            .into_bytes(),
            Outcome::Explained("invalid port"),
        ),
        (
            "CONNECT with a port above 65535",
            format!(
                "CONNECT {}:{} HTTP/1.1\r\nHost: {o}\r\n\r\n",
                o.ip(),
                u32::from(o.port()) + 65536
            )
            .into_bytes(),
            Outcome::Explained("invalid port"),
        ),
        (
            "CONNECT with userinfo",
            format!("CONNECT user@{o} HTTP/1.1\r\nHost: {o}\r\n\r\n").into_bytes(),
            Outcome::Refused,
        ),
        ("garbage bytes", garbage, Outcome::Refused),
        (
            "NUL in the request line",
            format!("GET http://{o}/\0x HTTP/1.1\r\nHost: {o}\r\n\r\n").into_bytes(),
            Outcome::Refused,
        ),
        (
            "absolute-form https:// URL",
            format!("GET https://{o}/ HTTP/1.1\r\nHost: {o}\r\n\r\n").into_bytes(),
            Outcome::Explained("CONNECT"),
        ),
        (
            "origin-form request",
            format!("GET / HTTP/1.1\r\nHost: {o}\r\n\r\n").into_bytes(),
            Outcome::Explained("forward proxy"),
        ),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            Outcome::Refused,
        ),
    ];
    let mut forwarded = 0;
    for (what, bytes, outcome) in &cases {
        let (r, closed) = exchange_then_close(sluice.http, bytes);
        let refused = r.status.is_none_or(|c| (400..500).contains(&c));
        let echo: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        match outcome {
            Outcome::Refused => assert!(refused, "{what}: {}", show(&r)),
            Outcome::Explained(needle) => {
                assert_eq!(r.status, Some(400), "{what}: {}", show(&r));
                assert!(r.text().contains(needle), "{what}: {}", show(&r));
                assert!(closed, "{what}: the connection stayed open after the 400");
            }
            Outcome::RefusedOrOneLength if !refused => {
                assert_eq!(r.status, Some(200), "{what}: {}", show(&r));
                assert_eq!(echo["headers"]["content-length"], "3", "{what}: {echo}");
                assert_eq!(echo["body_len"], 3, "{what}: {echo}");
                forwarded += 1;
            }
            Outcome::RefusedOrOneLength => {}
        }
        assert!(sluice.is_running(), "{what}: sluice died");
        assert_eq!(
            origin.hits.load(Ordering::SeqCst),
            forwarded,
            "{what}: the origin saw a request that was not answered as forwarded"
        );
    }
    // An h2c upgrade is not relayed: the request reaches the origin as a
    // plain request, without Upgrade and its Connection token.
    let h2c = format!(
        "GET http://{o}/ HTTP/1.1\r\nHost: {o}\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
    );
    let r = send_raw(sluice.http, h2c.as_bytes(), T);
    assert_eq!(r.status, Some(200), "h2c: {}", show(&r));
    let echo: Value = serde_json::from_slice(&r.body).unwrap();
    for h in ["upgrade", "http2-settings", "connection"] {
        assert!(
            echo["headers"].get(h).is_none(),
            "h2c: {h} forwarded: {echo}"
        );
    }
    forwarded += 1;
    // Still serving.
    let r = send_raw(sluice.http, &absolute_get(&o.to_string()), T);
    assert_eq!(r.status, Some(200), "{}", show(&r));
    let mut tunnel = connect_tunnel(sluice.http, &o.to_string(), T).unwrap();
    assert_eq!(get_on(&mut tunnel, &o.to_string(), "/").status, Some(200));
    assert_eq!(origin.hits.load(Ordering::SeqCst), forwarded + 2);
    let stderr = sluice.stderr.lock().unwrap().join("\n");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

// === slowloris ===

/// Opens up to `n` connections from 127.0.0.1 that each send the start of
/// a request head and then stall.
fn slow_connections(proxy: SocketAddr, n: usize) -> Vec<TcpStream> {
    // Room for them in this process (the proxy raises its own limit).
    let _ = rlimit::increase_nofile_limit(n as u64 + 512);
    let partial = format!("GET http://{proxy}/ HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut conns = Vec::with_capacity(n);
    while conns.len() < n && Instant::now() < deadline {
        let Ok(mut s) = TcpStream::connect_timeout(&proxy, Duration::from_secs(2)) else {
            continue;
        };
        // The proxy may already have closed it (per-source cap).
        let _ = s.write_all(partial.as_bytes());
        s.set_nonblocking(true).unwrap();
        conns.push(s);
    }
    assert_eq!(conns.len(), n, "could not open {n} connections in time");
    conns
}

/// How many of `conns` the proxy has closed (reading without blocking; any
/// answer it sent before closing is consumed).
fn closed_count(conns: &[TcpStream]) -> usize {
    let mut buf = [0u8; 1024];
    let mut closed = 0;
    for mut s in conns {
        closed += loop {
            match s.read(&mut buf) {
                Ok(0) => break 1,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break 0,
                Err(_) => break 1,
            }
        };
    }
    closed
}

/// `curl` through `proxy` from a given local address; (exit code, body).
fn curl_from(local: &str, proxy: SocketAddr, url: &str, tunnel: bool) -> (i32, String) {
    let proxy = format!("http://{proxy}");
    let mut args = vec!["--max-time", "5", "--interface", local, "-x", &proxy, url];
    if tunnel {
        args.push("-p");
    }
    let c = curl(&args);
    (c.exit, c.body_text())
}

#[test]
fn slowloris_from_one_source_does_not_starve_another() {
    let origin = Origin::start("127.0.0.1");
    let url = format!("{}/bytes/7", origin.url());
    let sluice = allowing(
        &origin,
        "limits:\n  max_connections_per_source: 256\n  header_timeout: 60s\n",
    );
    let slow = slow_connections(sluice.http, 1000);
    // Everything beyond the cap is closed at once; the rest are held.
    let settled = poll_until(T, || closed_count(&slow) >= 1000 - 256);
    let closed = closed_count(&slow);
    assert!(
        settled,
        "only {closed} of 744 over-cap connections were closed"
    );
    assert_eq!(closed, 1000 - 256, "the per-source cap holds exactly 256");

    // Another source is served promptly, plain and through a tunnel.
    for tunnel in [false, true] {
        let t0 = Instant::now();
        let (code, body) = curl_from("127.0.0.2", sluice.http, &url, tunnel);
        assert_eq!((code, body.as_str()), (0, "xxxxxxx"), "tunnel: {tunnel}");
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    }
    // The flooding source itself is at its cap.
    let (code, _) = curl_from("127.0.0.1", sluice.http, &url, false);
    assert_ne!(code, 0, "a 257th connection from 127.0.0.1 was served");
    assert_eq!(closed_count(&slow), 1000 - 256, "held connections dropped");
    drop(slow);
    // Slots come back when the slow clients leave.
    assert!(poll_until(T, || curl_from(
        "127.0.0.1",
        sluice.http,
        &url,
        false
    )
    .0 == 0));
}

/// Opens `n` stalled connections spread over `sources` loopback addresses
/// (127.0.0.1 upwards), each having sent the start of a request head.
fn slow_connections_from(proxy: SocketAddr, n: usize, sources: u8) -> Vec<TcpStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket,
        sockopt::IpBindAddressNoPort,
    };
    let _ = rlimit::increase_nofile_limit(n as u64 + 1024);
    let partial = format!("GET http://{proxy}/ HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    let SocketAddr::V4(to) = proxy else {
        panic!("an IPv4 proxy address")
    };
    let to = SockaddrIn::from(to);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut conns = Vec::with_capacity(n);
    while conns.len() < n && Instant::now() < deadline {
        let last = 1 + (conns.len() % sources as usize) as u8;
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap_or_else(|e| panic!("socket() after {} connections: {e}", conns.len()));
        // Pick the port at connect time: a bind to port 0 searches the
        // whole range and gets slow with thousands of sockets.
        setsockopt(&fd, IpBindAddressNoPort, &true).unwrap();
        bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, last, 0)).unwrap();
        if connect(fd.as_raw_fd(), &to).is_err() {
            continue;
        }
        let mut s = TcpStream::from(fd);
        s.write_all(partial.as_bytes()).unwrap();
        s.set_nonblocking(true).unwrap();
        conns.push(s);
    }
    assert_eq!(conns.len(), n, "could not open {n} connections in time");
    conns
}

/// The 10,000 slow connections, from 40 sources (250 each, under
/// the per-source cap): the proxy holds every one of them, does not fall
/// over, and still serves another client at once.
#[test]
fn ten_thousand_slow_connections_do_not_starve_another_client() {
    const N: usize = 10_000;
    let origin = Origin::start("127.0.0.1");
    let url = format!("{}/bytes/7", origin.url());
    let sluice = allowing(
        &origin,
        "limits:\n  max_connections: 20000\n  max_connections_per_source: 300\n  header_timeout: 60s\n",
    );
    let t0 = Instant::now();
    let slow = slow_connections_from(sluice.http, N, 40);
    let opened = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(closed_count(&slow), 0, "stalled connections were dropped");
    for tunnel in [false, true] {
        let t = Instant::now();
        let (code, body) = curl_from("127.0.1.1", sluice.http, &url, tunnel);
        assert_eq!((code, body.as_str()), (0, "xxxxxxx"), "tunnel: {tunnel}");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }
    assert_eq!(closed_count(&slow), 0, "stalled connections were dropped");
    drop(slow);
    let mut sluice = sluice;
    assert!(sluice.is_running(), "sluice died");
    let stderr = sluice.stderr.lock().unwrap().join("\n");
    assert!(!stderr.contains("panicked"), "{stderr}");
    eprintln!("opened {N} stalled connections in {opened:?}");
}

/// Requests hyper refuses before Sluice sees them still leave a flow record
/// (rule `default/bad-request`, hyper's status), so probing with malformed
/// requests is visible in the flow log.
#[test]
fn requests_refused_by_the_parser_are_recorded() {
    let origin = Origin::start("127.0.0.1");
    let o = origin.addr.to_string();
    let sluice = allowing(&origin, "");
    let big = "b".repeat(100 * 1024);
    for (what, raw, status) in [
        ("garbage", b"\x16\x03\x01garbage\r\n\r\n".to_vec(), 400),
        (
            "huge header",
            format!("GET http://{o}/ HTTP/1.1\r\nHost: {o}\r\nX-Big: {big}\r\n\r\n").into_bytes(),
            431,
        ),
    ] {
        let r = send_raw(sluice.http, &raw, T);
        assert!(r.status.is_none_or(|s| s == status), "{what}: {}", show(&r));
        let rec = sluice.wait_record(what, |r| {
            r["rule"] == "default/bad-request" && r["status"] == status
        });
        assert_eq!(rec["verdict"], "deny", "{what}");
        assert!(
            rec["reason"]
                .as_str()
                .unwrap()
                .starts_with("malformed request: "),
            "{what}: {rec}"
        );
    }
    assert_eq!(origin.hits.load(Ordering::SeqCst), 0);
}

/// A keep-alive client connection waits `idle_timeout` for its next
/// request, not `header_timeout`; once that request starts, its head is
/// bound by `header_timeout` again.
#[test]
fn keep_alive_waits_idle_timeout_and_heads_still_time_out() {
    let origin = Origin::start("127.0.0.1");
    let o = origin.addr.to_string();
    let sluice = allowing(
        &origin,
        "limits:\n  header_timeout: 1s\n  idle_timeout: 4s\n",
    );
    let mut s = connect_with_timeout(sluice.http, T);
    s.write_all(&absolute_get(&o)).unwrap();
    assert_eq!(
        sluice_testkit::read_response(&mut s, false).status,
        Some(200)
    );
    // Idle for twice the header timeout: still open and usable.
    std::thread::sleep(Duration::from_millis(2000));
    s.write_all(&absolute_get(&o)).unwrap();
    assert_eq!(
        sluice_testkit::read_response(&mut s, false).status,
        Some(200),
        "an idle keep-alive connection was closed before idle_timeout"
    );
    // The start of a third head, then nothing: closed by the header
    // timeout, well before the idle timeout.
    let t0 = Instant::now();
    s.write_all(b"GET http://").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 512];
    let n = loop {
        match s.read(&mut buf) {
            Ok(0) => break 0,
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("no close within 10 s: {e}"),
        }
    };
    let took = t0.elapsed();
    // hyper may answer 408 before closing; either way the connection ends.
    assert!(n == 0 || buf.starts_with(b"HTTP/1.1 4"), "{:?}", &buf[..n]);
    assert!(
        took < Duration::from_millis(3500),
        "head timeout took {took:?}"
    );
    // And an idle keep-alive connection is closed after idle_timeout.
    let mut s = connect_with_timeout(sluice.http, T);
    s.write_all(&absolute_get(&o)).unwrap();
    assert_eq!(
        sluice_testkit::read_response(&mut s, false).status,
        Some(200)
    );
    let t0 = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let n = s.read(&mut buf).unwrap_or(0);
    let took = t0.elapsed();
    assert_eq!(n, 0, "unexpected bytes on an idle connection");
    assert!(
        took >= Duration::from_millis(3500) && took < Duration::from_secs(10),
        "idle keep-alive closed after {took:?}, idle_timeout is 4s"
    );
}

#[test]
fn header_timeout_closes_stalled_connections() {
    let origin = Origin::start("127.0.0.1");
    let url = format!("{}/bytes/7", origin.url());
    let sluice = allowing(
        &origin,
        "limits:\n  max_connections_per_source: 256\n  header_timeout: 1s\n",
    );
    let t0 = Instant::now();
    let slow = slow_connections(sluice.http, 256);
    let opened = t0.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    if t0.elapsed() < Duration::from_millis(900) {
        assert_eq!(closed_count(&slow), 0, "closed before the header timeout");
    }
    let all_closed = poll_until(Duration::from_secs(8), || closed_count(&slow) == 256);
    let took = t0.elapsed();
    assert!(
        all_closed,
        "{} of 256 stalled connections still open after {took:?}",
        256 - closed_count(&slow)
    );
    assert!(
        took < opened + Duration::from_secs(5),
        "header_timeout 1s took {took:?}"
    );
    // Their slots are free again.
    let (code, body) = curl_from("127.0.0.1", sluice.http, &url, false);
    assert_eq!((code, body.as_str()), (0, "xxxxxxx"));
}
