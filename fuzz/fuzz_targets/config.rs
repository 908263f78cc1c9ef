//! Bytes → `sluice_policy::parse_config` (YAML parse and validation), and
//! for accepted files `Policy::compile` and one decision per zone.
//! Invariants: no panic; a rejected file has at least one error, each with a
//! 1-based line and column and a message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_policy::{Destination, Policy, Request, parse_config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_config(text, "fuzz.yaml") {
        Ok(config) => {
            let sources: Vec<_> = config
                .zones
                .iter()
                .filter_map(|z| z.sources.as_ref()?.first().map(|n| n.network()))
                .collect();
            let policy = Policy::compile(config, "fuzz");
            let dests = [
                Destination::Name("example.com".to_owned()),
                Destination::Ip("127.0.0.1".parse().expect("literal")),
            ];
            for src in sources {
                for dest in &dests {
                    let d = policy.decide(&Request {
                        src,
                        user: None,
                        dest,
                        port: 443,
                    });
                    let _ = policy.check_addresses(&d, &["10.0.0.1".parse().expect("literal")]);
                }
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "rejected without an error");
            for e in &errors.0 {
                assert!(e.line >= 1 && e.column >= 1, "unpositioned: {e}");
                assert!(!e.message.is_empty(), "no message: {e}");
            }
        }
    }
});
