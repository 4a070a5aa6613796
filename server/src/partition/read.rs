//! A Fetch request's reads on the shard that owns the partitions: the leader's checks
//! (leadership, KIP-320's leader epoch, the offset's range), the read up to the high
//! watermark (or the last stable offset for read_committed) within the response's bytes,
//! and the aborted transactions a read_committed consumer skips. The handler
//! (`kafka::fetch`) decodes, converts and answers; this is the data plane's side.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use wharf_engine::Offset;
use wharf_protocol::batch::LOG_OVERHEAD_BYTES;

use crate::errors::engine_error;
use crate::metadata::TopicPartition;
use crate::node::partitions::{check_leader_epoch, led_partition};
use crate::node::Shard;

/// One partition's read request, as sent to its owning shard.
#[derive(Copy, Clone, Debug)]
pub struct ReadSpec {
    /// Position among the request's distinct partitions.
    pub slot: usize,
    pub fetch_offset: i64,
    pub partition_max_bytes: usize,
    pub current_leader_epoch: i32,
}

/// One partition's read result.
#[derive(Clone, Debug)]
pub struct PartitionRead {
    pub error: Option<ResponseError>,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    pub records: Bytes,
    /// read_committed: the aborted transactions overlapping the records, as
    /// (producer id, first offset).
    pub aborted: Vec<(i64, i64)>,
}

impl PartitionRead {
    pub fn error(error: ResponseError) -> PartitionRead {
        PartitionRead {
            error: Some(error),
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            records: Bytes::new(),
            aborted: Vec::new(),
        }
    }
}

/// One owning shard's part of a Fetch request: its partitions with their index in the
/// request, and what bounds the read.
pub struct ReadCall {
    pub items: Vec<(TopicPartition, (usize, ReadSpec))>,
    pub max_bytes: usize,
    pub read_committed: bool,
}

/// Runs on the owning shard: reads each partition in order, within the request's bytes.
pub(crate) async fn read_on_owner(
    shard: Rc<Shard>,
    call: ReadCall,
) -> Vec<(usize, ReadSpec, PartitionRead)> {
    let ReadCall {
        items,
        max_bytes,
        read_committed,
    } = call;
    let mut budget = max_bytes;
    let mut results = Vec::with_capacity(items.len());
    for (tp, (i, spec)) in items {
        let read = read_partition(&shard, tp, &spec, budget, read_committed).await;
        budget = budget.saturating_sub(read.records.len());
        results.push((i, spec, read));
    }
    results
}

async fn read_partition(
    shard: &Shard,
    tp: TopicPartition,
    spec: &ReadSpec,
    budget: usize,
    read_committed: bool,
) -> PartitionRead {
    let partition = match led_partition(shard, tp) {
        Ok(p) => p,
        Err(e) => return PartitionRead::error(e),
    };
    // KIP-320: the client's view of the leader epoch must match ours.
    if let Some(error) = check_leader_epoch(&partition, spec.current_leader_epoch) {
        return PartitionRead::error(error);
    }
    let high_watermark = partition.high_watermark();
    let last_stable_offset = partition.last_stable_offset();
    let log_start_offset = partition.log.log_start_offset().0;
    let visible_end = if read_committed {
        last_stable_offset
    } else {
        high_watermark
    };
    // Out of range only past the log end, as Kafka: between the high watermark and the log
    // end (a new leader whose followers have not caught up yet) the fetch waits for data.
    let log_end_offset = partition
        .replica
        .with(|r| r.log_end_offset())
        .max(high_watermark);
    if spec.fetch_offset < log_start_offset || spec.fetch_offset > log_end_offset {
        return PartitionRead {
            error: Some(ResponseError::OffsetOutOfRange),
            high_watermark,
            last_stable_offset,
            log_start_offset,
            records: Bytes::new(),
            aborted: Vec::new(),
        };
    }
    // A shard that has read a whole response's worth already has nothing to add: the
    // response is full (its first batch is elsewhere in it).
    let records = if spec.fetch_offset >= visible_end || budget == 0 {
        Bytes::new()
    } else {
        match partition
            .log
            .read(
                Offset(spec.fetch_offset),
                spec.partition_max_bytes.min(budget),
            )
            .await
        {
            Ok(mut records) => {
                // Never past what is written (the engine also holds batches in flight).
                records.truncate(batches_before(&records, visible_end));
                records
            }
            Err(e) => {
                // The read may have moved the log start (past damage it found): the
                // reader is told where the log starts now.
                return PartitionRead {
                    error: Some(engine_error(&e)),
                    high_watermark,
                    last_stable_offset,
                    log_start_offset: partition.log.log_start_offset().0,
                    records: Bytes::new(),
                    aborted: Vec::new(),
                };
            }
        }
    };
    // KIP-98: the consumer drops the records of these transactions (it finds their ABORT
    // markers in the records).
    let aborted = if read_committed && !records.is_empty() {
        partition
            .txns
            .aborted_in_range(spec.fetch_offset, visible_end)
            .into_iter()
            .map(|a| (a.producer_id, a.first_offset))
            .collect()
    } else {
        Vec::new()
    };
    PartitionRead {
        error: None,
        high_watermark,
        last_stable_offset,
        log_start_offset,
        records,
        aborted,
    }
}

/// Bytes of the whole batches at the start of `records` whose base offset is below `end`.
pub(crate) fn batches_before(records: &[u8], end: i64) -> usize {
    let mut at = 0;
    while let Some(len) = batch_len_at(records, at) {
        let base_offset = i64::from_be_bytes(records[at..at + 8].try_into().expect("8 bytes"));
        if base_offset >= end || at + len > records.len() {
            break;
        }
        at += len;
    }
    at
}

/// The size of the batch starting at `at` (offset, length, then `length` bytes).
pub(crate) fn batch_len_at(records: &[u8], at: usize) -> Option<usize> {
    let header = records.get(at..at + LOG_OVERHEAD_BYTES)?;
    let length = i32::from_be_bytes(header[8..12].try_into().expect("4 bytes"));
    (length >= 0).then(|| LOG_OVERHEAD_BYTES + length as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base_offset: i64, len_after_header: usize) -> Vec<u8> {
        let mut b = vec![0u8; LOG_OVERHEAD_BYTES + len_after_header];
        b[0..8].copy_from_slice(&base_offset.to_be_bytes());
        b[8..12].copy_from_slice(&(len_after_header as i32).to_be_bytes());
        b
    }

    #[test]
    fn reads_stop_at_the_high_watermark() {
        let mut records = batch(5, 20);
        records.extend(batch(9, 20));
        assert_eq!(batches_before(&records, 9), 32);
        assert_eq!(batches_before(&records, 10), 64);
        assert_eq!(batches_before(&records, 5), 0);
    }

    #[test]
    fn records_stop_at_a_torn_batch() {
        let mut records = batch(0, 20);
        records.extend(batch(3, 20));
        assert_eq!(batches_before(&records, 3), 32);
        assert_eq!(batches_before(&records, 4), 64);
        records.extend([0u8; 5]);
        assert_eq!(batches_before(&records, 100), 64);
    }
}
