//! Server-Sent Event streams: a request's events (`accepted`, `progress`,
//! `reply`) and live channel subscriptions, with resume by `Last-Event-ID`.
//!
//! Every stream starts with a `retry:` hint, sends keep-alive comments while
//! idle, counts against the connection cap for as long as it is open, and
//! ends with a final event when the gateway shuts down or when a subscriber
//! falls too far behind; that event's id is where to resume.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, header};
use osmosis_protocol::EventKind;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, StreamLabels};
use crate::problem::Problem;
use crate::replies::ReplyEvent;
use crate::subscriptions::{ChannelEvent, LiveSubscription, Positions, SubscriptionError};

/// Settings and shared state of every stream.
#[derive(Clone)]
pub struct Streams {
    pub keep_alive: Duration,
    pub retry: Duration,
    /// Longest life of a request stream still waiting for its reply.
    pub request_stream_limit: Duration,
    /// One permit per open stream: the connection cap.
    pub permits: Arc<tokio::sync::Semaphore>,
    /// Cancelled when the gateway shuts down.
    pub shutdown: CancellationToken,
    pub metrics: Arc<Metrics>,
}

/// The kind label of stream metrics.
#[derive(Clone, Copy)]
pub enum StreamKind {
    Request,
    Channel,
}

impl StreamKind {
    fn label(self) -> StreamLabels {
        StreamLabels {
            kind: match self {
                StreamKind::Request => "request",
                StreamKind::Channel => "channel",
            }
            .to_owned(),
        }
    }
}

/// Holds a stream's connection permit and its place in the open-streams
/// gauge, both released when the client goes away.
pub struct OpenStream {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
    labels: StreamLabels,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.metrics.sse_streams.get_or_create(&self.labels).dec();
    }
}

impl Streams {
    /// Takes a connection permit, or 503 when the cap is reached.
    pub fn open(&self, kind: StreamKind, retry_after: Duration) -> Result<OpenStream, Problem> {
        let permit =
            Arc::clone(&self.permits)
                .try_acquire_owned()
                .map_err(|_| Problem::Unavailable {
                    reason: "too many open event streams".into(),
                    retry_after,
                })?;
        let labels = kind.label();
        self.metrics.sse_streams.get_or_create(&labels).inc();
        Ok(OpenStream {
            _permit: permit,
            metrics: Arc::clone(&self.metrics),
            labels,
        })
    }

    /// An event-stream response: `stream`'s frames with keep-alive
    /// comments whenever it is idle for the keep-alive interval.
    fn respond(&self, stream: impl Stream<Item = Bytes> + Send + 'static) -> Response {
        let interval = self.keep_alive;
        let body = async_stream::stream! {
            let mut stream = std::pin::pin!(stream);
            let idle = tokio::time::sleep(interval);
            tokio::pin!(idle);
            loop {
                tokio::select! {
                    frame = stream.next() => match frame {
                        Some(frame) => {
                            idle.as_mut().reset(tokio::time::Instant::now() + interval);
                            yield Ok::<_, Infallible>(frame);
                        }
                        None => return,
                    },
                    () = &mut idle => {
                        idle.as_mut().reset(tokio::time::Instant::now() + interval);
                        yield Ok(Bytes::from_static(b":\n\n"));
                    }
                }
            }
        };
        let mut response = Response::new(Body::from_stream(body));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }

    fn sent(&self, kind: StreamKind) {
        self.metrics.sse_events.get_or_create(&kind.label()).inc();
    }
}

/// One encoded event: `event:`, `id:`, a `data:` line per line of `data`.
/// `data` never holds a carriage return here (bodies with one go base64).
pub fn frame(event: &str, id: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(event.len() + data.len() + 32);
    out.push_str("event: ");
    out.push_str(event);
    out.push('\n');
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

fn retry_frame(retry: Duration) -> Bytes {
    Bytes::from(format!("retry: {}\n\n", retry.as_millis()))
}

/// Whether the client asked for an event stream.
pub fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// The `Last-Event-ID` header, if any.
pub fn last_event_id(headers: &HeaderMap) -> Option<&str> {
    headers.get("last-event-id").and_then(|v| v.to_str().ok())
}

/// `data` of `progress` and `reply` events.
#[derive(Serialize)]
struct ReplyData<'a> {
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    /// Set instead of `body` when the body is not text.
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
}

/// The body as SSE-safe text, or `None` when it must be base64.
fn as_text(body: &[u8]) -> Option<&str> {
    std::str::from_utf8(body)
        .ok()
        .filter(|text| !text.contains('\r'))
}

