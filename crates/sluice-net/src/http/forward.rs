//! Absolute-form requests (`GET http://host/path`): one origin request per
//! client request over a pooled keep-alive connection, the request and
//! response heads rewritten (hop-by-hop headers removed, `Host` from the
//! URI, `Via` added) and shown to the inspectors, bodies counted, and a
//! record when the response body ends. A WebSocket upgrade becomes a
//! tunnel through the common relay.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http_body_util::BodyExt;
use hyper::{
    Request, Response, StatusCode, Uri,
    body::{Body as _, Incoming},
    client::conn::http1::{self as client_http1, SendRequest},
    header::{self, HeaderMap, HeaderName, HeaderValue},
    upgrade::OnUpgrade,
};
use hyper_util::rt::TokioIo;
use sluice_observe::ErrorKind;
use tokio::{net::TcpStream, sync::watch};

use super::{
    BoxError, ProxyBody, VIA, answer,
    body::{Counted, End, Ended, OnEnd, Watch, hold, replay},
    pool::{Pool, PoolKey},
    refused, unwrap_client,
};
use crate::{
    Gateway,
    flow::Flow,
    inspect::{Direction, Object, Subject},
    refusal::Refusal,
    relay::Preread,
};

/// An origin connection shared by the requests of one intercepted
/// tunnel: already dialed and TLS-wrapped for one host and port.
pub(crate) type Fixed = Arc<tokio::sync::Mutex<SendRequest<ProxyBody>>>;

/// Where a request goes.
enum Upstream {
    /// A pooled keep-alive connection to the URI's host, or a new one.
    Pool(Arc<Pool>),
    /// The intercepted tunnel's own verified TLS connection.
    Fixed(Fixed),
}

/// The connection a request is sent on.
enum Sender {
    Owned(SendRequest<ProxyBody>),
    /// Held until the response head: HTTP/1.1 carries one at a time.
    Shared(tokio::sync::OwnedMutexGuard<SendRequest<ProxyBody>>),
}

impl std::ops::Deref for Sender {
    type Target = SendRequest<ProxyBody>;
    fn deref(&self) -> &Self::Target {
        match self {
            Sender::Owned(s) => s,
            Sender::Shared(s) => s,
        }
    }
}

impl std::ops::DerefMut for Sender {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            Sender::Owned(s) => s,
            Sender::Shared(s) => &mut *s,
        }
    }
}

/// Forwards one absolute-form request whose flow passed the decision.
pub(super) async fn forward(
    gw: Arc<Gateway>,
    pool: Arc<Pool>,
    flow: Flow,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    exchange(gw, Upstream::Pool(pool), flow, req).await
}

/// Forwards one decrypted request of an intercepted tunnel over the
/// tunnel's own verified connection to its destination (origin-form: the
/// client's `Host` header stays). The same path as absolute-form requests:
/// heads and bodies go past the same inspectors. No upgrades.
pub(crate) async fn forward_fixed(
    gw: Arc<Gateway>,
    origin: Fixed,
    flow: Flow,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    exchange(gw, Upstream::Fixed(origin), flow, req).await
}

