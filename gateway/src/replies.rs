//! Replies coming back: the waiting requests, the reply consumer of this
//! instance's reply partitions, the recent-replies cache and the Kafka
//! lookup that finds any request's reply from any instance.
//!
//! A request's reply partition is its event log (`accepted`, `progress`,
//! `final`, keyed by request id). The instance that accepted a request
//! consumes that partition and completes its waiter; any other instance can
//! find the events by scanning the partition the id names from the id's
//! timestamp on (offsets-for-times, then a bounded scan).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use moka::sync::Cache;
use osmosis_protocol::{EventKind, ReplyEnvelope, RequestId};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{broadcast, mpsc};

use crate::config::{KafkaConfig, RepliesConfig};
use crate::tails::Tails;

/// One event of a request, as read from its reply partition.
#[derive(Clone, Debug)]
pub struct ReplyEvent {
    pub envelope: ReplyEnvelope,
    pub body: Bytes,
    /// Offset in the reply partition: the event's SSE id.
    pub offset: i64,
}

impl ReplyEvent {
    fn weight(&self) -> u64 {
        let headers: usize = self
            .envelope
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum();
        (self.body.len() + headers + 256) as u64
    }
}

/// What is known about a request id.
#[derive(Debug)]
pub enum Lookup {
    /// The final reply.
    Replied(Arc<ReplyEvent>),
    /// Accepted, no final reply yet.
    Pending,
    /// Never seen (or gone with retention).
    Unknown,
}

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
    Lookup(String),
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
    lookup: Mutex<Option<BaseConsumer>>,
    /// For offset queries only (thread-safe, never assigned): kept apart
    /// from `lookup`, which a scan holds for seconds.
    offsets: std::sync::OnceLock<BaseConsumer>,
    tails: Arc<Tails>,
    client_config: ClientConfig,
    lookup_max_records: u64,
    metadata_timeout: Duration,
}