fn reply_frame(event: &ReplyEvent) -> Bytes {
    let envelope = &event.envelope;
    let id = event.offset.to_string();
    if envelope.kind == EventKind::Accepted {
        // The marker's body is the JSON the accepting instance sent as its
        // own `accepted` event.
        return frame("accepted", Some(&id), &String::from_utf8_lossy(&event.body));
    }
    let text = as_text(&event.body);
    let data = ReplyData {
        status: envelope.status,
        content_type: envelope.content_type.as_deref(),
        body: text,
        body_base64: text.is_none().then(|| BASE64.encode(&event.body)),
    };
    let name = if envelope.kind == EventKind::Final {
        "reply"
    } else {
        "progress"
    };
    frame(
        name,
        Some(&id),
        &serde_json::to_string(&data).expect("serializable"),
    )
}

fn shutdown_frame(id: Option<&str>) -> Bytes {
    frame(
        "shutdown",
        id,
        r#"{"reason":"the gateway is shutting down; reconnect with Last-Event-ID to resume"}"#,
    )
}

/// The events of a request accepted by this instance: `accepted` first
/// (with the channel position), then what its waiter receives.
pub fn request_stream(
    streams: &Streams,
    open: OpenStream,
    accepted: Bytes,
    mut events: broadcast::Receiver<Arc<ReplyEvent>>,
    on_overflow: impl FnOnce() -> Option<Arc<ReplyEvent>> + Send + 'static,
) -> Response {
    let streams_ = streams.clone();
    let stream = async_stream::stream! {
        let _open = open;
        let streams = streams_;
        yield retry_frame(streams.retry);
        yield accepted;
        streams.sent(StreamKind::Request);
        let limit = tokio::time::sleep(streams.request_stream_limit);
        tokio::pin!(limit);
        let mut on_overflow = Some(on_overflow);
        loop {
            let received = tokio::select! {
                biased;
                () = streams.shutdown.cancelled() => {
                    yield shutdown_frame(None);
                    return;
                }
                () = &mut limit => return,
                received = events.recv() => received,
            };
            let event = match received {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => {
                    // The waiter is gone: the final reply is in the cache.
                    match on_overflow.take().and_then(|recent| recent()) {
                        Some(event) => event,
                        None => return,
                    }
                }
            };
            streams.sent(StreamKind::Request);
            yield reply_frame(&event);
            if event.envelope.kind == EventKind::Final {
                return;
            }
        }
    };
    streams.respond(stream)
}

/// The events of any request, read from its reply partition on this or any
/// other instance, after `Last-Event-ID` when given.
pub fn tail_stream(
    streams: &Streams,
    open: OpenStream,
    mut events: mpsc::Receiver<Result<Arc<ReplyEvent>, String>>,
) -> Response {
    let streams_ = streams.clone();
    let stream = async_stream::stream! {
        let _open = open;
        let streams = streams_;
        yield retry_frame(streams.retry);
        loop {
            let received = tokio::select! {
                biased;
                () = streams.shutdown.cancelled() => {
                    yield shutdown_frame(None);
                    return;
                }
                received = events.recv() => received,
            };
            match received {
                Some(Ok(event)) => {
                    streams.sent(StreamKind::Request);
                    yield reply_frame(&event);
                    if event.envelope.kind == EventKind::Final {
                        return;
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "request stream ended by a Kafka error");
                    return;
                }
                None => return,
            }
        }
    };
    streams.respond(stream)
}

/// How channel records are rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordFormat {
    /// `data` is the record value (text), event `record`; binary values as
    /// base64 with event `record.base64`.
    Value,
    /// `data` is JSON with partition, offset, key, timestamp and the value.
    Json,
}

#[derive(Serialize)]
struct RecordData<'a> {
    partition: i32,
    offset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
}

fn record_frame(event: &ChannelEvent, id: &str, format: RecordFormat) -> Bytes {
    let text = as_text(&event.value);
    match format {
        RecordFormat::Value => match text {
            Some(text) => frame("record", Some(id), text),
            None => frame("record.base64", Some(id), &BASE64.encode(&event.value)),
        },
        RecordFormat::Json => {
            let key_text = event.key.as_deref().and_then(as_text);
            let data = RecordData {
                partition: event.partition,
                offset: event.offset,
                key: key_text,
                key_base64: match (&event.key, key_text) {
                    (Some(key), None) => Some(BASE64.encode(key)),
                    _ => None,
                },
                timestamp: event.timestamp,
                value: text,
                value_base64: text.is_none().then(|| BASE64.encode(&event.value)),
            };
            frame(
                "record",
                Some(id),
                &serde_json::to_string(&data).expect("serializable"),
            )
        }
    }
}

