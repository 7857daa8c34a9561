//! Keeping client property values out of everything a client says.
//!
//! librdkafka's own text (log lines, client errors, configuration errors)
//! may quote the value of a property: an invalid value, a file it could not
//! read. A component whose properties come from someone else's Secret must
//! never pass such text on. [`Redactor`] replaces known values in text,
//! [`RedactingContext`] logs librdkafka's lines and errors through it, and
//! [`RefusedConfig`] says which property a refused configuration failed on,
//! never its value.

use std::borrow::Cow;
use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;

/// What stands for a value in redacted text.
pub const REDACTED: &str = "[redacted]";

/// Values shorter than this are not searched for: they would blank out
/// ordinary words, and are no secret anyway.
const SHORTEST_REDACTED: usize = 3;

/// Replaces known property values in text.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// Longest first, so that a value containing another one goes whole.
    values: Arc<[String]>,
}

impl Redactor {
    /// A redactor of `values` (those shorter than three characters are
    /// left alone).
    pub fn new<V: AsRef<str>>(values: impl IntoIterator<Item = V>) -> Self {
        let mut values: Vec<String> = values
            .into_iter()
            .map(|v| v.as_ref().to_owned())
            .filter(|v| v.chars().count() >= SHORTEST_REDACTED)
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Self {
            values: values.into(),
        }
    }

    /// `text` with every known value replaced by [`REDACTED`].
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut text = Cow::Borrowed(text);
        for value in self.values.iter() {
            if text.contains(value.as_str()) {
                text = Cow::Owned(text.replace(value.as_str(), REDACTED));
            }
        }
        text
    }
}

/// Logs librdkafka's lines and client errors through `tracing` like
/// [`LoggingContext`](super::LoggingContext), with its redactor's values
/// taken out first.
#[derive(Clone, Debug, Default)]
pub struct RedactingContext {
    redactor: Redactor,
}

impl RedactingContext {
    pub fn new(redactor: Redactor) -> Self {
        Self { redactor }
    }
}

impl ClientContext for RedactingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let message = self.redactor.redact(log_message);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let error = error.to_string();
        tracing::warn!(
            error = %self.redactor.redact(&error),
            reason = %self.redactor.redact(reason),
            "kafka client error"
        );
    }
}

impl ConsumerContext for RedactingContext {}

/// Whether a property's value is a credential (or holds one): a password,
/// a secret, a private key, a token, a user name. Redacted from whatever a
/// client of the operator's own configuration says.
pub fn is_sensitive(name: &str) -> bool {
    [
        "password",
        "secret",
        "key",
        "pem",
        "token",
        "username",
        "sasl.oauthbearer.config",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// librdkafka refused a client configuration. Says which property, never
/// its value: librdkafka's own message quotes invalid values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefusedConfig {
    #[error("the Kafka client refused the property {0:?} (its value is not shown)")]
    Property(String),
    #[error("the Kafka client refused its properties (values are not shown)")]
    Unknown,
}

impl RefusedConfig {
    /// The refusal of `error`, naming the property among `names` it was
    /// about: the one librdkafka reports, or the longest of `names` its
    /// message mentions. Only a name from `names` is ever repeated.
    pub fn from_error<'a>(error: &KafkaError, names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut names: Vec<&str> = names.into_iter().collect();
        names.sort_by_key(|name| std::cmp::Reverse(name.len()));
        let (reported, text) = match error {
            KafkaError::ClientConfig(_, _, key, _) => (Some(key.as_str()), String::new()),
            other => (None, other.to_string()),
        };
        names
            .into_iter()
            .find(|name| reported == Some(*name) || (reported.is_none() && text.contains(name)))
            .map_or(Self::Unknown, |name| Self::Property(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::types::RDKafkaConfRes;

    use super::*;

    #[test]
    fn every_known_value_is_replaced_and_the_longest_goes_whole() {
        let redactor = Redactor::new(["s3cret", "s3cret-and-more", "ab"]);
        assert_eq!(
            redactor.redact("x s3cret-and-more y s3cret z ab"),
            "x [redacted] y [redacted] z ab"
        );
        assert!(matches!(redactor.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_refused_property_is_named_without_its_value() {
        let error = KafkaError::ClientConfig(
            RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value \"MARK\" for configuration property \"security.protocol\"".into(),
            "security.protocol".into(),
            "MARK".into(),
        );
        let refused = RefusedConfig::from_error(&error, ["security.protocol", "sasl.username"]);
        assert_eq!(refused, RefusedConfig::Property("security.protocol".into()));
        assert!(!refused.to_string().contains("MARK"), "{refused}");
    }

    #[test]
    fn a_creation_error_names_the_longest_property_it_mentions() {
        let error =
            KafkaError::ClientCreation("ssl.ca.location failed: calling fopen(/no/MARK, r)".into());
        let refused = RefusedConfig::from_error(&error, ["ssl.ca", "ssl.ca.location"]);
        assert_eq!(refused, RefusedConfig::Property("ssl.ca.location".into()));
        let unknown = RefusedConfig::from_error(&error, ["sasl.password"]);
        assert_eq!(unknown, RefusedConfig::Unknown);
        assert!(!unknown.to_string().contains("MARK"));
    }
}
