//! Writing request records into channel topics.
//!
//! [`ChannelWriter`] is what the HTTP layer sees: hand it a record, get back
//! where Kafka durably stored it, or why it could not. [`KafkaChannels`] is the
//! real implementation (an idempotent rdkafka producer with `acks=all`); fast
//! unit tests of the HTTP layer substitute an in-memory writer.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::config::{ChannelConfig, KafkaConfig};

/// A record on its way into Kafka: a request into its channel, or an event
/// onto a reply partition.
#[derive(Debug)]
pub struct ChannelRecord {
    /// Destination topic.
    pub topic: String,
    /// Destination partition; `None` lets the key (or the partitioner) decide.
    pub partition: Option<i32>,
    /// Routing key; `None` lets the partitioner spread records.
    pub key: Option<Vec<u8>>,
    /// The record value: a request body byte for byte.
    pub value: Bytes,
    /// Record headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl ChannelRecord {
    /// Headers as `(name, value)` pairs, e.g. for the protocol's decoders.
    pub fn header_pairs(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.headers
            .iter()
            .map(|(name, value)| (name.as_str(), Some(value.as_slice())))
    }
}

/// Converts a protocol header list into a record's headers.
pub fn owned_headers(pairs: Vec<(&str, std::borrow::Cow<'_, [u8]>)>) -> Vec<(String, Vec<u8>)> {
    pairs
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.into_owned()))
        .collect()
}

/// Where Kafka stored a record once it acknowledged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    pub partition: i32,
    pub offset: i64,
}

/// Why a record is not (known to be) stored.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The producer's local queue is full: Kafka is slower than the ingest.
    #[error("the producer queue is full")]
    QueueFull,
    /// Kafka did not acknowledge the record in time or refused it.
    #[error("Kafka did not acknowledge the write: {0}")]
    NotAcknowledged(String),
    /// The broker refuses records this large.
    #[error("the record is larger than the broker accepts")]
    TooLarge,
}

/// Something that durably writes records into channels.
pub trait ChannelWriter: Send + Sync + 'static {
    /// Writes one record; resolves once the broker acknowledged it.
    fn write(&self, record: ChannelRecord) -> BoxFuture<'static, Result<Stored, WriteError>>;

    /// Records accepted but not yet acknowledged or failed.
    fn queue_depth(&self) -> u64;

    /// Whether the cluster answers a metadata request within its timeout.
    fn ready(&self) -> BoxFuture<'static, Result<(), String>>;
}

/// Start-up failures of the Kafka side.
#[derive(Debug, thiserror::Error)]
pub enum ChannelSetupError {
    #[error("invalid Kafka client configuration: {0}")]
    Client(#[source] KafkaError),
    #[error(
        "channel topic {0:?} does not exist on the cluster; create it (or start with --create-topics)"
    )]
    Missing(String),
    #[error("cannot read metadata of channel topic {topic:?}: {source}")]
    Metadata {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot create channel topic {topic:?}: {reason}")]
    Create { topic: String, reason: String },
}

/// Logs librdkafka's own errors (broker down, authentication...) through
/// `tracing`, so that operators see them next to the request logs.
#[derive(Clone, Default)]
pub struct LoggingContext;

impl ClientContext for LoggingContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
    }
}

/// The real [`ChannelWriter`]: an idempotent producer with `acks=all`.
#[derive(Clone)]
pub struct KafkaChannels {
    producer: FutureProducer<LoggingContext>,
    client_config: ClientConfig,
    metadata_timeout: Duration,
}

