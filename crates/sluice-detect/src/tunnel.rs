//! The `dns-tunnel` detector's score, per (zone, source, registrable
//! domain) over a window of record time (moved from `sluice-dns`, where it
//! ran on the DNS data path; it now runs on DNS flow records, live and
//! offline alike, denied queries included).
//!
//! Data leaves through DNS as many unique, long, random-looking labels
//! under one domain, often asking TXT, NULL or ANY for room in the answer.
//! Over a window (`dns.tunnel_window`), each key keeps the query count,
//! the distinct subdomains, the length and Shannon entropy of the part
//! left of the registrable domain, and the share of TXT/NULL/ANY queries.
//! Once it has `dns.tunnel_min_queries`, a score is computed, each signal
//! normalised to 0..1:
//!
//! ```text
//! score = 0.30 * unique   (distinct subdomains / queries)
//!       + 0.25 * length   (mean subdomain length / 40, at most 1)
//!       + 0.25 * entropy  (mean bits per character / 4, at most 1)
//!       + 0.20 * types    (share of TXT, NULL and ANY)
//! ```
//!
//! A score at `dns.tunnel_threshold` or above raises one [`TunnelSignal`]
//! per key and window: `critical` from a score of [`CRITICAL_SCORE`]
//! (unique long random labels asked as TXT, NULL or ANY: data coming back
//! in the answers), `warning` below. Ordinary browsing repeats a few short
//! names (score near 0.1); a tunnel sends unique 50-character base32 labels
//! (0.8 with A queries, 1.0 with TXT). Memory is bounded by [`MAX_DOMAINS`]
//! windows; the distinct subdomains of one by [`MAX_SUBDOMAINS`] hashes.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use sluice_observe::{Alert, AlertKind, Severity, ip_string};

/// Windows tracked at most.
pub const MAX_DOMAINS: usize = 10_000;
/// Distinct subdomains remembered per window (the count saturates there).
pub const MAX_SUBDOMAINS: usize = 4_096;
/// Score from which a tunnelling alert is `critical` rather than `warning`:
/// reached only with most queries asking TXT, NULL or ANY.
pub const CRITICAL_SCORE: f64 = 0.9;

/// Detector settings (from `dns:`).
#[derive(Debug, Clone, Copy)]
pub struct TunnelSettings {
    /// Score that raises an alert.
    pub threshold: f64,
    /// Measurement window.
    pub window: Duration,
    /// Queries in a window before scoring.
    pub min_queries: u32,
}

/// One domain over the threshold: the signals that put it there.
#[derive(Debug, Clone, PartialEq)]
pub struct TunnelSignal {
    /// The zone the queries came from.
    pub zone: String,
    /// The registrable domain.
    pub domain: String,
    /// The score (0..1).
    pub score: f64,
    /// The threshold it reached (`dns.tunnel_threshold`).
    pub threshold: f64,
    /// Queries in the window so far.
    pub queries: u32,
    /// Queries a second over the window so far.
    pub qps: f64,
    /// Distinct subdomains.
    pub unique: usize,
    /// Mean subdomain length.
    pub mean_len: f64,
    /// Longest label seen.
    pub max_label: usize,
    /// Mean Shannon entropy, bits per character.
    pub entropy: f64,
    /// Share of TXT, NULL and ANY queries.
    pub odd_types: f64,
}

/// The detector: windows by (zone, source, registrable domain).
#[derive(Debug)]
pub struct TunnelDetector {
    settings: TunnelSettings,
    windows: HashMap<(u64, IpAddr), Window>,
}

#[derive(Debug)]
struct Window {
    start_ms: i64,
    queries: u32,
    odd: u32,
    subs: HashSet<u64>,
    len_sum: u64,
    entropy_sum: f64,
    max_label: usize,
    alerted: bool,
}

// === impl TunnelDetector ===

impl TunnelDetector {
    /// A detector with `settings`.
    pub fn new(settings: TunnelSettings) -> TunnelDetector {
        TunnelDetector {
            settings,
            windows: HashMap::new(),
        }
    }