async fn exchange(
    gw: Arc<Gateway>,
    upstream: Upstream,
    flow: Flow,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let upgrade = matches!(upstream, Upstream::Pool(_)) && wants_upgrade(req.headers());
    let fixed = matches!(upstream, Upstream::Fixed(_));
    // Until the response head arrives, this future is all that holds the
    // flow: hyper drops it when the client leaves, and the drain deadline
    // drops the connection. The guard records the flow either way.
    let mut f = InFlight::new(gw.clone(), flow);
    let (Some(dest), Some(port)) = (f.get().dest.clone(), f.get().port) else {
        return f.refuse(Refusal::Internal("forward before target".into()));
    };
    let key = (dest, port, gw.route_name(f.get()));
    let mut sender = match &upstream {
        Upstream::Pool(pool) => match origin(&gw, pool, f.get(), &key, upgrade).await {
            Ok(s) => Sender::Owned(s),
            Err(r) => return f.refuse(r),
        },
        Upstream::Fixed(c) => Sender::Shared(c.clone().lock_owned().await),
    };
    // The address's rule is known now (a `cidr` allow's `require_tls`).
    if matches!(upstream, Upstream::Pool(_)) {
        if let Err(r) = gw.require_tls(f.get(), false) {
            return f.refuse(r);
        }
    }
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    if let Err(r) = rewrite_request(&mut parts, upgrade) {
        return f.refuse(r);
    }
    let subject = gw.http_subject(f.get()).map(Arc::new);
    if let Some(s) = &subject {
        if let Err(r) = gw.inspect(|i| i.request_head(s, &parts)) {
            return f.refuse(r);
        }
    }
    let watch = subject.clone().and_then(|s| watch(&gw, s));
    let out_limit = subject
        .as_ref()
        .and_then(|s| gw.object_limit(s, Direction::Out));
    let in_limit = subject
        .as_ref()
        .and_then(|s| gw.object_limit(s, Direction::In));
    // What a response inspection needs of the request (kept only then).
    let req_head = in_limit.map(|_| {
        (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
        )
    });
    let out_count = Arc::new(AtomicU64::new(0));
    f.out = Some(out_count.clone());
    let (upload, body) = match request_body(
        &gw,
        body,
        &parts,
        upgrade,
        &out_count,
        watch.as_ref(),
        out_limit.zip(subject.as_ref()),
    )
    .await
    {
        Ok(b) => b,
        Err(r) => return f.refuse(r),
    };
    let upstream_req = Request::from_parts(parts, body);
    let timeout = f.get().policy().config().limits.response_timeout;
    let resp = match send(&mut sender, upstream_req, &upload, watch.as_ref(), timeout).await {
        Ok(r) => r,
        // The origin got part of a request, or none and closed: its
        // connection is done.
        Err(r) => return closing(fixed, f.refuse(r)),
    };
    let mut flow = f.take();
    flow.status = Some(resp.status().as_u16());
    if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return switch(gw, flow, client_upgrade, resp);
    }
    // A body that failed has left the connection mid-message: never pooled.
    if let (false, None, Upstream::Pool(pool), Sender::Owned(sender)) =
        (upgrade, upload.failed(), upstream, sender)
    {
        let route = flow.route.clone().unwrap_or_else(|| key.2.clone());
        pool.checkin(key, sender, dialed_at(&flow), route);
    }
    let held = match (in_limit, subject, req_head) {
        (Some(limit), Some(s), Some(head)) => Some((limit, s, head)),
        _ => None,
    };
    respond(gw, flow, resp, out_count, watch, held, fixed).await
}

/// Sends the request on `sender` and waits for the response head, at most
/// `timeout` after the request body was sent. Dropping the exchange and
/// its sender on a refusal closes the origin connection: it is never
/// pooled with a response still owed or a request cut short.
async fn send(
    sender: &mut Sender,
    req: Request<ProxyBody>,
    upload: &Upload,
    watch: Option<&Watch>,
    timeout: Duration,
) -> Result<Response<Incoming>, Refusal> {
    if sender.ready().await.is_err() {
        return Err(Refusal::UpstreamClosed(
            "origin closed the connection".into(),
        ));
    }
    let sent = tokio::select! {
        r = sender.send_request(req) => r,
        () = upload.sent_then(timeout) => return Err(Refusal::NoResponse(timeout)),
    };
    sent.map_err(|e| {
        if let Some(r) = watched_denial(watch) {
            r
        } else if let Some(why) = upload.failed() {
            // The client's body framing failed (hyper's strict chunked
            // decoder): the client's fault, answered 400; the origin
            // connection got a truncated body and is dropped.
            Refusal::BadRequest(format!("request {why}"))
        } else {
            Refusal::UpstreamClosed(format!("the origin did not answer: {e}"))
        }
    })
}

