//! The proxy's life as an operator sees it, through the real binary and
//! signals: graceful drain on SIGTERM (readiness, refused connections, open
//! tunnels, flushed records, the drain deadline), hot reload on SIGHUP, on a
//! file change and on a Kubernetes ConfigMap symlink swap (under load, with
//! an invalid file, across an open tunnel), flow log reopening on SIGUSR1,
//! and `listen` changes that need a restart.
//!
//! Layout: helpers, then drain, reload, SIGUSR1 and listen tests.

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::{
    io::Read,
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_testkit::{
    Origin, RawResponse, Sluice, TempDir, connect_tunnel, connect_with_timeout, get_on, get_via,
    poll_until,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const T: Duration = Duration::from_secs(10);

// === helpers ===

/// A policy body (everything after `listen:` and `log:`) allowing
/// 127.0.0.1 on `ports`, with a marker comment so that bodies that allow the
/// same ports still differ (and so hash differently).
fn allowing(ports: &[u16], marker: &str) -> String {
    let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
    format!(
        "# {marker}
mode: enforce
zones:
  - name: local
    sources: [127.0.0.0/8]
    allow:
      - cidr: 127.0.0.1/32
        ports: [{}]
",
        ports.join(", ")
    )
}

/// The `listen:` and `log:` part of the file `Sluice::start` wrote, to keep
/// them unchanged across rewrites.
fn preamble(sluice: &Sluice) -> String {
    let text = std::fs::read_to_string(&sluice.config).unwrap();
    let end = text.find("# ").expect("a policy body starts with a marker");
    text[..end].to_owned()
}

/// Replaces `path` atomically (write a sibling, rename over), so that the
/// file watcher never reads a half-written file.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `GET http://origin/path` through the proxy on a fresh connection.
fn get(proxy: SocketAddr, origin: SocketAddr, path: &str) -> RawResponse {
    get_via(proxy, &format!("http://{origin}{path}"))
}

fn policy_hash(sluice: &Sluice) -> String {
    sluice.readyz().1["policy_hash"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until `/readyz` reports a policy hash other than `old`.
fn wait_new_hash(sluice: &Sluice, old: &str, why: &str) -> String {
    let mut now = String::new();
    let changed = poll_until(T, || {
        now = policy_hash(sluice);
        !now.is_empty() && now != old
    });
    assert!(changed, "{why}: policy hash still {old}");
    now
}

fn record_with_id<'a>(records: &'a [Value], id: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no record with id {id} in {records:?}"))
}

// === drain ===

#[test]
fn sigterm_drains_open_tunnels_refuses_new_work_and_flushes_records() {
    drain_with("TERM");
}

#[test]
fn sigint_drains_like_sigterm() {
    drain_with("INT");
}

fn drain_with(signal: &str) {
    let origin = Origin::start("127.0.0.1");
    let o = origin.addr;
    let mut sluice = Sluice::start(BIN, &allowing(&[o.port()], "drain"));
    // Finished requests whose records must survive the exit.
    let mut ids = Vec::new();
    for _ in 0..5 {
        let r = get(sluice.http, o, "/bytes/10");
        assert_eq!(r.status, Some(200));
        ids.push(r.header("sluice-request-id").unwrap().to_owned());
    }
    // An idle keep-alive client connection, after one request.
    let mut idle = connect_with_timeout(sluice.http, T);
    let r = get_on(&mut idle, &o.to_string(), &format!("http://{o}/bytes/1"));
    assert_eq!(r.status, Some(200));
    ids.push(r.header("sluice-request-id").unwrap().to_owned());
    let mut tunnel = connect_tunnel(sluice.http, &o.to_string(), T).unwrap();
    assert_eq!(
        get_on(&mut tunnel, &o.to_string(), "/bytes/100").body.len(),
        100
    );
    assert_eq!(sluice.readyz().0, Some(200));

    sluice.signal(signal);
    assert!(
        poll_until(T, || sluice.readyz().0 == Some(503)),
        "/readyz did not turn 503"
    );
    assert_eq!(sluice.readyz().1["draining"], true);
    assert!(
        poll_until(T, || TcpStream::connect_timeout(&sluice.http, T).is_err()),
        "new connections are still accepted while draining"
    );
    // Idle keep-alive connections are closed, not waited for.
    let mut buf = [0u8; 64];
    assert!(
        matches!(idle.read(&mut buf), Ok(0)),
        "an idle keep-alive connection was not closed by the drain"
    );
    // The tunnel keeps relaying, and the process waits for it.
    let r = get_on(&mut tunnel, &o.to_string(), "/bytes/2000");
    assert_eq!((r.status, r.body.len()), (Some(200), 2000));
    assert!(sluice.is_running(), "exited with a tunnel still open");
    assert_eq!(sluice.readyz().0, Some(503));
    drop(tunnel);
    assert_eq!(sluice.wait_exit(T), Some(0), "exit status after drain");

    let records = sluice.records();
    for id in &ids {
        record_with_id(&records, id);
    }
    let tunnels: Vec<&Value> = records
        .iter()
        .filter(|r| r["protocol"] == "connect")
        .collect();
    assert_eq!(tunnels.len(), 1, "{records:?}");
    let t = tunnels[0];
    assert_eq!(t["error"], Value::Null, "{t}");
    assert!(t["bytes_in"].as_u64().unwrap() > 2100, "{t}");
    assert!(t["bytes_out"].as_u64().unwrap() > 0, "{t}");
    assert_eq!(records.len(), ids.len() + 1, "{records:?}");
}

#[test]
fn drain_timeout_stops_a_tunnel_that_stays_open_and_still_exits_zero() {
    let origin = Origin::start("127.0.0.1");
    let o = origin.addr;
    let body = allowing(&[o.port()], "drain-timeout").replace(
        "mode: enforce\n",
        "mode: enforce\nlimits:\n  drain_timeout: 1s\n",
    );
    let mut sluice = Sluice::start(BIN, &body);
    let mut tunnel = connect_tunnel(sluice.http, &o.to_string(), T).unwrap();
    assert_eq!(get_on(&mut tunnel, &o.to_string(), "/").status, Some(200));

    let t0 = Instant::now();
    sluice.signal("TERM");
    assert_eq!(sluice.wait_exit(T), Some(0));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "did not wait for the tunnel: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "drain took {took:?}");
    // The client sees its tunnel closed.
    let mut buf = [0u8; 16];
    assert!(matches!(
        std::io::Read::read(&mut tunnel, &mut buf),
        Ok(0) | Err(_)
    ));

    let records = sluice.records();
    assert_eq!(records.len(), 1, "{records:?}");
    let err = records[0]["error"].as_str().unwrap_or_default();
    assert!(err.contains("stopped"), "{}", records[0]);
    assert!(records[0]["bytes_in"].as_u64().unwrap() > 0);
}

// === reload ===

/// One answered request: its status and `Sluice-Request-Id`.
type Answered = (Option<u16>, String);

/// Sequential requests to `origin` on fresh connections until `stop`, at
/// most 2,000 or 60 s; every answer's status and request id, in order.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<Mutex<Vec<Answered>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Load {
    fn start(proxy: SocketAddr, origin: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(Vec::new()));
        let (s, d) = (stop.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            for _ in 0..2000 {
                if s.load(Ordering::SeqCst) || Instant::now() > deadline {
                    return;
                }
                let r = get(proxy, origin, "/bytes/3");
                let id = r.header("sluice-request-id").unwrap_or("").to_owned();
                d.lock().unwrap().push((r.status, id));
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Load { stop, done, thread }
    }

    fn count(&self) -> usize {
        self.done.lock().unwrap().len()
    }

    /// Waits until `n` more requests finished, so that each step of a test
    /// happens while requests keep flowing.
    fn wait_more(&self, n: usize) -> usize {
        let target = self.count() + n;
        assert!(
            poll_until(T, || self.count() >= target),
            "the load loop stalled at {}",
            self.count()
        );
        self.count()
    }

    fn finish(self) -> Vec<Answered> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        Arc::try_unwrap(self.done).unwrap().into_inner().unwrap()
    }
}

#[test]
fn reload_under_load_by_signal_file_change_and_invalid_file_fails_no_request() {
    let a = Origin::start("127.0.0.1");
    let b = Origin::start("127.0.0.1");
    let (pa, pb) = (a.addr.port(), b.addr.port());
    let sluice = Sluice::start(BIN, &allowing(&[pa, pb], "v1"));
    let pre = preamble(&sluice);
    let h1 = policy_hash(&sluice);
    assert_eq!(get(sluice.http, b.addr, "/").status, Some(200));
    let failures = r#"sluice_config_reloads_total{result="failure"}"#;
    assert_eq!(sluice.metric(failures), 0.0);

    let load = Load::start(sluice.http, a.addr);
    load.wait_more(10);

    // SIGHUP: v2 no longer allows origin b.
    write_atomic(&sluice.config, &format!("{pre}{}", allowing(&[pa], "v2")));
    sluice.signal("HUP");
    let h2 = wait_new_hash(&sluice, &h1, "SIGHUP");
    assert!(sluice.wait_log("SIGHUP", T), "reload by SIGHUP not logged");
    let r = get(sluice.http, b.addr, "/");
    assert_eq!(r.status, Some(403), "v2 decides after SIGHUP");
    load.wait_more(10);

    // A file change alone (the 1 s watcher): v3 allows b again.
    write_atomic(
        &sluice.config,
        &format!("{pre}{}", allowing(&[pa, pb], "v3")),
    );
    let h3 = wait_new_hash(&sluice, &h2, "file change");
    assert!(
        sluice.wait_log("file change", T),
        "reload by file change not logged"
    );
    assert_eq!(
        get(sluice.http, b.addr, "/").status,
        Some(200),
        "v3 decides"
    );
    load.wait_more(10);

    // An invalid file (would deny b if it were taken): the old policy stays.
    let invalid = format!(
        "{pre}{}",
        allowing(&[pa], "v4").replace("    sources:", "    colour: blue\n    sources:")
    );
    let line = invalid.lines().position(|l| l.contains("colour")).unwrap() + 1;
    write_atomic(&sluice.config, &invalid);
    sluice.signal("HUP");
    let mut ready = Value::Null;
    assert!(
        poll_until(T, || {
            ready = sluice.readyz().1;
            ready["last_reload_error"].is_string()
        }),
        "no last_reload_error in /readyz"
    );
    let err = ready["last_reload_error"].as_str().unwrap();
    let at = format!("{}:{line}:5", sluice.config.display());
    assert!(err.contains(&at), "{err:?} does not name {at}");
    assert!(err.contains("colour"), "{err}");
    assert_eq!(ready["policy_hash"], h3.as_str());
    assert_eq!(
        ready["ready"], true,
        "an invalid reload does not make it unready"
    );
    assert!(sluice.metric(failures) >= 1.0);
    assert!(sluice.wait_log("reload rejected", T));
    assert_eq!(
        get(sluice.http, b.addr, "/").status,
        Some(200),
        "v3 still decides"
    );
    load.wait_more(10);

    let done = load.finish();
    let failed: Vec<_> = done.iter().filter(|(s, _)| *s != Some(200)).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        done.len()
    );
    assert!(done.len() >= 40 && done.len() < 2000, "{}", done.len());

    // Records of the load, in order, carry v1's hash, then v2's, then v3's.
    // Plus the four requests to origin b.
    let records = sluice.wait_records(done.len() + 4);
    assert_eq!(records.len(), done.len() + 4);
    let hashes: Vec<&str> = done
        .iter()
        .map(|(_, id)| {
            record_with_id(&records, id)["policy_hash"]
                .as_str()
                .unwrap()
        })
        .collect();
    let rank = |h: &str| [&h1, &h2, &h3].iter().position(|x| x.as_str() == h);
    let ranks: Vec<usize> = hashes
        .iter()
        .map(|h| rank(h).unwrap_or_else(|| panic!("unknown policy hash {h}")))
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{ranks:?}");
    for v in 0..3 {
        assert!(
            ranks.contains(&v),
            "no request decided by v{}: {ranks:?}",
            v + 1
        );
    }
}

/// A truncating writer (`: > sluice.yaml`) must not swap in a policy with no
/// zones: the reload fails, is counted, and the running policy stays.
#[test]
fn an_emptied_file_on_reload_is_refused_and_the_running_policy_stays() {
    let origin = Origin::start("127.0.0.1");
    let o = origin.addr;
    let sluice = Sluice::start(BIN, &allowing(&[o.port()], "full"));
    let h1 = policy_hash(&sluice);
    assert_eq!(get(sluice.http, o, "/").status, Some(200));
    std::fs::write(&sluice.config, "").unwrap();
    sluice.signal("HUP");
    let mut ready = Value::Null;
    assert!(
        poll_until(T, || {
            ready = sluice.readyz().1;
            ready["last_reload_error"].is_string()
        }),
        "no last_reload_error in /readyz"
    );
    let err = ready["last_reload_error"].as_str().unwrap();
    let at = format!(
        "{}:1:1: the configuration is empty",
        sluice.config.display()
    );
    assert!(err.contains(&at), "{err:?} does not say {at}");
    assert_eq!(ready["policy_hash"], h1.as_str());
    assert_eq!(ready["ready"], true);
    assert!(sluice.metric(r#"sluice_config_reloads_total{result="failure"}"#) >= 1.0);
    assert_eq!(
        get(sluice.http, o, "/").status,
        Some(200),
        "the old policy decides"
    );
}

#[test]
fn configmap_symlink_swap_triggers_a_reload() {
    let origin = Origin::start("127.0.0.1");
    let o = origin.addr;
    let dir = TempDir::new("configmap");
    let flows = dir.path("flows.jsonl");
    let pre = format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\nlog:\n  flows: {}\n",
        flows.display()
    );
    // What the kubelet writes: sluice.yaml -> ..data/sluice.yaml,
    // ..data -> ..<timestamp>/, swapped by renaming a new ..data link.
    let root = dir.0.clone();
    let version = |name: &str, body: &str| {
        std::fs::create_dir(root.join(name)).unwrap();
        std::fs::write(root.join(name).join("sluice.yaml"), format!("{pre}{body}")).unwrap();
    };
    version("..2026_01_01_00_00_00.1", &allowing(&[o.port()], "cm1"));
    std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", dir.path("..data")).unwrap();
    std::os::unix::fs::symlink("..data/sluice.yaml", dir.path("sluice.yaml")).unwrap();
    let config = dir.path("sluice.yaml");
    let sluice = Sluice::start_at(BIN, &config, flows, dir);
    let h1 = policy_hash(&sluice);
    assert_eq!(get(sluice.http, o, "/").status, Some(200));

    // The swap: only the ..data link changes; sluice.yaml stays the same link.
    let dir = &sluice.dir;
    version("..2026_01_01_00_01_00.2", &allowing(&[1], "cm2"));
    std::os::unix::fs::symlink("..2026_01_01_00_01_00.2", dir.path("..data_tmp")).unwrap();
    std::fs::rename(dir.path("..data_tmp"), dir.path("..data")).unwrap();
    std::fs::remove_dir_all(dir.path("..2026_01_01_00_00_00.1")).unwrap();

    wait_new_hash(&sluice, &h1, "ConfigMap swap");
    assert!(sluice.wait_log("file change", T));
    let r = get(sluice.http, o, "/");
    assert_eq!(r.status, Some(403), "the swapped-in policy decides");
    assert_eq!(sluice.readyz().1["last_reload_error"], Value::Null);
}

#[test]
fn an_open_tunnel_keeps_running_across_a_reload_that_would_deny_it() {
    let origin = Origin::start("127.0.0.1");
    let o = origin.addr;
    let sluice = Sluice::start(BIN, &allowing(&[o.port()], "before"));
    let pre = preamble(&sluice);
    let h1 = policy_hash(&sluice);
    let mut tunnel = connect_tunnel(sluice.http, &o.to_string(), T).unwrap();
    assert_eq!(
        get_on(&mut tunnel, &o.to_string(), "/bytes/10").body.len(),
        10
    );

    write_atomic(&sluice.config, &format!("{pre}{}", allowing(&[1], "after")));
    sluice.signal("HUP");
    wait_new_hash(&sluice, &h1, "SIGHUP");
    // New tunnels are judged by the new policy...
    let refused = connect_tunnel(sluice.http, &o.to_string(), T).unwrap_err();
    assert_eq!(refused.status, Some(403));
    // ...the established one keeps relaying.
    let r = get_on(&mut tunnel, &o.to_string(), "/bytes/500");
    assert_eq!((r.status, r.body.len()), (Some(200), 500));
    drop(tunnel);

    let records = sluice.wait_records(2);
    let t = records
        .iter()
        .find(|r| r["protocol"] == "connect" && r["verdict"] == "allow")
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(
        t["policy_hash"],
        h1.as_str(),
        "judged by the policy it started under"
    );
    assert_eq!(t["error"], Value::Null, "{t}");
    assert!(t["bytes_in"].as_u64().unwrap() > 500, "{t}");
}

// === SIGUSR1 ===

#[test]
fn sigusr1_reopens_the_flow_log_after_rotation() {
    let origin = Origin::start("127.0.0.1");
    let o = origin.addr;
    let sluice = Sluice::start(BIN, &allowing(&[o.port()], "rotate"));
    let id = |r: RawResponse| {
        assert_eq!(r.status, Some(200));
        r.header("sluice-request-id").unwrap().to_owned()
    };
    let first = id(get(sluice.http, o, "/"));
    assert_eq!(sluice.wait_records(1).len(), 1);

    // logrotate's move: records keep going to the moved file until SIGUSR1.
    let rotated = sluice.flows.with_extension("jsonl.1");
    std::fs::rename(&sluice.flows, &rotated).unwrap();
    let before_signal = id(get(sluice.http, o, "/"));
    let read = |p: &Path| -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert!(
        poll_until(T, || read(&rotated).len() == 2),
        "{:?}",
        read(&rotated)
    );

    sluice.signal("USR1");
    assert!(sluice.wait_log("flow log reopened", T));
    let after = id(get(sluice.http, o, "/"));
    let new = sluice.wait_records(1);
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0]["id"], after.as_str());
    let old = read(&rotated);
    let old_ids: Vec<&str> = old.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(old_ids, [first.as_str(), before_signal.as_str()]);
}

