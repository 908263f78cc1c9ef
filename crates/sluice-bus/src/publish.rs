//! The publishing side: [`BusQueue`], the recorder's non-blocking handle
//! ([`sluice_observe::FlowBus`]), and the one task that takes what it
//! queued and publishes it to JetStream.
//!
//! The data path only ever does a `try_send` of an `Arc` into a queue of
//! `bus.queue` items: when the bus is slow or down the queue fills and
//! further records are dropped and counted (`sluice_bus_dropped_total`),
//! never waited for. The task takes from the queue only while connected,
//! so an outage holds at most the queue (and a window of unacknowledged
//! publishes) in memory; after a reconnect what the queue held is
//! published. Messages go out in groups of up to [`GROUP`], the last one
//! asking for JetStream's acknowledgement; each carries `Nats-Msg-Id` (the
//! record's or alert's id), so a group sent again after a lost
//! acknowledgement is stored once (within the stream's duplicate window).
//!
//! A group is counted published only when its acknowledgement came and
//! the whole group went over one connection: the stream stores one
//! connection's messages in order, so the last message's acknowledgement
//! vouches for the others. A reconnect while a group was on its way (the
//! client drops what the old connection had buffered, and sends the rest
//! on the new one) makes the acknowledgement vouch for nothing: the group
//! is sent again, and the message ids keep the retry from doubling any
//! record. A group that never gets its acknowledgement is counted
//! dropped; none is lost without being counted.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use async_nats::{
    ConnectOptions, Event, Subject,
    connection::State,
    jetstream::{self, message::PublishMessage, stream},
};
use bytes::Bytes;
use futures_util::{StreamExt, stream::FuturesUnordered};
use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use sluice_observe::{Alert, FlowBus, FlowRecord};
use tokio::sync::{mpsc, oneshot, watch};

use crate::subject::{self, ALERTS, STREAM_SUBJECTS};

/// Messages published per JetStream acknowledgement: the last message of
/// a group asks for one, the others are plain publishes. An ack per
/// message (an inbox, a timer and a JSON reply each) cost about 13 µs of
/// CPU per request at 8,000 requests/s (`bench/bus.sh`, +19 %). Groups of
/// 256 with a 20 ms pause cost 4.2 µs a record at 8,000 records/s where
/// groups of 64 with a 5 ms pause cost 5.1-6.3 µs; on the publisher's own
/// thread, groups of 512 with a 50 ms pause cost that thread 2.5-2.6 µs a
/// record where 256 and 20 ms cost it 3.1-3.6 (`examples/publish.rs`,
/// alternated, bench/README.md).
const GROUP: usize = 512;

/// How long the task lets records gather after sending a group that was
/// not full: under load a group then goes out as one write, not one write
/// and two task wake-ups per record (the flow sink's writer does the same,
/// crates/sluice-observe/src/sink.rs). A record waits at most this long:
/// at 8,000 records/s a pause gathers 400. Followers judge in event time
/// (`detect.max_lateness`, seconds), so 50 ms more in transit changes no
/// verdict.
const BATCH_PAUSE: Duration = Duration::from_millis(50);

/// Subjects remembered (zones × partitions); past this the memory is
/// cleared and starts again.
const SUBJECTS: usize = 4096;

/// Groups awaiting acknowledgement at most: with [`GROUP`], 4,096 messages,
/// which bounds what an outage holds beyond the queue.
const GROUPS_IN_FLIGHT: usize = 8;

/// Attempts per group before its messages are dropped and counted.
const ATTEMPTS: u8 = 3;

/// How long a publish may wait for its acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest wait between reconnect attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// The name of the thread the publishing task runs on.
const BUS_THREAD: &str = "sluice-bus";

/// How often a drop may be logged.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// What the publisher needs from `bus:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusOptions {
    /// NATS server URL(s), comma-separated.
    pub url: String,
    /// The JetStream stream (created if missing).
    pub stream: String,
    /// Flow partitions per zone.
    pub partitions: u32,
    /// Queue capacity, in records and alerts.
    pub queue: usize,
}

/// The bus's metric families, registered before the registry is shared.
#[derive(Debug, Clone, Default)]
pub struct BusMetrics {
    published: Counter,
    dropped: Counter,
    connected: Gauge,
}

/// The recorder's handle: [`FlowBus`] over a bounded queue. Never waits.
#[derive(Debug)]
pub struct BusQueue {
    tx: mpsc::Sender<Item>,
    drops: Arc<Drops>,
}

