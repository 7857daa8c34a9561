//! Bounds on what clients control, each counted when it bites
//! (`osmosis_gateway_limited{limit}`) and answered as problem+json: request
//! rates ([`rate`]), connections and their timeouts ([`connections`]),
//! request-mode calls waiting for replies and the producer queue (here).
//! Catch-ups are bounded where they run ([`crate::subscriptions`]), Kafka
//! lookups in [`crate::replies::lookup`].
//!
//! Owns the decisions only: it writes nothing to Kafka and serves no
//! connection (that is [`crate::listen`]).
//!
//! # Layout
//! - [`client`]: the client address a bound counts against (IPv6 by /64).
//! - [`forwarded`]: the client behind trusted proxies, for per-request
//!   bounds and logs.
//! - [`rate`]: token buckets per client address and per route → 429.
//! - [`connections`]: the connection caps and the idle timeout.
//! - this file: the [`Limits`] handlers consult.

pub mod client;
pub mod connections;
pub mod forwarded;
pub mod rate;

use std::sync::Arc;
use std::time::Duration;

use crate::config::LimitsConfig;
use crate::metrics::{Limit, Metrics};
use crate::problem::Problem;

/// The bounds handlers consult on every call.
pub struct Limits {
    /// Request rates per client address and per route.
    pub rate: Arc<rate::RateLimits>,
    /// Who a request's client is, behind trusted proxies.
    pub clients: Arc<forwarded::ClientAddresses>,
    /// Producer queue depth above which new requests are shed.
    shed_queue_depth: u64,
    /// Request-mode calls that may wait here at once.
    max_waiting: usize,
    metrics: Arc<Metrics>,
}

impl Limits {
    pub fn new(config: &LimitsConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            rate: Arc::new(rate::RateLimits::new(&config.rate, Arc::clone(&metrics))),
            clients: Arc::new(forwarded::ClientAddresses::new(
                config
                    .trusted_proxy_networks()
                    .expect("validated with the configuration"),
                config.client_address_header,
            )),
            shed_queue_depth: config.shed_queue_depth,
            max_waiting: config.max_waiting_requests,
            metrics,
        }
    }

    /// 503 + Retry-After when the producer holds `queue_depth` records not
    /// yet acknowledged, at or above the shedding threshold: Kafka is
    /// slower than the ingest, and a full queue would refuse every write.
    pub fn shed(&self, queue_depth: u64, retry_after: Duration) -> Result<(), Problem> {
        if queue_depth < self.shed_queue_depth {
            return Ok(());
        }
        self.metrics.limited(Limit::Shed);
        Err(Problem::Unavailable {
            reason: format!(
                "the gateway is shedding load: {queue_depth} records wait for Kafka's acknowledgement"
            ),
            retry_after,
        })
    }

    /// 503 + Retry-After when `waiting` request-mode calls already wait
    /// here for their replies.
    pub fn admit_waiting(&self, waiting: usize, retry_after: Duration) -> Result<(), Problem> {
        if waiting < self.max_waiting {
            return Ok(());
        }
        self.metrics.limited(Limit::Waiting);
        Err(Problem::Unavailable {
            reason: format!("{waiting} requests already wait for their replies here"),
            retry_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_at_the_threshold_is_shed_and_counted() {
        let metrics = Arc::new(Metrics::default());
        let config = LimitsConfig {
            shed_queue_depth: 10,
            max_waiting_requests: 2,
            ..LimitsConfig::default()
        };
        let limits = Limits::new(&config, Arc::clone(&metrics));
        let wait = Duration::from_secs(1);
        assert!(limits.shed(9, wait).is_ok());
        assert!(matches!(
            limits.shed(10, wait),
            Err(Problem::Unavailable { .. })
        ));
        assert!(limits.admit_waiting(1, wait).is_ok());
        assert!(limits.admit_waiting(2, wait).is_err());
        let rendered = metrics.render();
        assert!(rendered.contains(r#"osmosis_gateway_limited_total{limit="shed"} 1"#));
        assert!(rendered.contains(r#"osmosis_gateway_limited_total{limit="waiting"} 1"#));
    }
}
