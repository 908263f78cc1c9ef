//! The DNS forwarder's questions to the policy, ports aside: verdicts,
//! no zone and report mode, CNAME chain names, answer addresses and the
//! guard, cidr-only zones, decisions of another version (moved here from
//! the in-file test module of `policy::dns`).

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use sluice_policy::{Pending, Policy, Verdict, ids};

const YAML: &str = r#"
zones:
  - name: web
    sources: [10.0.1.0/24]
    allow:
      - host: api.example.com
        ports: [443]
      - host: "*.cdn.example.net"
        ports: [443]
        id: cdn
      - cidr: 10.20.0.0/16
        ports: [5432]
    deny:
      - host: "*.evil.example.net"
      - host: mail.example.com
        ports: [25]
  - name: nets
    sources: [10.0.2.0/24]
    allow:
      - cidr: 198.51.100.0/24
        ports: [443]
      - host: git.example.com
        ports: [22]
    deny:
      - cidr: 45.0.0.0/8
  - name: lab
    sources: [10.0.3.0/24]
    mode: open
    deny:
      - host: "*.pastebin.com"
  - name: trial
    sources: [10.0.4.0/24]
    mode: report
    allow:
      - host: api.example.com
        ports: [443]
"#;

fn policy() -> Policy {
    Policy::load(YAML, "t.yaml").unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn verdicts_ports_aside() {
    let p = policy();
    let v = |zone: &str, name: &str| {
        let (v, r) = p.dns_verdict(zone, name).unwrap();
        (v, r.to_string())
    };
    assert_eq!(
        v("web", "api.example.com"),
        (Verdict::Allow, "web/allow/1".into())
    );
    assert_eq!(
        v("web", "img.cdn.example.net"),
        (Verdict::Allow, "cdn".into())
    );
    assert_eq!(
        v("web", "cdn.example.net"),
        (Verdict::Deny, "default".into())
    );
    assert_eq!(
        v("web", "a.evil.example.net"),
        (Verdict::Deny, "web/deny/1".into())
    );
    // A deny of one port does not deny the name.
    assert_eq!(v("web", "mail.example.com").1, "default");
    assert_eq!(
        v("web", "localhost"),
        (Verdict::Deny, ids::GUARD_SPECIAL_NAME.into())
    );
    assert_eq!(
        v("lab", "anything.example.org"),
        (Verdict::Allow, "default".into())
    );
    assert_eq!(
        v("lab", "x.pastebin.com"),
        (Verdict::Deny, "lab/deny/1".into())
    );
    assert!(p.dns_verdict("nope", "api.example.com").is_none());
}

#[test]
fn no_zone_and_report_mode() {
    let p = policy();
    let d = p.dns_decide(ip("192.0.2.9"), "api.example.com");
    assert_eq!(&*d.rule, ids::NO_ZONE);
    assert!(!d.passes());
    let d = p.dns_decide(ip("10.0.4.1"), "other.example.org");
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(!d.enforced);
    assert!(d.passes());
}

#[test]
fn chain_names_meet_deny_rules_only() {
    let p = policy();
    let d = p.dns_decide(ip("10.0.1.1"), "api.example.com");
    assert!(p.dns_chain_check(&d, "edge.unlisted.example.org").is_none());
    let cut = p.dns_chain_check(&d, "x.evil.example.net").unwrap();
    assert_eq!(&*cut.rule, "web/deny/1");
    assert!(!cut.passes());
    assert!(p.dns_chain_check(&d, "localhost").is_some());
    let trial = p.dns_decide(ip("10.0.4.1"), "api.example.com");
    assert!(p.dns_chain_check(&trial, "anything.example.org").is_none());
}

#[test]
fn answer_addresses_pass_the_guard_unless_lifted() {
    let p = policy();
    let d = p.dns_decide(ip("10.0.1.1"), "api.example.com");
    let c = p.dns_check_addresses(
        &d,
        &[
            ip("93.184.216.34"),
            ip("127.0.0.1"),
            ip("10.20.1.1"),
            ip("::ffff:192.168.1.1"),
        ],
    );
    assert_eq!(c.allowed, [ip("93.184.216.34"), ip("10.20.1.1")]);
    assert_eq!(c.rejected.len(), 2);
    assert!(c.rejected.iter().all(|r| &*r.rule == ids::GUARD_SPECIAL));
    assert_eq!(c.decision.verdict, Verdict::Allow);
    let c = p.dns_check_addresses(&d, &[ip("169.254.169.254")]);
    assert!(c.allowed.is_empty());
    assert_eq!(&*c.decision.rule, ids::GUARD_SPECIAL);
    assert!(!c.decision.passes());
    // No addresses (NODATA): the decision stands.
    let c = p.dns_check_addresses(&d, &[]);
    assert_eq!(c.decision.verdict, Verdict::Allow);
}

#[test]
fn cidr_zones_resolve_names_for_addresses_inside_allow_blocks() {
    let p = policy();
    let d = p.dns_decide(ip("10.0.2.1"), "service.example.org");
    assert_eq!(d.pending, Pending::CidrAllow);
    let c = p.dns_check_addresses(&d, &[ip("198.51.100.7"), ip("93.184.216.34")]);
    // 198.51.100.0/24 (TEST-NET-2) lies inside special space: the rule
    // lifts the guard as well.
    assert_eq!(c.allowed, [ip("198.51.100.7")]);
    assert_eq!(&*c.decision.rule, "nets/allow/1");
    assert_eq!(c.decision.verdict, Verdict::Allow);
    let c = p.dns_check_addresses(&d, &[ip("93.184.216.34")]);
    assert!(c.allowed.is_empty());
    assert_eq!(&*c.decision.rule, ids::DEFAULT);
    let git = p.dns_decide(ip("10.0.2.1"), "git.example.com");
    let c = p.dns_check_addresses(&git, &[ip("45.1.2.3"), ip("93.184.216.34")]);
    assert_eq!(c.allowed, [ip("93.184.216.34")]);
    assert_eq!(&*c.rejected[0].rule, "nets/deny/1");
}

#[test]
fn decisions_of_another_version_are_not_trusted() {
    let p = policy();
    let other = Policy::load(
        "zones:\n  - name: web\n    sources: [10.0.1.0/24]\n",
        "o.yaml",
    )
    .unwrap();
    let d = other.dns_decide(ip("10.0.1.1"), "x.evil.example.net");
    assert!(p.dns_chain_check(&d, "x.evil.example.net").is_none());
    let c = p.dns_check_addresses(&d, &[ip("93.184.216.34")]);
    assert!(c.allowed.is_empty());
}

#[test]
fn enforced_denials_reject_every_address() {
    let p = policy();
    let d = p.dns_decide(ip("10.0.1.1"), "a.evil.example.net");
    let c = p.dns_check_addresses(&d, &[ip("93.184.216.34")]);
    assert!(c.allowed.is_empty());
    assert_eq!(&*c.decision.rule, "web/deny/1");
}

#[test]
fn special_use_names_are_never_forwarded_for_cidr_rules_or_open_mode() {
    let p = Policy::load(
        r#"
zones:
  - name: web
    sources: [10.0.1.0/24]
    allow:
      - cidr: 10.20.0.0/16
        ports: [5432]
      - host: metadata.google.internal
        ports: [80]
      - host: "*.ec2.internal"
        ports: [443]
    deny:
      - host: "*.denied.internal"
  - name: lab
    sources: [10.0.3.0/24]
    mode: open
  - name: trial
    sources: [10.0.4.0/24]
    mode: report
"#,
        "t.yaml",
    )
    .unwrap();
    for (zone, src) in [
        ("web", "10.0.1.1"),
        ("lab", "10.0.3.1"),
        ("trial", "10.0.4.1"),
    ] {
        for name in [
            "localhost",
            "a.localhost",
            "x.local",
            "x.invalid",
            "x.onion",
            "x.alt",
            "x.internal",
            "nas.home.arpa",
            "home.arpa",
            "4.3.2.10.in-addr.arpa",
        ] {
            let d = p.dns_decide(ip(src), name);
            assert_eq!(&*d.rule, ids::GUARD_SPECIAL_NAME, "{zone} {name}");
            assert!(!d.passes(), "{zone} {name}: never forwarded");
            assert_eq!(d.pending, Pending::Nothing, "{zone} {name}");
        }
    }
    let d = p.dns_decide(ip("10.0.1.1"), "metadata.google.internal");
    assert!(d.passes());
    assert_eq!(&*d.rule, "web/allow/2");
    assert!(
        p.dns_decide(ip("10.0.1.1"), "ip-10-0-0-1.ec2.internal")
            .passes()
    );
    let d = p.dns_decide(ip("10.0.1.1"), "a.denied.internal");
    assert_eq!(&*d.rule, "web/deny/1");
    // Public names are unchanged: pending on the cidr rule.
    let d = p.dns_decide(ip("10.0.1.1"), "db.example.com");
    assert_eq!(d.pending, Pending::CidrAllow);
    // A CNAME into a special-use name cuts the chain.
    let d = p.dns_decide(ip("10.0.1.1"), "metadata.google.internal");
    let cut = p.dns_chain_check(&d, "x.onion").unwrap();
    assert_eq!(&*cut.rule, ids::GUARD_SPECIAL_NAME);
}
