//! Shared tails of the reply topic: a request stream for a request this
//! instance is not waiting on (`GET /v1/requests/{id}` as SSE, a resume, a
//! request accepted elsewhere) *follows* its reply partition through one
//! tail per partition — one consumer, shared by every follower — instead
//! of opening a Kafka client and holding a blocking thread each.
//!
//! A tail starts with its first follower at the offset that follower needs
//! and hands every record to the followers whose request it names. A
//! follower needing older records than the tail has read makes it rewind;
//! the others skip what they already had, since each keeps its own next
//! offset, so nobody sees a gap or a repeat. The tail stops when its last
//! follower is gone (final reply sent, client gone, or time limit).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use osmosis_protocol::EventKind;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;

use super::event::{FollowError, FollowSender, ReplyEvent};

/// The shared tails of one reply topic.
pub struct PartitionTails {
    topic: String,
    client_config: ClientConfig,
    partitions: Mutex<HashMap<i32, PartitionTail>>,
}

/// One partition's tail, as its followers and its task share it.
struct PartitionTail {
    /// The next offset the tail delivers.
    position: i64,
    /// Set by a follower that needs records before `position`; the task
    /// moves there before it reads on.
    rewind_to: Option<i64>,
    followers: Vec<Follower>,
    wake: Arc<Notify>,
}

/// One request stream following its request's events, or the hub
/// following a whole partition it gave away (see [`super::ReplyHub`]).
struct Follower {
    /// The record key of the request (its id); `None`: every record.
    key: Option<String>,
    /// The next offset this follower is due: older records were sent to it
    /// or predate what it asked for.
    next: i64,
    /// Waits for the tail to rewind to `next`; until then it is sent
    /// nothing, so that its events arrive in order.
    rewinding: bool,
    deadline: Instant,
    events: FollowSender,
}

impl Follower {
    /// Offers the record at `offset`; false when the follower is done.
    fn offer(&mut self, key: &[u8], offset: i64, event: &Arc<ReplyEvent>) -> bool {
        let mine = self.key.as_ref().is_none_or(|own| key == own.as_bytes());
        if self.rewinding || offset < self.next || !mine {
            return true;
        }
        self.next = offset + 1;
        // A full channel is a client that stopped reading: it can resume
        // with Last-Event-ID (the hub re-follows from its last offset).
        self.events.try_send(Ok(Arc::clone(event))).is_ok()
            && (self.key.is_none() || event.envelope.kind != EventKind::Final)
    }
}

impl PartitionTail {
    /// Adds `follower`, asking for a rewind when it needs older records.
    fn add(&mut self, mut follower: Follower) {
        if follower.next < self.position {
            follower.rewinding = true;
            let to = follower.next;
            self.rewind_to = Some(self.rewind_to.map_or(to, |earlier| earlier.min(to)));
            self.wake.notify_one();
        }
        self.followers.push(follower);
    }

    /// Hands the record at `offset` to the followers of its key.
    fn hand_out(&mut self, key: &[u8], offset: i64, event: &Arc<ReplyEvent>) {
        self.position = offset + 1;
        self.followers.retain_mut(|f| f.offer(key, offset, event));
    }

    /// The consumer now reads from `to`: the rewinding followers are due.
    fn rewound(&mut self, to: i64) {
        self.position = to;
        for follower in &mut self.followers {
            follower.rewinding = false;
        }
    }

    /// Drops followers whose client is gone or whose time is up; false
    /// when none is left.
    fn prune(&mut self, now: Instant) -> bool {
        self.followers
            .retain(|f| !f.events.is_closed() && f.deadline > now);
        !self.followers.is_empty()
    }
}

impl PartitionTails {
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

