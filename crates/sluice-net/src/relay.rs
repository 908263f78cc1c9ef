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
//! test's own socket ends). That was the `async` relay; [`Relay`], one
//! hand-written future, keeps 384 bytes per tunnel (bench/README.md,
//! "Fifth round").

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use sluice_observe::ErrorKind;

use crate::{
    inspect::Inspection,
    tls::{Hello, MAX_HELLO, parse_client_hello},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    net::TcpStream,
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

/// Interim reports of a long tunnel: every `every`, `report` gets the
/// bytes moved so far each way (client → destination, destination →
/// client) and the SNI, once the hello check saw one. The relay does no
/// per-read work for it: its one timer (the idle deadline's) reads the
/// counters the directions already keep.
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
pub fn relay<'a, S>(
    client: TcpStream,
    upstream: TcpStream,
    pre: Preread<'a>,
    check: Option<HelloCheck>,
    timeouts: Timeouts,
    stop: S,
) -> Relay<'a, S>
where
    S: Future<Output = ()> + Unpin,
{
    relay_with(client, upstream, pre, check, timeouts, stop, None)
}

/// [`relay`], with `interim` reports of the running byte counts while the
/// tunnel lasts.
pub fn relay_with<'a, S>(
    client: TcpStream,
    upstream: TcpStream,
    pre: Preread<'a>,
    check: Option<HelloCheck>,
    timeouts: Timeouts,
    stop: S,
    interim: Option<Interim<'a>>,
) -> Relay<'a, S>
where
    S: Future<Output = ()> + Unpin,
{
    let up = match check {
        // The hello is read after the bytes the caller already has.
        Some(_) => State::Hello(pre.out.to_vec()),
        None => State::Pre(0),
    };
    Relay {
        client,
        upstream,
        up: Dir::new(up, pre.out, true),
        down: Dir::new(State::Pre(0), pre.inn, false),
        stop,
        interim,
        timer: None,
        started: None,
        next_report: None,
        idle: timeouts.idle,
        hello: timeouts.hello,
        shared: Shared {
            check,
            last: None,
            ends: 0,
            hello_expired: false,
            sni: None,
            tls: None,
        },
    }
}

/// A tunnel being relayed: the future [`relay`] returns.
///
/// Why a hand-written future, not two `async` directions under `select!`:
/// an idle tunnel is this struct and nothing else. The `async` version
/// stored every direction's read, write, splice and readiness futures
/// side by side with the select's and the timers' (1,776 bytes, `rustc
/// -Zprint-type-sizes`), in every tunnel, idle ones included; here a
/// direction is a small state ([`State`]) and both sides' timers share one
/// boxed `Sleep`, reset only when it fires.
pub struct Relay<'a, S> {
    client: TcpStream,
    upstream: TcpStream,
    /// Client → destination.
    up: Dir<'a>,
    /// Destination → client.
    down: Dir<'a>,
    stop: S,
    interim: Option<Interim<'a>>,
    /// The one timer: the idle deadline, the hello's, the next interim
    /// report, whichever comes first. Made on the first poll (a runtime is
    /// needed).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the relay was first polled.
    started: Option<tokio::time::Instant>,
    /// When the next interim report is due.
    next_report: Option<tokio::time::Instant>,
    idle: Duration,
    hello: Duration,
    shared: Shared,
}

/// What both directions of a tunnel share.
struct Shared {
    check: Option<HelloCheck>,
    /// When a byte last moved either way (`None`: none yet; the relay's
    /// start counts).
    last: Option<tokio::time::Instant>,
    /// How many directions have seen their source's end. The first to end
    /// shuts its sink down (the half-close goes on to the other side, which
    /// may still answer); the second does not: the relay ends with it and
    /// closing the sockets sends the FIN, one `shutdown(2)` fewer per tunnel
    /// (`strace -c`, bench/README.md).
    ends: u8,
    /// The hello's time is up: the client's first bytes are judged as they
    /// are.
    hello_expired: bool,
    sni: Option<String>,
    tls: Option<bool>,
}

