//! `tunnels`: new tunnels per second. Each tunnel is a TCP connect (with
//! TCP_NODELAY) to the proxy, an HTTP `CONNECT` or a SOCKS5 handshake (or
//! neither, `direct`), one byte sent and read back from the echo origin
//! through the tunnel, close. Latency runs from connect start to the echoed
//! byte: until the tunnel is usable end to end. Set-up runs from connect
//! start to the proxy's answer (the `200` or the SOCKS5 reply; `direct`:
//! the TCP connect): the proxy's share, without the echo origin's. `concurrency` workers share
//! the budget of `count` tunnels and `duration`; a tunnel not usable within
//! 10 s is an error. Errors are counted, the first five kept as samples.
//!
//! With a `rate`, the load is open-loop and steady: tunnel k starts at
//! k / rate seconds (on whichever worker is free), so that the latency of
//! a light, constant load can be watched while something else loads the
//! proxy (bench/hol.sh); without one, every worker starts its next tunnel
//! as soon as the last one is done.
//!
//! With `keep` (and a `rate`), the mode measures established tunnels
//! instead: `keep` tunnels are opened first and held, then one byte is
//! echoed through them in turn, `rate` a second; latency is one echo's
//! round trip. A proxy that pins a connection to a thread stalls these
//! when that thread is busy with something else.
//!
//! The semantics and the JSON report are those of the Python client this
//! replaces (`client.py tunnels`), so bench/report.py reads either.

use std::{
    fmt, io,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use nix::sys::resource::{UsageWho, getrusage};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    task::JoinSet,
};

/// A tunnel not usable end to end within this is an error.
const TUNNEL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a CONNECT answer head.
const MAX_ANSWER: usize = 65536;
/// Error samples kept in the report.
const SAMPLES: usize = 5;

/// One run of the tunnels mode.
#[derive(Debug)]
pub struct Config {
    pub via: Via,
    pub target: Target,
    pub concurrency: usize,
    pub count: usize,
    pub duration: Duration,
    /// Tunnels started a second (open loop); `None`: as fast as the
    /// workers go.
    pub rate: Option<f64>,
    /// Hold this many tunnels open and echo through them at `rate`.
    pub keep: Option<usize>,
}

/// How a tunnel reaches the target.
#[derive(Debug, Clone, Copy)]
pub enum Via {
    /// Straight to the target (also the transparent bench: the gateway
    /// redirects the connection).
    Direct,
    /// An HTTP proxy: `CONNECT host:port`.
    Connect(SocketAddr),
    /// A SOCKS5 proxy, no authentication, the target as an IPv4 address.
    Socks5 { proxy: SocketAddr, ip: Ipv4Addr },
}

/// The echo origin, as named on the command line and as resolved.
#[derive(Debug)]
pub struct Target {
    /// The host as given: the `CONNECT` request names it.
    pub host: String,
    pub port: u16,
    pub addr: SocketAddr,
}

/// The JSON object printed on stdout; keys and meaning as `client.py
/// tunnels` had them.
#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: usize,
    pub errors: usize,
    pub error_samples: Vec<String>,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The slowest tunnel.
    pub max_ms: Option<f64>,
    /// Connect start to the proxy's answer (held mode: of the held tunnels).
    pub setup_p50_ms: Option<f64>,
    pub setup_p99_ms: Option<f64>,
    /// User + system CPU of this process over the run.
    pub client_cpu_s: f64,
}

