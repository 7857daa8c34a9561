//! Request event streams (`GET /v1/requests/{id}` as SSE) share one tailing
//! consumer per reply partition, instead of each opening a Kafka client and
//! holding a blocking thread: a gateway streaming thousands of requests for
//! other instances keeps one consumer per partition that has listeners.
//!
//! A tail starts with its first listener at the offset that listener needs
//! and hands every record to the listeners whose request it names. A
//! listener needing older records than the tail has read makes it rewind;
//! the others skip what they already had, since each keeps its own next
//! offset, so nobody sees a gap or a repeat. The tail stops when its last
//! listener is gone (final reply sent, client gone, or time limit).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Notify, mpsc};

use crate::replies::{ReplyEvent, decode};
use osmosis_protocol::EventKind;

/// What a request stream receives: its events, or why it ended early.
pub type TailSender = mpsc::Sender<Result<Arc<ReplyEvent>, String>>;

/// The shared tails of one reply topic.
pub struct Tails {
    topic: String,
    client_config: ClientConfig,
    partitions: Mutex<HashMap<i32, PartitionTail>>,
}

/// One partition's tail, as its listeners and its task share it.
struct PartitionTail {
    /// The next offset the tail delivers.
    position: i64,
    /// Set by a listener that needs records before `position`; the task
    /// moves there before it reads on.
    rewind_to: Option<i64>,
    listeners: Vec<Listener>,
    wake: Arc<Notify>,
}

struct Listener {
    key: String,
    /// The next offset this listener is due: older records were sent to it
    /// or predate what it asked for.
    next: i64,
    /// Waits for the tail to rewind to `next`; until then it is sent
    /// nothing, so that its events arrive in order.
    rewinding: bool,
    deadline: Instant,
    events: TailSender,
}

impl Listener {
    /// Offers the record at `offset`; false when the listener is done.
    fn offer(&mut self, key: &[u8], offset: i64, event: &Arc<ReplyEvent>) -> bool {
        if self.rewinding || offset < self.next || key != self.key.as_bytes() {
            return true;
        }
        self.next = offset + 1;
        // A full channel is a client that stopped reading: it can resume
        // with Last-Event-ID.
        self.events.try_send(Ok(Arc::clone(event))).is_ok()
            && event.envelope.kind != EventKind::Final
    }
}

impl Tails {
    pub fn new(topic: String, mut client_config: ClientConfig) -> Arc<Self> {
        // A rewind below the log start (retention) starts at the oldest
        // record left, not at the end.
        client_config.set("auto.offset.reset", "earliest");
        Arc::new(Self {
            topic,
            client_config,
            partitions: Mutex::new(HashMap::new()),
        })
    }

    /// Streams the events of the request keyed `key` on `partition` to
    /// `events`, from offset `start` on, until its final event, `limit`, or
    /// the receiver going away. Blocking (it may create a Kafka client):
    /// call it from a blocking task.
    pub fn listen(
        self: &Arc<Self>,
        partition: i32,
        key: String,
        start: i64,
        limit: Duration,
        events: TailSender,
    ) -> Result<(), KafkaError> {
        let mut listener = Listener {
            key,
            next: start,
            rewinding: false,
            deadline: Instant::now() + limit,
            events,
        };
        loop {
            listener = match self.join(partition, listener) {
                Some(listener) => listener,
                None => return Ok(()),
            };
            // No tail yet: start one, without holding the lock meanwhile.
            let consumer: StreamConsumer = self.client_config.create()?;
            if let Err(error) = assign(&consumer, &self.topic, partition, start) {
                retire(consumer);
                return Err(error);
            }
            let mut partitions = self.partitions.lock().unwrap();
            if partitions.contains_key(&partition) {
                // Another stream started one meanwhile: join that one.
                drop(partitions);
                retire(consumer);
                continue;
            }
            let wake = Arc::new(Notify::new());
            partitions.insert(
                partition,
                PartitionTail {
                    position: start,
                    rewind_to: None,
                    listeners: vec![listener],
                    wake: Arc::clone(&wake),
                },
            );
            tracing::debug!(partition, start, "request stream tail started");
            tokio::spawn(run(Arc::downgrade(self), partition, consumer, wake));
            return Ok(());
        }
    }

    /// Adds `listener` to the partition's running tail, rewinding it when
    /// the listener needs older records; hands the listener back when no
    /// tail runs.
    fn join(&self, partition: i32, mut listener: Listener) -> Option<Listener> {
        let mut partitions = self.partitions.lock().unwrap();
        let Some(tail) = partitions.get_mut(&partition) else {
            return Some(listener);
        };
        if listener.next < tail.position {
            listener.rewinding = true;
            let to = listener.next;
            tail.rewind_to = Some(tail.rewind_to.map_or(to, |earlier| earlier.min(to)));
            tail.wake.notify_one();
        }
        tail.listeners.push(listener);
        None
    }
}

/// Closes a Kafka client off the async workers: closing waits for
/// librdkafka's threads.
fn retire(consumer: StreamConsumer) {
    tokio::task::spawn_blocking(move || drop(consumer));
}

fn assign(
    consumer: &StreamConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<(), KafkaError> {
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.assign(&assignment)
}

/// One partition's tail: read, hand out, rewind when asked, prune, and stop
/// with the last listener.
async fn run(tails: Weak<Tails>, partition: i32, consumer: StreamConsumer, wake: Arc<Notify>) {
    tail(&tails, partition, &consumer, &wake).await;
    retire(consumer);
}

async fn tail(tails: &Weak<Tails>, partition: i32, consumer: &StreamConsumer, wake: &Notify) {
    let mut prune = tokio::time::interval(Duration::from_secs(1));
    loop {
        let received = tokio::select! {
            received = consumer.recv() => Some(received.map(|m| m.detach())),
            () = wake.notified() => None,
            _ = prune.tick() => None,
        };
        let Some(tails) = tails.upgrade() else {
            return;
        };
        let mut partitions = tails.partitions.lock().unwrap();
        let Some(tail) = partitions.get_mut(&partition) else {
            return;
        };
        match received {
            Some(Ok(message)) => {
                tail.position = message.offset() + 1;
                if let (Some(key), Some(event)) = (message.key(), decode(&message)) {
                    let event = Arc::new(event);
                    tail.listeners
                        .retain_mut(|l| l.offer(key, message.offset(), &event));
                }
            }
            Some(Err(error)) => {
                tracing::warn!(partition, %error, "request stream tail: Kafka error");
            }
            None => {}
        }
        if let Some(to) = tail.rewind_to.take() {
            if let Err(error) = assign(consumer, &tails.topic, partition, to) {
                // The old assignment is gone too: end every stream here;
                // clients resume with Last-Event-ID on a fresh tail.
                tracing::warn!(partition, %error, "request stream tail cannot rewind");
                for listener in &tail.listeners {
                    let _ = listener.events.try_send(Err(error.to_string()));
                }
                partitions.remove(&partition);
                return;
            }
            tail.position = to;
            for listener in &mut tail.listeners {
                listener.rewinding = false;
            }
        }
        let now = Instant::now();
        tail.listeners
            .retain(|l| !l.events.is_closed() && l.deadline > now);
        if tail.listeners.is_empty() {
            partitions.remove(&partition);
            tracing::debug!(partition, "request stream tail stopped");
            return;
        }
    }
}
