//! Bytes → the DNS forwarder's untrusted-input path, without sockets:
//! `query::parse` (a client packet) and, for the same bytes read as an
//! upstream answer, `filter::filter` under a zone with host, cidr and deny
//! rules. Invariants: no panic; a parsed question comes from a packet
//! holding exactly one message whose names never point into the header,
//! and has a normalised name (lower-case, no trailing dot) or none; a
//! refusal answer echoes the id; no filtered answer hands out an address
//! the guard refuses.

#![no_main]

use std::sync::LazyLock;

use hickory_proto::{op::Message, rr::RData};
use libfuzzer_sys::fuzz_target;
use sluice_dns::{
    filter::filter,
    query::{self, Refusal},
};
use sluice_policy::{Policy, guard};

static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    Policy::load(
        "zones:\n  - name: web\n    sources: [10.0.0.0/8]\n    allow:\n      - host: \"*.example.com\"\n        ports: [443]\n      - cidr: 10.20.0.0/16\n        ports: [5432]\n    deny:\n      - host: \"*.evil.example.com\"\n",
        "fuzz.yaml",
    )
    .expect("fuzz policy loads")
});

fuzz_target!(|data: &[u8]| {
    match query::parse(data) {
        Ok(q) => {
            // Strict parsing: a question only from a packet that ends where
            // its message ends, with no pointer into the header (seeds in
            // seeds/dns, tokens in dns.dict).
            assert_eq!(query::strict_end(data), Some(data.len()));
            if let Some(n) = &q.name {
                assert!(!n.is_empty() && !n.ends_with('.'), "{n:?}");
                assert!(!n.bytes().any(|b| b.is_ascii_uppercase()), "{n:?}");
            }
            let _ = query::encode(&q.response(hickory_proto::op::ResponseCode::NoError));
        }
        Err(Refusal::Answer(a)) => assert_eq!(&a[..2], &data[..2]),
        Err(Refusal::Drop) => {}
    }
    let Ok(upstream) = Message::from_vec(data) else {
        return;
    };
    let Some(qname) = upstream.queries.first().map(|q| q.name().clone()) else {
        return;
    };
    let Some(name) = query::normalise(&qname) else {
        return;
    };
    let decision = POLICY.dns_decide("10.0.0.1".parse().expect("ip"), &name);
    let f = filter(&POLICY, &decision, &qname, &upstream, 3600, 0);
    for r in &f.answers {
        let ip = match &r.data {
            RData::A(a) => std::net::IpAddr::V4(a.0),
            RData::AAAA(a) => std::net::IpAddr::V6(a.0),
            _ => continue,
        };
        let ip = guard::canonical(ip);
        let lifted = matches!(ip, std::net::IpAddr::V4(v4) if v4.octets()[..2] == [10, 20]);
        assert!(guard::special(ip).is_none() || lifted, "{ip} handed out");
    }
});
