//! One partition's offsets between *taken* and *acknowledged*, and the
//! offset that may be committed: the end of the contiguous prefix of
//! finished messages. A message finishes when its reply or dead letter is
//! acknowledged by Kafka; messages finish out of order (acknowledgements
//! are pipelined, keys run concurrently), offsets never advance past an
//! unfinished one. This is the at-least-once invariant in arithmetic.
//!
//! Pure bookkeeping: it never touches Kafka (storing the offset is
//! `pipeline`'s) and knows nothing of keys or handlers.

use std::collections::BTreeMap;

/// Offsets taken and not yet part of the finished prefix.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Each open offset with how many takes of it are unfinished (a
    /// redelivery may take an offset again while it is open).
    open: BTreeMap<i64, u32>,
}

impl Ledger {
    /// `offset` was taken from the partition's queue.
    pub(crate) fn take(&mut self, offset: i64) {
        *self.open.entry(offset).or_insert(0) += 1;
    }

    /// `offset` is finished. Returns the last offset of the finished prefix
    /// when the prefix grew (what to store: the commit is the one after
    /// it), `None` when an earlier message is still open.
    pub(crate) fn finish(&mut self, offset: i64) -> Option<i64> {
        let count = self.open.get_mut(&offset)?;
        *count -= 1;
        let mut prefix_end = None;
        while let Some(entry) = self.open.first_entry() {
            if *entry.get() > 0 {
                break;
            }
            prefix_end = Some(*entry.key());
            entry.remove();
        }
        prefix_end
    }

    /// Messages taken and not in the finished prefix: the partition's
    /// work in flight, which its bound limits.
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_acknowledgements_advance_the_offset_one_by_one() {
        let mut ledger = Ledger::default();
        ledger.take(10);
        ledger.take(11);
        assert_eq!(ledger.finish(10), Some(10));
        assert_eq!(ledger.finish(11), Some(11));
        assert_eq!(ledger.len(), 0);
    }

    #[test]
    fn a_later_acknowledgement_waits_for_the_earlier_open_message() {
        let mut ledger = Ledger::default();
        for offset in 5..9 {
            ledger.take(offset);
        }
        assert_eq!(ledger.finish(7), None, "5 and 6 are still open");
        assert_eq!(ledger.finish(6), None, "5 is still open");
        assert_eq!(ledger.len(), 4);
        assert_eq!(ledger.finish(5), Some(7), "5, 6, 7 finished together");
        assert_eq!(ledger.len(), 1);
        assert_eq!(ledger.finish(8), Some(8));
    }

    #[test]
    fn an_offset_taken_twice_stays_open_until_both_finish() {
        let mut ledger = Ledger::default();
        ledger.take(3);
        ledger.take(3);
        assert_eq!(ledger.finish(3), None);
        assert_eq!(ledger.finish(3), Some(3));
    }

    #[test]
    fn a_redelivered_earlier_offset_holds_the_prefix_back() {
        let mut ledger = Ledger::default();
        ledger.take(20);
        ledger.take(15);
        assert_eq!(ledger.finish(20), None, "15 came back and is open");
        assert_eq!(ledger.finish(15), Some(20));
    }

    #[test]
    fn finishing_an_offset_never_taken_changes_nothing() {
        let mut ledger = Ledger::default();
        ledger.take(1);
        assert_eq!(ledger.finish(2), None);
        assert_eq!(ledger.len(), 1);
    }
}
