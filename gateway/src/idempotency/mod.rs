//! `Idempotency-Key` (IETF httpapi draft): a retried call with the same
//! key, within the window, is not written twice and gets the first
//! answer — on any gateway instance, also after a 503 whose write may
//! have landed.
//!
//! # Where the keys live, and for how long
//! In Kafka. A key is scoped by route, caller subject and the client's
//! key, hashed ([`Scope`]). Before a request record is written, a `claim`
//! naming the request's id goes to the index topic (`idempotency.topic`,
//! record key = the scope hash, so one key's records share a partition and
//! an order); after Kafka acknowledged the request, a `done` naming its
//! place; when the write certainly failed, a `released`. The request record
//! itself carries the client's key (`osmosis-idempotency-key`). Every
//! gateway reads the whole index from `window_secs` ago on and folds it in
//! memory ([`record::KeyState`], at most `max_keys`, each kept for the
//! window), so all of them agree: the first claim owns a key, the first
//! `done` is its answer. A claim left without an outcome for longer than
//! twice the produce timeout (a timed-out produce, a gateway that died) is
//! settled by reading the channel around the claim's time ([`lookback`]):
//! found, it becomes `done`; not found, `released`. The index topic should
//! keep records at least for the window (`retention.ms`); older records
//! are not read.
//!
//! # Layout
//! - [`record`]: the index records and their fold (pure).
//! - [`lookback`]: finding a request in its channel by time.
//! - this file: the [`Idempotency`] handlers consult, and the index reader.

pub mod lookback;
pub mod record;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use moka::sync::Cache;
use osmosis_protocol::RequestId;
use osmosis_protocol::clock::unix_ms;
use osmosis_support::kafka::ClientSettings;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::message::OwnedHeaders;
use rdkafka::{Offset, TopicPartitionList};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::config::{IdempotencyConfig, KafkaConfig};
use crate::writer::{OutboundRecord, RecordWriter, Stored, WriteError};
use record::{Answer, IndexRecord, KeyState};

/// Longest an `Idempotency-Key` may be.
pub const MAX_KEY_BYTES: usize = 255;

/// Why a call with a key is not served.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    #[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
    BadKey,
    #[error("a request with this Idempotency-Key is still being served; retry later")]
    InFlight,
    #[error("this Idempotency-Key was used for a different request")]
    Mismatch,
    #[error("the idempotency index cannot be read or written now: {0}")]
    Unavailable(String),
}

/// A key as the index knows it: route, caller and the client's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope(String);

impl Scope {
    /// `subject`: the verified caller's subject, `None` for an anonymous
    /// call; two callers' equal keys never meet.
    pub fn new(route: &str, subject: Option<&str>, key: &str) -> Self {
        let mut hash = Sha256::new();
        for part in [route, subject.unwrap_or(""), key] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        Self(hex::encode(hash.finalize()))
    }
}

/// The client's `Idempotency-Key`: a structured-field string
/// (`"abc"`) or, leniently, the bare token.
pub fn parse_key(value: &[u8]) -> Result<String, IdempotencyError> {
    let text = std::str::from_utf8(value).map_err(|_| IdempotencyError::BadKey)?;
    let text = text.trim();
    let key = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(quoted) => quoted,
        None => text,
    };
    let visible = key.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"');
    if key.is_empty() || key.len() > MAX_KEY_BYTES || !visible {
        return Err(IdempotencyError::BadKey);
    }
    Ok(key.to_owned())
}

