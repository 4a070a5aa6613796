//! A partition log: a state machine ([`state`]) and the code that drives it through
//! [`Storage`] — glommio's direct I/O in production, a simulated disk in tests.
//!
//! One file per part of the log's life: `append` (validation, producer checks, offset
//! assignment), `write` (group commit: the writer and syncer tasks and the jobs they run),
//! `follow` (a follower's append of the leader's batches as they are), `high_watermark`
//! (the replicated partition's high-watermark checkpoint), `seal` (closing a
//! rolled segment), `read` (reads and the timestamp lookup), `open`
//! (loading a log: what is on disk), `recovery` (what opening decides on it: the log
//! start, gaps and damage between segments), `failure` (what a failed write or fdatasync does, and
//! the rebuild from disk that follows), `truncate`, `retention` (retention and
//! DeleteRecords), `clean` and `swap` (compaction: a cleaning round, and swapping a cleaned
//! segment in crash-safely), `close`, `snapshot` (producer snapshots), `indexes` (index files),
//! `damage` (reports and the rule for damage found by reads), `check` (invariants, for
//! tests and the simulator). `scan` walks a segment validating every batch; `manifest` is
//! the sealed-segments file; `segment` what the log knows about one segment; `lock` an
//! executor-independent async lock.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::cache::{BatchCache, PartitionCache};
use crate::commit::SeqWaiters;
use crate::config::LogConfig;
use crate::error::EngineError;
use crate::storage::{DmaStorage, Storage};
use crate::Offset;

mod append;
mod check;
mod clean;
mod close;
mod damage;
mod failure;
mod follow;
mod high_watermark;
mod indexes;
mod lock;
pub(crate) mod manifest;
mod open;
mod read;
mod recovery;
mod retention;
mod scan;
mod seal;
mod segment;
mod snapshot;
mod state;
mod swap;
mod truncate;
mod write;

pub use clean::CLEANER_CHECKPOINT_FILE;
pub use damage::{DamageKind, DamageReport};
pub use follow::{check_follower_batches, FollowerRefusal, MAX_FOLLOWER_BATCH_BYTES};
pub use high_watermark::HIGH_WATERMARK_FILE;
pub use manifest::SEALED_SEGMENTS_FILE;

use lock::Lock;
use state::LogState;

/// The most bytes one direct write carries; larger backlogs go out in several writes.
pub const MAX_WRITE_BYTES: usize = 2 << 20;
/// The first preallocated extent of a segment; extents double up to `preallocate_bytes`.
pub const MIN_EXTENT_BYTES: u64 = 64 << 10;
/// The least a read from disk fetches (read-ahead for small `max_bytes`).
pub const MIN_DISK_READ_BYTES: usize = 64 << 10;
/// Index files larger than this are treated as damaged and rebuilt.
pub const MAX_INDEX_FILE_BYTES: u64 = 256 << 20;
/// Written on a clean close: `<active base offset> <bytes> <next offset>`. While it is
/// present the active segment and its index files are trusted without a scan.
pub const CLEAN_SHUTDOWN_FILE: &str = "wharf-clean-shutdown";
/// The log start offset when DeleteRecords (or damage) moved it inside the log (Kafka keeps
/// it in `log-start-offset-checkpoint`).
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
    /// Write-path failures (full disk, failed writes or fdatasyncs) since the log opened.
    pub failures: u64,
}

/// Open files of the log; the state refers to segments by base offset only.
pub(crate) struct Files<F> {
    /// Write handles of segments not yet sealed, by base offset.
    writable: Vec<(i64, Rc<F>)>,
    /// A read-only handle on the sealed segment read last.
    read: Option<(i64, Rc<F>)>,
    /// The file the last write went to, for the syncer.
    last_written: Option<Rc<F>>,
    /// The handle reads of a segment use while its file is being renamed into place
    /// (a cleaned segment being swapped in).
    pinned: Option<(i64, Rc<F>)>,
}

impl<F> Default for Files<F> {
    fn default() -> Self {
        Files {
            writable: Vec::new(),
            read: None,
            last_written: None,
            pinned: None,
        }
    }
}

