//! A partition log: segments, the group-commit write path, reads, recovery on open,
//! retention and truncation.
//!
//! Write path: `append` validates, assigns offsets and queues the batches (no I/O); one
//! writer task per log turns everything queued into a single 4 KiB-aligned direct write
//! (the partial tail page is kept in memory and rewritten with it), so appends that arrive
//! while a write is in flight go out together in the next one. A syncer task issues one
//! `fdatasync` for every `Synced` waiter that the completed writes cover.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use glommio::io::{DmaBuffer, DmaFile};
use glommio::sync::Semaphore;
use wharf_protocol::batch::{
    batches, set_base_offset, set_log_append_time, set_partition_leader_epoch, validate_batch,
    validate_batch_with, BatchHeader, BatchInfo, CountRule, IterEnd, BATCH_HEADER_BYTES,
};

use crate::cache::{BatchCache, PartitionCache};
use crate::commit::SeqWaiters;
use crate::config::{LogConfig, TimestampType};
use crate::epoch::{LeaderEpochCache, CHECKPOINT_FILE};
use crate::error::EngineError;
use crate::files::{self, align_down, align_up, TMP_SUFFIX};
use crate::index::{SegmentIndex, TIME_ENTRY_BYTES};
use crate::producer::{ProducerStates, Verdict, MAX_SNAPSHOT_BYTES, SNAPSHOT_SUFFIX};
use crate::records::{first_record_at_or_after, offset_of_max_timestamp};
use crate::recovery::{scan_segment, ScanLimits, ScanOutcome};
use crate::retention::{segments_to_delete, SegmentSummary};
use crate::segment::{
    parse_segment_name, segment_path, Segment, SegmentState, INDEX_SUFFIX, LOG_SUFFIX,
    TIME_INDEX_SUFFIX,
};
use crate::Offset;

/// The most bytes one direct write carries; larger backlogs go out in several writes.
pub const MAX_WRITE_BYTES: usize = 2 << 20;
/// The first preallocated extent of a segment; extents double up to `preallocate_bytes`.
pub const MIN_EXTENT_BYTES: u64 = 64 << 10;
/// The least a read from disk fetches (read-ahead for small `max_bytes`).
pub const MIN_DISK_READ_BYTES: usize = 64 << 10;
/// Index files larger than this are treated as damaged and rebuilt.
pub const MAX_INDEX_FILE_BYTES: u64 = 256 << 20;
/// Bytes read per step when looking for a timestamp.
const TIMESTAMP_SCAN_BYTES: usize = 256 << 10;
/// How often a read restarts when the log changed under it (truncation, retention).
const MAX_READ_ATTEMPTS: usize = 8;
/// Written on a clean close: `<active base offset> <bytes> <next offset>`. While it is
/// present the active segment and its index files are trusted without a scan.
pub const CLEAN_SHUTDOWN_FILE: &str = "wharf-clean-shutdown";
/// The log start offset when DeleteRecords moved it inside a segment (Kafka keeps it in
/// `log-start-offset-checkpoint`).
pub const LOG_START_FILE: &str = "log-start-offset";
const SMALL_FILE_MAX_BYTES: u64 = 64 << 20;

/// What an append waits for before it resolves.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The direct-I/O write has completed: survives a crash of the process (acks=1).
    Written,
    /// Written and covered by an `fdatasync`: survives a crash of the machine (acks=all).
    Synced,
}

/// Where an append landed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: Offset,
    pub last_offset: Offset,
    /// The broker's append time when the log uses LogAppendTime, else -1.
    pub log_append_time_ms: i64,
    pub log_start_offset: Offset,
}

/// Counters of a log's I/O since it was opened, to observe group commit.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Batches appended.
    pub appended_batches: u64,
    /// Direct writes issued to segment files.
    pub writes: u64,
    /// Bytes those writes carried (tail-page rewrites and padding included).
    pub written_bytes: u64,
    /// `fdatasync` calls that served `Synced` appends and `sync()`.
    pub fdatasyncs: u64,
}

/// The verdict on each batch of one append, in order: later batches of the same append see
/// the earlier ones (several batches of one request for one partition). Nothing changes
/// unless every batch passes, so an append stays all-or-nothing.
fn check_producers(
    producers: &ProducerStates,
    next_offset: i64,
    infos: &[(usize, BatchInfo)],
    now: i64,
) -> Result<Vec<Verdict>, crate::producer::ProducerError> {
    if let [(_, info)] = infos {
        return Ok(vec![producers.check(info)?]);
    }
    if infos
        .iter()
        .all(|(_, i)| i.producer_id < 0 && !i.is_transactional())
    {
        return Ok(vec![Verdict::NotIdempotent; infos.len()]);
    }
    let mut scratch = producers.subset(infos.iter().map(|(_, i)| i.producer_id));
    let mut next = next_offset;
    let mut verdicts = Vec::with_capacity(infos.len());
    for (_, info) in infos {
        let verdict = scratch.check(info)?;
        if verdict == Verdict::Append {
            scratch.record(info, next, now);
        }
        if !matches!(verdict, Verdict::Duplicate(_)) {
            next += i64::from(info.last_offset_delta) + 1;
        }
        verdicts.push(verdict);
    }
    Ok(verdicts)
}

fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    segment_path(dir, offset, SNAPSHOT_SUFFIX)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A batch appended but not yet written.
struct Pending {
    bytes: Bytes,
    base_offset: i64,
    leader_epoch: i32,
    segment_base: i64,
    next_offset: i64,
    end_seq: u64,
}

struct State {
    config: LogConfig,
    /// Sorted by base offset; the last one is the active segment.
    segments: Vec<Segment>,
    log_start_offset: i64,
    /// The offset the next appended record gets.
    next_offset: i64,
    /// Every offset below this is on disk (readable).
    written_next_offset: i64,
    pending: VecDeque<Pending>,
    /// Running byte count of appends; the group-commit sequence.
    appended_seq: u64,
    sync_wanted: u64,
    writer_running: bool,
    syncer_running: bool,
    /// The active segment's bytes from `align_down(written_bytes)`; `None` until loaded.
    tail: Option<Vec<u8>>,
    /// The file the last write went to, for the syncer.
    last_written_file: Option<Rc<DmaFile>>,
    failed: Option<String>,
    closed: bool,
    truncating: bool,
    epochs: LeaderEpochCache,
    epochs_dirty: bool,
    max_timestamp: (i64, i64),
    /// Bumped whenever segments are removed or cut, so reads in flight start over.
    generation: u64,
    /// A read-only handle on the sealed segment read last.
    read_file: Option<(i64, Rc<DmaFile>)>,
    dir_synced: bool,
    stats: LogStats,
    /// Idempotent producers, as of every assigned offset (KIP-98).
    producers: ProducerStates,
    /// Offsets of the `<offset>.snapshot` files on disk, ascending.
    snapshots: Vec<i64>,
}

impl State {
    fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }

    fn segment_index(&self, base_offset: i64) -> Option<usize> {
        self.segments
            .binary_search_by_key(&base_offset, |s| s.base_offset)
            .ok()
    }

    /// Starts a new active segment at `base`, remembering the producer state as of `base`
    /// for the snapshot written when the segment before it is sealed.
    fn roll(&mut self, base: i64, now: i64) {
        let mut seg = Segment::new_active(base, now);
        seg.start_producers = Some(self.producers.encode());
        self.segments.push(seg);
    }

    fn recompute_max_timestamp(&mut self) {
        self.max_timestamp = (-1, -1);
        for seg in &self.segments {
            if seg.max_timestamp.0 > self.max_timestamp.0 {
                self.max_timestamp = seg.max_timestamp;
            }
        }
    }

    /// Queues one validated batch: assigns its offsets, rolls the segment if needed,
    /// updates indexes and caches. No I/O.
    fn assign(
        &mut self,
        bytes: Bytes,
        mut info: BatchInfo,
        leader_epoch: i32,
        now: i64,
        cache: &BatchCache,
        cached: &Rc<PartitionCache>,
    ) -> (i64, i64) {
        let base = self.next_offset;
        let last = base + i64::from(info.last_offset_delta);
        info.base_offset = base;
        let size = bytes.len() as u64;
        let config = &self.config;
        let active = self.active();
        let roll = !active.is_empty()
            && (active.size_bytes + size > config.segment_bytes
                || active
                    .first_append_ms
                    .is_some_and(|t| now.saturating_sub(t) >= config.segment_ms as i64)
                || last - active.base_offset > i64::from(u32::MAX));
        if roll {
            self.roll(base, now);
        }
        let interval = self.config.index_interval_bytes;
        let seg = self
            .segments
            .last_mut()
            .expect("a log always has an active segment");
        let position = seg.size_bytes;
        assert!(base >= seg.next_offset, "offsets must only grow");
        seg.size_bytes += size;
        seg.next_offset = last + 1;
        seg.first_append_ms.get_or_insert(now);
        seg.last_modified_ms = now;
        if info.max_timestamp > seg.max_timestamp.0 {
            seg.max_timestamp = (info.max_timestamp, offset_of_max_timestamp(&bytes, &info));
        }
        let relative_max =
            (seg.max_timestamp.1 - seg.base_offset).clamp(0, last - seg.base_offset) as u32;
        if let Some(index) = seg.index.as_mut() {
            index.on_batch(
                position as u32,
                size as u32,
                (last - seg.base_offset) as u32,
                seg.max_timestamp.0,
                relative_max,
                interval,
            );
        }
        if seg.max_timestamp.0 > self.max_timestamp.0 {
            self.max_timestamp = seg.max_timestamp;
        }
        let segment_base = seg.base_offset;
        if leader_epoch >= 0 && self.epochs.assign(leader_epoch, base) {
            self.epochs_dirty = true;
        }
        self.next_offset = last + 1;
        self.appended_seq += size;
        self.stats.appended_batches += 1;
        cache.insert(cached, base, last, leader_epoch, bytes.clone());
        self.pending.push_back(Pending {
            bytes,
            base_offset: base,
            leader_epoch,
            segment_base,
            next_offset: last + 1,
            end_seq: self.appended_seq,
        });
        (base, last)
    }
}

