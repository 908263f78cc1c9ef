//! CONNECT without hyper's connection machinery: the first head of a new
//! client connection is read here; a plain `CONNECT host:port HTTP/1.1` is
//! answered here and its tunnel spawned as a task of its own, and
//! everything else (other methods, HTTP/1.0, a head with a body's framing,
//! anything httparse or `http` rejects, a head past
//! `limits.max_header_bytes`, a timeout, a drain) goes to hyper exactly as
//! before, with the bytes read so far handed over through
//! [`Timed`](crate::timed::Timed).
//!
//! Why: with hyper, a tunnel costs a dispatcher, an upgrade (a oneshot
//! channel and a boxed socket) and hyper's buffers and its second read of
//! the client socket. Measured with `bench/ab-tunnels.sh` and
//! `bench/client.py idle`: the figures are in bench/README.md ("A/B of
//! the performance changes").
//!
//! Nothing the slow path checks is skipped: the same `prepare` (admit,
//! framing rules, the one target parser, identify, decide), `dial`,
//! `Refusal` answers (the same `answer` module, written by
//! [`write_answer`]), the same `Gateway::tunnel` (inspectors, TLS
//! interception, `require_tls`, interim records, routes) and records. The
//! PROXY protocol header was read before (`Gateway::proxied_client`).

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, Request, Response, Version, header};
use sluice_observe::{ErrorKind, Listener, Protocol};
use sluice_serve::Slot;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::{Instant, timeout_at},
};

use super::{ProxyBody, answer};
use crate::{Gateway, flow::Flow, refusal::Refusal};

/// The first read's buffer: a CONNECT head from curl is ~110 bytes, a
/// browser's ~300; it grows up to `limits.max_header_bytes`.
const FIRST_READ: usize = 1024;

/// Header slots for httparse: more headers than this go to hyper (which
/// allows 128), so a long head is judged by the same parser as before.
const HEADERS: usize = 32;

/// What the first bytes of a connection were. Not boxed: a value moved
/// once per connection, where a box would be one allocation more per tunnel.
#[allow(clippy::large_enum_variant)]
pub(super) enum First {
    /// A complete CONNECT head the fast path serves.
    Connect(Head),
    /// Anything else: hyper's, with these bytes already read.
    Hyper(Bytes),
}

/// A parsed CONNECT head, and the bytes read with it.
pub(super) struct Head {
    req: Request<()>,
    buf: Vec<u8>,
    /// Where the head ends in `buf` (after it: the client's first tunnel
    /// bytes, sent without waiting for the answer).
    len: usize,
}

/// Reads the first head of a connection accepted at `started`, until it is
/// a complete CONNECT head or plainly something for hyper.
pub(super) async fn first_head(gw: &Gateway, stream: &mut TcpStream, started: Instant) -> First {
    let limits = gw.limits();
    let max = limits.max_header_bytes as usize;
    let deadline = started + limits.header_timeout;
    let began = gw.drain().began();
    tokio::pin!(began);
    let mut buf = Vec::with_capacity(FIRST_READ);
    loop {
        // Through `poll_read`, not `try_read_buf`: a read that does not
        // fill the buffer (the whole head, as a rule) clears the socket's
        // readiness, so the tunnel's first read of the client waits for
        // its bytes instead of trying at once and failing with EAGAIN
        // (the client sends them only after the `200`): one `recvfrom`
        // fewer per tunnel (`perf stat` on `sys_exit_recvfrom`,
        // bench/README.md; `strace` hides it by slowing Sluice down).
        let read = stream.read_buf(&mut buf);
        // A drain, a timeout, an error or the end of the stream: hyper's
        // (with `Timed` at the same deadline), so the outcome is the one it
        // always was.
        let n = tokio::select! {
            biased;
            () = &mut began => 0,
            r = timeout_at(deadline, read) => r.ok().and_then(Result::ok).unwrap_or(0),
        };
        if n == 0 {
            return First::Hyper(buf.into());
        }
        match parse(&buf, max) {
            Parsed::Connect(req, len) => return First::Connect(Head { req, buf, len }),
            Parsed::Partial if buf.len() <= max => buf.reserve(FIRST_READ),
            Parsed::Partial | Parsed::Other => return First::Hyper(buf.into()),
        }
    }
}

#[allow(clippy::large_enum_variant)] // As `First`.
enum Parsed {
    Connect(Request<()>, usize),
    Partial,
    Other,
}

