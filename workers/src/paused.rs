//! Partitions whose pipeline queue is full: their fetching is paused so
//! that one slow partition never holds the others back.
//!
//! The fetch loop hands every message over without waiting. When a
//! partition's queue has no room, the message that did not fit is *held*
//! here and the partition is paused in the consumer; librdkafka then drops
//! what it had prefetched for it and, once resumed, fetches again from the
//! message after the last one it handed over — the held one. Held messages
//! go to the queue in offset order once it has room for
//! `resume_room` messages (so that a partition working at its pipeline's
//! pace is not paused and resumed on every message), and only then is the
//! partition resumed: no message is skipped or reordered, and nothing
//! here stores an offset (the at-least-once invariant stays `pipeline`'s).
//!
//! A pipeline that ends while its partition is paused (revoked, or ended
//! unexpectedly) drops the held messages — their offsets are not stored,
//! so the partition's next owner reads them again — and the partition is
//! resumed: a pause outlives a reassignment in librdkafka.
//!
//! This module owns the held messages, the pause and the resume; starting
//! pipelines is `partitions`', fetching `runtime`'s.

use std::collections::{HashMap, VecDeque};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::clients::WorkerContext;
use crate::metrics::Metrics;

/// A paused partition's messages that did not fit its queue.
struct Held {
    /// The queue they wait for: the pipeline that was running when the
    /// partition was paused (a later one is not theirs to feed).
    queue: mpsc::Sender<OwnedMessage>,
    /// Oldest first.
    messages: VecDeque<OwnedMessage>,
}

/// A partition's queue has room again (`true`) or its pipeline ended.
type Room = BoxFuture<'static, (i32, bool)>;

/// The paused partitions of one consumer.
pub(crate) struct Paused<'a> {
    consumer: &'a StreamConsumer<WorkerContext>,
    metrics: &'a Metrics,
    /// The channel: the topic of every partition.
    topic: &'a str,
    /// Free places a queue needs before its partition is resumed.
    resume_room: usize,
    held: HashMap<i32, Held>,
    /// One per paused partition.
    rooms: FuturesUnordered<Room>,
}

impl<'a> Paused<'a> {
    pub(crate) fn new(
        consumer: &'a StreamConsumer<WorkerContext>,
        metrics: &'a Metrics,
        topic: &'a str,
        resume_room: usize,
    ) -> Self {
        Self {
            consumer,
            metrics,
            topic,
            resume_room,
            held: HashMap::new(),
            rooms: FuturesUnordered::new(),
        }
    }

    /// Hands `message` to `queue` (its partition's) without waiting: behind
    /// the partition's held messages when it is paused, otherwise into the
    /// queue, or held while the partition is paused when the queue is full.
    /// Gives the message back when the queue is closed (its pipeline ended)
    /// or the partition could not be paused; the caller may then wait.
    pub(crate) fn hand_over(
        &mut self,
        queue: impl FnOnce() -> mpsc::Sender<OwnedMessage>,
        message: OwnedMessage,
    ) -> Result<(), TrySendError<OwnedMessage>> {
        let partition = message.partition();
        if let Some(held) = self.held.get_mut(&partition) {
            held.messages.push_back(message);
            return Ok(());
        }
        let queue = queue();
        match queue.try_send(message) {
            Err(TrySendError::Full(message)) => match self.pause(partition) {
                Ok(()) => {
                    self.wait_for_room(partition, queue.clone());
                    let messages = VecDeque::from([message]);
                    self.held.insert(partition, Held { queue, messages });
                    self.metrics.partitions_paused.set(self.held.len() as i64);
                    tracing::debug!(partition, "pipeline full: partition paused");
                    Ok(())
                }
                Err(error) => {
                    tracing::warn!(%error, partition, "pipeline full and the partition could not be paused: fetching waits for it");
                    Err(TrySendError::Full(message))
                }
            },
            sent => sent,
        }
    }

    /// The next partition whose queue has room again (or whose pipeline
    /// ended); pending forever while none is paused.
    pub(crate) async fn next_room(&mut self) -> (i32, bool) {
        match self.rooms.next().await {
            Some(room) => room,
            None => std::future::pending().await,
        }
    }

    /// `partition`'s queue has room (`open`) or its pipeline ended: its held
    /// messages go to the queue (or are dropped with the pipeline), and
    /// once none is left the partition is resumed.
    pub(crate) fn refill(&mut self, partition: i32, open: bool) {
        let Some(held) = self.held.get_mut(&partition) else {
            return;
        };
        while open && let Some(message) = held.messages.pop_front() {
            match held.queue.try_send(message) {
                Ok(()) => {}
                Err(TrySendError::Full(message)) => {
                    held.messages.push_front(message);
                    let queue = held.queue.clone();
                    self.wait_for_room(partition, queue);
                    return;
                }
                // Ended meanwhile: the next owner reads them again.
                Err(TrySendError::Closed(_)) => break,
            }
        }
        self.held.remove(&partition);
        self.metrics.partitions_paused.set(self.held.len() as i64);
        if let Err(error) = self.resume(partition) {
            tracing::error!(%error, partition, "partition not resumed: its messages wait until it is reassigned");
        } else {
            tracing::debug!(partition, "pipeline has room: partition resumed");
        }
    }

    fn wait_for_room(&mut self, partition: i32, queue: mpsc::Sender<OwnedMessage>) {
        let room = self.resume_room.min(queue.max_capacity());
        self.rooms.push(Box::pin(async move {
            // The places are given back at once: only this loop sends.
            let open = queue.reserve_many(room).await.is_ok();
            (partition, open)
        }));
    }

    fn pause(&self, partition: i32) -> Result<(), KafkaError> {
        let partitions = self.one(partition);
        self.consumer.pause(&partitions)?;
        partitions.elements()[0].error()
    }

    fn resume(&self, partition: i32) -> Result<(), KafkaError> {
        let partitions = self.one(partition);
        self.consumer.resume(&partitions)?;
        partitions.elements()[0].error()
    }

    fn one(&self, partition: i32) -> TopicPartitionList {
        let mut partitions = TopicPartitionList::with_capacity(1);
        partitions.add_partition(self.topic, partition);
        partitions
    }
}
