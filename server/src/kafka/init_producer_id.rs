//! InitProducerId (KIP-98): a producer id and epoch for an idempotent producer.
//!
//! Without a transactional id every call gets a fresh producer id with epoch 0, taken from
//! the shard's block of ids (see `metadata::producer_ids`), whatever id and epoch the
//! request names (from v3, KIP-360): Kafka's coordinator does the same, so one client can
//! never bump, and so fence, another's producer id. An idempotent producer that needs a new
//! epoch bumps it itself and starts again at sequence 0, which the partitions accept. A
//! transactional id is refused: transactions are not supported.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use super::errors::metadata_error;
use super::{HandlerResult, RequestContext};
use crate::metadata::producer_ids::next_producer_id;

/// Kafka's `RecordBatch.NO_PRODUCER_ID` / `NO_PRODUCER_EPOCH`.
const NO_PRODUCER_ID: i64 = -1;
const NO_PRODUCER_EPOCH: i16 = -1;

/// The error a transactional producer gets: the one code librdkafka and the Java client
/// treat as fatal at once (rather than retrying the coordinator lookup until a timeout).
pub const TRANSACTIONS_UNSUPPORTED: ResponseError =
    ResponseError::TransactionalIdAuthorizationFailed;
pub const TRANSACTIONS_UNSUPPORTED_MESSAGE: &str =
    "this broker does not support transactions; unset transactional.id (idempotent producers are supported)";

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: InitProducerIdRequest = ctx.decode(ApiKey::InitProducerId, &mut body)?;
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(NO_PRODUCER_ID);
    response.producer_epoch = NO_PRODUCER_EPOCH;
    match request.transactional_id.as_ref().map(|t| t.0.as_str()) {
        Some("") => {
            // Kafka's TransactionCoordinator: an empty transactional id is a bad request.
            response.error_code = ResponseError::InvalidRequest.code();
        }
        Some(id) => {
            tracing::debug!(transactional_id = id, "refusing a transactional producer");
            response.error_code = TRANSACTIONS_UNSUPPORTED.code();
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
    ctx.respond(ApiKey::InitProducerId, &response)
}
