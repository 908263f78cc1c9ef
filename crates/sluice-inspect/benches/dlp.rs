//! The DLP scanner alone over bodies with no secret, every built-in
//! detector on, streamed in 64 KiB chunks: throughput per core, for the
//! scanner (`dlp`) and, in the same run, the first scanner it replaced
//! (`reference`, which finds the same things).
//!
//! `cargo bench -p sluice-inspect --bench dlp`

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_inspect::dlp::reference::Reference;
use sluice_inspect::{Dlp, HashKey};

const SIZE: usize = 4 << 20;
const CHUNK: usize = 64 * 1024;

/// Text-like form data: words, digits and base64 (as bench/inspect.sh).
fn text() -> Vec<u8> {
    let line = b"user=alice&note=The quick brown fox 1234 jumps over dGhlIGxhenkgZG9n 42 times;\n";
    line.iter().copied().cycle().take(SIZE).collect()
}

/// JSON records: ids, timestamps, amounts, upper-case codes, base64.
fn json() -> Vec<u8> {
    let mut out = Vec::with_capacity(SIZE + 512);
    let mut i: u64 = 0;
    while out.len() < SIZE {
        i += 1;
        out.extend_from_slice(
            format!(
                "{{\"id\": {i}, \"ts\": \"2026-12-05T06:{:02}:{:02}Z\", \"user\": \"user{}@example.com\", \
                 \"amount\": {}.{:02}, \"currency\": \"EUR\", \"ref\": \"INV-{:08}\", \
                 \"tags\": [\"alpha\", \"beta\", \"Gamma Delta\"], \"blob\": \"QmFzZTY0IGRhdGEgaGVyZQ{}==\"}},\n",
                i % 60,
                (i * 7) % 60,
                i % 977,
                (i * 31) % 10_000,
                i % 100,
                i * 13,
                i % 10,
            )
            .as_bytes(),
        );
    }
    out.truncate(SIZE);
    out
}

/// Binary: xorshift bytes (compressed or encrypted uploads).
fn binary() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn scan(c: &mut Criterion) {
    let key = HashKey::random();
    let dlp = Arc::new(Dlp::new(&[], key.clone()).unwrap());
    let reference = Arc::new(Reference::new(&[], key).unwrap());
    let all: Arc<[bool]> = vec![true; dlp.len()].into();
    let mut g = c.benchmark_group("dlp");
    g.throughput(Throughput::Bytes(SIZE as u64));
    for (name, data) in [("text", text()), ("json", json()), ("binary", binary())] {
        // Benign: neither scanner finds anything, so both do the same work.
        assert!(dlp.scan(&data, &all).is_empty(), "{name}");
        assert!(reference.scan(&data, &all).is_empty(), "{name}");
        g.bench_function(format!("dlp/{name}"), |b| {
            b.iter(|| {
                let mut s = dlp.stream(all.clone());
                for ch in data.chunks(CHUNK) {
                    std::hint::black_box(s.push(ch));
                }
                s.finish().release
            })
        });
        g.bench_function(format!("reference/{name}"), |b| {
            b.iter(|| {
                let mut s = reference.stream(all.clone());
                for ch in data.chunks(CHUNK) {
                    std::hint::black_box(s.push(ch));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);
