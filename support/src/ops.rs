//! The operational endpoints of a process that serves no HTTP of its own
//! (a worker, the autoscaler): `/metrics`, `/healthz` and `/readyz` on a
//! listener of their own. The gateway serves the same paths on its router.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// What a process reports on its operational endpoints.
pub trait Health: Send + Sync + 'static {
    /// The metrics in the OpenMetrics text format.
    fn metrics(&self) -> String;

    /// Whether the process should receive work (`/readyz`).
    fn ready(&self) -> bool {
        true
    }

    /// Whether the process makes progress (`/healthz`).
    fn liveness(&self) -> Liveness {
        Liveness::Ok
    }
}

/// What `/healthz` says: 200 unless the process cannot make progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Liveness {
    Ok,
    /// Working, but something is worth a look (e.g. a handler running
    /// long): 200, with the reason in the body.
    Degraded(String),
    /// Cannot make progress (e.g. a record Kafka never takes): 503, with
    /// the reason in the body.
    Failing(String),
}

/// Serves the endpoints on `listen` in a task of their own; returns the
/// bound address (`listen` may ask for port 0).
pub async fn serve<H: Health>(listen: SocketAddr, health: Arc<H>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics::<H>))
        .route("/healthz", get(healthz::<H>))
        .route("/readyz", get(readyz::<H>))
        .with_state(health);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::warn!(%error, "operational endpoints stopped");
        }
    });
    Ok(addr)
}

async fn metrics<H: Health>(State(health): State<Arc<H>>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        health.metrics(),
    )
        .into_response()
}

async fn healthz<H: Health>(State(health): State<Arc<H>>) -> Response {
    match health.liveness() {
        Liveness::Ok => (StatusCode::OK, "ok".to_owned()).into_response(),
        Liveness::Degraded(reason) => (StatusCode::OK, format!("ok: {reason}")).into_response(),
        Liveness::Failing(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

async fn readyz<H: Health>(State(health): State<Arc<H>>) -> Response {
    if health.ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}
