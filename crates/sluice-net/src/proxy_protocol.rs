//! PROXY protocol v1 and v2 headers (haproxy's `send-proxy` and
//! `send-proxy-v2`): a pure parser over the first bytes of a connection.
//!
//! [`parse`] never panics and never asks for more than a bounded number of
//! bytes: a v1 line is at most [`V1_MAX`] bytes, a v2 header is 16 bytes
//! plus a declared length of at most [`V2_MAX_BODY`]. The caller reads,
//! calls [`parse`], and on [`Parsed::Incomplete`] reads more (up to
//! [`MAX_HEADER`] bytes in all).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest v1 line, `\r\n` included (the specification's 107 bytes).
pub const V1_MAX: usize = 107;
/// The v2 signature: the first 12 bytes of every v2 header.
pub const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The largest v2 body (addresses and TLVs) accepted.
pub const V2_MAX_BODY: usize = 512;
/// The most bytes a header can take, either version.
pub const MAX_HEADER: usize = 16 + V2_MAX_BODY;

/// What the header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied connection: the client's address and the address it
    /// connected to.
    Proxy {
        /// The original client.
        src: SocketAddr,
        /// The address the client connected to.
        dst: SocketAddr,
    },
    /// v2 LOCAL or v1 `UNKNOWN` (health checks): use the real peer.
    Local,
}

/// The outcome of [`parse`] on the bytes read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header of `len` bytes; the bytes after it are the client's.
    Done {
        /// The header.
        header: Header,
        /// How many bytes the header took.
        len: usize,
    },
    /// Not enough bytes yet to decide; read more.
    Incomplete,
}

/// Why a header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Neither `PROXY ` nor the v2 signature.
    #[error("no PROXY protocol header")]
    Missing,
    /// A v1 line that is malformed or longer than 107 bytes.
    #[error("malformed PROXY protocol v1 header")]
    BadV1,
    /// A v2 header with a wrong version, command, family or length.
    #[error("malformed PROXY protocol v2 header")]
    BadV2,
    /// A v2 header declaring more than the cap.
    #[error("PROXY protocol v2 header too long")]
    TooLong,
}

/// Whether `buf` starts like a PROXY header (or could, being shorter than
/// a prefix of one): used to refuse headers from untrusted addresses.
pub fn looks_like_header(buf: &[u8]) -> bool {
    let v1 = b"PROXY ";
    let n1 = buf.len().min(v1.len());
    let n2 = buf.len().min(V2_SIG.len());
    !buf.is_empty() && (buf[..n1] == v1[..n1] || buf[..n2] == V2_SIG[..n2])
}

/// Parses a header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, Error> {
    if buf.starts_with(&V2_SIG) {
        return parse_v2(buf);
    }
    if buf.starts_with(b"PROXY ") {
        return parse_v1(buf);
    }
    if looks_like_header(buf) {
        return Ok(Parsed::Incomplete);
    }
    Err(Error::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, Error> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(Error::BadV1)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = std::str::from_utf8(&window[..cr]).map_err(|_| Error::BadV1)?;
    let len = cr + 2;
    let mut parts = line.split(' ');
    parts.next(); // "PROXY"
    let header = match parts.next() {
        Some("UNKNOWN") => Header::Local,
        Some(fam @ ("TCP4" | "TCP6")) => {
            let fields: Vec<&str> = parts.collect();
            let [s, d, sp, dp] = fields[..] else {
                return Err(Error::BadV1);
            };
            let s: IpAddr = s.parse().map_err(|_| Error::BadV1)?;
            let d: IpAddr = d.parse().map_err(|_| Error::BadV1)?;
            let v4 = fam == "TCP4";
            if s.is_ipv4() != v4 || d.is_ipv4() != v4 {
                return Err(Error::BadV1);
            }
            Header::Proxy {
                src: SocketAddr::new(s, port(sp)?),
                dst: SocketAddr::new(d, port(dp)?),
            }
        }
        _ => return Err(Error::BadV1),
    };
    Ok(Parsed::Done { header, len })
}

