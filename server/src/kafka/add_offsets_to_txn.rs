//! AddOffsetsToTxn (KIP-98): the group's `__consumer_offsets` partition joins the
//! producer's transaction, so the offsets it then commits with TxnOffsetCommit are
//! committed or aborted with the transaction.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, ApiKey};
use kafka_protocol::ResponseError;

use super::{HandlerResult, RequestContext};
use crate::reply;
use crate::txn::driver::{with_txn, TxnCall, TxnReply};
use crate::txn::{AddOffsetsRequest, Reply};

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: AddOffsetsToTxnRequest = ctx.decode(ApiKey::AddOffsetsToTxn, &mut body)?;
    let id = request.transactional_id.0.to_string();
    let group_id = request.group_id.0.to_string();
    // The offsets topic must exist for its partition to take a marker.
    let error = match crate::group::driver::placement(&ctx.shard, &group_id).await {
        Err(e) => Some(e),
        Ok(_) => {
            let req = AddOffsetsRequest {
                transactional_id: id.clone(),
                producer_id: request.producer_id.0,
                producer_epoch: request.producer_epoch,
                group_id,
                version: ctx.api_version,
            };
            let answer = with_txn(&ctx.shard, &id, TxnCall::AddOffsets(req))
                .await
                .map(|r| reply!(r, TxnReply::Coordinator));
            match answer {
                Ok(Some(Reply::AddOffsets(_, error))) => error,
                Ok(_) => Some(ResponseError::CoordinatorNotAvailable),
                Err(e) => Some(e),
            }
        }
    };
    let mut response = AddOffsetsToTxnResponse::default();
    response.error_code = error.map_or(0, |e| e.code());
    if error.is_some() {
        ctx.note_error();
    }
    ctx.respond(ApiKey::AddOffsetsToTxn, &response)
}
