//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use wharf_engine::{BatchCache, Durability, LogConfig, Offset, PartitionLog};
use wharf_protocol::batch::{batches, validate_batch_with, BatchBuilder, CountRule};

/// Runs `fut` on a fresh glommio executor on this thread.
pub fn run<T: 'static>(fut: impl Future<Output = T> + 'static) -> T {
    glommio::LocalExecutorBuilder::default()
        .io_memory(
            std::env::var("IOMEM")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(10 << 20),
        )
        .make()
        .expect("a glommio executor")
        .run(fut)
}

/// A batch of `records` records of `value_bytes` each, every record stamped `timestamp_ms`.
pub fn batch(records: usize, value_bytes: usize, timestamp_ms: i64) -> Bytes {
    Bytes::from(wharf_protocol::batch::simple_batch(
        records,
        value_bytes,
        timestamp_ms,
    ))
}

/// A batch whose record values encode `tag`, so batches can be told apart byte for byte.
pub fn tagged_batch(tag: u64, records: usize, value_bytes: usize, timestamp_ms: i64) -> Bytes {
    let mut builder = BatchBuilder::new();
    for i in 0..records {
        let mut value = vec![0u8; value_bytes.max(16)];
        value[..8].copy_from_slice(&tag.to_be_bytes());
        value[8..16].copy_from_slice(&(i as u64).to_be_bytes());
        builder.push(
            Some(&tag.to_be_bytes()),
            Some(&value),
            &[],
            timestamp_ms + i as i64,
        );
    }
    Bytes::from(builder.build())
}

pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        index_interval_bytes: 1024,
        preallocate_bytes: 256 << 10,
        ..LogConfig::default()
    }
}

pub async fn open(dir: &Path, config: LogConfig) -> PartitionLog {
    PartitionLog::open(dir.to_path_buf(), config, BatchCache::new(64 << 20))
        .await
        .expect("open the log")
}

pub async fn open_with_cache(dir: &Path, config: LogConfig, cache: Rc<BatchCache>) -> PartitionLog {
    PartitionLog::open(dir.to_path_buf(), config, cache)
        .await
        .expect("open the log")
}

pub async fn append(log: &PartitionLog, bytes: Bytes, durability: Durability) -> (i64, i64) {
    let info = log.append(bytes, 0, durability).await.expect("append");
    (info.base_offset.0, info.last_offset.0)
}

/// Every batch of the log from `from`, as `(base offset, bytes)`.
pub async fn read_all(log: &PartitionLog, from: i64) -> Vec<(i64, Bytes)> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let bytes = log.read(Offset(next), 256 << 10).await.expect("read");
        if bytes.is_empty() {
            return out;
        }
        for (pos, b) in batches(&bytes) {
            let info = validate_batch_with(b, usize::MAX, CountRule::AtMost)
                .expect("reads return valid batches");
            out.push((info.base_offset, bytes.slice(pos..pos + b.len())));
            next = info.last_offset() + 1;
        }
    }
}

/// The batch as the log stores it: producer bytes with baseOffset and epoch rewritten.
pub fn as_stored(bytes: &Bytes, base_offset: i64, epoch: i32) -> Bytes {
    let mut v = bytes.to_vec();
    wharf_protocol::batch::set_base_offset(&mut v, base_offset);
    wharf_protocol::batch::set_partition_leader_epoch(&mut v, epoch);
    Bytes::from(v)
}

/// Leader epoch and tag stride of the crash test: tag = round * TAGS_PER_ROUND + n.
pub const TAGS_PER_ROUND: u64 = 1_000_000;

/// The batch the crash writer appends for `tag`; the crash test regenerates it to compare
/// byte for byte.
pub fn crash_batch(tag: u64) -> Bytes {
    let records = 1 + (tag % 5) as usize;
    let value_bytes = ((tag * 7919) % 12_000) as usize;
    tagged_batch(tag, records, value_bytes, tag as i64)
}

pub fn crash_config() -> LogConfig {
    LogConfig {
        segment_bytes: 128 << 10,
        index_interval_bytes: 4096,
        preallocate_bytes: 1 << 20,
        ..LogConfig::default()
    }
}
