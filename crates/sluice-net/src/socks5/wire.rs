//! SOCKS5 on the wire (RFC 1928, RFC 1929): pure parsers over bytes
//! (`parse_greeting`, `parse_auth`, `parse_request`, each returning a
//! [`Parsed`]), the method choice and the reply encoding, so that
//! `fuzz/fuzz_targets/socks5.rs` drives them without sockets.

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use crate::refusal::Refusal;

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

/// The reply for a refused request.
pub fn reply_for(r: &Refusal) -> Reply {
    match r {
        Refusal::Resolve { .. } => Reply::HostUnreachable,
        Refusal::Denied(_)
        | Refusal::Inspected { .. }
        | Refusal::Unscanned { .. }
        | Refusal::AuthRequired(_)
        | Refusal::AuthFailed { .. }
        | Refusal::InvalidDestination(_) => Reply::NotAllowed,
        Refusal::Timeout(_) | Refusal::NoResponse(_) => Reply::TtlExpired,
        Refusal::Connect { kind, .. } => match kind {
            io::ErrorKind::ConnectionRefused => Reply::ConnectionRefused,
            io::ErrorKind::HostUnreachable => Reply::HostUnreachable,
            io::ErrorKind::NetworkUnreachable => Reply::NetworkUnreachable,
            io::ErrorKind::TimedOut => Reply::TtlExpired,
            _ => Reply::GeneralFailure,
        },
        Refusal::BadRequest(_)
        | Refusal::UpstreamClosed(_)
        | Refusal::UpstreamCertificate(_)
        | Refusal::Draining
        | Refusal::Internal(_)
        | Refusal::NoDescriptors(_) => Reply::GeneralFailure,
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
    /// The command's name, for records and logs.
    pub fn name(self) -> String {
        match self {
            Command::Connect => "CONNECT".to_owned(),
            Command::Bind => "BIND".to_owned(),
            Command::UdpAssociate => "UDP ASSOCIATE".to_owned(),
            Command::Other(c) => format!("command {c:#04x}"),
        }
    }
}
