//! DescribeGroups: state, protocol, and members with their metadata and assignment.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{ApiKey, DescribeGroupsRequest, DescribeGroupsResponse, GroupId};

use super::{str_bytes, HandlerResult, RequestContext};
use crate::group::driver::{with_group, GroupCall, GroupReply};
use crate::reply;

/// Groups one request may describe.
const MAX_GROUPS_PER_REQUEST: usize = 1_000;
/// Kafka's "authorized operations not requested".
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: DescribeGroupsRequest = ctx.decode(ApiKey::DescribeGroups, &mut body)?;
    let mut out = DescribeGroupsResponse::default();
    // A group named twice is described once, where first named: its members' metadata is
    // the broker's state, which one request may not list a thousand times.
    let groups = super::first_mentions(request.groups, GroupId::clone);
    for group_id in groups.into_iter().take(MAX_GROUPS_PER_REQUEST) {
        let id = group_id.0.to_string();
        let gid = id.clone();
        let mut g = DescribedGroup::default();
        g.group_id = group_id;
        g.authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
        match with_group(&ctx.shard, &id, GroupCall::Describe(gid))
            .await
            .map(|r| reply!(r, GroupReply::Describe))
        {
            Ok(d) => {
                g.error_code = d.error.map_or(0, |e| e.code());
                g.group_state = str_bytes(d.state);
                g.protocol_type = str_bytes(d.protocol_type);
                g.protocol_data = str_bytes(d.protocol);
                g.members = d
                    .members
                    .into_iter()
                    .map(|m| {
                        let mut member = DescribedGroupMember::default();
                        member.member_id = str_bytes(m.member_id);
                        member.group_instance_id = m.group_instance_id.map(str_bytes);
                        member.client_id = str_bytes(m.client_id);
                        member.client_host = str_bytes(m.client_host);
                        member.member_metadata = m.metadata;
                        member.member_assignment = m.assignment;
                        member
                    })
                    .collect();
            }
            Err(e) => {
                g.error_code = e.code();
                if ctx.api_version >= 6 {
                    g.error_message = Some(str_bytes(e.to_string()));
                }
            }
        }
        out.groups.push(g);
    }
    ctx.respond(ApiKey::DescribeGroups, &out)
}
