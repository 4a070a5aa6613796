//! Work on partitions from any shard: which shard owns each, and whether this node leads it.

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::metadata::TopicPartition;
use crate::node::calls::Call;
use crate::node::Shard;
use crate::partition::ops::{self, PartitionAnswer, PartitionOp};
use crate::reply;
use crate::shard::ShardId;

/// The partitions of one request grouped by the shard that owns them, each with the
/// caller's own label (its position in the request) so results can be put back in order.
pub fn group_by_owner<T>(
    shard: &Shard,
    items: impl IntoIterator<Item = (TopicPartition, T)>,
) -> BTreeMap<ShardId, Vec<(TopicPartition, T)>> {
    let mut groups: BTreeMap<ShardId, Vec<(TopicPartition, T)>> = BTreeMap::new();
    for (tp, item) in items {
        groups
            .entry(shard.owner_of(tp))
            .or_default()
            .push((tp, item));
    }
    groups
}

/// The open partition `tp` if this node leads it. A partition led by another node, or by
/// none (its broker is fenced), is NOT_LEADER_OR_FOLLOWER: clients refresh their metadata
/// and go to the leader it names. Until replicated partitions exist, a partition is served
/// only by the node it was placed on.
pub fn led_partition(
    shard: &Shard,
    tp: TopicPartition,
) -> Result<Rc<crate::partition::PartitionHandle>, kafka_protocol::ResponseError> {
    use kafka_protocol::ResponseError;
    let image = shard.metadata();
    match image.partition(tp.topic_id, tp.partition) {
        None => Err(ResponseError::UnknownTopicOrPartition),
        Some(p) if p.leader != Some(shard.node_id()) => Err(ResponseError::NotLeaderOrFollower),
        Some(_) => {
            let partition = shard
                .partitions
                .get(tp)
                .ok_or(ResponseError::UnknownTopicOrPartition)?;
            // The replica takes the image's state as the shard applies it; until then (or
            // if its log failed and it starts again) it does not lead.
            if !partition.replica.is_leader() {
                return Err(ResponseError::NotLeaderOrFollower);
            }
            Ok(partition)
        }
    }
}

/// Asks each partition its question on the shard that owns it (one call per owning
/// shard, partitions of a shard in order) and returns the answers in the order of
/// `items`; `None` where the owning shard did not answer.
pub async fn on_owners(
    shard: &Rc<Shard>,
    items: Vec<(TopicPartition, PartitionOp)>,
) -> Vec<Option<PartitionAnswer>> {
    let count = items.len();
    let indexed = items
        .into_iter()
        .enumerate()
        .map(|(i, (tp, op))| (tp, (i, op)));
    let calls: Vec<_> = group_by_owner(shard, indexed)
        .into_iter()
        .map(|(owner, ops)| shard.call(owner, Call::Partitions(ops)))
        .collect();
    let mut results: Vec<Option<PartitionAnswer>> = (0..count).map(|_| None).collect();
    for call in calls {
        match call.await {
            Ok(reply) => {
                for (i, answer) in reply!(reply, Partitions) {
                    results[i] = Some(answer);
                }
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }
    results
}

/// Runs on the owning shard for [`on_owners`].
pub(crate) async fn answer_here(
    shard: &Shard,
    ops: Vec<(TopicPartition, (usize, PartitionOp))>,
) -> Vec<(usize, PartitionAnswer)> {
    let mut out = Vec::with_capacity(ops.len());
    for (tp, (i, op)) in ops {
        out.push((i, ops::answer(shard, tp, op).await));
    }
    out
}

/// KIP-320: a request's `current_leader_epoch` against the replica's (-1 means "not
/// checked"): an older one is FENCED_LEADER_EPOCH, a newer one UNKNOWN_LEADER_EPOCH.
pub fn check_leader_epoch(
    partition: &crate::partition::PartitionHandle,
    current_leader_epoch: i32,
) -> Option<kafka_protocol::ResponseError> {
    partition
        .replica
        .with(|r| r.check_leader_epoch(current_leader_epoch, true))
        .err()
}
