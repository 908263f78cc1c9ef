//! Where records and alerts go, through the real binary: a long tunnel's
//! interim records (CONNECT and SOCKS5, a slow upload to a local origin)
//! whose bytes sum to exactly what was sent, in the flow log, `/metrics`
//! and the admin API alike; and a new alert (a DNS tunnelling burst, asked
//! with `dig`) reaching a webhook receiver, a syslog receiver over UDP and
//! TCP, and `/api/v1/alerts/stream`, once each, with repeats only raising
//! the stored count.

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_testkit::{
    FixtureDns, Sluice, SyslogReceiver, TempDir, WebhookReceiver, connect_tunnel,
    connect_with_timeout, output_within, poll_until, random_label,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const T: Duration = Duration::from_secs(20);

/// Bytes the origin sends first on every connection.
const DOWN: usize = 5_000;
/// The slow upload: chunks, their size and the pause between them.
const CHUNKS: usize = 12;
const CHUNK: usize = 10_000;
const PAUSE: Duration = Duration::from_millis(150);

/// An origin on 127.0.0.1:0 that sends [`DOWN`] bytes on each connection,
/// then reads until the client is done; the bytes it read, in total.
fn slow_sink() -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let g = g.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(T));
                let _ = s.write_all(&[b'y'; DOWN]);
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    g.fetch_add(n as u64, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, got)
}

/// Starts Sluice with `yaml` (which names its own `log:` keys): the flow
/// log goes to a file in the run's directory.
fn start(yaml: &str, log: &str) -> Sluice {
    let dir = TempDir::new("sinks");
    let flows = dir.path("flows.jsonl");
    let config = dir.path("sluice.yaml");
    let text = format!("log:\n  flows: {}\n{log}{yaml}", flows.display());
    std::fs::write(&config, text).unwrap();
    Sluice::start_at(BIN, &config, flows, dir)
}

/// A SOCKS5 CONNECT to `to` (no authentication); the open tunnel.
fn socks5_connect(proxy: SocketAddr, to: SocketAddr) -> TcpStream {
    let mut s = connect_with_timeout(proxy, T);
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut reply = [0u8; 2];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply, [5, 0]);
    let SocketAddr::V4(v4) = to else {
        panic!("IPv4 origin")
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&v4.port().to_be_bytes());
    s.write_all(&req).unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply[1], 0, "SOCKS5 CONNECT succeeded: {reply:?}");
    s
}

/// The slow upload through an open tunnel: reads what the origin sends
/// first, sends the chunks, and — while the tunnel is still open, half-way
/// through — waits for the first interim record of `listener`. Then closes
/// and returns every record of the flow, the closing one last.
fn upload(s: &Sluice, mut tunnel: TcpStream, listener: &str) -> Vec<Value> {
    tunnel.set_read_timeout(Some(T)).unwrap();
    let mut down = vec![0u8; DOWN];
    tunnel.read_exact(&mut down).unwrap();
    let mut interim = None;
    for i in 0..CHUNKS {
        tunnel.write_all(&[b'x'; CHUNK]).unwrap();
        std::thread::sleep(PAUSE);
        if i == CHUNKS / 2 {
            // The tunnel is open: the flow is visible before it ends.
            interim = Some(
                s.wait_record(&format!("an interim {listener} record"), |r| {
                    r["listener"] == listener && r["interim"] == true
                }),
            );
        }
    }
    drop(tunnel);
    let id = interim.unwrap()["id"].clone();
    let closing = s.wait_record(&format!("the closing {listener} record"), |r| {
        r["id"] == id && r["interim"] == false
    });
    let mut all: Vec<Value> = s
        .records()
        .into_iter()
        .filter(|r| r["id"] == id && r["interim"] == true)
        .collect();
    all.push(closing);
    all
}

fn sum(records: &[Value], field: &str) -> u64 {
    records.iter().map(|r| r[field].as_u64().unwrap()).sum()
}

