//! The `Inspector` seam: what looks inside a flow. The gateway calls every
//! configured inspector on a tunnel's first client bytes (parsed as a TLS
//! ClientHello when they are one) and on each absolute-form HTTP request
//! and response head and body chunk. An inspector passes, denies with a
//! rule and reason (the flow ends and its record says so), or, on a
//! tunnel's first bytes, asks for interception (`crate::intercept`'s
//! `Interceptor` is the inspector that does). DLP, malware scanning, ICAP
//! and TLS interception are inspectors; the first one is [`SniMatch`], the
//! domain-fronting check (docs/design.md "Decisions", domain fronting, `tls_sni_must_match`).
//!
//! Inspectors run on the data path: they must not block (hand slow work to
//! a task) and must bound what they buffer.
//!
//! HTTP inspection has three points (`http/forward.rs` calls them, for
//! absolute-form requests and for whatever else is forwarded through it):
//! the heads ([`Inspector::request_head`], [`Inspector::response_head`]),
//! a body as a stream ([`Inspector::body_scanner`]: each chunk scanned
//! before any of it is forwarded, the scanner holding back what a match
//! spanning the next chunk needs), and a body as one object
//! ([`Inspector::wants_object`], [`Inspector::object`]: held whole up to a
//! size, then judged asynchronously — malware scanners, ICAP). What
//! inspectors note beside their verdict — findings, alerts, a denial a
//! `report` zone does not enforce — goes into the flow's [`Notes`].

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
};

use hyper::{
    HeaderMap, Method, StatusCode, Uri,
    http::{request, response},
};
use sluice_observe::{Alert, Finding};
use sluice_policy::{Destination, Policy, Request as PolicyRequest, ids};

use crate::tls::Hello;

/// What an inspector made of what it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspection {
    /// Nothing to object to.
    Pass,
    /// End the flow: an enforced denial by `rule` for `reason`.
    Deny {
        /// The rule id (`guard/sni-mismatch`, `inspect/dlp/<detector>`, …).
        rule: Arc<str>,
        /// One line a person can act on.
        reason: String,
    },
    /// End the flow because a scanner the zone relies on could not give a
    /// verdict and the zone fails closed (HTTP 503).
    Unavailable {
        /// The rule id (`inspect/malware`, `inspect/icap`).
        rule: Arc<str>,
        /// One line a person can act on.
        reason: String,
    },
    /// Terminate the client's TLS presenting a certificate for `name`
    /// and inspect what the tunnel carries (first bytes only; elsewhere
    /// it counts as [`Inspection::Pass`]). A denial by any inspector wins.
    Intercept {
        /// The server name to present (the SNI, else the tunnel's host).
        name: String,
    },
}

impl Inspection {
    /// Whether the flow may go on (an interception request is not a
    /// refusal).
    pub fn passes(&self) -> bool {
        matches!(self, Inspection::Pass | Inspection::Intercept { .. })
    }
}

/// Which way a body chunk is going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → destination.
    Out,
    /// Destination → client.
    In,
}

/// What an inspector knows of the flow it inspects (owned, so that a
/// tunnel's check can outlive the stage that built it).
#[derive(Debug, Clone)]
pub struct Subject {
    /// The policy version the flow is judged by.
    pub policy: Arc<Policy>,
    /// The client address.
    pub src: IpAddr,
    /// The authenticated user.
    pub user: Option<String>,
    /// Where the client asked to go.
    pub dest: Destination,
    /// The destination port.
    pub port: u16,
    /// The address dialed.
    pub peer: SocketAddr,
    /// The zone that judged the flow.
    pub zone: Option<Arc<str>>,
    /// Whether the zone is in `report` mode: inspectors note would-be
    /// denials instead of denying.
    pub report: bool,
    /// The flow's record id (for alerts).
    pub flow: Arc<str>,
    /// What inspectors noted about the flow.
    pub notes: Arc<Notes>,
    /// The decision that let the flow through (its zone says what to
    /// inspect).
    pub decision: Option<sluice_policy::Decision>,
}

/// What inspectors noted about a flow while it ran, beside their verdicts:
/// findings for its record, alerts to raise, and the first denial that a
/// `report` zone did not enforce. The gateway takes them when it records
/// the flow.
#[derive(Debug, Default)]
pub struct Notes(Mutex<Noted>);

