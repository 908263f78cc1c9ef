//! The fast scanner against the frozen first one ([`Reference`]): the same
//! findings (detector, count, keyed hash, in the same order) on random and
//! adversarial inputs, scanned whole; and streamed with chunk splits at
//! every offset of short inputs and at random places in long ones, the
//! same findings as the reference's scan of the whole body (not as its
//! stream, which counts a would-be match cut at a chunk's end), with
//! random subsets of detectors on.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use super::reference::Reference;
use super::{Dlp, Enabled, Finding, HashKey};

/// True positives, and each with near misses around it.
const PIECES: &[&str] = &[
    // Cards: Visa 13/16/19, Mastercard (both ranges), Amex, Discover,
    // JCB, Diners, UnionPay; separators; Luhn and issuer failures.
    "4111111111111111",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "4111 1111 1111 1112",
    "4222222222222",
    "4111111111111111110",
    "5555555555554444",
    "2221000000000009",
    "378282246310005",
    "6011111111111117",
    "6011 0009 9013 9424",
    "3530111333300000",
    "30569309025904",
    "6200000000000005",
    "9111111111111111",
    "41111111111111111111",
    "4111  1111 1111 1111",
    "4111 -1111-1111-1111",
    "4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
    "1234567890123",
    // IBANs, with and without spaces, and near misses.
    "DE89370400440532013000",
    "DE89 3704 0044 0532 0130 00",
    "DE89 3704 0044 0532 0130 01",
    "GB82WEST12345698765432",
    "GB82 WEST 1234 5698 7654 32",
    "FR1420041010050500013M02606",
    "NL91ABNA0417164300",
    "GB83WEST12345698765432",
    "DE8937040044",
    // AWS: ids, secrets under their key name in any case (the long s
    // and the Kelvin sign fold to s and k), near misses.
    "AKIAIOSFODNN7EXAMPLE",
    "ASIAY34FZKBOKMUTVV7A",
    "AKIBIOSFODNN7EXAMPLE",
    "AKIAIOSFODNN7EXAMPL",
    "AKIAIOSFODNN7EXAMPLEX",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS_SECRET_ACCESS_KEY: \"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\"",
    "AwsSecretAccessKey='wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY'",
    "aw\u{17f}_secret_access_\u{212a}ey=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKE",
    // GCP, Azure.
    "\"private_key\": \"-----BEGIN PRIVATE KEY-----\\nMII",
    "\"private_key\":\"-----BEGIN RSA PRIVATE KEY-----",
    "\"private_key_id\": \"abc\"",
    "AccountKey=Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4==;",
    "SharedAccessKey=abcdefghijklmnopqrstuvwxyz0123=",
    "AccountKey=short",
    // GitHub, GitLab, Slack, Stripe.
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "gho_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    "ghx_abcdefghijklmnopqrstuvwxyz0123456789",
    "ghp_abcdefghijklmnopqrstuvwxyz012345678",
    "github_pat_11ABCDEFG0abcdefghijkl_mnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklm",
    "glpat-abcdefghij0123456789",
    "glpat-short",
    "xoxb-123456789012-abcdefABCDEF",
    "xoxz-123456789012-abcdef",
    "sk_live_abcdefghijklmnopqrstuvwx",
    "rk_live_abcdefghijklmnopqrstuvwxyz0123",
    "sk_test_abcdefghijklmnopqrstuvwx",
    // PEM, JWT.
    "-----BEGIN RSA PRIVATE KEY-----",
    "-----BEGIN OPENSSH PRIVATE KEY-----",
    "-----BEGIN PUBLIC KEY-----",
    "-----BEGIN A B C D PRIVATE KEY-----",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "eyJub3QiOiJhIGp3dCJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.short",
    "eyJeyJeyJeyJ",
    // Custom.
    "EMP-123456",
    "EMP-12345",
];

/// What goes between pieces: word and non-word neighbours, separators.
const GLUE: &[&str] = &[
    "", " ", "-", "a", "Z", "_", "9", "0 ", " -", "\n", "=", "\"", ".", "/", "+", "é", "\u{17f}",
    "  ", ";", "x", "AB12",
];

