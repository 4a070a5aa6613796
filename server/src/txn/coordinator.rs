//! The transaction coordinator of one `__transaction_state` partition, as a plain state
//! machine: requests, log append results, marker results and the passage of time go in;
//! replies, records to append, markers to write and producer-id block requests come out
//! (`Effects`). No I/O, no clock.
//!
//! The behaviour follows Kafka's `TransactionCoordinator` and `TransactionStateManager`:
//! where this file answers CONCURRENT_TRANSACTIONS, PRODUCER_FENCED or INVALID_TXN_STATE, so
//! does Kafka. A request that changes a transactional id's state is answered once its record
//! is in the log; an EndTxn is answered once PrepareCommit or PrepareAbort is, and the
//! markers and the CompleteCommit or CompleteAbort record follow on their own.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::error::ResponseError;
use wharf_protocol::batch::{NO_PRODUCER_EPOCH, NO_PRODUCER_ID};
use wharf_protocol::offsets_topic::{partition_for_group, OFFSETS_TOPIC_NAME};
use wharf_protocol::txn::control::TransactionResult;
use wharf_protocol::txn::log::{
    partition_for_transactional_id, TransactionLogRecord, TransactionState,
    TRANSACTION_STATE_TOPIC_NAME,
};
use wharf_protocol::txn::MAX_SCHEMA_STRING_BYTES;

use super::api::*;
use super::config::TxnConfig;
use super::metadata::{is_epoch_exhausted, TxnMetadata, TxnTransit};
use super::producer_ids::ProducerIdPool;

/// Whether this coordinator serves its partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not the partition's leader: every request gets NOT_COORDINATOR.
    NotCoordinator,
    /// Replaying the partition: requests get COORDINATOR_LOAD_IN_PROGRESS.
    Loading { coordinator_epoch: i32 },
    /// Serving, as the leader of the partition at `coordinator_epoch`.
    Active { coordinator_epoch: i32 },
}

/// Who is waiting for an EndTxn-like append.
#[derive(Clone, Debug)]
enum EndTxnCaller {
    /// A producer's EndTxn.
    Client { token: Token, version: i16 },
    /// An InitProducerId that is fencing an open transaction: it is answered
    /// CONCURRENT_TRANSACTIONS once the abort is logged, and retries.
    InitFence { token: Token, version: i16 },
    /// The timeout of an open transaction.
    Timeout,
}

/// What to do once an append went through (or failed).
#[derive(Clone, Debug)]
enum AfterAppend {
    InitProducerId {
        token: Token,
        version: i16,
    },
    AddPartitions {
        token: Token,
        version: i16,
        partitions: Vec<TopicPartition>,
    },
    AddOffsets {
        token: Token,
        version: i16,
    },
    /// PrepareCommit or PrepareAbort.
    EndTxn {
        caller: EndTxnCaller,
        result: TransactionResult,
        epoch_fence: bool,
    },
    /// CompleteCommit or CompleteAbort.
    Complete,
    /// The tombstone of an expired transactional id.
    Expire,
}

#[derive(Clone, Debug)]
struct PendingAppend {
    transactional_id: String,
    transit: TxnTransit,
    then: AfterAppend,
}

/// A transaction whose PrepareCommit or PrepareAbort is logged and whose markers are being
/// written (Kafka's `PendingCompleteTxn`). The partitions still waiting for a marker are
/// the transactional id's `partitions`.
#[derive(Clone, Debug)]
struct PendingCompletion {
    producer_id: i64,
    producer_epoch: i16,
    result: TransactionResult,
    /// The CompleteCommit or CompleteAbort to log once every marker is written.
    transit: TxnTransit,
    /// Partitions whose marker failed with a retriable error, sent again at `retry_at_ms`.
    retry: BTreeSet<TopicPartition>,
    retry_at_ms: Option<i64>,
    /// The completion record's append is in flight.
    appending: bool,
    /// The completion record's append failed with a retriable error; again at this time.
    append_retry_at_ms: Option<i64>,
}

/// The coordinator of one `__transaction_state` partition.
pub struct TxnCoordinator {
    config: TxnConfig,
    partition: i32,
    status: Status,
    txns: BTreeMap<String, TxnMetadata>,
    producer_ids: ProducerIdPool,
    appends: BTreeMap<AppendId, PendingAppend>,
    next_append_id: AppendId,
    completions: BTreeMap<String, PendingCompletion>,
    next_abort_check_ms: Option<i64>,
    next_expiration_check_ms: Option<i64>,
}

/// Kafka answers PRODUCER_FENCED (KIP-588) only to clients that know it; older versions of
/// each API get INVALID_PRODUCER_EPOCH, which they handle the same way.
fn for_version(error: ResponseError, knows_producer_fenced: bool) -> ResponseError {
    if error == ResponseError::ProducerFenced && !knows_producer_fenced {
        ResponseError::InvalidProducerEpoch
    } else {
        error
    }
}

fn init_knows_fenced(version: i16) -> bool {
    version >= 4
}

fn end_txn_knows_fenced(version: i16) -> bool {
    version >= 2
}

fn add_knows_fenced(version: i16) -> bool {
    version >= 2
}

/// The coordinator error for a failed append to its own partition (Kafka's mapping in
/// `TransactionStateManager.appendTransactionToLog`).
fn append_error(error: ResponseError) -> ResponseError {
    match error {
        ResponseError::UnknownTopicOrPartition
        | ResponseError::NotEnoughReplicas
        | ResponseError::NotEnoughReplicasAfterAppend
        | ResponseError::RequestTimedOut => ResponseError::CoordinatorNotAvailable,
        ResponseError::NotLeaderOrFollower | ResponseError::KafkaStorageError => {
            ResponseError::NotCoordinator
        }
        ResponseError::MessageTooLarge | ResponseError::RecordListTooLarge => {
            ResponseError::UnknownServerError
        }
        other => other,
    }
}