/// One unit of the writer's work, prepared under the state borrow and run without it.
enum Job {
    PersistEpochs(String),
    Seal(i64),
    Open {
        base_offset: i64,
        path: PathBuf,
    },
    LoadTail {
        file: Rc<DmaFile>,
        pos: u64,
        len: usize,
    },
    Preallocate {
        base_offset: i64,
        file: Rc<DmaFile>,
        size: u64,
    },
    Write(WriteJob),
}

struct WriteJob {
    base_offset: i64,
    file: Rc<DmaFile>,
    pos: u64,
    buf: DmaBuffer,
    end_bytes: u64,
    next_tail: Vec<u8>,
    end_seq: u64,
    next_offset: i64,
}

struct Inner {
    dir: PathBuf,
    cache: Rc<BatchCache>,
    cached: Rc<PartitionCache>,
    state: RefCell<State>,
    written: SeqWaiters,
    synced: SeqWaiters,
    /// Held by the writer for each job and by structural changes (truncation, retention,
    /// close), which therefore never interleave with a write.
    io_lock: Semaphore,
    /// Held by a truncation for its whole length: appends wait on it.
    append_gate: Semaphore,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cache.clear(&self.cached);
    }
}

/// One partition's log, owned by one shard (`!Send`). Methods take `&self` so that
/// concurrent appends from many connections on the shard can be group-committed; share it
/// as `Rc<PartitionLog>`.
pub struct PartitionLog {
    inner: Rc<Inner>,
}

impl PartitionLog {
    /// Open (creating if missing) the log in `dir` (`<data>/<topic>-<partition>`), recovering
    /// it: every batch after the last trusted point is validated and a torn or corrupt tail
    /// is truncated.
    pub async fn open(
        dir: PathBuf,
        config: LogConfig,
        cache: Rc<BatchCache>,
    ) -> Result<PartitionLog, EngineError> {
        let config = config.sanitized();
        let state = open_state(&dir, config).await?;
        let cached = cache.new_partition();
        let inner = Rc::new(Inner {
            dir,
            cache,
            cached,
            state: RefCell::new(state),
            written: SeqWaiters::default(),
            synced: SeqWaiters::default(),
            io_lock: Semaphore::new(1),
            append_gate: Semaphore::new(1),
        });
        Ok(PartitionLog { inner })
    }

    /// The directory of this log.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Append one or more RecordBatch v2 laid end to end (a Produce request's `records`).
    /// All are validated before anything is written; all-or-nothing. Offsets are assigned by
    /// rewriting `baseOffset` (and `partitionLeaderEpoch` to `leader_epoch`).
    pub async fn append(
        &self,
        batches_bytes: Bytes,
        leader_epoch: i32,
        durability: Durability,
    ) -> Result<AppendInfo, EngineError> {
        let inner = &self.inner;
        while inner.state.borrow().truncating {
            drop(
                inner
                    .append_gate
                    .acquire_permit(1)
                    .await
                    .map_err(|_| inner.closed_error())?,
            );
        }
        let max_message_bytes = inner.state.borrow().config.max_message_bytes;
        let mut infos = Vec::new();
        let mut iter = batches(&batches_bytes);
        for (pos, bytes) in iter.by_ref() {
            let info = validate_batch(bytes, max_message_bytes as usize)
                .map_err(|e| EngineError::from_batch(e, max_message_bytes))?;
            infos.push((pos, info));
        }
        if iter.end() != IterEnd::Clean {
            let rest = &batches_bytes[iter.position()..];
            return Err(match validate_batch(rest, max_message_bytes as usize) {
                Err(e) => EngineError::from_batch(e, max_message_bytes),
                Ok(_) => {
                    EngineError::CorruptMessage("trailing bytes after the last record batch".into())
                }
            });
        }
        if infos.is_empty() {
            return Err(EngineError::InvalidRecord("no record batches".into()));
        }
        let now = now_ms();
        let (seq, first, last, log_append_time_ms, log_start, start_writer) = {
            let mut st = inner.state.borrow_mut();
            inner.check_writable(&st)?;
            let verdicts = check_producers(&st.producers, st.next_offset, &infos, now)
                .map_err(EngineError::from_producer)?;
            let log_append = st.config.message_timestamp_type == TimestampType::LogAppendTime;
            let mut first = None;
            let mut last = 0;
            // With LogAppendTime, the append time of the first batch answered (as Kafka,
            // a duplicate's is that of its first append).
            let mut append_time = None;
            for ((pos, mut info), verdict) in infos.into_iter().zip(verdicts) {
                if let Verdict::Duplicate(original) = verdict {
                    // KIP-98: a retried batch is not appended again; it answers with the
                    // offsets of its first append.
                    first.get_or_insert(original.base_offset);
                    append_time.get_or_insert(original.timestamp_ms);
                    last = last.max(original.last_offset);
                    continue;
                }
                append_time.get_or_insert(now);
                let mut bytes = batches_bytes.slice(pos..pos + info.size_bytes);
                if log_append {
                    let mut owned = bytes.to_vec();
                    set_log_append_time(&mut owned, now);
                    info.max_timestamp = now;
                    info.attributes |= 1 << 3;
                    bytes = Bytes::from(owned);
                }
                // Recorded after `assign`: a roll inside it snapshots the state before this batch.
                let producer_info = (verdict == Verdict::Append).then_some(info);
                let (base, end) =
                    st.assign(bytes, info, leader_epoch, now, &inner.cache, &inner.cached);
                if let Some(producer_info) = producer_info {
                    st.producers.record(&producer_info, base, now);
                }
                first.get_or_insert(base);
                last = end;
            }
            let start_writer =
                !st.pending.is_empty() && !std::mem::replace(&mut st.writer_running, true);
            let first = first.expect("at least one batch was assigned or found");
            (
                st.appended_seq,
                first,
                last,
                if log_append {
                    append_time.unwrap_or(now)
                } else {
                    -1
                },
                st.log_start_offset,
                start_writer,
            )
        };
        // Spawned outside the state borrow: glommio may run a new task right away.
        if start_writer {
            glommio::spawn_local(writer_loop(inner.clone())).detach();
        }
        inner
            .written
            .wait(seq)
            .await
            .map_err(|reason| inner.storage_error(reason))?;
        if durability == Durability::Synced {
            inner.wait_synced(seq).await?;
        }
        Ok(AppendInfo {
            base_offset: Offset(first),
            last_offset: Offset(last),
            log_append_time_ms,
            log_start_offset: Offset(log_start),
        })
    }

    /// Resolves when everything appended before the call is durable; one `fdatasync` serves
    /// every waiter of an I/O cycle.
    pub async fn sync(&self) -> Result<(), EngineError> {
        let inner = &self.inner;
        let seq = {
            let st = inner.state.borrow();
            if let Some(reason) = &st.failed {
                return Err(inner.storage_error(reason.clone()));
            }
            st.appended_seq
        };
        inner
            .written
            .wait(seq)
            .await
            .map_err(|reason| inner.storage_error(reason))?;
        inner.wait_synced(seq).await
    }

    /// Whole batches, in order, starting with the batch that contains `from_offset`, up to
    /// about `max_bytes` (the first batch is returned whole even when larger). Empty at the
    /// log end; `OffsetOutOfRange` outside [log_start_offset, log_end_offset].
    pub async fn read(&self, from_offset: Offset, max_bytes: usize) -> Result<Bytes, EngineError> {
        self.inner.read(from_offset.0, max_bytes).await
    }

    /// The first offset still in the log.
    pub fn log_start_offset(&self) -> Offset {
        Offset(self.inner.state.borrow().log_start_offset)
    }

    /// The offset the next appended record will get.
    pub fn log_end_offset(&self) -> Offset {
        Offset(self.inner.state.borrow().next_offset)
    }

