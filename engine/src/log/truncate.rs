//! Truncation: drop every record at or after an offset (replication: follow the leader's
//! log). Like Kafka, a batch that contains the offset goes as a whole; an offset at or
//! before the first segment empties the log and restarts it there (Kafka's
//! `truncateFullyAndStartAt`).

use std::rc::Rc;

use crate::cache::{BatchCache, PartitionCache};
use crate::epoch::{LeaderEpochCache, CHECKPOINT_FILE};
use crate::error::EngineError;
use crate::index::SegmentIndex;
use crate::producer::ProducerStates;
use crate::storage::{replace_file, OpenMode, SegmentFile, Storage};
use crate::Offset;

use super::manifest;
use super::scan::{scan_from_entry, ScanLimits, ScanOutcome};
use super::seal::write_manifest;
use super::segment::{
    segment_path, Segment, SegmentState, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX,
};
use super::state::{FailureKind, LogState};
use super::{failure, snapshot, Inner, PartitionLog, LOG_START_FILE};

/// What a truncation must do.
enum TruncatePlan {
    Nothing,
    /// Nothing of the log survives.
    Fully,
    /// Cut segment `base` before `offset`, dropping the segments after it.
    Cut {
        base: i64,
        index: Option<SegmentIndex>,
        end: u64,
        interval: u32,
    },
}

impl LogState {
    fn plan_truncate(&self, offset: i64) -> TruncatePlan {
        if offset >= self.next_offset {
            return TruncatePlan::Nothing;
        }
        if offset <= self.log_start_offset || offset <= self.segments[0].base_offset {
            return TruncatePlan::Fully;
        }
        let k = self.segments.partition_point(|s| s.base_offset < offset) - 1;
        let seg = &self.segments[k];
        TruncatePlan::Cut {
            base: seg.base_offset,
            index: seg.index.clone(),
            end: seg.readable_bytes(),
            interval: self.config.index_interval_bytes,
        }
    }

    /// The log restarts empty at `offset` (truncate fully): returns the segments whose
    /// files are to be removed.
    fn restart_at(
        &mut self,
        offset: i64,
        now_ms: i64,
        cache: &BatchCache,
        cached: &PartitionCache,
    ) -> Vec<i64> {
        let removed = std::mem::take(&mut self.segments);
        self.segments.push(Segment::new_active(offset, now_ms));
        self.log_start_offset = offset;
        self.next_offset = offset;
        self.written_next_offset = offset;
        self.tail = None;
        self.last_write = None;
        self.epochs = LeaderEpochCache::default();
        self.epochs_dirty = true;
        self.producers = ProducerStates::default();
        self.max_timestamp = (-1, -1);
        self.generation += 1;
        cache.clear(cached);
        removed.iter().map(|s| s.base_offset).collect()
    }

    /// Segment `base` was cut where `scan` stopped (synced): it becomes the active
    /// segment, later ones go, and what is known past the cut is forgotten. Returns the
    /// segments whose files are to be removed and whether the log start moved back (a
    /// batch straddling it went whole).
    fn apply_cut(
        &mut self,
        base: i64,
        scan: ScanOutcome,
        cache: &BatchCache,
        cached: &PartitionCache,
    ) -> (Vec<i64>, bool) {
        let k = self
            .segment_index(base)
            .expect("segments change only under the io lock");
        let removed: Vec<i64> = self
            .segments
            .split_off(k + 1)
            .iter()
            .map(|s| s.base_offset)
            .collect();
        let next = scan.next_offset;
        let seg = &mut self.segments[k];
        seg.size_bytes = scan.valid_bytes;
        seg.written_bytes = scan.valid_bytes;
        seg.synced_bytes = scan.valid_bytes;
        seg.allocated_bytes = scan.valid_bytes;
        seg.next_offset = next;
        seg.max_timestamp = scan.max_timestamp;
        seg.index = Some(scan.index);
        seg.state = SegmentState::Open;
        seg.start_producers = None;
        self.next_offset = next;
        self.written_next_offset = next;
        self.pending.clear();
        let log_start_moved = next < self.log_start_offset;
        self.log_start_offset = self.log_start_offset.min(next);
        self.tail = Some(scan.tail);
        self.last_write = None;
        self.forget_from(next, cache, cached);
        (removed, log_start_moved)
    }
}

impl<S: Storage> PartitionLog<S> {
    /// Drop every record at or after `offset` (replication: follow the leader's log).
    /// Like Kafka, a batch that contains `offset` goes as a whole.
    pub async fn truncate_to(&self, offset: Offset) -> Result<(), EngineError> {
        let inner = &self.inner;
        let _gate = inner
            .append_gate
            .acquire()
            .await
            .map_err(|_| inner.closed_error())?;
        inner.check_writable()?;
        {
            let mut st = inner.state.borrow_mut();
            if offset.0 >= st.next_offset {
                return Ok(());
            }
            st.truncating = true;
        }
        let result = inner.truncate(offset.0, false).await;
        inner.state.borrow_mut().truncating = false;
        inner.cleaner_truncated(offset.0).await;
        result
    }

