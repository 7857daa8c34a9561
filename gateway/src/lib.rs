//! `osmosis-gateway`: clients speak HTTP, the gateway writes every request
//! into its route's Kafka topic (a *channel*) and answers once Kafka has
//! durably accepted it.
//!
//! A request flows one way through the modules:
//! [`server`] (the HTTP surfaces) → [`request_record`] (where a request
//! becomes a Kafka record) → [`writer`] (the produce, acknowledged by
//! Kafka); replies come back through [`replies`] and reach the client in
//! [`server::requests`] (a response) or [`sse::request`] (a stream).
//!
//! # Layout
//! - [`config`]: the YAML configuration with environment overrides, validated
//!   at start-up; [`route`]: a configured route prepared for the request path.
//! - [`server`]: one file per HTTP surface (configured routes, requests,
//!   channels, operations), each with its `routes()`.
//! - [`request_record`]: body, routing key, forwarded headers and trace
//!   context ([`trace_context`]) → the request record.
//! - [`writer`]: the [`writer::RecordWriter`] seam and its Kafka producer;
//!   [`topics`]: the start-up check of the topics.
//! - [`replies`]: replies coming back: waiting requests, this instance's
//!   reply consumer, the recent-replies cache, `accepted` markers, lookups
//!   and shared tails for any instance's requests.
//! - [`sse`]: Server-Sent Event streams of requests and channels.
//! - [`subscriptions`]: live feeds of subscribable channels (one consumer
//!   per topic, fanned out in memory) and catch-up reads for resumes.
//! - [`limits`]: the bounds on what clients control (rates, connections,
//!   waiting requests, load shedding); [`listen`]: the public listener
//!   (connection caps, header-read and idle timeouts, graceful drain).
//! - [`idempotency`]: `Idempotency-Key`s, indexed in Kafka for every instance.
//! - [`problem`]: every client-visible error as `application/problem+json`.
//! - [`metrics`]: the Prometheus metrics.
//!
//! [`run`] ties them together: check that Kafka answers and accepts the
//! client's credentials, check the channels, serve until the shutdown
//! future resolves, let in-flight requests finish, flush the producer.

pub mod auth;
pub mod config;
pub mod idempotency;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod problem;
pub mod replies;
pub mod request_record;
pub mod route;
pub mod server;
pub mod sse;
pub mod subscriptions;
pub mod tls;
pub mod topics;
pub mod trace_context;
pub mod writer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use osmosis_support::kafka::{ClientRole, ConnectError, RefusedConfig, check_connection};
use rdkafka::error::KafkaError;

use crate::auth::{AuthSetupError, Authenticator};
use crate::config::{Config, ConnectionLimits};
use crate::idempotency::Idempotency;
use crate::limits::Limits;
use crate::limits::connections::ConnectionGate;
use crate::metrics::Metrics;
use crate::replies::{RepliesError, ReplyHub};
use crate::server::AppState;
use crate::subscriptions::Subscriptions;
use crate::topics::{TopicSetupError, ensure_topics};
use crate::writer::{KafkaWriter, RecordWriter};

