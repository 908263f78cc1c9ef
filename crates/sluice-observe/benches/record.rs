//! What one flow costs as a flow-log line, whatever produced it:
//! `cargo bench -p sluice-observe --bench record`.
//!
//! The NetFlow issue asks that every collected flow become the same JSON
//! flow record as a relayed one. This bench measures that floor alone —
//! building a NetFlow-shaped record (ids, RFC 3339 times, the decision's
//! strings), encoding it, and appending it to a file — with no policy,
//! detectors, metrics or admin view, so that the per-flow budget of a
//! binary collector (nfcapd: 0.16–0.27 µs of CPU per flow in
//! `bench/netflow.sh`) can be compared with what the record alone needs.

use std::{
    hint::black_box,
    io::Write,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, SystemTime},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_observe::{FlowRecord, Listener, Protocol};
use sluice_policy::{Mode, Verdict};

/// A record as the NetFlow collector makes one: an allowed flow from a
/// zone host to a public address, judged by a cidr rule.
fn netflow_record(i: u32) -> FlowRecord {
    let start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_900_000_000 + u64::from(i));
    let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0100 + (i & 0xff))), 40_000);
    let mut r = FlowRecord::new(Listener::Netflow, Protocol::Tcp, src, start);
    r.zone = Some("web".to_owned());
    r.mode = Some(Mode::Enforce);
    r.verdict = Verdict::Allow;
    r.enforced = false;
    r.rule = "web/allow/3".to_owned();
    r.reason = "198.51.100.7 is in 198.51.100.0/24 (web/allow/3)".to_owned();
    r.policy_hash = "sha256:3f1c9a0e5b7d2c44".to_owned();
    r.dst_ip = Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)));
    r.dst_port = Some(443);
    r.bytes_out = 1200 + u64::from(i);
    r.packets = Some(3);
    r.exporter = Some("192.0.2.1".to_owned());
    r.finish(start + Duration::from_millis(250));
    r
}

fn record(c: &mut Criterion) {
    let mut g = c.benchmark_group("netflow_record");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u32;
    g.bench_function("build", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(netflow_record(i))
        })
    });
    let r = netflow_record(7);
    let mut out = Vec::with_capacity(4096);
    g.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(&r).write_json(&mut out);
            black_box(out.len())
        })
    });
    // Build, encode and append through a 64 KiB buffer to a real file
    // (the flow log's own write pattern), truncated every 64 MiB.
    let path = std::env::temp_dir().join(format!("sluice-bench-record-{}", std::process::id()));
    let mut file = std::fs::File::create(&path).expect("create the bench file");
    let mut buf = Vec::with_capacity(1 << 16);
    let mut written = 0usize;
    g.bench_function("build_encode_write", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            netflow_record(i).write_json(&mut buf);
            buf.push(b'\n');
            if buf.len() >= 1 << 16 {
                file.write_all(&buf).expect("write the bench file");
                written += buf.len();
                buf.clear();
                if written >= 64 << 20 {
                    file.set_len(0).expect("truncate the bench file");
                    written = 0;
                }
            }
        })
    });
    g.finish();
    let _ = std::fs::remove_file(&path);
}

criterion_group!(benches, record);
criterion_main!(benches);
