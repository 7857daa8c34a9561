//! What happens to one request record: decoded into a [`Request`], refused
//! when its deadline has passed, handed to the handler (retried with backoff
//! while the failure is retryable) and answered: with the handler's reply,
//! or with an error reply once the record went to the dead-letter topic.
//!
//! Every reply and dead letter is acknowledged by Kafka before
//! [`Processor::process`] returns; that is what lets the partition task
//! store the offset right after. Ordering messages and storing offsets is
//! `partitions`' concern, not this module's.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use osmosis_protocol::clock::unix_ms;
use osmosis_support::kafka::header_pairs;

use bytes::Bytes;
use futures::FutureExt;
use osmosis_protocol::{ReplyAddress, RequestEnvelope, RequestId};
use rdkafka::message::{Message, OwnedMessage};

use crate::config::WorkerConfig;
use crate::handler::{Handler, HandlerError, Reply, ReplyTo, Request};
use crate::metrics::{Metrics, Outcome};
use crate::replier::{DeadLetter, Replier};

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

    /// Processes `message` to the end: when this returns, its reply and its
    /// dead letter, if it has them, were acknowledged by Kafka.
    pub(crate) async fn process(&self, message: &OwnedMessage) -> Outcome {
        let pairs = owned_headers(message);
        let decoded = RequestEnvelope::from_headers(
            pairs.iter().map(|(n, v)| (n.as_str(), Some(v.as_slice()))),
        );
        let envelope = match decoded {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::warn!(%error, partition = message.partition(), offset = message.offset(), "malformed request record");
                let error = format!("malformed request: {error}");
                self.dead_letter(message, &pairs, &error, 0).await;
                return Outcome::malformed;
            }
        };
        let reply_to = envelope.reply_to.clone();
        let id = envelope.id;
        if envelope
            .deadline_ms
            .is_some_and(|deadline| unix_ms(SystemTime::now()) > deadline)
        {
            tracing::info!(request_id = %id, "deadline passed: not processed");
            let detail = "the deadline passed before a worker took the request";
            self.answer(reply_to.as_ref(), id, &Reply::problem(504, detail))
                .await;
            return Outcome::expired;
        }

        match self.attempts(self.request(message, envelope)).await {
            Ok(reply) => {
                self.answer(reply_to.as_ref(), id, &reply).await;
                Outcome::replied
            }
            Err(Failed { error, attempts }) => {
                tracing::warn!(request_id = %id, attempts, %error, "handler failed; dead-lettering");
                self.dead_letter(message, &pairs, &error.message, attempts)
                    .await;
                let detail = format!(
                    "the worker failed after {attempts} attempt(s): {}",
                    error.message
                );
                let reply = Reply::problem(error.status, &detail);
                self.answer(reply_to.as_ref(), id, &reply).await;
                Outcome::dead_lettered
            }
        }
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
    /// expects none.
    async fn answer(&self, reply_to: Option<&ReplyAddress>, id: RequestId, reply: &Reply) {
        if let Some(address) = reply_to {
            self.replier
                .final_reply(address, &reply.final_envelope(id), &reply.body)
                .await;
        }
    }

    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        original_headers: &[(String, Vec<u8>)],
        error: &str,
        attempts: u32,
    ) {
        self.replier
            .dead_letter(&DeadLetter {
                topic: message.topic(),
                partition: message.partition(),
                offset: message.offset(),
                key: message.key(),
                value: message.payload().unwrap_or_default(),
                original_headers,
                error,
                attempts,
            })
            .await;
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
