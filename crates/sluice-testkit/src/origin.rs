//! Local origins for the gateway to reach: an HTTP origin on port 0 that
//! counts what it served, and a test CA with a server certificate for TLS
//! origins. An origin only answers and counts; what it should or should not
//! have seen is for the tests to assert.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;

use crate::{KillOnDrop, TempDir, output_within, spawn_with_port};

/// A local HTTP origin on 127.0.0.1:0 (in its own thread and runtime).
/// `GET /bytes/N` answers N bytes; anything else answers a JSON echo of the
/// method, path, headers, body length and the peer address the request
/// came from (`peer`: what the origin saw, e.g. a pinned source address).
pub struct Origin {
    /// Its address.
    pub addr: SocketAddr,
    /// Requests served.
    pub hits: Arc<AtomicUsize>,
    /// TCP connections accepted (for keep-alive pooling checks).
    pub conns: Arc<AtomicUsize>,
}

impl Origin {
    /// Starts an origin on `ip`:0.
    pub fn start(ip: &str) -> Origin {
        let std_listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(AtomicUsize::new(0));
        let (h, c) = (hits.clone(), conns.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((s, peer)) = l.accept().await else {
                        continue;
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                    let h = h.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: Request<Incoming>| {
                            let h = h.clone();
                            async move {
                                h.fetch_add(1, Ordering::SeqCst);
                                Ok::<_, Infallible>(answer(req, peer).await)
                            }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(s), svc)
                            .with_upgrades()
                            .await;
                    });
                }
            });
        });
        Origin { addr, hits, conns }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn answer(req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        return Response::new(Full::new(Bytes::from(vec![b'x'; n])));
    }
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::from(v.to_str().unwrap_or("?")),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let v = serde_json::json!({
        "method": method, "uri": uri, "headers": headers, "body_len": body,
        "peer": peer.to_string(),
    });
    Response::new(Full::new(Bytes::from(v.to_string())))
}

/// A test CA and a server certificate for `sans` (an openssl
/// `subjectAltName` list such as `DNS:origin.test,IP:127.0.0.1`), made with
/// the `openssl` CLI in `dir`.
pub struct Certs {
    /// The CA certificate (PEM) clients trust.
    pub ca: PathBuf,
    /// The server certificate (PEM).
    pub cert: PathBuf,
    /// The server key (PEM).
    pub key: PathBuf,
}

/// Makes a CA and a server certificate for `sans` (see [`Certs`]).
pub fn make_certs(dir: &TempDir, sans: &str) -> Certs {
    let p = |n: &str| dir.path(n);
    let ext = p("ext.cnf");
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n\
             subjectKeyIdentifier=hash\n\
             authorityKeyIdentifier=keyid,issuer\n\
             subjectAltName={sans}\n"
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = output_within(Command::new("openssl").args(args), Duration::from_secs(30));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let s = |p: PathBuf| p.display().to_string();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Sluice Test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        &s(p("ca.key")),
        "-out",
        &s(p("ca.pem")),
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=origin.test",
        "-keyout",
        &s(p("server.key")),
        "-out",
        &s(p("server.csr")),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &s(p("server.csr")),
        "-CA",
        &s(p("ca.pem")),
        "-CAkey",
        &s(p("ca.key")),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &s(ext),
        "-out",
        &s(p("server.pem")),
    ]);
    Certs {
        ca: p("ca.pem"),
        cert: p("server.pem"),
        key: p("server.key"),
    }
}

/// A TLS origin on `ip`: Python's http.server wrapped in `ssl`, answering
/// `GET /PATH` with `hello tls /PATH`. The TLS handshake runs in the
/// per-connection thread, so a tunnel that never sends a ClientHello does
/// not stall other connections.
const TLS_ORIGIN_PY: &str = r#"
import http.server, os, socket, ssl, sys, threading
ip, cert, key, seen_path, download_path = sys.argv[1:6]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
lock = threading.Lock()
def keep(data):
    with lock, open(seen_path, "ab") as f:
        f.write(data)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        keep(("GET %s\n%s\n" % (self.path, self.headers)).encode("latin-1"))
        if self.path == "/download" and os.path.exists(download_path):
            with open(download_path, "rb") as f:
                return self.answer(f.read())
        self.answer(("hello tls " + self.path).encode())
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        keep(("POST %s\n%s\n" % (self.path, self.headers)).encode("latin-1") + body + b"\n")
        self.answer(("got %d" % len(body)).encode())
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    daemon_threads = True
    def finish_request(self, request, client_address):
        request.settimeout(10)
        try:
            request = ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        super().finish_request(request, client_address)
srv = S((ip, 0), H)
print("port", srv.server_address[1], flush=True)
srv.serve_forever()
"#;
/// A TLS origin (Python, HTTP/1.1) on 127.0.0.1:0: `GET /download`
/// answers the bytes given to [`TlsOrigin::set_download`], any other GET
/// `hello tls <path>`, a POST `got <body length>`; what reached it (request
/// lines, headers, bodies) is kept for [`TlsOrigin::saw`].
pub struct TlsOrigin {
    /// Its port on 127.0.0.1.
    pub port: u16,
    _proc: KillOnDrop,
    dir: TempDir,
    /// Its test CA and certificate.
    pub certs: Certs,
}

impl TlsOrigin {
    /// Starts one on 127.0.0.1:0 with a certificate for `sans` (see
    /// [`make_certs`]) from a CA of its own.
    pub fn start(sans: &str) -> TlsOrigin {
        let dir = TempDir::new("tls");
        let certs = make_certs(&dir, sans);
        let script = dir.path("tls_origin.py");
        std::fs::write(&script, TLS_ORIGIN_PY).unwrap();
        let (proc, port) = spawn_with_port(
            Command::new("python3")
                .arg("-u")
                .arg(&script)
                .arg("127.0.0.1")
                .arg(&certs.cert)
                .arg(&certs.key)
                .arg(dir.path("seen"))
                .arg(dir.path("download")),
            |l| l.strip_prefix("port ")?.trim().parse().ok(),
        );
        TlsOrigin {
            port,
            _proc: proc,
            dir,
            certs,
        }
    }

    /// Serves `bytes` at `GET /download` from now on.
    pub fn set_download(&self, bytes: &[u8]) {
        std::fs::write(self.dir.path("download"), bytes).unwrap();
    }

    /// Whether `needle` reached the origin (in a request line, a header or
    /// a body).
    pub fn saw(&self, needle: &str) -> bool {
        let seen = std::fs::read(self.dir.path("seen")).unwrap_or_default();
        seen.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    /// Requests that reached it.
    pub fn requests(&self) -> usize {
        let seen = std::fs::read_to_string(self.dir.path("seen")).unwrap_or_default();
        seen.lines()
            .filter(|l| l.starts_with("GET /") || l.starts_with("POST /"))
            .count()
    }
}
