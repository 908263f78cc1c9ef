//! Property tests of the policy's public API:
//!
//! - host matching: `*.x` matches a name iff the name ends with `.x`
//!   label-wise, and `x` matches only `x`, whatever the case or trailing dot;
//! - the guard agrees with an independent table of every special range,
//!   written out below from the IANA registries and docs/design.md (deliberately
//!   not read from `special-addresses.tsv`), on addresses biased toward the
//!   edges of those ranges and toward IPv6 forms that embed them;
//! - destination parsing never panics, and a parsed name is lower-case
//!   ASCII without a trailing dot; every numeric IPv4 form parses to the
//!   address it spells.

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use sluice_policy::{Destination, Policy, Request, Verdict, dest::normalize_pattern, guard};

// === host matching ===

/// A one-zone policy: `*.{suffix}` then `{suffix}`, both for port 443.
fn policy_for(suffix: &str) -> Policy {
    let yaml = format!(
        "zones:\n  - name: z\n    allow:\n      - host: \"*.{suffix}\"\n        ports: [443]\n        id: wild\n      - host: \"{suffix}\"\n        ports: [443]\n        id: exact\n"
    );
    Policy::load(&yaml, "props.yaml").unwrap()
}

fn decide_rule(p: &Policy, dest: &Destination) -> (Verdict, String) {
    let d = p.decide(&Request {
        src: "192.0.2.1".parse().unwrap(),
        user: None,
        dest,
        port: 443,
    });
    (d.verdict, d.rule.to_string())
}

/// Labels from a small set, so that names often end in the suffix, and
/// `b-a` / `ab` end in `a` / `b` without being label `a` / `b`. None is all
/// digits: a name ending in a number is an address.
fn label() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "ab", "b-a", "_x", "xn--bcher-kva"]).prop_map(str::to_owned)
}

fn labels(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(label(), 1..=max)
}

/// Upper-cases the characters whose bit in `mask` is set.
fn recase(s: &str, mask: u64) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn wildcard_matches_iff_label_suffix(
        suffix in labels(2),
        name in labels(4),
        mask in any::<u64>(),
        trailing_dot in any::<bool>(),
    ) {
        let suffix = suffix.join(".");
        let name = name.join(".");
        let p = policy_for(&suffix);
        // The client may write the name in any case, with a trailing dot.
        let written = recase(&name, mask) + if trailing_dot { "." } else { "" };
        let dest = Destination::parse(&written).unwrap();
        prop_assert_eq!(&dest, &Destination::Name(name.clone()));
        let labelwise = name.split('.').count() > suffix.split('.').count()
            && name.split('.').rev().zip(suffix.split('.').rev()).all(|(a, b)| a == b);
        let want = if labelwise {
            (Verdict::Allow, "wild")
        } else if name == suffix {
            (Verdict::Allow, "exact")
        } else {
            (Verdict::Deny, "default")
        };
        let (verdict, rule) = decide_rule(&p, &dest);
        prop_assert_eq!((verdict, rule.as_str()), want, "name {} pattern *.{}", name, suffix);
        // Same answer as the plain string test, spelled differently.
        prop_assert_eq!(labelwise, name.ends_with(&format!(".{suffix}")));
    }

    #[test]
    fn a_rule_written_in_any_case_matches_the_same_names(
        suffix in labels(2),
        name in labels(3),
        mask in any::<u64>(),
    ) {
        let suffix = suffix.join(".");
        let name = name.join(".");
        let plain = policy_for(&suffix);
        let shouting = policy_for(&(recase(&suffix, mask) + "."));
        let dest = Destination::parse(&name).unwrap();
        prop_assert_eq!(decide_rule(&plain, &dest), decide_rule(&shouting, &dest));
    }
}

// === the guard against an independent table ===

/// IPv4 blocks that are special (not globally reachable, or multicast and
/// reserved): IANA IPv4 Special-Purpose Address Registry and docs/design.md.
const V4_SPECIAL: &[(&str, u8)] = &[
    ("0.0.0.0", 8),          // "this network"
    ("10.0.0.0", 8),         // private
    ("100.64.0.0", 10),      // shared address space (CGNAT)
    ("127.0.0.0", 8),        // loopback
    ("169.254.0.0", 16),     // link local, cloud metadata
    ("172.16.0.0", 12),      // private
    ("192.0.0.0", 24),       // IETF protocol assignments (except below)
    ("192.0.2.0", 24),       // TEST-NET-1
    ("192.88.99.0", 24),     // deprecated 6to4 relay anycast
    ("192.168.0.0", 16),     // private
    ("198.18.0.0", 15),      // benchmarking
    ("198.51.100.0", 24),    // TEST-NET-2
    ("203.0.113.0", 24),     // TEST-NET-3
    ("224.0.0.0", 4),        // multicast
    ("240.0.0.0", 4),        // reserved
    ("255.255.255.255", 32), // limited broadcast
];

