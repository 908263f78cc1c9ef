//! The compiled policy and its two decision phases (docs/design.md "Decisions"):
//! `decide` before resolution, `check_addresses` after. Both are pure
//! functions of the compiled policy and their arguments.

use std::{collections::HashMap, fmt, net::IpAddr, sync::Arc};

use hashbrown::HashSet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    dest::Destination,
    guard,
    load::{self, ConfigErrors, ConfigWarning},
    matcher::{CidrTable, HostTable},
    model::{Config, Mode, Ports, Rule},
};

mod dns;
mod replay;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The connection may leave.
    Allow,
    /// It may not (or, with `enforced: false`, would not).
    Deny,
}

impl Verdict {
    /// `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

/// What the second phase must still establish for the addresses of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pending {
    /// Final: nothing depends on addresses (an enforced denial).
    Nothing,
    /// Addresses must pass the guard and the zone's `cidr` deny rules.
    Guard,
    /// Addresses must also lie inside a `cidr` allow rule.
    CidrAllow,
}

/// Every built-in rule id (docs/design.md "Names and rule ids"): the guard, the fallbacks and
/// the inspectors. Records, metrics and answers name these; nothing else
/// spells them.
pub mod ids {
    /// A special address, denied in every mode.
    pub const GUARD_SPECIAL: &str = "guard/special-address";
    /// One of Sluice's own listeners.
    pub const GUARD_SELF: &str = "guard/self";
    /// A TLS ClientHello naming another host than the tunnel's (domain
    /// fronting, `tls_sni_must_match`).
    pub const GUARD_SNI_MISMATCH: &str = "guard/sni-mismatch";
    /// A special-use DNS name answered locally.
    pub const GUARD_SPECIAL_NAME: &str = "guard/special-name";
    /// The mode's default.
    pub const DEFAULT: &str = "default";
    /// No zone matched the request.
    pub const NO_ZONE: &str = "default/no-zone";
    /// Credentials were given and did not verify.
    pub const AUTH_FAILED: &str = "default/auth-failed";
    /// A request refused before any policy decision (malformed).
    pub const BAD_REQUEST: &str = "default/bad-request";
    /// The destination could not be parsed.
    pub const INVALID: &str = "default/invalid-destination";
    /// A connection reached the transparent listener without a redirect.
    pub const NOT_REDIRECTED: &str = "default/not-redirected";
    /// A name pending on `cidr` rules that resolved to no address.
    pub const UNRESOLVED: &str = "default/unresolved";
    /// Malware found by the scanner.
    pub const INSPECT_MALWARE: &str = "inspect/malware";
    /// Refused by an ICAP service.
    pub const INSPECT_ICAP: &str = "inspect/icap";
    /// Plain traffic where the policy requires TLS.
    pub const INSPECT_REQUIRE_TLS: &str = "inspect/require-tls";
    /// An intercepted destination's certificate did not verify.
    pub const INSPECT_UPSTREAM_CERTIFICATE: &str = "inspect/upstream-certificate";
    /// The prefix of DLP rule ids: `inspect/dlp/<detector>`.
    pub const INSPECT_DLP_PREFIX: &str = "inspect/dlp/";
}

/// What the second phase judges addresses for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// A connection to this port.
    Port(u16),
    /// A DNS answer, before any port is known: allow and lifting rules count
    /// on any port, deny rules only when they cover every port.
    DnsAnswer,
}

impl Scope {
    fn allows(self, ports: &Ports) -> bool {
        match self {
            Scope::Port(p) => ports.contains(p),
            Scope::DnsAnswer => true,
        }
    }

    fn denies(self, ports: &Ports) -> bool {
        match self {
            Scope::Port(p) => ports.contains(p),
            Scope::DnsAnswer => *ports == Ports::Any,
        }
    }
}

/// One outbound request as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The client address (IPv4-mapped addresses are judged as IPv4).
    pub src: IpAddr,
    /// The authenticated user, if any.
    pub user: Option<&'a str>,
    /// The normalised destination.
    pub dest: &'a Destination,
    /// The destination port.
    pub port: u16,
}

/// A decision with its explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Allow or deny.
    pub verdict: Verdict,
    /// False for report-mode would-be denials, which let the traffic pass.
    pub enforced: bool,
    /// The zone that judged, if any matched.
    pub zone: Option<Arc<str>>,
    /// The zone's mode.
    pub mode: Option<Mode>,
    /// The rule that decided (`web/allow/3`, an explicit id, a guard or
    /// fallback id).
    pub rule: Arc<str>,
    /// One line a person can act on.
    pub reason: String,
    /// The policy version that decided.
    pub policy_hash: Arc<str>,
    /// What the addresses still have to pass.
    pub pending: Pending,
    /// No zone matched, no user was given, and some zone names users: the
    /// client should be asked to authenticate.
    pub auth_required: bool,
    #[serde(skip)]
    zone_idx: Option<u32>,
    #[serde(skip)]
    port: u16,
}

impl Decision {
    /// Whether traffic may pass (allowed, or a report-mode would-be denial).
    pub fn passes(&self) -> bool {
        self.verdict == Verdict::Allow || !self.enforced
    }

    /// Turns this decision into an enforced denial by a guard or fallback
    /// rule decided outside the policy (e.g. `guard/self` in the dialer).
    pub fn deny_with(&self, rule: &str, reason: impl Into<String>) -> Decision {
        Decision {
            verdict: Verdict::Deny,
            enforced: true,
            rule: rule.into(),
            reason: reason.into(),
            pending: Pending::Nothing,
            ..self.clone()
        }
    }
}

