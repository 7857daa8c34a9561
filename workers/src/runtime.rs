//! The runtime: consume a channel, run the handler, reply, commit.
//!
//! Invariant: a message's offset is stored for commit only after its reply
//! (or its dead-letter record) was acknowledged by Kafka, and offsets are
//! stored in order within a partition because each partition is processed
//! by one task, one message at a time. A crash therefore redelivers, never
//! skips. Partitions run in parallel, bounded by `max_in_flight`.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::FutureExt;
use osmosis_protocol::RequestEnvelope;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::WorkerConfig;
use crate::handler::{Handler, HandlerError, Reply, ReplyTo, Request};
use crate::metrics::{Metrics, Outcome, PartitionLabels};
use crate::replier::{DeadLetter, Replier};

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid Kafka client configuration: {0}")]
    Kafka(#[from] KafkaError),
    #[error("channel topic {0:?} does not exist")]
    NoChannel(String),
    #[error("cannot create the dead-letter topic {topic:?}: {code}")]
    DeadLetterTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Logs rebalances and commits, and turns librdkafka statistics into the
/// per-partition lag metric.
struct WorkerContext {
    metrics: Arc<Metrics>,
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
        tracing::warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for WorkerContext {
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

/// What every partition task shares.
struct Shared<H> {
    handler: H,
    config: WorkerConfig,
    consumer: StreamConsumer<WorkerContext>,
    replier: Replier,
    metrics: Arc<Metrics>,
    /// Bounds handlers running at once across partitions.
    permits: Semaphore,
    /// Cancelled on shutdown: partition tasks finish their current message
    /// and take no new one.
    stopping: CancellationToken,
}

/// Runs `handler` on the configured channel until `shutdown` resolves, then
/// drains: in-flight messages finish (within the drain timeout), offsets are
/// committed and the consumer leaves the group so its partitions move at once.
pub async fn run<H: Handler>(
    config: WorkerConfig,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::default());
    let metrics_addr = crate::metrics::serve(config.metrics_listen, metrics.clone())
        .await
        .map_err(|source| Error::Metrics {
            addr: config.metrics_listen,
            source,
        })?;

    let mut common = ClientConfig::new();
    for (name, value) in &config.kafka_properties {
        common.set(name, value);
    }
    common.set("bootstrap.servers", &config.brokers);
    // The runtime's settings, unless the user's properties chose otherwise.
    let with_defaults = |side: &[(String, String)], defaults: &[(&str, &str)]| {
        let mut client = common.clone();
        for (name, value) in side {
            client.set(name, value);
        }
        for (name, value) in defaults {
            if client.get(name).is_none() {
                client.set(*name, *value);
            }
        }
        client
    };
    let mut consumer_config = with_defaults(
        &config.consumer_properties,
        &[
            ("auto.commit.interval.ms", "1000"),
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", "10000"),
            ("statistics.interval.ms", "5000"),
        ],
    );
    // What at-least-once rests on is not negotiable.
    consumer_config
        .set("group.id", config.group())
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false");
    let mut producer_config = with_defaults(
        &config.producer_properties,
        &[("linger.ms", "1"), ("message.timeout.ms", "30000")],
    );
    producer_config
        .set("acks", "all")
        .set("enable.idempotence", "true");
    let consumer: StreamConsumer<WorkerContext> =
        consumer_config.create_with_context(WorkerContext {
            metrics: metrics.clone(),
        })?;
    consumer.subscribe(&[&config.channel])?;
    let producer: FutureProducer = producer_config.create()?;
    ensure_dead_letter_topic(&common, &config.channel).await?;
    tracing::info!(
        channel = %config.channel,
        group = %config.group(),
        metrics = %metrics_addr,
        "worker started"
    );

    let shared = Arc::new(Shared {
        handler,
        permits: Semaphore::new(config.max_in_flight.max(1)),
        config,
        consumer,
        replier: Replier::new(producer),
        metrics,
        stopping: CancellationToken::new(),
    });
    let mut partitions: HashMap<i32, (mpsc::Sender<OwnedMessage>, JoinHandle<()>)> = HashMap::new();
    let mut shutdown = std::pin::pin!(shutdown);

    'fetch: loop {
        let message = tokio::select! {
            biased;
            () = &mut shutdown => break 'fetch,
            message = shared.consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message.detach(),
            Err(error) => {
                tracing::warn!(%error, "consume failed");
                continue;
            }
        };
        let partition = message.partition();
        let (queue, _) = partitions.entry(partition).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(64);
            (tx, tokio::spawn(partition_loop(shared.clone(), rx)))
        });
        tokio::select! {
            biased;
            () = &mut shutdown => break 'fetch,
            sent = queue.send(message) => {
                if sent.is_err() {
                    tracing::error!(partition, "partition task ended unexpectedly");
                    partitions.remove(&partition);
                }
            }
        }
    }

    tracing::info!(
        drain_timeout = ?shared.config.drain_timeout(),
        "draining: finishing in-flight messages"
    );
    shared.stopping.cancel();
    let tasks: Vec<JoinHandle<()>> = partitions.into_values().map(|(_, task)| task).collect();
    let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
    if tokio::time::timeout(
        shared.config.drain_timeout(),
        futures::future::join_all(tasks),
    )
    .await
    .is_err()
    {
        tracing::warn!("drain timeout: abandoning in-flight messages (they will be redelivered)");
        aborts.iter().for_each(|task| task.abort());
    }
    if let Err(error) = shared.consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(%error, "final commit");
    }
    shared.consumer.unsubscribe();
    tracing::info!("drained: offsets committed, left the group");
    Ok(())
}

