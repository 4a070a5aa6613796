//! FindCoordinator: every group's coordinator is this node (the group lives on the shard
//! owning its `__consumer_offsets` partition, which any shard reaches over the mesh).
//! v4+ batches keys (KIP-699). A transactional id's coordinator is this node too (on the
//! shard owning the id's `__transaction_state` partition, created on first use).

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{ApiKey, BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::ResponseError;

use super::{str_bytes, HandlerResult, RequestContext};
use crate::group::driver::placement;

/// `key_type` of a consumer group, and of a transactional id.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;
/// Keys one batched request may name.
const MAX_KEYS_PER_REQUEST: usize = 10_000;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: FindCoordinatorRequest = ctx.decode(ApiKey::FindCoordinator, &mut body)?;
    let keys: Vec<String> = if ctx.api_version >= 4 {
        request
            .coordinator_keys
            .iter()
            .take(MAX_KEYS_PER_REQUEST)
            .map(|k| k.to_string())
            .collect()
    } else {
        vec![request.key.to_string()]
    };
    let mut answers = Vec::with_capacity(keys.len());
    for key in keys {
        let error = match request.key_type {
            KEY_TYPE_GROUP => placement(&ctx.shard, &key).await.err(),
            KEY_TYPE_TRANSACTION if key.is_empty() => Some(ResponseError::InvalidRequest),
            KEY_TYPE_TRANSACTION => crate::txn::driver::placement(&ctx.shard, &key).await.err(),
            _ => Some(ResponseError::InvalidRequest),
        };
        answers.push((key, error));
    }
    let config = &ctx.shard.config;
    let mut response = FindCoordinatorResponse::default();
    if ctx.api_version >= 4 {
        response.coordinators = answers
            .into_iter()
            .map(|(key, error)| {
                let mut c = Coordinator::default();
                c.key = str_bytes(key);
                match error {
                    None => {
                        c.node_id = BrokerId(config.node_id);
                        c.host = str_bytes(config.advertised_host.clone());
                        c.port = i32::from(config.advertised_port);
                    }
                    Some(e) => {
                        c.node_id = BrokerId(-1);
                        c.port = -1;
                        c.error_code = e.code();
                        c.error_message = Some(str_bytes(message(e)));
                    }
                }
                c
            })
            .collect();
    } else {
        match answers.pop().and_then(|(_, e)| e) {
            None => {
                response.node_id = BrokerId(config.node_id);
                response.host = str_bytes(config.advertised_host.clone());
                response.port = i32::from(config.advertised_port);
            }
            Some(e) => {
                response.error_code = e.code();
                if ctx.api_version >= 1 {
                    response.error_message = Some(str_bytes(message(e)));
                }
                response.node_id = BrokerId(-1);
                response.port = -1;
            }
        }
    }
    ctx.respond(ApiKey::FindCoordinator, &response)
}

fn message(error: ResponseError) -> String {
    error.to_string()
}
