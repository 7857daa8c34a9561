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
//! # Layout
//! - [`positions`]: the position vector and its `Last-Event-ID` text.
//! - [`event`]: one record as subscribers get it, and the errors (a leaf).
//! - `catch_up`: the Kafka reads of resumes and start positions.
//! - this file: the live feeds and what a subscriber is handed.

mod catch_up;
pub mod event;
pub mod positions;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use osmosis_support::kafka::ClientSettings;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{broadcast, mpsc};

pub use event::{CatchUp, ChannelEvent, SubscriptionError};
pub use positions::{InvalidPositions, Positions};

use crate::config::{CatchUpLimits, KafkaConfig};
use crate::metrics::{Limit, Metrics};
use catch_up::{Ended, read_range, watermarks};

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

/// All live feeds of this gateway, created on first subscription.
pub struct Subscriptions {
    client_config: ClientConfig,
    buffer: usize,
    metadata_timeout: Duration,
    /// Started feeds, looked up on every subscription.
    feeds: Mutex<HashMap<String, Arc<Feed>>>,
    /// Serialises starting feeds, so that one topic never gets two.
    starting: tokio::sync::Mutex<()>,
    /// One permit per catch-up reading Kafka (each holds a Kafka client
    /// and a blocking thread): the catch-up cap.
    catch_ups: Arc<tokio::sync::Semaphore>,
    /// Longest a catch-up waits for its subscriber to take an event.
    catch_up_send_timeout: Duration,
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
            catch_ups: Arc::new(tokio::sync::Semaphore::new(limits.max)),
            catch_up_send_timeout: Duration::from_millis(limits.send_timeout_ms),
            metrics: Arc::default(),
        }
    }

    /// The catch-up cap and send timeout, counted in `metrics`.
    pub fn with_catch_up_limits(mut self, limits: &CatchUpLimits, metrics: Arc<Metrics>) -> Self {
        self.catch_ups = Arc::new(tokio::sync::Semaphore::new(limits.max));
        self.catch_up_send_timeout = Duration::from_millis(limits.send_timeout_ms);
        self.metrics = metrics;
        self
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
        let (client_config, topic_name, timeout) = (
            self.client_config.clone(),
            topic.to_owned(),
            self.metadata_timeout,
        );
        let ends = tokio::task::spawn_blocking(move || {
            watermarks(&client_config, &topic_name, timeout).map(|w| {
                let mut ends = Positions::default();
                for (partition, (_, high)) in w {
                    ends.set(partition, high);
                }
                ends
            })
        })
        .await
        .expect("metadata task panicked")
        .map_err(failed)?;
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
        let (client_config, topic_name, timeout) = (
            self.client_config.clone(),
            topic.to_owned(),
            self.metadata_timeout,
        );
        let failed = |source| SubscriptionError::Kafka {
            topic: topic.to_owned(),
            source,
        };
        match from {
            StartAt::Latest => Ok(None),
            StartAt::Earliest => tokio::task::spawn_blocking(move || {
                watermarks(&client_config, &topic_name, timeout).map(|w| {
                    let mut start = Positions::default();
                    for (partition, (low, _)) in w {
                        start.set(partition, low);
                    }
                    Some(start)
                })
            })
            .await
            .expect("metadata task panicked")
            .map_err(failed),
            StartAt::Time(millis) => tokio::task::spawn_blocking(move || {
                let consumer: BaseConsumer = client_config.create()?;
                let w = watermarks(&client_config, &topic_name, timeout)?;
                let mut query = TopicPartitionList::new();
                for partition in w.keys() {
                    query.add_partition_offset(&topic_name, *partition, Offset::Offset(millis))?;
                }
                let found = consumer.offsets_for_times(query, timeout)?;
                let mut start = Positions::default();
                for (partition, (_, high)) in w {
                    let next = match found
                        .find_partition(&topic_name, partition)
                        .map(|e| e.offset())
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
            .expect("metadata task panicked")
            .map_err(failed),
        }
    }

    /// Reads `[start, until)` of every partition from Kafka, in offset order
    /// per partition, into a bounded channel the subscriber drains; ends
    /// with [`CatchUp::Done`] only when every record was handed over.
    /// Refused when the catch-up cap is reached.
    pub fn catch_up(
        &self,
        topic: &str,
        start: Positions,
        until: Positions,
    ) -> Result<mpsc::Receiver<CatchUp>, SubscriptionError> {
        let permit = Arc::clone(&self.catch_ups)
            .try_acquire_owned()
            .map_err(|_| {
                self.metrics.limited(Limit::CatchUps);
                SubscriptionError::TooManyCatchUps
            })?;
        let (tx, rx) = mpsc::channel(256);
        let client_config = self.client_config.clone();
        let topic = topic.to_owned();
        let (send_timeout, metrics) = (self.catch_up_send_timeout, Arc::clone(&self.metrics));
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let ended = read_range(&client_config, &topic, &start, &until, &tx, send_timeout);
            let last = match ended {
                Ok(Ended::Complete) => CatchUp::Done,
                Ok(Ended::Stalled) => {
                    metrics.limited(Limit::CatchUpStalled);
                    return;
                }
                Ok(Ended::SubscriberGone | Ended::NoProgress) => return,
                Err(source) => CatchUp::Failed(SubscriptionError::Kafka { topic, source }),
            };
            let _ = tx.blocking_send(last);
        });
        Ok(rx)
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
