//! What the active controller is asked and what it answers: admin requests forwarded by
//! any broker, producer-id blocks, broker registration and heartbeats. Per-item failures are
//! [`MetadataError`]s (mapped to Kafka codes in `kafka::errors`); a failure of the whole
//! request is a [`ControllerError`].

use crate::metadata::cluster::Listener;
use crate::metadata::controller::{AlterOp, MetadataError, NewTopic, TopicRef};
use crate::metadata::{NodeId, TopicMeta};

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
