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
    /// Why the answer became SERVFAIL (a CNAME loop or over-long chain).
    pub error: Option<String>,
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
        error: None,
    };
    if !matches!(out.rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
        return out;
    }
    let ttl = |t: u32| t.min(ttl_max).saturating_sub(age);
    // The chain, in order, from the queried name.
    let mut chain: Vec<Name> = vec![qname.to_lowercase()];
    let cname_of = |last: &Name| {
        upstream.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(c) if r.name.to_lowercase() == *last => Some(c.0.to_lowercase()),
            _ => None,
        })
    };
    while let Some(next) = chain.last().and_then(cname_of) {
        // A loop, or a chain longer than any resolver follows, answers
        // nothing: SERVFAIL, never an empty NOERROR that looks like "no
        // such record".
        if chain.contains(&next) || chain.len() > MAX_CHAIN {
            out.rcode = ResponseCode::ServFail;
            out.error = Some(if chain.contains(&next) {
                format!("CNAME loop at {next}")
            } else {
                format!("CNAME chain longer than {MAX_CHAIN}")
            });
            return out;
        }
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
        out.authorities = soa(upstream, ttl);
    }
    out
}

/// The upstream's SOA (at most one), its TTL capped: what a negative or
/// address-less answer carries for negative caching (RFC 2308).
fn soa(upstream: &Message, ttl: impl Fn(u32) -> u32) -> Vec<Record> {
    upstream
        .authorities
        .iter()
        .filter(|r| r.record_type() == RecordType::SOA)
        .take(1)
        .cloned()
        .map(|mut r| {
            r.ttl = ttl(r.ttl);
            r
        })
        .collect()
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
