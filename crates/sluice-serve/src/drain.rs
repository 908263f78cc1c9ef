//! Graceful drain: stop accepting, let admitted work finish, then stop
//! what is left. Every piece of admitted work (a connection, a tunnel, a
//! DNS query in flight) holds an [`Active`] guard; [`Drain::wait_idle`]
//! wakes when the last one drops, through a `Notify` rather than a poll.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, watch};

/// The drain state shared by the listeners and the process's run loop.
#[derive(Debug)]
pub struct Drain {
    draining: AtomicBool,
    /// Told to leave: not ready any more, still accepting (the grace
    /// before the drain begins).
    leaving: AtomicBool,
    work: Arc<Work>,
    begin: watch::Sender<bool>,
    stop: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct Work {
    active: AtomicUsize,
    idle: Notify,
}

/// Counts one unit of work as active while held.
#[derive(Debug)]
pub struct Active(Arc<Work>);

// === impl Drain ===

impl Default for Drain {
    fn default() -> Drain {
        Drain::new()
    }
}

impl Drain {
    /// A drain that has not begun.
    pub fn new() -> Drain {
        Drain {
            draining: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
            work: Arc::new(Work::default()),
            begin: watch::channel(false).0,
            stop: watch::channel(false).0,
        }
    }

    /// Whether a drain has begun (`/readyz` answers 503).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Marks the process as leaving before the drain begins: `/readyz`
    /// answers 503 so that load balancers stop sending, while listeners
    /// still accept what is already on its way.
    pub fn leave(&self) {
        self.leaving.store(true, Ordering::SeqCst);
    }

    /// Whether the process is leaving or draining (not ready).
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::SeqCst) || self.is_draining()
    }

    /// Begins draining: accept loops end, listeners close idle keep-alives.
    pub fn begin(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.begin.send_replace(true);
    }

    /// Stops all work still open (the drain deadline passed).
    pub fn stop_all(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves when draining begins.
    pub fn began(&self) -> impl Future<Output = ()> + Send + 'static {
        wait_true(self.begin.subscribe())
    }

    /// Whether open work must stop (the drain deadline passed): work
    /// dropped now ends because of the drain, not its peer.
    pub fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves when open work must stop.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        wait_true(self.stop.subscribe())
    }

    /// Marks one unit of work active until the guard drops.
    pub fn active(&self) -> Active {
        self.work.active.fetch_add(1, Ordering::SeqCst);
        Active(self.work.clone())
    }

    /// Units of work still open.
    pub fn active_count(&self) -> usize {
        self.work.active.load(Ordering::SeqCst)
    }

    /// Waits until no work is active or `timeout` passes; true if idle.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the count is read, so a guard dropped in
            // between still wakes this waiter.
            let idle = self.work.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.active_count() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.active_count() == 0;
            }
        }
    }
}

async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

// === impl Active ===

impl Drop for Active {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wait_idle_wakes_when_the_last_guard_drops() {
        let d = Arc::new(Drain::new());
        assert!(d.wait_idle(Duration::from_secs(1)).await);
        let a = d.active();
        let b = d.active();
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.wait_idle(Duration::from_secs(60)).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(a);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        drop(b);
        assert!(waiter.await.unwrap());
        let _c = d.active();
        assert!(!d.wait_idle(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn begin_and_stop_resolve_their_futures() {
        let d = Drain::new();
        let began = d.began();
        assert!(!d.is_draining());
        d.begin();
        began.await;
        assert!(d.is_draining());
        let stopped = d.stopped();
        assert!(!d.is_stopped());
        d.stop_all();
        stopped.await;
        assert!(d.is_stopped());
    }
}
