//! Content inspection behind the [`Inspector`] seam: DLP detectors on
//! request heads and request bodies (streamed, held back by the longest
//! pattern), clamd on uploads and downloads, ICAP `REQMOD` / `RESPMOD`
//! (bodies held whole up to `max_size`), each as a zone's `inspect` asks.
//! The scanners themselves are `sluice-inspect`'s; this module decides
//! what to scan and what a verdict means for the flow: a denial (`403`
//! with `inspect/dlp/<detector>`, `inspect/malware`, `inspect/icap`), a
//! `503` when a scanner has no verdict and the zone fails closed, an
//! alert, a finding in the record — and in a `report` zone a denial
//! recorded with `enforced: false` while the flow goes on.
//!
//! A zone without `inspect` costs one map lookup per request: no body is
//! streamed through a scanner, held or copied.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwapOption;
use sluice_inspect::{
    Clamd, Dlp, HashKey,
    clamd::{Address, Verdict},
    dlp::{self, Stream},
    icap::{IcapVerdict, Service},
};
use sluice_observe::{Alert, AlertKind, Metrics, Severity, ip_string};
use sluice_policy::{
    Policy, ids,
    model::{DlpAction, FailMode, Inspect, MalwareAction, ZoneInspect},
};

use crate::inspect::{BodyScanner, BoxFuture, Direction, Inspection, Inspector, Object, Subject};

/// The content inspector: the scanners the configuration names, and per
/// policy version what each zone asks of them.
pub struct Content {
    clamd: Option<Clamd>,
    clamd_max: u64,
    reqmod: Option<Service>,
    respmod: Option<Service>,
    icap_max: u64,
    key: HashKey,
    metrics: Arc<Metrics>,
    /// The plans of the two policy versions compiled last: after a reload,
    /// flows that began before it keep the old version, and with one slot
    /// their requests and new flows' would rebuild each other's plans.
    plans: [ArcSwapOption<Plans>; 2],
    health: Arc<Health>,
}

/// What the scanners last said, for `/readyz`.
#[derive(Debug, Default)]
pub struct Health {
    clamd: std::sync::Mutex<Option<Result<(), String>>>,
    icap: std::sync::Mutex<Option<Result<(), String>>>,
}

/// One scanner's state as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannerState {
    /// `clamd` or `icap`.
    pub scanner: &'static str,
    /// `up`, `down`, or `unknown` (nothing asked yet).
    pub state: &'static str,
    /// The last error, when down.
    pub error: Option<String>,
}

/// The DLP set and zones' plans of one policy version.
struct Plans {
    hash: Arc<str>,
    /// Compiled only when a zone enables a DLP detector: the set is large
    /// (tens of MiB resident, milliseconds to build), and a policy that
    /// inspects nothing, or only with clamd or ICAP, must not pay for it
    /// on its first request.
    dlp: Option<Arc<Dlp>>,
    zones: HashMap<String, Arc<ZonePlan>>,
}

/// What one zone inspects.
struct ZonePlan {
    cfg: ZoneInspect,
    /// Per detector of the DLP set: enabled, and its action.
    enabled: Arc<[bool]>,
    actions: Vec<Option<DlpAction>>,
    dlp: bool,
}

// === impl Health ===

impl Health {
    fn set(slot: &std::sync::Mutex<Option<Result<(), String>>>, r: Result<(), String>) {
        if let Ok(mut s) = slot.lock() {
            *s = Some(r);
        }
    }

    /// Each configured scanner's state.
    pub fn states(&self, clamd: bool, icap: bool) -> Vec<ScannerState> {
        let mut out = Vec::new();
        for (name, on, slot) in [("clamd", clamd, &self.clamd), ("icap", icap, &self.icap)] {
            if !on {
                continue;
            }
            let last = slot.lock().ok().and_then(|s| s.clone());
            let (state, error) = match last {
                None => ("unknown", None),
                Some(Ok(())) => ("up", None),
                Some(Err(e)) => ("down", Some(e)),
            };
            out.push(ScannerState {
                scanner: name,
                state,
                error,
            });
        }
        out
    }
}

