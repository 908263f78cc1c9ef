//! The HTTP/1.1 forward proxy: `CONNECT host:port` tunnels and absolute-form
//! requests (`GET http://host/path`). hyper parses HTTP; this module is a
//! protocol adapter over the [`Gateway`]'s stages:
//!
//! 1. identify — `Proxy-Authorization` (407 when a zone needs a user);
//! 2. decide — the policy's first phase (403 with `Sluice-Rule`/`Sluice-Reason`);
//! 3. dial — resolve once, check addresses, connect (502 / 504 / 403);
//! 4. tunnel — CONNECT bytes through the relay, or one request forwarded
//!    over a pooled connection (`forward`);
//! 5. record — one flow record per tunnel or per request.
//!
//! # Layout
//!
//! - `fast_connect`: the first head of a connection; a plain CONNECT is
//!   served there without hyper, everything else goes on to hyper.
//! - `answer`: refusals as HTTP answers.
//! - `forward`: absolute-form requests and WebSocket upgrades.
//! - `pool`: keep-alive origin connections.
//! - `body`: counted, inspected bodies.
//! - `framing`: request heads as written, scanned for `Content-Length`
//!   with `Transfer-Encoding` (hyper drops the length before we see it).

mod answer;
mod body;
mod fast_connect;
mod forward;
pub mod framing;
mod pool;

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, header, server::conn::http1,
    service::service_fn, upgrade::Upgraded,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use sluice_observe::{ErrorKind, Listener, Protocol};
use sluice_serve::Slot;
use tokio::{
    net::{TcpListener, TcpStream},
    time::Instant,
};

use crate::{
    Gateway,
    flow::Flow,
    refusal::Refusal,
    relay::Preread,
    timed::{Phase, Timed},
};

/// Boxed errors of bodies passing through (hyper's, or an inspector's).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) type ProxyBody = BoxBody<Bytes, BoxError>;

pub(crate) use forward::forward_fixed;

const VIA: &str = "1.1 sluice";

/// Accepts proxy clients on `listener` until a drain begins (on every
/// core of `gw.cores()`, when it has them).
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>) {
    let pool = pool::Pool::start(gw.limits(), gw.metrics().clone());
    let (limiter, drain) = (gw.limiter().clone(), gw.drain().clone());
    let cores = gw.cores().cloned();
    let exhausted = gw.fd_exhausted_hook(Listener::Http);
    let nodelay = crate::sockopt::listener_nodelay(&listener);
    sluice_serve::run_tcp_cores(
        cores.as_deref(),
        listener,
        limiter,
        drain,
        exhausted,
        // Boxed: the connection's future is large (its fast path and
        // hyper's), and a task moves its future by value when it is
        // spawned and again when it ends (tokio's `Cell::new` and
        // `set_stage`); boxed, those moves are of a pointer and the
        // future is copied once (`perf`: memmove was 4 % of Sluice's CPU
        // under tunnel load, bench/README.md).
        move |stream, peer, slot| {
            Box::pin(connection(
                gw.clone(),
                pool.clone(),
                stream,
                peer,
                slot,
                nodelay,
            ))
        },
    )
    .await;
}

async fn connection(
    gw: Arc<Gateway>,
    pool: Arc<pool::Pool>,
    mut stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<Slot>,
    nodelay_inherited: bool,
) {
    let started = Instant::now();
    if !nodelay_inherited {
        let _ = stream.set_nodelay(true);
    }
    let (l, p) = (Listener::Http, Protocol::Http);
    let Some(peer) = gw.proxied_client(l, p, &mut stream, peer, true).await else {
        return;
    };
    // The phase is hyper's only: made once a connection goes to hyper,
    // not for every fast-path tunnel (one allocation fewer a tunnel).
    let (stream, pre, since, phase) =
        match fast_connect::first_head(&gw, &mut stream, started).await {
            fast_connect::First::Hyper(pre) => (stream, pre, started, Phase::new()),
            fast_connect::First::Connect(head) => {
                match fast_connect::serve(gw.clone(), stream, peer, slot.clone(), head).await {
                    None => return,
                    // Refused, and kept alive: the next request is hyper's,
                    // awaited like any request after an answer.
                    Some((stream, rest)) => {
                        let phase = Phase::new();
                        phase.end_request();
                        (stream, rest, Instant::now(), phase)
                    }
                }
            }
        };
    // A client that may belong to a zone inspecting content (DLP, clamd,
    // ICAP) is served on the inspection pool: scanning or holding its
    // bodies would hold every other connection of this core
    // (`sluice_serve::cores`).
    let heavy = gw
        .cores()
        .cloned()
        .filter(|_| gw.version().policy.may_inspect_content(peer.ip()));
    if let Some(cores) = heavy {
        match stream.into_std() {
            Ok(s) => {
                cores
                    .offload(async move {
                        match TcpStream::from_std(s) {
                            Ok(stream) => {
                                with_hyper(gw, pool, stream, peer, slot, phase, since, pre).await;
                            }
                            Err(e) => tracing::warn!(%peer, error = %e, "cannot serve a client on the inspection pool"),
                        }
                    })
                    .await;
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot move a client to the inspection pool")
            }
        }
        return;
    }
    // Boxed: hyper's connection state would otherwise be part of every
    // fast-path tunnel's future (and of its memory while idle).
    Box::pin(with_hyper(gw, pool, stream, peer, slot, phase, since, pre)).await;
}

