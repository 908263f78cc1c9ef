//! The SOCKS5 proxy: RFC 1928 CONNECT with RFC 1929 user/password
//! authentication. BIND and UDP ASSOCIATE are answered "command not
//! supported". This module parses SOCKS and maps the shared stages'
//! outcomes to SOCKS replies; it does not decide, dial, relay or record on
//! its own.
//!
//! Parsing is pure (`parse_greeting`, `parse_auth`, `parse_request`,
//! `choose_method`, `reply_for` over bytes and values) so that
//! `fuzz/fuzz_targets/socks5.rs` drives it without sockets. One connection:
//!
//! 1. greeting — choose a method: user/password when the client offers it
//!    and some zone names users (or it offers nothing else); else no
//!    authentication, unless no zone matches this source without a user
//!    while user zones exist: then only user/password is acceptable and a
//!    client without it gets `0xFF`;
//! 2. identify — RFC 1929 credentials through the shared `Authenticator`
//!    (same cache as proxy auth); wrong ones get status 1 and the close;
//! 3. decide — the policy's first phase on the normalised destination
//!    (`0x02` for a final denial; a name without a host rule is judged on
//!    its addresses, as in the HTTP proxy);
//! 4. dial — resolve once, check every address, connect: `0x02` denied,
//!    `0x04` resolution failed or no route, `0x03` network unreachable,
//!    `0x05` refused, `0x06` connect timeout, `0x01` otherwise;
//! 5. relay — with the domain-fronting check on the first client bytes;
//! 6. record — one flow record per request (`listener`/`protocol` `socks5`).
//!
//! The whole handshake (greeting, credentials, request) must arrive within
//! `limits.header_timeout`, and every message is bounded by its format (at
//! most `MAX_MESSAGE` bytes), so a client cannot make Sluice wait or buffer
//! more. Malformed or truncated handshakes are closed, at most with the
//! reply the RFC has for them.

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use sluice_observe::{FlowRecord, Listener, Protocol};
use sluice_policy::{Destination, Pending, Request as PolicyRequest, ids};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{
    Ctx, auth::AuthOutcome, dial::DialError, http::BAD_REQUEST_RULE, limits::Slot, relay, tunnel,
};

/// The protocol version byte of every SOCKS5 message.
pub const VERSION: u8 = 0x05;
/// The version byte of the RFC 1929 user/password sub-negotiation.
pub const AUTH_VERSION: u8 = 0x01;
/// Method: no authentication.
pub const NO_AUTH: u8 = 0x00;
/// Method: user/password (RFC 1929).
pub const USER_PASS: u8 = 0x02;
/// Method answer: none of the offered methods is acceptable.
pub const NO_ACCEPTABLE: u8 = 0xFF;
/// The longest handshake message (RFC 1929: 3 + 255 + 255 bytes).
pub const MAX_MESSAGE: usize = 513;

/// The methods a client offered in its greeting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Greeting {
    /// `0x00` was offered.
    pub no_auth: bool,
    /// `0x02` was offered.
    pub user_pass: bool,
}

/// RFC 1929 credentials, as the bytes sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub user: Vec<u8>,
    /// The password.
    pub pass: Vec<u8>,
}

/// A request's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `0x01` CONNECT: the only one Sluice serves.
    Connect,
    /// `0x02` BIND.
    Bind,
    /// `0x03` UDP ASSOCIATE.
    UdpAssociate,
    /// Anything else.
    Other(u8),
}

/// A request's destination address as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `0x01` IPv4 or `0x04` IPv6.
    Ip(IpAddr),
    /// `0x03` a domain name (1 to 255 bytes, not yet normalised).
    Domain(Vec<u8>),
}

/// One SOCKS5 request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocksRequest {
    /// What the client asks for.
    pub command: Command,
    /// Where to.
    pub address: Address,
    /// The destination port.
    pub port: u16,
}

/// Why handshake bytes are not SOCKS5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The version byte is not 5.
    #[error("version byte {0:#04x}, not SOCKS5")]
    Version(u8),
    /// The greeting offers no methods.
    #[error("greeting offers no authentication methods")]
    NoMethods,
    /// The credentials message's version byte is not 1.
    #[error("user/password version byte {0:#04x}, not 1")]
    AuthVersion(u8),
    /// The address type is not IPv4, domain or IPv6.
    #[error("address type {0:#04x} is not IPv4, domain name or IPv6")]
    AddressType(u8),
    /// A domain name of length 0.
    #[error("domain name of length 0")]
    EmptyDomain,
}