    /// Counts one query from `src` in `zone` for `name` (normalised) of
    /// type `qtype` at `at_ms` (record time); a signal when this query
    /// takes its window over the threshold.
    pub fn observe(
        &mut self,
        zone: &str,
        src: IpAddr,
        name: &str,
        qtype: &str,
        at_ms: i64,
    ) -> Option<TunnelSignal> {
        let name = name.trim_end_matches('.');
        let domain = psl::domain_str(name).unwrap_or(name);
        let sub = name
            .strip_suffix(domain)
            .map_or("", |s| s.trim_end_matches('.'));
        let window_ms = i64::try_from(self.settings.window.as_millis()).unwrap_or(i64::MAX);
        let key = (fnv(&[zone.as_bytes(), b"\0", domain.as_bytes()]), src);
        if !self.windows.contains_key(&key) && self.windows.len() >= MAX_DOMAINS {
            self.windows
                .retain(|_, w| at_ms.saturating_sub(w.start_ms) < window_ms);
            if self.windows.len() >= MAX_DOMAINS {
                return None;
            }
        }
        let w = self
            .windows
            .entry(key)
            .or_insert_with(|| Window::new(at_ms));
        if at_ms.saturating_sub(w.start_ms) >= window_ms {
            *w = Window::new(at_ms);
        }
        w.queries = w.queries.saturating_add(1);
        if matches!(qtype, "TXT" | "NULL" | "ANY") {
            w.odd += 1;
        }
        if w.subs.len() < MAX_SUBDOMAINS {
            w.subs.insert(fnv(&[sub.as_bytes()]));
        }
        w.len_sum += sub.len() as u64;
        w.entropy_sum += entropy(sub);
        w.max_label = w
            .max_label
            .max(sub.split('.').map(str::len).max().unwrap_or(0));
        if w.alerted || w.queries < self.settings.min_queries {
            return None;
        }
        let n = f64::from(w.queries);
        let unique = w.subs.len() as f64 / n;
        let mean_len = w.len_sum as f64 / n;
        let mean_entropy = w.entropy_sum / n;
        let odd = f64::from(w.odd) / n;
        let score = 0.30 * unique.min(1.0)
            + 0.25 * (mean_len / 40.0).min(1.0)
            + 0.25 * (mean_entropy / 4.0).min(1.0)
            + 0.20 * odd;
        if score < self.settings.threshold {
            return None;
        }
        w.alerted = true;
        let secs = (at_ms.saturating_sub(w.start_ms) as f64 / 1000.0).max(1.0);
        Some(TunnelSignal {
            zone: zone.to_owned(),
            domain: domain.to_owned(),
            score,
            threshold: self.settings.threshold,
            queries: w.queries,
            qps: n / secs,
            unique: w.subs.len(),
            mean_len,
            max_label: w.max_label,
            entropy: mean_entropy,
            odd_types: odd,
        })
    }
}

// === impl TunnelSignal ===

impl TunnelSignal {
    /// The `dns-tunnel` alert for this signal, raised by the query from
    /// `src` (record id `flow`) at `at`: the registrable domain as `dst`,
    /// every signal in `evidence`.
    pub fn alert(&self, src: IpAddr, flow: &str, at: SystemTime) -> Alert {
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
        let src = ip_string(src.to_canonical());
        let severity = if self.score >= CRITICAL_SCORE {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let summary = format!(
            "possible DNS tunnelling to {} from {src}: {} queries, {} unique subdomains, score {:.2}",
            self.domain, self.queries, self.unique, self.score
        );
        let mut a = Alert::new(AlertKind::DnsTunnel, severity, at, summary);
        a.zone = Some(self.zone.clone());
        a.src = Some(src);
        a.dst = Some(self.domain.clone());
        a.evidence = serde_json::json!({
            "score": round3(self.score),
            "threshold": self.threshold,
            "queries": self.queries,
            "qps": round3(self.qps),
            "unique": self.unique,
            "mean_len": round3(self.mean_len),
            "max_label": self.max_label,
            "entropy": round3(self.entropy),
            "odd_types": round3(self.odd_types),
        });
        a.flows = vec![flow.to_owned()];
        a
    }
}

/// `x` to three decimals: evidence a person reads.
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// === impl Window ===

impl Window {
    fn new(start_ms: i64) -> Window {
        Window {
            start_ms,
            queries: 0,
            odd: 0,
            subs: HashSet::new(),
            len_sum: 0,
            entropy_sum: 0.0,
            max_label: 0,
            alerted: false,
        }
    }
}

/// Shannon entropy of the characters of `s` (dots excluded), bits a character.
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    let mut n = 0u32;
    for b in s.bytes().filter(|b| *b != b'.') {
        counts[usize::from(b)] += 1;
        n += 1;
    }
    if n == 0 {
        return 0.0;
    }
    let n = f64::from(n);
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// FNV-1a over `parts`: a hash that is the same in every process, so that
/// stored baselines keep their keys across restarts.
pub(crate) fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}
