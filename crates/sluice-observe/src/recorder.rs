//! The record stage's fan-out: one [`Recorder`] takes every finished flow
//! record and every alert, and hands each to the outputs that want it —
//! metrics, the admin API's [`FlowView`], the [`FlowSink`], the detectors,
//! the [`AlertRing`] and, when configured, the flow bus ([`FlowBus`]).
//!
//! It runs on the data path (once per flow) and must never make it wait:
//! every output it calls takes at most one short lock or a non-blocking
//! send. Detectors here see records only, in their own time; they must be
//! as cheap.

use std::{sync::Arc, time::SystemTime};

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::{Alert, AlertRing, FlowRecord, FlowSink, FlowView, Metrics, sinks::AlertSink};

/// New alerts a slow live-stream subscriber may fall behind before it
/// skips (and is told how many it missed).
const ALERT_BACKLOG: usize = 256;

/// A new alert as the live alert stream sends it: its sequence number
/// (the event id), the alert, and its JSON, serialized once.
#[derive(Debug)]
pub struct LiveAlert {
    /// 1, 2, … in the order alerts were emitted since start.
    pub seq: u64,
    /// The alert as first emitted.
    pub alert: Alert,
    /// Its JSON, one line.
    pub json: String,
}

/// The record stage's seam: where every listener (the proxies through
/// `sluice-net`'s gateway, the DNS forwarder directly) hands finished flow
/// records and the alerts it raises. [`Recorder`] implements it; tests may
/// implement it to capture what the data path emits. Must never block.
pub trait RecordSink: Send + Sync {
    /// One finished record (its end time stamped).
    fn record(&self, r: FlowRecord);

    /// Finished records that arrived together (the flows of one NetFlow
    /// datagram), in order: the same as one [`RecordSink::record`] each,
    /// which is what this default does; the [`Recorder`] hands them to
    /// the flow log as one write.
    fn record_batch(&self, rs: Vec<FlowRecord>) {
        for r in rs {
            self.record(r);
        }
    }

    /// One alert raised on the data path (the DNS tunnelling signal).
    fn alert(&self, a: Alert);
}

impl RecordSink for Recorder {
    fn record(&self, r: FlowRecord) {
        Recorder::record(self, r);
    }

    fn record_batch(&self, rs: Vec<FlowRecord>) {
        Recorder::record_batch(self, rs);
    }

    fn alert(&self, a: Alert) {
        Recorder::alert(self, a);
    }
}

/// A detector on the record path: looks at each finished record and says
/// which alerts, if any, it raises. It runs synchronously for every flow,
/// so it keeps bounded state, takes no lock for long and never does I/O;
/// it reasons in the record's own time, never the wall clock.
pub trait Detector: Send + Sync {
    /// Fills what the detector knows about `r` before anything else sees
    /// it (the destination's `country`); cheap, like `observe`.
    fn enrich(&self, _r: &mut FlowRecord) {}

    /// The alerts `r` raises (usually none). Repeats are fine: the
    /// recorder folds them into the stored alert's count.
    fn observe(&self, r: &FlowRecord) -> Vec<Alert>;

    /// [`Detector::observe`] for records that arrived together, in
    /// order, appending their alerts to `out`: the same alerts as one
    /// call each, which is what this default does. A detector with a
    /// lock takes it once a batch here.
    fn observe_batch(&self, rs: &[FlowRecord], out: &mut Vec<Alert>) {
        for r in rs {
            out.extend(self.observe(r));
        }
    }
}

/// The flow bus as the recorder sees it: a handle that queues a record or
/// a new alert for publishing elsewhere (`sluice-bus` publishes to NATS
/// JetStream) and returns at once. It never blocks and never does I/O on
/// the caller's thread: a full queue drops and counts.
pub trait FlowBus: Send + Sync {
    /// Queues one finished record (shared with the view) and its JSON
    /// ([`FlowRecord::json`], shared with the flow log's sink: serialized
    /// once).
    fn record(&self, r: &Arc<FlowRecord>, json: &Bytes);

    /// Queues one alert, when it first fires (repeats are not published).
    fn alert(&self, a: &Alert);
}