/// The request body as it goes to the origin, with what tells when it has
/// been sent. A request without a body (most GETs) has nothing to count,
/// watch or hold: no upload channel, no counting wrapper (a watch channel,
/// two boxes and a mutex fewer per request), and its response deadline
/// runs from now, as it would from the empty body's end. Otherwise the
/// body is counted into `out_count` and watched; with `held` (an object
/// limit and the subject) it is first held up to the limit and inspected
/// whole.
async fn request_body(
    gw: &Gateway,
    body: Incoming,
    parts: &hyper::http::request::Parts,
    upgrade: bool,
    out_count: &Arc<AtomicU64>,
    watch: Option<&Watch>,
    held: Option<(u64, &Arc<Subject>)>,
) -> Result<(Upload, ProxyBody), Refusal> {
    if body.is_end_stream() && !upgrade && watch.is_none() && held.is_none() {
        return Ok((Upload::done(), answer::empty()));
    }
    let (upload, on_upload) = Upload::new();
    let body = Counted::new(
        body,
        out_count.clone(),
        Direction::Out,
        watch.cloned(),
        Some(on_upload),
    )
    .boxed();
    let Some((limit, s)) = held else {
        return Ok((upload, body));
    };
    let idle = gw.limits().idle_timeout;
    let held = hold(body, limit, idle).await.map_err(|e| {
        watched_denial(watch).unwrap_or_else(|| Refusal::BadRequest(format!("request body: {e}")))
    })?;
    let obj = Object {
        dir: Direction::Out,
        method: &parts.method,
        uri: &parts.uri,
        request_headers: &parts.headers,
        response: None,
        body: &held.bytes,
        complete: held.rest.is_none(),
    };
    gw.inspect_object(s, &obj).await?;
    Ok((upload, replay(held)))
}

/// The denial a body inspector raised while the body streamed, if any.
fn watched_denial(watch: Option<&Watch>) -> Option<Refusal> {
    let (rule, reason) = watch?.denied.lock().ok()?.take()?;
    Some(Refusal::Inspected { rule, reason })
}

