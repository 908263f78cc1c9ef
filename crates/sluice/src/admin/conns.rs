//! Admin connections and who makes room for whom.
//!
//! Admin serves [`MAX_CONNECTIONS`] connections at once. When one more
//! arrives, the connection idle the longest (no request in progress, no
//! live stream) is closed to make room, so idle keep-alives, slow or
//! silent clients and stream subscribers can never keep a liveness probe
//! (`/healthz`, `/readyz`, `/metrics`) out: live streams are capped by
//! `admin.max_streams`, at most 96, and every other connection is idle but
//! for the moment it is answered. The accept loop's hard cap is
//! [`MAX_CONNECTIONS`] + [`RESERVE`]: the reserve holds new connections
//! while the ones closed for them finish.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

/// Admin connections served before the idlest is closed for a new one.
pub const MAX_CONNECTIONS: usize = 128;

/// Connections admitted beyond [`MAX_CONNECTIONS`] while the connections
/// closed to make room for them finish: a burst of this many new
/// connections is admitted even before the admin thread has run any of
/// the connections it closes.
pub const RESERVE: usize = 128;

/// How long a connection closed to make room may finish the answer it is
/// writing (or the request head it is reading) before it is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The open admin connections.
#[derive(Debug)]
pub struct Conns {
    start: Instant,
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
}

/// One admin connection's state, shared by its requests.
#[derive(Debug)]
pub struct Conn {
    /// Requests in progress and live streams.
    busy: AtomicU32,
    /// Whether a request ever reached it.
    used: AtomicBool,
    /// When it last finished something, in ms since [`Conns::start`].
    last: AtomicU64,
    close: Notify,
    start: Instant,
    id: u64,
}

/// A connection's place in the table, held by its task: leaves the table
/// when dropped.
#[derive(Debug)]
pub struct Member {
    conn: Arc<Conn>,
    conns: Arc<Conns>,
}

/// Marks a connection busy (a request in progress, a live stream) while
/// held.
#[derive(Debug)]
pub struct Busy(Arc<Conn>);

// === impl Conns ===

impl Conns {
    /// No connections yet.
    pub fn new() -> Arc<Conns> {
        Arc::new(Conns {
            start: Instant::now(),
            next: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Registers a new connection; when that makes more than
    /// [`MAX_CONNECTIONS`], tells the idlest other one to close.
    pub fn join(self: &Arc<Self>) -> Member {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            busy: AtomicU32::new(0),
            used: AtomicBool::new(false),
            last: AtomicU64::new(0),
            close: Notify::new(),
            start: self.start,
            id,
        });
        conn.last.store(conn.now_ms(), Ordering::Relaxed);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.insert(id, conn.clone());
        if open.len() > MAX_CONNECTIONS {
            let idlest = open
                .values()
                .filter(|c| c.id != id && c.busy.load(Ordering::SeqCst) == 0)
                .min_by_key(|c| c.last.load(Ordering::Relaxed))
                .map(|c| c.id);
            // Out of the table at once, so it is not chosen twice.
            if let Some(victim) = idlest.and_then(|v| open.remove(&v)) {
                tracing::debug!("admin: closing the idlest connection for a new one");
                victim.close.notify_one();
            }
        }
        drop(open);
        Member {
            conn,
            conns: self.clone(),
        }
    }

    /// Connections registered (closing ones excluded).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.lock().map_or(0, |o| o.len())
    }
}

// === impl Conn ===

impl Conn {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Marks the connection busy until the guard drops.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.used.store(true, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// Whether a request ever reached this connection: one that never had
    /// one has no answer to finish and can be dropped at once.
    pub fn used(&self) -> bool {
        self.used.load(Ordering::SeqCst)
    }

    /// Resolves when the connection must close to make room.
    pub async fn closing(&self) {
        self.close.notified().await;
    }
}

// === impl Member ===

impl Member {
    /// The connection's shared state.
    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Ok(mut open) = self.conns.open.lock() {
            open.remove(&self.conn.id);
        }
    }
}

// === impl Busy ===

impl Drop for Busy {
    fn drop(&mut self) {
        let conn = &self.0;
        conn.last.store(conn.now_ms(), Ordering::Relaxed);
        conn.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_connection_beyond_the_cap_closes_the_idlest_one() {
        let conns = Conns::new();
        let mut held: Vec<Member> = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(conns.join());
            // Distinct idle times.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // The oldest is busy (a stream); the second oldest is the idlest.
        let _stream = held[0].conn().busy();
        let newcomer = conns.join();
        tokio::time::timeout(Duration::from_secs(1), held[1].conn().closing())
            .await
            .unwrap();
        assert_eq!(conns.len(), MAX_CONNECTIONS);
        // The table no longer holds the closed one; dropping it is harmless.
        drop(held.remove(1));
        assert_eq!(conns.len(), MAX_CONNECTIONS);
        drop(newcomer);
        assert_eq!(conns.len(), MAX_CONNECTIONS - 1);
    }
}
