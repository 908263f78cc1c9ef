//! One query's path, in the same named stages as every listener:
//!
//! 1. **parse** — `query::parse`: malformed packets are dropped or get
//!    FORMERR, never a panic.
//! 2. **identify** — the zone of the source address (`Policy::dns_decide`);
//!    no zone: REFUSED, never an open resolver. The per-source rate limit
//!    runs before anything else costs work.
//! 3. **decide** — the queried name against the zone's rules, ports aside;
//!    a name no allow rule could match gets the blocked answer
//!    (`dns.blocked_answer`); a special-use name is answered here
//!    (`guard/special-name`: loopback for `localhost`, else NXDOMAIN).
//! 4. **resolve** — the answer cache, else the upstreams.
//! 5. **filter** — `filter::filter`: the CNAME chain against deny rules,
//!    every address through the guard; grants for what was handed out.
//! 6. **record** — one flow record per query, through the same recorder
//!    as the proxies; the `dns-tunnel` detector (`sluice-detect`) reads
//!    those records, allowed or denied.
//!
//! Stages 1 to 4 on a cache hit are synchronous ([`Forwarder::begin`]), so
//! the UDP loop answers hits without spawning a task.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{RData, Record, RecordType, rdata},
};
use sluice_observe::{FlowRecord, Listener, Metrics, Protocol, RecordSink};
use sluice_policy::{
    Decision, Pending, Policy, Verdict,
    guard::{self, NameTreatment},
    ids,
    model::{BlockedAnswer, Dns},
};

use crate::{
    cache::Cache,
    filter::{Filtered, filter},
    grants::GrantStore,
    query::{self, Question, Refusal, encode},
    ratelimit::RateLimiter,
    upstream::Upstreams,
};

/// TTL of a sinkhole answer.
const SINKHOLE_TTL: u32 = 60;
/// TTL of a local answer for `localhost` (it never changes).
const LOCAL_TTL: u32 = 300;
/// Longest answer text kept in a flow record, per record.
const ANSWER_TEXT_MAX: usize = 120;

/// How the query arrived (UDP answers are size-limited, TCP ones are not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A datagram.
    Udp,
    /// A length-prefixed message on a TCP connection.
    Tcp,
}

/// The policy in force, asked once per query (the binary reads it from
/// the gateway, so a reload applies to DNS at once).
pub type PolicySource = Arc<dyn Fn() -> Arc<Policy> + Send + Sync>;

/// What the forwarder shares with the rest of Sluice: the policy, where
/// records go, and the metrics.
#[derive(Clone)]
pub struct Shared {
    /// The policy in force.
    pub policy: PolicySource,
    /// The record stage.
    pub recorder: Arc<dyn RecordSink>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// The forwarder: the stages above and their state.
pub struct Forwarder {
    shared: Shared,
    upstreams: Upstreams,
    cache: Cache,
    grants: Arc<GrantStore>,
    limiter: RateLimiter,
    ttl_max: u32,
    blocked: BlockedAnswer,
}

/// What [`Forwarder::begin`] settled.
pub enum Step {
    /// Answered (or dropped) without the upstreams.
    Done(Option<Vec<u8>>),
    /// Needs the upstreams: pass to [`Forwarder::finish`].
    Forward(Box<InFlight>),
}

/// A query waiting for its upstream answer.
pub struct InFlight {
    q: Question,
    name: String,
    decision: Decision,
    policy: Arc<Policy>,
    rec: FlowRecord,
    transport: Transport,
}

// === impl Forwarder ===

impl Forwarder {
    /// A forwarder for `shared`'s policy with the `dns:` settings, asking
    /// `upstreams` and remembering grants in `grants`.
    pub fn new(
        shared: Shared,
        dns: &Dns,
        upstreams: Vec<SocketAddr>,
        grants: Arc<GrantStore>,
    ) -> Forwarder {
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        Forwarder {
            shared,
            upstreams: Upstreams::new(upstreams, dns.upstream_timeout),
            cache: Cache::new(
                dns.cache_size as usize,
                dns.answer_ttl_max,
                dns.negative_ttl,
            ),
            grants,
            limiter: RateLimiter::new(dns.rate_limit_qps, Instant::now()),
            ttl_max: secs(dns.answer_ttl_max),
            blocked: dns.blocked_answer,
        }
    }

    /// The grant store this forwarder fills.
    pub fn grants(&self) -> &Arc<GrantStore> {
        &self.grants
    }

