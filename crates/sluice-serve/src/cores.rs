//! Per-core serving: one thread a core, each running a current-thread tokio
//! runtime, and each TCP listener accepted on every core, so that a
//! connection, and what it spawns (a tunnel), stays on the thread that
//! accepted it: no work stealing, no wake-up from another thread, no lock
//! of a shared run queue.
//!
//! Every core accepts from the one socket the caller bound (port 0 works),
//! each through a descriptor of its own (`dup`) registered with its own
//! reactor: a new connection goes to whichever core takes it first, so a
//! core that is busy or descheduled leaves it to the other. One
//! `SO_REUSEPORT` socket a core was built and measured first: the kernel
//! then hashes each connection to one core's queue, where it waits out
//! that core's time slice even when the other core is idle. On this 2-vCPU
//! machine, shared with the load generator, that was worse at p99 in two
//! of three sittings against tokio's multi-thread runtime; the shared
//! socket was better in CPU per tunnel, rate and p99 (bench/README.md,
//! "Per-core runtimes and syscalls per tunnel"). The price is an `accept` that finds nothing
//! when both cores wake for one connection.
//!
//! Everything shared stays shared: one connection limiter, one drain.
//!
//! CPU-heavy connections leave their core for the inspection pool
//! ([`Cores::offload`]): a multi-thread runtime on threads of its own
//! (`sluice-heavy-N`). A core is cooperative: a poll that spends
//! milliseconds (a TLS handshake with a leaf signed for it, a DLP scan of
//! an upload's chunks) holds every other connection of that core for as
//! long, and none can move. Threads of the pool are the kernel's to
//! preempt: a core that wakes for a cheap tunnel gets the CPU back in
//! its wake-up latency, not after the poll. Measured with bench/hol.sh
//! (bench/README.md, "CPU-heavy inspection and per-core runtimes").

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    runtime::Handle,
    sync::oneshot,
};

use crate::{ConnLimiter, Drain, Slot, run_tcp_with};

/// How long a core's runtime waits for blocking work (a password check)
/// when the process stops.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// The per-core runtimes, and the inspection pool beside them.
#[derive(Debug)]
pub struct Cores {
    handles: Vec<Handle>,
    pool: Handle,
    stops: Mutex<Vec<oneshot::Sender<()>>>,
}

// === impl Cores ===

impl Cores {
    /// Starts `n` threads (at least one), `sluice-core-0` …, each with a
    /// current-thread runtime that runs until [`Cores::stop`], and the
    /// inspection pool: a multi-thread runtime of `n` workers,
    /// `sluice-heavy-0` ….
    pub fn start(n: usize) -> io::Result<Arc<Cores>> {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        let pool = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .thread_name_fn(|| {
                static NEXT: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("sluice-heavy-{i}")
            })
            .enable_all()
            .build()?;
        let pool_handle = pool.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        stops.push(stop);
        // Owned by a thread of its own, as the cores are: a runtime may
        // not be dropped from async code, where `Cores` may go.
        std::thread::Builder::new()
            .name("sluice-heavy".into())
            .spawn(move || {
                pool.block_on(async {
                    let _ = stopped.await;
                });
                pool.shutdown_timeout(STOP_WAIT);
            })?;
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("sluice-core-{i}"))
                .spawn(move || {
                    // Ends when told to stop (or when `Cores` is gone).
                    rt.block_on(async {
                        tokio::select! {
                            _ = stopped => {}
                            () = pacemaker() => {}
                        }
                    });
                    rt.shutdown_timeout(STOP_WAIT);
                })?;
        }
        Ok(Arc::new(Cores {
            handles,
            pool: pool_handle,
            stops: Mutex::new(stops),
        }))
    }

    /// Runs `task` on the inspection pool and waits for its output there
    /// (`None` if it panicked or the pool stopped first). For the whole
    /// of a CPU-heavy connection, whose sockets the task registers anew
    /// on the pool (`into_std`, then `from_std` inside the task): every
    /// poll of it then runs on the pool's threads.
    pub async fn offload<T, F>(&self, task: F) -> Option<T>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        self.pool.spawn(task).await.ok()
    }

    /// How many cores serve.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Never: [`Cores::start`] starts at least one.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Stops every core's runtime and the pool; tasks still on them are
    /// dropped.
    pub fn stop(&self) {
        if let Ok(mut stops) = self.stops.lock() {
            stops.clear();
        }
    }
}

impl Drop for Cores {
    fn drop(&mut self) {
        self.stop();
    }
}

