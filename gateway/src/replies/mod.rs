//! Replies coming back: the waiting requests, the reply consumer of this
//! instance's reply partitions, the recent-replies cache, the `accepted`
//! markers, and following any request's events from any instance.
//!
//! A request's reply partition is its event log (`accepted`, `progress`,
//! `final`, keyed by request id). The instance that accepted a request
//! writes its `accepted` marker, consumes that partition and completes its
//! waiter; any other instance finds the events through the [`lookup`]
//! (offsets-for-times, then a bounded scan) or follows them through the
//! shared [`tails`].
//!
//! # Layout
//! - [`event`]: one event as read from Kafka, and its decoder (a leaf).
//! - [`lookup`]: the Kafka reads that find any request's events.
//! - [`tails`]: one shared consumer per followed reply partition.
//! - [`waiters`]: the requests waiting here and the recent replies.
//! - `waiting`: what a call holds while it waits for a request's events.
//! - [`membership`]: which reply partitions this instance owns (Kafka group
//!   membership), kept in step by the consumer's rebalance callback.
//! - this file: the [`ReplyHub`] that ties them to waiting clients.
//!
//! When a rebalance moves a partition away while requests accepted here
//! still wait on it, the hub goes on following that partition through the
//! shared tails, from where its consumer stopped, until those requests
//! finish: nobody's join or leave costs a waiting client its reply.

pub mod event;
pub mod lookup;
pub mod membership;
pub mod tails;
pub mod waiters;
mod waiting;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use osmosis_protocol::{EventKind, ReplyAddress, ReplyEnvelope, RequestId, headers as contract};
use osmosis_support::kafka::{ClientSettings, to_record_headers};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use event::{FollowError, FollowReceiver, Owner, ReplyEvent};
pub use lookup::Lookup;
pub use waiting::{Awaiting, Waiting};

use crate::config::{KafkaConfig, LookupLimits, RepliesConfig};
use crate::metrics::Metrics;
use crate::writer::{OutboundRecord, RecordWriter};
use lookup::ReplyLog;
use membership::{Change, MembershipContext, Ownership};
use tails::PartitionTails;
use waiters::Waiters;

/// Failures of the reply side.
#[derive(Debug, thiserror::Error)]
pub enum RepliesError {
    #[error("cannot consume the reply topic {topic:?}: {source}")]
    Consumer {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("looking up the reply failed: {0}")]
    Lookup(#[from] lookup::LookupError),
}

/// The reply side of the gateway.
pub struct ReplyHub {
    topic: String,
    /// Reply partitions this instance consumes, as group membership has it.
    ownership: Arc<Ownership>,
    /// Partitions given away that the hub still follows for its waiters,
    /// each with the offset where this instance's consumer took over again
    /// (`i64::MAX` while it has not).
    following_released: Mutex<HashMap<i32, Arc<AtomicI64>>>,
    /// Cancelled to leave the group: the consumer closes, and the fleet's
    /// other members take the partitions at once.
    leaving: CancellationToken,
    /// Resolves once the consumer has closed.
    left: tokio::sync::Notify,
    /// Requests accepted here waiting for their events, and recent replies.
    waiters: Arc<Waiters>,
    /// Writes the `accepted` markers.
    writer: Arc<dyn RecordWriter>,
    /// Finds events of requests this instance is not waiting on.
    log: Arc<ReplyLog>,
    /// Streams events of requests this instance is not waiting on.
    tails: Arc<PartitionTails>,
}

impl ReplyHub {
    /// Finds this instance's reply partitions and starts consuming them from
    /// their end (older replies are found by lookup).
    pub async fn start(
        kafka: &KafkaConfig,
        replies: &RepliesConfig,
        lookups: &LookupLimits,
        writer: Arc<dyn RecordWriter>,
        metrics: &Metrics,
    ) -> Result<Arc<Self>, RepliesError> {
        let group = replies.group();
        let client_config = ClientSettings::new(&kafka.brokers)
            // A member that dies is replaced within seconds, not minutes;
            // heartbeats often enough that a join is noticed within one.
            .defaults(&[
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "1000"),
            ])
            .user(&kafka.properties)
            .fixed(&[
                ("group.id", &group),
                ("partition.assignment.strategy", "cooperative-sticky"),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "false"),
                ("fetch.wait.max.ms", "10"),
            ])
            .build();
        let (ownership, changes) = Ownership::new(
            replies.topic.clone(),
            kafka.metadata_timeout(),
            metrics.reply_partitions_owned.clone(),
            metrics.reply_rebalances.clone(),
        );
        let consumer_error = |source| RepliesError::Consumer {
            topic: replies.topic.clone(),
            source,
        };
        let consumer: StreamConsumer<MembershipContext> = client_config
            .create_with_context(MembershipContext {
                ownership: Arc::clone(&ownership),
            })
            .map_err(consumer_error)?;
        consumer
            .subscribe(&[&replies.topic])
            .map_err(consumer_error)?;