/// One direction of a tunnel.
struct Dir<'a> {
    state: State,
    /// Bytes read before the relay began, delivered first.
    pre: &'a [u8],
    /// Bytes written to the sink.
    count: u64,
    /// Client → destination (errors name the sides by it).
    upward: bool,
    /// Whether this direction has tried to switch to splice(2).
    #[cfg(target_os = "linux")]
    tried_splice: bool,
}

enum State {
    /// Writing `pre` from this offset.
    Pre(usize),
    /// Reading the client's first bytes up to a complete ClientHello.
    Hello(Vec<u8>),
    /// Waiting for the source. The copy buffer is held only while data
    /// keeps coming (empty, with no capacity, when the socket would block).
    Read(Vec<u8>),
    /// Writing a read's bytes from this offset.
    Write(Vec<u8>, usize),
    /// Bulk traffic, through a pipe (boxed: idle tunnels never get here).
    #[cfg(target_os = "linux")]
    Splice(Box<crate::splice::Splicing>),
    Done,
}

impl<'a> Dir<'a> {
    fn new(state: State, pre: &'a [u8], upward: bool) -> Self {
        Dir {
            state,
            pre,
            count: 0,
            upward,
            #[cfg(target_os = "linux")]
            tried_splice: false,
        }
    }

    fn done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Moves this direction on as far as it can go now: `Ready(Ok)` once
    /// the source ended and its end went on, `Ready(Err)` when the tunnel
    /// must end.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut TcpStream,
        dst: &mut TcpStream,
        shared: &mut Shared,
    ) -> Poll<Result<(), Stop>> {
        let upward = self.upward;
        // A failure of this direction, naming the socket that failed.
        let fail = |e: PumpError| {
            if upward {
                e.stop(CLIENT, DESTINATION)
            } else {
                e.stop(DESTINATION, CLIENT)
            }
        };
        loop {
            match &mut self.state {
                State::Pre(at) => {
                    if *at == self.pre.len() {
                        self.state = State::Read(Vec::new());
                        continue;
                    }
                    let n = ready!(write(cx, dst, &self.pre[*at..]))
                        .map_err(|e| fail(PumpError::Write(e)))?;
                    *at += n;
                    self.count += n as u64;
                    shared.touch();
                }
                State::Hello(buf) => {
                    let hello = ready!(poll_hello(cx, src, buf, shared.hello_expired));
                    judge_hello(&hello, shared)?;
                    self.state = State::Write(std::mem::take(buf), 0);
                }
                State::Read(buf) => match ready!(read_into(cx, src, buf)) {
                    Ok(0) => return Poll::Ready(self.end(cx, dst, shared)),
                    Ok(_) => self.state = State::Write(std::mem::take(buf), 0),
                    Err(e) => return Poll::Ready(Err(fail(PumpError::Read(e)))),
                },
                State::Write(buf, at) => {
                    if *at < buf.len() {
                        let n = ready!(write(cx, dst, &buf[*at..]))
                            .map_err(|e| fail(PumpError::Write(e)))?;
                        *at += n;
                        self.count += n as u64;
                        shared.touch();
                        continue;
                    }
                    let buf = std::mem::take(buf);
                    self.written(buf);
                }
                #[cfg(target_os = "linux")]
                State::Splice(s) => {
                    let moved = &mut self.count;
                    let r = ready!(s.poll(cx, src, dst, &mut |n| {
                        *moved += n as u64;
                        shared.touch();
                    }));
                    match r {
                        Ok(()) => return Poll::Ready(self.end(cx, dst, shared)),
                        Err(e) => return Poll::Ready(Err(fail(e))),
                    }
                }
                State::Done => return Poll::Ready(Ok(())),
            }
        }
    }

    /// A buffer's bytes all went on: a read that filled the whole buffer
    /// is bulk traffic, and the rest of this direction moves with
    /// splice(2); otherwise the copy buffer is kept for the next read (a
    /// hello's smaller one is not).
    fn written(&mut self, mut buf: Vec<u8>) {
        #[cfg(target_os = "linux")]
        if buf.len() == BUF && !self.tried_splice {
            self.tried_splice = true;
            if let Some(pipe) = crate::splice::pipe() {
                self.state = State::Splice(Box::new(crate::splice::Splicing::new(pipe)));
                return;
            }
        }
        if buf.capacity() < BUF {
            buf = Vec::new();
        }
        self.state = State::Read(buf);
    }

    /// The source ended: the first direction to end shuts its sink down.
    fn end(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut TcpStream,
        shared: &mut Shared,
    ) -> Result<(), Stop> {
        self.state = State::Done;
        shared.ends += 1;
        if shared.ends == 1 {
            // A TCP shutdown completes at once; its error (the peer is
            // gone) changes nothing here.
            let _ = Pin::new(dst).poll_shutdown(cx);
        }
        Ok(())
    }
}

