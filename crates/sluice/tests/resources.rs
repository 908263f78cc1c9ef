//! What a flow costs Sluice and where that is bounded, through the real
//! binary: the dial stage's one deadline (`dns.upstream_timeout` per
//! lookup, `limits.connect_timeout` over resolution and connection
//! together) against a silent DNS upstream; the origin pool's bounds in
//! total and per destination and its idle timer (an origin that counts the
//! connections Sluice closes); and running out of file descriptors under a
//! low `RLIMIT_NOFILE` (503, its metric, the rate-limited `accept failed`
//! line, the warning at start).
//!
//! Layout: helpers, then resolution, pool and descriptor tests.

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_testkit::{
    FixtureDns, Origin, Sluice, connect_with_timeout, get_via, poll_until, read_response,
    silent_udp,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const T: Duration = Duration::from_secs(10);

// === helpers ===

/// A zone for 127.0.0.0/8 allowing `name` on any port and 127.0.0.1 on any
/// port, after `head` (listen, dns, limits as a test needs).
fn config(head: &str, name: &str) -> String {
    format!(
        "{head}mode: enforce
zones:
  - name: local
    sources: [127.0.0.0/8]
    allow:
      - host: {name}
        ports: any
      - cidr: 127.0.0.1/32
        ports: any
"
    )
}

/// An HTTP/1.1 origin on 127.0.0.1:0 that answers every request with
/// `ok` (keep-alive) once `gate` connections are open (so that that many
/// concurrent requests each need their own connection), and counts the
/// connections it accepted and those the other side closed.
struct CountingOrigin {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl CountingOrigin {
    fn start(gate: usize) -> CountingOrigin {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (a, c) = (accepted.clone(), closed.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let (a, c) = (a.clone(), c.clone());
                std::thread::spawn(move || serve_counting(s, gate, &a, &c));
            }
        });
        CountingOrigin {
            addr,
            accepted,
            closed,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn serve_counting(mut s: TcpStream, gate: usize, accepted: &AtomicUsize, closed: &AtomicUsize) {
    // Every wait is bounded: a connection idle for 30 s ends the thread.
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => {
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return,
        }
        assert!(buf.len() < 64 * 1024, "request heads only");
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            poll_until(Duration::from_secs(5), || {
                accepted.load(Ordering::SeqCst) >= gate
            });
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    }
}

fn pool_idle(sluice: &Sluice) -> f64 {
    sluice.metric("sluice_pool_idle_connections")
}

// === resolution: one deadline ===

/// A silent upstream costs a named flow `dns.upstream_timeout`, not a
/// hard-coded 3 s × 2 attempts.
#[test]
fn a_silent_upstream_fails_a_named_flow_within_the_upstream_timeout() {
    let (dead, _keep) = silent_udp();
    let head = format!("dns:\n  upstreams: [{dead}]\n  upstream_timeout: 400ms\n");
    let sluice = Sluice::start(BIN, &config(&head, "silent.test"));
    let t0 = Instant::now();
    let r = get_via(sluice.http, "http://silent.test/");
    let took = t0.elapsed();
    assert_eq!(r.status, Some(502), "{}", r.text());
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "failed after {took:?}, expected about the 400ms upstream timeout"
    );
    let rec = sluice.wait_record("the failed flow", |r| r["dst_host"] == "silent.test");
    assert_eq!(rec["error_kind"], "resolve", "{rec}");
}

/// `limits.connect_timeout` bounds resolution and connection together: a
/// lookup that would be allowed 5 s ends at the 600 ms dial deadline.
#[test]
fn connect_timeout_bounds_resolution_too() {
    let (dead, _keep) = silent_udp();
    let head = format!(
        "dns:\n  upstreams: [{dead}]\n  upstream_timeout: 5s\nlimits:\n  connect_timeout: 600ms\n"
    );
    let sluice = Sluice::start(BIN, &config(&head, "slow.test"));
    let t0 = Instant::now();
    let r = get_via(sluice.http, "http://slow.test/");
    let took = t0.elapsed();
    assert_eq!(r.status, Some(502), "{}", r.text());
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(2000),
        "failed after {took:?}, expected about the 600ms connect timeout"
    );
    let rec = sluice.wait_record("the failed flow", |r| r["dst_host"] == "slow.test");
    assert_eq!(rec["error_kind"], "resolve", "{rec}");
    assert!(
        rec["error"].as_str().unwrap().contains("connect timeout"),
        "{rec}"
    );
}