/// A message parsed from the front of a buffer: `Ok(Some((value, bytes
/// used)))`, `Ok(None)` while more bytes are needed, or why it is malformed.
pub type Parsed<T> = Result<Option<(T, usize)>, Malformed>;

/// Reply codes (RFC 1928 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// `0x00`.
    Succeeded,
    /// `0x01` general SOCKS server failure.
    GeneralFailure,
    /// `0x02` connection not allowed by ruleset.
    NotAllowed,
    /// `0x03` network unreachable.
    NetworkUnreachable,
    /// `0x04` host unreachable.
    HostUnreachable,
    /// `0x05` connection refused.
    ConnectionRefused,
    /// `0x06` TTL expired (Sluice: connect timeout).
    TtlExpired,
    /// `0x07` command not supported.
    CommandNotSupported,
    /// `0x08` address type not supported.
    AddressTypeNotSupported,
}

// === parsing (pure) ===

/// Parses a greeting: `VER NMETHODS METHODS…`.
pub fn parse_greeting(b: &[u8]) -> Parsed<Greeting> {
    let Some(&ver) = b.first() else {
        return Ok(None);
    };
    if ver != VERSION {
        return Err(Malformed::Version(ver));
    }
    let Some(&n) = b.get(1) else {
        return Ok(None);
    };
    if n == 0 {
        return Err(Malformed::NoMethods);
    }
    let end = 2 + usize::from(n);
    let Some(methods) = b.get(2..end) else {
        return Ok(None);
    };
    let g = Greeting {
        no_auth: methods.contains(&NO_AUTH),
        user_pass: methods.contains(&USER_PASS),
    };
    Ok(Some((g, end)))
}

/// Parses RFC 1929 credentials: `VER ULEN UNAME PLEN PASSWD`.
pub fn parse_auth(b: &[u8]) -> Parsed<Credentials> {
    let Some(&ver) = b.first() else {
        return Ok(None);
    };
    if ver != AUTH_VERSION {
        return Err(Malformed::AuthVersion(ver));
    }
    let Some(&ulen) = b.get(1) else {
        return Ok(None);
    };
    let u_end = 2 + usize::from(ulen);
    let Some(user) = b.get(2..u_end) else {
        return Ok(None);
    };
    let Some(&plen) = b.get(u_end) else {
        return Ok(None);
    };
    let end = u_end + 1 + usize::from(plen);
    let Some(pass) = b.get(u_end + 1..end) else {
        return Ok(None);
    };
    let c = Credentials {
        user: user.to_vec(),
        pass: pass.to_vec(),
    };
    Ok(Some((c, end)))
}

/// Parses a request: `VER CMD RSV ATYP DST.ADDR DST.PORT`. The reserved
/// byte is not checked (RFC 1928 gives it no meaning).
pub fn parse_request(b: &[u8]) -> Parsed<SocksRequest> {
    let Some(&ver) = b.first() else {
        return Ok(None);
    };
    if ver != VERSION {
        return Err(Malformed::Version(ver));
    }
    let (Some(&cmd), Some(_rsv), Some(&atyp)) = (b.get(1), b.get(2), b.get(3)) else {
        return Ok(None);
    };
    let command = match cmd {
        0x01 => Command::Connect,
        0x02 => Command::Bind,
        0x03 => Command::UdpAssociate,
        other => Command::Other(other),
    };
    let (address, port_at) = match atyp {
        0x01 => {
            let Some(a) = b.get(4..8).and_then(|s| <[u8; 4]>::try_from(s).ok()) else {
                return Ok(None);
            };
            (Address::Ip(IpAddr::V4(Ipv4Addr::from(a))), 8)
        }
        0x04 => {
            let Some(a) = b.get(4..20).and_then(|s| <[u8; 16]>::try_from(s).ok()) else {
                return Ok(None);
            };
            (Address::Ip(IpAddr::V6(Ipv6Addr::from(a))), 20)
        }
        0x03 => {
            let Some(&len) = b.get(4) else {
                return Ok(None);
            };
            if len == 0 {
                return Err(Malformed::EmptyDomain);
            }
            let end = 5 + usize::from(len);
            let Some(name) = b.get(5..end) else {
                return Ok(None);
            };
            (Address::Domain(name.to_vec()), end)
        }
        other => return Err(Malformed::AddressType(other)),
    };
    let Some(p) = b.get(port_at..port_at + 2) else {
        return Ok(None);
    };
    let port = u16::from_be_bytes([p[0], p[1]]);
    let r = SocksRequest {
        command,
        address,
        port,
    };
    Ok(Some((r, port_at + 2)))
}

