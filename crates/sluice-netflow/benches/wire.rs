//! The NetFlow decoder alone: `cargo bench -p sluice-netflow --bench wire`.

use std::{
    hint::black_box,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_netflow::{Decoder, Limits};

fn limits() -> Limits {
    Limits {
        max_templates: 4096,
        template_timeout: Duration::from_secs(1800),
        pending_sets: 256,
    }
}

/// A v5 datagram of `n` records.
fn v5(n: usize) -> Vec<u8> {
    let mut b = vec![0u8, 5, 0, n as u8];
    b.extend_from_slice(&0x1000u32.to_be_bytes());
    b.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&[0; 4]);
    for i in 0..n {
        b.extend_from_slice(&[10, 0, 1, i as u8, 198, 51, 100, 7, 0, 0, 0, 0, 0, 1, 0, 2]);
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(&1200u32.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0x0f, 0, 0, 0, 0x0f, 0xff]);
        b.extend_from_slice(&[0x9c, 0x40, 1, 0xbb, 0, 0x1b, 6, 0, 0, 0, 0, 0, 24, 24, 0, 0]);
    }
    b
}

/// An IPFIX datagram: a template (IPv4 5-tuple, 64-bit counts,
/// millisecond times) and `n` records by it.
fn ipfix(n: usize) -> Vec<u8> {
    let fields: [(u16, u16); 9] = [
        (8, 4),
        (12, 4),
        (7, 2),
        (11, 2),
        (4, 1),
        (1, 8),
        (2, 8),
        (152, 8),
        (153, 8),
    ];
    let mut t = Vec::new();
    t.extend_from_slice(&2u16.to_be_bytes());
    t.extend_from_slice(&((8 + fields.len() * 4) as u16).to_be_bytes());
    t.extend_from_slice(&256u16.to_be_bytes());
    t.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    for (id, l) in fields {
        t.extend_from_slice(&id.to_be_bytes());
        t.extend_from_slice(&l.to_be_bytes());
    }
    let mut d = Vec::new();
    d.extend_from_slice(&256u16.to_be_bytes());
    d.extend_from_slice(&((4 + 45 * n) as u16).to_be_bytes());
    for i in 0..n {
        d.extend_from_slice(&[10, 0, 1, i as u8, 198, 51, 100, 7, 0x9c, 0x40, 1, 0xbb, 6]);
        d.extend_from_slice(&1200u64.to_be_bytes());
        d.extend_from_slice(&3u64.to_be_bytes());
        d.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
        d.extend_from_slice(&1_700_000_001_000u64.to_be_bytes());
    }
    let mut b = vec![0, 10];
    b.extend_from_slice(&((16 + t.len() + d.len()) as u16).to_be_bytes());
    b.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    b.extend_from_slice(&1u32.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend(t);
    b.extend(d);
    b
}

fn bench(c: &mut Criterion) {
    let exporter = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let mut g = c.benchmark_group("decode");
    for (name, pkt) in [("v5-30", v5(30)), ("ipfix-template-30", ipfix(30))] {
        g.throughput(Throughput::Elements(30));
        let mut d = Decoder::new(limits());
        let mut out = Vec::with_capacity(30);
        let now = Instant::now();
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                let o = d.decode(exporter, black_box(&pkt), now, &mut out);
                black_box((o, out.len()))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