/// The publishing task's control handle. The task and the NATS client's
/// connection task run on a thread of their own (a single-threaded tokio
/// runtime, [`BUS_THREAD`]).
#[derive(Debug)]
pub struct Publisher {
    close: Option<oneshot::Sender<Instant>>,
    /// Stops the bus thread's runtime at once (close's last resort).
    abort: Option<oneshot::Sender<()>>,
    /// Fires when the publishing task has ended.
    done: Option<oneshot::Receiver<()>>,
}

#[derive(Debug)]
enum Item {
    Record(Arc<FlowRecord>, Bytes),
    Alert(Box<Alert>),
}

/// One message on its way: where, what, under which id.
struct Pending {
    subject: Subject,
    payload: Bytes,
    id: String,
}

/// A group's acknowledgement on its way, with the group.
type Acked = futures_util::future::BoxFuture<'static, (Result<(), Failed>, Group)>;

/// Why a group was not (yet) stored for sure.
#[derive(Debug)]
enum Failed {
    /// The publish or its acknowledgement failed.
    Publish(jetstream::context::PublishError),
    /// The client reconnected between the group's first message and its
    /// acknowledgement: the messages the old connection held may be lost.
    Reconnected,
}

/// Messages published together and vouched for by one acknowledgement.
struct Group {
    msgs: Vec<Pending>,
    attempts: u8,
    /// The client's connection count when this attempt began.
    connects: u64,
}

/// Flow subjects already made, by zone and partition: a record's subject
/// is then a hash lookup and a reference count, not a `format!` and an
/// allocation.
#[derive(Debug, Default)]
struct Subjects {
    /// By zone (`default` for none), then by partition.
    made: HashMap<Box<str>, Vec<Option<Subject>>>,
    count: usize,
}

// === impl Subjects ===

impl Subjects {
    fn of(&mut self, r: &FlowRecord, partitions: u32) -> Subject {
        let zone = r.zone.as_deref().unwrap_or(subject::NO_ZONE);
        let p = subject::partition_of(r.src.ip(), partitions) as usize;
        if let Some(Some(s)) = self.made.get(zone).and_then(|by_p| by_p.get(p)) {
            return s.clone();
        }
        if self.count >= SUBJECTS {
            self.made.clear();
            self.count = 0;
        }
        let s = Subject::from(subject::flow_subject(r, partitions));
        let by_p = self.made.entry(Box::from(zone)).or_default();
        if by_p.len() <= p {
            by_p.resize(p + 1, None);
        }
        by_p[p] = Some(s.clone());
        self.count += 1;
        s
    }
}

/// Counts drops and logs them at most once a second.
#[derive(Debug)]
struct Drops {
    counter: Counter,
    last_told: Mutex<(Option<Instant>, u64)>,
}

// === impl BusOptions ===

impl BusOptions {
    /// The options of a configuration's `bus:`, or `None` when it has no
    /// `url` (no bus).
    pub fn from_config(bus: &sluice_policy::model::Bus) -> Option<BusOptions> {
        Some(BusOptions {
            url: bus.url.clone()?,
            stream: bus.stream.clone(),
            partitions: bus.partitions,
            queue: bus.queue as usize,
        })
    }
}

// === impl BusMetrics ===

impl BusMetrics {
    /// Registers `sluice_bus_published_total`, `sluice_bus_dropped_total`
    /// and `sluice_bus_connected` in `registry`.
    pub fn register(registry: &mut Registry) -> BusMetrics {
        let m = BusMetrics::default();
        registry.register(
            "sluice_bus_published",
            "Flow records and alerts the flow bus's stream acknowledged",
            m.published.clone(),
        );
        registry.register(
            "sluice_bus_dropped",
            "Flow records and alerts not published: the bus queue was full (an outage or a slow server) or every attempt failed",
            m.dropped.clone(),
        );
        registry.register(
            "sluice_bus_connected",
            "1 while connected to the flow bus's NATS server, else 0",
            m.connected.clone(),
        );
        m
    }
}

// === impl BusQueue ===

impl FlowBus for BusQueue {
    fn record(&self, r: &Arc<FlowRecord>, json: &Bytes) {
        self.send(Item::Record(r.clone(), json.clone()));
    }

    fn alert(&self, a: &Alert) {
        self.send(Item::Alert(Box::new(a.clone())));
    }
}

