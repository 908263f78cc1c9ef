//! The guard: which destination addresses are special (not globally
//! reachable) and therefore denied in every mode unless a `cidr` allow rule
//! lying entirely inside special space lifts it.
//!
//! The table is `special-addresses.tsv` (the guard's table, described in docs/design.md),
//! compiled in. IPv6 forms that embed IPv4 (mapped, compatible, NAT64, 6to4,
//! Teredo) are judged by the IPv4 addresses they carry. IPv6 outside the
//! global unicast block 2000::/3 that no row names is not allocated for
//! global use and is treated as special too.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::LazyLock,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

const TABLE: &str = include_str!("special-addresses.tsv");

/// How the table treats a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// Special: denied unless lifted.
    Deny,
    /// Judged by the IPv4 address(es) it embeds.
    Embedded,
    /// Globally reachable.
    Public,
}

/// One row of the special-address table.
#[derive(Debug, Clone)]
pub struct Range {
    /// The block.
    pub net: IpNet,
    /// Its registry name.
    pub name: &'static str,
    /// How the guard treats it.
    pub treatment: Treatment,
}

struct Table {
    /// Rows, most specific first.
    v4: Vec<Range>,
    v6: Vec<Range>,
}

static RANGES: LazyLock<Table> = LazyLock::new(|| {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for line in TABLE.lines() {
        if line.starts_with('#') || line.starts_with("prefix") || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&'static str> = line.split('\t').collect();
        let (Some(prefix), Some(name), Some(treat)) = (cols.first(), cols.get(1), cols.get(3))
        else {
            continue;
        };
        let Ok(net) = prefix.parse::<IpNet>() else {
            continue;
        };
        let treatment = match *treat {
            "deny" => Treatment::Deny,
            "embedded" => Treatment::Embedded,
            _ => Treatment::Public,
        };
        let r = Range {
            net,
            name,
            treatment,
        };
        match net {
            IpNet::V4(_) => v4.push(r),
            IpNet::V6(_) => v6.push(r),
        }
    }
    v4.sort_by_key(|r| std::cmp::Reverse(r.net.prefix_len()));
    v6.sort_by_key(|r| std::cmp::Reverse(r.net.prefix_len()));
    Table { v4, v6 }
});

/// Every row of the compiled-in table, for documentation and tests.
pub fn ranges() -> impl Iterator<Item = &'static Range> {
    RANGES.v4.iter().chain(RANGES.v6.iter())
}

/// Why an address is special: the name of the range (for the reason text).
/// `None` means globally reachable.
pub fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    // Masks on integers: `IpNet::contains` on an `IpAddr` computed both
    // ends of every row, 13% of the NetFlow collector's CPU (perf, two
    // guard checks a flow; bench/netflow.sh).
    let a = u32::from(ip);
    let r = RANGES.v4.iter().find(|r| match r.net {
        IpNet::V4(n) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(n.prefix_len()))
                .unwrap_or(0);
            a & mask == u32::from(n.addr()) & mask
        }
        IpNet::V6(_) => false,
    })?;
    (r.treatment == Treatment::Deny).then_some(r.name)
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let Some(r) = RANGES.v6.iter().find(|r| r.net.contains(&IpAddr::V6(ip))) else {
        // Outside every row: only 2000::/3 is allocated for global unicast.
        return if ip.segments()[0] & 0xe000 == 0x2000 {
            None
        } else {
            Some("Not allocated for global unicast (outside 2000::/3)")
        };
    };
    match r.treatment {
        Treatment::Deny => Some(r.name),
        Treatment::Public => None,
        Treatment::Embedded => embedded_v4(ip)
            .into_iter()
            .flatten()
            .flatten()
            .find_map(special_v4)
            .map(|_| r.name),
    }
}

