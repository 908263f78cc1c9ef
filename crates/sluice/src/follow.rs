//! `sluice detect -c FILE --follow nats://… [--partition K/N]`: the same
//! detectors as `sluice run`'s embedded ones (`sluice-detect`'s `Live`,
//! the same baselines store with `detect.state_dir`), run fleet-wide on
//! every replica's flow records read back from the flow bus with durable
//! consumers (`sluice_bus::follow`). Each new alert is written once: a JSON
//! line on stdout, a message on `sluice.alerts`, and to the configured
//! alert sinks (`detect.webhook`, `detect.syslog`).
//!
//! Replicas whose flows a follower judges set `detect.embedded: false`,
//! so that no alert is raised twice. Records are judged in event time,
//! like `sluice detect` on files: two replicas publish into one partition
//! and a replica back from a bus outage publishes late, so records wait in
//! a [`Reorder`] buffer until `detect.max_lateness` has passed in event
//! time (or in quiet wall time) and come out earliest first; records later
//! than that are dropped and counted. Nothing here may wait on an alert
//! sink.
//!
//! The price: an alert comes up to `detect.max_lateness` after its record
//! (set it lower for quicker alerts, as long as it covers the replicas'
//! disorder), and the records in the buffer when the follower dies (not a
//! SIGTERM, which judges them all) are not judged: their messages were
//! acknowledged when they entered it.

use std::{
    path::Path,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use sluice_bus::{
    BusMetrics, BusOptions, FollowError, FollowOptions, Follower, Partition, Publisher,
};
use sluice_detect::Reorder;
use sluice_observe::{AlertRing, Detector, FlowBus, FlowRecord, Metrics};

/// Alerts remembered for folding repeats (as `sluice detect` on files).
const RING: usize = 100_000;

/// How often baselines are written to `detect.state_dir`.
const SAVE_EVERY: Duration = Duration::from_secs(10);

/// How long to wait before asking again for a stream that is not there
/// yet, or after the follower's connection ended.
const RETRY: Duration = Duration::from_secs(1);

/// How long alerts still queued for the bus may take at exit.
const BUS_CLOSE: Duration = Duration::from_secs(5);

/// Bad messages reported one by one; the rest only counted.
const MAX_DIAGNOSTICS: u64 = 10;

/// Records the event-time buffer holds at most (about 1 KiB each); beyond
/// that the earliest is judged before its time.
const REORDER_CAP: usize = 200_000;

/// How often a quiet follower looks whether buffered records are due.
const REORDER_TICK: Duration = Duration::from_millis(250);

/// What `--follow` was given.
#[derive(Debug, Clone)]
pub struct Args<'a> {
    /// The configuration file.
    pub config: &'a Path,
    /// The NATS server URL(s).
    pub url: &'a str,
    /// This follower's share of the partitions.
    pub partition: Partition,
    /// The durable consumers' name prefix.
    pub durable: &'a str,
}

