//! What of an upstream answer a zone may see. Pure: the policy decides,
//! this module only walks the records.
//!
//! The queried name decided already (phase one). Here, the CNAME chain is
//! followed from it: names further down are checked against the zone's
//! deny rules only (SaaS names alias CDN names nobody lists), every address
//! goes through the guard and the zone's `cidr` rules
//! (`Policy::dns_check_addresses`), records that are not on the chain are
//! dropped, and so are the authority section (but its SOA, for negative
//! caching) and the additional section. SVCB/HTTPS address hints are
//! removed: they would hand out addresses nobody checked.

use std::net::IpAddr;

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::svcb::SvcParamKey},
};
use sluice_policy::{Decision, Policy, Rejected};

use crate::query::normalise;

/// The longest CNAME chain followed.
const MAX_CHAIN: usize = 16;

/// An upstream answer after the zone's policy.
#[derive(Debug, Clone)]
pub struct Filtered {
    /// The final decision (phase one, a cut chain, or the addresses).
    pub decision: Decision,
    /// The response code to pass on.
    pub rcode: ResponseCode,
    /// The answer records the client may see.
    pub answers: Vec<Record>,
    /// The SOA of a negative answer.
    pub authorities: Vec<Record>,
    /// Addresses handed out, with their TTLs.
    pub addrs: Vec<(IpAddr, u32)>,
    /// Addresses removed, with the rule that removed them.
    pub stripped: Vec<Rejected>,
}

/// Filters `upstream` (the answer for `qname`) for the zone of `decision`.
/// `ttl_max` caps every TTL and `age` (seconds the answer spent in the
/// cache) is taken off it.
pub fn filter(
    policy: &Policy,
    decision: &Decision,
    qname: &Name,
    upstream: &Message,
    ttl_max: u32,
    age: u32,
) -> Filtered {
    let mut out = Filtered {
        decision: decision.clone(),
        rcode: upstream.metadata.response_code,
        answers: Vec::new(),
        authorities: Vec::new(),
        addrs: Vec::new(),
        stripped: Vec::new(),
    };
    if !matches!(out.rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
        return out;
    }
    let ttl = |t: u32| t.min(ttl_max).saturating_sub(age);
    // The chain, in order, from the queried name.
    let mut chain: Vec<Name> = vec![qname.to_lowercase()];
    while chain.len() <= MAX_CHAIN {
        let Some(last) = chain.last() else { break };
        let next = upstream.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(c) if r.name.to_lowercase() == *last => Some(c.0.to_lowercase()),
            _ => None,
        });
        let Some(next) = next.filter(|n| !chain.contains(n)) else {
            break;
        };
        match normalise(&next) {
            Some(text) => {
                if let Some(cut) = policy.dns_chain_check(&out.decision, &text) {
                    let stop = !cut.passes();
                    out.decision = cut;
                    if stop {
                        return out;
                    }
                }
            }
            None => {
                let mut cut = out.decision.deny_with(
                    sluice_policy::ids::INVALID,
                    format!("CNAME target {next} is not a host name"),
                );
                cut.pending = sluice_policy::Pending::Nothing;
                out.decision = cut;
                return out;
            }
        }
        chain.push(next);
    }
    let mut candidates: Vec<Record> = Vec::new();
    for r in &upstream.answers {
        if !chain.contains(&r.name.to_lowercase()) {
            continue;
        }
        let mut r = r.clone();
        r.ttl = ttl(r.ttl);
        match &mut r.data {
            RData::SVCB(s) => strip_hints(&mut s.svc_params),
            RData::HTTPS(h) => strip_hints(&mut h.0.svc_params),
            _ => {}
        }
        candidates.push(r);
    }
    let addrs: Vec<IpAddr> = candidates.iter().filter_map(address).collect();
    let check = policy.dns_check_addresses(&out.decision, &addrs);
    out.decision = check.decision;
    out.stripped = check.rejected;
    for r in candidates {
        match address(&r) {
            Some(ip) if !check.allowed.contains(&ip) => continue,
            Some(ip) => out.addrs.push((ip, r.ttl)),
            None => {}
        }
        out.answers.push(r);
    }
    if out.answers.iter().all(|r| address(r).is_none()) || out.rcode == ResponseCode::NXDomain {
        out.authorities = upstream
            .authorities
            .iter()
            .filter(|r| r.record_type() == RecordType::SOA)
            .take(1)
            .cloned()
            .map(|mut r| {
                r.ttl = ttl(r.ttl);
                r
            })
            .collect();
    }
    out
}