// === impl Content ===

impl Content {
    /// The scanners `cfg` names, hashing findings with `key`.
    pub fn new(cfg: &Inspect, key: HashKey, metrics: Arc<Metrics>) -> Result<Content, String> {
        let clamd = match &cfg.clamd.address {
            Some(a) => Some(Clamd::new(Address::parse(a)?, cfg.clamd.timeout)),
            None => None,
        };
        let svc = |u: &Option<String>| -> Result<Option<Service>, String> {
            u.as_deref()
                .map(|u| {
                    Service::new(
                        u,
                        cfg.icap.timeout,
                        usize::try_from(cfg.icap.preview).unwrap_or(usize::MAX),
                    )
                })
                .transpose()
        };
        Ok(Content {
            clamd,
            clamd_max: cfg.clamd.max_size,
            reqmod: svc(&cfg.icap.reqmod)?,
            respmod: svc(&cfg.icap.respmod)?,
            icap_max: cfg.icap.max_size,
            key,
            metrics,
            plans: [ArcSwapOption::empty(), ArcSwapOption::empty()],
            health: Arc::new(Health::default()),
        })
    }

    /// What the scanners last said.
    pub fn health(&self) -> Vec<ScannerState> {
        self.health.states(
            self.clamd.is_some(),
            self.reqmod.is_some() || self.respmod.is_some(),
        )
    }

    /// Asks every configured scanner whether it answers (clamd `PING`,
    /// ICAP `OPTIONS`), for `/readyz` and `sluice_inspect_scanner_up`.
    pub async fn probe(&self) {
        if let Some(c) = &self.clamd {
            let r = c.ping().await.map_err(|e| e.to_string());
            self.clamd_said(r);
        }
        for s in [&self.reqmod, &self.respmod].into_iter().flatten() {
            let r = s.options().await.map_err(|e| e.to_string());
            let failed = r.is_err();
            self.icap_said(r);
            if failed {
                break;
            }
        }
    }

    fn clamd_said(&self, r: Result<(), String>) {
        self.metrics.inspect_scanner_up("clamd", r.is_ok());
        Health::set(&self.health.clamd, r);
    }

    fn icap_said(&self, r: Result<(), String>) {
        self.metrics.inspect_scanner_up("icap", r.is_ok());
        Health::set(&self.health.icap, r);
    }

    /// The plans of `policy`: compiled by [`Inspector::prepare`] before the
    /// version takes effect, or here on first use of a version that is in
    /// neither slot.
    fn plans(&self, policy: &Policy) -> Option<Arc<Plans>> {
        for slot in &self.plans {
            if let Some(p) = slot.load_full().filter(|p| p.hash == *policy.hash()) {
                return Some(p);
            }
        }
        let cfg = policy.config();
        let custom: Vec<(String, String)> = cfg
            .inspect
            .dlp
            .patterns
            .iter()
            .map(|p| (p.name.clone(), p.regex.clone()))
            .collect();
        let wants_dlp = cfg.zones.iter().any(|z| !z.inspect.dlp.0.is_empty());
        let dlp = match wants_dlp.then(|| Dlp::new(&custom, self.key.clone())) {
            None => None,
            Some(Ok(d)) => Some(Arc::new(d)),
            Some(Err(e)) => {
                // The loader checked every pattern: this is a bug.
                tracing::error!(error = %e, "DLP patterns failed to compile");
                return None;
            }
        };
        let zones = cfg
            .zones
            .iter()
            .filter(|z| z.inspect.any())
            .map(|z| {
                let mut actions = vec![None; dlp.as_ref().map_or(0, |d| d.len())];
                for (name, action, _) in &z.inspect.dlp.0 {
                    let index = dlp.as_ref().and_then(|d| d.index(name));
                    if let Some(slot) = index.and_then(|i| actions.get_mut(i)) {
                        *slot = Some(*action);
                    }
                }
                let enabled: Arc<[bool]> = actions.iter().map(Option::is_some).collect();
                let plan = ZonePlan {
                    cfg: z.inspect.clone(),
                    dlp: enabled.iter().any(|e| *e),
                    enabled,
                    actions,
                };
                (z.name.clone(), Arc::new(plan))
            })
            .collect();
        let p = Arc::new(Plans {
            hash: policy.hash().clone(),
            dlp,
            zones,
        });
        // The newest moves to the second slot; what was there is dropped.
        let newest = self.plans[0].swap(Some(p.clone()));
        self.plans[1].store(newest);
        Some(p)
    }

