//! The transparent listener (`listen.transparent`, Linux): TCP connections
//! that an nftables `redirect` (iptables `REDIRECT`) on a gateway host sent
//! to Sluice without the client knowing. Nothing on the wire names a proxy,
//! so this module recovers what the client wanted and runs the shared
//! stages on it:
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
//! denied flows are closed. A ClientHello that is not well-formed is denied
//! in enforce mode (report and open zones judge it as `tcp`). Only the first
//! request of a plain HTTP connection is judged: later requests on it reach
//! the same, already checked, address.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use sluice_observe::{FlowRecord, Listener, Protocol};
use sluice_policy::{Decision, Destination, Mode, Pending, Policy, Request as PolicyRequest};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{Ctx, Grants, accept::accept_loop, limits::Slot, relay, sockopt, tls::Hello};

/// How long to wait for the client's first bytes before judging the flow as
/// `tcp` by its original destination: protocols where the server speaks
/// first (SMTP, FTP) pay this once per connection.
pub const FIRST_BYTES_WAIT: Duration = Duration::from_millis(1000);

/// Rule id for connections that reached the listener without a redirect.
pub const NOT_REDIRECTED_RULE: &str = "default/not-redirected";

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

/// Accepts redirected clients on `listener` until a drain begins.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>) {
    let handler_ctx = ctx.clone();
    accept_loop(listener, ctx, move |stream, peer, slot| {
        connection(handler_ctx.clone(), stream, peer, slot)
    })
    .await;
}

