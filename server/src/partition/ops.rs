//! The small questions a request asks of each partition it names, answered on the shard
//! that owns the partition: a typed [`PartitionOp`] in, the [`PartitionAnswer`] of the same
//! name out. `node::partitions::on_owners` sends them, one call per owning shard.

use kafka_protocol::ResponseError;
use wharf_engine::Offset;
use wharf_protocol::legacy::list_offsets::{PartitionOffsets, PartitionQuery};

use crate::errors::engine_error;
use crate::metadata::TopicPartition;
use crate::node::partitions::led_partition;
use crate::node::Shard;
use crate::partition::offsets::{self, Found, Query};

/// DeleteRecords' offset meaning "up to the high watermark".
pub const TO_HIGH_WATERMARK: i64 = -1;
/// OffsetForLeaderEpoch's answer when the epoch is not known.
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;

/// One partition's question.
#[derive(Clone, Debug)]
pub enum PartitionOp {
    /// ListOffsets v1+.
    ListOffsets(Query),
    /// ListOffsets v0.
    LegacyOffsets(PartitionQuery),
    /// DeleteRecords: move the log start to `before` (or the high watermark).
    DeleteRecords { before: i64 },
    /// DescribeLogDirs: the bytes the partition's log holds on disk.
    LogSize,
    /// OffsetForLeaderEpoch: where `wanted` ended, checked against the client's epoch.
    LeaderEpochEnd { current: i32, wanted: i32 },
}

/// One partition's answer, in the variant named as its question.
#[derive(Clone, Debug)]
pub enum PartitionAnswer {
    ListOffsets(Found),
    LegacyOffsets(PartitionOffsets),
    /// The error, or the new log start (low watermark).
    DeleteRecords((Option<ResponseError>, i64)),
    /// `None` when this shard does not hold the partition.
    LogSize(Option<i64>),
    /// The error, or the epoch and its end offset.
    LeaderEpochEnd((Option<ResponseError>, i32, i64)),
}

impl PartitionAnswer {
    pub fn name(&self) -> &'static str {
        match self {
            PartitionAnswer::ListOffsets(_) => "ListOffsets",
            PartitionAnswer::LegacyOffsets(_) => "LegacyOffsets",
            PartitionAnswer::DeleteRecords(_) => "DeleteRecords",
            PartitionAnswer::LogSize(_) => "LogSize",
            PartitionAnswer::LeaderEpochEnd(_) => "LeaderEpochEnd",
        }
    }
}

/// Runs on the owning shard: answers `op` for `tp`.
pub(crate) async fn answer(shard: &Shard, tp: TopicPartition, op: PartitionOp) -> PartitionAnswer {
    match op {
        PartitionOp::ListOffsets(query) => {
            PartitionAnswer::ListOffsets(offsets::lookup(shard, tp, query).await)
        }
        PartitionOp::LegacyOffsets(query) => {
            PartitionAnswer::LegacyOffsets(offsets::legacy_offsets(shard, tp, &query).await)
        }
        PartitionOp::DeleteRecords { before } => {
            PartitionAnswer::DeleteRecords(delete_records(shard, tp, before).await)
        }
        PartitionOp::LogSize => PartitionAnswer::LogSize(
            shard
                .partitions
                .get(tp)
                .map(|p| i64::try_from(p.log.size_bytes()).unwrap_or(i64::MAX)),
        ),
        PartitionOp::LeaderEpochEnd { current, wanted } => {
            PartitionAnswer::LeaderEpochEnd(leader_epoch_end(shard, tp, current, wanted))
        }
    }
}

async fn delete_records(
    shard: &Shard,
    tp: TopicPartition,
    before: i64,
) -> (Option<ResponseError>, i64) {
    let partition = match led_partition(shard, tp) {
        Ok(p) => p,
        Err(e) => return (Some(e), -1),
    };
    let high_watermark = partition.high_watermark();
    let target = if before == TO_HIGH_WATERMARK {
        high_watermark
    } else {
        before
    };
    if target < 0 || target > high_watermark {
        return (Some(ResponseError::OffsetOutOfRange), -1);
    }
    if target <= partition.log.log_start_offset().0 {
        return (None, partition.log.log_start_offset().0);
    }
    match partition.log.delete_records_before(Offset(target)).await {
        Ok(low_watermark) => {
            partition.txns.after_log_start_moved(&partition.log).await;
            (None, low_watermark.0)
        }
        Err(e) => (Some(engine_error(&e)), -1),
    }
}

fn leader_epoch_end(
    shard: &Shard,
    tp: TopicPartition,
    current: i32,
    wanted: i32,
) -> (Option<ResponseError>, i32, i64) {
    let partition = match led_partition(shard, tp) {
        Ok(p) => p,
        Err(e) => return (Some(e), UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET),
    };
    // KIP-320 epoch check, then the replica's epoch history (which holds the current epoch
    // from the moment this node leads in it).
    match partition
        .replica
        .with(|r| r.offset_for_leader_epoch(current, wanted))
    {
        Ok(end) if end.epoch >= 0 => (None, end.epoch, end.end_offset),
        Ok(_) => (None, UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET),
        Err(error) => (Some(error), UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET),
    }
}
