//! A small model of one replica's partition log: whole batches in offset order, a prefix
//! of them on disk, the leader-epoch cache and the high-watermark checkpoint. A crash keeps
//! what is on disk and any prefix of the rest (a write may have reached the disk in part;
//! recovery drops a torn batch). Every batch appended is checked as the engine would check
//! it: a follower's batch failing its CRC, or one that does not continue the log, is a
//! violation of the rules the replica state machine must keep.

use bytes::Bytes;
use wharf_engine::epoch::LeaderEpochCache;
use wharf_protocol::batch::{batches, validate_batch_with, CountRule, IterEnd};

use super::rng::Rng;
use crate::replica::LocalLog;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBatch {
    pub base_offset: i64,
    /// The offset after the batch.
    pub end_offset: i64,
    pub epoch: i32,
    pub bytes: Bytes,
}

#[derive(Clone, Debug, Default)]
pub struct LogModel {
    start: i64,
    batches: Vec<StoredBatch>,
    /// How many batches (a prefix) are on disk.
    synced: usize,
    epochs: LeaderEpochCache,
    hw_checkpoint: i64,
    /// The checkpoint before the last periodic write, which a crash may bring back: the
    /// engine does not sync the directory after one (a lowering it does sync).
    hw_checkpoint_before: Option<i64>,
    /// Grows whenever anything is removed from the log, so checks of what was there
    /// start again.
    pub removals: u64,
}

impl LogModel {
    pub fn start(&self) -> i64 {
        self.start
    }

    pub fn end(&self) -> i64 {
        self.batches.last().map_or(self.start, |b| b.end_offset)
    }

    pub fn durable_end(&self) -> i64 {
        match self.synced {
            0 => self.start,
            n => self.batches[n - 1].end_offset,
        }
    }

    pub fn epochs(&self) -> &LeaderEpochCache {
        &self.epochs
    }

    pub fn batches(&self) -> &[StoredBatch] {
        &self.batches
    }

    /// The state a replica is built from after an open.
    pub fn local_log(&self) -> LocalLog {
        LocalLog {
            log_start_offset: self.start,
            log_end_offset: self.end(),
            epochs: self.epochs.clone(),
            high_watermark: self.hw_checkpoint,
        }
    }

    /// The batch starting at `base_offset`, if any.
    pub fn batch_at(&self, base_offset: i64) -> Option<&StoredBatch> {
        let i = self
            .batches
            .partition_point(|b| b.base_offset < base_offset);
        self.batches.get(i).filter(|b| b.base_offset == base_offset)
    }

    /// A leader's own batch (already stamped with its offset and epoch).
    pub fn append_as_leader(&mut self, bytes: Bytes) -> Result<(), String> {
        self.append(bytes)
    }

    /// The leader's bytes as a follower received them: each batch must pass its CRC and
    /// continue the log with an epoch that does not go down.
    pub fn append_as_follower(&mut self, records: Bytes) -> Result<(), String> {
        let mut walk = batches(&records);
        let mut parts = Vec::new();
        for (position, batch) in &mut walk {
            parts.push((position, batch.len()));
        }
        if walk.end() != IterEnd::Clean {
            return Err(format!(
                "a follower appended a partial batch at byte {}",
                walk.position()
            ));
        }
        for (position, len) in parts {
            self.append(records.slice(position..position + len))?;
        }
        Ok(())
    }

    fn append(&mut self, bytes: Bytes) -> Result<(), String> {
        let info = validate_batch_with(&bytes, bytes.len(), CountRule::AtMost)
            .map_err(|e| format!("appended a batch that fails validation: {e}"))?;
        if info.base_offset != self.end() {
            return Err(format!(
                "appended a batch at offset {} to a log ending at {}",
                info.base_offset,
                self.end()
            ));
        }
        let latest = self.batches.last().map_or(-1, |b| b.epoch);
        if info.partition_leader_epoch < latest {
            return Err(format!(
                "appended a batch of epoch {} after one of epoch {latest}",
                info.partition_leader_epoch
            ));
        }
        self.epochs
            .assign(info.partition_leader_epoch, info.base_offset);
        self.batches.push(StoredBatch {
            base_offset: info.base_offset,
            end_offset: info.last_offset() + 1,
            epoch: info.partition_leader_epoch,
            bytes,
        });
        Ok(())
    }