/// Rotation that frees a full disk: the live file cannot take its buffered
/// records (ENOSPC, here from `/dev/full` behind the log's path), the
/// operator moves it away and deletes it, and SIGUSR1 must move the writer
/// to the new file, counting the buffered records as lost, rather than
/// keep the full file and drop every later record.
#[test]
fn sigusr1_after_a_full_disk_counts_the_lost_buffer_and_moves_on() {
    let origin = Origin::start("127.0.0.1");
    let o = origin.addr;
    let sluice = Sluice::start(BIN, &allowing(&[o.port()], "full-disk"));
    assert_eq!(get(sluice.http, o, "/").status, Some(200));
    assert_eq!(sluice.wait_records(1).len(), 1);

    // The disk fills up: every write to the log's path fails with ENOSPC.
    std::fs::remove_file(&sluice.flows).unwrap();
    std::os::unix::fs::symlink("/dev/full", &sluice.flows).unwrap();
    sluice.signal("USR1");
    assert!(sluice.wait_log("flow log reopened", T));
    let requests = |s: &Sluice| -> f64 {
        let text = s.admin_get("/metrics").text();
        text.lines()
            .filter(|l| l.starts_with("sluice_requests_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    for _ in 0..3 {
        assert_eq!(get(sluice.http, o, "/").status, Some(200));
    }
    // Counted means handed to the sink, ahead of the reopen below.
    assert!(poll_until(T, || requests(&sluice) == 4.0));
    assert!(sluice.wait_log("flow log: write failed", T));

    // logrotate's move, then the rotated file is deleted: space is free.
    std::fs::remove_file(&sluice.flows).unwrap();
    sluice.signal("USR1");
    assert!(
        sluice.wait_log("3 buffered flow records lost on reopen", T),
        "{:?}",
        sluice.stderr.lock().unwrap()
    );
    assert!(sluice.wait_log("flow log reopened; 3 records", T));
    let after = get(sluice.http, o, "/");
    assert_eq!(after.status, Some(200));
    let id = after.header("sluice-request-id").unwrap().to_owned();
    let new = sluice.wait_records(1);
    let ids: Vec<&str> = new.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id.as_str()]);
    assert_eq!(sluice.metric("sluice_flow_records_dropped_total"), 3.0);
}

