//! Reading `sluice.yaml`: parse into a position-annotated YAML tree, then
//! walk it once against the key tables, collecting every error with file,
//! line, column and what was expected. Nothing here trusts YAML's own scalar
//! typing: scalars are read as written, so `0x50` is not a port and `"443"`
//! is.
//!
//! Every key is defined once, in `catalog`: its name, how its value is read
//! (a `kinds` kind, which also gives its JSON Schema), whether a reload
//! applies it, and its description. The walker (`table`), `sluice schema`,
//! [`keys`](fn@keys) and [`restart_needed`] all come from those tables.
//!
//! # Layout
//!
//! - `yaml`: the only code that knows how YAML is parsed: a compact tree
//!   (one 20-byte node per scalar or collection, text borrowed from the
//!   source) built from saphyr-parser's events, or from its own fast path
//!   for plain block-style files; every syntax error is still saphyr-parser's.
//! - `table`: key descriptors, the section walker, schema and listings.
//! - `kinds`: how each kind of value is read, checked and described.
//! - `catalog`: the key tables, one entry a key.
//! - `items`: the lists of zones, rules and users, and the checks across
//!   their items (duplicates, zones that can never be selected).

mod catalog;
mod inspect;
mod items;
mod kinds;
mod table;
mod yaml;

use std::{collections::HashMap, fmt};

pub use catalog::{keys, restart_needed, schema};
pub use kinds::parse_cidr;
pub use table::{KeyDoc, Reload};

use crate::model::Config;
use yaml::{Node, Pos};

/// One configuration error, positioned in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name as given.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What was wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Something a file says that loads but is probably not what was meant
/// (a wildcard over a public suffix, a rule that can never match). The
/// policy loads with it; `sluice validate` prints it (and fails with
/// `--strict`), `sluice run` logs it at start and on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The file name as given.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What looks wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: warning: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Every error found in a file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Parse and validate a configuration. `file` only names the source in errors.
///
/// Every key is optional here, so that a fragment reads as the defaults
/// plus what it says. [`Policy::load`](crate::Policy::load), what the
/// gateway and `sluice validate` use, also requires `zones`.
pub fn parse_config(source: &str, file: &str) -> Result<Config, ConfigErrors> {
    parse(source, file, Need::Nothing)
}

/// What a file must name besides being valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Nothing: an empty file is the defaults.
    Nothing,
    /// `zones`, even if empty. A file without it is empty, a comment, or
    /// cut short (a truncating writer, a broken template); loaded, it would
    /// deny every request as `default/no-zone`, so it is refused — at
    /// start, on reload (the running policy stays) and by `validate`.
    /// `zones: []` still says "deny everything" on purpose.
    Zones,
}

/// [`parse_config`], requiring what `need` says.
pub(crate) fn parse(source: &str, file: &str, need: Need) -> Result<Config, ConfigErrors> {
    parse_warned(source, file, need).map(|(c, _)| c)
}

/// [`parse`], with the warnings of a file that loads, in file order.
pub(crate) fn parse_warned(
    source: &str,
    file: &str,
    need: Need,
) -> Result<(Config, Vec<ConfigWarning>), ConfigErrors> {
    let docs = yaml::documents(source).map_err(|e| {
        let mut cx = Cx::new(file);
        cx.err_at(e.at, explain_syntax(&e.message));
        ConfigErrors(cx.errors)
    })?;
    let mut cx = Cx::new(file);
    let empty = |cx: &mut Cx<'_>| {
        if need == Need::Zones {
            cx.err_at(
                yaml::Pos { line: 1, column: 1 },
                "the configuration is empty: expected at least `zones` (an empty or cut-short file would deny every request)",
            );
        }
        Some(Config::default())
    };
    let docs = docs.docs();
    let config = match docs.as_slice() {
        [] => empty(&mut cx),
        [doc] if yaml::is_null(doc) => empty(&mut cx),
        [doc] => catalog::read_config(&mut cx, doc, need),
        [_, second, ..] => {
            cx.err(second, "expected one YAML document, found several");
            None
        }
    };
    let mut errors = cx.errors;
    // Stable: errors at one position keep the order they were found in.
    errors.sort_by_key(|e| (e.line, e.column));
    let mut warnings = cx.warnings;
    warnings.sort_by_key(|w| (w.line, w.column));
    match config {
        Some(c) if errors.is_empty() => Ok((c, warnings)),
        _ => Err(ConfigErrors(errors)),
    }
}

/// A YAML parser message in words a person editing the file understands,
/// for the mistakes people make (mostly indentation), with the parser's
/// own words kept after it; any other message as the parser said it.
fn explain_syntax(message: &str) -> String {
    const PLAIN: &[(&str, &str)] = &[
        (
            "did not find expected '-' indicator",
            "this line is not indented like the list above it: a new item starts with `- ` in the same column as the other items, and a key of an item lines up with the key after its `- `",
        ),
        (
            "did not find expected key",
            "this line is indented differently from the keys above it: the keys of one mapping start in the same column",
        ),
        (
            "mapping values are not allowed in this context",
            "a `key:` here is indented deeper than the keys around it, or follows a value on the same line: line it up with the other keys of its mapping (and quote a value that contains `: `)",
        ),
        (
            "tabs disallowed",
            "a tab in the indentation: YAML indents with spaces only",
        ),
    ];
    match PLAIN.iter().find(|(said, _)| message.contains(said)) {
        Some((_, plain)) => format!("{plain} (YAML parser: {message})"),
        None => message.to_owned(),
    }
}

