//! End-to-end tests of `sluice run`'s HTTP proxy with real clients on
//! loopback: curl (`-x` absolute-form and `-p -x` CONNECT), Python
//! `requests`, `git clone` over dumb HTTP, `openssl s_client -proxy` for
//! domain fronting, and raw sockets for upgrades. Each test starts the real
//! binary on port 0 and checks both what the client saw and the flow record.
//!
//! Names resolve through the testkit's DNS server in its stub configuration
//! (`FixtureDns::stub`): `*.test` names map to loopback addresses, so the
//! guard applies to them exactly as it would to a public name that resolves
//! to a special address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_testkit::{
    CLIENT_TIMEOUT, Curl, FixtureDns, Origin, Sluice, TempDir, TlsOrigin, argon2_hash,
    assert_fields, client_command as client, curl, header_in, output_within, python_requests,
    spawn_with_port,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const SOURCES: &str = r#"[127.0.0.0/8, "::1"]"#;

// === helpers ===

/// The record whose `id` is `id` (the `Sluice-Request-Id` a client saw).
fn record_by_id(s: &Sluice, id: &str) -> Value {
    s.wait_record(id, |r| r["id"] == id)
}

fn tls_origin() -> TlsOrigin {
    TlsOrigin::start("DNS:origin.test,DNS:other.test,IP:127.0.0.1,IP:::1")
}

/// The embedded default policy (docs/design.md) with its listeners moved to port 0.
fn default_like() -> String {
    let text = include_str!("../src/default.yaml");
    let moved = text
        .replace("http: 127.0.0.1:3128", "http: 127.0.0.1:0")
        .replace("admin: 127.0.0.1:9901", "admin: 127.0.0.1:0");
    assert_ne!(
        moved, text,
        "default.yaml no longer names the default ports"
    );
    moved
}

// === curl: guard, absolute-form, CONNECT, byte counts ===

#[test]
fn curl_default_policy_denies_loopback_with_guard_headers() {
    let origin = Origin::start("127.0.0.1");
    let s = Sluice::start(BIN, &default_like());
    let url = format!("{}/bytes/10", origin.url());
    let proxy = s.proxy_url();
    for (protocol, method, extra) in [("http", "GET", None), ("connect", "CONNECT", Some("-p"))] {
        let mut args: Vec<&str> = extra.into_iter().collect();
        args.extend(["-x", &proxy, &url]);
        let c = curl(&args);
        if protocol == "connect" {
            assert_eq!(c.connect, 403, "{c:?}");
            assert_ne!(c.exit, 0, "curl must fail when the tunnel is refused");
        } else {
            assert_eq!(c.status, 403, "{c:?}");
            let body = c.body_text();
            assert!(body.contains("rule: guard/special-address"), "{body}");
            assert!(body.contains(&format!("request id: {}", c.id())), "{body}");
        }
        assert_eq!(
            c.header("sluice-rule").as_deref(),
            Some("guard/special-address")
        );
        let reason = c.header("sluice-reason").unwrap();
        assert!(
            reason.contains("127.0.0.1") && reason.contains("special"),
            "{reason}"
        );
        let rec = record_by_id(&s, &c.id());
        assert_fields(
            &rec,
            &[
                ("listener", "http".into()),
                ("protocol", protocol.into()),
                ("method", method.into()),
                ("zone", "local".into()),
                ("mode", "report".into()),
                ("verdict", "deny".into()),
                ("enforced", true.into()),
                ("rule", "guard/special-address".into()),
                ("reason", reason.clone().into()),
                ("dst_ip", "127.0.0.1".into()),
                ("dst_port", origin.addr.port().into()),
                ("status", 403.into()),
                ("bytes_in", 0.into()),
                ("bytes_out", 0.into()),
            ],
        );
    }
    assert_eq!(
        origin.conns.load(Ordering::SeqCst),
        0,
        "guard let a dial out"
    );
}

fn allow_loopback(ports: &str) -> String {
    format!(
        "zones:\n  - name: local\n    sources: {SOURCES}\n    mode: enforce\n    allow:\n      \
         - cidr: 127.0.0.1/32\n        ports: {ports}\n        id: loopback-origin\n"
    )
}

