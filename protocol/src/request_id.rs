//! Request ids: UUIDv7 that also name their reply partition.
//!
//! The 48-bit timestamp makes ids sort by creation time (to the
//! millisecond), so a reply can be found later with Kafka's time index; the
//! 12 bits UUIDv7 leaves to the generator (`rand_a`) hold the reply
//! partition, so any gateway instance knows where to look for the reply of
//! an id it never saw. The remaining 62 bits are random.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::clock;

use uuid::Uuid;

/// The time-ordered id the gateway gives every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(Uuid);

/// `rand_a` value of an id that expects no reply (publish mode).
const NO_REPLY: u16 = 0x0FFF;

/// The largest reply partition an id can name.
pub const MAX_REPLY_PARTITION: i32 = NO_REPLY as i32 - 1;

/// A string that is not a UUIDv7 request id.
#[derive(Debug, thiserror::Error)]
#[error("not an Osmosis request id (a UUIDv7): {0:?}")]
pub struct ParseRequestIdError(String);

impl RequestId {
    /// A fresh id stamped with the current time, for a request whose reply
    /// (if any) goes to `reply_partition` of the reply topic.
    ///
    /// # Panics
    /// When the partition is negative or above [`MAX_REPLY_PARTITION`]; the
    /// gateway validates its reply partitions at start-up.
    pub fn new(reply_partition: Option<i32>) -> Self {
        let rand_a = match reply_partition {
            Some(p) if (0..=MAX_REPLY_PARTITION).contains(&p) => p as u16,
            Some(p) => panic!("reply partition {p} does not fit a request id"),
            None => NO_REPLY,
        };
        let millis = clock::unix_ms(SystemTime::now());
        let random: [u8; 10] = rand::random();
        let mut bytes = *uuid::Builder::from_unix_timestamp_millis(millis, &random)
            .into_uuid()
            .as_bytes();
        bytes[6] = 0x70 | (rand_a >> 8) as u8;
        bytes[7] = rand_a as u8;
        Self(Uuid::from_bytes(bytes))
    }

    /// When the id was created, to the millisecond.
    pub fn created_at(&self) -> SystemTime {
        let (secs, nanos) = self
            .0
            .get_timestamp()
            .expect("a RequestId is always a UUIDv7")
            .to_unix();
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    /// The reply partition the id names, if its request expects a reply.
    pub fn reply_partition(&self) -> Option<i32> {
        let bytes = self.0.as_bytes();
        let rand_a = (u16::from(bytes[6] & 0x0F) << 8) | u16::from(bytes[7]);
        (rand_a != NO_REPLY).then_some(i32::from(rand_a))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for RequestId {
    type Err = ParseRequestIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match Uuid::try_parse(s) {
            Ok(uuid) if uuid.get_version_num() == 7 => Ok(Self(uuid)),
            _ => Err(ParseRequestIdError(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_string_form() {
        let id = RequestId::new(Some(3));
        let parsed: RequestId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
        assert_eq!(parsed.reply_partition(), Some(3));
    }

    #[test]
    fn ids_name_their_reply_partition() {
        for partition in [0, 1, 17, 255, 256, MAX_REPLY_PARTITION] {
            assert_eq!(
                RequestId::new(Some(partition)).reply_partition(),
                Some(partition)
            );
        }
        assert_eq!(RequestId::new(None).reply_partition(), None);
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn partitions_beyond_twelve_bits_are_refused() {
        RequestId::new(Some(MAX_REPLY_PARTITION + 1));
    }

    #[test]
    fn ids_are_unique_and_ordered_by_millisecond() {
        let ids: Vec<RequestId> = (0..10_000).map(|i| RequestId::new(Some(i % 7))).collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for pair in ids.windows(2) {
            assert!(pair[0].created_at() <= pair[1].created_at());
        }
        let (first, last) = (ids[0], ids[ids.len() - 1]);
        if last.created_at() > first.created_at() {
            assert!(last > first, "a later millisecond sorts after");
            assert!(last.to_string() > first.to_string(), "also as text");
        }
    }

    #[test]
    fn creation_time_is_now() {
        let age = SystemTime::now()
            .duration_since(RequestId::new(None).created_at())
            .unwrap_or_default();
        assert!(age < Duration::from_secs(5));
    }

    #[test]
    fn other_uuid_versions_are_rejected() {
        assert!(
            "67e55044-10b1-426f-9247-bb680e5fe0c8"
                .parse::<RequestId>()
                .is_err()
        );
        assert!("not-a-uuid".parse::<RequestId>().is_err());
    }
}