/// One address that failed the second phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    /// The address.
    pub addr: IpAddr,
    /// The rule that failed it.
    pub rule: Arc<str>,
    /// Why.
    pub reason: String,
}

/// The result of the second phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddressCheck {
    /// The final decision.
    pub decision: Decision,
    /// Addresses that may be dialed, in the order given.
    pub allowed: Vec<IpAddr>,
    /// Addresses dropped, with the rule that failed them.
    pub rejected: Vec<Rejected>,
}

/// One configured rule as listed by the admin API: its id, zone, kind and
/// text, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleInfo<'a> {
    /// The rule id (explicit, or `zone/allow/N`).
    pub id: &'a str,
    /// The zone it belongs to.
    pub zone: &'a str,
    /// `allow` or `deny`.
    pub kind: &'static str,
    /// What it matches, e.g. `host *.example.com ports [443]`.
    pub text: &'a str,
    /// Whether the id was given in the file (and so survives edits).
    pub explicit_id: bool,
    /// Who answers for the rule, if the file says.
    pub owner: Option<&'a str>,
    /// The ticket that asked for it, if the file says.
    pub ticket: Option<&'a str>,
    /// When it stops matching (RFC 3339 as written), if ever.
    pub expires: Option<&'a str>,
    /// The same, unix ms.
    #[serde(skip)]
    pub expires_ms: Option<i64>,
    /// Whether it had expired at the policy's time ([`Policy::at`]): it
    /// matches nothing.
    pub expired: bool,
    /// Whether it expires within [`EXPIRING_SOON_MS`] of the policy's time.
    pub expiring_soon: bool,
}

/// How close an expiry must be to be reported as coming: a week.
pub const EXPIRING_SOON_MS: i64 = 7 * 24 * 3600 * 1000;

#[derive(Debug)]
struct CRule {
    id: Arc<str>,
    ports: Ports,
    lifts_guard: bool,
    text: String,
    /// An allow rule's `require_tls`.
    require_tls: bool,
}

#[derive(Debug)]
struct CZone {
    name: Arc<str>,
    mode: Mode,
    users: Option<HashSet<String>>,
    allow: Vec<CRule>,
    deny: Vec<CRule>,
    allow_hosts: HostTable,
    deny_hosts: HostTable,
    allow_cidrs: CidrTable,
    deny_cidrs: CidrTable,
    /// The zone's `route`, if it names one.
    route: Option<Arc<str>>,
    /// Allow rules (by id) that name their own `route`.
    rule_routes: HashMap<Arc<str>, Arc<str>>,
    /// `inspect.tls`: names whose TLS is intercepted.
    intercept: HostTable,
    require_tls: bool,
    /// The zone inspects content (DLP, clamd or ICAP).
    content: bool,
}

/// A compiled, immutable policy. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Policy {
    config: Config,
    hash: Arc<str>,
    zones: Vec<CZone>,
    /// Zones by source block (value = zone index).
    sources: CidrTable,
    /// Zones that name no sources.
    sourceless: Vec<u32>,
    any_users: bool,
    /// Some zone inspects content.
    any_content: bool,
    /// What the loader warned about, in file order.
    load_warnings: Vec<ConfigWarning>,
    /// The loader's warnings and those about expired and expiring rules
    /// at `as_of`, in file order.
    warnings: Vec<ConfigWarning>,
    /// The file name, for warnings about expiry.
    file: Arc<str>,
    /// The time (unix ms) expiry was judged at; `None`: never (no rule
    /// has expired).
    as_of: Option<i64>,
    /// Every rule's expiry (unix ms), sorted.
    expiries: Vec<i64>,
}

/// A configuration that failed to load or compile.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(#[from] pub ConfigErrors);

impl Policy {
    /// Parse, validate and compile a configuration file's text. Unlike
    /// [`parse_config`](crate::parse_config), the file must name `zones` (an empty or cut-short
    /// file is refused rather than loaded as a policy that denies all).
    pub fn load(source: &str, file: &str) -> Result<Policy, LoadError> {
        let (config, warnings) = load::parse_warned(source, file, load::Need::Zones)?;
        let mut policy = Policy::compile(config, &hash_text(source.as_bytes()));
        policy.warnings.clone_from(&warnings);
        policy.load_warnings = warnings;
        policy.file = file.into();
        Ok(policy)
    }

    /// [`load`](Policy::load), judging expiry at `now_ms` (unix ms): see
    /// [`at`](Policy::at).
    pub fn load_at(source: &str, file: &str, now_ms: i64) -> Result<Policy, LoadError> {
        Ok(Policy::load(source, file)?.at(now_ms))
    }

    /// This policy with expiry judged at `now_ms` (unix ms): rules whose
    /// `expires` is at or before it match nothing (they keep their ids and
    /// stay listed), and each is warned about, as is each rule expiring
    /// within a week. The policy reads no clock: the caller says what
    /// time it is, and compiles again at [`next_expiry`](Policy::next_expiry).
    pub fn at(self, now_ms: i64) -> Policy {
        if self.expiries.is_empty() {
            return Policy {
                as_of: Some(now_ms),
                ..self
            };
        }
        let Policy {
            config,
            hash,
            load_warnings,
            file,
            ..
        } = self;
        Policy::rebuilt(config, &hash, load_warnings, file, now_ms)
    }

    /// A copy of this policy with expiry judged at `now_ms`, as
    /// [`at`](Policy::at) gives (for a running gateway, whose policy is
    /// shared until the new one replaces it).
    pub fn recompiled_at(&self, now_ms: i64) -> Policy {
        Policy::rebuilt(
            self.config.clone(),
            &self.hash,
            self.load_warnings.clone(),
            self.file.clone(),
            now_ms,
        )
    }

