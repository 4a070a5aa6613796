//! Cleaning a log (compaction): the driver of [`crate::compaction`]'s decisions. A round
//! builds the offset map from the dirty range, then rewrites each group of segments into a
//! `.cleaned` file (written with direct I/O, trimmed, synced, its index files beside it)
//! and swaps it in ([`super::swap`]).
//!
//! Segments are read through the log's own validated reads (CRC, contiguity, leader
//! epochs, the batch cache for recent ones), so the cleaner never carries damage into a
//! cleaned segment: a read that finds damage applies the log's damage rule, and the
//! round gives the group up. Nothing here holds the log's locks while it reads or writes;
//! the swap takes the I/O lock and first checks that the group's segments are still the
//! ones that were read.

use std::cell::Cell;
use std::collections::HashSet;
use std::path::PathBuf;
use std::rc::Rc;

use wharf_protocol::batch::{
    batches, records_in, records_section, validate_batch_with, BatchHeader, BatchInfo, Compression,
    CountRule,
};
use wharf_protocol::compression::{decompress, Lz4Header};

use crate::compaction::filter::{filter_batch, Counts, Filtered, Rules};
use crate::compaction::output::{CleanedSegment, SegmentBuilder};
use crate::compaction::plan::{self, SegmentView};
use crate::compaction::{
    CleanRequest, CleanStats, Cleanable, CompactionConfig, OffsetMap, Throttle,
};
use crate::error::EngineError;
use crate::storage::{align_down, align_up, replace_file, OpenMode, SegmentFile, Storage};
use crate::Offset;

use super::lock::Lock;
use super::segment::{segment_path, SegmentState, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use super::state::LogState;
use super::write::yield_once;
use super::{Inner, PartitionLog, SMALL_FILE_MAX_BYTES};

/// Where the next cleaning round starts (the first dirty offset), `<offset>\n`; written
/// after each round. Without it every record counts as dirty.
pub const CLEANER_CHECKPOINT_FILE: &str = "cleaner-checkpoint";
/// Suffix of a cleaned segment's files while they are written.
pub(crate) const CLEANED_SUFFIX: &str = ".cleaned";
/// Bytes read per step.
const READ_CHUNK_BYTES: usize = 1 << 20;
/// Bytes gathered before a write of the cleaned segment.
const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// What the log keeps for its cleaner.
#[derive(Default)]
pub(crate) struct CleanerState {
    /// Where the last round stopped; `None` before the first.
    first_dirty_offset: Cell<Option<i64>>,
    /// One round at a time.
    lock: Lock,
}

impl CleanerState {
    /// The state recorded in `dir` (none if the checkpoint is missing or damaged).
    pub(super) async fn load<S: Storage>(storage: &S, dir: &std::path::Path) -> CleanerState {
        let recorded = storage
            .read_file(&dir.join(CLEANER_CHECKPOINT_FILE), SMALL_FILE_MAX_BYTES)
            .await
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| t.trim().parse::<i64>().ok())
            .filter(|o| *o >= 0);
        CleanerState {
            first_dirty_offset: Cell::new(recorded),
            lock: Lock::default(),
        }
    }
}

/// Yields to the shard's other tasks, then lets the throttle pace the round; false when
/// the throttle stops it.
async fn pace(throttle: Option<&dyn Throttle>, bytes: u64) -> bool {
    yield_once().await;
    match throttle {
        Some(throttle) => throttle.pace(bytes).await,
        None => true,
    }
}

/// The error of a round its throttle stopped.
fn stopped() -> EngineError {
    EngineError::io(
        "cleaning stopped",
        std::io::Error::new(std::io::ErrorKind::Interrupted, "the round was stopped"),
    )
}

/// The paths of a segment's files with `suffix` appended.
pub(super) fn suffixed(dir: &std::path::Path, base: i64, suffix: &str) -> [PathBuf; 3] {
    [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX]
        .map(|kind| segment_path(dir, base, &format!("{kind}{suffix}")))
}

impl LogState {
    /// The segments as the cleaning plan sees them.
    pub(super) fn segment_views(&self) -> Vec<SegmentView> {
        self.segments
            .iter()
            .map(|s| SegmentView {
                base_offset: s.base_offset,
                next_offset: s.next_offset,
                size_bytes: s.size_bytes,
                sealed: s.state == SegmentState::Sealed,
                largest_timestamp_ms: s.largest_timestamp_ms(),
            })
            .collect()
    }

