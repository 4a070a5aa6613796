//! Cluster metadata on this node: topics, their ids, partition counts and config overrides,
//! and which shard owns each partition.
//!
//! Control plane. Every change goes through the cluster's active controller
//! (`crate::cluster`, via the entry points in [`controller`]), which commits it to the
//! metadata log; each shard then gets its own copy of the new image (a
//! `controller::image::ClusterImage`, whose topics part is a [`MetadataImage`]); request
//! handlers only ever read their shard's copy. [`store`] keeps the partition directory
//! layout and reads the metadata file of data directories written before clusters.

pub mod cluster;
pub mod controller;
pub mod ownership;
pub mod producer_ids;
pub mod store;
pub mod topic_config;

use std::collections::{BTreeMap, HashMap};

use crate::metadata::topic_config::TopicOverrides;

/// Kafka's internal topic for committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Kafka's longest legal topic name.
pub const MAX_TOPIC_NAME_CHARS: usize = 249;

/// Every partition on a single node has this leader epoch; it is what the log records in
/// `partitionLeaderEpoch` and what Metadata and OffsetForLeaderEpoch report.
pub const LEADER_EPOCH: LeaderEpoch = LeaderEpoch(0);

/// A topic's id (KIP-516), stable for the topic's life and never reused.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicId(pub uuid::Uuid);

/// A partition index within a topic.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId(pub i32);

/// A broker's `node.id`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub i32);

/// A partition leader epoch (KIP-101).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaderEpoch(pub i32);

/// A partition of a topic, by topic id: a deleted and re-created topic is a different one.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic_id: TopicId,
    pub partition: PartitionId,
}

/// One topic as the metadata knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicMeta {
    pub name: String,
    pub id: TopicId,
    /// Partitions are numbered 0..partition_count; the count only grows.
    pub partition_count: i32,
    pub overrides: TopicOverrides,
    /// Internal topics (`__consumer_offsets`) are listed as such and cannot be created,
    /// deleted or auto-created by clients.
    pub internal: bool,
}

impl TopicMeta {
    pub fn partitions(&self) -> impl Iterator<Item = PartitionId> {
        (0..self.partition_count).map(PartitionId)
    }

    pub fn has_partition(&self, partition: PartitionId) -> bool {
        (0..self.partition_count).contains(&partition.0)
    }

    /// The partition `index` of this topic, if the topic has it (request fields carry bare
    /// partition indexes).
    pub fn partition(&self, index: i32) -> Option<TopicPartition> {
        let partition = PartitionId(index);
        self.has_partition(partition).then_some(TopicPartition {
            topic_id: self.id,
            partition,
        })
    }
}

/// A consistent view of all topics. Each shard holds its own copy; `version` grows with
/// every change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetadataImage {
    pub version: u64,
    pub cluster_id: String,
    /// KIP-98: the first producer id not yet handed out. Persisted before a block of ids
    /// below it is given to a shard, so ids never repeat across restarts.
    pub next_producer_id: i64,
    topics: BTreeMap<String, TopicMeta>,
    names_by_id: HashMap<TopicId, String>,
}

impl MetadataImage {
    pub fn new(cluster_id: String, topics: impl IntoIterator<Item = TopicMeta>) -> MetadataImage {
        let mut image = MetadataImage {
            version: 1,
            cluster_id,
            ..MetadataImage::default()
        };
        for topic in topics {
            image.upsert(topic);
        }
        image
    }

    pub fn topic(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: TopicId) -> Option<&TopicMeta> {
        self.names_by_id
            .get(&id)
            .and_then(|name| self.topics.get(name))
    }

    pub fn topics(&self) -> impl Iterator<Item = &TopicMeta> {
        self.topics.values()
    }

    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Partitions of every topic together.
    pub fn partition_total(&self) -> i64 {
        self.topics.values().map(|t| t.partition_count as i64).sum()
    }

