//! What an exported flow means, pure so that it is tested alone: which
//! side is the zone's host, the policy's decision for the other side, the
//! flow record, and the `bypass` alert when a zone's host reached an
//! outside address without a Sluice gateway — [`judge`].

use std::{
    borrow::Cow,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::json;
use sluice_observe::{Alert, AlertKind, FlowRecord, Listener, Protocol, Severity};
use sluice_policy::{Decision, Destination, Policy, Request, Verdict, ids};

use crate::wire::Flow;

/// The name a DNS-derived grant gives `ip` in `zone`, if any.
pub type Names = dyn Fn(&str, IpAddr) -> Option<String> + Send + Sync;

/// What becomes of one exported flow.
#[derive(Debug)]
pub enum Judged {
    /// To or from a gateway: the gateway recorded it; only counted.
    Gateway,
    /// A record, and the bypass alert it raises, if any.
    Record(Box<FlowRecord>, Option<Box<Alert>>),
}

/// Decisions already made under one policy version, keyed by what a
/// NetFlow decision depends on when a zone matched and no DNS name is
/// involved: the zone, the destination address and the port. Exported
/// flows repeat the same few destinations per zone, and `Policy::replay`
/// (both phases, a reason formatted each time) was 9 % of the collector's
/// CPU (perf, bench/netflow.sh); a hit is one hash lookup and a clone.
/// Bounded: emptied when full. Tied to one policy: [`Decisions::for_policy`]
/// empties it when the policy in force is another `Arc` (a reload).
#[derive(Debug, Default)]
pub struct Decisions {
    /// Held, not only compared: a freed policy's address could be reused
    /// by the next one, and the zone keys point into it.
    policy: Option<Arc<Policy>>,
    /// Keyed by the address of the zone's name inside `policy` (stable
    /// while it is held; comparing names was a cache miss a lookup).
    map: hashbrown::HashMap<(usize, IpAddr, u16), Decision>,
}

/// Entries a [`Decisions`] cache holds before it starts over.
const DECISIONS: usize = 16_384;

// === impl Decisions ===

impl Decisions {
    /// The cache, emptied if `policy` is not the one its decisions came
    /// from.
    pub fn for_policy(&mut self, policy: &Arc<Policy>) -> &mut Decisions {
        if !self.policy.as_ref().is_some_and(|p| Arc::ptr_eq(p, policy)) {
            self.map.clear();
            self.policy = Some(policy.clone());
        }
        self
    }

    /// The decision for `req` to `ip` from `zone`, the name
    /// [`Policy::zone_of`] returned for its source; cached only when
    /// `policy` is the one this cache holds (the caller's
    /// [`Decisions::for_policy`]).
    fn decide(
        &mut self,
        policy: &Policy,
        zone: &str,
        req: &Request<'_>,
        ip: IpAddr,
    ) -> Cow<'_, Decision> {
        if !self
            .policy
            .as_deref()
            .is_some_and(|p| std::ptr::eq(p, policy))
        {
            return Cow::Owned(policy.replay(req, Some(ip)));
        }
        if self.map.len() >= DECISIONS {
            self.map.clear();
        }
        Cow::Borrowed(
            self.map
                .entry((zone.as_ptr() as usize, ip, req.port))
                .or_insert_with(|| policy.replay(req, Some(ip))),
        )
    }
}

/// Judges one flow `exporter` (its address as text, made once a
/// datagram) reported, under `policy` (whose `netflow.gateways` say which
/// addresses are gateways). `now` stands in for timestamps the exporter
/// did not send.
pub fn judge(
    policy: &Policy,
    names: Option<&Names>,
    exporter: &str,
    f: &Flow,
    now: SystemTime,
) -> Judged {
    judge_cached(policy, names, exporter, f, now, None)
}

