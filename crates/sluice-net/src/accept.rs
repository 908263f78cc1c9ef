//! The accept loop every TCP listener shares: admit each client by the
//! connection caps (one `ConnLimiter` in `Ctx`, so the caps are totals over
//! all listeners), count it as active for the drain, stop accepting when a
//! drain begins, and back off when `accept` fails (EMFILE) instead of
//! spinning. A listener only supplies what to do with one admitted client.

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::{Ctx, limits::Slot};

/// The accept queue asked of the kernel (capped by `net.core.somaxconn`,
/// 4096 on current kernels). Bursts of new clients wait here rather than
/// having their SYNs dropped (and retried a second later), which std's and
/// tokio's default of 128 did under a few thousand connections a second.
pub const BACKLOG: u32 = 4096;

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

/// Accepts on `listener` until a drain begins, spawning `handle` for every
/// admitted client. The slot and the drain's active count are held until
/// `handle`'s future ends (a tunnel it spawns must hold its own).
pub(crate) async fn accept_loop<F, Fut>(listener: TcpListener, ctx: Arc<Ctx>, mut handle: F)
where
    F: FnMut(TcpStream, SocketAddr, Arc<Slot>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let began = ctx.drain().began();
    tokio::pin!(began);
    loop {
        tokio::select! {
            () = &mut began => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match ctx.limiter.admit(peer.ip()) {
                    Ok(slot) => {
                        let active = ctx.drain().active();
                        let work = handle(stream, peer, Arc::new(slot));
                        tokio::spawn(async move {
                            let _active = active;
                            work.await;
                        });
                    }
                    Err(why) => {
                        tracing::debug!(%peer, ?why, "connection refused by limits");
                        drop(stream);
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