    /// Inserts or replaces a topic (by name).
    pub fn upsert(&mut self, topic: TopicMeta) {
        if let Some(old) = self.topics.get(&topic.name) {
            self.names_by_id.remove(&old.id);
        }
        self.names_by_id.insert(topic.id, topic.name.clone());
        self.topics.insert(topic.name.clone(), topic);
    }

    pub fn remove(&mut self, name: &str) -> Option<TopicMeta> {
        let topic = self.topics.remove(name)?;
        self.names_by_id.remove(&topic.id);
        Some(topic)
    }

    /// Changes the topic with id `id` in place (its partition count or overrides; its name
    /// and id stay). `false` if there is no such topic.
    pub fn update_topic(&mut self, id: TopicId, change: impl FnOnce(&mut TopicMeta)) -> bool {
        let Some(topic) = self
            .names_by_id
            .get(&id)
            .and_then(|name| self.topics.get_mut(name))
        else {
            return false;
        };
        change(topic);
        assert_eq!(topic.id, id, "update_topic must not change a topic's id");
        assert_eq!(
            self.names_by_id.get(&id),
            Some(&topic.name),
            "update_topic must not change a topic's name"
        );
        true
    }
}

/// Why a topic name is not legal (Kafka: INVALID_TOPIC_EXCEPTION).
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("Topic name is illegal, it can't be empty".into());
    }
    if name == "." || name == ".." {
        return Err("Topic name cannot be \".\" or \"..\"".into());
    }
    if name.len() > MAX_TOPIC_NAME_CHARS {
        return Err(format!(
            "Topic name is illegal, it can't be longer than {MAX_TOPIC_NAME_CHARS} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(format!(
            "Topic name \"{name}\" is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// 128 fresh random bits: per-process random SipHash keys over the time, the process id and
/// a counter. Good enough for topic and cluster ids, which need uniqueness, not secrecy.
pub fn random_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut halves = [0u64; 2];
    for (i, half) in halves.iter_mut().enumerate() {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        hasher.write_u32(std::process::id());
        hasher.write_u64(count);
        hasher.write_usize(i);
        *half = hasher.finish();
    }
    ((halves[0] as u128) << 64) | halves[1] as u128
}

/// A new random (version 4) topic id; never the all-zero id, which Kafka reserves.
pub fn new_topic_id() -> TopicId {
    topic_id_from_bits(random_u128())
}

/// The topic id made of 128 random bits (a version 4 UUID, so never the nil id).
pub fn topic_id_from_bits(bits: u128) -> TopicId {
    TopicId(uuid::Builder::from_random_bytes(bits.to_be_bytes()).into_uuid())
}

/// A new cluster id in Kafka's format: a random UUID in URL-safe base64 without padding.
pub fn new_cluster_id() -> String {
    cluster_id_from_bits(random_u128())
}

/// The cluster id made of 128 random bits, in Kafka's format (a version 4 UUID in
/// URL-safe base64 without padding).
pub fn cluster_id_from_bits(bits: u128) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = uuid::Builder::from_random_bytes(bits.to_be_bytes())
        .into_uuid()
        .into_bytes();
    let mut out = String::with_capacity(22);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(ALPHABET[((acc >> bits) & 63) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (6 - bits)) & 63) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_eu-west").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
        assert!(validate_topic_name(&"x".repeat(249)).is_ok());
    }

    #[test]
    fn ids_are_distinct_and_cluster_ids_look_like_kafkas() {
        let a = new_topic_id();
        let b = new_topic_id();
        assert_ne!(a, b);
        assert!(!a.0.is_nil());
        let cluster = new_cluster_id();
        assert_eq!(cluster.len(), 22);
        assert!(cluster
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn image_finds_topics_by_name_and_id() {
        let topic = TopicMeta {
            name: "t".into(),
            id: new_topic_id(),
            partition_count: 3,
            overrides: TopicOverrides::new(),
            internal: false,
        };
        let mut image = MetadataImage::new("c".into(), [topic.clone()]);
        assert_eq!(image.topic("t"), Some(&topic));
        assert_eq!(image.topic_by_id(topic.id), Some(&topic));
        image.remove("t");
        assert_eq!(image.topic_by_id(topic.id), None);
    }
}
