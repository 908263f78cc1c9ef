//! `sluice run` start-up choices: which listeners a file may leave out.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sluice_testkit::TempDir;

#[test]
fn a_file_without_any_listener_is_refused_with_a_clear_error() {
    let dir = TempDir::new("nolisten");
    let cfg = dir.path("sluice.yaml");
    std::fs::write(&cfg, "zones: []\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no listener configured"), "{err}");
}

#[test]
fn a_dns_only_gateway_starts_without_the_http_proxy() {
    let dir = TempDir::new("dnsonly");
    let cfg = dir.path("sluice.yaml");
    std::fs::write(
        &cfg,
        "listen:\n  dns: 127.0.0.1:0\ndns:\n  upstreams: [127.0.0.1:9]\nzones:\n  - name: local\n    sources: [127.0.0.0/8]\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "-c"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    for line in lines.map_while(Result::ok) {
        let done = line.starts_with("sluice: policy ");
        seen.push(line);
        if done || Instant::now() > deadline {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter()
            .any(|l| l.starts_with("sluice: DNS listening on 127.0.0.1:")),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|l| l.contains("HTTP proxy listening")),
        "{seen:?}"
    );
}

/// The loader's warnings are logged, positioned, when the gateway starts and
/// again when a reload loads a file that has them.
#[test]
fn warnings_are_logged_at_start_and_on_reload() {
    use sluice_testkit::Sluice;
    const T: Duration = Duration::from_secs(10);
    let zone = |host: &str| {
        format!(
            "zones:\n  - name: a\n    sources: [127.0.0.0/8]\n    allow:\n      - host: \"{host}\"\n        ports: 443\n"
        )
    };
    let sluice = Sluice::start(env!("CARGO_BIN_EXE_sluice"), &zone("*.com"));
    let file = sluice.config.display().to_string();
    assert!(
        sluice.wait_log(
            &format!(
                "{file}:10:15: warning: `*.com` allows every name under the public suffix `com`"
            ),
            T
        ),
        "{:?}",
        sluice.stderr.lock().unwrap()
    );
    let text = std::fs::read_to_string(&sluice.config)
        .unwrap()
        .replace("*.com", "localhost");
    std::fs::write(&sluice.config, text).unwrap();
    sluice.signal("HUP");
    assert!(
        sluice.wait_log(
            &format!("{file}:10:15: warning: `localhost` only ever means loopback"),
            T
        ),
        "{:?}",
        sluice.stderr.lock().unwrap()
    );
    assert!(sluice.wait_log("policy reloaded", T));
}
