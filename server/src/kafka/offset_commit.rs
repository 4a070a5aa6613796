//! OffsetCommit: stored in `__consumer_offsets` before it is acknowledged; never changes
//! the group's membership.
//!
//! v0 commits outside any generation (the "simple consumer" commit; Kafka 3.9 kept v0
//! commits in ZooKeeper, here they go where every other commit goes), v1 may carry a
//! commit timestamp per partition.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{ApiKey, OffsetCommitRequest, OffsetCommitResponse};
use kafka_protocol::ResponseError;

use super::{HandlerError, HandlerResult, RequestContext};
use crate::group::driver::{with_group, GroupCall, GroupReply};
use crate::group::{CommitPartition, CommitRequest, ErrorCode};
use crate::limits;
use crate::metadata::PartitionId;
use crate::reply;

/// Partitions one commit may name.
const MAX_PARTITIONS_PER_COMMIT: usize = 100_000;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let (request, commit_timestamps) = if ctx.is_legacy(ApiKey::OffsetCommit) {
        wharf_protocol::legacy::offset_commit::decode(&mut body, ctx.api_version).map_err(|e| {
            HandlerError::Decode {
                api: ApiKey::OffsetCommit,
                version: ctx.api_version,
                reason: e.to_string(),
            }
        })?
    } else {
        let request: OffsetCommitRequest = ctx.decode(ApiKey::OffsetCommit, &mut body)?;
        (request, Vec::new())
    };
    let refused = limits::offset_commit(&request).err();
    let image = ctx.shard.metadata();
    let group_id = request.group_id.0.to_string();
    // Each requested partition: its answer, or a place in the commit sent to the coordinator.
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
            if let Some(error) = refused {
                row.push(Err(error));
            } else if total > MAX_PARTITIONS_PER_COMMIT {
                row.push(Err(ResponseError::InvalidRequest));
            } else if !known {
                row.push(Err(ResponseError::UnknownTopicOrPartition));
            } else {
                row.push(Ok(partitions.len()));
                partitions.push(CommitPartition {
                    topic: name.clone(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: if ctx.api_version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                    commit_timestamp_ms: commit_timestamps.get(total - 1).copied().unwrap_or(-1),
                });
            }
        }
        slots.push(row);
    }
    let count = partitions.len();
    let errors: Vec<ErrorCode> = if count == 0 {
        Vec::new()
    } else {
        let commit = CommitRequest {
            group_id: group_id.clone(),
            generation_id: request.generation_id_or_member_epoch,
            member_id: request.member_id.to_string(),
            group_instance_id: request.group_instance_id.map(|s| s.to_string()),
            retention_time_ms: if (2..=4).contains(&ctx.api_version) {
                request.retention_time_ms
            } else {
                -1
            },
            partitions,
        };
        match with_group(&ctx.shard, &group_id, GroupCall::Commit(commit))
            .await
            .map(|r| reply!(r, GroupReply::Commit))
        {
            Ok(errors) => errors,
            Err(e) => vec![Some(e); count],
        }
    };
    let mut out = OffsetCommitResponse::default();
    out.topics = request
        .topics
        .into_iter()
        .zip(slots)
        .map(|(topic, row)| {
            let mut t = OffsetCommitResponseTopic::default();
            t.name = topic.name;
            t.topic_id = topic.topic_id;
            t.partitions = topic
                .partitions
                .iter()
                .zip(row)
                .map(|(p, slot)| {
                    let mut r = OffsetCommitResponsePartition::default();
                    r.partition_index = p.partition_index;
                    let error = match slot {
                        Ok(i) => errors.get(i).copied().flatten(),
                        Err(e) => Some(e),
                    };
                    r.error_code = error.map_or(0, |e| e.code());
                    r
                })
                .collect();
            t
        })
        .collect();
    ctx.respond_any(ApiKey::OffsetCommit, &out)
}
