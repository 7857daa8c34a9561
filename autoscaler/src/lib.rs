//! `osmosis-autoscaler`: scales a channel's workers on its backlog and
//! arrival rate — the concentration gradient between the messages entering
//! a channel and the workers draining it — instead of CPU.
//!
//! # Layout
//! - [`crd`]: the `ChannelScaler` custom resource, with CEL validation rules.
//! - [`controller`]: the kube-runtime controller: each poll (or surge) a
//!   turn of the scaler's loop against the target's `/scale` subresource,
//!   then status (server-side apply), Events and metrics. One file per
//!   step under `controller/`, with the context they share in
//!   `controller/context.rs` and each scaler's memory in
//!   `controller/memory.rs`.
//! - [`policy`]: pure arithmetic from an observation and a spec to a replica
//!   count, with the numbers that caused it. No I/O, no clock. Its types in
//!   `policy/types.rs`, the HPA-style behaviour rules in `policy/behavior.rs`.
//! - [`estimate`]: from raw Kafka samples (watermarks, committed offsets,
//!   group state) to observations: lag semantics, rates, capacity, time lag,
//!   stuck partitions. Also pure.
//! - [`measure`]: the Kafka admin calls that produce those samples.
//! - [`metrics`]: the controller's Prometheus metrics and health endpoints.
//! - [`scaling`]: the scaling loop, written once: measure, estimate,
//!   decide, scale a [`scaling::Target`]; and the surge check between polls.
//! - [`pool`]: the local target, a pool of worker processes, and the
//!   local autoscaler that scales it without a cluster.
//!
//! Measurement (Kafka admin calls) and actuation (Kubernetes `/scale`, or a
//! pool of local processes) live apart from the policy and meet it in one
//! small loop, so each can be tested alone. Modules import downward: the
//! files under `controller/` and `policy/` import their shared leaves
//! (`context`, `memory`, `types`), never the parent that uses them.

pub mod controller;
pub mod crd;
pub mod estimate;
pub mod measure;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod scaling;