    fn rebuilt(
        config: Config,
        hash: &str,
        load_warnings: Vec<ConfigWarning>,
        file: Arc<str>,
        now_ms: i64,
    ) -> Policy {
        let mut p = Policy::compile_at(config, hash, Some(now_ms));
        p.file = file;
        p.warnings = load_warnings.clone();
        p.load_warnings = load_warnings;
        let mut extra = Vec::new();
        for (r, rule) in p.rules_with_model() {
            let Some(e) = &rule.expires else { continue };
            let who = match (r.owner, r.ticket) {
                (Some(o), Some(t)) => format!(" (owner {o}, ticket {t})"),
                (Some(o), None) => format!(" (owner {o})"),
                (None, Some(t)) => format!(" (ticket {t})"),
                (None, None) => String::new(),
            };
            let message = if r.expired {
                format!(
                    "rule `{}` expired at {}{who}: it matches nothing; remove it or move `expires`",
                    r.id, e.text
                )
            } else if r.expiring_soon {
                format!("rule `{}` expires at {}{who}, within a week", r.id, e.text)
            } else {
                continue;
            };
            extra.push(ConfigWarning {
                file: p.file.to_string(),
                line: e.line,
                column: e.column,
                message,
            });
        }
        p.warnings.extend(extra);
        p.warnings.sort_by_key(|w| (w.line, w.column));
        p
    }

    /// The time (unix ms) expiry was judged at, if it was.
    pub fn as_of(&self) -> Option<i64> {
        self.as_of
    }

    /// The first rule expiry after the policy's time (unix ms): when to
    /// compile again so the rule stops matching on time.
    pub fn next_expiry(&self) -> Option<i64> {
        let now = self.as_of?;
        let i = self.expiries.partition_point(|&e| e <= now);
        self.expiries.get(i).copied()
    }

    /// Whether judging expiry at `now_ms` would give this same policy (no
    /// rule expires between its time and `now_ms`).
    pub fn same_at(&self, now_ms: i64) -> bool {
        let Some(t) = self.as_of else { return false };
        self.expiries.partition_point(|&e| e <= t)
            == self.expiries.partition_point(|&e| e <= now_ms)
    }

    /// How many rules had expired at the policy's time.
    pub fn expired_count(&self) -> usize {
        self.as_of
            .map_or(0, |t| self.expiries.partition_point(|&e| e <= t))
    }

    /// What loading the file warned about (it loaded nonetheless), in file
    /// order; empty for a policy compiled from a model.
    pub fn warnings(&self) -> &[ConfigWarning] {
        &self.warnings
    }

    /// Compile a validated configuration model. `hash` names this version.
    /// No rule is expired: see [`at`](Policy::at).
    pub fn compile(config: Config, hash: &str) -> Policy {
        Policy::compile_at(config, hash, None)
    }

    fn compile_at(config: Config, hash: &str, as_of: Option<i64>) -> Policy {
        let mut expiries = Vec::new();
        let mut zones = Vec::with_capacity(config.zones.len());
        let mut sources = CidrTable::default();
        let mut sourceless = Vec::new();
        for (zi, z) in config.zones.iter().enumerate() {
            let zi = zi as u32;
            match &z.sources {
                Some(nets) => {
                    for n in nets {
                        sources.insert(guard::canonical_net(*n), zi);
                    }
                }
                None => sourceless.push(zi),
            }
            let name: Arc<str> = z.name.as_str().into();
            let mut cz = CZone {
                name: name.clone(),
                mode: z.mode.unwrap_or(config.mode),
                users: z.users.as_ref().map(|u| u.iter().cloned().collect()),
                allow: Vec::with_capacity(z.allow.len()),
                deny: Vec::with_capacity(z.deny.len()),
                allow_hosts: HostTable::default(),
                deny_hosts: HostTable::default(),
                allow_cidrs: CidrTable::default(),
                deny_cidrs: CidrTable::default(),
                route: z.route.as_deref().map(Arc::from),
                rule_routes: HashMap::new(),
                intercept: HostTable::default(),
                require_tls: z.require_tls,
                content: z.inspect.any(),
            };
            for (i, h) in z.inspect.tls.iter().enumerate() {
                cz.intercept.insert(h, i as u32);
            }
            compile_rules(&mut cz, z, as_of, &mut expiries);
            zones.push(cz);
        }
        let any_users = config.zones.iter().any(|z| z.users.is_some());
        let any_content = zones.iter().any(|z| z.content);
        Policy {
            config,
            hash: hash.into(),
            zones,
            sources,
            sourceless,
            any_users,
            any_content,
            load_warnings: Vec::new(),
            warnings: Vec::new(),
            file: "".into(),
            as_of,
            expiries: {
                expiries.sort_unstable();
                expiries
            },
        }
    }

    /// The configuration this policy was compiled from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The policy hash.
    pub fn hash(&self) -> &Arc<str> {
        &self.hash
    }

