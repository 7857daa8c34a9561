//! `--gateway-property KEY=VALUE`: librdkafka properties for the gateway a
//! benchmark starts, written into its YAML and named in the table header,
//! so that a setting (e.g. `linger.ms`) is compared by measurement. The
//! flags parse with the workers' own parser, `osmosis_support`'s
//! `PropertyParser`. The raw producers next to the gateway take the same
//! properties on top of the gateway's own producer settings.

use anyhow::Context;
use osmosis_gateway::config::KafkaConfig;
use osmosis_gateway::writer::producer_settings;
use rdkafka::producer::FutureProducer;
use serde_json::{Map, Value, json};

/// The gateway's librdkafka properties from the command line.
#[derive(Clone, Debug, Default)]
pub struct GatewayProperties(pub Vec<(String, String)>);

impl GatewayProperties {
    /// The gateway config's `kafka:` line for `brokers` with these
    /// properties.
    pub fn kafka_yaml(&self, brokers: &str) -> String {
        let properties: Vec<String> = self
            .0
            .iter()
            .map(|(key, value)| format!("{key}: \"{value}\""))
            .collect();
        format!(
            "kafka: {{ brokers: \"{brokers}\", properties: {{ {} }} }}\n",
            properties.join(", ")
        )
    }

    /// How the table header names them.
    pub fn describe(&self) -> String {
        if self.0.is_empty() {
            return "defaults".to_owned();
        }
        let pairs: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.join(", ")
    }

    /// A plain producer with the gateway's producer settings
    /// ([`producer_settings`]: no linger, acks=all, idempotent) and these
    /// properties, so that a raw floor differs from the gateway only by
    /// what the gateway does around the send.
    pub fn raw_producer(&self, brokers: &str) -> anyhow::Result<FutureProducer> {
        let properties: Map<String, Value> = self
            .0
            .iter()
            .map(|(key, value)| (key.clone(), Value::String(value.clone())))
            .collect();
        let config: KafkaConfig =
            serde_json::from_value(json!({ "brokers": brokers, "properties": properties }))
                .context("the gateway's Kafka settings")?;
        producer_settings(&config)
            .build()
            .create()
            .context("creating a raw producer")
    }
}