/// One read from `src` into `buf`, which holds the copy buffer only while
/// data keeps coming: allocated once the socket is readable (not zeroed:
/// `read_buf` fills spare capacity), freed when it would block.
///
/// Through `AsyncRead` rather than `try_read_buf`: tokio's `poll_read`
/// clears the socket's readiness after a read that did not fill the buffer
/// (with edge-triggered epoll the receive queue was drained), so the next
/// wait goes to epoll at once instead of through a read that fails with
/// EAGAIN: one `recvfrom` fewer per tunnel (`strace -c`, bench/README.md).
fn read_into(
    cx: &mut Context<'_>,
    src: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() == 0 {
        ready!(src.poll_read_ready(cx))?;
        *buf = Vec::with_capacity(BUF);
    }
    buf.clear();
    let read = std::pin::pin!(src.read_buf(buf)).poll(cx);
    if read.is_pending() {
        *buf = Vec::new();
    }
    read
}

/// One write of `bytes` to `dst`.
fn write(cx: &mut Context<'_>, dst: &mut TcpStream, bytes: &[u8]) -> Poll<io::Result<usize>> {
    match ready!(Pin::new(dst).poll_write(cx, bytes)) {
        Ok(0) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
        r => Poll::Ready(r),
    }
}

/// Reads client bytes into `buf` until they hold a complete ClientHello,
/// something that is not TLS, the bounds are hit, or `expired` (the
/// hello's time is up: judged as it is, [`at_timeout`]).
fn poll_hello<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    src: &mut R,
    buf: &mut Vec<u8>,
    expired: bool,
) -> Poll<Hello> {
    loop {
        match parse_client_hello(buf) {
            Hello::Incomplete(need)
                if need <= MAX_HELLO + 5 * 8 && buf.len() < MAX_HELLO + 5 * 8 => {}
            Hello::Incomplete(_) => {
                return Poll::Ready(Hello::Malformed("ClientHello larger than 16 KiB"));
            }
            done => return Poll::Ready(done),
        }
        if expired {
            return Poll::Ready(at_timeout(buf));
        }
        // Read straight into `buf`: a stack chunk would sit in the caller's
        // state for as long as it waits.
        buf.reserve(4096);
        match ready!(std::pin::pin!(src.read_buf(buf)).poll(cx)) {
            Ok(0) => {
                return Poll::Ready(Hello::Malformed(
                    "client closed before a complete ClientHello",
                ));
            }
            Ok(_) => {}
            Err(_) => {
                return Poll::Ready(Hello::Malformed("read error before a complete ClientHello"));
            }
        }
    }
}

/// What an incomplete hello is once its time is up: nothing sent is not
/// TLS; part of a record is a malformed hello.
fn at_timeout(buf: &[u8]) -> Hello {
    if buf.is_empty() {
        Hello::NotTls
    } else {
        Hello::Malformed("ClientHello incomplete at timeout")
    }
}

/// Reads client bytes into `buf` until they hold a complete ClientHello,
/// something that is not TLS, or the bounds are hit, for at most
/// `timeout` ([`poll_hello`] with a deadline).
pub(crate) async fn read_hello<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Hello {
    let hello = std::future::poll_fn(|cx| poll_hello(cx, r, buf, false));
    match tokio::time::timeout(timeout, hello).await {
        Ok(hello) => hello,
        Err(_) => at_timeout(buf),
    }
}

impl Shared {
    fn touch(&mut self) {
        self.last = Some(tokio::time::Instant::now());
    }
}

impl<S: Future<Output = ()> + Unpin> Future for Relay<'_, S> {
    type Output = Relayed;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Relayed> {
        let this = self.get_mut();
        let ended = ready!(this.step(cx));
        Poll::Ready(this.finish(ended))
    }
}

