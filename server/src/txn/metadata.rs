//! One transactional id's state at its coordinator, and the transitions between states
//! (Kafka's `TransactionMetadata`). A transition is prepared (the target goes into
//! `pending`, and no other transition may start), written to the log, and completed when
//! the append succeeded; a failed append drops the pending transition.
//!
//! ```text
//! Empty ──AddPartitions──▶ Ongoing ──EndTxn(commit)──▶ PrepareCommit ──markers──▶ CompleteCommit
//!   ▲                         │ ──EndTxn(abort), timeout, fencing──▶ PrepareAbort ──markers──▶ CompleteAbort
//!   └─────── InitProducerId (epoch + 1) ◀─────────────────────────────────────────────┘
//! Empty / CompleteCommit / CompleteAbort ──expiration──▶ Dead (removed)
//! ```

use std::collections::BTreeSet;

use kafka_protocol::error::ResponseError;
use wharf_protocol::batch::{NO_PRODUCER_EPOCH, NO_PRODUCER_ID};
use wharf_protocol::txn::log::{TransactionLogValue, TransactionState, TxnTopicPartitions};

use super::api::TopicPartition;

/// What a transition will make of a transactional id: the content of its log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnTransit {
    pub producer_id: i64,
    pub last_producer_id: i64,
    pub producer_epoch: i16,
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TransactionState,
    pub partitions: BTreeSet<TopicPartition>,
    pub start_timestamp_ms: i64,
    pub last_update_timestamp_ms: i64,
}

impl TxnTransit {
    /// The `__transaction_state` value Kafka 3.9 writes for this transition (v0: the last
    /// producer id and epoch are not stored, partitions are null for `Empty`).
    pub fn to_log_value(&self) -> TransactionLogValue {
        let partitions = if self.state == TransactionState::Empty {
            None
        } else {
            let mut topics: Vec<TxnTopicPartitions> = Vec::new();
            for tp in &self.partitions {
                match topics.last_mut() {
                    Some(t) if t.topic == tp.topic => t.partitions.push(tp.partition),
                    _ => topics.push(TxnTopicPartitions {
                        topic: tp.topic.clone(),
                        partitions: vec![tp.partition],
                    }),
                }
            }
            Some(topics)
        };
        TransactionLogValue {
            version: wharf_protocol::txn::log::TRANSACTION_LOG_VALUE_VERSION,
            producer_id: self.producer_id,
            previous_producer_id: NO_PRODUCER_ID,
            next_producer_id: NO_PRODUCER_ID,
            producer_epoch: self.producer_epoch,
            transaction_timeout_ms: self.timeout_ms,
            state: self.state,
            partitions,
            last_update_timestamp_ms: self.last_update_timestamp_ms,
            start_timestamp_ms: self.start_timestamp_ms,
            client_transaction_version: 0,
        }
    }
}

/// A transactional id's state. Invariant: at most one transition is pending, and the
/// fields change only when a pending transition completes (except the two Kafka changes
/// in place when it fences a producer, see [`TxnMetadata::prepare_fence_and_abort`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnMetadata {
    pub transactional_id: String,
    pub producer_id: i64,
    /// The producer id before the last rotation (KIP-360: a retry of the InitProducerId
    /// that rotated the id is recognised by it). Not stored in the log, as in Kafka 3.9.
    pub last_producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before the last bump that a producer asked for (KIP-360); -1 when a new
    /// producer fenced the old one. Not stored in the log.
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TransactionState,
    /// The partitions in the open transaction; while markers are written, those still
    /// waiting for theirs.
    pub partitions: BTreeSet<TopicPartition>,
    /// When the open transaction started (its first AddPartitions); -1 when none.
    pub start_timestamp_ms: i64,
    pub last_update_timestamp_ms: i64,
    /// The state of the transition being written to the log, if any.
    pub pending: Option<TransactionState>,
    /// A fencing abort's log append failed after the epoch was bumped in memory; the next
    /// fencing does not bump it again (the bumped epoch was never handed out).
    pub has_failed_epoch_fence: bool,
}

/// Epochs from here on are not handed to producers, so the coordinator can always fence
/// (Kafka's `isEpochExhausted`: `epoch >= Short.MaxValue - 1`).
pub fn is_epoch_exhausted(epoch: i16) -> bool {
    epoch >= i16::MAX - 1
}

