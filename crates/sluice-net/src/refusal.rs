//! [`Refusal`]: every way a flow can end before (or instead of) its relay,
//! as one type. Each listener maps a refusal to its own answer — HTTP 400,
//! 403, 407, 502, 503 or 504, a SOCKS5 reply code, a close — and the
//! gateway maps it to the flow record in one place ([`Refusal::apply`]):
//! rule, reason, error and the side that failed (`error_kind`).

use std::{net::SocketAddr, time::Duration};

use sluice_observe::ErrorKind;
use sluice_policy::{Decision, ids};

use crate::flow::Flow;

/// Why a flow was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request is malformed (rule `default/bad-request`).
    BadRequest(String),
    /// The destination is not a valid name or address
    /// (`default/invalid-destination`).
    InvalidDestination(String),
    /// No zone matches without credentials, and some zone names users.
    AuthRequired(String),
    /// Credentials were given and did not verify (`default/auth-failed`),
    /// or were refused unchecked because their source failed too often.
    AuthFailed {
        /// The user name that was tried (None: the credentials could not
        /// be read). Never the password.
        user: Option<String>,
        /// Set when the source is throttled: how long until it may try
        /// again (HTTP 429 with `Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The policy (or the guard) denied it.
    Denied(Box<Decision>),
    /// An inspector denied it (`guard/sni-mismatch`, `inspect/...`).
    Inspected {
        /// The rule id.
        rule: std::sync::Arc<str>,
        /// Why.
        reason: String,
    },
    /// A scanner the zone relies on had no verdict (down, timed out, the
    /// object too large) and the zone fails closed: HTTP 503.
    Unscanned {
        /// The rule id (`inspect/malware`, `inspect/icap`).
        rule: std::sync::Arc<str>,
        /// Why.
        reason: String,
    },
    /// The destination's name did not resolve.
    Resolve {
        /// The name.
        host: String,
        /// The resolver's message.
        msg: String,
    },
    /// Every allowed address refused or was unreachable.
    Connect {
        /// The last address tried.
        addr: SocketAddr,
        /// The error.
        msg: String,
        /// Its kind: SOCKS5 maps it to a reply code.
        kind: std::io::ErrorKind,
    },
    /// No address answered within the connect timeout.
    Timeout(Duration),
    /// The origin sent no response head within `limits.response_timeout`
    /// of the request being sent to it.
    NoResponse(Duration),
    /// The destination closed or failed after the connection was made.
    UpstreamClosed(String),
    /// An intercepted destination's certificate did not verify against
    /// the system roots and `inspect.extra_roots`
    /// (`inspect/upstream-certificate`; HTTP 502).
    UpstreamCertificate(String),
    /// Sluice is draining and takes no new work.
    Draining,
    /// Sluice failed on its own account.
    Internal(String),
    /// Sluice is out of file descriptors (EMFILE, ENFILE): no socket to
    /// the destination could be made. HTTP 503, SOCKS5 general failure.
    NoDescriptors(String),
}

/// Who a refusal is about (pingora's downstream / upstream / internal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something unusable.
    Client,
    /// The destination (or its name) failed.
    Upstream,
    /// Sluice itself.
    Internal,
}

// === impl Refusal ===

impl Refusal {
    /// The side that failed; `None` for a policy decision (nobody failed).
    pub fn side(&self) -> Option<Side> {
        match self {
            Refusal::BadRequest(_)
            | Refusal::InvalidDestination(_)
            | Refusal::AuthFailed { .. } => Some(Side::Client),
            Refusal::AuthRequired(_)
            | Refusal::Denied(_)
            | Refusal::Inspected { .. }
            | Refusal::Unscanned { .. } => None,
            Refusal::Resolve { .. }
            | Refusal::Connect { .. }
            | Refusal::Timeout(_)
            | Refusal::NoResponse(_)
            | Refusal::UpstreamClosed(_)
            | Refusal::UpstreamCertificate(_) => Some(Side::Upstream),
            Refusal::Draining | Refusal::Internal(_) | Refusal::NoDescriptors(_) => {
                Some(Side::Internal)
            }
        }
    }

