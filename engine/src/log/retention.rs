//! Retention and DeleteRecords: the log start moves forward and whole segments below it go
//! (never the active one). Which segments go is a pure decision
//! ([`crate::retention::segments_to_delete`]); this carries it out.

use std::rc::Rc;

use crate::cache::{BatchCache, PartitionCache};
use crate::error::EngineError;
use crate::retention::{segments_to_delete, SegmentSummary};
use crate::storage::{replace_file, Storage};
use crate::Offset;

use super::segment::{segment_path, SegmentState, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use super::state::{FailureKind, LogState};
use super::{seal, snapshot, write, Inner, PartitionLog, LOG_START_FILE};

impl LogState {
    /// How many of the oldest segments retention (or a log start moving to `below`) lets
    /// go now.
    fn segments_to_retire(
        &self,
        below: i64,
        retention_ms: i64,
        retention_bytes: i64,
        now_ms: i64,
    ) -> usize {
        let summaries: Vec<SegmentSummary> = self
            .segments
            .iter()
            .map(|s| SegmentSummary {
                base_offset: s.base_offset,
                size_bytes: s.size_bytes,
                largest_timestamp_ms: s.largest_timestamp_ms(),
            })
            .collect();
        let count = segments_to_delete(
            &summaries,
            self.log_start_offset.max(below),
            retention_ms,
            retention_bytes,
            now_ms,
        );
        // Only sealed segments go; one just rolled waits for the writer to seal it.
        count.min(
            self.segments
                .iter()
                .take_while(|s| s.state == SegmentState::Sealed)
                .count(),
        )
    }

    /// What retention (or a log start moving to `below`) removes now, if anything.
    fn plan_retirement(
        &self,
        below: i64,
        retention_ms: i64,
        retention_bytes: i64,
        now_ms: i64,
    ) -> Option<Retirement> {
        let count = self.segments_to_retire(below, retention_ms, retention_bytes, now_ms);
        if count == 0 {
            return None;
        }
        // The first segment left tells a restart where the log starts, but only once it
        // has a file; until then `log-start-offset` must.
        let unrecorded = self.segments[count..]
            .iter()
            .all(|s| s.state == SegmentState::Closed && s.written_bytes == 0);
        Some(Retirement {
            count,
            record_log_start: unrecorded.then(|| self.segments[count].base_offset),
        })
    }

    /// Removes the `count` oldest segments from the state; the log start moves to the
    /// first one left. Returns the removed segments' base offsets (their files go next).
    fn retire(&mut self, count: usize, cache: &BatchCache, cached: &PartitionCache) -> Vec<i64> {
        let removed: Vec<i64> = self
            .segments
            .drain(..count)
            .map(|s| s.base_offset)
            .collect();
        let first_base = self.segments[0].base_offset;
        self.move_log_start(first_base, cache, cached);
        self.recompute_max_timestamp();
        self.generation += 1;
        removed
    }

    /// What DeleteRecords to `offset` must do.
    fn plan_delete_records(&self, offset: i64) -> DeleteRecordsPlan {
        if offset < 0 || offset > self.next_offset {
            DeleteRecordsPlan::OutOfRange {
                log_start: self.log_start_offset,
                log_end: self.next_offset,
            }
        } else if offset <= self.log_start_offset {
            DeleteRecordsPlan::Done(self.log_start_offset)
        } else {
            DeleteRecordsPlan::MoveLogStart
        }
    }

    /// Rolled segments whose writes are all done, which a deletion may seal itself.
    fn sealable(&self) -> Vec<i64> {
        let queued_from = self.pending.front().map_or(i64::MAX, |p| p.segment_base);
        self.segments[..self.segments.len() - 1]
            .iter()
            .filter(|s| s.state != SegmentState::Sealed && s.base_offset < queued_from)
            .map(|s| s.base_offset)
            .collect()
    }
}

/// Segments retention lets go now.
struct Retirement {
    /// How many of the oldest segments.
    count: usize,
    /// The log start to record before they go: the segments left have no file yet to
    /// tell a restart where the log starts.
    record_log_start: Option<i64>,
}

/// What DeleteRecords does.
enum DeleteRecordsPlan {
    OutOfRange {
        log_start: i64,
        log_end: i64,
    },
    /// The log start is already at or past the offset: nothing to do.
    Done(i64),
    /// Whole segments below the offset go, then the log start moves to it.
    MoveLogStart,
}

impl<S: Storage> PartitionLog<S> {
    /// DeleteRecords: advance the log start offset to `offset` (deleting whole segments
    /// below it); returns the new log start offset.
    pub async fn delete_records_before(&self, offset: Offset) -> Result<Offset, EngineError> {
        let inner = &self.inner;
        let _lock = inner
            .io_lock
            .acquire()
            .await
            .map_err(|_| inner.closed_error())?;
        // Not refused while writes are (deleting records is how space comes back), but
        // while a failure's reload from disk has yet to succeed: until then the log's
        // bounds are not known (a truncation may have stopped half way).
        let plan = {
            let st = inner.state.borrow();
            inner.check_open(&st)?;
            if let super::state::Health::Failed {
                recovered: false,
                reason,
                ..
            } = &st.health
            {
                return Err(inner.storage_error(format!(
                    "the partition is being reloaded from disk ({reason})"
                )));
            }
            st.plan_delete_records(offset.0)
        };
        match plan {
            DeleteRecordsPlan::OutOfRange { log_start, log_end } => {
                return Err(EngineError::OffsetOutOfRange {
                    requested: offset.0,
                    log_start,
                    log_end,
                })
            }
            DeleteRecordsPlan::Done(log_start) => return Ok(Offset(log_start)),
            DeleteRecordsPlan::MoveLogStart => {}
        }
        // Whole segments below it go first (the log start moves to the first one left,
        // which needs no record: a restart finds it so). On a full disk that is what makes
        // room for the file that records the log start inside a segment.
        let now = inner.storage.now_ms();
        inner
            .delete_old_segments_locked(offset.0, -1, -1, now)
            .await?;
        if inner.state.borrow().log_start_offset < offset.0 {
            let path = inner.dir.join(LOG_START_FILE);
            let text = format!("{}\n", offset.0).into_bytes();
            replace_file(&inner.storage, &path, text, true)
                .await
                .map_err(|e| EngineError::io("cannot record the log start offset", e))?;
            let mut st = inner.state.borrow_mut();
            st.move_log_start(offset.0, &inner.cache, &inner.cached);
            st.log_start_unrecorded = false;
        }
        Ok(Offset(inner.state.borrow().log_start_offset))
    }

    /// Periodic upkeep: roll the active segment when `segment.ms` has passed, and apply
    /// `retention.ms` / `retention.bytes` by deleting whole segments (never the active one).
    /// Retention runs while writes are refused too: on a full disk it frees space.
    pub async fn maintain(&self, now_ms: i64) -> Result<(), EngineError> {
        let inner = &self.inner;
        let writable = inner.check_writable().is_ok();
        let (retention_ms, retention_bytes, start_writer) = {
            let mut st = inner.state.borrow_mut();
            inner.check_open(&st)?;
            let segment_ms = st.config.segment_ms as i64;
            let active = st.active();
            let expired = active
                .first_append_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= segment_ms);
            let mut start_writer = false;
            if writable && !active.is_empty() && expired && !st.truncating {
                let base = st.next_offset;
                st.roll(base, now_ms);
                start_writer = !std::mem::replace(&mut st.writer_running, true);
            }
            (
                st.config.retention_ms,
                st.config.retention_bytes,
                start_writer,
            )
        };
        if start_writer {
            write::start_writer(inner);
        }
        let _lock = inner
            .io_lock
            .acquire()
            .await
            .map_err(|_| inner.closed_error())?;
        inner
            .delete_old_segments_locked(-1, retention_ms, retention_bytes, now_ms)
            .await
    }
}