impl KafkaChannels {
    /// Builds the producer; connects lazily, so this does not need Kafka up.
    pub fn new(config: &KafkaConfig) -> Result<Self, ChannelSetupError> {
        let mut client_config = ClientConfig::new();
        // Defaults that suit a gateway; the user's properties may override them.
        client_config
            .set("linger.ms", "2")
            .set("reconnect.backoff.max.ms", "1000");
        for (name, value) in &config.properties {
            client_config.set(name, value);
        }
        client_config
            .set("bootstrap.servers", &config.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", config.produce_timeout_ms.to_string());
        let producer = client_config
            .create_with_context(LoggingContext)
            .map_err(ChannelSetupError::Client)?;
        Ok(Self {
            producer,
            client_config,
            metadata_timeout: config.metadata_timeout(),
        })
    }

    /// Checks that every channel topic exists; with `create`, creates the
    /// missing ones first with their configured partitions.
    pub async fn ensure_topics(
        &self,
        channels: &BTreeMap<String, ChannelConfig>,
        create: bool,
    ) -> Result<(), ChannelSetupError> {
        if create {
            self.create_topics(channels).await?;
        }
        for topic in channels.keys() {
            let producer = self.producer.clone();
            let timeout = self.metadata_timeout;
            let topic_name = topic.clone();
            let exists = tokio::task::spawn_blocking(move || {
                topic_has_partitions(&producer, &topic_name, timeout)
            })
            .await
            .expect("metadata task panicked")
            .map_err(|source| ChannelSetupError::Metadata {
                topic: topic.clone(),
                source,
            })?;
            if !exists {
                return Err(ChannelSetupError::Missing(topic.clone()));
            }
        }
        Ok(())
    }

    async fn create_topics(
        &self,
        channels: &BTreeMap<String, ChannelConfig>,
    ) -> Result<(), ChannelSetupError> {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config
            .create()
            .map_err(ChannelSetupError::Client)?;
        let new_topics: Vec<NewTopic> = channels
            .iter()
            .map(|(name, channel)| {
                NewTopic::new(
                    name,
                    channel.partitions,
                    TopicReplication::Fixed(channel.replication_factor),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Timeout::After(
            self.metadata_timeout.max(Duration::from_secs(10)),
        )));
        let results = admin
            .create_topics(&new_topics, &options)
            .await
            .map_err(|error| ChannelSetupError::Create {
                topic: channels.keys().cloned().collect::<Vec<_>>().join(","),
                reason: error.to_string(),
            })?;
        for result in results {
            match result {
                Ok(topic) => tracing::info!(topic, "created channel topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(ChannelSetupError::Create {
                        topic,
                        reason: code.to_string(),
                    });
                }
            }
        }
        // A freshly created topic takes a moment to appear in metadata.
        let producer = self.producer.clone();
        let topics: Vec<String> = channels.keys().cloned().collect();
        let timeout = self.metadata_timeout;
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            for topic in topics {
                while !topic_has_partitions(&producer, &topic, timeout).unwrap_or(false)
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
        .await
        .expect("metadata task panicked");
        Ok(())
    }

    /// Waits for every queued record to be acknowledged or to fail.
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.producer.clone();
        let result = tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .expect("flush task panicked");
        match result {
            Ok(()) => tracing::info!("producer flushed"),
            Err(error) => tracing::warn!(%error, "producer not fully flushed"),
        }
    }
}

fn topic_has_partitions(
    producer: &FutureProducer<LoggingContext>,
    topic: &str,
    timeout: Duration,
) -> Result<bool, KafkaError> {
    let metadata = producer.client().fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
}

impl ChannelWriter for KafkaChannels {
    fn write(&self, record: ChannelRecord) -> BoxFuture<'static, Result<Stored, WriteError>> {
        let headers = record
            .headers
            .iter()
            .fold(OwnedHeaders::new(), |headers, (name, value)| {
                headers.insert(Header {
                    key: name,
                    value: Some(value.as_slice()),
                })
            });
        let mut kafka_record = FutureRecord::to(&record.topic)
            .payload(record.value.as_ref())
            .headers(headers);
        if let Some(key) = &record.key {
            kafka_record = kafka_record.key(key.as_slice());
        }
        if let Some(partition) = record.partition {
            kafka_record = kafka_record.partition(partition);
        }
        // librdkafka copies the record into its queue here, so nothing above
        // needs to outlive this call; only the acknowledgement is awaited.
        let delivery = self
            .producer
            .send_result(kafka_record)
            .map_err(|(error, _)| write_error(error));
        Box::pin(async move {
            match delivery?.await {
                Ok(Ok(stored)) => Ok(Stored {
                    partition: stored.partition,
                    offset: stored.offset,
                }),
                Ok(Err((error, _))) => Err(write_error(error)),
                Err(_canceled) => Err(WriteError::NotAcknowledged(
                    "the producer was shut down".into(),
                )),
            }
        })
    }

    fn queue_depth(&self) -> u64 {
        self.producer.in_flight_count().max(0) as u64
    }

    fn ready(&self) -> BoxFuture<'static, Result<(), String>> {
        let producer = self.producer.clone();
        let timeout = self.metadata_timeout;
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(None, timeout)
                    .map(drop)
                    .map_err(|error| error.to_string())
            })
            .await
            .map_err(|error| error.to_string())?
        })
    }
}

fn write_error(error: KafkaError) -> WriteError {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => WriteError::QueueFull,
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => WriteError::TooLarge,
        _ => WriteError::NotAcknowledged(error.to_string()),
    }
}
