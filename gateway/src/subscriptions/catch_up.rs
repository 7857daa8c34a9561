//! Kafka reads a subscription needs besides the live feed: the catch-up
//! that brings a resuming subscriber from its position up to the live
//! feed's snapshot, and the partitions' watermarks. Blocking: called from
//! blocking tasks.
//!
//! A catch-up either delivers every record of its range, says which ones
//! retention deleted ([`CatchUp::Lost`]), or ends without [`CatchUp::Done`]
//! (the subscriber then ends its stream with an explicit event): it never
//! jumps silently.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;

use super::event::{CatchUp, ChannelEvent};
use super::positions::Positions;

/// How a catch-up ended, when not by a Kafka error.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// Every record of the range was handed over.
    Complete,
    /// The subscriber went away.
    SubscriberGone,
    /// The subscriber did not take an event within the send timeout.
    Stalled,
    /// Kafka delivered nothing for a while (a broker gone, a range that
    /// ends in a gap).
    NoProgress,
}

/// Reads `[start, until)` of every partition of `topic`, in offset order
/// per partition, into `tx`, until done, the subscriber goes away or does
/// not take an event within `send_timeout`. Only partitions `start` names
/// can report lost records; others start at the log's start.
pub(super) fn read_range(
    client_config: &ClientConfig,
    topic: &str,
    start: &Positions,
    until: &Positions,
    tx: &mpsc::Sender<CatchUp>,
    send_timeout: Duration,
) -> Result<Ended, KafkaError> {
    let runtime = tokio::runtime::Handle::current();
    let send = |item: CatchUp| match runtime.block_on(tx.send_timeout(item, send_timeout)) {
        Ok(()) => None,
        Err(SendTimeoutError::Timeout(_)) => Some(Ended::Stalled),
        Err(SendTimeoutError::Closed(_)) => Some(Ended::SubscriberGone),
    };
    let mut remaining: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for (partition, end) in until.iter() {
        let from = start.get(partition).unwrap_or(0);
        if from < end {
            remaining.insert(partition, (from, end));
        }
    }
    if remaining.is_empty() {
        return Ok(Ended::Complete);
    }
    let consumer: BaseConsumer = client_config.create()?;
    // Retention may have deleted the start of the range: say so, then
    // read from what is left.
    for (partition, (from, end)) in remaining.clone() {
        let (low, _) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        if low <= from {
            continue;
        }
        let to = low.min(end);
        if start.get(partition).is_some()
            && let Some(ended) = send(CatchUp::Lost {
                partition,
                from,
                to,
            })
        {
            return Ok(ended);
        }
        if to >= end {
            remaining.remove(&partition);
        } else {
            remaining.insert(partition, (to, end));
        }
    }
    if remaining.is_empty() {
        return Ok(Ended::Complete);
    }
    let mut assignment = TopicPartitionList::new();
    for (partition, (from, _)) in &remaining {
        assignment.add_partition_offset(topic, *partition, Offset::Offset(*from))?;
    }
    consumer.assign(&assignment)?;
    let idle_limit = Duration::from_secs(30);
    let mut last_progress = Instant::now();
    while !remaining.is_empty() {
        if tx.is_closed() {
            return Ok(Ended::SubscriberGone);
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            if last_progress.elapsed() > idle_limit {
                return Ok(Ended::NoProgress);
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
        if let Some(ended) = send(CatchUp::Event(event)) {
            return Ok(ended);
        }
        if message.offset() + 1 >= end {
            remaining.remove(&partition);
        }
    }
    Ok(Ended::Complete)
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
