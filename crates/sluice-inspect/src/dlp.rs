//! DLP detectors: the built-in ones (payment cards, IBAN, cloud and SaaS
//! credentials, PEM private keys, JWTs) and custom patterns, compiled once
//! into a [`Dlp`] and run over request heads ([`Dlp::scan`]) and over
//! bodies in chunks ([`Stream`]).
//!
//! Every pattern is a `regex` (finite automata, linear time: no
//! backtracking on untrusted input) with a bounded match length; the
//! longest of them is the window a [`Stream`] holds back, so that a match
//! spanning two chunks is still found and none of its bytes is released
//! before it was scanned. A pattern whose length is unbounded (`+`, `*`)
//! is refused when the configuration is loaded.
//!
//! A regex over every byte is what made the first scanner slow (about
//! 200-350 MiB/s per core), so the regexes only decide, anchored at the
//! few places a match may start: for the literal-prefixed built-ins, where
//! one of their prefixes (extracted from the regex) occurs, found by one
//! Aho-Corasick automaton; for card numbers and IBANs, which have no
//! literal prefix, inside runs of their class bytes long enough to hold a
//! match, found by a skip loop over a 256-entry table. Custom patterns use
//! the regex's own search (and its literal prefilter). What is found is
//! exactly what the first scanner found (`reference`, the differential
//! tests); the figures are in README "Inspection".
//!
//! Findings carry a detector name, a count and a keyed hash
//! (HMAC-SHA256 under [`HashKey`]) of the first match — never the match.

use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use regex_automata::{Anchored, Input, meta};
use sha2::Sha256;

#[cfg(test)]
mod differential;
#[doc(hidden)]
pub mod reference;

/// The longest match a pattern may have, in bytes: the most a body stream
/// holds back.
pub const MAX_PATTERN_BYTES: usize = 8192;

/// The built-in detectors, in the order findings list them.
pub const BUILT_IN: &[&str] = &[
    "card", "iban", "aws", "gcp", "azure", "github", "gitlab", "slack", "stripe", "pem", "jwt",
];

/// Each built-in detector's pattern and the check a match must pass.
const PATTERNS: &[(&str, &str, Check)] = &[
    (
        "card",
        r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,18}(?-u:\b)",
        Check::Card,
    ),
    (
        "iban",
        r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?-u:\b)",
        Check::Iban,
    ),
    (
        "aws",
        r"(?-u:\b)(?:(?:AKIA|ASIA)[0-9A-Z]{16}(?-u:\b)|(?i:aws_?secret_?access_?key)[\x22']?[ \t]{0,4}[:=][ \t]{0,4}[\x22']?[A-Za-z0-9/+]{40}(?-u:\b))",
        Check::None,
    ),
    (
        "gcp",
        r#""private_key"[ \t]{0,8}:[ \t]{0,8}"-----BEGIN (?:RSA )?PRIVATE KEY-----"#,
        Check::None,
    ),
    (
        "azure",
        r"(?:AccountKey|SharedAccessKey)=[A-Za-z0-9+/]{20,100}={0,2}",
        Check::None,
    ),
    (
        "github",
        r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})(?-u:\b)",
        Check::None,
    ),
    ("gitlab", r"(?-u:\b)glpat-[A-Za-z0-9_-]{20,64}", Check::None),
    (
        "slack",
        r"(?-u:\b)xox[abpr]-[0-9]{6,16}-[A-Za-z0-9-]{6,64}",
        Check::None,
    ),
    (
        "stripe",
        r"(?-u:\b)[rs]k_live_[A-Za-z0-9]{24,99}(?-u:\b)",
        Check::None,
    ),
    (
        "pem",
        r"-----BEGIN (?:[A-Z0-9]{1,12} ){0,3}PRIVATE KEY-----",
        Check::None,
    ),
    (
        "jwt",
        r"(?-u:\b)eyJ[A-Za-z0-9_-]{8,1024}\.eyJ[A-Za-z0-9_-]{4,2048}\.[A-Za-z0-9_-]{16,512}",
        Check::Jwt,
    ),
];

/// What a match must pass besides its pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    None,
    /// 13–19 digits, a known issuer range, and the Luhn checksum.
    Card,
    /// ISO 13616 mod-97.
    Iban,
    /// The first segment decodes to a JSON header naming `alg`.
    Jwt,
}