/// Globally reachable blocks inside (or next to) special ones.
const V4_PUBLIC: &[(&str, u8)] = &[
    ("192.0.0.9", 32),    // PCP anycast
    ("192.0.0.10", 32),   // TURN anycast
    ("192.31.196.0", 24), // AS112-v4
    ("192.52.193.0", 24), // AMT
    ("192.175.48.0", 24), // AS112 direct delegation
];

/// IPv6 blocks that are special. Everything outside 2000::/3 is too, except
/// the embedding forms, which are judged by the IPv4 they carry.
const V6_SPECIAL: &[(&str, u8)] = &[
    ("::", 128),            // unspecified
    ("::1", 128),           // loopback
    ("64:ff9b:1::", 48),    // NAT64 local use
    ("100::", 64),          // discard-only
    ("100:0:0:1::", 64),    // dummy prefix
    ("2001::", 23),         // IETF protocol assignments (except below)
    ("2001:2::", 48),       // benchmarking
    ("2001:10::", 28),      // ORCHID (deprecated)
    ("2001:db8::", 32),     // documentation
    ("3fff::", 20),         // documentation
    ("5f00::", 16),         // segment routing SIDs
    ("fc00::", 7),          // unique local
    ("fd00:ec2::254", 128), // AWS metadata (inside fc00::/7)
    ("fe80::", 10),         // link local
    ("fec0::", 10),         // site local (deprecated)
    ("ff00::", 8),          // multicast
];

/// Globally reachable IPv6 blocks inside special ones.
const V6_PUBLIC: &[(&str, u8)] = &[
    ("2001:1::1", 128),     // PCP anycast
    ("2001:1::2", 128),     // TURN anycast
    ("2001:1::3", 128),     // DNS-SD SRP anycast
    ("2001:3::", 32),       // AMT
    ("2001:4:112::", 48),   // AS112-v6
    ("2001:20::", 28),      // ORCHIDv2
    ("2001:30::", 28),      // drone remote ID
    ("2620:4f:8000::", 48), // AS112 direct delegation
];

/// The IPv6 forms that embed IPv4 addresses, by prefix.
const V6_EMBEDDING: &[(&str, u8)] = &[
    ("::", 96),         // IPv4-compatible (deprecated)
    ("::ffff:0:0", 96), // IPv4-mapped
    ("64:ff9b::", 96),  // NAT64 well-known prefix
    ("2002::", 16),     // 6to4
    ("2001::", 32),     // Teredo: server, and client XOR-ed with ones
];

fn in4(ip: Ipv4Addr, (net, len): (&str, u8)) -> bool {
    let net: Ipv4Addr = net.parse().unwrap();
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    u32::from(ip) & mask == u32::from(net)
}

fn in6(ip: Ipv6Addr, (net, len): (&str, u8)) -> bool {
    let net: Ipv6Addr = net.parse().unwrap();
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    u128::from(ip) & mask == u128::from(net)
}

fn oracle_v4(ip: Ipv4Addr) -> bool {
    if V4_PUBLIC.iter().any(|&r| in4(ip, r)) {
        return false;
    }
    V4_SPECIAL.iter().any(|&r| in4(ip, r))
}

/// The IPv4 addresses an IPv6 address carries, if it is an embedding form.
fn oracle_embedded(ip: Ipv6Addr) -> Option<Vec<Ipv4Addr>> {
    let v = u128::from(ip);
    let low32 = Ipv4Addr::from(v as u32);
    if in6(ip, V6_EMBEDDING[0]) || in6(ip, V6_EMBEDDING[1]) || in6(ip, V6_EMBEDDING[2]) {
        return Some(vec![low32]);
    }
    if in6(ip, V6_EMBEDDING[3]) {
        // 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
        return Some(vec![Ipv4Addr::from((v >> 80) as u32)]);
    }
    if in6(ip, V6_EMBEDDING[4]) {
        // 2001:0:SSSS:SSSS:flags:port:CCCC:CCCC, client bits inverted.
        let server = Ipv4Addr::from((v >> 64) as u32);
        let client = Ipv4Addr::from(!(v as u32));
        return Some(vec![server, client]);
    }
    None
}

