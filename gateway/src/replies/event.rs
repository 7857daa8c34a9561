//! One event of a request as read from its reply partition, and the
//! decoder from a Kafka record to it. A leaf: the hub, the lookups and the
//! shared tails all read events through it, and it imports none of them.

use std::sync::Arc;

use bytes::Bytes;
use osmosis_protocol::{EventKind, ReplyEnvelope, headers as contract};
use osmosis_support::kafka::header_pairs;
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use tokio::sync::mpsc;

/// One event of a request (`accepted`, `progress` or `final`).
#[derive(Clone, Debug)]
pub struct ReplyEvent {
    pub envelope: ReplyEnvelope,
    pub body: Bytes,
    /// Offset in the reply partition: the event's SSE id.
    pub offset: i64,
    /// `accepted` markers: the subject of the caller who sent the request
    /// (`None`: an anonymous caller). Other events carry none.
    pub owner: Option<String>,
}

/// Who may read a request's events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Sent without credentials: whoever knows the id.
    Anonymous,
    /// Sent by this subject: that subject (or an operator).
    Subject(String),
    /// No `accepted` marker was seen (it could not be written, or retention
    /// took it): an operator only.
    Unknown,
}

impl Owner {
    /// The owner an `accepted` marker names.
    pub fn of_marker(event: &ReplyEvent) -> Self {
        match &event.owner {
            Some(subject) => Owner::Subject(subject.clone()),
            None => Owner::Anonymous,
        }
    }
}

impl ReplyEvent {
    /// Decodes a reply record; `None` (logged) when it is not one.
    pub fn decode<M: Message>(message: &M) -> Option<Self> {
        let headers = message.headers()?;
        match ReplyEnvelope::from_headers(header_pairs(headers)) {
            Ok(envelope) => Some(Self {
                owner: match envelope.kind {
                    EventKind::Accepted => headers
                        .iter()
                        .find(|header| header.key == contract::SUBJECT)
                        .and_then(|header| header.value)
                        .and_then(|value| std::str::from_utf8(value).ok())
                        .map(str::to_owned),
                    _ => None,
                },
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
            owner: None,
        })
    }
}
