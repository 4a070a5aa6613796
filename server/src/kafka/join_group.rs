//! JoinGroup: parked on the group's coordinator until the rebalance completes.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{ApiKey, JoinGroupRequest, JoinGroupResponse};

use super::{str_bytes, HandlerResult, RequestContext};
use crate::group::driver::{with_group, GroupCall, GroupReply};
use crate::group::{JoinRequest, JoinResponse, Protocol};
use crate::limits;
use crate::reply;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: JoinGroupRequest = ctx.decode(ApiKey::JoinGroup, &mut body)?;
    let v = ctx.api_version;
    let group_id = request.group_id.0.to_string();
    let member_id = request.member_id.to_string();
    let response = if let Err(e) = limits::join_group(&request) {
        JoinResponse::error(&member_id, e)
    } else {
        let join = JoinRequest {
            group_id: group_id.clone(),
            member_id: member_id.clone(),
            group_instance_id: request.group_instance_id.map(|s| s.to_string()),
            client_id: ctx
                .client_id
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            client_host: ctx.client_host(),
            session_timeout_ms: request.session_timeout_ms,
            // v0 has no rebalance timeout: Kafka uses the session timeout.
            rebalance_timeout_ms: if v >= 1 {
                request.rebalance_timeout_ms
            } else {
                request.session_timeout_ms
            },
            protocol_type: request.protocol_type.to_string(),
            protocols: request
                .protocols
                .into_iter()
                .map(|p| Protocol {
                    name: p.name.to_string(),
                    // Kept for the member's life: its own allocation, not a view that
                    // would keep the whole request frame alive.
                    metadata: Bytes::copy_from_slice(&p.metadata),
                })
                .collect(),
            // KIP-394: only v4+ clients know to come back with the id handed to them.
            require_known_member_id: v >= 4,
        };
        // A join may wait for the group's other members for its rebalance timeout.
        let _parked = ctx.park();
        match with_group(&ctx.shard, &group_id, GroupCall::Join(join))
            .await
            .map(|r| reply!(r, GroupReply::Join))
        {
            Ok(r) => r,
            Err(e) => JoinResponse::error(&member_id, e),
        }
    };
    let mut out = JoinGroupResponse::default();
    out.error_code = response.error.map_or(0, |e| e.code());
    out.generation_id = response.generation_id;
    out.protocol_type = response.protocol_type.map(str_bytes);
    // Before v7 the protocol name is not nullable.
    out.protocol_name = match response.protocol_name {
        Some(p) => Some(str_bytes(p)),
        None if v < 7 => Some(str_bytes("")),
        None => None,
    };
    out.leader = str_bytes(response.leader);
    out.skip_assignment = response.skip_assignment;
    out.member_id = str_bytes(response.member_id);
    out.members = response
        .members
        .into_iter()
        .map(|m| {
            let mut member = JoinGroupResponseMember::default();
            member.member_id = str_bytes(m.member_id);
            member.group_instance_id = m.group_instance_id.map(str_bytes);
            member.metadata = m.metadata;
            member
        })
        .collect();
    ctx.respond(ApiKey::JoinGroup, &out)
}
