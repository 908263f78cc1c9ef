//! The webhook alert sink: each new alert is one HTTP/1.1 `POST` of its
//! JSON to `detect.webhook.url`, from a task of its own. A failed attempt
//! (no connection, a timeout, a 5xx or 429 answer) is retried with backoff
//! up to five attempts; another 4xx is final. Plain `http://` only: Sluice
//! has no TLS client, and a local relay can add TLS.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use super::{ATTEMPTS, AlertSink, backoff, connect, resolve};
use crate::{Alert, Metrics};

const SINK: &str = "webhook";

/// A webhook that cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL is not `http://host[:port][/path]`.
    #[error("webhook url `{0}` is not `http://host[:port][/path]`")]
    Url(String),
}

/// The handle the recorder sends alerts to; the task that POSTs them runs
/// until this handle is dropped and its queue is empty.
#[derive(Debug)]
pub struct Webhook {
    tx: mpsc::Sender<Arc<str>>,
    metrics: Arc<Metrics>,
}

/// Where to POST.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
    /// `Host` header value.
    authority: String,
    /// Path and query.
    path: String,
}

// === impl Webhook ===

impl Webhook {
    /// Starts the sending task (on the current runtime) for `url`, each
    /// POST bounded by `timeout`, at most `queue` alerts waiting.
    pub fn start(
        url: &str,
        timeout: Duration,
        queue: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Webhook, WebhookError> {
        let target = parse(url).ok_or_else(|| WebhookError::Url(url.to_owned()))?;
        let (tx, rx) = mpsc::channel(queue.max(1));
        metrics.declare_alert_sink(SINK);
        tokio::spawn(run(rx, target, timeout, metrics.clone()));
        Ok(Webhook { tx, metrics })
    }
}

impl AlertSink for Webhook {
    fn send(&self, _alert: &Alert, json: &str) {
        if self.tx.try_send(Arc::from(json)).is_err() {
            self.metrics.alert_sink_dropped(SINK);
        }
    }
}

fn parse(url: &str) -> Option<Target> {
    let uri: Uri = url.parse().ok()?;
    if uri.scheme_str() != Some("http") {
        return None;
    }
    let authority = uri.authority()?.clone();
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some(Target {
        host: host.to_owned(),
        port: authority.port_u16().unwrap_or(80),
        authority: authority.as_str().to_owned(),
        path: uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
    })
}

async fn run(
    mut rx: mpsc::Receiver<Arc<str>>,
    target: Target,
    timeout: Duration,
    metrics: Arc<Metrics>,
) {
    while let Some(body) = rx.recv().await {
        let mut attempt = 0;
        loop {
            let outcome = match tokio::time::timeout(timeout, post(&target, &body)).await {
                Ok(Ok(status)) if status.is_success() => {
                    metrics.alert_sink_delivered(SINK);
                    break;
                }
                Ok(Ok(status))
                    if !status.is_server_error() && status != StatusCode::TOO_MANY_REQUESTS =>
                {
                    tracing::warn!(%status, url = %target.authority, "webhook refused an alert; dropped");
                    metrics.alert_sink_dropped(SINK);
                    break;
                }
                Ok(Ok(status)) => format!("answered {status}"),
                Ok(Err(e)) => e,
                Err(_) => format!("no answer within {timeout:?}"),
            };
            attempt += 1;
            if attempt >= ATTEMPTS {
                tracing::warn!(url = %target.authority, attempts = attempt, error = %outcome, "webhook: alert dropped");
                metrics.alert_sink_dropped(SINK);
                break;
            }
            tracing::debug!(url = %target.authority, attempt, error = %outcome, "webhook: retrying");
            tokio::time::sleep(backoff(attempt - 1)).await;
        }
    }
}

/// One POST on a fresh connection; the answer's status.
async fn post(target: &Target, body: &Arc<str>) -> Result<StatusCode, String> {
    let addrs = resolve(&target.host, target.port)
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?;
    let stream = connect(&addrs)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", target.authority))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let req = Request::post(target.path.as_str())
        .header(header::HOST, target.authority.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("sluice/", env!("CARGO_PKG_VERSION")),
        )
        .header(header::CONNECTION, "close")
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .map_err(|e| e.to_string())?;
    let answer = send.send_request(req).await.map_err(|e| e.to_string());
    // The answer's body is not read: the connection closes.
    drop(send);
    driver.abort();
    Ok(answer?.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver that refuses connections: the first alert is being
    /// retried, the second waits in the queue of one, the third finds it
    /// full and is dropped and counted at once (the caller never waits).
    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", closed.local_addr().unwrap());
        drop(closed);
        let metrics = Arc::new(Metrics::new());
        let hook = Webhook::start(&url, Duration::from_secs(1), 1, metrics.clone()).unwrap();
        let a = Alert::new(
            crate::AlertKind::Geo,
            crate::Severity::Warning,
            std::time::SystemTime::UNIX_EPOCH,
            "x".into(),
        );
        let dropped = || {
            metrics
                .encode()
                .lines()
                .find(|l| l.starts_with(r#"sluice_alert_sink_dropped_total{sink="webhook"}"#))
                .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        };
        assert_eq!(dropped().as_deref(), Some("0"));
        hook.send(&a, "{}");
        // Let the task take the first one off the queue.
        for _ in 0..100 {
            if hook.tx.capacity() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = std::time::Instant::now();
        hook.send(&a, "{}");
        hook.send(&a, "{}");
        assert!(started.elapsed() < Duration::from_millis(50));
        assert_eq!(dropped().as_deref(), Some("1"));
    }

    #[test]
    fn urls_parse_into_host_port_and_path() {
        let t = parse("http://hooks.example:8080/a/b?c=1").unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.authority.as_str(),
                t.path.as_str()
            ),
            ("hooks.example", 8080, "hooks.example:8080", "/a/b?c=1")
        );
        let t = parse("http://[::1]").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("::1", 80, "/"));
        for bad in ["https://x/", "x:80", "http://u@x/", "http:///a"] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