    /// Bytes of log on disk or queued for it, over all segments.
    pub fn size_bytes(&self) -> u64 {
        self.inner
            .state
            .borrow()
            .segments
            .iter()
            .map(|s| s.size_bytes)
            .sum()
    }

    /// I/O counters since the log was opened.
    pub fn stats(&self) -> LogStats {
        self.inner.state.borrow().stats
    }

    /// Number of segments, the active one included.
    pub fn segment_count(&self) -> usize {
        self.inner.state.borrow().segments.len()
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

    /// ListOffsets MAX_TIMESTAMP (KIP-734): the largest timestamp in the log and its offset.
    pub fn max_timestamp(&self) -> Option<(i64, Offset)> {
        let (timestamp, offset) = self.inner.state.borrow().max_timestamp;
        (timestamp >= 0).then_some((timestamp, Offset(offset)))
    }

    /// OffsetForLeaderEpoch (KIP-101): the largest epoch <= `leader_epoch` that the log knows
    /// and the offset where it ends (the start of the next epoch, or the log end).
    pub fn end_offset_for_leader_epoch(&self, leader_epoch: i32) -> Option<(i32, Offset)> {
        let st = self.inner.state.borrow();
        st.epochs
            .end_offset_for(leader_epoch, st.next_offset)
            .map(|(epoch, offset)| (epoch, Offset(offset)))
    }

    /// The leader-epoch cache: `(epoch, start offset)` pairs.
    pub fn leader_epochs(&self) -> Vec<(i32, Offset)> {
        self.inner
            .state
            .borrow()
            .epochs
            .entries()
            .iter()
            .map(|&(e, o)| (e, Offset(o)))
            .collect()
    }

    /// Drop every record at or after `offset` (replication: follow the leader's log).
    /// Like Kafka, a batch that contains `offset` goes as a whole.
    pub async fn truncate_to(&self, offset: Offset) -> Result<(), EngineError> {
        let inner = &self.inner;
        let _gate = inner
            .append_gate
            .acquire_permit(1)
            .await
            .map_err(|_| inner.closed_error())?;
        {
            let mut st = inner.state.borrow_mut();
            inner.check_writable(&st)?;
            if offset.0 >= st.next_offset {
                return Ok(());
            }
            st.truncating = true;
        }
        let result = inner.truncate(offset.0).await;
        inner.state.borrow_mut().truncating = false;
        result
    }

    /// DeleteRecords: advance the log start offset to `offset` (deleting whole segments
    /// below it); returns the new log start offset.
    pub async fn delete_records_before(&self, offset: Offset) -> Result<Offset, EngineError> {
        let inner = &self.inner;
        let _lock = inner
            .io_lock
            .acquire_permit(1)
            .await
            .map_err(|_| inner.closed_error())?;
        let text = {
            let mut st = inner.state.borrow_mut();
            inner.check_writable(&st)?;
            if offset.0 < 0 || offset.0 > st.next_offset {
                return Err(EngineError::OffsetOutOfRange {
                    requested: offset.0,
                    log_start: st.log_start_offset,
                    log_end: st.next_offset,
                });
            }
            if offset.0 <= st.log_start_offset {
                return Ok(Offset(st.log_start_offset));
            }
            st.log_start_offset = offset.0;
            inner.cache.drop_before(&inner.cached, offset.0);
            if st.epochs.truncate_from_start(offset.0) {
                st.epochs_dirty = true;
            }
            format!("{}\n", offset.0).into_bytes()
        };
        let path = inner.dir.join(LOG_START_FILE);
        files::replace_file(&path, text, true)
            .await
            .map_err(|e| inner.fail_io(e))?;
        inner.delete_old_segments_locked(-1, -1, now_ms()).await?;
        Ok(Offset(inner.state.borrow().log_start_offset))
    }

    /// Periodic upkeep: roll the active segment when `segment.ms` has passed, and apply
    /// `retention.ms` / `retention.bytes` by deleting whole segments (never the active one).
    pub async fn maintain(&self, now_ms: i64) -> Result<(), EngineError> {
        let inner = &self.inner;
        let (retention_ms, retention_bytes, start_writer) = {
            let mut st = inner.state.borrow_mut();
            inner.check_writable(&st)?;
            let segment_ms = st.config.segment_ms as i64;
            let active = st.active();
            let expired = active
                .first_append_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= segment_ms);
            let mut start_writer = false;
            if !active.is_empty() && expired && !st.truncating {
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
            glommio::spawn_local(writer_loop(inner.clone())).detach();
        }
        inner
            .delete_old_segments(retention_ms, retention_bytes, now_ms)
            .await
    }

    /// Forgets idempotent producers that have not appended for `expiration_ms`
    /// (`producer.id.expiration.ms`); returns how many went.
    pub fn expire_producers(&self, now_ms: i64, expiration_ms: i64) -> usize {
        self.inner
            .state
            .borrow_mut()
            .producers
            .expire(now_ms, expiration_ms)
    }

    /// How many idempotent producers this partition remembers.
    pub fn producer_count(&self) -> usize {
        self.inner.state.borrow().producers.len()
    }

    /// Replace the configuration (IncrementalAlterConfigs); applies to later appends and upkeep.
    pub fn set_config(&self, config: LogConfig) {
        self.inner.state.borrow_mut().config = config.sanitized();
    }

    /// The configuration in force.
    pub fn config(&self) -> LogConfig {
        self.inner.state.borrow().config.clone()
    }

    /// Flush and close every file. Later calls on this log fail.
    pub async fn close(&self) -> Result<(), EngineError> {
        self.inner.close().await
    }

    /// Close and remove the partition's directory (DeleteTopics).
    pub async fn delete(self) -> Result<(), EngineError> {
        let inner = &self.inner;
        let _ = inner.close().await;
        let entries =
            files::list_dir(&inner.dir).map_err(|e| EngineError::io("cannot delete the log", e))?;
        for entry in entries {
            files::remove_file(&inner.dir.join(&entry.name))
                .await
                .map_err(|e| EngineError::io("cannot delete the log", e))?;
        }
        // One rmdir of an empty directory; glommio has no asynchronous one.
        std::fs::remove_dir(&inner.dir)
            .map_err(|e| EngineError::io(format!("cannot remove {}", inner.dir.display()), e))?;
        Ok(())
    }
}

impl Inner {
    fn storage_error(&self, reason: String) -> EngineError {
        EngineError::Storage {
            path: self.dir.clone(),
            reason,
        }
    }

    fn closed_error(&self) -> EngineError {
        self.storage_error("the log is closed".into())
    }

    fn check_open(&self, st: &State) -> Result<(), EngineError> {
        if st.closed {
            return Err(self.closed_error());
        }
        Ok(())
    }

    fn check_writable(&self, st: &State) -> Result<(), EngineError> {
        self.check_open(st)?;
        if let Some(reason) = &st.failed {
            return Err(self.storage_error(reason.clone()));
        }
        Ok(())
    }

    /// Records an I/O failure the log cannot vouch past: every waiter fails and the log
    /// takes no more writes until it is reopened and recovered from what is on disk.
    fn fail(&self, reason: String) {
        let mut st = self.state.borrow_mut();
        tracing::error!(dir = %self.dir.display(), %reason, "partition log failed; refusing writes until reopened");
        st.failed.get_or_insert(reason.clone());
        st.writer_running = false;
        st.syncer_running = false;
        drop(st);
        self.written.fail(&reason);
        self.synced.fail(&reason);
    }

    fn fail_io(&self, err: std::io::Error) -> EngineError {
        let reason = err.to_string();
        self.fail(reason.clone());
        self.storage_error(reason)
    }

    async fn wait_synced(self: &Rc<Self>, seq: u64) -> Result<(), EngineError> {
        if self.synced.done() >= seq {
            return Ok(());
        }
        {
            let mut st = self.state.borrow_mut();
            st.sync_wanted = st.sync_wanted.max(seq);
        }
        self.maybe_start_syncer();
        self.synced
            .wait(seq)
            .await
            .map_err(|reason| self.storage_error(reason))
    }

    /// Starts the syncer if a sync is wanted and there are writes it would cover. Never
    /// called under the state borrow: glommio may run a new task right away.
    fn maybe_start_syncer(self: &Rc<Self>) {
        let start = {
            let mut st = self.state.borrow_mut();
            let wanted =
                !st.syncer_running && st.failed.is_none() && st.sync_wanted > self.synced.done();
            let start = wanted && self.written.done() > self.synced.done();
            st.syncer_running |= start;
            start
        };
        if start {
            glommio::spawn_local(syncer_loop(self.clone())).detach();
        }
    }

