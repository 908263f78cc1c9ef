//! The real `sluice` binary as a child process: started on port 0 with a
//! configuration, its announced listener addresses, its flow records and
//! stderr, signals, and probes of its admin listener. It must not know what
//! any one test expects: assertions stay in the tests (but for
//! [`assert_fields`], which only names the field that differs).

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{RawResponse, TempDir, send_raw};

/// A running `sluice run` process.
pub struct Sluice {
    /// The child process.
    pub child: Child,
    /// Where the HTTP proxy listens.
    pub http: SocketAddr,
    /// Where admin listens, if configured.
    pub admin: Option<SocketAddr>,
    /// Where the SOCKS5 proxy listens, if configured.
    pub socks5: Option<SocketAddr>,
    /// Where the transparent listener listens, if configured.
    pub transparent: Option<SocketAddr>,
    /// Where the DNS listener listens (UDP and TCP), if configured.
    pub dns: Option<SocketAddr>,
    /// Where the NetFlow collector listens (UDP), if configured.
    pub netflow: Option<SocketAddr>,
    /// The configuration file (rewrite it to test reloads).
    pub config: PathBuf,
    /// The flow log.
    pub flows: PathBuf,
    /// Everything the process wrote to stderr so far.
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// Keeps the directory alive.
    pub dir: TempDir,
}

impl Sluice {
    /// Starts `bin run -c <file>` with `yaml` plus, unless the text already
    /// has them, `listen:` on 127.0.0.1:0 and `log.flows` to a file (also
    /// into a top-level `log:` mapping the text has without `flows`).
    pub fn start(bin: &str, yaml: &str) -> Sluice {
        Self::start_in(&[], bin, yaml)
    }

    /// Like `start`, with the command run through `prefix` (e.g.
    /// `["ip", "netns", "exec", "NS"]` to start it in a network namespace).
    pub fn start_in(prefix: &[&str], bin: &str, yaml: &str) -> Sluice {
        let dir = TempDir::new("run");
        let flows = dir.path("flows.jsonl");
        let mut text = String::new();
        if !yaml.contains("listen:") {
            text.push_str("listen:\n  http: 127.0.0.1:0\n  admin: 127.0.0.1:0\n");
        }
        let log = format!("log:\n  flows: {}\n", flows.display());
        let has_log = yaml.starts_with("log:\n") || yaml.contains("\nlog:\n");
        // A top-level `log:` key (not `detect.syslog:`).
        let any_log = yaml.starts_with("log:") || yaml.contains("\nlog:");
        if !any_log {
            text.push_str(&log);
            text.push_str(yaml);
        } else if has_log && !yaml.contains("flows:") {
            // Block style, two-space indent: the flow log goes first in it.
            let at = if yaml.starts_with("log:\n") {
                0
            } else {
                yaml.find("\nlog:\n").map_or(0, |i| i + 1)
            };
            text.push_str(&yaml[..at]);
            text.push_str(&log);
            text.push_str(&yaml[at + "log:\n".len()..]);
        } else {
            text.push_str(yaml);
        }
        let config = dir.path("sluice.yaml");
        std::fs::write(&config, text).unwrap();
        Self::start_file(prefix, bin, &config, flows, dir)
    }

    /// Starts `bin run -c config` for a configuration file the caller wrote
    /// (e.g. behind symlinks); `flows` is where its `log.flows` points and
    /// `dir` is kept alive with the process.
    pub fn start_at(bin: &str, config: &Path, flows: PathBuf, dir: TempDir) -> Sluice {
        Self::start_file(&[], bin, config, flows, dir)
    }

