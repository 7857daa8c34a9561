//! The gateway's Prometheus metrics, all prefixed `osmosis_gateway_`.

use osmosis_support::metrics::{RegisterMetric, render};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a finished HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Matched path pattern, or `unmatched`.
    pub route: String,
    pub method: String,
    pub status: u16,
}

/// Labels of a duration measured per route pattern.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

/// Labels of a produce to a channel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    pub channel: String,
}

/// Labels of event-stream metrics: `request` or `channel`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub kind: String,
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
            registry,
        }
    }
}

impl Metrics {
    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}
