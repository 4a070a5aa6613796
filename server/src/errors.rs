//! The one place internal errors become Kafka error codes.

use kafka_protocol::ResponseError;
use wharf_engine::EngineError;
use wharf_protocol::convert::AppendError;

use crate::metadata::controller::MetadataError;

/// Kafka's code for success.
pub const NONE: i16 = 0;

pub fn code(error: ResponseError) -> i16 {
    error.code()
}

/// The Kafka error for a storage engine error.
pub fn engine_error(error: &EngineError) -> ResponseError {
    match error {
        EngineError::CorruptMessage(_) => ResponseError::CorruptMessage,
        EngineError::InvalidRecord(_) => ResponseError::InvalidRecord,
        EngineError::MessageTooLarge { .. } => ResponseError::MessageTooLarge,
        EngineError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        // KIP-98: fenced producer epochs and sequence gaps. Since Kafka 2.7 an old epoch on
        // produce is INVALID_PRODUCER_EPOCH, not PRODUCER_FENCED.
        EngineError::InvalidProducerEpoch(_) => ResponseError::InvalidProducerEpoch,
        EngineError::OutOfOrderSequence(_) => ResponseError::OutOfOrderSequenceNumber,
        // Kafka refuses a client's control batch as an invalid record.
        EngineError::InvalidTransactionalBatch(_) => ResponseError::InvalidRecord,
        // The log refuses writes until it is reopened; clients retry elsewhere or later.
        EngineError::Storage { .. } | EngineError::Io { .. } => ResponseError::KafkaStorageError,
        #[allow(unreachable_patterns)]
        _ => ResponseError::UnknownServerError,
    }
}

/// The Kafka error for records refused before they reach the log (conversion,
/// recompression, KIP-467).
pub fn append_error(error: &AppendError) -> ResponseError {
    match error {
        AppendError::Corrupt(_) => ResponseError::CorruptMessage,
        AppendError::Invalid(_) | AppendError::RecordErrors { .. } => ResponseError::InvalidRecord,
        AppendError::InvalidTimestamp(_) => ResponseError::InvalidTimestamp,
        AppendError::UnsupportedCompression(_) => ResponseError::UnsupportedCompressionType,
        AppendError::TooLarge(_) => ResponseError::MessageTooLarge,
    }
}

/// The Kafka error for a refused metadata change.
pub fn metadata_error(error: &MetadataError) -> ResponseError {
    match error {
        MetadataError::TopicAlreadyExists(_) => ResponseError::TopicAlreadyExists,
        MetadataError::InvalidTopic(_) => ResponseError::InvalidTopicException,
        MetadataError::UnknownTopic => ResponseError::UnknownTopicOrPartition,
        MetadataError::UnknownTopicId => ResponseError::UnknownTopicId,
        MetadataError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        MetadataError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
        MetadataError::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
        MetadataError::InvalidConfig(_) => ResponseError::InvalidConfig,
        MetadataError::InvalidRequest(_) => ResponseError::InvalidRequest,
        MetadataError::PolicyViolation(_) => ResponseError::PolicyViolation,
        MetadataError::Storage(_) => ResponseError::KafkaStorageError,
        MetadataError::Unavailable | MetadataError::TimedOut(_) => ResponseError::RequestTimedOut,
        MetadataError::NotController(_) => ResponseError::NotController,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_kafkas_codes() {
        assert_eq!(
            engine_error(&EngineError::CorruptMessage("crc".into())).code(),
            2
        );
        assert_eq!(
            engine_error(&EngineError::MessageTooLarge { size: 2, max: 1 }).code(),
            10
        );
        assert_eq!(
            engine_error(&EngineError::InvalidRecord("count".into())).code(),
            87
        );
        assert_eq!(
            engine_error(&EngineError::OffsetOutOfRange {
                requested: 9,
                log_start: 0,
                log_end: 1
            })
            .code(),
            1
        );
        assert_eq!(
            engine_error(&EngineError::Storage {
                path: "p".into(),
                reason: "fsync".into()
            })
            .code(),
            56
        );
    }

    #[test]
    fn metadata_errors_map_to_kafkas_codes() {
        assert_eq!(
            metadata_error(&MetadataError::TopicAlreadyExists("t".into())).code(),
            36
        );
        assert_eq!(
            metadata_error(&MetadataError::InvalidTopic("x".into())).code(),
            17
        );
        assert_eq!(
            metadata_error(&MetadataError::InvalidPartitions("x".into())).code(),
            37
        );
        assert_eq!(
            metadata_error(&MetadataError::InvalidConfig("x".into())).code(),
            40
        );
        assert_eq!(metadata_error(&MetadataError::UnknownTopicId).code(), 100);
        assert_eq!(
            metadata_error(&MetadataError::PolicyViolation("x".into())).code(),
            44
        );
    }
}