async fn connection(ctx: Arc<Ctx>, mut stream: TcpStream, peer: SocketAddr, slot: Arc<Slot>) {
    let _slot = slot;
    let _ = stream.set_nodelay(true);
    let mut rec = FlowRecord::new(
        Listener::Transparent,
        Protocol::Tcp,
        peer,
        SystemTime::now(),
    );
    let version = ctx.current.load_full();
    let policy = &version.policy;

    // Identify: where was the client going?
    let original = match sockopt::original_dst(&stream) {
        Ok(a) if Some(a) != stream.local_addr().ok() => a,
        Ok(_) => {
            return refuse(
                &ctx,
                rec,
                policy,
                peer,
                "not redirected: the client connected to the transparent listener itself".into(),
            );
        }
        Err(e) => {
            return refuse(
                &ctx,
                rec,
                policy,
                peer,
                format!("no original destination (SO_ORIGINAL_DST: {e}); not redirected?"),
            );
        }
    };
    rec.original_dst = Some(original.to_string());
    rec.dst_port = Some(original.port());

    // Peek.
    let mut first = Vec::with_capacity(2048);
    let peeked = peek(&mut stream, &mut first, &ctx).await;
    match &peeked {
        Peeked::Tls(sni) => rec.sni.clone_from(sni),
        Peeked::Http { method, .. } => rec.method = Some(method.clone()),
        _ => {}
    }

    // Decide.
    let t0 = Instant::now();
    let judged = judge(
        policy,
        ctx.grants().map(|g| &**g),
        peer.ip(),
        original,
        &peeked,
    );
    ctx.metrics.observe_decision(t0.elapsed());
    rec.protocol = judged.protocol;
    rec.grant.clone_from(&judged.grant);
    match &judged.dest {
        Destination::Name(n) => rec.dst_host = Some(n.clone()),
        Destination::Ip(ip) => rec.dst_ip = Some(sluice_observe::ip_string(*ip)),
    }
    rec.apply_decision(&judged.decision);
    let mut note = judged.note.clone();
    let is_http = judged.protocol == Protocol::HttpTransparent;
    if !judged.decision.passes() && judged.decision.pending == Pending::Nothing {
        add_note(&mut rec, note.as_deref());
        return deny(&ctx, stream, rec, is_http).await;
    }

    // Dial.
    let started = Instant::now();
    let port = original.port();
    let addrs = if judged.resolve {
        match ctx.dialer.resolve(&judged.dest).await {
            Ok(addrs) => {
                let (order, among) = prefer(addrs, original.ip());
                if !among {
                    note = Some(format!(
                        "original destination {} is not among the addresses of {}; dialed the name's own",
                        original.ip(),
                        judged.dest
                    ));
                }
                order
            }
            Err(e) => {
                e.apply_to(&mut rec);
                return ctx.emit(rec);
            }
        }
    } else {
        vec![original.ip()]
    };
    let dialed = match ctx
        .dialer
        .dial_addrs(policy, &judged.decision, &addrs, port, started)
        .await
    {
        Ok(d) => d,
        Err(e) => {
            e.apply_to(&mut rec);
            add_note(&mut rec, note.as_deref());
            let denied = matches!(e, crate::dial::DialError::Denied(_));
            if denied {
                return deny(&ctx, stream, rec, is_http).await;
            }
            return ctx.emit(rec);
        }
    };
    ctx.metrics.observe_connect(dialed.elapsed);
    rec.apply_decision(&dialed.decision);
    add_note(&mut rec, note.as_deref());
    rec.dst_ip = Some(sluice_observe::ip_string(dialed.peer.ip()));

    // Relay and record.
    let _gauge = ctx.metrics.active_tunnel(Listener::Transparent);
    let r = relay::relay(
        stream,
        dialed.stream,
        &first,
        None,
        ctx.limits.idle_timeout,
        ctx.limits.header_timeout,
        ctx.drain().stopped(),
    )
    .await;
    rec.bytes_out = r.bytes_out;
    rec.bytes_in = r.bytes_in;
    rec.error = r.error;
    ctx.emit(rec);
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
fn prefer(mut addrs: Vec<IpAddr>, original: IpAddr) -> (Vec<IpAddr>, bool) {
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
fn host_of(value: &str) -> Option<&str> {
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

fn add_note(rec: &mut FlowRecord, note: Option<&str>) {
    if let Some(n) = note {
        rec.reason = if rec.reason.is_empty() {
            n.to_owned()
        } else {
            format!("{}; {n}", rec.reason)
        };
    }
}

/// Reads the client's first bytes into `buf` and says what they are.
async fn peek(s: &mut TcpStream, buf: &mut Vec<u8>, ctx: &Ctx) -> Peeked {
    let header_timeout = ctx.limits.header_timeout;
    let max_head = (ctx.limits.max_header_bytes as usize).max(1024);
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
            None if buf.len() >= max_head => return cut_head(buf),
            None => {}
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return cut_head(buf),
        }
    }
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
fn cut_head(buf: &[u8]) -> Peeked {
    match method_of(buf) {
        Some(Some(method)) => Peeked::Http { method, host: None },
        _ => Peeked::Other,
    }
}

/// Records a connection that never came through a redirect and closes it.
fn refuse(ctx: &Ctx, mut rec: FlowRecord, policy: &Policy, peer: SocketAddr, why: String) {
    let d = policy.invalid_destination(peer.ip(), None, why);
    rec.apply_decision(&d);
    rec.rule = NOT_REDIRECTED_RULE.to_owned();
    ctx.emit(rec);
}

/// Records a denial; plain HTTP clients get a `403` naming the rule.
async fn deny(ctx: &Ctx, mut stream: TcpStream, mut rec: FlowRecord, http: bool) {
    if http {
        let body = format!(
            "Sluice denied this request.\nrule: {}\nreason: {}\nzone: {}\nrequest id: {}\n",
            rec.rule,
            rec.reason,
            rec.zone.as_deref().unwrap_or("-"),
            rec.id()
        );
        let head = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\nSluice-Rule: {}\r\n\
             Sluice-Request-Id: {}\r\n\r\n",
            body.len(),
            clean(&rec.rule),
            rec.id()
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
            rec.status = Some(403);
        }
    }
    ctx.emit(rec);
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

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "
zones:
  - name: lan
    sources: [192.0.2.0/24]
    allow:
      - host: allowed.example
        ports: [443, 80]
        id: allowed-name
      - cidr: 203.0.113.0/24
        ports: [7000]
        id: raw
    deny:
      - host: denied.example
        id: denied-name
  - name: lab
    sources: [198.18.0.0/24]
    mode: report
";

    fn policy() -> Policy {
        Policy::load(POLICY, "test.yaml").unwrap()
    }

    fn src() -> IpAddr {
        "192.0.2.7".parse().unwrap()
    }

    fn to(a: &str) -> SocketAddr {
        a.parse().unwrap()
    }

    struct FakeGrants;

    impl Grants for FakeGrants {
        fn lookup(&self, zone: &str, ip: IpAddr) -> Option<String> {
            (zone == "lan" && ip == "93.184.215.14".parse::<IpAddr>().unwrap())
                .then(|| "allowed.example".to_owned())
        }
    }

    #[test]
    fn sni_names_the_flow() {
        let j = judge(
            &policy(),
            None,
            src(),
            to("203.0.113.9:443"),
            &Peeked::Tls(Some("Allowed.Example.".into())),
        );
        assert_eq!(j.protocol, Protocol::Tls);
        assert_eq!(j.dest, Destination::Name("allowed.example".into()));
        assert!(j.resolve);
        assert_eq!(&*j.decision.rule, "allowed-name");
        let j = judge(
            &policy(),
            None,
            src(),
            to("203.0.113.9:443"),
            &Peeked::Tls(Some("denied.example".into())),
        );
        assert!(!j.decision.passes());
        assert_eq!(&*j.decision.rule, "denied-name");
    }

    #[test]
    fn no_sni_or_ip_sni_is_judged_by_the_original_destination() {
        for p in [
            Peeked::Tls(None),
            Peeked::Tls(Some("203.0.113.9".into())),
            Peeked::Other,
            Peeked::Http {
                method: "GET".into(),
                host: None,
            },
        ] {
            let j = judge(&policy(), None, src(), to("203.0.113.9:7000"), &p);
            assert_eq!(
                j.dest,
                Destination::Ip("203.0.113.9".parse().unwrap()),
                "{p:?}"
            );
            assert!(!j.resolve);
            assert_eq!(&*j.decision.rule, "raw", "{p:?}");
        }
    }

    #[test]
    fn malformed_hello_is_denied_in_enforce_and_judged_as_tcp_in_report() {
        let p = Peeked::BadTls("bad record length");
        let j = judge(&policy(), None, src(), to("203.0.113.9:7000"), &p);
        assert!(!j.decision.passes());
        assert_eq!(&*j.decision.rule, "default/invalid-destination");
        assert!(
            j.decision
                .reason
                .contains("malformed TLS ClientHello: bad record length")
        );
        let j = judge(
            &policy(),
            None,
            "198.18.0.5".parse().unwrap(),
            // A public address: the guard is enforced in report mode too.
            to("93.184.215.14:7000"),
            &p,
        );
        assert!(j.decision.passes());
        assert!(j.note.unwrap().contains("malformed"));
    }

    #[test]
    fn http_host_names_the_flow() {
        let p = Peeked::Http {
            method: "GET".into(),
            host: Some("allowed.example:80".into()),
        };
        let j = judge(&policy(), None, src(), to("203.0.113.9:80"), &p);
        assert_eq!(j.protocol, Protocol::HttpTransparent);
        assert_eq!(j.dest, Destination::Name("allowed.example".into()));
        assert_eq!(&*j.decision.rule, "allowed-name");
    }

    #[test]
    fn a_grant_names_a_tcp_flow() {
        let g = FakeGrants;
        let j = judge(
            &policy(),
            Some(&g),
            src(),
            to("93.184.215.14:443"),
            &Peeked::Other,
        );
        assert_eq!(j.grant.as_deref(), Some("allowed.example"));
        assert_eq!(j.dest, Destination::Name("allowed.example".into()));
        assert!(!j.resolve, "a granted flow dials the granted address only");
        assert_eq!(&*j.decision.rule, "allowed-name");
        // Without the grant the same flow is judged by its address: denied.
        let j = judge(
            &policy(),
            None,
            src(),
            to("93.184.215.14:443"),
            &Peeked::Other,
        );
        assert_eq!(j.grant, None);
        assert!(!j.decision.passes());
        // A grant for another address does not apply.
        let j = judge(
            &policy(),
            Some(&g),
            src(),
            to("93.184.215.15:443"),
            &Peeked::Other,
        );
        assert_eq!(j.grant, None);
    }

    #[test]
    fn http_heads() {
        assert_eq!(http_head(b"GE"), None);
        assert_eq!(http_head(b"GET / HTTP/1.1\r\nHost: a"), None);
        assert_eq!(
            http_head(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"),
            Some(Peeked::Http {
                method: "GET".into(),
                host: Some("a.example".into())
            })
        );
        assert_eq!(
            http_head(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Some(Peeked::Http {
                method: "GET".into(),
                host: None
            })
        );
        assert_eq!(http_head(b"SSH-2.0-OpenSSH\r\n"), Some(Peeked::Other));
        assert_eq!(http_head(b"\x00\x01"), Some(Peeked::Other));
        assert_eq!(
            http_head(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
            Some(Peeked::Other)
        );
    }

    #[test]
    fn host_values() {
        assert_eq!(host_of("a.example"), Some("a.example"));
        assert_eq!(host_of("a.example:8080"), Some("a.example"));
        assert_eq!(host_of("[2001:db8::1]:80"), Some("[2001:db8::1]"));
        assert_eq!(host_of("[2001:db8::1]"), Some("[2001:db8::1]"));
        assert_eq!(host_of("a:b:c"), None);
        assert_eq!(host_of("a.example:x"), None);
        assert_eq!(host_of(""), None);
    }

    #[test]
    fn the_original_destination_is_preferred_among_the_names_addresses() {
        let v: Vec<IpAddr> = ["203.0.113.1", "203.0.113.2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let (o, among) = prefer(v.clone(), "203.0.113.2".parse().unwrap());
        assert!(among);
        assert_eq!(o[0], v[1]);
        let (o, among) = prefer(v.clone(), "::ffff:203.0.113.1".parse().unwrap());
        assert!(among);
        assert_eq!(o[0], v[0]);
        let (o, among) = prefer(v.clone(), "198.51.100.1".parse().unwrap());
        assert!(!among);
        assert_eq!(o, v);
    }
}
