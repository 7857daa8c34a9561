//! Harness for the end-to-end tests: real Osmosis binaries against a real
//! Kafka broker.
//!
//! # Layout
//! - [`kafka`]: the shared test broker (from `OSMOSIS_TEST_KAFKA`), fresh
//!   topics per test, reading records back, and a [`kafka::DedicatedKafka`]
//!   that a test may stop, freeze, kill and restart.
//! - [`process`]: the gateway and worker binaries as child processes whose
//!   logs are kept and printed when a test fails.
//! - [`sse`]: reading event streams with a real SSE parser.
//! - [`load`]: publishers, request-mode callers, subscribers and probes
//!   for the fault matrix, and its invariant checked against Kafka.
//! - [`secure_kafka`]: the test broker's SASL_SSL listener (SCRAM over
//!   TLS, from `OSMOSIS_TEST_KAFKA_SASL_SSL` and its CA and credentials).
//! - [`kube`]: the test Kubernetes API server (from `OSMOSIS_TEST_KUBECONFIG`).
//!
//! Nothing here skips: when Kafka or a binary is missing, the test fails with
//! a message that says how to provide it.

pub mod browser;
pub mod kafka;
pub mod kube;
pub mod load;
pub mod process;
pub mod secure_kafka;
pub mod sse;

use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
