//! Owned frames ↔ flatbuffers bytes.

use bytes::{BufMut, Bytes, BytesMut};
use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, Vector, WIPOffset};

use super::types::*;
use super::{
    fb, uuid_from_fb, uuid_to_fb, verify_frame, FrameError, LENGTH_PREFIX_BYTES, MAX_FRAME_BYTES,
};

type Fbb<'a> = FlatBufferBuilder<'a>;

/// Encodes `frame` with its length prefix. A frame larger than [`MAX_FRAME_BYTES`] is an
/// error: no peer would accept it.
pub fn encode_frame(frame: &Frame) -> Result<Bytes, FrameError> {
    let mut fbb = Fbb::with_capacity(256);
    let (body_type, body) = encode_body(&mut fbb, &frame.body);
    let root = fb::Frame::create(
        &mut fbb,
        &fb::FrameArgs {
            correlation_id: frame.correlation_id,
            body_type,
            body: Some(body),
            metadata_offset: frame.metadata_offset,
        },
    );
    fbb.finish(root, None);
    let data = fbb.finished_data();
    if data.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            size: data.len(),
            max_bytes: MAX_FRAME_BYTES,
        });
    }
    let mut out = BytesMut::with_capacity(LENGTH_PREFIX_BYTES + data.len());
    out.put_u32(data.len() as u32);
    out.put_slice(data);
    Ok(out.freeze())
}

