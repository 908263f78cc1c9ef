//! Alerts (docs/design.md "Alerts"): what a detector raises about a source, a
//! destination or both, and [`AlertRing`], the bounded memory of recent
//! alerts that folds repeats into a count and answers the admin API.
//!
//! An alert is emitted once, when it first fires. A repeat — the same
//! kind, source and destination — whose event time lies within the stored
//! alert's window (counted from when that one fired, in event time, never
//! the wall clock) only raises the stored alert's `count`; after the window
//! the next one is a new alert, so a condition that persists is reported
//! again once a window. This module does no I/O and reads no clock:
//! [`crate::Recorder::alert`] writes and counts what the ring reports new.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::record::{next_id, rfc3339};

/// How long repeats of an alert only raise its count, unless the detector
/// sets another window ([`Alert::with_window`]).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(5 * 60);

/// Alerts kept by default (`admin.recent_alerts`).
pub const DEFAULT_RECENT_ALERTS: usize = 1000;

/// Record ids kept per alert: the first flows that raised it and its
/// first repeats; later repeats only count.
pub const MAX_FLOWS: usize = 16;

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    /// A source sent far more than its baseline.
    Volume,
    /// A source reached a destination it never used before.
    NewDestination,
    /// A destination in an unusual country.
    Geo,
    /// Connections at a regular interval, as malware calling home makes.
    Beaconing,
    /// Data leaving through DNS queries.
    DnsTunnel,
    /// Many denials from one source in a short time.
    DeniedBurst,
    /// Traffic that went around the gateway.
    Bypass,
    /// Data loss prevention found a secret leaving.
    Dlp,
    /// A malware scanner flagged content.
    Malware,
}

/// How urgent an alert is; ordered `info` < `warning` < `critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; nothing to do yet.
    Info,
    /// Someone should look.
    Warning,
    /// Someone should act now.
    Critical,
}

/// One alert, as the API, the stderr line and (later) the webhook and the
/// flow bus show it. Field order is the JSON order; every field is always
/// present, `null` where it does not apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// When it fired, in event time (the time of the record or query that
    /// raised it), RFC 3339 (UTC, milliseconds).
    pub ts: String,
    /// What it is about.
    pub kind: AlertKind,
    /// How urgent.
    pub severity: Severity,
    /// The zone of the source.
    pub zone: Option<String>,
    /// The source address, without a port.
    pub src: Option<String>,
    /// The authenticated user.
    pub user: Option<String>,
    /// The destination: a host, a registrable domain or an address.
    pub dst: Option<String>,
    /// The destination's country (ISO code), when known.
    pub country: Option<String>,
    /// One line a person can act on.
    pub summary: String,
    /// The values that raised it (baseline and observed), a JSON object.
    pub evidence: serde_json::Value,
    /// Ids of flow records behind it (at most [`MAX_FLOWS`]).
    pub flows: Vec<String>,
    /// Unique within the process.
    pub id: String,
    /// How often it fired within its window (1 when first emitted).
    pub count: u64,
    /// Event time and window as clock values (not serialized).
    #[serde(skip)]
    meta: Meta,
}

/// Clock values of an alert; equal whatever they hold, so that an alert
/// read back from JSON equals the one written.
#[derive(Debug, Clone, Copy)]
struct Meta {
    at: Option<SystemTime>,
    window: Duration,
}

impl Default for Meta {
    fn default() -> Meta {
        Meta {
            at: None,
            window: DEFAULT_WINDOW,
        }
    }
}

impl PartialEq for Meta {
    fn eq(&self, _: &Meta) -> bool {
        true
    }
}

/// Which alerts a query wants. Every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertFilter {
    /// This kind only.
    pub kind: Option<AlertKind>,
    /// This severity or a more urgent one (`warning` also gives `critical`).
    pub severity: Option<Severity>,
    /// The zone's name exactly.
    pub zone: Option<String>,
    /// Alerts that fired at or after this time.
    pub since: Option<SystemTime>,
}