/// [`run_tcp_with`] on every core of `cores` (on the calling runtime
/// without them): each core accepts from `listener` through a descriptor
/// of its own; returns when every core's loop has ended (the drain
/// began). A core whose descriptor cannot be made (none left) does not
/// accept; the others do (logged).
pub async fn run_tcp_cores<H, Fut>(
    cores: Option<&Cores>,
    listener: TcpListener,
    limiter: Arc<ConnLimiter>,
    drain: Arc<Drain>,
    on_fd_exhausted: impl Fn() + Clone + Send + 'static,
    handler: H,
) where
    H: FnMut(TcpStream, SocketAddr, Arc<Slot>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(cores) = cores else {
        return run_tcp_with(listener, limiter, drain, on_fd_exhausted, handler).await;
    };
    let sockets = descriptors(listener, cores.len());
    let mut loops = Vec::new();
    for (socket, core) in sockets.into_iter().zip(&cores.handles) {
        let (limiter, drain) = (limiter.clone(), drain.clone());
        let (hook, handler) = (on_fd_exhausted.clone(), handler.clone());
        loops.push(core.spawn(async move {
            // Registered with this core's reactor, so that its accepted
            // sockets are too.
            match TcpListener::from_std(socket) {
                Ok(l) => run_tcp_with(l, limiter, drain, hook, handler).await,
                Err(e) => tracing::error!(error = %e, "cannot serve a listener on its core"),
            }
        }));
    }
    for l in loops {
        let _ = l.await;
    }
}

/// How often a core's pacemaker wakes.
const PACE: Duration = Duration::from_millis(500);

