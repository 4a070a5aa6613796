//! Group commit. One writer task per log takes everything queued for the active segment
//! (up to [`MAX_WRITE_BYTES`]) and writes it as one 4 KiB-aligned direct write; the partial
//! last page is kept in memory and rewritten with the next write. Before each write the
//! writer yields once, so appenders woken by the previous completion join the next write.
//! One syncer task per log issues one `fdatasync` for every `Synced` waiter the completed
//! writes cover, while the writer goes on writing.
//!
//! What the writer does next is decided by the state machine ([`LogState::next_job`]); the
//! writer only carries the job out and reports back.

use std::rc::Rc;

use wharf_protocol::batch::{set_base_offset, set_partition_leader_epoch};

use crate::storage::{
    align_down, align_up, is_no_space, OpenMode, SegmentFile, Storage, WriteBuffer,
};

use super::scan::{scan_from_entry, ScanLimits};
use super::segment::{segment_path, SegmentState, LOG_SUFFIX};
use super::state::{FailureKind, Health, LogState, Pending};
use super::{failure, seal, Inner, MAX_WRITE_BYTES, MIN_EXTENT_BYTES};
use crate::epoch::CHECKPOINT_FILE;

/// One unit of the writer's work, decided under the state borrow and run without it.
pub(crate) enum Job {
    PersistEpochs(String),
    Seal(i64),
    /// Open the segment's file for writes (creating it when it has no bytes yet).
    Open {
        base_offset: i64,
        create: bool,
    },
    /// Read back (and validate) the partial last page of a segment reopened after a clean
    /// close, for the next write to rewrite.
    LoadTail {
        base_offset: i64,
        written_bytes: u64,
    },
    Preallocate {
        base_offset: i64,
        size: u64,
        needed: u64,
    },
    Write(WriteJob),
}

/// One direct write: the kept tail page and a run of queued batches, page-aligned.
pub(crate) struct WriteJob {
    pub base_offset: i64,
    pub pos: u64,
    pub len: usize,
    pub tail: Vec<u8>,
    pub batches: Vec<Pending>,
    pub end_bytes: u64,
    pub end_seq: u64,
    pub next_offset: i64,
}

impl WriteJob {
    /// Lays the write out in `out` (`len` bytes): the tail page, each batch with its
    /// assigned offset and epoch, zeroes to the page end. Returns the new tail page.
    pub fn fill(&self, out: &mut [u8]) -> Vec<u8> {
        let mut at = self.tail.len();
        out[..at].copy_from_slice(&self.tail);
        for p in &self.batches {
            let dst = &mut out[at..at + p.bytes.len()];
            dst.copy_from_slice(&p.bytes);
            set_base_offset(dst, p.base_offset);
            set_partition_leader_epoch(dst, p.leader_epoch);
            at += p.bytes.len();
        }
        out[at..].fill(0);
        let tail_from = (align_down(self.end_bytes) - self.pos) as usize;
        out[tail_from..at].to_vec()
    }
}

