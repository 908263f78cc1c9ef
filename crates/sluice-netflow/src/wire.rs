//! The wire layer: NetFlow v5, v9 (RFC 3954) and IPFIX (RFC 7011)
//! datagrams decoded into [`Flow`]s, pure and synchronous so that it is
//! fuzzed and benchmarked alone (`benches/wire.rs`, the `malformed_*`
//! tests). It reads no clock: the caller passes `now` for template expiry.
//!
//! Our own parser rather than the `netflow_parser` crate (1.0.6): that
//! crate survived 2 M mutated datagrams without a panic and is fast
//! (3.3 M IPFIX flows/s on this machine), but it needs Rust 1.88 (the
//! workspace promises 1.85), keeps one template cache per exporter (so
//! its memory grows with exporters times cache size, where we want one
//! bound over all of them), and hands out every field as an allocated
//! value; we need eleven fields of each record and nothing else.
//!
//! Bounds: a template has at most [`MAX_FIELDS`] fields, the cache at most
//! `max_templates` templates (new ones past it are refused and counted),
//! data waiting for its template at most `pending_sets` sets; every loop
//! advances through a datagram of at most 64 KiB.

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use hashbrown::HashMap;

/// The most fields a template may have (the largest real templates have
/// about 100); a template with more is dropped as malformed.
pub const MAX_FIELDS: usize = 512;

/// Why a datagram, a set or a template was dropped: the `reason` label of
/// `sluice_netflow_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Drop {
    /// Shorter than its header, lengths that do not add up, a template that
    /// cannot be read.
    #[error("malformed")]
    Malformed,
    /// A version other than 5, 9 and 10.
    #[error("unknown-version")]
    UnknownVersion,
    /// Data for a template the exporter never sent (or that expired).
    #[error("unknown-template")]
    UnknownTemplate,
    /// A new template while the cache is full.
    #[error("template-limit")]
    TemplateLimit,
    /// From an address outside `netflow.exporters` (decided by the caller).
    #[error("unknown-exporter")]
    UnknownExporter,
}

impl Drop {
    /// Every reason, for declaring the metric's series.
    pub const ALL: [Drop; 5] = [
        Drop::UnknownExporter,
        Drop::Malformed,
        Drop::UnknownVersion,
        Drop::UnknownTemplate,
        Drop::TemplateLimit,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::UnknownVersion => "unknown-version",
            Drop::UnknownTemplate => "unknown-template",
            Drop::TemplateLimit => "template-limit",
            Drop::UnknownExporter => "unknown-exporter",
        }
    }
}

/// One flow as an exporter reported it, counts already scaled by the
/// sampling rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (0 where the protocol has none).
    pub src_port: u16,
    /// Destination port (ICMP: type and code, as exporters write them).
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Bytes, scaled by the sampling rate.
    pub bytes: u64,
    /// Packets, scaled by the sampling rate.
    pub packets: u64,
    /// First packet, unix ms, when the exporter said.
    pub start_ms: Option<i64>,
    /// Last packet, unix ms, when the exporter said.
    pub end_ms: Option<i64>,
    /// NetFlow version (5, 9 or 10 for IPFIX).
    pub version: u16,
}

/// What one datagram gave besides flows: the parts dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Data sets dropped for want of a template: the oldest of those
    /// kept waiting for theirs, pushed out by newer ones.
    pub unknown_template: u64,
    /// Templates refused because the cache is full.
    pub template_limit: u64,
    /// Sets or templates that could not be read (the rest of the datagram
    /// was still read where its lengths allowed).
    pub malformed: u64,
    /// Templates learnt or refreshed.
    pub templates: u64,
}

/// Bounds of a [`Decoder`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Templates kept at most, over all exporters and domains.
    pub max_templates: usize,
    /// A template not refreshed for this long is forgotten.
    pub template_timeout: Duration,
    /// Data sets waiting for their template, at most.
    pub pending_sets: usize,
}

