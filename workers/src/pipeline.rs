//! One partition's pipeline, where the at-least-once invariant is kept
//! while acknowledgements overlap the next message's handler:
//!
//! 1. messages are *taken* from the partition's queue in offset order,
//!    while fewer than `max_in_flight_per_partition` are unfinished;
//! 2. their handlers *start* in the configured order (`lanes`): one at a
//!    time per partition, or per key;
//! 3. when a handler returns, its reply or dead letter is enqueued at once
//!    (the delivery is polled once right there, so records are enqueued in
//!    handler order) and acknowledged in the background while the next
//!    handler runs;
//! 4. when the acknowledgement comes, the message is *finished* and the
//!    offset stored for commit is the end of the contiguous prefix of
//!    finished messages (`ledger`): never past a message whose reply or
//!    dead letter is not acknowledged.
//!
//! On shutdown or revocation the pipeline takes no more messages, drops
//! the ones whose handler has not started (their offsets stay unstored, so
//! they are redelivered), lets started ones finish and their
//! acknowledgements arrive, stores the prefix and ends.
//!
//! Each started message tells `progress` where it is until it is finished.
//! Starting, stopping and revoking pipelines is `partitions`' concern;
//! what happens to one message is `process`'.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::clients::WorkerContext;
use crate::config::Ordering;
use crate::handler::Handler;
use crate::lanes::Lanes;
use crate::ledger::Ledger;
use crate::metrics::{Metrics, Outcome};
use crate::process::{Handled, Processor};
use crate::progress::{Progress, Watch};

/// What every partition's pipeline shares.
pub(crate) struct Shared<H> {
    pub(crate) processor: Processor<H>,
    /// Where the finished prefix's offset is stored, for the consumer's
    /// background commit.
    pub(crate) consumer: Arc<StreamConsumer<WorkerContext>>,
    pub(crate) metrics: Arc<Metrics>,
    /// Hears where each started message is.
    pub(crate) progress: Arc<Progress>,
    /// Bounds handlers running at once across partitions.
    pub(crate) permits: Semaphore,
    /// Messages one partition may have taken and not finished.
    pub(crate) max_in_flight_per_partition: usize,
    /// What handlers keep in order.
    pub(crate) ordering: Ordering,
    /// Cancelled on shutdown: every pipeline stops taking messages and
    /// finishes the started ones.
    pub(crate) stopping: CancellationToken,
}

/// A handler's run: the message, what remains to send, and its watch.
type Handling<'a> = Pin<Box<dyn Future<Output = (OwnedMessage, Handled, Watch)> + Send + 'a>>;
/// A delivery: the message's offset and outcome once acknowledged.
type Delivery<'a> = Pin<Box<dyn Future<Output = (i64, Outcome, Watch)> + Send + 'a>>;

/// One partition's messages in flight.
struct Pipeline<'a, H> {
    shared: &'a Shared<H>,
    partition: i32,
    /// Taken and unfinished offsets; what may be committed.
    ledger: Ledger,
    /// Which waiting message may start.
    lanes: Lanes,
    /// Taken, handler not started yet; in offset order.
    waiting: VecDeque<OwnedMessage>,
    handlers: FuturesUnordered<Handling<'a>>,
    deliveries: FuturesUnordered<Delivery<'a>>,
    /// Until shutdown or revocation: messages are taken and started.
    open: bool,
    /// The highest offset taken, to count redeliveries.
    highest_seen: i64,
}

