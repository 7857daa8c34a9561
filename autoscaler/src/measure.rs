//! Measurement: one poll of a channel topic and its consumer group through
//! Kafka's admin APIs — per partition the log start, the high watermark and
//! the group's committed offset; the group's state and member count. No
//! message is read. Blocking (librdkafka); call it from a blocking task.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::estimate::{PartitionSample, Sample};

/// A failed poll. The loop holds its last decision: a failure never scales down.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {0:?} not found")]
    NoTopic(String),
}

/// Polls one topic and one consumer group.
pub struct Probe {
    topic: String,
    group: String,
    /// A client in the group's name that never joins it: it only reads the
    /// group's committed offsets.
    consumer: BaseConsumer,
    timeout: Duration,
}

impl Probe {
    pub fn new(
        brokers: &str,
        properties: &[(String, String)],
        topic: &str,
        group: &str,
    ) -> Result<Self, MeasureError> {
        let mut config = ClientConfig::new();
        for (name, value) in properties {
            config.set(name, value);
        }
        config
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false");
        Ok(Self {
            topic: topic.to_owned(),
            group: group.to_owned(),
            consumer: config.create()?,
            timeout: Duration::from_secs(5),
        })
    }

    /// One sample at `at` seconds on the caller's clock.
    pub fn sample(&self, at: f64) -> Result<Sample, MeasureError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), self.timeout)?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic && t.error().is_none() && !t.partitions().is_empty())
            .ok_or_else(|| MeasureError::NoTopic(self.topic.clone()))?;
        let mut query = TopicPartitionList::new();
        for partition in topic.partitions() {
            query.add_partition(&self.topic, partition.id());
        }
        let committed = self.consumer.committed_offsets(query, self.timeout)?;
        let mut partitions = Vec::with_capacity(topic.partitions().len());
        for partition in topic.partitions() {
            let (log_start, high_watermark) =
                self.consumer
                    .fetch_watermarks(&self.topic, partition.id(), self.timeout)?;
            let committed = committed
                .find_partition(&self.topic, partition.id())
                .and_then(|e| match e.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                });
            partitions.push(PartitionSample {
                partition: partition.id(),
                log_start,
                high_watermark,
                committed,
            });
        }
        let groups = self
            .consumer
            .fetch_group_list(Some(&self.group), self.timeout)?;
        let (rebalancing, members) = groups
            .groups()
            .iter()
            .find(|g| g.name() == self.group)
            .map(|g| {
                let state = g.state();
                (
                    state.contains("Rebalance") || state.contains("Completing"),
                    g.members().len() as u32,
                )
            })
            .unwrap_or((false, 0));
        Ok(Sample {
            at,
            partitions,
            rebalancing,
            members,
        })
    }
}
