//! Which browser origins may call what: CORS per route and per channel,
//! answered by tower-http's `CorsLayer` (preflights included). The polls
//! and streams of `GET /v1/requests/{id}` admit the origins of every
//! request-mode route, since that is where their `Location` points.
//!
//! Credentials (cookies, `Authorization`) are allowed only for origins
//! listed exactly under a policy with `credentials: true`, never for `*`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowCredentials, AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

use super::accepted::REQUEST_ID_HEADER;
use crate::auth::API_KEY_HEADER;
use crate::config::{ChannelConfig, CorsConfig, Mode, RouteConfig};

/// The policies that apply to a request, by its path.
type Policies = Arc<dyn Fn(&Parts) -> Vec<CorsConfig> + Send + Sync>;

/// The route of `OPTIONS` on a path with a CORS layer: the layer answers
/// preflights itself, and without a route they would reach the 405
/// fallback instead of it. An `OPTIONS` that is no preflight gets 204.
pub(super) async fn preflight() -> http::StatusCode {
    http::StatusCode::NO_CONTENT
}

/// The CORS layer of one path's routes; `None` when none of them has a
/// policy (then browsers get no CORS headers and refuse cross-origin calls).
pub(super) fn for_routes(routes: &[&RouteConfig]) -> Option<CorsLayer> {
    let policies: Vec<CorsConfig> = routes.iter().filter_map(|r| r.cors.clone()).collect();
    if policies.is_empty() {
        return None;
    }
    let methods = routes
        .iter()
        .filter_map(|route| Method::from_bytes(route.method.to_ascii_uppercase().as_bytes()).ok());
    let max_age = longest_max_age(&policies);
    Some(layer(
        Arc::new(move |_| policies.clone()),
        AllowMethods::list(methods.chain([Method::OPTIONS])),
        max_age,
    ))
}

/// The CORS layer of `GET /v1/channels/{name}`: each channel's own policy.
pub(super) fn for_channels(channels: &BTreeMap<String, ChannelConfig>) -> Option<CorsLayer> {
    let policies: BTreeMap<String, CorsConfig> = channels
        .iter()
        .filter_map(|(name, channel)| Some((name.clone(), channel.cors.clone()?)))
        .collect();
    if policies.is_empty() {
        return None;
    }
    let max_age = longest_max_age(policies.values());
    Some(layer(
        Arc::new(move |parts: &Parts| {
            let name = parts.uri.path().trim_start_matches("/v1/channels/");
            policies.get(name).cloned().into_iter().collect()
        }),
        AllowMethods::list([Method::GET, Method::OPTIONS]),
        max_age,
    ))
}

/// The CORS layer of `GET /v1/requests/{id}`: the request routes' origins.
pub(super) fn for_requests(routes: &[RouteConfig]) -> Option<CorsLayer> {
    let policies: Vec<CorsConfig> = routes
        .iter()
        .filter(|route| route.mode == Mode::Request)
        .filter_map(|route| route.cors.clone())
        .collect();
    if policies.is_empty() {
        return None;
    }
    let max_age = longest_max_age(&policies);
    Some(layer(
        Arc::new(move |_| policies.clone()),
        AllowMethods::list([Method::GET, Method::OPTIONS]),
        max_age,
    ))
}

/// How long browsers may cache a preflight: the longest any policy allows.
fn longest_max_age<'a>(policies: impl IntoIterator<Item = &'a CorsConfig>) -> Duration {
    let secs = policies.into_iter().map(|policy| policy.max_age_secs).max();
    Duration::from_secs(secs.unwrap_or_default())
}

fn layer(policies: Policies, methods: AllowMethods, max_age: Duration) -> CorsLayer {
    let for_origin = Arc::clone(&policies);
    let for_credentials = policies;
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, parts| {
            for_origin(parts)
                .iter()
                .any(|policy| allows(policy, origin, false))
        }))
        .allow_credentials(AllowCredentials::predicate(move |origin, parts| {
            for_credentials(parts)
                .iter()
                .any(|policy| allows(policy, origin, true))
        }))
        .allow_methods(methods)
        .allow_headers(AllowHeaders::list([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static(API_KEY_HEADER),
            HeaderName::from_static("prefer"),
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("idempotency-key"),
            header::ACCEPT,
        ]))
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            header::WWW_AUTHENTICATE,
            HeaderName::from_static(REQUEST_ID_HEADER),
        ])
        .max_age(max_age)
}

/// Whether `policy` admits `origin` (with credentials, when asked).
fn allows(policy: &CorsConfig, origin: &HeaderValue, credentials: bool) -> bool {
    if credentials && !policy.credentials {
        return false;
    }
    policy
        .origins
        .iter()
        .any(|allowed| allowed.as_bytes() == origin.as_bytes() || (!credentials && allowed == "*"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_only_to_exact_origins_that_ask_for_them() {
        let policy = CorsConfig {
            origins: vec!["https://app.example.com".into(), "*".into()],
            credentials: false,
            max_age_secs: 60,
        };
        let app = HeaderValue::from_static("https://app.example.com");
        let other = HeaderValue::from_static("https://evil.example.net");
        assert!(allows(&policy, &app, false));
        assert!(allows(&policy, &other, false));
        assert!(!allows(&policy, &app, true));
        let with_credentials = CorsConfig {
            origins: vec!["https://app.example.com".into()],
            credentials: true,
            max_age_secs: 60,
        };
        assert!(allows(&with_credentials, &app, true));
        assert!(!allows(&with_credentials, &other, true));
    }
}
