//! Log compaction (Kafka's log cleaner): the latest record of every key stays, at its
//! original offset, and tombstones go once they have been clean for `delete.retention.ms`.
//!
//! What a cleaning round does (driven by `PartitionLog::clean`, decided here without I/O):
//! 1. The cleanable range ([`plan`]): from the first dirty offset (where the last round
//!    stopped, kept in `cleaner-checkpoint`) up to the first segment that must not be
//!    cleaned — the active segment, any segment not sealed, the one holding the upper bound
//!    the caller gives (high watermark, last stable offset), and those younger than
//!    `min.compaction.lag.ms`. Whole sealed segments only.
//! 2. The offset map ([`OffsetMap`], bounded memory): the latest offset of every key in the
//!    dirty range. When it fills, the round cleans up to the last batch it covers, and the
//!    next round goes on from there.
//! 3. Every segment from the log start to that end, grouped so that each group fits one
//!    segment, is rewritten ([`filter`], [`output`]) into `<base>.log.cleaned`, synced, and
//!    swapped in by renames (`.cleaned` → `.swap` → `.log`); a crash at any point leaves
//!    the old segments or the new one, and the next open finishes or discards the swap.
//!
//! Offsets never change, and the proof that a cleaned segment is intact is the one every
//! segment gives: its batches start at its base offset, each starts where the previous one
//! ended, and the last ends where the next segment starts. Records removed leave gaps
//! inside batches (offset deltas) and between them; the gaps between batches are filled
//! with *fillers*, empty batches (no records, no producer, `lastOffsetDelta` spanning the
//! gap) under a CRC like any batch. Readers, indexes, recovery and the damage rules need
//! nothing new: a batch whose base offset (outside the CRC) does not follow its
//! predecessor is still damage, never mistaken for a cleaned gap. Kafka consumers skip
//! empty batches (Kafka's own cleaner writes them to keep a producer's last sequence).

use std::future::Future;
use std::pin::Pin;

pub(crate) mod filter;
mod offset_map;
pub(crate) mod output;
pub(crate) mod plan;

pub use offset_map::{
    OffsetMap, DEFAULT_DEDUPE_BUFFER_BYTES, OFFSET_MAP_LOAD_FACTOR, OFFSET_MAP_SLOT_BYTES,
};

/// A topic's compaction settings, with Kafka's names and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct CompactionConfig {
    /// `delete.retention.ms`: how long a tombstone stays once it has been cleaned.
    pub delete_retention_ms: i64,
    /// `min.compaction.lag.ms`: a record stays uncompacted at least this long.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a record is eligible for compaction after this long at
    /// most, whatever the dirty ratio.
    pub max_compaction_lag_ms: i64,
    /// `min.cleanable.dirty.ratio`: clean once this share of the log is dirty.
    pub min_cleanable_dirty_ratio: f64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            delete_retention_ms: 86_400_000,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            min_cleanable_dirty_ratio: 0.5,
        }
    }
}

/// An aborted transaction's range in the log (Kafka's `AbortedTxn`): the transactional
/// batches of `producer_id` from `first_offset` to `last_offset` (its abort marker) are
/// removed by cleaning. The engine refuses transactional batches today; this is the input
/// transactions will feed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// Paces a cleaning round (Kafka's `Throttler` for `log.cleaner.io.max.bytes.per.second`).
/// The round calls it after each chunk it reads or writes (about a MiB), with the bytes
/// read or written since the last call, and goes on when it resolves. Answering `false`
/// stops the round (a broker shutting down): a round stopped before its swap commits
/// leaves the log as it was, and the next round starts where the last finished one ended.
pub trait Throttle {
    fn pace(&self, bytes: u64) -> Pin<Box<dyn Future<Output = bool> + '_>>;
}

/// One cleaning round's inputs.
#[derive(Clone)]
pub struct CleanRequest<'a> {
    /// The time the round runs at: tombstones get their delete horizon from it and go
    /// once it has passed.
    pub now_ms: i64,
    /// Nothing at or past this offset is cleaned: the high watermark (the last stable
    /// offset once transactions exist).
    pub upper_bound_offset: i64,
    pub aborted: &'a [AbortedTxn],
    /// The most one compressed batch may decompress to; a batch that decompresses to more
    /// is kept as it is.
    pub max_decompressed_batch_bytes: usize,
    /// Paces the round's I/O and may stop it; without one the round only yields to other
    /// tasks after each chunk.
    pub throttle: Option<&'a dyn Throttle>,
}

impl std::fmt::Debug for CleanRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CleanRequest")
            .field("now_ms", &self.now_ms)
            .field("upper_bound_offset", &self.upper_bound_offset)
            .field("aborted", &self.aborted)
            .field(
                "max_decompressed_batch_bytes",
                &self.max_decompressed_batch_bytes,
            )
            .field("throttle", &self.throttle.is_some())
            .finish()
    }
}

/// How dirty a log is and what a round would clean (Kafka's `LogToClean`).
#[derive(Clone, Debug, PartialEq)]
pub struct Cleanable {
    pub first_dirty_offset: i64,
    /// A round cleans no segment at or past this offset.
    pub first_uncleanable_offset: i64,
    /// Bytes of segments wholly below the first dirty offset.
    pub clean_bytes: u64,
    /// Bytes of segments from the first dirty offset to the first uncleanable one.
    pub cleanable_bytes: u64,
    /// `cleanable / (clean + cleanable)`.
    pub dirty_ratio: f64,
    /// How long past `max.compaction.lag.ms` the oldest dirty record is (0 when not).
    pub compaction_delay_ms: i64,
}

impl Cleanable {
    /// Whether a round is due: the dirty ratio is above `min.cleanable.dirty.ratio`, or a
    /// record waited longer than `max.compaction.lag.ms`.
    pub fn is_due(&self, config: &CompactionConfig) -> bool {
        self.cleanable_bytes > 0
            && (self.compaction_delay_ms > 0 || self.dirty_ratio > config.min_cleanable_dirty_ratio)
    }
}

/// What a round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanStats {
    /// Where the dirty range started and where the next round starts.
    pub first_dirty_offset: i64,
    pub end_offset: i64,
    /// Keys the offset map held, and the most it could.
    pub map_keys: usize,
    pub map_capacity: usize,
    /// Groups rewritten and swapped in; groups given up because the log changed under
    /// them (retention, truncation, damage), to be cleaned by a later round.
    pub groups_cleaned: u64,
    pub groups_abandoned: u64,
    pub segments_before: u64,
    pub segments_after: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_read: u64,
    pub records_retained: u64,
    pub tombstones_removed: u64,
    pub keyless_removed: u64,
    /// Batches kept whole because their records could not be decoded.
    pub undecodable_batches: u64,
    pub fillers: u64,
}
