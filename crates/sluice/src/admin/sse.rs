//! `/api/v1/flows/stream`: finished flows as Server-Sent Events, one
//! `event: flow` per record matching the request's filters.
//!
//! One encoder task takes the view's live records, gathers them for
//! [`BATCH`], writes each record's frame once, and broadcasts the batch
//! (the frames back to back in one shared buffer) to every subscriber. A
//! subscriber task sends an unfiltered stream the batch's buffer as it is
//! (no copy), a filtered one the frames that match, into a small channel
//! that is the response body; it ends when the client goes away (the body
//! is dropped). So the record path wakes one task per batch whatever the
//! number of subscribers, a record is serialized once, and each subscriber
//! costs one wake-up and one write a batch rather than per record.
//! Before this (a serialization, a wake-up and a write per record and
//! subscriber, on the proxy's runtime) 96 subscribers kept 0.18-0.23 of
//! the keep-alive HTTP rate through the proxy; with it, and admin on its
//! own low-priority thread, 0.64-0.75 (`bench/sse-subscribers.sh BIN 0
//! 96`, figures in bench/README.md).
//!
//! A subscriber that falls behind skips whole batches and is told how many
//! records it missed with an `event: lagged` (records carry sequence
//! numbers, so the count is exact); the encoder, if it falls behind the
//! view, skips records the same way. Neither ever slows the record path.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use hyper::body::{Body, Frame};
use sluice_observe::{FlowFilter, FlowRecord, FlowView};
use tokio::sync::{
    broadcast::{self, error::RecvError, error::TryRecvError},
    mpsc,
};

use super::conns::Busy;

/// A comment line sent when nothing else was, so proxies and clients see
/// the stream is alive.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// How long the encoder gathers records into one batch: the most a live
/// event is delayed, and at most 50 wake-ups a second per subscriber.
const BATCH: Duration = Duration::from_millis(20);

/// Records in one batch at most (the view's live backlog): bounds a
/// batch's memory.
const MAX_BATCH: usize = 1024;

/// Batches a subscriber may fall behind before it skips.
const BACKLOG: usize = 16;

/// Frames queued for one response body.
const BODY_QUEUE: usize = 2;

/// The live streams: the encoder's broadcast and the count of open
/// streams, for `admin.max_streams`.
#[derive(Debug)]
pub struct Live {
    open: Arc<AtomicUsize>,
    batches: broadcast::Sender<Arc<Batch>>,
}

/// Consecutive finished flows, each serialized once.
#[derive(Debug)]
struct Batch {
    /// The sequence number of the first record.
    first: u64,
    /// Every record's SSE frame, back to back.
    frames: Bytes,
    /// Per record: the end of its frame in `frames`, and the record (for
    /// filters).
    records: Vec<(usize, Arc<FlowRecord>)>,
}

/// The response body: frames from the subscriber task.
pub struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

/// One open stream, counted while its subscriber task runs; holds its
/// connection busy, so that it is never closed to make room.
struct Permit {
    open: Arc<AtomicUsize>,
    _busy: Busy,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

// === impl Live ===

impl Live {
    /// Starts the encoder on `view`'s finished flows (on the current
    /// runtime).
    pub fn start(view: &FlowView) -> Live {
        let batches = broadcast::channel(BACKLOG).0;
        tokio::spawn(encode(view.subscribe(), batches.clone()));
        Live {
            open: Arc::new(AtomicUsize::new(0)),
            batches,
        }
    }

