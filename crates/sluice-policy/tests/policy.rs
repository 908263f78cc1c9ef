//! The compiled policy: the rule list in application order, decisions
//! from another policy version, and IPv4 deny rules matching embedded IPv6
//! forms (moved here from the in-file test modules of `policy`).

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use sluice_policy::{Destination, Policy, Request, Verdict};

#[test]
fn rules_lists_every_rule_in_application_order() {
    let p = Policy::load(
        "zones:\n  - name: web\n    sources: [10.0.0.0/8]\n    allow:\n      - host: a.test\n        ports: [443]\n        id: a-rule\n      - cidr: 198.51.100.0/24\n        ports: any\n    deny:\n      - host: \"*.bad.test\"\n  - name: ci\n    sources: [192.168.0.0/16]\n",
        "t.yaml",
    )
    .unwrap();
    let got: Vec<_> = p
        .rules()
        .map(|r| (r.id, r.zone, r.kind, r.text, r.explicit_id))
        .collect();
    assert_eq!(
        got,
        [
            ("web/deny/1", "web", "deny", "host *.bad.test", false),
            ("a-rule", "web", "allow", "host a.test ports [443]", true),
            ("web/allow/2", "web", "allow", "cidr 198.51.100.0/24", false),
        ]
    );
}

// === versions ===

#[test]
fn decision_from_another_version_is_denied_not_panicking() {
    let big = "zones:\n  - name: a\n    sources: [10.0.0.0/8]\n  - name: b\n    sources: [11.0.0.0/8]\n    mode: open\n";
    let small = "zones:\n  - name: a\n    sources: [10.0.0.0/8]\n";
    let old = Policy::load(big, "old.yaml").unwrap();
    let new = Policy::load(small, "new.yaml").unwrap();
    let dest = Destination::Name("example.com".into());
    let d = old.decide(&Request {
        src: "11.1.1.1".parse().unwrap(),
        user: None,
        dest: &dest,
        port: 443,
    });
    assert_eq!(d.verdict, Verdict::Allow);
    let c = new.check_addresses(&d, &["93.184.216.34".parse().unwrap()]);
    assert!(c.allowed.is_empty());
    assert_eq!(c.decision.verdict, Verdict::Deny);
}

// === IPv4 embedded in IPv6 ===

/// An open zone that denies one IPv4 block: the block's addresses
/// written in NAT64, 6to4, Teredo or IPv4-compatible form are denied
/// too, as destinations and as resolved addresses; other IPv6 is not.
#[test]
fn ipv4_deny_rules_match_embedded_forms() {
    let p = Policy::load(
        "zones:\n  - name: o\n    sources: [10.0.0.0/8]\n    mode: open\n    deny:\n      - cidr: 93.184.216.0/24\n        id: no-example\n",
        "t.yaml",
    )
    .unwrap();
    let decide = |ip: &str| {
        let dest = Destination::Ip(ip.parse().unwrap());
        p.decide(&Request {
            src: "10.1.1.1".parse().unwrap(),
            user: None,
            dest: &dest,
            port: 443,
        })
    };
    for ip in [
        "93.184.216.9",
        "::ffff:93.184.216.9",
        "64:ff9b::93.184.216.9",
        "2002:5db8:d809::1",
        // Teredo: server 93.184.216.9, client 1.1.1.1 (obfuscated).
        "2001:0:5db8:d809::fefe:fefe",
    ] {
        let d = decide(ip);
        assert_eq!((d.verdict, &*d.rule), (Verdict::Deny, "no-example"), "{ip}");
    }
    // Public IPv6 that embeds nothing, and NAT64 of another block.
    for ip in ["2606:4700::1111", "64:ff9b::8.8.8.8"] {
        assert_eq!(decide(ip).verdict, Verdict::Allow, "{ip}");
    }
    // The same through resolution (a name that resolves to NAT64).
    let dest = Destination::Name("x.test".into());
    let d = p.decide(&Request {
        src: "10.1.1.1".parse().unwrap(),
        user: None,
        dest: &dest,
        port: 443,
    });
    let c = p.check_addresses(
        &d,
        &[
            "64:ff9b::93.184.216.7".parse().unwrap(),
            "64:ff9b::8.8.4.4".parse().unwrap(),
        ],
    );
    assert_eq!(c.allowed, ["64:ff9b::8.8.4.4".parse::<IpAddr>().unwrap()]);
    assert_eq!(&*c.rejected[0].rule, "no-example");
}

// === special-use names in the proxy ===

