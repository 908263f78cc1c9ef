//! The `dns-tunnel` detector: entropy, a burst of random subdomains
//! alerting once per window (warning for A, critical for TXT), ordinary
//! traffic staying quiet (moved here with the detector from `sluice-dns`),
//! and the engine running it on DNS flow records keyed per source, denied
//! queries included.

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use sluice_detect::{
    Engine, RecordLine, Settings,
    tunnel::{TunnelDetector, TunnelSettings, TunnelSignal, entropy},
};
use sluice_observe::{AlertKind, Severity};
use sluice_testkit::random_label;

fn detector() -> TunnelDetector {
    TunnelDetector::new(TunnelSettings {
        threshold: 0.6,
        window: Duration::from_secs(60),
        min_queries: 20,
    })
}

const T0: i64 = 1_700_000_000_000;

fn src() -> IpAddr {
    "10.0.0.5".parse().unwrap()
}

#[test]
fn entropy_is_bits_per_character() {
    assert_eq!(entropy("aaaa"), 0.0);
    assert_eq!(entropy("ab"), 1.0);
    assert!((entropy(&random_label(7)) - 4.5).abs() < 0.5);
}

#[test]
fn a_burst_of_random_subdomains_alerts_once() {
    let mut d = detector();
    let alerts: Vec<TunnelSignal> = (0..60)
        .filter_map(|i| {
            let name = format!("{}.t.exfil.co.uk", random_label(i));
            d.observe("web", src(), &name, "A", T0)
        })
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a.domain, "exfil.co.uk");
    assert!(a.score >= 0.6, "{a:?}");
    assert_eq!(a.queries, 20);
    assert_eq!(a.max_label, 50);
    // The next window (in record time) may alert again.
    let later = T0 + 61_000;
    let again = (100..140).find_map(|i| {
        let name = format!("{}.exfil.co.uk", random_label(i));
        d.observe("web", src(), &name, "TXT", later)
    });
    assert!(again.as_ref().is_some_and(|a| a.odd_types == 1.0));

    // As alerts: A queries warn, TXT ones (data in the answers) are critical.
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
    let warn = a.alert(mapped, "f1", at);
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
    let critical = again.unwrap().alert(mapped, "f2", at);
    assert_eq!(critical.severity, Severity::Critical);
    assert_eq!(critical.evidence["odd_types"], 1.0);
}

#[test]
fn windows_are_per_source() {
    let mut d = detector();
    let other: IpAddr = "10.0.0.6".parse().unwrap();
    // Two clients sharing the domain, 10 queries each: neither reaches 20.
    for i in 0..10 {
        for s in [src(), other] {
            let name = format!("{}.exfil.co.uk", random_label(i));
            assert_eq!(d.observe("web", s, &name, "TXT", T0), None);
        }
    }
}

#[test]
fn ordinary_traffic_stays_quiet() {
    let mut d = detector();
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
        assert_eq!(d.observe("web", src(), name, "A", T0), None);
        assert_eq!(d.observe("web", src(), name, "AAAA", T0), None);
    }
    // Many distinct but short hosts under one domain.
    for i in 0..200 {
        let name = format!("host{i}.corp.example.org");
        assert_eq!(d.observe("web", src(), &name, "A", T0), None);
    }
}

/// A DNS flow record as the flow log writes it.
fn dns_line(i: u64, name: &str, verdict: &str) -> String {
    let ts = sluice_observe::rfc3339(
        SystemTime::UNIX_EPOCH + Duration::from_millis(T0 as u64 + i * 100),
    );
    format!(
        r#"{{"ts":"{ts}","start":"{ts}","duration_ms":0,"id":"q{i}","listener":"dns","protocol":"dns","src":"10.0.0.5:5353","user":null,"zone":"web","mode":"enforce","dst_host":"{name}","dst_ip":null,"dst_port":null,"sni":null,"original_dst":null,"grant":null,"method":null,"status":null,"qtype":"TXT","answers":null,"verdict":"{verdict}","enforced":true,"rule":"default","reason":"r","bytes_out":60,"bytes_in":60,"route":null,"policy_hash":"h","error":null,"error_kind":null,"interim":null,"country":null,"tls":null,"intercepted":null,"findings":null,"exporter":null,"packets":null}}"#
    )
}

#[test]
fn the_engine_raises_it_from_dns_records_even_when_every_query_was_denied() {
    let mut engine = Engine::new(Settings::default(), None);
    let mut alerts = Vec::new();
    for i in 0..40 {
        let line = dns_line(
            i,
            &format!("{}.t.exfil.example.com", random_label(i)),
            "deny",
        );
        let r = RecordLine::parse(line.as_bytes()).unwrap();
        alerts.extend(engine.observe(&r.obs().unwrap()));
    }
    let tunnel: Vec<_> = alerts
        .iter()
        .filter(|a| a.kind == AlertKind::DnsTunnel)
        .collect();
    assert_eq!(tunnel.len(), 1, "{alerts:?}");
    assert_eq!(tunnel[0].src.as_deref(), Some("10.0.0.5"));
    assert_eq!(tunnel[0].dst.as_deref(), Some("example.com"));
    assert_eq!(tunnel[0].severity, Severity::Critical);
    assert_eq!(tunnel[0].flows, ["q19"]);
    // Many denials under one registrable domain are one destination: no
    // denied-burst.
    assert!(
        alerts.iter().all(|a| a.kind != AlertKind::DeniedBurst),
        "{alerts:?}"
    );
}
