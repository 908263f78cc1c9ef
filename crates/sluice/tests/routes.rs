//! Routes, end to end with real components: other Sluice processes as HTTP
//! CONNECT and SOCKS5 parents, a stub DNS server that gives the front
//! gateway (and a parent) its answers, and a local origin that reports the
//! address each request came from.
//!
//! What is asserted is what the parents and the origin saw: a parent is
//! asked for the checked IP address (its own flow record shows the IP as
//! `dst_host`) while the origin still sees the name in `Host`; a name
//! resolving to a special address is refused before any parent hears of
//! it; a route's `source` is the peer address the origin sees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::{SocketAddr, TcpListener},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_testkit::{
    FixtureDns, Origin, Sluice, TempDir, connect_tunnel, get_on, get_via, poll_until,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A parent: a Sluice that lets its loopback clients reach the origin's
/// port on 127.0.0.1 (and nothing else), on `http` (a fixed port, so that
/// it can be started again in the same place) with `extra` config.
fn parent(origin_port: u16, http: u16, extra: &str) -> Sluice {
    Sluice::start(
        BIN,
        &format!(
            "listen:\n  http: 127.0.0.1:{http}\n  admin: 127.0.0.1:0\n{extra}zones:\n  \
             - name: children\n    sources: [127.0.0.0/8]\n    mode: enforce\n    allow:\n      \
             - cidr: 127.0.0.1/32\n        ports: [{origin_port}]\n"
        ),
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One request through a CONNECT tunnel of `front` to `authority`; the
/// origin's JSON echo, or `None` when anything failed.
fn tunnel_get(front: SocketAddr, authority: &str) -> Option<Value> {
    let mut s = connect_tunnel(front, authority, Duration::from_secs(5)).ok()?;
    let r = get_on(&mut s, authority, "/");
    (r.status == Some(200))
        .then(|| serde_json::from_slice(&r.body).ok())
        .flatten()
}

/// A parent's record of a request from the front: for an IP address
/// (`dst_ip`), not a name (`dst_host` is null).
fn asked_for_the_ip(seen: &Value) {
    assert_eq!(
        seen["dst_host"],
        Value::Null,
        "the parent was asked for a name: {seen}"
    );
    assert_eq!(seen["dst_ip"], "127.0.0.1", "{seen}");
    assert_eq!(seen["verdict"], "allow", "{seen}");
}

#[test]
fn parents_are_asked_for_the_checked_ip_and_a_killed_parent_is_failed_over_within_the_interval() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let dns = FixtureDns::stub(&[("origin.test", &["127.0.0.1"])]);
    let (pa, pb) = (free_port(), free_port());
    let mut a = parent(port, pa, "");
    let b = parent(port, pb, "");
    let front = Sluice::start(
        BIN,
        &format!(
            "dns:\n  upstreams: [{}]\nroutes:\n  - name: parents\n    \
             via: [http://127.0.0.1:{pa}, http://127.0.0.1:{pb}]\n    \
             health_check: {{interval: 500ms, timeout: 200ms}}\n\
             zones:\n  - name: apps\n    sources: [127.0.0.0/8]\n    mode: enforce\n    \
             route: parents\n    allow:\n      - cidr: 127.0.0.1/32\n        ports: [{port}]\n",
            dns.addr
        ),
    );
    let authority = format!("origin.test:{port}");
    let via_a = format!("parents/127.0.0.1:{pa}");
    let via_b = format!("parents/127.0.0.1:{pb}");

    // Failover order: the first parent carries while it is up. It was
    // asked for the checked IP; the origin still got the name as Host.
    let echo = tunnel_get(front.http, &authority).expect("a tunnel through parent a");
    assert_eq!(echo["headers"]["host"], authority.as_str(), "{echo}");
    let rec = front.wait_record("tunnel via a", |r| r["protocol"] == "connect");
    assert_eq!(rec["route"], via_a.as_str(), "{rec}");
    assert_eq!(rec["dst_host"], "origin.test", "{rec}");
    let seen = a.wait_record("a's tunnel", |r| r["protocol"] == "connect");
    asked_for_the_ip(&seen);
    // An absolute-form request: tunnelled through the parent to the IP,
    // sent inside in origin form with the name as Host.
    let r = get_via(front.http, &format!("http://{authority}/plain"));
    assert_eq!(r.status, Some(200), "{}", r.text());
    let echo: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(echo["uri"], "/plain", "{echo}");
    assert_eq!(echo["headers"]["host"], authority.as_str(), "{echo}");
    for seen in a.wait_records(2) {
        asked_for_the_ip(&seen);
    }

    // Steady load from two clients; parent a is killed in the middle.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            let (front, authority) = (front.http, authority.clone());
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(20);
                for _ in 0..2000 {
                    if stop.load(Ordering::SeqCst) || Instant::now() > until {
                        break;
                    }
                    match tunnel_get(front, &authority) {
                        Some(_) => ok.fetch_add(1, Ordering::SeqCst),
                        None => failed.fetch_add(1, Ordering::SeqCst),
                    };
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    assert!(poll_until(Duration::from_secs(10), || ok
        .load(Ordering::SeqCst)
        >= 20));
    let up_a = format!("sluice_route_up{{route=\"parents\",hop=\"127.0.0.1:{pa}\"}}");
    assert_eq!(front.metric(&up_a), 1.0);
    let _ = a.child.kill();
    let _ = a.child.wait();
    let killed = Instant::now();
    let ok_at_kill = ok.load(Ordering::SeqCst);
    // Ejected by the active check within its interval plus its timeout
    // (or earlier, by failed dials).
    assert!(
        poll_until(Duration::from_secs(3), || front.metric(&up_a) == 0.0),
        "parent a still up"
    );
    let ejected_after = killed.elapsed();
    assert!(
        poll_until(Duration::from_secs(10), || ok.load(Ordering::SeqCst)
            >= ok_at_kill + 40),
        "traffic did not move to parent b"
    );
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    // Only what was in flight through parent a when it died may fail.
    assert!(failed <= 2, "{failed} of {} requests failed", ok + failed);
    // Every tunnel that started after the interval went through b.
    let interval = Duration::from_millis(700);
    std::thread::sleep(Duration::from_millis(200));
    let late: Vec<Value> = front
        .records()
        .into_iter()
        .filter(|r| r["protocol"] == "connect" && r["verdict"] == "allow")
        .rev()
        .take(20)
        .collect();
    assert!(
        late.iter().all(|r| r["route"] == via_b.as_str()),
        "{late:#?}"
    );
    for seen in b.wait_records(1) {
        asked_for_the_ip(&seen);
    }
    eprintln!(
        "route failover: {ok} requests ok, {failed} failed; parent a ejected {}ms after SIGKILL (interval 500ms)",
        ejected_after.as_millis()
    );
    assert!(ejected_after < interval + Duration::from_millis(1500));

    // Parent a back on its port: the next good check brings it back, and
    // the failover order sends traffic to it again.
    let _a = parent(port, pa, "");
    assert!(
        poll_until(Duration::from_secs(3), || front.metric(&up_a) == 1.0),
        "parent a not back after a good check"
    );
    let through_a = || {
        front
            .records()
            .iter()
            .filter(|r| r["route"] == via_a.as_str())
            .count()
    };
    let before = through_a();
    tunnel_get(front.http, &authority).expect("a tunnel after a is back");
    assert!(
        poll_until(Duration::from_secs(5), || through_a() > before),
        "traffic did not return to parent a"
    );
    assert!(
        front.metric(&format!(
            "sluice_route_dials_total{{route=\"parents\",hop=\"127.0.0.1:{pb}\",result=\"ok\"}}"
        )) >= 40.0
    );
}

#[test]
fn a_name_resolving_to_a_special_address_is_refused_before_any_parent_hears_of_it() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    // The parent's resolver would send rebind.test to the origin, which
    // it allows: had the front passed the name on, the parent would have
    // connected.
    let parent_dns = FixtureDns::stub(&[("rebind.test", &["127.0.0.1"])]);
    let p = parent(
        port,
        free_port(),
        &format!("dns:\n  upstreams: [{}]\n", parent_dns.addr),
    );
    let authority = format!("rebind.test:{port}");
    assert!(
        tunnel_get(p.http, &authority).is_some(),
        "the parent itself resolves rebind.test to the origin"
    );
    let hits = origin.hits.load(Ordering::SeqCst);
    let parent_records = p.wait_records(1).len();
    // The front's resolver says 127.0.0.2: special, and in no cidr rule.
    let dns = FixtureDns::stub(&[("rebind.test", &["127.0.0.2"])]);
    let front = Sluice::start(
        BIN,
        &format!(
            "dns:\n  upstreams: [{}]\nroutes:\n  - name: up\n    via: [http://{}]\n\
             zones:\n  - name: apps\n    sources: [127.0.0.0/8]\n    mode: enforce\n    \
             route: up\n    allow:\n      - host: rebind.test\n        ports: [{port}]\n      \
             - cidr: 127.0.0.1/32\n        ports: [{port}]\n",
            dns.addr, p.http
        ),
    );
    let refused = connect_tunnel(front.http, &authority, Duration::from_secs(5))
        .expect_err("a tunnel to a special address");
    assert_eq!(refused.status, Some(403), "{}", refused.text());
    let rec = front.wait_record("refusal", |r| r["verdict"] == "deny");
    assert_eq!(rec["rule"], "guard/special-address", "{rec}");
    assert_eq!(rec["route"], Value::Null, "nothing was dialed: {rec}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(origin.hits.load(Ordering::SeqCst), hits);
    assert_eq!(
        p.records().len(),
        parent_records,
        "the parent heard of it: {:#?}",
        p.records()
    );
}

#[test]
fn an_allow_rules_route_wins_over_the_zones_and_socks5_parents_get_the_ip() {
    let (o1, o2) = (Origin::start("127.0.0.1"), Origin::start("127.0.0.1"));
    let (p1, p2) = (o1.addr.port(), o2.addr.port());
    let rules = format!(
        "zones:\n  - name: children\n    sources: [127.0.0.0/8]\n    mode: enforce\n    \
         allow:\n      - cidr: 127.0.0.1/32\n        ports: [{p1}, {p2}]\n"
    );
    let socks = Sluice::start(
        BIN,
        &format!(
            "listen:\n  http: 127.0.0.1:0\n  socks5: 127.0.0.1:0\n  admin: 127.0.0.1:0\n{rules}"
        ),
    );
    let http = Sluice::start(BIN, &rules);
    let dns = FixtureDns::stub(&[("origin.test", &["127.0.0.1"])]);
    let s5 = socks.socks5.unwrap();
    let front = Sluice::start(
        BIN,
        &format!(
            "dns:\n  upstreams: [{}]\nroutes:\n  - name: socks\n    via: [socks5://{s5}]\n  \
             - name: web\n    via: [http://{}]\n\
             zones:\n  - name: apps\n    sources: [127.0.0.0/8]\n    mode: enforce\n    \
             route: web\n    allow:\n      - cidr: 127.0.0.1/32\n        ports: [{p1}]\n        \
             route: socks\n      - cidr: 127.0.0.1/32\n        ports: [{p2}]\n",
            dns.addr, http.http
        ),
    );
    let echo = tunnel_get(front.http, &format!("origin.test:{p1}")).expect("via socks5");
    assert_eq!(
        echo["headers"]["host"],
        format!("origin.test:{p1}").as_str()
    );
    tunnel_get(front.http, &format!("origin.test:{p2}")).expect("via http");
    let recs = front.wait_records(2);
    let route_of = |p: u16| {
        recs.iter()
            .find(|r| r["dst_port"] == p)
            .map(|r| r["route"].clone())
    };
    assert_eq!(
        route_of(p1),
        Some(format!("socks/{s5}").into()),
        "{recs:#?}"
    );
    assert_eq!(
        route_of(p2),
        Some(format!("web/{}", http.http).into()),
        "{recs:#?}"
    );
    let seen = socks.wait_record("socks5 tunnel", |r| r["listener"] == "socks5");
    asked_for_the_ip(&seen);
    assert_eq!(seen["dst_port"], p1, "{seen}");
}

#[test]
fn direct_from_a_pinned_source_or_interface_and_routes_apply_on_reload() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let config = |route: &str| {
        format!(
            "routes:\n  - name: pinned\n    via: [direct]\n    source: 127.0.0.2\n  \
             - name: by-lo\n    via: [direct]\n    interface: lo\n  \
             - name: nowhere\n    via: [direct]\n    interface: nosuch0\n\
             zones:\n  - name: apps\n    sources: [127.0.0.0/8]\n    mode: enforce\n    \
             route: {route}\n    allow:\n      - cidr: 127.0.0.1/32\n        ports: [{port}]\n"
        )
    };
    let front = Sluice::start(BIN, &config("pinned"));
    let peer_of = |r: &sluice_testkit::RawResponse| {
        let echo: Value = serde_json::from_slice(&r.body).unwrap();
        let peer: SocketAddr = echo["peer"].as_str().unwrap().parse().unwrap();
        peer.ip().to_string()
    };
    let r = get_via(front.http, &origin.url());
    assert_eq!(r.status, Some(200), "{}", r.text());
    assert_eq!(peer_of(&r), "127.0.0.2", "the origin saw another source");
    let rec = front.wait_record("pinned", |r| r["verdict"] == "allow");
    assert_eq!(rec["route"], "pinned", "{rec}");

    // A reload moves the zone to another route at once.
    let text = std::fs::read_to_string(&front.config).unwrap();
    let swap = |from: &str, to: &str| {
        std::fs::write(
            &front.config,
            text.replace(&format!("route: {from}"), &format!("route: {to}")),
        )
        .unwrap();
        let n = front
            .stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("policy reloaded"))
            .count();
        front.signal("HUP");
        assert!(poll_until(Duration::from_secs(10), || {
            front
                .stderr
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains("policy reloaded"))
                .count()
                > n
        }));
    };
    swap("pinned", "by-lo");
    let r = get_via(front.http, &origin.url());
    assert_eq!(r.status, Some(200), "{}", r.text());
    assert_eq!(peer_of(&r), "127.0.0.1");
    let rec = front.wait_record("by-lo", |r| r["route"] == "by-lo");
    assert_eq!(rec["verdict"], "allow", "{rec}");

    // An interface that does not exist: the dial fails, and says why.
    swap("pinned", "nowhere");
    let r = get_via(front.http, &origin.url());
    assert_eq!(r.status, Some(502), "{}", r.text());
    let rec = front.wait_record("nowhere", |r| r["route"] == "nowhere");
    assert!(
        rec["error"]
            .as_str()
            .unwrap_or("")
            .contains("cannot leave by interface nosuch0"),
        "{rec}"
    );
}

