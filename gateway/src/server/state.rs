//! What every HTTP surface shares: the writer, the reply hub, the
//! subscriptions, the stream context and the metrics, and the one way a
//! request record is written (timed, failures mapped to the client's
//! problem).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use osmosis_protocol::RequestId;
use tokio_util::sync::CancellationToken;

use crate::auth::policy;
use crate::auth::{Authenticator, BrowserToken, Identity};
use crate::config::{AccessConfig, LimitsConfig, SseConfig};
use crate::idempotency::Idempotency;
use crate::limits::Limits;
use crate::metrics::{ChannelLabels, Metrics};
use crate::problem::Problem;
use crate::replies::{Owner, ReplyHub};
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
    /// Cancelled just before the shutdown grace period ends: request-mode
    /// calls still waiting for their reply answer 202 + `Location` instead
    /// of having their connection cut.
    pub grace_ending: CancellationToken,
    /// How long a 503 tells clients to wait when Kafka cannot take a write.
    pub retry_after: Duration,
    /// The reply side; `None` when no route waits for replies.
    pub replies: Option<Arc<ReplyHub>>,
    /// Live feeds of subscribable channels; `None` when there are none.
    pub subscriptions: Option<Arc<Subscriptions>>,
    /// Channels clients may subscribe to, with who may.
    pub subscribable: Arc<HashMap<String, AccessConfig>>,
    /// Verifies callers' credentials; `None`: every route is public.
    pub auth: Option<Arc<Authenticator>>,
    /// Settings and shared state of event streams.
    pub streams: StreamContext,
    /// Bounds on what clients control (rates, waiting requests, shedding).
    pub limits: Arc<Limits>,
    /// The index of `Idempotency-Key`s; `None`: the header is ignored.
    pub idempotency: Option<Arc<Idempotency>>,
}

impl AppState {
    pub fn new(
        writer: Arc<dyn RecordWriter>,
        metrics: Arc<Metrics>,
        retry_after: Duration,
        sse: &SseConfig,
    ) -> Self {
        let shutdown = CancellationToken::new();
        let limits = Arc::new(Limits::new(&LimitsConfig::default(), Arc::clone(&metrics)));
        Self {
            writer,
            streams: StreamContext::new(sse, shutdown.clone(), Arc::clone(&metrics)),
            metrics,
            shutdown,
            grace_ending: CancellationToken::new(),
            retry_after,
            replies: None,
            subscriptions: None,
            subscribable: Arc::default(),
            auth: None,
            limits,
            idempotency: None,
        }
    }

    /// The verified caller of a request to what `access` guards (`None`:
    /// anonymous, where that is allowed, or no authentication configured).
    /// Refusals answer 401 or 403 and are logged without the credential.
    pub(super) async fn authorize(
        &self,
        what: &str,
        headers: &http::HeaderMap,
        access: &AccessConfig,
        browser: Option<BrowserToken<'_>>,
    ) -> Result<Option<Arc<Identity>>, Problem> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        let checked = match auth.identify(headers, browser).await {
            Ok(identity) => policy::check(access, identity.as_deref()).map(|()| identity),
            Err(error) => Err(error.into()),
        };
        checked.map_err(|denied| {
            tracing::info!(%what, reason = %denied, "caller refused");
            Problem::from(denied)
        })
    }

    /// Whether `reader` may read the events of a request sent by `owner`:
    /// its sender, or an operator; anyone when the sender was anonymous or
    /// nobody authenticates.
    pub(super) fn may_read(&self, owner: &Owner, reader: Option<&Identity>) -> bool {
        let Some(auth) = &self.auth else {
            return true;
        };
        let operator = |reader: &Identity| {
            auth.operator_scope
                .as_ref()
                .is_some_and(|scope| reader.scopes.contains(scope))
        };
        match owner {
            Owner::Anonymous => true,
            Owner::Subject(subject) => {
                reader.is_some_and(|reader| &reader.subject == subject || operator(reader))
            }
            Owner::Unknown => reader.is_some_and(operator),
        }
    }

    /// The verified caller, if the request carries a credential; a bad one
    /// is refused (401), none is anonymous.
    pub(super) async fn identify(
        &self,
        headers: &http::HeaderMap,
        browser: Option<BrowserToken<'_>>,
    ) -> Result<Option<Arc<Identity>>, Problem> {
        let public = AccessConfig {
            public: true,
            ..AccessConfig::default()
        };
        self.authorize("a request's events", headers, &public, browser)
            .await
    }

    /// Writes a request record, timing the produce and mapping failures to
    /// the client's problem.
    pub(super) async fn write(
        &self,
        route: &Route,
        id: RequestId,
        record: OutboundRecord,
    ) -> Result<Stored, Problem> {
        self.limits
            .shed(self.writer.queue_depth(), self.retry_after)?;
        self.write_outcome(route, id, record)
            .await
            .map_err(|error| self.write_problem(route, error))
    }

    /// Writes a request record, timing the produce; the writer's own
    /// outcome, for callers that record it (idempotency keys).
    pub(super) async fn write_outcome(
        &self,
        route: &Route,
        id: RequestId,
        record: OutboundRecord,
    ) -> Result<Stored, WriteError> {
        let started = Instant::now();
        let outcome = self.writer.write(record).await;
        self.metrics
            .produce_duration
            .get_or_create(&ChannelLabels {
                channel: route.channel.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        if let Err(error) = &outcome {
            tracing::warn!(request_id = %id, channel = %route.channel, %error, "write not acknowledged");
        }
        outcome
    }

    /// The client's problem for a write that failed.
    pub(super) fn write_problem(&self, route: &Route, error: WriteError) -> Problem {
        match error {
            WriteError::TooLarge => Problem::RecordTooLarge,
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
    }
}