    /// The zone's plan, if it inspects anything.
    fn zone(&self, s: &Subject) -> Option<(Arc<Plans>, Arc<ZonePlan>)> {
        let zone = s.zone.as_deref()?;
        let plans = self.plans(&s.policy)?;
        let z = plans.zones.get(zone)?.clone();
        Some((plans, z))
    }

    /// A scanner had no verdict: `unscanned` in the record, then the
    /// zone's `fail` decides.
    fn unscanned(&self, s: &Subject, z: &ZonePlan, rule: &str, why: String) -> Inspection {
        s.notes.finding("unscanned", 1, "");
        match z.cfg.fail {
            FailMode::Open => Inspection::Pass,
            FailMode::Closed if s.report => {
                s.notes
                    .unenforced(Arc::from(rule), format!("{why} (fail closed)"));
                Inspection::Pass
            }
            FailMode::Closed => Inspection::Unavailable {
                rule: Arc::from(rule),
                reason: format!("{why} (fail closed)"),
            },
        }
    }

    async fn scan_malware(&self, s: &Subject, z: &ZonePlan, obj: &Object<'_>) -> Inspection {
        let (Some(action), Some(clamd)) = (z.cfg.malware, &self.clamd) else {
            return Inspection::Pass;
        };
        let what = direction_name(obj.dir);
        if !obj.complete || obj.body.len() as u64 > self.clamd_max {
            self.metrics.inspect_scan("clamd", "unscanned");
            return self.unscanned(
                s,
                z,
                ids::INSPECT_MALWARE,
                format!(
                    "the {what} is larger than inspect.clamd.max_size ({} bytes): not scanned",
                    self.clamd_max
                ),
            );
        }
        match clamd.scan(obj.body).await {
            Ok(Verdict::Clean) => {
                self.metrics.inspect_scan("clamd", "clean");
                self.clamd_said(Ok(()));
                Inspection::Pass
            }
            Ok(Verdict::Found(sig)) => {
                self.metrics.inspect_scan("clamd", "found");
                self.clamd_said(Ok(()));
                s.notes.finding("malware", 1, &self.key.hash(obj.body));
                let block = action == MalwareAction::Block;
                s.notes.alert(alert(
                    s,
                    AlertKind::Malware,
                    Severity::Critical,
                    format!(
                        "clamd found {sig} in the {what} {} {}; {}",
                        if obj.dir == Direction::Out {
                            "to"
                        } else {
                            "from"
                        },
                        s.dest,
                        if !block {
                            "passed"
                        } else if s.report {
                            "would be blocked (report zone)"
                        } else {
                            "blocked"
                        }
                    ),
                    serde_json::json!({ "signature": sig, "scanner": "clamd" }),
                ));
                self.malware_verdict(s, block, format!("clamd found {sig} in the {what}"))
            }
            Err(e) => {
                self.metrics.inspect_scan("clamd", "error");
                let msg = e.to_string();
                self.clamd_said(Err(msg.clone()));
                tracing::warn!(error = %msg, "clamd scan failed");
                self.unscanned(
                    s,
                    z,
                    ids::INSPECT_MALWARE,
                    format!("no malware verdict: {msg}"),
                )
            }
        }
    }

    fn malware_verdict(&self, s: &Subject, block: bool, reason: String) -> Inspection {
        if block {
            refuse(s, ids::INSPECT_MALWARE, reason)
        } else {
            Inspection::Pass
        }
    }

