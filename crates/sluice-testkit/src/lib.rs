//! Dev-only helpers for end-to-end tests: start the real `sluice` binary on
//! port 0 with a configuration, read its flow records, and run small local
//! origins. Nothing here is used by the gateway itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    convert::Infallible,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates a unique directory.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "sluice-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `sluice run` process.
pub struct Sluice {
    /// The child process.
    pub child: Child,
    /// Where the HTTP proxy listens.
    pub http: SocketAddr,
    /// Where admin listens, if configured.
    pub admin: Option<SocketAddr>,
    /// Where the SOCKS5 proxy listens, if configured.
    pub socks5: Option<SocketAddr>,
    /// Where the transparent listener listens, if configured.
    pub transparent: Option<SocketAddr>,
    /// Where the DNS listener listens (UDP and TCP), if configured.
    pub dns: Option<SocketAddr>,
    /// The configuration file (rewrite it to test reloads).
    pub config: PathBuf,
    /// The flow log.
    pub flows: PathBuf,
    /// Everything the process wrote to stderr so far.
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// Keeps the directory alive.
    pub dir: TempDir,
}

impl Sluice {
    /// Starts `bin run -c <file>` with `yaml` plus, unless the text already
    /// has them, `listen:` on 127.0.0.1:0 and `log.flows` to a file.
    pub fn start(bin: &str, yaml: &str) -> Sluice {
        Self::start_in(&[], bin, yaml)
    }

    /// Like `start`, with the command run through `prefix` (e.g.
    /// `["ip", "netns", "exec", "NS"]` to start it in a network namespace).
    pub fn start_in(prefix: &[&str], bin: &str, yaml: &str) -> Sluice {
        let dir = TempDir::new("run");
        let flows = dir.path("flows.jsonl");
        let mut text = String::new();
        if !yaml.contains("listen:") {
            text.push_str("listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n");
        }
        if !yaml.contains("log:") {
            text.push_str(&format!("log:\n  flows: {}\n", flows.display()));
        }
        text.push_str(yaml);
        let config = dir.path("sluice.yaml");
        std::fs::write(&config, text).unwrap();
        Self::start_file(prefix, bin, &config, flows, dir)
    }