/// Runs `partition`'s pipeline on the messages of `queue` until the queue
/// closes, the worker stops or the partition is `revoked`; started
/// messages finish first.
pub(crate) async fn run<H: Handler>(
    shared: Arc<Shared<H>>,
    partition: i32,
    mut queue: mpsc::Receiver<OwnedMessage>,
    revoked: CancellationToken,
) {
    let mut pipeline = Pipeline {
        shared: &shared,
        partition,
        ledger: Ledger::default(),
        lanes: Lanes::new(shared.ordering),
        waiting: VecDeque::new(),
        handlers: FuturesUnordered::new(),
        deliveries: FuturesUnordered::new(),
        open: true,
        highest_seen: -1,
    };
    loop {
        if pipeline.open {
            pipeline.start_ready();
        } else if pipeline.handlers.is_empty() && pipeline.deliveries.is_empty() {
            return;
        }
        let room = pipeline.ledger.len() < shared.max_in_flight_per_partition;
        tokio::select! {
            biased;
            () = shared.stopping.cancelled(), if pipeline.open => pipeline.close(),
            () = revoked.cancelled(), if pipeline.open => pipeline.close(),
            Some((offset, outcome, watch)) = pipeline.deliveries.next(),
                if !pipeline.deliveries.is_empty() => pipeline.finish(offset, outcome, watch),
            Some((message, handled, watch)) = pipeline.handlers.next(),
                if !pipeline.handlers.is_empty() => pipeline.deliver(message, handled, watch).await,
            message = queue.recv(), if pipeline.open && room => match message {
                Some(message) => pipeline.take(message),
                None => pipeline.close(),
            },
        }
    }
}

impl<'a, H: Handler> Pipeline<'a, H> {
    fn take(&mut self, message: OwnedMessage) {
        if message.offset() <= self.highest_seen {
            self.shared.metrics.redeliveries.inc();
        }
        self.highest_seen = self.highest_seen.max(message.offset());
        self.ledger.take(message.offset());
        self.waiting.push_back(message);
    }

    /// Starts the handler of every waiting message its lane lets go.
    fn start_ready(&mut self) {
        let positions = self
            .lanes
            .startable(self.waiting.iter().map(|message| message.key()));
        // Removed back to front so positions stay valid, started in order.
        let mut starting: Vec<OwnedMessage> = positions
            .iter()
            .rev()
            .filter_map(|&position| self.waiting.remove(position))
            .collect();
        while let Some(message) = starting.pop() {
            self.lanes.started(message.key());
            let shared = self.shared;
            let watch = shared.progress.taken(self.partition);
            self.handlers.push(Box::pin(async move {
                let permit = shared.permits.acquire().await.expect("never closed");
                let handled = shared.processor.handle(&message, &watch).await;
                drop(permit);
                (message, handled, watch)
            }));
        }
    }

    /// A handler returned: its lane is free, its reply or dead letter is
    /// enqueued now, before any later handler's, and acknowledged later.
    async fn deliver(&mut self, message: OwnedMessage, handled: Handled, watch: Watch) {
        self.lanes.ended(message.key());
        let shared = self.shared;
        let mut delivery: Delivery<'a> = Box::pin(async move {
            let outcome = shared.processor.deliver(&message, handled, &watch).await;
            (message.offset(), outcome, watch)
        });
        // The first poll enqueues the record (see `process`).
        match futures::poll!(delivery.as_mut()) {
            Poll::Ready((offset, outcome, watch)) => self.finish(offset, outcome, watch),
            Poll::Pending => self.deliveries.push(delivery),
        }
    }

    /// `offset`'s reply or dead letter is acknowledged: stores the end of
    /// the finished prefix when it grew.
    fn finish(&mut self, offset: i64, outcome: Outcome, watch: Watch) {
        self.shared.metrics.count(outcome);
        if let Some(last) = self.ledger.finish(offset) {
            let topic = self.shared.processor.channel();
            if let Err(error) = self
                .shared
                .consumer
                .store_offset(topic, self.partition, last)
            {
                // The partition moved to another worker meanwhile; it will
                // process the messages again from the last commit.
                tracing::debug!(%error, partition = self.partition, "offset not stored");
            }
        }
        watch.finished();
    }

    /// Takes no more messages; the ones not started are dropped, their
    /// offsets left unstored.
    fn close(&mut self) {
        self.open = false;
        self.waiting.clear();
    }
}
