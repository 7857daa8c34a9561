//! What every call passes through before its handler, as one middleware
//! (one boxed future per call instead of one per concern): its client is
//! named (behind trusted proxies, the one they forward), the public routes'
//! rate limits take their tokens, and the call is counted and timed by
//! route pattern, method and status — 429s and unknown paths included.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::Method;

use super::state::AppState;
use crate::limits::forwarded::ClientAddress;
use crate::metrics::{Metrics, RequestLabels, RouteLabels, RoutePattern};

/// The middleware's state: the shared state, and whether the routes behind
/// it are rate limited (public ones) or not (the operational listener).
#[derive(Clone)]
pub(super) struct Edge {
    pub state: Arc<AppState>,
    pub rate_limited: bool,
}

pub(super) async fn serve(State(edge): State<Edge>, mut request: Request, next: Next) -> Response {
    let limits = &edge.state.limits;
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| limits.clients.resolve(peer.ip(), request.headers()));
    if let Some(client) = client {
        request.extensions_mut().insert(ClientAddress(client));
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(RoutePattern::Unmatched, |path| {
            RoutePattern::Matched(path.clone())
        });
    let method = method_label(request.method());
    let started = Instant::now();
    let metrics = &edge.state.metrics;
    let in_flight = InFlight::enter(metrics);
    let admitted = if edge.rate_limited {
        limits
            .rate
            .admit(request.uri().path(), route.as_str(), client)
    } else {
        Ok(())
    };
    let response = match admitted {
        Ok(()) => next.run(request).await,
        Err(limited) => limited.into_response(),
    };
    drop(in_flight);
    let status = response.status().as_u16();
    tracing::debug!(
        route = route.as_str(),
        method,
        status,
        client = client.map(tracing::field::display),
        "request served"
    );
    metrics
        .request_duration
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
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
