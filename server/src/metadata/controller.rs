//! Metadata changes as request handlers ask for them: topic creation and deletion,
//! partition additions and config changes, and the checks every controller shares.
//!
//! The functions at the bottom of this file are what request handlers on any shard call:
//! they go to the cluster's active controller (`crate::cluster`), which commits the change
//! to the metadata log; the caller gets its answer once every shard of this node serves
//! the change (has opened or deleted the partitions it owns), so a topic that CreateTopics
//! reported created can be produced to on any connection at once.

use std::rc::Rc;

use crate::cluster;
use crate::config::MAX_PARTITIONS_PER_TOPIC;
use crate::controller::requests::{
    ControllerError, ControllerReply, ControllerRequest, CreateTopic, CreatedTopic,
    PartitionsIncrease, Reply,
};
use crate::metadata::store;
use crate::metadata::topic_config::{self, TopicDefaults, TopicOverrides};
use crate::metadata::{validate_topic_name, MetadataImage, TopicId, TopicMeta, OFFSETS_TOPIC};
use crate::node::Shard;
use crate::shard::ShardId;

/// The shard that runs the controller.
pub const CONTROLLER_SHARD: ShardId = ShardId(0);

/// An error's text as sent to a client: it may quote the client's input (a config name or
/// value), so it is cut to the longest message a response carries.
fn cut(text: &str) -> &str {
    crate::limits::truncate(text, crate::limits::MAX_ERROR_MESSAGE_BYTES)
}

/// Why a metadata change was refused; `crate::errors` maps each to a Kafka error code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetadataError {
    #[error("Topic '{0}' already exists.")]
    TopicAlreadyExists(String),
    #[error("{}", cut(.0))]
    InvalidTopic(String),
    #[error("This server does not host this topic-partition.")]
    UnknownTopic,
    #[error("This server does not host this topic ID.")]
    UnknownTopicId,
    #[error("{}", cut(.0))]
    InvalidPartitions(String),
    #[error("{}", cut(.0))]
    InvalidReplicationFactor(String),
    #[error("{}", cut(.0))]
    InvalidReplicaAssignment(String),
    #[error("{}", cut(.0))]
    InvalidConfig(String),
    #[error("{}", cut(.0))]
    InvalidRequest(String),
    #[error("{}", cut(.0))]
    PolicyViolation(String),
    #[error("{}", cut(.0))]
    Storage(String),
    #[error("the metadata controller is not available (shutting down)")]
    Unavailable,
    /// The change was not committed within its time (REQUEST_TIMED_OUT); it may still be.
    #[error("{}", cut(.0))]
    TimedOut(String),
    /// No active controller could be reached (an election, or the quorum is not formed):
    /// the client retries.
    #[error("{}", cut(.0))]
    NotController(String),
}

/// A topic to create.
#[derive(Clone, Debug)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    /// Config overrides as given (validated by the controller); `None` values are refused.
    pub configs: Vec<(String, Option<String>)>,
    /// Only the broker itself creates internal topics.
    pub internal: bool,
}

/// A topic named by name or by id (DeleteTopics v6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicRef {
    Name(String),
    Id(TopicId),
}

/// IncrementalAlterConfigs operations (Kafka's `AlterConfigOp.OpType` codes 0–3).
#[derive(Clone, Debug, PartialEq)]
pub enum AlterOp {
    Set(String, String),
    Delete(String),
    Append(String, String),
    Subtract(String, String),
}

