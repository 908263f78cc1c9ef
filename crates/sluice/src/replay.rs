//! `sluice replay`: every recorded flow judged again under a new policy
//! (`Policy::replay`: both phases, the recorded `dst_ip` as the address
//! phase, never a resolver), and what would change: newly denied and newly
//! allowed flows by zone and new rule, with counts, bytes and examples.
//!
//! A report-mode would-be denial counts as a denial, as in `sluice check`.
//! Not replayed, and counted apart: DNS queries (`listener: dns`), records
//! that never reached a policy decision (bad requests, invalid
//! destinations, failed logins, no zone), and flows decided outside the
//! policy (inspectors, `guard/self`, `guard/sni-mismatch`), which a new
//! policy does not change.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context, Result};
use serde::Serialize;
use sluice_observe::{FlowRecord, Listener};
use sluice_policy::{Destination, Policy, Request, Verdict, ids};

use crate::records;

/// Examples kept per change (the smallest, so output is deterministic).
const EXAMPLES: usize = 3;
/// Previous rules listed per change.
const WAS: usize = 8;

/// Which way a flow's verdict moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    NewlyDenied,
    NewlyAllowed,
}

/// Flows that changed the same way, in one zone, by one new rule.
#[derive(Debug, Default, Serialize)]
struct Group {
    zone: Option<String>,
    rule: String,
    enforced: bool,
    flows: u64,
    bytes_out: u64,
    bytes_in: u64,
    was: BTreeSet<String>,
    examples: BTreeSet<String>,
}

/// The whole report.
#[derive(Debug, Default, Serialize)]
struct Report {
    records: u64,
    judged: u64,
    unchanged: u64,
    /// Same verdict, another rule.
    rule_changed: u64,
    not_replayed: NotReplayed,
    newly_denied: Vec<Group>,
    newly_allowed: Vec<Group>,
}

#[derive(Debug, Default, Serialize)]
struct NotReplayed {
    dns: u64,
    no_decision: u64,
    outside_policy: u64,
}

/// Runs `sluice replay`: exit 0 when nothing changes, 1 when something
/// does, 2 on usage or configuration errors.
pub fn main(config: &PathBuf, paths: &[PathBuf], json: bool) -> ExitCode {
    match replay(config, paths) {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                print!("{}", table(&report));
            }
            if report.newly_denied.is_empty() && report.newly_allowed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn replay(config: &PathBuf, paths: &[PathBuf]) -> Result<Report> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("{}: cannot read", config.display()))?;
    let name = config.display().to_string();
    let now = crate::run::now_ms();
    let mut policy = Policy::load_at(&text, &name, now).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut report = Report::default();
    let mut groups: BTreeMap<(Change, Option<String>, String, bool), Group> = BTreeMap::new();
    report.records = records::for_each(paths, |r| {
        let Some((dest, port)) = judgeable(r, &mut report.not_replayed) else {
            return;
        };
        report.judged += 1;
        // Each record is judged as the gateway would have at its `ts`:
        // rules that had expired by then match nothing. The policy is
        // compiled again only when a record falls on the other side of an
        // expiry than the last one.
        let at = parse_ts(&r.ts).unwrap_or(now);
        if !policy.same_at(at) {
            if let Ok(p) = Policy::load_at(&text, &name, at) {
                policy = p;
            }
        }
        let req = Request {
            src: r.src.ip(),
            user: r.user.as_deref(),
            dest: &dest,
            port,
        };
        let d = policy.replay(&req, r.dst_ip);
        let change = match (r.verdict, d.verdict) {
            (Verdict::Allow, Verdict::Deny) => Change::NewlyDenied,
            (Verdict::Deny, Verdict::Allow) => Change::NewlyAllowed,
            _ => {
                if *d.rule == *r.rule {
                    report.unchanged += 1;
                } else {
                    report.rule_changed += 1;
                }
                return;
            }
        };
        let zone = d.zone.as_deref().map(str::to_owned);
        let enforced = d.verdict == Verdict::Allow || d.enforced;
        let g = groups
            .entry((change, zone.clone(), d.rule.to_string(), enforced))
            .or_insert_with(|| Group {
                zone,
                rule: d.rule.to_string(),
                enforced,
                ..Group::default()
            });
        g.flows += 1;
        g.bytes_out = g.bytes_out.saturating_add(r.bytes_out);
        g.bytes_in = g.bytes_in.saturating_add(r.bytes_in);
        keep_smallest(&mut g.was, r.rule.clone(), WAS);
        keep_smallest(
            &mut g.examples,
            format!("{}:{port}", dest_text(&dest)),
            EXAMPLES,
        );
    })?;
    for ((change, ..), g) in groups {
        match change {
            Change::NewlyDenied => report.newly_denied.push(g),
            Change::NewlyAllowed => report.newly_allowed.push(g),
        }
    }
    Ok(report)
}