fn port(s: &str) -> Result<u16, Error> {
    // No sign, no leading zeros (the specification), at most 5 digits.
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::BadV1);
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(Error::BadV1);
    }
    s.parse().map_err(|_| Error::BadV1)
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, Error> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let ver_cmd = buf[12];
    let fam = buf[13];
    let body_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(Error::BadV2);
    }
    if body_len > V2_MAX_BODY {
        return Err(Error::TooLong);
    }
    let len = 16 + body_len;
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[16..len];
    let header = match ver_cmd & 0x0f {
        0 => Header::Local,
        1 => match fam {
            // TCP over IPv4
            0x11 if body.len() >= 12 => {
                let ip = |o: usize| Ipv4Addr::new(body[o], body[o + 1], body[o + 2], body[o + 3]);
                let p = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
                Header::Proxy {
                    src: SocketAddr::new(ip(0).into(), p(8)),
                    dst: SocketAddr::new(ip(4).into(), p(10)),
                }
            }
            // TCP over IPv6
            0x21 if body.len() >= 36 => {
                let ip = |o: usize| {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&body[o..o + 16]);
                    Ipv6Addr::from(a)
                };
                let p = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
                Header::Proxy {
                    src: SocketAddr::new(ip(0).into(), p(32)),
                    dst: SocketAddr::new(ip(16).into(), p(34)),
                }
            }
            // UNSPEC: the receiver uses the real peer.
            0x00 => Header::Local,
            _ => return Err(Error::BadV2),
        },
        _ => return Err(Error::BadV2),
    };
    Ok(Parsed::Done { header, len })
}

/// Why reading a header from a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes are not a valid header.
    #[error(transparent)]
    Header(#[from] Error),
    /// The connection failed or closed before a whole header.
    #[error("connection ended before a whole PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads exactly one header from `r`, never a byte past it (a v1 line a
/// byte at a time, a v2 header by its declared length), so the bytes after
/// it stay in the socket for the listener's protocol. At most
/// [`MAX_HEADER`] bytes are read. The caller bounds the time.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Header, ReadError> {
    let mut buf = Vec::with_capacity(V1_MAX);
    loop {
        let want = if buf.len() >= 16 && buf.starts_with(&V2_SIG) {
            // parse() already checked the declared length against the cap.
            16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]))
        } else {
            buf.len() + 1
        };
        let at = buf.len();
        buf.resize(want.min(MAX_HEADER), 0);
        r.read_exact(&mut buf[at..]).await?;
        if let Parsed::Done { header, .. } = parse(&buf)? {
            return Ok(header);
        }
        if buf.len() >= MAX_HEADER {
            return Err(Error::TooLong.into());
        }
    }
}

