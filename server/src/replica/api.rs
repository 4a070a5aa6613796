//! What goes into a [`super::ReplicaState`] and what comes out of it.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use wharf_engine::epoch::LeaderEpochCache;
use wharf_protocol::replication::{EpochEndOffset, FetchPartition, FetchRequest, PartitionHeader};

use crate::metadata::{LeaderEpoch, NodeId};

/// A partition's replicas, ISR, leader and epochs as the controller committed them (Kafka's
/// LeaderAndIsr; the cluster image's partition state maps onto it field for field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderAndIsr {
    /// Every replica, the preferred leader first.
    pub replicas: Vec<NodeId>,
    /// The committed ISR: a subset of `replicas` that holds the leader.
    pub isr: Vec<NodeId>,
    /// `None` while the partition is offline (Kafka's leader -1).
    pub leader: Option<NodeId>,
    /// Grows by one whenever the leader changes.
    pub leader_epoch: LeaderEpoch,
    /// Grows by one whenever anything changes (Kafka's partition epoch, KIP-497).
    pub partition_epoch: i32,
}

/// What the local log holds when the state machine is built (from the engine at open).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalLog {
    pub log_start_offset: i64,
    /// Everything below it is in the log; after an open all of it is on disk.
    pub log_end_offset: i64,
    /// The leader-epoch cache (KIP-101): each epoch's first offset.
    pub epochs: LeaderEpochCache,
    /// The last checkpointed high watermark; clamped into the log.
    pub high_watermark: i64,
}

/// What a producer asked for. acks=0 is acks=1 for the partition (nobody waits).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Acks {
    /// acks=0 or 1: answered once the leader has the batch.
    Leader,
    /// acks=all (-1): answered once the high watermark covers the batch.
    All,
}

/// The driver's handle on an acks=all append waiting for the high watermark.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProduceToken(pub u64);

/// An acks=all append that waits: its token and when its Produce request times out.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AckWaiter {
    pub token: ProduceToken,
    pub deadline_ms: i64,
}

/// The answer due to an acks=all append.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AckOutcome {
    pub token: ProduceToken,
    /// `Ok` once every in-sync replica has the batch on disk. Otherwise
    /// NOT_ENOUGH_REPLICAS_AFTER_APPEND (the ISR fell below `min.insync.replicas` after the
    /// append), NOT_LEADER_OR_FOLLOWER (leadership moved) or REQUEST_TIMED_OUT.
    pub result: Result<(), ResponseError>,
}

/// An ISR member with the broker epoch the leader last saw in its fetches (KIP-903); -1
/// when unknown.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct IsrMember {
    pub node: NodeId,
    pub broker_epoch: i64,
}

/// An AlterPartition request for the controller (KIP-497): the leader's proposed ISR,
/// valid only against the leader and partition epochs it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterPartitionProposal {
    pub leader: NodeId,
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: i32,
    pub new_isr: Vec<IsrMember>,
}

/// The controller's answer to an [`AlterPartitionProposal`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlterPartitionAnswer {
    /// The partition's state now: the ISR committed and its epochs.
    Committed {
        isr: Vec<NodeId>,
        leader_epoch: LeaderEpoch,
        partition_epoch: i32,
    },
    /// Refused, or no answer (the driver reports a lost or timed-out request as
    /// REQUEST_TIMED_OUT or NETWORK_EXCEPTION, which are retried).
    Error(ResponseError),
}

/// A change to the local log, for the driver to carry out in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogOp {
    /// KIP-101: leader epoch `epoch` starts at `start_offset` (the leader-epoch checkpoint).
    /// Entries at or past `start_offset` are dropped.
    AssignEpoch { epoch: i32, start_offset: i64 },
    /// Remove every offset at or above `offset`, durably, before anything is appended past
    /// it. Below the log start, the log is emptied and restarts at `offset`.
    TruncateTo { offset: i64 },
    /// Remove everything; the log restarts, empty, at `offset` (start = end = `offset`).
    TruncateFullyAndStartAt { offset: i64 },
    /// Append the leader's batches as they are: offsets, epochs and bytes kept (they passed
    /// their CRC and continue the log). They cover `base_offset..end_offset`.
    AppendAsFollower {
        records: Bytes,
        base_offset: i64,
        end_offset: i64,
    },
    /// The log start moves up to `offset` (the leader's, as far as this replica's high
    /// watermark).
    AdvanceLogStart { offset: i64 },
}

/// What the driver must do after an input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Changes to the local log, in order.
    pub log: Vec<LogOp>,
    /// Answers now due to acks=all appends.
    pub acks: Vec<AckOutcome>,
    /// Send this to the controller; answer with `on_alter_partition_answer`.
    pub alter_partition: Option<AlterPartitionProposal>,
    /// The high watermark changed to this (wake consumers waiting on it).
    pub high_watermark: Option<i64>,
}

