//! The sockets: a UDP receive loop and a TCP accept loop on the same
//! address, both handing packets to the [`Forwarder`]. The caller binds
//! (tests bind port 0). Both loops stop when the drain begins; queries in
//! flight finish on their own tasks.
//!
//! UDP: cache hits and local answers are sent from the receive loop; a
//! query that needs the upstreams runs on its own task, at most
//! [`MAX_IN_FLIGHT`] at once (more are dropped: the client retries).
//! TCP: at most [`MAX_TCP_CONNECTIONS`] connections, each answering its
//! queries in order, closed after [`TCP_IDLE`] without a query.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
    time::timeout,
};

use crate::forward::{Forwarder, Step, Transport};

/// UDP queries waiting for an upstream at once.
pub const MAX_IN_FLIGHT: usize = 4096;
/// Open TCP connections at once.
pub const MAX_TCP_CONNECTIONS: usize = 512;
/// A TCP connection with no query this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// The largest datagram read (larger ones are cut and fail to parse).
const UDP_BUFFER: usize = 4096;

/// Serves DNS over UDP on `socket` until the drain begins.
pub async fn serve_udp(socket: UdpSocket, fwd: Arc<Forwarder>) {
    let socket = Arc::new(socket);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let began = fwd.ctx().drain().began();
    tokio::pin!(began);
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let (n, src) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on some
                    // systems; they concern one peer, not the socket.
                    tracing::debug!(error = %e, "DNS UDP receive error");
                    continue;
                }
            },
            () = &mut began => return,
        };
        match fwd.begin(src, &buf[..n], Transport::Udp) {
            Step::Done(Some(out)) => {
                let _ = socket.send_to(&out, src).await;
            }
            Step::Done(None) => {}
            Step::Forward(f) => {
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    tracing::debug!(%src, "too many DNS queries in flight; dropping one");
                    continue;
                };
                let (fwd, socket) = (fwd.clone(), socket.clone());
                tokio::spawn(async move {
                    let out = fwd.finish(*f).await;
                    let _ = socket.send_to(&out, src).await;
                    drop(permit);
                });
            }
        }
    }
}

/// Serves DNS over TCP on `listener` until the drain begins.
pub async fn serve_tcp(listener: TcpListener, fwd: Arc<Forwarder>) {
    let conns = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let began = fwd.ctx().drain().began();
    tokio::pin!(began);
    loop {
        let (stream, src) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS TCP accept error");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut began => return,
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            continue;
        };
        let fwd = fwd.clone();
        tokio::spawn(async move {
            connection(stream, src, &fwd).await;
            drop(permit);
        });
    }
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
