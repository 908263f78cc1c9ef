//! What a file must be to run, checked the same way by `sluice validate`
//! and at `sluice run`'s start: the policy loads (every positioned error at
//! once, password hash files read), a data-path listener is named, and the
//! flow log can be written where it points. The policy crate checks what
//! needs no I/O; the directory checks live here because they do.
//!
//! Warnings (a file that loads but probably says something else than was
//! meant) print as `file:line:column: warning: …`; `validate` exits 0 with
//! them, 1 with `--strict`, and `run` logs them at start and on reload.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Result, bail};
use sluice_net::Version;
use sluice_policy::Config;

/// `sluice validate`: 0 valid, 1 invalid (or warned about, with `strict`).
pub fn main(path: &Path, strict: bool) -> ExitCode {
    let version = match load_runnable(Some(path)) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(1);
        }
    };
    let p = &version.policy;
    for w in p.warnings() {
        eprintln!("{w}");
    }
    println!(
        "{}: ok ({} zones, {} users, policy {}{})",
        path.display(),
        p.config().zones.len(),
        p.config().users.len(),
        p.hash(),
        match p.warnings().len() {
            0 => String::new(),
            1 => ", 1 warning".to_owned(),
            n => format!(", {n} warnings"),
        }
    );
    if strict && !p.warnings().is_empty() {
        eprintln!("{}: warnings are errors with --strict", path.display());
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// Loads a policy (as a reload does) and checks what only a start needs:
/// the one function `validate` and `run` share.
pub fn load_runnable(path: Option<&Path>) -> Result<Version> {
    let version = crate::run::load(path)?;
    let file = path.map_or_else(
        || "<embedded default>".to_owned(),
        |p| p.display().to_string(),
    );
    runnable(version.policy.config(), &file)?;
    // The interception CA and extra roots read and checked, as run will.
    crate::ca::interceptor(version.policy.config(), path)?;
    Ok(version)
}

/// Logs a loaded policy's warnings (at start and on reload).
pub fn log_warnings(version: &Version) {
    for w in version.policy.warnings() {
        tracing::warn!("{w}");
    }
}

/// What `run` needs of a valid configuration before it binds anything.
fn runnable(config: &Config, file: &str) -> Result<()> {
    let l = &config.listen;
    if l.http.is_none()
        && l.socks5.is_none()
        && l.transparent.is_none()
        && l.dns.is_none()
        && l.netflow.is_none()
    {
        bail!(
            "{file}: no listener configured: set listen.http, listen.socks5, listen.transparent, listen.dns or listen.netflow"
        );
    }
    if l.transparent.is_some() && !cfg!(target_os = "linux") {
        bail!("{file}: listen.transparent needs Linux (SO_ORIGINAL_DST)");
    }
    match config.log.flows.as_str() {
        "stdout" => Ok(()),
        p => flow_log_writable(Path::new(p))
            .map_err(|why| anyhow::anyhow!("{file}: log.flows `{p}`: {why}")),
    }
}

/// Whether the flow log can be opened for appending, without creating it:
/// its directory exists and is writable, and the file, if there, is a
/// writable regular file.
fn flow_log_writable(path: &Path) -> Result<(), String> {
    use rustix::fs::{Access, access};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match std::fs::metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("directory {} does not exist", dir.display()));
        }
        Err(e) => return Err(format!("cannot read directory {}: {e}", dir.display())),
        Ok(m) if !m.is_dir() => return Err(format!("{} is not a directory", dir.display())),
        Ok(_) => {}
    }
    if access(&dir, Access::WRITE_OK | Access::EXEC_OK).is_err() {
        return Err(format!("directory {} is not writable", dir.display()));
    }
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Err("not a regular file".to_owned()),
        Ok(_) if access(path, Access::WRITE_OK).is_err() => {
            Err("the file is not writable".to_owned())
        }
        _ => Ok(()),
    }
}
