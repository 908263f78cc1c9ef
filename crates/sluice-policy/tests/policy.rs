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