    pub fn assign_epoch(&mut self, epoch: i32, start_offset: i64) {
        self.epochs.assign(epoch, start_offset);
    }

    /// Removes every offset at or above `offset`, durably. A cut inside a batch is an error.
    pub fn truncate_to(&mut self, offset: i64) -> Result<(), String> {
        if offset < self.start {
            self.reset(offset);
            return Ok(());
        }
        let keep = self.batches.partition_point(|b| b.end_offset <= offset);
        if let Some(b) = self.batches.get(keep) {
            if b.base_offset < offset {
                return Err(format!(
                    "truncation at {offset} falls inside the batch {}..{}",
                    b.base_offset, b.end_offset
                ));
            }
        }
        if keep < self.batches.len() {
            self.batches.truncate(keep);
            self.removals += 1;
        }
        self.synced = self.synced.min(keep);
        self.epochs.truncate_from_end(offset);
        self.lower_hw_checkpoint(offset);
        Ok(())
    }

    pub fn reset(&mut self, offset: i64) {
        self.batches.clear();
        self.synced = 0;
        self.start = offset;
        self.epochs = LeaderEpochCache::default();
        // The engine lowers a checkpoint above the new start before anything goes.
        self.lower_hw_checkpoint(offset);
        self.removals += 1;
    }

    pub fn advance_start(&mut self, offset: i64) {
        let below = self.batches.partition_point(|b| b.end_offset <= offset);
        if below > 0 {
            self.batches.drain(..below);
            self.synced = self.synced.saturating_sub(below);
            self.removals += 1;
        }
        self.start = offset;
        self.epochs.truncate_from_start(offset);
    }

    /// An fdatasync: everything so far is on disk.
    pub fn sync(&mut self) {
        self.synced = self.batches.len();
    }

    /// The high-watermark checkpoint is replaced (atomically, as the engine renames it
    /// into place), capped at the log end.
    pub fn checkpoint_high_watermark(&mut self, high_watermark: i64) {
        self.hw_checkpoint_before = Some(self.hw_checkpoint);
        self.hw_checkpoint = high_watermark.min(self.end());
    }

    /// Before a truncation at `offset`: a checkpoint above it is lowered, durably (the
    /// directory synced, so no older value comes back either).
    fn lower_hw_checkpoint(&mut self, offset: i64) {
        if self.hw_checkpoint > offset {
            self.hw_checkpoint = offset;
        }
        self.hw_checkpoint_before = None;
    }

    pub fn hw_checkpoint(&self) -> i64 {
        self.hw_checkpoint
    }

    /// A crash: what was on disk stays, and some prefix of the rest. Recovery rebuilds the
    /// epoch cache from the batches that survived; all of it is on disk afterwards. The
    /// high-watermark checkpoint is replaced atomically: it survives as last written, or as
    /// before its last write.
    pub fn crash(&mut self, rng: &mut Rng) -> usize {
        let unsynced = self.batches.len() - self.synced;
        let kept = rng.index(unsynced + 1);
        let lost = unsynced - kept;
        if lost > 0 {
            self.batches.truncate(self.synced + kept);
            self.removals += 1;
        }
        self.synced = self.batches.len();
        let mut epochs = LeaderEpochCache::default();
        for b in &self.batches {
            epochs.assign(b.epoch, b.base_offset);
        }
        self.epochs = epochs;
        // The checkpoint file keeps its value, even past what survived (the replica caps
        // it at the log end when it is built), or is the one before its last write.
        if let Some(before) = self.hw_checkpoint_before.take() {
            if rng.index(2) == 0 {
                self.hw_checkpoint = before;
            }
        }
        lost
    }

    /// The batches from the one starting at `from` up to the log end, at most `max_bytes`
    /// (the first one whole), as one buffer: what a leader sends.
    pub fn read(&self, from: i64, max_bytes: usize) -> Bytes {
        let first = self.batches.partition_point(|b| b.end_offset <= from);
        let mut out = Vec::new();
        for b in &self.batches[first..] {
            if !out.is_empty() && out.len() + b.bytes.len() > max_bytes {
                break;
            }
            out.extend_from_slice(&b.bytes);
        }
        Bytes::from(out)
    }
}
