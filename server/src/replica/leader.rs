//! The leader's rules: produce checks and acks=all (min.insync.replicas), follower fetches
//! (epochs, divergence, progress), the high watermark over the maximal ISR, ISR shrink and
//! expand through AlterPartition (KIP-497), time.

use std::collections::BTreeSet;

use kafka_protocol::error::ResponseError;

use super::api::*;
use super::state::*;
use crate::metadata::{LeaderEpoch, NodeId};

impl ReplicaState {
    /// Whether a Produce with `acks` may append here: this replica must lead, and for
    /// acks=all the committed ISR must hold `min.insync.replicas` (NOT_ENOUGH_REPLICAS,
    /// before anything is written).
    pub fn check_produce(&self, acks: Acks) -> Result<(), ResponseError> {
        let Role::Leader(l) = &self.role else {
            return Err(ResponseError::NotLeaderOrFollower);
        };
        if acks == Acks::All && l.isr.len() < self.effective_min_isr() {
            return Err(ResponseError::NotEnoughReplicas);
        }
        Ok(())
    }

    /// The driver appended batches as leader, ending at `end_offset` (the offset after
    /// them). An acks=all append passes its `waiter`: it is answered in
    /// [`Effects::acks`] once the high watermark reaches `end_offset`, or fails.
    pub fn appended(&mut self, end_offset: i64, waiter: Option<AckWaiter>, now_ms: i64) -> Effects {
        let mut effects = Effects::default();
        self.log_end_offset = self.log_end_offset.max(end_offset);
        let min_isr = self.effective_min_isr();
        let Role::Leader(l) = &mut self.role else {
            // Leadership moved while the append was under way.
            effects.acks.extend(waiter.map(|w| AckOutcome {
                token: w.token,
                result: Err(ResponseError::NotLeaderOrFollower),
            }));
            return effects;
        };
        if let Some(waiter) = waiter {
            if l.isr.len() < min_isr {
                // The ISR shrank between the check and the append.
                effects.acks.push(AckOutcome {
                    token: waiter.token,
                    result: Err(ResponseError::NotEnoughReplicasAfterAppend),
                });
            } else if end_offset <= self.high_watermark {
                // Reported after the high watermark already passed it (another append's
                // report and a sync came first): nothing left to wait for.
                effects.acks.push(AckOutcome {
                    token: waiter.token,
                    result: Ok(()),
                });
            } else {
                let at = l
                    .waiting
                    .partition_point(|w| w.required_offset <= end_offset);
                l.waiting.insert(
                    at,
                    PendingAck {
                        required_offset: end_offset,
                        waiter,
                    },
                );
            }
        }
        self.maybe_increment_high_watermark(now_ms, &mut effects);
        effects
    }

