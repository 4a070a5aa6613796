//! Controller RPCs between the typed requests and replies of [`crate::controller::requests`]
//! and the frames of `wharf_protocol::controller`: what a broker forwards to the active
//! controller and what comes back. Per-item failures travel as their [`MetadataError`]
//! variant and message (so the forwarding broker maps them to Kafka codes in the one place
//! it maps every metadata error), whole-request failures as theirs.

use wharf_protocol::controller as wire;
use wharf_protocol::controller::{Body, ErrorKind, Frame, WireError};

use crate::controller::node::{QuorumView, VoterProgress};
use crate::controller::requests::*;
use crate::metadata::controller::{AlterOp, MetadataError, NewTopic, TopicRef};
use crate::metadata::{LeaderEpoch, NodeId, PartitionId, TopicId, TopicMeta};

/// What arrived on the controller listener.
#[derive(Debug)]
pub enum Incoming {
    Raft(wire::RaftMessage),
    Request(ControllerRequest),
    FetchMetadata(wire::FetchMetadataRequest),
    /// DescribeQuorum forwarded by another node: answered from this voter's view.
    DescribeQuorum(wire::DescribeQuorumRequest),
}

/// A frame that is well formed but not something a controller answers (a response sent
/// as a request, say): the peer's connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected controller frame: {0}")]
pub struct UnexpectedFrame(pub &'static str);

fn uuid(id: TopicId) -> u128 {
    id.0.as_u128()
}

fn topic_id(id: u128) -> TopicId {
    TopicId(uuid::Uuid::from_u128(id))
}

fn nodes(ids: &[i32]) -> Vec<NodeId> {
    ids.iter().copied().map(NodeId).collect()
}

fn ids(nodes: &[NodeId]) -> Vec<i32> {
    nodes.iter().map(|n| n.0).collect()
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

pub fn metadata_error_to_wire(e: &MetadataError) -> WireError {
    let kind = match e {
        MetadataError::TopicAlreadyExists(_) => ErrorKind::TopicAlreadyExists,
        MetadataError::InvalidTopic(_) => ErrorKind::InvalidTopic,
        MetadataError::UnknownTopic => ErrorKind::UnknownTopic,
        MetadataError::UnknownTopicId => ErrorKind::UnknownTopicId,
        MetadataError::InvalidPartitions(_) => ErrorKind::InvalidPartitions,
        MetadataError::InvalidReplicationFactor(_) => ErrorKind::InvalidReplicationFactor,
        MetadataError::InvalidReplicaAssignment(_) => ErrorKind::InvalidReplicaAssignment,
        MetadataError::InvalidConfig(_) => ErrorKind::InvalidConfig,
        MetadataError::InvalidRequest(_) => ErrorKind::InvalidRequest,
        MetadataError::PolicyViolation(_) => ErrorKind::PolicyViolation,
        MetadataError::Storage(_) => ErrorKind::Storage,
        MetadataError::Unavailable | MetadataError::TimedOut(_) => ErrorKind::Unavailable,
        MetadataError::NotController(_) => ErrorKind::NotController,
    };
    let message = match e {
        MetadataError::TopicAlreadyExists(name) => name.clone(),
        other => other.to_string(),
    };
    WireError { kind, message }
}

pub fn metadata_error_from_wire(e: WireError) -> MetadataError {
    let m = e.message;
    match e.kind {
        ErrorKind::TopicAlreadyExists => MetadataError::TopicAlreadyExists(m),
        ErrorKind::InvalidTopic => MetadataError::InvalidTopic(m),
        ErrorKind::UnknownTopic => MetadataError::UnknownTopic,
        ErrorKind::UnknownTopicId => MetadataError::UnknownTopicId,
        ErrorKind::InvalidPartitions => MetadataError::InvalidPartitions(m),
        ErrorKind::InvalidReplicationFactor => MetadataError::InvalidReplicationFactor(m),
        ErrorKind::InvalidReplicaAssignment => MetadataError::InvalidReplicaAssignment(m),
        ErrorKind::InvalidConfig => MetadataError::InvalidConfig(m),
        ErrorKind::InvalidRequest => MetadataError::InvalidRequest(m),
        ErrorKind::PolicyViolation => MetadataError::PolicyViolation(m),
        ErrorKind::Storage => MetadataError::Storage(m),
        ErrorKind::NotController => MetadataError::NotController(m),
        // Both of Kafka's REQUEST_TIMED_OUT; the message says which.
        ErrorKind::Unavailable => MetadataError::TimedOut(m),
        // Controller-level kinds where an item error is expected: the change did not happen.
        _ => MetadataError::Unavailable,
    }
}

fn controller_error_to_wire(e: &ControllerError) -> Body {
    let err = |kind, message: &String| WireError {
        kind,
        message: message.clone(),
    };
    let error = match e {
        ControllerError::NotController { leader } => {
            return Body::NotController(wire::NotController {
                leader_id: leader.map_or(-1, |l| l.0),
                term: 0,
            })
        }
        ControllerError::DuplicateBrokerRegistration(m) => {
            err(ErrorKind::DuplicateBrokerRegistration, m)
        }
        ControllerError::InconsistentClusterId(m) => err(ErrorKind::InconsistentClusterId, m),
        ControllerError::BrokerIdNotRegistered(m) => err(ErrorKind::BrokerIdNotRegistered, m),
        ControllerError::StaleBrokerEpoch(m) => err(ErrorKind::StaleBrokerEpoch, m),
        ControllerError::Metadata(m) => metadata_error_to_wire(m),
    };
    Body::ErrorResponse(error)
}

fn controller_error_from_wire(e: WireError) -> ControllerError {
    match e.kind {
        ErrorKind::DuplicateBrokerRegistration => {
            ControllerError::DuplicateBrokerRegistration(e.message)
        }
        ErrorKind::InconsistentClusterId => ControllerError::InconsistentClusterId(e.message),
        ErrorKind::BrokerIdNotRegistered => ControllerError::BrokerIdNotRegistered(e.message),
        ErrorKind::StaleBrokerEpoch => ControllerError::StaleBrokerEpoch(e.message),
        ErrorKind::NotController => ControllerError::NotController { leader: None },
        _ => ControllerError::Metadata(metadata_error_from_wire(e)),
    }
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

fn configs_to_wire(configs: &[(String, Option<String>)]) -> Vec<wire::ConfigEntry> {
    configs
        .iter()
        .map(|(name, value)| wire::ConfigEntry {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

/// A request as the frame a broker sends to the controller.
pub fn request_to_frame(correlation_id: u64, request: &ControllerRequest) -> Frame {
    let body = match request {
        ControllerRequest::CreateTopics {
            topics,
            validate_only,
        } => Body::CreateTopicsRequest(wire::CreateTopicsRequest {
            topics: topics
                .iter()
                .map(|t| wire::NewTopic {
                    name: t.topic.name.clone(),
                    partitions: t.topic.partitions,
                    replication_factor: t.replication_factor,
                    assignments: t
                        .assignments
                        .iter()
                        .map(|a| wire::PartitionAssignment {
                            partition: a.partition,
                            replicas: ids(&a.replicas),
                        })
                        .collect(),
                    configs: configs_to_wire(&t.topic.configs),
                    internal: t.topic.internal,
                })
                .collect(),
            validate_only: *validate_only,
        }),
        ControllerRequest::DeleteTopics { topics } => {
            Body::DeleteTopicsRequest(wire::DeleteTopicsRequest {
                topics: topics
                    .iter()
                    .map(|t| match t {
                        TopicRef::Name(n) => wire::TopicRef::Name(n.clone()),
                        TopicRef::Id(id) => wire::TopicRef::Id(uuid(*id)),
                    })
                    .collect(),
            })
        }
        ControllerRequest::CreatePartitions {
            topics,
            validate_only,
        } => Body::CreatePartitionsRequest(wire::CreatePartitionsRequest {
            topics: topics
                .iter()
                .map(|t| wire::PartitionsIncrease {
                    topic: t.topic.clone(),
                    total: t.total,
                    assignments: t
                        .assignments
                        .iter()
                        .enumerate()
                        .map(|(i, r)| wire::PartitionAssignment {
                            partition: i as i32,
                            replicas: ids(r),
                        })
                        .collect(),
                })
                .collect(),
            validate_only: *validate_only,
        }),
        ControllerRequest::AlterConfigs {
            topics,
            validate_only,
        } => Body::AlterConfigsRequest(wire::AlterConfigsRequest {
            topics: topics
                .iter()
                .map(|(topic, ops)| wire::TopicAlterations {
                    topic: topic.clone(),
                    ops: ops
                        .iter()
                        .map(|op| match op {
                            AlterOp::Set(n, v) => wire::AlterOp {
                                op: wire::AlterOpType::Set,
                                name: n.clone(),
                                value: Some(v.clone()),
                            },
                            AlterOp::Delete(n) => wire::AlterOp {
                                op: wire::AlterOpType::Delete,
                                name: n.clone(),
                                value: None,
                            },
                            AlterOp::Append(n, v) => wire::AlterOp {
                                op: wire::AlterOpType::Append,
                                name: n.clone(),
                                value: Some(v.clone()),
                            },
                            AlterOp::Subtract(n, v) => wire::AlterOp {
                                op: wire::AlterOpType::Subtract,
                                name: n.clone(),
                                value: Some(v.clone()),
                            },
                        })
                        .collect(),
                })
                .collect(),
            validate_only: *validate_only,
        }),
        ControllerRequest::AllocateProducerIds { node, broker_epoch } => {
            Body::AllocateProducerIdsRequest(wire::AllocateProducerIdsRequest {
                node_id: node.0,
                broker_epoch: *broker_epoch,
            })
        }
        ControllerRequest::RegisterBroker(r) => {
            Body::BrokerRegistrationRequest(wire::BrokerRegistrationRequest {
                node_id: r.node.0,
                incarnation_id: r.incarnation_id,
                cluster_id: r.cluster_id.clone(),
                listeners: r.listeners.clone(),
                rack: r.rack.clone(),
            })
        }
        ControllerRequest::AlterPartition(r) => {
            Body::AlterPartitionRequest(wire::AlterPartitionRequest {
                version: r.version,
                broker_id: r.broker.0,
                broker_epoch: r.broker_epoch,
                topics: r
                    .topics
                    .iter()
                    .map(|t| wire::AlterPartitionTopic {
                        topic: topic_ref_to_wire(&t.topic),
                        partitions: t
                            .partitions
                            .iter()
                            .map(|p| wire::AlterPartitionData {
                                partition: p.partition.0,
                                leader_epoch: p.leader_epoch.0,
                                new_isr: p
                                    .new_isr
                                    .iter()
                                    .map(|m| wire::IsrMember {
                                        broker_id: m.node.0,
                                        broker_epoch: m.broker_epoch,
                                    })
                                    .collect(),
                                leader_recovery_state: p.leader_recovery_state,
                                partition_epoch: p.partition_epoch,
                            })
                            .collect(),
                    })
                    .collect(),
            })
        }
        ControllerRequest::Heartbeat(h) => {
            Body::BrokerHeartbeatRequest(wire::BrokerHeartbeatRequest {
                node_id: h.node.0,
                broker_epoch: h.broker_epoch,
                applied_offset: h.applied_offset,
                want_fence: h.want_fence,
                want_shut_down: h.want_shut_down,
            })
        }
    };
    Frame {
        correlation_id,
        metadata_offset: 0,
        body,
    }
}

/// What a frame that arrived on the controller listener asks for.
pub fn incoming_from_frame(frame: Frame) -> Result<Incoming, UnexpectedFrame> {
    Ok(match frame.body {
        Body::Raft(m) => Incoming::Raft(m),
        Body::FetchMetadataRequest(f) => Incoming::FetchMetadata(f),
        Body::DescribeQuorumRequest(d) => Incoming::DescribeQuorum(d),
        Body::CreateTopicsRequest(r) => Incoming::Request(ControllerRequest::CreateTopics {
            topics: r
                .topics
                .into_iter()
                .map(|t| CreateTopic {
                    topic: NewTopic {
                        name: t.name,
                        partitions: t.partitions,
                        configs: t.configs.into_iter().map(|c| (c.name, c.value)).collect(),
                        internal: t.internal,
                    },
                    replication_factor: t.replication_factor,
                    assignments: t
                        .assignments
                        .into_iter()
                        .map(|a| PartitionAssignment {
                            partition: a.partition,
                            replicas: nodes(&a.replicas),
                        })
                        .collect(),
                })
                .collect(),
            validate_only: r.validate_only,
        }),
        Body::DeleteTopicsRequest(r) => Incoming::Request(ControllerRequest::DeleteTopics {
            topics: r
                .topics
                .into_iter()
                .map(|t| match t {
                    wire::TopicRef::Name(n) => TopicRef::Name(n),
                    wire::TopicRef::Id(id) => TopicRef::Id(topic_id(id)),
                })
                .collect(),
        }),
        Body::CreatePartitionsRequest(r) => {
            Incoming::Request(ControllerRequest::CreatePartitions {
                topics: r
                    .topics
                    .into_iter()
                    .map(|t| {
                        let mut assignments = t.assignments;
                        assignments.sort_by_key(|a| a.partition);
                        PartitionsIncrease {
                            topic: t.topic,
                            total: t.total,
                            assignments: assignments.iter().map(|a| nodes(&a.replicas)).collect(),
                        }
                    })
                    .collect(),
                validate_only: r.validate_only,
            })
        }
        Body::AlterConfigsRequest(r) => {
            let mut topics = Vec::with_capacity(r.topics.len());
            for t in r.topics {
                let mut ops = Vec::with_capacity(t.ops.len());
                for op in t.ops {
                    let value = op.value.unwrap_or_default();
                    ops.push(match op.op {
                        wire::AlterOpType::Set => AlterOp::Set(op.name, value),
                        wire::AlterOpType::Delete => AlterOp::Delete(op.name),
                        wire::AlterOpType::Append => AlterOp::Append(op.name, value),
                        wire::AlterOpType::Subtract => AlterOp::Subtract(op.name, value),
                    });
                }
                topics.push((t.topic, ops));
            }
            Incoming::Request(ControllerRequest::AlterConfigs {
                topics,
                validate_only: r.validate_only,
            })
        }
        Body::AllocateProducerIdsRequest(r) => {
            Incoming::Request(ControllerRequest::AllocateProducerIds {
                node: NodeId(r.node_id),
                broker_epoch: r.broker_epoch,
            })
        }
        Body::BrokerRegistrationRequest(r) => {
            Incoming::Request(ControllerRequest::RegisterBroker(RegisterBroker {
                node: NodeId(r.node_id),
                incarnation_id: r.incarnation_id,
                cluster_id: r.cluster_id,
                listeners: r.listeners,
                rack: r.rack,
            }))
        }
        Body::BrokerHeartbeatRequest(h) => {
            Incoming::Request(ControllerRequest::Heartbeat(Heartbeat {
                node: NodeId(h.node_id),
                broker_epoch: h.broker_epoch,
                applied_offset: h.applied_offset,
                want_fence: h.want_fence,
                want_shut_down: h.want_shut_down,
            }))
        }
        Body::AlterPartitionRequest(r) => {
            Incoming::Request(ControllerRequest::AlterPartition(AlterPartition {
                version: r.version,
                broker: NodeId(r.broker_id),
                broker_epoch: r.broker_epoch,
                topics: r
                    .topics
                    .into_iter()
                    .map(|t| AlterPartitionTopic {
                        topic: topic_ref_from_wire(t.topic),
                        partitions: t
                            .partitions
                            .into_iter()
                            .map(|p| AlterPartitionItem {
                                partition: PartitionId(p.partition),
                                leader_epoch: LeaderEpoch(p.leader_epoch),
                                partition_epoch: p.partition_epoch,
                                new_isr: p
                                    .new_isr
                                    .into_iter()
                                    .map(|m| IsrMember {
                                        node: NodeId(m.broker_id),
                                        broker_epoch: m.broker_epoch,
                                    })
                                    .collect(),
                                leader_recovery_state: p.leader_recovery_state,
                            })
                            .collect(),
                    })
                    .collect(),
            }))
        }
        Body::NotController(_)
        | Body::AlterPartitionResponse(_)
        | Body::BrokerRegistrationResponse(_)
        | Body::BrokerHeartbeatResponse(_)
        | Body::FetchMetadataResponse(_)
        | Body::CreateTopicsResponse(_)
        | Body::DeleteTopicsResponse(_)
        | Body::CreatePartitionsResponse(_)
        | Body::AlterConfigsResponse(_)
        | Body::AllocateProducerIdsResponse(_)
        | Body::DescribeQuorumResponse(_)
        | Body::ErrorResponse(_) => {
            return Err(UnexpectedFrame("a response where a request belongs"))
        }
    })
}

// ---------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------

fn topic_to_wire(t: &TopicMeta, replication_factor: i16) -> wire::TopicDescription {
    wire::TopicDescription {
        name: t.name.clone(),
        id: uuid(t.id),
        partitions: t.partition_count,
        replication_factor,
        configs: t
            .overrides
            .iter()
            .map(|(k, v)| wire::ConfigEntry {
                name: k.clone(),
                value: Some(v.clone()),
            })
            .collect(),
        internal: t.internal,
    }
}

fn topic_from_wire(t: wire::TopicDescription) -> (TopicMeta, i16) {
    (
        TopicMeta {
            name: t.name,
            id: topic_id(t.id),
            partition_count: t.partitions,
            overrides: t
                .configs
                .into_iter()
                .filter_map(|c| Some((c.name, c.value?)))
                .collect(),
            internal: t.internal,
        },
        t.replication_factor,
    )
}

fn item_results(items: &[Result<(), MetadataError>]) -> wire::ItemResults {
    wire::ItemResults {
        results: items
            .iter()
            .map(|r| r.as_ref().err().map(metadata_error_to_wire))
            .collect(),
    }
}

/// A reply as the frame the controller sends back.
pub fn reply_to_frame(correlation_id: u64, reply: &Reply) -> Frame {
    let body = match reply {
        Err(e) => controller_error_to_wire(e),
        Ok(ControllerReply::CreateTopics(items)) => {
            Body::CreateTopicsResponse(wire::TopicResults {
                results: items
                    .iter()
                    .map(|r| match r {
                        Ok(c) => wire::TopicResult {
                            error: None,
                            topic: Some(topic_to_wire(&c.topic, c.replication_factor)),
                        },
                        Err(e) => wire::TopicResult {
                            error: Some(metadata_error_to_wire(e)),
                            topic: None,
                        },
                    })
                    .collect(),
            })
        }
        Ok(ControllerReply::DeleteTopics(items)) => {
            Body::DeleteTopicsResponse(wire::TopicResults {
                results: items
                    .iter()
                    .map(|r| match r {
                        Ok(t) => wire::TopicResult {
                            error: None,
                            topic: Some(topic_to_wire(t, -1)),
                        },
                        Err(e) => wire::TopicResult {
                            error: Some(metadata_error_to_wire(e)),
                            topic: None,
                        },
                    })
                    .collect(),
            })
        }
        Ok(ControllerReply::CreatePartitions(items)) => {
            Body::CreatePartitionsResponse(item_results(items))
        }
        Ok(ControllerReply::AlterConfigs(items)) => Body::AlterConfigsResponse(item_results(items)),
        Ok(ControllerReply::ProducerIds(b)) => {
            Body::AllocateProducerIdsResponse(wire::AllocateProducerIdsResponse {
                error: None,
                first_producer_id: b.first,
                count: b.count,
            })
        }
        Ok(ControllerReply::BrokerRegistration { broker_epoch }) => {
            Body::BrokerRegistrationResponse(wire::BrokerRegistrationResponse {
                error: None,
                broker_epoch: *broker_epoch,
            })
        }
        Ok(ControllerReply::AlterPartition(topics)) => {
            Body::AlterPartitionResponse(wire::AlterPartitionResponse {
                topics: topics
                    .iter()
                    .map(|t| wire::AlterPartitionTopicResult {
                        topic: topic_ref_to_wire(&t.topic),
                        partitions: t
                            .partitions
                            .iter()
                            .map(|p| match &p.result {
                                Ok(c) => wire::AlterPartitionResult {
                                    partition: p.partition.0,
                                    error_code: 0,
                                    leader_id: c.leader.map_or(-1, |l| l.0),
                                    leader_epoch: c.leader_epoch.0,
                                    isr: ids(&c.isr),
                                    leader_recovery_state: 0,
                                    partition_epoch: c.partition_epoch,
                                },
                                Err(e) => wire::AlterPartitionResult {
                                    partition: p.partition.0,
                                    error_code: e.code(),
                                    leader_id: -1,
                                    leader_epoch: -1,
                                    isr: Vec::new(),
                                    leader_recovery_state: 0,
                                    partition_epoch: -1,
                                },
                            })
                            .collect(),
                    })
                    .collect(),
            })
        }
        Ok(ControllerReply::BrokerHeartbeat(h)) => {
            Body::BrokerHeartbeatResponse(wire::BrokerHeartbeatResponse {
                error: None,
                is_caught_up: h.is_caught_up,
                is_fenced: h.is_fenced,
                should_shut_down: h.should_shut_down,
            })
        }
    };
    Frame {
        correlation_id,
        metadata_offset: 0,
        body,
    }
}

/// The reply a frame from the controller carries.
pub fn reply_from_frame(frame: Frame) -> Result<Reply, UnexpectedFrame> {
    let item = |r: Option<WireError>| match r {
        None => Ok(()),
        Some(e) => Err(metadata_error_from_wire(e)),
    };
    Ok(match frame.body {
        Body::ErrorResponse(e) => Err(controller_error_from_wire(e)),
        Body::NotController(n) => Err(ControllerError::NotController {
            leader: (n.leader_id >= 0).then_some(NodeId(n.leader_id)),
        }),
        Body::CreateTopicsResponse(r) => Ok(ControllerReply::CreateTopics(
            r.results
                .into_iter()
                .map(|t| match (t.error, t.topic) {
                    (Some(e), _) => Err(metadata_error_from_wire(e)),
                    (None, Some(topic)) => {
                        let (topic, replication_factor) = topic_from_wire(topic);
                        Ok(CreatedTopic {
                            topic,
                            replication_factor,
                        })
                    }
                    (None, None) => Err(MetadataError::Unavailable),
                })
                .collect(),
        )),
        Body::DeleteTopicsResponse(r) => Ok(ControllerReply::DeleteTopics(
            r.results
                .into_iter()
                .map(|t| match (t.error, t.topic) {
                    (Some(e), _) => Err(metadata_error_from_wire(e)),
                    (None, Some(topic)) => Ok(topic_from_wire(topic).0),
                    (None, None) => Err(MetadataError::Unavailable),
                })
                .collect(),
        )),
        Body::CreatePartitionsResponse(r) => Ok(ControllerReply::CreatePartitions(
            r.results.into_iter().map(item).collect(),
        )),
        Body::AlterConfigsResponse(r) => Ok(ControllerReply::AlterConfigs(
            r.results.into_iter().map(item).collect(),
        )),
        Body::AllocateProducerIdsResponse(r) => match r.error {
            Some(e) => Err(controller_error_from_wire(e)),
            None => Ok(ControllerReply::ProducerIds(ProducerIdBlock {
                first: r.first_producer_id,
                count: r.count,
            })),
        },
        Body::BrokerRegistrationResponse(r) => match r.error {
            Some(e) => Err(controller_error_from_wire(e)),
            None => Ok(ControllerReply::BrokerRegistration {
                broker_epoch: r.broker_epoch,
            }),
        },
        Body::BrokerHeartbeatResponse(r) => match r.error {
            Some(e) => Err(controller_error_from_wire(e)),
            None => Ok(ControllerReply::BrokerHeartbeat(HeartbeatReply {
                is_caught_up: r.is_caught_up,
                is_fenced: r.is_fenced,
                should_shut_down: r.should_shut_down,
            })),
        },
        Body::AlterPartitionResponse(r) => Ok(ControllerReply::AlterPartition(
            r.topics
                .into_iter()
                .map(|t| AlterPartitionTopicResult {
                    topic: topic_ref_from_wire(t.topic),
                    partitions: t
                        .partitions
                        .into_iter()
                        .map(|p| AlterPartitionResult {
                            partition: PartitionId(p.partition),
                            result: match p.error_code {
                                0 => Ok(AlterPartitionCommitted {
                                    leader: (p.leader_id >= 0).then_some(NodeId(p.leader_id)),
                                    leader_epoch: LeaderEpoch(p.leader_epoch),
                                    isr: nodes(&p.isr),
                                    partition_epoch: p.partition_epoch,
                                }),
                                code => Err(response_error(code)),
                            },
                        })
                        .collect(),
                })
                .collect(),
        )),
        _ => return Err(UnexpectedFrame("a request where a response belongs")),
    })
}

fn topic_ref_to_wire(t: &TopicRef) -> wire::TopicRef {
    match t {
        TopicRef::Name(n) => wire::TopicRef::Name(n.clone()),
        TopicRef::Id(id) => wire::TopicRef::Id(uuid(*id)),
    }
}

fn topic_ref_from_wire(t: wire::TopicRef) -> TopicRef {
    match t {
        wire::TopicRef::Name(n) => TopicRef::Name(n),
        wire::TopicRef::Id(id) => TopicRef::Id(topic_id(id)),
    }
}

/// A Kafka error code from another node; one this build does not know is an unknown
/// server error (retried by the leader, as Kafka's `AlterPartitionManager` does).
fn response_error(code: i16) -> kafka_protocol::error::ResponseError {
    kafka_protocol::error::ResponseError::try_from_code(code)
        .unwrap_or(kafka_protocol::error::ResponseError::UnknownServerError)
}

/// A FetchMetadata request as a frame.
pub fn fetch_request_to_frame(
    correlation_id: u64,
    node: NodeId,
    from_offset: u64,
    max_bytes: u32,
) -> Frame {
    Frame {
        correlation_id,
        metadata_offset: 0,
        body: Body::FetchMetadataRequest(wire::FetchMetadataRequest {
            node_id: node.0,
            from_offset,
            max_bytes,
        }),
    }
}

/// The controller's answer to FetchMetadata as a frame.
pub fn fetch_reply_to_frame(
    correlation_id: u64,
    fetch: &Result<crate::controller::node::MetadataFetch, ControllerError>,
    voters: &[u64],
) -> Frame {
    use crate::controller::node::MetadataFetch;
    let body = match fetch {
        Err(e) => controller_error_to_wire(e),
        Ok(MetadataFetch::Snapshot { index, term, data }) => {
            Body::FetchMetadataResponse(wire::FetchMetadataResponse {
                error: None,
                committed_offset: *index,
                snapshot: Some(wire::RaftSnapshot {
                    index: *index,
                    term: *term,
                    conf_state: wire::ConfState {
                        voters: voters.to_vec(),
                        ..Default::default()
                    },
                    data: data.clone(),
                }),
                entries: Vec::new(),
            })
        }
        Ok(MetadataFetch::Entries {
            committed_offset,
            entries,
        }) => Body::FetchMetadataResponse(wire::FetchMetadataResponse {
            error: None,
            committed_offset: *committed_offset,
            snapshot: None,
            entries: entries
                .iter()
                .map(|(index, term, data)| wire::RaftEntry {
                    entry_type: 0,
                    term: *term,
                    index: *index,
                    data: data.clone(),
                    context: bytes::Bytes::new(),
                })
                .collect(),
        }),
    };
    Frame {
        correlation_id,
        metadata_offset: 0,
        body,
    }
}

/// The answer to FetchMetadata a frame carries.
pub fn fetch_reply_from_frame(
    frame: Frame,
) -> Result<Result<crate::controller::node::MetadataFetch, ControllerError>, UnexpectedFrame> {
    use crate::controller::node::MetadataFetch;
    Ok(match frame.body {
        Body::NotController(n) => Err(ControllerError::NotController {
            leader: (n.leader_id >= 0).then_some(NodeId(n.leader_id)),
        }),
        Body::ErrorResponse(e) => Err(controller_error_from_wire(e)),
        Body::FetchMetadataResponse(r) => match (r.error, r.snapshot) {
            (Some(e), _) => Err(controller_error_from_wire(e)),
            (None, Some(s)) => Ok(MetadataFetch::Snapshot {
                index: s.index,
                term: s.term,
                data: s.data,
            }),
            (None, None) => Ok(MetadataFetch::Entries {
                committed_offset: r.committed_offset,
                entries: r
                    .entries
                    .into_iter()
                    .map(|e| (e.index, e.term, e.data))
                    .collect(),
            }),
        },
        _ => return Err(UnexpectedFrame("not a FetchMetadata response")),
    })
}

// ---------------------------------------------------------------------------------------
// DescribeQuorum
// ---------------------------------------------------------------------------------------

/// DescribeQuorum forwarded by node `me` to the quorum leader.
pub fn describe_quorum_request_to_frame(correlation_id: u64, me: NodeId) -> Frame {
    Frame::new(
        correlation_id,
        Body::DescribeQuorumRequest(wire::DescribeQuorumRequest { node_id: me.0 }),
    )
}

/// A voter's answer to a forwarded DescribeQuorum: its view when it leads the quorum
/// (the view lists the voters' progress), else "not me", naming the leader it knows.
pub fn describe_quorum_reply_to_frame(correlation_id: u64, view: &QuorumView) -> Frame {
    let progress = |p: &VoterProgress| wire::ReplicaProgress {
        node_id: p.node.0,
        log_end_offset: p.log_end,
        last_heard_ms: p.last_heard_ms.unwrap_or(-1),
    };
    let body = match &view.voters {
        Some(voters) => Body::DescribeQuorumResponse(wire::DescribeQuorumResponse {
            term: view.term,
            leader_id: view.leader.map_or(-1, |l| l.0),
            committed_offset: view.committed,
            voters: voters.iter().map(progress).collect(),
            observers: view.observers.iter().map(progress).collect(),
        }),
        None => Body::NotController(wire::NotController {
            leader_id: view.leader.map_or(-1, |l| l.0),
            term: view.term,
        }),
    };
    Frame::new(correlation_id, body)
}

/// The quorum leader's view from its answer, or the leader a voter that does not lead
/// named (`Err(None)`: it knows none).
pub fn describe_quorum_reply_from_frame(
    frame: Frame,
) -> Result<Result<QuorumView, Option<NodeId>>, UnexpectedFrame> {
    let progress = |p: wire::ReplicaProgress| VoterProgress {
        node: NodeId(p.node_id),
        log_end: p.log_end_offset,
        last_heard_ms: (p.last_heard_ms >= 0).then_some(p.last_heard_ms),
    };
    Ok(match frame.body {
        Body::NotController(n) => Err((n.leader_id >= 0).then_some(NodeId(n.leader_id))),
        Body::DescribeQuorumResponse(r) => Ok(QuorumView {
            term: r.term,
            leader: (r.leader_id >= 0).then_some(NodeId(r.leader_id)),
            committed: r.committed_offset,
            voters: Some(r.voters.into_iter().map(progress).collect()),
            observers: r.observers.into_iter().map(progress).collect(),
        }),
        _ => return Err(UnexpectedFrame("not a DescribeQuorum response")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::cluster::Listener;
    use bytes::BytesMut;
    use wharf_protocol::controller::{decode_frame, encode_frame, split_frame, MAX_FRAME_BYTES};

    fn through_the_wire(frame: &Frame) -> Frame {
        let mut buf = BytesMut::from(&encode_frame(frame).unwrap()[..]);
        let bytes = split_frame(&mut buf, MAX_FRAME_BYTES).unwrap().unwrap();
        decode_frame(&bytes).unwrap()
    }

    #[test]
    fn requests_survive_the_wire() {
        let requests = vec![
            ControllerRequest::CreateTopics {
                topics: vec![CreateTopic {
                    topic: NewTopic {
                        name: "t".into(),
                        partitions: 3,
                        configs: vec![
                            ("retention.ms".into(), Some("1".into())),
                            ("x".into(), None),
                        ],
                        internal: false,
                    },
                    replication_factor: -1,
                    assignments: vec![PartitionAssignment {
                        partition: 0,
                        replicas: vec![NodeId(2)],
                    }],
                }],
                validate_only: true,
            },
            ControllerRequest::DeleteTopics {
                topics: vec![
                    TopicRef::Name("a".into()),
                    TopicRef::Id(TopicId(uuid::Uuid::from_u128(5))),
                ],
            },
            ControllerRequest::CreatePartitions {
                topics: vec![PartitionsIncrease {
                    topic: "t".into(),
                    total: 4,
                    assignments: vec![vec![NodeId(1)], vec![NodeId(2)]],
                }],
                validate_only: false,
            },
            ControllerRequest::AlterConfigs {
                topics: vec![(
                    "t".into(),
                    vec![
                        AlterOp::Set("a".into(), "1".into()),
                        AlterOp::Delete("b".into()),
                        AlterOp::Append("c".into(), "x".into()),
                        AlterOp::Subtract("d".into(), "y".into()),
                    ],
                )],
                validate_only: false,
            },
            ControllerRequest::AllocateProducerIds {
                node: NodeId(3),
                broker_epoch: 9,
            },
            ControllerRequest::RegisterBroker(RegisterBroker {
                node: NodeId(4),
                incarnation_id: 77,
                cluster_id: "c".into(),
                listeners: vec![Listener {
                    name: "PLAINTEXT".into(),
                    host: "h".into(),
                    port: 9092,
                }],
                rack: None,
            }),
            ControllerRequest::Heartbeat(Heartbeat {
                node: NodeId(4),
                broker_epoch: 12,
                applied_offset: 40,
                want_fence: false,
                want_shut_down: true,
            }),
            ControllerRequest::AlterPartition(AlterPartition {
                version: 3,
                broker: NodeId(2),
                broker_epoch: 14,
                topics: vec![
                    AlterPartitionTopic {
                        topic: TopicRef::Id(TopicId(uuid::Uuid::from_u128(6))),
                        partitions: vec![AlterPartitionItem {
                            partition: PartitionId(3),
                            leader_epoch: LeaderEpoch(4),
                            partition_epoch: 9,
                            new_isr: vec![
                                IsrMember {
                                    node: NodeId(2),
                                    broker_epoch: 14,
                                },
                                IsrMember {
                                    node: NodeId(1),
                                    broker_epoch: -1,
                                },
                            ],
                            leader_recovery_state: 0,
                        }],
                    },
                    AlterPartitionTopic {
                        topic: TopicRef::Name("old".into()),
                        partitions: vec![],
                    },
                ],
            }),
        ];
        for request in requests {
            let frame = through_the_wire(&request_to_frame(5, &request));
            assert_eq!(frame.correlation_id, 5);
            let Incoming::Request(back) = incoming_from_frame(frame).unwrap() else {
                panic!("a request");
            };
            assert_eq!(format!("{back:?}"), format!("{request:?}"));
        }
    }

    #[test]
    fn replies_survive_the_wire() {
        let topic = TopicMeta {
            name: "t".into(),
            id: TopicId(uuid::Uuid::from_u128(8)),
            partition_count: 2,
            overrides: [("retention.ms".to_string(), "1".to_string())].into(),
            internal: false,
        };
        let replies: Vec<Reply> = vec![
            Ok(ControllerReply::CreateTopics(vec![
                Ok(CreatedTopic {
                    topic: topic.clone(),
                    replication_factor: 1,
                }),
                Err(MetadataError::TopicAlreadyExists("t".into())),
                Err(MetadataError::UnknownTopic),
            ])),
            Ok(ControllerReply::DeleteTopics(vec![
                Ok(topic),
                Err(MetadataError::UnknownTopicId),
            ])),
            Ok(ControllerReply::CreatePartitions(vec![
                Ok(()),
                Err(MetadataError::InvalidPartitions("no".into())),
            ])),
            Ok(ControllerReply::AlterConfigs(vec![Err(
                MetadataError::InvalidConfig("bad".into()),
            )])),
            Ok(ControllerReply::ProducerIds(ProducerIdBlock {
                first: 1000,
                count: 1000,
            })),
            Ok(ControllerReply::BrokerRegistration { broker_epoch: 7 }),
            Ok(ControllerReply::AlterPartition(vec![
                AlterPartitionTopicResult {
                    topic: TopicRef::Id(TopicId(uuid::Uuid::from_u128(6))),
                    partitions: vec![
                        AlterPartitionResult {
                            partition: PartitionId(0),
                            result: Ok(AlterPartitionCommitted {
                                leader: Some(NodeId(2)),
                                leader_epoch: LeaderEpoch(3),
                                isr: vec![NodeId(2), NodeId(3)],
                                partition_epoch: 8,
                            }),
                        },
                        AlterPartitionResult {
                            partition: PartitionId(1),
                            result: Err(kafka_protocol::error::ResponseError::IneligibleReplica),
                        },
                    ],
                },
            ])),
            Ok(ControllerReply::BrokerHeartbeat(HeartbeatReply {
                is_caught_up: true,
                is_fenced: false,
                should_shut_down: false,
            })),
            Err(ControllerError::NotController {
                leader: Some(NodeId(2)),
            }),
            Err(ControllerError::NotController { leader: None }),
            Err(ControllerError::StaleBrokerEpoch("old".into())),
            Err(ControllerError::DuplicateBrokerRegistration("dup".into())),
        ];
        for reply in replies {
            let back = reply_from_frame(through_the_wire(&reply_to_frame(1, &reply))).unwrap();
            assert_eq!(back, reply);
        }
    }

    #[test]
    fn responses_are_not_requests() {
        let frame = reply_to_frame(
            1,
            &Ok(ControllerReply::BrokerRegistration { broker_epoch: 1 }),
        );
        assert!(incoming_from_frame(frame).is_err());
    }

    #[test]
    fn a_leaders_quorum_view_survives_the_wire() {
        let view = QuorumView {
            term: 7,
            leader: Some(NodeId(2)),
            committed: 42,
            voters: Some(vec![
                VoterProgress {
                    node: NodeId(1),
                    log_end: 40,
                    last_heard_ms: Some(1_700_000_000_000),
                },
                VoterProgress {
                    node: NodeId(2),
                    log_end: 42,
                    last_heard_ms: Some(1_700_000_000_500),
                },
                VoterProgress {
                    node: NodeId(3),
                    log_end: 0,
                    last_heard_ms: None,
                },
            ]),
            observers: vec![VoterProgress {
                node: NodeId(4),
                log_end: 41,
                last_heard_ms: Some(1_700_000_000_100),
            }],
        };
        let frame = through_the_wire(&describe_quorum_reply_to_frame(3, &view));
        assert_eq!(frame.correlation_id, 3);
        assert_eq!(describe_quorum_reply_from_frame(frame).unwrap(), Ok(view));
    }

    #[test]
    fn a_voter_that_does_not_lead_names_the_leader_it_knows() {
        for leader in [Some(NodeId(3)), None] {
            let view = QuorumView {
                term: 5,
                leader,
                committed: 9,
                voters: None,
                observers: Vec::new(),
            };
            let frame = through_the_wire(&describe_quorum_reply_to_frame(1, &view));
            assert_eq!(
                describe_quorum_reply_from_frame(frame).unwrap(),
                Err(leader)
            );
        }
    }

    #[test]
    fn a_forwarded_describe_quorum_is_a_request_and_not_an_answer() {
        let frame = through_the_wire(&describe_quorum_request_to_frame(1, NodeId(4)));
        assert!(matches!(
            incoming_from_frame(frame.clone()),
            Ok(Incoming::DescribeQuorum(wire::DescribeQuorumRequest {
                node_id: 4
            }))
        ));
        assert!(describe_quorum_reply_from_frame(frame).is_err());
    }
}
