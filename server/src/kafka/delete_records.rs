//! DeleteRecords: advance partitions' log start offsets (whole segments below go).

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{ApiKey, DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::ResponseError;
use wharf_engine::Offset;

use super::{led_partition, on_owners, HandlerResult, RequestContext, SlotWork};
use crate::errors::engine_error;

/// "Delete everything up to the high watermark".
const TO_HIGH_WATERMARK: i64 = -1;

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
    let results = on_owners(&ctx.shard, work, |shard, tp, (_, offset)| async move {
        let partition = match led_partition(&shard, tp) {
            Ok(p) => p,
            Err(e) => return (Some(e), -1),
        };
        let high_watermark = partition.high_watermark();
        let target = if offset == TO_HIGH_WATERMARK {
            high_watermark
        } else {
            offset
        };
        if target < 0 || target > high_watermark {
            return (Some(ResponseError::OffsetOutOfRange), -1);
        }
        if target <= partition.log.log_start_offset().0 {
            return (None, partition.log.log_start_offset().0);
        }
        match partition.log.delete_records_before(Offset(target)).await {
            Ok(low_watermark) => (None, low_watermark.0),
            Err(e) => (Some(engine_error(&e)), -1),
        }
    })
    .await;
    for (slot, answer) in slots.into_iter().zip(results) {
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
