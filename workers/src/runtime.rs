//! The runtime: consume a channel, run the handler, reply, commit.
//!
//! Invariant: a message's offset is stored for commit only after its reply
//! (or its dead-letter record) was acknowledged by Kafka, and offsets are
//! stored in order within a partition because each partition is processed
//! by one task, one message at a time. A crash therefore redelivers, never
//! skips. Partitions run in parallel, bounded by `max_in_flight`.
//!
//! This module is the loop tying the stages together: it starts the
//! clients (`clients`), fetches messages and queues each on its partition's
//! task (`partitions`, which keeps the invariant; `process` handles one
//! message), and on shutdown drains the tasks, commits and leaves the group.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;

use crate::clients::{self, Clients, WorkerContext};
use crate::config::WorkerConfig;
use crate::error::Error;
use crate::handler::Handler;
use crate::metrics::Metrics;
use crate::partitions::Partitions;
use crate::process::Processor;
use crate::progress::Progress;
use crate::replier::Replier;

/// How often a partition's slow or stuck state is checked for a log line.
const PROGRESS_LOG_PERIOD: Duration = Duration::from_secs(1);

/// Runs `handler` on the configured channel until `shutdown` resolves, then
/// drains: in-flight messages finish (within the drain timeout), offsets are
/// committed and the consumer leaves the group so its partitions move at once.
pub async fn run<H: Handler>(
    config: WorkerConfig,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::default());
    let progress = Arc::new(Progress::new(config.stall_bounds(), metrics.clone()));
    let metrics_addr = osmosis_support::ops::serve(config.metrics_listen, progress.clone())
        .await
        .map_err(|source| Error::Metrics {
            addr: config.metrics_listen,
            source,
        })?;
    let Clients { consumer, producer } = clients::connect(&config, &metrics).await?;
    tracing::info!(
        channel = %config.channel,
        group = %config.group(),
        metrics = %metrics_addr,
        "worker started"
    );

    let consumer = Arc::new(consumer);
    let drain_timeout = config.drain_timeout();
    let max_in_flight = config.max_in_flight;
    progress.spawn_logger(PROGRESS_LOG_PERIOD);
    let replier = Replier::new(producer, config.delivery_retry());
    let processor = Processor::new(handler, config, replier, metrics.clone());
    let mut partitions = Partitions::new(
        processor,
        consumer.clone(),
        metrics,
        progress,
        max_in_flight,
    );
    fetch(&consumer, &mut partitions, shutdown).await;

    tracing::info!(?drain_timeout, "draining: finishing in-flight messages");
    partitions.drain(drain_timeout).await;
    if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(%error, "final commit");
    }
    consumer.unsubscribe();
    tracing::info!("drained: offsets committed, left the group");
    Ok(())
}

/// Takes messages from the consumer and queues each on its partition's task
/// until `shutdown` resolves.
async fn fetch<H: Handler>(
    consumer: &StreamConsumer<WorkerContext>,
    partitions: &mut Partitions<H>,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let message = tokio::select! {
            biased;
            () = &mut shutdown => return,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message.detach(),
            Err(error) => {
                tracing::warn!(%error, "consume failed");
                continue;
            }
        };
        let partition = message.partition();
        let queue = partitions.queue(partition);
        tokio::select! {
            biased;
            () = &mut shutdown => return,
            sent = queue.send(message) => {
                if sent.is_err() {
                    tracing::error!(partition, "partition task ended unexpectedly");
                    partitions.forget(partition);
                }
            }
        }
    }
}
