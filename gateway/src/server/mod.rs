//! The HTTP side: one file per surface, each exposing its `routes()`, and
//! the state they share.
//!
//! # Layout
//! - [`publish`]: the configured routes: a call becomes a request record
//!   (through [`crate::request_record`]) and goes into its channel; 202.
//! - [`requests`]: request mode and `GET /v1/requests/{id}`: where a reply
//!   reaches the client as a response.
//! - [`channels`]: `GET /v1/channels/{name}`, live subscriptions.
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`.
//! - `edge`: what every call passes first: its client, rate limits, the
//!   request metrics.
//! - [`accepted`], [`prefer`]: the 202 answer and the `Prefer` header.
//! - [`cors`]: which browser origins may call what.
//! - [`idempotent`]: calls with an `Idempotency-Key` (claim, claimed write,
//!   the publish retry's answer).
//! - [`state`]: the [`AppState`] every surface shares (a leaf: the surfaces
//!   import it, it imports none of them).
//!
//! The server decides answers; it does not talk to Kafka itself: writes go
//! through the [`RecordWriter`], replies come from the [`ReplyHub`].

pub mod accepted;
pub mod channels;
pub mod cors;
mod edge;
pub mod idempotent;
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
use tower_http::services::ServeDir;

pub use accepted::REQUEST_ID_HEADER;
pub use state::AppState;

use crate::config::Config;
use crate::problem::Problem;

/// The whole HTTP application on one listener: configured routes plus the
/// gateway's own endpoints, with problem+json for unknown paths and methods.
pub fn app(config: &Config, state: AppState) -> Router {
    let (public, ops) = apps(config, state);
    match ops {
        Some(ops) => public.merge(ops),
        None => public,
    }
}

/// The public application, and the operational one (`/healthz`,
/// `/readyz`, `/metrics`) apart when `ops_listen` is set; otherwise the
/// public one serves both.
pub fn apps(config: &Config, state: AppState) -> (Router, Option<Router>) {
    // Handlers share one state: extracting it is one reference count.
    let state = Arc::new(state);
    let mut public = Router::new()
        .merge(publish::routes(config))
        .merge(requests::routes(config))
        .merge(channels::routes(config));
    if let Some(files) = &config.static_files {
        public = public.nest_service(&files.path, ServeDir::new(&files.dir));
    }
    let ops = match config.ops_listen {
        Some(_) => Some(with_edge(ops::routes(), &state, false)),
        None => {
            public = public.merge(ops::routes());
            None
        }
    };
    // Rate limits on the public routes (probes and scrapes are exempt).
    (with_edge(public, &state, true), ops)
}

/// Problem+json for unknown paths and methods, and the [`edge`] every call
/// passes first.
fn with_edge(router: Router<Arc<AppState>>, state: &Arc<AppState>, rate_limited: bool) -> Router {
    let edge = edge::Edge {
        state: Arc::clone(state),
        rate_limited,
    };
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(edge, edge::serve))
        .with_state(Arc::clone(state))
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
