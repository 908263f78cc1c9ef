//! Real clients run as child processes, the way a user would run them:
//! curl, Python `requests`, and the proxy credentials they present. Every
//! client runs with proxy variables cleared and a time bound, so that only
//! what a test sets decides how it connects and a hung client fails the
//! test instead of hanging it.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::TempDir;

/// Upper bound for any one client process.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A client command (curl, python3, git, …) with every proxy variable
/// removed from its environment, so that only what a test sets decides how
/// it connects (curl and requests honour `NO_PROXY` even with an explicit
/// proxy).
pub fn client_command(program: &str) -> Command {
    let mut c = Command::new(program);
    for v in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
    ] {
        c.env_remove(v);
    }
    c
}

/// Runs `cmd` to completion with its output captured, killing it and
/// panicking if it takes longer than `timeout` (a hung client must fail the
/// test, not hang it). Standard input is closed.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> std::process::Output {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
            panic!("{cmd:?} did not finish within {timeout:?}; stderr: {err}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// A child process killed (and reaped) on drop: a server a test started.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and waits (bounded) for a stdout line that `port_of` turns
/// into a port number: servers bind port 0 and print where they listen.
pub fn spawn_with_port(cmd: &mut Command, port_of: fn(&str) -> Option<u16>) -> (KillOnDrop, u16) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if !sent {
                if let Some(p) = port_of(&line) {
                    let _ = tx.send(p);
                    sent = true;
                }
            }
        }
    });
    let bg = KillOnDrop(child);
    let port = rx
        .recv_timeout(Duration::from_secs(15))
        .unwrap_or_else(|_| panic!("{cmd:?} did not print its port"));
    (bg, port)
}

// === curl ===

/// What one curl run showed.
#[derive(Debug)]
pub struct Curl {
    /// curl's exit code.
    pub exit: i32,
    /// Final HTTP status (0 if none).
    pub status: u16,
    /// Status of the CONNECT answer (0 without a tunnel).
    pub connect: u16,
    /// Every header block received, as text.
    pub headers: String,
    /// The body of the final response.
    pub body: Vec<u8>,
    /// What curl said on stderr.
    pub stderr: String,
}

impl Curl {
    /// The first value of header `name` in any block.
    pub fn header(&self, name: &str) -> Option<String> {
        header_in(&self.headers, name)
    }

    /// The `Sluice-Request-Id` the client saw; panics without one.
    pub fn id(&self) -> String {
        self.header("sluice-request-id").unwrap_or_else(|| {
            panic!(
                "no Sluice-Request-Id in {}; curl said: {}",
                self.headers, self.stderr
            )
        })
    }

    /// The body as text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The first value of header `name` (case-insensitive) in a block of
/// `Name: value` lines.
pub fn header_in(headers: &str, name: &str) -> Option<String> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// Runs curl with `args` plus a time limit (`--max-time 10`; a later
/// `--max-time` in `args` wins), a header dump and body capture.
pub fn curl(args: &[&str]) -> Curl {
    let dir = TempDir::new("curl");
    let (hdr, body) = (dir.path("headers"), dir.path("body"));
    let out = output_within(
        client_command("curl")
            .args(["-sS", "-g", "--max-time", "10", "-D"])
            .arg(&hdr)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code} %{http_connect}"])
            .args(args),
        CLIENT_TIMEOUT,
    );
    let w = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut codes = w.split_whitespace().map(|c| c.parse::<u16>().unwrap_or(0));
    Curl {
        exit: out.status.code().unwrap_or(-1),
        status: codes.next().unwrap_or(0),
        connect: codes.next().unwrap_or(0),
        headers: std::fs::read_to_string(&hdr).unwrap_or_default(),
        body: std::fs::read(&body).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// === Python requests ===

/// Fetches each URL with `requests` (proxies from the environment, the CA
/// in argv[1] or the system's when empty) and prints one JSON list of
/// outcomes.
const REQUESTS_PY: &str = r#"
import json, sys, requests
out = []
verify = sys.argv[1] or True
for url in sys.argv[2:]:
    try:
        r = requests.get(url, timeout=10, verify=verify)
        out.append({"url": url, "status": r.status_code, "len": len(r.content),
                    "body": r.text[:300], "headers": {k.lower(): v for k, v in r.headers.items()}})
    except Exception as e:
        out.append({"url": url, "error": repr(e)})
print(json.dumps(out))
"#;

/// Fetches `urls` with Python `requests` through `proxy` (any URL requests
/// takes: `http://user:pass@host:port`, `socks5://`, `socks5h://`; set as
/// `HTTP_PROXY` and `HTTPS_PROXY`), trusting `ca` (PEM) for HTTPS when
/// given. One JSON object per URL: `status`, `len`, `body` (the first 300
/// characters) and `headers` (lower-case names), or `error`.
pub fn python_requests(proxy: &str, ca: Option<&Path>, urls: &[String]) -> Vec<serde_json::Value> {
    let dir = TempDir::new("requests");
    let script = dir.path("get.py");
    std::fs::write(&script, REQUESTS_PY).unwrap();
    let out = output_within(
        client_command("python3")
            .arg(&script)
            .arg(ca.unwrap_or(Path::new("")))
            .args(urls)
            .env("HTTP_PROXY", proxy)
            .env("HTTPS_PROXY", proxy),
        CLIENT_TIMEOUT,
    );
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

// === proxy credentials ===

/// An argon2id PHC string for `password`, with small parameters so that a
/// debug build verifies it quickly (the verifier reads them from the hash).
pub fn argon2_hash(password: &str) -> String {
    use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version, password_hash::SaltString};
    let params = Params::new(4096, 1, 1, None).unwrap();
    let salt = SaltString::encode_b64(b"sluice-testkit-salt").unwrap();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}
