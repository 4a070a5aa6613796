//! What a failed write, preallocation or `fdatasync` does to a log, and how the log comes
//! back without a broker restart.
//!
//! A failure is never retried as if nothing happened (PostgreSQL's "fsyncgate": after a
//! failed `fdatasync` the kernel may have dropped the data it was meant to make durable).
//! Instead: every append waiting on the write path fails (KAFKA_STORAGE_ERROR), one line
//! is logged, writes stop, and a recovery rebuilds the log's state from what is really on
//! disk — the same validating walk as recovery after a crash, from the last point the
//! failure cannot have touched (the last completed write for a failed write or a full
//! disk; the last successful `fdatasync` for a failed one). Reads go on meanwhile. Writes
//! are tried again after a pause that doubles with each failure in a row (1 s to 30 s), so
//! a full disk costs one small re-read per pause, and appends resume on their own once
//! space is freed.

use std::rc::Rc;

use crate::storage::{OpenMode, SegmentFile, Storage};

use super::damage::{DamageKind, DamageReport};
use super::scan::{scan_from_entry, ScanLimits, ScanOutcome};
use super::segment::{segment_path, Segment, SegmentState, LOG_SUFFIX};
use super::state::{FailureKind, Health, LogState};
use super::{snapshot, Inner};

impl<S: Storage> Inner<S> {
    /// `fdatasync` of a segment outside the syncer (sealing, truncating, closing). Never
    /// concurrently with another one of this log: after a failed `fdatasync` another may
    /// succeed without the data being durable (the kernel reports a writeback error once),
    /// so one that fails must be seen before the next is issued.
    pub(super) async fn sync_file(
        &self,
        file: &S::File,
    ) -> Result<(), (FailureKind, std::io::Error)> {
        let _sync = self.sync_lock.acquire().await.map_err(|_| {
            (
                FailureKind::Write,
                std::io::Error::other("the log is closed"),
            )
        })?;
        if let Health::Failed { reason, .. } = &self.state.borrow().health {
            return Err((FailureKind::Sync, std::io::Error::other(reason.clone())));
        }
        file.fdatasync().await.map_err(|e| (FailureKind::Sync, e))
    }

    /// Records a failure of `kind` (see [`on_failure`]) and returns the error for the caller.
    pub(super) fn fail_with(
        self: &Rc<Self>,
        (kind, err): (FailureKind, std::io::Error),
    ) -> crate::error::EngineError {
        let reason = err.to_string();
        on_failure(self, kind, reason.clone());
        self.storage_error(reason)
    }
}

/// Fails every waiter of the write path and starts the rebuild from disk.
pub(super) fn on_failure<S: Storage>(inner: &Rc<Inner<S>>, kind: FailureKind, reason: String) {
    let now = inner.storage.now_ms();
    let (first, appended, quiet) = {
        let mut st = inner.state.borrow_mut();
        // A full disk that stays full is expected to fail again: said once.
        let quiet = kind == FailureKind::NoSpace && st.failures_in_a_row > 0;
        let first = st.fail(kind.clone(), reason.clone(), now);
        if first {
            st.stats.failures += 1;
        }
        (first, st.appended_seq, quiet)
    };
    if !first {
        return;
    }
    let what = match kind {
        FailureKind::NoSpace => "the disk is full",
        FailureKind::Write => "a write failed",
        FailureKind::Sync => "fdatasync failed",
        FailureKind::Structural => "changing the log's segments failed",
    };
    if quiet {
        tracing::debug!(dir = %inner.dir.display(), %reason, "{what}; appends refused");
    } else {
        tracing::error!(dir = %inner.dir.display(), %reason, "{what}: appends fail with KAFKA_STORAGE_ERROR while the partition is reloaded from what is on disk; reads go on");
    }
    inner.written.fail_up_to(appended, &reason);
    inner.synced.fail_up_to(appended, &reason);
    start_recovery(inner);
}

/// Spawns the rebuild from disk unless one is running.
pub(super) fn start_recovery<S: Storage>(inner: &Rc<Inner<S>>) {
    let start = {
        let mut st = inner.state.borrow_mut();
        !std::mem::replace(&mut st.recovering, true)
    };
    if start {
        inner.storage.spawn(Box::pin(recover(inner.clone())));
    }
}

/// What a rebuild must walk: the first segment not sealed (the one being written), from
/// the last index entry at or before the point the failure cannot have touched, to its
/// written end.
struct RecoveryPlan {
    base_offset: i64,
    entry: Option<usize>,
    end_bytes: u64,
    index: Option<crate::index::SegmentIndex>,
    interval: u32,
    epochs: Vec<(i32, i64)>,
}