    /// Every configured rule, zone by zone in file order, deny rules before
    /// allow rules (the order they are applied in).
    pub fn rules(&self) -> impl Iterator<Item = RuleInfo<'_>> {
        self.rules_with_model().map(|(info, _)| info)
    }

    fn rules_with_model(&self) -> impl Iterator<Item = (RuleInfo<'_>, &Rule)> {
        self.zones
            .iter()
            .zip(&self.config.zones)
            .flat_map(|(cz, z)| {
                let deny = cz.deny.iter().zip(&z.deny).map(|r| ("deny", r));
                let allow = cz.allow.iter().zip(&z.allow).map(|r| ("allow", r));
                deny.chain(allow).map(|(kind, (cr, r))| {
                    let exp = r.expires.as_ref().map(|e| e.unix_ms);
                    let (expired, expiring_soon) = match (exp, self.as_of) {
                        (Some(e), Some(t)) => (e <= t, e > t && e - t <= EXPIRING_SOON_MS),
                        _ => (false, false),
                    };
                    let info = RuleInfo {
                        id: &cr.id,
                        zone: &cz.name,
                        kind,
                        text: &cr.text,
                        explicit_id: r.id.is_some(),
                        owner: r.owner.as_deref(),
                        ticket: r.ticket.as_deref(),
                        expires: r.expires.as_ref().map(|e| e.text.as_str()),
                        expires_ms: exp,
                        expired,
                        expiring_soon,
                    };
                    (info, r)
                })
            })
    }

    /// Whether any zone selects by user (so proxies should offer auth).
    pub fn has_user_zones(&self) -> bool {
        self.any_users
    }

    /// The first zone in file order whose conditions hold.
    fn select_zone(&self, src: IpAddr, user: Option<&str>) -> Option<u32> {
        let src = guard::canonical(src);
        let user_ok = |zi: u32| match (&self.zones[zi as usize].users, user) {
            (None, _) => true,
            (Some(set), Some(u)) => set.contains(u),
            (Some(_), None) => false,
        };
        let by_source = self.sources.first(src, user_ok);
        let sourceless = self.sourceless.iter().copied().find(|&zi| user_ok(zi));
        match (by_source, sourceless) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The route a decision's flow leaves by: its allow rule's `route`,
    /// else its zone's, else `None` (the built-in `direct`).
    pub fn route_for(&self, decision: &Decision) -> Option<&Arc<str>> {
        let z = self.zones.get(decision.zone_idx? as usize)?;
        z.rule_routes.get(&decision.rule).or(z.route.as_ref())
    }

    /// Whether the zone that made `d` lists `name` under `inspect.tls`:
    /// its TLS is to be intercepted. Names only; an address never matches.
    pub fn intercepts(&self, d: &Decision, name: &str) -> bool {
        self.zone_of_decision(d)
            .is_some_and(|z| !z.intercept.is_empty() && z.intercept.first(name, |_| true).is_some())
    }

    /// Whether the zone that made `d` intercepts any destination.
    pub fn intercepts_zone(&self, d: &Decision) -> bool {
        self.zone_of_decision(d)
            .is_some_and(|z| !z.intercept.is_empty())
    }

    /// Whether the flow `d` judges must be TLS: its zone says
    /// `require_tls`, or the allow rule that decided does.
    pub fn requires_tls(&self, d: &Decision) -> bool {
        let Some(z) = self.zone_of_decision(d) else {
            return false;
        };
        z.require_tls
            || (d.verdict == Verdict::Allow
                && z.allow.iter().any(|r| r.require_tls && r.id == d.rule))
    }

    /// Whether a client at `src` may belong to a zone that inspects
    /// content (DLP, clamd or ICAP), whichever user it logs in as: the
    /// first zone without `users` whose sources hold it, or a zone with
    /// `users` before that one (never less than the truth; a user zone
    /// the user is not in may make it more). Pure: no I/O.
    pub fn may_inspect_content(&self, src: IpAddr) -> bool {
        if !self.any_content {
            return false;
        }
        let plain = self.select_zone(src, None);
        let candidate = |zi: u32| {
            let z = &self.zones[zi as usize];
            z.content && (Some(zi) == plain || (z.users.is_some() && plain.is_none_or(|p| zi < p)))
        };
        self.sources
            .first(guard::canonical(src), candidate)
            .is_some()
            || self.sourceless.iter().any(|&zi| candidate(zi))
    }

    /// The name of the zone a source (and user) belongs to, if any.
    pub fn zone_of(&self, src: IpAddr, user: Option<&str>) -> Option<&str> {
        self.select_zone(src, user)
            .map(|zi| &*self.zones[zi as usize].name)
    }

    fn base(&self, zi: Option<u32>, port: u16) -> Decision {
        let z = zi.map(|i| &self.zones[i as usize]);
        Decision {
            verdict: Verdict::Deny,
            enforced: true,
            zone: z.map(|z| z.name.clone()),
            mode: z.map(|z| z.mode),
            rule: ids::DEFAULT.into(),
            reason: String::new(),
            policy_hash: self.hash.clone(),
            pending: Pending::Nothing,
            auth_required: false,
            zone_idx: zi,
            port,
        }
    }

    /// A denial for a destination that could not be parsed; for records.
    pub fn invalid_destination(&self, src: IpAddr, user: Option<&str>, reason: String) -> Decision {
        let mut d = self.base(self.select_zone(src, user), 0);
        d.rule = ids::INVALID.into();
        d.reason = reason;
        d
    }

    /// Phase one: judge a request before resolution.
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        let Some(zi) = self.select_zone(req.src, req.user) else {
            let mut d = self.base(None, req.port);
            d.rule = ids::NO_ZONE.into();
            d.auth_required = req.user.is_none() && self.any_users;
            d.reason = match req.user {
                Some(u) => format!("source {} with user {u} matches no zone", req.src),
                None if d.auth_required => {
                    format!(
                        "source {} matches no zone without credentials; authenticate",
                        req.src
                    )
                }
                None => format!("source {} matches no zone", req.src),
            };
            return d;
        };
        let z = &self.zones[zi as usize];
        let port = req.port;
        let mut d = self.base(Some(zi), port);
        let report = z.mode == Mode::Report;
        fn port_ok(rules: &[CRule], port: u16) -> impl Fn(u32) -> bool + '_ {
            move |i: u32| rules[i as usize].ports.contains(port)
        }
        match req.dest {
            Destination::Ip(ip) => {
                let ip = guard::canonical(*ip);
                if let Some(range) = guard::special(ip) {
                    if self.lifting_rule(z, ip, Scope::Port(port)).is_none() {
                        d.rule = ids::GUARD_SPECIAL.into();
                        d.reason = guard_reason(ip, range);
                        return d;
                    }
                }
                if let Some(i) = z.first_deny_cidr(ip, port_ok(&z.deny, port)) {
                    return rule_deny(d, &z.deny[i as usize], report);
                }
                if let Some(i) = z.allow_cidrs.first(ip, port_ok(&z.allow, port)) {
                    return rule_allow(d, &z.allow[i as usize], Pending::Guard);
                }
                default(d, z, format!("{ip} port {port}"), Pending::Guard)
            }
            Destination::Name(name) => {
                let special = guard::special_name(name);
                match special.map(|s| s.treatment) {
                    Some(guard::NameTreatment::Loopback) => {
                        return self.loopback_name(z, d, name, port);
                    }
                    Some(guard::NameTreatment::NxDomain) => {
                        return special_name_denied(d, name, special);
                    }
                    _ => {}
                }
                if let Some(i) = z.deny_hosts.first(name, port_ok(&z.deny, port)) {
                    return rule_deny(d, &z.deny[i as usize], report);
                }
                if let Some(i) = z.allow_hosts.first(name, port_ok(&z.allow, port)) {
                    return rule_allow(d, &z.allow[i as usize], Pending::Guard);
                }
                if special.is_some() {
                    // A private zone (`internal`, `home.arpa`): only for
                    // names a host allow rule names, in every mode.
                    return special_name_denied(d, name, special);
                }
                let pending = if z.mode != Mode::Open && !z.allow_cidrs.is_empty() {
                    Pending::CidrAllow
                } else {
                    Pending::Guard
                };
                default(d, z, format!("{name} port {port}"), pending)
            }
        }
    }

    /// `localhost` and names below it (RFC 6761) mean `127.0.0.1` and
    /// `::1`, resolved locally: they meet the guard as those addresses do,
    /// so only a `cidr` allow inside loopback space that covers the port
    /// lets them out (phase two then checks the local addresses).
    fn loopback_name(&self, z: &CZone, mut d: Decision, name: &str, port: u16) -> Decision {
        let lifted = guard::LOOPBACK_ADDRS
            .iter()
            .find_map(|ip| self.lifting_rule(z, *ip, Scope::Port(port)));
        if let Some(i) = lifted {
            return rule_allow(d, &z.allow[i as usize], Pending::Guard);
        }
        d.rule = ids::GUARD_SPECIAL.into();
        d.reason = format!(
            "{name} can only mean a loopback address (RFC 6761), and no cidr allow rule inside loopback space covers port {port}"
        );
        d
    }

    fn lifting_rule(&self, z: &CZone, ip: IpAddr, scope: Scope) -> Option<u32> {
        z.allow_cidrs.first(ip, |i| {
            let r = &z.allow[i as usize];
            r.lifts_guard && scope.allows(&r.ports)
        })
    }

    /// Both phases for an explanation (`sluice check`, the admin API's
    /// check): phase two runs on `addrs`, or on the destination itself when
    /// it is an IP literal; with neither, only phase one.
    pub fn explain(&self, req: &Request<'_>, addrs: &[IpAddr]) -> (Decision, Option<AddressCheck>) {
        let first = self.decide(req);
        let literal;
        let addrs = match req.dest {
            Destination::Ip(ip) => {
                literal = [*ip];
                &literal[..]
            }
            Destination::Name(_) => addrs,
        };
        if addrs.is_empty() {
            return (first, None);
        }
        let c = self.check_addresses(&first, addrs);
        (c.decision.clone(), Some(c))
    }

    /// An allow rule of the decision's zone that matches the destination
    /// (its host, or for an IP one of `addrs` or the IP itself) but not
    /// the port: why a request a user expected to pass fell through, for
    /// `sluice check`. `None` when the decision allowed or no rule is near.
    pub fn port_miss(
        &self,
        decision: &Decision,
        dest: &Destination,
        addrs: &[IpAddr],
    ) -> Option<RuleInfo<'_>> {
        if decision.verdict == Verdict::Allow && decision.rule.as_ref() != ids::DEFAULT {
            return None;
        }
        let idx = decision
            .zone_idx
            .filter(|_| decision.policy_hash == self.hash)?;
        let z = self.zones.get(idx as usize)?;
        let rules = &self.config.zones.get(idx as usize)?.allow;
        let port = decision.port;
        let miss = |i: u32| !z.allow[i as usize].ports.contains(port);
        let i = match dest {
            Destination::Name(name) => z.allow_hosts.first(name, miss),
            Destination::Ip(ip) => z.allow_cidrs.first(guard::canonical(*ip), miss),
        }
        .or_else(|| {
            addrs
                .iter()
                .find_map(|a| z.allow_cidrs.first(guard::canonical(*a), miss))
        })?;
        let cr = z.allow.get(i as usize)?;
        Some(RuleInfo {
            id: &cr.id,
            zone: &z.name,
            kind: "allow",
            text: &cr.text,
            explicit_id: rules.get(i as usize).is_some_and(|r| r.id.is_some()),
            owner: None,
            ticket: None,
            expires: None,
            expires_ms: None,
            expired: false,
            expiring_soon: false,
        })
    }

    /// Whether the allow rule that decided `decision` says its zone may
    /// reach the destination without the gateway (`bypass: true`): the
    /// NetFlow collector raises no `bypass` alert for such flows.
    pub fn allows_bypass(&self, decision: &Decision) -> bool {
        if decision.verdict != Verdict::Allow {
            return false;
        }
        let Some(idx) = decision
            .zone_idx
            .filter(|_| decision.policy_hash == self.hash)
        else {
            return false;
        };
        let (Some(cz), Some(z)) = (
            self.zones.get(idx as usize),
            self.config.zones.get(idx as usize),
        ) else {
            return false;
        };
        // Expired rules keep their place in `cz.allow`: the lists align.
        cz.allow
            .iter()
            .zip(&z.allow)
            .any(|(c, r)| r.bypass && c.id == decision.rule)
    }

    /// The zone a decision was made in, if this policy version made it.
    /// Decisions name zones by position, so another version's are refused.
    fn zone_of_decision(&self, decision: &Decision) -> Option<&CZone> {
        decision
            .zone_idx
            .filter(|_| decision.policy_hash == self.hash)
            .and_then(|i| self.zones.get(i as usize))
    }

    /// Phase two: judge the addresses a name resolved to (or an IP literal).
    /// Only `allowed` may be dialed; nothing is resolved again.
    pub fn check_addresses(&self, decision: &Decision, addrs: &[IpAddr]) -> AddressCheck {
        self.check_addresses_in(decision, addrs, Scope::Port(decision.port))
    }

    /// The second phase for `scope`: a dial to one port, or a DNS answer
    /// (any port: see `Scope`).
    pub(crate) fn check_addresses_in(
        &self,
        decision: &Decision,
        addrs: &[IpAddr],
        scope: Scope,
    ) -> AddressCheck {
        // A decision made by another policy version (a reload in between)
        // names zones by position in that version: never trust it here.
        let zone = self.zone_of_decision(decision);
        let (Some(z), false) = (
            zone,
            decision.pending == Pending::Nothing && !decision.passes(),
        ) else {
            return AddressCheck::reject_all(decision, addrs);
        };
        let mut out = AddressCheck {
            decision: decision.clone(),
            allowed: Vec::new(),
            rejected: Vec::new(),
        };
        let report = z.mode == Mode::Report;
        // A report-mode would-be denial found among the addresses.
        let mut would_deny: Option<(Arc<str>, String)> = None;
        let mut allow_rule: Option<&CRule> = None;
        for &addr in addrs {
            let ip = guard::canonical(addr);
            if let Some(range) = guard::special(ip) {
                if self.lifting_rule(z, ip, scope).is_none() {
                    out.rejected.push(Rejected {
                        addr,
                        rule: ids::GUARD_SPECIAL.into(),
                        reason: guard_reason(ip, range),
                    });
                    continue;
                }
            }
            if let Some(i) = z.first_deny_cidr(ip, |i| scope.denies(&z.deny[i as usize].ports)) {
                let r = &z.deny[i as usize];
                let reason = format!("{ip} matches deny rule {} ({})", r.id, r.text);
                if report {
                    would_deny.get_or_insert((r.id.clone(), reason));
                    out.allowed.push(addr);
                } else {
                    out.rejected.push(Rejected {
                        addr,
                        rule: r.id.clone(),
                        reason,
                    });
                }
                continue;
            }
            if decision.pending == Pending::CidrAllow {
                match z
                    .allow_cidrs
                    .first(ip, |i| scope.allows(&z.allow[i as usize].ports))
                {
                    Some(i) => {
                        allow_rule.get_or_insert(&z.allow[i as usize]);
                    }
                    // Report mode: phase one already holds the would-be denial.
                    None if report => {}
                    None => {
                        out.rejected.push(Rejected {
                            addr,
                            rule: ids::DEFAULT.into(),
                            reason: outside_cidr_allows(ip, &z.name, scope),
                        });
                        continue;
                    }
                }
            }
            out.allowed.push(addr);
        }
        out.settle(would_deny, allow_rule);
        out
    }
}

