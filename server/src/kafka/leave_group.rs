//! LeaveGroup: one member (v0–v2) or a batch of members by id or instance id (v3+, KIP-345).

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{ApiKey, LeaveGroupRequest, LeaveGroupResponse};
use kafka_protocol::ResponseError;

use super::{str_bytes, HandlerResult, RequestContext};
use crate::group::driver::{with_group, GroupCall, GroupReply};
use crate::group::LeavingMember;
use crate::reply;

/// Members one LeaveGroup may remove.
const MAX_LEAVING_MEMBERS: usize = 10_000;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: LeaveGroupRequest = ctx.decode(ApiKey::LeaveGroup, &mut body)?;
    let v = ctx.api_version;
    let group_id = request.group_id.0.to_string();
    let leaving: Vec<LeavingMember> = if v >= 3 {
        request
            .members
            .iter()
            .take(MAX_LEAVING_MEMBERS)
            .map(|m| LeavingMember {
                member_id: m.member_id.to_string(),
                group_instance_id: m.group_instance_id.as_ref().map(|s| s.to_string()),
            })
            .collect()
    } else {
        vec![LeavingMember {
            member_id: request.member_id.to_string(),
            group_instance_id: None,
        }]
    };
    let gid = group_id.clone();
    let asked = leaving.clone();
    let result = with_group(
        &ctx.shard,
        &group_id,
        GroupCall::Leave {
            group_id: gid,
            members: leaving,
        },
    )
    .await
    .map(|r| reply!(r, GroupReply::Leave));
    let mut out = LeaveGroupResponse::default();
    let (error, members) = match result {
        Ok(r) => (r.error, r.members),
        Err(e) => (Some(e), Vec::new()),
    };
    if v >= 3 {
        out.error_code = error.map_or(0, |e| e.code());
        out.members = members
            .into_iter()
            .map(|(m, e)| {
                let mut r = MemberResponse::default();
                r.member_id = str_bytes(m.member_id);
                r.group_instance_id = m.group_instance_id.map(str_bytes);
                r.error_code = e.map_or(0, |e| e.code());
                r
            })
            .collect();
    } else {
        // One member: its error is the request's.
        let member_error = members.into_iter().next().and_then(|(_, e)| e);
        let e: Option<ResponseError> = error.or(member_error);
        out.error_code = e.map_or(0, |e| e.code());
        let _ = asked;
    }
    ctx.respond(ApiKey::LeaveGroup, &out)
}
