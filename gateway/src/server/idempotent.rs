//! Publish calls with an `Idempotency-Key`: the key is claimed in the
//! index ([`crate::idempotency`]) before the request is written, and a
//! retry gets the first answer (202, the same body and
//! `osmosis-request-id`) instead of a second record; a key still in flight
//! is 409, the same key with another request 422.

use axum::response::Response;
use http::HeaderMap;
use osmosis_protocol::RequestId;
use osmosis_protocol::headers as contract;

use super::accepted::accepted_response;
use super::state::AppState;
use crate::idempotency::{Begin, IdempotencyError, Scope, fingerprint, parse_key};
use crate::metrics::IdempotencyLabels;
use crate::problem::Problem;
use crate::request_record::{CallHead, RequestRecord};
use crate::route::Route;
use crate::writer::Stored;

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

/// Writes `request` once for every call with `key` within the window.
/// `subject`: the verified caller's subject (keys are scoped per caller).
pub(super) async fn publish_once(
    state: &AppState,
    route: &Route,
    head: &CallHead,
    key: String,
    subject: Option<&str>,
    request: RequestRecord,
) -> Result<Response, Problem> {
    let index = state
        .idempotency
        .as_ref()
        .expect("a key is read only with an index");
    let target = head
        .uri
        .path_and_query()
        .map_or(head.uri.path(), |target| target.as_str());
    let print = fingerprint(head.method.as_str(), target, &request.record.value);
    let scope = Scope::new(&route.label, subject, &key);
    let outcome = |outcome: &'static str| {
        state
            .metrics
            .idempotency
            .get_or_create(&IdempotencyLabels { outcome })
            .inc();
    };
    state
        .limits
        .shed(state.writer.queue_depth(), state.retry_after)?;
    let begun = index
        .begin(scope, print, request.id, &route.channel)
        .await
        .map_err(|error| {
            outcome(match error {
                IdempotencyError::InFlight => "conflict",
                IdempotencyError::Mismatch => "mismatch",
                _ => "unavailable",
            });
            problem(error, state)
        })?;
    let claim = match begun {
        Begin::Replay(answer) => {
            outcome("replayed");
            let id: RequestId = answer.id.parse().map_err(|_| Problem::Unavailable {
                reason: "the idempotency index holds an unreadable request id".into(),
                retry_after: state.retry_after,
            })?;
            let stored = Stored {
                partition: answer.partition,
                offset: answer.offset,
            };
            return Ok(accepted_response(id, &answer.channel, stored, false));
        }
        Begin::Proceed(claim) => claim,
    };
    outcome("new");
    let id = request.id;
    let record = request
        .record
        .with_header(contract::IDEMPOTENCY_KEY, key.as_bytes());
    let written = state.write_outcome(route, id, record).await;
    index
        .finish(claim, &route.channel, written.as_ref().copied())
        .await;
    let stored = written.map_err(|error| state.write_problem(route, error))?;
    Ok(accepted_response(id, &route.channel, stored, false))
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
