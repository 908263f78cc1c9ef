//! Keep-alive connections to origins, by destination. A pooled connection
//! is reused only if its address still passes the flow's policy (which may
//! be newer than the connection): [`crate::Gateway::reuse`].
//!
//! Bounded in total (`limits.pool_max_idle`) and per destination
//! (`limits.pool_max_idle_per_host`); past either bound the oldest idle
//! connection is closed. A timer closes connections idle for
//! `limits.pool_idle_timeout` whether or not another request comes. Every
//! operation is a map lookup plus an ordered-index update (O(log n)), never
//! a scan of the pool.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use hyper::client::conn::http1::SendRequest;
use sluice_observe::Metrics;
use sluice_policy::{Destination, model::Limits};

use super::ProxyBody;
use crate::{Gateway, flow::Flow};

/// Destination, port and the route's name: a connection made by one
/// route never carries a flow of another.
pub(super) type PoolKey = (Destination, u16, Arc<str>);

struct Pooled {
    sender: SendRequest<ProxyBody>,
    peer: SocketAddr,
    /// The record's `route` of the flow that made it.
    route: Arc<str>,
    since: Instant,
    /// Its place in [`Idle::order`].
    seq: u64,
}

/// The idle connections: per destination oldest first, and every one in
/// the order it became idle (for the total bound and the timer).
#[derive(Default)]
struct Idle {
    by_key: HashMap<PoolKey, VecDeque<Pooled>>,
    order: BTreeMap<u64, PoolKey>,
    next_seq: u64,
}

impl Idle {
    /// Drops the oldest idle connection of all (closing it).
    fn evict_oldest(&mut self) {
        let Some((seq, key)) = self.order.pop_first() else {
            return;
        };
        if let Some(list) = self.by_key.get_mut(&key) {
            if let Some(i) = list.iter().position(|p| p.seq == seq) {
                list.remove(i);
            }
            if list.is_empty() {
                self.by_key.remove(&key);
            }
        }
    }

    fn len(&self) -> usize {
        self.order.len()
    }
}

/// The pool.
pub(super) struct Pool {
    idle: Mutex<Idle>,
    max_idle: usize,
    max_per_host: usize,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Pool {
    /// An empty pool bounded by `limits`; the idle count goes to `metrics`.
    /// Starts its expiry timer (it ends when the pool is dropped).
    pub(super) fn start(limits: &Limits, metrics: Arc<Metrics>) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            idle: Mutex::new(Idle::default()),
            max_idle: limits.pool_max_idle as usize,
            max_per_host: limits.pool_max_idle_per_host as usize,
            idle_timeout: limits.pool_idle_timeout,
            metrics,
        });
        tokio::spawn(expire_every(Arc::downgrade(&pool)));
        pool
    }

    /// A ready connection for `key` that the flow's policy lets it use.
    pub(super) fn checkout(
        &self,
        key: &PoolKey,
        gw: &Gateway,
        flow: &mut Flow,
    ) -> Option<(SendRequest<ProxyBody>, SocketAddr)> {
        let mut idle = self.idle.lock().ok()?;
        let now = Instant::now();
        let p = loop {
            let list = idle.by_key.get_mut(key)?;
            // The most recently used first; closed, expired or (rarely) not
            // ready for another request: dropped.
            let Some(p) = list.pop_back() else {
                idle.by_key.remove(key);
                break None;
            };
            if list.is_empty() {
                idle.by_key.remove(key);
            }
            idle.order.remove(&p.seq);
            if !p.sender.is_closed()
                && p.sender.is_ready()
                && now.duration_since(p.since) < self.idle_timeout
            {
                break Some(p);
            }
        };
        self.metrics.set_pool_idle(idle.len());
        drop(idle);
        let p = p?;
        gw.reuse(flow, p.peer, p.route)
            .then_some((p.sender, p.peer))
    }

    /// Returns a connection for the next request to `key`.
    pub(super) fn checkin(
        &self,
        key: PoolKey,
        sender: SendRequest<ProxyBody>,
        peer: SocketAddr,
        route: Arc<str>,
    ) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let seq = idle.next_seq;
        idle.next_seq += 1;
        let list = idle.by_key.entry(key.clone()).or_default();
        let oldest_of_key = if list.len() >= self.max_per_host {
            list.pop_front().map(|p| p.seq)
        } else {
            None
        };
        list.push_back(Pooled {
            sender,
            peer,
            route,
            since: Instant::now(),
            seq,
        });
        if let Some(old) = oldest_of_key {
            idle.order.remove(&old);
        }
        idle.order.insert(seq, key);
        while idle.len() > self.max_idle {
            idle.evict_oldest();
        }
        self.metrics.set_pool_idle(idle.len());
    }

    /// Closes every connection idle for the idle timeout (and those the
    /// origin closed meanwhile, when they come up).
    fn expire(&self, now: Instant) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        while let Some((&seq, key)) = idle.order.first_key_value() {
            let key = key.clone();
            let expired = idle
                .by_key
                .get(&key)
                .and_then(|l| l.iter().find(|p| p.seq == seq))
                .is_none_or(|p| {
                    now.duration_since(p.since) >= self.idle_timeout || p.sender.is_closed()
                });
            if !expired {
                break;
            }
            idle.evict_oldest();
        }
        self.metrics.set_pool_idle(idle.len());
    }
}

/// The expiry timer: ticks a few times per idle timeout (at most once a
/// second, at least every 50 ms) until the pool is dropped.
async fn expire_every(pool: Weak<Pool>) {
    let period = match pool.upgrade() {
        Some(p) => (p.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.expire(Instant::now());
    }
}