#[test]
fn curl_absolute_form_and_connect_pass_a_lifted_origin_and_count_bytes() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let s = Sluice::start(BIN, &allow_loopback(&format!("[{port}]")));
    let proxy = s.proxy_url();

    // Absolute form: the record counts the response body, nothing else.
    let c = curl(&["-x", &proxy, &format!("{}/bytes/1000", origin.url())]);
    assert_eq!((c.exit, c.status), (0, 200), "{c:?}");
    assert_eq!(c.body, vec![b'x'; 1000]);
    assert_eq!(c.header("via").as_deref(), Some("1.1 sluice"));
    let rec = record_by_id(&s, &c.id());
    assert_fields(
        &rec,
        &[
            ("listener", "http".into()),
            ("protocol", "http".into()),
            ("method", "GET".into()),
            ("zone", "local".into()),
            ("mode", "enforce".into()),
            ("verdict", "allow".into()),
            ("enforced", true.into()),
            ("rule", "loopback-origin".into()),
            ("dst_host", Value::Null),
            ("dst_ip", "127.0.0.1".into()),
            ("dst_port", port.into()),
            ("status", 200.into()),
            ("bytes_in", 1000.into()),
            ("bytes_out", 0.into()),
            ("route", "direct".into()),
            ("error", Value::Null),
            ("error_kind", Value::Null),
        ],
    );

    // CONNECT: the tunnel's bytes, both directions, whatever they carry.
    let c = curl(&[
        "-p",
        "-x",
        &proxy,
        &format!("{}/bytes/100000", origin.url()),
    ]);
    assert_eq!((c.exit, c.connect, c.status), (0, 200, 200), "{c:?}");
    assert_eq!(c.body.len(), 100_000);
    let rec = record_by_id(&s, &c.id());
    assert_fields(
        &rec,
        &[
            ("protocol", "connect".into()),
            ("method", "CONNECT".into()),
            ("verdict", "allow".into()),
            ("rule", "loopback-origin".into()),
            ("dst_ip", "127.0.0.1".into()),
            ("dst_port", port.into()),
            ("status", 200.into()),
            ("sni", Value::Null),
            ("route", "direct".into()),
        ],
    );
    let bytes_in = rec["bytes_in"].as_u64().unwrap();
    let bytes_out = rec["bytes_out"].as_u64().unwrap();
    assert!(bytes_in >= 100_000, "{rec:#}");
    // Headers plus the body, not an unbounded count.
    assert!(bytes_in < 101_000, "{rec:#}");
    assert!(bytes_out > 20 && bytes_out < 1000, "the GET line: {rec:#}");

    // The lifting rule covers only its port: another loopback port is guarded.
    let other = Origin::start("127.0.0.1");
    let c = curl(&["-x", &proxy, &format!("{}/", other.url())]);
    assert_eq!(c.status, 403, "{c:?}");
    assert_eq!(
        c.header("sluice-rule").as_deref(),
        Some("guard/special-address")
    );
    assert_eq!(other.conns.load(Ordering::SeqCst), 0);
}

#[test]
fn curl_keep_alive_requests_get_one_record_each_with_their_own_bytes() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let s = Sluice::start(BIN, &allow_loopback(&format!("[{port}]")));
    let out = output_within(
        client("curl")
            .args(["-sS", "--max-time", "10", "-x", &s.proxy_url()])
            .args(["-o", "/dev/null", "-o", "/dev/null"])
            .args(["-w", "%{http_code} %{num_connects} %{size_download}\n"])
            .arg(format!("{}/bytes/3000", origin.url()))
            .arg(format!("{}/bytes/5000", origin.url())),
        CLIENT_TIMEOUT,
    );
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    // The second transfer reused the first connection to the proxy.
    assert_eq!(lines, ["200 1 3000", "200 0 5000"], "{out:?}");

    let recs = s.wait_records(2);
    let recs: Vec<&Value> = recs
        .iter()
        .filter(|r| r["dst_port"] == port && r["protocol"] == "http")
        .collect();
    assert_eq!(recs.len(), 2, "{recs:#?}");
    assert_eq!(recs[0]["src"], recs[1]["src"], "one client connection");
    assert_ne!(recs[0]["id"], recs[1]["id"]);
    let mut got: Vec<(u64, u64)> = recs
        .iter()
        .map(|r| {
            (
                r["bytes_in"].as_u64().unwrap(),
                r["bytes_out"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, [(3000, 0), (5000, 0)], "bytes counted once each");
    // And Sluice kept its origin connection alive for the second request.
    assert_eq!(
        origin.conns.load(Ordering::SeqCst),
        1,
        "pooled to the origin"
    );

    // The URI decides; a Host header naming something else is rewritten.
    let mut raw = TcpStream::connect(s.http).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        raw,
        "GET {}/echo HTTP/1.1\r\nHost: elsewhere.invalid\r\nConnection: close\r\n\r\n",
        origin.url()
    )
    .unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let echo: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(echo["headers"]["host"], origin.addr.to_string(), "{echo}");

    // A request body counts as bytes_out, exactly.
    let dir = TempDir::new("post");
    let body = dir.path("body.bin");
    std::fs::write(&body, vec![b'b'; 12_345]).unwrap();
    let c = curl(&[
        "-x",
        &s.proxy_url(),
        "--data-binary",
        &format!("@{}", body.display()),
        &format!("{}/echo", origin.url()),
    ]);
    assert_eq!(c.status, 200, "{c:?}");
    let echo: Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(echo["body_len"], 12_345);
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["uri"], "/echo", "origin-form towards the origin");
    assert_eq!(echo["headers"]["host"], origin.addr.to_string());
    assert_eq!(echo["headers"]["via"], "1.1 sluice");
    let rec = record_by_id(&s, &c.id());
    assert_eq!(rec["method"], "POST");
    assert_eq!(rec["bytes_out"], 12_345);
    assert_eq!(rec["bytes_in"].as_u64().unwrap(), c.body.len() as u64);

    // Chunked upload with Expect: 100-continue: the body bytes, not the framing.
    let c = curl(&[
        "-x",
        &s.proxy_url(),
        "-H",
        "Transfer-Encoding: chunked",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &format!("@{}", body.display()),
        &format!("{}/echo", origin.url()),
    ]);
    assert_eq!(c.status, 200, "{c:?}");
    let echo: Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(echo["body_len"], 12_345, "{echo}");
    let rec = record_by_id(&s, &c.id());
    assert_eq!(rec["bytes_out"], 12_345, "{rec:#}");
}

