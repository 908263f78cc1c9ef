//! Detection (issue 12) through the real binary: live in `sluice run` (a
//! `geo` alert from an upload leaving its zone's countries, reaching a
//! webhook receiver, a syslog receiver and `/api/v1/alerts` with the
//! record's `country` filled; a slow upload's interim records raising a
//! `volume` alert while the tunnel is still open; baselines kept across a
//! restart with `detect.state_dir`) and offline in `sluice detect` (event
//! time, interim records counted by volume, files merged, alerts once on
//! stdout). The dashboard's view of the geo alert is checked in Chromium
//! by `admin.rs` (tests/dashboard/run.mjs).

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::{
    io::Write,
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use serde_json::{Value, json};
use sluice_testkit::{
    GeoScenario, Origin, Sluice, SyslogReceiver, TempDir, WebhookReceiver, connect_tunnel, curl,
    poll_until, read_response, write_mmdb,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const T: Duration = Duration::from_secs(10);

#[test]
fn an_upload_outside_the_zones_countries_raises_a_geo_alert() {
    let geo = GeoScenario::new();
    let hook = WebhookReceiver::start(&[]);
    let syslog = SyslogReceiver::udp();
    let sinks = format!(
        "  webhook:\n    url: {}\n  syslog:\n    address: udp://{}\n",
        hook.url("/alerts"),
        syslog.addr
    );
    let s = Sluice::start(BIN, &geo.yaml(&sinks, ""));
    let up = geo.upload(&s, 2_000_000);
    assert_eq!(up.status, 200, "{}", up.stderr);
    assert!(
        poll_until(T, || !s.alerts("kind=geo").is_empty()),
        "{:?}",
        s.stderr.lock().unwrap()
    );
    let list = s.alerts("kind=geo");
    assert_eq!(list.len(), 1, "{list:?}");
    let a = &list[0];
    assert_eq!(a["severity"], "warning", "{a}");
    assert_eq!(a["zone"], "lan");
    assert_eq!(a["src"], "127.0.0.1");
    assert_eq!(a["dst"], "127.0.0.1");
    assert_eq!(a["country"], GeoScenario::COUNTRY);
    assert_eq!(a["count"], 1);
    assert_eq!(a["evidence"]["baseline"]["countries"], json!(["DE", "FR"]));
    assert!(
        a["evidence"]["observed"]["bytes_out"].as_u64().unwrap() >= 2_000_000,
        "{a}"
    );
    assert!(
        a["summary"]
            .as_str()
            .unwrap()
            .contains("outside zone lan's countries (DE, FR)"),
        "{a}"
    );
    // The record behind it, written with its country filled.
    let rec = s.wait_record("the geo alert's flow", |r| r["id"] == a["flows"][0]);
    assert_eq!(rec["country"], GeoScenario::COUNTRY);
    assert_eq!(rec["dst_ip"], "127.0.0.1");
    // One stderr line, the same object.
    let logged: Vec<Value> = s
        .stderr
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == "geo")
        .collect();
    assert_eq!(logged, vec![a.clone()]);
    // The webhook receiver got it, once, as one JSON POST.
    assert!(poll_until(T, || !hook.posts().is_empty()));
    let posts = hook.posts();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0].path, "/alerts");
    assert_eq!(posts[0].header("content-type"), Some("application/json"));
    // README "Detection" shows this alert as posted (`--nocapture`).
    println!("{}", String::from_utf8_lossy(&posts[0].body));
    let posted: Value = serde_json::from_slice(&posts[0].body).unwrap();
    assert_eq!(&posted, a);
    // The syslog receiver too: one RFC 5424 datagram, MSGID the kind,
    // warning (4) in facility 4: PRI 36; the message is the alert's JSON.
    assert!(poll_until(T, || !syslog.received().is_empty()));
    let got = syslog.received();
    assert_eq!(got.len(), 1);
    let msg = String::from_utf8(got[0].clone()).unwrap();
    let parts: Vec<&str> = msg.splitn(8, ' ').collect();
    assert_eq!(parts.len(), 8, "{msg}");
    assert_eq!(
        (parts[0], parts[3], parts[5]),
        ("<36>1", "sluice", "geo"),
        "{msg}"
    );
    let logged: Value = serde_json::from_str(parts[7]).unwrap();
    assert_eq!(&logged, a);
}

