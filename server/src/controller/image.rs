//! The cluster's metadata image: what the committed metadata records add up to. Every node
//! applies the same records in the same order and gets the same image (pure and
//! deterministic: no clock, no randomness, ordered maps only).
//!
//! The topics part is the single-node [`MetadataImage`] (names, ids, partition counts,
//! config overrides, cluster id, producer-id high water); the cluster adds each partition's
//! replicas, ISR, leader and epochs, the registered brokers and the active controller.

use std::collections::BTreeMap;

use crate::controller::records::MetadataRecord;
use crate::metadata::cluster::{BrokerRegistration, PartitionState};
use crate::metadata::{MetadataImage, NodeId, PartitionId, TopicId, TopicMeta};

/// Why a committed record could not be applied. Every node refuses the same record the same
/// way (it is skipped), so images stay identical; the controller never writes such a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metadata record at offset {offset} not applied: {reason}")]
pub struct ApplyError {
    pub offset: u64,
    pub reason: String,
}

/// The metadata image at `applied_offset` of the metadata log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterImage {
    topics: MetadataImage,
    partitions: BTreeMap<TopicId, Vec<PartitionState>>,
    brokers: BTreeMap<NodeId, BrokerRegistration>,
    /// The last controller that announced itself, with its Raft term.
    controller: Option<(NodeId, u64)>,
    applied_offset: u64,
    applied_term: u64,
}

impl ClusterImage {
    /// The image of an empty log.
    pub fn empty() -> ClusterImage {
        ClusterImage::default()
    }

    /// Rebuilds an image from a snapshot's records (see [`ClusterImage::snapshot_records`]).
    pub fn from_snapshot(
        offset: u64,
        term: u64,
        records: &[MetadataRecord],
    ) -> Result<ClusterImage, ApplyError> {
        let mut image = ClusterImage::empty();
        if let Some(e) = image.apply(offset, term, records).into_iter().next() {
            return Err(e);
        }
        Ok(image)
    }

    /// The topics as the single-node broker code reads them.
    pub fn metadata(&self) -> &MetadataImage {
        &self.topics
    }

    /// `None` until the bootstrap record is applied.
    pub fn cluster_id(&self) -> Option<&str> {
        (!self.topics.cluster_id.is_empty()).then_some(self.topics.cluster_id.as_str())
    }

    pub fn controller(&self) -> Option<(NodeId, u64)> {
        self.controller
    }

    pub fn applied_offset(&self) -> u64 {
        self.applied_offset
    }

    pub fn applied_term(&self) -> u64 {
        self.applied_term
    }

    pub fn next_producer_id(&self) -> i64 {
        self.topics.next_producer_id
    }

    pub fn topic(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.topic(name)
    }

    pub fn topic_by_id(&self, id: TopicId) -> Option<&TopicMeta> {
        self.topics.topic_by_id(id)
    }

    pub fn topics(&self) -> impl Iterator<Item = &TopicMeta> {
        self.topics.topics()
    }

    /// The partitions of topic `id`, by index.
    pub fn partitions(&self, id: TopicId) -> &[PartitionState] {
        self.partitions.get(&id).map_or(&[], Vec::as_slice)
    }

    pub fn partition(&self, id: TopicId, partition: PartitionId) -> Option<&PartitionState> {
        usize::try_from(partition.0)
            .ok()
            .and_then(|p| self.partitions(id).get(p))
    }

    /// Every partition of every topic, by topic id then index.
    pub fn all_partitions(&self) -> impl Iterator<Item = (TopicId, PartitionId, &PartitionState)> {
        self.partitions.iter().flat_map(|(id, parts)| {
            parts
                .iter()
                .enumerate()
                .map(move |(p, state)| (*id, PartitionId(p as i32), state))
        })
    }

    pub fn partition_count_total(&self) -> usize {
        self.partitions.values().map(Vec::len).sum()
    }

    pub fn brokers(&self) -> impl Iterator<Item = &BrokerRegistration> {
        self.brokers.values()
    }

    pub fn broker(&self, node: NodeId) -> Option<&BrokerRegistration> {
        self.brokers.get(&node)
    }

    /// A registered broker that is not fenced.
    pub fn is_usable(&self, node: NodeId) -> bool {
        self.brokers.get(&node).is_some_and(|b| !b.fenced)
    }

