//! What the admin API shows, kept in bounded memory: a ring of recent
//! flows, a ring of recent denials, per-rule hit counts with the last hit,
//! a live stream of finished flows, and windowed aggregates by zone (bytes
//! over time, top sources and destinations).
//!
//! [`FlowView::push`] runs once per finished flow on the record path: it
//! takes one short lock and never waits on a reader. Readers copy out what
//! they need (records are shared as `Arc`s) and release the lock before
//! serializing anything.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use sluice_policy::Verdict;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::sync::broadcast;

use crate::{FlowRecord, record::rfc3339};

/// Buckets in the aggregation window: its resolution is `window / BUCKETS`.
pub const BUCKETS: u32 = 60;

/// Rule ids tracked at most; ids beyond this (after very many reloads with
/// shifting positional ids) are not counted.
const MAX_RULE_IDS: usize = 100_000;

/// How many finished flows a slow live-stream subscriber may fall behind
/// before it skips (and is told how many it missed).
const LIVE_BACKLOG: usize = 1024;

/// The key that absorbs sources or destinations beyond `top_entries`.
pub const OTHER: &str = "(other)";

/// Totals by source or destination; `hashbrown` for lookups by `&str` that
/// allocate a key only when it is new.
type TopMap = hashbrown::HashMap<String, Totals>;

/// The sizes that bound a [`FlowView`]'s memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewLimits {
    /// Recent flows kept for `/api/v1/flows`.
    pub recent_flows: usize,
    /// Recent denials kept for `/api/v1/denials` (apart from the flow ring,
    /// so a burst of allowed traffic does not push them out).
    pub recent_denials: usize,
    /// How far back aggregates reach.
    pub window: Duration,
    /// Distinct sources (and destinations) tracked per zone and bucket;
    /// the rest are summed under [`OTHER`].
    pub top_entries: usize,
}

/// Which flows a query wants. Every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// The zone's name exactly.
    pub zone: Option<String>,
    /// Allowed or denied flows only.
    pub verdict: Option<Verdict>,
    /// A substring (case-insensitive) of the destination name, address or SNI.
    pub host: Option<String>,
    /// Flows that ended at or after this time.
    pub since: Option<SystemTime>,
    /// Flows that ended at or before this time.
    pub until: Option<SystemTime>,
}

/// What to rank top sources and destinations by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TopBy {
    /// Number of flows.
    #[default]
    Flows,
    /// Bytes in both directions.
    Bytes,
    /// Bytes from clients to destinations.
    BytesOut,
    /// Bytes from destinations to clients.
    BytesIn,
}

/// Hits of one rule since start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleStat {
    /// Flows the rule decided.
    pub hits: u64,
    /// When it last decided one.
    pub last_hit: SystemTime,
}

/// Totals of one key (a zone, a source or a destination).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Finished flows (a long tunnel's interim records add bytes only).
    pub flows: u64,
    /// Of which denied (enforced or not).
    pub denied: u64,
    /// Bytes from clients to destinations.
    pub bytes_out: u64,
    /// Bytes from destinations to clients.
    pub bytes_in: u64,
}

/// One entry of a top list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopEntry {
    /// A source address, a destination name or address, or [`OTHER`].
    pub key: String,
    /// Its totals over the window.
    #[serde(flatten)]
    pub totals: Totals,
}

/// Top sources and destinations of one zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ZoneTop {
    /// The zone (`null` for flows that matched none).
    pub zone: Option<String>,
    /// The zone's totals over the window.
    pub totals: Totals,
    /// Top client addresses.
    pub sources: Vec<TopEntry>,
    /// Top destinations (names when known, else addresses).
    pub destinations: Vec<TopEntry>,
}

/// Traffic per zone in one time bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrafficBucket {
    /// Start of the bucket, RFC 3339.
    pub start: String,
    /// Totals by zone name (`""` for flows that matched no zone).
    pub zones: BTreeMap<String, Totals>,
}

/// The recent-flow ring, denials, rule hits, live stream and aggregates.
#[derive(Debug)]
pub struct FlowView {
    limits: ViewLimits,
    width: Duration,
    inner: Mutex<Inner>,
    live: broadcast::Sender<Sequenced>,
}

/// A finished flow with its sequence number: 1, 2, … in the order the
/// view took them since the process started (the live stream's event id).
pub type Sequenced = (u64, Arc<FlowRecord>);

#[derive(Debug, Default)]
struct Inner {
    /// The last sequence number given.
    seq: u64,
    recent: VecDeque<Entry>,
    denials: VecDeque<Entry>,
    rules: HashMap<String, RuleStat>,
    buckets: VecDeque<Bucket>,
}

#[derive(Debug, Clone)]
struct Entry {
    /// The record's sequence number.
    seq: u64,
    /// End of the flow (its `ts`), for time filters.
    at: SystemTime,
    record: Arc<FlowRecord>,
}

