//! Measurement: one poll of a channel topic and its consumer group through
//! Kafka's admin APIs — per partition the log start, the high watermark and
//! the group's committed offset; the group's state, member count and the
//! partitions its members hold (each member's assignment, in the consumer
//! protocol's encoding). No message is read. Blocking (librdkafka); call it
//! from a blocking task.
//!
//! The probe's client properties may come from a Kubernetes Secret: its
//! client never lets their values into what it logs or fails with
//! ([`ClientSettings::create_redacted`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use osmosis_support::kafka::{ClientSettings, RedactingContext, RefusedConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::estimate::{PartitionSample, Sample};

/// A failed poll. The loop holds its last decision: a failure never scales down.
/// Clone: a probe that could not be created fails every measurement with it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum MeasureError {
    /// librdkafka refused the client's properties: which one, never its value.
    #[error("{0}")]
    Config(#[from] RefusedConfig),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {0:?} not found")]
    NoTopic(String),
    #[error("the broker gave no offset for partition {0}")]
    NoOffset(i32),
}

/// Polls one topic and one consumer group.
pub struct Probe {
    topic: String,
    group: String,
    /// A client in the group's name that never joins it: it only reads the
    /// group's committed offsets.
    consumer: BaseConsumer<RedactingContext>,
    timeout: Duration,
    /// The partitions the last sample found: the surge watch reuses them
    /// instead of asking for metadata every second (each poll refreshes them).
    known_partitions: Mutex<Option<TopicPartitionList>>,
}

impl Probe {
    pub fn new(
        brokers: &str,
        properties: &[(String, String)],
        topic: &str,
        group: &str,
    ) -> Result<Self, MeasureError> {
        // In the group's name to read its committed offsets; never joins it.
        let settings = ClientSettings::new(brokers)
            .user(properties.iter().map(|(k, v)| (k, v)))
            .fixed(&[("group.id", group), ("enable.auto.commit", "false")]);
        Ok(Self {
            topic: topic.to_owned(),
            group: group.to_owned(),
            consumer: settings.create_redacted()?,
            timeout: Duration::from_secs(5),
            known_partitions: Mutex::new(None),
        })
    }

    /// The topic's partitions, from the cluster's metadata.
    fn partitions(&self) -> Result<TopicPartitionList, MeasureError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), self.timeout)?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic && t.error().is_none() && !t.partitions().is_empty())
            .ok_or_else(|| MeasureError::NoTopic(self.topic.clone()))?;
        let mut partitions = TopicPartitionList::new();
        for partition in topic.partitions() {
            partitions.add_partition(&self.topic, partition.id());
        }
        Ok(partitions)
    }

    /// Every partition's offset at `position` (`Beginning` or `End`), in
    /// one ListOffsets request per leader rather than one per partition.
    fn offsets_at(
        &self,
        partitions: &TopicPartitionList,
        position: Offset,
    ) -> Result<Vec<(i32, i64)>, MeasureError> {
        let mut query = partitions.clone();
        query.set_all_offsets(position)?;
        let answer = self.consumer.offsets_for_times(query, self.timeout)?;
        answer
            .elements()
            .iter()
            .map(|e| {
                e.error()?;
                match e.offset() {
                    Offset::Offset(offset) => Ok((e.partition(), offset)),
                    _ => Err(MeasureError::NoOffset(e.partition())),
                }
            })
            .collect()
    }

    /// The sum of the topic's end offsets (high watermarks): all the channel
    /// ever received. One ListOffsets request (and a metadata request
    /// before the first sample); what the surge watch reads between polls.
    pub fn arrived(&self) -> Result<i64, MeasureError> {
        let known = self.known_partitions.lock().unwrap().clone();
        let partitions = match known {
            Some(partitions) => partitions,
            None => self.partitions()?,
        };
        Ok(self
            .offsets_at(&partitions, Offset::End)?
            .iter()
            .map(|(_, offset)| offset)
            .sum())
    }

    /// One sample at `at` seconds on the caller's clock.
    pub fn sample(&self, at: f64) -> Result<Sample, MeasureError> {
        let query = self.partitions()?;
        *self.known_partitions.lock().unwrap() = Some(query.clone());
        let starts: HashMap<i32, i64> = self
            .offsets_at(&query, Offset::Beginning)?
            .into_iter()
            .collect();
        let ends = self.offsets_at(&query, Offset::End)?;
        let committed = self.consumer.committed_offsets(query, self.timeout)?;
        let mut partitions = Vec::with_capacity(ends.len());
        for (partition, high_watermark) in ends {
            let committed = committed
                .find_partition(&self.topic, partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                });
            partitions.push(PartitionSample {
                partition,
                log_start: starts.get(&partition).copied().unwrap_or(0),
                high_watermark,
                committed,
            });
        }
        let groups = self
            .consumer
            .fetch_group_list(Some(&self.group), self.timeout)?;
        let group = groups.groups().iter().find(|g| g.name() == self.group);
        let rebalancing = group.is_some_and(|g| {
            let state = g.state();
            state.contains("Rebalance") || state.contains("Completing")
        });
        let members = group.map_or(0, |g| g.members().len() as u32);
        // One member whose assignment cannot be read makes it unknown.
        let held = match group {
            None => Some(Vec::new()),
            Some(g) => g.members().iter().try_fold(Vec::new(), |mut held, member| {
                held.extend(assigned_partitions(member.assignment()?, &self.topic)?);
                Some(held)
            }),
        };
        Ok(Sample {
            at,
            partitions,
            rebalancing,
            members,
            held,
        })
    }
}

