//! IncrementalAlterConfigs for topic configs (SET, DELETE, APPEND, SUBTRACT), through the
//! metadata controller. Broker settings are static (the configuration file) and refused.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    ApiKey, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};

use super::describe_configs::{RESOURCE_BROKER, RESOURCE_TOPIC};
use super::{str_bytes, HandlerResult, RequestContext};
use crate::errors::metadata_error;
use crate::metadata::controller::{self, AlterOp, MetadataError};

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: IncrementalAlterConfigsRequest =
        ctx.decode(ApiKey::IncrementalAlterConfigs, &mut body)?;
    let mut outcomes: Vec<Option<Result<(), MetadataError>>> = Vec::new();
    let mut work: Vec<(String, Vec<AlterOp>)> = Vec::new();
    let named = super::mentions(
        request
            .resources
            .iter()
            .map(|r| (r.resource_type, r.resource_name.as_str())),
    );
    for resource in &request.resources {
        let duplicate = named[&(resource.resource_type, resource.resource_name.as_str())] > 1;
        let outcome = if duplicate {
            Err(MetadataError::InvalidRequest(format!(
                "Duplicate resource {}",
                resource.resource_name.as_str()
            )))
        } else {
            match resource.resource_type {
                RESOURCE_TOPIC => operations(resource)
                    .map(|ops| work.push((resource.resource_name.to_string(), ops))),
                RESOURCE_BROKER => Err(MetadataError::InvalidRequest(
                    "broker settings are static: set them in the configuration file and restart"
                        .into(),
                )),
                other => Err(MetadataError::InvalidRequest(format!(
                    "Unsupported resource type {other}"
                ))),
            }
        };
        outcomes.push(match outcome {
            Ok(()) => None,
            Err(e) => Some(Err(e)),
        });
    }
    let mut results = controller::alter_topic_configs(&ctx.shard, work, request.validate_only)
        .await
        .into_iter();
    for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
        *outcome = results.next();
    }

    let mut response = IncrementalAlterConfigsResponse::default();
    response.responses = request
        .resources
        .into_iter()
        .zip(outcomes)
        .map(|(resource, outcome)| {
            let mut r = AlterConfigsResourceResponse::default();
            r.resource_type = resource.resource_type;
            r.resource_name = resource.resource_name;
            if let Err(e) = outcome.unwrap_or(Err(MetadataError::Unavailable)) {
                r.error_code = metadata_error(&e).code();
                r.error_message = Some(str_bytes(e.to_string()));
            }
            r
        })
        .collect();
    ctx.respond(ApiKey::IncrementalAlterConfigs, &response)
}

fn operations(
    resource: &kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource,
) -> Result<Vec<AlterOp>, MetadataError> {
    resource
        .configs
        .iter()
        .map(|c| {
            let name = c.name.to_string();
            let value = || {
                c.value
                    .as_ref()
                    .map(|v| v.to_string())
                    .ok_or_else(|| MetadataError::InvalidRequest(format!("Null value for {name}")))
            };
            match c.config_operation {
                0 => Ok(AlterOp::Set(name.clone(), value()?)),
                1 => Ok(AlterOp::Delete(name)),
                2 => Ok(AlterOp::Append(name.clone(), value()?)),
                3 => Ok(AlterOp::Subtract(name.clone(), value()?)),
                op => Err(MetadataError::InvalidRequest(format!(
                    "Unknown config operation {op}"
                ))),
            }
        })
        .collect()
}
