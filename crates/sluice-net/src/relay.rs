//! The relay stage: copy bytes both ways between a client and a destination,
//! counting them, until both sides finish, the tunnel idles out, or the
//! caller stops it (drain deadline).
//!
//! Why not `tokio::io::copy_bidirectional`: it keeps two 8 KiB buffers per
//! tunnel for the tunnel's whole life. Here a direction waits for readiness
//! with no buffer, then borrows a 32 KiB buffer only while data is moving
//! and frees it when the socket would block. Once a direction shows bulk
//! traffic (one read fills the whole buffer) it switches, on Linux, to
//! `splice(2)` through a pipe of its own (`crate::splice`): no copy through
//! user space and no buffer at all. Interactive and idle tunnels never make
//! a pipe, so they hold no extra descriptors.
//!
//! Measured with `cargo run --release -p sluice-net --example relay_compare`
//! (1 GiB over loopback, 2,000 idle tunnels, 2-core Xeon VM, two runs):
//! splice 3,978 / 3,461 MiB/s (1.03 / 0.76 of direct), this relay's copy
//! path 2,374 / 2,447, copy_bidirectional 1,707 / 2,113; RSS per idle tunnel
//! 4.6 KiB for this relay (splice or not: idle tunnels never switch, and the
//! splice state is boxed so it does not enlarge their futures; 5.2 KiB
//! inline) against 21.1 KiB for copy_bidirectional (both figures include the
//! test's own socket ends).

use std::{
    future::Future,
    io,
    sync::atomic::{AtomicU8, AtomicU64, Ordering},
    task::Poll,
    time::{Duration, Instant},
};

use sluice_observe::ErrorKind;

use crate::{
    inspect::Inspection,
    tls::{Hello, MAX_HELLO, parse_client_hello},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

const BUF: usize = 32 * 1024;

/// Byte counts and how a tunnel ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Relayed {
    /// Client → destination.
    pub bytes_out: u64,
    /// Destination → client.
    pub bytes_in: u64,
    /// Why it ended, if not by both sides closing.
    pub error: Option<String>,
    /// Which side that was.
    pub error_kind: Option<ErrorKind>,
    /// The SNI of the client's ClientHello, when checked.
    pub sni: Option<String>,
    /// The rule and reason of the hello check's refusal.
    pub denied: Option<(std::sync::Arc<str>, String)>,
    /// Whether the client's first bytes were a TLS ClientHello (`None`:
    /// not looked at, without a check).
    pub tls: Option<bool>,
}

/// Bytes already read from either side before the relay began (a
/// hyper read-ahead, a peeked request): they are delivered first.
#[derive(Debug, Clone, Copy, Default)]
pub struct Preread<'a> {
    /// Client bytes, for the destination.
    pub out: &'a [u8],
    /// Destination bytes, for the client.
    pub inn: &'a [u8],
}

/// The relay's clocks.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A tunnel with no byte either way for this long ends.
    pub idle: Duration,
    /// How long the first client bytes may take to form a ClientHello.
    pub hello: Duration,
}

/// Counters shared with the caller, readable while the tunnel runs.
#[derive(Debug, Default)]
pub struct Counters {
    /// Client → destination.
    pub out: AtomicU64,
    /// Destination → client.
    pub inn: AtomicU64,
    /// Milliseconds since the relay started at the last byte moved.
    last: AtomicU64,
}

/// Interim reports of a long tunnel: every `every`, `report` gets the
/// bytes moved so far each way (client → destination, destination →
/// client) and the SNI, once the hello check saw one. The relay does no
/// per-read work for it: a timer of its own reads the counters the
/// directions already keep.
pub struct Interim<'a> {
    /// How often.
    pub every: Duration,
    /// Called with the running totals and the SNI; must not block.
    pub report: &'a mut (dyn FnMut(u64, u64, Option<&str>) + Send),
}

/// A check on the first client bytes of a tunnel (the inspectors): it gets
/// the parsed ClientHello and may refuse the tunnel with a rule and reason.
pub type HelloCheck = Box<dyn FnOnce(&Hello) -> Inspection + Send>;