impl LogState {
    /// The writer's next job; `None` (and the writer stops) when there is none.
    pub fn next_job(&mut self) -> Option<Job> {
        if self.health != Health::Healthy || self.closed {
            self.writer_running = false;
            return None;
        }
        if self.epochs_dirty {
            self.epochs_dirty = false;
            return Some(Job::PersistEpochs(self.epochs.encode()));
        }
        let target = match self.pending.front() {
            Some(p) => self
                .segment_index(p.segment_base)
                .expect("queued batches belong to a live segment"),
            None => self.segments.len() - 1,
        };
        if let Some(unsealed) = self.segments[..target]
            .iter()
            .find(|s| s.state != SegmentState::Sealed)
        {
            return Some(Job::Seal(unsealed.base_offset));
        }
        if self.pending.is_empty() {
            self.writer_running = false;
            return None;
        }
        let seg = &self.segments[target];
        if seg.state != SegmentState::Open {
            return Some(Job::Open {
                base_offset: seg.base_offset,
                create: seg.written_bytes == 0,
            });
        }
        let written = seg.written_bytes;
        let start = align_down(written);
        let Some(tail) = self.tail.as_ref() else {
            return Some(Job::LoadTail {
                base_offset: seg.base_offset,
                written_bytes: written,
            });
        };
        debug_assert_eq!(tail.len() as u64, written - start);
        // The run of queued batches for this segment that fits one write.
        let mut run = 0;
        let mut run_bytes = 0;
        for p in self.pending.iter() {
            if p.segment_base != seg.base_offset
                || (run > 0 && run_bytes + p.bytes.len() > MAX_WRITE_BYTES)
            {
                break;
            }
            run += 1;
            run_bytes += p.bytes.len();
        }
        let end = written + run_bytes as u64;
        let preallocate = self.config.preallocate_bytes;
        if preallocate > 0 && align_up(end) > seg.allocated_bytes {
            let extent = seg
                .allocated_bytes
                .clamp(MIN_EXTENT_BYTES, preallocate.max(MIN_EXTENT_BYTES));
            let size = align_up(end).max(seg.allocated_bytes + extent);
            let size = size.min(align_up(end).max(align_up(self.config.segment_bytes)));
            return Some(Job::Preallocate {
                base_offset: seg.base_offset,
                size,
                needed: align_up(end),
            });
        }
        let base_offset = seg.base_offset;
        let batches: Vec<Pending> = self.pending.drain(..run).collect();
        let last = batches.last().expect("a run has at least one batch");
        let (end_seq, next_offset) = (last.end_seq, last.next_offset);
        let tail = self.tail.take().unwrap_or_default();
        Some(Job::Write(WriteJob {
            base_offset,
            pos: start,
            len: (align_up(end) - start) as usize,
            tail,
            batches,
            end_bytes: end,
            end_seq,
            next_offset,
        }))
    }

    /// A write completed: its bytes are on disk (readable), its waiters may go.
    pub fn on_written(&mut self, job: &WriteJob, next_tail: Vec<u8>, len: usize, now_ms: i64) {
        let seg = self
            .segment_mut(job.base_offset)
            .expect("segments change only under the io lock");
        seg.written_bytes = job.end_bytes;
        seg.last_modified_ms = now_ms;
        self.tail = Some(next_tail);
        self.written_next_offset = job.next_offset;
        self.last_write = Some((job.base_offset, job.end_bytes));
        self.stats.writes += 1;
        self.stats.written_bytes += len as u64;
    }
}

/// Starts the writer task. Never called under the state borrow.
pub(super) fn start_writer<S: Storage>(inner: &Rc<Inner<S>>) {
    inner.storage.spawn(Box::pin(writer_loop(inner.clone())));
}

async fn writer_loop<S: Storage>(inner: Rc<Inner<S>>) {
    loop {
        let Ok(guard) = inner.io_lock.acquire().await else {
            inner.state.borrow_mut().writer_running = false;
            return;
        };
        // Let appenders that are ready run first, so this write carries their batches too.
        yield_once().await;
        let Some(job) = inner.state.borrow_mut().next_job() else {
            return;
        };
        let result = run_job(&inner, job).await;
        if result.is_ok() {
            // On failure it is tried again after the next write.
            let _ = inner.record_unrecorded_log_start().await;
        }
        drop(guard);
        if let Err((kind, err)) = result {
            failure::on_failure(&inner, kind, err.to_string());
            return;
        }
    }
}

impl<S: Storage> Inner<S> {
    /// Writes a log start moved past damage on a full disk and left unrecorded then. The
    /// writer calls it after each successful write, so that a crash before the next clean
    /// close does not bring the damage back where no scan looks (a sealed segment, or below
    /// the active segment's recovery point); a clean close calls it before its marker, as
    /// the restart skips the scan. Called under the I/O lock.
    pub(super) async fn record_unrecorded_log_start(&self) -> std::io::Result<()> {
        let log_start = {
            let st = self.state.borrow();
            if !st.log_start_unrecorded {
                return Ok(());
            }
            st.log_start_offset
        };
        let text = format!("{log_start}\n").into_bytes();
        let path = self.dir.join(super::LOG_START_FILE);
        crate::storage::replace_file(&self.storage, &path, text, true).await?;
        let mut st = self.state.borrow_mut();
        // Unless it moved again meanwhile (whoever moved it records it).
        if st.log_start_offset == log_start {
            st.log_start_unrecorded = false;
        }
        Ok(())
    }
}

/// Yields to the other ready tasks of the executor once.
pub(crate) fn yield_once() -> impl std::future::Future<Output = ()> {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
}