impl TxnMetadata {
    /// A transactional id seen for the first time, with its new producer id and no epoch
    /// yet (InitProducerId gives it epoch 0 when its record is written).
    pub fn new(transactional_id: &str, producer_id: i64, timeout_ms: i32, now_ms: i64) -> Self {
        TxnMetadata {
            transactional_id: transactional_id.to_owned(),
            producer_id,
            last_producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            timeout_ms,
            state: TransactionState::Empty,
            partitions: BTreeSet::new(),
            start_timestamp_ms: -1,
            last_update_timestamp_ms: now_ms,
            pending: None,
            has_failed_epoch_fence: false,
        }
    }

    /// The state a log value describes (Kafka's `readTxnRecordValue`). Partitions count
    /// only while a transaction is open or being completed (Kafka writes none for the other
    /// states), and an open or finished transaction without a start time starts at its last
    /// update, so a damaged record cannot lead to a transition the state machine refuses.
    pub fn from_log(transactional_id: &str, value: &TransactionLogValue) -> TxnMetadata {
        let mut start_timestamp_ms = value.start_timestamp_ms;
        if value.state != TransactionState::Empty && start_timestamp_ms < 0 {
            start_timestamp_ms = value.last_update_timestamp_ms.max(0);
        }
        let partitions = if !matches!(
            value.state,
            TransactionState::Ongoing
                | TransactionState::PrepareCommit
                | TransactionState::PrepareAbort
        ) {
            BTreeSet::new()
        } else {
            value
                .partitions
                .iter()
                .flatten()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|p| TopicPartition::new(&t.topic, *p))
                })
                .collect()
        };
        TxnMetadata {
            transactional_id: transactional_id.to_owned(),
            producer_id: value.producer_id,
            last_producer_id: value.previous_producer_id,
            producer_epoch: value.producer_epoch,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            timeout_ms: value.transaction_timeout_ms,
            state: value.state,
            partitions,
            start_timestamp_ms,
            last_update_timestamp_ms: value.last_update_timestamp_ms,
            pending: None,
            has_failed_epoch_fence: false,
        }
    }

    pub fn is_epoch_exhausted(&self) -> bool {
        is_epoch_exhausted(self.producer_epoch)
    }

    /// Ongoing, PrepareCommit or PrepareAbort: a transaction is open or being completed.
    pub fn has_pending_transaction(&self) -> bool {
        matches!(
            self.state,
            TransactionState::Ongoing
                | TransactionState::PrepareCommit
                | TransactionState::PrepareAbort
        )
    }

    /// InitProducerId on a completed (or empty) transactional id: the next epoch, or, for
    /// a producer retrying after an error (KIP-360), its bumped epoch again. Fails with
    /// PRODUCER_FENCED when the producer's epoch is neither the current nor the last one.
    pub fn prepare_increment_epoch(
        &mut self,
        timeout_ms: i32,
        expected_epoch: Option<i16>,
        now_ms: i64,
    ) -> Result<TxnTransit, ResponseError> {
        let current = self.producer_epoch;
        let bumped = current.saturating_add(1);
        let (epoch, last_epoch) = match expected_epoch {
            // A new producer instance: bump, and forget the last epoch (it is fenced).
            None => (bumped, NO_PRODUCER_EPOCH),
            // The producer recovers from an error and nobody else initialized meanwhile.
            Some(expected) if current == NO_PRODUCER_EPOCH || expected == current => {
                (bumped, current)
            }
            // A retry of a bump that succeeded but whose answer was lost.
            Some(expected) if expected == self.last_producer_epoch => {
                (current, self.last_producer_epoch)
            }
            Some(_) => return Err(ResponseError::ProducerFenced),
        };
        // Exhausted epochs are rotated to a new producer id before this is called; a
        // retry keeps the current epoch.
        if epoch != current && is_epoch_exhausted(current) {
            return Err(ResponseError::ProducerFenced);
        }
        Ok(self.prepare(TxnTransit {
            producer_id: self.producer_id,
            last_producer_id: self.producer_id,
            producer_epoch: epoch,
            last_producer_epoch: last_epoch,
            timeout_ms,
            state: TransactionState::Empty,
            partitions: BTreeSet::new(),
            start_timestamp_ms: -1,
            last_update_timestamp_ms: now_ms,
        }))
    }

    /// InitProducerId when the epochs of the current producer id are exhausted: a new
    /// producer id at epoch 0. `record_last_epoch` (the producer gave its id and epoch)
    /// lets a retry of this call be recognised.
    pub fn prepare_producer_id_rotation(
        &mut self,
        new_producer_id: i64,
        timeout_ms: i32,
        now_ms: i64,
        record_last_epoch: bool,
    ) -> TxnTransit {
        assert!(
            !self.has_pending_transaction(),
            "a producer id is rotated only when no transaction is open"
        );
        self.prepare(TxnTransit {
            producer_id: new_producer_id,
            last_producer_id: self.producer_id,
            producer_epoch: 0,
            last_producer_epoch: if record_last_epoch {
                self.producer_epoch
            } else {
                NO_PRODUCER_EPOCH
            },
            timeout_ms,
            state: TransactionState::Empty,
            partitions: BTreeSet::new(),
            start_timestamp_ms: -1,
            last_update_timestamp_ms: now_ms,
        })
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn: the transaction is (or stays) open, with the
    /// partitions added. A transaction starts at its first addition.
    pub fn prepare_add_partitions(
        &mut self,
        added: impl IntoIterator<Item = TopicPartition>,
        now_ms: i64,
    ) -> TxnTransit {
        let start_timestamp_ms = match self.state {
            TransactionState::Empty
            | TransactionState::CompleteAbort
            | TransactionState::CompleteCommit => now_ms,
            _ => self.start_timestamp_ms,
        };
        let mut partitions = self.partitions.clone();
        partitions.extend(added);
        self.prepare(TxnTransit {
            producer_id: self.producer_id,
            last_producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            last_producer_epoch: self.last_producer_epoch,
            timeout_ms: self.timeout_ms,
            state: TransactionState::Ongoing,
            partitions,
            start_timestamp_ms,
            last_update_timestamp_ms: now_ms,
        })
    }

    /// EndTxn on an open transaction: PrepareCommit or PrepareAbort.
    pub fn prepare_abort_or_commit(&mut self, state: TransactionState, now_ms: i64) -> TxnTransit {
        self.prepare(TxnTransit {
            producer_id: self.producer_id,
            last_producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            last_producer_epoch: self.last_producer_epoch,
            timeout_ms: self.timeout_ms,
            state,
            partitions: self.partitions.clone(),
            start_timestamp_ms: self.start_timestamp_ms,
            last_update_timestamp_ms: now_ms,
        })
    }

    /// Fencing the current producer (a new one called InitProducerId, or its transaction
    /// timed out): the epoch goes up by one, and the open transaction is aborted under the
    /// new epoch, so every partition's ABORT marker also fences the old epoch there. As in
    /// Kafka, the bump is made in memory at once (the old producer is fenced from now on,
    /// even if the log append fails), and not made twice after a failed append.
    pub fn prepare_fence_and_abort(&mut self, now_ms: i64) -> Result<TxnTransit, ResponseError> {
        debug_assert_eq!(self.state, TransactionState::Ongoing);
        debug_assert!(self.pending.is_none());
        if !self.has_failed_epoch_fence {
            if self.producer_epoch == i16::MAX {
                // Cannot happen: producers never get an exhausted epoch, so one bump fits.
                return Err(ResponseError::UnknownServerError);
            }
            self.producer_epoch += 1;
        }
        self.last_producer_epoch = NO_PRODUCER_EPOCH;
        Ok(self.prepare_abort_or_commit(TransactionState::PrepareAbort, now_ms))
    }

    /// All markers written: CompleteCommit or CompleteAbort, with no partitions.
    pub fn prepare_complete(&mut self, now_ms: i64) -> TxnTransit {
        let state = if self.state == TransactionState::PrepareCommit {
            TransactionState::CompleteCommit
        } else {
            TransactionState::CompleteAbort
        };
        // The fencing abort is in the log now.
        self.has_failed_epoch_fence = false;
        self.prepare(TxnTransit {
            producer_id: self.producer_id,
            last_producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            last_producer_epoch: self.last_producer_epoch,
            timeout_ms: self.timeout_ms,
            state,
            partitions: BTreeSet::new(),
            start_timestamp_ms: self.start_timestamp_ms,
            last_update_timestamp_ms: now_ms,
        })
    }

    /// Expiration: the id is removed once its tombstone is written.
    pub fn prepare_dead(&mut self) -> TxnTransit {
        self.prepare(TxnTransit {
            producer_id: self.producer_id,
            last_producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            last_producer_epoch: self.last_producer_epoch,
            timeout_ms: self.timeout_ms,
            state: TransactionState::Dead,
            partitions: BTreeSet::new(),
            start_timestamp_ms: self.start_timestamp_ms,
            last_update_timestamp_ms: self.last_update_timestamp_ms,
        })
    }

    /// Marks `transit` pending. A second pending transition, or one Kafka's state diagram
    /// does not allow, is a bug in the coordinator: it would write a record that a
    /// coordinator loading the log could not make sense of.
    fn prepare(&mut self, transit: TxnTransit) -> TxnTransit {
        assert!(
            self.pending.is_none(),
            "transactional id {}: transition to {:?} prepared while {:?} is pending",
            self.transactional_id,
            transit.state,
            self.pending
        );
        assert!(
            valid_previous_states(transit.state).contains(&self.state),
            "transactional id {}: no transition from {:?} to {:?}",
            self.transactional_id,
            self.state,
            transit.state
        );
        assert!(
            transit.state == TransactionState::Dead || transit.producer_epoch >= 0,
            "transactional id {}: transition to a negative epoch",
            self.transactional_id
        );
        self.pending = Some(transit.state);
        transit
    }

    /// The pending transition's record is in the log: take its values (Kafka's
    /// `completeTransitionTo`, with the same checks).
    pub fn complete_transition(&mut self, transit: &TxnTransit) {
        let id = &self.transactional_id;
        assert_eq!(
            self.pending,
            Some(transit.state),
            "transactional id {id}: completing a transition that is not pending"
        );
        let same_producer = transit.producer_id == self.producer_id
            && transit.producer_epoch == self.producer_epoch;
        match transit.state {
            TransactionState::Empty => {
                let bumped = transit.producer_epoch as i32 == self.producer_epoch as i32 + 1
                    || (transit.producer_epoch == 0 && transit.producer_id != self.producer_id);
                assert!(
                    (transit.producer_epoch == self.producer_epoch || bumped)
                        && transit.partitions.is_empty()
                        && transit.start_timestamp_ms == -1,
                    "transactional id {id}: bad InitProducerId transition {transit:?}"
                );
                self.timeout_ms = transit.timeout_ms;
                // Kafka keeps the previous transaction's start time in memory here, while
                // the record says -1 (and a reload shows -1): the state follows the record.
                self.start_timestamp_ms = transit.start_timestamp_ms;
                self.partitions.clear();
                self.producer_epoch = transit.producer_epoch;
                self.last_producer_epoch = transit.last_producer_epoch;
                self.producer_id = transit.producer_id;
                self.last_producer_id = transit.last_producer_id;
            }
            TransactionState::Ongoing => {
                assert!(
                    same_producer
                        && self.partitions.is_subset(&transit.partitions)
                        && self.timeout_ms == transit.timeout_ms,
                    "transactional id {id}: bad AddPartitions transition {transit:?}"
                );
                self.start_timestamp_ms = transit.start_timestamp_ms;
                self.partitions.clone_from(&transit.partitions);
            }
            TransactionState::PrepareCommit | TransactionState::PrepareAbort => {
                assert!(
                    same_producer
                        && self.partitions == transit.partitions
                        && self.timeout_ms == transit.timeout_ms
                        && self.start_timestamp_ms == transit.start_timestamp_ms,
                    "transactional id {id}: bad EndTxn transition {transit:?}"
                );
            }
            TransactionState::CompleteCommit | TransactionState::CompleteAbort => {
                assert!(
                    same_producer
                        && self.timeout_ms == transit.timeout_ms
                        && transit.start_timestamp_ms != -1,
                    "transactional id {id}: bad completion {transit:?}"
                );
                self.start_timestamp_ms = transit.start_timestamp_ms;
                self.partitions.clear();
            }
            TransactionState::PrepareEpochFence | TransactionState::Dead => {
                panic!(
                    "transactional id {id}: {:?} is never completed",
                    transit.state
                )
            }
        }
        self.last_update_timestamp_ms = transit.last_update_timestamp_ms;
        self.pending = None;
        self.state = transit.state;
    }
}

/// The states a state may be entered from (Kafka's `validPreviousStates`).
fn valid_previous_states(state: TransactionState) -> &'static [TransactionState] {
    use TransactionState::*;
    match state {
        Empty => &[Empty, CompleteCommit, CompleteAbort],
        Ongoing => &[Ongoing, Empty, CompleteCommit, CompleteAbort],
        PrepareCommit => &[Ongoing],
        PrepareAbort => &[Ongoing, PrepareEpochFence],
        CompleteCommit => &[PrepareCommit],
        CompleteAbort => &[PrepareAbort],
        Dead => &[Empty, CompleteAbort, CompleteCommit],
        PrepareEpochFence => &[Ongoing],
    }
}
