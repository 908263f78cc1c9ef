//! Destinations as clients write them: numeric IPv4 forms, IPv6 forms,
//! names (IDNA, case, trailing dot) and host patterns (moved here from the
//! in-file test module of `dest`).

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use sluice_policy::{DestError, Destination, dest::normalize_pattern};

fn ip(s: &str) -> Destination {
    Destination::Ip(s.parse().unwrap())
}

#[test]
fn numeric_forms() {
    for (raw, want) in [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("127.0.0.1.", "127.0.0.1"),
        ("１２７.０.０.１", "127.0.0.1"),
        ("127。0。0。1", "127.0.0.1"),
        ("169.254.169.254", "169.254.169.254"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("%31%32%37.0.0.1", "127.0.0.1"),
    ] {
        assert_eq!(Destination::parse(raw), Ok(ip(want)), "{raw}");
    }
    for raw in [
        "256.0.0.1",
        "1.2.3.4.5",
        "0x1.0x100000000",
        "08.0.0.1",
        "foo.123",
        "4294967296",
    ] {
        assert!(
            matches!(Destination::parse(raw), Err(DestError::BadNumeric(_))),
            "{raw}"
        );
    }
}

#[test]
fn ipv6_forms() {
    assert_eq!(Destination::parse("[::1]"), Ok(ip("::1")));
    assert_eq!(Destination::parse("[fe80::1%eth0]"), Ok(ip("fe80::1")));
    assert_eq!(
        Destination::parse("::ffff:127.0.0.1"),
        Ok(ip("::ffff:127.0.0.1"))
    );
    assert!(Destination::parse("[::1").is_err());
    assert!(Destination::parse("[example.com]").is_err());
}

#[test]
fn names() {
    let n = |s: &str| Destination::Name(s.to_owned());
    assert_eq!(Destination::parse("Example.COM."), Ok(n("example.com")));
    assert_eq!(
        Destination::parse("bücher.example"),
        Ok(n("xn--bcher-kva.example"))
    );
    assert_eq!(
        Destination::parse("_dmarc.example.com"),
        Ok(n("_dmarc.example.com"))
    );
    for bad in [
        "a..b",
        ".",
        "..",
        "a b",
        "-a.com",
        "*.example.com",
        "exa$mple.com",
        "example.com..",
    ] {
        assert!(Destination::parse(bad).is_err(), "{bad}");
    }
    let long = format!("{}.com", "a".repeat(64));
    assert!(Destination::parse(&long).is_err());
}

#[test]
fn patterns() {
    assert_eq!(
        normalize_pattern("*.Example.com."),
        Ok("*.example.com".to_owned())
    );
    for bad in [
        "*example.com",
        "foo.*.com",
        "*.*.x",
        "*",
        "example.*",
        "a..b",
        "*.",
        "10.0.0.1",
    ] {
        assert!(normalize_pattern(bad).is_err(), "{bad}");
    }
}

/// Ports are `1*5DIGIT` from 1 to 65535 and nothing else: the one parser
/// behind CONNECT, absolute-form, `sluice check` and the configuration.
#[test]
fn ports_are_ascii_digits_only() {
    use sluice_policy::parse_port;
    for (s, want) in [
        ("1", Some(1)),
        ("443", Some(443)),
        ("00443", Some(443)),
        ("65535", Some(65535)),
        ("0", None),
        ("65536", None),
        ("000443", None),
        ("+443", None),
        ("-1", None),
        (" 443", None),
        ("443 ", None),
        ("", None),
        ("0x50", None),
        ("４４３", None),
        ("44_3", None),
    ] {
        assert_eq!(parse_port(s), want, "{s:?}");
    }
}
