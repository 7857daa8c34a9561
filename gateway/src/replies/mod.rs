//! Replies coming back: the waiting requests, the reply consumer of this
//! instance's reply partitions, the recent-replies cache, the `accepted`
//! markers, and following any request's events from any instance.
//!
//! A request's reply partition is its event log (`accepted`, `progress`,
//! `final`, keyed by request id). The instance that accepted a request
//! writes its `accepted` marker, consumes that partition and completes its
//! waiter; any other instance finds the events through the [`lookup`]
//! (offsets-for-times, then a bounded scan) or follows them through the
//! shared [`tails`].
//!
//! # Layout
//! - [`event`]: one event as read from Kafka, and its decoder (a leaf).
//! - [`lookup`]: the Kafka reads that find any request's events.
//! - [`tails`]: one shared consumer per followed reply partition.
//! - this file: the [`ReplyHub`] that ties them to waiting clients.

pub mod event;
pub mod lookup;
pub mod tails;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::sync::Cache;
use osmosis_protocol::{EventKind, ReplyAddress, ReplyEnvelope, RequestId};
use osmosis_support::kafka::{ClientSettings, owned_header_pairs};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{broadcast, mpsc};

pub use event::{FollowError, FollowReceiver, ReplyEvent};
pub use lookup::Lookup;

use crate::config::{KafkaConfig, RepliesConfig};
use crate::writer::{OutboundRecord, RecordWriter};
use lookup::ReplyLog;
use tails::PartitionTails;

/// A request waiting on this instance for its events.
struct Waiter {
    events: broadcast::Sender<Arc<ReplyEvent>>,
    since: Instant,
}

/// Failures of the reply side.
#[derive(Debug, thiserror::Error)]
pub enum RepliesError {
    #[error("cannot consume the reply topic {topic:?}: {source}")]
    Consumer {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error(
        "reply topic {topic:?} has {partitions} partitions; instance {instance} of {instances} owns none"
    )]
    NoPartition {
        topic: String,
        partitions: usize,
        instance: u32,
        instances: u32,
    },
    #[error("looking up the reply failed: {0}")]
    Lookup(#[from] KafkaError),
}

/// The reply side of the gateway.
pub struct ReplyHub {
    topic: String,
    /// Reply partitions this instance consumes, handed out round-robin.
    owned: Vec<i32>,
    next: AtomicUsize,
    /// Requests accepted here whose final reply has not arrived.
    waiting: Mutex<HashMap<RequestId, Waiter>>,
    /// Final replies seen recently, bounded in entries, bytes and age.
    recent: Cache<RequestId, Arc<ReplyEvent>>,
    /// How long a request stays in `waiting` without a reply.
    pending_ttl: Duration,
    /// Writes the `accepted` markers.
    writer: Arc<dyn RecordWriter>,
    /// Finds events of requests this instance is not waiting on.
    log: Arc<ReplyLog>,
    /// Streams events of requests this instance is not waiting on.
    tails: Arc<PartitionTails>,
}

impl ReplyHub {
    /// Finds this instance's reply partitions and starts consuming them from
    /// their end (older replies are found by lookup).
    pub async fn start(
        kafka: &KafkaConfig,
        replies: &RepliesConfig,
        writer: Arc<dyn RecordWriter>,
    ) -> Result<Arc<Self>, RepliesError> {
        let client_config = ClientSettings::new(&kafka.brokers)
            .user(&kafka.properties)
            .fixed(&[
                ("group.id", "osmosis-gateway-replies"),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "false"),
                ("fetch.wait.max.ms", "10"),
            ])
            .build();
        let consumer_error = |source| RepliesError::Consumer {
            topic: replies.topic.clone(),
            source,
        };
        let consumer: StreamConsumer = client_config.create().map_err(consumer_error)?;
        let owned = own_partitions(&consumer, replies, kafka.metadata_timeout())?;
        let mut assignment = TopicPartitionList::new();
        for partition in &owned {
            assignment
                .add_partition_offset(&replies.topic, *partition, Offset::End)
                .map_err(consumer_error)?;
        }
        consumer.assign(&assignment).map_err(consumer_error)?;
        tracing::info!(topic = %replies.topic, partitions = ?owned, "consuming reply partitions");

