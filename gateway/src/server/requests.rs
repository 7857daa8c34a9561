//! Where a reply reaches the client: request mode (write the request, then
//! wait for its reply as long as the client prefers, or stream its events)
//! and `GET /v1/requests/{id}` (the reply once there, 202 while pending, or
//! the remaining events as a stream — on any instance).

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use osmosis_protocol::{EventKind, RequestId};

use super::accepted::{Accepted, REQUEST_ID_HEADER, accepted_response, id_header};
use super::cors;
use super::idempotent::{self, Keyed, Original};
use super::prefer::Preference;
use super::state::AppState;
use crate::auth::{BrowserToken, Identity};
use crate::config::Config;
use crate::problem::Problem;
use crate::replies::{Lookup, Owner, ReplyEvent, ReplyHub, Waiting};
use crate::request_record::{CallHead, RequestRecord};
use crate::route::Route;
use crate::sse::{self, OpenStream, StreamKind};

pub(super) fn routes(config: &Config) -> Router<Arc<AppState>> {
    let status = get(request_status);
    let status = match cors::for_requests(&config.routes) {
        Some(cors) => status.options(cors::preflight).layer(cors),
        None => status,
    };
    Router::new().route("/v1/requests/{id}", status)
}

/// Request mode: write the request, then its `accepted` marker while
/// waiting for the reply as long as the client prefers, or stream its
/// events.
/// The reply is `caller`'s: only that caller reads it later. With an
/// idempotency `key`, a retry writes nothing and is answered as for the
/// key's first request ([`answer_again`]).
pub(super) async fn send_and_wait(
    state: &AppState,
    route: &Route,
    head: &CallHead,
    body: Bytes,
    caller: Option<&Identity>,
    key: Option<String>,
) -> Result<Response, Problem> {
    let hub = state
        .replies
        .clone()
        .expect("the reply hub runs whenever a route is in request mode");
    let Some(reply_to) = hub.next_address() else {
        return Err(Problem::Unavailable {
            reason: "this gateway owns no reply partition yet (more gateways than reply partitions, or a rebalance in progress)".into(),
            retry_after: state.retry_after,
        });
    };
    let request = RequestRecord::build(
        route,
        head,
        body,
        caller.map(Identity::caller),
        Some(reply_to.clone()),
    )?;
    let id = request.id;
    let open = if sse::wants_event_stream(&head.headers) {
        Some(state.streams.open(StreamKind::Request, state.retry_after)?)
    } else {
        None
    };
    // Registered before the write, so that no reply can arrive unseen; the
    // request stops waiting here when `waiting` is dropped (reply sent,
    // client gone, or the write failed) unless it is kept for polls.
    let owner = match caller {
        Some(caller) => Owner::Subject(caller.subject.clone()),
        None => Owner::Anonymous,
    };
    state
        .limits
        .admit_waiting(hub.waiting_count(), state.retry_after)?;
    let claimed = match key {
        None => None,
        Some(key) => {
            let subject = caller.map(|caller| caller.subject.as_str());
            let value = &request.record.value;
            match idempotent::claim(state, route, head, key, subject, id, value).await? {
                Keyed::Proceed(claimed) => Some(claimed),
                Keyed::Replay(original) => {
                    return answer_again(state, &hub, route, head, original, open).await;
                }
            }
        }
    };
    let mut waiting = hub.wait_for(id, owner);
    let stored = match claimed {
        Some(claimed) => claimed.write(state, route, id, request.record).await?,
        None => state.write(route, id, request.record).await?,
    };
    let accepted_json = Accepted::new(id, &route.channel, stored, false).to_json();
    let marking = hub.mark_accepted(
        id,
        &reply_to,
        accepted_json.clone(),
        caller.map(|caller| caller.subject.as_str()),
    );
    if let Some(open) = open {
        let marker_offset = marking.await;
        return Ok(sse::own_request_stream(
            &state.streams,
            open,
            sse::accepted_frame(marker_offset, &accepted_json),
            waiting,
        ));
    }
    let preference = Preference::parse(&head.headers, route.timeout, route.max_wait);
    let wait = within_wait(state, &preference, final_reply(&mut waiting));
    // The marker is written while the worker works, off the round trip's
    // critical path; the client still hears nothing before it is written,
    // so any instance answers for the id once the client knows it.
    let (_, reply) = tokio::join!(marking, wait);
    Ok(match reply {
        Some(reply) => reply_response(&reply),
        None => {
            // The client polls `Location`: answer "pending" from memory.
            waiting.keep_until_replied();
            accepted_response(id, &route.channel, stored, true)
        }
    })
}

/// A retry of a request-mode call with an idempotency key: the first
/// request's reply when it is known (here or in Kafka), else the wait for
/// it as the first call would have waited (on any instance), then 202 +
/// `Location` of the first request; as a stream, the first request's
/// events.
async fn answer_again(
    state: &AppState,
    hub: &ReplyHub,
    route: &Route,
    head: &CallHead,
    original: Original,
    open: Option<OpenStream>,
) -> Result<Response, Problem> {
    let id = original.id;
    if let Some(open) = open {
        let events = hub.follow(id, None, state.streams.request_stream_limit);
        return Ok(sse::followed_request_stream(&state.streams, open, events));
    }
    match hub.find(id, false).await {
        Ok(Lookup::Replied(reply, _)) => return Ok(reply_response(&reply)),
        Ok(Lookup::Pending(_) | Lookup::Unknown) => {}
        // The follow below reads the same partition without the bounds.
        Err(error) => {
            tracing::debug!(request_id = %id, %error, "the first request's reply not looked up; following it")
        }
    }
    let preference = Preference::parse(&head.headers, route.timeout, route.max_wait);
    let mut awaiting = hub.await_events(id, preference.wait);
    Ok(
        match within_wait(state, &preference, awaiting.final_reply()).await {
            Some(reply) => reply_response(&reply),
            None => accepted_response(id, &original.channel, original.stored, true),
        },
    )
}

