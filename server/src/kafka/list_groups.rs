//! ListGroups: every group on every shard, optionally filtered by state (v4+, KIP-518)
//! and type (v5+, KIP-848: "classic" or "consumer").

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{ApiKey, GroupId, ListGroupsRequest, ListGroupsResponse};

use super::{str_bytes, HandlerResult, RequestContext};
use crate::group::driver::list_all;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: ListGroupsRequest = ctx.decode(ApiKey::ListGroups, &mut body)?;
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_string())
        .collect();
    let types: Vec<String> = request.types_filter.iter().map(|s| s.to_string()).collect();
    let mut out = ListGroupsResponse::default();
    match list_all(&ctx.shard, states, types).await {
        Ok(groups) => {
            out.groups = groups
                .into_iter()
                .map(|g| {
                    let mut l = ListedGroup::default();
                    l.group_id = GroupId(str_bytes(g.group_id));
                    l.protocol_type = str_bytes(g.protocol_type);
                    l.group_state = str_bytes(g.state);
                    l.group_type = str_bytes(g.group_type);
                    l
                })
                .collect();
        }
        Err(e) => out.error_code = e.code(),
    }
    ctx.respond(ApiKey::ListGroups, &out)
}
