//! DescribeConfigs for topics (effective values with their source) and for this broker
//! (its static configuration, read-only).

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{ApiKey, DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::ResponseError;

use super::{str_bytes, HandlerResult, RequestContext};
use crate::config::BrokerConfig;
use crate::metadata::topic_config::{ConfigSource, EffectiveConfig, TOPIC_CONFIGS};

/// Kafka's ConfigResource.Type codes.
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

/// DescribeConfigs v3 `config_type` codes used by broker settings.
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: DescribeConfigsRequest = ctx.decode_any(ApiKey::DescribeConfigs, &mut body)?;
    let config = &ctx.shard.config;
    let image = ctx.shard.metadata();
    let version = ctx.api_version;
    let mut response = DescribeConfigsResponse::default();
    // A resource named twice is described once, where first named: its configs are the
    // broker's state, which one request may not list thousands of times.
    let resources = super::first_mentions(request.resources, |r| {
        (r.resource_type, r.resource_name.clone())
    });
    response.results = resources
        .into_iter()
        .map(|resource| {
            let mut result = DescribeConfigsResult::default();
            result.resource_type = resource.resource_type;
            result.resource_name = resource.resource_name.clone();
            // Kafka: no keys (null or empty) means every config.
            let wanted = |name: &str| {
                resource.configuration_keys.as_ref().is_none_or(|keys| keys.is_empty() || keys.iter().any(|k| k.as_str() == name))
            };
            match resource.resource_type {
                RESOURCE_TOPIC => match image.topic(resource.resource_name.as_str()) {
                    Some(topic) => {
                        let effective = EffectiveConfig { overrides: &topic.overrides, defaults: &config.topic_defaults };
                        result.configs = TOPIC_CONFIGS
                            .iter()
                            .filter(|def| wanted(def.name))
                            .filter_map(|def| {
                                let (value, source) = effective.get(def.name)?;
                                let mut c = entry(def.name, value, source, def.kind.describe_type(), false, version);
                                if request.include_synonyms {
                                    c.synonyms = topic_synonyms(def.name, def.broker_name, &effective);
                                }
                                Some(c)
                            })
                            .collect();
                    }
                    None => {
                        result.error_code = ResponseError::UnknownTopicOrPartition.code();
                        result.error_message = Some(str_bytes(crate::limits::error_message(format!("Topic {} does not exist", resource.resource_name.as_str()))));
                    }
                },
                RESOURCE_BROKER => {
                    let name = resource.resource_name.as_str();
                    if !name.is_empty() && name != config.node_id.to_string() {
                        result.error_code = ResponseError::InvalidRequest.code();
                        result.error_message =
                            Some(str_bytes(crate::limits::error_message(format!("Unexpected broker id, expected {} or empty string, but received {name}", config.node_id))));
                    } else {
                        result.configs =
                            broker_settings(config).into_iter().filter(|(n, ..)| wanted(n)).map(|(n, v, s, t)| entry(n, &v, s, t, true, version)).collect();
                    }
                }
                other => {
                    result.error_code = ResponseError::InvalidRequest.code();
                    result.error_message = Some(str_bytes(format!("Unsupported resource type {other}")));
                }
            }
            result
        })
        .collect();
    ctx.respond_any(ApiKey::DescribeConfigs, &response)
}

fn entry(
    name: &str,
    value: &str,
    source: ConfigSource,
    config_type: i8,
    read_only: bool,
    version: i16,
) -> DescribeConfigsResourceResult {
    let mut c = DescribeConfigsResourceResult::default();
    c.name = str_bytes(name);
    c.value = Some(str_bytes(value));
    c.read_only = read_only;
    c.config_source = source as i8;
    if version >= 3 {
        c.config_type = config_type;
    }
    c
}

fn synonym(name: &str, value: &str, source: ConfigSource) -> DescribeConfigsSynonym {
    let mut s = DescribeConfigsSynonym::default();
    s.name = str_bytes(name);
    s.value = Some(str_bytes(value));
    s.source = source as i8;
    s
}

/// The values a topic config could take, most specific first, as Kafka lists synonyms.
fn topic_synonyms(
    name: &str,
    broker_name: &str,
    effective: &EffectiveConfig,
) -> Vec<DescribeConfigsSynonym> {
    let mut synonyms = Vec::new();
    if let Some(value) = effective.overrides.get(name) {
        synonyms.push(synonym(name, value, ConfigSource::DynamicTopic));
    }
    if let Some((value, source)) = effective.defaults.get(name) {
        synonyms.push(synonym(broker_name, value, source));
    }
    synonyms
}

/// This broker's settings as DescribeConfigs reports them: (name, value, source, type).
fn broker_settings(config: &BrokerConfig) -> Vec<(&'static str, String, ConfigSource, i8)> {
    let s = ConfigSource::StaticBroker;
    let mut settings = vec![
        ("node.id", config.node_id.to_string(), s, TYPE_INT),
        ("broker.id", config.node_id.to_string(), s, TYPE_INT),
        (
            "listeners",
            format!("PLAINTEXT://{}", config.listen),
            s,
            TYPE_STRING,
        ),
        (
            "advertised.listeners",
            format!(
                "PLAINTEXT://{}:{}",
                config.advertised_host, config.advertised_port
            ),
            s,
            TYPE_STRING,
        ),
        (
            "log.dirs",
            config.data_dir.display().to_string(),
            s,
            TYPE_STRING,
        ),
        (
            "num.partitions",
            config.num_partitions.to_string(),
            s,
            TYPE_INT,
        ),
        (
            "auto.create.topics.enable",
            config.auto_create_topics.to_string(),
            s,
            TYPE_BOOLEAN,
        ),
        (
            "default.replication.factor",
            "1".to_string(),
            ConfigSource::Default,
            TYPE_INT,
        ),
        (
            "offsets.topic.num.partitions",
            config.offsets_topic_num_partitions.to_string(),
            s,
            TYPE_INT,
        ),
        (
            "socket.request.max.bytes",
            config.max_request_bytes.to_string(),
            s,
            TYPE_INT,
        ),
        (
            "produce.inflight.max.bytes",
            config.produce_inflight_bytes_per_shard.to_string(),
            s,
            TYPE_LONG,
        ),
        (
            "log.cache.bytes",
            config.log_cache_bytes_per_shard.to_string(),
            s,
            TYPE_LONG,
        ),
        ("shards", config.shards.to_string(), s, TYPE_INT),
    ];
    for def in TOPIC_CONFIGS {
        if let Some((value, source)) = config.topic_defaults.get(def.name) {
            if !settings.iter().any(|(n, ..)| *n == def.broker_name) {
                settings.push((
                    def.broker_name,
                    value.to_string(),
                    source,
                    def.kind.describe_type(),
                ));
            }
        }
    }
    settings
}
