//! [`Flow`]: one flow's state while the stages run, typed (addresses,
//! [`Verdict`], [`Mode`], clock values) rather than record strings, and
//! turned into a [`FlowRecord`] in exactly one place ([`Flow::into_record`]).
//! A flow holds the policy version it started with, so every stage of one
//! flow judges by the same version even across a reload.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::SystemTime,
};

use sluice_observe::{ErrorKind, Finding, FlowRecord, Listener, Protocol, addr_string};
use sluice_policy::{Decision, Destination, Mode, Policy, Verdict};

use crate::{Version, inspect::Notes};

/// One flow's state.
#[derive(Debug, Clone)]
pub struct Flow {
    version: Arc<Version>,
    listener: Listener,
    /// What it spoke (a transparent flow learns this from its first bytes).
    pub protocol: Protocol,
    src: SocketAddr,
    start: SystemTime,
    id: String,
    /// The authenticated user.
    pub user: Option<String>,
    /// Where to, once parsed.
    pub dest: Option<Destination>,
    /// The destination as the client wrote it, when it did not parse.
    pub raw_dest: Option<String>,
    /// The destination port.
    pub port: Option<u16>,
    /// The address dialed (or tried).
    pub peer: Option<IpAddr>,
    /// The TLS server name, when a ClientHello was seen.
    pub sni: Option<String>,
    /// The pre-redirect destination of a transparent flow.
    pub original_dst: Option<SocketAddr>,
    /// The DNS-derived grant that named the destination.
    pub grant: Option<String>,
    /// The HTTP method.
    pub method: Option<String>,
    /// The HTTP status answered.
    pub status: Option<u16>,
    verdict: Verdict,
    enforced: bool,
    zone: Option<Arc<str>>,
    mode: Option<Mode>,
    rule: Arc<str>,
    reason: String,
    policy_hash: Option<Arc<str>>,
    /// The last decision applied (the one that counted so far).
    decision: Option<Decision>,
    /// A note appended to the reason (why a transparent flow fell back).
    pub note: Option<String>,
    /// Client → destination bytes.
    pub bytes_out: u64,
    /// Destination → client bytes.
    pub bytes_in: u64,
    /// The route's name, once dialed.
    pub route: Option<Arc<str>>,
    /// What went wrong, one line.
    pub error: Option<String>,
    /// Which side failed.
    pub error_kind: Option<ErrorKind>,
    /// `Some(true)` on a long tunnel's interim records, `Some(false)` on a
    /// tunnel's closing record, `None` where it does not apply.
    pub interim: Option<bool>,
    /// Inspection findings (type, count, keyed hash; never the match).
    pub findings: Vec<Finding>,
    /// What inspectors noted (findings, alerts, unenforced denials).
    notes: Arc<Notes>,
    /// Whether the client's first bytes were a TLS ClientHello (`None`:
    /// no client byte was looked at).
    pub tls: Option<bool>,
    /// Whether Sluice terminated the client's TLS (interception).
    pub intercepted: Option<bool>,
    /// Set on a request flow inside an intercepted tunnel: its end folds
    /// into the tunnel's one record instead of writing its own.
    pub(crate) tally: Option<std::sync::Arc<crate::intercept::Tally>>,
}

/// The rule of a flow not decided yet, shared (an `Arc::from("")` per
/// flow was an allocation per request).
fn no_rule() -> Arc<str> {
    static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
    EMPTY.clone()
}

// === impl Flow ===

impl Flow {
    /// A flow from `src` starting now, judged by `version`.
    pub fn new(
        version: Arc<Version>,
        listener: Listener,
        protocol: Protocol,
        src: SocketAddr,
    ) -> Flow {
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; they
        // are the IPv4 clients they are (as zone selection judges them).
        let src = SocketAddr::new(src.ip().to_canonical(), src.port());
        Flow {
            version,
            listener,
            protocol,
            src,
            start: SystemTime::now(),
            id: sluice_observe::next_id(),
            user: None,
            dest: None,
            raw_dest: None,
            port: None,
            peer: None,
            sni: None,
            original_dst: None,
            grant: None,
            method: None,
            status: None,
            verdict: Verdict::Deny,
            enforced: true,
            zone: None,
            mode: None,
            rule: no_rule(),
            reason: String::new(),
            policy_hash: None,
            decision: None,
            note: None,
            bytes_out: 0,
            bytes_in: 0,
            route: None,
            error: None,
            error_kind: None,
            interim: None,
            findings: Vec::new(),
            notes: Arc::default(),
            tls: None,
            intercepted: None,
            tally: None,
        }
    }

    /// What inspectors note about this flow.
    pub fn notes(&self) -> &Arc<Notes> {
        &self.notes
    }

    /// Moves what inspectors noted into the flow: findings for the record,
    /// a denial a `report` zone did not enforce; returns the alerts to raise.
    pub fn take_notes(&mut self) -> Vec<sluice_observe::Alert> {
        let n = self.notes.take();
        if !n.findings.is_empty() {
            self.findings.extend(n.findings);
        }
        if let Some((rule, reason)) = n.unenforced {
            if self.verdict == Verdict::Allow {
                self.verdict = Verdict::Deny;
                self.enforced = false;
                self.rule = rule;
                self.reason = reason;
            }
        }
        n.alerts
    }

