//! What of an upstream answer a zone may see: CNAME chains followed and
//! cut, special addresses stripped, other types passed, loops ended (moved
//! here from the in-file test module of `filter`).

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{
        Name, RData, Record,
        rdata::{A, AAAA, CNAME, TXT},
    },
};
use sluice_dns::filter::filter;
use sluice_policy::{Decision, Policy, Verdict};

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

/// A CNAME loop or an over-long chain answers SERVFAIL with no records,
/// never an empty NOERROR; a long but bounded chain is followed.
#[test]
fn chain_loops_and_overlong_chains_are_servfail() {
    let (p, d) = setup("app.example.com");
    let up = msg(vec![
        cname("app.example.com.", "b.example.org."),
        cname("b.example.org.", "app.example.com."),
    ]);
    let f = filter(&p, &d, &name("app.example.com."), &up, 60, 0);
    assert_eq!(f.rcode, ResponseCode::ServFail);
    assert!(f.answers.is_empty());
    assert!(f.error.unwrap().contains("loop"));

    let chain = |n: usize| {
        let mut v = vec![cname("app.example.com.", "c0.example.org.")];
        for i in 0..n {
            v.push(cname(
                &format!("c{i}.example.org."),
                &format!("c{}.example.org.", i + 1),
            ));
        }
        v.push(a(&format!("c{n}.example.org."), [93, 184, 216, 34]));
        msg(v)
    };
    let f = filter(&p, &d, &name("app.example.com."), &chain(10), 60, 0);
    assert_eq!(f.rcode, ResponseCode::NoError);
    assert_eq!(f.answers.len(), 12);
    let f = filter(&p, &d, &name("app.example.com."), &chain(40), 60, 0);
    assert_eq!(f.rcode, ResponseCode::ServFail);
    assert!(f.answers.is_empty());
}
