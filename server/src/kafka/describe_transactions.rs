//! DescribeTransactions (KIP-664, what `kafka-transactions describe` uses): the state,
//! producer, timeout, start time and partitions of each named transactional id, from its
//! coordinator.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{
    ApiKey, DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId, TopicName,
};

use super::{str_bytes, HandlerResult, RequestContext};
use crate::reply;
use crate::txn::driver::{with_txn, TxnCall, TxnReply};
use crate::txn::TransactionDescription;

/// Ids one request may name.
const MAX_IDS_PER_REQUEST: usize = 10_000;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: DescribeTransactionsRequest =
        ctx.decode(ApiKey::DescribeTransactions, &mut body)?;
    let mut response = DescribeTransactionsResponse::default();
    for id in request.transactional_ids.iter().take(MAX_IDS_PER_REQUEST) {
        let id = id.0.to_string();
        let described = if id.is_empty() {
            Err(kafka_protocol::ResponseError::InvalidRequest)
        } else {
            with_txn(&ctx.shard, &id, TxnCall::Describe(id.clone()))
                .await
                .map(|r| reply!(r, TxnReply::Described))
                .and_then(|d| d.ok_or(kafka_protocol::ResponseError::CoordinatorNotAvailable))
        };
        let mut state = TransactionState::default();
        state.transactional_id = kafka_protocol::messages::TransactionalId(str_bytes(id));
        state.producer_id = ProducerId(-1);
        state.producer_epoch = -1;
        state.transaction_start_time_ms = -1;
        match described {
            Ok(d) => fill(&mut state, d),
            Err(e) => state.error_code = e.code(),
        }
        if state.error_code != 0 {
            ctx.note_error();
        }
        response.transaction_states.push(state);
    }
    ctx.respond(ApiKey::DescribeTransactions, &response)
}

fn fill(state: &mut TransactionState, d: TransactionDescription) {
    state.error_code = d.error.map_or(0, |e| e.code());
    if d.error.is_some() {
        return;
    }
    state.transaction_state = str_bytes(d.state);
    state.transaction_timeout_ms = d.transaction_timeout_ms;
    state.transaction_start_time_ms = d.transaction_start_time_ms;
    state.producer_id = ProducerId(d.producer_id);
    state.producer_epoch = d.producer_epoch;
    state.topics = d
        .topics
        .into_iter()
        .map(|(topic, partitions)| {
            let mut t = TopicData::default();
            t.topic = TopicName(str_bytes(topic));
            t.partitions = partitions;
            t
        })
        .collect();
}
