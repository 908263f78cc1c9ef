//! Fleet-wide detection through the real binaries: a `nats-server -js`
//! started by the test, two `sluice run` replicas publishing to it with
//! `detect.embedded: false`, and one `sluice detect --follow` judging every
//! replica's flows. A volume exfiltration split evenly across the two
//! replicas stays under `detect.volume.floor` in each replica's own view —
//! two replicas with the embedded detector and no bus, given the same
//! split, stay silent, while one of them given the whole upload alerts —
//! and the follower alerts on it once, on stdout, on `sluice.alerts` and to
//! its webhook. Then the server is killed and restarted: the gateways keep
//! serving, drops are counted, and an exfiltration after the restart
//! reaches the follower and alerts too.
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    net::Ipv4Addr,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_bus::{BusMetrics, BusOptions, Publisher};
use sluice_observe::{FlowBus, FlowRecord, Listener, Protocol};
use sluice_testkit::{
    KillOnDrop, NatsServer, Origin, Sluice, TempDir, WebhookReceiver, get_via_from, poll_until,
    post_via_from,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// `detect.volume.floor`: an upload of 1.2 MB alerts, 600 KB does not.
const FLOOR: &str = "1MB";
/// One upload; eight make 1.2 MB, four 600 KB.
const UPLOAD: usize = 150_000;

/// What every process shares: one zone for 127.0.0.0/24 that may reach the
/// origin, detection judging at once (no learning) with a 1 MB floor, and
/// only the volume detector, so that the alerts counted are the ones the
/// test causes.
fn common(origin: &Origin) -> String {
    format!(
        "mode: enforce
zones:
  - name: lab
    sources: [127.0.0.0/24]
    allow:
      - cidr: 127.0.0.1/32
        ports: [{port}]
detect:
  learn: 0s
  max_lateness: 1s
  volume:
    floor: {FLOOR}
  new-destination:
    enabled: false
  beaconing:
    enabled: false
  denied-burst:
    enabled: false
",
        port = origin.addr.port()
    )
}

/// The bus section every replica and the follower share.
fn bus(nats: &NatsServer, queue: u32) -> String {
    format!(
        "bus:
  url: {}
  partitions: 4
  queue: {queue}
",
        nats.url()
    )
}

/// A replica publishing to the bus with no detector of its own.
fn replica(nats: &NatsServer, origin: &Origin) -> Sluice {
    let yaml = common(origin).replace("detect:\n", "detect:\n  embedded: false\n") + &bus(nats, 20);
    Sluice::start(BIN, &yaml)
}

/// A replica with the embedded detector and no bus: the control.
fn embedded(origin: &Origin) -> Sluice {
    Sluice::start(BIN, &common(origin))
}

/// `sluice detect --follow` with its stdout and stderr kept.
struct Follower {
    _child: KillOnDrop,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl Follower {
    fn start(nats: &NatsServer, origin: &Origin, webhook: &WebhookReceiver) -> Follower {
        let yaml = common(origin).replace(
            "detect:\n",
            &format!("detect:\n  webhook:\n    url: {}\n", webhook.url("/alerts")),
        ) + &bus(nats, 1000);
        Follower::start_with(&yaml, nats, "0/1", "fleet")
    }

    /// `sluice detect -c (yaml) --follow (nats) --partition (share)`.
    fn start_with(yaml: &str, nats: &NatsServer, share: &str, durable: &str) -> Follower {
        let dir = TempDir::new("follower");
        let config = dir.path("detect.yaml");
        std::fs::write(&config, yaml).unwrap();
        let mut child = Command::new(BIN)
            .args(["detect", "-c"])
            .arg(&config)
            .args(["--follow", &nats.url(), "--partition", share])
            .args(["--durable", durable])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = keep_lines(child.stdout.take().unwrap());
        let stderr = keep_lines(child.stderr.take().unwrap());
        Follower {
            _child: KillOnDrop(child),
            stdout,
            stderr,
            _dir: dir,
        }
    }

    /// The alerts it wrote to stdout.
    fn alerts(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// SIGTERM, then waits (at most 20 s) for it to exit: it judges what
    /// it buffered and writes its last line.
    fn stop(&mut self) {
        let pid = self._child.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self._child.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the follower did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Its output threads read to the end.
        assert!(poll_until(Duration::from_secs(5), || self
            .stderr()
            .contains("followed ")));
    }
}

fn keep_lines(from: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let kept = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            kept.lock().unwrap().push(line);
        }
    });
    lines
}

