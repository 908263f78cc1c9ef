//! Bytes → `sluice_netflow::Decoder::decode`, one decoder across inputs
//! (templates learnt from one input meet data in the next), from two
//! exporters. Invariants: no panic; the template cache and the pending
//! queue stay within their bounds.

#![no_main]

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Mutex,
    time::{Duration, Instant},
};

use libfuzzer_sys::fuzz_target;
use sluice_netflow::{Decoder, Limits};

static DECODER: Mutex<Option<Decoder>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = DECODER.lock().expect("not poisoned");
    let d = guard.get_or_insert_with(|| {
        Decoder::new(Limits {
            max_templates: 32,
            template_timeout: Duration::from_secs(60),
            pending_sets: 8,
        })
    });
    let exporter = IpAddr::V4(Ipv4Addr::new(192, 0, 2, data.first().map_or(1, |b| b & 1)));
    let mut out = Vec::new();
    let _ = d.decode(exporter, data, Instant::now(), &mut out);
    assert!(d.templates() <= 32);
    assert!(d.pending() <= 8);
});
