//! The SOCKS5 proxy: RFC 1928 CONNECT with RFC 1929 user/password
//! authentication. BIND and UDP ASSOCIATE are answered "command not
//! supported". This module is a protocol adapter over the [`Gateway`]: it
//! parses SOCKS (`wire`, pure and fuzzed) and maps the stages' outcomes to
//! SOCKS replies. One connection:
//!
//! 1. greeting — choose a method: user/password when the client offers it
//!    and some zone names users (or it offers nothing else); else no
//!    authentication, unless no zone matches this source without a user
//!    while user zones exist: then only user/password is acceptable and a
//!    client without it gets `0xFF`;
//! 2. identify — RFC 1929 credentials through the gateway (same cache as
//!    proxy auth); wrong ones get status 1 and the close;
//! 3. decide — the policy's first phase on the normalised destination
//!    (`0x02` for a final denial or an invalid name; a name without a host
//!    rule is judged on its addresses, as in the HTTP proxy);
//! 4. dial — resolve once, check every address, connect: `0x02` denied,
//!    `0x04` resolution failed or no route, `0x03` network unreachable,
//!    `0x05` refused, `0x06` connect timeout, `0x01` otherwise;
//! 5. tunnel — with the inspectors on the first client bytes;
//! 6. record — one flow record per request (`listener`/`protocol` `socks5`).
//!
//! The whole handshake (greeting, credentials, request) must arrive within
//! `limits.header_timeout`, and every message is bounded by its format (at
//! most `MAX_MESSAGE` bytes), so a client cannot make Sluice wait or buffer
//! more. Malformed or truncated handshakes are closed, at most with the
//! reply the RFC has for them.

mod wire;

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use sluice_observe::{ErrorKind, Listener, Protocol};
use sluice_policy::{Destination, ids};
use sluice_serve::Slot;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

pub use wire::*;

use crate::{Gateway, flow::Flow, refusal::Refusal};

/// Accepts SOCKS5 clients on `listener` until a drain begins (on every
/// core of `gw.cores()`, when it has them).
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>) {
    let (limiter, drain) = (gw.limiter().clone(), gw.drain().clone());
    let cores = gw.cores().cloned();
    let exhausted = gw.fd_exhausted_hook(Listener::Socks5);
    let nodelay = crate::sockopt::listener_nodelay(&listener);
    sluice_serve::run_tcp_cores(
        cores.as_deref(),
        listener,
        limiter,
        drain,
        exhausted,
        move |stream, peer, slot| connection(gw.clone(), stream, peer, slot, nodelay),
    )
    .await;
}

async fn connection(
    gw: Arc<Gateway>,
    mut stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<Slot>,
    nodelay_inherited: bool,
) {
    if !nodelay_inherited {
        let _ = stream.set_nodelay(true);
    }
    let (l, p) = (Listener::Socks5, Protocol::Socks5);
    let Some(peer) = gw.proxied_client(l, p, &mut stream, peer, true).await else {
        return;
    };
    let mut flow = gw.start(Listener::Socks5, Protocol::Socks5, peer);
    let mut hs = Handshake::new(stream, gw.limits().header_timeout);
    match negotiate(&gw, &mut hs, &mut flow).await {
        Ok(()) => {}
        Err(End::Closed(stage, e)) => {
            return tracing::debug!(%peer, stage, error = %e, "SOCKS5 handshake ended");
        }
        Err(End::Refused(r, reply)) => {
            if let Some(reply) = reply {
                hs.reply(reply).await;
            }
            return gw.refuse(flow, &r);
        }
    }
    let upstream = match gw.dial(&mut flow).await {
        Ok(s) => s,
        Err(r) => {
            hs.reply(reply_for(&r)).await;
            return gw.refuse(flow, &r);
        }
    };
    let bound = upstream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    if let Err(e) = hs.send(&encode_reply(Reply::Succeeded, bound)).await {
        flow.error = Some(format!("client gone before the reply: {e}"));
        flow.error_kind = Some(ErrorKind::Client);
        return gw.record(flow);
    }
    let Handshake { stream, buf, .. } = hs;
    gw.spawn_tunnel(flow, stream, upstream, buf, true, slot);
}

