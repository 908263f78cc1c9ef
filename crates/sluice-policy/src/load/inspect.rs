//! The `inspect` keys (top level and per zone) and their kinds, grouped so
//! that inspection features (DLP, clamd, ICAP; TLS interception beside
//! them) read as one block: the scanners a gateway has, and what each zone
//! asks of them. Checks across sections (a zone naming a detector, or a
//! scanner that is not configured) run in [`check`] once the whole file is
//! read.

use std::collections::HashSet;

use serde_json::{Value as Json, json};

use super::{
    Cx,
    kinds::{Bool, FilePath, FilePaths, HostPatterns, Kind, Min, Path, Text, Time},
    table::{Nested, Section, Table, key},
    yaml::{self, Node},
};
use crate::model::{
    ClamdConfig, Config, DLP_DETECTORS, DlpAction, DlpActions, DlpConfig, DlpPattern, FailMode,
    IcapConfig, Inspect, InspectCa, MalwareAction, ZoneInspect,
};

/// The longest match a custom pattern may have, in bytes (what a body
/// stream holds back; `sluice_inspect::dlp::MAX_PATTERN_BYTES`).
pub const MAX_PATTERN_BYTES: usize = 8192;

/// The largest object a scanner may be sent (buffered per exchange).
const MAX_OBJECT: u64 = 1 << 30;

pub(crate) static INSPECT: Section<Inspect> = Section {
    what: "inspect",
    label: "inspect",
    keys: &[
        key!(ca: map &INSPECT_CA, "The CA that signs leaf certificates for intercepted destinations (`sluice ca init` makes one); needed by any zone's `inspect.tls`."),
        key!(extra_roots: FilePaths, Restart, "PEM files of CAs trusted for upstream certificates of intercepted flows, besides the system roots (relative to the configuration file)."),
        key!(clamd: map &CLAMD, "The clamd malware scanner that zones with `inspect.malware` use."),
        key!(icap: map &ICAP, "ICAP services (RFC 3507) that zones with `inspect.icap: true` use."),
        key!(dlp: map &DLP, "Custom DLP detectors and the findings' hash key."),
    ],
    not_yet: &[],
};

pub(crate) static INSPECT_CA: Section<InspectCa> = Section {
    what: "inspect.ca",
    label: "inspect.ca",
    keys: &[
        key!(cert_file: FilePath, Restart, "The CA certificate, PEM (relative to the configuration file)."),
        key!(key_file: FilePath, Restart, "The CA private key, PEM PKCS#8 (relative to the configuration file); keep it 0600."),
    ],
    not_yet: &[],
};

pub(crate) static CLAMD: Section<ClamdConfig> = Section {
    what: "inspect.clamd",
    label: "inspect.clamd",
    keys: &[
        key!(address: ClamdAddress, Restart, "`unix:/path/clamd.ctl`, `tcp://host:port` or `host:port`."),
        key!(timeout: Time(Min::AboveZero), Restart, "Time allowed for one scan: connect, send the object, get the verdict."),
        key!(max_size: Size(false), Restart, "Largest object scanned (`10MiB`); bodies are held up to it before they go on. A larger one follows the zone's `fail` and is recorded `unscanned`. Keep clamd's `StreamMaxLength` at least this large."),
    ],
    not_yet: &[],
};

pub(crate) static ICAP: Section<IcapConfig> = Section {
    what: "inspect.icap",
    label: "inspect.icap",
    keys: &[
        key!(reqmod: IcapUrl, Restart, "`icap://host:port/service` that requests (head and body) are sent to."),
        key!(respmod: IcapUrl, Restart, "`icap://host:port/service` that responses (head and body) are sent to."),
        key!(timeout: Time(Min::AboveZero), Restart, "Time allowed for one ICAP exchange."),
        key!(preview: Size(true), Restart, "Body bytes sent as the ICAP `Preview` (`0B`: none); the rest follows the service's `100 Continue`."),
        key!(max_size: Size(false), Restart, "Largest body sent to an ICAP service (`10MiB`); bodies are held up to it. A larger one follows the zone's `fail` and is recorded `unscanned`."),
    ],
    not_yet: &[],
};

