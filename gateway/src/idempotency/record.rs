//! The index records of idempotency keys and what they add up to. Pure: a
//! leaf that knows no Kafka client.
//!
//! Every record of one key goes to one partition of the index topic (the
//! record key is the key's scope hash), so every gateway reads them in the
//! same order and folds them to the same [`KeyState`]: the first claim
//! owns the key until it is released or done, the first `done` is the
//! answer for the rest of the window.

use osmosis_protocol::RequestId;
use serde::{Deserialize, Serialize};

/// Where the first request with a key went: what every retry is told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub id: String,
    pub channel: String,
    pub partition: i32,
    pub offset: i64,
}

/// One record of the index topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IndexRecord {
    /// A gateway is about to write request `attempt` for the key.
    Claim {
        attempt: String,
        fingerprint: String,
        at_ms: i64,
    },
    /// Request `attempt` is in Kafka, at `answer`.
    Done {
        attempt: String,
        fingerprint: String,
        answer: Answer,
    },
    /// Request `attempt` is known not to be in Kafka: the key is free.
    Released { attempt: String },
}

/// What the index says about a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyState {
    Free,
    /// A claim with no outcome yet.
    InFlight {
        attempt: String,
        fingerprint: String,
        at_ms: i64,
    },
    /// The key's request is in Kafka.
    Done {
        fingerprint: String,
        answer: Answer,
    },
}

impl KeyState {
    /// The state after `record`.
    pub fn apply(self, record: IndexRecord) -> KeyState {
        match (self, record) {
            (done @ KeyState::Done { .. }, _) => done,
            (
                _,
                IndexRecord::Done {
                    fingerprint,
                    answer,
                    ..
                },
            ) => KeyState::Done {
                fingerprint,
                answer,
            },
            (
                KeyState::Free,
                IndexRecord::Claim {
                    attempt,
                    fingerprint,
                    at_ms,
                },
            ) => KeyState::InFlight {
                attempt,
                fingerprint,
                at_ms,
            },
            (KeyState::InFlight { attempt, .. }, IndexRecord::Released { attempt: released })
                if attempt == released =>
            {
                KeyState::Free
            }
            (state, _) => state,
        }
    }

    /// Whether `attempt` owns the key now.
    pub fn owned_by(&self, id: RequestId) -> bool {
        matches!(self, KeyState::InFlight { attempt, .. } if *attempt == id.to_string())
    }
}

impl IndexRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serializable")
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(attempt: &str) -> IndexRecord {
        IndexRecord::Claim {
            attempt: attempt.into(),
            fingerprint: "f".into(),
            at_ms: 1,
        }
    }

    fn done(attempt: &str, offset: i64) -> IndexRecord {
        IndexRecord::Done {
            attempt: attempt.into(),
            fingerprint: "f".into(),
            answer: Answer {
                id: attempt.into(),
                channel: "c".into(),
                partition: 0,
                offset,
            },
        }
    }

    #[test]
    fn the_first_claim_owns_the_key_until_released() {
        let state = KeyState::Free.apply(claim("a")).apply(claim("b"));
        assert!(matches!(&state, KeyState::InFlight { attempt, .. } if attempt == "a"));
        let state = state.apply(IndexRecord::Released {
            attempt: "b".into(),
        });
        assert!(matches!(&state, KeyState::InFlight { attempt, .. } if attempt == "a"));
        let state = state.apply(IndexRecord::Released {
            attempt: "a".into(),
        });
        assert_eq!(state, KeyState::Free);
        let state = state.apply(claim("b"));
        assert!(matches!(&state, KeyState::InFlight { attempt, .. } if attempt == "b"));
    }

    #[test]
    fn the_first_done_is_the_answer_for_good() {
        let state = KeyState::Free
            .apply(claim("a"))
            .apply(done("a", 7))
            .apply(claim("b"))
            .apply(done("b", 9))
            .apply(IndexRecord::Released {
                attempt: "a".into(),
            });
        assert!(matches!(state, KeyState::Done { answer, .. } if answer.offset == 7));
    }

    #[test]
    fn records_round_trip_and_garbage_is_ignored() {
        let record = done("a", 3);
        assert_eq!(IndexRecord::decode(&record.encode()), Some(record));
        assert_eq!(IndexRecord::decode(b"{not json"), None);
    }
}
