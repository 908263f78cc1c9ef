//! An ICAP client (RFC 3507) for `REQMOD` and `RESPMOD`: the HTTP head(s)
//! and the body encapsulated, `Allow: 204`, a `Preview` of the body's
//! first bytes (`ieof` when the preview is the whole body), the rest sent
//! after `100 Continue`, every exchange under one deadline, and a small
//! pool of idle connections per service.
//!
//! The verdict is [`IcapVerdict::Unmodified`] (`204 No Content`) or
//! [`IcapVerdict::Modified`] (`200 OK`: the service rewrote the message
//! or answered in its place — a block page). The rewritten message is not
//! read further: the connection is closed.

use std::{sync::Mutex, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

/// The longest ICAP response head read.
const MAX_HEAD: usize = 64 * 1024;

/// Idle connections kept per service.
const POOL: usize = 4;

/// What the service said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IcapVerdict {
    /// `204`: pass the message unchanged.
    Unmodified,
    /// `200`: the service changed the message or answered in its place.
    Modified {
        /// The encapsulated HTTP response's status, when it sent one
        /// (`res-hdr`): for `REQMOD`, an answer in the origin's place.
        status: Option<u16>,
        /// The service named what it found (`X-Infection-Found`,
        /// `X-Violations-Found`).
        found: Option<String>,
    },
}

/// Why an ICAP exchange has no verdict.
#[derive(Debug, thiserror::Error)]
pub enum IcapError {
    /// Could not connect, write or read.
    #[error("ICAP {url}: {msg}")]
    Io {
        /// The service.
        url: String,
        /// What failed.
        msg: String,
    },
    /// No verdict within the timeout.
    #[error("ICAP {url}: no answer within {after:?}")]
    Timeout {
        /// The service.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// An answer that is not a verdict (`500`, a malformed head).
    #[error("ICAP {url} answered: {line}")]
    Answer {
        /// The service.
        url: String,
        /// Its status line.
        line: String,
    },
}

/// One ICAP service (`icap://host:port/path`).
#[derive(Debug)]
pub struct Service {
    url: String,
    host: String,
    authority: String,
    timeout: Duration,
    preview: usize,
    idle: Mutex<Vec<TcpStream>>,
}

/// Which method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Reqmod,
    Respmod,
}

