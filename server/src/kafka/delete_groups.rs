//! DeleteGroups: an empty group and all its offsets go (tombstones in `__consumer_offsets`).

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{ApiKey, DeleteGroupsRequest, DeleteGroupsResponse};

use super::{HandlerResult, RequestContext};
use crate::group::driver::{with_group, GroupCall, GroupReply};
use crate::reply;

/// Groups one request may delete.
const MAX_GROUPS_PER_REQUEST: usize = 1_000;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: DeleteGroupsRequest = ctx.decode(ApiKey::DeleteGroups, &mut body)?;
    let mut out = DeleteGroupsResponse::default();
    for group_id in request
        .groups_names
        .into_iter()
        .take(MAX_GROUPS_PER_REQUEST)
    {
        let id = group_id.0.to_string();
        let gid = id.clone();
        let error = match with_group(&ctx.shard, &id, GroupCall::DeleteGroup(gid))
            .await
            .map(|r| reply!(r, GroupReply::DeleteGroup))
        {
            Ok(e) => e,
            Err(e) => Some(e),
        };
        let mut r = DeletableGroupResult::default();
        r.group_id = group_id;
        r.error_code = error.map_or(0, |e| e.code());
        out.results.push(r);
    }
    ctx.respond(ApiKey::DeleteGroups, &out)
}
