//! Taking over a data directory written before clusters existed: its topics (with their
//! ids, partition counts and configs) and its producer-id high water become part of the
//! cluster's bootstrap, on this node, keeping its cluster id. The driver renames
//! `wharf-metadata.toml` aside (`wharf-metadata.toml.migrated`) once the bootstrap is
//! committed and [`migration_applied`] says the image holds it.

use crate::controller::image::ClusterImage;
use crate::controller::records::MetadataRecord;
use crate::metadata::cluster::PartitionState;
use crate::metadata::{LeaderEpoch, MetadataImage, NodeId, PartitionId};

/// The file a migrated `wharf-metadata.toml` is renamed to.
pub const MIGRATED_SUFFIX: &str = ".migrated";

/// The bootstrap records that re-create `old` on `node`: each partition's one replica is
/// this node, with no leader until the node registers and is unfenced (which gives it
/// leader epoch 1).
pub fn migration_records(old: &MetadataImage, node: NodeId) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for topic in old.topics() {
        records.push(MetadataRecord::TopicCreated {
            name: topic.name.clone(),
            id: topic.id,
            configs: topic.overrides.clone(),
            internal: topic.internal,
        });
        for p in 0..topic.partition_count {
            records.push(MetadataRecord::Partition {
                topic: topic.id,
                partition: PartitionId(p),
                state: PartitionState {
                    replicas: vec![node],
                    isr: vec![node],
                    leader: None,
                    leader_epoch: LeaderEpoch(0),
                    partition_epoch: 0,
                },
            });
        }
    }
    if old.next_producer_id > 0 {
        records.push(MetadataRecord::ProducerIdsAllocated {
            node,
            broker_epoch: -1,
            next_producer_id: old.next_producer_id,
        });
    }
    records
}

/// Whether `image` holds every topic of `old` (same id, at least as many partitions) and
/// its producer-id high water: the old file is then redundant.
pub fn migration_applied(image: &ClusterImage, old: &MetadataImage) -> bool {
    image.cluster_id() == Some(old.cluster_id.as_str())
        && image.next_producer_id() >= old.next_producer_id
        && old.topics().all(|t| {
            image
                .topic(&t.name)
                .is_some_and(|n| n.id == t.id && n.partition_count >= t.partition_count)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::topic_config::TopicOverrides;
    use crate::metadata::{new_topic_id, TopicMeta};

    #[test]
    fn an_old_data_dir_becomes_the_bootstrap() {
        let mut overrides = TopicOverrides::new();
        overrides.insert("retention.ms".into(), "5".into());
        let mut old = MetadataImage::new(
            "old-cluster".into(),
            [
                TopicMeta {
                    name: "a".into(),
                    id: new_topic_id(),
                    partition_count: 3,
                    overrides,
                    internal: false,
                },
                TopicMeta {
                    name: "__consumer_offsets".into(),
                    id: new_topic_id(),
                    partition_count: 2,
                    overrides: TopicOverrides::new(),
                    internal: true,
                },
            ],
        );
        old.next_producer_id = 4000;
        let mut records = vec![MetadataRecord::ClusterBootstrap {
            cluster_id: old.cluster_id.clone(),
        }];
        records.extend(migration_records(&old, NodeId(1)));
        let mut image = ClusterImage::empty();
        assert_eq!(image.apply(2, 1, &records), vec![]);
        image.check_invariants().unwrap();
        assert!(migration_applied(&image, &old));
        for t in old.topics() {
            assert_eq!(image.topic(&t.name), Some(t));
        }
        assert_eq!(image.next_producer_id(), 4000);
        assert!(!migration_applied(&ClusterImage::empty(), &old));
    }
}
