//! The gateway's Prometheus metrics, all prefixed `osmosis_gateway_`.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use axum::extract::MatchedPath;
use osmosis_support::metrics::{RegisterMetric, render};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a finished HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: RoutePattern,
    pub method: &'static str,
    pub status: u16,
}

/// Labels of a duration measured per route pattern.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: RoutePattern,
}

/// A request's route label: the router's own pattern (shared, so that
/// counting a request copies no string), or `unmatched`.
#[derive(Clone, Debug)]
pub enum RoutePattern {
    Matched(MatchedPath),
    Unmatched,
}

impl RoutePattern {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Matched(path) => path.as_str(),
            Self::Unmatched => "unmatched",
        }
    }
}

impl PartialEq for RoutePattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RoutePattern {}

impl Hash for RoutePattern {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl EncodeLabelValue for RoutePattern {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Labels of a produce to a channel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    /// Shared with the route, so that timing a produce copies no string.
    pub channel: Arc<str>,
}

/// Labels of event-stream metrics: `request` or `channel`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub kind: &'static str,
}

/// Labels of a bound that bit: which one, from [`Limit`]'s closed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

/// The bounds on what clients control, as the `limit` label of
/// `osmosis_gateway_limited`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// A client address over its request rate (429).
    RateClient,
    /// A route over its request rate (429).
    RateRoute,
    /// The total connection cap (503, closed).
    Connections,
    /// A client address over its connection cap (503, closed).
    ConnectionsClient,
    /// A connection idle (no byte either way) past its timeout, closed.
    Idle,
    /// Too many catch-ups at once (503).
    CatchUps,
    /// A catch-up whose subscriber did not take an event in time.
    CatchUpStalled,
    /// Too many request-mode calls waiting (503).
    Waiting,
    /// The producer queue above the shedding threshold (503).
    Shed,
    /// Too many lookups at once (503).
    Lookups,
    /// A lookup that did not finish within its bound (503).
    LookupIncomplete,
}

impl Limit {
    pub fn label(self) -> LimitLabels {
        LimitLabels {
            limit: match self {
                Limit::RateClient => "rate_client",
                Limit::RateRoute => "rate_route",
                Limit::Connections => "connections",
                Limit::ConnectionsClient => "connections_client",
                Limit::Idle => "idle",
                Limit::CatchUps => "catch_ups",
                Limit::CatchUpStalled => "catch_up_stalled",
                Limit::Waiting => "waiting",
                Limit::Shed => "shed",
                Limit::Lookups => "lookups",
                Limit::LookupIncomplete => "lookup_incomplete",
            },
        }
    }
}

/// Labels of an `Idempotency-Key` outcome: `new`, `replayed`, `conflict`
/// (in flight), `mismatch` (another body), `resolved` (a write that may
/// have landed, looked up in the channel).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdempotencyLabels {
    pub outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~8 s: produce acks are sub-millisecond on loopback and
    // seconds when a broker is failing over.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// A latency histogram per label set.
fn latency_histograms<L: Clone + std::hash::Hash + Eq>() -> Family<L, Histogram, fn() -> Histogram>
{
    Family::new_with_constructor(latency_histogram)
}

/// Every metric the gateway exports, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub produce_duration: Family<ChannelLabels, Histogram, fn() -> Histogram>,
    pub in_flight: Gauge,
    pub producer_queue_depth: Gauge,
    pub sse_streams: Family<StreamLabels, Gauge>,
    pub sse_events: Family<StreamLabels, Counter>,
    pub sse_slow_disconnects: Counter,
    pub sse_catch_up_reads: Counter,
    pub reply_partitions_owned: Gauge,
    pub requests_waiting: Gauge,
    pub reply_rebalances: Counter,
    pub limited: Family<LimitLabels, Counter>,
    pub connections_open: Gauge,
    pub idempotency: Family<IdempotencyLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("osmosis_gateway");
        Self {
            requests: registry.add(
                "requests",
                "HTTP requests answered, by route pattern, method and status",
                Family::default(),
            ),
            request_duration: registry.add(
                "request_duration_seconds",
                "Time from request received to response headers, by route pattern",
                latency_histograms(),
            ),
            produce_duration: registry.add(
                "produce_duration_seconds",
                "Time from handing a record to the producer to Kafka's acknowledgement",
                latency_histograms(),
            ),
            in_flight: registry.add(
                "requests_in_flight",
                "HTTP requests being served",
                Gauge::default(),
            ),
            producer_queue_depth: registry.add(
                "producer_queue_depth",
                "Records handed to the producer and not yet acknowledged",
                Gauge::default(),
            ),
            sse_streams: registry.add(
                "sse_streams",
                "Open Server-Sent Event streams, by kind (request, channel)",
                Family::default(),
            ),
            sse_events: registry.add(
                "sse_events",
                "Server-Sent Events sent, by kind",
                Family::default(),
            ),
            sse_slow_disconnects: registry.add(
                "sse_slow_disconnects",
                "Channel subscribers cut off for falling too far behind",
                Counter::default(),
            ),
            sse_catch_up_reads: registry.add(
                "sse_catch_up_reads",
                "Subscriptions that read their catch-up from Kafka before joining the live feed",
                Counter::default(),
            ),
            reply_partitions_owned: registry.add(
                "reply_partitions_owned",
                "Reply partitions this gateway consumes (group membership)",
                Gauge::default(),
            ),
            requests_waiting: registry.add(
                "requests_waiting",
                "Request-mode calls waiting here for their reply (clients that left are not)",
                Gauge::default(),
            ),
            reply_rebalances: registry.add(
                "reply_rebalances",
                "Changes of this gateway's reply partitions (assigned or revoked)",
                Counter::default(),
            ),
            limited: registry.add(
                "limited",
                "Requests and connections refused or cut by a bound on what clients control, by limit",
                Family::default(),
            ),
            connections_open: registry.add(
                "connections_open",
                "Client connections open on the public listener",
                Gauge::default(),
            ),
            idempotency: registry.add(
                "idempotency_keys",
                "Calls with an Idempotency-Key, by outcome (new, replayed, conflict, mismatch, resolved)",
                Family::default(),
            ),
            registry,
        }
    }
}

impl Metrics {
    /// Counts a bound that bit.
    pub fn limited(&self, limit: Limit) {
        self.limited.get_or_create(&limit.label()).inc();
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}
