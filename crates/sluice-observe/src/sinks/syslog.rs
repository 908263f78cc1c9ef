//! The syslog alert sink: each new alert is one RFC 5424 message — facility
//! `security/authorization` (4), severity from the alert's (`info` 6,
//! `warning` 4, `critical` 2), APP-NAME `sluice`, MSGID the alert's kind,
//! no structured data, the alert's JSON as the message — sent over UDP (one
//! datagram, RFC 5426) or TCP with octet counting (RFC 6587: `LEN SP MSG`),
//! reconnecting with backoff when the connection fails. The message is
//! formatted when the alert is taken; a task of its own sends it.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use sluice_policy::model::{SyslogAddress, SyslogTransport};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpStream, UdpSocket},
    sync::mpsc,
};

use super::{ATTEMPTS, AlertSink, backoff, connect, resolve};
use crate::{Alert, Metrics, Severity, record::rfc3339};

const SINK: &str = "syslog";

/// The facility: security/authorization messages.
const FACILITY: u8 = 4;

/// Time allowed to connect or to write one message over TCP.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A syslog sink that cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum SyslogError {
    /// The local socket could not be made.
    #[error("syslog: {0}")]
    Io(#[from] std::io::Error),
}

/// The handle the recorder sends alerts to.
#[derive(Debug)]
pub struct Syslog {
    tx: mpsc::Sender<Vec<u8>>,
    metrics: Arc<Metrics>,
    hostname: String,
    transport: SyslogTransport,
}

// === impl Syslog ===

impl Syslog {
    /// Starts the sending task (on the current runtime) for `address`, at
    /// most `queue` messages waiting.
    pub fn start(
        address: &SyslogAddress,
        queue: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Syslog, SyslogError> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        metrics.declare_alert_sink(SINK);
        let m = metrics.clone();
        let (host, port) = (address.host.clone(), address.port);
        match address.transport {
            SyslogTransport::Udp => {
                tokio::spawn(run_udp(rx, host, port, m));
            }
            SyslogTransport::Tcp => {
                tokio::spawn(run_tcp(rx, host, port, m));
            }
        }
        Ok(Syslog {
            tx,
            metrics,
            hostname: hostname(),
            transport: address.transport,
        })
    }
}

impl AlertSink for Syslog {
    fn send(&self, alert: &Alert, json: &str) {
        let msg = format_rfc5424(
            alert.severity,
            alert.kind.as_str(),
            json,
            SystemTime::now(),
            &self.hostname,
            std::process::id(),
        );
        let bytes = match self.transport {
            SyslogTransport::Udp => msg.into_bytes(),
            SyslogTransport::Tcp => frame_octet_counted(&msg),
        };
        if self.tx.try_send(bytes).is_err() {
            self.metrics.alert_sink_dropped(SINK);
        }
    }
}

/// One RFC 5424 message (without framing):
/// `<PRI>1 TIMESTAMP HOSTNAME sluice PROCID MSGID - MSG`.
pub fn format_rfc5424(
    severity: Severity,
    kind: &str,
    json: &str,
    now: SystemTime,
    hostname: &str,
    pid: u32,
) -> String {
    let sev: u8 = match severity {
        Severity::Info => 6,
        Severity::Warning => 4,
        Severity::Critical => 2,
    };
    let pri = FACILITY * 8 + sev;
    format!(
        "<{pri}>1 {} {hostname} sluice {pid} {kind} - {json}",
        rfc3339(now)
    )
}

/// RFC 6587 octet counting: the message's length in bytes, a space, the
/// message.
pub fn frame_octet_counted(msg: &str) -> Vec<u8> {
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg.as_bytes());
    out
}

/// This machine's name as RFC 5424 allows it (printable ASCII, at most 255
/// characters), or `-`.
fn hostname() -> String {
    let uname = rustix::system::uname();
    let name: String = uname
        .nodename()
        .to_string_lossy()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if name.is_empty() {
        "-".to_owned()
    } else {
        name
    }
}

