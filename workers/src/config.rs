//! Worker settings: command-line flags, each with an `OSMOSIS_WORKER_*`
//! environment variable, so a worker binary configures the same way in a
//! terminal and in a Deployment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use osmosis_support::kafka::PropertyParser;

/// The default of `--max-in-flight-per-partition`: enough that a reply's
/// acknowledgement (a few ms) does not bound a partition's rate, few
/// enough that a crash redelivers little.
pub const DEFAULT_MAX_IN_FLIGHT_PER_PARTITION: u32 = 32;

/// What a worker's handlers keep in order.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ordering {
    /// One handler at a time per partition, in offset order.
    #[default]
    Partition,
    /// One handler at a time per record key, in offset order within a key;
    /// different keys of one partition run at once.
    Key,
}

/// Everything the runtime needs; `#[command(flatten)]` it into a binary's
/// own arguments.
#[derive(Args, Clone, Debug)]
pub struct WorkerConfig {
    /// Kafka bootstrap servers.
    #[arg(long, env = "OSMOSIS_WORKER_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Channel topic to pull requests from.
    #[arg(long, env = "OSMOSIS_WORKER_CHANNEL")]
    pub channel: String,
    /// Consumer group; every replica of one worker shares it.
    /// Default: `<channel>.workers`.
    #[arg(long, env = "OSMOSIS_WORKER_GROUP")]
    pub group: Option<String>,
    /// Handlers running at once, across partitions (order is kept per
    /// partition, or per key with `--ordering key`).
    #[arg(long, env = "OSMOSIS_WORKER_MAX_IN_FLIGHT", default_value_t = 16)]
    pub max_in_flight: usize,
    /// Messages of one partition taken and not yet finished (handled, and
    /// their reply or dead letter acknowledged by Kafka): a reply's
    /// acknowledgement does not hold the partition's next message back
    /// while fewer are in flight. Offsets are committed as the contiguous
    /// prefix of finished messages, so a crash redelivers at most this
    /// many per partition. `1` is the sequential loop: each message's reply
    /// acknowledged before the next message is taken.
    #[arg(
        long,
        env = "OSMOSIS_WORKER_MAX_IN_FLIGHT_PER_PARTITION",
        default_value_t = DEFAULT_MAX_IN_FLIGHT_PER_PARTITION,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub max_in_flight_per_partition: u32,
    /// What handlers keep in order: `partition` (one handler at a time per
    /// partition, in offset order) or `key` (one at a time per record key,
    /// different keys of a partition at once, bounded by
    /// `--max-in-flight-per-partition` and `--max-in-flight`; records
    /// without a key share one lane).
    #[arg(
        long,
        env = "OSMOSIS_WORKER_ORDERING",
        value_enum,
        default_value_t = Ordering::Partition
    )]
    pub ordering: Ordering,
    /// Retries of a failing handler before the request is dead-lettered.
    #[arg(long, env = "OSMOSIS_WORKER_MAX_RETRIES", default_value_t = 3)]
    pub max_retries: u32,
    /// First retry delay; doubles on every retry, up to 30 s.
    #[arg(long, env = "OSMOSIS_WORKER_RETRY_BACKOFF_MS", default_value_t = 200)]
    pub retry_backoff_ms: u64,
    /// On SIGTERM, and when partitions are revoked, how long their
    /// messages in flight (started handlers, unacknowledged replies) may
    /// take to finish before they are abandoned (and later redelivered).
    #[arg(
        long,
        env = "OSMOSIS_WORKER_DRAIN_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub drain_timeout_ms: u64,
    /// A partition whose message has been in process (waiting for a
    /// handler slot, or in the handler) this long is reported slow: a log
    /// line, `osmosis_worker_partitions_stalled{state="slow"}`, and a
    /// reason in `/healthz`, which stays 200.
    #[arg(long, env = "OSMOSIS_WORKER_SLOW_AFTER_MS", default_value_t = 60_000)]
    pub slow_after_ms: u64,
    /// A partition whose reply or dead letter has been unacknowledged this
    /// long is reported stuck: a log line,
    /// `osmosis_worker_partitions_stalled{state="stuck"}`, and `/healthz`
    /// answers 503 with the reason.
    #[arg(long, env = "OSMOSIS_WORKER_STUCK_AFTER_MS", default_value_t = 60_000)]
    pub stuck_after_ms: u64,
    /// How long a reply's or dead letter's topic or partition may stay
    /// unknown to Kafka before the record is given up as undeliverable
    /// (other permanent errors, such as a record too large, are never
    /// retried; transient ones always are).
    #[arg(
        long,
        env = "OSMOSIS_WORKER_UNKNOWN_TOPIC_TIMEOUT_MS",
        default_value_t = 60_000
    )]
    pub unknown_topic_timeout_ms: u64,
    /// Address of the `/metrics` and `/healthz` endpoint (port 0: any free port).
    #[arg(
        long,
        env = "OSMOSIS_WORKER_METRICS_LISTEN",
        default_value = "127.0.0.1:0"
    )]
    pub metrics_listen: SocketAddr,
    /// Extra librdkafka property for both the consumer and the producer,
    /// `name=value` (repeatable; e.g. `security.protocol=SASL_SSL`).
    #[arg(long = "kafka-property", env = "OSMOSIS_WORKER_KAFKA_PROPERTIES", value_delimiter = ',', value_parser = PropertyParser)]
    pub kafka_properties: Vec<(String, String)>,
    /// Extra librdkafka property for the consumer only (e.g.
    /// `fetch.max.bytes=1048576`); applied after `--kafka-property`.
    #[arg(long = "consumer-property", env = "OSMOSIS_WORKER_CONSUMER_PROPERTIES", value_delimiter = ',', value_parser = PropertyParser)]
    pub consumer_properties: Vec<(String, String)>,
    /// Extra librdkafka property for the producer of replies and dead
    /// letters only (e.g. `compression.type=lz4`).
    #[arg(long = "producer-property", env = "OSMOSIS_WORKER_PRODUCER_PROPERTIES", value_delimiter = ',', value_parser = PropertyParser)]
    pub producer_properties: Vec<(String, String)>,
    /// Logging of the worker process: call `log.init()` first thing.
    #[command(flatten)]
    pub log: osmosis_support::LogArgs,
}

