//! Metrics that register themselves: a component's metrics struct is built
//! as one struct literal, each field registered where it is created.

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::{Metric, Registry};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Registers metrics in place: `registry.add("name", "help", Counter::default())`
/// returns the metric, so a struct field is declared and registered at once.
pub trait RegisterMetric {
    /// Registers `metric` under `name` with `help`, and returns it.
    fn add<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M;
}

impl RegisterMetric for Registry {
    fn add<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.register(name, help, metric.clone());
        metric
    }
}

/// The registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    encode(&mut out, registry).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn a_metric_added_in_place_is_rendered_with_its_prefix_and_help() {
        let mut registry = Registry::with_prefix("osmosis_test");
        let served: Counter = registry.add("served", "Things served", Counter::default());
        served.inc();
        let text = render(&registry);
        assert!(
            text.contains("# HELP osmosis_test_served Things served"),
            "{text}"
        );
        assert!(text.contains("osmosis_test_served_total 1"), "{text}");
    }
}
