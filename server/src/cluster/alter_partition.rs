//! The broker's side of AlterPartition (KIP-497): how a partition leader on any shard asks
//! the active controller to commit a new ISR.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;

use crate::cluster::ControlPlane;
use crate::controller::requests::{
    AlterPartition, AlterPartitionItem, AlterPartitionTopic, ControllerError, ControllerReply,
    ControllerRequest, IsrMember, ALTER_PARTITION_VERSIONS,
};
use crate::metadata::controller::{TopicRef, CONTROLLER_SHARD};
use crate::metadata::{NodeId, PartitionId, TopicId};
use crate::node::calls::Call;
use crate::node::Shard;
use crate::replica::{AlterPartitionAnswer, AlterPartitionProposal};
use crate::reply;

/// Asks the active controller to commit `proposal`, the new ISR of partition `partition` of
/// topic `topic` that this node leads; see [`alter_partitions`].
pub async fn alter_partition(
    shard: &Rc<Shard>,
    topic: TopicId,
    partition: PartitionId,
    proposal: AlterPartitionProposal,
) -> AlterPartitionAnswer {
    alter_partitions(shard, vec![(topic, partition, proposal)])
        .await
        .pop()
        .unwrap_or(AlterPartitionAnswer::Error(
            ResponseError::UnknownServerError,
        ))
}

/// Asks the active controller to commit new ISRs of partitions this node leads, in one
/// AlterPartition request (the newest version, 3: topics by id, each member's broker epoch
/// checked, KIP-903). Callable from any shard; the request goes to the controller wherever
/// it is (forwarded over the controller listener), with this node's current broker epoch.
///
/// Returns one answer per proposal, in order, to hand to
/// `ReplicaState::on_alter_partition_answer`:
///
/// - `Committed { isr, leader_epoch, partition_epoch }` once the partition change is
///   committed in the metadata log and this node's shards serve an image that holds it (so
///   the partition's metadata is not older than the answer). The ISR is in replica order;
///   the partition epoch is the one before plus one, or unchanged when the ISR already was
///   the one proposed.
/// - `Error(e)` with Kafka's per-partition codes, checked in Kafka's order:
///   NOT_CONTROLLER (the proposal's epochs are ahead of the controller's: it is about to
///   lose leadership), FENCED_LEADER_EPOCH (older leader epoch), INVALID_REQUEST (this node
///   does not lead the partition, the ISR is not a subset of the replicas, has duplicates or
///   lacks the leader), INVALID_UPDATE_VERSION (older partition epoch), INELIGIBLE_REPLICA
///   (a member not registered, fenced or shutting down, or registered with another broker
///   epoch than the one given), UNKNOWN_TOPIC_ID / UNKNOWN_TOPIC_OR_PARTITION. Nothing
///   changed; the first five mean this node's metadata is behind.
/// - `Error(e)` for the request as a whole, the same for every proposal: STALE_BROKER_EPOCH
///   (this node's registration is not current: it registers again), BROKER_NOT_AVAILABLE
///   (not registered yet), NOT_CONTROLLER (no active controller within the call timeout) or
///   REQUEST_TIMED_OUT (the change was not committed in time; it may still be). The leader
///   sends the proposal again later; nothing is retried here beyond finding the controller.
pub async fn alter_partitions(
    shard: &Rc<Shard>,
    proposals: Vec<(TopicId, PartitionId, AlterPartitionProposal)>,
) -> Vec<AlterPartitionAnswer> {
    let count = proposals.len();
    let answers = match shard
        .call(CONTROLLER_SHARD, Call::AlterPartitions(proposals))
        .await
    {
        Ok(reply) => reply!(reply, AlterPartitions),
        Err(_) => Err(ResponseError::NotController),
    };
    match answers {
        Ok(answers) => answers,
        Err(e) => vec![AlterPartitionAnswer::Error(e); count],
    }
}

