//! The dial stage, shared by every listener: resolve once, run the second
//! policy phase on the answer, refuse Sluice's own listeners, and connect
//! only to addresses that passed (happy eyeballs across families).
//! Resolution and connection share one deadline, the connect timeout; each
//! upstream resolver is asked for at most `dns.upstream_timeout`, from the
//! one that answered last. Nothing is resolved twice, so a DNS answer that
//! changes between check and connect (rebinding) cannot slip through.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_resolver::{
    ResolverBuilder, TokioResolver,
    config::{LookupIpStrategy, NameServerConfig, ResolverConfig},
    lookup_ip::LookupIp,
    net::runtime::TokioRuntimeProvider,
};
use sluice_policy::{Decision, Destination, Policy, ids};
use sluice_serve::fd_exhausted;
use tokio::{io::Interest, net::TcpStream, task::JoinSet};

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

/// A resolver error as one bounded line of text (no newlines, no control
/// characters): records and answers carry it.
fn one_line(s: &str) -> String {
    let mut out: String = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if out.is_empty() {
        out.push_str("resolver error");
    }
    out
}

/// Resolver plus connect policy.
pub struct Dialer {
    /// One resolver per configured upstream, asked in turn (or one for the
    /// system's configuration), each with its own cache.
    resolvers: Vec<Upstream>,
    /// The upstream that answered last: asked first next time, so an
    /// upstream that timed out is skipped until the others fail too.
    preferred: AtomicUsize,
    upstream_timeout: Duration,
    connect_timeout: Duration,
    own: RwLock<Vec<SocketAddr>>,
    /// `SO_MARK` for every outbound socket (`listen.transparent_mark`), so
    /// that a redirect ruleset can exempt Sluice's own traffic.
    mark: Option<u32>,
}

/// One upstream's resolver.
struct Upstream {
    /// `None`: the system's resolver configuration.
    addr: Option<SocketAddr>,
    resolver: TokioResolver,
    /// How its last lookup went: `None` before any, `Some(Err(why))` when
    /// it failed to answer (timed out or errored), for `/readyz`.
    last: Mutex<Option<Result<(), String>>>,
}

/// What `/readyz` says of one resolver upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHealth {
    /// `ip:port`, or `system` for the system's resolver configuration.
    pub upstream: String,
    /// `up` (its last lookup got an answer, NXDOMAIN included), `down`
    /// (its last lookup got none: it is passed over while others answer),
    /// or `unknown` (not asked yet).
    pub state: &'static str,
    /// Why it is down.
    pub error: Option<String>,
}

impl Upstream {
    fn note(&self, outcome: Result<(), String>) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(outcome);
        }
    }
}

/// Answers cached per upstream.
const CACHE_PER_UPSTREAM: u64 = 4096;

