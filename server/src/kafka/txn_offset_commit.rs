//! TxnOffsetCommit (KIP-98, KIP-447): a transactional producer commits a consumer group's
//! offsets inside its transaction. The group coordinator checks, as a partition leader
//! does for a producer's first transactional batch (KIP-890 part 1), that the transaction
//! coordinator has the group's `__consumer_offsets` partition in the producer's
//! transaction; then checks the generation and member (KIP-447, when the request names
//! them) and appends the offsets to that partition as a transactional batch of the
//! producer; the group sees them only once the transaction's COMMIT marker reaches it.
//!
//! v4 differs from v3 only in the answer to a commit whose partition is not in the
//! transaction: TRANSACTION_ABORTABLE (KIP-890), where v0–v3 get INVALID_TXN_STATE.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{ApiKey, TxnOffsetCommitRequest, TxnOffsetCommitResponse};
use kafka_protocol::ResponseError;

use super::{HandlerResult, RequestContext};
use crate::group::driver::{with_group, GroupCall, GroupReply};
use crate::group::{CommitPartition, CommitRequest, ErrorCode, TxnCommitter};
use crate::metadata::PartitionId;
use crate::reply;

/// Partitions one commit may name.
const MAX_PARTITIONS_PER_COMMIT: usize = 100_000;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: TxnOffsetCommitRequest = ctx.decode(ApiKey::TxnOffsetCommit, &mut body)?;
    let image = ctx.shard.metadata();
    let group_id = request.group_id.0.to_string();
    let mut slots: Vec<Vec<Result<usize, ResponseError>>> =
        Vec::with_capacity(request.topics.len());
    let mut partitions = Vec::new();
    let mut total = 0usize;
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let meta = image.topic(&name);
        let mut row = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            total += 1;
            let known = meta.is_some_and(|m| m.has_partition(PartitionId(p.partition_index)));
            if total > MAX_PARTITIONS_PER_COMMIT {
                row.push(Err(ResponseError::InvalidRequest));
            } else if !known {
                row.push(Err(ResponseError::UnknownTopicOrPartition));
            } else {
                row.push(Ok(partitions.len()));
                partitions.push(CommitPartition {
                    topic: name.clone(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: if ctx.api_version >= 2 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                    commit_timestamp_ms: -1,
                });
            }
        }
        slots.push(row);
    }
    let count = partitions.len();
    let errors: Vec<ErrorCode> = if count == 0 {
        Vec::new()
    } else if request.transactional_id.0.is_empty() {
        vec![Some(ResponseError::InvalidRequest); count]
    } else {
        // v0–v2 name no member: the commit is not checked against the membership.
        let (generation_id, member_id) = if ctx.api_version >= 3 {
            (request.generation_id, request.member_id.to_string())
        } else {
            (-1, String::new())
        };
        let commit = CommitRequest {
            group_id: group_id.clone(),
            generation_id,
            member_id,
            group_instance_id: request.group_instance_id.map(|s| s.to_string()),
            retention_time_ms: -1,
            partitions,
        };
        let producer = TxnCommitter {
            transactional_id: request.transactional_id.0.to_string(),
            producer_id: request.producer_id.0,
            producer_epoch: request.producer_epoch,
            version: ctx.api_version,
        };
        match with_group(
            &ctx.shard,
            &group_id,
            GroupCall::TxnCommit(commit, producer),
        )
        .await
        .map(|r| reply!(r, GroupReply::TxnCommit))
        {
            Ok(errors) => errors,
            Err(e) => vec![Some(e); count],
        }
    };
    let mut out = TxnOffsetCommitResponse::default();
    let mut failed = false;
    out.topics = request
        .topics
        .into_iter()
        .zip(slots)
        .map(|(topic, row)| {
            let mut t = TxnOffsetCommitResponseTopic::default();
            t.name = topic.name;
            t.partitions = topic
                .partitions
                .iter()
                .zip(row)
                .map(|(p, slot)| {
                    let mut r = TxnOffsetCommitResponsePartition::default();
                    r.partition_index = p.partition_index;
                    let error = match slot {
                        Ok(i) => errors.get(i).copied().flatten(),
                        Err(e) => Some(e),
                    };
                    // Producers from before Kafka 2.0 (v0–v1) fail on a loading
                    // coordinator's error (KAFKA-7296): Kafka answers them
                    // COORDINATOR_NOT_AVAILABLE instead, which they retry.
                    let error = match error {
                        Some(ResponseError::CoordinatorLoadInProgress) if ctx.api_version < 2 => {
                            Some(ResponseError::CoordinatorNotAvailable)
                        }
                        other => other,
                    };
                    failed |= error.is_some();
                    r.error_code = error.map_or(0, |e| e.code());
                    r
                })
                .collect();
            t
        })
        .collect();
    if failed {
        ctx.note_error();
    }
    ctx.respond(ApiKey::TxnOffsetCommit, &out)
}
