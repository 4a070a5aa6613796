//! DescribeQuorum (KIP-595, KIP-853): the metadata quorum as its leader sees it — leader,
//! term (Kafka's leader epoch), high watermark (the committed offset), each voter's log
//! end offset and each observer's (a broker-only node following the log), so a tool can
//! show how far each node lags.
//!
//! Kafka's brokers forward this request to the active controller; here any node answers
//! what it knows: the leader answers in full, another voter or a broker-only node answers
//! NOT_LEADER_OR_FOLLOWER with the leader it knows (`leader_id`), where the caller asks
//! again. Offsets are positions in the metadata log (`__cluster_metadata-0`).

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::describe_quorum_response::{
    Listener, Node, PartitionData, ReplicaState, TopicData,
};
use kafka_protocol::messages::{ApiKey, BrokerId, DescribeQuorumRequest, DescribeQuorumResponse};
use kafka_protocol::ResponseError;

use super::{str_bytes, HandlerResult, RequestContext};
use crate::cluster::QuorumView;
use crate::metadata::cluster::CONTROLLER_LISTENER;
use crate::metadata::store::METADATA_LOG_TOPIC;

/// Kafka's value for a timestamp not known.
const UNKNOWN_TIMESTAMP: i64 = -1;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: DescribeQuorumRequest = ctx.decode(ApiKey::DescribeQuorum, &mut body)?;
    let view = crate::cluster::quorum_view(&ctx.shard).await;
    let mut response = DescribeQuorumResponse::default();
    // A topic or partition named twice is answered once: the request's size bounds it.
    let topics = super::first_mentions(request.topics, |t| t.topic_name.0.clone());
    response.topics = topics
        .into_iter()
        .map(|topic| {
            let mut out = TopicData::default();
            let is_metadata_log = topic.topic_name.0.as_str() == METADATA_LOG_TOPIC;
            out.topic_name = topic.topic_name;
            let partitions = super::first_mentions(topic.partitions, |p| p.partition_index);
            out.partitions = partitions
                .into_iter()
                .map(|p| {
                    if !is_metadata_log || p.partition_index != 0 {
                        let mut d = PartitionData::default();
                        d.partition_index = p.partition_index;
                        d.error_code = ResponseError::UnknownTopicOrPartition.code();
                        d.leader_id = BrokerId(-1);
                        d.leader_epoch = -1;
                        d.high_watermark = -1;
                        return d;
                    }
                    partition_data(view.as_ref(), ctx.api_version)
                })
                .collect();
            out
        })
        .collect();
    if ctx.api_version >= 2 {
        response.nodes = nodes(&ctx);
    }
    ctx.respond(ApiKey::DescribeQuorum, &response)
}

fn partition_data(view: Option<&QuorumView>, version: i16) -> PartitionData {
    let mut d = PartitionData::default();
    d.partition_index = 0;
    let Some(view) = view else {
        // This node runs no quorum (it is shutting down).
        d.error_code = ResponseError::NotLeaderOrFollower.code();
        d.leader_id = BrokerId(-1);
        d.leader_epoch = -1;
        d.high_watermark = -1;
        return d;
    };
    d.leader_id = BrokerId(view.leader.map_or(-1, |l| l.0));
    d.leader_epoch = i32::try_from(view.term).unwrap_or(i32::MAX);
    let Some(voters) = &view.voters else {
        d.error_code = ResponseError::NotLeaderOrFollower.code();
        d.error_message = Some(str_bytes(match view.leader {
            Some(l) => format!(
                "this node does not lead the metadata quorum; node {} does",
                l.0
            ),
            None => "the metadata quorum has no leader at the moment".to_string(),
        }));
        d.high_watermark = offset(view.committed);
        return d;
    };
    d.high_watermark = offset(view.committed);
    d.current_voters = voters
        .iter()
        .map(|v| replica_state(v, view, version))
        .collect();
    // Brokers that are not voters, following the log (KRaft's observers).
    d.observers = view
        .observers
        .iter()
        .map(|o| replica_state(o, view, version))
        .collect();
    d
}

/// A voter's or observer's progress as the leader knows it.
fn replica_state(
    v: &crate::controller::node::VoterProgress,
    view: &QuorumView,
    version: i16,
) -> ReplicaState {
    let mut r = ReplicaState::default();
    r.replica_id = BrokerId(v.node.0);
    r.log_end_offset = offset(v.log_end);
    if version >= 1 {
        r.last_fetch_timestamp = v.last_heard_ms.unwrap_or(UNKNOWN_TIMESTAMP);
        r.last_caught_up_timestamp = if v.log_end >= view.committed {
            v.last_heard_ms.unwrap_or(UNKNOWN_TIMESTAMP)
        } else {
            UNKNOWN_TIMESTAMP
        };
    }
    r
}

fn offset(index: u64) -> i64 {
    i64::try_from(index).unwrap_or(i64::MAX)
}

/// The voters' controller listeners (v2), as `controller.quorum.voters` gives them.
fn nodes(ctx: &RequestContext) -> Vec<Node> {
    ctx.shard
        .config
        .cluster
        .voters
        .iter()
        .map(|v| {
            let mut node = Node::default();
            node.node_id = BrokerId(v.id);
            if let Some((host, port)) = &v.address {
                let mut l = Listener::default();
                l.name = str_bytes(CONTROLLER_LISTENER.to_string());
                l.host = str_bytes(host.clone());
                l.port = *port;
                node.listeners = vec![l];
            }
            node
        })
        .collect()
}