impl AddressCheck {
    /// Every address rejected with the decision's own rule: it denied
    /// already, or it was made under another policy version (then it
    /// becomes a default denial: decide again).
    fn reject_all(decision: &Decision, addrs: &[IpAddr]) -> AddressCheck {
        let mut out = AddressCheck {
            decision: decision.clone(),
            allowed: Vec::new(),
            rejected: addrs
                .iter()
                .map(|&addr| Rejected {
                    addr,
                    rule: decision.rule.clone(),
                    reason: decision.reason.clone(),
                })
                .collect(),
        };
        out.decision.pending = Pending::Nothing;
        if decision.passes() {
            out.decision.verdict = Verdict::Deny;
            out.decision.enforced = true;
            out.decision.rule = ids::DEFAULT.into();
            out.decision.reason = "decided under another policy version; decide again".to_owned();
        }
        out
    }

    /// The decision once the addresses are judged: denied when none is
    /// left (by the first rejection's rule), else a report zone's would-be
    /// denial, else the cidr allow rule that matched (when phase one was
    /// waiting for one).
    fn settle(&mut self, would_deny: Option<(Arc<str>, String)>, allow_rule: Option<&CRule>) {
        let d = &mut self.decision;
        d.pending = Pending::Nothing;
        if self.allowed.is_empty() {
            d.verdict = Verdict::Deny;
            d.enforced = true;
            match self.rejected.first() {
                Some(r) => {
                    d.rule = r.rule.clone();
                    d.reason = r.reason.clone();
                }
                None => {
                    d.rule = ids::DEFAULT.into();
                    d.reason = "no addresses to connect to".to_owned();
                }
            }
        } else if let Some((rule, reason)) = would_deny {
            d.verdict = Verdict::Deny;
            d.enforced = false;
            d.rule = rule;
            d.reason = reason;
        } else if let Some(r) = allow_rule {
            d.verdict = Verdict::Allow;
            d.enforced = true;
            d.rule = r.id.clone();
            d.reason = format!("address matches allow rule {} ({})", r.id, r.text);
        }
    }
}