#[test]
fn a_long_tunnel_writes_interim_records_that_sum_to_what_was_sent() {
    let (origin, got) = slow_sink();
    let yaml = format!(
        "listen:\n  http: 127.0.0.1:0\n  socks5: 127.0.0.1:0\n  admin: 127.0.0.1:0\n\
         zones:\n  - name: lan\n    sources: [127.0.0.1/32]\n    allow:\n      \
         - cidr: 127.0.0.1/32\n        ports: [{}]\n        id: sink\n",
        origin.port()
    );
    let s = start(&yaml, "  interim: 300ms\n");
    let sent = (CHUNKS * CHUNK) as u64;

    let t = connect_tunnel(s.http, &origin.to_string(), T).unwrap();
    let connect = upload(&s, t, "http");
    let t = socks5_connect(s.socks5.unwrap(), origin);
    let socks = upload(&s, t, "socks5");
    assert!(
        poll_until(T, || got.load(Ordering::SeqCst) == 2 * sent),
        "the origin got {} bytes",
        got.load(Ordering::SeqCst)
    );

    for (records, protocol) in [(&connect, "connect"), (&socks, "socks5")] {
        let (closing, interims) = records.split_last().unwrap();
        // 1.8 s of upload with a 300 ms interval: several interim records.
        assert!(interims.len() >= 2, "{records:#?}");
        assert_eq!(sum(records, "bytes_out"), sent, "{records:#?}");
        assert_eq!(sum(records, "bytes_in"), DOWN as u64, "{records:#?}");
        for r in interims {
            assert_eq!(r["protocol"], protocol);
            assert_eq!(r["start"], closing["start"], "one flow: {r}");
            assert!(r["ts"].as_str() <= closing["ts"].as_str(), "{r}");
            assert_eq!(r["rule"], "sink");
            assert_eq!(r["error"], Value::Null, "{r}");
        }
        // Interim records carry only the bytes since the previous one.
        assert!(
            interims
                .iter()
                .all(|r| r["bytes_out"].as_u64().unwrap() < sent)
        );
    }
    // DNS queries and absolute-form requests have no interim records.
    // (The origin is no HTTP server: the answer is a 502, recorded.)
    sluice_testkit::get_via(s.http, &format!("http://{origin}/"));
    let req = s.wait_record("the absolute-form request", |r| r["protocol"] == "http");
    assert_eq!(req["interim"], Value::Null, "{req}");

    // Metrics: every byte once, every tunnel once.
    let out = s.metric(r#"sluice_bytes_out_total{zone="lan"}"#) as u64;
    let req_out = req["bytes_out"].as_u64().unwrap();
    assert_eq!(out, 2 * sent + req_out);
    let inn = s.metric(r#"sluice_bytes_in_total{zone="lan"}"#) as u64;
    assert_eq!(inn, 2 * DOWN as u64 + req["bytes_in"].as_u64().unwrap());
    for listener in ["http", "socks5"] {
        let series = format!(
            r#"sluice_tunnels_total{{listener="{listener}",zone="lan",verdict="allow",enforced="true"}}"#
        );
        assert_eq!(s.metric(&series), 1.0, "{series}");
    }
    assert_eq!(s.metric(r#"sluice_rule_hits_total{rule="sink"}"#), 3.0);

    // The admin API: totals over the window, and rule hits, the same.
    let top: Value = serde_json::from_slice(&s.admin_get("/api/v1/top").body).unwrap();
    let lan = &top["zones"][0]["totals"];
    assert_eq!(lan["flows"], 3, "{top}");
    assert_eq!(lan["bytes_out"], 2 * sent + req_out, "{top}");
    assert_eq!(
        top["zones"][0]["sources"][0]["flows"], 3,
        "a source's flows count once: {top}"
    );
    let rules: Value = serde_json::from_slice(&s.admin_get("/api/v1/rules").body).unwrap();
    let sink = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "sink")
        .unwrap();
    assert_eq!(sink["hits"], 3, "{sink}");
    // Recent flows show the interim records too, marked.
    let flows: Value = serde_json::from_slice(&s.admin_get("/api/v1/flows").body).unwrap();
    let shown = flows["flows"].as_array().unwrap();
    assert_eq!(
        shown.iter().filter(|r| r["interim"] == false).count(),
        2,
        "{flows}"
    );
    assert!(shown.iter().any(|r| r["interim"] == true), "{flows}");
}

// === alert sinks ===

const DNS_ZONES: &str = "zones:\n  - name: lan\n    sources: [127.0.0.1/32]\n    allow: []\n";

/// Sluice with a DNS listener asking `up`, tunnelling scored over 20
/// queries in a 2 s window, `extra` added (its `detect:` and `admin:`).
fn dns_sluice(up: &FixtureDns, extra: &str) -> Sluice {
    let yaml = format!(
        "listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n  dns: 127.0.0.1:0\n\
         dns:\n  upstreams: [{}]\n  upstream_timeout: 700ms\n  tunnel_min_queries: 20\n  \
         tunnel_window: 2s\n{extra}{DNS_ZONES}",
        up.addr
    );
    start(&yaml, "")
}

/// What data leaving through DNS looks like: 40 unique 50-character labels
/// under `domain`, asked as TXT with one `dig -f` run.
fn burst(s: &Sluice, dir: &TempDir, domain: &str, seed: u64) {
    let names: Vec<String> = (0..40)
        .map(|i| format!("{}.t.{domain} TXT", random_label(seed + i)))
        .collect();
    let path = dir.path(&format!("{domain}-{seed}.txt"));
    std::fs::write(&path, names.join("\n")).unwrap();
    let dns = s.dns.unwrap();
    output_within(
        Command::new("dig")
            .arg(format!("@{}", dns.ip()))
            .args([
                "-p",
                &dns.port().to_string(),
                "+tries=1",
                "+time=5",
                "+short",
            ])
            .arg("-f")
            .arg(&path),
        T,
    );
}

fn api_alerts(s: &Sluice) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&s.admin_get("/api/v1/alerts").body).unwrap();
    v["alerts"].as_array().unwrap().clone()
}

/// An open `GET path` on admin whose bytes a thread keeps appending, and
/// the connection (to close it).
fn open_stream(s: &Sluice, path: &str) -> (Arc<Mutex<String>>, TcpStream) {
    let admin = s.admin.unwrap();
    let mut c = connect_with_timeout(admin, T);
    write!(c, "GET {path} HTTP/1.1\r\nHost: {admin}\r\n\r\n").unwrap();
    let conn = c.try_clone().unwrap();
    let text = Arc::new(Mutex::new(String::new()));
    let t = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            t.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (text, conn)
}

/// The JSON of each `event: alert` in a stream's text.
fn stream_alerts(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|e| e.contains("event: alert\n"))
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// One RFC 5424 message: PRI and version, timestamp, hostname, APP-NAME,
/// PROCID, MSGID, structured data, and the message (the alert's JSON).
fn rfc5424(msg: &str) -> (Vec<&str>, Value) {
    let parts: Vec<&str> = msg.splitn(8, ' ').collect();
    assert_eq!(parts.len(), 8, "{msg}");
    let json = serde_json::from_str(parts[7]).unwrap_or_else(|e| panic!("{e}: {msg}"));
    (parts[..7].to_vec(), json)
}

/// RFC 6587 octet-counted frames (`LEN SP MSG`), checking each count.
fn octet_frames(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let sp = rest.iter().position(|&b| b == b' ').unwrap();
        let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
        let msg = &rest[sp + 1..];
        assert!(
            msg.len() >= len,
            "a frame of {len} bytes, {} left",
            msg.len()
        );
        out.push(String::from_utf8(msg[..len].to_vec()).unwrap());
        rest = &msg[len..];
    }
    out
}

