//! What the detectors read of a flow record, borrowed: from a live
//! [`FlowRecord`] or from one line of a flow log, parsed with serde into
//! [`RecordLine`] without building a whole record (`sluice detect` reads
//! hundreds of thousands a second).

use std::{
    borrow::Cow,
    net::{IpAddr, SocketAddr},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Deserialize;
use sluice_observe::{ErrorKind, FlowRecord, Listener};
use sluice_policy::Verdict;

/// One record as the detectors see it.
#[derive(Debug, Clone)]
pub struct Obs<'a> {
    /// The record's id.
    pub id: &'a str,
    /// Its event time (`ts`, the end or interim time), unix milliseconds.
    pub at_ms: i64,
    /// When the flow started, unix milliseconds.
    pub start_ms: i64,
    /// The listener.
    pub listener: Listener,
    /// The source, without its port.
    pub src: IpAddr,
    /// The authenticated user.
    pub user: Option<&'a str>,
    /// The zone that judged it.
    pub zone: Option<&'a str>,
    /// The destination name (for DNS: the queried name).
    pub dst_host: Option<&'a str>,
    /// The TLS server name.
    pub sni: Option<&'a str>,
    /// The destination address.
    pub dst_ip: Option<IpAddr>,
    /// The DNS query type.
    pub qtype: Option<&'a str>,
    /// Allow or deny.
    pub verdict: Verdict,
    /// False for report-mode would-be denials.
    pub enforced: bool,
    /// The rule that decided.
    pub rule: &'a str,
    /// Client to destination bytes (since the flow's previous record).
    pub bytes_out: u64,
    /// Destination to client bytes.
    pub bytes_in: u64,
    /// Which side failed.
    pub error_kind: Option<ErrorKind>,
    /// An interim record of a flow still open.
    pub interim: bool,
    /// The destination's country, when already known.
    pub country: Option<&'a str>,
}

/// Why a line is not a record the detectors can read.
#[derive(Debug, thiserror::Error)]
pub enum ObsError {
    /// Not JSON of a flow record.
    #[error("not a flow record: {0}")]
    Json(#[from] serde_json::Error),
    /// `ts` is not an RFC 3339 time.
    #[error("`ts` is not an RFC 3339 time: {0}")]
    Time(String),
    /// Not UTF-8.
    #[error("not UTF-8: {0}")]
    Utf8(String),
    /// `src` is not `ip:port`.
    #[error("`src` is not ip:port: {0}")]
    Src(String),
}

/// The fields of a flow-log line the detectors need, borrowed where the
/// JSON allows (strings without escapes).
#[derive(Debug, Deserialize)]
pub struct RecordLine<'a> {
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(default)]
    duration_ms: u64,
    #[serde(borrow)]
    id: Cow<'a, str>,
    listener: Listener,
    #[serde(borrow)]
    src: Cow<'a, str>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    zone: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    dst_host: Option<Cow<'a, str>>,
    #[serde(default)]
    dst_ip: Option<IpAddr>,
    #[serde(borrow, default)]
    sni: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    qtype: Option<Cow<'a, str>>,
    verdict: Verdict,
    #[serde(default = "yes")]
    enforced: bool,
    #[serde(borrow, default)]
    rule: Cow<'a, str>,
    #[serde(default)]
    bytes_out: u64,
    #[serde(default)]
    bytes_in: u64,
    #[serde(default)]
    error_kind: Option<ErrorKind>,
    #[serde(default)]
    interim: Option<bool>,
    #[serde(borrow, default)]
    country: Option<Cow<'a, str>>,
}

fn yes() -> bool {
    true
}

// === impl RecordLine ===