/// The final `reply`, if it comes within the client's preferred wait: none
/// with `respond-async`, none once the gateway's grace period ends (the
/// reply is then polled elsewhere).
async fn within_wait(
    state: &AppState,
    preference: &Preference,
    reply: impl Future<Output = Option<Arc<ReplyEvent>>>,
) -> Option<Arc<ReplyEvent>> {
    if preference.respond_async {
        return None;
    }
    tokio::select! {
        reply = tokio::time::timeout(preference.wait, reply) => reply.ok().flatten(),
        () = state.grace_ending.cancelled() => None,
    }
}

/// The final reply of a request waiting here.
async fn final_reply(waiting: &mut Waiting) -> Option<Arc<ReplyEvent>> {
    while let Some(event) = waiting.next().await {
        if event.envelope.kind == EventKind::Final {
            return Some(event);
        }
    }
    None
}

/// The worker's reply as the client's response.
fn reply_response(event: &ReplyEvent) -> Response {
    let envelope = &event.envelope;
    let status = StatusCode::from_u16(envelope.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, event.body.clone()).into_response();
    let headers = response.headers_mut();
    for (name, value) in &envelope.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    if let Some(content_type) = envelope
        .content_type
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert(header::CONTENT_TYPE, content_type);
    }
    headers.insert(REQUEST_ID_HEADER, id_header(envelope.id));
    response
}

/// Query of `GET /v1/requests/{id}`.
#[derive(serde::Deserialize)]
struct StatusQuery {
    /// A browser's `EventSource` cannot set `Authorization`: its token.
    access_token: Option<String>,
}

/// `GET /v1/requests/{id}`: the reply once there, 202 while pending, 404
/// for ids nobody knows (or whose reply is gone with retention) — and for
/// requests the caller did not send, so that existence does not leak.
async fn request_status(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<StatusQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (Path(id), Query(query)) = (id?, query?);
    let id: RequestId = id
        .parse()
        .map_err(|_| Problem::BadRequest(format!("{id:?} is not a request id")))?;
    let reader = state
        .identify(
            &headers,
            Some(BrowserToken {
                query: query.access_token.as_deref(),
            }),
        )
        .await?;
    let Some(hub) = &state.replies else {
        return Err(Problem::UnknownRequest(id.to_string()));
    };
    let reader = reader.as_deref();
    let may_read = |owner: &Owner| state.may_read(owner, reader);
    if sse::wants_event_stream(&headers) {
        return stream_events(&state, hub, id, &headers, reader).await;
    }
    match hub.find(id, state.auth.is_some()).await {
        Ok(Lookup::Replied(event, owner)) if may_read(&owner) => Ok(reply_response(&event)),
        Ok(Lookup::Pending(owner)) if may_read(&owner) => {
            let mut response = (
                StatusCode::ACCEPTED,
                Json(serde_json::json!({ "id": id.to_string(), "status": "pending" })),
            )
                .into_response();
            response
                .headers_mut()
                .insert(REQUEST_ID_HEADER, id_header(id));
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Ok(response)
        }
        Ok(Lookup::Replied(..) | Lookup::Pending(_) | Lookup::Unknown) => {
            Err(Problem::UnknownRequest(id.to_string()))
        }
        Err(error) => Err(Problem::Unavailable {
            reason: error.to_string(),
            retry_after: state.retry_after,
        }),
    }
}

/// The remaining events of `id` as a stream, after `Last-Event-ID` when
/// the client resumes.
async fn stream_events(
    state: &AppState,
    hub: &ReplyHub,
    id: RequestId,
    headers: &HeaderMap,
    reader: Option<&Identity>,
) -> Result<Response, Problem> {
    let after = sse::last_event_id(headers)
        .map(|last| {
            last.trim()
                .parse::<i64>()
                .ok()
                .filter(|offset| (0..i64::MAX).contains(offset))
                .ok_or_else(|| {
                    Problem::BadRequest(format!(
                        "Last-Event-ID {last:?} is not an event id of this request"
                    ))
                })
        })
        .transpose()?;
    // A resume too: an id nobody knows (or someone else's) is a 404, not
    // a stream that waits.
    match hub.find(id, state.auth.is_some()).await {
        Ok(Lookup::Replied(_, owner) | Lookup::Pending(owner))
            if state.may_read(&owner, reader) => {}
        Ok(_) => return Err(Problem::UnknownRequest(id.to_string())),
        // Without authentication nothing is to check: the stream itself
        // finds the events.
        Err(_) if state.auth.is_none() => {}
        Err(error) => {
            return Err(Problem::Unavailable {
                reason: error.to_string(),
                retry_after: state.retry_after,
            });
        }
    }
    let open = state.streams.open(StreamKind::Request, state.retry_after)?;
    let events = hub.follow(id, after, state.streams.request_stream_limit);
    Ok(sse::followed_request_stream(&state.streams, open, events))
}
