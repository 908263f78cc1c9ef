//! Asking the upstream resolvers: UDP first (sent again after a quarter of
//! the timeout without an answer, so a lost datagram does not turn into a
//! SERVFAIL after the client gave up), TCP when the answer comes back
//! truncated, each upstream bounded by `dns.upstream_timeout`, and failover
//! to the next upstream on a timeout, a network error, SERVFAIL or REFUSED.
//! The upstream that answered last is asked first next time.
//!
//! Every query is built here from the client's question alone — a fresh
//! id, a fresh socket (so a fresh source port), recursion desired, and an
//! EDNS record of our own without options — so nothing the client sent
//! besides its question reaches an upstream: EDNS Client Subnet, cookies
//! and padding are stripped by construction. An answer must carry our id
//! and our question, or it is ignored.

use std::{
    collections::hash_map::RandomState,
    hash::BuildHasher,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

use crate::query::MAX_UDP_PAYLOAD;

/// UDP sends of one query to one upstream at most (the first and two
/// more), so that one lost datagram costs a resend interval, not the whole
/// `dns.upstream_timeout` and a SERVFAIL.
const MAX_SENDS: u32 = 3;
/// The resend interval is the upstream timeout over this, within
/// [`RESEND_MIN`] and [`RESEND_MAX`] (2 s gives 500 ms).
const RESEND_DIVISOR: u32 = 4;
/// The shortest resend interval.
const RESEND_MIN: Duration = Duration::from_millis(100);
/// The longest resend interval.
const RESEND_MAX: Duration = Duration::from_secs(1);

/// Why no upstream answered.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No upstream is configured.
    #[error("no DNS upstream configured")]
    None,
    /// Every upstream failed; the last failure.
    #[error("every DNS upstream failed; last: {addr}: {msg}")]
    Failed {
        /// The last upstream tried.
        addr: SocketAddr,
        /// What went wrong there.
        msg: String,
    },
}

/// The configured upstreams.
#[derive(Debug)]
pub struct Upstreams {
    addrs: Vec<SocketAddr>,
    timeout: Duration,
    preferred: AtomicUsize,
    ids: RandomState,
    counter: AtomicU64,
}

// === impl Upstreams ===

impl Upstreams {
    /// Upstreams asked in order, each allowed `timeout`.
    pub fn new(addrs: Vec<SocketAddr>, timeout: Duration) -> Upstreams {
        Upstreams {
            addrs,
            timeout,
            preferred: AtomicUsize::new(0),
            ids: RandomState::new(),
            counter: AtomicU64::new(0),
        }
    }

    /// The upstreams, in configured order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The query Sluice sends for `q`.
    pub fn request(&self, q: &Query) -> Message {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let id = (self.ids.hash_one(n) & 0xffff) as u16;
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(q.clone());
        let mut e = Edns::new();
        e.set_max_payload(MAX_UDP_PAYLOAD);
        m.set_edns(e);
        m
    }

    /// Asks the upstreams for `q` until one answers.
    pub async fn resolve(&self, q: &Query) -> Result<Message, UpstreamError> {
        let n = self.addrs.len();
        if n == 0 {
            return Err(UpstreamError::None);
        }
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut last_err = None;
        let mut last_answer = None;
        for i in 0..n {
            let idx = (first + i) % n;
            let addr = self.addrs[idx];
            let req = self.request(q);
            match self.exchange(addr, &req).await {
                Ok(m)
                    if matches!(
                        m.metadata.response_code,
                        ResponseCode::ServFail | ResponseCode::Refused
                    ) =>
                {
                    tracing::debug!(upstream = %addr, rcode = %m.metadata.response_code, "upstream failed the query; trying the next");
                    last_answer = Some(m);
                }
                Ok(m) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(m);
                }
                Err(msg) => {
                    tracing::debug!(upstream = %addr, error = %msg, "upstream unreachable; trying the next");
                    last_err = Some((addr, msg));
                }
            }
        }
        if let Some(m) = last_answer {
            return Ok(m);
        }
        let (addr, msg) = last_err.unwrap_or((self.addrs[0], "no answer".to_owned()));
        Err(UpstreamError::Failed { addr, msg })
    }

    /// One upstream, UDP then (on TC) TCP, within the timeout.
    async fn exchange(&self, addr: SocketAddr, req: &Message) -> Result<Message, String> {
        let bytes = req.to_vec().map_err(|e| e.to_string())?;
        let resend = (self.timeout / RESEND_DIVISOR).clamp(RESEND_MIN, RESEND_MAX);
        let fut = async {
            let m = udp(addr, &bytes, req, resend).await?;
            if !m.metadata.truncation {
                return Ok(m);
            }
            tcp(addr, &bytes, req).await
        };
        timeout(self.timeout, fut)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}

