//! Lookup structures for the compiled policy. Each answers "the first rule
//! in file order that matches", in time that grows with the size of the
//! query (labels of a name, bits of an address), not with the rule count.

use std::net::IpAddr;

use hashbrown::HashMap;
use ipnet::IpNet;

/// Indices of rules sharing one key, in file order. Most keys have one.
#[derive(Debug, Clone)]
enum Hits {
    One(u32),
    Many(Box<[u32]>),
}

impl Hits {
    fn push(&mut self, i: u32) {
        *self = match self {
            Hits::One(a) => Hits::Many(vec![*a, i].into_boxed_slice()),
            Hits::Many(v) => {
                let mut v = std::mem::take(v).into_vec();
                v.push(i);
                Hits::Many(v.into_boxed_slice())
            }
        }
    }

    fn slice(&self) -> &[u32] {
        match self {
            Hits::One(a) => std::slice::from_ref(a),
            Hits::Many(v) => v,
        }
    }
}

/// Exact names and `*.suffix` wildcards.
#[derive(Debug, Clone, Default)]
pub struct HostTable {
    exact: HashMap<Box<str>, Hits>,
    /// Keyed by the suffix without `*.`.
    wildcard: HashMap<Box<str>, Hits>,
}

impl HostTable {
    /// Adds a normalised pattern for rule `i` (indices must be added in order).
    pub fn insert(&mut self, pattern: &str, i: u32) {
        let (map, key) = match pattern.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix),
            None => (&mut self.exact, pattern),
        };
        match map.get_mut(key) {
            Some(h) => h.push(i),
            None => {
                map.insert(key.into(), Hits::One(i));
            }
        }
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// The first rule (lowest index) matching `name` for which `ok` holds.
    pub fn first(&self, name: &str, ok: impl Fn(u32) -> bool) -> Option<u32> {
        if self.is_empty() {
            return None;
        }
        let mut best: Option<u32> = None;
        let mut consider = |hits: &Hits| {
            if let Some(&i) = hits.slice().iter().find(|&&i| ok(i)) {
                best = Some(best.map_or(i, |b| b.min(i)));
            }
        };
        if let Some(h) = self.exact.get(name) {
            consider(h);
        }
        if !self.wildcard.is_empty() {
            let mut rest = name;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(h) = self.wildcard.get(rest) {
                    consider(h);
                }
            }
        }
        best
    }
}

/// CIDR blocks grouped by prefix length: a lookup masks the address once per
/// distinct length present (at most 33 or 129 probes).
#[derive(Debug, Clone, Default)]
pub struct CidrTable {
    v4: Vec<(u8, HashMap<u32, Hits>)>,
    v6: Vec<(u8, HashMap<u128, Hits>)>,
}

fn mask4(a: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        a & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask6(a: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        a & (u128::MAX << (128 - u32::from(len)))
    }
}

impl CidrTable {
    /// Adds a block for rule `i` (indices must be added in order).
    pub fn insert(&mut self, net: IpNet, i: u32) {
        let len = net.prefix_len();
        match net {
            IpNet::V4(n) => {
                let key = mask4(u32::from(n.network()), len);
                insert_len(&mut self.v4, len, key, i);
            }
            IpNet::V6(n) => {
                let key = mask6(u128::from(n.network()), len);
                insert_len(&mut self.v6, len, key, i);
            }
        }
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// The first rule (lowest index) whose block contains `ip` and for which
    /// `ok` holds.
    pub fn first(&self, ip: IpAddr, ok: impl Fn(u32) -> bool) -> Option<u32> {
        let mut best: Option<u32> = None;
        let mut consider = |hits: &Hits| {
            if let Some(&i) = hits.slice().iter().find(|&&i| ok(i)) {
                best = Some(best.map_or(i, |b| b.min(i)));
            }
        };
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                for (len, map) in &self.v4 {
                    if let Some(h) = map.get(&mask4(a, *len)) {
                        consider(h);
                    }
                }
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                for (len, map) in &self.v6 {
                    if let Some(h) = map.get(&mask6(a, *len)) {
                        consider(h);
                    }
                }
            }
        }
        best
    }
}

fn insert_len<K: std::hash::Hash + Eq>(
    groups: &mut Vec<(u8, HashMap<K, Hits>)>,
    len: u8,
    key: K,
    i: u32,
) {
    let pos = match groups.iter().position(|(l, _)| *l == len) {
        Some(p) => p,
        None => {
            groups.push((len, HashMap::new()));
            groups.sort_by_key(|(l, _)| std::cmp::Reverse(*l));
            groups.iter().position(|(l, _)| *l == len).unwrap_or(0)
        }
    };
    let map = &mut groups[pos].1;
    match map.get_mut(&key) {
        Some(h) => h.push(i),
        None => {
            map.insert(key, Hits::One(i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_first_in_file_order() {
        let mut t = HostTable::default();
        t.insert("*.example.com", 0);
        t.insert("api.example.com", 1);
        t.insert("*.api.example.com", 2);
        assert_eq!(t.first("api.example.com", |_| true), Some(0));
        assert_eq!(t.first("api.example.com", |i| i != 0), Some(1));
        assert_eq!(t.first("x.api.example.com", |i| i != 0), Some(2));
        assert_eq!(t.first("example.com", |_| true), None);
        assert_eq!(t.first("badexample.com", |_| true), None);
    }

    #[test]
    fn cidrs_first_in_file_order() {
        let mut t = CidrTable::default();
        t.insert("10.0.0.0/8".parse().unwrap(), 0);
        t.insert("10.1.0.0/16".parse().unwrap(), 1);
        t.insert("0.0.0.0/0".parse().unwrap(), 2);
        t.insert("2001:db8::/32".parse().unwrap(), 3);
        assert_eq!(t.first("10.1.2.3".parse().unwrap(), |_| true), Some(0));
        assert_eq!(t.first("10.1.2.3".parse().unwrap(), |i| i != 0), Some(1));
        assert_eq!(t.first("11.0.0.1".parse().unwrap(), |_| true), Some(2));
        assert_eq!(t.first("2001:db8::1".parse().unwrap(), |_| true), Some(3));
        assert_eq!(t.first("2001:db9::1".parse().unwrap(), |_| true), None);
    }
}