/// Why one tunnel failed.
#[derive(Debug)]
enum TunnelError {
    Io {
        stage: &'static str,
        source: io::Error,
    },
    Closed(&'static str),
    OversizedAnswer,
    Refused(String),
    BytesAfterAnswer,
    SocksMethod([u8; 2]),
    SocksReply([u8; 10]),
    EchoMismatch,
    Timeout,
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    setups: Vec<Duration>,
    errors: usize,
    samples: Vec<(Instant, String)>,
}

// === impl TunnelError ===

impl fmt::Display for TunnelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { stage, source } => write!(f, "{stage}: {source}"),
            Self::Closed(when) => write!(f, "closed {when}"),
            Self::OversizedAnswer => write!(f, "CONNECT answer over {MAX_ANSWER} bytes"),
            Self::Refused(line) => write!(f, "CONNECT answered {line}"),
            Self::BytesAfterAnswer => write!(f, "bytes after the CONNECT answer"),
            Self::SocksMethod(m) => write!(f, "SOCKS5 method answer {}", hex(m)),
            Self::SocksReply(r) => write!(f, "SOCKS5 reply {}", hex(r)),
            Self::EchoMismatch => write!(f, "echo mismatch"),
            Self::Timeout => write!(f, "timeout: not usable within {TUNNEL_TIMEOUT:?}"),
        }
    }
}

