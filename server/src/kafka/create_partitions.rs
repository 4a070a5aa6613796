//! CreatePartitions: grow topics' partition counts, through the cluster's active
//! controller (which places new partitions, or checks the assignments given).

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{ApiKey, CreatePartitionsRequest, CreatePartitionsResponse};

use super::{str_bytes, HandlerResult, RequestContext};
use crate::controller::requests::PartitionsIncrease;
use crate::errors::metadata_error;
use crate::metadata::controller::{self, MetadataError};
use crate::metadata::NodeId;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: CreatePartitionsRequest = ctx.decode(ApiKey::CreatePartitions, &mut body)?;
    let mut outcomes: Vec<Option<Result<(), MetadataError>>> = Vec::new();
    let mut work: Vec<PartitionsIncrease> = Vec::new();
    let named = super::mentions(request.topics.iter().map(|t| t.name.0.as_str()));
    for t in &request.topics {
        let name = t.name.0.to_string();
        if named[t.name.0.as_str()] > 1 {
            outcomes.push(Some(Err(MetadataError::InvalidRequest(format!(
                "Duplicate topic in request: {name}"
            )))));
            continue;
        }
        work.push(PartitionsIncrease {
            topic: name,
            total: t.count,
            assignments: t
                .assignments
                .iter()
                .flatten()
                .map(|a| a.broker_ids.iter().map(|b| NodeId(b.0)).collect())
                .collect(),
        });
        outcomes.push(None);
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
