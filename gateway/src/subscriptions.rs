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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{broadcast, mpsc};

use crate::config::KafkaConfig;

/// Next offset to deliver, per partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Positions(BTreeMap<i32, i64>);

/// A `Last-Event-ID` that is not a position vector.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an event id of this stream (partition:offset pairs)")]
pub struct InvalidPositions(String);

impl Positions {
    pub fn get(&self, partition: i32) -> Option<i64> {
        self.0.get(&partition).copied()
    }

    pub fn set(&mut self, partition: i32, next: i64) {
        self.0.insert(partition, next);
    }

    /// Marks `offset` of `partition` as delivered.
    pub fn advance(&mut self, partition: i32, offset: i64) {
        self.0.insert(partition, offset + 1);
    }

    pub fn iter(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.0.iter().map(|(p, o)| (*p, *o))
    }
}

/// `0:17,1:5`: partition `0` resumes at offset 17, partition 1 at 5.
impl fmt::Display for Positions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (partition, next)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{partition}:{next}")?;
        }
        Ok(())
    }
}

impl FromStr for Positions {
    type Err = InvalidPositions;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidPositions(text.to_owned());
        let mut positions = BTreeMap::new();
        for pair in text.trim().split(',') {
            let (partition, next) = pair.split_once(':').ok_or_else(invalid)?;
            let partition: i32 = partition.parse().map_err(|_| invalid())?;
            let next: i64 = next.parse().map_err(|_| invalid())?;
            if partition < 0 || next < 0 || positions.insert(partition, next).is_some() {
                return Err(invalid());
            }
        }
        Ok(Self(positions))
    }
}

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
    fn from_message<M: Message>(message: &M, positions: Arc<str>) -> Self {
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
}

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
}

impl Subscriptions {
    pub fn new(kafka: &KafkaConfig, buffer: usize) -> Self {
        let mut client_config = ClientConfig::new();
        // Prefetch bounded (librdkafka's default queue is 64 MiB per client):
        // the broadcast ring, not the fetch queue, is the subscriber's buffer.
        client_config.set("queued.max.messages.kbytes", "8192");
        for (name, value) in &kafka.properties {
            client_config.set(name, value);
        }
        client_config
            .set("bootstrap.servers", &kafka.brokers)
            .set("group.id", "osmosis-gateway-subscriptions")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10");
        Self {
            client_config,
            buffer,
            metadata_timeout: kafka.metadata_timeout(),
            feeds: Mutex::new(HashMap::new()),
            starting: tokio::sync::Mutex::new(()),
        }
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
        if ends.0.is_empty() {
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
    /// per partition, into a bounded channel the subscriber drains.
    pub fn catch_up(
        &self,
        topic: &str,
        start: Positions,
        until: Positions,
    ) -> mpsc::Receiver<Result<ChannelEvent, SubscriptionError>> {
        let (tx, rx) = mpsc::channel(256);
        let client_config = self.client_config.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            if let Err(source) = read_range(&client_config, &topic, &start, &until, &tx) {
                let _ = tx.blocking_send(Err(SubscriptionError::Kafka { topic, source }));
            }
        });
        rx
    }
}

fn read_range(
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
fn watermarks(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_their_text() {
        let mut positions = Positions::default();
        positions.set(0, 17);
        positions.set(2, 0);
        positions.advance(1, 4);
        assert_eq!(positions.to_string(), "0:17,1:5,2:0");
        assert_eq!("0:17,1:5,2:0".parse::<Positions>().unwrap(), positions);
    }

    #[test]
    fn malformed_event_ids_are_rejected() {
        for bad in [
            "", "0", "0:", ":1", "a:1", "0:-1", "-1:0", "0:1,0:2", "0:1;1:2",
        ] {
            assert!(bad.parse::<Positions>().is_err(), "{bad:?}");
        }
    }
}
