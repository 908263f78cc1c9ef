//! Detection: baselines of normal egress and the alerts raised when it
//! changes — a source sending far more than usual (`volume`), reaching a
//! destination its zone never used (`new-destination`), a country outside
//! its zone's list (`geo`), calling home at a regular interval
//! (`beaconing`), tunnelling data through DNS names (`dns-tunnel`), or
//! hitting many denied destinations at once (`denied-burst`).
//!
//! The same [`Engine`] runs live (a [`Live`] detector on the binary's
//! recorder fan-out) and offline (`sluice detect`, through [`replay`]).
//! It is pure where it counts: it takes one record ([`Obs`]) and the
//! record's own time and returns alerts; it reads no clock and does no I/O.
//! State is kept in bounded maps (least recently seen evicted, counted)
//! and, with `detect.state_dir`, saved to and loaded from an embedded
//! store ([`Store`]) in the same format live and offline.
//!
//! It must not touch the data path: the live detector only takes a short
//! lock per record and hands alerts to the recorder.
//!
//! # Layout
//!
//! - `obs`: [`Obs`], the fields detectors read, borrowed from a
//!   [`sluice_observe::FlowRecord`] or parsed straight from a flow-log line.
//! - `settings`: [`Settings`], thresholds and zones from the configuration.
//! - `engine`: [`Engine`], the state and the six detectors.
//! - `tunnel`: the DNS tunnelling score (moved from `sluice-dns`).
//! - `geo`: [`GeoDb`], country lookups in a MaxMind DB.
//! - `store`: [`Store`], baselines in redb across restarts.
//! - `live`: [`Live`], the engine behind `sluice run`'s recorder.
//! - `replay`: flow logs merged in event time for `sluice detect`.
//! - `reorder`: [`Reorder`], the same event-time order for records that
//!   arrive live (`sluice detect --follow`).

mod engine;
mod geo;
mod live;
mod obs;
mod reorder;
pub mod replay;
mod settings;
mod store;
pub mod tunnel;

pub use engine::Engine;
pub use geo::{GeoDb, GeoError};
pub use live::Live;
pub use obs::{Obs, ObsError, RecordLine, parse_ts_ms};
pub use reorder::Reorder;
pub use settings::{Settings, ZoneSettings};
pub use store::{Store, StoreError};