/// Where records and alerts go. Share it as `Arc<Recorder>`.
pub struct Recorder {
    metrics: Arc<Metrics>,
    view: Arc<FlowView>,
    sink: FlowSink,
    detectors: Vec<Box<dyn Detector>>,
    alerts: AlertRing,
    bus: Option<Box<dyn FlowBus>>,
    alert_sinks: Vec<Box<dyn AlertSink>>,
    live_alerts: broadcast::Sender<Arc<LiveAlert>>,
}

// === impl Recorder ===

impl Recorder {
    /// A recorder counting into `metrics`, showing records in `view`,
    /// writing them to `sink` and keeping alerts in `alerts`, with no
    /// detector yet.
    pub fn new(
        metrics: Arc<Metrics>,
        view: Arc<FlowView>,
        sink: FlowSink,
        alerts: AlertRing,
    ) -> Recorder {
        Recorder {
            metrics,
            view,
            sink,
            detectors: Vec::new(),
            alerts,
            bus: None,
            alert_sinks: Vec::new(),
            live_alerts: broadcast::channel(ALERT_BACKLOG).0,
        }
    }

    /// The same recorder handing every record and every new alert to
    /// `bus` as well.
    #[must_use]
    pub fn with_bus(mut self, bus: Box<dyn FlowBus>) -> Recorder {
        self.bus = Some(bus);
        self
    }

    /// The same recorder with every new alert also sent to `sink` (the
    /// webhook, syslog).
    #[must_use]
    pub fn with_alert_sink(mut self, sink: Box<dyn AlertSink>) -> Recorder {
        self.alert_sinks.push(sink);
        self
    }

    /// New alerts from now on, for the live alert stream. A subscriber
    /// that falls more than 256 alerts behind gets `RecvError::Lagged`.
    pub fn subscribe_alerts(&self) -> broadcast::Receiver<Arc<LiveAlert>> {
        self.live_alerts.subscribe()
    }

    /// The same recorder with `detector` run on every record from now on.
    #[must_use]
    pub fn with_detector(mut self, detector: Box<dyn Detector>) -> Recorder {
        self.detectors.push(detector);
        self
    }

    /// Takes one finished record: lets the detectors fill what they know
    /// (its `country`), counts it (per-rule hits only for rules with an
    /// explicit id), runs the detectors on it, and hands it to the view
    /// and the sink.
    ///
    /// The record must already be finished ([`FlowRecord::finish`]): the
    /// listener that owns a flow stamps its end time exactly once, and this
    /// stage changes no field of it but what a detector fills (`country`).
    pub fn record(&self, mut r: FlowRecord) {
        self.judge(&mut r);
        // Serialized once, here: the flow log and the bus write the same
        // bytes (with the bus on, a second encoding per record was most of
        // its cost, bench/bus.sh).
        let json = r.json();
        let r = Arc::new(r);
        if let Some(bus) = &self.bus {
            bus.record(&r, &json);
        }
        self.view.push_shared(r, SystemTime::now());
        self.sink.send_json(json);
    }

    /// [`Recorder::record`] for records that arrived together (the flows
    /// of one NetFlow datagram): each is enriched, counted and observed
    /// as [`Recorder::record`] would, but each output takes the batch at
    /// once — the metrics summed per label set, each detector and the
    /// view under one lock a batch — and their JSON lines go to the flow
    /// log as one buffer, one queue slot and one write (the bus gets each
    /// record's slice of it). bench/README.md "NetFlow collector" has the
    /// measurements behind each of these.
    pub fn record_batch(&self, mut rs: Vec<FlowRecord>) {
        if rs.len() < 2 {
            for r in rs {
                self.record(r);
            }
            return;
        }
        for r in &mut rs {
            for d in &self.detectors {
                d.enrich(r);
            }
        }
        self.metrics.record_batch(&rs);
        for r in &rs {
            self.rule_hit(r);
        }
        let mut alerts = Vec::new();
        for d in &self.detectors {
            d.observe_batch(&rs, &mut alerts);
        }
        for a in alerts {
            self.alert(a);
        }
        // A NetFlow record is ~720 bytes: one allocation, no regrowth.
        let mut lines = Vec::with_capacity(rs.len() * 1024);
        let mut kept = Vec::with_capacity(rs.len());
        for r in rs {
            let start = lines.len();
            r.write_json(&mut lines);
            kept.push((Arc::new(r), start, lines.len()));
            lines.push(b'\n');
        }
        let lines = Bytes::from(lines);
        let n = kept.len() as u64;
        if let Some(bus) = &self.bus {
            for (r, start, end) in &kept {
                bus.record(r, &lines.slice(*start..*end));
            }
        }
        self.view
            .push_batch(kept.into_iter().map(|(r, _, _)| r), SystemTime::now());
        self.sink.send_lines(lines, n);
    }