    /// The whole path for one packet: the bytes to send back, if any.
    pub async fn handle(
        &self,
        src: SocketAddr,
        packet: &[u8],
        transport: Transport,
    ) -> Option<Vec<u8>> {
        match self.begin(src, packet, transport) {
            Step::Done(out) => out,
            Step::Forward(f) => Some(self.finish(*f).await),
        }
    }

    /// Parse, identify, decide, and answer from the cache when possible.
    pub fn begin(&self, src: SocketAddr, packet: &[u8], transport: Transport) -> Step {
        let q = match query::parse(packet) {
            Ok(q) => q,
            Err(Refusal::Drop) => return Step::Done(None),
            Err(Refusal::Answer(a)) => {
                return Step::Done(self.limiter.allow(src.ip(), Instant::now()).then_some(a));
            }
        };
        let now = Instant::now();
        if !self.limiter.allow(src.ip(), now) {
            self.shared.metrics.dns_rate_limited();
            return Step::Done(None);
        }
        let policy = (self.shared.policy)();
        let mut rec = FlowRecord::new(Listener::Dns, Protocol::Dns, src, SystemTime::now());
        rec.qtype = Some(q.qtype().to_string());
        rec.bytes_out = packet.len() as u64;
        let name = q.name.clone();
        rec.dst_host = Some(name.clone().unwrap_or_else(|| q.query.name().to_ascii()));
        let decision = match &name {
            Some(n) => policy.dns_decide(src.ip(), n),
            None => {
                let why = format!("{} is not a host name", q.query.name());
                policy.invalid_destination(src.ip(), None, why)
            }
        };
        if decision.zone.is_none() {
            let out = encode(&q.response(ResponseCode::Refused));
            return Step::Done(Some(self.done(rec, &decision, None, out, transport, &q)));
        }
        let Some(name) = name else {
            return Step::Done(Some(self.blocked(rec, &decision, &q, transport)));
        };
        if &*decision.rule == ids::GUARD_SPECIAL_NAME {
            return Step::Done(Some(self.special(rec, &decision, &q, &name, transport)));
        }
        let forward = decision.passes()
            || (decision.pending == Pending::CidrAllow
                && matches!(q.qtype(), RecordType::A | RecordType::AAAA));
        if !forward {
            return Step::Done(Some(self.blocked(rec, &decision, &q, transport)));
        }
        if let Some((msg, age)) = self.cache.get(&name, q.qtype(), now) {
            let f = filter(&policy, &decision, q.query.name(), &msg, self.ttl_max, age);
            return Step::Done(Some(self.answer(rec, f, &q, &name, transport)));
        }
        Step::Forward(Box::new(InFlight {
            q,
            name,
            decision,
            policy,
            rec,
            transport,
        }))
    }

    /// Resolve upstream, cache, filter and answer.
    pub async fn finish(&self, f: InFlight) -> Vec<u8> {
        let InFlight {
            q,
            name,
            decision,
            policy,
            mut rec,
            transport,
        } = f;
        match self.upstreams.resolve(&q.query).await {
            Ok(msg) => {
                let msg = Arc::new(msg);
                self.cache
                    .insert(&name, q.qtype(), msg.clone(), Instant::now());
                let f = filter(&policy, &decision, q.query.name(), &msg, self.ttl_max, 0);
                self.answer(rec, f, &q, &name, transport)
            }
            Err(e) => {
                rec.error = Some(e.to_string());
                let out = encode(&q.response(ResponseCode::ServFail));
                self.done(rec, &decision, None, out, transport, &q)
            }
        }
    }

    /// SERVFAIL, recorded with the cause, for a query that found too many
    /// others waiting for the upstreams.
    pub fn busy(&self, f: InFlight) -> Vec<u8> {
        let InFlight {
            q,
            decision,
            mut rec,
            transport,
            ..
        } = f;
        rec.error = Some("too many queries waiting for the upstreams; answered SERVFAIL".into());
        let out = encode(&q.response(ResponseCode::ServFail));
        self.done(rec, &decision, None, out, transport, &q)
    }

    /// A filtered upstream answer: grants, then the response.
    fn answer(
        &self,
        mut rec: FlowRecord,
        f: Filtered,
        q: &Question,
        name: &str,
        transport: Transport,
    ) -> Vec<u8> {
        rec.error.clone_from(&f.error);
        if !f.decision.passes() {
            return self.blocked(rec, &f.decision, q, transport);
        }
        if f.decision.verdict == Verdict::Allow {
            if let Some(zone) = &f.decision.zone {
                let now = Instant::now();
                for &(ip, ttl) in &f.addrs {
                    let ttl = Duration::from_secs(u64::from(ttl));
                    self.grants.insert(zone, ip, name, ttl, now);
                }
            }
        }
        let mut m = q.response(f.rcode);
        m.add_answers(f.answers.iter().cloned());
        m.add_authorities(f.authorities);
        let out = encode(&m);
        self.done(rec, &f.decision, Some(&f.answers), out, transport, q)
    }

