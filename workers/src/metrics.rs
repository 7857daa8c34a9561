//! The worker's Prometheus metrics (prefix `osmosis_worker_`); `progress`
//! serves them with `/healthz` through [`osmosis_support::ops`].

use osmosis_support::metrics::RegisterMetric;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// How the runtime finished with a message.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are Prometheus-style snake case
pub enum Outcome {
    /// The handler replied (or succeeded, for requests without a reply).
    replied,
    /// The handler failed every attempt; the request went to the DLQ.
    dead_lettered,
    /// The deadline had passed: not processed.
    expired,
    /// Not a valid Osmosis request record: dead-lettered without running.
    malformed,
    /// Kafka refused the reply for good (too large, its partition gone):
    /// a problem reply went instead when it could, and the request to the DLQ.
    undeliverable,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub partition: i64,
}

/// A record Kafka refused for good: which one (`reply`, `dead_letter`) and
/// why (`too_large`, `unknown_destination`, `rejected`); both closed sets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub record: &'static str,
    pub reason: &'static str,
}

/// A stalled partition's state: `slow` (its handler runs long) or `stuck`
/// (what it must send is not acknowledged).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StallLabels {
    pub state: &'static str,
}

/// Every metric the worker exports.
pub struct Metrics {
    registry: Registry,
    pub messages: Family<OutcomeLabels, Counter>,
    pub handler_duration: Histogram,
    pub in_flight: Gauge,
    pub retries: Counter,
    pub redeliveries: Counter,
    pub partition_lag: Family<PartitionLabels, Gauge>,
    pub refused: Family<RefusalLabels, Counter>,
    pub partition_busy_seconds: Family<PartitionLabels, Gauge<f64, AtomicU64>>,
    pub partitions_stalled: Family<StallLabels, Gauge>,
    pub partitions_paused: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("osmosis_worker");
        Self {
            messages: registry.add(
                "messages",
                "Messages finished, by outcome (replied, dead_lettered, expired, malformed)",
                Family::default(),
            ),
            handler_duration: registry.add(
                "handler_duration_seconds",
                "Time one handler attempt took",
                Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            ),
            in_flight: registry.add("in_flight", "Messages being processed", Gauge::default()),
            retries: registry.add(
                "retries",
                "Handler attempts retried after an error",
                Counter::default(),
            ),
            redeliveries: registry.add(
                "redeliveries",
                "Messages seen again by this process (a rebalance or a failed commit)",
                Counter::default(),
            ),
            partition_lag: registry.add(
                "partition_lag",
                "Messages behind the end of each assigned partition, as the consumer sees it",
                Family::default(),
            ),
            refused: registry.add(
                "records_refused",
                "Records Kafka refused for good (never retried), by record and reason; a dead letter then sent cut down counts too",
                Family::default(),
            ),
            partition_busy_seconds: registry.add(
                "partition_busy_seconds",
                "Time the partition's current message has been in process (0: idle)",
                Family::default(),
            ),
            partitions_stalled: registry.add(
                "partitions_stalled",
                "Partitions whose message is in process beyond the bound: slow (handler) or stuck (delivery)",
                Family::default(),
            ),
            partitions_paused: registry.add(
                "partitions_paused",
                "Partitions not fetched because their pipeline is full (the others are fetched on)",
                Gauge::default(),
            ),
            registry,
        }
    }
}

impl Metrics {
    pub fn count(&self, outcome: Outcome) {
        self.messages
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn render(&self) -> String {
        osmosis_support::metrics::render(&self.registry)
    }
}
