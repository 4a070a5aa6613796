//! AlterConfigs, the non-incremental API (librdkafka's `AlterConfigs`, older tools): a
//! topic's dynamic configs become exactly the ones given, and every config not named
//! reverts to its default, as in Kafka. Broker settings are static (the configuration
//! file) and refused. The checks before the controller are Kafka's broker-side ones
//! (`ConfigAdminManager.preprocess`).

use std::collections::HashSet;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::alter_configs_request::AlterConfigsResource;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse, ApiKey};

use super::describe_configs::{RESOURCE_BROKER, RESOURCE_TOPIC};
use super::{str_bytes, HandlerResult, RequestContext};
use crate::errors::metadata_error;
use crate::metadata::controller::{self, MetadataError};

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: AlterConfigsRequest = ctx.decode(ApiKey::AlterConfigs, &mut body)?;
    let node_id = ctx.shard.config.node_id;
    let mut outcomes: Vec<Option<Result<(), MetadataError>>> = Vec::new();
    let mut work: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let named = super::mentions(
        request
            .resources
            .iter()
            .map(|r| (r.resource_type, r.resource_name.as_str())),
    );
    for resource in &request.resources {
        let appearances = named[&(resource.resource_type, resource.resource_name.as_str())];
        let checked = if appearances > 1 {
            Err(MetadataError::InvalidRequest(
                "Each resource must appear at most once.".into(),
            ))
        } else {
            check(resource, node_id)
        };
        match checked {
            Ok(Some(configs)) => {
                work.push((resource.resource_name.to_string(), configs));
                outcomes.push(None);
            }
            Ok(None) => outcomes.push(Some(Ok(()))),
            Err(e) => outcomes.push(Some(Err(e))),
        }
    }
    let mut results = controller::replace_topic_configs(&ctx.shard, work, request.validate_only)
        .await
        .into_iter();
    for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
        *outcome = results.next();
    }

    let mut response = AlterConfigsResponse::default();
    response.responses = request
        .resources
        .into_iter()
        .zip(outcomes)
        .map(|(resource, outcome)| {
            let mut r = AlterConfigsResourceResponse::default();
            r.resource_type = resource.resource_type;
            r.resource_name = resource.resource_name;
            match outcome.unwrap_or(Err(MetadataError::Unavailable)) {
                Ok(()) => r.error_message = None,
                Err(e) => {
                    ctx.note_error();
                    r.error_code = metadata_error(&e).code();
                    r.error_message = Some(str_bytes(e.to_string()));
                }
            }
            r
        })
        .collect();
    ctx.respond(ApiKey::AlterConfigs, &response)
}

/// A resource's configs for the controller (a topic), `Ok(None)` when there is nothing to
/// do (a broker with no dynamic configs given, which it has none of), or its refusal.
fn check(
    resource: &AlterConfigsResource,
    node_id: i32,
) -> Result<Option<Vec<(String, String)>>, MetadataError> {
    let mut names = HashSet::new();
    if !resource
        .configs
        .iter()
        .all(|c| names.insert(c.name.as_str()))
    {
        return Err(MetadataError::InvalidRequest(
            "Error due to duplicate config keys".into(),
        ));
    }
    let nulls: Vec<&str> = resource
        .configs
        .iter()
        .filter(|c| c.value.is_none())
        .map(|c| c.name.as_str())
        .collect();
    if !nulls.is_empty() {
        return Err(MetadataError::InvalidRequest(format!(
            "Null value not supported for : {}",
            nulls.join(", ")
        )));
    }
    match resource.resource_type {
        RESOURCE_TOPIC => Ok(Some(
            resource
                .configs
                .iter()
                .map(|c| {
                    let value = c.value.as_deref().unwrap_or_default();
                    (c.name.to_string(), value.to_string())
                })
                .collect(),
        )),
        RESOURCE_BROKER => {
            let name = resource.resource_name.as_str();
            if !name.is_empty() && name != node_id.to_string() {
                return Err(MetadataError::InvalidRequest(format!(
                    "Unexpected broker id, expected {node_id}, but received {name}"
                )));
            }
            if resource.configs.is_empty() {
                return Ok(None);
            }
            // Kafka refuses read-only broker configs the same way; here all are.
            let names: Vec<&str> = resource.configs.iter().map(|c| c.name.as_str()).collect();
            Err(MetadataError::InvalidRequest(format!(
                "Cannot update these configs dynamically: {}. Broker settings are static: set them in the configuration file and restart",
                names.join(", ")
            )))
        }
        other => Err(MetadataError::InvalidRequest(format!(
            "Unknown resource type {other}"
        ))),
    }
}