/// The rest of a connection through hyper, `pre` already read from it.
#[allow(clippy::too_many_arguments)]
async fn with_hyper(
    gw: Arc<Gateway>,
    pool: Arc<pool::Pool>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<Slot>,
    phase: Arc<Phase>,
    since: Instant,
    pre: Bytes,
) {
    let limits = gw.limits().clone();
    let io = Timed::new(
        stream,
        phase.clone(),
        (limits.header_timeout, limits.idle_timeout),
        since,
        pre,
    );
    let svc_gw = gw.clone();
    let svc = service_fn(move |req| {
        let (gw, pool, slot, phase) = (svc_gw.clone(), pool.clone(), slot.clone(), phase.clone());
        phase.begin_request();
        let both_lengths = phase.take_both_lengths();
        let is_connect = req.method() == Method::CONNECT;
        async move {
            let resp = handle(gw, pool, peer, slot, req, both_lengths).await;
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
        .max_buf_size((limits.max_header_bytes as usize).max(8192))
        // `max_buf_size` is checked only while a head is still incomplete: a
        // larger head that arrives in one read would pass. This bounds it.
        .max_header_size(limits.max_header_bytes as usize)
        .max_headers(128)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
                if e.is_parse() || e.is_parse_too_large() {
                    malformed(&gw, peer, &e);
                }
            }
        }
        () = gw.drain().began() => {
            conn.as_mut().graceful_shutdown();
            // In-flight exchanges may finish until the drain deadline; then
            // the connection is dropped, and with it every exchange still
            // waiting for a head or streaming a body, each recording itself
            // as stopped by the drain (`forward::InFlight`, `body::Ended`)
            // before the process flushes the flow log.
            tokio::select! {
                _ = conn.as_mut() => {}
                () = gw.drain().stopped() => {}
            }
        }
    }
}

/// One request through the stages.
async fn handle(
    gw: Arc<Gateway>,
    pool: Arc<pool::Pool>,
    peer: SocketAddr,
    slot: Arc<Slot>,
    req: Request<Incoming>,
    both_lengths: bool,
) -> Response<ProxyBody> {
    let is_connect = req.method() == Method::CONNECT;
    let protocol = if is_connect {
        Protocol::Connect
    } else {
        Protocol::Http
    };
    let mut flow = gw.start(Listener::Http, protocol, peer);
    flow.method = Some(req.method().as_str().to_owned());
    if !is_connect {
        // Plaintext on the wire: an absolute-form request is never TLS.
        flow.tls = Some(false);
    }
    if let Err(r) = prepare(&gw, &mut flow, &req, is_connect, both_lengths).await {
        return refused(&gw, flow, r);
    }
    if !is_connect {
        if let Err(r) = gw.require_tls(&mut flow, false) {
            return refused(&gw, flow, r);
        }
    }
    if is_connect {
        connect(gw, flow, slot, req).await
    } else {
        forward::forward(gw, pool, flow, req).await
    }
}

/// Admit, check framing, target, identify, decide.
async fn prepare<B>(
    gw: &Gateway,
    flow: &mut Flow,
    req: &Request<B>,
    is_connect: bool,
    both_lengths: bool,
) -> Result<(), Refusal> {
    gw.admit()?;
    // Malformed framing that hyper lets through but a proxy must not. hyper
    // removes a Content-Length sent with Transfer-Encoding: the head as
    // written says whether there was one (`framing`).
    if both_lengths {
        return Err(Refusal::BadRequest(
            "both Content-Length and Transfer-Encoding (RFC 9112 §6.3)".into(),
        ));
    }
    if let Some(why) = framing_problem(req, is_connect) {
        return Err(Refusal::BadRequest(why.to_owned()));
    }
    let (host, port) = target(req, is_connect).map_err(Refusal::BadRequest)?;
    gw.target(flow, &host, port)?;
    let auth = req
        .headers()
        .get(header::PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    gw.identify_header(flow, auth).await?;
    gw.decide(flow)
}

/// A refused request inside an intercepted tunnel (its record folds into
/// the tunnel's).
pub(crate) fn refused_answer(gw: &Gateway, flow: Flow, r: Refusal) -> Response<ProxyBody> {
    refused(gw, flow, r)
}

/// `500` for a request Sluice could not handle on its own account.
pub(crate) fn internal_error() -> Response<ProxyBody> {
    answer::text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Sluice failed on its own account; see its log.\n",
    )
}

