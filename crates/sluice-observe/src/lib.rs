//! Sluice's observations: the flow record every connection, request and
//! DNS query leaves behind, the sink that writes those records as JSON
//! lines, the Prometheus metrics registry, alerts, and the recorder that
//! fans records and alerts out to all of them.
//!
//! This crate watches the data path; it is not part of it. It must not
//! touch data-path sockets, depend on `sluice-net`, or ever make the data
//! path wait: a record that cannot be queued is dropped and counted.
//!
//! # Layout
//!
//! - `record`: [`FlowRecord`], the fields of docs/design.md "Flow records".
//! - `json`: the record's JSON line, written by hand (serde's bytes, faster).
//! - `sink`: [`FlowSink`], the non-blocking handle the data path sends
//!   records to, and [`FlowWriter`], the control handle of the one thread
//!   that writes them (reopen for rotation, close for shutdown).
//! - `metrics`: [`Metrics`], the `sluice_*` families and the small methods
//!   the data path calls to update them.
//! - `process`: the standard `process_*` metrics, read from `/proc` at
//!   each scrape.
//! - `view`: [`FlowView`], what the admin API shows in bounded memory: the
//!   recent-flow and denial rings, rule hits, the live stream and windowed
//!   aggregates by zone.
//! - `alert`: [`Alert`] (docs/design.md "Alerts") and [`AlertRing`], the bounded
//!   memory of recent alerts that folds repeats into a count.
//! - `recorder`: [`Recorder`], the record stage's fan-out to metrics, the
//!   view, the sink, the [`Detector`]s and the [`FlowBus`], and where
//!   alerts are emitted: the ring, the metric, stderr, the flow bus, the
//!   [`AlertSink`]s and the live alert stream.
//! - `sinks`: the alert sinks, [`Webhook`] and [`Syslog`], each queueing
//!   alerts for a task of its own.

mod alert;
mod json;
mod metrics;
mod process;
mod record;
mod recorder;
mod sink;
mod sinks;
mod view;

pub use alert::{
    Alert, AlertFilter, AlertKind, AlertRing, DEFAULT_RECENT_ALERTS, DEFAULT_WINDOW, MAX_FLOWS,
    Severity,
};
pub use metrics::{ActiveTunnel, COMMIT, CONTENT_TYPE, DialFailure, LIMITS, Metrics};
pub use record::{
    ErrorKind, Finding, FlowRecord, Listener, Protocol, addr_string, ip_string, next_id, rfc3339,
};
pub use recorder::{Detector, FlowBus, LiveAlert, RecordSink, Recorder};
pub use sink::{DEFAULT_CAPACITY, FlowSink, FlowTarget, FlowWriter};
pub use sinks::{
    AlertSink, Syslog, SyslogError, Webhook, WebhookError, format_rfc5424, frame_octet_counted,
};
pub use view::{
    BUCKETS, FlowFilter, FlowView, OTHER, RuleStat, Sequenced, TopBy, TopEntry, Totals,
    TrafficBucket, ViewLimits, ZoneTop,
};