// === listen changes ===

#[test]
fn a_listen_change_on_reload_needs_a_restart_and_keeps_the_old_listener() {
    let origin = Origin::start("127.0.0.1");
    let o = origin.addr;
    let mut sluice = Sluice::start(BIN, &allowing(&[o.port()], "listen-1"));
    let pre = preamble(&sluice);
    let h1 = policy_hash(&sluice);
    // A port nothing listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let moved = pre.replace("http: 127.0.0.1:0", &format!("http: {free}"));
    assert_ne!(moved, pre);
    write_atomic(
        &sluice.config,
        &format!("{moved}{}", allowing(&[o.port()], "listen-2")),
    );
    sluice.signal("HUP");
    assert!(
        sluice.wait_log("need a restart", T),
        "no restart notice; running: {}; stderr: {:?}",
        sluice.is_running(),
        sluice.stderr.lock().unwrap()
    );
    assert!(
        sluice.wait_log("changes to listen.http need a restart", T),
        "the notice does not name the key: {:?}",
        sluice.stderr.lock().unwrap()
    );
    // The policy part of the file is taken; the listener is not moved.
    wait_new_hash(&sluice, &h1, "SIGHUP");
    assert_eq!(get(sluice.http, o, "/").status, Some(200));
    assert!(
        TcpStream::connect_timeout(&free, Duration::from_secs(2)).is_err(),
        "something listens on the new address without a restart"
    );
}

// === signals at start-up ===

/// Sends `sig` to the process at once (no `kill` process in between).
fn signal_now(sluice: &Sluice, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(sluice.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

/// Once Sluice says where it listens, a supervisor may signal it at once:
/// SIGHUP must reload (not kill it, the default action) and SIGTERM must
/// drain and exit 0. Several starts, because the window is short (before
/// the fix, about half of the early signals killed the process).
#[test]
fn signals_right_after_start_are_handled_not_fatal() {
    use rustix::process::Signal;
    for round in 0..3 {
        let mut sluice = Sluice::start(BIN, &allowing(&[1], "early"));
        signal_now(&sluice, Signal::HUP);
        assert!(
            sluice.wait_log("SIGHUP", T),
            "round {round}: SIGHUP not handled; exit: {:?}",
            sluice.child.try_wait()
        );
        assert!(sluice.is_running(), "round {round}: SIGHUP killed it");
        let mut sluice = Sluice::start(BIN, &allowing(&[1], "early"));
        signal_now(&sluice, Signal::TERM);
        let exit = sluice.wait_exit(T);
        assert_eq!(
            exit,
            Some(0),
            "round {round}: SIGTERM at start: {:?}",
            sluice.child.try_wait()
        );
    }
}
