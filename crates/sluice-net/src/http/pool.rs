//! Keep-alive connections to origins, by destination. A pooled connection
//! is reused only if its address still passes the flow's policy (which may
//! be newer than the connection): [`crate::Gateway::reuse`].

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use hyper::client::conn::http1::SendRequest;
use sluice_policy::Destination;

use super::ProxyBody;
use crate::{Gateway, flow::Flow};

/// Idle pooled origin connections are dropped after this long.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Most pooled connections per destination (busy or idle): enough for many
/// concurrent clients to reuse origin connections instead of dialing anew.
const POOL_PER_KEY: usize = 256;

pub(super) type PoolKey = (Destination, u16);

struct Pooled {
    sender: SendRequest<ProxyBody>,
    peer: SocketAddr,
    since: Instant,
}

/// The pool.
#[derive(Default)]
pub(super) struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<Pooled>>>,
}

impl Pool {
    /// A ready connection for `key` that the flow's policy lets it use.
    pub(super) fn checkout(
        &self,
        key: &PoolKey,
        gw: &Gateway,
        flow: &mut Flow,
    ) -> Option<(SendRequest<ProxyBody>, SocketAddr)> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        // Oldest first (checkin appends): expire from the front, reuse the
        // most recently used from the back. Constant work per request, not a
        // scan of every idle connection.
        let now = Instant::now();
        let expired = list
            .iter()
            .take_while(|p| now.duration_since(p.since) >= POOL_IDLE)
            .count();
        list.drain(..expired);
        let p = loop {
            let p = list.pop()?;
            // Closed, or (rarely) not ready for another request: drop it.
            if !p.sender.is_closed() && p.sender.is_ready() {
                break p;
            }
        };
        drop(idle);
        gw.reuse(flow, p.peer).then_some((p.sender, p.peer))
    }

    /// Returns a connection for the next request to `key`.
    pub(super) fn checkin(&self, key: PoolKey, sender: SendRequest<ProxyBody>, peer: SocketAddr) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() > 1024 {
                idle.retain(|_, v| {
                    v.retain(|p| !p.sender.is_closed() && p.since.elapsed() < POOL_IDLE);
                    !v.is_empty()
                });
            }
            let list = idle.entry(key).or_default();
            if list.len() < POOL_PER_KEY {
                list.push(Pooled {
                    sender,
                    peer,
                    since: Instant::now(),
                });
            }
        }
    }
}
