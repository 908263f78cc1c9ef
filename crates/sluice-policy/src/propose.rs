//! Proposing a least-privilege allowlist from what was seen (`sluice
//! learn`): observations of flows in, a complete configuration file out.
//!
//! Pure like the rest of this crate: the binary reads the records and says
//! which of them count as evidence; this module tallies them, decides where
//! a wildcard is supported, and writes the YAML. Output is deterministic:
//! every collection is ordered, so the same observations give the same file.
//!
//! - Names are kept as seen. `*.D` replaces them only where at least
//!   [`WILDCARD_MIN_NAMES`] distinct names strictly below `D` were seen and
//!   `D` is a registrable domain (public suffix list, private section
//!   included): never a public suffix such as `github.io` or `co.uk`.
//! - Addresses seen without a name become `/32` or `/128` `cidr` rules. The
//!   records carry no announced prefix, so addresses are never grouped.
//! - A name whose dialed address was special (`localhost`, a private zone)
//!   also gets a `cidr` rule for that address: only a `cidr` allow inside
//!   special space lifts the guard (docs/design.md "Decisions").
//! - Ports are listed as seen (consecutive ports written as a range).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
};

use ipnet::IpNet;

use crate::{
    guard,
    model::{Config, Ports, Rule, Zone},
    policy::Policy,
};

/// Distinct names below one registrable domain needed before they are
/// written as one `*.domain` rule.
pub const WILDCARD_MIN_NAMES: usize = 3;

/// Distinct destinations and sources tallied at most (all zones together):
/// memory stays bounded (about 200 bytes each) whatever the records hold.
pub const MAX_DISTINCT: usize = 500_000;

/// More distinct destinations or sources than [`MAX_DISTINCT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "more than {0} distinct destinations and sources: learn one zone at a time (--zone) or from fewer records"
)]
pub struct TooMany(pub usize);

/// Where a flow went.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// A normalised name, with the address dialed for it if any.
    Name(String, Option<IpAddr>),
    /// An address given without a name.
    Ip(IpAddr),
}

/// One flow that counts as evidence for an allow rule.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// The zone that judged it.
    pub zone: &'a str,
    /// The client address.
    pub src: IpAddr,
    /// Where it went.
    pub target: Target,
    /// The destination port.
    pub port: u16,
    /// Bytes client to destination.
    pub bytes_out: u64,
    /// Bytes destination to client.
    pub bytes_in: u64,
    /// When it started (RFC 3339).
    pub start: &'a str,
    /// When it ended (RFC 3339).
    pub end: &'a str,
}

/// Counts, bytes and first/last seen for one proposed rule.
#[derive(Debug, Clone, Default)]
struct Tally {
    ports: BTreeSet<u16>,
    flows: u64,
    bytes_out: u64,
    bytes_in: u64,
    first: String,
    last: String,
}

#[derive(Debug, Default)]
struct ZoneSeen {
    names: BTreeMap<String, Tally>,
    addrs: BTreeMap<IpAddr, Tally>,
    sources: BTreeSet<IpAddr>,
}

/// Observations tallied per zone, turned into a file by [`Learner::render`].
#[derive(Debug)]
pub struct Learner {
    zones: BTreeMap<String, ZoneSeen>,
    observed: u64,
    distinct: usize,
    limit: usize,
}

impl Default for Learner {
    fn default() -> Self {
        Learner::with_limit(MAX_DISTINCT)
    }
}

/// What to render and from which base.
#[derive(Debug)]
pub struct Proposal<'a> {
    /// The base: `CURRENT` or the embedded default, compiled.
    pub base: &'a Policy,
    /// Where the base came from, for the header comment.
    pub base_name: &'a str,
    /// Only this zone is learned; other base zones are kept as they are.
    pub only_zone: Option<&'a str>,
    /// Rules seen in fewer flows are left out (listed in a comment).
    pub min_count: u64,
    /// Header lines (without `# `) describing the input.
    pub header: Vec<String>,
}