impl Dialer {
    /// A dialer using `upstreams` (or the system resolver when empty),
    /// asking one upstream at a time for at most `upstream_timeout`
    /// (`dns.upstream_timeout`) before the next, and bounding resolution
    /// plus connection together by `connect_timeout`.
    pub fn new(
        upstreams: &[SocketAddr],
        upstream_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Dialer, String> {
        let per_lookup = upstream_timeout.min(connect_timeout);
        let resolvers = if upstreams.is_empty() {
            let provider = TokioRuntimeProvider::default();
            let builder =
                TokioResolver::builder(provider).map_err(|e| format!("system resolver: {e}"))?;
            vec![Upstream {
                addr: None,
                resolver: build(builder, per_lookup)?,
                last: Mutex::new(None),
            }]
        } else {
            upstreams
                .iter()
                .map(|a| {
                    let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                    for c in &mut ns.connections {
                        c.port = a.port();
                    }
                    let builder = TokioResolver::builder_with_config(
                        ResolverConfig::from_name_servers(vec![ns]),
                        TokioRuntimeProvider::default(),
                    );
                    Ok(Upstream {
                        addr: Some(*a),
                        resolver: build(builder, per_lookup)?,
                        last: Mutex::new(None),
                    })
                })
                .collect::<Result<Vec<_>, String>>()?
        };
        Ok(Dialer {
            resolvers,
            preferred: AtomicUsize::new(0),
            upstream_timeout: per_lookup,
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

    /// Resolves `dest` (once) and returns the addresses. Upstreams are
    /// asked one at a time from the one that answered last, each for at
    /// most `dns.upstream_timeout`, all within the connect timeout (the
    /// dial stage's one deadline). A name that does not exist is an answer,
    /// not a reason to ask the next upstream.
    pub async fn resolve(&self, dest: &Destination) -> Result<Vec<IpAddr>, DialError> {
        let name = match dest {
            Destination::Ip(ip) => return Ok(vec![*ip]),
            Destination::Name(name) => name,
        };
        // `localhost` and `*.localhost` never reach a resolver (RFC 6761).
        if let Some(local) = sluice_policy::guard::local_addresses(name) {
            return Ok(local.to_vec());
        }
        let fqdn = format!("{name}.");
        let deadline = Instant::now() + self.connect_timeout;
        let failed = |msg: String| DialError::Resolve {
            host: name.clone(),
            msg,
        };
        let n = self.resolvers.len();
        let first = self.preferred.load(Ordering::Relaxed) % n.max(1);
        let mut last = String::from("no resolver");
        for i in (0..n).map(|k| (first + k) % n) {
            let up = &self.resolvers[i];
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let per = self.upstream_timeout.min(left);
            let at = up
                .addr
                .map_or_else(|| "system resolver".to_owned(), |a| a.to_string());
            match tokio::time::timeout(per, up.resolver.lookup_ip(fqdn.as_str())).await {
                Ok(Ok(found)) => {
                    up.note(Ok(()));
                    self.preferred.store(i, Ordering::Relaxed);
                    return addresses(found).ok_or_else(|| failed("no addresses".to_owned()));
                }
                Ok(Err(e)) if e.is_no_records_found() => {
                    up.note(Ok(()));
                    self.preferred.store(i, Ordering::Relaxed);
                    // hickory's own text is debug notation (`Query { name:
                    // Name("…") … }`): the record gets one line of ours.
                    let msg = if e.is_nx_domain() {
                        "no such name (NXDOMAIN)"
                    } else {
                        "the name has no A or AAAA records"
                    };
                    return Err(failed(msg.to_owned()));
                }
                Ok(Err(e)) => last = format!("{at}: {}", one_line(&e.to_string())),
                Err(_) => last = format!("{at}: no answer within {}ms", per.as_millis()),
            }
            up.note(Err(last.clone()));
        }
        if Instant::now() >= deadline {
            last = format!(
                "no answer within the connect timeout ({}ms); last: {last}",
                self.connect_timeout.as_millis()
            );
        }
        Err(failed(last))
    }

    /// Each resolver upstream and how its last lookup went (`/readyz`).
    pub fn upstream_health(&self) -> Vec<UpstreamHealth> {
        self.resolvers
            .iter()
            .map(|u| {
                let last = u.last.lock().ok().and_then(|l| l.clone());
                let (state, error) = match last {
                    None => ("unknown", None),
                    Some(Ok(())) => ("up", None),
                    Some(Err(e)) => ("down", Some(e)),
                };
                UpstreamHealth {
                    upstream: u
                        .addr
                        .map_or_else(|| "system".to_owned(), |a| a.to_string()),
                    state,
                    error,
                }
            })
            .collect()
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
        self.connect(decision, &allowed, port, &Bind::default(), started)
            .await
    }

    /// Connects straight to addresses already vetted, leaving from `bind`,
    /// within what is left of the dial stage's deadline.
    pub async fn connect(
        &self,
        decision: Decision,
        allowed: &[IpAddr],
        port: u16,
        bind: &Bind,
        started: Instant,
    ) -> Result<Dialed, DialError> {
        // A source address can only reach addresses of its own family.
        let same_family: Vec<IpAddr>;
        let allowed = match bind.source {
            Some(src) => {
                same_family = allowed
                    .iter()
                    .copied()
                    .filter(|ip| ip.is_ipv4() == src.is_ipv4())
                    .collect();
                if same_family.is_empty() {
                    return Err(DialError::Connect {
                        addr: SocketAddr::new(allowed.first().copied().unwrap_or(src), port),
                        msg: format!(
                            "the route leaves from {src}, and the destination has no address of its family"
                        ),
                        kind: std::io::ErrorKind::AddrNotAvailable,
                        decision: Box::new(decision),
                    });
                }
                &same_family[..]
            }
            None => allowed,
        };
        // One deadline for the stage: what resolution left of it.
        let left = self.connect_timeout.saturating_sub(started.elapsed());
        let opts = SockOpts {
            mark: self.mark,
            bind: bind.clone(),
        };
        let (stream, peer) =
            match tokio::time::timeout(left, happy_eyeballs(allowed, port, &opts)).await {
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
        Ok(Dialed {
            stream,
            peer,
            decision,
            elapsed: started.elapsed(),
        })
    }

    /// One connection to `addr` (a parent proxy), marked and bound like
    /// every socket Sluice dials.
    pub async fn connect_one(&self, addr: SocketAddr, bind: &Bind) -> std::io::Result<TcpStream> {
        connect_marked(addr, self.mark, bind).await
    }

    /// The dial stage's deadline (`limits.connect_timeout`).
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}

/// Where a route's connections leave from: a local address bound before
/// connecting, and an interface (`SO_BINDTODEVICE`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bind {
    /// The local address (port chosen by the kernel).
    pub source: Option<IpAddr>,
    /// The interface name.
    pub interface: Option<Arc<str>>,
}

/// One connection to `addr` with `SO_MARK` `mark` and `bind` (parents and
/// their health checks).
pub(crate) async fn connect_marked(
    addr: SocketAddr,
    mark: Option<u32>,
    bind: &Bind,
) -> std::io::Result<TcpStream> {
    let opts = SockOpts {
        mark,
        bind: bind.clone(),
    };
    connect_one(addr, &opts).await
}

/// What every outbound socket gets before it connects.
#[derive(Clone)]
struct SockOpts {
    mark: Option<u32>,
    bind: Bind,
}

/// A resolver with Sluice's options: both families, a bounded cache, one
/// attempt of at most `timeout`.
fn build(
    mut builder: ResolverBuilder<TokioRuntimeProvider>,
    timeout: Duration,
) -> Result<TokioResolver, String> {
    let opts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.cache_size = CACHE_PER_UPSTREAM;
    opts.timeout = timeout;
    opts.attempts = 1;
    opts.positive_max_ttl = Some(Duration::from_secs(300));
    builder.build().map_err(|e| format!("resolver: {e}"))
}

/// The addresses of a lookup, `None` when it has none.
fn addresses(found: LookupIp) -> Option<Vec<IpAddr>> {
    let v: Vec<IpAddr> = found.iter().collect();
    (!v.is_empty()).then_some(v)
}

/// One connection attempt, with the socket marked, bound to its interface
/// and source address first when asked, and `TCP_NODELAY` set.
async fn connect_one(a: SocketAddr, opts: &SockOpts) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockProtocol, SockType, SockaddrStorage, setsockopt, socket,
        sockopt,
    };
    use std::os::fd::AsRawFd;

    let family = if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let sock = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::Tcp,
    )?;
    if let Some(m) = opts.mark {
        crate::sockopt::set_mark(&sock, m)?;
    }
    if let Some(dev) = &opts.bind.interface {
        crate::sockopt::bind_device(&sock, dev).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot leave by interface {dev}: {e}"))
        })?;
    }
    if let Some(src) = opts.bind.source {
        // The port is picked at connect, per destination, not at bind:
        // bound sockets would otherwise share one ephemeral range.
        crate::sockopt::bind_address_no_port(&sock);
        nix::sys::socket::bind(
            sock.as_raw_fd(),
            &SockaddrStorage::from(SocketAddr::new(src, 0)),
        )
        .map_err(|e| {
            let e = std::io::Error::from(e);
            std::io::Error::new(e.kind(), format!("cannot leave from {src}: {e}"))
        })?;
    }
    // Set before the connect: it holds for the connection (one syscall
    // either way, and relayed bytes are never held back by Nagle).
    let _ = setsockopt(&sock, sockopt::TcpNoDelay, &true);
    let pending = match nix::sys::socket::connect(sock.as_raw_fd(), &SockaddrStorage::from(a)) {
        Ok(()) => false,
        Err(nix::errno::Errno::EINPROGRESS) => true,
        Err(e) => return Err(e.into()),
    };
    let stream = TcpStream::from_std(std::net::TcpStream::from(sock))?;
    if pending {
        connected(&stream).await?;
    }
    Ok(stream)
}

