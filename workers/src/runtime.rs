//! The runtime: consume a channel, run the handler, reply, commit.
//!
//! Invariant: a message's offset is stored for commit only after its reply
//! (or its dead-letter record) was acknowledged by Kafka, and the offset
//! stored for a partition is the end of the contiguous prefix of such
//! finished messages: acknowledgements are pipelined (a reply in flight
//! does not hold the next message back) but never skipped over. A crash
//! therefore redelivers, never skips. Handlers keep their order per
//! partition (or per key); partitions run in parallel, handlers bounded by
//! `max_in_flight`, each partition's unfinished messages by
//! `max_in_flight_per_partition`.
//!
//! This module is the loop tying the stages together: it starts the
//! clients (`clients`), fetches messages and queues each on its partition's
//! pipeline (`partitions` starts, revokes and drains them; `paused` holds
//! back a partition whose pipeline is full, never the others; `pipeline`
//! keeps the invariant; `process` handles one message), and on shutdown
//! drains the pipelines, commits and leaves the group.

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
use crate::partitions::{Partitions, RESUME_ROOM};
use crate::paused::Paused;
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
    progress.spawn_logger(PROGRESS_LOG_PERIOD);
    let replier = Replier::new(producer, config.delivery_retry());
    let partitions_config = config.clone();
    let channel = config.channel.clone();
    let processor = Processor::new(handler, config, replier, metrics.clone());
    let partitions = Partitions::new(
        processor,
        consumer.clone(),
        metrics.clone(),
        progress,
        &partitions_config,
    );
    consumer.context().on_revoke(Box::new(partitions.revoker()));
    fetch(&consumer, &partitions, &metrics, &channel, shutdown).await;

    tracing::info!(?drain_timeout, "draining: finishing in-flight messages");
    partitions.drain().await;
    if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(%error, "final commit");
    }
    consumer.unsubscribe();
    tracing::info!("drained: offsets committed, left the group");
    Ok(())
}

/// Takes messages from the consumer and queues each on its partition's
/// pipeline until `shutdown` resolves. A partition whose queue is full has
/// its messages held, and is paused when it holds too much (`paused`),
/// rather than waited for, so the others keep flowing.
async fn fetch<H: Handler>(
    consumer: &StreamConsumer<WorkerContext>,
    partitions: &Partitions<H>,
    metrics: &Metrics,
    channel: &str,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut paused = Paused::new(consumer, metrics, channel, RESUME_ROOM);
    loop {
        let message = tokio::select! {
            biased;
            () = &mut shutdown => return,
            (partition, open) = paused.next_room() => {
                paused.refill(partition, open);
                continue;
            }
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
        if paused
            .hand_over(|| partitions.queue(partition), message)
            .is_err()
        {
            tracing::error!(partition, "partition task ended unexpectedly");
            partitions.forget(partition);
        }
    }
}
