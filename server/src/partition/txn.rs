//! A partition's transactions on a shard: the pure [`PartitionTxns`] kept next to the log,
//! checked and updated around every append, rebuilt from the log when the partition opens.
//!
//! Data plane. The rules are the pure module's (`crate::txn::partition`); this file reads
//! batch headers, writes markers through the engine, and keeps the state consistent with
//! the log:
//!
//! - before a client's append, every producer batch is checked (fenced epochs,
//!   non-transactional data inside an open transaction); a transactional batch that opens
//!   a transaction holds the last stable offset at the log end *before* the append starts,
//!   so the LSO never passes the batch even while it is being written;
//! - a marker is checked, appended with acks=all semantics (synced; on a replicated
//!   partition, committed), and applied; an abort adds an entry to the aborted-transaction
//!   index;
//! - on a follower, the leader's batches and markers are applied in log order as they are
//!   appended ([`PartitionTxnState::apply_replicated`]), so a new leader starts with the
//!   same open transactions, aborted index and producer epochs; a truncation that cut the
//!   log replays the state from what is left ([`PartitionTxnState::replay`]);
//! - on open, a partition that has ever held a transactional batch (it has a
//!   [`TXN_MARKER_FILE`]) loads its aborted transactions from the segments' `.txnindex`
//!   files and its open transactions from its newest transaction snapshot, then replays
//!   the batch headers and markers after the snapshot ([`super::txn_files`]). A partition
//!   written before those files existed (or whose snapshots are all unusable) replays from
//!   the log start once, which writes them. The marker file is created and synced when the
//!   partition joins its first transaction (AddPartitionsToTxn) on the leader, and by a
//!   follower before it appends its first transactional batch or marker;
//! - an applied abort appends its entry to the `.txnindex` of the segment holding the
//!   marker; once a segment has rolled, the state is snapshotted at the log end the first
//!   time no append is in flight (so the state is exactly what the log below it implies).

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use wharf_engine::{DmaStorage, Durability, EngineError, Offset, PartitionLog, Storage};
use wharf_protocol::batch::{batches, BatchHeader};
use wharf_protocol::txn::control::{decode_control_batch, ControlContent, EndTxnMarker};
use wharf_protocol::txn::index::AbortedTxn;

use super::txn_files::TxnFiles;
use crate::txn::partition::{PartitionTxns, VerificationGuard};

/// Present in a partition's directory once it has joined a transaction: its open
/// transactions and aborted index are then rebuilt from the log on open.
pub const TXN_MARKER_FILE: &str = "transactional";
/// The marker file is empty; anything larger is not ours.
const MAX_MARKER_FILE_BYTES: u64 = 1 << 12;
/// Bytes read per step while rebuilding.
const REBUILD_READ_BYTES: usize = 1 << 20;
/// Largest control batch read while rebuilding (a marker is about 80 bytes).
const MAX_CONTROL_BATCH_BYTES: usize = 1 << 16;

/// One producer batch of an append, from its header.
struct ProducerBatch {
    producer_id: i64,
    producer_epoch: i16,
    transactional: bool,
}

fn producer_batches(records: &Bytes) -> Vec<ProducerBatch> {
    let mut out: Vec<ProducerBatch> = Vec::new();
    for (_, batch) in batches(records) {
        let Some(h) = BatchHeader::view(batch) else {
            break;
        };
        // A client's control batch is the engine's to refuse (INVALID_RECORD).
        if h.producer_id() < 0 || h.is_control() {
            continue;
        }
        out.push(ProducerBatch {
            producer_id: h.producer_id(),
            producer_epoch: h.producer_epoch(),
            transactional: h.is_transactional(),
        });
    }
    out
}

/// The transactions of one partition, next to its log.
pub struct PartitionTxnState<S: Storage = DmaStorage> {
    txns: RefCell<PartitionTxns>,
    /// Producers whose first transactional batch here is being appended, with the log end
    /// before it: the LSO stays below that until the batch's offsets are known.
    opening: RefCell<Vec<(i64, i64)>>,
    marker_file: Cell<bool>,
    files: Rc<TxnFiles<S>>,
    /// Appends, markers and follower writes under way: while any is, the log may hold a
    /// batch the state has not applied yet, so no snapshot is taken.
    busy: Cell<usize>,
    /// The end of the last batch applied: a snapshot is taken only if the log still
    /// reaches it.
    applied_end: Cell<i64>,
    /// An append failed: the log may hold what the state missed, until the next replay.
    diverged: Cell<bool>,
    /// The offset of the snapshot last scheduled, so a roll schedules one only.
    snapshot_scheduled: Cell<i64>,
    last_replay: Cell<Option<ReplayStats>>,
}

/// What the last rebuild of the state from the log read.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ReplayStats {
    /// Where it started reading: the snapshot's offset, or the log start without one.
    pub from_offset: i64,
    /// The log end it read to.
    pub to_offset: i64,
    /// Batches read (headers; the records of control batches only).
    pub batches: u64,
    /// Aborted transactions loaded from the `.txnindex` files.
    pub indexed_aborts: usize,
}

/// Held while an append or marker of the partition is under way (see
/// [`PartitionTxnState::busy`]).
pub struct Busy<'a>(&'a Cell<usize>);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl PartitionTxnState {
    /// The state of the partition whose files are in `dir`, empty until
    /// [`Self::rebuild`].
    pub fn new(dir: PathBuf) -> PartitionTxnState {
        PartitionTxnState::with_storage(DmaStorage, dir)
    }
}

impl<S: Storage> PartitionTxnState<S> {
    /// [`PartitionTxnState::new`] on any storage (the simulator's in tests).
    pub fn with_storage(storage: S, dir: PathBuf) -> PartitionTxnState<S> {
        PartitionTxnState {
            txns: RefCell::default(),
            opening: RefCell::default(),
            marker_file: Cell::new(false),
            files: Rc::new(TxnFiles::new(storage, dir)),
            busy: Cell::new(0),
            applied_end: Cell::new(0),
            diverged: Cell::new(false),
            snapshot_scheduled: Cell::new(-1),
            last_replay: Cell::new(None),
        }
    }

