//! `sluice`: the command line. Thin glue over the library crates: parse
//! arguments, load files, call the policy or start the gateway, map results
//! to exit codes.

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use sluice_policy::{Destination, Policy, Request, Verdict};

/// mimalloc instead of glibc malloc: the data path allocates and frees small
/// and 32 KiB buffers per request and tunnel, and glibc's malloc/free showed
/// as ~12% of the proxy's CPU under tunnel load (perf). Measured with
/// the Python tunnel client bench/proxy.sh used then (`client.py tunnels`,
/// since replaced by `sluice-loadgen tunnels`; 32 clients, loopback, 2 runs
/// each): 3,817–3,861 tunnels/s and 155–158 µs CPU per tunnel with glibc,
/// 4,630–4,948 and 113–127 µs with mimalloc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;
mod ca;
mod detect;
mod dns;
mod follow;
mod learn;
mod listeners;
mod log;
mod password;
mod records;
mod replay;
mod run;
mod validate;

/// `sluice --version`: the version and the commit it was built from
/// (sluice-observe's build script, shared with `sluice_build_info`).
static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} (commit {})",
        env!("CARGO_PKG_VERSION"),
        sluice_observe::COMMIT
    )
});

/// Sluice: an egress gateway. What is not explicitly allowed does not leave.
#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version = VERSION.as_str(),
    about = "Sluice: an egress gateway. What is not explicitly allowed does not leave.",
    long_about = "Sluice: an egress gateway, the one exit for a protected network's \
outbound traffic. Clients reach it as an HTTP proxy, a SOCKS5 proxy, a \
transparent listener or a DNS resolver; every request is matched against a \
least-privilege policy for the zone it comes from (enforce, open or report \
mode; special addresses are always guarded), and leaves a JSON flow record. \
Metrics, an admin API and a dashboard show what leaves.\n\n\
Start with `sluice run` (an embedded loopback default without -c), check a \
policy with `sluice validate -c FILE` and a request with `sluice check`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the gateway (the embedded default without a file).
    #[command(after_long_help = RUN_HELP, after_help = RUN_HELP)]
    Run {
        /// Configuration file.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Format of the diagnostics on stderr: lines for people, or one
        /// JSON object a line for log shippers (start-up lines included).
        #[arg(long, value_enum, default_value_t = log::Format::Text)]
        log_format: log::Format,
    },
    /// Validate a configuration: exit 0, or print every error and exit 1.
    /// Warnings print as `file:line:column: warning: …` and exit 0.
    Validate {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Exit 1 on warnings too.
        #[arg(long)]
        strict: bool,
    },
    /// Explain the decision for one request: exit 0 allow, 1 deny, 2 error.
    Check {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Client address the request comes from.
        #[arg(long)]
        from: IpAddr,
        /// Authenticated user.
        #[arg(long)]
        user: Option<String>,
        /// Resolved address of the destination (repeatable): runs phase two.
        #[arg(long = "addr", conflicts_with = "resolve")]
        addrs: Vec<IpAddr>,
        /// Resolve the destination as the gateway would (dns.upstreams, or the
        /// system resolver when none) and run phase two.
        #[arg(long)]
        resolve: bool,
        /// Print the decision as JSON.
        #[arg(long)]
        json: bool,
        /// `host:port`, `[v6]:port`, or an `http://` / `https://` URL.
        target: String,
    },
    /// Print the JSON Schema of the configuration file.
    Schema,
    /// Propose a least-privilege policy (YAML) from recorded flows.
    Learn {
        /// The current configuration: listeners, users and each zone's
        /// sources, users, mode and deny rules are kept from it (default:
        /// the embedded default).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Learn only this zone; the others are kept as they are.
        #[arg(long)]
        zone: Option<String>,
        /// Leave out rules seen in fewer flows than this.
        #[arg(long, default_value_t = 1)]
        min_count: u64,
        /// Flow logs (JSON lines).
        #[arg(required = true)]
        records: Vec<PathBuf>,
    },
    /// Judge recorded flows under a new policy and report what would change:
    /// exit 0 nothing, 1 something, 2 usage or configuration error.
    Replay {
        /// The new configuration.
        #[arg(short, long)]
        config: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Flow logs (JSON lines).
        #[arg(required = true)]
        records: Vec<PathBuf>,
    },
    /// Run the detectors over recorded flows in event time (each record's
    /// `ts` is the clock; files are merged, records up to
    /// `detect.max_lateness` out of order accepted): alerts as JSON lines
    /// on stdout, diagnostics on stderr; exit 0, or 2 when the
    /// configuration or a file cannot be read.
    ///
    /// With `--follow nats://HOST:PORT`, instead of files: every
    /// replica's records from the flow bus (`bus.stream`,
    /// `bus.partitions`), read with durable consumers until SIGTERM, each
    /// new alert also published to `sluice.alerts` and sent to
    /// `detect.webhook` and `detect.syslog`.
    Detect {
        /// The configuration (zones, `detect:`, `dns.tunnel_*`, `bus:`).
        #[arg(short, long)]
        config: PathBuf,
        /// Follow the flow bus at this NATS URL (comma-separated for a
        /// cluster) instead of reading files.
        #[arg(long, value_name = "URL", conflicts_with = "records")]
        follow: Option<String>,
        /// With --follow: this follower's share, K of N followers (`0/1`:
        /// every partition).
        #[arg(long, value_name = "K/N", requires = "follow")]
        partition: Option<sluice_bus::Partition>,
        /// With --follow: the durable consumers' name prefix (consumers
        /// are `<durable>-<p>`; default `sluice-detect`).
        #[arg(long, value_name = "NAME", requires = "follow")]
        durable: Option<String>,
        /// Flow logs (JSON lines).
        #[arg(required_unless_present = "follow")]
        records: Vec<PathBuf>,
    },
    /// Hash a proxy user's password for `users[].password_hash` (argon2id).
    ///
    /// Reads the password from the terminal without echo (asked twice), or
    /// one line from stdin when it is not a terminal; prints the PHC string.
    HashPassword,
    /// The CA that TLS interception signs leaf certificates with.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `sluice man > sluice.1`.
    Man,
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Write a new CA (ECDSA P-256, ten years) for `inspect.ca`: its
    /// certificate and its key (0600) in DIR, never over existing files;
    /// prints how to make clients trust it.
    Init {
        /// Directory for `sluice-ca.pem` and `sluice-ca.key` (made if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "Sluice interception CA")]
        name: String,
    },
}

