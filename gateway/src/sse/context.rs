//! What every event stream shares: the connection cap, the keep-alive
//! comments, the `retry:` hint and the end at shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderValue, header};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::frames::retry_frame;
use crate::config::SseConfig;
use crate::metrics::{Metrics, StreamLabels};
use crate::problem::Problem;

/// Settings and shared state every event stream uses.
#[derive(Clone)]
pub struct StreamContext {
    /// Interval of keep-alive comments on an idle stream.
    pub keep_alive: Duration,
    /// The reconnection delay suggested to clients (`retry:`).
    pub retry: Duration,
    /// Longest life of a request stream still waiting for its reply.
    pub request_stream_limit: Duration,
    /// One permit per open stream: the connection cap.
    permits: Arc<Semaphore>,
    /// Cancelled when the gateway shuts down: every stream ends with a
    /// `shutdown` event telling the client where to resume. Each stream
    /// waits on a child of its own ([`Self::for_stream`]): a token's waiters
    /// share one lock, which ten thousand streams woken for every record
    /// would otherwise all take.
    shutdown: CancellationToken,
    pub(super) metrics: Arc<Metrics>,
    /// `sse_events` by kind, resolved once rather than looked up (a lock
    /// and a hash) for every event of every stream.
    events_sent: [Counter; 2],
}

/// The kind label of stream metrics.
#[derive(Clone, Copy)]
pub enum StreamKind {
    Request,
    Channel,
}

impl StreamKind {
    const ALL: [StreamKind; 2] = [StreamKind::Request, StreamKind::Channel];

    fn label(self) -> StreamLabels {
        StreamLabels {
            kind: match self {
                StreamKind::Request => "request",
                StreamKind::Channel => "channel",
            },
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

impl StreamContext {
    pub fn new(config: &SseConfig, shutdown: CancellationToken, metrics: Arc<Metrics>) -> Self {
        Self {
            keep_alive: Duration::from_millis(config.keep_alive_ms),
            retry: Duration::from_millis(config.retry_ms),
            request_stream_limit: Duration::from_millis(config.request_stream_ms),
            permits: Arc::new(Semaphore::new(config.max_connections)),
            shutdown,
            events_sent: StreamKind::ALL
                .map(|kind| metrics.sse_events.get_or_create(&kind.label()).clone()),
            metrics,
        }
    }

    /// The context one stream keeps: its own child of the shutdown token.
    pub(super) fn for_stream(&self) -> Self {
        Self {
            shutdown: self.shutdown.child_token(),
            ..self.clone()
        }
    }

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

    /// Awaits `next` unless the gateway starts shutting down first; `None`
    /// then, and the caller ends its stream with a `shutdown` event.
    /// Shutdown wins a tie, so no stream outlives the grace period.
    pub(super) async fn unless_shutdown<T>(&self, next: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => None,
            value = next => Some(value),
        }
    }

    /// An event-stream response: the `retry:` hint, then `stream`'s frames
    /// with keep-alive comments whenever it is idle for the keep-alive
    /// interval. `open` (the connection permit) lives as long as the body.
    pub(super) fn respond(
        &self,
        open: OpenStream,
        stream: impl Stream<Item = Bytes> + Send + 'static,
    ) -> Response {
        let interval = self.keep_alive;
        let retry = retry_frame(self.retry);
        let body = async_stream::stream! {
            let _open = open;
            yield Ok::<_, Infallible>(retry);
            let mut stream = std::pin::pin!(stream);
            let idle = tokio::time::sleep(interval);
            tokio::pin!(idle);
            loop {
                tokio::select! {
                    frame = stream.next() => match frame {
                        Some(frame) => {
                            idle.as_mut().reset(tokio::time::Instant::now() + interval);
                            yield Ok(frame);
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
        // hyper keeps a connection's last response headers for reuse: an
        // event stream's connection keeps this map for as long as it is
        // open, so it is sized for its two headers (not the default eight).
        let headers = response.headers_mut();
        *headers = http::HeaderMap::with_capacity(2);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }

    pub(super) fn sent(&self, kind: StreamKind) {
        self.events_sent[kind as usize].inc();
    }
}