/// Why a DLP set could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DlpError {
    /// A custom pattern is not a valid regex.
    #[error("pattern `{name}`: {msg}")]
    Regex {
        /// The pattern's name.
        name: String,
        /// What the regex parser said.
        msg: String,
    },
    /// A custom pattern can match without bound, so no window holds it.
    #[error(
        "pattern `{name}`: matches of unbounded or excessive length (at most {MAX_PATTERN_BYTES} bytes; use bounded repetition such as {{1,64}} instead of + or *)"
    )]
    Unbounded {
        /// The pattern's name.
        name: String,
    },
    /// A custom pattern reuses a built-in detector's name or another's.
    #[error("pattern `{0}`: the name is already taken (built-in detectors: {list})", list = BUILT_IN.join(", "))]
    Duplicate(String),
    /// The hash key file is too short to be a key.
    #[error("the hash key must hold at least 16 bytes")]
    ShortKey,
}

/// The key of the findings' keyed hash: the same secret hashes the same
/// under one key, so repeats can be told apart from new secrets without
/// anything that reveals them.
#[derive(Clone)]
pub struct HashKey(Arc<[u8]>);

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(..)")
    }
}

impl HashKey {
    /// A key from a file's contents (surrounding whitespace trimmed).
    pub fn from_bytes(b: &[u8]) -> Result<HashKey, DlpError> {
        let b = b.trim_ascii();
        if b.len() < 16 {
            return Err(DlpError::ShortKey);
        }
        Ok(HashKey(Arc::from(b)))
    }

    /// A random key for this process: hashes are then comparable only
    /// within one run.
    pub fn random() -> HashKey {
        let mut k = [0u8; 32];
        if getrandom::getrandom(&mut k).is_err() {
            // No OS randomness: fall back on what varies per process.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            k[..16].copy_from_slice(&t.to_le_bytes());
            k[16..20].copy_from_slice(&std::process::id().to_le_bytes());
        }
        HashKey(Arc::from(&k[..]))
    }

    /// Keyed hash of `data`: HMAC-SHA256, the first 16 bytes in hex.
    pub fn hash(&self, data: &[u8]) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return String::new();
        };
        mac.update(data);
        let out = mac.finalize().into_bytes();
        out.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }
}

/// One detector.
#[derive(Debug)]
struct Detector {
    name: Arc<str>,
    check: Check,
    /// Its longest match, in bytes.
    max_len: usize,
    /// How its matches are found.
    engine: Engine,
}

/// How a detector's matches are found. Every engine yields exactly the
/// matches `regex::bytes::Regex::find_iter` would over the same buffer
/// (the differential tests hold it to that): the fast ones only decide
/// where a match may start, and the regex, anchored there, decides.
#[derive(Debug)]
enum Engine {
    /// The regex anchored at candidate starts found by a hand-written pass
    /// (patterns with no literal prefix: card numbers, IBANs).
    Run {
        re: meta::Regex,
        run: Run,
        /// Its shortest match: shorter runs cannot hold one.
        min_len: usize,
    },
    /// The regex anchored where one of its literal prefixes occurs (found
    /// by the shared [`Literals`] automaton).
    Literal { re: meta::Regex },
    /// The regex's own search, with its own literal prefilter (custom
    /// patterns).
    Search { re: Regex },
}

/// The prefix-less built-ins' candidate windows: maximal runs of bytes of
/// one class, where a match must lie whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Digits, spaces and dashes; a match starts at a digit after a
    /// non-word byte.
    Card,
    /// `A-Z`, digits and spaces; a match starts with two letters and two
    /// digits after a non-word byte.
    Iban,
}

/// The literal prefixes of the literal-prefixed built-ins, in one
/// automaton (Teddy on x86-64), and which detector owns each.
#[derive(Debug)]
struct Literals {
    ac: AhoCorasick,
    /// Per pattern of `ac`: its bytes and its detector.
    owner: Vec<(Vec<u8>, usize)>,
}

/// A compiled set of detectors: the built-ins, then custom patterns.
#[derive(Debug)]
pub struct Dlp {
    detectors: Vec<Detector>,
    literals: Option<Literals>,
    /// Custom patterns as one set, when there are several: one pass says
    /// which of them to run.
    custom_set: Option<(RegexSet, Vec<usize>)>,
    key: HashKey,
}

/// Which detectors to run: one flag per detector of a [`Dlp`], by index.
pub type Enabled = [bool];

/// One detector's findings in a scan: how many matches, and the keyed hash
/// of the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The detector.
    pub detector: Arc<str>,
    /// Its index in the [`Dlp`].
    pub index: usize,
    /// Matches found.
    pub count: u64,
    /// Keyed hash of the first match, hex.
    pub hash: String,
}

/// A pattern read and measured.
struct Compiled {
    hir: regex_syntax::hir::Hir,
    max_len: usize,
    min_len: usize,
}

// === impl Dlp ===

