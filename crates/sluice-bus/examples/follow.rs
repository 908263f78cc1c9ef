//! Follows the flow bus as `sluice detect --follow` will, and counts: how
//! many records one follower reads and how fast (the benchmark in
//! `bench/bus.sh`), and which partitions and zones they came from.
//!
//! ```text
//! cargo run --release -p sluice-bus --example follow -- \
//!     nats://127.0.0.1:4222 [--stream SLUICE] [--partitions 8] \
//!     [--partition K/N] [--durable NAME] [--count N] [--idle-ms 2000]
//! ```
//!
//! It stops after `--count` records, or when none came for `--idle-ms`,
//! and prints one JSON line: records, seconds (from the first record to
//! the last), records per second, bad messages, and records by partition.

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use futures_util::StreamExt;
use sluice_bus::{FollowOptions, Partition, follow};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("follow: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut opts = FollowOptions {
        url: String::new(),
        stream: "SLUICE".into(),
        partitions: 8,
        partition: Partition::ALL,
        durable: "follow-example".into(),
    };
    let mut count = u64::MAX;
    let mut idle = Duration::from_secs(2);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--stream" => opts.stream = value()?,
            "--partitions" => {
                opts.partitions = value()?.parse().map_err(|e| format!("--partitions: {e}"))?;
            }
            "--partition" => opts.partition = value()?.parse().map_err(|e| format!("{e}"))?,
            "--durable" => opts.durable = value()?,
            "--count" => count = value()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--idle-ms" => {
                idle =
                    Duration::from_millis(value()?.parse().map_err(|e| format!("--idle-ms: {e}"))?);
            }
            url if !url.starts_with("--") && opts.url.is_empty() => opts.url = url.to_owned(),
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    if opts.url.is_empty() {
        return Err("usage: follow NATS_URL [--stream S] [--partitions P] [--partition K/N] [--durable NAME] [--count N] [--idle-ms MS]".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut f = follow(&opts).await.map_err(|e| e.to_string())?;
        let (mut n, mut bad) = (0u64, 0u64);
        let mut by_partition: BTreeMap<u32, u64> = BTreeMap::new();
        let mut first = None;
        let mut last = tokio::time::Instant::now();
        while n < count {
            match tokio::time::timeout(idle, f.next()).await {
                Ok(Some(Ok(r))) => {
                    last = tokio::time::Instant::now();
                    first.get_or_insert(last);
                    n += 1;
                    *by_partition.entry(r.partition).or_default() += 1;
                }
                Ok(Some(Err(e))) => {
                    bad += 1;
                    eprintln!("follow: {e}");
                }
                Ok(None) | Err(_) => break,
            }
        }
        let secs = first.map_or(0.0, |t| (last - t).as_secs_f64());
        let rate = if secs > 0.0 { n as f64 / secs } else { 0.0 };
        println!(
            "{}",
            serde_json::json!({
                "records": n,
                "seconds": secs,
                "records_per_second": rate.round(),
                "bad": bad,
                "by_partition": by_partition,
            })
        );
        Ok(())
    })
}
