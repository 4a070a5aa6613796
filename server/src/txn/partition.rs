//! What a partition keeps about transactions (Kafka's `ProducerStateManager` transaction
//! bookkeeping, `TransactionIndex` and the KIP-890 verification guard), as plain logic for
//! the storage engine to host next to its idempotence state:
//!
//! - the open transaction of each producer (its first offset), which holds the last stable
//!   offset (LSO) back: read_committed consumers read only below it;
//! - applying a COMMIT or ABORT marker: the producer's transaction completes, and an abort
//!   yields the aborted-transaction index entry to write to the active segment's
//!   `.txnindex`;
//! - the aborted transactions overlapping a read_committed fetch;
//! - KIP-890 part 1: a producer's first transactional batch in a partition is appended
//!   only after the coordinator confirmed the partition is in its transaction, and only if
//!   no marker came in between (the verification guard).
//!
//! Sequence numbers and duplicate detection are the engine's (idempotence); this file
//! checks only epochs and transactions.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use wharf_protocol::txn::control::{EndTxnMarker, TransactionResult};
use wharf_protocol::txn::index::{collect_aborted, AbortedTxn};

pub use super::snapshot::TxnSnapshot;

/// A producer as the partition knows it from its batches and markers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerTxnState {
    pub producer_epoch: i16,
    /// The epoch of the coordinator that wrote this producer's last marker here; markers
    /// from older coordinators are refused.
    pub coordinator_epoch: i32,
    /// The first offset of the producer's open transaction in this partition.
    pub current_txn_first_offset: Option<i64>,
    /// The timestamp of the producer's last batch or marker (for expiration).
    pub last_timestamp_ms: i64,
}

/// Proof that the coordinator was asked, after the partition last heard of the producer's
/// transactions, whether this partition is in the producer's transaction (KIP-890). Unique
/// per verification: a stale answer (from before a marker) carries an old guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VerificationGuard(u64);

#[derive(Clone, Debug)]
struct VerificationEntry {
    guard: VerificationGuard,
    created_ms: i64,
    lowest_sequence: i32,
    epoch: i16,
}

/// A transaction whose marker was applied (Kafka's `CompletedTxn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompletedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// The marker's offset.
    pub last_offset: i64,
    pub aborted: bool,
}

/// Why a data batch may not be appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxnAppendError {
    /// The batch's epoch is older than the producer's (a fenced producer).
    #[error("producer epoch is older than the partition's")]
    InvalidProducerEpoch,
    /// A non-transactional batch while the producer's transaction is open, or a
    /// transactional batch that opens a transaction the coordinator did not confirm.
    #[error("the batch does not belong to an open transaction")]
    InvalidTxnState,
}

impl TxnAppendError {
    pub fn code(self) -> ResponseError {
        match self {
            TxnAppendError::InvalidProducerEpoch => ResponseError::InvalidProducerEpoch,
            TxnAppendError::InvalidTxnState => ResponseError::InvalidTxnState,
        }
    }
}

/// Why a marker may not be appended (WriteTxnMarkers' per-partition errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MarkerError {
    #[error("the marker's producer epoch is older than the partition's")]
    InvalidProducerEpoch,
    #[error("the marker comes from an older transaction coordinator")]
    CoordinatorFenced,
}

impl MarkerError {
    pub fn code(self) -> ResponseError {
        match self {
            MarkerError::InvalidProducerEpoch => ResponseError::InvalidProducerEpoch,
            MarkerError::CoordinatorFenced => ResponseError::TransactionCoordinatorFenced,
        }
    }
}

/// The Produce error for a failed KIP-890 verification, as Kafka's
/// `AddPartitionsToTxnManager` and `ReplicaManager` map the coordinator's answer:
/// producers expect INVALID_PRODUCER_EPOCH rather than PRODUCER_FENCED here; a partition
/// not in the transaction is TRANSACTION_ABORTABLE for clients that know it (Produce v11+)
/// and INVALID_TXN_STATE for older ones; a coordinator that could not answer makes the
/// append retriable (NOT_ENOUGH_REPLICAS).
pub fn verification_error(
    error: ResponseError,
    knows_transaction_abortable: bool,
) -> ResponseError {
    match error {
        ResponseError::ProducerFenced => ResponseError::InvalidProducerEpoch,
        ResponseError::TransactionAbortable if !knows_transaction_abortable => {
            ResponseError::InvalidTxnState
        }
        ResponseError::ClusterAuthorizationFailed => ResponseError::InvalidTxnState,
        ResponseError::ConcurrentTransactions
        | ResponseError::NetworkException
        | ResponseError::CoordinatorLoadInProgress
        | ResponseError::CoordinatorNotAvailable
        | ResponseError::NotCoordinator => ResponseError::NotEnoughReplicas,
        other => other,
    }
}

