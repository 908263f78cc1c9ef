//! The HTTP/1.1 forward proxy: `CONNECT host:port` tunnels and absolute-form
//! requests (`GET http://host/path`). hyper parses HTTP; this module maps
//! each request through the shared stages and answers in HTTP:
//!
//! 1. identify — `Proxy-Authorization` (407 when a zone needs a user);
//! 2. decide — the policy's first phase (403 with `Sluice-Rule`/`Sluice-Reason`);
//! 3. dial — resolve once, check addresses, connect (502 / 504 / 403);
//! 4. relay — tunnel bytes, or forward one request over a pooled connection;
//! 5. record — one flow record per tunnel or per request.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode, Uri,
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1 as client_http1,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use sluice_observe::{FlowRecord, Listener, Protocol};
use sluice_policy::{Decision, Destination, Pending, Policy, Request as PolicyRequest, ids};
use tokio::net::{TcpListener, TcpStream};

use crate::{
    Ctx, Version,
    auth::AuthOutcome,
    dial::DialError,
    limits::Slot,
    relay,
    timed::{Phase, Timed},
    tunnel,
};

type ProxyBody = BoxBody<Bytes, hyper::Error>;

const VIA: &str = "1.1 sluice";
/// Idle pooled origin connections are dropped after this long.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Most pooled connections per destination (busy or idle): enough for many
/// concurrent clients to reuse origin connections instead of dialing anew.
const POOL_PER_KEY: usize = 256;

/// Accepts proxy clients on `listener` until a drain begins.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>) {
    let pool = Arc::new(Pool::default());
    let conn_ctx = ctx.clone();
    crate::accept::accept_loop(listener, ctx, move |stream, peer, slot| {
        connection(conn_ctx.clone(), pool.clone(), stream, peer, slot)
    })
    .await;
}

async fn connection(
    ctx: Arc<Ctx>,
    pool: Arc<Pool>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<Slot>,
) {
    let _ = stream.set_nodelay(true);
    let phase = Phase::new();
    let io = Timed::new(
        stream,
        phase.clone(),
        ctx.limits.header_timeout,
        ctx.limits.idle_timeout,
    );
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| {
        let ctx = svc_ctx.clone();
        let pool = pool.clone();
        let slot = slot.clone();
        let phase = phase.clone();
        phase.begin_request();
        let is_connect = req.method() == Method::CONNECT;
        async move {
            let resp = handle(ctx, pool, peer, slot, req).await;
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                phase.upgraded();
            } else if !(is_connect && resp.status().is_success()) {
                phase.end_request();
            }
            // An established CONNECT stays "serving" (no deadline): its
            // tunnel takes the bare socket and keeps its own idle timeout.
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Head and idle deadlines are `Timed`'s: hyper's one timer would
        // also close idle keep-alives after the header timeout.
        .header_read_timeout(None)
        .max_buf_size((ctx.limits.max_header_bytes as usize).max(8192))
        // `max_buf_size` is checked only while a head is still incomplete: a
        // larger head that arrives in one read would pass. This bounds it.
        .max_header_size(ctx.limits.max_header_bytes as usize)
        .max_headers(128)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let began = ctx.drain().began();
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
                if e.is_parse() || e.is_parse_too_large() {
                    malformed(&ctx, peer, &e);
                }
            }
        }
        () = began => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// What one request is about, gathered as the stages run.
struct Flow {
    rec: FlowRecord,
}

impl Flow {
    fn new(protocol: Protocol, peer: SocketAddr) -> Flow {
        Flow {
            rec: FlowRecord::new(Listener::Http, protocol, peer, SystemTime::now()),
        }
    }
}

fn emit(ctx: &Ctx, rec: FlowRecord) {
    ctx.emit(rec);
}