fn is_internal_topic(topic: &str) -> bool {
    topic == OFFSETS_TOPIC_NAME || topic == TRANSACTION_STATE_TOPIC_NAME
}

impl TxnCoordinator {
    /// The coordinator of `__transaction_state` partition `partition`, not yet loaded.
    pub fn new(config: TxnConfig, partition: i32) -> TxnCoordinator {
        TxnCoordinator {
            config,
            partition,
            status: Status::NotCoordinator,
            txns: BTreeMap::new(),
            producer_ids: ProducerIdPool::default(),
            appends: BTreeMap::new(),
            next_append_id: 1,
            completions: BTreeMap::new(),
            next_abort_check_ms: None,
            next_expiration_check_ms: None,
        }
    }

    pub fn config(&self) -> &TxnConfig {
        &self.config
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// Every transactional id this coordinator holds, in order.
    pub fn transactions(&self) -> impl Iterator<Item = &TxnMetadata> {
        self.txns.values()
    }

    pub fn transaction(&self, transactional_id: &str) -> Option<&TxnMetadata> {
        self.txns.get(transactional_id)
    }

    fn active_epoch(&self) -> Option<i32> {
        match self.status {
            Status::Active { coordinator_epoch } => Some(coordinator_epoch),
            _ => None,
        }
    }

    /// Whether this coordinator may answer for `transactional_id` now (Kafka's
    /// `getTransactionState` errors).
    fn check_owner(&self, transactional_id: &str) -> Result<(), ResponseError> {
        match self.status {
            Status::NotCoordinator => Err(ResponseError::NotCoordinator),
            Status::Loading { .. } => Err(ResponseError::CoordinatorLoadInProgress),
            Status::Active { .. } => {
                let partitions = self.config.transaction_state_log_num_partitions.max(1);
                if partition_for_transactional_id(transactional_id, partitions) == self.partition {
                    Ok(())
                } else {
                    Err(ResponseError::NotCoordinator)
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Producer ids
    // ---------------------------------------------------------------------------------

    /// A block of producer ids from the controller.
    pub fn add_producer_ids(&mut self, first: i64, count: i64) {
        self.producer_ids.add_block(first, count);
    }

    /// The controller could not give a block; the coordinator asks again when it needs one.
    pub fn producer_ids_unavailable(&mut self) {
        self.producer_ids.request_failed();
    }

    fn next_producer_id(&mut self, fx: &mut Effects) -> Option<i64> {
        let id = self.producer_ids.next_id();
        fx.want_producer_ids |= self.producer_ids.take_block_wanted();
        id
    }

    // ---------------------------------------------------------------------------------
    // InitProducerId
    // ---------------------------------------------------------------------------------

    pub fn init_producer_id(
        &mut self,
        now_ms: i64,
        token: Token,
        req: InitProducerIdRequest,
    ) -> Effects {
        let mut fx = Effects::default();
        let version = req.version;
        let fail = |fx: &mut Effects, error: ResponseError| {
            fx.replies.push(Reply::InitProducerId(
                token,
                InitProducerIdResult {
                    error: Some(for_version(error, init_knows_fenced(version))),
                    producer_id: NO_PRODUCER_ID,
                    producer_epoch: NO_PRODUCER_EPOCH,
                },
            ))
        };
        // Both or neither of the producer id and epoch (checked before anything else).
        let expected = match (req.producer_id, req.producer_epoch) {
            (NO_PRODUCER_ID, NO_PRODUCER_EPOCH) => None,
            (NO_PRODUCER_ID, _) | (_, NO_PRODUCER_EPOCH) => {
                fail(&mut fx, ResponseError::InvalidRequest);
                return fx;
            }
            (id, epoch) => Some((id, epoch)),
        };
        let Some(transactional_id) = req.transactional_id else {
            // An idempotent producer: a new id at epoch 0, from any broker.
            match self.next_producer_id(&mut fx) {
                Some(producer_id) => fx.replies.push(Reply::InitProducerId(
                    token,
                    InitProducerIdResult {
                        error: None,
                        producer_id,
                        producer_epoch: 0,
                    },
                )),
                None => fail(&mut fx, ResponseError::CoordinatorLoadInProgress),
            }
            return fx;
        };
        // An id the log's key cannot hold could never be stored (Kafka fails to serialize
        // it); refusing it up front is clearer.
        if transactional_id.is_empty() || transactional_id.len() > MAX_SCHEMA_STRING_BYTES {
            fail(&mut fx, ResponseError::InvalidRequest);
            return fx;
        }
        let timeout_ms = req.transaction_timeout_ms;
        if timeout_ms <= 0 || timeout_ms > self.config.transaction_max_timeout_ms {
            fail(&mut fx, ResponseError::InvalidTransactionTimeout);
            return fx;
        }
        if let Err(error) = self.check_owner(&transactional_id) {
            fail(&mut fx, error);
            return fx;
        }
        if !self.txns.contains_key(&transactional_id) {
            let Some(producer_id) = self.next_producer_id(&mut fx) else {
                fail(&mut fx, ResponseError::CoordinatorLoadInProgress);
                return fx;
            };
            self.txns.insert(
                transactional_id.clone(),
                TxnMetadata::new(&transactional_id, producer_id, timeout_ms, now_ms),
            );
        }
        let meta = self
            .txns
            .get_mut(&transactional_id)
            .expect("the transactional id was just found or created");
        if meta.pending.is_some() {
            fail(&mut fx, ResponseError::ConcurrentTransactions);
            return fx;
        }
        if let Some((producer_id, producer_epoch)) = expected {
            // A producer asking to keep its id (KIP-360) is fenced unless the id is new,
            // is its current one, or is the one just rotated away from at an exhausted
            // epoch (a retry whose answer was lost).
            let valid = meta.producer_epoch == NO_PRODUCER_EPOCH
                || producer_id == meta.producer_id
                || (producer_id == meta.last_producer_id && is_epoch_exhausted(producer_epoch));
            if !valid {
                fail(&mut fx, ResponseError::ProducerFenced);
                return fx;
            }
        }
        let (transit, then) = match meta.state {
            TransactionState::PrepareAbort | TransactionState::PrepareCommit => {
                fail(&mut fx, ResponseError::ConcurrentTransactions);
                return fx;
            }
            TransactionState::CompleteAbort
            | TransactionState::CompleteCommit
            | TransactionState::Empty => {
                let rotate = meta.is_epoch_exhausted()
                    && expected.is_none_or(|(_, epoch)| epoch == meta.producer_epoch);
                let transit = if rotate {
                    let id = self.producer_ids.next_id();
                    fx.want_producer_ids |= self.producer_ids.take_block_wanted();
                    let Some(new_producer_id) = id else {
                        fail(&mut fx, ResponseError::CoordinatorLoadInProgress);
                        return fx;
                    };
                    meta.prepare_producer_id_rotation(
                        new_producer_id,
                        timeout_ms,
                        now_ms,
                        expected.is_some(),
                    )
                } else {
                    match meta.prepare_increment_epoch(
                        timeout_ms,
                        expected.map(|(_, epoch)| epoch),
                        now_ms,
                    ) {
                        Ok(transit) => transit,
                        Err(error) => {
                            fail(&mut fx, error);
                            return fx;
                        }
                    }
                };
                (transit, AfterAppend::InitProducerId { token, version })
            }
            TransactionState::Ongoing => {
                // Abort the open transaction under a bumped epoch first. That epoch is
                // never handed out: the producer is answered CONCURRENT_TRANSACTIONS and
                // retries, which bumps the epoch again (and rotates the producer id if the
                // fencing used up the epochs).
                match meta.prepare_fence_and_abort(now_ms) {
                    Ok(transit) => (
                        transit,
                        AfterAppend::EndTxn {
                            caller: EndTxnCaller::InitFence { token, version },
                            result: TransactionResult::Abort,
                            epoch_fence: true,
                        },
                    ),
                    Err(error) => {
                        fail(&mut fx, error);
                        return fx;
                    }
                }
            }
            TransactionState::Dead | TransactionState::PrepareEpochFence => {
                debug_assert!(false, "{:?} is never a current state", meta.state);
                fail(&mut fx, ResponseError::UnknownServerError);
                return fx;
            }
        };
        self.append(&transactional_id, transit, then, &mut fx);
        fx
    }

    // ---------------------------------------------------------------------------------
    // AddPartitionsToTxn / AddOffsetsToTxn
    // ---------------------------------------------------------------------------------

    /// One transaction of an AddPartitionsToTxn request. `partition_exists` tells whether
    /// the metadata knows a partition (Kafka answers UNKNOWN_TOPIC_OR_PARTITION otherwise).
    pub fn add_partitions(
        &mut self,
        now_ms: i64,
        token: Token,
        req: AddPartitionsRequest,
        partition_exists: &dyn Fn(&TopicPartition) -> bool,
    ) -> Effects {
        let mut fx = Effects::default();
        let mut partitions: Vec<TopicPartition> = Vec::with_capacity(req.partitions.len());
        for tp in req.partitions {
            if !partitions.contains(&tp) {
                partitions.push(tp);
            }
        }
        let version = req.version;
        let all = |fx: &mut Effects, partitions: &[TopicPartition], error: ErrorCode| {
            let error = error.map(|e| for_version(e, add_knows_fenced(version)));
            fx.replies.push(Reply::AddPartitions(
                token,
                partitions.iter().map(|tp| (tp.clone(), error)).collect(),
            ))
        };
        // Partition checks come first (Kafka makes them before asking the coordinator):
        // clients may not add internal topics, and unknown partitions fail the whole
        // transaction, the others answered OPERATION_NOT_ATTEMPTED.
        let checked: Vec<(TopicPartition, ErrorCode)> = partitions
            .iter()
            .map(|tp| {
                let error = if version < 4 && is_internal_topic(&tp.topic) {
                    Some(ResponseError::TopicAuthorizationFailed)
                } else if !partition_exists(tp) {
                    Some(ResponseError::UnknownTopicOrPartition)
                } else {
                    None
                };
                (tp.clone(), error)
            })
            .collect();
        if checked.iter().any(|(_, e)| e.is_some()) {
            let errors = checked
                .into_iter()
                .map(|(tp, e)| (tp, e.or(Some(ResponseError::OperationNotAttempted))))
                .collect();
            fx.replies.push(Reply::AddPartitions(token, errors));
            return fx;
        }
        if req.transactional_id.is_empty() {
            all(&mut fx, &partitions, Some(ResponseError::InvalidRequest));
            return fx;
        }
        if req.verify_only {
            let results = self.verify_partitions(
                &req.transactional_id,
                req.producer_id,
                req.producer_epoch,
                &partitions,
            );
            fx.replies.push(Reply::AddPartitions(token, results));
            return fx;
        }
        match self.prepare_add(
            now_ms,
            &req.transactional_id,
            req.producer_id,
            req.producer_epoch,
            &partitions,
        ) {
            Err(error) => all(&mut fx, &partitions, error),
            Ok(transit) => self.append(
                &req.transactional_id,
                transit,
                AfterAppend::AddPartitions {
                    token,
                    version,
                    partitions,
                },
                &mut fx,
            ),
        }
        fx
    }

    /// AddOffsetsToTxn: the group's `__consumer_offsets` partition joins the transaction,
    /// so its TxnOffsetCommits are committed or aborted with it.
    pub fn add_offsets(&mut self, now_ms: i64, token: Token, req: AddOffsetsRequest) -> Effects {
        let mut fx = Effects::default();
        let version = req.version;
        let reply = |fx: &mut Effects, error: ErrorCode| {
            let error = error.map(|e| for_version(e, add_knows_fenced(version)));
            fx.replies.push(Reply::AddOffsets(token, error))
        };
        if req.transactional_id.is_empty() {
            reply(&mut fx, Some(ResponseError::InvalidRequest));
            return fx;
        }
        let offsets_partition = TopicPartition::new(
            OFFSETS_TOPIC_NAME,
            partition_for_group(
                &req.group_id,
                self.config.offsets_topic_num_partitions.max(1),
            ),
        );
        match self.prepare_add(
            now_ms,
            &req.transactional_id,
            req.producer_id,
            req.producer_epoch,
            std::slice::from_ref(&offsets_partition),
        ) {
            Err(error) => reply(&mut fx, error),
            Ok(transit) => self.append(
                &req.transactional_id,
                transit,
                AfterAppend::AddOffsets { token, version },
                &mut fx,
            ),
        }
        fx
    }

    /// Kafka's `handleAddPartitionsToTransaction` checks. `Err(None)` means nothing to
    /// write: the partitions are already in the open transaction.
    fn prepare_add(
        &mut self,
        now_ms: i64,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[TopicPartition],
    ) -> Result<TxnTransit, ErrorCode> {
        self.check_owner(transactional_id).map_err(Some)?;
        let meta = self
            .txns
            .get_mut(transactional_id)
            .ok_or(Some(ResponseError::InvalidProducerIdMapping))?;
        // An id whose InitProducerId never reached the log has no producer yet.
        if meta.producer_id != producer_id || meta.producer_epoch < 0 {
            return Err(Some(ResponseError::InvalidProducerIdMapping));
        }
        if meta.producer_epoch != producer_epoch {
            return Err(Some(ResponseError::ProducerFenced));
        }
        if meta.pending.is_some()
            || matches!(
                meta.state,
                TransactionState::PrepareCommit | TransactionState::PrepareAbort
            )
        {
            return Err(Some(ResponseError::ConcurrentTransactions));
        }
        if meta.state == TransactionState::Ongoing
            && partitions.iter().all(|tp| meta.partitions.contains(tp))
        {
            return Err(None);
        }
        if matches!(
            meta.state,
            TransactionState::Dead | TransactionState::PrepareEpochFence
        ) {
            debug_assert!(false, "{:?} is never a current state", meta.state);
            return Err(Some(ResponseError::UnknownServerError));
        }
        Ok(meta.prepare_add_partitions(partitions.iter().cloned(), now_ms))
    }

    /// KIP-890 part 1 (AddPartitionsToTxn v4 `verify_only`, from a partition leader about
    /// to append a producer's first transactional batch): is each partition in the open
    /// transaction of this producer? Nothing is written. A partition that is not gets
    /// TRANSACTION_ABORTABLE (the leader turns it into the error its Produce version knows).
    pub fn verify_partitions(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[TopicPartition],
    ) -> Vec<(TopicPartition, ErrorCode)> {
        let all = |error: ResponseError| {
            partitions
                .iter()
                .map(|tp| (tp.clone(), Some(error)))
                .collect::<Vec<_>>()
        };
        if transactional_id.is_empty() {
            return all(ResponseError::InvalidRequest);
        }
        if let Err(error) = self.check_owner(transactional_id) {
            return all(error);
        }
        let Some(meta) = self.txns.get(transactional_id) else {
            return all(ResponseError::InvalidProducerIdMapping);
        };
        if meta.producer_id != producer_id {
            return all(ResponseError::InvalidProducerIdMapping);
        }
        if meta.producer_epoch != producer_epoch {
            return all(ResponseError::ProducerFenced);
        }
        if matches!(
            meta.state,
            TransactionState::PrepareCommit | TransactionState::PrepareAbort
        ) {
            return all(ResponseError::ConcurrentTransactions);
        }
        partitions
            .iter()
            .map(|tp| {
                let error =
                    (!meta.partitions.contains(tp)).then_some(ResponseError::TransactionAbortable);
                (tp.clone(), error)
            })
            .collect()
    }

    // ---------------------------------------------------------------------------------
    // EndTxn
    // ---------------------------------------------------------------------------------

    pub fn end_txn(&mut self, now_ms: i64, token: Token, req: EndTxnRequest) -> Effects {
        let mut fx = Effects::default();
        let version = req.version;
        let result = TransactionResult::from_committed(req.committed);
        match self.prepare_end(
            now_ms,
            &req.transactional_id,
            req.producer_id,
            req.producer_epoch,
            result,
        ) {
            Err(error) => {
                let error = error.map(|e| for_version(e, end_txn_knows_fenced(version)));
                fx.replies.push(Reply::EndTxn(token, error));
            }
            Ok(transit) => self.append(
                &req.transactional_id,
                transit,
                AfterAppend::EndTxn {
                    caller: EndTxnCaller::Client { token, version },
                    result,
                    epoch_fence: false,
                },
                &mut fx,
            ),
        }
        fx
    }

    /// Kafka's `endTransaction` checks for a producer's EndTxn. `Err(None)` is a retry of
    /// an EndTxn that already completed: success without a write.
    fn prepare_end(
        &mut self,
        now_ms: i64,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        result: TransactionResult,
    ) -> Result<TxnTransit, ErrorCode> {
        if transactional_id.is_empty() {
            return Err(Some(ResponseError::InvalidRequest));
        }
        self.check_owner(transactional_id).map_err(Some)?;
        let meta = self
            .txns
            .get_mut(transactional_id)
            .ok_or(Some(ResponseError::InvalidProducerIdMapping))?;
        if meta.producer_id != producer_id {
            return Err(Some(ResponseError::InvalidProducerIdMapping));
        }
        // A producer's request must carry the current epoch exactly.
        if producer_epoch != meta.producer_epoch {
            return Err(Some(ResponseError::ProducerFenced));
        }
        if meta.pending.is_some() {
            return Err(Some(ResponseError::ConcurrentTransactions));
        }
        let commit = result == TransactionResult::Commit;
        match meta.state {
            TransactionState::Ongoing => {
                let state = if commit {
                    TransactionState::PrepareCommit
                } else {
                    TransactionState::PrepareAbort
                };
                Ok(meta.prepare_abort_or_commit(state, now_ms))
            }
            TransactionState::CompleteCommit if commit => Err(None),
            TransactionState::CompleteAbort if !commit => Err(None),
            TransactionState::PrepareCommit if commit => {
                Err(Some(ResponseError::ConcurrentTransactions))
            }
            TransactionState::PrepareAbort if !commit => {
                Err(Some(ResponseError::ConcurrentTransactions))
            }
            TransactionState::Dead | TransactionState::PrepareEpochFence => {
                debug_assert!(false, "{:?} is never a current state", meta.state);
                Err(Some(ResponseError::UnknownServerError))
            }
            // Empty, or the other outcome than the one asked for.
            _ => Err(Some(ResponseError::InvalidTxnState)),
        }
    }

    // ---------------------------------------------------------------------------------
    // Log appends
    // ---------------------------------------------------------------------------------

    fn append(
        &mut self,
        transactional_id: &str,
        transit: TxnTransit,
        then: AfterAppend,
        fx: &mut Effects,
    ) {
        let coordinator_epoch = self
            .active_epoch()
            .expect("transitions are prepared only by an active coordinator");
        let id = self.next_append_id;
        self.next_append_id += 1;
        let value = (transit.state != TransactionState::Dead).then(|| transit.to_log_value());
        fx.appends.push(LogAppend {
            id,
            coordinator_epoch,
            record: TransactionLogRecord {
                transactional_id: transactional_id.to_owned(),
                value,
            },
            timeout_ms: i64::from(transit.timeout_ms),
        });
        self.appends.insert(
            id,
            PendingAppend {
                transactional_id: transactional_id.to_owned(),
                transit,
                then,
            },
        );
    }

    /// An append this coordinator asked for went through (`Ok`) or failed with the log's
    /// error. Unknown ids (from before an unload) are ignored.
    pub fn append_done(
        &mut self,
        now_ms: i64,
        id: AppendId,
        result: Result<(), ResponseError>,
    ) -> Effects {
        let mut fx = Effects::default();
        let Some(pending) = self.appends.remove(&id) else {
            return fx;
        };
        let txn_id = pending.transactional_id;
        let Some(meta) = self.txns.get_mut(&txn_id) else {
            debug_assert!(false, "a transactional id with a pending append is kept");
            return fx;
        };
        let error = result.err().map(append_error);
        match (pending.then, error) {
            (AfterAppend::Expire, None) => {
                if meta.pending == Some(TransactionState::Dead)
                    && meta.producer_epoch == pending.transit.producer_epoch
                {
                    self.txns.remove(&txn_id);
                } else {
                    meta.pending = None;
                }
            }
            (AfterAppend::Expire, Some(_)) => meta.pending = None,
            (AfterAppend::Complete, None) => {
                meta.complete_transition(&pending.transit);
                self.completions.remove(&txn_id);
            }
            (AfterAppend::Complete, Some(error)) => match error {
                // The partition moved away; its next coordinator completes the transaction.
                ResponseError::NotCoordinator | ResponseError::CoordinatorLoadInProgress => {
                    meta.pending = None;
                    self.completions.remove(&txn_id);
                }
                // Anything else is written again after a pause, the transition still
                // pending (Kafka retries COORDINATOR_NOT_AVAILABLE and stops on the rest;
                // retrying them too keeps the transaction from hanging in Prepare*).
                _ => {
                    if let Some(c) = self.completions.get_mut(&txn_id) {
                        c.appending = false;
                        c.append_retry_at_ms = Some(now_ms + self.config.retry_backoff_ms);
                    }
                }
            },
            (then, Some(error)) => {
                meta.pending = None;
                match then {
                    AfterAppend::InitProducerId { token, version } => {
                        fx.replies.push(Reply::InitProducerId(
                            token,
                            InitProducerIdResult {
                                error: Some(for_version(error, init_knows_fenced(version))),
                                producer_id: NO_PRODUCER_ID,
                                producer_epoch: NO_PRODUCER_EPOCH,
                            },
                        ))
                    }
                    AfterAppend::AddPartitions {
                        token,
                        version,
                        partitions,
                    } => {
                        let error = Some(for_version(error, add_knows_fenced(version)));
                        fx.replies.push(Reply::AddPartitions(
                            token,
                            partitions.into_iter().map(|tp| (tp, error)).collect(),
                        ))
                    }
                    AfterAppend::AddOffsets { token, version } => {
                        fx.replies.push(Reply::AddOffsets(
                            token,
                            Some(for_version(error, add_knows_fenced(version))),
                        ))
                    }
                    AfterAppend::EndTxn {
                        caller,
                        epoch_fence,
                        ..
                    } => {
                        if epoch_fence {
                            // The bumped epoch stays in memory but was never handed out:
                            // the next fencing reuses it.
                            meta.has_failed_epoch_fence = true;
                        }
                        match caller {
                            EndTxnCaller::Client { token, version } => {
                                fx.replies.push(Reply::EndTxn(
                                    token,
                                    Some(for_version(error, end_txn_knows_fenced(version))),
                                ))
                            }
                            EndTxnCaller::InitFence { token, version } => {
                                fx.replies.push(Reply::InitProducerId(
                                    token,
                                    InitProducerIdResult {
                                        error: Some(for_version(error, init_knows_fenced(version))),
                                        producer_id: NO_PRODUCER_ID,
                                        producer_epoch: NO_PRODUCER_EPOCH,
                                    },
                                ))
                            }
                            EndTxnCaller::Timeout => {}
                        }
                    }
                    AfterAppend::Complete | AfterAppend::Expire => {
                        unreachable!("handled above")
                    }
                }
            }
            (then, None) => {
                meta.complete_transition(&pending.transit);
                match then {
                    AfterAppend::InitProducerId { token, .. } => {
                        fx.replies.push(Reply::InitProducerId(
                            token,
                            InitProducerIdResult {
                                error: None,
                                producer_id: meta.producer_id,
                                producer_epoch: meta.producer_epoch,
                            },
                        ))
                    }
                    AfterAppend::AddPartitions {
                        token, partitions, ..
                    } => fx.replies.push(Reply::AddPartitions(
                        token,
                        partitions.into_iter().map(|tp| (tp, None)).collect(),
                    )),
                    AfterAppend::AddOffsets { token, .. } => {
                        fx.replies.push(Reply::AddOffsets(token, None))
                    }
                    AfterAppend::EndTxn { caller, result, .. } => {
                        match caller {
                            EndTxnCaller::Client { token, .. } => {
                                fx.replies.push(Reply::EndTxn(token, None))
                            }
                            EndTxnCaller::InitFence { token, .. } => {
                                fx.replies.push(Reply::InitProducerId(
                                    token,
                                    InitProducerIdResult {
                                        error: Some(ResponseError::ConcurrentTransactions),
                                        producer_id: NO_PRODUCER_ID,
                                        producer_epoch: NO_PRODUCER_EPOCH,
                                    },
                                ))
                            }
                            EndTxnCaller::Timeout => {}
                        }
                        self.start_completion(now_ms, &txn_id, result, &mut fx);
                    }
                    AfterAppend::Complete | AfterAppend::Expire => {
                        unreachable!("handled above")
                    }
                }
            }
        }
        fx
    }

    // ---------------------------------------------------------------------------------
    // Markers and completion
    // ---------------------------------------------------------------------------------

    /// PrepareCommit or PrepareAbort is in the log: write the markers, then the completion.
    fn start_completion(
        &mut self,
        now_ms: i64,
        txn_id: &str,
        result: TransactionResult,
        fx: &mut Effects,
    ) {
        let Some(meta) = self.txns.get_mut(txn_id) else {
            return;
        };
        let transit = meta.prepare_complete(now_ms);
        let completion = PendingCompletion {
            producer_id: meta.producer_id,
            producer_epoch: meta.producer_epoch,
            result,
            transit,
            retry: BTreeSet::new(),
            retry_at_ms: None,
            appending: false,
            append_retry_at_ms: None,
        };
        let partitions: Vec<TopicPartition> = meta.partitions.iter().cloned().collect();
        self.completions.insert(txn_id.to_owned(), completion);
        if !partitions.is_empty() {
            self.send_markers(txn_id, partitions, fx);
        }
        self.maybe_write_completion(txn_id, fx);
    }

    fn send_markers(&self, txn_id: &str, partitions: Vec<TopicPartition>, fx: &mut Effects) {
        let (Some(coordinator_epoch), Some(c)) =
            (self.active_epoch(), self.completions.get(txn_id))
        else {
            return;
        };
        fx.markers.push(MarkerRequest {
            transactional_id: txn_id.to_owned(),
            producer_id: c.producer_id,
            producer_epoch: c.producer_epoch,
            coordinator_epoch,
            result: c.result,
            partitions,
        });
    }

    /// Every marker is written: log CompleteCommit or CompleteAbort.
    fn maybe_write_completion(&mut self, txn_id: &str, fx: &mut Effects) {
        let done = self
            .txns
            .get(txn_id)
            .is_some_and(|meta| meta.partitions.is_empty());
        let Some(c) = self.completions.get_mut(txn_id) else {
            return;
        };
        if !done || c.appending || c.append_retry_at_ms.is_some() {
            return;
        }
        c.appending = true;
        let transit = c.transit.clone();
        self.append(txn_id, transit, AfterAppend::Complete, fx);
    }

    /// The outcome of writing `request`'s markers, per partition. Answers for another
    /// coordinator epoch or producer than the transaction being completed are ignored.
    pub fn markers_done(
        &mut self,
        now_ms: i64,
        request: &MarkerRequest,
        outcomes: &[(TopicPartition, MarkerOutcome)],
    ) -> Effects {
        let mut fx = Effects::default();
        let txn_id = &request.transactional_id;
        if self.active_epoch() != Some(request.coordinator_epoch) {
            return fx;
        }
        let Some(c) = self.completions.get_mut(txn_id) else {
            return fx;
        };
        if c.producer_id != request.producer_id || c.producer_epoch != request.producer_epoch {
            return fx;
        }
        let Some(meta) = self.txns.get_mut(txn_id) else {
            return fx;
        };
        let mut abandon = false;
        for (tp, outcome) in outcomes {
            if !meta.partitions.contains(tp) {
                continue;
            }
            match outcome {
                MarkerOutcome::Written | MarkerOutcome::PartitionGone => {
                    meta.partitions.remove(tp);
                }
                // The producer could not have written to such a partition.
                MarkerOutcome::Failed(
                    ResponseError::UnsupportedForMessageFormat | ResponseError::UnsupportedVersion,
                ) => {
                    meta.partitions.remove(tp);
                }
                // A newer producer epoch or coordinator exists: this coordinator is stale
                // and stops; the transaction stays pending until the partition is loaded
                // again (as in Kafka).
                MarkerOutcome::Failed(
                    ResponseError::InvalidProducerEpoch
                    | ResponseError::TransactionCoordinatorFenced,
                ) => abandon = true,
                // Leadership moving, ISR short, timeouts, a lost connection: send again.
                MarkerOutcome::Failed(_) => {
                    c.retry.insert(tp.clone());
                }
            }
        }
        if abandon {
            self.completions.remove(txn_id);
            return fx;
        }
        if !c.retry.is_empty() && c.retry_at_ms.is_none() {
            c.retry_at_ms = Some(now_ms + self.config.retry_backoff_ms);
        }
        self.maybe_write_completion(txn_id, &mut fx);
        fx
    }

    // ---------------------------------------------------------------------------------
    // Time
    // ---------------------------------------------------------------------------------

    /// Let time pass: resend failed markers and completions, abort transactions past their
    /// timeout, expire idle transactional ids.
    pub fn tick(&mut self, now_ms: i64) -> Effects {
        let mut fx = Effects::default();
        if self.active_epoch().is_none() {
            return fx;
        }
        let due: Vec<String> = self
            .completions
            .iter()
            .filter(|(_, c)| {
                c.retry_at_ms.is_some_and(|t| t <= now_ms)
                    || c.append_retry_at_ms.is_some_and(|t| t <= now_ms)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for txn_id in due {
            let Some(c) = self.completions.get_mut(&txn_id) else {
                continue;
            };
            if c.retry_at_ms.is_some_and(|t| t <= now_ms) {
                c.retry_at_ms = None;
                let retry: Vec<TopicPartition> = std::mem::take(&mut c.retry).into_iter().collect();
                self.send_markers(&txn_id, retry, &mut fx);
            }
            let Some(c) = self.completions.get_mut(&txn_id) else {
                continue;
            };
            if c.append_retry_at_ms.is_some_and(|t| t <= now_ms) {
                c.append_retry_at_ms = None;
                self.maybe_write_completion(&txn_id, &mut fx);
            }
        }
        let interval = self.config.abort_timed_out_transaction_cleanup_interval_ms;
        match self.next_abort_check_ms {
            Some(at) if at <= now_ms => {
                self.abort_timed_out(now_ms, &mut fx);
                self.next_abort_check_ms = Some(now_ms + interval);
            }
            Some(_) => {}
            None => self.next_abort_check_ms = Some(now_ms + interval),
        }
        let interval = self.config.remove_expired_transaction_cleanup_interval_ms;
        match self.next_expiration_check_ms {
            Some(at) if at <= now_ms => {
                self.expire(now_ms, &mut fx);
                self.next_expiration_check_ms = Some(now_ms + interval);
            }
            Some(_) => {}
            None => self.next_expiration_check_ms = Some(now_ms + interval),
        }
        fx.want_producer_ids |= self.producer_ids.take_block_wanted();
        fx
    }

    /// The earliest time at which `tick` has something to do.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        self.active_epoch()?;
        let mut next = self.next_abort_check_ms.min(self.next_expiration_check_ms);
        for c in self.completions.values() {
            for t in [c.retry_at_ms, c.append_retry_at_ms].into_iter().flatten() {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }

    /// Abort every open transaction older than its timeout, fencing its producer (Kafka's
    /// `abortTimedOutTransactions`): a zombie that wakes up finds its epoch fenced.
    fn abort_timed_out(&mut self, now_ms: i64, fx: &mut Effects) {
        let timed_out: Vec<String> = self
            .txns
            .values()
            .filter(|m| {
                m.pending.is_none()
                    && m.state == TransactionState::Ongoing
                    && m.start_timestamp_ms.saturating_add(i64::from(m.timeout_ms)) < now_ms
            })
            .map(|m| m.transactional_id.clone())
            .collect();
        for txn_id in timed_out {
            let Some(meta) = self.txns.get_mut(&txn_id) else {
                continue;
            };
            if let Ok(transit) = meta.prepare_fence_and_abort(now_ms) {
                self.append(
                    &txn_id,
                    transit,
                    AfterAppend::EndTxn {
                        caller: EndTxnCaller::Timeout,
                        result: TransactionResult::Abort,
                        epoch_fence: true,
                    },
                    fx,
                );
            }
        }
    }

    /// Remove transactional ids idle for `transactional.id.expiration.ms` with no open
    /// transaction: their tombstones go to the log, and they go once those are written.
    fn expire(&mut self, now_ms: i64, fx: &mut Effects) {
        let horizon = now_ms.saturating_sub(self.config.transactional_id_expiration_ms);
        let expired: Vec<String> = self
            .txns
            .values()
            .filter(|m| {
                m.pending.is_none()
                    && matches!(
                        m.state,
                        TransactionState::Empty
                            | TransactionState::CompleteCommit
                            | TransactionState::CompleteAbort
                    )
                    && m.last_update_timestamp_ms <= horizon
            })
            .map(|m| m.transactional_id.clone())
            .collect();
        for txn_id in expired {
            let Some(meta) = self.txns.get_mut(&txn_id) else {
                continue;
            };
            let transit = meta.prepare_dead();
            self.append(&txn_id, transit, AfterAppend::Expire, fx);
        }
    }

    // ---------------------------------------------------------------------------------
    // Loading and unloading
    // ---------------------------------------------------------------------------------

    /// This node became the partition's leader at `coordinator_epoch`: forget everything
    /// and start replaying the partition ([`Self::replay`], then [`Self::finish_load`]).
    /// Requests waiting for an append from before are answered NOT_COORDINATOR.
    pub fn begin_load(&mut self, coordinator_epoch: i32) -> Effects {
        let fx = self.unload();
        self.status = Status::Loading { coordinator_epoch };
        fx
    }

    /// One record of the partition, in log order: the last value of each id wins, a
    /// tombstone removes it. A value no coordinator writes (state Dead or
    /// PrepareEpochFence, a negative producer id or epoch) counts as a tombstone, so
    /// damaged records cannot lead the state machine into a transition it refuses.
    pub fn replay(&mut self, record: &TransactionLogRecord) {
        if !matches!(self.status, Status::Loading { .. }) {
            debug_assert!(false, "replay outside a load");
            return;
        }
        let id = &record.transactional_id;
        let usable = record.value.as_ref().filter(|v| {
            !matches!(
                v.state,
                TransactionState::Dead | TransactionState::PrepareEpochFence
            ) && v.producer_id >= 0
                && v.producer_epoch >= 0
        });
        match usable {
            Some(value) => {
                self.txns
                    .insert(id.clone(), TxnMetadata::from_log(id, value));
            }
            None => {
                self.txns.remove(id);
            }
        }
    }

    /// The partition is replayed: serve it, and finish every transaction the previous
    /// coordinator left in PrepareCommit or PrepareAbort by writing its markers again.
    pub fn finish_load(&mut self, now_ms: i64) -> Effects {
        let mut fx = Effects::default();
        let Status::Loading { coordinator_epoch } = self.status else {
            return fx;
        };
        self.status = Status::Active { coordinator_epoch };
        self.next_abort_check_ms =
            Some(now_ms + self.config.abort_timed_out_transaction_cleanup_interval_ms);
        self.next_expiration_check_ms =
            Some(now_ms + self.config.remove_expired_transaction_cleanup_interval_ms);
        let unfinished: Vec<(String, TransactionResult)> = self
            .txns
            .values()
            .filter_map(|m| match m.state {
                TransactionState::PrepareCommit => {
                    Some((m.transactional_id.clone(), TransactionResult::Commit))
                }
                TransactionState::PrepareAbort => {
                    Some((m.transactional_id.clone(), TransactionResult::Abort))
                }
                _ => None,
            })
            .collect();
        for (txn_id, result) in unfinished {
            self.start_completion(now_ms, &txn_id, result, &mut fx);
        }
        fx.want_producer_ids |= self.producer_ids.take_block_wanted();
        fx
    }

    /// Replay `records` and serve: [`Self::begin_load`], [`Self::replay`] each,
    /// [`Self::finish_load`].
    pub fn load<'a>(
        &mut self,
        now_ms: i64,
        coordinator_epoch: i32,
        records: impl IntoIterator<Item = &'a TransactionLogRecord>,
    ) -> Effects {
        let mut fx = self.begin_load(coordinator_epoch);
        for record in records {
            self.replay(record);
        }
        fx.append(self.finish_load(now_ms));
        fx
    }

    /// The partition moved away: forget its state. Requests waiting for an append are
    /// answered NOT_COORDINATOR; answers to appends and markers that arrive later are
    /// ignored. Producer ids not handed out are kept (they are this node's).
    pub fn unload(&mut self) -> Effects {
        let mut fx = Effects::default();
        let error = Some(ResponseError::NotCoordinator);
        for (_, pending) in std::mem::take(&mut self.appends) {
            match pending.then {
                AfterAppend::InitProducerId { token, .. }
                | AfterAppend::EndTxn {
                    caller: EndTxnCaller::InitFence { token, .. },
                    ..
                } => fx.replies.push(Reply::InitProducerId(
                    token,
                    InitProducerIdResult {
                        error,
                        producer_id: NO_PRODUCER_ID,
                        producer_epoch: NO_PRODUCER_EPOCH,
                    },
                )),
                AfterAppend::AddPartitions {
                    token, partitions, ..
                } => fx.replies.push(Reply::AddPartitions(
                    token,
                    partitions.into_iter().map(|tp| (tp, error)).collect(),
                )),
                AfterAppend::AddOffsets { token, .. } => {
                    fx.replies.push(Reply::AddOffsets(token, error))
                }
                AfterAppend::EndTxn {
                    caller: EndTxnCaller::Client { token, .. },
                    ..
                } => fx.replies.push(Reply::EndTxn(token, error)),
                AfterAppend::EndTxn {
                    caller: EndTxnCaller::Timeout,
                    ..
                }
                | AfterAppend::Complete
                | AfterAppend::Expire => {}
            }
        }
        self.txns.clear();
        self.completions.clear();
        self.next_abort_check_ms = None;
        self.next_expiration_check_ms = None;
        self.status = Status::NotCoordinator;
        fx
    }

    // ---------------------------------------------------------------------------------
    // DescribeTransactions / ListTransactions
    // ---------------------------------------------------------------------------------

    pub fn describe(&self, transactional_id: &str) -> TransactionDescription {
        let mut d = TransactionDescription {
            transactional_id: transactional_id.to_owned(),
            error: None,
            state: "",
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            transaction_timeout_ms: 0,
            transaction_start_time_ms: -1,
            topics: Vec::new(),
        };
        if transactional_id.is_empty() {
            d.error = Some(ResponseError::InvalidRequest);
            return d;
        }
        if let Err(error) = self.check_owner(transactional_id) {
            d.error = Some(error);
            return d;
        }
        let Some(meta) = self.txns.get(transactional_id) else {
            d.error = Some(ResponseError::TransactionalIdNotFound);
            return d;
        };
        let mut topics: Vec<(String, Vec<i32>)> = Vec::new();
        for tp in &meta.partitions {
            match topics.last_mut() {
                Some((topic, partitions)) if *topic == tp.topic => partitions.push(tp.partition),
                _ => topics.push((tp.topic.clone(), vec![tp.partition])),
            }
        }
        d.state = meta.state.name();
        d.producer_id = meta.producer_id;
        d.producer_epoch = meta.producer_epoch;
        d.transaction_timeout_ms = meta.timeout_ms;
        d.transaction_start_time_ms = meta.start_timestamp_ms;
        d.topics = topics;
        d
    }

    /// The transactional ids matching `filter`, sorted. State names are matched exactly;
    /// names Kafka does not know are returned in `unknown_state_filters`.
    pub fn list(&self, now_ms: i64, filter: &ListTransactionsFilter) -> ListTransactionsResult {
        let mut out = ListTransactionsResult::default();
        match self.status {
            Status::Loading { .. } => {
                out.error = Some(ResponseError::CoordinatorLoadInProgress);
                return out;
            }
            Status::NotCoordinator => return out,
            Status::Active { .. } => {}
        }
        let mut states = Vec::new();
        for name in &filter.states {
            match TransactionState::from_name(name) {
                Some(state) => states.push(state),
                None => out.unknown_state_filters.push(name.clone()),
            }
        }
        for meta in self.txns.values() {
            let wanted = (filter.producer_ids.is_empty()
                || filter.producer_ids.contains(&meta.producer_id))
                && (filter.states.is_empty() || states.contains(&meta.state))
                && (filter.duration_ms < 0
                    || now_ms.saturating_sub(meta.start_timestamp_ms) > filter.duration_ms);
            if wanted {
                out.transactions.push(TransactionListing {
                    transactional_id: meta.transactional_id.clone(),
                    producer_id: meta.producer_id,
                    state: meta.state.name(),
                });
            }
        }
        out
    }
}