/// Why an address outside every cidr allow rule of zone `zone` is
/// rejected, for a dial (`scope` a port) or a DNS answer.
fn outside_cidr_allows(ip: IpAddr, zone: &str, scope: Scope) -> String {
    match scope {
        Scope::Port(port) => format!(
            "resolved address {ip} is not inside any cidr allow rule of zone {zone} for port {port}"
        ),
        Scope::DnsAnswer => {
            format!("answer address {ip} is not inside any cidr allow rule of zone {zone}")
        }
    }
}

/// Compiles zone `z`'s allow and deny rules into `cz`: each into its list,
/// where its place gives later rules their ids, and, unless it expired
/// `as_of`, into the host and cidr tables; expiry times go to `expiries`.
fn compile_rules(
    cz: &mut CZone,
    z: &crate::model::Zone,
    as_of: Option<i64>,
    expiries: &mut Vec<i64>,
) {
    for (kind, rules) in [("allow", &z.allow), ("deny", &z.deny)] {
        let allow = kind == "allow";
        for (ri, r) in rules.iter().enumerate() {
            let id: Arc<str> = match &r.id {
                Some(id) => id.as_str().into(),
                None => format!("{}/{kind}/{}", z.name, ri + 1).into(),
            };
            if let Some(e) = &r.expires {
                expiries.push(e.unix_ms);
            }
            // An expired rule keeps its place (and so its id and every
            // later rule's) but is in no table.
            let expired = r
                .expires
                .as_ref()
                .is_some_and(|e| as_of.is_some_and(|t| e.unix_ms <= t));
            let mut cidr = None;
            if !expired {
                let idx = ri as u32;
                let (hosts, cidrs) = if allow {
                    (&mut cz.allow_hosts, &mut cz.allow_cidrs)
                } else {
                    (&mut cz.deny_hosts, &mut cz.deny_cidrs)
                };
                if let Some(h) = &r.host {
                    hosts.insert(h, idx);
                }
                cidr = r.cidr.map(guard::canonical_net);
                if let Some(n) = cidr {
                    cidrs.insert(n, idx);
                }
                if let (true, Some(route)) = (allow, &r.route) {
                    cz.rule_routes.insert(id.clone(), route.as_str().into());
                }
            }
            let list = if allow { &mut cz.allow } else { &mut cz.deny };
            list.push(CRule {
                id,
                ports: r.ports.clone().unwrap_or(Ports::Any),
                lifts_guard: allow && cidr.is_some_and(guard::entirely_special),
                text: rule_text(r),
                require_tls: allow && r.require_tls,
            });
        }
    }
}

