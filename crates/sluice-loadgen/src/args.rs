//! The command line. Hand-rolled: two modes and a handful of flags, with the
//! same names and defaults as the Python client it replaces.

use std::{
    fmt,
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    time::Duration,
};

use crate::tunnels::{Config, Target, Via};

/// Printed after a usage error.
pub const USAGE: &str = "\
usage:
  sluice-loadgen tunnels --proxy HOST:PORT|direct --target HOST:PORT
                         [--concurrency 32] [--count 5000] [--seconds 15] [--socks5]
                         [--rate PER_SECOND] [--keep N]
      New tunnels per second (or a steady PER_SECOND of them, open loop);
      with --keep, N tunnels held open and one byte echoed through them in
      turn, PER_SECOND a second. One JSON object on stdout.
  sluice-loadgen echo PORT [PORT...]
      TCP echo on each port, bound to $ORIGIN_HOST (default 127.0.0.1);
      prints \"ready\" once every port listens, runs until killed.";

/// What to run.
#[derive(Debug)]
pub enum Mode {
    Tunnels(Config),
    Echo { host: String, ports: Vec<u16> },
}

/// A command line that cannot be run: what was wrong.
#[derive(Debug, PartialEq)]
pub struct UsageError(String);

// === impl UsageError ===

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Mode, UsageError> {
    let mut args = args.into_iter();
    match args.next().as_deref() {
        Some("tunnels") => parse_tunnels(args).map(Mode::Tunnels),
        Some("echo") => {
            let ports = args
                .map(|p| {
                    p.parse::<u16>()
                        .map_err(|_| usage(format!("bad port {p:?}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if ports.is_empty() {
                return Err(usage("echo needs at least one PORT"));
            }
            let host = std::env::var("ORIGIN_HOST").unwrap_or_else(|_| "127.0.0.1".to_owned());
            Ok(Mode::Echo { host, ports })
        }
        Some(other) => Err(usage(format!("unknown mode {other:?}"))),
        None => Err(usage("missing mode")),
    }
}

fn parse_tunnels(mut args: impl Iterator<Item = String>) -> Result<Config, UsageError> {
    let (mut proxy, mut target) = (None, None);
    let (mut concurrency, mut count, mut seconds) = (32usize, 5000usize, 15.0f64);
    let mut socks5 = false;
    let mut rate = None;
    let mut keep = None;
    while let Some(flag) = args.next() {
        if flag == "--socks5" {
            socks5 = true;
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| usage(format!("{flag} needs a value")))?;
        match flag.as_str() {
            "--proxy" => proxy = Some(value),
            "--target" => target = Some(value),
            "--concurrency" => concurrency = number(&flag, &value)?,
            "--count" => count = number(&flag, &value)?,
            "--seconds" => seconds = number(&flag, &value)?,
            "--rate" => rate = Some(number::<f64>(&flag, &value)?),
            "--keep" => keep = Some(number::<usize>(&flag, &value)?),
            _ => return Err(usage(format!("unknown option {flag:?}"))),
        }
    }
    let proxy = proxy.ok_or_else(|| usage("--proxy is required"))?;
    let target = target.ok_or_else(|| usage("--target is required"))?;
    if concurrency == 0 {
        return Err(usage("--concurrency must be at least 1"));
    }
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err(usage(format!("--seconds {seconds} is not a duration")));
    }
    if rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err(usage("--rate must be a positive number"));
    }
    if keep == Some(0) || (keep.is_some() && rate.is_none()) {
        return Err(usage("--keep needs a count of at least 1 and a --rate"));
    }
    let (host, port) = split_host_port(&target)?;
    let target = Target {
        addr: resolve(&host, port)?,
        host,
        port,
    };
    let via = if proxy == "direct" {
        Via::Direct
    } else {
        let (phost, pport) = split_host_port(&proxy)?;
        let addr = resolve(&phost, pport)?;
        if !socks5 {
            Via::Connect(addr)
        } else {
            // The request carries the target as an IPv4 address (ATYP 1),
            // as the Python client did.
            match target.host.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => Via::Socks5 { proxy: addr, ip },
                _ => return Err(usage("--socks5 needs an IPv4 --target")),
            }
        }
    };
    Ok(Config {
        via,
        target,
        concurrency,
        count,
        duration: Duration::from_secs_f64(seconds),
        rate,
        keep,
    })
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, UsageError> {
    value
        .parse()
        .map_err(|_| usage(format!("{flag} {value:?} is not a number")))
}

/// `HOST:PORT` split at the last colon (`[v6]:port` keeps its brackets off).
fn split_host_port(s: &str) -> Result<(String, u16), UsageError> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| usage(format!("{s:?} is not HOST:PORT")))?;
    let port = port
        .parse()
        .map_err(|_| usage(format!("{s:?}: bad port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_owned(), port))
}

/// Resolved once, before measuring: name lookups are not part of a tunnel.
fn resolve(host: &str, port: u16) -> Result<SocketAddr, UsageError> {
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| usage(format!("cannot resolve {host}:{port}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn tunnels_defaults_and_flags() {
        let Mode::Tunnels(c) = parse(args("tunnels --proxy direct --target 127.0.0.1:7")).unwrap()
        else {
            panic!("not tunnels")
        };
        assert!(matches!(c.via, Via::Direct));
        assert_eq!((c.concurrency, c.count), (32, 5000));
        assert_eq!(c.duration, Duration::from_secs(15));
        assert_eq!(c.target.host, "127.0.0.1");
        assert_eq!((c.rate, c.keep), (None, None));

        let Mode::Tunnels(c) = parse(args(
            "tunnels --proxy 127.0.0.1:1080 --socks5 --target 127.0.0.1:7 \
             --concurrency 4 --count 10 --seconds 0.5 --rate 250 --keep 8",
        ))
        .unwrap() else {
            panic!("not tunnels")
        };
        assert!(matches!(c.via, Via::Socks5 { ip, .. } if ip == std::net::Ipv4Addr::LOCALHOST));
        assert_eq!((c.concurrency, c.count), (4, 10));
        assert_eq!(c.duration, Duration::from_millis(500));
        assert_eq!((c.rate, c.keep), (Some(250.0), Some(8)));
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        assert!(parse(args("tunnels --target 127.0.0.1:7")).is_err());
        assert!(parse(args("tunnels --proxy direct --target 127.0.0.1")).is_err());
        assert!(
            parse(args(
                "tunnels --proxy direct --target 127.0.0.1:7 --count x"
            ))
            .is_err()
        );
        assert!(
            parse(args(
                "tunnels --proxy direct --target 127.0.0.1:7 --bogus 1"
            ))
            .is_err()
        );
        assert!(
            parse(args(
                "tunnels --proxy 127.0.0.1:1 --socks5 --target [::1]:7"
            ))
            .is_err(),
            "SOCKS5 requests are IPv4 only"
        );
        for bad in ["10 --keep 0", "1 --keep x"] {
            let line = format!("tunnels --proxy direct --target 127.0.0.1:7 --rate {bad}");
            assert!(parse(args(&line)).is_err(), "--rate {bad}");
        }
        assert!(
            parse(args("tunnels --proxy direct --target 127.0.0.1:7 --keep 4")).is_err(),
            "--keep without --rate"
        );
        for bad in ["0", "-1", "inf", "x"] {
            let line = format!("tunnels --proxy direct --target 127.0.0.1:7 --rate {bad}");
            assert!(parse(args(&line)).is_err(), "--rate {bad}");
        }
        assert!(parse(args("echo")).is_err());
        assert!(parse(args("echo 70000")).is_err());
        assert!(parse(args("")).is_err());
    }
}
