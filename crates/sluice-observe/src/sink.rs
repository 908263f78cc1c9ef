//! The flow sink: a bounded queue from the data path to one writer thread
//! that appends records as JSON lines to stdout or a file.
//!
//! Sending never waits: a full (or closed) queue drops the record, counts
//! it in `sluice_flow_records_dropped_total` and warns at most once a
//! second. Control messages (reopen, close) travel in the same queue, so
//! they act in order: records sent before a reopen go to the old file,
//! and close writes everything sent before it.
//!
//! Rotation (SIGUSR1) opens the configured path again and retires the old
//! file. When the old file cannot take its last buffered records (ENOSPC:
//! the disk filled up, and rotation is what frees it), those records are
//! counted as dropped, logged once with their number, and the writer moves
//! to the new file anyway: keeping a file that cannot be written would drop
//! every later record until a restart.
//!
//! The writer is a dedicated thread with blocking `std::io` rather than a
//! tokio task: file writes block anyway, and one thread with a `BufWriter`
//! is cheaper than a blocking-pool hop per write.
//!
//! The queue carries each record's JSON ([`FlowRecord::json`]), not the
//! record: the recorder serializes a record once and shares the bytes with
//! the flow bus, which publishes the same JSON.

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

use bytes::Bytes;
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
    /// One record's JSON, without its newline.
    Record(Bytes),
    /// Whole lines (newlines included) of this many records.
    Lines(Bytes, u64),
    Reopen(oneshot::Sender<io::Result<u64>>),
    Close(oneshot::Sender<io::Result<u64>>),
}

/// Dropped records: the counter, and how many the log has not told yet.
#[derive(Debug)]
struct Drops {
    counter: Counter,
    untold: AtomicU64,
    last_told: Mutex<Option<Instant>>,
}

/// How the writer thread opens its output, and opens it again on
/// rotation: [`FlowTarget`] in the gateway; a seam so that tests can hand
/// the writer files that fail (ENOSPC) without filling a disk.
trait Open: std::fmt::Debug + Send + 'static {
    /// What records are written to.
    type File: Write + Send + 'static;

    /// Opens (or creates) the output.
    fn open(&self) -> io::Result<Self::File>;

    /// Whether reopening means anything (not for stdout).
    fn reopens(&self) -> bool;

    /// Makes written data durable.
    fn sync(file: &Self::File) -> io::Result<()>;
}

/// The open output of the writer thread.
struct Output<O: Open> {
    target: O,
    out: BufWriter<O::File>,
}

#[derive(Debug)]
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
    pub fn send(&self, record: &FlowRecord) {
        self.send_json(record.json());
    }

    /// Queues one record's JSON ([`FlowRecord::json`], no newline) for
    /// writing: the recorder serializes once and shares the bytes with the
    /// flow bus. Drops and counts like [`FlowSink::send`]; never waits.
    pub fn send_json(&self, json: Bytes) {
        match self.tx.try_send(Msg::Record(json)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.drops.add(1, "queue full"),
            Err(TrySendError::Closed(_)) => self.drops.add(1, "writer closed"),
        }
    }

    /// Queues `n` records' JSON lines (each ending in a newline) as one
    /// slot and one write; dropped and counted together. Never waits.
    pub fn send_lines(&self, lines: Bytes, n: u64) {
        match self.tx.try_send(Msg::Lines(lines, n)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.drops.add(n, "queue full"),
            Err(TrySendError::Closed(_)) => self.drops.add(n, "writer closed"),
        }
    }
}

// === impl FlowWriter ===

impl FlowWriter {
    /// Closes the file and opens it again by path, for log rotation
    /// (SIGUSR1): after an external rename, new records go to a new file at
    /// the configured path. A no-op for stdout. When the path cannot be
    /// opened, the writer keeps writing to the file it had, and nothing is
    /// lost. When the old file cannot take its buffered records (a full
    /// disk), they are dropped, counted in
    /// `sluice_flow_records_dropped_total` and logged, and the writer moves
    /// on: the answer is how many were lost.
    pub async fn reopen(&self) -> io::Result<u64> {
        self.request(Msg::Reopen).await
    }

    /// Writes every record queued so far, flushes and syncs, and stops the
    /// writer (SIGTERM). Records sent afterwards are dropped and counted.
    pub async fn close(self) -> io::Result<()> {
        self.request(Msg::Close).await.map(drop)
    }

    async fn request(&self, msg: fn(oneshot::Sender<io::Result<u64>>) -> Msg) -> io::Result<u64> {
        let (ack, done) = oneshot::channel();
        self.tx.send(msg(ack)).await.map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }
}

fn stopped() -> io::Error {
    io::Error::other("the flow writer has stopped")
}