/// Volume alerts naming `src`.
fn volume_for(alerts: &[Value], src: Ipv4Addr) -> usize {
    alerts
        .iter()
        .filter(|a| a["kind"] == "volume" && a["src"] == src.to_string())
        .count()
}

/// The alerts a replica's admin API holds.
fn api_alerts(s: &Sluice) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&s.admin_get("/api/v1/alerts").body).unwrap();
    v["alerts"].as_array().unwrap().clone()
}

/// `n` uploads from `src`, taking turns over `via`; every one allowed.
fn exfiltrate(src: Ipv4Addr, via: &[&Sluice], url: &str, n: usize) {
    for i in 0..n {
        let to = via[i % via.len()];
        let r = post_via_from(src, to.http, url, UPLOAD);
        assert_eq!(r.status, Some(200), "upload {i} from {src}: {r:?}");
    }
}

/// Records a replica logged from `src`, and their bytes out.
fn bytes_out_from(s: &Sluice, src: Ipv4Addr) -> (usize, u64) {
    let prefix = format!("{src}:");
    let rs: Vec<Value> = s
        .records()
        .into_iter()
        .filter(|r| r["src"].as_str().is_some_and(|a| a.starts_with(&prefix)))
        .collect();
    let bytes = rs.iter().map(|r| r["bytes_out"].as_u64().unwrap()).sum();
    (rs.len(), bytes)
}

/// The alerts stored on `sluice.alerts`.
fn bus_alerts(nats: &NatsServer) -> Vec<Value> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let js = async_nats_jetstream(nats).await;
        let mut stream = js.get_stream("SLUICE").await.unwrap();
        let last = stream.info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            let Ok(m) = stream.get_raw_message(seq).await else {
                continue;
            };
            if m.subject.as_str() == "sluice.alerts" {
                out.push(serde_json::from_slice(&m.payload).unwrap());
            }
        }
        out
    })
}

async fn async_nats_jetstream(nats: &NatsServer) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap())
}

