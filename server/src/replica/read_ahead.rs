//! The leader's read-ahead for followers catching up. A follower that is behind asks for
//! the next chunk of a partition as soon as it has the last one; without read-ahead the
//! leader only then starts reading it from disk, and the follower waits for the read, the
//! send and its own checks in turn. So when an answer leaves a follower still behind, the
//! leader starts reading the chunk that follower will ask for next (same offset, same
//! limit, same leader epoch); the next fetch takes that read if it matches, and drops it
//! otherwise. At most one read per follower and partition, each at most the follower's
//! `replica.fetch.max.bytes` (and none past [`MAX_READ_AHEAD_BYTES`]).

use std::cell::RefCell;
use std::rc::Rc;

use wharf_engine::{Batches, EngineError, Offset};

use crate::metadata::NodeId;
use crate::partition::PartitionHandle;

/// Larger per-partition limits are read when asked, not ahead.
pub const MAX_READ_AHEAD_BYTES: usize = 16 << 20;

/// What the next fetch of one follower will ask of the log.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ReadKey {
    pub follower: NodeId,
    pub leader_epoch: i32,
    pub from: i64,
    pub limit: usize,
}

struct Pending {
    key: ReadKey,
    read: glommio::Task<Result<Batches, EngineError>>,
}

/// One partition's reads ahead, one per follower at most.
#[derive(Default)]
pub struct ReadAheads {
    pending: RefCell<Vec<Pending>>,
}

impl ReadAheads {
    /// The read started for exactly `key`, if any. A read for that follower at another
    /// position, epoch or limit is dropped (cancelled).
    pub fn take(&self, key: &ReadKey) -> Option<glommio::Task<Result<Batches, EngineError>>> {
        let mut pending = self.pending.borrow_mut();
        let i = pending
            .iter()
            .position(|p| p.key.follower == key.follower)?;
        let found = pending.swap_remove(i);
        (found.key == *key).then_some(found.read)
    }

    /// Starts reading what `key` describes from `partition`'s log, replacing any read
    /// ahead for that follower.
    pub fn start(&self, partition: &Rc<PartitionHandle>, key: ReadKey) {
        if key.limit > MAX_READ_AHEAD_BYTES {
            return;
        }
        let p = partition.clone();
        let read =
            glommio::spawn_local(
                async move { p.log.read_batches(Offset(key.from), key.limit).await },
            );
        let mut pending = self.pending.borrow_mut();
        pending.retain(|p| p.key.follower != key.follower);
        pending.push(Pending { key, read });
    }

    /// Drops every read ahead (the partition is closing or changed hands).
    pub fn clear(&self) {
        self.pending.borrow_mut().clear();
    }
}
