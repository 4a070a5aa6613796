//! FindCoordinator: a group's coordinator is the broker leading its `__consumer_offsets`
//! partition (on that broker, the shard owning the partition, which any shard reaches over
//! the mesh).
//! v4+ batches keys (KIP-699). Transactional ids have no coordinator: transactions are not
//! supported, and the lookup fails at once with an error clients treat as fatal.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{ApiKey, BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::ResponseError;

use super::init_producer_id::{TRANSACTIONS_UNSUPPORTED, TRANSACTIONS_UNSUPPORTED_MESSAGE};
use super::{broker_endpoint, str_bytes, HandlerResult, RequestContext};
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
        let found = match request.key_type {
            KEY_TYPE_GROUP => match placement(&ctx.shard, &key).await {
                Ok(p) => p
                    .leader
                    .and_then(|l| Some((l, broker_endpoint(&ctx.shard.metadata(), l)?)))
                    .ok_or(ResponseError::CoordinatorNotAvailable),
                Err(e) => Err(e),
            },
            // librdkafka and the Java producer retry COORDINATOR_NOT_AVAILABLE until their
            // timeout; TRANSACTIONAL_ID_AUTHORIZATION_FAILED stops them at once.
            KEY_TYPE_TRANSACTION => Err(TRANSACTIONS_UNSUPPORTED),
            _ => Err(ResponseError::InvalidRequest),
        };
        answers.push((key, found));
    }
    let mut response = FindCoordinatorResponse::default();
    if ctx.api_version >= 4 {
        response.coordinators = answers
            .into_iter()
            .map(|(key, found)| {
                let mut c = Coordinator::default();
                c.key = str_bytes(key);
                match found {
                    Ok((node, (host, port))) => {
                        c.node_id = BrokerId(node.0);
                        c.host = str_bytes(host);
                        c.port = i32::from(port);
                    }
                    Err(e) => {
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
        let found = answers
            .pop()
            .map_or(Err(ResponseError::InvalidRequest), |(_, f)| f);
        match found {
            Ok((node, (host, port))) => {
                response.node_id = BrokerId(node.0);
                response.host = str_bytes(host);
                response.port = i32::from(port);
            }
            Err(e) => {
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
    if error == TRANSACTIONS_UNSUPPORTED {
        TRANSACTIONS_UNSUPPORTED_MESSAGE.to_string()
    } else {
        error.to_string()
    }
}
