//! Heartbeat: keeps a member's session; tells it when to rejoin.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, HeartbeatRequest, HeartbeatResponse};

use super::{HandlerResult, RequestContext};
use crate::group::driver::{with_group, GroupCall, GroupReply};
use crate::reply;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: HeartbeatRequest = ctx.decode(ApiKey::Heartbeat, &mut body)?;
    let group_id = request.group_id.0.to_string();
    let beat = crate::group::HeartbeatRequest {
        group_id: group_id.clone(),
        generation_id: request.generation_id,
        member_id: request.member_id.to_string(),
        group_instance_id: request.group_instance_id.map(|s| s.to_string()),
    };
    let error = match with_group(&ctx.shard, &group_id, GroupCall::Heartbeat(beat))
        .await
        .map(|r| reply!(r, GroupReply::Heartbeat))
    {
        Ok(e) => e,
        Err(e) => Some(e),
    };
    let mut out = HeartbeatResponse::default();
    out.error_code = error.map_or(0, |e| e.code());
    ctx.respond(ApiKey::Heartbeat, &out)
}