/// Produce v11 is the first to know TRANSACTION_ABORTABLE (Kafka's `genericError`).
pub fn produce_knows_transaction_abortable(produce_version: i16) -> bool {
    produce_version > 10
}

/// The TxnOffsetCommit error for a failed KIP-890 verification of the group's
/// `__consumer_offsets` partition, as Kafka's group coordinator maps the coordinator's
/// answer (`AddPartitionsToTxnManager`, then `maybeConvertOffsetCommitError`): the
/// producer's epoch errors as for Produce; a partition not in the transaction (the
/// producer skipped AddOffsetsToTxn, or its transaction ended) is TRANSACTION_ABORTABLE
/// from v4 and INVALID_TXN_STATE before; a lost verification request is
/// COORDINATOR_LOAD_IN_PROGRESS, which every version retries; the coordinator's other
/// answers (CONCURRENT_TRANSACTIONS, NOT_COORDINATOR, ...) go to the client as they are.
pub fn txn_offset_commit_verification_error(
    error: ResponseError,
    txn_offset_commit_version: i16,
) -> ResponseError {
    match error {
        ResponseError::ProducerFenced => ResponseError::InvalidProducerEpoch,
        ResponseError::TransactionAbortable if txn_offset_commit_version < 4 => {
            ResponseError::InvalidTxnState
        }
        ResponseError::ClusterAuthorizationFailed => ResponseError::InvalidTxnState,
        ResponseError::NetworkException => ResponseError::CoordinatorLoadInProgress,
        ResponseError::UnknownTopicOrPartition
        | ResponseError::NotEnoughReplicas
        | ResponseError::NotEnoughReplicasAfterAppend => ResponseError::CoordinatorNotAvailable,
        ResponseError::NotLeaderOrFollower | ResponseError::KafkaStorageError => {
            ResponseError::NotCoordinator
        }
        other => other,
    }
}

/// One partition's transactions. Invariants: each producer has at most one open
/// transaction; `ongoing` holds exactly the open ones, keyed by first offset; the aborted
/// index is in marker order (its `last_offset`s increase).
#[derive(Clone, Debug, Default)]
pub struct PartitionTxns {
    producers: BTreeMap<i64, ProducerTxnState>,
    /// First offset → producer id of every open transaction.
    ongoing: BTreeMap<i64, i64>,
    /// First offset → (producer id, marker offset) of completed transactions whose marker
    /// may not be below the high watermark yet (Kafka's `unreplicatedTxns`).
    unreplicated: BTreeMap<i64, (i64, i64)>,
    aborted: Vec<AbortedTxn>,
    verifications: BTreeMap<i64, VerificationEntry>,
    next_guard: u64,
}

impl PartitionTxns {
    pub fn producer(&self, producer_id: i64) -> Option<&ProducerTxnState> {
        self.producers.get(&producer_id)
    }

    pub fn has_ongoing_txn(&self, producer_id: i64) -> bool {
        self.producers
            .get(&producer_id)
            .is_some_and(|p| p.current_txn_first_offset.is_some())
    }

    /// The open transactions as (first offset, producer id), by first offset.
    pub fn ongoing(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.ongoing.iter().map(|(first, pid)| (*first, *pid))
    }

    /// The aborted-transaction index, in marker order.
    pub fn aborted_index(&self) -> &[AbortedTxn] {
        &self.aborted
    }

    // ---------------------------------------------------------------------------------
    // KIP-890 part 1
    // ---------------------------------------------------------------------------------

    /// A transactional batch of `producer_id` arrived. `None`: its transaction is open here,
    /// append without asking. `Some(guard)`: ask the coordinator (AddPartitionsToTxn v4,
    /// verify only) and append with the guard if it confirms.
    pub fn start_verification(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
        now_ms: i64,
    ) -> Option<VerificationGuard> {
        if self.has_ongoing_txn(producer_id) {
            return None;
        }
        let next_guard = &mut self.next_guard;
        let entry = self.verifications.entry(producer_id).or_insert_with(|| {
            *next_guard += 1;
            VerificationEntry {
                guard: VerificationGuard(*next_guard),
                created_ms: now_ms,
                lowest_sequence: base_sequence,
                epoch: producer_epoch,
            }
        });
        // Remember the lowest sequence seen for the epoch (a retried lower sequence after a
        // higher one failed must still be accepted first), reset by a newer epoch.
        if producer_epoch == entry.epoch && base_sequence < entry.lowest_sequence {
            entry.lowest_sequence = base_sequence;
        }
        if producer_epoch > entry.epoch {
            entry.epoch = producer_epoch;
            entry.lowest_sequence = base_sequence;
        }
        Some(entry.guard)
    }