/// The answer, closing the client's connection after it when `fixed`: an
/// intercepted tunnel has one origin connection, and a request refused
/// after part of it went there (a body cut short by DLP, a response left
/// unread) leaves that connection mid-message. The client's next request
/// opens a new tunnel, with a new origin connection, instead of finding
/// this one broken.
fn closing(fixed: bool, mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    if fixed {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A response held whole for inspection: the limit, the subject, and the
/// request's method, URI and headers.
type HeldResponse = (u64, Arc<Subject>, (hyper::Method, Uri, HeaderMap));

/// A flow between its decision and its response head: recorded if the
/// exchange is dropped before then.
struct InFlight {
    gw: Arc<Gateway>,
    flow: Option<Flow>,
    /// Request body bytes sent so far, once the body is under way.
    out: Option<Arc<AtomicU64>>,
}

impl InFlight {
    fn new(gw: Arc<Gateway>, flow: Flow) -> InFlight {
        InFlight {
            gw,
            flow: Some(flow),
            out: None,
        }
    }

    #[allow(clippy::expect_used)]
    fn get(&mut self) -> &mut Flow {
        // `flow` is `None` only after `take`, which consumes the guard.
        self.flow.as_mut().expect("the flow is held until taken")
    }

    #[allow(clippy::expect_used)]
    fn take(mut self) -> Flow {
        let mut flow = self.flow.take().expect("the flow is held until taken");
        flow.bytes_out = self.bytes_out();
        flow
    }

    fn bytes_out(&self) -> u64 {
        self.out.as_ref().map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The flow refused: its answer, and its record.
    fn refuse(self, r: Refusal) -> Response<ProxyBody> {
        let gw = self.gw.clone();
        refused(&gw, self.take(), r)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(mut flow) = self.flow.take() else {
            return;
        };
        flow.bytes_out = self.bytes_out();
        let (why, kind) = if self.gw.drain().is_stopped() {
            (
                "stopped by the drain: limits.drain_timeout ended before the origin answered",
                ErrorKind::Internal,
            )
        } else {
            (
                "the client closed the connection before the origin answered",
                ErrorKind::Client,
            )
        };
        flow.error = Some(why.to_owned());
        flow.error_kind = Some(kind);
        self.gw.record(flow);
    }
}

/// How the client's request body is going: the response deadline runs
/// from its end, and a failure of it is the client's.
struct Upload {
    /// `None`: there was no body, it is done.
    done: Option<watch::Receiver<bool>>,
    failed: Option<Arc<Mutex<Option<String>>>>,
}

impl Upload {
    /// The upload, and the body's end callback that reports to it.
    fn new() -> (Upload, OnEnd) {
        let (tx, done) = watch::channel(false);
        let failed = Arc::new(Mutex::new(None));
        let slot = failed.clone();
        let on_end: OnEnd = Box::new(move |end: End| {
            if let Ended::Failed(why) = end.how {
                if let Ok(mut f) = slot.lock() {
                    *f = Some(why);
                }
            }
            tx.send_replace(true);
        });
        (
            Upload {
                done: Some(done),
                failed: Some(failed),
            },
            on_end,
        )
    }

    /// The upload of a request without a body: already done.
    fn done() -> Upload {
        Upload {
            done: None,
            failed: None,
        }
    }

    /// Resolves `timeout` after the whole body went to the origin.
    async fn sent_then(&self, timeout: Duration) {
        if let Some(done) = &self.done {
            let mut done = done.clone();
            // A dropped sender means the body is gone too: the clock runs.
            let _ = done.wait_for(|d| *d).await;
        }
        tokio::time::sleep(timeout).await;
    }

    /// Why the client's body failed, if it did.
    fn failed(&self) -> Option<String> {
        self.failed.as_ref()?.lock().ok()?.clone()
    }
}

/// A pooled connection the flow may use, or a new one.
async fn origin(
    gw: &Gateway,
    pool: &Pool,
    flow: &mut Flow,
    key: &PoolKey,
    upgrade: bool,
) -> Result<SendRequest<ProxyBody>, Refusal> {
    if !upgrade {
        if let Some((sender, _)) = pool.checkout(key, gw, flow) {
            return Ok(sender);
        }
    }
    let stream = gw.dial(flow).await?;
    handshake(stream).await
}

async fn handshake(stream: TcpStream) -> Result<SendRequest<ProxyBody>, Refusal> {
    let mut b = client_http1::Builder::new();
    b.max_buf_size(1024 * 1024);
    let (sender, conn) = b
        .handshake::<_, ProxyBody>(TokioIo::new(stream))
        .await
        .map_err(|e| Refusal::UpstreamClosed(format!("origin handshake failed: {e}")))?;
    // A task per origin connection. Driving the connection in the
    // exchange's own task instead (the response body carrying it back to
    // the pool, commit 59bf582) took the cross-core wake-ups out (4.66 ->
    // 4.27 syscalls per keep-alive request) but not CPU per request: a
    // median of 65.6 against 62.3 µs over 22 rounds with both builds
    // serving at once (bench/README.md, "Keep-alive, third round").
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// The inspectors that want this flow's bodies, if any.
fn watch(gw: &Gateway, subject: Arc<Subject>) -> Option<Watch> {
    let inspectors: Arc<[_]> = gw
        .http_inspectors()
        .iter()
        .filter(|i| i.wants_bodies(&subject))
        .cloned()
        .collect();
    (!inspectors.is_empty()).then(|| Watch {
        subject,
        inspectors,
        denied: Arc::new(Mutex::new(None)),
    })
}

/// The request as the origin gets it: origin-form URI, hop-by-hop headers
/// removed, `Host` from the URI, `Via` added, HTTP/1.1.
fn rewrite_request(parts: &mut hyper::http::request::Parts, upgrade: bool) -> Result<(), Refusal> {
    // An origin-form request (intercepted) keeps the client's `Host`.
    let host = parts
        .uri
        .authority()
        .filter(|a| !a.as_str().is_empty())
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    parts.uri = origin_form(&parts.uri)?;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if let Some(v) = host {
        parts.headers.insert(header::HOST, v);
    }
    parts
        .headers
        .append(header::VIA, HeaderValue::from_static(VIA));
    parts.version = hyper::Version::HTTP_11;
    Ok(())
}

/// The request target as the origin gets it: the URI's path and query.
/// One that starts with `/` is shared as it is (no copy, no second parse);
/// anything else is parsed as before and refused if it is not a path.
fn origin_form(uri: &Uri) -> Result<Uri, Refusal> {
    let invalid = || Refusal::BadRequest("invalid request path".into());
    match uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => {
            let mut p = hyper::http::uri::Parts::default();
            p.path_and_query = Some(pq.clone());
            Uri::from_parts(p).map_err(|_| invalid())
        }
        pq => pq
            .map_or("/", |p| p.as_str())
            .parse::<Uri>()
            .map_err(|_| invalid()),
    }
}

/// The origin's response for the client, recorded when its body ends.
/// With `held`, the body is read whole (up to the limit) and inspected
/// before the head goes to the client, so a refusal replaces the answer.
async fn respond(
    gw: Arc<Gateway>,
    mut flow: Flow,
    resp: Response<Incoming>,
    out_count: Arc<AtomicU64>,
    watch: Option<Watch>,
    held: Option<HeldResponse>,
    fixed: bool,
) -> Response<ProxyBody> {
    // A refused response is left unread on the origin connection.
    let (mut parts, body) = resp.into_parts();
    if let Some(s) = gw.http_subject(&flow) {
        if let Err(r) = gw.inspect(|i| i.response_head(&s, &parts)) {
            return closing(fixed, refused(&gw, flow, r));
        }
    }
    let body: ProxyBody = match held {
        None => body.map_err(BoxError::from).boxed(),
        Some((limit, s, (method, uri, req_headers))) => {
            let idle = gw.limits().idle_timeout;
            let h = match hold(body.map_err(BoxError::from).boxed(), limit, idle).await {
                Ok(h) => h,
                Err(e) => {
                    flow.bytes_out = out_count.load(Ordering::Relaxed);
                    let r = Refusal::UpstreamClosed(format!("response body: {e}"));
                    return closing(fixed, refused(&gw, flow, r));
                }
            };
            let obj = Object {
                dir: Direction::In,
                method: &method,
                uri: &uri,
                request_headers: &req_headers,
                response: Some((parts.status, &parts.headers)),
                body: &h.bytes,
                complete: h.rest.is_none(),
            };
            if let Err(r) = gw.inspect_object(&s, &obj).await {
                flow.bytes_out = out_count.load(Ordering::Relaxed);
                return closing(fixed, refused(&gw, flow, r));
            }
            replay(h)
        }
    };
    strip_hop_by_hop(&mut parts.headers, false);
    parts
        .headers
        .append(header::VIA, HeaderValue::from_static(VIA));
    let id = answer::id_header(flow.id());
    let denied = watch.as_ref().map(|w| w.denied.clone());
    let on_end: OnEnd = Box::new(move |end: End| {
        flow.bytes_in = end.bytes;
        flow.bytes_out = out_count.load(Ordering::Relaxed);
        if let Some((rule, reason)) = denied.and_then(|d| d.lock().ok()?.take()) {
            flow.set_rule(&rule, reason);
        }
        if flow.error.is_none() {
            let (error, kind) = match end.how {
                Ended::Complete => (None, None),
                Ended::Failed(why) | Ended::Refused(why) => {
                    (Some(why), Some(ErrorKind::UpstreamClosed))
                }
                // The response was not read to its end.
                Ended::Dropped if gw.drain().is_stopped() => (
                    Some(
                        "stopped by the drain: limits.drain_timeout ended during the response"
                            .into(),
                    ),
                    Some(ErrorKind::Internal),
                ),
                Ended::Dropped => (
                    Some("the client closed the connection during the response".into()),
                    Some(ErrorKind::Client),
                ),
            };
            flow.error = error;
            flow.error_kind = kind;
        }
        gw.record(flow);
    });
    let in_count = Arc::new(AtomicU64::new(0));
    let body = Counted::new(body, in_count, Direction::In, watch, Some(on_end));
    let mut out = Response::from_parts(parts, body.boxed());
    if let Some(id) = id {
        out.headers_mut().insert(answer::REQUEST_ID, id);
    }
    out
}

/// `101 Switching Protocols`: both sides become one tunnel through the
/// common relay (idle timeout, byte counts, splice), recorded at its end.
fn switch(
    gw: Arc<Gateway>,
    flow: Flow,
    client_upgrade: Option<OnUpgrade>,
    mut resp: Response<Incoming>,
) -> Response<ProxyBody> {
    let origin_upgrade = hyper::upgrade::on(&mut resp);
    let id = flow.id().to_owned();
    let active = gw.drain().active();
    tokio::spawn(async move {
        let _active = active;
        let origin = match origin_upgrade
            .await
            .map(|u| u.downcast::<TokioIo<TcpStream>>())
        {
            Ok(Ok(p)) => p,
            _ => return upgrade_failed(&gw, flow, "origin upgrade failed"),
        };
        let Some(Ok(client)) = (match client_upgrade {
            Some(c) => Some(c.await),
            None => None,
        }) else {
            return upgrade_failed(&gw, flow, "client upgrade failed");
        };
        let Some((client, pre_out)) = unwrap_client(client) else {
            return upgrade_failed(&gw, flow, "unexpected upgraded stream type");
        };
        let pre_in = origin.read_buf.to_vec();
        let pre = Preread {
            out: &pre_out,
            inn: &pre_in,
        };
        gw.tunnel(Box::new(flow), client, origin.io.into_inner(), pre, false)
            .await;
    });
    let (mut parts, _) = resp.into_parts();
    parts
        .headers
        .append(header::VIA, HeaderValue::from_static(VIA));
    let mut out = Response::from_parts(parts, answer::empty());
    answer::add_id(&mut out, &id);
    out
}

fn upgrade_failed(gw: &Gateway, mut flow: Flow, why: &str) {
    flow.error = Some(why.to_owned());
    flow.error_kind = Some(ErrorKind::Internal);
    gw.record(flow);
}

/// The address a flow's connection was made to.
fn dialed_at(flow: &Flow) -> SocketAddr {
    SocketAddr::new(
        flow.peer.unwrap_or(IpAddr::from([0, 0, 0, 0])),
        flow.port.unwrap_or(0),
    )
}

/// A WebSocket upgrade, the only one relayed: `h2c` and unknown tokens
/// are dropped with the other hop-by-hop headers (an `h2c` upgrade would
/// carry requests past whatever inspects HTTP).
fn wants_upgrade(h: &HeaderMap) -> bool {
    let websocket = h
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .all(|t| t.eq_ignore_ascii_case("websocket"));
    h.contains_key(header::UPGRADE)
        && websocket
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including any the
/// `Connection` header names. With `keep_upgrade`, `Connection: upgrade`
/// and `Upgrade` pass so that WebSocket handshakes reach the origin.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Most heads carry none of them: one pass over the names (standard
    // names compare as enum tags) instead of eleven hashed removals. It
    // was 2.5 % of a keep-alive request's CPU (`perf`, bench/ab-http.sh).
    if !keep_upgrade && !h.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        if !(keep_upgrade && n == header::UPGRADE) {
            h.remove(n);
        }
    }
    for n in HOP_BY_HOP {
        if !(keep_upgrade && (n == header::UPGRADE || n == header::CONNECTION)) {
            h.remove(n);
        }
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// A header that [`strip_hop_by_hop`] removes whatever `Connection` names
/// (`Connection` itself included: the names it lists are removed too).
fn is_hop_by_hop(n: &HeaderName) -> bool {
    HOP_BY_HOP.contains(n)
}

/// The headers that never cross the proxy (RFC 9110 §7.6.1, plus the
/// proxy's own credentials and the legacy `Proxy-Connection` and
/// `Keep-Alive`).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    PROXY_CONNECTION,
    KEEP_ALIVE,
];