impl LogState {
    fn plan_recovery(&self) -> Option<RecoveryPlan> {
        let Health::Failed { kind, .. } = &self.health else {
            return None;
        };
        // Not one wholly below the log start (a damaged segment left behind, still to be
        // sealed): nothing of it is served or written any more.
        let log_start = self.log_start_offset;
        let last = self.segments.len() - 1;
        let seg = self
            .segments
            .iter()
            .enumerate()
            .find(|(i, s)| {
                s.state != SegmentState::Sealed && (s.next_offset > log_start || *i == last)
            })
            .map(|(_, s)| s)?;
        let trusted = match kind {
            FailureKind::Sync => seg.synced_bytes,
            FailureKind::NoSpace | FailureKind::Write => seg.written_bytes,
            FailureKind::Structural => return None,
        };
        let index = seg.index.clone();
        let entry = index.as_ref().and_then(|ix| ix.entry_at_or_before(trusted));
        Some(RecoveryPlan {
            base_offset: seg.base_offset,
            entry,
            end_bytes: seg.written_bytes,
            index,
            interval: self.config.index_interval_bytes,
            epochs: self.epochs.entries().to_vec(),
        })
    }

    /// Applies the walk: the segment ends at its last valid batch, later segments go, and
    /// everything queued is forgotten. Returns the segments whose files are to be removed
    /// and a report when data that was readable was lost.
    fn apply_recovery(
        &mut self,
        base_offset: i64,
        mut scan: ScanOutcome,
        now_ms: i64,
        cache: &crate::cache::BatchCache,
        cached: &crate::cache::PartitionCache,
    ) -> (Vec<i64>, Option<DamageReport>) {
        let k = self
            .segment_index(base_offset)
            .expect("segments change only under the io lock");
        let removed: Vec<i64> = self
            .segments
            .split_off(k + 1)
            .into_iter()
            .map(|s| s.base_offset)
            .collect();
        let next = scan.next_offset;
        let seg = &mut self.segments[k];
        seg.size_bytes = scan.valid_bytes;
        seg.written_bytes = scan.valid_bytes;
        seg.synced_bytes = seg.synced_bytes.min(scan.valid_bytes);
        seg.next_offset = next;
        seg.max_timestamp = scan.max_timestamp;
        seg.index = Some(scan.index);
        let report = (next < self.written_next_offset).then(|| DamageReport {
            kind: DamageKind::TailCut,
            segment_base_offset: base_offset,
            position: scan.valid_bytes,
            first_offset: next,
            end_offset: self.written_next_offset,
            previous_log_start_offset: self.log_start_offset,
            reason: scan
                .stopped
                .clone()
                .unwrap_or_else(|| "written data is gone after a failed fdatasync".into()),
        });
        self.pending.clear();
        self.last_write = None;
        self.forget_from(next, cache, cached);
        // Below `next` too, the batches the walk found are what the log holds now, and
        // they may not be the ones cached: a write the failure lost may have uncovered
        // what an earlier failed write left at the same offsets.
        if let Some(first) = scan.first_offset {
            cache.truncate_from(cached, first);
        }
        // What the walk found is what the log holds from where it started: a write the
        // failure lost may have uncovered a batch an earlier failed write left there
        // (with the same offsets), which its producer must find when it retries (KIP-98).
        if let Some(first) = scan.first_offset {
            self.producers.truncate_from(first);
            let mut replayed = std::mem::take(&mut scan.producers);
            replayed.set_last_timestamps(now_ms);
            self.producers.extend_with_later(replayed);
        }
        if next < self.log_start_offset {
            // Cut below the log start: the log goes on from the log start in a new
            // segment (the cut one is sealed as it is), never giving those offsets again.
            let start = self.log_start_offset;
            self.next_offset = start;
            self.written_next_offset = start;
            self.tail = None;
            let mut fresh = Segment::new_active(start, self.segments[k].last_modified_ms);
            fresh.start_producers = Some(self.producers.encode());
            self.segments.push(fresh);
        } else {
            self.next_offset = next;
            self.written_next_offset = next;
            self.tail = Some(scan.tail);
        }
        if let Some(report) = &report {
            self.reports.push(report.clone());
        }
        (removed, report)
    }
}

async fn recover<S: Storage>(inner: Rc<Inner<S>>) {
    let result = rebuild(&inner).await;
    let now = inner.storage.now_ms();
    let mut st = inner.state.borrow_mut();
    st.recovering = false;
    let pause = st.retry_pause_ms();
    if let Health::Failed {
        recovered,
        retry_at_ms,
        reason,
        ..
    } = &mut st.health
    {
        *retry_at_ms = now + pause;
        match result {
            Ok(()) => {
                *recovered = true;
                tracing::info!(dir = %inner.dir.display(), log_end_offset = st.next_offset, pause_ms = pause, "partition reloaded from disk after a write failure; writes are tried again after the pause");
            }
            Err(err) => {
                tracing::error!(dir = %inner.dir.display(), error = %err, "cannot reload the partition from disk; trying again later");
                *reason = format!("{reason}; reloading from disk failed: {err}");
            }
        }
    }
}

