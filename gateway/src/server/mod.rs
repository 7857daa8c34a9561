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
//! - [`state`]: the [`AppState`] every surface shares (a leaf: the surfaces
//!   import it, it imports none of them).
//!
//! The server decides answers; it does not talk to Kafka itself: writes go
//! through the [`RecordWriter`], replies come from the [`ReplyHub`].

pub mod accepted;
pub mod channels;
pub mod ops;
pub mod prefer;
pub mod publish;
pub mod requests;
pub mod state;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::Router;
use axum::middleware;
use http::{Method, Uri};

pub use accepted::REQUEST_ID_HEADER;
pub use state::AppState;

use crate::config::Config;
use crate::problem::Problem;

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
