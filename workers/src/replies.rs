//! Writing replies, progress events and dead letters, each acknowledged by
//! Kafka before the runtime moves on (acks=all, idempotent producer).

use std::time::Duration;

use bytes::Bytes;
use osmosis_protocol::{EventKind, ReplyAddress, ReplyEnvelope, RequestId, headers};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// Produces a request's reply-side records.
pub(crate) struct ReplySender {
    pub(crate) producer: FutureProducer,
    pub(crate) address: ReplyAddress,
}

impl ReplySender {
    pub(crate) async fn progress(
        &self,
        id: RequestId,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<(), KafkaError> {
        let envelope = ReplyEnvelope {
            id,
            kind: EventKind::Progress,
            status: 200,
            content_type: content_type.map(str::to_owned),
            headers: Vec::new(),
        };
        send_reply(&self.producer, &self.address, &envelope, &body).await
    }
}

/// Sends a `final` reply: its metadata as headers, its body as the value.
pub(crate) async fn send_final(
    producer: &FutureProducer,
    address: &ReplyAddress,
    envelope: &ReplyEnvelope,
    body: &[u8],
) -> Result<(), KafkaError> {
    send_reply(producer, address, envelope, body).await
}

async fn send_reply(
    producer: &FutureProducer,
    address: &ReplyAddress,
    envelope: &ReplyEnvelope,
    body: &[u8],
) -> Result<(), KafkaError> {
    let key = envelope.id.to_string();
    let record = FutureRecord::to(&address.topic)
        .partition(address.partition)
        .key(key.as_bytes())
        .payload(body)
        .headers(to_owned_headers(envelope.to_headers()));
    producer
        .send(record, Timeout::Never)
        .await
        .map(drop)
        .map_err(|(error, _)| error)
}

/// Where a dead letter came from and why.
pub(crate) struct DeadLetter<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub original_headers: Vec<(String, Vec<u8>)>,
    pub error: &'a str,
    pub attempts: u32,
}

/// Writes the original record to `<channel>.dlq` with the error headers.
pub(crate) async fn send_dead_letter(
    producer: &FutureProducer,
    letter: DeadLetter<'_>,
) -> Result<(), KafkaError> {
    let dlq = format!("{}.dlq", letter.topic);
    let source = format!("{}/{}/{}", letter.topic, letter.partition, letter.offset);
    let attempts = letter.attempts.to_string();
    let mut pairs: Vec<(&str, &[u8])> = letter
        .original_headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    pairs.push((headers::ERROR, letter.error.as_bytes()));
    pairs.push((headers::ATTEMPTS, attempts.as_bytes()));
    pairs.push((headers::SOURCE, source.as_bytes()));
    let mut owned = OwnedHeaders::new();
    for (name, value) in pairs {
        owned = owned.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    let mut record = FutureRecord::to(&dlq).payload(letter.value).headers(owned);
    if let Some(key) = letter.key {
        record = record.key(key);
    }
    producer
        .send(record, Timeout::After(Duration::from_secs(30)))
        .await
        .map(drop)
        .map_err(|(error, _)| error)
}

fn to_owned_headers<'a>(pairs: Vec<(&'a str, std::borrow::Cow<'a, [u8]>)>) -> OwnedHeaders {
    pairs
        .iter()
        .fold(OwnedHeaders::new(), |headers, (name, value)| {
            headers.insert(Header {
                key: name,
                value: Some(value.as_ref()),
            })
        })
}
