//! The flow bus (docs/design.md "Fleet"): every replica publishes its flow
//! records and alerts to NATS JetStream, and followers read them back to
//! detect fleet-wide (`sluice detect --follow`). NATS does the clustering,
//! storage and consumer bookkeeping; this crate only names subjects,
//! publishes without ever making the data path wait, and follows.
//!
//! It keeps `async-nats` out of every other crate: the recorder
//! (`sluice-observe`) sees the bus only as a [`sluice_observe::FlowBus`].
//!
//! # Layout
//!
//! - `subject`: the subjects (`sluice.flows.<zone>.<p>`, `sluice.alerts`),
//!   the partition of a source address (FNV-1a 32, documented for other
//!   consumers) and a follower's share ([`Partition`], `K/N`). Pure.
//! - `publish`: [`BusQueue`], the recorder's bounded non-blocking handle,
//!   and [`Publisher`], the task that publishes what it queued (stream
//!   created if missing, reconnects, retries by message id, drops counted
//!   in [`BusMetrics`]).
//! - `follow`: [`follow`], the records of a follower's partitions from
//!   durable pull consumers, one per partition.

mod follow;
mod publish;
mod subject;

pub use follow::{ACK_EVERY, ACK_IDLE, FollowError, FollowOptions, Followed, Follower, follow};
pub use publish::{BusMetrics, BusOptions, BusQueue, Publisher};
pub use subject::{
    ALERTS, BadPartition, FLOWS, NO_ZONE, Partition, STREAM_SUBJECTS, flow_subject, fnv1a32,
    partition_filter, partition_of,
};
