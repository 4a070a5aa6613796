//! The replica of one partition on this node: its role, its epochs, its view of the local
//! log and the high watermark; becoming leader or follower from the controller's partition
//! changes; the epoch checks every request goes through (KIP-320); what a client's
//! ListOffsets may be told (KIP-207).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use kafka_protocol::error::ResponseError;
use wharf_engine::epoch::LeaderEpochCache;
use wharf_protocol::replication::EpochEndOffset;

use super::api::*;
use super::config::ReplicaConfig;
use crate::metadata::NodeId;

/// The replica of one partition on this node, as a state machine: time and events in,
/// [`Effects`] out. It keeps a view of the local log (start, end, what of it is on disk,
/// the leader-epoch cache) in step with the log operations it asks for and the appends and
/// syncs the driver reports.
///
/// Invariants: while leader in one epoch the high watermark never goes back; the high
/// watermark never passes what is on disk on every member of the maximal ISR (KIP-497),
/// the leader included; the local log end never passes what the leader sent.
#[derive(Debug)]
pub struct ReplicaState {
    pub(super) local: NodeId,
    pub(super) local_broker_epoch: i64,
    pub(super) config: ReplicaConfig,
    pub(super) replicas: Vec<NodeId>,
    /// -1 until the first partition change.
    pub(super) leader_epoch: i32,
    pub(super) partition_epoch: i32,
    pub(super) role: Role,
    pub(super) log_start_offset: i64,
    pub(super) log_end_offset: i64,
    /// What of the log is on disk (reported by the driver after each sync).
    pub(super) durable_end_offset: i64,
    pub(super) epochs: LeaderEpochCache,
    pub(super) high_watermark: i64,
    /// The high watermark in the checkpoint on disk, as far as known (`None`: unknown).
    pub(super) checkpointed_high_watermark: Option<i64>,
    /// When the last checkpoint was asked for.
    pub(super) last_checkpoint_ms: Option<i64>,
    /// Brokers the metadata says are fenced or shutting down: they may not join the ISR.
    pub(super) ineligible: BTreeSet<NodeId>,
}

#[derive(Debug)]
pub(super) enum Role {
    /// No partition change yet, or this node holds no replica of the partition.
    None,
    Leader(LeaderState),
    Follower(FollowerState),
}

#[derive(Debug)]
pub(super) struct LeaderState {
    /// The ISR the controller committed.
    pub isr: BTreeSet<NodeId>,
    /// An AlterPartition in flight, if any: one at a time.
    pub pending: Option<PendingIsr>,
    pub followers: BTreeMap<NodeId, FollowerProgress>,
    /// The log end when this epoch began: a follower must reach it to join the ISR.
    pub epoch_start_offset: i64,
    /// acks=all appends waiting for the high watermark, by required offset.
    pub waiting: VecDeque<PendingAck>,
    /// After the controller refused a change outright, none is proposed before this.
    pub no_isr_change_before_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum IsrChange {
    Expand(NodeId),
    Shrink(BTreeSet<NodeId>),
}

#[derive(Clone, Debug)]
pub(super) struct PendingIsr {
    pub change: IsrChange,
    pub proposal: AlterPartitionProposal,
    /// When to send the proposal again; `None` while it waits for an answer, or for newer
    /// metadata after a refusal that retrying cannot fix.
    pub retry_at_ms: Option<i64>,
}

/// What a leader knows of one follower (Kafka's Replica state).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FollowerProgress {
    /// The follower's log end as of its last fetch; `None` until it fetches in this epoch.
    pub log_end_offset: Option<i64>,
    /// How far that log is on the follower's disk (its fetch's synced offset): what counts
    /// toward the high watermark and for joining the ISR.
    pub durable_end_offset: Option<i64>,
    pub log_start_offset: i64,
    /// The leader's log end at the follower's previous fetch, and that fetch's time.
    pub last_fetch_leader_log_end: Option<i64>,
    pub last_fetch_time_ms: i64,
    /// The last time the follower had everything the leader had; `None`: never.
    pub last_caught_up_time_ms: Option<i64>,
    pub broker_epoch: Option<i64>,
}

