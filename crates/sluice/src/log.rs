//! Diagnostics on stderr in one format: `--log-format text` (every line
//! `sluice: [level: ]message key=value…`, start-up lines and tracing's
//! events alike, without a timestamp: supervisors and journald add their
//! own) or `json` (one object a line, start-up lines included, for log
//! shippers). Flow records are data and go to the flow
//! log, never here; alerts stay one JSON object a line in both formats.

use std::sync::OnceLock;

/// The format of stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `sluice: [level: ]message key=value…` lines.
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
        Format::Text => builder.with_ansi(false).event_format(Text).init(),
        Format::Json => builder.json().with_current_span(false).init(),
    }
}

/// tracing's events as text lines in the start-up lines' shape: `sluice: `,
/// the level unless it is `info`, then the message and its fields.
struct Text;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Text
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error: ",
            tracing::Level::WARN => "warning: ",
            tracing::Level::INFO => "",
            tracing::Level::DEBUG => "debug: ",
            tracing::Level::TRACE => "trace: ",
        };
        write!(writer, "sluice: {level}")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
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

/// The error `run` exits with: `sluice: error: {msg}` in text, an `error`
/// event in JSON.
pub fn fatal(msg: &str) {
    match FORMAT.get() {
        Some(Format::Json) => tracing::error!(target: "sluice", "{msg}"),
        _ => eprintln!("sluice: error: {msg}"),
    }
}