pub(crate) static DLP: Section<DlpConfig> = Section {
    what: "inspect.dlp",
    label: "inspect.dlp",
    keys: &[
        key!(patterns: Patterns, Applies, "Custom detectors: `[{name, regex}]`; a `regex` with a bounded match length (no `+` or `*`), at most 8192 bytes."),
        key!(hash_key_file: Path, Restart, "File with the key (at least 16 bytes) of the findings' HMAC-SHA256 hash, relative to the configuration file; unset: a random key per process."),
    ],
    not_yet: &[],
};

pub(crate) static PATTERN: Section<DlpPattern> = Section {
    what: "a DLP pattern",
    label: "inspect.dlp.patterns[]",
    keys: &[
        key!(name: Text, Applies, "The detector's name, `[a-z0-9_-]{1,32}`, unique, not a built-in's (rule `inspect/dlp/<name>`)."),
        key!(regex: Text, Applies, "The pattern (Rust `regex` syntax, linear time)."),
    ],
    not_yet: &[],
};

pub(crate) static ZONE_INSPECT: Section<ZoneInspect> = Section {
    what: "a zone's inspect",
    label: "zones[].inspect",
    keys: &[
        key!(tls: HostPatterns, Applies, "Destinations whose TLS is intercepted (host patterns as in `host` rules, matched on the CONNECT or SOCKS5 host and the ClientHello SNI); needs `inspect.ca`. Decrypted HTTP goes through the zone's `dlp`, `malware` and `icap` like plaintext HTTP."),
        key!(dlp: DetectorActions, Applies, "DLP detector → `block`, `alert` or `log`: built-ins `card`, `iban`, `aws`, `gcp`, `azure`, `github`, `gitlab`, `slack`, `stripe`, `pem`, `jwt`, and the names of `inspect.dlp.patterns`."),
        key!(malware: Malware, Applies, "Scan uploads and downloads with clamd: `block` or `alert` on a verdict."),
        key!(icap: Bool, Applies, "Send requests to `inspect.icap.reqmod` and responses to `inspect.icap.respmod`."),
        key!(fail: Fail, Applies, "When clamd or ICAP has no verdict (down, timed out, object over `max_size`): `closed` (refuse, the default) or `open` (pass, recorded `unscanned`)."),
    ],
    not_yet: &[],
};

/// Checks what spans sections: a zone's detectors exist, the scanners a
/// zone uses are configured, interception has its CA.
pub(crate) fn check(cx: &mut Cx<'_>, doc: &Node<'_>, c: &Config) {
    check_ca(cx, doc, c);
    let custom: HashSet<&str> = c
        .inspect
        .dlp
        .patterns
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    for z in &c.zones {
        for (name, _, (line, column)) in &z.inspect.dlp.0 {
            if !DLP_DETECTORS.contains(&name.as_str()) && !custom.contains(name.as_str()) {
                let mut known: Vec<&str> = DLP_DETECTORS.to_vec();
                known.extend(c.inspect.dlp.patterns.iter().map(|p| p.name.as_str()));
                cx.err_at(
                    yaml::Pos {
                        line: *line,
                        column: *column,
                    },
                    format!(
                        "unknown DLP detector `{name}` in zone `{}`; expected one of: {}",
                        z.name,
                        known.join(", ")
                    ),
                );
            }
        }
        if z.inspect.malware.is_some() && c.inspect.clamd.address.is_none() {
            cx.err(
                doc,
                format!(
                    "zone `{}` sets inspect.malware but inspect.clamd.address is not set",
                    z.name
                ),
            );
        }
        if z.inspect.icap && c.inspect.icap.reqmod.is_none() && c.inspect.icap.respmod.is_none() {
            cx.err(
                doc,
                format!(
                    "zone `{}` sets inspect.icap but neither inspect.icap.reqmod nor inspect.icap.respmod is set",
                    z.name
                ),
            );
        }
    }
}

