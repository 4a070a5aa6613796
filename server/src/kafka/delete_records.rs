//! DeleteRecords: advance partitions' log start offsets (whole segments below go).

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{ApiKey, DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::ResponseError;

use super::{on_owners, HandlerResult, RequestContext, SlotWork};
use crate::partition::ops::{PartitionAnswer, PartitionOp};
use crate::reply;

type Answer = (Option<ResponseError>, i64);

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: DeleteRecordsRequest = ctx.decode(ApiKey::DeleteRecords, &mut body)?;
    let image = ctx.shard.metadata();
    let mut answers: Vec<Vec<Option<Answer>>> = Vec::new();
    let mut work: SlotWork<i64> = Vec::new();
    for (ti, topic) in request.topics.iter().enumerate() {
        let meta = image.topic(topic.name.0.as_str());
        let mut row = Vec::new();
        for (pi, p) in topic.partitions.iter().enumerate() {
            match meta.and_then(|t| t.partition(p.partition_index)) {
                Some(tp) => {
                    work.push((tp, ((ti, pi), p.offset)));
                    row.push(None);
                }
                _ => row.push(Some((Some(ResponseError::UnknownTopicOrPartition), -1))),
            }
        }
        answers.push(row);
    }
    let slots: Vec<(usize, usize)> = work.iter().map(|(_, (slot, _))| *slot).collect();
    let ops = work
        .into_iter()
        .map(|(tp, (_, before))| (tp, PartitionOp::DeleteRecords { before }))
        .collect();
    let results = on_owners(&ctx.shard, ops).await;
    for (slot, answer) in slots.into_iter().zip(results) {
        let answer = answer.map(|a| reply!(a, PartitionAnswer::DeleteRecords));
        answers[slot.0][slot.1] =
            Some(answer.unwrap_or((Some(ResponseError::RequestTimedOut), -1)));
    }

    let mut response = DeleteRecordsResponse::default();
    response.topics = request
        .topics
        .into_iter()
        .zip(answers)
        .map(|(topic, row)| {
            let mut t = DeleteRecordsTopicResult::default();
            t.name = topic.name;
            t.partitions = topic
                .partitions
                .iter()
                .zip(row)
                .map(|(p, answer)| {
                    let (error, low_watermark) =
                        answer.unwrap_or((Some(ResponseError::UnknownServerError), -1));
                    let mut r = DeleteRecordsPartitionResult::default();
                    r.partition_index = p.partition_index;
                    r.error_code = error.map_or(0, |e| e.code());
                    r.low_watermark = low_watermark;
                    r
                })
                .collect();
            t
        })
        .collect();
    ctx.respond(ApiKey::DeleteRecords, &response)
}