        let hub = Arc::new(Self {
            topic: replies.topic.clone(),
            ownership: Arc::clone(&ownership),
            following_released: Mutex::new(HashMap::new()),
            leaving: CancellationToken::new(),
            left: tokio::sync::Notify::new(),
            waiters: Arc::new(Waiters::new(&replies.cache)),
            writer,
            log: Arc::new(ReplyLog::new(
                replies.topic.clone(),
                client_config.clone(),
                replies.lookup_max_records,
                kafka.metadata_timeout(),
                lookups,
                metrics.limited.clone(),
            )),
            tails: PartitionTails::new(replies.topic.clone(), client_config),
        });
        tokio::spawn(consume(Arc::clone(&hub), consumer));
        tokio::spawn(follow_membership(Arc::downgrade(&hub), changes));
        tokio::spawn(sweep(Arc::downgrade(&hub)));
        let patience = Duration::from_millis(replies.assignment_timeout_ms);
        if !ownership.first_assignment(patience).await {
            tracing::warn!(
                topic = %replies.topic,
                %group,
                meanwhile = "request routes answer 503 and /readyz is not ready; publish routes work",
                remedy = "the reply topic needs at least as many partitions as gateways",
                "this gateway owns no reply partition"
            );
        }
        Ok(hub)
    }

    /// The reply partitions this instance owns now.
    pub fn owned_partitions(&self) -> Vec<i32> {
        self.ownership.owned()
    }

    /// Leaves the reply group (after in-flight requests finished), so that
    /// the other gateways take this instance's partitions at once.
    pub async fn leave(&self) {
        let left = self.left.notified();
        self.leaving.cancel();
        left.await;
    }

    /// Where the next request's reply goes: one of this instance's
    /// partitions, round-robin; `None` while it owns none.
    pub fn next_address(&self) -> Option<ReplyAddress> {
        Some(ReplyAddress {
            topic: self.topic.clone(),
            partition: self.ownership.next_partition()?,
        })
    }

    /// Registers a request sent by `owner` before it is written, so that
    /// no reply can arrive unseen; the request waits here for as long as
    /// the returned [`Waiting`] lives.
    pub fn wait_for(self: &Arc<Self>, id: RequestId, owner: Owner) -> Waiting {
        let events = self.waiters.register(id, owner);
        // The partition may have moved away between naming it and now.
        if let Some(partition) = id.reply_partition()
            && !self.ownership.owns(partition)
            && let Some(from) = self.ownership.released_at(partition)
        {
            self.follow_released(partition, from);
        }
        Waiting {
            id,
            events,
            waiters: Arc::clone(&self.waiters),
            closed: false,
            keep: false,
        }
    }

    /// Requests waiting here for their replies.
    pub fn waiting_count(&self) -> usize {
        self.waiters.count()
    }

    /// Writes the request's `accepted` event onto its reply partition, so
    /// that any instance answers "pending" for it and its event stream
    /// starts there; `body` is the 202 body the client got, `subject` the
    /// caller's (so that any instance lets only that caller read the
    /// events). Returns the marker's offset, or `None` when it could not be
    /// written (then other instances answer 404 until the reply, and only
    /// an operator may read it there: logged, not fatal).
    pub async fn mark_accepted(
        &self,
        id: RequestId,
        reply_to: &ReplyAddress,
        body: String,
        subject: Option<&str>,
    ) -> Option<i64> {
        let envelope = ReplyEnvelope {
            id,
            kind: EventKind::Accepted,
            status: 202,
            content_type: Some("application/json".into()),
            headers: Vec::new(),
        };
        let mut headers = envelope.to_headers();
        if let Some(subject) = subject {
            headers.push((contract::SUBJECT, Cow::Borrowed(subject.as_bytes())));
        }
        let marker = OutboundRecord {
            topic: Arc::from(reply_to.topic.as_str()),
            partition: Some(reply_to.partition),
            key: Some(id.to_string().into_bytes()),
            value: Bytes::from(body),
            headers: to_record_headers(headers),
        };
        match self.writer.write(marker).await {
            Ok(stored) => Some(stored.offset),
            Err(error) => {
                tracing::warn!(request_id = %id, %error, "accepted event not written; other instances answer 404 until the reply");
                None
            }
        }
    }

    /// The final reply, if this instance has it in memory.
    pub fn recent(&self, id: &RequestId) -> Option<Arc<ReplyEvent>> {
        self.waiters.recent(id)
    }

    /// What is known about `id` and who sent it: from memory, else from
    /// Kafka. `need_owner`: a reply in memory whose sender is not known
    /// here is looked up in Kafka too, where its `accepted` marker says.
    pub async fn find(&self, id: RequestId, need_owner: bool) -> Result<Lookup, RepliesError> {
        if let Some(reply) = self.waiters.recent(&id) {
            let owner = self.waiters.owner(&id);
            if !need_owner || owner != Owner::Unknown {
                return Ok(Lookup::Replied(reply, owner));
            }
        }
        if self.waiters.is_waiting(&id) {
            return Ok(Lookup::Pending(self.waiters.owner(&id)));
        }
        let Some(partition) = id.reply_partition() else {
            return Ok(Lookup::Unknown);
        };
        let log = Arc::clone(&self.log);
        let turn = log.turn().await?;
        let found = tokio::task::spawn_blocking(move || log.scan(id, partition, &turn))
            .await
            .expect("lookup task panicked")?;
        if let Lookup::Replied(reply, owner) = &found {
            self.waiters.remember(id, Arc::clone(reply), owner);
        }
        Ok(found)
    }

    /// Follows the events of `id` on its reply partition, after offset
    /// `after` when given (a resume), else from the id's timestamp, until
    /// the final reply, `limit`, or the receiver going away. Followers share
    /// one tail per partition ([`tails`]).
    pub fn follow(&self, id: RequestId, after: Option<i64>, limit: Duration) -> FollowReceiver {
        let (tx, rx) = mpsc::channel(64);
        let Some(partition) = id.reply_partition() else {
            return rx;
        };
        let (log, tails) = (Arc::clone(&self.log), Arc::clone(&self.tails));
        tokio::task::spawn_blocking(move || {
            // A resume never reaches back before the request's own time: a
            // made-up Last-Event-ID cannot rewind a shared tail to the
            // log's start.
            let earliest = log.stream_start(id, partition).map_err(FollowError::from);
            let start = match after {
                Some(offset) => offset
                    .checked_add(1)
                    .ok_or(FollowError::NothingAfter(offset))
                    .and_then(|next| Ok(next.max(earliest?))),
                None => earliest,
            };
            let following = start.and_then(|start| {
                tails
                    .follow(partition, Some(id.to_string()), start, limit, tx.clone())
                    .map_err(FollowError::from)
            });
            if let Err(error) = following {
                let _ = tx.blocking_send(Err(error));
            }
        });
        rx
    }

    /// Waits up to `limit` for the events of `id`, a request this call did
    /// not write, wherever it was accepted.
    pub fn await_events(&self, id: RequestId, limit: Duration) -> Awaiting {
        Awaiting {
            _counted: self.waiters.count_one(),
            events: self.follow(id, None, limit),
        }
    }

    /// Follows a partition this instance gave away, from `from`, for the
    /// requests still waiting here (once per partition at a time).
    fn follow_released(self: &Arc<Self>, partition: i32, from: i64) {
        let stop_at = {
            let mut following = self.following_released.lock().unwrap();
            if following.contains_key(&partition) {
                return;
            }
            let stop_at = Arc::new(AtomicI64::new(i64::MAX));
            following.insert(partition, Arc::clone(&stop_at));
            stop_at
        };
        tracing::info!(
            partition,
            from,
            "following a reply partition given away, for the requests still waiting here"
        );
        tokio::spawn(Arc::clone(self).deliver_released(partition, from, stop_at));
    }

    /// Delivers a released partition's events through the shared tail until
    /// no request waits on it here, or this instance's consumer reads it
    /// again from `stop_at` on.
    async fn deliver_released(
        self: Arc<Self>,
        partition: i32,
        mut next: i64,
        stop_at: Arc<AtomicI64>,
    ) {
        let mut check = tokio::time::interval(Duration::from_secs(1));
        let done =
            |next: i64| next >= stop_at.load(Ordering::Relaxed) || !self.waiters.any_on(partition);
        'follow: while !done(next) {
            let mut events = self.follow_partition(partition, next);
            loop {
                let received = tokio::select! {
                    received = events.recv() => received,
                    _ = check.tick() => {
                        if done(next) {
                            break 'follow;
                        }
                        continue;
                    }
                };
                match received {
                    Some(Ok(event)) if event.offset < stop_at.load(Ordering::Relaxed) => {
                        next = event.offset + 1;
                        self.waiters.deliver(event);
                    }
                    Some(Ok(_)) => break 'follow,
                    Some(Err(error)) => {
                        tracing::warn!(partition, %error, "following a released reply partition failed; again in a second");
                        check.tick().await;
                        continue 'follow;
                    }
                    // The tail let go (a slow hand-over or its time limit):
                    // follow again from the next offset.
                    None => continue 'follow,
                }
            }
        }
        self.following_released.lock().unwrap().remove(&partition);
        tracing::info!(partition, "stopped following a reply partition given away");
    }

    /// Every event of `partition` from `start` on, through the shared tail.
    fn follow_partition(&self, partition: i32, start: i64) -> FollowReceiver {
        let (tx, rx) = mpsc::channel(1024);
        let (tails, limit) = (Arc::clone(&self.tails), self.waiters.ttl());
        tokio::task::spawn_blocking(move || {
            if let Err(error) = tails.follow(partition, None, start, limit, tx.clone()) {
                let _ = tx.blocking_send(Err(error.into()));
            }
        });
        rx
    }
}