/// A record's `ts` (RFC 3339) as unix ms.
fn parse_ts(ts: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

fn keep_smallest(set: &mut BTreeSet<String>, v: String, max: usize) {
    set.insert(v);
    if set.len() > max {
        set.pop_last();
    }
}

fn dest_text(d: &Destination) -> String {
    match d {
        Destination::Ip(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        other => other.to_string(),
    }
}

/// The destination and port to judge, or `None` (counted) for a record a
/// new policy cannot judge differently.
fn judgeable(r: &FlowRecord, n: &mut NotReplayed) -> Option<(Destination, u16)> {
    if r.listener == Listener::Dns {
        n.dns += 1;
        return None;
    }
    let rule = r.rule.as_str();
    if rule.starts_with("inspect/") || rule == ids::GUARD_SELF || rule == ids::GUARD_SNI_MISMATCH {
        n.outside_policy += 1;
        return None;
    }
    let undecided = r.zone.is_none()
        || rule.is_empty()
        || [
            ids::BAD_REQUEST,
            ids::INVALID,
            ids::AUTH_FAILED,
            ids::NOT_REDIRECTED,
            ids::NO_ZONE,
        ]
        .contains(&rule);
    let dest = match (&r.dst_host, r.dst_ip) {
        (Some(h), _) => Destination::parse(h).ok(),
        (None, Some(ip)) => Some(Destination::Ip(ip)),
        (None, None) => None,
    };
    match (undecided, dest, r.dst_port) {
        (false, Some(d), Some(p)) => Some((d, p)),
        _ => {
            n.no_decision += 1;
            None
        }
    }
}

fn table(r: &Report) -> String {
    let mut out = format!(
        "{} records: {} judged, {} unchanged, {} allowed or denied by another rule, {} newly denied, {} newly allowed\n\
         not replayed: {} without a decision (bad requests, invalid destinations, no zone), {} dns queries, {} decided outside the policy\n",
        r.records,
        r.judged,
        r.unchanged,
        r.rule_changed,
        r.newly_denied.iter().map(|g| g.flows).sum::<u64>(),
        r.newly_allowed.iter().map(|g| g.flows).sum::<u64>(),
        r.not_replayed.no_decision,
        r.not_replayed.dns,
        r.not_replayed.outside_policy,
    );
    let mut rows = vec![[
        "CHANGE".to_owned(),
        "ZONE".to_owned(),
        "RULE".to_owned(),
        "FLOWS".to_owned(),
        "BYTES_OUT".to_owned(),
        "BYTES_IN".to_owned(),
        "WAS".to_owned(),
        "EXAMPLES".to_owned(),
    ]];
    for (what, groups) in [
        ("newly-denied", &r.newly_denied),
        ("newly-allowed", &r.newly_allowed),
    ] {
        for g in groups {
            let change = if g.enforced {
                what.to_owned()
            } else {
                format!("{what} (report)")
            };
            rows.push([
                change,
                g.zone.clone().unwrap_or_else(|| "-".to_owned()),
                g.rule.clone(),
                g.flows.to_string(),
                g.bytes_out.to_string(),
                g.bytes_in.to_string(),
                g.was.iter().cloned().collect::<Vec<_>>().join(","),
                g.examples.iter().cloned().collect::<Vec<_>>().join(" "),
            ]);
        }
    }
    if rows.len() == 1 {
        out.push_str("nothing changes\n");
        return out;
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
