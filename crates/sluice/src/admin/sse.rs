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
//! Event ids are the view's per-process sequence numbers (1, 2, … since
//! start). A client that reconnects with `Last-Event-ID: N` first gets the
//! flows after N that the recent-flow ring still holds (and an
//! `event: lagged` for those it no longer does), then the live ones, with
//! none twice.
//!
//! A subscriber that falls behind skips whole batches and is told how many
//! records it missed with an `event: lagged` (records carry sequence
//! numbers, so the count is exact); the encoder, if it falls behind the
//! view, skips records the same way. Neither ever slows the record path.
//!
//! `/api/v1/alerts/stream` shares the cap, the body, the keep-alive and the
//! resume rules: one `event: alert` per new alert (its JSON serialized once
//! by the recorder, its ring sequence number the id). Alerts are rare, so
//! each subscriber takes them from the recorder's broadcast directly,
//! without batches.

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
use sluice_observe::{
    AlertFilter, FlowFilter, FlowRecord, FlowView, LiveAlert, Recorder, Sequenced,
};
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
    /// streams are open already. With `after` (the client's
    /// `Last-Event-ID`), the stream starts with the flows the recent-flow
    /// ring holds after that sequence number.
    pub fn stream(
        &self,
        view: &FlowView,
        filter: FlowFilter,
        after: Option<u64>,
        max: u32,
        busy: Busy,
    ) -> Option<SseBody> {
        let permit = self.permit(max, busy)?;
        let (tx, rx) = mpsc::channel(BODY_QUEUE);
        // Subscribe before reading the ring: a flow finishing in between
        // is in both, and the subscriber skips it the second time.
        let batches = self.batches.subscribe();
        // An id beyond the last one given is from an earlier process:
        // a fresh stream.
        let (resume, expected) = match after.filter(|&a| a <= view.last_seq()) {
            Some(after) => {
                let mut out = Vec::new();
                let next = replay(view, after, &filter, &mut out);
                (Some(Bytes::from(out)), Some(next))
            }
            None => (None, None),
        };
        tokio::spawn(subscribe(batches, filter, tx, permit, resume, expected));
        Some(SseBody { rx })
    }

    /// Starts a subscriber for new alerts matching `filter`, under the same
    /// `max` as the flow streams. With `after` (the client's
    /// `Last-Event-ID`), it starts with the ring's alerts after that
    /// sequence number, as they are now.
    pub fn alert_stream(
        &self,
        recorder: &Recorder,
        filter: AlertFilter,
        after: Option<u64>,
        max: u32,
        busy: Busy,
    ) -> Option<SseBody> {
        let permit = self.permit(max, busy)?;
        let (tx, rx) = mpsc::channel(BODY_QUEUE);
        // Subscribe before reading the ring: an alert emitted in between
        // is in both, and the subscriber skips it the second time.
        let live = recorder.subscribe_alerts();
        let ring = recorder.alerts();
        let (resume, next) = match after.filter(|&a| a <= ring.last_seq()) {
            Some(after) => {
                let (found, missed) = ring.after(after);
                let mut out = Vec::new();
                if missed > 0 {
                    out.extend_from_slice(&lagged(missed));
                }
                let mut next = after + 1 + missed;
                for (seq, a) in found {
                    if filter.accepts(&a) {
                        if let Ok(json) = serde_json::to_string(&a) {
                            alert_frame(&mut out, seq, &json);
                        }
                    }
                    next = seq + 1;
                }
                (Some(Bytes::from(out)), next)
            }
            None => (None, 0),
        };
        tokio::spawn(subscribe_alerts(live, filter, tx, permit, resume, next));
        Some(SseBody { rx })
    }

    /// One more open stream, unless `max` are open already.
    fn permit(&self, max: u32, busy: Busy) -> Option<Permit> {
        let max = max as usize;
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Permit {
            open: self.open.clone(),
            _busy: busy,
        })
    }
}