/// The partitions of `topic` in a member's assignment, as the classic
/// consumer protocol encodes it (`ConsumerProtocolAssignment`, versions 0
/// to 3): a version (int16), an array (int32 count) of topics, each a name
/// (int16 length, UTF-8) and an array of partitions (int32 count, int32
/// each), then user data we do not read. `None` when it does not parse.
fn assigned_partitions(assignment: &[u8], topic: &str) -> Option<Vec<i32>> {
    let mut input = assignment;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, rest) = input.split_at_checked(n)?;
        input = rest;
        Some(head)
    };
    let version = i16::from_be_bytes(take(2)?.try_into().ok()?);
    if !(0..=3).contains(&version) {
        return None;
    }
    let topics = i32::from_be_bytes(take(4)?.try_into().ok()?);
    let mut held = Vec::new();
    for _ in 0..topics.max(0) {
        let name_len = i16::from_be_bytes(take(2)?.try_into().ok()?);
        let name = take(usize::try_from(name_len).ok()?)?;
        let count = i32::from_be_bytes(take(4)?.try_into().ok()?);
        for _ in 0..count.max(0) {
            let partition = i32::from_be_bytes(take(4)?.try_into().ok()?);
            if name == topic.as_bytes() {
                held.push(partition);
            }
        }
    }
    Some(held)
}

#[cfg(test)]
mod tests {
    use super::assigned_partitions;

    /// A version-1 assignment of `topics`, with user data.
    fn encode(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut out = 1i16.to_be_bytes().to_vec();
        out.extend((topics.len() as i32).to_be_bytes());
        for (name, partitions) in topics {
            out.extend((name.len() as i16).to_be_bytes());
            out.extend(name.as_bytes());
            out.extend((partitions.len() as i32).to_be_bytes());
            for p in *partitions {
                out.extend(p.to_be_bytes());
            }
        }
        out.extend(3i32.to_be_bytes());
        out.extend(b"abc");
        out
    }

    #[test]
    fn a_members_assignment_names_the_partitions_it_holds_of_the_topic() {
        let bytes = encode(&[("orders", &[0, 3]), ("other", &[1])]);
        assert_eq!(assigned_partitions(&bytes, "orders"), Some(vec![0, 3]));
        assert_eq!(assigned_partitions(&bytes, "missing"), Some(vec![]));
    }

    #[test]
    fn an_assignment_that_does_not_parse_is_unknown() {
        let bytes = encode(&[("orders", &[0, 3])]);
        assert_eq!(assigned_partitions(&bytes[..9], "orders"), None);
        assert_eq!(assigned_partitions(&[0, 9, 0, 0, 0, 0], "orders"), None);
        assert_eq!(assigned_partitions(&[], "orders"), None);
    }
}
