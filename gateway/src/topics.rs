//! The start-up check of the topics the gateway writes to: every channel
//! (and the reply topic) must exist; `--create-topics` creates the missing
//! ones with their configured partitions, replication and min in-sync
//! replicas first. An existing topic whose durability is weaker than the
//! configuration asks for is a warning, not a refusal: the operator may
//! know better, but must hear of it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use osmosis_support::kafka::LoggingContext;
use rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, OwnedResourceSpecifier, ResourceSpecifier,
    TopicReplication,
};
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
    // One admin client for the creation and the configuration check.
    let admin: AdminClient<DefaultClientContext> = writer
        .client_config()
        .create()
        .map_err(TopicSetupError::Client)?;
    if create {
        create_topics(&admin, writer, topics, metadata_timeout).await?;
    }
    for (topic, wanted) in topics {
        let producer = writer.producer().clone();
        let topic_name = topic.clone();
        let replicas = tokio::task::spawn_blocking(move || {
            replication_of(&producer, &topic_name, metadata_timeout)
        })
        .await
        .expect("metadata task panicked")
        .map_err(|source| TopicSetupError::Metadata {
            topic: topic.clone(),
            source,
        })?
        .ok_or_else(|| TopicSetupError::Missing(topic.clone()))?;
        if replicas < wanted.replication_factor {
            tracing::warn!(
                topic,
                replicas,
                configured = wanted.replication_factor,
                "the topic has fewer replicas than configured: an acknowledged write survives fewer broker losses"
            );
        }
    }
    check_min_insync(&admin, topics, metadata_timeout).await;
    Ok(())
}

/// Warns about every topic whose `min.insync.replicas` is below what it is
/// configured with (or cannot be read), from one DescribeConfigs request.
async fn check_min_insync(
    admin: &AdminClient<DefaultClientContext>,
    topics: &BTreeMap<String, ChannelConfig>,
    timeout: Duration,
) {
    let wanted: Vec<(&str, i32)> = topics
        .iter()
        .filter_map(|(topic, channel)| Some((topic.as_str(), channel.min_insync_replicas?)))
        .collect();
    if wanted.is_empty() {
        return;
    }
    let resources: Vec<ResourceSpecifier> = wanted
        .iter()
        .map(|(topic, _)| ResourceSpecifier::Topic(topic))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(Timeout::After(timeout)));
    let described = admin
        .describe_configs(&resources, &options)
        .await
        .unwrap_or_default();
    let min_of = |topic: &str| {
        described.iter().flatten().find_map(|resource| {
            let named =
                matches!(&resource.specifier, OwnedResourceSpecifier::Topic(name) if name == topic);
            named.then(|| {
                resource
                    .get("min.insync.replicas")?
                    .value
                    .as_deref()?
                    .parse::<i32>()
                    .ok()
            })?
        })
    };
    for (topic, wanted) in wanted {
        let found = min_of(topic);
        match found {
            Some(min) if min >= wanted => {}
            Some(min) => tracing::warn!(
                topic,
                min_insync_replicas = min,
                configured = wanted,
                "the topic acknowledges writes with fewer in-sync replicas than configured"
            ),
            None => tracing::warn!(topic, "cannot read the topic's min.insync.replicas"),
        }
    }
}

async fn create_topics(
    admin: &AdminClient<DefaultClientContext>,
    writer: &KafkaWriter,
    topics: &BTreeMap<String, ChannelConfig>,
    metadata_timeout: Duration,
) -> Result<(), TopicSetupError> {
    let min_insync: Vec<Option<String>> = topics
        .values()
        .map(|channel| channel.min_insync_replicas.map(|min| min.to_string()))
        .collect();
    let new_topics: Vec<NewTopic> = topics
        .iter()
        .zip(&min_insync)
        .map(|((name, channel), min)| {
            let topic = NewTopic::new(
                name,
                channel.partitions,
                TopicReplication::Fixed(channel.replication_factor),
            );
            match min {
                Some(min) => topic.set("min.insync.replicas", min),
                None => topic,
            }
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
            while replication_of(&producer, &topic, metadata_timeout)
                .ok()
                .flatten()
                .is_none()
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

/// The replication factor of `topic` (the fewest replicas of any of its
/// partitions); `None` when the topic does not exist or has no partitions.
fn replication_of(
    producer: &FutureProducer<LoggingContext>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<i32>, KafkaError> {
    let metadata = producer.client().fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .and_then(|t| {
            t.partitions()
                .iter()
                .map(|p| p.replicas().len() as i32)
                .min()
        }))
}
