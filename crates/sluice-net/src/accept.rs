//! The accept loop every TCP listener shares: admit each client by the
//! connection caps (one `ConnLimiter` in `Ctx`, so the caps are totals over
//! all listeners), count it as active for the drain, stop accepting when a
//! drain begins, and back off when `accept` fails (EMFILE) instead of
//! spinning. A listener only supplies what to do with one admitted client.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::{TcpListener, TcpStream};

use crate::{Ctx, limits::Slot};

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
