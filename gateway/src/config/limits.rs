//! The bounds on what clients control (`limits:`) and the idempotency keys
//! (`idempotency:`): every setting with its default, so that an
//! unconfigured gateway is bounded too.
//!
//! ```yaml
//! limits:
//!   connections: { max: 10000, per_client: 1024, header_read_timeout_ms: 10000, idle_timeout_ms: 120000 }
//!   rate:
//!     per_client: { per_second: 100, burst: 200 }   # default: none
//!     per_route: { per_second: 5000, burst: 10000 } # default: none
//!   catch_ups: { max: 256, buffer_bytes: 262144, send_timeout_ms: 10000 }
//!   max_waiting_requests: 10000
//!   shed_queue_depth: 80000
//!   lookups: { max_concurrent: 4, queue_ms: 1000, max_ms: 5000 }
//!   trusted_proxies: [10.0.0.0/8]               # default: none
//!   client_address_header: x-forwarded-for      # or forwarded
//! idempotency: { topic: osmosis.idempotency, window_secs: 86400 }
//! ```

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

/// A setting of `limits:` or `idempotency:` that makes no sense, with the
/// field it is about (a leaf: the configuration turns it into its error).
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Bounds on every resource a client's calls take.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Accepted connections and their timeouts.
    #[serde(default)]
    pub connections: ConnectionLimits,
    /// Request rates (token buckets); none by default.
    #[serde(default)]
    pub rate: RateLimits,
    /// Subscriptions that read their catch-up from Kafka at once.
    #[serde(default)]
    pub catch_ups: CatchUpLimits,
    /// Request-mode calls waiting on this instance for their reply at once;
    /// more get 503 + Retry-After. Default 10,000.
    #[serde(default = "default_max_waiting_requests")]
    pub max_waiting_requests: usize,
    /// Records handed to the producer and not yet acknowledged above which
    /// new requests get 503 + Retry-After, before the producer's own queue
    /// (librdkafka's `queue.buffering.max.messages`, 100,000) is full.
    /// Default 80,000.
    #[serde(default = "default_shed_queue_depth")]
    pub shed_queue_depth: u64,
    /// Kafka lookups of requests this instance does not hold.
    #[serde(default)]
    pub lookups: LookupLimits,
    /// Proxies (CIDRs, or single addresses) whose word on a request's
    /// client is taken: a request from one of them counts against the
    /// client named in `client_address_header` (rates per client, logs).
    /// Connection caps stay per peer. Default none: the peer is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The header the trusted proxies name the client in. Only this one is
    /// read: a client could send the other one through a proxy that leaves
    /// it alone.
    #[serde(default)]
    pub client_address_header: ClientAddressHeader,
}

/// Where trusted proxies name the client they forward.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAddressHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

impl ClientAddressHeader {
    /// The header's name, in lower case.
    pub fn name(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            connections: ConnectionLimits::default(),
            rate: RateLimits::default(),
            catch_ups: CatchUpLimits::default(),
            max_waiting_requests: default_max_waiting_requests(),
            shed_queue_depth: default_shed_queue_depth(),
            lookups: LookupLimits::default(),
            trusted_proxies: Vec::new(),
            client_address_header: ClientAddressHeader::default(),
        }
    }
}

/// Accepted connections: a total and a per-client-address cap (excess
/// connections get one 503 + Retry-After and are closed), and the timeouts
/// that free connections a client holds without using them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Open connections at most. Default 10,000.
    #[serde(default = "default_max_connections")]
    pub max: usize,
    /// Open connections per client address (IPv6 by /64) at most.
    /// Default 1,024 (a service's connection pool, or a NAT in front of
    /// many clients, legitimately opens hundreds).
    #[serde(default = "default_connections_per_client")]
    pub per_client: usize,
    /// Longest time a client may take to send a request's head (HTTP/1),
    /// and to start the next one on a kept-alive connection. Default 10 s.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// A connection on which no byte moved either way for this long is
    /// closed (event streams send keep-alive comments, so they stay open;
    /// a reader that stopped reading does not). Default 120 s.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Largest request head (request line and headers) in bytes; larger
    /// ones get 431. Default 64 KiB.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most request headers; more get 431. Default 100.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max: default_max_connections(),
            per_client: default_connections_per_client(),
            header_read_timeout_ms: default_header_read_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
        }
    }
}

