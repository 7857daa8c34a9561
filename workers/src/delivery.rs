//! Whether a failed produce is worth trying again, and the retry loop that
//! gives up when it is not.
//!
//! A produce error is *transient* (the broker is away, a leader moves, a
//! timeout: trying again will succeed) or *permanent* (the record is too
//! large for the topic, the record is invalid, the principal may not write
//! there: trying again would fail again, forever). A topic or partition
//! that does not exist may be one being created, so it becomes permanent
//! only after it stayed unknown for a bound.
//!
//! This module knows librdkafka's error codes and time, not records: what
//! to send instead of a refused record is `replier`'s choice.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Why Kafka will never take a record as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Larger than the producer's or the topic's `max.message.bytes`.
    TooLarge,
    /// The topic or partition does not exist (for longer than the bound).
    UnknownDestination,
    /// Invalid, unauthorized, or refused by a broker policy.
    Rejected,
}

impl Refusal {
    /// A label value and a word for logs and headers.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::TooLarge => "too_large",
            Refusal::UnknownDestination => "unknown_destination",
            Refusal::Rejected => "rejected",
        }
    }
}

/// A record Kafka refused for good, with the last error it gave.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{} ({error})", refusal.as_str())]
pub(crate) struct Refused {
    pub(crate) refusal: Refusal,
    pub(crate) error: KafkaError,
}

/// What to do after a failed produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Try again after a backoff.
    Transient,
    /// Try again, until the destination stayed unknown for the bound.
    Unknown,
    /// Never try this record again.
    Permanent(Refusal),
}

/// Classifies a produce error (from the enqueue or from the delivery report).
pub(crate) fn classify(error: &KafkaError) -> Verdict {
    use RDKafkaErrorCode as Code;
    let Some(code) = error.rdkafka_error_code() else {
        return Verdict::Transient;
    };
    match code {
        // librdkafka reports its own size check with the broker's code.
        Code::MessageSizeTooLarge | Code::MessageBatchTooLarge | Code::InvalidMessageSize => {
            Verdict::Permanent(Refusal::TooLarge)
        }
        Code::UnknownTopicOrPartition
        | Code::UnknownTopic
        | Code::UnknownPartition
        | Code::UnknownTopicId => Verdict::Unknown,
        Code::InvalidMessage
        | Code::InvalidRecord
        | Code::InvalidTopic
        | Code::InvalidTimestamp
        | Code::InvalidRequiredAcks
        | Code::InvalidArgument
        | Code::BadMessage
        | Code::KeySerialization
        | Code::ValueSerialization
        | Code::UnsupportedForMessageFormat
        | Code::UnsupportedCompressionType
        | Code::PolicyViolation
        | Code::TopicAuthorizationFailed
        | Code::ClusterAuthorizationFailed
        | Code::TransactionalIdAuthorizationFailed => Verdict::Permanent(Refusal::Rejected),
        // Everything else may pass on a later try: the broker is down or
        // moving, a timeout, a full queue. A fatal producer error stays
        // here too: the partition is then reported stuck (see `progress`).
        _ => Verdict::Transient,
    }
}

/// How [`deliver`] retries.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retry {
    /// First delay; doubles up to `max_delay`.
    pub(crate) first_delay: Duration,
    pub(crate) max_delay: Duration,
    /// How long a topic or partition may stay unknown before a record for
    /// it is refused.
    pub(crate) unknown_for: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            unknown_for: Duration::from_secs(60),
        }
    }
}

/// Sends until Kafka acknowledges or refuses for good. Transient errors are
/// retried with backoff, without end: the message's offset must not be
/// stored before, and giving up would lose the record (shutdown bounds the
/// wait through the drain timeout). `failed` sees every error, for the
/// partition's health.
pub(crate) async fn deliver<F, Fut>(
    retry: Retry,
    failed: &(dyn Fn(&KafkaError) + Sync),
    send: F,
) -> Result<(), Refused>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), KafkaError>>,
{
    let mut delay = retry.first_delay;
    let mut unknown_since: Option<Instant> = None;
    loop {
        let error = match send().await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        failed(&error);
        match classify(&error) {
            Verdict::Permanent(refusal) => return Err(Refused { refusal, error }),
            Verdict::Unknown => {
                let since = *unknown_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= retry.unknown_for {
                    return Err(Refused {
                        refusal: Refusal::UnknownDestination,
                        error,
                    });
                }
            }
            Verdict::Transient => unknown_since = None,
        }
        tracing::warn!(%error, ?delay, "produce not acknowledged; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(retry.max_delay);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn produce(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::MessageProduction(code)
    }

    #[test]
    fn size_validity_and_authorization_errors_are_permanent() {
        for (code, refusal) in [
            (RDKafkaErrorCode::MessageSizeTooLarge, Refusal::TooLarge),
            (RDKafkaErrorCode::InvalidRecord, Refusal::Rejected),
            (
                RDKafkaErrorCode::TopicAuthorizationFailed,
                Refusal::Rejected,
            ),
            (RDKafkaErrorCode::InvalidMessage, Refusal::Rejected),
        ] {
            assert_eq!(
                classify(&produce(code)),
                Verdict::Permanent(refusal),
                "{code:?}"
            );
        }
    }

    #[test]
    fn an_unavailable_broker_is_transient_and_an_unknown_topic_waits_for_its_bound() {
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::LeaderNotAvailable,
        ] {
            assert_eq!(classify(&produce(code)), Verdict::Transient, "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::UnknownPartition,
            RDKafkaErrorCode::UnknownTopic,
        ] {
            assert_eq!(classify(&produce(code)), Verdict::Unknown, "{code:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_acknowledged() {
        let calls = AtomicU32::new(0);
        let seen = AtomicU32::new(0);
        let result = deliver(
            Retry::default(),
            &|_| {
                seen.fetch_add(1, Ordering::SeqCst);
            },
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..5 => Err(produce(RDKafkaErrorCode::MessageTimedOut)),
                    _ => Ok(()),
                }
            },
        )
        .await;
        assert!(result.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 6);
        assert_eq!(seen.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_too_large_is_refused_at_once() {
        let calls = AtomicU32::new(0);
        let result = deliver(Retry::default(), &|_| {}, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(produce(RDKafkaErrorCode::MessageSizeTooLarge))
        })
        .await;
        assert_eq!(result.unwrap_err().refusal, Refusal::TooLarge);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_partition_is_refused_once_it_stayed_unknown_for_the_bound() {
        let retry = Retry {
            unknown_for: Duration::from_secs(20),
            ..Retry::default()
        };
        let started = tokio::time::Instant::now();
        let result = deliver(retry, &|_| {}, || async {
            Err(produce(RDKafkaErrorCode::UnknownPartition))
        })
        .await;
        assert_eq!(result.unwrap_err().refusal, Refusal::UnknownDestination);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(20) && waited < Duration::from_secs(30),
            "{waited:?}"
        );
    }
}
