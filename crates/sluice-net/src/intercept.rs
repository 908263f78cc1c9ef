//! TLS interception for the destinations a zone lists under `inspect.tls`
//! (docs/design.md, issue 14): Sluice terminates the client's TLS with a
//! leaf certificate for the destination, signed by the configured CA, opens
//! its own TLS connection to the destination (verified against the system
//! roots and `inspect.extra_roots`; there is no switch to skip that), and
//! serves the decrypted HTTP/1.1 with hyper, sending every request through
//! the same forwarding code as absolute-form requests
//! (`http::forward::forward_fixed`), so the HTTP inspectors see intercepted
//! requests exactly as they see plaintext ones.
//!
//! A tunnel is one flow record (`intercepted: true`, the last request's
//! `method` and `status`, the client side's TLS bytes); each request's flow
//! is folded into it through a [`Tally`] rather than recorded on its own.
//!
//! What this module must not do: decide policy (the gateway asks the
//! policy whether a name is listed) or intercept anything not listed.
//!
//! Leaf certificates share one key pair generated at start (only the
//! signature differs per host) and are cached per host name, at most
//! [`LEAF_CACHE`] entries for a day (a leaf is valid for [`LEAF_DAYS`]).
//! ALPN offers `http/1.1` only on both sides: a client that insists on
//! HTTP/2 fails the handshake, one that offers both (curl, browsers)
//! falls back to HTTP/1.1.

use std::{
    convert::Infallible,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::{client::conn::http1 as client_http1, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    client::{WebPkiServerVerifier, danger::ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
};
use sha2::{Digest, Sha256};
use sluice_observe::{ErrorKind, Finding};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use sluice_policy::Destination;

use crate::{
    Gateway,
    flow::Flow,
    http::forward_fixed,
    inspect::{Inspection, Inspector, Subject},
    refusal::Refusal,
    tls::Hello,
};

/// Leaf certificates cached at most (one per host name).
pub const LEAF_CACHE: u64 = 1_000;

/// How long a leaf certificate is valid; cached entries live a day.
pub const LEAF_DAYS: i64 = 7;

/// What is wrong with a CA or a root file.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The certificate file holds no usable PEM certificate.
    #[error("not a PEM certificate: {0}")]
    Cert(String),
    /// The key file holds no usable PEM private key.
    #[error("not a PEM private key (PKCS#8, as `sluice ca init` and `openssl genpkey` write): {0}")]
    Key(String),
    /// The certificate and key load, but do not make a CA that works.
    #[error("{0}")]
    Invalid(String),
}

/// The interception CA, the leaf cache and the upstream TLS client.
pub struct Interceptor {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    leaf_key: KeyPair,
    provider: Arc<CryptoProvider>,
    leaves: moka::sync::Cache<String, Arc<ServerConfig>>,
    upstream: Arc<ClientConfig>,
}

impl std::fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interceptor")
            .field("leaves", &self.leaves.entry_count())
            .finish()
    }
}

