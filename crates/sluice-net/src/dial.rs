//! The dial stage, shared by every listener: resolve once, run the second
//! policy phase on the answer, refuse Sluice's own listeners, and connect
//! only to addresses that passed (happy eyeballs across families, bounded by
//! the connect timeout). Nothing is resolved twice, so a DNS answer that
//! changes between check and connect (rebinding) cannot slip through.

use std::{
    net::{IpAddr, SocketAddr},
    sync::RwLock,
    time::{Duration, Instant},
};

use hickory_resolver::{
    TokioResolver,
    config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ServerOrderingStrategy},
    net::runtime::TokioRuntimeProvider,
};
use sluice_policy::{Decision, Destination, Policy, ids};
use sluice_serve::fd_exhausted;
use tokio::{
    net::{TcpSocket, TcpStream},
    task::JoinSet,
};

/// Delay before racing the next address (RFC 8305 "Connection Attempt Delay").
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Why a dial failed, with the decision to record.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The name did not resolve.
    #[error("cannot resolve {host}: {msg}")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's message.
        msg: String,
    },
    /// Every address was refused by the policy (guard, cidr rules, self).
    #[error("denied: {}", .0.reason)]
    Denied(Box<Decision>),
    /// Every allowed address refused or was unreachable.
    #[error("connect to {addr} failed: {msg}")]
    Connect {
        /// The last address tried.
        addr: SocketAddr,
        /// The error.
        msg: String,
        /// Its kind (refused, unreachable, ...): listeners map it to answers.
        kind: std::io::ErrorKind,
        /// The (allowing) decision.
        decision: Box<Decision>,
    },
    /// No address answered within the connect timeout.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration, Box<Decision>),
    /// No socket could be made: the process (EMFILE) or the system
    /// (ENFILE) is out of file descriptors. Sluice's failure, not the
    /// destination's.
    #[error("out of file descriptors: {msg}")]
    NoDescriptors {
        /// The error.
        msg: String,
        /// The (allowing) decision.
        decision: Box<Decision>,
    },
}

/// A connected, checked upstream.
#[derive(Debug)]
pub struct Dialed {
    /// The connection.
    pub stream: TcpStream,
    /// The address connected to.
    pub peer: SocketAddr,
    /// The final (two-phase) decision.
    pub decision: Decision,
    /// Time spent resolving and connecting.
    pub elapsed: Duration,
}

/// Resolver plus connect policy.
pub struct Dialer {
    resolver: TokioResolver,
    connect_timeout: Duration,
    own: RwLock<Vec<SocketAddr>>,
    /// `SO_MARK` for every outbound socket (`listen.transparent_mark`), so
    /// that a redirect ruleset can exempt Sluice's own traffic.
    mark: Option<u32>,
}

