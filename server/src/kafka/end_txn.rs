//! EndTxn (KIP-98): commit or abort the producer's transaction. Answered once
//! PrepareCommit or PrepareAbort is in the transaction log; the coordinator then writes
//! the markers to every partition of the transaction and logs the completion. Until it
//! has, the producer's next transactional request gets CONCURRENT_TRANSACTIONS (retried).

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, EndTxnRequest, EndTxnResponse, ProducerId};
use kafka_protocol::ResponseError;

use super::{HandlerResult, RequestContext};
use crate::reply;
use crate::txn::driver::{with_txn, TxnCall, TxnReply};
use crate::txn::{EndTxnRequest as TxnEnd, Reply};

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: EndTxnRequest = ctx.decode(ApiKey::EndTxn, &mut body)?;
    let id = request.transactional_id.0.to_string();
    let req = TxnEnd {
        transactional_id: id.clone(),
        producer_id: request.producer_id.0,
        producer_epoch: request.producer_epoch,
        committed: request.committed,
        version: ctx.api_version,
    };
    let answer = with_txn(&ctx.shard, &id, TxnCall::EndTxn(req))
        .await
        .map(|r| reply!(r, TxnReply::Coordinator));
    let error = match answer {
        Ok(Some(Reply::EndTxn(_, error))) => error,
        Ok(_) => Some(ResponseError::CoordinatorNotAvailable),
        Err(e) => Some(e),
    };
    let mut response = EndTxnResponse::default();
    response.error_code = error.map_or(0, |e| e.code());
    // v5 (KIP-890 part 2) would return the new producer id and epoch; not served.
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    if error.is_some() {
        ctx.note_error();
    }
    ctx.respond(ApiKey::EndTxn, &response)
}
