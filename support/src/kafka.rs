//! Kafka clients as every Osmosis component builds them.
//!
//! [`ClientSettings`] assembles a librdkafka configuration in one order,
//! whatever the component: **Osmosis's defaults, then the user's properties,
//! then the properties Osmosis fixes** (and `bootstrap.servers`). A user may
//! tune anything Osmosis merely prefers (batching, timeouts, TLS, SASL) but
//! cannot weaken what a component's guarantees rest on (`acks=all`, manual
//! offset stores, group ids).
//!
//! Also here: the start-up check of the settings against the cluster
//! ([`check_connection`], in `kafka/check.rs`), keeping property values out
//! of librdkafka's text ([`Redactor`], [`RedactingContext`],
//! [`RefusedConfig`], in `kafka/redact.rs`), `name=value` properties from a
//! command line, and record headers.

mod check;
mod redact;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};

pub use check::{ClientRole, ConnectError, check_connection};
pub use redact::{REDACTED, RedactingContext, Redactor, RefusedConfig, is_sensitive};

/// The layers of one client's configuration; [`ClientSettings::build`]
/// applies them in precedence order, whatever order they were given in.
#[derive(Clone, Debug, Default)]
pub struct ClientSettings {
    brokers: String,
    defaults: Vec<(String, String)>,
    user: Vec<(String, String)>,
    fixed: Vec<(String, String)>,
}

impl ClientSettings {
    /// A client of the cluster reached through `brokers` (comma separated).
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            ..Self::default()
        }
    }

    /// Values Osmosis prefers; the user's properties override them.
    pub fn defaults(mut self, pairs: &[(&str, &str)]) -> Self {
        self.defaults.extend(owned(pairs));
        self
    }

    /// The user's properties; later calls override earlier ones (e.g.
    /// shared properties, then a consumer's own).
    pub fn user<K, V>(mut self, pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        self.user.extend(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned())),
        );
        self
    }

    /// Values a component's guarantees rest on: nothing overrides them.
    pub fn fixed(mut self, pairs: &[(&str, &str)]) -> Self {
        self.fixed.extend(owned(pairs));
        self
    }

    /// The librdkafka configuration: defaults, user, fixed, brokers.
    pub fn build(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (name, value) in self.defaults.iter().chain(&self.user).chain(&self.fixed) {
            config.set(name, value);
        }
        config.set("bootstrap.servers", &self.brokers);
        config
    }

    /// A client whose librdkafka text never carries the user's property
    /// values: its context redacts them from every log line and error, and
    /// a refused configuration names the property, not the value. For
    /// properties that come from someone else than the reader of the logs
    /// and statuses (a Kubernetes Secret).
    pub fn create_redacted<T>(&self) -> Result<T, RefusedConfig>
    where
        T: FromClientConfigAndContext<RedactingContext>,
    {
        let redactor = Redactor::new(self.user.iter().map(|(_, value)| value));
        self.create_with(RedactingContext::new(redactor))
    }

    /// A client with `context` whose refused configuration names the
    /// property, never its value (librdkafka's message quotes it, and a
    /// misspelt property name carries a password as well as any other).
    pub fn create_with<C, T>(&self, context: C) -> Result<T, RefusedConfig>
    where
        C: ClientContext,
        T: FromClientConfigAndContext<C>,
    {
        self.build().create_with_context(context).map_err(|error| {
            let names = self.defaults.iter().chain(&self.user).chain(&self.fixed);
            RefusedConfig::from_error(&error, names.map(|(name, _)| name.as_str()))
        })
    }
}

/// A `--*-property` value without a name and an `=`. It is not repeated:
/// a misspelt `sasl.password:secret` is a secret all the same.
#[derive(Debug, thiserror::Error)]
#[error("a Kafka property is not name=value (the text is not shown)")]
pub struct NotNameValue;

/// A librdkafka property from the command line, `name=value` (the value
/// may contain `=`).
pub fn parse_property(text: &str) -> Result<(String, String), NotNameValue> {
    text.split_once('=')
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .filter(|(name, _)| !name.is_empty())
        .ok_or(NotNameValue)
}

/// [`parse_property`] as a clap value parser whose error names the flag,
/// never the text: clap's own error for a failed parser quotes the value.
#[derive(Clone, Copy, Debug, Default)]
pub struct PropertyParser;

impl clap::builder::TypedValueParser for PropertyParser {
    type Value = (String, String);

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        value
            .to_str()
            .ok_or(NotNameValue)
            .and_then(parse_property)
            .map_err(|error| {
                let flag = arg.map_or_else(|| "a property flag".to_owned(), ToString::to_string);
                // A value holding the delimiter arrives in pieces: say so.
                let split = arg
                    .and_then(clap::Arg::get_value_delimiter)
                    .map(|delimiter| format!("; values are split at {delimiter:?}"))
                    .unwrap_or_default();
                clap::Error::raw(
                    clap::error::ErrorKind::ValueValidation,
                    format!("{flag}: {error}{split}\n"),
                )
                .with_cmd(command)
            })
    }
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Kafka record headers from `(name, value)` pairs, in order.
pub fn to_record_headers<'a, V>(pairs: impl IntoIterator<Item = (&'a str, V)>) -> OwnedHeaders
where
    V: AsRef<[u8]>,
{
    let pairs = pairs.into_iter();
    // Sized once: librdkafka grows its header list otherwise.
    let headers = OwnedHeaders::new_with_capacity(pairs.size_hint().0.max(1));
    pairs.fold(headers, |headers, (name, value)| {
        headers.insert(Header {
            key: name,
            value: Some(value.as_ref()),
        })
    })
}

