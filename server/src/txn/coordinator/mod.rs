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
//!
//! - `requests`: InitProducerId, AddPartitionsToTxn (and its verification), AddOffsetsToTxn,
//!   EndTxn;
//! - `completion`: log appends and their results, markers, completion records, timeouts and
//!   expiration;
//! - `load`: loading the partition from its log, and unloading it.

mod completion;
mod load;
mod requests;

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

use crate::txn::api::*;
use crate::txn::config::TxnConfig;
use crate::txn::metadata::{is_epoch_exhausted, TxnMetadata, TxnTransit};
use crate::txn::producer_ids::ProducerIdPool;

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

/// AddPartitionsToTxn v5 is the first whose callers know TRANSACTION_ABORTABLE (KIP-890).
/// A v4 caller (a Kafka 3.6/3.7 partition leader verifying a write) is answered what
/// coordinators of its time answered for a partition outside the transaction,
/// INVALID_TXN_STATE, which it hands to its producer as is.
fn add_knows_transaction_abortable(version: i16) -> bool {
    version >= 5
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
