//! Where new alerts go besides the ring, the metric and the stderr line:
//! an [`AlertSink`] takes each alert [`crate::Recorder::alert`] reports new,
//! once, already serialized. A sink never makes its caller wait: it queues
//! the alert for a task of its own (bounded; a full queue drops and counts
//! in `sluice_alert_sink_dropped_total{sink}`), and that task does the I/O,
//! with retries, off the data path.
//!
//! # Layout
//!
//! - `webhook`: [`Webhook`], one HTTP POST per alert with retries and
//!   backoff.
//! - `syslog`: [`Syslog`], one RFC 5424 message per alert over UDP, or TCP
//!   with octet counting (RFC 6587) and reconnects.

mod syslog;
mod webhook;

use std::time::Duration;

pub use syslog::{Syslog, SyslogError, format_rfc5424, frame_octet_counted};
pub use webhook::{Webhook, WebhookError};

use crate::Alert;

/// A destination for new alerts. Must never block.
pub trait AlertSink: Send + Sync {
    /// Takes one new alert and its JSON (the object the API serves).
    fn send(&self, alert: &Alert, json: &str);
}

/// Delays between attempts: 250 ms, doubling, at most 8 s.
fn backoff(attempt: u32) -> Duration {
    let ms = 250u64.saturating_mul(1 << attempt.min(5));
    Duration::from_millis(ms.min(8_000))
}

/// Attempts at delivering one alert before it is dropped.
const ATTEMPTS: u32 = 5;

/// `host` and `port` resolved, the first address first (names are
/// resolved at each (re)connect, so a moved receiver is followed).
async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![std::net::SocketAddr::new(ip, port)]);
    }
    let found: Vec<_> = tokio::net::lookup_host((host, port)).await?.collect();
    if found.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host} has no address"),
        ));
    }
    Ok(found)
}

/// Connects to the first of `addrs` that answers.
async fn connect(addrs: &[std::net::SocketAddr]) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for a in addrs {
        match tokio::net::TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to connect to")))
}
