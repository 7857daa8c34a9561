//! Whether a request whose write may have landed is in its channel: the
//! claim says when it was written (give or take the produce timeout), so
//! Kafka's time index bounds the read. Blocking: called from a blocking
//! task, and only for a claim left without an outcome (a 503 after a
//! timed-out produce, or a gateway that died mid-write).

use std::time::{Duration, Instant};

use osmosis_protocol::headers as contract;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::writer::Stored;

/// Why a lookback has no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookbackError {
    #[error("reading the channel failed: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the channel could not be read to the end of the window in time")]
    Incomplete,
}

/// Most records one lookback reads per partition.
const MAX_RECORDS: u64 = 200_000;
/// Longest one lookback reads.
const MAX_TIME: Duration = Duration::from_secs(10);

/// Where request `attempt` is in `topic`, reading the records stamped
/// `[from_ms, to_ms]` of every partition.
pub fn find(
    client_config: &ClientConfig,
    topic: &str,
    attempt: &str,
    from_ms: i64,
    to_ms: i64,
    timeout: Duration,
) -> Result<Option<Stored>, LookbackError> {
    let consumer: BaseConsumer = client_config.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let deadline = Instant::now() + MAX_TIME;
    for partition in partitions {
        let mut query = TopicPartitionList::new();
        query.add_partition_offset(topic, partition, Offset::Offset(from_ms))?;
        let found = consumer.offsets_for_times(query, timeout)?;
        let Some(Offset::Offset(start)) = found
            .find_partition(topic, partition)
            .map(|entry| entry.offset())
        else {
            continue; // nothing that recent
        };
        let (_, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
        consumer.assign(&assignment)?;
        let (mut next, mut read) = (start, 0u64);
        while next < high {
            if read >= MAX_RECORDS || Instant::now() >= deadline {
                return Err(LookbackError::Incomplete);
            }
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message?;
            read += 1;
            next = message.offset() + 1;
            if message.timestamp().to_millis().is_some_and(|at| at > to_ms) {
                break;
            }
            let is_attempt = message.headers().is_some_and(|headers| {
                headers.iter().any(|header| {
                    header.key == contract::REQUEST_ID && header.value == Some(attempt.as_bytes())
                })
            });
            if is_attempt {
                return Ok(Some(Stored {
                    partition,
                    offset: message.offset(),
                }));
            }
        }
    }
    Ok(None)
}
