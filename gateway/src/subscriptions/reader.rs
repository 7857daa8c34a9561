//! The catch-up reader of one topic: a single Kafka client that serves
//! every catch-up of the topic in turns, instead of a client and a thread
//! per resuming subscriber.
//!
//! Each catch-up is a [`Cursor`]: for every partition it still reads, the
//! next offset and the end (the live feed's snapshot). A turn assigns the
//! reader's consumer to the cursor's positions and hands records over until
//! the cursor's buffer is full, the turn's byte budget is spent or the
//! cursor is complete; then the next cursor gets a turn. What a subscriber
//! holds unread is bounded in bytes ([`CatchUpReceiver`] gives the bytes
//! back as the stream takes events), so a catch-up costs its buffer, not a
//! client: a subscriber that stops reading stops being read for, and is
//! dropped when its buffer stays full for the send timeout.
//!
//! A catch-up either delivers every record of its range, says which ones
//! retention deleted ([`CatchUp::Lost`]) or ends without [`CatchUp::Done`]
//! (the subscriber then ends its stream with an explicit event): never a
//! silent jump. Records the reader skips (another cursor's prefetch, a
//! record already delivered) are recognised by their offsets.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc};

use super::event::{CatchUp, ChannelEvent, SubscriptionError};
use crate::metrics::{Limit, Metrics};

/// Events a catch-up's channel holds at most, whatever their size.
const CHANNEL_EVENTS: usize = 1024;
/// Bytes one turn hands over before the next cursor's turn.
const TURN_BYTES: usize = 512 * 1024;
/// How long a turn waits for Kafka's next record before yielding.
const POLL: Duration = Duration::from_millis(200);
/// A cursor with room that got nothing from Kafka for this long ends (a
/// broker gone, a range that ends in a gap).
const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// How often the reader looks at cursors without room (their stall clock).
const RECHECK: Duration = Duration::from_millis(250);

/// What the subscriber's stream reads a catch-up from. Taking an event
/// gives its bytes back to the catch-up's buffer; dropping the receiver
/// ends the catch-up and frees its place under the cap.
pub struct CatchUpReceiver {
    events: mpsc::Receiver<CatchUp>,
    buffered: Arc<AtomicUsize>,
    room: Arc<Notify>,
    _permit: OwnedSemaphorePermit,
}

impl CatchUpReceiver {
    pub async fn recv(&mut self) -> Option<CatchUp> {
        let item = self.events.recv().await;
        if let Some(CatchUp::Event(event)) = &item {
            self.buffered.fetch_sub(size(event), Ordering::Relaxed);
            self.room.notify_one();
        }
        item
    }
}

/// One catch-up as the reader holds it.
pub(super) struct Cursor {
    /// Told apart by the reader, which numbers cursors as they arrive.
    id: u64,
    /// Per partition still to read: the next offset, the end, and whether
    /// a gap is reported as lost (partitions the subscriber's start did not
    /// name start at the log's start, whatever it is).
    remaining: BTreeMap<i32, Range>,
    events: mpsc::Sender<CatchUp>,
    buffered: Arc<AtomicUsize>,
    /// The consumer fetched a record the cursor could not take: its next
    /// turn assigns again.
    out_of_step: bool,
    /// Since when the cursor's buffer is full.
    blocked_since: Option<Instant>,
    /// When Kafka last gave the cursor a record, or the cursor last waited
    /// for its subscriber rather than for Kafka.
    last_progress: Instant,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Range {
    pub next: i64,
    pub end: i64,
    pub report_loss: bool,
}

/// A new cursor and its receiver: `remaining` as the catch-up's ranges
/// (none empty).
pub(super) fn cursor(
    remaining: BTreeMap<i32, Range>,
    room: Arc<Notify>,
    permit: OwnedSemaphorePermit,
) -> (Cursor, CatchUpReceiver) {
    let (events, receiver) = mpsc::channel(CHANNEL_EVENTS);
    let buffered = Arc::new(AtomicUsize::new(0));
    let cursor = Cursor {
        id: 0,
        remaining,
        events,
        buffered: Arc::clone(&buffered),
        out_of_step: false,
        blocked_since: None,
        last_progress: Instant::now(),
    };
    let receiver = CatchUpReceiver {
        events: receiver,
        buffered,
        room,
        _permit: permit,
    };
    (cursor, receiver)
}

/// What the buffer accounts for an event: its bytes and their bookkeeping.
fn size(event: &ChannelEvent) -> usize {
    event.value.len() + event.key.as_ref().map_or(0, |key| key.len()) + 128
}

/// Where a cursor stands before its turn.
enum Standing {
    Ready,
    Waiting,
    Gone,
    Stalled,
}

/// Why an offer did not go through.
enum Refused {
    Full,
    Gone,
}

impl Cursor {
    fn standing(&mut self, buffer_bytes: usize, send_timeout: Duration) -> Standing {
        if self.events.is_closed() {
            return Standing::Gone;
        }
        // One event may exceed the buffer on its own: it goes when the
        // buffer is empty.
        let has_room =
            self.buffered.load(Ordering::Relaxed) < buffer_bytes && self.events.capacity() > 0;
        if has_room {
            if self.blocked_since.take().is_some() {
                self.last_progress = Instant::now();
            }
            return Standing::Ready;
        }
        let since = *self.blocked_since.get_or_insert_with(Instant::now);
        if since.elapsed() > send_timeout {
            Standing::Stalled
        } else {
            Standing::Waiting
        }
    }

