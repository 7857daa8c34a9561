//! The HTTP side: the router built from the configured routes, the publish
//! handler, the gateway's own endpoints and the request metrics middleware.
//!
//! It owns turning an HTTP request into a [`ChannelRecord`] (body limits,
//! routing keys, header allow-list, trace context) and turning the outcome
//! into a response. It does not talk to Kafka itself: that is the
//! [`ChannelWriter`]'s job.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, get};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use osmosis_protocol::{
    EventKind, ReplyAddress, ReplyEnvelope, RequestEnvelope, RequestId, headers as contract,
};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::channel::{ChannelRecord, ChannelWriter, Stored, WriteError, owned_headers};
use crate::config::{Config, KeySource, Mode, RouteConfig, SseConfig};
use crate::metrics::{ChannelLabels, Metrics, RequestLabels, RouteLabels};
use crate::problem::Problem;
use crate::replies::{Lookup, ReplyEvent, ReplyHub, unix_ms_after};
use crate::sse::{self, ChannelStream, RecordFormat, StreamKind, Streams};
use crate::subscriptions::{Positions, StartAt, SubscriptionError, Subscriptions};

/// Response header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "osmosis-request-id";

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// Where accepted requests go.
    pub writer: Arc<dyn ChannelWriter>,
    /// Counters and histograms served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Cancelled when shutdown begins: new requests get 503 instead of
    /// being accepted by a process that is about to exit, and open event
    /// streams end with a final event.
    pub shutdown: CancellationToken,
    /// How long a 503 tells clients to wait when Kafka cannot take a write.
    pub retry_after: Duration,
    /// The reply side; `None` when no route waits for replies.
    pub replies: Option<Arc<ReplyHub>>,
    /// Live feeds of subscribable channels; `None` when there are none.
    pub subscriptions: Option<Arc<Subscriptions>>,
    /// Channels clients may subscribe to.
    pub subscribable: Arc<HashSet<String>>,
    /// Settings and shared state of event streams.
    pub streams: Streams,
}

impl AppState {
    pub fn new(writer: Arc<dyn ChannelWriter>, retry_after: Duration, sse: &SseConfig) -> Self {
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        Self {
            writer,
            streams: Streams {
                keep_alive: Duration::from_millis(sse.keep_alive_ms),
                retry: Duration::from_millis(sse.retry_ms),
                request_stream_limit: Duration::from_millis(sse.request_stream_ms),
                permits: Arc::new(tokio::sync::Semaphore::new(sse.max_connections)),
                shutdown: shutdown.clone(),
                metrics: Arc::clone(&metrics),
            },
            metrics,
            shutdown,
            retry_after,
            replies: None,
            subscriptions: None,
            subscribable: Arc::default(),
        }
    }
}

/// A configured route, prepared for the request path.
struct Route {
    label: String,
    channel: String,
    mode: Mode,
    key: Option<KeySource>,
    max_body_bytes: usize,
    forward_headers: Vec<HeaderName>,
    timeout: Duration,
    max_wait: Duration,
    deadline: Option<Duration>,
}

impl From<&RouteConfig> for Route {
    fn from(config: &RouteConfig) -> Self {
        Self {
            label: config.label(),
            channel: config.channel.clone(),
            mode: config.mode,
            key: match &config.key {
                Some(KeySource::Header(name)) => Some(KeySource::Header(name.to_ascii_lowercase())),
                other => other.clone(),
            },
            max_body_bytes: config.max_body_bytes,
            forward_headers: config
                .forward_headers
                .iter()
                .map(|name| {
                    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                        .expect("validated with the configuration")
                })
                .collect(),
            timeout: Duration::from_millis(config.timeout_ms),
            max_wait: Duration::from_millis(config.max_wait_ms),
            deadline: config.deadline_ms.map(Duration::from_millis),
        }
    }
}

