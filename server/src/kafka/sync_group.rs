//! SyncGroup: the leader's assignment goes to each member, byte for byte.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, SyncGroupRequest, SyncGroupResponse};

use super::{str_bytes, HandlerResult, RequestContext};
use crate::group::driver::{with_group, GroupCall, GroupReply};
use crate::group::{SyncRequest, SyncResponse};
use crate::limits;
use crate::reply;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: SyncGroupRequest = ctx.decode(ApiKey::SyncGroup, &mut body)?;
    if let Err(e) = limits::sync_group(&request) {
        return respond(&ctx, SyncResponse::error(e));
    }
    let group_id = request.group_id.0.to_string();
    let sync = SyncRequest {
        group_id: group_id.clone(),
        generation_id: request.generation_id,
        member_id: request.member_id.to_string(),
        group_instance_id: request.group_instance_id.map(|s| s.to_string()),
        protocol_type: request.protocol_type.map(|s| s.to_string()),
        protocol_name: request.protocol_name.map(|s| s.to_string()),
        assignments: request
            .assignments
            .into_iter()
            // Kept until the next rebalance: copied out of the request frame.
            .map(|a| {
                (
                    a.member_id.to_string(),
                    Bytes::copy_from_slice(&a.assignment),
                )
            })
            .collect(),
    };
    // A follower's sync waits for the leader's.
    let _parked = ctx.park();
    let response = match with_group(&ctx.shard, &group_id, GroupCall::Sync(sync))
        .await
        .map(|r| reply!(r, GroupReply::Sync))
    {
        Ok(r) => r,
        Err(e) => SyncResponse::error(e),
    };
    respond(&ctx, response)
}

fn respond(ctx: &RequestContext, response: SyncResponse) -> HandlerResult {
    let mut out = SyncGroupResponse::default();
    out.error_code = response.error.map_or(0, |e| e.code());
    out.protocol_type = response.protocol_type.map(str_bytes);
    out.protocol_name = response.protocol_name.map(str_bytes);
    out.assignment = response.assignment;
    ctx.respond(ApiKey::SyncGroup, &out)
}