/// [`judge`] reusing decisions from `cache` (which the caller tied to
/// `policy` with [`Decisions::for_policy`]): the same result.
pub fn judge_cached(
    policy: &Policy,
    names: Option<&Names>,
    exporter: &str,
    f: &Flow,
    now: SystemTime,
    cache: Option<&mut Decisions>,
) -> Judged {
    let gateways = &policy.config().netflow.gateways;
    let (src, dst) = (f.src.to_canonical(), f.dst.to_canonical());
    if gateways
        .iter()
        .any(|g| g.contains(&src) || g.contains(&dst))
    {
        return Judged::Gateway;
    }
    // The zone's host is always `src`: a reply (from an address in no zone
    // to one in a zone) is turned around and counts as `bytes_in`.
    let (src_zone, dst_zone) = (policy.zone_of(src, None), policy.zone_of(dst, None));
    let reply = src_zone.is_none() && dst_zone.is_some();
    let (host, host_port, remote, remote_port, zone, remote_zone) = if reply {
        (dst, f.dst_port, src, f.src_port, dst_zone, src_zone)
    } else {
        (src, f.src_port, dst, f.dst_port, src_zone, dst_zone)
    };
    let protocol = match f.proto {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        1 | 58 => Protocol::Icmp,
        _ => Protocol::Other,
    };
    // Ports mean nothing for ICMP and other protocols (exporters put the
    // ICMP type and code there).
    let ported = matches!(protocol, Protocol::Tcp | Protocol::Udp);
    let port = if ported { remote_port } else { 0 };
    let grant = zone
        .and_then(|z| names?(z, remote))
        .and_then(|n| match Destination::parse(&n) {
            Ok(Destination::Name(n)) => Some(n),
            _ => None,
        });
    let dest = match &grant {
        Some(n) => Destination::Name(n.clone()),
        None => Destination::Ip(remote),
    };
    let req = Request {
        src: host,
        user: None,
        dest: &dest,
        port,
    };
    // Only a zone's decision for an address is cached: without a zone the
    // reason names the source; with a name, the name decides too.
    let decision = match (cache, zone, &grant) {
        (Some(c), Some(z), None) => c.decide(policy, z, &req, remote),
        _ => Cow::Owned(policy.replay(&req, Some(remote))),
    };
    let at = |ms: Option<i64>| {
        ms.and_then(|ms| u64::try_from(ms).ok())
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    };
    let end = at(f.end_ms).unwrap_or(now);
    let start = at(f.start_ms).filter(|s| *s <= end).unwrap_or(end);
    let mut r = FlowRecord::new(
        Listener::Netflow,
        protocol,
        SocketAddr::new(host, if ported { host_port } else { 0 }),
        start,
    );
    r.apply_decision(&decision);
    // Seen, not stopped: Sluice never had this flow in hand.
    r.enforced = false;
    r.dst_host.clone_from(&grant);
    r.grant = grant;
    r.dst_ip = Some(remote);
    r.dst_port = ported.then_some(remote_port);
    if reply {
        r.bytes_in = f.bytes;
    } else {
        r.bytes_out = f.bytes;
    }
    r.packets = Some(f.packets);
    r.exporter = Some(exporter.to_owned());
    r.finish(end);

    let outside = remote_zone.is_none() && decision.rule.as_ref() != ids::GUARD_SPECIAL;
    let alert = (zone.is_some() && outside && !policy.allows_bypass(&decision))
        .then(|| Box::new(bypass(&r, &decision, protocol, port, end)));
    Judged::Record(Box::new(r), alert)
}

/// The resolver protocol a flow to `port` speaks, if it is one.
fn service(protocol: Protocol, port: u16) -> Option<&'static str> {
    match (protocol, port) {
        (Protocol::Tcp | Protocol::Udp, 53) => Some("dns"),
        (Protocol::Tcp, 853) => Some("dot"),
        (Protocol::Udp, 853) => Some("doq"),
        (Protocol::Udp, 443) => Some("quic"),
        _ => None,
    }
}

