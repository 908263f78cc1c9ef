//! The NetFlow / IPFIX collector (`listen.netflow`) through the real
//! binary: softflowd (Debian) exporting the flows of a pcap the test
//! writes in v5, v9 and IPFIX; scapy-built datagrams (tests/netflow/
//! packets.py) for templates after data, template changes, sampling by
//! options records, an exporter outside `netflow.exporters`, and
//! malformed datagrams and template bombs (dropped and counted, memory
//! bounded, the collector still serving); the bypass scenario (a zone
//! host's direct flows alert, its flows to the gateway do not, a denied
//! destination is named so); and the configuration's checks.

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::{net::SocketAddr, process::Command, time::Duration};

use serde_json::{Value, json};
use sluice_testkit::{FixtureDns, Sluice, TempDir, assert_fields, output_within, poll_until};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const T: Duration = Duration::from_secs(20);

const PACKETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/netflow/packets.py");

/// A zone with an allowed range, a range it may reach without the gateway,
/// and the gateway at 10.0.9.1 as the exporters see it.
const ZONES: &str = r#"
zones:
  - name: lan
    sources: [10.0.1.0/24, "2001:db8:1::/64"]
    allow:
      - cidr: 140.82.112.0/20
        ports: [443]
      - cidr: 151.101.0.0/16
        ports: [443]
        id: cdn-direct
        bypass: true
      - cidr: 104.16.0.0/13
        ports: [443, 853]
      - cidr: 2a04:4e42::/32
        ports: [443]
"#;

fn sluice(netflow: &str) -> Sluice {
    let yaml = format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  netflow: 127.0.0.1:0\nnetflow:\n  exporters: [127.0.0.1/32]\n  gateways: [10.0.9.1/32]\n{netflow}{ZONES}"
    );
    let s = Sluice::start(BIN, &yaml);
    assert!(s.netflow.is_some(), "NetFlow address announced");
    s
}

/// Sends a scenario of packets.py to the collector from `source`; returns
/// the number of datagrams sent.
fn send(to: SocketAddr, scenario: &str, source: &str) -> usize {
    let out = output_within(
        Command::new("python3").args([
            PACKETS,
            scenario,
            &to.ip().to_string(),
            &to.port().to_string(),
            source,
        ]),
        T,
    );
    assert!(
        out.status.success(),
        "packets.py {scenario} (needs python3 and scapy: pip install scapy): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The netflow records, once there are `n` of them.
fn wait_netflow(s: &Sluice, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    let ok = poll_until(T, || {
        got = s
            .records()
            .into_iter()
            .filter(|r| r["listener"] == "netflow")
            .collect();
        got.len() >= n
    });
    assert!(ok, "expected {n} netflow records, got {got:#?}");
    got
}

/// The record whose `dst_ip` is `ip` and whose `bytes_in` is (`reply`) or
/// is not zero.
fn find<'a>(recs: &'a [Value], ip: &str, reply: bool) -> &'a Value {
    recs.iter()
        .find(|r| r["dst_ip"] == ip && (r["bytes_in"] != 0) == reply)
        .unwrap_or_else(|| panic!("no record to {ip} (reply {reply}) in {recs:#?}"))
}

fn dropped(s: &Sluice, reason: &str) -> f64 {
    s.metric(&format!(
        "sluice_netflow_dropped_total{{reason=\"{reason}\"}}"
    ))
}

