//! `osmosis-autoscaler`: scales a channel's workers on its backlog and
//! arrival rate — the concentration gradient between the messages entering
//! a channel and the workers draining it — instead of CPU.
//!
//! # Layout
//! - [`policy`]: pure arithmetic from an observation and a spec to a replica
//!   count, with the numbers that caused it. No I/O, no clock.
//!
//! Measurement (Kafka admin calls) and actuation (Kubernetes `/scale`, or a
//! pool of local processes) live apart from the policy and meet it in one
//! small loop, so each can be tested alone.

pub mod policy;
