//! A recorded flow judged again under this policy (`sluice replay`): both
//! phases, with the recorded address as the address phase. Nothing is
//! resolved: a name that was never dialed gets phase one only.

use std::net::IpAddr;

use super::{Decision, Policy, Request};

impl Policy {
    /// Judge a recorded flow: `decide`, then `check_addresses` on the
    /// address the flow dialed (or, for an IP destination, asked for), if
    /// the record has one.
    pub fn replay(&self, req: &Request<'_>, dialed: Option<IpAddr>) -> Decision {
        let first = self.decide(req);
        match dialed {
            Some(ip) => self.check_addresses(&first, &[ip]).decision,
            None => first,
        }
    }
}