#[test]
fn an_exfiltration_split_across_replicas_alerts_once_fleet_wide_and_survives_a_bus_restart() {
    let mut nats = NatsServer::start();
    let origin = Origin::start("127.0.0.1");
    let url = format!("{}/upload", origin.url());
    let webhook = WebhookReceiver::start(&[]);
    let a = replica(&nats, &origin);
    let b = replica(&nats, &origin);
    let (c, d) = (embedded(&origin), embedded(&origin));
    let follower = Follower::start(&nats, &origin, &webhook);

    // The control: the same split through two replicas that judge their
    // own flows raises nothing (600 KB each, under the 1 MB floor)…
    let split = Ipv4Addr::new(127, 0, 0, 50);
    exfiltrate(split, &[&c, &d], &url, 8);
    // …while one of them given a whole upload (another source) alerts.
    let whole = Ipv4Addr::new(127, 0, 0, 60);
    exfiltrate(whole, &[&c], &url, 8);
    assert!(
        poll_until(Duration::from_secs(10), || volume_for(
            &api_alerts(&c),
            whole
        ) == 1),
        "the embedded control alerts on 1.2 MB through one replica: {:?}",
        api_alerts(&c)
    );
    for s in [&c, &d] {
        assert!(poll_until(Duration::from_secs(10), || bytes_out_from(
            s, split
        )
        .0 == 4));
        let (_, bytes) = bytes_out_from(s, split);
        assert!(
            (600_000..1_000_000).contains(&bytes),
            "each replica saw {bytes} bytes out from {split}, under the floor"
        );
        assert_eq!(volume_for(&api_alerts(s), split), 0, "{:?}", api_alerts(s));
    }

    // The fleet: the same split through the publishing replicas.
    exfiltrate(split, &[&a, &b], &url, 8);
    assert!(
        poll_until(Duration::from_secs(20), || volume_for(
            &follower.alerts(),
            split
        ) >= 1),
        "the follower alerts on the split upload; stdout {:?}\nstderr {}",
        follower.alerts(),
        follower.stderr()
    );
    for s in [&a, &b] {
        assert!(poll_until(Duration::from_secs(10), || bytes_out_from(
            s, split
        )
        .0 == 4));
        let (_, bytes) = bytes_out_from(s, split);
        assert!((600_000..1_000_000).contains(&bytes), "{bytes}");
        assert!(api_alerts(s).is_empty(), "no detector on a replica");
    }
    // Once: more of the same within the alert's window only counts.
    exfiltrate(split, &[&a, &b], &url, 2);
    std::thread::sleep(Duration::from_millis(1500));
    let alerts = follower.alerts();
    assert_eq!(volume_for(&alerts, split), 1, "{alerts:?}");
    let alert = alerts.iter().find(|a| a["kind"] == "volume").unwrap();
    assert_eq!(alert["zone"], "lab");
    assert!(
        poll_until(Duration::from_secs(10), || webhook.posts().len() == 1),
        "one webhook POST: {}",
        webhook.posts().len()
    );
    let posted: Value = serde_json::from_slice(&webhook.posts()[0].body).unwrap();
    assert_eq!(posted["id"], alert["id"]);
    assert!(
        poll_until(Duration::from_secs(10), || bus_alerts(&nats).len() == 1),
        "one alert on sluice.alerts"
    );
    assert_eq!(bus_alerts(&nats)[0]["id"], alert["id"]);

    // The bus goes away: the gateways keep serving and count what they
    // cannot hold (queue 20 each).
    nats.kill();
    let total = |m: &str| a.metric(m) + b.metric(m);
    assert!(
        poll_until(Duration::from_secs(10), || total("sluice_bus_connected")
            == 0.0),
        "the replicas noticed the outage"
    );
    let t = Instant::now();
    for i in 0..60u8 {
        let src = Ipv4Addr::new(127, 0, 0, 100 + i % 20);
        let to = [&a, &b][usize::from(i % 2)];
        let r = get_via_from(src, to.http, &format!("{}/bytes/10", origin.url()));
        assert_eq!(r.status, Some(200), "request {i} during the outage");
    }
    let took = t.elapsed();
    eprintln!("60 requests during the bus outage took {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let dropped = total("sluice_bus_dropped_total");
    assert!(
        dropped >= 2.0 * (30.0 - 20.0 - 1.0),
        "drops counted: {dropped}"
    );

    // It comes back: a new exfiltration, split again, reaches the
    // follower through the same durable consumers and alerts.
    nats.restart();
    assert!(
        poll_until(Duration::from_secs(15), || total("sluice_bus_connected")
            == 2.0),
        "the replicas reconnected"
    );
    let after = Ipv4Addr::new(127, 0, 0, 70);
    exfiltrate(after, &[&a, &b], &url, 8);
    assert!(
        poll_until(Duration::from_secs(30), || volume_for(
            &follower.alerts(),
            after
        ) == 1),
        "an exfiltration after the restart alerts; stdout {:?}\nstderr {}",
        follower.alerts(),
        follower.stderr()
    );
    assert_eq!(volume_for(&follower.alerts(), split), 1);
    assert!(
        poll_until(Duration::from_secs(10), || webhook.posts().len() == 2),
        "two webhook POSTs: {}",
        webhook.posts().len()
    );
    for s in [&a, &b] {
        assert!(api_alerts(s).is_empty());
    }
}

#[test]
fn a_follower_share_that_is_not_k_of_n_or_owns_no_partition_is_refused() {
    let dir = TempDir::new("follower-args");
    let config = dir.path("detect.yaml");
    std::fs::write(
        &config,
        "zones: []\nbus:\n  url: nats://127.0.0.1:1\n  partitions: 4\n",
    )
    .unwrap();
    for (share, want) in [
        ("2/2", "expected --partition K/N"),
        ("5/8", "owns none of the 4 partitions"),
    ] {
        let out = Command::new(BIN)
            .args(["detect", "-c"])
            .arg(&config)
            .args(["--follow", "nats://127.0.0.1:1", "--partition", share])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{share}: {err}");
        assert!(err.contains(want), "{share}: {err}");
    }
}

/// A finished record as a replica would publish it: `src` in zone `lab`
/// to `host` (127.0.0.1), `bytes` out, ending at `end`.
fn flow(src: &str, host: &str, bytes: u64, end: std::time::SystemTime) -> Arc<FlowRecord> {
    let mut r = FlowRecord::new(
        Listener::Http,
        Protocol::Connect,
        src.parse().unwrap(),
        end - Duration::from_secs(1),
    );
    r.zone = Some("lab".into());
    r.verdict = sluice_policy::Verdict::Allow;
    r.rule = "lab/allow/1".into();
    r.dst_host = Some(host.into());
    r.dst_ip = Some("127.0.0.1".parse().unwrap());
    r.dst_port = Some(443);
    r.bytes_out = bytes;
    r.bytes_in = 100;
    r.finish(end);
    Arc::new(r)
}

/// Publishes `records` as one replica: its own connection and publisher.
fn publish_as_replica(nats: &NatsServer, partitions: u32, records: &[Arc<FlowRecord>]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut registry = sluice_observe::Metrics::new();
        let metrics = BusMetrics::register(registry.registry_mut());
        let (queue, publisher) = Publisher::start(
            BusOptions {
                url: nats.url(),
                stream: "SLUICE".into(),
                partitions,
                queue: 10_000,
            },
            metrics,
        );
        for r in records {
            queue.record(r, &r.json());
        }
        drop(queue);
        publisher.close(Duration::from_secs(10)).await;
        let text = registry.encode();
        assert!(
            text.contains(&format!("sluice_bus_published_total {}\n", records.len())),
            "{text}"
        );
    });
}