/// Runs until SIGTERM or SIGINT; 0, or 2 when the configuration cannot be
/// read or the follower cannot start.
pub fn main(args: &Args<'_>) -> ExitCode {
    crate::log::init(crate::log::Format::Text);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(follow(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// What the loop counted, for the line at exit.
#[derive(Debug, Default)]
struct Counts {
    records: u64,
    bad: u64,
    alerts: u64,
    /// Records without a readable `ts` (not judged).
    untimed: u64,
    /// When the first and the latest record came.
    first: Option<Instant>,
    last: Option<Instant>,
}

async fn follow(args: &Args<'_>) -> Result<()> {
    let path = args.config;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path.display().to_string();
    let policy = sluice_policy::Policy::load_at(&text, &name, crate::run::now_ms())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = policy.config();
    let opts = options(args, config)?;

    let mut metrics = Metrics::new();
    let bus_metrics = BusMetrics::register(metrics.registry_mut());
    let metrics = Arc::new(metrics);
    let live = crate::detect::live(config, Some(path), &metrics)?;
    let sinks = crate::detect::alert_sinks(config, &metrics)?;
    let (bus, publisher) = Publisher::start(
        BusOptions {
            url: args.url.to_owned(),
            stream: config.bus.stream.clone(),
            partitions: config.bus.partitions,
            queue: config.bus.queue as usize,
        },
        bus_metrics,
    );
    let judge = Judge {
        live: &live,
        ring: AlertRing::new(RING),
        bus: &bus,
        sinks: &sinks,
    };
    let lateness = i64::try_from(config.detect.max_lateness.as_millis()).unwrap_or(i64::MAX);
    let mut order: Reorder<FlowRecord> = Reorder::new(lateness, REORDER_CAP);
    let mut tick = tokio::time::interval(REORDER_TICK);
    let mut stop = crate::run::Stop::install()?;
    let mut save = tokio::time::interval(SAVE_EVERY);
    let mut n = Counts::default();
    let started = Instant::now();
    tracing::info!(
        url = %args.url,
        stream = %opts.stream,
        partitions = ?opts.partition.owned(opts.partitions),
        share = %opts.partition,
        durable = %opts.durable,
        "following the flow bus"
    );

    'follow: loop {
        let Some(mut records) = subscribe(&opts, &mut stop).await? else {
            break 'follow;
        };
        loop {
            tokio::select! {
                item = records.next() => match item {
                    Some(Ok(f)) => judge.arrived(f.record, &mut order, &mut n),
                    Some(Err(e @ FollowError::BadRecord { .. })) => {
                        n.bad += 1;
                        if n.bad <= MAX_DIAGNOSTICS {
                            tracing::warn!(error = %e, "flow bus: skipped a message");
                        }
                    }
                    // The consumer's own trouble (missed heartbeats while
                    // the server is away): the stream goes on after it.
                    Some(Err(e)) => tracing::warn!(error = %e, "flow bus"),
                    None => {
                        tracing::warn!("flow bus: the follower's connection ended; following again");
                        tokio::time::sleep(RETRY).await;
                        continue 'follow;
                    }
                },
                _ = tick.tick() => {
                    let idle = n.last.map_or(0, |t| i64::try_from(t.elapsed().as_millis()).unwrap_or(i64::MAX));
                    while let Some(r) = order.pop_ready(idle) {
                        judge.record(r, &mut n);
                    }
                }
                _ = save.tick() => crate::run::save_baselines(&live).await,
                () = stop.recv() => break 'follow,
            }
        }
    }

    // What waits in the buffer is judged before exit, earliest first.
    while let Some(r) = order.pop() {
        judge.record(r, &mut n);
    }
    crate::run::save_baselines(&live).await;
    publisher.close(BUS_CLOSE).await;
    eprintln!(
        "sluice detect: followed {}",
        summary(&n, order.late(), started.elapsed())
    );
    Ok(())
}

/// Starts following, waiting for a stream no replica has published to yet
/// or for the server, and asking again every [`RETRY`]; `None` when a
/// signal comes first. A bad share or consumer name is an error.
async fn subscribe(opts: &FollowOptions, stop: &mut crate::run::Stop) -> Result<Option<Follower>> {
    loop {
        tokio::select! {
            f = sluice_bus::follow(opts) => match f {
                Ok(f) => return Ok(Some(f)),
                Err(e @ (FollowError::BadDurable(_) | FollowError::NoPartitions { .. })) => {
                    return Err(e.into());
                }
                Err(e) => tracing::warn!(error = %e, "flow bus: cannot follow yet; retrying"),
            },
            () = stop.recv() => return Ok(None),
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = stop.recv() => return Ok(None),
        }
    }
}

/// The follower's options from the command line and the file's `bus`;
/// a share that owns no partition is refused before anything starts (a
/// bad share or name is the user's).
fn options(args: &Args<'_>, config: &sluice_policy::model::Config) -> Result<FollowOptions> {
    let opts = FollowOptions {
        url: args.url.to_owned(),
        stream: config.bus.stream.clone(),
        partitions: config.bus.partitions,
        partition: args.partition,
        durable: args.durable.to_owned(),
    };
    if opts.partition.owned(opts.partitions).is_empty() {
        return Err(FollowError::NoPartitions {
            partition: opts.partition,
            partitions: opts.partitions,
        }
        .into());
    }
    Ok(opts)
}

/// The exit line's body: records and their rate, time, alerts, and what
/// was skipped (`late` records beyond `max_lateness`).
fn summary(n: &Counts, late: u64, took: Duration) -> String {
    let rate = match (n.first, n.last) {
        (Some(first), Some(last)) if last > first => {
            format!(
                " ({:.0} records/s from the first to the last)",
                n.records.saturating_sub(1) as f64 / (last - first).as_secs_f64()
            )
        }
        _ => String::new(),
    };
    let mut skipped = Vec::new();
    if n.bad > 0 {
        skipped.push(format!("{} messages were not flow records", n.bad));
    }
    if n.untimed > 0 {
        skipped.push(format!("{} records had no RFC 3339 ts", n.untimed));
    }
    if late > 0 {
        skipped.push(format!(
            "{late} records arrived more than max_lateness after later ones and were skipped"
        ));
    }
    format!(
        "{} records{rate} in {:.1} s, {} alerts{}",
        n.records,
        took.as_secs_f64(),
        n.alerts,
        if skipped.is_empty() {
            String::new()
        } else {
            format!(" ({})", skipped.join("; "))
        }
    )
}

/// A record's event time (its end, `ts`), in ms since the epoch.
fn event_ms(r: &FlowRecord) -> Option<i64> {
    let end = r.end_time()?;
    let ms = end.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    i64::try_from(ms).ok()
}

/// Where a record in its turn goes: the detectors, and each new alert to
/// stdout, the bus and the sinks.
struct Judge<'a> {
    live: &'a sluice_detect::Live,
    ring: AlertRing,
    bus: &'a sluice_bus::BusQueue,
    sinks: &'a [Box<dyn sluice_observe::AlertSink>],
}

// === impl Judge ===

impl Judge<'_> {
    /// A record from the bus: counted, buffered by its event time (one
    /// without is counted and not judged), and whatever is due judged.
    fn arrived(&self, r: FlowRecord, order: &mut Reorder<FlowRecord>, n: &mut Counts) {
        n.records += 1;
        let now = Instant::now();
        n.first.get_or_insert(now);
        n.last = Some(now);
        match event_ms(&r) {
            Some(at) => {
                // False when it came too late: `order` counts it.
                order.push(at, r);
            }
            None => n.untimed += 1,
        }
        while let Some(r) = order.pop_ready(0) {
            self.record(r, n);
        }
    }

    fn record(&self, mut r: FlowRecord, n: &mut Counts) {
        self.live.enrich(&mut r);
        for a in self.live.observe(&r) {
            let Some(new) = self.ring.push(a) else {
                continue;
            };
            let json = match serde_json::to_string(&new) {
                Ok(json) => json,
                Err(e) => {
                    tracing::error!(error = %e, "cannot serialize an alert");
                    continue;
                }
            };
            n.alerts += 1;
            // stdout is line-buffered: each alert leaves now.
            println!("{json}");
            self.bus.alert(&new);
            for sink in self.sinks {
                sink.send(&new, &json);
            }
        }
    }
}