/// `inspect.ca` is both files or neither, and a zone's `inspect.tls`
/// needs it (the files themselves are read by the binary).
fn check_ca(cx: &mut Cx<'_>, doc: &Node<'_>, c: &Config) {
    let ca = &c.inspect.ca;
    let have_ca = match (&ca.cert_file, &ca.key_file) {
        (Some(_), Some(_)) => true,
        (None, None) => false,
        (Some(f), None) | (None, Some(f)) => {
            cx.err_at(
                yaml::Pos {
                    line: f.line,
                    column: f.column,
                },
                "inspect.ca needs both `cert_file` and `key_file`",
            );
            true
        }
    };
    if have_ca {
        return;
    }
    for z in c.zones.iter().filter(|z| !z.inspect.tls.is_empty()) {
        let at = yaml::Pos {
            line: z.inspect.line,
            column: z.inspect.column,
        };
        if at.line == 0 {
            cx.err(
                doc,
                format!("zone `{}`: inspect.tls needs inspect.ca", z.name),
            );
        } else {
            cx.err_at(
                at,
                format!(
                    "zone `{}`: inspect.tls intercepts TLS, which needs a CA: set inspect.ca.cert_file and inspect.ca.key_file (`sluice ca init --out DIR` makes them)",
                    z.name
                ),
            );
        }
    }
}

// === kinds ===

/// clamd's address.
pub(crate) struct ClamdAddress;

impl Kind for ClamdAddress {
    type Out = String;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<String> {
        let what = cx.label();
        let s = cx.string(n, &what)?;
        let ok = if let Some(p) = s.strip_prefix("unix:") {
            !p.is_empty()
        } else {
            let hp = s.strip_prefix("tcp://").unwrap_or(&s);
            matches!(hp.rsplit_once(':'), Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0))
        };
        if ok {
            Some(s)
        } else {
            cx.err(
                n,
                format!("expected `unix:/path`, `tcp://host:port` or `host:port` for {what}, found `{s}`"),
            );
            None
        }
    }
    fn schema(&self) -> Json {
        json!({ "type": "string", "pattern": "^(unix:.+|(tcp://)?.+:[0-9]+)$" })
    }
}

/// An ICAP service URL.
pub(crate) struct IcapUrl;

