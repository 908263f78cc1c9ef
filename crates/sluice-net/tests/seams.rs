//! The gateway's seams with implementations of their own, through the real
//! HTTP listener on loopback: an `Inspector` that refuses request heads and
//! request body chunks, and a `Router` that names the route. Nothing here
//! is configured by YAML yet; these are the hooks later features use.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper::http::request;
use sluice_net::{
    Dialer, Flow, Gateway, Inspection, Inspector, Route, Router, Users, Version,
    inspect::{Direction, Subject},
    route::Via,
};
use sluice_observe::{Alert, FlowRecord, Metrics, RecordSink};
use sluice_policy::Policy;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Keeps every record and alert handed to the record stage.
#[derive(Default)]
struct Kept(Mutex<Vec<FlowRecord>>);

impl RecordSink for Kept {
    fn record(&self, r: FlowRecord) {
        self.0.lock().unwrap().push(r);
    }

    fn alert(&self, _a: Alert) {}
}

/// Refuses request heads that carry `x-exfil`, and body chunks that
/// contain `SECRET`.
struct Dlp;

impl Inspector for Dlp {
    fn inspects_http(&self) -> bool {
        true
    }

    fn request_head(&self, _s: &Subject, head: &request::Parts) -> Inspection {
        if head.headers.contains_key("x-exfil") {
            return Inspection::Deny {
                rule: Arc::from("inspect/dlp/test"),
                reason: "x-exfil header".into(),
            };
        }
        Inspection::Pass
    }

    fn wants_bodies(&self, _s: &Subject) -> bool {
        true
    }

    fn body_chunk(&self, _s: &Subject, dir: Direction, chunk: &[u8]) -> Inspection {
        if dir == Direction::Out && chunk.windows(6).any(|w| w == b"SECRET") {
            return Inspection::Deny {
                rule: Arc::from("inspect/dlp/test"),
                reason: "a secret in the request body".into(),
            };
        }
        Inspection::Pass
    }
}

struct Named;

impl Router for Named {
    fn route(&self, _flow: &Flow) -> Route {
        Route {
            name: Arc::from("egress-a"),
            via: Via::Direct,
        }
    }
}

/// An origin that answers every request `200 ok` after reading its head
/// and `Content-Length` body; returns what it received in total.
async fn origin() -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    kept.lock().unwrap().extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&kept.lock().unwrap()).into_owned();
                    if text.contains("\r\n\r\n") && !text.contains("Content-Length: 1000") {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });
    (at, seen)
}

async fn gateway(origin_port: u16, kept: Arc<Kept>) -> SocketAddr {
    let yaml = format!(
        "zones:\n  - name: local\n    sources: [127.0.0.0/8]\n    allow:\n      \
         - cidr: 127.0.0.1/32\n        ports: [{origin_port}]\n        id: lo\n"
    );
    let version = Version {
        policy: Arc::new(Policy::load(&yaml, "seams.yaml").unwrap()),
        users: Arc::new(Users::default()),
    };
    let dialer = Dialer::new(&[], Duration::from_secs(2), Duration::from_secs(2)).unwrap();
    let gw = Gateway::new(version, dialer, kept, Arc::new(Metrics::new()))
        .with_inspector(Arc::new(Dlp))
        .with_router(std::sync::Arc::new(Named));
    let l = sluice_serve::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let at = l.local_addr().unwrap();
    tokio::spawn(sluice_net::http::serve(l, Arc::new(gw)));
    at
}