    /// Marks an append or marker as under way until the guard drops.
    pub fn busy(&self) -> Busy<'_> {
        self.busy.set(self.busy.get() + 1);
        Busy(&self.busy)
    }

    /// An append to the log failed: what the log holds may differ from the state until
    /// the next replay, so no snapshot is taken meanwhile.
    pub fn log_failed(&self) {
        self.diverged.set(true);
    }

    /// The offset of the newest transaction snapshot on disk, -1 without one.
    pub fn newest_snapshot(&self) -> i64 {
        self.files.newest_snapshot()
    }

    /// What the last rebuild read, if there was one.
    pub fn last_replay(&self) -> Option<ReplayStats> {
        self.last_replay.get()
    }

    /// The aborted transactions kept in memory (those whose marker is at or above the log
    /// start), in marker order.
    pub fn aborted_index(&self) -> Vec<AbortedTxn> {
        self.txns.borrow().aborted_index().to_vec()
    }

    /// The last stable offset for `high_watermark`.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        let lso = self.txns.borrow().last_stable_offset(high_watermark);
        self.opening
            .borrow()
            .iter()
            .map(|(_, at)| *at)
            .fold(lso, i64::min)
    }

    pub fn on_high_watermark(&self, high_watermark: i64) {
        self.txns.borrow_mut().on_high_watermark(high_watermark);
    }

    /// The aborted transactions a read_committed fetch from `fetch_offset` up to
    /// `upper_bound_offset` must be told of.
    pub fn aborted_in_range(&self, fetch_offset: i64, upper_bound_offset: i64) -> Vec<AbortedTxn> {
        self.txns
            .borrow()
            .aborted_in_range(fetch_offset, upper_bound_offset)
    }

    /// The open transactions as (first offset, producer id).
    pub fn ongoing(&self) -> Vec<(i64, i64)> {
        self.txns.borrow().ongoing().collect()
    }

    /// What the partition knows of a producer's transactions.
    pub fn producer(&self, producer_id: i64) -> Option<crate::txn::partition::ProducerTxnState> {
        self.txns.borrow().producer(producer_id).cloned()
    }

    /// Checks a client's batches before they are appended; remembers where the
    /// transactions they open begin. Call [`Self::after_client_append`] (or
    /// [`Self::append_failed`]) afterwards, without yielding in between.
    pub fn before_client_append(
        &self,
        records: &Bytes,
        log_end_offset: i64,
        guard: Option<VerificationGuard>,
        verification: bool,
    ) -> Result<Vec<i64>, ResponseError> {
        let producers = producer_batches(records);
        let txns = self.txns.borrow();
        let mut opened = Vec::new();
        for b in &producers {
            txns.check_data_batch(
                b.producer_id,
                b.producer_epoch,
                b.transactional,
                guard,
                verification,
            )
            .map_err(|e| e.code())?;
            if b.transactional
                && !txns.has_ongoing_txn(b.producer_id)
                && !opened.contains(&b.producer_id)
            {
                opened.push(b.producer_id);
            }
        }
        drop(txns);
        let mut opening = self.opening.borrow_mut();
        for pid in &opened {
            opening.push((*pid, log_end_offset));
        }
        Ok(opened)
    }

    /// The producer, epoch and base sequence of the first transactional batch of `records`
    /// whose producer has no transaction open here: that batch needs the coordinator's
    /// confirmation (KIP-890) before it is appended.
    pub fn opening_producer(&self, records: &Bytes) -> Option<(i64, i16, i32)> {
        let txns = self.txns.borrow();
        for (_, batch) in batches(records) {
            let h = BatchHeader::view(batch)?;
            if h.producer_id() >= 0
                && h.is_transactional()
                && !h.is_control()
                && !txns.has_ongoing_txn(h.producer_id())
            {
                return Some((h.producer_id(), h.producer_epoch(), h.base_sequence()));
            }
        }
        None
    }

    pub fn has_ongoing_txn(&self, producer_id: i64) -> bool {
        self.txns.borrow().has_ongoing_txn(producer_id)
    }

    /// Starts a KIP-890 verification for the producer: the guard to append with once the
    /// coordinator confirms.
    pub fn start_verification(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
        now_ms: i64,
    ) -> Option<VerificationGuard> {
        self.txns.borrow_mut().start_verification(
            producer_id,
            producer_epoch,
            base_sequence,
            now_ms,
        )
    }

    /// The client's append went through at `base_offset..=last_offset` (or was a retried
    /// duplicate answered with older offsets).
    pub fn after_client_append(
        &self,
        records: &Bytes,
        opened: &[i64],
        log_end_before: i64,
        base_offset: i64,
        last_offset: i64,
        now_ms: i64,
    ) {
        self.forget_opening(opened);
        // A duplicate is answered with the offsets of its first append, which are below
        // the log end the append started from: nothing new is in the log.
        if base_offset < log_end_before {
            return;
        }
        self.note_applied(last_offset + 1);
        let mut txns = self.txns.borrow_mut();
        for b in producer_batches(records) {
            txns.apply_data_batch(
                b.producer_id,
                b.producer_epoch,
                base_offset,
                last_offset,
                b.transactional,
                now_ms,
            );
        }
    }

    pub fn append_failed(&self, opened: &[i64]) {
        self.forget_opening(opened);
    }

    fn forget_opening(&self, opened: &[i64]) {
        if opened.is_empty() {
            return;
        }
        let mut opening = self.opening.borrow_mut();
        for pid in opened {
            if let Some(i) = opening.iter().position(|(p, _)| p == pid) {
                opening.swap_remove(i);
            }
        }
    }

    /// Records a transactional batch the broker appended itself (offsets of a
    /// TxnOffsetCommit) at `first..=last`.
    pub fn apply_broker_batch(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        first: i64,
        last: i64,
        now_ms: i64,
    ) {
        self.note_applied(last + 1);
        self.txns.borrow_mut().apply_data_batch(
            producer_id,
            producer_epoch,
            first,
            last,
            true,
            now_ms,
        );
    }

    fn note_applied(&self, end_offset: i64) {
        self.applied_end.set(self.applied_end.get().max(end_offset));
    }

    /// Queues an aborted-transaction index entry for the `.txnindex` of the segment that
    /// holds its marker ([`Self::flush_index`] writes it).
    fn queue_index_entry(&self, segment_bases: &[Offset], entry: AbortedTxn) {
        let at = segment_bases.partition_point(|b| b.0 <= entry.last_offset);
        // None: the marker's segment is gone already (retention ran meanwhile).
        if let Some(i) = at.checked_sub(1) {
            self.files.queue(segment_bases[i].0, entry);
        }
    }

    /// Writes the queued index entries (not synced: a snapshot syncs them before it
    /// counts on them). A failure is logged; the next open rewrites what it left.
    pub async fn flush_index(&self) {
        if let Err(e) = self.files.flush().await {
            tracing::error!(
                dir = %self.files_dir().display(),
                "cannot write the transaction index (the next open replays the log instead): {e}"
            );
        }
    }

    fn files_dir(&self) -> &Path {
        self.files.dir()
    }

    /// Once a segment has rolled since the last snapshot, and if the state is exactly
    /// what the log implies right now (nothing under way, nothing lost), snapshots it at
    /// the log end in the background: the next open replays only what comes after.
    pub fn snapshot_if_rolled(&self, log: &PartitionLog<S>) {
        if !self.marker_file.get()
            || self.busy.get() > 0
            || !self.opening.borrow().is_empty()
            || self.diverged.get()
            || self.files.failed()
        {
            return;
        }
        let end = log.log_end_offset().0;
        let newest = self
            .files
            .newest_snapshot()
            .max(self.snapshot_scheduled.get());
        if log.active_segment_base().0 <= newest || self.applied_end.get() > end {
            return;
        }
        self.snapshot_scheduled.set(end);
        let snapshot = self.txns.borrow().snapshot(end);
        let generation = self.files.generation();
        let files = self.files.clone();
        self.files.storage().spawn(Box::pin(async move {
            if let Err(e) = files.write_snapshot(snapshot, generation).await {
                tracing::error!(
                    dir = %files.dir().display(),
                    "cannot write the transaction snapshot (the next open replays more of the log): {e}"
                );
            }
        }));
    }

    /// Snapshots the state at the log end now (a clean close), if it is exact.
    pub async fn snapshot_at_close(&self, log: &PartitionLog<S>) {
        if !self.marker_file.get() || self.diverged.get() || self.busy.get() > 0 {
            return;
        }
        let end = log.log_end_offset().0;
        if self.applied_end.get() > end {
            return;
        }
        let snapshot = self.txns.borrow().snapshot(end);
        if let Err(e) = self
            .files
            .write_snapshot(snapshot, self.files.generation())
            .await
        {
            tracing::error!(dir = %self.files.dir().display(), "cannot write the transaction snapshot: {e}");
        }
    }

    /// A follower's log is about to be cut at `offset` (or, with `None`, emptied): the
    /// snapshots past the cut go first, so that none can outlive it.
    pub async fn before_truncation(&self, offset: Option<i64>) -> Result<(), EngineError> {
        if !self.marker_file.get() {
            return Ok(());
        }
        self.files
            .before_truncation(offset.unwrap_or(-1))
            .await
            .map_err(|e| EngineError::Io {
                context: "remove the transaction snapshots past a truncation".into(),
                source: e,
            })
    }

    /// Retention or DeleteRecords moved the log start: aborted transactions whose marker
    /// is below it are forgotten (they overlap no data), and the `.txnindex` files of the
    /// deleted segments go, with the snapshots below the log start.
    pub async fn after_log_start_moved(&self, log: &PartitionLog<S>) {
        if !self.marker_file.get() {
            return;
        }
        let start = log.log_start_offset().0;
        let pruned = self.txns.borrow_mut().prune_aborted_before(start);
        if pruned > 0 {
            tracing::debug!(dir = %self.files.dir().display(), pruned, "forgot aborted transactions below the log start");
        }
        let Some(first_base) = log.segment_base_offsets().first().copied() else {
            return;
        };
        if let Err(e) = self.files.after_log_start_moved(start, first_base.0).await {
            tracing::warn!(dir = %self.files.dir().display(), "cannot remove old transaction index files: {e}");
        }
    }

    pub fn check_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        marker: &EndTxnMarker,
    ) -> Result<(), ResponseError> {
        self.txns
            .borrow()
            .check_marker(producer_id, producer_epoch, marker)
            .map_err(|e| e.code())
    }

    /// Applies a marker appended at `offset`; an abort's index entry is queued for the
    /// marker's segment (written by [`Self::flush_index`]).
    pub fn apply_marker(
        &self,
        log: &PartitionLog<S>,
        producer_id: i64,
        producer_epoch: i16,
        marker: &EndTxnMarker,
        offset: i64,
        now_ms: i64,
    ) {
        self.note_applied(offset + 1);
        let (_, entry) = self.txns.borrow_mut().apply_marker(
            producer_id,
            producer_epoch,
            marker,
            offset,
            now_ms,
        );
        if let Some(entry) = entry {
            self.queue_index_entry(&log.segment_base_offsets(), entry);
        }
    }

    /// Whether the marker file is known to exist.
    pub fn has_marker_file(&self) -> bool {
        self.marker_file.get()
    }

    /// Creates (and syncs) the marker file in `dir` if it does not exist yet.
    pub async fn ensure_marker_file(&self, dir: &Path) -> Result<(), ResponseError> {
        if self.marker_file.get() {
            return Ok(());
        }
        let path = dir.join(TXN_MARKER_FILE);
        let storage = self.files.storage();
        let created = async {
            if storage
                .read_file(&path, MAX_MARKER_FILE_BYTES)
                .await?
                .is_none()
            {
                storage.write_file(&path, Vec::new()).await?;
                storage.sync_dir(dir).await?;
            }
            Ok::<(), std::io::Error>(())
        }
        .await;
        match created {
            Ok(()) => {
                self.marker_file.set(true);
                Ok(())
            }
            Err(e) => {
                tracing::error!("cannot create the transaction marker file: {e}");
                Err(ResponseError::KafkaStorageError)
            }
        }
    }

    /// Rebuilds the state from the partition's files and log if it has ever joined a
    /// transaction. `high_watermark`: what is known committed (completed transactions
    /// whose marker is at or above it stay unstable until the high watermark passes them).
    pub async fn rebuild(
        &self,
        dir: &Path,
        log: &PartitionLog<S>,
        high_watermark: i64,
    ) -> Result<(), EngineError> {
        let marker = self
            .files
            .storage()
            .read_file(&dir.join(TXN_MARKER_FILE), MAX_MARKER_FILE_BYTES)
            .await
            .map_err(|source| EngineError::Io {
                context: "look for the partition's transaction marker file".into(),
                source,
            })?;
        if marker.is_none() {
            return Ok(());
        }
        self.marker_file.set(true);
        self.replay(log, high_watermark).await?;
        let open = self.txns.borrow().ongoing().count();
        let aborted = self.txns.borrow().aborted_index().len();
        // Kafka logs its producer-state loading the same way: what a restart cost.
        if let Some(r) = self.last_replay.get() {
            tracing::info!(
                dir = %dir.display(),
                open,
                aborted,
                from_offset = r.from_offset,
                to_offset = r.to_offset,
                batches_read = r.batches,
                "rebuilt partition transactions"
            );
        }
        Ok(())
    }

    /// Replaces the state with what the log implies: the open transactions and producers
    /// from the newest transaction snapshot inside the log, the aborted transactions from
    /// the `.txnindex` files below it, then the batches and markers after it replayed
    /// (their index entries written again). Without a usable snapshot, everything comes
    /// from the log start. Used at open and after a follower's log was truncated (its
    /// divergent tail cut; [`Self::before_truncation`] removed the snapshots past the cut),
    /// so the state never remembers what the log lost. Reads until the log end as it is at
    /// the last read, and installs the result without yielding after that read; when it
    /// read anything, the result is snapshotted, so the next open starts there.
    pub async fn replay(
        &self,
        log: &PartitionLog<S>,
        high_watermark: i64,
    ) -> Result<(), EngineError> {
        let io = |context: &str| {
            let context = context.to_string();
            move |source| EngineError::Io { context, source }
        };
        // A snapshot taken before a failed operation or a cut may be past what the log
        // holds now.
        self.files.forget_taken_snapshots();
        self.snapshot_scheduled.set(-1);
        let start = log.log_start_offset().0;
        let loaded = self
            .files
            .load(start, log.log_end_offset().0)
            .await
            .map_err(io("load the partition's transaction files"))?;
        let indexed_aborts = loaded.aborted.len();
        let (mut txns, from) = match loaded.snapshot {
            Some(snapshot) => {
                let from = snapshot.offset;
                (PartitionTxns::from_snapshot(snapshot, loaded.aborted), from)
            }
            None => (PartitionTxns::default(), start),
        };
        let mut next = from;
        let mut read_batches = 0u64;
        let mut entries = Vec::new();
        while next < log.log_end_offset().0 {
            let bytes = log.read(Offset(next), REBUILD_READ_BYTES).await?;
            let before = next;
            for (_, batch) in batches(&bytes) {
                let Some(h) = BatchHeader::view(batch) else {
                    break;
                };
                let last = h.base_offset() + i64::from(h.last_offset_delta());
                if last < next {
                    continue;
                }
                next = last + 1;
                read_batches += 1;
                entries.extend(apply_stored_batch(&mut txns, batch));
            }
            if next == before {
                break;
            }
        }
        txns.on_high_watermark(high_watermark);
        let snapshot = (next > from).then(|| txns.snapshot(next));
        *self.txns.borrow_mut() = txns;
        self.applied_end.set(next);
        self.diverged.set(false);
        let bases = log.segment_base_offsets();
        for entry in entries {
            self.queue_index_entry(&bases, entry);
        }
        self.last_replay.set(Some(ReplayStats {
            from_offset: from,
            to_offset: next,
            batches: read_batches,
            indexed_aborts,
        }));
        self.flush_index().await;
        if let Some(snapshot) = snapshot {
            if let Err(e) = self
                .files
                .write_snapshot(snapshot, self.files.generation())
                .await
            {
                tracing::error!(
                    dir = %self.files.dir().display(),
                    "cannot write the transaction snapshot (the next open replays more of the log): {e}"
                );
            }
        }
        Ok(())
    }

    /// A follower's append of the leader's batches as they are, with the state following
    /// them. Before the first transactional batch or marker is written, the file that
    /// makes the partition rebuild its transactions at open is created (synced).
    pub async fn append_as_follower(
        &self,
        log: &PartitionLog<S>,
        records: &Bytes,
    ) -> Result<(), EngineError> {
        if !self.has_marker_file() && has_transactional_or_control(records) {
            self.ensure_marker_file(log.dir())
                .await
                .map_err(|e| EngineError::Io {
                    context: "create the partition's transaction marker file".into(),
                    source: std::io::Error::other(e.to_string()),
                })?;
        }
        let busy = self.busy();
        log.append_as_follower(records.clone(), Durability::Written)
            .await
            .inspect_err(|_| self.log_failed())?;
        self.apply_replicated(log, records);
        drop(busy);
        self.flush_index().await;
        self.snapshot_if_rolled(log);
        Ok(())
    }

    /// A follower appended the leader's batches (`records`, as the leader stored them, at
    /// the offsets they carry): the state follows them in log order, as it followed the
    /// leader's appends there. A transactional batch opens its producer's transaction (if
    /// none is open), a marker ends it (an abort enters the aborted index and its
    /// segment's `.txnindex`, written by [`Self::flush_index`]), and every producer batch
    /// or marker moves the producer's epoch.
    pub fn apply_replicated(&self, log: &PartitionLog<S>, records: &Bytes) {
        let mut entries = Vec::new();
        {
            let mut txns = self.txns.borrow_mut();
            for (_, batch) in batches(records) {
                if let Some(h) = BatchHeader::view(batch) {
                    self.note_applied(h.base_offset() + i64::from(h.last_offset_delta()) + 1);
                }
                entries.extend(apply_stored_batch(&mut txns, batch));
            }
        }
        if !entries.is_empty() {
            let bases = log.segment_base_offsets();
            for entry in entries {
                self.queue_index_entry(&bases, entry);
            }
        }
    }
}