/// The method to answer a greeting with. `user_zones`: some zone names
/// users; `zone_without_user`: a zone matches this source without a user.
/// Credentials are taken whenever they can select a zone or the client
/// offers nothing else; without them, a source that only a user could place
/// in a zone is refused (`NO_ACCEPTABLE`), as the HTTP proxy answers 407.
pub fn choose_method(offered: Greeting, user_zones: bool, zone_without_user: bool) -> u8 {
    if offered.user_pass && (user_zones || !offered.no_auth) {
        USER_PASS
    } else if offered.no_auth && (zone_without_user || !user_zones) {
        NO_AUTH
    } else {
        NO_ACCEPTABLE
    }
}

/// A reply: `VER REP RSV ATYP BND.ADDR BND.PORT`.
pub fn encode_reply(reply: Reply, bound: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(22);
    out.extend_from_slice(&[VERSION, reply.code(), 0x00]);
    match bound.ip() {
        IpAddr::V4(v4) => {
            out.push(0x01);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(0x04);
            out.extend_from_slice(&v6.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    out
}

/// The reply for a failed dial.
pub fn reply_for(e: &DialError) -> Reply {
    match e {
        DialError::Resolve { .. } => Reply::HostUnreachable,
        DialError::Denied(_) => Reply::NotAllowed,
        DialError::Timeout(..) => Reply::TtlExpired,
        DialError::Connect { kind, .. } => match kind {
            io::ErrorKind::ConnectionRefused => Reply::ConnectionRefused,
            io::ErrorKind::HostUnreachable => Reply::HostUnreachable,
            io::ErrorKind::NetworkUnreachable => Reply::NetworkUnreachable,
            io::ErrorKind::TimedOut => Reply::TtlExpired,
            _ => Reply::GeneralFailure,
        },
    }
}

// === impl Reply ===

impl Reply {
    /// The reply byte.
    pub fn code(self) -> u8 {
        match self {
            Reply::Succeeded => 0x00,
            Reply::GeneralFailure => 0x01,
            Reply::NotAllowed => 0x02,
            Reply::NetworkUnreachable => 0x03,
            Reply::HostUnreachable => 0x04,
            Reply::ConnectionRefused => 0x05,
            Reply::TtlExpired => 0x06,
            Reply::CommandNotSupported => 0x07,
            Reply::AddressTypeNotSupported => 0x08,
        }
    }
}

// === impl Credentials ===

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &String::from_utf8_lossy(&self.user))
            .field("pass", &"<redacted>")
            .finish()
    }
}

// === impl Command ===

impl Command {
    fn name(self) -> String {
        match self {
            Command::Connect => "CONNECT".to_owned(),
            Command::Bind => "BIND".to_owned(),
            Command::UdpAssociate => "UDP ASSOCIATE".to_owned(),
            Command::Other(c) => format!("command {c:#04x}"),
        }
    }
}

// === I/O ===

/// Accepts SOCKS5 clients on `listener` until a drain begins.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>) {
    let conn_ctx = ctx.clone();
    crate::accept::accept_loop(listener, ctx, move |stream, peer, slot| {
        connection(conn_ctx.clone(), stream, peer, slot)
    })
    .await;
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

fn closed(peer: SocketAddr, stage: &str, e: &ReadError) {
    tracing::debug!(%peer, stage, error = %e, "SOCKS5 handshake ended");
}

