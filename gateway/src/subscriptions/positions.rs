//! A subscriber's place in a topic: for every partition, the next offset
//! to deliver. Every channel event carries the vector as it stands after
//! the event, as its SSE id, so `Last-Event-ID` resumes exactly after it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Next offset to deliver, per partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Positions(BTreeMap<i32, i64>);

/// A `Last-Event-ID` that is not a position vector.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an event id of this stream (partition:offset pairs)")]
pub struct InvalidPositions(String);

impl Positions {
    pub fn get(&self, partition: i32) -> Option<i64> {
        self.0.get(&partition).copied()
    }

    pub fn set(&mut self, partition: i32, next: i64) {
        self.0.insert(partition, next);
    }

    /// Marks `offset` of `partition` as delivered.
    pub fn advance(&mut self, partition: i32, offset: i64) {
        self.0.insert(partition, offset + 1);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.0.iter().map(|(p, o)| (*p, *o))
    }
}

/// `0:17,1:5`: partition `0` resumes at offset 17, partition 1 at 5.
impl fmt::Display for Positions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (partition, next)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{partition}:{next}")?;
        }
        Ok(())
    }
}

/// The longest `Last-Event-ID` a subscriber may send: room for thousands
/// of partitions, and a bound on what a client makes the gateway parse.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;

impl FromStr for Positions {
    type Err = InvalidPositions;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // The error quotes the start of the text only.
        let invalid = || InvalidPositions(text.chars().take(64).collect());
        if text.len() > MAX_TEXT_BYTES {
            return Err(invalid());
        }
        let mut positions = BTreeMap::new();
        for pair in text.trim().split(',') {
            let (partition, next) = pair.split_once(':').ok_or_else(invalid)?;
            let partition: i32 = partition.parse().map_err(|_| invalid())?;
            let next: i64 = next.parse().map_err(|_| invalid())?;
            if partition < 0 || next < 0 || positions.insert(partition, next).is_some() {
                return Err(invalid());
            }
        }
        Ok(Self(positions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_their_text() {
        let mut positions = Positions::default();
        positions.set(0, 17);
        positions.set(2, 0);
        positions.advance(1, 4);
        assert_eq!(positions.to_string(), "0:17,1:5,2:0");
        assert_eq!("0:17,1:5,2:0".parse::<Positions>().unwrap(), positions);
    }

    #[test]
    fn malformed_event_ids_are_rejected() {
        for bad in [
            "", "0", "0:", ":1", "a:1", "0:-1", "-1:0", "0:1,0:2", "0:1;1:2",
        ] {
            assert!(bad.parse::<Positions>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_oversized_event_id_is_refused_without_being_echoed() {
        let huge: String = (0..5000).map(|p| format!("{p}:0,")).collect::<String>() + "1:0";
        let error = huge.parse::<Positions>().unwrap_err().to_string();
        assert!(error.len() < 200, "{error}");
    }
}
