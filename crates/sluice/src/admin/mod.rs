//! The admin listener: probes (`/healthz`, `/readyz`), Prometheus
//! `/metrics`, the JSON API under `/api/v1/` (described by
//! `docs/openapi.yaml`), its live stream, and the dashboard at `/`.
//!
//! Binds loopback unless configured otherwise (the loader then requires a
//! token). Every request first passes `guard` (Host, Origin, token); the
//! API reads only the shared [`FlowView`], the recorder's alert ring and the
//! running policy, never the data path.
//!
//! # Layout
//!
//! - `conns`: the connection cap, and closing the idlest connection for a
//!   new one so that probes always get in.
//! - `guard`: Host, Origin and bearer-token checks.
//! - `api`: the `/api/v1/` endpoints.
//! - `sse`: the Server-Sent Events body of `/api/v1/flows/stream`.
//! - `assets/`: the dashboard (HTML, JS, CSS), embedded in the binary.

mod api;
mod conns;
mod guard;
mod sse;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, header, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use sluice_net::Gateway;
use sluice_observe::FlowView;
use sluice_serve::{ConnLimiter, Drain};
use tokio::net::TcpListener;

pub use guard::Access;

/// The response body of every admin answer.
type Body = BoxBody<Bytes, Infallible>;

/// What the admin listener reads besides the data path's context.
pub struct Status {
    /// The last reload's error, for `/readyz`.
    pub last_reload_error: Mutex<Option<String>>,
    /// Token, open paths and accepted Host names.
    pub access: Access,
    /// Recent flows, rule hits, aggregates and the live stream.
    pub view: Arc<FlowView>,
    /// The record stage's fan-out, for its recent alerts.
    pub recorder: Arc<sluice_observe::Recorder>,
    /// The content inspector, for its scanners' state.
    pub content: Arc<sluice_net::content::Content>,
}

/// The admin thread's nice value: the lowest CPU priority.
const NICE: i32 = 19;

/// Runs [`serve`] on a thread of its own with its own single-threaded
/// runtime, at the lowest CPU priority (nice 19): admin work (live streams
/// above all, which write every flow to every subscriber) never takes the
/// proxy's runtime threads, and when the CPU is short the data path goes
/// first while admin falls behind (streams skip and say so). Probes cost
/// microseconds and still answer. With 96 live streams (and batched
/// frames, see `sse`) keep-alive HTTP kept 0.54 of its rate when admin ran
/// on the proxy's runtime, 0.64-0.75 here (bench/sse-subscribers.sh,
/// figures in bench/README.md).
pub fn spawn(listener: TcpListener, gw: Arc<Gateway>, status: Arc<Status>) -> std::io::Result<()> {
    let listener = listener.into_std()?;
    std::thread::Builder::new()
        .name("sluice-admin".into())
        .spawn(move || {
            // On Linux the nice value is per thread: only this one.
            let tid = rustix::thread::gettid();
            if let Err(e) = rustix::process::setpriority_process(Some(tid), NICE) {
                tracing::debug!(error = %e, "admin: cannot lower the thread's priority");
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "admin: cannot start its runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => serve(l, gw, status).await,
                    Err(e) => tracing::error!(error = %e, "admin: cannot use the listener"),
                }
            });
        })?;
    Ok(())
}

/// Serves the admin endpoints on `listener` (the caller binds). The admin
/// listener keeps serving while the data path drains (`/readyz` says so),
/// so its loop has a drain of its own that never begins. Past
/// [`conns::MAX_CONNECTIONS`], each new connection closes the idlest one
/// (see `conns`), so probes get in whatever holds the others.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, status: Arc<Status>) {
    let hard_cap = u32::try_from(conns::MAX_CONNECTIONS + conns::RESERVE).unwrap_or(u32::MAX);
    let limiter = ConnLimiter::new(hard_cap, hard_cap);
    let never = Arc::new(Drain::new());
    let conns = conns::Conns::new();
    let live = Arc::new(sse::Live::start(&status.view));
    sluice_serve::run_tcp(listener, limiter, never, move |stream, _, _slot| {
        let (gw, status, live) = (gw.clone(), status.clone(), live.clone());
        let member = conns.join();
        async move {
            let Ok(local) = stream.local_addr() else {
                return;
            };
            let conn = member.conn().clone();
            let svc = service_fn(move |req| {
                let (gw, status, live, conn) =
                    (gw.clone(), status.clone(), live.clone(), conn.clone());
                async move {
                    let _busy = conn.busy();
                    let at = At {
                        gw: &gw,
                        status: &status,
                        live: &live,
                        conn: &conn,
                    };
                    Ok::<_, Infallible>(handle(at, local, req).await)
                }
            });
            let serving = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(serving);
            tokio::select! {
                _ = serving.as_mut() => {}
                () = member.conn().closing() => {
                    // Silent, or still sending its first request head:
                    // nothing to finish, dropped at once. Otherwise it
                    // closes at once when idle between requests, and an
                    // answer being written (or a later request head being
                    // read) gets a moment.
                    if member.conn().used() {
                        serving.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(conns::CLOSE_GRACE, serving).await;
                    }
                }
            }
        }
    })
    .await;
}

