//! The sockets: a UDP receive loop and a TCP accept loop on the same
//! address, both on `sluice-serve`'s loops, handing packets to the
//! [`Forwarder`]. The caller binds (tests bind port 0). Both loops stop
//! when the drain begins; queries in flight finish on their own tasks and
//! count as active work for the drain.
//!
//! UDP: cache hits and local answers are sent from the receive loop; a
//! query that needs the upstreams runs on its own task, at most
//! [`MAX_IN_FLIGHT`] at once (more are answered SERVFAIL at once: every
//! query the rate limit lets through gets an answer).
//! TCP: at most [`MAX_TCP_CONNECTIONS`] connections (per source as in
//! total), each answering its queries in order, closed after [`TCP_IDLE`]
//! without a query.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sluice_serve::{ConnLimiter, Datagram, Drain};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    time::timeout,
};

use crate::forward::{Forwarder, Step, Transport};

/// UDP queries waiting for an upstream at once.
pub const MAX_IN_FLIGHT: usize = 4096;
/// Open TCP connections at once.
pub const MAX_TCP_CONNECTIONS: u32 = 512;
/// A TCP connection with no query this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// The largest datagram read (larger ones are cut and fail to parse).
const UDP_BUFFER: usize = 4096;

/// Serves DNS over UDP on `socket` until `drain` begins.
pub async fn serve_udp(socket: UdpSocket, fwd: Arc<Forwarder>, drain: Arc<Drain>) {
    serve_udp_with(socket, fwd, drain, MAX_IN_FLIGHT).await;
}

/// [`serve_udp`] with at most `max_waiting` queries waiting for the
/// upstreams at once; a query beyond them is answered SERVFAIL at once
/// (and recorded), never dropped: only the rate limit drops queries.
pub async fn serve_udp_with(
    socket: UdpSocket,
    fwd: Arc<Forwarder>,
    drain: Arc<Drain>,
    max_waiting: usize,
) {
    let waiting = Arc::new(AtomicUsize::new(0));
    // The serving loop's own cap is a backstop only: a task stays counted
    // there while it sends its answer, after it left `waiting`.
    let backstop = max_waiting.saturating_mul(2).max(1);
    sluice_serve::run_udp(
        socket,
        drain,
        UDP_BUFFER,
        backstop,
        move |packet, src| match fwd.begin(src, packet, Transport::Udp) {
            Step::Done(Some(out)) => Datagram::Reply(out),
            Step::Done(None) => Datagram::Nothing,
            Step::Forward(f) => {
                let Some(slot) = Waiting::take(&waiting, max_waiting) else {
                    return Datagram::Reply(fwd.busy(*f));
                };
                let fwd = fwd.clone();
                Datagram::Later(Box::pin(async move {
                    let out = fwd.finish(*f).await;
                    drop(slot);
                    Some(out)
                }))
            }
        },
    )
    .await;
}

/// One query's place among those waiting for the upstreams; given back
/// when dropped (answered, or the task ended).
struct Waiting(Arc<AtomicUsize>);

// === impl Waiting ===

impl Waiting {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Waiting> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Waiting(count.clone()))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves DNS over TCP on `listener` until `drain` begins.
pub async fn serve_tcp(listener: TcpListener, fwd: Arc<Forwarder>, drain: Arc<Drain>) {
    let limiter = ConnLimiter::new(MAX_TCP_CONNECTIONS, MAX_TCP_CONNECTIONS);
    sluice_serve::run_tcp(listener, limiter, drain, move |stream, src, _slot| {
        let fwd = fwd.clone();
        async move { connection(stream, src, &fwd).await }
    })
    .await;
}

async fn connection(mut s: TcpStream, src: std::net::SocketAddr, fwd: &Forwarder) {
    let _ = s.set_nodelay(true);
    loop {
        let mut len = [0u8; 2];
        match timeout(TCP_IDLE, s.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match timeout(TCP_IDLE, s.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(out) = fwd.handle(src, &msg, Transport::Tcp).await else {
            return;
        };
        let Ok(n) = u16::try_from(out.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&out);
        if timeout(TCP_IDLE, s.write_all(&framed)).await.is_err() {
            return;
        }
    }
}
