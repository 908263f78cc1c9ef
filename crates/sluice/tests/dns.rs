//! The DNS listener through the real binary, asked with `dig`
//! (bind9-dnsutils), forwarding to a fixture DNS server (testkit
//! `FixtureDns`): allowed, denied and wildcard names, a source in no zone,
//! CNAME chains into an unlisted CDN name and into a denied name, special
//! addresses stripped (rebinding), AAAA, TCP fallback for large answers,
//! upstream failover, TTL expiry, a tunnelling burst against ordinary
//! traffic (the alert in the API, the metric and on stderr), and malformed
//! packets.

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::{
    net::{SocketAddr, UdpSocket},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use sluice_testkit::{
    FixtureDns, Sluice, TempDir, output_within, poll_until, random_label, silent_udp,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const T: Duration = Duration::from_secs(20);

const ZONES: &str = r#"
zones:
  - name: lan
    sources: [127.0.0.1/32]
    allow:
      - host: app.example.com
        ports: [443]
      - host: "*.allowed.test"
        ports: [443]
        id: allowed-wildcard
      - cidr: 10.20.0.0/16
        ports: [5432]
      - host: metadata.google.internal
        ports: [80]
      - host: "*.ec2.internal"
        ports: [443]
    deny:
      - host: "*.evil.test"
"#;

/// Starts Sluice with a DNS listener asking `upstreams`, plus `extra` under `dns:`.
fn sluice(upstreams: &[SocketAddr], extra: &str) -> Sluice {
    let list: Vec<String> = upstreams.iter().map(ToString::to_string).collect();
    let yaml = format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  dns: 127.0.0.1:0\ndns:\n  upstreams: [{}]\n  upstream_timeout: 700ms\n{extra}{ZONES}",
        list.join(", ")
    );
    let s = Sluice::start(BIN, &yaml);
    assert!(s.dns.is_some(), "DNS address announced");
    s
}

/// One `dig` answer: status, flags, answer lines, and the whole output.
#[derive(Debug)]
struct Dig {
    status: String,
    answers: Vec<String>,
    text: String,
}

impl Dig {
    /// The data of each answer record (`93.184.216.34`, `edge.cdn.test.`).
    fn data(&self) -> Vec<String> {
        self.answers
            .iter()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
            .collect()
    }

    fn ttls(&self) -> Vec<u32> {
        self.answers
            .iter()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect()
    }
}

fn dig(s: &Sluice, args: &[&str]) -> Dig {
    let dns = s.dns.unwrap();
    let out = output_within(
        Command::new("dig")
            .arg(format!("@{}", dns.ip()))
            .args(["-p", &dns.port().to_string(), "+tries=1", "+time=5"])
            .args(args),
        T,
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or("")
        .to_owned();
    let answers = text
        .split(";; ANSWER SECTION:\n")
        .nth(1)
        .map(|r| {
            r.lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Dig {
        status,
        answers,
        text,
    }
}

/// The DNS records for `name` (waits for `n` of them in total).
fn dns_records(s: &Sluice, n: usize, name: &str) -> Vec<Value> {
    s.wait_records(n)
        .into_iter()
        .filter(|r| r["listener"] == "dns" && r["dst_host"] == name)
        .collect()
}

#[test]
fn allowed_denied_wildcard_and_sources_in_no_zone() {
    let up = FixtureDns::start();
    up.set("app.example.com", 300, &[("A", "93.184.216.34")]);
    up.set("other.example.com", 300, &[("A", "93.184.216.35")]);
    up.set("x.allowed.test", 300, &[("A", "93.184.216.36")]);
    up.set("allowed.test", 300, &[("A", "93.184.216.37")]);
    up.set("a.evil.test", 300, &[("A", "93.184.216.38")]);
    let s = sluice(&[up.addr], "");

    let d = dig(&s, &["app.example.com", "A"]);
    assert_eq!(d.status, "NOERROR", "{}", d.text);
    assert_eq!(d.data(), ["93.184.216.34"]);
    // An EDNS version Sluice does not speak: BADVERS (RFC 6891 §6.1.3).
    let d = dig(
        &s,
        &["+edns=1", "+noednsnegotiation", "app.example.com", "A"],
    );
    assert_eq!(d.status, "BADVERS", "{}", d.text);
    let d = dig(&s, &["X.Allowed.Test", "A"]);
    assert_eq!(d.data(), ["93.184.216.36"], "{}", d.text);
    // Names no host rule allows are still resolved for their addresses (the
    // zone has a cidr allow rule), and answered only inside it.
    for denied in ["other.example.com", "allowed.test", "a.evil.test"] {
        let d = dig(&s, &[denied, "A"]);
        assert_eq!(d.status, "NXDOMAIN", "{denied}: {}", d.text);
        assert!(d.answers.is_empty());
    }
    // A deny rule, and any type but addresses, are never forwarded.
    let d = dig(&s, &["other.example.com", "TXT"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.text);
    assert_eq!(up.queries_for("other.example.com"), 1, "only the A query");
    assert_eq!(
        up.queries_for("a.evil.test"),
        0,
        "denied names never forwarded"
    );
    // A source in no zone: REFUSED, never forwarded.
    let before = up.queries_for("app.example.com");
    let d = dig(&s, &["-b", "127.0.0.2", "app.example.com", "A"]);
    assert_eq!(d.status, "REFUSED", "{}", d.text);
    assert_eq!(up.queries_for("app.example.com"), before);

    let r = dns_records(&s, 6, "app.example.com");
    let ok = r.iter().find(|r| r["verdict"] == "allow").unwrap();
    assert_eq!(ok["protocol"], "dns");
    assert_eq!(ok["qtype"], "A");
    assert_eq!(ok["zone"], "lan");
    assert_eq!(ok["rule"], "lan/allow/1");
    assert_eq!(ok["answers"], serde_json::json!(["93.184.216.34"]));
    let refused = r.iter().find(|r| r["verdict"] == "deny").unwrap();
    assert_eq!(refused["rule"], "default/no-zone");
    assert!(refused["src"].as_str().unwrap().starts_with("127.0.0.2:"));
    let r = dns_records(&s, 7, "other.example.com");
    assert!(
        r.iter()
            .all(|r| r["rule"] == "default" && r["verdict"] == "deny"),
        "{r:?}"
    );
    let r = dns_records(&s, 6, "a.evil.test");
    assert_eq!(r[0]["rule"], "lan/deny/1");
    assert_eq!(r[0]["verdict"], "deny");
    let r = dns_records(&s, 6, "x.allowed.test");
    assert_eq!(r[0]["rule"], "allowed-wildcard");
}

#[test]
fn cname_chains_to_a_cdn_name_answer_and_to_a_denied_name_do_not() {
    let up = FixtureDns::start();
    up.set(
        "www.allowed.test",
        300,
        &[("CNAME", "edge.cdn-example.net")],
    );
    up.set("edge.cdn-example.net", 60, &[("A", "93.184.216.40")]);
    up.set("leak.allowed.test", 300, &[("CNAME", "x.evil.test")]);
    up.set("x.evil.test", 60, &[("A", "93.184.216.41")]);
    let s = sluice(&[up.addr], "");

    let d = dig(&s, &["www.allowed.test", "A"]);
    assert_eq!(d.status, "NOERROR", "{}", d.text);
    assert_eq!(d.data(), ["edge.cdn-example.net.", "93.184.216.40"]);
    let d = dig(&s, &["leak.allowed.test", "A"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.text);
    assert!(d.answers.is_empty(), "{}", d.text);
    let r = dns_records(&s, 2, "leak.allowed.test");
    assert_eq!(r[0]["rule"], "lan/deny/1");
    assert!(r[0]["reason"].as_str().unwrap().contains("CNAME"), "{r:?}");
}

#[test]
fn special_addresses_are_stripped_and_aaaa_answers() {
    let up = FixtureDns::start();
    up.set(
        "mixed.allowed.test",
        300,
        &[
            ("A", "127.0.0.1"),
            ("A", "93.184.216.34"),
            ("A", "10.20.0.5"),
        ],
    );
    up.set(
        "rebind.allowed.test",
        300,
        &[("A", "169.254.169.254"), ("A", "192.168.1.1")],
    );
    up.set(
        "six.allowed.test",
        300,
        &[
            ("AAAA", "2606:2800:220:1::1"),
            ("AAAA", "::1"),
            ("AAAA", "::ffff:10.0.0.1"),
        ],
    );
    let s = sluice(&[up.addr], "");

    let d = dig(&s, &["mixed.allowed.test", "A"]);
    // 10.20.0.0/16 is a cidr allow inside special space: it lifts the guard.
    assert_eq!(d.data(), ["93.184.216.34", "10.20.0.5"], "{}", d.text);
    let d = dig(&s, &["rebind.allowed.test", "A"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.text);
    assert!(d.answers.is_empty());
    let d = dig(&s, &["six.allowed.test", "AAAA"]);
    assert_eq!(d.data(), ["2606:2800:220:1::1"], "{}", d.text);
    let r = dns_records(&s, 3, "rebind.allowed.test");
    assert_eq!(r[0]["rule"], "guard/special-address");
    let r = dns_records(&s, 3, "six.allowed.test");
    assert_eq!(r[0]["qtype"], "AAAA");
    assert_eq!(r[0]["answers"], serde_json::json!(["2606:2800:220:1::1"]));
}

#[test]
fn large_answers_fall_back_to_tcp() {
    let up = FixtureDns::start();
    let big = "v".repeat(3000);
    up.set("big.allowed.test", 300, &[("TXT", big.as_str())]);
    let s = sluice(&[up.addr], "");

    let d = dig(&s, &["big.allowed.test", "TXT"]);
    assert_eq!(d.status, "NOERROR", "{}", d.text);
    assert!(
        d.text.contains("Truncated, retrying in TCP mode"),
        "{}",
        d.text
    );
    let joined: String = d.answers.concat().chars().filter(|c| *c == 'v').collect();
    assert_eq!(joined.len(), 3000, "{}", d.text);
    assert!(
        up.tcp_queries() >= 1,
        "Sluice retried its upstream over TCP"
    );
}

#[test]
fn a_dead_first_upstream_fails_over() {
    let (dead, _keep) = silent_udp();
    let up = FixtureDns::start();
    up.set("app.example.com", 300, &[("A", "93.184.216.34")]);
    let s = sluice(&[dead, up.addr], "");
    let d = dig(&s, &["app.example.com", "A"]);
    assert_eq!(d.data(), ["93.184.216.34"], "{}", d.text);
}

#[test]
fn answers_are_cached_until_their_ttl_expires() {
    let up = FixtureDns::start();
    up.set("ttl.allowed.test", 2, &[("A", "93.184.216.34")]);
    let s = sluice(&[up.addr], "");
    let d = dig(&s, &["ttl.allowed.test", "A"]);
    assert_eq!(d.data(), ["93.184.216.34"], "{}", d.text);
    let d = dig(&s, &["ttl.allowed.test", "A"]);
    assert_eq!(d.data(), ["93.184.216.34"]);
    assert!(d.ttls().iter().all(|t| *t <= 2), "{}", d.text);
    assert_eq!(
        up.queries_for("ttl.allowed.test"),
        1,
        "second answer from the cache"
    );
    std::thread::sleep(Duration::from_millis(2200));
    up.set("ttl.allowed.test", 2, &[("A", "93.184.216.35")]);
    let d = dig(&s, &["ttl.allowed.test", "A"]);
    assert_eq!(d.data(), ["93.184.216.35"], "{}", d.text);
    assert_eq!(up.queries_for("ttl.allowed.test"), 2);
    // Negative answers are cached too (the SOA says 5 s).
    dig(&s, &["nothing.allowed.test", "A"]);
    let d = dig(&s, &["nothing.allowed.test", "A"]);
    assert_eq!(d.status, "NXDOMAIN");
    assert_eq!(up.queries_for("nothing.allowed.test"), 1);
}

/// `GET /api/v1/alerts?query`: the alerts, or the status and body of a refusal.
fn alerts(s: &Sluice, query: &str) -> Result<Vec<Value>, (Option<u16>, String)> {
    let r = s.admin_get(&format!("/api/v1/alerts?{query}"));
    if r.status != Some(200) {
        return Err((r.status, r.text()));
    }
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    Ok(v["alerts"].as_array().unwrap().clone())
}

/// The alerts Sluice wrote on stderr: lines that are JSON objects with a `kind`.
fn logged_alerts(s: &Sluice) -> Vec<Value> {
    s.stderr
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("kind").is_some())
        .collect()
}

/// Asks every name of `names` with one `dig -f` run.
fn dig_batch(s: &Sluice, dir: &TempDir, file: &str, names: &[String]) {
    let path = dir.path(file);
    std::fs::write(&path, names.join("\n")).unwrap();
    dig(s, &["+short", "-f", path.to_str().unwrap()]);
}

#[test]
fn a_tunnelling_burst_alerts_and_ordinary_traffic_does_not() {
    let up = FixtureDns::start();
    for n in ["app.example.com", "www.allowed.test", "img.allowed.test"] {
        up.set(n, 300, &[("A", "93.184.216.34")]);
    }
    // A short tunnelling window, so that a second burst a little later is
    // a second signal: the alert ring folds it into the first alert.
    let s = sluice(
        &[up.addr],
        "  tunnel_min_queries: 20\n  tunnel_window: 2s\n",
    );
    let dir = TempDir::new("dns-tunnel");
    let critical = r#"sluice_alerts_total{kind="dns-tunnel",severity="critical"}"#;

    let ordinary: Vec<String> = (0..90)
        .map(|i| {
            let n = ["app.example.com", "www.allowed.test", "img.allowed.test"][i % 3];
            format!("{n} A")
        })
        .collect();
    dig_batch(&s, &dir, "ordinary.txt", &ordinary);
    dns_records(&s, 90, "app.example.com");
    assert!(!s.wait_log("possible DNS tunnelling", Duration::from_millis(300)));
    assert_eq!(alerts(&s, "").unwrap(), Vec::<Value>::new());
    assert!(logged_alerts(&s).is_empty());
    assert!(!s.admin_get("/metrics").text().contains("dns-tunnel"));

    // 40 unique 50-character labels asked as TXT: score 1.0, critical.
    let burst: Vec<String> = (0..40)
        .map(|i| format!("{}.t.exfil-tunnel.test TXT", random_label(i)))
        .collect();
    dig_batch(&s, &dir, "burst.txt", &burst);
    assert!(
        s.wait_log("possible DNS tunnelling", T),
        "{:?}",
        s.stderr.lock().unwrap()
    );

    // The API: one alert, about the client and the registrable domain.
    let list = alerts(&s, "").unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let a = &list[0];
    assert_eq!(a["kind"], "dns-tunnel");
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["zone"], "lan");
    assert_eq!(a["src"], "127.0.0.1");
    assert_eq!(a["dst"], "exfil-tunnel.test");
    assert_eq!(a["user"], Value::Null);
    assert_eq!(a["country"], Value::Null);
    assert!(a["count"].as_u64().unwrap() >= 1, "{a}");
    assert!(
        a["summary"]
            .as_str()
            .unwrap()
            .starts_with("possible DNS tunnelling to exfil-tunnel.test from 127.0.0.1: "),
        "{a}"
    );
    let evidence = &a["evidence"];
    assert_eq!(evidence["max_label"], 50, "{a}");
    assert_eq!(evidence["odd_types"], 1.0, "{a}");
    assert_eq!(evidence["threshold"], 0.6, "{a}");
    assert!(evidence["score"].as_f64().unwrap() >= 0.9, "{a}");
    assert!(evidence["queries"].as_u64().unwrap() >= 20, "{a}");
    // The flow behind it is the query that crossed the threshold.
    let flows = a["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 1, "{a}");
    let records = s.wait_records(90 + 40);
    let crossed = records.iter().find(|r| r["id"] == flows[0]).unwrap();
    assert_eq!(crossed["listener"], "dns");
    assert_eq!(crossed["qtype"], "TXT");
    assert!(
        crossed["dst_host"]
            .as_str()
            .unwrap()
            .ends_with(".t.exfil-tunnel.test")
    );

    // Stderr: the same alert as one JSON line (its count as first emitted).
    let logged = logged_alerts(&s);
    assert_eq!(logged.len(), 1, "{logged:?}");
    let mut same = logged[0].clone();
    assert_eq!(same["count"], 1);
    same["count"] = a["count"].clone();
    assert_eq!(&same, a);
    assert!(
        !s.stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("possible DNS tunnelling") && !l.starts_with('{')),
        "no separate log line"
    );

    // The metric, by kind and severity.
    assert!(poll_until(T, || s.metric(critical) == 1.0));

    // Filters.
    let n = |q: &str| alerts(&s, q).unwrap().len();
    assert_eq!(n("kind=dns-tunnel"), 1);
    assert_eq!(n("kind=volume"), 0);
    assert_eq!(n("zone=lan"), 1);
    assert_eq!(n("zone=other"), 0);
    assert_eq!(n("severity=warning"), 1, "warning is a minimum");
    assert_eq!(n("severity=critical&zone=lan&kind=dns-tunnel&limit=1"), 1);
    assert_eq!(n("since=2000-01-01T00:00:00Z"), 1);
    assert_eq!(n("since=2999-01-01T00:00:00Z"), 0);
    let (status, body) = alerts(&s, "since=yesterday").unwrap_err();
    assert_eq!(status, Some(400));
    assert!(body.contains("`since` must be an RFC 3339 time"), "{body}");
    let (status, body) = alerts(&s, "kind=dns").unwrap_err();
    assert_eq!(status, Some(400));
    assert!(body.contains("`kind` must be one of"), "{body}");
    assert_eq!(alerts(&s, "src=127.0.0.1").unwrap_err().0, Some(400));

    // The same tunnel in the detector's next window: the stored alert's
    // count rises; nothing is emitted or counted again.
    let before = a["count"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let again: Vec<String> = (100..140)
        .map(|i| format!("{}.t.exfil-tunnel.test TXT", random_label(i)))
        .collect();
    dig_batch(&s, &dir, "again.txt", &again);
    assert!(
        poll_until(T, || {
            alerts(&s, "").unwrap()[0]["count"].as_u64().unwrap() > before
        }),
        "{:?}",
        alerts(&s, "")
    );
    let list = alerts(&s, "").unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], a["id"]);
    assert_eq!(logged_alerts(&s).len(), 1);
    assert_eq!(s.metric(critical), 1.0);
}

#[test]
fn malformed_packets_get_formerr_or_nothing_and_the_listener_lives_on() {
    let up = FixtureDns::start();
    up.set("app.example.com", 300, &[("A", "93.184.216.34")]);
    let s = sluice(&[up.addr], "");
    let dns = s.dns.unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let header = |qd: u8| vec![0xab, 0xcd, 0x01, 0x00, 0, qd, 0, 0, 0, 0, 0, 0];
    let mut looped = header(1);
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let mut long_label = header(1);
    long_label.push(64);
    long_label.extend_from_slice(&[b'a'; 64]);
    long_label.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut lying = header(3);
    lying.extend_from_slice(&[3, b'f', b'o', b'o', 0, 0, 1, 0, 1]);
    // A pointer into the header: its bytes would read as a guessed name.
    let mut into_header = header(1);
    into_header.extend_from_slice(&[0xc0, 4, 0, 1, 0, 1]);
    let mut trailing = raw_query(0xabcd, "app.example.com", 1);
    trailing.extend_from_slice(&[0xde, 0xad]);
    let cases: Vec<(&str, Vec<u8>, Option<u8>)> = vec![
        ("empty", vec![], None),
        ("short header", vec![0xab, 0xcd, 0x01], None),
        ("compression loop", looped, Some(1)),
        ("label over 63", long_label, Some(1)),
        ("counts that lie", lying, Some(1)),
        ("pointer into the header", into_header, Some(1)),
        ("bytes after the message", trailing.clone(), Some(1)),
    ];
    let mut buf = [0u8; 1500];
    for (what, packet, rcode) in cases {
        sock.send_to(&packet, dns).unwrap();
        match (sock.recv_from(&mut buf), rcode) {
            (Ok((n, _)), Some(code)) => {
                assert_eq!(n, 12, "{what}: a bare header, no question");
                assert_eq!(&buf[..2], &[0xab, 0xcd], "{what}");
                assert_eq!(buf[3] & 0x0f, code, "{what}");
            }
            (Err(_), None) => {}
            (got, want) => panic!("{what}: got {got:?}, want rcode {want:?}"),
        }
    }
    // A TCP frame holding a query and bytes after it: FORMERR on the same
    // connection, which then still answers a proper query.
    let mut tcp = std::net::TcpStream::connect(dns).unwrap();
    tcp.set_read_timeout(Some(T)).unwrap();
    let ok = raw_query(0x0102, "app.example.com", 1);
    for (frame, code) in [(&trailing, 1u8), (&ok, 0)] {
        let mut out = (frame.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(frame);
        std::io::Write::write_all(&mut tcp, &out).unwrap();
        let mut len = [0u8; 2];
        std::io::Read::read_exact(&mut tcp, &mut len).unwrap();
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        std::io::Read::read_exact(&mut tcp, &mut reply).unwrap();
        assert_eq!(&reply[..2], &frame[..2]);
        assert_eq!(reply[3] & 0x0f, code, "{reply:?}");
    }
    assert_eq!(
        up.queries_for("app.example.com"),
        1,
        "only the proper query"
    );
    let d = dig(&s, &["app.example.com", "A"]);
    assert_eq!(d.data(), ["93.184.216.34"], "{}", d.text);
}

#[test]
fn client_subnet_is_stripped_and_floods_are_rate_limited() {
    let up = FixtureDns::start();
    up.set("app.example.com", 300, &[("A", "93.184.216.34")]);
    up.set("www.allowed.test", 300, &[("A", "93.184.216.35")]);
    let s = sluice(&[up.addr], "  rate_limit_qps: 5\n");
    let d = dig(&s, &["+subnet=198.51.100.0/24", "app.example.com", "A"]);
    assert_eq!(d.data(), ["93.184.216.34"], "{}", d.text);
    assert_eq!(up.queries_for("app.example.com"), 1);
    assert_eq!(
        up.ecs_seen(),
        0,
        "EDNS Client Subnet never reaches the upstream"
    );

    // A burst of 30 queries from one source: about the bucket's 5 answered.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let query: Vec<u8> = {
        let mut q = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in ["www", "allowed", "test"] {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    };
    for _ in 0..30 {
        sock.send_to(&query, s.dns.unwrap()).unwrap();
    }
    let mut buf = [0u8; 512];
    let mut answered = 0;
    while sock.recv_from(&mut buf).is_ok() {
        answered += 1;
    }
    assert!((1..=8).contains(&answered), "{answered} of 30 answered");
    assert!(s.metric("sluice_dns_rate_limited_total") >= 20.0);
}

/// A DNS query for `name` of type `qtype` (1 A, 28 AAAA) with id `id`.
fn raw_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

/// Queries whose upstream answers hold only special addresses, TTL 0 so
/// that each goes upstream, with replies lost between the upstream and
/// Sluice: every client still gets its (filtered) answer within 2 s.
#[test]
fn every_query_whose_answer_holds_only_special_addresses_gets_a_reply() {
    let up = FixtureDns::start();
    let names: [(&str, u16, (&str, &str)); 6] = [
        ("lo.allowed.test", 1, ("A", "127.0.0.1")),
        ("ll.allowed.test", 1, ("A", "169.254.10.1")),
        ("zero.allowed.test", 1, ("A", "0.0.0.0")),
        ("mapped.allowed.test", 28, ("AAAA", "::ffff:10.1.2.3")),
        ("nat64.allowed.test", 28, ("AAAA", "64:ff9b::a01:203")),
        ("lo6.allowed.test", 28, ("AAAA", "::1")),
    ];
    for (n, _, r) in &names {
        // TTL 0: nothing cached, every query goes to the upstream.
        up.set(n, 0, &[*r]);
    }
    // One UDP reply in five from the upstream is lost on the way back.
    up.lose_every_nth_reply(5);
    let s = sluice(&[up.addr], "");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 1500];
    let mut lost = Vec::new();
    let started = std::time::Instant::now();
    for i in 0..200u16 {
        let (name, qtype, _) = names[usize::from(i) % names.len()];
        sock.send_to(&raw_query(i, name, qtype), s.dns.unwrap())
            .unwrap();
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                assert!(n >= 12);
                assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), i, "{name}");
                // The filtered answer, not a SERVFAIL for a lost reply.
                assert_eq!(buf[3] & 0x0f, 3, "{i} {name}: NXDOMAIN");
            }
            Err(e) => lost.push(format!("{i} {name}: {e}")),
        }
    }
    assert!(lost.is_empty(), "no reply within 2 s: {lost:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "{took:?} for 200 queries");
    assert!(
        up.queries_for("lo.allowed.test") > 200 / 6,
        "replies were lost"
    );
    let records = s.wait_records(200);
    assert!(
        records
            .iter()
            .all(|r| r["rule"] == "guard/special-address" && r["error"].is_null()),
        "{:?}",
        records
            .iter()
            .find(|r| r["rule"] != "guard/special-address")
    );
}

#[test]
fn special_use_names_are_answered_here_and_never_forwarded() {
    let up = FixtureDns::start();
    let special = [
        "localhost",
        "app.localhost",
        "printer.local",
        "x.invalid",
        "abc.onion",
        "y.alt",
        "x.internal",
        "nas.home.arpa",
        "1.0.0.10.in-addr.arpa",
    ];
    // Every name has a public address upstream: whatever reached it would
    // be answered.
    for n in special {
        up.set(
            n,
            300,
            &[("A", "93.184.216.34"), ("AAAA", "2606:2800:220:1::1")],
        );
    }
    up.set("metadata.google.internal", 300, &[("A", "93.184.216.50")]);
    up.set("ip-10-20-0-7.ec2.internal", 300, &[("A", "10.20.0.7")]);
    let s = sluice(&[up.addr], "");

    let d = dig(&s, &["localhost", "A"]);
    assert_eq!(
        (d.status.as_str(), d.data()),
        ("NOERROR", vec!["127.0.0.1".to_owned()]),
        "{}",
        d.text
    );
    let d = dig(&s, &["App.Localhost.", "AAAA"]);
    assert_eq!(
        (d.status.as_str(), d.data()),
        ("NOERROR", vec!["::1".to_owned()]),
        "{}",
        d.text
    );
    let d = dig(&s, &["localhost", "TXT"]);
    assert_eq!(d.status, "NOERROR", "{}", d.text);
    assert!(d.answers.is_empty(), "{}", d.text);
    for (n, t) in [
        ("printer.local", "A"),
        ("x.invalid", "A"),
        ("abc.onion", "AAAA"),
        ("y.alt", "A"),
        ("x.internal", "A"),
        ("nas.home.arpa", "A"),
        ("1.0.0.10.in-addr.arpa", "PTR"),
    ] {
        let d = dig(&s, &[n, t]);
        assert_eq!(d.status, "NXDOMAIN", "{n}: {}", d.text);
        assert!(d.answers.is_empty(), "{n}: {}", d.text);
    }
    // Private zones are forwarded for the names a host allow rule names.
    let d = dig(&s, &["metadata.google.internal", "A"]);
    assert_eq!(d.data(), ["93.184.216.50"], "{}", d.text);
    let d = dig(&s, &["ip-10-20-0-7.ec2.internal", "A"]);
    assert_eq!(d.data(), ["10.20.0.7"], "{}", d.text);
    for n in special {
        assert_eq!(up.queries_for(n), 0, "{n} reached the upstream");
    }
    assert_eq!(up.queries_for("metadata.google.internal"), 1);

    let records = s.wait_records(12);
    for n in special {
        let r = records
            .iter()
            .find(|r| r["dst_host"] == n)
            .unwrap_or_else(|| panic!("no record for {n}"));
        assert_eq!(r["rule"], "guard/special-name", "{r}");
        assert_eq!(r["verdict"], "deny", "{r}");
    }
    let lo = records
        .iter()
        .find(|r| r["dst_host"] == "localhost")
        .unwrap();
    assert_eq!(lo["answers"], serde_json::json!(["127.0.0.1"]));
}
