//! What every proxied tunnel shares once its destination is dialed: the
//! domain-fronting check on the client's first bytes (DESIGN.md "Domain
//! fronting", `tls_sni_must_match`) and folding the relay's outcome into the
//! flow record. The HTTP CONNECT and SOCKS5 CONNECT listeners both use it,
//! so the same tunnel gets the same verdict and record on either.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use sluice_observe::FlowRecord;
use sluice_policy::{Destination, Policy, Request as PolicyRequest};

use crate::{
    relay::{HelloCheck, Relayed},
    tls::Hello,
};

/// Rule id for a tunnel refused by its ClientHello (domain fronting).
pub const SNI_RULE: &str = "guard/sni-mismatch";

/// Separates rule and reason in a refusal from the hello check.
const SEP: char = '\u{1f}';

/// The domain-fronting check for a tunnel to `dest:port` dialed at `peer`,
/// asked for by `src` (and `user`). A ClientHello whose SNI names another
/// host than `dest` is refused (with `tls_sni_must_match`); a tunnel to an
/// IP literal is judged by the name its SNI claims as well.
pub fn sni_check(
    policy: Arc<Policy>,
    dest: &Destination,
    port: u16,
    peer: SocketAddr,
    src: IpAddr,
    user: Option<String>,
) -> Option<HelloCheck> {
    let must_match = policy.config().tls_sni_must_match;
    let dest = dest.clone();
    Some(Box::new(move |hello: &Hello| -> Result<(), String> {
        let sni = match hello {
            Hello::NotTls | Hello::ClientHello { sni: None } | Hello::Incomplete(_) => {
                return Ok(());
            }
            Hello::Malformed(why) if must_match => {
                return Err(format!("{SNI_RULE}{SEP}malformed TLS ClientHello: {why}"));
            }
            Hello::Malformed(_) => return Ok(()),
            Hello::ClientHello { sni: Some(s) } => s,
        };
        let sni_dest = match Destination::parse(sni) {
            Ok(d) => d,
            Err(e) if must_match => return Err(format!("{SNI_RULE}{SEP}unusable TLS SNI: {e}")),
            Err(_) => return Ok(()),
        };
        match (&dest, &sni_dest) {
            (Destination::Name(_), _) if must_match && sni_dest != dest => Err(format!(
                "{SNI_RULE}{SEP}TLS SNI {sni_dest} differs from CONNECT host {dest} (domain fronting)"
            )),
            (Destination::Ip(_), Destination::Name(_)) => {
                // An IP-literal CONNECT is judged by the name it claims too.
                let d = policy.decide(&PolicyRequest {
                    src,
                    user: user.as_deref(),
                    dest: &sni_dest,
                    port,
                });
                let c = policy.check_addresses(&d, &[peer.ip()]);
                if c.decision.passes() {
                    Ok(())
                } else {
                    Err(format!(
                        "{}{SEP}TLS SNI {sni_dest}: {}",
                        c.decision.rule, c.decision.reason
                    ))
                }
            }
            _ => Ok(()),
        }
    }))
}

/// Copies a finished relay's byte counts, SNI and error into `rec`; a
/// refusal by the hello check turns the record into an enforced denial.
pub fn apply_relayed(rec: &mut FlowRecord, r: Relayed) {
    rec.bytes_out = r.bytes_out;
    rec.bytes_in = r.bytes_in;
    rec.sni = r.sni;
    rec.error = r.error;
    if let Some((rule, reason)) = r.denied.as_deref().and_then(|d| d.split_once(SEP)) {
        rec.verdict = "deny".into();
        rec.enforced = true;
        rec.rule = rule.to_owned();
        rec.reason = reason.to_owned();
    }
}
