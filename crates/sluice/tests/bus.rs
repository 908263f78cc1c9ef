//! The flow bus end to end: a real `nats-server -js` started by the test,
//! `sluice run` replicas publishing to it, and followers (the `sluice-bus`
//! library, as `sluice detect --follow` uses it) reading every record back
//! from durable consumers. Sources are loopback addresses `127.0.x.y`, so
//! one test is many clients in several zones and partitions.
#![allow(clippy::unwrap_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use sluice_bus::{FollowOptions, Followed, Partition, follow, partition_of};
use sluice_testkit::{NatsServer, Origin, Sluice, get_via_from, poll_until};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

const PARTITIONS: u32 = 4;

/// A replica publishing to `nats`: zone `lab` for 127.0.0.0/28, `ops` for
/// 127.0.1.0/24 (both may reach the origin), and no zone for the rest.
fn replica(nats: &NatsServer, origin: &Origin, queue: u32) -> Sluice {
    Sluice::start(
        BIN,
        &format!(
            "mode: enforce
bus:
  url: {}
  partitions: {PARTITIONS}
  queue: {queue}
zones:
  - name: lab
    sources: [127.0.0.0/28]
    allow:
      - cidr: 127.0.0.1/32
        ports: [{port}]
  - name: ops
    sources: [127.0.1.0/24]
    allow:
      - cidr: 127.0.0.1/32
        ports: [{port}]
",
            nats.url(),
            port = origin.addr.port()
        ),
    )
}

/// Every flow record a replica wrote to its flow log, by id.
fn logged(s: &Sluice) -> BTreeMap<String, serde_json::Value> {
    s.records()
        .into_iter()
        .map(|r| (r["id"].as_str().unwrap().to_owned(), r))
        .collect()
}

/// Reads from followers (one per share, all at once) until `want`
/// records came or `within` passed, then 300 ms more to catch extras.
fn follow_until(
    nats: &NatsServer,
    shares: &[(Partition, &str)],
    want: usize,
    within: Duration,
) -> Vec<(Partition, Followed)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut all = futures_util::stream::SelectAll::new();
        for &(share, durable) in shares {
            let f = follow(&FollowOptions {
                url: nats.url(),
                stream: "SLUICE".into(),
                partitions: PARTITIONS,
                partition: share,
                durable: durable.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("follow {share}: {e}"));
            all.push(f.map(move |item| (share, item)).boxed());
        }
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        let mut extra = None;
        loop {
            let until = extra.unwrap_or(deadline);
            match tokio::time::timeout_at(until, all.next()).await {
                Ok(Some((share, Ok(f)))) => out.push((share, f)),
                Ok(Some((share, Err(e)))) => panic!("follower {share}: {e}"),
                Ok(None) | Err(_) => break,
            }
            if out.len() >= want && extra.is_none() {
                extra = Some(tokio::time::Instant::now() + Duration::from_millis(300));
            }
        }
        out
    })
}

/// The subject a record must have been published on.
fn subject_of(r: &serde_json::Value) -> String {
    let zone = r["zone"].as_str().unwrap_or("default");
    let src: std::net::SocketAddr = r["src"].as_str().unwrap().parse().unwrap();
    format!("sluice.flows.{zone}.{}", partition_of(src.ip(), PARTITIONS))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// The requests of one round: source `i` of `sources` goes to replica
/// `i % 2`. Returns each request's latency; every answer must be `want`.
fn requests(replicas: &[&Sluice], sources: &[Ipv4Addr], url: &str, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|i| {
            let src = sources[i % sources.len()];
            let to = replicas[i % replicas.len()];
            let t = Instant::now();
            let r = get_via_from(src, to.http, url);
            let took = t.elapsed();
            let want = if src.octets()[2] == 2 { 403 } else { 200 };
            assert_eq!(r.status, Some(want), "request {i} from {src}: {r:?}");
            took
        })
        .collect()
}