/// A CONNECT head the fast path may serve; `Other` for anything hyper
/// should see.
fn parse(buf: &[u8], max: usize) -> Parsed {
    const PREFIX: &[u8] = b"CONNECT ";
    let k = buf.len().min(PREFIX.len());
    if buf[..k] != PREFIX[..k] {
        return Parsed::Other;
    }
    let mut headers = [httparse::EMPTY_HEADER; HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let len = match head.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= max => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // Too long, too many headers, malformed: hyper answers as before.
        _ => return Parsed::Other,
    };
    if head.version != Some(1) {
        return Parsed::Other;
    }
    let Some(target) = head.path else {
        return Parsed::Other;
    };
    // hyper builds the request from the same httparse output with the same
    // `http` types; what they reject, hyper rejects too (400).
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(target)
        .version(Version::HTTP_11);
    for h in head.headers.iter() {
        // A body's framing on a CONNECT is refused; hyper's parser first
        // judges the values (and hides a length sent with an encoding), so
        // such heads keep taking the slow path and its `HeadScan`.
        if h.name.eq_ignore_ascii_case("content-length")
            || h.name.eq_ignore_ascii_case("transfer-encoding")
        {
            return Parsed::Other;
        }
        req = req.header(h.name, h.value);
    }
    match req.body(()) {
        Ok(req) => Parsed::Connect(req, len),
        Err(_) => Parsed::Other,
    }
}