impl<S: Storage> Inner<S> {
    /// Deletes whole sealed segments below the log start (or `below`) or beyond retention,
    /// for a caller that holds the io lock. The log start moves to the first segment left.
    async fn delete_old_segments_locked(
        self: &Rc<Self>,
        below: i64,
        retention_ms: i64,
        retention_bytes: i64,
        now: i64,
    ) -> Result<(), EngineError> {
        // Seal rolled segments whose writes are all done, rather than wait for the writer.
        let sealable = {
            let st = self.state.borrow();
            if st.health == super::state::Health::Healthy {
                st.sealable()
            } else {
                Vec::new()
            }
        };
        for base in sealable {
            seal::seal(self, base)
                .await
                .map_err(|e| self.fail_with(e))?;
        }
        let plan = {
            let st = self.state.borrow();
            if st.closed {
                return Err(self.closed_error());
            }
            if let super::state::Health::Failed {
                kind: FailureKind::Structural,
                recovered: false,
                reason,
                ..
            } = &st.health
            {
                // A truncation failed part way: the segments listed may already be gone
                // from the disk, so nothing is planned from them (deleting what looks like
                // the oldest one could remove the only record of the log start) until the
                // log is reloaded from what the disk holds.
                return Err(self.storage_error(format!(
                    "segments are not deleted while the partition is reloaded from disk: {reason}"
                )));
            }
            st.plan_retirement(below, retention_ms, retention_bytes, now)
        };
        let Some(Retirement {
            mut count,
            record_log_start,
        }) = plan
        else {
            return Ok(());
        };
        if let Some(first) = record_log_start {
            let text = format!("{first}\n").into_bytes();
            let recorded =
                replace_file(&self.storage, &self.dir.join(LOG_START_FILE), text, true).await;
            if recorded.is_err() {
                // Without the record, the last sealed segment stays to tell.
                count -= 1;
                if count == 0 {
                    return Ok(());
                }
            }
        }
        let removed = self
            .state
            .borrow_mut()
            .retire(count, &self.cache, &self.cached);
        self.files.borrow_mut().read = None;
        let removal = async {
            for base in &removed {
                for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
                    self.storage
                        .remove_file(&segment_path(&self.dir, *base, suffix))
                        .await?;
                }
            }
            let first = self.state.borrow().segments[0].base_offset;
            snapshot::remove_snapshots_before(self, first).await?;
            self.storage.sync_dir(&self.dir).await
        }
        .await;
        removal.map_err(|e| EngineError::io("cannot delete a segment", e))
    }
}
