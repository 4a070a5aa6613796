//! ListOffsets: an offset per partition by timestamp, or the earliest, latest and
//! max-timestamp offsets (KIP-734).
//!
//! v0 (Burrow 1.2, 0.8/0.9-era clients) asks for up to `max_num_offsets` offsets at or
//! before a time and gets segment boundaries, as Kafka's `legacyFetchOffsetsBefore` gave:
//! the log end and the base offsets of the segments, newest first, chosen by the
//! segments' file modification times.
//!
//! v1+ answers a client as Kafka's `Partition.fetchOffsetForTimestamp` does: a search by
//! timestamp finds only offsets below where the client may fetch (the high watermark, or
//! the last stable offset for read_committed), and while a new leader's high watermark is
//! still behind the start of its epoch (KIP-207) the latest offset is OFFSET_NOT_AVAILABLE
//! (LEADER_NOT_AVAILABLE before v5), which clients retry. The replica decides
//! ([`crate::replica::ReplicaState::listed_offset`]).

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ApiKey, ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use wharf_protocol::legacy::list_offsets::{
    self as v0, ListOffsetsV0Response, PartitionOffsets, PartitionQuery,
};

use super::{on_owners, HandlerError, HandlerResult, Reply, RequestContext, SlotWork};
use crate::partition::offsets::{
    offsets_error, Found, Query, EARLIEST_LOCAL_TIMESTAMP, EARLIEST_TIMESTAMP,
    LATEST_TIERED_TIMESTAMP, LATEST_TIMESTAMP, MAX_TIMESTAMP,
};
use crate::partition::ops::{PartitionAnswer, PartitionOp};
use crate::reply;

/// The first ListOffsets version that knows a special (negative) timestamp, as Kafka
/// checks it; older versions asking for it get UNSUPPORTED_VERSION.
fn min_version_for(timestamp: i64) -> Option<i16> {
    match timestamp {
        LATEST_TIMESTAMP | EARLIEST_TIMESTAMP => Some(1),
        MAX_TIMESTAMP => Some(7),
        EARLIEST_LOCAL_TIMESTAMP => Some(8),
        LATEST_TIERED_TIMESTAMP => Some(9),
        _ => None,
    }
}

/// KIP-207 added OFFSET_NOT_AVAILABLE in v5; older versions get LEADER_NOT_AVAILABLE, which
/// their clients retry too (Kafka's `handleListOffsetRequestV1AndAbove`).
fn error_for_version(error: ResponseError, api_version: i16) -> ResponseError {
    match error {
        ResponseError::OffsetNotAvailable if api_version < 5 => ResponseError::LeaderNotAvailable,
        e => e,
    }
}

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    if ctx.api_version == 0 {
        return handle_v0(ctx, body).await;
    }
    let request: ListOffsetsRequest = ctx.decode(ApiKey::ListOffsets, &mut body)?;
    let read_committed = request.isolation_level == 1;
    let image = ctx.shard.metadata();
    let mut answers: Vec<Vec<Option<Found>>> = Vec::new();
    let mut work: SlotWork<Query> = Vec::new();
    for (ti, topic) in request.topics.iter().enumerate() {
        let meta = image.topic(topic.name.0.as_str());
        let mut row = Vec::new();
        for (pi, p) in topic.partitions.iter().enumerate() {
            let supported = p.timestamp >= 0
                || min_version_for(p.timestamp).is_some_and(|min| ctx.api_version >= min);
            match meta.and_then(|t| t.partition(p.partition_index)) {
                Some(_) if !supported => {
                    row.push(Some(Found::error(ResponseError::UnsupportedVersion)))
                }
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
    let ops = work
        .into_iter()
        .map(|(tp, (_, query))| (tp, PartitionOp::ListOffsets(query)))
        .collect();
    let results = on_owners(&ctx.shard, ops).await;
    for (slot, found) in slots.into_iter().zip(results) {
        let found = found.map(|a| reply!(a, PartitionAnswer::ListOffsets));
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
                    r.error_code = found
                        .error
                        .map_or(0, |e| error_for_version(e, ctx.api_version).code());
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

/// ListOffsets v0: offsets newest first, per partition.
async fn handle_v0(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request = v0::decode_v0(&mut body).map_err(|e| HandlerError::Decode {
        api: ApiKey::ListOffsets,
        version: 0,
        reason: e.to_string(),
    })?;
    let image = ctx.shard.metadata();
    let mut answers: Vec<Vec<Option<PartitionOffsets>>> = Vec::new();
    let mut work: SlotWork<PartitionQuery> = Vec::new();
    for (ti, (name, partitions)) in request.topics.iter().enumerate() {
        let meta = image.topic(name);
        let mut row = Vec::new();
        for (pi, p) in partitions.iter().enumerate() {
            match meta.and_then(|t| t.partition(p.partition_index)) {
                Some(tp) => {
                    work.push((tp, ((ti, pi), p.clone())));
                    row.push(None);
                }
                None => row.push(Some(offsets_error(
                    p.partition_index,
                    ResponseError::UnknownTopicOrPartition,
                ))),
            }
        }
        answers.push(row);
    }
    let slots: Vec<(usize, usize)> = work.iter().map(|(_, (slot, _))| *slot).collect();
    let ops = work
        .into_iter()
        .map(|(tp, (_, query))| (tp, PartitionOp::LegacyOffsets(query)))
        .collect();
    let results = on_owners(&ctx.shard, ops).await;
    for (slot, found) in slots.into_iter().zip(results) {
        let found = found.map(|a| reply!(a, PartitionAnswer::LegacyOffsets));
        let index = request.topics[slot.0].1[slot.1].partition_index;
        answers[slot.0][slot.1] =
            Some(found.unwrap_or_else(|| offsets_error(index, ResponseError::RequestTimedOut)));
    }
    let response: ListOffsetsV0Response = request
        .topics
        .into_iter()
        .zip(answers)
        .map(|((name, partitions), row)| {
            let row = partitions
                .iter()
                .zip(row)
                .map(|(p, a)| {
                    let a = a.unwrap_or_else(|| {
                        offsets_error(p.partition_index, ResponseError::UnknownServerError)
                    });
                    if a.error_code != 0 {
                        ctx.note_error();
                    }
                    a
                })
                .collect();
            (name, row)
        })
        .collect();
    wharf_protocol::legacy::encode_frame(ctx.correlation_id, |out| v0::encode_v0(&response, out))
        .map(Reply::Frame)
        .map_err(|e| HandlerError::Encode(e.to_string()))
}
