//! The controller's Prometheus metrics (prefix `osmosis_autoscaler_`), per
//! scaler, and the small HTTP server for `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
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
    /// Kafka measurements taken (polls and surges).
    pub measurements: Family<ScalerLabels, Counter>,
    /// Reconciles brought forward by the surge watch.
    pub surges: Family<ScalerLabels, Counter>,
    pub reconcile_duration: Histogram,
    /// Set once the controller runs (and, with leader election, leads).
    pub ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("osmosis_autoscaler");
        let lag = Family::<ScalerLabels, Gauge>::default();
        registry.register("lag", "Messages not yet processed", lag.clone());
        let time_lag_seconds = Family::<ScalerLabels, FloatGauge>::default();
        registry.register(
            "time_lag_seconds",
            "Age of the oldest unprocessed message",
            time_lag_seconds.clone(),
        );
        let arrival_rate = Family::<ScalerLabels, FloatGauge>::default();
        registry.register(
            "arrival_rate",
            "Messages entering the channel per second",
            arrival_rate.clone(),
        );
        let processing_rate = Family::<ScalerLabels, FloatGauge>::default();
        registry.register(
            "processing_rate",
            "Messages processed per second",
            processing_rate.clone(),
        );
        let desired_replicas = Family::<ScalerLabels, Gauge>::default();
        registry.register(
            "desired_replicas",
            "Replicas the policy asks for",
            desired_replicas.clone(),
        );
        let current_replicas = Family::<ScalerLabels, Gauge>::default();
        registry.register(
            "current_replicas",
            "Replicas of the target",
            current_replicas.clone(),
        );
        let scale_events = Family::<ScalerLabels, Counter>::default();
        registry.register(
            "scale_events",
            "Changes of the target's replicas",
            scale_events.clone(),
        );
        let measurement_errors = Family::<ScalerLabels, Counter>::default();
        registry.register(
            "measurement_errors",
            "Kafka measurements that failed (the last decision was held)",
            measurement_errors.clone(),
        );
        let measurements = Family::<ScalerLabels, Counter>::default();
        registry.register(
            "measurements",
            "Kafka measurements taken, by poll or surge",
            measurements.clone(),
        );
        let surges = Family::<ScalerLabels, Counter>::default();
        registry.register(
            "surges",
            "Measurements brought forward by the surge watch",
            surges.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            reconcile_duration.clone(),
        );
        Self {
            registry,
            lag,
            time_lag_seconds,
            arrival_rate,
            processing_rate,
            desired_replicas,
            current_replicas,
            scale_events,
            measurement_errors,
            measurements,
            surges,
            reconcile_duration,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listen`; returns the
/// bound address.
pub async fn serve(listen: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready").into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
                }
            }),
        )
        .with_state(metrics);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::warn!(%error, "metrics server stopped");
        }
    });
    Ok(addr)
}