/// The IPv4 addresses an IPv6 address embeds, if it is one of the embedding
/// forms (mapped, compatible, NAT64 well-known prefix, 6to4, Teredo server
/// and de-obfuscated client).
pub fn embedded_v4(ip: Ipv6Addr) -> Option<[Option<Ipv4Addr>; 2]> {
    let o = ip.octets();
    let s = ip.segments();
    let low32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if s[..5] == [0, 0, 0, 0, 0] && (s[5] == 0 || s[5] == 0xffff) {
        return Some([Some(low32), None]);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some([Some(low32), None]);
    }
    if s[0] == 0x2002 {
        return Some([Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])), None]);
    }
    if s[0] == 0x2001 && s[1] == 0 {
        let server = Ipv4Addr::new(o[4], o[5], o[6], o[7]);
        let client = Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]);
        return Some([Some(server), Some(client)]);
    }
    None
}

/// Whether every address of `net` is special, so that an allow rule for it
/// may lift the guard. A block that also covers public space never does.
pub fn entirely_special(net: IpNet) -> bool {
    match net {
        IpNet::V4(n) => v4_block_special(n),
        IpNet::V6(n) => v6_block_special(n),
    }
}

fn v4_block_special(n: Ipv4Net) -> bool {
    let table = &RANGES.v4;
    // Some deny row must contain the block, and no more specific public row
    // may overlap it.
    let Some(container) = table
        .iter()
        .find(|r| r.net.contains(&IpNet::V4(n)))
        .filter(|r| r.treatment == Treatment::Deny)
    else {
        return false;
    };
    !table.iter().any(|r| {
        r.treatment == Treatment::Public
            && r.net.prefix_len() > container.net.prefix_len()
            && overlaps(r.net, IpNet::V4(n))
    })
}

fn v6_block_special(n: Ipv6Net) -> bool {
    let table = &RANGES.v6;
    let Some(container) = table.iter().find(|r| r.net.contains(&IpNet::V6(n))) else {
        return n.prefix_len() >= 3 && n.network().segments()[0] & 0xe000 != 0x2000;
    };
    let overlapped = table.iter().any(|r| {
        r.treatment != Treatment::Deny
            && r.net.prefix_len() > n.prefix_len().min(container.net.prefix_len())
            && r.net.prefix_len() > container.net.prefix_len()
            && overlaps(r.net, IpNet::V6(n))
    });
    match container.treatment {
        Treatment::Deny => !overlapped,
        Treatment::Public => false,
        // An embedded block lifts only when the IPv4 it carries is itself a
        // wholly special block (mapped, compatible and NAT64 at /96 or longer).
        Treatment::Embedded => {
            let s = n.network().segments();
            let mapped_like = s[..5] == [0, 0, 0, 0, 0] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
            if !mapped_like || n.prefix_len() < 96 || overlapped {
                return false;
            }
            let o = n.network().octets();
            Ipv4Net::new(
                Ipv4Addr::new(o[12], o[13], o[14], o[15]),
                n.prefix_len() - 96,
            )
            .is_ok_and(v4_block_special)
        }
    }
}

fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b) || b.contains(&a)
}

/// The address a decision should judge: IPv4-mapped IPv6 is its IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// The block a rule or zone source means: an IPv4-mapped block
/// (`::ffff:a.b.c.d/n`, n ≥ 96) is the IPv4 block it maps, because
/// addresses are judged by `canonical`. Otherwise it would never match.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => n
            .network()
            .to_ipv4_mapped()
            .and_then(|v4| Ipv4Net::new(v4, n.prefix_len() - 96).ok())
            .map_or(net, IpNet::V4),
        _ => net,
    }
}

/// How Sluice answers a special-use domain name (the IANA special-use
/// domain names registry) instead of forwarding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameTreatment {
    /// Can only mean loopback (RFC 6761): answered locally, `127.0.0.1`
    /// and `::1`, never sent to a resolver.
    Loopback,
    /// Has no meaning on the Internet: answered `NXDOMAIN`, never forwarded.
    NxDomain,
    /// A private zone: resolved only for names that an explicit `host`
    /// allow rule names, never because a `cidr` rule might match an answer.
    HostRuleOnly,
}