/// This instance's reply consumer: events to their waiters, until the hub
/// leaves the group.
async fn consume(hub: Arc<ReplyHub>, consumer: StreamConsumer<MembershipContext>) {
    loop {
        let received = tokio::select! {
            () = hub.leaving.cancelled() => break,
            received = consumer.recv() => received,
        };
        match received {
            Ok(message) => {
                if let Some(event) = ReplyEvent::decode(&message) {
                    hub.waiters.deliver(Arc::new(event));
                }
            }
            Err(error) => tracing::warn!(%error, "reply consumer error"),
        }
    }
    // Closing leaves the group (its partitions move to the others at once)
    // and waits for librdkafka's threads: off the async workers.
    let closed = tokio::task::spawn_blocking(move || drop(consumer)).await;
    if closed.is_err() {
        tracing::warn!("the reply consumer did not close cleanly");
    }
    tracing::info!("left the reply group");
    hub.left.notify_waiters();
}

/// Acts on membership changes: a partition given away while requests wait
/// on it is followed on; one taken back ends that following where this
/// instance's consumer starts again.
async fn follow_membership(hub: Weak<ReplyHub>, mut changes: mpsc::UnboundedReceiver<Change>) {
    while let Some(change) = changes.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        match change {
            Change::Revoked(released) => {
                for (partition, from) in released {
                    if from >= 0 && hub.waiters.any_on(partition) {
                        hub.follow_released(partition, from);
                    }
                }
            }
            Change::Assigned(assigned) => {
                let following = hub.following_released.lock().unwrap();
                for (partition, from) in assigned {
                    if let Some(stop_at) = following.get(&partition) {
                        stop_at.store(from.max(0), Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// Drops waiters whose reply never came, so that memory stays bounded.
async fn sweep(hub: Weak<ReplyHub>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        hub.waiters.sweep();
    }
}
