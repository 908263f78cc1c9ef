//! Each detector on synthetic flow records, in record time: what raises
//! it and what must not (pages of a new site, a beacon the zone already
//! had while learning, failures after an allow).

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use sluice_detect::{Engine, RecordLine, Settings};
use sluice_observe::{Alert, AlertKind, AlertRing, Severity};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
/// 2026-01-05T00:00:00Z, a Monday.
const T0: i64 = 1_767_571_200_000;

fn ts(ms: i64) -> String {
    sluice_observe::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64))
}

/// A flow record (JSON) from `src` to `host` ending at `at`; `f` adjusts it.
fn rec(id: &str, at: i64, src: &str, host: &str, f: impl FnOnce(&mut Value)) -> Value {
    let mut v = json!({
        "ts": ts(at), "start": ts(at - 200), "duration_ms": 200, "id": id, "listener": "http",
        "protocol": "connect", "src": format!("{src}:40000"), "user": null, "zone": "lan",
        "mode": "enforce", "dst_host": host, "dst_ip": "93.184.216.34", "dst_port": 443,
        "sni": null, "original_dst": null, "grant": null, "method": null, "status": null,
        "qtype": null, "answers": null, "verdict": "allow", "enforced": true, "rule": "lan/allow/1",
        "reason": "r", "bytes_out": 2000, "bytes_in": 20000, "route": "direct", "policy_hash": "h",
        "error": null, "error_kind": null, "interim": null, "country": null, "tls": true,
        "intercepted": null, "findings": null, "exporter": null, "packets": null
    });
    f(&mut v);
    v
}

/// Runs records through one engine with default settings; the alerts
/// that would be emitted (repeats folded, as `sluice detect` does).
fn run(records: &[Value]) -> Vec<Alert> {
    let mut engine = Engine::new(Settings::default(), None);
    let ring = AlertRing::new(1000);
    let mut out = Vec::new();
    for r in records {
        let line = r.to_string();
        let parsed = RecordLine::parse(line.as_bytes()).unwrap();
        for a in engine.observe(&parsed.obs().unwrap()) {
            if let Some(new) = ring.push(a) {
                out.push(new);
            }
        }
    }
    out
}

/// Eight days of ordinary browsing from `src` to a few usual sites.
fn learning(src: &str) -> Vec<Value> {
    let sites = ["www.example.com", "mail.example.org", "cdn.example.net"];
    (0..8 * 24)
        .flat_map(|h| {
            sites.iter().enumerate().map(move |(i, s)| {
                rec(
                    &format!("l{h}-{i}"),
                    T0 + h * HOUR + i as i64 * MIN,
                    src,
                    s,
                    |_| {},
                )
            })
        })
        .collect()
}

/// `n` records from `src`, the `i`-th with id `{id}{i}`, ending at `at(i)`
/// and going to `host(i)`; `f(i, record)` adjusts each.
fn series(
    id: &str,
    n: i64,
    src: &str,
    at: impl Fn(i64) -> i64,
    host: impl Fn(i64) -> String,
    f: impl Fn(i64, &mut Value),
) -> Vec<Value> {
    (0..n)
        .map(|i| rec(&format!("{id}{i}"), at(i), src, &host(i), |v| f(i, v)))
        .collect()
}

/// Three uploads of 3 MB a minute apart from `src`, from `at` on, to a new
/// site on a private suffix (its own registrable domain, `alice.github.io`).
fn uploads_to_a_new_site(src: &str, at: i64) -> Vec<Value> {
    series(
        "up",
        3,
        src,
        |i| at + i * MIN,
        |_| "files.alice.github.io".into(),
        |_, v| v["bytes_out"] = json!(3_000_000),
    )
}

/// 20 distinct special addresses on `port` denied 5 s apart from `src`,
/// from `at` on: a scan.
fn address_scan(src: &str, at: i64, port: u16) -> Vec<Value> {
    series(
        "s",
        20,
        src,
        |i| at + i * 5000,
        |i| format!("198.51.100.{i}"),
        |_, v| {
            v["verdict"] = json!("deny");
            v["rule"] = json!("guard/special-address");
            v["dst_port"] = json!(port);
        },
    )
}

/// Sorts records by their end time.
fn by_time(r: &mut [Value]) {
    r.sort_by_key(|v| sluice_detect::parse_ts_ms(v["ts"].as_str().unwrap()).unwrap());
}

fn kinds(alerts: &[Alert]) -> Vec<(AlertKind, Option<String>)> {
    alerts.iter().map(|a| (a.kind, a.dst.clone())).collect()
}

