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

impl FromStr for Positions {
    type Err = InvalidPositions;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidPositions(text.to_owned());
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
}
