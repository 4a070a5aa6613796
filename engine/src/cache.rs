//! The per-shard cache of recently appended batches. Each partition keeps a run of its most
//! recent batches (contiguous up to its log end); the shard-wide budget is enforced by
//! evicting the oldest batches of any partition, first in, first out. Tail consumers are
//! served from here; catch-up reads go to disk.
//!
//! Batches are kept as the producer sent them (the `Bytes` of the request, not copied) with
//! the offset and epoch the log assigned; a read hands out the buffers themselves, with a
//! fixed copy of the header where it lacks those (`Batches`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use bytes::{BufMut, Bytes, BytesMut};
use wharf_protocol::batch::{BatchHeader, BATCH_HEADER_BYTES};

use crate::batches::Batches;

/// One cached batch. `bytes` may still carry the producer's baseOffset and epoch.
#[derive(Clone, Debug)]
pub(crate) struct CachedBatch {
    id: u64,
    pub base_offset: i64,
    pub last_offset: i64,
    pub leader_epoch: i32,
    pub bytes: Bytes,
}

/// The cached run of one partition: batches in offset order, contiguous, ending at the
/// partition's log end (or empty).
#[derive(Default)]
pub(crate) struct PartitionCache {
    batches: RefCell<VecDeque<CachedBatch>>,
}

/// A per-shard cache of recently appended batches with a byte budget, shared by all the
/// shard's partition logs so tail consumers are served from memory.
/// Invariant: `used_bytes` is the sum of the sizes of the batches held by live partitions.
pub struct BatchCache {
    budget_bytes: usize,
    used_bytes: Cell<usize>,
    next_id: Cell<u64>,
    /// Batches currently held, to keep `order` proportional to them.
    live_batches: Cell<usize>,
    /// Insertion order across partitions; entries whose batch is gone are skipped.
    order: RefCell<VecDeque<(Weak<PartitionCache>, u64)>>,
}

impl BatchCache {
    pub fn new(budget_bytes: usize) -> Rc<BatchCache> {
        Rc::new(BatchCache {
            budget_bytes,
            used_bytes: Cell::new(0),
            next_id: Cell::new(0),
            live_batches: Cell::new(0),
            order: RefCell::new(VecDeque::new()),
        })
    }

    pub fn budget_bytes(&self) -> usize {
        self.budget_bytes
    }

