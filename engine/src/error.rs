//! Typed engine errors; the server maps them to Kafka error codes in one place.

use std::path::PathBuf;

use wharf_protocol::batch::{BatchError, BatchErrorKind};

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
    OffsetOutOfRange {
        requested: i64,
        log_start: i64,
        log_end: i64,
    },
    /// The log hit an I/O error it cannot vouch past (e.g. a failed fdatasync) and refuses
    /// writes until it is reopened: KAFKA_STORAGE_ERROR.
    #[error("storage error on {path}: {reason}")]
    Storage { path: PathBuf, reason: String },
    /// An idempotent producer's epoch older than the partition has seen (a fenced
    /// producer): INVALID_PRODUCER_EPOCH.
    #[error("invalid producer epoch: {0}")]
    InvalidProducerEpoch(String),
    /// An idempotent producer's batch that does not follow its last one:
    /// OUT_OF_ORDER_SEQUENCE_NUMBER.
    #[error("out of order sequence number: {0}")]
    OutOfOrderSequence(String),
    /// A control batch from a client, or a transactional batch without a producer id.
    #[error("invalid transactional batch: {0}")]
    InvalidTransactionalBatch(String),
    /// A follower's append of the leader's batches that do not continue its log (an
    /// offset gap or overlap, a leader epoch going back): the replica must truncate or
    /// fetch again, never write them.
    #[error("the leader's batches do not continue this replica's log: {0}")]
    FollowerRefused(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    pub(crate) fn from_batch(err: BatchError, max_message_bytes: u32) -> EngineError {
        match (err.kind(), err) {
            (_, BatchError::TooLarge { size, .. }) => EngineError::MessageTooLarge {
                size,
                max: max_message_bytes,
            },
            (BatchErrorKind::Invalid, err) => EngineError::InvalidRecord(err.to_string()),
            (_, err) => EngineError::CorruptMessage(err.to_string()),
        }
    }

    pub(crate) fn from_producer(err: crate::producer::ProducerError) -> EngineError {
        use crate::producer::ProducerError;
        match err {
            ProducerError::InvalidProducerEpoch(m) => EngineError::InvalidProducerEpoch(m),
            ProducerError::OutOfOrderSequence(m) => EngineError::OutOfOrderSequence(m),
            ProducerError::Transactional(m) => EngineError::InvalidTransactionalBatch(m),
            ProducerError::Invalid(m) => EngineError::InvalidRecord(m),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> EngineError {
        EngineError::Io {
            context: context.into(),
            source,
        }
    }
}