impl Dlp {
    /// The built-ins and `custom` patterns (name, regex), hashing with `key`.
    pub fn new(custom: &[(String, String)], key: HashKey) -> Result<Dlp, DlpError> {
        let mut detectors = Vec::new();
        let mut owner = Vec::new();
        for (name, pat, check) in PATTERNS {
            let c = compile(name, pat)?;
            let re = anchored_regex(name, pat)?;
            let run = match *check {
                Check::Card => Some(Run::Card),
                Check::Iban => Some(Run::Iban),
                Check::None | Check::Jwt => None,
            };
            let engine = match (run, prefixes(&c.hir)) {
                (Some(run), _) => Engine::Run {
                    re,
                    run,
                    min_len: c.min_len,
                },
                (None, Some(lits)) => {
                    owner.extend(lits.into_iter().map(|l| (l, detectors.len())));
                    Engine::Literal { re }
                }
                // A built-in always has a finite prefix set (a unit test
                // says so); were it not, the plain search still finds all.
                (None, None) => Engine::Search {
                    re: search_regex(name, pat)?,
                },
            };
            detectors.push(Detector {
                name: Arc::from(*name),
                check: *check,
                max_len: c.max_len,
                engine,
            });
        }
        let mut customs = Vec::new();
        for (name, pat) in custom {
            if detectors.iter().any(|d| &*d.name == name) {
                return Err(DlpError::Duplicate(name.clone()));
            }
            let c = compile(name, pat)?;
            customs.push(detectors.len());
            detectors.push(Detector {
                name: Arc::from(name.as_str()),
                check: Check::None,
                max_len: c.max_len,
                engine: Engine::Search {
                    re: search_regex(name, pat)?,
                },
            });
        }
        let custom_set = if customs.len() > 1 {
            let pats = customs.iter().filter_map(|&i| match &detectors[i].engine {
                Engine::Search { re } => Some(re.as_str()),
                _ => None,
            });
            let set = RegexSetBuilder::new(pats)
                .size_limit(64 << 20)
                .build()
                .map_err(|e| DlpError::Regex {
                    name: "(set)".into(),
                    msg: e.to_string(),
                })?;
            Some((set, customs))
        } else {
            None
        };
        let literals = if owner.is_empty() {
            None
        } else {
            let ac = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostFirst)
                .build(owner.iter().map(|(l, _)| l))
                .map_err(|e| DlpError::Regex {
                    name: "(literals)".into(),
                    msg: e.to_string(),
                })?;
            Some(Literals { ac, owner })
        };
        Ok(Dlp {
            detectors,
            literals,
            custom_set,
            key,
        })
    }

    /// Checks one custom pattern as [`Dlp::new`] would (for the loader).
    pub fn check_pattern(name: &str, pat: &str) -> Result<(), DlpError> {
        compile(name, pat).and_then(|_| search_regex(name, pat).map(|_| ()))
    }

    /// The detectors' names, by index.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.detectors.iter().map(|d| &*d.name)
    }

    /// The index of detector `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.detectors.iter().position(|d| &*d.name == name)
    }

    /// How many detectors.
    pub fn len(&self) -> usize {
        self.detectors.len()
    }

    /// Whether there are none (never: the built-ins are always there).
    pub fn is_empty(&self) -> bool {
        self.detectors.is_empty()
    }

    /// The bytes a stream over `enabled` detectors holds back: the
    /// longest match and the context on both sides of it that look-around
    /// may read ([`CONTEXT`]).
    pub fn window(&self, enabled: &Enabled) -> usize {
        self.detectors
            .iter()
            .zip(enabled)
            .filter(|(_, on)| **on)
            .map(|(d, _)| d.max_len)
            .max()
            .unwrap_or(1)
            + 2 * CONTEXT
    }

    /// Scans `data` whole (a request line and headers).
    pub fn scan(&self, data: &[u8], enabled: &Enabled) -> Vec<Finding> {
        let mut acc = Acc::default();
        self.scan_into(data, 0, true, enabled, &mut acc);
        acc.findings
    }

    /// A stream over a body, with `enabled` detectors.
    pub fn stream(self: &Arc<Self>, enabled: Arc<Enabled>) -> Stream {
        Stream {
            window: self.window(&enabled),
            dlp: self.clone(),
            enabled,
            buf: Vec::new(),
            base: 0,
            acc: Acc::default(),
        }
    }

    /// Scans `buf`, which starts at stream offset `base` and ends the
    /// stream if `last`. Each detector's search goes on where it stopped
    /// (`acc.resume`) and counts a match only once the bytes that decide
    /// it were seen: a match starting in the last `max_len + CONTEXT`
    /// bytes of a buffer that is not the last may still grow, or lose its
    /// `\b`, so the search stops before it and takes it up with the next
    /// buffer. Then what a stream finds does not depend on where its
    /// chunks were cut: it is what `find_iter` finds over the whole body.
    ///
    /// One body on purpose: split into `#[inline]` helpers it scanned 4–6 %
    /// slower in `cargo bench -p sluice-inspect --bench dlp` (2026-12-05,
    /// alternating builds), so the steps stay together here.
    fn scan_into(&self, buf: &[u8], base: u64, last: bool, enabled: &Enabled, acc: &mut Acc) {
        let on = |i: usize| enabled.get(i).copied().unwrap_or(false);
        acc.resume.resize(self.detectors.len(), 0);
        // Where detector `i` takes up its search, in `buf`.
        let from = |resume: &[u64], i: usize| -> usize {
            let r = resume.get(i).copied().unwrap_or(0);
            // Every search moves its resume point on with the buffer, at
            // least CONTEXT bytes past the released ones.
            debug_assert!(
                base == 0 || r >= base + CONTEXT as u64,
                "stale resume point"
            );
            let r = r.saturating_sub(base);
            usize::try_from(r).unwrap_or(usize::MAX).min(buf.len())
        };
        // (detector, start) of every place a literal-prefixed detector's
        // match may start; empty on benign data.
        let mut starts: Vec<(usize, usize)> = Vec::new();
        if let Some(lits) = &self.literals {
            let lo = lits
                .owner
                .iter()
                .filter(|(_, i)| on(*i))
                .map(|(_, i)| from(&acc.resume, *i))
                .min()
                .unwrap_or(buf.len());
            lits.candidates(buf, lo, &on, &mut starts);
            starts.sort_unstable();
            starts.dedup();
        }
        // Which custom patterns match at all, when there are several.
        let custom_hits = self
            .custom_set
            .as_ref()
            .and_then(|(set, idx)| idx.iter().any(|&i| on(i)).then(|| (set.matches(buf), idx)));
        let mut found: Vec<(usize, usize)> = Vec::new();
        for (i, d) in self.detectors.iter().enumerate() {
            if !on(i) {
                continue;
            }
            let at = from(&acc.resume, i);
            // Starts before `decided` are settled by the bytes in `buf`.
            let decided = if last {
                buf.len() + 1
            } else {
                buf.len().saturating_sub(d.max_len + CONTEXT)
            };
            found.clear();
            match &d.engine {
                Engine::Run { re, run, min_len } => {
                    run_matches(buf, at, *run, *min_len, re, d.max_len, &mut found);
                }
                Engine::Literal { re } => {
                    let lo = starts.partition_point(|(j, _)| *j < i);
                    let hi = starts.partition_point(|(j, _)| *j <= i);
                    let mut cursor = at;
                    for &(_, at) in &starts[lo..hi] {
                        if at < cursor {
                            continue;
                        }
                        if let Some(m) = anchored(re, buf, at, d.max_len) {
                            cursor = m.1;
                            found.push(m);
                        }
                    }
                }
                Engine::Search { re } => {
                    // No match in `buf` at all: nothing to search, but the
                    // resume point below still moves on with the buffer.
                    let none = custom_hits.as_ref().is_some_and(|(hits, idx)| {
                        idx.iter()
                            .position(|&j| j == i)
                            .is_some_and(|k| !hits.matched(k))
                    });
                    // `find_at` sees the bytes before `at` for look-behind,
                    // as `find_iter` does after a match.
                    let mut pos = if none { buf.len() } else { at };
                    while pos < buf.len()
                        && let Some(m) = re.find_at(buf, pos)
                    {
                        if m.start() >= decided {
                            break;
                        }
                        found.push((m.start(), m.end()));
                        pos = m.end().max(m.start() + 1);
                    }
                }
            }
            let mut next = at;
            for &(s, e) in &found {
                if s >= decided {
                    break;
                }
                next = e;
                if let Some(m) = buf.get(s..e) {
                    self.count(i, d, m, acc);
                }
            }
            let resume = next.max(decided.min(buf.len()));
            if let Some(r) = acc.resume.get_mut(i) {
                *r = base + resume as u64;
            }
        }
    }

    /// Counts detector `i`'s match `m` if it passes its check.
    fn count(&self, i: usize, d: &Detector, m: &[u8], acc: &mut Acc) {
        let Some(norm) = valid(d.check, m) else {
            return;
        };
        match acc.findings.iter_mut().find(|f| f.index == i) {
            Some(f) => f.count += 1,
            None => acc.findings.push(Finding {
                detector: d.name.clone(),
                index: i,
                count: 1,
                hash: self.key.hash(&norm),
            }),
        }
    }
}