impl WorkerConfig {
    /// A configuration with defaults for `channel` on `brokers`, for tests
    /// and embedding.
    pub fn new(brokers: impl Into<String>, channel: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            channel: channel.into(),
            group: None,
            max_in_flight: 16,
            max_in_flight_per_partition: DEFAULT_MAX_IN_FLIGHT_PER_PARTITION,
            ordering: Ordering::Partition,
            max_retries: 3,
            retry_backoff_ms: 200,
            drain_timeout_ms: 30_000,
            slow_after_ms: 60_000,
            stuck_after_ms: 60_000,
            unknown_topic_timeout_ms: 60_000,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            kafka_properties: Vec::new(),
            consumer_properties: Vec::new(),
            producer_properties: Vec::new(),
            log: osmosis_support::LogArgs::default(),
        }
    }

    pub fn group(&self) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("{}.workers", self.channel))
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// When a partition is reported slow or stuck.
    pub(crate) fn stall_bounds(&self) -> crate::progress::Bounds {
        crate::progress::Bounds {
            slow_after: Duration::from_millis(self.slow_after_ms),
            stuck_after: Duration::from_millis(self.stuck_after_ms),
        }
    }

    /// How replies and dead letters are retried.
    pub(crate) fn delivery_retry(&self) -> crate::delivery::Retry {
        crate::delivery::Retry {
            unknown_for: Duration::from_millis(self.unknown_topic_timeout_ms),
            ..crate::delivery::Retry::default()
        }
    }

    /// Delay before retry number `retry` (1-based): exponential, capped.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u64.saturating_pow(retry.saturating_sub(1));
        Duration::from_millis(self.retry_backoff_ms.saturating_mul(factor))
            .min(Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let config = WorkerConfig::new("b", "c");
        assert_eq!(config.backoff(1), Duration::from_millis(200));
        assert_eq!(config.backoff(2), Duration::from_millis(400));
        assert_eq!(config.backoff(3), Duration::from_millis(800));
        assert_eq!(config.backoff(40), Duration::from_secs(30));
    }

    #[test]
    fn the_group_defaults_to_the_channel() {
        assert_eq!(WorkerConfig::new("b", "orders").group(), "orders.workers");
    }
}