fn bypass(
    r: &FlowRecord,
    decision: &sluice_policy::Decision,
    protocol: Protocol,
    port: u16,
    at: SystemTime,
) -> Alert {
    let denied = decision.verdict == Verdict::Deny;
    let severity = if denied {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let dst_ip = r.dst_ip.map(|ip| ip.to_string()).unwrap_or_default();
    let dst = r.dst_host.clone().unwrap_or_else(|| dst_ip.clone());
    let svc = service(protocol, port);
    let what = match svc {
        Some("dns") => " (DNS to an outside resolver)",
        Some("dot") => " (DNS over TLS to an outside resolver)",
        Some("doq") => " (DNS over QUIC to an outside resolver)",
        Some("quic") => " (QUIC)",
        _ => "",
    };
    let zone = r.zone.as_deref().unwrap_or_default();
    let would = if denied {
        format!("the policy would have denied it ({})", decision.rule)
    } else {
        format!("the policy would have allowed it ({})", decision.rule)
    };
    let summary = format!(
        "{} in zone {zone} reached {dst}:{port}/{}{what} without a Sluice gateway (reported by {}); {would}",
        r.src.ip(),
        protocol.as_str(),
        r.exporter.as_deref().unwrap_or_default(),
    );
    let mut a = Alert::new(AlertKind::Bypass, severity, at, summary);
    a.zone = r.zone.clone();
    a.src = Some(r.src.ip().to_string());
    a.dst = Some(dst);
    a.flows = vec![r.id().to_owned()];
    a.evidence = json!({
        "service": svc,
        "verdict": decision.verdict.as_str(),
        "rule": &*decision.rule,
        "reason": decision.reason,
        "dst_ip": dst_ip,
        "dst_port": port,
        "protocol": protocol.as_str(),
        "exporter": r.exporter,
        "bytes": r.bytes_out + r.bytes_in,
        "packets": r.packets,
    });
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(extra: &str) -> Arc<Policy> {
        let text = format!(
            "listen:\n  netflow: 127.0.0.1:0\nnetflow:\n  exporters: [127.0.0.0/8]\n  gateways: [10.0.9.1/32]\n\
             zones:\n  - name: web\n    sources: [10.0.1.0/24]\n    allow:\n      - cidr: 93.184.0.0/16\n        ports: [443]\n{extra}\
             \n  - name: ops\n    sources: [10.0.2.0/24]\n    mode: report\n    deny:\n      - cidr: 198.51.0.0/16\n"
        );
        Arc::new(Policy::load(&text, "t.yaml").unwrap())
    }

    fn flow(i: u32) -> Flow {
        let dsts = [
            [93, 184, 0, 1],
            [93, 184, 7, 9],
            [198, 51, 1, 2],
            [8, 8, 8, 8],
            [10, 0, 1, 9],
            [10, 0, 9, 1],
            [127, 0, 0, 1],
        ];
        let srcs = [[10, 0, 1, 5], [10, 0, 2, 5], [10, 0, 3, 5], [93, 184, 0, 1]];
        Flow {
            src: IpAddr::from(srcs[(i % 4) as usize]),
            dst: IpAddr::from(dsts[(i / 4 % 7) as usize]),
            src_port: 40_000,
            dst_port: [443, 53, 80, 853][(i / 28 % 4) as usize],
            proto: [6, 17, 1, 47][(i / 112 % 4) as usize],
            bytes: 1000,
            packets: 2,
            start_ms: Some(1_700_000_000_000),
            end_ms: Some(1_700_000_001_000),
            version: 10,
        }
    }

    /// Everything but the record's fresh id, and the alert.
    fn plain(j: Judged) -> Option<(serde_json::Value, Option<serde_json::Value>)> {
        match j {
            Judged::Gateway => None,
            Judged::Record(r, a) => {
                let mut v = serde_json::to_value(&*r).unwrap();
                v["id"] = serde_json::Value::Null;
                let a = a.map(|a| {
                    let mut a = serde_json::to_value(&*a).unwrap();
                    a["id"] = serde_json::Value::Null;
                    a["flows"] = serde_json::Value::Null;
                    a
                });
                Some((v, a))
            }
        }
    }

    /// With the decision cache, every flow (zones, no zone, replies,
    /// guarded, gateway, each protocol) is judged exactly as without it,
    /// twice over (misses, then hits), and a reload's new policy is
    /// obeyed at once, not the cached decisions of the old one.
    #[test]
    fn cached_decisions_judge_like_fresh_ones_and_follow_a_reload() {
        let now = SystemTime::UNIX_EPOCH;
        let mut cache = Decisions::default();
        let old = policy("");
        let new = policy("      - cidr: 198.51.0.0/16\n        ports: any\n");
        for p in [&old, &new, &old] {
            for _round in 0..2 {
                for i in 0..448 {
                    let f = flow(i);
                    let fresh = plain(judge(p, None, "127.0.0.1", &f, now));
                    let c = cache.for_policy(p);
                    let cached = plain(judge_cached(p, None, "127.0.0.1", &f, now, Some(c)));
                    assert_eq!(fresh, cached, "flow {i}: {f:?}");
                }
            }
        }
        // The two policies do judge some flow differently (so a stale
        // cache would have been caught).
        let differs = (0..448).any(|i| {
            plain(judge(&old, None, "e", &flow(i), now))
                != plain(judge(&new, None, "e", &flow(i), now))
        });
        assert!(differs);
    }
}
