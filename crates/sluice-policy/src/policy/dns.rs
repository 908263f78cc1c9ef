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
//!   lies entirely inside special space, whatever its ports;
//! - special-use names (`guard::special_name`) are answered by the
//!   forwarder and never forwarded (`guard/special-name`), in every mode:
//!   `localhost` locally, `local`, `invalid`, `onion`, `alt` and reverse
//!   names of special space NXDOMAIN; the private zones `internal` and
//!   `home.arpa` are forwarded only for names a `host` allow rule names.
//!
//! `report` mode judges exactly like `enforce` and records would-be
//! denials without enforcing them; the guard is enforced in every mode.

use std::{net::IpAddr, sync::Arc};

use super::{
    AddressCheck, CZone, Decision, Pending, Policy, Scope, Verdict, default, ids, rule_allow,
    rule_deny,
};
use crate::{
    guard::{self, NameTreatment, SpecialName},
    model::{Mode, Ports},
};

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
        let special = guard::special_name(name);
        if let Some(s) = special.filter(|s| s.treatment != NameTreatment::HostRuleOnly) {
            return special_name(&d, name, s);
        }
        if let Some(i) = deny_host_all_ports(z, name) {
            return rule_deny(d, &z.deny[i as usize], z.mode == Mode::Report);
        }
        if let Some(i) = z.allow_hosts.first(name, |_| true) {
            return rule_allow(d, &z.allow[i as usize], Pending::Guard);
        }
        // A private zone (`internal`, `home.arpa`) only for the names a host
        // rule allows: never for a cidr rule, nor in open mode.
        if let Some(s) = special {
            return special_name(&d, name, s);
        }
        let pending = if z.mode != Mode::Open && !z.allow_cidrs.is_empty() {
            Pending::CidrAllow
        } else {
            Pending::Guard
        };
        default(d, z, format!("{name} (DNS)"), pending)
    }

    /// A name further down a CNAME chain of an answer for `decision`: only
    /// the zone's deny rules (and special-use names answered locally) apply.
    /// `Some` is the decision that replaces `decision`: the chain is cut.
    pub fn dns_chain_check(&self, decision: &Decision, name: &str) -> Option<Decision> {
        let z = self.zone_of_decision(decision)?;
        if let Some(s) =
            guard::special_name(name).filter(|s| s.treatment != NameTreatment::HostRuleOnly)
        {
            return Some(special_name(decision, name, s));
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

/// A special-use name, answered by the forwarder itself: an enforced
/// denial (nothing is forwarded, in every mode) with `guard/special-name`.
fn special_name(base: &Decision, name: &str, s: SpecialName) -> Decision {
    let mut d = base.clone();
    d.verdict = Verdict::Deny;
    d.enforced = true;
    d.rule = ids::GUARD_SPECIAL_NAME.into();
    d.reason = match s.treatment {
        NameTreatment::Loopback => {
            format!(
                "{name} can only mean loopback ({}): answered locally",
                s.source
            )
        }
        NameTreatment::NxDomain => format!(
            "{name} is a special-use name under {} ({}): NXDOMAIN, never forwarded",
            s.domain, s.source
        ),
        NameTreatment::HostRuleOnly => format!(
            "{name} is in the private zone {} ({}): forwarded only for names a host allow rule names",
            s.domain, s.source
        ),
    };
    d.pending = Pending::Nothing;
    d
}

fn deny_host_all_ports(z: &CZone, name: &str) -> Option<u32> {
    z.deny_hosts
        .first(name, |i| z.deny[i as usize].ports == Ports::Any)
}