/// xorshift64*: the same corpora on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }

    /// A run of bytes drawn from `alphabet`.
    fn run(&mut self, alphabet: &[u8], len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| alphabet[self.below(alphabet.len())])
            .collect()
    }

    /// Filler: text, digits, upper case and digits, base64, raw bytes.
    fn filler(&mut self) -> Vec<u8> {
        let len = self.below(40);
        match self.below(6) {
            0 => self.run(b"abcdefghij klmnop qrstuvwxyz", len),
            1 => self.run(b"0123456789 -", len),
            2 => self.run(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ", len),
            3 => self.run(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-=.",
                len,
            ),
            4 => (0..len).map(|_| self.next() as u8).collect(),
            _ => Vec::new(),
        }
    }

    /// A piece, sometimes mutated: a byte changed, cut short, or a byte
    /// repeated.
    fn piece(&mut self) -> Vec<u8> {
        let mut p = self.pick(PIECES).as_bytes().to_vec();
        match self.below(8) {
            0 if !p.is_empty() => {
                let i = self.below(p.len());
                p[i] = b"0123456789AZaz -_."[self.below(18)];
            }
            1 if !p.is_empty() => p.truncate(self.below(p.len())),
            2 if !p.is_empty() => {
                let i = self.below(p.len());
                p.insert(i, p[i]);
            }
            _ => {}
        }
        p
    }

    /// A document of pieces, glue and filler.
    fn doc(&mut self, pieces: usize) -> Vec<u8> {
        let mut d = Vec::new();
        for _ in 0..pieces {
            d.extend_from_slice(self.pick(GLUE).as_bytes());
            if self.below(3) == 0 {
                d.extend(self.filler());
            }
            d.extend(self.piece());
        }
        d.extend_from_slice(self.pick(GLUE).as_bytes());
        d
    }

    /// Detectors on: all, or a random subset.
    fn enabled(&mut self, n: usize) -> Arc<Enabled> {
        if self.below(3) == 0 {
            return vec![true; n].into();
        }
        (0..n)
            .map(|_| self.below(2) == 0)
            .collect::<Vec<_>>()
            .into()
    }
}

fn pair(custom: &[(&str, &str)]) -> (Arc<Dlp>, Arc<Reference>) {
    let custom: Vec<(String, String)> = custom
        .iter()
        .map(|(n, p)| ((*n).to_owned(), (*p).to_owned()))
        .collect();
    let key = HashKey::from_bytes(b"differential-test-key").unwrap();
    (
        Arc::new(Dlp::new(&custom, key.clone()).unwrap()),
        Arc::new(Reference::new(&custom, key).unwrap()),
    )
}

fn show(data: &[u8]) -> String {
    String::from_utf8_lossy(data).escape_debug().to_string()
}

/// Streams `data` cut at `cuts` through the fast scanner: what it finds
/// (in detector order) must be what the reference finds in the whole
/// body, and every byte must come out once, in order.
fn streamed(
    fast: &Arc<Dlp>,
    slow: &Arc<Reference>,
    data: &[u8],
    cuts: &[usize],
    on: &Arc<Enabled>,
) -> Vec<Finding> {
    let mut a = fast.stream(on.clone());
    let mut out = Vec::with_capacity(data.len());
    let mut from = 0;
    for &c in cuts {
        let c = c.clamp(from, data.len());
        out.extend(a.push(&data[from..c]).release);
        from = c;
    }
    out.extend(a.push(&data[from..]).release);
    out.extend(a.finish().release);
    assert!(out == data, "released bytes differ: {}", show(data));
    let mut got = a.findings().to_vec();
    got.sort_by_key(|f| f.index);
    assert_eq!(got, slow.scan(data, on), "cuts {cuts:?} of {}", show(data));
    got
}

#[test]
fn whole_scans_agree_on_random_documents() {
    let (fast, slow) = pair(&[("employee", r"EMP-[0-9]{6}")]);
    let mut rng = Rng(0x5eed_0001);
    let mut positives = 0;
    for _ in 0..4000 {
        let n = 1 + rng.below(8);
        let doc = rng.doc(n);
        let on = rng.enabled(fast.len());
        let f = fast.scan(&doc, &on);
        assert_eq!(f, slow.scan(&doc, &on), "{}", show(&doc));
        positives += usize::from(!f.is_empty());
    }
    // The corpus is not all near misses: the comparison saw findings.
    assert!(positives > 1000, "{positives}");
}

