//! Reading flow logs back (`sluice learn`, `sluice replay`): JSON lines of
//! `FlowRecord`, streamed one line at a time with a bound on a line's size,
//! and a clear `file:line` error for anything that is not a record.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    path::PathBuf,
};

use anyhow::{Context, Result, bail};
use sluice_observe::FlowRecord;

/// A record line longer than this is refused (records are a few hundred
/// bytes; a DNS record with many answers stays far below it).
const MAX_LINE: u64 = 1 << 20;

/// Calls `f` on every record of every file, in order. Empty lines are
/// skipped. Returns how many records were read.
pub fn for_each(paths: &[PathBuf], mut f: impl FnMut(&FlowRecord)) -> Result<u64> {
    let mut count = 0;
    let mut buf = Vec::new();
    for path in paths {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let mut reader = BufReader::new(file);
        let mut line = 0u64;
        loop {
            buf.clear();
            let n = (&mut reader)
                .take(MAX_LINE + 1)
                .read_until(b'\n', &mut buf)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            if n == 0 {
                break;
            }
            line += 1;
            if buf.len() as u64 > MAX_LINE {
                bail!(
                    "{}:{line}: line longer than {MAX_LINE} bytes: not a flow record",
                    path.display()
                );
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let record: FlowRecord = serde_json::from_slice(&buf).with_context(|| {
                format!(
                    "{}:{line}: not a flow record (JSON lines of the flow log)",
                    path.display()
                )
            })?;
            f(&record);
            count += 1;
        }
    }
    Ok(count)
}
