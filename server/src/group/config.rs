//! Group coordinator settings, with Kafka's broker config names and defaults.

/// How the coordinator behaves; every field is a Kafka broker config of the same name.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an empty group
    /// waits for more members before completing (extended by the same delay while members
    /// keep arriving, bounded by the rebalance timeout).
    pub group_initial_rebalance_delay_ms: i64,
    /// `group.min.session.timeout.ms`: smallest session timeout a member may ask for.
    pub group_min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`: largest session timeout a member may ask for.
    pub group_max_session_timeout_ms: i32,
    /// `group.max.size`: members (joined and pending) a group may hold.
    pub group_max_size: usize,
    /// `offset.metadata.max.bytes`: largest metadata string stored with a commit.
    pub offset_metadata_max_bytes: usize,
    /// `offsets.retention.minutes`, in ms: how long an empty group's offsets are kept.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`: how often expired offsets are removed.
    pub offsets_retention_check_interval_ms: i64,
    /// `offsets.topic.num.partitions`.
    pub offsets_topic_num_partitions: u32,
    /// `offsets.commit.timeout.ms`: how long an append to a replicated `__consumer_offsets`
    /// partition waits for every in-sync replica before the commit (or the group change)
    /// is answered COORDINATOR_NOT_AVAILABLE, as Kafka answers it (default 5000).
    pub offsets_commit_timeout_ms: i64,
}

/// A new member's JoinGroup is answered with an error after this long if the rebalance
/// has not completed (Kafka's `NewMemberJoinTimeoutMs`), so defunct members of clients that
/// gave up and retried do not pile up.
pub const NEW_MEMBER_JOIN_TIMEOUT_MS: i64 = 5 * 60 * 1000;

/// Hard cap on `group.max.size` (Kafka's default is unlimited; an unbounded group is an
/// unbounded allocation).
pub const MAX_GROUP_MEMBERS: usize = 10_000;

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            group_initial_rebalance_delay_ms: 3000,
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            group_max_size: MAX_GROUP_MEMBERS,
            offset_metadata_max_bytes: 4096,
            offsets_retention_ms: 7 * 24 * 3600 * 1000,
            offsets_retention_check_interval_ms: 600_000,
            offsets_topic_num_partitions:
                wharf_protocol::offsets_topic::OFFSETS_TOPIC_DEFAULT_PARTITIONS,
            offsets_commit_timeout_ms: 5000,
        }
    }
}