    /// The lowest sequence a verification in progress has seen for the producer: while
    /// verifying, a batch with a higher sequence is out of order (the engine's check).
    pub fn verification_lowest_sequence(&self, producer_id: i64) -> Option<i32> {
        self.verifications
            .get(&producer_id)
            .map(|e| e.lowest_sequence)
    }

    // ---------------------------------------------------------------------------------
    // Data batches
    // ---------------------------------------------------------------------------------

    /// May this data batch be appended? `guard` is the one [`Self::start_verification`]
    /// gave, if the coordinator confirmed; `verification` is
    /// `transaction.partition.verification.enable`. Replicas applying a leader's batches
    /// skip this check, as Kafka does.
    pub fn check_data_batch(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        transactional: bool,
        guard: Option<VerificationGuard>,
        verification: bool,
    ) -> Result<(), TxnAppendError> {
        let ongoing = self.has_ongoing_txn(producer_id);
        if verification && transactional && !ongoing {
            let verified = self
                .verifications
                .get(&producer_id)
                .is_some_and(|e| Some(e.guard) == guard);
            if !verified {
                return Err(TxnAppendError::InvalidTxnState);
            }
        }
        if let Some(p) = self.producers.get(&producer_id) {
            if producer_epoch < p.producer_epoch {
                return Err(TxnAppendError::InvalidProducerEpoch);
            }
        }
        if ongoing && !transactional {
            return Err(TxnAppendError::InvalidTxnState);
        }
        Ok(())
    }

    /// A data batch of `producer_id` was appended at `first_offset..=last_offset`. A
    /// transactional batch opens the producer's transaction here if none is open.
    pub fn apply_data_batch(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        first_offset: i64,
        last_offset: i64,
        transactional: bool,
        timestamp_ms: i64,
    ) {
        debug_assert!(first_offset <= last_offset);
        let p = self
            .producers
            .entry(producer_id)
            .or_insert(ProducerTxnState {
                producer_epoch,
                coordinator_epoch: -1,
                current_txn_first_offset: None,
                last_timestamp_ms: timestamp_ms,
            });
        p.producer_epoch = producer_epoch;
        p.last_timestamp_ms = timestamp_ms;
        if transactional {
            if p.current_txn_first_offset.is_none() {
                p.current_txn_first_offset = Some(first_offset);
                self.ongoing.insert(first_offset, producer_id);
            }
            // The transaction is open here now: later batches need no verification.
            self.verifications.remove(&producer_id);
        }
    }

    // ---------------------------------------------------------------------------------
    // Markers
    // ---------------------------------------------------------------------------------

