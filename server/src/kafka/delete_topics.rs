//! DeleteTopics, by name (v1–v5) or by name or id (v6), through the metadata controller.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{ApiKey, DeleteTopicsRequest, DeleteTopicsResponse};

use super::{str_bytes, topic_name, HandlerResult, RequestContext};
use crate::errors::metadata_error;
use crate::metadata::controller::{self, TopicRef};
use crate::metadata::TopicId;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: DeleteTopicsRequest = ctx.decode_any(ApiKey::DeleteTopics, &mut body)?;
    let targets: Vec<TopicRef> = if ctx.api_version >= 6 {
        request
            .topics
            .into_iter()
            .map(|t| match t.name {
                Some(name) => TopicRef::Name(name.0.to_string()),
                None => TopicRef::Id(TopicId(t.topic_id)),
            })
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|n| TopicRef::Name(n.0.to_string()))
            .collect()
    };
    let results = controller::delete_topics(&ctx.shard, targets.clone()).await;

    let mut response = DeleteTopicsResponse::default();
    response.responses = targets
        .into_iter()
        .zip(results)
        .map(|(target, result)| {
            let mut r = DeletableTopicResult::default();
            let version = ctx.api_version;
            match &target {
                TopicRef::Name(name) => r.name = Some(topic_name(name)),
                TopicRef::Id(id) => r.topic_id = id.0,
            }
            match result {
                Ok(meta) => {
                    r.name = Some(topic_name(&meta.name));
                    if version >= 6 {
                        r.topic_id = meta.id.0;
                    }
                }
                Err(e) => {
                    r.error_code = metadata_error(&e).code();
                    if version >= 5 {
                        r.error_message = Some(str_bytes(e.to_string()));
                    }
                }
            }
            r
        })
        .collect();
    ctx.respond_any(ApiKey::DeleteTopics, &response)
}
