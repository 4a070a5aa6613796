//! The controller frames as owned Rust values. Byte fields are `Bytes` slices of the frame
//! they were decoded from (no copy); ids are `u128`; node ids are Kafka's `i32`.

use bytes::Bytes;

/// One frame on the controller listener: a request, or the response to the request with
/// the same correlation id.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub correlation_id: u64,
    pub body: Body,
    /// On a controller's answer: the metadata log offset its change is committed at, for
    /// the forwarding broker to wait for; 0 elsewhere.
    pub metadata_offset: u64,
}

impl Frame {
    /// A frame with no metadata offset.
    pub fn new(correlation_id: u64, body: Body) -> Frame {
        Frame {
            correlation_id,
            body,
            metadata_offset: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Raft(RaftMessage),
    NotController(NotController),
    BrokerRegistrationRequest(BrokerRegistrationRequest),
    BrokerRegistrationResponse(BrokerRegistrationResponse),
    BrokerHeartbeatRequest(BrokerHeartbeatRequest),
    BrokerHeartbeatResponse(BrokerHeartbeatResponse),
    FetchMetadataRequest(FetchMetadataRequest),
    FetchMetadataResponse(FetchMetadataResponse),
    CreateTopicsRequest(CreateTopicsRequest),
    CreateTopicsResponse(TopicResults),
    DeleteTopicsRequest(DeleteTopicsRequest),
    DeleteTopicsResponse(TopicResults),
    CreatePartitionsRequest(CreatePartitionsRequest),
    CreatePartitionsResponse(ItemResults),
    AlterConfigsRequest(AlterConfigsRequest),
    AlterConfigsResponse(ItemResults),
    AllocateProducerIdsRequest(AllocateProducerIdsRequest),
    AllocateProducerIdsResponse(AllocateProducerIdsResponse),
    /// A request failed as a whole.
    ErrorResponse(WireError),
    AlterPartitionRequest(AlterPartitionRequest),
    AlterPartitionResponse(AlterPartitionResponse),
    DescribeQuorumRequest(DescribeQuorumRequest),
    DescribeQuorumResponse(DescribeQuorumResponse),
}

// ---------------------------------------------------------------------------------------
// Raft
// ---------------------------------------------------------------------------------------

/// raft-rs's `eraftpb::Message`, field by field (`msg_type` uses eraftpb's numbers).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RaftMessage {
    pub msg_type: u8,
    pub to: u64,
    pub from: u64,
    pub term: u64,
    pub log_term: u64,
    pub index: u64,
    pub entries: Vec<RaftEntry>,
    pub commit: u64,
    pub commit_term: u64,
    pub snapshot: Option<RaftSnapshot>,
    pub request_snapshot: u64,
    pub reject: bool,
    pub reject_hint: u64,
    pub context: Bytes,
    pub priority: i64,
}

/// `eraftpb::Entry`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RaftEntry {
    pub entry_type: u8,
    pub term: u64,
    pub index: u64,
    pub data: Bytes,
    pub context: Bytes,
}

/// `eraftpb::ConfState`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfState {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub voters_outgoing: Vec<u64>,
    pub learners_next: Vec<u64>,
    pub auto_leave: bool,
}

/// `eraftpb::Snapshot`: metadata and the encoded records that rebuild the image.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RaftSnapshot {
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfState,
    pub data: Bytes,
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// The schema's `ErrorKind`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    TopicAlreadyExists,
    InvalidTopic,
    UnknownTopic,
    UnknownTopicId,
    InvalidPartitions,
    InvalidReplicationFactor,
    InvalidReplicaAssignment,
    InvalidConfig,
    InvalidRequest,
    Storage,
    Unavailable,
    NotController,
    DuplicateBrokerRegistration,
    InconsistentClusterId,
    BrokerIdNotRegistered,
    StaleBrokerEpoch,
    PolicyViolation,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 17] = [
        ErrorKind::TopicAlreadyExists,
        ErrorKind::InvalidTopic,
        ErrorKind::UnknownTopic,
        ErrorKind::UnknownTopicId,
        ErrorKind::InvalidPartitions,
        ErrorKind::InvalidReplicationFactor,
        ErrorKind::InvalidReplicaAssignment,
        ErrorKind::InvalidConfig,
        ErrorKind::InvalidRequest,
        ErrorKind::Storage,
        ErrorKind::Unavailable,
        ErrorKind::NotController,
        ErrorKind::DuplicateBrokerRegistration,
        ErrorKind::InconsistentClusterId,
        ErrorKind::BrokerIdNotRegistered,
        ErrorKind::StaleBrokerEpoch,
        ErrorKind::PolicyViolation,
    ];

    /// The schema's number (0 is success, so kinds start at 1).
    pub fn code(self) -> u8 {
        ErrorKind::ALL
            .iter()
            .position(|k| *k == self)
            .expect("every kind is listed in ALL") as u8
            + 1
    }

    pub fn from_code(code: u8) -> Option<ErrorKind> {
        ErrorKind::ALL.get((code as usize).checked_sub(1)?).copied()
    }
}

/// A failure of a request or of one item of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError {
    pub kind: ErrorKind,
    pub message: String,
}

/// "Not me: ask `leader_id`" from a voter that is not the active controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotController {
    /// -1 when no leader is known.
    pub leader_id: i32,
    pub term: u64,
}

// ---------------------------------------------------------------------------------------
// Brokers
// ---------------------------------------------------------------------------------------

