//! Bytes → `Destination::parse` (client-written hosts) and
//! `normalize_pattern` (host rule patterns). Invariants: no panic; a parsed
//! name is lower-case ASCII without a trailing dot and parses to itself; an
//! accepted pattern is `name` or `*.name` for such a name.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_policy::{Destination, dest::normalize_pattern};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = Destination::parse(raw) {
        if let Destination::Name(n) = &d {
            assert!(!n.is_empty() && n.len() <= 253, "{raw:?} -> {n:?}");
            assert!(!n.ends_with('.'), "{raw:?} -> {n:?}");
            assert!(
                n.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()),
                "{raw:?} -> {n:?}"
            );
            assert_eq!(Destination::parse(n).as_ref(), Ok(&d), "{raw:?} -> {n:?}");
        }
    }
    if let Ok(p) = normalize_pattern(raw) {
        let rest = p.strip_prefix("*.").unwrap_or(&p);
        assert_eq!(
            Destination::parse(rest),
            Ok(Destination::Name(rest.to_owned())),
            "{raw:?} -> {p:?}"
        );
    }
});
