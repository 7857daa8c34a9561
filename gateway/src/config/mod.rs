//! The gateway's configuration: one YAML file, every setting overridable from
//! the environment, validated once at start-up with errors that name the field.
//!
//! Environment overrides use the prefix `OSMOSIS_` and `__` between nested
//! keys: `OSMOSIS_LISTEN=0.0.0.0:8080`, `OSMOSIS_KAFKA__BROKERS=k1:9092`.
//! Kafka client properties take `_` for `.` in their names:
//! `OSMOSIS_KAFKA__PROPERTIES__SECURITY_PROTOCOL=SASL_SSL` sets
//! `security.protocol`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

mod auth;
mod defaults;
mod error;
mod limits;
mod load;
mod validate;

pub use auth::{AccessConfig, ApiKeysConfig, AuthConfig, CorsConfig, JwtConfig, TlsConfig};
use defaults::*;
pub use error::ConfigError;
use error::invalid;
pub use limits::{
    CatchUpLimits, ClientAddressHeader, ConnectionLimits, IdempotencyConfig, LimitsConfig,
    LookupLimits, RateLimits, TokenBucket,
};

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "OSMOSIS_";

/// Paths the gateway serves itself; routes may not claim them.
const RESERVED_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// Everything the gateway needs to run.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// A second address for `/metrics`, `/healthz` and `/readyz` only; when
    /// set, the public listener no longer serves them.
    #[serde(default)]
    pub ops_listen: Option<SocketAddr>,
    /// TLS on `listen` (not on `ops_listen`); none: plain HTTP, for a
    /// gateway behind an ingress that terminates TLS.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How callers authenticate; none: every route and channel is public.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Static files served under a path (the demo's browser page).
    #[serde(default)]
    pub static_files: Option<StaticFilesConfig>,
    /// How to reach Kafka and how to produce to it.
    pub kafka: KafkaConfig,
    /// Channel topics the routes write to, with how to create them.
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelConfig>,
    /// HTTP method + path → channel.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Where workers send replies, and which part of them this instance owns.
    #[serde(default)]
    pub replies: RepliesConfig,
    /// Server-Sent Event streams: replies and channel subscriptions.
    #[serde(default)]
    pub sse: SseConfig,
    /// Longest time a graceful shutdown waits for in-flight requests.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Bounds on what clients control: connections, rates, catch-ups,
    /// waiting requests, producer queue, lookups.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `Idempotency-Key` on configured routes; none: the header is ignored.
    #[serde(default)]
    pub idempotency: Option<IdempotencyConfig>,
}

/// Connection to Kafka and producer behaviour.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated (`bootstrap.servers`).
    pub brokers: String,
    /// Longest time a request waits for the broker's acknowledgement before
    /// the client gets 503; librdkafka's `message.timeout.ms`.
    #[serde(default = "default_produce_timeout_ms")]
    pub produce_timeout_ms: u64,
    /// Longest time `/readyz` and the start-up check wait for metadata.
    #[serde(default = "default_metadata_timeout_ms")]
    pub metadata_timeout_ms: u64,
    /// librdkafka client properties passed through unchanged (TLS, SASL,
    /// batching...). They may not weaken durability: `acks` and
    /// `enable.idempotence` are fixed by the gateway.
    #[serde(default, deserialize_with = "flatten_properties")]
    pub properties: BTreeMap<String, String>,
}

/// How a channel topic is created by `--create-topics`, and what the
/// start-up check expects of an existing one.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// Partition count: the most workers that can drain the channel at once.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replicas of each partition. 1 suits a single-broker demo only: with
    /// acks=all, "durably accepted" then means one disk.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// The topic's `min.insync.replicas`: replicas that must have a record
    /// before Kafka acknowledges it (and the client gets its 202). None:
    /// the broker's default. Production: replication 3, min in-sync 2.
    #[serde(default)]
    pub min_insync_replicas: Option<i32>,
    /// Whether clients may subscribe to the channel with
    /// `GET /v1/channels/{name}` (Server-Sent Events).
    #[serde(default)]
    pub subscribable: bool,
    /// Who may subscribe (with `auth:` configured).
    #[serde(default)]
    pub access: AccessConfig,
    /// Browser origins that may subscribe.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
}

/// Files served as they are, for a browser page next to the API.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticFilesConfig {
    /// URL path prefix, e.g. `/ui`.
    pub path: String,
    /// Directory the files are read from.
    pub dir: std::path::PathBuf,
}

