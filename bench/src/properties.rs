//! `--gateway-property KEY=VALUE`: librdkafka properties for the gateway a
//! benchmark starts, written into its YAML and named in the table header,
//! so that a setting (e.g. `linger.ms`) is compared by measurement. The
//! flags parse with the workers' own parser, `osmosis_support`'s
//! `PropertyParser`.

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
}
