//! Reads: from the batch cache at the tail, else aligned direct reads of a segment with
//! read-ahead, every batch validated again (CRC, framing, and that it follows its
//! predecessor in offsets) before it is served. A read returns the valid batches before a
//! bad one; a read that starts at a bad batch reads it again once, then applies the damage
//! rule (see [`super::damage`]): the log start moves past it and the reader gets
//! OFFSET_OUT_OF_RANGE, never the bad bytes and never a silent skip.

use std::io;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use wharf_protocol::batch::{
    batches, validate_batch_with, BatchHeader, CountRule, BATCH_HEADER_BYTES,
};

use crate::batches::Batches;
use crate::cache::{BatchCache, PartitionCache};
use crate::error::EngineError;
use crate::records::first_record_at_or_after;
use crate::storage::{replace_file, OpenMode, SegmentFile, Storage};
use crate::Offset;

use super::scan::{check_batch, Expect};
use super::segment::{segment_path, SegmentState, LOG_SUFFIX};
use super::state::LogState;
use super::{Inner, PartitionLog, LOG_START_FILE, MAX_WRITE_BYTES, MIN_DISK_READ_BYTES};

/// Bytes read per step when looking for a timestamp.
const TIMESTAMP_SCAN_BYTES: usize = 256 << 10;
/// Read beyond `max_bytes` and the lead: a margin for batches the index does not list
/// (`index.interval.bytes` is 4 KiB by default).
const READ_SLACK_BYTES: usize = 16 << 10;
/// How often a read restarts when the log changed under it (truncation, retention).
const MAX_READ_ATTEMPTS: usize = 8;

/// What a read must do, decided on the state.
pub(crate) enum ReadPlan {
    OutOfRange { log_start: i64, log_end: i64 },
    Ready(Batches),
    LoadIndex(i64),
    Disk(DiskRead),
}

/// A read of one segment from disk.
pub(crate) struct DiskRead {
    pub base_offset: i64,
    /// Where to start: a batch boundary at or before the batch holding the offset.
    pub start: u64,
    /// The readable end of the segment.
    pub end: u64,
    pub expect: Expect,
    /// Bytes from `start` that may come before the batch holding the offset asked for
    /// (the index says where a later batch starts, not where this one does).
    pub lead: u64,
    pub sealed: bool,
    /// For a sealed segment, the offset its last batch must end before.
    pub next_offset: i64,
    pub generation: u64,
    /// The leader-epoch cache, to check the epochs batches carry.
    pub epochs: Vec<(i32, i64)>,
}

impl LogState {
    pub fn plan_read(
        &self,
        from: i64,
        max_bytes: usize,
        skip_segments: usize,
        cache: &BatchCache,
        cached: &PartitionCache,
    ) -> ReadPlan {
        if from < self.log_start_offset || from > self.next_offset {
            return ReadPlan::OutOfRange {
                log_start: self.log_start_offset,
                log_end: self.next_offset,
            };
        }
        if from >= self.written_next_offset {
            return ReadPlan::Ready(Batches::new());
        }
        if let Some(batches) = cache.read(cached, from, self.written_next_offset, max_bytes) {
            return ReadPlan::Ready(batches);
        }
        let idx = self.segments.partition_point(|s| s.next_offset <= from) + skip_segments;
        let Some(seg) = self.segments.get(idx) else {
            return ReadPlan::Ready(Batches::new());
        };
        let Some(index) = seg.index.as_ref() else {
            return ReadPlan::LoadIndex(seg.base_offset);
        };
        let relative = (from - seg.base_offset).clamp(0, i64::from(u32::MAX)) as u32;
        let entry = index.lookup_entry(relative);
        let (start, expect) = match entry {
            Some(e) => (
                u64::from(e.position),
                Expect::LastOffset(seg.base_offset + i64::from(e.relative_offset)),
            ),
            None => (0, Expect::BaseOffset(seg.base_offset)),
        };
        // Unless the indexed batch holds the offset, the batch that does starts by the next
        // indexed batch: what comes before it is read and skipped.
        let lead = match entry {
            Some(e) if e.relative_offset == relative => 0,
            _ => index
                .next_entry_position(relative)
                .map_or(0, |p| u64::from(p).saturating_sub(start)),
        };
        ReadPlan::Disk(DiskRead {
            base_offset: seg.base_offset,
            start,
            end: seg.readable_bytes(),
            expect,
            lead,
            sealed: seg.state == SegmentState::Sealed,
            next_offset: seg.next_offset,
            generation: self.generation,
            epochs: self.epochs.entries().to_vec(),
        })
    }
}