#[test]
fn v5_flows_become_records_with_the_flows_own_times_and_replies_as_bytes_in() {
    let s = sluice("");
    assert_eq!(send(s.netflow.unwrap(), "v5", "127.0.0.1"), 2);
    let recs = wait_netflow(&s, 3);
    let out = find(&recs, "140.82.112.3", false);
    assert_fields(
        out,
        &[
            ("listener", json!("netflow")),
            ("protocol", json!("tcp")),
            ("src", json!("10.0.1.7:40000")),
            ("dst_port", json!(443)),
            ("zone", json!("lan")),
            ("verdict", json!("allow")),
            ("enforced", json!(false)),
            ("rule", json!("lan/allow/1")),
            ("bytes_out", json!(1200)),
            ("bytes_in", json!(0)),
            ("packets", json!(3)),
            ("exporter", json!("127.0.0.1")),
            // Export 15:06:40 at uptime 100 s; first 90 s, last 99 s.
            ("start", json!("2025-06-15T15:06:30.000Z")),
            ("ts", json!("2025-06-15T15:06:39.000Z")),
            ("duration_ms", json!(9000)),
        ],
    );
    // The reply: the zone's host stays `src`, its bytes are `bytes_in`.
    let back = find(&recs, "140.82.112.3", true);
    assert_fields(
        back,
        &[
            ("src", json!("10.0.1.7:40000")),
            ("dst_port", json!(443)),
            ("bytes_in", json!(800)),
            ("bytes_out", json!(0)),
            ("packets", json!(2)),
            ("zone", json!("lan")),
        ],
    );
    // Sampled 1 in 100: counts scaled; DNS to 9.9.9.9 is not allowed.
    let dns = find(&recs, "9.9.9.9", false);
    assert_fields(
        dns,
        &[
            ("protocol", json!("udp")),
            ("src", json!("10.0.1.9:5353")),
            ("dst_port", json!(53)),
            ("bytes_out", json!(8000)),
            ("packets", json!(100)),
            ("verdict", json!("deny")),
            ("enforced", json!(false)),
            ("rule", json!("default")),
        ],
    );
    assert_eq!(s.metric("sluice_netflow_packets_total"), 2.0);
    assert_eq!(s.metric("sluice_netflow_flows_total"), 3.0);
}

#[test]
fn v9_templates_after_data_template_changes_and_sampling_options() {
    let s = sluice("");
    send(s.netflow.unwrap(), "v9", "127.0.0.1");
    let recs = wait_netflow(&s, 3);
    // The data came before its template: kept, decoded when it arrived.
    assert_fields(
        find(&recs, "151.101.1.69", false),
        &[
            ("src", json!("10.0.1.7:40001")),
            ("dst_port", json!(443)),
            ("bytes_out", json!(500)),
            ("packets", json!(5)),
            ("rule", json!("cdn-direct")),
            ("start", json!("2025-06-15T15:06:30.000Z")),
            ("ts", json!("2025-06-15T15:06:39.000Z")),
        ],
    );
    // Source id 2 samples 1 in 10 (its options record).
    assert_fields(
        find(&recs, "104.16.0.1", false),
        &[
            ("src", json!("10.0.1.8:40002")),
            ("bytes_out", json!(1000)),
            ("packets", json!(10)),
        ],
    );
    // Template 300 redefined for IPv6 (source id 1: not sampled).
    assert_fields(
        find(&recs, "2a04:4e42::223", false),
        &[
            ("src", json!("[2001:db8:1::7]:40003")),
            ("bytes_out", json!(700)),
            ("packets", json!(7)),
            ("zone", json!("lan")),
            ("verdict", json!("allow")),
        ],
    );
    assert_eq!(s.metric("sluice_netflow_templates"), 3.0);
    assert_eq!(dropped(&s, "unknown-template"), 0.0);
    assert_eq!(dropped(&s, "malformed"), 0.0);
}

#[test]
fn ipfix_templates_after_data_template_changes_and_sampling_options() {
    let s = sluice("");
    send(s.netflow.unwrap(), "ipfix", "127.0.0.1");
    let recs = wait_netflow(&s, 3);
    assert_fields(
        find(&recs, "151.101.1.69", false),
        &[
            ("src", json!("10.0.1.7:40010")),
            ("bytes_out", json!(1500)),
            ("packets", json!(10)),
            // flowStartMilliseconds / flowEndMilliseconds.
            ("start", json!("2025-06-15T15:06:30.000Z")),
            ("ts", json!("2025-06-15T15:06:39.000Z")),
        ],
    );
    assert_fields(
        find(&recs, "104.16.0.2", false),
        &[
            ("src", json!("10.0.1.8:40011")),
            ("dst_port", json!(853)),
            ("bytes_out", json!(400)),
            ("packets", json!(4)),
        ],
    );
    assert_fields(
        find(&recs, "2a04:4e42::224", false),
        &[
            ("protocol", json!("udp")),
            ("src", json!("[2001:db8:1::8]:40012")),
            ("bytes_out", json!(900)),
            ("packets", json!(9)),
        ],
    );
    assert_eq!(dropped(&s, "malformed"), 0.0);
}