#[test]
fn a_new_destination_alerts_when_significant_not_for_a_few_pages() {
    let mut r = learning("10.0.0.7");
    let after = T0 + 9 * DAY;
    // A new news site: five small pages. Nothing.
    r.extend(series(
        "news",
        5,
        "10.0.0.7",
        |i| after + i * MIN,
        |_| "www.news.example.co.uk".into(),
        |_, _| {},
    ));
    // A new site on a private suffix (its own registrable domain), 3 MB at a time.
    r.extend(uploads_to_a_new_site("10.0.0.7", after + HOUR));
    let alerts = run(&r);
    assert_eq!(
        kinds(&alerts),
        [(
            AlertKind::NewDestination,
            Some("alice.github.io".to_owned())
        )],
        "{alerts:?}"
    );
    let a = &alerts[0];
    assert_eq!(a.severity, Severity::Warning);
    assert_eq!(
        a.flows,
        ["up1"],
        "fired at the flow that made it significant"
    );
    assert_eq!(a.evidence["observed"]["bytes_out"], 6_000_000);
}

#[test]
fn beaconing_is_raised_for_a_new_regular_caller_not_one_learned() {
    let mut r = learning("10.0.0.7");
    // The zone's update agent polls every 5 minutes from the start.
    r.extend(series(
        "agent",
        9 * 24 * 12,
        "10.0.0.8",
        |i| T0 + i * 5 * MIN + (i % 3) * 1000,
        |_| "update.example.com".into(),
        |_, _| {},
    ));
    // After learning, a host starts calling a new destination every 60 s ± 2 s.
    let start = T0 + 8 * DAY + 2 * HOUR;
    r.extend(series(
        "b",
        40,
        "10.0.0.7",
        |i| start + i * MIN + [0, 2000, -1500, 1000][i as usize % 4],
        |_| "c2.evil.example".into(),
        |_, v| {
            v["bytes_out"] = json!(400);
            v["bytes_in"] = json!(300);
        },
    ));
    by_time(&mut r);
    let alerts = run(&r);
    let beacons: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.kind == AlertKind::Beaconing)
        .collect();
    assert_eq!(beacons.len(), 1, "{alerts:?}");
    let b = beacons[0];
    assert_eq!(b.src.as_deref(), Some("10.0.0.7"));
    assert_eq!(b.dst.as_deref(), Some("evil.example"));
    let fired = sluice_detect::parse_ts_ms(&b.ts).unwrap();
    assert!(fired - start < HOUR, "{b:?}");
    assert!(
        b.evidence["observed"]["jitter"].as_f64().unwrap() < 0.1,
        "{b:?}"
    );
}

#[test]
fn denied_bursts_count_distinct_denials_not_failures_after_allow() {
    let at = T0 + DAY;
    // 30 allowed flows that failed to connect: not denials.
    let mut r = series(
        "f",
        30,
        "10.0.0.9",
        |i| at + i * 1000,
        |i| format!("h{i}.example{i}.com"),
        |_, v| {
            v["error_kind"] = json!("connect");
            v["error"] = json!("connection refused");
        },
    );
    // 20 denials of one domain's names: one destination.
    r.extend(series(
        "d",
        20,
        "10.0.0.9",
        |i| at + MIN + i * 1000,
        |i| format!("x{i}.ads.example"),
        |_, v| {
            v["verdict"] = json!("deny");
            v["rule"] = json!("default");
        },
    ));
    assert_eq!(kinds(&run(&r)), []);
    // 20 distinct denied addresses in two minutes: a scan.
    r.extend(address_scan("10.0.0.9", at + 2 * MIN, 445));
    let alerts = run(&r);
    assert_eq!(
        kinds(&alerts),
        [(AlertKind::DeniedBurst, None)],
        "{alerts:?}"
    );
    assert_eq!(
        alerts[0].flows,
        ["s13"],
        "the 15th distinct destination (with ads.example)"
    );
    assert_eq!(alerts[0].evidence["observed"]["distinct"], 15);
}

#[test]
fn volume_ignores_downloads_and_an_established_backup() {
    let mut r = learning("10.0.0.7");
    // A nightly 3 GB backup to its usual bucket, from the first night.
    r.extend(series(
        "bk",
        12,
        "10.0.0.7",
        |d| T0 + d * DAY + 2 * HOUR,
        |_| "corp.backup-bucket.example".into(),
        |_, v| v["bytes_out"] = json!(3_000_000_000u64),
    ));
    // A 5 GB download at noon after learning: bytes_in.
    r.push(rec(
        "dl",
        T0 + 10 * DAY + 12 * HOUR,
        "10.0.0.7",
        "www.example.com",
        |v| {
            v["bytes_in"] = json!(5_000_000_000u64);
        },
    ));
    by_time(&mut r);
    assert_eq!(kinds(&run(&r)), []);
    // But 1 GB to a usual site at noon is.
    r.push(rec(
        "up",
        T0 + 12 * DAY + 12 * HOUR,
        "10.0.0.7",
        "www.example.com",
        |v| {
            v["bytes_out"] = json!(1_000_000_000u64);
        },
    ));
    let alerts = run(&r);
    assert_eq!(
        kinds(&alerts),
        [(AlertKind::Volume, Some("example.com".to_owned()))],
        "{alerts:?}"
    );
    assert_eq!(alerts[0].severity, Severity::Critical);
}

