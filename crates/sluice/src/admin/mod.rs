//! The admin listener: `/healthz`, `/readyz` and `/metrics` (bearer token
//! when `admin.token_file` is set). Binds loopback unless configured.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Incoming, header, server::conn::http1, service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use sluice_net::Ctx;
use tokio::net::TcpListener;

/// Admin state the probes report.
pub struct Status {
    pub last_reload_error: Mutex<Option<String>>,
    /// Bearer token required for `/metrics` when `admin.token_file` is set.
    pub token: Option<String>,
}

/// Serves the admin endpoints on `listener` (the caller binds).
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>, status: Arc<Status>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let ctx = ctx.clone();
        let status = status.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let ctx = ctx.clone();
                let status = status.clone();
                async move { Ok::<_, Infallible>(admin(&ctx, &status, &req)) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn admin(ctx: &Ctx, status: &Status, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = code;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(ctype),
        );
        r
    };
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let draining = ctx.drain().is_draining();
            let err = status.last_reload_error.lock().ok().and_then(|e| e.clone());
            let body = serde_json::json!({
                "ready": !draining,
                "draining": draining,
                "policy_hash": ctx.current.load().policy.hash().as_ref(),
                "last_reload_error": err,
            });
            let code = if draining {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            reply(code, "application/json", format!("{body}\n"))
        }
        "/metrics" if !authorized(status, req) => {
            let mut r = reply(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "bearer token required\n".into(),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
        "/metrics" => reply(
            StatusCode::OK,
            sluice_observe::CONTENT_TYPE,
            ctx.metrics.encode(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

/// Whether the request carries the admin bearer token (or none is set).
fn authorized(status: &Status, req: &Request<Incoming>) -> bool {
    let Some(token) = &status.token else {
        return true;
    };
    let sent = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare without an early exit so timing does not reveal a prefix.
    sent.len() == token.len()
        && sent
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}
