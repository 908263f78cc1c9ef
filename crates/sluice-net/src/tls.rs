//! Reading the server name (SNI) out of a TLS ClientHello without consuming
//! or terminating anything. Pure parsing over bytes already read, so it can
//! be fuzzed alone. Written by hand because it only needs one extension of
//! one message, and rustls does not expose a parser for a peeked hello.

/// What the first client bytes of a tunnel say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not TLS at all (first byte is not a handshake record).
    NotTls,
    /// More bytes are needed; at least this many in total.
    Incomplete(usize),
    /// A ClientHello, with its SNI host name if it carries one.
    ClientHello { sni: Option<String> },
    /// A TLS record that is not a well-formed ClientHello.
    Malformed(&'static str),
}

/// Largest ClientHello Sluice waits for (records may split it; real ones
/// with post-quantum key shares are under 4 KiB).
pub const MAX_HELLO: usize = 16 * 1024;

struct Cur<'a> {
    b: &'a [u8],
}

impl<'a> Cur<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&v, rest) = self.b.split_first()?;
        self.b = rest;
        Some(v)
    }
    fn u16(&mut self) -> Option<usize> {
        Some(usize::from(self.u8()?) << 8 | usize::from(self.u8()?))
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
}

/// Parses the handshake bytes carried by one or more TLS records at the
/// start of `buf`.
pub fn parse_client_hello(buf: &[u8]) -> Hello {
    if buf.is_empty() {
        return Hello::Incomplete(1);
    }
    if buf[0] != 0x16 {
        return Hello::NotTls;
    }
    // Reassemble the handshake message from consecutive records.
    let mut hs = Vec::new();
    let mut rest = buf;
    let mut need_total = None;
    loop {
        if rest.len() < 5 {
            return Hello::Incomplete(buf.len() - rest.len() + 5);
        }
        if rest[0] != 0x16 {
            return Hello::Malformed("handshake interrupted by another record type");
        }
        if rest[1] != 3 {
            return Hello::Malformed("unknown record version");
        }
        let len = usize::from(rest[3]) << 8 | usize::from(rest[4]);
        if len == 0 || len > 16384 + 2048 {
            return Hello::Malformed("bad record length");
        }
        let consumed = buf.len() - rest.len();
        if rest.len() < 5 + len {
            return Hello::Incomplete(consumed + 5 + len);
        }
        hs.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if need_total.is_none() && hs.len() >= 4 {
            if hs[0] != 1 {
                return Hello::Malformed("first handshake message is not a ClientHello");
            }
            let body = usize::from(hs[1]) << 16 | usize::from(hs[2]) << 8 | usize::from(hs[3]);
            if body + 4 > MAX_HELLO {
                return Hello::Malformed("ClientHello larger than 16 KiB");
            }
            need_total = Some(body + 4);
        }
        if let Some(total) = need_total {
            if hs.len() >= total {
                return parse_hello_body(&hs[4..total]);
            }
        }
        if rest.is_empty() {
            return Hello::Incomplete(buf.len() + 5);
        }
    }
}

fn parse_hello_body(b: &[u8]) -> Hello {
    parse_body(b).unwrap_or(Hello::Malformed("truncated ClientHello"))
}

fn parse_body(b: &[u8]) -> Option<Hello> {
    let mut c = Cur { b };
    c.take(2)?; // legacy_version
    c.take(32)?; // random
    let sid = usize::from(c.u8()?);
    c.take(sid)?;
    let suites = c.u16()?;
    c.take(suites)?;
    let comp = usize::from(c.u8()?);
    c.take(comp)?;
    if c.b.is_empty() {
        return Some(Hello::ClientHello { sni: None });
    }
    let ext_len = c.u16()?;
    let mut ext = Cur {
        b: c.take(ext_len)?,
    };
    let mut sni = None;
    while !ext.b.is_empty() {
        let ty = ext.u16()?;
        let len = ext.u16()?;
        let data = ext.take(len)?;
        if ty != 0 {
            continue;
        }
        if sni.is_some() {
            return Some(Hello::Malformed("duplicate server_name extension"));
        }
        let mut d = Cur { b: data };
        let list_len = d.u16()?;
        let mut list = Cur {
            b: d.take(list_len)?,
        };
        while !list.b.is_empty() {
            let name_type = list.u8()?;
            let n = list.u16()?;
            let name = list.take(n)?;
            if name_type == 0 {
                if sni.is_some() {
                    return Some(Hello::Malformed("more than one host name in server_name"));
                }
                match std::str::from_utf8(name) {
                    Ok(s) if !s.is_empty() => sni = Some(s.to_owned()),
                    _ => return Some(Hello::Malformed("server_name is not a valid host name")),
                }
            }
        }
    }
    Some(Hello::ClientHello { sni })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ClientHello record carrying `sni`.
    pub fn hello(sni: Option<&str>) -> Vec<u8> {
        let mut ext = Vec::new();
        if let Some(s) = sni {
            let n = s.len();
            ext.extend_from_slice(&[0, 0]);
            ext.extend_from_slice(&((n + 5) as u16).to_be_bytes());
            ext.extend_from_slice(&((n + 3) as u16).to_be_bytes());
            ext.push(0);
            ext.extend_from_slice(&(n as u16).to_be_bytes());
            ext.extend_from_slice(s.as_bytes());
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn sni_found() {
        let h = hello(Some("example.com"));
        assert_eq!(
            parse_client_hello(&h),
            Hello::ClientHello {
                sni: Some("example.com".into())
            }
        );
        assert_eq!(
            parse_client_hello(&hello(None)),
            Hello::ClientHello { sni: None }
        );
    }

    #[test]
    fn incomplete_and_split() {
        let h = hello(Some("example.com"));
        for cut in 1..h.len() {
            assert!(
                matches!(parse_client_hello(&h[..cut]), Hello::Incomplete(_)),
                "{cut}"
            );
        }
        // The same handshake split across two records.
        let hs = &h[5..];
        let (a, b) = hs.split_at(20);
        let mut two = vec![0x16, 3, 1, 0, a.len() as u8];
        two.extend_from_slice(a);
        two.extend_from_slice(&[0x16, 3, 1]);
        two.extend_from_slice(&(b.len() as u16).to_be_bytes());
        two.extend_from_slice(b);
        assert_eq!(
            parse_client_hello(&two),
            Hello::ClientHello {
                sni: Some("example.com".into())
            }
        );
    }

    #[test]
    fn not_tls_and_garbage() {
        assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert!(matches!(
            parse_client_hello(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0]),
            Hello::Malformed(_)
        ));
        assert!(matches!(
            parse_client_hello(&[0x16, 9, 1, 0, 4]),
            Hello::Malformed(_)
        ));
    }
}
