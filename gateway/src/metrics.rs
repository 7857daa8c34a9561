//! The gateway's Prometheus metrics, all prefixed `osmosis_gateway_`.

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
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("osmosis_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests answered, by route pattern, method and status",
            requests.clone(),
        );
        let request_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "request_duration_seconds",
            "Time from request received to response headers, by route pattern",
            request_duration.clone(),
        );
        let produce_duration =
            Family::<ChannelLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "produce_duration_seconds",
            "Time from handing a record to the producer to Kafka's acknowledgement",
            produce_duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "HTTP requests being served",
            in_flight.clone(),
        );
        let producer_queue_depth = Gauge::default();
        registry.register(
            "producer_queue_depth",
            "Records handed to the producer and not yet acknowledged",
            producer_queue_depth.clone(),
        );
        let sse_streams = Family::<StreamLabels, Gauge>::default();
        registry.register(
            "sse_streams",
            "Open Server-Sent Event streams, by kind (request, channel)",
            sse_streams.clone(),
        );
        let sse_events = Family::<StreamLabels, Counter>::default();
        registry.register(
            "sse_events",
            "Server-Sent Events sent, by kind",
            sse_events.clone(),
        );
        let sse_slow_disconnects = Counter::default();
        registry.register(
            "sse_slow_disconnects",
            "Channel subscribers cut off for falling too far behind",
            sse_slow_disconnects.clone(),
        );
        let sse_catch_up_reads = Counter::default();
        registry.register(
            "sse_catch_up_reads",
            "Subscriptions that read their catch-up from Kafka before joining the live feed",
            sse_catch_up_reads.clone(),
        );
        Self {
            registry,
            sse_streams,
            sse_events,
            sse_slow_disconnects,
            sse_catch_up_reads,
            requests,
            request_duration,
            produce_duration,
            in_flight,
            producer_queue_depth,
        }
    }
}

impl Metrics {
    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
