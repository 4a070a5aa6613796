//! ConsumerGroupHeartbeat (KIP-848): join, stay in, and leave a consumer group whose
//! partitions the broker assigns.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::{
    ApiKey, ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse,
};
use uuid::Uuid;

use super::{str_bytes, HandlerResult, RequestContext};
use crate::group::consumer::HeartbeatIn;
use crate::group::driver::{with_group, GroupCall, GroupReply};
use crate::limits;
use crate::reply;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: ConsumerGroupHeartbeatRequest =
        ctx.decode(ApiKey::ConsumerGroupHeartbeat, &mut body)?;
    if let Err(e) = limits::consumer_group_heartbeat(&request) {
        let mut out = ConsumerGroupHeartbeatResponse::default();
        out.error_code = e.code();
        out.error_message = Some(str_bytes(e.to_string()));
        out.member_epoch = -1;
        return ctx.respond(ApiKey::ConsumerGroupHeartbeat, &out);
    }
    let group_id = request.group_id.0.to_string();
    let beat = HeartbeatIn {
        group_id: group_id.clone(),
        member_id: request.member_id.to_string(),
        member_epoch: request.member_epoch,
        instance_id: request.instance_id.map(|s| s.to_string()),
        rebalance_timeout_ms: request.rebalance_timeout_ms,
        subscribed_topic_names: request
            .subscribed_topic_names
            .map(|ts| ts.into_iter().map(|t| t.0.to_string()).collect()),
        owned: request.topic_partitions.map(|tps| {
            tps.into_iter()
                .map(|tp| (tp.topic_id.as_u128(), tp.partitions.into_iter().collect()))
                .collect()
        }),
    };
    let member_id = beat.member_id.clone();
    let mut out = ConsumerGroupHeartbeatResponse::default();
    match with_group(&ctx.shard, &group_id, GroupCall::ConsumerHeartbeat(beat))
        .await
        .map(|r| reply!(r, GroupReply::ConsumerHeartbeat))
    {
        Ok(r) => {
            out.error_code = r.error.map_or(0, |e| e.code());
            if let Some(e) = r.error {
                out.error_message = Some(str_bytes(e.to_string()));
            }
            out.member_id = Some(str_bytes(r.member_id));
            out.member_epoch = r.member_epoch;
            out.heartbeat_interval_ms = r.heartbeat_interval_ms;
            out.assignment = r.assignment.map(|a| {
                let mut assignment = Assignment::default();
                assignment.topic_partitions = a
                    .into_iter()
                    .map(|(topic, parts)| {
                        let mut tp = TopicPartitions::default();
                        tp.topic_id = Uuid::from_u128(topic);
                        tp.partitions = parts.into_iter().collect();
                        tp
                    })
                    .collect();
                assignment
            });
        }
        Err(e) => {
            out.error_code = e.code();
            out.error_message = Some(str_bytes(e.to_string()));
            out.member_id = Some(str_bytes(member_id));
            out.member_epoch = -1;
        }
    }
    ctx.respond(ApiKey::ConsumerGroupHeartbeat, &out)
}
