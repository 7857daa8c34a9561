//! What every Osmosis process shares and no component owns: the gateway,
//! the workers and the autoscaler each need it, written once here.
//!
//! # Layout
//! - [`telemetry`]: logging set-up (text or JSON lines, `RUST_LOG`).
//! - [`shutdown`]: the SIGTERM/SIGINT future every binary stops on.
//! - [`kafka`]: Kafka client settings with one documented precedence, the
//!   start-up check of them against the cluster (authentication and TLS
//!   failures said at once), keeping property values out of librdkafka's
//!   text, `name=value` properties, the conversion between protocol header
//!   pairs and Kafka record headers, and the client context that logs
//!   librdkafka's own errors.
//! - [`metrics`]: registering metrics in place and rendering a registry.
//! - [`ops`]: `/metrics`, `/healthz`, `/readyz` for processes without a
//!   router of their own.
//!
//! It knows nothing of channels, routes or replies: the wire contract lives
//! in `osmosis-protocol`, and each component's behaviour in its own crate.

pub mod kafka;
pub mod metrics;
pub mod ops;
pub mod shutdown;
pub mod telemetry;

pub use shutdown::shutdown_signal;
pub use telemetry::{LogArgs, LogFormat, init_logging};