fn stderr_alerts(s: &Sluice) -> usize {
    s.stderr
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with('{') && l.contains("\"kind\":"))
        .count()
}

#[test]
fn a_new_alert_reaches_the_webhook_syslog_and_the_stream_once() {
    let up = FixtureDns::start();
    // The first POST is answered 503: the alert is sent again.
    let hook = WebhookReceiver::start(&[503]);
    let syslog = SyslogReceiver::udp();
    let extra = format!(
        "admin:\n  max_streams: 2\ndetect:\n  webhook:\n    url: {}\n    timeout: 2s\n    \
         queue: 10\n  syslog:\n    address: udp://{}\n",
        hook.url("/hooks/sluice?team=sec"),
        syslog.addr
    );
    let s = dns_sluice(&up, &extra);
    let dir = TempDir::new("sinks-alerts");

    // Two live streams (alerts, flows) fill admin.max_streams: a third,
    // of either kind, is refused.
    let (stream, _) = open_stream(&s, "/api/v1/alerts/stream?severity=warning");
    let (_, flows) = open_stream(&s, "/api/v1/flows/stream");
    assert!(poll_until(T, || stream
        .lock()
        .unwrap()
        .contains(": connected")));
    let third = s.admin_get("/api/v1/alerts/stream");
    assert_eq!(third.status, Some(503), "{}", third.text());
    assert!(third.text().contains("admin.max_streams is 2"));
    assert_eq!(
        s.admin_get("/api/v1/alerts/stream?kind=dns").status,
        Some(400)
    );

    burst(&s, &dir, "exfil-tunnel.test", 0);
    assert!(poll_until(T, || api_alerts(&s).len() == 1));
    let alert = api_alerts(&s)[0].clone();
    assert_eq!(alert["kind"], "dns-tunnel");

    // The webhook: the alert POSTed as JSON, again after the 503.
    assert!(
        poll_until(T, || hook.posts().len() == 2),
        "{:?}",
        hook.posts()
    );
    let posts = hook.posts();
    for p in &posts {
        assert_eq!(p.method, "POST");
        assert_eq!(p.path, "/hooks/sluice?team=sec");
        assert_eq!(p.header("content-type"), Some("application/json"));
        let body: Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(body["id"], alert["id"]);
        assert_eq!(body["kind"], "dns-tunnel");
        assert_eq!(body["dst"], "exfil-tunnel.test");
        assert_eq!(body["count"], 1, "as first emitted");
    }
    assert_eq!(posts[0].body, posts[1].body);

    // Syslog over UDP: one RFC 5424 datagram.
    assert!(poll_until(T, || syslog.received().len() == 1));
    let datagram = String::from_utf8(syslog.received()[0].clone()).unwrap();
    let (head, json) = rfc5424(&datagram);
    // Facility 4 (security), severity critical (2): PRI 34; version 1.
    assert_eq!(head[0], "<34>1", "{datagram}");
    assert!(
        head[1].ends_with('Z') && head[1].contains('T'),
        "{datagram}"
    );
    assert_eq!(head[3], "sluice", "APP-NAME: {datagram}");
    assert_eq!(head[4], s.child.id().to_string(), "PROCID: {datagram}");
    assert_eq!(head[5], "dns-tunnel", "MSGID: {datagram}");
    assert_eq!(head[6], "-", "no structured data: {datagram}");
    assert_eq!(json["id"], alert["id"]);

    // The live stream: one `event: alert`.
    assert!(poll_until(T, || stream_alerts(&stream.lock().unwrap())
        .len()
        == 1));
    let streamed = stream_alerts(&stream.lock().unwrap())[0].clone();
    assert_eq!(streamed["id"], alert["id"]);
    assert!(stream.lock().unwrap().contains("id: 1\nevent: alert\n"));

    // The same tunnel in the detector's next window: only the stored
    // alert's count rises; no sink hears of it again.
    let before = api_alerts(&s)[0]["count"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    burst(&s, &dir, "exfil-tunnel.test", 1000);
    assert!(
        poll_until(T, || api_alerts(&s)[0]["count"].as_u64().unwrap() > before),
        "{:?}",
        api_alerts(&s)
    );
    // Give a wrongly emitted repeat the time the first one took to arrive.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(api_alerts(&s).len(), 1);
    assert_eq!(hook.posts().len(), 2);
    assert_eq!(syslog.received().len(), 1);
    assert_eq!(stream_alerts(&stream.lock().unwrap()).len(), 1);
    assert_eq!(stderr_alerts(&s), 1);
    for sink in ["webhook", "syslog"] {
        let m = |what: &str| {
            s.metric(&format!(
                r#"sluice_alert_sink_{what}_total{{sink="{sink}"}}"#
            ))
        };
        assert_eq!(m("delivered"), 1.0, "{sink}");
        assert_eq!(m("dropped"), 0.0, "{sink}");
    }

    // A stream resumed with Last-Event-ID 0 starts with the stored alert
    // (in the place the closed flow stream leaves under the cap).
    flows.shutdown(std::net::Shutdown::Both).unwrap();
    let admin = s.admin.unwrap();
    let resume =
        format!("GET /api/v1/alerts/stream HTTP/1.1\r\nHost: {admin}\r\nLast-Event-ID: 0\r\n\r\n");
    let mut c = connect_with_timeout(admin, T);
    let mut text = String::new();
    let opened = poll_until(T, || {
        c = connect_with_timeout(admin, T);
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        c.write_all(resume.as_bytes()).unwrap();
        let mut buf = [0u8; 4096];
        let n = c.read(&mut buf).unwrap_or(0);
        text = String::from_utf8_lossy(&buf[..n]).into_owned();
        text.starts_with("HTTP/1.1 200")
    });
    assert!(opened, "{text}");
    let deadline = Instant::now() + T;
    while stream_alerts(&text).is_empty() && Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        if let Ok(n) = c.read(&mut buf) {
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    let resumed = stream_alerts(&text);
    assert_eq!(resumed.len(), 1, "{text}");
    assert_eq!(resumed[0]["id"], alert["id"]);
    assert!(
        resumed[0]["count"].as_u64().unwrap() > before,
        "as it is now"
    );
}

#[test]
fn syslog_over_tcp_counts_octets_and_reconnects_and_a_refused_post_is_dropped() {
    let up = FixtureDns::start();
    // The receiver closes the first connection after its first read.
    let syslog = SyslogReceiver::tcp(true);
    // A 400 is final: the alert is dropped and counted, not retried.
    let hook = WebhookReceiver::start(&[400]);
    let extra = format!(
        "detect:\n  webhook: {{url: '{}'}}\n  syslog: {{address: 'tcp://{}'}}\n",
        hook.url("/"),
        syslog.addr
    );
    let s = dns_sluice(&up, &extra);
    let dir = TempDir::new("sinks-tcp");

    burst(&s, &dir, "exfil-one.test", 0);
    assert!(poll_until(T, || !syslog.received().is_empty()
        && !syslog.received()[0].is_empty()));
    let first = octet_frames(&syslog.received()[0]);
    assert_eq!(first.len(), 1, "{first:?}");
    let (head, json) = rfc5424(&first[0]);
    assert_eq!(
        (head[0], head[3], head[5]),
        ("<34>1", "sluice", "dns-tunnel")
    );
    assert_eq!(json["dst"], "exfil-one.test");

    assert!(poll_until(T, || s
        .metric(r#"sluice_alert_sink_dropped_total{sink="webhook"}"#)
        == 1.0));
    assert_eq!(hook.posts().len(), 1, "a 400 is not retried");

    // Another destination: a new alert, on a new connection.
    burst(&s, &dir, "exfil-two.test", 500);
    assert!(
        poll_until(T, || syslog.received().len() == 2
            && !syslog.received()[1].is_empty()),
        "{:?}",
        syslog.received()
    );
    let second = octet_frames(&syslog.received()[1]);
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(rfc5424(&second[0]).1["dst"], "exfil-two.test");
    assert_eq!(
        s.metric(r#"sluice_alert_sink_delivered_total{sink="syslog"}"#),
        2.0
    );
    assert_eq!(
        s.metric(r#"sluice_alert_sink_dropped_total{sink="syslog"}"#),
        0.0
    );
}