async fn handle(
    ctx: Arc<Ctx>,
    pool: Arc<Pool>,
    peer: SocketAddr,
    slot: Arc<Slot>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let is_connect = req.method() == Method::CONNECT;
    let mut flow = Flow::new(
        if is_connect {
            Protocol::Connect
        } else {
            Protocol::Http
        },
        peer,
    );
    flow.rec.method = Some(req.method().as_str().to_owned());
    let version = ctx.current.load_full();

    if ctx.drain().is_draining() {
        let mut resp = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sluice is draining; retry on another replica.\n",
        );
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        flow.rec.error = Some("draining".into());
        return finish_local(&ctx, flow, resp);
    }

    // Malformed framing that hyper lets through but a proxy must not.
    if let Some(why) = framing_problem(&req, is_connect) {
        return bad_request(&ctx, flow, why);
    }

    // Where to?
    let (host, port) = match target(&req, is_connect) {
        Ok(t) => t,
        Err(why) => return bad_request(&ctx, flow, &why),
    };
    flow.rec.dst_port = Some(port);
    let dest = match Destination::parse(&host) {
        Ok(d) => d,
        Err(e) => {
            let d = version.policy.invalid_destination(
                peer.ip(),
                None,
                format!("invalid destination: {e}"),
            );
            flow.rec.dst_host = Some(host.clone());
            flow.rec.apply_decision(&d);
            return finish_local(
                &ctx,
                flow,
                text(StatusCode::BAD_REQUEST, &format!("Bad destination: {e}\n")),
            );
        }
    };
    match &dest {
        Destination::Name(n) => flow.rec.dst_host = Some(n.clone()),
        Destination::Ip(ip) => flow.rec.dst_ip = Some(sluice_observe::ip_string(*ip)),
    }

    // Identify.
    let auth_header = req
        .headers()
        .get(header::PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let user = match ctx.auth.check(&version.users, auth_header).await {
        AuthOutcome::Missing => None,
        AuthOutcome::User(u) => Some(u),
        AuthOutcome::Malformed | AuthOutcome::Failed => {
            let reason = "proxy authentication failed".to_owned();
            let d = version
                .policy
                .invalid_destination(peer.ip(), None, reason.clone());
            flow.rec.apply_decision(&d);
            flow.rec.rule = ids::NO_ZONE.into();
            flow.rec.zone = None;
            flow.rec.mode = None;
            return finish_local(&ctx, flow, auth_required(&reason));
        }
    };
    flow.rec.user = user.clone();

    // Decide.
    let t0 = Instant::now();
    let decision = version.policy.decide(&PolicyRequest {
        src: peer.ip(),
        user: user.as_deref(),
        dest: &dest,
        port,
    });
    ctx.metrics.observe_decision(t0.elapsed());
    flow.rec.apply_decision(&decision);
    if decision.auth_required {
        return finish_local(&ctx, flow, auth_required(&decision.reason));
    }
    // Only a final denial is answered before resolution: a name that no host
    // rule matched is still pending on the zone's cidr allow rules, which
    // judge its addresses in the dial stage (DESIGN.md, two phases).
    if !decision.passes() && decision.pending == Pending::Nothing {
        let resp = denied(&decision, flow.rec.id());
        return finish_local(&ctx, flow, resp);
    }

    if is_connect {
        connect(ctx, version, flow, decision, dest, port, slot, req).await
    } else {
        forward(ctx, pool, version, flow, decision, dest, port, req).await
    }
}

/// Rejects framing that request smuggling relies on.
fn framing_problem(req: &Request<Incoming>, is_connect: bool) -> Option<&'static str> {
    let h = req.headers();
    let cl: Vec<_> = h.get_all(header::CONTENT_LENGTH).iter().collect();
    let te = h.contains_key(header::TRANSFER_ENCODING);
    if cl.len() > 1 {
        return Some("more than one Content-Length header");
    }
    if te && !cl.is_empty() {
        return Some("both Content-Length and Transfer-Encoding");
    }
    if is_connect && (te || cl.first().is_some_and(|v| v.as_bytes() != b"0")) {
        return Some("CONNECT with a body");
    }
    if req.version() != hyper::Version::HTTP_11 && req.version() != hyper::Version::HTTP_10 {
        return Some("unsupported HTTP version");
    }
    None
}