    fn start_file(
        prefix: &[&str],
        bin: &str,
        config: &Path,
        flows: PathBuf,
        dir: TempDir,
    ) -> Sluice {
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(["run", "-c"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sluice");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("sluice: HTTP proxy listening on ") {
                    let _ = tx.send(("http", a.to_owned()));
                }
                if let Some(a) = line.strip_prefix("sluice: SOCKS5 proxy listening on ") {
                    let _ = tx.send(("socks5", a.to_owned()));
                }
                if let Some(a) = line.strip_prefix("sluice: transparent listener on ") {
                    let _ = tx.send(("transparent", a.to_owned()));
                }
                if let Some(a) = line.strip_prefix("sluice: DNS listening on ") {
                    let _ = tx.send(("dns", a.to_owned()));
                }
                if let Some(a) = line.strip_prefix("sluice: admin listening on http://") {
                    let _ = tx.send(("admin", a.split('/').next().unwrap_or("").to_owned()));
                }
                if line.starts_with("sluice: policy ") {
                    let _ = tx.send(("ready", String::new()));
                }
                lines.lock().unwrap().push(line);
            }
        });
        let (mut http, mut admin, mut socks5, mut transparent) = (None, None, None, None);
        let mut dns = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(("http", a)) => http = Some(a.parse().unwrap()),
                Ok(("admin", a)) => admin = Some(a.parse().unwrap()),
                Ok(("socks5", a)) => socks5 = Some(a.parse().unwrap()),
                Ok(("transparent", a)) => transparent = Some(a.parse().unwrap()),
                Ok(("dns", a)) => dns = Some(a.parse().unwrap()),
                Ok(_) => break,
                Err(_) => panic!("sluice did not start: {:?}", stderr.lock().unwrap()),
            }
        }
        Sluice {
            child,
            http: http.expect("http address"),
            admin,
            socks5,
            transparent,
            dns,
            config: config.to_path_buf(),
            flows,
            stderr,
            dir,
        }
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Sends a signal by name (`HUP`, `USR1`, `TERM`, `INT`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Every flow record written so far.
    pub fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.flows)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("flow record is JSON"))
            .collect()
    }

    /// Waits (bounded) for the first record that `pred` accepts; panics
    /// naming `what` and listing the records when none comes.
    pub fn wait_record(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let recs = self.records();
            if let Some(r) = recs.iter().find(|r| pred(r)) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no flow record for {what}; records: {recs:#?}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until at least `n` records exist (records are written on close).
    pub fn wait_records(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.records();
            if r.len() >= n || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until a stderr line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    /// Waits for the process to exit and returns its code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A local HTTP origin on 127.0.0.1:0 (in its own thread and runtime).
/// `GET /bytes/N` answers N bytes; anything else answers a JSON echo of the
/// method, path, headers and body length.
pub struct Origin {
    /// Its address.
    pub addr: SocketAddr,
    /// Requests served.
    pub hits: Arc<AtomicUsize>,
    /// TCP connections accepted (for keep-alive pooling checks).
    pub conns: Arc<AtomicUsize>,
}

impl Origin {
    /// Starts an origin on `ip`:0.
    pub fn start(ip: &str) -> Origin {
        let std_listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(AtomicUsize::new(0));
        let (h, c) = (hits.clone(), conns.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((s, _)) = l.accept().await else {
                        continue;
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                    let h = h.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: Request<Incoming>| {
                            let h = h.clone();
                            async move {
                                h.fetch_add(1, Ordering::SeqCst);
                                Ok::<_, Infallible>(answer(req).await)
                            }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(s), svc)
                            .with_upgrades()
                            .await;
                    });
                }
            });
        });
        Origin { addr, hits, conns }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn answer(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        return Response::new(Full::new(Bytes::from(vec![b'x'; n])));
    }
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::from(v.to_str().unwrap_or("?")),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let v = serde_json::json!({"method": method, "uri": uri, "headers": headers, "body_len": body});
    Response::new(Full::new(Bytes::from(v.to_string())))
}