    async fn icap(&self, s: &Subject, z: &ZonePlan, obj: &Object<'_>) -> Inspection {
        if !z.cfg.icap {
            return Inspection::Pass;
        }
        let svc = match obj.dir {
            Direction::Out => &self.reqmod,
            Direction::In => &self.respmod,
        };
        let Some(svc) = svc else {
            return Inspection::Pass;
        };
        if !obj.complete || obj.body.len() as u64 > self.icap_max {
            self.metrics.inspect_scan("icap", "unscanned");
            return self.unscanned(
                s,
                z,
                ids::INSPECT_ICAP,
                format!(
                    "the {} is larger than inspect.icap.max_size ({} bytes): not sent to ICAP",
                    direction_name(obj.dir),
                    self.icap_max
                ),
            );
        }
        let req = request_head(obj);
        let r = match obj.response {
            None => svc.reqmod(&req, obj.body).await,
            Some((status, headers)) => {
                svc.respmod(&req, &response_head(status, headers), obj.body)
                    .await
            }
        };
        match r {
            Ok(IcapVerdict::Unmodified) => {
                self.metrics.inspect_scan("icap", "clean");
                self.icap_said(Ok(()));
                Inspection::Pass
            }
            Ok(IcapVerdict::Modified { status, found }) => {
                self.icap_said(Ok(()));
                let original = obj.response.map(|(st, _)| st.as_u16());
                if !icap_blocks(original, status, found.as_deref()) {
                    self.metrics.inspect_scan("icap", "clean");
                    return Inspection::Pass;
                }
                self.metrics.inspect_scan("icap", "found");
                self.icap_refused(s, svc, obj, status, found)
            }
            Err(e) => {
                self.metrics.inspect_scan("icap", "error");
                let msg = e.to_string();
                self.icap_said(Err(msg.clone()));
                tracing::warn!(error = %msg, "ICAP exchange failed");
                self.unscanned(s, z, ids::INSPECT_ICAP, format!("no ICAP verdict: {msg}"))
            }
        }
    }

    /// The ICAP service `svc` refused `obj`: its finding, its alert, and
    /// a denial unless the zone only reports.
    fn icap_refused(
        &self,
        s: &Subject,
        svc: &Service,
        obj: &Object<'_>,
        status: Option<u16>,
        found: Option<String>,
    ) -> Inspection {
        let kind = if obj.dir == Direction::Out {
            AlertKind::Dlp
        } else {
            AlertKind::Malware
        };
        s.notes.finding(
            if kind == AlertKind::Dlp {
                "icap"
            } else {
                "malware"
            },
            1,
            &self.key.hash(obj.body),
        );
        let what = direction_name(obj.dir);
        let mut reason = format!("the ICAP service {} refused the {what}", svc.url());
        if let Some(f) = &found {
            let _ = write!(reason, " ({f})");
        } else if let Some(c) = status {
            let _ = write!(reason, " (its answer: {c})");
        }
        s.notes.alert(alert(
            s,
            kind,
            Severity::Critical,
            format!("{reason}; {}", s.dest),
            serde_json::json!({ "scanner": "icap", "service": svc.url(), "status": status, "found": found }),
        ));
        refuse(s, ids::INSPECT_ICAP, reason)
    }
}

/// A block by `rule`: a denial, or in a report zone a pass noted as
/// unenforced.
fn refuse(s: &Subject, rule: &str, reason: String) -> Inspection {
    if s.report {
        s.notes.unenforced(Arc::from(rule), reason);
        Inspection::Pass
    } else {
        Inspection::Deny {
            rule: Arc::from(rule),
            reason,
        }
    }
}

/// Whether an ICAP `200` answer blocks: what the service found, an answer
/// in the origin's place (REQMOD, no `original` status), or a response
/// whose status it changed (RESPMOD). A rewritten request or a response
/// with its status kept is not applied: the original goes on.
fn icap_blocks(original: Option<u16>, status: Option<u16>, found: Option<&str>) -> bool {
    found.is_some()
        || match original {
            None => status.is_some(),
            Some(o) => status.is_some_and(|st| st != o),
        }
}