/// Which template: exporter, observation domain (v9 source id), id.
type Key = (IpAddr, u32, u16);

#[derive(Debug, Clone, Copy)]
struct Field {
    id: u16,
    /// 0xffff: variable length (IPFIX).
    len: u16,
    /// An enterprise-specific element: skipped.
    enterprise: bool,
}

#[derive(Debug)]
struct Template {
    fields: Box<[Field]>,
    /// Leading scope fields of an options template (skipped).
    scopes: usize,
    /// Whether it is an options template.
    options: bool,
    /// The least bytes a record takes (0 for no fields).
    min_len: usize,
    refreshed: Instant,
}

/// What a datagram's header says about time, for the sets it carries.
#[derive(Debug, Clone, Copy)]
struct Clock {
    version: u16,
    /// Export time, unix ms.
    export_ms: i64,
    /// The exporter's uptime at export, ms (v5, v9).
    uptime_ms: Option<i64>,
}

#[derive(Debug)]
struct Pending {
    key: Key,
    clock: Clock,
    body: Box<[u8]>,
}

/// Per exporter and domain: what options records said.
#[derive(Debug, Clone, Copy, Default)]
struct DomainInfo {
    /// 1 in N packets sampled.
    sampling: Option<u32>,
    /// IPFIX `systemInitTimeMilliseconds`, for uptime-relative times.
    init_ms: Option<i64>,
}

/// Templates and sampling per exporter and observation domain, and the
/// decoder of datagrams. One per collector; not shared across threads.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    templates: HashMap<Key, Template>,
    domains: HashMap<(IpAddr, u32), DomainInfo>,
    pending: VecDeque<Pending>,
    /// Whether this datagram already swept expired templates: a datagram
    /// full of new templates against a full cache sweeps once, not once
    /// per template.
    swept: bool,
}

// === impl Decoder ===

