//! Content inspection through the real binary on loopback: DLP detectors
//! on request heads and bodies (block, alert, log, report mode; a secret
//! split across two chunks; a large upload in bounded memory; never the
//! secret in records or logs), clamd on uploads and downloads (a test
//! signature, fail closed when clamd is down, unscanned past `max_size`),
//! and ICAP through c-icap (REQMOD and RESPMOD, 204, preview, down).
//! Every test asserts what the origin received, not only what the client
//! was told.
//!
//! Layout: helpers (a capturing origin, raw uploads, configuration), then
//! DLP, clamd and ICAP tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;
use sluice_testkit::{
    CIcap, Clamd, RawResponse, Sluice, TempDir, assert_fields, curl, finding, poll_until,
    read_response,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const T: Duration = Duration::from_secs(10);

/// An AWS access key id (AWS's documented example).
const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
/// A GitHub token shape.
const GH_TOKEN: &str = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";
/// A JWT (header `{"alg":"HS256"}`).
const JWT: &str =
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
/// A test card number that passes Luhn.
const CARD: &str = "4111 1111 1111 1111";

// === helpers ===

/// An origin on 127.0.0.1:0 that keeps what requests reached it (the
/// first MiB of each connection), counts every byte, and answers
/// `GET /download` with `download` and anything else with `ok`.
struct CaptureOrigin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
    bytes: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl CaptureOrigin {
    fn start(download: Vec<u8>) -> CaptureOrigin {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let bytes = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let download = Arc::new(download);
        let (sn, by, rq) = (seen.clone(), bytes.clone(), requests.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let (sn, by, rq, dl) = (sn.clone(), by.clone(), rq.clone(), download.clone());
                std::thread::spawn(move || serve(s, &sn, &by, &rq, &dl));
            }
        });
        CaptureOrigin {
            addr,
            seen,
            bytes,
            requests,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn saw(&self, needle: &str) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.windows(needle.len()).any(|w| w == needle.as_bytes())
    }
}

/// One connection: requests with `Content-Length` bodies, until it closes.
fn serve(
    s: TcpStream,
    seen: &Mutex<Vec<u8>>,
    bytes: &AtomicUsize,
    requests: &AtomicUsize,
    download: &[u8],
) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut kept = 0usize;
    let mut keep = |b: &[u8]| {
        bytes.fetch_add(b.len(), Ordering::SeqCst);
        let room = (1usize << 20).saturating_sub(kept).min(b.len());
        seen.lock().unwrap().extend_from_slice(&b[..room]);
        kept += room;
    };
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            keep(line.as_bytes());
            let end = line == "\r\n";
            head.push_str(&line);
            if end {
                break;
            }
        }
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut left = len;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = match r.read(&mut buf[..left.min(64 * 1024)]) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            keep(&buf[..n]);
            left -= n;
        }
        requests.fetch_add(1, Ordering::SeqCst);
        let body: &[u8] = if head.starts_with("GET /download") {
            download
        } else {
            b"ok"
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
            body.len()
        );
        if w.write_all(resp.as_bytes()).is_err() || w.write_all(body).is_err() {
            return;
        }
    }
}

/// POSTs `parts` to `url` through the proxy as one `Content-Length` body,
/// each part written separately with a pause between them (so the proxy
/// reads them as separate chunks).
fn upload_in_parts(proxy: SocketAddr, url: &str, headers: &str, parts: &[&[u8]]) -> RawResponse {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let head = format!(
        "POST {url} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(150));
        }
        // The proxy may answer and close before the last part.
        if s.write_all(p).is_err() {
            break;
        }
        s.flush().unwrap();
    }
    read_response(&mut s, false)
}

/// A policy letting 127.0.0.1 reach 127.0.0.1 on any port, with `inspect`
/// (the zone's, indented under it) and `top` (top-level keys).
fn config(mode: &str, zone_inspect: &str, top: &str) -> String {
    format!(
        "mode: {mode}
{top}
zones:
  - name: local
    sources: [127.0.0.0/8]
    allow:
      - cidr: 127.0.0.1/32
        ports: any
    inspect:
{zone_inspect}
"
    )
}

// === DLP ===

