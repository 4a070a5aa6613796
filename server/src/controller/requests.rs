//! What the active controller is asked and what it answers: admin requests forwarded by
//! any broker, producer-id blocks, broker registration and heartbeats. Per-item failures are
//! [`MetadataError`]s (mapped to Kafka codes in `crate::errors`); a failure of the whole
//! request is a [`ControllerError`].

use kafka_protocol::error::ResponseError;

use crate::metadata::cluster::Listener;
use crate::metadata::controller::{AlterOp, MetadataError, NewTopic, TopicRef};
use crate::metadata::{LeaderEpoch, NodeId, PartitionId, TopicMeta};

/// The caller's handle for a request; the controller hands it back with the answer.
pub type Token = u64;

/// A manual placement for one partition (CreateTopics / CreatePartitions `assignments`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionAssignment {
    pub partition: i32,
    pub replicas: Vec<NodeId>,
}

/// One topic of a CreateTopics request. `topic.partitions` and `replication_factor` may be
/// -1 (the controller's `num.partitions` / `default.replication.factor`).
#[derive(Clone, Debug)]
pub struct CreateTopic {
    pub topic: NewTopic,
    pub replication_factor: i16,
    pub assignments: Vec<PartitionAssignment>,
}

/// One topic of a CreatePartitions request: grow it to `total` partitions.
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionsIncrease {
    pub topic: String,
    pub total: i32,
    /// Replicas of each new partition, in order; empty to let the controller place them.
    pub assignments: Vec<Vec<NodeId>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RegisterBroker {
    pub node: NodeId,
    pub incarnation_id: u128,
    pub cluster_id: String,
    pub listeners: Vec<Listener>,
    pub rack: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Heartbeat {
    pub node: NodeId,
    pub broker_epoch: i64,
    /// The metadata offset the broker has applied.
    pub applied_offset: u64,
    pub want_fence: bool,
    pub want_shut_down: bool,
}

#[derive(Clone, Debug)]
pub enum ControllerRequest {
    CreateTopics {
        topics: Vec<CreateTopic>,
        validate_only: bool,
    },
    DeleteTopics {
        topics: Vec<TopicRef>,
    },
    CreatePartitions {
        topics: Vec<PartitionsIncrease>,
        validate_only: bool,
    },
    AlterConfigs {
        topics: Vec<(String, Vec<AlterOp>)>,
        validate_only: bool,
    },
    AllocateProducerIds {
        node: NodeId,
        broker_epoch: i64,
    },
    RegisterBroker(RegisterBroker),
    Heartbeat(Heartbeat),
    AlterPartition(AlterPartition),
}

/// The Kafka versions of AlterPartition (API 56) the controller serves, as Kafka 3.9 does.
pub const ALTER_PARTITION_VERSIONS: std::ops::RangeInclusive<i16> = 0..=3;

/// A proposed ISR member with the broker epoch its leader last saw in its fetches
/// (KIP-903, version 3); -1 skips the epoch check (and is what versions 0-2 carry).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct IsrMember {
    pub node: NodeId,
    pub broker_epoch: i64,
}

/// One partition of an AlterPartition request (Kafka's `AlterPartitionRequestData`
/// `PartitionData`): the leader's proposed ISR, valid against the epochs it names.
#[derive(Clone, Debug, PartialEq)]
pub struct AlterPartitionItem {
    pub partition: PartitionId,
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: i32,
    pub new_isr: Vec<IsrMember>,
    /// KIP-704: 0 recovered, 1 recovering from an unclean election. Wharf's partitions are
    /// always recovered, so only 0 is accepted.
    pub leader_recovery_state: i8,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AlterPartitionTopic {
    /// By name in versions 0-1, by id from version 2 (KIP-841).
    pub topic: TopicRef,
    pub partitions: Vec<AlterPartitionItem>,
}

/// AlterPartition (KIP-497): a partition leader asks the controller to commit a new ISR.
#[derive(Clone, Debug, PartialEq)]
pub struct AlterPartition {
    /// The Kafka version whose rules apply (see [`ALTER_PARTITION_VERSIONS`]).
    pub version: i16,
    pub broker: NodeId,
    pub broker_epoch: i64,
    pub topics: Vec<AlterPartitionTopic>,
}

/// A partition's state after an AlterPartition was committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterPartitionCommitted {
    pub leader: Option<NodeId>,
    pub leader_epoch: LeaderEpoch,
    pub isr: Vec<NodeId>,
    pub partition_epoch: i32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AlterPartitionResult {
    pub partition: PartitionId,
    /// The committed state, or Kafka's per-partition error.
    pub result: Result<AlterPartitionCommitted, ResponseError>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AlterPartitionTopicResult {
    pub topic: TopicRef,
    pub partitions: Vec<AlterPartitionResult>,
}

/// A created topic as CreateTopics reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct CreatedTopic {
    pub topic: TopicMeta,
    pub replication_factor: i16,
}

/// A block of producer ids `[first, first + count)`, never handed out before.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ProducerIdBlock {
    pub first: i64,
    pub count: i32,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatReply {
    /// The broker has applied the metadata log up to its registration.
    pub is_caught_up: bool,
    pub is_fenced: bool,
    pub should_shut_down: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ControllerReply {
    CreateTopics(Vec<Result<CreatedTopic, MetadataError>>),
    DeleteTopics(Vec<Result<TopicMeta, MetadataError>>),
    CreatePartitions(Vec<Result<(), MetadataError>>),
    AlterConfigs(Vec<Result<(), MetadataError>>),
    ProducerIds(ProducerIdBlock),
    BrokerRegistration { broker_epoch: i64 },
    BrokerHeartbeat(HeartbeatReply),
    AlterPartition(Vec<AlterPartitionTopicResult>),
}

impl ControllerReply {
    /// The same reply with every item failed with `error` (for a change that could not be
    /// written after all).
    pub fn all_failed(&self, error: MetadataError) -> Result<ControllerReply, ControllerError> {
        fn fail<T>(n: usize, error: &MetadataError) -> Vec<Result<T, MetadataError>> {
            (0..n).map(|_| Err(error.clone())).collect()
        }
        Ok(match self {
            ControllerReply::CreateTopics(items) => {
                ControllerReply::CreateTopics(fail(items.len(), &error))
            }
            ControllerReply::DeleteTopics(items) => {
                ControllerReply::DeleteTopics(fail(items.len(), &error))
            }
            ControllerReply::CreatePartitions(items) => {
                ControllerReply::CreatePartitions(fail(items.len(), &error))
            }
            ControllerReply::AlterConfigs(items) => {
                ControllerReply::AlterConfigs(fail(items.len(), &error))
            }
            _ => return Err(ControllerError::Metadata(error)),
        })
    }
}

/// Why a whole request failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ControllerError {
    /// This node is not the active controller (or stopped being it before the change was
    /// committed): retry at `leader`, when known.
    #[error("this node is not the active controller{}", leader.map(|l| format!("; the controller is node {}", l.0)).unwrap_or_default())]
    NotController { leader: Option<NodeId> },
    #[error("{0}")]
    DuplicateBrokerRegistration(String),
    #[error("{0}")]
    InconsistentClusterId(String),
    #[error("{0}")]
    BrokerIdNotRegistered(String),
    #[error("{0}")]
    StaleBrokerEpoch(String),
    #[error("{0}")]
    Metadata(MetadataError),
}

/// The answer to a request.
pub type Reply = Result<ControllerReply, ControllerError>;
