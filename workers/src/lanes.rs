//! Which of a partition's waiting messages may start their handler now,
//! so that the configured order holds: with [`Ordering::Partition`] one
//! handler at a time, in offset order; with [`Ordering::Key`] one handler
//! at a time *per key*, in offset order within a key, different keys at
//! once. Messages without a key share one lane: they keep their order
//! among themselves.
//!
//! Pure scheduling: it decides, `pipeline` starts the handlers. When their
//! offsets may be committed is `ledger`'s concern, not this module's.

use std::collections::HashSet;

use crate::config::Ordering;

/// The keys whose handler runs, for one partition.
#[derive(Debug)]
pub(crate) struct Lanes {
    ordering: Ordering,
    /// Keys (or the keyless lane, `None`) with a handler running.
    running: HashSet<Option<Vec<u8>>>,
}

impl Lanes {
    pub(crate) fn new(ordering: Ordering) -> Self {
        Self {
            ordering,
            running: HashSet::new(),
        }
    }

    /// The positions, in order, of the waiting messages (their keys given
    /// oldest first) whose handler may start now.
    pub(crate) fn startable<'a>(
        &self,
        waiting: impl Iterator<Item = Option<&'a [u8]>>,
    ) -> Vec<usize> {
        match self.ordering {
            Ordering::Partition => {
                let mut waiting = waiting;
                if self.running.is_empty() && waiting.next().is_some() {
                    vec![0]
                } else {
                    Vec::new()
                }
            }
            Ordering::Key => {
                // A key is blocked by its running handler and by any older
                // waiting message of the same key.
                let mut blocked: HashSet<Option<&[u8]>> = HashSet::new();
                let mut startable = Vec::new();
                for (position, key) in waiting.enumerate() {
                    let running = self.running.contains(&key.map(<[u8]>::to_vec));
                    if blocked.insert(key) && !running {
                        startable.push(position);
                    }
                }
                startable
            }
        }
    }

    /// The handler of a message with `key` started.
    pub(crate) fn started(&mut self, key: Option<&[u8]>) {
        let lane = self.lane(key);
        self.running.insert(lane);
    }

    /// The handler of a message with `key` returned.
    pub(crate) fn ended(&mut self, key: Option<&[u8]>) {
        let lane = self.lane(key);
        self.running.remove(&lane);
    }

    /// The lane of `key`: every message shares one with partition ordering.
    fn lane(&self, key: Option<&[u8]>) -> Option<Vec<u8>> {
        match self.ordering {
            Ordering::Partition => None,
            Ordering::Key => key.map(<[u8]>::to_vec),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys<'a>(keys: &'a [Option<&'a str>]) -> impl Iterator<Item = Option<&'a [u8]>> {
        keys.iter().map(|key| key.map(str::as_bytes))
    }

    #[test]
    fn partition_ordering_starts_the_oldest_message_once_nothing_runs() {
        let mut lanes = Lanes::new(Ordering::Partition);
        let waiting = [Some("a"), Some("b")];
        assert_eq!(lanes.startable(keys(&waiting)), vec![0]);
        lanes.started(Some(b"a"));
        assert!(lanes.startable(keys(&waiting[1..])).is_empty());
        lanes.ended(Some(b"a"));
        assert_eq!(lanes.startable(keys(&waiting[1..])), vec![0]);
    }

    #[test]
    fn key_ordering_starts_the_oldest_message_of_every_idle_key() {
        let lanes = Lanes::new(Ordering::Key);
        let waiting = [Some("a"), Some("b"), Some("a"), Some("c"), Some("b")];
        assert_eq!(lanes.startable(keys(&waiting)), vec![0, 1, 3]);
    }

    #[test]
    fn a_key_with_a_running_handler_waits_and_other_keys_go_on() {
        let mut lanes = Lanes::new(Ordering::Key);
        lanes.started(Some(b"a"));
        let waiting = [Some("a"), Some("b"), Some("a")];
        assert_eq!(lanes.startable(keys(&waiting)), vec![1]);
        lanes.ended(Some(b"a"));
        assert_eq!(lanes.startable(keys(&waiting)), vec![0, 1]);
    }

    #[test]
    fn messages_without_a_key_share_one_lane() {
        let mut lanes = Lanes::new(Ordering::Key);
        let waiting = [None, Some("a"), None];
        assert_eq!(lanes.startable(keys(&waiting)), vec![0, 1]);
        lanes.started(None);
        assert_eq!(lanes.startable(keys(&waiting[1..])), vec![0]);
    }
}
