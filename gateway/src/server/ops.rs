//! The gateway's own endpoints — `/healthz` (the process serves),
//! `/readyz` (Kafka answers, not shutting down), `/metrics` — and the
//! middleware that counts and times every request.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::{Method, header};

use super::state::AppState;
use crate::limits::forwarded::ClientAddress;
use crate::metrics::{Metrics, RequestLabels, RouteLabels};
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

/// Counts every request by route pattern, method and status, and times it.
pub(super) async fn track_request(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method()).to_owned();
    let client = request
        .extensions()
        .get::<ClientAddress>()
        .map(|ClientAddress(client)| *client);
    let started = Instant::now();
    let in_flight = InFlight::enter(&state.metrics);
    let response = next.run(request).await;
    drop(in_flight);
    let status = response.status().as_u16();
    let client = client.map(tracing::field::display);
    tracing::debug!(%route, %method, status, client, "request served");
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

/// A request's method as a metric label, from a closed set: any other
/// method a client invents is `other`, so label values stay bounded.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    KNOWN
        .iter()
        .find(|known| *known == method)
        .map_or("other", Method::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        let invented = Method::from_bytes(b"FROBNICATE").unwrap();
        assert_eq!(method_label(&invented), "other");
    }
}