/// Sources in zone `lab`, zone `ops`, and no zone (denied, zone null).
fn sources() -> Vec<Ipv4Addr> {
    let mut s: Vec<Ipv4Addr> = (1..=12).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    s.extend((1..=4).map(|i| Ipv4Addr::new(127, 0, 1, i)));
    s.push(Ipv4Addr::new(127, 0, 2, 9));
    s
}

/// Two replicas publish to one server; a follower of every partition gets
/// every record of both, on the subject of its zone and source partition,
/// the same JSON as the flow log; two followers `0/2` and `1/2` split them
/// with nothing lost or doubled.
#[test]
fn two_replicas_publish_every_record_on_its_zone_and_partition() {
    let nats = NatsServer::start();
    let origin = Origin::start("127.0.0.1");
    let url = format!("{}/bytes/7", origin.url());
    let a = replica(&nats, &origin, 10_000);
    let b = replica(&nats, &origin, 10_000);
    let sources = sources();
    requests(&[&a, &b], &sources, &url, 68);
    a.wait_records(34);
    b.wait_records(34);

    let mut records = logged(&a);
    let from_a = records.len();
    records.extend(logged(&b));
    assert_eq!(records.len(), 68, "flow logs of both replicas");
    assert!(from_a == 34, "each replica served half: {from_a}");
    for s in [&a, &b] {
        assert!(
            poll_until(Duration::from_secs(10), || s
                .metric("sluice_bus_published_total")
                >= 34.0),
            "published: {}",
            s.metric("sluice_bus_published_total")
        );
        assert_eq!(s.metric("sluice_bus_dropped_total"), 0.0);
        assert_eq!(s.metric("sluice_bus_connected"), 1.0);
    }

    let got = follow_until(
        &nats,
        &[(Partition::ALL, "all")],
        records.len(),
        Duration::from_secs(15),
    );
    let mut seen = BTreeSet::new();
    let mut partitions = BTreeSet::new();
    let mut zones = BTreeSet::new();
    for (_, f) in &got {
        let id = f.record.id().to_owned();
        let logged = records
            .get(&id)
            .unwrap_or_else(|| panic!("{id} on the bus is in no flow log"));
        assert!(seen.insert(id.clone()), "{id} came twice");
        assert_eq!(f.subject, subject_of(logged), "subject of {logged}");
        assert_eq!(
            f.subject.rsplit('.').next().unwrap(),
            f.partition.to_string()
        );
        assert_eq!(
            &serde_json::to_value(&f.record).unwrap(),
            logged,
            "the bus carries the flow log's record"
        );
        partitions.insert(f.partition);
        zones.insert(f.subject.split('.').nth(2).unwrap().to_owned());
    }
    assert_eq!(seen.len(), records.len(), "every record of both replicas");
    assert!(partitions.len() >= 3, "sources spread: {partitions:?}");
    assert_eq!(
        zones,
        BTreeSet::from(["default".into(), "lab".into(), "ops".into()])
    );

    // Two followers split the partitions between them.
    let half: [Partition; 2] = ["0/2".parse().unwrap(), "1/2".parse().unwrap()];
    let split = follow_until(
        &nats,
        &[(half[0], "split"), (half[1], "split")],
        records.len(),
        Duration::from_secs(15),
    );
    let mut ids = BTreeSet::new();
    for (share, f) in &split {
        assert!(
            share.owned(PARTITIONS).contains(&f.partition),
            "{share} got partition {}",
            f.partition
        );
        assert!(
            ids.insert(f.record.id().to_owned()),
            "{} came twice",
            f.record.id()
        );
    }
    assert_eq!(
        ids.len(),
        records.len(),
        "the two followers together got all"
    );
    for share in half {
        assert!(
            split.iter().any(|(s, _)| *s == share),
            "{share} got nothing"
        );
    }
}