/// Decodes one frame (its bytes after the length prefix, as [`super::split_frame`] returns
/// them). Byte fields of the result are slices of `bytes`.
pub fn decode_frame(bytes: &Bytes) -> Result<Frame, FrameError> {
    let frame = verify_frame(bytes)?;
    let d = Decoder { buf: bytes };
    let missing = FrameError::Missing("its body");
    let body = match frame.body_type() {
        fb::Body::RaftMessage => {
            Body::Raft(d.raft_message(frame.body_as_raft_message().ok_or(missing)?)?)
        }
        fb::Body::NotController => {
            let b = frame.body_as_not_controller().ok_or(missing)?;
            Body::NotController(NotController {
                leader_id: b.leader_id(),
                term: b.term(),
            })
        }
        fb::Body::BrokerRegistrationRequest => {
            let b = frame.body_as_broker_registration_request().ok_or(missing)?;
            Body::BrokerRegistrationRequest(BrokerRegistrationRequest {
                node_id: b.node_id(),
                incarnation_id: b.incarnation_id().map(uuid_from_fb).unwrap_or(0),
                cluster_id: b.cluster_id().unwrap_or_default().to_string(),
                listeners: listeners_from_fb(b.listeners()),
                rack: b.rack().map(str::to_string),
            })
        }
        fb::Body::BrokerRegistrationResponse => {
            let b = frame
                .body_as_broker_registration_response()
                .ok_or(missing)?;
            Body::BrokerRegistrationResponse(BrokerRegistrationResponse {
                error: error_from_fb(b.error())?,
                broker_epoch: b.broker_epoch(),
            })
        }
        fb::Body::BrokerHeartbeatRequest => {
            let b = frame.body_as_broker_heartbeat_request().ok_or(missing)?;
            Body::BrokerHeartbeatRequest(BrokerHeartbeatRequest {
                node_id: b.node_id(),
                broker_epoch: b.broker_epoch(),
                applied_offset: b.applied_offset(),
                want_fence: b.want_fence(),
                want_shut_down: b.want_shut_down(),
            })
        }
        fb::Body::BrokerHeartbeatResponse => {
            let b = frame.body_as_broker_heartbeat_response().ok_or(missing)?;
            Body::BrokerHeartbeatResponse(BrokerHeartbeatResponse {
                error: error_from_fb(b.error())?,
                is_caught_up: b.is_caught_up(),
                is_fenced: b.is_fenced(),
                should_shut_down: b.should_shut_down(),
            })
        }
        fb::Body::FetchMetadataRequest => {
            let b = frame.body_as_fetch_metadata_request().ok_or(missing)?;
            Body::FetchMetadataRequest(FetchMetadataRequest {
                node_id: b.node_id(),
                from_offset: b.from_offset(),
                max_bytes: b.max_bytes(),
            })
        }
        fb::Body::FetchMetadataResponse => {
            let b = frame.body_as_fetch_metadata_response().ok_or(missing)?;
            Body::FetchMetadataResponse(FetchMetadataResponse {
                error: error_from_fb(b.error())?,
                committed_offset: b.committed_offset(),
                snapshot: b.snapshot().map(|s| d.snapshot(s)),
                entries: d.entries(b.entries())?,
            })
        }
        fb::Body::CreateTopicsRequest => {
            let b = frame.body_as_create_topics_request().ok_or(missing)?;
            let topics = b
                .topics()
                .iter()
                .flatten()
                .map(|t| NewTopic {
                    name: t.name().unwrap_or_default().to_string(),
                    partitions: t.partitions(),
                    replication_factor: t.replication_factor(),
                    assignments: assignments_from_fb(t.assignments()),
                    configs: configs_from_fb(t.configs()),
                    internal: t.internal(),
                })
                .collect();
            Body::CreateTopicsRequest(CreateTopicsRequest {
                topics,
                validate_only: b.validate_only(),
            })
        }
        fb::Body::CreateTopicsResponse => {
            let b = frame.body_as_create_topics_response().ok_or(missing)?;
            Body::CreateTopicsResponse(topic_results_from_fb(b.results())?)
        }
        fb::Body::DeleteTopicsRequest => {
            let b = frame.body_as_delete_topics_request().ok_or(missing)?;
            let topics = b
                .topics()
                .iter()
                .flatten()
                .map(|t| match t.name() {
                    Some(name) => TopicRef::Name(name.to_string()),
                    None => TopicRef::Id(t.id().map(uuid_from_fb).unwrap_or(0)),
                })
                .collect();
            Body::DeleteTopicsRequest(DeleteTopicsRequest { topics })
        }
        fb::Body::DeleteTopicsResponse => {
            let b = frame.body_as_delete_topics_response().ok_or(missing)?;
            Body::DeleteTopicsResponse(topic_results_from_fb(b.results())?)
        }
        fb::Body::CreatePartitionsRequest => {
            let b = frame.body_as_create_partitions_request().ok_or(missing)?;
            let topics = b
                .topics()
                .iter()
                .flatten()
                .map(|t| PartitionsIncrease {
                    topic: t.topic().unwrap_or_default().to_string(),
                    total: t.total(),
                    assignments: assignments_from_fb(t.assignments()),
                })
                .collect();
            Body::CreatePartitionsRequest(CreatePartitionsRequest {
                topics,
                validate_only: b.validate_only(),
            })
        }
        fb::Body::CreatePartitionsResponse => {
            let b = frame.body_as_create_partitions_response().ok_or(missing)?;
            Body::CreatePartitionsResponse(item_results_from_fb(b.results())?)
        }
        fb::Body::AlterConfigsRequest => {
            let b = frame.body_as_alter_configs_request().ok_or(missing)?;
            let mut topics = Vec::new();
            for t in b.topics().iter().flatten() {
                let mut ops = Vec::new();
                for op in t.ops().iter().flatten() {
                    ops.push(AlterOp {
                        op: match op.op() {
                            fb::AlterOpType::Set => AlterOpType::Set,
                            fb::AlterOpType::Delete => AlterOpType::Delete,
                            fb::AlterOpType::Append => AlterOpType::Append,
                            fb::AlterOpType::Subtract => AlterOpType::Subtract,
                            other => {
                                return Err(FrameError::BadValue(format!(
                                    "unknown config operation {}",
                                    other.0
                                )))
                            }
                        },
                        name: op.name().unwrap_or_default().to_string(),
                        value: op.value().map(str::to_string),
                    });
                }
                topics.push(TopicAlterations {
                    topic: t.topic().unwrap_or_default().to_string(),
                    ops,
                });
            }
            Body::AlterConfigsRequest(AlterConfigsRequest {
                topics,
                validate_only: b.validate_only(),
            })
        }
        fb::Body::AlterConfigsResponse => {
            let b = frame.body_as_alter_configs_response().ok_or(missing)?;
            Body::AlterConfigsResponse(item_results_from_fb(b.results())?)
        }
        fb::Body::AllocateProducerIdsRequest => {
            let b = frame
                .body_as_allocate_producer_ids_request()
                .ok_or(missing)?;
            Body::AllocateProducerIdsRequest(AllocateProducerIdsRequest {
                node_id: b.node_id(),
                broker_epoch: b.broker_epoch(),
            })
        }
        fb::Body::AllocateProducerIdsResponse => {
            let b = frame
                .body_as_allocate_producer_ids_response()
                .ok_or(missing)?;
            Body::AllocateProducerIdsResponse(AllocateProducerIdsResponse {
                error: error_from_fb(b.error())?,
                first_producer_id: b.first_producer_id(),
                count: b.count(),
            })
        }
        fb::Body::ErrorResponse => {
            let b = frame.body_as_error_response().ok_or(missing)?;
            Body::ErrorResponse(error_from_fb(b.error())?.ok_or(FrameError::Missing("the error"))?)
        }
        fb::Body::AlterPartitionRequest => {
            let b = frame.body_as_alter_partition_request().ok_or(missing)?;
            let topics = b
                .topics()
                .iter()
                .flatten()
                .map(|t| AlterPartitionTopic {
                    topic: topic_ref_from_fb(t.name(), t.id()),
                    partitions: t
                        .partitions()
                        .iter()
                        .flatten()
                        .map(|p| AlterPartitionData {
                            partition: p.partition(),
                            leader_epoch: p.leader_epoch(),
                            new_isr: p
                                .new_isr()
                                .iter()
                                .flatten()
                                .map(|m| IsrMember {
                                    broker_id: m.broker_id(),
                                    broker_epoch: m.broker_epoch(),
                                })
                                .collect(),
                            leader_recovery_state: p.leader_recovery_state(),
                            partition_epoch: p.partition_epoch(),
                        })
                        .collect(),
                })
                .collect();
            Body::AlterPartitionRequest(AlterPartitionRequest {
                version: b.version(),
                broker_id: b.broker_id(),
                broker_epoch: b.broker_epoch(),
                topics,
            })
        }
        fb::Body::AlterPartitionResponse => {
            let b = frame.body_as_alter_partition_response().ok_or(missing)?;
            let topics = b
                .topics()
                .iter()
                .flatten()
                .map(|t| AlterPartitionTopicResult {
                    topic: topic_ref_from_fb(t.name(), t.id()),
                    partitions: t
                        .partitions()
                        .iter()
                        .flatten()
                        .map(|p| AlterPartitionResult {
                            partition: p.partition(),
                            error_code: p.error_code(),
                            leader_id: p.leader_id(),
                            leader_epoch: p.leader_epoch(),
                            isr: p.isr().iter().flatten().collect(),
                            leader_recovery_state: p.leader_recovery_state(),
                            partition_epoch: p.partition_epoch(),
                        })
                        .collect(),
                })
                .collect();
            Body::AlterPartitionResponse(AlterPartitionResponse { topics })
        }
        fb::Body::DescribeQuorumRequest => {
            let b = frame.body_as_describe_quorum_request().ok_or(missing)?;
            Body::DescribeQuorumRequest(DescribeQuorumRequest {
                node_id: b.node_id(),
            })
        }
        fb::Body::DescribeQuorumResponse => {
            let b = frame.body_as_describe_quorum_response().ok_or(missing)?;
            Body::DescribeQuorumResponse(DescribeQuorumResponse {
                term: b.term(),
                leader_id: b.leader_id(),
                committed_offset: b.committed_offset(),
                voters: replica_progress_from_fb(b.voters()),
                observers: replica_progress_from_fb(b.observers()),
            })
        }
        other => return Err(FrameError::UnknownBody(other.0)),
    };
    Ok(Frame {
        correlation_id: frame.correlation_id(),
        metadata_offset: frame.metadata_offset(),
        body,
    })
}