/// Relays until both directions end, `idle` passes without traffic, or
/// `stop` completes. `pre` holds bytes already read from either side (they
/// are delivered first). With `check`, the client's first bytes are read up
/// to a complete ClientHello (bounded by size and `timeouts.hello`) and
/// judged before anything is forwarded; the destination's bytes flow
/// meanwhile, so server-speaks-first protocols are not delayed.
pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    pre: Preread<'_>,
    check: Option<HelloCheck>,
    timeouts: Timeouts,
    stop: impl Future<Output = ()>,
) -> Relayed {
    relay_with(client, upstream, pre, check, timeouts, stop, None).await
}

/// [`relay`], with `interim` reports of the running byte counts while the
/// tunnel lasts.
pub async fn relay_with(
    client: TcpStream,
    upstream: TcpStream,
    pre: Preread<'_>,
    check: Option<HelloCheck>,
    timeouts: Timeouts,
    stop: impl Future<Output = ()>,
    interim: Option<Interim<'_>>,
) -> Relayed {
    let Timeouts {
        idle,
        hello: hello_timeout,
    } = timeouts;
    let counters = Counters::default();
    let started = Instant::now();
    let (mut cr, mut cw) = client.into_split();
    let (ur, mut uw) = upstream.into_split();
    let mut result = Relayed::default();
    let sni = std::sync::Mutex::new(None);
    let tls = std::sync::Mutex::new(None);
    let ends = Ends::default();
    // The directions end (and drop their borrows of the write halves)
    // before the halves are forgotten below.
    let ended = {
        // Both directions are pinned here, in this future, and `both` below
        // polls them through references: moved into `both` and pinned there,
        // each was stored twice (its captured and its pinned copy), 864 bytes
        // more in every tunnel's future, idle ones included.
        let up = std::pin::pin!(async {
            let mut first = pre.out.to_vec();
            if let Some(check) = check {
                let hello = read_hello(&mut cr, &mut first, hello_timeout).await;
                judge_hello(&hello, check, &tls, &sni)?;
            }
            deliver(&mut uw, &first, &counters.out, &counters, started)
                .await
                .map_err(|e| {
                    Stop::Io(format!("destination side: {e}"), ErrorKind::UpstreamClosed)
                })?;
            // Free the peeked bytes now rather than at the tunnel's end.
            drop(first);
            // A failed read is the client's, a failed write the destination's.
            pump(cr, &mut uw, &counters.out, &counters, &ends, started)
                .await
                .map_err(|e| e.stop(CLIENT, DESTINATION))
        });
        let down = std::pin::pin!(async {
            deliver(&mut cw, pre.inn, &counters.inn, &counters, started)
                .await
                .map_err(|e| Stop::Io(format!("client side: {e}"), ErrorKind::Client))?;
            pump(ur, &mut cw, &counters.inn, &counters, &ends, started)
                .await
                .map_err(|e| e.stop(DESTINATION, CLIENT))
        });
        // Either side failing (or the hello check refusing) ends the tunnel at
        // once; a clean end of one side waits for the other.
        let both = async {
            let (mut up, mut down) = (up, down);
            let (mut up_done, mut down_done) = (false, false);
            while !(up_done && down_done) {
                tokio::select! {
                    r = &mut up, if !up_done => { r?; up_done = true; }
                    r = &mut down, if !down_done => { r?; down_done = true; }
                }
            }
            Ok::<(), Stop>(())
        };
        tokio::select! {
            r = both => r.err(),
            () = idle_for(&counters, started, idle) => Some(Stop::Io(
                format!("idle for {}s", idle.as_secs()),
                ErrorKind::Timeout,
            )),
            () = stop => Some(Stop::Io("stopped: drain timeout".to_owned(), ErrorKind::Internal)),
            () = report_every(&counters, &sni, interim) => None,
        }
    };
    if ended.is_none() {
        // Both sides ended cleanly, the last one without a `shutdown`
        // (`Ends`): the descriptors' close sends its FIN. `forget` keeps the
        // write halves from shutting down on drop as well.
        cw.forget();
        uw.forget();
    }
    match ended {
        None => {}
        Some(Stop::Denied(rule, reason)) => result.denied = Some((rule, reason)),
        Some(Stop::Io(e, kind)) => {
            result.error = Some(e);
            result.error_kind = Some(kind);
        }
    }
    result.bytes_out = counters.out.load(Ordering::Relaxed);
    result.bytes_in = counters.inn.load(Ordering::Relaxed);
    result.sni = sni.lock().ok().and_then(|mut s| s.take());
    result.tls = tls.lock().ok().and_then(|mut t| t.take());
    result
}

