//! The rollout loop as an operator runs it (README "Rolling out a policy"):
//! `sluice learn` on a recorded day, `sluice validate` on its proposal, and
//! `sluice replay` of policies against the same day — the built binary,
//! real files, exit codes, exact output.
//!
//! The recorded day is written here as JSON lines of the flow record: what
//! `CURRENT` below decided for each flow (`replay` of `CURRENT` itself
//! reports nothing changed, which checks that the day is consistent).

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

// `workspace_root` is for other suites.
#[allow(dead_code)]
mod util;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use util::{code, fixture, scratch_file, sluice, stderr, stdout};

const CURRENT: &str = "\
listen:
  http: 127.0.0.1:3128
  admin: 127.0.0.1:9901
mode: enforce
zones:
  - name: web
    sources: [10.0.1.0/24]
    mode: report
    allow:
      - host: api.github.com
        ports: [443]
    deny:
      - host: \"*.pastebin.com\"
        id: no-paste
  - name: ci
    sources: [10.0.2.0/24]
    allow:
      - host: static.crates.io
        ports: [443]
      - host: index.crates.io
        ports: [443]
";

/// One record as the flow log writes it (every field present).
#[allow(clippy::too_many_arguments)]
fn rec(
    zone: Option<&str>,
    src: &str,
    host: Option<&str>,
    ip: Option<&str>,
    port: u16,
    verdict: &str,
    enforced: bool,
    rule: &str,
    bytes: (u64, u64),
    hour: u32,
) -> Value {
    let mode = match zone {
        Some("web") => json!("report"),
        Some(_) => json!("enforce"),
        None => Value::Null,
    };
    json!({
        "ts": format!("2026-12-01T{hour:02}:00:01.000Z"),
        "start": format!("2026-12-01T{hour:02}:00:00.000Z"),
        "duration_ms": 1000,
        "id": format!("r{hour}{port}"),
        "listener": "http",
        "protocol": "connect",
        "src": format!("{src}:40000"),
        "user": null,
        "zone": zone,
        "mode": mode,
        "dst_host": host,
        "dst_ip": ip,
        "dst_port": port,
        "sni": null, "original_dst": null, "grant": null, "method": null,
        "status": null, "qtype": null, "answers": null,
        "verdict": verdict,
        "enforced": enforced,
        "rule": rule,
        "reason": "",
        "bytes_out": bytes.0,
        "bytes_in": bytes.1,
        "route": null,
        "policy_hash": "abc",
        "error": null,
        "error_kind": null,
    })
}

const WEB: &str = "10.0.1.7";
const CI: &str = "10.0.2.9";
const PUB: &str = "93.184.216.34";

