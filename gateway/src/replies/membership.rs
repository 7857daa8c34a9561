//! Which reply partitions this gateway owns: the gateways of a fleet form
//! one consumer group on the reply topic, and the partitions Kafka assigns
//! to an instance are the ones it names in new request ids. A fleet grows,
//! shrinks or loses a member without a configuration change.
//!
//! Two moments need care, and both are handled in the rebalance callback,
//! where the consumer is between assignments:
//! - **Assigned**: the partition is consumed from its end *as measured
//!   now*, not from an end resolved lazily at the first fetch, so a reply to
//!   a request named a moment later can never fall before the start.
//! - **Revoked**: the position reached so far is kept, so that the hub can
//!   go on following the partition from exactly there for the requests
//!   still waiting on this instance (see [`super::ReplyHub`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use osmosis_support::kafka::LoggingContext;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Notify, mpsc};

/// A change of this instance's share, as the hub hears of it.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Partitions now consumed here, each from the offset given.
    Assigned(Vec<(i32, i64)>),
    /// Partitions no longer consumed here, each with the next offset this
    /// instance had not read.
    Revoked(Vec<(i32, i64)>),
}

/// This instance's reply partitions, as the rebalance callback keeps them.
pub struct Ownership {
    topic: String,
    metadata_timeout: Duration,
    state: Mutex<Owned>,
    /// Round-robin over the owned partitions for new requests.
    next: AtomicUsize,
    /// Wakes whoever waits for the first assignment.
    assigned: Notify,
    changes: mpsc::UnboundedSender<Change>,
    partitions_owned: Gauge,
    rebalances: Counter,
}

#[derive(Default)]
struct Owned {
    /// Sorted partition ids.
    partitions: Vec<i32>,
    /// Where consumption of each owned partition started.
    assigned_at: HashMap<i32, i64>,
    /// The next unread offset of each partition given away.
    released_at: HashMap<i32, i64>,
}

impl Ownership {
    pub fn new(
        topic: String,
        metadata_timeout: Duration,
        partitions_owned: Gauge,
        rebalances: Counter,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Change>) {
        let (changes, received) = mpsc::unbounded_channel();
        let ownership = Arc::new(Self {
            topic,
            metadata_timeout,
            state: Mutex::new(Owned::default()),
            next: AtomicUsize::new(0),
            assigned: Notify::new(),
            changes,
            partitions_owned,
            rebalances,
        });
        (ownership, received)
    }

    /// A partition for the next request, round-robin; `None` while this
    /// instance owns none.
    pub fn next_partition(&self) -> Option<i32> {
        let state = self.state.lock().unwrap();
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (!state.partitions.is_empty()).then(|| state.partitions[i % state.partitions.len()])
    }

    pub fn owns(&self, partition: i32) -> bool {
        self.state
            .lock()
            .unwrap()
            .partitions
            .binary_search(&partition)
            .is_ok()
    }

    pub fn owned(&self) -> Vec<i32> {
        self.state.lock().unwrap().partitions.clone()
    }

    /// Where this instance stopped reading `partition` when it gave it away.
    pub fn released_at(&self, partition: i32) -> Option<i64> {
        self.state
            .lock()
            .unwrap()
            .released_at
            .get(&partition)
            .copied()
    }

    /// Resolves once this instance owns a partition, or after `timeout`.
    pub async fn first_assignment(&self, timeout: Duration) -> bool {
        let waited = tokio::time::timeout(timeout, async {
            loop {
                let notified = self.assigned.notified();
                if !self.owned().is_empty() {
                    return;
                }
                notified.await;
            }
        });
        waited.await.is_ok()
    }

    fn record(&self, change: Change) {
        let mut state = self.state.lock().unwrap();
        match &change {
            Change::Assigned(assigned) => {
                for (partition, from) in assigned {
                    state.partitions.push(*partition);
                    state.assigned_at.insert(*partition, *from);
                    state.released_at.remove(partition);
                }
                state.partitions.sort_unstable();
                state.partitions.dedup();
            }
            Change::Revoked(released) => {
                for (partition, at) in released {
                    state.partitions.retain(|p| p != partition);
                    state.assigned_at.remove(partition);
                    state.released_at.insert(*partition, *at);
                }
            }
        }
        self.partitions_owned.set(state.partitions.len() as i64);
        self.rebalances.inc();
        tracing::info!(topic = %self.topic, ?change, owned = ?state.partitions, "reply partitions rebalanced");
        drop(state);
        self.assigned.notify_waiters();
        // The hub is gone only when the gateway stops: nothing to tell.
        let _ = self.changes.send(change);
    }

    /// The end offset of every partition in `partitions`, measured now, in
    /// one ListOffsets request.
    fn end_offsets(
        &self,
        consumer: &BaseConsumer<MembershipContext>,
        partitions: &TopicPartitionList,
    ) -> Result<HashMap<i32, i64>, KafkaError> {
        let mut query = TopicPartitionList::new();
        for element in partitions.elements() {
            query.add_partition_offset(element.topic(), element.partition(), Offset::End)?;
        }
        let found = consumer.offsets_for_times(query, self.metadata_timeout)?;
        Ok(found
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(offset) => Some((e.partition(), offset)),
                _ => None,
            })
            .collect())
    }
}

/// The reply consumer's context: keeps [`Ownership`] in step with the
/// group's assignment.
pub struct MembershipContext {
    pub ownership: Arc<Ownership>,
}