impl BusQueue {
    fn send(&self, item: Item) {
        if self.tx.try_send(item).is_err() {
            self.drops.add(1, "queue full");
        }
    }
}

// === impl Publisher ===

impl Publisher {
    /// Starts connecting to `opts.url` in the background (an unreachable
    /// server is retried for ever; it never fails the start) and the task
    /// that publishes what the returned queue takes. Call on a tokio
    /// runtime.
    ///
    /// The task runs on a thread of its own with a single-threaded
    /// runtime, and so does the client's connection task (it is spawned on
    /// the runtime that connects): handing a message to the client then
    /// wakes no other thread, and a group goes out as one write after the
    /// publishing task yields. On the data path's runtime the two tasks
    /// woke each other across worker threads up to once every 16 messages
    /// (the client's receive chunk), 1,800 futex and 800 eventfd calls a
    /// second at 8,000 records/s (`strace -c -f`, examples/publish.rs).
    /// If the thread cannot be made, the task runs on the caller's runtime.
    pub fn start(opts: BusOptions, metrics: BusMetrics) -> (BusQueue, Publisher) {
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let drops = Arc::new(Drops {
            counter: metrics.dropped.clone(),
            last_told: Mutex::new((None, 0)),
        });
        let (close, closed) = oneshot::channel();
        let (abort, aborted) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel();
        let task = {
            let drops = drops.clone();
            async move {
                tokio::select! {
                    () = run(opts, metrics, rx, closed, drops) => {}
                    Ok(()) = aborted => {}
                }
                let _ = done_tx.send(());
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        match runtime {
            Ok(rt) => {
                let (task_tx, task_rx) = std::sync::mpsc::channel();
                let spawned =
                    std::thread::Builder::new()
                        .name(BUS_THREAD.into())
                        .spawn(move || {
                            if let Ok(task) = task_rx.recv() {
                                rt.block_on(task);
                            }
                        });
                match spawned {
                    Ok(_) => {
                        let _ = task_tx.send(task);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "flow bus: no thread of its own; publishing on the data path's runtime");
                        tokio::spawn(task);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "flow bus: no runtime of its own; publishing on the data path's runtime");
                tokio::spawn(task);
            }
        }
        (
            BusQueue { tx, drops },
            Publisher {
                close: Some(close),
                abort: Some(abort),
                done: Some(done),
            },
        )
    }

    /// Publishes what is queued and unacknowledged, for at most `within`,
    /// then stops; what is left is dropped and counted. The queue takes
    /// nothing more (later sends are dropped and counted).
    pub async fn close(mut self, within: Duration) {
        if let Some(close) = self.close.take() {
            let _ = close.send(Instant::now() + within);
        }
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(within + Duration::from_secs(1), done).await;
        }
        if let Some(abort) = self.abort.take() {
            let _ = abort.send(());
        }
    }
}

/// Connects (in the background), reporting the connection's state in the
/// gauge and `connected`.
async fn connect(
    url: &str,
    metrics: &BusMetrics,
    connected: Arc<watch::Sender<bool>>,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let gauge = metrics.connected.clone();
    ConnectOptions::new()
        .name("sluice")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            (Duration::from_millis(100) * u32::try_from(attempts).unwrap_or(u32::MAX))
                .min(MAX_RECONNECT_DELAY)
        })
        .event_callback(move |event| {
            let gauge = gauge.clone();
            let connected = connected.clone();
            async move {
                match event {
                    Event::Connected => {
                        gauge.set(1);
                        connected.send_replace(true);
                        tracing::info!("flow bus: connected");
                    }
                    Event::Disconnected | Event::Closed => {
                        gauge.set(0);
                        connected.send_replace(false);
                        tracing::warn!("flow bus: disconnected; reconnecting (records queue, then drop and count)");
                    }
                    other => tracing::warn!(event = %other, "flow bus"),
                }
            }
        })
        .connect(url)
        .await
}

