//! ListOffsets: an offset per partition by timestamp, or the earliest, latest and
//! max-timestamp offsets (KIP-734).

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ApiKey, ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use super::errors::engine_error;
use super::{check_leader_epoch, on_owners, HandlerResult, RequestContext, SlotWork};
use crate::metadata::{TopicPartition, LEADER_EPOCH};
use crate::shard::Shard;

/// Kafka's special timestamps.
pub const LATEST_TIMESTAMP: i64 = -1;
pub const EARLIEST_TIMESTAMP: i64 = -2;
/// KIP-734 (v7+).
pub const MAX_TIMESTAMP: i64 = -3;
/// KIP-405 (v8+): without tiered storage, the local log start is the log start.
pub const EARLIEST_LOCAL_TIMESTAMP: i64 = -4;

/// Offset and timestamp Kafka returns when nothing matches.
const UNKNOWN: i64 = -1;

#[derive(Clone, Copy)]
struct Query {
    timestamp: i64,
    current_leader_epoch: i32,
    read_committed: bool,
}

#[derive(Clone, Copy, Debug)]
struct Found {
    error: Option<ResponseError>,
    offset: i64,
    timestamp: i64,
    leader_epoch: i32,
}

impl Found {
    fn error(error: ResponseError) -> Found {
        Found {
            error: Some(error),
            offset: UNKNOWN,
            timestamp: UNKNOWN,
            leader_epoch: -1,
        }
    }
    fn at(offset: i64, timestamp: i64) -> Found {
        Found {
            error: None,
            offset,
            timestamp,
            leader_epoch: LEADER_EPOCH.0,
        }
    }
}

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: ListOffsetsRequest = ctx.decode(ApiKey::ListOffsets, &mut body)?;
    let read_committed = request.isolation_level == 1;
    let image = ctx.shard.metadata();
    let mut answers: Vec<Vec<Option<Found>>> = Vec::new();
    let mut work: SlotWork<Query> = Vec::new();
    for (ti, topic) in request.topics.iter().enumerate() {
        let meta = image.topic(topic.name.0.as_str());
        let mut row = Vec::new();
        for (pi, p) in topic.partitions.iter().enumerate() {
            match meta.and_then(|t| t.partition(p.partition_index)) {
                Some(tp) => {
                    let query = Query {
                        timestamp: p.timestamp,
                        current_leader_epoch: p.current_leader_epoch,
                        read_committed,
                    };
                    work.push((tp, ((ti, pi), query)));
                    row.push(None);
                }
                _ => row.push(Some(Found::error(ResponseError::UnknownTopicOrPartition))),
            }
        }
        answers.push(row);
    }
    let slots: Vec<(usize, usize)> = work.iter().map(|(_, (slot, _))| *slot).collect();
    let results = on_owners(&ctx.shard, work, |shard, tp, (_, query)| async move {
        lookup(&shard, tp, query).await
    })
    .await;
    for (slot, found) in slots.into_iter().zip(results) {
        answers[slot.0][slot.1] =
            Some(found.unwrap_or(Found::error(ResponseError::RequestTimedOut)));
    }

    let mut response = ListOffsetsResponse::default();
    response.topics = request
        .topics
        .into_iter()
        .zip(answers)
        .map(|(topic, row)| {
            let mut t = ListOffsetsTopicResponse::default();
            t.name = topic.name;
            t.partitions = topic
                .partitions
                .iter()
                .zip(row)
                .map(|(p, found)| {
                    let found = found.unwrap_or(Found::error(ResponseError::UnknownServerError));
                    let mut r = ListOffsetsPartitionResponse::default();
                    r.partition_index = p.partition_index;
                    r.error_code = found.error.map_or(0, |e| e.code());
                    r.offset = found.offset;
                    r.timestamp = found.timestamp;
                    if ctx.api_version >= 4 {
                        r.leader_epoch = found.leader_epoch;
                    }
                    r
                })
                .collect();
            t
        })
        .collect();
    ctx.respond(ApiKey::ListOffsets, &response)
}

async fn lookup(shard: &Shard, tp: TopicPartition, query: Query) -> Found {
    let Some(partition) = shard.partitions.get(tp) else {
        return Found::error(ResponseError::UnknownTopicOrPartition);
    };
    if let Some(error) = check_leader_epoch(query.current_leader_epoch) {
        return Found::error(error);
    }
    let log = &partition.log;
    match query.timestamp {
        LATEST_TIMESTAMP => {
            let end = if query.read_committed {
                partition.last_stable_offset()
            } else {
                partition.high_watermark()
            };
            Found::at(end, UNKNOWN)
        }
        EARLIEST_TIMESTAMP | EARLIEST_LOCAL_TIMESTAMP => {
            Found::at(log.log_start_offset().0, UNKNOWN)
        }
        MAX_TIMESTAMP => match log.max_timestamp() {
            Some((timestamp, offset)) => Found::at(offset.0, timestamp),
            None => Found {
                error: None,
                offset: UNKNOWN,
                timestamp: UNKNOWN,
                leader_epoch: -1,
            },
        },
        t if t >= 0 => match log.offset_for_timestamp(t).await {
            Ok(Some((offset, timestamp))) => Found::at(offset.0, timestamp),
            Ok(None) => Found {
                error: None,
                offset: UNKNOWN,
                timestamp: UNKNOWN,
                leader_epoch: -1,
            },
            Err(e) => Found::error(engine_error(&e)),
        },
        _ => Found::error(ResponseError::InvalidRequest),
    }
}