async fn connection(ctx: Arc<Ctx>, stream: TcpStream, peer: SocketAddr, slot: Arc<Slot>) {
    let _slot = slot;
    let _ = stream.set_nodelay(true);
    let mut rec = FlowRecord::new(Listener::Socks5, Protocol::Socks5, peer, SystemTime::now());
    let mut hs = Handshake::new(stream, ctx.limits.header_timeout);
    let version = ctx.current.load_full();
    let policy = &version.policy;

    // 1. Greeting.
    let greeting = match hs.next(parse_greeting).await {
        Ok(g) => g,
        Err(e) => {
            if matches!(e, ReadError::Malformed(Malformed::NoMethods)) {
                let _ = hs.send(&[VERSION, NO_ACCEPTABLE]).await;
            }
            return closed(peer, "greeting", &e);
        }
    };
    let user_zones = policy.has_user_zones();
    let method = choose_method(
        greeting,
        user_zones,
        policy.zone_of(peer.ip(), None).is_some(),
    );
    if let Err(e) = hs.send(&[VERSION, method]).await {
        return closed(peer, "method", &e);
    }
    if method == NO_ACCEPTABLE {
        // Recorded like the HTTP proxy's 407: who was turned away, and why.
        let reason = if greeting.no_auth {
            format!(
                "source {} matches no zone without credentials; authenticate (user/password)",
                peer.ip()
            )
        } else {
            "no supported authentication method offered (no-auth, user/password)".to_owned()
        };
        let d = policy
            .invalid_destination(peer.ip(), None, String::new())
            .deny_with(ids::NO_ZONE, reason);
        rec.apply_decision(&d);
        rec.zone = None;
        rec.mode = None;
        return ctx.emit(rec);
    }

    // 2. Identify.
    let user = if method == USER_PASS {
        let creds = match hs.next(parse_auth).await {
            Ok(c) => c,
            Err(e) => return closed(peer, "credentials", &e),
        };
        let outcome = match (String::from_utf8(creds.user), String::from_utf8(creds.pass)) {
            (Ok(u), Ok(p)) => ctx.auth.verify(&version.users, &u, &p).await,
            // No configured user name or argon2 hash input is anything else.
            _ => AuthOutcome::Failed,
        };
        match outcome {
            AuthOutcome::User(u) => {
                if let Err(e) = hs.send(&[AUTH_VERSION, 0x00]).await {
                    return closed(peer, "credentials", &e);
                }
                Some(u)
            }
            AuthOutcome::Missing | AuthOutcome::Malformed | AuthOutcome::Failed => {
                let _ = hs.send(&[AUTH_VERSION, 0x01]).await;
                let d = policy
                    .invalid_destination(peer.ip(), None, String::new())
                    .deny_with(ids::NO_ZONE, "proxy authentication failed");
                rec.apply_decision(&d);
                rec.zone = None;
                rec.mode = None;
                return ctx.emit(rec);
            }
        }
    } else {
        None
    };
    rec.user = user.clone();

    // 3. Request.
    let req = match hs.next(parse_request).await {
        Ok(r) => r,
        Err(ReadError::Malformed(m)) => {
            hs.reply(match m {
                Malformed::AddressType(_) => Reply::AddressTypeNotSupported,
                _ => Reply::GeneralFailure,
            })
            .await;
            return bad_request(&ctx, rec, &m.to_string());
        }
        Err(e) => return closed(peer, "request", &e),
    };
    rec.dst_port = Some(req.port);
    match &req.address {
        Address::Ip(ip) => rec.dst_ip = Some(sluice_observe::ip_string(*ip)),
        Address::Domain(d) => rec.dst_host = Some(String::from_utf8_lossy(d).into_owned()),
    }
    if req.command != Command::Connect {
        hs.reply(Reply::CommandNotSupported).await;
        let why = format!(
            "SOCKS5 {} is not supported; only CONNECT",
            req.command.name()
        );
        return bad_request(&ctx, rec, &why);
    }
    if req.port == 0 {
        hs.reply(Reply::GeneralFailure).await;
        return bad_request(&ctx, rec, "port 0 is not a destination");
    }
    if ctx.drain().is_draining() {
        hs.reply(Reply::GeneralFailure).await;
        rec.error = Some("draining".into());
        return ctx.emit(rec);
    }
    let dest = match &req.address {
        Address::Ip(ip) => Ok(Destination::Ip(*ip)),
        Address::Domain(d) => match std::str::from_utf8(d) {
            Ok(name) => Destination::parse(name).map_err(|e| e.to_string()),
            Err(_) => Err("the domain name is not UTF-8".to_owned()),
        },
    };
    let dest = match dest {
        Ok(d) => d,
        Err(e) => {
            let d = policy.invalid_destination(
                peer.ip(),
                user.as_deref(),
                format!("invalid destination: {e}"),
            );
            rec.apply_decision(&d);
            hs.reply(Reply::HostUnreachable).await;
            return ctx.emit(rec);
        }
    };
    match &dest {
        Destination::Name(n) => rec.dst_host = Some(n.clone()),
        Destination::Ip(ip) => {
            rec.dst_host = None;
            rec.dst_ip = Some(sluice_observe::ip_string(*ip));
        }
    }
    let port = req.port;

    // 4. Decide.
    let t0 = Instant::now();
    let decision = policy.decide(&PolicyRequest {
        src: peer.ip(),
        user: user.as_deref(),
        dest: &dest,
        port,
    });
    ctx.metrics.observe_decision(t0.elapsed());
    rec.apply_decision(&decision);
    // Only a final denial is answered before resolution (DESIGN.md, two phases).
    if decision.auth_required || (!decision.passes() && decision.pending == Pending::Nothing) {
        hs.reply(Reply::NotAllowed).await;
        return ctx.emit(rec);
    }

    // 5. Dial.
    let dialed = match ctx.dial(policy, &decision, &dest, port).await {
        Ok(d) => d,
        Err(e) => {
            hs.reply(reply_for(&e)).await;
            e.apply_to(&mut rec);
            return ctx.emit(rec);
        }
    };
    rec.apply_decision(&dialed.decision);
    rec.dst_ip = Some(sluice_observe::ip_string(dialed.peer.ip()));
    let bound = dialed
        .stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    if let Err(e) = hs.send(&encode_reply(Reply::Succeeded, bound)).await {
        rec.error = Some(format!("client gone before the reply: {e}"));
        return ctx.emit(rec);
    }

    // 6. Relay, then record.
    let _gauge = ctx.metrics.active_tunnel(Listener::Socks5);
    let check = tunnel::sni_check(policy.clone(), &dest, port, dialed.peer, peer.ip(), user);
    let r = relay::relay(
        hs.stream,
        dialed.stream,
        &hs.buf,
        check,
        ctx.limits.idle_timeout,
        ctx.limits.header_timeout,
        ctx.drain().stopped(),
    )
    .await;
    tunnel::apply_relayed(&mut rec, r);
    ctx.emit(rec);
}

