//! What goes into the transaction coordinator and what comes out: plain values,
//! independent of the wire versions (the handlers translate), so the state machine can be
//! driven and tested without a network, a log or a clock.

use kafka_protocol::error::ResponseError;
use wharf_protocol::txn::control::TransactionResult;
use wharf_protocol::txn::log::TransactionLogRecord;

/// A Kafka error code; `None` is success.
pub type ErrorCode = Option<ResponseError>;

/// The driver's name for a request whose answer may come later (after a log append).
pub type Token = u64;

/// The coordinator's name for one append to `__transaction_state` it asked for.
pub type AppendId = u64;

/// A partition of a topic. Ordered by topic then partition, so sets of them iterate (and
/// are logged) in a stable order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.to_owned(),
            partition,
        }
    }
}

/// InitProducerId. `producer_id`/`producer_epoch` are -1 unless the producer asks to keep
/// its id after an error (KIP-360, v3+).
#[derive(Clone, Debug)]
pub struct InitProducerIdRequest {
    /// `None` for an idempotent producer without transactions.
    pub transactional_id: Option<String>,
    pub transaction_timeout_ms: i32,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The request's version: below 4 PRODUCER_FENCED is answered INVALID_PRODUCER_EPOCH.
    pub version: i16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitProducerIdResult {
    pub error: ErrorCode,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

/// One transaction of an AddPartitionsToTxn request (v0–v3 carry one, from a producer;
/// v4+ carry several, from brokers).
#[derive(Clone, Debug)]
pub struct AddPartitionsRequest {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub partitions: Vec<TopicPartition>,
    /// KIP-890 part 1 (v4+): only ask whether the partitions are in the transaction.
    pub verify_only: bool,
    /// Below 2, PRODUCER_FENCED is answered INVALID_PRODUCER_EPOCH; from 4 the request
    /// comes from a broker (internal topics allowed).
    pub version: i16,
}

#[derive(Clone, Debug)]
pub struct AddOffsetsRequest {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The group whose offsets the transaction will commit; its `__consumer_offsets`
    /// partition joins the transaction.
    pub group_id: String,
    /// Below 2, PRODUCER_FENCED is answered INVALID_PRODUCER_EPOCH.
    pub version: i16,
}

#[derive(Clone, Debug)]
pub struct EndTxnRequest {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub committed: bool,
    /// Below 2, PRODUCER_FENCED is answered INVALID_PRODUCER_EPOCH.
    pub version: i16,
}

/// An answer, now or after the log append it waited for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    InitProducerId(Token, InitProducerIdResult),
    /// One transaction's result of AddPartitionsToTxn, an error per partition.
    AddPartitions(Token, Vec<(TopicPartition, ErrorCode)>),
    AddOffsets(Token, ErrorCode),
    EndTxn(Token, ErrorCode),
}

impl Reply {
    pub fn token(&self) -> Token {
        match self {
            Reply::InitProducerId(t, _)
            | Reply::AddPartitions(t, _)
            | Reply::AddOffsets(t, _)
            | Reply::EndTxn(t, _) => *t,
        }
    }
}

/// A record to append to this coordinator's `__transaction_state` partition, with acks=all
/// and no compression (Kafka's rules for the topic). The driver appends only while the
/// partition's leader epoch is still `coordinator_epoch` (so a deposed coordinator cannot
/// write), then reports with [`crate::txn::TxnCoordinator::append_done`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogAppend {
    pub id: AppendId,
    pub coordinator_epoch: i32,
    pub record: TransactionLogRecord,
    /// How long the append may wait for the ISR (Kafka uses the transaction's timeout).
    pub timeout_ms: i64,
}

/// Markers to write (WriteTxnMarkers) to the leaders of `partitions`. The driver groups
/// them by leader, sends them, and reports each partition's outcome with
/// [`crate::txn::TxnCoordinator::markers_done`], echoing this request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkerRequest {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub coordinator_epoch: i32,
    pub result: TransactionResult,
    pub partitions: Vec<TopicPartition>,
}

/// How writing one partition's marker went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MarkerOutcome {
    /// The leader appended the marker (WriteTxnMarkers answered no error).
    Written,
    /// The leader's error, or NETWORK_EXCEPTION when the request got no answer.
    Failed(ResponseError),
    /// No leader is known for the partition: its topic was deleted; the partition is
    /// skipped, as Kafka skips it.
    PartitionGone,
}

/// What the driver must do after a call into the coordinator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub replies: Vec<Reply>,
    pub appends: Vec<LogAppend>,
    pub markers: Vec<MarkerRequest>,
    /// The coordinator wants another block of producer ids (Kafka's AllocateProducerIds);
    /// answer with `add_producer_ids` or `producer_ids_unavailable`.
    pub want_producer_ids: bool,
}

impl Effects {
    pub fn append(&mut self, mut other: Effects) {
        self.replies.append(&mut other.replies);
        self.appends.append(&mut other.appends);
        self.markers.append(&mut other.markers);
        self.want_producer_ids |= other.want_producer_ids;
    }

    pub fn is_empty(&self) -> bool {
        self.replies.is_empty()
            && self.appends.is_empty()
            && self.markers.is_empty()
            && !self.want_producer_ids
    }
}

/// DescribeTransactions' answer for one transactional id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionDescription {
    pub transactional_id: String,
    pub error: ErrorCode,
    pub state: &'static str,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub transaction_timeout_ms: i32,
    pub transaction_start_time_ms: i64,
    /// Topics with their partitions in the transaction, sorted.
    pub topics: Vec<(String, Vec<i32>)>,
}

/// ListTransactions' filters; empty ones match everything.
#[derive(Clone, Debug, Default)]
pub struct ListTransactionsFilter {
    pub states: Vec<String>,
    pub producer_ids: Vec<i64>,
    /// v1 (KIP-994): only transactions open longer than this; -1 for any.
    pub duration_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionListing {
    pub transactional_id: String,
    pub producer_id: i64,
    pub state: &'static str,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListTransactionsResult {
    pub error: ErrorCode,
    /// Requested state names Kafka does not know.
    pub unknown_state_filters: Vec<String>,
    pub transactions: Vec<TransactionListing>,
}