// === impl Literals ===

impl Literals {
    /// Every (detector, position) where one of an enabled detector's
    /// literals starts in `buf`. The automaton reports the leftmost
    /// occurrence of any literal; the search resumes one byte later (not
    /// after the occurrence), and at each position every literal is tried,
    /// so that literals of several detectors at one place, or overlapping,
    /// are all seen.
    fn candidates(
        &self,
        buf: &[u8],
        from: usize,
        on: &impl Fn(usize) -> bool,
        out: &mut Vec<(usize, usize)>,
    ) {
        let mut at = from;
        while at < buf.len() {
            let input = aho_corasick::Input::new(buf).range(at..);
            let Some(m) = self.ac.find(input) else {
                break;
            };
            let p = m.start();
            let rest = &buf[p..];
            for (lit, det) in &self.owner {
                if on(*det) && rest.starts_with(lit) {
                    out.push((*det, p));
                }
            }
            at = p + 1;
        }
    }
}

/// The anchored match of `re` at `at`, if any, with the whole of `hay` as
/// context for look-around (`\b`). The span stops `max_len` bytes on: no
/// match is longer, and look-around still sees past the span's end.
fn anchored(re: &meta::Regex, hay: &[u8], at: usize, max_len: usize) -> Option<(usize, usize)> {
    let end = hay.len().min(at.saturating_add(max_len));
    let input = Input::new(hay).range(at..end).anchored(Anchored::Yes);
    re.search(&input).map(|m| (m.start(), m.end()))
}

