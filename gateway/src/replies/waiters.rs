//! The requests waiting on this instance for their events, and the final
//! replies seen recently (bounded in entries, bytes and age): where a
//! consumed event meets its client. A leaf: it knows no Kafka client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use osmosis_protocol::{EventKind, RequestId};
use tokio::sync::broadcast;

use super::event::{Owner, ReplyEvent};
use crate::config::ReplyCacheConfig;

/// A request waiting on this instance for its events.
struct Waiter {
    events: broadcast::Sender<Arc<ReplyEvent>>,
    since: Instant,
}

pub struct Waiters {
    /// Requests accepted here whose final reply has not arrived.
    waiting: Mutex<HashMap<RequestId, Waiter>>,
    /// Final replies seen recently, bounded in entries, bytes and age.
    recent: Cache<RequestId, Arc<ReplyEvent>>,
    /// Who sent the requests accepted here (and found by lookups), for as
    /// long as their replies are kept: who may read them.
    owners: Cache<RequestId, Owner>,
    /// How long a request stays waiting without a reply.
    ttl: Duration,
    /// Calls waiting here for a request they did not write (an idempotent
    /// retry awaiting its first request's reply): counted with `waiting`
    /// against the same bound.
    awaiting: Arc<AtomicUsize>,
}

/// One call counted among the waiting ones for as long as it lives.
pub struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Waiters {
    pub fn new(cache: &ReplyCacheConfig) -> Self {
        // Every entry weighs at least max_bytes / max_entries, so the byte
        // bound also bounds the entry count.
        let floor = (cache.max_bytes / cache.max_entries).max(1);
        Self {
            waiting: Mutex::new(HashMap::new()),
            recent: Cache::builder()
                .max_capacity(cache.max_bytes)
                .weigher(move |_, event: &Arc<ReplyEvent>| {
                    event.weight().max(floor).min(u64::from(u32::MAX)) as u32
                })
                .time_to_live(Duration::from_secs(cache.ttl_secs))
                .build(),
            owners: Cache::builder()
                .max_capacity(cache.max_entries.saturating_mul(4))
                .time_to_live(Duration::from_secs(cache.ttl_secs))
                .build(),
            ttl: Duration::from_secs(cache.ttl_secs),
            awaiting: Arc::default(),
        }
    }

    /// Registers a request sent by `owner`; returns the receiver of its
    /// events.
    pub fn register(&self, id: RequestId, owner: Owner) -> broadcast::Receiver<Arc<ReplyEvent>> {
        self.owners.insert(id, owner);
        let mut waiting = self.waiting.lock().unwrap();
        let waiter = waiting.entry(id).or_insert_with(|| Waiter {
            events: broadcast::channel(64).0,
            since: Instant::now(),
        });
        waiter.events.subscribe()
    }

    pub fn forget(&self, id: &RequestId) {
        self.waiting.lock().unwrap().remove(id);
    }

    /// Calls waiting here: registered requests and [`Self::count_one`]s.
    pub fn count(&self) -> usize {
        self.waiting.lock().unwrap().len() + self.awaiting.load(Ordering::Relaxed)
    }

    /// Counts a call that waits here without a registered request.
    pub fn count_one(&self) -> Counted {
        self.awaiting.fetch_add(1, Ordering::Relaxed);
        Counted(Arc::clone(&self.awaiting))
    }

    pub fn is_waiting(&self, id: &RequestId) -> bool {
        self.waiting.lock().unwrap().contains_key(id)
    }

    /// Whether a request waits for a reply on `partition`.
    pub fn any_on(&self, partition: i32) -> bool {
        self.waiting
            .lock()
            .unwrap()
            .keys()
            .any(|id| id.reply_partition() == Some(partition))
    }

    /// The final reply, if it was seen recently.
    pub fn recent(&self, id: &RequestId) -> Option<Arc<ReplyEvent>> {
        self.recent.get(id)
    }

    /// Remembers a final reply found elsewhere (a lookup), and who sent
    /// its request when the lookup saw it.
    pub fn remember(&self, id: RequestId, reply: Arc<ReplyEvent>, owner: &Owner) {
        self.recent.insert(id, reply);
        if *owner != Owner::Unknown {
            self.owners.insert(id, owner.clone());
        }
    }

    /// Who sent the request, if known here.
    pub fn owner(&self, id: &RequestId) -> Owner {
        self.owners.get(id).unwrap_or(Owner::Unknown)
    }

    /// How long a request may wait.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Hands an event to its waiter and remembers final replies; a final
    /// reply seen before (a redelivery) reaches nobody twice.
    pub fn deliver(&self, event: Arc<ReplyEvent>) {
        let id = event.envelope.id;
        match event.envelope.kind {
            EventKind::Final => {
                if self.recent.contains_key(&id) {
                    return;
                }
                self.recent.insert(id, Arc::clone(&event));
                if let Some(waiter) = self.waiting.lock().unwrap().remove(&id) {
                    let _ = waiter.events.send(event);
                }
            }
            EventKind::Progress => {
                if let Some(waiter) = self.waiting.lock().unwrap().get(&id) {
                    let _ = waiter.events.send(event);
                }
            }
            EventKind::Accepted => {}
        }
    }

    /// Drops waiters whose reply never came within the time to live.
    pub fn sweep(&self) {
        let ttl = self.ttl;
        self.waiting
            .lock()
            .unwrap()
            .retain(|_, waiter| waiter.since.elapsed() < ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: RequestId, kind: EventKind) -> Arc<ReplyEvent> {
        ReplyEvent::fixture(id, kind, 0)
    }

    #[test]
    fn a_waiter_gets_progress_then_its_final_reply_once() {
        let waiters = Waiters::new(&ReplyCacheConfig::default());
        let id = RequestId::new(Some(3));
        let mut events = waiters.register(id, Owner::Anonymous);
        assert!(waiters.any_on(3) && !waiters.any_on(2));
        waiters.deliver(event(id, EventKind::Progress));
        waiters.deliver(event(id, EventKind::Final));
        waiters.deliver(event(id, EventKind::Final));
        assert_eq!(
            events.try_recv().unwrap().envelope.kind,
            EventKind::Progress
        );
        assert_eq!(events.try_recv().unwrap().envelope.kind, EventKind::Final);
        assert!(
            events.try_recv().is_err(),
            "the redelivered reply reaches nobody"
        );
        assert!(!waiters.is_waiting(&id));
        assert!(waiters.recent(&id).is_some());
    }

    #[test]
    fn calls_awaiting_another_request_count_while_they_wait() {
        let waiters = Waiters::new(&ReplyCacheConfig::default());
        let _registered = waiters.register(RequestId::new(Some(0)), Owner::Anonymous);
        let counted = waiters.count_one();
        assert_eq!(waiters.count(), 2);
        drop(counted);
        assert_eq!(waiters.count(), 1);
    }
}