    /// `(producer id, last offset)` of every batch the producer state remembers: these
    /// stay in the log, empty if need be, whatever cleaning removes around them.
    pub(super) fn remembered_producer_batches(&self) -> HashSet<(i64, i64)> {
        self.producers
            .iter()
            .flat_map(|(pid, entry)| entry.batches.iter().map(|b| (*pid, b.last_offset)))
            .collect()
    }
}

impl<S: Storage> PartitionLog<S> {
    /// How dirty the log is and what a cleaning round would clean now, with nothing at or
    /// past `upper_bound_offset` (the high watermark) cleaned (Kafka's `LogToClean`). With
    /// `max.compaction.lag.ms` set this reads the first dirty batch for its timestamp.
    pub async fn cleanable(
        &self,
        config: &CompactionConfig,
        now_ms: i64,
        upper_bound_offset: i64,
    ) -> Result<Cleanable, EngineError> {
        let inner = &self.inner;
        let mut cleanable = {
            let st = inner.state.borrow();
            inner.check_open(&st)?;
            let views = st.segment_views();
            let first_dirty = inner.first_dirty_offset(&st);
            let first_uncleanable = plan::first_uncleanable_offset(
                &views,
                first_dirty,
                upper_bound_offset,
                now_ms,
                config.min_compaction_lag_ms,
            );
            plan::cleanable(&views, first_dirty, first_uncleanable)
        };
        if config.max_compaction_lag_ms < i64::MAX && cleanable.cleanable_bytes > 0 {
            // KIP-354: how long the oldest dirty record has waited, by its batch.
            match inner.read(cleanable.first_dirty_offset, 1).await {
                Ok(bytes) => {
                    let first = BatchHeader::view(&bytes).map_or(-1, |h| h.max_timestamp());
                    let clean_until = now_ms.saturating_sub(config.max_compaction_lag_ms.max(0));
                    if first > 0 && first < clean_until {
                        cleanable.compaction_delay_ms = clean_until - first;
                    }
                }
                Err(EngineError::OffsetOutOfRange { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(cleanable)
    }

    /// Where the next cleaning round starts.
    pub fn first_dirty_offset(&self) -> Offset {
        let st = self.inner.state.borrow();
        Offset(self.inner.first_dirty_offset(&st))
    }

    /// One cleaning round (Kafka's `Cleaner.doClean`): the latest record of every key
    /// stays at its offset, older ones go, tombstones go once their delete horizon has
    /// passed; nothing in the active segment, in a segment not sealed, or at or past
    /// `request.upper_bound_offset` is cleaned. `map` bounds the memory: when it fills, the
    /// round cleans up to the last offset it covers. Rounds run one at a time per log.
    ///
    /// Errors (a full disk, a failed write) leave the log as it was, except after a swap
    /// has committed, when the log is reloaded from disk as after a crash.
    pub async fn clean(
        &self,
        map: &mut OffsetMap,
        config: &CompactionConfig,
        request: &CleanRequest<'_>,
    ) -> Result<CleanStats, EngineError> {
        let inner = &self.inner;
        let _turn = inner
            .cleaner
            .lock
            .acquire()
            .await
            .map_err(|_| inner.closed_error())?;
        inner.clean(map, config, request).await
    }
}

/// What a round needs of the log, taken at its start.
struct RoundPlan {
    views: Vec<SegmentView>,
    first_dirty: i64,
    first_uncleanable: i64,
    log_start: i64,
    producer_batches: HashSet<(i64, i64)>,
    index_interval_bytes: u32,
    segment_bytes: u64,
}

impl<S: Storage> Inner<S> {
    /// The log was truncated to `offset`: cleaning starts there at the latest, so the
    /// records appended again from there are mapped (Kafka's `maybeTruncateCheckpoint`).
    pub(super) async fn cleaner_truncated(&self, offset: i64) {
        let Some(first_dirty) = self.cleaner.first_dirty_offset.get() else {
            return;
        };
        if first_dirty <= offset {
            return;
        }
        self.cleaner.first_dirty_offset.set(Some(offset));
        let text = format!("{offset}\n").into_bytes();
        let path = self.dir.join(CLEANER_CHECKPOINT_FILE);
        if let Err(err) = replace_file(&self.storage, &path, text, false).await {
            tracing::warn!(dir = %self.dir.display(), error = %err, "cannot record where cleaning starts");
        }
    }

    /// Where the next round starts: the recorded first dirty offset, or the log start
    /// when there is none or it no longer lies in the log (retention, truncation).
    fn first_dirty_offset(&self, st: &LogState) -> i64 {
        match self.cleaner.first_dirty_offset.get() {
            Some(o) if o >= st.log_start_offset && o <= st.next_offset => o,
            _ => st.log_start_offset,
        }
    }

    async fn clean(
        self: &Rc<Self>,
        map: &mut OffsetMap,
        config: &CompactionConfig,
        request: &CleanRequest<'_>,
    ) -> Result<CleanStats, EngineError> {
        let round = {
            let st = self.state.borrow();
            self.check_open(&st)?;
            if let super::state::Health::Failed {
                recovered: false,
                reason,
                ..
            } = &st.health
            {
                return Err(self.storage_error(format!("not cleaning while reloading: {reason}")));
            }
            let views = st.segment_views();
            let first_dirty = self.first_dirty_offset(&st);
            RoundPlan {
                first_uncleanable: plan::first_uncleanable_offset(
                    &views,
                    first_dirty,
                    request.upper_bound_offset,
                    request.now_ms,
                    config.min_compaction_lag_ms,
                ),
                views,
                first_dirty,
                log_start: st.log_start_offset,
                producer_batches: st.remembered_producer_batches(),
                index_interval_bytes: st.config.index_interval_bytes,
                segment_bytes: st.config.segment_bytes,
            }
        };
        let mut stats = CleanStats {
            first_dirty_offset: round.first_dirty,
            end_offset: round.first_dirty,
            map_capacity: map.capacity(),
            ..CleanStats::default()
        };
        if round.first_uncleanable <= round.first_dirty {
            return Ok(stats);
        }
        map.clear();
        let end = self
            .build_offset_map(map, &round, request, &mut stats)
            .await?;
        stats.end_offset = end;
        stats.map_keys = map.len();
        if end <= round.first_dirty {
            return Err(EngineError::io(
                format!("cannot clean {}", self.dir.display()),
                std::io::Error::other(
                    "the offset map cannot hold the keys of one batch; raise log.cleaner.dedupe.buffer.size",
                ),
            ));
        }
        tracing::debug!(dir = %self.dir.display(), first_dirty = round.first_dirty, end, keys = map.len(), "cleaning");
        let rules = Rules {
            map,
            now_ms: request.now_ms,
            delete_retention_ms: config.delete_retention_ms,
            producer_batches: &round.producer_batches,
            aborted: request.aborted,
            max_decompressed_bytes: request.max_decompressed_batch_bytes,
        };
        // Segments wholly below the log start are not served and go with retention.
        let below = round
            .views
            .iter()
            .take_while(|s| s.next_offset <= round.log_start)
            .count();
        let views = &round.views[below..];
        for range in plan::group_segments(views, end, round.segment_bytes) {
            let group = &views[range];
            stats.segments_before += group.len() as u64;
            let cleaned = self
                .clean_group(group, &rules, &round, request.throttle, &mut stats)
                .await?;
            if cleaned {
                stats.groups_cleaned += 1;
                stats.segments_after += 1;
            } else {
                stats.groups_abandoned += 1;
                stats.segments_after += group.len() as u64;
            }
        }
        if stats.groups_abandoned == 0 {
            self.cleaner.first_dirty_offset.set(Some(end));
            let text = format!("{end}\n").into_bytes();
            let path = self.dir.join(CLEANER_CHECKPOINT_FILE);
            if let Err(err) = replace_file(&self.storage, &path, text, false).await {
                // Best effort: without it the next round counts everything as dirty.
                tracing::warn!(dir = %self.dir.display(), error = %err, "cannot record where cleaning stopped");
            }
        }
        Ok(stats)
    }

    /// Fills `map` with the latest offset of every key from the first dirty offset on,
    /// until the first uncleanable offset or until it is full; returns the offset after
    /// the last batch it covers (where the round's cleaning ends).
    async fn build_offset_map(
        self: &Rc<Self>,
        map: &mut OffsetMap,
        round: &RoundPlan,
        request: &CleanRequest<'_>,
        stats: &mut CleanStats,
    ) -> Result<i64, EngineError> {
        let mut from = round.first_dirty;
        // Each chunk is paced before the next is read, the last one after the loop.
        let mut unpaced = 0u64;
        'read: while from < round.first_uncleanable {
            if !pace(request.throttle, std::mem::take(&mut unpaced)).await {
                return Err(stopped());
            }
            let bytes = self.read(from, READ_CHUNK_BYTES).await?;
            unpaced = bytes.len() as u64;
            if bytes.is_empty() {
                break;
            }
            for (_, batch) in batches(&bytes) {
                let info = checked(batch)?;
                if info.base_offset >= round.first_uncleanable {
                    break 'read;
                }
                stats.bytes_read += batch.len() as u64;
                if !map_batch(map, batch, &info, round.first_dirty, request) {
                    // Full: this batch is only partly in the map (its records in the map
                    // are past the offset the map covers, so they stay).
                    break 'read;
                }
                map.set_latest_offset(info.last_offset());
                from = info.last_offset() + 1;
            }
        }
        if unpaced > 0 && !pace(request.throttle, unpaced).await {
            return Err(stopped());
        }
        if from >= round.first_uncleanable {
            map.set_latest_offset(round.first_uncleanable - 1);
        }
        Ok(map.latest_offset().max(round.first_dirty - 1) + 1)
    }

    /// Cleans one group into a `.cleaned` segment and swaps it in; false when the group
    /// was given up because the log changed under it.
    async fn clean_group(
        self: &Rc<Self>,
        group: &[SegmentView],
        rules: &Rules<'_>,
        round: &RoundPlan,
        throttle: Option<&dyn Throttle>,
        stats: &mut CleanStats,
    ) -> Result<bool, EngineError> {
        let base = group[0].base_offset;
        let written = self
            .write_cleaned(group, rules, round, throttle, stats)
            .await;
        let segment = match written {
            Ok(Some(segment)) => segment,
            Ok(None) => {
                self.remove_cleaned(base).await;
                return Ok(false);
            }
            Err(err) => {
                self.remove_cleaned(base).await;
                return Err(err);
            }
        };
        stats.bytes_written += segment.size_bytes;
        stats.fillers += segment.fillers;
        self.swap_in(group, segment, &round.producer_batches).await
    }

    /// Removes a group's `.cleaned` files (best effort: the next open removes leftovers).
    pub(super) async fn remove_cleaned(&self, base: i64) {
        for path in suffixed(&self.dir, base, CLEANED_SUFFIX) {
            let _ = self.storage.remove_file(&path).await;
        }
    }

    /// Writes the cleaned segment of `group` to `<base>.log.cleaned` (synced) and its
    /// indexes beside it. `None` when the log changed under the read (the group is given
    /// up).
    async fn write_cleaned(
        self: &Rc<Self>,
        group: &[SegmentView],
        rules: &Rules<'_>,
        round: &RoundPlan,
        throttle: Option<&dyn Throttle>,
        stats: &mut CleanStats,
    ) -> Result<Option<CleanedSegment>, EngineError> {
        let io = |e: std::io::Error| EngineError::io("cannot write a cleaned segment", e);
        let base = group[0].base_offset;
        let end = group[group.len() - 1].next_offset;
        let [log_path, index_path, time_path] = suffixed(&self.dir, base, CLEANED_SUFFIX);
        let file = self
            .storage
            .open_segment(&log_path, OpenMode::Create)
            .await
            .map_err(io)?;
        // A leftover of an earlier try.
        file.truncate(0).await.map_err(io)?;
        let mut out = AlignedWriter::default();
        let mut builder = SegmentBuilder::new(base, round.index_interval_bytes);
        let mut counts = Counts::default();
        // Below the log start nothing is served: those batches are not read, and a filler
        // stands for them.
        let mut from = base.max(round.log_start);
        let mut first = true;
        // Each chunk is paced before the next is read, the last one after the loop; a stop
        // gives the group up (its .cleaned files are removed).
        let mut unpaced = 0u64;
        'read: while from < end {
            if !pace(throttle, std::mem::take(&mut unpaced)).await {
                return Ok(None);
            }
            let bytes = match self.read(from, READ_CHUNK_BYTES).await {
                Ok(bytes) => bytes,
                Err(EngineError::OffsetOutOfRange { .. }) => return Ok(None),
                Err(err) => return Err(err),
            };
            unpaced = bytes.len() as u64;
            if bytes.is_empty() {
                return Ok(None);
            }
            for (_, batch) in batches(&bytes) {
                let info = checked(batch)?;
                if info.base_offset >= end {
                    break 'read;
                }
                if first {
                    if info.base_offset < base || info.last_offset() < from {
                        return Ok(None);
                    }
                    builder.skip(info.base_offset, info.partition_leader_epoch);
                    first = false;
                }
                if info.base_offset != builder.next_offset() {
                    // Damage moved the log start, or a truncation: not the segments planned.
                    return Ok(None);
                }
                stats.bytes_read += batch.len() as u64;
                let placed = match filter_batch(batch, &info, rules, &mut counts) {
                    Filtered::Keep => builder.place(batch, &info),
                    Filtered::Rewrite(bytes) => {
                        let rewritten = checked(&bytes)?;
                        builder.place(&bytes, &rewritten)
                    }
                    Filtered::Drop => {
                        builder.drop_batch(&info);
                        Ok(())
                    }
                };
                placed.map_err(|e| io(std::io::Error::other(e)))?;
                from = info.last_offset() + 1;
            }
            if builder.pending_bytes() >= WRITE_CHUNK_BYTES {
                let chunk = builder.take_bytes();
                unpaced += chunk.len() as u64;
                out.write(&file, chunk, false).await.map_err(io)?;
            }
        }
        if unpaced > 0 && !pace(throttle, unpaced).await {
            return Ok(None);
        }
        if first || builder.next_offset() > end {
            return Ok(None);
        }
        let (segment, rest) = builder
            .finish(end)
            .map_err(|e| io(std::io::Error::other(e)))?;
        out.write(&file, rest, true).await.map_err(io)?;
        // Trimmed to its size, then synced (the size too).
        file.truncate(segment.size_bytes).await.map_err(io)?;
        file.fdatasync().await.map_err(io)?;
        drop(file);
        self.storage
            .write_file(&index_path, segment.index.encode_offsets())
            .await
            .map_err(io)?;
        self.storage
            .write_file(&time_path, segment.index.encode_times())
            .await
            .map_err(io)?;
        stats.records_read += counts.records_read;
        stats.records_retained += counts.records_retained;
        stats.tombstones_removed += counts.tombstones_removed;
        stats.keyless_removed += counts.keyless_removed;
        stats.undecodable_batches += counts.undecodable_batches;
        Ok(Some(segment))
    }
}

/// The header of a batch the log's read validated.
fn checked(batch: &[u8]) -> Result<BatchInfo, EngineError> {
    validate_batch_with(batch, usize::MAX, CountRule::AtMost)
        .map_err(|e| EngineError::CorruptMessage(e.to_string()))
}

/// Puts the keys of `batch`'s records from `first_dirty` on into `map`; false when the map
/// filled. Control batches, aborted transactions' batches and batches whose records do
/// not decode add nothing (the filter keeps the last of these whole).
fn map_batch(
    map: &mut OffsetMap,
    batch: &[u8],
    info: &BatchInfo,
    first_dirty: i64,
    request: &CleanRequest<'_>,
) -> bool {
    if info.is_control() || info.records_count == 0 || info.last_offset() < first_dirty {
        return true;
    }
    let aborted = info.is_transactional()
        && request.aborted.iter().any(|a| {
            a.producer_id == info.producer_id
                && a.first_offset <= info.base_offset
                && info.base_offset <= a.last_offset
        });
    if aborted {
        return true;
    }
    let decompressed;
    let section = records_section(batch).unwrap_or_default();
    let plain: &[u8] = if info.compression == Compression::None {
        section
    } else {
        match decompress(
            info.compression,
            section,
            request.max_decompressed_batch_bytes,
            Lz4Header::Standard,
        ) {
            Ok(bytes) => {
                decompressed = bytes;
                &decompressed
            }
            Err(_) => return true,
        }
    };
    for record in records_in(plain, info.records_count) {
        let Ok(record) = record else {
            return true;
        };
        let offset = info.base_offset + i64::from(record.offset_delta);
        if let Some(key) = record.key {
            if offset >= first_dirty && !map.put(key, offset) {
                return false;
            }
        }
    }
    true
}

/// Writes a file front to back with direct I/O: page-aligned writes, the partial last
/// page kept for the next one.
#[derive(Default)]
struct AlignedWriter {
    /// File position of `pending[0]` (page-aligned).
    pos: u64,
    pending: Vec<u8>,
}

impl AlignedWriter {
    /// Appends `bytes` and writes every whole page; with `last`, the partial page too
    /// (zero-padded: the caller trims the file to its size).
    async fn write<F: SegmentFile>(
        &mut self,
        file: &F,
        bytes: Vec<u8>,
        last: bool,
    ) -> std::io::Result<()> {
        if self.pending.is_empty() {
            self.pending = bytes;
        } else {
            self.pending.extend_from_slice(&bytes);
        }
        let len = if last {
            align_up(self.pending.len() as u64)
        } else {
            align_down(self.pending.len() as u64)
        } as usize;
        if len == 0 {
            return Ok(());
        }
        let mut buf = file.alloc_buffer(len);
        let slice = crate::storage::WriteBuffer::as_mut_slice(&mut buf);
        let take = len.min(self.pending.len());
        slice[..take].copy_from_slice(&self.pending[..take]);
        slice[take..].fill(0);
        let written = file.write_at(buf, self.pos).await?;
        if written != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write: {written} of {len} bytes"),
            ));
        }
        self.pending.drain(..take);
        self.pos += len as u64;
        Ok(())
    }
}