/// One special-use domain and what Sluice does with names in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialName {
    /// The domain (the name itself and every name below it).
    pub domain: &'static str,
    /// Where it is reserved.
    pub source: &'static str,
    /// What Sluice answers.
    pub treatment: NameTreatment,
}

/// What a name that can only mean loopback resolves to, locally: the
/// proxy dials these and the DNS forwarder answers them.
pub const LOOPBACK_ADDRS: [IpAddr; 2] = [
    IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
];

/// The addresses of `name` when it can only mean loopback (`localhost`,
/// `*.localhost`), without asking any resolver; `None` for other names.
pub fn local_addresses(name: &str) -> Option<&'static [IpAddr]> {
    special_name(name)
        .filter(|s| s.treatment == NameTreatment::Loopback)
        .map(|_| &LOOPBACK_ADDRS[..])
}

/// The special-use domains, one list for the proxy and the DNS forwarder.
/// Reverse names (`in-addr.arpa`, `ip6.arpa`) of special address space
/// are judged by the address table instead ([`special_name`]).
pub const SPECIAL_NAMES: &[SpecialName] = &[
    SpecialName {
        domain: "localhost",
        source: "RFC 6761",
        treatment: NameTreatment::Loopback,
    },
    SpecialName {
        domain: "local",
        source: "RFC 6762",
        treatment: NameTreatment::NxDomain,
    },
    SpecialName {
        domain: "invalid",
        source: "RFC 6761",
        treatment: NameTreatment::NxDomain,
    },
    SpecialName {
        domain: "onion",
        source: "RFC 7686",
        treatment: NameTreatment::NxDomain,
    },
    SpecialName {
        domain: "alt",
        source: "RFC 9476",
        treatment: NameTreatment::NxDomain,
    },
    SpecialName {
        domain: "internal",
        source: "ICANN 2024 private use",
        treatment: NameTreatment::HostRuleOnly,
    },
    SpecialName {
        domain: "home.arpa",
        source: "RFC 8375",
        treatment: NameTreatment::HostRuleOnly,
    },
];

/// The reverse zone of special address space (RFC 6303).
const PRIVATE_REVERSE: SpecialName = SpecialName {
    domain: "in-addr.arpa",
    source: "RFC 6303",
    treatment: NameTreatment::NxDomain,
};

/// The special-use domain `name` (lower-case, no trailing dot) lies in, if
/// any. A reverse name counts when the addresses it stands for (a whole
/// block for a partial name such as `10.in-addr.arpa`) are all special in
/// the address table: private reverse zones are answered, never forwarded.
pub fn special_name(name: &str) -> Option<SpecialName> {
    let under = |d: &str| name == d || name.strip_suffix(d).is_some_and(|head| head.ends_with('.'));
    if let Some(s) = SPECIAL_NAMES.iter().find(|s| under(s.domain)) {
        return Some(*s);
    }
    let block = if let Some(head) = name.strip_suffix(".in-addr.arpa") {
        reverse_v4(head)
    } else if let Some(head) = name.strip_suffix(".ip6.arpa") {
        reverse_v6(head)
    } else {
        None
    };
    block
        .filter(|b| entirely_special(*b))
        .map(|_| PRIVATE_REVERSE)
}

/// `4.3.2.1` (below `in-addr.arpa`) to `1.2.3.4/32`, `10` to `10.0.0.0/8`.
fn reverse_v4(head: &str) -> Option<IpNet> {
    let labels: Vec<&str> = head.split('.').collect();
    if labels.len() > 4 {
        return None;
    }
    let mut o = [0u8; 4];
    for (i, l) in labels.iter().rev().enumerate() {
        if l.is_empty() || l.len() > 3 || (l.len() > 1 && l.starts_with('0')) {
            return None;
        }
        o[i] = l.parse().ok()?;
    }
    let len = u8::try_from(labels.len() * 8).ok()?;
    Ipv4Net::new(Ipv4Addr::from(o), len).ok().map(IpNet::V4)
}

