//! The transparent listener (`listen.transparent`, Linux): TCP connections
//! that an nftables `redirect` (iptables `REDIRECT`) on a gateway host sent
//! to Sluice without the client knowing. Nothing on the wire names a proxy,
//! so this module recovers what the client wanted and runs the
//! [`Gateway`]'s stages on it:
//!
//! 1. identify — the zone by source address (there are no credentials);
//!    the original destination from conntrack (`SO_ORIGINAL_DST`);
//! 2. peek — read the client's first bytes without answering: a TLS
//!    ClientHello (split over segments or records, bounded by 16 KiB and
//!    `limits.header_timeout`) gives the SNI (`protocol: tls`); an HTTP/1
//!    request head gives `Host` (`http-transparent`); anything else, or
//!    nothing within [`FIRST_BYTES_WAIT`], is `tcp`;
//! 3. decide — a name (SNI or `Host`) is judged by the policy as a name;
//!    `tcp`, a ClientHello without SNI or with an IP literal, and a request
//!    without `Host` are judged by the original destination (`cidr` rules),
//!    or by the name a DNS-derived grant gives that address;
//! 4. dial — a name is dialed at its own checked resolution, never blindly
//!    at the original destination (which is preferred only when it is one
//!    of the name's addresses): a client that sends `SNI allowed.example` to
//!    an arbitrary address reaches `allowed.example` or nothing;
//! 5. relay and record — the peeked bytes go first, unchanged; the record
//!    keeps `original_dst` and says when it was not among the name's
//!    addresses.
//!
//! A denied `http-transparent` request is answered `403` with the rule; other
//! denied flows are closed. A connection that did not come through a
//! redirect is recorded (`default/not-redirected`) and reset. A ClientHello that is not well-formed is denied
//! in enforce mode (report and open zones judge it as `tcp`). Only the first
//! request of a plain HTTP connection is judged: later requests on it reach
//! the same, already checked, address. In a zone that inspects content the
//! gateway serves such a connection request by request so that each meets
//! that inspection (`Gateway::tunnel`); elsewhere it is spliced.

mod judge;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use sluice_observe::{Listener, Protocol};
use sluice_policy::{ids, model::Limits};
use sluice_serve::Slot;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

pub use judge::{Judged, Peeked, host_of, http_head, judge, prefer};

use crate::{Gateway, flow::Flow, refusal::Refusal, relay, sockopt, tls::Hello};

/// How long to wait for the client's first bytes before judging the flow as
/// `tcp` by its original destination: protocols where the server speaks
/// first (SMTP, FTP) pay this once per connection.
pub const FIRST_BYTES_WAIT: Duration = Duration::from_millis(1000);

/// Accepts redirected clients on `listener` until a drain begins (on
/// every core of `gw.cores()`, when it has them).
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>) {
    let (limiter, drain) = (gw.limiter().clone(), gw.drain().clone());
    let cores = gw.cores().cloned();
    let exhausted = gw.fd_exhausted_hook(Listener::Transparent);
    sluice_serve::run_tcp_cores(
        cores.as_deref(),
        listener,
        limiter,
        drain,
        exhausted,
        move |stream, peer, slot| connection(gw.clone(), stream, peer, slot),
    )
    .await;
}

async fn connection(gw: Arc<Gateway>, mut stream: TcpStream, peer: SocketAddr, slot: Arc<Slot>) {
    let _ = stream.set_nodelay(true);
    let (l, p) = (Listener::Transparent, Protocol::Tcp);
    let lb = peer;
    let Some(peer) = gw.proxied_client(l, p, &mut stream, peer, false).await else {
        return;
    };
    let mut flow = gw.start(Listener::Transparent, Protocol::Tcp, peer);
    // Identify: where was the client going?
    let original = match sockopt::original_dst(&stream) {
        Ok(a) if Some(a) != stream.local_addr().ok() => a,
        Ok(_) => {
            let why = "not redirected: the client connected to the transparent listener itself";
            return not_redirected(&gw, stream, flow, why.to_owned());
        }
        Err(e) => {
            let why = format!("no original destination (SO_ORIGINAL_DST: {e}); not redirected?");
            return not_redirected(&gw, stream, flow, why);
        }
    };
    flow.original_dst = Some(original);
    flow.port = Some(original.port());
    let mut first = Vec::with_capacity(2048);
    let peeked = peek(&mut stream, &mut first, gw.limits()).await;
    if !gw.proxy_trusted(lb) && crate::proxy_protocol::starts_with_header(&first) {
        let why = crate::gateway::untrusted_header(lb);
        return gw.refuse(flow, &Refusal::BadRequest(why));
    }
    // The peek read the first bytes anyway: whether they were a ClientHello.
    flow.tls = Some(matches!(peeked, Peeked::Tls(_)));
    match &peeked {
        Peeked::Tls(sni) => flow.sni.clone_from(sni),
        Peeked::Http { method, .. } => flow.method = Some(method.clone()),
        _ => {}
    }
    // Decide.
    let t0 = Instant::now();
    let judged = judge(flow.policy(), gw.grants(), peer.ip(), original, &peeked);
    gw.metrics().observe_decision(t0.elapsed());
    flow.protocol = judged.protocol;
    flow.grant.clone_from(&judged.grant);
    flow.dest = Some(judged.dest.clone());
    flow.note.clone_from(&judged.note);
    if let Err(r) = gw.settle(&mut flow, judged.decision.clone()) {
        return deny(&gw, stream, flow, r).await;
    }
    let upstream = match dial(&gw, &mut flow, &judged, original).await {
        Ok(s) => s,
        Err(r @ Refusal::Denied(_)) => return deny(&gw, stream, flow, r).await,
        Err(r) => return gw.refuse(flow, &r),
    };
    gw.spawn_tunnel(flow, stream, upstream, first, false, slot);
}