    /// Registered, unfenced brokers in id order.
    pub fn usable_brokers(&self) -> Vec<NodeId> {
        self.brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| b.node_id)
            .collect()
    }

    /// Applies one committed batch, the entry at `offset` (in `term`) of the metadata log.
    /// Records that do not fit the image are skipped and returned as errors; the rest apply.
    pub fn apply(&mut self, offset: u64, term: u64, records: &[MetadataRecord]) -> Vec<ApplyError> {
        let mut errors = Vec::new();
        for record in records {
            if let Err(reason) = self.apply_one(record) {
                errors.push(ApplyError { offset, reason });
            }
        }
        self.applied_offset = offset;
        self.applied_term = term;
        self.topics.version = offset;
        errors
    }

    fn apply_one(&mut self, record: &MetadataRecord) -> Result<(), String> {
        match record {
            MetadataRecord::ClusterBootstrap { cluster_id } => {
                if let Some(existing) = self.cluster_id() {
                    if existing != cluster_id {
                        return Err(format!(
                            "cluster {existing} cannot be bootstrapped again as {cluster_id}"
                        ));
                    }
                }
                self.topics.cluster_id = cluster_id.clone();
            }
            MetadataRecord::ControllerChanged { node, term } => {
                if self.controller.is_some_and(|(_, t)| t > *term) {
                    return Err(format!("controller term {term} is older than the current"));
                }
                self.controller = Some((*node, *term));
            }
            MetadataRecord::BrokerRegistered(b) => {
                self.brokers.insert(b.node_id, b.clone());
            }
            MetadataRecord::BrokerFenced { node } | MetadataRecord::BrokerUnfenced { node } => {
                let broker = self
                    .brokers
                    .get_mut(node)
                    .ok_or_else(|| format!("broker {} is not registered", node.0))?;
                broker.fenced = matches!(record, MetadataRecord::BrokerFenced { .. });
            }
            MetadataRecord::BrokerUnregistered { node } => {
                self.brokers
                    .remove(node)
                    .ok_or_else(|| format!("broker {} is not registered", node.0))?;
            }
            MetadataRecord::TopicCreated {
                name,
                id,
                configs,
                internal,
            } => {
                if self.topics.topic(name).is_some() {
                    return Err(format!("topic {name} exists"));
                }
                if self.topics.topic_by_id(*id).is_some() || self.partitions.contains_key(id) {
                    return Err(format!("topic id {} is taken", id.0));
                }
                self.topics.upsert(TopicMeta {
                    name: name.clone(),
                    id: *id,
                    partition_count: 0,
                    overrides: configs.clone(),
                    internal: *internal,
                });
                self.partitions.insert(*id, Vec::new());
            }
            MetadataRecord::Partition {
                topic,
                partition,
                state,
            } => {
                check_partition_state(state)?;
                let parts = self.partitions.get_mut(topic).ok_or_else(|| {
                    format!("partition {} of unknown topic {}", partition.0, topic.0)
                })?;
                let index = partition.0 as usize;
                let count = parts.len();
                match parts.get_mut(index) {
                    Some(old) => {
                        if state.leader_epoch < old.leader_epoch
                            || state.partition_epoch <= old.partition_epoch
                        {
                            return Err(format!(
                                "partition {}-{}: epochs go backwards ({:?}/{} after {:?}/{})",
                                topic.0,
                                partition.0,
                                state.leader_epoch,
                                state.partition_epoch,
                                old.leader_epoch,
                                old.partition_epoch
                            ));
                        }
                        *old = state.clone();
                    }
                    None if index == count => {
                        parts.push(state.clone());
                        let count = parts.len() as i32;
                        self.topics
                            .update_topic(*topic, |t| t.partition_count = count);
                    }
                    None => {
                        return Err(format!(
                            "partition {} of topic {} skips partition {}",
                            partition.0, topic.0, count
                        ))
                    }
                }
            }
            MetadataRecord::TopicDeleted { id } => {
                let name = self
                    .topics
                    .topic_by_id(*id)
                    .map(|t| t.name.clone())
                    .ok_or_else(|| format!("topic id {} is unknown", id.0))?;
                self.topics.remove(&name);
                self.partitions.remove(id);
            }
            MetadataRecord::ConfigChanged { topic, name, value } => {
                let found = self.topics.update_topic(*topic, |t| match value {
                    Some(v) => {
                        t.overrides.insert(name.clone(), v.clone());
                    }
                    None => {
                        t.overrides.remove(name);
                    }
                });
                if !found {
                    return Err(format!("config of unknown topic {}", topic.0));
                }
            }
            MetadataRecord::ProducerIdsAllocated {
                next_producer_id, ..
            } => {
                if *next_producer_id < self.topics.next_producer_id {
                    return Err(format!(
                        "producer ids go backwards: {next_producer_id} after {}",
                        self.topics.next_producer_id
                    ));
                }
                self.topics.next_producer_id = *next_producer_id;
            }
        }
        Ok(())
    }

    /// The records that rebuild this image from nothing, in a fixed order: a snapshot.
    pub fn snapshot_records(&self) -> Vec<MetadataRecord> {
        let mut records = Vec::with_capacity(
            4 + self.brokers.len() + self.topics.topic_count() + self.partition_count_total(),
        );
        if let Some(cluster_id) = self.cluster_id() {
            records.push(MetadataRecord::ClusterBootstrap {
                cluster_id: cluster_id.to_string(),
            });
        }
        if let Some((node, term)) = self.controller {
            records.push(MetadataRecord::ControllerChanged { node, term });
        }
        for broker in self.brokers.values() {
            records.push(MetadataRecord::BrokerRegistered(broker.clone()));
        }
        for topic in self.topics.topics() {
            records.push(MetadataRecord::TopicCreated {
                name: topic.name.clone(),
                id: topic.id,
                configs: topic.overrides.clone(),
                internal: topic.internal,
            });
            for (p, state) in self.partitions(topic.id).iter().enumerate() {
                records.push(MetadataRecord::Partition {
                    topic: topic.id,
                    partition: PartitionId(p as i32),
                    state: state.clone(),
                });
            }
        }
        if self.topics.next_producer_id > 0 {
            records.push(MetadataRecord::ProducerIdsAllocated {
                node: NodeId(-1),
                broker_epoch: -1,
                next_producer_id: self.topics.next_producer_id,
            });
        }
        records
    }

    /// What the controller promises of every image it writes: partitions well formed and
    /// counted, and no partition led by a broker that is fenced or not registered.
    pub fn check_invariants(&self) -> Result<(), String> {
        for topic in self.topics.topics() {
            let parts = self.partitions(topic.id);
            if parts.is_empty() || parts.len() != topic.partition_count as usize {
                return Err(format!(
                    "topic {} has {} partitions but counts {}",
                    topic.name,
                    parts.len(),
                    topic.partition_count
                ));
            }
            for (p, state) in parts.iter().enumerate() {
                check_partition_state(state).map_err(|e| format!("{}-{p}: {e}", topic.name))?;
                if let Some(leader) = state.leader {
                    if !self.is_usable(leader) {
                        return Err(format!(
                            "{}-{p} is led by broker {} which is fenced or not registered",
                            topic.name, leader.0
                        ));
                    }
                }
            }
        }
        if self.partitions.len() != self.topics.topic_count() {
            return Err("partitions kept for a topic that does not exist".into());
        }
        Ok(())
    }
}