/// Runs on the controller's shard for [`alter_partitions`].
pub(crate) async fn alter_here(
    shard: &Shard,
    proposals: Vec<(TopicId, PartitionId, AlterPartitionProposal)>,
) -> Result<Vec<AlterPartitionAnswer>, ResponseError> {
    let Some(control) = ControlPlane::get(shard) else {
        return Err(ResponseError::NotController);
    };
    let Some(broker_epoch) = control.broker.epoch() else {
        return Err(ResponseError::BrokerNotAvailable);
    };
    let request = request(control.node_id(), broker_epoch, &proposals);
    match control
        .call(ControllerRequest::AlterPartition(request))
        .await
    {
        Ok(ControllerReply::AlterPartition(topics)) => Ok(answers(&proposals, topics)),
        Ok(_) => Err(ResponseError::UnknownServerError),
        Err(e) => Err(request_error(&e)),
    }
}

/// One request, proposals grouped by topic in the order first met.
fn request(
    me: NodeId,
    broker_epoch: i64,
    proposals: &[(TopicId, PartitionId, AlterPartitionProposal)],
) -> AlterPartition {
    let mut topics: Vec<AlterPartitionTopic> = Vec::new();
    for (topic, partition, proposal) in proposals {
        debug_assert_eq!(proposal.leader, me, "a leader proposes its own ISR");
        let item = AlterPartitionItem {
            partition: *partition,
            leader_epoch: proposal.leader_epoch,
            partition_epoch: proposal.partition_epoch,
            new_isr: proposal
                .new_isr
                .iter()
                .map(|m| IsrMember {
                    node: m.node,
                    broker_epoch: m.broker_epoch,
                })
                .collect(),
            leader_recovery_state: 0,
        };
        let by_id = TopicRef::Id(*topic);
        match topics.iter_mut().find(|t| t.topic == by_id) {
            Some(t) => t.partitions.push(item),
            None => topics.push(AlterPartitionTopic {
                topic: by_id,
                partitions: vec![item],
            }),
        }
    }
    AlterPartition {
        version: *ALTER_PARTITION_VERSIONS.end(),
        broker: me,
        broker_epoch,
        topics,
    }
}

/// Each proposal's answer from the reply; one the reply does not mention is an error the
/// leader retries.
fn answers(
    proposals: &[(TopicId, PartitionId, AlterPartitionProposal)],
    mut topics: Vec<crate::controller::requests::AlterPartitionTopicResult>,
) -> Vec<AlterPartitionAnswer> {
    proposals
        .iter()
        .map(|(topic, partition, _)| {
            let found = topics
                .iter_mut()
                .filter(|t| t.topic == TopicRef::Id(*topic))
                .find_map(|t| {
                    let i = t
                        .partitions
                        .iter()
                        .position(|p| p.partition == *partition)?;
                    Some(t.partitions.remove(i))
                });
            match found.map(|p| p.result) {
                Some(Ok(c)) => AlterPartitionAnswer::Committed {
                    isr: c.isr,
                    leader_epoch: c.leader_epoch,
                    partition_epoch: c.partition_epoch,
                },
                Some(Err(e)) => AlterPartitionAnswer::Error(e),
                None => AlterPartitionAnswer::Error(ResponseError::UnknownServerError),
            }
        })
        .collect()
}