/// Reads byte fields as slices of the frame they came from.
struct Decoder<'b> {
    buf: &'b Bytes,
}

impl Decoder<'_> {
    /// `v`, which the verifier proved lies inside `self.buf`, as a slice of it.
    fn bytes(&self, v: Option<Vector<'_, u8>>) -> Bytes {
        let Some(v) = v else {
            return Bytes::new();
        };
        let slice = v.bytes();
        let start = slice.as_ptr() as usize - self.buf.as_ptr() as usize;
        self.buf.slice(start..start + slice.len())
    }

    fn entry(&self, e: fb::RaftEntry<'_>) -> RaftEntry {
        RaftEntry {
            entry_type: e.entry_type(),
            term: e.term(),
            index: e.index(),
            data: self.bytes(e.data()),
            context: self.bytes(e.context()),
        }
    }

    fn entries(
        &self,
        v: Option<Vector<'_, ForwardsUOffset<fb::RaftEntry<'_>>>>,
    ) -> Result<Vec<RaftEntry>, FrameError> {
        Ok(v.iter().flatten().map(|e| self.entry(e)).collect())
    }

    fn snapshot(&self, s: fb::RaftSnapshot<'_>) -> RaftSnapshot {
        let u64s = |v: Option<Vector<'_, u64>>| v.iter().flatten().collect::<Vec<u64>>();
        let conf_state = s
            .conf_state()
            .map(|c| ConfState {
                voters: u64s(c.voters()),
                learners: u64s(c.learners()),
                voters_outgoing: u64s(c.voters_outgoing()),
                learners_next: u64s(c.learners_next()),
                auto_leave: c.auto_leave(),
            })
            .unwrap_or_default();
        RaftSnapshot {
            index: s.index(),
            term: s.term(),
            conf_state,
            data: self.bytes(s.data()),
        }
    }

    fn raft_message(&self, m: fb::RaftMessage<'_>) -> Result<RaftMessage, FrameError> {
        Ok(RaftMessage {
            msg_type: m.msg_type().0,
            to: m.to(),
            from: m.from(),
            term: m.term(),
            log_term: m.log_term(),
            index: m.index(),
            entries: self.entries(m.entries())?,
            commit: m.commit(),
            commit_term: m.commit_term(),
            snapshot: m.snapshot().map(|s| self.snapshot(s)),
            request_snapshot: m.request_snapshot(),
            reject: m.reject(),
            reject_hint: m.reject_hint(),
            context: self.bytes(m.context()),
            priority: m.priority(),
        })
    }
}

fn error_from_fb(e: Option<fb::Error<'_>>) -> Result<Option<WireError>, FrameError> {
    let Some(e) = e else {
        return Ok(None);
    };
    if e.kind() == fb::ErrorKind::None {
        return Ok(None);
    }
    let kind = ErrorKind::from_code(e.kind().0)
        .ok_or_else(|| FrameError::BadValue(format!("unknown error kind {}", e.kind().0)))?;
    Ok(Some(WireError {
        kind,
        message: e.message().unwrap_or_default().to_string(),
    }))
}