/// Checks a topic to create against `image` and the names `also_taken` (topics created
/// earlier in the same request), and returns its validated config overrides.
pub fn validate_new_topic(
    image: &MetadataImage,
    t: &NewTopic,
    also_taken: &[&str],
) -> Result<TopicOverrides, MetadataError> {
    validate_topic_name(&t.name).map_err(MetadataError::InvalidTopic)?;
    if t.name == store::METADATA_LOG_TOPIC {
        return Err(MetadataError::InvalidRequest(format!(
            "Creation of internal topic {} is prohibited.",
            store::METADATA_LOG_TOPIC
        )));
    }
    let txn_topic = wharf_protocol::txn::log::TRANSACTION_STATE_TOPIC_NAME;
    if !t.internal && (t.name == OFFSETS_TOPIC || t.name == txn_topic) {
        return Err(MetadataError::InvalidRequest(format!(
            "Creation of internal topic {} is prohibited.",
            t.name
        )));
    }
    if image.topic(&t.name).is_some() || also_taken.contains(&t.name.as_str()) {
        return Err(MetadataError::TopicAlreadyExists(t.name.clone()));
    }
    // Kafka: '.' and '_' collide in metric names, so "a.b" and "a_b" cannot both exist.
    let collision_key = |n: &str| n.replace('.', "_");
    if let Some(other) = image
        .topics()
        .map(|o| o.name.as_str())
        .chain(also_taken.iter().copied())
        .find(|o| collision_key(o) == collision_key(&t.name))
    {
        return Err(MetadataError::InvalidTopic(format!(
            "Topic '{}' collides with existing topic: {}",
            t.name, other
        )));
    }
    if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&t.partitions) {
        return Err(MetadataError::InvalidPartitions(format!(
            "Number of partitions must be between 1 and {MAX_PARTITIONS_PER_TOPIC}, got {}",
            t.partitions
        )));
    }
    let mut overrides = TopicOverrides::new();
    for (name, value) in &t.configs {
        let Some(value) = value else {
            return Err(MetadataError::InvalidConfig(format!(
                "Null value not supported for topic configs: {name}"
            )));
        };
        let value =
            topic_config::validate(name, value).map_err(|e| MetadataError::InvalidConfig(e.0))?;
        overrides.insert(name.clone(), value);
    }
    Ok(overrides)
}

/// Checks growing `topic` to `total` partitions (CreatePartitions).
pub fn check_partition_increase(topic: &TopicMeta, total: i32) -> Result<(), MetadataError> {
    let name = &topic.name;
    if topic.internal {
        return Err(MetadataError::InvalidRequest(format!(
            "Cannot add partitions to internal topic {name}"
        )));
    }
    if total <= topic.partition_count {
        return Err(MetadataError::InvalidPartitions(format!(
            "Topic currently has {} partitions, which is higher than the requested {total}.",
            topic.partition_count
        )));
    }
    if total > MAX_PARTITIONS_PER_TOPIC {
        return Err(MetadataError::InvalidPartitions(format!(
            "Number of partitions {total} exceeds the limit of {MAX_PARTITIONS_PER_TOPIC}"
        )));
    }
    Ok(())
}

/// The topic DeleteTopics names, if it exists and may be deleted.
pub fn deletion_target<'a>(
    image: &'a MetadataImage,
    target: &TopicRef,
) -> Result<&'a TopicMeta, MetadataError> {
    let topic = match target {
        TopicRef::Name(name) => image.topic(name).ok_or(MetadataError::UnknownTopic)?,
        TopicRef::Id(id) => image
            .topic_by_id(*id)
            .ok_or(MetadataError::UnknownTopicId)?,
    };
    if topic.internal {
        return Err(MetadataError::InvalidRequest(format!(
            "Internal topic {} cannot be deleted",
            topic.name
        )));
    }
    Ok(topic)
}