impl<F> Files<F> {
    fn writable(&self, base_offset: i64) -> Option<Rc<F>> {
        self.writable
            .iter()
            .find(|(b, _)| *b == base_offset)
            .map(|(_, f)| f.clone())
    }

    fn take_writable(&mut self, base_offset: i64) -> Option<Rc<F>> {
        let at = self.writable.iter().position(|(b, _)| *b == base_offset)?;
        Some(self.writable.remove(at).1)
    }

    fn clear(&mut self) {
        self.writable.clear();
        self.read = None;
        self.last_written = None;
        self.pinned = None;
    }
}

pub(crate) struct Inner<S: Storage> {
    storage: S,
    dir: PathBuf,
    cache: Rc<BatchCache>,
    cached: Rc<PartitionCache>,
    state: RefCell<LogState>,
    files: RefCell<Files<S::File>>,
    written: SeqWaiters,
    synced: SeqWaiters,
    /// Held by the writer for each job and by structural changes (truncation, retention,
    /// recovery, close), which therefore never interleave with a write.
    io_lock: Lock,
    /// Held by the syncer around each `fdatasync`, and by a recovery.
    sync_lock: Lock,
    /// Held by a truncation for its whole length: appends wait on it.
    append_gate: Lock,
    /// Held by a high-watermark checkpoint write, and by a truncation for its whole
    /// length (it may lower the checkpoint first).
    high_watermark_lock: Lock,
    /// Where compaction stopped, and its turn.
    cleaner: clean::CleanerState,
}

impl<S: Storage> Drop for Inner<S> {
    fn drop(&mut self) {
        self.cache.clear(&self.cached);
    }
}

/// One partition's log, owned by one shard (`!Send`). Methods take `&self` so that
/// concurrent appends from many connections on the shard can be group-committed; share it
/// as `Rc<PartitionLog>`.
pub struct PartitionLog<S: Storage = DmaStorage> {
    inner: Rc<Inner<S>>,
}

impl PartitionLog<DmaStorage> {
    /// Open (creating if missing) the log in `dir` (`<data>/<topic>-<partition>`) on this
    /// shard's glommio executor, recovering it (see [`PartitionLog::open_with`]).
    pub async fn open(
        dir: PathBuf,
        config: LogConfig,
        cache: Rc<BatchCache>,
    ) -> Result<PartitionLog, EngineError> {
        PartitionLog::open_with(DmaStorage, dir, config, cache).await
    }
}

impl<S: Storage> PartitionLog<S> {
    /// Open (creating if missing) the log in `dir` on `storage`, recovering it: segments
    /// without proof of a clean close are validated batch by batch; a torn or corrupt tail
    /// is cut, and damage or gaps before it move the log start past them (reported in
    /// [`PartitionLog::damage_reports`]).
    pub async fn open_with(
        storage: S,
        dir: PathBuf,
        config: LogConfig,
        cache: Rc<BatchCache>,
    ) -> Result<PartitionLog<S>, EngineError> {
        let config = config.sanitized();
        let (state, files) = open::open_state(&storage, &dir, config).await?;
        let cleaner = clean::CleanerState::load(&storage, &dir).await;
        let cached = cache.new_partition();
        let inner = Rc::new(Inner {
            storage,
            dir,
            cache,
            cached,
            state: RefCell::new(state),
            files: RefCell::new(files),
            written: SeqWaiters::default(),
            synced: SeqWaiters::default(),
            io_lock: Lock::default(),
            sync_lock: Lock::default(),
            append_gate: Lock::default(),
            high_watermark_lock: Lock::default(),
            cleaner,
        });
        Ok(PartitionLog { inner })
    }

    /// The directory of this log.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The first offset still in the log.
    pub fn log_start_offset(&self) -> Offset {
        Offset(self.inner.state.borrow().log_start_offset)
    }

    /// The offset the next appended record will get.
    pub fn log_end_offset(&self) -> Offset {
        Offset(self.inner.state.borrow().next_offset)
    }