    /// Retention may have deleted the start of the ranges (`lows`: the
    /// partitions' log starts): says so, and moves past what is gone.
    pub(super) fn skip_deleted(&mut self, lows: &BTreeMap<i32, i64>) {
        for (partition, low) in lows {
            let Some(range) = self.remaining.get(partition).copied() else {
                continue;
            };
            if *low <= range.next {
                continue;
            }
            let to = (*low).min(range.end);
            let lost = CatchUp::Lost {
                partition: *partition,
                from: range.next,
                to,
            };
            // Not said now (a channel full of partitions' losses): the
            // reader sees the gap in the offsets and says it then.
            if !range.report_loss || self.offer(lost).is_ok() {
                advance(self, *partition, to);
            }
        }
    }

    /// Every range is read (or was empty).
    pub(super) fn is_complete(&self) -> bool {
        self.remaining.is_empty()
    }

    fn offer(&mut self, item: CatchUp) -> Result<(), Refused> {
        let bytes = match &item {
            CatchUp::Event(event) => size(event),
            _ => 0,
        };
        match self.events.try_send(item) {
            Ok(()) => {
                self.buffered.fetch_add(bytes, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(Refused::Full),
            Err(TrySendError::Closed(_)) => Err(Refused::Gone),
        }
    }

    /// Hands the catch-up's last word over once the subscriber has room
    /// for it (or goes away); the cursor leaves the reader now.
    pub(super) fn finish(self, last: CatchUp) {
        let events = self.events;
        tokio::spawn(async move {
            let _ = events.send(last).await;
        });
    }
}

/// How a turn ended.
enum Turn {
    /// The cursor has more to read: its next turn comes.
    More,
    Complete,
    Gone,
    NoProgress,
    Failed(KafkaError),
}

/// The reader task of `topic`: serves the cursors that arrive on `new`
/// until every sender of `new` is gone.
pub(super) struct Reader {
    pub topic: String,
    pub consumer: StreamConsumer,
    pub new: mpsc::UnboundedReceiver<Cursor>,
    /// Signalled when a subscriber takes an event (a buffer has room).
    pub room: Arc<Notify>,
    pub buffer_bytes: usize,
    pub send_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

/// What the reader's consumer is assigned to: a cursor's partitions, at
/// the positions the cursor has reached (every record fetched since was
/// handed over or skipped), so its next turn needs no new assignment.
struct InStep {
    cursor: u64,
    partitions: usize,
}

/// The consumer settings of a reader: a small prefetch, since cursors
/// change the assignment every turn.
pub(super) fn reader_client(base: &ClientConfig) -> ClientConfig {
    let mut config = base.clone();
    config
        .set("queued.max.messages.kbytes", "1024")
        .set("max.partition.fetch.bytes", "262144")
        .set("fetch.max.bytes", "1048576");
    config
}

impl Reader {
    pub(super) async fn run(mut self) {
        let mut ready: VecDeque<Cursor> = VecDeque::new();
        let mut in_step: Option<InStep> = None;
        let mut arrived = 0;
        let mut number = |mut cursor: Cursor| {
            arrived += 1;
            cursor.id = arrived;
            cursor
        };
        loop {
            while let Ok(cursor) = self.new.try_recv() {
                ready.push_back(number(cursor));
            }
            if ready.is_empty() {
                // Nothing to read for: stop fetching until a cursor comes.
                let _ = self.consumer.unassign();
                in_step = None;
                match self.new.recv().await {
                    Some(cursor) => ready.push_back(number(cursor)),
                    None => return,
                }
            }
            let mut served = false;
            for _ in 0..ready.len() {
                let Some(mut cursor) = ready.pop_front() else {
                    break;
                };
                match cursor.standing(self.buffer_bytes, self.send_timeout) {
                    Standing::Gone => continue,
                    Standing::Stalled => {
                        self.metrics.limited(Limit::CatchUpStalled);
                        tracing::info!(topic = %self.topic, "dropping a catch-up whose subscriber stopped reading");
                        continue;
                    }
                    Standing::Waiting => {
                        ready.push_back(cursor);
                        continue;
                    }
                    Standing::Ready => {}
                }
                served = true;
                match self.turn(&mut cursor, &mut in_step).await {
                    Turn::More => ready.push_back(cursor),
                    Turn::Complete => cursor.finish(CatchUp::Done),
                    Turn::Failed(source) => {
                        let topic = self.topic.clone();
                        cursor.finish(CatchUp::Failed(SubscriptionError::Kafka { topic, source }));
                    }
                    Turn::Gone | Turn::NoProgress => {}
                }
            }
            if !served {
                // Every cursor waits for its subscriber: until one takes an
                // event, a cursor arrives, or the stall clock needs a look.
                tokio::select! {
                    _ = self.room.notified() => {}
                    Some(cursor) = self.new.recv() => ready.push_back(number(cursor)),
                    _ = tokio::time::sleep(RECHECK) => {}
                }
            }
        }
    }

    /// One turn of `cursor`: reads from its positions until its buffer is
    /// full, the turn's budget is spent or its ranges are read.
    async fn turn(&mut self, cursor: &mut Cursor, in_step: &mut Option<InStep>) -> Turn {
        let continues = in_step
            .as_ref()
            .is_some_and(|s| s.cursor == cursor.id && s.partitions == cursor.remaining.len());
        if !continues {
            *in_step = None;
            let mut assignment = TopicPartitionList::new();
            for (partition, range) in &cursor.remaining {
                let next = Offset::Offset(range.next);
                if let Err(error) = assignment.add_partition_offset(&self.topic, *partition, next) {
                    return Turn::Failed(error);
                }
            }
            if let Err(error) = self.consumer.assign(&assignment) {
                return Turn::Failed(error);
            }
            *in_step = Some(InStep {
                cursor: cursor.id,
                partitions: cursor.remaining.len(),
            });
        }
        let turn = self.read_for(cursor).await;
        if matches!(turn, Turn::More) && cursor.out_of_step {
            *in_step = None;
        }
        turn
    }

    /// Hands `cursor` the records the consumer fetches for it.
    async fn read_for(&mut self, cursor: &mut Cursor) -> Turn {
        cursor.out_of_step = false;
        let mut handed = 0;
        loop {
            if cursor.remaining.is_empty() {
                return Turn::Complete;
            }
            let full = cursor.buffered.load(Ordering::Relaxed) >= self.buffer_bytes;
            if handed >= TURN_BYTES || full {
                return Turn::More;
            }
            let message = match tokio::time::timeout(POLL, self.consumer.recv()).await {
                Err(_) if cursor.last_progress.elapsed() > IDLE_LIMIT => return Turn::NoProgress,
                Err(_) => return Turn::More,
                Ok(Err(error)) => return Turn::Failed(error),
                Ok(Ok(message)) => message,
            };
            let (partition, offset) = (message.partition(), message.offset());
            // Another cursor's prefetch, or a record this one has.
            let Some(range) = cursor.remaining.get(&partition).copied() else {
                continue;
            };
            if offset < range.next {
                continue;
            }
            cursor.last_progress = Instant::now();
            if offset > range.next {
                // Retention deleted `[next, offset)` before it was read.
                let to = offset.min(range.end);
                if range.report_loss {
                    let lost = CatchUp::Lost {
                        partition,
                        from: range.next,
                        to,
                    };
                    match cursor.offer(lost) {
                        Ok(()) => {}
                        Err(Refused::Full) => {
                            cursor.out_of_step = true;
                            return Turn::More;
                        }
                        Err(Refused::Gone) => return Turn::Gone,
                    }
                }
                advance(cursor, partition, to);
            }
            if offset >= range.end {
                cursor.remaining.remove(&partition);
                continue;
            }
            let event = ChannelEvent::from_message(&message, Arc::from(""));
            handed += size(&event);
            match cursor.offer(CatchUp::Event(event)) {
                Ok(()) => advance(cursor, partition, offset + 1),
                // Not advanced: the next turn reads the record again.
                Err(Refused::Full) => {
                    cursor.out_of_step = true;
                    return Turn::More;
                }
                Err(Refused::Gone) => return Turn::Gone,
            }
        }
    }
}

/// Moves `partition` of `cursor` to `next`, done when it reaches the end.
fn advance(cursor: &mut Cursor, partition: i32, next: i64) {
    if let Some(range) = cursor.remaining.get_mut(&partition) {
        range.next = next;
        if next >= range.end {
            cursor.remaining.remove(&partition);
        }
    }
}
