//! One event of a request as read from its reply partition, and the
//! decoder from a Kafka record to it. A leaf: the hub, the lookups and the
//! shared tails all read events through it, and it imports none of them.

use std::sync::Arc;

use bytes::Bytes;
use osmosis_protocol::ReplyEnvelope;
use osmosis_support::kafka::header_pairs;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tokio::sync::mpsc;

/// One event of a request (`accepted`, `progress` or `final`).
#[derive(Clone, Debug)]
pub struct ReplyEvent {
    pub envelope: ReplyEnvelope,
    pub body: Bytes,
    /// Offset in the reply partition: the event's SSE id.
    pub offset: i64,
}

impl ReplyEvent {
    /// Decodes a reply record; `None` (logged) when it is not one.
    pub fn decode<M: Message>(message: &M) -> Option<Self> {
        let headers = message.headers()?;
        match ReplyEnvelope::from_headers(header_pairs(headers)) {
            Ok(envelope) => Some(Self {
                envelope,
                body: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
                offset: message.offset(),
            }),
            Err(error) => {
                tracing::warn!(%error, partition = message.partition(), offset = message.offset(), "ignoring a malformed reply record");
                None
            }
        }
    }

    /// Bytes the event holds in memory, for the recent-replies cache.
    pub fn weight(&self) -> u64 {
        let headers: usize = self
            .envelope
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum();
        (self.body.len() + headers + 256) as u64
    }
}

/// Why a followed request's event stream ended before its final reply.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FollowError {
    #[error("no event follows offset {0}")]
    NothingAfter(i64),
    #[error("reading the reply partition failed: {0}")]
    Kafka(#[from] KafkaError),
}

/// What a followed request stream receives: its events, or why it ended.
pub type FollowSender = mpsc::Sender<Result<Arc<ReplyEvent>, FollowError>>;
/// The receiving end of a [`FollowSender`].
pub type FollowReceiver = mpsc::Receiver<Result<Arc<ReplyEvent>, FollowError>>;

#[cfg(test)]
impl ReplyEvent {
    /// An event of `kind` for `id` at `offset`, for unit tests.
    pub fn fixture(
        id: osmosis_protocol::RequestId,
        kind: osmosis_protocol::EventKind,
        offset: i64,
    ) -> Arc<Self> {
        Arc::new(Self {
            envelope: ReplyEnvelope {
                id,
                kind,
                status: 200,
                content_type: None,
                headers: Vec::new(),
            },
            body: Bytes::from_static(b"done"),
            offset,
        })
    }
}
