//! The bus's names, computed the same way by every replica and follower
//! (and by any other consumer): the flow subject of a record, its
//! partition, and a follower's share of the partitions (`--partition K/N`).
//!
//! A record's partition is `fnv1a32(octets) % partitions`, where `octets`
//! are the source address's bytes in network order — 4 for IPv4 (an
//! IPv4-mapped IPv6 source counts as its IPv4 address), 16 for IPv6 — and
//! FNV-1a 32 is offset basis `0x811c9dc5`, prime `0x01000193`, each byte
//! XORed in before the multiply. `127.0.0.1` hashes to `0xdaaf40ed`.
//! Pure; no I/O.

use std::{fmt, net::IpAddr, str::FromStr};

use sluice_observe::FlowRecord;

/// Where every new alert is published.
pub const ALERTS: &str = "sluice.alerts";

/// What every flow subject starts with (`sluice.flows.<zone>.<p>`).
pub const FLOWS: &str = "sluice.flows";

/// The zone token of records without a zone (`default` is a reserved zone
/// name, so it never clashes with a real one).
pub const NO_ZONE: &str = "default";

/// The subjects a stream must hold for the bus: every flow partition of
/// every zone, and the alerts.
pub const STREAM_SUBJECTS: [&str; 2] = ["sluice.flows.>", ALERTS];

/// FNV-1a, 32 bits: small, stable across versions and languages, and
/// spreads neighbouring addresses well enough for a modulo (Rust's
/// `RandomState` would differ per process, which is useless here).
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The partition (`0..partitions`) of a source address; `partitions` 0
/// counts as 1.
pub fn partition_of(ip: IpAddr, partitions: u32) -> u32 {
    let h = match ip.to_canonical() {
        IpAddr::V4(v4) => fnv1a32(&v4.octets()),
        IpAddr::V6(v6) => fnv1a32(&v6.octets()),
    };
    h % partitions.max(1)
}

/// The subject of a record: `sluice.flows.<zone>.<p>`.
pub fn flow_subject(r: &FlowRecord, partitions: u32) -> String {
    let zone = r.zone.as_deref().unwrap_or(NO_ZONE);
    let p = partition_of(r.src.ip(), partitions);
    format!("{FLOWS}.{zone}.{p}")
}

/// The filter of one partition across every zone: `sluice.flows.*.<p>`
/// (one subject: nats-server 2.9 takes one filter per consumer).
pub fn partition_filter(p: u32) -> String {
    format!("{FLOWS}.*.{p}")
}

/// A follower's share: follower `k` of `n` takes the partitions `p` with
/// `p % n == k`. `0/1` takes all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    k: u32,
    n: u32,
}

/// A `--partition` value that is not `K/N` with `K < N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "expected --partition K/N with whole numbers 0 <= K < N (e.g. 0/2 and 1/2 for two followers), found `{0}`"
)]
pub struct BadPartition(String);

// === impl Partition ===

impl Partition {
    /// Every partition, for a single follower.
    pub const ALL: Partition = Partition { k: 0, n: 1 };

    /// Follower `k` of `n`; `None` unless `k < n`.
    pub fn new(k: u32, n: u32) -> Option<Partition> {
        (k < n).then_some(Partition { k, n })
    }

    /// Which follower this is (from 0).
    pub fn k(self) -> u32 {
        self.k
    }

    /// How many followers share the partitions.
    pub fn n(self) -> u32 {
        self.n
    }

    /// The partitions out of `0..partitions` that this follower takes; empty
    /// when there are fewer partitions than followers and this one is
    /// left without.
    pub fn owned(self, partitions: u32) -> Vec<u32> {
        (0..partitions.max(1))
            .filter(|p| p % self.n == self.k)
            .collect()
    }
}

impl FromStr for Partition {
    type Err = BadPartition;

    fn from_str(s: &str) -> Result<Partition, BadPartition> {
        let bad = || BadPartition(s.to_owned());
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let num = |t: &str| {
            if t.is_empty() || t.len() > 9 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            t.parse::<u32>().ok()
        };
        let (k, n) = (num(k).ok_or_else(bad)?, num(n).ok_or_else(bad)?);
        Partition::new(k, n).ok_or_else(bad)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::SystemTime};

    use sluice_observe::{Listener, Protocol};

    use super::*;

    #[test]
    fn fnv1a32_matches_the_reference_values() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
        assert_eq!(fnv1a32(&[127, 0, 0, 1]), 0xdaaf_40ed);
    }

    #[test]
    fn partitions_are_stable_and_mapped_addresses_count_as_ipv4() {
        let v4: IpAddr = "10.0.1.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.1.7".parse().unwrap();
        assert_eq!(partition_of(v4, 8), fnv1a32(&[10, 0, 1, 7]) % 8);
        assert_eq!(partition_of(mapped, 8), partition_of(v4, 8));
        assert_eq!(partition_of(v4, 1), 0);
        assert_eq!(partition_of(v4, 0), 0);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let bytes = match v6 {
            IpAddr::V6(a) => a.octets(),
            IpAddr::V4(_) => unreachable!(),
        };
        assert_eq!(partition_of(v6, 16), fnv1a32(&bytes) % 16);
        // Sixteen neighbours spread over more than one of four partitions.
        let used: std::collections::BTreeSet<u32> = (1..=16u8)
            .map(|i| partition_of(IpAddr::from([127, 0, 0, i]), 4))
            .collect();
        assert!(used.len() >= 3, "{used:?}");
    }

    #[test]
    fn subjects_name_the_zone_or_default() {
        let src: SocketAddr = "10.0.1.7:40000".parse().unwrap();
        let mut r = FlowRecord::new(Listener::Http, Protocol::Http, src, SystemTime::now());
        let p = partition_of(src.ip(), 4);
        assert_eq!(flow_subject(&r, 4), format!("sluice.flows.default.{p}"));
        r.zone = Some("web".into());
        assert_eq!(flow_subject(&r, 4), format!("sluice.flows.web.{p}"));
        assert_eq!(partition_filter(3), "sluice.flows.*.3");
    }

    #[test]
    fn partition_k_of_n_parses_and_splits() {
        let p: Partition = "1/3".parse().unwrap();
        assert_eq!((p.k(), p.n()), (1, 3));
        assert_eq!(p.to_string(), "1/3");
        assert_eq!(p.owned(8), [1, 4, 7]);
        assert_eq!(Partition::ALL.owned(4), [0, 1, 2, 3]);
        assert_eq!(
            "2/3".parse::<Partition>().unwrap().owned(2),
            Vec::<u32>::new()
        );
        for bad in [
            "",
            "1",
            "3/3",
            "4/3",
            "-1/3",
            "a/b",
            "1/0",
            "1/3/4",
            " 1/3",
            "+1/3",
            "1/99999999999",
        ] {
            let e = bad.parse::<Partition>().unwrap_err().to_string();
            assert!(e.contains(&format!("found `{bad}`")), "{e}");
        }
    }
}
