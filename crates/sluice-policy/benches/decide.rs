//! `Policy::compile` and `Policy::decide` at scale: 300 zones and 1,000,000
//! host rules (tests/support/scale.rs). Targets (issue 2): compile ≤ 3 s,
//! decide ≤ 1 µs median.
//!
//!     cargo bench -p sluice-policy --bench decide
//!
//! Compile time is printed once, measured with `Instant` outside criterion
//! (one compile of a million rules is too slow to sample). End-to-end
//! loading of the same policy from a YAML file is measured by
//! `tests/scale.rs` (ignored by default).

use std::{hint::black_box, time::Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_policy::{Destination, Policy, Request, Verdict};

#[allow(clippy::unwrap_used)]
#[path = "../tests/support/scale.rs"]
mod scale;

fn decide(c: &mut Criterion) {
    let config = scale::config();
    let rules: usize = config
        .zones
        .iter()
        .map(|z| z.allow.len() + z.deny.len())
        .sum();
    let started = Instant::now();
    let policy = Policy::compile(config, "bench");
    let took = started.elapsed();
    println!(
        "compile: {} zones, {rules} host rules in {:.3} s (target ≤ 3 s)",
        scale::ZONES,
        took.as_secs_f64()
    );

    // Zone 150, well inside the zone table; rules far from the start.
    let z = 150;
    let src = scale::client(z);
    let exact_rule = 2_001; // 2001 % 10 = 1: exact; % 20 = 1: allow
    let wild_rule = 3_008; // 3008 % 10 = 8: wildcard; % 20 = 8: allow
    let cases = [
        ("exact hit", scale::name_for(z, exact_rule), Verdict::Allow),
        (
            "wildcard hit",
            scale::name_for(z, wild_rule),
            Verdict::Allow,
        ),
        ("miss, 4 labels", scale::miss(z), Verdict::Deny),
    ];
    let mut group = c.benchmark_group("decide");
    for (label, name, want) in cases {
        let dest = Destination::parse(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let req = Request {
            src,
            user: None,
            dest: &dest,
            port: 443,
        };
        // Benchmark only what was checked to be the intended case.
        let d = policy.decide(&req);
        assert_eq!(d.verdict, want, "{label}: {d}");
        assert_eq!(d.zone.as_deref(), Some("z150"), "{label}: {d}");
        group.bench_function(label, |b| b.iter(|| policy.decide(black_box(&req))));
    }
    let raw = scale::name_for(z, exact_rule).to_uppercase();
    group.bench_function("parse + decide, exact hit", |b| {
        b.iter(|| {
            let dest = Destination::parse(black_box(&raw)).unwrap_or_else(|e| panic!("{e}"));
            policy.decide(&Request {
                src,
                user: None,
                dest: &dest,
                port: 443,
            })
        })
    });
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
