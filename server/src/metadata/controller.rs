//! The one place metadata changes: topic creation and deletion, partition additions and
//! config changes. It runs on shard 0; the functions at the bottom of this file are what
//! request handlers on any shard call, and they forward to shard 0.
//!
//! A change is applied one at a time: validate against the current image, write the new
//! image to disk, then give every shard its copy and wait until each has opened (or
//! deleted) the partitions it owns. Only then does the caller get its answer, so a topic
//! that CreateTopics reported created can be produced to on any connection at once.

use std::cell::RefCell;
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;

use glommio::sync::Semaphore;

use crate::config::MAX_PARTITIONS_PER_TOPIC;
use crate::metadata::store;
use crate::metadata::topic_config::{self, TopicOverrides};
use crate::metadata::{
    new_topic_id, validate_topic_name, MetadataImage, TopicId, TopicMeta, OFFSETS_TOPIC,
};
use crate::shard::{Shard, ShardId};

/// The shard that runs the controller.
pub const CONTROLLER_SHARD: ShardId = ShardId(0);

/// An error's text as sent to a client: it may quote the client's input (a config name or
/// value), so it is cut to the longest message a response carries.
fn cut(text: &str) -> &str {
    crate::limits::truncate(text, crate::limits::MAX_ERROR_MESSAGE_BYTES)
}

/// Why a metadata change was refused; `kafka::errors` maps each to a Kafka error code.
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
#[derive(Clone, Debug)]
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

/// The controller's state on shard 0.
pub struct Controller {
    image: RefCell<MetadataImage>,
    /// One change at a time.
    lock: Semaphore,
    data_dir: PathBuf,
}

impl Controller {
    pub fn new(image: MetadataImage, data_dir: PathBuf) -> Controller {
        Controller {
            image: RefCell::new(image),
            lock: Semaphore::new(1),
            data_dir,
        }
    }

    /// Validates `change` against the current image, then persists and publishes the image
    /// it returns. `change` returns per-item results and the new image (or `None` if nothing
    /// changed).
    async fn commit<T, F>(&self, shard: &Rc<Shard>, change: F) -> Result<T, MetadataError>
    where
        F: FnOnce(&MetadataImage) -> (T, Option<MetadataImage>),
    {
        let _permit = self
            .lock
            .acquire_permit(1)
            .await
            .map_err(|_| MetadataError::Unavailable)?;
        let (result, next) = {
            let current = self.image.borrow();
            change(&current)
        };
        let Some(mut next) = next else {
            return Ok(result);
        };
        next.version = self.image.borrow().version + 1;
        let to_save = next.clone();
        let data_dir = self.data_dir.clone();
        glommio::executor()
            .spawn_blocking(move || store::save(&data_dir, &to_save))
            .await
            .map_err(|e| MetadataError::Storage(e.to_string()))?;
        *self.image.borrow_mut() = next.clone();
        let failures: Vec<String> = shard
            .invoke_on_all(move |s| async move { s.apply_metadata(next).await })
            .await
            .into_iter()
            .flat_map(|r| match r {
                Ok(failures) => failures,
                Err(e) => vec![e.to_string()],
            })
            .collect();
        if let Some(first) = failures.first() {
            tracing::error!(
                failures = failures.len(),
                "applying a metadata change failed on some partitions: {first}"
            );
        }
        Ok(result)
    }

    /// Hands out `count` producer ids `[start, end)` (Kafka's ProducerIdManager): the new
    /// high-water mark is on disk before any of them is used. Not published to the shards;
    /// later changes start from this image and carry it along.
    pub async fn allocate_producer_ids(&self, count: i64) -> Result<(i64, i64), MetadataError> {
        let _permit = self
            .lock
            .acquire_permit(1)
            .await
            .map_err(|_| MetadataError::Unavailable)?;
        let mut next = self.image.borrow().clone();
        let start = next.next_producer_id;
        let end = start
            .checked_add(count)
            .ok_or_else(|| MetadataError::Storage("producer ids are exhausted".into()))?;
        next.next_producer_id = end;
        let to_save = next.clone();
        let data_dir = self.data_dir.clone();
        glommio::executor()
            .spawn_blocking(move || store::save(&data_dir, &to_save))
            .await
            .map_err(|e| MetadataError::Storage(e.to_string()))?;
        *self.image.borrow_mut() = next;
        Ok((start, end))
    }