    /// Decides the writer's next job; `None` (and the writer stops) when there is none.
    fn next_job(&self) -> Option<Job> {
        let mut st = self.state.borrow_mut();
        if st.failed.is_some() {
            st.writer_running = false;
            return None;
        }
        if st.epochs_dirty {
            st.epochs_dirty = false;
            return Some(Job::PersistEpochs(st.epochs.encode()));
        }
        let target = match st.pending.front() {
            Some(p) => st
                .segment_index(p.segment_base)
                .expect("queued batches belong to a live segment"),
            None => st.segments.len() - 1,
        };
        if let Some(unsealed) = st.segments[..target]
            .iter()
            .find(|s| s.state != SegmentState::Sealed)
        {
            return Some(Job::Seal(unsealed.base_offset));
        }
        if st.pending.is_empty() {
            st.writer_running = false;
            return None;
        }
        let seg = &st.segments[target];
        let Some(file) = seg.file.clone() else {
            return Some(Job::Open {
                base_offset: seg.base_offset,
                path: seg.log_path(&self.dir),
            });
        };
        let written = seg.written_bytes;
        let start = align_down(written);
        let Some(tail) = st.tail.as_ref() else {
            return Some(Job::LoadTail {
                file,
                pos: start,
                len: (written - start) as usize,
            });
        };
        debug_assert_eq!(tail.len() as u64, written - start);
        // The run of queued batches for this segment that fits one write.
        let mut run = 0;
        let mut run_bytes = 0;
        for p in st.pending.iter() {
            if p.segment_base != seg.base_offset
                || (run > 0 && run_bytes + p.bytes.len() > MAX_WRITE_BYTES)
            {
                break;
            }
            run += 1;
            run_bytes += p.bytes.len();
        }
        let end = written + run_bytes as u64;
        let preallocate = st.config.preallocate_bytes;
        if preallocate > 0 && align_up(end) > seg.allocated_bytes {
            let extent = seg
                .allocated_bytes
                .clamp(MIN_EXTENT_BYTES, preallocate.max(MIN_EXTENT_BYTES));
            let size = align_up(end).max(seg.allocated_bytes + extent);
            let size = size.min(align_up(end).max(align_up(st.config.segment_bytes)));
            return Some(Job::Preallocate {
                base_offset: seg.base_offset,
                file,
                size,
            });
        }
        let base_offset = seg.base_offset;
        let len = align_up(end) - start;
        let mut buf = file.alloc_dma_buffer(len as usize);
        let out = buf.as_bytes_mut();
        let mut at = tail.len();
        out[..at].copy_from_slice(tail);
        let mut end_seq = 0;
        let mut next_offset = 0;
        for p in st.pending.drain(..run) {
            let dst = &mut out[at..at + p.bytes.len()];
            dst.copy_from_slice(&p.bytes);
            set_base_offset(dst, p.base_offset);
            set_partition_leader_epoch(dst, p.leader_epoch);
            at += p.bytes.len();
            end_seq = p.end_seq;
            next_offset = p.next_offset;
        }
        out[at..].fill(0);
        let tail_from = (align_down(end) - start) as usize;
        let next_tail = out[tail_from..at].to_vec();
        Some(Job::Write(WriteJob {
            base_offset,
            file,
            pos: start,
            buf,
            end_bytes: end,
            next_tail,
            end_seq,
            next_offset,
        }))
    }