/// What a disk read found.
pub(crate) struct DiskReadOutcome {
    /// Whole valid batches from the one holding the offset asked for.
    pub bytes: Bytes,
    /// A batch at or after the offset asked for was seen.
    pub reached: bool,
    /// The bad batch the read stopped at: `(position, first offset it should hold, why)`.
    pub damage: Option<(u64, i64, String)>,
}

/// Reads whole batches of one segment from `plan.start` up to `plan.end`, validating each,
/// keeping those that reach `from`, up to about `max_bytes` (the first whole).
pub(crate) async fn read_batches<F: SegmentFile>(
    file: &F,
    plan: &DiskRead,
    from: i64,
    max_bytes: usize,
) -> io::Result<DiskReadOutcome> {
    // What has been read, as the file's bytes from `buf_start`. The batches served are a
    // slice of it (they are contiguous in the file), so a read copies no record after the
    // one copy out of the direct-I/O buffer; only a batch that runs past what was read
    // makes the buffer grow, and that copies what it holds.
    let mut buf = Bytes::new();
    let mut buf_start = plan.start;
    let mut pos = plan.start;
    // The read starts at an index entry, before the batch asked for: the lead and some
    // slack let one read usually hold all it serves.
    let read_ahead = max_bytes
        .saturating_add(READ_SLACK_BYTES)
        .saturating_add(usize::try_from(plan.lead).unwrap_or(usize::MAX))
        .clamp(MIN_DISK_READ_BYTES, 2 * MAX_WRITE_BYTES) as u64;
    let mut first = Some(plan.expect);
    let mut next_offset = match plan.expect {
        Expect::BaseOffset(b) => b,
        Expect::LastOffset(_) => -1,
    };
    let mut reread_at = None;
    let mut reached = false;
    let mut full = false;
    let mut damage = None;
    // The file range of the batches kept so far.
    let mut kept: Option<(u64, u64)> = None;
    let kept_len = |kept: Option<(u64, u64)>| kept.map_or(0, |(a, b)| (b - a) as usize);
    while pos < plan.end && !full {
        // Bytes from `pos`: a header, then the whole batch.
        let mut need = BATCH_HEADER_BYTES as u64;
        let mut size = None;
        let mut bad = None;
        loop {
            let buf_end = buf_start + buf.len() as u64;
            let have = buf_end.saturating_sub(pos);
            if have >= need {
                if size.is_some() {
                    break;
                }
                let at = (pos - buf_start) as usize;
                match BatchHeader::view(&buf[at..]).and_then(BatchHeader::total_bytes) {
                    // Kept batches come first: one that would not fit is not read.
                    Some(s) if kept.is_some() && kept_len(kept) + s > max_bytes => {
                        full = true;
                        break;
                    }
                    Some(s) if pos + s as u64 <= plan.end => {
                        size = Some(s);
                        need = s as u64;
                        continue;
                    }
                    Some(s) => {
                        bad = Some(format!(
                            "a batch of {s} bytes at position {pos} runs past the end at {}",
                            plan.end
                        ));
                        size = Some(s);
                    }
                    None => bad = Some(format!("no record batch at position {pos}")),
                }
                break;
            }
            if pos + need > plan.end {
                bad = Some(format!(
                    "a partial batch at position {pos} before the end at {}",
                    plan.end
                ));
                break;
            }
            // Keep the batches kept so far and what is read of this one; drop the rest.
            let keep_from = kept.map_or(pos, |(a, _)| a);
            let (tail, tail_start) = if keep_from >= buf_end {
                (Bytes::new(), keep_from)
            } else {
                (buf.slice((keep_from - buf_start) as usize..), keep_from)
            };
            let read_at = tail_start + tail.len() as u64;
            let len = (need - have).max(read_ahead).min(plan.end - read_at);
            let chunk = file.read_at(read_at, len as usize).await?;
            let short = (chunk.len() as u64) < len.min(need - have);
            let chunk_len = chunk.len() as u64;
            buf = if tail.is_empty() {
                Bytes::from(chunk)
            } else {
                let mut joined = BytesMut::with_capacity(tail.len() + chunk.len());
                joined.extend_from_slice(&tail);
                joined.extend_from_slice(&chunk);
                joined.freeze()
            };
            buf_start = tail_start;
            if short {
                bad = Some(format!(
                    "the file ends at {} before its size {}",
                    read_at + chunk_len,
                    plan.end
                ));
                break;
            }
        }
        if full {
            break;
        }
        let checked = match bad {
            Some(reason) => Err(reason),
            None => {
                let at = (pos - buf_start) as usize;
                let s = size.expect("a whole batch is buffered");
                check_batch(
                    &buf[at..at + s],
                    pos,
                    plan.base_offset,
                    next_offset,
                    first,
                    &plan.epochs,
                    i64::MIN,
                )
            }
        };
        let info = match checked {
            Ok(info) => info,
            Err(reason) => {
                if reread_at != Some(pos) {
                    // Once more from the disk before believing it.
                    reread_at = Some(pos);
                    buf.truncate((pos - buf_start) as usize);
                    continue;
                }
                // A bad indexed batch before the offset asked for: the index knows where
                // it ends, so the walk may go on after it if its length can be trusted.
                if let (Some(Expect::LastOffset(last)), Some(s)) = (first, size) {
                    if last < from && pos + s as u64 <= plan.end {
                        first = None;
                        next_offset = last + 1;
                        pos += s as u64;
                        continue;
                    }
                }
                let expected = match (first, next_offset) {
                    (_, n) if n >= 0 => n,
                    (Some(Expect::LastOffset(last)), _) => {
                        // The indexed batch itself: its header's base offset if plausible.
                        let claimed = buf
                            .get((pos.saturating_sub(buf_start)) as usize..)
                            .and_then(BatchHeader::view)
                            .map(BatchHeader::base_offset)
                            .filter(|b| *b >= plan.base_offset && *b <= last);
                        claimed.unwrap_or(last).min(from)
                    }
                    (Some(Expect::BaseOffset(b)), _) => b,
                    (None, _) => from,
                };
                damage = Some((pos, expected, reason));
                break;
            }
        };
        first = None;
        let s = size.expect("a whole batch is buffered") as u64;
        let batch_start = pos;
        pos += s;
        next_offset = info.last_offset() + 1;
        if info.last_offset() < from {
            continue;
        }
        reached = true;
        kept = Some((kept.map_or(batch_start, |(a, _)| a), pos));
        full = kept_len(kept) >= max_bytes;
    }
    if damage.is_none()
        && !full
        && plan.sealed
        && pos >= plan.end
        && next_offset >= 0
        && next_offset != plan.next_offset
    {
        damage = Some((
            pos,
            next_offset,
            format!(
                "the segment ends at offset {next_offset} where offset {} was expected",
                plan.next_offset
            ),
        ));
    }
    let bytes = kept.map_or_else(Bytes::new, |(a, b)| {
        let served = buf.slice((a - buf_start) as usize..(b - buf_start) as usize);
        // A small part of a large read is copied out rather than holding the whole read's
        // buffer until the response is written: what a response pins stays within a few
        // times what it carries, however many partitions it names.
        if served.len() * 4 < buf.len() {
            Bytes::copy_from_slice(&served)
        } else {
            served
        }
    });
    Ok(DiskReadOutcome {
        bytes,
        reached,
        damage,
    })
}