/// The `find_iter` matches of a prefix-less built-in in `hay`. A match
/// lies whole inside a maximal run of its class bytes at least `min_len`
/// long, so only such runs are looked at: a skip loop probes the last
/// byte of each `min_len` window (one byte in `min_len` on text without
/// long runs); inside a run, the regex is anchored at each place its
/// match may start, from left to right past the previous match, which is
/// what `find_iter`'s leftmost-first search yields.
fn run_matches(
    hay: &[u8],
    from: usize,
    run: Run,
    min_len: usize,
    re: &meta::Regex,
    max_len: usize,
    out: &mut Vec<(usize, usize)>,
) {
    let class = match run {
        Run::Card => &CARD_CLASS,
        Run::Iban => &IBAN_CLASS,
    };
    let min = min_len.max(1);
    let n = hay.len();
    // A match from `from` on has `min` class bytes from its start: a run
    // that began earlier is seen from `from`, which is enough.
    let mut i = from;
    while i + min <= n {
        let last = i + min - 1;
        if !class[usize::from(hay[last])] {
            i = last + 1;
            continue;
        }
        let mut j = last;
        let mut whole = true;
        while j > i {
            j -= 1;
            if !class[usize::from(hay[j])] {
                whole = false;
                break;
            }
        }
        if !whole {
            i = j + 1;
            continue;
        }
        // A run from `i` (hay[i - 1] is outside the class or ended the
        // last run); find its end.
        let mut e = last + 1;
        while e < n && class[usize::from(hay[e])] {
            e += 1;
        }
        run_starts(hay, i, e, run, min, re, max_len, out);
        i = e + 1;
    }
}

/// The matches inside the run `hay[s..e]`.
#[allow(clippy::too_many_arguments)]
fn run_starts(
    hay: &[u8],
    s: usize,
    e: usize,
    run: Run,
    min: usize,
    re: &meta::Regex,
    max_len: usize,
    out: &mut Vec<(usize, usize)>,
) {
    let mut cursor = s;
    // Past `e - min` no match fits before the run's end.
    for k in s..=e.saturating_sub(min) {
        if k < cursor {
            continue;
        }
        let after_non_word = k == 0 || !is_word(hay[k - 1]);
        let may_start = after_non_word
            && match (run, hay.get(k..k + 4)) {
                (Run::Card, _) => hay[k].is_ascii_digit(),
                (Run::Iban, Some(&[a, b, c, d])) => {
                    a.is_ascii_uppercase()
                        && b.is_ascii_uppercase()
                        && c.is_ascii_digit()
                        && d.is_ascii_digit()
                }
                (Run::Iban, _) => false,
            };
        if !may_start {
            continue;
        }
        if let Some(m) = anchored(re, hay, k, max_len) {
            cursor = m.1;
            out.push(m);
        }
    }
}

