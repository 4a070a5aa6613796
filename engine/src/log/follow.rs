//! The follower's side of replication: the leader's batches appended exactly as the leader
//! stored them (offsets, leader epochs, timestamps and CRC kept; nothing rewritten,
//! nothing assigned), and the restart of an empty log at the leader's log start.
//!
//! The checks are the state machine's ([`check_follower_batches`], no I/O); the append then
//! goes through the same queue, group commit, epoch checkpoint and producer snapshots as a
//! leader's, so a follower's log recovers from a crash exactly as a leader's does.
//!
//! Transactional data batches and control batches (COMMIT/ABORT markers) are taken like
//! any other: the leader already checked them, and the server keeps the partition's
//! transaction state from what this path appended, in log order.

use std::rc::Rc;

use bytes::Bytes;
use wharf_protocol::batch::{batches, validate_batch_with, BatchInfo, CountRule, IterEnd};

use crate::cache::{BatchCache, PartitionCache};
use crate::error::EngineError;
use crate::storage::Storage;
use crate::Offset;

use super::append::Assigned;
use super::state::LogState;
use super::{write, AppendInfo, Durability, PartitionLog};

/// The largest batch a follower takes. The leader already held its batches to its own
/// `max.message.bytes` (which may differ from this replica's config, as in Kafka, whose
/// followers do not check it); this only keeps a position inside a segment in 32 bits.
pub const MAX_FOLLOWER_BATCH_BYTES: usize = i32::MAX as usize;

/// Why a follower refuses the leader's batches. Any refusal refuses the whole append.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FollowerRefusal {
    /// Framing, magic, CRC-32C or the record count (`recordsCount <= lastOffsetDelta + 1`,
    /// as compaction may have removed records), or bytes after the last whole batch.
    #[error("{0}")]
    Corrupt(String),
    /// The batches do not continue the log: the first must start at the log end and each
    /// one where the previous one ended (Kafka's UnexpectedAppendOffsetException).
    #[error("a batch at offset {found} does not continue the log at offset {expected}")]
    NotContiguous { expected: i64, found: i64 },
    /// A batch whose leader epoch is below the log's latest (or negative): the log's
    /// epochs only grow (KIP-101), and a replicated batch always carries its leader's.
    #[error("a batch at offset {offset} carries leader epoch {epoch}, below the log's latest epoch {latest}")]
    EpochGoesBack {
        offset: i64,
        epoch: i32,
        latest: i32,
    },
}

impl From<FollowerRefusal> for EngineError {
    fn from(refusal: FollowerRefusal) -> EngineError {
        match refusal {
            FollowerRefusal::Corrupt(m) => EngineError::CorruptMessage(m),
            other => EngineError::FollowerRefused(other.to_string()),
        }
    }
}

/// Validates the leader's batches for a log that ends at `log_end_offset` with the latest
/// leader epoch `latest_epoch`: every batch whole and passing its checks, contiguous from
/// the log end, with leader epochs that never go down. Returns each batch's position and
/// header facts. Pure: the same input always gives the same answer.
pub fn check_follower_batches(
    records: &[u8],
    log_end_offset: i64,
    latest_epoch: Option<i32>,
) -> Result<Vec<(usize, BatchInfo)>, FollowerRefusal> {
    let mut infos = Vec::new();
    let mut iter = batches(records);
    let mut expected = log_end_offset;
    let mut latest = latest_epoch.unwrap_or(0).max(0);
    for (pos, bytes) in iter.by_ref() {
        let info = validate_batch_with(bytes, MAX_FOLLOWER_BATCH_BYTES, CountRule::AtMost)
            .map_err(|e| FollowerRefusal::Corrupt(e.to_string()))?;
        if info.base_offset != expected {
            return Err(FollowerRefusal::NotContiguous {
                expected,
                found: info.base_offset,
            });
        }
        if info.partition_leader_epoch < latest {
            return Err(FollowerRefusal::EpochGoesBack {
                offset: info.base_offset,
                epoch: info.partition_leader_epoch,
                latest,
            });
        }
        latest = info.partition_leader_epoch;
        expected = info.last_offset() + 1;
        infos.push((pos, info));
    }
    if iter.end() != IterEnd::Clean {
        let rest = &records[iter.position()..];
        return Err(FollowerRefusal::Corrupt(
            match validate_batch_with(rest, MAX_FOLLOWER_BATCH_BYTES, CountRule::AtMost) {
                Err(e) => format!("a partial batch at the end: {e}"),
                Ok(_) => "trailing bytes after the last record batch".into(),
            },
        ));
    }
    if infos.is_empty() {
        return Err(FollowerRefusal::Corrupt("no record batches".into()));
    }
    Ok(infos)
}