/// The publishing task: while connected, take from the queue in groups,
/// publish, collect acknowledgements; retry what failed; stop on close.
async fn run(
    opts: BusOptions,
    metrics: BusMetrics,
    mut rx: mpsc::Receiver<Item>,
    mut closed: oneshot::Receiver<Instant>,
    drops: Arc<Drops>,
) {
    let (connected_tx, connected) = watch::channel(false);
    let connected_tx = Arc::new(connected_tx);
    let client = match connect(&opts.url, &metrics, connected_tx.clone()).await {
        Ok(c) => c,
        Err(e) => {
            // Only a malformed URL gets here (the loader checked the scheme).
            tracing::error!(url = %opts.url, error = %e, "flow bus: cannot connect; records are dropped and counted");
            drain_dropped(&mut rx, &mut closed, &drops).await;
            return;
        }
    };
    if client.connection_state() == State::Connected {
        metrics.connected.set(1);
        connected_tx.send_replace(true);
    }
    let js = jetstream::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .build(client.clone());
    let mut pump = Pump {
        stats: client.statistics(),
        client,
        js,
        opts,
        metrics,
        rx,
        closed,
        drops,
        connected,
        stream_ready: false,
        deadline: None,
        retry: VecDeque::new(),
        inflight: FuturesUnordered::new(),
        inflight_msgs: 0,
        line: Vec::with_capacity(1024),
        subjects: Subjects::default(),
    };
    pump.run().await;
    pump.finish();
}

/// The publishing task's state once the client exists.
struct Pump {
    opts: BusOptions,
    metrics: BusMetrics,
    rx: mpsc::Receiver<Item>,
    closed: oneshot::Receiver<Instant>,
    drops: Arc<Drops>,
    connected: watch::Receiver<bool>,
    client: async_nats::Client,
    stats: Arc<async_nats::Statistics>,
    js: jetstream::Context,
    stream_ready: bool,
    /// Set once closing began: publish until then, no longer.
    deadline: Option<Instant>,
    retry: VecDeque<Group>,
    inflight: FuturesUnordered<Acked>,
    /// Messages in `inflight`'s groups, for the count at close.
    inflight_msgs: usize,
    line: Vec<u8>,
    subjects: Subjects,
}

/// What one turn of [`Pump::run`] does next.
enum Turn {
    /// Publish this group.
    Send(Group),
    /// Nothing to send now: wait for an acknowledgement.
    Wait,
    /// Something changed (closing began, a group settled): look again.
    Again,
}

// === impl Pump ===

impl Pump {
    async fn run(&mut self) {
        loop {
            if let Some(d) = self.deadline {
                let done = self.rx.is_empty() && self.retry.is_empty() && self.inflight.is_empty();
                if done || Instant::now() >= d {
                    break;
                }
            }
            if !*self.connected.borrow() {
                tokio::select! {
                    changed = self.connected.changed() => if changed.is_err() { break },
                    at = &mut self.closed, if self.deadline.is_none() => self.deadline = Some(begin_close(at, &mut self.rx)),
                    () = sleep_until(self.deadline) => {}
                }
                continue;
            }
            if !self.stream_ready && !self.ready_stream().await {
                continue;
            }
            match self.next_turn().await {
                Turn::Send(g) => self.publish(g).await,
                Turn::Again => {}
                Turn::Wait => {
                    if let Some((result, g)) = self.inflight.next().await {
                        self.settle_acked(result, g);
                    } else if self.deadline.is_some() && self.rx.is_empty() && self.retry.is_empty()
                    {
                        break;
                    }
                }
            }
        }
    }