/// How a handshake ended early.
enum End {
    /// Closed without a record (truncated, timed out, not SOCKS).
    Closed(&'static str, ReadError),
    /// Refused: the reply to send (if any), and a record.
    Refused(Refusal, Option<Reply>),
}

/// Greeting, credentials, request and decision: everything before the dial.
async fn negotiate(gw: &Gateway, hs: &mut Handshake, flow: &mut Flow) -> Result<(), End> {
    if greet(hs, flow).await? == USER_PASS {
        login(gw, hs, flow).await?;
    }
    let req = match hs.next(parse_request).await {
        Ok(r) => r,
        Err(ReadError::Malformed(m)) => {
            let reply = match m {
                Malformed::AddressType(_) => Reply::AddressTypeNotSupported,
                _ => Reply::GeneralFailure,
            };
            return Err(End::Refused(
                Refusal::BadRequest(m.to_string()),
                Some(reply),
            ));
        }
        Err(e) => return Err(End::Closed("request", e)),
    };
    target(gw, flow, &req)?;
    gw.admit()
        .map_err(|r| End::Refused(r, Some(Reply::GeneralFailure)))?;
    gw.decide(flow)
        .map_err(|r| End::Refused(r, Some(Reply::NotAllowed)))
}

/// Reads the greeting and answers the method.
async fn greet(hs: &mut Handshake, flow: &mut Flow) -> Result<u8, End> {
    let greeting = match hs.next(parse_greeting).await {
        Ok(g) => g,
        Err(e) => {
            if matches!(e, ReadError::Malformed(Malformed::NoMethods)) {
                let _ = hs.send(&[VERSION, NO_ACCEPTABLE]).await;
            }
            return Err(End::Closed("greeting", e));
        }
    };
    let policy = flow.policy().clone();
    let src = flow.src().ip();
    let method = choose_method(
        greeting,
        policy.has_user_zones(),
        policy.zone_of(src, None).is_some(),
    );
    hs.send(&[VERSION, method])
        .await
        .map_err(|e| End::Closed("method", e))?;
    if method != NO_ACCEPTABLE {
        return Ok(method);
    }
    // Recorded like the HTTP proxy's 407: who was turned away, and why.
    let reason = if greeting.no_auth {
        format!("source {src} matches no zone without credentials; authenticate (user/password)")
    } else {
        "no supported authentication method offered (no-auth, user/password)".to_owned()
    };
    let d = policy
        .invalid_destination(src, None, String::new())
        .deny_with(ids::NO_ZONE, reason.clone());
    flow.apply(&d);
    flow.clear_zone();
    Err(End::Refused(Refusal::AuthRequired(reason), None))
}

/// RFC 1929: reads credentials and answers their status.
async fn login(gw: &Gateway, hs: &mut Handshake, flow: &mut Flow) -> Result<(), End> {
    let creds = hs
        .next(parse_auth)
        .await
        .map_err(|e| End::Closed("credentials", e))?;
    if let Err(r) = gw.identify_password(flow, &creds.user, &creds.pass).await {
        let _ = hs.send(&[AUTH_VERSION, 0x01]).await;
        return Err(End::Refused(r, None));
    }
    if flow.user.is_none() {
        // Credentials that name no user are a failed login, not "none".
        let _ = hs.send(&[AUTH_VERSION, 0x01]).await;
        let user = Some(String::from_utf8_lossy(&creds.user).into_owned());
        let r = Refusal::AuthFailed {
            user,
            retry_after: None,
        };
        return Err(End::Refused(r, None));
    }
    hs.send(&[AUTH_VERSION, 0x00])
        .await
        .map_err(|e| End::Closed("credentials", e))
}

/// The request's destination into the flow.
fn target(gw: &Gateway, flow: &mut Flow, req: &SocksRequest) -> Result<(), End> {
    flow.port = Some(req.port);
    match &req.address {
        Address::Ip(ip) => flow.dest = Some(Destination::Ip(*ip)),
        Address::Domain(d) => flow.raw_dest = Some(String::from_utf8_lossy(d).into_owned()),
    }
    if req.command != Command::Connect {
        let why = format!(
            "SOCKS5 {} is not supported; only CONNECT",
            req.command.name()
        );
        return Err(End::Refused(
            Refusal::BadRequest(why),
            Some(Reply::CommandNotSupported),
        ));
    }
    if req.port == 0 {
        let why = "port 0 is not a destination".to_owned();
        return Err(End::Refused(
            Refusal::BadRequest(why),
            Some(Reply::GeneralFailure),
        ));
    }
    let Address::Domain(d) = &req.address else {
        return Ok(());
    };
    let result = match std::str::from_utf8(d) {
        Ok(name) if !host_name_bytes(name) => Err(Refusal::InvalidDestination(format!(
            "`{}` is not a host name",
            name.escape_debug()
        ))),
        Ok(name) => gw.target(flow, name, req.port),
        Err(_) => Err(Refusal::InvalidDestination(
            "the domain name is not UTF-8".into(),
        )),
    };
    result.map_err(|r| {
        let reply = reply_for(&r);
        End::Refused(r, Some(reply))
    })
}

/// Whether a SOCKS5 domain name holds only what a host name (or an IP
/// literal sent as a name) may: no NUL, `/`, `%`, `@`, space, CR/LF or
/// embedded `:port`. Non-ASCII is left to IDNA. Without this, URL-style
/// decoding would turn `%2e` or `a@b` into some other host.
fn host_name_bytes(name: &str) -> bool {
    let literal = name.parse::<std::net::IpAddr>().is_ok()
        || name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .is_some_and(|n| n.parse::<std::net::Ipv6Addr>().is_ok());
    literal
        || name.bytes().all(|b| {
            !b.is_ascii() || b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'
        })
}

/// Why reading a handshake message stopped.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("client closed")]
    Closed,
    #[error("handshake timeout")]
    Timeout,
    #[error("{0}")]
    Io(io::Error),
    #[error("malformed: {0}")]
    Malformed(Malformed),
}