/// Applies IncrementalAlterConfigs operations to a topic's overrides; list values a topic
/// does not override start from `defaults`.
pub fn apply_ops(
    current: &TopicOverrides,
    ops: Vec<AlterOp>,
    defaults: &TopicDefaults,
) -> Result<TopicOverrides, MetadataError> {
    let invalid = |e: topic_config::InvalidConfig| MetadataError::InvalidConfig(e.0);
    let mut next = current.clone();
    let list_items = |next: &TopicOverrides, name: &str| -> Vec<String> {
        let value = next
            .get(name)
            .cloned()
            .unwrap_or_else(|| defaults.value(name).to_string());
        value
            .split(',')
            .map(str::to_string)
            .filter(|s| !s.is_empty())
            .collect()
    };
    for op in ops {
        match op {
            AlterOp::Set(name, value) => {
                let value = topic_config::validate(&name, &value).map_err(invalid)?;
                next.insert(name, value);
            }
            AlterOp::Delete(name) => {
                topic_config::config_def(&name).ok_or_else(|| {
                    MetadataError::InvalidConfig(format!("Unknown topic config name: {name}"))
                })?;
                next.remove(&name);
            }
            AlterOp::Append(name, value) | AlterOp::Subtract(name, value) if !is_list(&name) => {
                let _ = value;
                return Err(MetadataError::InvalidConfig(format!(
                    "Config value append/subtract is not allowed for config key {name} since it is not a list"
                )));
            }
            AlterOp::Append(name, value) | AlterOp::Subtract(name, value)
                if value.len() > topic_config::MAX_CONFIG_VALUE_BYTES =>
            {
                return Err(MetadataError::InvalidConfig(format!(
                    "Invalid value for configuration {name}: longer than {} bytes",
                    topic_config::MAX_CONFIG_VALUE_BYTES
                )));
            }
            AlterOp::Append(name, value) => {
                let mut items = list_items(&next, &name);
                // A value may list millions of items: a set, not a scan per item.
                let mut present: std::collections::HashSet<String> =
                    items.iter().cloned().collect();
                for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if present.insert(item.to_string()) {
                        items.push(item.to_string());
                    }
                }
                let value = topic_config::validate(&name, &items.join(",")).map_err(invalid)?;
                next.insert(name, value);
            }
            AlterOp::Subtract(name, value) => {
                let remove: Vec<&str> = value.split(',').map(str::trim).collect();
                let items: Vec<String> = list_items(&next, &name)
                    .into_iter()
                    .filter(|i| !remove.contains(&i.as_str()))
                    .collect();
                let value = topic_config::validate(&name, &items.join(",")).map_err(invalid)?;
                next.insert(name, value);
            }
        }
    }
    Ok(next)
}

fn is_list(name: &str) -> bool {
    matches!(
        topic_config::config_def(name).map(|d| d.kind),
        Some(topic_config::ConfigKind::List(_))
    )
}

// ---------------------------------------------------------------------------------------
// Entry points for request handlers on any shard: every change goes to the cluster's active
// controller (`crate::cluster`) and is answered once it is committed and served here.
// ---------------------------------------------------------------------------------------

/// A failure of a whole request, for each of its items.
fn whole(error: ControllerError) -> MetadataError {
    match error {
        ControllerError::NotController { .. } => MetadataError::NotController(
            "No active controller could be reached in time (the metadata quorum may be electing one); retry.".into(),
        ),
        ControllerError::Metadata(e) => e,
        other => MetadataError::InvalidRequest(other.to_string()),
    }
}

fn items<T>(count: usize, error: MetadataError) -> Vec<Result<T, MetadataError>> {
    (0..count).map(|_| Err(error.clone())).collect()
}

/// The answer's items, or the whole failure for each item (also when the answer has a
/// different number of items than the request, which a correct controller never sends).
fn unpack<T>(
    count: usize,
    reply: Reply,
    pick: impl FnOnce(ControllerReply) -> Option<Vec<Result<T, MetadataError>>>,
) -> Vec<Result<T, MetadataError>> {
    match reply {
        Ok(answer) => match pick(answer) {
            Some(results) if results.len() == count => results,
            _ => items(
                count,
                MetadataError::InvalidRequest("the controller answered something else".into()),
            ),
        },
        Err(e) => items(count, whole(e)),
    }
}

pub async fn create_topics(
    shard: &Rc<Shard>,
    topics: Vec<CreateTopic>,
    validate_only: bool,
) -> Vec<Result<CreatedTopic, MetadataError>> {
    let count = topics.len();
    if count == 0 {
        return Vec::new();
    }
    let reply = cluster::call(
        shard,
        ControllerRequest::CreateTopics {
            topics,
            validate_only,
        },
    )
    .await;
    unpack(count, reply, |r| match r {
        ControllerReply::CreateTopics(results) => Some(results),
        _ => None,
    })
}

