//! The record stage's seam: [`RecordSink`], where every listener (the proxies
//! through `sluice-net`'s gateway, the DNS forwarder directly) hands its
//! finished flow records. The binary implements it with the fan-out to
//! metrics, the admin view, the sink and the detectors.

use crate::FlowRecord;

/// Takes finished flow records. Must never block the data path.
pub trait RecordSink: Send + Sync {
    /// One finished record (its end time stamped).
    fn record(&self, r: FlowRecord);
}