    /// One partition of a follower's fetch (Kafka's `Partition.fetchRecords` for a follower):
    /// the epoch checks, the divergence check (KIP-320), the offset range, the broker epoch
    /// (KIP-903); then the follower's progress is recorded, which may grow the ISR and
    /// move the high watermark. A diverging or refused fetch records nothing.
    pub fn on_follower_fetch(
        &mut self,
        fetch: &FollowerFetch,
        now_ms: i64,
    ) -> (FetchAnswer, Effects) {
        let mut effects = Effects::default();
        let mut answer = FetchAnswer {
            error: None,
            high_watermark: self.high_watermark,
            last_stable_offset: self.last_stable_offset(),
            log_start_offset: self.log_start_offset,
            diverging_epoch: None,
            leader_epoch: self.leader_epoch,
            leader_id: self.known_leader().map_or(-1, |n| n.0),
            read_from: None,
        };
        let refuse = |mut answer: FetchAnswer, error: ResponseError| {
            answer.error = Some(error);
            (answer, Effects::default())
        };
        if let Err(error) = self.check_leader_epoch(fetch.current_leader_epoch, true) {
            return refuse(answer, error);
        }
        let Role::Leader(l) = &self.role else {
            unreachable!("check_leader_epoch requires the leader role");
        };
        let Some(progress) = l.followers.get(&fetch.replica) else {
            // Not a follower of this partition in this epoch: with an epoch, the pair is
            // not known yet (the follower retries); without one, Kafka's older answer.
            let error = if fetch.current_leader_epoch >= 0 {
                ResponseError::UnknownLeaderEpoch
            } else {
                ResponseError::NotLeaderOrFollower
            };
            return refuse(answer, error);
        };
        if fetch.last_fetched_epoch >= 0 {
            let end = self.end_offset_for_epoch(fetch.last_fetched_epoch);
            if end.epoch < 0 || end.end_offset < 0 || fetch.fetch_offset < self.log_start_offset {
                return refuse(answer, ResponseError::OffsetOutOfRange);
            }
            if end.epoch < fetch.last_fetched_epoch || end.end_offset < fetch.fetch_offset {
                // KIP-320: the follower's log has batches ours does not; it truncates to
                // where its epoch history agrees with ours, then fetches again.
                answer.diverging_epoch = Some(end);
                return (answer, effects);
            }
        }
        if fetch.fetch_offset < self.log_start_offset || fetch.fetch_offset > self.log_end_offset {
            return refuse(answer, ResponseError::OffsetOutOfRange);
        }
        if fetch.broker_epoch >= 0
            && progress
                .broker_epoch
                .is_some_and(|known| fetch.broker_epoch < known)
        {
            // KIP-903: a fetch from an older process of that broker, arriving late.
            return refuse(answer, ResponseError::NotLeaderOrFollower);
        }

        let leader_end = self.log_end_offset;
        let Role::Leader(l) = &mut self.role else {
            unreachable!("checked above");
        };
        let progress = l.followers.get_mut(&fetch.replica).expect("checked above");
        let previous_durable = progress.durable_end_offset;
        // Only what is on the follower's disk counts (docs/replication.md, "Durability").
        let durable = fetch.durable_offset.min(fetch.fetch_offset);
        // Kafka's Replica.updateFetchState.
        if fetch.fetch_offset >= leader_end {
            progress.last_caught_up_time_ms = progress.last_caught_up_time_ms.max(Some(now_ms));
        } else if progress
            .last_fetch_leader_log_end
            .is_some_and(|end| fetch.fetch_offset >= end)
        {
            let then = progress.last_fetch_time_ms;
            progress.last_caught_up_time_ms = progress.last_caught_up_time_ms.max(Some(then));
        }
        progress.log_end_offset = Some(fetch.fetch_offset);
        progress.durable_end_offset = Some(durable);
        progress.log_start_offset = fetch.log_start_offset;
        progress.last_fetch_leader_log_end = Some(leader_end);
        progress.last_fetch_time_ms = now_ms;
        if fetch.broker_epoch >= 0 {
            progress.broker_epoch = Some(fetch.broker_epoch);
        }

        self.maybe_expand_isr(fetch.replica, now_ms, &mut effects);
        if previous_durable != Some(durable) {
            self.maybe_increment_high_watermark(now_ms, &mut effects);
        }
        answer.high_watermark = self.high_watermark;
        answer.last_stable_offset = self.last_stable_offset();
        answer.read_from = Some(fetch.fetch_offset);
        (answer, effects)
    }

    /// The controller's answer to the AlterPartition this leader sent (Kafka's
    /// `handleAlterPartitionUpdate` / `handleAlterPartitionError`). An answer to anything
    /// but the pending proposal is ignored.
    pub fn on_alter_partition_answer(
        &mut self,
        proposal: &AlterPartitionProposal,
        answer: AlterPartitionAnswer,
        now_ms: i64,
    ) -> Effects {
        let mut effects = Effects::default();
        let leader_epoch = self.leader_epoch;
        let partition_epoch = self.partition_epoch;
        let retry_ms = self.config.alter_partition_retry_ms;
        let Role::Leader(l) = &mut self.role else {
            return effects;
        };
        let Some(pending) = l.pending.as_mut().filter(|p| &p.proposal == proposal) else {
            return effects;
        };
        match answer {
            AlterPartitionAnswer::Committed {
                isr,
                leader_epoch: answered_epoch,
                partition_epoch: answered_partition_epoch,
            } => {
                if answered_epoch.0 != leader_epoch || answered_partition_epoch < partition_epoch {
                    // An answer about another epoch: stay pending until the metadata
                    // says what happened.
                    pending.retry_at_ms = None;
                    return effects;
                }
                l.isr = isr.into_iter().collect();
                l.pending = None;
                self.partition_epoch = answered_partition_epoch;
                self.maybe_increment_high_watermark(now_ms, &mut effects);
                self.fail_waiting_if_under_min_isr(&mut effects);
            }
            AlterPartitionAnswer::Error(error) => match error {
                // The controller says the partition epoch is right and nothing was
                // applied: back to the committed ISR, try again later.
                ResponseError::OperationNotAttempted | ResponseError::IneligibleReplica => {
                    l.pending = None;
                    l.no_isr_change_before_ms = now_ms + retry_ms;
                }
                // Our view is out of date: wait, pending, for the metadata to catch up.
                ResponseError::UnknownTopicOrPartition
                | ResponseError::UnknownTopicId
                | ResponseError::FencedLeaderEpoch
                | ResponseError::InvalidUpdateVersion
                | ResponseError::InvalidRequest
                | ResponseError::NewLeaderElected => pending.retry_at_ms = None,
                // No answer, or a controller that could not take it: send it again.
                _ => pending.retry_at_ms = Some(now_ms + retry_ms),
            },
        }
        effects
    }