impl Inspector for Content {
    fn inspects_http(&self) -> bool {
        true
    }

    /// Compiles the version's plans (its DLP set: tens of milliseconds)
    /// before any request needs them.
    fn prepare(&self, policy: &Policy) {
        self.plans(policy);
    }

    fn request_head(&self, s: &Subject, head: &hyper::http::request::Parts) -> Inspection {
        let Some((plans, z)) = self.zone(s) else {
            return Inspection::Pass;
        };
        let (true, Some(dlp)) = (z.dlp, &plans.dlp) else {
            return Inspection::Pass;
        };
        let mut text = Vec::with_capacity(256);
        let _ = write!(Utf8(&mut text), "{} {}\r\n", head.method, head.uri);
        for (k, v) in &head.headers {
            text.extend_from_slice(k.as_str().as_bytes());
            text.extend_from_slice(b": ");
            text.extend_from_slice(v.as_bytes());
            text.extend_from_slice(b"\r\n");
        }
        let found = dlp.scan(&text, &z.enabled);
        for f in &found {
            s.notes.finding(&f.detector, f.count, &f.hash);
        }
        let names: Vec<(Arc<str>, usize)> = found
            .iter()
            .map(|f| (f.detector.clone(), f.index))
            .collect();
        act_on(s, &z, &names, "the request line or headers")
    }

    fn wants_bodies(&self, s: &Subject) -> bool {
        self.zone(s).is_some_and(|(_, z)| z.dlp)
    }

    fn body_scanner(&self, s: &Arc<Subject>, dir: Direction) -> Option<Box<dyn BodyScanner>> {
        if dir != Direction::Out {
            return None;
        }
        let (plans, z) = self.zone(s)?;
        let dlp = plans.dlp.as_ref().filter(|_| z.dlp)?;
        Some(Box::new(DlpScanner {
            stream: dlp.stream(z.enabled.clone()),
            reported: Vec::new(),
            subject: s.clone(),
            zone: z,
        }))
    }

    fn wants_object(&self, s: &Subject, dir: Direction) -> Option<u64> {
        let (_, z) = self.zone(s)?;
        let clamd = (z.cfg.malware.is_some() && self.clamd.is_some()).then_some(self.clamd_max);
        let icap_on = z.cfg.icap
            && match dir {
                Direction::Out => self.reqmod.is_some(),
                Direction::In => self.respmod.is_some(),
            };
        let icap = icap_on.then_some(self.icap_max);
        clamd.into_iter().chain(icap).max()
    }

    fn object<'a>(&'a self, s: &'a Subject, obj: &'a Object<'a>) -> BoxFuture<'a, Inspection> {
        Box::pin(async move {
            let Some((_, z)) = self.zone(s) else {
                return Inspection::Pass;
            };
            let v = self.scan_malware(s, &z, obj).await;
            if !v.passes() {
                return v;
            }
            self.icap(s, &z, obj).await
        })
    }
}

/// DLP over a request body: each chunk scanned before it is released.
struct DlpScanner {
    stream: Stream,
    /// Counts already noted, per finding (in the stream's order).
    reported: Vec<u64>,
    subject: Arc<Subject>,
    zone: Arc<ZonePlan>,
}

impl DlpScanner {
    /// Notes new matches; acts on detectors found for the first time.
    fn note(&mut self, new: &[usize]) -> Inspection {
        let findings: &[dlp::Finding] = self.stream.findings();
        for (k, f) in findings.iter().enumerate() {
            let before = self.reported.get(k).copied().unwrap_or(0);
            if f.count > before {
                self.subject
                    .notes
                    .finding(&f.detector, f.count - before, &f.hash);
            }
        }
        self.reported = findings.iter().map(|f| f.count).collect();
        if new.is_empty() {
            return Inspection::Pass;
        }
        let names: Vec<(Arc<str>, usize)> = findings
            .iter()
            .filter(|f| new.contains(&f.index))
            .map(|f| (f.detector.clone(), f.index))
            .collect();
        act_on(&self.subject, &self.zone, &names, "the request body")
    }
}

