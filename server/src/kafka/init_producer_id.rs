//! InitProducerId (KIP-98): a producer id and epoch.
//!
//! Without a transactional id every call gets a fresh producer id with epoch 0, taken from
//! the shard's block of ids (see `metadata::producer_ids`), whatever id and epoch the
//! request names (from v3, KIP-360): Kafka's coordinator does the same, so one client can
//! never bump, and so fence, another's producer id. An idempotent producer that needs a new
//! epoch bumps it itself and starts again at sequence 0, which the partitions accept.
//!
//! With a transactional id the id's transaction coordinator answers (`txn::driver`): it
//! bumps the epoch (fencing older producers), aborts a transaction the previous epoch left
//! open, and checks `transaction.timeout.ms` against `transaction.max.timeout.ms`.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use super::{HandlerResult, RequestContext};
use crate::errors::metadata_error;
use crate::metadata::producer_ids::next_producer_id;
use crate::reply;
use crate::txn::driver::{with_txn, TxnCall, TxnReply};
use crate::txn::{InitProducerIdRequest as TxnInit, Reply};

/// Kafka's `RecordBatch.NO_PRODUCER_ID` / `NO_PRODUCER_EPOCH`.
const NO_PRODUCER_ID: i64 = -1;
const NO_PRODUCER_EPOCH: i16 = -1;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: InitProducerIdRequest = ctx.decode(ApiKey::InitProducerId, &mut body)?;
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(NO_PRODUCER_ID);
    response.producer_epoch = NO_PRODUCER_EPOCH;
    match request.transactional_id.as_ref().map(|t| t.0.to_string()) {
        Some(id) if id.is_empty() => {
            // Kafka's TransactionCoordinator: an empty transactional id is a bad request.
            response.error_code = ResponseError::InvalidRequest.code();
        }
        Some(id) => {
            let req = TxnInit {
                transactional_id: Some(id.clone()),
                transaction_timeout_ms: request.transaction_timeout_ms,
                producer_id: if ctx.api_version >= 3 {
                    request.producer_id.0
                } else {
                    NO_PRODUCER_ID
                },
                producer_epoch: if ctx.api_version >= 3 {
                    request.producer_epoch
                } else {
                    NO_PRODUCER_EPOCH
                },
                version: ctx.api_version,
            };
            let answer = with_txn(&ctx.shard, &id, TxnCall::InitProducerId(req))
                .await
                .map(|r| reply!(r, TxnReply::Coordinator));
            match answer {
                Ok(Some(Reply::InitProducerId(_, result))) => {
                    response.error_code = result.error.map_or(0, |e| e.code());
                    if result.error.is_none() {
                        response.producer_id = ProducerId(result.producer_id);
                        response.producer_epoch = result.producer_epoch;
                    }
                }
                Ok(_) => response.error_code = ResponseError::CoordinatorNotAvailable.code(),
                Err(e) => response.error_code = e.code(),
            }
        }
        None => match next_producer_id(&ctx.shard).await {
            Ok(id) => {
                response.producer_id = ProducerId(id);
                response.producer_epoch = 0;
            }
            Err(e) => {
                tracing::warn!("allocating a producer id failed: {e}");
                response.error_code = match metadata_error(&e) {
                    // Retriable for the client: it asks again.
                    ResponseError::RequestTimedOut => ResponseError::CoordinatorNotAvailable,
                    other => other,
                }
                .code();
            }
        },
    }
    if response.error_code != 0 {
        ctx.note_error();
    }
    ctx.respond(ApiKey::InitProducerId, &response)
}