pub async fn delete_topics(
    shard: &Rc<Shard>,
    targets: Vec<TopicRef>,
) -> Vec<Result<TopicMeta, MetadataError>> {
    let count = targets.len();
    if count == 0 {
        return Vec::new();
    }
    let reply = cluster::call(shard, ControllerRequest::DeleteTopics { topics: targets }).await;
    unpack(count, reply, |r| match r {
        ControllerReply::DeleteTopics(results) => Some(results),
        _ => None,
    })
}

/// Grows topics to the given total partition counts.
pub async fn create_partitions(
    shard: &Rc<Shard>,
    requests: Vec<PartitionsIncrease>,
    validate_only: bool,
) -> Vec<Result<(), MetadataError>> {
    let count = requests.len();
    if count == 0 {
        return Vec::new();
    }
    let reply = cluster::call(
        shard,
        ControllerRequest::CreatePartitions {
            topics: requests,
            validate_only,
        },
    )
    .await;
    unpack(count, reply, |r| match r {
        ControllerReply::CreatePartitions(results) => Some(results),
        _ => None,
    })
}

/// IncrementalAlterConfigs on topics: all of a topic's operations apply or none do.
pub async fn alter_topic_configs(
    shard: &Rc<Shard>,
    requests: Vec<(String, Vec<AlterOp>)>,
    validate_only: bool,
) -> Vec<Result<(), MetadataError>> {
    let count = requests.len();
    if count == 0 {
        return Vec::new();
    }
    let reply = cluster::call(
        shard,
        ControllerRequest::AlterConfigs {
            topics: requests,
            validate_only,
        },
    )
    .await;
    unpack(count, reply, |r| match r {
        ControllerReply::AlterConfigs(results) => Some(results),
        _ => None,
    })
}

/// AlterConfigs (the non-incremental API) on topics: each topic's overrides become exactly
/// the configs given; every config not named reverts to its default. Sent as incremental
/// operations that remove every other config, so the controller applies it atomically
/// against its own view of the topic.
pub async fn replace_topic_configs(
    shard: &Rc<Shard>,
    requests: Vec<(String, Vec<(String, String)>)>,
    validate_only: bool,
) -> Vec<Result<(), MetadataError>> {
    let image = shard.metadata();
    let requests = requests
        .into_iter()
        .map(|(topic, configs)| {
            // A topic this node does not know gets no removals (the controller answers
            // UNKNOWN_TOPIC_OR_PARTITION when it does not know it either).
            let known = image.topic(&topic).is_some();
            let mut ops: Vec<AlterOp> = topic_config::TOPIC_CONFIGS
                .iter()
                .filter(|_| known)
                .filter(|def| !configs.iter().any(|(name, _)| name == def.name))
                .map(|def| AlterOp::Delete(def.name.to_string()))
                .collect();
            ops.extend(
                configs
                    .into_iter()
                    .map(|(name, value)| AlterOp::Set(name, value)),
            );
            (topic, ops)
        })
        .collect();
    alter_topic_configs(shard, requests, validate_only).await
}

/// Kafka's default replication factor of its internal topics.
pub const DEFAULT_INTERNAL_TOPIC_REPLICATION_FACTOR: i16 = 3;

/// The replication factor an internal topic (`__consumer_offsets`, `__transaction_state`)
/// is created with: `configured` (`offsets.topic.replication.factor`,
/// `transaction.state.log.replication.factor`) when set — refused by the controller if the
/// cluster has fewer live brokers, as Kafka does — or else min(3, live brokers, `most`), so
/// that a cluster smaller than Kafka's default still gets its groups and transactions.
pub fn internal_topic_replication_factor(configured: Option<i16>, live_brokers: usize) -> i16 {
    configured.unwrap_or_else(|| {
        // At least one: this node is a broker, whether or not its image lists it yet.
        let live = i16::try_from(live_brokers.max(1)).unwrap_or(i16::MAX);
        DEFAULT_INTERNAL_TOPIC_REPLICATION_FACTOR.min(live)
    })
}