#[test]
fn dlp_blocks_a_secret_split_across_chunks_before_the_origin_gets_it() {
    let origin = CaptureOrigin::start(Vec::new());
    let sluice = Sluice::start(BIN, &config("enforce", "      dlp: {aws: block}", ""));
    let mut first = vec![b'a'; 200 * 1024];
    first.extend_from_slice(b" key=");
    first.extend_from_slice(&AWS_KEY.as_bytes()[..9]);
    let mut second = AWS_KEY.as_bytes()[9..].to_vec();
    second.push(b' ');
    second.extend_from_slice(&vec![b'b'; 200 * 1024]);
    let r = upload_in_parts(sluice.http, &origin.url("/upload"), "", &[&first, &second]);
    assert_eq!(r.status, Some(403), "{}", r.text());
    assert_eq!(r.header("sluice-rule"), Some("inspect/dlp/aws"));
    let rec = sluice.wait_record("the blocked upload", |r| r["rule"] == "inspect/dlp/aws");
    assert_fields(
        &rec,
        &[("verdict", json!("deny")), ("enforced", json!(true))],
    );
    let f = finding(&rec, "aws");
    assert_eq!(f["count"], 1);
    assert_eq!(f["hash"].as_str().unwrap().len(), 32);
    // The origin got the bytes before the secret, never the secret: not
    // even its first part, which was held back until the rest was seen.
    assert!(
        !origin.saw(&AWS_KEY[..9]),
        "the origin got the secret's start"
    );
    assert!(
        !origin.saw("bbbb"),
        "the origin got the body past the secret"
    );
    assert_eq!(
        origin.requests.load(Ordering::SeqCst),
        0,
        "no complete request reached the origin"
    );
    assert!(
        poll_until(T, || !sluice.alerts("kind=dlp").is_empty()),
        "no dlp alert"
    );
    sluice.assert_never_logged(AWS_KEY);
}

#[test]
fn dlp_in_a_header_blocks_before_anything_leaves() {
    let origin = CaptureOrigin::start(Vec::new());
    let sluice = Sluice::start(BIN, &config("enforce", "      dlp: {github: block}", ""));
    let auth = format!("Authorization: token {GH_TOKEN}\r\n");
    let r = upload_in_parts(sluice.http, &origin.url("/api"), &auth, &[b"hello"]);
    assert_eq!(r.status, Some(403));
    assert_eq!(r.header("sluice-rule"), Some("inspect/dlp/github"));
    assert_eq!(
        origin.bytes.load(Ordering::SeqCst),
        0,
        "the origin got bytes"
    );
    let rec = sluice.wait_record("the blocked request", |r| r["rule"] == "inspect/dlp/github");
    assert_eq!(finding(&rec, "github")["count"], 1);
    sluice.assert_never_logged(GH_TOKEN);
    // Near misses pass: a token-like string with a wrong prefix.
    let near = "Authorization: token ghx_abcdefghijklmnopqrstuvwxyz0123456789\r\n";
    let r = upload_in_parts(sluice.http, &origin.url("/api"), near, &[b"hello"]);
    assert_eq!(r.status, Some(200));
}

#[test]
fn dlp_alert_and_log_pass_with_findings_and_custom_patterns() {
    let origin = CaptureOrigin::start(Vec::new());
    let top =
        "inspect:\n  dlp:\n    patterns:\n      - name: employee\n        regex: 'EMP-[0-9]{6}'";
    let sluice = Sluice::start(
        BIN,
        &config(
            "enforce",
            "      dlp: {jwt: alert, card: log, employee: alert}",
            top,
        ),
    );
    let body = format!("token={JWT}&card={CARD}&card2={CARD}&id=EMP-123456");
    let r = upload_in_parts(sluice.http, &origin.url("/form"), "", &[body.as_bytes()]);
    assert_eq!(r.status, Some(200), "{}", r.text());
    assert!(origin.saw(&body), "the origin did not get the whole body");
    let rec = sluice.wait_record("the passed upload", |r| r["method"] == "POST");
    assert_fields(&rec, &[("verdict", json!("allow"))]);
    assert_eq!(finding(&rec, "jwt")["count"], 1);
    assert_eq!(finding(&rec, "card")["count"], 2);
    assert_eq!(finding(&rec, "employee")["count"], 1);
    // Two detectors alerted; one source and destination fold into one
    // alert counted twice. `log` raises none.
    let count = || -> u64 {
        sluice
            .alerts("kind=dlp")
            .iter()
            .map(|a| a["count"].as_u64().unwrap_or(0))
            .sum()
    };
    assert!(
        poll_until(T, || count() >= 2),
        "no dlp alerts: {:?}",
        sluice.alerts("kind=dlp")
    );
    assert_eq!(count(), 2, "{:?}", sluice.alerts("kind=dlp"));
    sluice.assert_never_logged(JWT);
    sluice.assert_never_logged("4111 1111");
    assert!(sluice.metric("sluice_inspect_findings_total{type=\"card\"}") >= 2.0);
}

