//! CreatePartitions: grow topics' partition counts, through the metadata controller.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{ApiKey, CreatePartitionsRequest, CreatePartitionsResponse};

use super::errors::metadata_error;
use super::{str_bytes, HandlerResult, RequestContext};
use crate::metadata::controller::{self, MetadataError};

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: CreatePartitionsRequest = ctx.decode(ApiKey::CreatePartitions, &mut body)?;
    let node_id = ctx.shard.config.node_id;
    let mut outcomes: Vec<Option<Result<(), MetadataError>>> = Vec::new();
    let mut work: Vec<(String, i32)> = Vec::new();
    let named = super::mentions(request.topics.iter().map(|t| t.name.0.as_str()));
    for t in &request.topics {
        let name = t.name.0.to_string();
        let duplicate = named[t.name.0.as_str()] > 1;
        let bad_assignment = t.assignments.as_ref().is_some_and(|a| {
            a.iter()
                .any(|p| p.broker_ids.len() != 1 || p.broker_ids[0].0 != node_id)
        });
        if duplicate {
            outcomes.push(Some(Err(MetadataError::InvalidRequest(format!(
                "Duplicate topic in request: {name}"
            )))));
        } else if bad_assignment {
            outcomes.push(Some(Err(MetadataError::InvalidReplicaAssignment(format!(
                "New partitions must be assigned to broker {node_id} only"
            )))));
        } else {
            work.push((name, t.count));
            outcomes.push(None);
        }
    }
    let mut results = controller::create_partitions(&ctx.shard, work, request.validate_only)
        .await
        .into_iter();
    for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
        *outcome = results.next();
    }

    let mut response = CreatePartitionsResponse::default();
    response.results = request
        .topics
        .into_iter()
        .zip(outcomes)
        .map(|(t, outcome)| {
            let mut r = CreatePartitionsTopicResult::default();
            r.name = t.name;
            if let Err(e) = outcome.unwrap_or(Err(MetadataError::Unavailable)) {
                r.error_code = metadata_error(&e).code();
                r.error_message = Some(str_bytes(e.to_string()));
            }
            r
        })
        .collect();
    ctx.respond(ApiKey::CreatePartitions, &response)
}
