//! Receivers for what Sluice sends out of band: a webhook endpoint that
//! keeps every POST and answers with the statuses it is given, and syslog
//! receivers over UDP (one datagram a message) and TCP (the raw bytes of
//! each connection, for the test to split by octet counting). They only
//! receive and keep; what should have arrived is for the tests to assert.

use std::{
    collections::VecDeque,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, UdpSocket},
    sync::{Arc, Mutex},
    time::Duration,
};

/// One request the webhook receiver took.
#[derive(Debug, Clone)]
pub struct Post {
    /// `POST`, or whatever came.
    pub method: String,
    /// The request target.
    pub path: String,
    /// Header names (lower-cased) and values.
    pub headers: Vec<(String, String)>,
    /// The body (by `Content-Length`).
    pub body: Vec<u8>,
}

impl Post {
    /// The first header called `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP endpoint on 127.0.0.1:0 that keeps every request and answers
/// each with the next of its statuses (200 once they run out), closing the
/// connection.
pub struct WebhookReceiver {
    /// Its address.
    pub addr: SocketAddr,
    posts: Arc<Mutex<Vec<Post>>>,
}

impl WebhookReceiver {
    /// Starts it; `answers` are the statuses of the first requests.
    pub fn start(answers: &[u16]) -> WebhookReceiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let answers: Arc<Mutex<VecDeque<u16>>> =
            Arc::new(Mutex::new(answers.iter().copied().collect()));
        let kept = posts.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let Some(post) = read_request(&mut s) else {
                    continue;
                };
                kept.lock().unwrap().push(post);
                let status = answers.lock().unwrap().pop_front().unwrap_or(200);
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        WebhookReceiver { addr, posts }
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far, in order.
    pub fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }
}

fn read_request(s: &mut std::net::TcpStream) -> Option<Post> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 * 1024 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).ok().filter(|&n| n > 0)?;
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Some(Post {
        method,
        path,
        headers,
        body,
    })
}

/// A syslog receiver on 127.0.0.1:0: over UDP it keeps each datagram; over
/// TCP it keeps the raw bytes of each connection.
pub struct SyslogReceiver {
    /// Its address.
    pub addr: SocketAddr,
    kept: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl SyslogReceiver {
    /// A UDP receiver: one entry per datagram.
    pub fn udp() -> SyslogReceiver {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let kept = Arc::new(Mutex::new(Vec::new()));
        let k = kept.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while let Ok(n) = sock.recv(&mut buf) {
                k.lock().unwrap().push(buf[..n].to_vec());
            }
        });
        SyslogReceiver { addr, kept }
    }

    /// A TCP receiver: one entry per connection, growing as bytes come. With
    /// `close_first`, the first connection is closed after its first read
    /// (a receiver restart), so the sender must reconnect.
    pub fn tcp(close_first: bool) -> SyslogReceiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let kept = Arc::new(Mutex::new(Vec::new()));
        let k = kept.clone();
        std::thread::spawn(move || {
            for (n, s) in l.incoming().enumerate() {
                let Ok(mut s) = s else { continue };
                let index = {
                    let mut k = k.lock().unwrap();
                    k.push(Vec::new());
                    k.len() - 1
                };
                let k = k.clone();
                let close = close_first && n == 0;
                std::thread::spawn(move || {
                    let mut chunk = [0u8; 4096];
                    while let Ok(got) = s.read(&mut chunk) {
                        if got == 0 {
                            break;
                        }
                        k.lock().unwrap()[index].extend_from_slice(&chunk[..got]);
                        if close {
                            break;
                        }
                    }
                });
            }
        });
        SyslogReceiver { addr, kept }
    }

    /// What came so far: datagrams (UDP) or each connection's bytes (TCP).
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.kept.lock().unwrap().clone()
    }
}