        let cache = &replies.cache;
        // Every entry weighs at least max_bytes / max_entries, so the byte
        // bound also bounds the entry count.
        let floor = (cache.max_bytes / cache.max_entries).max(1);
        let hub = Arc::new(Self {
            topic: replies.topic.clone(),
            owned,
            next: AtomicUsize::new(0),
            waiting: Mutex::new(HashMap::new()),
            recent: Cache::builder()
                .max_capacity(cache.max_bytes)
                .weigher(move |_, event: &Arc<ReplyEvent>| {
                    event.weight().max(floor).min(u64::from(u32::MAX)) as u32
                })
                .time_to_live(Duration::from_secs(cache.ttl_secs))
                .build(),
            pending_ttl: Duration::from_secs(cache.ttl_secs),
            writer,
            log: Arc::new(ReplyLog::new(
                replies.topic.clone(),
                client_config.clone(),
                replies.lookup_max_records,
                kafka.metadata_timeout(),
            )),
            tails: PartitionTails::new(replies.topic.clone(), client_config),
        });
        tokio::spawn(consume(Arc::clone(&hub), consumer));
        tokio::spawn(sweep(Arc::downgrade(&hub)));
        Ok(hub)
    }

    /// Where the next request's reply goes: one of this instance's
    /// partitions, round-robin.
    pub fn next_address(&self) -> ReplyAddress {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        ReplyAddress {
            topic: self.topic.clone(),
            partition: self.owned[i % self.owned.len()],
        }
    }

    /// Registers a request before it is written, so that no reply can
    /// arrive unseen; returns the receiver of its events.
    pub fn wait_for(&self, id: RequestId) -> broadcast::Receiver<Arc<ReplyEvent>> {
        let mut waiting = self.waiting.lock().unwrap();
        let waiter = waiting.entry(id).or_insert_with(|| Waiter {
            events: broadcast::channel(64).0,
            since: Instant::now(),
        });
        waiter.events.subscribe()
    }

    /// Forgets a request that was never written.
    pub fn forget(&self, id: &RequestId) {
        self.waiting.lock().unwrap().remove(id);
    }

    /// Writes the request's `accepted` event onto its reply partition, so
    /// that any instance answers "pending" for it and its event stream
    /// starts there; `body` is the 202 body the client got. Returns the
    /// marker's offset, or `None` when it could not be written (then other
    /// instances answer 404 until the reply: logged, not fatal).
    pub async fn mark_accepted(
        &self,
        id: RequestId,
        reply_to: &ReplyAddress,
        body: String,
    ) -> Option<i64> {
        let envelope = ReplyEnvelope {
            id,
            kind: EventKind::Accepted,
            status: 202,
            content_type: Some("application/json".into()),
            headers: Vec::new(),
        };
        let marker = OutboundRecord {
            topic: reply_to.topic.clone(),
            partition: Some(reply_to.partition),
            key: Some(id.to_string().into_bytes()),
            value: Bytes::from(body),
            headers: owned_header_pairs(envelope.to_headers()),
        };
        match self.writer.write(marker).await {
            Ok(stored) => Some(stored.offset),
            Err(error) => {
                tracing::warn!(request_id = %id, %error, "accepted event not written; other instances answer 404 until the reply");
                None
            }
        }
    }

    /// The final reply, if this instance has it in memory.
    pub fn recent(&self, id: &RequestId) -> Option<Arc<ReplyEvent>> {
        self.recent.get(id)
    }