    /// A request flow inside this tunnel flow (intercepted, or plain HTTP
    /// served for inspection): the same
    /// version, client, destination and decision; its end is folded into
    /// `tally`, not recorded on its own.
    pub(crate) fn child(&self, tally: std::sync::Arc<crate::intercept::Tally>) -> Flow {
        let mut f = Flow::new(self.version.clone(), self.listener, self.protocol, self.src);
        f.id.clone_from(&self.id);
        f.user.clone_from(&self.user);
        f.dest.clone_from(&self.dest);
        f.port = self.port;
        f.peer = self.peer;
        f.sni.clone_from(&self.sni);
        f.route.clone_from(&self.route);
        if let Some(d) = &self.decision {
            f.apply(d);
        }
        f.tls = self.tls;
        f.intercepted = self.intercepted;
        f.tally = Some(tally);
        f
    }

    /// The policy version this flow is judged by.
    pub fn version(&self) -> &Arc<Version> {
        &self.version
    }

    /// The compiled policy of that version.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.version.policy
    }

    /// The listener it came in on.
    pub fn listener(&self) -> Listener {
        self.listener
    }

    /// The client.
    pub fn src(&self) -> SocketAddr {
        self.src
    }

    /// The record id (also `Sluice-Request-Id`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The decision that counts so far.
    pub fn decision(&self) -> Option<&Decision> {
        self.decision.as_ref()
    }

    /// The zone that judged it, if any.
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    /// The zone, shared.
    pub fn zone_arc(&self) -> Option<Arc<str>> {
        self.zone.clone()
    }

    /// The zone's mode, once decided.
    pub fn mode(&self) -> Option<Mode> {
        self.mode
    }

    /// The rule that counts so far.
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// Why, in one line.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Whether the last decision lets the flow pass.
    pub fn passes(&self) -> bool {
        self.verdict == Verdict::Allow || !self.enforced
    }

    /// Takes a decision's zone, mode, verdict, rule, reason and policy
    /// version. Later phases apply theirs again: the last one counts.
    pub fn apply(&mut self, d: &Decision) {
        self.take_fields(d);
        self.decision = Some(d.clone());
    }

    /// [`Flow::apply`] of an owned decision (no copy of it), returning
    /// the decision it replaces.
    pub fn apply_owned(&mut self, d: Decision) -> Option<Decision> {
        self.take_fields(&d);
        self.decision.replace(d)
    }

    /// The decision's fields the record carries.
    fn take_fields(&mut self, d: &Decision) {
        self.verdict = d.verdict;
        self.enforced = d.enforced;
        self.zone.clone_from(&d.zone);
        self.mode = d.mode;
        self.rule = d.rule.clone();
        self.reason.clone_from(&d.reason);
        self.policy_hash = Some(d.policy_hash.clone());
    }

    /// An enforced denial by a built-in rule (bad request, inspection).
    pub fn set_rule(&mut self, rule: &str, reason: String) {
        self.verdict = Verdict::Deny;
        self.enforced = true;
        self.rule = Arc::from(rule);
        self.reason = reason;
    }

    /// A denial recorded but not enforced: a `report` zone's would-be
    /// denial by a built-in rule (`inspect/require-tls`).
    pub fn set_unenforced(&mut self, rule: &str, reason: String) {
        self.verdict = Verdict::Deny;
        self.enforced = false;
        self.rule = Arc::from(rule);
        self.reason = reason;
    }

    /// Whether the flow stands denied and enforced (by a decision or an
    /// inspector).
    pub fn denied(&self) -> bool {
        self.verdict == Verdict::Deny && self.enforced
    }

    /// Whether the flow stands denied but not enforced (a `report` zone).
    pub fn unenforced(&self) -> bool {
        self.verdict == Verdict::Deny && !self.enforced
    }

    /// Forgets the zone (a refusal that no zone judged: failed logins).
    pub fn clear_zone(&mut self) {
        self.zone = None;
        self.mode = None;
    }

    /// The one place a flow becomes a record; `end` is when it ended.
    pub fn into_record(self, end: SystemTime) -> FlowRecord {
        let mut r =
            FlowRecord::with_id(self.listener, self.protocol, self.src, self.start, self.id);
        r.user = self.user;
        r.zone = self.zone.as_deref().map(str::to_owned);
        r.mode = self.mode;
        match self.dest {
            Some(Destination::Name(n)) => r.dst_host = Some(n),
            Some(Destination::Ip(ip)) => r.dst_ip = Some(ip),
            None => r.dst_host = self.raw_dest,
        }
        if let Some(ip) = self.peer {
            r.dst_ip = Some(ip);
        }
        r.dst_port = self.port;
        r.sni = self.sni;
        r.original_dst = self.original_dst.map(addr_string);
        r.grant = self.grant;
        r.method = self.method;
        r.status = self.status;
        r.verdict = self.verdict;
        r.enforced = self.enforced;
        r.rule = self.rule.to_string();
        r.reason = match self.note {
            Some(n) if self.reason.is_empty() => n,
            Some(n) => format!("{}; {n}", self.reason),
            None => self.reason,
        };
        r.bytes_out = self.bytes_out;
        r.bytes_in = self.bytes_in;
        r.route = self.route.as_deref().map(str::to_owned);
        r.policy_hash = self.policy_hash.as_deref().unwrap_or_default().to_owned();
        r.error = self.error;
        r.error_kind = self.error_kind;
        r.interim = self.interim;
        if !self.findings.is_empty() {
            r.findings = Some(self.findings);
        }
        r.tls = self.tls;
        r.intercepted = self.intercepted;
        r.finish(end);
        r
    }
}
