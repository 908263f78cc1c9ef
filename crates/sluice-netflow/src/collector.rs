//! The collector: `run_udp`'s handler. Each datagram is checked against
//! `netflow.exporters`, decoded (`wire`), and each flow judged (`judge`)
//! and handed to the record stage; bypass alerts go the same way. All of
//! it runs synchronously on the receive loop: decoding a datagram takes
//! microseconds and never waits, so there is nothing to spawn.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Instant, SystemTime},
};

use sluice_observe::{Metrics, RecordSink};
use sluice_policy::Policy;
use sluice_serve::{Datagram, Drain, run_udp};
use tokio::net::UdpSocket;

use crate::{
    judge::{Decisions, Judged, Names, judge_cached},
    wire::{Decoder, Drop, Flow, Limits},
};

/// The policy in force, asked for each datagram (so a reload's exporters,
/// gateways and rules apply at once).
pub type PolicyNow = dyn Fn() -> Arc<Policy> + Send + Sync;

/// The largest datagram read: the UDP maximum.
const MAX_DATAGRAM: usize = 65_535;

/// The NetFlow / IPFIX collector.
pub struct Collector {
    state: Mutex<State>,
    policy: Arc<PolicyNow>,
    names: Option<Arc<Names>>,
    recorder: Arc<dyn RecordSink>,
    metrics: Arc<Metrics>,
}

// === impl Collector ===

impl Collector {
    /// A collector judging by `policy`, recording through `recorder`,
    /// counting in `metrics`; `limits` bound its caches.
    pub fn new(
        limits: Limits,
        policy: Arc<PolicyNow>,
        recorder: Arc<dyn RecordSink>,
        metrics: Arc<Metrics>,
    ) -> Collector {
        let reasons = Drop::ALL.map(Drop::as_str);
        metrics.declare_netflow(&reasons);
        Collector {
            state: Mutex::new(State {
                decoder: Decoder::new(limits),
                decisions: Decisions::default(),
                flows: Vec::new(),
            }),
            policy,
            names: None,
            recorder,
            metrics,
        }
    }

    /// The same collector naming destinations by DNS-derived grants.
    #[must_use]
    pub fn with_names(mut self, names: Arc<Names>) -> Collector {
        self.names = Some(names);
        self
    }

    /// Takes one datagram from `from`.
    pub fn handle(&self, pkt: &[u8], from: SocketAddr) {
        self.metrics.netflow_packet();
        let policy = (self.policy)();
        let exporter = from.ip().to_canonical();
        let known = policy
            .config()
            .netflow
            .exporters
            .iter()
            .any(|n| n.contains(&exporter));
        if !known {
            self.metrics
                .netflow_dropped(Drop::UnknownExporter.as_str(), 1);
            return;
        }
        let Ok(mut guard) = self.state.lock() else {
            return;
        };
        let State {
            decoder,
            decisions,
            flows,
        } = &mut *guard;
        flows.clear();
        let decoded = decoder.decode(exporter, pkt, Instant::now(), flows);
        self.metrics.set_netflow_templates(decoder.templates());
        let o = match decoded {
            Ok(o) => o,
            Err(why) => {
                tracing::debug!(%from, reason = why.as_str(), "NetFlow datagram dropped");
                self.metrics.netflow_dropped(why.as_str(), 1);
                return;
            }
        };
        self.metrics
            .netflow_dropped(Drop::UnknownTemplate.as_str(), o.unknown_template);
        self.metrics
            .netflow_dropped(Drop::TemplateLimit.as_str(), o.template_limit);
        self.metrics
            .netflow_dropped(Drop::Malformed.as_str(), o.malformed);
        self.metrics.netflow_flows(flows.len() as u64);
        let now = SystemTime::now();
        let exporter = exporter.to_string();
        let decisions = decisions.for_policy(&policy);
        // The datagram's records go to the record stage together (one
        // write to the flow log), then its bypass alerts.
        let mut records = Vec::with_capacity(flows.len());
        let mut alerts = Vec::new();
        let mut gateway = 0;
        for f in flows.iter() {
            let names = self.names.as_deref();
            match judge_cached(&policy, names, &exporter, f, now, Some(decisions)) {
                Judged::Gateway => gateway += 1,
                Judged::Record(r, alert) => {
                    records.push(*r);
                    alerts.extend(alert);
                }
            }
        }
        drop(guard);
        for _ in 0..gateway {
            self.metrics.netflow_gateway_flow();
        }
        self.recorder.record_batch(records);
        for a in alerts {
            self.recorder.alert(*a);
        }
    }

    /// Serves `socket` until `drain` begins.
    pub async fn serve(self: Arc<Self>, socket: UdpSocket, drain: Arc<Drain>) {
        run_udp(socket, drain, MAX_DATAGRAM, 1, move |pkt, from| {
            self.handle(pkt, from);
            Datagram::Nothing
        })
        .await;
    }
}

/// What the receive loop keeps between datagrams, under one lock taken
/// once a datagram.
struct State {
    decoder: Decoder,
    decisions: Decisions,
    /// The decoded flows of the datagram at hand (reused: no allocation a
    /// datagram).
    flows: Vec<Flow>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").finish_non_exhaustive()
    }
}
