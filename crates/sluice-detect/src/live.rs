//! The engine behind `sluice run`: a [`sluice_observe::Detector`] on the
//! recorder fan-out. Per record it fills the destination's `country` (one
//! database lookup) and runs the engine under one short lock; alerts go
//! back to the recorder, which folds repeats and emits them. With a
//! [`Store`], [`Live::save`] (called off the data path, by a timer and at
//! shutdown) writes what changed.

use std::sync::{Arc, Mutex, MutexGuard};

use sluice_observe::{Alert, Detector, FlowRecord, Metrics};

use crate::{
    Obs,
    engine::Engine,
    geo::GeoDb,
    settings::{Settings, ZoneSettings},
    store::{Loaded, Store, StoreError},
};

/// The live detector; clones share one engine.
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Mutex<Engine>,
    geo: Option<Arc<GeoDb>>,
    store: Option<Store>,
    metrics: Arc<Metrics>,
}

// === impl Live ===

impl Live {
    /// A detector with `settings`, looking countries up in `geo`, keeping
    /// baselines in `store` (loaded now) and counting evictions in
    /// `metrics`.
    pub fn new(
        settings: Settings,
        geo: Option<Arc<GeoDb>>,
        store: Option<Store>,
        metrics: Arc<Metrics>,
    ) -> Result<(Live, Loaded), StoreError> {
        let mut engine = Engine::new(settings, geo.clone());
        let mut loaded = Loaded::default();
        if let Some(s) = &store {
            loaded = s.load(&mut engine)?;
            engine.track_changes();
        }
        let live = Live {
            inner: Arc::new(Inner {
                engine: Mutex::new(engine),
                geo,
                store,
                metrics,
            }),
        };
        Ok((live, loaded))
    }

    fn engine(&self) -> MutexGuard<'_, Engine> {
        // A panic in a detector leaves whole state behind: keep going.
        self.inner.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces what zones say (`countries`, `detect`), on reload.
    pub fn set_zones(&self, zones: ZoneSettings) {
        self.engine().set_zones(zones);
    }

    /// Writes what changed since the last save to the store, if there is
    /// one. Serializes under the lock, writes outside it.
    pub fn save(&self) -> Result<(), StoreError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        let (zones, sources, removed) = self.engine().take_changes();
        store.save(&zones, &sources, &removed)
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

impl Detector for Live {
    fn enrich(&self, r: &mut FlowRecord) {
        if r.country.is_some() {
            return;
        }
        if let (Some(geo), Some(ip)) = (&self.inner.geo, r.dst_ip) {
            r.country = geo.country(ip);
        }
    }

    fn observe(&self, r: &FlowRecord) -> Vec<Alert> {
        let Some(o) = Obs::of(r) else {
            return Vec::new();
        };
        let (alerts, evicted) = {
            let mut e = self.engine();
            (e.observe(&o), e.take_evictions())
        };
        if evicted > 0 {
            self.inner.metrics.detect_evicted(evicted);
        }
        alerts
    }

    /// One lock for the whole batch (a NetFlow datagram's thirty records)
    /// instead of one a record; the engine sees the same records in the
    /// same order, so the alerts are the same.
    fn observe_batch(&self, rs: &[FlowRecord], out: &mut Vec<Alert>) {
        let evicted = {
            let mut e = self.engine();
            for r in rs {
                if let Some(o) = Obs::of(r) {
                    out.extend(e.observe(&o));
                }
            }
            e.take_evictions()
        };
        if evicted > 0 {
            self.inner.metrics.detect_evicted(evicted);
        }
    }
}