fn decide_name(p: &Policy, name: &str, port: u16) -> sluice_policy::Decision {
    let dest = Destination::Name(name.into());
    p.decide(&Request {
        src: "10.0.0.1".parse().unwrap(),
        user: None,
        dest: &dest,
        port,
    })
}

/// `localhost` means 127.0.0.1 and ::1: a cidr allow inside loopback space
/// that covers the port lets it out (docs/design.md "Decisions"), nothing else does;
/// and phase two checks the local addresses like any others.
#[test]
fn localhost_meets_the_guard_as_its_loopback_addresses() {
    let p = Policy::load(
        "zones:\n  - name: web\n    sources: [10.0.0.0/8]\n    mode: open\n    allow:\n      - cidr: 127.0.0.9/32\n        ports: [8000]\n      - cidr: 127.0.0.1/32\n        ports: [8000]\n        id: local-dev\n",
        "t.yaml",
    )
    .unwrap();
    let d = decide_name(&p, "localhost", 8000);
    assert_eq!((d.verdict, &*d.rule), (Verdict::Allow, "local-dev"));
    let local: Vec<IpAddr> = sluice_policy::guard::local_addresses("app.localhost")
        .unwrap()
        .to_vec();
    let c = p.check_addresses(&d, &local);
    assert_eq!(c.allowed, ["127.0.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(c.decision.verdict, Verdict::Allow);
    // Another port, or no loopback rule at all: the guard, even in open mode.
    let d = decide_name(&p, "app.localhost", 8001);
    assert_eq!(
        (d.verdict, &*d.rule),
        (Verdict::Deny, "guard/special-address")
    );
    assert!(d.enforced);
}

/// `.onion`, `.local`, `.invalid`, `.alt` are never resolved, in any mode;
/// `internal` and `home.arpa` only for a name a host allow rule names.
#[test]
fn special_use_names_are_denied_before_resolution() {
    let p = Policy::load(
        "zones:\n  - name: web\n    sources: [10.0.0.0/8]\n    mode: open\n    allow:\n      - host: metadata.google.internal\n        ports: [80]\n      - cidr: 0.0.0.0/0\n        ports: any\n",
        "t.yaml",
    )
    .unwrap();
    for name in [
        "x.onion",
        "printer.local",
        "a.invalid",
        "b.alt",
        "nas.home.arpa",
        "x.internal",
    ] {
        let d = decide_name(&p, name, 80);
        assert_eq!(
            (d.verdict, &*d.rule, d.enforced),
            (Verdict::Deny, "guard/special-name", true),
            "{name}: {}",
            d.reason
        );
    }
    let d = decide_name(&p, "metadata.google.internal", 80);
    assert_eq!(d.verdict, Verdict::Allow, "{}", d.reason);
    // The host rule does not lift the guard: its address is still checked.
    let c = p.check_addresses(&d, &["169.254.169.254".parse().unwrap()]);
    assert_eq!(c.decision.verdict, Verdict::Deny);
    assert_eq!(&*c.decision.rule, "guard/special-address");
}

// === content inspection by source ===

/// A source may inspect content when the first user-less zone it belongs
/// to does, or a user zone before that one could take it; a later zone's
/// inspection, or another source's, does not count.
#[test]
fn may_inspect_content_follows_the_zones_a_source_can_land_in() {
    let p = Policy::load(
        "zones:\n  \
         - name: staff\n    sources: [10.1.0.0/16]\n    users: [u]\n    inspect:\n      dlp: {aws: block}\n  \
         - name: plain\n    sources: [10.0.0.0/8]\n  \
         - name: dlp\n    sources: [10.0.0.0/8, 192.168.0.0/16]\n    inspect:\n      dlp: {aws: block}\n  \
         - name: tls-only\n    sources: [172.16.0.0/12]\n    require_tls: true\n\
         users:\n  - name: u\n    password_hash_file: /x\n",
        "t.yaml",
    )
    .unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // The user zone before `plain` may take it.
    assert!(p.may_inspect_content(ip("10.1.2.3")));
    // `plain` comes first; `dlp` after it never selects 10.2.0.0/16.
    assert!(!p.may_inspect_content(ip("10.2.0.1")));
    assert!(p.may_inspect_content(ip("192.168.1.1")));
    // `require_tls` is not content inspection; no zone at all.
    assert!(!p.may_inspect_content(ip("172.16.0.1")));
    assert!(!p.may_inspect_content(ip("203.0.113.9")));
    let none = Policy::load("zones:\n  - name: a\n    sources: [10.0.0.0/8]\n", "n.yaml").unwrap();
    assert!(!none.may_inspect_content(ip("10.0.0.1")));
}