/// The contents of [`Notes`].
#[derive(Debug, Default)]
pub struct Noted {
    /// Findings, one per type (counts added up).
    pub findings: Vec<Finding>,
    /// Alerts to raise.
    pub alerts: Vec<Alert>,
    /// A denial recorded with `enforced: false`.
    pub unenforced: Option<(Arc<str>, String)>,
}

impl Notes {
    /// Adds `count` matches of `kind` (the first hash stays).
    pub fn finding(&self, kind: &str, count: u64, hash: &str) {
        let Ok(mut n) = self.0.lock() else {
            return;
        };
        match n.findings.iter_mut().find(|f| f.kind == kind) {
            Some(f) => f.count += count,
            None => n.findings.push(Finding {
                kind: kind.to_owned(),
                count,
                hash: hash.to_owned(),
            }),
        }
    }

    /// An alert to raise when the flow is recorded.
    pub fn alert(&self, a: Alert) {
        if let Ok(mut n) = self.0.lock() {
            n.alerts.push(a);
        }
    }

    /// A denial that a `report` zone records but does not enforce.
    pub fn unenforced(&self, rule: Arc<str>, reason: String) {
        if let Ok(mut n) = self.0.lock() {
            n.unenforced.get_or_insert((rule, reason));
        }
    }

    /// Everything noted, emptied.
    pub fn take(&self) -> Noted {
        self.0
            .lock()
            .map(|mut n| std::mem::take(&mut *n))
            .unwrap_or_default()
    }
}

/// A boxed future an inspector returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A stateful scanner of one HTTP body, chunk by chunk.
pub trait BodyScanner: Send + Sync {
    /// Scans `chunk` after everything before it; returns the verdict and
    /// the bytes that may be forwarded now (scanned, and beyond what a
    /// match continuing into the next chunk could need).
    fn push(&mut self, chunk: &[u8]) -> (Inspection, Vec<u8>);
    /// The body ended: the bytes still held back (already scanned).
    fn finish(&mut self) -> (Inspection, Vec<u8>);
}

/// A whole HTTP body and the heads around it, for [`Inspector::object`].
#[derive(Debug)]
pub struct Object<'a> {
    /// Which body: the request's (`Out`) or the response's (`In`).
    pub dir: Direction,
    /// The request's method.
    pub method: &'a Method,
    /// The request's URI (absolute form).
    pub uri: &'a Uri,
    /// The request's headers, as forwarded.
    pub request_headers: &'a HeaderMap,
    /// The response's status and headers, for `In`.
    pub response: Option<(StatusCode, &'a HeaderMap)>,
    /// The body, or its first bytes when `complete` is false.
    pub body: &'a [u8],
    /// Whether `body` is all of it (false: it was larger than the most
    /// this inspector asked for).
    pub complete: bool,
}

/// Looks inside flows. Every method has a passing default, so an
/// inspector implements only the points it cares about.
pub trait Inspector: Send + Sync {
    /// Builds what this inspector needs for `policy` before it takes
    /// effect: the gateway calls it when the inspector is added (for the
    /// policy then in force) and on every reload before the swap, so that
    /// work per policy version is not done on a request's path.
    fn prepare(&self, _policy: &Policy) {}

    /// Whether this inspector looks at absolute-form HTTP exchanges at all
    /// (heads or bodies): when none does, the HTTP path builds no
    /// [`Subject`] per request.
    fn inspects_http(&self) -> bool {
        false
    }

    /// Whether this inspector wants a tunnel's first client bytes: when no
    /// inspector does, a tunnel never waits for a ClientHello.
    fn wants_first_bytes(&self, _subject: &Subject) -> bool {
        false
    }

    /// A tunnel's first client bytes, as a parsed ClientHello (or why they
    /// are not one).
    fn first_bytes(&self, _subject: &Subject, _hello: &Hello) -> Inspection {
        Inspection::Pass
    }

    /// An absolute-form HTTP request head, before it is forwarded.
    fn request_head(&self, _subject: &Subject, _head: &request::Parts) -> Inspection {
        Inspection::Pass
    }

    /// An HTTP response head, before it is passed to the client.
    fn response_head(&self, _subject: &Subject, _head: &response::Parts) -> Inspection {
        Inspection::Pass
    }

