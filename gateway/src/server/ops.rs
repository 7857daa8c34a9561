//! The gateway's own endpoints — `/healthz` (the process serves),
//! `/readyz` (Kafka answers, not shutting down), `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::header;

use super::state::AppState;
use crate::problem::Problem;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Result<Response, Problem> {
    if state.shutdown.is_cancelled() {
        return Err(Problem::ShuttingDown);
    }
    if let Some(hub) = &state.replies
        && hub.owned_partitions().is_empty()
    {
        return Err(Problem::Unavailable {
            reason: "this gateway owns no reply partition yet".into(),
            retry_after: state.retry_after,
        });
    }
    match state.writer.ready().await {
        Ok(()) => Ok(Json(serde_json::json!({ "status": "ready" })).into_response()),
        Err(unreachable) => Err(Problem::Unavailable {
            reason: unreachable.to_string(),
            retry_after: state.retry_after,
        }),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    state
        .metrics
        .producer_queue_depth
        .set(state.writer.queue_depth() as i64);
    if let Some(hub) = &state.replies {
        state
            .metrics
            .requests_waiting
            .set(hub.waiting_count() as i64);
    }
    (
        [(header::CONTENT_TYPE, osmosis_support::metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
}
