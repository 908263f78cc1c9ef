//! The DLP scanner alone over a body with no secret: throughput per core.
//! `cargo bench -p sluice-inspect --bench dlp`

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_inspect::{Dlp, HashKey};

fn body() -> Vec<u8> {
    // Text-like data: words, digits and base64, as uploads carry.
    let line = b"user=alice&note=The quick brown fox 1234 jumps over dGhlIGxhenkgZG9n 42 times;\n";
    line.iter().copied().cycle().take(4 << 20).collect()
}

fn scan(c: &mut Criterion) {
    let dlp = Arc::new(Dlp::new(&[], HashKey::random()).unwrap());
    let all: Arc<[bool]> = vec![true; dlp.len()].into();
    let data = body();
    let mut g = c.benchmark_group("dlp");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("stream_4MiB_in_64KiB_chunks", |b| {
        b.iter(|| {
            let mut s = dlp.stream(all.clone());
            for ch in data.chunks(64 * 1024) {
                std::hint::black_box(s.push(ch));
            }
            s.finish()
        })
    });
    g.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);
