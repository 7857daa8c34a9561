//! The worker's producer: writes a request's replies (progress events and the
//! `final` reply) to its reply address, and failed requests to the
//! dead-letter topic. Every record is acknowledged by Kafka (acks=all,
//! idempotent producer) before the caller moves on.
//!
//! Final replies and dead letters are retried until acknowledged, because the
//! runtime commits the request's offset right after them (at least once);
//! progress events are tried once and the handler decides what a failure
//! means. This module knows the protocol's records, not the handler's types
//! nor the consumer.

use std::borrow::Cow;
use std::future::Future;
use std::time::Duration;

use osmosis_protocol::{EventKind, ReplyAddress, ReplyEnvelope, RequestId, headers};
use osmosis_support::kafka::to_record_headers;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// Owns the producer and the delivery retry; cheap to clone.
#[derive(Clone)]
pub(crate) struct Replier {
    /// Shared by every partition task and every request's progress events.
    producer: FutureProducer,
}

/// Where a dead letter came from and why.
pub(crate) struct DeadLetter<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub original_headers: &'a [(String, Vec<u8>)],
    pub error: &'a str,
    pub attempts: u32,
}

impl Replier {
    pub(crate) fn new(producer: FutureProducer) -> Self {
        Self { producer }
    }

    /// Sends a `final` reply (its metadata as `envelope`, its body as the
    /// value) to `address`, retrying until Kafka acknowledges it.
    pub(crate) async fn final_reply(
        &self,
        address: &ReplyAddress,
        envelope: &ReplyEnvelope,
        body: &[u8],
    ) {
        deliver(|| self.send_reply(address, envelope, body)).await;
    }

    /// Sends one progress event to `address`, once: the handler decides
    /// whether a failure is worth retrying.
    pub(crate) async fn progress(
        &self,
        address: &ReplyAddress,
        id: RequestId,
        body: &[u8],
        content_type: Option<&str>,
    ) -> Result<(), KafkaError> {
        let envelope = ReplyEnvelope {
            id,
            kind: EventKind::Progress,
            status: 200,
            content_type: content_type.map(str::to_owned),
            headers: Vec::new(),
        };
        self.send_reply(address, &envelope, body).await
    }

    /// Writes the original record to `<channel>.dlq` with the error headers,
    /// retrying until Kafka acknowledges it.
    pub(crate) async fn dead_letter(&self, letter: &DeadLetter<'_>) {
        deliver(|| self.send_dead_letter(letter)).await;
    }

    async fn send_reply(
        &self,
        address: &ReplyAddress,
        envelope: &ReplyEnvelope,
        body: &[u8],
    ) -> Result<(), KafkaError> {
        let key = envelope.id.to_string();
        let record = FutureRecord::to(&address.topic)
            .partition(address.partition)
            .key(key.as_bytes())
            .payload(body)
            .headers(to_record_headers(envelope.to_headers()));
        self.producer
            .send(record, Timeout::Never)
            .await
            .map(drop)
            .map_err(|(error, _)| error)
    }

    async fn send_dead_letter(&self, letter: &DeadLetter<'_>) -> Result<(), KafkaError> {
        let dlq = format!("{}.dlq", letter.topic);
        let source = format!("{}/{}/{}", letter.topic, letter.partition, letter.offset);
        let attempts = letter.attempts.to_string();
        let mut pairs: Vec<(&str, Cow<'_, [u8]>)> = letter
            .original_headers
            .iter()
            .map(|(n, v)| (n.as_str(), Cow::Borrowed(v.as_slice())))
            .collect();
        pairs.push((headers::ERROR, Cow::Borrowed(letter.error.as_bytes())));
        pairs.push((headers::ATTEMPTS, Cow::Borrowed(attempts.as_bytes())));
        pairs.push((headers::SOURCE, Cow::Borrowed(source.as_bytes())));
        let mut record = FutureRecord::to(&dlq)
            .payload(letter.value)
            .headers(to_record_headers(pairs));
        if let Some(key) = letter.key {
            record = record.key(key);
        }
        self.producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map(drop)
            .map_err(|(error, _)| error)
    }
}

/// Retries a produce until Kafka acknowledges it: the message's offset must
/// not be committed before, and giving up would lose the reply. Shutdown
/// bounds the wait through the drain timeout.
async fn deliver<F, Fut>(send: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), KafkaError>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match send().await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, ?delay, "produce not acknowledged; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
