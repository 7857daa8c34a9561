//! Finding any request's events in Kafka, from any instance: the id names
//! its reply partition and its creation time, so Kafka's time index gives
//! where to start, and a bounded scan from there finds the events.
//!
//! Bounded: at most `limits.lookups.max_concurrent` scans at once (a call
//! waits `queue_ms` for its turn), each reading at most
//! `replies.lookup_max_records` records for at most `max_ms`. A scan that
//! stops before the partition's end without the final reply is
//! [`LookupError::Incomplete`] — the caller answers 503 + Retry-After,
//! never a 404 or a "pending" it cannot know.

use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use osmosis_protocol::clock::unix_ms;
use osmosis_protocol::{EventKind, RequestId};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::event::{Owner, ReplyEvent};
use crate::config::LookupLimits;
use crate::metrics::{Limit, LimitLabels};

/// Why a lookup has no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("too many lookups are in progress")]
    Busy,
    #[error("the lookup stopped at its bound before the end of the reply partition")]
    Incomplete,
}

/// What is known about a request id, and who may read it.
#[derive(Debug)]
pub enum Lookup {
    /// The final reply.
    Replied(Arc<ReplyEvent>, Owner),
    /// Accepted, no final reply yet.
    Pending(Owner),
    /// Never seen (or gone with retention).
    Unknown,
}

/// Reads of the reply topic that are not this instance's own consumption.
pub struct ReplyLog {
    topic: String,
    client_config: ClientConfig,
    /// Idle scanning clients, created on demand, at most one per turn.
    scanners: Mutex<Vec<BaseConsumer>>,
    /// One permit per scan in progress: the lookup concurrency.
    turns: Arc<Semaphore>,
    /// Longest a lookup waits for its turn.
    queue: Duration,
    /// Longest one scan reads.
    max_time: Duration,
    /// Counts lookups refused or cut short.
    limited: Family<LimitLabels, Counter>,
    /// For offset queries only (thread-safe, never assigned): kept apart
    /// from `scanner`, so a stream's start is not queued behind a scan.
    offsets: OnceLock<BaseConsumer>,
    /// Most records one scan reads before giving up.
    max_records: u64,
    metadata_timeout: Duration,
}

impl ReplyLog {
    pub fn new(
        topic: String,
        client_config: ClientConfig,
        max_records: u64,
        metadata_timeout: Duration,
        limits: &LookupLimits,
        limited: Family<LimitLabels, Counter>,
    ) -> Self {
        Self {
            topic,
            client_config,
            scanners: Mutex::new(Vec::new()),
            turns: Arc::new(Semaphore::new(limits.max_concurrent)),
            queue: Duration::from_millis(limits.queue_ms),
            max_time: Duration::from_millis(limits.max_ms),
            limited,
            offsets: OnceLock::new(),
            max_records,
            metadata_timeout,
        }
    }

    /// Waits for a turn to scan (at most the queue time).
    pub async fn turn(&self) -> Result<OwnedSemaphorePermit, LookupError> {
        match tokio::time::timeout(self.queue, Arc::clone(&self.turns).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                self.limited.get_or_create(&Limit::Lookups.label()).inc();
                Err(LookupError::Busy)
            }
        }
    }

    /// Reads the reply partition from just before the id's timestamp to its
    /// end, within the bounds, looking for the id's events. Blocking: call
    /// it from a blocking task, holding a [`Self::turn`].
    pub fn scan(
        &self,
        id: RequestId,
        partition: i32,
        _turn: &OwnedSemaphorePermit,
    ) -> Result<Lookup, LookupError> {
        let pooled = self.scanners.lock().unwrap().pop();
        let consumer = match pooled {
            Some(consumer) => consumer,
            None => self.client_config.create()?,
        };
        let found = self.scan_with(&consumer, id, partition);
        self.scanners.lock().unwrap().push(consumer);
        if matches!(found, Err(LookupError::Incomplete)) {
            self.limited
                .get_or_create(&Limit::LookupIncomplete.label())
                .inc();
        }
        found
    }

    fn scan_with(
        &self,
        consumer: &BaseConsumer,
        id: RequestId,
        partition: i32,
    ) -> Result<Lookup, LookupError> {
        let (low, high) =
            consumer.fetch_watermarks(&self.topic, partition, self.metadata_timeout)?;
        if high <= low {
            return Ok(Lookup::Unknown);
        }
        let Some(start) = self.first_offset_since(consumer, id, partition)? else {
            return Ok(Lookup::Unknown);
        };
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&self.topic, partition, Offset::Offset(start))?;
        consumer.assign(&assignment)?;
        let key = id.to_string();
        let mut owner = None;
        // A reply can land before its `accepted` marker (the marker is
        // written while the worker works): the owner may follow it.
        let mut replied = None;
        let mut progressed = false;
        let mut read = 0u64;
        let deadline = Instant::now() + self.max_time;
        let mut position = start;
        while position < high && read < self.max_records && Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message?;
            read += 1;
            position = message.offset() + 1;
            if message.key() != Some(key.as_bytes()) {
                continue;
            }
            let Some(event) = ReplyEvent::decode(&message) else {
                continue;
            };
            match event.envelope.kind {
                EventKind::Final => match owner {
                    Some(owner) => return Ok(Lookup::Replied(Arc::new(event), owner)),
                    None => replied = Some(event),
                },
                EventKind::Accepted => {
                    let marker = Owner::of_marker(&event);
                    if let Some(reply) = replied {
                        return Ok(Lookup::Replied(Arc::new(reply), marker));
                    }
                    owner = Some(marker);
                }
                EventKind::Progress => progressed = true,
            }
        }
        if let Some(reply) = replied {
            return Ok(Lookup::Replied(Arc::new(reply), Owner::Unknown));
        }
        if position < high {
            // Stopped by a bound: the final reply may lie further on.
            return Err(LookupError::Incomplete);
        }
        Ok(match owner {
            Some(owner) => Lookup::Pending(owner),
            None if progressed => Lookup::Pending(Owner::Unknown),
            None => Lookup::Unknown,
        })
    }

    /// Where a stream of `id`'s events starts without a resume position: at
    /// the first record since the id's time, else at the partition's end.
    /// Blocking: call it from a blocking task.
    pub fn stream_start(&self, id: RequestId, partition: i32) -> Result<i64, KafkaError> {
        if self.offsets.get().is_none() {
            // A racing stream may have set it meanwhile: either client serves.
            let _ = self.offsets.set(self.client_config.create()?);
        }
        let consumer = self.offsets.get().expect("set above");
        // The end first: a record written between the two queries is then
        // after the start, not skipped.
        let (_, end) = consumer.fetch_watermarks(&self.topic, partition, self.metadata_timeout)?;
        Ok(self
            .first_offset_since(consumer, id, partition)?
            .unwrap_or(end))
    }

    /// The first offset of `partition` at or after the time `id` was created
    /// (minus a little clock skew between gateway and broker); `None` when
    /// no record is that recent.
    fn first_offset_since(
        &self,
        consumer: &BaseConsumer,
        id: RequestId,
        partition: i32,
    ) -> Result<Option<i64>, KafkaError> {
        let since_ms = unix_ms(id.created_at() - Duration::from_secs(5)) as i64;
        let mut query = TopicPartitionList::new();
        query.add_partition_offset(&self.topic, partition, Offset::Offset(since_ms))?;
        let found = consumer.offsets_for_times(query, self.metadata_timeout)?;
        Ok(
            match found
                .find_partition(&self.topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(offset)) => Some(offset),
                _ => None,
            },
        )
    }
}