/// Notes what the client's first bytes were (TLS or not, the SNI) and
/// asks the hello check whether the tunnel may go on.
fn judge_hello(
    hello: &Hello,
    check: HelloCheck,
    tls: &std::sync::Mutex<Option<bool>>,
    sni: &std::sync::Mutex<Option<String>>,
) -> Result<(), Stop> {
    if let Ok(mut t) = tls.lock() {
        *t = Some(matches!(hello, Hello::ClientHello { .. }));
    }
    if let Hello::ClientHello { sni: Some(name) } = hello {
        if let Ok(mut s) = sni.lock() {
            *s = Some(name.clone());
        }
    }
    match check(hello) {
        Inspection::Pass | Inspection::Intercept { .. } => Ok(()),
        Inspection::Deny { rule, reason } | Inspection::Unavailable { rule, reason } => {
            Err(Stop::Denied(rule, reason))
        }
    }
}

enum Stop {
    Denied(std::sync::Arc<str>, String),
    Io(String, ErrorKind),
}

/// A socket of the tunnel, as errors name it.
type End = (&'static str, ErrorKind);
const CLIENT: End = ("client side", ErrorKind::Client);
const DESTINATION: End = ("destination side", ErrorKind::UpstreamClosed);

/// Which half of one direction failed: the socket read from, or the one
/// written to. Errors name the socket that failed, not the direction.
#[derive(Debug)]
pub(crate) enum PumpError {
    /// Reading the source failed.
    Read(io::Error),
    /// Writing the sink failed.
    Write(io::Error),
}

impl PumpError {
    fn stop(self, source: End, sink: End) -> Stop {
        let ((side, kind), e) = match self {
            PumpError::Read(e) => (source, e),
            PumpError::Write(e) => (sink, e),
        };
        Stop::Io(format!("{side}: {e}"), kind)
    }
}

/// Writes bytes read before the relay began, counting them.
async fn deliver(
    w: &mut OwnedWriteHalf,
    bytes: &[u8],
    count: &AtomicU64,
    counters: &Counters,
    started: Instant,
) -> io::Result<()> {
    if !bytes.is_empty() {
        w.write_all(bytes).await?;
        count.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        counters.touch(started);
    }
    Ok(())
}

/// Calls `interim`'s report every interval with the counters' totals;
/// never resolves (without `interim`, it only waits).
async fn report_every(
    counters: &Counters,
    sni: &std::sync::Mutex<Option<String>>,
    interim: Option<Interim<'_>>,
) {
    let Some(Interim { every, report }) = interim else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let name = sni.lock().ok().and_then(|s| s.clone());
        report(
            counters.out.load(Ordering::Relaxed),
            counters.inn.load(Ordering::Relaxed),
            name.as_deref(),
        );
    }
}

/// Resolves once no byte has moved either way for `idle`.
async fn idle_for(counters: &Counters, started: Instant, idle: Duration) {
    loop {
        let last = Duration::from_millis(counters.last.load(Ordering::Relaxed));
        let since = started.elapsed().saturating_sub(last);
        if since >= idle {
            return;
        }
        tokio::time::sleep(idle - since).await;
    }
}

