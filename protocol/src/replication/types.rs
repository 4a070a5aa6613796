//! The replication frames as owned Rust values. Topic ids are `u128`, node ids Kafka's
//! `i32`, error codes Kafka's `i16`; -1 stands for "none" where Kafka uses it.

use bytes::Bytes;

/// A decoded frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    FetchRequest(FetchRequest),
    FetchResponse(FetchResponse),
}

/// A follower's fetch: one request for every partition it follows on the leader's node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    /// Set by [`super::FollowerConnection::send`]; increases on a connection.
    pub correlation_id: i32,
    /// The follower's node id (>= 0).
    pub replica_id: i32,
    /// The follower's broker epoch (KIP-903), -1 when unknown.
    pub broker_epoch: i64,
    /// How long the leader may hold the request while it has fewer than `min_bytes`.
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    /// Record bytes wanted in the whole response (the first batch goes whole).
    pub max_bytes: i32,
    pub partitions: Vec<FetchPartition>,
}

/// One partition of a [`FetchRequest`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FetchPartition {
    pub topic_id: u128,
    pub partition: i32,
    /// The leader epoch the follower follows; -1 when not given.
    pub current_leader_epoch: i32,
    /// The follower's log end offset: where to read from.
    pub fetch_offset: i64,
    /// The epoch of the last batch in the follower's log; -1 when it has none.
    pub last_fetched_epoch: i32,
    pub log_start_offset: i64,
    /// Record bytes wanted for this partition (the first batch goes whole).
    pub max_bytes: i32,
    /// How far the follower's log is on its disk (at most `fetch_offset`): what the
    /// leader may count toward the high watermark. -1: all of it, up to `fetch_offset`
    /// (a follower that syncs before it fetches).
    pub synced_offset: i64,
}

impl FetchPartition {
    /// What of the follower's log is on its disk, as this fetch reports it.
    pub fn durable_offset(&self) -> i64 {
        if self.synced_offset < 0 {
            self.fetch_offset
        } else {
            self.synced_offset
        }
    }
}

/// KIP-320: an epoch and the offset where it ends in the leader's log.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct EpochEndOffset {
    pub epoch: i32,
    pub end_offset: i64,
}

/// The leader's answer for one partition; `records_bytes` bytes of RecordBatches follow.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PartitionHeader {
    pub topic_id: u128,
    pub partition: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// Present when the follower's log diverges from the leader's; then no records come.
    pub diverging_epoch: Option<EpochEndOffset>,
    /// The current leader as the answering node knows it (KIP-951).
    pub leader_epoch: i32,
    pub leader_id: i32,
    pub records_bytes: u32,
}

impl PartitionHeader {
    /// A header with `error_code` and nothing else known (-1 everywhere, no records).
    pub fn error(topic_id: u128, partition: i32, error_code: i16) -> PartitionHeader {
        PartitionHeader {
            topic_id,
            partition,
            error_code,
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            diverging_epoch: None,
            leader_epoch: -1,
            leader_id: -1,
            records_bytes: 0,
        }
    }
}

/// One partition of a [`FetchResponse`]: its header and its records, a slice of the frame
/// (not copied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionData {
    pub header: PartitionHeader,
    pub records: Bytes,
}

/// The leader's answer to a [`FetchRequest`]: every partition of the request, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchResponse {
    pub correlation_id: i32,
    /// A whole-request error (0 for none); the partitions are empty then.
    pub error_code: i16,
    pub partitions: Vec<PartitionData>,
}