/// Records a request refused before any policy decision.
fn bad_request(ctx: &Ctx, mut rec: FlowRecord, why: &str) {
    rec.error = Some(why.to_owned());
    rec.rule = BAD_REQUEST_RULE.to_owned();
    rec.reason = why.to_owned();
    ctx.emit(rec);
}

#[cfg(test)]
mod tests {
    use sluice_policy::Policy;

    use super::*;

    #[test]
    fn greeting() {
        assert_eq!(parse_greeting(&[]), Ok(None));
        assert_eq!(parse_greeting(&[5]), Ok(None));
        assert_eq!(parse_greeting(&[5, 2, 0]), Ok(None));
        assert_eq!(
            parse_greeting(&[5, 2, 0, 2, 9]),
            Ok(Some((
                Greeting {
                    no_auth: true,
                    user_pass: true
                },
                4
            )))
        );
        assert_eq!(
            parse_greeting(&[5, 1, 1]),
            Ok(Some((Greeting::default(), 3)))
        );
        assert_eq!(parse_greeting(&[4, 1, 0]), Err(Malformed::Version(4)));
        assert_eq!(
            parse_greeting(b"GET / HTTP/1.1"),
            Err(Malformed::Version(b'G'))
        );
        assert_eq!(parse_greeting(&[5, 0]), Err(Malformed::NoMethods));
        // 255 methods: the longest greeting.
        let mut long = vec![5, 255];
        long.extend(0..=254u8);
        assert_eq!(parse_greeting(&long).unwrap().unwrap().1, 257);
    }

    #[test]
    fn credentials() {
        let msg = [1, 2, b'c', b'i', 3, b'p', b'w', b'd', 0xAA];
        let (c, n) = parse_auth(&msg).unwrap().unwrap();
        assert_eq!(
            (c.user.as_slice(), c.pass.as_slice(), n),
            (&b"ci"[..], &b"pwd"[..], 8)
        );
        assert!(!format!("{c:?}").contains("pwd"));
        for cut in 0..8 {
            assert_eq!(parse_auth(&msg[..cut]), Ok(None), "prefix {cut}");
        }
        assert_eq!(parse_auth(&[5, 1, 0]), Err(Malformed::AuthVersion(5)));
        // Empty name and password parse (and then fail verification).
        assert_eq!(parse_auth(&[1, 0, 0]).unwrap().unwrap().1, 3);
    }