fn address(r: &Record) -> Option<IpAddr> {
    match &r.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

fn strip_hints<V>(params: &mut Vec<(SvcParamKey, V)>) {
    params.retain(|(k, _)| !matches!(k, SvcParamKey::Ipv4Hint | SvcParamKey::Ipv6Hint));
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::{
        op::{MessageType, OpCode},
        rr::rdata::{A, AAAA, CNAME, TXT},
    };
    use sluice_policy::Verdict;

    use super::*;

    const YAML: &str = r#"
zones:
  - name: web
    sources: [10.0.1.0/24]
    allow:
      - host: app.example.com
        ports: [443]
      - cidr: 10.20.0.0/16
        ports: [443]
    deny:
      - host: "*.blocked.example"
"#;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn msg(records: Vec<Record>) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.add_answers(records);
        m
    }

    fn a(owner: &str, ip: [u8; 4]) -> Record {
        Record::from_rdata(name(owner), 300, RData::A(A(Ipv4Addr::from(ip))))
    }

    fn cname(owner: &str, target: &str) -> Record {
        Record::from_rdata(name(owner), 600, RData::CNAME(CNAME(name(target))))
    }

    fn setup(q: &str) -> (Policy, Decision) {
        let p = Policy::load(YAML, "t.yaml").unwrap();
        let d = p.dns_decide("10.0.1.5".parse().unwrap(), q);
        (p, d)
    }

    #[test]
    fn follows_a_chain_to_an_unlisted_cdn_name() {
        let (p, d) = setup("app.example.com");
        let up = msg(vec![
            cname("app.example.com.", "edge.cdn.example.net."),
            a("edge.cdn.example.net.", [93, 184, 216, 34]),
            a("unrelated.example.org.", [93, 184, 216, 35]),
        ]);
        let f = filter(&p, &d, &name("APP.example.com."), &up, 3600, 0);
        assert_eq!(f.decision.verdict, Verdict::Allow);
        assert_eq!(f.answers.len(), 2);
        assert_eq!(f.addrs, [("93.184.216.34".parse().unwrap(), 300)]);
    }

    #[test]
    fn a_chain_into_a_denied_name_is_cut() {
        let (p, d) = setup("app.example.com");
        let up = msg(vec![
            cname("app.example.com.", "x.blocked.example."),
            a("x.blocked.example.", [93, 184, 216, 34]),
        ]);
        let f = filter(&p, &d, &name("app.example.com."), &up, 3600, 0);
        assert!(!f.decision.passes());
        assert_eq!(&*f.decision.rule, "web/deny/1");
        assert!(f.answers.is_empty());
    }

    #[test]
    fn special_addresses_are_stripped_unless_lifted() {
        let (p, d) = setup("app.example.com");
        let up = msg(vec![
            a("app.example.com.", [127, 0, 0, 1]),
            a("app.example.com.", [10, 20, 0, 5]),
            a("app.example.com.", [192, 168, 1, 1]),
            Record::from_rdata(
                name("app.example.com."),
                30,
                RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
            ),
        ]);
        let f = filter(&p, &d, &name("app.example.com."), &up, 60, 10);
        assert_eq!(f.addrs, [("10.20.0.5".parse().unwrap(), 50)]);
        assert_eq!(f.stripped.len(), 3);
        // Every address special: the answer is denied by the guard.
        let up = msg(vec![a("app.example.com.", [169, 254, 169, 254])]);
        let f = filter(&p, &d, &name("app.example.com."), &up, 60, 0);
        assert!(!f.decision.passes());
        assert_eq!(&*f.decision.rule, sluice_policy::ids::GUARD_SPECIAL);
    }

    #[test]
    fn other_types_pass_and_errors_carry_no_records() {
        let (p, d) = setup("app.example.com");
        let txt = Record::from_rdata(
            name("app.example.com."),
            60,
            RData::TXT(TXT::new(vec!["v=spf1 -all".into()])),
        );
        let f = filter(&p, &d, &name("app.example.com."), &msg(vec![txt]), 60, 0);
        assert_eq!(f.answers.len(), 1);
        let mut fail = msg(vec![a("app.example.com.", [93, 184, 216, 34])]);
        fail.metadata.response_code = ResponseCode::ServFail;
        let f = filter(&p, &d, &name("app.example.com."), &fail, 60, 0);
        assert!(f.answers.is_empty());
        assert_eq!(f.rcode, ResponseCode::ServFail);
    }

    #[test]
    fn chain_loops_end() {
        let (p, d) = setup("app.example.com");
        let up = msg(vec![
            cname("app.example.com.", "b.example.org."),
            cname("b.example.org.", "app.example.com."),
        ]);
        let f = filter(&p, &d, &name("app.example.com."), &up, 60, 0);
        assert_eq!(f.answers.len(), 2);
    }
}
