//! The log's state machine: everything a partition log knows in memory, and the decisions
//! made on it (offset assignment, rolls, index updates, what to write next, what a read,
//! a truncation, retention or a recovery must do). No I/O and no clock: time comes in as
//! arguments, and I/O goes out as plans the driver carries out through
//! [`Storage`](crate::storage::Storage), reporting the results back.

use std::collections::VecDeque;

use bytes::Bytes;
use wharf_protocol::batch::BatchInfo;

use crate::cache::{BatchCache, PartitionCache};
use crate::config::LogConfig;
use crate::epoch::LeaderEpochCache;
use crate::producer::ProducerStates;
use crate::records::offset_of_max_timestamp;

use super::manifest::SealedSegment;
use super::segment::{Segment, SegmentState};
use super::{DamageReport, LogStats};

/// A batch appended but not yet written.
pub(crate) struct Pending {
    pub bytes: Bytes,
    pub base_offset: i64,
    pub leader_epoch: i32,
    pub segment_base: i64,
    pub next_offset: i64,
    /// The group-commit sequence after this batch (the log's running byte count).
    pub end_seq: u64,
}

/// Why writes stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// A write or preallocation found the disk full: what completed before is intact.
    NoSpace,
    /// A write failed otherwise: what completed before is intact.
    Write,
    /// An `fdatasync` failed: nothing after the last successful one can be vouched for
    /// (fsyncgate), so the log is rebuilt from what is really on disk.
    Sync,
    /// A truncation failed halfway: the log is reloaded from disk as after a crash.
    Structural,
}

impl FailureKind {
    /// How much of what the log wrote the failure leaves trustworthy, least first.
    fn severity(&self) -> u8 {
        match self {
            FailureKind::NoSpace | FailureKind::Write => 0,
            FailureKind::Sync => 1,
            FailureKind::Structural => 2,
        }
    }
}

/// Whether the log takes writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    Healthy,
    /// A write-path operation failed; the state is being rebuilt from disk (or could not
    /// be, and will be again at `retry_at_ms`). Appends are refused, reads are served.
    Failed {
        reason: String,
        kind: FailureKind,
        recovered: bool,
        retry_at_ms: i64,
    },
}

/// First pause before writes are tried again after a failure; doubles per failure in a row.
pub(crate) const RETRY_FIRST_MS: i64 = 1_000;
/// Longest pause between tries.
pub(crate) const RETRY_MAX_MS: i64 = 30_000;

pub(crate) struct LogState {
    pub config: LogConfig,
    /// Sorted by base offset; the last one is the active segment.
    pub segments: Vec<Segment>,
    pub log_start_offset: i64,
    /// The offset the next appended record gets.
    pub next_offset: i64,
    /// Every offset below this is on disk (readable).
    pub written_next_offset: i64,
    pub pending: VecDeque<Pending>,
    /// Running byte count of appends; the group-commit sequence.
    pub appended_seq: u64,
    pub sync_wanted: u64,
    pub writer_running: bool,
    pub syncer_running: bool,
    /// The active segment's bytes from `align_down(written_bytes)`; `None` until loaded.
    pub tail: Option<Vec<u8>>,
    /// `(segment base, end position)` of the last completed write, for the syncer.
    pub last_write: Option<(i64, u64)>,
    pub health: Health,
    /// Failures in a row, for the pause before the next try.
    pub failures_in_a_row: u32,
    /// A rebuild from disk is running.
    pub recovering: bool,
    pub closed: bool,
    pub truncating: bool,
    pub epochs: LeaderEpochCache,
    pub epochs_dirty: bool,
    pub max_timestamp: (i64, i64),
    /// Bumped whenever segments are removed or cut, so reads in flight start over.
    pub generation: u64,
    pub dir_synced: bool,
    /// The log start moved past damage but `log-start-offset` could not be written: a
    /// clean close must write it, or the restart (which skips the scan) serves the damage.
    pub log_start_unrecorded: bool,
    pub stats: LogStats,
    /// Idempotent producers, as of every assigned offset (KIP-98).
    pub producers: ProducerStates,
    /// Offsets of the `<offset>.snapshot` files on disk, ascending.
    pub snapshots: Vec<i64>,
    /// Damage found since the log was opened (recovery included).
    pub reports: Vec<DamageReport>,
    /// The high watermark in `high-watermark-checkpoint` (after a failed write, the higher
    /// of the two values the file may hold); `None` if there is none.
    pub high_watermark_checkpoint: Option<i64>,
}

impl LogState {
    /// A failure's reload from disk has not succeeded yet: the segments, bounds and tail
    /// this state shows may not be what the disk holds.
    pub fn reloading(&self) -> bool {
        matches!(
            self.health,
            Health::Failed {
                recovered: false,
                ..
            }
        )
    }

    pub fn new(config: LogConfig, segments: Vec<Segment>) -> LogState {
        let next_offset = segments.last().map_or(0, |s| s.next_offset);
        LogState {
            config,
            log_start_offset: segments.first().map_or(0, |s| s.base_offset),
            segments,
            next_offset,
            written_next_offset: next_offset,
            pending: VecDeque::new(),
            appended_seq: 0,
            sync_wanted: 0,
            writer_running: false,
            syncer_running: false,
            tail: None,
            last_write: None,
            health: Health::Healthy,
            failures_in_a_row: 0,
            recovering: false,
            closed: false,
            truncating: false,
            epochs: LeaderEpochCache::default(),
            epochs_dirty: false,
            max_timestamp: (-1, -1),
            generation: 0,
            dir_synced: false,
            log_start_unrecorded: false,
            stats: LogStats::default(),
            producers: ProducerStates::default(),
            snapshots: Vec::new(),
            reports: Vec::new(),
            high_watermark_checkpoint: None,
        }
    }

