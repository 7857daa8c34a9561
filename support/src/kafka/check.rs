//! The start-up check of a component's Kafka settings: can a client with
//! them reach the cluster and authenticate, within a bound?
//!
//! librdkafka never fails a request for a wrong password or an untrusted
//! certificate: it reports the failure to the client's context, retries,
//! and the request times out (or waits for an admin operation's own, longer
//! timeout). A component started with bad credentials would hang, or say
//! only that it timed out. The check fetches the cluster's metadata with a
//! client of its own that remembers what librdkafka reported, and turns an
//! authentication or TLS failure into an error that says so, as soon as it
//! is reported. The reasons it repeats never carry a credential: the values
//! of sensitive properties ([`is_sensitive`]) are redacted.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};

use super::redact::{Redactor, RefusedConfig, is_sensitive};

/// Which kind of librdkafka client the configuration is for, so that the
/// check's client takes it without warnings about the other kind's
/// properties.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientRole {
    Producer,
    Consumer,
}

/// Why the check failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid Kafka client configuration: {0}")]
    Config(#[source] RefusedConfig),
    #[error("Kafka at {brokers} refused to authenticate the client: {reason}")]
    Authentication { brokers: String, reason: String },
    #[error("TLS with Kafka at {brokers} failed: {reason}")]
    Tls { brokers: String, reason: String },
    #[error("Kafka at {brokers} did not answer within {timeout:?}{}", last_reason(.reason))]
    Unreachable {
        brokers: String,
        timeout: Duration,
        reason: Option<String>,
    },
}

fn last_reason(reason: &Option<String>) -> String {
    reason
        .as_ref()
        .map(|r| format!(" (last: {r})"))
        .unwrap_or_default()
}

impl ConnectError {
    /// The cluster did not answer: it may yet. Every other failure is the
    /// configuration's, and waiting will not fix it.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

/// Fetches the cluster's metadata with a `role` client of `config` until it
/// answers (`Ok`), librdkafka reports an authentication or TLS failure, or
/// `timeout` passes. Blocking: call it from a blocking task.
pub fn check_connection(
    config: &ClientConfig,
    role: ClientRole,
    timeout: Duration,
) -> Result<(), ConnectError> {
    let brokers = config.get("bootstrap.servers").unwrap_or("").to_owned();
    let context = CheckContext::new(config);
    let mut config = config.clone();
    // The component's own clients log what librdkafka says; the check only
    // listens for what it needs.
    config.set_log_level(RDKafkaLogLevel::Emerg);
    match role {
        ClientRole::Producer => {
            let client: BaseProducer<CheckContext> = config
                .create_with_context(context)
                .map_err(|error| refused(&config, &error))?;
            wait(&brokers, timeout, client.context(), |step| {
                let answer = client.client().fetch_metadata(None, step).map(drop);
                client.poll(Duration::ZERO);
                answer
            })
        }
        ClientRole::Consumer => {
            let client: BaseConsumer<CheckContext> = config
                .create_with_context(context)
                .map_err(|error| refused(&config, &error))?;
            wait(&brokers, timeout, client.context(), |step| {
                let answer = client.fetch_metadata(None, step).map(drop);
                // Drives the consumer's queue, where client errors arrive.
                let _ = client.poll(Duration::ZERO);
                answer
            })
        }
    }
}

/// The refusal of `config`, naming the property and never its value.
fn refused(config: &ClientConfig, error: &KafkaError) -> ConnectError {
    ConnectError::Config(RefusedConfig::from_error(
        error,
        config.config_map().keys().copied(),
    ))
}

/// Tries `fetch` in short steps until it answers, a fatal report arrives,
/// or `timeout` passes.
fn wait(
    brokers: &str,
    timeout: Duration,
    context: &CheckContext,
    fetch: impl Fn(Duration) -> Result<(), KafkaError>,
) -> Result<(), ConnectError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let step = left.min(Duration::from_millis(500));
        if fetch(step).is_ok() {
            return Ok(());
        }
        let seen = context.seen.lock().unwrap().clone();
        match seen {
            Seen::Authentication(reason) => {
                return Err(ConnectError::Authentication {
                    brokers: brokers.to_owned(),
                    reason,
                });
            }
            Seen::Tls(reason) => {
                return Err(ConnectError::Tls {
                    brokers: brokers.to_owned(),
                    reason,
                });
            }
            Seen::Other(_) | Seen::Nothing if Instant::now() < deadline => {
                // A refused connection fails at once: don't spin on it.
                std::thread::sleep(Duration::from_millis(100).min(left));
            }
            Seen::Other(reason) => {
                return Err(ConnectError::Unreachable {
                    brokers: brokers.to_owned(),
                    timeout,
                    reason: Some(reason),
                });
            }
            Seen::Nothing => {
                return Err(ConnectError::Unreachable {
                    brokers: brokers.to_owned(),
                    timeout,
                    reason: None,
                });
            }
        }
    }
}

/// The most telling thing librdkafka reported so far.
#[derive(Clone, Debug, Default)]
enum Seen {
    #[default]
    Nothing,
    Other(String),
    Tls(String),
    Authentication(String),
}

/// Remembers librdkafka's client errors for [`wait`], with the values of
/// the configuration's sensitive properties redacted.
struct CheckContext {
    redactor: Redactor,
    seen: Mutex<Seen>,
}

impl CheckContext {
    fn new(config: &ClientConfig) -> Self {
        Self {
            redactor: Redactor::new(
                config
                    .config_map()
                    .iter()
                    .filter(|(name, _)| is_sensitive(name))
                    .map(|(_, value)| value),
            ),
            seen: Mutex::new(Seen::Nothing),
        }
    }
}

impl ClientContext for CheckContext {
    fn log(&self, _: RDKafkaLogLevel, _: &str, _: &str) {}

    fn error(&self, error: KafkaError, reason: &str) {
        let reason = self.redactor.redact(reason).into_owned();
        let now = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                Seen::Authentication(reason)
            }
            Some(RDKafkaErrorCode::SSL) => Seen::Tls(reason),
            _ => Seen::Other(reason),
        };
        let mut seen = self.seen.lock().unwrap();
        // An authentication or TLS failure is what the check is for: a
        // later "all brokers down" must not hide it.
        if matches!(*seen, Seen::Nothing | Seen::Other(_)) {
            *seen = now;
        }
    }
}

impl ConsumerContext for CheckContext {}

impl ProducerContext for CheckContext {
    type DeliveryOpaque = ();

    /// The check produces nothing.
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_configuration_is_named_without_its_value() {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("security.protocol", "SASL_SSL")
            .set("sasl.pasword", "s3cret-value");
        let error = check_connection(&config, ClientRole::Consumer, Duration::from_secs(1))
            .expect_err("an unknown property");
        let text = error.to_string();
        assert!(text.contains("sasl.pasword"), "{text}");
        assert!(!text.contains("s3cret-value"), "{text}");
    }
}
