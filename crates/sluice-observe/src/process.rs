//! The standard `process_*` metrics (as the Prometheus client libraries of
//! other languages export them), read from Linux's `/proc/self` at each
//! scrape: prometheus-client has no process collector. Elsewhere, or when
//! `/proc` cannot be read, the families are left out of the scrape.

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

/// Encodes `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`
/// and `process_start_time_seconds`.
#[derive(Debug)]
pub(crate) struct ProcessCollector {
    ticks: f64,
    page: f64,
}

/// One reading of `/proc/self`.
#[derive(Debug, Default, PartialEq)]
struct Reading {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    start_time: f64,
}

impl ProcessCollector {
    pub(crate) fn new() -> Self {
        ProcessCollector {
            ticks: rustix::param::clock_ticks_per_second() as f64,
            page: rustix::param::page_size() as f64,
        }
    }

    fn read(&self) -> Option<Reading> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let btime: f64 = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        parse_stat(&stat, self.ticks, self.page, btime)
    }
}

/// Parses `/proc/self/stat` (proc(5)): fields after the parenthesised
/// command name, which may itself hold spaces and parentheses.
fn parse_stat(stat: &str, ticks: f64, page: f64, btime: f64) -> Option<Reading> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state): field N is at index N - 3.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    if ticks <= 0.0 {
        return None;
    }
    Some(Reading {
        cpu_seconds: (num(14)? + num(15)?) / ticks,
        start_time: btime + num(22)? / ticks,
        virtual_bytes: num(23)?,
        resident_bytes: num(24)? * page,
    })
}

/// Open descriptors (entries of `/proc/self/fd`) and the soft limit.
fn fds() -> Option<(f64, f64)> {
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count();
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let max = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?;
    // "unlimited" has no number: report it as the largest value.
    let max = max.parse::<f64>().unwrap_or(f64::MAX);
    // The directory's own descriptor, open while it was counted.
    Some((open.saturating_sub(1) as f64, max))
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

// === impl ProcessCollector ===

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        if let Some(r) = self.read() {
            let c = ConstCounter::new(r.cpu_seconds);
            c.encode(enc.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?)?;
            gauge(
                &mut enc,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                r.resident_bytes,
            )?;
            gauge(
                &mut enc,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                r.virtual_bytes,
            )?;
            gauge(
                &mut enc,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                r.start_time,
            )?;
        }
        if let Some((open, max)) = fds() {
            gauge(
                &mut enc,
                "process_open_fds",
                "Number of open file descriptors",
                open,
            )?;
            gauge(
                &mut enc,
                "process_max_fds",
                "Maximum number of open file descriptors",
                max,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_a_tricky_command_name() {
        let stat = "4242 (sl (u) ice) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    9 0 1000 123456789 300 18446744073709551615";
        let r = parse_stat(stat, 100.0, 4096.0, 1_700_000_000.0).unwrap();
        assert_eq!(r.cpu_seconds, 3.0);
        assert_eq!(r.start_time, 1_700_000_010.0);
        assert_eq!(r.virtual_bytes, 123_456_789.0);
        assert_eq!(r.resident_bytes, 300.0 * 4096.0);
    }

    #[test]
    fn a_short_line_is_none_not_a_panic() {
        assert_eq!(parse_stat("1 (x) S 1 2", 100.0, 4096.0, 0.0), None);
        assert_eq!(parse_stat("garbage", 100.0, 4096.0, 0.0), None);
    }
}