/// A refused flow: its answer, and its record with the status answered.
fn refused(gw: &Gateway, mut flow: Flow, r: Refusal) -> Response<ProxyBody> {
    r.apply(&mut flow);
    let resp = answer::refusal(&r, &flow);
    flow.status = Some(resp.status().as_u16());
    gw.record(flow);
    resp
}

/// CONNECT: dial, answer 200, and tunnel once hyper hands over the socket.
async fn connect(
    gw: Arc<Gateway>,
    mut flow: Flow,
    slot: Arc<Slot>,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let upstream = match gw.dial(&mut flow).await {
        Ok(s) => s,
        Err(r) => return refused(&gw, flow, r),
    };
    flow.status = Some(200);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let mut resp = Response::new(answer::empty());
    answer::add_id(&mut resp, flow.id());
    let active = gw.drain().active();
    tokio::spawn(async move {
        let _held = (slot, active);
        let client = match on_upgrade.await {
            Ok(u) => unwrap_client(u),
            Err(e) => {
                tracing::debug!(error = %e, "CONNECT upgrade failed");
                None
            }
        };
        let Some((client, pre)) = client else {
            flow.error = Some("upgrade failed".into());
            flow.error_kind = Some(ErrorKind::Client);
            return gw.record(flow);
        };
        let pre = Preread {
            out: &pre,
            inn: &[],
        };
        gw.tunnel(Box::new(flow), client, upstream, pre, true).await;
    });
    resp
}

/// The client's socket under an upgraded connection, with the bytes hyper
/// read ahead (only those, not its whole read buffer).
fn unwrap_client(u: Upgraded) -> Option<(TcpStream, Vec<u8>)> {
    let parts = u.downcast::<TokioIo<Timed>>().ok()?;
    let (stream, unread) = parts.io.into_inner().into_inner();
    let mut pre = parts.read_buf.to_vec();
    pre.extend_from_slice(&unread);
    Some((stream, pre))
}

/// Rejects framing that request smuggling relies on.
fn framing_problem<B>(req: &Request<B>, is_connect: bool) -> Option<&'static str> {
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
    // RFC 9112 §3.2: more than one Host line, or an invalid one, is a 400.
    let mut hosts = h.get_all(header::HOST).iter();
    if let (Some(host), next) = (hosts.next(), hosts.next()) {
        if next.is_some() {
            return Some("more than one Host header");
        }
        let valid = host
            .to_str()
            .ok()
            .and_then(crate::transparent::host_of)
            .is_some_and(|h| {
                // A bracketed IPv6 literal (with a zone id) is judged as the
                // target is; a name may hold only name characters.
                h.starts_with('[')
                    || h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            });
        if !valid {
            return Some("empty or invalid Host header");
        }
    }
    None
}

/// Host and port from a CONNECT authority or an absolute-form URI.
fn target<B>(req: &Request<B>, is_connect: bool) -> Result<(String, u16), String> {
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
        let port = match port_text(auth.as_str()) {
            Some(p) => port_of(p)?,
            None => return Err("CONNECT needs an explicit port".into()),
        };
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
    let port = match port_text(auth.as_str()) {
        Some("") => return Err("empty port in the URL".into()),
        Some(p) => port_of(p)?,
        None => default_port,
    };
    Ok((auth.host().to_owned(), port))
}

/// The port text of an authority (`host:port`, `[v6]:port`), if it has a
/// `:` after its host. Read from the text, not from `http`'s
/// `Authority::port`: that one answers `None` for a port it cannot parse
/// (`:65536`, `:80x`), which would send the request to the default port.
fn port_text(auth: &str) -> Option<&str> {
    let after_host = auth.rfind(']').map_or(auth, |i| &auth[i + 1..]);
    after_host.rfind(':').map(|i| &after_host[i + 1..])
}

/// A target's port: `1*5DIGIT`, 1 to 65535 (no sign, no space).
fn port_of(p: &str) -> Result<u16, String> {
    sluice_policy::parse_port(p).ok_or_else(|| {
        format!(
            "invalid port `{}`: expected 1 to 65535 in ASCII digits",
            p.escape_debug()
        )
    })
}

/// A flow record for a request hyper refused before Sluice saw it (it
/// answered 400, 414 or 431 itself and closed): malformed requests are
/// attempts too, and an operator should see them in the flow log.
fn malformed(gw: &Gateway, peer: SocketAddr, e: &hyper::Error) {
    let mut flow = gw.start(Listener::Http, Protocol::Http, peer);
    let why = format!("malformed request: {e}");
    flow.status = Some(if !e.is_parse_too_large() {
        400
    } else if why.contains("URI") {
        414
    } else {
        431
    });
    gw.refuse(flow, &Refusal::BadRequest(why));
}