/// The reply topic and how gateways share it.
///
/// Each gateway consumes its own reply partitions, so a reply goes straight
/// to the instance holding the client. Which partitions are whose is Kafka
/// group membership: the gateways form one consumer group on the reply
/// topic, so a fleet can grow, shrink or lose a member without any
/// configuration change. The topic needs at least as many partitions as
/// gateways; a gateway that gets none serves publish routes only.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepliesConfig {
    /// Topic every worker replies to.
    #[serde(default = "default_replies_topic")]
    pub topic: String,
    /// Partition count, used by `--create-topics`: at least the number of
    /// gateways (more lets a fleet grow without a topic change).
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replicas of each reply partition (see the channels' setting).
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// The reply topic's `min.insync.replicas`; None: the broker's default.
    #[serde(default)]
    pub min_insync_replicas: Option<i32>,
    /// The consumer group the gateways of one fleet share; default
    /// `osmosis-gateway.<topic>`, so gateways sharing a reply topic share
    /// its partitions.
    #[serde(default)]
    pub group: Option<String>,
    /// How long start-up waits for the group to assign this gateway a
    /// reply partition before it serves anyway (publish routes only, not
    /// ready, until one is assigned).
    #[serde(default = "default_assignment_timeout_ms")]
    pub assignment_timeout_ms: u64,
    /// Deprecated and ignored: reply partitions follow group membership.
    /// Accepted for one release so that old configurations still start.
    #[serde(default)]
    pub instance: Option<u32>,
    /// Deprecated and ignored, like `instance`.
    #[serde(default)]
    pub instances: Option<u32>,
    /// Recent final replies kept in memory for `GET /v1/requests/{id}`.
    #[serde(default)]
    pub cache: ReplyCacheConfig,
    /// Most reply records one Kafka lookup reads before giving up.
    #[serde(default = "default_lookup_max_records")]
    pub lookup_max_records: u64,
}

impl Default for RepliesConfig {
    fn default() -> Self {
        Self {
            topic: default_replies_topic(),
            partitions: default_partitions(),
            replication_factor: default_replication_factor(),
            min_insync_replicas: None,
            group: None,
            assignment_timeout_ms: default_assignment_timeout_ms(),
            instance: None,
            instances: None,
            cache: ReplyCacheConfig::default(),
            lookup_max_records: default_lookup_max_records(),
        }
    }
}

impl RepliesConfig {
    /// The fleet's consumer group on the reply topic.
    pub fn group(&self) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("osmosis-gateway.{}", self.topic))
    }

    /// Warnings about settings that no longer do anything.
    pub fn deprecations(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.instance.is_some() || self.instances.is_some() {
            out.push(
                "replies.instance and replies.instances are ignored: gateways share the reply \
                 partitions by Kafka group membership (replies.group); remove them",
            );
        }
        out
    }
}

/// Server-Sent Event streams.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SseConfig {
    /// Interval of keep-alive comments on idle streams.
    #[serde(default = "default_keep_alive_ms")]
    pub keep_alive_ms: u64,
    /// Reconnection delay suggested to clients (`retry:`).
    #[serde(default = "default_retry_ms")]
    pub retry_ms: u64,
    /// Open streams at most; more get 503 + Retry-After.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Events a channel subscriber may fall behind the live feed before it
    /// is cut off (and told to resume): what bounds its memory.
    #[serde(default = "default_subscriber_buffer")]
    pub subscriber_buffer: usize,
    /// Longest life of a request's event stream without its reply.
    #[serde(default = "default_request_stream_ms")]
    pub request_stream_ms: u64,
}

impl Default for SseConfig {
    fn default() -> Self {
        Self {
            keep_alive_ms: default_keep_alive_ms(),
            retry_ms: default_retry_ms(),
            max_connections: default_max_connections(),
            subscriber_buffer: default_subscriber_buffer(),
            request_stream_ms: default_request_stream_ms(),
        }
    }
}

/// Bounds of the recent-replies cache: entries, bytes and age.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyCacheConfig {
    #[serde(default = "default_cache_entries")]
    pub max_entries: u64,
    #[serde(default = "default_cache_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_cache_ttl_secs")]
    pub ttl_secs: u64,
}