async fn rebuild<S: Storage>(inner: &Rc<Inner<S>>) -> std::io::Result<()> {
    let closed = || std::io::Error::other("the log is closed");
    // No write or fdatasync may be in flight while the state is rebuilt.
    let _io = inner.io_lock.acquire().await.map_err(|_| closed())?;
    let _sync = inner.sync_lock.acquire().await.map_err(|_| closed())?;
    let structural = matches!(
        &inner.state.borrow().health,
        Health::Failed {
            kind: FailureKind::Structural,
            ..
        }
    );
    if structural {
        return reopen(inner).await;
    }
    let Some(plan) = inner.state.borrow().plan_recovery() else {
        return Ok(());
    };
    tracing::debug!(
        dir = %inner.dir.display(),
        segment = plan.base_offset,
        entry = ?plan.entry,
        end = plan.end_bytes,
        "reloading the segment being written from disk"
    );
    let open = inner.files.borrow().writable(plan.base_offset);
    let file = match open {
        Some(file) => file,
        None => {
            let path = segment_path(&inner.dir, plan.base_offset, LOG_SUFFIX);
            match inner.storage.open_segment(&path, OpenMode::Read).await {
                Ok(file) => Rc::new(file),
                // Never created: nothing was written to it.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    let scan = empty_scan(plan.base_offset);
                    return finish(inner, plan.base_offset, scan).await;
                }
                Err(err) => return Err(err),
            }
        }
    };
    let scan = scan_from_entry(
        &*file,
        plan.base_offset,
        plan.index.as_ref(),
        plan.entry,
        &plan.epochs,
        ScanLimits {
            end_bytes: plan.end_bytes,
            stop_at_offset: None,
            index_interval_bytes: plan.interval,
        },
    )
    .await?;
    finish(inner, plan.base_offset, scan).await
}

fn empty_scan(base_offset: i64) -> ScanOutcome {
    ScanOutcome {
        valid_bytes: 0,
        next_offset: base_offset,
        index: crate::index::SegmentIndex::new(),
        max_timestamp: (-1, -1),
        epochs: Vec::new(),
        tail: Vec::new(),
        batches: 0,
        producers: Default::default(),
        producers_from: Vec::new(),
        stopped: None,
        first_offset: None,
    }
}

async fn finish<S: Storage>(
    inner: &Rc<Inner<S>>,
    base_offset: i64,
    scan: ScanOutcome,
) -> std::io::Result<()> {
    // Files of segments rolled after this one: created, perhaps preallocated, never
    // holding a batch the log keeps. They must be gone (durably) before the offsets they
    // are named after are written again, so before the state forgets them.
    let later: Vec<i64> = {
        let st = inner.state.borrow();
        st.segments
            .iter()
            .filter(|s| s.base_offset > base_offset)
            .map(|s| s.base_offset)
            .collect()
    };
    if !later.is_empty() {
        for base in &later {
            inner
                .storage
                .remove_file(&segment_path(&inner.dir, *base, LOG_SUFFIX))
                .await?;
        }
        inner.storage.sync_dir(&inner.dir).await?;
    }
    let now = inner.storage.now_ms();
    let (removed, report) = inner.state.borrow_mut().apply_recovery(
        base_offset,
        scan,
        now,
        &inner.cache,
        &inner.cached,
    );
    if let Some(report) = &report {
        tracing::error!(dir = %inner.dir.display(), "{}", report.describe());
    }
    {
        let mut files = inner.files.borrow_mut();
        files.read = None;
        files.last_written = None;
        for base in &removed {
            files.take_writable(*base);
        }
    }
    let end = inner.state.borrow().next_offset;
    snapshot::remove_snapshots_after(inner, end).await
}

/// Reloads the whole log from disk, as opening it after a crash would; what only lives in
/// memory while the log runs (the group-commit sequence, counters, the failure) carries on.
async fn reopen<S: Storage>(inner: &Rc<Inner<S>>) -> std::io::Result<()> {
    let config = inner.state.borrow().config.clone();
    let mut found = Vec::new();
    let opened =
        super::open::open_state_reporting(&inner.storage, &inner.dir, config, &mut found).await;
    let (fresh, files) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            // What the failed reload already cut stays cut: the log keeps its report.
            inner.state.borrow_mut().reports.append(&mut found);
            return Err(std::io::Error::other(e.to_string()));
        }
    };
    {
        let mut st = inner.state.borrow_mut();
        let old = std::mem::replace(&mut *st, fresh);
        st.appended_seq = old.appended_seq;
        st.sync_wanted = old.sync_wanted;
        st.health = old.health;
        st.failures_in_a_row = old.failures_in_a_row;
        st.recovering = old.recovering;
        st.truncating = old.truncating;
        st.stats = old.stats;
        st.dir_synced = old.dir_synced;
        st.generation = old.generation + 1;
        let mut reports = old.reports;
        reports.append(&mut st.reports);
        st.reports = reports;
    }
    *inner.files.borrow_mut() = files;
    inner.cache.clear(&inner.cached);
    Ok(())
}
