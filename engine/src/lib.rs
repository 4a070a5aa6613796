//! The storage engine: per-partition, append-only logs of Kafka RecordBatch v2 in Kafka's
//! on-disk layout, written with direct I/O on the calling shard's glommio executor.
//!
//! It never touches the network and never decodes individual records on the append path;
//! it must never serve a batch it has not validated, nor lose a batch it has reported durable.

// ---------------------------------------------------------------------------------------
// PUBLIC API CONTRACT. The server is written against these names and signatures while the
// engine is being built: bodies may change freely, signatures only by adding. Move the
// items into their own modules (`log.rs`, `segment.rs`, `cache.rs`, ...) as they are built
// and re-export them here.
// ---------------------------------------------------------------------------------------

use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;

/// A Kafka offset. Offsets in a partition are dense and only ever grow.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub i64);

/// How a record batch's timestamps are set (`message.timestamp.type`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum TimestampType {
    #[default]
    CreateTime,
    LogAppendTime,
}

/// Per-partition configuration, with Kafka's topic config names and defaults.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// `segment.bytes`: roll the active segment when it would exceed this size.
    pub segment_bytes: u64,
    /// `segment.ms`: roll the active segment when its first batch is this old.
    pub segment_ms: u64,
    /// `retention.ms`: delete whole segments whose newest record is older; -1 = forever.
    pub retention_ms: i64,
    /// `retention.bytes`: delete oldest segments while the log is larger; -1 = unlimited.
    pub retention_bytes: i64,
    /// `max.message.bytes`: the largest record batch accepted.
    pub max_message_bytes: u32,
    /// `index.interval.bytes`: bytes of log between two sparse index entries.
    pub index_interval_bytes: u32,
    /// `message.timestamp.type`.
    pub message_timestamp_type: TimestampType,
    /// Segment files grow in preallocated extents of this many bytes.
    pub preallocate_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            index_interval_bytes: 4096,
            message_timestamp_type: TimestampType::CreateTime,
            preallocate_bytes: 16 << 20,
        }
    }
}

/// What an append waits for before it resolves.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The direct-I/O write has completed: survives a crash of the process (acks=1).
    Written,
    /// Written and covered by an `fdatasync`: survives a crash of the machine (acks=all).
    Synced,
}

/// Where an append landed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: Offset,
    pub last_offset: Offset,
    /// The broker's append time when the log uses LogAppendTime, else -1.
    pub log_append_time_ms: i64,
    pub log_start_offset: Offset,
}

/// Typed engine errors; the server maps them to Kafka error codes in one place.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad sizes, bad CRC, bad magic: Kafka's CORRUPT_MESSAGE.
    #[error("corrupt record batch: {0}")]
    CorruptMessage(String),
    /// Well-formed but not acceptable (record count vs lastOffsetDelta, ...): INVALID_RECORD.
    #[error("invalid record batch: {0}")]
    InvalidRecord(String),
    /// A batch larger than `max.message.bytes`: MESSAGE_TOO_LARGE.
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    MessageTooLarge { size: usize, max: u32 },
    /// A read outside [log_start_offset, log_end_offset]: OFFSET_OUT_OF_RANGE.
    #[error("offset {requested} is outside the log [{log_start}, {log_end}]")]
    OffsetOutOfRange { requested: i64, log_start: i64, log_end: i64 },
    /// The log hit an I/O error it cannot vouch past (e.g. a failed fdatasync) and refuses
    /// writes until it is reopened: KAFKA_STORAGE_ERROR.
    #[error("storage error on {path}: {reason}")]
    Storage { path: PathBuf, reason: String },
    #[error("{context}: {source}")]
    Io { context: String, #[source] source: std::io::Error },
}

/// A per-shard cache of recently appended batches with a byte budget, shared by all the
/// shard's partition logs so tail consumers are served from memory.
pub struct BatchCache {
    _budget_bytes: usize,
}

impl BatchCache {
    pub fn new(budget_bytes: usize) -> Rc<BatchCache> {
        Rc::new(BatchCache { _budget_bytes: budget_bytes })
    }
}

/// One partition's log, owned by one shard (`!Send`). Methods take `&self` so that
/// concurrent appends from many connections on the shard can be group-committed; share it
/// as `Rc<PartitionLog>`.
pub struct PartitionLog {
    _dir: PathBuf,
}

