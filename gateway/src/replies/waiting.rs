//! What a call holds while it waits for a request's events: [`Waiting`]
//! for a request written here, [`Awaiting`] for one written by an earlier
//! call (an idempotent retry) on any instance.

use std::sync::Arc;

use osmosis_protocol::{EventKind, RequestId};
use tokio::sync::broadcast;

use super::event::{FollowReceiver, ReplyEvent};
use super::waiters::{self, Waiters};

/// A request waiting on this instance for its events. Dropping it — the
/// reply was sent, or the client went away before an answer — forgets the
/// request here, so that abandoned requests hold no memory until their
/// reply or the sweep; a request answered 202 is kept
/// ([`Waiting::keep_until_replied`]).
pub struct Waiting {
    pub(super) id: RequestId,
    pub(super) events: broadcast::Receiver<Arc<ReplyEvent>>,
    pub(super) waiters: Arc<Waiters>,
    /// The waiter was completed while this receiver lagged: the final reply
    /// was taken from the cache once.
    pub(super) closed: bool,
    /// The client was answered 202 and will poll: the request stays known
    /// here as pending (until its reply or the sweep) after this is dropped.
    pub(super) keep: bool,
}

impl Waiting {
    /// The next event of the request; `None` once there is none to come.
    pub async fn next(&mut self) -> Option<Arc<ReplyEvent>> {
        loop {
            match self.events.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) if !self.closed => {
                    // Completed while this receiver lagged: the final reply
                    // is in the cache.
                    self.closed = true;
                    return self.waiters.recent(&self.id);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Waiting {
    /// The client got 202 + `Location` and will poll: keep the request
    /// known here as pending, so polls answer from memory, until its reply
    /// arrives or the sweep drops it.
    pub fn keep_until_replied(mut self) {
        self.keep = true;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.keep {
            self.waiters.forget(&self.id);
        }
    }
}

/// A call waiting for the reply to a request it did not write (an
/// idempotent retry), accepted by this or any other instance: its events
/// come through the shared tails (`ReplyHub::follow`), and the call
/// counts among the waiting ones for as long as this lives.
pub struct Awaiting {
    pub(super) events: FollowReceiver,
    pub(super) _counted: waiters::Counted,
}

impl Awaiting {
    /// The request's final reply; `None` once none can come (the follow's
    /// time limit, or a Kafka error).
    pub async fn final_reply(&mut self) -> Option<Arc<ReplyEvent>> {
        while let Some(received) = self.events.recv().await {
            match received {
                Ok(event) if event.envelope.kind == EventKind::Final => return Some(event),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "following a request's reply failed");
                    return None;
                }
            }
        }
        None
    }
}
