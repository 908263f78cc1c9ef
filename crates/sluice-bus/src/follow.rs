//! The following side: [`follow`] reads every flow record of the
//! partitions a follower owns, from durable pull consumers, as one stream
//! — what `sluice detect --follow` runs its detectors on.
//!
//! One durable consumer per partition, named `<durable>-<p>` and filtered
//! on `sluice.flows.*.<p>` (nats-server 2.9 takes one filter subject per
//! consumer). A partition's consumer keeps its name whichever follower
//! owns it, so changing the number of followers (`--partition K/N`) hands
//! each partition over with its progress. Acknowledgement is cumulative
//! (`AckPolicy::All`): a message is acknowledged once the caller has asked
//! for the next one of its partition (it was processed), at most every
//! [`ACK_EVERY`] messages or after [`ACK_IDLE`] without one, so a follower
//! that restarts resumes after what it processed (at least once).

use std::{pin::Pin, time::Duration};

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
};
use futures_util::{
    Stream, StreamExt,
    stream::{self, SelectAll},
};
use sluice_observe::FlowRecord;

use crate::subject::{Partition, partition_filter};

/// Acknowledge after this many processed messages of a partition.
pub const ACK_EVERY: usize = 512;

/// Acknowledge what was processed after this long without a new message.
pub const ACK_IDLE: Duration = Duration::from_millis(500);

/// Messages a consumer may have delivered and not acknowledged: well
/// above [`ACK_EVERY`] plus a pull batch, so acknowledgement never stalls
/// delivery.
const MAX_ACK_PENDING: i64 = 20_000;

/// Messages asked for per pull request.
const BATCH: usize = 1_000;

/// What a follower reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowOptions {
    /// NATS server URL(s), comma-separated.
    pub url: String,
    /// The stream the replicas publish to (`bus.stream`).
    pub stream: String,
    /// Flow partitions per zone (`bus.partitions`, the same as the replicas').
    pub partitions: u32,
    /// Which of them this follower takes.
    pub partition: Partition,
    /// The durable consumers' name prefix (`[A-Za-z0-9_-]`, at most 48).
    pub durable: String,
}

/// One record read from the bus, with where it was published; its end
/// time restored from `ts` ([`FlowRecord::restore_times`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Followed {
    /// The partition it came from.
    pub partition: u32,
    /// Its subject, `sluice.flows.<zone>.<p>`.
    pub subject: String,
    /// The record.
    pub record: FlowRecord,
}

/// Why following failed, or why one message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The durable name would not make valid consumer names.
    #[error("expected a durable name of 1 to 48 letters, digits, `_` or `-`, found `{0}`")]
    BadDurable(String),
    /// This follower owns no partition.
    #[error(
        "partition {partition} owns none of the {partitions} partitions: use at most as many followers as bus.partitions"
    )]
    NoPartitions {
        /// The follower's share.
        partition: Partition,
        /// `bus.partitions`.
        partitions: u32,
    },
    /// The server could not be reached.
    #[error("cannot connect to the flow bus at {url}: {source}")]
    Connect {
        /// The URL tried.
        url: String,
        /// Why.
        source: async_nats::ConnectError,
    },
    /// The stream or a consumer could not be read or created.
    #[error("flow bus stream {stream}: {message}")]
    Stream {
        /// The stream.
        stream: String,
        /// What failed.
        message: String,
    },
    /// A message that is not a flow record (it is acknowledged and skipped).
    #[error("{subject} message {sequence}: not a flow record: {source}")]
    BadRecord {
        /// Where it was published.
        subject: String,
        /// Its stream sequence number (0 if unknown).
        sequence: u64,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// The records of the partitions `opts.partition` owns, in each
/// partition's order (partitions interleave), until the connection is
/// closed. Errors on single messages are items of the stream; the stream
/// goes on after them.
pub type Follower = Pin<Box<dyn Stream<Item = Result<Followed, FollowError>> + Send>>;

/// Connects and creates (or resumes) the durable consumers of the owned
/// partitions. The stream must exist (a replica or the deployment's Job
/// creates it).
pub async fn follow(opts: &FollowOptions) -> Result<Follower, FollowError> {
    let d = &opts.durable;
    if d.is_empty()
        || d.len() > 48
        || !d
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(FollowError::BadDurable(d.clone()));
    }
    let owned = opts.partition.owned(opts.partitions);
    if owned.is_empty() {
        return Err(FollowError::NoPartitions {
            partition: opts.partition,
            partitions: opts.partitions,
        });
    }
    let client = async_nats::ConnectOptions::new()
        .name("sluice-follow")
        .max_reconnects(None)
        .connect(opts.url.as_str())
        .await
        .map_err(|source| FollowError::Connect {
            url: opts.url.clone(),
            source,
        })?;
    let js = jetstream::new(client);
    let fail = |e: &dyn std::fmt::Display| FollowError::Stream {
        stream: opts.stream.clone(),
        message: e.to_string(),
    };
    let stream = js.get_stream(&opts.stream).await.map_err(|e| fail(&e))?;
    let mut all: SelectAll<Follower> = SelectAll::new();
    for p in owned {
        let name = format!("{d}-{p}");
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: partition_filter(p),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::All,
                    ack_wait: Duration::from_secs(30),
                    max_ack_pending: MAX_ACK_PENDING,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| fail(&e))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .messages()
            .await
            .map_err(|e| fail(&e))?;
        all.push(partition_stream(p, messages, opts.stream.clone()));
    }
    Ok(Box::pin(all))
}

/// What one partition's stream remembers between items.
struct State {
    partition: u32,
    stream: String,
    messages: pull::Stream,
    /// The last message handed out and not acknowledged yet.
    last: Option<jetstream::Message>,
    unacked: usize,
}

fn partition_stream(p: u32, messages: pull::Stream, stream: String) -> Follower {
    let state = State {
        partition: p,
        stream,
        messages,
        last: None,
        unacked: 0,
    };
    Box::pin(stream::unfold(state, |mut st| async move {
        loop {
            // Asked again: whatever was handed out before is processed.
            if st.unacked >= ACK_EVERY {
                st.ack().await;
            }
            let next = if st.unacked > 0 {
                match tokio::time::timeout(ACK_IDLE, st.messages.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        st.ack().await;
                        continue;
                    }
                }
            } else {
                st.messages.next().await
            };
            let item = match next? {
                Ok(m) => st.read(m),
                Err(e) => Err(FollowError::Stream {
                    stream: st.stream.clone(),
                    message: e.to_string(),
                }),
            };
            return Some((item, st));
        }
    }))
}

// === impl State ===

impl State {
    /// Acknowledges (cumulatively) every message handed out so far.
    async fn ack(&mut self) {
        if let Some(m) = self.last.take() {
            if let Err(e) = m.ack().await {
                tracing::warn!(partition = self.partition, error = %e, "flow bus: acknowledgement failed; those records may come again");
            }
        }
        self.unacked = 0;
    }

    fn read(&mut self, m: jetstream::Message) -> Result<Followed, FollowError> {
        let subject = m.subject.to_string();
        let parsed = serde_json::from_slice::<FlowRecord>(&m.payload);
        let sequence = m.info().map_or(0, |i| i.stream_sequence);
        self.last = Some(m);
        self.unacked += 1;
        match parsed {
            Ok(mut record) => {
                // Its clock values are not serialized: the detectors need
                // its end time back.
                record.restore_times();
                Ok(Followed {
                    partition: self.partition,
                    subject,
                    record,
                })
            }
            Err(source) => Err(FollowError::BadRecord {
                subject,
                sequence,
                source,
            }),
        }
    }
}