/// A mixed day: two zones, names worth a wildcard and names that are not,
/// public-suffix traps, report-mode would-be denials, guard denials, a deny
/// rule's would-be denials, DNS queries and bad requests.
fn day() -> Vec<Value> {
    let mut v = Vec::new();
    // Allowed by web's rule: 5 flows.
    for h in 1..=5 {
        v.push(rec(
            Some("web"),
            WEB,
            Some("api.github.com"),
            Some(PUB),
            443,
            "allow",
            true,
            "web/allow/1",
            (100, 1000),
            h,
        ));
    }
    // Would-be denials by the default: three names below example.org
    // (a wildcard), two below example.net (not enough).
    for (name, port) in [
        ("a.example.org", 443),
        ("b.example.org", 443),
        ("c.example.org", 8443),
        ("x.example.net", 443),
        ("y.example.net", 443),
    ] {
        v.push(rec(
            Some("web"),
            WEB,
            Some(name),
            Some(PUB),
            port,
            "deny",
            false,
            "default",
            (10, 20),
            6,
        ));
    }
    // Public-suffix traps: many names whose registrable domain is the name.
    for name in [
        "alice.github.io",
        "bob.github.io",
        "carol.github.io",
        "dave.github.io",
        "shop.co.uk",
        "news.co.uk",
        "mail.co.uk",
    ] {
        v.push(rec(
            Some("web"),
            WEB,
            Some(name),
            Some(PUB),
            443,
            "deny",
            false,
            "default",
            (1, 2),
            7,
        ));
    }
    // Addresses without a name.
    v.push(rec(
        Some("web"),
        WEB,
        None,
        Some(PUB),
        8080,
        "deny",
        false,
        "default",
        (5, 5),
        8,
    ));
    v.push(rec(
        Some("web"),
        WEB,
        None,
        Some("2606:4700::1111"),
        443,
        "deny",
        false,
        "default",
        (5, 5),
        9,
    ));
    // A deny rule's would-be denial and a guard denial: never learned.
    v.push(rec(
        Some("web"),
        WEB,
        Some("up.pastebin.com"),
        Some(PUB),
        443,
        "deny",
        false,
        "no-paste",
        (3, 3),
        10,
    ));
    v.push(rec(
        Some("web"),
        WEB,
        None,
        Some("127.0.0.1"),
        22,
        "deny",
        true,
        "guard/special-address",
        (0, 0),
        10,
    ));
    // ci, enforced: two allowed names, one denial (never dialed).
    for h in [11, 12] {
        v.push(rec(
            Some("ci"),
            CI,
            Some("static.crates.io"),
            Some(PUB),
            443,
            "allow",
            true,
            "ci/allow/1",
            (7, 70),
            h,
        ));
    }
    v.push(rec(
        Some("ci"),
        CI,
        Some("index.crates.io"),
        Some(PUB),
        443,
        "allow",
        true,
        "ci/allow/2",
        (7, 70),
        13,
    ));
    v.push(rec(
        Some("ci"),
        CI,
        Some("evil.example.com"),
        None,
        443,
        "deny",
        true,
        "default",
        (0, 0),
        14,
    ));
    // A DNS query, a bad request and a source in no zone.
    let mut q = rec(
        Some("ci"),
        CI,
        Some("dns-only.example.com"),
        None,
        53,
        "allow",
        true,
        "default",
        (0, 0),
        15,
    );
    q["listener"] = json!("dns");
    q["protocol"] = json!("dns");
    q["dst_port"] = Value::Null;
    v.push(q);
    v.push(rec(
        None,
        WEB,
        None,
        None,
        0,
        "deny",
        true,
        "default/bad-request",
        (0, 0),
        16,
    ));
    v.push(rec(
        None,
        "10.9.9.9",
        Some("a.example.org"),
        None,
        443,
        "deny",
        true,
        "default/no-zone",
        (0, 0),
        16,
    ));
    v
}

fn write_records(name: &str, records: &[Value]) -> PathBuf {
    let mut text = String::new();
    for r in records {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    scratch_file(name, &text)
}

fn learn(args: &[&str]) -> std::process::Output {
    sluice(std::iter::once("learn").chain(args.iter().copied()))
}

fn replay_json(config: &Path, records: &Path) -> (i32, Value) {
    let out = sluice([
        "replay".as_ref(),
        "--json".as_ref(),
        "-c".as_ref(),
        config.as_os_str(),
        records.as_os_str(),
    ]);
    let v = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    (code(&out), v)
}

/// The `host:` and `cidr:` values of allow rules, in order.
fn rule_values(yaml: &str, key: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("- {key}: ")))
        .map(|s| s.trim_matches('"').to_owned())
        .collect()
}