impl Default for ReplyCacheConfig {
    fn default() -> Self {
        Self {
            max_entries: default_cache_entries(),
            max_bytes: default_cache_bytes(),
            ttl_secs: default_cache_ttl_secs(),
        }
    }
}

/// What a route does with the requests it accepts.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Write the request to the channel and answer 202 once Kafka acked it.
    Publish,
    /// Write the request with a reply address and answer with the worker's
    /// reply, or 202 + `Location` when it takes longer than the wait.
    Request,
}

/// Where a route takes its routing key from. Records with the same key land
/// in the same partition, so a channel keeps their order.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeySource {
    /// A `{param}` of the route's path pattern.
    Path(String),
    /// A request header (case-insensitive).
    Header(String),
    /// A JSON pointer (RFC 6901) into a JSON body, e.g. `/customer/id`.
    Json(String),
}

/// One HTTP method + path pattern and the channel it feeds.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Label in metrics, logs and the `osmosis-route` header; defaults to
    /// `METHOD path`.
    #[serde(default)]
    pub name: Option<String>,
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Path pattern; `{name}` matches one segment, `{*name}` the rest.
    pub path: String,
    /// Channel topic the requests are written to.
    pub channel: String,
    /// What the gateway answers.
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// Routing key source; none lets the partitioner spread the records.
    #[serde(default)]
    pub key: Option<KeySource>,
    /// Largest accepted body; larger bodies get 413 before they are buffered.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Client headers copied into the record (case-insensitive names).
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// Request mode: how long the client waits for the reply before it gets
    /// 202 + `Location` (a `Prefer: wait=N` header can ask for another wait).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Request mode: the longest wait a `Prefer: wait=N` may ask for.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
    /// Time after acceptance when the request is no longer worth
    /// processing; workers skip it after that. None: no deadline.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Who may call the route (with `auth:` configured).
    #[serde(default)]
    pub access: AccessConfig,
    /// Browser origins that may call the route.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
}

impl RouteConfig {
    /// The route's label: its name, or `METHOD path`.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{} {}", self.method.to_ascii_uppercase(), self.path))
    }
}

impl KafkaConfig {
    pub fn produce_timeout(&self) -> Duration {
        Duration::from_millis(self.produce_timeout_ms)
    }

    pub fn metadata_timeout(&self) -> Duration {
        Duration::from_millis(self.metadata_timeout_ms)
    }
}

impl Config {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// Whether any route waits for replies.
    pub fn has_request_routes(&self) -> bool {
        self.routes.iter().any(|route| route.mode == Mode::Request)
    }

    /// Every topic the gateway needs: the channels, and the reply topic when
    /// a route waits for replies.
    pub fn topics(&self) -> BTreeMap<String, ChannelConfig> {
        let mut topics = self.channels.clone();
        if self.has_request_routes() {
            topics.insert(
                self.replies.topic.clone(),
                ChannelConfig {
                    partitions: self.replies.partitions,
                    replication_factor: self.replies.replication_factor,
                    min_insync_replicas: self.replies.min_insync_replicas,
                    subscribable: false,
                    access: AccessConfig::default(),
                    cors: None,
                },
            );
        }
        if let Some(idempotency) = &self.idempotency {
            topics.insert(
                idempotency.topic.clone(),
                ChannelConfig {
                    partitions: idempotency.partitions,
                    replication_factor: idempotency.replication_factor,
                    min_insync_replicas: None,
                    subscribable: false,
                    access: AccessConfig::default(),
                    cors: None,
                },
            );
        }
        topics
    }
}

/// Accepts client properties as flat `name: value` pairs and also nested
/// (`ssl: { ca: { location: x } }`, which is what environment overrides
/// produce), with numbers and booleans as their text.
fn flatten_properties<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    fn flatten(prefix: &str, value: serde_json::Value, out: &mut BTreeMap<String, String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (name, value) in map {
                    let name = if prefix.is_empty() {
                        name
                    } else {
                        format!("{prefix}.{name}")
                    };
                    flatten(&name, value, out);
                }
            }
            serde_json::Value::String(text) => {
                out.insert(prefix.to_owned(), text);
            }
            other => {
                out.insert(prefix.to_owned(), other.to_string());
            }
        }
    }
    let nested = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
    let mut out = BTreeMap::new();
    flatten("", serde_json::Value::Object(nested), &mut out);
    Ok(out)
}

fn default_mode() -> Mode {
    Mode::Publish
}

#[cfg(test)]
mod tests;
