//! Diagnostics on stderr in one format: `--log-format text` (lines for
//! people, the start-up lines as `sluice: …`, which supervisors and the
//! test harness wait for) or `json` (one object a line, start-up lines
//! included, for log shippers). Flow records are data and go to the flow
//! log, never here; alerts stay one JSON object a line in both formats.

use std::sync::OnceLock;

/// The format of stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `sluice: …` start-up lines and tracing's text lines.
    Text,
    /// One JSON object a line (`timestamp`, `level`, `fields.message`, …).
    Json,
}

static FORMAT: OnceLock<Format> = OnceLock::new();

/// Installs the tracing subscriber for `format`, filtered by `RUST_LOG`
/// (default `info`).
pub fn init(format: Format) {
    let _ = FORMAT.set(format);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        Format::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        Format::Json => builder.json().with_current_span(false).init(),
    }
}

/// A start-up line: `sluice: {msg}` in text, an `info` event in JSON.
pub fn line(msg: &str) {
    match FORMAT.get() {
        Some(Format::Json) => tracing::info!(target: "sluice", "{msg}"),
        _ => eprintln!("sluice: {msg}"),
    }
}

/// A start-up warning: `sluice: warning: {msg}` in text, a `warn` event in
/// JSON.
pub fn warning(msg: &str) {
    match FORMAT.get() {
        Some(Format::Json) => tracing::warn!(target: "sluice", "{msg}"),
        _ => eprintln!("sluice: warning: {msg}"),
    }
}

/// The error `run` exits with: `error: {msg}` in text, an `error` event in
/// JSON.
pub fn fatal(msg: &str) {
    match FORMAT.get() {
        Some(Format::Json) => tracing::error!(target: "sluice", "{msg}"),
        _ => eprintln!("error: {msg}"),
    }
}