impl Service {
    /// Parses `icap://host[:port]/service`; every exchange within
    /// `timeout`, with a `preview`-byte preview (0: none).
    pub fn new(url: &str, timeout: Duration, preview: usize) -> Result<Service, String> {
        let rest = url
            .strip_prefix("icap://")
            .ok_or_else(|| format!("expected `icap://host:port/service`, found `{url}`"))?;
        let (authority, _) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(format!("no host in `{url}`"));
        }
        let host = match authority.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => format!("{h}:{p}"),
            Some(_) => return Err(format!("bad port in `{url}`")),
            None => format!("{authority}:1344"),
        };
        Ok(Service {
            url: url.to_owned(),
            host,
            authority: authority.to_owned(),
            timeout,
            preview,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The service's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `REQMOD` for a request head (HTTP/1.1 bytes, ending in a blank
    /// line) and its body.
    pub async fn reqmod(&self, req_head: &[u8], body: &[u8]) -> Result<IcapVerdict, IcapError> {
        self.modify(Method::Reqmod, req_head, None, body).await
    }

    /// `RESPMOD` for a response head, with the request head it answers.
    pub async fn respmod(
        &self,
        req_head: &[u8],
        res_head: &[u8],
        body: &[u8],
    ) -> Result<IcapVerdict, IcapError> {
        self.modify(Method::Respmod, req_head, Some(res_head), body)
            .await
    }

    /// `OPTIONS`: whether the service answers `200`.
    pub async fn options(&self) -> Result<(), IcapError> {
        let msg = format!(
            "OPTIONS {} ICAP/1.0\r\nHost: {}\r\nEncapsulated: null-body=0\r\n\r\n",
            self.url, self.authority
        );
        let work = async {
            let mut s = self.connect().await?;
            s.write_all(msg.as_bytes()).await.map_err(|e| self.io(&e))?;
            let (code, line, _, _) = self.read_head(&mut s).await?;
            if code == 200 {
                Ok(())
            } else {
                Err(IcapError::Answer {
                    url: self.url.clone(),
                    line,
                })
            }
        };
        self.deadline(work).await
    }

    async fn modify(
        &self,
        m: Method,
        req_head: &[u8],
        res_head: Option<&[u8]>,
        body: &[u8],
    ) -> Result<IcapVerdict, IcapError> {
        let mut enc = String::from("req-hdr=0");
        let mut off = req_head.len();
        if let Some(r) = res_head {
            enc.push_str(&format!(", res-hdr={off}"));
            off += r.len();
        }
        let kind = if m == Method::Reqmod { "req" } else { "res" };
        if body.is_empty() {
            enc.push_str(&format!(", null-body={off}"));
        } else {
            enc.push_str(&format!(", {kind}-body={off}"));
        }
        let name = if m == Method::Reqmod {
            "REQMOD"
        } else {
            "RESPMOD"
        };
        let mut head = format!(
            "{name} {} ICAP/1.0\r\nHost: {}\r\nAllow: 204\r\nEncapsulated: {enc}\r\n",
            self.url, self.authority
        );
        let preview = (self.preview > 0 && !body.is_empty()).then(|| self.preview.min(body.len()));
        if let Some(p) = preview {
            head.push_str(&format!("Preview: {p}\r\n"));
        }
        head.push_str("\r\n");
        let mut msg = head.into_bytes();
        msg.extend_from_slice(req_head);
        if let Some(r) = res_head {
            msg.extend_from_slice(r);
        }
        let work = async {
            let mut s = self.connect().await?;
            match preview {
                None => {
                    if !body.is_empty() {
                        chunk(&mut msg, body);
                        msg.extend_from_slice(b"0\r\n\r\n");
                    }
                    s.write_all(&msg).await.map_err(|e| self.io(&e))?;
                }
                Some(p) => {
                    let (first, rest) = body.split_at(p);
                    chunk(&mut msg, first);
                    if rest.is_empty() {
                        msg.extend_from_slice(b"0; ieof\r\n\r\n");
                    } else {
                        msg.extend_from_slice(b"0\r\n\r\n");
                    }
                    s.write_all(&msg).await.map_err(|e| self.io(&e))?;
                    let (code, line, head, rest_read) = self.read_head(&mut s).await?;
                    if code == 100 {
                        if rest.is_empty() {
                            return Err(IcapError::Answer {
                                url: self.url.clone(),
                                line: format!("{line} after the whole body (ieof)"),
                            });
                        }
                        let mut more = Vec::with_capacity(rest.len() + 32);
                        chunk(&mut more, rest);
                        more.extend_from_slice(b"0\r\n\r\n");
                        s.write_all(&more).await.map_err(|e| self.io(&e))?;
                    } else {
                        return self.verdict(s, code, line, &head, rest_read).await;
                    }
                }
            }
            let (code, line, head, rest_read) = self.read_head(&mut s).await?;
            self.verdict(s, code, line, &head, rest_read).await
        };
        self.deadline(work).await
    }

    async fn verdict(
        &self,
        mut s: TcpStream,
        code: u16,
        line: String,
        head: &str,
        mut got: Vec<u8>,
    ) -> Result<IcapVerdict, IcapError> {
        match code {
            204 => {
                self.checkin(s);
                Ok(IcapVerdict::Unmodified)
            }
            200 => {
                let header = |name: &str| {
                    head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case(name)
                            .then(|| v.trim().to_owned())
                    })
                };
                let found = header("X-Infection-Found").or_else(|| header("X-Violations-Found"));
                let res_hdr = header("Encapsulated").is_some_and(|e| e.contains("res-hdr"));
                // The encapsulated HTTP status line, when a response follows.
                let status = if res_hdr {
                    let mut buf = [0u8; 512];
                    while !got.contains(&b'\n') && got.len() < 512 {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    std::str::from_utf8(&got)
                        .ok()
                        .filter(|t| t.starts_with("HTTP/"))
                        .and_then(|t| t.split(' ').nth(1))
                        .and_then(|c| c.parse().ok())
                } else {
                    None
                };
                Ok(IcapVerdict::Modified { status, found })
            }
            _ => Err(IcapError::Answer {
                url: self.url.clone(),
                line,
            }),
        }
    }

    async fn deadline<T>(
        &self,
        work: impl Future<Output = Result<T, IcapError>>,
    ) -> Result<T, IcapError> {
        timeout(self.timeout, work).await.unwrap_or_else(|_| {
            Err(IcapError::Timeout {
                url: self.url.clone(),
                after: self.timeout,
            })
        })
    }

    fn io(&self, e: &std::io::Error) -> IcapError {
        IcapError::Io {
            url: self.url.clone(),
            msg: e.to_string(),
        }
    }

    async fn connect(&self) -> Result<TcpStream, IcapError> {
        let pooled = self.idle.lock().ok().and_then(|mut v| v.pop());
        if let Some(s) = pooled {
            // A pooled connection the service closed reads as EOF now.
            let mut probe = [0u8; 1];
            match s.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(s),
                _ => {}
            }
        }
        TcpStream::connect(self.host.as_str())
            .await
            .map_err(|e| self.io(&e))
    }

    fn checkin(&self, s: TcpStream) {
        if let Ok(mut v) = self.idle.lock() {
            if v.len() < POOL {
                v.push(s);
            }
        }
    }

    /// Reads an ICAP response head: its status code, status line, headers
    /// (raw), and the bytes read past the head (the encapsulated message's
    /// start).
    async fn read_head(
        &self,
        s: &mut TcpStream,
    ) -> Result<(u16, String, String, Vec<u8>), IcapError> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).into_owned();
                let line = head.lines().next().unwrap_or_default().to_owned();
                let code = line
                    .strip_prefix("ICAP/1.0 ")
                    .and_then(|r| r.get(..3))
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| IcapError::Answer {
                        url: self.url.clone(),
                        line: line.clone(),
                    })?;
                let rest = got[end + 4..].to_vec();
                return Ok((code, line, head, rest));
            }
            if got.len() > MAX_HEAD {
                return Err(IcapError::Answer {
                    url: self.url.clone(),
                    line: "response head over 64 KiB".into(),
                });
            }
            let n = s.read(&mut buf).await.map_err(|e| self.io(&e))?;
            if n == 0 {
                return Err(IcapError::Io {
                    url: self.url.clone(),
                    msg: "closed before a response".into(),
                });
            }
            got.extend_from_slice(&buf[..n]);
        }
    }
}