/// Runs `cmd` to completion with its output captured, killing it and
/// panicking if it takes longer than `timeout` (a hung client must fail the
/// test, not hang it). Standard input is closed.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> std::process::Output {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
            panic!("{cmd:?} did not finish within {timeout:?}; stderr: {err}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// A stub DNS server on 127.0.0.1 (UDP and TCP, same port) answering A and
/// AAAA queries from a name → addresses map with TTL 0, so nothing is cached
/// and answers may be changed between queries (`set`). Unknown names get
/// NXDOMAIN. Point Sluice at it with `dns: {upstreams: [ADDR]}`.
pub struct StubDns {
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    /// Name (lower-case, no trailing dot) → addresses.
    pub answers: Arc<Mutex<std::collections::HashMap<String, Vec<std::net::IpAddr>>>>,
    /// Queries answered, per name.
    pub queries: Arc<Mutex<std::collections::HashMap<String, usize>>>,
}

impl StubDns {
    /// Starts a server answering `names` (`("origin.test", &["127.0.0.1"])`).
    pub fn start(names: &[(&str, &[&str])]) -> StubDns {
        let answers: std::collections::HashMap<_, _> = names
            .iter()
            .map(|(n, ips)| {
                let ips = ips.iter().map(|i| i.parse().unwrap()).collect();
                (n.to_ascii_lowercase(), ips)
            })
            .collect();
        let answers = Arc::new(Mutex::new(answers));
        let queries = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let (a, q) = (answers.clone(), queries.clone());
        let addr = serve_dns(move |msg, _udp| dns_answer(msg, &a, &q));
        StubDns {
            addr,
            answers,
            queries,
        }
    }

    /// Replaces the addresses of `name`.
    pub fn set(&self, name: &str, ips: &[&str]) {
        let ips = ips.iter().map(|i| i.parse().unwrap()).collect();
        self.answers
            .lock()
            .unwrap()
            .insert(name.to_ascii_lowercase(), ips);
    }

    /// How many queries (any type) asked for `name`.
    pub fn queries_for(&self, name: &str) -> usize {
        self.queries
            .lock()
            .unwrap()
            .get(&name.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }
}

type DnsMap<V> = Arc<Mutex<std::collections::HashMap<String, V>>>;

/// One answer for one query message; None for anything unparseable.
fn dns_answer(
    q: &[u8],
    answers: &DnsMap<Vec<std::net::IpAddr>>,
    queries: &DnsMap<usize>,
) -> Option<Vec<u8>> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let l = usize::from(*q.get(i)?);
        i += 1;
        if l == 0 {
            break;
        }
        if l > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + l)?).to_ascii_lowercase());
        i += l;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    q.get(i + 3)?;
    i += 4;
    let name = labels.join(".");
    *queries.lock().unwrap().entry(name.clone()).or_default() += 1;
    let ips = answers.lock().unwrap().get(&name).cloned();
    let rdata: Vec<Vec<u8>> = ips
        .iter()
        .flatten()
        .filter_map(|ip| match (ip, qtype) {
            (std::net::IpAddr::V4(v4), 1) => Some(v4.octets().to_vec()),
            (std::net::IpAddr::V6(v6), 28) => Some(v6.octets().to_vec()),
            _ => None,
        })
        .collect();
    let rcode = if ips.is_none() { 3 } else { 0 };
    let mut r = Vec::with_capacity(512);
    r.extend_from_slice(&q[0..2]);
    r.push(0x84 | (q[2] & 0x01)); // response, authoritative, RD copied
    r.push(0x80 | rcode); // RA
    r.extend_from_slice(&[0, 1]);
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&q[12..i]);
    for d in rdata {
        r.extend_from_slice(&[0xc0, 0x0c]);
        r.extend_from_slice(&qtype.to_be_bytes());
        r.extend_from_slice(&[0, 1, 0, 0, 0, 0]); // class IN, TTL 0
        r.extend_from_slice(&(d.len() as u16).to_be_bytes());
        r.extend_from_slice(&d);
    }
    Some(r)
}

// === raw HTTP/1.1 exchanges, admin probes, custom config paths ===

/// One HTTP/1.1 response as read off a socket, without interpretation.
#[derive(Debug, Clone, Default)]
pub struct RawResponse {
    /// The status code; `None` when the peer closed (or went silent) before
    /// a complete status line and header block.
    pub status: Option<u16>,
    /// Header fields, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (by Content-Length, chunked, or up to the close).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response from `s`, leaving the stream positioned after it (so a
/// CONNECT tunnel or a keep-alive connection stays usable). `no_body` is for
/// answers to CONNECT and HEAD: a 2xx then carries no body. Reads are bounded
/// by the stream's read timeout (set one) and the head by 256 KiB.
pub fn read_response(s: &mut std::net::TcpStream, no_body: bool) -> RawResponse {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 256 * 1024 || !matches!(s.read(&mut byte), Ok(1)) {
            return RawResponse::default();
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse::<u16>().ok());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut r = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let code = status.unwrap_or(0);
    if (no_body && (200..300).contains(&code)) || code < 200 || code == 204 || code == 304 {
        return r;
    }
    if let Some(n) = r
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut body = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match s.read(&mut body[got..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => got += k,
            }
        }
        body.truncate(got);
        r.body = body;
    } else if r
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        r.body = read_chunked(s);
    } else {
        let _ = s.take(16 * 1024 * 1024).read_to_end(&mut r.body);
    }
    r
}

fn read_chunked(s: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        line.clear();
        while !line.ends_with(b"\r\n") {
            if line.len() > 1024 || !matches!(s.read(&mut byte), Ok(1)) {
                return out;
            }
            line.push(byte[0]);
        }
        let size = String::from_utf8_lossy(&line);
        let size = size.trim().split(';').next().unwrap_or("");
        let Ok(n) = usize::from_str_radix(size, 16) else {
            return out;
        };
        let mut chunk = vec![0u8; n + 2];
        if s.read_exact(&mut chunk).is_err() {
            return out;
        }
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Connects to `addr` with read and write timeouts of `timeout`.
pub fn connect_with_timeout(addr: SocketAddr, timeout: Duration) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect_timeout(&addr, timeout)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    s
}

