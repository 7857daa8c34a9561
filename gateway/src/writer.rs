//! The Kafka writes behind every accepted request: hand a record to the
//! [`RecordWriter`], get back where Kafka durably stored it, or why it could
//! not. Request records go to channel topics; the reply hub writes its
//! `accepted` markers onto reply partitions through the same writer.
//!
//! [`KafkaWriter`] is the real implementation (an idempotent rdkafka
//! producer with `acks=all`); fast unit tests of the HTTP layer substitute
//! an in-memory writer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use osmosis_support::kafka::{ClientSettings, LoggingContext, RefusedConfig};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::config::KafkaConfig;

/// A record on its way into Kafka: a request into its channel, or an event
/// onto a reply partition.
#[derive(Debug)]
pub struct OutboundRecord {
    /// Destination topic (a route's channel shares its name, not a copy).
    pub topic: Arc<str>,
    /// Destination partition; `None` lets the key (or the partitioner) decide.
    pub partition: Option<i32>,
    /// Routing key; `None` lets the partitioner spread records.
    pub key: Option<Vec<u8>>,
    /// The record value: a request body byte for byte.
    pub value: Bytes,
    /// Record headers, in order, built once as the producer takes them
    /// (no copy of names and values between the record and the send).
    pub headers: OwnedHeaders,
}

impl OutboundRecord {
    /// Headers as `(name, value)` pairs, e.g. for the protocol's decoders.
    pub fn header_pairs(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.headers.iter().map(|header| (header.key, header.value))
    }

    /// The record with one more header.
    pub fn with_header(mut self, name: &str, value: &[u8]) -> Self {
        self.headers = std::mem::take(&mut self.headers).insert(Header {
            key: name,
            value: Some(value),
        });
        self
    }
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
    NotAcknowledged(KafkaError),
    /// The producer was shut down before the acknowledgement came.
    #[error("the producer was shut down")]
    Closed,
    /// The broker refuses records this large.
    #[error("the record is larger than the broker accepts")]
    TooLarge,
}

/// Kafka did not answer a metadata request.
#[derive(Debug, thiserror::Error)]
#[error("Kafka is not reachable: {0}")]
pub struct Unreachable(#[from] pub KafkaError);

/// Something that durably writes records into Kafka.
pub trait RecordWriter: Send + Sync + 'static {
    /// Writes one record; resolves once the broker acknowledged it.
    fn write(&self, record: OutboundRecord) -> BoxFuture<'static, Result<Stored, WriteError>>;

    /// Records accepted but not yet acknowledged or failed.
    fn queue_depth(&self) -> u64;

    /// Whether the cluster answers a metadata request within its timeout.
    fn ready(&self) -> BoxFuture<'static, Result<(), Unreachable>>;
}

/// The real [`RecordWriter`]: an idempotent producer with `acks=all`.
#[derive(Clone)]
pub struct KafkaWriter {
    producer: FutureProducer<LoggingContext>,
    client_config: ClientConfig,
    metadata_timeout: Duration,
}

/// The gateway's producer settings: its defaults, the configured
/// properties, and the durability it fixes. The benchmarks' raw producers
/// take them too, so that a floor differs from the gateway only by what
/// the gateway does around the send.
pub fn producer_settings(config: &KafkaConfig) -> ClientSettings {
    ClientSettings::new(&config.brokers)
        // No linger: measured (`osmosis-bench reply`, `ingest`) it takes
        // ~3 ms off a request-reply round trip at 500 req/s and costs no
        // throughput at depth, where records batch while earlier requests
        // are in flight anyway.
        .defaults(&[("linger.ms", "0"), ("reconnect.backoff.max.ms", "1000")])
        .user(&config.properties)
        .fixed(&[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("message.timeout.ms", &config.produce_timeout_ms.to_string()),
        ])
}

impl KafkaWriter {
    /// Builds the producer; connects lazily, so this does not need Kafka up.
    /// A refused property is named without its value.
    pub fn new(config: &KafkaConfig) -> Result<Self, RefusedConfig> {
        let settings = producer_settings(config);
        Ok(Self {
            producer: settings.create_with(LoggingContext)?,
            client_config: settings.build(),
            metadata_timeout: config.metadata_timeout(),
        })
    }

    /// The producer's client settings, for admin clients of the same cluster.
    pub fn client_config(&self) -> &ClientConfig {
        &self.client_config
    }

    /// The producer, for metadata requests.
    pub fn producer(&self) -> &FutureProducer<LoggingContext> {
        &self.producer
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

impl RecordWriter for KafkaWriter {
    fn write(&self, record: OutboundRecord) -> BoxFuture<'static, Result<Stored, WriteError>> {
        let OutboundRecord {
            topic,
            partition,
            key,
            value,
            headers,
        } = record;
        let mut kafka_record = FutureRecord::to(&topic)
            .payload(value.as_ref())
            .headers(headers);
        if let Some(key) = &key {
            kafka_record = kafka_record.key(key.as_slice());
        }
        if let Some(partition) = partition {
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
                Err(_canceled) => Err(WriteError::Closed),
            }
        })
    }

    fn queue_depth(&self) -> u64 {
        self.producer.in_flight_count().max(0) as u64
    }

    fn ready(&self) -> BoxFuture<'static, Result<(), Unreachable>> {
        let producer = self.producer.clone();
        let timeout = self.metadata_timeout;
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                producer.client().fetch_metadata(None, timeout).map(drop)
            })
            .await
            .expect("metadata task panicked")
            .map_err(Unreachable)
        })
    }
}

fn write_error(error: KafkaError) -> WriteError {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => WriteError::QueueFull,
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => WriteError::TooLarge,
        _ => WriteError::NotAcknowledged(error),
    }
}
