//! A scaler's Kafka client properties from its `propertiesSecretRef`
//! Secret, and which of its keys the controller takes.
//!
//! Anyone allowed to create a ChannelScaler can name any Secret of its
//! namespace, and reads what the controller writes about it (status,
//! Events). So the controller takes only the keys that say how to reach
//! and authenticate to the cluster ([`is_connection_property`]), warns
//! about the others by name, and never lets a value out: the probe built
//! from them redacts every value from librdkafka's text and names a
//! refused property without its value
//! ([`ClientSettings::create_redacted`](osmosis_support::kafka::ClientSettings::create_redacted)).

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;

use crate::crd::ChannelScaler;

/// Properties that hold TLS or SASL settings but make the controller run a
/// command or load code: never taken from a Secret.
const RUN_OR_LOAD: &[&str] = &[
    // A shell command librdkafka runs to refresh Kerberos tickets.
    "sasl.kerberos.kinit.cmd",
    // OpenSSL engines and providers: shared libraries loaded into the process.
    "ssl.engine.location",
    "ssl.engine.id",
    "ssl.providers",
];

/// Whether a Secret key is a client property the controller takes: how to
/// reach the cluster (`security.protocol`), TLS (`ssl.*`, certificate
/// verification) and SASL (`sasl.*`, the unsecured-JWT switch of
/// OAUTHBEARER), except [`RUN_OR_LOAD`]. Everything else (timeouts,
/// `debug`, `plugin.library.paths`, `client.id`...) is the controller's
/// to choose, not a scaler author's.
pub fn is_connection_property(name: &str) -> bool {
    let connection = name == "security.protocol"
        || name.starts_with("ssl.")
        || name.starts_with("sasl.")
        || name == "enable.ssl.certificate.verification"
        || name == "enable.sasl.oauthbearer.unsecure.jwt";
    connection && !RUN_OR_LOAD.contains(&name)
}

/// A scaler's client properties from its Secret, and the keys left out.
#[derive(Debug, Default, PartialEq)]
pub(super) struct SecretProperties {
    /// Connection and authentication properties, to build the probe with.
    pub(super) taken: Vec<(String, String)>,
    /// Keys that are not: warned about by name when the probe is built.
    pub(super) ignored: Vec<String>,
}

impl SecretProperties {
    /// Sorts a Secret's entries into taken and ignored ones.
    fn sort(entries: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        let mut properties = Self::default();
        for (name, value) in entries {
            if is_connection_property(&name) {
                let value = String::from_utf8_lossy(&value).into_owned();
                properties.taken.push((name, value));
            } else {
                properties.ignored.push(name);
            }
        }
        properties
    }
}

/// The properties of the scaler's Secret, if it names one.
pub(super) async fn read(
    client: &Client,
    namespace: &str,
    scaler: &ChannelScaler,
) -> Result<SecretProperties, kube::Error> {
    let Some(secret) = &scaler.spec.kafka.properties_secret_ref else {
        return Ok(SecretProperties::default());
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets.get(&secret.name).await?;
    Ok(SecretProperties::sort(
        secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| (name, value.0)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_and_authentication_properties_are_taken() {
        for name in [
            "security.protocol",
            "sasl.mechanism",
            "sasl.username",
            "sasl.password",
            "ssl.ca.pem",
            "ssl.ca.location",
            "ssl.endpoint.identification.algorithm",
            "enable.ssl.certificate.verification",
        ] {
            assert!(is_connection_property(name), "{name}");
        }
    }

    #[test]
    fn anything_else_and_what_runs_or_loads_code_is_not() {
        for name in [
            "debug",
            "plugin.library.paths",
            "client.id",
            "socket.timeout.ms",
            "sasl.kerberos.kinit.cmd",
            "ssl.engine.location",
            "ssl.providers",
            "security.protocol.extra",
        ] {
            assert!(!is_connection_property(name), "{name}");
        }
    }

    #[test]
    fn a_secret_is_sorted_into_taken_and_ignored_keys() {
        let sorted = SecretProperties::sort([
            ("sasl.password".to_owned(), b"pw".to_vec()),
            ("debug".to_owned(), b"all".to_vec()),
        ]);
        assert_eq!(
            sorted,
            SecretProperties {
                taken: vec![("sasl.password".into(), "pw".into())],
                ignored: vec!["debug".into()],
            }
        );
    }
}