/// Connects to `addr`, writes `request` as is, and reads one response (all
/// bounded by `timeout`). A write that fails because the peer already
/// answered and closed is not an error: the answer is still read.
pub fn send_raw(addr: SocketAddr, request: &[u8], timeout: Duration) -> RawResponse {
    use std::io::Write;
    let mut s = connect_with_timeout(addr, timeout);
    let _ = s.write_all(request);
    let no_body = request.starts_with(b"CONNECT ") || request.starts_with(b"HEAD ");
    read_response(&mut s, no_body)
}

/// Asks `proxy` for a CONNECT tunnel to `authority` (`host:port`). Returns
/// the open tunnel after a 200, or the refusal.
pub fn connect_tunnel(
    proxy: SocketAddr,
    authority: &str,
    timeout: Duration,
) -> Result<std::net::TcpStream, RawResponse> {
    use std::io::Write;
    let mut s = connect_with_timeout(proxy, timeout);
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    let _ = s.write_all(req.as_bytes());
    let r = read_response(&mut s, true);
    if r.status == Some(200) { Ok(s) } else { Err(r) }
}

/// Sends `GET path HTTP/1.1` with `Connection: close` on `s` (an open
/// tunnel or a direct connection) and reads the response.
pub fn get_on(s: &mut std::net::TcpStream, host: &str, path: &str) -> RawResponse {
    use std::io::Write;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return RawResponse::default();
    }
    read_response(s, false)
}

impl Sluice {
    /// Starts `bin run -c config` for a configuration file the caller wrote
    /// (e.g. behind symlinks); `flows` is where its `log.flows` points and
    /// `dir` is kept alive with the process.
    pub fn start_at(bin: &str, config: &Path, flows: PathBuf, dir: TempDir) -> Sluice {
        Self::start_file(&[], bin, config, flows, dir)
    }

    /// `GET path` on the admin listener (5 s bound).
    pub fn admin_get(&self, path: &str) -> RawResponse {
        let admin = self.admin.expect("admin listener configured");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        send_raw(admin, req.as_bytes(), Duration::from_secs(5))
    }

    /// `/readyz` as JSON, with its status code.
    pub fn readyz(&self) -> (Option<u16>, serde_json::Value) {
        let r = self.admin_get("/readyz");
        let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
        (r.status, v)
    }