impl Decoder {
    /// An empty decoder with these bounds.
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            templates: HashMap::new(),
            domains: HashMap::new(),
            pending: VecDeque::new(),
            swept: false,
        }
    }

    /// Templates cached now.
    pub fn templates(&self) -> usize {
        self.templates.len()
    }

    /// Data sets waiting for their template now.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Decodes one datagram from `exporter` into `out`. `Err` drops the
    /// whole datagram (nothing is added to `out`); `Ok` may still have
    /// dropped sets, as the outcome counts.
    pub fn decode(
        &mut self,
        exporter: IpAddr,
        pkt: &[u8],
        now: Instant,
        out: &mut Vec<Flow>,
    ) -> Result<Outcome, Drop> {
        self.swept = false;
        let version = be16(pkt, 0).ok_or(Drop::Malformed)?;
        match version {
            5 => v5(pkt, out).map(|()| Outcome::default()),
            9 => self.v9(exporter, pkt, now, out),
            10 => self.ipfix(exporter, pkt, now, out),
            _ => Err(Drop::UnknownVersion),
        }
    }

    fn v9(
        &mut self,
        exporter: IpAddr,
        pkt: &[u8],
        now: Instant,
        out: &mut Vec<Flow>,
    ) -> Result<Outcome, Drop> {
        // version, count, sysUptime, unix secs, sequence, source id.
        if pkt.len() < 20 {
            return Err(Drop::Malformed);
        }
        let uptime = be32(pkt, 4).ok_or(Drop::Malformed)?;
        let secs = be32(pkt, 8).ok_or(Drop::Malformed)?;
        let domain = be32(pkt, 16).ok_or(Drop::Malformed)?;
        let clock = Clock {
            version: 9,
            export_ms: i64::from(secs) * 1000,
            uptime_ms: Some(i64::from(uptime)),
        };
        self.sets(exporter, domain, clock, &pkt[20..], now, out)
    }

    fn ipfix(
        &mut self,
        exporter: IpAddr,
        pkt: &[u8],
        now: Instant,
        out: &mut Vec<Flow>,
    ) -> Result<Outcome, Drop> {
        // version, length, export time, sequence, observation domain.
        if pkt.len() < 16 {
            return Err(Drop::Malformed);
        }
        let len = usize::from(be16(pkt, 2).ok_or(Drop::Malformed)?);
        if len != pkt.len() {
            return Err(Drop::Malformed);
        }
        let secs = be32(pkt, 4).ok_or(Drop::Malformed)?;
        let domain = be32(pkt, 12).ok_or(Drop::Malformed)?;
        let clock = Clock {
            version: 10,
            export_ms: i64::from(secs) * 1000,
            uptime_ms: None,
        };
        self.sets(exporter, domain, clock, &pkt[16..], now, out)
    }

    /// The sets (v9 flowsets) after the header: templates first learnt,
    /// data decoded in order.
    fn sets(
        &mut self,
        exporter: IpAddr,
        domain: u32,
        clock: Clock,
        mut body: &[u8],
        now: Instant,
        out: &mut Vec<Flow>,
    ) -> Result<Outcome, Drop> {
        let mut o = Outcome::default();
        let ipfix = clock.version == 10;
        let mut any = false;
        while body.len() >= 4 {
            let id = be16(body, 0).ok_or(Drop::Malformed)?;
            let len = usize::from(be16(body, 2).ok_or(Drop::Malformed)?);
            if len < 4 || len > body.len() {
                // A set that claims more than is there: the datagram's
                // lengths do not add up.
                if any {
                    o.malformed += 1;
                    return Ok(o);
                }
                return Err(Drop::Malformed);
            }
            any = true;
            let set = &body[4..len];
            body = &body[len..];
            match (ipfix, id) {
                (false, 0) | (true, 2) => {
                    self.templates_set(exporter, domain, set, false, ipfix, now, &mut o, out);
                }
                (false, 1) | (true, 3) => {
                    self.templates_set(exporter, domain, set, true, ipfix, now, &mut o, out);
                }
                (_, id) if id >= 256 => {
                    let key = (exporter, domain, id);
                    if !self.data_set(key, clock, set, now, out) {
                        o.unknown_template += self.keep_pending(key, clock, set);
                    }
                }
                // Reserved set ids: skipped, as the RFCs ask.
                _ => {}
            }
        }
        // v9 pads the last flowset; IPFIX lengths must add up exactly.
        if ipfix && !body.is_empty() {
            o.malformed += 1;
        }
        Ok(o)
    }

    #[allow(clippy::too_many_arguments)]
    fn templates_set(
        &mut self,
        exporter: IpAddr,
        domain: u32,
        mut set: &[u8],
        options: bool,
        ipfix: bool,
        now: Instant,
        o: &mut Outcome,
        out: &mut Vec<Flow>,
    ) {
        // Padding at the end of a set is shorter than a template header.
        while set.len() >= 4 && set.iter().any(|&b| b != 0) {
            let Some(t) = read_template(set, options, ipfix) else {
                o.malformed += 1;
                return;
            };
            set = &set[t.used..];
            let key = (exporter, domain, t.id);
            if t.fields.is_empty() {
                // IPFIX withdrawal (field count 0).
                self.templates.remove(&key);
                continue;
            }
            if !self.templates.contains_key(&key)
                && self.templates.len() >= self.limits.max_templates
            {
                if !self.swept {
                    self.swept = true;
                    self.expire(now);
                }
                if self.templates.len() >= self.limits.max_templates {
                    o.template_limit += 1;
                    continue;
                }
            }
            let min_len = t
                .fields
                .iter()
                .map(|f| {
                    if f.len == 0xffff {
                        1
                    } else {
                        usize::from(f.len)
                    }
                })
                .sum();
            self.templates.insert(
                key,
                Template {
                    fields: t.fields.into_boxed_slice(),
                    scopes: t.scopes,
                    options: t.options,
                    min_len,
                    refreshed: now,
                },
            );
            o.templates += 1;
            self.flush_pending(key, now, out);
        }
    }

    /// Forgets templates past the timeout.
    fn expire(&mut self, now: Instant) {
        let timeout = self.limits.template_timeout;
        self.templates
            .retain(|_, t| now.saturating_duration_since(t.refreshed) <= timeout);
    }

    /// Decodes a data set by its template; `false` if there is none (or it
    /// expired).
    fn data_set(
        &mut self,
        key: Key,
        clock: Clock,
        mut set: &[u8],
        now: Instant,
        out: &mut Vec<Flow>,
    ) -> bool {
        let timeout = self.limits.template_timeout;
        let Some(t) = self.templates.get(&key) else {
            return false;
        };
        if now.saturating_duration_since(t.refreshed) > timeout {
            self.templates.remove(&key);
            return false;
        }
        let domain_key = (key.0, key.1);
        let mut info = self.domains.get(&domain_key).copied().unwrap_or_default();
        let before = (info.sampling, info.init_ms);
        if t.min_len == 0 {
            return true;
        }
        while set.len() >= t.min_len {
            let Some((r, used)) = read_record(t, set) else {
                break;
            };
            set = &set[used..];
            if t.options {
                if let Some(s) = r.sampling {
                    info.sampling = Some(s);
                }
                if let Some(ms) = r.init_ms {
                    info.init_ms = Some(ms);
                }
                continue;
            }
            if let Some(f) = r.flow(clock, info) {
                out.push(f);
            }
        }
        if (info.sampling, info.init_ms) != before {
            // Bounded by the template cache: a domain has one entry once
            // it sent an options record, and only through a template.
            if self.domains.len() < self.limits.max_templates
                || self.domains.contains_key(&domain_key)
            {
                self.domains.insert(domain_key, info);
            }
        }
        true
    }

    /// Keeps a data set until its template arrives; returns how many sets
    /// were dropped for it (the oldest, past `pending_sets`).
    fn keep_pending(&mut self, key: Key, clock: Clock, set: &[u8]) -> u64 {
        if self.limits.pending_sets == 0 {
            return 1;
        }
        let mut dropped = 0;
        while self.pending.len() >= self.limits.pending_sets {
            self.pending.pop_front();
            dropped += 1;
        }
        self.pending.push_back(Pending {
            key,
            clock,
            body: set.into(),
        });
        dropped
    }

    /// Decodes the data that waited for `key`'s template.
    fn flush_pending(&mut self, key: Key, now: Instant, out: &mut Vec<Flow>) {
        if !self.pending.iter().any(|p| p.key == key) {
            return;
        }
        let waiting: VecDeque<Pending> = {
            let (mine, rest) = std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|p| p.key == key);
            self.pending = rest;
            mine
        };
        for p in waiting {
            self.data_set(p.key, p.clock, &p.body, now, out);
        }
    }
}

