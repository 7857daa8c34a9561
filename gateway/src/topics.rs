//! The start-up check of the topics the gateway writes to: every channel
//! (and the reply topic) must exist; `--create-topics` creates the missing
//! ones with their configured partitions first.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use osmosis_support::kafka::LoggingContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::util::Timeout;

use crate::config::ChannelConfig;
use crate::writer::KafkaWriter;

/// Start-up failures of the topic check.
#[derive(Debug, thiserror::Error)]
pub enum TopicSetupError {
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

/// Checks that every topic in `topics` exists; with `create`, creates the
/// missing ones first with their configured partitions.
pub async fn ensure_topics(
    writer: &KafkaWriter,
    topics: &BTreeMap<String, ChannelConfig>,
    create: bool,
    metadata_timeout: Duration,
) -> Result<(), TopicSetupError> {
    if create {
        create_topics(writer, topics, metadata_timeout).await?;
    }
    for topic in topics.keys() {
        let producer = writer.producer().clone();
        let topic_name = topic.clone();
        let exists = tokio::task::spawn_blocking(move || {
            topic_has_partitions(&producer, &topic_name, metadata_timeout)
        })
        .await
        .expect("metadata task panicked")
        .map_err(|source| TopicSetupError::Metadata {
            topic: topic.clone(),
            source,
        })?;
        if !exists {
            return Err(TopicSetupError::Missing(topic.clone()));
        }
    }
    Ok(())
}

async fn create_topics(
    writer: &KafkaWriter,
    topics: &BTreeMap<String, ChannelConfig>,
    metadata_timeout: Duration,
) -> Result<(), TopicSetupError> {
    let admin: AdminClient<DefaultClientContext> = writer
        .client_config()
        .create()
        .map_err(TopicSetupError::Client)?;
    let new_topics: Vec<NewTopic> = topics
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
        metadata_timeout.max(Duration::from_secs(10)),
    )));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|error| TopicSetupError::Create {
            topic: topics.keys().cloned().collect::<Vec<_>>().join(","),
            reason: error.to_string(),
        })?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "created channel topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(TopicSetupError::Create {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    // A freshly created topic takes a moment to appear in metadata.
    let producer = writer.producer().clone();
    let names: Vec<String> = topics.keys().cloned().collect();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        for topic in names {
            while !topic_has_partitions(&producer, &topic, metadata_timeout).unwrap_or(false)
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
