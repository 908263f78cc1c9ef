//! The flow sink: a bounded queue from the data path to one writer thread
//! that appends records as JSON lines to stdout or a file.
//!
//! Sending never waits: a full (or closed) queue drops the record, counts
//! it in `sluice_flow_records_dropped_total` and warns at most once a
//! second. Control messages (reopen, close) travel in the same queue, so
//! they act in order: records sent before a reopen go to the old file,
//! and close writes everything sent before it.
//!
//! The writer is a dedicated thread with blocking `std::io` rather than a
//! tokio task: file writes block anyway, and one thread with a `BufWriter`
//! is cheaper than a blocking-pool hop per write.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{
    mpsc::{self, error::TrySendError},
    oneshot,
};

use crate::{FlowRecord, Metrics};

/// The default queue capacity, in records.
pub const DEFAULT_CAPACITY: usize = 65_536;

/// How long the writer lets records gather after writing a batch (see
/// `run`). At 100,000 records/s a pause fills under 2% of the queue.
const BATCH_PAUSE: Duration = Duration::from_millis(10);

/// How often a drop or write failure may be logged.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The writer's buffer, in bytes.
const BUFFER: usize = 64 * 1024;

/// Where flow records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowTarget {
    /// Standard output (diagnostics go to stderr, never here).
    Stdout,
    /// A file, created if missing and appended to.
    File(PathBuf),
}

/// The data path's handle: cheap to clone, and [`FlowSink::send`] never
/// blocks.
#[derive(Debug, Clone)]
pub struct FlowSink {
    tx: mpsc::Sender<Msg>,
    drops: Arc<Drops>,
}

/// The control handle of the writer thread, for the binary's signal
/// handlers.
#[derive(Debug)]
pub struct FlowWriter {
    tx: mpsc::Sender<Msg>,
}

#[derive(Debug)]
enum Msg {
    Record(Arc<FlowRecord>),
    Reopen(oneshot::Sender<io::Result<()>>),
    Close(oneshot::Sender<io::Result<()>>),
}

/// Dropped records: the counter, and how many the log has not told yet.
#[derive(Debug)]
struct Drops {
    counter: Counter,
    untold: AtomicU64,
    last_told: Mutex<Option<Instant>>,
}

/// The open output of the writer thread.
struct Output {
    target: FlowTarget,
    out: BufWriter<Dest>,
}

enum Dest {
    Stdout(io::Stdout),
    File(File),
}

// === impl FlowSink ===

impl FlowSink {
    /// Opens `target` and starts the writer thread behind a queue of
    /// `capacity` records (at least 1). Dropped records are counted in
    /// `metrics`.
    pub fn start(
        target: FlowTarget,
        capacity: usize,
        metrics: &Metrics,
    ) -> io::Result<(FlowSink, FlowWriter)> {
        let (sink, rx) = FlowSink::queue(capacity, metrics);
        let writer = spawn_writer(target, rx, sink.tx.clone(), sink.drops.clone())?;
        Ok((sink, writer))
    }

    /// The queue alone; the writer is started separately so tests can fill
    /// the queue before anything consumes it.
    fn queue(capacity: usize, metrics: &Metrics) -> (FlowSink, mpsc::Receiver<Msg>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let drops = Arc::new(Drops {
            counter: metrics.flow_records_dropped.clone(),
            untold: AtomicU64::new(0),
            last_told: Mutex::new(None),
        });
        (FlowSink { tx, drops }, rx)
    }

    /// Queues `record` for writing, or drops and counts it when the queue
    /// is full or the writer has closed. Never waits.
    pub fn send(&self, record: FlowRecord) {
        self.send_shared(Arc::new(record));
    }

    /// [`FlowSink::send`] for a record that is also kept elsewhere (the
    /// admin view): no copy.
    pub fn send_shared(&self, record: Arc<FlowRecord>) {
        match self.tx.try_send(Msg::Record(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.drops.add(1, "queue full"),
            Err(TrySendError::Closed(_)) => self.drops.add(1, "writer closed"),
        }
    }
}

// === impl FlowWriter ===

impl FlowWriter {
    /// Closes the file and opens it again by path, for log rotation
    /// (SIGUSR1): after an external rename, new records go to a new file at
    /// the configured path. A no-op for stdout. On failure the writer keeps
    /// writing to the file it had, and nothing is lost.
    pub async fn reopen(&self) -> io::Result<()> {
        self.request(Msg::Reopen).await
    }

    /// Writes every record queued so far, flushes and syncs, and stops the
    /// writer (SIGTERM). Records sent afterwards are dropped and counted.
    pub async fn close(self) -> io::Result<()> {
        self.request(Msg::Close).await
    }