/// A template as read from a set, before it is stored.
struct ReadTemplate {
    id: u16,
    fields: Vec<Field>,
    scopes: usize,
    options: bool,
    /// Bytes of the set it took.
    used: usize,
}

fn read_template(b: &[u8], options: bool, ipfix: bool) -> Option<ReadTemplate> {
    let id = be16(b, 0)?;
    let (count, scopes, mut at) = match (options, ipfix) {
        (false, _) => (usize::from(be16(b, 2)?), 0, 4),
        // IPFIX options: field count (scopes included), scope field count.
        (true, true) => {
            let count = usize::from(be16(b, 2)?);
            if count == 0 {
                (0, 0, 4)
            } else {
                let scopes = usize::from(be16(b, 4)?);
                if scopes == 0 || scopes > count {
                    return None;
                }
                (count, scopes, 6)
            }
        }
        // v9 options: scope and option lengths in bytes, 4 per field.
        (true, false) => {
            let scope_len = usize::from(be16(b, 2)?);
            let option_len = usize::from(be16(b, 4)?);
            if scope_len % 4 != 0 || option_len % 4 != 0 {
                return None;
            }
            (scope_len / 4 + option_len / 4, scope_len / 4, 6)
        }
    };
    if id < 256 || count > MAX_FIELDS {
        return None;
    }
    let mut fields = Vec::with_capacity(count);
    for _ in 0..count {
        let raw = be16(b, at)?;
        let len = be16(b, at + 2)?;
        at += 4;
        let enterprise = ipfix && raw & 0x8000 != 0;
        if enterprise {
            be32(b, at)?;
            at += 4;
        }
        if len == 0xffff && !ipfix {
            return None;
        }
        fields.push(Field {
            id: raw & 0x7fff,
            len,
            enterprise,
        });
    }
    Some(ReadTemplate {
        id,
        fields,
        scopes,
        options,
        used: at,
    })
}

