//! Flow logs read back in event time for `sluice detect`: every file is
//! read as a stream, records are merged across files by `ts`, and a record
//! may arrive up to `max_lateness` after later ones (a merged log is never
//! perfectly sorted); later than that it is dropped and counted. Each
//! record runs through the [`Engine`]; each alert goes through an
//! [`AlertRing`], the same folding the live recorder uses, and is written
//! once, when it first fires.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
};

use sluice_observe::AlertRing;

use crate::{Engine, RecordLine, obs::parse_ts_ms};

/// A line longer than this is not a record.
const MAX_LINE: u64 = 1 << 20;
/// Alerts remembered for folding repeats.
const RING: usize = 100_000;
/// Diagnostics printed for bad lines (the rest only counted).
const MAX_DIAGNOSTICS: u64 = 10;

/// What a replay read and wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records run through the detectors.
    pub records: u64,
    /// Lines that were not records (skipped).
    pub bad: u64,
    /// Records later than `max_lateness` (dropped).
    pub late: u64,
    /// Alerts written.
    pub alerts: u64,
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Alerts could not be written.
    #[error("cannot write alerts: {0}")]
    Write(#[source] std::io::Error),
}

struct Input {
    path: PathBuf,
    reader: BufReader<File>,
    line: u64,
    /// The latest `ts` read from it.
    max_ms: i64,
    done: bool,
}

/// Runs `engine` over the records of `paths`, merged in event time with
/// `lateness_ms` of disorder allowed; alerts as JSON lines to `out`,
/// diagnostics to `diag`.
pub fn run(
    engine: &mut Engine,
    paths: &[PathBuf],
    lateness_ms: i64,
    out: &mut dyn Write,
    diag: &mut dyn Write,
) -> Result<Summary, ReplayError> {
    let mut inputs = paths
        .iter()
        .map(|p| open(p))
        .collect::<Result<Vec<_>, _>>()?;
    let ring = AlertRing::new(RING);
    let mut sum = Summary::default();
    // Lines waiting to be run, earliest first: (ts, arrival, line).
    let mut heap: BinaryHeap<Reverse<(i64, u64, Vec<u8>)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut emitted_ms = i64::MIN;
    let mut buf = Vec::new();
    loop {
        // Read on from the input that lags most: the watermark moves on.
        let next = inputs
            .iter_mut()
            .filter(|i| !i.done)
            .min_by_key(|i| i.max_ms);
        if let Some(input) = next {
            match read_line(input, &mut buf)? {
                None => input.done = true,
                Some(line) => match ts_of(&buf) {
                    Some(ts) => {
                        input.max_ms = input.max_ms.max(ts);
                        if ts < emitted_ms {
                            sum.late += 1;
                        } else {
                            seq += 1;
                            heap.push(Reverse((ts, seq, std::mem::take(&mut buf))));
                        }
                    }
                    None if buf.iter().all(u8::is_ascii_whitespace) => {}
                    None => {
                        bad(&mut sum, diag, &input.path, line, "no RFC 3339 `ts`");
                    }
                },
            }
        }
        let active = inputs.iter().filter(|i| !i.done).map(|i| i.max_ms).min();
        let watermark = match active {
            Some(m) => m.saturating_sub(lateness_ms),
            None => i64::MAX,
        };
        while heap
            .peek()
            .is_some_and(|Reverse((ts, _, _))| *ts <= watermark)
        {
            let Some(Reverse((ts, _, line))) = heap.pop() else {
                break;
            };
            emitted_ms = emitted_ms.max(ts);
            run_line(engine, &ring, &line, &mut sum, out, diag)?;
        }
        if active.is_none() && heap.is_empty() {
            break;
        }
    }
    if sum.late > 0 {
        let _ = writeln!(
            diag,
            "sluice detect: {} records arrived more than max_lateness after later ones and were skipped",
            sum.late
        );
    }
    if sum.bad > MAX_DIAGNOSTICS {
        let _ = writeln!(
            diag,
            "sluice detect: {} lines in all were not flow records and were skipped",
            sum.bad
        );
    }
    Ok(sum)
}

fn open(path: &Path) -> Result<Input, ReplayError> {
    let file = File::open(path).map_err(|source| ReplayError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(Input {
        path: path.to_owned(),
        reader: BufReader::with_capacity(1 << 16, file),
        line: 0,
        max_ms: i64::MIN,
        done: false,
    })
}

/// The next line into `buf`; its number, or `None` at the end.
fn read_line(input: &mut Input, buf: &mut Vec<u8>) -> Result<Option<u64>, ReplayError> {
    buf.clear();
    let n = (&mut input.reader)
        .take(MAX_LINE + 1)
        .read_until(b'\n', buf)
        .map_err(|source| ReplayError::Read {
            path: input.path.clone(),
            source,
        })?;
    if n == 0 {
        return Ok(None);
    }
    input.line += 1;
    if buf.len() as u64 > MAX_LINE {
        // Skip the rest of an overlong line.
        let mut rest = Vec::new();
        while !buf.ends_with(b"\n") {
            rest.clear();
            let n = (&mut input.reader)
                .take(MAX_LINE)
                .read_until(b'\n', &mut rest)
                .map_err(|source| ReplayError::Read {
                    path: input.path.clone(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            buf.truncate(0);
            buf.extend_from_slice(&rest);
        }
        buf.clear();
        buf.extend_from_slice(b"-");
    }
    Ok(Some(input.line))
}

/// A record's `ts`: read where the flow log puts it (first), else from the
/// parsed line.
fn ts_of(line: &[u8]) -> Option<i64> {
    const PREFIX: &[u8] = b"{\"ts\":\"";
    if let Some(rest) = line.strip_prefix(PREFIX) {
        if let Some(end) = rest.iter().position(|&b| b == b'"') {
            if let Ok(s) = std::str::from_utf8(&rest[..end]) {
                if let Some(ms) = parse_ts_ms(s) {
                    return Some(ms);
                }
            }
        }
    }
    #[derive(serde::Deserialize)]
    struct Ts<'a> {
        #[serde(borrow)]
        ts: std::borrow::Cow<'a, str>,
    }
    let t: Ts<'_> = serde_json::from_slice(line).ok()?;
    parse_ts_ms(&t.ts)
}

fn run_line(
    engine: &mut Engine,
    ring: &AlertRing,
    line: &[u8],
    sum: &mut Summary,
    out: &mut dyn Write,
    diag: &mut dyn Write,
) -> Result<(), ReplayError> {
    let parsed = RecordLine::parse(line).and_then(|r| {
        let o = r.obs()?;
        Ok(engine.observe(&o))
    });
    let alerts = match parsed {
        Ok(a) => a,
        Err(e) => {
            sum.bad += 1;
            if sum.bad <= MAX_DIAGNOSTICS {
                let _ = writeln!(diag, "sluice detect: skipped a line: {e}");
            }
            return Ok(());
        }
    };
    sum.records += 1;
    for a in alerts {
        if let Some(new) = ring.push(a) {
            serde_json::to_writer(&mut *out, &new).map_err(|e| ReplayError::Write(e.into()))?;
            out.write_all(b"\n").map_err(ReplayError::Write)?;
            sum.alerts += 1;
        }
    }
    Ok(())
}

fn bad(sum: &mut Summary, diag: &mut dyn Write, path: &Path, line: u64, why: &str) {
    sum.bad += 1;
    if sum.bad <= MAX_DIAGNOSTICS {
        let _ = writeln!(
            diag,
            "sluice detect: {}:{line}: skipped: {why}",
            path.display()
        );
    }
}
