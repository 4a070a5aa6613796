//! The settings a replica state machine runs with (Kafka's names and defaults).

/// Kafka's `replica.lag.time.max.ms`.
pub const DEFAULT_REPLICA_LAG_TIME_MAX_MS: i64 = 30_000;
/// Kafka's `replica.fetch.backoff.ms`.
pub const DEFAULT_REPLICA_FETCH_BACKOFF_MS: i64 = 1_000;
/// How long a leader waits before it sends an AlterPartition again after a failure that is
/// worth retrying (no answer, NOT_CONTROLLER, ...).
pub const DEFAULT_ALTER_PARTITION_RETRY_MS: i64 = 100;
/// Kafka's `replica.fetch.max.bytes`.
pub const DEFAULT_REPLICA_FETCH_MAX_BYTES: i32 = 1024 * 1024;
/// Kafka's `replica.fetch.response.max.bytes`.
pub const DEFAULT_REPLICA_FETCH_RESPONSE_MAX_BYTES: i32 = 10 * 1024 * 1024;
/// The most either may be set to: an answer (plus one batch past the budget and its
/// header) stays within the replication stream's largest frame.
pub const MAX_REPLICA_FETCH_BYTES: i64 = 128 * 1024 * 1024;
/// Kafka's `replica.high.watermark.checkpoint.interval.ms`.
pub const DEFAULT_HIGH_WATERMARK_CHECKPOINT_INTERVAL_MS: i64 = 5_000;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// `replica.lag.time.max.ms`: a follower that has not caught up with the leader's log
    /// end for this long leaves the ISR.
    pub replica_lag_time_max_ms: i64,
    /// The topic's `min.insync.replicas` (capped at the replica count, as Kafka does).
    pub min_insync_replicas: usize,
    /// `replica.fetch.backoff.ms`: how long a follower waits after a failed fetch.
    pub replica_fetch_backoff_ms: i64,
    pub alter_partition_retry_ms: i64,
    /// `replica.high.watermark.checkpoint.interval.ms`: how often a changed high watermark
    /// is checkpointed (and at a clean shutdown).
    pub high_watermark_checkpoint_interval_ms: i64,
}

impl Default for ReplicaConfig {
    fn default() -> ReplicaConfig {
        ReplicaConfig {
            replica_lag_time_max_ms: DEFAULT_REPLICA_LAG_TIME_MAX_MS,
            min_insync_replicas: 1,
            replica_fetch_backoff_ms: DEFAULT_REPLICA_FETCH_BACKOFF_MS,
            alter_partition_retry_ms: DEFAULT_ALTER_PARTITION_RETRY_MS,
            high_watermark_checkpoint_interval_ms: DEFAULT_HIGH_WATERMARK_CHECKPOINT_INTERVAL_MS,
        }
    }
}