/// Reads client bytes into `buf` until they hold a complete ClientHello,
/// something that is not TLS, or the bounds are hit.
pub(crate) async fn read_hello<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Hello {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match parse_client_hello(buf) {
            Hello::Incomplete(need)
                if need <= MAX_HELLO + 5 * 8 && buf.len() < MAX_HELLO + 5 * 8 => {}
            Hello::Incomplete(_) => return Hello::Malformed("ClientHello larger than 16 KiB"),
            done => return done,
        }
        // Read straight into `buf`: a stack chunk here would sit in every
        // tunnel's future for the tunnel's whole life.
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, r.read_buf(buf)).await {
            Ok(Ok(0)) => return Hello::Malformed("client closed before a complete ClientHello"),
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Hello::Malformed("read error before a complete ClientHello"),
            Err(_) => {
                return if buf.is_empty() {
                    Hello::NotTls
                } else {
                    Hello::Malformed("ClientHello incomplete at timeout")
                };
            }
        }
    }
}

/// How many directions of a tunnel have seen their source's end. The
/// first to end shuts its sink down (the half-close goes on to the other
/// side, which may still answer); the second does not: the relay ends with
/// it and closing the sockets sends the FIN, one `shutdown(2)` fewer per
/// tunnel (`strace -c`, bench/README.md).
#[derive(Debug, Default)]
pub(crate) struct Ends(AtomicU8);

impl Ends {
    /// Counts one direction's end; whether its sink needs a `shutdown`.
    pub(crate) fn ended_first(&self) -> bool {
        self.0.fetch_add(1, Ordering::AcqRel) == 0
    }
}

impl Counters {
    pub(crate) fn touch(&self, started: Instant) {
        self.last
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// One read into `buf`'s spare room if the socket has data now; `None`
/// when it would block. Through `AsyncRead` rather than `try_read_buf`:
/// tokio's `poll_read` clears the socket's readiness after a read that did
/// not fill the buffer (with edge-triggered epoll the receive queue was
/// drained), so the next wait goes to epoll at once instead of through a
/// read that fails with EAGAIN: one `recvfrom` fewer per tunnel (`strace
/// -c`, bench/README.md).
async fn read_now(r: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> Option<io::Result<usize>> {
    let mut read = std::pin::pin!(r.read_buf(buf));
    std::future::poll_fn(|cx| {
        Poll::Ready(match read.as_mut().poll(cx) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        })
    })
    .await
}

async fn pump(
    mut r: OwnedReadHalf,
    w: &mut OwnedWriteHalf,
    count: &AtomicU64,
    counters: &Counters,
    ends: &Ends,
    started: Instant,
) -> Result<(), PumpError> {
    #[cfg(target_os = "linux")]
    let mut tried_splice = false;
    loop {
        r.readable().await.map_err(PumpError::Read)?;
        // Allocated only while data moves (not zeroed: `read_buf` fills
        // spare capacity); freed when the socket would block.
        let mut buf: Vec<u8> = Vec::with_capacity(BUF);
        loop {
            buf.clear();
            let Some(read) = read_now(&mut r, &mut buf).await else {
                break;
            };
            match read {
                Ok(0) => {
                    if ends.ended_first() {
                        let _ = w.shutdown().await;
                    }
                    return Ok(());
                }
                Ok(n) => {
                    w.write_all(&buf[..n]).await.map_err(PumpError::Write)?;
                    count.fetch_add(n as u64, Ordering::Relaxed);
                    counters.touch(started);
                    // A read that filled the whole buffer is bulk traffic:
                    // move the rest of this direction with splice(2).
                    #[cfg(target_os = "linux")]
                    if n == BUF && !tried_splice {
                        tried_splice = true;
                        if let Some(pipe) = crate::splice::pipe() {
                            drop(buf);
                            // Boxed: inline, its state would make every
                            // tunnel's future larger, idle ones included.
                            return Box::pin(crate::splice::pump(
                                pipe, &r, w, count, counters, ends, started,
                            ))
                            .await;
                        }
                    }
                }
                Err(e) => return Err(PumpError::Read(e)),
            }
        }
    }
}
