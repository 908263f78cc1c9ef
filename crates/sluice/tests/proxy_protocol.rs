//! PROXY protocol on the HTTP and SOCKS5 listeners, end to end: haproxy in
//! TCP mode (`send-proxy`, `send-proxy-v2`) in front of the real binary,
//! curl bound to 127.0.0.5 behind it, and raw sockets for a load balancer
//! that sends no header and for a spoofed header from an untrusted address.
//! haproxy's own address (127.0.0.1) is trusted; the client's (127.0.0.5)
//! selects another zone, so the zone in the record shows which address the
//! gateway judged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use sluice_testkit::{KillOnDrop, Origin, Sluice, TempDir, client_command, curl, poll_until};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Two zones over one origin: `behind-lb` for 127.0.0.5, `local` for the
/// rest of loopback; PROXY headers are trusted from 127.0.0.1 only.
fn policy(origin: &Origin) -> String {
    let port = origin.addr.port();
    let zone = |name: &str, src: &str| {
        format!(
            "  - name: {name}\n    sources: [{src}]\n    mode: enforce\n    allow:\n      \
             - cidr: 127.0.0.1/32\n        ports: [{port}]\n        id: origin-{name}\n"
        )
    };
    format!(
        "listen:\n  http: 127.0.0.1:0\n  socks5: 127.0.0.1:0\n  \
         proxy_protocol_from: [127.0.0.1/32]\nzones:\n{}{}",
        zone("behind-lb", "127.0.0.5/32"),
        zone("local", "127.0.0.0/8"),
    )
}

/// haproxy in TCP mode on a free loopback port, forwarding to `backend`
/// with `send` (`send-proxy` or `send-proxy-v2`).
fn haproxy(dir: &TempDir, backend: SocketAddr, send: &str) -> (KillOnDrop, SocketAddr) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path(&format!("haproxy-{send}.cfg"));
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10s\n  \
             timeout server 10s\nfrontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n\
             backend b\n  server s1 {backend} {send}\n"
        ),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy (apt-get install haproxy)");
    let bg = KillOnDrop(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(
        poll_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
        "haproxy did not listen on {addr}"
    );
    (bg, addr)
}

fn src_ip(rec: &Value) -> String {
    let src: SocketAddr = rec["src"].as_str().unwrap().parse().unwrap();
    src.ip().to_string()
}

#[test]
fn haproxy_send_proxy_v1_and_v2_give_the_clients_zone_and_address() {
    let origin = Origin::start("127.0.0.1");
    let s = Sluice::start(BIN, &policy(&origin));
    let dir = TempDir::new("haproxy");
    for send in ["send-proxy", "send-proxy-v2"] {
        let (_lb, lb) = haproxy(&dir, s.http, send);
        let url = format!("{}/{send}", origin.url());
        let c = curl(&[
            "--interface",
            "127.0.0.5",
            "-x",
            &format!("http://{lb}"),
            &url,
        ]);
        assert_eq!(c.status, 200, "{send}: {c:?}");
        let rec = s.wait_record(send, |r| r["id"] == c.id().as_str());
        assert_eq!(rec["zone"], "behind-lb", "{send}: {rec}");
        assert_eq!(src_ip(&rec), "127.0.0.5", "{send}: {rec}");
    }
    // SOCKS5 through haproxy with send-proxy-v2.
    let (_lb, lb) = haproxy(&dir, s.socks5.unwrap(), "send-proxy-v2");
    let url = format!("{}/socks", origin.url());
    let c = curl(&[
        "--interface",
        "127.0.0.5",
        "--socks5",
        &lb.to_string(),
        &url,
    ]);
    assert_eq!(c.status, 200, "socks5: {c:?}");
    let rec = s.wait_record("socks5 via haproxy", |r| r["listener"] == "socks5");
    assert_eq!(rec["zone"], "behind-lb", "{rec}");
    assert_eq!(src_ip(&rec), "127.0.0.5", "{rec}");
}

#[test]
fn trusted_address_needs_a_header_and_v2_local_keeps_its_address() {
    let origin = Origin::start("127.0.0.1");
    let s = Sluice::start(BIN, &policy(&origin));
    // From 127.0.0.1 (trusted), a plain request: not a header.
    let c = curl(&["-x", &s.proxy_url(), &origin.url()]);
    assert_ne!(c.status, 200, "{c:?}");
    let rec = s.wait_record("missing header", |r| r["rule"] == "default/bad-request");
    assert!(
        rec["error"]
            .as_str()
            .unwrap_or("")
            .contains("PROXY protocol header required"),
        "{rec}"
    );
    assert_eq!(src_ip(&rec), "127.0.0.1");
    // A v2 LOCAL header (a health check) keeps the balancer's address.
    let mut c = TcpStream::connect(s.http).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec();
    local.extend_from_slice(
        format!(
            "GET {}/local HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            origin.url(),
            origin.addr
        )
        .as_bytes(),
    );
    c.write_all(&local).unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let rec = s.wait_record("v2 LOCAL", |r| {
        r["zone"] == "local" && r["verdict"] == "allow"
    });
    assert_eq!(src_ip(&rec), "127.0.0.1", "{rec}");
}

/// Sends `bytes` from 127.0.0.5 to `to` and returns what came back before
/// the gateway closed (or reset: it closes without reading the rest).
fn from_untrusted(to: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let py = "import socket,sys\n\
        s=socket.socket(); s.settimeout(10); s.bind(('127.0.0.5',0))\n\
        s.connect((sys.argv[1], int(sys.argv[2]))); s.sendall(sys.stdin.buffer.read())\n\
        out=b''\n\
        try:\n  while True:\n    b=s.recv(4096)\n    if not b: break\n    out+=b\n\
        except ConnectionResetError: pass\n\
        sys.stdout.buffer.write(out)\n";
    let mut child = client_command("python3")
        .args(["-c", py, &to.ip().to_string(), &to.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert!(child.wait().unwrap().success());
    out
}

#[test]
fn spoofed_header_from_an_untrusted_address_is_refused() {
    let origin = Origin::start("127.0.0.1");
    let s = Sluice::start(BIN, &policy(&origin));
    let spoof = format!(
        "PROXY TCP4 10.9.9.9 127.0.0.1 1234 {}\r\nGET {} HTTP/1.1\r\nHost: x\r\n\r\n",
        s.http.port(),
        origin.url()
    );
    let out = from_untrusted(s.http, spoof.as_bytes());
    assert!(
        !String::from_utf8_lossy(&out).contains(" 200 "),
        "served: {out:?}"
    );
    let rec = s.wait_record("spoofed header", |r| r["rule"] == "default/bad-request");
    assert_eq!(src_ip(&rec), "127.0.0.5", "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap_or("")
            .contains("not in listen.proxy_protocol_from"),
        "{rec}"
    );
    // A plain client from the same untrusted address is served as before.
    let c = curl(&[
        "--interface",
        "127.0.0.5",
        "-x",
        &s.proxy_url(),
        &origin.url(),
    ]);
    assert_eq!(c.status, 200, "{c:?}");
    let rec = s.wait_record("plain", |r| r["id"] == c.id().as_str());
    assert_eq!(rec["zone"], "behind-lb", "{rec}");
}
