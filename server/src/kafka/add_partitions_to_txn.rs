//! AddPartitionsToTxn (KIP-98, KIP-890 part 1).
//!
//! v0–v3 come from producers: one transaction, whose partitions join it before the
//! producer writes to them. The transactional id's coordinator logs the new set; each
//! partition first records that it takes part in transactions (so its transaction state
//! is rebuilt from its log after a restart).
//!
//! v4+ are the batched form Kafka's partition leaders send to a coordinator: several
//! transactions, each either added as above or, with `VerifyOnly`, only checked ("is this
//! partition in the producer's ongoing transaction?", nothing written), the question a
//! leader asks before it appends a producer's first transactional batch. Kafka lets only
//! brokers (CLUSTER_ACTION) send these versions. Wharf has no ACLs, so it serves them to
//! any caller, as Kafka does without an authorizer: a verification reveals no more than
//! DescribeTransactions does, and an addition checks the producer id and epoch as a
//! producer's v0–v3 request does. Internal topics may be named (a leader verifies
//! `__consumer_offsets` for TxnOffsetCommit). Results come per transaction; the top-level
//! error code (v4+) answers a request that cannot be served as a whole.
//!
//! v5 differs from v4 only in its callers knowing TRANSACTION_ABORTABLE (KIP-890): a v4
//! verification of a partition outside the transaction is answered INVALID_TXN_STATE.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey, TopicName,
};
use kafka_protocol::ResponseError;

use super::{str_bytes, HandlerResult, RequestContext};
use crate::reply;
use crate::txn::driver::{with_txn, TxnCall, TxnReply};
use crate::txn::{AddPartitionsRequest, ErrorCode, Reply, TopicPartition};

/// Partitions one request may name, over all its transactions.
const MAX_PARTITIONS_PER_REQUEST: usize = 10_000;
/// Transactions one batched (v4+) request may carry.
const MAX_TRANSACTIONS_PER_REQUEST: usize = 10_000;
/// The first version of the batched form, sent by brokers.
const FIRST_BATCHED_VERSION: i16 = 4;

/// One transaction of a request, in either form.
struct Txn {
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    verify_only: bool,
}

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: AddPartitionsToTxnRequest = ctx.decode(ApiKey::AddPartitionsToTxn, &mut body)?;
    let response = if ctx.api_version < FIRST_BATCHED_VERSION {
        single(&ctx, request).await
    } else {
        batched(&ctx, request).await
    };
    ctx.respond(ApiKey::AddPartitionsToTxn, &response)
}

/// v0–v3: one producer's transaction.
async fn single(
    ctx: &Rc<RequestContext>,
    request: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    let partitions = flatten(&request.v3_and_below_topics);
    let results = if partitions.len() > MAX_PARTITIONS_PER_REQUEST {
        partitions
            .iter()
            .map(|tp| (tp.clone(), Some(ResponseError::InvalidRequest)))
            .collect()
    } else {
        let txn = Txn {
            transactional_id: request.v3_and_below_transactional_id.0.to_string(),
            producer_id: request.v3_and_below_producer_id.0,
            producer_epoch: request.v3_and_below_producer_epoch,
            verify_only: false,
        };
        add(ctx, txn, partitions).await
    };
    if results.iter().any(|(_, e)| e.is_some()) {
        ctx.note_error();
    }
    let mut response = AddPartitionsToTxnResponse::default();
    response.results_by_topic_v3_and_below = by_topic(results);
    response
}

/// v4+: several transactions, each added or verified, answered each on its own.
async fn batched(
    ctx: &Rc<RequestContext>,
    request: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    let mut response = AddPartitionsToTxnResponse::default();
    let partitions: usize = request
        .transactions
        .iter()
        .flat_map(|t| &t.topics)
        .map(|t| t.partitions.len())
        .sum();
    let mut ids = HashSet::with_capacity(request.transactions.len());
    // Kafka's brokers send each transactional id once per request; a request naming one
    // twice has no single answer per id (the response is keyed by id).
    let duplicate = !request
        .transactions
        .iter()
        .all(|t| ids.insert(t.transactional_id.0.as_str()));
    if request.transactions.len() > MAX_TRANSACTIONS_PER_REQUEST
        || partitions > MAX_PARTITIONS_PER_REQUEST
        || duplicate
    {
        response.error_code = ResponseError::InvalidRequest.code();
        ctx.note_error();
        return response;
    }
    let mut failed = false;
    // One after the other: a verification is answered from the coordinator's memory at
    // once; only additions, which Kafka 3.9's brokers never send, wait for a log append.
    for t in &request.transactions {
        let txn = Txn {
            transactional_id: t.transactional_id.0.to_string(),
            producer_id: t.producer_id.0,
            producer_epoch: t.producer_epoch,
            verify_only: t.verify_only,
        };
        let results = add(ctx, txn, flatten(&t.topics)).await;
        failed |= results.iter().any(|(_, e)| e.is_some());
        let mut result = AddPartitionsToTxnResult::default();
        result.transactional_id = t.transactional_id.clone();
        result.topic_results = by_topic(results);
        response.results_by_transaction.push(result);
    }
    if failed {
        ctx.note_error();
    }
    response
}

fn flatten(topics: &[AddPartitionsToTxnTopic]) -> Vec<TopicPartition> {
    let mut partitions = Vec::new();
    for t in topics {
        for p in &t.partitions {
            partitions.push(TopicPartition::new(t.name.0.as_str(), *p));
        }
    }
    partitions
}

/// Per-partition results grouped by topic, in the order they came.
fn by_topic(results: Vec<(TopicPartition, ErrorCode)>) -> Vec<AddPartitionsToTxnTopicResult> {
    let mut topics: Vec<AddPartitionsToTxnTopicResult> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (tp, error) in results {
        let mut r = AddPartitionsToTxnPartitionResult::default();
        r.partition_index = tp.partition;
        r.partition_error_code = error.map_or(0, |e| e.code());
        match index.get(&tp.topic) {
            Some(&i) => topics[i].results_by_partition.push(r),
            None => {
                index.insert(tp.topic.clone(), topics.len());
                let mut t = AddPartitionsToTxnTopicResult::default();
                t.name = TopicName(str_bytes(tp.topic));
                t.results_by_partition.push(r);
                topics.push(t);
            }
        }
    }
    topics
}

async fn add(
    ctx: &Rc<RequestContext>,
    txn: Txn,
    partitions: Vec<TopicPartition>,
) -> Vec<(TopicPartition, ErrorCode)> {
    let all = |partitions: &[TopicPartition], e: ResponseError| {
        partitions
            .iter()
            .map(|tp| (tp.clone(), Some(e)))
            .collect::<Vec<_>>()
    };
    let id = txn.transactional_id;
    let req = AddPartitionsRequest {
        transactional_id: id.clone(),
        producer_id: txn.producer_id,
        producer_epoch: txn.producer_epoch,
        partitions: partitions.clone(),
        verify_only: txn.verify_only,
        version: ctx.api_version,
    };
    let answer = with_txn(&ctx.shard, &id, TxnCall::AddPartitions(req))
        .await
        .map(|r| reply!(r, TxnReply::Coordinator));
    match answer {
        Ok(Some(Reply::AddPartitions(_, results))) => results,
        Ok(_) => all(&partitions, ResponseError::CoordinatorNotAvailable),
        Err(e) => all(&partitions, e),
    }
}
