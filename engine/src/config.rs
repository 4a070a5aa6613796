//! Per-partition configuration, with Kafka's topic config names and defaults.

/// How a record batch's timestamps are set (`message.timestamp.type`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum TimestampType {
    #[default]
    CreateTime,
    LogAppendTime,
}

/// Largest `segment.bytes`: positions in Kafka's `.index` files are 32-bit.
pub const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;
/// Smallest `segment.bytes` (Kafka's lower bound for the topic config is 14 bytes; one
/// batch header is the least that makes sense here).
pub const MIN_SEGMENT_BYTES: u64 = 61;

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
    /// Segment files grow in preallocated extents of up to this many bytes (0: none).
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

impl LogConfig {
    /// The configuration with every field brought within what the engine supports.
    pub(crate) fn sanitized(mut self) -> LogConfig {
        self.segment_bytes = self
            .segment_bytes
            .clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES);
        self.segment_ms = self.segment_ms.max(1);
        self.index_interval_bytes = self.index_interval_bytes.max(1);
        self.preallocate_bytes = self.preallocate_bytes.min(MAX_SEGMENT_BYTES);
        self
    }
}
