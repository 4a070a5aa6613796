//! CreateTopics, through the cluster's active controller, which places the partitions on
//! the registered brokers and checks replication factors and manual assignments.

use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{ApiKey, CreateTopicsRequest, CreateTopicsResponse};

use super::{str_bytes, HandlerResult, RequestContext};
use crate::controller::requests::{CreateTopic, CreatedTopic, PartitionAssignment};
use crate::errors::metadata_error;
use crate::metadata::controller::{self, MetadataError, NewTopic};
use crate::metadata::topic_config::{EffectiveConfig, TOPIC_CONFIGS};
use crate::metadata::{NodeId, TopicMeta};
use crate::node::Shard;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: CreateTopicsRequest = ctx.decode_any(ApiKey::CreateTopics, &mut body)?;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for t in &request.topics {
        *seen.entry(t.name.0.to_string()).or_default() += 1;
    }

    // Each topic either goes to the controller or is refused here.
    let mut outcomes: Vec<Option<Result<CreatedTopic, MetadataError>>> =
        Vec::with_capacity(request.topics.len());
    let mut to_create: Vec<CreateTopic> = Vec::new();
    for t in &request.topics {
        let name = t.name.0.to_string();
        if seen.get(&name).copied().unwrap_or(0) > 1 {
            outcomes.push(Some(Err(MetadataError::InvalidRequest(format!(
                "Create topics request from client contains a duplicate topic {name}"
            )))));
            continue;
        }
        let configs = t
            .configs
            .iter()
            .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
            .collect();
        to_create.push(CreateTopic {
            topic: NewTopic {
                name,
                partitions: t.num_partitions,
                configs,
                internal: false,
            },
            replication_factor: t.replication_factor,
            assignments: t
                .assignments
                .iter()
                .map(|a| PartitionAssignment {
                    partition: a.partition_index,
                    replicas: a.broker_ids.iter().map(|b| NodeId(b.0)).collect(),
                })
                .collect(),
        });
        outcomes.push(None);
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
                Ok(created) => {
                    let meta = &created.topic;
                    r.error_message = None;
                    if version >= 7 {
                        r.topic_id = meta.id.0;
                    }
                    if version >= 5 {
                        r.num_partitions = meta.partition_count;
                        r.replication_factor = created.replication_factor;
                        r.configs = Some(describe_configs(&ctx.shard, meta));
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