/// The server is killed: the gateways keep answering at their usual
/// latency, records beyond the queue are dropped and counted, the rest wait;
/// the server comes back: what waited and what follows is published, and
/// every record is either on the bus or counted dropped.
#[test]
fn a_bus_outage_neither_slows_nor_stops_the_gateways() {
    const QUEUE: u32 = 20;
    let mut nats = NatsServer::start();
    let origin = Origin::start("127.0.0.1");
    let url = format!("{}/bytes/7", origin.url());
    let a = replica(&nats, &origin, QUEUE);
    let b = replica(&nats, &origin, QUEUE);
    let reps = [&a, &b];
    let sources = sources();
    let total = |m: &str| a.metric(m) + b.metric(m);

    let before = requests(&reps, &sources, &url, 40);
    assert!(poll_until(Duration::from_secs(10), || total(
        "sluice_bus_published_total"
    ) >= 40.0));

    nats.kill();
    assert!(
        poll_until(Duration::from_secs(10), || total("sluice_bus_connected")
            == 0.0),
        "the replicas noticed the outage"
    );
    let during = requests(&reps, &sources, &url, 100);
    let (p50_before, p50_during) = (
        percentile(before.clone(), 0.5),
        percentile(during.clone(), 0.5),
    );
    let (max_before, max_during) = (percentile(before, 1.0), percentile(during, 1.0));
    eprintln!(
        "latency before the outage p50 {:.1} ms max {:.1} ms; during p50 {:.1} ms max {:.1} ms",
        ms(p50_before),
        ms(max_before),
        ms(p50_during),
        ms(max_during)
    );
    assert!(
        p50_during <= p50_before * 3 + Duration::from_millis(20),
        "p50 {p50_during:?} during the outage against {p50_before:?} before"
    );
    assert!(
        max_during < Duration::from_secs(1),
        "slowest request {max_during:?}"
    );
    // Each replica served 50 during the outage and holds at most its queue
    // (and one publish it had started) for later.
    let dropped = total("sluice_bus_dropped_total");
    assert!(
        (2.0 * (50.0 - f64::from(QUEUE) - 1.0)..=2.0 * (50.0 - f64::from(QUEUE)))
            .contains(&dropped),
        "dropped {dropped}"
    );

    a.wait_records(70);
    b.wait_records(70);
    nats.restart();
    assert!(
        poll_until(Duration::from_secs(15), || total("sluice_bus_connected")
            == 2.0),
        "the replicas reconnected"
    );
    let after_ids_from = |s: &Sluice| logged(s).into_keys().collect::<BTreeSet<_>>();
    let (old_a, old_b) = (after_ids_from(&a), after_ids_from(&b));
    requests(&reps, &sources, &url, 20);
    a.wait_records(80);
    b.wait_records(80);
    let mut records = logged(&a);
    records.extend(logged(&b));
    assert_eq!(records.len(), 160);
    let after: BTreeSet<String> = records
        .keys()
        .filter(|id| !old_a.contains(*id) && !old_b.contains(*id))
        .cloned()
        .collect();
    assert_eq!(after.len(), 20);
    assert!(
        poll_until(Duration::from_secs(20), || total(
            "sluice_bus_published_total"
        ) + total(
            "sluice_bus_dropped_total"
        ) == 160.0),
        "published {} + dropped {} of 160",
        total("sluice_bus_published_total"),
        total("sluice_bus_dropped_total")
    );
    let published = total("sluice_bus_published_total") as usize;
    let got = follow_until(
        &nats,
        &[(Partition::ALL, "outage")],
        published,
        Duration::from_secs(15),
    );
    let ids: BTreeSet<String> = got.iter().map(|(_, f)| f.record.id().to_owned()).collect();
    assert_eq!(ids.len(), got.len(), "no record twice");
    assert_eq!(ids.len(), published, "every published record is on the bus");
    assert!(after.is_subset(&ids), "records after the restart arrived");
    assert!(ids.iter().all(|id| records.contains_key(id)));
    assert_eq!(
        160 - ids.len(),
        total("sluice_bus_dropped_total") as usize,
        "every record not on the bus is counted dropped"
    );
}