    /// Whether this inspector wants HTTP body chunks of this flow.
    fn wants_bodies(&self, _subject: &Subject) -> bool {
        false
    }

    /// One HTTP body chunk going `dir`.
    fn body_chunk(&self, _subject: &Subject, _dir: Direction, _chunk: &[u8]) -> Inspection {
        Inspection::Pass
    }

    /// A scanner for the body going `dir` that holds back what it has not
    /// finished judging; `None`: this inspector does not stream bodies.
    fn body_scanner(
        &self,
        _subject: &Arc<Subject>,
        _dir: Direction,
    ) -> Option<Box<dyn BodyScanner>> {
        None
    }

    /// The most bytes of the body going `dir` this inspector wants to see
    /// whole before any of it is forwarded; `None`: it does not. The body
    /// is held up to that size (bounded memory per exchange).
    fn wants_object(&self, _subject: &Subject, _dir: Direction) -> Option<u64> {
        None
    }

    /// A whole body (see [`Inspector::wants_object`]).
    fn object<'a>(
        &'a self,
        _subject: &'a Subject,
        _obj: &'a Object<'a>,
    ) -> BoxFuture<'a, Inspection> {
        Box::pin(async { Inspection::Pass })
    }
}

/// Runs `look` over `inspectors` until one denies; without a denial, the
/// first request for interception, else a pass.
pub(crate) fn first_denial<'a>(
    inspectors: impl IntoIterator<Item = &'a Arc<dyn Inspector>>,
    mut look: impl FnMut(&dyn Inspector) -> Inspection,
) -> Inspection {
    let mut verdict = Inspection::Pass;
    for i in inspectors {
        match look(&**i) {
            intercept @ Inspection::Intercept { .. } => {
                if verdict == Inspection::Pass {
                    verdict = intercept;
                }
            }
            Inspection::Pass => {}
            refusal => return refusal,
        }
    }
    verdict
}

// === impl SniMatch ===

/// Domain fronting: a ClientHello whose SNI names another host than the
/// tunnel's destination is denied (with `tls_sni_must_match`, the
/// default); a tunnel to an IP literal is judged by the name its SNI
/// claims as well, whatever `tls_sni_must_match` says.
#[derive(Debug, Clone, Copy, Default)]
pub struct SniMatch;

impl Inspector for SniMatch {
    fn wants_first_bytes(&self, _subject: &Subject) -> bool {
        true
    }

    fn first_bytes(&self, s: &Subject, hello: &Hello) -> Inspection {
        let must_match = s.policy.config().tls_sni_must_match;
        let deny = |reason: String| Inspection::Deny {
            rule: Arc::from(ids::GUARD_SNI_MISMATCH),
            reason,
        };
        let sni = match hello {
            Hello::NotTls | Hello::ClientHello { sni: None } | Hello::Incomplete(_) => {
                return Inspection::Pass;
            }
            Hello::Malformed(why) if must_match => {
                return deny(format!("malformed TLS ClientHello: {why}"));
            }
            Hello::Malformed(_) => return Inspection::Pass,
            Hello::ClientHello { sni: Some(s) } => s,
        };
        let sni_dest = match Destination::parse(sni) {
            Ok(d) => d,
            Err(e) if must_match => return deny(format!("unusable TLS SNI: {e}")),
            Err(_) => return Inspection::Pass,
        };
        match (&s.dest, &sni_dest) {
            (Destination::Name(_), _) if must_match && sni_dest != s.dest => deny(format!(
                "TLS SNI {sni_dest} differs from CONNECT host {} (domain fronting)",
                s.dest
            )),
            (Destination::Ip(_), Destination::Name(_)) => {
                // An IP-literal tunnel is judged by the name it claims too.
                let d = s.policy.decide(&PolicyRequest {
                    src: s.src,
                    user: s.user.as_deref(),
                    dest: &sni_dest,
                    port: s.port,
                });
                let c = s.policy.check_addresses(&d, &[s.peer.ip()]);
                if c.decision.passes() {
                    Inspection::Pass
                } else {
                    Inspection::Deny {
                        rule: c.decision.rule.clone(),
                        reason: format!("TLS SNI {sni_dest}: {}", c.decision.reason),
                    }
                }
            }
            _ => Inspection::Pass,
        }
    }
}