    /// Streams the events of the request keyed `key` (every event, with
    /// `None`) on `partition` to `events`, from offset `start` on, until its
    /// final event, `limit`, or the receiver going away. Blocking (it may
    /// create a Kafka client): call it from a blocking task.
    pub fn follow(
        self: &Arc<Self>,
        partition: i32,
        key: Option<String>,
        start: i64,
        limit: Duration,
        events: FollowSender,
    ) -> Result<(), KafkaError> {
        let mut follower = Follower {
            key,
            next: start,
            rewinding: false,
            deadline: Instant::now() + limit,
            events,
        };
        loop {
            follower = match self.join(partition, follower) {
                Some(follower) => follower,
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
                    followers: vec![follower],
                    wake: Arc::clone(&wake),
                },
            );
            tracing::debug!(partition, start, "request stream tail started");
            tokio::spawn(run(Arc::downgrade(self), partition, consumer, wake));
            return Ok(());
        }
    }

    /// Adds `follower` to the partition's running tail; hands it back when
    /// no tail runs.
    fn join(&self, partition: i32, follower: Follower) -> Option<Follower> {
        let mut partitions = self.partitions.lock().unwrap();
        match partitions.get_mut(&partition) {
            Some(tail) => {
                tail.add(follower);
                None
            }
            None => Some(follower),
        }
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

/// One partition's tail task: read, hand out, rewind when asked, prune,
/// and stop with the last follower.
async fn run(
    tails: Weak<PartitionTails>,
    partition: i32,
    consumer: StreamConsumer,
    wake: Arc<Notify>,
) {
    deliver_while_followed(&tails, partition, &consumer, &wake).await;
    retire(consumer);
}

async fn deliver_while_followed(
    tails: &Weak<PartitionTails>,
    partition: i32,
    consumer: &StreamConsumer,
    wake: &Notify,
) {
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
            Some(Ok(message)) => match (message.key(), ReplyEvent::decode(&message)) {
                (Some(key), Some(event)) => {
                    tail.hand_out(key, message.offset(), &Arc::new(event));
                }
                _ => tail.position = message.offset() + 1,
            },
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
                for follower in &tail.followers {
                    let _ = follower
                        .events
                        .try_send(Err(FollowError::Kafka(error.clone())));
                }
                partitions.remove(&partition);
                return;
            }
            tail.rewound(to);
        }
        if !tail.prune(Instant::now()) {
            partitions.remove(&partition);
            tracing::debug!(partition, "request stream tail stopped");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The tail's bookkeeping without a broker: who gets which record, and
    //! when a tail rewinds.

    use osmosis_protocol::RequestId;
    use tokio::sync::mpsc;

    use super::*;
    use crate::replies::event::FollowReceiver;

    fn event(id: RequestId, kind: EventKind, offset: i64) -> Arc<ReplyEvent> {
        ReplyEvent::fixture(id, kind, offset)
    }

    const FOLLOWER_BUFFER: usize = 16;

    fn follower(id: RequestId, next: i64) -> (Follower, FollowReceiver) {
        let (tx, rx) = mpsc::channel(FOLLOWER_BUFFER);
        let follower = Follower {
            key: Some(id.to_string()),
            next,
            rewinding: false,
            deadline: Instant::now() + Duration::from_secs(60),
            events: tx,
        };
        (follower, rx)
    }

    fn tail_at(position: i64) -> PartitionTail {
        PartitionTail {
            position,
            rewind_to: None,
            followers: Vec::new(),
            wake: Arc::new(Notify::new()),
        }
    }

    fn offsets(rx: &mut FollowReceiver) -> Vec<i64> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| e.unwrap().offset)
            .collect()
    }

    #[test]
    fn a_follower_gets_only_its_own_request_from_its_next_offset_on() {
        let (mine, other) = (RequestId::new(Some(0)), RequestId::new(Some(0)));
        let (mut follower, mut rx) = follower(mine, 5);
        let key = mine.to_string();
        assert!(follower.offer(key.as_bytes(), 4, &event(mine, EventKind::Progress, 4)));
        assert!(follower.offer(
            other.to_string().as_bytes(),
            5,
            &event(other, EventKind::Final, 5)
        ));
        assert!(follower.offer(key.as_bytes(), 6, &event(mine, EventKind::Progress, 6)));
        assert!(
            follower.offer(key.as_bytes(), 6, &event(mine, EventKind::Progress, 6)),
            "a repeat is skipped"
        );
        assert_eq!(offsets(&mut rx), vec![6]);
    }

    #[test]
    fn a_follower_is_done_after_its_final_reply_or_when_its_client_stops_reading() {
        let id = RequestId::new(Some(0));
        let key = id.to_string();
        let (mut done, _rx) = follower(id, 0);
        assert!(!done.offer(key.as_bytes(), 0, &event(id, EventKind::Final, 0)));
        let (mut stalled, _rx) = follower(id, 0);
        let full = FOLLOWER_BUFFER as i64;
        for offset in 0..full {
            assert!(stalled.offer(
                key.as_bytes(),
                offset,
                &event(id, EventKind::Progress, offset)
            ));
        }
        assert!(
            !stalled.offer(key.as_bytes(), full, &event(id, EventKind::Progress, full)),
            "a full channel ends the follower; it resumes with Last-Event-ID"
        );
    }

    #[test]
    fn a_follower_needing_older_records_rewinds_the_tail_without_repeats_for_the_others() {
        let (early, late) = (RequestId::new(Some(0)), RequestId::new(Some(0)));
        let mut tail = tail_at(10);
        let (ahead, mut ahead_rx) = follower(late, 10);
        tail.add(ahead);
        assert_eq!(
            tail.rewind_to, None,
            "a follower at the tail's position needs no rewind"
        );
        let (behind, mut behind_rx) = follower(early, 3);
        tail.add(behind);
        assert_eq!(tail.rewind_to, Some(3));

        // Until the rewind, the behind follower is sent nothing.
        tail.hand_out(
            late.to_string().as_bytes(),
            10,
            &event(late, EventKind::Progress, 10),
        );
        tail.hand_out(
            early.to_string().as_bytes(),
            11,
            &event(early, EventKind::Progress, 11),
        );
        assert_eq!(offsets(&mut behind_rx), Vec::<i64>::new());

        let to = tail.rewind_to.take().unwrap();
        tail.rewound(to);
        assert_eq!(tail.position, 3);
        for offset in 3..=11 {
            let id = if offset == 10 { late } else { early };
            tail.hand_out(
                id.to_string().as_bytes(),
                offset,
                &event(id, EventKind::Progress, offset),
            );
        }
        assert_eq!(
            offsets(&mut behind_rx),
            (3..=11).filter(|o| *o != 10).collect::<Vec<_>>()
        );
        assert_eq!(
            offsets(&mut ahead_rx),
            vec![10],
            "no repeat after the rewind"
        );
    }

    #[test]
    fn a_partition_follower_gets_every_request_and_outlives_final_replies() {
        let (first, second) = (RequestId::new(Some(0)), RequestId::new(Some(0)));
        let (mut whole, mut rx) = follower(first, 2);
        whole.key = None;
        for (offset, id) in [(1, first), (2, first), (3, second)] {
            assert!(whole.offer(
                id.to_string().as_bytes(),
                offset,
                &event(id, EventKind::Final, offset)
            ));
        }
        assert_eq!(offsets(&mut rx), vec![2, 3]);
    }

    #[test]
    fn a_tail_without_followers_stops() {
        let id = RequestId::new(Some(0));
        let mut tail = tail_at(0);
        let (gone, rx) = follower(id, 0);
        tail.add(gone);
        drop(rx);
        assert!(!tail.prune(Instant::now()));
        let (expired, _rx) = follower(id, 0);
        tail.add(expired);
        assert!(!tail.prune(Instant::now() + Duration::from_secs(61)));
    }
}
