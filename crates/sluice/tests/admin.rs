//! The admin listener against the real binary: exact metrics after scripted
//! traffic (parsed by Python's `prometheus_client`), every API endpoint,
//! the live stream, the access checks, OpenAPI conformance (schemathesis),
//! and the dashboard in Chromium (Playwright).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod util;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sluice_testkit::{
    FixtureDns, Origin, RawResponse, Sluice, TempDir, connect_tunnel, connect_with_timeout, get_on,
    get_via, output_within, poll_until, random_label, send_raw, write_mmdb,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const T: Duration = Duration::from_secs(10);

/// Zone `web` for IPv4 loopback clients (enforce) and zone `lab` for `::1`
/// (report); the origin is allowed by rule `origin`, `*.blocked.test` is
/// denied by rule `blocked`, and `never-used` never matches (it expired
/// in 2020, owned by bob).
fn policy(origin: &Origin, dns: &FixtureDns) -> String {
    let port = origin.addr.port();
    format!(
        r#"dns:
  upstreams: ["{dns}"]
zones:
  - name: web
    sources: [127.0.0.0/8]
    allow:
      - cidr: 127.0.0.1/32
        ports: [{port}]
        id: origin
      - host: never.test
        ports: [443]
        id: never-used
        owner: bob
        ticket: OPS-9
        expires: "2020-01-01T00:00:00Z"
    deny:
      - host: "*.blocked.test"
        id: blocked
  - name: lab
    sources: ["::1/128"]
    mode: report
    allow:
      - cidr: 127.0.0.1/32
        ports: [{port}]
    deny:
      - host: report.test
"#,
        dns = dns.addr
    )
}

/// The proxy on both stacks (`[::]`), so `::1` clients land in zone `lab`.
fn start(origin: &Origin, dns: &FixtureDns, extra: &str) -> Sluice {
    let yaml = format!(
        "listen:\n  http: \"[::]:0\"\n  admin: 127.0.0.1:0\n{extra}{}",
        policy(origin, dns)
    );
    Sluice::start(BIN, &yaml)
}

fn proxy_v4(s: &Sluice) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], s.http.port()))
}

fn proxy_v6(s: &Sluice) -> SocketAddr {
    format!("[::1]:{}", s.http.port()).parse().unwrap()
}