/// Acts on DLP detectors that matched in `place` for the first time:
/// alerts, and the first block (noted only, in a `report` zone).
fn act_on(s: &Subject, z: &ZonePlan, names: &[(Arc<str>, usize)], place: &str) -> Inspection {
    let mut verdict = Inspection::Pass;
    for (name, i) in names {
        let Some(action) = z.actions.get(*i).copied().flatten() else {
            continue;
        };
        let block = action == DlpAction::Block;
        if action != DlpAction::Log {
            let what = if block && !s.report {
                "blocked"
            } else if block {
                "would be blocked (report zone)"
            } else {
                "passed"
            };
            s.notes.alert(alert(
                s,
                AlertKind::Dlp,
                if block {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                format!(
                    "DLP detector {name} matched in {place} to {} from {}; {what}",
                    s.dest,
                    ip_string(s.src)
                ),
                serde_json::json!({ "detector": &**name }),
            ));
        }
        if block && verdict.passes() {
            let rule: Arc<str> = Arc::from(format!("{}{name}", ids::INSPECT_DLP_PREFIX));
            let reason = format!("DLP detector {name} matched in {place}");
            if s.report {
                s.notes.unenforced(rule, reason);
            } else {
                verdict = Inspection::Deny { rule, reason };
            }
        }
    }
    verdict
}

impl BodyScanner for DlpScanner {
    fn push(&mut self, chunk: &[u8]) -> (Inspection, Vec<u8>) {
        let step = self.stream.push(chunk);
        match self.note(&step.new) {
            Inspection::Pass => (Inspection::Pass, step.release),
            // Nothing more goes on: the held-back bytes hold the match's
            // start, and the caller aborts the upstream request.
            v => (v, Vec::new()),
        }
    }

    fn finish(&mut self) -> (Inspection, Vec<u8>) {
        // The held-back tail is settled only now: a secret at the very
        // end of the body is found here, before its bytes go on.
        let step = self.stream.finish();
        match self.note(&step.new) {
            Inspection::Pass => (Inspection::Pass, step.release),
            v => (v, Vec::new()),
        }
    }
}

/// An alert about the flow `s`.
fn alert(
    s: &Subject,
    kind: AlertKind,
    severity: Severity,
    summary: String,
    evidence: serde_json::Value,
) -> Alert {
    let mut a = Alert::new(kind, severity, SystemTime::now(), summary);
    a.zone = s.zone.as_deref().map(str::to_owned);
    a.src = Some(ip_string(s.src));
    a.user.clone_from(&s.user);
    a.dst = Some(s.dest.to_string());
    a.evidence = evidence;
    a.flows = vec![s.flow.to_string()];
    // Each flow's finding is its own event: repeats to one destination
    // within a minute only count.
    a.with_window(Duration::from_secs(60))
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Out => "upload",
        Direction::In => "download",
    }
}

/// The request head as HTTP/1.1 bytes for ICAP (absolute URI from `Host`).
fn request_head(obj: &Object<'_>) -> Vec<u8> {
    let host = obj
        .request_headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let path = obj.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = format!("{} http://{host}{path} HTTP/1.1\r\n", obj.method).into_bytes();
    headers_into(&mut out, obj.request_headers);
    out
}

fn response_head(status: hyper::StatusCode, h: &hyper::HeaderMap) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    headers_into(&mut out, h);
    out
}

