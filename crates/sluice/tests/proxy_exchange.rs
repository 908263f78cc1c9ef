//! How an absolute-form exchange ends, through the real binary on
//! loopback: an origin that never answers (`limits.response_timeout`, 504),
//! a client that gives up while it waits, a client body whose chunked
//! framing is broken (400, the origin connection closed), a head with both
//! `Content-Length` and `Transfer-Encoding` (400, never forwarded), and
//! exchanges still open when the drain deadline passes. Every one of them
//! leaves a flow record.
//!
//! Layout: helpers (a raw origin that reports when Sluice closes its
//! connection), then response timeout, framing and drain tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sluice_testkit::{
    Origin, Sluice, TempDir, assert_fields, connect_with_timeout, curl, read_response,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const T: Duration = Duration::from_secs(10);
const MIB: usize = 1024 * 1024;

// === helpers ===

/// A raw origin on 127.0.0.1:0: each connection's first request head gets
/// `answer` (empty: never answered), and whatever else arrives is read
/// until Sluice closes the connection; the bytes each connection carried
/// are then reported on `closed`.
struct RawOrigin {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: mpsc::Receiver<usize>,
}

fn raw_origin(answer: &'static [u8]) -> RawOrigin {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (tx, closed) = mpsc::channel();
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            std::thread::spawn(move || {
                // Bounded: a connection Sluice never closes ends the
                // thread after this long without a report.
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let (mut seen, mut total, mut answered) = (Vec::new(), 0, false);
                let mut buf = [0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            total += n;
                            if !answered {
                                seen.extend_from_slice(&buf[..n]);
                                if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                                    answered = true;
                                    let _ = s.write_all(answer);
                                }
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return,
                        Err(_) => break,
                    }
                }
                let _ = tx.send(total);
            });
        }
    });
    RawOrigin {
        addr,
        accepted,
        closed,
    }
}

/// A policy that lets 127.0.0.1 clients reach 127.0.0.1 on `ports`.
fn allowing(ports: &[u16], extra: &str) -> String {
    let ports = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "mode: enforce
{extra}zones:
  - name: local
    sources: [127.0.0.0/8]
    allow:
      - cidr: 127.0.0.1/32
        ports: [{ports}]
"
    )
}