/// An ASCII word byte, as `(?-u:\b)` sees it.
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// A 256-entry class table: digits, and upper-case letters if `upper`,
/// and the `extra` bytes.
const fn class_table(upper: bool, extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = b'0';
    while b <= b'9' {
        t[b as usize] = true;
        b += 1;
    }
    let mut b = b'A';
    while upper && b <= b'Z' {
        t[b as usize] = true;
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

/// The bytes a card number match is made of.
static CARD_CLASS: [bool; 256] = class_table(false, b" -");
/// The bytes an IBAN match is made of.
static IBAN_CLASS: [bool; 256] = class_table(true, b" ");

/// Literals one of which every match of `hir` starts with, if there are
/// few and none is empty (then an occurrence of one is where a match may
/// start). Case-insensitive names expand to many literals: they are cut to
/// their first bytes (a prefix of a prefix is still one) until at most
/// [`MAX_LITERALS`] remain.
fn prefixes(hir: &regex_syntax::hir::Hir) -> Option<Vec<Vec<u8>>> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let seq = Extractor::new().kind(ExtractKind::Prefix).extract(hir);
    let lits = seq.literals()?;
    if lits.is_empty() || lits.iter().any(|l| l.as_bytes().is_empty()) {
        return None;
    }
    let longest = lits.iter().map(|l| l.as_bytes().len()).max()?;
    (MIN_LITERAL..=longest).rev().find_map(|n| {
        let mut out: Vec<Vec<u8>> = lits
            .iter()
            .map(|l| l.as_bytes()[..l.as_bytes().len().min(n)].to_vec())
            .collect();
        out.sort();
        out.dedup();
        (out.len() <= MAX_LITERALS).then_some(out)
    })
}

/// The most literals a built-in may bring to the automaton.
const MAX_LITERALS: usize = 24;
/// The shortest literal worth a prefilter: shorter ones hit too often.
const MIN_LITERAL: usize = 3;

/// The regex of a built-in for anchored searches: the settings of
/// `regex::bytes::Regex` (no UTF-8 requirement), so that it matches
/// exactly what that would.
fn anchored_regex(name: &str, pat: &str) -> Result<meta::Regex, DlpError> {
    meta::Regex::builder()
        .syntax(regex_automata::util::syntax::Config::new().utf8(false))
        .configure(
            meta::Config::new()
                .utf8_empty(false)
                .nfa_size_limit(Some(16 << 20)),
        )
        .build(pat)
        .map_err(|e| DlpError::Regex {
            name: name.to_owned(),
            msg: e.to_string(),
        })
}

/// The regex of a detector searched whole (custom patterns).
fn search_regex(name: &str, pat: &str) -> Result<Regex, DlpError> {
    RegexBuilder::new(pat)
        .size_limit(16 << 20)
        .build()
        .map_err(|e| DlpError::Regex {
            name: name.to_owned(),
            msg: e.to_string(),
        })
}

/// Reads one pattern and measures its shortest and longest match.
fn compile(name: &str, pat: &str) -> Result<Compiled, DlpError> {
    let bad = |msg: String| DlpError::Regex {
        name: name.to_owned(),
        msg,
    };
    let hir = regex_syntax::ParserBuilder::new()
        .utf8(false)
        .build()
        .parse(pat)
        .map_err(|e| bad(e.to_string()))?;
    let max_len = match hir.properties().maximum_len() {
        Some(n) if n <= MAX_PATTERN_BYTES => n.max(1),
        _ => {
            return Err(DlpError::Unbounded {
                name: name.to_owned(),
            });
        }
    };
    let min_len = match hir.properties().minimum_len() {
        Some(0) => return Err(bad("the pattern matches the empty string".into())),
        Some(n) => n,
        // A pattern that matches nothing.
        None => 1,
    };
    Ok(Compiled {
        hir,
        max_len,
        min_len,
    })
}

/// A match that passes its detector's check, normalized for hashing.
fn valid(check: Check, m: &[u8]) -> Option<Vec<u8>> {
    match check {
        Check::None => Some(m.to_vec()),
        Check::Card => {
            let digits: Vec<u8> = m.iter().copied().filter(u8::is_ascii_digit).collect();
            (card_issuer(&digits) && luhn(&digits)).then_some(digits)
        }
        Check::Iban => {
            let s: Vec<u8> = m.iter().copied().filter(|b| *b != b' ').collect();
            ((15..=34).contains(&s.len()) && iban_ok(&s)).then_some(s)
        }
        Check::Jwt => {
            let head = m.split(|b| *b == b'.').next()?;
            let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(head.strip_suffix(b"=").unwrap_or(head))
                .ok()?;
            let has_alg = json.windows(5).any(|w| w == b"\"alg\"");
            (json.starts_with(b"{") && has_alg).then(|| m.to_vec())
        }
    }
}

/// The Luhn checksum over ASCII digits.
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    !digits.is_empty() && sum % 10 == 0
}

/// A card number's length and issuer range (IIN): Visa, Mastercard,
/// American Express, Discover, JCB, Diners Club, UnionPay.
fn card_issuer(d: &[u8]) -> bool {
    let n = d.len();
    let prefix = |k: usize| -> u32 {
        d.iter()
            .take(k)
            .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'))
    };
    if !(13..=19).contains(&n) {
        return false;
    }
    let (p1, p2, p3, p4, p6) = (prefix(1), prefix(2), prefix(3), prefix(4), prefix(6));
    (p1 == 4 && matches!(n, 13 | 16 | 19))
        || ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && n == 16
        || matches!(p2, 34 | 37) && n == 15
        || (p4 == 6011 || p2 == 65 || (644..=649).contains(&p3) || (622126..=622925).contains(&p6))
            && (16..=19).contains(&n)
        || (3528..=3589).contains(&p4) && (16..=19).contains(&n)
        || ((300..=305).contains(&p3) || p2 == 36 || p2 == 38) && (14..=19).contains(&n)
        || p2 == 62 && (16..=19).contains(&n)
}