/// The fields of one data record that matter.
#[derive(Debug, Default)]
struct Raw {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    src_port: u16,
    dst_port: u16,
    proto: u8,
    bytes: u64,
    packets: u64,
    start_ms: Option<i64>,
    end_ms: Option<i64>,
    /// Uptime-relative first and last packet (v9 21/22, IPFIX 21/22).
    first_up: Option<i64>,
    last_up: Option<i64>,
    /// Start and end as IPFIX delta microseconds before export (158/159).
    start_delta_us: Option<i64>,
    end_delta_us: Option<i64>,
    sampling: Option<u32>,
    init_ms: Option<i64>,
}

fn read_record(t: &Template, b: &[u8]) -> Option<(Raw, usize)> {
    let mut r = Raw::default();
    let mut at = 0usize;
    for (i, f) in t.fields.iter().enumerate() {
        let len = if f.len == 0xffff {
            let first = usize::from(*b.get(at)?);
            at += 1;
            if first == 255 {
                let l = usize::from(be16(b, at)?);
                at += 2;
                l
            } else {
                first
            }
        } else {
            usize::from(f.len)
        };
        let v = b.get(at..at.checked_add(len)?)?;
        at += len;
        if f.enterprise || i < t.scopes {
            continue;
        }
        field(&mut r, f.id, v);
    }
    Some((r, at))
}

/// One information element into the record.
fn field(r: &mut Raw, id: u16, v: &[u8]) {
    let n = || uint(v);
    let ms = |x: u64| i64::try_from(x).ok();
    match id {
        1 | 85 => r.bytes = n().unwrap_or(0),
        2 | 86 => r.packets = n().unwrap_or(0),
        4 => r.proto = n().and_then(|x| u8::try_from(x).ok()).unwrap_or(0),
        7 => r.src_port = n().and_then(|x| u16::try_from(x).ok()).unwrap_or(0),
        11 => r.dst_port = n().and_then(|x| u16::try_from(x).ok()).unwrap_or(0),
        8 => r.src = v4(v).or(r.src),
        12 => r.dst = v4(v).or(r.dst),
        27 => r.src = v6(v).or(r.src),
        28 => r.dst = v6(v).or(r.dst),
        21 => r.last_up = n().and_then(ms),
        22 => r.first_up = n().and_then(ms),
        // Sampling: samplingInterval, samplerRandomInterval,
        // samplingPacketInterval.
        34 | 50 | 305 => r.sampling = n().and_then(|x| u32::try_from(x).ok()).filter(|&x| x > 0),
        150 => r.start_ms = n().and_then(ms).map(|s| s.saturating_mul(1000)),
        151 => r.end_ms = n().and_then(ms).map(|s| s.saturating_mul(1000)),
        152 => r.start_ms = n().and_then(ms),
        153 => r.end_ms = n().and_then(ms),
        154 | 156 => r.start_ms = ntp_ms(v),
        155 | 157 => r.end_ms = ntp_ms(v),
        158 => r.start_delta_us = n().and_then(ms),
        159 => r.end_delta_us = n().and_then(ms),
        160 => r.init_ms = n().and_then(ms),
        _ => {}
    }
}