#[test]
fn report_zone_records_a_dlp_block_unenforced_and_lets_it_pass() {
    let origin = CaptureOrigin::start(Vec::new());
    let sluice = Sluice::start(BIN, &config("report", "      dlp: {aws: block}", ""));
    let body = format!("k={AWS_KEY}");
    let r = upload_in_parts(sluice.http, &origin.url("/r"), "", &[body.as_bytes()]);
    assert_eq!(r.status, Some(200));
    assert!(origin.saw(&body));
    let rec = sluice.wait_record("the report-mode upload", |r| r["method"] == "POST");
    assert_fields(
        &rec,
        &[
            ("verdict", json!("deny")),
            ("enforced", json!(false)),
            ("rule", json!("inspect/dlp/aws")),
        ],
    );
}

#[test]
fn a_large_upload_without_secrets_streams_in_bounded_memory() {
    let origin = CaptureOrigin::start(Vec::new());
    let sluice = Sluice::start(
        BIN,
        &config(
            "enforce",
            "      dlp: {aws: block, card: block, jwt: block, pem: block}",
            "",
        ),
    );
    let dir = TempDir::new("big");
    let file = dir.path("upload.bin");
    {
        let line =
            b"user=alice&note=The quick brown fox 1234 jumps over dGhlIGxhenkgZG9n 42 times;\n";
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let mut n = 0;
        while n < 64 << 20 {
            f.write_all(line).unwrap();
            n += line.len();
        }
    }
    let size = std::fs::metadata(&file).unwrap().len() as usize;
    let pid = sluice.child.id();
    let rss = move || -> usize {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
            * 1024
    };
    // A first upload warms the allocator and hyper's buffers up; the
    // second must not grow the process by anything like its size.
    let send = || {
        curl(&[
            "--max-time",
            "120",
            "-x",
            &sluice.proxy_url(),
            "--data-binary",
            &format!("@{}", file.display()),
            &origin.url("/big"),
        ])
    };
    assert_eq!(send().status, 200);
    let before = rss();
    let peak = Arc::new(AtomicUsize::new(before));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (p, d) = (peak.clone(), done.clone());
    let sampler = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !d.load(Ordering::SeqCst) && Instant::now() < deadline {
            p.fetch_max(rss(), Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let started = Instant::now();
    let c = send();
    let took = started.elapsed();
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    assert_eq!(c.status, 200, "{}", c.stderr);
    assert!(
        origin.bytes.load(Ordering::SeqCst) >= 2 * size,
        "the origin got less than the uploads"
    );
    let grew = peak.load(Ordering::SeqCst).saturating_sub(before);
    eprintln!(
        "64 MiB upload through DLP: {:.1} s, RSS {} MiB -> peak +{} MiB",
        took.as_secs_f64(),
        before >> 20,
        grew >> 20
    );
    assert!(
        grew < 16 << 20,
        "RSS grew by {} MiB for a 64 MiB upload",
        grew >> 20
    );
}

// === clamd ===

#[test]
fn clamd_blocks_infected_uploads_and_downloads_and_fails_closed_when_down() {
    let mut clamd = Clamd::start();
    let mut evil = vec![b'x'; 100 * 1024];
    evil.extend_from_slice(Clamd::MARKER.as_bytes());
    let origin = CaptureOrigin::start(evil.clone());
    let top = format!(
        "inspect:\n  clamd:\n    address: {}\n    timeout: 5s\n    max_size: 1MiB",
        clamd.address()
    );
    let sluice = Sluice::start(BIN, &config("enforce", "      malware: block", &top));

    // A clean upload passes whole.
    let r = upload_in_parts(sluice.http, &origin.url("/clean"), "", &[b"hello world"]);
    assert_eq!(r.status, Some(200), "{}", r.text());
    // An infected one is refused before the origin gets a request.
    let hits = origin.requests.load(Ordering::SeqCst);
    let r = upload_in_parts(sluice.http, &origin.url("/up"), "", &[&evil]);
    assert_eq!(r.status, Some(403), "{}", r.text());
    assert_eq!(r.header("sluice-rule"), Some("inspect/malware"));
    assert!(
        r.text().contains(Clamd::SIGNATURE)
            || r.header("sluice-reason")
                .unwrap_or("")
                .contains("Sluice.Test.Sig")
    );
    assert_eq!(
        origin.requests.load(Ordering::SeqCst),
        hits,
        "the infected upload reached the origin"
    );
    assert!(!origin.saw(Clamd::MARKER));
    let rec = sluice.wait_record("the infected upload", |r| r["rule"] == "inspect/malware");
    assert_eq!(finding(&rec, "malware")["count"], 1);
    // An infected download is replaced by the refusal.
    let c = curl(&["-x", &sluice.proxy_url(), &origin.url("/download")]);
    assert_eq!(c.status, 403);
    assert!(
        !c.body_text().contains(Clamd::MARKER),
        "the client got the infected file"
    );
    assert!(
        poll_until(T, || !sluice.alerts("kind=malware").is_empty()),
        "no malware alert"
    );

    // clamd down: inspected exchanges fail closed with 503.
    clamd.stop();
    let r = upload_in_parts(sluice.http, &origin.url("/clean"), "", &[b"hello again"]);
    assert_eq!(r.status, Some(503), "{}", r.text());
    assert_eq!(r.header("sluice-rule"), Some("inspect/malware"));
    let rec = sluice.wait_record("the unscanned upload", |r| {
        r["rule"] == "inspect/malware" && r["findings"].to_string().contains("unscanned")
    });
    assert_fields(&rec, &[("verdict", json!("deny"))]);
    let (_, ready) = sluice.readyz();
    assert_eq!(ready["scanners"][0]["scanner"], "clamd");
    assert_eq!(ready["scanners"][0]["state"], "down", "{ready:#}");
    assert!(sluice.metric("sluice_inspect_scans_total{scanner=\"clamd\",result=\"error\"}") >= 1.0);
    assert_eq!(
        sluice.metric("sluice_inspect_scanner_up{scanner=\"clamd\"}"),
        0.0
    );
}

#[test]
fn clamd_past_max_size_fails_open_recorded_unscanned() {
    let clamd = Clamd::start();
    let origin = CaptureOrigin::start(Vec::new());
    let top = format!(
        "inspect:\n  clamd:\n    address: {}\n    max_size: 1KiB",
        clamd.address()
    );
    let sluice = Sluice::start(
        BIN,
        &config("enforce", "      malware: block\n      fail: open", &top),
    );
    let body = vec![b'z'; 64 * 1024];
    let r = upload_in_parts(sluice.http, &origin.url("/big"), "", &[&body]);
    assert_eq!(r.status, Some(200), "{}", r.text());
    assert!(origin.bytes.load(Ordering::SeqCst) >= body.len());
    let rec = sluice.wait_record("the unscanned upload", |r| r["method"] == "POST");
    assert_fields(&rec, &[("verdict", json!("allow"))]);
    assert_eq!(finding(&rec, "unscanned")["count"], 1);
}

// === ICAP ===

#[test]
fn icap_reqmod_and_respmod_block_allow_preview_and_fail_closed() {
    let clamd = Clamd::start();
    let mut icap = CIcap::start(&clamd);
    let mut evil = vec![b'y'; 50 * 1024];
    evil.extend_from_slice(Clamd::MARKER.as_bytes());
    let origin = CaptureOrigin::start(evil.clone());
    let top = format!(
        "inspect:\n  icap:\n    reqmod: {}\n    respmod: {}\n    timeout: 5s\n    preview: 1KiB",
        icap.url("avscan"),
        icap.url("avscan")
    );
    let sluice = Sluice::start(BIN, &config("enforce", "      icap: true", &top));

    // Clean, within the preview (ieof) and past it (100 Continue): 204.
    let r = upload_in_parts(sluice.http, &origin.url("/small"), "", &[b"tiny and clean"]);
    assert_eq!(r.status, Some(200), "{}", r.text());
    let clean = vec![b'c'; 40 * 1024];
    let r = upload_in_parts(sluice.http, &origin.url("/large"), "", &[&clean]);
    assert_eq!(r.status, Some(200), "{}", r.text());
    assert!(origin.bytes.load(Ordering::SeqCst) >= clean.len());
    // REQMOD: the infected upload (past the preview) is refused.
    let hits = origin.requests.load(Ordering::SeqCst);
    let r = upload_in_parts(sluice.http, &origin.url("/up"), "", &[&evil]);
    assert_eq!(r.status, Some(403), "{} {:#?}", r.text(), sluice.records());
    assert_eq!(r.header("sluice-rule"), Some("inspect/icap"));
    assert_eq!(origin.requests.load(Ordering::SeqCst), hits);
    assert!(
        poll_until(T, || !sluice.alerts("kind=dlp").is_empty()),
        "no dlp alert for REQMOD"
    );
    // RESPMOD: the infected download is refused.
    let c = curl(&["-x", &sluice.proxy_url(), &origin.url("/download")]);
    assert_eq!(c.status, 403);
    assert_eq!(c.header("sluice-rule").as_deref(), Some("inspect/icap"));
    assert!(!c.body_text().contains(Clamd::MARKER));
    assert!(
        poll_until(T, || !sluice.alerts("kind=malware").is_empty()),
        "no malware alert for RESPMOD"
    );

    // The service down: fail closed.
    icap.stop();
    let r = upload_in_parts(sluice.http, &origin.url("/small"), "", &[b"tiny and clean"]);
    assert_eq!(r.status, Some(503), "{}", r.text());
    assert_eq!(r.header("sluice-rule"), Some("inspect/icap"));
}