fn oracle_v6(ip: Ipv6Addr) -> bool {
    if ip == Ipv6Addr::UNSPECIFIED || ip == Ipv6Addr::LOCALHOST {
        return true;
    }
    if V6_PUBLIC.iter().any(|&r| in6(ip, r)) {
        return false;
    }
    if let Some(v4s) = oracle_embedded(ip) {
        return v4s.into_iter().any(oracle_v4);
    }
    if V6_SPECIAL.iter().any(|&r| in6(ip, r)) {
        return true;
    }
    // Only 2000::/3 is allocated for global unicast.
    !in6(ip, ("2000::", 3))
}

fn oracle(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => oracle_v4(v4),
        IpAddr::V6(v6) => oracle_v6(v6),
    }
}

fn block4((net, len): (&str, u8)) -> (u32, u32) {
    let start = u32::from(net.parse::<Ipv4Addr>().unwrap());
    let size = if len == 0 {
        u32::MAX
    } else {
        (1u32 << (32 - u32::from(len))).wrapping_sub(1)
    };
    (start, start | size)
}

fn block6((net, len): (&str, u8)) -> (u128, u128) {
    let start = u128::from(net.parse::<Ipv6Addr>().unwrap());
    let size = if len == 0 {
        u128::MAX
    } else {
        (1u128 << (128 - u32::from(len))).wrapping_sub(1)
    };
    (start, start | size)
}

/// An address near an edge of a listed block: first, last, one before,
/// one after, or somewhere inside.
fn near4(block: (u32, u32), how: u8, r: u128) -> Ipv4Addr {
    let (lo, hi) = block;
    Ipv4Addr::from(match how % 5 {
        0 => lo,
        1 => hi,
        2 => lo.wrapping_sub(1),
        3 => hi.wrapping_add(1),
        _ => lo + (r as u32) % (hi - lo).saturating_add(1).max(1),
    })
}

fn near6(block: (u128, u128), how: u8, r: u128) -> Ipv6Addr {
    let (lo, hi) = block;
    Ipv6Addr::from(match how % 5 {
        0 => lo,
        1 => hi,
        2 => lo.wrapping_sub(1),
        3 => hi.wrapping_add(1),
        _ => lo | (r & (hi - lo)),
    })
}

fn all_v4_blocks() -> Vec<(u32, u32)> {
    V4_SPECIAL
        .iter()
        .chain(V4_PUBLIC)
        .map(|&b| block4(b))
        .collect()
}

fn all_v6_blocks() -> Vec<(u128, u128)> {
    V6_SPECIAL
        .iter()
        .chain(V6_PUBLIC)
        .chain(V6_EMBEDDING)
        .chain(&[("2000::", 3)])
        .map(|&b| block6(b))
        .collect()
}

/// Puts `v4` into embedding form `form`, filling the other bits from `r`.
fn embed(v4: Ipv4Addr, form: u8, r: u128) -> Ipv6Addr {
    let a = u128::from(u32::from(v4));
    let other = u128::from(r as u32);
    Ipv6Addr::from(match form % 6 {
        0 => 0xffff_u128 << 32 | a,                                // mapped
        1 => a,                                                    // compatible
        2 => 0x64_ff9b_u128 << 96 | a,                             // NAT64
        3 => 0x2002_u128 << 112 | a << 80 | (r & ((1 << 80) - 1)), // 6to4
        // Teredo, v4 as server with a random client, or as client.
        4 => 0x2001_0000_u128 << 96 | a << 64 | (r & ((1 << 64) - 1)),
        _ => {
            0x2001_0000_u128 << 96
                | other << 64
                | (r & (0xffff_ffff << 32))
                | u128::from(!(a as u32))
        }
    })
}

/// Addresses biased toward the edges of every listed range, their IPv6
/// embeddings, and some uniformly random ones.
fn interesting_ip() -> impl Strategy<Value = IpAddr> {
    let v4 = all_v4_blocks();
    let v6 = all_v6_blocks();
    let (n4, n6) = (v4.len(), v6.len());
    (
        0u8..5,
        0..n4.max(n6),
        any::<u8>(),
        any::<u8>(),
        any::<u128>(),
    )
        .prop_map(move |(kind, i, how, form, r)| match kind {
            0 => IpAddr::V4(near4(v4[i % n4], how, r)),
            1 => IpAddr::V6(near6(v6[i % n6], how, r)),
            2 => IpAddr::V6(embed(near4(v4[i % n4], how, r), form, r.rotate_left(17))),
            3 => IpAddr::V4(Ipv4Addr::from(r as u32)),
            _ => IpAddr::V6(Ipv6Addr::from(r)),
        })
}

