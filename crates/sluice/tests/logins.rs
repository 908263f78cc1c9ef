//! Failed proxy logins (issue 18), through the real binary on loopback:
//! recorded with rule `default/auth-failed` and a reason naming the user
//! that was tried (never the password; `user` stays null), counted in
//! `sluice_auth_failures_total{listener}`, and throttled per source: after
//! five failures within a minute the source's attempts are refused for a
//! minute without running argon2 (HTTP 429 with `Retry-After`, SOCKS5
//! RFC 1929 failure), even with the right password.

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::SocketAddr,
    time::{Duration, Instant},
};

use sluice_testkit::{Origin, Sluice, argon2_hash, connect_with_timeout, curl};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
/// The password the attacker tries: it must appear in no record or log.
const GUESS: &str = "Gu3ss-Hunter2-zz";

/// An RFC 1929 login through raw bytes: the status byte (0 success).
fn socks5_login(socks: SocketAddr, user: &str, pass: &str) -> u8 {
    let mut s = connect_with_timeout(socks, Duration::from_secs(10));
    s.write_all(&[5, 1, 2]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 2], "user/password method");
    let mut msg = vec![1, user.len() as u8];
    msg.extend_from_slice(user.as_bytes());
    msg.push(pass.len() as u8);
    msg.extend_from_slice(pass.as_bytes());
    s.write_all(&msg).unwrap();
    let mut st = [0u8; 2];
    s.read_exact(&mut st).unwrap();
    st[1]
}

#[test]
fn failed_logins_are_recorded_counted_and_throttled_per_source() {
    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let yaml = format!(
        "listen:\n  http: 127.0.0.1:0\n  socks5: 127.0.0.1:0\n  admin: 127.0.0.1:0\n\
         zones:\n  - name: ci\n    users: [ci]\n    mode: enforce\n    allow:\n      \
         - cidr: 127.0.0.1/32\n        ports: [{port}]\n        id: ci-origin\n\
         users:\n  - name: ci\n    password_hash: \"{}\"\n",
        argon2_hash("s3cret-pass")
    );
    let s = Sluice::start(BIN, &yaml);
    let proxy = s.proxy_url();
    let socks = s.socks5.unwrap();
    let url = format!("{}/bytes/8", origin.url());
    let wrong = format!("ci:{GUESS}");

    // Four wrong passwords over HTTP, one over SOCKS5: each checked (407,
    // RFC 1929 status 1), each recorded naming the user.
    let mut checked = Vec::new();
    for _ in 0..4 {
        let t = Instant::now();
        let c = curl(&["-x", &proxy, "--proxy-user", &wrong, &url]);
        checked.push(t.elapsed());
        assert_eq!(c.status, 407, "{c:?}");
        assert!(c.header("proxy-authenticate").is_some(), "{c:?}");
    }
    assert_eq!(socks5_login(socks, "ci", GUESS), 1);
    let recs = s.wait_records(5);
    assert_eq!(recs.len(), 5, "{recs:#?}");
    for r in &recs {
        assert_eq!(r["rule"], "default/auth-failed", "{r:#}");
        assert_eq!(r["verdict"], "deny", "{r:#}");
        assert!(r["user"].is_null(), "nobody was authenticated: {r:#}");
        assert_eq!(
            r["reason"], "proxy authentication failed (user \"ci\")",
            "{r:#}"
        );
    }
    assert_eq!(
        s.metric("sluice_auth_failures_total{listener=\"http\"}"),
        4.0
    );
    assert_eq!(
        s.metric("sluice_auth_failures_total{listener=\"socks5\"}"),
        1.0
    );

    // The source has failed five times within the minute: refused
    // unchecked, even with the right password, over both listeners.
    let t = Instant::now();
    let c = curl(&["-x", &proxy, "--proxy-user", "ci:s3cret-pass", &url]);
    let throttled = t.elapsed();
    assert_eq!(c.status, 429, "{c:?}");
    let retry: u64 = c.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        c.header("sluice-rule").as_deref(),
        Some("default/auth-failed")
    );
    assert!(c.header("proxy-authenticate").is_none(), "{c:?}");
    let t = Instant::now();
    assert_eq!(socks5_login(socks, "ci", "s3cret-pass"), 1);
    let throttled_socks = t.elapsed();
    let fastest_check = checked.iter().min().unwrap();
    eprintln!(
        "checked logins took {checked:?}; throttled: http {throttled:?}, socks5 {throttled_socks:?}"
    );
    // No argon2 ran for them: far quicker than any checked login (curl's
    // own start-up is in both).
    assert!(
        throttled_socks * 4 < *fastest_check,
        "a throttled SOCKS5 login took {throttled_socks:?}, a checked one {fastest_check:?}"
    );
    assert_eq!(origin.hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    let recs = s.wait_records(7);
    for r in &recs[5..] {
        assert_eq!(r["rule"], "default/auth-failed", "{r:#}");
        assert!(r["user"].is_null(), "{r:#}");
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("too many failed proxy logins from this address")
                && reason.ends_with("(user \"ci\")"),
            "{reason}"
        );
    }
    assert_eq!(
        s.metric("sluice_auth_failures_total{listener=\"http\"}"),
        5.0
    );
    assert_eq!(
        s.metric("sluice_auth_failures_total{listener=\"socks5\"}"),
        2.0
    );

    // The password tried is nowhere: not in records, not on stderr.
    let log = std::fs::read_to_string(&s.flows).unwrap();
    assert!(!log.contains(GUESS), "the password is in a flow record");
    assert!(!log.contains("s3cret-pass"));
    let stderr = s.stderr.lock().unwrap().join("\n");
    assert!(
        !stderr.contains(GUESS),
        "the password is on stderr: {stderr}"
    );
}