/// ISO 13616: letters to numbers, the first four characters moved to the
/// end, the whole modulo 97 is 1.
pub fn iban_ok(s: &[u8]) -> bool {
    if s.len() < 5 {
        return false;
    }
    let mut rem = 0u32;
    for &c in s[4..].iter().chain(&s[..4]) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// Bytes of context look-around may read on either side of a match: one
/// for `(?-u:\b)`, up to four (a UTF-8 character) for Unicode `\b` in a
/// custom pattern.
const CONTEXT: usize = 4;

/// What a scan gathered.
#[derive(Debug, Default)]
struct Acc {
    findings: Vec<Finding>,
    /// Per detector, the stream offset where its search goes on: past its
    /// last match, or where the bytes seen stopped settling a start.
    resume: Vec<u64>,
}

/// A body scanned in chunks with bounded memory: it holds back the last
/// `window` bytes it was given until more data (or the end) settles
/// whether a match starts in them; a match is counted when it is settled,
/// so a detector may show up one chunk later, or at [`Stream::finish`],
/// before any of its bytes was released.
#[derive(Debug)]
pub struct Stream {
    dlp: Arc<Dlp>,
    enabled: Arc<Enabled>,
    window: usize,
    /// Held-back bytes (at most `window`), then the new chunk while it is
    /// scanned.
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    base: u64,
    acc: Acc,
}

/// What one chunk of a stream gave.
#[derive(Debug, Default)]
pub struct Step {
    /// Bytes scanned and released: they may be forwarded.
    pub release: Vec<u8>,
    /// Detectors (indices) that found their first match in this step.
    pub new: Vec<usize>,
}

impl Stream {
    /// Scans `chunk` after all earlier data.
    pub fn push(&mut self, chunk: &[u8]) -> Step {
        self.buf.extend_from_slice(chunk);
        let before = self.acc.findings.len();
        self.dlp
            .scan_into(&self.buf, self.base, false, &self.enabled, &mut self.acc);
        let keep = self.window.min(self.buf.len());
        let cut = self.buf.len() - keep;
        let tail = self.buf.split_off(cut);
        let release = std::mem::replace(&mut self.buf, tail);
        self.base += cut as u64;
        Step {
            release,
            new: self.acc.findings[before..]
                .iter()
                .map(|f| f.index)
                .collect(),
        }
    }

    /// The end of the body: the held-back bytes, scanned to the end
    /// (matches in them are settled now), and what they gave.
    pub fn finish(&mut self) -> Step {
        let before = self.acc.findings.len();
        self.dlp
            .scan_into(&self.buf, self.base, true, &self.enabled, &mut self.acc);
        self.base += self.buf.len() as u64;
        Step {
            release: std::mem::take(&mut self.buf),
            new: self.acc.findings[before..]
                .iter()
                .map(|f| f.index)
                .collect(),
        }
    }

    /// Everything found so far.
    pub fn findings(&self) -> &[Finding] {
        &self.acc.findings
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn dlp() -> Arc<Dlp> {
        Arc::new(
            Dlp::new(
                &[("employee".into(), r"EMP-[0-9]{6}".into())],
                HashKey::from_bytes(b"0123456789abcdef0123").unwrap(),
            )
            .unwrap(),
        )
    }

    fn found(text: &str) -> Vec<String> {
        let d = dlp();
        let all = vec![true; d.len()];
        d.scan(text.as_bytes(), &all)
            .into_iter()
            .map(|f| f.detector.to_string())
            .collect()
    }

    #[test]
    fn true_positives() {
        let cases = [
            ("card", "pay 4111 1111 1111 1111 now"),
            ("card", "amex 378282246310005."),
            ("card", "mc 5555-5555-5555-4444"),
            ("iban", "to DE89 3704 0044 0532 0130 00 please"),
            ("iban", "GB82WEST12345698765432"),
            ("aws", "key=AKIAIOSFODNN7EXAMPLE;"),
            ("aws", "ASIAY34FZKBOKMUTVV7A"),
            (
                "aws",
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            ),
            (
                "gcp",
                r#"{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\nMII"#,
            ),
            (
                "azure",
                "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4==;",
            ),
            (
                "azure",
                "Endpoint=sb://x/;SharedAccessKeyName=r;SharedAccessKey=abcdefghijklmnopqrstuvwxyz0123=",
            ),
            ("github", "token ghp_abcdefghijklmnopqrstuvwxyz0123456789 x"),
            ("github", "gho_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"),
            ("gitlab", "glpat-abcdefghij0123456789"),
            ("slack", "xoxb-123456789012-abcdefABCDEF"),
            ("stripe", "sk_live_abcdefghijklmnopqrstuvwx"),
            ("stripe", "rk_live_abcdefghijklmnopqrstuvwx"),
            ("pem", "-----BEGIN RSA PRIVATE KEY-----\nMIIE"),
            ("pem", "-----BEGIN OPENSSH PRIVATE KEY-----"),
            (
                "jwt",
                "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            ),
            ("employee", "id EMP-123456"),
        ];
        for (want, text) in cases {
            assert!(found(text).contains(&want.to_owned()), "{want} in {text}");
        }
    }

    #[test]
    fn near_misses() {
        let cases = [
            "pay 4111 1111 1111 1112 now", // fails Luhn
            "id 9111111111111111",         // passes no issuer range? (9…)
            "DE89 3704 0044 0532 0130 01", // wrong check digits
            "key=AKIBIOSFODNN7EXAMPLE;",   // wrong prefix
            "AKIAIOSFODNN7EXAMPL",         // too short
            "ghx_abcdefghijklmnopqrstuvwxyz0123456789",
            "ghp_short",
            "glpat-short",
            "xoxz-123456789012-abcdef",
            "sk_test_abcdefghijklmnopqrstuvwx",
            "-----BEGIN PUBLIC KEY-----",
            "eyJub3QiOiJhIGp3dCJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "AccountKey=short",
            r#""private_key_id": "abc""#,
            "EMP-12345",
        ];
        for text in cases {
            assert!(found(text).is_empty(), "{text}: {:?}", found(text));
        }
    }

    #[test]
    fn luhn_and_iban() {
        assert!(luhn(b"4111111111111111"));
        assert!(!luhn(b"4111111111111112"));
        assert!(iban_ok(b"GB82WEST12345698765432"));
        assert!(!iban_ok(b"GB83WEST12345698765432"));
    }

    #[test]
    fn a_match_across_chunks_is_found_and_held_back() {
        let d = dlp();
        let all: Arc<Enabled> = vec![true; d.len()].into();
        let mut s = d.stream(all);
        let secret = b"AKIAIOSFODNN7EXAMPLE";
        let mut first = vec![b'x'; 10_000];
        first.push(b' ');
        first.extend_from_slice(&secret[..8]);
        let a = s.push(&first);
        assert!(a.new.is_empty());
        // The secret's first bytes are not released before the rest came.
        assert!(!a.release.windows(8).any(|w| w == &secret[..8]));
        let mut second = secret[8..].to_vec();
        second.extend_from_slice(b" and more");
        let b = s.push(&second);
        assert!(!b.release.windows(8).any(|w| w == &secret[..8]));
        // Settled once the bytes after it are seen: here, at the end.
        let rest = s.finish();
        let aws = d.index("aws").unwrap();
        assert!(b.new.contains(&aws) || rest.new.contains(&aws));
        assert_eq!(
            a.release.len() + b.release.len() + rest.release.len(),
            first.len() + second.len()
        );
        assert_eq!(s.findings()[0].count, 1);
    }

    /// Streamed findings do not depend on where the chunks are cut: a
    /// match is counted only once the bytes after it are seen.
    #[test]
    fn a_cut_right_after_a_would_be_match_changes_nothing() {
        let d = dlp();
        let all: Arc<Enabled> = vec![true; d.len()].into();
        // Not an AWS id: word bytes follow it, so no `\b`.
        let data = b"id AKIAIOSFODNN7EXAMPLEXYZ and a GitLab token glpat-abcdefghij0123456789xyz";
        assert_eq!(d.scan(data, &all).len(), 1);
        for cut in [23, 72] {
            let mut s = d.stream(all.clone());
            s.push(&data[..cut]);
            s.push(&data[cut..]);
            s.finish();
            assert_eq!(s.findings(), &d.scan(data, &all)[..], "cut at {cut}");
        }
    }

    #[test]
    fn counts_and_hash_never_hold_the_secret() {
        let d = dlp();
        let all = vec![true; d.len()];
        let f = d.scan(b"AKIAIOSFODNN7EXAMPLE AKIAIOSFODNN7EXAMPLE", &all);
        assert_eq!(f[0].count, 2);
        assert_eq!(f[0].hash.len(), 32);
        assert!(!f[0].hash.contains("AKIA"));
    }

    #[test]
    fn custom_patterns_must_be_bounded() {
        assert!(matches!(
            Dlp::check_pattern("x", "a+"),
            Err(DlpError::Unbounded { .. })
        ));
        assert!(matches!(
            Dlp::check_pattern("x", "(unclosed"),
            Err(DlpError::Regex { .. })
        ));
        assert!(Dlp::check_pattern("x", "SECRET-[0-9]{4}").is_ok());
    }
}