/// Upstreams that timed out are passed over from then on: with two silent
/// upstreams before a live one, the first lookup waits for each in turn
/// (`dns.upstream_timeout` each); the next ones ask the live one first and
/// are answered at once.
#[test]
fn upstreams_that_timed_out_are_passed_over_afterwards() {
    let (dead1, _keep1) = silent_udp();
    let (dead2, _keep2) = silent_udp();
    let origin = Origin::start("127.0.0.1");
    let names: Vec<String> = (0..5).map(|i| format!("n{i}.up.test")).collect();
    let records: Vec<(&str, &[&str])> = names
        .iter()
        .map(|n| (n.as_str(), &["127.0.0.1"][..]))
        .collect();
    let live = FixtureDns::stub(&records);
    let head = format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n\
         dns:\n  upstreams: [{dead1}, {dead2}, {}]\n  upstream_timeout: 300ms\n",
        live.addr
    );
    let sluice = Sluice::start(BIN, &config(&head, "\"*.up.test\""));
    let states = |sluice: &Sluice| -> Vec<String> {
        let (_, body) = sluice.readyz();
        body["resolver"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}"))
            .iter()
            .map(|u| {
                format!(
                    "{} {}",
                    u["upstream"].as_str().unwrap(),
                    u["state"].as_str().unwrap()
                )
            })
            .collect()
    };
    let all = |state: &str| {
        [dead1, dead2, live.addr]
            .map(|a| format!("{a} {state}"))
            .to_vec()
    };
    assert_eq!(states(&sluice), all("unknown"));
    let port = origin.addr.port();
    let t0 = Instant::now();
    let r = get_via(sluice.http, &format!("http://{}:{port}/", names[0]));
    let took = t0.elapsed();
    assert_eq!(r.status, Some(200), "{}", r.text());
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_millis(1500),
        "the first lookup took {took:?}, expected two upstream timeouts of 300ms"
    );
    for name in &names[1..] {
        let t0 = Instant::now();
        let r = get_via(sluice.http, &format!("http://{name}:{port}/"));
        let took = t0.elapsed();
        assert_eq!(
            r.status,
            Some(200),
            "{name} after {took:?}: {}; records {:#?}",
            r.text(),
            sluice.records()
        );
        assert!(
            took < Duration::from_millis(250),
            "{name} took {took:?}: a silent upstream was waited for again"
        );
    }
    // `/readyz` says which upstreams are passed over, and stays ready.
    assert_eq!(
        states(&sluice),
        [
            format!("{dead1} down"),
            format!("{dead2} down"),
            format!("{} up", live.addr)
        ]
    );
    assert_eq!(sluice.readyz().0, Some(200));
}

// === the origin pool ===

/// An idle pooled connection is closed by the timer, without another
/// request coming; the gauge follows.
#[test]
fn idle_pooled_connections_are_closed_by_a_timer() {
    let origin = CountingOrigin::start(1);
    let sluice = Sluice::start(
        BIN,
        &config("limits:\n  pool_idle_timeout: 1s\n", "unused.test"),
    );
    let r = get_via(sluice.http, &origin.url());
    assert_eq!(r.status, Some(200), "{}", r.text());
    let answered = Instant::now();
    assert_eq!(pool_idle(&sluice), 1.0);
    assert!(
        poll_until(Duration::from_secs(4), || origin.closed() == 1),
        "the origin connection stayed open"
    );
    let took = answered.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before the idle timeout"
    );
    assert_eq!(pool_idle(&sluice), 0.0);
}

/// An origin that closes an idle pooled connection (without saying so in
/// its answer) costs the next request nothing: it gets a new connection,
/// not an error. (It guards the pool against keeping connections nobody
/// watches: a design where pooled connections rest unpolled was tried,
/// bench/README.md "Keep-alive, third round".)
#[test]
fn an_idle_connection_the_origin_closed_is_not_reused() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    // The first connection is closed only when the test says so, once the
    // pool holds it: closed at once, it could leave the pool before the
    // test saw it there.
    let (close_first, first_may_close) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let n = a.fetch_add(1, Ordering::SeqCst) + 1;
            // One answer that says nothing about closing, then a close.
            s.set_read_timeout(Some(T)).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            if n == 1 {
                let _ = first_may_close.recv_timeout(T);
            }
        }
    });
    let sluice = Sluice::start(BIN, &config("", "unused.test"));
    let url = format!("http://{addr}/");
    let r = get_via(sluice.http, &url);
    assert_eq!(r.status, Some(200), "{}", r.text());
    // Pooled, then closed by the origin behind the pool's back.
    assert!(poll_until(T, || pool_idle(&sluice) == 1.0));
    close_first.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    for n in 2..=3 {
        let r = get_via(sluice.http, &url);
        assert_eq!(r.status, Some(200), "request {n}: {}", r.text());
        assert_eq!(r.text(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), n, "a new connection each");
    }
    let recs = sluice.wait_records(3);
    for r in recs.iter().filter(|r| r["protocol"] == "http") {
        assert_eq!(r["error"], Value::Null, "{r}");
        assert_eq!(r["bytes_in"], 2, "{r}");
    }
}

