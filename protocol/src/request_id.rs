//! Request ids: UUIDv7, so that ids sort by creation time and a reply can be
//! found later with Kafka's time index (the id carries its own timestamp).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

/// The time-ordered id the gateway gives every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(Uuid);

/// A string that is not a UUIDv7 request id.
#[derive(Debug, thiserror::Error)]
#[error("not an Osmosis request id (a UUIDv7): {0:?}")]
pub struct ParseRequestIdError(String);

impl RequestId {
    /// A fresh id stamped with the current time.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
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
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
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
        let id = RequestId::new();
        let parsed: RequestId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
    }

    #[test]
    fn later_ids_sort_after_earlier_ones() {
        let ids: Vec<RequestId> = (0..1000).map(|_| RequestId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids);
        let as_strings: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let mut sorted_strings = as_strings.clone();
        sorted_strings.sort();
        assert_eq!(sorted_strings, as_strings, "string order is time order");
    }

    #[test]
    fn creation_time_is_now() {
        let age = SystemTime::now()
            .duration_since(RequestId::new().created_at())
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