    async fn run_job(self: &Rc<Self>, job: Job) -> std::io::Result<()> {
        match job {
            Job::PersistEpochs(text) => {
                files::replace_file(&self.dir.join(CHECKPOINT_FILE), text.into_bytes(), true)
                    .await?;
            }
            Job::Seal(base) => self.seal(base).await?,
            Job::Open { base_offset, path } => {
                let file = files::open_dma(&path, true).await?;
                files::sync_dir_path(&self.dir).await?;
                let sync_parent = !self.state.borrow().dir_synced;
                if sync_parent {
                    if let Some(parent) = self.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                        files::sync_dir_path(parent).await?;
                    }
                }
                let mut st = self.state.borrow_mut();
                st.dir_synced = true;
                let idx = st
                    .segment_index(base_offset)
                    .expect("segments change only under the io lock");
                let seg = &mut st.segments[idx];
                seg.allocated_bytes = seg.allocated_bytes.max(seg.written_bytes);
                seg.file = Some(file);
                seg.state = SegmentState::Open;
                let fresh = seg.written_bytes == 0;
                st.tail = if fresh { Some(Vec::new()) } else { None };
            }
            Job::LoadTail { file, pos, len } => {
                let tail = files::read_dma(&file, pos, len).await?;
                if tail.len() != len {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the segment is shorter than its written bytes",
                    ));
                }
                self.state.borrow_mut().tail = Some(tail);
            }
            Job::Preallocate {
                base_offset,
                file,
                size,
            } => {
                // Preallocation saves allocation work on later writes; a file system without
                // it (or out of space for a whole extent) still takes the writes themselves.
                if let Err(err) = file.pre_allocate(size, false).await {
                    tracing::warn!(dir = %self.dir.display(), error = %err, "preallocation failed");
                }
                let mut st = self.state.borrow_mut();
                if let Some(idx) = st.segment_index(base_offset) {
                    st.segments[idx].allocated_bytes = size;
                }
            }
            Job::Write(job) => {
                let len = job.buf.len();
                let written = job
                    .file
                    .write_at(job.buf, job.pos)
                    .await
                    .map_err(files::io_error(|| "segment write failed".to_string()))?;
                if written != len {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        format!("short segment write: {written} of {len} bytes"),
                    ));
                }
                let mut st = self.state.borrow_mut();
                let idx = st
                    .segment_index(job.base_offset)
                    .expect("segments change only under the io lock");
                st.segments[idx].written_bytes = job.end_bytes;
                st.tail = Some(job.next_tail);
                st.written_next_offset = job.next_offset;
                st.last_written_file = Some(job.file);
                st.stats.writes += 1;
                st.stats.written_bytes += len as u64;
                drop(st);
                self.written.advance(job.end_seq);
                self.maybe_start_syncer();
            }
        }
        Ok(())
    }

    /// Seals a rolled segment: its writes synced, the file trimmed to its size (dropping
    /// preallocated space), the index files written.
    async fn seal(&self, base_offset: i64) -> std::io::Result<()> {
        let (file, size, offsets, times) = {
            let mut st = self.state.borrow_mut();
            let idx = st
                .segment_index(base_offset)
                .expect("segments change only under the io lock");
            let seg = &mut st.segments[idx];
            let (max_ts, max_offset) = seg.max_timestamp;
            let index = seg.index.get_or_insert_with(SegmentIndex::new);
            index.maybe_append_time(max_ts, (max_offset - base_offset).max(0) as u32);
            (
                seg.file.take(),
                seg.size_bytes,
                index.encode_offsets(),
                index.encode_times(),
            )
        };
        if let Some(file) = file {
            file.fdatasync()
                .await
                .map_err(files::io_error(|| "segment sync failed".to_string()))?;
            file.truncate(size)
                .await
                .map_err(files::io_error(|| "segment trim failed".to_string()))?;
        }
        files::replace_file(
            &segment_path(&self.dir, base_offset, INDEX_SUFFIX),
            offsets,
            false,
        )
        .await?;
        files::replace_file(
            &segment_path(&self.dir, base_offset, TIME_INDEX_SUFFIX),
            times,
            false,
        )
        .await?;
        // The producer state as of the next segment's base, so recovery replays only the
        // active segment (Kafka writes its `.snapshot` when a segment rolls too).
        let snapshot = {
            let mut st = self.state.borrow_mut();
            st.segment_index(base_offset)
                .and_then(|idx| st.segments.get_mut(idx + 1))
                .and_then(|next| Some((next.base_offset, next.start_producers.take()?)))
        };
        if let Some((offset, bytes)) = snapshot {
            self.write_snapshot(offset, bytes).await?;
        }
        let mut st = self.state.borrow_mut();
        let now = now_ms();
        if let Some(idx) = st.segment_index(base_offset) {
            let seg = &mut st.segments[idx];
            seg.state = SegmentState::Sealed;
            seg.allocated_bytes = seg.size_bytes;
            seg.last_modified_ms = now;
        }
        Ok(())
    }

    /// Writes `<offset>.snapshot` (synced, directory too) and removes every other snapshot
    /// but the one at the active segment's base: at most two stay.
    async fn write_snapshot(&self, offset: i64, bytes: Vec<u8>) -> std::io::Result<()> {
        files::replace_file(&snapshot_path(&self.dir, offset), bytes, true).await?;
        let stale: Vec<i64> = {
            let mut st = self.state.borrow_mut();
            if let Err(at) = st.snapshots.binary_search(&offset) {
                st.snapshots.insert(at, offset);
            }
            // Recovery after a crash needs the one at the active segment's base; a clean
            // open needs the newest.
            let active_base = st.active().base_offset;
            let newest = st.snapshots.last().copied();
            let (keep, stale) = st
                .snapshots
                .iter()
                .partition(|&&o| o == active_base || Some(o) == newest);
            st.snapshots = keep;
            stale
        };
        for old in stale {
            files::remove_file(&snapshot_path(&self.dir, old)).await?;
        }
        Ok(())
    }

    /// Removes snapshots of offsets past the log end (after a truncation).
    async fn remove_snapshots_after(&self, end_offset: i64) -> Result<(), EngineError> {
        let stale: Vec<i64> = {
            let mut st = self.state.borrow_mut();
            let keep = st.snapshots.partition_point(|&o| o <= end_offset);
            st.snapshots.split_off(keep)
        };
        for old in stale {
            files::remove_file(&snapshot_path(&self.dir, old))
                .await
                .map_err(|e| self.fail_io(e))?;
        }
        Ok(())
    }

    /// Loads (or rebuilds from the log) the indexes of a sealed segment.
    async fn load_index(&self, base_offset: i64) -> Result<(), EngineError> {
        let (size, next_offset, interval) = {
            let st = self.state.borrow();
            let Some(idx) = st.segment_index(base_offset) else {
                return Ok(());
            };
            let seg = &st.segments[idx];
            if seg.index.is_some() {
                return Ok(());
            }
            (
                seg.size_bytes,
                seg.next_offset,
                st.config.index_interval_bytes,
            )
        };
        let index = load_or_rebuild_index(&self.dir, base_offset, size, next_offset, interval)
            .await
            .map_err(|e| EngineError::io("cannot load a segment index", e))?;
        let mut st = self.state.borrow_mut();
        if let Some(idx) = st.segment_index(base_offset) {
            st.segments[idx].index.get_or_insert(index.0);
        }
        Ok(())
    }

    async fn read(&self, from: i64, max_bytes: usize) -> Result<Bytes, EngineError> {
        let mut skip_segments = 0;
        for _ in 0..MAX_READ_ATTEMPTS {
            let plan = {
                let st = self.state.borrow();
                self.check_open(&st)?;
                if from < st.log_start_offset || from > st.next_offset {
                    return Err(EngineError::OffsetOutOfRange {
                        requested: from,
                        log_start: st.log_start_offset,
                        log_end: st.next_offset,
                    });
                }
                if from >= st.written_next_offset {
                    return Ok(Bytes::new());
                }
                if let Some(bytes) =
                    self.cache
                        .read(&self.cached, from, st.written_next_offset, max_bytes)
                {
                    return Ok(bytes);
                }
                let idx = st.segments.partition_point(|s| s.next_offset <= from) + skip_segments;
                let Some(seg) = st.segments.get(idx) else {
                    return Ok(Bytes::new());
                };
                let end = if seg.state == SegmentState::Sealed {
                    seg.size_bytes
                } else {
                    seg.written_bytes
                };
                let start = seg.index.as_ref().map(|index| {
                    index.lookup((from - seg.base_offset).clamp(0, i64::from(u32::MAX)) as u32)
                });
                let file = match (&seg.file, &st.read_file) {
                    (Some(file), _) => Some(file.clone()),
                    (None, Some((base, file))) if *base == seg.base_offset => Some(file.clone()),
                    _ => None,
                };
                (seg.base_offset, seg.state, start, end, file, st.generation)
            };
            let (base, state, start, end, file, generation) = plan;
            let Some(start) = start else {
                self.load_index(base).await?;
                continue;
            };
            let file = match file {
                Some(file) => file,
                None => {
                    let file = files::open_dma_read(&segment_path(&self.dir, base, LOG_SUFFIX))
                        .await
                        .map_err(|e| EngineError::io("cannot open a segment for reading", e))?;
                    let mut st = self.state.borrow_mut();
                    if st.generation == generation {
                        st.read_file = Some((base, file.clone()));
                    }
                    file
                }
            };
            let result = read_from_disk(&file, u64::from(start), end, from, max_bytes).await;
            if self.state.borrow().generation != generation {
                continue;
            }
            match result {
                Ok(Some(bytes)) => return Ok(bytes),
                Ok(None) if state == SegmentState::Sealed => skip_segments += 1,
                Ok(None) => return Ok(Bytes::new()),
                Err(err) => return Err(err),
            }
        }
        Err(EngineError::Storage {
            path: self.dir.clone(),
            reason: "the log kept changing under a read".into(),
        })
    }

    async fn truncate(self: &Rc<Self>, offset: i64) -> Result<(), EngineError> {
        // Flush what is queued, then hold the writer off while segments change.
        let seq = self.state.borrow().appended_seq;
        self.written
            .wait(seq)
            .await
            .map_err(|reason| self.storage_error(reason))?;
        let _lock = self
            .io_lock
            .acquire_permit(1)
            .await
            .map_err(|_| self.closed_error())?;
        let plan = {
            let st = self.state.borrow();
            self.check_writable(&st)?;
            debug_assert!(
                st.pending.is_empty(),
                "appends wait while a truncation runs"
            );
            if offset >= st.next_offset {
                return Ok(());
            }
            if offset <= st.log_start_offset || offset <= st.segments[0].base_offset {
                None
            } else {
                let k = st.segments.partition_point(|s| s.base_offset < offset) - 1;
                let seg = &st.segments[k];
                let end = if seg.state == SegmentState::Sealed {
                    seg.size_bytes
                } else {
                    seg.written_bytes
                };
                Some((
                    seg.base_offset,
                    seg.file.clone(),
                    end,
                    st.config.index_interval_bytes,
                ))
            }
        };
        let removed = match plan {
            None => {
                // Kafka's truncateFullyAndStartAt: nothing of the log survives.
                let removed = {
                    let mut st = self.state.borrow_mut();
                    let removed: Vec<Segment> = std::mem::take(&mut st.segments);
                    st.segments.push(Segment::new_active(offset, now_ms()));
                    st.log_start_offset = offset;
                    st.next_offset = offset;
                    st.written_next_offset = offset;
                    st.tail = None;
                    st.epochs = LeaderEpochCache::default();
                    st.epochs_dirty = true;
                    st.producers = ProducerStates::default();
                    st.max_timestamp = (-1, -1);
                    st.generation += 1;
                    st.read_file = None;
                    self.cache.clear(&self.cached);
                    removed
                };
                let text = format!("{offset}\n").into_bytes();
                files::replace_file(&self.dir.join(LOG_START_FILE), text, true)
                    .await
                    .map_err(|e| self.fail_io(e))?;
                removed
            }
            Some((base, file, end, interval)) => {
                let path = segment_path(&self.dir, base, LOG_SUFFIX);
                let file = match file {
                    Some(file) => file,
                    None => files::open_dma(&path, false)
                        .await
                        .map_err(|e| self.fail_io(e))?,
                };
                let limits = ScanLimits {
                    file_bytes: end,
                    stop_at_offset: Some(offset),
                    index_interval_bytes: interval,
                };
                let scan = scan_segment(&file, base, limits)
                    .await
                    .map_err(|e| self.fail_io(e))?;
                file.truncate(scan.valid_bytes)
                    .await
                    .map_err(|e| self.fail_io(e.into()))?;
                file.fdatasync().await.map_err(|e| self.fail_io(e.into()))?;
                for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
                    files::remove_file(&segment_path(&self.dir, base, suffix))
                        .await
                        .map_err(|e| self.fail_io(e))?;
                }
                let (removed, next, log_start_moved) = {
                    let mut st = self.state.borrow_mut();
                    let k = st
                        .segment_index(base)
                        .expect("segments change only under the io lock");
                    let removed = st.segments.split_off(k + 1);
                    let next = scan.next_offset;
                    let seg = &mut st.segments[k];
                    seg.size_bytes = scan.valid_bytes;
                    seg.written_bytes = scan.valid_bytes;
                    seg.allocated_bytes = scan.valid_bytes;
                    seg.next_offset = next;
                    seg.max_timestamp = scan.max_timestamp;
                    seg.index = Some(scan.index);
                    seg.state = SegmentState::Open;
                    seg.file = Some(file);
                    st.next_offset = next;
                    st.written_next_offset = next;
                    // A batch that straddled the log start went whole.
                    let log_start_moved = next < st.log_start_offset;
                    st.log_start_offset = st.log_start_offset.min(next);
                    st.tail = Some(scan.tail);
                    if st.epochs.truncate_from_end(next) {
                        st.epochs_dirty = true;
                    }
                    st.producers.truncate_from(next);
                    st.recompute_max_timestamp();
                    st.generation += 1;
                    st.read_file = None;
                    self.cache.truncate_from(&self.cached, next);
                    (removed, next, log_start_moved)
                };
                if log_start_moved {
                    let text = format!("{next}\n").into_bytes();
                    files::replace_file(&self.dir.join(LOG_START_FILE), text, true)
                        .await
                        .map_err(|e| self.fail_io(e))?;
                }
                removed
            }
        };
        let text = {
            let mut st = self.state.borrow_mut();
            std::mem::take(&mut st.epochs_dirty).then(|| st.epochs.encode())
        };
        if let Some(text) = text {
            files::replace_file(&self.dir.join(CHECKPOINT_FILE), text.into_bytes(), true)
                .await
                .map_err(|e| self.fail_io(e))?;
        }
        let end = self.state.borrow().next_offset;
        self.remove_snapshots_after(end).await?;
        self.remove_segment_files(removed.iter().rev().map(|s| s.base_offset))
            .await
    }

    async fn remove_segment_files(
        &self,
        bases: impl Iterator<Item = i64>,
    ) -> Result<(), EngineError> {
        for base in bases {
            for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
                files::remove_file(&segment_path(&self.dir, base, suffix))
                    .await
                    .map_err(|e| EngineError::io("cannot delete a segment", e))?;
            }
        }
        files::sync_dir_path(&self.dir)
            .await
            .map_err(|e| EngineError::io("cannot delete a segment", e))
    }

    /// Deletes whole sealed segments below the log start or beyond retention.
    async fn delete_old_segments(
        &self,
        retention_ms: i64,
        retention_bytes: i64,
        now: i64,
    ) -> Result<(), EngineError> {
        let _lock = self
            .io_lock
            .acquire_permit(1)
            .await
            .map_err(|_| self.closed_error())?;
        self.delete_old_segments_locked(retention_ms, retention_bytes, now)
            .await
    }

    /// [`Inner::delete_old_segments`] for a caller that holds the io lock.
    async fn delete_old_segments_locked(
        &self,
        retention_ms: i64,
        retention_bytes: i64,
        now: i64,
    ) -> Result<(), EngineError> {
        // Seal rolled segments whose writes are all done, rather than wait for the writer.
        let sealable: Vec<i64> = {
            let st = self.state.borrow();
            let queued_from = st.pending.front().map_or(i64::MAX, |p| p.segment_base);
            let rolled = &st.segments[..st.segments.len() - 1];
            rolled
                .iter()
                .filter(|s| s.state != SegmentState::Sealed && s.base_offset < queued_from)
                .map(|s| s.base_offset)
                .collect()
        };
        for base in sealable {
            self.seal(base).await.map_err(|e| self.fail_io(e))?;
        }
        let removed: Vec<Segment> = {
            let mut st = self.state.borrow_mut();
            self.check_writable(&st)?;
            let summaries: Vec<SegmentSummary> = st
                .segments
                .iter()
                .map(|s| SegmentSummary {
                    base_offset: s.base_offset,
                    size_bytes: s.size_bytes,
                    largest_timestamp_ms: s.largest_timestamp_ms(),
                })
                .collect();
            let mut count = segments_to_delete(
                &summaries,
                st.log_start_offset,
                retention_ms,
                retention_bytes,
                now,
            );
            // Only sealed segments go; one just rolled waits for the writer to seal it.
            count = count.min(
                st.segments
                    .iter()
                    .take_while(|s| s.state == SegmentState::Sealed)
                    .count(),
            );
            if count == 0 {
                return Ok(());
            }
            let removed: Vec<Segment> = st.segments.drain(..count).collect();
            let first_base = st.segments[0].base_offset;
            st.log_start_offset = st.log_start_offset.max(first_base);
            let log_start = st.log_start_offset;
            self.cache.drop_before(&self.cached, log_start);
            if st.epochs.truncate_from_start(log_start) {
                st.epochs_dirty = true;
            }
            st.recompute_max_timestamp();
            st.generation += 1;
            st.read_file = None;
            removed
        };
        self.remove_segment_files(removed.iter().map(|s| s.base_offset))
            .await
    }

    async fn close(self: &Rc<Self>) -> Result<(), EngineError> {
        let seq = {
            let st = self.state.borrow();
            if st.closed {
                return Ok(());
            }
            st.appended_seq
        };
        let flushed = self.written.wait(seq).await;
        let _lock = self
            .io_lock
            .acquire_permit(1)
            .await
            .map_err(|_| self.closed_error())?;
        let failed = self.state.borrow().failed.clone();
        let result = match (flushed, failed) {
            (Err(reason), _) | (Ok(()), Some(reason)) => Err(self.storage_error(reason)),
            (Ok(()), None) => self.close_files().await,
        };
        let mut st = self.state.borrow_mut();
        st.closed = true;
        st.read_file = None;
        st.last_written_file = None;
        for seg in st.segments.iter_mut() {
            seg.file = None;
        }
        self.cache.clear(&self.cached);
        drop(st);
        self.io_lock.close();
        self.append_gate.close();
        self.written.fail("the log is closed");
        self.synced.fail("the log is closed");
        result
    }

    /// Seals what was rolled, syncs and trims the active segment, writes its indexes, the
    /// checkpoints and the clean-shutdown marker.
    async fn close_files(&self) -> Result<(), EngineError> {
        let unsealed: Vec<i64> = {
            let st = self.state.borrow();
            st.segments[..st.segments.len() - 1]
                .iter()
                .filter(|s| s.state != SegmentState::Sealed)
                .map(|s| s.base_offset)
                .collect()
        };
        for base in unsealed {
            self.seal(base).await.map_err(|e| self.fail_io(e))?;
        }
        let (file, base, written, next_offset, offsets, times, epochs) = {
            let mut st = self.state.borrow_mut();
            let epochs = st.epochs.encode();
            let seg = st
                .segments
                .last_mut()
                .expect("a log always has an active segment");
            let (max_ts, max_offset) = seg.max_timestamp;
            let base = seg.base_offset;
            let index = seg.index.get_or_insert_with(SegmentIndex::new);
            index.maybe_append_time(max_ts, (max_offset - base).max(0) as u32);
            (
                seg.file.take(),
                base,
                seg.written_bytes,
                seg.next_offset,
                index.encode_offsets(),
                index.encode_times(),
                epochs,
            )
        };
        let to_io = |e: std::io::Error| EngineError::io("cannot close the log", e);
        let exists = file.is_some() || written > 0;
        if !exists
            && self.state.borrow().segments.len() == 1
            && self.state.borrow().epochs.entries().is_empty()
        {
            // Never written: leave nothing behind but the directory.
            return Ok(());
        }
        if let Some(file) = file {
            file.fdatasync().await.map_err(|e| self.fail_io(e.into()))?;
            file.truncate(written)
                .await
                .map_err(|e| self.fail_io(e.into()))?;
        }
        // The three files are independent: written and synced concurrently.
        let mut writes = vec![(self.dir.join(CHECKPOINT_FILE), epochs.into_bytes())];
        if exists {
            writes.push((segment_path(&self.dir, base, INDEX_SUFFIX), offsets));
            writes.push((segment_path(&self.dir, base, TIME_INDEX_SUFFIX), times));
        }
        let tasks: Vec<_> = writes
            .into_iter()
            .map(|(path, data)| {
                glommio::spawn_local(async move { files::replace_file(&path, data, false).await })
            })
            .collect();
        for task in tasks {
            task.await.map_err(to_io)?;
        }
        if exists {
            // The producer state as of the log end, so a clean restart needs no scan.
            let bytes = self.state.borrow().producers.encode();
            self.write_snapshot(next_offset, bytes)
                .await
                .map_err(to_io)?;
            let marker = format!("{base} {written} {next_offset}\n").into_bytes();
            files::replace_file(&self.dir.join(CLEAN_SHUTDOWN_FILE), marker, true)
                .await
                .map_err(to_io)?;
        }
        Ok(())
    }
}