    /// The value of one sample on `/metrics`, by its exact name and labels
    /// as exposed (`sluice_config_reloads_total{result="failure"}`); absent
    /// samples read as 0.
    pub fn metric(&self, sample: &str) -> f64 {
        let r = self.admin_get("/metrics");
        r.text()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                (k == sample).then(|| v.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Polls `f` every 25 ms until it is true or `timeout` passes; whether it
/// became true.
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A test CA and a server certificate for `sans` (an openssl
/// `subjectAltName` list such as `DNS:origin.test,IP:127.0.0.1`), made with
/// the `openssl` CLI in `dir`.
pub struct Certs {
    /// The CA certificate (PEM) clients trust.
    pub ca: PathBuf,
    /// The server certificate (PEM).
    pub cert: PathBuf,
    /// The server key (PEM).
    pub key: PathBuf,
}

/// Makes a CA and a server certificate for `sans` (see [`Certs`]).
pub fn make_certs(dir: &TempDir, sans: &str) -> Certs {
    let p = |n: &str| dir.path(n);
    let ext = p("ext.cnf");
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n\
             subjectKeyIdentifier=hash\n\
             authorityKeyIdentifier=keyid,issuer\n\
             subjectAltName={sans}\n"
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = output_within(Command::new("openssl").args(args), Duration::from_secs(30));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let s = |p: PathBuf| p.display().to_string();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Sluice Test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        &s(p("ca.key")),
        "-out",
        &s(p("ca.pem")),
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=origin.test",
        "-keyout",
        &s(p("server.key")),
        "-out",
        &s(p("server.csr")),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &s(p("server.csr")),
        "-CA",
        &s(p("ca.pem")),
        "-CAkey",
        &s(p("ca.key")),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &s(ext),
        "-out",
        &s(p("server.pem")),
    ]);
    Certs {
        ca: p("ca.pem"),
        cert: p("server.pem"),
        key: p("server.key"),
    }
}

// === a fixture DNS server with records, CNAME chains and truncation ===

/// A record of a [`FixtureDns`]: `("A", "93.184.216.34")`,
/// `("AAAA", "2606:2800::1")`, `("CNAME", "edge.cdn.test")`, `("TXT", "...")`.
pub type FixtureRecord = (&'static str, String);

/// A small authoritative-style DNS server on 127.0.0.1 (UDP and TCP, same
/// port) built on hickory-proto, for tests that need more than [`StubDns`]:
/// TTLs, CNAME chains (followed like a recursive resolver would),
/// TXT records, NXDOMAIN and NODATA with an SOA, and truncation of UDP
/// answers larger than the client's EDNS size (the client must retry over
/// TCP). Every name's records are replaceable while it runs.
pub struct FixtureDns {
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    zone: FixtureZone,
    queries: DnsMap<usize>,
    tcp_queries: Arc<AtomicUsize>,
}

impl FixtureDns {
    /// Starts an empty server.
    pub fn start() -> FixtureDns {
        let zone = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let queries: DnsMap<usize> = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let (z, q, t) = (zone.clone(), queries.clone(), tcp_queries.clone());
        let addr = serve_dns(move |msg, udp| {
            if !udp {
                t.fetch_add(1, Ordering::SeqCst);
            }
            fixture_answer(msg, &z, &q, udp)
        });
        FixtureDns {
            addr,
            zone,
            queries,
            tcp_queries,
        }
    }

    /// Replaces the records of `name` (each `(type, data)`) with TTL `ttl`.
    pub fn set(&self, name: &str, ttl: u32, records: &[(&str, &str)]) {
        let list = records
            .iter()
            .map(|(t, d)| (t.to_ascii_uppercase(), (*d).to_owned(), ttl))
            .collect();
        self.zone
            .lock()
            .unwrap()
            .insert(name.trim_end_matches('.').to_ascii_lowercase(), list);
    }

    /// How many queries (any type, UDP or TCP) asked for `name`.
    pub fn queries_for(&self, name: &str) -> usize {
        self.queries
            .lock()
            .unwrap()
            .get(&name.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// Queries that carried an EDNS Client Subnet option.
    pub fn ecs_seen(&self) -> usize {
        self.queries_for("#ecs")
    }

    /// Queries received over TCP.
    pub fn tcp_queries(&self) -> usize {
        self.tcp_queries.load(Ordering::SeqCst)
    }
}

/// A UDP address that never answers (a dead upstream), kept bound while
/// the returned socket lives.
pub fn silent_udp() -> (SocketAddr, std::net::UdpSocket) {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    (s.local_addr().unwrap(), s)
}

type FixtureZone = Arc<Mutex<std::collections::HashMap<String, Vec<(String, String, u32)>>>>;

fn fixture_answer(
    q: &[u8],
    zone: &FixtureZone,
    queries: &DnsMap<usize>,
    udp: bool,
) -> Option<Vec<u8>> {
    use hickory_proto::{
        op::{Edns, Message, MessageType, OpCode, ResponseCode},
        rr::{
            Name, RData, Record, RecordType,
            rdata::{A, AAAA, CNAME, SOA, TXT},
        },
    };
    let req = Message::from_vec(q).ok()?;
    let subnet = hickory_proto::rr::rdata::opt::EdnsCode::Subnet;
    if req
        .edns
        .as_ref()
        .is_some_and(|e| e.option(subnet).is_some())
    {
        *queries
            .lock()
            .unwrap()
            .entry("#ecs".to_owned())
            .or_default() += 1;
    }
    if req.metadata.message_type != MessageType::Query || req.queries.len() != 1 {
        return None;
    }
    let query = req.queries[0].clone();
    let qtype = query.query_type();
    let key = |n: &Name| n.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    *queries
        .lock()
        .unwrap()
        .entry(key(query.name()))
        .or_default() += 1;
    let mut resp = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_query(query.clone());
    if let Some(e) = &req.edns {
        let mut mine = Edns::new();
        mine.set_max_payload(e.max_payload().max(512));
        resp.set_edns(mine);
    }
    let zone = zone.lock().unwrap();
    let mut name = query.name().clone();
    let mut found = false;
    for _ in 0..10 {
        let Some(records) = zone.get(&key(&name)) else {
            break;
        };
        found = true;
        let cname = records.iter().find(|(t, _, _)| t == "CNAME");
        if let (Some((_, target, ttl)), false) = (cname, qtype == RecordType::CNAME) {
            let target = Name::from_ascii(format!("{}.", target.trim_end_matches('.'))).ok()?;
            resp.add_answer(Record::from_rdata(
                name.clone(),
                *ttl,
                RData::CNAME(CNAME(target.clone())),
            ));
            name = target;
            found = false;
            continue;
        }
        for (t, data, ttl) in records {
            let rdata = match (t.as_str(), qtype) {
                ("A", RecordType::A | RecordType::ANY) => RData::A(A(data.parse().ok()?)),
                ("AAAA", RecordType::AAAA | RecordType::ANY) => {
                    RData::AAAA(AAAA(data.parse().ok()?))
                }
                ("TXT", RecordType::TXT | RecordType::ANY) => {
                    // Long texts become several character-strings of 255.
                    let parts = data
                        .as_bytes()
                        .chunks(255)
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect();
                    RData::TXT(TXT::new(parts))
                }
                _ => continue,
            };
            resp.add_answer(Record::from_rdata(name.clone(), *ttl, rdata));
        }
        break;
    }
    if resp.answers.is_empty() || !found {
        if !found
            && resp
                .answers
                .iter()
                .all(|r| r.record_type() == RecordType::CNAME)
        {
            resp.metadata.response_code = if resp.answers.is_empty() {
                ResponseCode::NXDomain
            } else {
                ResponseCode::NoError
            };
        }
        let origin = Name::from_ascii("test.").ok()?;
        let soa = SOA::new(
            origin.clone(),
            Name::from_ascii("hostmaster.test.").ok()?,
            1,
            3600,
            600,
            86400,
            5,
        );
        resp.add_authority(Record::from_rdata(origin, 5, RData::SOA(soa)));
    }
    let mut out = resp.to_vec().ok()?;
    let limit = usize::from(req.edns.as_ref().map_or(512, |e| e.max_payload().max(512)));
    if udp && out.len() > limit {
        out = resp.truncate().to_vec().ok()?;
    }
    Some(out)
}

/// A client command (curl, python3, git, …) with every proxy variable
/// removed from its environment, so that only what a test sets decides how
/// it connects (curl and requests honour `NO_PROXY` even with an explicit
/// proxy).
pub fn client_command(program: &str) -> Command {
    let mut c = Command::new(program);
    for v in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
    ] {
        c.env_remove(v);
    }
    c
}

/// Serves DNS on 127.0.0.1 over UDP and TCP on one port, each message
/// answered by `answer(message, over_udp)` (`None`: no reply, and a TCP
/// connection is closed). Returns the address.
fn serve_dns(
    answer: impl Fn(&[u8], bool) -> Option<Vec<u8>> + Send + Sync + 'static,
) -> SocketAddr {
    // UDP and TCP on one port: retry until both binds succeed.
    let (udp, tcp) = loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        if let Ok(tcp) = std::net::TcpListener::bind(udp.local_addr().unwrap()) {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    let answer = Arc::new(answer);
    let on_udp = answer.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            if let Some(r) = on_udp(&buf[..n], true) {
                let _ = udp.send_to(&r, from);
            }
        }
    });
    std::thread::spawn(move || {
        for s in tcp.incoming() {
            let Ok(mut s) = s else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                loop {
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if s.read_exact(&mut msg).is_err() {
                        return;
                    }
                    let Some(r) = answer(&msg, false) else {
                        return;
                    };
                    let mut out = (r.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&r);
                    if s.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}
