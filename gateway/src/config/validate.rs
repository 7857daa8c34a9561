//! The start-up validation of a loaded configuration: every error names
//! the field it is about.

use std::collections::HashSet;

use osmosis_protocol::MAX_REPLY_PARTITION;
use osmosis_protocol::headers::{TRACEPARENT, is_reserved};

use super::{Config, ConfigError, KeySource, Mode, RESERVED_PATHS, RouteConfig, invalid};

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_kafka()?;
        self.validate_channels()?;
        self.validate_replies()?;
        self.validate_trust()?;
        let named = |error: super::limits::Invalid| invalid(error.field, error.reason);
        self.limits.validate().map_err(named)?;
        if let Some(idempotency) = &self.idempotency {
            idempotency.validate().map_err(named)?;
        }
        // A connection on which no byte moves for the idle timeout is
        // closed: a request-mode wait and an idle event stream must move
        // bytes (an answer, a keep-alive comment) before that.
        let idle = self.limits.connections.idle_timeout_ms;
        if self.sse.keep_alive_ms >= idle {
            return Err(invalid(
                "limits.connections.idle_timeout_ms",
                format!("must exceed sse.keep_alive_ms ({})", self.sse.keep_alive_ms),
            ));
        }
        if let Some((i, route)) = self
            .routes
            .iter()
            .enumerate()
            .find(|(_, route)| route.mode == Mode::Request && route.max_wait_ms >= idle)
        {
            return Err(invalid(
                format!("routes[{i}].max_wait_ms"),
                format!(
                    "{} is not below limits.connections.idle_timeout_ms ({idle}): the wait would be cut",
                    route.max_wait_ms
                ),
            ));
        }
        if self.sse.max_connections == 0 || self.sse.subscriber_buffer == 0 {
            return Err(invalid(
                "sse",
                "max_connections and subscriber_buffer must be positive",
            ));
        }
        let mut seen = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let field = |name: &str| format!("routes[{i}].{name}");
            if !seen.insert((route.method.to_ascii_uppercase(), route.path.clone())) {
                return Err(invalid(
                    field("path"),
                    format!("{} {} is routed twice", route.method, route.path),
                ));
            }
            self.validate_route(route, &field)?;
        }
        Ok(())
    }

    /// Authentication, every route's and channel's access and CORS, and
    /// where the operational endpoints are served.
    fn validate_trust(&self) -> Result<(), ConfigError> {
        let auth = self.auth.as_ref();
        if let Some(auth) = auth {
            auth.validate()?;
        }
        for (i, route) in self.routes.iter().enumerate() {
            route
                .access
                .validate(&format!("routes[{i}].access"), auth, true)?;
            if let Some(cors) = &route.cors {
                cors.validate(&format!("routes[{i}].cors"))?;
            }
        }
        for (name, channel) in &self.channels {
            channel
                .access
                .validate(&format!("channels.{name}.access"), auth, false)?;
            if let Some(cors) = &channel.cors {
                cors.validate(&format!("channels.{name}.cors"))?;
            }
        }
        if self.ops_listen == Some(self.listen) && self.listen.port() != 0 {
            return Err(invalid(
                "ops_listen",
                "must differ from listen (leave it out to serve everything on listen)",
            ));
        }
        if let Some(files) = &self.static_files
            && (!files.path.starts_with('/') || files.path == "/" || files.path.starts_with("/v1"))
        {
            return Err(invalid(
                "static_files.path",
                "must be a path below / other than /v1, e.g. /ui",
            ));
        }
        Ok(())
    }

    fn validate_kafka(&self) -> Result<(), ConfigError> {
        if self.kafka.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "must name at least one broker"));
        }
        if self.kafka.produce_timeout_ms == 0 {
            return Err(invalid("kafka.produce_timeout_ms", "must be positive"));
        }
        for fixed in ["acks", "enable.idempotence", "bootstrap.servers"] {
            if self.kafka.properties.contains_key(fixed) {
                return Err(invalid(
                    format!("kafka.properties.{fixed}"),
                    "is set by the gateway (acks=all, idempotent producer, kafka.brokers) and cannot be overridden",
                ));
            }
        }
        Ok(())
    }

    fn validate_channels(&self) -> Result<(), ConfigError> {
        for (name, channel) in &self.channels {
            if name.is_empty() || name.len() > 249 {
                return Err(invalid("channels", format!("{name:?} is not a topic name")));
            }
            if channel.partitions < 1 {
                return Err(invalid(
                    format!("channels.{name}.partitions"),
                    "must be at least 1",
                ));
            }
            durability(
                &format!("channels.{name}"),
                channel.replication_factor,
                channel.min_insync_replicas,
            )?;
        }
        Ok(())
    }

    fn validate_replies(&self) -> Result<(), ConfigError> {
        let replies = &self.replies;
        if replies.topic.is_empty() {
            return Err(invalid("replies.topic", "must not be empty"));
        }
        if replies.partitions < 1 {
            return Err(invalid("replies.partitions", "must be at least 1"));
        }
        durability(
            "replies",
            replies.replication_factor,
            replies.min_insync_replicas,
        )?;
        if replies.group.as_deref() == Some("") {
            return Err(invalid("replies.group", "must not be empty"));
        }
        if replies.partitions > MAX_REPLY_PARTITION + 1 {
            return Err(invalid(
                "replies.partitions",
                format!(
                    "at most {} (request ids name their reply partition in 12 bits)",
                    MAX_REPLY_PARTITION + 1
                ),
            ));
        }
        if replies.cache.max_entries == 0 || replies.cache.max_bytes == 0 {
            return Err(invalid(
                "replies.cache",
                "max_entries and max_bytes must be positive",
            ));
        }
        Ok(())
    }

    fn validate_route(
        &self,
        route: &RouteConfig,
        field: &dyn Fn(&str) -> String,
    ) -> Result<(), ConfigError> {
        http::Method::from_bytes(route.method.to_ascii_uppercase().as_bytes()).map_err(|_| {
            invalid(
                field("method"),
                format!("{:?} is not an HTTP method", route.method),
            )
        })?;
        if !route.path.starts_with('/') {
            return Err(invalid(field("path"), "must start with '/'"));
        }
        if RESERVED_PATHS.contains(&route.path.as_str()) || route.path.starts_with("/v1/") {
            return Err(invalid(
                field("path"),
                format!("{} is served by the gateway itself", route.path),
            ));
        }
        if !self.channels.contains_key(&route.channel) {
            return Err(invalid(
                field("channel"),
                format!("channel {:?} is not declared under channels", route.channel),
            ));
        }
        if route.mode == Mode::Request && route.timeout_ms > route.max_wait_ms {
            return Err(invalid(
                field("timeout_ms"),
                format!("must not exceed max_wait_ms ({})", route.max_wait_ms),
            ));
        }
        if route.max_body_bytes == 0 {
            return Err(invalid(field("max_body_bytes"), "must be positive"));
        }
        validate_key(route, field)?;
        for name in &route.forward_headers {
            http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                invalid(
                    field("forward_headers"),
                    format!("{name:?} is not a header name"),
                )
            })?;
            if is_reserved(name) || name.eq_ignore_ascii_case(TRACEPARENT) {
                return Err(invalid(
                    field("forward_headers"),
                    format!("{name} is written by the gateway and cannot be forwarded"),
                ));
            }
        }
        Ok(())
    }
}