    /// Bytes of batches currently held.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes.get()
    }

    pub(crate) fn new_partition(&self) -> Rc<PartitionCache> {
        Rc::new(PartitionCache::default())
    }

    /// Adds a batch at the end of `partition`'s run, evicting the oldest batches of the
    /// shard beyond the budget. A batch larger than the whole budget is not cached, and the
    /// partition's run is dropped so that it stays contiguous.
    pub(crate) fn insert(
        &self,
        partition: &Rc<PartitionCache>,
        base_offset: i64,
        last_offset: i64,
        leader_epoch: i32,
        bytes: Bytes,
    ) {
        let size = bytes.len();
        let contiguous = partition
            .batches
            .borrow()
            .back()
            .is_none_or(|b| b.last_offset + 1 == base_offset);
        if size > self.budget_bytes || !contiguous {
            self.clear(partition);
            if size > self.budget_bytes {
                return;
            }
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        partition.batches.borrow_mut().push_back(CachedBatch {
            id,
            base_offset,
            last_offset,
            leader_epoch,
            bytes,
        });
        self.used_bytes.set(self.used_bytes.get() + size);
        self.live_batches.set(self.live_batches.get() + 1);
        let mut order = self.order.borrow_mut();
        order.push_back((Rc::downgrade(partition), id));
        while self.used_bytes.get() > self.budget_bytes {
            let Some((weak, id)) = order.pop_front() else {
                break;
            };
            let Some(owner) = weak.upgrade() else {
                continue;
            };
            let mut batches = owner.batches.borrow_mut();
            if batches.front().is_some_and(|b| b.id == id) {
                let evicted = batches.pop_front().map_or(0, |b| b.bytes.len());
                self.removed(1, evicted);
            }
        }
        // Entries of batches removed by truncation or deletion linger in `order`; rebuild
        // it when they outnumber the live ones so it stays proportional to the cache.
        if order.len() > 1024 + 2 * self.live_batches.get() {
            order.retain(|(weak, id)| {
                weak.upgrade()
                    .is_some_and(|p| p.batches.borrow().iter().any(|b| b.id == *id))
            });
        }
    }

    fn removed(&self, batches: usize, bytes: usize) {
        self.live_batches.set(self.live_batches.get() - batches);
        self.used_bytes.set(self.used_bytes.get() - bytes);
    }

    /// Drops `partition`'s batches at or after `offset` (log truncation).
    pub(crate) fn truncate_from(&self, partition: &PartitionCache, offset: i64) {
        let mut batches = partition.batches.borrow_mut();
        while batches.back().is_some_and(|b| b.last_offset >= offset) {
            let size = batches.pop_back().map_or(0, |b| b.bytes.len());
            self.removed(1, size);
        }
    }

    /// Drops `partition`'s batches that end before `offset` (log start moved).
    pub(crate) fn drop_before(&self, partition: &PartitionCache, offset: i64) {
        let mut batches = partition.batches.borrow_mut();
        while batches.front().is_some_and(|b| b.last_offset < offset) {
            let size = batches.pop_front().map_or(0, |b| b.bytes.len());
            self.removed(1, size);
        }
    }

    /// Drops every batch of `partition` (close, delete).
    pub(crate) fn clear(&self, partition: &PartitionCache) {
        let mut batches = partition.batches.borrow_mut();
        let size: usize = batches.iter().map(|b| b.bytes.len()).sum();
        self.removed(batches.len(), size);
        batches.clear();
    }

    /// The cached batches a read takes: from the one that contains `from_offset`, ending
    /// before `end_offset`, up to about `max_bytes` (the first whole). `None` when the cache
    /// does not hold `from_offset`.
    fn select(
        batches: &VecDeque<CachedBatch>,
        from_offset: i64,
        end_offset: i64,
        max_bytes: usize,
    ) -> Option<std::ops::Range<usize>> {
        if batches.front().is_none_or(|b| b.base_offset > from_offset) {
            return None;
        }
        let first = batches.partition_point(|b| b.last_offset < from_offset);
        let mut total = 0;
        let mut count = 0;
        for batch in batches.range(first..) {
            if batch.last_offset >= end_offset
                || (count > 0 && total + batch.bytes.len() > max_bytes)
            {
                break;
            }
            total += batch.bytes.len();
            count += 1;
        }
        (count > 0).then_some(first..first + count)
    }

    /// Whole cached batches starting with the one that contains `from_offset`, ending before
    /// `end_offset`, up to about `max_bytes` (the first whole), handed out as the cache
    /// holds them: a batch whose header already carries its assigned offset and epoch (a
    /// follower's, or one read back) is its own buffer; one as its producer sent it is a
    /// fixed copy of its header followed by the rest of its buffer. `None` when the cache
    /// does not hold `from_offset`.
    pub(crate) fn read(
        &self,
        partition: &PartitionCache,
        from_offset: i64,
        end_offset: i64,
        max_bytes: usize,
    ) -> Option<Batches> {
        let batches = partition.batches.borrow();
        let range = Self::select(&batches, from_offset, end_offset, max_bytes)?;
        let mut out = Batches::new();
        // The fixed headers share one buffer.
        let mut heads = BytesMut::new();
        for batch in batches.range(range) {
            let Some(head) = batch.bytes.get(..BATCH_HEADER_BYTES) else {
                // Never cached (the log validates what it appends); kept whole regardless.
                out.push(batch.bytes.clone());
                continue;
            };
            let view = BatchHeader::view(head).expect("a slice of a header's length");
            if view.base_offset() == batch.base_offset
                && view.partition_leader_epoch() == batch.leader_epoch
            {
                out.push(batch.bytes.clone());
                continue;
            }
            if heads.capacity() < BATCH_HEADER_BYTES {
                heads.reserve(BATCH_HEADER_BYTES * 32);
            }
            heads.put_slice(head);
            wharf_protocol::batch::set_base_offset(&mut heads, batch.base_offset);
            wharf_protocol::batch::set_partition_leader_epoch(&mut heads, batch.leader_epoch);
            out.push(heads.split().freeze());
            out.push(batch.bytes.slice(BATCH_HEADER_BYTES..));
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_protocol::batch::{simple_batch, validate_batch};

    fn batch(records: usize) -> Bytes {
        Bytes::from(simple_batch(records, 10, 0))
    }

    #[test]
    fn budget_evicts_oldest_first_across_partitions() {
        let one = batch(1).len();
        let cache = BatchCache::new(3 * one);
        let a = cache.new_partition();
        let b = cache.new_partition();
        cache.insert(&a, 0, 0, 1, batch(1));
        cache.insert(&b, 0, 0, 1, batch(1));
        cache.insert(&a, 1, 1, 1, batch(1));
        assert_eq!(cache.used_bytes(), 3 * one);
        cache.insert(&b, 1, 1, 1, batch(1));
        assert_eq!(cache.used_bytes(), 3 * one);
        assert!(
            cache.read(&a, 0, 10, 1 << 20).is_none(),
            "a's oldest batch was evicted"
        );
        assert!(cache.read(&a, 1, 10, 1 << 20).is_some());
        assert!(cache.read(&b, 0, 10, 1 << 20).is_some());
    }

    #[test]
    fn reads_carry_assigned_offsets_and_respect_limits() {
        let cache = BatchCache::new(1 << 20);
        let p = cache.new_partition();
        cache.insert(&p, 100, 101, 7, batch(2));
        cache.insert(&p, 102, 104, 7, batch(3));
        let out = cache
            .read(&p, 101, 105, 1)
            .expect("cached")
            .into_contiguous();
        let info = validate_batch(&out, 1 << 20).expect("valid batch");
        assert_eq!((info.base_offset, info.partition_leader_epoch), (100, 7));
        assert_eq!(
            out.len(),
            info.size_bytes,
            "only the first batch fits max_bytes"
        );
        let both = cache.read(&p, 100, 105, 1 << 20).expect("cached");
        assert_eq!(both.len(), batch(2).len() + batch(3).len());
        assert!(
            cache
                .read(&p, 100, 102, 1 << 20)
                .is_some_and(|b| b.len() == batch(2).len()),
            "stops at end_offset"
        );
        cache.truncate_from(&p, 103);
        assert!(cache.read(&p, 103, 105, 1 << 20).is_none());
        cache.drop_before(&p, 102);
        assert_eq!(cache.used_bytes(), 0);
    }

    #[test]
    fn reads_hand_out_the_cached_buffers_and_fix_only_headers() {
        let cache = BatchCache::new(1 << 20);
        let p = cache.new_partition();
        // As its producer sent it: offset 0, epoch -1 in its header.
        let produced = batch(2);
        // As a follower got it: the header already says offset 2, epoch 7.
        let mut replicated = simple_batch(3, 10, 0);
        wharf_protocol::batch::set_base_offset(&mut replicated, 2);
        wharf_protocol::batch::set_partition_leader_epoch(&mut replicated, 7);
        let replicated = Bytes::from(replicated);
        cache.insert(&p, 0, 1, 7, produced.clone());
        cache.insert(&p, 2, 4, 7, replicated.clone());
        let read = cache.read(&p, 0, 5, 1 << 20).expect("cached");
        let parts = read.parts();
        assert_eq!(
            parts.len(),
            3,
            "fixed header, rest of the produced batch, replicated batch"
        );
        assert_eq!(parts[0].len(), BATCH_HEADER_BYTES);
        assert_eq!(
            parts[1].as_ptr(),
            produced[BATCH_HEADER_BYTES..].as_ptr(),
            "not copied"
        );
        assert_eq!(parts[2].as_ptr(), replicated.as_ptr(), "not copied");
        assert_eq!(read.end_offset(), Some(5));
        let whole = read.into_contiguous();
        let first = validate_batch(&whole, 1 << 20).expect("valid batch");
        assert_eq!((first.base_offset, first.partition_leader_epoch), (0, 7));
        let second = validate_batch(&whole[first.size_bytes..], 1 << 20).expect("valid batch");
        assert_eq!((second.base_offset, second.partition_leader_epoch), (2, 7));
    }
}