/// A slow upload through a CONNECT tunnel to the origin: `POST /upload`
/// with `chunks` chunks of `chunk` bytes, `pause` apart, calling `during`
/// after each chunk while the tunnel is open. Returns the origin's answer.
fn slow_upload(
    s: &Sluice,
    origin: &Origin,
    chunks: usize,
    chunk: usize,
    pause: Duration,
    mut during: impl FnMut(),
) -> Value {
    let mut t = connect_tunnel(s.http, &origin.addr.to_string(), T).unwrap();
    t.set_read_timeout(Some(T)).unwrap();
    write!(
        t,
        "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        origin.addr,
        chunks * chunk
    )
    .unwrap();
    for _ in 0..chunks {
        t.write_all(&vec![b'v'; chunk]).unwrap();
        std::thread::sleep(pause);
        during();
    }
    let r = read_response(&mut t, false);
    assert_eq!(r.status, Some(200), "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

#[test]
fn a_slow_upload_raises_volume_from_interim_records_before_its_tunnel_closes() {
    let origin = Origin::start("127.0.0.1");
    // Interim records every 200 ms; nothing to learn first, and a small
    // floor, so that 1.6 MB over 3 s is far more than this new source's
    // (empty) baseline.
    let s = Sluice::start(
        BIN,
        "log:\n  interim: 200ms\ndetect:\n  learn: 0s\n  volume:\n    window: 1m\n    floor: 300KB\n\
         zones:\n  - name: lan\n    sources: [127.0.0.0/8]\n    allow:\n      - cidr: 127.0.0.1/32\n        ports: any\n",
    );
    const CHUNKS: usize = 16;
    const CHUNK: usize = 100_000;
    let began = Instant::now();
    // What the flow log and the alerts held when the alert first showed.
    let mut seen: Option<(Value, Vec<Value>)> = None;
    let answer = slow_upload(
        &s,
        &origin,
        CHUNKS,
        CHUNK,
        Duration::from_millis(200),
        || {
            if seen.is_none() {
                if let Some(a) = s.alerts("kind=volume").first() {
                    seen = Some((a.clone(), s.records()));
                }
            }
        },
    );
    assert_eq!(answer["body_len"], CHUNKS * CHUNK, "the origin got it all");
    let Some((alert, then)) = seen else {
        panic!(
            "no volume alert while the upload ran ({:?}): {:?}",
            began.elapsed(),
            s.stderr.lock().unwrap()
        )
    };
    // When the alert showed, the tunnel had interim records and no closing one.
    let id = alert["flows"][0].clone();
    assert!(
        then.iter().any(|r| r["id"] == id && r["interim"] == true),
        "{then:#?}"
    );
    assert!(
        !then.iter().any(|r| r["id"] == id && r["interim"] == false),
        "{then:#?}"
    );
    // README "Detection" shows this alert as written on stderr (`--nocapture`).
    if let Some(line) = s
        .stderr
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.starts_with('{') && l.contains(r#""kind":"volume""#))
    {
        println!("{line}");
    }
    assert_eq!(alert["kind"], "volume");
    assert_eq!(alert["zone"], "lan");
    assert_eq!(alert["src"], "127.0.0.1");
    assert_eq!(alert["dst"], "127.0.0.1");
    assert!(
        matches!(alert["severity"].as_str(), Some("warning" | "critical")),
        "{alert}"
    );
    let observed = alert["evidence"]["observed"]["bytes_out"].as_u64().unwrap();
    assert!(
        (300_000..CHUNKS as u64 * CHUNK as u64).contains(&observed),
        "fired part-way through: {alert}"
    );
    // Then the tunnel closes: its closing record comes after the alert,
    // and the flow's records sum to what was sent (request head included).
    let closing = s.wait_record("the closing record", |r| {
        r["id"] == id && r["interim"] == false
    });
    assert!(
        closing["ts"].as_str().unwrap() > alert["ts"].as_str().unwrap(),
        "{closing} after {alert}"
    );
    let sent: u64 = s
        .records()
        .iter()
        .filter(|r| r["id"] == id)
        .map(|r| r["bytes_out"].as_u64().unwrap())
        .sum();
    assert!(
        sent > (CHUNKS * CHUNK) as u64 && sent < (CHUNKS * CHUNK) as u64 + 1000,
        "{sent}"
    );
    // One alert for the whole upload: the rest only raised its count.
    assert_eq!(s.alerts("kind=volume").len(), 1);
}

/// Two requests to the origin and whether they raised a `new-destination` alert.
fn two_requests_alert(s: &Sluice, origin: &Origin) -> bool {
    for _ in 0..2 {
        let c = curl(&["-x", &s.proxy_url(), &format!("{}/x", origin.url())]);
        assert_eq!(c.status, 200, "{}", c.stderr);
    }
    s.wait_records(2);
    // Records reach the detectors before the flow log.
    !s.alerts("kind=new-destination").is_empty()
}

#[test]
fn with_state_dir_a_restart_keeps_the_baseline() {
    let origin = Origin::start("127.0.0.1");
    let state = TempDir::new("detect-state");
    // Nothing to learn first (`learn: 0s`), and two flows make a new
    // destination significant.
    let yaml = |dir: Option<&std::path::Path>| {
        format!(
            "detect:\n  learn: 0s\n{}  new-destination:\n    min_flows: 2\nzones:\n  - name: lan\n    sources: [127.0.0.0/8]\n    allow:\n      - cidr: 127.0.0.1/32\n        ports: any\n",
            dir.map(|d| format!("  state_dir: {}\n", d.display()))
                .unwrap_or_default()
        )
    };
    let mut first = Sluice::start(BIN, &yaml(Some(&state.0)));
    assert!(two_requests_alert(&first, &origin), "the first run alerts");
    first.signal("TERM");
    assert_eq!(first.wait_exit(T), Some(0));
    assert!(state.path("detect.redb").exists());

    let again = Sluice::start(BIN, &yaml(Some(&state.0)));
    assert!(
        again.wait_log("detection baselines loaded", T),
        "{:?}",
        again.stderr.lock().unwrap()
    );
    assert!(
        !two_requests_alert(&again, &origin),
        "no repeated new-destination alert: {:?}",
        again.alerts("")
    );
    // Without the store the same restart forgets, and alerts again.
    let forgetful = Sluice::start(BIN, &yaml(None));
    assert!(two_requests_alert(&forgetful, &origin));
}

// === sluice detect ===

const DAY: i64 = 86_400_000;
/// 2026-01-05T00:00:00Z, a Monday.
const T0: i64 = 1_767_571_200_000;

/// One flow record line as the flow log writes it.
#[allow(clippy::too_many_arguments)]
fn record(
    id: &str,
    end_ms: i64,
    duration_ms: i64,
    src: &str,
    host: Option<&str>,
    dst_ip: &str,
    bytes_out: u64,
    interim: Option<bool>,
) -> String {
    let ts = |ms: i64| sluice_observe_ts(ms);
    json!({
        "ts": ts(end_ms), "start": ts(end_ms - duration_ms), "duration_ms": duration_ms, "id": id,
        "listener": "http", "protocol": "connect", "src": format!("{src}:40000"), "user": null,
        "zone": "lan", "mode": "enforce", "dst_host": host, "dst_ip": dst_ip, "dst_port": 443,
        "sni": host, "original_dst": null, "grant": null, "method": null, "status": null,
        "qtype": null, "answers": null, "verdict": "allow", "enforced": true, "rule": "lan/allow/1",
        "reason": "allowed", "bytes_out": bytes_out, "bytes_in": 5000, "route": "direct",
        "policy_hash": "h", "error": null, "error_kind": null, "interim": interim, "country": null,
        "tls": true, "intercepted": null, "findings": null, "exporter": null, "packets": null
    })
    .to_string()
}

/// RFC 3339 with milliseconds, as records write it.
fn sluice_observe_ts(ms: i64) -> String {
    let t = time::OffsetDateTime::from(SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn detect(dir: &TempDir, config: &str, files: &[&str]) -> (Vec<Value>, String) {
    let cfg = dir.path("sluice.yaml");
    std::fs::write(&cfg, config).unwrap();
    let out = Command::new(BIN)
        .args(["detect", "-c"])
        .arg(&cfg)
        .args(files.iter().map(|f| dir.path(f)))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let alerts = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (alerts, stderr)
}

const ZONE: &str = "zones:\n  - name: lan\n    sources: [10.0.0.0/8]\n    allow:\n      - host: \"*.example.com\"\n        ports: [443]\n";

#[test]
fn detect_help_exits_zero() {
    let out = Command::new(BIN)
        .args(["detect", "--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_lateness"));
}

#[test]
fn a_long_upload_raises_volume_from_its_interim_records_before_it_ends() {
    let dir = TempDir::new("detect-volume");
    // Eight days of a workstation sending 2 MB an hour to its usual host,
    // and downloading a lot (bytes_in never counts).
    let mut lines = Vec::new();
    for h in 0..(8 * 24) {
        let end = T0 + h * 3_600_000 + 600_000;
        lines.push(record(
            &format!("b{h}"),
            end,
            5000,
            "10.0.0.7",
            Some("api.example.com"),
            "93.184.216.34",
            2_000_000,
            None,
        ));
    }
    // Then a six-hour upload to a host it used before, reported every
    // minute: 50 MB an interim record; the closing record after six hours.
    let start = T0 + 8 * DAY + 10 * 3_600_000;
    for m in 1..=360 {
        lines.push(record(
            "long",
            start + m * 60_000,
            m * 60_000,
            "10.0.0.7",
            Some("api.example.com"),
            "93.184.216.34",
            50_000_000,
            Some(true),
        ));
    }
    lines.push(record(
        "long",
        start + 360 * 60_000 + 1000,
        360 * 60_000 + 1000,
        "10.0.0.7",
        Some("api.example.com"),
        "93.184.216.34",
        1000,
        None,
    ));
    // The same data split across two files, a few records of the second a
    // minute out of order: merged in event time.
    let (a, b): (Vec<_>, Vec<_>) = lines.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let mut b: Vec<&String> = b.into_iter().map(|(_, l)| l).collect();
    b.swap(100, 101);
    let a: Vec<&String> = a.into_iter().map(|(_, l)| l).collect();
    std::fs::write(
        dir.path("a.jsonl"),
        a.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    std::fs::write(
        dir.path("b.jsonl"),
        b.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();

    let (alerts, stderr) = detect(&dir, ZONE, &["a.jsonl", "b.jsonl"]);
    assert!(!stderr.contains("too late"), "{stderr}");
    assert!(alerts.iter().all(|a| a["kind"] == "volume"), "{alerts:?}");
    // Once when it first fires, then once an hour (the alert's window)
    // while it goes on: six hours, six alerts — each printed once.
    let fired: Vec<i64> = alerts
        .iter()
        .map(|a| sluice_detect::parse_ts_ms(a["ts"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(alerts.len(), 6, "{alerts:?}");
    assert!(
        fired.windows(2).all(|w| w[1] - w[0] >= 3_600_000),
        "{fired:?}"
    );
    let v = &alerts[0];
    assert_eq!(v["src"], "10.0.0.7");
    assert_eq!(v["dst"], "example.com");
    assert_eq!(v["count"], 1);
    assert!(
        matches!(v["severity"].as_str(), Some("warning" | "critical")),
        "{v}"
    );
    // Within minutes of the start, from interim records.
    assert!(fired[0] - start <= 10 * 60_000, "{v}");
    assert_eq!(v["flows"], json!(["long"]));
    assert!(
        v["evidence"]["observed"]["bytes_out"].as_u64().unwrap() >= 100_000_000,
        "{v}"
    );
}

#[test]
fn detect_reads_countries_from_a_database_beside_the_config() {
    let dir = TempDir::new("detect-geo");
    write_mmdb(
        &dir.path("countries.mmdb"),
        &[("198.51.100.0/24", "KP"), ("93.184.216.0/24", "DE")],
    );
    let config = format!("detect:\n  geoip: countries.mmdb\n{ZONE}    countries: [DE]\n");
    let lines = [
        record(
            "ok",
            T0,
            100,
            "10.0.0.7",
            Some("api.example.com"),
            "93.184.216.34",
            1000,
            None,
        ),
        record(
            "far",
            T0 + 1000,
            100,
            "10.0.0.7",
            None,
            "198.51.100.9",
            2_000_000,
            None,
        ),
        "not json".to_owned(),
    ];
    std::fs::write(dir.path("r.jsonl"), lines.join("\n")).unwrap();
    let (alerts, stderr) = detect(&dir, &config, &["r.jsonl"]);
    assert!(stderr.contains("skipped"), "{stderr}");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["kind"], "geo");
    assert_eq!(alerts[0]["country"], "KP");
    assert_eq!(alerts[0]["dst"], "198.51.100.9");
    assert_eq!(alerts[0]["flows"], json!(["far"]));
}