/// Past `limits.pool_max_idle` the oldest idle connection (of any
/// destination) is closed; past `limits.pool_max_idle_per_host` the oldest
/// of that destination.
#[test]
fn the_pool_is_bounded_in_total_and_per_destination() {
    let sluice = Sluice::start(
        BIN,
        &config(
            "limits:\n  pool_max_idle: 2\n  pool_max_idle_per_host: 1\n",
            "unused.test",
        ),
    );
    // In total: three destinations one after another, two stay pooled.
    let origins: Vec<CountingOrigin> = (0..3).map(|_| CountingOrigin::start(1)).collect();
    for o in &origins {
        let r = get_via(sluice.http, &o.url());
        assert_eq!(r.status, Some(200), "{}", r.text());
    }
    assert!(
        poll_until(T, || origins[0].closed() == 1),
        "the oldest idle connection stayed open"
    );
    assert_eq!((origins[1].closed(), origins[2].closed()), (0, 0));
    assert_eq!(pool_idle(&sluice), 2.0);
    // The newest is reused, not dialed again.
    let r = get_via(sluice.http, &origins[2].url());
    assert_eq!(r.status, Some(200));
    assert_eq!(origins[2].accepted(), 1);

    // Per destination: three concurrent requests need three connections;
    // one stays pooled, two are closed.
    let busy = CountingOrigin::start(3);
    let url = busy.url();
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (proxy, url) = (sluice.http, url.clone());
            std::thread::spawn(move || get_via(proxy, &url).status)
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), Some(200));
    }
    assert_eq!(busy.accepted(), 3);
    assert!(
        poll_until(T, || busy.closed() == 2),
        "closed {} of 3 connections to one destination, expected 2",
        busy.closed()
    );
    assert_eq!(pool_idle(&sluice), 2.0);
}

// === file descriptors ===

/// Descriptors open in process `pid` below `limit` (a descriptor inherited
/// above the limit does not take a number the process could use).
fn open_fds(pid: u32, limit: usize) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok())
                .filter(|&n| n < limit)
                .count()
        })
        .unwrap_or(0)
}