impl Effects {
    pub fn append(&mut self, mut other: Effects) {
        self.log.append(&mut other.log);
        self.acks.append(&mut other.acks);
        if other.alter_partition.is_some() {
            self.alter_partition = other.alter_partition;
        }
        if other.high_watermark.is_some() {
            self.high_watermark = other.high_watermark;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
            && self.acks.is_empty()
            && self.alter_partition.is_none()
            && self.high_watermark.is_none()
    }
}

/// One partition of a follower's fetch, as the leader's state machine reads it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FollowerFetch {
    pub replica: NodeId,
    /// The follower's broker epoch (KIP-903), -1 when not given.
    pub broker_epoch: i64,
    /// -1 when not given.
    pub current_leader_epoch: i32,
    /// The follower's log end: where to read from.
    pub fetch_offset: i64,
    /// How far the follower's log is on its disk (at most `fetch_offset`): what counts
    /// toward the high watermark and the ISR.
    pub durable_offset: i64,
    /// -1 when the follower's log has no batch.
    pub last_fetched_epoch: i32,
    pub log_start_offset: i64,
}

impl FollowerFetch {
    pub fn from_wire(request: &FetchRequest, partition: &FetchPartition) -> FollowerFetch {
        FollowerFetch {
            replica: NodeId(request.replica_id),
            broker_epoch: request.broker_epoch,
            current_leader_epoch: partition.current_leader_epoch,
            fetch_offset: partition.fetch_offset,
            durable_offset: partition.durable_offset(),
            last_fetched_epoch: partition.last_fetched_epoch,
            log_start_offset: partition.log_start_offset,
        }
    }
}

/// One partition of a client's ListOffsets, as the leader's state machine judges it once
/// the log has been searched (Kafka's `Partition.fetchOffsetForTimestamp`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OffsetQuery {
    /// The latest offset (-1): where a consumer may fetch up to.
    Latest,
    /// The log start (-2; -4, the local log start, is the same without tiered storage).
    Earliest { log_start_offset: i64 },
    /// A search of the log by timestamp, or for the largest timestamp (-3): the offset it
    /// found, if any.
    Search { found: Option<i64> },
}

/// The leader's answer to one partition of a follower's fetch.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FetchAnswer {
    pub error: Option<ResponseError>,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// KIP-320: the follower's log diverges; it truncates before fetching again.
    pub diverging_epoch: Option<EpochEndOffset>,
    /// The current leader as this node knows it (KIP-951).
    pub leader_epoch: i32,
    pub leader_id: i32,
    /// Send the log's batches from this offset (the first one whole, then up to the
    /// partition's byte limit, up to the log end). `None`: no records.
    pub read_from: Option<i64>,
}

impl FetchAnswer {
    /// The frame header for this answer, with `records_bytes` of records after it.
    pub fn header(&self, topic_id: u128, partition: i32, records_bytes: u32) -> PartitionHeader {
        PartitionHeader {
            topic_id,
            partition,
            error_code: self.error.map_or(0, |e| e.code()),
            high_watermark: self.high_watermark,
            last_stable_offset: self.last_stable_offset,
            log_start_offset: self.log_start_offset,
            diverging_epoch: self.diverging_epoch,
            leader_epoch: self.leader_epoch,
            leader_id: self.leader_id,
            records_bytes: if self.read_from.is_some() {
                records_bytes
            } else {
                0
            },
        }
    }
}

/// Where a follower fetches from next: the fields of its [`FetchPartition`] (the driver adds
/// the topic, the partition and the byte limit).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FetchPosition {
    pub leader: NodeId,
    pub current_leader_epoch: i32,
    pub fetch_offset: i64,
    /// What of the log is on disk (at most `fetch_offset`): the follower may ask for more
    /// while it syncs what it appended last.
    pub synced_offset: i64,
    pub last_fetched_epoch: i32,
    pub log_start_offset: i64,
}

impl FetchPosition {
    pub fn to_wire(&self, topic_id: u128, partition: i32, max_bytes: i32) -> FetchPartition {
        FetchPartition {
            topic_id,
            partition,
            current_leader_epoch: self.current_leader_epoch,
            fetch_offset: self.fetch_offset,
            last_fetched_epoch: self.last_fetched_epoch,
            log_start_offset: self.log_start_offset,
            max_bytes,
            synced_offset: self.synced_offset,
        }
    }

    /// Whether `asked` is the fetch this position describes.
    pub fn matches(&self, asked: &FetchPartition) -> bool {
        asked.current_leader_epoch == self.current_leader_epoch
            && asked.fetch_offset == self.fetch_offset
            && asked.last_fetched_epoch == self.last_fetched_epoch
    }
}

/// What a follower made of the leader's answer for one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    /// Batches to append (in the effects), `bytes` of them; possibly none.
    Appended { batches: usize, bytes: usize },
    /// The log is cut (in the effects) where it diverges from the leader's, or restarted at
    /// the leader's log start.
    Truncated { to: i64 },
    /// The data failed a check (a batch's CRC, its offsets, its epoch, its framing): nothing
    /// is appended. The stream cannot be trusted: the driver closes the connection and
    /// counts it; the partition fetches again after a backoff.
    Refused(String),
    /// The leader refused the fetch; the partition fetches again after a backoff, or, for
    /// FENCED_LEADER_EPOCH, once newer metadata arrives.
    LeaderError(ResponseError),
    /// An answer to a fetch this replica no longer stands behind (another epoch or
    /// position, or not a follower any more): ignored.
    Stale,
}