/// Recent alerts in bounded memory, with repeats folded into a count.
/// Share it by reference (it locks inside); [`AlertRing::push`] takes one
/// short lock and never waits on a reader.
#[derive(Debug)]
pub struct AlertRing {
    capacity: usize,
    inner: Mutex<Ring>,
}

/// (kind, source, destination): what makes two alerts the same.
type Key = (AlertKind, Option<String>, Option<String>);

#[derive(Debug, Default)]
struct Ring {
    /// Oldest first; sequence numbers rise by one from front to back.
    slots: VecDeque<Slot>,
    next_seq: u64,
    /// The sequence number of the newest stored alert of each key.
    latest: HashMap<Key, u64>,
}

#[derive(Debug)]
struct Slot {
    seq: u64,
    at: SystemTime,
    alert: Alert,
}

// === impl AlertKind ===

impl AlertKind {
    /// Every kind, in docs/design.md's order.
    pub const ALL: [AlertKind; 9] = [
        AlertKind::Volume,
        AlertKind::NewDestination,
        AlertKind::Geo,
        AlertKind::Beaconing,
        AlertKind::DnsTunnel,
        AlertKind::DeniedBurst,
        AlertKind::Bypass,
        AlertKind::Dlp,
        AlertKind::Malware,
    ];

    /// The name used in alerts and labels (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Volume => "volume",
            AlertKind::NewDestination => "new-destination",
            AlertKind::Geo => "geo",
            AlertKind::Beaconing => "beaconing",
            AlertKind::DnsTunnel => "dns-tunnel",
            AlertKind::DeniedBurst => "denied-burst",
            AlertKind::Bypass => "bypass",
            AlertKind::Dlp => "dlp",
            AlertKind::Malware => "malware",
        }
    }

    /// The kind named `name` exactly, if there is one.
    pub fn from_name(name: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

// === impl Severity ===

impl Severity {
    /// Every severity, least urgent first.
    pub const ALL: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Critical];

    /// The name used in alerts and labels (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    /// The severity named `name` exactly, if there is one.
    pub fn from_name(name: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

// === impl Alert ===

impl Alert {
    /// An alert of `kind` that fired at `at` (event time), with a fresh id,
    /// count 1, empty evidence and flows, every optional field `null`, and
    /// the [`DEFAULT_WINDOW`].
    pub fn new(kind: AlertKind, severity: Severity, at: SystemTime, summary: String) -> Alert {
        Alert {
            ts: rfc3339(at),
            kind,
            severity,
            zone: None,
            src: None,
            user: None,
            dst: None,
            country: None,
            summary,
            evidence: serde_json::Value::Object(serde_json::Map::new()),
            flows: Vec::new(),
            id: next_id(),
            count: 1,
            meta: Meta {
                at: Some(at),
                window: DEFAULT_WINDOW,
            },
        }
    }

    /// The same alert with repeats folded into it for `window` instead.
    #[must_use]
    pub fn with_window(mut self, window: Duration) -> Alert {
        self.meta.window = window;
        self
    }

    /// How long repeats only raise this alert's count.
    pub fn window(&self) -> Duration {
        self.meta.window
    }

    /// When it fired: the clock value it was made with, else its `ts`
    /// parsed (an alert read back from JSON); `None` if `ts` is not RFC 3339.
    pub fn fired_at(&self) -> Option<SystemTime> {
        self.meta.at.or_else(|| {
            OffsetDateTime::parse(&self.ts, &Rfc3339)
                .ok()
                .map(SystemTime::from)
        })
    }

    fn key(&self) -> Key {
        (self.kind, self.src.clone(), self.dst.clone())
    }
}

// === impl AlertFilter ===

impl AlertFilter {
    /// Whether `a` passes every condition (`since` against when it fired).
    pub fn accepts(&self, a: &Alert) -> bool {
        self.matches(a.fired_at().unwrap_or(UNIX_EPOCH), a)
    }

    fn matches(&self, at: SystemTime, a: &Alert) -> bool {
        self.kind.is_none_or(|k| k == a.kind)
            && self.severity.is_none_or(|s| a.severity >= s)
            && self
                .zone
                .as_deref()
                .is_none_or(|z| a.zone.as_deref() == Some(z))
            && self.since.is_none_or(|s| at >= s)
    }
}

// === impl AlertRing ===

impl AlertRing {
    /// An empty ring keeping at most `capacity` alerts (at least 1).
    pub fn new(capacity: usize) -> AlertRing {
        AlertRing {
            capacity: capacity.max(1),
            inner: Mutex::new(Ring::default()),
        }
    }

    /// How many alerts it keeps at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many alerts it holds now.
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        // A panic while holding the lock leaves whole alerts behind: still
        // worth showing.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one alert. A repeat of a stored alert (same kind, source and
    /// destination, within that alert's window) raises the stored count by
    /// the repeat's and adds its flows (up to [`MAX_FLOWS`]): `None`.
    /// Otherwise the alert is stored, the oldest one leaving when the ring
    /// is full, and a copy comes back to be emitted.
    ///
    /// An alert whose time cannot be read counts as fired at the epoch: it
    /// is kept, but is never a repeat of a recent one.
    pub fn push(&self, alert: Alert) -> Option<Alert> {
        self.push_seq(alert).map(|(_, a)| a)
    }

    /// [`AlertRing::push`], with the new alert's sequence number: 1, 2, …
    /// in the order alerts were stored since the ring was made (the live
    /// alert stream's event id).
    pub fn push_seq(&self, mut alert: Alert) -> Option<(u64, Alert)> {
        let at = alert.fired_at().unwrap_or(UNIX_EPOCH);
        let key = alert.key();
        let mut ring = self.lock();
        if let Some(slot) = ring.latest_mut(&key) {
            let gap = at.duration_since(slot.at).unwrap_or_else(|e| e.duration());
            if gap < slot.alert.meta.window {
                let stored = &mut slot.alert;
                stored.count = stored.count.saturating_add(alert.count.max(1));
                for id in alert.flows {
                    if stored.flows.len() >= MAX_FLOWS {
                        break;
                    }
                    if !stored.flows.contains(&id) {
                        stored.flows.push(id);
                    }
                }
                return None;
            }
        }
        alert.count = alert.count.max(1);
        alert.flows.truncate(MAX_FLOWS);
        while ring.slots.len() >= self.capacity {
            let Some(old) = ring.slots.pop_front() else {
                break;
            };
            let old_key = old.alert.key();
            if ring.latest.get(&old_key) == Some(&old.seq) {
                ring.latest.remove(&old_key);
            }
        }
        let seq = ring.next_seq;
        ring.next_seq += 1;
        ring.latest.insert(key, seq);
        ring.slots.push_back(Slot {
            seq,
            at,
            alert: alert.clone(),
        });
        Some((seq + 1, alert))
    }

    /// The stored alerts with sequence numbers after `after`, oldest first
    /// (a live stream's `Last-Event-ID` resume), as they are now (repeats
    /// counted); and how many after `after` the ring no longer holds.
    pub fn after(&self, after: u64) -> (Vec<(u64, Alert)>, u64) {
        let ring = self.lock();
        let found: Vec<(u64, Alert)> = ring
            .slots
            .iter()
            .filter(|s| s.seq + 1 > after)
            .map(|s| (s.seq + 1, s.alert.clone()))
            .collect();
        let first = found.first().map_or(ring.next_seq + 1, |(s, _)| *s);
        (found, first.saturating_sub(after + 1))
    }

    /// The last sequence number given (0 before the first alert).
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// Stored alerts matching `filter`, newest first, at most `limit`.
    pub fn query(&self, filter: &AlertFilter, limit: usize) -> Vec<Alert> {
        let ring = self.lock();
        ring.slots
            .iter()
            .rev()
            .filter(|s| filter.matches(s.at, &s.alert))
            .take(limit)
            .map(|s| s.alert.clone())
            .collect()
    }
}

// === impl Ring ===

impl Ring {
    /// The newest stored alert of `key`, found by its sequence number.
    fn latest_mut(&mut self, key: &Key) -> Option<&mut Slot> {
        let seq = *self.latest.get(key)?;
        let front = self.slots.front()?.seq;
        let index = usize::try_from(seq.checked_sub(front)?).ok()?;
        self.slots.get_mut(index)
    }
}