    /// The record's `error_kind`.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        Some(match self {
            Refusal::BadRequest(_)
            | Refusal::InvalidDestination(_)
            | Refusal::AuthFailed { .. } => ErrorKind::Client,
            Refusal::AuthRequired(_)
            | Refusal::Denied(_)
            | Refusal::Inspected { .. }
            | Refusal::Unscanned { .. } => {
                return None;
            }
            Refusal::Resolve { .. } => ErrorKind::Resolve,
            Refusal::Connect { .. } => ErrorKind::Connect,
            Refusal::Timeout(_) | Refusal::NoResponse(_) => ErrorKind::Timeout,
            Refusal::UpstreamClosed(_) | Refusal::UpstreamCertificate(_) => {
                ErrorKind::UpstreamClosed
            }
            Refusal::Draining | Refusal::Internal(_) | Refusal::NoDescriptors(_) => {
                ErrorKind::Internal
            }
        })
    }

    /// One line for a person: the record's `error` (or reason).
    pub fn message(&self) -> String {
        match self {
            Refusal::BadRequest(why) | Refusal::AuthRequired(why) => why.clone(),
            Refusal::InvalidDestination(why) => format!("invalid destination: {why}"),
            Refusal::AuthFailed {
                retry_after: None, ..
            } => "proxy authentication failed".to_owned(),
            Refusal::AuthFailed {
                retry_after: Some(wait),
                ..
            } => format!(
                "too many failed proxy logins from this address; refused unchecked for {} s more",
                wait.as_secs().max(1)
            ),
            Refusal::Denied(d) => d.reason.clone(),
            Refusal::Inspected { reason, .. } | Refusal::Unscanned { reason, .. } => reason.clone(),
            Refusal::Resolve { host, msg } => format!("resolve {host}: {msg}"),
            Refusal::Connect { addr, msg, .. } => format!("connect {addr}: {msg}"),
            Refusal::Timeout(after) => {
                format!("connect timed out after {}ms", after.as_millis())
            }
            Refusal::NoResponse(after) => format!(
                "origin sent no response within {}ms of the request (limits.response_timeout)",
                after.as_millis()
            ),
            Refusal::UpstreamClosed(why) => format!("origin: {why}"),
            Refusal::UpstreamCertificate(why) => format!("origin certificate: {why}"),
            Refusal::Draining => "draining".to_owned(),
            Refusal::Internal(why) => format!("internal: {why}"),
            Refusal::NoDescriptors(why) => format!(
                "out of file descriptors (the open-file limit, RLIMIT_NOFILE, is reached): {why}"
            ),
        }
    }

    /// Writes the refusal into the flow: the one mapping to a record.
    /// Decisions that led here (the allowing decision of a failed connect,
    /// an auth-required decision) were applied by the stage that made them.
    pub fn apply(&self, flow: &mut Flow) {
        match self {
            Refusal::BadRequest(why) => {
                flow.set_rule(ids::BAD_REQUEST, why.clone());
                flow.error = Some(why.clone());
            }
            Refusal::InvalidDestination(why) => {
                let d = flow.policy().invalid_destination(
                    flow.src().ip(),
                    flow.user.as_deref(),
                    format!("invalid destination: {why}"),
                );
                flow.apply(&d);
            }
            Refusal::AuthFailed { user, .. } => {
                let reason = match user {
                    Some(u) => format!("{} (user {})", self.message(), quote_user(u)),
                    None => format!(
                        "{} (credentials not in the form user:password)",
                        self.message()
                    ),
                };
                let d = flow
                    .policy()
                    .invalid_destination(flow.src().ip(), None, reason.clone());
                flow.apply(&d);
                flow.set_rule(ids::AUTH_FAILED, reason);
                flow.clear_zone();
                flow.user = None;
            }
            Refusal::Denied(d) => flow.apply(d),
            Refusal::Inspected { rule, reason } | Refusal::Unscanned { rule, reason } => {
                flow.set_rule(rule, reason.clone());
            }
            Refusal::UpstreamCertificate(_) => {
                flow.set_rule(ids::INSPECT_UPSTREAM_CERTIFICATE, self.message());
                flow.error = Some(self.message());
            }
            Refusal::AuthRequired(_) => {}
            Refusal::Connect { addr, .. } => {
                flow.peer = Some(addr.ip());
                flow.error = Some(self.message());
            }
            Refusal::Resolve { .. }
            | Refusal::Timeout(_)
            | Refusal::NoResponse(_)
            | Refusal::UpstreamClosed(_)
            | Refusal::Draining
            | Refusal::Internal(_)
            | Refusal::NoDescriptors(_) => flow.error = Some(self.message()),
        }
        if let Some(kind) = self.error_kind() {
            flow.error_kind = Some(kind);
        }
    }
}

/// An attempted user name for a record: quoted, control characters
/// escaped, at most 64 characters (it came from the network).
fn quote_user(u: &str) -> String {
    let mut out: String = u.chars().take(64).flat_map(char::escape_debug).collect();
    if u.chars().count() > 64 {
        out.push('…');
    }
    format!("\"{out}\"")
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}