/// A named listener (`PLAINTEXT`, `CONTROLLER`, `REPLICATION`) with its advertised address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Listener {
    pub name: String,
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BrokerRegistrationRequest {
    pub node_id: i32,
    pub incarnation_id: u128,
    pub cluster_id: String,
    pub listeners: Vec<Listener>,
    pub rack: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BrokerRegistrationResponse {
    pub error: Option<WireError>,
    pub broker_epoch: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BrokerHeartbeatRequest {
    pub node_id: i32,
    pub broker_epoch: i64,
    pub applied_offset: u64,
    pub want_fence: bool,
    pub want_shut_down: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BrokerHeartbeatResponse {
    pub error: Option<WireError>,
    pub is_caught_up: bool,
    pub is_fenced: bool,
    pub should_shut_down: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FetchMetadataRequest {
    pub node_id: i32,
    pub from_offset: u64,
    pub max_bytes: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FetchMetadataResponse {
    pub error: Option<WireError>,
    pub committed_offset: u64,
    pub snapshot: Option<RaftSnapshot>,
    pub entries: Vec<RaftEntry>,
}

// ---------------------------------------------------------------------------------------
// Forwarded admin requests
// ---------------------------------------------------------------------------------------

/// A config name with a value, or `None` for Kafka's null.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionAssignment {
    pub partition: i32,
    pub replicas: Vec<i32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NewTopic {
    pub name: String,
    /// -1: the default (`num.partitions`), or the count the assignments imply.
    pub partitions: i32,
    /// -1: the default (`default.replication.factor`).
    pub replication_factor: i16,
    pub assignments: Vec<PartitionAssignment>,
    pub configs: Vec<ConfigEntry>,
    pub internal: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CreateTopicsRequest {
    pub topics: Vec<NewTopic>,
    pub validate_only: bool,
}

/// A topic as the controller reports it after a change.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicDescription {
    pub name: String,
    pub id: u128,
    pub partitions: i32,
    pub replication_factor: i16,
    /// The topic's config overrides.
    pub configs: Vec<ConfigEntry>,
    pub internal: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TopicResult {
    pub error: Option<WireError>,
    pub topic: Option<TopicDescription>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TopicResults {
    pub results: Vec<TopicResult>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TopicRef {
    Name(String),
    Id(u128),
}

#[derive(Clone, Debug, PartialEq)]
pub struct DeleteTopicsRequest {
    pub topics: Vec<TopicRef>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PartitionsIncrease {
    pub topic: String,
    pub total: i32,
    pub assignments: Vec<PartitionAssignment>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CreatePartitionsRequest {
    pub topics: Vec<PartitionsIncrease>,
    pub validate_only: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ItemResults {
    /// One per item of the request, in its order; `None` is success.
    pub results: Vec<Option<WireError>>,
}

/// IncrementalAlterConfigs operation, Kafka's `AlterConfigOp.OpType`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AlterOpType {
    Set,
    Delete,
    Append,
    Subtract,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AlterOp {
    pub op: AlterOpType,
    pub name: String,
    pub value: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TopicAlterations {
    pub topic: String,
    pub ops: Vec<AlterOp>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AlterConfigsRequest {
    pub topics: Vec<TopicAlterations>,
    pub validate_only: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AllocateProducerIdsRequest {
    pub node_id: i32,
    pub broker_epoch: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AllocateProducerIdsResponse {
    pub error: Option<WireError>,
    pub first_producer_id: i64,
    pub count: i32,
}

/// One member of a proposed ISR with the broker epoch its leader saw (KIP-903); -1 skips
/// the check.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct IsrMember {
    pub broker_id: i32,
    pub broker_epoch: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AlterPartitionData {
    pub partition: i32,
    pub leader_epoch: i32,
    pub new_isr: Vec<IsrMember>,
    pub leader_recovery_state: i8,
    pub partition_epoch: i32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AlterPartitionTopic {
    /// By name (versions 0-1) or by id (2+).
    pub topic: TopicRef,
    pub partitions: Vec<AlterPartitionData>,
}

/// Kafka's AlterPartitionRequest (API 56), with the Kafka `version` whose rules apply.
#[derive(Clone, Debug, PartialEq)]
pub struct AlterPartitionRequest {
    pub version: i16,
    pub broker_id: i32,
    pub broker_epoch: i64,
    pub topics: Vec<AlterPartitionTopic>,
}

/// One partition's answer: Kafka's `error_code`, and with 0 the state after the change.
#[derive(Clone, Debug, PartialEq)]
pub struct AlterPartitionResult {
    pub partition: i32,
    pub error_code: i16,
    pub leader_id: i32,
    pub leader_epoch: i32,
    pub isr: Vec<i32>,
    pub leader_recovery_state: i8,
    pub partition_epoch: i32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AlterPartitionTopicResult {
    pub topic: TopicRef,
    pub partitions: Vec<AlterPartitionResult>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AlterPartitionResponse {
    pub topics: Vec<AlterPartitionTopicResult>,
}

// ---------------------------------------------------------------------------------------
// DescribeQuorum
// ---------------------------------------------------------------------------------------

/// DescribeQuorum forwarded to the quorum leader by node `node_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribeQuorumRequest {
    pub node_id: i32,
}

/// A voter's or observer's progress as the quorum leader knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaProgress {
    pub node_id: i32,
    pub log_end_offset: u64,
    /// Wall-clock milliseconds when the leader last heard from it; -1 when never.
    pub last_heard_ms: i64,
}

/// The metadata quorum as its leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribeQuorumResponse {
    pub term: u64,
    /// -1 when no leader is known.
    pub leader_id: i32,
    /// The metadata log's high watermark.
    pub committed_offset: u64,
    pub voters: Vec<ReplicaProgress>,
    pub observers: Vec<ReplicaProgress>,
}
