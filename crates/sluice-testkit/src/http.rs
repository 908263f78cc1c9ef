//! Raw HTTP/1.1 over blocking sockets, every read and write bounded: one
//! request written as is, one response read without interpretation, CONNECT
//! tunnels. Raw on purpose: the tests send what no well-behaved client
//! library would (malformed heads, smuggling shapes) and must see exactly
//! what came back. Not for anything a real client (curl, requests) covers
//! better: see `clients`.

use std::{net::SocketAddr, time::Duration};

/// One HTTP/1.1 response as read off a socket, without interpretation.
#[derive(Debug, Clone, Default)]
pub struct RawResponse {
    /// The status code; `None` when the peer closed (or went silent) before
    /// a complete status line and header block.
    pub status: Option<u16>,
    /// Header fields, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (by Content-Length, chunked, or up to the close).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response from `s`, leaving the stream positioned after it (so a
/// CONNECT tunnel or a keep-alive connection stays usable). `no_body` is for
/// answers to CONNECT and HEAD: a 2xx then carries no body. Reads are bounded
/// by the stream's read timeout (set one) and the head by 256 KiB.
pub fn read_response(s: &mut std::net::TcpStream, no_body: bool) -> RawResponse {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 256 * 1024 || !matches!(s.read(&mut byte), Ok(1)) {
            return RawResponse::default();
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse::<u16>().ok());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut r = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let code = status.unwrap_or(0);
    if (no_body && (200..300).contains(&code)) || code < 200 || code == 204 || code == 304 {
        return r;
    }
    if let Some(n) = r
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut body = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match s.read(&mut body[got..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => got += k,
            }
        }
        body.truncate(got);
        r.body = body;
    } else if r
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        r.body = read_chunked(s);
    } else {
        let _ = s.take(16 * 1024 * 1024).read_to_end(&mut r.body);
    }
    r
}

fn read_chunked(s: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        line.clear();
        while !line.ends_with(b"\r\n") {
            if line.len() > 1024 || !matches!(s.read(&mut byte), Ok(1)) {
                return out;
            }
            line.push(byte[0]);
        }
        let size = String::from_utf8_lossy(&line);
        let size = size.trim().split(';').next().unwrap_or("");
        let Ok(n) = usize::from_str_radix(size, 16) else {
            return out;
        };
        let mut chunk = vec![0u8; n + 2];
        if s.read_exact(&mut chunk).is_err() {
            return out;
        }
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Connects to `addr` with read and write timeouts of `timeout`.
pub fn connect_with_timeout(addr: SocketAddr, timeout: Duration) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect_timeout(&addr, timeout)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    s
}

/// Connects to `addr`, writes `request` as is, and reads one response (all
/// bounded by `timeout`). A write that fails because the peer already
/// answered and closed is not an error: the answer is still read.
pub fn send_raw(addr: SocketAddr, request: &[u8], timeout: Duration) -> RawResponse {
    use std::io::Write;
    let mut s = connect_with_timeout(addr, timeout);
    let _ = s.write_all(request);
    let no_body = request.starts_with(b"CONNECT ") || request.starts_with(b"HEAD ");
    read_response(&mut s, no_body)
}

/// Asks `proxy` for a CONNECT tunnel to `authority` (`host:port`). Returns
/// the open tunnel after a 200, or the refusal.
pub fn connect_tunnel(
    proxy: SocketAddr,
    authority: &str,
    timeout: Duration,
) -> Result<std::net::TcpStream, RawResponse> {
    use std::io::Write;
    let mut s = connect_with_timeout(proxy, timeout);
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    let _ = s.write_all(req.as_bytes());
    let r = read_response(&mut s, true);
    if r.status == Some(200) { Ok(s) } else { Err(r) }
}

/// Sends `GET path HTTP/1.1` with `Connection: close` on `s` (an open
/// tunnel or a direct connection) and reads the response.
pub fn get_on(s: &mut std::net::TcpStream, host: &str, path: &str) -> RawResponse {
    use std::io::Write;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return RawResponse::default();
    }
    read_response(s, false)
}

/// An absolute-form `GET url` through `proxy` on a fresh connection, with
/// `Connection: close` (10 s bound).
pub fn get_via(proxy: SocketAddr, url: &str) -> RawResponse {
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    let req = format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    send_raw(proxy, req.as_bytes(), Duration::from_secs(10))
}

/// [`get_via`] from a chosen loopback source address (`127.0.0.x`), so that
/// one test can be many clients: zones and partitions see each as its own
/// source. IPv4 proxies only.
pub fn get_via_from(src: std::net::Ipv4Addr, proxy: SocketAddr, url: &str) -> RawResponse {
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    let req = format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    send_from(src, proxy, req.as_bytes())
}

/// An absolute-form `POST url` of `body` bytes through `proxy` from a
/// chosen loopback source address, on a fresh connection (an upload: the
/// body is the flow's `bytes_out`). IPv4 proxies only; 10 s bound.
pub fn post_via_from(
    src: std::net::Ipv4Addr,
    proxy: SocketAddr,
    url: &str,
    body: usize,
) -> RawResponse {
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    let mut req = format!(
        "POST {url} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {body}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    req.resize(req.len() + body, b'u');
    send_from(src, proxy, &req)
}

/// Connects to `proxy` from `src`, writes `request`, reads one response.
fn send_from(src: std::net::Ipv4Addr, proxy: SocketAddr, request: &[u8]) -> RawResponse {
    use std::{io::Write, os::fd::AsRawFd};

    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let SocketAddr::V4(to) = proxy else {
        panic!("a request from {src} needs an IPv4 proxy address, not {proxy}")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let [a, b, c, d] = src.octets();
    bind(fd.as_raw_fd(), &SockaddrIn::new(a, b, c, d, 0)).unwrap();
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).unwrap();
    let mut s = std::net::TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    read_response(&mut s, false)
}