    /// Every offset below this is written to the log's files (readable): the log end
    /// offset less what is still queued for the writer. After a failed write or fdatasync
    /// the log is reloaded from disk and this may move back.
    pub fn written_end_offset(&self) -> Offset {
        Offset(self.inner.state.borrow().written_next_offset)
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

    /// The base offsets of the segments, oldest first, the active one last. Files the
    /// broker keeps per segment (a `.txnindex`) are named by these.
    pub fn segment_base_offsets(&self) -> Vec<Offset> {
        self.inner
            .state
            .borrow()
            .segments
            .iter()
            .map(|s| Offset(s.base_offset))
            .collect()
    }

    /// The base offset of the active segment (the last one).
    pub fn active_segment_base(&self) -> Offset {
        Offset(self.inner.state.borrow().active().base_offset)
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

    /// The idempotent producers' state as the log keeps it.
    pub fn producer_states(&self) -> crate::producer::ProducerStates {
        self.inner.state.borrow().producers.clone()
    }

    /// Replace the configuration (IncrementalAlterConfigs); applies to later appends and upkeep.
    pub fn set_config(&self, config: LogConfig) {
        self.inner.state.borrow_mut().config = config.sanitized();
    }

    /// The configuration in force.
    pub fn config(&self) -> LogConfig {
        self.inner.state.borrow().config.clone()
    }

    /// Damage found since the log was opened, recovery included: torn tails cut, damaged
    /// batches and gaps the log start moved past. Each was also logged once.
    pub fn damage_reports(&self) -> Vec<DamageReport> {
        self.inner.state.borrow().reports.clone()
    }

    /// The log's internal bookkeeping, one line, for debugging a simulation seed.
    #[doc(hidden)]
    pub fn debug_state(&self) -> String {
        let st = self.inner.state.borrow();
        format!(
            "appended {} written {} synced {} sync_wanted {} writer {} syncer {} io_lock {} sync_lock {} health {:?} pending {} segments {:?}",
            st.appended_seq,
            self.inner.written.done(),
            self.inner.synced.done(),
            st.sync_wanted,
            st.writer_running,
            st.syncer_running,
            self.inner.io_lock.is_locked(),
            self.inner.sync_lock.is_locked(),
            st.health,
            st.pending.len(),
            st.segments
                .iter()
                .map(|s| (s.base_offset, s.state, s.written_bytes, s.synced_bytes))
                .collect::<Vec<_>>()
        )
    }

    /// Whether a write-path failure's reload from disk has yet to succeed: until it has,
    /// what the log shows (its bounds, what it serves) may still change to what the disk
    /// holds.
    pub fn reloading(&self) -> bool {
        self.inner.state.borrow().reloading()
    }

    /// Why appends are refused right now (a failed write or fdatasync, a full disk, a
    /// closed log), if they are.
    pub fn write_error(&self) -> Option<String> {
        let st = self.inner.state.borrow();
        if st.closed {
            return Some("the log is closed".into());
        }
        match &st.health {
            state::Health::Healthy => None,
            state::Health::Failed { reason, .. } => Some(reason.clone()),
        }
    }
}

impl<S: Storage> Inner<S> {
    fn storage_error(&self, reason: impl Into<String>) -> EngineError {
        EngineError::Storage {
            path: self.dir.clone(),
            reason: reason.into(),
        }
    }

    fn closed_error(&self) -> EngineError {
        self.storage_error("the log is closed")
    }

    fn check_open(&self, st: &LogState) -> Result<(), EngineError> {
        if st.closed {
            return Err(self.closed_error());
        }
        Ok(())
    }

    /// Errors unless the log takes writes now. A log whose pause after a failure is over
    /// takes them again; one whose rebuild from disk failed tries the rebuild again.
    fn check_writable(self: &Rc<Self>) -> Result<(), EngineError> {
        self.check_writable_at(self.storage.now_ms())
    }

    /// [`Inner::check_writable`] at `now` (an append has read the clock already).
    fn check_writable_at(self: &Rc<Self>, now: i64) -> Result<(), EngineError> {
        let (refusal, rebuild) = {
            let mut st = self.state.borrow_mut();
            let rebuild = matches!(
                &st.health,
                state::Health::Failed { recovered: false, retry_at_ms, .. } if now >= *retry_at_ms
            ) && !self.io_lock.is_locked();
            (st.write_refusal(now), rebuild)
        };
        if rebuild {
            failure::start_recovery(self);
        }
        match refusal {
            Some(reason) => Err(self.storage_error(reason)),
            None => Ok(()),
        }
    }
}
