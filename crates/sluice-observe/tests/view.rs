//! The admin view: bounded rings newest first, filters, rule hits, top
//! sources and destinations in a window, traffic buckets and the live
//! stream (moved here from the in-file test module of `view`).

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_observe::{
    BUCKETS, FlowFilter, FlowRecord, FlowView, Listener, OTHER, Protocol, TopBy, ViewLimits,
};
use sluice_policy::Verdict;

fn limits() -> ViewLimits {
    ViewLimits {
        recent_flows: 3,
        recent_denials: 2,
        window: Duration::from_secs(600),
        top_entries: 2,
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn flow(zone: &str, host: &str, verdict: &str, src: &str, t: u64) -> FlowRecord {
    let mut r = FlowRecord::new(
        Listener::Http,
        Protocol::Connect,
        src.parse().unwrap(),
        at(t),
    );
    r.finish(at(t));
    r.zone = Some(zone.into());
    r.dst_host = Some(host.into());
    r.verdict = match verdict {
        "allow" => Verdict::Allow,
        _ => Verdict::Deny,
    };
    r.rule = format!("{zone}/{verdict}/1");
    r.bytes_out = 10;
    r.bytes_in = 100;
    r
}

#[test]
fn rings_are_bounded_and_newest_first() {
    let v = FlowView::new(limits());
    for i in 0..5 {
        v.push(
            &flow("web", &format!("h{i}.test"), "deny", "10.0.0.1:1", i),
            at(i),
        );
    }
    let all = v.flows(&FlowFilter::default(), 100);
    let hosts: Vec<_> = all.iter().map(|r| r.dst_host.clone().unwrap()).collect();
    assert_eq!(hosts, ["h4.test", "h3.test", "h2.test"]);
    assert_eq!(v.denials(&FlowFilter::default(), 100).len(), 2);
    assert_eq!(v.flows(&FlowFilter::default(), 1).len(), 1);
}

#[test]
fn filters_combine() {
    let v = FlowView::new(ViewLimits {
        recent_flows: 100,
        ..limits()
    });
    v.push(
        &flow("web", "api.github.com", "allow", "10.0.0.1:1", 1),
        at(1),
    );
    v.push(&flow("ci", "GitHub.io", "deny", "10.0.0.2:1", 2), at(2));
    v.push(&flow("web", "pastebin.com", "deny", "10.0.0.1:1", 3), at(3));
    let q = |f: FlowFilter| -> Vec<String> {
        v.flows(&f, 100)
            .iter()
            .map(|r| r.dst_host.clone().unwrap())
            .collect()
    };
    let host = |h: &str| Some(h.to_owned());
    assert_eq!(
        q(FlowFilter {
            host: host("GITHUB"),
            ..Default::default()
        }),
        ["GitHub.io", "api.github.com"]
    );
    assert_eq!(
        q(FlowFilter {
            zone: host("web"),
            verdict: Some(Verdict::Deny),
            ..Default::default()
        }),
        ["pastebin.com"]
    );
    assert_eq!(
        q(FlowFilter {
            since: Some(at(2)),
            until: Some(at(2)),
            ..Default::default()
        }),
        ["GitHub.io"]
    );
}

#[test]
fn rule_hits_count_and_remember_the_last() {
    let v = FlowView::new(limits());
    v.push(&flow("web", "a.test", "allow", "10.0.0.1:1", 5), at(5));
    v.push(&flow("web", "a.test", "allow", "10.0.0.1:1", 9), at(9));
    let s = v.rule_stats();
    assert_eq!(s["web/allow/1"].hits, 2);
    assert_eq!(s["web/allow/1"].last_hit, at(9));
}

#[test]
fn top_ranks_and_bounds_keys() {
    let v = FlowView::new(limits());
    for (host, n) in [("a.test", 3), ("b.test", 2), ("c.test", 1)] {
        for _ in 0..n {
            v.push(&flow("web", host, "allow", "10.0.0.1:9", 0), at(0));
        }
    }
    let top = v.top(at(1), Duration::from_secs(600), None, TopBy::Flows, 10);
    assert_eq!(top.len(), 1);
    let d: Vec<_> = top[0]
        .destinations
        .iter()
        .map(|e| (e.key.as_str(), e.totals.flows))
        .collect();
    // top_entries = 2: the third key is summed under (other).
    assert_eq!(d, [("a.test", 3), ("b.test", 2), (OTHER, 1)]);
    assert_eq!(top[0].sources[0].key, "10.0.0.1");
    assert_eq!(top[0].totals.bytes_out, 60);
    // Outside the window nothing is left.
    assert!(
        v.top(at(2000), Duration::from_secs(600), None, TopBy::Flows, 10)
            .is_empty()
    );
}

#[test]
fn sources_are_addresses_without_ports() {
    let v = FlowView::new(limits());
    for src in ["[2001:db8::7]:4000", "[::ffff:10.0.0.3]:5", "10.0.0.3:6"] {
        v.push(&flow("web", "a.test", "allow", src, 0), at(0));
    }
    let top = v.top(at(1), Duration::from_secs(600), None, TopBy::Flows, 10);
    let s: Vec<_> = top[0]
        .sources
        .iter()
        .map(|e| (e.key.as_str(), e.totals.flows))
        .collect();
    assert_eq!(s, [("10.0.0.3", 2), ("2001:db8::7", 1)]);
}

#[test]
fn traffic_has_even_buckets() {
    let v = FlowView::new(limits());
    v.push(&flow("web", "a.test", "allow", "10.0.0.1:9", 0), at(0));
    let t = v.traffic(at(0));
    assert_eq!(t.len(), BUCKETS as usize);
    let last = t.last().unwrap();
    assert_eq!(last.zones["web"].bytes_out, 10);
    assert!(t[..t.len() - 1].iter().all(|b| b.zones.is_empty()));
}

#[tokio::test]
async fn subscribers_see_new_flows() {
    let v = FlowView::new(limits());
    let mut rx = v.subscribe();
    v.push(&flow("web", "a.test", "allow", "10.0.0.1:9", 0), at(0));
    let (seq, r) = rx.recv().await.unwrap();
    assert_eq!(r.dst_host.as_deref(), Some("a.test"));
    assert_eq!(seq, 1, "sequence numbers start at 1");
}

#[test]
fn flows_after_a_sequence_number_come_from_the_ring_oldest_first() {
    let v = FlowView::new(ViewLimits {
        recent_flows: 3,
        ..limits()
    });
    assert_eq!(v.after(0), (vec![], 0));
    for (i, h) in ["a.test", "b.test", "c.test", "d.test", "e.test"]
        .iter()
        .enumerate()
    {
        v.push(&flow("web", h, "allow", "10.0.0.1:9", 0), at(i as u64));
    }
    assert_eq!(v.last_seq(), 5);
    let hosts = |after| {
        let (found, missed) = v.after(after);
        let hosts: Vec<(u64, String)> = found
            .iter()
            .map(|(s, r)| (*s, r.dst_host.clone().unwrap()))
            .collect();
        (hosts, missed)
    };
    let (found, missed) = hosts(3);
    assert_eq!(found, vec![(4, "d.test".into()), (5, "e.test".into())]);
    assert_eq!(missed, 0);
    // 1 and 2 left the ring of 3: resuming after 0 misses two.
    let (found, missed) = hosts(0);
    assert_eq!(found.len(), 3);
    assert_eq!(missed, 2);
    assert_eq!(hosts(5), (vec![], 0));
}

#[test]
fn interim_records_add_bytes_but_count_the_flow_and_its_rule_once() {
    let v = FlowView::new(limits());
    // A report-mode would-be denial that ran long: two interim records,
    // then the closing one.
    let mut r = flow("web", "a.test", "deny", "10.0.0.1:1", 5);
    r.interim = Some(true);
    v.push(&r, at(5));
    v.push(&r, at(6));
    r.interim = Some(false);
    v.push(&r, at(7));
    let top = v.top(at(8), Duration::from_secs(600), None, TopBy::Flows, 10);
    assert_eq!(top[0].totals.flows, 1);
    assert_eq!(top[0].totals.denied, 1);
    assert_eq!(top[0].totals.bytes_out, 30);
    assert_eq!(top[0].totals.bytes_in, 300);
    assert_eq!(top[0].destinations[0].totals.flows, 1);
    assert_eq!(top[0].sources[0].totals.bytes_out, 30);
    assert_eq!(v.rule_stats()["web/deny/1"].hits, 1);
    assert_eq!(v.denials(&FlowFilter::default(), 100).len(), 1);
    // Every record shows in the recent flows (and the live stream).
    assert_eq!(v.flows(&FlowFilter::default(), 100).len(), 3);
}
