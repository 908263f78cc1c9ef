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
//!
//! A pooled connection has no task of its own: its hyper connection state
//! ([`Origin`]) is driven by the exchange that uses it and rests in the
//! pool unpolled. With a task per origin connection (the first design) a
//! keep-alive request woke that task to send the request and was woken
//! back for the response head and body, across runtimes when the client's
//! connection and the origin's were on different cores: an eventfd write
//! and an `epoll_wait` for ~a third of the requests (`strace -c -f` under
//! `bench/ab-http.sh`). The cost of resting unpolled: an origin's close of
//! an idle connection is noticed at its next checkout (or at its expiry),
//! not at once.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll, Waker},
    thread::ThreadId,
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1::{Connection, SendRequest},
};
use hyper_util::rt::TokioIo;
use sluice_observe::Metrics;
use sluice_policy::{Destination, model::Limits};
use tokio::net::TcpStream;

use super::ProxyBody;
use crate::{Gateway, flow::Flow};

/// Destination, port and the route's name: a connection made by one
/// route never carries a flow of another.
pub(super) type PoolKey = (Destination, u16, Arc<str>);

/// hyper's state of one origin connection.
type Conn = Connection<TokioIo<TcpStream>, ProxyBody>;

/// An origin connection: the handle requests are sent on, and who drives
/// the connection.
pub(super) struct Origin {
    pub(super) sender: SendRequest<ProxyBody>,
    driver: Driver,
    /// The thread that made it: its socket is registered with that
    /// thread's reactor (a core's, with per-core runtimes).
    home: ThreadId,
}

enum Driver {
    /// Driven by whoever holds the [`Origin`] (pooled connections).
    Inline(Pin<Box<Conn>>),
    /// Its own task (a WebSocket upgrade's connection, never pooled).
    Spawned,
    /// The connection ended (closed by either side, or failed).
    Ended,
}

impl Origin {
    /// A connection driven by its holder.
    pub(super) fn inline(sender: SendRequest<ProxyBody>, conn: Conn) -> Origin {
        Origin {
            sender,
            driver: Driver::Inline(Box::pin(conn)),
            home: std::thread::current().id(),
        }
    }

    /// A connection whose task was spawned.
    pub(super) fn spawned(sender: SendRequest<ProxyBody>) -> Origin {
        Origin {
            sender,
            driver: Driver::Spawned,
            home: std::thread::current().id(),
        }
    }

    /// The handle to send on, and what drives the connection meanwhile.
    pub(super) fn split(&mut self) -> (&mut SendRequest<ProxyBody>, Drive<'_>) {
        (&mut self.sender, Drive(&mut self.driver))
    }

    /// Ready for another request. An inline connection is polled once
    /// first: that finishes the last response's end (hyper's dispatcher
    /// then asks for the next request) and notices an origin's close.
    fn usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.driver.drive(&mut cx) && !self.sender.is_closed() && self.sender.is_ready()
    }
}

/// Drives an [`Origin`]'s connection while its handle is in use.
pub(super) struct Drive<'a>(&'a mut Driver);

impl Drive<'_> {
    /// Lets the connection make progress (write the request, read the
    /// response); false once it has ended.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        self.0.drive(cx)
    }
}

impl Driver {
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        match self {
            Driver::Inline(conn) => {
                if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "origin connection ended with an error");
                    }
                    *self = Driver::Ended;
                    return false;
                }
                true
            }
            Driver::Spawned => true,
            Driver::Ended => false,
        }
    }
}

/// Where a response body's connection goes back to at the body's end.
pub(super) struct Home {
    pub(super) pool: Arc<Pool>,
    pub(super) key: PoolKey,
    pub(super) peer: SocketAddr,
    pub(super) route: Arc<str>,
}

/// A response body with its origin connection: it drives the connection
/// while the body is read (the connection's reads fill the body), and
/// returns it to the pool when the body has ended. Dropped before its end
/// (the client left), it closes the connection with the response unread.
/// The body passes as hyper's channel delivers it: no second channel.
pub(super) struct Returning {
    body: Incoming,
    origin: Option<Origin>,
    /// `None`: the connection is not to be pooled (an upload that failed
    /// left it mid-message).
    home: Option<Home>,
}

impl Returning {
    pub(super) fn new(body: Incoming, origin: Origin, home: Option<Home>) -> Returning {
        Returning {
            body,
            origin: Some(origin),
            home,
        }
    }

    fn give_back(&mut self) {
        if let (Some(origin), Some(h)) = (self.origin.take(), self.home.take()) {
            h.pool.checkin(h.key, origin, h.peer, h.route);
        }
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let mut polled = Pin::new(&mut this.body).poll_frame(cx);
        if polled.is_pending() {
            if let Some(o) = &mut this.origin {
                o.driver.drive(cx);
            }
            polled = Pin::new(&mut this.body).poll_frame(cx);
        }
        match &polled {
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Err(_))) => this.origin = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        // hyper drops a body it knows is over (its length was sent, or it
        // had none) without polling it to its end.
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}

struct Pooled {
    origin: Origin,
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
    ) -> Option<(Origin, SocketAddr)> {
        let now = Instant::now();
        // The most recently used first; expired, closed or (rarely) not
        // ready for another request: dropped (closing it). Checked outside
        // the lock: `usable` polls the connection.
        let p = loop {
            let mut p = self.pop(key)?;
            if now.duration_since(p.since) < self.idle_timeout && p.origin.usable() {
                break p;
            }
        };
        gw.reuse(flow, p.peer, p.route)
            .then_some((p.origin, p.peer))
    }

    /// The most recently used idle connection for `key` that this thread
    /// made, else the most recently used of all, out of the pool. A
    /// connection made on another core is driven from this one, but its
    /// socket's readiness comes from the other core's reactor, which then
    /// has to wake this core (an eventfd write) for each response: that
    /// cost more than the task per connection it replaced (bench/README.md,
    /// "keep-alive, third round"). At most `pool_max_idle_per_host` looked at.
    fn pop(&self, key: &PoolKey) -> Option<Pooled> {
        let here = std::thread::current().id();
        let mut idle = self.idle.lock().ok()?;
        let list = idle.by_key.get_mut(key)?;
        let mine = list.iter().rposition(|p| p.origin.home == here);
        let p = match mine {
            Some(i) => list.remove(i),
            None => list.pop_back(),
        };
        if list.is_empty() {
            idle.by_key.remove(key);
        }
        if let Some(p) = &p {
            idle.order.remove(&p.seq);
        }
        self.metrics.set_pool_idle(idle.len());
        p
    }

    /// Returns a connection for the next request to `key`.
    pub(super) fn checkin(&self, key: PoolKey, origin: Origin, peer: SocketAddr, route: Arc<str>) {
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
            origin,
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
                    now.duration_since(p.since) >= self.idle_timeout || p.origin.sender.is_closed()
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
