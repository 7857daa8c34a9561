//! One record of a subscribed topic as subscribers get it, and why a
//! subscription can fail. A leaf of the subscriptions module.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;

/// One record of a subscribed topic.
#[derive(Debug)]
pub struct ChannelEvent {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
    /// Record timestamp, unix milliseconds.
    pub timestamp: Option<i64>,
    /// The live feed's positions after this record, rendered once for every
    /// subscriber in step with the feed.
    pub positions: Arc<str>,
    /// The event's frames for in-step subscribers, rendered on first use.
    pub value_frame: OnceLock<Bytes>,
    pub json_frame: OnceLock<Bytes>,
}

impl ChannelEvent {
    pub(super) fn from_message<M: Message>(message: &M, positions: Arc<str>) -> Self {
        Self {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(Bytes::copy_from_slice),
            value: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
            timestamp: message.timestamp().to_millis(),
            positions,
            value_frame: OnceLock::new(),
            json_frame: OnceLock::new(),
        }
    }
}

/// Failures of subscriptions.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error("cannot read channel {topic:?} from Kafka: {source}")]
    Kafka {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("channel {0:?} has no partitions")]
    NoPartitions(String),
    #[error("too many subscriptions are catching up now")]
    TooManyCatchUps,
}

/// What a catch-up hands its subscriber, in order.
#[derive(Debug)]
pub enum CatchUp {
    /// The next record.
    Event(ChannelEvent),
    /// Records `[from, to)` of `partition` are gone (retention deleted
    /// them) and cannot be delivered; the catch-up goes on from `to`.
    Lost { partition: i32, from: i64, to: i64 },
    /// Every record up to the live feed's snapshot was delivered.
    Done,
    /// The catch-up cannot go on.
    Failed(SubscriptionError),
}