/// Host and port from a CONNECT authority or an absolute-form URI.
fn target(req: &Request<Incoming>, is_connect: bool) -> Result<(String, u16), String> {
    let uri = req.uri();
    if is_connect {
        // Authority form only (RFC 9110 §9.3.6): no scheme, no path.
        if uri.scheme().is_some() || uri.path_and_query().is_some() {
            return Err("CONNECT needs host:port as its target, not a URL".into());
        }
        let auth = uri
            .authority()
            .ok_or("CONNECT needs host:port as its target")?;
        if auth.as_str().contains('@') {
            return Err("CONNECT needs host:port as its target, without user@".into());
        }
        let port = auth.port_u16().ok_or("CONNECT needs an explicit port")?;
        if port == 0 {
            return Err("port 0 is not a destination".into());
        }
        return Ok((auth.host().to_owned(), port));
    }
    let Some(auth) = uri.authority() else {
        return Err("This is Sluice, an HTTP forward proxy. Send absolute-form requests \
                    (GET http://host/path) or CONNECT host:port, e.g. curl -x http://this-proxy:3128 URL."
            .into());
    };
    if auth.as_str().contains('@') {
        return Err("credentials in the URL are not forwarded; remove user:password@".into());
    }
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => return Err("send https:// URLs through CONNECT (use HTTPS_PROXY)".into()),
        _ => return Err("only http:// URLs are proxied in absolute form".into()),
    };
    let port = auth.port_u16().unwrap_or(default_port);
    if port == 0 {
        return Err("port 0 is not a destination".into());
    }
    Ok((auth.host().to_owned(), port))
}

#[allow(clippy::too_many_arguments)]
async fn connect(
    ctx: Arc<Ctx>,
    version: Arc<Version>,
    mut flow: Flow,
    decision: Decision,
    dest: Destination,
    port: u16,
    slot: Arc<Slot>,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let dialed = match ctx.dial(&version.policy, &decision, &dest, port).await {
        Ok(d) => d,
        Err(e) => return dial_failed(&ctx, flow, e),
    };
    flow.rec.apply_decision(&dialed.decision);
    flow.rec.dst_ip = Some(sluice_observe::ip_string(dialed.peer.ip()));
    flow.rec.status = Some(200);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (src_ip, user) = user_of(&flow);
    let check = tunnel::sni_check(
        version.policy.clone(),
        &dest,
        port,
        dialed.peer,
        src_ip,
        user,
    );
    let id = flow.rec.id().to_owned();
    let tunnel_ctx = ctx.clone();
    tokio::spawn(async move {
        let ctx = tunnel_ctx;
        let _slot = slot;
        let _active = ctx.drain().active();
        let _gauge = ctx.metrics.active_tunnel(Listener::Http);
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                flow.rec.error = Some(format!("upgrade failed: {e}"));
                return emit(&ctx, flow.rec);
            }
        };
        let parts = match upgraded.downcast::<TokioIo<Timed>>() {
            Ok(p) => p,
            Err(_) => {
                flow.rec.error = Some("internal: unexpected upgraded stream type".into());
                return emit(&ctx, flow.rec);
            }
        };
        // Keep only the bytes hyper read ahead, not its whole read buffer.
        let hyper::upgrade::Parts { io, read_buf, .. } = parts;
        let pre = read_buf.to_vec();
        drop(read_buf);
        let client = io.into_inner().into_inner();
        let r = relay::relay(
            client,
            dialed.stream,
            &pre,
            check,
            ctx.limits.idle_timeout,
            ctx.limits.header_timeout,
            ctx.drain().stopped(),
        )
        .await;
        tunnel::apply_relayed(&mut flow.rec, r);
        emit(&ctx, flow.rec);
    });
    let mut resp = Response::new(empty());
    add_id(&mut resp, &id);
    resp
}

fn user_of(flow: &Flow) -> (std::net::IpAddr, Option<String>) {
    let ip = flow
        .rec
        .src
        .parse::<SocketAddr>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |s| s.ip());
    (ip, flow.rec.user.clone())
}

pub use crate::tunnel::SNI_RULE;