/// Token buckets on request rates; a call over a bucket gets 429 with
/// `Retry-After` and `RateLimit-*` headers. None by default: behind a load
/// balancer that hides client addresses every client shares one address,
/// so only the operator knows what a fair per-address rate is.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// Per client address (IPv6 by /64), over all routes.
    #[serde(default)]
    pub per_client: Option<TokenBucket>,
    /// Per route (every client together), each route its own bucket.
    #[serde(default)]
    pub per_route: Option<TokenBucket>,
}

/// A token bucket: `per_second` tokens a second, at most `burst` saved.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    pub per_second: u32,
    pub burst: u32,
}

/// Catch-ups: a resumed or `from=` subscription reads Kafka until it
/// reaches the live feed. One reader per topic serves every catch-up in
/// turns; each catch-up holds at most `buffer_bytes` its subscriber has
/// not taken, so catch-ups hold at most `max × buffer_bytes` (64 MiB by
/// default) besides one reader's 1 MiB prefetch per topic.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatchUpLimits {
    /// Catch-ups at once; more get 503 + Retry-After. Default 256.
    #[serde(default = "default_max_catch_ups")]
    pub max: usize,
    /// Bytes of records a catch-up holds for its subscriber at most; the
    /// reader reads for it again when the subscriber has taken them.
    /// Default 262,144 (256 KiB).
    #[serde(default = "default_catch_up_buffer_bytes")]
    pub buffer_bytes: usize,
    /// Longest a catch-up's buffer may stay full (its subscriber not
    /// reading); then the stream ends with an `interrupted` event (the
    /// client resumes from its last event id). Default 10 s.
    #[serde(default = "default_catch_up_send_timeout_ms")]
    pub send_timeout_ms: u64,
}

impl Default for CatchUpLimits {
    fn default() -> Self {
        Self {
            max: default_max_catch_ups(),
            buffer_bytes: default_catch_up_buffer_bytes(),
            send_timeout_ms: default_catch_up_send_timeout_ms(),
        }
    }
}

/// Lookups of a request's events in Kafka (`GET /v1/requests/{id}` for a
/// request this instance does not hold).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupLimits {
    /// Lookups reading Kafka at once. Default 4.
    #[serde(default = "default_lookup_concurrency")]
    pub max_concurrent: usize,
    /// Longest a lookup waits for its turn before the client gets 503 +
    /// Retry-After. Default 1 s.
    #[serde(default = "default_lookup_queue_ms")]
    pub queue_ms: u64,
    /// Longest one lookup reads; a lookup that did not reach the end of
    /// the partition by then answers 503 + Retry-After, never a guess.
    /// Default 5 s.
    #[serde(default = "default_lookup_max_ms")]
    pub max_ms: u64,
}

impl Default for LookupLimits {
    fn default() -> Self {
        Self {
            max_concurrent: default_lookup_concurrency(),
            queue_ms: default_lookup_queue_ms(),
            max_ms: default_lookup_max_ms(),
        }
    }
}