/// Why the gateway stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid Kafka client configuration: {0}")]
    Client(#[source] RefusedConfig),
    #[error("cannot start: {0}")]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Topics(#[from] TopicSetupError),
    #[error(transparent)]
    Replies(#[from] RepliesError),
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot bind the operational listener {addr}: {source}")]
    OpsListener {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the idempotency index: {0}")]
    Idempotency(#[source] KafkaError),
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// The longest the start-up waits for Kafka's first answer (the metadata
/// timeout when longer): a broker that is starting too gets its chance.
const START_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of one run that are not part of the configuration file.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Create missing channel topics instead of refusing to start.
    pub create_topics: bool,
}

/// Serves the gateway on `listener` until `shutdown` resolves, then stops
/// accepting, finishes in-flight requests (bounded by the configured grace
/// period) and flushes the producer.
pub async fn run(
    config: Config,
    listener: TcpListener,
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let kafka = KafkaWriter::new(&config.kafka).map_err(Error::Client)?;
    // Bad credentials or an untrusted certificate never fail a Kafka
    // request, they make it wait: say so now instead of hanging on the topics.
    let client_config = kafka.client_config().clone();
    let timeout = config.kafka.metadata_timeout().max(START_CHECK_TIMEOUT);
    tokio::task::spawn_blocking(move || {
        check_connection(&client_config, ClientRole::Producer, timeout)
    })
    .await
    .expect("connection check panicked")?;
    ensure_topics(
        &kafka,
        &config.topics(),
        options.create_topics,
        config.kafka.metadata_timeout(),
    )
    .await?;
    for deprecation in config.replies.deprecations() {
        tracing::warn!("{deprecation}");
    }
    let writer: Arc<dyn RecordWriter> = Arc::new(kafka.clone());
    let metrics = Arc::new(Metrics::default());
    let replies = if config.has_request_routes() {
        Some(
            ReplyHub::start(
                &config.kafka,
                &config.replies,
                &config.limits.lookups,
                Arc::clone(&writer),
                &metrics,
            )
            .await?,
        )
    } else {
        None
    };

    let connections = ConnectionGate::new(&config.limits.connections, Arc::clone(&metrics));
    let idempotency = match &config.idempotency {
        Some(settings) => Some(
            Idempotency::start(settings, &config.kafka, Arc::clone(&writer))
                .await
                .map_err(Error::Idempotency)?,
        ),
        None => None,
    };
    let mut state = app_state(&config, writer, metrics, replies.clone());
    state.idempotency = idempotency;
    if let Some(auth) = &config.auth {
        state.auth = Some(Authenticator::start(auth).await?);
    }
    let shutdown_token = state.shutdown.clone();
    let grace_ending = state.grace_ending.clone();
    let (app, ops_app) = server::apps(&config, state);
    match listener.local_addr() {
        Ok(addr) => {
            tracing::info!(%addr, routes = config.routes.len(), tls = config.tls.is_some(), "listening")
        }
        Err(error) => return Err(Error::Serve(error)),
    }
    if let (Some(addr), Some(ops_app)) = (config.ops_listen, ops_app) {
        let ops_listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::OpsListener { addr, source })?;
        let bound = ops_listener.local_addr().map_err(Error::Serve)?;
        tracing::info!(addr = %bound, serves = "/healthz /readyz /metrics", "operational endpoints listening");
        // Probes and scrapes answer until the process exits: a stopping
        // gateway says "not ready" there rather than refusing connections.
        tokio::spawn(async move {
            if let Err(error) = axum::serve(ops_listener, ops_app).await {
                tracing::error!(%error, "the operational listener failed");
            }
        });
    }

    let grace = config.shutdown_grace();
    let tls = match &config.tls {
        Some(tls) => Some(tls::acceptor(&tls.cert_file, &tls.key_file)?),
        None => None,
    };
    let listening = Listening {
        listener,
        connections,
        limits: config.limits.connections.clone(),
        tls,
    };
    serve(
        listening,
        app,
        shutdown,
        shutdown_token,
        grace_ending,
        grace,
    )
    .await?;
    kafka.flush(grace).await;
    if let Some(replies) = replies {
        replies.leave().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The handlers' shared state, from the configuration and what `run` built.
fn app_state(
    config: &Config,
    writer: Arc<dyn RecordWriter>,
    metrics: Arc<Metrics>,
    replies: Option<Arc<ReplyHub>>,
) -> AppState {
    let retry_after =
        Duration::from_millis(config.kafka.produce_timeout_ms).max(Duration::from_secs(1));
    let mut state = AppState::new(writer, Arc::clone(&metrics), retry_after, &config.sse);
    state.limits = Arc::new(Limits::new(&config.limits, Arc::clone(&metrics)));
    state.replies = replies;
    state.subscribable = Arc::new(
        config
            .channels
            .iter()
            .filter(|(_, channel)| channel.subscribable)
            .map(|(name, channel)| (name.clone(), channel.access.clone()))
            .collect(),
    );
    if !state.subscribable.is_empty() {
        state.subscriptions = Some(Arc::new(
            Subscriptions::new(&config.kafka, config.sse.subscriber_buffer)
                .with_catch_up_limits(&config.limits.catch_ups, metrics),
        ));
    }
    state
}

/// The public listener and the bounds of its connections.
struct Listening {
    listener: TcpListener,
    connections: Arc<ConnectionGate>,
    limits: ConnectionLimits,
    /// TLS on the listener, when configured.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves `app` until `shutdown`, then lets in-flight requests finish
/// within `grace`: new requests and streams see `stopping` cancelled at
/// once, waiting request-mode calls see `grace_ending` just before the cut.
async fn serve(
    listening: Listening,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stopping: tokio_util::sync::CancellationToken,
    grace_ending: tokio_util::sync::CancellationToken,
    grace: Duration,
) -> Result<(), Error> {
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        stopping.cancel();
        let _ = stopping_tx.send(());
    };
    let Listening {
        listener,
        connections,
        limits,
        tls,
    } = listening;
    let served = listen::serve(listener, app, connections, &limits, tls, signal);
    let drain_deadline = async move {
        if stopping_rx.await.is_ok() {
            // Requests still waiting for a reply answer 202 + Location a
            // moment before the cut: they are in Kafka, the client polls.
            let answer_margin = (grace / 10).min(Duration::from_millis(500));
            tokio::time::sleep(grace - answer_margin).await;
            grace_ending.cancel();
            tokio::time::sleep(answer_margin).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = served => served.map_err(Error::Serve)?,
        () = drain_deadline => tracing::warn!(?grace, "in-flight requests did not finish within the grace period"),
    }
    Ok(())
}