impl FollowerProgress {
    /// Kafka's `isCaughtUp`: at the leader's log end, or caught up within `max_lag_ms`.
    pub fn is_caught_up(&self, leader_log_end: i64, now_ms: i64, max_lag_ms: i64) -> bool {
        self.log_end_offset == Some(leader_log_end)
            || self
                .last_caught_up_time_ms
                .is_some_and(|t| now_ms - t <= max_lag_ms)
    }
}

#[derive(Copy, Clone, Debug)]
pub(super) struct PendingAck {
    /// The offset after the batch: the high watermark must reach it.
    pub required_offset: i64,
    pub waiter: AckWaiter,
}

#[derive(Debug)]
pub(super) struct FollowerState {
    pub leader: Option<NodeId>,
    /// The fetch sent and not answered yet.
    pub in_flight: Option<FetchPosition>,
    /// The offsets the latest fetches asked from, oldest first, at most
    /// `MAX_UNSYNCED_ANSWERS`: with records off disk, the next fetch goes only once
    /// everything below the oldest is on disk.
    pub recent_fetch_offsets: VecDeque<i64>,
    pub retry_at_ms: i64,
    /// The leader said our epoch is old: wait for newer metadata.
    pub fenced: bool,
}

/// A replica's role as others may look at it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RoleView {
    None,
    Leader,
    Follower { leader: Option<NodeId> },
}

impl ReplicaState {
    /// The replica on node `local` (with broker epoch `local_broker_epoch`) over `log`.
    /// It has no role until the first [`ReplicaState::apply_partition_change`].
    ///
    /// The high watermark starts at the checkpoint, capped at the log end (Kafka's
    /// `replication-offset-checkpoint`): it was committed, so every replica that can be
    /// elected has it on disk, and a leader may show it to consumers at once, before any
    /// follower fetches (and never raises it past what its followers then have).
    pub fn new(
        local: NodeId,
        local_broker_epoch: i64,
        config: ReplicaConfig,
        log: LocalLog,
    ) -> ReplicaState {
        let high_watermark = log
            .high_watermark
            .clamp(log.log_start_offset, log.log_end_offset);
        ReplicaState {
            local,
            local_broker_epoch,
            config,
            replicas: Vec::new(),
            leader_epoch: -1,
            partition_epoch: -1,
            role: Role::None,
            log_start_offset: log.log_start_offset,
            log_end_offset: log.log_end_offset,
            durable_end_offset: log.log_end_offset,
            epochs: log.epochs,
            high_watermark,
            checkpointed_high_watermark: Some(high_watermark),
            last_checkpoint_ms: None,
            ineligible: BTreeSet::new(),
        }
    }

    pub fn local(&self) -> NodeId {
        self.local
    }

    pub fn local_broker_epoch(&self) -> i64 {
        self.local_broker_epoch
    }

    pub fn config(&self) -> ReplicaConfig {
        self.config
    }