/// Creates `__consumer_offsets` (compacted, `offsets.topic.num.partitions` partitions) if it
/// does not exist yet, and returns it. For the group coordinator.
pub async fn ensure_offsets_topic(shard: &Rc<Shard>) -> Result<TopicMeta, MetadataError> {
    if let Some(topic) = shard.metadata().topic(OFFSETS_TOPIC) {
        return Ok(topic.clone());
    }
    let topic = CreateTopic {
        topic: NewTopic {
            name: OFFSETS_TOPIC.to_string(),
            partitions: shard.config.offsets_topic_num_partitions,
            configs: vec![
                ("cleanup.policy".into(), Some("compact".into())),
                // offsets.topic.segment.bytes: the cleaner compacts sealed segments only.
                (
                    "segment.bytes".into(),
                    Some(shard.config.offsets_topic_segment_bytes.to_string()),
                ),
            ],
            internal: true,
        },
        replication_factor: internal_topic_replication_factor(
            shard.config.offsets_topic_replication_factor,
            shard.metadata().usable_brokers().len(),
        ),
        assignments: Vec::new(),
    };
    match create_topics(shard, vec![topic], false).await.pop() {
        Some(Ok(created)) => Ok(created.topic),
        // Created concurrently by another caller: fine.
        Some(Err(MetadataError::TopicAlreadyExists(_))) => shard
            .metadata()
            .topic(OFFSETS_TOPIC)
            .cloned()
            .ok_or(MetadataError::UnknownTopic),
        Some(Err(e)) => Err(e),
        None => Err(MetadataError::Unavailable),
    }
}

/// `__transaction_state`, created on first use like `__consumer_offsets`: internal,
/// compacted, `transaction.state.log.num.partitions` partitions,
/// `transaction.state.log.replication.factor` replicas, and `min.insync.replicas` set to
/// `transaction.state.log.min.isr` (Kafka's `TransactionStateManager` creates it with the
/// same topic configs: the coordinator appends with acks=all).
pub async fn ensure_txn_topic(shard: &Rc<Shard>) -> Result<TopicMeta, MetadataError> {
    const NAME: &str = wharf_protocol::txn::log::TRANSACTION_STATE_TOPIC_NAME;
    if let Some(topic) = shard.metadata().topic(NAME) {
        return Ok(topic.clone());
    }
    let topic = CreateTopic {
        topic: NewTopic {
            name: NAME.to_string(),
            partitions: shard.config.txn.transaction_state_log_num_partitions as i32,
            configs: vec![
                ("cleanup.policy".into(), Some("compact".into())),
                (
                    "segment.bytes".into(),
                    Some(
                        shard
                            .config
                            .txn
                            .transaction_state_log_segment_bytes
                            .to_string(),
                    ),
                ),
                (
                    "min.insync.replicas".into(),
                    Some(shard.config.txn.transaction_state_log_min_isr.to_string()),
                ),
                // A replica outside the ISR may lack records the coordinator answered for.
                (
                    "unclean.leader.election.enable".into(),
                    Some("false".into()),
                ),
            ],
            internal: true,
        },
        replication_factor: internal_topic_replication_factor(
            shard.config.txn.transaction_state_log_replication_factor,
            shard.metadata().usable_brokers().len(),
        ),
        assignments: Vec::new(),
    };
    match create_topics(shard, vec![topic], false).await.pop() {
        Some(Ok(created)) => Ok(created.topic),
        Some(Err(MetadataError::TopicAlreadyExists(_))) => shard
            .metadata()
            .topic(NAME)
            .cloned()
            .ok_or(MetadataError::UnknownTopic),
        Some(Err(e)) => Err(e),
        None => Err(MetadataError::Unavailable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_topics_get_three_replicas_or_as_many_brokers_as_there_are() {
        assert_eq!(internal_topic_replication_factor(None, 1), 1);
        assert_eq!(internal_topic_replication_factor(None, 0), 1);
        assert_eq!(internal_topic_replication_factor(None, 2), 2);
        assert_eq!(internal_topic_replication_factor(None, 7), 3);
        // A configured factor is asked for as it is (the controller refuses one the
        // cluster cannot place).
        assert_eq!(internal_topic_replication_factor(Some(5), 1), 5);
    }
}
