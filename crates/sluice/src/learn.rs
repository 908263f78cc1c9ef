//! `sluice learn`: read flow logs, pick the records that count as evidence
//! for an allow rule, and print the proposal `sluice_policy::propose`
//! writes. Which records count is decided here (it is about records, not
//! policy):
//!
//! - allowed flows, and report-mode would-be denials by the zone's default
//!   (no allow rule matched): both are traffic the zone needs;
//! - never guard denials (`guard/*`), enforced denials, would-be denials by
//!   an explicit deny rule (that rule is kept and would still deny), flows
//!   refused by an inspector, or records without a decision;
//! - never DNS records (`listener: dns`): a query is not a connection, and a
//!   name only ever resolved needs no allow rule to be resolved again.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result, bail};
use sluice_observe::{FlowRecord, Listener};
use sluice_policy::{
    Destination, Policy, Verdict, ids,
    propose::{Learner, Observation, Proposal, Target},
};

use crate::{records, run::DEFAULT_CONFIG};

/// Why a record was not learned from, counted for the header.
#[derive(Debug, Default)]
struct Skipped {
    dns: u64,
    guard: u64,
    denied: u64,
    deny_rule: u64,
    undecided: u64,
    other_zone: u64,
}

/// Runs `sluice learn`; exit 0 with the proposal on stdout, 2 on errors.
pub fn main(
    paths: &[PathBuf],
    current: Option<&PathBuf>,
    zone: Option<&str>,
    min_count: u64,
) -> ExitCode {
    match learn(paths, current, zone, min_count) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn learn(
    paths: &[PathBuf],
    current: Option<&PathBuf>,
    zone: Option<&str>,
    min_count: u64,
) -> Result<String> {
    let (text, base_name) = match current {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?,
            p.display().to_string(),
        ),
        None => (DEFAULT_CONFIG.to_owned(), "the embedded default".to_owned()),
    };
    let base = Policy::load(&text, &base_name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut learner = Learner::default();
    let mut skipped = Skipped::default();
    let mut zone_seen = false;
    let mut too_many = None;
    let total = records::for_each(paths, |r| {
        if too_many.is_some() {
            return;
        }
        zone_seen |= zone.is_some() && r.zone.as_deref() == zone;
        if zone.is_some_and(|z| r.zone.as_deref() != Some(z)) {
            skipped.other_zone += 1;
            return;
        }
        match evidence(r) {
            Ok(o) => {
                if let Err(e) = learner.observe(&o) {
                    too_many = Some(e);
                }
            }
            Err(why) => why(&mut skipped),
        }
    })?;
    if let Some(e) = too_many {
        bail!("{e}");
    }
    if let Some(z) = zone {
        if !zone_seen && !base.config().zones.iter().any(|bz| bz.name == z) {
            bail!("zone `{z}` is neither in the base configuration nor in the records");
        }
    }
    let files: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let header = vec![
        format!("From {}.", files.join(", ")),
        format!(
            "{total} records, {} learned from; not learned from: {} dns queries, {} guard denials, \
             {} enforced denials, {} would-be denials by a deny rule, {} without a decision{}.",
            learner.observed(),
            skipped.dns,
            skipped.guard,
            skipped.denied,
            skipped.deny_rule,
            skipped.undecided,
            if zone.is_some() {
                format!(", {} of other zones", skipped.other_zone)
            } else {
                String::new()
            }
        ),
    ];
    let proposal = Proposal {
        base: &base,
        base_name: &base_name,
        only_zone: zone,
        min_count: min_count.max(1),
        header,
    };
    let out = learner.render(&proposal);
    // Never hand out a file that `sluice validate` would refuse.
    Policy::load(&out, "<proposal>")
        .map_err(|e| anyhow::anyhow!("internal error: the proposal does not validate:\n{e}"))?;
    Ok(out)
}

type Why = fn(&mut Skipped);

/// The observation a record is evidence for, or which counter it adds to.
fn evidence(r: &FlowRecord) -> Result<Observation<'_>, Why> {
    if r.listener == Listener::Dns {
        return Err(|s| s.dns += 1);
    }
    if r.rule.starts_with("guard/") {
        return Err(|s| s.guard += 1);
    }
    let Some(zone) = r.zone.as_deref() else {
        return Err(|s| s.undecided += 1);
    };
    if r.rule.is_empty() || r.rule.starts_with("inspect/") || r.rule.starts_with("default/") {
        return Err(|s| s.undecided += 1);
    }
    match (r.verdict, r.enforced) {
        (Verdict::Allow, _) => {}
        (Verdict::Deny, false) if r.rule == ids::DEFAULT => {}
        (Verdict::Deny, false) => return Err(|s| s.deny_rule += 1),
        (Verdict::Deny, true) => return Err(|s| s.denied += 1),
    }
    let Some(port) = r.dst_port.filter(|p| *p != 0) else {
        return Err(|s| s.undecided += 1);
    };
    let target = match (&r.dst_host, r.dst_ip) {
        (Some(h), dialed) => match Destination::parse(h) {
            Ok(Destination::Name(n)) => Target::Name(n, dialed),
            Ok(Destination::Ip(ip)) => Target::Ip(ip),
            Err(_) => return Err(|s| s.undecided += 1),
        },
        (None, Some(ip)) => Target::Ip(ip),
        (None, None) => return Err(|s| s.undecided += 1),
    };
    Ok(Observation {
        zone,
        src: r.src.ip(),
        target,
        port,
        bytes_out: r.bytes_out,
        bytes_in: r.bytes_in,
        start: &r.start,
        end: &r.ts,
    })
}