/// `Idempotency-Key` on configured routes. The keys live in Kafka: each
/// request record carries its key (`osmosis-idempotency-key`) and an index
/// topic (compacted, and deleted after twice the window) maps every key to
/// its request's id and place; every gateway reads the index, so a retry is
/// recognised on any instance. Without this section the header is ignored.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// The index topic. Default `osmosis.idempotency`.
    #[serde(default = "default_idempotency_topic")]
    pub topic: String,
    /// Partitions of the index topic (`--create-topics`). Default 1.
    #[serde(default = "default_idempotency_partitions")]
    pub partitions: i32,
    /// Replicas of the index topic (`--create-topics`). Default 1.
    #[serde(default = "default_idempotency_replication")]
    pub replication_factor: i32,
    /// How long a key is remembered: a retry within the window gets the
    /// first answer, a reuse after it is a new request. Default 24 h.
    #[serde(default = "default_idempotency_window_secs")]
    pub window_secs: u64,
    /// Keys held in memory at most (each gateway holds every key of the
    /// window); the oldest are forgotten first. Default 1,000,000.
    #[serde(default = "default_idempotency_max_keys")]
    pub max_keys: u64,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            topic: default_idempotency_topic(),
            partitions: default_idempotency_partitions(),
            replication_factor: default_idempotency_replication(),
            window_secs: default_idempotency_window_secs(),
            max_keys: default_idempotency_max_keys(),
        }
    }
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let c = &self.connections;
        if c.max == 0 || c.per_client == 0 {
            return Err(invalid(
                "limits.connections",
                "max and per_client must be positive",
            ));
        }
        if c.header_read_timeout_ms == 0 || c.idle_timeout_ms == 0 {
            return Err(invalid(
                "limits.connections",
                "header_read_timeout_ms and idle_timeout_ms must be positive",
            ));
        }
        if c.max_header_bytes < 8192 {
            return Err(invalid(
                "limits.connections.max_header_bytes",
                "must be at least 8192",
            ));
        }
        for (name, bucket) in [
            ("per_client", self.rate.per_client),
            ("per_route", self.rate.per_route),
        ] {
            if bucket.is_some_and(|b| b.per_second == 0 || b.burst == 0) {
                return Err(invalid(
                    format!("limits.rate.{name}"),
                    "per_second and burst must be positive",
                ));
            }
        }
        if self.catch_ups.max == 0
            || self.catch_ups.buffer_bytes == 0
            || self.catch_ups.send_timeout_ms == 0
        {
            return Err(invalid(
                "limits.catch_ups",
                "max, buffer_bytes and send_timeout_ms must be positive",
            ));
        }
        if self.max_waiting_requests == 0 || self.shed_queue_depth == 0 {
            return Err(invalid(
                "limits",
                "max_waiting_requests and shed_queue_depth must be positive",
            ));
        }
        if self.lookups.max_concurrent == 0 || self.lookups.max_ms == 0 {
            return Err(invalid(
                "limits.lookups",
                "max_concurrent and max_ms must be positive",
            ));
        }
        self.trusted_proxy_networks()?;
        Ok(())
    }

    /// The trusted proxies' networks; a single address is a network of one.
    pub fn trusted_proxy_networks(&self) -> Result<Vec<IpNet>, Invalid> {
        let network = |(i, text): (usize, &String)| {
            let text = text.trim();
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map(|network| network.trunc())
                .map_err(|_| {
                    invalid(
                        format!("limits.trusted_proxies[{i}]"),
                        format!("{text:?} is neither an address nor a CIDR (e.g. 10.0.0.0/8)"),
                    )
                })
        };
        self.trusted_proxies
            .iter()
            .enumerate()
            .map(network)
            .collect()
    }
}

impl IdempotencyConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.topic.is_empty() || self.partitions < 1 || self.replication_factor < 1 {
            return Err(invalid(
                "idempotency",
                "topic must be named, partitions and replication_factor positive",
            ));
        }
        if self.window_secs == 0 || self.max_keys == 0 {
            return Err(invalid(
                "idempotency",
                "window_secs and max_keys must be positive",
            ));
        }
        Ok(())
    }
}

fn default_max_connections() -> usize {
    10_000
}
fn default_connections_per_client() -> usize {
    1_024
}
fn default_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_idle_timeout_ms() -> u64 {
    120_000
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_max_catch_ups() -> usize {
    256
}
fn default_catch_up_buffer_bytes() -> usize {
    256 * 1024
}
fn default_catch_up_send_timeout_ms() -> u64 {
    10_000
}
fn default_max_waiting_requests() -> usize {
    10_000
}
fn default_shed_queue_depth() -> u64 {
    80_000
}
fn default_lookup_concurrency() -> usize {
    4
}
fn default_lookup_queue_ms() -> u64 {
    1_000
}
fn default_lookup_max_ms() -> u64 {
    5_000
}
fn default_idempotency_topic() -> String {
    "osmosis.idempotency".into()
}
fn default_idempotency_partitions() -> i32 {
    1
}
fn default_idempotency_replication() -> i32 {
    1
}
fn default_idempotency_window_secs() -> u64 {
    86_400
}
fn default_idempotency_max_keys() -> u64 {
    1_000_000
}
