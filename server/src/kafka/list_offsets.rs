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

use super::{
    check_leader_epoch, led_partition, on_owners, HandlerError, HandlerResult, Reply,
    RequestContext, SlotWork,
};
use crate::errors::engine_error;
use crate::metadata::TopicPartition;
use crate::node::Shard;
use crate::replica::OffsetQuery;

/// Kafka's special timestamps.
pub const LATEST_TIMESTAMP: i64 = -1;
pub const EARLIEST_TIMESTAMP: i64 = -2;
/// KIP-734 (v7+).
pub const MAX_TIMESTAMP: i64 = -3;
/// KIP-405 (v8+): without tiered storage, the local log start is the log start.
pub const EARLIEST_LOCAL_TIMESTAMP: i64 = -4;
/// KIP-1005 (v9+): the last offset in tiered storage; without it, none (-1).
pub const LATEST_TIERED_TIMESTAMP: i64 = -5;

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
            leader_epoch: -1,
        }
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

async fn lookup(shard: &Shard, tp: TopicPartition, query: Query) -> Found {
    let partition = match led_partition(shard, tp) {
        Ok(p) => p,
        Err(e) => return Found::error(e),
    };
    if let Some(error) = check_leader_epoch(&partition, query.current_leader_epoch) {
        return Found::error(error);
    }
    let mut found = lookup_offset(&partition, query).await;
    // The leader epoch of the offset found (KIP-320), from the replica's epoch history.
    if found.error.is_none() && found.offset >= 0 && found.leader_epoch == -1 {
        found.leader_epoch = partition.replica.with(|r| {
            r.epochs()
                .entries()
                .iter()
                .take_while(|(_, start)| *start <= found.offset)
                .last()
                .map_or(-1, |(epoch, _)| *epoch)
        });
    }
    found
}

/// The offset for `query` on the leader: the log is searched, and the replica says what
/// of it a client may be told (KIP-207: nothing past where it may fetch, and not the
/// latest offset while a new leader's high watermark is behind its epoch start).
async fn lookup_offset(partition: &crate::partition::PartitionHandle, query: Query) -> Found {
    let log = &partition.log;
    let none = Found {
        error: None,
        offset: UNKNOWN,
        timestamp: UNKNOWN,
        leader_epoch: -1,
    };
    let (offset_query, timestamp) = match query.timestamp {
        LATEST_TIMESTAMP => (OffsetQuery::Latest, UNKNOWN),
        EARLIEST_TIMESTAMP | EARLIEST_LOCAL_TIMESTAMP => (
            OffsetQuery::Earliest {
                log_start_offset: log.log_start_offset().0,
            },
            UNKNOWN,
        ),
        // No tiered storage: no offset, as Kafka answers without remote storage.
        LATEST_TIERED_TIMESTAMP => return none,
        MAX_TIMESTAMP => match log.max_timestamp() {
            Some((timestamp, offset)) => (
                OffsetQuery::Search {
                    found: Some(offset.0),
                },
                timestamp,
            ),
            None => (OffsetQuery::Search { found: None }, UNKNOWN),
        },
        t if t >= 0 => match log.offset_for_timestamp(t).await {
            Ok(Some((offset, timestamp))) => (
                OffsetQuery::Search {
                    found: Some(offset.0),
                },
                timestamp,
            ),
            Ok(None) => (OffsetQuery::Search { found: None }, UNKNOWN),
            Err(e) => return Found::error(engine_error(&e)),
        },
        _ => return Found::error(ResponseError::InvalidRequest),
    };
    let last_fetchable_offset = if query.read_committed {
        partition.last_stable_offset()
    } else {
        partition.high_watermark()
    };
    match partition
        .replica
        .with(|r| r.listed_offset(offset_query, last_fetchable_offset))
    {
        Ok(Some(offset)) => Found::at(offset, timestamp),
        Ok(None) => none,
        Err(error) => Found::error(error),
    }
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
    let results = on_owners(&ctx.shard, work, |shard, tp, (_, query)| async move {
        legacy_offsets(&shard, tp, &query).await
    })
    .await;
    for (slot, found) in slots.into_iter().zip(results) {
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

fn offsets_error(partition_index: i32, error: ResponseError) -> PartitionOffsets {
    PartitionOffsets {
        partition_index,
        error_code: error.code(),
        offsets: Vec::new(),
    }
}

/// Kafka's `legacyFetchOffsetsBefore`: the segments' base offsets (never below the log
/// start) with their files' modification times, then the log end stamped "now" if the
/// active segment holds data; the answer starts at the latest of those at or before the
/// timestamp (the last for -1, the first for -2) and walks back, at most
/// `max_num_offsets` of them.
async fn legacy_offsets(
    shard: &Shard,
    tp: TopicPartition,
    query: &PartitionQuery,
) -> PartitionOffsets {
    let answer = |offsets| PartitionOffsets {
        partition_index: query.partition_index,
        error_code: 0,
        offsets,
    };
    let partition = match led_partition(shard, tp) {
        Ok(p) => p,
        Err(e) => return offsets_error(query.partition_index, e),
    };
    // Negative timestamps other than latest and earliest are newer versions' (KIP-734...).
    if query.timestamp < EARLIEST_TIMESTAMP {
        return offsets_error(query.partition_index, ResponseError::UnsupportedVersion);
    }
    let max = usize::try_from(query.max_num_offsets).unwrap_or(0);
    let log_start = partition.log.log_start_offset().0;
    let log_end = partition.high_watermark();
    if max == 0 {
        return answer(Vec::new());
    }
    // The common questions need no look at the files.
    if query.timestamp == EARLIEST_TIMESTAMP {
        return answer(vec![log_start]);
    }
    if query.timestamp == LATEST_TIMESTAMP && max == 1 {
        return answer(vec![log_end]);
    }
    let dir = partition.dir.clone();
    drop(partition);
    let segments = glommio::executor()
        .spawn_blocking(move || segment_files(&dir))
        .await;
    let mut points: Vec<(i64, i64)> = segments
        .into_iter()
        .filter(|(base, _)| *base <= log_end)
        .map(|(base, mtime_ms)| (base.max(log_start), mtime_ms))
        .collect();
    let active_has_data = points.last().is_none_or(|(base, _)| *base < log_end);
    if active_has_data {
        points.push((log_end, crate::shard::now_ms()));
    }
    let start = match query.timestamp {
        LATEST_TIMESTAMP => points.len().checked_sub(1),
        t => points.iter().rposition(|(_, time)| *time <= t),
    };
    let Some(start) = start else {
        return answer(Vec::new());
    };
    let offsets: Vec<i64> = points[..=start]
        .iter()
        .rev()
        .take(max)
        .map(|(offset, _)| *offset)
        .collect();
    answer(offsets)
}

/// The segments in a partition directory: (base offset, modification time in ms), by base
/// offset. Unreadable entries are skipped.
fn segment_files(dir: &std::path::Path) -> Vec<(i64, i64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut segments: Vec<(i64, i64)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let base: i64 = name.to_str()?.strip_suffix(".log")?.parse().ok()?;
            let modified = entry.metadata().ok()?.modified().ok()?;
            let mtime_ms = modified
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            Some((base, mtime_ms))
        })
        .collect();
    segments.sort_unstable();
    segments
}