    pub fn role(&self) -> RoleView {
        match &self.role {
            Role::None => RoleView::None,
            Role::Leader(_) => RoleView::Leader,
            Role::Follower(f) => RoleView::Follower { leader: f.leader },
        }
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    pub fn partition_epoch(&self) -> i32 {
        self.partition_epoch
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    /// The last stable offset a replication answer carries: the high watermark. Followers
    /// do not use it (Kafka's ignore it too): each keeps its partition's transaction state
    /// from the batches it copies (`crate::partition::txn`), and consumers get the LSO
    /// from the partition, not from here.
    pub fn last_stable_offset(&self) -> i64 {
        self.high_watermark
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log_end_offset
    }

    pub fn durable_end_offset(&self) -> i64 {
        self.durable_end_offset
    }

    pub fn epochs(&self) -> &LeaderEpochCache {
        &self.epochs
    }

    pub fn replicas(&self) -> &[NodeId] {
        &self.replicas
    }

    /// The committed ISR, while leader.
    pub fn isr(&self) -> Option<Vec<NodeId>> {
        match &self.role {
            Role::Leader(l) => Some(l.isr.iter().copied().collect()),
            _ => None,
        }
    }

    /// KIP-497's maximal ISR, while leader: the committed ISR with a pending expansion
    /// added; during a pending shrink, still the committed ISR.
    pub fn maximal_isr(&self) -> Option<Vec<NodeId>> {
        match &self.role {
            Role::Leader(l) => Some(l.maximal_isr().into_iter().collect()),
            _ => None,
        }
    }

    /// A leader's view of a follower.
    pub fn follower_progress(&self, node: NodeId) -> Option<&FollowerProgress> {
        match &self.role {
            Role::Leader(l) => l.followers.get(&node),
            _ => None,
        }
    }

    /// Whether an AlterPartition is in flight or waiting.
    pub fn isr_change_pending(&self) -> bool {
        matches!(&self.role, Role::Leader(l) if l.pending.is_some())
    }

    /// acks=all appends still waiting.
    pub fn waiting_acks(&self) -> usize {
        match &self.role {
            Role::Leader(l) => l.waiting.len(),
            _ => 0,
        }
    }

    /// `min.insync.replicas`, capped at the replica count (Kafka since 3.7).
    pub fn effective_min_isr(&self) -> usize {
        self.config
            .min_insync_replicas
            .min(self.replicas.len())
            .max(1)
    }

    /// This node's broker epoch changed (it registered again): the epoch its own ISR
    /// entry carries in AlterPartition proposals (KIP-903).
    pub fn set_local_broker_epoch(&mut self, broker_epoch: i64) {
        self.local_broker_epoch = broker_epoch;
    }

    /// The topic's `min.insync.replicas` changed.
    pub fn set_min_insync_replicas(&mut self, min_insync_replicas: usize) {
        self.config.min_insync_replicas = min_insync_replicas;
    }

    /// Brokers that may not join the ISR (fenced or shutting down, KIP-841).
    pub fn set_ineligible_replicas(&mut self, nodes: impl IntoIterator<Item = NodeId>) {
        self.ineligible = nodes.into_iter().collect();
    }

    /// The driver's report that the local log is on disk up to `durable_end_offset` (a sync
    /// completed). On a leader this may move the high watermark.
    pub fn synced(&mut self, durable_end_offset: i64, now_ms: i64) -> Effects {
        let durable = durable_end_offset.min(self.log_end_offset);
        if durable <= self.durable_end_offset {
            return Effects::default();
        }
        self.durable_end_offset = durable;
        let mut effects = Effects::default();
        if self.is_leader() {
            self.maybe_increment_high_watermark(now_ms, &mut effects);
        }
        effects
    }

    /// The local log's start moved up without the state machine asking (retention or
    /// DeleteRecords on this node): its view follows, so a fetch below it is answered
    /// OFFSET_OUT_OF_RANGE with the real log start.
    pub fn log_start_moved(&mut self, log_start_offset: i64) {
        let start = log_start_offset.min(self.log_end_offset);
        if start > self.log_start_offset {
            self.log_start_offset = start;
            self.epochs.truncate_from_start(start);
        }
    }

    /// KIP-320: checks the leader epoch a request names (-1: none) against this replica's.
    /// An older one is FENCED_LEADER_EPOCH, a newer one UNKNOWN_LEADER_EPOCH; then, if
    /// `require_leader`, this replica must be the leader (NOT_LEADER_OR_FOLLOWER).
    pub fn check_leader_epoch(
        &self,
        current_leader_epoch: i32,
        require_leader: bool,
    ) -> Result<(), ResponseError> {
        if current_leader_epoch >= 0 {
            if current_leader_epoch < self.leader_epoch {
                return Err(ResponseError::FencedLeaderEpoch);
            }
            if current_leader_epoch > self.leader_epoch {
                return Err(ResponseError::UnknownLeaderEpoch);
            }
        }
        match self.role {
            Role::Leader(_) => Ok(()),
            Role::Follower(_) if !require_leader => Ok(()),
            _ => Err(ResponseError::NotLeaderOrFollower),
        }
    }

    /// OffsetForLeaderEpoch (KIP-101, KIP-320) from a client: the largest epoch at or below
    /// `leader_epoch` this log knows and where it ends (the log end for the latest epoch);
    /// -1/-1 when the log knows none.
    pub fn offset_for_leader_epoch(
        &self,
        current_leader_epoch: i32,
        leader_epoch: i32,
    ) -> Result<EpochEndOffset, ResponseError> {
        self.check_leader_epoch(current_leader_epoch, true)?;
        Ok(self.end_offset_for_epoch(leader_epoch))
    }

    /// KIP-207: whether this replica leads with a high watermark still below the start of
    /// its epoch. A leader learns the high watermark from its followers' fetches in its
    /// epoch (the one it brought from its last fetch as follower, or from its checkpoint
    /// after a restart, may be behind what the previous leader showed); until they report,
    /// an end offset it gave a consumer could be below one the consumer already saw.
    /// It ends once every replica counted for the high watermark has fetched up to the
    /// epoch start, or left the ISR (and, with fewer than `min.insync.replicas` left in
    /// it, not before one comes back: KIP-966).
    pub fn high_watermark_behind_epoch_start(&self) -> bool {
        matches!(&self.role, Role::Leader(l) if self.high_watermark < l.epoch_start_offset)
    }

    /// ListOffsets from a client, once the log has been searched (Kafka's
    /// `Partition.fetchOffsetForTimestamp` with an isolation level): the offset to answer,
    /// or `None` for no offset (-1). `last_fetchable_offset` is where the client may fetch
    /// up to: the high watermark, or the last stable offset for read_committed. A search
    /// finds only offsets below it. While the high watermark is behind the epoch start
    /// ([`Self::high_watermark_behind_epoch_start`]) the latest offset, and a search that
    /// finds nothing below it, are OFFSET_NOT_AVAILABLE, which clients retry; the earliest
    /// offset is always answered.
    pub fn listed_offset(
        &self,
        query: OffsetQuery,
        last_fetchable_offset: i64,
    ) -> Result<Option<i64>, ResponseError> {
        let behind = self.high_watermark_behind_epoch_start();
        match query {
            OffsetQuery::Earliest { log_start_offset } => Ok(Some(log_start_offset)),
            OffsetQuery::Latest if behind => Err(ResponseError::OffsetNotAvailable),
            OffsetQuery::Latest => Ok(Some(last_fetchable_offset)),
            OffsetQuery::Search {
                found: Some(offset),
            } if offset < last_fetchable_offset => Ok(Some(offset)),
            OffsetQuery::Search { .. } if behind => Err(ResponseError::OffsetNotAvailable),
            OffsetQuery::Search { .. } => Ok(None),
        }
    }

    pub(super) fn end_offset_for_epoch(&self, leader_epoch: i32) -> EpochEndOffset {
        match self
            .epochs
            .end_offset_for(leader_epoch, self.log_end_offset)
        {
            Some((epoch, end_offset)) => EpochEndOffset { epoch, end_offset },
            None => EpochEndOffset {
                epoch: -1,
                end_offset: -1,
            },
        }
    }

    /// A partition change from the controller's metadata. A change older than what this
    /// replica knows (a smaller partition or leader epoch) is ignored. Otherwise this
    /// replica becomes leader, follower or neither, as the change says.
    pub fn apply_partition_change(&mut self, change: &LeaderAndIsr, now_ms: i64) -> Effects {
        let leader_epoch = change.leader_epoch.0;
        // Only something newer counts. A change seen again must not clear a pending ISR
        // change: the controller may be committing it, and until we hear, the maximal ISR
        // must still count the replica it adds.
        let newer =
            leader_epoch > self.leader_epoch || change.partition_epoch > self.partition_epoch;
        if !newer || leader_epoch < self.leader_epoch {
            return Effects::default();
        }
        let new_epoch = leader_epoch > self.leader_epoch;
        self.replicas = change.replicas.clone();
        self.partition_epoch = change.partition_epoch;
        if !self.replicas.contains(&self.local) {
            let effects = self.stop_leading();
            self.leader_epoch = leader_epoch;
            self.role = Role::None;
            return effects;
        }
        if change.leader == Some(self.local) {
            self.become_leader(change, new_epoch, now_ms)
        } else {
            let effects = self.stop_leading();
            self.leader_epoch = leader_epoch;
            match &mut self.role {
                Role::Follower(f) if !new_epoch && f.leader == change.leader => {}
                _ => {
                    // A new epoch (or leader): whatever was in flight answers an old
                    // question.
                    self.role = Role::Follower(FollowerState {
                        leader: change.leader,
                        in_flight: None,
                        recent_fetch_offsets: VecDeque::new(),
                        retry_at_ms: now_ms,
                        fenced: false,
                    });
                }
            }
            effects
        }
    }

    /// Leaves the leader role: every acks=all append still waiting is answered
    /// NOT_LEADER_OR_FOLLOWER (it may or may not survive on the new leader).
    fn stop_leading(&mut self) -> Effects {
        let mut effects = Effects::default();
        if let Role::Leader(l) = &mut self.role {
            effects.acks.extend(l.waiting.drain(..).map(|w| AckOutcome {
                token: w.waiter.token,
                result: Err(ResponseError::NotLeaderOrFollower),
            }));
            self.role = Role::None;
        }
        effects
    }

    fn become_leader(&mut self, change: &LeaderAndIsr, new_epoch: bool, now_ms: i64) -> Effects {
        let mut effects = Effects::default();
        let was_leader = self.is_leader();
        let isr: BTreeSet<NodeId> = change.isr.iter().copied().collect();
        let followers: Vec<NodeId> = self
            .replicas
            .iter()
            .copied()
            .filter(|&n| n != self.local)
            .collect();
        if !was_leader {
            self.role = Role::Leader(LeaderState {
                isr: isr.clone(),
                pending: None,
                followers: BTreeMap::new(),
                epoch_start_offset: self.log_end_offset,
                waiting: VecDeque::new(),
                no_isr_change_before_ms: i64::MIN,
            });
        }
        let Role::Leader(l) = &mut self.role else {
            unreachable!("the role was just made Leader");
        };
        // A committed state replaces any pending change: the answer to it, if it comes,
        // no longer applies (Kafka's makeLeader).
        l.isr = isr;
        l.pending = None;
        l.followers.retain(|n, _| followers.contains(n));
        for &n in &followers {
            l.followers.entry(n).or_default();
        }
        if new_epoch {
            // KIP-101: the new epoch starts at our log end. Recording it before anything is
            // written in it lets a follower holding a later epoch than any in our log find
            // where to truncate.
            if self
                .epochs
                .assign(change.leader_epoch.0, self.log_end_offset)
            {
                effects.log.push(LogOp::AssignEpoch {
                    epoch: change.leader_epoch.0,
                    start_offset: self.log_end_offset,
                });
            }
            l.epoch_start_offset = self.log_end_offset;
            // A new leader knows nothing of the followers' logs (its state was just made):
            // their fetches in this epoch will tell, after any truncation. One leading
            // again keeps what it knew, which its log still holds.
            for (node, progress) in l.followers.iter_mut() {
                let in_sync = l.isr.contains(node);
                progress.last_fetch_leader_log_end = None;
                // Followers in the ISR get a full lag period to show up.
                progress.last_caught_up_time_ms = in_sync.then_some(now_ms);
            }
            self.leader_epoch = change.leader_epoch.0;
        }
        self.maybe_increment_high_watermark(now_ms, &mut effects);
        self.fail_waiting_if_under_min_isr(&mut effects);
        effects
    }
}

impl LeaderState {
    pub(super) fn maximal_isr(&self) -> BTreeSet<NodeId> {
        let mut isr = self.isr.clone();
        if let Some(PendingIsr {
            change: IsrChange::Expand(node),
            ..
        }) = &self.pending
        {
            isr.insert(*node);
        }
        isr
    }
}