/// Messages a follower's consumers have not had yet, or not acknowledged.
fn unfinished(nats: &NatsServer, durable: &str, partitions: u32) -> Option<u64> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let js = async_nats_jetstream(nats).await;
        let stream = js.get_stream("SLUICE").await.ok()?;
        let mut left = 0;
        for p in 0..partitions {
            let mut c: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer(&format!("{durable}-{p}")).await.ok()?;
            let info = c.info().await.ok()?;
            left += info.num_pending + info.num_ack_pending as u64;
        }
        Some(left)
    })
}

/// Only `new-destination`, judged after one hour of learning.
const LEARNING: &str = "mode: enforce
zones:
  - name: lab
    sources: [10.0.0.0/8]
    allow:
      - cidr: 127.0.0.1/32
        ports: [443]
detect:
  learn: 1h
  max_lateness: 3h
  new-destination:
    min_flows: 1
  volume:
    enabled: false
  beaconing:
    enabled: false
  denied-burst:
    enabled: false
";

#[test]
fn the_follower_judges_two_replicas_records_in_event_time_like_sluice_detect_on_files() {
    let nats = NatsServer::start();
    let yaml = format!("{LEARNING}{}", bus(&nats, 1000));
    // A day ago: the zone's first flow (through replica A) opens its hour
    // of learning with `known.example`; two hours later a flow (through
    // replica B) reaches `new.example`, after learning: new-destination.
    let t0 = std::time::SystemTime::now() - Duration::from_secs(24 * 3600);
    let first = flow("10.0.0.5:40000", "known.example", 1000, t0);
    let later = flow(
        "10.0.0.5:40001",
        "new.example",
        1000,
        t0 + Duration::from_secs(2 * 3600),
    );
    // B's record reaches the bus first: judged in arrival order, the zone
    // would start learning at B's time and `new.example` would be learnt,
    // not alerted on (and A's, earlier, would be learning too).
    publish_as_replica(&nats, 4, std::slice::from_ref(&later));
    publish_as_replica(&nats, 4, std::slice::from_ref(&first));

    let mut follower = Follower::start_with(&yaml, &nats, "0/1", "order");
    assert!(
        poll_until(Duration::from_secs(20), || unfinished(&nats, "order", 4)
            == Some(0)),
        "the follower took both records; stderr {}",
        follower.stderr()
    );
    // Both wait for max_lateness (3 h of event time after the latest):
    // no alert yet.
    std::thread::sleep(Duration::from_millis(500));
    assert!(follower.alerts().is_empty(), "{:?}", follower.alerts());
    follower.stop();
    let alerts = follower.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}\n{}", follower.stderr());
    assert_eq!(alerts[0]["kind"], "new-destination");
    assert_eq!(alerts[0]["dst"], "new.example");
    assert!(
        follower.stderr().contains("followed 2 records"),
        "{}",
        follower.stderr()
    );
}

