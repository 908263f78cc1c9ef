//! The DNS forwarder's questions, answered from the compiled policy (pure,
//! like the rest of this crate). DNS knows no port, so every question here
//! is asked "ports aside":
//!
//! - a name may be resolved when some allow rule of the zone could match
//!   it on some port (a `host` allow for the name, or, with `cidr` allow
//!   rules and no host match, an address inside one of them); in `open`
//!   mode anything not denied may;
//! - only deny rules that cover every port deny a name or an address
//!   (a deny of port 25 leaves the name usable on 443);
//! - the guard lifts for an address inside a zone's `cidr` allow rule that
//!   lies entirely inside special space, whatever its ports.
//!
//! `report` mode judges exactly like `enforce` and records would-be
//! denials without enforcing them; the guard is enforced in every mode.

use std::{net::IpAddr, sync::Arc};

use super::{
    AddressCheck, CZone, Decision, Pending, Policy, Scope, Verdict, default, ids, rule_allow,
    rule_deny,
};
use crate::model::{Mode, Ports};

// === impl Policy ===

impl Policy {
    /// Phase one for a DNS query from `src` for `name` (lower-case ASCII,
    /// no trailing dot). No zone: an enforced denial with `default/no-zone`
    /// (the listener answers REFUSED). A denial pending on `cidr` allow
    /// rules (`Pending::CidrAllow`) may still be forwarded for addresses,
    /// which [`Policy::dns_check_addresses`] then settles.
    pub fn dns_decide(&self, src: IpAddr, name: &str) -> Decision {
        match self.select_zone(src, None) {
            Some(zi) => self.dns_judge(zi, name),
            None => {
                let mut d = self.base(None, 0);
                d.rule = ids::NO_ZONE.into();
                d.reason = format!("source {src} matches no zone (DNS)");
                d
            }
        }
    }

    /// The verdict and rule for `name` in the zone called `zone` (ports
    /// aside); `None` if there is no such zone.
    pub fn dns_verdict(&self, zone: &str, name: &str) -> Option<(Verdict, Arc<str>)> {
        let zi = self.zones.iter().position(|z| &*z.name == zone)?;
        let d = self.dns_judge(zi as u32, name);
        Some((d.verdict, d.rule))
    }

    fn dns_judge(&self, zi: u32, name: &str) -> Decision {
        let z = &self.zones[zi as usize];
        let d = self.base(Some(zi), 0);
        if let Some(denied) = localhost(&d, name) {
            return denied;
        }
        if let Some(i) = deny_host_all_ports(z, name) {
            return rule_deny(d, &z.deny[i as usize], z.mode == Mode::Report);
        }
        if let Some(i) = z.allow_hosts.first(name, |_| true) {
            return rule_allow(d, &z.allow[i as usize], Pending::Guard);
        }
        let pending = if z.mode != Mode::Open && !z.allow_cidrs.is_empty() {
            Pending::CidrAllow
        } else {
            Pending::Guard
        };
        default(d, z, format!("{name} (DNS)"), pending)
    }

    /// A name further down a CNAME chain of an answer for `decision`: only
    /// the zone's deny rules (and names that can only mean loopback) apply.
    /// `Some` is the decision that replaces `decision`: the chain is cut.
    pub fn dns_chain_check(&self, decision: &Decision, name: &str) -> Option<Decision> {
        let z = self.zone_of_decision(decision)?;
        if let Some(denied) = localhost(decision, name) {
            return Some(denied);
        }
        let i = deny_host_all_ports(z, name)?;
        let r = &z.deny[i as usize];
        let mut d = rule_deny(decision.clone(), r, z.mode == Mode::Report);
        d.reason = format!(
            "CNAME target {name} matches deny rule {} ({})",
            r.id, r.text
        );
        Some(d)
    }

    /// Phase two for the addresses of a DNS answer: each must pass the
    /// guard (unless a zone's special-space `cidr` allow lifts it) and the
    /// zone's all-port `cidr` deny rules, and, for a name pending on `cidr`
    /// allow rules, lie inside one. An answer without addresses leaves the
    /// decision as it was; one whose addresses all fail is denied by the
    /// rule that failed the first.
    pub fn dns_check_addresses(&self, decision: &Decision, addrs: &[IpAddr]) -> AddressCheck {
        if addrs.is_empty() && self.zone_of_decision(decision).is_some() && decision.passes() {
            // An answer without addresses (NODATA, CNAME-only) has nothing to strip.
            let mut d = decision.clone();
            d.pending = Pending::Nothing;
            return AddressCheck {
                decision: d,
                allowed: Vec::new(),
                rejected: Vec::new(),
            };
        }
        self.check_addresses_in(decision, addrs, Scope::DnsAnswer)
    }
}

/// `localhost` and `*.localhost` can only mean loopback (RFC 6761).
fn localhost(base: &Decision, name: &str) -> Option<Decision> {
    if name != "localhost" && !name.ends_with(".localhost") {
        return None;
    }
    let mut d = base.clone();
    d.verdict = Verdict::Deny;
    d.enforced = true;
    d.rule = ids::GUARD_SPECIAL.into();
    d.reason = format!("{name} can only mean a loopback address (RFC 6761)");
    d.pending = Pending::Nothing;
    Some(d)
}

fn deny_host_all_ports(z: &CZone, name: &str) -> Option<u32> {
    z.deny_hosts
        .first(name, |i| z.deny[i as usize].ports == Ports::Any)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            (Verdict::Deny, ids::GUARD_SPECIAL.into())
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
}