/// Creates `<channel>.dlq` like the channel (partitions, replication) when
/// it is missing, so that a failing request always has somewhere to go.
async fn ensure_dead_letter_topic(
    client_config: &ClientConfig,
    channel: &str,
) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> = client_config.create()?;
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

/// Processes one partition's messages in order.
async fn partition_loop<H: Handler>(
    shared: Arc<Shared<H>>,
    mut queue: mpsc::Receiver<OwnedMessage>,
) {
    let mut highest_seen = -1;
    loop {
        let message = tokio::select! {
            biased;
            () = shared.stopping.cancelled() => return,
            message = queue.recv() => match message {
                Some(message) => message,
                None => return,
            },
        };
        if message.offset() <= highest_seen {
            shared.metrics.redeliveries.inc();
        }
        highest_seen = highest_seen.max(message.offset());
        let permit = shared.permits.acquire().await.expect("never closed");
        let outcome = process(&shared, &message).await;
        drop(permit);
        shared.metrics.count(outcome);
        if let Err(error) =
            shared
                .consumer
                .store_offset(message.topic(), message.partition(), message.offset())
        {
            // The partition moved to another worker meanwhile; it will
            // process the message again from the last commit.
            tracing::debug!(%error, partition = message.partition(), "offset not stored");
        }
    }
}

fn header_pairs(message: &OwnedMessage) -> Vec<(String, Vec<u8>)> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

async fn process<H: Handler>(shared: &Shared<H>, message: &OwnedMessage) -> Outcome {
    let pairs = header_pairs(message);
    let decoded =
        RequestEnvelope::from_headers(pairs.iter().map(|(n, v)| (n.as_str(), Some(v.as_slice()))));
    let envelope = match decoded {
        Ok(envelope) => envelope,
        Err(error) => {
            tracing::warn!(%error, partition = message.partition(), offset = message.offset(), "malformed request record");
            dead_letter(
                shared,
                message,
                &pairs,
                &format!("malformed request: {error}"),
                0,
            )
            .await;
            return Outcome::malformed;
        }
    };
    let reply_to = envelope.reply_to.clone();
    if envelope
        .deadline_ms
        .is_some_and(|deadline| unix_ms_now() > deadline)
    {
        tracing::info!(request_id = %envelope.id, "deadline passed: not processed");
        if let Some(address) = &reply_to {
            let reply = Reply::problem(504, "the deadline passed before a worker took the request");
            shared
                .replier
                .final_reply(address, &reply.final_envelope(envelope.id), &reply.body)
                .await;
        }
        return Outcome::expired;
    }

    let request = Request {
        body: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        key: message.key().map(Bytes::copy_from_slice),
        partition: message.partition(),
        offset: message.offset(),
        progress: reply_to.clone().map(|address| {
            Arc::new(ReplyTo {
                replier: shared.replier.clone(),
                address,
            })
        }),
        envelope,
    };
    let id = request.id();
    let mut attempt = 0;
    loop {
        attempt += 1;
        shared.metrics.in_flight.inc();
        let started = Instant::now();
        let result = AssertUnwindSafe(shared.handler.handle(request.clone()))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(HandlerError::permanent("the handler panicked")));
        shared
            .metrics
            .handler_duration
            .observe(started.elapsed().as_secs_f64());
        shared.metrics.in_flight.dec();
        match result {
            Ok(reply) => {
                if let Some(address) = &reply_to {
                    shared
                        .replier
                        .final_reply(address, &reply.final_envelope(id), &reply.body)
                        .await;
                }
                return Outcome::replied;
            }
            Err(error) if error.retryable && attempt <= shared.config.max_retries => {
                shared.metrics.retries.inc();
                let delay = shared.config.backoff(attempt);
                tracing::warn!(request_id = %id, attempt, %error, ?delay, "handler failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(error) => {
                tracing::warn!(request_id = %id, attempts = attempt, %error, "handler failed; dead-lettering");
                dead_letter(shared, message, &pairs, &error.message, attempt).await;
                if let Some(address) = &reply_to {
                    let detail = format!(
                        "the worker failed after {attempt} attempt(s): {}",
                        error.message
                    );
                    let reply = Reply::problem(error.status, &detail);
                    shared
                        .replier
                        .final_reply(address, &reply.final_envelope(id), &reply.body)
                        .await;
                }
                return Outcome::dead_lettered;
            }
        }
    }
}

async fn dead_letter<H: Handler>(
    shared: &Shared<H>,
    message: &OwnedMessage,
    original_headers: &[(String, Vec<u8>)],
    error: &str,
    attempts: u32,
) {
    shared
        .replier
        .dead_letter(&DeadLetter {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key(),
            value: message.payload().unwrap_or_default(),
            original_headers,
            error,
            attempts,
        })
        .await;
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}
