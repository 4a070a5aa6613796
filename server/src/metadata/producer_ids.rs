//! Producer ids for idempotent producers (KIP-98). Each shard takes a block of ids from the
//! cluster's active controller, which records the block in the metadata log (KIP-730's
//! AllocateProducerIds), so InitProducerId writes metadata once per block, not per call,
//! and an id is never handed out twice, across restarts and brokers included.

use std::cell::Cell;
use std::rc::Rc;

use crate::cluster;
use crate::controller::requests::{ControllerError, ControllerReply, ControllerRequest};
use crate::metadata::controller::MetadataError;
use crate::node::Shard;

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
        let (start, end) = allocate_producer_id_block(shard).await?;
        shard.producer_ids.install(start, end);
    }
    shard.producer_ids.take().ok_or(MetadataError::Unavailable)
}

/// A fresh block of producer ids `[start, end)` from the active controller, recorded in the
/// metadata log before it is handed out (the shards' blocks and the transaction
/// coordinators' come from here alike).
pub async fn allocate_producer_id_block(shard: &Rc<Shard>) -> Result<(i64, i64), MetadataError> {
    let broker_epoch = cluster::broker_epoch(shard)
        .await
        .ok_or(MetadataError::Unavailable)?;
    let request = ControllerRequest::AllocateProducerIds {
        node: shard.node_id(),
        broker_epoch,
    };
    match cluster::call(shard, request).await {
        Ok(ControllerReply::ProducerIds(block)) => {
            Ok((block.first, block.first + i64::from(block.count)))
        }
        Ok(_) => Err(MetadataError::Unavailable),
        Err(ControllerError::Metadata(e)) => Err(e),
        Err(e) => {
            tracing::debug!("no producer ids from the controller: {e}");
            Err(MetadataError::Unavailable)
        }
    }
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
