//! One task per partition, where the at-least-once invariant is kept: a
//! task takes its partition's messages in order, one at a time, and stores
//! a message's offset only once [`Processor::process`] returned, that is
//! once its reply or dead letter was acknowledged. Tasks of different
//! partitions run in parallel, their handlers bounded by `max_in_flight`.
//!
//! Each task tells `progress` where its current message is, from the
//! moment it takes it until its offset is stored.
//!
//! This module owns the tasks, their queues and their drain; fetching
//! messages and committing is `runtime`'s, a message's processing
//! `process`'.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clients::WorkerContext;
use crate::handler::Handler;
use crate::metrics::Metrics;
use crate::process::Processor;
use crate::progress::Progress;

/// The partition tasks started so far.
pub(crate) struct Partitions<H> {
    /// What every task shares.
    shared: Arc<Shared<H>>,
    /// Each partition's queue and task, started by its first message.
    tasks: HashMap<i32, (mpsc::Sender<OwnedMessage>, JoinHandle<()>)>,
}

/// What every partition task shares.
struct Shared<H> {
    processor: Processor<H>,
    /// Where a processed message's offset is stored, for the consumer's
    /// background commit.
    consumer: Arc<StreamConsumer<WorkerContext>>,
    metrics: Arc<Metrics>,
    /// Hears where each partition's current message is.
    progress: Arc<Progress>,
    /// Bounds handlers running at once across partitions.
    permits: Semaphore,
    /// Cancelled on shutdown: partition tasks finish their current message
    /// and take no new one.
    stopping: CancellationToken,
}

impl<H: Handler> Partitions<H> {
    pub(crate) fn new(
        processor: Processor<H>,
        consumer: Arc<StreamConsumer<WorkerContext>>,
        metrics: Arc<Metrics>,
        progress: Arc<Progress>,
        max_in_flight: usize,
    ) -> Self {
        let shared = Shared {
            processor,
            consumer,
            metrics,
            progress,
            permits: Semaphore::new(max_in_flight.max(1)),
            stopping: CancellationToken::new(),
        };
        Self {
            shared: Arc::new(shared),
            tasks: HashMap::new(),
        }
    }

    /// The queue of `partition`'s task, started if it is not yet.
    pub(crate) fn queue(&mut self, partition: i32) -> &mpsc::Sender<OwnedMessage> {
        let (queue, _) = self.tasks.entry(partition).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(64);
            let task = partition_loop(self.shared.clone(), partition, rx);
            (tx, tokio::spawn(task))
        });
        queue
    }

    /// Forgets the task of `partition`, which ended unexpectedly; its next
    /// message starts a new one.
    pub(crate) fn forget(&mut self, partition: i32) {
        self.tasks.remove(&partition);
    }

    /// Lets every task finish its current message within `timeout`, then
    /// abandons the rest: their offsets are not stored, so they will be
    /// redelivered.
    pub(crate) async fn drain(self, timeout: Duration) {
        self.shared.stopping.cancel();
        let tasks: Vec<JoinHandle<()>> = self.tasks.into_values().map(|(_, task)| task).collect();
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(timeout, futures::future::join_all(tasks))
            .await
            .is_err()
        {
            tracing::warn!(
                "drain timeout: abandoning in-flight messages (they will be redelivered)"
            );
            aborts.iter().for_each(|task| task.abort());
        }
    }
}

/// Processes one partition's messages in order.
async fn partition_loop<H: Handler>(
    shared: Arc<Shared<H>>,
    partition: i32,
    mut queue: mpsc::Receiver<OwnedMessage>,
) {
    let watch = shared.progress.watch(partition);
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
        watch.taken();
        let permit = shared.permits.acquire().await.expect("never closed");
        let outcome = shared.processor.process(&message, &watch).await;
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
        watch.finished();
    }
}
