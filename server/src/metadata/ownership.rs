//! Which shard owns a partition: a pure function of the topic id, the partition and the
//! number of shards, so every shard computes the same answer without asking anyone.
//!
//! Consecutive partitions of a topic go to consecutive shards (from a per-topic starting
//! shard), which spreads every topic evenly and different topics' partition 0 apart.

use crate::metadata::{PartitionId, TopicId, TopicPartition};
use crate::shard::ShardId;

/// The shard that owns `partition` of the topic `topic_id` among `shard_count` shards.
pub fn owner_shard(topic_id: TopicId, partition: PartitionId, shard_count: usize) -> ShardId {
    assert!(shard_count > 0, "a broker has at least one shard");
    let id = topic_id.0.as_u128();
    // Fold the id to 64 bits; the id is random, so any fold spreads well.
    let start = ((id >> 64) as u64) ^ (id as u64);
    let slot = (start % shard_count as u64 + partition.0.max(0) as u64) % shard_count as u64;
    ShardId(slot as usize)
}

pub fn owner_of(tp: TopicPartition, shard_count: usize) -> ShardId {
    owner_shard(tp.topic_id, tp.partition, shard_count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::new_topic_id;

    #[test]
    fn ownership_is_deterministic_and_in_range() {
        let id = new_topic_id();
        for shards in 1..8 {
            for p in 0..20 {
                let a = owner_shard(id, PartitionId(p), shards);
                assert_eq!(a, owner_shard(id, PartitionId(p), shards));
                assert!(a.0 < shards);
            }
        }
    }

    #[test]
    fn a_topics_partitions_spread_evenly_over_shards() {
        let id = new_topic_id();
        let shards = 3;
        let mut counts = [0; 3];
        for p in 0..30 {
            counts[owner_shard(id, PartitionId(p), shards).0] += 1;
        }
        assert_eq!(counts, [10, 10, 10]);
    }
}