// === impl Tally ===

impl Tally {
    fn add(&mut self, o: &Observation<'_>) {
        self.ports.insert(o.port);
        self.flows += 1;
        self.bytes_out = self.bytes_out.saturating_add(o.bytes_out);
        self.bytes_in = self.bytes_in.saturating_add(o.bytes_in);
        if self.first.is_empty() || o.start < self.first.as_str() {
            o.start.clone_into(&mut self.first);
        }
        if o.end > self.last.as_str() {
            o.end.clone_into(&mut self.last);
        }
    }

    fn merge(&mut self, t: &Tally) {
        self.ports.extend(&t.ports);
        self.flows += t.flows;
        self.bytes_out = self.bytes_out.saturating_add(t.bytes_out);
        self.bytes_in = self.bytes_in.saturating_add(t.bytes_in);
        if self.first.is_empty() || t.first < self.first {
            self.first.clone_from(&t.first);
        }
        if t.last > self.last {
            self.last.clone_from(&t.last);
        }
    }

    fn comment(&self, extra: &str) -> String {
        format!(
            "# {} flow{}, {} bytes out, {} bytes in, first {}, last {}{extra}",
            self.flows,
            if self.flows == 1 { "" } else { "s" },
            self.bytes_out,
            self.bytes_in,
            self.first,
            self.last
        )
    }
}

// === impl Learner ===

impl Learner {
    /// A learner that holds at most `limit` distinct destinations and
    /// sources.
    pub fn with_limit(limit: usize) -> Learner {
        Learner {
            zones: BTreeMap::new(),
            observed: 0,
            distinct: 0,
            limit,
        }
    }

    /// Tally one flow; refused once the limit of distinct destinations and
    /// sources would be passed (one flow adds at most 3).
    pub fn observe(&mut self, o: &Observation<'_>) -> Result<(), TooMany> {
        if self.distinct + 3 > self.limit {
            return Err(TooMany(self.limit));
        }
        self.observed += 1;
        let z = self.zones.entry(o.zone.to_owned()).or_default();
        let before = z.sources.len() + z.names.len() + z.addrs.len();
        z.sources.insert(guard::canonical(o.src));
        match &o.target {
            Target::Name(name, addr) => {
                z.names.entry(name.clone()).or_default().add(o);
                if let Some(ip) = addr.map(guard::canonical) {
                    if guard::special(ip).is_some() {
                        z.addrs.entry(ip).or_default().add(o);
                    }
                }
            }
            Target::Ip(ip) => z.addrs.entry(guard::canonical(*ip)).or_default().add(o),
        }
        self.distinct += z.sources.len() + z.names.len() + z.addrs.len() - before;
        Ok(())
    }

    /// Flows tallied.
    pub fn observed(&self) -> u64 {
        self.observed
    }

