//! AddPartitionsToTxn v0–v3 (KIP-98): a producer adds partitions to its open transaction
//! before it writes to them. The transactional id's coordinator logs the new set; each
//! partition first records that it takes part in transactions (so its transaction state
//! is rebuilt from its log after a restart).
//!
//! v4+ (batched, from brokers, KIP-890's verification) is not served: a single node needs
//! no verification round trip.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey, TopicName,
};
use kafka_protocol::ResponseError;

use super::{str_bytes, HandlerResult, RequestContext};
use crate::metadata::{PartitionId, TopicPartition as Tp};
use crate::txn::driver::with_txn;
use crate::txn::{AddPartitionsRequest, ErrorCode, Reply, TopicPartition};

/// Partitions one request may add.
const MAX_PARTITIONS_PER_REQUEST: usize = 10_000;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: AddPartitionsToTxnRequest = ctx.decode(ApiKey::AddPartitionsToTxn, &mut body)?;
    let mut partitions: Vec<TopicPartition> = Vec::new();
    for t in &request.v3_and_below_topics {
        for p in &t.partitions {
            partitions.push(TopicPartition::new(t.name.0.as_str(), *p));
        }
    }
    let results = if partitions.len() > MAX_PARTITIONS_PER_REQUEST {
        partitions
            .iter()
            .map(|tp| (tp.clone(), Some(ResponseError::InvalidRequest)))
            .collect()
    } else {
        add(&ctx, &request, partitions).await
    };
    if results.iter().any(|(_, e)| e.is_some()) {
        ctx.note_error();
    }
    let mut response = AddPartitionsToTxnResponse::default();
    for (tp, error) in results {
        let mut r = AddPartitionsToTxnPartitionResult::default();
        r.partition_index = tp.partition;
        r.partition_error_code = error.map_or(0, |e| e.code());
        match response.results_by_topic_v3_and_below.last_mut() {
            Some(t) if t.name.0.as_str() == tp.topic => t.results_by_partition.push(r),
            _ => {
                let mut t = AddPartitionsToTxnTopicResult::default();
                t.name = TopicName(str_bytes(tp.topic));
                t.results_by_partition.push(r);
                response.results_by_topic_v3_and_below.push(t);
            }
        }
    }
    ctx.respond(ApiKey::AddPartitionsToTxn, &response)
}

async fn add(
    ctx: &Rc<RequestContext>,
    request: &AddPartitionsToTxnRequest,
    partitions: Vec<TopicPartition>,
) -> Vec<(TopicPartition, ErrorCode)> {
    let all = |partitions: &[TopicPartition], e: ResponseError| {
        partitions
            .iter()
            .map(|tp| (tp.clone(), Some(e)))
            .collect::<Vec<_>>()
    };
    let id = request.v3_and_below_transactional_id.0.to_string();
    // Each known partition keeps its transactions from now on (created once, synced).
    let image = ctx.shard.metadata();
    for tp in &partitions {
        let Some(topic) = image.topic(&tp.topic) else {
            continue;
        };
        if topic.internal || !topic.has_partition(PartitionId(tp.partition)) {
            continue;
        }
        let target = Tp {
            topic_id: topic.id,
            partition: PartitionId(tp.partition),
        };
        let marked = ctx
            .shard
            .invoke_on(ctx.shard.owner_of(target), move |s| async move {
                match s.partitions.get(target) {
                    Some(h) => h.txns.ensure_marker_file(&h.dir).await,
                    None => Err(ResponseError::NotLeaderOrFollower),
                }
            })
            .await;
        match marked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return all(&partitions, e),
            Err(_) => return all(&partitions, ResponseError::CoordinatorNotAvailable),
        }
    }
    let req = AddPartitionsRequest {
        transactional_id: id.clone(),
        producer_id: request.v3_and_below_producer_id.0,
        producer_epoch: request.v3_and_below_producer_epoch,
        partitions: partitions.clone(),
        verify_only: false,
        version: ctx.api_version,
    };
    let answer = with_txn(&ctx.shard, &id, move |s, t, p| async move {
        let image = s.metadata();
        let exists = move |tp: &TopicPartition| {
            image
                .topic(&tp.topic)
                .is_some_and(|t| t.has_partition(PartitionId(tp.partition)))
        };
        t.call(&s, p, |c, now, token| {
            c.add_partitions(now, token, req, &exists)
        })
        .await
    })
    .await;
    match answer {
        Ok(Some(Reply::AddPartitions(_, results))) => results,
        Ok(_) => all(&partitions, ResponseError::CoordinatorNotAvailable),
        Err(e) => all(&partitions, e),
    }
}