fn guard_reason(ip: IpAddr, range: &str) -> String {
    format!(
        "{ip} is a special address ({range}); denied unless a cidr allow rule inside special space lifts it"
    )
}

impl CZone {
    /// The first `cidr` deny rule (file order) matching `ip` or, for an IPv6
    /// address that embeds IPv4 addresses (NAT64 `64:ff9b::/96`, 6to4,
    /// Teredo, IPv4-compatible), any of those: a deny rule for an IPv4 block
    /// cannot be walked around by writing its addresses in IPv6.
    fn first_deny_cidr(&self, ip: IpAddr, ok: impl Fn(u32) -> bool) -> Option<u32> {
        let direct = self.deny_cidrs.first(ip, &ok);
        let IpAddr::V6(v6) = ip else {
            return direct;
        };
        guard::embedded_v4(v6)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|v4| self.deny_cidrs.first(IpAddr::V4(v4), &ok))
            .chain(direct)
            .min()
    }
}

/// A special-use name the proxy never resolves (`.onion`, `.local`,
/// `.invalid`, `.alt`, reverse names of special space, and private zones
/// without a host allow rule): denied by the guard in every mode.
fn special_name_denied(mut d: Decision, name: &str, s: Option<guard::SpecialName>) -> Decision {
    d.verdict = Verdict::Deny;
    d.enforced = true;
    d.rule = ids::GUARD_SPECIAL_NAME.into();
    d.reason = match s {
        Some(s) if s.treatment == guard::NameTreatment::HostRuleOnly => format!(
            "{name} is in the private zone {} ({}): only names a host allow rule names may leave",
            s.domain, s.source
        ),
        Some(s) => format!(
            "{name} is a special-use name under {} ({}): never resolved",
            s.domain, s.source
        ),
        None => format!("{name} is a special-use name: never resolved"),
    };
    d.pending = Pending::Nothing;
    d
}

fn rule_deny(mut d: Decision, r: &CRule, report: bool) -> Decision {
    d.verdict = Verdict::Deny;
    d.enforced = !report;
    d.rule = r.id.clone();
    d.reason = format!("matches deny rule {} ({})", r.id, r.text);
    d.pending = if report {
        Pending::Guard
    } else {
        Pending::Nothing
    };
    d
}

fn rule_allow(mut d: Decision, r: &CRule, pending: Pending) -> Decision {
    d.verdict = Verdict::Allow;
    d.enforced = true;
    d.rule = r.id.clone();
    d.reason = format!("matches allow rule {} ({})", r.id, r.text);
    d.pending = pending;
    d
}