    /// Creates the stream if need be; while that fails, waits a second
    /// (or for closing to begin). Whether the stream is ready.
    async fn ready_stream(&mut self) -> bool {
        self.stream_ready = ensure_stream(&self.js, &self.opts.stream).await;
        if !self.stream_ready {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                at = &mut self.closed, if self.deadline.is_none() => self.deadline = Some(begin_close(at, &mut self.rx)),
            }
        }
        self.stream_ready
    }

    /// A group to retry or gathered from the queue, unless the groups in
    /// flight are at their bound, or closing began, or an acknowledgement
    /// came first.
    async fn next_turn(&mut self) -> Turn {
        if self.inflight.len() >= GROUPS_IN_FLIGHT {
            return Turn::Wait;
        }
        if let Some(g) = self.retry.pop_front() {
            return Turn::Send(g);
        }
        tokio::select! {
            biased;
            at = &mut self.closed, if self.deadline.is_none() => {
                self.deadline = Some(begin_close(at, &mut self.rx));
                Turn::Again
            }
            Some((result, g)) = self.inflight.next(), if !self.inflight.is_empty() => {
                self.settle_acked(result, g);
                Turn::Again
            }
            item = self.rx.recv() => match item {
                Some(first) => Turn::Send(gather(first, &mut self.rx, self.opts.partitions, &mut self.subjects, &mut self.line)),
                // Closed (or every handle dropped) and drained;
                // acknowledgements may be pending.
                None => {
                    self.deadline.get_or_insert_with(|| Instant::now() + ACK_TIMEOUT);
                    Turn::Wait
                }
            },
            () = sleep_until(self.deadline) => Turn::Again,
        }
    }

    /// Sends group `g` and keeps its acknowledgement in flight; pauses
    /// after a group that was not full, to gather the next.
    async fn publish(&mut self, mut g: Group) {
        g.attempts += 1;
        let full = g.msgs.len() >= GROUP;
        // Read before the first message leaves: a reconnect counted later
        // than this may have split the group (see the module's doc).
        g.connects = self.stats.connects.load(Ordering::Relaxed);
        match send(&self.client, &self.js, &g).await {
            Ok(ack) => {
                self.inflight_msgs += g.msgs.len();
                self.inflight.push(acked(ack, self.stats.clone(), g));
            }
            Err(e) => settle(
                Err(Failed::Publish(e)),
                g,
                &self.metrics,
                &self.drops,
                &mut self.retry,
                &mut self.stream_ready,
            ),
        }
        if !full && self.deadline.is_none() {
            tokio::time::sleep(BATCH_PAUSE).await;
        }
    }

    /// Settles a group whose acknowledgement came (or failed).
    fn settle_acked(&mut self, result: Result<(), Failed>, g: Group) {
        self.inflight_msgs -= g.msgs.len();
        settle(
            result,
            g,
            &self.metrics,
            &self.drops,
            &mut self.retry,
            &mut self.stream_ready,
        );
    }

    /// Counts what is left unpublished at close as dropped.
    fn finish(self) {
        let left = self.rx.len()
            + self.retry.iter().map(|g| g.msgs.len()).sum::<usize>()
            + self.inflight_msgs;
        if left > 0 {
            self.drops.add(left as u64, "closing");
        }
    }
}

/// Starts closing at the instant the closer gave (now if it went away):
/// the queue takes no more records; what it holds is still published
/// until that deadline.
fn begin_close(
    at: Result<Instant, oneshot::error::RecvError>,
    rx: &mut mpsc::Receiver<Item>,
) -> Instant {
    rx.close();
    at.unwrap_or_else(|_| Instant::now())
}

/// A group of up to [`GROUP`] messages: `first` and what the queue holds
/// now, without waiting for more.
fn gather(
    first: Item,
    rx: &mut mpsc::Receiver<Item>,
    partitions: u32,
    subjects: &mut Subjects,
    line: &mut Vec<u8>,
) -> Group {
    let mut msgs = Vec::with_capacity(GROUP.min(rx.len() + 1));
    msgs.push(pending(first, partitions, subjects, line));
    while msgs.len() < GROUP {
        let Ok(item) = rx.try_recv() else { break };
        msgs.push(pending(item, partitions, subjects, line));
    }
    Group {
        msgs,
        attempts: 0,
        connects: 0,
    }
}

/// The group's outcome once its acknowledgement comes: a reconnect
/// counted after the group left (`g.connects`) may have lost part of it,
/// so the group is sent again (see the module's doc).
fn acked(
    ack: jetstream::context::PublishAckFuture,
    stats: Arc<async_nats::Statistics>,
    g: Group,
) -> Acked {
    Box::pin(async move {
        let result = match ack.await {
            Ok(_) if stats.connects.load(Ordering::Relaxed) != g.connects => {
                Err(Failed::Reconnected)
            }
            Ok(_) => Ok(()),
            Err(e) => Err(Failed::Publish(e)),
        };
        (result, g)
    })
}

/// Publishes a group: every message but the last as a plain publish, the
/// last as a JetStream publish whose acknowledgement vouches for the
/// group (the stream stores one connection's messages in order). Sending
/// the whole group again is safe: the message ids deduplicate.
async fn send(
    client: &async_nats::Client,
    js: &jetstream::Context,
    g: &Group,
) -> Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError> {
    let Some((last, rest)) = g.msgs.split_last() else {
        return Err(jetstream::context::PublishError::new(
            jetstream::context::PublishErrorKind::Other,
        ));
    };
    for p in rest {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, p.id.as_str());
        client
            .publish_with_headers(p.subject.clone(), headers, p.payload.clone())
            .await
            .map_err(|e| {
                jetstream::context::PublishError::with_source(
                    jetstream::context::PublishErrorKind::Other,
                    e,
                )
            })?;
    }
    let msg = PublishMessage::build()
        .payload(last.payload.clone())
        .message_id(&last.id);
    js.send_publish(last.subject.clone(), msg).await
}