fn write_failure(err: std::io::Error) -> (FailureKind, std::io::Error) {
    let kind = if is_no_space(&err) {
        FailureKind::NoSpace
    } else {
        FailureKind::Write
    };
    (kind, err)
}

async fn run_job<S: Storage>(
    inner: &Rc<Inner<S>>,
    job: Job,
) -> Result<(), (FailureKind, std::io::Error)> {
    match job {
        Job::PersistEpochs(text) => {
            crate::storage::replace_file(
                &inner.storage,
                &inner.dir.join(CHECKPOINT_FILE),
                text.into_bytes(),
                true,
            )
            .await
            .map_err(write_failure)?;
        }
        Job::Seal(base) => seal::seal(inner, base).await?,
        Job::Open {
            base_offset,
            create,
        } => {
            let path = segment_path(&inner.dir, base_offset, LOG_SUFFIX);
            let mode = if create {
                OpenMode::Create
            } else {
                OpenMode::ReadWrite
            };
            let file = inner
                .storage
                .open_segment(&path, mode)
                .await
                .map_err(write_failure)?;
            if create {
                inner
                    .storage
                    .sync_dir(&inner.dir)
                    .await
                    .map_err(write_failure)?;
                let sync_parent = !inner.state.borrow().dir_synced;
                if sync_parent {
                    if let Some(parent) = inner.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                        inner
                            .storage
                            .sync_dir(parent)
                            .await
                            .map_err(write_failure)?;
                    }
                }
            }
            inner
                .files
                .borrow_mut()
                .writable
                .push((base_offset, Rc::new(file)));
            let mut st = inner.state.borrow_mut();
            st.dir_synced = true;
            let fresh = {
                let seg = st
                    .segment_mut(base_offset)
                    .expect("segments change only under the io lock");
                seg.allocated_bytes = seg.allocated_bytes.max(seg.written_bytes);
                seg.state = SegmentState::Open;
                seg.written_bytes == 0
            };
            if fresh {
                st.tail = Some(Vec::new());
            }
        }
        Job::LoadTail {
            base_offset,
            written_bytes,
        } => {
            let file = inner
                .files
                .borrow()
                .writable(base_offset)
                .expect("an open segment has a write handle");
            // The bytes of the last page are rewritten by the next write: they are read
            // back as whole batches and validated, from the last index entry before them,
            // so a damaged page is never written back as if it were good.
            let (entry, index, interval, epochs) = {
                let st = inner.state.borrow();
                let seg = st
                    .segment(base_offset)
                    .expect("segments change only under the io lock");
                let index = seg.index.clone();
                let entry = index
                    .as_ref()
                    .and_then(|ix| ix.entry_at_or_before(align_down(written_bytes)));
                (
                    entry,
                    index,
                    st.config.index_interval_bytes,
                    st.epochs.entries().to_vec(),
                )
            };
            let scan = scan_from_entry(
                &*file,
                base_offset,
                index.as_ref(),
                entry,
                &epochs,
                ScanLimits {
                    end_bytes: written_bytes,
                    stop_at_offset: None,
                    index_interval_bytes: interval,
                },
            )
            .await
            .map_err(write_failure)?;
            if scan.valid_bytes != written_bytes {
                let reason = scan.stopped.unwrap_or_default();
                let now = inner.storage.now_ms();
                let report = inner.state.borrow_mut().leave_damaged_segment(
                    scan.valid_bytes,
                    scan.next_offset,
                    reason,
                    now,
                    &inner.cache,
                    &inner.cached,
                );
                if let Some(report) = report {
                    tracing::error!(dir = %inner.dir.display(), "{}", report.describe());
                    inner.files.borrow_mut().read = None;
                    let text = format!("{}\n", report.end_offset).into_bytes();
                    crate::storage::replace_file(
                        &inner.storage,
                        &inner.dir.join(super::LOG_START_FILE),
                        text,
                        true,
                    )
                    .await
                    .map_err(write_failure)?;
                }
                return Ok(());
            }
            inner.state.borrow_mut().tail = Some(scan.tail);
        }
        Job::Preallocate {
            base_offset,
            size,
            needed,
        } => {
            let file = inner
                .files
                .borrow()
                .writable(base_offset)
                .expect("an open segment has a write handle");
            // Preallocation saves allocation work on later writes. Without room for a
            // whole extent, just what this write needs; a file system without it still
            // takes the writes themselves.
            let mut allocated = size;
            if let Err(err) = file.preallocate(size).await {
                if is_no_space(&err) {
                    file.preallocate(needed).await.map_err(write_failure)?;
                    allocated = needed;
                } else {
                    tracing::warn!(dir = %inner.dir.display(), error = %err, "preallocation failed");
                }
            }
            if let Some(seg) = inner.state.borrow_mut().segment_mut(base_offset) {
                seg.allocated_bytes = allocated;
            }
        }
        Job::Write(job) => {
            let file = inner
                .files
                .borrow()
                .writable(job.base_offset)
                .expect("an open segment has a write handle");
            let mut buf = file.alloc_buffer(job.len);
            let next_tail = job.fill(buf.as_mut_slice());
            let len = buf.len();
            let written = file.write_at(buf, job.pos).await.map_err(write_failure)?;
            if written != len {
                return Err(write_failure(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("short segment write: {written} of {len} bytes"),
                )));
            }
            let now = inner.storage.now_ms();
            let advance = {
                let mut st = inner.state.borrow_mut();
                st.on_written(&job, next_tail, len, now);
                // After a failure elsewhere (the syncer) the waiters were failed already.
                st.health == Health::Healthy
            };
            inner.files.borrow_mut().last_written = Some(file);
            if advance {
                inner.written.advance(job.end_seq);
                resumed_after_failure(inner);
                maybe_start_syncer(inner);
            }
        }
    }
    Ok(())
}

