//! Producer ids for InitProducerId, handed out from blocks the controller allocates (Kafka's
//! `RPCProducerIdManager`): the coordinator asks for the next block when the current one is
//! 90% used, and answers COORDINATOR_LOAD_IN_PROGRESS (retriable) while it has none.

/// The blocks this coordinator holds. Invariant: ids are handed out once, in increasing
/// order within a block.
#[derive(Clone, Debug, Default)]
pub struct ProducerIdPool {
    /// The next id to hand out and the end (exclusive) of the current block.
    current: Option<(i64, i64)>,
    /// The first id and the end of the block current one moves to when it is used up.
    next_block: Option<(i64, i64)>,
    /// Where the current block started, to tell when 90% of it is used.
    current_start: i64,
    requested: bool,
}

impl ProducerIdPool {
    /// A block of `count` ids from `first` (from the controller's AllocateProducerIds).
    /// Empty or overflowing blocks are ignored.
    pub fn add_block(&mut self, first: i64, count: i64) {
        self.requested = false;
        let Some(end) = first.checked_add(count) else {
            return;
        };
        if first < 0 || count <= 0 {
            return;
        }
        match self.current {
            Some((next, end_current)) if next < end_current => {
                self.next_block = Some((first, end));
            }
            _ => {
                self.current = Some((first, end));
                self.current_start = first;
            }
        }
    }

    /// The block request failed; the next id taken asks again.
    pub fn request_failed(&mut self) {
        self.requested = false;
    }

    /// The next producer id, or `None` while no block is held.
    pub fn next_id(&mut self) -> Option<i64> {
        if let Some((next, end)) = self.current {
            if next < end {
                self.current = Some((next + 1, end));
                return Some(next);
            }
        }
        let (first, end) = self.next_block.take()?;
        self.current = Some((first + 1, end));
        self.current_start = first;
        Some(first)
    }

    /// True (once, until answered) when a new block should be requested: none is held,
    /// or the current block is 90% used and none is waiting.
    pub fn take_block_wanted(&mut self) -> bool {
        if self.requested || self.next_block.is_some() {
            return false;
        }
        let wanted = match self.current {
            None => true,
            Some((next, end)) => {
                let size = (end - self.current_start).max(1);
                (next - self.current_start) * 10 >= size * 9
            }
        };
        if wanted {
            self.requested = true;
        }
        wanted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_ids_in_order_and_asks_for_more_at_ninety_percent() {
        let mut pool = ProducerIdPool::default();
        assert_eq!(pool.next_id(), None);
        assert!(pool.take_block_wanted());
        assert!(!pool.take_block_wanted(), "asked once until answered");
        pool.add_block(100, 10);
        for expect in 100..109 {
            assert_eq!(pool.next_id(), Some(expect));
        }
        assert!(pool.take_block_wanted());
        pool.add_block(1000, 10);
        assert_eq!(pool.next_id(), Some(109));
        assert_eq!(pool.next_id(), Some(1000));
        assert_eq!(pool.next_id(), Some(1001));
    }

    #[test]
    fn bad_blocks_are_ignored() {
        let mut pool = ProducerIdPool::default();
        pool.add_block(-5, 10);
        pool.add_block(i64::MAX, 10);
        pool.add_block(5, 0);
        assert_eq!(pool.next_id(), None);
        assert!(pool.take_block_wanted());
        pool.request_failed();
        assert!(pool.take_block_wanted());
    }
}
