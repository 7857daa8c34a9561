//! One pipeline task per assigned partition: started by the partition's
//! first message, ended when the partition is revoked or the worker
//! drains. Both endings are graceful within the drain timeout: the
//! pipeline takes no more messages, its started ones finish (their replies
//! or dead letters acknowledged) and the finished prefix's offset is
//! stored before the partition leaves — on revocation before the
//! rebalance goes on, so the next owner starts where this one stopped.
//!
//! This module owns the tasks, their queues, their revocation and their
//! drain; fetching messages and committing is `runtime`'s, a partition's
//! messages in flight `pipeline`'s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::StreamConsumer;
use rdkafka::message::OwnedMessage;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clients::WorkerContext;
use crate::config::WorkerConfig;
use crate::handler::Handler;
use crate::metrics::Metrics;
use crate::pipeline::{self, Shared};
use crate::process::Processor;
use crate::progress::Progress;

/// Messages fetched for a partition and not yet taken by its pipeline.
const QUEUE_CAPACITY: usize = 64;

/// Free places a full partition's queue needs before its held messages
/// are moved into it: half, so that a partition going at its pipeline's
/// pace is not woken for every message.
pub(crate) const RESUME_ROOM: usize = QUEUE_CAPACITY / 2;

/// The pipeline tasks started so far.
pub(crate) struct Partitions<H> {
    /// What every pipeline shares.
    shared: Arc<Shared<H>>,
    /// Each partition's task; shared with the revocation hook, which runs
    /// inside the consumer's poll.
    tasks: Arc<Mutex<HashMap<i32, Task>>>,
    /// How long revoked or drained partitions may take to finish.
    drain_timeout: Duration,
}

/// A partition's pipeline task.
struct Task {
    /// Where its fetched messages go.
    queue: mpsc::Sender<OwnedMessage>,
    /// Cancelled when the partition is revoked.
    revoked: CancellationToken,
    handle: JoinHandle<()>,
}

impl<H: Handler> Partitions<H> {
    pub(crate) fn new(
        processor: Processor<H>,
        consumer: Arc<StreamConsumer<WorkerContext>>,
        metrics: Arc<Metrics>,
        progress: Arc<Progress>,
        config: &WorkerConfig,
    ) -> Self {
        let shared = Shared {
            processor,
            consumer,
            metrics,
            progress,
            permits: Semaphore::new(config.max_in_flight.max(1)),
            max_in_flight_per_partition: config.max_in_flight_per_partition.max(1) as usize,
            ordering: config.ordering,
            stopping: CancellationToken::new(),
        };
        Self {
            shared: Arc::new(shared),
            tasks: Arc::default(),
            drain_timeout: config.drain_timeout(),
        }
    }

    /// The queue of `partition`'s pipeline, started if it is not yet.
    pub(crate) fn queue(&self, partition: i32) -> mpsc::Sender<OwnedMessage> {
        let mut tasks = self.tasks.lock().unwrap();
        let task = tasks.entry(partition).or_insert_with(|| {
            let (queue, messages) = mpsc::channel(QUEUE_CAPACITY);
            let revoked = CancellationToken::new();
            let run = pipeline::run(self.shared.clone(), partition, messages, revoked.clone());
            Task {
                queue,
                revoked,
                handle: tokio::spawn(run),
            }
        });
        task.queue.clone()
    }

    /// Forgets the task of `partition`, which ended unexpectedly; its next
    /// message starts a new one.
    pub(crate) fn forget(&self, partition: i32) {
        self.tasks.lock().unwrap().remove(&partition);
    }

    /// What the consumer calls before partitions are revoked: their
    /// pipelines finish their started messages (within the drain timeout)
    /// and store their offsets, which the consumer commits as the
    /// partitions leave. The wait blocks the consumer's poll, so it needs
    /// a multi-threaded runtime; elsewhere the pipelines finish in the
    /// background and the next owner may see their messages again.
    pub(crate) fn revoker(&self) -> impl Fn(&[i32]) + Send + Sync + 'static {
        let tasks = Arc::clone(&self.tasks);
        let timeout = self.drain_timeout;
        move |partitions: &[i32]| {
            let revoked: Vec<Task> = {
                let mut tasks = tasks.lock().unwrap();
                partitions.iter().filter_map(|p| tasks.remove(p)).collect()
            };
            if revoked.is_empty() {
                return;
            }
            revoked.iter().for_each(|task| task.revoked.cancel());
            let handles = revoked.into_iter().map(|task| task.handle).collect();
            match Handle::try_current() {
                Ok(runtime) if runtime.runtime_flavor() == RuntimeFlavor::MultiThread => {
                    tracing::info!(?partitions, "revoked: finishing their messages in flight");
                    tokio::task::block_in_place(|| runtime.block_on(finish(handles, timeout)));
                }
                _ => tracing::warn!(
                    ?partitions,
                    "revoked outside a multi-threaded runtime: not waiting for their messages in flight (they may be redelivered)"
                ),
            }
        }
    }

    /// Lets every pipeline finish its started messages within the drain
    /// timeout, then abandons the rest: their offsets are not stored, so
    /// they will be redelivered.
    pub(crate) async fn drain(self) {
        self.shared.stopping.cancel();
        let tasks: Vec<Task> = self.tasks.lock().unwrap().drain().map(|(_, t)| t).collect();
        finish(
            tasks.into_iter().map(|task| task.handle).collect(),
            self.drain_timeout,
        )
        .await;
    }
}

/// Waits for pipeline tasks told to stop, aborting them after `timeout`.
async fn finish(tasks: Vec<JoinHandle<()>>, timeout: Duration) {
    let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
    if tokio::time::timeout(timeout, futures::future::join_all(tasks))
        .await
        .is_err()
    {
        tracing::warn!("drain timeout: abandoning in-flight messages (they will be redelivered)");
        aborts.iter().for_each(|task| task.abort());
    }
}