async fn run_udp(mut rx: mpsc::Receiver<Vec<u8>>, host: String, port: u16, metrics: Arc<Metrics>) {
    let mut socket: Option<UdpSocket> = None;
    while let Some(msg) = rx.recv().await {
        let mut attempt = 0;
        loop {
            let sent = async {
                if socket.is_none() {
                    socket = Some(udp_socket(&host, port).await?);
                }
                match &socket {
                    Some(s) => s.send(&msg).await,
                    None => Err(std::io::Error::other("no socket")),
                }
            };
            match tokio::time::timeout(IO_TIMEOUT, sent).await {
                Ok(Ok(_)) => {
                    metrics.alert_sink_delivered(SINK);
                    break;
                }
                Ok(Err(e)) => fail(&mut attempt, &mut socket, &host, port, &e.to_string()),
                Err(_) => fail(&mut attempt, &mut socket, &host, port, "timed out"),
            }
            if attempt >= ATTEMPTS {
                metrics.alert_sink_dropped(SINK);
                break;
            }
            tokio::time::sleep(backoff(attempt - 1)).await;
        }
    }
}

async fn udp_socket(host: &str, port: u16) -> std::io::Result<UdpSocket> {
    let addrs = resolve(host, port).await?;
    let to = addrs[0];
    let local: std::net::SocketAddr = if to.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(local).await?;
    s.connect(to).await?;
    Ok(s)
}

async fn run_tcp(mut rx: mpsc::Receiver<Vec<u8>>, host: String, port: u16, metrics: Arc<Metrics>) {
    let mut stream: Option<TcpStream> = None;
    while let Some(msg) = rx.recv().await {
        let mut attempt = 0;
        loop {
            // A receiver never sends: a connection with something to read
            // (its end, or an error) is gone, and a write to it now could
            // vanish without an error. Reconnect instead.
            if let Some(s) = &stream {
                let mut probe = [0u8; 1];
                if !matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                {
                    stream = None;
                }
            }
            let sent = async {
                if stream.is_none() {
                    let addrs = resolve(&host, port).await?;
                    stream = Some(connect(&addrs).await?);
                }
                match &mut stream {
                    Some(s) => s.write_all(&msg).await,
                    None => Err(std::io::Error::other("no connection")),
                }
            };
            match tokio::time::timeout(IO_TIMEOUT, sent).await {
                Ok(Ok(())) => {
                    metrics.alert_sink_delivered(SINK);
                    break;
                }
                Ok(Err(e)) => fail(&mut attempt, &mut stream, &host, port, &e.to_string()),
                Err(_) => fail(&mut attempt, &mut stream, &host, port, "timed out"),
            }
            if attempt >= ATTEMPTS {
                metrics.alert_sink_dropped(SINK);
                break;
            }
            tokio::time::sleep(backoff(attempt - 1)).await;
        }
    }
}

/// A failed send: the connection (or socket) is dropped so the next
/// attempt makes a new one.
fn fail<T>(attempt: &mut u32, conn: &mut Option<T>, host: &str, port: u16, why: &str) {
    *attempt += 1;
    *conn = None;
    if *attempt >= ATTEMPTS {
        tracing::warn!(receiver = %format!("{host}:{port}"), attempts = *attempt, error = why, "syslog: alert dropped");
    } else {
        tracing::debug!(receiver = %format!("{host}:{port}"), attempt = *attempt, error = why, "syslog: retrying");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_follow_rfc5424_and_frames_count_octets() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let m = format_rfc5424(
            Severity::Critical,
            "dns-tunnel",
            "{\"a\":\"é\"}",
            at,
            "gw1",
            42,
        );
        assert_eq!(
            m,
            "<34>1 2023-11-14T22:13:20.000Z gw1 sluice 42 dns-tunnel - {\"a\":\"é\"}"
        );
        assert!(format_rfc5424(Severity::Info, "geo", "{}", at, "h", 1).starts_with("<38>1 "));
        assert!(format_rfc5424(Severity::Warning, "geo", "{}", at, "h", 1).starts_with("<36>1 "));
        let f = frame_octet_counted(&m);
        let (len, rest) = std::str::from_utf8(&f).unwrap().split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), rest.len());
        assert_eq!(rest.len(), m.len(), "bytes, not characters");
        assert!(!hostname().is_empty());
    }
}