    /// What is known about `id`: from memory, else from Kafka.
    pub async fn find(&self, id: RequestId) -> Result<Lookup, RepliesError> {
        if let Some(reply) = self.recent.get(&id) {
            return Ok(Lookup::Replied(reply));
        }
        if self.waiting.lock().unwrap().contains_key(&id) {
            return Ok(Lookup::Pending);
        }
        let Some(partition) = id.reply_partition() else {
            return Ok(Lookup::Unknown);
        };
        let log = Arc::clone(&self.log);
        let found = tokio::task::spawn_blocking(move || log.scan(id, partition))
            .await
            .expect("lookup task panicked")?;
        if let Lookup::Replied(reply) = &found {
            self.recent.insert(id, Arc::clone(reply));
        }
        Ok(found)
    }

    /// Follows the events of `id` on its reply partition, after offset
    /// `after` when given (a resume), else from the id's timestamp, until
    /// the final reply, `limit`, or the receiver going away. Followers share
    /// one tail per partition ([`tails`]).
    pub fn follow(&self, id: RequestId, after: Option<i64>, limit: Duration) -> FollowReceiver {
        let (tx, rx) = mpsc::channel(64);
        let Some(partition) = id.reply_partition() else {
            return rx;
        };
        let (log, tails) = (Arc::clone(&self.log), Arc::clone(&self.tails));
        tokio::task::spawn_blocking(move || {
            let start = match after {
                Some(offset) => offset
                    .checked_add(1)
                    .ok_or(FollowError::NothingAfter(offset)),
                None => log.stream_start(id, partition).map_err(FollowError::from),
            };
            let following = start.and_then(|start| {
                tails
                    .follow(partition, id.to_string(), start, limit, tx.clone())
                    .map_err(FollowError::from)
            });
            if let Err(error) = following {
                let _ = tx.blocking_send(Err(error));
            }
        });
        rx
    }

    /// Hands a consumed event to its waiter and remembers final replies.
    fn deliver(&self, event: ReplyEvent) {
        let id = event.envelope.id;
        let event = Arc::new(event);
        match event.envelope.kind {
            EventKind::Final => {
                if self.recent.contains_key(&id) {
                    // A redelivered duplicate: the client had its reply.
                    return;
                }
                self.recent.insert(id, Arc::clone(&event));
                if let Some(waiter) = self.waiting.lock().unwrap().remove(&id) {
                    let _ = waiter.events.send(event);
                }
            }
            EventKind::Progress => {
                if let Some(waiter) = self.waiting.lock().unwrap().get(&id) {
                    let _ = waiter.events.send(event);
                }
            }
            EventKind::Accepted => {}
        }
    }
}

/// The reply partitions this instance owns, from the topic's metadata.
fn own_partitions(
    consumer: &StreamConsumer,
    replies: &RepliesConfig,
    metadata_timeout: Duration,
) -> Result<Vec<i32>, RepliesError> {
    let metadata = consumer
        .fetch_metadata(Some(&replies.topic), metadata_timeout)
        .map_err(|source| RepliesError::Consumer {
            topic: replies.topic.clone(),
            source,
        })?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    let owned: Vec<i32> = (0..partitions as i32)
        .filter(|p| replies.owns(*p))
        .collect();
    if owned.is_empty() {
        return Err(RepliesError::NoPartition {
            topic: replies.topic.clone(),
            partitions,
            instance: replies.instance,
            instances: replies.instances,
        });
    }
    Ok(owned)
}

async fn consume(hub: Arc<ReplyHub>, consumer: StreamConsumer) {
    loop {
        match consumer.recv().await {
            Ok(message) => {
                if let Some(event) = ReplyEvent::decode(&message) {
                    hub.deliver(event);
                }
            }
            Err(error) => tracing::warn!(%error, "reply consumer error"),
        }
    }
}

/// Drops waiters whose reply never came, so that memory stays bounded.
async fn sweep(hub: std::sync::Weak<ReplyHub>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        let ttl = hub.pending_ttl;
        hub.waiting
            .lock()
            .unwrap()
            .retain(|_, waiter| waiter.since.elapsed() < ttl);
    }
}
