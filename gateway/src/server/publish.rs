//! The configured routes: method + path pattern → channel. A call is read
//! within the route's limits, becomes a request record
//! ([`crate::request_record`]) and is written into its channel; publish
//! mode answers 202 once Kafka acknowledged it, request mode hands over to
//! [`super::requests`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::response::Response;
use axum::routing::{MethodFilter, MethodRouter};

use super::accepted::accepted_response;
use super::cors;
use super::idempotent;
use super::requests;
use super::state::AppState;
use crate::config::{Config, Mode, RouteConfig};
use crate::problem::Problem;
use crate::request_record::{CallHead, RequestRecord, read_body};
use crate::route::Route;

/// The configured routes. Routes sharing a path pattern share one
/// `MethodRouter`, so that a wrong method on a known path is a 405 rather
/// than a 404.
pub(super) fn routes(config: &Config) -> Router<Arc<AppState>> {
    let mut by_path: BTreeMap<&str, MethodRouter<Arc<AppState>>> = BTreeMap::new();
    let mut configs_by_path: BTreeMap<&str, Vec<&RouteConfig>> = BTreeMap::new();
    for route_config in &config.routes {
        configs_by_path
            .entry(&route_config.path)
            .or_default()
            .push(route_config);
        let route = Arc::new(Route::from(route_config));
        let filter = MethodFilter::try_from(route.method.clone()).expect("standard HTTP method");
        let handler = move |State(state): State<Arc<AppState>>, request: Request| {
            let route = Arc::clone(&route);
            async move { accept(state, RoutedCall::extract(route, request).await).await }
        };
        let entry = by_path
            .remove(route_config.path.as_str())
            .unwrap_or_default();
        by_path.insert(&route_config.path, entry.on(filter, handler));
    }
    by_path.into_iter().fold(
        Router::new(),
        |router, (path, methods)| match cors::for_routes(&configs_by_path[path]) {
            // The CORS layer answers preflights itself; the OPTIONS route
            // makes them reach it rather than the 405 fallback.
            Some(cors) => router.route(path, methods.options(cors::preflight).layer(cors)),
            None => router.route(path, methods),
        },
    )
}

/// One client call to a configured route.
struct RoutedCall {
    route: Arc<Route>,
    head: CallHead,
    body: Body,
}

impl RoutedCall {
    async fn extract(route: Arc<Route>, request: Request) -> Self {
        let (mut parts, body) = request.into_parts();
        let params = Path::<HashMap<String, String>>::from_request_parts(&mut parts, &())
            .await
            .map(|Path(params)| params)
            .unwrap_or_default();
        Self {
            route,
            head: CallHead {
                method: parts.method,
                uri: parts.uri,
                headers: parts.headers,
                params,
            },
            body,
        }
    }
}

async fn accept(state: Arc<AppState>, call: RoutedCall) -> Result<Response, Problem> {
    if state.shutdown.is_cancelled() {
        return Err(Problem::ShuttingDown);
    }
    let RoutedCall { route, head, body } = call;
    // Before the body is read: an unknown caller's upload is not buffered.
    let caller = state
        .authorize(&route.label, &head.headers, &route.access, None)
        .await?;
    let body = read_body(&head.headers, body, route.max_body_bytes).await?;
    let key = idempotent::key_of(&state, &head.headers)?;
    match route.mode {
        Mode::Publish => {
            let subject = caller.as_ref().map(|identity| identity.subject.clone());
            let caller = caller.map(|identity| identity.caller());
            let request = RequestRecord::build(&route, &head, body, caller, None)?;
            if let Some(key) = key {
                let subject = subject.as_deref();
                return idempotent::publish_once(&state, &route, &head, key, subject, request)
                    .await;
            }
            let stored = state.write(&route, request.id, request.record).await?;
            Ok(accepted_response(request.id, &route.channel, stored, false))
        }
        Mode::Request => {
            requests::send_and_wait(&state, &route, &head, body, caller.as_deref(), key).await
        }
    }
}
