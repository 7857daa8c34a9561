//! [`Error`]: why the worker could not start. Once it runs, nothing fails
//! the worker as a whole: a failing message is retried, dead-lettered and
//! logged, a failing produce retried, so `run` only returns
//! this before the first message.

use osmosis_support::kafka::{ConnectError, RefusedConfig};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid Kafka client configuration: {0}")]
    Config(#[from] RefusedConfig),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("cannot start: {0}")]
    Connect(#[from] ConnectError),
    #[error("channel topic {0:?} does not exist")]
    NoChannel(String),
    #[error("cannot create the dead-letter topic {topic:?}: {code}")]
    DeadLetterTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}
