//! Partitions whose pipeline queue is full: their messages are held here,
//! and their fetching is paused once they hold too much, so that one slow
//! partition never holds the others back.
//!
//! The fetch loop hands every message over without waiting. When a
//! partition's queue has no room, the message that did not fit and the
//! partition's next ones are *held* here; held messages go to the queue in
//! offset order whenever it has room for `resume_room` messages (so that a
//! partition working at its pipeline's pace is not woken on every message).
//! Only when a partition holds more than [`HOLD_BYTES`] is it paused in the
//! consumer: librdkafka then drops what it had prefetched for it and, once
//! resumed (when nothing is held any more), fetches again from the message
//! after the last one it handed over. Pausing at the first full queue
//! instead dropped and fetched again most of every fetch of a backlog, and
//! capped one worker near 2,000 `echo` messages a second with the machine
//! idle (`osmosis-bench worker`). No message is skipped or reordered, and
//! nothing here stores an offset (the at-least-once invariant stays
//! `pipeline`'s).
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
use rdkafka::message::{Headers, Message, OwnedMessage};
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::clients::WorkerContext;
use crate::metrics::Metrics;

/// Bytes a partition may hold before it is paused: above one fetch's
/// worth for a partition (`max.partition.fetch.bytes`, 1 MiB by default),
/// so that what librdkafka fetched for a partition behind its pipeline is
/// kept rather than dropped and fetched again.
pub(crate) const HOLD_BYTES: usize = 4 << 20;

/// A partition's messages that did not fit its queue.
struct Held {
    /// The queue they wait for: the pipeline that was running when the
    /// first was held (a later one is not theirs to feed).
    queue: mpsc::Sender<OwnedMessage>,
    /// Oldest first.
    messages: VecDeque<OwnedMessage>,
    /// Their keys', values' and headers' bytes.
    bytes: usize,
    /// The partition is paused in the consumer.
    paused: bool,
}

impl Held {
    fn push(&mut self, message: OwnedMessage) {
        self.bytes += held_bytes(&message);
        self.messages.push_back(message);
    }

    fn pop(&mut self) -> Option<OwnedMessage> {
        let message = self.messages.pop_front()?;
        self.bytes -= held_bytes(&message);
        Some(message)
    }

    fn unpop(&mut self, message: OwnedMessage) {
        self.bytes += held_bytes(&message);
        self.messages.push_front(message);
    }
}

fn held_bytes(message: &OwnedMessage) -> usize {
    let headers = message.headers().map_or(0, |headers| {
        headers
            .iter()
            .map(|header| header.key.len() + header.value.map_or(0, <[u8]>::len))
            .sum()
    });
    message.payload().map_or(0, <[u8]>::len) + message.key().map_or(0, <[u8]>::len) + headers
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
    /// the partition's held messages when it holds some, otherwise into the
    /// queue, or held when the queue is full; a partition holding more than
    /// [`HOLD_BYTES`] is paused. Gives the message back when the queue is
    /// closed (its pipeline ended).
    pub(crate) fn hand_over(
        &mut self,
        queue: impl FnOnce() -> mpsc::Sender<OwnedMessage>,
        message: OwnedMessage,
    ) -> Result<(), OwnedMessage> {
        let partition = message.partition();
        if let Some(held) = self.held.get_mut(&partition) {
            held.push(message);
            if !held.paused && held.bytes > HOLD_BYTES {
                self.pause(partition);
            }
            return Ok(());
        }
        let queue = queue();
        match queue.try_send(message) {
            Err(TrySendError::Full(message)) => {
                self.wait_for_room(partition, queue.clone());
                let mut held = Held {
                    queue,
                    messages: VecDeque::new(),
                    bytes: 0,
                    paused: false,
                };
                held.push(message);
                self.held.insert(partition, held);
                Ok(())
            }
            Err(TrySendError::Closed(message)) => Err(message),
            Ok(()) => Ok(()),
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
    /// once none is left a paused partition is resumed.
    pub(crate) fn refill(&mut self, partition: i32, open: bool) {
        let Some(held) = self.held.get_mut(&partition) else {
            return;
        };
        while open && let Some(message) = held.pop() {
            match held.queue.try_send(message) {
                Ok(()) => {}
                Err(TrySendError::Full(message)) => {
                    held.unpop(message);
                    let queue = held.queue.clone();
                    self.wait_for_room(partition, queue);
                    return;
                }
                // Ended meanwhile: the next owner reads them again.
                Err(TrySendError::Closed(_)) => break,
            }
        }
        let paused = self.held.remove(&partition).is_some_and(|held| held.paused);
        self.count_paused();
        if !paused {
            return;
        }
        if let Err(error) = self.resume(partition) {
            tracing::error!(%error, partition, "partition not resumed: its messages wait until it is reassigned");
        } else {
            tracing::debug!(partition, "pipeline has room: partition resumed");
        }
    }

    /// Stops fetching `partition`, which holds too much. A partition that
    /// cannot be paused (no longer assigned here) keeps being held: its
    /// pipeline ends with the assignment and drops what it holds.
    fn pause(&mut self, partition: i32) {
        match self.pause_in_consumer(partition) {
            Ok(()) => {
                if let Some(held) = self.held.get_mut(&partition) {
                    held.paused = true;
                }
                self.count_paused();
                tracing::debug!(partition, "pipeline behind: partition paused");
            }
            Err(error) => {
                tracing::warn!(%error, partition, "pipeline behind and the partition could not be paused");
            }
        }
    }

    fn count_paused(&self) {
        let paused = self.held.values().filter(|held| held.paused).count();
        self.metrics.partitions_paused.set(paused as i64);
    }

    fn wait_for_room(&mut self, partition: i32, queue: mpsc::Sender<OwnedMessage>) {
        let room = self.resume_room.min(queue.max_capacity());
        self.rooms.push(Box::pin(async move {
            // The places are given back at once: only this loop sends.
            let open = queue.reserve_many(room).await.is_ok();
            (partition, open)
        }));
    }

    fn pause_in_consumer(&self, partition: i32) -> Result<(), KafkaError> {
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
