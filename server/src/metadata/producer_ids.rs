//! Producer ids for idempotent producers (KIP-98). The controller on shard 0 persists a
//! high-water mark and hands each shard a block of ids below it (Kafka's
//! ProducerIdManager), so InitProducerId writes metadata once per block, not per call, and
//! an id is never handed out twice, across restarts included.

use std::cell::Cell;
use std::rc::Rc;

use crate::metadata::controller::{MetadataError, CONTROLLER_SHARD};
use crate::shard::Shard;

/// Ids a shard takes from the controller at a time (Kafka's block size).
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

/// The ids `[next, end)` a shard may hand out without asking the controller.
#[derive(Debug, Default)]
pub struct ProducerIdBlock {
    next: Cell<i64>,
    end: Cell<i64>,
}

impl ProducerIdBlock {
    /// The next unused id of the block, if any is left.
    pub fn take(&self) -> Option<i64> {
        let next = self.next.get();
        (next < self.end.get()).then(|| {
            self.next.set(next + 1);
            next
        })
    }

    /// Installs a new block unless ids are left in the current one (two requests may ask
    /// the controller at once; the ids of the block not installed are simply never used).
    pub fn install(&self, start: i64, end: i64) {
        if self.next.get() >= self.end.get() {
            self.next.set(start);
            self.end.set(end);
        }
    }
}

/// A producer id never handed out before.
pub async fn next_producer_id(shard: &Rc<Shard>) -> Result<i64, MetadataError> {
    // A bounded number of rounds: each round either finds an id or installs a fresh block.
    for _ in 0..3 {
        if let Some(id) = shard.producer_ids.take() {
            return Ok(id);
        }
        let (start, end) = shard
            .invoke_on(CONTROLLER_SHARD, |s| async move {
                s.controller()
                    .allocate_producer_ids(PRODUCER_ID_BLOCK_SIZE)
                    .await
            })
            .await
            .map_err(|_| MetadataError::Unavailable)??;
        shard.producer_ids.install(start, end);
    }
    shard.producer_ids.take().ok_or(MetadataError::Unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_hands_out_each_id_once_and_is_replaced_only_when_spent() {
        let block = ProducerIdBlock::default();
        assert_eq!(block.take(), None);
        block.install(10, 12);
        block.install(50, 60);
        assert_eq!(block.take(), Some(10));
        assert_eq!(block.take(), Some(11));
        assert_eq!(block.take(), None);
        block.install(50, 60);
        assert_eq!(block.take(), Some(50));
    }
}
