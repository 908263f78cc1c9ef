//! The TCP accept loop every TCP listener shares: admit each client by the
//! connection caps, count it as active for the drain, stop accepting when
//! the drain begins, and back off when `accept` fails (EMFILE) instead of
//! spinning. A listener only supplies what to do with one admitted client.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::{ConnLimiter, Drain, Slot};

/// The accept queue asked of the kernel (capped by `net.core.somaxconn`,
/// 4096 on current kernels). Bursts of new clients wait here rather than
/// having their SYNs dropped (and retried a second later), which std's and
/// tokio's default of 128 did under a few thousand connections a second.
pub const BACKLOG: u32 = 4096;

/// How long the loop pauses after a failed `accept` (descriptors exhausted).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// `EMFILE` and `ENFILE` (the same on Linux and the BSDs).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// Whether `e` says the process (EMFILE) or the system (ENFILE) ran out of
/// file descriptors.
pub fn fd_exhausted(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(n) if n == EMFILE || n == ENFILE)
}

/// Binds a TCP listener on `addr` with [`BACKLOG`] (and `SO_REUSEADDR`, so a
/// restart does not wait for the old process's connections to time out).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accepts on `listener` until `drain` begins, spawning `handler` for every
/// client `limiter` admits (others are closed at once). The slot and an
/// [`crate::Active`] guard are held until the handler's future ends; work
/// the handler spawns that outlives it (a tunnel) keeps a clone of the slot
/// and takes its own guard.
pub async fn run_tcp<H, Fut>(
    listener: TcpListener,
    limiter: Arc<ConnLimiter>,
    drain: Arc<Drain>,
    handler: H,
) where
    H: FnMut(TcpStream, SocketAddr, Arc<Slot>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    run_tcp_with(listener, limiter, drain, || {}, handler).await;
}

/// [`run_tcp`], calling `on_fd_exhausted` for every `accept` that failed
/// because descriptors ran out (EMFILE, ENFILE), for a metric. Failed
/// accepts are logged at most once a second in the whole process (every
/// listener's loop fails at once when descriptors run out), with the
/// number of failures not logged since the previous line.
pub async fn run_tcp_with<H, Fut>(
    listener: TcpListener,
    limiter: Arc<ConnLimiter>,
    drain: Arc<Drain>,
    on_fd_exhausted: impl Fn(),
    mut handler: H,
) where
    H: FnMut(TcpStream, SocketAddr, Arc<Slot>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let began = drain.began();
    tokio::pin!(began);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut began => return,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    if fd_exhausted(&e) {
                        on_fd_exhausted();
                    }
                    let logged = ACCEPT_LOG.lock().map_or(None, |mut l| l.failed(Instant::now()));
                    if let Some(suppressed) = logged {
                        tracing::warn!(
                            error = %e,
                            listener = ?listener.local_addr().ok(),
                            suppressed,
                            "accept failed (suppressed: failures of any listener since the previous line)"
                        );
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        match limiter.admit(peer.ip()) {
            Ok(slot) => {
                let active = drain.active();
                let slot = Arc::new(slot);
                let work = handler(stream, peer, slot.clone());
                tokio::spawn(async move {
                    // The slot goes first: once the drain sees no active
                    // work, the limiter counts none either (the handler
                    // may run on another thread: `cores`).
                    let _held = (slot, active);
                    work.await;
                });
            }
            Err(why) => {
                tracing::debug!(%peer, ?why, "connection refused by limits");
                drop(stream);
            }
        }
    }
}

/// The process's `accept failed` rate limit, shared by every accept loop.
static ACCEPT_LOG: Mutex<AcceptLog> = Mutex::new(AcceptLog {
    last: None,
    suppressed: 0,
});

/// Rate limit of the `accept failed` line: at most one a [`LOG_EVERY`].
#[derive(Debug, Default)]
struct AcceptLog {
    last: Option<Instant>,
    suppressed: u64,
}

/// At most one `accept failed` line this often.
const LOG_EVERY: Duration = Duration::from_secs(1);

impl AcceptLog {
    /// A failure at `now`: `Some(failures suppressed since the last line)`
    /// when this one is to be logged.
    fn failed(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < LOG_EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A burst of clients that the process has not accepted yet waits in
    /// the kernel's queue instead of having its SYNs dropped (with the
    /// default backlog of 128 the 129th connect would stall for a second,
    /// until its SYN is retried).
    #[tokio::test]
    async fn a_burst_of_connections_queues_without_accepting() {
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let at = l.local_addr().unwrap();
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        let n = 1000.min(somaxconn);
        assert!(
            n > 128,
            "net.core.somaxconn = {somaxconn} is too low to test"
        );
        let mut held = Vec::new();
        for i in 0..n {
            let c = tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(at))
                .await
                .unwrap_or_else(|_| panic!("connect {i} stalled: SYN dropped"))
                .unwrap();
            held.push(c);
        }
        drop(l);
    }

    #[test]
    fn accept_failures_are_logged_once_a_second_with_a_count() {
        let mut log = AcceptLog::default();
        let t0 = Instant::now();
        assert_eq!(log.failed(t0), Some(0));
        for i in 1..20 {
            assert_eq!(log.failed(t0 + Duration::from_millis(i * 50)), None);
        }
        assert_eq!(log.failed(t0 + Duration::from_millis(1000)), Some(19));
        assert_eq!(log.failed(t0 + Duration::from_millis(1100)), None);
    }

    /// The loop serves admitted clients, closes those over the per-source
    /// cap, ends when the drain begins, and the drain sees handlers end.
    #[tokio::test]
    async fn serves_caps_and_drains() {
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let at = l.local_addr().unwrap();
        let drain = Arc::new(Drain::new());
        let limiter = ConnLimiter::new(10, 1);
        let server = tokio::spawn(run_tcp(
            l,
            limiter.clone(),
            drain.clone(),
            |mut s: TcpStream, _, _slot| async move {
                let mut b = [0u8; 1];
                while s.read(&mut b).await.is_ok_and(|n| n > 0) {
                    let _ = s.write_all(&b).await;
                }
            },
        ));
        let mut first = TcpStream::connect(at).await.unwrap();
        first.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        first.read_exact(&mut b).await.unwrap();
        // Over the per-source cap of 1: closed without an answer.
        let mut second = TcpStream::connect(at).await.unwrap();
        let _ = second.write_all(b"y").await;
        assert_eq!(second.read(&mut b).await.unwrap_or(0), 0);
        assert_eq!(limiter.open(), 1);
        drain.begin();
        server.await.unwrap();
        assert!(!drain.wait_idle(Duration::from_millis(100)).await);
        drop(first);
        assert!(drain.wait_idle(Duration::from_secs(5)).await);
        assert_eq!(limiter.open(), 0);
    }
}