/// The message for a queued item: subject, the same JSON bytes the flow
/// log writes (without its newline; the recorder serialized them once),
/// and the id for deduplication.
fn pending(item: Item, partitions: u32, subjects: &mut Subjects, line: &mut Vec<u8>) -> Pending {
    line.clear();
    match item {
        Item::Record(r, json) => Pending {
            subject: subjects.of(&r, partitions),
            payload: json,
            id: r.id().to_owned(),
        },
        Item::Alert(a) => {
            if let Err(e) = serde_json::to_writer(&mut *line, &a) {
                // Cannot happen (string keys, our own values); an empty
                // object keeps consumers parsing.
                tracing::error!(error = %e, "flow bus: cannot serialize an alert");
                line.clear();
                line.extend_from_slice(b"{}");
            }
            Pending {
                subject: Subject::from_static(ALERTS),
                payload: Bytes::copy_from_slice(line),
                id: format!("alert-{}", a.id),
            }
        }
    }
}

/// Counts an acknowledged group, or retries a failed one (until
/// [`ATTEMPTS`]), or drops and counts it.
fn settle(
    result: Result<(), Failed>,
    g: Group,
    metrics: &BusMetrics,
    drops: &Drops,
    retry: &mut VecDeque<Group>,
    stream_ready: &mut bool,
) {
    match result {
        Ok(()) => {
            metrics.published.inc_by(g.msgs.len() as u64);
        }
        Err(e) => {
            if let Failed::Publish(e) = &e
                && matches!(
                    e.kind(),
                    jetstream::context::PublishErrorKind::StreamNotFound
                )
            {
                // The server lost the stream (a fresh store): create it again.
                *stream_ready = false;
            }
            if g.attempts < ATTEMPTS {
                retry.push_back(g);
            } else {
                tracing::debug!(messages = g.msgs.len(), error = ?e, "flow bus: publish failed");
                drops.add(g.msgs.len() as u64, "publish failed");
            }
        }
    }
}

/// Makes sure the stream exists, creating it with the bus's subjects when
/// missing (a deployment may create it beforehand, with its own limits and
/// replicas: deploy/kubernetes/jetstream-stream.json). Whether it is usable.
async fn ensure_stream(js: &jetstream::Context, name: &str) -> bool {
    let created = js
        .get_or_create_stream(stream::Config {
            name: name.to_owned(),
            subjects: STREAM_SUBJECTS.iter().map(|s| (*s).to_owned()).collect(),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 1 << 30,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await;
    match created {
        Ok(mut s) => {
            let subjects = match s.info().await {
                Ok(info) => info.config.subjects.clone(),
                Err(_) => s.cached_info().config.subjects.clone(),
            };
            for want in STREAM_SUBJECTS {
                if !subjects.iter().any(|have| have == want) {
                    tracing::warn!(
                        stream = name,
                        subject = want,
                        ?subjects,
                        "flow bus: the stream does not hold this subject; publishes to it fail"
                    );
                }
            }
            true
        }
        Err(e) => {
            tracing::warn!(stream = name, error = %e, "flow bus: cannot find or create the stream; retrying");
            false
        }
    }
}

/// With no connection to publish on: drop (and count) everything sent
/// until closed.
async fn drain_dropped(
    rx: &mut mpsc::Receiver<Item>,
    closed: &mut oneshot::Receiver<Instant>,
    drops: &Drops,
) {
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Some(_) => drops.add(1, "no connection"),
                None => return,
            },
            _ = &mut *closed => return,
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending::<()>().await,
    }
}

// === impl Drops ===

impl Drops {
    fn add(&self, n: u64, cause: &'static str) {
        self.counter.inc_by(n);
        // try_lock: whoever holds it is about to log; never wait for it.
        let Ok(mut last) = self.last_told.try_lock() else {
            return;
        };
        last.1 += n;
        if last.0.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            let dropped = std::mem::take(&mut last.1);
            last.0 = Some(Instant::now());
            tracing::warn!(dropped, cause, "flow bus: records or alerts dropped");
        }
    }
}
