//! Destinations as clients write them, turned into what the policy judges
//! and the dialer dials: a normalised ASCII name or an IP address. Anything
//! that looks numeric is an address or an error, never a name, so that
//! `0x7f.1`, `2130706433` or `１２７.０.０.１` cannot pass as names.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use idna::{AsciiDenyList, uts46::DnsLength, uts46::Hyphens, uts46::Uts46};

/// Where a request wants to go, after normalisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A lower-case ASCII (punycode) name without a trailing dot.
    Name(String),
    /// An IP address; IPv4-mapped IPv6 addresses are kept as written.
    Ip(IpAddr),
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Name(n) => f.write_str(n),
            Destination::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Why a destination was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestError {
    /// Empty host.
    #[error("empty host")]
    Empty,
    /// Looks like a number but is not an address a client would accept.
    #[error("`{0}` looks numeric but is not a valid IP address")]
    BadNumeric(String),
    /// Bracketed but not IPv6.
    #[error("`{0}` is not a valid bracketed IPv6 address")]
    BadIpv6(String),
    /// IDNA processing failed.
    #[error("`{0}` is not a valid domain name (IDNA): {1}")]
    Idna(String, String),
    /// Not a valid DNS name.
    #[error("`{0}` is not a valid host name: {1}")]
    BadName(String, &'static str),
}

impl Destination {
    /// Parse a host as sent by a client (a URL or CONNECT authority host, a
    /// SOCKS domain, an SNI). Brackets are optional for IPv6; a `%zone`
    /// suffix is dropped; percent-escapes are decoded as URL parsers do.
    pub fn parse(raw: &str) -> Result<Destination, DestError> {
        if raw.is_empty() {
            return Err(DestError::Empty);
        }
        if let Some(inner) = raw.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| DestError::BadIpv6(raw.to_owned()))?;
            return parse_ipv6(inner)
                .map(Destination::Ip)
                .ok_or_else(|| DestError::BadIpv6(raw.to_owned()));
        }
        if raw.contains(':') {
            return parse_ipv6(raw)
                .map(Destination::Ip)
                .ok_or_else(|| DestError::BadIpv6(raw.to_owned()));
        }
        let decoded;
        let raw = if raw.contains('%') {
            decoded = percent_decode(raw)
                .ok_or_else(|| DestError::BadName(raw.to_owned(), "invalid percent-encoding"))?;
            decoded.as_str()
        } else {
            raw
        };
        if raw.len() > 1024 {
            return Err(DestError::BadName(truncate(raw), "longer than 253 bytes"));
        }
        let ascii = to_ascii(raw)?;
        let name = ascii.strip_suffix('.').unwrap_or(&ascii);
        if name.is_empty() {
            return Err(DestError::Empty);
        }
        if ends_in_number(name) {
            return parse_ipv4_loose(name)
                .map(|v4| Destination::Ip(IpAddr::V4(v4)))
                .ok_or_else(|| DestError::BadNumeric(raw.to_owned()));
        }
        check_name(name).map_err(|why| DestError::BadName(raw.to_owned(), why))?;
        Ok(Destination::Name(name.to_owned()))
    }

    /// The name, if this is one.
    pub fn name(&self) -> Option<&str> {
        match self {
            Destination::Name(n) => Some(n),
            Destination::Ip(_) => None,
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect::<String>() + "…"
}

fn to_ascii(raw: &str) -> Result<String, DestError> {
    if raw
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Ok(raw.to_owned());
    }
    Uts46::new()
        .to_ascii(
            raw.as_bytes(),
            AsciiDenyList::URL,
            Hyphens::Allow,
            DnsLength::Ignore,
        )
        .map(|c| c.into_owned())
        .map_err(|_| DestError::Idna(raw.to_owned(), "UTS 46 processing failed".to_owned()))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn parse_ipv6(s: &str) -> Option<IpAddr> {
    let addr = match s.split_once('%') {
        Some((a, zone)) if !zone.is_empty() => a,
        Some(_) => return None,
        None => s,
    };
    addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// WHATWG's "ends in a number": the last label is all digits or `0x` hex.
fn ends_in_number(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    matches!(last.strip_prefix("0x"), Some(h) if h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A destination port as RFC 3986 writes it (`1*5DIGIT`), from 1 to 65535:
/// ASCII digits only — no sign, space, or other script's digits, not
/// empty. The one port parser of CONNECT and absolute-form targets,
/// `sluice check` and the configuration, so that they cannot disagree.
pub fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

/// IPv4 in every form `inet_aton` and URL parsers accept: one to four parts,
/// each decimal, `0x` hex or `0`-prefixed octal; the last part fills the
/// remaining bytes (`127.1`, `2130706433`, `0x7f000001`, `0177.0.0.1`).
pub fn parse_ipv4_loose(s: &str) -> Option<Ipv4Addr> {
    // On the stack: every CONNECT target with an IP literal comes here
    // (two allocations a tunnel when these were vectors).
    let mut nums = [0u64; 4];
    let mut len = 0;
    for p in s.split('.') {
        if len == nums.len() {
            return None;
        }
        nums[len] = parse_part(p)?;
        len += 1;
    }
    let (last, head) = nums[..len].split_last()?;
    let mut v: u64 = 0;
    for &n in head {
        if n > 255 {
            return None;
        }
        v = (v << 8) | n;
    }
    let rest_bits = 8 * (4 - head.len() as u32);
    if *last >= (1u64 << rest_bits) {
        return None;
    }
    v = (v << rest_bits) | *last;
    u32::try_from(v).ok().map(Ipv4Addr::from)
}

fn parse_part(p: &str) -> Option<u64> {
    if p.is_empty() {
        return None;
    }
    let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
        (h, 16)
    } else if p.len() > 1 && p.starts_with('0') {
        (&p[1..], 8)
    } else {
        (p, 10)
    };
    if digits.is_empty() {
        // "0x" alone is zero for URL parsers.
        return (radix == 16).then_some(0);
    }
    if digits.len() > 12 {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Checks a normalised name: labels 1-63 bytes of `[a-z0-9_-]`, not starting
/// or ending with `-`, at most 253 bytes in all.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.len() > 253 {
        return Err("longer than 253 bytes");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err("a label has characters other than letters, digits, `-` and `_`");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with `-`");
        }
    }
    Ok(())
}

/// Normalise a `host` rule pattern: `example.com` or `*.example.com`,
/// lower case, IDNA to punycode, one trailing dot dropped. Wildcards only as
/// the whole first label; a pattern may not be an IP address.
pub fn normalize_pattern(p: &str) -> Result<String, String> {
    let (wild, rest) = match p.strip_prefix("*.") {
        Some(r) => (true, r),
        None => (false, p),
    };
    if rest.contains('*') {
        return Err(if p == "*" {
            "`*` alone would match everything; use `cidr: 0.0.0.0/0` and `::/0` or mode `open`"
                .to_owned()
        } else {
            "a wildcard is only allowed as the whole first label, as in `*.example.com`".to_owned()
        });
    }
    if rest.is_empty() {
        return Err("empty name".to_owned());
    }
    match Destination::parse(rest) {
        Ok(Destination::Name(n)) => Ok(if wild { format!("*.{n}") } else { n }),
        Ok(Destination::Ip(_)) => Err("an IP address is not a host name; use `cidr:`".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}
