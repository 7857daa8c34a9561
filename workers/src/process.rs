//! What happens to one request record: decoded into a [`Request`], refused
//! when its deadline has passed, handed to the handler (retried with backoff
//! while the failure is retryable) and answered: with the handler's reply,
//! or with an error reply once the record went to the dead-letter topic.
//!
//! Processing has two steps, so that a partition's pipeline can keep the
//! first in order and overlap the second with the next message:
//! [`Processor::handle`] decodes, checks the deadline and runs the handler;
//! [`Processor::deliver`] sends what the handler decided. Its first produce
//! is enqueued on its first poll, before any await, so deliveries polled in
//! handler order enqueue their records in handler order. Something final
//! is acknowledged by Kafka before `deliver` returns; that is what lets the
//! pipeline finish the message's offset right after. Normally that is the reply, and the dead letter of a failed
//! request too. When Kafka refuses a record for good (see `delivery`), the
//! request still ends: a reply too large gives way to a small problem
//! reply (502, with the original size and the reason) and the request goes
//! to the dead-letter topic; a dead letter too large is cut down
//! (`replier`). Only when nothing at all could be acknowledged — no reply,
//! no dead letter — does the dead letter keep being retried, the partition
//! reported stuck meanwhile (`progress`): skipping would lose the request.
//!
//! Ordering messages and storing offsets is `pipeline`'s concern, not
//! this module's.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use osmosis_protocol::clock::unix_ms;
use osmosis_support::kafka::header_pairs;

use bytes::Bytes;
use futures::FutureExt;
use osmosis_protocol::{ReplyAddress, RequestEnvelope, RequestId};
use rdkafka::message::{Message, OwnedMessage};

use crate::config::WorkerConfig;
use crate::delivery::{Refusal, Refused};
use crate::handler::{Handler, HandlerError, Reply, ReplyTo, Request};
use crate::metrics::{Metrics, Outcome, RefusalLabels};
use crate::progress::Watch;
use crate::replier::{DeadLetter, Replier};

/// Between two tries of a dead letter that was refused while nothing else
/// for its request was acknowledged.
const REFUSED_LETTER_RETRY: Duration = Duration::from_secs(5);

/// What became of a request's final reply.
#[derive(Debug)]
enum Answered {
    /// Acknowledged as the handler (or the runtime) wrote it.
    Sent,
    /// The request expects no reply.
    NotExpected,
    /// Refused; a problem reply saying why was acknowledged instead.
    Replaced(Refused),
    /// Refused, and so was any replacement: the client gets no reply.
    Lost(Refused),
}

impl Answered {
    /// Whether something final reached the reply address.
    fn delivered(&self) -> bool {
        matches!(self, Answered::Sent | Answered::Replaced(_))
    }
}

/// Turns one message into an [`Outcome`]; shared by every partition task.
pub(crate) struct Processor<H> {
    /// The user's business logic.
    handler: H,
    /// How often and how long apart failing handlers are retried.
    config: WorkerConfig,
    /// Writes the replies and the dead letters.
    replier: Replier,
    /// Handler time, handlers in flight and retries.
    metrics: Arc<Metrics>,
}

/// A message through its handler: what remains to be sent for it.
pub(crate) struct Handled {
    /// The record's headers, owned: a dead letter carries them on.
    pairs: Vec<(String, Vec<u8>)>,
    step: Step,
}

/// What [`Processor::deliver`] sends.
enum Step {
    /// Not a request record: the dead letter only, with why.
    Malformed(String),
    /// The deadline passed: a 504 reply, not processed.
    Expired {
        reply_to: Option<ReplyAddress>,
        id: RequestId,
    },
    /// The handler ran to the end.
    Handled {
        reply_to: Option<ReplyAddress>,
        id: RequestId,
        result: Result<Reply, Failed>,
    },
}

/// The handler's last error, after `attempts` calls.
struct Failed {
    error: HandlerError,
    attempts: u32,
}