    async fn request(&self, msg: fn(oneshot::Sender<io::Result<()>>) -> Msg) -> io::Result<()> {
        let (ack, done) = oneshot::channel();
        self.tx.send(msg(ack)).await.map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }
}

fn stopped() -> io::Error {
    io::Error::other("the flow writer has stopped")
}

fn spawn_writer(
    target: FlowTarget,
    rx: mpsc::Receiver<Msg>,
    tx: mpsc::Sender<Msg>,
    drops: Arc<Drops>,
) -> io::Result<FlowWriter> {
    let output = Output::open(target)?;
    thread::Builder::new()
        .name("sluice-flows".into())
        .spawn(move || run(rx, output, &drops))?;
    Ok(FlowWriter { tx })
}

/// The writer thread: write what is queued, flush when the queue is
/// momentarily empty, stop when it is closed and drained.
fn run(mut rx: mpsc::Receiver<Msg>, mut output: Output, drops: &Drops) {
    let mut line = Vec::with_capacity(1024);
    let mut last_error = None;
    let mut closing = None;
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Record(record) => {
                    if let Err(e) = output.write(&record, &mut line) {
                        drops.add(1, "write failed");
                        log_write_error(&mut last_error, &output.target, &e);
                    }
                }
                Msg::Reopen(ack) => {
                    let _ = ack.send(output.reopen());
                }
                Msg::Close(ack) => {
                    // Refuse new records; those already queued still arrive.
                    rx.close();
                    closing = Some(ack);
                }
            }
            next = rx.try_recv().ok();
        }
        // The queue is momentarily empty: now is the time to flush.
        if let Err(e) = output.out.flush() {
            log_write_error(&mut last_error, &output.target, &e);
        }
        // Let records gather before waiting again: under load this turns a
        // wake-up and a write(2) per record into one per pause, and the data
        // path's sends find no parked writer to wake. A record waits at most
        // this long; closing and reopening wait at most this long too.
        if closing.is_none() {
            thread::sleep(BATCH_PAUSE);
        }
    }
    let result = output.finish();
    if let Some(ack) = closing {
        let _ = ack.send(result);
    } else if let Err(e) = result {
        tracing::error!(target = ?output.target, error = %e, "flow log: final flush failed");
    }
}

fn log_write_error(last: &mut Option<Instant>, target: &FlowTarget, e: &io::Error) {
    if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
        *last = Some(Instant::now());
        tracing::error!(?target, error = %e, "flow log: write failed");
    }
}

// === impl Drops ===

impl Drops {
    fn add(&self, n: u64, cause: &'static str) {
        self.counter.inc_by(n);
        self.untold.fetch_add(n, Ordering::Relaxed);
        // try_lock: whoever holds it is about to log; never wait for it.
        let Ok(mut last) = self.last_told.try_lock() else {
            return;
        };
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            let dropped = self.untold.swap(0, Ordering::Relaxed);
            tracing::warn!(dropped, cause, "flow records dropped");
        }
    }
}

// === impl Output ===

impl Output {
    fn open(target: FlowTarget) -> io::Result<Output> {
        let dest = Dest::open(&target)?;
        Ok(Output {
            target,
            out: BufWriter::with_capacity(BUFFER, dest),
        })
    }

    fn write(&mut self, record: &FlowRecord, line: &mut Vec<u8>) -> io::Result<()> {
        line.clear();
        record.write_json(line);
        line.push(b'\n');
        self.out.write_all(line)
    }

    fn reopen(&mut self) -> io::Result<()> {
        if self.target == FlowTarget::Stdout {
            return Ok(());
        }
        // Open first: if that fails, keep the old file and lose nothing.
        let dest = Dest::open(&self.target)?;
        self.out.flush()?;
        let old = std::mem::replace(&mut self.out, BufWriter::with_capacity(BUFFER, dest));
        old.get_ref().sync()
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync()
    }
}

// === impl Dest ===

impl Dest {
    fn open(target: &FlowTarget) -> io::Result<Dest> {
        match target {
            FlowTarget::Stdout => Ok(Dest::Stdout(io::stdout())),
            FlowTarget::File(path) => {
                let mut options = OpenOptions::new();
                options.create(true).append(true);
                // Flow logs say who talked to whom: not for every local user.
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
                options.open(path).map(Dest::File)
            }
        }
    }

    fn sync(&self) -> io::Result<()> {
        match self {
            Dest::Stdout(_) => Ok(()),
            Dest::File(f) => f.sync_data(),
        }
    }
}

impl Write for Dest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Dest::Stdout(s) => s.write(buf),
            Dest::File(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Dest::Stdout(s) => s.flush(),
            Dest::File(f) => f.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::{Listener, Protocol};

    fn record() -> FlowRecord {
        let src = "10.0.1.7:40000".parse().unwrap();
        FlowRecord::new(Listener::Socks5, Protocol::Socks5, src, UNIX_EPOCH)
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let metrics = Metrics::new();
        let path =
            std::env::temp_dir().join(format!("sluice-observe-drop-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        // Nothing consumes yet: the first record fills the queue.
        let (sink, rx) = FlowSink::queue(1, &metrics);
        let kept = record();
        sink.send(kept.clone());
        sink.send(record());
        sink.send(record());
        assert_eq!(metrics.flow_records_dropped.get(), 2);

        let writer = spawn_writer(
            FlowTarget::File(path.clone()),
            rx,
            sink.tx.clone(),
            sink.drops.clone(),
        )
        .unwrap();
        writer.close().await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<FlowRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, vec![kept]);

        // After close, records are dropped and counted too.
        sink.send(record());
        assert_eq!(metrics.flow_records_dropped.get(), 3);
        std::fs::remove_file(&path).unwrap();
    }
}