fn spawn_writer<O: Open>(
    target: O,
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
fn run<O: Open>(mut rx: mpsc::Receiver<Msg>, mut output: Output<O>, drops: &Drops) {
    let mut last_error = None;
    let mut closing = None;
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Record(json) => {
                    if let Err(e) = output.write(&json) {
                        drops.add(1, "write failed");
                        log_write_error(&mut last_error, &output.target, &e);
                    }
                }
                Msg::Lines(lines, n) => {
                    if let Err(e) = output.out.write_all(&lines) {
                        drops.add(n, "write failed");
                        log_write_error(&mut last_error, &output.target, &e);
                    }
                }
                Msg::Reopen(ack) => {
                    let _ = ack.send(output.reopen(drops));
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
    let result = output.finish(drops);
    if let Some(ack) = closing {
        let _ = ack.send(result.map(|()| 0));
    } else if let Err(e) = result {
        tracing::error!(target = ?output.target, error = %e, "flow log: final flush failed");
    }
}

fn log_write_error(last: &mut Option<Instant>, target: &impl std::fmt::Debug, e: &io::Error) {
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

impl<O: Open> Output<O> {
    fn open(target: O) -> io::Result<Output<O>> {
        let file = target.open()?;
        Ok(Output {
            target,
            out: BufWriter::with_capacity(BUFFER, file),
        })
    }

    /// One line: the JSON and its newline, into the buffer (a write(2)
    /// only when the buffer is full).
    fn write(&mut self, json: &[u8]) -> io::Result<()> {
        self.out.write_all(json)?;
        self.out.write_all(b"\n")
    }

    /// Opens the path again and retires the old file; the number of
    /// records the old file could not take (counted as dropped).
    fn reopen(&mut self, drops: &Drops) -> io::Result<u64> {
        if !self.target.reopens() {
            return Ok(0);
        }
        // Open first: if that fails, keep the old file and lose nothing.
        let file = self.target.open()?;
        let old = std::mem::replace(&mut self.out, BufWriter::with_capacity(BUFFER, file));
        Ok(retire(old, &self.target, drops))
    }

    fn finish(&mut self, drops: &Drops) -> io::Result<()> {
        if let Err(e) = self.out.flush() {
            lose_buffer(&self.out, &self.target, drops, &e, "at close");
            return Err(e);
        }
        O::sync(self.out.get_ref())
    }
}

/// Flushes and syncs a file the writer leaves. Records it cannot take are
/// dropped with it (and counted): its buffer is discarded, not retried.
fn retire<O: Open>(mut old: BufWriter<O::File>, target: &O, drops: &Drops) -> u64 {
    let lost = match old.flush() {
        Ok(()) => {
            if let Err(e) = O::sync(old.get_ref()) {
                tracing::warn!(?target, error = %e, "flow log: cannot sync the old file");
            }
            0
        }
        Err(e) => lose_buffer(&old, target, drops, &e, "on reopen"),
    };
    // Without flushing again (dropping a BufWriter would retry).
    drop(old.into_parts());
    lost
}

/// Counts the whole records left in a buffer that failed to flush (the
/// written part has left it; a record cut short counts as lost) and says so
/// once, with the number.
fn lose_buffer<W: Write>(
    out: &BufWriter<W>,
    target: &impl std::fmt::Debug,
    drops: &Drops,
    e: &io::Error,
    when: &'static str,
) -> u64 {
    let lost = out.buffer().iter().filter(|&&b| b == b'\n').count() as u64;
    drops.counter.inc_by(lost);
    tracing::error!(
        ?target,
        lost,
        error = %e,
        "flow log: {lost} buffered flow records lost {when}: the old file cannot be written"
    );
    lost
}

// === impl FlowTarget ===

impl Open for FlowTarget {
    type File = Dest;

    fn open(&self) -> io::Result<Dest> {
        Dest::open(self)
    }

    fn reopens(&self) -> bool {
        *self != FlowTarget::Stdout
    }

    fn sync(file: &Dest) -> io::Result<()> {
        file.sync()
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
        sink.send(&kept);
        sink.send(&record());
        sink.send(&record());
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
        sink.send(&record());
        assert_eq!(metrics.flow_records_dropped.get(), 3);
        std::fs::remove_file(&path).unwrap();
    }

    /// Files handed out in turn: the first fails every write with ENOSPC
    /// (a full disk), the next ones keep what is written.
    #[derive(Debug, Clone, Default)]
    struct Files {
        opened: Arc<Mutex<u32>>,
        good: Arc<Mutex<Vec<u8>>>,
    }

    #[derive(Debug)]
    struct FakeFile {
        full: bool,
        good: Arc<Mutex<Vec<u8>>>,
    }

    impl Open for Files {
        type File = FakeFile;

        fn open(&self) -> io::Result<FakeFile> {
            let mut n = self.opened.lock().unwrap();
            *n += 1;
            Ok(FakeFile {
                full: *n == 1,
                good: self.good.clone(),
            })
        }

        fn reopens(&self) -> bool {
            true
        }

        fn sync(_: &FakeFile) -> io::Result<()> {
            Ok(())
        }
    }

    impl Write for FakeFile {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.full {
                return Err(io::Error::from_raw_os_error(28));
            }
            self.good.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_reopen_after_a_full_disk_counts_the_lost_buffer_and_moves_on() {
        let metrics = Metrics::new();
        let files = Files::default();
        let (sink, rx) = FlowSink::queue(16, &metrics);
        let writer = spawn_writer(files.clone(), rx, sink.tx.clone(), sink.drops.clone()).unwrap();
        for _ in 0..3 {
            sink.send(&record());
        }
        // The three records sit in the buffer the full file cannot take.
        let lost = writer.reopen().await.unwrap();
        assert_eq!(lost, 3);
        assert_eq!(metrics.flow_records_dropped.get(), 3);
        assert_eq!(*files.opened.lock().unwrap(), 2);

        let after = record();
        sink.send(&after);
        sink.send(&after);
        writer.close().await.unwrap();
        let text = String::from_utf8(files.good.lock().unwrap().clone()).unwrap();
        let lines: Vec<FlowRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, vec![after.clone(), after]);
        assert_eq!(metrics.flow_records_dropped.get(), 3);
    }
}