#[test]
fn streams_agree_with_a_cut_at_every_offset() {
    // `uword`: a Unicode `\b`, which reads a whole UTF-8 character on
    // either side (é, ſ in the glue).
    let (fast, slow) = pair(&[("employee", r"EMP-[0-9]{6}"), ("uword", r"\b\w[0-9]{5}\b")]);
    let mut rng = Rng(0x5eed_0002);
    let all: Arc<Enabled> = vec![true; fast.len()].into();
    // Each piece alone with word and non-word neighbours, then short
    // random documents; every one cut at every offset, with all detectors
    // and with short windows.
    let card_only: Arc<Enabled> = (0..fast.len()).map(|i| i == 0).collect::<Vec<_>>().into();
    // Short windows, so that bytes are released and matches are settled
    // before the end: every detector but the long ones (gcp, pem, jwt).
    let short: Arc<Enabled> = fast
        .names()
        .map(|n| !matches!(n, "gcp" | "pem" | "jwt"))
        .collect::<Vec<_>>()
        .into();
    let mut docs: Vec<Vec<u8>> = PIECES
        .iter()
        .flat_map(|p| [format!(" {p} "), format!("x{p}9")])
        .map(String::into_bytes)
        .collect();
    docs.extend((0..150).map(|_| rng.doc(3)));
    for doc in &docs {
        for cut in 0..=doc.len() {
            for on in [&all, &card_only, &short] {
                streamed(&fast, &slow, doc, &[cut], on);
            }
        }
        let on = rng.enabled(fast.len());
        let cuts: Vec<usize> = {
            let mut c: Vec<usize> = (0..3).map(|_| rng.below(doc.len() + 1)).collect();
            c.sort_unstable();
            c
        };
        streamed(&fast, &slow, doc, &cuts, &on);
    }
}

#[test]
fn long_streams_agree_in_random_chunks() {
    let (fast, slow) = pair(&[
        ("employee", r"EMP-[0-9]{6}"),
        ("code", r"(?i)bluebird-[0-9]{4}"),
        ("uword", r"\b\w[0-9]{5}\b"),
    ]);
    let mut rng = Rng(0x5eed_0003);
    for round in 0..6 {
        let mut doc = Vec::new();
        while doc.len() < 1 << 20 {
            doc.extend(rng.filler());
            if rng.below(4) == 0 {
                doc.extend(rng.doc(2));
            }
            if rng.below(50) == 0 {
                doc.extend_from_slice(b"Bluebird-2024 ");
            }
        }
        let mut cuts = Vec::new();
        let mut at = 0;
        while at < doc.len() {
            at += 1 + rng.below(if round % 2 == 0 { 70_000 } else { 300 });
            cuts.push(at.min(doc.len()));
        }
        let on = if round < 2 {
            vec![true; fast.len()].into()
        } else {
            rng.enabled(fast.len())
        };
        let f = streamed(&fast, &slow, &doc, &cuts, &on);
        assert_eq!(fast.scan(&doc, &on), slow.scan(&doc, &on));
        if round < 2 {
            assert!(f.len() > 5, "{f:?}");
        }
    }
}

#[test]
fn adversarial_inputs_agree() {
    let (fast, slow) = pair(&[]);
    let all: Arc<Enabled> = vec![true; fast.len()].into();
    let docs: Vec<Vec<u8>> = vec![
        // Long digit runs: every 13-19 window a candidate, none bounded.
        b"4111111111111111".repeat(64),
        b"4111 1111 1111 1111 ".repeat(64),
        b"4111-".repeat(200),
        b"0".repeat(5000),
        b" ".repeat(5000),
        b"- ".repeat(3000),
        // Upper case and digit runs.
        b"DE89".repeat(2000),
        b"GB82WEST12345698765432".repeat(100),
        b"AB12 ".repeat(2000),
        // Literal prefixes back to back.
        b"eyJ".repeat(3000),
        b"AKIA".repeat(2000),
        b"ghp_".repeat(2000),
        b"-----BEGIN ".repeat(500),
        b"awsawsaws_secret_access_key=".repeat(200),
        b"xoxb-xoxp-".repeat(500),
    ];
    for doc in &docs {
        assert_eq!(fast.scan(doc, &all), slow.scan(doc, &all), "{}", show(doc));
        let cuts: Vec<usize> = (1..doc.len()).step_by(997).collect();
        streamed(&fast, &slow, doc, &cuts, &all);
    }
}

#[test]
fn built_ins_without_a_literal_prefix_are_only_card_and_iban() {
    let (fast, _) = pair(&[]);
    for d in &fast.detectors {
        let kind = match d.engine {
            super::Engine::Run { .. } => "run",
            super::Engine::Literal { .. } => "literal",
            super::Engine::Search { .. } => "search",
        };
        let want = if matches!(&*d.name, "card" | "iban") {
            "run"
        } else {
            "literal"
        };
        assert_eq!(kind, want, "{}", d.name);
    }
}
