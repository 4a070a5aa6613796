//! ListOffsets on the shard that owns the partition: the leader's search of its log by
//! timestamp (v1+, with what the replica allows a client to be told, KIP-207), and v0's
//! segment boundaries (Kafka's `legacyFetchOffsetsBefore`). The handler
//! (`kafka::list_offsets`) checks versions and answers; this is the data plane's side.

use kafka_protocol::ResponseError;
use wharf_protocol::legacy::list_offsets::{PartitionOffsets, PartitionQuery};

use crate::errors::engine_error;
use crate::metadata::TopicPartition;
use crate::node::partitions::{check_leader_epoch, led_partition};
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

/// Offset and timestamp Kafka returns when nothing matches.
const UNKNOWN: i64 = -1;

/// One partition's ListOffsets (v1+) question.
#[derive(Clone, Copy, Debug)]
pub struct Query {
    pub timestamp: i64,
    pub current_leader_epoch: i32,
    pub read_committed: bool,
}

/// One partition's ListOffsets (v1+) answer.
#[derive(Clone, Copy, Debug)]
pub struct Found {
    pub error: Option<ResponseError>,
    pub offset: i64,
    pub timestamp: i64,
    pub leader_epoch: i32,
}

impl Found {
    pub fn error(error: ResponseError) -> Found {
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

/// Runs on the owning shard: the leader's answer to one partition's question.
pub(crate) async fn lookup(shard: &Shard, tp: TopicPartition, query: Query) -> Found {
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

pub fn offsets_error(partition_index: i32, error: ResponseError) -> PartitionOffsets {
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
pub(crate) async fn legacy_offsets(
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