#[derive(Debug)]
struct Bucket {
    /// Start, whole seconds since the epoch, a multiple of the width.
    start: u64,
    zones: hashbrown::HashMap<String, ZoneAgg>,
}

#[derive(Debug, Default)]
struct ZoneAgg {
    totals: Totals,
    sources: TopMap,
    destinations: TopMap,
}

// === impl FlowView ===

impl FlowView {
    /// An empty view bounded by `limits` (sizes of at least 1; the window
    /// at least [`BUCKETS`] seconds).
    pub fn new(limits: ViewLimits) -> FlowView {
        let limits = ViewLimits {
            recent_flows: limits.recent_flows.max(1),
            recent_denials: limits.recent_denials.max(1),
            window: limits.window.max(Duration::from_secs(u64::from(BUCKETS))),
            top_entries: limits.top_entries.max(1),
        };
        let width = Duration::from_secs(limits.window.as_secs() / u64::from(BUCKETS));
        FlowView {
            limits,
            width,
            inner: Mutex::new(Inner::default()),
            live: broadcast::channel(LIVE_BACKLOG).0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> ViewLimits {
        self.limits
    }

    /// The width of one aggregation bucket.
    pub fn bucket_width(&self) -> Duration {
        self.width
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain counters behind:
        // still worth showing.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one finished flow at `now`: into the rings, the rule hits, the
    /// aggregates and the live stream.
    pub fn push(&self, record: &FlowRecord, now: SystemTime) {
        self.push_shared(Arc::new(record.clone()), now);
    }

    /// [`FlowView::push`] for a record shared with the sink: no copy.
    pub fn push_shared(&self, record: Arc<FlowRecord>, now: SystemTime) {
        let mut inner = self.lock();
        self.expire(&mut inner, unix_secs(now));
        self.push_locked(&mut inner, record, now);
    }

    /// [`FlowView::push_shared`] for records that arrived together (the
    /// flows of one NetFlow datagram), in order, under one lock: the same
    /// sequence numbers, rings, hits, aggregates and live stream as one
    /// push each. (One lock and one expiry pass a batch instead of a
    /// record: bench/README.md "NetFlow collector" has the measurement.)
    pub fn push_batch(&self, records: impl IntoIterator<Item = Arc<FlowRecord>>, now: SystemTime) {
        let mut inner = self.lock();
        self.expire(&mut inner, unix_secs(now));
        for r in records {
            self.push_locked(&mut inner, r, now);
        }
    }

    fn push_locked(&self, inner: &mut Inner, record: Arc<FlowRecord>, now: SystemTime) {
        let at = record.end_time().unwrap_or_else(|| {
            OffsetDateTime::parse(&record.ts, &Rfc3339)
                .map(SystemTime::from)
                .unwrap_or(now)
        });
        inner.seq += 1;
        let seq = inner.seq;
        let entry = Entry {
            seq,
            at,
            record: record.clone(),
        };
        // An interim record shows in the recent flows and the live
        // stream (a long tunnel is visible while it runs) but counts
        // no denial and no rule hit: its closing record does.
        let interim = record.interim == Some(true);
        let denied = record.verdict != Verdict::Allow && !interim;
        if denied {
            push_bounded(
                &mut inner.denials,
                entry.clone(),
                self.limits.recent_denials,
            );
        }
        push_bounded(&mut inner.recent, entry, self.limits.recent_flows);
        if !record.rule.is_empty() && !interim {
            let known = inner.rules.len() < MAX_RULE_IDS;
            match inner.rules.get_mut(&record.rule) {
                Some(s) => {
                    s.hits += 1;
                    s.last_hit = s.last_hit.max(at);
                }
                None if known => {
                    inner.rules.insert(
                        record.rule.clone(),
                        RuleStat {
                            hits: 1,
                            last_hit: at,
                        },
                    );
                }
                None => {}
            }
        }
        self.aggregate(inner, &record, now);
        // Sent under the lock, so that the stream sees sequence
        // numbers in order. No subscribers is not an error.
        let _ = self.live.send((seq, record));
    }

    /// Adds `r` to the newest bucket (the caller expired old ones).
    fn aggregate(&self, inner: &mut Inner, r: &FlowRecord, now: SystemTime) {
        let secs = unix_secs(now);
        let width = self.width.as_secs().max(1);
        let start = secs - secs % width;
        let bucket = match inner.buckets.back_mut() {
            Some(b) if b.start == start => b,
            // A clock that stepped back: count into the newest bucket.
            Some(b) if b.start > start => b,
            _ => {
                inner.buckets.push_back(Bucket {
                    start,
                    zones: hashbrown::HashMap::new(),
                });
                // Just pushed: never None.
                let Some(b) = inner.buckets.back_mut() else {
                    return;
                };
                b
            }
        };
        let zone = r.zone.as_deref().unwrap_or_default();
        let agg = bucket.zones.entry_ref(zone).or_default();
        // An interim record adds its bytes (those since the flow's previous
        // record); the flow and its denial count once, at its close.
        let closing = u64::from(r.interim != Some(true));
        let add = |t: &mut Totals| {
            t.flows += closing;
            t.denied += closing * u64::from(r.verdict != Verdict::Allow);
            t.bytes_out += r.bytes_out;
            t.bytes_in += r.bytes_in;
        };
        add(&mut agg.totals);
        let limit = self.limits.top_entries;
        // Keys are looked up as text formatted on the stack: a key is
        // allocated only when it is new to the bucket.
        let mut buf = IpText::default();
        add(bounded_entry(&mut agg.sources, buf.of(r.src.ip()), limit));
        let dest = match (&r.dst_host, r.dst_ip) {
            (Some(h), _) => h.as_str(),
            (None, Some(ip)) => buf.of(ip),
            (None, None) => "",
        };
        add(bounded_entry(&mut agg.destinations, dest, limit));
    }

    fn expire(&self, inner: &mut Inner, now_secs: u64) {
        let oldest = now_secs.saturating_sub(self.limits.window.as_secs());
        while inner
            .buckets
            .front()
            .is_some_and(|b| b.start + self.width.as_secs() <= oldest)
        {
            inner.buckets.pop_front();
        }
    }

    /// Recent flows matching `filter`, newest first, at most `limit`.
    pub fn flows(&self, filter: &FlowFilter, limit: usize) -> Vec<Arc<FlowRecord>> {
        let inner = self.lock();
        select(&inner.recent, filter, limit)
    }

    /// Recent denials (enforced or not) matching `filter`, newest first.
    pub fn denials(&self, filter: &FlowFilter, limit: usize) -> Vec<Arc<FlowRecord>> {
        let inner = self.lock();
        select(&inner.denials, filter, limit)
    }

    /// Hits by rule id since start, for every rule that decided a flow.
    pub fn rule_stats(&self) -> HashMap<String, RuleStat> {
        self.lock().rules.clone()
    }

    /// Finished flows from now on, with their sequence numbers. A
    /// subscriber that falls more than a thousand flows behind gets
    /// `RecvError::Lagged` and continues.
    pub fn subscribe(&self) -> broadcast::Receiver<Sequenced> {
        self.live.subscribe()
    }

    /// The flows of the recent-flow ring after sequence number `after`,
    /// oldest first (a live stream's `Last-Event-ID` resume), and how many
    /// after `after` the ring no longer holds.
    pub fn after(&self, after: u64) -> (Vec<Sequenced>, u64) {
        let inner = self.lock();
        let found: Vec<Sequenced> = inner
            .recent
            .iter()
            .filter(|e| e.seq > after)
            .map(|e| (e.seq, e.record.clone()))
            .collect();
        let first = found.first().map_or(inner.seq + 1, |(s, _)| *s);
        (found, first.saturating_sub(after + 1))
    }

    /// The last sequence number given (0 before the first flow).
    pub fn last_seq(&self) -> u64 {
        self.lock().seq
    }

    /// Traffic by zone per bucket over the window, oldest first, with empty
    /// buckets filled in so that a chart's time axis is even.
    pub fn traffic(&self, now: SystemTime) -> Vec<TrafficBucket> {
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let width = self.width.as_secs().max(1);
        let newest = secs - secs % width;
        let first = newest.saturating_sub(width * u64::from(BUCKETS - 1));
        let mut inner = self.lock();
        self.expire(&mut inner, secs);
        let mut have: HashMap<u64, BTreeMap<String, Totals>> = inner
            .buckets
            .iter()
            .filter(|b| b.start >= first)
            .map(|b| {
                let zones = b.zones.iter().map(|(z, a)| (z.clone(), a.totals)).collect();
                (b.start, zones)
            })
            .collect();
        drop(inner);
        (0..u64::from(BUCKETS))
            .map(|i| first + i * width)
            .map(|start| TrafficBucket {
                start: rfc3339(UNIX_EPOCH + Duration::from_secs(start)),
                zones: have.remove(&start).unwrap_or_default(),
            })
            .collect()
    }

    /// Top sources and destinations per zone over the last `window` (at most
    /// the configured window), `limit` of each, ranked `by`; zones in name
    /// order, or only `zone` when given.
    pub fn top(
        &self,
        now: SystemTime,
        window: Duration,
        zone: Option<&str>,
        by: TopBy,
        limit: usize,
    ) -> Vec<ZoneTop> {
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let from = secs.saturating_sub(window.min(self.limits.window).as_secs());
        let width = self.width.as_secs().max(1);
        let mut merged: BTreeMap<String, ZoneAgg> = BTreeMap::new();
        {
            let mut inner = self.lock();
            self.expire(&mut inner, secs);
            for b in inner.buckets.iter().filter(|b| b.start + width > from) {
                for (name, agg) in &b.zones {
                    if zone.is_some_and(|z| z != name) {
                        continue;
                    }
                    let m = merged.entry(name.clone()).or_default();
                    m.totals.add(&agg.totals);
                    for (k, t) in &agg.sources {
                        m.sources.entry(k.clone()).or_default().add(t);
                    }
                    for (k, t) in &agg.destinations {
                        m.destinations.entry(k.clone()).or_default().add(t);
                    }
                }
            }
        }
        merged
            .into_iter()
            .map(|(name, agg)| ZoneTop {
                zone: Some(name).filter(|n| !n.is_empty()),
                totals: agg.totals,
                sources: ranked(agg.sources, by, limit),
                destinations: ranked(agg.destinations, by, limit),
            })
            .collect()
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn push_bounded(ring: &mut VecDeque<Entry>, e: Entry, cap: usize) {
    while ring.len() >= cap {
        ring.pop_front();
    }
    ring.push_back(e);
}

fn bounded_entry<'m>(map: &'m mut TopMap, key: &str, limit: usize) -> &'m mut Totals {
    let key = if map.contains_key(key) || map.len() < limit {
        key
    } else {
        OTHER
    };
    // Allocates the key only for a new entry.
    map.entry_ref(key).or_default()
}

fn ranked(map: TopMap, by: TopBy, limit: usize) -> Vec<TopEntry> {
    let mut v: Vec<TopEntry> = map
        .into_iter()
        .map(|(key, totals)| TopEntry { key, totals })
        .collect();
    let score = |t: &Totals| match by {
        TopBy::Flows => (t.flows, t.bytes_out),
        TopBy::Bytes => (t.bytes_out.saturating_add(t.bytes_in), t.flows),
        TopBy::BytesOut => (t.bytes_out, t.flows),
        TopBy::BytesIn => (t.bytes_in, t.flows),
    };
    v.sort_by(|a, b| {
        score(&b.totals)
            .cmp(&score(&a.totals))
            .then_with(|| a.key.cmp(&b.key))
    });
    v.truncate(limit);
    v
}

fn select(ring: &VecDeque<Entry>, f: &FlowFilter, limit: usize) -> Vec<Arc<FlowRecord>> {
    ring.iter()
        .rev()
        .filter(|e| f.matches(&e.record, e.at))
        .take(limit)
        .map(|e| e.record.clone())
        .collect()
}

// === impl FlowFilter ===

impl FlowFilter {
    /// Whether `r`, which ended at `at`, passes every condition.
    pub fn matches(&self, r: &FlowRecord, at: SystemTime) -> bool {
        self.zone
            .as_ref()
            .is_none_or(|z| r.zone.as_ref() == Some(z))
            && self.verdict.is_none_or(|v| r.verdict == v)
            && self.since.is_none_or(|t| at >= t)
            && self.until.is_none_or(|t| at <= t)
            && self.host.as_ref().is_none_or(|h| {
                let h = h.to_ascii_lowercase();
                let mut buf = IpText::default();
                let ip = r.dst_ip.map(|ip| buf.of(ip));
                [r.dst_host.as_deref(), ip, r.sni.as_deref()]
                    .into_iter()
                    .flatten()
                    .any(|v| v.to_ascii_lowercase().contains(&h))
            })
    }
}

/// An address as text, formatted into a buffer on the stack (the longest
/// IPv6 text is 45 bytes).
struct IpText([u8; 48]);

impl Default for IpText {
    fn default() -> IpText {
        IpText([0; 48])
    }
}

impl IpText {
    fn of(&mut self, ip: IpAddr) -> &str {
        use std::io::Write;
        let used = match ip {
            // Without the formatting machinery for IPv4 (every NetFlow
            // record has two addresses to look up).
            IpAddr::V4(v4) => {
                let mut n = 0;
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.0[n] = b'.';
                        n += 1;
                    }
                    if o >= 100 {
                        self.0[n] = b'0' + o / 100;
                        n += 1;
                    }
                    if o >= 10 {
                        self.0[n] = b'0' + o / 10 % 10;
                        n += 1;
                    }
                    self.0[n] = b'0' + o % 10;
                    n += 1;
                }
                n
            }
            IpAddr::V6(_) => {
                let mut w = &mut self.0[..];
                let _ = write!(w, "{ip}");
                48 - w.len()
            }
        };
        std::str::from_utf8(&self.0[..used]).unwrap_or_default()
    }
}

// === impl Totals ===

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.flows += o.flows;
        self.denied += o.denied;
        self.bytes_out += o.bytes_out;
        self.bytes_in += o.bytes_in;
    }
}