#[test]
fn route_names_are_checked_with_positions() {
    let dir = TempDir::new("routes-validate");
    let file = dir.path("sluice.yaml");
    std::fs::write(
        &file,
        "routes:\n  - name: direct\n    via: [direct]\n  - name: up\n    \
         via: [http://parent.internal:3128#weight=2, ftp://x:1, direct, direct]\n    \
         select: sometimes\n\
         zones:\n  - name: apps\n    sources: [127.0.0.0/8]\n    route: nowhere\n    allow:\n      \
         - host: example.com\n        ports: [443]\n        route: elsewhere\n    deny:\n      \
         - host: bad.example\n        route: up\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["validate", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    for want in [
        ":2:11: route name `direct` is built in",
        ":5:49: `ftp://x:1`: expected `direct`",
        ":5:68: `direct` is named twice",
        ":6:13: expected `failover` or `weighted`",
        ":10:12: route `nowhere` is not defined under `routes:`; expected one of: direct, up",
        ":14:16: route `elsewhere` is not defined",
        ":16:9: a deny rule takes no `route`",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn an_idle_parent_is_ejected_by_its_health_check_within_the_interval() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let pp = free_port();
    let mut p = parent(port, pp, "");
    let front = Sluice::start(
        BIN,
        &format!(
            "routes:\n  - name: up\n    via: [http://127.0.0.1:{pp}, direct]\n    \
             health_check: {{interval: 300ms, timeout: 100ms}}\n\
             zones:\n  - name: apps\n    sources: [127.0.0.0/8]\n    mode: enforce\n    \
             route: up\n    allow:\n      - cidr: 127.0.0.1/32\n        ports: [{port}]\n"
        ),
    );
    let up = format!("sluice_route_up{{route=\"up\",hop=\"127.0.0.1:{pp}\"}}");
    let direct = "sluice_route_up{route=\"up\",hop=\"direct\"}";
    assert_eq!(front.metric(&up), 1.0);
    assert_eq!(front.metric(direct), 1.0);
    // No traffic at all: only the active check can notice.
    let _ = p.child.kill();
    let _ = p.child.wait();
    let killed = Instant::now();
    assert!(
        poll_until(Duration::from_secs(3), || front.metric(&up) == 0.0),
        "the health check did not eject the parent"
    );
    let took = killed.elapsed();
    eprintln!(
        "health check: idle parent ejected {}ms after SIGKILL (interval 300ms)",
        took.as_millis()
    );
    assert!(took < Duration::from_millis(300 + 100 + 400), "{took:?}");
    assert!(front.wait_log("parent down: health check failed", Duration::from_secs(1)));
    // The next hop, `direct`, carries at once.
    let echo = tunnel_get(front.http, &format!("127.0.0.1:{port}")).expect("direct");
    assert_eq!(echo["method"], "GET");
    let rec = front.wait_record("direct hop", |r| r["verdict"] == "allow");
    assert_eq!(rec["route"], "up", "{rec}");
    assert_eq!(
        front.metric(&format!(
            "sluice_route_dials_total{{route=\"up\",hop=\"127.0.0.1:{pp}\",result=\"failed\"}}"
        )),
        0.0,
        "an ejected parent was dialed"
    );
}