/// Logs, once, that writes work again after a failure.
fn resumed_after_failure<S: Storage>(inner: &Rc<Inner<S>>) {
    let mut st = inner.state.borrow_mut();
    if st.failures_in_a_row > 0 {
        st.failures_in_a_row = 0;
        tracing::info!(dir = %inner.dir.display(), "writes succeed again");
    }
}

/// Starts the syncer if a sync is wanted and there are writes it would cover. Never called
/// under the state borrow.
pub(super) fn maybe_start_syncer<S: Storage>(inner: &Rc<Inner<S>>) {
    let start = {
        let mut st = inner.state.borrow_mut();
        let wanted = !st.syncer_running
            && st.health == Health::Healthy
            && st.sync_wanted > inner.synced.done();
        let start = wanted && inner.written.done() > inner.synced.done();
        st.syncer_running |= start;
        start
    };
    if start {
        inner.storage.spawn(Box::pin(syncer_loop(inner.clone())));
    }
}

async fn syncer_loop<S: Storage>(inner: Rc<Inner<S>>) {
    loop {
        let Ok(guard) = inner.sync_lock.acquire().await else {
            inner.state.borrow_mut().syncer_running = false;
            return;
        };
        let (file, target, covered) = {
            let mut st = inner.state.borrow_mut();
            let target = inner.written.done();
            let synced = inner.synced.done();
            if st.health != Health::Healthy || st.sync_wanted <= synced || target <= synced {
                st.syncer_running = false;
                return;
            }
            let Some(file) = inner.files.borrow().last_written.clone() else {
                st.syncer_running = false;
                return;
            };
            (file, target, st.last_write)
        };
        // Covers every write that completed before it was issued: earlier segments were
        // synced when they were sealed.
        let result = file.fdatasync().await;
        drop(guard);
        match result {
            Ok(()) => {
                let healthy = {
                    let mut st = inner.state.borrow_mut();
                    st.stats.fdatasyncs += 1;
                    if let Some((base, end)) = covered {
                        if let Some(seg) = st.segment_mut(base) {
                            seg.synced_bytes = seg.synced_bytes.max(end.min(seg.written_bytes));
                        }
                    }
                    st.health == Health::Healthy
                };
                if healthy && target > inner.synced.done() {
                    inner.synced.advance(target);
                }
            }
            Err(err) => {
                // fsyncgate: the kernel may have dropped the dirty pages; never retried.
                failure::on_failure(
                    &inner,
                    FailureKind::Sync,
                    format!("fdatasync failed: {err}"),
                );
                inner.state.borrow_mut().syncer_running = false;
                return;
            }
        }
    }
}
