//! TLS interception and `require_tls` end to end (issue 14): the real
//! binary, a CA made with `sluice ca init`, TLS origins with test CAs of
//! their own, and real clients (curl with `--cacert`, Python `requests`
//! with `verify=`). What a client saw is checked by what it had to trust:
//! a client that trusts only Sluice's CA gets through an intercepted
//! destination, and one that trusts only the origin's CA gets through an
//! unlisted one (and not the other way round).
//!
//! Names resolve through the testkit's stub DNS server: `*.test` names map
//! to 127.0.0.1, lifted by a `cidr` rule for the origins' ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use sluice_testkit::{
    CIcap, Clamd, FixtureDns, Origin, Sluice, TempDir, TlsOrigin, assert_fields, client_command,
    connect_tunnel, curl, finding, output_within, poll_until, python_requests,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// `sluice ca init --out DIR`: the CA certificate and key paths.
fn ca_init(dir: &TempDir) -> (PathBuf, PathBuf) {
    let out = dir.path("ca");
    let o = output_within(
        Command::new(BIN).args(["ca", "init", "--out"]).arg(&out),
        Duration::from_secs(20),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (out.join("sluice-ca.pem"), out.join("sluice-ca.key"))
}

struct Setup {
    s: Sluice,
    /// Sluice's CA.
    ca: PathBuf,
    /// Listed under inspect.tls (origin.test) and not (other.test).
    good: TlsOrigin,
    /// listed, with a certificate from a CA nobody trusts (bad.test).
    bad: TlsOrigin,
    _dns: FixtureDns,
    _dir: TempDir,
}

fn setup(extra_zone: &str) -> Setup {
    setup_inspecting(extra_zone, "", "")
}

/// As [`setup`], with `zone_inspect` added under the zone's `inspect`
/// (indented six spaces) and `top_inspect` under the top-level `inspect`
/// (indented two).
fn setup_inspecting(extra_zone: &str, zone_inspect: &str, top_inspect: &str) -> Setup {
    setup_in_mode("enforce", extra_zone, zone_inspect, top_inspect)
}

/// As [`setup_inspecting`], the zone in `mode` (`enforce` or `report`).
fn setup_in_mode(mode: &str, extra_zone: &str, zone_inspect: &str, top_inspect: &str) -> Setup {
    let dir = TempDir::new("intercept");
    let (ca, key) = ca_init(&dir);
    let good = TlsOrigin::start("DNS:origin.test,DNS:other.test");
    let bad = TlsOrigin::start("DNS:bad.test");
    let dns = FixtureDns::stub(&[
        ("origin.test", &["127.0.0.1"]),
        ("other.test", &["127.0.0.1"]),
        ("bad.test", &["127.0.0.1"]),
    ]);
    let yaml = format!(
        "listen:\n  http: 127.0.0.1:0\n  socks5: 127.0.0.1:0\n  admin: 127.0.0.1:0\n\
         dns:\n  upstreams: [\"{dns}\"]\n\
         inspect:\n  ca:\n    cert_file: {ca}\n    key_file: {key}\n  extra_roots: [{roots}]\n{top_inspect}\
         zones:\n  - name: local\n    sources: [127.0.0.0/8]\n    mode: {mode}\n{extra_zone}\
         \x20   inspect:\n      tls: [origin.test, \"*.bad.test\", bad.test]\n{zone_inspect}\
         \x20   allow:\n      - host: \"*.test\"\n        ports: any\n      \
         - cidr: 127.0.0.1/32\n        ports: any\n",
        dns = dns.addr,
        ca = ca.display(),
        key = key.display(),
        roots = good.certs.ca.display(),
    );
    let s = Sluice::start(BIN, &yaml);
    Setup {
        s,
        ca,
        good,
        bad,
        _dns: dns,
        _dir: dir,
    }
}

fn tunnel_record(s: &Sluice, host: &str, listener: &str) -> Value {
    s.wait_record(host, |r| r["dst_host"] == host && r["listener"] == listener)
}

fn cacert(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn curl_and_requests_through_an_intercepted_destination_see_sluices_leaf() {
    let t = setup("");
    let url = format!("https://origin.test:{}/hello", t.good.port);
    // Trusting only Sluice's CA works: the leaf is Sluice's.
    let c = curl(&["--cacert", &cacert(&t.ca), "-x", &t.s.proxy_url(), &url]);
    assert_eq!((c.exit, c.status), (0, 200), "{c:?}");
    assert_eq!(c.body_text(), "hello tls /hello");
    let rec = tunnel_record(&t.s, "origin.test", "http");
    assert_fields(
        &rec,
        &[
            ("protocol", "connect".into()),
            ("verdict", "allow".into()),
            ("intercepted", true.into()),
            ("tls", true.into()),
            ("sni", "origin.test".into()),
            ("method", "GET".into()),
            ("status", 200.into()),
            ("error", Value::Null),
        ],
    );
    assert!(rec["bytes_in"].as_u64().unwrap() > 0, "{rec}");
    assert!(
        rec["reason"]
            .as_str()
            .unwrap()
            .contains("intercepted: 1 HTTP request"),
        "{rec}"
    );
    // The origin's own CA is not enough any more: the client never sees
    // the origin's certificate.
    let c = curl(&[
        "--cacert",
        &cacert(&t.good.certs.ca),
        "-x",
        &t.s.proxy_url(),
        &url,
    ]);
    assert_eq!(c.exit, 60, "curl must reject Sluice's leaf: {c:?}");
    // ... and that refusal is recorded as the client's, naming the alert.
    let rec = t.s.wait_record("rejected interception", |r| {
        r["dst_host"] == "origin.test" && r["error_kind"] == "client"
    });
    let err = rec["error"].as_str().unwrap();
    assert!(err.contains("alert"), "{err}");
    assert_eq!(rec["intercepted"], true);

    // Python requests with verify= Sluice's CA, two requests on one tunnel.
    let got = python_requests(
        &t.s.proxy_url(),
        Some(&t.ca),
        &[
            url.clone(),
            format!("https://origin.test:{}/two", t.good.port),
        ],
    );
    assert_eq!(got[0]["status"], 200, "{got:#?}");
    assert_eq!(got[0]["body"], "hello tls /hello");
    assert_eq!(got[1]["body"], "hello tls /two");
}

#[test]
fn an_unlisted_destination_is_spliced_with_the_origins_certificate() {
    let t = setup("");
    let url = format!("https://other.test:{}/x", t.good.port);
    let c = curl(&[
        "--cacert",
        &cacert(&t.good.certs.ca),
        "-x",
        &t.s.proxy_url(),
        &url,
    ]);
    assert_eq!((c.exit, c.status), (0, 200), "{c:?}");
    let rec = tunnel_record(&t.s, "other.test", "http");
    assert_fields(&rec, &[("tls", true.into()), ("intercepted", Value::Null)]);
    // Sluice's CA does not vouch for what the client saw.
    let c = curl(&["--cacert", &cacert(&t.ca), "-x", &t.s.proxy_url(), &url]);
    assert_eq!(c.exit, 60, "{c:?}");
}

#[test]
fn an_upstream_with_a_bad_certificate_is_refused_with_502() {
    let t = setup("");
    let url = format!("https://bad.test:{}/secret", t.bad.port);
    let c = curl(&["--cacert", &cacert(&t.ca), "-x", &t.s.proxy_url(), &url]);
    assert_eq!(c.status, 502, "{c:?}");
    assert!(
        c.body_text().contains("rule: inspect/upstream-certificate"),
        "{}",
        c.body_text()
    );
    let rec = tunnel_record(&t.s, "bad.test", "http");
    assert_fields(
        &rec,
        &[
            ("verdict", "deny".into()),
            ("rule", "inspect/upstream-certificate".into()),
            ("intercepted", true.into()),
            ("error_kind", "upstream-closed".into()),
            ("status", 502.into()),
        ],
    );
}

#[test]
fn socks5_tunnels_are_intercepted_too() {
    let t = setup("");
    let socks = format!("socks5h://{}", t.s.socks5.unwrap());
    let url = format!("https://origin.test:{}/socks", t.good.port);
    let c = curl(&["--cacert", &cacert(&t.ca), "-x", &socks, &url]);
    assert_eq!((c.exit, c.status), (0, 200), "{c:?}");
    assert_eq!(c.body_text(), "hello tls /socks");
    let rec = tunnel_record(&t.s, "origin.test", "socks5");
    assert_fields(
        &rec,
        &[
            ("intercepted", true.into()),
            ("tls", true.into()),
            ("status", 200.into()),
        ],
    );
}

#[test]
fn ca_init_refuses_to_overwrite_and_keeps_the_key_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("ca-init");
    let (cert, key) = ca_init(&dir);
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read(&key).unwrap();
    let o = output_within(
        Command::new(BIN)
            .args(["ca", "init", "--out"])
            .arg(cert.parent().unwrap()),
        Duration::from_secs(20),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("exists"));
    assert_eq!(std::fs::read(&key).unwrap(), before);
    let help = output_within(
        Command::new(BIN).args(["ca", "init", "--help"]),
        Duration::from_secs(20),
    );
    assert!(help.status.success());
    // A new CA prints how to distribute it.
    let dir2 = TempDir::new("ca-init2");
    let o = output_within(
        Command::new(BIN)
            .args(["ca", "init", "--out"])
            .arg(dir2.path("x")),
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "update-ca-certificates",
        "REQUESTS_CA_BUNDLE",
        "--cacert",
        "Browsers",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
}

#[test]
fn validate_reports_a_missing_ca_and_bad_ca_files_with_positions() {
    let dir = TempDir::new("ca-validate");
    let cfg = dir.path("sluice.yaml");
    let zone =
        "zones:\n  - name: a\n    sources: [10.0.0.0/8]\n    inspect:\n      tls: [x.test]\n";
    std::fs::write(&cfg, format!("listen:\n  http: 127.0.0.1:0\n{zone}")).unwrap();
    let o = output_within(
        Command::new(BIN).args(["validate", "-c"]).arg(&cfg),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(":7:7:") && err.contains("inspect.ca"), "{err}");
    // Relative paths start at the configuration's folder; junk is named.
    std::fs::write(dir.path("ca.pem"), "not a certificate").unwrap();
    std::fs::write(dir.path("ca.key"), "not a key").unwrap();
    std::fs::write(
        &cfg,
        format!(
            "listen:\n  http: 127.0.0.1:0\ninspect:\n  ca:\n    cert_file: ca.pem\n    key_file: ca.key\n{zone}"
        ),
    )
    .unwrap();
    let o = output_within(
        Command::new(BIN).args(["validate", "-c"]).arg(&cfg),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(":5:16: inspect.ca.cert_file `ca.pem`") && err.contains("certificate"),
        "{err}"
    );
}

#[test]
fn require_tls_denies_plaintext_and_passes_tls_and_every_record_says_tls() {
    let t = setup("    require_tls: true\n");
    let plain = Origin::start("127.0.0.1");
    // Absolute-form plaintext: 403, never dialed.
    let c = curl(&["-x", &t.s.proxy_url(), &format!("{}/bytes/5", plain.url())]);
    assert_eq!(c.status, 403, "{c:?}");
    assert_eq!(
        c.header("sluice-rule").as_deref(),
        Some("inspect/require-tls")
    );
    let rec = t.s.wait_record("plain", |r| r["id"] == c.id());
    assert_fields(
        &rec,
        &[
            ("tls", false.into()),
            ("rule", "inspect/require-tls".into()),
            ("enforced", true.into()),
        ],
    );
    assert_eq!(plain.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // A tunnel that speaks plaintext: closed after its first bytes.
    let mut s = connect_tunnel(
        t.s.http,
        &format!("other.test:{}", t.good.port),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|r| panic!("CONNECT refused: {:?}", r.status));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    let rec = t.s.wait_record("plaintext tunnel", |r| {
        r["dst_host"] == "other.test" && r["rule"] == "inspect/require-tls"
    });
    assert_fields(
        &rec,
        &[
            ("tls", false.into()),
            ("verdict", "deny".into()),
            ("bytes_in", 0.into()),
        ],
    );
    // TLS passes.
    let c = curl(&[
        "--cacert",
        &cacert(&t.good.certs.ca),
        "-x",
        &t.s.proxy_url(),
        &format!("https://other.test:{}/ok", t.good.port),
    ]);
    assert_eq!((c.exit, c.status), (0, 200), "{c:?}");
    let rec = t.s.wait_record("tls tunnel", |r| {
        r["dst_host"] == "other.test" && r["verdict"] == "allow"
    });
    assert_fields(&rec, &[("tls", true.into()), ("intercepted", Value::Null)]);
}

#[test]
fn require_tls_in_a_report_zone_is_recorded_not_enforced() {
    let plain = Origin::start("127.0.0.1");
    let yaml = format!(
        "zones:\n  - name: local\n    sources: [127.0.0.0/8]\n    mode: report\n    allow:\n      \
         - cidr: 127.0.0.1/32\n        ports: [{}]\n        require_tls: true\n        id: plain-origin\n",
        plain.addr.port()
    );
    let s = Sluice::start(BIN, &yaml);
    let c = curl(&["-x", &s.proxy_url(), &format!("{}/bytes/5", plain.url())]);
    assert_eq!(c.status, 200, "{c:?}");
    let rec = s.wait_record("report", |r| r["id"] == c.id());
    assert_fields(
        &rec,
        &[
            ("tls", false.into()),
            ("verdict", "deny".into()),
            ("enforced", false.into()),
            ("rule", "inspect/require-tls".into()),
        ],
    );
}

/// Reads an intercepted response to the end of the connection: Sluice
/// closes an intercepted connection (TLS close_notify, then FIN) after a
/// request that said `Connection: close`, as any HTTP/1.1 server must.
const READ_TO_EOF_PY: &str = r#"
import socket, ssl, sys, time
proxy, port, target, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.create_connection((proxy, port), timeout=10)
s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
ctx = ssl.create_default_context(cafile=ca)
t = ctx.wrap_socket(s, server_hostname=target.split(":")[0])
t.sendall(("GET /eof HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % target).encode())
started, data = time.time(), b""
while True:
    try:
        d = t.recv(65536)
    except ssl.SSLEOFError:
        d = b""
    if not d:
        break
    data += d
print("%.2f" % (time.time() - started))
print(data.decode("latin-1"))
"#;

#[test]
fn an_intercepted_connection_closes_after_connection_close() {
    let t = setup("");
    let dir = TempDir::new("eof");
    let script = dir.path("eof.py");
    std::fs::write(&script, READ_TO_EOF_PY).unwrap();
    let target = format!("origin.test:{}", t.good.port);
    let o = output_within(
        Command::new("python3")
            .arg(&script)
            .arg(t.s.http.ip().to_string())
            .arg(t.s.http.port().to_string())
            .arg(&target)
            .arg(&t.ca),
        Duration::from_secs(20),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let secs: f64 = out.lines().next().unwrap().parse().unwrap();
    assert!(secs < 5.0, "the connection stayed open {secs}s: {out}");
    assert!(out.contains("hello tls /eof"), "{out}");
}

// === content inspection inside intercepted tunnels ===

/// A GitHub token shape (`ghp_` and 36 characters).
const GH_TOKEN: &str = "ghp_Zq8xW3vR1tY6uI0oP9aS2dF5gH7jK4lM3nB8";
/// An AWS access key id (AWS's documented example).
const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";

/// Python `requests` over one session through `HTTPS_PROXY`, trusting
/// only the CA in argv[1]: a clean POST, the token in a POST body, the
/// token in a header twice, a clean POST again. One JSON list of outcomes.
const REQUESTS_POST_PY: &str = r#"
import json, sys, requests
ca, url, token = sys.argv[1:4]
s = requests.Session()
out = []
for kind in ("clean", "body", "header", "header", "again"):
    try:
        if kind == "body":
            r = s.post(url, data={"note": "hi", "token": token}, verify=ca, timeout=10)
        elif kind == "header":
            r = s.get(url, headers={"Authorization": "token " + token}, verify=ca, timeout=10)
        else:
            r = s.post(url, data=b"nothing secret here", verify=ca, timeout=10)
        out.append({"kind": kind, "status": r.status_code,
                    "rule": r.headers.get("Sluice-Rule"), "body": r.text[:300]})
    except Exception as e:
        out.append({"kind": kind, "error": repr(e)})
print(json.dumps(out))
"#;

/// Intercepted tunnels' records that `pred` picks, once there are `n`.
fn intercepted_records(s: &Sluice, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut got = Vec::new();
    let ok = poll_until(Duration::from_secs(10), || {
        got = s
            .records()
            .into_iter()
            .filter(|r| r["intercepted"] == true && pred(r))
            .collect();
        got.len() >= n
    });
    assert!(ok, "{n} records wanted, got {got:#?}");
    got
}

#[test]
fn dlp_blocks_a_token_inside_intercepted_connect_and_socks5_tunnels() {
    let t = setup_inspecting("", "      dlp: {github: block, aws: alert}\n", "");
    let url = format!("https://origin.test:{}/upload", t.good.port);
    let ca = cacert(&t.ca);

    // curl through CONNECT, the token in the body: 403 naming the rule,
    // and nothing of the request reached the origin.
    let c = curl(&[
        "--cacert",
        &ca,
        "-x",
        &t.s.proxy_url(),
        "--data",
        &format!("token={GH_TOKEN}"),
        &url,
    ]);
    assert_eq!((c.exit, c.status), (0, 403), "{c:?}");
    assert_eq!(
        c.header("sluice-rule").as_deref(),
        Some("inspect/dlp/github")
    );
    assert!(!t.good.saw(GH_TOKEN), "the token reached the origin");
    let rec = t.s.wait_record("the blocked curl upload", |r| {
        r["intercepted"] == true && r["rule"] == "inspect/dlp/github"
    });
    assert_fields(
        &rec,
        &[
            ("listener", "http".into()),
            ("protocol", "connect".into()),
            ("dst_host", "origin.test".into()),
            ("tls", true.into()),
            ("verdict", "deny".into()),
            ("enforced", true.into()),
            ("method", "POST".into()),
            ("status", 403.into()),
        ],
    );
    let f = finding(&rec, "github");
    assert_eq!(f["count"], 1);
    assert_eq!(f["hash"].as_str().unwrap().len(), 32, "{f}");

    // Python requests on one session: clean passes, the token in a body
    // and in a header is refused, and the session goes on afterwards (a
    // body cut short closes its tunnel: the session opens another).
    let dir = TempDir::new("requests-post");
    let script = dir.path("post.py");
    std::fs::write(&script, REQUESTS_POST_PY).unwrap();
    let o = output_within(
        client_command("python3")
            .arg(&script)
            .arg(&t.ca)
            .arg(&url)
            .arg(GH_TOKEN)
            .env("HTTPS_PROXY", t.s.proxy_url()),
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{o:?}");
    let got: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got[0]["status"], 200, "{got:#?}");
    assert_eq!(got[0]["body"], "got 19");
    for blocked in &got[1..4] {
        assert_eq!(blocked["status"], 403, "{got:#?}");
        assert_eq!(blocked["rule"], "inspect/dlp/github", "{got:#?}");
    }
    assert_eq!(got[4]["status"], 200, "{got:#?}");
    assert_eq!(got[4]["body"], "got 19");
    assert!(!t.good.saw(GH_TOKEN), "the token reached the origin");

    // SOCKS5: the same inspection.
    let socks = format!("socks5h://{}", t.s.socks5.unwrap());
    let c = curl(&[
        "--cacert",
        &ca,
        "-x",
        &socks,
        "-H",
        &format!("X-Api-Key: {GH_TOKEN}"),
        &url,
    ]);
    assert_eq!((c.exit, c.status), (0, 403), "{c:?}");
    let rec = t.s.wait_record("the blocked socks5 request", |r| {
        r["listener"] == "socks5" && r["rule"] == "inspect/dlp/github"
    });
    assert_eq!(rec["intercepted"], true);
    assert_eq!(finding(&rec, "github")["count"], 1);

    // `alert` passes, with the finding and a dlp alert.
    let c = curl(&[
        "--cacert",
        &ca,
        "-x",
        &t.s.proxy_url(),
        "--data",
        &format!("key={AWS_KEY}"),
        &url,
    ]);
    assert_eq!((c.exit, c.status), (0, 200), "{c:?}");
    assert!(t.good.saw(AWS_KEY), "an alert-only finding must pass");
    let rec = t.s.wait_record("the aws alert", |r| {
        r["intercepted"] == true && r["findings"].to_string().contains("\"aws\"")
    });
    assert_fields(&rec, &[("verdict", "allow".into()), ("status", 200.into())]);
    assert!(
        poll_until(Duration::from_secs(10), || !t
            .s
            .alerts("kind=dlp")
            .is_empty()),
        "no dlp alert"
    );

    // The session's second tunnel (two header blocks, then a clean POST)
    // has both blocks folded into one github finding of count 2.
    let recs = intercepted_records(&t.s, 1, |r| {
        r["reason"]
            .as_str()
            .unwrap_or("")
            .contains("3 HTTP requests")
    });
    assert_fields(
        &recs[0],
        &[
            ("rule", "inspect/dlp/github".into()),
            ("verdict", "deny".into()),
        ],
    );
    assert_eq!(finding(&recs[0], "github")["count"], 2, "{:#}", recs[0]);
    // An unlisted destination is spliced untouched: not decrypted, so not
    // inspected (the client trusts only the origin's CA).
    let c = curl(&[
        "--cacert",
        &cacert(&t.good.certs.ca),
        "-x",
        &t.s.proxy_url(),
        "--data",
        &format!("token={GH_TOKEN}"),
        &format!("https://other.test:{}/spliced", t.good.port),
    ]);
    assert_eq!((c.exit, c.status), (0, 200), "{c:?}");
    assert!(t.good.saw("POST /spliced"));
    let rec = tunnel_record(&t.s, "other.test", "http");
    assert_fields(
        &rec,
        &[
            ("intercepted", Value::Null),
            ("findings", Value::Null),
            ("verdict", "allow".into()),
        ],
    );
    t.s.assert_never_logged(GH_TOKEN);
    t.s.assert_never_logged(AWS_KEY);
}

#[test]
fn clamd_blocks_downloads_and_uploads_inside_an_intercepted_tunnel_and_fails_closed() {
    let mut clamd = Clamd::start();
    let t = setup_inspecting(
        "",
        "      malware: block\n",
        &format!(
            "  clamd:\n    address: {}\n    timeout: 5s\n    max_size: 1MiB\n",
            clamd.address()
        ),
    );
    let mut evil = vec![b'x'; 64 * 1024];
    evil.extend_from_slice(Clamd::MARKER.as_bytes());
    t.good.set_download(&evil);
    let ca = cacert(&t.ca);
    let base = format!("https://origin.test:{}", t.good.port);

    // A clean download passes.
    let c = curl(&[
        "--cacert",
        &ca,
        "-x",
        &t.s.proxy_url(),
        &format!("{base}/x"),
    ]);
    assert_eq!((c.exit, c.status), (0, 200), "{c:?}");
    // The infected download is replaced by the refusal.
    let c = curl(&[
        "--cacert",
        &ca,
        "-x",
        &t.s.proxy_url(),
        &format!("{base}/download"),
    ]);
    assert_eq!((c.exit, c.status), (0, 403), "{c:?}");
    assert_eq!(c.header("sluice-rule").as_deref(), Some("inspect/malware"));
    assert!(
        !c.body_text().contains(Clamd::MARKER),
        "the client got the infected file"
    );
    let rec = t.s.wait_record("the infected download", |r| {
        r["intercepted"] == true && r["rule"] == "inspect/malware"
    });
    assert_fields(
        &rec,
        &[
            ("verdict", "deny".into()),
            ("method", "GET".into()),
            ("status", 403.into()),
        ],
    );
    assert_eq!(finding(&rec, "malware")["count"], 1);
    assert!(
        poll_until(Duration::from_secs(10), || !t
            .s
            .alerts("kind=malware")
            .is_empty()),
        "no malware alert"
    );
    // An infected upload never reaches the origin.
    let up = t.s.dir.path("evil.bin");
    std::fs::write(&up, &evil).unwrap();
    let c = curl(&[
        "--cacert",
        &ca,
        "-x",
        &t.s.proxy_url(),
        "--data-binary",
        &format!("@{}", up.display()),
        &format!("{base}/up"),
    ]);
    assert_eq!((c.exit, c.status), (0, 403), "{c:?}");
    assert!(
        !t.good.saw(Clamd::MARKER),
        "the infected upload got through"
    );

    // clamd down: the zone fails closed (503), recorded unscanned.
    clamd.stop();
    let c = curl(&[
        "--cacert",
        &ca,
        "-x",
        &t.s.proxy_url(),
        "--data",
        "clean",
        &format!("{base}/late"),
    ]);
    assert_eq!((c.exit, c.status), (0, 503), "{c:?}");
    assert_eq!(c.header("sluice-rule").as_deref(), Some("inspect/malware"));
    let rec = t.s.wait_record("the unscanned upload", |r| {
        r["intercepted"] == true && r["findings"].to_string().contains("unscanned")
    });
    assert_fields(&rec, &[("verdict", "deny".into())]);
}

#[test]
fn icap_reqmod_and_respmod_see_decrypted_requests() {
    let clamd = Clamd::start();
    let icap = CIcap::start(&clamd);
    let t = setup_inspecting(
        "",
        "      icap: true\n",
        &format!(
            "  icap:\n    reqmod: {}\n    respmod: {}\n    timeout: 5s\n    preview: 1KiB\n",
            icap.url("avscan"),
            icap.url("avscan")
        ),
    );
    let mut evil = vec![b'y'; 8 * 1024];
    evil.extend_from_slice(Clamd::MARKER.as_bytes());
    t.good.set_download(&evil);
    let ca = cacert(&t.ca);
    let base = format!("https://origin.test:{}", t.good.port);

    // Clean both ways: 204 from the service, the exchange passes.
    let c = curl(&[
        "--cacert",
        &ca,
        "-x",
        &t.s.proxy_url(),
        "--data",
        "clean",
        &format!("{base}/ok"),
    ]);
    assert_eq!((c.exit, c.status), (0, 200), "{c:?}");
    assert_eq!(c.body_text(), "got 5");
    // REQMOD refuses the infected upload; the origin never gets it.
    let up = t.s.dir.path("evil.bin");
    std::fs::write(&up, &evil).unwrap();
    let c = curl(&[
        "--cacert",
        &ca,
        "-x",
        &t.s.proxy_url(),
        "--data-binary",
        &format!("@{}", up.display()),
        &format!("{base}/up"),
    ]);
    assert_eq!((c.exit, c.status), (0, 403), "{c:?}");
    assert_eq!(c.header("sluice-rule").as_deref(), Some("inspect/icap"));
    assert!(!t.good.saw(Clamd::MARKER));
    // RESPMOD refuses the infected download.
    let c = curl(&[
        "--cacert",
        &ca,
        "-x",
        &t.s.proxy_url(),
        &format!("{base}/download"),
    ]);
    assert_eq!((c.exit, c.status), (0, 403), "{c:?}");
    assert_eq!(c.header("sluice-rule").as_deref(), Some("inspect/icap"));
    assert!(!c.body_text().contains(Clamd::MARKER));
    let recs = intercepted_records(&t.s, 2, |r| r["rule"] == "inspect/icap");
    assert!(recs.iter().any(|r| r["method"] == "POST"), "{recs:#?}");
    assert!(recs.iter().any(|r| r["method"] == "GET"), "{recs:#?}");
}

#[test]
fn a_report_zone_lets_a_blocked_secret_through_an_intercepted_tunnel_and_records_it() {
    let t = setup_in_mode("report", "", "      dlp: {github: block}\n", "");
    let url = format!("https://origin.test:{}/upload", t.good.port);
    let c = curl(&[
        "--cacert",
        &cacert(&t.ca),
        "-x",
        &t.s.proxy_url(),
        "--data",
        &format!("token={GH_TOKEN}"),
        &url,
    ]);
    // Decrypted, scanned, found, and passed on: the origin got the token.
    assert_eq!((c.exit, c.status), (0, 200), "{c:?}");
    assert_eq!(c.body_text(), format!("got {}", 6 + GH_TOKEN.len()));
    assert!(t.good.saw(GH_TOKEN), "report mode must not block");
    let rec = t.s.wait_record("the reported upload", |r| {
        r["intercepted"] == true && r["rule"] == "inspect/dlp/github"
    });
    assert_fields(
        &rec,
        &[
            ("dst_host", "origin.test".into()),
            ("tls", true.into()),
            ("verdict", "deny".into()),
            ("enforced", false.into()),
            ("method", "POST".into()),
            ("status", 200.into()),
        ],
    );
    let f = finding(&rec, "github");
    assert_eq!(f["count"], 1);
    assert_eq!(f["hash"].as_str().unwrap().len(), 32, "{f}");
    t.s.assert_never_logged(GH_TOKEN);
}

/// An ICAP address where nothing listens (a port bound, then freed).
fn dead_icap() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("icap://127.0.0.1:{port}/reqmod")
}

#[test]
fn icap_down_inside_an_intercepted_tunnel_fails_closed_or_open_as_the_zone_says() {
    let top = format!("  icap:\n    reqmod: {}\n    timeout: 2s\n", dead_icap());
    for fail in ["closed", "open"] {
        let t = setup_inspecting("", &format!("      icap: true\n      fail: {fail}\n"), &top);
        let c = curl(&[
            "--cacert",
            &cacert(&t.ca),
            "-x",
            &t.s.proxy_url(),
            "--data",
            "unscanned-upload-body",
            &format!("https://origin.test:{}/up", t.good.port),
        ]);
        let rec = t.s.wait_record("the upload", |r| {
            r["intercepted"] == true && r["method"] == "POST"
        });
        assert_eq!(finding(&rec, "unscanned")["count"], 1, "{rec:#}");
        assert_fields(
            &rec,
            &[("tls", true.into()), ("dst_host", "origin.test".into())],
        );
        if fail == "closed" {
            assert_eq!((c.exit, c.status), (0, 503), "{c:?}");
            assert_eq!(c.header("sluice-rule").as_deref(), Some("inspect/icap"));
            assert!(
                !t.good.saw("unscanned-upload-body"),
                "an unscanned body got through a fail-closed zone"
            );
            assert_fields(
                &rec,
                &[
                    ("verdict", "deny".into()),
                    ("enforced", true.into()),
                    ("rule", "inspect/icap".into()),
                    ("status", 503.into()),
                ],
            );
        } else {
            assert_eq!((c.exit, c.status), (0, 200), "{c:?}");
            assert_eq!(c.body_text(), "got 21");
            assert!(t.good.saw("unscanned-upload-body"));
            assert_fields(&rec, &[("verdict", "allow".into()), ("status", 200.into())]);
        }
    }
}