impl<H: Handler> Processor<H> {
    pub(crate) fn new(
        handler: H,
        config: WorkerConfig,
        replier: Replier,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            handler,
            config,
            replier,
            metrics,
        }
    }

    /// The channel topic the messages come from.
    pub(crate) fn channel(&self) -> &str {
        &self.config.channel
    }

    /// The part of `message`'s processing kept in order: decoding, the
    /// deadline, the handler's attempts. `watch` hears where it is.
    pub(crate) async fn handle(&self, message: &OwnedMessage, watch: &Watch) -> Handled {
        let pairs = owned_headers(message);
        let decoded = RequestEnvelope::from_headers(
            pairs.iter().map(|(n, v)| (n.as_str(), Some(v.as_slice()))),
        );
        let envelope = match decoded {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::warn!(%error, partition = message.partition(), offset = message.offset(), "malformed request record");
                let error = format!("malformed request: {error}");
                return Handled {
                    pairs,
                    step: Step::Malformed(error),
                };
            }
        };
        let reply_to = envelope.reply_to.clone();
        let id = envelope.id;
        if envelope
            .deadline_ms
            .is_some_and(|deadline| unix_ms(SystemTime::now()) > deadline)
        {
            tracing::info!(request_id = %id, "deadline passed: not processed");
            return Handled {
                pairs,
                step: Step::Expired { reply_to, id },
            };
        }
        watch.handling();
        let result = self.attempts(self.request(message, envelope)).await;
        Handled {
            pairs,
            step: Step::Handled {
                reply_to,
                id,
                result,
            },
        }
    }

    /// Sends what [`Processor::handle`] decided for `message`: when this
    /// returns, something final for it — its reply, its dead letter — was
    /// acknowledged by Kafka. The first record is enqueued on the first
    /// poll, before any await.
    pub(crate) async fn deliver(
        &self,
        message: &OwnedMessage,
        handled: Handled,
        watch: &Watch,
    ) -> Outcome {
        watch.delivering();
        let Handled { pairs, step } = handled;
        match step {
            Step::Malformed(error) => {
                self.dead_letter(message, &pairs, &error, 0, false, watch)
                    .await;
                Outcome::malformed
            }
            Step::Expired { reply_to, id } => {
                let detail = "the deadline passed before a worker took the request";
                let reply = Reply::problem(504, detail);
                let answer = (reply_to.as_ref(), id, &reply);
                self.answer_or_dead_letter(message, &pairs, answer, watch)
                    .await
                    .unwrap_or(Outcome::expired)
            }
            Step::Handled {
                reply_to,
                id,
                result: Ok(reply),
            } => {
                let answer = (reply_to.as_ref(), id, &reply);
                self.answer_or_dead_letter(message, &pairs, answer, watch)
                    .await
                    .unwrap_or(Outcome::replied)
            }
            Step::Handled {
                reply_to,
                id,
                result: Err(Failed { error, attempts }),
            } => {
                tracing::warn!(request_id = %id, attempts, %error, "handler failed; dead-lettering");
                let detail = format!(
                    "the worker failed after {attempts} attempt(s): {}",
                    error.message
                );
                let reply = Reply::problem(error.status, &detail);
                // The reply first: when it is acknowledged, a refused dead
                // letter need not hold the partition.
                let answered = self.answer(reply_to.as_ref(), id, &reply, watch).await;
                self.dead_letter(
                    message,
                    &pairs,
                    &error.message,
                    attempts,
                    answered.delivered(),
                    watch,
                )
                .await;
                Outcome::dead_lettered
            }
        }
    }

    /// When the reply did not go out as written: counts and logs it, and
    /// returns the dead letter's error text and whether the client got a
    /// replacement reply.
    /// Sends `answer` (where, for which request, what); when it cannot be
    /// delivered, dead-letters `message` instead and says so
    /// (`Some(undeliverable)`).
    async fn answer_or_dead_letter(
        &self,
        message: &OwnedMessage,
        pairs: &[(String, Vec<u8>)],
        (reply_to, id, reply): (Option<&ReplyAddress>, RequestId, &Reply),
        watch: &Watch,
    ) -> Option<Outcome> {
        let answered = self.answer(reply_to, id, reply, watch).await;
        let (error, replied) = self.undelivered(answered)?;
        self.dead_letter(message, pairs, &error, 0, replied, watch)
            .await;
        Some(Outcome::undeliverable)
    }

    fn undelivered(&self, answered: Answered) -> Option<(String, bool)> {
        let (refused, replied) = match answered {
            Answered::Sent | Answered::NotExpected => return None,
            Answered::Replaced(refused) => (refused, true),
            Answered::Lost(refused) => (refused, false),
        };
        Some((
            format!("the reply could not be delivered: {refused}"),
            replied,
        ))
    }

    /// The handler's view of `message`.
    fn request(&self, message: &OwnedMessage, envelope: RequestEnvelope) -> Request {
        Request {
            body: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
            key: message.key().map(Bytes::copy_from_slice),
            partition: message.partition(),
            offset: message.offset(),
            progress: envelope.reply_to.clone().map(|address| {
                Arc::new(ReplyTo {
                    replier: self.replier.clone(),
                    address,
                })
            }),
            envelope,
        }
    }

    /// Calls the handler until it replies, fails for good or runs out of
    /// retries, waiting the configured backoff between calls.
    async fn attempts(&self, request: Request) -> Result<Reply, Failed> {
        let id = request.id();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(request.clone()).await {
                Ok(reply) => return Ok(reply),
                Err(error) if error.retryable && attempt <= self.config.max_retries => {
                    self.metrics.retries.inc();
                    let delay = self.config.backoff(attempt);
                    tracing::warn!(request_id = %id, attempt, %error, ?delay, "handler failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => {
                    return Err(Failed {
                        error,
                        attempts: attempt,
                    });
                }
            }
        }
    }

    /// One handler call, timed and counted in flight. A panic fails the
    /// call for good: it would most likely panic again.
    async fn attempt(&self, request: Request) -> Result<Reply, HandlerError> {
        self.metrics.in_flight.inc();
        let started = Instant::now();
        let result = AssertUnwindSafe(self.handler.handle(request))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(HandlerError::permanent("the handler panicked")));
        self.metrics
            .handler_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.in_flight.dec();
        result
    }

    /// Sends `reply` as request `id`'s final reply, unless the request
    /// expects none; a reply Kafka refuses (too large, rejected) gives way
    /// to a small problem reply that says why.
    async fn answer(
        &self,
        reply_to: Option<&ReplyAddress>,
        id: RequestId,
        reply: &Reply,
        watch: &Watch,
    ) -> Answered {
        let Some(address) = reply_to else {
            return Answered::NotExpected;
        };
        let failed = |error: &rdkafka::error::KafkaError| watch.produce_failed(error);
        let refused = match self
            .replier
            .final_reply(address, &reply.final_envelope(id), &reply.body, &failed)
            .await
        {
            Ok(()) => return Answered::Sent,
            Err(refused) => refused,
        };
        self.count_refusal("reply", &refused);
        tracing::error!(
            request_id = %id,
            reply_topic = %address.topic,
            reply_partition = address.partition,
            bytes = reply.body.len(),
            error = %refused,
            "reply refused by Kafka for good"
        );
        if refused.refusal == Refusal::UnknownDestination {
            // A replacement would go to the same missing partition.
            return Answered::Lost(refused);
        }
        let detail = format!(
            "the reply (status {}, {} bytes) could not be delivered: {}",
            reply.status,
            reply.body.len(),
            refused
        );
        let replacement = Reply::problem(502, &detail);
        match self
            .replier
            .final_reply(
                address,
                &replacement.final_envelope(id),
                &replacement.body,
                &failed,
            )
            .await
        {
            Ok(()) => Answered::Replaced(refused),
            Err(again) => {
                self.count_refusal("reply", &again);
                tracing::error!(request_id = %id, error = %again, "replacement reply refused too");
                Answered::Lost(refused)
            }
        }
    }

    /// Sends the request to the dead-letter topic. When Kafka refuses the
    /// letter for good and `replied` is false (nothing else for this
    /// request was acknowledged), keeps trying: the partition is then
    /// reported stuck rather than the request lost.
    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        original_headers: &[(String, Vec<u8>)],
        error: &str,
        attempts: u32,
        replied: bool,
        watch: &Watch,
    ) {
        let letter = DeadLetter {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key(),
            value: message.payload().unwrap_or_default(),
            original_headers,
            error,
            attempts,
        };
        let failed = |error: &rdkafka::error::KafkaError| watch.produce_failed(error);
        loop {
            let refused = match self.replier.dead_letter(&letter, &failed).await {
                Ok(false) => return,
                Ok(true) => {
                    // The whole letter was refused; a cut-down one went.
                    self.metrics
                        .refused
                        .get_or_create(&RefusalLabels {
                            record: "dead_letter",
                            reason: Refusal::TooLarge.as_str(),
                        })
                        .inc();
                    return;
                }
                Err(refused) => refused,
            };
            self.count_refusal("dead_letter", &refused);
            if replied {
                tracing::error!(
                    partition = message.partition(),
                    offset = message.offset(),
                    error = %refused,
                    "dead letter refused by Kafka for good; the client has its reply: moving on"
                );
                return;
            }
            tracing::error!(
                partition = message.partition(),
                offset = message.offset(),
                error = %refused,
                retry_in = ?REFUSED_LETTER_RETRY,
                "dead letter refused by Kafka and nothing else acknowledged for this request: holding the partition"
            );
            tokio::time::sleep(REFUSED_LETTER_RETRY).await;
        }
    }

    fn count_refusal(&self, record: &'static str, refused: &Refused) {
        self.metrics
            .refused
            .get_or_create(&RefusalLabels {
                record,
                reason: refused.refusal.as_str(),
            })
            .inc();
    }
}

/// The record's headers, owned: a dead letter carries them on.
fn owned_headers(message: &OwnedMessage) -> Vec<(String, Vec<u8>)> {
    message
        .headers()
        .map(|headers| {
            header_pairs(headers)
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}
