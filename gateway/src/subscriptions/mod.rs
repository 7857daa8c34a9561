//! Channel subscriptions: one Kafka consumer per subscribed topic per
//! gateway (the *live feed*), fanned out in memory to every subscriber, plus
//! the catch-up reads that bring a resuming subscriber up to the live feed
//! without a gap or a duplicate.
//!
//! A subscriber's place in a topic is a [`Positions`] vector: for every
//! partition, the next offset to deliver. Every event carries the vector as
//! it stands after the event, as its SSE id, so `Last-Event-ID` resumes
//! exactly after it. Subscribing snapshots the live feed's vector under the
//! same lock the feed holds while publishing, so the catch-up reads
//! `[start, snapshot)` from Kafka and the live feed delivers from the
//! snapshot on: the two meet exactly.

//!
//! Catch-ups share one reader per topic (`reader`): a resuming subscriber
//! costs its bounded buffer, not a Kafka client and a thread.
//!
//! # Layout
//! - [`positions`]: the position vector and its `Last-Event-ID` text.
//! - [`event`]: one record as subscribers get it, and the errors (a leaf).
//! - `reader`: the catch-up reader of a topic, serving every catch-up.
//! - `watermarks`: the partitions' log starts and ends.
//! - this file: the live feeds and what a subscriber is handed.

pub mod event;
pub mod positions;
mod reader;
mod watermarks;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use osmosis_support::kafka::ClientSettings;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Notify, broadcast, mpsc};

pub use event::{CatchUp, ChannelEvent, SubscriptionError};
pub use positions::{InvalidPositions, Positions};
pub use reader::CatchUpReceiver;

use crate::config::{CatchUpLimits, KafkaConfig};
use crate::metrics::{Limit, Metrics};
use reader::{Cursor, Range, Reader};
use watermarks::watermarks;

/// The live feed of one topic.
pub struct Feed {
    topic: String,
    /// The feed's positions; held while publishing so that a subscriber's
    /// snapshot and its first live event agree.
    positions: Mutex<Positions>,
    events: broadcast::Sender<Arc<ChannelEvent>>,
}

/// What a new subscriber gets: the live events from `snapshot` on.
pub struct LiveSubscription {
    pub events: broadcast::Receiver<Arc<ChannelEvent>>,
    pub snapshot: Positions,
}

impl Feed {
    pub fn subscribe(&self) -> LiveSubscription {
        let positions = self.positions.lock().unwrap();
        LiveSubscription {
            events: self.events.subscribe(),
            snapshot: positions.clone(),
        }
    }
}

/// Where a fresh subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
    /// The first record at or after this unix time in milliseconds.
    Time(i64),
}

/// Watermark and time lookups running at once.
const LOOKUPS_AT_ONCE: usize = 4;

/// Where a topic's catch-up reader takes new cursors, and what subscribers
/// signal when they take an event.
type ReaderHandle = (mpsc::UnboundedSender<Cursor>, Arc<Notify>);

/// All live feeds of this gateway, created on first subscription, and the
/// catch-up readers, one per topic.
pub struct Subscriptions {
    client_config: ClientConfig,
    buffer: usize,
    metadata_timeout: Duration,
    /// Started feeds, looked up on every subscription.
    feeds: Mutex<HashMap<String, Arc<Feed>>>,
    /// Serialises starting feeds, so that one topic never gets two.
    starting: tokio::sync::Mutex<()>,
    /// The client every watermark and time lookup shares, made on first
    /// use.
    metadata: Mutex<Option<Arc<BaseConsumer>>>,
    /// Lookups on blocking threads at once: a burst of subscriptions
    /// queues here instead of taking a thread each.
    lookups: tokio::sync::Semaphore,
    /// Each topic's catch-up reader: where its new cursors go, and what
    /// subscribers signal when they take an event.
    readers: Mutex<HashMap<String, ReaderHandle>>,
    /// One permit per catch-up under way: the catch-up cap.
    catch_ups: Arc<tokio::sync::Semaphore>,
    limits: CatchUpLimits,
    /// Counts the catch-up bounds when they bite.
    metrics: Arc<Metrics>,
}

