//! A real `nats-server` with JetStream, started by a test on a free
//! loopback port with its own store directory, that the test can kill and
//! start again on the same port and store (an outage, then a recovery).

use std::{
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::TempDir;

/// Where Debian's package puts the server; elsewhere it is looked up on
/// `PATH`.
const DEBIAN_BIN: &str = "/usr/sbin/nats-server";

/// A running (or killed) `nats-server -js`.
pub struct NatsServer {
    bin: String,
    child: Option<Child>,
    /// Where it listens (127.0.0.1 and a port picked once, kept across
    /// restarts).
    pub addr: SocketAddr,
    store: TempDir,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free loopback port and waits (at most
    /// 10 s) until it greets clients. Panics naming the package when the
    /// server is not installed: a test never passes without it.
    pub fn start() -> NatsServer {
        let bin = if Path::new(DEBIAN_BIN).exists() {
            DEBIAN_BIN.to_owned()
        } else {
            let found = Command::new("sh")
                .args(["-c", "command -v nats-server"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
            found.unwrap_or_else(|| {
                panic!("nats-server is not installed: apt-get install nats-server (Debian) — the flow bus tests need it")
            })
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let mut s = NatsServer {
            bin,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            store: TempDir::new("nats"),
        };
        s.restart();
        s
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Kills the server at once (SIGKILL: no goodbye to clients) and waits
    /// for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server (again) on the same port and store, and waits
    /// until it greets clients.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(&self.bin)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.addr.port().to_string())
            .arg("-sd")
            .arg(&self.store.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if greets(self.addr) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// Whether a server at `addr` sends its `INFO` line.
fn greets(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).is_ok() && &buf == b"INFO"
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
