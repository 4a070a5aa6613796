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
//!   [`TXN_MARKER_FILE`]) replays its batch headers and markers from the log start, which
//!   rebuilds the open transactions and the aborted index exactly as they were, whatever
//!   the crash. The file is created and synced when the partition joins its first
//!   transaction (AddPartitionsToTxn) on the leader, and by a follower before it appends
//!   its first transactional batch or marker.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use wharf_engine::{EngineError, Offset, PartitionLog};
use wharf_protocol::batch::{batches, BatchHeader};
use wharf_protocol::txn::control::{decode_control_batch, ControlContent, EndTxnMarker};
use wharf_protocol::txn::index::AbortedTxn;

use crate::txn::partition::{PartitionTxns, VerificationGuard};

/// Present in a partition's directory once it has joined a transaction: its open
/// transactions and aborted index are then rebuilt from the log on open.
pub const TXN_MARKER_FILE: &str = "transactional";
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
#[derive(Default)]
pub struct PartitionTxnState {
    txns: RefCell<PartitionTxns>,
    /// Producers whose first transactional batch here is being appended, with the log end
    /// before it: the LSO stays below that until the batch's offsets are known.
    opening: RefCell<Vec<(i64, i64)>>,
    marker_file: Cell<bool>,
}

impl PartitionTxnState {
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
        self.txns.borrow_mut().apply_data_batch(
            producer_id,
            producer_epoch,
            first,
            last,
            true,
            now_ms,
        );
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

    pub fn apply_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        marker: &EndTxnMarker,
        offset: i64,
        now_ms: i64,
    ) {
        self.txns
            .borrow_mut()
            .apply_marker(producer_id, producer_epoch, marker, offset, now_ms);
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
        let dir: PathBuf = dir.to_path_buf();
        let created = glommio::executor()
            .spawn_blocking(move || -> std::io::Result<()> {
                let path = dir.join(TXN_MARKER_FILE);
                if path.exists() {
                    return Ok(());
                }
                let f = std::fs::File::create(&path)?;
                f.sync_all()?;
                std::fs::File::open(&dir)?.sync_all()
            })
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

    /// Rebuilds the state from the log if the partition has ever joined a transaction.
    /// `high_watermark`: what is known committed (completed transactions whose marker is
    /// at or above it stay unstable until the high watermark passes them).
    pub async fn rebuild(
        &self,
        dir: &Path,
        log: &PartitionLog,
        high_watermark: i64,
    ) -> Result<(), EngineError> {
        let path = dir.join(TXN_MARKER_FILE);
        let exists = glommio::executor()
            .spawn_blocking(move || path.exists())
            .await;
        if !exists {
            return Ok(());
        }
        self.marker_file.set(true);
        self.replay(log, high_watermark).await?;
        let open = self.txns.borrow().ongoing().count();
        let aborted = self.txns.borrow().aborted_index().len();
        if open > 0 || aborted > 0 {
            tracing::debug!(dir = %dir.display(), open, aborted, "rebuilt partition transactions");
        }
        Ok(())
    }

    /// Replaces the state with what the log implies, read from its start: the open
    /// transactions, the aborted index and the producers' epochs exactly as the batches
    /// and markers in the log make them. Used at open and after a follower's log was
    /// truncated (its divergent tail cut), so the state never remembers what the log lost.
    /// Reads until the log end as it is at the last read, and installs the result without
    /// yielding after that read.
    pub async fn replay(&self, log: &PartitionLog, high_watermark: i64) -> Result<(), EngineError> {
        let mut txns = PartitionTxns::default();
        let mut next = log.log_start_offset().0;
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
                apply_stored_batch(&mut txns, batch);
            }
            if next == before {
                break;
            }
        }
        txns.on_high_watermark(high_watermark);
        *self.txns.borrow_mut() = txns;
        Ok(())
    }

    /// A follower appended the leader's batches (`records`, as the leader stored them, at
    /// the offsets they carry): the state follows them in log order, as it followed the
    /// leader's appends there. A transactional batch opens its producer's transaction (if
    /// none is open), a marker ends it (an abort enters the aborted index), and every
    /// producer batch or marker moves the producer's epoch.
    pub fn apply_replicated(&self, records: &Bytes) {
        let mut txns = self.txns.borrow_mut();
        for (_, batch) in batches(records) {
            apply_stored_batch(&mut txns, batch);
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
/// leader checked it before it was written.
fn apply_stored_batch(txns: &mut PartitionTxns, batch: &[u8]) {
    let Some(h) = BatchHeader::view(batch) else {
        return;
    };
    if h.producer_id() < 0 {
        return;
    }
    let base = h.base_offset();
    let last = base + i64::from(h.last_offset_delta());
    let ts = h.max_timestamp();
    if h.is_control() {
        match decode_control_batch(batch, MAX_CONTROL_BATCH_BYTES) {
            Ok(c) => {
                if let ControlContent::EndTxn(marker) = c.content {
                    txns.apply_marker(h.producer_id(), h.producer_epoch(), &marker, base, ts);
                }
            }
            Err(e) => tracing::warn!(offset = base, "unreadable control batch: {e}"),
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
                let state = PartitionTxnState::default();
                let follow = |records: Bytes| {
                    let log = &log;
                    let state = &state;
                    async move {
                        log.append_as_follower(records.clone(), Durability::Written)
                            .await
                            .expect("follows");
                        state.apply_replicated(&records);
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
}