/// The state of one walk over a file: the errors so far, which key is being
/// read (for messages), and what the checks across sections need.
pub(crate) struct Cx<'f> {
    file: &'f str,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
    /// The key being read: its section's label and its name.
    label: Label,
    /// Explicit rule ids and the line each was first used on.
    rule_ids: HashMap<String, usize>,
    /// User names that zones refer to, checked against `users` at the end.
    user_refs: Vec<(String, Pos)>,
    /// Route names that zones and rules refer to, checked against
    /// `routes` at the end.
    route_refs: Vec<(String, Pos)>,
}

/// How messages name the key being read: `admin.window`, `users[].name`,
/// or a bare `host` inside a rule.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Label {
    section: &'static str,
    key: &'static str,
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.section.is_empty() {
            f.write_str(self.key)
        } else {
            write!(f, "{}.{}", self.section, self.key)
        }
    }
}

impl<'f> Cx<'f> {
    fn new(file: &'f str) -> Cx<'f> {
        Cx {
            file,
            errors: Vec::new(),
            warnings: Vec::new(),
            label: Label::default(),
            rule_ids: HashMap::new(),
            user_refs: Vec::new(),
            route_refs: Vec::new(),
        }
    }

    /// Reports an error at the start of `n`.
    pub(crate) fn err(&mut self, n: &Node<'_>, msg: impl Into<String>) {
        self.err_at(yaml::pos(n), msg);
    }

    /// Reports an error at `at`.
    pub(crate) fn err_at(&mut self, at: Pos, msg: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line: at.line,
            column: at.column,
            message: msg.into(),
        });
    }

    /// Reports a warning at `at`.
    pub(crate) fn warn_at(&mut self, at: Pos, msg: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            file: self.file.to_owned(),
            line: at.line,
            column: at.column,
            message: msg.into(),
        });
    }

    /// How messages name the key being read.
    pub(crate) fn label(&self) -> Label {
        self.label
    }

    /// Errors reported so far (to tell whether a step added one).
    pub(crate) fn error_count(&self) -> usize {
        self.errors.len()
    }
}

// The names the unit tests below use from this module's scope.
#[cfg(test)]
use crate::model::{BlockedAnswer, Dns};
#[cfg(test)]
use std::time::Duration;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod admin_tests {
    use super::*;

    #[test]
    fn admin_keys_load_with_defaults_and_positioned_errors() {
        let c = parse_config("admin:\n  recent_flows: 10\n  window: 2m\n", "a.yaml").unwrap();
        assert_eq!(c.admin.recent_flows, 10);
        assert_eq!(c.admin.window, Duration::from_secs(120));
        assert_eq!(c.admin.recent_denials, 1_000);
        assert_eq!(c.admin.open_paths, ["/healthz", "/readyz"]);

        let bad = "admin:\n  open_paths: [/metrics, /api]\n  hosts: [\"Bad Host\", sluice.internal:9901]\n  window: 5s\n  top_entries: 0\n  recent_flows: 2000000\n  stale_after: soon\n";
        let errs = parse_config(bad, "b.yaml").unwrap_err().to_string();
        for want in [
            "b.yaml:2:26: expected one of /healthz, /readyz, /metrics in admin.open_paths, found `/api`",
            "b.yaml:3:11: expected a host name or `name:port` in admin.hosts",
            "b.yaml:4:11: expected admin.window of at least 60s",
            "b.yaml:5:16: expected a number above zero for admin.top_entries",
            "b.yaml:6:17: expected at most 1000000 for admin.recent_flows",
            "b.yaml:7:16: expected a duration for admin.stale_after",
        ] {
            assert!(errs.contains(want), "{want}\nin\n{errs}");
        }
    }
}

#[cfg(test)]
mod dns_tests {
    use super::*;

    #[test]
    fn dns_keys_load_with_defaults_and_positioned_errors() {
        let c = parse_config(
            "listen:\n  dns: 127.0.0.1:0\ndns:\n  upstreams: [127.0.0.53:53]\n  blocked_answer: 0.0.0.0\n  tunnel_threshold: 0.8\n  negative_ttl: 0s\n",
            "d.yaml",
        )
        .unwrap();
        assert_eq!(c.listen.dns, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(
            c.dns.blocked_answer,
            BlockedAnswer::Sinkhole("0.0.0.0".parse().unwrap())
        );
        assert_eq!(c.dns.tunnel_threshold, 0.8);
        assert_eq!(c.dns.negative_ttl, Duration::ZERO);
        assert_eq!(c.dns.rate_limit_qps, Dns::default().rate_limit_qps);

        let bad = "listen:\n  dns: 127.0.0.1:5353\ndns:\n  upstreams: [127.0.0.1:5353]\n  blocked_answer: sinkhole\n  tunnel_threshold: 2\n  rate_limit_qps: 0\n  upstream_timeout: 0s\n  cache: 5\n";
        let errs = parse_config(bad, "b.yaml").unwrap_err().to_string();
        for want in [
            "b.yaml:1:1: dns.upstreams names listen.dns (127.0.0.1:5353)",
            "b.yaml:5:19: expected `nxdomain`, `refused` or a sinkhole IP address",
            "b.yaml:6:21: expected a number above 0 and at most 1",
            "b.yaml:7:19: expected a number above zero for dns.rate_limit_qps",
            "b.yaml:8:21: expected a duration above zero for dns.upstream_timeout",
            "b.yaml:9:3: unknown key `cache` in dns",
        ] {
            assert!(errs.contains(want), "{want}\nin\n{errs}");
        }
    }
}