#[test]
fn a_record_later_than_max_lateness_is_skipped_and_counted() {
    let nats = NatsServer::start();
    let yaml =
        format!("{LEARNING}{}", bus(&nats, 1000)).replace("max_lateness: 3h", "max_lateness: 1m");
    let t0 = std::time::SystemTime::now() - Duration::from_secs(24 * 3600);
    let later = flow(
        "10.0.0.5:40001",
        "new.example",
        1000,
        t0 + Duration::from_secs(2 * 3600),
    );
    let first = flow("10.0.0.5:40000", "known.example", 1000, t0);
    publish_as_replica(&nats, 4, std::slice::from_ref(&later));
    let mut follower = Follower::start_with(&yaml, &nats, "0/1", "late");
    // The first record is judged once a quiet minute… is too long for a
    // test: a third record an hour later moves event time on instead.
    let push = flow(
        "10.0.0.6:40000",
        "known.example",
        1000,
        t0 + Duration::from_secs(3 * 3600),
    );
    publish_as_replica(&nats, 4, std::slice::from_ref(&push));
    assert!(poll_until(Duration::from_secs(20), || unfinished(
        &nats, "late", 4
    ) == Some(0)));
    // Two hours before what was judged: far more than a minute late.
    publish_as_replica(&nats, 4, std::slice::from_ref(&first));
    assert!(poll_until(Duration::from_secs(20), || unfinished(
        &nats, "late", 4
    ) == Some(0)));
    follower.stop();
    let err = follower.stderr();
    assert!(err.contains("followed 3 records"), "{err}");
    assert!(
        err.contains("1 records arrived more than max_lateness after later ones and were skipped"),
        "{err}"
    );
}

#[test]
fn two_followers_split_the_partitions_and_each_alert_is_raised_once() {
    let nats = NatsServer::start();
    let origin = Origin::start("127.0.0.1");
    let url = format!("{}/upload", origin.url());
    let a = replica(&nats, &origin);
    let b = replica(&nats, &origin);
    // Follower 0/2 owns partitions 0 and 2, follower 1/2 owns 1 and 3
    // (bus.partitions 4): two exfiltrating sources for each.
    let mut sources: [Vec<Ipv4Addr>; 2] = [Vec::new(), Vec::new()];
    for last in 10..250u8 {
        let src = Ipv4Addr::new(127, 0, 0, last);
        let k = sluice_bus::partition_of(src.into(), 4) as usize % 2;
        if sources[k].len() < 2 {
            sources[k].push(src);
        }
    }
    let yaml = common(&origin) + &bus(&nats, 1000);
    let followers = [
        Follower::start_with(&yaml, &nats, "0/2", "split"),
        Follower::start_with(&yaml, &nats, "1/2", "split"),
    ];
    for src in sources.iter().flatten() {
        exfiltrate(*src, &[&a, &b], &url, 8);
    }
    for (k, f) in followers.iter().enumerate() {
        for src in &sources[k] {
            assert!(
                poll_until(Duration::from_secs(20), || volume_for(&f.alerts(), *src)
                    >= 1),
                "follower {k}/2 alerts on {src}; stdout {:?}\nstderr {}",
                f.alerts(),
                f.stderr()
            );
        }
    }
    assert!(
        poll_until(Duration::from_secs(20), || unfinished(&nats, "split", 4)
            == Some(0)),
        "every partition's consumer exists and took every record"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let published = a.metric("sluice_bus_published_total") + b.metric("sluice_bus_published_total");
    let mut followed = 0;
    for (k, mut f) in followers.into_iter().enumerate() {
        f.stop();
        let alerts = f.alerts();
        // Its own sources, once each; none of the other follower's.
        for src in &sources[k] {
            assert_eq!(volume_for(&alerts, *src), 1, "follower {k}: {alerts:?}");
        }
        for src in &sources[1 - k] {
            assert_eq!(volume_for(&alerts, *src), 0, "follower {k}: {alerts:?}");
        }
        assert_eq!(alerts.len(), 2, "follower {k}: {alerts:?}");
        let err = f.stderr();
        let n: f64 = err
            .split("followed ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{err}"));
        followed += n as u64;
    }
    // Each record was judged by exactly one follower.
    assert_eq!(followed, published as u64);
    assert_eq!(published, 32.0);
}
