//! The Kafka clients the runtime uses: the consumer's and the producer's
//! settings (the user's properties, the runtime's defaults, and what
//! at-least-once rests on), the consumer's context (rebalance and commit
//! logs, the lag metric, the hook that lets revoked partitions finish
//! their messages in flight) and the dead-letter topic's creation.
//!
//! It builds the clients and does not use them: consuming is `runtime`'s and
//! `partitions`', producing is `replier`'s.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use osmosis_support::kafka::{ClientRole, ClientSettings, LoggingContext, check_connection};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::WorkerConfig;
use crate::error::Error;
use crate::metrics::{Metrics, PartitionLabels};

/// The longest the start-up waits for Kafka's first answer.
const START_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The clients [`connect`] made.
pub(crate) struct Clients {
    /// Subscribed to the channel; stores offsets only when told to, and
    /// commits the stored ones in the background.
    pub(crate) consumer: StreamConsumer<WorkerContext>,
    /// For replies and dead letters: every record acknowledged by all
    /// in-sync replicas, without duplicates from its own retries.
    pub(crate) producer: FutureProducer,
}

/// Creates the consumer and the producer, checks that Kafka answers and
/// accepts the shared properties' credentials, then subscribes the
/// consumer to the channel and creates the dead-letter topic when it is
/// missing.
pub(crate) async fn connect(
    config: &WorkerConfig,
    metrics: &Arc<Metrics>,
) -> Result<Clients, Error> {
    // Defaults, then the user's shared properties, then the side's own;
    // what at-least-once rests on is not negotiable.
    let shared = ClientSettings::new(&config.brokers)
        .user(config.kafka_properties.iter().map(|(k, v)| (k, v)));
    let group = config.group();
    let consumer_settings = shared
        .clone()
        .defaults(&[
            ("auto.commit.interval.ms", "1000"),
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", "10000"),
            ("statistics.interval.ms", "5000"),
        ])
        .user(config.consumer_properties.iter().map(|(k, v)| (k, v)))
        .fixed(&[
            ("group.id", &group),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "false"),
        ]);
    let producer_settings = shared
        .clone()
        // No linger: a reply is someone's wait; replies batch under load
        // while earlier produce requests are in flight anyway.
        .defaults(&[("linger.ms", "0"), ("message.timeout.ms", "30000")])
        .user(config.producer_properties.iter().map(|(k, v)| (k, v)))
        .fixed(&[("acks", "all"), ("enable.idempotence", "true")]);
    // Created first (they connect lazily), so that a refused property is
    // said at once, not after the check's wait; refusals name the property,
    // never its value: a misspelt property name may carry a password.
    let consumer: StreamConsumer<WorkerContext> = consumer_settings.create_with(WorkerContext {
        metrics: metrics.clone(),
        on_revoke: OnceLock::new(),
    })?;
    let producer: FutureProducer = producer_settings.create_with(DefaultClientContext)?;
    // Bad credentials or an untrusted certificate never fail a request,
    // they make it wait: say so at start-up instead.
    let shared_config = shared.build();
    tokio::task::spawn_blocking(move || {
        check_connection(&shared_config, ClientRole::Producer, START_CHECK_TIMEOUT)
    })
    .await
    .expect("connection check panicked")?;
    consumer.subscribe(&[&config.channel])?;
    ensure_dead_letter_topic(&shared, &config.channel).await?;
    Ok(Clients { consumer, producer })
}

/// Creates `<channel>.dlq` like the channel (partitions, replication) when
/// it is missing, so that a failing request always has somewhere to go.
async fn ensure_dead_letter_topic(settings: &ClientSettings, channel: &str) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> = settings.create_with(DefaultClientContext)?;
    let dlq = format!("{channel}.dlq");
    let timeout = Duration::from_secs(10);
    let metadata = admin.inner().fetch_metadata(None, timeout)?;
    let find = |name: &str| {
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none())
            .map(|t| {
                let replicas = t.partitions().first().map_or(1, |p| p.replicas().len());
                (t.partitions().len() as i32, replicas as i32)
            })
    };
    let (partitions, replicas) =
        find(channel).ok_or_else(|| Error::NoChannel(channel.to_owned()))?;
    if find(&dlq).is_some() {
        return Ok(());
    }
    let results = admin
        .create_topics(
            &[NewTopic::new(
                &dlq,
                partitions,
                TopicReplication::Fixed(replicas),
            )],
            &AdminOptions::new().operation_timeout(Some(timeout)),
        )
        .await?;
    for result in results {
        match result {
            Ok(_) => tracing::info!(topic = %dlq, "created the dead-letter topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::DeadLetterTopic { topic, code });
            }
        }
    }
    Ok(())
}

/// Called with the partitions about to be revoked; returns once their
/// finished work's offsets are stored (or it gave up waiting).
pub(crate) type OnRevoke = Box<dyn Fn(&[i32]) + Send + Sync>;

/// Logs rebalances and commits, turns librdkafka statistics into the
/// per-partition lag metric, and lets revoked partitions finish.
pub(crate) struct WorkerContext {
    metrics: Arc<Metrics>,
    /// Set once the partitions' pipelines exist, before the first poll.
    on_revoke: OnceLock<OnRevoke>,
}

impl WorkerContext {
    /// Runs `hook` before partitions are revoked: librdkafka commits the
    /// offsets stored by then as the partitions leave.
    pub(crate) fn on_revoke(&self, hook: OnRevoke) {
        if self.on_revoke.set(hook).is_err() {
            tracing::error!("the revocation hook was set twice; keeping the first");
        }
    }
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            for partition in topic.partitions.values() {
                if partition.partition >= 0 && partition.consumer_lag >= 0 {
                    self.metrics
                        .partition_lag
                        .get_or_create(&PartitionLabels {
                            partition: i64::from(partition.partition),
                        })
                        .set(partition.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        LoggingContext.error(error, reason);
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let (Rebalance::Revoke(partitions), Some(hook)) = (rebalance, self.on_revoke.get()) {
            let numbers: Vec<i32> = partitions
                .elements()
                .iter()
                .map(|e| e.partition())
                .collect();
            hook(&numbers);
        }
    }

    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = %describe(partitions), "partitions assigned")
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(partitions = %describe(partitions), "partitions revoked")
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(offsets = %describe(offsets), "offsets committed"),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(%error, "offset commit failed"),
        }
    }
}

fn describe(partitions: &TopicPartitionList) -> String {
    partitions
        .elements()
        .iter()
        .map(|e| match e.offset() {
            rdkafka::Offset::Offset(offset) => format!("{}/{}@{offset}", e.topic(), e.partition()),
            _ => format!("{}/{}", e.topic(), e.partition()),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No broker is needed: the clients refuse the property before any
    /// connection, and the error names it without its value.
    #[tokio::test]
    async fn a_misspelt_property_is_named_and_its_value_never_shown() {
        let misspelt = || vec![("sasl.pasword".to_owned(), "s3cret-value".to_owned())];
        let mut configs = [(); 3].map(|()| WorkerConfig::new("127.0.0.1:9", "orders"));
        configs[0].kafka_properties = misspelt();
        configs[1].consumer_properties = misspelt();
        configs[2].producer_properties = misspelt();
        for config in configs {
            let error = connect(&config, &Arc::default())
                .await
                .err()
                .expect("refused");
            let text = error.to_string();
            assert!(matches!(error, Error::Config(_)), "{text}");
            assert!(text.contains("sasl.pasword"), "{text}");
            assert!(!text.contains("s3cret-value"), "{text}");
        }
    }
}