#[test]
fn learn_proposes_a_valid_least_privilege_policy_from_a_mixed_day() {
    let current = scratch_file("rollout-current.yaml", CURRENT);
    let records = write_records("rollout-day.jsonl", &day());
    let c = current.to_str().unwrap();
    let r = records.to_str().unwrap();
    let out = learn(&["-c", c, r]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let proposal = stdout(&out);

    // Exactly the names seen, one wildcard where the evidence supports it,
    // none over a public suffix; the deny rule kept, nothing from the guard,
    // the enforced denial, the deny rule's would-be denial or the DNS query.
    assert_eq!(
        rule_values(&proposal, "host"),
        [
            "api.github.com",
            "alice.github.io",
            "bob.github.io",
            "carol.github.io",
            "dave.github.io",
            "x.example.net",
            "y.example.net",
            "*.example.org",
            "mail.co.uk",
            "news.co.uk",
            "shop.co.uk",
            "*.pastebin.com",
            "index.crates.io",
            "static.crates.io",
        ],
        "{proposal}"
    );
    assert_eq!(
        rule_values(&proposal, "cidr"),
        ["93.184.216.34/32", "2606:4700::1111/128"],
        "{proposal}"
    );
    for w in rule_values(&proposal, "host")
        .iter()
        .filter(|h| h.starts_with("*."))
    {
        assert!(
            ["*.example.org", "*.pastebin.com"].contains(&w.as_str()),
            "wildcard {w}"
        );
    }
    // Evidence comments, ports as seen, sources and modes kept.
    assert!(
        proposal.contains(
            "      # 5 flows, 500 bytes out, 5000 bytes in, first 2026-12-01T01:00:00.000Z, last 2026-12-01T05:00:01.000Z\n      - host: \"api.github.com\"\n        ports: [443]\n"
        ),
        "{proposal}"
    );
    assert!(
        proposal.contains(
            "      # 3 flows, 30 bytes out, 60 bytes in, first 2026-12-01T06:00:00.000Z, last 2026-12-01T06:00:01.000Z, 3 distinct names below example.org\n      - host: \"*.example.org\"\n        ports: [443, 8443]\n"
        ),
        "{proposal}"
    );
    assert!(
        proposal.contains("      - cidr: \"93.184.216.34/32\"\n        ports: [8080]\n"),
        "{proposal}"
    );
    assert!(
        proposal.contains("  - name: \"web\"\n    sources: [\"10.0.1.0/24\"]\n    mode: report\n"),
        "{proposal}"
    );
    assert!(
        proposal.contains("listen:\n  http: \"127.0.0.1:3128\"\n  admin: \"127.0.0.1:9901\"\n")
    );
    assert!(proposal.contains("# 28 records, 22 learned from; not learned from: 1 dns queries, 1 guard denials, 1 enforced denials, 1 would-be denials by a deny rule, 2 without a decision."), "{proposal}");
    for absent in [
        "evil.example.com",
        "up.pastebin.com",
        "127.0.0.1/32",
        "dns-only",
    ] {
        assert!(!proposal.contains(absent), "{absent} in\n{proposal}");
    }

    // `sluice validate` accepts it.
    let file = scratch_file("rollout-proposal.yaml", &proposal);
    let v = sluice(["validate".as_ref(), "-c".as_ref(), file.as_os_str()]);
    assert_eq!(code(&v), 0, "{}\n{proposal}", stderr(&v));

    // Deterministic: the same records in another order, the same file.
    let mut reversed = day();
    reversed.reverse();
    let records2 = write_records("rollout-day-reversed.jsonl", &reversed);
    let again = learn(&["-c", c, records2.to_str().unwrap()]);
    assert_eq!(
        stdout(&again),
        proposal.replace(r, records2.to_str().unwrap())
    );

    // Replay of the proposal against the same day: no allowed flow is newly
    // denied; the report-mode would-be denials it learned are newly allowed.
    let (exit, report) = replay_json(&file, &records);
    assert_eq!(exit, 1, "{report:#}");
    assert_eq!(report["newly_denied"], json!([]), "{report:#}");
    let allowed: u64 = report["newly_allowed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["flows"].as_u64().unwrap())
        .sum();
    assert_eq!(allowed, 14, "{report:#}");
    // api.github.com, the guard, the deny rule, ci's denial; ci's two
    // allow rules swapped places (sorted by name).
    assert_eq!(report["unchanged"], 5 + 1 + 1 + 1, "{report:#}");
    assert_eq!(report["rule_changed"], 3, "{report:#}");
}

#[test]
fn learn_zone_min_count_and_the_default_base() {
    let current = scratch_file("rollout-current-2.yaml", CURRENT);
    // A record naming a zone that is no zone name (it would break the file).
    let mut records = day();
    records.push(rec(
        Some("ops\n    allow: any"),
        "10.3.3.3",
        Some("a.example.org"),
        Some(PUB),
        443,
        "allow",
        true,
        "x",
        (0, 0),
        17,
    ));
    let records = write_records("rollout-day-2.jsonl", &records);
    let c = current.to_str().unwrap();
    let r = records.to_str().unwrap();

    // --zone ci: web is kept as it is; ci learned; min-count 2 leaves
    // index.crates.io (one flow) out, in a comment.
    let out = learn(&["-c", c, "--zone", "ci", "--min-count", "2", r]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let p = stdout(&out);
    assert_eq!(
        rule_values(&p, "host"),
        ["api.github.com", "*.pastebin.com", "static.crates.io"],
        "{p}"
    );
    assert!(p.contains("    # left out (fewer than 2 flows): index.crates.io ports [443]; 1 flow, 7 bytes out, 70 bytes in, first 2026-12-01T13:00:00.000Z, last 2026-12-01T13:00:01.000Z\n"), "{p}");

    // Without -c: the embedded default's listeners and zone; zones seen in
    // the records get the sources they were seen from.
    let out = learn(&[r]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let p = stdout(&out);
    assert!(
        p.contains(
            "  - name: \"local\"\n    sources: [\"127.0.0.0/8\", \"::1/128\"]\n    mode: report\n"
        ),
        "{p}"
    );
    assert!(
        p.contains("  - name: \"ci\"\n    sources: [\"10.0.2.9/32\"]\n"),
        "{p}"
    );
    assert!(
        p.contains("  - name: \"web\"\n    sources: [\"10.0.1.7/32\"]\n"),
        "{p}"
    );
    assert!(
        p.contains(
            "  # a zone named \"ops\\n    allow: any\" was seen: not a zone name, left out\n"
        ),
        "{p}"
    );
    let file = scratch_file("rollout-proposal-default.yaml", &p);
    let v = sluice(["validate".as_ref(), "-c".as_ref(), file.as_os_str()]);
    assert_eq!(code(&v), 0, "{}\n{p}", stderr(&v));

    // Bad input: a clear error naming the line, exit 2.
    let bad = scratch_file("rollout-bad.jsonl", "{\"ts\": 1}\n");
    let out = learn(&[bad.to_str().unwrap()]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("rollout-bad.jsonl:1: not a flow record"),
        "{}",
        stderr(&out)
    );
    let out = learn(&["--zone", "nope", r]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("zone `nope`"), "{}", stderr(&out));
}

#[test]
fn replay_reports_exact_changes_and_exit_codes() {
    let records = write_records("replay-day.jsonl", &day());
    let r = records.to_str().unwrap();

    // The policy that decided the day: nothing changes, exit 0.
    let current = scratch_file("replay-current.yaml", CURRENT);
    let (exit, report) = replay_json(&current, &records);
    assert_eq!(exit, 0, "{report:#}");
    assert_eq!(
        report,
        json!({
            "records": 28,
            "judged": 25,
            "unchanged": 25,
            "rule_changed": 0,
            "not_replayed": {"dns": 1, "no_decision": 2, "outside_policy": 0},
            "newly_denied": [],
            "newly_allowed": [],
        })
    );
    let out = sluice(["replay", "-c", current.to_str().unwrap(), r]);
    assert_eq!(code(&out), 0);
    assert!(
        stdout(&out).ends_with("nothing changes\n"),
        "{}",
        stdout(&out)
    );

    // Tightened: web loses api.github.com (5 would-be denials now), ci
    // denies static.crates.io (2 enforced denials).
    let tight = CURRENT
        .replace(
            "      - host: api.github.com\n        ports: [443]\n",
            "      - host: www.github.com\n        ports: [443]\n",
        )
        .replace("      - host: static.crates.io\n        ports: [443]\n", "");
    let tight = scratch_file("replay-tight.yaml", &tight);
    let (exit, report) = replay_json(&tight, &records);
    assert_eq!(exit, 1, "{report:#}");
    assert_eq!(
        report["newly_denied"],
        json!([
            {"zone": "ci", "rule": "default", "enforced": true, "flows": 2, "bytes_out": 14, "bytes_in": 140,
             "was": ["ci/allow/1"], "examples": ["static.crates.io:443"]},
            {"zone": "web", "rule": "default", "enforced": false, "flows": 5, "bytes_out": 500, "bytes_in": 5000,
             "was": ["web/allow/1"], "examples": ["api.github.com:443"]},
        ])
    );
    assert_eq!(report["newly_allowed"], json!([]));
    // index.crates.io is now ci/allow/1: same verdict, another rule.
    assert_eq!(report["rule_changed"], 1);
    let out = sluice(["replay", "-c", tight.to_str().unwrap(), r]);
    assert_eq!(code(&out), 1);
    let table = stdout(&out);
    assert!(table.contains("\nCHANGE                 ZONE  RULE     FLOWS  BYTES_OUT  BYTES_IN  WAS          EXAMPLES\n"), "{table}");
    assert!(table.contains("\nnewly-denied           ci    default  2      14         140       ci/allow/1   static.crates.io:443\n"), "{table}");
    assert!(table.contains("\nnewly-denied (report)  web   default  5      500        5000      web/allow/1  api.github.com:443\n"), "{table}");

    // Loosened: ci allows *.example.com and the address 93.184.216.34 on
    // 8080 for web.
    let loose = CURRENT.replace(
        "      - host: index.crates.io\n        ports: [443]\n",
        "      - host: index.crates.io\n        ports: [443]\n      - host: \"*.example.com\"\n        ports: [443]\n        id: ci-example\n",
    ).replace(
        "      - host: api.github.com\n        ports: [443]\n",
        "      - host: api.github.com\n        ports: [443]\n      - cidr: 93.184.216.34/32\n        ports: [8080]\n",
    );
    let loose = scratch_file("replay-loose.yaml", &loose);
    let (exit, report) = replay_json(&loose, &records);
    assert_eq!(exit, 1, "{report:#}");
    assert_eq!(report["newly_denied"], json!([]));
    assert_eq!(
        report["newly_allowed"],
        json!([
            {"zone": "ci", "rule": "ci-example", "enforced": true, "flows": 1, "bytes_out": 0, "bytes_in": 0,
             "was": ["default"], "examples": ["evil.example.com:443"]},
            {"zone": "web", "rule": "web/allow/2", "enforced": true, "flows": 1, "bytes_out": 5, "bytes_in": 5,
             "was": ["default"], "examples": ["93.184.216.34:8080"]},
        ])
    );

    // Usage and configuration errors: exit 2.
    let out = sluice(["replay", "-c", fixture("invalid.yaml").to_str().unwrap(), r]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let out = sluice(["replay", "-c", "/nonexistent/sluice.yaml", r]);
    assert_eq!(code(&out), 2);
    let out = sluice(["replay", "-c", current.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "records are required");
    let out = sluice([
        "replay",
        "-c",
        current.to_str().unwrap(),
        "/nonexistent/flows.jsonl",
    ]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("/nonexistent/flows.jsonl: cannot open"),
        "{}",
        stderr(&out)
    );
}

/// The loop on records the real gateway wrote: traffic through `sluice run`
/// (a lifted loopback origin by name and by address, a guard denial, a bad
/// request), then `learn` on its flow log, `validate`, and `replay`.
#[test]
fn learn_and_replay_read_the_real_flow_log() {
    use std::time::Duration;

    use sluice_testkit::{Origin, Sluice, curl, send_raw};

    let origin = Origin::start("127.0.0.1");
    let port = origin.addr.port();
    let yaml = format!(
        "zones:\n  - name: dev\n    sources: [127.0.0.0/8]\n    mode: report\n    allow:\n      - cidr: 127.0.0.1/32\n        ports: [{port}]\n"
    );
    let s = Sluice::start(env!("CARGO_BIN_EXE_sluice"), &yaml);
    let proxy = s.proxy_url();
    for url in [
        format!("http://localhost:{port}/bytes/10"),
        format!("http://127.0.0.1:{port}/bytes/20"),
    ] {
        assert_eq!(curl(&["-x", &proxy, &url]).status, 200, "{url}");
    }
    let denied = curl(&["-x", &proxy, &format!("http://127.0.0.2:{port}/")]);
    assert_eq!(denied.status, 403);
    let bad = send_raw(s.http, b"NONSENSE\r\n\r\n", Duration::from_secs(10));
    assert_eq!(bad.status, Some(400));
    let recs = s.wait_records(4);
    assert_eq!(recs.len(), 4, "{recs:#?}");

    let flows = s.flows.to_str().unwrap();
    let out = learn(&["-c", s.config.to_str().unwrap(), flows]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let p = stdout(&out);
    // The name, and its loopback address as a cidr rule (a host rule never
    // lifts the guard); nothing from the guard denial or the bad request.
    assert_eq!(rule_values(&p, "host"), ["localhost"], "{p}");
    assert_eq!(rule_values(&p, "cidr"), ["127.0.0.1/32"], "{p}");
    assert!(p.contains("# 4 records, 2 learned from; not learned from: 0 dns queries, 1 guard denials, 0 enforced denials, 0 would-be denials by a deny rule, 1 without a decision."), "{p}");
    let file = scratch_file("rollout-live-proposal.yaml", &p);
    let v = sluice(["validate".as_ref(), "-c".as_ref(), file.as_os_str()]);
    assert_eq!(code(&v), 0, "{}\n{p}", stderr(&v));

    let (exit, report) = replay_json(&file, &s.flows);
    assert_eq!(exit, 0, "{report:#}");
    assert_eq!(report["judged"], 3, "{report:#}");
    assert_eq!(report["not_replayed"]["no_decision"], 1, "{report:#}");
    assert_eq!(report["newly_denied"], json!([]), "{report:#}");
}

#[test]
fn replay_judges_a_rule_expiry_at_each_records_time() {
    // ci/allow/1 expires at 02:30: the flows of 01:00 and 02:00 stay
    // allowed, those of 03:00 and 04:00 are newly denied; ci/allow/2 keeps
    // its id, so its flow at 13:00 is unchanged.
    let mut v = Vec::new();
    for h in 1..=4 {
        v.push(rec(
            Some("ci"),
            CI,
            Some("static.crates.io"),
            Some(PUB),
            443,
            "allow",
            true,
            "ci/allow/1",
            (7, 70),
            h,
        ));
    }
    v.push(rec(
        Some("ci"),
        CI,
        Some("index.crates.io"),
        Some(PUB),
        443,
        "allow",
        true,
        "ci/allow/2",
        (7, 70),
        13,
    ));
    let records = write_records("replay-expiry.jsonl", &v);
    let expiring = CURRENT.replace(
        "      - host: static.crates.io\n        ports: [443]\n",
        "      - host: static.crates.io\n        ports: [443]\n        expires: 2026-12-01T02:30:00Z\n",
    );
    let config = scratch_file("replay-expiry.yaml", &expiring);
    let (exit, report) = replay_json(&config, &records);
    assert_eq!(exit, 1, "{report:#}");
    assert_eq!(report["judged"], 5);
    assert_eq!(report["unchanged"], 3);
    assert_eq!(
        report["newly_denied"],
        json!([
            {"zone": "ci", "rule": "default", "enforced": true, "flows": 2, "bytes_out": 14, "bytes_in": 140,
             "was": ["ci/allow/1"], "examples": ["static.crates.io:443"]},
        ])
    );
}