/// What makes two calls "the same request": method, target and body.
pub fn fingerprint(method: &str, target: &str, body: &Bytes) -> String {
    let mut hash = Sha256::new();
    for part in [method.as_bytes(), target.as_bytes(), body.as_ref()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hex::encode(hash.finalize())
}

/// What a call with a key does.
#[derive(Debug)]
pub enum Begin {
    /// Write the request: this call owns the key.
    Proceed(Claim),
    /// The key's request is in Kafka already: answer as the first time.
    Replay(Answer),
}

/// A key this call owns; [`Idempotency::finish`] records the outcome.
#[derive(Debug)]
pub struct Claim {
    scope: Scope,
    attempt: RequestId,
    fingerprint: String,
}

/// The index of idempotency keys and its reader.
pub struct Idempotency {
    /// The index topic, shared by every record written to it.
    topic: Arc<str>,
    /// Folded index, by scope hash, for the window.
    keys: Cache<String, KeyState>,
    /// Next offset to apply, per index partition.
    applied: Mutex<HashMap<i32, i64>>,
    /// Woken on every applied record.
    progress: Notify,
    writer: Arc<dyn RecordWriter>,
    client_config: ClientConfig,
    metadata_timeout: Duration,
    /// A claim older than this without an outcome is settled by lookback.
    stale_after: Duration,
}

impl Idempotency {
    /// Reads the index from `window` ago up to its current end, then keeps
    /// following it.
    pub async fn start(
        config: &IdempotencyConfig,
        kafka: &KafkaConfig,
        writer: Arc<dyn RecordWriter>,
    ) -> Result<Arc<Self>, KafkaError> {
        let client_config = ClientSettings::new(&kafka.brokers)
            .user(&kafka.properties)
            .fixed(&[
                ("group.id", "osmosis-gateway-idempotency"),
                ("enable.auto.commit", "false"),
                ("auto.offset.reset", "earliest"),
                ("fetch.wait.max.ms", "10"),
            ])
            .build();
        let window = Duration::from_secs(config.window_secs);
        let index = Arc::new(Self {
            topic: Arc::from(config.topic.as_str()),
            keys: Cache::builder()
                .max_capacity(config.max_keys)
                .time_to_live(window)
                .build(),
            applied: Mutex::default(),
            progress: Notify::new(),
            writer,
            client_config: client_config.clone(),
            metadata_timeout: kafka.metadata_timeout(),
            stale_after: kafka.produce_timeout() * 2 + Duration::from_secs(1),
        });
        let (topic, timeout) = (config.topic.clone(), kafka.metadata_timeout());
        let since = unix_ms(SystemTime::now() - window) as i64;
        let (consumer, ends) = tokio::task::spawn_blocking(move || {
            assign_since(&client_config, &topic, since, timeout)
        })
        .await
        .expect("index assignment panicked")?;
        tokio::spawn(read_index(Arc::clone(&index), consumer));
        // Serve only once every key of the window is known here.
        for (partition, end) in ends {
            if end > 0 {
                let caught_up = index.applied_through(partition, end - 1, Duration::from_secs(60));
                if !caught_up.await {
                    tracing::warn!(
                        partition,
                        "the idempotency index is not read to its end yet"
                    );
                }
            }
        }
        tracing::info!(topic = %config.topic, "idempotency index read");
        Ok(index)
    }

    /// Decides what a call with `scope` does: replay the first answer,
    /// refuse (in flight, another body), or write its request as
    /// `attempt` — then it owns the key until [`Self::finish`].
    pub async fn begin(
        &self,
        scope: Scope,
        fingerprint: String,
        attempt: RequestId,
        channel: &str,
    ) -> Result<Begin, IdempotencyError> {
        match self.state(&scope) {
            KeyState::Done {
                fingerprint: first,
                answer,
            } => return replay(first, fingerprint, answer),
            KeyState::InFlight {
                fingerprint: first, ..
            } if first != fingerprint => return Err(IdempotencyError::Mismatch),
            KeyState::InFlight { attempt, at_ms, .. } => {
                self.settle(&scope, &attempt, at_ms, &fingerprint, channel)
                    .await?;
                if let KeyState::Done {
                    fingerprint: first,
                    answer,
                } = self.state(&scope)
                {
                    return replay(first, fingerprint, answer);
                }
                if self.state(&scope) != KeyState::Free {
                    return Err(IdempotencyError::InFlight);
                }
            }
            KeyState::Free => {}
        }
        let claim = IndexRecord::Claim {
            attempt: attempt.to_string(),
            fingerprint: fingerprint.clone(),
            at_ms: unix_ms(SystemTime::now()) as i64,
        };
        self.append(&scope, &claim).await?;
        match self.state(&scope) {
            state if state.owned_by(attempt) => Ok(Begin::Proceed(Claim {
                scope,
                attempt,
                fingerprint,
            })),
            KeyState::Done {
                fingerprint: first,
                answer,
            } => replay(first, fingerprint, answer),
            KeyState::InFlight {
                fingerprint: first, ..
            } if first != fingerprint => Err(IdempotencyError::Mismatch),
            _ => Err(IdempotencyError::InFlight),
        }
    }

    /// Records the outcome of a claimed write: `done` with where Kafka
    /// stored it, `released` when it certainly is not stored; nothing when
    /// it may have landed (a retry settles that by lookback). Best effort:
    /// an outcome not recorded is settled the same way.
    pub async fn finish(&self, claim: Claim, channel: &str, outcome: Result<Stored, &WriteError>) {
        let attempt = claim.attempt.to_string();
        let record = match outcome {
            Ok(stored) => IndexRecord::Done {
                attempt: attempt.clone(),
                fingerprint: claim.fingerprint,
                answer: Answer {
                    id: attempt,
                    channel: channel.to_owned(),
                    partition: stored.partition,
                    offset: stored.offset,
                },
            },
            Err(WriteError::QueueFull | WriteError::TooLarge) => IndexRecord::Released { attempt },
            Err(WriteError::NotAcknowledged(_) | WriteError::Closed) => return,
        };
        if let Err(error) = self.append(&claim.scope, &record).await {
            tracing::warn!(%error, "idempotency outcome not recorded; a retry will look it up");
        }
    }

    /// Settles a claim left without an outcome once it is stale: the
    /// channel says whether its request landed.
    async fn settle(
        &self,
        scope: &Scope,
        attempt: &str,
        at_ms: i64,
        fingerprint: &str,
        channel: &str,
    ) -> Result<(), IdempotencyError> {
        let age = unix_ms(SystemTime::now()) as i64 - at_ms;
        if age < self.stale_after.as_millis() as i64 {
            return Err(IdempotencyError::InFlight);
        }
        let (config, topic, id, timeout) = (
            self.client_config.clone(),
            channel.to_owned(),
            attempt.to_owned(),
            self.metadata_timeout,
        );
        let margin = 5_000;
        let to_ms = at_ms + self.stale_after.as_millis() as i64 + margin;
        let found = tokio::task::spawn_blocking(move || {
            lookback::find(&config, &topic, &id, at_ms - margin, to_ms, timeout)
        })
        .await
        .expect("lookback panicked")
        .map_err(|error| IdempotencyError::Unavailable(error.to_string()))?;
        let record = match found {
            Some(stored) => IndexRecord::Done {
                attempt: attempt.to_owned(),
                fingerprint: fingerprint.to_owned(),
                answer: Answer {
                    id: attempt.to_owned(),
                    channel: channel.to_owned(),
                    partition: stored.partition,
                    offset: stored.offset,
                },
            },
            None => IndexRecord::Released {
                attempt: attempt.to_owned(),
            },
        };
        tracing::info!(
            attempt,
            landed = found.is_some(),
            "settled an idempotency claim left open"
        );
        self.append(scope, &record).await
    }

    fn state(&self, scope: &Scope) -> KeyState {
        self.keys.get(&scope.0).unwrap_or(KeyState::Free)
    }

    /// Writes `record` to the index and waits until this gateway's reader
    /// applied it, so that the state read next includes it.
    async fn append(&self, scope: &Scope, record: &IndexRecord) -> Result<(), IdempotencyError> {
        let stored = self
            .writer
            .write(OutboundRecord {
                topic: Arc::clone(&self.topic),
                partition: None,
                key: Some(scope.0.clone().into_bytes()),
                value: Bytes::from(record.encode()),
                headers: OwnedHeaders::default(),
            })
            .await
            .map_err(|error| IdempotencyError::Unavailable(error.to_string()))?;
        if self
            .applied_through(stored.partition, stored.offset, self.metadata_timeout * 2)
            .await
        {
            Ok(())
        } else {
            Err(IdempotencyError::Unavailable(
                "the index reader is behind".into(),
            ))
        }
    }

    /// Whether `offset` of `partition` is applied within `timeout`.
    async fn applied_through(&self, partition: i32, offset: i64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let progressed = self.progress.notified();
            if self
                .applied
                .lock()
                .unwrap()
                .get(&partition)
                .is_some_and(|next| *next > offset)
            {
                return true;
            }
            if tokio::time::timeout_at(deadline, progressed).await.is_err() {
                return false;
            }
        }
    }

    fn apply(&self, partition: i32, offset: i64, key: Option<&[u8]>, value: Option<&[u8]>) {
        if let (Some(key), Some(record)) = (key, value.and_then(IndexRecord::decode))
            && let Ok(key) = std::str::from_utf8(key)
        {
            let state = self.keys.get(key).unwrap_or(KeyState::Free).apply(record);
            self.keys.insert(key.to_owned(), state);
        }
        self.applied.lock().unwrap().insert(partition, offset + 1);
        self.progress.notify_waiters();
    }
}

