//! Kafka reads a subscription needs besides the live feed: the catch-up
//! that brings a resuming subscriber from its position up to the live
//! feed's snapshot, and the partitions' watermarks. Blocking: called from
//! blocking tasks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::event::{ChannelEvent, SubscriptionError};
use super::positions::Positions;

/// Reads `[start, until)` of every partition of `topic`, in offset order
/// per partition, into `tx`, until done or the subscriber goes away.
pub(super) fn read_range(
    client_config: &ClientConfig,
    topic: &str,
    start: &Positions,
    until: &Positions,
    tx: &mpsc::Sender<Result<ChannelEvent, SubscriptionError>>,
) -> Result<(), KafkaError> {
    let mut remaining: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for (partition, end) in until.iter() {
        let from = start.get(partition).unwrap_or(0);
        if from < end {
            remaining.insert(partition, (from, end));
        }
    }
    if remaining.is_empty() {
        return Ok(());
    }
    let consumer: BaseConsumer = client_config.create()?;
    let mut assignment = TopicPartitionList::new();
    for (partition, (from, _)) in &remaining {
        assignment.add_partition_offset(topic, *partition, Offset::Offset(*from))?;
    }
    consumer.assign(&assignment)?;
    let idle_limit = Duration::from_secs(30);
    let mut last_progress = Instant::now();
    while !remaining.is_empty() {
        if tx.is_closed() {
            return Ok(());
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            if last_progress.elapsed() > idle_limit {
                // Retention removed what was asked for, or the broker is
                // gone: stop rather than hang; the live feed continues.
                tracing::warn!(topic, "catch-up made no progress; joining the live feed");
                return Ok(());
            }
            continue;
        };
        let message = message?;
        last_progress = Instant::now();
        let partition = message.partition();
        let Some((_, end)) = remaining.get(&partition).copied() else {
            continue;
        };
        if message.offset() >= end {
            remaining.remove(&partition);
            continue;
        }
        let event = ChannelEvent::from_message(&message, Arc::from(""));
        if tx.blocking_send(Ok(event)).is_err() {
            return Ok(());
        }
        if message.offset() + 1 >= end {
            remaining.remove(&partition);
        }
    }
    Ok(())
}

/// (low, high) watermarks of every partition of `topic`.
pub(super) fn watermarks(
    client_config: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, (i64, i64)>, KafkaError> {
    let consumer: BaseConsumer = client_config.create()?;
    // A partition whose leader is still being elected (a topic just
    // created, a broker failing over) answers an error for a moment: retry
    // within the timeout before the client hears 503.
    let deadline = Instant::now() + timeout;
    loop {
        match read_watermarks(&consumer, topic, timeout) {
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            outcome => return outcome,
        }
    }
}

fn read_watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, (i64, i64)>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut out = BTreeMap::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for partition in t.partitions() {
            out.insert(
                partition.id(),
                consumer.fetch_watermarks(topic, partition.id(), timeout)?,
            );
        }
    }
    Ok(out)
}