/// `sluice_requests_total`, summed over its labels.
fn requests_total(sluice: &Sluice) -> f64 {
    sluice
        .admin_get("/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with("sluice_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A 1 MiB file to upload.
fn one_mib(dir: &TempDir) -> String {
    let path = dir.path("upload.bin");
    std::fs::write(&path, vec![b'x'; MIB]).unwrap();
    format!("@{}", path.display())
}

// === response timeout ===

#[test]
fn a_silent_origin_gets_504_after_response_timeout_and_its_connection_closed() {
    let origin = raw_origin(b"");
    let sluice = Sluice::start(
        BIN,
        &allowing(&[origin.addr.port()], "limits:\n  response_timeout: 1s\n"),
    );
    let dir = TempDir::new("upload");
    let before = requests_total(&sluice);
    let t0 = Instant::now();
    let c = curl(&[
        "-x",
        &sluice.proxy_url(),
        "--max-time",
        "25",
        "--data-binary",
        &one_mib(&dir),
        &format!("http://{}/", origin.addr),
    ]);
    let took = t0.elapsed();
    assert_eq!(c.status, 504, "{c:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "answered after {took:?}"
    );
    assert!(c.body_text().contains("response_timeout"), "{c:?}");
    let rec = sluice.wait_record("the 504", |r| r["id"] == c.id().as_str());
    assert_fields(
        &rec,
        &[
            ("status", json!(504)),
            ("error_kind", json!("timeout")),
            ("bytes_out", json!(MIB)),
            ("method", json!("POST")),
        ],
    );
    assert!(
        rec["error"].as_str().unwrap().contains("response_timeout"),
        "{rec}"
    );
    // The origin got the whole request, then its connection was closed.
    let carried = origin
        .closed
        .recv_timeout(T)
        .expect("origin connection left open");
    assert!(carried > MIB, "{carried}");
    assert_eq!(requests_total(&sluice), before + 1.0);
}

#[test]
fn a_client_that_gives_up_waiting_leaves_a_client_record() {
    let origin = raw_origin(b"");
    let sluice = Sluice::start(BIN, &allowing(&[origin.addr.port()], ""));
    let dir = TempDir::new("upload");
    let before = requests_total(&sluice);
    let c = curl(&[
        "-x",
        &sluice.proxy_url(),
        "--max-time",
        "2",
        "--data-binary",
        &one_mib(&dir),
        &format!("http://{}/", origin.addr),
    ]);
    assert_eq!(c.exit, 28, "curl should time out: {c:?}");
    let rec = sluice.wait_record("the abandoned request", |r| r["method"] == "POST");
    assert_fields(
        &rec,
        &[
            ("status", Value::Null),
            ("error_kind", json!("client")),
            ("bytes_out", json!(MIB)),
            ("verdict", json!("allow")),
        ],
    );
    assert!(rec["error"].as_str().unwrap().contains("client"), "{rec}");
    origin
        .closed
        .recv_timeout(T)
        .expect("origin connection left open");
    assert_eq!(requests_total(&sluice), before + 1.0);
}

/// `limits.response_timeout` applies on reload: the next request waits
/// for the new value, without a restart.
#[test]
fn response_timeout_changes_on_reload() {
    let origin = raw_origin(b"");
    let sluice = Sluice::start(
        BIN,
        &allowing(&[origin.addr.port()], "limits:\n  response_timeout: 30s\n"),
    );
    let text = std::fs::read_to_string(&sluice.config).unwrap();
    let tmp = sluice.config.with_extension("tmp");
    std::fs::write(
        &tmp,
        text.replace("response_timeout: 30s", "response_timeout: 1s"),
    )
    .unwrap();
    std::fs::rename(&tmp, &sluice.config).unwrap();
    sluice.signal("HUP");
    assert!(sluice.wait_log("policy reloaded", T), "no reload");
    let stderr = sluice.stderr.lock().unwrap().join("\n");
    assert!(!stderr.contains("need a restart"), "{stderr}");
    let t0 = Instant::now();
    let c = curl(&[
        "-x",
        &sluice.proxy_url(),
        "--max-time",
        "20",
        &format!("http://{}/", origin.addr),
    ]);
    assert_eq!(c.status, 504, "{c:?}");
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
}

// === framing ===

/// Sends `head` then `body` on a fresh connection; the answer, and whether
/// the connection was then closed (2 s bound).
fn exchange(proxy: SocketAddr, head: &str, body: &[u8]) -> (sluice_testkit::RawResponse, bool) {
    let mut s = connect_with_timeout(proxy, T);
    s.write_all(head.as_bytes()).unwrap();
    // The proxy may answer and close before it read everything.
    let _ = s.write_all(body);
    let r = read_response(&mut s, false);
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let closed = matches!(s.read(&mut [0u8; 64]), Ok(0) | Err(_));
    (r, closed)
}

#[test]
fn broken_chunked_request_bodies_get_400_a_client_record_and_a_closed_origin_connection() {
    let origin = raw_origin(b"");
    let sluice = Sluice::start(BIN, &allowing(&[origin.addr.port()], ""));
    let o = origin.addr;
    let long_ext = format!("3;x={}\r\nabc\r\n0\r\n\r\n", "a".repeat(MIB));
    let cases: &[(&str, Vec<u8>)] = &[
        (
            "chunk size that overflows",
            b"10000000000000000\r\nabc\r\n0\r\n\r\n".to_vec(),
        ),
        ("chunk size not hex", b"zz\r\nabc\r\n0\r\n\r\n".to_vec()),
        (
            "chunk data longer than its size",
            b"3\r\nabcdef\r\n0\r\n\r\n".to_vec(),
        ),
        ("bare LF chunk lines", b"3\nabc\n0\n\n".to_vec()),
        ("a 1 MiB chunk extension", long_ext.into_bytes()),
    ];
    for (i, (what, body)) in cases.iter().enumerate() {
        let head = format!(
            "POST http://{o}/{i} HTTP/1.1\r\nHost: {o}\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        let (r, closed) = exchange(sluice.http, &head, body);
        assert_eq!(r.status, Some(400), "{what}: {}", r.text());
        assert!(closed, "{what}: the client connection stayed open");
        let id = r.header("sluice-request-id").unwrap().to_owned();
        let rec = sluice.wait_record(what, |r| r["id"] == id.as_str());
        assert_fields(
            &rec,
            &[("status", json!(400)), ("error_kind", json!("client"))],
        );
        assert!(
            rec["error"].as_str().unwrap().contains("body"),
            "{what}: {rec}"
        );
        // The origin got a truncated request and its connection was closed.
        origin
            .closed
            .recv_timeout(T)
            .unwrap_or_else(|_| panic!("{what}: origin connection left open"));
    }
    assert_eq!(origin.accepted.load(Ordering::SeqCst), cases.len());
}

// === CONNECT fast path ===

/// A CONNECT is served without hyper (`http::fast_connect`): the client's
/// bytes sent with the head reach the origin, a refused CONNECT answers
/// like hyper did (rule headers, length, date) and leaves the connection to
/// hyper for the next request, and a CONNECT that is not plain HTTP/1.1
/// still gets the slow path's answer.
#[test]
fn connect_fast_path_keeps_early_bytes_and_hands_the_rest_to_hyper() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let sluice = Sluice::start(BIN, &allowing(&[port], ""));

    // Head and tunnel bytes in one write: the GET goes through the tunnel.
    let mut c = connect_with_timeout(sluice.http, T);
    let get = "GET /bytes/7 HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n";
    write!(
        c,
        "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n{get}"
    )
    .unwrap();
    let ok = read_response(&mut c, true);
    assert_eq!(ok.status, Some(200), "{:?}", ok.headers);
    assert!(ok.header("date").is_some(), "{:?}", ok.headers);
    assert!(ok.header("content-length").is_none(), "{:?}", ok.headers);
    let id = ok.header("sluice-request-id").unwrap().to_owned();
    let inner = read_response(&mut c, false);
    assert_eq!(inner.status, Some(200));
    assert_eq!(inner.body, vec![b'x'; 7]);
    drop(c);
    let rec = sluice.wait_record(&id, |r| r["id"] == id.as_str() && r["interim"] == false);
    assert_fields(
        &rec,
        &[
            ("protocol", "connect".into()),
            ("status", 200.into()),
            ("bytes_out", json!(get.len())),
        ],
    );

    // Refused (a port no rule allows), then the same connection goes on.
    let mut c = connect_with_timeout(sluice.http, T);
    write!(
        c,
        "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n"
    )
    .unwrap();
    let denied = read_response(&mut c, true);
    assert_eq!(denied.status, Some(403), "{:?}", denied.headers);
    assert!(
        denied.header("sluice-rule").is_some(),
        "{:?}",
        denied.headers
    );
    assert!(
        denied.text().starts_with("Sluice denied this request."),
        "{}",
        denied.text()
    );
    write!(
        c,
        "GET {}/bytes/3 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n",
        origin.url()
    )
    .unwrap();
    let next = read_response(&mut c, false);
    assert_eq!(next.status, Some(200), "{:?}", next.headers);
    assert_eq!(next.body, b"xxx");

    // HTTP/1.0 takes the slow path: hyper answers in HTTP/1.0.
    let mut c = connect_with_timeout(sluice.http, T);
    write!(c, "CONNECT 127.0.0.1:{port} HTTP/1.0\r\n\r\n").unwrap();
    let mut line = [0u8; 12];
    c.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"HTTP/1.0 200", "{}", String::from_utf8_lossy(&line));
}

// === drain ===

#[test]
fn exchanges_open_at_the_drain_deadline_are_recorded_before_exit() {
    const PARTIAL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nfirst bytes";
    let streaming = raw_origin(PARTIAL);
    let silent = raw_origin(b"");
    let mut sluice = Sluice::start(
        BIN,
        &allowing(
            &[streaming.addr.port(), silent.addr.port()],
            "limits:\n  drain_timeout: 1s\n",
        ),
    );
    // A response that streams (its first bytes arrived, the rest never
    // will) and a request whose origin never answers.
    let mut reading = connect_with_timeout(sluice.http, T);
    let s = streaming.addr;
    write!(
        reading,
        "GET http://{s}/stream HTTP/1.1\r\nHost: {s}\r\n\r\n"
    )
    .unwrap();
    reading.set_read_timeout(Some(T)).unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"first bytes") {
        let mut buf = [0u8; 4096];
        let n = reading.read(&mut buf).unwrap();
        assert!(n > 0 && got.len() < 64 * 1024, "{got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    let mut waiting = connect_with_timeout(sluice.http, T);
    let q = silent.addr;
    write!(waiting, "GET http://{q}/wait HTTP/1.1\r\nHost: {q}\r\n\r\n").unwrap();
    let deadline = Instant::now() + T;
    while silent.accepted.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the origin"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let t0 = Instant::now();
    sluice.signal("TERM");
    assert_eq!(sluice.wait_exit(T), Some(0));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "drain took {took:?}"
    );
    let records = sluice.records();
    assert_eq!(records.len(), 2, "{records:#?}");
    for (path, status) in [("/stream", json!(200)), ("/wait", Value::Null)] {
        let rec = records
            .iter()
            .find(|r| r["dst_port"] != Value::Null && r["status"] == status)
            .unwrap_or_else(|| panic!("no record for {path}: {records:#?}"));
        assert_fields(rec, &[("error_kind", json!("internal"))]);
        assert!(
            rec["error"].as_str().unwrap().contains("drain"),
            "{path}: {rec}"
        );
    }
    let streamed = records.iter().find(|r| r["status"] == 200).unwrap();
    assert_eq!(
        streamed["bytes_in"],
        json!(b"first bytes".len()),
        "{streamed}"
    );
    let stderr = sluice.stderr.lock().unwrap().join("\n");
    assert!(!stderr.contains("dropped"), "{stderr}");
}

#[test]
fn content_length_with_transfer_encoding_gets_400_and_reaches_no_origin() {
    let origin = Origin::start("127.0.0.1");
    let sluice = Sluice::start(BIN, &allowing(&[origin.addr.port()], ""));
    let o = origin.addr;
    let smuggled = format!("GET http://{o}/smuggled HTTP/1.1\r\nHost: {o}\r\n\r\n");
    let heads = [
        format!(
            "POST http://{o}/1 HTTP/1.1\r\nHost: {o}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ),
        format!(
            "POST http://{o}/2 HTTP/1.1\r\nHost: {o}\r\ntransfer-encoding: chunked\r\ncontent-length: 60\r\n\r\n"
        ),
    ];
    for head in &heads {
        let body = format!("0\r\n\r\n{smuggled}");
        let (r, closed) = exchange(sluice.http, head, body.as_bytes());
        assert_eq!(r.status, Some(400), "{head}: {}", r.text());
        assert!(r.text().contains("Content-Length and Transfer-Encoding"));
        assert!(closed, "{head}: the client connection stayed open");
        let id = r.header("sluice-request-id").unwrap().to_owned();
        let rec = sluice.wait_record(head, |r| r["id"] == id.as_str());
        assert_fields(
            &rec,
            &[
                ("status", json!(400)),
                ("rule", json!("default/bad-request")),
                ("error_kind", json!("client")),
            ],
        );
    }
    assert_eq!(
        origin.conns.load(Ordering::SeqCst),
        0,
        "the origin was contacted"
    );

    // After a chunked request on the same connection (a body the head
    // scanner does not follow), the next head is still judged.
    let mut s = connect_with_timeout(sluice.http, T);
    write!(
        s,
        "POST http://{o}/ok HTTP/1.1\r\nHost: {o}\r\nTransfer-Encoding: chunked\r\n\r\n\
         3\r\nabc\r\n0\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_response(&mut s, false).status, Some(200));
    write!(s, "{}0\r\n\r\n", heads[0]).unwrap();
    assert_eq!(read_response(&mut s, false).status, Some(400));
    assert_eq!(origin.hits.load(Ordering::SeqCst), 1);
}