impl ClientContext for MembershipContext {
    fn error(&self, error: KafkaError, reason: &str) {
        LoggingContext.error(error, reason);
    }
}

impl ConsumerContext for MembershipContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let outcome = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(consumer, partitions)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(consumer, partitions)
            }
            other => {
                let error = RDKafkaErrorCode::from(other);
                tracing::warn!(%error, "reply partition rebalance failed");
                Ok(())
            }
        };
        if let Err(error) = outcome {
            tracing::error!(%error, "cannot apply the reply partition assignment");
        }
    }
}

impl MembershipContext {
    fn assign(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &mut TopicPartitionList,
    ) -> Result<(), KafkaError> {
        if partitions.count() == 0 {
            // A cooperative round that moves nothing here.
            return incremental(consumer, partitions, true);
        }
        // Blocking for one ListOffsets round trip: the callback runs while
        // the consumer is between assignments anyway.
        let ends = self
            .ownership
            .end_offsets(consumer, partitions)
            .inspect_err(|error| {
                tracing::warn!(%error, "cannot measure the reply partitions' ends; starting at the end as the first fetch finds it");
            })
            .unwrap_or_default();
        let mut assigned = Vec::new();
        for element in partitions.elements() {
            let start = ends.get(&element.partition()).copied();
            assigned.push((element.partition(), start.unwrap_or(-1)));
        }
        for (partition, start) in &assigned {
            let offset = if *start >= 0 {
                Offset::Offset(*start)
            } else {
                Offset::End
            };
            partitions.set_partition_offset(&self.ownership.topic, *partition, offset)?;
        }
        incremental(consumer, partitions, true)?;
        self.ownership.record(Change::Assigned(assigned));
        Ok(())
    }

    fn revoke(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &mut TopicPartitionList,
    ) -> Result<(), KafkaError> {
        if partitions.count() == 0 {
            return incremental(consumer, partitions, false);
        }
        let positions = consumer.position().unwrap_or_default();
        let mut released = Vec::new();
        for element in partitions.elements() {
            let partition = element.partition();
            let read_to = match positions
                .find_partition(&self.ownership.topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(next)) => Some(next),
                // Nothing read since the assignment: it started there.
                _ => self
                    .ownership
                    .state
                    .lock()
                    .unwrap()
                    .assigned_at
                    .get(&partition)
                    .copied(),
            };
            released.push((partition, read_to.unwrap_or(-1)));
        }
        incremental(consumer, partitions, false)?;
        self.ownership.record(Change::Revoked(released));
        Ok(())
    }
}

/// Applies an assignment change the way the group's protocol wants it:
/// incrementally (cooperative-sticky, what the gateway fixes), or whole.
fn incremental(
    consumer: &BaseConsumer<MembershipContext>,
    partitions: &TopicPartitionList,
    assign: bool,
) -> Result<(), KafkaError> {
    match (consumer.rebalance_protocol(), assign) {
        (RebalanceProtocol::Cooperative, true) => consumer.incremental_assign(partitions),
        (RebalanceProtocol::Cooperative, false) => consumer.incremental_unassign(partitions),
        (_, true) => consumer.assign(partitions),
        (_, false) => consumer.unassign(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ownership() -> (Arc<Ownership>, mpsc::UnboundedReceiver<Change>) {
        Ownership::new(
            "replies".into(),
            Duration::from_secs(1),
            Gauge::default(),
            Counter::default(),
        )
    }

    #[test]
    fn new_requests_name_only_owned_partitions_round_robin() {
        let (ownership, _changes) = ownership();
        assert_eq!(ownership.next_partition(), None, "nothing owned yet");
        ownership.record(Change::Assigned(vec![(4, 10), (1, 0)]));
        let named: Vec<i32> = (0..4).filter_map(|_| ownership.next_partition()).collect();
        assert!(named.iter().all(|p| [1, 4].contains(p)), "{named:?}");
        assert!(named.contains(&1) && named.contains(&4), "{named:?}");
        ownership.record(Change::Revoked(vec![(4, 17)]));
        assert!((0..4).all(|_| ownership.next_partition() == Some(1)));
        assert_eq!(ownership.released_at(4), Some(17));
        assert!(!ownership.owns(4) && ownership.owns(1));
    }

    #[test]
    fn the_hub_hears_every_change_in_order() {
        let (ownership, mut changes) = ownership();
        ownership.record(Change::Assigned(vec![(0, 5)]));
        ownership.record(Change::Revoked(vec![(0, 9)]));
        assert_eq!(changes.try_recv().unwrap(), Change::Assigned(vec![(0, 5)]));
        assert_eq!(changes.try_recv().unwrap(), Change::Revoked(vec![(0, 9)]));
        ownership.record(Change::Assigned(vec![(0, 12)]));
        assert_eq!(ownership.released_at(0), None, "owned again");
    }

    #[tokio::test]
    async fn the_first_assignment_wakes_its_waiter() {
        let (ownership, _changes) = ownership();
        assert!(!ownership.first_assignment(Duration::from_millis(10)).await);
        let waiter = {
            let ownership = Arc::clone(&ownership);
            tokio::spawn(async move { ownership.first_assignment(Duration::from_secs(10)).await })
        };
        tokio::task::yield_now().await;
        ownership.record(Change::Assigned(vec![(2, 0)]));
        assert!(waiter.await.unwrap());
    }
}
