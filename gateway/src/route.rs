//! A configured route, prepared once for the request path: names
//! lower-cased, durations typed, header names parsed.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};

use crate::config::{AccessConfig, KeySource, Mode, RouteConfig};

/// What the gateway does with a request to one method + path pattern.
pub struct Route {
    /// Label in metrics, logs and the `osmosis-route` header.
    pub label: String,
    /// The HTTP method the route answers.
    pub method: Method,
    /// Channel topic the requests are written to (shared by every record
    /// and metric of the route).
    pub channel: Arc<str>,
    pub mode: Mode,
    /// Where the routing key comes from; header names lower case.
    pub key: Option<KeySource>,
    pub max_body_bytes: usize,
    /// Client headers copied into the record.
    pub forward_headers: Vec<HeaderName>,
    /// Request mode: the default wait for the reply.
    pub timeout: Duration,
    /// Request mode: the longest wait `Prefer: wait=N` may ask for.
    pub max_wait: Duration,
    /// How long after acceptance workers may still process the request.
    pub deadline: Option<Duration>,
    /// Who may call it (when the gateway authenticates callers).
    pub access: AccessConfig,
}

impl From<&RouteConfig> for Route {
    fn from(config: &RouteConfig) -> Self {
        Self {
            label: config.label(),
            method: Method::from_bytes(config.method.to_ascii_uppercase().as_bytes())
                .expect("validated with the configuration"),
            channel: Arc::from(config.channel.as_str()),
            mode: config.mode,
            key: match &config.key {
                Some(KeySource::Header(name)) => Some(KeySource::Header(name.to_ascii_lowercase())),
                other => other.clone(),
            },
            max_body_bytes: config.max_body_bytes,
            forward_headers: config
                .forward_headers
                .iter()
                .map(|name| {
                    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                        .expect("validated with the configuration")
                })
                .collect(),
            timeout: Duration::from_millis(config.timeout_ms),
            max_wait: Duration::from_millis(config.max_wait_ms),
            deadline: config.deadline_ms.map(Duration::from_millis),
            access: config.access.clone(),
        }
    }
}