// === Python requests through HTTP_PROXY / HTTPS_PROXY; TLS origins ===

/// A zone allowing `origin.test` on the TLS origin's port, with the cidr
/// rule that lifts the guard for loopback on `lift_ports` (none: no cidr).
fn named_policy(dns: &FixtureDns, tls_port: u16, lift_ports: Option<&str>, extra: &str) -> String {
    let mut y = format!(
        "dns:\n  upstreams: [\"{}\"]\nzones:\n  - name: local\n    sources: {SOURCES}\n    \
         mode: enforce\n    allow:\n      - host: origin.test\n        ports: [{tls_port}]\n        \
         id: origin-name\n",
        dns.addr
    );
    if let Some(p) = lift_ports {
        y.push_str(&format!(
            "      - cidr: 127.0.0.1/32\n        ports: {p}\n        id: loopback-origin\n"
        ));
    }
    y.push_str(extra);
    y
}

#[test]
fn python_requests_http_and_https_through_env_proxies() {
    let tls = tls_origin();
    let plain = Origin::start("127.0.0.1");
    let dns = FixtureDns::stub(&[("origin.test", &["127.0.0.1"])]);
    let lift = format!("[{}, {}]", tls.port, plain.addr.port());
    let s = Sluice::start(BIN, &named_policy(&dns, tls.port, Some(&lift), ""));
    let urls = [
        format!("{}/bytes/2048", plain.url()),
        format!("https://origin.test:{}/hello", tls.port),
    ];
    let got = python_requests(&s.proxy_url(), Some(&tls.certs.ca), &urls);
    assert_eq!(got[0]["status"], 200, "{got:#?}");
    assert_eq!(got[0]["len"], 2048);
    assert_eq!(got[0]["headers"]["via"], "1.1 sluice");
    let id = got[0]["headers"]["sluice-request-id"].as_str().unwrap();
    let rec = record_by_id(&s, id);
    assert_fields(
        &rec,
        &[
            ("protocol", "http".into()),
            ("verdict", "allow".into()),
            ("rule", "loopback-origin".into()),
            ("bytes_in", 2048.into()),
            ("status", 200.into()),
        ],
    );

    assert_eq!(got[1]["status"], 200, "{got:#?}");
    assert_eq!(got[1]["body"], "hello tls /hello");
    let rec = s.wait_record("the https tunnel", |r| {
        r["dst_host"] == "origin.test" && r["protocol"] == "connect"
    });
    assert_fields(
        &rec,
        &[
            ("verdict", "allow".into()),
            ("enforced", true.into()),
            // The name's own rule decided; the cidr rule only lifted the guard.
            ("rule", "origin-name".into()),
            ("dst_ip", "127.0.0.1".into()),
            ("dst_port", tls.port.into()),
            ("sni", "origin.test".into()),
            ("status", 200.into()),
            ("error", Value::Null),
        ],
    );
    assert!(rec["bytes_in"].as_u64().unwrap() > 200, "{rec:#}");
    assert!(rec["bytes_out"].as_u64().unwrap() > 200, "{rec:#}");
    assert!(dns.queries_for("origin.test") > 0);
}

#[test]
fn a_host_rule_alone_never_lifts_the_guard_for_a_loopback_name() {
    let tls = tls_origin();
    let dns = FixtureDns::stub(&[("origin.test", &["127.0.0.1"])]);
    let s = Sluice::start(BIN, &named_policy(&dns, tls.port, None, ""));
    let c = curl(&[
        "--cacert",
        &tls.certs.ca.display().to_string(),
        "-x",
        &s.proxy_url(),
        &format!("https://origin.test:{}/", tls.port),
    ]);
    assert_eq!(c.connect, 403, "{c:?}");
    assert_eq!(
        c.header("sluice-rule").as_deref(),
        Some("guard/special-address")
    );
    let rec = record_by_id(&s, &c.id());
    assert_fields(
        &rec,
        &[
            ("protocol", "connect".into()),
            ("dst_host", "origin.test".into()),
            ("dst_port", tls.port.into()),
            ("verdict", "deny".into()),
            ("enforced", true.into()),
            ("rule", "guard/special-address".into()),
            ("status", 403.into()),
        ],
    );
    assert!(dns.queries_for("origin.test") > 0, "the name was resolved");

    // Python requests sees the same refusal.
    let got = python_requests(
        &s.proxy_url(),
        Some(&tls.certs.ca),
        &[format!("https://origin.test:{}/", tls.port)],
    );
    let err = got[0]["error"].as_str().unwrap_or_default();
    assert!(err.contains("403"), "{got:#?}");
}

// === git clone over dumb HTTP through the proxy ===

