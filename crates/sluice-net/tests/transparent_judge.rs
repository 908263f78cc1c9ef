//! The transparent listener's pure half: first bytes classified and
//! judged (moved here from the in-file test module of `transparent`).

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};

use sluice_net::{Grants, transparent::*};
use sluice_observe::Protocol;
use sluice_policy::{Destination, Policy};

const POLICY: &str = "
zones:
  - name: lan
    sources: [192.0.2.0/24]
    allow:
      - host: allowed.example
        ports: [443, 80]
        id: allowed-name
      - cidr: 203.0.113.0/24
        ports: [7000]
        id: raw
    deny:
      - host: denied.example
        id: denied-name
  - name: lab
    sources: [198.18.0.0/24]
    mode: report
";

fn policy() -> Policy {
    Policy::load(POLICY, "test.yaml").unwrap()
}

fn src() -> IpAddr {
    "192.0.2.7".parse().unwrap()
}

fn to(a: &str) -> SocketAddr {
    a.parse().unwrap()
}

struct FakeGrants;

impl Grants for FakeGrants {
    fn lookup(&self, zone: &str, ip: IpAddr) -> Option<String> {
        (zone == "lan" && ip == "93.184.215.14".parse::<IpAddr>().unwrap())
            .then(|| "allowed.example".to_owned())
    }
}

#[test]
fn sni_names_the_flow() {
    let j = judge(
        &policy(),
        None,
        src(),
        to("203.0.113.9:443"),
        &Peeked::Tls(Some("Allowed.Example.".into())),
    );
    assert_eq!(j.protocol, Protocol::Tls);
    assert_eq!(j.dest, Destination::Name("allowed.example".into()));
    assert!(j.resolve);
    assert_eq!(&*j.decision.rule, "allowed-name");
    let j = judge(
        &policy(),
        None,
        src(),
        to("203.0.113.9:443"),
        &Peeked::Tls(Some("denied.example".into())),
    );
    assert!(!j.decision.passes());
    assert_eq!(&*j.decision.rule, "denied-name");
}

#[test]
fn no_sni_or_ip_sni_is_judged_by_the_original_destination() {
    for p in [
        Peeked::Tls(None),
        Peeked::Tls(Some("203.0.113.9".into())),
        Peeked::Other,
        Peeked::Http {
            method: "GET".into(),
            host: None,
        },
    ] {
        let j = judge(&policy(), None, src(), to("203.0.113.9:7000"), &p);
        assert_eq!(
            j.dest,
            Destination::Ip("203.0.113.9".parse().unwrap()),
            "{p:?}"
        );
        assert!(!j.resolve);
        assert_eq!(&*j.decision.rule, "raw", "{p:?}");
    }
}

#[test]
fn malformed_hello_is_denied_in_enforce_and_judged_as_tcp_in_report() {
    let p = Peeked::BadTls("bad record length");
    let j = judge(&policy(), None, src(), to("203.0.113.9:7000"), &p);
    assert!(!j.decision.passes());
    assert_eq!(&*j.decision.rule, "default/invalid-destination");
    assert!(
        j.decision
            .reason
            .contains("malformed TLS ClientHello: bad record length")
    );
    let j = judge(
        &policy(),
        None,
        "198.18.0.5".parse().unwrap(),
        // A public address: the guard is enforced in report mode too.
        to("93.184.215.14:7000"),
        &p,
    );
    assert!(j.decision.passes());
    assert!(j.note.unwrap().contains("malformed"));
}

#[test]
fn http_host_names_the_flow() {
    let p = Peeked::Http {
        method: "GET".into(),
        host: Some("allowed.example:80".into()),
    };
    let j = judge(&policy(), None, src(), to("203.0.113.9:80"), &p);
    assert_eq!(j.protocol, Protocol::HttpTransparent);
    assert_eq!(j.dest, Destination::Name("allowed.example".into()));
    assert_eq!(&*j.decision.rule, "allowed-name");
}

#[test]
fn a_grant_names_a_tcp_flow() {
    let g = FakeGrants;
    let j = judge(
        &policy(),
        Some(&g),
        src(),
        to("93.184.215.14:443"),
        &Peeked::Other,
    );
    assert_eq!(j.grant.as_deref(), Some("allowed.example"));
    assert_eq!(j.dest, Destination::Name("allowed.example".into()));
    assert!(!j.resolve, "a granted flow dials the granted address only");
    assert_eq!(&*j.decision.rule, "allowed-name");
    // Without the grant the same flow is judged by its address: denied.
    let j = judge(
        &policy(),
        None,
        src(),
        to("93.184.215.14:443"),
        &Peeked::Other,
    );
    assert_eq!(j.grant, None);
    assert!(!j.decision.passes());
    // A grant for another address does not apply.
    let j = judge(
        &policy(),
        Some(&g),
        src(),
        to("93.184.215.15:443"),
        &Peeked::Other,
    );
    assert_eq!(j.grant, None);
}

#[test]
fn http_heads() {
    assert_eq!(http_head(b"GE"), None);
    assert_eq!(http_head(b"GET / HTTP/1.1\r\nHost: a"), None);
    assert_eq!(
        http_head(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"),
        Some(Peeked::Http {
            method: "GET".into(),
            host: Some("a.example".into())
        })
    );
    assert_eq!(
        http_head(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        Some(Peeked::Http {
            method: "GET".into(),
            host: None
        })
    );
    assert_eq!(http_head(b"SSH-2.0-OpenSSH\r\n"), Some(Peeked::Other));
    assert_eq!(http_head(b"\x00\x01"), Some(Peeked::Other));
    assert_eq!(
        http_head(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
        Some(Peeked::Other)
    );
}

#[test]
fn host_values() {
    assert_eq!(host_of("a.example"), Some("a.example"));
    assert_eq!(host_of("a.example:8080"), Some("a.example"));
    assert_eq!(host_of("[2001:db8::1]:80"), Some("[2001:db8::1]"));
    assert_eq!(host_of("[2001:db8::1]"), Some("[2001:db8::1]"));
    assert_eq!(host_of("a:b:c"), None);
    assert_eq!(host_of("a.example:x"), None);
    assert_eq!(host_of(""), None);
}

#[test]
fn the_original_destination_is_preferred_among_the_names_addresses() {
    let v: Vec<IpAddr> = ["203.0.113.1", "203.0.113.2"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let (o, among) = prefer(v.clone(), "203.0.113.2".parse().unwrap());
    assert!(among);
    assert_eq!(o[0], v[1]);
    let (o, among) = prefer(v.clone(), "::ffff:203.0.113.1".parse().unwrap());
    assert!(among);
    assert_eq!(o[0], v[0]);
    let (o, among) = prefer(v.clone(), "198.51.100.1".parse().unwrap());
    assert!(!among);
    assert_eq!(o, v);
}
