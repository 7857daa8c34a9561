//! Calls with an `Idempotency-Key`, in publish and request mode alike: the
//! key is claimed in the index ([`crate::idempotency`]) before the request
//! is written ([`claim`]), the claimed write records its outcome
//! ([`Claimed::write`]), and a retry is told where the first request went
//! ([`Original`]) instead of writing a second record. A key still in
//! flight is 409, the same key with another request 422.
//!
//! What a retry is answered is its mode's: the first 202 for publish
//! ([`publish_once`], here); the first request's reply, or the wait for it,
//! in request mode ([`super::requests`]).

use axum::response::Response;
use bytes::Bytes;
use http::HeaderMap;
use osmosis_protocol::RequestId;
use osmosis_protocol::headers as contract;

use super::accepted::accepted_response;
use super::state::AppState;
use crate::idempotency::{Begin, Claim, IdempotencyError, Scope, fingerprint, parse_key};
use crate::metrics::IdempotencyLabels;
use crate::problem::Problem;
use crate::request_record::{CallHead, RequestRecord};
use crate::route::Route;
use crate::writer::{OutboundRecord, Stored};

/// The request header.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The client's key, when it sent one (and the gateway keeps an index).
pub(super) fn key_of(state: &AppState, headers: &HeaderMap) -> Result<Option<String>, Problem> {
    if state.idempotency.is_none() {
        return Ok(None);
    }
    let mut values = headers.get_all(IDEMPOTENCY_KEY_HEADER).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return match headers.contains_key(IDEMPOTENCY_KEY_HEADER) {
            true => Err(Problem::BadRequest(
                "send one Idempotency-Key header, not several".into(),
            )),
            false => Ok(None),
        };
    };
    parse_key(value.as_bytes())
        .map(Some)
        .map_err(|error| Problem::BadRequest(error.to_string()))
}

/// What a call with a key does.
pub(super) enum Keyed {
    /// Write the request: this call owns the key.
    Proceed(Claimed),
    /// The key's first request is in Kafka already: answer as for it.
    Replay(Original),
}

/// Where the first request with a key went.
pub(super) struct Original {
    pub id: RequestId,
    pub channel: String,
    pub stored: Stored,
}

/// A key this call owns, until its write's outcome is recorded.
pub(super) struct Claimed {
    claim: Claim,
    key: String,
}

/// Claims `key` for request `id` of a call to `route` with `body`, or
/// says where the key's first request went. `subject`: the verified
/// caller's subject (keys are scoped per caller and route).
pub(super) async fn claim(
    state: &AppState,
    route: &Route,
    head: &CallHead,
    key: String,
    subject: Option<&str>,
    id: RequestId,
    body: &Bytes,
) -> Result<Keyed, Problem> {
    let index = state
        .idempotency
        .as_ref()
        .expect("a key is read only with an index");
    let target = head
        .uri
        .path_and_query()
        .map_or(head.uri.path(), |target| target.as_str());
    let print = fingerprint(head.method.as_str(), target, body);
    let scope = Scope::new(&route.label, subject, &key);
    state
        .limits
        .shed(state.writer.queue_depth(), state.retry_after)?;
    let begun = index
        .begin(scope, print, id, &route.channel)
        .await
        .map_err(|error| {
            count(
                state,
                match error {
                    IdempotencyError::InFlight => "conflict",
                    IdempotencyError::Mismatch => "mismatch",
                    _ => "unavailable",
                },
            );
            problem(error, state)
        })?;
    match begun {
        Begin::Replay(answer) => {
            count(state, "replayed");
            let id = answer.id.parse().map_err(|_| Problem::Unavailable {
                reason: "the idempotency index holds an unreadable request id".into(),
                retry_after: state.retry_after,
            })?;
            Ok(Keyed::Replay(Original {
                id,
                channel: answer.channel,
                stored: Stored {
                    partition: answer.partition,
                    offset: answer.offset,
                },
            }))
        }
        Begin::Proceed(claim) => {
            count(state, "new");
            Ok(Keyed::Proceed(Claimed { claim, key }))
        }
    }
}

impl Claimed {
    /// Writes the claimed request (carrying the client's key) and records
    /// the outcome in the index, whatever it is.
    pub(super) async fn write(
        self,
        state: &AppState,
        route: &Route,
        id: RequestId,
        record: OutboundRecord,
    ) -> Result<Stored, Problem> {
        let record = record.with_header(contract::IDEMPOTENCY_KEY, self.key.as_bytes());
        let written = state.write_outcome(route, id, record).await;
        if let Some(index) = &state.idempotency {
            index
                .finish(self.claim, &route.channel, written.as_ref().copied())
                .await;
        }
        written.map_err(|error| state.write_problem(route, error))
    }
}

/// Writes a publish call's `request` once for every call with `key`
/// within the window; a retry gets the first 202, byte for byte.
pub(super) async fn publish_once(
    state: &AppState,
    route: &Route,
    head: &CallHead,
    key: String,
    subject: Option<&str>,
    request: RequestRecord,
) -> Result<Response, Problem> {
    let RequestRecord { id, record } = request;
    match claim(state, route, head, key, subject, id, &record.value).await? {
        Keyed::Replay(original) => Ok(accepted_response(
            original.id,
            &original.channel,
            original.stored,
            false,
        )),
        Keyed::Proceed(claimed) => {
            let stored = claimed.write(state, route, id, record).await?;
            Ok(accepted_response(id, &route.channel, stored, false))
        }
    }
}

fn count(state: &AppState, outcome: &'static str) {
    state
        .metrics
        .idempotency
        .get_or_create(&IdempotencyLabels { outcome })
        .inc();
}

fn problem(error: IdempotencyError, state: &AppState) -> Problem {
    match error {
        IdempotencyError::BadKey => Problem::BadRequest(error.to_string()),
        IdempotencyError::InFlight => Problem::Conflict(error.to_string()),
        IdempotencyError::Mismatch => Problem::Unprocessable(error.to_string()),
        IdempotencyError::Unavailable(_) => Problem::Unavailable {
            reason: error.to_string(),
            retry_after: state.retry_after,
        },
    }
}