    /// Starts a subscriber for flows matching `filter`, unless `max`
    /// streams are open already.
    pub fn stream(&self, filter: FlowFilter, max: u32, busy: Busy) -> Option<SseBody> {
        let max = max as usize;
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        let permit = Permit {
            open: self.open.clone(),
            _busy: busy,
        };
        let (tx, rx) = mpsc::channel(BODY_QUEUE);
        tokio::spawn(subscribe(self.batches.subscribe(), filter, tx, permit));
        Some(SseBody { rx })
    }
}

/// The encoder: records from the view into batches of frames.
async fn encode(mut rx: broadcast::Receiver<Arc<FlowRecord>>, tx: broadcast::Sender<Arc<Batch>>) {
    let mut next = 0u64;
    let mut line = Vec::with_capacity(1024);
    loop {
        let first = match rx.recv().await {
            Ok(r) => r,
            Err(RecvError::Lagged(n)) => {
                next += n;
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        // Let records gather: one wake-up of this task and of each
        // subscriber per batch, not per record.
        tokio::time::sleep(BATCH).await;
        let mut batch = Builder::new(next, &tx);
        let mut pending = Some(first);
        loop {
            if let Some(r) = pending.take() {
                batch.push(r, &mut line);
            }
            if batch.len() >= MAX_BATCH {
                next = batch.publish(&tx);
                batch = Builder::new(next, &tx);
            }
            match rx.try_recv() {
                Ok(r) => pending = Some(r),
                Err(TryRecvError::Lagged(n)) => {
                    // A gap: what was gathered goes out, the rest starts
                    // after the records skipped.
                    next = batch.publish(&tx) + n;
                    batch = Builder::new(next, &tx);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => {
                    batch.publish(&tx);
                    return;
                }
            }
        }
        next = batch.publish(&tx);
    }
}

/// A batch being gathered.
struct Builder {
    first: u64,
    /// Whether anyone subscribes: without subscribers, records are only
    /// counted, never written.
    wanted: bool,
    skipped: u64,
    frames: Vec<u8>,
    records: Vec<(usize, Arc<FlowRecord>)>,
}

impl Builder {
    fn new(first: u64, tx: &broadcast::Sender<Arc<Batch>>) -> Builder {
        Builder {
            first,
            wanted: tx.receiver_count() > 0,
            skipped: 0,
            frames: Vec::new(),
            records: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.records.len() + self.skipped as usize
    }

    /// Adds `r`'s frame: written here, once for every subscriber.
    fn push(&mut self, r: Arc<FlowRecord>, line: &mut Vec<u8>) {
        if !self.wanted {
            self.skipped += 1;
            return;
        }
        line.clear();
        r.write_json(line);
        // JSON never contains a raw newline: one `data:` line.
        self.frames.extend_from_slice(b"id: ");
        self.frames.extend_from_slice(r.id().as_bytes());
        self.frames.extend_from_slice(b"\nevent: flow\ndata: ");
        self.frames.extend_from_slice(line);
        self.frames.extend_from_slice(b"\n\n");
        self.records.push((self.frames.len(), r));
    }

    /// Sends the batch (if it holds records); the next sequence number.
    fn publish(self, tx: &broadcast::Sender<Arc<Batch>>) -> u64 {
        let next = self.first + self.len() as u64;
        if self.records.is_empty() {
            return next;
        }
        // No subscribers is not an error.
        let _ = tx.send(Arc::new(Batch {
            first: self.first,
            frames: Bytes::from(self.frames),
            records: self.records,
        }));
        next
    }
}

/// A subscriber: batches into frames for one response body.
async fn subscribe(
    mut batches: broadcast::Receiver<Arc<Batch>>,
    filter: FlowFilter,
    tx: mpsc::Sender<Bytes>,
    permit: Permit,
) {
    let _permit = permit;
    // Tell the client how long to wait before reconnecting, and flush the
    // headers now rather than at the first flow.
    if tx
        .send(Bytes::from_static(b"retry: 2000\n: connected\n\n"))
        .await
        .is_err()
    {
        return;
    }
    let all = filter == FlowFilter::default();
    let mut expected = None;
    loop {
        // A body dropped (client gone, HEAD) ends the task at once,
        // freeing its place under `admin.max_streams`.
        let next = tokio::select! {
            () = tx.closed() => return,
            next = tokio::time::timeout(KEEPALIVE, batches.recv()) => next,
        };
        let batch = match next {
            Err(_) => {
                if tx
                    .send(Bytes::from_static(b": keepalive\n\n"))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Ok(Ok(b)) => b,
            // The gap shows in the next batch's sequence number.
            Ok(Err(RecvError::Lagged(_))) => continue,
            Ok(Err(RecvError::Closed)) => return,
        };
        let end = batch.first + batch.records.len() as u64;
        let skipped = expected.map_or(0, |e| batch.first.saturating_sub(e));
        expected = Some(end);
        if skipped > 0 {
            let note = format!("event: lagged\ndata: {{\"skipped\":{skipped}}}\n\n");
            if tx.send(Bytes::from(note)).await.is_err() {
                return;
            }
        }
        let frames = if all {
            batch.frames.clone()
        } else {
            matching(&batch, &filter)
        };
        if !frames.is_empty() && tx.send(frames).await.is_err() {
            return;
        }
    }
}

/// The frames of the records in `batch` that pass `filter`, copied.
fn matching(batch: &Batch, filter: &FlowFilter) -> Bytes {
    let now = SystemTime::now();
    let mut out = Vec::new();
    let mut start = 0;
    for (end, r) in &batch.records {
        if filter.matches(r, now) {
            out.extend_from_slice(&batch.frames[start..*end]);
        }
        start = *end;
    }
    Bytes::from(out)
}

// === impl SseBody ===

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::UNIX_EPOCH};

    use sluice_observe::{Listener, Protocol, ViewLimits};

    use super::*;
    use crate::admin::conns::Conns;

    fn view() -> Arc<FlowView> {
        Arc::new(FlowView::new(ViewLimits {
            recent_flows: 10,
            recent_denials: 10,
            window: Duration::from_secs(3600),
            top_entries: 10,
        }))
    }

    fn record() -> FlowRecord {
        let src: SocketAddr = "10.0.1.7:40000".parse().unwrap();
        let mut r = FlowRecord::new(Listener::Http, Protocol::Http, src, UNIX_EPOCH);
        r.finish(UNIX_EPOCH + Duration::from_secs(1));
        r
    }

    async fn next_flow(body: &mut SseBody) -> Bytes {
        loop {
            let b = tokio::time::timeout(Duration::from_secs(5), body.rx.recv())
                .await
                .unwrap()
                .unwrap();
            if !b.starts_with(b"retry:") {
                return b;
            }
        }
    }

    /// Every unfiltered subscriber gets the same bytes, written once: the
    /// frames point into one shared buffer.
    #[tokio::test]
    async fn subscribers_share_one_serialization_of_each_batch() {
        let view = view();
        let live = Live::start(&view);
        let conns = Conns::new();
        let member = conns.join();
        let mut bodies: Vec<SseBody> = (0..8)
            .map(|_| live.stream(FlowFilter::default(), 8, member.conn().busy()))
            .map(Option::unwrap)
            .collect();
        assert!(
            live.stream(FlowFilter::default(), 8, member.conn().busy())
                .is_none(),
            "a ninth stream is over the cap"
        );
        // Let the subscriber tasks subscribe.
        tokio::task::yield_now().await;
        let records: Vec<FlowRecord> = (0..3).map(|_| record()).collect();
        for r in &records {
            view.push(r, SystemTime::now());
        }
        let mut seen = Vec::new();
        for b in &mut bodies {
            seen.push(next_flow(b).await);
        }
        let text = String::from_utf8(seen[0].to_vec()).unwrap();
        assert_eq!(text.matches("event: flow\n").count(), 3, "{text}");
        for r in &records {
            assert!(text.contains(&format!("id: {}\n", r.id())), "{text}");
        }
        for s in &seen {
            assert_eq!(s.as_ptr(), seen[0].as_ptr(), "one shared buffer");
            assert_eq!(s.len(), seen[0].len());
        }
    }
}