async fn writer_loop(inner: Rc<Inner>) {
    loop {
        let Ok(permit) = inner.io_lock.acquire_permit(1).await else {
            inner.state.borrow_mut().writer_running = false;
            return;
        };
        // Let appenders that are ready run first, so this write carries their batches too.
        yield_once().await;
        let Some(job) = inner.next_job() else { return };
        let result = inner.run_job(job).await;
        drop(permit);
        if let Err(err) = result {
            inner.fail(err.to_string());
            return;
        }
    }
}

/// Yields to the other ready tasks of the executor once.
fn yield_once() -> impl std::future::Future<Output = ()> {
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

async fn syncer_loop(inner: Rc<Inner>) {
    loop {
        let (file, target) = {
            let mut st = inner.state.borrow_mut();
            let target = inner.written.done();
            let synced = inner.synced.done();
            if st.failed.is_some() || st.sync_wanted <= synced || target <= synced {
                st.syncer_running = false;
                return;
            }
            let Some(file) = st.last_written_file.clone() else {
                st.syncer_running = false;
                return;
            };
            (file, target)
        };
        // Covers every write that completed before it was issued: earlier segments were
        // synced when they were sealed.
        match file.fdatasync().await {
            Ok(()) => {
                inner.state.borrow_mut().stats.fdatasyncs += 1;
                inner.synced.advance(target);
            }
            Err(err) => {
                // fsyncgate: the kernel may have dropped the dirty pages; do not retry.
                inner.fail(format!("fdatasync failed: {err}"));
                return;
            }
        }
    }
}

/// Reads whole batches from `start` (a position at or before the batch holding `from`) up
/// to `end`, validating each. `None` when no batch in range reaches `from`.
async fn read_from_disk(
    file: &DmaFile,
    start: u64,
    end: u64,
    from: i64,
    max_bytes: usize,
) -> Result<Option<Bytes>, EngineError> {
    let corrupt = |pos: u64, what: String| {
        EngineError::CorruptMessage(format!("segment data at position {pos}: {what}"))
    };
    let io = |e: std::io::Error| EngineError::io("cannot read a segment", e);
    let mut out = BytesMut::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_start = start;
    let mut pos = start;
    let read_ahead = max_bytes.clamp(MIN_DISK_READ_BYTES, MAX_WRITE_BYTES) as u64;
    while pos < end {
        // Make `need` bytes from `pos` available, reading ahead.
        let mut need = BATCH_HEADER_BYTES as u64;
        loop {
            let have = (buf_start + buf.len() as u64).saturating_sub(pos);
            if have >= need {
                break;
            }
            if pos + need > end {
                return Err(corrupt(
                    pos,
                    format!("a batch of {need} bytes runs past the written end {end}"),
                ));
            }
            buf.drain(..((pos - buf_start) as usize).min(buf.len()));
            buf_start = pos;
            let read_at = buf_start + buf.len() as u64;
            let len = (need - have).max(read_ahead).min(end - read_at);
            let chunk = files::read_dma(file, read_at, len as usize)
                .await
                .map_err(io)?;
            if chunk.is_empty() {
                return Err(corrupt(
                    read_at,
                    "the file ends before its written size".into(),
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        let at = (pos - buf_start) as usize;
        let Some(size) = BatchHeader::view(&buf[at..]).and_then(BatchHeader::total_bytes) else {
            return Err(corrupt(pos, "not a record batch".into()));
        };
        if need < size as u64 {
            need = size as u64;
            let have = buf_start + buf.len() as u64 - pos;
            if have < need {
                if pos + need > end {
                    return Err(corrupt(
                        pos,
                        format!("a batch of {need} bytes runs past the written end {end}"),
                    ));
                }
                let read_at = buf_start + buf.len() as u64;
                let len = (need - have).max(read_ahead).min(end - read_at);
                let chunk = files::read_dma(file, read_at, len as usize)
                    .await
                    .map_err(io)?;
                if (chunk.len() as u64) < need - have {
                    return Err(corrupt(
                        read_at,
                        "the file ends before its written size".into(),
                    ));
                }
                buf.extend_from_slice(&chunk);
            }
        }
        let at = (pos - buf_start) as usize;
        let bytes = &buf[at..at + size];
        let info = validate_batch_with(bytes, usize::MAX, CountRule::AtMost)
            .map_err(|e| corrupt(pos, e.to_string()))?;
        pos += size as u64;
        if info.last_offset() < from {
            continue;
        }
        if !out.is_empty() && out.len() + size > max_bytes {
            break;
        }
        out.extend_from_slice(bytes);
        if out.len() >= max_bytes {
            break;
        }
    }
    Ok((!out.is_empty()).then(|| out.freeze()))
}

/// Reads a sealed segment's index files, or rebuilds them from the log when they are
/// missing or damaged (and rewrites them). Also returns the scan when one was needed.
async fn load_or_rebuild_index(
    dir: &Path,
    base: i64,
    size: u64,
    next_offset: i64,
    interval: u32,
) -> std::io::Result<(SegmentIndex, Option<ScanOutcome>)> {
    let index_path = segment_path(dir, base, INDEX_SUFFIX);
    let time_path = segment_path(dir, base, TIME_INDEX_SUFFIX);
    let offsets = files::read_small_file(&index_path, MAX_INDEX_FILE_BYTES)
        .await
        .ok()
        .flatten();
    let times = files::read_small_file(&time_path, MAX_INDEX_FILE_BYTES)
        .await
        .ok()
        .flatten();
    let relative_end = (next_offset - base).max(0) as u64;
    if let (Some(offsets), Some(times)) = (&offsets, &times) {
        if let Some(index) = SegmentIndex::decode(offsets, times, size, relative_end) {
            return Ok((index, None));
        }
    }
    tracing::info!(dir = %dir.display(), base, "rebuilding segment index from the log");
    let file = files::open_dma_read(&segment_path(dir, base, LOG_SUFFIX)).await?;
    let scan = scan_segment(
        &file,
        base,
        ScanLimits {
            file_bytes: size,
            stop_at_offset: None,
            index_interval_bytes: interval,
        },
    )
    .await?;
    if scan.valid_bytes < size {
        tracing::warn!(dir = %dir.display(), base, valid = scan.valid_bytes, size, "sealed segment is damaged past this position");
    }
    let mut index = scan.index.clone();
    let (max_ts, max_offset) = scan.max_timestamp;
    index.maybe_append_time(max_ts, (max_offset - base).max(0) as u32);
    // Best effort: a failure here only means another rebuild next time.
    let _ = files::replace_file(&index_path, index.encode_offsets(), false).await;
    let _ = files::replace_file(&time_path, index.encode_times(), false).await;
    Ok((index, Some(scan)))
}

/// Builds the in-memory state of the log in `dir`, recovering the active segment.
async fn open_state(dir: &Path, config: LogConfig) -> Result<State, EngineError> {
    let io = |context: &str| {
        let context = format!("{context} in {}", dir.display());
        move |e: std::io::Error| EngineError::io(context, e)
    };
    files::create_dir(dir)
        .await
        .map_err(io("cannot create the log directory"))?;
    files::ensure_dma_reads_work(dir)
        .await
        .map_err(io("cannot use direct I/O"))?;
    let entries = files::list_dir(dir).map_err(io("cannot list the log directory"))?;
    let mut logs: Vec<(i64, u64, i64)> = Vec::new();
    let mut snapshots: Vec<i64> = entries
        .iter()
        .filter_map(|e| parse_segment_name(&e.name, SNAPSHOT_SUFFIX))
        .collect();
    snapshots.sort_unstable();
    for entry in &entries {
        if entry.name.ends_with(TMP_SUFFIX) {
            files::remove_file(&dir.join(&entry.name))
                .await
                .map_err(io("cannot remove a leftover file"))?;
        } else if let Some(base) = parse_segment_name(&entry.name, LOG_SUFFIX) {
            logs.push((base, entry.size_bytes, entry.modified_ms));
        }
    }
    logs.sort_unstable();
    // Index files without a log belong to a segment whose deletion was interrupted.
    for entry in &entries {
        let base = parse_segment_name(&entry.name, INDEX_SUFFIX)
            .or_else(|| parse_segment_name(&entry.name, TIME_INDEX_SUFFIX));
        if base.is_some_and(|b| logs.binary_search_by_key(&b, |l| l.0).is_err()) {
            files::remove_file(&dir.join(&entry.name))
                .await
                .map_err(io("cannot remove a stray index"))?;
        }
    }
    // Only files the listing showed are read: an open of a missing file costs as much.
    let read_text = |name: &'static str| {
        let path = dir.join(name);
        let listed = entries.iter().any(|e| e.name == name);
        async move {
            if !listed {
                return None;
            }
            files::read_small_file(&path, SMALL_FILE_MAX_BYTES)
                .await
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok())
        }
    };
    let persisted_log_start: Option<i64> = read_text(LOG_START_FILE)
        .await
        .and_then(|t| t.trim().parse().ok());
    let checkpoint = read_text(CHECKPOINT_FILE)
        .await
        .and_then(|t| LeaderEpochCache::decode(&t));
    let marker: Option<(i64, u64, i64)> = read_text(CLEAN_SHUTDOWN_FILE).await.and_then(|t| {
        let mut fields = t.split_whitespace().map(|f| f.parse::<i64>().ok());
        Some((
            fields.next()??,
            u64::try_from(fields.next()??).ok()?,
            fields.next()??,
        ))
    });
    let rebuild_epochs = checkpoint.is_none();
    let mut epochs = checkpoint.unwrap_or_default();
    let interval = config.index_interval_bytes;
    let now = now_ms();
    let mut segments = Vec::with_capacity(logs.len().max(1));
    let mut tail = None;
    // Idempotent producers' batches in the active segment, when it was scanned.
    let mut active_producers: Option<ProducerStates> = None;
    // The producer state at the log end after a clean close.
    let mut clean_producers: Option<ProducerStates> = None;

    // Sealed segments were synced and indexed when they were rolled: trusted as they are.
    for (i, &(base, size, modified_ms)) in
        logs.iter().enumerate().take(logs.len().saturating_sub(1))
    {
        let next_offset = logs[i + 1].0;
        let mut seg = Segment::new_active(base, modified_ms);
        seg.size_bytes = size;
        seg.written_bytes = size;
        seg.allocated_bytes = size;
        seg.next_offset = next_offset;
        seg.state = SegmentState::Sealed;
        seg.index = None;
        let time_path = segment_path(dir, base, TIME_INDEX_SUFFIX);
        let last_time = read_last_time_entry(&time_path, base, next_offset).await;
        match (last_time, rebuild_epochs) {
            (Some(max), false) => seg.max_timestamp = max,
            _ => {
                let (index, scan) = load_or_rebuild_index(dir, base, size, next_offset, interval)
                    .await
                    .map_err(io("cannot rebuild a segment index"))?;
                let scan = match scan {
                    Some(scan) => scan,
                    None => {
                        let file = files::open_dma_read(&segment_path(dir, base, LOG_SUFFIX))
                            .await
                            .map_err(io("cannot open a segment"))?;
                        scan_segment(
                            &file,
                            base,
                            ScanLimits {
                                file_bytes: size,
                                stop_at_offset: None,
                                index_interval_bytes: interval,
                            },
                        )
                        .await
                        .map_err(io("cannot scan a segment"))?
                    }
                };
                seg.max_timestamp = scan.max_timestamp;
                for (epoch, start) in scan.epochs {
                    epochs.assign(epoch, start);
                }
                seg.index = Some(index);
            }
        }
        segments.push(seg);
    }

    match logs.last() {
        None => {
            let base = persisted_log_start.unwrap_or(0).max(0);
            segments.push(Segment::new_active(base, now));
            tail = Some(Vec::new());
        }
        Some(&(base, size, modified_ms)) => {
            let mut seg = Segment::new_active(base, modified_ms);
            let trusted = match marker {
                Some((m_base, m_size, m_next))
                    if m_base == base && m_size == size && m_next >= base =>
                {
                    load_or_rebuild_index(dir, base, size, m_next, interval)
                        .await
                        .ok()
                        .map(|(index, scan)| (index, scan, m_next))
                }
                _ => None,
            };
            match trusted {
                Some((index, None, next_offset)) => {
                    // Clean shutdown: the marker vouches for size and end offset, the index
                    // files for the rest. The file is opened on the first write.
                    seg.size_bytes = size;
                    seg.written_bytes = size;
                    seg.allocated_bytes = size;
                    seg.next_offset = next_offset;
                    if let Some(entry) = index.last_time_entry() {
                        seg.max_timestamp =
                            (entry.timestamp_ms, base + i64::from(entry.relative_offset));
                    }
                    seg.index = Some(index);
                    // The snapshot written at close is the state; without a readable one the
                    // segment is scanned for it like after a crash.
                    clean_producers = load_snapshot(dir, &snapshots, next_offset).await;
                    if (rebuild_epochs || clean_producers.is_none()) && size > 0 {
                        let file = files::open_dma_read(&seg.log_path(dir))
                            .await
                            .map_err(io("cannot open a segment"))?;
                        let scan = scan_segment(
                            &file,
                            base,
                            ScanLimits {
                                file_bytes: size,
                                stop_at_offset: None,
                                index_interval_bytes: interval,
                            },
                        )
                        .await
                        .map_err(io("cannot scan a segment"))?;
                        if rebuild_epochs {
                            for (epoch, start) in scan.epochs {
                                epochs.assign(epoch, start);
                            }
                        }
                        active_producers = Some(scan.producers);
                    }
                }
                _ => {
                    // Unclean shutdown: validate every batch, cut at the first bad byte.
                    let file = files::open_dma(&seg.log_path(dir), false)
                        .await
                        .map_err(io("cannot open the active segment"))?;
                    let limits = ScanLimits {
                        file_bytes: size,
                        stop_at_offset: None,
                        index_interval_bytes: interval,
                    };
                    let scan = scan_segment(&file, base, limits)
                        .await
                        .map_err(io("cannot recover the active segment"))?;
                    if scan.valid_bytes < size {
                        tracing::warn!(dir = %dir.display(), base, valid = scan.valid_bytes, size, "truncating the active segment at the first invalid byte");
                        file.truncate(scan.valid_bytes)
                            .await
                            .map_err(|e| io("cannot truncate the active segment")(e.into()))?;
                        file.fdatasync()
                            .await
                            .map_err(|e| io("cannot sync the active segment")(e.into()))?;
                    }
                    seg.size_bytes = scan.valid_bytes;
                    seg.written_bytes = scan.valid_bytes;
                    seg.allocated_bytes = scan.valid_bytes;
                    seg.next_offset = scan.next_offset;
                    seg.max_timestamp = scan.max_timestamp;
                    seg.index = Some(scan.index);
                    seg.state = SegmentState::Open;
                    seg.file = Some(file);
                    tail = Some(scan.tail);
                    for (epoch, start) in scan.epochs {
                        epochs.assign(epoch, start);
                    }
                    active_producers = Some(scan.producers);
                }
            }
            segments.push(seg);
        }
    }
    if marker.is_some() {
        // From here on a crash must lead to a scan.
        files::remove_file(&dir.join(CLEAN_SHUTDOWN_FILE))
            .await
            .map_err(io("cannot remove the clean-shutdown marker"))?;
        files::sync_dir_path(dir)
            .await
            .map_err(io("cannot sync the log directory"))?;
    }

    let next_offset = segments.last().map_or(0, |s| s.next_offset);
    let log_start_offset = segments[0]
        .base_offset
        .max(persisted_log_start.unwrap_or(0))
        .min(next_offset);
    let producers = recover_producers(
        dir,
        &mut snapshots,
        segments.last().map_or(0, |s| s.base_offset),
        next_offset,
        clean_producers,
        active_producers,
        now,
    )
    .await
    .map_err(io("cannot recover the producer state"))?;
    let before = epochs.clone();
    epochs.truncate_from_end(next_offset);
    epochs.truncate_from_start(log_start_offset);
    let mut state = State {
        config,
        segments,
        log_start_offset,
        next_offset,
        written_next_offset: next_offset,
        pending: VecDeque::new(),
        appended_seq: 0,
        sync_wanted: 0,
        writer_running: false,
        syncer_running: false,
        tail,
        last_written_file: None,
        failed: None,
        closed: false,
        truncating: false,
        epochs_dirty: rebuild_epochs && !epochs.entries().is_empty() || before != epochs,
        epochs,
        max_timestamp: (-1, -1),
        generation: 0,
        read_file: None,
        dir_synced: false,
        stats: LogStats::default(),
        producers,
        snapshots,
    };
    state.recompute_max_timestamp();
    Ok(state)
}

/// Rebuilds the idempotent producers' state (KIP-98) on open: the snapshot at the log end
/// when the active segment was not scanned (clean shutdown), else the snapshot at the
/// active segment's base plus the batches the scan found in it. Snapshots past the log end
/// (data cut by recovery) are removed. A log written without snapshots starts with the
/// producers of its active segment only, as Kafka does on upgrade with its last segments.
async fn recover_producers(
    dir: &Path,
    snapshots: &mut Vec<i64>,
    active_base: i64,
    next_offset: i64,
    clean_producers: Option<ProducerStates>,
    active_producers: Option<ProducerStates>,
    now: i64,
) -> std::io::Result<ProducerStates> {
    let keep = snapshots.partition_point(|&o| o <= next_offset);
    for stale in snapshots.split_off(keep) {
        files::remove_file(&snapshot_path(dir, stale)).await?;
    }
    Ok(match (clean_producers, active_producers) {
        (_, Some(mut replayed)) => {
            // Replayed batches count as seen now: their expiry starts with this open.
            replayed.set_last_timestamps(now);
            let mut producers = load_snapshot(dir, snapshots, active_base)
                .await
                .unwrap_or_default();
            producers.extend_with_later(replayed);
            producers
        }
        (Some(producers), None) => producers,
        // An empty active segment: the state at its base is the state at the log end.
        (None, None) => load_snapshot(dir, snapshots, next_offset)
            .await
            .unwrap_or_default(),
    })
}

/// The snapshot `<offset>.snapshot` if it is listed and intact.
async fn load_snapshot(dir: &Path, snapshots: &[i64], offset: i64) -> Option<ProducerStates> {
    if snapshots.binary_search(&offset).is_err() {
        return None;
    }
    let bytes = files::read_small_file(&snapshot_path(dir, offset), MAX_SNAPSHOT_BYTES)
        .await
        .ok()
        .flatten()?;
    let decoded = ProducerStates::decode(&bytes);
    if decoded.is_none() {
        tracing::warn!(dir = %dir.display(), offset, "ignoring a damaged producer snapshot");
    }
    decoded
}

/// The last entry of a sealed segment's `.timeindex` as `(timestamp, offset)`; `(-1, -1)`
/// for an empty one; `None` when the file is missing or damaged.
async fn read_last_time_entry(path: &Path, base: i64, next_offset: i64) -> Option<(i64, i64)> {
    let data = files::read_small_file(path, MAX_INDEX_FILE_BYTES)
        .await
        .ok()??;
    if data.len() % TIME_ENTRY_BYTES != 0 {
        return None;
    }
    if data.is_empty() {
        return Some((-1, -1));
    }
    let last = &data[data.len() - TIME_ENTRY_BYTES..];
    let timestamp = i64::from_be_bytes(last[..8].try_into().ok()?);
    let offset = base + i64::from(u32::from_be_bytes(last[8..].try_into().ok()?));
    (timestamp >= 0 && offset < next_offset.max(base + 1)).then_some((timestamp, offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::PAGE_BYTES;

    #[test]
    fn page_arithmetic() {
        assert_eq!(align_down(4095), 0);
        assert_eq!(align_up(1), PAGE_BYTES);
        assert_eq!(align_up(4096), 4096);
    }
}