/// Writes one alert's event: its ring sequence number as the event id.
fn alert_frame(out: &mut Vec<u8>, seq: u64, json: &str) {
    let _ = std::io::Write::write_fmt(out, format_args!("id: {seq}\nevent: alert\ndata: "));
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// A subscriber of the alert stream: new alerts into frames for one
/// response body, from sequence number `next` on (a resumed stream already
/// sent the ring's).
async fn subscribe_alerts(
    mut live: broadcast::Receiver<Arc<LiveAlert>>,
    filter: AlertFilter,
    tx: mpsc::Sender<Bytes>,
    permit: Permit,
    resume: Option<Bytes>,
    next: u64,
) {
    let _permit = permit;
    if tx
        .send(Bytes::from_static(b"retry: 2000\n: connected\n\n"))
        .await
        .is_err()
    {
        return;
    }
    if let Some(frames) = resume.filter(|f| !f.is_empty()) {
        if tx.send(frames).await.is_err() {
            return;
        }
    }
    loop {
        let got = tokio::select! {
            () = tx.closed() => return,
            got = tokio::time::timeout(KEEPALIVE, live.recv()) => got,
        };
        let frame = match got {
            Err(_) => Bytes::from_static(b": keepalive\n\n"),
            Ok(Ok(a)) if a.seq < next || !filter.accepts(&a.alert) => continue,
            Ok(Ok(a)) => {
                let mut out = Vec::with_capacity(a.json.len() + 40);
                alert_frame(&mut out, a.seq, &a.json);
                Bytes::from(out)
            }
            Ok(Err(RecvError::Lagged(n))) => lagged(n),
            Ok(Err(RecvError::Closed)) => return,
        };
        if tx.send(frame).await.is_err() {
            return;
        }
    }
}

/// The encoder: records from the view into batches of frames. A batch
/// holds consecutive sequence numbers; a gap (the encoder fell behind the
/// view) ends it, and the next starts at the record after the gap.
async fn encode(mut rx: broadcast::Receiver<Sequenced>, tx: broadcast::Sender<Arc<Batch>>) {
    let mut line = Vec::with_capacity(1024);
    loop {
        let first = match rx.recv().await {
            Ok(r) => r,
            // The gap shows in the next record's sequence number.
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        // Let records gather: one wake-up of this task and of each
        // subscriber per batch, not per record.
        tokio::time::sleep(BATCH).await;
        let mut batch = Builder::new(first.0, &tx);
        let mut pending = Some(first);
        loop {
            if let Some((seq, r)) = pending.take() {
                if seq != batch.first + batch.len() as u64 || batch.len() >= MAX_BATCH {
                    batch.publish(&tx);
                    batch = Builder::new(seq, &tx);
                }
                batch.push(seq, r, &mut line);
            }
            match rx.try_recv() {
                Ok(r) => pending = Some(r),
                Err(TryRecvError::Lagged(_)) => {}
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => {
                    batch.publish(&tx);
                    return;
                }
            }
        }
        batch.publish(&tx);
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
    fn push(&mut self, seq: u64, r: Arc<FlowRecord>, line: &mut Vec<u8>) {
        if !self.wanted {
            self.skipped += 1;
            return;
        }
        frame(&mut self.frames, seq, &r, line);
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

/// Writes one flow's event: its sequence number as the event id.
fn frame(out: &mut Vec<u8>, seq: u64, r: &FlowRecord, line: &mut Vec<u8>) {
    line.clear();
    r.write_json(line);
    // JSON never contains a raw newline: one `data:` line.
    // Into the Vec directly: no String per record (writing to a Vec
    // cannot fail).
    let _ = std::io::Write::write_fmt(out, format_args!("id: {seq}\nevent: flow\ndata: "));
    out.extend_from_slice(line);
    out.extend_from_slice(b"\n\n");
}

/// The `event: lagged` frame for `skipped` records.
fn lagged(skipped: u64) -> Bytes {
    Bytes::from(format!(
        "event: lagged\ndata: {{\"skipped\":{skipped}}}\n\n"
    ))
}

/// A resumed stream's first frames: the flows of the ring after
/// `Last-Event-ID` that match, oldest first, after an `event: lagged` for
/// those the ring no longer holds. Returns the next sequence number the
/// stream expects.
fn replay(view: &FlowView, after: u64, filter: &FlowFilter, out: &mut Vec<u8>) -> u64 {
    let (found, missed) = view.after(after);
    if missed > 0 {
        out.extend_from_slice(&lagged(missed));
    }
    let now = SystemTime::now();
    let mut line = Vec::new();
    let mut next = after + 1 + missed;
    for (seq, r) in found {
        if filter.matches(&r, now) {
            frame(out, seq, &r, &mut line);
        }
        next = seq + 1;
    }
    next
}

/// A subscriber: batches into frames for one response body.
async fn subscribe(
    mut batches: broadcast::Receiver<Arc<Batch>>,
    filter: FlowFilter,
    tx: mpsc::Sender<Bytes>,
    permit: Permit,
    resume: Option<Bytes>,
    mut expected: Option<u64>,
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
    if let Some(frames) = resume.filter(|f| !f.is_empty()) {
        if tx.send(frames).await.is_err() {
            return;
        }
    }
    let all = filter == FlowFilter::default();
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
        // A resumed stream already sent what the ring held: skip it here.
        let from = expected.unwrap_or(batch.first);
        if end <= from {
            continue;
        }
        let skipped = batch.first.saturating_sub(from);
        expected = Some(end);
        if skipped > 0 && tx.send(lagged(skipped)).await.is_err() {
            return;
        }
        let frames = if all && batch.first >= from {
            batch.frames.clone()
        } else {
            matching(&batch, &filter, from)
        };
        if !frames.is_empty() && tx.send(frames).await.is_err() {
            return;
        }
    }
}

/// The frames of the records in `batch` from sequence number `from` on
/// that pass `filter`, copied.
fn matching(batch: &Batch, filter: &FlowFilter, from: u64) -> Bytes {
    let now = SystemTime::now();
    let mut out = Vec::new();
    let mut start = 0;
    for (seq, (end, r)) in (batch.first..).zip(&batch.records) {
        if seq >= from && filter.matches(r, now) {
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
            .map(|_| live.stream(&view, FlowFilter::default(), None, 8, member.conn().busy()))
            .map(Option::unwrap)
            .collect();
        assert!(
            live.stream(&view, FlowFilter::default(), None, 8, member.conn().busy())
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
        for seq in 1..=3 {
            assert!(text.contains(&format!("id: {seq}\n")), "{text}");
        }
        for s in &seen {
            assert_eq!(s.as_ptr(), seen[0].as_ptr(), "one shared buffer");
            assert_eq!(s.len(), seen[0].len());
        }
    }
}