fn listeners_from_fb(v: Option<Vector<'_, ForwardsUOffset<fb::Listener<'_>>>>) -> Vec<Listener> {
    v.iter()
        .flatten()
        .map(|l| Listener {
            name: l.name().unwrap_or_default().to_string(),
            host: l.host().unwrap_or_default().to_string(),
            port: l.port(),
        })
        .collect()
}

pub(crate) fn configs_from_fb(
    v: Option<Vector<'_, ForwardsUOffset<fb::ConfigEntry<'_>>>>,
) -> Vec<ConfigEntry> {
    v.iter()
        .flatten()
        .map(|c| ConfigEntry {
            name: c.name().unwrap_or_default().to_string(),
            value: c.value().map(str::to_string),
        })
        .collect()
}

fn assignments_from_fb(
    v: Option<Vector<'_, ForwardsUOffset<fb::PartitionAssignment<'_>>>>,
) -> Vec<PartitionAssignment> {
    v.iter()
        .flatten()
        .map(|a| PartitionAssignment {
            partition: a.partition(),
            replicas: a.replicas().iter().flatten().collect(),
        })
        .collect()
}

fn topic_results_from_fb(
    v: Option<Vector<'_, ForwardsUOffset<fb::TopicResult<'_>>>>,
) -> Result<TopicResults, FrameError> {
    let mut results = Vec::new();
    for r in v.iter().flatten() {
        results.push(TopicResult {
            error: error_from_fb(r.error())?,
            topic: r.topic().map(|t| TopicDescription {
                name: t.name().unwrap_or_default().to_string(),
                id: t.id().map(uuid_from_fb).unwrap_or(0),
                partitions: t.partitions(),
                replication_factor: t.replication_factor(),
                configs: configs_from_fb(t.configs()),
                internal: t.internal(),
            }),
        });
    }
    Ok(TopicResults { results })
}

