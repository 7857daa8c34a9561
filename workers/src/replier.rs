//! The worker's producer: writes a request's replies (progress events and the
//! `final` reply) to its reply address, and failed requests to the
//! dead-letter topic. Every record is acknowledged by Kafka (acks=all,
//! idempotent producer) before the caller moves on.
//!
//! Final replies and dead letters are retried while the failure is
//! transient, because the runtime stores the request's offset right after
//! them (at least once); a record Kafka refuses for good (see `delivery`)
//! is never retried: the caller learns it was [`Refused`]. A dead letter
//! too large for its topic is sent again cut down — the body to its first
//! [`KEPT_BODY_BYTES`], then without body and original headers — with
//! `osmosis-truncated` giving the original size. Progress events are tried
//! once and the handler decides what a failure means. This module knows the
//! protocol's records, not the handler's types nor the consumer.

use std::borrow::Cow;
use std::time::Duration;

use osmosis_protocol::{EventKind, ReplyAddress, ReplyEnvelope, RequestId, headers};
use osmosis_support::kafka::to_record_headers;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::delivery::{Refusal, Refused, Retry, deliver};

/// What a dead letter too large for its topic keeps of the request's body.
pub(crate) const KEPT_BODY_BYTES: usize = 1024;

/// Sees every failed produce of a final reply or dead letter.
pub(crate) type OnFailure<'a> = &'a (dyn Fn(&KafkaError) + Sync);

/// Owns the producer and the delivery retry; cheap to clone.
#[derive(Clone)]
pub(crate) struct Replier {
    /// Shared by every partition task and every request's progress events.
    producer: FutureProducer,
    /// How final replies and dead letters are retried.
    retry: Retry,
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
    pub(crate) fn new(producer: FutureProducer, retry: Retry) -> Self {
        Self { producer, retry }
    }

    /// Sends a `final` reply (its metadata as `envelope`, its body as the
    /// value) to `address`, retrying until Kafka acknowledges it or refuses
    /// it for good.
    pub(crate) async fn final_reply(
        &self,
        address: &ReplyAddress,
        envelope: &ReplyEnvelope,
        body: &[u8],
        failed: OnFailure<'_>,
    ) -> Result<(), Refused> {
        deliver(self.retry, failed, || {
            self.send_reply(address, envelope, body)
        })
        .await
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
    /// retrying until Kafka acknowledges it or refuses it for good; a
    /// letter too large is cut down (see the module doc) and sent again.
    /// `Ok(true)`: acknowledged cut down.
    pub(crate) async fn dead_letter(
        &self,
        letter: &DeadLetter<'_>,
        failed: OnFailure<'_>,
    ) -> Result<bool, Refused> {
        let mut cut = Cut::Whole;
        loop {
            match deliver(self.retry, failed, || self.send_dead_letter(letter, cut)).await {
                Ok(()) => return Ok(cut != Cut::Whole),
                Err(refused) if refused.refusal == Refusal::TooLarge => {
                    let Some(smaller) = cut.smaller(letter.value.len()) else {
                        return Err(refused);
                    };
                    tracing::warn!(
                        source = %format!("{}/{}/{}", letter.topic, letter.partition, letter.offset),
                        bytes = letter.value.len(),
                        error = %refused.error,
                        "dead letter too large for its topic: sending it cut down"
                    );
                    cut = smaller;
                }
                Err(refused) => return Err(refused),
            }
        }
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

    async fn send_dead_letter(&self, letter: &DeadLetter<'_>, cut: Cut) -> Result<(), KafkaError> {
        let dlq = format!("{}.dlq", letter.topic);
        let source = format!("{}/{}/{}", letter.topic, letter.partition, letter.offset);
        let attempts = letter.attempts.to_string();
        let original_size = letter.value.len().to_string();
        let (value, original_headers) = match cut {
            Cut::Whole => (letter.value, letter.original_headers),
            Cut::Body => (
                &letter.value[..KEPT_BODY_BYTES.min(letter.value.len())],
                letter.original_headers,
            ),
            Cut::Bare => (&[][..], &[][..]),
        };
        let mut pairs: Vec<(&str, Cow<'_, [u8]>)> = original_headers
            .iter()
            .map(|(n, v)| (n.as_str(), Cow::Borrowed(v.as_slice())))
            .collect();
        // The error text is the handler's: bounded, so a bare letter stays small.
        let error = truncate_utf8(letter.error, KEPT_BODY_BYTES);
        pairs.push((headers::ERROR, Cow::Borrowed(error.as_bytes())));
        pairs.push((headers::ATTEMPTS, Cow::Borrowed(attempts.as_bytes())));
        pairs.push((headers::SOURCE, Cow::Borrowed(source.as_bytes())));
        if cut != Cut::Whole {
            pairs.push((headers::TRUNCATED, Cow::Borrowed(original_size.as_bytes())));
        }
        let mut record = FutureRecord::to(&dlq)
            .payload(value)
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

/// How much of the request a dead letter carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// The record as it was read, plus the error headers.
    Whole,
    /// The body cut to [`KEPT_BODY_BYTES`], the headers kept.
    Body,
    /// No body, no original headers: the error headers and the source only.
    Bare,
}

impl Cut {
    /// The next smaller cut for a body of `len` bytes, if there is one.
    fn smaller(self, len: usize) -> Option<Cut> {
        match self {
            Cut::Whole if len > KEPT_BODY_BYTES => Some(Cut::Body),
            Cut::Whole | Cut::Body => Some(Cut::Bare),
            Cut::Bare => None,
        }
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_is_cut_body_first_then_bare_then_refused() {
        assert_eq!(Cut::Whole.smaller(KEPT_BODY_BYTES + 1), Some(Cut::Body));
        assert_eq!(
            Cut::Whole.smaller(10),
            Some(Cut::Bare),
            "a small body: straight to bare"
        );
        assert_eq!(Cut::Body.smaller(KEPT_BODY_BYTES + 1), Some(Cut::Bare));
        assert_eq!(Cut::Bare.smaller(0), None);
    }

    #[test]
    fn text_is_cut_on_a_character_boundary() {
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("héllo", 3), "hé");
        assert_eq!(truncate_utf8("ok", 10), "ok");
    }
}