impl LogState {
    /// Queues the leader's batches, checked by [`check_follower_batches`] against this
    /// state, at the offsets and epochs they carry: the epoch cache takes each new epoch at
    /// its first offset, and the idempotent producers' state records each batch as the
    /// leader assigned it (KIP-98 state rebuilt from the replicated batches, so that a
    /// retry after a failover is still recognised). No I/O.
    pub fn append_as_follower(
        &mut self,
        records: &Bytes,
        now_ms: i64,
        cache: &BatchCache,
        cached: &Rc<PartitionCache>,
    ) -> Result<Assigned, FollowerRefusal> {
        let infos = check_follower_batches(records, self.next_offset, self.epochs.latest_epoch())?;
        let first = self.next_offset;
        let mut last = first;
        for (pos, info) in infos {
            let bytes = records.slice(pos..pos + info.size_bytes);
            // Recorded after `assign`: a roll inside it snapshots the state before this batch.
            let (base, end) = self.assign(
                bytes,
                info,
                info.partition_leader_epoch,
                now_ms,
                cache,
                cached,
            );
            debug_assert_eq!(
                base, info.base_offset,
                "a follower keeps the leader's offsets"
            );
            self.producers.record(&info, base, now_ms);
            last = end;
        }
        let start_writer =
            !self.pending.is_empty() && !std::mem::replace(&mut self.writer_running, true);
        Ok(Assigned {
            seq: self.appended_seq,
            first,
            last,
            log_append_time_ms: -1,
            log_start: self.log_start_offset,
            start_writer,
        })
    }
}

impl<S: Storage> PartitionLog<S> {
    /// Appends the leader's batches as they are (a follower's fetch answer): each must
    /// pass its framing and CRC-32C checks, the first must start at this log's end and each
    /// next one where the previous ended, and their leader epochs must never go down. All
    /// or nothing: one refusal appends none of them. Nothing in the bytes is rewritten;
    /// the leader-epoch checkpoint takes each new epoch before a batch carrying it is
    /// written, and the idempotent producers' state is rebuilt from the batches.
    pub async fn append_as_follower(
        &self,
        records: Bytes,
        durability: Durability,
    ) -> Result<AppendInfo, EngineError> {
        let inner = &self.inner;
        while inner.state.borrow().truncating {
            drop(
                inner
                    .append_gate
                    .acquire()
                    .await
                    .map_err(|_| inner.closed_error())?,
            );
        }
        let now = inner.storage.now_ms();
        inner.check_writable()?;
        let assigned = inner.state.borrow_mut().append_as_follower(
            &records,
            now,
            &inner.cache,
            &inner.cached,
        )?;
        // Spawned outside the state borrow: an executor may run a new task right away.
        if assigned.start_writer {
            write::start_writer(inner);
        }
        inner
            .written
            .wait(assigned.seq)
            .await
            .map_err(|reason| inner.storage_error(reason))?;
        if durability == Durability::Synced {
            inner.wait_synced(assigned.seq).await?;
        }
        Ok(AppendInfo {
            base_offset: Offset(assigned.first),
            last_offset: Offset(assigned.last),
            log_append_time_ms: assigned.log_append_time_ms,
            log_start_offset: Offset(assigned.log_start),
        })
    }
}