fn item_results_from_fb(
    v: Option<Vector<'_, ForwardsUOffset<fb::ItemResult<'_>>>>,
) -> Result<ItemResults, FrameError> {
    let mut results = Vec::new();
    for r in v.iter().flatten() {
        results.push(error_from_fb(r.error())?);
    }
    Ok(ItemResults { results })
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

fn encode_body(
    fbb: &mut Fbb<'_>,
    body: &Body,
) -> (fb::Body, WIPOffset<flatbuffers::UnionWIPOffset>) {
    match body {
        Body::Raft(m) => (
            fb::Body::RaftMessage,
            raft_message_to_fb(fbb, m).as_union_value(),
        ),
        Body::NotController(b) => (
            fb::Body::NotController,
            fb::NotController::create(
                fbb,
                &fb::NotControllerArgs {
                    leader_id: b.leader_id,
                    term: b.term,
                },
            )
            .as_union_value(),
        ),
        Body::BrokerRegistrationRequest(b) => {
            let cluster_id = fbb.create_string(&b.cluster_id);
            let listeners = listeners_to_fb(fbb, &b.listeners);
            let rack = b.rack.as_deref().map(|r| fbb.create_string(r));
            let id = uuid_to_fb(b.incarnation_id);
            (
                fb::Body::BrokerRegistrationRequest,
                fb::BrokerRegistrationRequest::create(
                    fbb,
                    &fb::BrokerRegistrationRequestArgs {
                        node_id: b.node_id,
                        incarnation_id: Some(&id),
                        cluster_id: Some(cluster_id),
                        listeners: Some(listeners),
                        rack,
                    },
                )
                .as_union_value(),
            )
        }
        Body::BrokerRegistrationResponse(b) => {
            let error = error_to_fb(fbb, b.error.as_ref());
            (
                fb::Body::BrokerRegistrationResponse,
                fb::BrokerRegistrationResponse::create(
                    fbb,
                    &fb::BrokerRegistrationResponseArgs {
                        error,
                        broker_epoch: b.broker_epoch,
                    },
                )
                .as_union_value(),
            )
        }
        Body::BrokerHeartbeatRequest(b) => (
            fb::Body::BrokerHeartbeatRequest,
            fb::BrokerHeartbeatRequest::create(
                fbb,
                &fb::BrokerHeartbeatRequestArgs {
                    node_id: b.node_id,
                    broker_epoch: b.broker_epoch,
                    applied_offset: b.applied_offset,
                    want_fence: b.want_fence,
                    want_shut_down: b.want_shut_down,
                },
            )
            .as_union_value(),
        ),
        Body::BrokerHeartbeatResponse(b) => {
            let error = error_to_fb(fbb, b.error.as_ref());
            (
                fb::Body::BrokerHeartbeatResponse,
                fb::BrokerHeartbeatResponse::create(
                    fbb,
                    &fb::BrokerHeartbeatResponseArgs {
                        error,
                        is_caught_up: b.is_caught_up,
                        is_fenced: b.is_fenced,
                        should_shut_down: b.should_shut_down,
                    },
                )
                .as_union_value(),
            )
        }
        Body::FetchMetadataRequest(b) => (
            fb::Body::FetchMetadataRequest,
            fb::FetchMetadataRequest::create(
                fbb,
                &fb::FetchMetadataRequestArgs {
                    node_id: b.node_id,
                    from_offset: b.from_offset,
                    max_bytes: b.max_bytes,
                },
            )
            .as_union_value(),
        ),
        Body::FetchMetadataResponse(b) => {
            let error = error_to_fb(fbb, b.error.as_ref());
            let snapshot = b.snapshot.as_ref().map(|s| snapshot_to_fb(fbb, s));
            let entries = entries_to_fb(fbb, &b.entries);
            (
                fb::Body::FetchMetadataResponse,
                fb::FetchMetadataResponse::create(
                    fbb,
                    &fb::FetchMetadataResponseArgs {
                        error,
                        committed_offset: b.committed_offset,
                        snapshot,
                        entries: Some(entries),
                    },
                )
                .as_union_value(),
            )
        }
        Body::CreateTopicsRequest(b) => {
            let topics: Vec<_> = b
                .topics
                .iter()
                .map(|t| {
                    let name = fbb.create_string(&t.name);
                    let assignments = assignments_to_fb(fbb, &t.assignments);
                    let configs = configs_to_fb(fbb, &t.configs);
                    fb::NewTopic::create(
                        fbb,
                        &fb::NewTopicArgs {
                            name: Some(name),
                            partitions: t.partitions,
                            replication_factor: t.replication_factor,
                            assignments: Some(assignments),
                            configs: Some(configs),
                            internal: t.internal,
                        },
                    )
                })
                .collect();
            let topics = fbb.create_vector(&topics);
            (
                fb::Body::CreateTopicsRequest,
                fb::CreateTopicsRequest::create(
                    fbb,
                    &fb::CreateTopicsRequestArgs {
                        topics: Some(topics),
                        validate_only: b.validate_only,
                    },
                )
                .as_union_value(),
            )
        }
        Body::CreateTopicsResponse(b) => {
            let results = topic_results_to_fb(fbb, b);
            (
                fb::Body::CreateTopicsResponse,
                fb::CreateTopicsResponse::create(
                    fbb,
                    &fb::CreateTopicsResponseArgs {
                        results: Some(results),
                    },
                )
                .as_union_value(),
            )
        }
        Body::DeleteTopicsRequest(b) => {
            let topics: Vec<_> = b
                .topics
                .iter()
                .map(|t| match t {
                    TopicRef::Name(name) => {
                        let name = fbb.create_string(name);
                        fb::TopicRef::create(
                            fbb,
                            &fb::TopicRefArgs {
                                name: Some(name),
                                id: None,
                            },
                        )
                    }
                    TopicRef::Id(id) => {
                        let id = uuid_to_fb(*id);
                        fb::TopicRef::create(
                            fbb,
                            &fb::TopicRefArgs {
                                name: None,
                                id: Some(&id),
                            },
                        )
                    }
                })
                .collect();
            let topics = fbb.create_vector(&topics);
            (
                fb::Body::DeleteTopicsRequest,
                fb::DeleteTopicsRequest::create(
                    fbb,
                    &fb::DeleteTopicsRequestArgs {
                        topics: Some(topics),
                    },
                )
                .as_union_value(),
            )
        }
        Body::DeleteTopicsResponse(b) => {
            let results = topic_results_to_fb(fbb, b);
            (
                fb::Body::DeleteTopicsResponse,
                fb::DeleteTopicsResponse::create(
                    fbb,
                    &fb::DeleteTopicsResponseArgs {
                        results: Some(results),
                    },
                )
                .as_union_value(),
            )
        }
        Body::CreatePartitionsRequest(b) => {
            let topics: Vec<_> = b
                .topics
                .iter()
                .map(|t| {
                    let topic = fbb.create_string(&t.topic);
                    let assignments = assignments_to_fb(fbb, &t.assignments);
                    fb::PartitionsIncrease::create(
                        fbb,
                        &fb::PartitionsIncreaseArgs {
                            topic: Some(topic),
                            total: t.total,
                            assignments: Some(assignments),
                        },
                    )
                })
                .collect();
            let topics = fbb.create_vector(&topics);
            (
                fb::Body::CreatePartitionsRequest,
                fb::CreatePartitionsRequest::create(
                    fbb,
                    &fb::CreatePartitionsRequestArgs {
                        topics: Some(topics),
                        validate_only: b.validate_only,
                    },
                )
                .as_union_value(),
            )
        }
        Body::CreatePartitionsResponse(b) => {
            let results = item_results_to_fb(fbb, b);
            (
                fb::Body::CreatePartitionsResponse,
                fb::CreatePartitionsResponse::create(
                    fbb,
                    &fb::CreatePartitionsResponseArgs {
                        results: Some(results),
                    },
                )
                .as_union_value(),
            )
        }
        Body::AlterConfigsRequest(b) => {
            let topics: Vec<_> = b
                .topics
                .iter()
                .map(|t| {
                    let topic = fbb.create_string(&t.topic);
                    let ops: Vec<_> = t
                        .ops
                        .iter()
                        .map(|op| {
                            let name = fbb.create_string(&op.name);
                            let value = op.value.as_deref().map(|v| fbb.create_string(v));
                            fb::AlterOp::create(
                                fbb,
                                &fb::AlterOpArgs {
                                    op: match op.op {
                                        AlterOpType::Set => fb::AlterOpType::Set,
                                        AlterOpType::Delete => fb::AlterOpType::Delete,
                                        AlterOpType::Append => fb::AlterOpType::Append,
                                        AlterOpType::Subtract => fb::AlterOpType::Subtract,
                                    },
                                    name: Some(name),
                                    value,
                                },
                            )
                        })
                        .collect();
                    let ops = fbb.create_vector(&ops);
                    fb::TopicAlterations::create(
                        fbb,
                        &fb::TopicAlterationsArgs {
                            topic: Some(topic),
                            ops: Some(ops),
                        },
                    )
                })
                .collect();
            let topics = fbb.create_vector(&topics);
            (
                fb::Body::AlterConfigsRequest,
                fb::AlterConfigsRequest::create(
                    fbb,
                    &fb::AlterConfigsRequestArgs {
                        topics: Some(topics),
                        validate_only: b.validate_only,
                    },
                )
                .as_union_value(),
            )
        }
        Body::AlterConfigsResponse(b) => {
            let results = item_results_to_fb(fbb, b);
            (
                fb::Body::AlterConfigsResponse,
                fb::AlterConfigsResponse::create(
                    fbb,
                    &fb::AlterConfigsResponseArgs {
                        results: Some(results),
                    },
                )
                .as_union_value(),
            )
        }
        Body::AllocateProducerIdsRequest(b) => (
            fb::Body::AllocateProducerIdsRequest,
            fb::AllocateProducerIdsRequest::create(
                fbb,
                &fb::AllocateProducerIdsRequestArgs {
                    node_id: b.node_id,
                    broker_epoch: b.broker_epoch,
                },
            )
            .as_union_value(),
        ),
        Body::ErrorResponse(e) => {
            let error = error_to_fb(fbb, Some(e));
            (
                fb::Body::ErrorResponse,
                fb::ErrorResponse::create(fbb, &fb::ErrorResponseArgs { error }).as_union_value(),
            )
        }
        Body::AlterPartitionRequest(b) => {
            let topics: Vec<_> = b
                .topics
                .iter()
                .map(|t| {
                    let partitions: Vec<_> = t
                        .partitions
                        .iter()
                        .map(|p| {
                            let members: Vec<_> = p
                                .new_isr
                                .iter()
                                .map(|m| {
                                    fb::IsrMember::create(
                                        fbb,
                                        &fb::IsrMemberArgs {
                                            broker_id: m.broker_id,
                                            broker_epoch: m.broker_epoch,
                                        },
                                    )
                                })
                                .collect();
                            let new_isr = fbb.create_vector(&members);
                            fb::AlterPartitionData::create(
                                fbb,
                                &fb::AlterPartitionDataArgs {
                                    partition: p.partition,
                                    leader_epoch: p.leader_epoch,
                                    new_isr: Some(new_isr),
                                    leader_recovery_state: p.leader_recovery_state,
                                    partition_epoch: p.partition_epoch,
                                },
                            )
                        })
                        .collect();
                    let partitions = fbb.create_vector(&partitions);
                    let (name, id) = topic_ref_to_fb(fbb, &t.topic);
                    fb::AlterPartitionTopic::create(
                        fbb,
                        &fb::AlterPartitionTopicArgs {
                            name,
                            id: id.as_ref(),
                            partitions: Some(partitions),
                        },
                    )
                })
                .collect();
            let topics = fbb.create_vector(&topics);
            (
                fb::Body::AlterPartitionRequest,
                fb::AlterPartitionRequest::create(
                    fbb,
                    &fb::AlterPartitionRequestArgs {
                        version: b.version,
                        broker_id: b.broker_id,
                        broker_epoch: b.broker_epoch,
                        topics: Some(topics),
                    },
                )
                .as_union_value(),
            )
        }
        Body::AlterPartitionResponse(b) => {
            let topics: Vec<_> = b
                .topics
                .iter()
                .map(|t| {
                    let partitions: Vec<_> = t
                        .partitions
                        .iter()
                        .map(|p| {
                            let isr = fbb.create_vector(&p.isr);
                            fb::AlterPartitionResult::create(
                                fbb,
                                &fb::AlterPartitionResultArgs {
                                    partition: p.partition,
                                    error_code: p.error_code,
                                    leader_id: p.leader_id,
                                    leader_epoch: p.leader_epoch,
                                    isr: Some(isr),
                                    leader_recovery_state: p.leader_recovery_state,
                                    partition_epoch: p.partition_epoch,
                                },
                            )
                        })
                        .collect();
                    let partitions = fbb.create_vector(&partitions);
                    let (name, id) = topic_ref_to_fb(fbb, &t.topic);
                    fb::AlterPartitionTopicResult::create(
                        fbb,
                        &fb::AlterPartitionTopicResultArgs {
                            name,
                            id: id.as_ref(),
                            partitions: Some(partitions),
                        },
                    )
                })
                .collect();
            let topics = fbb.create_vector(&topics);
            (
                fb::Body::AlterPartitionResponse,
                fb::AlterPartitionResponse::create(
                    fbb,
                    &fb::AlterPartitionResponseArgs {
                        topics: Some(topics),
                    },
                )
                .as_union_value(),
            )
        }
        Body::AllocateProducerIdsResponse(b) => {
            let error = error_to_fb(fbb, b.error.as_ref());
            (
                fb::Body::AllocateProducerIdsResponse,
                fb::AllocateProducerIdsResponse::create(
                    fbb,
                    &fb::AllocateProducerIdsResponseArgs {
                        error,
                        first_producer_id: b.first_producer_id,
                        count: b.count,
                    },
                )
                .as_union_value(),
            )
        }
        Body::DescribeQuorumRequest(b) => (
            fb::Body::DescribeQuorumRequest,
            fb::DescribeQuorumRequest::create(
                fbb,
                &fb::DescribeQuorumRequestArgs { node_id: b.node_id },
            )
            .as_union_value(),
        ),
        Body::DescribeQuorumResponse(b) => {
            let voters = replica_progress_to_fb(fbb, &b.voters);
            let observers = replica_progress_to_fb(fbb, &b.observers);
            (
                fb::Body::DescribeQuorumResponse,
                fb::DescribeQuorumResponse::create(
                    fbb,
                    &fb::DescribeQuorumResponseArgs {
                        term: b.term,
                        leader_id: b.leader_id,
                        committed_offset: b.committed_offset,
                        voters: Some(voters),
                        observers: Some(observers),
                    },
                )
                .as_union_value(),
            )
        }
    }
}

fn replica_progress_from_fb(
    v: Option<Vector<'_, ForwardsUOffset<fb::ReplicaProgress<'_>>>>,
) -> Vec<ReplicaProgress> {
    v.iter()
        .flatten()
        .map(|r| ReplicaProgress {
            node_id: r.node_id(),
            log_end_offset: r.log_end_offset(),
            last_heard_ms: r.last_heard_ms(),
        })
        .collect()
}

fn replica_progress_to_fb<'a>(
    fbb: &mut Fbb<'a>,
    replicas: &[ReplicaProgress],
) -> WIPOffset<Vector<'a, ForwardsUOffset<fb::ReplicaProgress<'a>>>> {
    let offsets: Vec<_> = replicas
        .iter()
        .map(|r| {
            fb::ReplicaProgress::create(
                fbb,
                &fb::ReplicaProgressArgs {
                    node_id: r.node_id,
                    log_end_offset: r.log_end_offset,
                    last_heard_ms: r.last_heard_ms,
                },
            )
        })
        .collect();
    fbb.create_vector(&offsets)
}