#[allow(clippy::too_many_arguments)]
async fn forward(
    ctx: Arc<Ctx>,
    pool: Arc<Pool>,
    version: Arc<Version>,
    mut flow: Flow,
    decision: Decision,
    dest: Destination,
    port: u16,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let upgrade = wants_upgrade(req.headers());
    let key = (dest.clone(), port);
    let pooled = if upgrade {
        None
    } else {
        pool.checkout(&key, &ctx, &version.policy, &decision, port)
    };
    let (mut sender, peer, final_decision) = match pooled {
        Some(p) => p,
        None => {
            let dialed = match ctx.dial(&version.policy, &decision, &dest, port).await {
                Ok(d) => d,
                Err(e) => return dial_failed(&ctx, flow, e),
            };
            let mut b = client_http1::Builder::new();
            b.max_buf_size(1024 * 1024);
            let hs = b
                .handshake::<_, ProxyBody>(TokioIo::new(dialed.stream))
                .await;
            let (sender, conn) = match hs {
                Ok(x) => x,
                Err(e) => {
                    flow.rec.apply_decision(&dialed.decision);
                    flow.rec.error = Some(format!("origin handshake: {e}"));
                    return finish_local(
                        &ctx,
                        flow,
                        text(
                            StatusCode::BAD_GATEWAY,
                            "Bad gateway: origin handshake failed\n",
                        ),
                    );
                }
            };
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            (sender, dialed.peer, dialed.decision)
        }
    };
    flow.rec.apply_decision(&final_decision);
    flow.rec.dst_ip = Some(sluice_observe::ip_string(peer.ip()));

    // Rewrite the request for the origin.
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = match path.parse::<Uri>() {
        Ok(u) => u,
        Err(_) => return bad_request(&ctx, flow, "invalid request path"),
    };
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if let Ok(v) = HeaderValue::from_str(&authority) {
        parts.headers.insert(header::HOST, v);
    }
    parts
        .headers
        .append(header::VIA, HeaderValue::from_static(VIA));
    parts.version = hyper::Version::HTTP_11;
    let out_count = Arc::new(AtomicU64::new(0));
    let body = Counted::new(body, out_count.clone(), None).boxed();
    let upstream_req = Request::from_parts(parts, body);

    if sender.ready().await.is_err() {
        flow.rec.error = Some("origin connection closed".into());
        return finish_local(
            &ctx,
            flow,
            text(
                StatusCode::BAD_GATEWAY,
                "Bad gateway: origin closed the connection\n",
            ),
        );
    }
    let mut resp = match sender.send_request(upstream_req).await {
        Ok(r) => r,
        Err(e) => {
            flow.rec.error = Some(format!("origin: {e}"));
            flow.rec.bytes_out = out_count.load(Ordering::Relaxed);
            return finish_local(
                &ctx,
                flow,
                text(
                    StatusCode::BAD_GATEWAY,
                    "Bad gateway: the origin did not answer\n",
                ),
            );
        }
    };
    flow.rec.status = Some(resp.status().as_u16());
    let id = flow.rec.id().to_owned();

    if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let origin_upgrade = hyper::upgrade::on(&mut resp);
        let tunnel_ctx = ctx.clone();
        tokio::spawn(async move {
            let ctx = tunnel_ctx;
            let _active = ctx.drain().active();
            let _gauge = ctx.metrics.active_tunnel(Listener::Http);
            let (Some(cu), Ok(ou)) = (client_upgrade, origin_upgrade.await) else {
                flow.rec.error = Some("origin upgrade failed".into());
                return emit(&ctx, flow.rec);
            };
            let Ok(cu) = cu.await else {
                flow.rec.error = Some("client upgrade failed".into());
                return emit(&ctx, flow.rec);
            };
            let mut c = TokioIo::new(cu);
            let mut o = TokioIo::new(ou);
            let stop = ctx.drain().stopped();
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut c, &mut o) => match r {
                    Ok((a, b)) => { flow.rec.bytes_out += a; flow.rec.bytes_in += b; }
                    Err(e) => flow.rec.error = Some(e.to_string()),
                },
                () = stop => flow.rec.error = Some("stopped: drain timeout".into()),
            }
            emit(&ctx, flow.rec);
        });
        let (mut parts, _) = resp.into_parts();
        parts
            .headers
            .append(header::VIA, HeaderValue::from_static(VIA));
        let mut out = Response::from_parts(parts, empty());
        add_id(&mut out, &id);
        return out;
    }

    if !upgrade {
        pool.checkin(key, sender, peer);
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    parts
        .headers
        .append(header::VIA, HeaderValue::from_static(VIA));
    let in_count = Arc::new(AtomicU64::new(0));
    let rec_ctx = ctx.clone();
    let mut rec = flow.rec;
    let on_end: OnEnd = Box::new(move |bytes_in, error| {
        rec.bytes_in = bytes_in;
        rec.bytes_out = out_count.load(Ordering::Relaxed);
        if rec.error.is_none() {
            rec.error = error;
        }
        emit(&rec_ctx, rec);
    });
    let body = Counted::new(body, in_count, Some(on_end)).boxed();
    let mut out = Response::from_parts(parts, body);
    add_id(&mut out, &id);
    out
}

fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
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
    if !h.contains_key(header::CONNECTION) {
        strip_fixed(h, keep_upgrade);
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
        if keep_upgrade && n == header::UPGRADE {
            continue;
        }
        h.remove(n);
    }
    strip_fixed(h, keep_upgrade);
}

/// The hop-by-hop headers RFC 9110 names (and two that old clients send).
fn strip_fixed(h: &mut HeaderMap, keep_upgrade: bool) {
    for n in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        if keep_upgrade && (n == header::UPGRADE || n == header::CONNECTION) {
            continue;
        }
        h.remove(n);
    }
    h.remove(HeaderName::from_static("proxy-connection"));
    h.remove(HeaderName::from_static("keep-alive"));
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn dial_failed(ctx: &Ctx, mut flow: Flow, e: DialError) -> Response<ProxyBody> {
    e.apply_to(&mut flow.rec);
    let resp = match &e {
        DialError::Resolve { host, .. } => text(
            StatusCode::BAD_GATEWAY,
            &format!("Bad gateway: cannot resolve {host}\n"),
        ),
        DialError::Denied(d) => denied(d, flow.rec.id()),
        DialError::Connect { addr, .. } => text(
            StatusCode::BAD_GATEWAY,
            &format!("Bad gateway: {addr} refused or is unreachable\n"),
        ),
        DialError::Timeout(..) => text(
            StatusCode::GATEWAY_TIMEOUT,
            "Gateway timeout: the destination did not answer in time\n",
        ),
    };
    finish_local(ctx, flow, resp)
}

/// Records a flow answered by Sluice itself and returns the answer.
fn finish_local(ctx: &Ctx, mut flow: Flow, mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    flow.rec.status = Some(resp.status().as_u16());
    add_id(&mut resp, flow.rec.id());
    emit(ctx, flow.rec);
    resp
}

/// Rule id recorded for requests refused before any policy decision.
pub const BAD_REQUEST_RULE: &str = "default/bad-request";

fn bad_request(ctx: &Ctx, mut flow: Flow, why: &str) -> Response<ProxyBody> {
    flow.rec.error = Some(why.to_owned());
    flow.rec.rule = BAD_REQUEST_RULE.to_owned();
    flow.rec.reason = why.to_owned();
    let mut resp = text(StatusCode::BAD_REQUEST, &format!("Bad request: {why}\n"));
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    finish_local(ctx, flow, resp)
}

/// A flow record for a request hyper refused before Sluice saw it (it
/// answered 400, 414 or 431 itself and closed): malformed requests are
/// attempts too, and an operator should see them in the flow log.
fn malformed(ctx: &Ctx, peer: SocketAddr, e: &hyper::Error) {
    let mut rec = FlowRecord::new(Listener::Http, Protocol::Http, peer, SystemTime::now());
    let why = format!("malformed request: {e}");
    rec.status = Some(if !e.is_parse_too_large() {
        400
    } else if why.contains("URI") {
        414
    } else {
        431
    });
    rec.rule = BAD_REQUEST_RULE.to_owned();
    rec.reason.clone_from(&why);
    rec.error = Some(why);
    ctx.emit(rec);
}