fn git(dir: &Path, home: &Path, args: &[&str]) -> std::process::Output {
    let out = output_within(
        client("git")
            .current_dir(dir)
            .env("HOME", home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .args([
                "-c",
                "user.name=Sluice Test",
                "-c",
                "user.email=test@sluice.invalid",
            ])
            .args(["-c", "init.defaultBranch=main", "-c", "protocol.version=2"])
            .args(args),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn git_clone_over_http_through_the_proxy() {
    let dir = TempDir::new("git");
    let (srv, work, home) = (dir.path("srv"), dir.path("work"), dir.path("home"));
    for d in [&srv, &work, &home] {
        std::fs::create_dir_all(d).unwrap();
    }
    git(&srv, &home, &["init", "-q", "--bare", "repo.git"]);
    git(&work, &home, &["init", "-q", "."]);
    std::fs::write(work.join("README"), "cloned through sluice\n").unwrap();
    std::fs::write(work.join("data.txt"), "line\n".repeat(2000)).unwrap();
    git(&work, &home, &["add", "README", "data.txt"]);
    git(&work, &home, &["commit", "-q", "-m", "first"]);
    git(&work, &home, &["push", "-q", "../srv/repo.git", "main"]);
    let bare = srv.join("repo.git");
    git(&bare, &home, &["symbolic-ref", "HEAD", "refs/heads/main"]);
    git(&bare, &home, &["update-server-info"]);

    let (_server, port) = spawn_with_port(
        Command::new("python3")
            .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
            .arg("--directory")
            .arg(&srv),
        |l| {
            l.split(" port ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        },
    );
    let s = Sluice::start(BIN, &allow_loopback(&format!("[{port}]")));
    let proxy = format!("http.proxy={}", s.proxy_url());
    let url = format!("http://127.0.0.1:{port}/repo.git");
    git(&dir.0, &home, &["-c", &proxy, "clone", "-q", &url, "clone"]);
    assert_eq!(
        std::fs::read_to_string(dir.path("clone/README")).unwrap(),
        "cloned through sluice\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path("clone/data.txt"))
            .unwrap()
            .len(),
        10_000
    );

    // Dumb HTTP: info/refs, HEAD, then one request per object (3 at least).
    let recs = s.wait_records(5);
    assert!(recs.len() >= 5, "{recs:#?}");
    for r in &recs {
        assert_fields(
            r,
            &[
                ("protocol", "http".into()),
                ("method", "GET".into()),
                ("verdict", "allow".into()),
                ("rule", "loopback-origin".into()),
                ("dst_port", port.into()),
            ],
        );
    }
    assert!(
        recs.iter()
            .any(|r| r["status"] == 200 && r["bytes_in"].as_u64().unwrap() > 0),
        "{recs:#?}"
    );
}

// === domain fronting: the ClientHello's SNI against the CONNECT target ===

/// `openssl s_client` through the proxy; returns (success, output).
fn s_client(proxy: SocketAddr, connect: &str, sni: &str, ca: &Path) -> (bool, String) {
    let out = output_within(
        client("openssl")
            .args([
                "s_client",
                "-proxy",
                &proxy.to_string(),
                "-connect",
                connect,
            ])
            .args(["-servername", sni, "-verify_return_error", "-CAfile"])
            .arg(ca),
        CLIENT_TIMEOUT,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn domain_fronting_is_refused_and_matching_sni_passes() {
    let tls = tls_origin();
    let dns = FixtureDns::stub(&[
        ("origin.test", &["127.0.0.1"]),
        ("other.test", &["127.0.0.1"]),
        ("evil.test", &["127.0.0.1"]),
    ]);
    let deny = "    deny:\n      - host: evil.test\n        id: evil\n";
    let lift = format!("[{}]", tls.port);
    let s = Sluice::start(BIN, &named_policy(&dns, tls.port, Some(&lift), deny));
    let ca = &tls.certs.ca;
    let named = format!("origin.test:{}", tls.port);
    let literal = format!("127.0.0.1:{}", tls.port);
    let tunnel = |dst_host: Option<&str>, sni: &str| {
        let host = dst_host.map(str::to_owned);
        let sni = sni.to_owned();
        s.wait_record(&format!("tunnel with SNI {sni}"), move |r| {
            r["protocol"] == "connect"
                && r["sni"] == sni.as_str()
                && r["dst_host"] == host.as_ref().map_or(Value::Null, |h| h.as_str().into())
        })
    };

    // Matching SNI: the handshake completes and the certificate verifies.
    let (ok, text) = s_client(s.http, &named, "origin.test", ca);
    assert!(ok && text.contains("Verify return code: 0"), "{text}");
    let rec = tunnel(Some("origin.test"), "origin.test");
    assert_fields(
        &rec,
        &[("verdict", "allow".into()), ("rule", "origin-name".into())],
    );
    assert!(rec["bytes_out"].as_u64().unwrap() > 0);
    // Names are compared normalised: case and one trailing dot do not matter.
    let (ok, text) = s_client(s.http, &named, "Origin.TEST.", ca);
    assert!(ok, "{text}");

    // CONNECT origin.test, ClientHello for other.test: closed, nothing forwarded.
    let (ok, text) = s_client(s.http, &named, "other.test", ca);
    assert!(!ok, "fronted handshake must fail: {text}");
    let rec = tunnel(Some("origin.test"), "other.test");
    assert_fields(
        &rec,
        &[
            ("verdict", "deny".into()),
            ("enforced", true.into()),
            ("rule", "guard/sni-mismatch".into()),
            ("dst_port", tls.port.into()),
            ("bytes_out", 0.into()),
        ],
    );
    let reason = rec["reason"].as_str().unwrap();
    assert!(
        reason.contains("other.test") && reason.contains("origin.test"),
        "{reason}"
    );

    // An IP-literal CONNECT is judged by its SNI too: a denied name is refused…
    let (ok, text) = s_client(s.http, &literal, "evil.test", ca);
    assert!(!ok, "{text}");
    let rec = tunnel(None, "evil.test");
    assert_fields(
        &rec,
        &[
            ("verdict", "deny".into()),
            ("enforced", true.into()),
            ("rule", "evil".into()),
            ("dst_ip", "127.0.0.1".into()),
            ("bytes_out", 0.into()),
        ],
    );
    // …and an allowed one passes.
    let (ok, text) = s_client(s.http, &literal, "origin.test", ca);
    assert!(ok, "{text}");
    let rec = tunnel(None, "origin.test");
    assert_eq!(rec["verdict"], "allow", "{rec:#}");
}

// === Sluice never connects to its own listeners ===

#[test]
fn self_connections_are_refused_even_when_a_rule_allows_every_port() {
    let dns = FixtureDns::stub(&[("self.test", &["127.0.0.1"])]);
    let yaml = format!(
        "dns:\n  upstreams: [\"{}\"]\n{}",
        dns.addr,
        allow_loopback("any")
    );
    let s = Sluice::start(BIN, &yaml);
    let proxy = s.proxy_url();
    let own = [s.http, s.admin.expect("admin listener")];
    for addr in own {
        let targets = [
            format!("http://{addr}/"),
            format!("http://self.test:{}/", addr.port()),
        ];
        for url in &targets {
            for connect in [true, false] {
                let mut args = vec!["-x", proxy.as_str(), url.as_str()];
                if connect {
                    args.insert(0, "-p");
                }
                let c = curl(&args);
                let code = if connect { c.connect } else { c.status };
                assert_eq!(code, 403, "{url} connect={connect}: {c:?}");
                assert_eq!(c.header("sluice-rule").as_deref(), Some("guard/self"));
                let rec = record_by_id(&s, &c.id());
                assert_fields(
                    &rec,
                    &[
                        ("verdict", "deny".into()),
                        ("enforced", true.into()),
                        ("rule", "guard/self".into()),
                        ("dst_port", addr.port().into()),
                    ],
                );
            }
        }
    }
    // Every refusal was answered and recorded once: no loop through itself.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.records().len(), 8, "{:#?}", s.records());
}

// === modes: enforce, report, open; the guard in all of them ===

/// A zone in `mode` with a lifting cidr allow for `port`, a host deny for
/// `blocked.test`, names from `dns`.
fn mode_policy(mode: &str, dns: &FixtureDns, port: u16) -> String {
    format!(
        "dns:\n  upstreams: [\"{}\"]\nzones:\n  - name: local\n    sources: {SOURCES}\n    \
         mode: {mode}\n    allow:\n      - cidr: 127.0.0.1/32\n        ports: [{port}]\n        \
         id: lift\n    deny:\n      - host: blocked.test\n        id: blocked\n",
        dns.addr
    )
}

fn mode_dns() -> FixtureDns {
    FixtureDns::stub(&[
        ("blocked.test", &["127.0.0.1"]),
        ("free.test", &["127.0.0.1"]),
        ("two.test", &["127.0.0.2"]),
        ("public.test", &["1.2.3.4"]),
    ])
}

#[test]
fn enforce_mode_denies_with_403_and_reaches_nothing() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let dns = mode_dns();
    let s = Sluice::start(BIN, &mode_policy("enforce", &dns, port));
    let proxy = s.proxy_url();
    let c = curl(&["-x", &proxy, &format!("http://blocked.test:{port}/")]);
    assert_eq!(c.status, 403, "{c:?}");
    assert_eq!(c.header("sluice-rule").as_deref(), Some("blocked"));
    let rec = record_by_id(&s, &c.id());
    assert_fields(
        &rec,
        &[
            ("mode", "enforce".into()),
            ("verdict", "deny".into()),
            ("enforced", true.into()),
            ("rule", "blocked".into()),
            ("dst_host", "blocked.test".into()),
            ("status", 403.into()),
        ],
    );
    assert_eq!(origin.hits.load(Ordering::SeqCst), 0);
    // A name without a host rule passes only because its address is inside
    // the cidr allow.
    let c = curl(&["-x", &proxy, &format!("http://free.test:{port}/bytes/7")]);
    assert_eq!(c.status, 200, "{c:?}");
    let rec = record_by_id(&s, &c.id());
    assert_fields(
        &rec,
        &[("verdict", "allow".into()), ("rule", "lift".into())],
    );
    // The same name-without-rule outside every cidr allow is refused after
    // resolution, before any connection is tried.
    let c = curl(&["-x", &proxy, &format!("http://public.test:{port}/")]);
    assert_eq!(c.status, 403, "{c:?}");
    let rec = record_by_id(&s, &c.id());
    assert_fields(
        &rec,
        &[
            ("verdict", "deny".into()),
            ("enforced", true.into()),
            ("rule", "default".into()),
            ("dst_host", "public.test".into()),
        ],
    );
    assert!(
        rec["reason"].as_str().unwrap().contains("1.2.3.4"),
        "{rec:#}"
    );
}

#[test]
fn report_mode_passes_would_be_denials_but_not_the_guard() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let two = Origin::start("127.0.0.2");
    let dns = mode_dns();
    let s = Sluice::start(BIN, &mode_policy("report", &dns, port));
    let proxy = s.proxy_url();
    for connect in [false, true] {
        let mut args = vec!["-x", proxy.as_str()];
        if connect {
            args.push("-p");
        }
        let url = format!("http://blocked.test:{port}/bytes/321");
        args.push(&url);
        let c = curl(&args);
        assert_eq!((c.exit, c.status), (0, 200), "{c:?}");
        assert_eq!(c.body.len(), 321);
        let rec = record_by_id(&s, &c.id());
        assert_fields(
            &rec,
            &[
                ("protocol", if connect { "connect" } else { "http" }.into()),
                ("mode", "report".into()),
                ("verdict", "deny".into()),
                ("enforced", false.into()),
                ("rule", "blocked".into()),
                ("status", 200.into()),
                ("dst_ip", "127.0.0.1".into()),
            ],
        );
        assert!(rec["bytes_in"].as_u64().unwrap() >= 321, "{rec:#}");
    }
    assert_eq!(origin.hits.load(Ordering::SeqCst), 2);

    // The guard is enforced in report mode: 127.0.0.2 has no lifting rule.
    for url in [
        format!("{}/", two.url()),
        format!("http://two.test:{}/", two.addr.port()),
    ] {
        let c = curl(&["-x", &proxy, &url]);
        assert_eq!(c.status, 403, "{url}: {c:?}");
        let rec = record_by_id(&s, &c.id());
        assert_fields(
            &rec,
            &[
                ("verdict", "deny".into()),
                ("enforced", true.into()),
                ("rule", "guard/special-address".into()),
            ],
        );
    }
    assert_eq!(two.conns.load(Ordering::SeqCst), 0, "guard bypassed");
}

#[test]
fn open_mode_allows_what_no_rule_denies_but_keeps_the_guard() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let two = Origin::start("127.0.0.2");
    let dns = mode_dns();
    let s = Sluice::start(BIN, &mode_policy("open", &dns, port));
    let proxy = s.proxy_url();
    let c = curl(&["-x", &proxy, &format!("http://free.test:{port}/bytes/9")]);
    assert_eq!(c.status, 200, "{c:?}");
    let rec = record_by_id(&s, &c.id());
    assert_fields(
        &rec,
        &[
            ("mode", "open".into()),
            ("verdict", "allow".into()),
            ("enforced", true.into()),
            // Allowed by the mode, not by a rule.
            ("rule", "default".into()),
        ],
    );
    let c = curl(&["-x", &proxy, &format!("http://blocked.test:{port}/")]);
    assert_eq!(c.status, 403, "{c:?}");
    assert_eq!(c.header("sluice-rule").as_deref(), Some("blocked"));
    for url in [
        format!("{}/", two.url()),
        format!("http://two.test:{}/", two.addr.port()),
    ] {
        let c = curl(&["-p", "-x", &proxy, &url]);
        assert_eq!(c.connect, 403, "{url}: {c:?}");
        assert_eq!(
            c.header("sluice-rule").as_deref(),
            Some("guard/special-address")
        );
    }
    assert_eq!(two.conns.load(Ordering::SeqCst), 0, "guard bypassed");
}

// === proxy authentication ===

/// Headers of a response without the ones that differ per request.
fn stable_headers(c: &Curl) -> Vec<String> {
    let mut v: Vec<String> = c
        .headers
        .lines()
        .map(|l| l.trim().to_ascii_lowercase())
        .filter(|l| !l.is_empty())
        .filter(|l| !l.starts_with("date:") && !l.starts_with("sluice-request-id:"))
        .collect();
    v.sort();
    v
}

#[test]
fn proxy_auth_asks_refuses_alike_and_records_the_user() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let yaml = format!(
        "zones:\n  - name: ci\n    users: [ci]\n    mode: enforce\n    allow:\n      \
         - cidr: 127.0.0.1/32\n        ports: [{port}]\n        id: ci-origin\n\
         users:\n  - name: ci\n    password_hash: \"{}\"\n",
        argon2_hash("s3cret-pass")
    );
    let s = Sluice::start(BIN, &yaml);
    let proxy = s.proxy_url();
    let url = format!("{}/bytes/64", origin.url());

    // No credentials: asked for them.
    let c = curl(&["-x", &proxy, &url]);
    assert_eq!(c.status, 407, "{c:?}");
    let challenge = c.header("proxy-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Basic"), "{challenge}");
    let rec = record_by_id(&s, &c.id());
    assert_fields(
        &rec,
        &[
            ("status", 407.into()),
            ("verdict", "deny".into()),
            ("user", Value::Null),
            ("rule", "default/no-zone".into()),
            ("route", Value::Null),
            ("error_kind", Value::Null),
        ],
    );

    // Wrong password and unknown user: the same answer, no user oracle.
    let wrong = curl(&["-x", &proxy, "--proxy-user", "ci:not-it", &url]);
    let unknown = curl(&["-x", &proxy, "--proxy-user", "nobody:s3cret-pass", &url]);
    for c in [&wrong, &unknown] {
        assert_eq!(c.status, 407, "{c:?}");
        assert!(c.header("proxy-authenticate").unwrap().starts_with("Basic"));
        let rec = record_by_id(&s, &c.id());
        assert_fields(
            &rec,
            &[
                ("status", 407.into()),
                ("verdict", "deny".into()),
                ("enforced", true.into()),
                ("user", Value::Null),
                ("rule", "default/auth-failed".into()),
                ("zone", Value::Null),
                ("error_kind", "client".into()),
            ],
        );
        assert_eq!(
            c.header("sluice-rule").as_deref(),
            Some("default/auth-failed")
        );
    }
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(stable_headers(&wrong), stable_headers(&unknown));
    let (a, b) = (
        record_by_id(&s, &wrong.id()),
        record_by_id(&s, &unknown.id()),
    );
    // The records (for the operator) name the user that was tried; the
    // answers (for the client) are the same.
    assert_eq!(a["rule"], b["rule"]);
    assert_eq!(
        (a["reason"].as_str().unwrap(), b["reason"].as_str().unwrap()),
        (
            "proxy authentication failed (user \"ci\")",
            "proxy authentication failed (user \"nobody\")"
        )
    );
    assert_eq!(origin.conns.load(Ordering::SeqCst), 0);

    // Right credentials, absolute-form and CONNECT: allowed, user recorded.
    for connect in [false, true] {
        let mut args = vec!["-x", proxy.as_str(), "--proxy-user", "ci:s3cret-pass"];
        if connect {
            args.push("-p");
        }
        args.push(&url);
        let c = curl(&args);
        assert_eq!((c.exit, c.status), (0, 200), "{c:?}");
        assert_eq!(c.body.len(), 64);
        let rec = record_by_id(&s, &c.id());
        assert_fields(
            &rec,
            &[
                ("protocol", if connect { "connect" } else { "http" }.into()),
                ("user", "ci".into()),
                ("zone", "ci".into()),
                ("verdict", "allow".into()),
                ("rule", "ci-origin".into()),
            ],
        );
    }
    // The credentials were not forwarded to the origin.
    let c = curl(&[
        "-x",
        &proxy,
        "--proxy-user",
        "ci:s3cret-pass",
        &format!("{}/echo", origin.url()),
    ]);
    let echo: Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(
        echo["headers"]["proxy-authorization"],
        Value::Null,
        "{echo}"
    );
    assert_eq!(echo["headers"]["proxy-connection"], Value::Null, "{echo}");

    // A CONNECT without credentials is asked for them too.
    let c = curl(&["-p", "-x", &proxy, &url]);
    assert_eq!(c.connect, 407, "{c:?}");

    // Python requests with credentials in the proxy URL.
    let with_user = format!("http://ci:s3cret-pass@{}", s.http);
    let got = python_requests(&with_user, None, std::slice::from_ref(&url));
    assert_eq!(got[0]["status"], 200, "{got:#?}");
    let id = got[0]["headers"]["sluice-request-id"].as_str().unwrap();
    assert_eq!(record_by_id(&s, id)["user"], "ci");
    let wrong = format!("http://ci:nope@{}", s.http);
    let got = python_requests(&wrong, None, &[url]);
    assert_eq!(got[0]["status"], 407, "{got:#?}");
}

// === Upgrade: WebSocket handshake relayed, then bytes both ways ===

/// A raw origin that answers one `Upgrade: websocket` request with 101 and
/// then echoes every byte until the client closes. Returns its address and
/// the request head it received.
fn upgrade_origin() -> (SocketAddr, Arc<Mutex<String>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let head = Arc::new(Mutex::new(String::new()));
    let seen = head.clone();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") && buf.len() < 64 * 1024 {
            if s.read(&mut byte).unwrap_or(0) == 0 {
                return;
            }
            buf.push(byte[0]);
        }
        *seen.lock().unwrap() = String::from_utf8_lossy(&buf).into_owned();
        let _ = s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        );
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&chunk[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
    (addr, head)
}

/// Sends a WebSocket handshake for `origin` through the proxy at `proxy`;
/// the connection and the 101 response head.
fn upgrade(proxy: SocketAddr, origin: SocketAddr) -> (TcpStream, String) {
    let mut c = TcpStream::connect(proxy).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET http://{origin}/chat HTTP/1.1\r\nHost: {origin}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    let mut byte = [0u8; 1];
    while !resp.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).unwrap(), 1, "closed mid-head: {resp:?}");
        resp.push(byte[0]);
    }
    let resp = String::from_utf8(resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    (c, resp)
}