/// A new CA for `sluice ca init`: (certificate PEM, private key PEM),
/// ECDSA P-256, valid ten years.
pub fn new_ca(common_name: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate().map_err(|e| CaError::Invalid(e.to_string()))?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.distinguished_name
        .push(DnType::OrganizationName, "Sluice");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(3650);
    p.serial_number = Some(serial(common_name.as_bytes()));
    let cert = p
        .self_signed(&key)
        .map_err(|e| CaError::Invalid(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Every certificate in PEM `text` (`what` names the file in errors).
pub fn pem_certs(text: &[u8]) -> Result<Vec<CertificateDer<'static>>, CaError> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::Cert(e.to_string()))?;
    if certs.is_empty() {
        return Err(CaError::Cert("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

// === impl Interceptor ===

impl Interceptor {
    /// The interceptor for a CA certificate and key (PEM) and extra roots
    /// for upstream certificates (besides the system's). Checks that the
    /// key signs leaves that verify against the certificate.
    pub fn new(
        ca_cert_pem: &[u8],
        ca_key_pem: &[u8],
        extra_roots: Vec<CertificateDer<'static>>,
    ) -> Result<Interceptor, CaError> {
        // ring (already built for hickory) rather than aws-lc-rs and its
        // C toolchain; its one loss is the post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_der = pem_certs(ca_cert_pem)?.swap_remove(0);
        let key_text =
            std::str::from_utf8(ca_key_pem).map_err(|_| CaError::Key("not text".into()))?;
        let key = KeyPair::from_pem(key_text).map_err(|e| CaError::Key(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(&ca_der, key)
            .map_err(|e| CaError::Cert(format!("cannot read it as a CA certificate: {e}")))?;
        let leaf_key = KeyPair::generate().map_err(|e| CaError::Invalid(e.to_string()))?;
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::warn!(error = %e, "system root certificates: some could not be read");
        }
        let (_, skipped) = roots.add_parsable_certificates(native.certs);
        if skipped > 0 {
            tracing::debug!(skipped, "system root certificates that rustls cannot use");
        }
        for c in extra_roots {
            roots
                .add(c)
                .map_err(|e| CaError::Cert(format!("extra root: {e}")))?;
        }
        let mut upstream = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| CaError::Invalid(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        upstream.alpn_protocols = vec![b"http/1.1".to_vec()];
        let ic = Interceptor {
            issuer,
            ca_der,
            leaf_key,
            provider,
            leaves: moka::sync::Cache::builder()
                .max_capacity(LEAF_CACHE)
                .time_to_live(Duration::from_secs(24 * 3600))
                .build(),
            upstream: Arc::new(upstream),
        };
        ic.self_check()?;
        Ok(ic)
    }

    /// A leaf for a test name must verify against the CA certificate: the
    /// key belongs to it and it may sign (a CA, `keyCertSign`).
    fn self_check(&self) -> Result<(), CaError> {
        let name = "check.sluice.invalid";
        let leaf = self.leaf(name)?;
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .map_err(|e| CaError::Cert(e.to_string()))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| CaError::Invalid(e.to_string()))?;
        let server = ServerName::try_from(name).map_err(|e| CaError::Invalid(e.to_string()))?;
        verifier
            .verify_server_cert(&leaf, &[], &server, &[], UnixTime::now())
            .map_err(|e| {
                CaError::Invalid(format!(
                    "a leaf signed with this key does not verify against this certificate ({e}): the key must be the certificate's, and the certificate a CA"
                ))
            })?;
        Ok(())
    }

    /// The server configuration presenting a leaf for `host` (cached).
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        if let Some(c) = self.leaves.get(host) {
            return Ok(c);
        }
        let c = self.mint(host)?;
        self.leaves.insert(host.to_owned(), c.clone());
        Ok(c)
    }

    /// A new server configuration for `host`, never cached (the bench's
    /// forced miss).
    pub fn mint(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        let leaf = self.leaf(host)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut c = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| CaError::Invalid(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![leaf, self.ca_der.clone()], key)
            .map_err(|e| CaError::Invalid(e.to_string()))?;
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(c))
    }

    /// A leaf certificate for `host` (a name or an address).
    fn leaf(&self, host: &str) -> Result<CertificateDer<'static>, CaError> {
        let mut p = CertificateParams::new(vec![host.to_owned()])
            .map_err(|e| CaError::Invalid(format!("leaf for {host}: {e}")))?;
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, host);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(LEAF_DAYS);
        let mut seed = host.as_bytes().to_vec();
        seed.extend_from_slice(&now.unix_timestamp_nanos().to_be_bytes());
        p.serial_number = Some(serial(&seed));
        let cert = p
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(|e| CaError::Invalid(format!("leaf for {host}: {e}")))?;
        Ok(cert.der().clone())
    }

    /// Leaf configurations cached now.
    pub fn cached(&self) -> u64 {
        self.leaves.run_pending_tasks();
        self.leaves.entry_count()
    }
}

// === impl Inspector for Interceptor ===

/// The interceptor is the inspector that asks for interception: on a
/// tunnel of a zone with `inspect.tls`, a complete ClientHello whose SNI,
/// or a tunnel whose CONNECT/SOCKS5 host, the zone lists.
impl Inspector for Interceptor {
    fn wants_first_bytes(&self, s: &Subject) -> bool {
        s.decision
            .as_ref()
            .is_some_and(|d| s.policy.intercepts_zone(d))
    }

    fn first_bytes(&self, s: &Subject, hello: &Hello) -> Inspection {
        match intercept_name(s, hello) {
            Some(name) => Inspection::Intercept { name },
            None => Inspection::Pass,
        }
    }
}

/// The name to intercept a tunnel as, if its zone lists the tunnel's host
/// or its SNI: the SNI if there is one, else the host. Only a complete
/// ClientHello is intercepted; addresses are never listed.
fn intercept_name(s: &Subject, hello: &Hello) -> Option<String> {
    let Hello::ClientHello { sni } = hello else {
        return None;
    };
    let d = s.decision.as_ref()?;
    let sni = sni.as_deref().and_then(|n| Destination::parse(n).ok());
    let sni_name = match &sni {
        Some(Destination::Name(n)) => Some(n.as_str()),
        _ => None,
    };
    let host = match &s.dest {
        Destination::Name(n) => Some(n.as_str()),
        Destination::Ip(_) => None,
    };
    let listed = [sni_name, host]
        .into_iter()
        .flatten()
        .any(|n| s.policy.intercepts(d, n));
    if !listed {
        return None;
    }
    sni_name.or(host).map(str::to_owned)
}

/// A positive 16-byte serial number derived from `seed`.
fn serial(seed: &[u8]) -> SerialNumber {
    let mut b = Sha256::digest(seed)[..16].to_vec();
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

// === the intercepted tunnel ===

/// What the requests of one intercepted tunnel add to its record.
#[derive(Debug)]
pub(crate) struct Tally {
    /// What the connection's requests went through (`intercepted`,
    /// `inspected`), for the record's reason.
    label: &'static str,
    inner: Mutex<TallyInner>,
}

#[derive(Debug, Default)]
struct TallyInner {
    requests: u64,
    method: Option<String>,
    status: Option<u16>,
    denied: Option<(String, String)>,
    /// The first denial a `report` zone recorded but did not enforce.
    unenforced: Option<(String, String)>,
    /// Every request's findings, one per type (counts added up, the first
    /// hash kept).
    findings: Vec<Finding>,
    error: Option<(String, Option<ErrorKind>)>,
}

impl Tally {
    fn new(label: &'static str) -> Tally {
        Tally {
            label,
            inner: Mutex::default(),
        }
    }

    /// A request flow ended: what the tunnel's record keeps of it.
    pub(crate) fn fold(&self, f: Flow) {
        let Ok(mut t) = self.inner.lock() else {
            return;
        };
        t.requests += 1;
        t.method.clone_from(&f.method);
        if f.status.is_some() {
            t.status = f.status;
        }
        if f.denied() && t.denied.is_none() {
            t.denied = Some((f.rule().to_owned(), f.reason().to_owned()));
        } else if f.unenforced() && t.unenforced.is_none() {
            t.unenforced = Some((f.rule().to_owned(), f.reason().to_owned()));
        }
        for found in f.findings {
            match t.findings.iter_mut().find(|x| x.kind == found.kind) {
                Some(x) => x.count += found.count,
                None => t.findings.push(found),
            }
        }
        if let Some(e) = f.error {
            t.error = Some((e, f.error_kind));
        }
    }

    fn apply_to(&self, flow: &mut Flow) {
        let Ok(mut t) = self.inner.lock() else {
            return;
        };
        flow.method = t.method.take();
        flow.status = t.status;
        let label = self.label;
        flow.note = Some(match t.requests {
            1 => format!("{label}: 1 HTTP request"),
            n => format!("{label}: {n} HTTP requests"),
        });
        if let Some((rule, reason)) = t.denied.take() {
            flow.set_rule(&rule, reason);
        } else if let Some((rule, reason)) = t.unenforced.take() {
            flow.set_unenforced(&rule, reason);
        }
        flow.findings.append(&mut t.findings);
        if flow.error.is_none() {
            if let Some((e, kind)) = t.error.take() {
                flow.error = Some(e);
                flow.error_kind = kind;
            }
        }
    }
}

/// Intercepts a dialed tunnel whose client sent `first` (a complete
/// ClientHello) for `host`; returns the flow to record.
pub(crate) async fn run(
    gw: Arc<Gateway>,
    ic: Arc<Interceptor>,
    mut flow: Flow,
    client: TcpStream,
    first: Vec<u8>,
    upstream: TcpStream,
    host: String,
) -> Flow {
    flow.intercepted = Some(true);
    let limits = gw.limits().clone();
    // The destination first: a certificate that does not verify is known
    // before anything is said to the client.
    let origin = upstream_tls(&ic, upstream, &host, limits.connect_timeout).await;
    let server = match ic.server_config(&host) {
        Ok(c) => c,
        Err(e) => {
            Refusal::Internal(format!("leaf certificate for {host}: {e}")).apply(&mut flow);
            return flow;
        }
    };
    let activity = Arc::new(Activity::new());
    let io = ClientIo {
        pre: first,
        pos: 0,
        io: client,
        activity: activity.clone(),
    };
    let accepted = tokio::time::timeout(
        limits.header_timeout,
        tokio_rustls::TlsAcceptor::from(server).accept(io),
    )
    .await;
    let tls = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            if let Err(r) = &origin {
                r.apply(&mut flow);
            }
            flow.error = Some(format!(
                "the client rejected the interception (TLS handshake: {e}); it must trust the CA of inspect.ca.cert_file, and must not pin the destination's certificate"
            ));
            flow.error_kind = Some(ErrorKind::Client);
            activity.add_counts(&mut flow);
            return flow;
        }
        Err(_) => {
            flow.error = Some(format!(
                "the client did not finish its TLS handshake within {}s",
                limits.header_timeout.as_secs()
            ));
            flow.error_kind = Some(ErrorKind::Timeout);
            activity.add_counts(&mut flow);
            return flow;
        }
    };
    serve_requests(gw, flow, tls, origin, activity, "intercepted").await
}

/// Serves the plain HTTP of a transparent flow (`http-transparent`) whose
/// zone inspects content, over its dialed destination connection, so that
/// each request meets the same inspection as an absolute-form one; the
/// client's first bytes, already read, go first. Returns the flow to
/// record.
pub(crate) async fn serve_plain(
    gw: Arc<Gateway>,
    flow: Flow,
    client: TcpStream,
    first: Vec<u8>,
    upstream: TcpStream,
) -> Flow {
    let origin = http1_origin(upstream).await;
    let activity = Arc::new(Activity::new());
    let io = ClientIo {
        pre: first,
        pos: 0,
        io: client,
        activity: activity.clone(),
    };
    serve_requests(gw, flow, io, origin, activity, "inspected").await
}

/// Serves the client's HTTP/1.1 requests on `io` until the connection
/// ends, each forwarded over `origin` (the flow's one destination
/// connection) by the absolute-form code path; each request's flow folds
/// into `flow` through a [`Tally`]. `label` names what happened in the
/// record's reason (`intercepted: 2 HTTP requests`).
async fn serve_requests<I>(
    gw: Arc<Gateway>,
    flow: Flow,
    io: I,
    origin: Result<client_http1::SendRequest<crate::http::ProxyBody>, Refusal>,
    activity: Arc<Activity>,
    label: &'static str,
) -> Flow
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = gw.limits().clone();
    let origin_failed = origin.as_ref().err().cloned();
    let tally = Arc::new(Tally::new(label));
    let template = Arc::new(Mutex::new(flow));
    let svc = {
        let (gw, tally, template) = (gw.clone(), tally.clone(), template.clone());
        let origin = origin.map(|s| Arc::new(tokio::sync::Mutex::new(s)));
        service_fn(move |req| {
            let child = template.lock().ok().map(|t| {
                let mut c = t.child(tally.clone());
                c.method = Some(req.method().as_str().to_owned());
                c
            });
            let (gw, origin) = (gw.clone(), origin.clone());
            async move {
                let Some(child) = child else {
                    return Ok::<_, Infallible>(crate::http::internal_error());
                };
                Ok::<_, Infallible>(match origin {
                    Ok(sender) => forward_fixed(gw, sender, child, req).await,
                    Err(r) => crate::http::refused_answer(&gw, child, r),
                })
            }
        })
    };
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size((limits.max_header_bytes as usize).max(8192))
        .max_headers(128)
        .keep_alive(true);
    // Boxed so that it can be dropped (with the service and its hold on
    // the tunnel's flow) before the flow is taken back.
    let mut conn = Box::pin(b.serve_connection(TokioIo::new(io), svc));
    let idle = limits.idle_timeout;
    let ended = tokio::select! {
        r = conn.as_mut() => r.err().map(|e| (format!("client side: {e}"), ErrorKind::Client)),
        () = activity.idle_for(idle) => Some((format!("idle for {}s", idle.as_secs()), ErrorKind::Timeout)),
        () = gw.drain().stopped() => Some(("stopped: drain timeout".to_owned(), ErrorKind::Internal)),
    };
    drop(conn);
    let mut flow = match Arc::try_unwrap(template) {
        Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
        // Not expected: the service, the only other holder, went with the
        // connection. The record is then a copy of the tunnel's flow.
        Err(shared) => {
            let mut f = shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .child(tally.clone());
            f.tally = None;
            f
        }
    };
    tally.apply_to(&mut flow);
    // The destination failed whether or not a request came to be answered.
    if let Some(r) = origin_failed {
        r.apply(&mut flow);
    }
    if let (None, Some((e, kind))) = (&flow.error, ended) {
        flow.error = Some(e);
        flow.error_kind = Some(kind);
    }
    activity.add_counts(&mut flow);
    flow
}

/// The verified TLS connection to the destination, as an HTTP/1.1 client.
async fn upstream_tls(
    ic: &Interceptor,
    upstream: TcpStream,
    host: &str,
    timeout: Duration,
) -> Result<client_http1::SendRequest<crate::http::ProxyBody>, Refusal> {
    let name = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.to_owned())
            .map_err(|e| Refusal::BadRequest(format!("TLS server name {host}: {e}")))?,
    };
    let connector = tokio_rustls::TlsConnector::from(ic.upstream.clone());
    let tls = match tokio::time::timeout(timeout, connector.connect(name, upstream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let cert = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .is_some_and(|r| {
                    matches!(
                        r,
                        rustls::Error::InvalidCertificate(_)
                            | rustls::Error::NoCertificatesPresented
                    )
                });
            return Err(if cert {
                Refusal::UpstreamCertificate(format!("{host}: {e}"))
            } else {
                Refusal::UpstreamClosed(format!("TLS handshake with {host} failed: {e}"))
            });
        }
        Err(_) => return Err(Refusal::Timeout(timeout)),
    };
    http1_origin(tls).await
}

