//! Helpers shared by this crate's test binaries and benches.

pub mod scale;
