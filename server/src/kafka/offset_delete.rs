//! OffsetDelete (KIP-496): remove a group's committed offsets for partitions it no longer
//! consumes.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{ApiKey, OffsetDeleteRequest, OffsetDeleteResponse};
use kafka_protocol::ResponseError;

use super::{HandlerResult, RequestContext};
use crate::group::driver::{with_group, GroupCall, GroupReply};

/// Partitions one request may name.
const MAX_PARTITIONS_PER_REQUEST: usize = 100_000;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: OffsetDeleteRequest = ctx.decode(ApiKey::OffsetDelete, &mut body)?;
    let group_id = request.group_id.0.to_string();
    let mut out = OffsetDeleteResponse::default();
    let asked: Vec<(String, i32)> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.name.0.to_string(), p.partition_index))
        })
        .take(MAX_PARTITIONS_PER_REQUEST)
        .collect();
    if group_id.is_empty() {
        out.error_code = ResponseError::InvalidGroupId.code();
        return ctx.respond(ApiKey::OffsetDelete, &out);
    }
    let gid = group_id.clone();
    let partitions = asked.clone();
    let call = GroupCall::DeleteOffsets {
        group_id: gid,
        partitions,
    };
    let (error, per_partition) = match with_group(&ctx.shard, &group_id, call).await {
        Ok(GroupReply::DeleteOffsets(error, per_partition)) => (error, per_partition),
        Ok(other) => panic!("a DeleteOffsets call was answered with {}", other.name()),
        Err(e) => (Some(e), Vec::new()),
    };
    out.error_code = error.map_or(0, |e| e.code());
    if error.is_none() {
        let mut answers = asked.into_iter().zip(per_partition);
        for topic in request.topics {
            let mut t = OffsetDeleteResponseTopic::default();
            t.name = topic.name;
            for p in topic.partitions {
                let mut r = OffsetDeleteResponsePartition::default();
                r.partition_index = p.partition_index;
                r.error_code = answers.next().and_then(|(_, e)| e).map_or(0, |e| e.code());
                t.partitions.push(r);
            }
            out.topics.push(t);
        }
    }
    ctx.respond(ApiKey::OffsetDelete, &out)
}