/// An HTTP/1.1 client on a destination connection.
async fn http1_origin<I>(
    io: I,
) -> Result<client_http1::SendRequest<crate::http::ProxyBody>, Refusal>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut b = client_http1::Builder::new();
    b.max_buf_size(1024 * 1024);
    let (sender, conn) = b
        .handshake::<_, crate::http::ProxyBody>(TokioIo::new(io))
        .await
        .map_err(|e| Refusal::UpstreamClosed(format!("origin handshake failed: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Bytes both ways on the client's side of an intercepted tunnel (TLS
/// records, as a spliced tunnel counts them) and the time of the last.
#[derive(Debug)]
struct Activity {
    out: AtomicU64,
    inn: AtomicU64,
    last_ms: AtomicU64,
    started: Instant,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            out: AtomicU64::new(0),
            inn: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn moved(&self, counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
        self.last_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let since = self.started.elapsed().saturating_sub(last);
            if since >= idle {
                return;
            }
            tokio::time::sleep(idle - since).await;
        }
    }

    fn add_counts(&self, flow: &mut Flow) {
        flow.bytes_out += self.out.load(Ordering::Relaxed);
        flow.bytes_in += self.inn.load(Ordering::Relaxed);
    }
}

/// The client's socket with the ClientHello already read put back in
/// front, counting what passes.
struct ClientIo {
    pre: Vec<u8>,
    pos: usize,
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        if me.pos < me.pre.len() {
            let n = (me.pre.len() - me.pos).min(buf.remaining());
            buf.put_slice(&me.pre[me.pos..me.pos + n]);
            me.pos += n;
            me.activity.moved(&me.activity.out, n);
            if me.pos == me.pre.len() {
                me.pre = Vec::new();
                me.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut me.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            me.activity.moved(&me.activity.out, n);
        }
        r
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = &mut *self;
        let r = Pin::new(&mut me.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            me.activity.moved(&me.activity.inn, *n);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interception decision on first bytes, as every listener's
    /// tunnel asks it (the transparent listener with the bytes it peeked).
    #[test]
    fn only_listed_names_with_a_complete_client_hello_are_intercepted() {
        let yaml = "inspect:\n  ca:\n    cert_file: c.pem\n    key_file: c.key\n\
                    zones:\n  - name: a\n    sources: [10.0.0.0/8]\n    mode: open\n    \
                    inspect:\n      tls: [\"*.pastebin.com\"]\n  - name: b\n    sources: [0.0.0.0/0]\n    mode: open\n";
        let policy = Arc::new(sluice_policy::Policy::load(yaml, "t.yaml").unwrap());
        let (cert, key) = new_ca("t").unwrap();
        let ic = Interceptor::new(cert.as_bytes(), key.as_bytes(), Vec::new()).unwrap();
        let subject = |src: &str, dest: &str| {
            let dest = Destination::parse(dest).unwrap();
            let d = policy.decide(&sluice_policy::Request {
                src: src.parse().unwrap(),
                user: None,
                dest: &dest,
                port: 443,
            });
            Subject {
                policy: policy.clone(),
                src: src.parse().unwrap(),
                user: None,
                dest,
                port: 443,
                peer: "192.0.2.1:443".parse().unwrap(),
                zone: d.zone.clone(),
                report: false,
                flow: Arc::from("t"),
                notes: Arc::default(),
                decision: Some(d),
            }
        };
        let hello = |sni: Option<&str>| Hello::ClientHello {
            sni: sni.map(str::to_owned),
        };
        let s = subject("10.1.1.1", "x.pastebin.com");
        assert!(ic.wants_first_bytes(&s));
        assert_eq!(
            ic.first_bytes(&s, &hello(Some("x.pastebin.com"))),
            Inspection::Intercept {
                name: "x.pastebin.com".into()
            }
        );
        // The host is listed: no SNI still intercepts, as the host.
        assert_eq!(
            ic.first_bytes(&s, &hello(None)),
            Inspection::Intercept {
                name: "x.pastebin.com".into()
            }
        );
        assert_eq!(ic.first_bytes(&s, &Hello::NotTls), Inspection::Pass);
        assert_eq!(ic.first_bytes(&s, &Hello::Incomplete(9)), Inspection::Pass);
        // Not listed (`*.` is below the name, not the name).
        let s = subject("10.1.1.1", "pastebin.com");
        assert_eq!(
            ic.first_bytes(&s, &hello(Some("pastebin.com"))),
            Inspection::Pass
        );
        // An address tunnel (transparent, or CONNECT to an IP) by its SNI.
        let s = subject("10.1.1.1", "192.0.2.1");
        assert_eq!(
            ic.first_bytes(&s, &hello(Some("a.pastebin.com"))),
            Inspection::Intercept {
                name: "a.pastebin.com".into()
            }
        );
        assert_eq!(ic.first_bytes(&s, &hello(None)), Inspection::Pass);
        // Another zone lists nothing: not even asked.
        let s = subject("192.0.2.9", "x.pastebin.com");
        assert!(!ic.wants_first_bytes(&s));
    }

    #[test]
    fn a_new_ca_signs_leaves_that_verify_and_a_foreign_key_is_refused() {
        let (cert, key) = new_ca("Test CA").unwrap();
        let ic = Interceptor::new(cert.as_bytes(), key.as_bytes(), Vec::new()).unwrap();
        ic.server_config("example.com").unwrap();
        ic.server_config("example.com").unwrap();
        ic.server_config("192.0.2.1").unwrap();
        assert_eq!(ic.cached(), 2);
        let (_, other_key) = new_ca("Other").unwrap();
        let e = Interceptor::new(cert.as_bytes(), other_key.as_bytes(), Vec::new()).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        assert!(matches!(
            Interceptor::new(b"junk", key.as_bytes(), Vec::new()),
            Err(CaError::Cert(_))
        ));
        assert!(matches!(
            Interceptor::new(cert.as_bytes(), b"junk", Vec::new()),
            Err(CaError::Key(_))
        ));
    }
}