/// The whole HTTP application: configured routes plus `/healthz`, `/readyz`
/// and `/metrics`, with problem+json for unknown paths and methods.
pub fn app(config: &Config, state: AppState) -> Router {
    // Handlers share one state: extracting it is one reference count.
    let state = Arc::new(state);
    // Routes sharing a path pattern share one MethodRouter, so that a wrong
    // method on a known path is a 405 rather than a 404.
    let mut by_path: BTreeMap<&str, MethodRouter<Arc<AppState>>> = BTreeMap::new();
    for route_config in &config.routes {
        let route = Arc::new(Route::from(route_config));
        let method = Method::from_bytes(route_config.method.to_ascii_uppercase().as_bytes())
            .expect("validated with the configuration");
        let filter = MethodFilter::try_from(method).expect("standard HTTP method");
        let handler = move |state: State<Arc<AppState>>,
                            params: Option<Path<HashMap<String, String>>>,
                            method: Method,
                            uri: Uri,
                            headers: HeaderMap,
                            body: Body| {
            let route = Arc::clone(&route);
            async move {
                let params = params.map(|Path(p)| p).unwrap_or_default();
                accept(state, route, params, method, uri, headers, body).await
            }
        };
        let entry = by_path
            .remove(route_config.path.as_str())
            .unwrap_or_default();
        by_path.insert(&route_config.path, entry.on(filter, handler));
    }
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/requests/{id}", get(request_status))
        .route("/v1/channels/{name}", get(subscribe_channel));
    for (path, method_router) in by_path {
        router = router.route(path, method_router);
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), track_request))
        .with_state(state)
}

/// The body of a 202: where the request is, and whether a reply is pending.
#[derive(Serialize)]
struct Accepted<'a> {
    id: String,
    channel: &'a str,
    partition: i32,
    offset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
}