/// What one admin request may read.
#[derive(Clone, Copy)]
struct At<'a> {
    gw: &'a Gateway,
    status: &'a Status,
    live: &'a Arc<sse::Live>,
    conn: &'a Arc<conns::Conn>,
}

async fn handle(at: At<'_>, local: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let At { gw, status, .. } = at;
    let path = req.uri().path().to_owned();
    if let Err(why) = status
        .access
        .check(local, req.method(), &path, req.headers())
    {
        return refuse(why);
    }
    let method = req.method().clone();
    let head = method == Method::HEAD;
    let get = method == Method::GET || head;
    let mut resp = match path.as_str() {
        "/healthz" if get => text(StatusCode::OK, "ok\n"),
        "/readyz" if get => readyz(gw, status),
        "/metrics" if get => {
            let mut r = reply(
                StatusCode::OK,
                sluice_observe::CONTENT_TYPE,
                gw.metrics().encode(),
            );
            no_store(&mut r);
            r
        }
        "/" | "/index.html" if get => asset("text/html; charset=utf-8", INDEX_HTML),
        "/assets/app.js" if get => asset("text/javascript; charset=utf-8", APP_JS),
        "/assets/app.css" if get => asset("text/css; charset=utf-8", APP_CSS),
        "/favicon.svg" if get => asset("image/svg+xml", FAVICON_SVG),
        "/healthz" | "/readyz" | "/metrics" | "/" | "/index.html" | "/assets/app.js"
        | "/assets/app.css" | "/favicon.svg" => not_allowed("GET, HEAD"),
        p if p.starts_with("/api/") => api::route(at, req).await,
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /, /healthz, /readyz, /metrics or /api/v1/\n",
        ),
    };
    if head {
        *resp.body_mut() = Full::new(Bytes::new()).boxed();
    }
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    resp
}

fn readyz(gw: &Gateway, status: &Status) -> Response<Body> {
    // Leaving (SIGTERM, during `limits.drain_grace`) is already not ready.
    let draining = gw.drain().is_leaving();
    let err = status.last_reload_error.lock().ok().and_then(|e| e.clone());
    let body = serde_json::json!({
        "ready": !draining,
        "draining": draining,
        "policy_hash": gw.version().policy.hash().as_ref(),
        "last_reload_error": err,
        // The dialer's resolver upstreams: one that is down is passed over
        // while another answers; readiness does not depend on them.
        "resolver": gw.dialer().upstream_health().into_iter().map(|u| serde_json::json!({
            "upstream": u.upstream,
            "state": u.state,
            "error": u.error,
        })).collect::<Vec<_>>(),
        // clamd and ICAP as last seen (probed every 5 s and on each scan).
        // A scanner that is down fails its zones' inspected exchanges
        // closed (503) or open, per zone; the gateway stays ready for the
        // rest.
        "scanners": status.content.health().into_iter().map(|s| serde_json::json!({
            "scanner": s.scanner,
            "state": s.state,
            "error": s.error,
        })).collect::<Vec<_>>(),
    });
    let code = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json(code, &body)
}

// === dashboard assets ===

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

/// The page loads only its own script and style and talks only to this
/// listener; it may not be framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(ctype: &'static str, body: &'static str) -> Response<Body> {
    let mut r = reply(StatusCode::OK, ctype, body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    no_store(&mut r);
    r
}

// === responses ===

fn reply(code: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}

fn text(code: StatusCode, body: &'static str) -> Response<Body> {
    reply(code, "text/plain; charset=utf-8", body)
}

fn json(code: StatusCode, v: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(v) {
        Ok(mut body) => {
            body.push(b'\n');
            let mut r = reply(code, "application/json", body);
            no_store(&mut r);
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "admin: cannot encode a response");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the response\n",
            )
        }
    }
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    json(code, &serde_json::json!({ "error": msg.into() }))
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    r
}

fn no_store(r: &mut Response<Body>) {
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
}

fn refuse(why: guard::Refusal) -> Response<Body> {
    match why {
        guard::Refusal::Host => error(
            StatusCode::FORBIDDEN,
            "Host not allowed: use the admin address, localhost, or a name in admin.hosts",
        ),
        guard::Refusal::Origin => error(StatusCode::FORBIDDEN, "cross-site request refused"),
        guard::Refusal::Token => {
            let mut r = error(StatusCode::UNAUTHORIZED, "bearer token required");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}