fn headers_into(out: &mut Vec<u8>, h: &hyper::HeaderMap) {
    for (k, v) in h {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// `fmt::Write` into bytes.
struct Utf8<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Utf8<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sluice_inspect::HashKey;
    use sluice_observe::Metrics;
    use sluice_policy::Policy;

    use super::{Content, icap_blocks};
    use crate::inspect::Inspector;

    fn content_for(zones: &str) -> (Content, Policy) {
        let icap = "inspect:\n  icap:\n    reqmod: icap://127.0.0.1:1344/reqmod\n";
        let policy = Policy::load(&format!("{icap}zones:\n{zones}"), "test.yaml").unwrap();
        let c = Content::new(
            &policy.config().inspect,
            HashKey::random(),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        (c, policy)
    }

    /// The DLP set is compiled for a policy only when a zone enables a
    /// detector: a policy that inspects nothing, or only with ICAP, gets
    /// its plans without it (it was tens of MiB on the first request).
    #[test]
    fn the_dlp_set_is_built_only_for_a_zone_that_uses_it() {
        let plain =
            "  - name: a\n    sources: [10.0.0.0/8]\n    allow: [{host: x.test, ports: [80]}]\n";
        let (c, p) = content_for(plain);
        assert!(
            c.plans(&p)
                .is_some_and(|pl| pl.dlp.is_none() && pl.zones.is_empty())
        );

        let icap = format!("{plain}    inspect: {{icap: true}}\n");
        let (c, p) = content_for(&icap);
        let pl = c.plans(&p).unwrap();
        assert!(pl.dlp.is_none());
        assert!(pl.zones.get("a").is_some_and(|z| !z.dlp));

        let dlp = format!("{plain}    inspect: {{dlp: {{aws: block}}}}\n");
        let (c, p) = content_for(&dlp);
        let pl = c.plans(&p).unwrap();
        assert!(pl.dlp.is_some());
        let z = pl.zones.get("a").unwrap();
        assert!(z.dlp && z.enabled.iter().filter(|e| **e).count() == 1);
    }

    /// `prepare` compiles a version's plans before its first request, and
    /// the plans of the two versions compiled last are both kept: after a
    /// reload, the requests of flows begun before it and of new flows do
    /// not rebuild each other's DLP set.
    #[test]
    fn plans_are_prepared_before_use_and_two_versions_are_kept() {
        let zone = |port: u16| {
            format!(
                "  - name: a\n    sources: [10.0.0.0/8]\n    allow: [{{host: x.test, ports: [{port}]}}]\n    inspect: {{dlp: {{aws: block}}}}\n"
            )
        };
        let (c, p1) = content_for(&zone(80));
        let (_, p2) = content_for(&zone(443));
        let (_, p3) = content_for(&zone(8080));
        assert!(c.plans.iter().all(|s| s.load().is_none()));

        c.prepare(&p1);
        let first = c.plans[0].load_full().expect("prepared");
        assert_eq!(first.hash, *p1.hash());
        assert!(first.dlp.is_some());
        assert!(Arc::ptr_eq(&c.plans(&p1).unwrap(), &first), "rebuilt");

        c.prepare(&p2);
        let second = c.plans(&p2).unwrap();
        for _ in 0..3 {
            assert!(Arc::ptr_eq(&c.plans(&p1).unwrap(), &first));
            assert!(Arc::ptr_eq(&c.plans(&p2).unwrap(), &second));
        }

        // A third version pushes out the one compiled longest ago.
        c.prepare(&p3);
        let hashes: Vec<_> = c
            .plans
            .iter()
            .map(|s| s.load_full().unwrap().hash.clone())
            .collect();
        assert_eq!(hashes, vec![p3.hash().clone(), p2.hash().clone()]);
        assert!(!Arc::ptr_eq(&c.plans(&p1).unwrap(), &first));
    }

    #[test]
    fn an_icap_200_blocks_when_it_found_answered_or_changed_the_status() {
        // REQMOD: an answer in the origin's place blocks, a rewrite does not.
        assert!(icap_blocks(None, Some(403), None));
        assert!(!icap_blocks(None, None, None));
        // RESPMOD: a changed status blocks, the same status does not.
        assert!(icap_blocks(Some(200), Some(403), None));
        assert!(!icap_blocks(Some(200), Some(200), None));
        assert!(!icap_blocks(Some(200), None, None));
        // A named finding blocks whatever the status.
        assert!(icap_blocks(Some(200), Some(200), Some("Eicar")));
        assert!(icap_blocks(None, None, Some("ssn")));
    }
}