async fn accept(
    State(state): State<Arc<AppState>>,
    route: Arc<Route>,
    params: HashMap<String, String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    if state.shutdown.is_cancelled() {
        return Err(Problem::ShuttingDown);
    }
    let body = read_body(&headers, body, route.max_body_bytes).await?;
    let key = routing_key(&route, &params, &headers, &body)?;
    let replies = match route.mode {
        Mode::Publish => None,
        Mode::Request => Some(
            state
                .replies
                .clone()
                .expect("the reply hub runs whenever a route is in request mode"),
        ),
    };
    let reply_to = replies.as_ref().map(|hub| ReplyAddress {
        topic: hub.topic().to_owned(),
        partition: hub.next_partition(),
    });
    let id = RequestId::new(reply_to.as_ref().map(|address| address.partition));
    let envelope = RequestEnvelope {
        id,
        route: route.label.clone(),
        method: method.as_str().to_owned(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        traceparent: continue_trace(headers.get(contract::TRACEPARENT)),
        forwarded: forwarded_headers(&route.forward_headers, &headers),
        reply_to: reply_to.clone(),
        deadline_ms: route.deadline.map(unix_ms_after),
    };
    let record = ChannelRecord {
        topic: route.channel.clone(),
        partition: None,
        key,
        value: body,
        headers: owned_headers(envelope.to_headers()),
    };
    match (replies, reply_to) {
        (Some(hub), Some(reply_to)) => {
            let preference = Preference::parse(&headers, route.timeout, route.max_wait);
            let stream = sse::wants_event_stream(&headers);
            request(
                &state, &route, &hub, id, reply_to, record, preference, stream,
            )
            .await
        }
        _ => {
            let stored = write(&state, &route, id, record).await?;
            Ok(accepted_response(id, &route.channel, stored, false))
        }
    }
}

/// What the client asked for with `Prefer` (RFC 7240).
struct Preference {
    /// Answer 202 as soon as the request is in its channel.
    respond_async: bool,
    /// How long to wait for the reply.
    wait: Duration,
}

impl Preference {
    fn parse(headers: &HeaderMap, default_wait: Duration, max_wait: Duration) -> Self {
        let mut preference = Self {
            respond_async: false,
            wait: default_wait,
        };
        let tokens = headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .map(str::trim);
        for token in tokens {
            if token.eq_ignore_ascii_case("respond-async") {
                preference.respond_async = true;
            } else if let Some(seconds) = token
                .split_once('=')
                .filter(|(name, _)| name.trim().eq_ignore_ascii_case("wait"))
                .and_then(|(_, value)| value.trim().parse::<f64>().ok())
                .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
            {
                preference.wait = Duration::from_secs_f64(seconds).min(max_wait);
            }
        }
        preference
    }
}

/// Request mode: write the request, then its `accepted` event, then wait
/// for the reply as long as the client prefers, or stream its events.
#[allow(clippy::too_many_arguments)] // one request's parts, from one call site
async fn request(
    state: &AppState,
    route: &Route,
    hub: &Arc<ReplyHub>,
    id: RequestId,
    reply_to: ReplyAddress,
    record: ChannelRecord,
    preference: Preference,
    stream: bool,
) -> Result<Response, Problem> {
    let open = if stream {
        Some(state.streams.open(StreamKind::Request, state.retry_after)?)
    } else {
        None
    };
    let mut events = hub.wait_for(id);
    let stored = write(state, route, id, record)
        .await
        .inspect_err(|_| hub.forget(&id))?;
    let accepted = Accepted {
        id: id.to_string(),
        channel: &route.channel,
        partition: stored.partition,
        offset: stored.offset,
        status: None,
    };
    let accepted_json = serde_json::to_string(&accepted).expect("serializable");
    // The `accepted` event lets any instance answer "pending" for this id and
    // starts the request's event stream.
    let marker = ChannelRecord {
        topic: reply_to.topic,
        partition: Some(reply_to.partition),
        key: Some(id.to_string().into_bytes()),
        value: Bytes::from(accepted_json.clone()),
        headers: owned_headers(
            ReplyEnvelope {
                id,
                kind: EventKind::Accepted,
                status: 202,
                content_type: Some("application/json".into()),
                headers: Vec::new(),
            }
            .to_headers(),
        ),
    };
    let marker_offset = match state.writer.write(marker).await {
        Ok(marker) => Some(marker.offset),
        Err(error) => {
            tracing::warn!(request_id = %id, %error, "accepted event not written; other instances answer 404 until the reply");
            None
        }
    };
    if let Some(open) = open {
        let hub = Arc::clone(hub);
        return Ok(sse::request_stream(
            &state.streams,
            open,
            sse::accepted_frame(marker_offset, &accepted_json),
            events,
            move || hub.recent(&id),
        ));
    }
    if preference.respond_async {
        return Ok(accepted_response(id, &route.channel, stored, true));
    }
    let reply = tokio::time::timeout(preference.wait, async {
        loop {
            match events.recv().await {
                Ok(event) if event.envelope.kind == EventKind::Final => return Some(event),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return hub.recent(&id),
            }
        }
    })
    .await;
    match reply {
        Ok(Some(event)) => Ok(reply_response(&event)),
        _ => Ok(accepted_response(id, &route.channel, stored, true)),
    }
}

/// The 202 naming where the request went; `pending` adds the `Location`
/// to poll for the reply.
fn accepted_response(id: RequestId, channel: &str, stored: Stored, pending: bool) -> Response {
    let body = Accepted {
        id: id.to_string(),
        channel,
        partition: stored.partition,
        offset: stored.offset,
        status: pending.then_some("pending"),
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(REQUEST_ID_HEADER, id_header(id));
    if pending {
        let location = format!("/v1/requests/{id}");
        headers.insert(
            header::LOCATION,
            HeaderValue::from_str(&location).expect("a path of ASCII characters"),
        );
    }
    response
}

fn id_header(id: RequestId) -> HeaderValue {
    HeaderValue::from_str(&id.to_string()).expect("a UUID is a valid header value")
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

/// `GET /v1/requests/{id}`: the reply once there, 202 while pending, 404
/// for ids nobody knows (or whose reply is gone with retention).
async fn request_status(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id: RequestId = id
        .parse()
        .map_err(|_| Problem::BadRequest(format!("{id:?} is not a request id")))?;
    let Some(hub) = &state.replies else {
        return Err(Problem::UnknownRequest(id.to_string()));
    };
    if sse::wants_event_stream(&headers) {
        let after = sse::last_event_id(&headers)
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
        if after.is_none() && matches!(hub.find(id).await, Ok(Lookup::Unknown)) {
            return Err(Problem::UnknownRequest(id.to_string()));
        }
        let open = state.streams.open(StreamKind::Request, state.retry_after)?;
        let events = hub.tail(id, after, state.streams.request_stream_limit);
        return Ok(sse::tail_stream(&state.streams, open, events));
    }
    match hub.find(id).await {
        Ok(Lookup::Replied(event)) => Ok(reply_response(&event)),
        Ok(Lookup::Pending) => {
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
        Ok(Lookup::Unknown) => Err(Problem::NotFound(format!(
            "request {id} (unknown or expired)"
        ))),
        Err(error) => Err(Problem::Unavailable {
            reason: error.to_string(),
            retry_after: state.retry_after,
        }),
    }
}

/// Writes a request record, timing the produce and mapping failures to
/// the client's problem.
async fn write(
    state: &AppState,
    route: &Route,
    id: RequestId,
    record: ChannelRecord,
) -> Result<Stored, Problem> {
    let started = Instant::now();
    let outcome = state.writer.write(record).await;
    state
        .metrics
        .produce_duration
        .get_or_create(&ChannelLabels {
            channel: route.channel.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    outcome.map_err(|error| {
        tracing::warn!(request_id = %id, channel = %route.channel, %error, "write not acknowledged");
        match error {
            WriteError::TooLarge => Problem::BodyTooLarge {
                limit: route.max_body_bytes,
            },
            WriteError::QueueFull | WriteError::NotAcknowledged(_) => Problem::Unavailable {
                reason: format!("channel {} cannot take the request now: {error}", route.channel),
                retry_after: state.retry_after,
            },
        }
    })
}

/// Reads the body up to `limit` bytes. A declared `Content-Length` over the
/// limit is refused before reading; a chunked body is cut off as soon as it
/// passes the limit, so an oversized upload is never buffered whole.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Problem> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(Problem::BodyTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(Problem::BodyTooLarge { limit }),
        Err(error) => Err(Problem::BodyUnreadable(error.to_string())),
    }
}

fn routing_key(
    route: &Route,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Option<Vec<u8>>, Problem> {
    match &route.key {
        None => Ok(None),
        Some(KeySource::Path(param)) => Ok(params.get(param).map(|v| v.as_bytes().to_vec())),
        Some(KeySource::Header(name)) => headers
            .get(name.as_str())
            .map(|v| Some(v.as_bytes().to_vec()))
            .ok_or_else(|| {
                Problem::BadRequest(format!("the routing key header {name} is missing"))
            }),
        Some(KeySource::Json(pointer)) => {
            let document: serde_json::Value = serde_json::from_slice(body).map_err(|error| {
                Problem::BadRequest(format!(
                    "the body must be JSON to take the routing key from {pointer}: {error}"
                ))
            })?;
            match document.pointer(pointer) {
                Some(serde_json::Value::String(text)) => Ok(Some(text.as_bytes().to_vec())),
                Some(serde_json::Value::Null) | None => Err(Problem::BadRequest(format!(
                    "the routing key {pointer} is missing from the JSON body"
                ))),
                Some(other) => Ok(Some(other.to_string().into_bytes())),
            }
        }
    }
}

fn forwarded_headers(allowed: &[HeaderName], headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    allowed
        .iter()
        .flat_map(|name| {
            headers
                .get_all(name)
                .iter()
                .map(move |value| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        })
        .collect()
}

/// Continues the client's W3C trace with a new span id for the gateway's
/// hop, or starts a new trace when the client sent none (or an invalid one).
fn continue_trace(incoming: Option<&HeaderValue>) -> String {
    let span_id = hex(&rand::random::<[u8; 8]>());
    if let Some((trace_id, flags)) = incoming
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
    {
        return format!("00-{trace_id}-{span_id}-{flags}");
    }
    let trace_id = hex(&rand::random::<[u8; 16]>());
    format!("00-{trace_id}-{span_id}-01")
}

/// `(trace id, flags)` of a valid version-00 `traceparent`.
fn parse_traceparent(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let is_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let all_zero = |s: &str| s.bytes().all(|b| b == b'0');
    (parts.next().is_none()
        && version == "00"
        && is_hex(trace_id, 32)
        && !all_zero(trace_id)
        && is_hex(parent_id, 16)
        && !all_zero(parent_id)
        && is_hex(flags, 2))
    .then_some((trace_id, flags))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    out
}

/// Query of `GET /v1/channels/{name}`.
#[derive(serde::Deserialize)]
struct SubscribeQuery {
    /// `earliest`, `latest` (default) or an RFC 3339 time.
    from: Option<String>,
    /// Only records with exactly this key.
    key: Option<String>,
    /// `value` (default) or `json` (partition, offset, key, timestamp, value).
    format: Option<String>,
}

/// `GET /v1/channels/{name}`: a live subscription as Server-Sent Events.
async fn subscribe_channel(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<SubscribeQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let subscriptions = match &state.subscriptions {
        Some(subscriptions) if state.subscribable.contains(&name) => subscriptions,
        _ => {
            return Err(Problem::NotFound(format!(
                "/v1/channels/{name} (not a subscribable channel)"
            )));
        }
    };
    let resume = sse::last_event_id(&headers)
        .map(|last| {
            last.parse::<Positions>()
                .map_err(|error| Problem::BadRequest(format!("Last-Event-ID: {error}")))
        })
        .transpose()?;
    let from = match query.from.as_deref() {
        None | Some("latest") => StartAt::Latest,
        Some("earliest") => StartAt::Earliest,
        Some(time) => {
            let at = humantime::parse_rfc3339_weak(time).map_err(|_| {
                Problem::BadRequest(format!(
                    "from={time:?}: expected earliest, latest or an RFC 3339 time"
                ))
            })?;
            let millis = at
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as i64;
            StartAt::Time(millis)
        }
    };
    let format = match query.format.as_deref() {
        None | Some("value") => RecordFormat::Value,
        Some("json") => RecordFormat::Json,
        Some(other) => {
            return Err(Problem::BadRequest(format!(
                "format={other:?}: expected value or json"
            )));
        }
    };
    let open = state.streams.open(StreamKind::Channel, state.retry_after)?;
    let unavailable = |error: SubscriptionError| Problem::Unavailable {
        reason: error.to_string(),
        retry_after: state.retry_after,
    };
    let feed = subscriptions.feed(&name).await.map_err(unavailable)?;
    let start = match resume {
        Some(positions) => Some(positions),
        None => subscriptions
            .start_positions(&name, from)
            .await
            .map_err(unavailable)?,
    };
    let live = feed.subscribe();
    let catch_up = start
        .clone()
        .map(|start| subscriptions.catch_up(&name, start, live.snapshot.clone()));
    Ok(sse::channel_stream(
        &state.streams,
        ChannelStream {
            open,
            live,
            catch_up,
            start,
            key: query.key.map(Bytes::from),
            format,
        },
    ))
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Result<Response, Problem> {
    if state.shutdown.is_cancelled() {
        return Err(Problem::ShuttingDown);
    }
    match state.writer.ready().await {
        Ok(()) => Ok(Json(serde_json::json!({ "status": "ready" })).into_response()),
        Err(reason) => Err(Problem::Unavailable {
            reason: format!("Kafka is not reachable: {reason}"),
            retry_after: state.retry_after,
        }),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    state
        .metrics
        .producer_queue_depth
        .set(state.writer.queue_depth() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn not_found(uri: Uri) -> Problem {
    Problem::NotFound(uri.path().to_owned())
}

async fn method_not_allowed(method: Method, uri: Uri) -> Problem {
    Problem::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// Counts every request by route pattern, method and status, and times it.
async fn track_request(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let in_flight = InFlight::enter(&state.metrics);
    let response = next.run(request).await;
    drop(in_flight);
    let status = response.status().as_u16();
    tracing::debug!(%route, %method, status, "request served");
    state
        .metrics
        .request_duration
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status,
        })
        .inc();
    response
}

/// Counts a request as in flight for as long as it lives, including when the
/// client disconnects and the request future is dropped half-way.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn enter(metrics: &'a Metrics) -> Self {
        metrics.in_flight.inc();
        Self(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    //! The HTTP layer against an in-memory writer: route matching, keys and
    //! every error status, without a broker.

    use std::sync::Mutex;

    use futures::FutureExt;
    use futures::future::BoxFuture;
    use http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::channel::Stored;

    /// Remembers what it was asked to write, or fails every write.
    #[derive(Default)]
    struct MemoryWriter {
        written: Mutex<Vec<ChannelRecord>>,
        fail_with: Option<fn() -> WriteError>,
    }

    impl ChannelWriter for MemoryWriter {
        fn write(&self, record: ChannelRecord) -> BoxFuture<'static, Result<Stored, WriteError>> {
            let outcome = match self.fail_with {
                Some(error) => Err(error()),
                None => {
                    let mut written = self.written.lock().unwrap();
                    written.push(record);
                    Ok(Stored {
                        partition: 0,
                        offset: written.len() as i64 - 1,
                    })
                }
            };
            async move { outcome }.boxed()
        }

        fn queue_depth(&self) -> u64 {
            0
        }

        fn ready(&self) -> BoxFuture<'static, Result<(), String>> {
            async { Ok(()) }.boxed()
        }
    }

    const CONFIG: &str = r#"
kafka: { brokers: "127.0.0.1:9092" }
channels: { orders: {}, audit: {} }
routes:
  - { name: create, method: POST, path: "/orders/{id}", channel: orders, key: { path: id }, max_body_bytes: 8 }
  - { name: replace, method: PUT, path: "/orders/{id}", channel: audit }
  - { method: POST, path: "/files/{*rest}", channel: audit, key: { path: rest } }
  - { method: POST, path: /by-header, channel: audit, key: { header: X-Key } }
"#;

    fn setup(writer: MemoryWriter) -> (Router, Arc<MemoryWriter>, AppState) {
        let writer = Arc::new(writer);
        let state = AppState::new(
            writer.clone(),
            Duration::from_secs(3),
            &SseConfig::default(),
        );
        let config = Config::from_yaml(CONFIG).unwrap();
        (app(&config, state.clone()), writer, state)
    }

    fn envelope(record: &ChannelRecord) -> RequestEnvelope {
        RequestEnvelope::from_headers(record.header_pairs()).unwrap()
    }

    #[test]
    fn prefer_asks_for_async_or_another_wait_within_the_cap() {
        let parse = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("prefer", HeaderValue::from_static(value));
            Preference::parse(&headers, Duration::from_secs(10), Duration::from_secs(60))
        };
        assert!(parse("respond-async").respond_async);
        assert!(parse("wait=3, respond-async").respond_async);
        assert_eq!(parse("wait=3").wait, Duration::from_secs(3));
        assert_eq!(
            parse("return=minimal; wait=0.5").wait,
            Duration::from_millis(500)
        );
        assert_eq!(parse("wait=600").wait, Duration::from_secs(60), "capped");
        assert_eq!(parse("wait=-1").wait, Duration::from_secs(10), "ignored");
        assert!(!parse("wait=1").respond_async);
    }

    fn post(uri: &str, body: &'static str) -> Request<Body> {
        Request::post(uri).body(Body::from(body)).unwrap()
    }

    async fn problem_status(response: Response) -> u16 {
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        problem["status"].as_u64().unwrap() as u16
    }

    #[tokio::test]
    async fn method_and_path_pick_the_route_and_its_channel() {
        let (app, writer, _) = setup(MemoryWriter::default());
        let response = app.clone().oneshot(post("/orders/7", "new")).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let response = app
            .oneshot(
                Request::put("/orders/7")
                    .body(Body::from("replaced"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let written = writer.written.lock().unwrap();
        assert_eq!(written[0].topic, "orders");
        assert_eq!(envelope(&written[0]).route, "create");
        assert_eq!(written[0].key.as_deref(), Some(&b"7"[..]));
        assert_eq!(written[1].topic, "audit");
        assert_eq!(envelope(&written[1]).route, "replace");
        assert_eq!(written[1].key, None);
    }

    #[tokio::test]
    async fn path_parameters_are_percent_decoded_and_wildcards_take_the_rest() {
        let (app, writer, _) = setup(MemoryWriter::default());
        let response = app.oneshot(post("/files/a/b%20c", "x")).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let written = writer.written.lock().unwrap();
        assert_eq!(written[0].key.as_deref(), Some(&b"a/b c"[..]));
        assert_eq!(envelope(&written[0]).path, "/files/a/b%20c");
    }

    #[tokio::test]
    async fn unknown_paths_are_404_and_wrong_methods_405() {
        let (app, _, _) = setup(MemoryWriter::default());
        let response = app.clone().oneshot(post("/orders", "x")).await.unwrap();
        assert_eq!(problem_status(response).await, 404);
        let response = app
            .clone()
            .oneshot(post("/orders/1/extra", "x"))
            .await
            .unwrap();
        assert_eq!(problem_status(response).await, 404);
        let response = app
            .oneshot(Request::delete("/orders/1").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(problem_status(response).await, 405);
    }

    #[tokio::test]
    async fn a_body_over_the_route_limit_is_413_and_not_written() {
        let (app, writer, _) = setup(MemoryWriter::default());
        let response = app.oneshot(post("/orders/1", "123456789")).await.unwrap();
        assert_eq!(problem_status(response).await, 413);
        assert!(writer.written.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_missing_key_header_is_400() {
        let (app, _, _) = setup(MemoryWriter::default());
        let response = app.oneshot(post("/by-header", "x")).await.unwrap();
        assert_eq!(problem_status(response).await, 400);
    }

    #[tokio::test]
    async fn a_full_producer_queue_is_503_with_retry_after() {
        let (app, _, _) = setup(MemoryWriter {
            fail_with: Some(|| WriteError::QueueFull),
            ..MemoryWriter::default()
        });
        let response = app.oneshot(post("/orders/1", "x")).await.unwrap();
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        assert_eq!(problem_status(response).await, 503);
    }

    #[tokio::test]
    async fn requests_during_shutdown_are_503_and_not_written() {
        let (app, writer, state) = setup(MemoryWriter::default());
        state.shutdown.cancel();
        let response = app.clone().oneshot(post("/orders/1", "x")).await.unwrap();
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        assert_eq!(problem_status(response).await, 503);
        let response = app
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(writer.written.lock().unwrap().is_empty());
    }

    #[test]
    fn a_valid_traceparent_keeps_its_trace_id_and_flags() {
        let incoming =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        let outgoing = continue_trace(Some(&incoming));
        assert!(outgoing.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(outgoing.ends_with("-00"));
        assert_ne!(&outgoing[36..52], "00f067aa0ba902b7");
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "garbage",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let outgoing = continue_trace(Some(&HeaderValue::from_static(bad)));
            assert!(parse_traceparent(&outgoing).is_some(), "{outgoing}");
            assert!(
                !outgoing.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
                "{bad}"
            );
        }
    }
}
