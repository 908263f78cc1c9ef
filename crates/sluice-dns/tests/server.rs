//! The UDP loop on real sockets: a query that finds too many others
//! waiting for the upstreams is answered SERVFAIL at once and recorded,
//! never dropped (only the rate limit drops queries).

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sluice_dns::{Forwarder, GrantStore, Shared, serve_udp_with};
use sluice_observe::{Alert, FlowRecord, Metrics, RecordSink};
use sluice_policy::{Policy, model::Dns};
use sluice_serve::Drain;
use sluice_testkit::silent_udp;
use tokio::net::UdpSocket;

const YAML: &str = r#"
zones:
  - name: lan
    sources: [127.0.0.1/32]
    allow:
      - host: "*.example.com"
        ports: [443]
"#;

#[derive(Default)]
struct Kept(Mutex<Vec<FlowRecord>>);

impl RecordSink for Kept {
    fn record(&self, r: FlowRecord) {
        self.0.lock().unwrap().push(r);
    }

    fn alert(&self, _: Alert) {}
}

fn query(id: u16, label: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in [label, "example", "com"] {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[tokio::test]
async fn a_query_beyond_those_waiting_gets_servfail_at_once() {
    let (dead, _keep) = silent_udp();
    let policy = Arc::new(Policy::load(YAML, "t.yaml").unwrap());
    let kept = Arc::new(Kept::default());
    let shared = Shared {
        policy: Arc::new(move || policy.clone()),
        recorder: kept.clone(),
        metrics: Arc::new(Metrics::new()),
    };
    let dns = Dns {
        upstream_timeout: Duration::from_secs(3),
        ..Dns::default()
    };
    let fwd = Arc::new(Forwarder::new(
        shared,
        &dns,
        vec![dead],
        Arc::new(GrantStore::new(16)),
    ));
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let at = server.local_addr().unwrap();
    let drain = Arc::new(Drain::new());
    let task = tokio::spawn(serve_udp_with(server, fwd, drain.clone(), 2));

    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(at).await.unwrap();
    // Two queries wait for the silent upstream; the third finds no room.
    let started = Instant::now();
    for (id, label) in [(1, "a"), (2, "b"), (3, "c")] {
        client.send(&query(id, label)).await.unwrap();
    }
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
        .await
        .expect("an answer before the upstream timeout")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(n > 12);
    assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), 3, "the third query");
    assert_eq!(buf[3] & 0x0f, 2, "SERVFAIL");
    let records = kept.0.lock().unwrap().clone();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].dst_host.as_deref(), Some("c.example.com"));
    assert!(
        records[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("too many queries waiting")),
        "{records:?}"
    );
    drain.begin();
    task.await.unwrap();
}