    fn start_file(
        prefix: &[&str],
        bin: &str,
        config: &Path,
        flows: PathBuf,
        dir: TempDir,
    ) -> Sluice {
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(["run", "-c"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sluice");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("sluice: HTTP proxy listening on ") {
                    let _ = tx.send(("http", a.to_owned()));
                }
                if let Some(a) = line.strip_prefix("sluice: SOCKS5 proxy listening on ") {
                    let _ = tx.send(("socks5", a.to_owned()));
                }
                if let Some(a) = line.strip_prefix("sluice: transparent listener on ") {
                    let _ = tx.send(("transparent", a.to_owned()));
                }
                if let Some(a) = line.strip_prefix("sluice: DNS listening on ") {
                    let _ = tx.send(("dns", a.to_owned()));
                }
                if let Some(a) = line.strip_prefix("sluice: NetFlow collector listening on ") {
                    let _ = tx.send(("netflow", a.to_owned()));
                }
                if let Some(a) = line.strip_prefix("sluice: admin listening on http://") {
                    let _ = tx.send(("admin", a.split('/').next().unwrap_or("").to_owned()));
                }
                if line.starts_with("sluice: policy ") {
                    let _ = tx.send(("ready", String::new()));
                }
                lines.lock().unwrap().push(line);
            }
        });
        let (mut http, mut admin, mut socks5, mut transparent) = (None, None, None, None);
        let (mut dns, mut netflow) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(("http", a)) => http = Some(a.parse().unwrap()),
                Ok(("admin", a)) => admin = Some(a.parse().unwrap()),
                Ok(("socks5", a)) => socks5 = Some(a.parse().unwrap()),
                Ok(("transparent", a)) => transparent = Some(a.parse().unwrap()),
                Ok(("dns", a)) => dns = Some(a.parse().unwrap()),
                Ok(("netflow", a)) => netflow = Some(a.parse().unwrap()),
                Ok(_) => break,
                Err(_) => panic!("sluice did not start: {:?}", stderr.lock().unwrap()),
            }
        }
        Sluice {
            child,
            http: http.expect("http address"),
            admin,
            socks5,
            transparent,
            dns,
            netflow,
            config: config.to_path_buf(),
            flows,
            stderr,
            dir,
        }
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Sends a signal by name (`HUP`, `USR1`, `TERM`, `INT`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Every flow record written so far.
    pub fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.flows)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("flow record is JSON"))
            .collect()
    }

    /// Waits (bounded) for the first record that `pred` accepts; panics
    /// naming `what` and listing the records when none comes.
    pub fn wait_record(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let recs = self.records();
            if let Some(r) = recs.iter().find(|r| pred(r)) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no flow record for {what}; records: {recs:#?}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until at least `n` records exist (records are written on close).
    pub fn wait_records(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.records();
            if r.len() >= n || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until a stderr line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    /// Waits for the process to exit and returns its code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }

    /// `GET path` on the admin listener (5 s bound).
    pub fn admin_get(&self, path: &str) -> RawResponse {
        let admin = self.admin.expect("admin listener configured");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        send_raw(admin, req.as_bytes(), Duration::from_secs(5))
    }

    /// The alerts `/api/v1/alerts?QUERY` lists now (`kind=dlp`, say).
    pub fn alerts(&self, query: &str) -> Vec<serde_json::Value> {
        let r = self.admin_get(&format!("/api/v1/alerts?{query}"));
        assert_eq!(r.status, Some(200), "{}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("alerts are JSON");
        v["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("no `alerts` list in {v}"))
    }

    /// Asserts that neither the flow log (which must hold records),
    /// stderr nor an alert holds `secret`.
    pub fn assert_never_logged(&self, secret: &str) {
        let flows = std::fs::read_to_string(&self.flows).unwrap_or_default();
        assert!(!flows.is_empty(), "the flow log is empty");
        assert!(!flows.contains(secret), "the flow log holds the secret");
        let err = self.stderr.lock().unwrap().join("\n");
        assert!(!err.contains(secret), "stderr holds the secret");
        let alerts = self.admin_get("/api/v1/alerts").text();
        assert!(!alerts.contains(secret), "an alert holds the secret");
    }

    /// `/readyz` as JSON, with its status code.
    pub fn readyz(&self) -> (Option<u16>, serde_json::Value) {
        let r = self.admin_get("/readyz");
        let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
        (r.status, v)
    }

    /// The value of one sample on `/metrics`, by its exact name and labels
    /// as exposed (`sluice_config_reloads_total{result="failure"}`); absent
    /// samples read as 0.
    pub fn metric(&self, sample: &str) -> f64 {
        let r = self.admin_get("/metrics");
        r.text()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                (k == sample).then(|| v.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts several fields of a flow record at once, naming the field that
/// differs.
pub fn assert_fields(rec: &serde_json::Value, want: &[(&str, serde_json::Value)]) {
    for (k, v) in want {
        assert_eq!(&rec[*k], v, "field {k} of {rec:#}");
    }
}

/// The record's finding of type `kind` (`findings: [{type, count, hash}]`).
pub fn finding<'a>(rec: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    rec["findings"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["type"] == kind))
        .unwrap_or_else(|| panic!("no `{kind}` finding in {rec:#}"))
}