/// Whether `records` hold a transactional or control batch: a follower creates the
/// partition's [`TXN_MARKER_FILE`] before it appends the first one, so that a restart
/// rebuilds the state from the log.
pub fn has_transactional_or_control(records: &Bytes) -> bool {
    batches(records).any(|(_, batch)| {
        BatchHeader::view(batch).is_some_and(|h| h.is_transactional() || h.is_control())
    })
}

/// Applies one stored batch (a log's, at its own offsets) to `txns`, with no checks: the
/// leader checked it before it was written. Returns an abort's index entry.
fn apply_stored_batch(txns: &mut PartitionTxns, batch: &[u8]) -> Option<AbortedTxn> {
    let h = BatchHeader::view(batch)?;
    if h.producer_id() < 0 {
        return None;
    }
    let base = h.base_offset();
    let last = base + i64::from(h.last_offset_delta());
    let ts = h.max_timestamp();
    if h.is_control() {
        match decode_control_batch(batch, MAX_CONTROL_BATCH_BYTES) {
            Ok(c) => {
                if let ControlContent::EndTxn(marker) = c.content {
                    return txns
                        .apply_marker(h.producer_id(), h.producer_epoch(), &marker, base, ts)
                        .1;
                }
                None
            }
            Err(e) => {
                tracing::warn!(offset = base, "unreadable control batch: {e}");
                None
            }
        }
    } else {
        txns.apply_data_batch(
            h.producer_id(),
            h.producer_epoch(),
            base,
            last,
            h.is_transactional(),
            ts,
        );
        None
    }
}

