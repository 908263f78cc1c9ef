//! The UDP receive loop: one socket, one handler per datagram. A handler
//! answers at once (a cache hit, a refusal), answers nothing, or returns
//! work that runs on its own task — at most `max_in_flight` at once (more
//! are dropped: UDP clients retry), each counted as active for the drain.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc};

use tokio::{net::UdpSocket, sync::Semaphore};

use crate::Drain;

/// Work that finishes a datagram later; its output is sent to the source.
pub type Later = Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send>>;

/// What a handler made of one datagram.
pub enum Datagram {
    /// Send these bytes back now.
    Reply(Vec<u8>),
    /// Nothing to send (dropped, or consumed like a flow export).
    Nothing,
    /// Finish on a task of its own, then send what it returns.
    Later(Later),
}

/// Receives on `socket` until `drain` begins, passing each datagram (at
/// most `max_datagram` bytes; longer ones are cut) to `handler`.
pub async fn run_udp<H>(
    socket: UdpSocket,
    drain: Arc<Drain>,
    max_datagram: usize,
    max_in_flight: usize,
    mut handler: H,
) where
    H: FnMut(&[u8], SocketAddr) -> Datagram,
{
    let socket = Arc::new(socket);
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let began = drain.began();
    tokio::pin!(began);
    let mut buf = vec![0u8; max_datagram];
    loop {
        let (n, src) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on some
                    // systems; they concern one peer, not the socket.
                    tracing::debug!(error = %e, "UDP receive error");
                    continue;
                }
            },
            () = &mut began => return,
        };
        match handler(&buf[..n], src) {
            Datagram::Reply(out) => {
                let _ = socket.send_to(&out, src).await;
            }
            Datagram::Nothing => {}
            Datagram::Later(work) => {
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    tracing::debug!(%src, "too much UDP work in flight; dropping a datagram");
                    continue;
                };
                let socket = socket.clone();
                let active = drain.active();
                tokio::spawn(async move {
                    if let Some(out) = work.await {
                        let _ = socket.send_to(&out, src).await;
                    }
                    drop(permit);
                    drop(active);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn answers_now_later_or_not_at_all() {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = s.local_addr().unwrap();
        let drain = Arc::new(Drain::new());
        let server = tokio::spawn(run_udp(s, drain.clone(), 512, 4, |b: &[u8], _| {
            match b.first() {
                Some(b'n') => Datagram::Reply(b"now".to_vec()),
                Some(b'l') => Datagram::Later(Box::pin(async { Some(b"later".to_vec()) })),
                _ => Datagram::Nothing,
            }
        }));
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.connect(at).await.unwrap();
        let mut b = [0u8; 16];
        for (send, want) in [(&b"n"[..], &b"now"[..]), (b"l", b"later")] {
            c.send(send).await.unwrap();
            let n = tokio::time::timeout(Duration::from_secs(5), c.recv(&mut b))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&b[..n], want);
        }
        c.send(b"x").await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), c.recv(&mut b))
                .await
                .is_err()
        );
        drain.begin();
        server.await.unwrap();
        assert!(drain.wait_idle(Duration::from_secs(5)).await);
    }
}