impl Subscriptions {
    pub fn new(kafka: &KafkaConfig, buffer: usize) -> Self {
        let client_config = ClientSettings::new(&kafka.brokers)
            // Prefetch bounded (librdkafka's default queue is 64 MiB per
            // client): the broadcast ring, not the fetch queue, is the
            // subscriber's buffer.
            .defaults(&[("queued.max.messages.kbytes", "8192")])
            .user(&kafka.properties)
            .fixed(&[
                ("group.id", "osmosis-gateway-subscriptions"),
                ("enable.auto.commit", "false"),
                ("fetch.wait.max.ms", "10"),
                // A position below the log's start (retention) reads from
                // the start, and the catch-up reports the loss: never a
                // jump to the end.
                ("auto.offset.reset", "earliest"),
            ])
            .build();
        let limits = CatchUpLimits::default();
        Self {
            client_config,
            buffer,
            metadata_timeout: kafka.metadata_timeout(),
            feeds: Mutex::new(HashMap::new()),
            starting: tokio::sync::Mutex::new(()),
            metadata: Mutex::new(None),
            lookups: tokio::sync::Semaphore::new(LOOKUPS_AT_ONCE),
            readers: Mutex::new(HashMap::new()),
            catch_ups: Arc::new(tokio::sync::Semaphore::new(limits.max)),
            limits,
            metrics: Arc::default(),
        }
    }

    /// The catch-up cap, buffers and send timeout, counted in `metrics`.
    pub fn with_catch_up_limits(mut self, limits: &CatchUpLimits, metrics: Arc<Metrics>) -> Self {
        self.catch_ups = Arc::new(tokio::sync::Semaphore::new(limits.max));
        self.limits = limits.clone();
        self.metrics = metrics;
        self
    }