fn raft_message_to_fb<'a>(fbb: &mut Fbb<'a>, m: &RaftMessage) -> WIPOffset<fb::RaftMessage<'a>> {
    let entries = entries_to_fb(fbb, &m.entries);
    let snapshot = m.snapshot.as_ref().map(|s| snapshot_to_fb(fbb, s));
    let context = (!m.context.is_empty()).then(|| fbb.create_vector(&m.context[..]));
    fb::RaftMessage::create(
        fbb,
        &fb::RaftMessageArgs {
            msg_type: fb::RaftMessageType(m.msg_type),
            to: m.to,
            from: m.from,
            term: m.term,
            log_term: m.log_term,
            index: m.index,
            entries: (!m.entries.is_empty()).then_some(entries),
            commit: m.commit,
            commit_term: m.commit_term,
            snapshot,
            request_snapshot: m.request_snapshot,
            reject: m.reject,
            reject_hint: m.reject_hint,
            context,
            priority: m.priority,
        },
    )
}

fn entries_to_fb<'a>(
    fbb: &mut Fbb<'a>,
    entries: &[RaftEntry],
) -> WIPOffset<Vector<'a, ForwardsUOffset<fb::RaftEntry<'a>>>> {
    let offsets: Vec<_> = entries
        .iter()
        .map(|e| {
            let data = (!e.data.is_empty()).then(|| fbb.create_vector(&e.data[..]));
            let context = (!e.context.is_empty()).then(|| fbb.create_vector(&e.context[..]));
            fb::RaftEntry::create(
                fbb,
                &fb::RaftEntryArgs {
                    entry_type: e.entry_type,
                    term: e.term,
                    index: e.index,
                    data,
                    context,
                },
            )
        })
        .collect();
    fbb.create_vector(&offsets)
}