/// A request to the admin listener with extra header lines.
fn admin(
    s: &Sluice,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> RawResponse {
    let addr = s.admin.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    send_raw(addr, req.as_bytes(), T)
}

fn api(s: &Sluice, path: &str) -> Value {
    let r = admin(s, "GET", path, &[], "");
    assert_eq!(r.status, Some(200), "{path}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.text()))
}

fn check_api(s: &Sluice, body: Value) -> Value {
    let r = admin(
        s,
        "POST",
        "/api/v1/check",
        &[("Content-Type", "application/json")],
        &body.to_string(),
    );
    assert_eq!(r.status, Some(200), "{body}: {}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

/// The scripted traffic: 3 allowed requests and 2 allowed tunnels to the
/// origin, 2 requests denied by `blocked`, 1 tunnel denied by the guard from
/// zone `web`, and 1 report-mode would-be denial from zone `lab`.
fn script(s: &Sluice, origin: &Origin) -> usize {
    let v4 = proxy_v4(s);
    for n in [100, 200, 300] {
        let r = get_via(v4, &format!("{}/bytes/{n}", origin.url()));
        assert_eq!(r.status, Some(200), "{}", r.text());
    }
    for _ in 0..2 {
        let mut t = connect_tunnel(v4, &origin.addr.to_string(), T).unwrap();
        let r = get_on(&mut t, &origin.addr.to_string(), "/bytes/50");
        assert_eq!(r.status, Some(200));
    }
    for h in ["a.blocked.test", "b.blocked.test"] {
        assert_eq!(get_via(v4, &format!("http://{h}/")).status, Some(403));
    }
    assert!(connect_tunnel(v4, "10.1.2.3:443", T).is_err());
    let r = get_via(
        proxy_v6(s),
        &format!("http://report.test:{}/bytes/7", origin.addr.port()),
    );
    assert_eq!(
        r.status,
        Some(200),
        "report mode lets it pass: {}",
        r.text()
    );
    9
}

// === metrics ===

/// Every sample, parsed by both of `prometheus_client`'s parsers (the
/// Prometheus text one and the OpenMetrics one), as
/// `name{label="v",...}` with labels sorted → value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    const PY: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families as prom
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
text = sys.stdin.read()
def flat(families):
    out = {}
    for f in families:
        for s in f.samples:
            labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
            out["%s{%s}" % (s.name, labels)] = s.value
    return out
print(json.dumps({"prom": flat(prom(text)), "om": flat(om(text))}))
"#;
    let mut child = Command::new("python3")
        .args(["-c", PY])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (with `pip install prometheus-client`)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics (pip install prometheus-client): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let flat = |k: &str| -> BTreeMap<String, f64> {
        v[k].as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
            .collect()
    };
    let (prom, om) = (flat("prom"), flat("om"));
    // The Prometheus text parser names a counter's `_total` sample the
    // same way; both must agree on every value.
    for (k, v) in &om {
        if let Some(p) = prom.get(k) {
            assert_eq!(p, v, "{k}: parsers disagree");
        }
    }
    om
}

#[test]
fn metrics_count_exactly_what_passed() {
    let origin = Origin::start("127.0.0.1");
    let dns = FixtureDns::stub(&[("report.test", &["127.0.0.1"])]);
    let s = start(&origin, &dns, "");
    let flows = script(&s, &origin);
    let records = s.wait_records(flows);
    assert_eq!(records.len(), flows, "{records:#?}");
    let m = parse_metrics(&s.admin_get("/metrics").text());
    assert_counts_match_records(&m, &records, flows);
    let hash = assert_policy_metrics(&s, &m);
    assert_reloads_counted(&s, &hash);
    assert_grafana_queries_are_exposed(&s);
}

/// [`script`]'s traffic in the flow families of metrics `m`, by listener,
/// zone, verdict, status class, rule and bytes: exactly what its flow
/// `records` say.
fn assert_counts_match_records(m: &BTreeMap<String, f64>, records: &[Value], flows: usize) {
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    let flow = |family: &str, zone: &str, verdict: &str, enforced: bool| {
        get(&format!(
            r#"sluice_{family}_total{{enforced="{enforced}",listener="http",verdict="{verdict}",zone="{zone}"}}"#
        ))
    };
    assert_eq!(flow("requests", "web", "allow", true), 3.0, "{m:#?}");
    assert_eq!(flow("requests", "web", "deny", true), 2.0);
    assert_eq!(flow("requests", "lab", "deny", false), 1.0);
    assert_eq!(flow("tunnels", "web", "allow", true), 2.0);
    assert_eq!(flow("tunnels", "web", "deny", true), 1.0);
    // Every HTTP answer is counted by class, as the records give them.
    for class in 1..=5u64 {
        let n = records
            .iter()
            .filter(|r| r["status"].as_u64().is_some_and(|s| s / 100 == class))
            .count();
        assert_eq!(
            get(&format!(
                r#"sluice_http_responses_total{{class="{class}xx"}}"#
            )),
            n as f64,
            "{class}xx"
        );
    }
    assert_eq!(get(r#"sluice_rule_hits_total{rule="origin"}"#), 5.0);
    assert_eq!(get(r#"sluice_rule_hits_total{rule="blocked"}"#), 2.0);
    assert!(
        !m.keys()
            .any(|k| k.contains("web/") || k.contains("guard/") || k.contains("lab/")),
        "positional and guard ids stay out of labels: {m:#?}"
    );
    // Bytes by zone equal the sums over the flow records.
    for zone in ["web", "lab"] {
        for dir in ["out", "in"] {
            let sum: u64 = records
                .iter()
                .filter(|r| r["zone"] == zone)
                .map(|r| r[format!("bytes_{dir}")].as_u64().unwrap())
                .sum();
            assert_eq!(
                get(&format!(r#"sluice_bytes_{dir}_total{{zone="{zone}"}}"#)),
                sum as f64,
                "{zone} bytes {dir}"
            );
        }
    }
    assert_eq!(get(r#"sluice_active_tunnels{listener="http"}"#), 0.0);
    assert_eq!(get("sluice_flow_records_dropped_total{}"), 0.0);
    assert!(get("sluice_decision_duration_seconds_count{}") >= flows as f64);
    // Absolute-form requests share pooled origin connections: fewer dials.
    assert!(
        get("sluice_connect_duration_seconds_count{}") >= 3.0,
        "{m:#?}"
    );
}

/// The running policy's metrics in `m`, and no client address in any
/// label; the policy's hash.
fn assert_policy_metrics(s: &Sluice, m: &BTreeMap<String, f64>) -> String {
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    let hash = s.readyz().1["policy_hash"].as_str().unwrap().to_owned();
    assert_eq!(get(&format!(r#"sluice_policy_info{{hash="{hash}"}}"#)), 1.0);
    assert_eq!(get("sluice_config_last_reload_success{}"), 1.0);
    assert!(get("sluice_config_loaded_timestamp_seconds{}") > 1.6e9);
    assert!(
        m.keys()
            .all(|k| !k.contains("127.0.0.1") && !k.contains("::1"))
    );
    hash
}

/// A rejected reload, then a good one, in the reload metrics; the policy
/// hash (`hash` before) changes with the file.
fn assert_reloads_counted(s: &Sluice, hash: &str) {
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, format!("{text}\nbogus_key: 1\n")).unwrap();
    s.signal("HUP");
    assert!(poll_until(T, || {
        s.metric(r#"sluice_config_reloads_total{result="failure"}"#) >= 1.0
    }));
    assert_eq!(s.metric("sluice_config_last_reload_success"), 0.0);
    std::fs::write(&s.config, format!("{text}\n# edited\n")).unwrap();
    s.signal("HUP");
    assert!(poll_until(T, || {
        s.metric(r#"sluice_config_reloads_total{result="success"}"#) >= 1.0
    }));
    let m = parse_metrics(&s.admin_get("/metrics").text());
    assert_eq!(m["sluice_config_last_reload_success{}"], 1.0);
    let infos: Vec<_> = m
        .keys()
        .filter(|k| k.starts_with("sluice_policy_info"))
        .collect();
    assert_eq!(infos.len(), 1, "only the running policy's hash: {infos:?}");
    assert!(!infos[0].contains(hash), "the hash changed with the file");
}

/// Every metric the Grafana dashboard queries exists; the dashboard
/// filters by instance and shows the policy hash.
fn assert_grafana_queries_are_exposed(s: &Sluice) {
    let exposed = s.admin_get("/metrics").text();
    let grafana =
        std::fs::read_to_string(util::workspace_root().join("deploy/grafana/sluice.json")).unwrap();
    let grafana: Value = serde_json::from_str(&grafana).unwrap();
    let mut queried = 0;
    for panel in grafana["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(family) = name.strip_prefix("sluice_") {
                    let family = ["_total", "_bucket", "_count", "_sum"]
                        .iter()
                        .fold(family, |f, s| f.strip_suffix(s).unwrap_or(f));
                    // No DNS listener here: that family has no samples yet.
                    assert!(
                        family == "dns_queries"
                            || exposed.contains(&format!("# TYPE sluice_{family} ")),
                        "grafana queries {name}, not exposed"
                    );
                    queried += 1;
                }
            }
        }
    }
    assert!(queried >= 14, "{queried}");
    // One instance variable filters every query; the policy panel shows
    // the hash label, not the constant 1.
    let vars = grafana["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["name"] == "instance"), "{vars:?}");
    for panel in grafana["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            assert!(expr.contains(r#"instance=~"$instance""#), "{expr}");
        }
    }
    let policy = &grafana["panels"][0];
    assert_eq!(policy["title"], "Policy");
    assert_eq!(policy["options"]["reduceOptions"]["fields"], "/^hash$/");
}

/// Before any traffic, every zone × verdict series is there at 0, with
/// the build and process families; then a failed login, a dial that
/// fails to resolve and a connection past the per-source cap are counted.
#[test]
fn metrics_exist_from_start_and_count_failures() {
    let origin = Origin::start("127.0.0.1");
    let dns = FixtureDns::stub(&[]);
    let hash = sluice_testkit::argon2_hash("right");
    let staff = "zones:\n  - name: staff\n    users: [alice]\n    allow:\n      - host: nowhere.test\n        ports: [80]\n";
    let yaml = format!(
        "listen:\n  http: 127.0.0.1:0\n  socks5: 127.0.0.1:0\n  admin: 127.0.0.1:0\n\
         limits:\n  max_connections_per_source: 3\n\
         users:\n  - name: alice\n    password_hash: \"{hash}\"\n{}",
        policy(&origin, &dns).replace("zones:\n", staff)
    );
    let s = Sluice::start(BIN, &yaml);
    let m = parse_metrics(&s.admin_get("/metrics").text());
    for (listener, zone, verdict, enforced) in [
        ("http", "web", "allow", true),
        ("http", "web", "deny", true),
        ("socks5", "web", "deny", true),
        ("http", "lab", "deny", false),
        ("socks5", "lab", "deny", false),
        ("http", "staff", "allow", true),
    ] {
        let k = format!(
            r#"sluice_tunnels_total{{enforced="{enforced}",listener="{listener}",verdict="{verdict}",zone="{zone}"}}"#
        );
        assert_eq!(m.get(&k), Some(&0.0), "{k} in {m:#?}");
    }
    let k = r#"sluice_requests_total{enforced="true",listener="http",verdict="deny",zone="web"}"#;
    assert_eq!(m.get(k), Some(&0.0), "{m:#?}");
    assert_eq!(m.get(r#"sluice_bytes_out_total{zone="lab"}"#), Some(&0.0));
    for k in [
        r#"sluice_dial_failures_total{kind="resolve"}"#,
        r#"sluice_http_responses_total{class="4xx"}"#,
        r#"sluice_connections_rejected_total{limit="max_connections_per_source"}"#,
        r#"sluice_auth_failures_total{listener="socks5"}"#,
    ] {
        assert_eq!(m.get(k), Some(&0.0), "{k} in {m:#?}");
    }
    let build: Vec<_> = m
        .iter()
        .filter(|(k, _)| k.starts_with("sluice_build_info"))
        .collect();
    assert_eq!(build.len(), 1, "{build:?}");
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        build[0].0.contains(&format!(r#"version="{version}""#)) && build[0].0.contains("commit="),
        "{build:?}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = m["process_start_time_seconds{}"];
    assert!((now - started).abs() < 120.0, "{started} vs {now}");
    assert!(m["process_open_fds{}"] >= 5.0, "listeners and stdio");
    assert!(m["process_max_fds{}"] >= m["process_open_fds{}"]);
    assert!(m["process_resident_memory_bytes{}"] > 1e6);
    assert!(m.contains_key("process_cpu_seconds_total{}"), "{m:#?}");

    // A wrong password, a name that does not resolve, and a fourth
    // connection from one address past max_connections_per_source: 3.
    let v4 = proxy_v4(&s);
    let auth = "Proxy-Authorization: Basic YWxpY2U6d3Jvbmc=\r\n"; // alice:wrong
    let r = send_raw(
        v4,
        format!("GET http://x.test/ HTTP/1.1\r\nHost: x.test\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
        T,
    );
    assert_eq!(r.status, Some(407), "{}", r.text());
    let good = "Proxy-Authorization: Basic YWxpY2U6cmlnaHQ=\r\n"; // alice:right
    let r = send_raw(
        v4,
        format!("GET http://nowhere.test/ HTTP/1.1\r\nHost: nowhere.test\r\n{good}Connection: close\r\n\r\n")
            .as_bytes(),
        T,
    );
    assert_eq!(r.status, Some(502), "{}", r.text());
    let held: Vec<_> = (0..3).map(|_| connect_with_timeout(v4, T)).collect();
    assert!(poll_until(T, || s.metric(
        r#"sluice_connections_rejected_total{limit="max_connections_per_source"}"#
    ) >= 1.0
        || {
            // The fourth is closed at accept: the client reads EOF.
            let mut c = connect_with_timeout(v4, T);
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = c.read(&mut [0u8; 1]);
            false
        }));
    drop(held);
    s.wait_records(2);
    assert_eq!(
        s.metric(r#"sluice_auth_failures_total{listener="http"}"#),
        1.0
    );
    assert_eq!(
        s.metric(r#"sluice_dial_failures_total{kind="resolve"}"#),
        1.0
    );
    assert_eq!(s.metric(r#"sluice_http_responses_total{class="4xx"}"#), 1.0);
    assert_eq!(s.metric(r#"sluice_http_responses_total{class="5xx"}"#), 1.0);
}

// === API ===

#[test]
fn api_endpoints_answer_with_filters() {
    let origin = Origin::start("127.0.0.1");
    let dns = FixtureDns::stub(&[("report.test", &["127.0.0.1"])]);
    let s = start(
        &origin,
        &dns,
        "admin:\n  recent_flows: 100\n  stale_after: 1h\n",
    );
    let n = script(&s, &origin);
    s.wait_records(n);
    assert!(poll_until(T, || api(&s, "/api/v1/flows")["flows"]
        .as_array()
        .unwrap()
        .len()
        == n));

    let hosts = |v: &Value, key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["dst_host"].as_str().unwrap_or("-").to_owned())
            .collect()
    };
    let flows = api(&s, "/api/v1/flows");
    let first = &flows["flows"][0];
    assert_eq!(first["zone"], "lab", "newest first: {first}");
    assert_eq!(first["enforced"], false);
    assert_eq!(
        hosts(&api(&s, "/api/v1/flows?host=BLOCKED&verdict=deny"), "flows"),
        ["b.blocked.test", "a.blocked.test"]
    );
    assert_eq!(
        api(&s, "/api/v1/flows?zone=lab")["flows"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        api(&s, "/api/v1/flows?limit=2")["flows"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        api(&s, "/api/v1/flows?verdict=allow&zone=web")["flows"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    let future = "2999-01-01T00:00:00Z";
    assert!(
        api(&s, &format!("/api/v1/flows?since={future}"))["flows"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        api(
            &s,
            &format!("/api/v1/flows?until={future}&since=2000-01-01T00:00:00%2B01:00")
        )["flows"]
            .as_array()
            .unwrap()
            .len(),
        n
    );
    for bad in [
        "/api/v1/flows?verdict=maybe",
        "/api/v1/flows?limit=0",
        "/api/v1/flows?limit=1001",
        "/api/v1/flows?since=yesterday",
        "/api/v1/flows?colour=red",
        "/api/v1/flows?limit=1&limit=2",
        "/api/v1/top?by=luck",
        "/api/v1/top?window=5x",
        "/api/v1/top?window=0s",
        "/api/v1/top?window=-5",
        "/api/v1/top?window=m",
        "/api/v1/rules?x=1",
    ] {
        let r = admin(&s, "GET", bad, &[], "");
        assert_eq!(r.status, Some(400), "{bad}: {}", r.text());
        let e: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(e["error"].as_str().is_some_and(|m| !m.is_empty()), "{bad}");
    }

    // Denials: enforced and report-mode, newest first, with rule and reason.
    let d = api(&s, "/api/v1/denials");
    let d = d["denials"].as_array().unwrap();
    assert_eq!(d.len(), 4, "{d:#?}");
    assert_eq!(d[0]["rule"], "lab/deny/1");
    assert_eq!(d[3]["rule"], "blocked");
    assert!(d[3]["reason"].as_str().unwrap().contains("blocked"));
    assert_eq!(
        api(&s, "/api/v1/denials?zone=web&host=10.1")["denials"][0]["rule"],
        "guard/special-address"
    );

    // Top: per zone, sources are addresses without ports.
    let top = api(&s, "/api/v1/top?by=bytes_out&limit=1");
    assert_eq!(top["by"], "bytes_out");
    let zones = top["zones"].as_array().unwrap();
    let names: Vec<_> = zones.iter().map(|z| z["zone"].as_str().unwrap()).collect();
    assert_eq!(names, ["lab", "web"]);
    let web = &zones[1];
    assert_eq!(web["totals"]["flows"], 8);
    assert_eq!(web["totals"]["denied"], 3);
    assert_eq!(web["sources"][0]["key"], "127.0.0.1");
    assert_eq!(web["destinations"].as_array().unwrap().len(), 1);
    assert_eq!(zones[0]["sources"][0]["key"], "::1");
    let top = api(&s, "/api/v1/top?zone=web&window=60");
    assert_eq!(top["window_seconds"], 60);
    assert_eq!(top["zones"].as_array().unwrap().len(), 1);
    // `window` as a duration; `by=bytes` ranks by both directions.
    for (w, secs) in [("5m", 300), ("90s", 90), ("1h", 3600), ("2d", 3600)] {
        let top = api(&s, &format!("/api/v1/top?window={w}"));
        assert_eq!(top["window_seconds"], secs, "{w} (capped at admin.window)");
    }
    for by in ["flows", "bytes", "bytes_out", "bytes_in"] {
        assert_eq!(api(&s, &format!("/api/v1/top?by={by}"))["by"], by);
    }
    let top = api(&s, "/api/v1/top?by=bytes&zone=web");
    let sources = top["zones"][0]["sources"].as_array().unwrap();
    assert_eq!(sources[0]["key"], "127.0.0.1", "{top}");

    // Every timestamp the API returns is RFC 3339 UTC with milliseconds.
    let ms = |v: &str| {
        let b = v.as_bytes();
        b.len() == 24
            && v.ends_with('Z')
            && b[10] == b'T'
            && b[19] == b'.'
            && b[20..23].iter().all(u8::is_ascii_digit)
            && time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                .is_ok()
    };
    fn times<'a>(v: &'a Value, out: &mut Vec<(String, &'a str)>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match x.as_str() {
                        Some(t) if ["ts", "start", "last_hit"].contains(&k.as_str()) => {
                            out.push((k.clone(), t));
                        }
                        _ => times(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| times(x, out)),
            _ => {}
        }
    }
    let mut seen = 0;
    for path in [
        "/api/v1/flows",
        "/api/v1/denials",
        "/api/v1/traffic",
        "/api/v1/rules",
        "/api/v1/alerts",
    ] {
        let v = api(&s, path);
        let mut found = Vec::new();
        times(&v, &mut found);
        for (k, t) in &found {
            assert!(ms(t), "{path}: {k} = {t}");
        }
        seen += found.len();
    }
    assert!(seen > 60, "{seen}");

    // Traffic: 60 buckets, the newest holds the bytes.
    let t = api(&s, "/api/v1/traffic");
    let buckets = t["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 60);
    let out: u64 = buckets
        .iter()
        .filter_map(|b| b["zones"]["web"]["bytes_out"].as_u64())
        .sum();
    assert!(out > 0, "{t}");

    // Rules: every configured rule, hits and staleness; built-ins apart.
    let rules = api(&s, "/api/v1/rules");
    let row = |id: &str| -> Value {
        rules["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {rules}"))
            .clone()
    };
    assert_eq!(row("origin")["hits"], 5);
    assert_eq!(row("origin")["stale"], false);
    assert_eq!(row("origin")["explicit_id"], true);
    assert_eq!(row("blocked")["kind"], "deny");
    assert_eq!(row("never-used")["hits"], 0);
    assert_eq!(row("never-used")["stale"], true);
    assert_eq!(row("never-used")["last_hit"], Value::Null);
    assert_eq!(row("never-used")["owner"], "bob");
    assert_eq!(row("never-used")["ticket"], "OPS-9");
    assert_eq!(row("never-used")["expires"], "2020-01-01T00:00:00Z");
    assert_eq!(row("never-used")["expired"], true);
    assert_eq!(row("never-used")["expiring_soon"], false);
    assert_eq!(row("origin")["expired"], false);
    assert_eq!(row("origin")["owner"], Value::Null);
    assert_eq!(row("lab/allow/1")["zone"], "lab");
    assert_eq!(rules["rules"].as_array().unwrap().len(), 5);
    assert_eq!(rules["stale_after_seconds"], 3600);
    let other = rules["other"].as_array().unwrap();
    assert_eq!(other.len(), 1, "{other:?}");
    assert_eq!(other[0]["id"], "guard/special-address");

    // Alerts: none from this traffic; every filter checked (the DNS tests
    // raise real ones).
    assert_eq!(api(&s, "/api/v1/alerts"), json!({"alerts": []}));
    assert_eq!(
        api(
            &s,
            "/api/v1/alerts?kind=dns-tunnel&severity=info&zone=web&since=2025-01-31T12:00:00Z&limit=5"
        ),
        json!({"alerts": []})
    );
    for (query, says) in [
        (
            "kind=tunnel",
            "`kind` must be one of volume, new-destination",
        ),
        (
            "severity=high",
            "`severity` must be `info`, `warning` or `critical`",
        ),
        ("since=yesterday", "`since` must be an RFC 3339 time"),
        ("limit=0", "`limit` must be a whole number from 1 to 1000"),
        ("verdict=deny", "unknown query parameter `verdict`"),
    ] {
        let r = admin(&s, "GET", &format!("/api/v1/alerts?{query}"), &[], "");
        assert_eq!(r.status, Some(400), "{query}: {}", r.text());
        assert!(r.text().contains(says), "{query}: {}", r.text());
    }

    // 404 and 405.
    assert_eq!(
        admin(&s, "GET", "/api/v1/nothing", &[], "").status,
        Some(404)
    );
    let r = admin(&s, "DELETE", "/api/v1/flows", &[], "");
    assert_eq!(r.status, Some(405));
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_eq!(admin(&s, "GET", "/api/v1/check", &[], "").status, Some(405));
}

#[test]
fn config_is_redacted() {
    let dir = sluice_testkit::TempDir::new("admin-config");
    let token = dir.path("token");
    std::fs::write(&token, "tok-123\n").unwrap();
    let yaml = format!(
        "admin:\n  token_file: {}\nusers:\n  - name: ci\n    password_hash: \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"\nzones:\n  - name: ci\n    users: [ci]\n",
        token.display()
    );
    let s = Sluice::start(BIN, &yaml);
    let r = admin(
        &s,
        "GET",
        "/api/v1/config",
        &[("Authorization", "Bearer tok-123")],
        "",
    );
    assert_eq!(r.status, Some(200));
    let text = r.text();
    assert!(!text.contains("argon2"), "{text}");
    assert!(!text.contains("tok-123"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["config"]["users"][0]["password_hash"], "<redacted>");
    assert_eq!(v["config"]["zones"][0]["name"], "ci");
    assert_eq!(v["config"]["admin"]["recent_flows"], 5000);
}

#[test]
fn check_endpoint_matches_the_command_line() {
    let origin = Origin::start("127.0.0.1");
    let dns = FixtureDns::stub(&[
        ("report.test", &["127.0.0.1"]),
        ("two.test", &["127.0.0.1", "10.0.0.1"]),
    ]);
    let s = start(&origin, &dns, "");
    let port = origin.addr.port();
    let cases: Vec<(Value, Vec<String>)> = vec![
        (
            json!({"from": "127.0.0.1", "target": "x.blocked.test:443"}),
            vec![],
        ),
        (
            json!({"from": "127.0.0.1", "target": format!("127.0.0.1:{port}")}),
            vec![],
        ),
        (
            json!({"from": "127.0.0.1", "target": "https://example.com/"}),
            vec![],
        ),
        (
            json!({"from": "127.0.0.1", "target": "example.com:443", "addrs": ["127.0.0.1", "93.184.215.14"]}),
            vec![
                "--addr".into(),
                "127.0.0.1".into(),
                "--addr".into(),
                "93.184.215.14".into(),
            ],
        ),
        (
            json!({"from": "::1", "target": "report.test:443", "user": null}),
            vec![],
        ),
        (
            json!({"from": "192.0.2.1", "target": "example.com:443"}),
            vec![],
        ),
        (
            json!({"from": "127.0.0.1", "target": "bad_host!:443"}),
            vec![],
        ),
    ];
    for (body, extra) in cases {
        let got = check_api(&s, body.clone());
        let mut args = vec![
            "check".to_owned(),
            "-c".into(),
            s.config.display().to_string(),
            "--json".into(),
            "--from".into(),
            body["from"].as_str().unwrap().into(),
        ];
        args.extend(extra);
        args.push(body["target"].as_str().unwrap().into());
        let out = util::sluice(&args);
        let want: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", util::stderr(&out)));
        assert_eq!(got, want, "{body}");
    }
    // resolve: Sluice's own resolver; an address of two fails the guard.
    let got = check_api(
        &s,
        json!({"from": "127.0.0.1", "target": format!("two.test:{port}"), "resolve": true}),
    );
    assert_eq!(got["allowed_addrs"], json!(["127.0.0.1"]));
    assert_eq!(got["rejected_addrs"][0]["rule"], "guard/special-address");
    for (body, code) in [
        (r#"{"from": "nope", "target": "a.test:1"}"#, 400),
        (r#"{"from": "127.0.0.1"}"#, 400),
        (r#"{"from": "127.0.0.1", "target": "a.test"}"#, 400),
        (
            r#"{"from": "127.0.0.1", "target": "a.test:1", "extra": 1}"#,
            400,
        ),
        (
            r#"{"from": "127.0.0.1", "target": "a.test:1", "addrs": ["x"]}"#,
            400,
        ),
        (
            r#"{"from": "127.0.0.1", "target": "nxdomain.test:1", "resolve": true}"#,
            422,
        ),
        ("not json", 400),
    ] {
        let r = admin(
            &s,
            "POST",
            "/api/v1/check",
            &[("Content-Type", "application/json")],
            body,
        );
        assert_eq!(r.status, Some(code), "{body}: {}", r.text());
    }
    let r = admin(
        &s,
        "POST",
        "/api/v1/check",
        &[("Content-Type", "text/plain")],
        "{}",
    );
    assert_eq!(r.status, Some(415));
    let big = format!(
        r#"{{"from": "127.0.0.1", "target": "{}"}}"#,
        "a".repeat(70_000)
    );
    let r = admin(
        &s,
        "POST",
        "/api/v1/check",
        &[("Content-Type", "application/json")],
        &big,
    );
    assert_eq!(r.status, Some(413));
}

// === live stream ===

/// Reads the stream until `pred` holds for an event's data or time runs out.
fn read_events(s: &mut std::net::TcpStream, until: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + T;
    let mut buf = String::new();
    let mut events = Vec::new();
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline && !until(&events) {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => buf.push_str(&String::from_utf8_lossy(&chunk[..k])),
            Err(_) => continue,
        }
        while let Some(i) = buf.find("\n\n") {
            let ev: String = buf.drain(..i + 2).collect();
            if ev.contains("event: flow") {
                let data = ev.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                events.push(serde_json::from_str(data).unwrap());
            }
        }
    }
    events
}

fn open_stream(s: &Sluice, query: &str) -> std::net::TcpStream {
    open_stream_with(s, query, "")
}

/// [`open_stream`] with extra header lines (`Name: value\r\n` each).
fn open_stream_with(s: &Sluice, query: &str, headers: &str) -> std::net::TcpStream {
    let addr = s.admin.unwrap();
    let mut c = connect_with_timeout(addr, Duration::from_millis(200));
    write!(
        c,
        "GET /api/v1/flows/stream{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{headers}\r\n"
    )
    .unwrap();
    // Headers and the `retry`/`connected` preamble arrive at once.
    let deadline = Instant::now() + T;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !String::from_utf8_lossy(&head).contains(": connected") && Instant::now() < deadline {
        if let Ok(1) = c.read(&mut b) {
            head.push(b[0]);
        }
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    c
}

#[test]
fn stream_sends_new_flows_as_they_finish() {
    let origin = Origin::start("127.0.0.1");
    let dns = FixtureDns::stub(&[]);
    let s = start(&origin, &dns, "");
    let mut all = open_stream(&s, "");
    let mut denials = open_stream(&s, "?verdict=deny&host=blocked");
    let v4 = proxy_v4(&s);
    assert_eq!(
        get_via(v4, &format!("{}/bytes/5", origin.url())).status,
        Some(200)
    );
    assert_eq!(get_via(v4, "http://z.blocked.test/").status, Some(403));

    let events = read_events(&mut all, |e| e.len() >= 2);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["rule"], "origin");
    assert_eq!(events[0]["bytes_in"].as_u64().map(|b| b >= 5), Some(true));
    assert_eq!(events[1]["rule"], "blocked");
    let events = read_events(&mut denials, |e| !e.is_empty());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["dst_host"], "z.blocked.test");

    let r = admin(&s, "GET", "/api/v1/flows/stream?verdict=nah", &[], "");
    assert_eq!(r.status, Some(400));
}

/// Every event of a stream as `(event, id, data)` until `n` flow events
/// came or time runs out.
fn raw_events(s: &mut std::net::TcpStream, n: usize) -> Vec<(String, String, String)> {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + T;
    let mut buf = String::new();
    let mut out: Vec<(String, String, String)> = Vec::new();
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline && out.iter().filter(|e| e.0 == "flow").count() < n {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => buf.push_str(&String::from_utf8_lossy(&chunk[..k])),
            Err(_) => continue,
        }
        while let Some(i) = buf.find("\n\n") {
            let ev: String = buf.drain(..i + 2).collect();
            let field = |name: &str| {
                ev.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or_default()
                    .to_owned()
            };
            let event = field("event: ");
            if !event.is_empty() {
                out.push((event, field("id: "), field("data: ")));
            }
        }
    }
    out
}

/// Event ids are 1, 2, … since start; a client back with `Last-Event-ID`
/// first gets what it missed from the ring (told how many the ring lost),
/// then live flows, none twice.
#[test]
fn stream_ids_are_a_sequence_and_last_event_id_resumes_from_the_ring() {
    let origin = Origin::start("127.0.0.1");
    let dns = FixtureDns::stub(&[]);
    let s = start(&origin, &dns, "admin:\n  recent_flows: 3\n");
    let v4 = proxy_v4(&s);
    let fetch = |n: u32| {
        let r = get_via(v4, &format!("{}/bytes/{n}", origin.url()));
        assert_eq!(r.status, Some(200));
    };
    let bytes = |data: &str| -> u64 {
        serde_json::from_str::<Value>(data).unwrap()["bytes_in"]
            .as_u64()
            .unwrap()
    };
    let mut first = open_stream(&s, "");
    fetch(1);
    fetch(2);
    let ev = raw_events(&mut first, 2);
    let ids: Vec<&str> = ev.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(ids, ["1", "2"], "{ev:?}");
    drop(first);

    // Missed while away: 3 and 4.
    fetch(3);
    fetch(4);
    s.wait_records(4);
    let mut back = open_stream_with(&s, "", "Last-Event-ID: 2\r\n");
    let ev = raw_events(&mut back, 2);
    let ids: Vec<&str> = ev.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(ids, ["3", "4"], "{ev:?}");
    let sizes: Vec<u64> = ev.iter().map(|e| bytes(&e.2)).collect();
    assert!(sizes[0] < sizes[1], "in order: {sizes:?}");
    fetch(5);
    let ev = raw_events(&mut back, 1);
    assert_eq!(ev.len(), 1, "no repeat, then the live one: {ev:?}");
    assert_eq!(ev[0].1, "5");

    // The ring (3 flows) lost 1 and 2: said so, then 3, 4, 5.
    let mut old = open_stream_with(&s, "", "Last-Event-ID: 0\r\n");
    let ev = raw_events(&mut old, 3);
    assert_eq!(ev[0].0, "lagged", "{ev:?}");
    assert_eq!(ev[0].2, r#"{"skipped":2}"#);
    let ids: Vec<&str> = ev[1..].iter().map(|e| e.1.as_str()).collect();
    assert_eq!(ids, ["3", "4", "5"]);

    // An id from another process (beyond the last) is a fresh stream.
    let mut fresh = open_stream_with(&s, "", "Last-Event-ID: 999\r\n");
    fetch(6);
    let ev = raw_events(&mut fresh, 1);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].1, "6");
}

/// `admin.max_streams` caps live streams: one more gets 503 with a JSON
/// error, a closed stream frees its place, and a reload changes the cap.
#[test]
fn streams_beyond_max_streams_get_503_and_the_cap_reloads() {
    let origin = Origin::start("127.0.0.1");
    let dns = FixtureDns::stub(&[]);
    let s = start(&origin, &dns, "admin:\n  max_streams: 2\n");
    let first = open_stream(&s, "");
    let mut second = open_stream(&s, "?verdict=deny");
    let r = admin(&s, "GET", "/api/v1/flows/stream", &[], "");
    assert_eq!(r.status, Some(503), "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("admin.max_streams is 2"),
        "{body}"
    );
    // Other endpoints are not capped.
    assert_eq!(admin(&s, "GET", "/api/v1/flows", &[], "").status, Some(200));

    // A client that leaves frees its place once the server notices (at the
    // next writes to the closed socket).
    drop(first);
    let v4 = proxy_v4(&s);
    let freed = poll_until(T, || {
        get_via(v4, "http://z.blocked.test/");
        // HEAD: the answer of a GET without its endless body.
        admin(&s, "HEAD", "/api/v1/flows/stream", &[], "").status == Some(200)
    });
    assert!(freed, "the closed stream's place was never freed");
    assert_eq!(read_events(&mut second, |e| !e.is_empty()).len(), 1);

    // A reload raises the cap for new streams.
    let _again = open_stream(&s, "");
    assert_eq!(
        admin(&s, "GET", "/api/v1/flows/stream", &[], "").status,
        Some(503)
    );
    let text = std::fs::read_to_string(&s.config).unwrap();
    let raised = text.replace("max_streams: 2", "max_streams: 3");
    assert_ne!(raised, text);
    let tmp = s.config.with_extension("tmp");
    std::fs::write(&tmp, raised).unwrap();
    std::fs::rename(&tmp, &s.config).unwrap();
    s.signal("HUP");
    assert!(s.wait_log("SIGHUP", T));
    let _third = open_stream(&s, "");
}

/// Probes answer while every other admin connection is taken: the
/// largest number of live streams, plus more idle connections (silent, and
/// keep-alives after a request) than the admin connection cap.
#[test]
fn probes_answer_while_streams_and_idle_connections_fill_admin() {
    let origin = Origin::start("127.0.0.1");
    let dns = FixtureDns::stub(&[]);
    let s = start(&origin, &dns, "admin:\n  max_streams: 32\n");
    let addr = s.admin.unwrap();
    let mut streams: Vec<_> = (0..32).map(|_| open_stream(&s, "")).collect();
    let r = admin(&s, "GET", "/api/v1/flows/stream", &[], "");
    assert_eq!(r.status, Some(503), "{}", r.text());
    let mut idle = Vec::new();
    for _ in 0..20 {
        let mut c = connect_with_timeout(addr, T);
        write!(c, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        let mut b = [0u8; 256];
        assert!(c.read(&mut b).unwrap() > 0);
        idle.push(c);
    }
    for _ in 0..140 {
        idle.push(connect_with_timeout(addr, T));
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        let url = format!("http://{addr}{path}");
        let started = Instant::now();
        let c = sluice_testkit::curl(&["--max-time", "2", &url]);
        assert_eq!(c.status, 200, "{path}: curl exit {} {}", c.exit, c.stderr);
        assert!(started.elapsed() < Duration::from_secs(2), "{path}");
    }
    // The streams were not closed to make room: each still gets flows.
    assert_eq!(
        get_via(proxy_v4(&s), "http://z.blocked.test/").status,
        Some(403)
    );
    for st in &mut streams {
        assert_eq!(read_events(st, |e| !e.is_empty()).len(), 1);
    }
    drop(idle);
}

/// Reads a stream until `want` flows are accounted for (received, or
/// skipped and said so by `event: lagged`) or time runs out; returns
/// (received, skipped).
fn count_events(s: &mut std::net::TcpStream, want: u64, within: Duration) -> (u64, u64) {
    let deadline = Instant::now() + within;
    let (mut flows, mut skipped) = (0u64, 0u64);
    let mut buf = String::new();
    let mut chunk = vec![0u8; 64 * 1024];
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while flows + skipped < want && Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => buf.push_str(&String::from_utf8_lossy(&chunk[..k])),
            Err(_) => continue,
        }
        while let Some(i) = buf.find("\n\n") {
            let ev: String = buf.drain(..i + 2).collect();
            if ev.contains("event: flow") {
                flows += 1;
            } else if let Some(n) = ev.split("\"skipped\":").nth(1) {
                skipped += n
                    .trim_end_matches(|c: char| !c.is_ascii_digit())
                    .parse::<u64>()
                    .unwrap();
            }
        }
    }
    (flows, skipped)
}

/// Load through the proxy with 64 live streams open: every request
/// succeeds, and every subscriber accounts for every flow (received, or
/// skipped and told so). Rates are measured by bench/sse-subscribers.sh,
/// not asserted here.
#[test]
fn streams_keep_up_with_load_and_never_fail_requests() {
    const REQUESTS: u64 = 2000;
    const CLIENTS: u64 = 4;
    let origin = Origin::start("127.0.0.1");
    let dns = FixtureDns::stub(&[]);
    let s = start(&origin, &dns, "admin:\n  max_streams: 64\n");
    let readers: Vec<_> = (0..64)
        .map(|_| {
            let mut st = open_stream(&s, "");
            std::thread::spawn(move || count_events(&mut st, REQUESTS, Duration::from_secs(60)))
        })
        .collect();
    let v4 = proxy_v4(&s);
    let url = format!("{}/bytes/5", origin.url());
    let host = origin.addr.to_string();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, host) = (url.clone(), host.clone());
            std::thread::spawn(move || {
                let mut c = connect_with_timeout(v4, T);
                (0..REQUESTS / CLIENTS)
                    .filter(|_| get_on(&mut c, &host, &url).status == Some(200))
                    .count() as u64
            })
        })
        .collect();
    let ok: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(ok, REQUESTS, "requests that failed with streams open");
    for (i, r) in readers.into_iter().enumerate() {
        let (flows, skipped) = r.join().unwrap();
        assert!(flows > 0, "subscriber {i} got no flows");
        assert_eq!(
            flows + skipped,
            REQUESTS,
            "subscriber {i}: {flows} + {skipped} skipped"
        );
    }
}

// === access ===

#[test]
fn admin_checks_token_host_and_origin() {
    let dir = sluice_testkit::TempDir::new("admin-token");
    let token = dir.path("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let yaml = format!(
        "admin:\n  token_file: {}\n  hosts: [sluice.internal]\n  open_paths: [/healthz, /readyz, /metrics]\nzones:\n  - name: local\n    sources: [127.0.0.0/8]\n",
        token.display()
    );
    let s = Sluice::start(BIN, &yaml);
    let auth = ("Authorization", "Bearer s3cret-token");
    let status =
        |method: &str, path: &str, h: &[(&str, &str)]| admin(&s, method, path, h, "").status;

    // The token.
    for path in [
        "/api/v1/flows",
        "/api/v1/rules",
        "/api/v1/config",
        "/api/v1/flows/stream",
    ] {
        let r = admin(&s, "GET", path, &[], "");
        assert_eq!(r.status, Some(401), "{path}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert_eq!(
            status("GET", path, &[("Authorization", "Bearer wrong-token!")]),
            Some(401)
        );
    }
    assert_eq!(status("GET", "/api/v1/rules", &[auth]), Some(200));
    let check = admin(
        &s,
        "POST",
        "/api/v1/check",
        &[("Content-Type", "application/json")],
        r#"{"from":"127.0.0.1","target":"a.test:443"}"#,
    );
    assert_eq!(check.status, Some(401));
    // Probes and metrics are open here by configuration; so is the page.
    for path in ["/healthz", "/readyz", "/metrics", "/", "/assets/app.js"] {
        assert_eq!(status("GET", path, &[]), Some(200), "{path}");
    }

    // Host: the admin address, localhost or a configured name, nothing else.
    for host in ["localhost", "sluice.internal:8080", "127.0.0.1"] {
        assert_eq!(
            status("GET", "/api/v1/alerts", &[auth, ("Host", host)]),
            Some(200),
            "{host}"
        );
    }
    for host in [
        "evil.example",
        "rebind.evil.example:9901",
        "sluice.internal.evil.example",
    ] {
        for path in ["/api/v1/alerts", "/", "/metrics", "/healthz"] {
            assert_eq!(
                status("GET", path, &[auth, ("Host", host)]),
                Some(403),
                "{host}{path}"
            );
        }
    }

    // Origin: same-origin passes; a foreign page is refused, even with the token.
    let own = format!("http://{}", s.admin.unwrap());
    let post = |origin: &str| {
        admin(
            &s,
            "POST",
            "/api/v1/check",
            &[
                auth,
                ("Origin", origin),
                ("Content-Type", "application/json"),
            ],
            r#"{"from":"127.0.0.1","target":"a.test:443"}"#,
        )
        .status
    };
    assert_eq!(post(&own), Some(200));
    assert_eq!(post("http://evil.example"), Some(403));
    assert_eq!(post("null"), Some(403));
    assert_eq!(
        status(
            "GET",
            "/api/v1/flows",
            &[auth, ("Origin", "http://evil.example")]
        ),
        Some(403)
    );
    assert_eq!(
        status(
            "GET",
            "/api/v1/flows",
            &[auth, ("Sec-Fetch-Site", "cross-site")]
        ),
        Some(403)
    );
    assert_eq!(
        status("GET", "/api/v1/flows", &[auth, ("Origin", &own)]),
        Some(200)
    );

    // The page forbids framing and foreign scripts.
    let page = admin(&s, "GET", "/", &[], "");
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(page.text().contains("<script src=\"/assets/app.js\""));
}

#[test]
fn metrics_need_the_token_unless_opened() {
    let dir = sluice_testkit::TempDir::new("admin-metrics-token");
    let token = dir.path("token");
    std::fs::write(&token, "t0ken").unwrap();
    let s = Sluice::start(
        BIN,
        &format!(
            "admin:\n  token_file: {}\nzones:\n  - name: local\n    sources: [127.0.0.0/8]\n",
            token.display()
        ),
    );
    assert_eq!(admin(&s, "GET", "/metrics", &[], "").status, Some(401));
    assert_eq!(admin(&s, "GET", "/healthz", &[], "").status, Some(200));
    assert_eq!(
        admin(
            &s,
            "GET",
            "/metrics",
            &[("Authorization", "Bearer t0ken")],
            ""
        )
        .status,
        Some(200)
    );
}

// === OpenAPI conformance ===

/// Every endpoint but the streams, checked by schemathesis against
/// docs/openapi.yaml: status codes, content types, response schemas, bad
/// input rejected, auth enforced, undocumented methods refused.
#[test]
fn api_conforms_to_openapi_with_schemathesis() {
    let root = util::workspace_root();
    let spec = root.join("docs/openapi.yaml");
    let origin = Origin::start("127.0.0.1");
    let dns = FixtureDns::stub(&[("report.test", &["127.0.0.1"])]);
    let dir = sluice_testkit::TempDir::new("admin-schemathesis");
    let token = dir.path("token");
    std::fs::write(&token, "schema-token").unwrap();
    let s = start(
        &origin,
        &dns,
        &format!(
            "  dns: 127.0.0.1:0\nadmin:\n  token_file: {}\n",
            token.display()
        ),
    );
    let n = script(&s, &origin);
    s.wait_records(n);
    // An alert in the ring, so that its schema is checked against a real one.
    tunnelling_burst(s.dns.unwrap(), "exfil-tunnel.test", 40);
    let auth = ("Authorization", "Bearer schema-token");
    assert!(poll_until(T, || {
        let r = admin(&s, "GET", "/api/v1/alerts", &[auth], "");
        r.text().contains("dns-tunnel")
    }));
    let url = format!("http://{}", s.admin.unwrap());
    let out = output_within(
        Command::new("schemathesis")
            .current_dir(dir.0.as_path())
            .env("SCHEMATHESIS_HOOKS", "")
            .args(["run", spec.to_str().unwrap(), "--url", &url])
            .args(["--header", "Authorization: Bearer schema-token"])
            .args(["--exclude-path", "/api/v1/flows/stream"])
            .args(["--exclude-path", "/api/v1/alerts/stream"])
            .args([
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
            ])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args([
                "--max-examples",
                "40",
                "--workers",
                "1",
                "--request-timeout",
                "10",
            ])
            .args(["--suppress-health-check", "all", "--no-color"]),
        Duration::from_secs(300),
    );
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis failed (pip install schemathesis):\n{text}"
    );
    assert!(!Path::new(&spec).with_extension("tmp").exists());
}

/// What data leaving through DNS looks like: `n` unique 50-character
/// labels under `domain`, asked as TXT over UDP, one at a time.
fn tunnelling_burst(dns: SocketAddr, domain: &str, n: u16) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for i in 0..n {
        let [hi, lo] = i.to_be_bytes();
        let mut q = vec![hi, lo, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.push(50);
        q.extend_from_slice(random_label(u64::from(i)).as_bytes());
        for part in ["t"].into_iter().chain(domain.split('.')) {
            q.push(part.len() as u8);
            q.extend_from_slice(part.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 16, 0, 1]);
        sock.send_to(&q, dns).unwrap();
        let mut buf = [0u8; 1500];
        let (len, _) = sock.recv_from(&mut buf).unwrap();
        assert!(len >= 12 && buf[..2] == [hi, lo], "an answer to query {i}");
    }
}

// === dashboard ===

/// The dashboard in Chromium: tests/dashboard/run.mjs. Skips (with the
/// reason printed) only when node, the npm packages or Chromium are missing.
#[test]
fn dashboard_shows_live_flows_in_chromium() {
    let root = util::workspace_root();
    let js = root.join("tests/dashboard");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    for (missing, why) in [
        (!node_ok, "node is not installed".to_owned()),
        (
            !Path::new(&chromium).exists(),
            format!("{chromium} is missing (apt-get install chromium)"),
        ),
        (
            !js.join("node_modules/playwright-core").exists(),
            "tests/dashboard/node_modules is missing (cd tests/dashboard && npm ci)".to_owned(),
        ),
    ] {
        if missing {
            eprintln!("SKIPPED dashboard_shows_live_flows_in_chromium: {why}");
            return;
        }
    }
    let origin = Origin::start("127.0.0.1");
    let dns = FixtureDns::stub(&[]);
    // A second origin the test's country database places abroad (KP),
    // outside zone web's countries (DE, where it places 127.0.0.1): an
    // upload there raises a `geo` alert the page must show.
    let abroad = Origin::start("127.0.0.2");
    let geo = TempDir::new("dashboard-geo");
    let mmdb = geo.path("countries.mmdb");
    write_mmdb(&mmdb, &[("127.0.0.1/32", "DE"), ("127.0.0.2/32", "KP")]);
    let web = "  - name: web\n    sources: [127.0.0.0/8]\n";
    let rule = "        id: origin\n";
    let policy = policy(&origin, &dns)
        .replacen(web, &format!("{web}    countries: [DE]\n"), 1)
        .replacen(
            rule,
            &format!(
                "{rule}      - cidr: 127.0.0.2/32\n        ports: [{}]\n        id: abroad\n",
                abroad.addr.port()
            ),
            1,
        );
    let yaml = format!(
        "listen:\n  http: \"[::]:0\"\n  admin: 127.0.0.1:0\n  dns: 127.0.0.1:0\ndetect:\n  geoip: {}\n{policy}",
        mmdb.display()
    );
    let s = Sluice::start(BIN, &yaml);
    let shot = root.join("target/dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = output_within(
        Command::new("node")
            .arg("run.mjs")
            .current_dir(&js)
            .env("SLUICE_ADMIN", format!("http://{}", s.admin.unwrap()))
            .env("SLUICE_PROXY", proxy_v4(&s).to_string())
            .env("SLUICE_ORIGIN", origin.addr.to_string())
            .env("SLUICE_DNS", s.dns.unwrap().to_string())
            .env("SLUICE_ABROAD", abroad.addr.to_string())
            .env("SCREENSHOT", &shot)
            .env("CHROMIUM", &chromium),
        Duration::from_secs(180),
    );
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "dashboard test failed:\n{text}");
    println!("{text}");
    assert!(shot.exists(), "screenshot at {}", shot.display());
}