    /// Time passes: acks=all appends past their deadline time out, a proposal due again is
    /// sent again, followers that fell behind leave the ISR, and a follower that stopped
    /// counting for the high watermark may let it move.
    pub fn tick(&mut self, now_ms: i64) -> Effects {
        let mut effects = Effects::default();
        let Role::Leader(l) = &mut self.role else {
            return effects;
        };
        l.waiting.retain(|w| {
            let expired = w.waiter.deadline_ms <= now_ms;
            if expired {
                effects.acks.push(AckOutcome {
                    token: w.waiter.token,
                    result: Err(ResponseError::RequestTimedOut),
                });
            }
            !expired
        });
        if let Some(pending) = &mut l.pending {
            if pending.retry_at_ms.is_some_and(|at| at <= now_ms) {
                pending.retry_at_ms = None;
                effects.alter_partition = Some(pending.proposal.clone());
            }
        }
        self.maybe_shrink_isr(now_ms, &mut effects);
        self.maybe_increment_high_watermark(now_ms, &mut effects);
        effects
    }

    /// The next time [`ReplicaState::tick`] has something to do, if any.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        match &self.role {
            Role::Leader(l) => {
                let lag = self.config.replica_lag_time_max_ms;
                let acks = l.waiting.iter().map(|w| w.waiter.deadline_ms);
                let retry = l.pending.as_ref().and_then(|p| p.retry_at_ms);
                let lagging = l
                    .followers
                    .values()
                    .filter_map(|p| p.last_caught_up_time_ms.map(|t| t + lag + 1));
                acks.chain(retry).chain(lagging).min()
            }
            Role::Follower(f) if f.in_flight.is_none() && !f.fenced => Some(f.retry_at_ms),
            _ => None,
        }
    }

    /// The leader as this replica knows it.
    pub(super) fn known_leader(&self) -> Option<NodeId> {
        match &self.role {
            Role::Leader(_) => Some(self.local),
            Role::Follower(f) => f.leader,
            Role::None => None,
        }
    }

    fn is_eligible(&self, node: NodeId, progress: &FollowerProgress) -> bool {
        // KIP-841 / KIP-903: not fenced or shutting down, and seen in a fetch with its
        // broker epoch.
        !self.ineligible.contains(&node) && progress.broker_epoch.is_some()
    }

    /// Kafka's `maybeIncrementLeaderHW`: the smallest synced end over the maximal ISR and the
    /// followers caught up enough to be about to join it, starting from what the leader
    /// has on disk. Nothing moves while the committed ISR is under `min.insync.replicas`
    /// (KIP-966's strict min ISR, Kafka 3.7+).
    pub(super) fn maybe_increment_high_watermark(&mut self, now_ms: i64, effects: &mut Effects) {
        let min_isr = self.effective_min_isr();
        let lag = self.config.replica_lag_time_max_ms;
        let Role::Leader(l) = &self.role else {
            return;
        };
        if l.isr.len() < min_isr {
            return;
        }
        let maximal = l.maximal_isr();
        let leader_end = self.log_end_offset;
        let mut high_watermark = self.durable_end_offset;
        for (&node, progress) in &l.followers {
            let counts = maximal.contains(&node)
                || (progress.is_caught_up(leader_end, now_ms, lag)
                    && self.is_eligible(node, progress));
            if !counts {
                continue;
            }
            match progress.durable_end_offset {
                // Not heard from in this epoch: nothing can be said.
                None => return,
                Some(end) => high_watermark = high_watermark.min(end),
            }
        }
        if high_watermark <= self.high_watermark {
            return;
        }
        self.high_watermark = high_watermark;
        effects.high_watermark = Some(high_watermark);
        let Role::Leader(l) = &mut self.role else {
            unreachable!("checked above");
        };
        let enough = maximal.len() >= min_isr;
        while l
            .waiting
            .front()
            .is_some_and(|w| w.required_offset <= high_watermark)
        {
            let w = l.waiting.pop_front().expect("checked above");
            effects.acks.push(AckOutcome {
                token: w.waiter.token,
                result: if enough {
                    Ok(())
                } else {
                    Err(ResponseError::NotEnoughReplicasAfterAppend)
                },
            });
        }
    }

    /// With the committed ISR under `min.insync.replicas` the high watermark cannot move,
    /// so acks=all appends still waiting are answered NOT_ENOUGH_REPLICAS_AFTER_APPEND
    /// now rather than at their timeout (the producer retries either way).
    pub(super) fn fail_waiting_if_under_min_isr(&mut self, effects: &mut Effects) {
        let min_isr = self.effective_min_isr();
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        if l.isr.len() >= min_isr {
            return;
        }
        effects.acks.extend(l.waiting.drain(..).map(|w| AckOutcome {
            token: w.waiter.token,
            result: Err(ResponseError::NotEnoughReplicasAfterAppend),
        }));
    }

    /// Kafka's `maybeExpandIsr`: a follower outside the ISR joins once it has reached the
    /// high watermark and this epoch's start (so it went through any truncation first).
    fn maybe_expand_isr(&mut self, node: NodeId, now_ms: i64, effects: &mut Effects) {
        let Role::Leader(l) = &self.role else {
            return;
        };
        if l.pending.is_some() || l.isr.contains(&node) || now_ms < l.no_isr_change_before_ms {
            return;
        }
        let Some(progress) = l.followers.get(&node) else {
            return;
        };
        let in_sync = progress
            .durable_end_offset
            .is_some_and(|end| end >= self.high_watermark && end >= l.epoch_start_offset);
        if in_sync && self.is_eligible(node, progress) {
            self.propose(IsrChange::Expand(node), effects);
        }
    }

    /// Kafka's `maybeShrinkIsr`: followers in the ISR that have not caught up with the
    /// leader's log end for `replica.lag.time.max.ms` leave it.
    fn maybe_shrink_isr(&mut self, now_ms: i64, effects: &mut Effects) {
        let lag = self.config.replica_lag_time_max_ms;
        let leader_end = self.log_end_offset;
        let Role::Leader(l) = &self.role else {
            return;
        };
        if l.pending.is_some() || now_ms < l.no_isr_change_before_ms {
            return;
        }
        let out_of_sync: BTreeSet<NodeId> = l
            .isr
            .iter()
            .copied()
            .filter(|&n| n != self.local)
            .filter(|n| {
                !l.followers
                    .get(n)
                    .is_some_and(|p| p.is_caught_up(leader_end, now_ms, lag))
            })
            .collect();
        if !out_of_sync.is_empty() {
            self.propose(IsrChange::Shrink(out_of_sync), effects);
        }
    }

    fn propose(&mut self, change: IsrChange, effects: &mut Effects) {
        let local = self.local;
        let local_broker_epoch = self.local_broker_epoch;
        let leader_epoch = LeaderEpoch(self.leader_epoch);
        let partition_epoch = self.partition_epoch;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let mut isr = l.isr.clone();
        match &change {
            IsrChange::Expand(node) => {
                isr.insert(*node);
            }
            IsrChange::Shrink(out) => isr.retain(|n| !out.contains(n)),
        }
        let new_isr = isr
            .iter()
            .map(|&node| IsrMember {
                node,
                broker_epoch: if node == local {
                    local_broker_epoch
                } else {
                    l.followers
                        .get(&node)
                        .and_then(|p| p.broker_epoch)
                        .unwrap_or(-1)
                },
            })
            .collect();
        let proposal = AlterPartitionProposal {
            leader: local,
            leader_epoch,
            partition_epoch,
            new_isr,
        };
        effects.alter_partition = Some(proposal.clone());
        l.pending = Some(PendingIsr {
            change,
            proposal,
            retry_at_ms: None,
        });
    }
}