/// A whole-request failure as the Kafka code the leader's state machine reacts to.
fn request_error(e: &ControllerError) -> ResponseError {
    match e {
        ControllerError::NotController { .. } => ResponseError::NotController,
        ControllerError::StaleBrokerEpoch(_) => ResponseError::StaleBrokerEpoch,
        ControllerError::BrokerIdNotRegistered(_) => ResponseError::BrokerIdNotRegistered,
        ControllerError::Metadata(crate::metadata::controller::MetadataError::TimedOut(_)) => {
            ResponseError::RequestTimedOut
        }
        ControllerError::Metadata(crate::metadata::controller::MetadataError::InvalidRequest(
            _,
        )) => ResponseError::InvalidRequest,
        _ => ResponseError::UnknownServerError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::requests::{
        AlterPartitionCommitted, AlterPartitionResult, AlterPartitionTopicResult,
    };
    use crate::metadata::LeaderEpoch;
    use crate::replica::IsrMember as ReplicaIsrMember;

    fn topic(n: u128) -> TopicId {
        TopicId(uuid::Uuid::from_u128(n))
    }

    fn proposal(isr: &[i32]) -> AlterPartitionProposal {
        AlterPartitionProposal {
            leader: NodeId(1),
            leader_epoch: LeaderEpoch(3),
            partition_epoch: 7,
            new_isr: isr
                .iter()
                .map(|n| ReplicaIsrMember {
                    node: NodeId(*n),
                    broker_epoch: 40 + *n as i64,
                })
                .collect(),
        }
    }

    #[test]
    fn proposals_go_in_one_version_3_request_grouped_by_topic_id() {
        let proposals = vec![
            (topic(1), PartitionId(0), proposal(&[1, 2])),
            (topic(2), PartitionId(4), proposal(&[1])),
            (topic(1), PartitionId(2), proposal(&[1, 3])),
        ];
        let r = request(NodeId(1), 41, &proposals);
        assert_eq!((r.version, r.broker, r.broker_epoch), (3, NodeId(1), 41));
        assert_eq!(r.topics.len(), 2);
        assert_eq!(r.topics[0].topic, TopicRef::Id(topic(1)));
        let parts: Vec<i32> = r.topics[0]
            .partitions
            .iter()
            .map(|p| p.partition.0)
            .collect();
        assert_eq!(parts, vec![0, 2]);
        let item = &r.topics[0].partitions[1];
        assert_eq!(
            (item.leader_epoch, item.partition_epoch),
            (LeaderEpoch(3), 7)
        );
        assert_eq!(
            item.new_isr,
            vec![
                IsrMember {
                    node: NodeId(1),
                    broker_epoch: 41
                },
                IsrMember {
                    node: NodeId(3),
                    broker_epoch: 43
                }
            ],
            "each member with the broker epoch its leader saw (KIP-903)"
        );
    }

    #[test]
    fn each_proposal_gets_its_own_answer_in_order() {
        let proposals = vec![
            (topic(1), PartitionId(0), proposal(&[1, 2])),
            (topic(1), PartitionId(1), proposal(&[1])),
            (topic(2), PartitionId(0), proposal(&[1])),
        ];
        let reply = vec![AlterPartitionTopicResult {
            topic: TopicRef::Id(topic(1)),
            partitions: vec![
                AlterPartitionResult {
                    partition: PartitionId(1),
                    result: Err(ResponseError::InvalidUpdateVersion),
                },
                AlterPartitionResult {
                    partition: PartitionId(0),
                    result: Ok(AlterPartitionCommitted {
                        leader: Some(NodeId(1)),
                        leader_epoch: LeaderEpoch(3),
                        isr: vec![NodeId(1), NodeId(2)],
                        partition_epoch: 8,
                    }),
                },
            ],
        }];
        assert_eq!(
            answers(&proposals, reply),
            vec![
                AlterPartitionAnswer::Committed {
                    isr: vec![NodeId(1), NodeId(2)],
                    leader_epoch: LeaderEpoch(3),
                    partition_epoch: 8,
                },
                AlterPartitionAnswer::Error(ResponseError::InvalidUpdateVersion),
                // Not in the reply: retried by the leader.
                AlterPartitionAnswer::Error(ResponseError::UnknownServerError),
            ]
        );
    }

    #[test]
    fn whole_request_failures_map_to_the_codes_the_leader_reacts_to() {
        assert_eq!(
            request_error(&ControllerError::NotController { leader: None }),
            ResponseError::NotController
        );
        assert_eq!(
            request_error(&ControllerError::StaleBrokerEpoch("old".into())),
            ResponseError::StaleBrokerEpoch
        );
        assert_eq!(
            request_error(&ControllerError::Metadata(
                crate::metadata::controller::MetadataError::TimedOut("slow".into())
            )),
            ResponseError::RequestTimedOut
        );
    }
}