/// A producer as DescribeProducers reports it: (producer id, epoch, last sequence, last
/// timestamp, coordinator epoch, first offset of its open transaction).
pub type Producer = (i64, i16, i32, i64, i32, i64);

/// DescribeProducers of one partition (KIP-664): each producer's id, epoch, last
/// sequence, last timestamp, coordinator epoch and the first offset of its open
/// transaction (-1 where unknown), sorted by producer id.
pub fn producers(handle: &super::PartitionHandle) -> Vec<Producer> {
    let states = handle.log.producer_states();
    let mut out: Vec<Producer> = states
        .iter()
        .map(|(pid, e)| {
            let txn = handle.txns.producer(*pid);
            (
                *pid,
                txn.as_ref()
                    .map_or(e.epoch, |t| t.producer_epoch.max(e.epoch)),
                e.batches.back().map_or(-1, |b| b.last_sequence),
                e.batches
                    .back()
                    .map_or(e.last_timestamp_ms, |b| b.timestamp_ms),
                txn.as_ref().map_or(-1, |t| t.coordinator_epoch),
                txn.and_then(|t| t.current_txn_first_offset).unwrap_or(-1),
            )
        })
        .collect();
    // Producers known only from markers or broker-written batches (no sequences).
    for (first, pid) in handle.txns.ongoing() {
        if !out.iter().any(|p| p.0 == pid) {
            let txn = handle.txns.producer(pid);
            out.push((
                pid,
                txn.as_ref().map_or(-1, |t| t.producer_epoch),
                -1,
                txn.as_ref().map_or(-1, |t| t.last_timestamp_ms),
                txn.as_ref().map_or(-1, |t| t.coordinator_epoch),
                first,
            ));
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_engine::{BatchCache, Durability, LogConfig};
    use wharf_protocol::batch::{set_base_offset, set_partition_leader_epoch, BatchBuilder};
    use wharf_protocol::txn::control::TransactionResult;

    /// A batch as a leader stored it at `base` in leader epoch `epoch`.
    fn stored(mut bytes: Vec<u8>, base: i64, epoch: i32) -> Bytes {
        set_base_offset(&mut bytes, base);
        set_partition_leader_epoch(&mut bytes, epoch);
        Bytes::from(bytes)
    }

    fn txn_batch(pid: i64, epoch: i16, base: i64) -> Bytes {
        let mut b = BatchBuilder::new()
            .producer(pid, epoch, 0)
            .transactional(true);
        b.push(None, Some(b"v"), &[], 1_000);
        stored(b.build(), base, 1)
    }

    fn marker(pid: i64, epoch: i16, commit: bool, base: i64, leader_epoch: i32) -> Bytes {
        let m = EndTxnMarker {
            result: TransactionResult::from_committed(commit),
            coordinator_epoch: 0,
        };
        stored(m.to_batch(pid, epoch, 2_000), base, leader_epoch)
    }

    #[test]
    fn a_follower_follows_batches_and_markers_and_a_truncation_gives_back_what_the_cut_tail_ended()
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t-0");
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor")
            .run(async move {
                let log = PartitionLog::open(path, LogConfig::default(), BatchCache::new(1 << 20))
                    .await
                    .expect("opens");
                let state = PartitionTxnState::new(log.dir().to_path_buf());
                let follow = |records: Bytes| {
                    let log = &log;
                    let state = &state;
                    async move {
                        log.append_as_follower(records.clone(), Durability::Written)
                            .await
                            .expect("follows");
                        state.apply_replicated(log, &records);
                    }
                };
                // Producers 9 and 10 open transactions at 0 and 1; 9 commits at 2; the old
                // leader then aborted 10's under a bumped epoch at 3 (its last, divergent,
                // batch).
                let head = [
                    txn_batch(9, 0, 0),
                    txn_batch(10, 0, 1),
                    marker(9, 0, true, 2, 1),
                ];
                assert!(head.iter().all(has_transactional_or_control));
                for b in head {
                    follow(b).await;
                }
                assert_eq!(state.ongoing(), vec![(1, 10)]);
                assert_eq!(state.last_stable_offset(3), 1);
                follow(marker(10, 1, false, 3, 1)).await;
                assert_eq!(state.ongoing(), vec![]);
                assert_eq!(state.last_stable_offset(4), 4);
                // Unreplicated: the abort is not stable before the high watermark passes it.
                assert_eq!(state.last_stable_offset(3), 1);
                let aborted = state.aborted_in_range(0, 4);
                assert_eq!(aborted.len(), 1);
                assert_eq!((aborted[0].producer_id, aborted[0].first_offset), (10, 1));
                assert_eq!(state.producer(10).map(|p| p.producer_epoch), Some(1));

                // The new leader's log ends at 3: the follower cuts the abort off, and the
                // state is what the remaining log implies, producer 10's epoch included.
                log.truncate_to(Offset(3)).await.expect("truncates");
                state.replay(&log, 3).await.expect("replays");
                assert_eq!(state.ongoing(), vec![(1, 10)]);
                assert_eq!(state.last_stable_offset(3), 1);
                assert!(state.aborted_in_range(0, 3).is_empty());
                assert_eq!(state.producer(10).map(|p| p.producer_epoch), Some(0));
                assert_eq!(
                    state.producer(9).and_then(|p| p.current_txn_first_offset),
                    None
                );

                // The new leader committed it instead.
                follow(marker(10, 0, true, 3, 2)).await;
                assert_eq!(state.ongoing(), vec![]);
                assert_eq!(state.last_stable_offset(4), 4);
                assert!(state.aborted_in_range(0, 4).is_empty());
                log.close().await.expect("closes");
            });
    }

    fn txn_record(pid: i64, epoch: i16, seq: i32, base: i64) -> Bytes {
        let mut b = BatchBuilder::new()
            .producer(pid, epoch, seq)
            .transactional(true);
        b.push(None, Some(b"v"), &[], 1_000);
        stored(b.build(), base, 1)
    }

    /// Segments of a few batches each, so that the log rolls often.
    fn small_segments() -> LogConfig {
        LogConfig {
            segment_bytes: 400,
            ..LogConfig::default()
        }
    }

    fn run<F, Fut>(test: F)
    where
        F: FnOnce(PathBuf) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t-0");
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor")
            .run(test(path));
    }

    /// Opens the partition's log and rebuilds its transactions, as the broker does.
    async fn open(path: &Path) -> (PartitionLog, PartitionTxnState) {
        let log = PartitionLog::open(
            path.to_path_buf(),
            small_segments(),
            BatchCache::new(1 << 20),
        )
        .await
        .expect("opens");
        let state = PartitionTxnState::new(path.to_path_buf());
        state
            .rebuild(path, &log, log.log_end_offset().0)
            .await
            .expect("rebuilds");
        (log, state)
    }

    /// A follower's partition: appends the leader's batches one offset each.
    struct Writer {
        next: i64,
        seqs: std::collections::HashMap<i64, i32>,
    }

    impl Writer {
        async fn data(&mut self, log: &PartitionLog, state: &PartitionTxnState, pid: i64) {
            let seq = self.seqs.entry(pid).or_insert(0);
            let batch = txn_record(pid, 0, *seq, self.next);
            *seq += 1;
            self.next += 1;
            state
                .append_as_follower(log, &batch)
                .await
                .expect("appends");
        }

        async fn end(
            &mut self,
            log: &PartitionLog,
            state: &PartitionTxnState,
            pid: i64,
            commit: bool,
        ) {
            let batch = marker(pid, 0, commit, self.next, 1);
            self.next += 1;
            state
                .append_as_follower(log, &batch)
                .await
                .expect("appends");
        }
    }

    /// Lets the snapshot written in the background after a roll land.
    async fn settle(state: &PartitionTxnState, log: &PartitionLog) {
        for _ in 0..200 {
            if state.newest_snapshot() >= log.active_segment_base().0 {
                break;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
        state.flush_index().await;
    }

    /// Kafka's 34-byte entry, built field by field: version 0, producer id, first offset,
    /// last offset, last stable offset, all big-endian.
    fn kafka_entry(pid: i64, first: i64, last: i64, lso: i64) -> Vec<u8> {
        let mut out = vec![0u8, 0u8];
        for v in [pid, first, last, lso] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(out.len(), 34);
        out
    }

    /// The `.txnindex` files of `dir` by base offset, with their bytes.
    fn index_files(dir: &Path) -> Vec<(i64, Vec<u8>)> {
        let mut out: Vec<(i64, Vec<u8>)> = std::fs::read_dir(dir)
            .expect("lists")
            .filter_map(|e| {
                let e = e.expect("entry");
                let name = e.file_name().into_string().expect("utf-8");
                let base = name.strip_suffix(".txnindex")?.parse().ok()?;
                Some((base, std::fs::read(e.path()).expect("reads")))
            })
            .collect();
        out.sort();
        out
    }

    /// What a restart must give back.
    fn observed(state: &PartitionTxnState, end: i64) -> (Vec<(i64, i64)>, Vec<AbortedTxn>, i64) {
        (
            state.ongoing(),
            state.aborted_index(),
            state.last_stable_offset(end),
        )
    }

    /// Producer 1 stays open from offset 0; producers 2.. come and go, every third
    /// aborted; `n` transactions in all.
    async fn write_history(log: &PartitionLog, state: &PartitionTxnState, w: &mut Writer, n: i64) {
        for pid in 2..2 + n {
            w.data(log, state, pid).await;
            w.end(log, state, pid, pid % 3 != 0).await;
        }
    }

    #[test]
    fn aborts_are_written_to_their_segments_txnindex_in_kafkas_format() {
        run(|path| async move {
            let (log, state) = open(&path).await;
            let mut w = Writer {
                next: 0,
                seqs: Default::default(),
            };
            w.data(&log, &state, 1).await;
            write_history(&log, &state, &mut w, 12).await;
            settle(&state, &log).await;
            assert!(log.segment_count() > 2, "the log rolled");
            // Producer p (from 2) writes at 2p-3 and ends at 2p-2; 3, 6, 9, 12 abort,
            // each while producer 1 holds the LSO at 0.
            let expected: Vec<(i64, Vec<u8>)> = [3i64, 6, 9, 12]
                .iter()
                .map(|&pid| (2 * pid - 2, kafka_entry(pid, 2 * pid - 3, 2 * pid - 2, 0)))
                .collect();
            let bases = log.segment_base_offsets();
            let mut want: Vec<(i64, Vec<u8>)> = Vec::new();
            for (marker_offset, bytes) in expected {
                let base = bases
                    .iter()
                    .rev()
                    .find(|b| b.0 <= marker_offset)
                    .expect("segment")
                    .0;
                match want.last_mut() {
                    Some((b, all)) if *b == base => all.extend(bytes),
                    _ => want.push((base, bytes)),
                }
            }
            assert_eq!(index_files(&path), want);
            assert_eq!(state.aborted_index().len(), 4);
            log.close().await.expect("closes");
        });
    }

    #[test]
    fn a_restart_replays_only_the_log_after_the_snapshot_and_gives_the_same_state() {
        run(|path| async move {
            let (log, state) = open(&path).await;
            let mut w = Writer {
                next: 0,
                seqs: Default::default(),
            };
            w.data(&log, &state, 1).await;
            write_history(&log, &state, &mut w, 12).await;
            settle(&state, &log).await;
            // After the last snapshot: an abort (its entry must come back from the replay
            // even if the index lost it) and a transaction left open.
            let snapshot = state.newest_snapshot();
            assert!(snapshot > 0, "a roll wrote a snapshot");
            w.data(&log, &state, 50).await;
            w.end(&log, &state, 50, false).await;
            w.data(&log, &state, 51).await;
            settle(&state, &log).await;
            let snapshot = state.newest_snapshot().max(snapshot);
            let end = log.log_end_offset().0;
            assert_eq!(end, w.next);
            let before = observed(&state, end);
            assert_eq!(before.0, vec![(0, 1), (end - 1, 51)]);
            assert_eq!(before.1.len(), 5);
            // As after kill -9: nothing written at close.
            drop(state);
            log.close().await.expect("closes");

            let (log, state) = open(&path).await;
            let replay = state.last_replay().expect("replayed");
            assert_eq!(replay.from_offset, snapshot);
            assert_eq!(
                replay.batches as i64,
                end - snapshot,
                "only the batches after it"
            );
            assert!(replay.batches < end as u64 / 2);
            assert_eq!(observed(&state, end), before);
            assert_eq!(state.producer(50).map(|p| p.producer_epoch), Some(0));
            // The index entries after the snapshot were written again, once.
            assert_eq!(
                index_files(&path)
                    .iter()
                    .map(|(_, b)| b.len())
                    .sum::<usize>(),
                5 * 34
            );
            // The replay snapshotted its result: the next open reads nothing.
            assert_eq!(state.newest_snapshot(), end);
            drop(state);
            log.close().await.expect("closes");

            // A partition written before these files existed: the marker file only. It
            // replays from the log start once, and writes them.
            for e in std::fs::read_dir(&path).expect("lists") {
                let e = e.expect("entry");
                let name = e.file_name().into_string().expect("utf-8");
                if name.ends_with(".txnindex") || name.ends_with(".txnsnapshot") {
                    std::fs::remove_file(e.path()).expect("removes");
                }
            }
            let (log, state) = open(&path).await;
            let replay = state.last_replay().expect("replayed");
            assert_eq!((replay.from_offset, replay.batches as i64), (0, end));
            assert_eq!(observed(&state, end), before);
            assert_eq!(state.newest_snapshot(), end);
            assert_eq!(
                index_files(&path)
                    .iter()
                    .map(|(_, b)| b.len())
                    .sum::<usize>(),
                5 * 34
            );
            log.close().await.expect("closes");
        });
    }

    #[test]
    fn a_torn_or_stale_txnindex_is_cut_at_open() {
        run(|path| async move {
            let (log, state) = open(&path).await;
            let mut w = Writer {
                next: 0,
                seqs: Default::default(),
            };
            w.data(&log, &state, 1).await;
            write_history(&log, &state, &mut w, 12).await;
            settle(&state, &log).await;
            let end = log.log_end_offset().0;
            let before = observed(&state, end);
            let snapshot = state.newest_snapshot();
            drop(state);
            log.close().await.expect("closes");

            // The last index file gets half an entry (a torn write), and an entry for a
            // marker past its snapshot that the log does not prove.
            let files = index_files(&path);
            let (base, bytes) = files.last().expect("an index file");
            let file = path.join(format!("{base:020}.txnindex"));
            let mut damaged = bytes.clone();
            damaged.extend(kafka_entry(77, snapshot, end + 5, end + 6));
            damaged.extend_from_slice(&[0u8; 17]);
            std::fs::write(&file, &damaged).expect("writes");

            let (log, state) = open(&path).await;
            assert_eq!(observed(&state, end), before);
            assert_eq!(
                std::fs::read(&file).expect("reads"),
                *bytes,
                "cut back to what is proven"
            );
            log.close().await.expect("closes");
        });
    }

    #[test]
    fn a_follower_truncation_replays_from_the_snapshot_below_it_and_drops_index_entries() {
        run(|path| async move {
            let (log, state) = open(&path).await;
            let mut w = Writer {
                next: 0,
                seqs: Default::default(),
            };
            w.data(&log, &state, 1).await;
            write_history(&log, &state, &mut w, 16).await;
            settle(&state, &log).await;
            let newest = state.newest_snapshot();
            // Cut below the newest snapshot, right at producer 12's abort (offset 22).
            let cut = 22;
            assert!(
                cut < newest,
                "the cut is below the newest snapshot {newest}"
            );
            let kept_snapshots: Vec<i64> = std::fs::read_dir(&path)
                .expect("lists")
                .filter_map(|e| {
                    let name = e.expect("entry").file_name().into_string().ok()?;
                    name.strip_suffix(".txnsnapshot")?.parse().ok()
                })
                .filter(|&o| o <= cut)
                .collect();
            state.before_truncation(Some(cut)).await.expect("prepares");
            log.truncate_to(Offset(cut)).await.expect("truncates");
            state.replay(&log, cut).await.expect("replays");
            let replay = state.last_replay().expect("replayed");
            let nearest = kept_snapshots
                .iter()
                .copied()
                .max()
                .expect("a snapshot below the cut");
            assert_eq!(
                replay.from_offset, nearest,
                "from the nearest snapshot below the cut"
            );
            assert_eq!(replay.batches as i64, cut - nearest);
            // Producer 12's transaction is open again; its abort is gone from the index,
            // in memory and on disk.
            assert_eq!(state.ongoing(), vec![(0, 1), (21, 12)]);
            assert_eq!(
                state
                    .aborted_index()
                    .iter()
                    .map(|e| e.producer_id)
                    .collect::<Vec<_>>(),
                vec![3, 6, 9]
            );
            let on_disk: usize = index_files(&path).iter().map(|(_, b)| b.len()).sum();
            assert_eq!(on_disk, 3 * 34);
            // The new leader committed it instead; a restart agrees.
            w.next = cut;
            w.end(&log, &state, 12, true).await;
            let end = log.log_end_offset().0;
            let before = observed(&state, end);
            drop(state);
            log.close().await.expect("closes");
            let (log, state) = open(&path).await;
            assert_eq!(observed(&state, end), before);
            log.close().await.expect("closes");
        });
    }

    #[test]
    fn deleting_segments_prunes_the_aborted_list_and_their_txnindex_files() {
        run(|path| async move {
            let (log, state) = open(&path).await;
            let mut w = Writer {
                next: 0,
                seqs: Default::default(),
            };
            // No transaction stays open here, so records can be deleted past the aborts.
            write_history(&log, &state, &mut w, 12).await;
            settle(&state, &log).await;
            // Producer p ends at 2p-3 here; 3, 6, 9, 12 abort at 3, 9, 15, 21.
            assert_eq!(state.aborted_index().len(), 4);
            let start = 16;
            log.delete_records_before(Offset(start))
                .await
                .expect("deletes");
            state.after_log_start_moved(&log).await;
            assert_eq!(
                state
                    .aborted_index()
                    .iter()
                    .map(|e| e.last_offset)
                    .collect::<Vec<_>>(),
                vec![21],
                "only what overlaps the retained log"
            );
            let first_base = log.segment_base_offsets()[0].0;
            assert!(first_base > 9, "segments went");
            assert!(index_files(&path)
                .iter()
                .all(|(base, _)| *base >= first_base));
            let snapshots: Vec<i64> = std::fs::read_dir(&path)
                .expect("lists")
                .filter_map(|e| {
                    let name = e.expect("entry").file_name().into_string().ok()?;
                    name.strip_suffix(".txnsnapshot")?.parse().ok()
                })
                .collect();
            assert!(!snapshots.is_empty() && snapshots.iter().all(|&o| o >= start));
            let end = log.log_end_offset().0;
            let before = observed(&state, end);
            drop(state);
            log.close().await.expect("closes");
            let (log, state) = open(&path).await;
            assert_eq!(observed(&state, end), before);
            log.close().await.expect("closes");
        });
    }

    mod on_a_simulated_disk {
        //! The files under crashes: a seeded run appends a follower's transactional
        //! batches and markers to a log on the engine's simulated disk (whose crashes lose,
        //! tear and reorder what was not synced), cuts the log as a follower does, crashes
        //! and closes, and after every open or cut checks the state and the `.txnindex`
        //! files against a replay of the whole surviving log, the state the partition had
        //! before these files existed.

        use super::*;
        use std::collections::HashMap;
        use wharf_engine::sim::{FaultConfig, Rng, Runtime, SimDisk, SimStorage};
        use wharf_protocol::txn::index::ABORTED_TXN_BYTES;

        /// Seeds run by `cargo test`; `WHARF_TXN_FILES_SIM_SEEDS` runs more.
        const SEEDS: u64 = 40;
        const STEPS: usize = 300;
        const PRODUCERS: i64 = 4;

        struct Sim {
            seed: u64,
            rt: Runtime,
            disk: SimDisk,
            dir: PathBuf,
            rng: Rng,
            log: Option<Rc<PartitionLog<SimStorage>>>,
            state: Option<Rc<PartitionTxnState<SimStorage>>>,
            seqs: HashMap<i64, i32>,
            trace: Vec<String>,
        }

        impl Sim {
            fn run<T: 'static>(&self, fut: impl std::future::Future<Output = T> + 'static) -> T {
                let result = self.rt.spawn_with_result(fut);
                self.rt.run_until_stalled();
                match result.take() {
                    Some(value) => value,
                    None => self.fail("a task never finished"),
                }
            }

            fn fail(&self, what: &str) -> ! {
                panic!(
                    "seed {}: {what}\nsteps:\n  {}\nreplay: WHARF_TXN_FILES_SIM_SEED={} cargo test -p wharf-server --lib on_a_simulated_disk",
                    self.seed,
                    self.trace.join("\n  "),
                    self.seed
                )
            }

            fn log(&self) -> Rc<PartitionLog<SimStorage>> {
                self.log.clone().expect("open")
            }

            fn state(&self) -> Rc<PartitionTxnState<SimStorage>> {
                self.state.clone().expect("open")
            }

            fn open(&mut self) {
                let storage = SimStorage::new(self.disk.clone());
                let dir = self.dir.clone();
                let (log, state) = self.run(async move {
                    let log = PartitionLog::open_with(
                        storage.clone(),
                        dir.clone(),
                        small_segments(),
                        BatchCache::new(1 << 20),
                    )
                    .await
                    .expect("opens");
                    let state = PartitionTxnState::with_storage(storage, dir.clone());
                    let end = log.log_end_offset().0;
                    state.rebuild(&dir, &log, end).await.expect("rebuilds");
                    (Rc::new(log), Rc::new(state))
                });
                self.trace.push(format!(
                    "opened [{}, {}), replay {:?}",
                    log.log_start_offset().0,
                    log.log_end_offset().0,
                    state.last_replay()
                ));
                self.log = Some(log);
                self.state = Some(state);
                self.check();
            }

            /// The state and the index files equal what a replay of the whole log gives.
            fn check(&self) {
                let (log, state) = (self.log(), self.state());
                let full = {
                    let log = log.clone();
                    self.run(async move {
                        let mut txns = PartitionTxns::default();
                        let mut next = log.log_start_offset().0;
                        while next < log.log_end_offset().0 {
                            let bytes = log.read(Offset(next), 1 << 20).await.expect("reads");
                            for (_, batch) in batches(&bytes) {
                                let h = BatchHeader::view(batch).expect("a batch");
                                let last = h.base_offset() + i64::from(h.last_offset_delta());
                                if last >= next {
                                    next = last + 1;
                                    apply_stored_batch(&mut txns, batch);
                                }
                            }
                        }
                        txns
                    })
                };
                let end = log.log_end_offset().0;
                let full_ongoing: Vec<(i64, i64)> = full.ongoing().collect();
                if state.ongoing() != full_ongoing {
                    self.fail(&format!(
                        "open transactions {:?}, the log has {full_ongoing:?}",
                        state.ongoing()
                    ));
                }
                if state.aborted_index() != full.aborted_index() {
                    self.fail(&format!(
                        "aborted {:?}, the log has {:?}",
                        state.aborted_index(),
                        full.aborted_index()
                    ));
                }
                if state.last_stable_offset(end) != full.last_stable_offset(end) {
                    self.fail("the last stable offset differs");
                }
                for pid in 1..=PRODUCERS {
                    if state.producer(pid).as_ref() != full.producer(pid) {
                        self.fail(&format!("producer {pid} differs"));
                    }
                }
                // Every index file, in base order, is exactly the aborted list.
                {
                    let state = state.clone();
                    self.run(async move { state.flush_index().await });
                }
                let mut files: Vec<(i64, Vec<u8>)> = self
                    .disk
                    .files_in(&self.dir)
                    .into_iter()
                    .filter_map(|(path, _)| {
                        let name = path.file_name()?.to_str()?.to_string();
                        let base: i64 = name.strip_suffix(".txnindex")?.parse().ok()?;
                        Some((base, self.disk.contents(&path)?))
                    })
                    .collect();
                files.sort();
                let bases = log.segment_base_offsets();
                let mut want: Vec<(i64, Vec<u8>)> = Vec::new();
                for e in full.aborted_index() {
                    let base = bases
                        .iter()
                        .rev()
                        .find(|b| b.0 <= e.last_offset)
                        .map_or(-1, |b| b.0);
                    match want.last_mut() {
                        Some((b, bytes)) if *b == base => bytes.extend(e.encode()),
                        _ => want.push((base, e.encode().to_vec())),
                    }
                }
                if files != want {
                    self.fail(&format!(
                        "index files {:?} (bytes), want {:?}",
                        files
                            .iter()
                            .map(|(b, f)| (*b, f.len() / ABORTED_TXN_BYTES))
                            .collect::<Vec<_>>(),
                        want.iter()
                            .map(|(b, f)| (*b, f.len() / ABORTED_TXN_BYTES))
                            .collect::<Vec<_>>()
                    ));
                }
            }

            fn append(&mut self, batch: Bytes, what: String) {
                let (log, state) = (self.log(), self.state());
                self.trace.push(what);
                self.run(async move {
                    state
                        .append_as_follower(&log, &batch)
                        .await
                        .expect("appends")
                });
            }

            fn step(&mut self) {
                let (log, state) = (self.log(), self.state());
                let next = log.log_end_offset().0;
                let pid = 1 + self.rng.below(PRODUCERS as u64) as i64;
                match self.rng.below(20) {
                    0..=7 => {
                        let seq = self.seqs.entry(pid).or_insert(0);
                        let batch = txn_record(pid, 0, *seq, next);
                        *seq += 1;
                        self.append(batch, format!("data {pid} at {next}"));
                    }
                    8..=12 if state.has_ongoing_txn(pid) => {
                        let commit = self.rng.coin();
                        self.append(
                            marker(pid, 0, commit, next, 1),
                            format!(
                                "{} {pid} at {next}",
                                if commit { "commit" } else { "abort" }
                            ),
                        );
                    }
                    13..=14 => {
                        self.trace.push("sync".into());
                        self.run(async move { log.sync().await.expect("syncs") });
                    }
                    15 if next > 0 => {
                        let cut = next - 1 - self.rng.below(next.min(10) as u64) as i64;
                        self.trace.push(format!("follower cut at {cut}"));
                        self.run(async move {
                            state.before_truncation(Some(cut)).await.expect("prepares");
                            log.truncate_to(Offset(cut)).await.expect("truncates");
                            state.replay(&log, cut).await.expect("replays");
                        });
                        self.trace
                            .push(format!("replay {:?}", self.state().last_replay()));
                        self.check();
                    }
                    16 => {
                        self.trace.push("crash".into());
                        self.log = None;
                        self.state = None;
                        self.rt.crash();
                        self.disk.crash();
                        self.open();
                    }
                    17 => {
                        self.trace.push("clean close".into());
                        self.run(async move {
                            state.snapshot_at_close(&log).await;
                            log.close().await.expect("closes");
                        });
                        self.log = None;
                        self.state = None;
                        self.open();
                    }
                    _ => {
                        // Time for background snapshots to land.
                        self.rt.run_until_stalled();
                    }
                }
            }
        }

        fn run_seed(seed: u64) {
            let rt = Runtime::new(seed);
            let disk = SimDisk::new(&rt, seed ^ 0x7A11_0000, 1 << 30, FaultConfig::default());
            let mut sim = Sim {
                seed,
                rt,
                disk,
                dir: PathBuf::from("/data/t-0"),
                rng: Rng::new(seed),
                log: None,
                state: None,
                seqs: HashMap::new(),
                trace: Vec::new(),
            };
            let storage = SimStorage::new(sim.disk.clone());
            let dir = sim.dir.clone();
            sim.run(async move {
                storage.create_dir_all(&dir).await.expect("mkdir");
                storage.sync_dir(&dir).await.expect("syncs");
                storage.sync_dir(Path::new("/data")).await.expect("syncs");
                // A partition that joined a transaction before its first batch.
                storage
                    .write_file(&dir.join(TXN_MARKER_FILE), Vec::new())
                    .await
                    .expect("marker");
                storage.sync_dir(&dir).await.expect("syncs");
            });
            sim.open();
            for _ in 0..STEPS {
                sim.step();
            }
            sim.trace.push("final close".into());
            let (log, state) = (sim.log(), sim.state());
            sim.run(async move {
                state.snapshot_at_close(&log).await;
                log.close().await.expect("closes");
            });
            sim.open();
            let replay = sim.state().last_replay().expect("replayed");
            if replay.batches != 0 {
                sim.fail("a clean close left something to replay");
            }
        }

        #[test]
        fn crashes_and_cuts_leave_the_state_and_the_index_a_full_replay_gives() {
            if let Some(seed) = std::env::var("WHARF_TXN_FILES_SIM_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
            {
                run_seed(seed);
                return;
            }
            let seeds = std::env::var("WHARF_TXN_FILES_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(SEEDS);
            for seed in 0..seeds {
                run_seed(seed);
            }
        }
    }
}
