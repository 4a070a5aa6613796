//! Transaction coordinator settings, with Kafka's broker config names and defaults.

/// How the coordinator behaves; every field is a Kafka broker config of the same name.
#[derive(Clone, Debug)]
pub struct TxnConfig {
    /// `transaction.max.timeout.ms`: the longest `transaction.timeout.ms` a producer may
    /// ask for; InitProducerId asking for more gets INVALID_TRANSACTION_TIMEOUT.
    pub transaction_max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`: a transactional id with no transaction open and no
    /// update for this long is removed (a tombstone is written to its partition).
    pub transactional_id_expiration_ms: i64,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`: how often open
    /// transactions older than their timeout are looked for and aborted.
    pub abort_timed_out_transaction_cleanup_interval_ms: i64,
    /// `transaction.remove.expired.transaction.cleanup.interval.ms`: how often expired
    /// transactional ids are looked for.
    pub remove_expired_transaction_cleanup_interval_ms: i64,
    /// `transaction.state.log.num.partitions`: partitions of `__transaction_state`; a
    /// transactional id belongs to the coordinator of its partition.
    pub transaction_state_log_num_partitions: u32,
    /// `transaction.state.log.replication.factor`: replicas of `__transaction_state` when
    /// it is created; `None`: min(3, live brokers).
    pub transaction_state_log_replication_factor: Option<i16>,
    /// `transaction.state.log.min.isr`.
    pub transaction_state_log_min_isr: i32,
    /// `transaction.state.log.segment.bytes`.
    pub transaction_state_log_segment_bytes: u64,
    /// `transaction.partition.verification.enable` (KIP-890 part 1): a partition leader
    /// asks the coordinator whether a partition is in the transaction before it appends the
    /// first transactional batch of a producer.
    pub transaction_partition_verification_enable: bool,
    /// The group coordinator's `offsets.topic.num.partitions`: AddOffsetsToTxn adds the
    /// group's `__consumer_offsets` partition to the transaction.
    pub offsets_topic_num_partitions: u32,
    /// `retry.backoff.ms` of the coordinator's inter-broker clients: how long a marker or a
    /// completion record that failed with a retriable error waits before it is sent again.
    pub retry_backoff_ms: i64,
}

/// Kafka's defaults.
impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            transaction_max_timeout_ms: 900_000,
            transactional_id_expiration_ms: 7 * 24 * 3600 * 1000,
            abort_timed_out_transaction_cleanup_interval_ms: 10_000,
            remove_expired_transaction_cleanup_interval_ms: 3600 * 1000,
            transaction_state_log_num_partitions:
                wharf_protocol::txn::log::TRANSACTION_STATE_DEFAULT_PARTITIONS,
            transaction_state_log_replication_factor: None,
            transaction_state_log_min_isr: 2,
            transaction_state_log_segment_bytes: 100 * 1024 * 1024,
            transaction_partition_verification_enable: true,
            offsets_topic_num_partitions:
                wharf_protocol::offsets_topic::OFFSETS_TOPIC_DEFAULT_PARTITIONS,
            retry_backoff_ms: 100,
        }
    }
}