/// A client connection during the handshake: the stream, bytes read but
/// not yet parsed, and the handshake's deadline.
struct Handshake {
    stream: TcpStream,
    buf: Vec<u8>,
    deadline: tokio::time::Instant,
    timeout: Duration,
}

impl Handshake {
    fn new(stream: TcpStream, timeout: Duration) -> Handshake {
        Handshake {
            stream,
            buf: Vec::with_capacity(64),
            deadline: tokio::time::Instant::now() + timeout,
            timeout,
        }
    }

    /// Reads until `parse` completes a message, fails, or the deadline or
    /// the peer ends the handshake. Bytes after the message stay buffered.
    async fn next<T>(&mut self, parse: fn(&[u8]) -> Parsed<T>) -> Result<T, ReadError> {
        loop {
            match parse(&self.buf) {
                Ok(Some((v, used))) => {
                    self.buf.drain(..used);
                    return Ok(v);
                }
                Ok(None) => {}
                Err(m) => return Err(ReadError::Malformed(m)),
            }
            // A message is incomplete only while shorter than MAX_MESSAGE,
            // so this bounds the buffer; it cannot trigger.
            if self.buf.len() > MAX_MESSAGE {
                return Err(ReadError::Closed);
            }
            let mut chunk = [0u8; 1024];
            match tokio::time::timeout_at(self.deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(ReadError::Timeout),
                Ok(Ok(0)) => return Err(ReadError::Closed),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// Writes `bytes`, bounded by the handshake timeout.
    async fn send(&mut self, bytes: &[u8]) -> Result<(), ReadError> {
        match tokio::time::timeout(self.timeout, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ReadError::Io(e)),
            Err(_) => Err(ReadError::Timeout),
        }
    }

    async fn reply(&mut self, reply: Reply) {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let _ = self.send(&encode_reply(reply, unspecified)).await;
    }
}
