//! Answers and records agree (issue 18): what a client is told and what its
//! flow record says must never contradict each other, through the real
//! binary on loopback, for HTTP absolute-form, CONNECT and SOCKS5.
//!
//! - A name no `host` rule allows, pending on `cidr` rules, that gets no
//!   address is a denial: `verdict: deny`, rule `default/unresolved`, HTTP
//!   403 naming the rule, SOCKS5 `0x02`.
//! - A name a rule allowed that then fails to resolve keeps `verdict:
//!   allow`, `error_kind: resolve` and a one-line `error` (never hickory's
//!   debug notation): HTTP 502, SOCKS5 `0x04`.
//!
//! The policy is `examples/quickstart.yaml` itself, its listeners moved to
//! port 0 and its resolver pointed at the testkit's DNS server.

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::SocketAddr,
    time::Duration,
};

use serde_json::Value;
use sluice_testkit::{FixtureDns, Sluice, connect_with_timeout, curl};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// The quickstart example, listeners on port 0 (SOCKS5 added), names
/// resolved by `dns`, and `extra_allow` appended to its zone's allow list.
fn quickstart(dns: &FixtureDns, extra_allow: &str) -> Sluice {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/quickstart.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("http: 127.0.0.1:3128"), "quickstart changed");
    let text = text
        .replace(
            "http: 127.0.0.1:3128",
            "http: 127.0.0.1:0\n  socks5: 127.0.0.1:0",
        )
        .replace("admin: 127.0.0.1:9901", "admin: 127.0.0.1:0");
    let yaml = format!("dns:\n  upstreams: [\"{}\"]\n{text}{extra_allow}", dns.addr);
    Sluice::start(BIN, &yaml)
}

/// A SOCKS5 no-auth CONNECT to `host:port`: the reply code.
fn socks5_reply(socks: SocketAddr, host: &str, port: u16) -> u8 {
    let mut s = connect_with_timeout(socks, Duration::from_secs(10));
    s.write_all(&[5, 1, 0]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 0], "method");
    let mut req = vec![5, 1, 0, 3, host.len() as u8];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).unwrap();
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    head[1]
}

/// The record of the one flow of `listener` to `host:port`.
fn record(s: &Sluice, listener: &str, host: &str, port: u16) -> Value {
    s.wait_record(&format!("{listener} {host}:{port}"), |r| {
        r["listener"] == listener && r["dst_host"] == host && r["dst_port"] == port
    })
}

/// `error` is one human line: no debug notation, no line breaks.
fn assert_one_line(rec: &Value) {
    let e = rec["error"].as_str().unwrap_or("");
    for bad in ["Query {", "Name(", "\n", "{ ", "Some("] {
        assert!(
            !e.contains(bad),
            "error is not one human line: {e:?} in {rec:#}"
        );
    }
}

#[test]
fn a_name_pending_on_cidr_rules_that_does_not_resolve_is_a_denial() {
    let dns = FixtureDns::start();
    // NODATA: the name exists, without addresses.
    dns.set("nodata.test", 60, &[("TXT", "nothing here")]);
    let s = quickstart(&dns, "");
    let socks = s.socks5.unwrap();
    let proxy = s.proxy_url();
    for (name, port) in [("example.com", 80), ("nodata.test", 80)] {
        // Absolute-form.
        let url = format!("http://{name}/");
        let c = curl(&["-x", &proxy, &url]);
        assert_eq!(c.status, 403, "{name}: {c:?}");
        assert_eq!(
            c.header("sluice-rule").as_deref(),
            Some("default/unresolved")
        );
        let rec = record(&s, "http", name, port);
        for (k, v) in [
            ("verdict", "deny"),
            ("rule", "default/unresolved"),
            ("protocol", "http"),
        ] {
            assert_eq!(rec[k], v, "{k} in {rec:#}");
        }
        assert_eq!(rec["enforced"], true, "{rec:#}");
        assert_eq!(rec["status"], 403, "{rec:#}");
        assert!(rec["error_kind"].is_null(), "{rec:#}");
        assert!(
            rec["reason"].as_str().unwrap().contains("did not resolve"),
            "{rec:#}"
        );
        assert_one_line(&rec);
        assert!(
            !rec["reason"].as_str().unwrap().contains("Query {"),
            "{rec:#}"
        );

        // CONNECT.
        let target = format!("https://{name}:8443/");
        let c = curl(&["-x", &proxy, "-k", &target]);
        assert_eq!(c.connect, 403, "{name}: {c:?}");
        let rec = record(&s, "http", name, 8443);
        assert_eq!(rec["rule"], "default/unresolved", "{rec:#}");
        assert_eq!(rec["verdict"], "deny", "{rec:#}");
        assert!(rec["error_kind"].is_null(), "{rec:#}");

        // SOCKS5: 0x02, connection not allowed by ruleset.
        assert_eq!(socks5_reply(socks, name, 9443), 2, "{name}");
        let rec = record(&s, "socks5", name, 9443);
        assert_eq!(rec["rule"], "default/unresolved", "{rec:#}");
        assert_eq!(rec["verdict"], "deny", "{rec:#}");
    }
    let nx = record(&s, "http", "example.com", 80);
    assert!(
        nx["reason"].as_str().unwrap().contains("NXDOMAIN"),
        "{nx:#}"
    );
}

