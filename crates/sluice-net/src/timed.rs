//! Read deadlines for HTTP client connections, by phase: a request head
//! must arrive within `header_timeout` of its first byte (or of the
//! connection's start, for the first one: slowloris), and a keep-alive
//! connection may wait `idle_timeout` for its next request. hyper has only
//! one timer for both (its `header_read_timeout` also closes idle
//! keep-alives), so the proxy turns that off and wraps the socket instead.
//!
//! The service tells the wrapper where a request begins and ends
//! ([`Phase::begin_request`], [`Phase::end_request`]) and when the
//! connection was upgraded ([`Phase::upgraded`]: then only the idle timeout
//! applies); the wrapper sees the bytes. While a request is being served
//! there is no read deadline (its body may stream for as long as it moves).
//! CONNECT tunnels take the bare socket out of the wrapper and keep their
//! own idle timeout.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use crate::http::framing::HeadScan;
use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::{Instant, Sleep, sleep_until},
};

const AWAITING: u8 = 0;
const HEAD: u8 = 1;
const SERVING: u8 = 2;
const TUNNEL: u8 = 3;

/// Where a connection is between requests, shared by the service and the
/// wrapper; and whether a head just read had both `Content-Length` and
/// `Transfer-Encoding` (hyper hides that from the service).
#[derive(Debug)]
pub(crate) struct Phase(AtomicU8, AtomicBool);

impl Phase {
    /// A new connection: its first head is due within the header timeout.
    pub(crate) fn new() -> Arc<Phase> {
        Arc::new(Phase(AtomicU8::new(HEAD), AtomicBool::new(false)))
    }

    /// Whether a head read since the last call had both lengths. One flag,
    /// not one per head: hyper closes a connection after such a head, so
    /// no request after it is served; a request pipelined before it in the
    /// same read is refused with it.
    pub(crate) fn take_both_lengths(&self) -> bool {
        self.1.swap(false, Ordering::Relaxed)
    }

    /// The service got a complete head: no read deadline until it answers.
    pub(crate) fn begin_request(&self) {
        self.0.store(SERVING, Ordering::Relaxed);
    }

    /// The service answered: the connection now waits for its next request.
    pub(crate) fn end_request(&self) {
        self.0.store(AWAITING, Ordering::Relaxed);
    }

    /// The connection was upgraded (WebSocket): no more request heads, only
    /// the idle timeout, which bytes either way reset.
    pub(crate) fn upgraded(&self) {
        self.0.store(TUNNEL, Ordering::Relaxed);
    }
}

/// A client socket with phase-dependent read deadlines; a read past its
/// deadline fails with `TimedOut`, which ends the connection.
pub(crate) struct Timed {
    io: TcpStream,
    phase: Arc<Phase>,
    header: Duration,
    idle: Duration,
    /// The phase the deadline below was computed for.
    seen: u8,
    /// When the current head began (`HEAD`) or the last byte moved.
    since: Instant,
    timer: Pin<Box<Sleep>>,
    /// Heads as written, for what hyper's parser normalizes away.
    scan: HeadScan,
    /// Bytes read from the socket before hyper took it over (the CONNECT
    /// fast path's look at the first head): read before the socket.
    pre: Bytes,
}

impl Timed {
    /// A connection whose phase began at `since` (its accept, for the first
    /// head), with `pre` already read from the socket.
    pub(crate) fn new(
        io: TcpStream,
        phase: Arc<Phase>,
        (header, idle): (Duration, Duration),
        since: Instant,
        pre: Bytes,
    ) -> Timed {
        let seen = phase.0.load(Ordering::Relaxed);
        let deadline = since + if seen == HEAD { header } else { idle };
        Timed {
            io,
            phase,
            header,
            idle,
            seen,
            since,
            timer: Box::pin(sleep_until(deadline)),
            scan: HeadScan::default(),
            pre,
        }
    }

    /// The socket, for a tunnel after an upgrade, with any bytes read
    /// before hyper took it that hyper has not read yet.
    pub(crate) fn into_inner(self) -> (TcpStream, Bytes) {
        (self.io, self.pre)
    }

    fn deadline(&self) -> Option<Instant> {
        match self.seen {
            HEAD => Some(self.since + self.header),
            AWAITING | TUNNEL => Some(self.since + self.idle),
            _ => None,
        }
    }

    /// Brings `seen`/`since` up to date with the service's phase and the
    /// bytes just read (`got`).
    fn track(&mut self, got: bool) {
        // Clock reads only where a deadline depends on them: none while a
        // request is served or a head arrives, the data path's usual case.
        let now_phase = self.phase.0.load(Ordering::Relaxed);
        if now_phase != self.seen {
            self.seen = now_phase;
            self.since = Instant::now();
        }
        if got {
            match self.seen {
                // The first byte of the next head: the head timeout runs.
                AWAITING => {
                    self.seen = HEAD;
                    self.phase.0.store(HEAD, Ordering::Relaxed);
                    self.since = Instant::now();
                }
                TUNNEL => self.since = Instant::now(),
                _ => {}
            }
        }
    }
}

impl Timed {
    /// Sets the timer to the current deadline and registers the task with
    /// it; `Ready` when the deadline has passed.
    fn arm(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(deadline) = self.deadline() else {
            return Poll::Pending;
        };
        // A deadline that moved later (every byte of a streaming response
        // moves it) is not re-registered each time: the timer fires at the
        // old one, finds time left, and is set again then.
        if self.timer.deadline() > deadline {
            self.timer.as_mut().reset(deadline);
        }
        loop {
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= deadline => return Poll::Ready(()),
                Poll::Ready(()) => self.timer.as_mut().reset(deadline),
            }
        }
    }

    /// Feeds bytes just read to the head scanner (before `track` moves the
    /// phase on: `AWAITING` still says the last request was answered).
    fn scan_heads(&mut self, bytes: &[u8]) {
        match self.phase.0.load(Ordering::Relaxed) {
            TUNNEL => return,
            AWAITING => self.scan.resync(),
            _ => {}
        }
        let phase = &self.phase;
        self.scan.feed(bytes, |h| {
            if h.both_lengths {
                phase.1.store(true, Ordering::Relaxed);
            }
        });
    }

    /// After a write: the response that ends a request is written after the
    /// service has answered, and hyper may not read again until the client
    /// sends something, so the idle deadline is armed here, from the write
    /// side (same task). When it passes, the task wakes and the next read
    /// fails.
    fn after_write(&mut self, cx: &mut Context<'_>, wrote: bool) {
        self.track(false);
        if wrote && matches!(self.seen, AWAITING | TUNNEL) {
            // A response still streaming out keeps the connection busy.
            self.since = Instant::now();
        }
        if self.arm(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
    }
}

impl AsyncRead for Timed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            let chunk = self.pre.split_to(n);
            buf.put_slice(&chunk);
            self.scan_heads(&chunk);
            self.track(n > 0);
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let got = buf.filled().len() > before;
                if got {
                    self.scan_heads(&buf.filled()[before..]);
                }
                self.track(got);
                Poll::Ready(r)
            }
            Poll::Pending => {
                self.track(false);
                match self.arm(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        if self.seen == HEAD {
                            "request head not received within limits.header_timeout"
                        } else {
                            "connection idle for limits.idle_timeout"
                        },
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for Timed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.after_write(cx, matches!(r, Poll::Ready(Ok(n)) if n > 0));
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.after_write(cx, matches!(r, Poll::Ready(Ok(n)) if n > 0));
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