/// Serves one CONNECT through the stages: answered `200` and relayed here,
/// or refused. Gives the socket back (with the bytes after the head) when
/// the connection goes on with hyper: a refusal that keeps it alive.
pub(super) async fn serve(
    gw: Arc<Gateway>,
    mut stream: TcpStream,
    peer: SocketAddr,
    slot: Arc<Slot>,
    head: Head,
) -> Option<(TcpStream, Bytes)> {
    let Head { req, buf, len } = head;
    // Boxed: the stages before the tunnel (identify, decide, dial) have
    // large futures; inline, they would size this task for the tunnel's
    // whole life (measured: 22.5 against 9.2 KiB per idle tunnel).
    let (flow, refusal) = match Box::pin(stages(&gw, peer, &req)).await {
        Ok((mut flow, upstream)) => {
            flow.status = Some(200);
            if write_ok(&mut stream, flow.id()).await.is_err() {
                // The client left before its tunnel began (hyper's path
                // records this as a failed upgrade).
                flow.error = Some("upgrade failed".into());
                flow.error_kind = Some(ErrorKind::Client);
                gw.record(flow);
                return None;
            }
            // Only the client's early bytes outlive the head: an idle
            // tunnel holds no read buffer.
            let early = buf[len..].to_vec();
            drop((buf, req));
            gw.spawn_tunnel(flow, stream, upstream, early, true, slot);
            return None;
        }
        Err(refused) => refused,
    };
    let resp = super::refused(&gw, flow, refusal);
    let close = resp
        .headers()
        .get(header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
        || wants_close(&req);
    if write_answer(&mut stream, resp, close).await.is_err() || close {
        let _ = stream.shutdown().await;
        return None;
    }
    Some((stream, Bytes::copy_from_slice(&buf[len..])))
}

/// The stages before the tunnel, as hyper's path runs them: a dialed
/// flow, or the flow and why it was refused.
async fn stages(
    gw: &Gateway,
    peer: SocketAddr,
    req: &Request<()>,
) -> Result<(Flow, TcpStream), (Flow, Refusal)> {
    let mut flow = gw.start(Listener::Http, Protocol::Connect, peer);
    flow.method = Some(Method::CONNECT.as_str().to_owned());
    if let Err(r) = super::prepare(gw, &mut flow, req, true, false).await {
        return Err((flow, r));
    }
    match gw.dial(&mut flow).await {
        Ok(upstream) => Ok((flow, upstream)),
        Err(r) => Err((flow, r)),
    }
}

/// Whether the request's `Connection` header asks to close after the
/// answer.
fn wants_close(req: &Request<()>) -> bool {
    req.headers()
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}

/// Writes the `200` that opens a tunnel, byte for byte what
/// [`write_answer`] writes for it (status line, `sluice-request-id`,
/// `date`), without building a `Response`: no header map, header value or
/// date string is allocated per tunnel (`bench/README.md`, "Allocations
/// per tunnel").
async fn write_ok(stream: &mut TcpStream, id: &str) -> std::io::Result<()> {
    use std::io::Write;
    // Status line, the id (a flow id: ~26 ASCII characters), the date
    // (29): well under the 256 bytes, which a longer id may outgrow.
    let mut out = [0u8; 256];
    let mut w = std::io::Cursor::new(&mut out[..]);
    let written = (|| {
        std::io::Write::write_all(&mut w, b"HTTP/1.1 200 OK\r\n")?;
        // `id_header`'s rule (visible ASCII or tab, not empty) without
        // its allocation.
        if !id.is_empty() && id.bytes().all(|b| b == b'\t' || (32..127).contains(&b)) {
            write!(w, "{}: {id}\r\n", answer::REQUEST_ID)?;
        }
        let date = httpdate::HttpDate::from(std::time::SystemTime::now());
        write!(w, "date: {date}\r\n\r\n")
    })();
    if written.is_err() {
        // Too long for the buffer: the general path.
        let mut ok = Response::new(answer::empty());
        answer::add_id(&mut ok, id);
        return write_answer(stream, ok, false).await;
    }
    let n = usize::try_from(w.position()).unwrap_or(0);
    stream.write_all(&out[..n]).await
}

/// Writes an answer as hyper would: status line, headers, `date`, and
/// the body with its `content-length` (none on a `2xx` to CONNECT, which
/// has no body: RFC 9110 §9.3.6); `connection: close` when `close`.
async fn write_answer(
    stream: &mut TcpStream,
    resp: Response<ProxyBody>,
    close: bool,
) -> std::io::Result<()> {
    let (parts, body) = resp.into_parts();
    // Every answer's body is a `Full` (answer.rs): this never waits.
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let status = parts.status;
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close && !parts.headers.contains_key(header::CONNECTION) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !status.is_success() {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&body);
    stream.write_all(&out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(buf: &[u8]) -> &'static str {
        match parse(buf, 8192) {
            Parsed::Connect(..) => "connect",
            Parsed::Partial => "partial",
            Parsed::Other => "other",
        }
    }

    #[test]
    fn only_plain_http11_connect_heads_take_the_fast_path() {
        assert_eq!(
            kind(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n"),
            "connect"
        );
        assert_eq!(kind(b"CONN"), "partial");
        assert_eq!(kind(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a"), "partial");
        assert_eq!(kind(b"GET http://a.test/ HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(kind(b"G"), "other");
        assert_eq!(kind(b"connect a.test:443 HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(kind(b"CONNECT a.test:443 HTTP/1.0\r\n\r\n"), "other");
        assert_eq!(
            kind(b"CONNECT a.test:443 HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            "other"
        );
        assert_eq!(
            kind(b"CONNECT a.test:443 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"),
            "other"
        );
        assert_eq!(kind(b"CONNECT a test:443 HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(kind(b"CONNECT \x01:443 HTTP/1.1\r\n\r\n"), "other");
        // Past the size bound: hyper's 431.
        let long = format!(
            "CONNECT a.test:443 HTTP/1.1\r\nX: {}\r\n\r\n",
            "y".repeat(9000)
        );
        assert_eq!(kind(long.as_bytes()), "other");
        // More headers than the fast path's slots: hyper's.
        let many: String = (0..40).map(|i| format!("X-{i}: 1\r\n")).collect();
        let head = format!("CONNECT a.test:443 HTTP/1.1\r\n{many}\r\n");
        assert_eq!(kind(head.as_bytes()), "other");
    }

    /// The tunnel's `200` is the bytes the general answer writer writes
    /// for it (the dates aside), for a flow id and for an id the header
    /// could not carry.
    #[tokio::test]
    async fn the_ok_answer_is_the_general_writers_200() {
        async fn written(id: &str, general: bool) -> String {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (mut s, _) = l.accept().await.unwrap();
            if general {
                let mut ok = Response::new(answer::empty());
                answer::add_id(&mut ok, id);
                write_answer(&mut s, ok, false).await.unwrap();
            } else {
                write_ok(&mut s, id).await.unwrap();
            }
            drop(s);
            let mut got = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut c, &mut got)
                .await
                .unwrap();
            let at = got.find("date: ").unwrap();
            got.replace_range(at + 6..at + 6 + 29, "DATE");
            got
        }
        for id in [
            "01JEXAMPLE0000000000000000",
            "",
            "bad\nid",
            &"y".repeat(300),
        ] {
            assert_eq!(written(id, false).await, written(id, true).await, "{id:?}");
        }
        assert_eq!(
            written("f1", false).await,
            "HTTP/1.1 200 OK\r\nsluice-request-id: f1\r\ndate: DATE\r\n\r\n"
        );
    }

    #[test]
    fn connection_close_is_a_token_of_the_header() {
        let req = |v: &str| {
            Request::builder()
                .method(Method::CONNECT)
                .uri("a.test:443")
                .header("connection", v)
                .body(())
                .unwrap()
        };
        assert!(wants_close(&req("close")));
        assert!(wants_close(&req("keep-alive, Close")));
        assert!(!wants_close(&req("keep-alive")));
    }
}