    /// Kafka's `truncateFullyAndStartAt`: nothing of the log survives and it restarts
    /// empty at `offset`, its new log start and end (a follower whose log ends before the
    /// leader's log start, or that has nothing in common with it). A crash part way leaves
    /// either the old log from its old start, a shorter one, or the new empty one.
    pub async fn truncate_fully_and_start_at(&self, offset: Offset) -> Result<(), EngineError> {
        let inner = &self.inner;
        if offset.0 < 0 {
            let st = inner.state.borrow();
            return Err(EngineError::OffsetOutOfRange {
                requested: offset.0,
                log_start: st.log_start_offset,
                log_end: st.next_offset,
            });
        }
        let _gate = inner
            .append_gate
            .acquire()
            .await
            .map_err(|_| inner.closed_error())?;
        inner.check_writable()?;
        inner.state.borrow_mut().truncating = true;
        let result = inner.truncate(offset.0, true).await;
        inner.state.borrow_mut().truncating = false;
        inner.cleaner_truncated(offset.0).await;
        result
    }
}

impl<S: Storage> Inner<S> {
    /// Truncates at `offset`, or with `fully` empties the log and restarts it there.
    async fn truncate(self: &Rc<Self>, offset: i64, fully: bool) -> Result<(), EngineError> {
        // No high-watermark checkpoint may cover what goes: it is lowered first, durably,
        // and none is written until the cut is done.
        let _high_watermark = self
            .high_watermark_lock
            .acquire()
            .await
            .map_err(|_| self.closed_error())?;
        self.lower_high_watermark_checkpoint(offset).await?;
        // Flush what is queued, then hold the writer off while segments change.
        let seq = self.state.borrow().appended_seq;
        self.written
            .wait(seq)
            .await
            .map_err(|reason| self.storage_error(reason))?;
        // A sealed segment's index, to start the walk near the cut.
        let base = {
            let st = self.state.borrow();
            match st.plan_truncate(offset) {
                TruncatePlan::Cut {
                    base, index: None, ..
                } if !fully => Some(base),
                _ => None,
            }
        };
        if let Some(base) = base {
            self.load_index(base).await?;
        }
        let _lock = self
            .io_lock
            .acquire()
            .await
            .map_err(|_| self.closed_error())?;
        self.check_writable()?;
        let plan = if fully {
            TruncatePlan::Fully
        } else {
            self.state.borrow().plan_truncate(offset)
        };
        let result = match plan {
            TruncatePlan::Nothing => return Ok(()),
            TruncatePlan::Fully => self.truncate_fully(offset).await,
            TruncatePlan::Cut {
                base,
                index,
                end,
                interval,
            } => self.cut(offset, base, index, end, interval).await,
        };
        match result {
            Ok(removed) => {
                // The cut segment was synced and the later ones are gone: everything
                // written is durable, which the syncer (whose file may be gone) cannot say.
                let written = self.written.done();
                if written > self.synced.done() {
                    self.synced.advance(written);
                }
                let epochs = {
                    let mut st = self.state.borrow_mut();
                    std::mem::take(&mut st.epochs_dirty).then(|| st.epochs.encode())
                };
                let finished = async {
                    // Segments first (newest first, as Kafka): a crash part way leaves a
                    // shorter log that still has the producer snapshots it needs.
                    for base in removed.iter().rev() {
                        for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
                            self.storage
                                .remove_file(&segment_path(&self.dir, *base, suffix))
                                .await?;
                        }
                    }
                    self.storage.sync_dir(&self.dir).await?;
                    if let Some(text) = epochs {
                        replace_file(
                            &self.storage,
                            &self.dir.join(CHECKPOINT_FILE),
                            text.into_bytes(),
                            true,
                        )
                        .await?;
                    }
                    let end = self.state.borrow().next_offset;
                    snapshot::remove_snapshots_after(self, end).await?;
                    // The producer state at the new end, so that recovery after a crash
                    // need not go back to the cut segment's base, whose snapshot may be
                    // long gone.
                    let bytes = self.state.borrow().producers.encode();
                    snapshot::write_snapshot(self, end, bytes).await
                }
                .await;
                finished.map_err(|e| self.fail_structural(e))
            }
            Err(err) => Err(self.fail_structural(err)),
        }
    }

    /// A failure in the middle of a structural change: the log is reloaded from disk as
    /// after a crash.
    fn fail_structural(self: &Rc<Self>, err: std::io::Error) -> EngineError {
        let reason = err.to_string();
        failure::on_failure(self, FailureKind::Structural, reason.clone());
        self.storage_error(reason)
    }

    /// Kafka's truncateFullyAndStartAt: nothing of the log survives. Removes every segment
    /// file itself (nothing is left for the caller to remove).
    ///
    /// The order makes every crash part way leave a log a restart reads right: no segment
    /// trusted any more; the log start as it was recorded (a restart must not find it at
    /// an older record, or at 0, when the files are gone, nor at the new offset while old
    /// segments are still there, which would read as a gap); the segments removed newest
    /// first (a shorter log from the old start); then the new log start.
    async fn truncate_fully(self: &Rc<Self>, offset: i64) -> std::io::Result<Vec<i64>> {
        write_manifest(self, manifest::encode(&[])).await?;
        let old_start = self.state.borrow().log_start_offset;
        let log_start_path = self.dir.join(LOG_START_FILE);
        let text = format!("{old_start}\n").into_bytes();
        replace_file(&self.storage, &log_start_path, text, true).await?;
        let now = self.storage.now_ms();
        let removed = self
            .state
            .borrow_mut()
            .restart_at(offset, now, &self.cache, &self.cached);
        self.files.borrow_mut().clear();
        for base in removed.iter().rev() {
            for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
                self.storage
                    .remove_file(&segment_path(&self.dir, *base, suffix))
                    .await?;
            }
        }
        self.storage.sync_dir(&self.dir).await?;
        // The log is empty: no epoch of the old one may outlive it (a restart at the new
        // start would otherwise give the new log the old log's latest epoch, and refuse a
        // leader's batch there with an older one).
        let epochs = {
            let mut st = self.state.borrow_mut();
            st.epochs_dirty = false;
            st.epochs.encode()
        };
        replace_file(
            &self.storage,
            &self.dir.join(CHECKPOINT_FILE),
            epochs.into_bytes(),
            true,
        )
        .await?;
        let text = format!("{offset}\n").into_bytes();
        replace_file(&self.storage, &log_start_path, text, true).await?;
        Ok(Vec::new())
    }

    /// Cuts segment `base` before the batch holding `offset`; returns the segments after it.
    async fn cut(
        self: &Rc<Self>,
        offset: i64,
        base: i64,
        index: Option<SegmentIndex>,
        end: u64,
        interval: u32,
    ) -> std::io::Result<Vec<i64>> {
        {
            // The segment is about to change: it must no longer be trusted as sealed.
            let listed: Vec<_> = self
                .state
                .borrow()
                .sealed_segments()
                .into_iter()
                .filter(|s| s.base_offset < base)
                .collect();
            write_manifest(self, manifest::encode(&listed)).await?;
        }
        // The segments after it go first, as in Kafka: a crash in the middle then leaves a
        // shorter log, never one with a hole.
        let later: Vec<i64> = self
            .state
            .borrow()
            .segments
            .iter()
            .filter(|s| s.base_offset > base)
            .map(|s| s.base_offset)
            .collect();
        for b in later.iter().rev() {
            for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
                self.storage
                    .remove_file(&segment_path(&self.dir, *b, suffix))
                    .await?;
            }
        }
        if !later.is_empty() {
            self.storage.sync_dir(&self.dir).await?;
        }
        let path = segment_path(&self.dir, base, LOG_SUFFIX);
        let open = self.files.borrow().writable(base);
        let file = match open {
            Some(file) => file,
            None => Rc::new(
                self.storage
                    .open_segment(&path, OpenMode::ReadWrite)
                    .await?,
            ),
        };
        let entry = index
            .as_ref()
            .and_then(|ix| ix.entry_before_offset((offset - base).max(0) as u64));
        let epochs = self.state.borrow().epochs.entries().to_vec();
        let scan = scan_from_entry(
            &*file,
            base,
            index.as_ref(),
            entry,
            &epochs,
            ScanLimits {
                end_bytes: end,
                stop_at_offset: Some(offset),
                index_interval_bytes: interval,
            },
        )
        .await?;
        if let Some(reason) = &scan.stopped {
            // Damage before the offset asked for: the log is cut there instead.
            let report = super::DamageReport {
                kind: super::DamageKind::TailCut,
                segment_base_offset: base,
                position: scan.valid_bytes,
                first_offset: scan.next_offset,
                end_offset: offset,
                previous_log_start_offset: self.state.borrow().log_start_offset,
                reason: reason.clone(),
            };
            tracing::error!(dir = %self.dir.display(), "{}", report.describe());
            self.state.borrow_mut().reports.push(report);
        }
        if scan.next_offset < self.state.borrow().log_start_offset {
            // The batch holding the offset straddles the log start: nothing from the log
            // start on survives, and the offsets below it are not given out again.
            drop(file);
            let log_start = self.state.borrow().log_start_offset;
            return self.truncate_fully(log_start).await;
        }
        file.truncate(scan.valid_bytes).await?;
        self.sync_file(&file).await.map_err(|(_, e)| e)?;
        for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            self.storage
                .remove_file(&segment_path(&self.dir, base, suffix))
                .await?;
        }
        let next = scan.next_offset;
        let (removed, log_start_moved) =
            self.state
                .borrow_mut()
                .apply_cut(base, scan, &self.cache, &self.cached);
        {
            let mut files = self.files.borrow_mut();
            files.read = None;
            files.last_written = None;
            for b in &removed {
                files.take_writable(*b);
            }
            if files.writable(base).is_none() {
                files.writable.push((base, file));
            }
        }
        if log_start_moved {
            let text = format!("{next}\n").into_bytes();
            replace_file(&self.storage, &self.dir.join(LOG_START_FILE), text, true).await?;
        }
        Ok(removed)
    }
}
