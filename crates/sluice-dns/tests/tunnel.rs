//! The DNS tunnelling detector: entropy, a burst of random subdomains
//! alerting once per window (warning for A, critical for TXT), ordinary
//! traffic staying quiet (moved here from the in-file test module of
//! `tunnel`).

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use hickory_proto::rr::RecordType;
use sluice_dns::tunnel::{TunnelDetector, TunnelSettings, TunnelSignal, entropy};
use sluice_observe::{AlertKind, Severity};
use sluice_testkit::random_label;

fn detector() -> TunnelDetector {
    TunnelDetector::new(TunnelSettings {
        threshold: 0.6,
        window: Duration::from_secs(60),
        min_queries: 20,
    })
}

#[test]
fn entropy_is_bits_per_character() {
    assert_eq!(entropy("aaaa"), 0.0);
    assert_eq!(entropy("ab"), 1.0);
    assert!((entropy(&random_label(7)) - 4.5).abs() < 0.5);
}

#[test]
fn a_burst_of_random_subdomains_alerts_once() {
    let d = detector();
    let zone: Arc<str> = "web".into();
    let t0 = Instant::now();
    let alerts: Vec<TunnelSignal> = (0..60)
        .filter_map(|i| {
            let name = format!("{}.t.exfil.co.uk", random_label(i));
            d.observe(&zone, &name, RecordType::A, t0)
        })
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a.domain, "exfil.co.uk");
    assert!(a.score >= 0.6, "{a:?}");
    assert_eq!(a.queries, 20);
    assert_eq!(a.max_label, 50);
    // The next window may alert again.
    let later = t0 + Duration::from_secs(61);
    let again = (100..140).find_map(|i| {
        let name = format!("{}.exfil.co.uk", random_label(i));
        d.observe(&zone, &name, RecordType::TXT, later)
    });
    assert!(again.as_ref().is_some_and(|a| a.odd_types == 1.0));

    // As alerts: A queries warn, TXT ones (data in the answers) are critical.
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let src: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
    let warn = a.alert(src, "f1", at);
    assert_eq!(warn.kind, AlertKind::DnsTunnel);
    assert_eq!(warn.severity, Severity::Warning);
    assert_eq!(warn.zone.as_deref(), Some("web"));
    assert_eq!(warn.src.as_deref(), Some("10.0.0.5"));
    assert_eq!(warn.dst.as_deref(), Some("exfil.co.uk"));
    assert_eq!(warn.flows, ["f1"]);
    assert_eq!(warn.ts, "2023-11-14T22:13:20.000Z");
    assert!(
        warn.summary.starts_with(
            "possible DNS tunnelling to exfil.co.uk from 10.0.0.5: 20 queries, 20 unique subdomains, score 0."
        ),
        "{}",
        warn.summary
    );
    assert_eq!(warn.evidence["threshold"], 0.6);
    assert_eq!(warn.evidence["max_label"], 50);
    assert_eq!(warn.evidence["queries"], 20);
    let critical = again.unwrap().alert(src, "f2", at);
    assert_eq!(critical.severity, Severity::Critical);
    assert_eq!(critical.evidence["odd_types"], 1.0);
}

#[test]
fn ordinary_traffic_stays_quiet() {
    let d = detector();
    let zone: Arc<str> = "web".into();
    let t0 = Instant::now();
    let names = [
        "www.example.com",
        "example.com",
        "api.example.com",
        "cdn1.example.com",
        "img.example.com",
        "static.example.com",
    ];
    for i in 0..500 {
        let name = names[i % names.len()];
        assert_eq!(d.observe(&zone, name, RecordType::A, t0), None);
        assert_eq!(d.observe(&zone, name, RecordType::AAAA, t0), None);
    }
    // Many distinct but short hosts under one domain.
    for i in 0..200 {
        let name = format!("host{i}.corp.example.org");
        assert_eq!(d.observe(&zone, &name, RecordType::A, t0), None);
    }
}