fn snapshot_to_fb<'a>(fbb: &mut Fbb<'a>, s: &RaftSnapshot) -> WIPOffset<fb::RaftSnapshot<'a>> {
    let c = &s.conf_state;
    let voters = fbb.create_vector(&c.voters);
    let learners = fbb.create_vector(&c.learners);
    let voters_outgoing = fbb.create_vector(&c.voters_outgoing);
    let learners_next = fbb.create_vector(&c.learners_next);
    let conf_state = fb::RaftConfState::create(
        fbb,
        &fb::RaftConfStateArgs {
            voters: Some(voters),
            learners: Some(learners),
            voters_outgoing: Some(voters_outgoing),
            learners_next: Some(learners_next),
            auto_leave: c.auto_leave,
        },
    );
    let data = fbb.create_vector(&s.data[..]);
    fb::RaftSnapshot::create(
        fbb,
        &fb::RaftSnapshotArgs {
            index: s.index,
            term: s.term,
            conf_state: Some(conf_state),
            data: Some(data),
        },
    )
}

fn error_to_fb<'a>(fbb: &mut Fbb<'a>, e: Option<&WireError>) -> Option<WIPOffset<fb::Error<'a>>> {
    let e = e?;
    let message = fbb.create_string(&e.message);
    Some(fb::Error::create(
        fbb,
        &fb::ErrorArgs {
            kind: fb::ErrorKind(e.kind.code()),
            message: Some(message),
        },
    ))
}

