//! Detection wiring: the live detector `sluice run` registers on its
//! recorder (country database, baselines store), and `sluice detect`, the
//! same engine over recorded flow logs in event time.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use anyhow::{Context, Result};
use sluice_detect::{Engine, GeoDb, Live, Settings, Store};
use sluice_observe::{AlertSink, Metrics, Syslog, Webhook};
use sluice_policy::Config;

/// The folder relative paths in `path` are taken from.
pub fn base(path: Option<&Path>) -> PathBuf {
    path.and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned()
}

/// The country database `detect.geoip` names, read now.
pub fn geo(config: &Config, path: Option<&Path>) -> Result<Option<Arc<GeoDb>>> {
    let Some(file) = &config.detect.geoip else {
        return Ok(None);
    };
    let file = base(path).join(file);
    let db = GeoDb::open(&file).context("detect.geoip")?;
    Ok(Some(Arc::new(db)))
}

/// The live detector for `sluice run`, its baselines loaded from
/// `detect.state_dir` when set.
pub fn live(config: &Config, path: Option<&Path>, metrics: &Arc<Metrics>) -> Result<Live> {
    let geo = geo(config, path)?;
    let store = match &config.detect.state_dir {
        Some(dir) => Some(Store::open(&base(path).join(dir)).context("detect.state_dir")?),
        None => None,
    };
    let (live, loaded) = Live::new(Settings::from_config(config), geo, store, metrics.clone())
        .context("detect.state_dir")?;
    if config.detect.state_dir.is_some() {
        tracing::info!(
            zones = loaded.zones,
            sources = loaded.sources,
            skipped = loaded.skipped,
            "detection baselines loaded"
        );
    }
    Ok(live)
}

/// Syslog messages waiting to be sent at most; more are dropped and
/// counted.
const SYSLOG_QUEUE: usize = 1000;

/// The alert sinks `detect.webhook` and `detect.syslog` configure, their
/// tasks started (call on a tokio runtime): `sluice run`'s recorder and
/// `sluice detect --follow` hand every new alert to each.
pub fn alert_sinks(config: &Config, metrics: &Arc<Metrics>) -> Result<Vec<Box<dyn AlertSink>>> {
    let mut sinks: Vec<Box<dyn AlertSink>> = Vec::new();
    let webhook = &config.detect.webhook;
    if let Some(url) = &webhook.url {
        let w = Webhook::start(
            url,
            webhook.timeout,
            webhook.queue as usize,
            metrics.clone(),
        )?;
        sinks.push(Box::new(w));
        tracing::info!(url = %url, "alerts also go to a webhook");
    }
    if let Some(address) = &config.detect.syslog.address {
        let s = Syslog::start(address, SYSLOG_QUEUE, metrics.clone())
            .with_context(|| format!("detect.syslog.address {address}"))?;
        sinks.push(Box::new(s));
        tracing::info!(address = %address, "alerts also go to syslog");
    }
    Ok(sinks)
}

/// `sluice detect -c CONFIG RECORDS…`: alerts as JSON lines on stdout,
/// diagnostics on stderr; 0, or 2 when the configuration or a file cannot
/// be read.
pub fn main(config: &Path, records: &[PathBuf]) -> ExitCode {
    match detect(config, records) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn detect(path: &Path, records: &[PathBuf]) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path.display().to_string();
    let policy = sluice_policy::Policy::load_at(&text, &name, crate::run::now_ms())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = policy.config();
    let mut engine = Engine::new(Settings::from_config(config), geo(config, Some(path))?);
    let lateness = i64::try_from(config.detect.max_lateness.as_millis()).unwrap_or(i64::MAX);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut err = std::io::stderr();
    let sum = sluice_detect::replay::run(&mut engine, records, lateness, &mut out, &mut err)?;
    out.flush().context("cannot write alerts")?;
    let _ = writeln!(
        err,
        "sluice detect: {} records, {} alerts{}",
        sum.records,
        sum.alerts,
        match (sum.bad, sum.late) {
            (0, 0) => String::new(),
            (b, l) => format!(" ({b} lines skipped, {l} too late)"),
        }
    );
    Ok(())
}
