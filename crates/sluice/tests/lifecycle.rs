//! Rule lifecycle (README "Rule lifecycle"): a rule's `expires` through the
//! real binary — a running gateway stops matching the rule on time, without
//! a reload, and reports it in `/api/v1/rules`, in `sluice_rules_expired`
//! and as a positioned warning; `sluice validate` warns about a rule that
//! has already expired. (`replay` across an expiry is in rollout.rs.)

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
mod util;

use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_testkit::{Origin, Sluice, get_via, poll_until};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use util::{code, scratch_file, sluice, stderr, stdout};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A local zone whose first allow rule (for the origin's port) expires at
/// `expires`; the second rule allows another port and never expires.
fn policy(port: u16, expires: &str) -> String {
    format!(
        "mode: enforce
zones:
  - name: local
    sources: [127.0.0.0/8]
    allow:
      - cidr: 127.0.0.1/32
        ports: [{port}]
        owner: alice
        ticket: OPS-42
        expires: \"{expires}\"
      - cidr: 127.0.0.1/32
        ports: [1]
"
    )
}

fn rules(sluice: &Sluice) -> Vec<Value> {
    let r = sluice.admin_get("/api/v1/rules");
    assert_eq!(r.status, Some(200));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    v["rules"].as_array().unwrap().clone()
}

#[test]
fn a_rule_stops_matching_within_a_second_of_its_expiry_and_is_reported() {
    let origin = Origin::start("127.0.0.1");
    let o = origin.addr;
    let expiry = OffsetDateTime::now_utc() + Duration::from_secs(3);
    let expires = expiry.format(&Rfc3339).unwrap();
    let expiry_at = Instant::now() + Duration::from_secs(3);
    let sluice = Sluice::start(BIN, &policy(o.port(), &expires));
    let url = format!("http://{o}/");

    // Before its time the rule allows, and is listed live, expiring soon.
    let r = get_via(sluice.http, &url);
    assert_eq!(r.status, Some(200), "{}", r.text());
    assert!(
        Instant::now() < expiry_at,
        "the start took too long to test"
    );
    let before = rules(&sluice);
    assert_eq!(before[0]["id"], "local/allow/1");
    assert_eq!(before[0]["owner"], "alice");
    assert_eq!(before[0]["ticket"], "OPS-42");
    assert_eq!(before[0]["expires"], expires.as_str());
    assert_eq!(before[0]["expired"], false);
    assert_eq!(before[0]["expiring_soon"], true);
    assert_eq!(before[1]["expires"], Value::Null);
    assert_eq!(before[1]["expiring_soon"], false);
    assert_eq!(sluice.metric("sluice_rules_expired"), 0.0);

    // After it, the same request is denied within a second.
    while Instant::now() < expiry_at {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut status = None;
    let denied = poll_until(Duration::from_secs(1), || {
        status = get_via(sluice.http, &url).status;
        status == Some(403)
    });
    assert!(denied, "still {status:?} a second after the rule expired");
    let late = expiry_at.elapsed();
    assert!(late <= Duration::from_millis(1200), "denied {late:?} late");

    // Reported: expired in the API (same id; the next rule keeps its id),
    // in the metric, and as a warning at the rule's `expires` position.
    let after = rules(&sluice);
    assert_eq!(after[0]["id"], "local/allow/1");
    assert_eq!(after[0]["expired"], true);
    assert_eq!(after[0]["expiring_soon"], false);
    assert_eq!(after[0]["owner"], "alice");
    assert_eq!(after[1]["id"], "local/allow/2");
    assert_eq!(after[1]["expired"], false);
    assert_eq!(sluice.metric("sluice_rules_expired"), 1.0);
    // The file is `listen:` (3 lines) and `log:` (2) before the policy:
    // `expires:` is on line 15, its value at column 18.
    let want = format!(
        "{}:15:18: warning: rule `local/allow/1` expired at {expires} (owner alice, ticket OPS-42)",
        sluice.config.display()
    );
    assert!(
        sluice.wait_log(&want, Duration::from_secs(2)),
        "{:#?}",
        sluice.stderr.lock().unwrap()
    );
    // Not a reload: nothing counted as one.
    assert_eq!(
        sluice.metric("sluice_config_reloads_total{result=\"failure\"}"),
        0.0
    );
    assert_eq!(sluice.metric("sluice_config_last_reload_success"), 1.0);
}

#[test]
fn validate_warns_about_an_expired_rule_with_its_position() {
    let file = scratch_file(
        "lifecycle-expired.yaml",
        &format!(
            "listen:\n  http: 127.0.0.1:3128\n{}",
            policy(443, "2020-01-01T00:00:00Z")
        ),
    );
    let out = sluice(["validate".as_ref(), "-c".as_ref(), file.as_os_str()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "{}:12:18: warning: rule `local/allow/1` expired at 2020-01-01T00:00:00Z (owner alice, ticket OPS-42): it matches nothing; remove it or move `expires`\n",
            file.display()
        )
    );
    assert!(stdout(&out).ends_with(", 1 warning)\n"), "{}", stdout(&out));
    let strict = sluice([
        "validate".as_ref(),
        "--strict".as_ref(),
        "-c".as_ref(),
        file.as_os_str(),
    ]);
    assert_eq!(code(&strict), 1);
}
