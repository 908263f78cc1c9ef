//! Loading a policy of 300 zones and 1,000,000 host rules from a YAML file,
//! end to end (read, parse, validate, compile), and compiling it from the
//! in-memory model. Ignored by default: it writes ~45 MB to the temp
//! directory and takes seconds. Run it in release:
//!
//!     cargo test --release -p sluice-policy --test scale -- --ignored --nocapture

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use sluice_policy::{Destination, Policy, Request, Verdict, parse_config};
use support::scale;

#[test]
#[ignore = "large: run in release with --ignored --nocapture"]
fn load_a_million_rules_end_to_end() {
    let path = std::env::temp_dir().join("sluice-scale-1m.yaml");
    std::fs::write(&path, scale::yaml()).unwrap();
    let file = path.display().to_string();

    let started = Instant::now();
    let text = std::fs::read_to_string(&path).unwrap();
    let policy = Policy::load(&text, &file).unwrap_or_else(|e| panic!("{e}"));
    let end_to_end = started.elapsed();

    // The same steps apart, to see where the time goes.
    let started = Instant::now();
    let config = parse_config(&text, &file).unwrap();
    let parse = started.elapsed();
    let started = Instant::now();
    let compiled = Policy::compile(config, "scale");
    let compile = started.elapsed();

    let rules: usize = policy
        .config()
        .zones
        .iter()
        .map(|z| z.allow.len() + z.deny.len())
        .sum();
    println!(
        "{file}: {} MB, {} zones, {rules} host rules\n  Policy::load (read + parse + validate + compile): {:.3} s\n  parse + validate: {:.3} s\n  compile: {:.3} s",
        text.len() / 1_000_000,
        policy.config().zones.len(),
        end_to_end.as_secs_f64(),
        parse.as_secs_f64(),
        compile.as_secs_f64(),
    );
    assert_eq!(rules, scale::RULES);
    assert_eq!(policy.config(), compiled.config());

    // The file means what the in-memory model means.
    assert_eq!(policy.config().zones, scale::config().zones);
    let z = 299;
    for (name, want, rule) in [
        (scale::name_for(z, 3332), Verdict::Allow, "z299/allow/3167"),
        (scale::name_for(z, 3319), Verdict::Deny, "z299/deny/166"),
        (scale::miss(z), Verdict::Deny, "default"),
    ] {
        let dest = Destination::parse(&name).unwrap();
        let d = compiled.decide(&Request {
            src: scale::client(z),
            user: None,
            dest: &dest,
            port: 443,
        });
        assert_eq!((d.verdict, &*d.rule), (want, rule), "{name}: {d}");
    }
    if !cfg!(debug_assertions) {
        assert!(
            compile <= Duration::from_secs(3),
            "compile took {compile:?}"
        );
    }
    let _ = std::fs::remove_file(&path);
}