/// Whether `m` answers `req`.
fn answers(m: &Message, req: &Message) -> bool {
    m.metadata.id == req.metadata.id
        && m.metadata.message_type == MessageType::Response
        && m.queries.len() == 1
        && req.queries.first().is_some_and(|q| {
            let a = &m.queries[0];
            a.query_type() == q.query_type()
                && a.query_class() == q.query_class()
                && a.name().eq_ignore_root(q.name())
        })
}

/// Sends `bytes` to `addr` over UDP and waits for the answer to `req`,
/// sending the same query again (same id, same socket: whichever copy is
/// answered counts) each `resend` without one, at most [`MAX_SENDS`]
/// times. The caller's timeout bounds the whole exchange.
async fn udp(
    addr: SocketAddr,
    bytes: &[u8],
    req: &Message,
    resend: Duration,
) -> Result<Message, String> {
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
    sock.connect(addr).await.map_err(|e| e.to_string())?;
    sock.send(bytes).await.map_err(|e| e.to_string())?;
    let mut sends = 1;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = if sends < MAX_SENDS {
            match timeout(resend, sock.recv(&mut buf)).await {
                Ok(r) => r.map_err(|e| e.to_string())?,
                Err(_) => {
                    // The query or its answer was lost: ask again rather
                    // than sit out the whole upstream timeout.
                    sock.send(bytes).await.map_err(|e| e.to_string())?;
                    sends += 1;
                    continue;
                }
            }
        } else {
            sock.recv(&mut buf).await.map_err(|e| e.to_string())?
        };
        // Anything that is not the answer (a stray or forged packet) is ignored.
        if let Ok(m) = Message::from_vec(&buf[..n]) {
            if answers(&m, req) {
                return Ok(m);
            }
        }
    }
}

async fn tcp(addr: SocketAddr, bytes: &[u8], req: &Message) -> Result<Message, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let len = u16::try_from(bytes.len()).map_err(|_| "query too long".to_owned())?;
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    s.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    let m = Message::from_vec(&buf).map_err(|e| e.to_string())?;
    if answers(&m, req) {
        Ok(m)
    } else {
        Err("TCP answer does not match the query".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    #[test]
    fn requests_carry_only_the_question() {
        let u = Upstreams::new(vec![], Duration::from_secs(1));
        let q = Query::query(Name::from_ascii("example.com.").unwrap(), RecordType::A);
        let m = u.request(&q);
        assert!(m.metadata.recursion_desired);
        assert_eq!(m.queries, [q]);
        let edns = m.edns.as_ref().unwrap();
        assert!(edns.options().as_ref().is_empty(), "no ECS, no options");
        assert_ne!(m.metadata.id, u.request(&m.queries[0]).metadata.id);
    }

    #[tokio::test]
    async fn no_upstream_is_an_error() {
        let u = Upstreams::new(vec![], Duration::from_secs(1));
        let q = Query::query(Name::from_ascii("example.com.").unwrap(), RecordType::A);
        assert!(matches!(u.resolve(&q).await, Err(UpstreamError::None)));
    }
}