impl<'a> RecordLine<'a> {
    /// Parses one JSON line.
    pub fn parse(line: &'a [u8]) -> Result<RecordLine<'a>, ObsError> {
        // One UTF-8 check for the line instead of one per string: `sluice
        // detect` spends most of its time here (perf: 6% in from_utf8).
        let text = std::str::from_utf8(line).map_err(|e| ObsError::Utf8(e.to_string()))?;
        Ok(serde_json::from_str(text)?)
    }

    /// The record's event time, unix milliseconds.
    pub fn at_ms(&self) -> Result<i64, ObsError> {
        parse_ts_ms(&self.ts).ok_or_else(|| ObsError::Time(self.ts.to_string()))
    }

    /// The detectors' view of it.
    pub fn obs(&self) -> Result<Obs<'_>, ObsError> {
        let at_ms = self.at_ms()?;
        let src = parse_src(&self.src).ok_or_else(|| ObsError::Src(self.src.to_string()))?;
        Ok(Obs {
            id: &self.id,
            at_ms,
            start_ms: at_ms.saturating_sub(i64::try_from(self.duration_ms).unwrap_or(i64::MAX)),
            listener: self.listener,
            src,
            user: self.user.as_deref(),
            zone: self.zone.as_deref(),
            dst_host: self.dst_host.as_deref(),
            sni: self.sni.as_deref(),
            dst_ip: self.dst_ip,
            qtype: self.qtype.as_deref(),
            verdict: self.verdict,
            enforced: self.enforced,
            rule: &self.rule,
            bytes_out: self.bytes_out,
            bytes_in: self.bytes_in,
            error_kind: self.error_kind,
            interim: self.interim == Some(true),
            country: self.country.as_deref(),
        })
    }
}

/// `ip:port` or `[v6]:port` (or a bare address), as records write `src`.
fn parse_src(s: &str) -> Option<IpAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a.ip().to_canonical());
    }
    s.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

// === impl Obs ===

impl<'a> Obs<'a> {
    /// The view of a live record; `None` if it has no end time.
    pub fn of(r: &'a FlowRecord) -> Option<Obs<'a>> {
        let at = r.end_time()?;
        let at_ms = ms(at);
        Some(Obs {
            id: r.id(),
            at_ms,
            start_ms: at_ms.saturating_sub(i64::try_from(r.duration_ms).unwrap_or(i64::MAX)),
            listener: r.listener,
            src: r.src.ip().to_canonical(),
            user: r.user.as_deref(),
            zone: r.zone.as_deref(),
            dst_host: r.dst_host.as_deref(),
            sni: r.sni.as_deref(),
            dst_ip: r.dst_ip,
            qtype: r.qtype.as_deref(),
            verdict: r.verdict,
            enforced: r.enforced,
            rule: &r.rule,
            bytes_out: r.bytes_out,
            bytes_in: r.bytes_in,
            error_kind: r.error_kind,
            interim: r.interim == Some(true),
            country: r.country.as_deref(),
        })
    }

    /// Whether the flow left (allowed, or a report-mode would-be denial
    /// that was let through) and reached its destination.
    pub fn left(&self) -> bool {
        (self.verdict == Verdict::Allow || !self.enforced)
            && !matches!(
                self.error_kind,
                Some(ErrorKind::Resolve | ErrorKind::Connect)
            )
    }

    /// Whether the policy denied it (enforced or not): a denial of a
    /// destination, not a malformed request or a failed login.
    pub fn denied(&self) -> bool {
        self.verdict == Verdict::Deny
            && !self.rule.is_empty()
            && !matches!(
                self.rule,
                "default/bad-request" | "default/invalid-destination" | "default/auth-failed"
            )
    }
}

/// Unix milliseconds of `t`.
pub(crate) fn ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The clock value of unix milliseconds `ms`.
pub(crate) fn time_of(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + std::time::Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - std::time::Duration::from_millis(ms.unsigned_abs())
    }
}

/// Unix milliseconds of an RFC 3339 time. The records' own form
/// (`2026-01-05T10:00:00.123Z`) is read directly, anything else through
/// the `time` crate.
pub fn parse_ts_ms(s: &str) -> Option<i64> {
    fast_ts(s.as_bytes()).or_else(|| {
        let t =
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
    })
}

/// `YYYY-MM-DDTHH:MM:SS(.fff)?Z` only.
fn fast_ts(b: &[u8]) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in b.get(r)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let millis = match (b.get(19), b.last()) {
        (Some(b'Z'), _) if b.len() == 20 => 0,
        (Some(b'.'), Some(b'Z')) if b.len() == 24 => num(20..23)?,
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + millis)
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_fast_and_slow_alike() {
        for s in [
            "2026-01-05T10:00:00.123Z",
            "2024-02-29T23:59:59.999Z",
            "1999-12-31T00:00:00Z",
            "2026-01-05T11:00:00.123+01:00",
        ] {
            let slow =
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .unwrap();
            let want = i64::try_from(slow.unix_timestamp_nanos() / 1_000_000).unwrap();
            assert_eq!(parse_ts_ms(s), Some(want), "{s}");
        }
        assert_eq!(parse_ts_ms("yesterday"), None);
        assert_eq!(parse_ts_ms("2026-13-05T10:00:00Z"), None);
    }
}