const RUN_HELP: &str = "\
Signals:
  SIGHUP           reload the configuration (a change of the file also does);
                   a file that fails validation keeps the running policy
  SIGUSR1          reopen the flow log file (after rotation)
  SIGTERM, SIGINT  drain: stop accepting, let open tunnels finish within
                   limits.drain_timeout, then exit

Output:
  flow records     JSON lines to log.flows: stdout (default) or a file path
  diagnostics      stderr, in --log-format text or json; alerts are JSON lines
  metrics, API     the admin listener (listen.admin): /metrics, /api/v1/

Environment:
  RUST_LOG         diagnostics filter (default info), e.g. RUST_LOG=debug or
                   RUST_LOG=sluice_net=debug,info";

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Run { config, log_format } => run::main(config, log_format),
        Command::Validate { config, strict } => validate::main(&config, strict),
        Command::Check {
            config,
            from,
            user,
            addrs,
            resolve,
            json,
            target,
        } => check(
            &config,
            from,
            user.as_deref(),
            addrs,
            resolve,
            json,
            &target,
        ),
        Command::Learn {
            config,
            zone,
            min_count,
            records,
        } => learn::main(&records, config.as_ref(), zone.as_deref(), min_count),
        Command::Replay {
            config,
            json,
            records,
        } => replay::main(&config, &records, json),
        Command::Detect {
            config,
            follow: Some(url),
            partition,
            durable,
            ..
        } => follow::main(&follow::Args {
            config: &config,
            url: &url,
            partition: partition.unwrap_or(sluice_bus::Partition::ALL),
            durable: durable.as_deref().unwrap_or("sluice-detect"),
        }),
        Command::Detect {
            config, records, ..
        } => detect::main(&config, &records),
        Command::HashPassword => password::main(),
        Command::Ca {
            command: CaCommand::Init { out, name },
        } => ca::init(&out, &name),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Into memory first: clap_complete panics on a failed write
            // (a closed pipe); ours is reported.
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "sluice", &mut out);
            write_out(&out, "the completion script")
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            if let Err(e) = clap_mangen::Man::new(cmd).render(&mut out) {
                eprintln!("error: cannot render the manual page: {e}");
                return ExitCode::from(2);
            }
            write_out(&out, "the manual page")
        }
        Command::Schema => {
            match serde_json::to_string_pretty(&sluice_policy::schema()) {
                Ok(s) => println!("{s}"),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
            ExitCode::SUCCESS
        }
    }
}

/// Writes generated output to stdout; a closed pipe is an error, not a
/// panic.
fn write_out(bytes: &[u8], what: &str) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write {what}: {e}");
            ExitCode::from(2)
        }
    }
}

fn load(path: &PathBuf) -> Result<Policy, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    Policy::load_at(&text, &path.display().to_string(), crate::run::now_ms())
        .map_err(|e| e.to_string())
}

/// `check --resolve`: the addresses the gateway would dial, from the
/// resolver it would ask — `dns.upstreams` (or the system resolver when
/// none), `dns.upstream_timeout` per upstream, `limits.connect_timeout` in
/// all; `localhost` locally — so that `check` explains the proxy exactly.
fn resolve_as_the_gateway(policy: &Policy, dest: &Destination) -> Result<Vec<IpAddr>, String> {
    let config = policy.config();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(async {
        let dialer = sluice_net::Dialer::new(
            &config.dns.upstreams,
            config.dns.upstream_timeout,
            config.limits.connect_timeout,
        )?;
        dialer.resolve(dest).await.map_err(|e| e.to_string())
    })
}