impl<S: Storage> PartitionLog<S> {
    /// Whole batches, in order, starting with the batch that contains `from_offset`, up to
    /// about `max_bytes` (the first batch is returned whole even when larger). Empty at the
    /// log end; `OffsetOutOfRange` outside [log_start_offset, log_end_offset].
    pub async fn read(&self, from_offset: Offset, max_bytes: usize) -> Result<Bytes, EngineError> {
        self.inner.read(from_offset.0, max_bytes).await
    }

    /// As [`read`](Self::read), but as the buffers the cache or the disk read holds (see
    /// [`Batches`]), for a writer that sends them with vectored writes instead of copying
    /// them into one.
    pub async fn read_batches(
        &self,
        from_offset: Offset,
        max_bytes: usize,
    ) -> Result<Batches, EngineError> {
        self.inner.read_batches(from_offset.0, max_bytes).await
    }

    /// ListOffsets by timestamp: the earliest offset whose record timestamp is >= `timestamp_ms`,
    /// with that record's timestamp; `None` if every record is older. For a compressed batch
    /// the batch's base offset and largest timestamp stand for its records.
    pub async fn offset_for_timestamp(
        &self,
        timestamp_ms: i64,
    ) -> Result<Option<(Offset, i64)>, EngineError> {
        let inner = &self.inner;
        // Batches still queued are not readable yet; let them reach the disk first.
        let seq = inner.state.borrow().appended_seq;
        inner
            .written
            .wait(seq)
            .await
            .map_err(|reason| inner.storage_error(reason))?;
        let (mut from, log_start) = loop {
            let lookup = {
                let st = inner.state.borrow();
                inner.check_open(&st)?;
                let Some(seg) = st
                    .segments
                    .iter()
                    .find(|s| s.max_timestamp.0 >= timestamp_ms)
                else {
                    return Ok(None);
                };
                seg.index
                    .as_ref()
                    .map(|index| seg.base_offset + i64::from(index.lookup_time(timestamp_ms)))
                    .ok_or(seg.base_offset)
            };
            match lookup {
                Ok(start) => {
                    let log_start = inner.state.borrow().log_start_offset;
                    break (start.max(log_start), log_start);
                }
                Err(base) => inner.load_index(base).await?,
            }
        };
        loop {
            let bytes = match inner.read(from, TIMESTAMP_SCAN_BYTES).await {
                Ok(bytes) => bytes,
                Err(EngineError::OffsetOutOfRange { .. }) => return Ok(None),
                Err(err) => return Err(err),
            };
            if bytes.is_empty() {
                return Ok(None);
            }
            for (_, batch) in batches(&bytes) {
                let info = validate_batch_with(batch, usize::MAX, CountRule::AtMost)
                    .map_err(|e| EngineError::CorruptMessage(e.to_string()))?;
                if let Some((offset, timestamp)) =
                    first_record_at_or_after(batch, &info, timestamp_ms, log_start)
                {
                    return Ok(Some((Offset(offset), timestamp)));
                }
                from = info.last_offset() + 1;
            }
        }
    }
}

