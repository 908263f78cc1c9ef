//! Sluice's policy: the configuration model, its validation with positioned
//! errors, and the compiled policy that decides every outbound connection.
//!
//! This crate is pure: no I/O, no clock, no async runtime. Everything that
//! decides asks it, which is what makes it fuzzable and benchmarkable alone.
//!
//! # Layout
//!
//! - `model`: the configuration types.
//! - `load`: YAML text to model by one table of keys (which also gives the
//!   JSON Schema and each key's reload semantics), collecting every error
//!   with its position.
//! - `dest`: client-written destinations to normalised names and addresses.
//! - `guard`: the special-address table and the rule that lifts it.
//! - `matcher`: host and CIDR lookup structures.
//! - `policy`: compilation, zone selection, `decide` and `check_addresses`
//!   (and `replay`: a recorded flow judged again, never resolving).
//! - `propose`: a least-privilege allowlist from observed flows (`sluice learn`).

pub mod dest;
pub mod guard;
pub mod load;
mod matcher;
pub mod model;
pub mod policy;
pub mod propose;

pub use dest::{DestError, Destination, parse_port};
pub use load::{
    ConfigError, ConfigErrors, ConfigWarning, KeyDoc, Reload, keys, parse_cidr, parse_config,
    restart_needed, schema,
};
pub use model::{Config, Mode, Ports};
pub use policy::{
    AddressCheck, Decision, LoadError, Pending, Policy, Rejected, Request, RuleInfo, Verdict,
    hash_text, ids,
};