#[test]
fn a_long_upload_is_not_vouched_for_by_its_own_first_window() {
    let mut r = learning("10.0.0.7");
    // After learning, a 40-minute upload to a usual site, reported every
    // minute: 60 MB in its first (partial) window, then 110 MB a minute.
    // Its first window makes the site look like an upload destination of
    // this source; that must not excuse the gigabytes that follow.
    let start = T0 + 10 * DAY + 12 * HOUR + 8 * MIN;
    for m in 1..=40 {
        r.push(rec(
            "long",
            start + m * MIN,
            "10.0.0.7",
            "www.example.com",
            |v| {
                v["bytes_out"] = json!(if m == 1 { 60_000_000u64 } else { 110_000_000 });
                v["interim"] = json!(true);
            },
        ));
    }
    let alerts = run(&r);
    assert_eq!(
        kinds(&alerts),
        [(AlertKind::Volume, Some("example.com".to_owned()))],
        "{alerts:?}"
    );
    // In its second window, not after it.
    let fired = sluice_detect::parse_ts_ms(&alerts[0].ts).unwrap();
    assert!(fired - start <= 12 * MIN, "{alerts:?}");
}

/// The live detector given records in batches (`observe_batch`, one lock
/// a batch, as a NetFlow datagram's records reach it) raises exactly the
/// alerts it raises given the same records one at a time: a new
/// destination, a volume upload, a denied burst and a beacon among
/// ordinary traffic from two sources, in batches of 30 and of 7.
#[test]
fn batched_records_raise_the_same_alerts_as_single_ones() {
    use sluice_observe::{Detector, FlowRecord, Metrics};
    use std::sync::Arc;

    let mut r = learning("10.0.0.7");
    r.extend(learning("10.0.0.8"));
    let after = T0 + 9 * DAY;
    r.extend(uploads_to_a_new_site("10.0.0.7", after + HOUR));
    r.extend(series(
        "vol",
        6,
        "10.0.0.8",
        |i| after + 2 * HOUR + i * MIN,
        |_| "www.example.com".into(),
        |_, v| v["bytes_out"] = json!(400_000_000),
    ));
    r.extend(address_scan("10.0.0.8", after + 3 * HOUR, 443));
    r.extend(series(
        "b",
        20,
        "10.0.0.7",
        |i| after + 4 * HOUR + i * 5 * MIN,
        |_| "c2.example.biz".into(),
        |_, v| v["bytes_out"] = json!(300),
    ));
    r.sort_by_key(|v| v["ts"].as_str().unwrap().to_owned());
    let records: Vec<FlowRecord> = r
        .iter()
        .map(|v| {
            let mut f: FlowRecord = serde_json::from_value(v.clone()).unwrap();
            assert!(f.restore_times());
            f
        })
        .collect();
    let live = || {
        let metrics = Arc::new(Metrics::new());
        sluice_detect::Live::new(Settings::default(), None, None, metrics)
            .unwrap()
            .0
    };
    // Alerts without their ids (fresh for each alert).
    let plain = |alerts: Vec<Alert>| -> Vec<Value> {
        alerts
            .into_iter()
            .map(|a| {
                let mut v = serde_json::to_value(a).unwrap();
                v["id"] = Value::Null;
                v
            })
            .collect()
    };
    let one = live();
    let single: Vec<Alert> = records.iter().flat_map(|f| one.observe(f)).collect();
    let single = plain(single);
    let kinds: Vec<&str> = single.iter().filter_map(|a| a["kind"].as_str()).collect();
    for k in ["new-destination", "volume", "denied-burst", "beaconing"] {
        assert!(kinds.contains(&k), "the scenario raises {k}: {kinds:?}");
    }
    for size in [30, 7] {
        let batched = live();
        let mut out = Vec::new();
        for chunk in records.chunks(size) {
            batched.observe_batch(chunk, &mut out);
        }
        assert_eq!(plain(out), single, "batches of {size}");
    }
}