impl<S: Storage> Inner<S> {
    /// [`PartitionLog::read`].
    pub(super) async fn read(
        self: &Rc<Self>,
        from: i64,
        max_bytes: usize,
    ) -> Result<Bytes, EngineError> {
        Ok(self.read_batches(from, max_bytes).await?.into_contiguous())
    }

    /// [`PartitionLog::read_batches`].
    pub(super) async fn read_batches(
        self: &Rc<Self>,
        from: i64,
        max_bytes: usize,
    ) -> Result<Batches, EngineError> {
        let mut skip_segments = 0;
        let mut waited_for_sync = false;
        for _ in 0..MAX_READ_ATTEMPTS {
            let plan = {
                let st = self.state.borrow();
                self.check_open(&st)?;
                st.plan_read(from, max_bytes, skip_segments, &self.cache, &self.cached)
            };
            let disk = match plan {
                ReadPlan::OutOfRange { log_start, log_end } => {
                    return Err(EngineError::OffsetOutOfRange {
                        requested: from,
                        log_start,
                        log_end,
                    })
                }
                ReadPlan::Ready(batches) => return Ok(batches),
                ReadPlan::LoadIndex(base) => {
                    self.load_index(base).await?;
                    continue;
                }
                ReadPlan::Disk(disk) => disk,
            };
            let file = match self.read_handle(disk.base_offset, disk.generation).await {
                Ok(file) => file,
                // The segment was replaced or removed since the read was planned
                // (compaction, retention): plan again.
                Err(_) if self.state.borrow().generation != disk.generation => continue,
                Err(err) => return Err(err),
            };
            let outcome = read_batches(&*file, &disk, from, max_bytes)
                .await
                .map_err(|e| EngineError::io("cannot read a segment", e))?;
            if self.state.borrow().generation != disk.generation {
                continue;
            }
            if !outcome.bytes.is_empty() {
                return Ok(Batches::from(outcome.bytes));
            }
            if let Some((position, first_offset, reason)) = outcome.damage {
                // While a failed write path is being reloaded from disk, what the disk
                // lost is the failure's, not damage: the reload cuts it.
                let (reloading, unsynced) = {
                    let st = self.state.borrow();
                    let reloading = st.reloading();
                    // Bytes written but not yet made durable: an fdatasync failing right
                    // now may have dropped them before its failure is seen.
                    let unsynced = st
                        .segment_index(disk.base_offset)
                        .is_some_and(|k| position >= st.segments[k].synced_bytes);
                    (reloading, unsynced)
                };
                if unsynced && !reloading && !waited_for_sync {
                    // Judged once the fdatasync in flight (if any) has had its say: a
                    // failed one starts the reload, which cuts what it lost (not damage).
                    waited_for_sync = true;
                    drop(
                        self.sync_lock
                            .acquire()
                            .await
                            .map_err(|_| self.closed_error())?,
                    );
                    continue;
                }
                if reloading {
                    return Err(self.storage_error(format!(
                        "the partition is being reloaded from disk ({reason})"
                    )));
                }
                let report = self.state.borrow_mut().skip_damage(
                    disk.base_offset,
                    position,
                    first_offset,
                    reason.clone(),
                    &self.cache,
                    &self.cached,
                );
                match report {
                    Some(report) => {
                        tracing::error!(dir = %self.dir.display(), "{}", report.describe());
                        self.after_damage(&report).await;
                        continue;
                    }
                    None => return Err(EngineError::CorruptMessage(reason)),
                }
            }
            if !outcome.reached && disk.sealed {
                skip_segments += 1;
                continue;
            }
            return Ok(Batches::new());
        }
        Err(self.storage_error("the log kept changing under a read"))
    }

