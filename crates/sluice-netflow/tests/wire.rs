//! The decoder alone: template expiry and withdrawal, variable-length
//! fields, and a bounded mutation fuzz over valid datagrams of every
//! version (no panic, caches within their bounds).

#![allow(clippy::unwrap_used)]

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use sluice_netflow::{Decoder, Drop, Flow, Limits};

const EXPORTER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const EXPORT: u32 = 1_750_000_000;

fn limits() -> Limits {
    Limits {
        max_templates: 64,
        template_timeout: Duration::from_secs(60),
        pending_sets: 8,
    }
}

fn set(id: u16, body: &[u8]) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend_from_slice(&u16::try_from(4 + body.len()).unwrap().to_be_bytes());
    b.extend_from_slice(body);
    b
}

fn ipfix(domain: u32, sets: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = sets.concat();
    let mut b = vec![0, 10];
    b.extend_from_slice(&u16::try_from(16 + body.len()).unwrap().to_be_bytes());
    b.extend_from_slice(&EXPORT.to_be_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&domain.to_be_bytes());
    b.extend(body);
    b
}

fn template(id: u16, fields: &[(u16, u16)]) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend_from_slice(&u16::try_from(fields.len()).unwrap().to_be_bytes());
    for (f, l) in fields {
        b.extend_from_slice(&f.to_be_bytes());
        b.extend_from_slice(&l.to_be_bytes());
    }
    b
}

/// src, dst, sport, dport, proto, then an interface name of variable
/// length, then bytes and packets.
const FIELDS: &[(u16, u16)] = &[
    (8, 4),
    (12, 4),
    (7, 2),
    (11, 2),
    (4, 1),
    (82, 0xffff),
    (1, 4),
    (2, 4),
];

fn record(name: &[u8], bytes: u32) -> Vec<u8> {
    let mut b = vec![10, 0, 1, 7, 140, 82, 112, 3, 0x9c, 0x40, 1, 0xbb, 6];
    b.push(u8::try_from(name.len()).unwrap());
    b.extend_from_slice(name);
    b.extend_from_slice(&bytes.to_be_bytes());
    b.extend_from_slice(&2u32.to_be_bytes());
    b
}

fn decode(d: &mut Decoder, pkt: &[u8], now: Instant) -> Result<Vec<Flow>, Drop> {
    let mut out = Vec::new();
    d.decode(EXPORTER, pkt, now, &mut out).map(|_| out)
}

#[test]
fn variable_length_fields_expiry_and_withdrawal() {
    let mut d = Decoder::new(limits());
    let t0 = Instant::now();
    let pkt = ipfix(
        1,
        &[
            set(2, &template(256, FIELDS)),
            set(256, &[record(b"eth0", 100), record(b"", 200)].concat()),
        ],
    );
    let flows = decode(&mut d, &pkt, t0).unwrap();
    assert_eq!(flows.len(), 2);
    assert_eq!(flows[0].bytes, 100);
    assert_eq!(flows[1].bytes, 200);
    assert_eq!(flows[1].dst_port, 443);
    assert_eq!(d.templates(), 1);

    // Past the timeout the template is gone: the data waits for a new one.
    let data = ipfix(1, &[set(256, &record(b"x", 300))]);
    let later = t0 + Duration::from_secs(61);
    assert!(decode(&mut d, &data, later).unwrap().is_empty());
    assert_eq!(d.templates(), 0);
    assert_eq!(d.pending(), 1);
    let flows = decode(&mut d, &ipfix(1, &[set(2, &template(256, FIELDS))]), later).unwrap();
    assert_eq!(flows.len(), 1, "the waiting set decoded");
    assert_eq!(flows[0].bytes, 300);
    assert_eq!(d.pending(), 0);

    // Withdrawal (field count 0).
    decode(&mut d, &ipfix(1, &[set(2, &[1, 0, 0, 0])]), later).unwrap();
    assert_eq!(d.templates(), 0);
}

#[test]
fn the_same_template_id_in_another_domain_is_another_template() {
    let mut d = Decoder::new(limits());
    let now = Instant::now();
    decode(&mut d, &ipfix(1, &[set(2, &template(256, FIELDS))]), now).unwrap();
    let other = ipfix(2, &[set(256, &record(b"", 5))]);
    assert!(decode(&mut d, &other, now).unwrap().is_empty());
    assert_eq!(d.pending(), 1);
}