/// Splits a check target into host and port.
fn parse_target(target: &str) -> Result<(String, u16), String> {
    let (authority, default_port) = if let Some(rest) = target.strip_prefix("http://") {
        (rest, Some(80))
    } else if let Some(rest) = target.strip_prefix("https://") {
        (rest, Some(443))
    } else if target.contains("://") {
        return Err(format!(
            "unsupported URL scheme in `{target}`: expected http or https"
        ));
    } else {
        (target, None)
    };
    let authority = authority.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        // The proxy refuses user@ targets (400); check explains the proxy.
        return Err(format!(
            "`{target}` carries user@: the proxy refuses credentials in a target"
        ));
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unclosed `[` in `{target}`"))?;
        (format!("[{h}]"), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match (port, default_port) {
        (Some(p), _) => sluice_policy::parse_port(p).ok_or_else(|| {
            format!("invalid port `{p}` in `{target}`: expected 1 to 65535 in ASCII digits")
        })?,
        (None, Some(d)) => d,
        (None, None) => return Err(format!("`{target}` needs a port: host:port or a URL")),
    };
    Ok((host, port))
}

#[allow(clippy::too_many_arguments)]
fn check(
    path: &PathBuf,
    from: IpAddr,
    user: Option<&str>,
    mut addrs: Vec<IpAddr>,
    resolve: bool,
    json: bool,
    target: &str,
) -> ExitCode {
    let policy = match load(path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let (host, port) = match parse_target(target) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let dest = match Destination::parse(&host) {
        Ok(d) => d,
        Err(e) => {
            let d = policy.invalid_destination(from, user, format!("invalid destination: {e}"));
            print_decision(json, &host, port, &d, None);
            return ExitCode::from(1);
        }
    };
    let req = Request {
        src: from,
        user,
        dest: &dest,
        port,
    };
    if resolve {
        match resolve_as_the_gateway(&policy, &dest) {
            Ok(found) => addrs = found,
            Err(e) => {
                eprintln!("error: cannot resolve {dest}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let (decision, check) = policy.explain(&req, &addrs);
    let miss = policy.port_miss(&decision, &dest, &addrs);
    if json {
        let mut v = decision_json(&dest.to_string(), port, &decision, check.as_ref());
        add_port_miss(&mut v, &policy, &decision, &dest, &addrs);
        println!("{v}");
    } else {
        print_decision(false, &dest.to_string(), port, &decision, check.as_ref());
        if let Some(r) = miss {
            println!(
                "  note: rule {} ({}) matches {dest} but not port {port}",
                r.id, r.text
            );
        }
    }
    if decision.verdict == Verdict::Allow {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_decision(
    json: bool,
    dest: &str,
    port: u16,
    d: &sluice_policy::Decision,
    check: Option<&sluice_policy::AddressCheck>,
) {
    if json {
        println!("{}", decision_json(dest, port, d, check));
        return;
    }
    // An IPv6 address is bracketed so that its port reads apart from it.
    if dest.contains(':') {
        println!("[{dest}]:{port}: {d}");
    } else {
        println!("{dest}:{port}: {d}");
    }
    if d.pending != sluice_policy::Pending::Nothing {
        println!("  pending: phase two (addresses) not run; pass --addr or --resolve");
    }
    if let Some(c) = check {
        for a in &c.allowed {
            println!("  address {a}: may be dialed");
        }
        for r in &c.rejected {
            println!("  address {}: rejected by {}: {}", r.addr, r.rule, r.reason);
        }
    }
}

/// Adds `port_miss` (an allow rule that matches the destination but not
/// the port) to a decision's JSON when there is one.
fn add_port_miss(
    v: &mut serde_json::Value,
    policy: &Policy,
    d: &sluice_policy::Decision,
    dest: &Destination,
    addrs: &[IpAddr],
) {
    if let Some(r) = policy.port_miss(d, dest, addrs) {
        v["port_miss"] = serde_json::json!({"rule": r.id, "text": r.text});
    }
}

/// A decision as `sluice check --json` prints it and `POST /api/v1/check`
/// answers it.
fn decision_json(
    dest: &str,
    port: u16,
    d: &sluice_policy::Decision,
    check: Option<&sluice_policy::AddressCheck>,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "destination": dest,
        "port": port,
        "verdict": d.verdict,
        "enforced": d.enforced,
        "zone": d.zone,
        "mode": d.mode,
        "rule": d.rule,
        "reason": d.reason,
        "policy_hash": d.policy_hash,
        "pending": d.pending,
        "auth_required": d.auth_required,
    });
    if let Some(c) = check {
        v["allowed_addrs"] = serde_json::json!(c.allowed);
        v["rejected_addrs"] = serde_json::json!(c.rejected);
    }
    v
}
