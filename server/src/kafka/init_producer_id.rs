//! InitProducerId (KIP-98): a producer id and epoch for an idempotent producer.
//!
//! Without a transactional id every call gets a fresh producer id with epoch 0, taken from
//! the shard's block of ids (see `metadata::producer_ids`). From v3 (KIP-360) a producer
//! may name the id and epoch it has, to recover from a sequence error without losing its
//! id: the epoch is bumped, or a fresh id is given when the epoch is exhausted. A
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
/// Kafka's `ProducerIdAndEpoch.isEpochExhausted`: an epoch this high is not bumped further
/// (`i16::MAX` is reserved so a bump can always fence the previous epoch).
const LAST_BUMPABLE_EPOCH: i16 = i16::MAX - 2;

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
    let given_id = request.producer_id.0;
    let given_epoch = request.producer_epoch;
    match request.transactional_id.as_ref().map(|t| t.0.as_str()) {
        Some("") => {
            // Kafka's TransactionCoordinator: an empty transactional id is a bad request.
            response.error_code = ResponseError::InvalidRequest.code();
        }
        Some(id) => {
            tracing::debug!(transactional_id = id, "refusing a transactional producer");
            response.error_code = TRANSACTIONS_UNSUPPORTED.code();
        }
        None if (given_id == NO_PRODUCER_ID) != (given_epoch == NO_PRODUCER_EPOCH)
            || given_id < NO_PRODUCER_ID
            || given_epoch < NO_PRODUCER_EPOCH =>
        {
            response.error_code = ResponseError::InvalidRequest.code();
        }
        None if given_id >= 0 && given_epoch < LAST_BUMPABLE_EPOCH => {
            // KIP-360: bump the epoch; the partitions then expect sequence 0 of the new
            // epoch and refuse the old one with INVALID_PRODUCER_EPOCH.
            response.producer_id = ProducerId(given_id);
            response.producer_epoch = given_epoch + 1;
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