impl Kind for IcapUrl {
    type Out = String;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<String> {
        let what = cx.label();
        let s = cx.string(n, &what)?;
        let ok = s.strip_prefix("icap://").is_some_and(|rest| {
            let (auth, path) = rest.split_once('/').unwrap_or((rest, ""));
            let port_ok = auth
                .rsplit_once(':')
                .is_none_or(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
            !auth.is_empty() && !path.is_empty() && port_ok && !s.contains(char::is_whitespace)
        });
        if ok {
            Some(s)
        } else {
            cx.err(
                n,
                format!("expected `icap://host[:port]/service` for {what}, found `{s}`"),
            );
            None
        }
    }
    fn schema(&self) -> Json {
        json!({ "type": "string", "pattern": "^icap://[^/]+/.+$" })
    }
}

/// A size in bytes with a unit: `B`, `KiB`, `MiB`, `GiB` (at most 1 GiB).
pub(crate) struct Size(pub bool);

impl Kind for Size {
    type Out = u64;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<u64> {
        let what = cx.label();
        let v = yaml::scalar(n).and_then(parse_size);
        match v {
            Some(0) if !self.0 => {
                cx.err(n, format!("expected a size above zero for {what}"));
                None
            }
            Some(v) if v <= MAX_OBJECT => Some(v),
            Some(_) => {
                cx.err(n, format!("expected at most 1GiB for {what}"));
                None
            }
            None => {
                cx.err(
                    n,
                    format!("expected a size for {what} such as `512KiB`, `10MiB` or `4096B`"),
                );
                None
            }
        }
    }
    fn schema(&self) -> Json {
        json!({ "type": "string", "pattern": "^[0-9]+(B|KiB|MiB|GiB)$" })
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.len() > 12 {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    let mul = match unit {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mul)
}

/// `block` or `alert`.
pub(crate) struct Malware;

impl Kind for Malware {
    type Out = MalwareAction;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<MalwareAction> {
        match yaml::scalar(n) {
            Some("block") => Some(MalwareAction::Block),
            Some("alert") => Some(MalwareAction::Alert),
            _ => {
                cx.err(n, format!("expected `block` or `alert` for {}", cx.label()));
                None
            }
        }
    }
    fn schema(&self) -> Json {
        json!({ "enum": ["block", "alert"] })
    }
}

/// `closed` or `open`.
pub(crate) struct Fail;

impl Kind for Fail {
    type Out = FailMode;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<FailMode> {
        match yaml::scalar(n) {
            Some("closed") => Some(FailMode::Closed),
            Some("open") => Some(FailMode::Open),
            _ => {
                cx.err(n, format!("expected `closed` or `open` for {}", cx.label()));
                None
            }
        }
    }
    fn schema(&self) -> Json {
        json!({ "enum": ["closed", "open"] })
    }
}

/// A mapping of detector names to `block`, `alert` or `log`.
pub(crate) struct DetectorActions;

impl Kind for DetectorActions {
    type Out = DlpActions;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<DlpActions> {
        let what = cx.label();
        let Some(entries) = yaml::entries(n) else {
            cx.err(
                n,
                format!(
                    "expected a mapping of detector to action for {what}, found {}",
                    yaml::kind(n)
                ),
            );
            return None;
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            let Some(name) = yaml::scalar(&k) else {
                cx.err(&k, format!("expected a detector name in {what}"));
                continue;
            };
            let action = match yaml::scalar(&v) {
                Some("block") => DlpAction::Block,
                Some("alert") => DlpAction::Alert,
                Some("log") => DlpAction::Log,
                _ => {
                    cx.err(
                        &v,
                        format!(
                            "expected `block`, `alert` or `log` for detector `{name}` in {what}"
                        ),
                    );
                    continue;
                }
            };
            let at = yaml::pos(&k);
            if out.iter().any(|(n, _, _): &(String, _, _)| n == name) {
                cx.err(&k, format!("detector `{name}` appears twice in {what}"));
                continue;
            }
            out.push((name.to_owned(), action, (at.line, at.column)));
        }
        Some(DlpActions(out))
    }
    fn schema(&self) -> Json {
        json!({ "type": "object", "additionalProperties": { "enum": ["block", "alert", "log"] } })
    }
}

/// `inspect.dlp.patterns`: custom detectors.
pub(crate) struct Patterns;

impl Kind for Patterns {
    type Out = Vec<DlpPattern>;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Vec<DlpPattern>> {
        let what = cx.label();
        let items = cx.seq(n, &what)?;
        let mut out: Vec<DlpPattern> = Vec::new();
        for item in items {
            let item = &item;
            let mut p = DlpPattern::default();
            let Some(seen) = cx.section_into(&PATTERN, item, &mut p) else {
                continue;
            };
            let (Some(name_at), Some(re_at)) = (seen.at("name"), seen.at("regex")) else {
                cx.err(item, "a DLP pattern needs a `name` and a `regex`");
                continue;
            };
            let name_ok = (1..=32).contains(&p.name.len())
                && p.name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !name_ok {
                cx.err_at(
                    name_at,
                    format!(
                        "invalid DLP pattern name `{}`: expected [a-z0-9_-]{{1,32}}",
                        p.name
                    ),
                );
            } else if DLP_DETECTORS.contains(&p.name.as_str()) {
                cx.err_at(
                    name_at,
                    format!("DLP pattern name `{}` is a built-in detector's", p.name),
                );
            } else if out.iter().any(|o| o.name == p.name) {
                cx.err_at(name_at, format!("duplicate DLP pattern `{}`", p.name));
            }
            if let Err(msg) = check_regex(&p.regex) {
                cx.err_at(re_at, format!("DLP pattern `{}`: {msg}", p.name));
            }
            out.push(p);
        }
        Some(out)
    }
    fn schema(&self) -> Json {
        json!({ "type": "array", "items": PATTERN.schema() })
    }
    fn nested(&self) -> Nested {
        Nested::List(&PATTERN)
    }
}

/// A custom pattern parses, cannot match the empty string, and has a
/// bounded match length (so a body stream can hold back enough bytes).
fn check_regex(re: &str) -> Result<(), String> {
    let hir = regex_syntax::ParserBuilder::new()
        .utf8(false)
        .build()
        .parse(re)
        .map_err(|e| {
            // The parser's message spans lines; keep its last line.
            let s = e.to_string();
            s.lines().last().unwrap_or(&s).trim().to_owned()
        })?;
    match hir.properties().maximum_len() {
        Some(n) if n <= MAX_PATTERN_BYTES => {}
        _ => {
            return Err(format!(
                "matches of unbounded or excessive length (at most {MAX_PATTERN_BYTES} bytes; use bounded repetition such as {{1,64}} instead of + or *)"
            ));
        }
    }
    if hir.properties().minimum_len() == Some(0) {
        return Err("the pattern matches the empty string".into());
    }
    Ok(())
}