impl Dialer {
    /// A dialer using `upstreams` (or the system resolver when empty), each
    /// lookup bounded by `upstream_timeout` (`dns.upstream_timeout`), and
    /// resolution plus connection together by `connect_timeout`.
    pub fn new(
        upstreams: &[SocketAddr],
        upstream_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Dialer, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if upstreams.is_empty() {
            TokioResolver::builder(provider).map_err(|e| format!("system resolver: {e}"))?
        } else {
            let servers = upstreams
                .iter()
                .map(|a| {
                    let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                    for c in &mut ns.connections {
                        c.port = a.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let opts = builder.options_mut();
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.cache_size = 4096;
        // One lookup gets `dns.upstream_timeout` in all (hickory's pool
        // enforces it end to end across upstreams, asking two at once);
        // no retry of a whole lookup that timed out. An upstream that times
        // out gets a failure penalty in the pool's statistics, so later
        // lookups ask the others first (QueryStatistics ordering).
        opts.timeout = upstream_timeout.min(connect_timeout);
        opts.attempts = 1;
        opts.num_concurrent_reqs = 2;
        opts.server_ordering_strategy = ServerOrderingStrategy::QueryStatistics;
        opts.positive_max_ttl = Some(Duration::from_secs(300));
        let resolver = builder.build().map_err(|e| format!("resolver: {e}"))?;
        Ok(Dialer {
            resolver,
            connect_timeout,
            own: RwLock::new(Vec::new()),
            mark: None,
        })
    }

    /// Marks every outbound socket with `SO_MARK` `mark` (loop protection
    /// behind a transparent redirect). Needs `CAP_NET_ADMIN`.
    pub fn with_mark(mut self, mark: Option<u32>) -> Dialer {
        self.mark = mark;
        self
    }

    /// Declares the addresses Sluice listens on (never dialed: `guard/self`).
    pub fn set_own_addrs(&self, addrs: Vec<SocketAddr>) {
        if let Ok(mut own) = self.own.write() {
            *own = addrs;
        }
    }

    fn is_own(&self, target: SocketAddr) -> bool {
        let Ok(own) = self.own.read() else {
            return true;
        };
        own.iter().any(|l| {
            l.port() == target.port()
                && (l.ip() == target.ip()
                    || (l.ip().is_unspecified()
                        && (target.ip().is_loopback() || target.ip().is_unspecified())))
        })
    }

    /// Resolves `dest` (once) and returns the addresses, within the connect
    /// timeout (the dial stage's one deadline).
    pub async fn resolve(&self, dest: &Destination) -> Result<Vec<IpAddr>, DialError> {
        match dest {
            Destination::Ip(ip) => Ok(vec![*ip]),
            Destination::Name(name) => {
                let fqdn = format!("{name}.");
                let lookup = self.resolver.lookup_ip(fqdn.as_str());
                let Ok(answer) = tokio::time::timeout(self.connect_timeout, lookup).await else {
                    return Err(DialError::Resolve {
                        host: name.clone(),
                        msg: format!(
                            "no answer within the connect timeout ({}ms)",
                            self.connect_timeout.as_millis()
                        ),
                    });
                };
                match answer {
                    Ok(found) => {
                        let v: Vec<IpAddr> = found.iter().collect();
                        if v.is_empty() {
                            Err(DialError::Resolve {
                                host: name.clone(),
                                msg: "no addresses".to_owned(),
                            })
                        } else {
                            Ok(v)
                        }
                    }
                    Err(e) => Err(DialError::Resolve {
                        host: name.clone(),
                        msg: e.to_string(),
                    }),
                }
            }
        }
    }

    /// Second phase plus the self check: the addresses that may be dialed.
    pub fn vet(
        &self,
        policy: &Policy,
        decision: &Decision,
        addrs: &[IpAddr],
        port: u16,
    ) -> Result<(Decision, Vec<IpAddr>), DialError> {
        let check = policy.check_addresses(decision, addrs);
        if check.allowed.is_empty() {
            return Err(DialError::Denied(Box::new(check.decision)));
        }
        let allowed: Vec<IpAddr> = check
            .allowed
            .iter()
            .copied()
            .filter(|ip| !self.is_own(SocketAddr::new(*ip, port)))
            .collect();
        if allowed.is_empty() {
            return Err(DialError::Denied(Box::new(check.decision.deny_with(
                ids::GUARD_SELF,
                format!(
                    "{}:{port} is one of Sluice's own listeners",
                    check.allowed[0]
                ),
            ))));
        }
        Ok((check.decision, allowed))
    }

    /// Resolve, vet and connect.
    pub async fn dial(
        &self,
        policy: &Policy,
        decision: &Decision,
        dest: &Destination,
        port: u16,
    ) -> Result<Dialed, DialError> {
        let started = Instant::now();
        let addrs = self.resolve(dest).await?;
        self.dial_addrs(policy, decision, &addrs, port, started)
            .await
    }

    /// Vet and connect to addresses already resolved (by `resolve`, or the
    /// one address a transparent client was redirected from); `started`
    /// is when the dial stage began, for `Dialed::elapsed`.
    pub async fn dial_addrs(
        &self,
        policy: &Policy,
        decision: &Decision,
        addrs: &[IpAddr],
        port: u16,
        started: Instant,
    ) -> Result<Dialed, DialError> {
        let (decision, allowed) = self.vet(policy, decision, addrs, port)?;
        // One deadline for the stage: what resolution left of it.
        let left = self.connect_timeout.saturating_sub(started.elapsed());
        let (stream, peer) =
            match tokio::time::timeout(left, happy_eyeballs(&allowed, port, self.mark)).await {
                Ok(Ok(s)) => s,
                Ok(Err((_, e))) if fd_exhausted(&e) => {
                    return Err(DialError::NoDescriptors {
                        msg: e.to_string(),
                        decision: Box::new(decision),
                    });
                }
                Ok(Err((addr, e))) => {
                    return Err(DialError::Connect {
                        addr,
                        msg: e.to_string(),
                        kind: e.kind(),
                        decision: Box::new(decision),
                    });
                }
                Err(_) => {
                    return Err(DialError::Timeout(self.connect_timeout, Box::new(decision)));
                }
            };
        let _ = stream.set_nodelay(true);
        Ok(Dialed {
            stream,
            peer,
            decision,
            elapsed: started.elapsed(),
        })
    }
}

/// One connection attempt, with the socket marked first when asked.
async fn connect_one(a: SocketAddr, mark: Option<u32>) -> std::io::Result<TcpStream> {
    let sock = if a.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(m) = mark {
        crate::sockopt::set_mark(&sock, m)?;
    }
    sock.connect(a).await
}

/// Interleaves families (first address's family first), as RFC 8305 asks.
fn interleave(addrs: &[IpAddr]) -> Vec<IpAddr> {
    let first_v6 = addrs.first().is_some_and(IpAddr::is_ipv6);
    let (mut a, mut b): (Vec<IpAddr>, Vec<IpAddr>) =
        addrs.iter().partition(|ip| ip.is_ipv6() == first_v6);
    a.reverse();
    b.reverse();
    let mut out = Vec::with_capacity(addrs.len());
    while !a.is_empty() || !b.is_empty() {
        out.extend(a.pop());
        out.extend(b.pop());
    }
    out
}

async fn happy_eyeballs(
    addrs: &[IpAddr],
    port: u16,
    mark: Option<u32>,
) -> Result<(TcpStream, SocketAddr), (SocketAddr, std::io::Error)> {
    // One address (IP literals, most names): connect inline, no racing task.
    if let [ip] = addrs {
        let a = SocketAddr::new(*ip, port);
        return connect_one(a, mark)
            .await
            .map(|s| (s, a))
            .map_err(|e| (a, e));
    }
    let order = interleave(addrs);
    let mut pending = order.into_iter().map(|ip| SocketAddr::new(ip, port));
    let mut set = JoinSet::new();
    let mut last_err = None;
    let spawn = |set: &mut JoinSet<_>, a: SocketAddr| {
        set.spawn(async move { (a, connect_one(a, mark).await) });
    };
    if let Some(a) = pending.next() {
        spawn(&mut set, a);
    }
    loop {
        if set.is_empty() {
            match pending.next() {
                Some(a) => spawn(&mut set, a),
                None => break,
            }
        }
        tokio::select! {
            res = set.join_next() => match res {
                Some(Ok((a, Ok(s)))) => return Ok((s, a)),
                Some(Ok((a, Err(e)))) => {
                    last_err = Some((a, e));
                    if let Some(next) = pending.next() {
                        spawn(&mut set, next);
                    }
                }
                Some(Err(_)) | None => {}
            },
            () = tokio::time::sleep(ATTEMPT_DELAY) => {
                if let Some(next) = pending.next() {
                    spawn(&mut set, next);
                }
            }
        }
    }
    Err(last_err.unwrap_or_else(|| {
        (
            SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port),
            std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address"),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaves_families() {
        let v: Vec<IpAddr> = ["2001:db8::1", "2001:db8::2", "192.0.2.1", "192.0.2.2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let got: Vec<String> = interleave(&v).iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            ["2001:db8::1", "192.0.2.1", "2001:db8::2", "192.0.2.2"]
        );
    }
}
