//! The test broker's SASL_SSL listener: SCRAM-SHA-512 over TLS, with a CA
//! made for the run (`scripts/kafka.sh` with `KAFKA_SASL_SSL_PORT`;
//! `scripts/test.sh` starts the suite's broker with one). Its address, CA
//! and credentials come from the environment; without them a test fails
//! and says how to provide them: it never skips.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

/// The SASL_SSL listener's bootstrap address.
pub const ADDRESS_ENV: &str = "OSMOSIS_TEST_KAFKA_SASL_SSL";
/// The PEM file of the CA that signed the broker's certificate.
pub const CA_ENV: &str = "OSMOSIS_TEST_KAFKA_CA";
/// The SCRAM user.
pub const USERNAME_ENV: &str = "OSMOSIS_TEST_KAFKA_USERNAME";
/// The SCRAM user's password.
pub const PASSWORD_ENV: &str = "OSMOSIS_TEST_KAFKA_PASSWORD";

/// The mechanism `scripts/kafka.sh` enables on the listener.
pub const MECHANISM: &str = "SCRAM-SHA-512";

/// How a client reaches the SASL_SSL listener.
#[derive(Clone, Debug)]
pub struct SecureKafka {
    pub bootstrap: String,
    pub ca_location: String,
    pub username: String,
    pub password: String,
}

impl SecureKafka {
    /// The listener from the environment. Panics naming what is missing and
    /// how to start a broker that has one.
    pub fn from_env() -> Self {
        let names = [ADDRESS_ENV, CA_ENV, USERNAME_ENV, PASSWORD_ENV];
        let values: Vec<Option<String>> = names
            .iter()
            .map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
            .collect();
        let missing: Vec<&str> = names
            .iter()
            .zip(&values)
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| *name)
            .collect();
        assert!(
            missing.is_empty(),
            "{} not set. These tests need a broker with a SASL_SSL listener: run `make test` \
             (scripts/test.sh starts one), or `KAFKA_SASL_SSL_PORT=<port> scripts/kafka.sh up` \
             and set {ADDRESS_ENV}, {CA_ENV}, {USERNAME_ENV} and {PASSWORD_ENV} from \
             `scripts/kafka.sh env` (KAFKA_SASL_SSL_BOOTSTRAP, KAFKA_CA_LOCATION, \
             KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD).",
            missing.join(", ")
        );
        let mut values = values.into_iter().flatten();
        let mut next = || values.next().expect("checked above");
        let kafka = Self {
            bootstrap: next(),
            ca_location: next(),
            username: next(),
            password: next(),
        };
        if let Err(error) = kafka.reachable(Duration::from_secs(15)) {
            panic!(
                "the SASL_SSL listener at {} does not accept the test's client ({error}); \
                 is the broker running, and are {CA_ENV}, {USERNAME_ENV} and {PASSWORD_ENV} its own?",
                kafka.bootstrap
            );
        }
        kafka
    }

    /// The same listener with another password.
    pub fn with_password(&self, password: &str) -> Self {
        Self {
            password: password.to_owned(),
            ..self.clone()
        }
    }

    /// The librdkafka properties of a client of the listener (without
    /// `bootstrap.servers`).
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        vec![
            ("security.protocol", "SASL_SSL".to_owned()),
            ("sasl.mechanism", MECHANISM.to_owned()),
            ("sasl.username", self.username.clone()),
            ("sasl.password", self.password.clone()),
            ("ssl.ca.location", self.ca_location.clone()),
        ]
    }

    /// The properties as `--kafka-property name=value` arguments.
    pub fn property_args(&self) -> Vec<String> {
        self.properties()
            .into_iter()
            .flat_map(|(name, value)| ["--kafka-property".to_owned(), format!("{name}={value}")])
            .collect()
    }

    /// A client configuration of the listener.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (name, value) in self.properties() {
            config.set(name, value);
        }
        config
    }

    fn reachable(&self, timeout: Duration) -> Result<(), String> {
        let producer: BaseProducer = self.client_config().create().map_err(|e| e.to_string())?;
        producer
            .client()
            .fetch_metadata(None, timeout)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
