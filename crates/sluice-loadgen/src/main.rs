//! `sluice-loadgen`: the compiled load generator of `bench/`. It replaces the
//! Python asyncio tunnel client and echo origin, which on a 2-core machine
//! used more CPU per tunnel than the proxies they measured and so compressed
//! the ratios between them. It is a benchmark tool, not part of the gateway:
//! it never decides anything and never fails on a number, it reports them.
//!
//! Both modes run on one tokio `current_thread` runtime (one core, like a
//! single client process), so a proxy's rate is compared against a client
//! that has the same shape in every column.
//!
//! # Layout
//!
//! - `args`: the command line (hand-rolled: two modes, a few flags).
//! - `tunnels`: new tunnels per second through a proxy, JSON on stdout.
//! - `echo`: TCP echo origin on one or more ports.

use std::process::ExitCode;

mod args;
mod echo;
mod tunnels;

use args::Mode;

fn main() -> ExitCode {
    let mode = match args::parse(std::env::args().skip(1)) {
        Ok(mode) => mode,
        Err(e) => {
            eprintln!("sluice-loadgen: {e}\n\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice-loadgen: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match mode {
        Mode::Tunnels(config) => {
            let report = runtime.block_on(tunnels::run(config));
            match serde_json::to_string(&report) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluice-loadgen: cannot encode the report: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Mode::Echo { host, ports } => match runtime.block_on(echo::run(&host, &ports)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice-loadgen echo: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