#[test]
fn softflowd_exports_a_pcaps_flows_in_v5_v9_and_ipfix() {
    let dir = TempDir::new("softflowd");
    let pcap = dir.path("flows.pcap");
    let out = output_within(
        Command::new("python3").args([PACKETS, "pcap", pcap.to_str().unwrap()]),
        T,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = sluice("");
    let to = s.netflow.unwrap();
    // What the pcap holds, as (src, dst_ip, dst_port, protocol,
    // bytes_out, bytes_in, packets): IP bytes, replies as bytes_in.
    let mut want: Vec<_> = [
        ("10.0.1.7:40000", "140.82.112.3", 443, "tcp", 720, 0, 3),
        ("10.0.1.7:40000", "140.82.112.3", 443, "tcp", 0, 540, 1),
        ("10.0.1.8:5000", "9.9.9.9", 53, "udp", 58, 0, 1),
    ]
    .into_iter()
    .map(|w| {
        (
            w.0.to_owned(),
            w.1.to_owned(),
            w.2,
            w.3.to_owned(),
            w.4,
            w.5,
            w.6,
        )
    })
    .collect();
    want.sort();
    for (i, version) in ["5", "9", "10"].into_iter().enumerate() {
        let out = output_within(
            Command::new("softflowd").args([
                "-d",
                "-r",
                pcap.to_str().unwrap(),
                "-n",
                &to.to_string(),
                "-v",
                version,
            ]),
            T,
        );
        assert!(
            out.status.success(),
            "softflowd -v {version} (apt-get install softflowd): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let recs = wait_netflow(&s, 3 * (i + 1));
        let mut got: Vec<_> = recs[3 * i..]
            .iter()
            .map(|r| {
                (
                    r["src"].as_str().unwrap().to_owned(),
                    r["dst_ip"].as_str().unwrap().to_owned(),
                    r["dst_port"].as_u64().unwrap(),
                    r["protocol"].as_str().unwrap().to_owned(),
                    r["bytes_out"].as_u64().unwrap(),
                    r["bytes_in"].as_u64().unwrap(),
                    r["packets"].as_u64().unwrap(),
                )
            })
            .collect();
        got.sort();

        assert_eq!(got, want, "softflowd -v {version}");
        for r in &recs[3 * i..] {
            assert_eq!(r["exporter"], "127.0.0.1");
            assert_eq!(r["listener"], "netflow");
        }
    }
    assert_eq!(dropped(&s, "malformed"), 0.0);
    assert_eq!(dropped(&s, "unknown-template"), 0.0);
}

/// Resident memory of the process, kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn malformed_datagrams_and_template_bombs_are_dropped_counted_and_bounded() {
    let mut s = sluice("  max_templates: 100\n  pending_sets: 16\n");
    let to = s.netflow.unwrap();
    let before = rss_kb(s.child.id());
    // From an address outside netflow.exporters: dropped, counted.
    send(to, "v5", "127.0.0.2");
    assert!(poll_until(T, || dropped(&s, "unknown-exporter") == 2.0));
    assert!(wait_netflow(&s, 0).is_empty(), "nothing recorded from it");

    let n = send(to, "malformed", "127.0.0.1");
    assert!(
        poll_until(T, || s.metric("sluice_netflow_packets_total")
            >= (n + 2) as f64),
        "every datagram was read: {} of {}",
        s.metric("sluice_netflow_packets_total"),
        n + 2
    );
    assert!(s.is_running(), "the collector survived");
    // Short datagrams and wrong lengths, the 10000-field template, the
    // mutations.
    assert!(
        dropped(&s, "malformed") >= 8.0,
        "{}",
        dropped(&s, "malformed")
    );
    // Versions 1, 7 and 42.
    assert!(dropped(&s, "unknown-version") >= 3.0);
    // 3000 distinct templates against a cache of 100.
    assert!(
        dropped(&s, "template-limit") >= 2800.0,
        "{}",
        dropped(&s, "template-limit")
    );
    assert!(s.metric("sluice_netflow_templates") <= 100.0);
    // 300 sets for templates that never came, 16 kept.
    assert!(dropped(&s, "unknown-template") >= 284.0);
    let grown = rss_kb(s.child.id()).saturating_sub(before);
    assert!(grown < 64 * 1024, "memory grew by {grown} kB");

    // Still collecting: a valid datagram becomes records.
    let had = wait_netflow(&s, 0).len();
    send(to, "v5", "127.0.0.1");
    let recs = wait_netflow(&s, had + 3);
    assert!(recs.iter().any(|r| r["src"] == "10.0.1.9:5353"));
}

#[test]
fn a_direct_flow_alerts_bypass_and_flows_through_the_gateway_do_not() {
    let s = sluice("");
    send(s.netflow.unwrap(), "bypass", "127.0.0.1");
    let recs = wait_netflow(&s, 4);
    // The two flows to and from the gateway are counted, not recorded.
    assert!(poll_until(T, || s
        .metric("sluice_netflow_gateway_flows_total")
        == 2.0));
    assert_eq!(s.metric("sluice_netflow_flows_total"), 6.0);
    assert!(
        recs.iter()
            .all(|r| r["dst_ip"] != "10.0.9.1" && r["src"] != "10.0.9.1:40200"),
        "{recs:#?}"
    );
    let mut got = Vec::new();
    assert!(poll_until(T, || {
        got = s.alerts("kind=bypass");
        got.len() >= 3
    }));
    let by_dst = |dst: &str| {
        got.iter()
            .find(|a| a["dst"] == dst)
            .unwrap_or_else(|| panic!("no bypass alert for {dst}: {got:#?}"))
            .clone()
    };
    let allowed = by_dst("140.82.112.3");
    assert_eq!(allowed["severity"], "warning");
    assert_eq!(allowed["zone"], "lan");
    assert_eq!(allowed["src"], "10.0.1.7");
    assert_eq!(allowed["evidence"]["verdict"], "allow");
    let flow = find(&recs, "140.82.112.3", false);
    assert_eq!(allowed["flows"], json!([flow["id"]]));

    let denied = by_dst("185.199.108.153");
    assert_eq!(denied["severity"], "critical");
    assert_eq!(denied["evidence"]["verdict"], "deny");
    assert!(
        denied["summary"]
            .as_str()
            .unwrap()
            .contains("the policy would have denied it"),
        "{denied}"
    );
    let dns = by_dst("9.9.9.9");
    assert_eq!(dns["evidence"]["service"], "dns");
    assert_eq!(dns["severity"], "critical");
    // `bypass: true` on the allow rule: recorded, no alert.
    assert_eq!(find(&recs, "151.101.1.69", false)["rule"], "cdn-direct");
    assert!(got.iter().all(|a| a["dst"] != "151.101.1.69"), "{got:#?}");
    assert_eq!(got.len(), 3, "{got:#?}");
    assert_eq!(
        s.metric(r#"sluice_alerts_total{kind="bypass",severity="critical"}"#),
        2.0
    );
}

#[test]
fn a_destination_named_by_a_dns_grant_is_judged_by_its_name() {
    let up = FixtureDns::stub(&[("app.example.com", &["93.184.216.34"])]);
    let yaml = format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  dns: 127.0.0.1:0\n  netflow: 127.0.0.1:0\ndns:\n  upstreams: [{}]\nnetflow:\n  exporters: [127.0.0.1/32]\nzones:\n  - name: lan\n    sources: [10.0.1.0/24, 127.0.0.0/8]\n    allow:\n      - host: app.example.com\n        ports: [443]\n        id: app\n",
        up.addr
    );
    let s = Sluice::start(BIN, &yaml);
    let dns = s.dns.unwrap();
    // The zone resolves the name through Sluice: a grant for its address.
    let out = output_within(
        Command::new("dig")
            .arg(format!("@{}", dns.ip()))
            .args(["-p", &dns.port().to_string(), "+tries=1", "+time=5"])
            .args(["+short", "app.example.com", "A"]),
        T,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "93.184.216.34",
        "dig (apt-get install bind9-dnsutils)"
    );
    send(s.netflow.unwrap(), "grant", "127.0.0.1");
    let recs = wait_netflow(&s, 1);
    assert_fields(
        &recs[0],
        &[
            ("src", json!("10.0.1.7:40300")),
            ("dst_ip", json!("93.184.216.34")),
            ("dst_host", json!("app.example.com")),
            ("grant", json!("app.example.com")),
            ("verdict", json!("allow")),
            ("rule", json!("app")),
            ("enforced", json!(false)),
        ],
    );
}

#[test]
fn the_collector_needs_exporters_and_bypass_is_for_allow_rules() {
    let dir = TempDir::new("netflow-validate");
    let file = dir.path("sluice.yaml");
    std::fs::write(
        &file,
        "listen:\n  netflow: 127.0.0.1:0\nzones:\n  - name: lan\n    sources: [10.0.1.0/24]\n    deny:\n      - cidr: 192.0.2.0/24\n        bypass: true\n",
    )
    .unwrap();
    let out = output_within(
        Command::new(BIN).args(["validate", "-c", file.to_str().unwrap()]),
        T,
    );
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("listen.netflow is set but netflow.exporters is empty"),
        "{err}"
    );
    assert!(
        err.contains("sluice.yaml:8:17: `bypass` is for allow rules"),
        "{err}"
    );
}