/// Whether the first bytes of a connection are a PROXY header's start
/// (`PROXY ` or the v2 signature): what an untrusted client is refused for.
pub fn starts_with_header(buf: &[u8]) -> bool {
    buf.starts_with(b"PROXY ") || buf.starts_with(&V2_SIG)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(buf: &[u8]) -> (Header, usize) {
        match parse(buf) {
            Ok(Parsed::Done { header, len }) => (header, len),
            other => panic!("expected a header, got {other:?}"),
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_tcp4() {
        let line = b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 8080\r\nGET / HTTP/1.1\r\n";
        let (h, len) = done(line);
        assert_eq!(
            h,
            Header::Proxy {
                src: sa("127.0.0.5:40000"),
                dst: sa("127.0.0.1:8080")
            }
        );
        assert_eq!(&line[len..len + 3], b"GET");
    }

    #[test]
    fn v1_tcp6() {
        let (h, _) = done(b"PROXY TCP6 ::1 fe80::2 1 65535\r\n");
        assert_eq!(
            h,
            Header::Proxy {
                src: sa("[::1]:1"),
                dst: sa("[fe80::2]:65535")
            }
        );
    }

    #[test]
    fn v1_unknown() {
        assert_eq!(done(b"PROXY UNKNOWN\r\n").0, Header::Local);
        assert_eq!(done(b"PROXY UNKNOWN ::1 ::1 1 2\r\n").0, Header::Local);
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"PROXY TCP4 127.0.0.1 127.0.0.1 1\r\n"[..],
            b"PROXY TCP4 ::1 127.0.0.1 1 2\r\n",
            b"PROXY TCP6 127.0.0.1 127.0.0.1 1 2\r\n",
            b"PROXY TCP4 127.0.0.1 127.0.0.1 1 65536\r\n",
            b"PROXY TCP4 127.0.0.1 127.0.0.1 01 2\r\n",
            b"PROXY TCP4 127.0.0.1 127.0.0.1 +1 2\r\n",
            b"PROXY UDP4 127.0.0.1 127.0.0.1 1 2\r\n",
            b"PROXY TCP4  127.0.0.1 127.0.0.1 1 2\r\n",
        ] {
            assert_eq!(
                parse(bad),
                Err(Error::BadV1),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'A'; 200]].concat();
        assert_eq!(parse(&long), Err(Error::BadV1));
    }

    #[test]
    fn truncated_is_incomplete() {
        assert_eq!(parse(b"PRO"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"PROXY TCP4 127.0.0.1"), Ok(Parsed::Incomplete));
        assert_eq!(parse(&V2_SIG[..5]), Ok(Parsed::Incomplete));
        let mut v2 = V2_SIG.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0]);
        assert_eq!(parse(&v2), Ok(Parsed::Incomplete));
    }

    #[test]
    fn missing() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Error::Missing));
        assert_eq!(parse(&[5, 1, 0]), Err(Error::Missing));
        assert!(!looks_like_header(b"GET "));
        assert!(looks_like_header(b"PROXY TCP4"));
        assert!(looks_like_header(&V2_SIG));
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIG.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn v2_proxy_ipv4_with_tlvs() {
        let mut body = vec![127, 0, 0, 5, 127, 0, 0, 1, 0x9c, 0x40, 0x1f, 0x90];
        body.extend_from_slice(&[0x04, 0, 1, 0]); // a NOOP TLV, skipped
        let mut buf = v2(1, 0x11, &body);
        buf.extend_from_slice(b"\x05\x01\x00");
        let (h, len) = done(&buf);
        assert_eq!(
            h,
            Header::Proxy {
                src: sa("127.0.0.5:40000"),
                dst: sa("127.0.0.1:8080")
            }
        );
        assert_eq!(&buf[len..], b"\x05\x01\x00");
    }

    #[test]
    fn v2_proxy_ipv6() {
        let mut body = vec![0u8; 36];
        body[15] = 1;
        body[31] = 2;
        body[32..34].copy_from_slice(&7u16.to_be_bytes());
        body[34..36].copy_from_slice(&9u16.to_be_bytes());
        let (h, len) = done(&v2(1, 0x21, &body));
        assert_eq!(
            h,
            Header::Proxy {
                src: sa("[::1]:7"),
                dst: sa("[::2]:9")
            }
        );
        assert_eq!(len, 52);
    }

    #[test]
    fn v2_local() {
        assert_eq!(done(&v2(0, 0x00, &[])).0, Header::Local);
        assert_eq!(done(&v2(0, 0x11, &[0; 12])).0, Header::Local);
    }

    #[test]
    fn v2_malformed() {
        assert_eq!(parse(&v2(1, 0x11, &[0; 4])), Err(Error::BadV2)); // short body
        assert_eq!(parse(&v2(1, 0x12, &[0; 12])), Err(Error::BadV2)); // UDP
        assert_eq!(parse(&v2(2, 0x11, &[0; 12])), Err(Error::BadV2)); // command
        let mut bad_ver = v2(1, 0x11, &[0; 12]);
        bad_ver[12] = 0x11;
        assert_eq!(parse(&bad_ver), Err(Error::BadV2));
        let mut long = V2_SIG.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&long), Err(Error::TooLong));
    }

    #[tokio::test]
    async fn read_header_stops_at_its_end() {
        let mut v1: &[u8] = b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 8080\r\nGET /";
        let h = read_header(&mut v1).await.unwrap();
        assert_eq!(
            h,
            Header::Proxy {
                src: sa("127.0.0.5:40000"),
                dst: sa("127.0.0.1:8080")
            }
        );
        assert_eq!(v1, b"GET /");
        let mut buf = v2(1, 0x11, &[127, 0, 0, 5, 127, 0, 0, 1, 0, 1, 0, 2]);
        buf.extend_from_slice(b"\x05\x01");
        let mut r = &buf[..];
        assert_eq!(
            read_header(&mut r).await.unwrap(),
            Header::Proxy {
                src: sa("127.0.0.5:1"),
                dst: sa("127.0.0.1:2")
            }
        );
        assert_eq!(r, b"\x05\x01");
        let mut plain: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(matches!(
            read_header(&mut plain).await,
            Err(ReadError::Header(Error::Missing))
        ));
        let mut short: &[u8] = b"PROXY TCP4 1.2.3.4";
        assert!(matches!(
            read_header(&mut short).await,
            Err(ReadError::Io(_))
        ));
    }

    #[test]
    fn never_panics_and_stays_bounded() {
        // A bounded deterministic fuzz (xorshift) over random and
        // header-prefixed inputs: no panic, and a header never claims
        // more bytes than it was given or than MAX_HEADER.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let n = (next() % 700) as usize;
            let prefix: &[u8] = match i % 3 {
                0 => &V2_SIG,
                1 => b"PROXY TCP4 ",
                _ => b"",
            };
            let mut buf = prefix.to_vec();
            buf.extend((0..n).map(|_| next() as u8));
            if let Ok(Parsed::Done { len, .. }) = parse(&buf) {
                assert!(len <= buf.len() && len <= MAX_HEADER);
            }
        }
    }
}
