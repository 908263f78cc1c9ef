//! The command line as a newcomer meets it: `--help` texts, shell
//! completions and the manual page generated from the clap definitions,
//! `hash-password` (its hash logs a real client in through the proxy), and
//! `run --log-format json`.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
mod util;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_testkit::{Origin, Sluice, TempDir, send_raw};
use util::{code, sluice, stdout};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

#[test]
fn help_describes_the_product_and_run_names_signals_and_outputs() {
    let top = stdout(&sluice(["--help"]));
    assert!(top.contains("egress gateway"), "{top}");
    assert!(
        !top.contains("wiring"),
        "the crate description is gone: {top}"
    );
    for sub in ["hash-password", "completions", "man"] {
        assert!(top.contains(sub), "{sub} in {top}");
    }
    let run = stdout(&sluice(["run", "--help"]));
    for needle in [
        "SIGHUP",
        "SIGUSR1",
        "SIGTERM",
        "RUST_LOG",
        "log.flows",
        "--log-format",
    ] {
        assert!(run.contains(needle), "{needle} in {run}");
    }
    let version = stdout(&sluice(["--version"]));
    assert!(version.contains("(commit "), "{version}");
}

#[test]
fn completions_and_man_page_come_from_the_clap_definitions() {
    let bash = sluice(["completions", "bash"]);
    assert_eq!(code(&bash), 0);
    let script = stdout(&bash);
    assert!(script.contains("_sluice()"), "{script}");
    for sub in [
        "run",
        "validate",
        "check",
        "schema",
        "hash-password",
        "--log-format",
    ] {
        assert!(script.contains(sub), "{sub}");
    }
    let zsh = stdout(&sluice(["completions", "zsh"]));
    assert!(zsh.starts_with("#compdef sluice"), "{zsh}");
    assert_eq!(code(&sluice(["completions", "tcsh"])), 2, "unknown shell");

    let man = sluice(["man"]);
    assert_eq!(code(&man), 0);
    let roff = stdout(&man);
    assert!(roff.contains(".TH sluice 1"), "{roff}");
    assert!(
        roff.contains(".SH NAME") && roff.contains(".SH SUBCOMMANDS"),
        "{roff}"
    );
    assert!(roff.contains("hash\\-password"), "{roff}");
}

/// A password piped in gives a PHC string the proxy accepts for that
/// password and refuses for another.
#[test]
fn hash_password_from_stdin_logs_a_client_in() {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{out:?}");
    let phc = stdout(&out).trim().to_owned();
    assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
    assert_eq!(phc.lines().count(), 1);

    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let yaml = format!(
        "listen:\n  http: 127.0.0.1:0\nusers:\n  - name: alice\n    password_hash: \"{phc}\"\n\
         zones:\n  - name: staff\n    users: [alice]\n    allow:\n      - cidr: 127.0.0.1/32\n        ports: [{port}]\n"
    );
    let s = Sluice::start(BIN, &yaml);
    let get = |basic: &str| {
        let url = format!("{}/bytes/5", origin.url());
        let req = format!(
            "GET {url} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: Basic {basic}\r\nConnection: close\r\n\r\n",
            origin.addr
        );
        send_raw(s.http, req.as_bytes(), Duration::from_secs(10))
    };
    // alice:correct horse, then alice:wrong
    let r = get("YWxpY2U6Y29ycmVjdCBob3JzZQ==");
    assert_eq!(r.status, Some(200), "{}", r.text());
    assert_eq!(get("YWxpY2U6d3Jvbmc=").status, Some(407));

    // Nothing on stdin is a clear error, not a hash of "".
    let out = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty password"));
}

/// `--log-format json`: every stderr line is a JSON object, the start-up
/// line included, and it names each zone's mode (its own or the default).
#[test]
fn run_log_format_json_writes_only_json_lines() {
    let dir = TempDir::new("logjson");
    let cfg = dir.path("sluice.yaml");
    std::fs::write(
        &cfg,
        "listen:\n  http: 127.0.0.1:0\nmode: enforce\nzones:\n  - name: web\n    sources: [127.0.0.0/8]\n  - name: lab\n    sources: [\"::1/128\"]\n    mode: report\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--log-format", "json", "-c"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen: Vec<Value> = Vec::new();
    for line in lines.map_while(Result::ok) {
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let done = v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("policy "));
        seen.push(v);
        if done || Instant::now() > deadline {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let messages: Vec<&str> = seen
        .iter()
        .filter_map(|v| v["fields"]["message"].as_str())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("HTTP proxy listening on 127.0.0.1:")),
        "{seen:?}"
    );
    let policy = messages.iter().find(|m| m.starts_with("policy ")).unwrap();
    assert!(
        policy.contains("web enforce") && policy.contains("lab report"),
        "{policy}"
    );
    assert!(
        seen.iter()
            .all(|v| v["level"].is_string() && v["timestamp"].is_string())
    );
}

/// `--log-format text` (the default) is one format too: start-up lines,
/// configuration warnings and tracing's events (the drain) all read
/// `sluice: [level: ]message`, with no other shape on stderr.
#[test]
fn run_log_format_text_writes_one_line_shape() {
    let mut sluice = Sluice::start(
        BIN,
        "listen:\n  http: 127.0.0.1:0\nzones:\n  - name: web\n    sources: [127.0.0.0/8]\n    allow:\n      - host: localhost\n        ports: [80]\n",
    );
    sluice.signal("TERM");
    assert_eq!(sluice.wait_exit(Duration::from_secs(20)), Some(0));
    let lines = sluice.stderr.lock().unwrap().clone();
    for line in &lines {
        assert!(
            line.starts_with("sluice: "),
            "a line of another shape: {line:?} in {lines:#?}"
        );
    }
    // A configuration warning and tracing's events are among them.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("sluice: warning: ") && l.contains("localhost")),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l.contains("draining")), "{lines:#?}");
}