    /// What every record goes through before it is kept: the detectors'
    /// enrichment, the metrics, and the detectors (their alerts raised).
    fn judge(&self, r: &mut FlowRecord) {
        for d in &self.detectors {
            d.enrich(r);
        }
        self.metrics.record(r);
        self.rule_hit(r);
        for d in &self.detectors {
            for a in d.observe(r) {
                self.alert(a);
            }
        }
    }

    /// Per-rule metrics only for rules with an explicit id (ids never
    /// contain `/`; positional and guard ids do); a long tunnel's
    /// interim records do not hit its rule again.
    fn rule_hit(&self, r: &FlowRecord) {
        if !r.rule.is_empty()
            && !r.rule.contains('/')
            && r.rule != "default"
            && r.interim != Some(true)
        {
            self.metrics.rule_hit(&r.rule);
        }
    }

    /// Takes one alert, from a detector here or from a listener that
    /// detects on its own (the DNS forwarder). A repeat within a stored
    /// alert's window only raises that alert's count. A new one is kept in
    /// the ring, counted in `sluice_alerts_total{kind,severity}`, written
    /// as one JSON object on one line of stderr — the same object the API
    /// serves, with nothing before it, for log shippers to pick up — and
    /// handed, serialized once, to every alert sink and the live alert
    /// stream. Each sink only queues it (never waits).
    pub fn alert(&self, a: Alert) {
        let Some((seq, new)) = self.alerts.push_seq(a) else {
            return;
        };
        self.metrics.alert(new.kind, new.severity);
        if let Some(bus) = &self.bus {
            bus.alert(&new);
        }
        let json = match serde_json::to_string(&new) {
            Ok(line) => line,
            // A Value of our own making with string keys: cannot happen.
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize an alert");
                return;
            }
        };
        eprintln!("{json}");
        for sink in &self.alert_sinks {
            sink.send(&new, &json);
        }
        // No subscribers is not an error.
        let _ = self.live_alerts.send(Arc::new(LiveAlert {
            seq,
            alert: new,
            json,
        }));
    }

    /// Recent alerts, for the admin API.
    pub fn alerts(&self) -> &AlertRing {
        &self.alerts
    }

    /// The metrics registry records and alerts are counted in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The admin API's view of recent flows.
    pub fn view(&self) -> &Arc<FlowView> {
        &self.view
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("detectors", &self.detectors.len())
            .field("bus", &self.bus.is_some())
            .field("alerts", &self.alerts)
            .field("alert_sinks", &self.alert_sinks.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use super::*;
    use crate::{AlertFilter, AlertKind, FlowTarget, Listener, Protocol, Severity, ViewLimits};

    /// Raises one `denied-burst` alert per denied record, keyed by source.
    struct EveryDenial;

    impl Detector for EveryDenial {
        fn observe(&self, r: &FlowRecord) -> Vec<Alert> {
            if r.verdict == sluice_policy::Verdict::Allow {
                return Vec::new();
            }
            let at = r.end_time().unwrap_or(SystemTime::UNIX_EPOCH);
            let mut a = Alert::new(AlertKind::DeniedBurst, Severity::Info, at, "denied".into());
            a.src = Some(r.src.ip().to_string());
            a.flows = vec![r.id().to_owned()];
            vec![a]
        }
    }

    fn recorder(dir: &std::path::Path) -> (Recorder, crate::FlowWriter) {
        let metrics = Arc::new(Metrics::new());
        let (sink, writer) =
            FlowSink::start(FlowTarget::File(dir.join("flows.jsonl")), 16, &metrics).unwrap();
        let view = Arc::new(FlowView::new(ViewLimits {
            recent_flows: 10,
            recent_denials: 10,
            window: Duration::from_secs(3600),
            top_entries: 10,
        }));
        let r = Recorder::new(metrics, view, sink, AlertRing::new(10))
            .with_detector(Box::new(EveryDenial));
        (r, writer)
    }

    fn flow(verdict: &str, rule: &str) -> FlowRecord {
        let src: SocketAddr = "10.0.1.7:40000".parse().unwrap();
        let mut r = FlowRecord::new(Listener::Http, Protocol::Http, src, SystemTime::now());
        r.verdict = match verdict {
            "allow" => sluice_policy::Verdict::Allow,
            _ => sluice_policy::Verdict::Deny,
        };
        r.rule = rule.into();
        r.finish(SystemTime::now());
        r
    }

    #[tokio::test]
    async fn records_reach_every_output_and_detectors_raise_alerts_once() {
        let dir = std::env::temp_dir().join(format!("sluice-recorder-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (rec, writer) = recorder(&dir);
        rec.record(flow("allow", "gh-content"));
        rec.record(flow("allow", "web/allow/2"));
        rec.record(flow("deny", "default"));
        rec.record(flow("deny", "default"));
        let text = rec.metrics().encode();
        assert!(
            text.contains(r#"sluice_rule_hits_total{rule="gh-content"} 1"#),
            "{text}"
        );
        assert!(!text.contains(r#"rule="web/allow/2""#), "{text}");
        assert!(!text.contains(r#"rule="default""#), "{text}");
        assert!(
            text.contains(r#"sluice_alerts_total{kind="denied-burst",severity="info"} 1"#),
            "the repeat is not counted: {text}"
        );
        assert_eq!(rec.view().flows(&crate::FlowFilter::default(), 10).len(), 4);
        let alerts = rec.alerts().query(&AlertFilter::default(), 10);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].count, 2);
        assert_eq!(alerts[0].src.as_deref(), Some("10.0.1.7"));
        assert_eq!(alerts[0].flows.len(), 2);
        drop(rec);
        writer.close().await.unwrap();
        let written = std::fs::read_to_string(dir.join("flows.jsonl")).unwrap();
        assert_eq!(written.lines().count(), 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_batch_is_judged_and_written_like_single_records() {
        let dir =
            std::env::temp_dir().join(format!("sluice-recorder-batch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (rec, writer) = recorder(&dir);
        let batch = vec![
            flow("allow", "gh-content"),
            flow("deny", "default"),
            flow("allow", "gh-content"),
        ];
        rec.record_batch(batch.clone());
        rec.record(flow("allow", "gh-content"));
        let text = rec.metrics().encode();
        assert!(
            text.contains(r#"sluice_rule_hits_total{rule="gh-content"} 3"#),
            "{text}"
        );
        assert_eq!(rec.alerts().query(&AlertFilter::default(), 10).len(), 1);
        assert_eq!(rec.view().flows(&crate::FlowFilter::default(), 10).len(), 4);
        drop(rec);
        writer.close().await.unwrap();
        let written = std::fs::read_to_string(dir.join("flows.jsonl")).unwrap();
        let lines: Vec<FlowRecord> = written
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[..3], batch[..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `single` and `batched` counted the same metrics and hold the same
    /// view (rings, rule stats, traffic, top list) and alerts.
    fn assert_same_outputs(single: &Recorder, batched: &Recorder) {
        // Sorted: a family's label sets are encoded in hash order.
        let counted = |rec: &Recorder| -> Vec<String> {
            let mut v: Vec<String> = rec
                .metrics()
                .encode()
                .lines()
                .filter(|l| {
                    [
                        "sluice_tunnels",
                        "sluice_requests",
                        "sluice_bytes",
                        "sluice_http",
                        "sluice_rule_hits",
                        "sluice_alerts",
                    ]
                    .iter()
                    .any(|p| l.starts_with(p))
                })
                .map(str::to_owned)
                .collect();
            v.sort();
            v
        };
        assert!(!counted(single).is_empty());
        assert_eq!(counted(single), counted(batched));
        let ids = |rec: &Recorder| -> Vec<String> {
            let f = crate::FlowFilter::default();
            let mut v: Vec<String> = rec
                .view()
                .flows(&f, 100)
                .iter()
                .map(|r| r.id().to_owned())
                .collect();
            v.extend(
                rec.view()
                    .denials(&f, 100)
                    .iter()
                    .map(|r| r.id().to_owned()),
            );
            v
        };
        assert_eq!(ids(single), ids(batched));
        let mut a: Vec<_> = single
            .view()
            .rule_stats()
            .into_iter()
            .map(|(k, v)| (k, v.hits))
            .collect();
        let mut b: Vec<_> = batched
            .view()
            .rule_stats()
            .into_iter()
            .map(|(k, v)| (k, v.hits))
            .collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        let now = SystemTime::now();
        let traffic = |rec: &Recorder| -> Vec<_> {
            rec.view()
                .traffic(now)
                .into_iter()
                .map(|b| b.zones)
                .collect()
        };
        assert_eq!(traffic(single), traffic(batched));
        let top = |rec: &Recorder| {
            rec.view().top(
                now,
                Duration::from_secs(3600),
                None,
                crate::TopBy::Bytes,
                10,
            )
        };
        assert_eq!(top(single), top(batched));
        let alerts = |rec: &Recorder| -> Vec<(Option<String>, u64, Vec<String>)> {
            rec.alerts()
                .query(&AlertFilter::default(), 100)
                .into_iter()
                .map(|a| (a.src.clone(), a.count, a.flows.clone()))
                .collect()
        };
        assert_eq!(alerts(single), alerts(batched));
    }

    /// A batch leaves exactly what the same records one at a time leave:
    /// metrics (flows by listener, zone, verdict and enforcement; bytes by
    /// zone; HTTP classes; rule hits), the view's rings, rule stats,
    /// traffic and top lists, and the detectors' alerts.
    #[tokio::test]
    async fn a_batch_leaves_what_single_records_leave() {
        let dir = std::env::temp_dir().join(format!("sluice-recorder-ab-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::create_dir_all(dir.join("b")).unwrap();
        let (single, w1) = recorder(&dir.join("a"));
        let (batched, w2) = recorder(&dir.join("b"));
        let mut rs = Vec::new();
        for i in 0..40u64 {
            let verdict = if i % 3 == 0 { "deny" } else { "allow" };
            let rule = ["gh-content", "web/allow/2", "default", "ops-rule"][(i % 4) as usize];
            let mut r = flow(verdict, rule);
            r.listener = [Listener::Netflow, Listener::Http][(i % 2) as usize];
            r.protocol =
                [Protocol::Tcp, Protocol::Http, Protocol::Udp, Protocol::Dns][(i % 4) as usize];
            r.zone =
                [Some("web".to_owned()), None, Some("ops".to_owned())][(i % 3) as usize].clone();
            r.enforced = i % 5 != 0;
            r.bytes_out = i * 100;
            r.bytes_in = i % 7 * 10;
            r.dst_ip = Some(std::net::IpAddr::from([93, 184, 0, (i % 9) as u8]));
            if i % 11 == 0 {
                r.status = Some(200 + (i % 3) as u16 * 100);
            }
            if i % 13 == 0 {
                r.interim = Some(true);
            }
            rs.push(r);
        }
        for r in rs.clone() {
            single.record(r);
        }
        for chunk in rs.chunks(30) {
            batched.record_batch(chunk.to_vec());
        }
        assert_same_outputs(&single, &batched);
        drop((single, batched));
        w1.close().await.unwrap();
        w2.close().await.unwrap();
        // The batches' lines are the records' own JSON, in order (the
        // single records overflowed the 16-slot test queue: dropped and
        // counted, as designed).
        let b = std::fs::read_to_string(dir.join("b/flows.jsonl")).unwrap();
        let want: String = rs
            .iter()
            .map(|r| String::from_utf8(r.json().to_vec()).unwrap() + "\n")
            .collect();
        assert_eq!(b, want);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
