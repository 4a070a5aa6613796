//! CreateTopics, through the metadata controller. A single node can only hold one replica,
//! so replication factors other than 1 (or -1, "the default") are refused.

use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{ApiKey, CreateTopicsRequest, CreateTopicsResponse};

use super::errors::metadata_error;
use super::{str_bytes, HandlerResult, RequestContext};
use crate::metadata::controller::{self, MetadataError, NewTopic};
use crate::metadata::topic_config::{EffectiveConfig, TOPIC_CONFIGS};
use crate::metadata::TopicMeta;
use crate::shard::Shard;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: CreateTopicsRequest = ctx.decode_any(ApiKey::CreateTopics, &mut body)?;
    let node_id = ctx.shard.config.node_id;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for t in &request.topics {
        *seen.entry(t.name.0.to_string()).or_default() += 1;
    }

    // Each topic either goes to the controller or is refused here.
    let mut outcomes: Vec<Option<Result<TopicMeta, MetadataError>>> =
        Vec::with_capacity(request.topics.len());
    let mut to_create: Vec<NewTopic> = Vec::new();
    for t in &request.topics {
        let name = t.name.0.to_string();
        let checked = if seen.get(&name).copied().unwrap_or(0) > 1 {
            Err(MetadataError::InvalidRequest(format!(
                "Create topics request from client contains a duplicate topic {name}"
            )))
        } else {
            partition_count(
                &ctx.shard,
                t.num_partitions,
                t.replication_factor,
                &t.assignments,
                node_id,
            )
        };
        match checked {
            Ok(partitions) => {
                let configs = t
                    .configs
                    .iter()
                    .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
                    .collect();
                to_create.push(NewTopic {
                    name,
                    partitions,
                    configs,
                    internal: false,
                });
                outcomes.push(None);
            }
            Err(e) => outcomes.push(Some(Err(e))),
        }
    }
    let mut created = controller::create_topics(&ctx.shard, to_create, request.validate_only)
        .await
        .into_iter();
    for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
        *outcome = created.next();
    }

    let version = ctx.api_version;
    let mut response = CreateTopicsResponse::default();
    response.topics = request
        .topics
        .into_iter()
        .zip(outcomes)
        .map(|(t, outcome)| {
            let mut r = CreatableTopicResult::default();
            r.name = t.name;
            match outcome.unwrap_or(Err(MetadataError::Unavailable)) {
                Ok(meta) => {
                    r.error_message = None;
                    if version >= 7 {
                        r.topic_id = meta.id.0;
                    }
                    if version >= 5 {
                        r.num_partitions = meta.partition_count;
                        r.replication_factor = 1;
                        r.configs = Some(describe_configs(&ctx.shard, &meta));
                    }
                }
                Err(e) => {
                    r.error_code = metadata_error(&e).code();
                    r.error_message = Some(str_bytes(e.to_string()));
                    if version >= 5 {
                        r.configs = None;
                    }
                }
            }
            r
        })
        .collect();
    ctx.respond_any(ApiKey::CreateTopics, &response)
}

/// The partition count a CreateTopics entry asks for, checking its replication settings.
fn partition_count(
    shard: &Shard,
    num_partitions: i32,
    replication_factor: i16,
    assignments: &[kafka_protocol::messages::create_topics_request::CreatableReplicaAssignment],
    node_id: i32,
) -> Result<i32, MetadataError> {
    if assignments.is_empty() {
        if !(replication_factor == -1 || replication_factor == 1) {
            return Err(MetadataError::InvalidReplicationFactor(format!(
                "Unable to replicate the partition {replication_factor} time(s): The target replication factor of {replication_factor} cannot be reached because only 1 broker(s) are registered."
            )));
        }
        return Ok(if num_partitions == -1 {
            shard.config.num_partitions
        } else {
            num_partitions
        });
    }
    if num_partitions != -1 || replication_factor != -1 {
        return Err(MetadataError::InvalidRequest(
            "Both numPartitions or replicationFactor and replicasAssignments were set. Both cannot be used at the same time.".into(),
        ));
    }
    let mut indexes: Vec<i32> = assignments.iter().map(|a| a.partition_index).collect();
    indexes.sort_unstable();
    if indexes.iter().enumerate().any(|(i, &p)| p != i as i32) {
        return Err(MetadataError::InvalidReplicaAssignment(
            "Partitions should be a consecutive 0-based integer sequence".into(),
        ));
    }
    for a in assignments {
        if a.broker_ids.len() != 1 || a.broker_ids[0].0 != node_id {
            return Err(MetadataError::InvalidReplicaAssignment(format!(
                "Partition {} must be assigned to broker {node_id} only",
                a.partition_index
            )));
        }
    }
    Ok(assignments.len() as i32)
}

fn describe_configs(shard: &Shard, topic: &TopicMeta) -> Vec<CreatableTopicConfigs> {
    let effective = EffectiveConfig {
        overrides: &topic.overrides,
        defaults: &shard.config.topic_defaults,
    };
    TOPIC_CONFIGS
        .iter()
        .filter_map(|def| {
            let (value, source) = effective.get(def.name)?;
            let mut c = CreatableTopicConfigs::default();
            c.name = str_bytes(def.name);
            c.value = Some(str_bytes(value));
            c.config_source = source as i8;
            Some(c)
        })
        .collect()
}
