//! The alert ring: serialization in docs/design.md's field order, repeats
//! folded into a count within the window, the capacity bound, and the
//! query filters.

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_observe::{
    Alert, AlertFilter, AlertKind, AlertRing, DEFAULT_WINDOW, MAX_FLOWS, Severity,
};

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn alert(kind: AlertKind, src: &str, dst: &str, at: SystemTime) -> Alert {
    let mut a = Alert::new(kind, Severity::Warning, at, format!("{src} to {dst}"));
    a.src = Some(src.into());
    a.dst = Some(dst.into());
    a.zone = Some("lan".into());
    a
}

#[test]
fn serializes_every_field_in_order_with_kebab_case_names() {
    let mut a = alert(AlertKind::DnsTunnel, "10.0.0.5", "example.com", t(0));
    a.evidence = serde_json::json!({ "score": 0.84 });
    a.flows = vec!["abc".into()];
    let text = serde_json::to_string(&a).unwrap();
    let keys: Vec<&str> = [
        "ts", "kind", "severity", "zone", "src", "user", "dst", "country", "summary", "evidence",
        "flows", "id", "count",
    ]
    .to_vec();
    let mut last = 0;
    for k in &keys {
        let at = text.find(&format!("\"{k}\":")).unwrap();
        assert!(at >= last, "{k} out of order in {text}");
        last = at;
    }
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v.as_object().unwrap().len(), keys.len(), "{text}");
    assert_eq!(v["kind"], "dns-tunnel");
    assert_eq!(v["severity"], "warning");
    assert_eq!(v["user"], serde_json::Value::Null);
    assert_eq!(v["ts"], "2023-11-14T22:13:20.000Z");
    assert_eq!(v["count"], 1);
    let back: Alert = serde_json::from_str(&text).unwrap();
    assert_eq!(back, a);
    assert_eq!(back.fired_at(), Some(t(0)));
    assert_eq!(back.window(), DEFAULT_WINDOW);
    for k in AlertKind::ALL {
        let json = serde_json::to_value(k).unwrap();
        assert_eq!(json, k.as_str());
        assert_eq!(AlertKind::from_name(k.as_str()), Some(k));
    }
    assert_eq!(AlertKind::from_name("DNS-tunnel"), None);
    assert_eq!(Severity::from_name("critical"), Some(Severity::Critical));
}

#[test]
fn repeats_within_the_window_raise_the_count_and_are_not_emitted() {
    let ring = AlertRing::new(10);
    let first = alert(AlertKind::DnsTunnel, "10.0.0.5", "example.com", t(0));
    let id = first.id.clone();
    assert!(ring.push(first).is_some());
    let mut again = alert(AlertKind::DnsTunnel, "10.0.0.5", "example.com", t(60));
    again.flows = vec!["f2".into()];
    assert!(ring.push(again).is_none(), "a repeat is not emitted");
    // Out of order, still within the window of the stored one.
    assert!(
        ring.push(alert(AlertKind::DnsTunnel, "10.0.0.5", "example.com", t(0)))
            .is_none()
    );
    let stored = ring.query(&AlertFilter::default(), 10);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, id);
    assert_eq!(stored[0].count, 3);
    assert_eq!(stored[0].flows, ["f2"]);
    // Another source, destination or kind is another alert.
    assert!(
        ring.push(alert(
            AlertKind::DnsTunnel,
            "10.0.0.6",
            "example.com",
            t(61)
        ))
        .is_some()
    );
    assert!(
        ring.push(alert(
            AlertKind::DnsTunnel,
            "10.0.0.5",
            "example.org",
            t(61)
        ))
        .is_some()
    );
    assert!(
        ring.push(alert(AlertKind::Volume, "10.0.0.5", "example.com", t(61)))
            .is_some()
    );
    // After the window (from when it first fired) it fires again.
    let later = alert(AlertKind::DnsTunnel, "10.0.0.5", "example.com", t(300));
    let later_id = later.id.clone();
    assert!(ring.push(later).is_some());
    assert!(
        ring.push(alert(
            AlertKind::DnsTunnel,
            "10.0.0.5",
            "example.com",
            t(301)
        ))
        .is_none()
    );
    let newest = &ring.query(&AlertFilter::default(), 1)[0];
    assert_eq!((newest.id.as_str(), newest.count), (later_id.as_str(), 2));
    // A shorter window of the detector's own.
    let short = alert(AlertKind::Geo, "10.0.0.5", "x", t(0)).with_window(Duration::from_secs(10));
    assert!(ring.push(short).is_some());
    assert!(
        ring.push(alert(AlertKind::Geo, "10.0.0.5", "x", t(10)))
            .is_some()
    );
}

