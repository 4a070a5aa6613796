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
//!   the batch headers and markers after the snapshot ([`files`]). A partition
//!   written before those files existed (or whose snapshots are all unusable) replays from
//!   the log start once, which writes them. The marker file is created and synced when the
//!   partition joins its first transaction (AddPartitionsToTxn) on the leader, and by a
//!   follower before it appends its first transactional batch or marker;
//! - an applied abort appends its entry to the `.txnindex` of the segment holding the
//!   marker; once a segment has rolled, the state is snapshotted at the log end the first
//!   time no append is in flight (so the state is exactly what the log below it implies).

pub mod files;

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use wharf_engine::{DmaStorage, Durability, EngineError, Offset, PartitionLog, Storage};
use wharf_protocol::batch::{batches, BatchHeader};
use wharf_protocol::txn::control::{decode_control_batch, ControlContent, EndTxnMarker};
use wharf_protocol::txn::index::AbortedTxn;

use self::files::TxnFiles;
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

    /// Forgets the producers idle for `expiration_ms` (by their last batch's or marker's
    /// timestamp) with no transaction open here, and verifications that led to no append,
    /// as Kafka's `removeExpiredProducers` does on the producer-expiration timer. The
    /// aborted list and the open transactions are kept.
    pub fn remove_expired(&self, now_ms: i64, expiration_ms: i64) {
        self.txns.borrow_mut().remove_expired(now_ms, expiration_ms);
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
                let last = h.last_offset();
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
                    self.note_applied(h.last_offset() + 1);
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
    let last = h.last_offset();
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
mod tests;