/// A topic's replication factor and min in-sync replicas make sense
/// together: a min above the replicas would refuse every write.
fn durability(field: &str, replication: i32, min_insync: Option<i32>) -> Result<(), ConfigError> {
    if replication < 1 {
        return Err(invalid(
            format!("{field}.replication_factor"),
            "must be at least 1",
        ));
    }
    match min_insync {
        Some(min) if min < 1 || min > replication => Err(invalid(
            format!("{field}.min_insync_replicas"),
            format!("must be between 1 and the replication factor ({replication})"),
        )),
        _ => Ok(()),
    }
}

fn validate_key(route: &RouteConfig, field: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    match &route.key {
        Some(KeySource::Path(param)) => {
            let one = format!("{{{param}}}");
            let rest = format!("{{*{param}}}");
            if !route.path.contains(&one) && !route.path.contains(&rest) {
                return Err(invalid(
                    field("key.path"),
                    format!("{} has no {{{param}}} parameter", route.path),
                ));
            }
        }
        Some(KeySource::Header(name)) => {
            http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                invalid(
                    field("key.header"),
                    format!("{name:?} is not a header name"),
                )
            })?;
        }
        Some(KeySource::Json(pointer)) if !pointer.is_empty() && !pointer.starts_with('/') => {
            return Err(invalid(
                field("key.json"),
                "a JSON pointer is empty or starts with '/'",
            ));
        }
        Some(KeySource::Json(_)) | None => {}
    }
    Ok(())
}
