//! The HTTP side: one file per surface, each exposing its `routes()`, and
//! the state they share.
//!
//! # Layout
//! - [`publish`]: the configured routes: a call becomes a request record
//!   (through [`crate::request_record`]) and goes into its channel; 202.
//! - [`requests`]: request mode and `GET /v1/requests/{id}`: where a reply
//!   reaches the client as a response.
//! - [`channels`]: `GET /v1/channels/{name}`, live subscriptions.
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics` and the request metrics.
//! - [`accepted`], [`prefer`]: the 202 answer and the `Prefer` header.
//!
//! The server decides answers; it does not talk to Kafka itself: writes go
//! through the [`RecordWriter`], replies come from the [`ReplyHub`].

pub mod accepted;
pub mod channels;
pub mod ops;
pub mod prefer;
pub mod publish;
pub mod requests;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::middleware;
use http::{Method, Uri};
use osmosis_protocol::RequestId;
use tokio_util::sync::CancellationToken;

pub use accepted::REQUEST_ID_HEADER;

use crate::config::{Config, SseConfig};
use crate::metrics::{ChannelLabels, Metrics};
use crate::problem::Problem;
use crate::replies::ReplyHub;
use crate::route::Route;
use crate::sse::StreamContext;
use crate::subscriptions::Subscriptions;
use crate::writer::{OutboundRecord, RecordWriter, Stored, WriteError};

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// Where accepted requests go.
    pub writer: Arc<dyn RecordWriter>,
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
    pub streams: StreamContext,
}

impl AppState {
    pub fn new(
        writer: Arc<dyn RecordWriter>,
        metrics: Arc<Metrics>,
        retry_after: Duration,
        sse: &SseConfig,
    ) -> Self {
        let shutdown = CancellationToken::new();
        Self {
            writer,
            streams: StreamContext::new(sse, shutdown.clone(), Arc::clone(&metrics)),
            metrics,
            shutdown,
            retry_after,
            replies: None,
            subscriptions: None,
            subscribable: Arc::default(),
        }
    }

    /// Writes a request record, timing the produce and mapping failures to
    /// the client's problem.
    async fn write(
        &self,
        route: &Route,
        id: RequestId,
        record: OutboundRecord,
    ) -> Result<Stored, Problem> {
        let started = Instant::now();
        let outcome = self.writer.write(record).await;
        self.metrics
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
                WriteError::QueueFull | WriteError::NotAcknowledged(_) | WriteError::Closed => {
                    Problem::Unavailable {
                        reason: format!(
                            "channel {} cannot take the request now: {error}",
                            route.channel
                        ),
                        retry_after: self.retry_after,
                    }
                }
            }
        })
    }
}

/// The whole HTTP application: configured routes plus the gateway's own
/// endpoints, with problem+json for unknown paths and methods.
pub fn app(config: &Config, state: AppState) -> Router {
    // Handlers share one state: extracting it is one reference count.
    let state = Arc::new(state);
    Router::new()
        .merge(publish::routes(config))
        .merge(requests::routes())
        .merge(channels::routes())
        .merge(ops::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            ops::track_request,
        ))
        .with_state(state)
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