    #[test]
    fn requests() {
        let v4 = [5, 1, 0, 1, 93, 184, 216, 34, 1, 187];
        assert_eq!(
            parse_request(&v4),
            Ok(Some((
                SocksRequest {
                    command: Command::Connect,
                    address: Address::Ip("93.184.216.34".parse().unwrap()),
                    port: 443
                },
                10
            )))
        );
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[0, 80]);
        let (r, n) = parse_request(&v6).unwrap().unwrap();
        assert_eq!(
            (r.address, r.port, n),
            (Address::Ip("2001:db8::1".parse().unwrap()), 80, 22)
        );
        let mut name = vec![5, 3, 0, 3, 11];
        name.extend_from_slice(b"example.com");
        name.extend_from_slice(&[0x1f, 0x90]);
        let (r, n) = parse_request(&name).unwrap().unwrap();
        assert_eq!(r.command, Command::UdpAssociate);
        assert_eq!(
            (r.address, r.port, n),
            (Address::Domain(b"example.com".to_vec()), 8080, 18)
        );
        for msg in [&v4[..], &v6, &name] {
            for cut in 0..msg.len() {
                assert_eq!(
                    parse_request(&msg[..cut]),
                    Ok(None),
                    "prefix {cut} of {msg:?}"
                );
            }
        }
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 0, 0, 80]),
            Err(Malformed::EmptyDomain)
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 2, 1]),
            Err(Malformed::AddressType(2))
        );
        assert_eq!(parse_request(&[4, 1, 0, 1]), Err(Malformed::Version(4)));
        assert_eq!(
            parse_request(&[5, 2, 0, 1, 1, 2, 3, 4, 0, 1])
                .unwrap()
                .unwrap()
                .0
                .command,
            Command::Bind
        );
        assert_eq!(
            parse_request(&[5, 9, 0, 1, 1, 2, 3, 4, 0, 1])
                .unwrap()
                .unwrap()
                .0
                .command,
            Command::Other(9)
        );
    }

    #[test]
    fn method_choice() {
        let g = |no_auth, user_pass| Greeting { no_auth, user_pass };
        // (offered, user zones, zone without user) → answer
        let table = [
            (g(true, false), false, true, NO_AUTH),
            (g(true, false), false, false, NO_AUTH), // denied later: default/no-zone
            (g(true, true), false, true, NO_AUTH),
            (g(true, true), true, true, USER_PASS),
            (g(true, false), true, true, NO_AUTH),
            (g(true, false), true, false, NO_ACCEPTABLE),
            (g(false, true), true, false, USER_PASS),
            (g(false, true), false, true, USER_PASS),
            (g(false, false), false, true, NO_ACCEPTABLE),
        ];
        for (offered, uz, zw, want) in table {
            assert_eq!(
                choose_method(offered, uz, zw),
                want,
                "{offered:?} {uz} {zw}"
            );
        }
    }

    #[test]
    fn replies() {
        assert_eq!(
            encode_reply(Reply::Succeeded, "10.1.2.3:4660".parse().unwrap()),
            [5, 0, 0, 1, 10, 1, 2, 3, 0x12, 0x34]
        );
        let r = encode_reply(Reply::NotAllowed, "[::1]:1".parse().unwrap());
        assert_eq!((r.len(), r[1], r[3], r[19], r[21]), (22, 2, 4, 1, 1));
        let d = || {
            Box::new(
                Policy::load("zones: []\n", "t")
                    .unwrap()
                    .invalid_destination("127.0.0.1".parse().unwrap(), None, String::new()),
            )
        };
        let connect = |kind| DialError::Connect {
            addr: "192.0.2.1:1".parse().unwrap(),
            msg: String::new(),
            kind,
            decision: d(),
        };
        let table = [
            (
                DialError::Resolve {
                    host: "x".into(),
                    msg: String::new(),
                },
                4,
            ),
            (DialError::Denied(d()), 2),
            (DialError::Timeout(Duration::from_secs(1), d()), 6),
            (connect(io::ErrorKind::ConnectionRefused), 5),
            (connect(io::ErrorKind::HostUnreachable), 4),
            (connect(io::ErrorKind::NetworkUnreachable), 3),
            (connect(io::ErrorKind::PermissionDenied), 1),
        ];
        for (e, code) in table {
            assert_eq!(reply_for(&e).code(), code, "{e:?}");
        }
    }
}