/// Nibbles below `ip6.arpa` to the block they name.
fn reverse_v6(head: &str) -> Option<IpNet> {
    let labels: Vec<&str> = head.split('.').collect();
    if labels.len() > 32 {
        return None;
    }
    let mut bits: u128 = 0;
    for (i, l) in labels.iter().rev().enumerate() {
        let &[c] = l.as_bytes() else { return None };
        let nibble = char::from(c).to_digit(16)?;
        bits |= u128::from(nibble) << (124 - 4 * i);
    }
    let len = u8::try_from(labels.len() * 4).ok()?;
    Ipv6Net::new(Ipv6Addr::from(bits), len).ok().map(IpNet::V6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(s: &str) -> bool {
        special(s.parse().unwrap()).is_some()
    }

    #[test]
    fn table_loaded() {
        assert!(RANGES.v4.len() > 20 && RANGES.v6.len() > 20);
    }

    #[test]
    fn examples() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001:db8::1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "2001:0:a00:1::1",
            "64:ff9b:1::1",
            "3fff::1",
            "100::1",
            "4000::1",
        ] {
            assert!(sp(s), "{s} must be special");
        }
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "192.0.0.9",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:4860:4860::8888",
        ] {
            assert!(!sp(s), "{s} must be public");
        }
    }

    #[test]
    fn lifting_blocks() {
        let es = |s: &str| entirely_special(s.parse().unwrap());
        assert!(es("10.20.0.0/16"));
        assert!(es("169.254.169.254/32"));
        assert!(es("127.0.0.9/32"));
        assert!(es("fd00::/8"));
        assert!(es("::ffff:10.0.0.0/104"));
        assert!(!es("0.0.0.0/0"));
        assert!(!es("::/0"));
        assert!(!es("8.8.8.0/24"));
        assert!(!es("192.0.0.0/24"), "covers the public 192.0.0.9");
        assert!(!es("0.0.0.0/1"));
    }

    #[test]
    fn special_use_names() {
        let t = |n: &str| special_name(n).map(|s| s.treatment);
        assert_eq!(t("localhost"), Some(NameTreatment::Loopback));
        assert_eq!(t("a.b.localhost"), Some(NameTreatment::Loopback));
        assert_eq!(t("notlocalhost"), None);
        assert_eq!(t("localhost.example.com"), None);
        for n in ["printer.local", "x.invalid", "abc.onion", "onion", "y.alt"] {
            assert_eq!(t(n), Some(NameTreatment::NxDomain), "{n}");
        }
        for n in [
            "metadata.google.internal",
            "ip-10-0-0-1.ec2.internal",
            "nas.home.arpa",
        ] {
            assert_eq!(t(n), Some(NameTreatment::HostRuleOnly), "{n}");
        }
        assert_eq!(t("home.arpa.example.com"), None);
        // Reverse names of special space, whole or partial; public ones not.
        for n in [
            "1.0.0.10.in-addr.arpa",
            "10.in-addr.arpa",
            "168.192.in-addr.arpa",
            "20.172.in-addr.arpa",
            "254.169.254.169.in-addr.arpa",
            "1.0.0.127.in-addr.arpa",
            "d.f.ip6.arpa",
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
        ] {
            assert_eq!(t(n), Some(NameTreatment::NxDomain), "{n}");
        }
        for n in [
            "34.216.184.93.in-addr.arpa",
            "172.in-addr.arpa",
            "in-addr.arpa",
            "8.8.8.8.8.in-addr.arpa",
            "01.0.0.10.in-addr.arpa",
            "x.10.in-addr.arpa",
            "2.ip6.arpa",
        ] {
            assert_eq!(t(n), None, "{n}");
        }
    }
}
