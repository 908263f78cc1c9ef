//! What publishing costs per record, alone: the recorder's side
//! (`FlowBus::record`, a non-blocking send of two pointers) plus the
//! publishing task and the NATS client, with the records' JSON made
//! beforehand as the recorder makes it once for the flow log anyway
//! (`bench/bus.sh`).
//!
//! ```text
//! cargo run --release -p sluice-bus --example publish -- \
//!     nats://127.0.0.1:4222 FLOWS.jsonl [--rate 8000] [--seconds 10] [--partitions 8]
//! ```
//!
//! It feeds the flow log's records (over and over, each time with fresh
//! ids) at `--rate` records a second for `--seconds`, twice: once into
//! nothing (the pacing alone) and once into the bus, each run closed by
//! waiting for every acknowledgement; it prints one JSON line with the
//! process's CPU (user + system, every thread) per record of each run and
//! their difference, what publishing costs; and the CPU per record of
//! the publisher's own thread alone (`bus_thread_us_per_record`, without
//! the recorder's side), which the load of other processes moves less.

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use sluice_bus::{BusMetrics, BusOptions, Publisher};
use sluice_observe::{FlowBus, FlowRecord, Metrics};

/// The allocator of the `sluice` binary, so that the figure is its own.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The publisher's thread (`sluice_bus::publish`).
const BUS_THREAD: &str = "sluice-bus";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("publish: {e}");
            ExitCode::from(2)
        }
    }
}

struct Args {
    url: String,
    flows: String,
    rate: u64,
    seconds: u64,
    partitions: u32,
}

fn args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        url: it.next().ok_or("expected a NATS URL")?,
        flows: it.next().ok_or("expected a flow log")?,
        rate: 8000,
        seconds: 10,
        partitions: 8,
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: std::num::ParseIntError| format!("{flag}: {e}");
        match flag.as_str() {
            "--rate" => a.rate = value.parse().map_err(bad)?,
            "--seconds" => a.seconds = value.parse().map_err(bad)?,
            "--partitions" => a.partitions = value.parse().map_err(bad)?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// CPU time of the whole process so far (every thread, or only the
/// threads named `only`), in µs, from each thread's `schedstat`
/// (nanoseconds on the CPU).
fn cpu_us(only: Option<&str>) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    let mut ns = 0u64;
    for t in tasks.flatten() {
        if let Some(name) = only
            && std::fs::read_to_string(t.path().join("comm")).map_or(true, |c| c.trim_end() != name)
        {
            continue;
        }
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 / 1e3
}

fn run() -> Result<(), String> {
    let a = args()?;
    let text = std::fs::read_to_string(&a.flows).map_err(|e| format!("{}: {e}", a.flows))?;
    let mut base: Vec<serde_json::Value> = Vec::new();
    for line in text.lines().take(10_000) {
        base.push(serde_json::from_str(line).map_err(|e| e.to_string())?);
    }
    if base.is_empty() {
        return Err("no records in the flow log".into());
    }
    let total = (a.rate * a.seconds) as usize;
    // Fresh ids (the stream deduplicates by id), JSON made once, as the
    // recorder does.
    let run = std::process::id();
    let mut records: Vec<(Arc<FlowRecord>, Bytes)> = Vec::with_capacity(total);
    for i in 0..total {
        let mut v = base[i % base.len()].clone();
        v["id"] = format!("bench-{run}-{i}").into();
        let mut r: FlowRecord = serde_json::from_value(v).map_err(|e| e.to_string())?;
        r.restore_times();
        let json = r.json();
        records.push((Arc::new(r), json));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let (off, _) = feed(&records, a.rate, None).await;
        let mut metrics = Metrics::new();
        let bus = BusMetrics::register(metrics.registry_mut());
        let (queue, publisher) = Publisher::start(
            BusOptions {
                url: a.url.clone(),
                stream: "SLUICE".into(),
                partitions: a.partitions,
                queue: 100_000,
            },
            bus,
        );
        // Connected and the stream made before the clock starts.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (on, thread) = feed(&records, a.rate, Some((queue, publisher))).await;
        let text = metrics.encode();
        let published = text
            .lines()
            .find_map(|l| l.strip_prefix("sluice_bus_published_total "))
            .unwrap_or("?");
        println!(
            "{{\"records\":{total},\"rate\":{},\"published\":{published},\"off_us_per_record\":{:.3},\"on_us_per_record\":{:.3},\"bus_us_per_record\":{:.3},\"bus_thread_us_per_record\":{:.3}}}",
            a.rate,
            off / total as f64,
            on / total as f64,
            (on - off) / total as f64,
            thread / total as f64
        );
    });
    Ok(())
}

/// Feeds `records` at `rate` a second (a tick a millisecond) into the
/// bus if there is one, then closes it (every acknowledgement in); the
/// process's CPU time meanwhile, and that of the publisher's own thread
/// until the close (it ends with it), in µs.
async fn feed(
    records: &[(Arc<FlowRecord>, Bytes)],
    rate: u64,
    bus: Option<(sluice_bus::BusQueue, Publisher)>,
) -> (f64, f64) {
    let per_tick = (rate / 1000).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = cpu_us(None);
    let thread_start = cpu_us(Some(BUS_THREAD));
    let t = Instant::now();
    let mut seen = 0usize;
    for chunk in records.chunks(per_tick) {
        tick.tick().await;
        for (r, json) in chunk {
            match &bus {
                Some((queue, _)) => queue.record(r, json),
                None => seen += std::hint::black_box(json.len()),
            }
        }
    }
    let mut thread = 0.0;
    if let Some((queue, publisher)) = bus {
        thread = cpu_us(Some(BUS_THREAD)) - thread_start;
        drop(queue);
        publisher.close(Duration::from_secs(30)).await;
    }
    std::hint::black_box(seen);
    eprintln!(
        "fed {} records in {:.2} s",
        records.len(),
        t.elapsed().as_secs_f64()
    );
    (cpu_us(None) - start, thread)
}
