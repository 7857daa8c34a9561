//! The controller's Prometheus metrics (prefix `osmosis_autoscaler_`), per
//! scaler, and what `/metrics` and `/readyz` report.

use std::sync::atomic::{AtomicBool, Ordering};

use osmosis_support::metrics::RegisterMetric;
use osmosis_support::ops::Health;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which scaler a sample belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScalerLabels {
    pub namespace: String,
    pub name: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Every metric the controller exports.
pub struct Metrics {
    registry: Registry,
    pub lag: Family<ScalerLabels, Gauge>,
    pub time_lag_seconds: Family<ScalerLabels, FloatGauge>,
    pub arrival_rate: Family<ScalerLabels, FloatGauge>,
    pub processing_rate: Family<ScalerLabels, FloatGauge>,
    pub desired_replicas: Family<ScalerLabels, Gauge>,
    pub current_replicas: Family<ScalerLabels, Gauge>,
    pub scale_events: Family<ScalerLabels, Counter>,
    pub measurement_errors: Family<ScalerLabels, Counter>,
    /// Partitions without progress that a live member holds.
    pub slow_partitions: Family<ScalerLabels, Gauge>,
    /// Partitions without progress that no live member holds.
    pub stuck_partitions: Family<ScalerLabels, Gauge>,
    /// Kafka measurements taken (polls and surges).
    pub measurements: Family<ScalerLabels, Counter>,
    /// Reconciles brought forward by the surge watch.
    pub surges: Family<ScalerLabels, Counter>,
    pub reconcile_duration: Histogram,
    /// The scaler's `maxReplicas`, so an alert can see a scaler at its ceiling.
    pub max_replicas: Family<ScalerLabels, Gauge>,
    /// The scaler's `maxTimeLagSeconds` (its SLO), when it has one.
    pub max_time_lag_seconds: Family<ScalerLabels, FloatGauge>,
    /// 1 while a HorizontalPodAutoscaler also scales the target (not scaled).
    pub hpa_conflict: Family<ScalerLabels, Gauge>,
    /// 1 while this replica holds the leader Lease and reconciles.
    pub leader: Gauge,
    /// Set once the controller runs (and, with leader election, leads).
    pub ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("osmosis_autoscaler");
        Self {
            lag: registry.add("lag", "Messages not yet processed", Family::default()),
            time_lag_seconds: registry.add(
                "time_lag_seconds",
                "Age of the oldest unprocessed message",
                Family::default(),
            ),
            arrival_rate: registry.add(
                "arrival_rate",
                "Messages entering the channel per second",
                Family::default(),
            ),
            processing_rate: registry.add(
                "processing_rate",
                "Messages processed per second",
                Family::default(),
            ),
            desired_replicas: registry.add(
                "desired_replicas",
                "Replicas the policy asks for",
                Family::default(),
            ),
            current_replicas: registry.add(
                "current_replicas",
                "Replicas of the target",
                Family::default(),
            ),
            scale_events: registry.add(
                "scale_events",
                "Changes of the target's replicas",
                Family::default(),
            ),
            measurement_errors: registry.add(
                "measurement_errors",
                "Kafka measurements that failed (the last decision was held)",
                Family::default(),
            ),
            slow_partitions: registry.add(
                "slow_partitions",
                "Partitions with lag and no progress that a live group member holds (their lag counts)",
                Family::default(),
            ),
            stuck_partitions: registry.add(
                "stuck_partitions",
                "Partitions with lag and no progress that no live group member holds (their lag is left out, never down to zero)",
                Family::default(),
            ),
            measurements: registry.add(
                "measurements",
                "Kafka measurements taken, by poll or surge",
                Family::default(),
            ),
            surges: registry.add(
                "surges",
                "Measurements brought forward by the surge watch",
                Family::default(),
            ),
            reconcile_duration: registry.add(
                "reconcile_duration_seconds",
                "Time one reconcile took",
                Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            ),
            max_replicas: registry.add(
                "max_replicas",
                "The scaler's maxReplicas",
                Family::default(),
            ),
            max_time_lag_seconds: registry.add(
                "max_time_lag_seconds",
                "The scaler's maxTimeLagSeconds (its time-lag SLO), when set",
                Family::default(),
            ),
            hpa_conflict: registry.add(
                "hpa_conflict",
                "1 while a HorizontalPodAutoscaler also scales the target",
                Family::default(),
            ),
            leader: registry.add(
                "leader",
                "1 while this replica holds the leader Lease",
                Gauge::default(),
            ),
            ready: AtomicBool::new(false),
            registry,
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        osmosis_support::metrics::render(&self.registry)
    }
}

impl Health for Metrics {
    fn metrics(&self) -> String {
        self.render()
    }

    /// Set once the controller runs (and, with leader election, leads).
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}