fn replay(first: String, fingerprint: String, answer: Answer) -> Result<Begin, IdempotencyError> {
    if first == fingerprint {
        Ok(Begin::Replay(answer))
    } else {
        Err(IdempotencyError::Mismatch)
    }
}

/// A consumer of every index partition from the first record since
/// `since_ms`, and each partition's end now.
fn assign_since(
    client_config: &ClientConfig,
    topic: &str,
    since_ms: i64,
    timeout: Duration,
) -> Result<(StreamConsumer, Vec<(i32, i64)>), KafkaError> {
    let probe: BaseConsumer = client_config.create()?;
    let metadata = probe.fetch_metadata(Some(topic), timeout)?;
    let mut query = TopicPartitionList::new();
    let mut ends = Vec::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for partition in t.partitions() {
            query.add_partition_offset(topic, partition.id(), Offset::Offset(since_ms))?;
            let (_, high) = probe.fetch_watermarks(topic, partition.id(), timeout)?;
            ends.push((partition.id(), high));
        }
    }
    let found = probe.offsets_for_times(query, timeout)?;
    let mut assignment = TopicPartitionList::new();
    for (partition, high) in &ends {
        let start = match found.find_partition(topic, *partition).map(|e| e.offset()) {
            Some(Offset::Offset(offset)) => offset,
            _ => *high,
        };
        assignment.add_partition_offset(topic, *partition, Offset::Offset(start))?;
    }
    let consumer: StreamConsumer = client_config.create()?;
    consumer.assign(&assignment)?;
    Ok((consumer, ends))
}

/// Applies every index record, in order, for as long as the gateway runs.
async fn read_index(index: Arc<Idempotency>, consumer: StreamConsumer) {
    loop {
        match consumer.recv().await {
            Ok(message) => index.apply(
                message.partition(),
                message.offset(),
                message.key(),
                message.payload(),
            ),
            Err(error) => tracing::warn!(%error, "idempotency index read error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_structured_strings_or_bare_tokens_within_bounds() {
        assert_eq!(parse_key(b"\"8e03978e\"").unwrap(), "8e03978e");
        assert_eq!(parse_key(b"abc-1").unwrap(), "abc-1");
        for bad in [&b""[..], b"\"\"", &[b'a'; 256], b"a\x01b", b"\xff"] {
            assert!(parse_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scopes_separate_routes_and_callers() {
        let a = Scope::new("create", Some("alice"), "k");
        assert_eq!(a, Scope::new("create", Some("alice"), "k"));
        assert_ne!(a, Scope::new("create", Some("bob"), "k"));
        assert_ne!(a, Scope::new("update", Some("alice"), "k"));
        assert_ne!(a, Scope::new("create", None, "k"));
    }
}