    pub async fn create_topics(
        &self,
        shard: &Rc<Shard>,
        topics: Vec<NewTopic>,
        validate_only: bool,
    ) -> Vec<Result<TopicMeta, MetadataError>> {
        let count = topics.len();
        let outcome = self
            .commit(shard, |current| {
                let mut next = current.clone();
                let results: Vec<_> = topics
                    .into_iter()
                    .map(|t| {
                        let meta = check_new_topic(&next, t, shard.config.max_broker_partitions)?;
                        next.upsert(meta.clone());
                        Ok(meta)
                    })
                    .collect();
                let changed = !validate_only && results.iter().any(Result::is_ok);
                (results, changed.then_some(next))
            })
            .await;
        outcome.unwrap_or_else(|e| vec![Err(e); count])
    }

    pub async fn delete_topics(
        &self,
        shard: &Rc<Shard>,
        targets: Vec<TopicRef>,
    ) -> Vec<Result<TopicMeta, MetadataError>> {
        let count = targets.len();
        self.commit(shard, |current| {
            let mut next = current.clone();
            let results: Vec<_> = targets
                .into_iter()
                .map(|target| {
                    let topic = match &target {
                        TopicRef::Name(name) => next
                            .topic(name)
                            .cloned()
                            .ok_or(MetadataError::UnknownTopic)?,
                        TopicRef::Id(id) => next
                            .topic_by_id(*id)
                            .cloned()
                            .ok_or(MetadataError::UnknownTopicId)?,
                    };
                    if topic.internal {
                        return Err(MetadataError::InvalidRequest(format!(
                            "Internal topic {} cannot be deleted",
                            topic.name
                        )));
                    }
                    next.remove(&topic.name);
                    Ok(topic)
                })
                .collect();
            let changed = results.iter().any(Result::is_ok);
            (results, changed.then_some(next))
        })
        .await
        .unwrap_or_else(|e| vec![Err(e); count])
    }

