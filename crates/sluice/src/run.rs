//! `sluice run`: the gateway. Wiring lands with the HTTP proxy.

use std::{path::PathBuf, process::ExitCode};

pub fn main(_config: Option<PathBuf>) -> ExitCode {
    eprintln!("error: `sluice run` is not built yet");
    ExitCode::from(2)
}