/// The frame every subscriber in step with the live feed sends for this
/// event: rendered once, shared by all of them.
fn shared_record_frame(event: &ChannelEvent, format: RecordFormat) -> Bytes {
    let cell = match format {
        RecordFormat::Value => &event.value_frame,
        RecordFormat::Json => &event.json_frame,
    };
    cell.get_or_init(|| record_frame(event, &event.positions, format))
        .clone()
}

/// A channel subscription: catch-up from `start` (if any), then the live
/// feed, filtered by `key`; cut off with an `overflow` event when the
/// subscriber falls more than the buffer behind.
pub struct ChannelStream {
    pub open: OpenStream,
    pub live: LiveSubscription,
    pub catch_up: Option<mpsc::Receiver<Result<ChannelEvent, SubscriptionError>>>,
    pub start: Option<Positions>,
    pub key: Option<Bytes>,
    pub format: RecordFormat,
}

pub fn channel_stream(streams: &Streams, subscription: ChannelStream) -> Response {
    let streams_ = streams.clone();
    let stream = async_stream::stream! {
        let ChannelStream { open, mut live, catch_up, start, key, format } = subscription;
        let _open = open;
        let streams = streams_;
        yield retry_frame(streams.retry);
        let mut cursor = start.unwrap_or_else(|| live.snapshot.clone());
        // The subscription is live from here: say so, and where it starts.
        let start = cursor.to_string();
        yield frame("subscribed", Some(&start), &format!(r#"{{"positions":"{start}"}}"#));
        let matches = |event: &ChannelEvent| key.is_none() || event.key == key;
        if let Some(mut catch_up) = catch_up {
            streams.metrics.sse_catch_up_reads.inc();
            loop {
                let received = tokio::select! {
                    biased;
                    () = streams.shutdown.cancelled() => {
                        yield shutdown_frame(Some(&cursor.to_string()));
                        return;
                    }
                    received = catch_up.recv() => received,
                };
                match received {
                    Some(Ok(event)) => {
                        if event.offset < cursor.get(event.partition).unwrap_or(0) {
                            continue;
                        }
                        cursor.advance(event.partition, event.offset);
                        if matches(&event) {
                            streams.sent(StreamKind::Channel);
                            yield record_frame(&event, &cursor.to_string(), format);
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "catch-up failed; joining the live feed");
                        break;
                    }
                    None => break,
                }
            }
        }
        // The catch-up read up to the snapshot: from here on the live feed
        // delivers, and the subscriber moves in step with it.
        for (partition, next) in live.snapshot.iter() {
            if cursor.get(partition).is_none_or(|mine| mine < next) {
                cursor.set(partition, next);
            }
        }
        let mut in_step = cursor == live.snapshot;
        loop {
            let received = tokio::select! {
                biased;
                () = streams.shutdown.cancelled() => {
                    yield shutdown_frame(Some(&cursor.to_string()));
                    return;
                }
                received = live.events.recv() => received,
            };
            let event = match received {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    streams.metrics.sse_slow_disconnects.inc();
                    tracing::info!(missed, "cutting off a slow subscriber");
                    yield frame(
                        "overflow",
                        Some(&cursor.to_string()),
                        r#"{"reason":"the subscriber fell too far behind; reconnect with Last-Event-ID to resume"}"#,
                    );
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let mine = cursor.get(event.partition).unwrap_or(0);
            if event.offset < mine {
                continue;
            }
            in_step &= event.offset == mine;
            cursor.advance(event.partition, event.offset);
            if !matches(&event) {
                continue;
            }
            streams.sent(StreamKind::Channel);
            if in_step {
                yield shared_record_frame(&event, format);
            } else {
                yield record_frame(&event, &cursor.to_string(), format);
            }
        }
    };
    streams.respond(stream)
}

/// The `accepted` event of a request stream started by a POST; its id is
/// the accepted marker's offset, from which a resume continues.
pub fn accepted_frame(marker_offset: Option<i64>, data: &str) -> Bytes {
    frame(
        "accepted",
        marker_offset.map(|o| o.to_string()).as_deref(),
        data,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_carries_each_data_line_and_ends_with_a_blank_line() {
        let encoded = frame("record", Some("0:1"), "first\nsecond");
        assert_eq!(
            &encoded[..],
            b"event: record\nid: 0:1\ndata: first\ndata: second\n\n"
        );
        assert_eq!(
            &frame("accepted", None, "{}")[..],
            b"event: accepted\ndata: {}\n\n"
        );
    }

    #[test]
    fn bodies_with_carriage_returns_are_not_text() {
        assert_eq!(as_text(b"plain\nlines"), Some("plain\nlines"));
        assert_eq!(as_text(b"windows\r\nline"), None);
        assert_eq!(as_text(&[0xff, 0xfe]), None);
    }
}
