//! DescribeQuorum (KIP-595, KIP-853): the metadata quorum as its leader sees it — leader,
//! term (Kafka's leader epoch), high watermark (the committed offset), each voter's log
//! end offset and each observer's (a broker-only node following the log), so a tool can
//! show how far each node lags.
//!
//! Every node answers with the leader's view, as Kafka's brokers do by forwarding the
//! request to the active controller: the leader from its own state, any other node (a
//! voter that does not lead, a broker-only node) by asking the leader over the controller
//! listener ([`crate::cluster::ControlPlane::leader_quorum_view`]). Without the leader's
//! answer in time (an election under way, the leader unreachable) the partition's error is
//! NOT_LEADER_OR_FOLLOWER with the leader this node knows, as a Kafka voter that does not
//! lead answers; clients retry. Offsets are positions in the metadata log
//! (`__cluster_metadata-0`).

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
    // A topic or partition named twice is answered once: the request's size bounds it.
    let topics = super::first_mentions(request.topics, |t| t.topic_name.0.clone());
    let asks_for_the_metadata_log = topics.iter().any(|t| {
        t.topic_name.0.as_str() == METADATA_LOG_TOPIC
            && t.partitions.iter().any(|p| p.partition_index == 0)
    });
    // Only the metadata log's partition needs the leader's view: nothing else is asked of it.
    let view = if asks_for_the_metadata_log {
        crate::cluster::leader_quorum_view(&ctx.shard).await
    } else {
        None
    };
    let mut response = DescribeQuorumResponse::default();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::node::VoterProgress;
    use crate::metadata::NodeId;

    fn progress(node: i32, log_end: u64, last_heard_ms: Option<i64>) -> VoterProgress {
        VoterProgress {
            node: NodeId(node),
            log_end,
            last_heard_ms,
        }
    }

    fn leaders_view() -> QuorumView {
        QuorumView {
            term: 4,
            leader: Some(NodeId(2)),
            committed: 30,
            voters: Some(vec![
                progress(1, 30, Some(1_000)),
                progress(2, 30, Some(2_000)),
                progress(3, 12, Some(500)),
            ]),
            observers: vec![progress(4, 29, Some(1_500))],
        }
    }

    #[test]
    fn the_leaders_view_lists_voters_and_observers_with_their_lag() {
        let d = partition_data(Some(&leaders_view()), 1);
        assert_eq!(d.error_code, 0);
        assert_eq!(d.leader_id, BrokerId(2));
        assert_eq!(d.leader_epoch, 4);
        assert_eq!(d.high_watermark, 30);
        let voters: Vec<(i32, i64)> = d
            .current_voters
            .iter()
            .map(|r| (r.replica_id.0, r.log_end_offset))
            .collect();
        assert_eq!(voters, vec![(1, 30), (2, 30), (3, 12)]);
        assert_eq!(d.observers.len(), 1);
        assert_eq!(d.observers[0].replica_id, BrokerId(4));
        assert_eq!(d.observers[0].log_end_offset, 29);
        // A voter behind the high watermark has not caught up: no caught-up time.
        assert_eq!(d.current_voters[2].last_fetch_timestamp, 500);
        assert_eq!(d.current_voters[2].last_caught_up_timestamp, -1);
        assert_eq!(d.current_voters[0].last_caught_up_timestamp, 1_000);
    }

    #[test]
    fn v0_carries_no_timestamps() {
        let d = partition_data(Some(&leaders_view()), 0);
        assert!(d
            .current_voters
            .iter()
            .all(|r| r.last_fetch_timestamp == -1 && r.last_caught_up_timestamp == -1));
    }

    #[test]
    fn without_the_leaders_view_the_answer_is_not_leader_naming_the_known_leader() {
        let own = QuorumView {
            term: 0,
            leader: Some(NodeId(1)),
            committed: 17,
            voters: None,
            observers: Vec::new(),
        };
        let d = partition_data(Some(&own), 2);
        assert_eq!(d.error_code, ResponseError::NotLeaderOrFollower.code());
        assert_eq!(d.leader_id, BrokerId(1));
        assert!(d.current_voters.is_empty() && d.observers.is_empty());

        let d = partition_data(None, 2);
        assert_eq!(d.error_code, ResponseError::NotLeaderOrFollower.code());
        assert_eq!(d.leader_id, BrokerId(-1));
    }
}
