//! ListTransactions (KIP-664, what `kafka-transactions list` uses): every transactional id
//! of every coordinator on this node, filtered by state, producer id and (v1, KIP-994)
//! how long the transaction has been open. v2's id pattern (KIP-1152) is not served.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{
    ApiKey, ListTransactionsRequest, ListTransactionsResponse, ProducerId, TransactionalId,
};

use super::{str_bytes, HandlerResult, RequestContext};
use crate::shard::now_ms;
use crate::txn::driver::list_everywhere;
use crate::txn::ListTransactionsFilter;

/// Filters one request may carry.
const MAX_FILTERS: usize = 10_000;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: ListTransactionsRequest = ctx.decode(ApiKey::ListTransactions, &mut body)?;
    let filter = ListTransactionsFilter {
        states: request
            .state_filters
            .iter()
            .take(MAX_FILTERS)
            .map(|s| s.to_string())
            .collect(),
        producer_ids: request
            .producer_id_filters
            .iter()
            .take(MAX_FILTERS)
            .map(|p| p.0)
            .collect(),
        duration_ms: if ctx.api_version >= 1 {
            request.duration_filter
        } else {
            -1
        },
    };
    let now = now_ms();
    let mut response = ListTransactionsResponse::default();
    match list_everywhere(&ctx.shard, now, filter).await {
        Ok(results) => {
            let mut unknown = Vec::new();
            for r in results {
                if let Some(e) = r.error {
                    response.error_code = e.code();
                }
                for s in r.unknown_state_filters {
                    if !unknown.contains(&s) {
                        unknown.push(s);
                    }
                }
                for t in r.transactions {
                    let mut s = TransactionState::default();
                    s.transactional_id = TransactionalId(str_bytes(t.transactional_id));
                    s.producer_id = ProducerId(t.producer_id);
                    s.transaction_state = str_bytes(t.state);
                    response.transaction_states.push(s);
                }
            }
            response.unknown_state_filters = unknown.into_iter().map(str_bytes).collect();
            // Without a filter every coordinator reports the unknown names itself; with
            // several coordinators the list holds each once.
        }
        Err(e) => response.error_code = e.code(),
    }
    if response.error_code != 0 {
        ctx.note_error();
    }
    ctx.respond(ApiKey::ListTransactions, &response)
}