    /// Grows topics to the given total partition counts.
    pub async fn create_partitions(
        &self,
        shard: &Rc<Shard>,
        requests: Vec<(String, i32)>,
        validate_only: bool,
    ) -> Vec<Result<(), MetadataError>> {
        let count = requests.len();
        self.commit(shard, |current| {
            let mut next = current.clone();
            let results: Vec<_> = requests
                .into_iter()
                .map(|(name, total)| {
                    let mut topic = next.topic(&name).cloned().ok_or(MetadataError::UnknownTopic)?;
                    if topic.internal {
                        return Err(MetadataError::InvalidRequest(format!("Cannot add partitions to internal topic {name}")));
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
                    let added = (total - topic.partition_count) as i64;
                    check_broker_partitions(&next, added, shard.config.max_broker_partitions)?;
                    topic.partition_count = total;
                    next.upsert(topic);
                    Ok(())
                })
                .collect();
            let changed = !validate_only && results.iter().any(Result::is_ok);
            (results, changed.then_some(next))
        })
        .await
        .unwrap_or_else(|e| vec![Err(e); count])
    }

    /// AlterConfigs (the non-incremental API) on topics: each topic's overrides become
    /// exactly the configs given; every config not named reverts to its default.
    pub async fn replace_topic_configs(
        &self,
        shard: &Rc<Shard>,
        requests: Vec<(String, Vec<(String, String)>)>,
        validate_only: bool,
    ) -> Vec<Result<(), MetadataError>> {
        let count = requests.len();
        self.commit(shard, |current| {
            let mut next = current.clone();
            let results: Vec<_> = requests
                .into_iter()
                .map(|(name, configs)| {
                    let mut topic = next
                        .topic(&name)
                        .cloned()
                        .ok_or(MetadataError::UnknownTopic)?;
                    let mut overrides = TopicOverrides::new();
                    for (config, value) in configs {
                        let value = topic_config::validate(&config, &value)
                            .map_err(|e| MetadataError::InvalidConfig(e.0))?;
                        overrides.insert(config, value);
                    }
                    topic.overrides = overrides;
                    next.upsert(topic);
                    Ok(())
                })
                .collect();
            let changed = !validate_only && results.iter().any(Result::is_ok);
            (results, changed.then_some(next))
        })
        .await
        .unwrap_or_else(|e| vec![Err(e); count])
    }

    /// IncrementalAlterConfigs on topics: all of a topic's operations apply or none do.
    pub async fn alter_topic_configs(
        &self,
        shard: &Rc<Shard>,
        requests: Vec<(String, Vec<AlterOp>)>,
        validate_only: bool,
    ) -> Vec<Result<(), MetadataError>> {
        let count = requests.len();
        self.commit(shard, |current| {
            let mut next = current.clone();
            let results: Vec<_> = requests
                .into_iter()
                .map(|(name, ops)| {
                    let mut topic = next
                        .topic(&name)
                        .cloned()
                        .ok_or(MetadataError::UnknownTopic)?;
                    topic.overrides = apply_ops(&topic.overrides, ops, shard)?;
                    next.upsert(topic);
                    Ok(())
                })
                .collect();
            let changed = !validate_only && results.iter().any(Result::is_ok);
            (results, changed.then_some(next))
        })
        .await
        .unwrap_or_else(|e| vec![Err(e); count])
    }
}

/// `max.broker.partitions` (KIP-578's name): partitions this broker may hold in all.
/// Internal topics are not refused (groups must keep working), but they count.
fn check_broker_partitions(
    image: &MetadataImage,
    added: i64,
    max_broker_partitions: i64,
) -> Result<(), MetadataError> {
    let total = image.partition_total();
    if total + added > max_broker_partitions {
        return Err(MetadataError::PolicyViolation(format!(
            "This broker holds {total} partitions; {added} more would exceed max.broker.partitions ({max_broker_partitions})"
        )));
    }
    Ok(())
}

fn check_new_topic(
    image: &MetadataImage,
    t: NewTopic,
    max_broker_partitions: i64,
) -> Result<TopicMeta, MetadataError> {
    validate_topic_name(&t.name).map_err(MetadataError::InvalidTopic)?;
    if !t.internal && t.name == OFFSETS_TOPIC {
        return Err(MetadataError::InvalidRequest(format!(
            "Creation of internal topic {OFFSETS_TOPIC} is prohibited."
        )));
    }
    if image.topic(&t.name).is_some() {
        return Err(MetadataError::TopicAlreadyExists(t.name));
    }
    // Kafka: '.' and '_' collide in metric names, so "a.b" and "a_b" cannot both exist.
    let collision_key = |n: &str| n.replace('.', "_");
    if let Some(other) = image
        .topics()
        .find(|o| collision_key(&o.name) == collision_key(&t.name))
    {
        return Err(MetadataError::InvalidTopic(format!(
            "Topic '{}' collides with existing topic: {}",
            t.name, other.name
        )));
    }
    if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&t.partitions) {
        return Err(MetadataError::InvalidPartitions(format!(
            "Number of partitions must be between 1 and {MAX_PARTITIONS_PER_TOPIC}, got {}",
            t.partitions
        )));
    }
    if !t.internal {
        check_broker_partitions(image, t.partitions as i64, max_broker_partitions)?;
    }
    let mut overrides = TopicOverrides::new();
    for (name, value) in t.configs {
        let Some(value) = value else {
            return Err(MetadataError::InvalidConfig(format!(
                "Null value not supported for topic configs: {name}"
            )));
        };
        let value =
            topic_config::validate(&name, &value).map_err(|e| MetadataError::InvalidConfig(e.0))?;
        overrides.insert(name, value);
    }
    Ok(TopicMeta {
        name: t.name,
        id: new_topic_id(),
        partition_count: t.partitions,
        overrides,
        internal: t.internal,
    })
}

