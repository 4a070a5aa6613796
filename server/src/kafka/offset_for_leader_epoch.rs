//! OffsetForLeaderEpoch (KIP-101, KIP-320): where a leader epoch ends in the log, so a
//! consumer can detect truncation after a leader change.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{ApiKey, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError;

use super::{on_owners, HandlerResult, RequestContext, SlotWork};
use crate::partition::ops::{
    PartitionAnswer, PartitionOp, UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET,
};
use crate::reply;

/// Kafka's "no such epoch" answer.

type Answer = (Option<ResponseError>, i32, i64);

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: OffsetForLeaderEpochRequest =
        ctx.decode_any(ApiKey::OffsetForLeaderEpoch, &mut body)?;
    let image = ctx.shard.metadata();
    let mut answers: Vec<Vec<Option<Answer>>> = Vec::new();
    let mut work: SlotWork<(i32, i32)> = Vec::new();
    for (ti, topic) in request.topics.iter().enumerate() {
        let meta = image.topic(topic.topic.0.as_str());
        let mut row = Vec::new();
        for (pi, p) in topic.partitions.iter().enumerate() {
            match meta.and_then(|t| t.partition(p.partition)) {
                Some(tp) => {
                    work.push((tp, ((ti, pi), (p.current_leader_epoch, p.leader_epoch))));
                    row.push(None);
                }
                _ => row.push(Some((
                    Some(ResponseError::UnknownTopicOrPartition),
                    UNDEFINED_EPOCH,
                    UNDEFINED_EPOCH_OFFSET,
                ))),
            }
        }
        answers.push(row);
    }
    let slots: Vec<(usize, usize)> = work.iter().map(|(_, (slot, _))| *slot).collect();
    let ops = work
        .into_iter()
        .map(|(tp, (_, (current, wanted)))| (tp, PartitionOp::LeaderEpochEnd { current, wanted }))
        .collect();
    let results = on_owners(&ctx.shard, ops).await;
    for (slot, answer) in slots.into_iter().zip(results) {
        let answer = answer.map(|a| reply!(a, PartitionAnswer::LeaderEpochEnd));
        answers[slot.0][slot.1] = Some(answer.unwrap_or((
            Some(ResponseError::RequestTimedOut),
            UNDEFINED_EPOCH,
            UNDEFINED_EPOCH_OFFSET,
        )));
    }

    let mut response = OffsetForLeaderEpochResponse::default();
    response.topics = request
        .topics
        .into_iter()
        .zip(answers)
        .map(|(topic, row)| {
            let mut t = OffsetForLeaderTopicResult::default();
            t.topic = topic.topic;
            t.partitions = topic
                .partitions
                .iter()
                .zip(row)
                .map(|(p, answer)| {
                    let (error, epoch, end) = answer.unwrap_or((
                        Some(ResponseError::UnknownServerError),
                        UNDEFINED_EPOCH,
                        UNDEFINED_EPOCH_OFFSET,
                    ));
                    let mut e = EpochEndOffset::default();
                    e.partition = p.partition;
                    e.error_code = error.map_or(0, |e| e.code());
                    e.leader_epoch = epoch;
                    e.end_offset = end;
                    e
                })
                .collect();
            t
        })
        .collect();
    ctx.respond_any(ApiKey::OffsetForLeaderEpoch, &response)
}