    /// A handle for reading segment `base`: its write handle while it has one, else the
    /// cached read handle, else a new one (cached unless the log changed meanwhile).
    async fn read_handle(&self, base: i64, generation: u64) -> Result<Rc<S::File>, EngineError> {
        {
            let files = self.files.borrow();
            if let Some(file) = files.writable(base) {
                return Ok(file);
            }
            if let Some((b, file)) = &files.pinned {
                if *b == base {
                    return Ok(file.clone());
                }
            }
            if let Some((b, file)) = &files.read {
                if *b == base {
                    return Ok(file.clone());
                }
            }
        }
        let file = self
            .storage
            .open_segment(&segment_path(&self.dir, base, LOG_SUFFIX), OpenMode::Read)
            .await
            .map_err(|e| {
                // A failed change of the segments (a truncation whose fdatasync failed)
                // may have removed files the state still lists until the reload from
                // disk is done: the partition is unavailable meanwhile, like any storage
                // failure, rather than broken.
                if self.state.borrow().reloading() {
                    self.storage_error(format!(
                        "cannot open a segment for reading while the partition is reloaded from disk: {e}"
                    ))
                } else {
                    EngineError::io("cannot open a segment for reading", e)
                }
            })?;
        let file = Rc::new(file);
        if self.state.borrow().generation == generation {
            self.files.borrow_mut().read = Some((base, file.clone()));
        }
        Ok(file)
    }

    /// After a read moved the log start past damage: records the log start (best effort:
    /// after damage on a full disk the same damage is found again after a restart) and,
    /// when the damage is in the segment being written, leaves that segment: it is sealed
    /// as it is and writes go on in a new one, so no later walk of the segment (a reload
    /// after a failed write, the next write's last page) trips over the damage again.
    async fn after_damage(&self, report: &super::DamageReport) {
        let Ok(_io) = self.io_lock.acquire().await else {
            return;
        };
        let now = self.storage.now_ms();
        {
            let mut st = self.state.borrow_mut();
            let unsealed = st
                .segment(report.segment_base_offset)
                .is_some_and(|s| s.state != SegmentState::Sealed && s.written_bytes > 0);
            if unsealed && st.health == super::state::Health::Healthy {
                st.leave_damaged_segment(
                    report.position,
                    report.first_offset,
                    report.reason.clone(),
                    now,
                    &self.cache,
                    &self.cached,
                );
            }
        }
        let text = format!("{}\n", self.state.borrow().log_start_offset).into_bytes();
        let recorded =
            replace_file(&self.storage, &self.dir.join(LOG_START_FILE), text, true).await;
        if let Err(err) = &recorded {
            tracing::warn!(dir = %self.dir.display(), error = %err, "cannot record the log start offset");
        }
        self.state.borrow_mut().log_start_unrecorded = recorded.is_err();
    }
}