fn check_partition_state(state: &PartitionState) -> Result<(), String> {
    if state.replicas.is_empty() {
        return Err("no replicas".into());
    }
    if state.isr.is_empty() || state.isr.iter().any(|n| !state.replicas.contains(n)) {
        return Err(format!(
            "ISR {:?} is empty or not within replicas {:?}",
            state.isr, state.replicas
        ));
    }
    if let Some(leader) = state.leader {
        if !state.isr.contains(&leader) {
            return Err(format!("leader {} is not in the ISR", leader.0));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::records::{decode_records, encode_records};
    use crate::metadata::topic_config::TopicOverrides;
    use crate::metadata::LeaderEpoch;

    fn id(n: u128) -> TopicId {
        TopicId(uuid::Uuid::from_u128(n))
    }

    fn broker(node: i32, fenced: bool) -> MetadataRecord {
        MetadataRecord::BrokerRegistered(BrokerRegistration {
            node_id: NodeId(node),
            incarnation_id: node as u128 + 100,
            broker_epoch: 3,
            listeners: vec![],
            rack: None,
            fenced,
        })
    }

    fn partition(topic: u128, p: i32, leader: i32, epoch: i32) -> MetadataRecord {
        MetadataRecord::Partition {
            topic: id(topic),
            partition: PartitionId(p),
            state: PartitionState {
                replicas: vec![NodeId(leader)],
                isr: vec![NodeId(leader)],
                leader: Some(NodeId(leader)),
                leader_epoch: LeaderEpoch(epoch),
                partition_epoch: epoch,
            },
        }
    }

    fn sample() -> ClusterImage {
        let mut image = ClusterImage::empty();
        let mut configs = TopicOverrides::new();
        configs.insert("retention.ms".into(), "1000".into());
        let errors = image.apply(
            1,
            1,
            &[
                MetadataRecord::ClusterBootstrap {
                    cluster_id: "c1".into(),
                },
                MetadataRecord::ControllerChanged {
                    node: NodeId(1),
                    term: 1,
                },
                broker(1, false),
                broker(2, true),
                MetadataRecord::TopicCreated {
                    name: "orders".into(),
                    id: id(7),
                    configs,
                    internal: false,
                },
                partition(7, 0, 1, 0),
                partition(7, 1, 1, 0),
                MetadataRecord::ProducerIdsAllocated {
                    node: NodeId(1),
                    broker_epoch: 3,
                    next_producer_id: 1000,
                },
            ],
        );
        assert_eq!(errors, vec![]);
        image
    }

    #[test]
    fn records_build_topics_partitions_and_brokers() {
        let image = sample();
        assert_eq!(image.cluster_id(), Some("c1"));
        assert_eq!(image.controller(), Some((NodeId(1), 1)));
        let topic = image.topic("orders").expect("created");
        assert_eq!(topic.partition_count, 2);
        assert_eq!(
            image.metadata().topic_by_id(id(7)).map(|t| t.name.as_str()),
            Some("orders")
        );
        assert_eq!(image.partitions(id(7)).len(), 2);
        assert_eq!(image.usable_brokers(), vec![NodeId(1)]);
        assert_eq!(image.next_producer_id(), 1000);
        assert_eq!(image.applied_offset(), 1);
        image.check_invariants().unwrap();
    }

    #[test]
    fn a_snapshot_rebuilds_the_same_image() {
        let mut image = sample();
        image.apply(
            5,
            2,
            &[
                MetadataRecord::ConfigChanged {
                    topic: id(7),
                    name: "retention.ms".into(),
                    value: None,
                },
                partition(7, 1, 1, 1),
            ],
        );
        let encoded = encode_records(&image.snapshot_records());
        let records = decode_records(&encoded).unwrap();
        let loaded = ClusterImage::from_snapshot(5, 2, &records).unwrap();
        assert_eq!(loaded, image);
    }

    #[test]
    fn records_that_do_not_fit_are_skipped_and_reported() {
        let mut image = sample();
        let before = image.clone();
        let errors = image.apply(
            9,
            3,
            &[
                // epochs backwards
                partition(7, 0, 1, 0),
                // a gap in partition numbers
                partition(7, 5, 1, 0),
                MetadataRecord::TopicDeleted { id: id(99) },
                MetadataRecord::BrokerFenced { node: NodeId(42) },
                MetadataRecord::ClusterBootstrap {
                    cluster_id: "other".into(),
                },
            ],
        );
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors.iter().all(|e| e.offset == 9));
        assert_eq!(image.topic("orders"), before.topic("orders"));
        assert_eq!(image.applied_offset(), 9);
    }

    #[test]
    fn deleting_a_topic_removes_its_partitions() {
        let mut image = sample();
        image.apply(2, 1, &[MetadataRecord::TopicDeleted { id: id(7) }]);
        assert!(image.topic("orders").is_none());
        assert!(image.partitions(id(7)).is_empty());
        image.check_invariants().unwrap();
    }

    #[test]
    fn a_snapshot_of_the_largest_image_fits_one_frame() {
        // Three replicas each (more than today's one), long topic names: the largest
        // partitions a snapshot will hold, per partition.
        let mut image = ClusterImage::empty();
        let mut records = vec![broker(1, false), broker(2, false), broker(3, false)];
        let topics = 20u128;
        let per_topic = 500;
        for t in 1..=topics {
            records.push(MetadataRecord::TopicCreated {
                name: format!("{}-{t}", "x".repeat(200)),
                id: id(t),
                configs: TopicOverrides::new(),
                internal: false,
            });
            for p in 0..per_topic {
                records.push(MetadataRecord::Partition {
                    topic: id(t),
                    partition: PartitionId(p),
                    state: PartitionState {
                        replicas: vec![NodeId(1), NodeId(2), NodeId(3)],
                        isr: vec![NodeId(1), NodeId(2), NodeId(3)],
                        leader: Some(NodeId(1)),
                        leader_epoch: LeaderEpoch(i32::MAX),
                        partition_epoch: i32::MAX,
                    },
                });
            }
        }
        assert_eq!(image.apply(1, 1, &records), vec![]);
        let bytes = encode_records(&image.snapshot_records()).len();
        let per_partition = bytes / (topics as usize * per_topic as usize);
        let largest = per_partition * crate::controller::state::MAX_CLUSTER_PARTITIONS;
        assert!(
            largest < wharf_protocol::controller::MAX_FRAME_BYTES / 2,
            "{per_partition} bytes a partition: {largest} bytes for the largest snapshot"
        );
    }

    #[test]
    fn a_partition_led_by_a_fenced_broker_breaks_the_invariants() {
        let mut image = sample();
        image.apply(2, 1, &[MetadataRecord::BrokerFenced { node: NodeId(1) }]);
        assert!(image.check_invariants().is_err());
    }
}