#[test]
fn capacity_bounds_the_ring_and_evicted_alerts_fire_again() {
    let ring = AlertRing::new(3);
    for i in 0..10 {
        let a = alert(
            AlertKind::DnsTunnel,
            "10.0.0.5",
            &format!("d{i}.test"),
            t(i),
        );
        assert!(ring.push(a).is_some());
    }
    assert_eq!(ring.len(), 3);
    let dsts: Vec<_> = ring
        .query(&AlertFilter::default(), 100)
        .into_iter()
        .map(|a| a.dst.unwrap())
        .collect();
    assert_eq!(dsts, ["d9.test", "d8.test", "d7.test"], "newest first");
    // The repeat of a stored one still folds; of an evicted one, fires.
    assert!(
        ring.push(alert(AlertKind::DnsTunnel, "10.0.0.5", "d8.test", t(20)))
            .is_none()
    );
    assert!(
        ring.push(alert(AlertKind::DnsTunnel, "10.0.0.5", "d0.test", t(20)))
            .is_some()
    );
    assert_eq!(ring.len(), 3);
    assert_eq!(AlertRing::new(0).capacity(), 1);
}

#[test]
fn flows_per_alert_are_bounded() {
    let ring = AlertRing::new(2);
    let mut a = alert(AlertKind::DnsTunnel, "10.0.0.5", "example.com", t(0));
    a.flows = (0..40).map(|i| format!("f{i}")).collect();
    assert_eq!(ring.push(a).unwrap().flows.len(), MAX_FLOWS);
    let mut b = alert(AlertKind::DnsTunnel, "10.0.0.5", "example.com", t(1));
    b.flows = vec!["late".into()];
    ring.push(b);
    let stored = &ring.query(&AlertFilter::default(), 1)[0];
    assert_eq!(stored.flows.len(), MAX_FLOWS);
    assert!(!stored.flows.contains(&"late".to_owned()));
}

#[test]
fn filters_by_kind_minimum_severity_zone_and_time() {
    let ring = AlertRing::new(10);
    let mut info = alert(AlertKind::Volume, "10.0.0.1", "a.test", t(0));
    info.severity = Severity::Info;
    let warning = alert(AlertKind::DnsTunnel, "10.0.0.2", "b.test", t(10));
    let mut critical = alert(AlertKind::DnsTunnel, "10.0.0.3", "c.test", t(20));
    critical.severity = Severity::Critical;
    critical.zone = Some("dmz".into());
    for a in [info, warning, critical] {
        ring.push(a);
    }
    let dsts = |f: AlertFilter, limit: usize| -> Vec<String> {
        ring.query(&f, limit)
            .into_iter()
            .map(|a| a.dst.unwrap())
            .collect()
    };
    assert_eq!(
        dsts(AlertFilter::default(), 10),
        ["c.test", "b.test", "a.test"]
    );
    assert_eq!(dsts(AlertFilter::default(), 1), ["c.test"]);
    let kind = AlertFilter {
        kind: Some(AlertKind::DnsTunnel),
        ..AlertFilter::default()
    };
    assert_eq!(dsts(kind, 10), ["c.test", "b.test"]);
    let at_least = |s| AlertFilter {
        severity: Some(s),
        ..AlertFilter::default()
    };
    assert_eq!(dsts(at_least(Severity::Warning), 10), ["c.test", "b.test"]);
    assert_eq!(dsts(at_least(Severity::Critical), 10), ["c.test"]);
    assert_eq!(dsts(at_least(Severity::Info), 10).len(), 3);
    let zone = AlertFilter {
        zone: Some("lan".into()),
        ..AlertFilter::default()
    };
    assert_eq!(dsts(zone, 10), ["b.test", "a.test"]);
    let since = AlertFilter {
        since: Some(t(10)),
        ..AlertFilter::default()
    };
    assert_eq!(dsts(since, 10), ["c.test", "b.test"]);
    let none = AlertFilter {
        kind: Some(AlertKind::Volume),
        zone: Some("dmz".into()),
        ..AlertFilter::default()
    };
    assert!(dsts(none, 10).is_empty());
}