/// Sends `req` and reads the answer until the proxy closes or 2 s pass.
async fn send(proxy: SocketAddr, req: &[u8]) -> String {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn record(kept: &Kept, n: usize) -> FlowRecord {
    for _ in 0..200 {
        if let Some(r) = kept.0.lock().unwrap().get(n) {
            return r.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no record #{n}");
}

#[tokio::test]
async fn an_inspector_refuses_heads_and_bodies_and_the_router_names_the_route() {
    let (o, seen) = origin().await;
    let kept = Arc::new(Kept::default());
    let proxy = gateway(o.port(), kept.clone()).await;

    // Passed by the inspector: forwarded, recorded with the router's name.
    let ok = send(
        proxy,
        format!("GET http://{o}/a HTTP/1.1\r\nHost: {o}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let r = record(&kept, 0).await;
    assert_eq!((r.verdict.as_str(), r.rule.as_str()), ("allow", "lo"));
    assert_eq!(r.route.as_deref(), Some("egress-a"));

    // A head the inspector refuses: 403 with its rule, never forwarded.
    let before = seen.lock().unwrap().len();
    let denied = send(
        proxy,
        format!("GET http://{o}/b HTTP/1.1\r\nHost: {o}\r\nX-Exfil: 1\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    assert!(denied.contains("sluice-rule: inspect/dlp/test"), "{denied}");
    assert_eq!(
        seen.lock().unwrap().len(),
        before,
        "the head reached the origin"
    );
    let r = record(&kept, 1).await;
    assert_eq!(
        (r.verdict.as_str(), r.rule.as_str(), r.reason.as_str()),
        ("deny", "inspect/dlp/test", "x-exfil header")
    );
    assert_eq!(r.status, Some(403));

    // A body chunk the inspector refuses: the request is cut off before
    // the secret reaches the origin, and the record names the rule.
    let mut body = vec![b'a'; 994];
    body.extend_from_slice(b"SECRET");
    let mut req =
        format!("POST http://{o}/c HTTP/1.1\r\nHost: {o}\r\nContent-Length: 1000\r\n\r\n")
            .into_bytes();
    req.extend_from_slice(&body);
    let answer = send(proxy, &req).await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    let r = record(&kept, 2).await;
    assert_eq!(
        (r.verdict.as_str(), r.rule.as_str()),
        ("deny", "inspect/dlp/test"),
        "{r:?}"
    );
    let got = seen.lock().unwrap().clone();
    assert!(
        !got.windows(6).any(|w| w == b"SECRET"),
        "the secret reached the origin"
    );
}

/// Notes the thread that shows it each request body chunk.
#[derive(Default)]
struct Where(Mutex<Vec<String>>);

impl Inspector for Where {
    fn inspects_http(&self) -> bool {
        true
    }

    fn wants_bodies(&self, _s: &Subject) -> bool {
        true
    }

    fn body_chunk(&self, _s: &Subject, _dir: Direction, _chunk: &[u8]) -> Inspection {
        let name = std::thread::current().name().unwrap_or("?").to_owned();
        self.0.lock().unwrap().push(name);
        Inspection::Pass
    }
}

/// On per-core runtimes, a client whose zone inspects content (here DLP)
/// is served on the inspection pool, so its bodies are scanned on a
/// `sluice-heavy-N` thread, never on a core; a client of a zone without
/// content inspection stays on the core that accepted it.
#[tokio::test]
async fn clients_of_an_inspecting_zone_are_served_on_the_pool_others_on_a_core() {
    let (o, _seen) = origin().await;
    let cores = sluice_serve::Cores::start(2).unwrap();
    for (inspect, pool) in [
        ("    inspect:\n      dlp: {aws: block}\n", true),
        ("", false),
    ] {
        let yaml = format!(
            "zones:\n  - name: local\n    sources: [127.0.0.0/8]\n{inspect}    allow:\n      \
             - cidr: 127.0.0.1/32\n        ports: [{}]\n",
            o.port()
        );
        let version = Version {
            policy: Arc::new(Policy::load(&yaml, "seams.yaml").unwrap()),
            users: Arc::new(Users::default()),
        };
        let dialer = Dialer::new(&[], Duration::from_secs(2), Duration::from_secs(2)).unwrap();
        let seen = Arc::new(Where::default());
        let gw = Gateway::new(
            version,
            dialer,
            Arc::new(Kept::default()),
            Arc::new(Metrics::new()),
        )
        .with_inspector(seen.clone())
        .with_cores(cores.clone());
        let l = sluice_serve::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let proxy = l.local_addr().unwrap();
        tokio::spawn(sluice_net::http::serve(l, Arc::new(gw)));
        let ok = send(
            proxy,
            format!(
                "POST http://{o}/up HTTP/1.1\r\nHost: {o}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
            )
            .as_bytes(),
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        let names = seen.0.lock().unwrap().clone();
        assert!(!names.is_empty(), "the body was not inspected");
        let prefix = if pool {
            "sluice-heavy-"
        } else {
            "sluice-core-"
        };
        assert!(
            names.iter().all(|n| n.starts_with(prefix)),
            "zone inspects content: {pool}; body seen on {names:?}"
        );
    }
    cores.stop();
}

/// Records the policy hashes it was asked to prepare for, and which
/// version was in force at that moment.
struct Prepares {
    gw: Mutex<Option<Arc<Gateway>>>,
    seen: Mutex<Vec<(String, Option<String>)>>,
}

impl Inspector for Prepares {
    fn prepare(&self, policy: &Policy) {
        let current = self
            .gw
            .lock()
            .unwrap()
            .as_ref()
            .map(|g| g.version().policy.hash().to_string());
        self.seen
            .lock()
            .unwrap()
            .push((policy.hash().to_string(), current));
    }
}

/// A policy of one zone that allows `x.test` on `port`.
fn version_allowing(port: u16) -> Version {
    let yaml = format!(
        "zones:\n  - name: a\n    sources: [10.0.0.0/8]\n    allow: [{{host: x.test, ports: [{port}]}}]\n"
    );
    Version {
        policy: Arc::new(Policy::load(&yaml, "seams.yaml").unwrap()),
        users: Arc::new(Users::default()),
    }
}

/// An inspector prepares for the policy in force when it is added, and
/// for each reloaded version before that version takes effect.
#[test]
fn inspectors_prepare_for_each_version_before_it_takes_effect() {
    let (v1, v2) = (version_allowing(80), version_allowing(443));
    let (h1, h2) = (v1.policy.hash().to_string(), v2.policy.hash().to_string());
    assert_ne!(h1, h2);
    let dialer = Dialer::new(&[], Duration::from_secs(2), Duration::from_secs(2)).unwrap();
    let p = Arc::new(Prepares {
        gw: Mutex::new(None),
        seen: Mutex::new(Vec::new()),
    });
    let gw = Arc::new(
        Gateway::new(
            v1,
            dialer,
            Arc::new(Kept::default()),
            Arc::new(Metrics::new()),
        )
        .with_inspector(p.clone()),
    );
    assert_eq!(*p.seen.lock().unwrap(), vec![(h1.clone(), None)]);
    *p.gw.lock().unwrap() = Some(gw.clone());
    gw.reload(v2);
    assert_eq!(
        p.seen.lock().unwrap()[1],
        (h2.clone(), Some(h1)),
        "prepared while the old version was still in force"
    );
    assert_eq!(gw.version().policy.hash().to_string(), h2);
    *p.gw.lock().unwrap() = None;
}