// === impl Raw ===

impl Raw {
    fn flow(&self, clock: Clock, info: DomainInfo) -> Option<Flow> {
        let (src, dst) = (self.src?, self.dst?);
        let rate = u64::from(self.sampling.or(info.sampling).unwrap_or(1).max(1));
        let from_uptime = |t: i64| match (clock.uptime_ms, info.init_ms.or(self.init_ms)) {
            (Some(up), _) => Some(clock.export_ms - (up - t)),
            (None, Some(init)) => Some(init + t),
            (None, None) => None,
        };
        let start = self
            .start_ms
            .or_else(|| self.first_up.and_then(from_uptime))
            .or_else(|| self.start_delta_us.map(|d| clock.export_ms - d / 1000));
        let end = self
            .end_ms
            .or_else(|| self.last_up.and_then(from_uptime))
            .or_else(|| self.end_delta_us.map(|d| clock.export_ms - d / 1000));
        Some(Flow {
            src,
            dst,
            src_port: self.src_port,
            dst_port: self.dst_port,
            proto: self.proto,
            bytes: self.bytes.saturating_mul(rate),
            packets: self.packets.saturating_mul(rate),
            start_ms: start,
            end_ms: end,
            version: clock.version,
        })
    }
}

/// NetFlow v5: a 24-byte header and 1..=30 records of 48 bytes, exactly.
fn v5(pkt: &[u8], out: &mut Vec<Flow>) -> Result<(), Drop> {
    let count = usize::from(be16(pkt, 2).ok_or(Drop::Malformed)?);
    if !(1..=30).contains(&count) || pkt.len() != 24 + 48 * count {
        return Err(Drop::Malformed);
    }
    let uptime = i64::from(be32(pkt, 4).ok_or(Drop::Malformed)?);
    let secs = i64::from(be32(pkt, 8).ok_or(Drop::Malformed)?);
    let nsecs = i64::from(be32(pkt, 12).ok_or(Drop::Malformed)?);
    let export_ms = secs * 1000 + nsecs / 1_000_000;
    // Top two bits: the sampling mode; the rest: the interval.
    let rate = u64::from(be16(pkt, 22).ok_or(Drop::Malformed)? & 0x3fff).max(1);
    for r in pkt[24..].chunks_exact(48) {
        let at = |t: u32| export_ms - (uptime - i64::from(t));
        let word = |i: usize| be32(r, i).unwrap_or(0);
        let half = |i: usize| be16(r, i).unwrap_or(0);
        out.push(Flow {
            src: IpAddr::V4(Ipv4Addr::from(word(0))),
            dst: IpAddr::V4(Ipv4Addr::from(word(4))),
            packets: u64::from(word(16)).saturating_mul(rate),
            bytes: u64::from(word(20)).saturating_mul(rate),
            start_ms: Some(at(word(24))),
            end_ms: Some(at(word(28))),
            src_port: half(32),
            dst_port: half(34),
            proto: r[38],
            version: 5,
        });
    }
    Ok(())
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// An unsigned big-endian integer of 1 to 8 bytes (IPFIX reduced-size
/// encoding).
fn uint(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 8 {
        return None;
    }
    Some(v.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

fn v4(v: &[u8]) -> Option<IpAddr> {
    let a: [u8; 4] = v.try_into().ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(a)))
}

fn v6(v: &[u8]) -> Option<IpAddr> {
    let a: [u8; 16] = v.try_into().ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(a)))
}

/// An NTP timestamp (seconds since 1900, fraction) as unix ms.
fn ntp_ms(v: &[u8]) -> Option<i64> {
    const NTP_UNIX: i64 = 2_208_988_800;
    let secs = i64::from(be32(v, 0)?);
    let frac = i64::from(be32(v, 4)?);
    Some((secs - NTP_UNIX) * 1000 + ((frac * 1000) >> 32))
}
