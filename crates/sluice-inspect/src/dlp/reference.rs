//! The first DLP scanner, frozen: one `RegexSet` pass over the buffer,
//! then each matching detector's regex over the whole buffer. It is what
//! [`super::Dlp`] must agree with (the differential tests in
//! `dlp/differential.rs`) and what `benches/dlp.rs` measures it against.
//! The gateway never uses it.
//!
//! Its stream has a flaw the fast one has not: a match at the very end
//! of a chunk is counted at once, so a cut right after `AKIA` + 16
//! characters followed by more word bytes counts an `aws` finding that
//! the whole body does not hold, and a token cut short is hashed short.
//! The differential tests hold the fast stream to the reference's
//! *whole-body* scan, not to this stream.

use std::sync::Arc;

use regex::bytes::{Regex, RegexSet, RegexSetBuilder};

use super::{Check, DlpError, Enabled, Finding, HashKey, PATTERNS, compile, valid};

/// What a scan gathered.
#[derive(Debug, Default)]
struct Acc {
    findings: Vec<Finding>,
    /// Per detector, where its last counted match started (a match seen
    /// again, longer, after more data came is not counted twice).
    last_start: Vec<(usize, u64)>,
}

/// The reference scanner: the built-ins, then custom patterns.
#[derive(Debug)]
pub struct Reference {
    set: RegexSet,
    detectors: Vec<(Arc<str>, Regex, Check, usize)>,
    key: HashKey,
}

/// A body scanned in chunks by the [`Reference`], with the same hold-back
/// as [`super::Stream`].
#[derive(Debug)]
pub struct ReferenceStream {
    dlp: Arc<Reference>,
    enabled: Arc<Enabled>,
    window: usize,
    buf: Vec<u8>,
    base: u64,
    acc: Acc,
}

// === impl Reference ===

impl Reference {
    /// The built-ins and `custom` patterns (name, regex), hashing with `key`.
    pub fn new(custom: &[(String, String)], key: HashKey) -> Result<Reference, DlpError> {
        let mut detectors = Vec::new();
        let all = PATTERNS
            .iter()
            .map(|(n, p, c)| ((*n).to_owned(), (*p).to_owned(), *c))
            .chain(
                custom
                    .iter()
                    .map(|(n, p)| (n.clone(), p.clone(), Check::None)),
            );
        for (name, pat, check) in all {
            let c = compile(&name, &pat)?;
            let re = regex::bytes::RegexBuilder::new(&pat)
                .size_limit(16 << 20)
                .build()
                .map_err(|e| DlpError::Regex {
                    name: name.clone(),
                    msg: e.to_string(),
                })?;
            detectors.push((Arc::from(name.as_str()), re, check, c.max_len));
        }
        let set = RegexSetBuilder::new(detectors.iter().map(|d| d.1.as_str()))
            .size_limit(64 << 20)
            .build()
            .map_err(|e| DlpError::Regex {
                name: "(set)".into(),
                msg: e.to_string(),
            })?;
        Ok(Reference {
            set,
            detectors,
            key,
        })
    }

    /// Scans `data` whole.
    pub fn scan(&self, data: &[u8], enabled: &Enabled) -> Vec<Finding> {
        let mut acc = Acc::default();
        self.scan_into(data, 0, 0, enabled, &mut acc);
        acc.findings
    }

    /// A stream over a body, with `enabled` detectors.
    pub fn stream(self: &Arc<Self>, enabled: Arc<Enabled>) -> ReferenceStream {
        let window = self
            .detectors
            .iter()
            .zip(enabled.iter())
            .filter(|(_, on)| **on)
            .map(|(d, _)| d.3)
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        ReferenceStream {
            window,
            dlp: self.clone(),
            enabled,
            buf: Vec::new(),
            base: 0,
            acc: Acc::default(),
        }
    }

    fn scan_into(&self, buf: &[u8], base: u64, skip: usize, enabled: &Enabled, acc: &mut Acc) {
        let hits = self.set.matches(buf);
        if !hits.matched_any() {
            return;
        }
        for i in hits.iter() {
            if !enabled.get(i).copied().unwrap_or(false) {
                continue;
            }
            let Some((name, re, check, _)) = self.detectors.get(i) else {
                continue;
            };
            for m in re.find_iter(buf) {
                if m.end() <= skip {
                    continue;
                }
                let start = base + m.start() as u64;
                if acc.last_start.iter().any(|(j, s)| *j == i && *s >= start) {
                    continue;
                }
                let Some(norm) = valid(*check, m.as_bytes()) else {
                    continue;
                };
                acc.last_start.retain(|(j, _)| *j != i);
                acc.last_start.push((i, start));
                match acc.findings.iter_mut().find(|f| f.index == i) {
                    Some(f) => f.count += 1,
                    None => acc.findings.push(Finding {
                        detector: name.clone(),
                        index: i,
                        count: 1,
                        hash: self.key.hash(&norm),
                    }),
                }
            }
        }
    }
}

// === impl ReferenceStream ===

impl ReferenceStream {
    /// Scans `chunk` after all earlier data; returns the released bytes.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let skip = self.buf.len();
        self.buf.extend_from_slice(chunk);
        self.dlp
            .scan_into(&self.buf, self.base, skip, &self.enabled, &mut self.acc);
        let keep = self.window.min(self.buf.len());
        let cut = self.buf.len() - keep;
        let tail = self.buf.split_off(cut);
        self.base += cut as u64;
        std::mem::replace(&mut self.buf, tail)
    }

    /// Everything found so far.
    pub fn findings(&self) -> &[Finding] {
        &self.acc.findings
    }
}