/// Under `RLIMIT_NOFILE` 64: a warning at start (10,000 connections cannot
/// fit); with every descriptor but one held by idle clients, the next
/// request's dial finds none: 503 (SOCKS5: reply 0x01), `error_kind:
/// internal`, the metric; and the `accept failed` line appears at most once
/// a second meanwhile.
#[test]
fn out_of_descriptors_is_a_503_with_its_metric_and_a_quiet_log() {
    const LIMIT: usize = 64;
    let origin = Origin::start("127.0.0.1");
    let sluice = Sluice::start_in(
        &["prlimit", "--nofile=64:64"],
        BIN,
        &config(
            "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  socks5: 127.0.0.1:0\n\
             limits:\n  header_timeout: 60s\n",
            "unused.test",
        ),
    );
    assert!(
        sluice.wait_log("needs about 20320 file descriptors", T),
        "no warning at start: {:?}",
        sluice.stderr.lock().unwrap()
    );
    let pid = sluice.child.id();
    let filling = Instant::now();
    // Idle clients until one descriptor is left.
    let mut idle = Vec::new();
    while open_fds(pid, LIMIT) < LIMIT - 1 {
        assert!(idle.len() < LIMIT, "descriptors did not fill up");
        let before = open_fds(pid, LIMIT);
        idle.push(connect_with_timeout(sluice.http, T));
        assert!(
            poll_until(Duration::from_secs(2), || open_fds(pid, LIMIT) > before),
            "client {} not accepted",
            idle.len()
        );
    }
    let mut last = connect_with_timeout(sluice.http, T);
    let req = format!(
        "GET {}/ HTTP/1.1\r\nHost: {}\r\n\r\n",
        origin.url(),
        origin.addr
    );
    last.write_all(req.as_bytes()).unwrap();
    let r = read_response(&mut last, false);
    assert_eq!(r.status, Some(503), "{}", r.text());
    assert!(r.text().contains("file descriptors"), "{}", r.text());
    // The same through SOCKS5, on the descriptor the HTTP client gives back.
    drop(last);
    assert!(poll_until(T, || open_fds(pid, LIMIT) == LIMIT - 1));
    let mut socks = connect_with_timeout(sluice.socks5.unwrap(), T);
    socks.write_all(&[5, 1, 0]).unwrap();
    let mut hello = [0u8; 2];
    socks.read_exact(&mut hello).unwrap();
    assert_eq!(hello, [5, 0]);
    let port = origin.addr.port().to_be_bytes();
    socks
        .write_all(&[5, 1, 0, 1, 127, 0, 0, 1, port[0], port[1]])
        .unwrap();
    let mut reply = [0u8; 10];
    socks.read_exact(&mut reply).unwrap();
    assert_eq!(reply[1], 0x01, "SOCKS5 reply {reply:?}");
    let last = socks;
    // Every descriptor is taken now: accept keeps failing (every 50 ms in
    // each listener's loop).
    let pending = TcpStream::connect(sluice.http).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let lines: Vec<String> = sluice
        .stderr
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .cloned()
        .collect();
    let seconds = filling.elapsed().as_secs() as usize;
    assert!(
        !lines.is_empty() && lines.len() <= seconds + 2,
        "accept failures logged {} times in {seconds}s: {lines:#?}",
        lines.len()
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("suppressed=") && !l.contains("suppressed=0")),
        "no count of suppressed failures: {lines:#?}"
    );
    drop((idle, last, pending));
    assert!(poll_until(T, || open_fds(pid, LIMIT) < LIMIT - 8));
    for listener in ["http", "socks5"] {
        let rec: Value = sluice.wait_record(listener, |r| {
            r["listener"] == listener && r["error_kind"] == "internal"
        });
        assert!(
            rec["error"].as_str().unwrap().contains("RLIMIT_NOFILE"),
            "{rec}"
        );
    }
    assert!(sluice.metric(r#"sluice_fd_exhausted_total{listener="http"}"#) >= 2.0);
    assert!(sluice.metric(r#"sluice_fd_exhausted_total{listener="socks5"}"#) >= 1.0);
}

// === drain: flows still dialing ===

/// A flow still resolving when `limits.drain_timeout` ends is refused as
/// draining and recorded before exit, whatever listener it came through:
/// here a SOCKS5 CONNECT and an absolute-form request whose names wait on
/// a silent upstream (allowed 30 s) when SIGTERM's 1 s drain runs out.
#[test]
fn flows_still_dialing_at_the_drain_deadline_are_recorded() {
    let (dead, _keep) = silent_udp();
    let head = format!(
        "listen:\n  http: 127.0.0.1:0\n  socks5: 127.0.0.1:0\n  admin: 127.0.0.1:0\n\
         dns:\n  upstreams: [{dead}]\n  upstream_timeout: 30s\n\
         limits:\n  connect_timeout: 30s\n  drain_timeout: 1s\n"
    );
    let mut sluice = Sluice::start(BIN, &config(&head, "\"*.test\""));
    let mut socks = connect_with_timeout(sluice.socks5.unwrap(), T);
    socks.set_read_timeout(Some(T)).unwrap();
    socks.write_all(&[5, 1, 0]).unwrap();
    let mut reply = [0u8; 2];
    socks.read_exact(&mut reply).unwrap();
    assert_eq!(reply, [5, 0]);
    let name = b"socks.test";
    let mut req = vec![5, 1, 0, 3, name.len() as u8];
    req.extend_from_slice(name);
    req.extend_from_slice(&443u16.to_be_bytes());
    socks.write_all(&req).unwrap();
    let mut http = connect_with_timeout(sluice.http, T);
    write!(
        http,
        "GET http://http.test/ HTTP/1.1\r\nHost: http.test\r\n\r\n"
    )
    .unwrap();
    // Both are waiting on the silent upstream now (give the lookups a moment).
    std::thread::sleep(Duration::from_millis(300));

    let t0 = Instant::now();
    sluice.signal("TERM");
    assert_eq!(sluice.wait_exit(T), Some(0));
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(5), "drain took {took:?}");
    let records = sluice.records();
    for host in ["socks.test", "http.test"] {
        let rec = records
            .iter()
            .find(|r| r["dst_host"] == host)
            .unwrap_or_else(|| panic!("no record for {host}: {records:#?}"));
        assert_eq!(rec["error_kind"], "internal", "{rec}");
        assert!(rec["error"].as_str().unwrap().contains("drain"), "{rec}");
    }
}
