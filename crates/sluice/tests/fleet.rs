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
        let dir = TempDir::new("follower");
        let config = dir.path("detect.yaml");
        let yaml = common(origin).replace(
            "detect:\n",
            &format!("detect:\n  webhook:\n    url: {}\n", webhook.url("/alerts")),
        ) + &bus(nats, 1000);
        std::fs::write(&config, yaml).unwrap();
        let mut child = Command::new(BIN)
            .args(["detect", "-c"])
            .arg(&config)
            .args(["--follow", &nats.url(), "--partition", "0/1"])
            .args(["--durable", "fleet"])
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