impl ReplyHub {
    /// Finds this instance's reply partitions and starts consuming them from
    /// their end (older replies are found by lookup).
    pub async fn start(
        kafka: &KafkaConfig,
        replies: &RepliesConfig,
    ) -> Result<Arc<Self>, RepliesError> {
        let mut client_config = ClientConfig::new();
        for (name, value) in &kafka.properties {
            client_config.set(name, value);
        }
        client_config
            .set("bootstrap.servers", &kafka.brokers)
            .set("group.id", "osmosis-gateway-replies")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "10");
        let consumer_error = |source| RepliesError::Consumer {
            topic: replies.topic.clone(),
            source,
        };
        let consumer: StreamConsumer = client_config.create().map_err(consumer_error)?;
        let metadata = consumer
            .fetch_metadata(Some(&replies.topic), kafka.metadata_timeout())
            .map_err(consumer_error)?;
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
            lookup: Mutex::new(None),
            offsets: std::sync::OnceLock::new(),
            tails: Tails::new(replies.topic.clone(), client_config.clone()),
            client_config,
            lookup_max_records: replies.lookup_max_records,
            metadata_timeout: kafka.metadata_timeout(),
        });
        tokio::spawn(consume(Arc::clone(&hub), consumer));
        tokio::spawn(sweep(Arc::downgrade(&hub)));
        Ok(hub)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The reply partition for the next request.
    pub fn next_partition(&self) -> i32 {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.owned[i % self.owned.len()]
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

    /// The final reply, if this instance has it in memory.
    pub fn recent(&self, id: &RequestId) -> Option<Arc<ReplyEvent>> {
        self.recent.get(id)
    }

    /// What is known about `id`: from memory, else from Kafka.
    pub async fn find(self: &Arc<Self>, id: RequestId) -> Result<Lookup, RepliesError> {
        if let Some(reply) = self.recent.get(&id) {
            return Ok(Lookup::Replied(reply));
        }
        if self.waiting.lock().unwrap().contains_key(&id) {
            return Ok(Lookup::Pending);
        }
        let Some(partition) = id.reply_partition() else {
            return Ok(Lookup::Unknown);
        };
        let hub = Arc::clone(self);
        let found = tokio::task::spawn_blocking(move || hub.scan(id, partition))
            .await
            .map_err(|error| RepliesError::Lookup(error.to_string()))??;
        if let Lookup::Replied(reply) = &found {
            self.recent.insert(id, Arc::clone(reply));
        }
        Ok(found)
    }

    /// Reads the reply partition from just before the id's timestamp to its
    /// end, at most `lookup_max_records` records, looking for the id's events.
    fn scan(&self, id: RequestId, partition: i32) -> Result<Lookup, RepliesError> {
        let failed = |error: KafkaError| RepliesError::Lookup(error.to_string());
        let mut slot = self.lookup.lock().unwrap();
        if slot.is_none() {
            *slot = Some(self.client_config.create().map_err(failed)?);
        }
        let consumer = slot.as_ref().expect("just created");
        let (low, high) = consumer
            .fetch_watermarks(&self.topic, partition, self.metadata_timeout)
            .map_err(failed)?;
        if high <= low {
            return Ok(Lookup::Unknown);
        }
        let Some(start) = self
            .first_offset_since(consumer, id, partition)
            .map_err(failed)?
        else {
            return Ok(Lookup::Unknown);
        };
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&self.topic, partition, Offset::Offset(start))
            .map_err(failed)?;
        consumer.assign(&assignment).map_err(failed)?;
        let key = id.to_string();
        let mut accepted = false;
        let mut read = 0u64;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut position = start;
        while position < high && read < self.lookup_max_records && Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.map_err(failed)?;
            read += 1;
            position = message.offset() + 1;
            if message.key() != Some(key.as_bytes()) {
                continue;
            }
            let Some(event) = decode(&message) else {
                continue;
            };
            match event.envelope.kind {
                EventKind::Final => return Ok(Lookup::Replied(Arc::new(event))),
                EventKind::Accepted | EventKind::Progress => accepted = true,
            }
        }
        Ok(if accepted {
            Lookup::Pending
        } else {
            Lookup::Unknown
        })
    }

    /// Streams the events of `id` from its reply partition, after offset
    /// `after` when given (a resume), else from the id's timestamp, until
    /// the final reply, `limit`, or the receiver going away. Streams share
    /// one tail per partition ([`crate::tails`]).
    pub fn tail(
        self: &Arc<Self>,
        id: RequestId,
        after: Option<i64>,
        limit: Duration,
    ) -> mpsc::Receiver<Result<Arc<ReplyEvent>, String>> {
        let (tx, rx) = mpsc::channel(64);
        let Some(partition) = id.reply_partition() else {
            return rx;
        };
        let hub = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let start = match after {
                Some(offset) => offset
                    .checked_add(1)
                    .ok_or_else(|| format!("no event follows offset {offset}")),
                None => hub
                    .stream_start(id, partition)
                    .map_err(|error| error.to_string()),
            };
            let listening = start.and_then(|start| {
                hub.tails
                    .listen(partition, id.to_string(), start, limit, tx.clone())
                    .map_err(|error| error.to_string())
            });
            if let Err(error) = listening {
                let _ = tx.blocking_send(Err(error));
            }
        });
        rx
    }

    /// Where a stream of `id`'s events starts without a resume position: at
    /// the first record since the id's time, else at the partition's end.
    fn stream_start(&self, id: RequestId, partition: i32) -> Result<i64, KafkaError> {
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
        let since = id.created_at() - Duration::from_secs(5);
        let since_ms = since
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
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

pub(crate) fn decode<M: Message>(message: &M) -> Option<ReplyEvent> {
    let headers = message.headers()?;
    let pairs: Vec<(&str, Option<&[u8]>)> = headers.iter().map(|h| (h.key, h.value)).collect();
    match ReplyEnvelope::from_headers(pairs) {
        Ok(envelope) => Some(ReplyEvent {
            envelope,
            body: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
            offset: message.offset(),
        }),
        Err(error) => {
            tracing::warn!(%error, partition = message.partition(), offset = message.offset(), "ignoring a malformed reply record");
            None
        }
    }
}

async fn consume(hub: Arc<ReplyHub>, consumer: StreamConsumer) {
    loop {
        match consumer.recv().await {
            Ok(message) => {
                if let Some(event) = decode(&message) {
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

/// Unix milliseconds `after` from now, for deadlines.
pub fn unix_ms_after(after: Duration) -> u64 {
    (SystemTime::now() + after)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}