#[test]
fn guard_agrees_with_the_table_at_every_edge() {
    let mut wrong = Vec::new();
    for b in all_v4_blocks() {
        for how in 0..4 {
            let ip = IpAddr::V4(near4(b, how, 0));
            if guard::special(ip).is_some() != oracle(ip) {
                wrong.push(ip);
            }
            for form in 0..6 {
                let ip = IpAddr::V6(embed(near4(b, how, 0), form, 0x0123_4567_89ab_cdef));
                if guard::special(ip).is_some() != oracle(ip) {
                    wrong.push(ip);
                }
            }
        }
    }
    for b in all_v6_blocks() {
        for how in 0..4 {
            let ip = IpAddr::V6(near6(b, how, 0));
            if guard::special(ip).is_some() != oracle(ip) {
                wrong.push(ip);
            }
        }
    }
    let explain: Vec<String> = wrong
        .iter()
        .map(|ip| {
            format!(
                "{ip}: guard {:?}, table {}",
                guard::special(*ip),
                oracle(*ip)
            )
        })
        .collect();
    assert!(explain.is_empty(), "{}", explain.join("\n"));
}

#[test]
fn oracle_sanity() {
    // The hand-written table itself, on the examples docs/design.md names.
    for s in [
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "198.18.0.1",
        "::1",
        "::",
        "fd00:ec2::254",
        "fe80::1",
        "::ffff:127.0.0.1",
        "64:ff9b::a00:1",
        "2002:7f00:1::",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
        "4000::1",
    ] {
        assert!(oracle(s.parse().unwrap()), "{s}");
    }
    for s in [
        "8.8.8.8",
        "192.0.0.9",
        "::ffff:8.8.8.8",
        "2002:808:808::1",
        "2606:4700::1",
    ] {
        assert!(!oracle(s.parse().unwrap()), "{s}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn guard_agrees_with_the_table(ip in interesting_ip()) {
        prop_assert_eq!(
            guard::special(ip).is_some(),
            oracle(ip),
            "{} (guard says {:?})", ip, guard::special(ip)
        );
    }
}

// === destination parsing ===

fn check_name_shape(raw: &str, d: &Destination) -> Result<(), TestCaseError> {
    if let Destination::Name(n) = d {
        prop_assert!(!n.is_empty(), "{raw:?} gave an empty name");
        prop_assert!(!n.ends_with('.'), "{raw:?} gave {n:?} with a trailing dot");
        prop_assert!(
            n.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()),
            "{raw:?} gave {n:?}, not lower-case ASCII"
        );
        prop_assert!(n.len() <= 253, "{raw:?} gave {} bytes", n.len());
        prop_assert!(n.split('.').all(|l| !l.is_empty() && l.len() <= 63));
        // Normalisation is idempotent.
        prop_assert_eq!(Destination::parse(n), Ok(d.clone()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn parse_never_panics_on_any_string(raw in any::<String>()) {
        if let Ok(d) = Destination::parse(&raw) {
            check_name_shape(&raw, &d)?;
        }
        let _ = normalize_pattern(&raw);
    }

    #[test]
    fn parse_never_panics_on_host_like_strings(
        raw in "[a-zA-Z0-9.\\-_%:\\[\\]*xXßüÜİK１２。．]{0,70}"
    ) {
        if let Ok(d) = Destination::parse(&raw) {
            check_name_shape(&raw, &d)?;
        }
        if let Ok(p) = normalize_pattern(&raw) {
            let rest = p.strip_prefix("*.").unwrap_or(&p);
            prop_assert_eq!(Destination::parse(rest), Ok(Destination::Name(rest.to_owned())));
        }
    }

    #[test]
    fn every_numeric_ipv4_form_is_that_address(
        v in any::<u32>(),
        parts in 1usize..=4,
        radix in prop::collection::vec(0u8..3, 4),
        upper in any::<bool>(),
    ) {
        // Split into `parts` numbers: the last fills the remaining bytes.
        let bytes = v.to_be_bytes();
        let mut nums: Vec<u64> = bytes[..parts - 1].iter().map(|&b| u64::from(b)).collect();
        let rest = bytes[parts - 1..].iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b));
        nums.push(rest);
        let text: Vec<String> = nums
            .iter()
            .zip(&radix)
            .map(|(&n, r)| match r {
                0 => n.to_string(),
                1 if upper => format!("0X{n:X}"),
                1 => format!("0x{n:x}"),
                _ => format!("0{n:o}"),
            })
            .collect();
        let text = text.join(".");
        prop_assert_eq!(
            Destination::parse(&text),
            Ok(Destination::Ip(IpAddr::V4(Ipv4Addr::from(v)))),
            "{}", text
        );
    }
}
