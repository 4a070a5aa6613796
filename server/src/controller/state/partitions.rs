//! AlterPartition (KIP-497): a partition leader's request to commit a new ISR, checked as
//! Kafka's controller checks it (`ReplicationControlManager.alterPartition`, Kafka 3.9) and
//! answered once the partition change is committed.

use super::*;
use kafka_protocol::error::ResponseError;

/// Handles an AlterPartition request: per partition, the checks in Kafka's order, then a
/// `Partition` record with the new ISR and the partition epoch + 1 (none when the ISR is
/// already the one proposed). A proposal refused for an ineligible member also moves the
/// partition epoch on (Kafka's does not): see `alter_partition`'s comment there. Items of
/// one request apply in order, each seeing the ones before it.
pub(super) fn alter_partition(image: &ClusterImage, r: AlterPartition) -> Planned {
    if !ALTER_PARTITION_VERSIONS.contains(&r.version) {
        return (
            Vec::new(),
            Err(ControllerError::Metadata(MetadataError::InvalidRequest(
                format!(
                    "AlterPartition version {} is not supported (versions {}-{} are).",
                    r.version,
                    ALTER_PARTITION_VERSIONS.start(),
                    ALTER_PARTITION_VERSIONS.end()
                ),
            ))),
        );
    }
    // Kafka's `checkBrokerEpoch`: the whole request fails for a broker that is not
    // registered or not with this epoch (an earlier process of it).
    match image.broker(r.broker) {
        Some(b) if b.broker_epoch == r.broker_epoch => {}
        Some(b) => {
            return (
                Vec::new(),
                Err(ControllerError::StaleBrokerEpoch(format!(
                    "Expected broker epoch {} for broker {}, but got {}.",
                    b.broker_epoch, r.broker.0, r.broker_epoch
                ))),
            )
        }
        None => {
            return (
                Vec::new(),
                Err(ControllerError::StaleBrokerEpoch(format!(
                    "No broker registration found for broker {}.",
                    r.broker.0
                ))),
            )
        }
    }
    let version = r.version;
    // What this request has changed so far, so that later items see it.
    let mut changed: BTreeMap<(TopicId, i32), PartitionState> = BTreeMap::new();
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(r.topics.len());
    for t in r.topics {
        // KIP-841: versions 2+ name topics by id, earlier ones by name.
        let topic = match (&t.topic, version > 1) {
            (TopicRef::Id(id), true) => image.topic_by_id(*id),
            (TopicRef::Name(name), false) => image.topic(name),
            _ => None,
        };
        let Some(topic) = topic else {
            let error = if version > 1 {
                ResponseError::UnknownTopicId
            } else {
                ResponseError::UnknownTopicOrPartition
            };
            let partitions = t
                .partitions
                .iter()
                .map(|p| AlterPartitionResult {
                    partition: p.partition,
                    result: Err(error),
                })
                .collect();
            results.push(AlterPartitionTopicResult {
                topic: t.topic,
                partitions,
            });
            continue;
        };
        let topic_id = topic.id;
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for item in t.partitions {
            let key = (topic_id, item.partition.0);
            let current = changed
                .get(&key)
                .or_else(|| image.partition(topic_id, item.partition));
            let result = match current {
                None => Err(ResponseError::UnknownTopicOrPartition),
                Some(current) => match check_item(image, version, r.broker, current, &item) {
                    Err(
                        e @ (ResponseError::IneligibleReplica
                        | ResponseError::OperationNotAttempted),
                    ) => {
                        // Unlike Kafka's controller, a refused ISR change moves the partition
                        // epoch on: the leader goes back to the committed ISR on this answer,
                        // and an earlier copy of the same proposal still on its way (a resend
                        // after a timeout can overtake it) must not be committed after that.
                        let next = PartitionState {
                            partition_epoch: current.partition_epoch + 1,
                            ..current.clone()
                        };
                        records.push(MetadataRecord::Partition {
                            topic: topic_id,
                            partition: item.partition,
                            state: next.clone(),
                        });
                        changed.insert(key, next);
                        Err(e)
                    }
                    Err(e) => Err(e),
                    Ok(isr) => {
                        let next = if isr == current.isr {
                            current.clone()
                        } else {
                            let next = PartitionState {
                                isr,
                                partition_epoch: current.partition_epoch + 1,
                                ..current.clone()
                            };
                            records.push(MetadataRecord::Partition {
                                topic: topic_id,
                                partition: item.partition,
                                state: next.clone(),
                            });
                            changed.insert(key, next.clone());
                            next
                        };
                        Ok(AlterPartitionCommitted {
                            leader: next.leader,
                            leader_epoch: next.leader_epoch,
                            isr: next.isr,
                            partition_epoch: next.partition_epoch,
                        })
                    }
                },
            };
            partitions.push(AlterPartitionResult {
                partition: item.partition,
                result,
            });
        }
        results.push(AlterPartitionTopicResult {
            topic: t.topic,
            partitions,
        });
    }
    (records, Ok(ControllerReply::AlterPartition(results)))
}

/// Kafka's `validateAlterPartitionData`, in its order. Returns the proposed ISR in replica
/// order.
fn check_item(
    image: &ClusterImage,
    version: i16,
    broker: NodeId,
    current: &PartitionState,
    item: &AlterPartitionItem,
) -> Result<Vec<NodeId>, ResponseError> {
    // Epochs ahead of this controller's: it is likely not the active controller any more;
    // the leader looks for the new one.
    if item.leader_epoch > current.leader_epoch || item.partition_epoch > current.partition_epoch {
        return Err(ResponseError::NotController);
    }
    if item.leader_epoch < current.leader_epoch {
        return Err(ResponseError::FencedLeaderEpoch);
    }
    if current.leader != Some(broker) {
        return Err(ResponseError::InvalidRequest);
    }
    if item.partition_epoch < current.partition_epoch {
        return Err(ResponseError::InvalidUpdateVersion);
    }
    // Every member a replica, none twice, the leader among them.
    let mut proposed: Vec<NodeId> = item.new_isr.iter().map(|m| m.node).collect();
    proposed.sort();
    let duplicate = proposed.windows(2).any(|w| w[0] == w[1]);
    if duplicate
        || proposed.iter().any(|n| !current.replicas.contains(n))
        || !proposed.contains(&broker)
    {
        return Err(ResponseError::InvalidRequest);
    }
    // KIP-704: Wharf's partitions are always recovered (an unclean election does not
    // mark them recovering), and a recovered partition never goes back to recovering.
    if item.leader_recovery_state != 0 {
        return Err(ResponseError::InvalidRequest);
    }
    // KIP-841 / KIP-903: a member must be registered, unfenced (a broker in controlled
    // shutdown is fenced at once in Wharf), and, when its leader names one, of the broker
    // epoch the leader saw in its fetches (not an earlier process of it).
    // Versions before 3 carry no member epochs (Kafka reads them as -1).
    let checked_epoch = |m: &IsrMember| if version >= 3 { m.broker_epoch } else { -1 };
    let ineligible = item.new_isr.iter().any(|m| match image.broker(m.node) {
        None => true,
        Some(b) => b.fenced || (checked_epoch(m) != -1 && checked_epoch(m) != b.broker_epoch),
    });
    if ineligible {
        return Err(if version > 1 {
            ResponseError::IneligibleReplica
        } else {
            ResponseError::OperationNotAttempted
        });
    }
    Ok(current
        .replicas
        .iter()
        .copied()
        .filter(|r| proposed.contains(r))
        .collect())
}
