//! Replicas behind a load balancer, end to end: two `sluice run`
//! processes behind haproxy (TCP mode, `/readyz` health checks every
//! 300 ms), clients sending steady load through it, one replica killed
//! with SIGKILL and, once it is back, the other stopped with SIGTERM
//! (`limits.drain_grace`: `/readyz` answers 503 while the listener still
//! accepts, then the drain). Counts what the clients saw.
//!
//! Needs haproxy (`apt-get install haproxy`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sluice_testkit::{KillOnDrop, Origin, Sluice, TempDir, get_via, poll_until};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// haproxy's health-check interval (`inter`, with `fall 1 rise 1`).
const CHECK: Duration = Duration::from_millis(300);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A replica on fixed ports (so that it can start again in its place).
fn replica(http: u16, admin: u16, origin: u16, grace: &str) -> Sluice {
    Sluice::start(
        BIN,
        &format!(
            "listen:\n  http: 127.0.0.1:{http}\n  admin: 127.0.0.1:{admin}\n\
             limits:\n  drain_grace: {grace}\n  drain_timeout: 5s\n\
             zones:\n  - name: apps\n    sources: [127.0.0.0/8]\n    mode: enforce\n    \
             allow:\n      - cidr: 127.0.0.1/32\n        ports: [{origin}]\n"
        ),
    )
}

/// haproxy in TCP mode in front of `servers` (`(proxy port, admin port)`),
/// checking each one's `/readyz`.
fn haproxy(dir: &TempDir, servers: &[(u16, u16)]) -> (KillOnDrop, SocketAddr) {
    let port = free_port();
    let mut cfg = format!(
        "defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 10s\n  \
         timeout server 10s\n  retries 3\n  option redispatch\n\
         frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n\
         backend b\n  option httpchk\n  \
         http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost\n  \
         http-check expect status 200\n  default-server inter {}ms fall 1 rise 1\n",
        CHECK.as_millis()
    );
    for (i, (http, admin)) in servers.iter().enumerate() {
        cfg.push_str(&format!(
            "  server r{i} 127.0.0.1:{http} check port {admin}\n"
        ));
    }
    let file = dir.path("haproxy.cfg");
    std::fs::write(&file, cfg).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy is not installed: apt-get install haproxy");
    let bg = KillOnDrop(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(
        poll_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
        "haproxy did not listen on {addr}"
    );
    (bg, addr)
}

/// Every request's end time and outcome, from all clients.
type Log = Arc<Mutex<Vec<(Instant, bool)>>>;

fn failures_between(log: &Log, from: Instant, to: Instant) -> (usize, usize) {
    let log = log.lock().unwrap();
    let inside = log.iter().filter(|(t, _)| *t >= from && *t <= to);
    let (mut ok, mut failed) = (0, 0);
    for (_, good) in inside {
        if *good {
            ok += 1;
        } else {
            failed += 1;
        }
    }
    (ok, failed)
}

#[test]
fn replicas_behind_haproxy_lose_nothing_to_a_drain_and_nothing_new_after_a_kill() {
    let origin = Origin::start("127.0.0.1");
    let o = origin.addr.port();
    let (h1, a1, h2, a2) = (free_port(), free_port(), free_port(), free_port());
    let mut r1 = replica(h1, a1, o, "1s");
    let mut r2 = replica(h2, a2, o, "1s");
    let dir = TempDir::new("replicas");
    let (_lb, lb) = haproxy(&dir, &[(h1, a1), (h2, a2)]);

    // Steady load: two clients, a fresh connection per request, bounded
    // in count and time.
    let log: Log = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let url = origin.url();
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (log, stop, url) = (log.clone(), stop.clone(), url.clone());
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(40);
                for _ in 0..20_000 {
                    if stop.load(Ordering::SeqCst) || Instant::now() > until {
                        break;
                    }
                    let ok = get_via(lb, &url).status == Some(200);
                    log.lock().unwrap().push((Instant::now(), ok));
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    let served = |s: &Sluice| s.records().len();
    assert!(
        poll_until(Duration::from_secs(10), || served(&r1) >= 10
            && served(&r2) >= 10),
        "both replicas should serve"
    );

    // SIGKILL: connections on their way to r1 fail (haproxy retries them
    // on r2); after one check interval haproxy sends nothing new there.
    let _ = r1.child.kill();
    let _ = r1.child.wait();
    let killed = Instant::now();
    std::thread::sleep(CHECK * 4);
    let (ok_kill, failed_kill) = failures_between(&log, killed, Instant::now());
    let settled = killed + CHECK * 2;
    std::thread::sleep(Duration::from_millis(600));
    let (ok_after, failed_after) = failures_between(&log, settled, Instant::now());
    assert!(ok_after > 0, "no load after the kill");
    assert_eq!(
        failed_after, 0,
        "new connections failed after the check interval"
    );

    // r1 back in its place; haproxy's next good check sends it traffic.
    r1 = replica(h1, a1, o, "1s");
    assert!(
        poll_until(Duration::from_secs(5), || served(&r1) >= 5),
        "the restarted replica got no traffic"
    );

    // SIGTERM with a grace: r2's /readyz fails at once, haproxy takes it
    // out while it still accepts, then it drains and exits.
    let termed = Instant::now();
    r2.signal("TERM");
    assert!(
        poll_until(Duration::from_secs(2), || r2.readyz().0 == Some(503)),
        "/readyz did not fail on SIGTERM"
    );
    assert!(
        r2.wait_exit(Duration::from_secs(10)).is_some(),
        "r2 did not exit"
    );
    let exited = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let (ok_drain, failed_drain) = failures_between(&log, termed, Instant::now());
    assert!(ok_drain > 0);
    assert_eq!(failed_drain, 0, "requests were lost to the drain");
    let r2_served = served(&r2);
    assert!(
        r2.records()
            .iter()
            .all(|r| r["verdict"] == "allow" && r["error"].is_null())
    );
    let total = log.lock().unwrap().len();
    eprintln!(
        "replica failover: {total} requests; SIGKILL: {failed_kill} failed of {} in the {}ms after it, \
         {failed_after} of {ok_after} after {}ms; SIGTERM (drain_grace 1s): {failed_drain} failed of {}, \
         replica exited {}ms after the signal having served {r2_served}",
        ok_kill + failed_kill,
        (CHECK * 4).as_millis(),
        (CHECK * 2).as_millis(),
        ok_drain + failed_drain,
        exited.duration_since(termed).as_millis(),
    );
}

#[test]
fn sigterm_fails_readyz_first_while_the_listener_still_serves_for_drain_grace() {
    let origin = Origin::start("127.0.0.1");
    let mut s = replica(free_port(), free_port(), origin.addr.port(), "2s");
    let termed = Instant::now();
    s.signal("TERM");
    assert!(
        poll_until(Duration::from_secs(1), || s.readyz().0 == Some(503)),
        "/readyz still ready after SIGTERM"
    );
    let (_, body) = s.readyz();
    assert_eq!(body["ready"], false, "{body}");
    // Within the grace a new connection is still served.
    let r = get_via(s.http, &origin.url());
    assert_eq!(r.status, Some(200), "{}", r.text());
    assert!(termed.elapsed() < Duration::from_secs(2));
    assert!(s.wait_exit(Duration::from_secs(10)).is_some());
    assert!(
        termed.elapsed() >= Duration::from_secs(2),
        "exited before the grace"
    );
}
