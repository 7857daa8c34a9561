//! The partitions' watermarks, read with the gateway's shared metadata
//! client. Blocking: called from blocking tasks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

/// (low, high) watermarks of every partition of `topic`.
pub(super) fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, (i64, i64)>, KafkaError> {
    // A partition whose leader is still being elected (a topic just
    // created, a broker failing over) answers an error for a moment: retry
    // within the timeout before the client hears 503.
    let deadline = Instant::now() + timeout;
    loop {
        match read_watermarks(consumer, topic, timeout) {
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            outcome => return outcome,
        }
    }
}

fn read_watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, (i64, i64)>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut out = BTreeMap::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for partition in t.partitions() {
            out.insert(
                partition.id(),
                consumer.fetch_watermarks(topic, partition.id(), timeout)?,
            );
        }
    }
    Ok(out)
}