#[test]
fn a_failure_after_an_allow_keeps_the_allow_and_says_why_in_one_line() {
    let dns = FixtureDns::start();
    dns.set("nodata.test", 60, &[("TXT", "nothing here")]);
    let s = quickstart(
        &dns,
        "      - host: \"*.test\"\n        ports: any\n        id: test-names\n",
    );
    let socks = s.socks5.unwrap();
    let proxy = s.proxy_url();
    for (name, why) in [
        ("missing.test", "no such name (NXDOMAIN)"),
        ("nodata.test", "the name has no A or AAAA records"),
    ] {
        let url = format!("http://{name}/");
        let c = curl(&["-x", &proxy, &url]);
        assert_eq!(c.status, 502, "{name}: {c:?}");
        let target = format!("https://{name}:8443/");
        let c = curl(&["-x", &proxy, "-k", &target]);
        assert_eq!(c.connect, 502, "{name}: {c:?}");
        assert_eq!(socks5_reply(socks, name, 9443), 4, "{name}");
        for (listener, port) in [("http", 80), ("http", 8443), ("socks5", 9443)] {
            let rec = record(&s, listener, name, port);
            assert_eq!(rec["verdict"], "allow", "{rec:#}");
            assert_eq!(rec["rule"], "test-names", "{rec:#}");
            assert_eq!(rec["error_kind"], "resolve", "{rec:#}");
            assert_eq!(rec["error"], format!("resolve {name}: {why}"), "{rec:#}");
            assert_one_line(&rec);
        }
    }
}

/// In report mode the same flow is a would-be denial: the record says
/// `verdict: deny`, `enforced: false`, rule `default/unresolved`, and the
/// client gets 502 with `error_kind: resolve`, since nothing could be
/// dialed (report mode blocks nothing by the zone's rules).
#[test]
fn in_report_mode_an_unresolved_name_is_a_would_be_denial() {
    let dns = FixtureDns::start();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/quickstart.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("    mode: enforce"), "quickstart changed");
    let text = text
        .replace("http: 127.0.0.1:3128", "http: 127.0.0.1:0")
        .replace("admin: 127.0.0.1:9901", "admin: 127.0.0.1:0")
        .replace("    mode: enforce", "    mode: report");
    let s = Sluice::start(
        BIN,
        &format!("dns:\n  upstreams: [\"{}\"]\n{text}", dns.addr),
    );
    let c = curl(&["-x", &s.proxy_url(), "http://example.com/"]);
    assert_eq!(c.status, 502, "{c:?}");
    let rec = record(&s, "http", "example.com", 80);
    assert_eq!(rec["verdict"], "deny", "{rec:#}");
    assert_eq!(rec["enforced"], false, "{rec:#}");
    assert_eq!(rec["rule"], "default/unresolved", "{rec:#}");
    assert_eq!(rec["error_kind"], "resolve", "{rec:#}");
    assert_one_line(&rec);
}