impl PartitionLog {
    /// Open (creating if missing) the log in `dir` (`<data>/<topic>-<partition>`), recovering
    /// it: every batch after the last trusted point is validated and a torn or corrupt tail
    /// is truncated.
    pub async fn open(dir: PathBuf, config: LogConfig, cache: Rc<BatchCache>) -> Result<PartitionLog, EngineError> {
        let _ = (config, cache);
        Ok(PartitionLog { _dir: dir })
    }

    /// Append one or more RecordBatch v2 laid end to end (a Produce request's `records`).
    /// All are validated before anything is written; all-or-nothing. Offsets are assigned by
    /// rewriting `baseOffset` (and `partitionLeaderEpoch` to `leader_epoch`).
    pub async fn append(&self, batches: Bytes, leader_epoch: i32, durability: Durability) -> Result<AppendInfo, EngineError> {
        let _ = (batches, leader_epoch, durability);
        todo!("engine append")
    }

    /// Resolves when everything appended before the call is durable; one `fdatasync` serves
    /// every waiter of an I/O cycle.
    pub async fn sync(&self) -> Result<(), EngineError> {
        todo!("engine sync")
    }

    /// Whole batches, in order, starting with the batch that contains `from_offset`, up to
    /// about `max_bytes` (the first batch is returned whole even when larger). Empty at the
    /// log end; `OffsetOutOfRange` outside [log_start_offset, log_end_offset].
    pub async fn read(&self, from_offset: Offset, max_bytes: usize) -> Result<Bytes, EngineError> {
        let _ = (from_offset, max_bytes);
        todo!("engine read")
    }

    /// The first offset still in the log.
    pub fn log_start_offset(&self) -> Offset {
        todo!("engine log_start_offset")
    }

    /// The offset the next appended record will get.
    pub fn log_end_offset(&self) -> Offset {
        todo!("engine log_end_offset")
    }

    /// ListOffsets by timestamp: the earliest offset whose record timestamp is >= `timestamp_ms`,
    /// with that record's timestamp; `None` if every record is older.
    pub async fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(Offset, i64)>, EngineError> {
        let _ = timestamp_ms;
        todo!("engine offset_for_timestamp")
    }

    /// ListOffsets MAX_TIMESTAMP (KIP-734): the largest timestamp in the log and its offset.
    pub fn max_timestamp(&self) -> Option<(i64, Offset)> {
        todo!("engine max_timestamp")
    }

    /// OffsetForLeaderEpoch (KIP-101): the largest epoch <= `leader_epoch` that the log knows
    /// and the offset where it ends (the start of the next epoch, or the log end).
    pub fn end_offset_for_leader_epoch(&self, leader_epoch: i32) -> Option<(i32, Offset)> {
        let _ = leader_epoch;
        todo!("engine end_offset_for_leader_epoch")
    }

    /// Drop every record at or after `offset` (replication: follow the leader's log).
    pub async fn truncate_to(&self, offset: Offset) -> Result<(), EngineError> {
        let _ = offset;
        todo!("engine truncate_to")
    }

    /// DeleteRecords: advance the log start offset to `offset` (deleting whole segments
    /// below it); returns the new log start offset.
    pub async fn delete_records_before(&self, offset: Offset) -> Result<Offset, EngineError> {
        let _ = offset;
        todo!("engine delete_records_before")
    }

    /// Periodic upkeep: roll the active segment when `segment.ms` has passed, and apply
    /// `retention.ms` / `retention.bytes` by deleting whole segments (never the active one).
    pub async fn maintain(&self, now_ms: i64) -> Result<(), EngineError> {
        let _ = now_ms;
        todo!("engine maintain")
    }

    /// Replace the configuration (IncrementalAlterConfigs); applies to later appends and upkeep.
    pub fn set_config(&self, config: LogConfig) {
        let _ = config;
        todo!("engine set_config")
    }

    /// Flush and close every file. Later calls on this log fail.
    pub async fn close(&self) -> Result<(), EngineError> {
        todo!("engine close")
    }

    /// Close and remove the partition's directory (DeleteTopics).
    pub async fn delete(self) -> Result<(), EngineError> {
        todo!("engine delete")
    }
}