    /// The proposed configuration file.
    pub fn render(&self, p: &Proposal<'_>) -> String {
        let base = p.base.config();
        let mut out = String::new();
        out.push_str(
            "# Proposed by `sluice learn`: a least-privilege allowlist from recorded flows.\n",
        );
        for h in &p.header {
            let _ = writeln!(out, "# {h}");
        }
        let _ = writeln!(
            out,
            "# Base: {} (listen, admin.token_file, mode, users, log.flows and each zone's\n\
             # sources, users, mode and deny rules are kept from it; other settings are not).",
            p.base_name
        );
        let _ = writeln!(
            out,
            "# Wildcards: *.D only where {WILDCARD_MIN_NAMES} or more distinct names below D were seen and\n\
             # D is a registrable domain, never a public suffix. Addresses are /32 or /128\n\
             # (records carry no announced prefix to group them by). Ports as seen."
        );
        render_listen(&mut out, base);
        if let Some(t) = &base.admin.token_file {
            let _ = writeln!(out, "admin:\n  token_file: {}", q(&t.display().to_string()));
        }
        let _ = writeln!(out, "mode: {}", base.mode.as_str());
        if !base.tls_sni_must_match {
            out.push_str("tls_sni_must_match: false\n");
        }
        out.push_str("zones:\n");
        let learned = |name: &str| p.only_zone.is_none_or(|z| z == name);
        for z in &base.zones {
            if learned(&z.name) {
                let seen = self.zones.get(&z.name);
                render_zone(&mut out, z, z.sources.clone(), seen, p.min_count);
            } else {
                out.push_str("  # kept as it is (not learned: --zone)\n");
                render_zone_kept(&mut out, z);
            }
        }
        // Zones seen in the records but absent from the base: their sources
        // are the client addresses seen, minus those an earlier zone selects.
        let mut claimed: BTreeSet<IpAddr> = BTreeSet::new();
        for (name, seen) in &self.zones {
            if base.zones.iter().any(|z| &z.name == name) || !learned(name) {
                continue;
            }
            if !zone_name_ok(name) {
                let _ = writeln!(
                    out,
                    "  # a zone named {} was seen: not a zone name, left out",
                    q(name)
                );
                continue;
            }
            let sources: Vec<IpNet> = seen
                .sources
                .iter()
                .filter(|ip| p.base.zone_of(**ip, None).is_none() && !claimed.contains(ip))
                .map(|ip| IpNet::from(*ip))
                .collect();
            if sources.is_empty() {
                let _ = writeln!(
                    out,
                    "  # zone {name}: seen in the records, but every source it was seen from is\n  \
                     # selected by an earlier zone; add it by hand with its users"
                );
                continue;
            }
            claimed.extend(seen.sources.iter());
            let zone = Zone {
                name: name.clone(),
                ..Zone::default()
            };
            out.push_str("  # not in the base: sources are the client addresses seen\n");
            render_zone(&mut out, &zone, Some(sources), Some(seen), p.min_count);
        }
        if !base.users.is_empty() {
            out.push_str("users:\n");
            for u in &base.users {
                let _ = writeln!(out, "  - name: {}", q(&u.name));
                if let Some(h) = &u.password_hash {
                    let _ = writeln!(out, "    password_hash: {}", q(h));
                }
                if let Some(f) = &u.password_hash_file {
                    let _ = writeln!(
                        out,
                        "    password_hash_file: {}",
                        q(&f.display().to_string())
                    );
                }
            }
        }
        if base.log.flows != "stdout" {
            let _ = writeln!(out, "log:\n  flows: {}", q(&base.log.flows));
        }
        out
    }
}

/// The registrable domain below which `name` may be folded into a wildcard:
/// `name` must lie strictly below it, and it must not be a public suffix.
pub fn wildcard_base(name: &str) -> Option<&str> {
    let rd = psl::domain_str(name)?;
    let suffix = psl::suffix_str(rd)?;
    (rd != name && suffix != rd && name.ends_with(&format!(".{rd}"))).then_some(rd)
}

/// `[a-z0-9_-]{1,63}` and not reserved (docs/design.md "Zones"): a name read
/// from a record is checked before it is written back as a zone.
fn zone_name_ok(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !["guard", "default", "inspect"].contains(&name)
}

/// A YAML double-quoted string (JSON's escaping is valid YAML).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn render_listen(out: &mut String, c: &Config) {
    let l = &c.listen;
    let any = [l.http, l.admin, l.socks5, l.transparent, l.dns]
        .iter()
        .any(Option::is_some);
    if !any {
        return;
    }
    out.push_str("listen:\n");
    for (k, v) in [
        ("http", l.http),
        ("admin", l.admin),
        ("socks5", l.socks5),
        ("transparent", l.transparent),
        ("dns", l.dns),
    ] {
        if let Some(a) = v {
            let _ = writeln!(out, "  {k}: {}", q(&a.to_string()));
        }
    }
    if let Some(m) = l.transparent_mark {
        let _ = writeln!(out, "  transparent_mark: {m}");
    }
}

