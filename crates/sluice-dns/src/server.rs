//! The sockets: a UDP receive loop and a TCP accept loop on the same
//! address, both on `sluice-serve`'s loops, handing packets to the
//! [`Forwarder`]. The caller binds (tests bind port 0). Both loops stop
//! when the drain begins; queries in flight finish on their own tasks and
//! count as active work for the drain.
//!
//! UDP: cache hits and local answers are sent from the receive loop; a
//! query that needs the upstreams runs on its own task, at most
//! [`MAX_IN_FLIGHT`] at once (more are dropped: the client retries).
//! TCP: at most [`MAX_TCP_CONNECTIONS`] connections (per source as in
//! total), each answering its queries in order, closed after [`TCP_IDLE`]
//! without a query.

use std::{sync::Arc, time::Duration};

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
    sluice_serve::run_udp(
        socket,
        drain,
        UDP_BUFFER,
        MAX_IN_FLIGHT,
        move |packet, src| match fwd.begin(src, packet, Transport::Udp) {
            Step::Done(Some(out)) => Datagram::Reply(out),
            Step::Done(None) => Datagram::Nothing,
            Step::Forward(f) => {
                let fwd = fwd.clone();
                Datagram::Later(Box::pin(async move { Some(fwd.finish(*f).await) }))
            }
        },
    )
    .await;
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
