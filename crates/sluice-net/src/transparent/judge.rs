//! What a redirected flow is judged by, pure so that it is tested alone:
//! its first bytes classified ([`http_head`], a ClientHello by `tls`),
//! then phase one on the name they give, or on the original destination
//! (or the name a DNS-derived grant gives that address) — [`judge`].

use std::net::{IpAddr, SocketAddr};

use sluice_observe::Protocol;
use sluice_policy::{Decision, Destination, Mode, Policy, Request as PolicyRequest};

use crate::Grants;

/// Longest method token taken as the start of an HTTP request.
const MAX_METHOD: usize = 16;

/// What the client's first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    /// A complete ClientHello, with its SNI if it has one.
    Tls(Option<String>),
    /// A TLS handshake record that is not a usable ClientHello.
    BadTls(&'static str),
    /// An HTTP/1 request head (complete, or cut by the bounds: no `Host`).
    Http {
        /// The request method.
        method: String,
        /// The `Host` header, if the head was complete and had one.
        host: Option<String>,
    },
    /// Anything else, or nothing within [`FIRST_BYTES_WAIT`].
    Other,
}

/// What the flow is judged by and where it may be dialed.
#[derive(Debug, Clone)]
pub struct Judged {
    /// What it spoke.
    pub protocol: Protocol,
    /// Judged by this destination: the name from SNI, `Host` or a grant, or
    /// the original destination's address.
    pub dest: Destination,
    /// Phase one's decision.
    pub decision: Decision,
    /// Dial the name's resolution (true) or the original address (false).
    pub resolve: bool,
    /// The DNS-derived grant that named the address.
    pub grant: Option<String>,
    /// A note for the record's reason (why the flow fell back to `tcp`).
    pub note: Option<String>,
}

/// Phase one for a redirected flow: pure, so that it can be tested alone.
pub fn judge(
    policy: &Policy,
    grants: Option<&dyn Grants>,
    src: IpAddr,
    original: SocketAddr,
    peeked: &Peeked,
) -> Judged {
    let port = original.port();
    let (protocol, named) = match peeked {
        Peeked::Tls(Some(sni)) => (
            Protocol::Tls,
            Destination::parse(sni).map_err(|e| format!("unusable TLS SNI: {e}")),
        ),
        Peeked::Tls(None) => (Protocol::Tls, Ok(Destination::Ip(original.ip()))),
        Peeked::BadTls(why) => (
            Protocol::Tls,
            Err(format!("malformed TLS ClientHello: {why}")),
        ),
        Peeked::Http {
            host: Some(host), ..
        } => (
            Protocol::HttpTransparent,
            host_of(host)
                .ok_or_else(|| format!("invalid Host header `{}`", host.escape_debug()))
                .and_then(|h| {
                    Destination::parse(h).map_err(|e| format!("invalid Host header: {e}"))
                }),
        ),
        Peeked::Http { host: None, .. } => (
            Protocol::HttpTransparent,
            Ok(Destination::Ip(original.ip())),
        ),
        Peeked::Other => (Protocol::Tcp, Ok(Destination::Ip(original.ip()))),
    };
    let mut note = None;
    let named = match named {
        Ok(d) => d,
        Err(why) => {
            let d = policy.invalid_destination(src, None, why.clone());
            // Enforce mode (or no zone) denies what cannot be read; report
            // and open zones judge it by the original destination instead.
            if !matches!(d.mode, Some(Mode::Report | Mode::Open)) {
                return Judged {
                    protocol,
                    dest: Destination::Ip(original.ip()),
                    decision: d,
                    resolve: false,
                    grant: None,
                    note: None,
                };
            }
            note = Some(format!("{why}; judged by the original destination"));
            Destination::Ip(original.ip())
        }
    };
    let (dest, resolve, grant) = match named {
        Destination::Name(n) => (Destination::Name(n), true, None),
        Destination::Ip(_) => {
            // Judged as `tcp`: by the original destination, or by the name a
            // DNS-derived grant gave this zone for that address.
            let ip = original.ip();
            let granted = policy
                .zone_of(src, None)
                .and_then(|z| grants?.lookup(z, ip.to_canonical()))
                .and_then(|n| match Destination::parse(&n) {
                    Ok(Destination::Name(n)) => Some(n),
                    _ => None,
                });
            match granted {
                Some(n) => (Destination::Name(n.clone()), false, Some(n)),
                None => (Destination::Ip(ip), false, None),
            }
        }
    };
    let decision = policy.decide(&PolicyRequest {
        src,
        user: None,
        dest: &dest,
        port,
    });
    Judged {
        protocol,
        dest,
        decision,
        resolve,
        grant,
        note,
    }
}

/// The name's addresses with the original destination first when it is one
/// of them (the client's own choice among equals), and whether it was.
pub fn prefer(mut addrs: Vec<IpAddr>, original: IpAddr) -> (Vec<IpAddr>, bool) {
    let original = original.to_canonical();
    match addrs.iter().position(|a| a.to_canonical() == original) {
        Some(i) => {
            let a = addrs.remove(i);
            addrs.insert(0, a);
            (addrs, true)
        }
        None => (addrs, false),
    }
}

/// The host of a `Host` header value (`name`, `name:port`, `[v6]:port`).
pub fn host_of(value: &str) -> Option<&str> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if let Some(rest) = v.strip_prefix('[') {
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return Some(&v[..end + 2]);
    }
    match v.rsplit_once(':') {
        Some((h, p)) if is_port(p) && !h.contains(':') => Some(h),
        Some(_) => None,
        None => Some(v),
    }
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// Classifies bytes that do not start a TLS record: `None` while an HTTP
/// request head may still be arriving.
pub fn http_head(buf: &[u8]) -> Option<Peeked> {
    let method = match method_of(buf) {
        Some(Some(m)) => m,
        Some(None) => return Some(Peeked::Other),
        None => return None,
    };
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => None,
        Ok(httparse::Status::Complete(_)) => {
            let mut hosts = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("host"));
            let host = match (hosts.next(), hosts.next()) {
                // Two Host headers name no single destination.
                (Some(h), None) => std::str::from_utf8(h.value).ok().map(str::to_owned),
                _ => None,
            };
            Some(Peeked::Http { method, host })
        }
        Err(_) => Some(Peeked::Http { method, host: None }),
    }
}

/// The HTTP method at the start of `buf`: `Some(Some(m))` for a method
/// token followed by a space, `Some(None)` for anything else, `None` while
/// too few bytes have arrived to tell.
fn method_of(buf: &[u8]) -> Option<Option<String>> {
    for (i, &b) in buf.iter().enumerate().take(MAX_METHOD + 1) {
        if b == b' ' {
            return Some((i >= 3).then(|| String::from_utf8_lossy(&buf[..i]).into_owned()));
        }
        if !b.is_ascii_uppercase() {
            return Some(None);
        }
    }
    if buf.len() > MAX_METHOD {
        Some(None)
    } else {
        None
    }
}

/// A head cut by the size or time bound, or by the client's close.
pub(super) fn cut_head(buf: &[u8]) -> Peeked {
    match method_of(buf) {
        Some(Some(method)) => Peeked::Http { method, host: None },
        _ => Peeked::Other,
    }
}