/// A record's headers as `(name, value)` pairs, as the protocol's decoders
/// take them.
pub fn header_pairs<H: Headers>(headers: &H) -> Vec<(&str, Option<&[u8]>)> {
    headers.iter().map(|h| (h.key, h.value)).collect()
}

/// Logs librdkafka's own errors (broker down, authentication failed...)
/// through `tracing`, next to the component's own logs.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoggingContext;

impl ClientContext for LoggingContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for LoggingContext {}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;

    #[test]
    fn user_properties_override_defaults_and_fixed_ones_override_the_user() {
        let config = ClientSettings::new("127.0.0.1:9092")
            .fixed(&[("acks", "all")])
            .user([
                ("linger.ms", "50"),
                ("acks", "0"),
                ("bootstrap.servers", "elsewhere:1"),
            ])
            .defaults(&[("linger.ms", "2"), ("fetch.wait.max.ms", "10")])
            .build();
        assert_eq!(
            config.get("linger.ms"),
            Some("50"),
            "the user tunes a default"
        );
        assert_eq!(
            config.get("fetch.wait.max.ms"),
            Some("10"),
            "an untouched default stays"
        );
        assert_eq!(config.get("acks"), Some("all"), "a fixed value wins");
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    }

    #[test]
    fn later_user_properties_override_earlier_ones() {
        let config = ClientSettings::new("b:1")
            .user([("client.id", "shared")])
            .user([("client.id", "consumer")])
            .build();
        assert_eq!(config.get("client.id"), Some("consumer"));
    }

    #[test]
    fn properties_are_name_value_pairs() {
        assert_eq!(
            parse_property("session.timeout.ms = 6000").unwrap(),
            ("session.timeout.ms".into(), "6000".into())
        );
        assert_eq!(
            parse_property("sasl.password=a=b").unwrap(),
            ("sasl.password".into(), "a=b".into())
        );
        assert!(parse_property("nonsense").is_err());
        assert!(parse_property("=6000").is_err());
    }

    #[test]
    fn a_refused_user_property_is_named_and_its_value_is_not() {
        let refused = ClientSettings::new("127.0.0.1:1")
            .user([("security.protocol", "MARKER-VALUE")])
            .create_redacted::<rdkafka::consumer::BaseConsumer<RedactingContext>>()
            .err()
            .expect("an invalid value is refused");
        assert_eq!(refused, RefusedConfig::Property("security.protocol".into()));
        assert!(!refused.to_string().contains("MARKER"), "{refused}");
    }

    #[test]
    fn headers_round_trip_in_order() {
        let headers = to_record_headers([("a", &b"1"[..]), ("b", &b""[..]), ("a", &b"2"[..])]);
        assert_eq!(
            header_pairs(&headers),
            vec![
                ("a", Some(&b"1"[..])),
                ("b", Some(&b""[..])),
                ("a", Some(&b"2"[..]))
            ]
        );
        assert_eq!(headers.count(), 3);
    }

    #[test]
    fn a_property_that_is_not_name_value_is_refused_without_its_text() {
        #[derive(clap::Parser, Debug)]
        struct Flags {
            #[arg(long = "kafka-property", value_delimiter = ',', value_parser = PropertyParser)]
            properties: Vec<(String, String)>,
        }
        let parse = |value: &str| {
            <Flags as clap::Parser>::try_parse_from(["worker", "--kafka-property", value])
        };
        let flags = parse("sasl.username=osmosis,sasl.password=s3cret").unwrap();
        assert_eq!(
            flags.properties[1],
            ("sasl.password".into(), "s3cret".into())
        );
        let error = parse("sasl.password:s3cret").unwrap_err().to_string();
        assert!(!error.contains("s3cret"), "{error}");
        assert!(error.contains("--kafka-property"), "{error}");
        // A password holding a comma reaches the parser in pieces.
        let error = parse("sasl.password=s3c,ret-piece")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("ret-piece"), "{error}");
        assert!(error.contains("split at ','"), "{error}");
    }

    #[test]
    fn a_refused_client_names_the_property_and_never_its_value() {
        let settings = ClientSettings::new("127.0.0.1:9").user([("sasl.pasword", "s3cret-value")]);
        let refused = settings
            .create_with::<_, rdkafka::consumer::BaseConsumer>(
                rdkafka::consumer::DefaultConsumerContext,
            )
            .err()
            .expect("an unknown property is refused");
        assert_eq!(refused, RefusedConfig::Property("sasl.pasword".into()));
        assert!(!refused.to_string().contains("s3cret-value"));
    }
}