    /// Runs `read` with the shared metadata client on a blocking thread.
    async fn lookup<T: Send + 'static>(
        &self,
        topic: &str,
        read: impl FnOnce(&BaseConsumer, Duration) -> Result<T, KafkaError> + Send + 'static,
    ) -> Result<T, SubscriptionError> {
        let failed = |source| SubscriptionError::Kafka {
            topic: topic.to_owned(),
            source,
        };
        let client = {
            let mut metadata = self.metadata.lock().unwrap();
            match &*metadata {
                Some(client) => Arc::clone(client),
                None => {
                    let client: Arc<BaseConsumer> =
                        Arc::new(self.client_config.create().map_err(failed)?);
                    *metadata = Some(Arc::clone(&client));
                    client
                }
            }
        };
        let timeout = self.metadata_timeout;
        let _turn = self.lookups.acquire().await.expect("never closed");
        tokio::task::spawn_blocking(move || read(&client, timeout))
            .await
            .expect("metadata task panicked")
            .map_err(failed)
    }

    /// The live feed of `topic`, started from the topic's current end.
    pub async fn feed(&self, topic: &str) -> Result<Arc<Feed>, SubscriptionError> {
        if let Some(feed) = self.feeds.lock().unwrap().get(topic) {
            return Ok(Arc::clone(feed));
        }
        let _starting = self.starting.lock().await;
        if let Some(feed) = self.feeds.lock().unwrap().get(topic) {
            return Ok(Arc::clone(feed));
        }
        let failed = |source| SubscriptionError::Kafka {
            topic: topic.to_owned(),
            source,
        };
        let consumer: StreamConsumer = self.client_config.create().map_err(failed)?;
        let name = topic.to_owned();
        let ends = self
            .lookup(topic, move |client, timeout| {
                let mut ends = Positions::default();
                for (partition, (_, high)) in watermarks(client, &name, timeout)? {
                    ends.set(partition, high);
                }
                Ok(ends)
            })
            .await?;
        if ends.is_empty() {
            return Err(SubscriptionError::NoPartitions(topic.to_owned()));
        }
        let mut assignment = TopicPartitionList::new();
        for (partition, next) in ends.iter() {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(next))
                .map_err(failed)?;
        }
        consumer.assign(&assignment).map_err(failed)?;
        let feed = Arc::new(Feed {
            topic: topic.to_owned(),
            positions: Mutex::new(ends),
            events: broadcast::channel(self.buffer).0,
        });
        tracing::info!(topic, "live feed started");
        tokio::spawn(run_feed(Arc::clone(&feed), consumer));
        self.feeds
            .lock()
            .unwrap()
            .insert(topic.to_owned(), Arc::clone(&feed));
        Ok(feed)
    }

    /// The start positions of a fresh subscription.
    pub async fn start_positions(
        &self,
        topic: &str,
        from: StartAt,
    ) -> Result<Option<Positions>, SubscriptionError> {
        let name = topic.to_owned();
        match from {
            StartAt::Latest => Ok(None),
            StartAt::Earliest => {
                self.lookup(topic, move |client, timeout| {
                    let mut start = Positions::default();
                    for (partition, (low, _)) in watermarks(client, &name, timeout)? {
                        start.set(partition, low);
                    }
                    Ok(Some(start))
                })
                .await
            }
            StartAt::Time(millis) => {
                self.lookup(topic, move |client, timeout| {
                    let w = watermarks(client, &name, timeout)?;
                    let mut query = TopicPartitionList::new();
                    for partition in w.keys() {
                        query.add_partition_offset(&name, *partition, Offset::Offset(millis))?;
                    }
                    let found = client.offsets_for_times(query, timeout)?;
                    let mut start = Positions::default();
                    for (partition, (_, high)) in w {
                        let next = match found.find_partition(&name, partition).map(|e| e.offset())
                        {
                            Some(Offset::Offset(offset)) => offset,
                            // Nothing at or after that time: from the end.
                            _ => high,
                        };
                        start.set(partition, next);
                    }
                    Ok(Some(start))
                })
                .await
            }
        }
    }

    /// Reads `[start, until)` of every partition from Kafka, in offset order
    /// per partition, into a buffer the subscriber drains; ends with
    /// [`CatchUp::Done`] only when every record was handed over. Refused
    /// when the catch-up cap is reached. Partitions `start` does not name
    /// are read from the log's start.
    pub async fn catch_up(
        &self,
        topic: &str,
        start: Positions,
        until: Positions,
    ) -> Result<CatchUpReceiver, SubscriptionError> {
        let permit = Arc::clone(&self.catch_ups)
            .try_acquire_owned()
            .map_err(|_| {
                self.metrics.limited(Limit::CatchUps);
                SubscriptionError::TooManyCatchUps
            })?;
        let mut remaining = BTreeMap::new();
        for (partition, end) in until.iter() {
            let from = start.get(partition);
            let next = from.unwrap_or(0);
            if next < end {
                let report_loss = from.is_some();
                remaining.insert(
                    partition,
                    Range {
                        next,
                        end,
                        report_loss,
                    },
                );
            }
        }
        let (new, room) = self.reader(topic)?;
        let partitions: Vec<i32> = remaining.keys().copied().collect();
        let (mut cursor, receiver) = reader::cursor(remaining, room, permit);
        if !partitions.is_empty() {
            let name = topic.to_owned();
            let lows = self
                .lookup(topic, move |client, timeout| {
                    let mut lows = BTreeMap::new();
                    for partition in partitions {
                        let (low, _) = client.fetch_watermarks(&name, partition, timeout)?;
                        lows.insert(partition, low);
                    }
                    Ok(lows)
                })
                .await?;
            cursor.skip_deleted(&lows);
        }
        if cursor.is_complete() {
            cursor.finish(CatchUp::Done);
        } else if new.send(cursor).is_err() {
            unreachable!("a topic's reader runs as long as its subscriptions");
        }
        Ok(receiver)
    }

    /// The catch-up reader of `topic`, started if it is not yet.
    fn reader(&self, topic: &str) -> Result<ReaderHandle, SubscriptionError> {
        let mut readers = self.readers.lock().unwrap();
        if let Some((new, room)) = readers.get(topic) {
            return Ok((new.clone(), Arc::clone(room)));
        }
        let consumer: StreamConsumer = reader::reader_client(&self.client_config)
            .create()
            .map_err(|source| SubscriptionError::Kafka {
                topic: topic.to_owned(),
                source,
            })?;
        let (new, cursors) = mpsc::unbounded_channel();
        let room = Arc::new(Notify::new());
        let reader = Reader {
            topic: topic.to_owned(),
            consumer,
            new: cursors,
            room: Arc::clone(&room),
            buffer_bytes: self.limits.buffer_bytes,
            send_timeout: Duration::from_millis(self.limits.send_timeout_ms),
            metrics: Arc::clone(&self.metrics),
        };
        tokio::spawn(reader.run());
        readers.insert(topic.to_owned(), (new.clone(), Arc::clone(&room)));
        Ok((new, room))
    }
}

async fn run_feed(feed: Arc<Feed>, consumer: StreamConsumer) {
    loop {
        match consumer.recv().await {
            Ok(message) => {
                let mut positions = feed.positions.lock().unwrap();
                positions.advance(message.partition(), message.offset());
                let event = ChannelEvent::from_message(&message, Arc::from(positions.to_string()));
                // No receivers is fine: the feed keeps its place.
                let _ = feed.events.send(Arc::new(event));
            }
            Err(error) => tracing::warn!(topic = %feed.topic, %error, "live feed error"),
        }
    }
}