    pub fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }

    pub fn segment_index(&self, base_offset: i64) -> Option<usize> {
        self.segments
            .binary_search_by_key(&base_offset, |s| s.base_offset)
            .ok()
    }

    pub fn segment(&self, base_offset: i64) -> Option<&Segment> {
        self.segment_index(base_offset).map(|i| &self.segments[i])
    }

    pub fn segment_mut(&mut self, base_offset: i64) -> Option<&mut Segment> {
        self.segment_index(base_offset)
            .map(move |i| &mut self.segments[i])
    }

    /// Why writes are refused now, if they are (`now_ms` decides whether the pause after
    /// a failure is over; when it is, the log is healthy again and writes are tried).
    pub fn write_refusal(&mut self, now_ms: i64) -> Option<String> {
        if self.closed {
            return Some("the log is closed".into());
        }
        match &self.health {
            Health::Healthy => None,
            Health::Failed {
                recovered: true,
                retry_at_ms,
                ..
            } if now_ms >= *retry_at_ms => {
                self.health = Health::Healthy;
                None
            }
            Health::Failed { reason, .. } => Some(reason.clone()),
        }
    }

    /// Records a write-path failure: writes stop until the state is rebuilt from disk.
    /// False if the log had already failed (the first failure is the one reported).
    pub fn fail(&mut self, kind: FailureKind, reason: String, now_ms: i64) -> bool {
        if let Health::Failed {
            recovered: false,
            kind: current,
            ..
        } = &mut self.health
        {
            // One more failure before the rebuild planned its walk: it walks from what
            // the worse of the two leaves trustworthy (an fdatasync that failed after a
            // write did means nothing since the last good one can be vouched for).
            if kind.severity() > current.severity() {
                *current = kind;
            }
            return false;
        }
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        self.health = Health::Failed {
            reason,
            kind,
            recovered: false,
            retry_at_ms: now_ms + self.retry_pause_ms(),
        };
        self.writer_running = false;
        true
    }

    /// The pause before writes are tried again: doubling per failure in a row.
    pub fn retry_pause_ms(&self) -> i64 {
        let doublings = self.failures_in_a_row.saturating_sub(1).min(16);
        (RETRY_FIRST_MS << doublings).min(RETRY_MAX_MS)
    }

    /// Starts a new active segment at `base`, remembering the producer state as of `base`
    /// for the snapshot written when the segment before it is sealed.
    pub fn roll(&mut self, base: i64, now_ms: i64) {
        let mut seg = Segment::new_active(base, now_ms);
        seg.start_producers = Some(self.producers.encode());
        self.segments.push(seg);
    }

    pub fn recompute_max_timestamp(&mut self) {
        self.max_timestamp = (-1, -1);
        for seg in &self.segments {
            if seg.max_timestamp.0 > self.max_timestamp.0 {
                self.max_timestamp = seg.max_timestamp;
            }
        }
    }

    /// Queues one validated batch: assigns its offsets, rolls the segment if needed,
    /// updates indexes and caches. No I/O. Returns `(base, last)` offsets.
    pub fn assign(
        &mut self,
        bytes: Bytes,
        mut info: BatchInfo,
        leader_epoch: i32,
        now_ms: i64,
        cache: &BatchCache,
        cached: &std::rc::Rc<PartitionCache>,
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
                    .is_some_and(|t| now_ms.saturating_sub(t) >= config.segment_ms as i64)
                || last - active.base_offset > i64::from(u32::MAX));
        if roll {
            self.roll(base, now_ms);
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
        seg.first_append_ms.get_or_insert(now_ms);
        seg.last_modified_ms = now_ms;
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

    /// The sealed segments, as the sealed-segments file lists them.
    pub fn sealed_segments(&self) -> Vec<SealedSegment> {
        self.segments
            .iter()
            .filter(|s| s.state == SegmentState::Sealed)
            .map(|s| SealedSegment {
                base_offset: s.base_offset,
                size_bytes: s.size_bytes,
                next_offset: s.next_offset,
                max_timestamp: s.max_timestamp,
            })
            .collect()
    }

    /// Drops in-memory knowledge of everything at or after `offset` except the segments
    /// themselves (the caller cuts those): caches, epochs, producers, the largest timestamp.
    pub fn forget_from(&mut self, offset: i64, cache: &BatchCache, cached: &PartitionCache) {
        if self.epochs.truncate_from_end(offset) {
            self.epochs_dirty = true;
        }
        self.producers.truncate_from(offset);
        self.recompute_max_timestamp();
        self.generation += 1;
        cache.truncate_from(cached, offset);
    }

    /// Moves the log start forward to `offset` (DeleteRecords, retention, damage): what is
    /// below it is no longer served.
    pub fn move_log_start(&mut self, offset: i64, cache: &BatchCache, cached: &PartitionCache) {
        if offset <= self.log_start_offset {
            return;
        }
        self.log_start_offset = offset;
        cache.drop_before(cached, offset);
        if self.epochs.truncate_from_start(offset) {
            self.epochs_dirty = true;
        }
        self.generation += 1;
    }
}
