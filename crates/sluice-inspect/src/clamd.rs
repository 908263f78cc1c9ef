//! A clamd client: `zINSTREAM` over a unix socket or TCP, the object sent
//! in chunks (each a 4-byte big-endian length and its bytes, a zero length
//! at the end), the one-line verdict read back with a bound and the whole
//! exchange under one deadline; and `zPING` for readiness.

use std::{fmt, path::PathBuf, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UnixStream},
    time::timeout,
};

/// The longest verdict line read back.
const MAX_REPLY: usize = 4096;

/// The chunk size sent to clamd (its `StreamMaxLength` bounds the total).
const CHUNK: usize = 64 * 1024;

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `unix:/run/clamav/clamd.ctl`
    Unix(PathBuf),
    /// `tcp://127.0.0.1:3310` (or `host:port`)
    Tcp(String),
}

impl Address {
    /// Parses `unix:/path`, `tcp://host:port` or `host:port`.
    pub fn parse(s: &str) -> Result<Address, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("expected a socket path after `unix:`".into());
            }
            return Ok(Address::Unix(PathBuf::from(p)));
        }
        let hp = s.strip_prefix("tcp://").unwrap_or(s);
        match hp.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0) => {
                Ok(Address::Tcp(hp.to_owned()))
            }
            _ => Err(format!(
                "expected `unix:/path`, `tcp://host:port` or `host:port`, found `{s}`"
            )),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// What clamd said of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing found.
    Clean,
    /// A signature matched: its name.
    Found(String),
}

/// Why a scan has no verdict.
#[derive(Debug, thiserror::Error)]
pub enum ClamdError {
    /// Could not connect, write or read.
    #[error("clamd at {addr}: {msg}")]
    Io {
        /// Where.
        addr: String,
        /// What failed.
        msg: String,
    },
    /// No verdict within the timeout.
    #[error("clamd at {addr}: no answer within {after:?}")]
    Timeout {
        /// Where.
        addr: String,
        /// The timeout.
        after: Duration,
    },
    /// clamd answered with an error (its size limit, a bad command).
    #[error("clamd at {addr} answered: {line}")]
    Answer {
        /// Where.
        addr: String,
        /// Its answer.
        line: String,
    },
}

/// A clamd client.
#[derive(Debug, Clone)]
pub struct Clamd {
    addr: Address,
    timeout: Duration,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Clamd {
    /// A client for clamd at `addr`, each exchange within `timeout`.
    pub fn new(addr: Address, timeout: Duration) -> Clamd {
        Clamd { addr, timeout }
    }

    /// Where clamd is.
    pub fn address(&self) -> &Address {
        &self.addr
    }

    /// Scans `data` with `INSTREAM`.
    pub async fn scan(&self, data: &[u8]) -> Result<Verdict, ClamdError> {
        let line = self.exchange(b"zINSTREAM\0", Some(data)).await?;
        // `stream: OK`, `stream: Name FOUND`, or `... ERROR`.
        let body = line.strip_prefix("stream: ").unwrap_or(&line);
        if body == "OK" {
            Ok(Verdict::Clean)
        } else if let Some(name) = body.strip_suffix(" FOUND") {
            Ok(Verdict::Found(name.to_owned()))
        } else {
            Err(ClamdError::Answer {
                addr: self.addr.to_string(),
                line,
            })
        }
    }

    /// `PING`: whether clamd answers `PONG`.
    pub async fn ping(&self) -> Result<(), ClamdError> {
        let line = self.exchange(b"zPING\0", None).await?;
        if line == "PONG" {
            Ok(())
        } else {
            Err(ClamdError::Answer {
                addr: self.addr.to_string(),
                line,
            })
        }
    }

    async fn exchange(&self, cmd: &[u8], data: Option<&[u8]>) -> Result<String, ClamdError> {
        let addr = self.addr.to_string();
        let io_err = |e: std::io::Error| ClamdError::Io {
            addr: addr.clone(),
            msg: e.to_string(),
        };
        let work = async {
            let mut s: Box<dyn Io> = match &self.addr {
                Address::Unix(p) => Box::new(UnixStream::connect(p).await.map_err(io_err)?),
                Address::Tcp(a) => Box::new(TcpStream::connect(a.as_str()).await.map_err(io_err)?),
            };
            s.write_all(cmd).await.map_err(io_err)?;
            if let Some(data) = data {
                for c in data.chunks(CHUNK) {
                    let len = u32::try_from(c.len()).unwrap_or(u32::MAX).to_be_bytes();
                    // clamd may close early (its size limit): read its line.
                    if s.write_all(&len).await.is_err() || s.write_all(c).await.is_err() {
                        break;
                    }
                }
                let _ = s.write_all(&[0, 0, 0, 0]).await;
            }
            let mut out = Vec::new();
            let mut buf = [0u8; 512];
            loop {
                let n = s.read(&mut buf).await.map_err(io_err)?;
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
                if out.contains(&0) || out.len() > MAX_REPLY {
                    break;
                }
            }
            let end = out.iter().position(|b| *b == 0).unwrap_or(out.len());
            let line = String::from_utf8_lossy(&out[..end.min(MAX_REPLY)])
                .trim()
                .to_owned();
            if line.is_empty() {
                return Err(ClamdError::Io {
                    addr: addr.clone(),
                    msg: "closed without an answer".into(),
                });
            }
            Ok(line)
        };
        match timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(ClamdError::Timeout {
                addr: addr.clone(),
                after: self.timeout,
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            Address::parse("unix:/run/c.sock").unwrap(),
            Address::Unix("/run/c.sock".into())
        );
        assert_eq!(
            Address::parse("tcp://127.0.0.1:3310").unwrap(),
            Address::Tcp("127.0.0.1:3310".into())
        );
        assert_eq!(
            Address::parse("localhost:3310").unwrap(),
            Address::Tcp("localhost:3310".into())
        );
        assert!(Address::parse("unix:").is_err());
        assert!(Address::parse("nowhere").is_err());
    }

    #[tokio::test]
    async fn a_fake_clamd_reports_found() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let mut got = Vec::new();
            while !got.ends_with(&[0, 0, 0, 0]) {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got.starts_with(b"zINSTREAM\0\0\0\0\x05hello"));
            s.write_all(b"stream: Test.Sig FOUND\0").await.unwrap();
        });
        let c = Clamd::new(Address::Tcp(a.to_string()), Duration::from_secs(5));
        assert_eq!(
            c.scan(b"hello").await.unwrap(),
            Verdict::Found("Test.Sig".into())
        );
    }
}