/// Waits for a non-blocking connect to finish. Unlike tokio's
/// `TcpSocket::connect`, which reads `SO_ERROR` after every connect, the
/// error is read only when the readiness event says there is one: a
/// socket still connecting reports nothing (`tcp_poll` in `SYN_SENT`),
/// one that connected reports writable, and one whose connect failed
/// reports `EPOLLERR` with `EPOLLHUP`. One `getsockopt` fewer per tunnel
/// (`strace -c`, bench/README.md, "Syscalls of one CONNECT tunnel").
async fn connected(stream: &TcpStream) -> std::io::Result<()> {
    let ready = stream.ready(Interest::WRITABLE | Interest::ERROR).await?;
    if ready.is_error() || ready.is_write_closed() {
        // An error event without a pending error (taken by someone else,
        // or a hang-up) still means the connect did not give a stream.
        return Err(stream.take_error()?.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the connection failed while connecting",
            )
        }));
    }
    Ok(())
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
    opts: &SockOpts,
) -> Result<(TcpStream, SocketAddr), (SocketAddr, std::io::Error)> {
    // One address (IP literals, most names): connect inline, no racing task.
    if let [ip] = addrs {
        let a = SocketAddr::new(*ip, port);
        return connect_one(a, opts)
            .await
            .map(|s| (s, a))
            .map_err(|e| (a, e));
    }
    let order = interleave(addrs);
    let mut pending = order.into_iter().map(|ip| SocketAddr::new(ip, port));
    let mut set = JoinSet::new();
    let mut last_err = None;
    let spawn = |set: &mut JoinSet<_>, a: SocketAddr| {
        let opts = opts.clone();
        set.spawn(async move { (a, connect_one(a, &opts).await) });
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

    /// The connect reads `SO_ERROR` only when the readiness event says
    /// there is one: a refused connect is still an error (and which one),
    /// an accepted one a stream that carries bytes.
    #[tokio::test]
    async fn a_refused_connect_is_an_error_and_an_accepted_one_a_stream() {
        let opts = SockOpts {
            mark: None,
            bind: Bind::default(),
        };
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let e = connect_one(closed, &opts).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");

        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = connect_one(l.local_addr().unwrap(), &opts).await.unwrap();
        assert!(c.nodelay().unwrap());
        let (mut s, _) = l.accept().await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        c.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"x");
    }

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