    /// May this marker be appended (WriteTxnMarkers from a coordinator)?
    pub fn check_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        marker: &EndTxnMarker,
    ) -> Result<(), MarkerError> {
        let Some(p) = self.producers.get(&producer_id) else {
            return Ok(());
        };
        if producer_epoch < p.producer_epoch {
            return Err(MarkerError::InvalidProducerEpoch);
        }
        if marker.coordinator_epoch < p.coordinator_epoch {
            return Err(MarkerError::CoordinatorFenced);
        }
        Ok(())
    }

    /// A marker of `producer_id` was appended at `offset`: the producer's open transaction
    /// completes (if it has one here). For an abort, returns the entry to append to the
    /// active segment's aborted-transaction index (also kept in [`Self::aborted_index`]).
    pub fn apply_marker(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        marker: &EndTxnMarker,
        offset: i64,
        timestamp_ms: i64,
    ) -> (Option<CompletedTxn>, Option<AbortedTxn>) {
        let p = self
            .producers
            .entry(producer_id)
            .or_insert(ProducerTxnState {
                producer_epoch,
                coordinator_epoch: marker.coordinator_epoch,
                current_txn_first_offset: None,
                last_timestamp_ms: timestamp_ms,
            });
        // The marker's epoch becomes the producer's: an abort written under a bumped epoch
        // fences the old producer here too.
        p.producer_epoch = producer_epoch;
        p.coordinator_epoch = marker.coordinator_epoch;
        p.last_timestamp_ms = timestamp_ms;
        self.verifications.remove(&producer_id);
        let Some(first_offset) = p.current_txn_first_offset.take() else {
            // A marker for a transaction with no data here changes nothing else.
            return (None, None);
        };
        let completed = CompletedTxn {
            producer_id,
            first_offset,
            last_offset: offset,
            aborted: marker.result == TransactionResult::Abort,
        };
        let entry = completed.aborted.then(|| AbortedTxn {
            producer_id,
            first_offset,
            last_offset: offset,
            last_stable_offset: self.last_stable_offset_after(&completed),
        });
        if let Some(entry) = entry {
            debug_assert!(self
                .aborted
                .last()
                .is_none_or(|last| last.last_offset < entry.last_offset));
            self.aborted.push(entry);
        }
        self.ongoing.remove(&first_offset);
        self.unreplicated
            .insert(first_offset, (producer_id, offset));
        (Some(completed), entry)
    }

    /// The LSO once `completed` is done (Kafka's `lastStableOffset(completedTxn)`): the
    /// first offset of the earliest transaction of another producer still open, or right
    /// after the marker.
    fn last_stable_offset_after(&self, completed: &CompletedTxn) -> i64 {
        self.ongoing
            .iter()
            .find(|(_, pid)| **pid != completed.producer_id)
            .map_or(completed.last_offset + 1, |(first, _)| *first)
    }

    // ---------------------------------------------------------------------------------
    // Last stable offset and read_committed fetches
    // ---------------------------------------------------------------------------------

    /// The first offset a read_committed consumer may not see yet, ignoring the high
    /// watermark: the earliest open transaction's first offset, or that of a completed one
    /// whose marker is not below `high_watermark`.
    pub fn first_unstable_offset(&self, high_watermark: i64) -> Option<i64> {
        let undecided = self.ongoing.keys().next().copied();
        let unreplicated = self
            .unreplicated
            .iter()
            .find(|(_, (_, last))| *last >= high_watermark)
            .map(|(first, _)| *first);
        match (undecided, unreplicated) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The last stable offset: read_committed consumers read below it, and ListOffsets
    /// (latest, read_committed) answers it. Never above the high watermark, never past an
    /// open transaction's first offset.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        match self.first_unstable_offset(high_watermark) {
            Some(first) if first < high_watermark => first,
            _ => high_watermark,
        }
    }

    /// The high watermark moved: completed transactions whose markers are below it are
    /// stable and forgotten.
    pub fn on_high_watermark(&mut self, high_watermark: i64) {
        self.unreplicated
            .retain(|_, (_, last)| *last >= high_watermark);
    }

    /// The aborted transactions a read_committed Fetch from `fetch_offset` returns with
    /// records up to `upper_bound_offset` (exclusive): those overlapping the range, in
    /// marker order.
    pub fn aborted_in_range(&self, fetch_offset: i64, upper_bound_offset: i64) -> Vec<AbortedTxn> {
        // Entries with a marker below the fetch offset cannot overlap it.
        let start = self
            .aborted
            .partition_point(|e| e.last_offset < fetch_offset);
        collect_aborted(&self.aborted[start..], fetch_offset, upper_bound_offset).aborted
    }

    /// The log was truncated to `offset` (entries from it on are gone): drop index entries
    /// of markers at or above it, as Kafka's `TransactionIndex.truncateTo`. The open
    /// transactions are rebuilt by replaying the remaining log into a fresh state.
    pub fn truncate_aborted_index(&mut self, offset: i64) {
        let keep = self.aborted.partition_point(|e| e.last_offset < offset);
        self.aborted.truncate(keep);
    }

    /// Retention or DeleteRecords moved the log start to `log_start_offset`: entries whose
    /// marker is below it overlap no data any more and go (Kafka keeps only the index files
    /// of retained segments). Returns how many went.
    pub fn prune_aborted_before(&mut self, log_start_offset: i64) -> usize {
        let gone = self
            .aborted
            .partition_point(|e| e.last_offset < log_start_offset);
        self.aborted.drain(..gone);
        gone
    }

    /// What a transaction snapshot at `offset` holds: everything but the aborted index
    /// (kept in the `.txnindex` files) and verifications in progress (which a restart
    /// forgets, as Kafka's do).
    pub fn snapshot(&self, offset: i64) -> TxnSnapshot {
        TxnSnapshot {
            offset,
            // The files' business: set when the snapshot is written.
            index_end: None,
            producers: self
                .producers
                .iter()
                .map(|(pid, p)| (*pid, p.clone()))
                .collect(),
            unreplicated: self
                .unreplicated
                .iter()
                .map(|(first, (pid, last))| (*first, *pid, *last))
                .collect(),
        }
    }

    /// The state a snapshot describes, with the aborted index read from the `.txnindex`
    /// files (entries in marker order, all below the snapshot's offset).
    pub fn from_snapshot(snapshot: TxnSnapshot, aborted: Vec<AbortedTxn>) -> PartitionTxns {
        debug_assert!(aborted
            .windows(2)
            .all(|w| w[0].last_offset < w[1].last_offset));
        let mut txns = PartitionTxns {
            aborted,
            ..PartitionTxns::default()
        };
        for (pid, p) in snapshot.producers {
            if let Some(first) = p.current_txn_first_offset {
                txns.ongoing.insert(first, pid);
            }
            txns.producers.insert(pid, p);
        }
        for (first, pid, last) in snapshot.unreplicated {
            txns.unreplicated.insert(first, (pid, last));
        }
        txns
    }

    /// Forget producers idle for `producer_id_expiration_ms` with no open transaction, and
    /// verifications that never led to an append (Kafka's `removeExpiredProducers`).
    pub fn remove_expired(&mut self, now_ms: i64, producer_id_expiration_ms: i64) {
        self.producers.retain(|_, p| {
            p.current_txn_first_offset.is_some()
                || now_ms.saturating_sub(p.last_timestamp_ms) < producer_id_expiration_ms
        });
        self.verifications
            .retain(|_, e| now_ms.saturating_sub(e.created_ms) < producer_id_expiration_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn marker(commit: bool, coordinator_epoch: i32) -> EndTxnMarker {
        EndTxnMarker {
            result: TransactionResult::from_committed(commit),
            coordinator_epoch,
        }
    }

    #[test]
    fn lso_waits_for_the_earliest_open_transaction_and_the_high_watermark() {
        let mut p = PartitionTxns::default();
        p.apply_data_batch(1, 0, 0, 4, false, 0); // idempotent, not transactional
        assert_eq!(p.last_stable_offset(5), 5);
        p.apply_data_batch(2, 0, 5, 6, true, 0);
        p.apply_data_batch(3, 0, 7, 7, true, 0);
        assert_eq!(p.last_stable_offset(8), 5);
        assert_eq!(p.last_stable_offset(3), 3, "never above the high watermark");
        let (done, entry) = p.apply_marker(2, 0, &marker(true, 0), 8, 0);
        assert_eq!(
            done,
            Some(CompletedTxn {
                producer_id: 2,
                first_offset: 5,
                last_offset: 8,
                aborted: false
            })
        );
        assert_eq!(entry, None);
        // The commit marker is not below the high watermark yet: still unstable.
        assert_eq!(p.last_stable_offset(8), 5);
        assert_eq!(p.last_stable_offset(9), 7);
        p.on_high_watermark(9);
        let (_, entry) = p.apply_marker(3, 0, &marker(false, 0), 9, 0);
        assert_eq!(
            entry,
            Some(AbortedTxn {
                producer_id: 3,
                first_offset: 7,
                last_offset: 9,
                last_stable_offset: 10
            })
        );
        assert_eq!(p.last_stable_offset(10), 10);
    }

    #[test]
    fn an_abort_records_the_next_open_transaction_as_its_lso() {
        let mut p = PartitionTxns::default();
        p.apply_data_batch(1, 0, 0, 0, true, 0);
        p.apply_data_batch(2, 0, 1, 1, true, 0);
        let (_, entry) = p.apply_marker(1, 0, &marker(false, 0), 2, 0);
        assert_eq!(entry.map(|e| e.last_stable_offset), Some(1));
    }

    #[test]
    fn a_snapshot_with_its_aborted_index_gives_the_state_back() {
        let mut p = PartitionTxns::default();
        p.apply_data_batch(1, 0, 0, 0, true, 10);
        p.apply_data_batch(2, 3, 1, 2, true, 11);
        p.apply_data_batch(4, 0, 3, 3, false, 12);
        p.apply_marker(2, 4, &marker(false, 7), 4, 13);
        p.apply_data_batch(5, 0, 5, 5, true, 14);
        p.apply_marker(5, 0, &marker(true, 7), 6, 15);
        p.on_high_watermark(6);
        let back = PartitionTxns::from_snapshot(p.snapshot(7), p.aborted_index().to_vec());
        for hw in 0..8 {
            assert_eq!(back.last_stable_offset(hw), p.last_stable_offset(hw));
        }
        assert_eq!(
            back.ongoing().collect::<Vec<_>>(),
            p.ongoing().collect::<Vec<_>>()
        );
        assert_eq!(back.aborted_in_range(0, 8), p.aborted_in_range(0, 8));
        for pid in [1, 2, 4, 5] {
            assert_eq!(back.producer(pid), p.producer(pid));
        }
    }

    #[test]
    fn moving_the_log_start_forgets_aborts_that_end_below_it() {
        let mut p = PartitionTxns::default();
        for (pid, first, last) in [(1, 0, 1), (2, 2, 5), (3, 4, 6)] {
            p.apply_data_batch(pid, 0, first, first, true, 0);
            p.apply_marker(pid, 0, &marker(false, 0), last, 0);
        }
        assert_eq!(p.prune_aborted_before(5), 1);
        let left: Vec<i64> = p.aborted_index().iter().map(|e| e.producer_id).collect();
        assert_eq!(
            left,
            vec![2, 3],
            "an abort ending at the log start overlaps it"
        );
    }

    #[test]
    fn a_marker_without_data_completes_nothing() {
        let mut p = PartitionTxns::default();
        assert_eq!(p.apply_marker(1, 0, &marker(false, 0), 0, 0), (None, None));
        assert!(p.aborted_index().is_empty());
    }

    #[test]
    fn markers_from_old_epochs_or_coordinators_are_refused() {
        let mut p = PartitionTxns::default();
        p.apply_data_batch(1, 3, 0, 0, true, 0);
        p.apply_marker(1, 4, &marker(false, 7), 1, 0);
        assert_eq!(
            p.check_marker(1, 3, &marker(true, 7)),
            Err(MarkerError::InvalidProducerEpoch)
        );
        assert_eq!(
            p.check_marker(1, 4, &marker(true, 6)),
            Err(MarkerError::CoordinatorFenced)
        );
        assert_eq!(p.check_marker(1, 4, &marker(true, 7)), Ok(()));
        assert_eq!(p.check_marker(9, 0, &marker(true, 0)), Ok(()));
        assert_eq!(
            MarkerError::CoordinatorFenced.code(),
            ResponseError::TransactionCoordinatorFenced
        );
    }

    #[test]
    fn the_abort_marker_fences_the_old_epoch_at_the_partition() {
        let mut p = PartitionTxns::default();
        p.apply_data_batch(1, 0, 0, 0, true, 0);
        // The coordinator aborted under epoch 1 (a new producer instance fenced epoch 0).
        p.apply_marker(1, 1, &marker(false, 0), 1, 0);
        assert_eq!(
            p.check_data_batch(1, 0, true, None, false),
            Err(TxnAppendError::InvalidProducerEpoch)
        );
    }

    #[test]
    fn a_first_transactional_batch_needs_a_confirmed_verification() {
        let mut p = PartitionTxns::default();
        assert_eq!(
            p.check_data_batch(1, 0, true, None, true),
            Err(TxnAppendError::InvalidTxnState)
        );
        let guard = p
            .start_verification(1, 0, 0, 0)
            .expect("no transaction open");
        assert_eq!(p.check_data_batch(1, 0, true, Some(guard), true), Ok(()));
        // Verification disabled: anything goes.
        assert_eq!(p.check_data_batch(1, 0, true, None, false), Ok(()));
        p.apply_data_batch(1, 0, 0, 0, true, 0);
        assert_eq!(p.start_verification(1, 0, 1, 0), None, "already open");
        assert_eq!(p.check_data_batch(1, 0, true, None, true), Ok(()));
        assert_eq!(
            p.check_data_batch(1, 0, false, None, true),
            Err(TxnAppendError::InvalidTxnState),
            "a non-transactional batch inside a transaction"
        );
    }

    #[test]
    fn a_marker_between_verification_and_append_voids_the_guard() {
        // The ABA case KIP-890 guards against: verified, then the transaction was aborted,
        // then the stale confirmation arrives.
        let mut p = PartitionTxns::default();
        let guard = p.start_verification(1, 0, 0, 0).unwrap();
        p.apply_marker(1, 0, &marker(false, 0), 0, 0);
        assert_eq!(
            p.check_data_batch(1, 0, true, Some(guard), true),
            Err(TxnAppendError::InvalidTxnState)
        );
        let fresh = p.start_verification(1, 0, 0, 0).unwrap();
        assert_ne!(fresh, guard);
        assert_eq!(p.check_data_batch(1, 0, true, Some(fresh), true), Ok(()));
    }

    #[test]
    fn verification_keeps_the_lowest_sequence_of_the_newest_epoch() {
        let mut p = PartitionTxns::default();
        let g = p.start_verification(1, 0, 5, 0).unwrap();
        assert_eq!(p.start_verification(1, 0, 3, 0), Some(g));
        assert_eq!(p.verification_lowest_sequence(1), Some(3));
        p.start_verification(1, 0, 9, 0);
        assert_eq!(p.verification_lowest_sequence(1), Some(3));
        p.start_verification(1, 1, 7, 0);
        assert_eq!(p.verification_lowest_sequence(1), Some(7));
    }

    #[test]
    fn expiration_keeps_producers_with_open_transactions() {
        let mut p = PartitionTxns::default();
        p.apply_data_batch(1, 0, 0, 0, true, 0);
        p.apply_data_batch(2, 0, 1, 1, false, 0);
        p.start_verification(3, 0, 0, 0);
        p.remove_expired(1000, 1000);
        assert!(p.producer(1).is_some());
        assert!(p.producer(2).is_none());
        assert_eq!(p.verification_lowest_sequence(3), None);
    }

    #[test]
    fn txn_offset_commit_verification_errors_map_as_kafkas_group_coordinator_maps_them() {
        use ResponseError as E;
        let map = txn_offset_commit_verification_error;
        assert_eq!(map(E::TransactionAbortable, 4), E::TransactionAbortable);
        assert_eq!(map(E::TransactionAbortable, 3), E::InvalidTxnState);
        assert_eq!(map(E::TransactionAbortable, 0), E::InvalidTxnState);
        assert_eq!(map(E::ProducerFenced, 4), E::InvalidProducerEpoch);
        assert_eq!(map(E::NetworkException, 0), E::CoordinatorLoadInProgress);
        assert_eq!(map(E::NotLeaderOrFollower, 4), E::NotCoordinator);
        assert_eq!(map(E::NotEnoughReplicas, 4), E::CoordinatorNotAvailable);
        // The coordinator's answers the client knows pass as they are.
        assert_eq!(map(E::ConcurrentTransactions, 4), E::ConcurrentTransactions);
        assert_eq!(map(E::NotCoordinator, 2), E::NotCoordinator);
        assert_eq!(
            map(E::InvalidProducerIdMapping, 4),
            E::InvalidProducerIdMapping
        );
    }

    #[test]
    fn verification_errors_map_as_kafka_maps_them() {
        use ResponseError as E;
        assert_eq!(
            verification_error(E::ProducerFenced, true),
            E::InvalidProducerEpoch
        );
        assert_eq!(
            verification_error(E::TransactionAbortable, false),
            E::InvalidTxnState
        );
        assert_eq!(
            verification_error(E::TransactionAbortable, true),
            E::TransactionAbortable
        );
        assert_eq!(
            verification_error(E::NotCoordinator, true),
            E::NotEnoughReplicas
        );
        assert_eq!(
            verification_error(E::ConcurrentTransactions, false),
            E::NotEnoughReplicas
        );
        assert_eq!(
            verification_error(E::InvalidProducerIdMapping, true),
            E::InvalidProducerIdMapping
        );
        assert!(produce_knows_transaction_abortable(11));
        assert!(!produce_knows_transaction_abortable(10));
    }

    #[test]
    fn truncation_drops_index_entries_at_or_above_the_offset() {
        let mut p = PartitionTxns::default();
        for (pid, first, last) in [(1, 0, 1), (2, 2, 3), (3, 4, 5)] {
            p.apply_data_batch(pid, 0, first, first, true, 0);
            p.apply_marker(pid, 0, &marker(false, 0), last, 0);
        }
        p.truncate_aborted_index(3);
        assert_eq!(p.aborted_index().len(), 1);
    }

    // ---------------------------------------------------------------------------------
    // Against a brute-force model
    // ---------------------------------------------------------------------------------

    #[derive(Clone, Debug)]
    enum Op {
        /// A batch of `len` records from producer `p`.
        Data {
            p: usize,
            len: i64,
            transactional: bool,
        },
        Marker {
            p: usize,
            commit: bool,
        },
        /// Move the high watermark up by this much (bounded by the log end).
        Advance(i64),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..4, 1i64..4, any::<bool>()).prop_map(|(p, len, transactional)| Op::Data { p, len, transactional }),
            2 => (0usize..4, any::<bool>()).prop_map(|(p, commit)| Op::Marker { p, commit }),
            1 => (0i64..6).prop_map(Op::Advance),
        ]
    }

    /// Every transaction as the model sees it: producer, first offset, marker offset and
    /// outcome once decided.
    #[derive(Clone, Debug)]
    struct ModelTxn {
        pid: i64,
        first: i64,
        last: Option<(i64, bool)>,
    }

    struct Run {
        p: PartitionTxns,
        txns: Vec<ModelTxn>,
        log_end: i64,
        hw: i64,
    }

    fn run(ops: &[Op], mut check: impl FnMut(&Run)) -> Run {
        let mut r = Run {
            p: PartitionTxns::default(),
            txns: Vec::new(),
            log_end: 0,
            hw: 0,
        };
        for op in ops {
            match op {
                Op::Data {
                    p,
                    len,
                    transactional,
                } => {
                    let pid = *p as i64 + 100;
                    let open = r.txns.iter().any(|t| t.pid == pid && t.last.is_none());
                    if open && !transactional {
                        // The partition refuses it; nothing appended.
                        assert_eq!(
                            r.p.check_data_batch(pid, 0, false, None, false),
                            Err(TxnAppendError::InvalidTxnState)
                        );
                        continue;
                    }
                    let first = r.log_end;
                    r.p.apply_data_batch(pid, 0, first, first + len - 1, *transactional, 0);
                    if *transactional && !open {
                        r.txns.push(ModelTxn {
                            pid,
                            first,
                            last: None,
                        });
                    }
                    r.log_end += len;
                }
                Op::Marker { p, commit } => {
                    let pid = *p as i64 + 100;
                    let offset = r.log_end;
                    r.log_end += 1;
                    let (done, _) = r.p.apply_marker(pid, 0, &marker(*commit, 0), offset, 0);
                    let open = r.txns.iter_mut().find(|t| t.pid == pid && t.last.is_none());
                    assert_eq!(done.is_some(), open.is_some());
                    if let Some(t) = open {
                        t.last = Some((offset, !commit));
                    }
                }
                Op::Advance(by) => {
                    r.hw = (r.hw + by).min(r.log_end);
                    r.p.on_high_watermark(r.hw);
                }
            }
            check(&r);
        }
        r
    }

    fn brute_lso(r: &Run, hw: i64) -> i64 {
        r.txns
            .iter()
            .filter(|t| t.last.is_none_or(|(last, _)| last >= hw))
            .map(|t| t.first)
            .chain(std::iter::once(hw))
            .min()
            .expect("the high watermark is a candidate")
    }

    fn brute_aborted(r: &Run, fetch: i64, upper: i64) -> Vec<(i64, i64, i64)> {
        let mut out: Vec<(i64, i64, i64)> = r
            .txns
            .iter()
            .filter_map(|t| match t.last {
                Some((last, true)) if last >= fetch && t.first < upper => {
                    Some((t.pid, t.first, last))
                }
                _ => None,
            })
            .collect();
        out.sort_by_key(|(_, _, last)| *last);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn lso_never_passes_an_open_transaction(ops in proptest::collection::vec(arb_op(), 1..80)) {
            run(&ops, |r| {
                let lso = r.p.last_stable_offset(r.hw);
                assert!(lso <= r.hw);
                for t in r.txns.iter().filter(|t| t.last.is_none()) {
                    assert!(lso <= t.first, "LSO {lso} passed open transaction at {}", t.first);
                }
                assert_eq!(lso, brute_lso(r, r.hw));
            });
        }

        #[test]
        fn aborted_answers_match_brute_force(
            ops in proptest::collection::vec(arb_op(), 1..80),
            ranges in proptest::collection::vec((0i64..200, 0i64..60), 1..8),
        ) {
            let r = run(&ops, |_| {});
            for (fetch, len) in ranges {
                let fetch = fetch % (r.log_end + 1);
                let upper = fetch + len;
                let got: Vec<(i64, i64, i64)> = r
                    .p
                    .aborted_in_range(fetch, upper)
                    .iter()
                    .map(|e| (e.producer_id, e.first_offset, e.last_offset))
                    .collect();
                prop_assert_eq!(got, brute_aborted(&r, fetch, upper));
            }
        }

        /// The engine keeps one index per segment and searches from the segment holding
        /// the fetch offset until an index says it is complete (Kafka's
        /// `collectAbortedTransactions`): that answers the same.
        #[test]
        fn per_segment_search_matches_brute_force(
            ops in proptest::collection::vec(arb_op(), 1..80),
            cuts in proptest::collection::btree_set(1i64..250, 0..6),
            ranges in proptest::collection::vec((0i64..200, 0i64..60), 1..8),
        ) {
            let r = run(&ops, |_| {});
            let mut bases: Vec<i64> = vec![0];
            bases.extend(cuts.into_iter().filter(|c| *c < r.log_end.max(1)));
            let segment_of = |offset: i64| bases.partition_point(|b| *b <= offset) - 1;
            let mut segments: Vec<Vec<AbortedTxn>> = vec![Vec::new(); bases.len()];
            for e in r.p.aborted_index() {
                segments[segment_of(e.last_offset)].push(*e);
            }
            for (fetch, len) in ranges {
                let fetch = fetch % (r.log_end + 1);
                let upper = fetch + len;
                let mut got = Vec::new();
                for segment in &segments[segment_of(fetch)..] {
                    let s = collect_aborted(segment, fetch, upper);
                    got.extend(s.aborted.iter().map(|e| (e.producer_id, e.first_offset, e.last_offset)));
                    if s.complete {
                        break;
                    }
                }
                prop_assert_eq!(got, brute_aborted(&r, fetch, upper));
            }
        }
    }
}