/// Appends `data` as one chunk of chunked encoding.
fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let s = Service::new("icap://127.0.0.1:1344/echo", Duration::from_secs(1), 0).unwrap();
        assert_eq!(s.host, "127.0.0.1:1344");
        let s = Service::new("icap://icap.local/av", Duration::from_secs(1), 0).unwrap();
        assert_eq!(s.host, "icap.local:1344");
        assert!(Service::new("http://x/", Duration::from_secs(1), 0).is_err());
        assert!(Service::new("icap:///x", Duration::from_secs(1), 0).is_err());
    }

    #[tokio::test]
    async fn preview_then_204() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.ends_with(b"0; ieof\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            let t = String::from_utf8_lossy(&got).into_owned();
            assert!(t.contains("Preview: 5\r\n"), "{t}");
            assert!(t.contains("Encapsulated: req-hdr=0, req-body=19"), "{t}");
            s.write_all(b"ICAP/1.0 204 No Content\r\nEncapsulated: null-body=0\r\n\r\n")
                .await
                .unwrap();
        });
        let svc = Service::new(&format!("icap://{a}/x"), Duration::from_secs(5), 64).unwrap();
        let v = svc
            .reqmod(b"POST / HTTP/1.1\r\n\r\n", b"hello")
            .await
            .unwrap();
        assert_eq!(v, IcapVerdict::Unmodified);
    }
}
