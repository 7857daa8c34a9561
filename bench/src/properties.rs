//! `--gateway-property KEY=VALUE`: librdkafka properties for the gateway a
//! benchmark starts, written into its YAML and named in the table header,
//! so that a setting (e.g. `linger.ms`) is compared by measurement.

/// The gateway's librdkafka properties from the command line.
#[derive(Clone, Debug, Default)]
pub struct GatewayProperties(pub Vec<(String, String)>);

/// A clap value parser: `KEY=VALUE` (the value may hold `=`).
pub fn parse(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    Ok((key.to_owned(), value.to_owned()))
}

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