fn default(mut d: Decision, z: &CZone, what: String, pending: Pending) -> Decision {
    d.rule = ids::DEFAULT.into();
    match z.mode {
        Mode::Open => {
            d.verdict = Verdict::Allow;
            d.enforced = true;
            d.reason = format!(
                "{what}: no deny rule of zone {} matches (open mode)",
                z.name
            );
            d.pending = pending;
        }
        mode => {
            d.verdict = Verdict::Deny;
            d.enforced = mode == Mode::Enforce;
            d.pending = if pending == Pending::CidrAllow || mode == Mode::Report {
                pending
            } else {
                Pending::Nothing
            };
            d.reason = if pending == Pending::CidrAllow {
                format!(
                    "{what}: no host rule of zone {} matches; allowed only if its addresses fall in a cidr allow rule",
                    z.name
                )
            } else {
                format!(
                    "{what}: no rule of zone {} allows it ({} mode)",
                    z.name,
                    mode.as_str()
                )
            };
        }
    }
    d
}

/// `host *.example.com ports [443,"8000-8100"]`: the ports as the JSON the
/// model serializes to, written directly (one allocation: a policy of a
/// million rules builds a million of these).
fn rule_text(r: &Rule) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(64);
    match (&r.host, &r.cidr) {
        (Some(h), _) => {
            out.push_str("host ");
            out.push_str(h);
        }
        (_, Some(c)) => {
            let _ = write!(out, "cidr {c}");
        }
        _ => {}
    }
    if let Some(Ports::List(ranges)) = &r.ports {
        out.push_str(" ports [");
        for (i, &(a, b)) in ranges.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = if a == b {
                write!(out, "{a}")
            } else {
                write!(out, "\"{a}-{b}\"")
            };
        }
        out.push(']');
    }
    out.shrink_to_fit();
    out
}

/// A short, stable hash of a policy's source text.
pub fn hash_text(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{} zone={} mode={} rule={} reason=\"{}\" policy={}",
            self.verdict.as_str(),
            if self.enforced {
                ""
            } else {
                " (not enforced: report mode)"
            },
            self.zone.as_deref().unwrap_or("-"),
            self.mode.map_or("-", Mode::as_str),
            self.rule,
            self.reason,
            self.policy_hash
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_rule_matches_nothing_and_keeps_its_id_and_the_next_ones() {
        // 2026-01-01T00:00:00Z is 1_767_225_600 s.
        let text = "zones:\n  - name: web\n    allow:\n      - host: a.test\n        ports: [443]\n        owner: alice\n        expires: 2026-01-01T00:00:00Z\n      - host: b.test\n        ports: [443]\n";
        let t = 1_767_225_600_000_i64;
        let judge = |p: &Policy, host: &str| {
            let dest = crate::Destination::parse(host).unwrap_or_else(|e| panic!("{e:?}"));
            let d = p.decide(&Request {
                src: "10.0.0.1".parse().unwrap_or_else(|e| panic!("{e}")),
                user: None,
                dest: &dest,
                port: 443,
            });
            (d.verdict, d.rule.to_string())
        };
        let before = Policy::load_at(text, "e.yaml", t - 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            judge(&before, "a.test"),
            (Verdict::Allow, "web/allow/1".into())
        );
        assert_eq!(before.next_expiry(), Some(t));
        assert_eq!(before.expired_count(), 0);
        assert!(before.same_at(t - 1000) && !before.same_at(t));
        assert!(
            before
                .rules()
                .next()
                .is_some_and(|r| r.expiring_soon && !r.expired)
        );
        let after = before.recompiled_at(t);
        assert_eq!(judge(&after, "a.test"), (Verdict::Deny, "default".into()));
        assert_eq!(
            judge(&after, "b.test"),
            (Verdict::Allow, "web/allow/2".into())
        );
        assert_eq!(after.next_expiry(), None);
        assert_eq!(after.expired_count(), 1);
        let ids: Vec<(String, bool, Option<&str>)> = after
            .rules()
            .map(|r| (r.id.to_owned(), r.expired, r.owner))
            .collect();
        assert_eq!(
            ids,
            [
                ("web/allow/1".to_owned(), true, Some("alice")),
                ("web/allow/2".to_owned(), false, None)
            ]
        );
        let w: Vec<String> = after.warnings().iter().map(ToString::to_string).collect();
        assert_eq!(
            w,
            [
                "e.yaml:7:18: warning: rule `web/allow/1` expired at 2026-01-01T00:00:00Z (owner alice): it matches nothing; remove it or move `expires`"
            ]
        );
        // Without a time (a model compiled as before), nothing is expired.
        let plain = Policy::load(text, "e.yaml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(judge(&plain, "a.test").0, Verdict::Allow);
    }

    #[test]
    fn rule_text_writes_ports_as_the_model_serializes_them() {
        for (host, cidr, ports) in [
            (Some("a.test"), None, Some(Ports::List(vec![(443, 443)]))),
            (
                Some("*.b.test"),
                None,
                Some(Ports::List(vec![(443, 443), (8000, 8100), (1, 65535)])),
            ),
            (None, Some("198.51.100.0/24"), Some(Ports::Any)),
            (None, Some("2001:db8::/32"), None),
        ] {
            let r = Rule {
                host: host.map(str::to_owned),
                cidr: cidr.map(|c| c.parse().unwrap_or_else(|e| panic!("{e}"))),
                ports,
                id: None,
                ..Rule::default()
            };
            let target = match (&r.host, &r.cidr) {
                (Some(h), _) => format!("host {h}"),
                (_, Some(c)) => format!("cidr {c}"),
                _ => String::new(),
            };
            let want = match &r.ports {
                Some(p @ Ports::List(_)) => {
                    let json = serde_json::to_value(p).unwrap_or_default();
                    format!("{target} ports {json}")
                }
                _ => target,
            };
            assert_eq!(rule_text(&r), want);
        }
    }
}