fn ports_text(p: &Ports) -> String {
    match p {
        Ports::Any => "any".to_owned(),
        Ports::List(r) => {
            let items: Vec<String> = r
                .iter()
                .map(|&(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("\"{a}-{b}\"")
                    }
                })
                .collect();
            format!("[{}]", items.join(", "))
        }
    }
}

/// Ports seen, consecutive ones as ranges.
fn seen_ports(ports: &BTreeSet<u16>) -> Ports {
    let mut ranges: Vec<(u16, u16)> = Vec::new();
    for &p in ports {
        match ranges.last_mut() {
            Some((_, b)) if b.checked_add(1) == Some(p) => *b = p,
            _ => ranges.push((p, p)),
        }
    }
    Ports::List(ranges)
}

fn zone_head(out: &mut String, z: &Zone, sources: Option<&[IpNet]>) {
    let _ = writeln!(out, "  - name: {}", q(&z.name));
    if let Some(s) = sources {
        let list: Vec<String> = s.iter().map(|n| q(&n.to_string())).collect();
        let _ = writeln!(out, "    sources: [{}]", list.join(", "));
    }
    if let Some(u) = &z.users {
        let list: Vec<String> = u.iter().map(|n| q(n)).collect();
        let _ = writeln!(out, "    users: [{}]", list.join(", "));
    }
    if let Some(m) = z.mode {
        let _ = writeln!(out, "    mode: {}", m.as_str());
    }
}

fn rule_lines(out: &mut String, r: &Rule) {
    match (&r.host, &r.cidr) {
        (Some(h), _) => {
            let _ = writeln!(out, "      - host: {}", q(h));
        }
        (None, Some(c)) => {
            let _ = writeln!(out, "      - cidr: {}", q(&c.to_string()));
        }
        (None, None) => return,
    }
    if let Some(p) = &r.ports {
        let _ = writeln!(out, "        ports: {}", ports_text(p));
    }
    if let Some(id) = &r.id {
        let _ = writeln!(out, "        id: {}", q(id));
    }
}

fn render_deny(out: &mut String, z: &Zone) {
    if !z.deny.is_empty() {
        out.push_str("    deny:\n");
        for r in &z.deny {
            rule_lines(out, r);
        }
    }
}

fn render_zone_kept(out: &mut String, z: &Zone) {
    zone_head(out, z, z.sources.as_deref());
    if !z.allow.is_empty() {
        out.push_str("    allow:\n");
        for r in &z.allow {
            rule_lines(out, r);
        }
    }
    render_deny(out, z);
}

/// One proposed allow rule with its evidence.
struct Proposed {
    rule: Rule,
    tally: Tally,
    note: String,
}

type SortKey = (String, bool, String);

/// `name` (or, for a wildcard, its domain) read from the right, grouped by
/// registrable domain.
fn sort_key(name: &str, wildcard: bool) -> SortKey {
    let reversed = |s: &str| s.rsplit('.').collect::<Vec<_>>().join(".");
    let rd = if wildcard {
        name
    } else {
        psl::domain_str(name).unwrap_or(name)
    };
    (reversed(rd), !wildcard, reversed(name))
}