/// Keeps a timer due within [`PACE`] on its core, forever. Why: a
/// current-thread runtime's timer wheel wakes its own thread through its
/// eventfd (a `write` and one more `epoll_wait`) whenever a new timer is
/// due before every timer it slept for — which, without this, is every
/// tunnel's connect timeout (10 s) when the others only had idle timeouts
/// (300 s) or none: `strace -f` showed one `write` a tunnel. With a timer
/// always due within half a second, the tunnels' timers (seconds and
/// longer) never are; it costs two wake-ups a second a core.
async fn pacemaker() {
    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// `first`, and `n - 1` more descriptors of the same socket, as std
/// listeners (not registered with any runtime yet).
fn descriptors(first: TcpListener, n: usize) -> Vec<std::net::TcpListener> {
    let first = match first.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot move a listener to its core");
            return Vec::new();
        }
    };
    let mut all = Vec::with_capacity(n);
    for _ in 1..n {
        match first.try_clone() {
            Ok(d) => all.push(d),
            Err(e) => {
                tracing::warn!(error = %e, listener = ?first.local_addr().ok(), "fewer cores accept on this listener");
                break;
            }
        }
    }
    all.insert(0, first);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{collections::HashSet, sync::Mutex as StdMutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Binds port 0 and serves it on `cores` with `handler` until the
    /// returned drain begins: the address, the drain and the server task.
    async fn serve_on<H, Fut>(
        cores: &Arc<Cores>,
        limiter: Arc<ConnLimiter>,
        handler: H,
    ) -> (SocketAddr, Arc<Drain>, tokio::task::JoinHandle<()>)
    where
        H: FnMut(TcpStream, SocketAddr, Arc<Slot>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let l = crate::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let at = l.local_addr().unwrap();
        let drain = Arc::new(Drain::new());
        let server = {
            let (cores, drain) = (cores.clone(), drain.clone());
            tokio::spawn(async move {
                run_tcp_cores(Some(&cores), l, limiter, drain, || {}, handler).await;
            })
        };
        (at, drain, server)
    }

    /// A listener bound to port 0 is served on two cores: while one core
    /// is busy the other accepts, each connection is handled on the core
    /// thread that accepted it (and what it spawns stays there), the
    /// shared limiter counts them all, and the loops end when the drain
    /// begins.
    #[tokio::test]
    async fn serves_a_port_0_listener_on_every_core() {
        let cores = Cores::start(2).unwrap();
        let limiter = ConnLimiter::new(1000, 1000);
        let threads = Arc::new(StdMutex::new(HashSet::new()));
        let seen = threads.clone();
        // The first connection blocks its core's thread (a test-only
        // stand-in for a core that is busy) until a second one arrives,
        // which only the other core can then accept.
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let first_two = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (entered, mut blocked) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (at, drain, server) =
            serve_on(&cores, limiter.clone(), move |s: TcpStream, _, _slot| {
                let seen = seen.clone();
                let (barrier, first_two) = (barrier.clone(), first_two.clone());
                let entered = entered.clone();
                async move {
                    let k = first_two.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if k == 0 {
                        let _ = entered.send(());
                    }
                    if k < 2 {
                        barrier.wait();
                    }
                    echo_on_this_core(s, &seen).await;
                }
            })
            .await;
        let within = Duration::from_secs(5);
        let mut held = Vec::new();
        let mut c0 = TcpStream::connect(at).await.unwrap();
        c0.write_all(&[200]).await.unwrap();
        tokio::time::timeout(within, blocked.recv()).await.unwrap();
        let mut c1 = TcpStream::connect(at).await.unwrap();
        c1.write_all(&[201]).await.unwrap();
        for (c, i) in [(&mut c0, 200), (&mut c1, 201)] {
            let mut b = [0u8; 1];
            tokio::time::timeout(within, c.read_exact(&mut b))
                .await
                .expect("the other core did not accept while one was busy")
                .unwrap();
            assert_eq!(b[0], i);
        }
        held.extend([c0, c1]);
        for i in 0..62u8 {
            let mut c = TcpStream::connect(at).await.unwrap();
            c.write_all(&[i]).await.unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).await.unwrap();
            assert_eq!(b[0], i);
            held.push(c);
        }
        assert_eq!(limiter.open(), 64);
        let names = threads.lock().unwrap().clone();
        let expected: HashSet<_> = ["sluice-core-0", "sluice-core-1"]
            .iter()
            .map(|n| Some((*n).to_owned()))
            .collect();
        assert_eq!(names, expected, "the clients did not reach both cores");
        drain.begin();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
        drop(held);
        assert!(drain.wait_idle(Duration::from_secs(5)).await);
        assert_eq!(limiter.open(), 0);
        // Every core's descriptor of the socket is closed: the address is
        // free again.
        std::net::TcpListener::bind(at).unwrap();
        cores.stop();
    }

    /// Echoes one byte back and holds the connection (with its slot) until
    /// the client closes; notes the core thread it ran on in `seen`, after
    /// checking that a task it spawns (as a tunnel is) runs there too.
    async fn echo_on_this_core(mut s: TcpStream, seen: &StdMutex<HashSet<Option<String>>>) {
        let name = std::thread::current().name().map(str::to_owned);
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).await.is_err() {
            return;
        }
        let there = tokio::spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .ok()
            .flatten();
        assert_eq!(name, there);
        if let Ok(mut seen) = seen.lock() {
            seen.insert(name);
        }
        let _ = s.write_all(&b).await;
        let _ = s.read(&mut b).await;
    }

    /// A connection whose handler offloads two seconds of CPU (a
    /// stand-in for a TLS handshake or a DLP scan) leaves its one core
    /// free: a second connection to that core is echoed at once, while
    /// the first is still busy on a pool thread. On the core itself, the
    /// second would wait the two seconds.
    #[tokio::test]
    async fn offloaded_work_leaves_the_core_free() {
        let cores = Cores::start(1).unwrap();
        let pool = cores.clone();
        let (at, drain, server) = serve_on(
            &cores,
            ConnLimiter::new(10, 10),
            move |mut s: TcpStream, _, _| {
                let pool = pool.clone();
                async move {
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    if b[0] == 1 {
                        let s = s.into_std().unwrap();
                        pool.offload(async move {
                            let name = std::thread::current().name().map(str::to_owned);
                            let spun = std::time::Instant::now();
                            while spun.elapsed() < Duration::from_secs(2) {
                                std::hint::spin_loop();
                            }
                            let mut s = TcpStream::from_std(s).unwrap();
                            let on_pool = name.is_some_and(|n| n.starts_with("sluice-heavy-"));
                            let _ = s.write_all(&[u8::from(on_pool)]).await;
                        })
                        .await;
                    } else {
                        let _ = s.write_all(&b).await;
                    }
                }
            },
        )
        .await;
        let mut busy = TcpStream::connect(at).await.unwrap();
        busy.write_all(&[1]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = std::time::Instant::now();
        let mut cheap = TcpStream::connect(at).await.unwrap();
        cheap.write_all(&[2]).await.unwrap();
        let mut b = [0u8; 1];
        cheap.read_exact(&mut b).await.unwrap();
        assert_eq!(b[0], 2);
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the core waited for the offloaded work: {:?}",
            t0.elapsed()
        );
        busy.read_exact(&mut b).await.unwrap();
        assert_eq!(b[0], 1, "the work did not run on a pool thread");
        drain.begin();
        server.await.unwrap();
        cores.stop();
    }

    /// A second server on the same port still fails to bind while the
    /// cores serve it.
    #[tokio::test]
    async fn another_bind_of_the_port_fails() {
        let cores = Cores::start(2).unwrap();
        let (at, drain, server) =
            serve_on(&cores, ConnLimiter::new(10, 10), |_s, _, _| async {}).await;
        // Served: the handler takes the connection and closes it.
        let mut c = TcpStream::connect(at).await.unwrap();
        let mut b = Vec::new();
        c.read_to_end(&mut b).await.unwrap();
        assert!(crate::bind(at).await.is_err());
        drain.begin();
        server.await.unwrap();
    }
}
