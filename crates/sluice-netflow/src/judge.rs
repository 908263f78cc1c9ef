//! What an exported flow means, pure so that it is tested alone: which
//! side is the zone's host, the policy's decision for the other side, the
//! flow record, and the `bypass` alert when a zone's host reached an
//! outside address without a Sluice gateway — [`judge`].

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::json;
use sluice_observe::{Alert, AlertKind, FlowRecord, Listener, Protocol, Severity};
use sluice_policy::{Destination, Policy, Request, Verdict, ids};

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
    let decision = policy.replay(
        &Request {
            src: host,
            user: None,
            dest: &dest,
            port,
        },
        Some(remote),
    );
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