fn proposed_rules(seen: &ZoneSeen) -> Vec<Proposed> {
    // Names grouped by the registrable domain they may be folded under.
    let mut below: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for name in seen.names.keys() {
        if let Some(rd) = wildcard_base(name) {
            below.entry(rd).or_default().push(name);
        }
    }
    let folded: BTreeMap<&str, Vec<&str>> = below
        .into_iter()
        .filter(|(_, names)| names.len() >= WILDCARD_MIN_NAMES)
        .collect();
    // Ordered by registrable domain, then name, both read from the right
    // (`com.github`, `io.github.alice`), wildcards first in their domain.
    let mut rules: Vec<(SortKey, Proposed)> = Vec::new();
    let mut wild: BTreeMap<&str, Tally> = BTreeMap::new();
    for (name, t) in &seen.names {
        match wildcard_base(name).filter(|rd| folded.contains_key(rd)) {
            Some(rd) => wild.entry(rd).or_default().merge(t),
            None => rules.push((
                sort_key(name, false),
                Proposed {
                    rule: Rule {
                        host: Some(name.clone()),
                        ..Rule::default()
                    },
                    tally: t.clone(),
                    note: String::new(),
                },
            )),
        }
    }
    for (rd, t) in wild {
        let n = folded.get(rd).map_or(0, Vec::len);
        rules.push((
            sort_key(rd, true),
            Proposed {
                rule: Rule {
                    host: Some(format!("*.{rd}")),
                    ..Rule::default()
                },
                tally: t,
                note: format!(", {n} distinct names below {rd}"),
            },
        ));
    }
    rules.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<Proposed> = rules.into_iter().map(|(_, p)| p).collect();
    for (ip, t) in &seen.addrs {
        out.push(Proposed {
            rule: Rule {
                cidr: Some(IpNet::from(*ip)),
                ..Rule::default()
            },
            tally: t.clone(),
            note: String::new(),
        });
    }
    for p in &mut out {
        p.rule.ports = Some(seen_ports(&p.tally.ports));
    }
    out
}

fn render_zone(
    out: &mut String,
    z: &Zone,
    sources: Option<Vec<IpNet>>,
    seen: Option<&ZoneSeen>,
    min_count: u64,
) {
    zone_head(out, z, sources.as_deref());
    let rules = seen.map(proposed_rules).unwrap_or_default();
    let (kept, dropped): (Vec<_>, Vec<_>) =
        rules.into_iter().partition(|p| p.tally.flows >= min_count);
    if kept.is_empty() {
        out.push_str("    # no allow rule learned: no flow of this zone counted as evidence\n");
    } else {
        out.push_str("    allow:\n");
        for p in &kept {
            let _ = writeln!(out, "      {}", p.tally.comment(&p.note));
            rule_lines(out, &p.rule);
        }
    }
    for p in &dropped {
        let what = p
            .rule
            .host
            .clone()
            .or_else(|| p.rule.cidr.map(|c| c.to_string()))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    # left out (fewer than {min_count} flows): {what} ports {}; {}",
            p.rule.ports.as_ref().map(ports_text).unwrap_or_default(),
            p.tally.comment(&p.note).trim_start_matches("# ")
        );
    }
    render_deny(out, z);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_never_over_a_public_suffix() {
        assert_eq!(wildcard_base("a.github.io"), None);
        assert_eq!(wildcard_base("x.a.github.io"), Some("a.github.io"));
        assert_eq!(wildcard_base("foo.co.uk"), None);
        assert_eq!(wildcard_base("a.foo.co.uk"), Some("foo.co.uk"));
        assert_eq!(wildcard_base("api.github.com"), Some("github.com"));
        assert_eq!(wildcard_base("github.com"), None);
        assert_eq!(wildcard_base("intranet"), None);
    }

    #[test]
    fn memory_is_bounded() {
        let mut l = Learner::with_limit(10);
        let names: Vec<String> = (0..20).map(|i| format!("n{i}.example.com")).collect();
        let mut refused = None;
        for (i, n) in names.iter().enumerate() {
            let o = Observation {
                zone: "z",
                src: IpAddr::from([10, 0, 0, 1]),
                target: Target::Name(n.clone(), None),
                port: 443,
                bytes_out: 0,
                bytes_in: 0,
                start: "a",
                end: "b",
            };
            if l.observe(&o).is_err() {
                refused = Some(i);
                break;
            }
        }
        // One source and 7 names fill 8; the next could pass 10.
        assert_eq!(refused, Some(7));
        assert_eq!(l.observed(), 7);
    }

    #[test]
    fn ports_as_ranges() {
        let p: BTreeSet<u16> = [80, 443, 8000, 8001, 8002, 65535].into();
        assert_eq!(
            seen_ports(&p),
            Ports::List(vec![(80, 80), (443, 443), (8000, 8002), (65535, 65535)])
        );
    }
}