fn io_at(stage: &'static str) -> impl FnOnce(io::Error) -> TunnelError {
    move |source| TunnelError::Io { stage, source }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the workers to the end of the budget and reports.
pub async fn run(config: Config) -> Report {
    let config = Arc::new(config);
    let issued = Arc::new(AtomicUsize::new(0));
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let deadline = started + config.duration;
    let mut workers = JoinSet::new();
    if let Some(keep) = config.keep {
        for i in 0..keep {
            workers.spawn(held(Arc::clone(&config), i, started, deadline));
        }
    } else {
        for _ in 0..config.concurrency {
            workers.spawn(worker(
                Arc::clone(&config),
                Arc::clone(&issued),
                started,
                deadline,
            ));
        }
    }
    let mut all = Tally::default();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(t) => {
                all.latencies.extend(t.latencies);
                all.setups.extend(t.setups);
                all.errors += t.errors;
                all.samples.extend(t.samples);
            }
            // A worker cannot panic on anything a peer sends; count it anyway.
            Err(e) => {
                all.errors += 1;
                all.samples.push((Instant::now(), format!("worker: {e}")));
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let client_cpu = cpu_seconds() - cpu_before;
    all.latencies.sort_unstable();
    all.setups.sort_unstable();
    all.samples.sort_by_key(|(at, _)| *at);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Report {
        ok: all.latencies.len(),
        errors: all.errors,
        error_samples: all
            .samples
            .into_iter()
            .take(SAMPLES)
            .map(|(_, s)| s)
            .collect(),
        seconds: round3(elapsed),
        per_second: all.latencies.len() as f64 / elapsed,
        p50_ms: percentile(&all.latencies, 50.0).map(ms),
        p99_ms: percentile(&all.latencies, 99.0).map(ms),
        max_ms: all.latencies.last().copied().map(ms),
        setup_p50_ms: percentile(&all.setups, 50.0).map(ms),
        setup_p99_ms: percentile(&all.setups, 99.0).map(ms),
        client_cpu_s: round3(client_cpu),
    }
}

async fn worker(
    config: Arc<Config>,
    issued: Arc<AtomicUsize>,
    started: Instant,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        let k = issued.fetch_add(1, Ordering::Relaxed);
        if Instant::now() >= deadline || k >= config.count {
            break;
        }
        if let Some(rate) = config.rate {
            let at = started + Duration::from_secs_f64(k as f64 / rate);
            if at >= deadline {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
        }
        let t0 = Instant::now();
        match tokio::time::timeout(TUNNEL_TIMEOUT, open(&config.via, &config.target)).await {
            Ok(Ok((stream, setup))) => {
                tally.latencies.push(t0.elapsed());
                tally.setups.push(setup);
                drop(stream);
            }
            Ok(Err(e)) => tally.error(e),
            Err(_) => tally.error(TunnelError::Timeout),
        }
    }
    tally
}

/// Tunnel `i` of `keep` held ones: opened at once, then one byte echoed
/// through it at its turns (`i`, `i + keep`, … of `rate` a second) until
/// the deadline or the first error.
async fn held(config: Arc<Config>, i: usize, started: Instant, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let keep = config.keep.unwrap_or(1).max(1);
    let opened = tokio::time::timeout(TUNNEL_TIMEOUT, open(&config.via, &config.target)).await;
    let mut s = match opened {
        Ok(Ok((s, setup))) => {
            tally.setups.push(setup);
            s
        }
        Ok(Err(e)) => {
            tally.error(e);
            return tally;
        }
        Err(_) => {
            tally.error(TunnelError::Timeout);
            return tally;
        }
    };
    for turn in (i..).step_by(keep) {
        if let Some(rate) = config.rate {
            let at = started + Duration::from_secs_f64(turn as f64 / rate);
            if at >= deadline {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
        } else if Instant::now() >= deadline {
            break;
        }
        let t0 = Instant::now();
        match tokio::time::timeout(TUNNEL_TIMEOUT, echo(&mut s)).await {
            Ok(Ok(())) => tally.latencies.push(t0.elapsed()),
            Ok(Err(e)) => {
                tally.error(e);
                break;
            }
            Err(_) => {
                tally.error(TunnelError::Timeout);
                break;
            }
        }
    }
    tally
}

// === impl Tally ===

impl Tally {
    fn error(&mut self, e: TunnelError) {
        self.errors += 1;
        if self.samples.len() < SAMPLES {
            self.samples.push((Instant::now(), e.to_string()));
        }
    }
}

/// One tunnel, usable end to end (the echo came back through it), and how
/// long its set-up took (connect start to the proxy's answer).
async fn open(via: &Via, target: &Target) -> Result<(TcpStream, Duration), TunnelError> {
    let t0 = Instant::now();
    let first_hop = match *via {
        Via::Direct => target.addr,
        Via::Connect(proxy) | Via::Socks5 { proxy, .. } => proxy,
    };
    let socket = if first_hop.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(io_at("socket"))?;
    socket.set_nodelay(true).map_err(io_at("TCP_NODELAY"))?;
    let mut s = socket.connect(first_hop).await.map_err(io_at("connect"))?;
    match *via {
        Via::Direct => {}
        Via::Connect(_) => http_connect(&mut s, target).await?,
        Via::Socks5 { ip, .. } => socks5_connect(&mut s, ip, target.port).await?,
    }
    let setup = t0.elapsed();
    echo(&mut s).await?;
    Ok((s, setup))
}

/// One byte through the tunnel and back.
async fn echo(s: &mut TcpStream) -> Result<(), TunnelError> {
    s.write_all(b"x").await.map_err(io_at("echo write"))?;
    let mut got = [0u8; 16];
    let n = s.read(&mut got).await.map_err(io_at("echo read"))?;
    match &got[..n] {
        [] => Err(TunnelError::Closed("before the echo")),
        b"x" => Ok(()),
        _ => Err(TunnelError::EchoMismatch),
    }
}

async fn http_connect(s: &mut TcpStream, target: &Target) -> Result<(), TunnelError> {
    let hp = format!("{}:{}", target.host, target.port);
    let request = format!("CONNECT {hp} HTTP/1.1\r\nHost: {hp}\r\n\r\n");
    s.write_all(request.as_bytes())
        .await
        .map_err(io_at("CONNECT write"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = head_end(&buf) {
            return check_answer(&buf, end);
        }
        let n = s.read(&mut chunk).await.map_err(io_at("CONNECT read"))?;
        if n == 0 {
            return Err(TunnelError::Closed("before answering CONNECT"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_ANSWER {
            return Err(TunnelError::OversizedAnswer);
        }
    }
}

/// Where the head of a CONNECT answer ends (after its blank line), if read.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The answer must be a 200 and nothing after its head: the tunnel's first
/// byte is the echo's.
fn check_answer(buf: &[u8], end: usize) -> Result<(), TunnelError> {
    let status = buf.splitn(3, |&c| c == b' ').nth(1);
    if status != Some(b"200") {
        let line = buf.split(|&c| c == b'\r').next().unwrap_or_default();
        return Err(TunnelError::Refused(
            String::from_utf8_lossy(line).into_owned(),
        ));
    }
    if end != buf.len() {
        return Err(TunnelError::BytesAfterAnswer);
    }
    Ok(())
}

async fn socks5_connect(s: &mut TcpStream, ip: Ipv4Addr, port: u16) -> Result<(), TunnelError> {
    let closed = |when| {
        move |e: io::Error| match e.kind() {
            io::ErrorKind::UnexpectedEof => TunnelError::Closed(when),
            _ => TunnelError::Io {
                stage: "SOCKS5 read",
                source: e,
            },
        }
    };
    // Greeting and request in one write each; the reply is exactly 10 bytes
    // for an IPv4 bound address.
    s.write_all(&[5, 1, 0])
        .await
        .map_err(io_at("SOCKS5 greeting"))?;
    let mut method = [0u8; 2];
    s.read_exact(&mut method)
        .await
        .map_err(closed("during the SOCKS5 method answer"))?;
    if method != [5, 0] {
        return Err(TunnelError::SocksMethod(method));
    }
    let mut request = [5, 1, 0, 1, 0, 0, 0, 0, 0, 0];
    request[4..8].copy_from_slice(&ip.octets());
    request[8..].copy_from_slice(&port.to_be_bytes());
    s.write_all(&request)
        .await
        .map_err(io_at("SOCKS5 request"))?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply)
        .await
        .map_err(closed("during the SOCKS5 reply"))?;
    if reply[..2] != [5, 0] || reply[3] != 1 {
        return Err(TunnelError::SocksReply(reply));
    }
    Ok(())
}

/// The p-th percentile of sorted values, the nearest-rank rule the Python
/// client used (`round` there rounds half to even).
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    let n = sorted.len();
    let rank = (p / 100.0 * n as f64 + 0.5).round_ties_even() as usize;
    let i = rank.saturating_sub(1).min(n.checked_sub(1)?);
    sorted.get(i).copied()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// User + system CPU seconds of this process so far; 0 if unavailable (the
/// report then understates the client, which is noticed by its zero).
fn cpu_seconds() -> f64 {
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        secs(u.user_time()) + secs(u.system_time())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_the_python_client() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&x| Duration::from_millis(x))
                .collect::<Vec<_>>()
        };
        assert_eq!(percentile(&[], 50.0), None);
        let one = ms(&[7]);
        assert_eq!(percentile(&one, 50.0), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&one, 99.0), Some(Duration::from_millis(7)));
        // n = 4: 50 -> round(2.5) = 2 (half to even) -> index 1.
        let four = ms(&[1, 2, 3, 4]);
        assert_eq!(percentile(&four, 50.0), Some(Duration::from_millis(2)));
        assert_eq!(percentile(&four, 99.0), Some(Duration::from_millis(4)));
        // n = 300: 50 -> round(150.5) = 150 -> index 149; 99 -> 297.5 -> 298 -> 297.
        let many: Vec<_> = (0..300).map(Duration::from_millis).collect();
        assert_eq!(percentile(&many, 50.0), Some(Duration::from_millis(149)));
        assert_eq!(percentile(&many, 99.0), Some(Duration::from_millis(297)));
    }

    #[test]
    fn connect_answers() {
        let ok = b"HTTP/1.1 200 Connection established\r\n\r\n";
        assert_eq!(head_end(ok), Some(ok.len()));
        assert!(check_answer(ok, ok.len()).is_ok());
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n"), None);

        let extra = b"HTTP/1.1 200 OK\r\n\r\nx";
        let end = head_end(extra).unwrap();
        assert!(matches!(
            check_answer(extra, end),
            Err(TunnelError::BytesAfterAnswer)
        ));

        let denied = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        let err = check_answer(denied, denied.len()).unwrap_err();
        assert_eq!(err.to_string(), "CONNECT answered HTTP/1.1 403 Forbidden");

        let bare = b"HTTP/1.1 200\r\n\r\n";
        assert!(
            check_answer(bare, bare.len()).is_err(),
            "status token is `200\\r\\n\\r\\n`"
        );
    }

    /// Tunnels straight to a fresh echo origin on port 0.
    async fn through_echo(
        concurrency: usize,
        count: usize,
        duration: Duration,
        rate: Option<f64>,
        keep: Option<usize>,
    ) -> Report {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(crate::echo::serve(listener));
        run(Config {
            via: Via::Direct,
            target: Target {
                host: "127.0.0.1".into(),
                port: addr.port(),
                addr,
            },
            concurrency,
            count,
            duration,
            rate,
            keep,
        })
        .await
    }

    /// Direct tunnels against the echo origin, end to end on port 0.
    #[tokio::test]
    async fn direct_tunnels_through_the_echo_origin() {
        let report = through_echo(4, 50, Duration::from_secs(10), None, None).await;
        assert_eq!((report.ok, report.errors), (50, 0), "{report:?}");
        assert!(report.p50_ms.is_some() && report.p99_ms >= report.p50_ms);
        assert!(report.max_ms >= report.p99_ms);
        assert!(report.setup_p50_ms.is_some() && report.setup_p99_ms >= report.setup_p50_ms);
        // Set-up is part of each tunnel's latency.
        assert!(report.setup_p99_ms <= report.max_ms, "{report:?}");
        let json = serde_json::to_value(&report).unwrap();
        for key in [
            "ok",
            "errors",
            "error_samples",
            "seconds",
            "per_second",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "setup_p50_ms",
            "setup_p99_ms",
            "client_cpu_s",
        ] {
            assert!(json.get(key).is_some(), "{key} missing in {json}");
        }
    }

    /// At a rate, tunnels start on schedule: 20 at 100 a second take
    /// about 0.2 s, not the few milliseconds the workers alone would.
    #[tokio::test]
    async fn a_rate_paces_the_tunnels() {
        let report = through_echo(4, 20, Duration::from_secs(10), Some(100.0), None).await;
        assert_eq!((report.ok, report.errors), (20, 0), "{report:?}");
        assert!(report.seconds >= 0.18 && report.seconds < 5.0, "{report:?}");
    }

    /// Held tunnels: 4 opened, then echoes through them in turn at 200 a
    /// second for 0.3 s (about 60 of them), each an echo's round trip.
    #[tokio::test]
    async fn held_tunnels_echo_at_the_rate() {
        let report = through_echo(
            1,
            usize::MAX,
            Duration::from_millis(300),
            Some(200.0),
            Some(4),
        )
        .await;
        assert_eq!(report.errors, 0, "{report:?}");
        // About 60; fewer on a loaded machine, never more than the rate allows.
        assert!((20..=61).contains(&report.ok), "{report:?}");
    }

    /// Set-up ends at the proxy's answer: a proxy that answers at once and
    /// echoes 150 ms later shows a short set-up and a long latency.
    #[tokio::test]
    async fn set_up_ends_at_the_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let mut head = Vec::new();
                    while head_end(&head).is_none() {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        head.extend_from_slice(&buf[..n]);
                    }
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    let _ = s.write_all(&buf[..n]).await;
                });
            }
        });
        let report = run(Config {
            via: Via::Connect(addr),
            target: Target {
                host: "echo.test".into(),
                port: 7,
                addr,
            },
            concurrency: 2,
            count: 4,
            duration: Duration::from_secs(10),
            rate: None,
            keep: None,
        })
        .await;
        assert_eq!((report.ok, report.errors), (4, 0), "{report:?}");
        assert!(report.p50_ms.unwrap() >= 150.0, "{report:?}");
        assert!(report.setup_p99_ms.unwrap() < 100.0, "{report:?}");
    }

    #[tokio::test]
    async fn refused_connections_are_counted_with_samples() {
        // Bound and dropped: nothing listens there any more.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let report = run(Config {
            via: Via::Connect(addr),
            target: Target {
                host: "127.0.0.1".into(),
                port: 9,
                addr,
            },
            concurrency: 2,
            count: 8,
            duration: Duration::from_secs(10),
            rate: None,
            keep: None,
        })
        .await;
        assert_eq!((report.ok, report.errors), (0, 8));
        assert_eq!(report.error_samples.len(), SAMPLES);
        assert!(
            report.error_samples[0].starts_with("connect: "),
            "{report:?}"
        );
        assert_eq!((report.p50_ms, report.p99_ms), (None, None));
        assert_eq!((report.setup_p50_ms, report.setup_p99_ms), (None, None));
    }
}