fn v5() -> Vec<u8> {
    let mut b = vec![0, 5, 0, 1];
    b.extend_from_slice(&100_000u32.to_be_bytes());
    b.extend_from_slice(&EXPORT.to_be_bytes());
    b.extend_from_slice(&[0; 12]);
    b.extend_from_slice(&[10, 0, 1, 7, 140, 82, 112, 3, 0, 0, 0, 0, 0, 1, 0, 2]);
    b.extend_from_slice(&3u32.to_be_bytes());
    b.extend_from_slice(&1200u32.to_be_bytes());
    b.extend_from_slice(&90_000u32.to_be_bytes());
    b.extend_from_slice(&99_000u32.to_be_bytes());
    b.extend_from_slice(&[0x9c, 0x40, 1, 0xbb, 0, 0x18, 6, 0, 0, 0, 0, 0, 24, 24, 0, 0]);
    b
}

fn v9() -> Vec<u8> {
    let fields = [
        (8, 4),
        (12, 4),
        (7, 2),
        (11, 2),
        (4, 1),
        (1, 4),
        (2, 4),
        (22, 4),
        (21, 4),
    ];
    let mut rec = vec![10, 0, 1, 7, 140, 82, 112, 3, 0x9c, 0x40, 1, 0xbb, 6];
    for v in [500u32, 5, 90_000, 99_000] {
        rec.extend_from_slice(&v.to_be_bytes());
    }
    let mut options = 300u16.to_be_bytes().to_vec();
    options.extend_from_slice(&[0, 4, 0, 4, 0, 1, 0, 4, 0, 34, 0, 4]);
    let mut b = vec![0, 9, 0, 3];
    b.extend_from_slice(&100_000u32.to_be_bytes());
    b.extend_from_slice(&EXPORT.to_be_bytes());
    b.extend_from_slice(&[0; 8]);
    b.extend(set(0, &template(256, &fields)));
    b.extend(set(1, &options));
    b.extend(set(300, &[0, 0, 0, 0, 0, 0, 0, 10]));
    b.extend(set(256, &rec));
    b
}

#[test]
fn v9_sampling_by_options_record_scales_counts() {
    let mut d = Decoder::new(limits());
    let flows = decode(&mut d, &v9(), Instant::now()).unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!((flows[0].bytes, flows[0].packets), (5000, 50));
    assert_eq!(flows[0].start_ms, Some(i64::from(EXPORT) * 1000 - 10_000));
    let flows = decode(&mut d, &v5(), Instant::now()).unwrap();
    assert_eq!((flows[0].bytes, flows[0].packets), (1200, 3));
}

/// xorshift: a fixed seed, so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap()).unwrap()
    }
}

#[test]
fn mutated_datagrams_never_panic_and_caches_stay_bounded() {
    let seeds = [
        v5(),
        v9(),
        ipfix(
            1,
            &[
                set(2, &template(256, FIELDS)),
                set(256, &record(b"eth0", 1)),
            ],
        ),
    ];
    let mut rng = Rng(0x5eed_0016_cafe_f00d);
    let mut d = Decoder::new(limits());
    let now = Instant::now();
    let started = Instant::now();
    let mut runs = 0u32;
    let mut out = Vec::new();
    // Bounded in count and in time (debug builds are slow).
    while runs < 200_000 && started.elapsed() < Duration::from_secs(20) {
        runs += 1;
        let mut b = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(6) {
            let i = rng.below(b.len());
            match rng.below(5) {
                0 => b[i] = rng.next() as u8,
                1 => b.truncate(i),
                2 => b[i] = 0xff,
                3 => b[i] = 0,
                _ => {
                    let extra: Vec<u8> = (0..rng.below(9)).map(|_| rng.next() as u8).collect();
                    b.splice(i..i, extra);
                }
            }
            if b.is_empty() {
                break;
            }
        }
        out.clear();
        let _ = d.decode(EXPORTER, &b, now, &mut out);
        // The exporter ids vary too: every mutation may open a domain.
        assert!(d.templates() <= 64 && d.pending() <= 8);
    }
    assert!(runs >= 10_000, "only {runs} runs");
}
