//! What goes into the group coordinator and what comes out: plain values, independent of
//! the wire versions (the handlers in `kafka/` translate), so the state machine can be
//! driven and tested without a network or a clock.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use wharf_protocol::offsets_topic::OffsetsRecord;

/// A Kafka error code; `None` is success.
pub type ErrorCode = Option<ResponseError>;

/// The driver's name for a request whose answer may come later (JoinGroup, SyncGroup).
pub type Token = u64;

/// One protocol a member supports (e.g. "range" with its subscription bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protocol {
    pub name: String,
    pub metadata: Bytes,
}

#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub group_id: String,
    /// Empty for a member joining for the first time.
    pub member_id: String,
    /// `group.instance.id` of a static member (KIP-345).
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    /// v0 has no rebalance timeout: the handler passes the session timeout.
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<Protocol>,
    /// KIP-394: JoinGroup v4+ must first obtain a member id (MEMBER_ID_REQUIRED).
    pub require_known_member_id: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinResponse {
    pub error: ErrorCode,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member with its metadata for the chosen protocol; only for the leader.
    pub members: Vec<JoinMember>,
    /// KIP-814: the leader need not compute an assignment (a static leader rejoined).
    pub skip_assignment: bool,
}

impl JoinResponse {
    pub fn error(member_id: &str, error: ResponseError) -> JoinResponse {
        JoinResponse {
            error: Some(error),
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_owned(),
            members: Vec::new(),
            skip_assignment: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SyncRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// v5+: checked against the group's when present.
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// The leader's assignment per member; empty from followers.
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncResponse {
    pub error: ErrorCode,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResponse {
    pub fn error(error: ResponseError) -> SyncResponse {
        SyncResponse {
            error: Some(error),
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct HeartbeatRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

/// One member leaving; v0–v2 carry exactly one, with no instance id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeavingMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaveResponse {
    pub error: ErrorCode,
    /// One per leaving member, in request order.
    pub members: Vec<(LeavingMember, ErrorCode)>,
}

#[derive(Clone, Debug)]
pub struct CommitPartition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    /// Null metadata is stored as the empty string, as Kafka does.
    pub metadata: Option<String>,
    /// OffsetCommit v1's per-partition timestamp; -1 means "now".
    pub commit_timestamp_ms: i64,
}

#[derive(Clone, Debug)]
pub struct CommitRequest {
    pub group_id: String,
    /// -1 for commits outside group management ("simple consumer", `assign()`).
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// OffsetCommit v2–v4 `retention_time_ms`; -1 for the broker default.
    pub retention_time_ms: i64,
    pub partitions: Vec<CommitPartition>,
}

/// The transactional producer behind a TxnOffsetCommit.
#[derive(Clone, Debug)]
pub struct TxnCommitter {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The request's version: v4+ knows TRANSACTION_ABORTABLE (KIP-890).
    pub version: i16,
}

/// A stored committed offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// Explicit expiry from a v2–v4 commit's retention time; -1 when none.
    pub expire_timestamp_ms: i64,
}

/// One group as the metrics endpoint reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSummary {
    pub group_id: String,
    /// Kafka's state name (`Stable`, `Empty`, ...).
    pub state: &'static str,
    pub members: usize,
    /// Committed offsets: (topic, partition, offset).
    pub offsets: Vec<(String, i32, i64)>,
}

/// Committed offsets by topic and partition, as OffsetFetch returns them (`None`: none).
pub type FetchedOffsets = Vec<(String, Vec<(i32, Option<CommittedOffset>)>)>;

/// The outcome of validating an OffsetCommit: errors per requested partition (request
/// order), the records to append, and the offsets to apply once they are durable.
#[derive(Clone, Debug, Default)]
pub struct CommitPlan {
    pub errors: Vec<ErrorCode>,
    pub records: Vec<OffsetsRecord>,
    pub accepted: Vec<(String, i32, CommittedOffset)>,
}

/// DescribeGroups' view of a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Metadata for the chosen protocol; empty unless the group is Stable.
    pub metadata: Bytes,
    /// Empty unless the group is Stable.
    pub assignment: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub error: ErrorCode,
    /// Kafka's state name: Empty, PreparingRebalance, CompletingRebalance, Stable, Dead.
    pub state: &'static str,
    pub protocol_type: String,
    /// The chosen protocol; empty unless the group is Stable.
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    pub state: &'static str,
    /// KIP-848: "classic" or "consumer".
    pub group_type: &'static str,
}

/// An answer that became ready: deliver it to the request named by the token, after
/// `Effects::records` are durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Join(Token, JoinResponse),
    Sync(Token, SyncResponse),
}

/// What the driver must do after feeding the coordinator an input: append `records` to
/// `__consumer_offsets` (each to its group's partition), then deliver `replies`.
#[derive(Clone, Debug, Default)]
pub struct Effects {
    pub records: Vec<OffsetsRecord>,
    pub replies: Vec<Reply>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.replies.is_empty()
    }

    pub fn append(&mut self, mut other: Effects) {
        self.records.append(&mut other.records);
        self.replies.append(&mut other.replies);
    }
}
