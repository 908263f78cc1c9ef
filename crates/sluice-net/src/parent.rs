//! The client side of the two parent-proxy protocols a route may go
//! through: HTTP `CONNECT` (RFC 9110 §9.3.6) and SOCKS5 `CONNECT`
//! (RFC 1928, user/password by RFC 1929). A parent is always asked for an
//! IP address that Sluice resolved and checked itself, never a name: a
//! parent that resolved names would bypass the guard and the rebinding
//! protection. What a name carries inside the tunnel (TLS SNI, the `Host`
//! header of a forwarded request) is the client's, unchanged.
//!
//! Nothing here reads past the parent's answer: the bytes after it belong
//! to the tunnel (a server that speaks first, such as SSH or SMTP, may
//! already have sent some). Every read is bounded in size; the caller
//! bounds the whole exchange in time.

use std::{io, net::SocketAddr};

use base64::Engine;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The longest answer head accepted from an HTTP parent.
const MAX_HEAD: usize = 8 * 1024;

/// How a handshake with a parent failed.
#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    /// The parent itself failed (closed, spoke nonsense, refused our
    /// credentials): another parent may do better, and enough of these in
    /// a row eject it.
    #[error("{0}")]
    Broken(String),
    /// The parent works but could not reach the destination: its answer.
    #[error("{msg}")]
    Unreachable {
        /// The parent's answer, in one line.
        msg: String,
        /// Its nearest I/O kind (refused, unreachable, timed out).
        kind: io::ErrorKind,
    },
}

/// Credentials for a parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

/// Asks an HTTP parent for a tunnel to `target` (`CONNECT ip:port`).
pub async fn http_connect(
    s: &mut TcpStream,
    target: SocketAddr,
    creds: Option<&Credentials>,
) -> Result<(), ParentError> {
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(c) = creds {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.user, c.password));
        req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.map_err(broken)?;
    let head = read_head(s).await?;
    let status = parse_status(&head)?;
    match status {
        200..=299 => Ok(()),
        407 => Err(ParentError::Broken(format!(
            "the parent asks for credentials ({status}): give them in the route's URL"
        ))),
        _ => Err(ParentError::Unreachable {
            msg: format!("the parent answered {status} to CONNECT {target}"),
            kind: match status {
                504 => io::ErrorKind::TimedOut,
                403 => io::ErrorKind::PermissionDenied,
                _ => io::ErrorKind::ConnectionRefused,
            },
        }),
    }
}

/// Reads a response head byte by byte (never past its blank line).
async fn read_head(s: &mut TcpStream) -> Result<Vec<u8>, ParentError> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(ParentError::Broken(format!(
                "the parent's answer head exceeds {MAX_HEAD} bytes"
            )));
        }
        match s.read(&mut byte).await {
            Ok(0) => {
                return Err(ParentError::Broken(
                    "the parent closed the connection before answering".into(),
                ));
            }
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(broken(e)),
        }
    }
    Ok(head)
}

/// The status code of an HTTP answer head.
pub fn parse_status(head: &[u8]) -> Result<u16, ParentError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => resp
            .code
            .ok_or_else(|| ParentError::Broken("the parent's answer has no status".into())),
        Ok(httparse::Status::Partial) => Err(ParentError::Broken(
            "the parent's answer head is incomplete".into(),
        )),
        Err(e) => Err(ParentError::Broken(format!(
            "the parent's answer is not HTTP: {e}"
        ))),
    }
}

/// Asks a SOCKS5 parent for a connection to `target` (address type IPv4
/// or IPv6, never a domain name).
pub async fn socks5_connect(
    s: &mut TcpStream,
    target: SocketAddr,
    creds: Option<&Credentials>,
) -> Result<(), ParentError> {
    let greeting: &[u8] = if creds.is_some() {
        &[5, 2, 0, 2]
    } else {
        &[5, 1, 0]
    };
    s.write_all(greeting).await.map_err(broken)?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await.map_err(broken)?;
    match (choice, creds) {
        ([5, 0], _) => {}
        ([5, 2], Some(c)) => {
            let mut auth = vec![1, c.user.len() as u8];
            auth.extend_from_slice(c.user.as_bytes());
            auth.push(c.password.len() as u8);
            auth.extend_from_slice(c.password.as_bytes());
            s.write_all(&auth).await.map_err(broken)?;
            let mut status = [0u8; 2];
            s.read_exact(&mut status).await.map_err(broken)?;
            if status[1] != 0 {
                return Err(ParentError::Broken(
                    "the SOCKS5 parent refused the route's credentials".into(),
                ));
            }
        }
        ([5, 0xff], _) | ([5, 2], None) => {
            return Err(ParentError::Broken(
                "the SOCKS5 parent accepts none of the offered methods (credentials needed?)"
                    .into(),
            ));
        }
        (other, _) => {
            return Err(ParentError::Broken(format!(
                "the parent does not speak SOCKS5 (answered {:02x} {:02x})",
                other[0], other[1]
            )));
        }
    }
    s.write_all(&socks5_request(target)).await.map_err(broken)?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await.map_err(broken)?;
    if head[0] != 5 {
        return Err(ParentError::Broken(format!(
            "the parent's SOCKS5 reply has version {}",
            head[0]
        )));
    }
    // The bound address that follows, read whole so that the tunnel
    // starts after it.
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await.map_err(broken)?;
            usize::from(len[0]) + 2
        }
        t => {
            return Err(ParentError::Broken(format!(
                "the parent's SOCKS5 reply has address type {t}"
            )));
        }
    };
    let mut skip = [0u8; 258];
    s.read_exact(&mut skip[..rest]).await.map_err(broken)?;
    match head[1] {
        0 => Ok(()),
        code => Err(ParentError::Unreachable {
            msg: format!(
                "the SOCKS5 parent could not connect to {target}: {}",
                socks5_reply_text(code)
            ),
            kind: match code {
                4 | 3 => io::ErrorKind::HostUnreachable,
                6 => io::ErrorKind::TimedOut,
                2 => io::ErrorKind::PermissionDenied,
                _ => io::ErrorKind::ConnectionRefused,
            },
        }),
    }
}

/// A SOCKS5 `CONNECT` request for an IP address.
pub fn socks5_request(target: SocketAddr) -> Vec<u8> {
    let mut req = vec![5, 1, 0];
    match target {
        SocketAddr::V4(a) => {
            req.push(1);
            req.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            req.push(4);
            req.extend_from_slice(&a.ip().octets());
        }
    }
    req.extend_from_slice(&target.port().to_be_bytes());
    req
}

fn socks5_reply_text(code: u8) -> &'static str {
    match code {
        1 => "general failure",
        2 => "not allowed by its ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unknown reply code",
    }
}

fn broken(e: io::Error) -> ParentError {
    ParentError::Broken(format!("talking to the parent: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_of_a_head() {
        assert_eq!(
            parse_status(b"HTTP/1.1 200 Connection established\r\n\r\n").unwrap(),
            200
        );
        assert!(matches!(
            parse_status(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(ParentError::Broken(_))
        ));
    }

    #[test]
    fn socks5_requests_carry_addresses_never_names() {
        let v4 = socks5_request("192.0.2.7:443".parse().unwrap());
        assert_eq!(v4, [5, 1, 0, 1, 192, 0, 2, 7, 1, 187]);
        let v6 = socks5_request("[2001:db8::1]:80".parse().unwrap());
        assert_eq!(v6[3], 4);
        assert_eq!(v6.len(), 4 + 16 + 2);
    }
}