impl<S: Future<Output = ()> + Unpin> Relay<'_, S> {
    /// Either side failing (or the hello check refusing) ends the tunnel at
    /// once; a clean end of one side waits for the other. `Ready(None)`:
    /// both ended cleanly.
    fn step(&mut self, cx: &mut Context<'_>) -> Poll<Option<Stop>> {
        loop {
            let Relay {
                client,
                upstream,
                up,
                down,
                shared,
                ..
            } = &mut *self;
            if !up.done() {
                if let Poll::Ready(Err(stop)) = up.poll(cx, client, upstream, shared) {
                    return Poll::Ready(Some(stop));
                }
            }
            if !down.done() {
                if let Poll::Ready(Err(stop)) = down.poll(cx, upstream, client, shared) {
                    return Poll::Ready(Some(stop));
                }
            }
            if up.done() && down.done() {
                return Poll::Ready(None);
            }
            if Pin::new(&mut self.stop).poll(cx).is_ready() {
                return Poll::Ready(Some(Stop::Io(
                    "stopped: drain timeout".to_owned(),
                    ErrorKind::Internal,
                )));
            }
            // The timer; past the hello's deadline, the directions again.
            match self.poll_timer(cx) {
                Poll::Ready(Some(stop)) => return Poll::Ready(Some(stop)),
                Poll::Ready(None) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The one timer: `Ready(Some)` once the tunnel idled out, `Ready(None)`
    /// once the hello's time is up (the directions are polled again), after
    /// any interim report that is due. The timer is reset only when it fired
    /// or a deadline comes before it: a busy tunnel's bytes move the idle
    /// deadline on without touching it.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<Option<Stop>> {
        loop {
            let now = tokio::time::Instant::now();
            let started = *self.started.get_or_insert(now);
            let idle_at = self.shared.last.unwrap_or(started) + self.idle;
            if now >= idle_at {
                return Poll::Ready(Some(Stop::Io(
                    format!("idle for {}s", self.idle.as_secs()),
                    ErrorKind::Timeout,
                )));
            }
            let mut next = idle_at;
            if matches!(self.up.state, State::Hello(_)) && !self.shared.hello_expired {
                let at = started + self.hello;
                if now >= at {
                    self.shared.hello_expired = true;
                    return Poll::Ready(None);
                }
                next = next.min(at);
            }
            if let Some(Interim { every, report }) = &mut self.interim {
                let at = *self.next_report.get_or_insert(started + *every);
                if now >= at {
                    report(self.up.count, self.down.count, self.shared.sni.as_deref());
                    // At least a millisecond apart: a zero interval must
                    // not make this loop spin.
                    self.next_report = Some(now + (*every).max(Duration::from_millis(1)));
                    continue;
                }
                next = next.min(at);
            }
            let timer = match &mut self.timer {
                Some(t) => {
                    if next < t.deadline() || t.is_elapsed() {
                        t.as_mut().reset(next);
                    }
                    t
                }
                None => self.timer.insert(Box::pin(tokio::time::sleep_until(next))),
            };
            ready!(timer.as_mut().poll(cx));
        }
    }

    /// What the relay comes to, once it ended (`None`: both sides ended
    /// cleanly).
    fn finish(&mut self, ended: Option<Stop>) -> Relayed {
        let mut result = Relayed {
            bytes_out: self.up.count,
            bytes_in: self.down.count,
            sni: self.shared.sni.take(),
            tls: self.shared.tls.take(),
            ..Relayed::default()
        };
        match ended {
            None => {}
            Some(Stop::Denied(rule, reason)) => result.denied = Some((rule, reason)),
            Some(Stop::Io(e, kind)) => {
                result.error = Some(e);
                result.error_kind = Some(kind);
            }
        }
        result
    }
}

/// Notes what the client's first bytes were (TLS or not, the SNI) and
/// asks the hello check whether the tunnel may go on.
fn judge_hello(hello: &Hello, shared: &mut Shared) -> Result<(), Stop> {
    shared.tls = Some(matches!(hello, Hello::ClientHello { .. }));
    if let Hello::ClientHello { sni: Some(name) } = hello {
        shared.sni = Some(name.clone());
    }
    let Some(check) = shared.check.take() else {
        return Ok(());
    };
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