fn listeners_to_fb<'a>(
    fbb: &mut Fbb<'a>,
    listeners: &[Listener],
) -> WIPOffset<Vector<'a, ForwardsUOffset<fb::Listener<'a>>>> {
    let offsets: Vec<_> = listeners
        .iter()
        .map(|l| {
            let name = fbb.create_string(&l.name);
            let host = fbb.create_string(&l.host);
            fb::Listener::create(
                fbb,
                &fb::ListenerArgs {
                    name: Some(name),
                    host: Some(host),
                    port: l.port,
                },
            )
        })
        .collect();
    fbb.create_vector(&offsets)
}

pub(crate) fn configs_to_fb<'a>(
    fbb: &mut Fbb<'a>,
    configs: &[ConfigEntry],
) -> WIPOffset<Vector<'a, ForwardsUOffset<fb::ConfigEntry<'a>>>> {
    let offsets: Vec<_> = configs
        .iter()
        .map(|c| {
            let name = fbb.create_string(&c.name);
            let value = c.value.as_deref().map(|v| fbb.create_string(v));
            fb::ConfigEntry::create(
                fbb,
                &fb::ConfigEntryArgs {
                    name: Some(name),
                    value,
                },
            )
        })
        .collect();
    fbb.create_vector(&offsets)
}

fn assignments_to_fb<'a>(
    fbb: &mut Fbb<'a>,
    assignments: &[PartitionAssignment],
) -> WIPOffset<Vector<'a, ForwardsUOffset<fb::PartitionAssignment<'a>>>> {
    let offsets: Vec<_> = assignments
        .iter()
        .map(|a| {
            let replicas = fbb.create_vector(&a.replicas);
            fb::PartitionAssignment::create(
                fbb,
                &fb::PartitionAssignmentArgs {
                    partition: a.partition,
                    replicas: Some(replicas),
                },
            )
        })
        .collect();
    fbb.create_vector(&offsets)
}

fn topic_results_to_fb<'a>(
    fbb: &mut Fbb<'a>,
    results: &TopicResults,
) -> WIPOffset<Vector<'a, ForwardsUOffset<fb::TopicResult<'a>>>> {
    let offsets: Vec<_> = results
        .results
        .iter()
        .map(|r| {
            let error = error_to_fb(fbb, r.error.as_ref());
            let topic = r.topic.as_ref().map(|t| {
                let name = fbb.create_string(&t.name);
                let configs = configs_to_fb(fbb, &t.configs);
                let id = uuid_to_fb(t.id);
                fb::TopicDescription::create(
                    fbb,
                    &fb::TopicDescriptionArgs {
                        name: Some(name),
                        id: Some(&id),
                        partitions: t.partitions,
                        replication_factor: t.replication_factor,
                        configs: Some(configs),
                        internal: t.internal,
                    },
                )
            });
            fb::TopicResult::create(fbb, &fb::TopicResultArgs { error, topic })
        })
        .collect();
    fbb.create_vector(&offsets)
}

fn item_results_to_fb<'a>(
    fbb: &mut Fbb<'a>,
    results: &ItemResults,
) -> WIPOffset<Vector<'a, ForwardsUOffset<fb::ItemResult<'a>>>> {
    let offsets: Vec<_> = results
        .results
        .iter()
        .map(|r| {
            let error = error_to_fb(fbb, r.as_ref());
            fb::ItemResult::create(fbb, &fb::ItemResultArgs { error })
        })
        .collect();
    fbb.create_vector(&offsets)
}

/// A topic named by `name` or, when it is absent, by `id` (absent: the nil id).
fn topic_ref_from_fb(name: Option<&str>, id: Option<&fb::Uuid>) -> TopicRef {
    match name {
        Some(name) => TopicRef::Name(name.to_string()),
        None => TopicRef::Id(id.map(uuid_from_fb).unwrap_or(0)),
    }
}

fn topic_ref_to_fb<'a>(
    fbb: &mut Fbb<'a>,
    topic: &TopicRef,
) -> (Option<WIPOffset<&'a str>>, Option<fb::Uuid>) {
    match topic {
        TopicRef::Name(name) => (Some(fbb.create_string(name)), None),
        TopicRef::Id(id) => (None, Some(uuid_to_fb(*id))),
    }
}