    /// A special-use name, answered here and never forwarded: loopback
    /// addresses for `localhost` (RFC 6761: no data for other types),
    /// NXDOMAIN for the rest.
    fn special(
        &self,
        rec: FlowRecord,
        decision: &Decision,
        q: &Question,
        name: &str,
        transport: Transport,
    ) -> Vec<u8> {
        let loopback =
            guard::special_name(name).is_some_and(|s| s.treatment == NameTreatment::Loopback);
        let mut answers = Vec::new();
        let code = if loopback {
            let owner = q.query.name().clone();
            let a = RData::A(rdata::A(Ipv4Addr::LOCALHOST));
            let aaaa = RData::AAAA(rdata::AAAA(Ipv6Addr::LOCALHOST));
            match q.qtype() {
                RecordType::A => answers.push(Record::from_rdata(owner, LOCAL_TTL, a)),
                RecordType::AAAA => answers.push(Record::from_rdata(owner, LOCAL_TTL, aaaa)),
                RecordType::ANY => {
                    answers.push(Record::from_rdata(owner.clone(), LOCAL_TTL, a));
                    answers.push(Record::from_rdata(owner, LOCAL_TTL, aaaa));
                }
                _ => {}
            }
            ResponseCode::NoError
        } else {
            ResponseCode::NXDomain
        };
        let mut m = q.response(code);
        m.add_answers(answers.iter().cloned());
        let out = encode(&m);
        self.done(rec, decision, Some(&answers), out, transport, q)
    }

    /// The configured answer for a name the zone may not resolve.
    fn blocked(
        &self,
        rec: FlowRecord,
        decision: &Decision,
        q: &Question,
        transport: Transport,
    ) -> Vec<u8> {
        let (code, sink) = match self.blocked {
            BlockedAnswer::Nxdomain => (ResponseCode::NXDomain, None),
            BlockedAnswer::Refused => (ResponseCode::Refused, None),
            BlockedAnswer::Sinkhole(ip) => (ResponseCode::NoError, Some(ip)),
        };
        let mut m = q.response(code);
        let owner = q.query.name().clone();
        let record = match (sink, q.qtype()) {
            (Some(IpAddr::V4(v4)), RecordType::A) => Some(Record::from_rdata(
                owner,
                SINKHOLE_TTL,
                RData::A(rdata::A(v4)),
            )),
            (Some(IpAddr::V6(v6)), RecordType::AAAA) => Some(Record::from_rdata(
                owner,
                SINKHOLE_TTL,
                RData::AAAA(rdata::AAAA(v6)),
            )),
            _ => None,
        };
        let answers: Vec<Record> = record.into_iter().collect();
        m.add_answers(answers.iter().cloned());
        let out = encode(&m);
        self.done(rec, decision, Some(&answers), out, transport, q)
    }

    /// Truncates for UDP, records, counts; the bytes to send.
    fn done(
        &self,
        mut rec: FlowRecord,
        decision: &Decision,
        answers: Option<&[Record]>,
        mut out: Vec<u8>,
        transport: Transport,
        q: &Question,
    ) -> Vec<u8> {
        if transport == Transport::Udp && out.len() > q.udp_limit() {
            // The client retries over TCP (RFC 7766).
            if let Ok(m) = Message::from_vec(&out) {
                out = encode(&m.truncate());
            }
        }
        rec.apply_decision(decision);
        rec.answers = answers.map(|a| a.iter().map(answer_text).collect());
        rec.bytes_in = out.len() as u64;
        self.shared
            .metrics
            .dns_query(decision.zone.as_deref(), decision.verdict);
        rec.finish(SystemTime::now());
        self.shared.recorder.record(rec);
        out
    }
}

/// An answer as the flow record shows it: the bare address for A and AAAA,
/// `TYPE data` for the rest.
fn answer_text(r: &Record) -> String {
    match &r.data {
        RData::A(a) => a.0.to_string(),
        RData::AAAA(a) => a.0.to_string(),
        data => {
            let mut s = format!("{} {data}", r.record_type());
            if s.len() > ANSWER_TEXT_MAX {
                let mut cut = ANSWER_TEXT_MAX;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
                s.push('…');
            }
            s
        }
    }
}