/// A name is dialed at its own checked resolution (the original
/// destination first when it is one of them), never blindly at the
/// original destination; an address flow only at the original.
async fn dial(
    gw: &Gateway,
    flow: &mut Flow,
    judged: &Judged,
    original: SocketAddr,
) -> Result<TcpStream, Refusal> {
    let started = Instant::now();
    let addrs = if judged.resolve {
        let (order, among) = prefer(gw.resolve(flow).await?, original.ip());
        if !among {
            flow.note = Some(format!(
                "original destination {} is not among the addresses of {}; dialed the name's own",
                original.ip(),
                judged.dest
            ));
        }
        order
    } else {
        vec![original.ip()]
    };
    gw.dial_addrs(flow, &addrs, started).await
}

/// Reads the client's first bytes into `buf` and says what they are.
async fn peek(s: &mut TcpStream, buf: &mut Vec<u8>, limits: &Limits) -> Peeked {
    let header_timeout = limits.header_timeout;
    let max_head = (limits.max_header_bytes as usize).max(1024);
    let mut chunk = [0u8; 4096];
    match tokio::time::timeout(FIRST_BYTES_WAIT, s.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
        _ => return Peeked::Other,
    }
    if buf.first() == Some(&0x16) {
        return match relay::read_hello(s, buf, header_timeout).await {
            Hello::ClientHello { sni } => Peeked::Tls(sni),
            Hello::Malformed(why) => Peeked::BadTls(why),
            Hello::NotTls | Hello::Incomplete(_) => Peeked::BadTls("not a ClientHello"),
        };
    }
    let deadline = tokio::time::Instant::now() + header_timeout;
    loop {
        match http_head(buf) {
            Some(p) => return p,
            None if buf.len() >= max_head => return judge::cut_head(buf),
            None => {}
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return judge::cut_head(buf),
        }
    }
}

/// Records a connection that never came through a redirect and resets it:
/// with `SO_LINGER` 0 the close sends a RST, so the client learns at once
/// that nothing is there instead of waiting on a connection that will
/// never carry anything.
fn not_redirected(gw: &Gateway, stream: TcpStream, mut flow: Flow, why: String) {
    let d = flow
        .policy()
        .invalid_destination(flow.src().ip(), None, String::new())
        .deny_with(ids::NOT_REDIRECTED, why);
    flow.apply(&d);
    gw.record(flow);
    if let Err(e) = stream.set_zero_linger() {
        tracing::debug!(error = %e, "SO_LINGER 0 on a not-redirected connection");
    }
    drop(stream);
}

/// Records a denial; plain HTTP clients get a `403` naming the rule.
async fn deny(gw: &Gateway, mut stream: TcpStream, mut flow: Flow, r: Refusal) {
    r.apply(&mut flow);
    if flow.protocol == Protocol::HttpTransparent {
        let body = format!(
            "Sluice denied this request.\nrule: {}\nreason: {}\nzone: {}\nrequest id: {}\n",
            flow.rule(),
            flow.reason(),
            flow.zone().unwrap_or("-"),
            flow.id()
        );
        let head = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\nSluice-Rule: {}\r\n\
             Sluice-Request-Id: {}\r\n\r\n",
            body.len(),
            clean(flow.rule()),
            flow.id()
        );
        let write = async {
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body.as_bytes()).await?;
            stream.shutdown().await
        };
        if tokio::time::timeout(Duration::from_secs(5), write)
            .await
            .is_ok_and(|r| r.is_ok())
        {
            flow.status = Some(403);
        }
    }
    gw.record(flow);
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(512)
        .collect()
}