/// An upgraded connection runs through the common relay: it keeps the
/// tunnels' idle timeout and is recorded as a timeout when it idles out.
#[test]
fn websocket_upgrade_idles_out_like_a_tunnel() {
    let (origin, _) = upgrade_origin();
    let s = Sluice::start(
        BIN,
        &format!(
            "limits:\n  idle_timeout: 1s\n{}",
            allow_loopback(&format!("[{}]", origin.port()))
        ),
    );
    let (mut c, resp) = upgrade(s.http, origin);
    let id = header_in(&resp, "sluice-request-id").expect("request id");
    c.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    c.read_exact(&mut back).unwrap();
    let t0 = Instant::now();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "not closed when idle"
    );
    let rec = record_by_id(&s, &id);
    assert_fields(
        &rec,
        &[
            ("status", 101.into()),
            ("bytes_out", 5.into()),
            ("bytes_in", 5.into()),
            ("error", "idle for 1s".into()),
            ("error_kind", "timeout".into()),
            ("route", "direct".into()),
        ],
    );
}

#[test]
fn websocket_upgrade_is_relayed_in_absolute_form() {
    let (origin, head) = upgrade_origin();
    // A short header timeout: an upgraded connection must not be held to it.
    let s = Sluice::start(
        BIN,
        &format!(
            "limits:\n  header_timeout: 1s\n{}",
            allow_loopback(&format!("[{}]", origin.port()))
        ),
    );
    let (mut c, resp) = upgrade(s.http, origin);
    let lower = resp.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{resp}");
    let id = header_in(&resp, "sluice-request-id").expect("request id");

    // What the origin saw: the upgrade asked for, origin-form, Host rewritten.
    let seen = head.lock().unwrap().to_ascii_lowercase();
    assert!(seen.starts_with("get /chat http/1.1\r\n"), "{seen}");
    assert!(seen.contains("upgrade: websocket"), "{seen}");
    assert!(seen.contains("connection: upgrade"), "{seen}");
    assert!(
        seen.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="),
        "{seen}"
    );
    assert!(seen.contains(&format!("host: {origin}")), "{seen}");

    // Bytes flow both ways after the 101, also after a pause longer than
    // the header timeout (the upgraded connection has only the idle one).
    let mut sent = 0;
    for (i, msg) in [&b"ping over the upgrade"[..], &[0x5a; 10_000][..]]
        .into_iter()
        .enumerate()
    {
        if i == 1 {
            std::thread::sleep(Duration::from_millis(2500));
        }
        c.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
        sent += msg.len() as u64;
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");

    let rec = record_by_id(&s, &id);
    assert_fields(
        &rec,
        &[
            ("protocol", "http".into()),
            ("method", "GET".into()),
            ("status", 101.into()),
            ("verdict", "allow".into()),
            ("rule", "loopback-origin".into()),
            ("bytes_out", sent.into()),
            ("bytes_in", sent.into()),
        ],
    );
}

// === IPv6 literal CONNECT ===

#[test]
fn ipv6_literal_connect_and_absolute_form() {
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        eprintln!("skipped: cannot bind [::1]:0 ({e})");
        return;
    }
    let origin = Origin::start("::1");
    let port = origin.addr.port();
    let yaml = format!(
        "zones:\n  - name: local\n    sources: {SOURCES}\n    mode: enforce\n    allow:\n      \
         - cidr: \"::1/128\"\n        ports: [{port}]\n        id: v6-loopback\n"
    );
    let s = Sluice::start(BIN, &yaml);
    let proxy = s.proxy_url();
    let url = format!("http://[::1]:{port}/bytes/500");
    for connect in [true, false] {
        let mut args = vec!["-x", proxy.as_str()];
        if connect {
            args.push("-p");
        }
        args.push(&url);
        let c = curl(&args);
        assert_eq!((c.exit, c.status), (0, 200), "{c:?}");
        assert_eq!(c.body.len(), 500);
        let rec = record_by_id(&s, &c.id());
        assert_fields(
            &rec,
            &[
                ("protocol", if connect { "connect" } else { "http" }.into()),
                ("verdict", "allow".into()),
                ("rule", "v6-loopback".into()),
                ("dst_ip", "::1".into()),
                ("dst_port", port.into()),
            ],
        );
        assert!(rec["bytes_in"].as_u64().unwrap() >= 500, "{rec:#}");
    }
    // The v4 rule's twin does not exist: ::1 on another port stays guarded.
    let other = Origin::start("::1");
    let c = curl(&[
        "-p",
        "-x",
        &proxy,
        &format!("http://[::1]:{}/", other.addr.port()),
    ]);
    assert_eq!(c.connect, 403, "{c:?}");
    assert_eq!(
        c.header("sluice-rule").as_deref(),
        Some("guard/special-address")
    );
    let rec = record_by_id(&s, &c.id());
    assert_eq!(rec["dst_ip"], "::1");
    assert_eq!(other.conns.load(Ordering::SeqCst), 0);
}