fn apply_ops(
    current: &TopicOverrides,
    ops: Vec<AlterOp>,
    shard: &Shard,
) -> Result<TopicOverrides, MetadataError> {
    let invalid = |e: topic_config::InvalidConfig| MetadataError::InvalidConfig(e.0);
    let mut next = current.clone();
    let list_items = |next: &TopicOverrides, name: &str| -> Vec<String> {
        let value = next
            .get(name)
            .cloned()
            .unwrap_or_else(|| shard.config.topic_defaults.value(name).to_string());
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
// Entry points for request handlers on any shard.
// ---------------------------------------------------------------------------------------

/// Runs `work` on the controller's shard. Should that shard not answer, each of the
/// `count` items the request named gets `Unavailable`.
async fn on_controller<F, Fut, T>(
    shard: &Rc<Shard>,
    count: usize,
    work: F,
) -> Vec<Result<T, MetadataError>>
where
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: Future<Output = Vec<Result<T, MetadataError>>> + 'static,
    T: Clone + Send + 'static,
{
    shard
        .invoke_on(CONTROLLER_SHARD, work)
        .await
        .unwrap_or_else(|_| vec![Err(MetadataError::Unavailable); count])
}

pub async fn create_topics(
    shard: &Rc<Shard>,
    topics: Vec<NewTopic>,
    validate_only: bool,
) -> Vec<Result<TopicMeta, MetadataError>> {
    on_controller(shard, topics.len(), move |s| async move {
        s.controller()
            .create_topics(&s, topics, validate_only)
            .await
    })
    .await
}

pub async fn delete_topics(
    shard: &Rc<Shard>,
    targets: Vec<TopicRef>,
) -> Vec<Result<TopicMeta, MetadataError>> {
    on_controller(shard, targets.len(), move |s| async move {
        s.controller().delete_topics(&s, targets).await
    })
    .await
}

pub async fn create_partitions(
    shard: &Rc<Shard>,
    requests: Vec<(String, i32)>,
    validate_only: bool,
) -> Vec<Result<(), MetadataError>> {
    on_controller(shard, requests.len(), move |s| async move {
        s.controller()
            .create_partitions(&s, requests, validate_only)
            .await
    })
    .await
}

pub async fn alter_topic_configs(
    shard: &Rc<Shard>,
    requests: Vec<(String, Vec<AlterOp>)>,
    validate_only: bool,
) -> Vec<Result<(), MetadataError>> {
    on_controller(shard, requests.len(), move |s| async move {
        s.controller()
            .alter_topic_configs(&s, requests, validate_only)
            .await
    })
    .await
}

pub async fn replace_topic_configs(
    shard: &Rc<Shard>,
    requests: Vec<(String, Vec<(String, String)>)>,
    validate_only: bool,
) -> Vec<Result<(), MetadataError>> {
    on_controller(shard, requests.len(), move |s| async move {
        s.controller()
            .replace_topic_configs(&s, requests, validate_only)
            .await
    })
    .await
}

/// Creates `__consumer_offsets` (compacted, `offsets.topic.num.partitions` partitions) if it
/// does not exist yet, and returns it. For the group coordinator.
pub async fn ensure_offsets_topic(shard: &Rc<Shard>) -> Result<TopicMeta, MetadataError> {
    if let Some(topic) = shard.metadata().topic(OFFSETS_TOPIC) {
        return Ok(topic.clone());
    }
    let topic = NewTopic {
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
    };
    match create_topics(shard, vec![topic], false).await.pop() {
        Some(Ok(meta)) => Ok(meta),
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