fn denied(d: &Decision, id: &str) -> Response<ProxyBody> {
    let body = format!(
        "Sluice denied this request.\nrule: {}\nreason: {}\nzone: {}\nrequest id: {id}\n",
        d.rule,
        d.reason,
        d.zone.as_deref().unwrap_or("-"),
    );
    let mut resp = text(StatusCode::FORBIDDEN, &body);
    let h = resp.headers_mut();
    h.insert("sluice-rule", header_value(&d.rule));
    h.insert("sluice-reason", header_value(&d.reason));
    resp
}

fn auth_required(reason: &str) -> Response<ProxyBody> {
    let mut resp = text(
        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        &format!("Proxy authentication required: {reason}\n"),
    );
    let h = resp.headers_mut();
    h.insert(
        header::PROXY_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"sluice\""),
    );
    h.insert("sluice-rule", HeaderValue::from_static(ids::NO_ZONE));
    h.insert("sluice-reason", header_value(reason));
    resp
}

fn header_value(s: &str) -> HeaderValue {
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(512)
        .collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

fn add_id<B>(resp: &mut Response<B>, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        if !id.is_empty() {
            resp.headers_mut().insert("sluice-request-id", v);
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_owned()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn empty() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

type OnEnd = Box<dyn FnOnce(u64, Option<String>) + Send + Sync>;

/// A body that counts its data bytes and calls `on_end` once, when it ends
/// or is dropped early (client gone).
struct Counted<B> {
    inner: B,
    count: Arc<AtomicU64>,
    on_end: Option<OnEnd>,
}

impl<B> Counted<B> {
    fn new(inner: B, count: Arc<AtomicU64>, on_end: Option<OnEnd>) -> Self {
        Counted {
            inner,
            count,
            on_end,
        }
    }

    fn end(&mut self, error: Option<String>) {
        if let Some(f) = self.on_end.take() {
            f(self.count.load(Ordering::Relaxed), error);
        }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.count.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.end(Some(format!("body: {e}")));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.end(None);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        if self.on_end.is_some() {
            let ended = None;
            self.end(ended);
        }
    }
}

type PoolKey = (Destination, u16);

struct Pooled {
    sender: client_http1::SendRequest<ProxyBody>,
    peer: SocketAddr,
    since: Instant,
}

/// Keep-alive connections to origins, by destination. A pooled connection is
/// reused only if its address still passes the current policy's checks.
#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<Pooled>>>,
}

impl Pool {
    fn checkout(
        &self,
        key: &PoolKey,
        ctx: &Ctx,
        policy: &Policy,
        decision: &Decision,
        port: u16,
    ) -> Option<(client_http1::SendRequest<ProxyBody>, SocketAddr, Decision)> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        // Oldest first (checkin appends): expire from the front, reuse the
        // most recently used from the back. Constant work per request, not a
        // scan of every idle connection.
        let now = Instant::now();
        let expired = list
            .iter()
            .take_while(|p| now.duration_since(p.since) >= POOL_IDLE)
            .count();
        list.drain(..expired);
        let p = loop {
            let p = list.pop()?;
            // Closed, or (rarely) not ready for another request: drop it.
            if !p.sender.is_closed() && p.sender.is_ready() {
                break p;
            }
        };
        drop(idle);
        let (d, _) = ctx
            .dialer
            .vet(policy, decision, &[p.peer.ip()], port)
            .ok()?;
        Some((p.sender, p.peer, d))
    }

    fn checkin(
        &self,
        key: PoolKey,
        sender: client_http1::SendRequest<ProxyBody>,
        peer: SocketAddr,
    ) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() > 1024 {
                idle.retain(|_, v| {
                    v.retain(|p| !p.sender.is_closed() && p.since.elapsed() < POOL_IDLE);
                    !v.is_empty()
                });
            }
            let list = idle.entry(key).or_default();
            if list.len() < POOL_PER_KEY {
                list.push(Pooled {
                    sender,
                    peer,
                    since: Instant::now(),
                });
            }
        }
    }
}
