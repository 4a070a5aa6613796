//! The classic group coordinator: every group of the `__consumer_offsets` partitions a shard
//! owns, as a plain state machine. Requests and the passage of time (`now_ms`, `tick`) go
//! in; answers, parked answers that became ready (`Effects::replies`) and records to append
//! to `__consumer_offsets` (`Effects::records`) come out. No I/O, no clock.
//!
//! The behaviour follows Kafka's classic GroupCoordinator: where this file returns
//! REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION or UNKNOWN_MEMBER_ID, so does Kafka.

use std::collections::HashMap;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use wharf_protocol::offsets_topic::{OffsetCommitValue, OffsetsRecord};

use super::api::*;
use super::classic::{ClassicGroup, GroupState, InitialDelay};
use super::config::{GroupConfig, NEW_MEMBER_JOIN_TIMEOUT_MS};
use super::consumer::{ConsumerGroups, HeartbeatIn, HeartbeatOut, TopicInfo};
use super::member::Member;

/// Rebalance steps one `tick` may chain (a completion can schedule a step due at once);
/// bounds the loop if a member asked for a zero rebalance timeout.
const MAX_TIMER_ROUNDS_PER_TICK: usize = 16;

/// Whether the group, with this member (re)joining, would hold more member metadata than
/// `MAX_GROUP_METADATA_BYTES` (KIP-389's GROUP_MAX_SIZE_REACHED, for bytes instead of
/// members). Small groups cannot reach the bound and are not summed up.
fn would_exceed_metadata_bytes(group: &ClassicGroup, req: &JoinRequest) -> bool {
    use crate::limits::{
        MAX_GROUP_METADATA_BYTES, MAX_MEMBER_METADATA_BYTES, MAX_STORED_STRING_BYTES,
    };
    let most_per_member = MAX_MEMBER_METADATA_BYTES + 6 * MAX_STORED_STRING_BYTES;
    if (group.members.len() + 1).saturating_mul(most_per_member) <= MAX_GROUP_METADATA_BYTES {
        return false;
    }
    let prefix = req
        .group_instance_id
        .as_ref()
        .unwrap_or(&req.client_id)
        .len();
    let member_id = req.member_id.len().max(prefix.min(MAX_STORED_STRING_BYTES));
    let incoming = member_id
        + req.group_instance_id.as_ref().map_or(0, String::len)
        + req.client_id.len()
        + req.client_host.len()
        + req.protocol_type.len()
        + super::member::protocols_bytes(&req.protocols);
    let replaced = group
        .members
        .get(&req.member_id)
        .or_else(|| {
            let instance = req.group_instance_id.as_ref()?;
            group.members.get(group.static_members.get(instance)?)
        })
        .map_or(0, Member::metadata_bytes);
    group.metadata_bytes() - replaced + incoming > MAX_GROUP_METADATA_BYTES
}

/// What `new_member_id` appends to its prefix: `-` and a UUID in its 36-character form.
const MEMBER_ID_SUFFIX_BYTES: usize = 1 + 36;

pub struct GroupCoordinator {
    config: GroupConfig,
    groups: HashMap<String, ClassicGroup>,
    member_id_seed: u64,
    member_id_counter: u64,
    next_offsets_expiry_ms: Option<i64>,
    /// KIP-848 groups; their committed offsets live with the classic groups' offsets.
    consumer: ConsumerGroups,
}

impl GroupCoordinator {
    /// `member_id_seed` makes generated member ids unique across restarts (the driver passes
    /// something like the start time); tests pass a constant and get deterministic ids.
    pub fn new(config: GroupConfig, member_id_seed: u64) -> GroupCoordinator {
        let mut config = config;
        config.group_max_size = config.group_max_size.min(super::config::MAX_GROUP_MEMBERS);
        GroupCoordinator {
            config,
            groups: HashMap::new(),
            member_id_seed,
            member_id_counter: 0,
            next_offsets_expiry_ms: None,
            consumer: ConsumerGroups::default(),
        }
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    pub fn group(&self, group_id: &str) -> Option<&ClassicGroup> {
        self.groups.get(group_id)
    }

    pub fn group_ids(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }

    /// Kafka's `client id-UUID` (or `group instance id-UUID`), with the prefix cut so that
    /// the id still fits the 16-bit strings of `__consumer_offsets` and the responses.
    fn new_member_id(&mut self, prefix: &str) -> String {
        let prefix = crate::limits::truncate(
            prefix,
            crate::limits::MAX_STORED_STRING_BYTES - MEMBER_ID_SUFFIX_BYTES,
        );
        self.member_id_counter += 1;
        let a = splitmix64(
            self.member_id_seed ^ self.member_id_counter.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let b = splitmix64(a);
        format!(
            "{}-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            prefix,
            (a >> 32) as u32,
            (a >> 16) as u16,
            a as u16,
            (b >> 48) as u16,
            b & 0xffff_ffff_ffff
        )
    }

    // ---------------------------------------------------------------------------------
    // JoinGroup
    // ---------------------------------------------------------------------------------

    pub fn join_group(&mut self, now_ms: i64, token: Token, req: JoinRequest) -> Effects {
        let mut fx = Effects::default();
        let reject = |fx: &mut Effects, error| {
            fx.replies.push(Reply::Join(
                token,
                JoinResponse::error(&req.member_id, error),
            ))
        };
        if req.group_id.is_empty() {
            reject(&mut fx, ResponseError::InvalidGroupId);
            return fx;
        }
        if req.session_timeout_ms < self.config.group_min_session_timeout_ms
            || req.session_timeout_ms > self.config.group_max_session_timeout_ms
        {
            reject(&mut fx, ResponseError::InvalidSessionTimeout);
            return fx;
        }
        if self.consumer.is_active(&req.group_id) {
            // The id belongs to a KIP-848 consumer group.
            reject(&mut fx, ResponseError::InconsistentGroupProtocol);
            return fx;
        }
        let is_unknown_member = req.member_id.is_empty();
        if !self.groups.contains_key(&req.group_id) {
            if !is_unknown_member {
                reject(&mut fx, ResponseError::UnknownMemberId);
                return fx;
            }
            self.groups.insert(
                req.group_id.clone(),
                ClassicGroup::new(&req.group_id, now_ms),
            );
        }
        if let Some(group) = self.groups.get(&req.group_id) {
            if would_exceed_metadata_bytes(group, &req) {
                reject(&mut fx, ResponseError::GroupMaxSizeReached);
                return fx;
            }
        }
        let new_member_id = if is_unknown_member {
            let prefix = req
                .group_instance_id
                .clone()
                .unwrap_or_else(|| req.client_id.clone());
            Some(self.new_member_id(&prefix))
        } else {
            None
        };
        let group_id = req.group_id.clone();
        let group = self
            .groups
            .get_mut(&group_id)
            .expect("group was just found or created");
        let mut ctx = Ctx {
            config: &self.config,
            now_ms,
            fx: &mut fx,
        };
        match new_member_id {
            Some(id) => ctx.join_unknown_member(group, token, req, id),
            None => ctx.join_known_member(group, token, req),
        }
        if group.is(GroupState::PreparingRebalance) {
            ctx.try_complete_join(group);
        }
        fx.append(self.fire_timers(now_ms));
        fx
    }

    // ---------------------------------------------------------------------------------
    // SyncGroup
    // ---------------------------------------------------------------------------------

    pub fn sync_group(&mut self, now_ms: i64, token: Token, req: SyncRequest) -> Effects {
        let mut fx = Effects::default();
        let mut ctx = Ctx {
            config: &self.config,
            now_ms,
            fx: &mut fx,
        };
        let result = match self.groups.get_mut(&req.group_id) {
            _ if req.group_id.is_empty() => Err(ResponseError::InvalidGroupId),
            None => Err(ResponseError::UnknownMemberId),
            Some(group) => ctx.sync(group, token, req),
        };
        if let Err(error) = result {
            fx.replies
                .push(Reply::Sync(token, SyncResponse::error(error)));
        }
        fx.append(self.fire_timers(now_ms));
        fx
    }

    // ---------------------------------------------------------------------------------
    // Heartbeat
    // ---------------------------------------------------------------------------------

    pub fn heartbeat(&mut self, now_ms: i64, req: HeartbeatRequest) -> (ErrorCode, Effects) {
        let error = if req.group_id.is_empty() {
            Some(ResponseError::InvalidGroupId)
        } else {
            match self.groups.get_mut(&req.group_id) {
                None => Some(ResponseError::UnknownMemberId),
                Some(group) => heartbeat(group, now_ms, &req),
            }
        };
        (error, self.fire_timers(now_ms))
    }

    // ---------------------------------------------------------------------------------
    // LeaveGroup
    // ---------------------------------------------------------------------------------

    pub fn leave_group(
        &mut self,
        now_ms: i64,
        group_id: &str,
        leaving: Vec<LeavingMember>,
    ) -> (LeaveResponse, Effects) {
        let mut fx = Effects::default();
        if group_id.is_empty() {
            return (
                LeaveResponse {
                    error: Some(ResponseError::InvalidGroupId),
                    members: Vec::new(),
                },
                fx,
            );
        }
        let Some(group) = self.groups.get_mut(group_id) else {
            let members = leaving
                .into_iter()
                .map(|m| (m, Some(ResponseError::UnknownMemberId)))
                .collect();
            return (
                LeaveResponse {
                    error: None,
                    members,
                },
                fx,
            );
        };
        let mut ctx = Ctx {
            config: &self.config,
            now_ms,
            fx: &mut fx,
        };
        let mut results = Vec::with_capacity(leaving.len());
        for m in leaving {
            let error = ctx.leave_one(group, &m);
            results.push((m, error));
        }
        fx.append(self.fire_timers(now_ms));
        (
            LeaveResponse {
                error: None,
                members: results,
            },
            fx,
        )
    }

    // ---------------------------------------------------------------------------------
    // OffsetCommit / OffsetFetch / OffsetDelete
    // ---------------------------------------------------------------------------------

    /// Validate a commit. Nothing is stored until the driver has appended `records` and
    /// calls `apply_commit` with `accepted`. A commit never changes membership; a valid one
    /// from a member counts as a sign of life.
    pub fn plan_commit(&mut self, now_ms: i64, req: &CommitRequest) -> CommitPlan {
        self.plan_member_commit(now_ms, req, false)
    }

    fn plan_member_commit(
        &mut self,
        now_ms: i64,
        req: &CommitRequest,
        transactional: bool,
    ) -> CommitPlan {
        let all = |error: ResponseError| CommitPlan {
            errors: vec![Some(error); req.partitions.len()],
            ..CommitPlan::default()
        };
        // A KIP-848 group checks the member and its epoch; its offsets are stored here.
        let consumer_group = self.consumer.group(&req.group_id).is_some();
        if consumer_group {
            if let Err(error) =
                self.consumer
                    .validate_commit(&req.group_id, &req.member_id, req.generation_id)
            {
                return all(error);
            }
        }
        if !self.groups.contains_key(&req.group_id) {
            if req.generation_id >= 0 && !consumer_group {
                // Either a member of a group this coordinator never knew, or one from an old
                // generation: reject.
                return all(ResponseError::IllegalGeneration);
            }
            self.groups.insert(
                req.group_id.clone(),
                ClassicGroup::new(&req.group_id, now_ms),
            );
        }
        let group = self
            .groups
            .get_mut(&req.group_id)
            .expect("group was just found or created");
        if !consumer_group {
            if let Err(error) = validate_commit(group, req, transactional) {
                return all(error);
            }
        }
        if let Some(member) = group.members.get_mut(&req.member_id) {
            member.heartbeat_deadline_ms = Some(now_ms + member.session_timeout_ms as i64);
        }
        self.plan_offsets(now_ms, req)
    }

    /// TxnOffsetCommit (KIP-447): a commit naming a generation and member is checked as
    /// OffsetCommit checks it, except that a group completing a rebalance takes it (the
    /// transaction's offsets are not visible before it commits, as in Kafka); one without
    /// (generation -1, from producers that only know the group id) is not checked against
    /// the membership, as in Kafka. The records are written in the producer's transaction
    /// and stored only when it commits.
    pub fn plan_txn_commit(&mut self, now_ms: i64, req: &CommitRequest) -> CommitPlan {
        if req.generation_id >= 0 {
            return self.plan_member_commit(now_ms, req, true);
        }
        self.plan_offsets(now_ms, req)
    }

    fn plan_offsets(&self, now_ms: i64, req: &CommitRequest) -> CommitPlan {
        let mut plan = CommitPlan::default();
        for p in &req.partitions {
            let metadata = p.metadata.clone().unwrap_or_default();
            if metadata.len() > self.config.offset_metadata_max_bytes {
                plan.errors
                    .push(Some(ResponseError::OffsetMetadataTooLarge));
                continue;
            }
            let commit_timestamp_ms = if p.commit_timestamp_ms < 0 {
                now_ms
            } else {
                p.commit_timestamp_ms
            };
            let expire_timestamp_ms = if req.retention_time_ms < 0 {
                -1
            } else {
                commit_timestamp_ms.saturating_add(req.retention_time_ms)
            };
            let value = OffsetCommitValue::new(
                p.offset,
                p.leader_epoch,
                &metadata,
                commit_timestamp_ms,
                expire_timestamp_ms,
            );
            let committed = CommittedOffset {
                offset: p.offset,
                leader_epoch: p.leader_epoch,
                metadata,
                commit_timestamp_ms,
                expire_timestamp_ms,
            };
            plan.records.push(OffsetsRecord::OffsetCommit {
                group: req.group_id.clone(),
                topic: p.topic.clone(),
                partition: p.partition,
                value: Some(value),
            });
            plan.accepted
                .push((p.topic.clone(), p.partition, committed));
            plan.errors.push(None);
        }
        plan
    }

    /// Store offsets whose records are durable.
    pub fn apply_commit(
        &mut self,
        group_id: &str,
        accepted: Vec<(String, i32, CommittedOffset)>,
        now_ms: i64,
    ) {
        let group = self
            .groups
            .entry(group_id.to_owned())
            .or_insert_with(|| ClassicGroup::new(group_id, now_ms));
        for (topic, partition, committed) in accepted {
            group.offsets.insert((topic, partition), committed);
        }
    }

    /// Committed offsets, whatever the group's state (a group may use Kafka only to store
    /// offsets). `None` asks for every committed offset; unknown partitions come back `None`.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        topics: Option<&[(String, Vec<i32>)]>,
    ) -> FetchedOffsets {
        let group = self.groups.get(group_id);
        match topics {
            Some(topics) => topics
                .iter()
                .map(|(topic, partitions)| {
                    let found = partitions
                        .iter()
                        .map(|p| {
                            (
                                *p,
                                group.and_then(|g| g.offsets.get(&(topic.clone(), *p)).cloned()),
                            )
                        })
                        .collect();
                    (topic.clone(), found)
                })
                .collect(),
            None => {
                let mut out: FetchedOffsets = Vec::new();
                for ((topic, partition), committed) in group.iter().flat_map(|g| g.offsets.iter()) {
                    match out.last_mut() {
                        Some((t, parts)) if t == topic => {
                            parts.push((*partition, Some(committed.clone())))
                        }
                        _ => out.push((topic.clone(), vec![(*partition, Some(committed.clone()))])),
                    }
                }
                out
            }
        }
    }

    /// OffsetDelete (KIP-496): remove committed offsets of partitions the group no longer
    /// consumes. Returns the group-level error and an error per requested partition.
    pub fn delete_offsets(
        &mut self,
        now_ms: i64,
        group_id: &str,
        partitions: &[(String, i32)],
    ) -> (ErrorCode, Vec<ErrorCode>, Effects) {
        let mut fx = Effects::default();
        let none = Vec::new();
        let Some(group) = self.groups.get_mut(group_id) else {
            return (Some(ResponseError::GroupIdNotFound), none, fx);
        };
        let mut errors = Vec::with_capacity(partitions.len());
        match group.state {
            GroupState::Empty => errors.resize(partitions.len(), None),
            _ if group.protocol_type.as_deref() == Some("consumer") => {
                for (topic, _) in partitions {
                    errors.push(
                        group
                            .is_subscribed_to(topic)
                            .then_some(ResponseError::GroupSubscribedToTopic),
                    );
                }
            }
            _ => return (Some(ResponseError::NonEmptyGroup), none, fx),
        }
        for ((topic, partition), error) in partitions.iter().zip(&errors) {
            if error.is_none() && group.offsets.remove(&(topic.clone(), *partition)).is_some() {
                fx.records.push(OffsetsRecord::OffsetCommit {
                    group: group_id.to_owned(),
                    topic: topic.clone(),
                    partition: *partition,
                    value: None,
                });
            }
        }
        let _ = now_ms;
        (None, errors, fx)
    }

    // ---------------------------------------------------------------------------------
    // DescribeGroups / ListGroups / DeleteGroups
    // ---------------------------------------------------------------------------------

    pub fn describe_group(&self, group_id: &str) -> GroupDescription {
        if let Some(cg) = self.consumer.group(group_id) {
            return GroupDescription {
                group_id: group_id.to_owned(),
                error: None,
                state: cg.state(),
                protocol_type: "consumer".to_owned(),
                protocol: String::new(),
                members: cg
                    .members()
                    .map(|(id, _, instance)| MemberDescription {
                        member_id: id.clone(),
                        group_instance_id: instance.cloned(),
                        client_id: String::new(),
                        client_host: String::new(),
                        metadata: Bytes::new(),
                        assignment: Bytes::new(),
                    })
                    .collect(),
            };
        }
        let Some(group) = self.groups.get(group_id) else {
            return GroupDescription {
                group_id: group_id.to_owned(),
                error: None,
                state: "Dead",
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            };
        };
        let stable = group.is(GroupState::Stable);
        let protocol = if stable {
            group.protocol_name.clone().unwrap_or_default()
        } else {
            String::new()
        };
        let members = group
            .members
            .values()
            .map(|m| MemberDescription {
                member_id: m.member_id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: if stable {
                    m.metadata(&protocol)
                } else {
                    Bytes::new()
                },
                assignment: if stable {
                    m.assignment.clone()
                } else {
                    Bytes::new()
                },
            })
            .collect();
        GroupDescription {
            group_id: group_id.to_owned(),
            error: None,
            state: group.state.name(),
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            protocol,
            members,
        }
    }

    /// Every group this coordinator holds, with its state, member count and committed
    /// offsets, sorted by group id (what the metrics endpoint reports).
    pub fn summaries(&self) -> Vec<GroupSummary> {
        let mut ids: Vec<&String> = self.groups.keys().collect();
        ids.extend(
            self.consumer
                .groups()
                .map(|(id, _)| id)
                .filter(|id| !self.groups.contains_key(*id)),
        );
        ids.sort();
        ids.into_iter()
            .map(|id| {
                let classic = self.groups.get(id);
                let (state, members) = match self.consumer.group(id) {
                    Some(cg) => (cg.state(), cg.members().count()),
                    None => classic
                        .map(|g| (g.state.name(), g.members.len()))
                        .unwrap_or(("Dead", 0)),
                };
                let offsets = classic
                    .map(|g| {
                        g.offsets
                            .iter()
                            .map(|((topic, partition), c)| (topic.clone(), *partition, c.offset))
                            .collect()
                    })
                    .unwrap_or_default();
                GroupSummary {
                    group_id: id.clone(),
                    state,
                    members,
                    offsets,
                }
            })
            .collect()
    }

    /// ListGroups; empty filters match everything. State names compare case-insensitively
    /// (KIP-518); every group here is of type "classic" (KIP-848's types filter).
    pub fn list_groups(
        &self,
        states_filter: &[String],
        types_filter: &[String],
    ) -> Vec<GroupListing> {
        let wanted = |group_type: &str, state: &str| {
            (types_filter.is_empty()
                || types_filter
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(group_type)))
                && (states_filter.is_empty()
                    || states_filter.iter().any(|s| s.eq_ignore_ascii_case(state)))
        };
        let classic = self
            .groups
            .values()
            .filter(|g| self.consumer.group(&g.group_id).is_none())
            .map(|g| GroupListing {
                group_id: g.group_id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                state: g.state.name(),
                group_type: "classic",
            });
        let consumer = self.consumer.groups().map(|(id, g)| GroupListing {
            group_id: id.clone(),
            protocol_type: "consumer".to_owned(),
            state: g.state(),
            group_type: "consumer",
        });
        let mut out: Vec<GroupListing> = classic
            .chain(consumer)
            .filter(|g| wanted(g.group_type, g.state))
            .collect();
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    /// DeleteGroups: only empty groups go, with all their offsets (tombstones for each).
    pub fn delete_groups(&mut self, group_ids: &[String]) -> (Vec<(String, ErrorCode)>, Effects) {
        let mut fx = Effects::default();
        let mut results = Vec::with_capacity(group_ids.len());
        for group_id in group_ids {
            if self.consumer.group(group_id).is_some() {
                if !self.consumer.delete_empty(group_id) {
                    results.push((group_id.clone(), Some(ResponseError::NonEmptyGroup)));
                    continue;
                }
                if !self.groups.contains_key(group_id) {
                    fx.records.push(OffsetsRecord::GroupMetadata {
                        group: group_id.clone(),
                        value: None,
                    });
                    results.push((group_id.clone(), None));
                    continue;
                }
            }
            let error = match self.groups.get(group_id) {
                None => Some(ResponseError::GroupIdNotFound),
                Some(g) if !g.is(GroupState::Empty) => Some(ResponseError::NonEmptyGroup),
                Some(_) => {
                    let group = self.groups.remove(group_id).expect("group was just found");
                    fx.records.extend(tombstones(&group));
                    None
                }
            };
            results.push((group_id.clone(), error));
        }
        (results, fx)
    }

    // ---------------------------------------------------------------------------------
    // ConsumerGroupHeartbeat (KIP-848)
    // ---------------------------------------------------------------------------------

    pub fn consumer_heartbeat(
        &mut self,
        now_ms: i64,
        req: HeartbeatIn,
        topics: &dyn Fn(&str) -> Option<TopicInfo>,
    ) -> HeartbeatOut {
        if self
            .groups
            .get(&req.group_id)
            .is_some_and(|g| !g.members.is_empty())
        {
            // A live classic group holds this id.
            return HeartbeatOut {
                error: Some(ResponseError::GroupIdNotFound),
                member_id: req.member_id,
                member_epoch: -1,
                heartbeat_interval_ms: 0,
                assignment: None,
            };
        }
        self.consumer
            .heartbeat(now_ms, req, topics, self.member_id_seed)
    }

    // ---------------------------------------------------------------------------------
    // Time
    // ---------------------------------------------------------------------------------

    /// Let time pass: expire sessions, pending members and pending syncs, complete delayed
    /// joins, and expire old offsets.
    pub fn tick(&mut self, now_ms: i64) -> Effects {
        self.consumer.tick(now_ms);
        let mut fx = self.fire_timers(now_ms);
        match self.next_offsets_expiry_ms {
            None => {
                self.next_offsets_expiry_ms =
                    Some(now_ms + self.config.offsets_retention_check_interval_ms)
            }
            Some(at) if at <= now_ms => {
                fx.append(self.expire_offsets(now_ms));
                // Kafka's periodic cleanup: an empty consumer group with no offsets is gone.
                let classic = &self.groups;
                self.consumer
                    .forget_empty(|group_id| !classic.contains_key(group_id));
                self.next_offsets_expiry_ms =
                    Some(now_ms + self.config.offsets_retention_check_interval_ms);
            }
            Some(_) => {}
        }
        fx
    }

    /// The earliest time at which `tick` has something to do.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        let mut next = self.next_offsets_expiry_ms;
        let mut consider = |t: Option<i64>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for g in self.groups.values() {
            consider(g.join_deadline_ms);
            consider(g.sync_deadline_ms);
            g.members
                .values()
                .for_each(|m| consider(m.heartbeat_deadline_ms));
            g.pending_members.values().for_each(|d| consider(Some(*d)));
        }
        next
    }

    fn fire_timers(&mut self, now_ms: i64) -> Effects {
        let mut fx = Effects::default();
        let mut ctx = Ctx {
            config: &self.config,
            now_ms,
            fx: &mut fx,
        };
        for group in self.groups.values_mut() {
            for _ in 0..MAX_TIMER_ROUNDS_PER_TICK {
                if !ctx.fire_group_timers(group) {
                    break;
                }
            }
        }
        fx
    }

    /// Remove expired offsets (KIP-211 semantics) and empty groups left with none.
    pub fn expire_offsets(&mut self, now_ms: i64) -> Effects {
        let mut fx = Effects::default();
        let retention_ms = self.config.offsets_retention_ms;
        let mut dead = Vec::new();
        for group in self.groups.values_mut() {
            let expired: Vec<(String, i32)> = group
                .offsets
                .iter()
                .filter(|((topic, _), c)| {
                    let base_ms = match (&group.protocol_type, group.state) {
                        // No consumer left: count from when the group became empty.
                        (Some(_), GroupState::Empty) => Some(group.state_timestamp_ms),
                        // Stable consumers: offsets of topics no longer subscribed age from their commit.
                        (Some(t), GroupState::Stable)
                            if t == "consumer" && group.subscribed_topics.is_some() =>
                        {
                            (!group.is_subscribed_to(topic)).then_some(c.commit_timestamp_ms)
                        }
                        // Offsets-only group (no group management).
                        (None, _) => Some(c.commit_timestamp_ms),
                        _ => None,
                    };
                    match base_ms {
                        None => false,
                        Some(_) if c.expire_timestamp_ms >= 0 => now_ms >= c.expire_timestamp_ms,
                        Some(base) => now_ms - base >= retention_ms,
                    }
                })
                .map(|(k, _)| k.clone())
                .collect();
            for (topic, partition) in expired {
                group.offsets.remove(&(topic.clone(), partition));
                fx.records.push(OffsetsRecord::OffsetCommit {
                    group: group.group_id.clone(),
                    topic,
                    partition,
                    value: None,
                });
            }
            if group.is(GroupState::Empty) && group.offsets.is_empty() {
                dead.push(group.group_id.clone());
            }
        }
        for group_id in dead {
            self.groups.remove(&group_id);
            fx.records.push(OffsetsRecord::GroupMetadata {
                group: group_id,
                value: None,
            });
        }
        fx
    }

    /// The records that rebuild the current state of the groups `include` selects: every
    /// committed offset, and the metadata of every group that has any. Appended after
    /// everything before it, they make the older records redundant: replaying them alone
    /// gives the same state as replaying the whole log (what compaction relies on).
    pub fn snapshot(&self, mut include: impl FnMut(&str) -> bool) -> Vec<OffsetsRecord> {
        let mut ids: Vec<&String> = self.groups.keys().filter(|id| include(id)).collect();
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            let g = &self.groups[id];
            for ((topic, partition), c) in &g.offsets {
                out.push(OffsetsRecord::OffsetCommit {
                    group: id.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    value: Some(OffsetCommitValue::new(
                        c.offset,
                        c.leader_epoch,
                        &c.metadata,
                        c.commit_timestamp_ms,
                        c.expire_timestamp_ms,
                    )),
                });
            }
            if g.generation_id > 0 || g.protocol_type.is_some() || !g.members.is_empty() {
                out.push(g.metadata_record());
            }
        }
        out
    }

    // ---------------------------------------------------------------------------------
    // Loading from __consumer_offsets
    // ---------------------------------------------------------------------------------

    /// Apply one record read back from `__consumer_offsets`, in log order.
    pub fn replay(&mut self, record: OffsetsRecord, now_ms: i64) {
        match record {
            OffsetsRecord::OffsetCommit {
                group,
                topic,
                partition,
                value,
            } => match value {
                Some(v) => {
                    let g = self
                        .groups
                        .entry(group.clone())
                        .or_insert_with(|| ClassicGroup::new(&group, now_ms));
                    g.offsets.insert(
                        (topic, partition),
                        CommittedOffset {
                            offset: v.offset,
                            leader_epoch: v.leader_epoch,
                            metadata: v.metadata,
                            commit_timestamp_ms: v.commit_timestamp_ms,
                            expire_timestamp_ms: v.expire_timestamp_ms,
                        },
                    );
                }
                None => {
                    if let Some(g) = self.groups.get_mut(&group) {
                        g.offsets.remove(&(topic, partition));
                    }
                }
            },
            OffsetsRecord::GroupMetadata { group, value } => {
                let offsets = self
                    .groups
                    .remove(&group)
                    .map(|g| g.offsets)
                    .unwrap_or_default();
                let Some(v) = value else {
                    if !offsets.is_empty() {
                        let mut g = ClassicGroup::new(&group, now_ms);
                        g.offsets = offsets;
                        self.groups.insert(group, g);
                    }
                    return;
                };
                let mut g = ClassicGroup::new(
                    &group,
                    if v.current_state_timestamp_ms >= 0 {
                        v.current_state_timestamp_ms
                    } else {
                        now_ms
                    },
                );
                g.offsets = offsets;
                g.generation_id = v.generation;
                g.protocol_type = (!v.protocol_type.is_empty()).then_some(v.protocol_type);
                g.protocol_name = v.protocol.clone();
                for m in v.members {
                    let protocol = v.protocol.clone().unwrap_or_default();
                    g.add_member(Member {
                        member_id: m.member_id,
                        group_instance_id: m.group_instance_id,
                        client_id: m.client_id,
                        client_host: m.client_host,
                        rebalance_timeout_ms: m.rebalance_timeout_ms,
                        session_timeout_ms: m.session_timeout_ms,
                        protocol_type: g.protocol_type.clone().unwrap_or_default(),
                        protocols: vec![Protocol {
                            name: protocol,
                            metadata: m.subscription,
                        }],
                        assignment: m.assignment,
                        join_waiter: None,
                        sync_waiter: None,
                        is_new: false,
                        heartbeat_deadline_ms: None,
                    });
                }
                g.leader_id = v
                    .leader
                    .filter(|l| g.members.contains_key(l))
                    .or_else(|| g.members.keys().next().cloned());
                if !g.members.is_empty() {
                    g.state = GroupState::Stable;
                }
                self.groups.insert(group, g);
            }
        }
    }

    /// Rebuild the groups of one `__consumer_offsets` partition from its records, in log
    /// order; the loaded members must heartbeat within their session timeout from now.
    pub fn load(&mut self, records: impl IntoIterator<Item = OffsetsRecord>, now_ms: i64) {
        let mut touched = std::collections::HashSet::new();
        for record in records {
            touched.insert(record.group().to_owned());
            self.replay(record, now_ms);
        }
        for id in touched {
            if let Some(g) = self.groups.get_mut(&id) {
                for m in g.members.values_mut() {
                    m.heartbeat_deadline_ms = Some(now_ms + m.session_timeout_ms as i64);
                }
                g.subscribed_topics = g.compute_subscribed_topics();
            }
        }
    }

    /// Forget the groups whose `__consumer_offsets` partition satisfies `moved` (the
    /// partition went to another shard or node); parked requests get NOT_COORDINATOR.
    pub fn unload(&mut self, mut moved: impl FnMut(&str) -> bool) -> Effects {
        let mut fx = Effects::default();
        let ids: Vec<String> = self.groups.keys().filter(|id| moved(id)).cloned().collect();
        for id in ids {
            let group = self.groups.remove(&id).expect("id came from the map");
            for m in group.members.values() {
                if let Some(t) = m.join_waiter {
                    fx.replies.push(Reply::Join(
                        t,
                        JoinResponse::error(&m.member_id, ResponseError::NotCoordinator),
                    ));
                }
                if let Some(t) = m.sync_waiter {
                    fx.replies.push(Reply::Sync(
                        t,
                        SyncResponse::error(ResponseError::NotCoordinator),
                    ));
                }
            }
        }
        fx
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn tombstones(group: &ClassicGroup) -> Vec<OffsetsRecord> {
    let mut out: Vec<OffsetsRecord> = group
        .offsets
        .keys()
        .map(|(topic, partition)| OffsetsRecord::OffsetCommit {
            group: group.group_id.clone(),
            topic: topic.clone(),
            partition: *partition,
            value: None,
        })
        .collect();
    out.push(OffsetsRecord::GroupMetadata {
        group: group.group_id.clone(),
        value: None,
    });
    out
}

fn heartbeat(group: &mut ClassicGroup, now_ms: i64, req: &HeartbeatRequest) -> ErrorCode {
    if group.is_static_member_fenced(&req.member_id, req.group_instance_id.as_deref()) {
        return Some(ResponseError::FencedInstanceId);
    }
    if !group.members.contains_key(&req.member_id) {
        return Some(ResponseError::UnknownMemberId);
    }
    if req.generation_id != group.generation_id {
        return Some(ResponseError::IllegalGeneration);
    }
    let state = group.state;
    let member = group
        .members
        .get_mut(&req.member_id)
        .expect("member was just found");
    match state {
        GroupState::Empty => Some(ResponseError::UnknownMemberId),
        GroupState::PreparingRebalance => {
            member.heartbeat_deadline_ms = Some(now_ms + member.session_timeout_ms as i64);
            Some(ResponseError::RebalanceInProgress)
        }
        // A member may heartbeat between its JoinGroup answer and its SyncGroup.
        GroupState::CompletingRebalance | GroupState::Stable => {
            member.heartbeat_deadline_ms = Some(now_ms + member.session_timeout_ms as i64);
            None
        }
    }
}

fn validate_commit(
    group: &ClassicGroup,
    req: &CommitRequest,
    transactional: bool,
) -> Result<(), ResponseError> {
    if req.generation_id < 0 && group.is(GroupState::Empty) {
        // Generation -1 comes from admin tools and from consumers not using group
        // management; they may commit while the group has no members.
        return Ok(());
    }
    if req.generation_id >= 0 || !req.member_id.is_empty() || req.group_instance_id.is_some() {
        if group.is_static_member_fenced(&req.member_id, req.group_instance_id.as_deref()) {
            return Err(ResponseError::FencedInstanceId);
        }
        if !group.members.contains_key(&req.member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if req.generation_id != group.generation_id {
            return Err(ResponseError::IllegalGeneration);
        }
    } else if !group.is(GroupState::Empty) {
        // No member id and no generation: only an empty group takes such commits.
        return Err(ResponseError::UnknownMemberId);
    }
    if !transactional && group.is(GroupState::CompletingRebalance) {
        // The member has its new generation from JoinGroup but no assignment yet (a
        // transactional commit is taken: Kafka's coordinator does not refuse it).
        return Err(ResponseError::RebalanceInProgress);
    }
    Ok(())
}

/// The coordinator's settings, the time and the output of one input, handed to the
/// per-group transitions.
struct Ctx<'a> {
    config: &'a GroupConfig,
    now_ms: i64,
    fx: &'a mut Effects,
}

impl Ctx<'_> {
    fn reply_join(&mut self, token: Token, response: JoinResponse) {
        self.fx.replies.push(Reply::Join(token, response));
    }

    fn reply_sync(&mut self, token: Token, response: SyncResponse) {
        self.fx.replies.push(Reply::Sync(token, response));
    }

    fn current_generation_response(
        &self,
        group: &ClassicGroup,
        member_id: &str,
        with_members: bool,
    ) -> JoinResponse {
        JoinResponse {
            error: None,
            generation_id: group.generation_id,
            protocol_type: group.protocol_type.clone(),
            protocol_name: group.protocol_name.clone(),
            leader: group.leader_id.clone().unwrap_or_default(),
            member_id: member_id.to_owned(),
            members: if with_members {
                join_members(group)
            } else {
                Vec::new()
            },
            skip_assignment: false,
        }
    }

    fn join_unknown_member(
        &mut self,
        group: &mut ClassicGroup,
        token: Token,
        req: JoinRequest,
        new_member_id: String,
    ) {
        let names: Vec<&str> = req.protocols.iter().map(|p| p.name.as_str()).collect();
        if !group.supports_protocols(&req.protocol_type, &names) {
            return self.reply_join(
                token,
                JoinResponse::error("", ResponseError::InconsistentGroupProtocol),
            );
        }
        let static_rejoin = req
            .group_instance_id
            .as_ref()
            .is_some_and(|id| group.static_members.contains_key(id));
        if !static_rejoin
            && group.members.len() + group.pending_members.len() >= self.config.group_max_size
        {
            return self.reply_join(
                token,
                JoinResponse::error("", ResponseError::GroupMaxSizeReached),
            );
        }
        if static_rejoin {
            self.static_member_rejoin(group, token, req, new_member_id)
        } else if req.group_instance_id.is_none() && req.require_known_member_id {
            // KIP-394: hand out the id and have the member come back with it, so a client
            // that times out before the answer does not leave a ghost member behind.
            group.pending_members.insert(
                new_member_id.clone(),
                self.now_ms + req.session_timeout_ms as i64,
            );
            self.reply_join(
                token,
                JoinResponse::error(&new_member_id, ResponseError::MemberIdRequired),
            );
        } else {
            self.add_member_and_rebalance(group, token, &req, new_member_id);
        }
    }

    /// KIP-345: a static member came back without its member id (it restarted). It takes the
    /// place of its old incarnation, which is fenced; no rebalance unless it must.
    fn static_member_rejoin(
        &mut self,
        group: &mut ClassicGroup,
        token: Token,
        req: JoinRequest,
        new_member_id: String,
    ) {
        let instance = req
            .group_instance_id
            .clone()
            .expect("static rejoin has an instance id");
        let old_member_id = group
            .static_members
            .get(&instance)
            .cloned()
            .expect("static member is registered");
        let old_leader = group.leader_id.clone();
        let mut member = group
            .remove_member(&old_member_id)
            .expect("a registered static member is a member");
        if let Some(t) = member.join_waiter.take() {
            self.reply_join(
                t,
                JoinResponse::error(&old_member_id, ResponseError::FencedInstanceId),
            );
        }
        if let Some(t) = member.sync_waiter.take() {
            self.reply_sync(t, SyncResponse::error(ResponseError::FencedInstanceId));
        }
        let protocols_changed = !member.matches(&req.protocols);
        member.member_id = new_member_id.clone();
        member.client_id = req.client_id.clone();
        member.client_host = req.client_host.clone();
        member.protocols = req.protocols.clone();
        member.session_timeout_ms = req.session_timeout_ms;
        member.rebalance_timeout_ms = req.rebalance_timeout_ms;
        member.heartbeat_deadline_ms = Some(self.now_ms + req.session_timeout_ms as i64);
        member.join_waiter = Some(token);
        let was_leader = old_leader.as_deref() == Some(old_member_id.as_str());
        let was_pending_sync = group.pending_sync.remove(&old_member_id);
        group.add_member(member);
        if was_leader {
            group.leader_id = Some(new_member_id.clone());
        }
        if was_pending_sync {
            group.pending_sync.insert(new_member_id.clone());
        }
        match group.state {
            GroupState::Stable
                if !protocols_changed || group.select_protocol() == group.protocol_name =>
            {
                // Same protocol: keep the generation and the assignment. Answer with the old
                // leader id, so a rejoining leader does not compute an assignment the stable
                // group would never send out.
                let member = group
                    .members
                    .get_mut(&new_member_id)
                    .expect("member was just added");
                member.join_waiter = None;
                let mut response = self.current_generation_response(group, &new_member_id, false);
                response.leader = old_leader.unwrap_or_default();
                self.fx.records.push(group.metadata_record());
                self.reply_join(token, response);
            }
            // The old member id may already be in the leader's hands: rebalance so the
            // assignment names the new one.
            GroupState::Stable | GroupState::CompletingRebalance => self.prepare_rebalance(group),
            GroupState::PreparingRebalance => {}
            // Not reachable (a group with members is never Empty); rebalancing is the safe answer.
            GroupState::Empty => self.prepare_rebalance(group),
        }
    }

    fn join_known_member(&mut self, group: &mut ClassicGroup, token: Token, req: JoinRequest) {
        let member_id = req.member_id.clone();
        let names: Vec<&str> = req.protocols.iter().map(|p| p.name.as_str()).collect();
        if !group.supports_protocols(&req.protocol_type, &names) {
            return self.reply_join(
                token,
                JoinResponse::error(&member_id, ResponseError::InconsistentGroupProtocol),
            );
        }
        if group.pending_members.contains_key(&member_id) {
            // The second half of the KIP-394 handshake.
            return self.add_member_and_rebalance(group, token, &req, member_id);
        }
        if group.is_static_member_fenced(&member_id, req.group_instance_id.as_deref()) {
            return self.reply_join(
                token,
                JoinResponse::error(&member_id, ResponseError::FencedInstanceId),
            );
        }
        let instance_unknown = req
            .group_instance_id
            .as_ref()
            .is_some_and(|id| !group.static_members.contains_key(id));
        if !group.members.contains_key(&member_id) || instance_unknown {
            return self.reply_join(
                token,
                JoinResponse::error(&member_id, ResponseError::UnknownMemberId),
            );
        }
        let matches = group.members[&member_id].matches(&req.protocols);
        match group.state {
            GroupState::PreparingRebalance => self.update_member_and_rebalance(group, token, &req),
            GroupState::CompletingRebalance if matches => {
                // A retry of a JoinGroup whose answer was lost: answer it again.
                let leader = group.is_leader(&member_id);
                let response = self.current_generation_response(group, &member_id, leader);
                self.reply_join(token, response);
            }
            GroupState::CompletingRebalance => self.update_member_and_rebalance(group, token, &req),
            // The leader rejoining forces a rebalance (its view of the topics changed).
            GroupState::Stable if group.is_leader(&member_id) || !matches => {
                self.update_member_and_rebalance(group, token, &req)
            }
            GroupState::Stable => {
                let response = self.current_generation_response(group, &member_id, false);
                self.reply_join(token, response);
            }
            GroupState::Empty => self.reply_join(
                token,
                JoinResponse::error(&member_id, ResponseError::UnknownMemberId),
            ),
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        group: &mut ClassicGroup,
        token: Token,
        req: &JoinRequest,
        member_id: String,
    ) {
        let member = Member {
            member_id,
            group_instance_id: req.group_instance_id.clone(),
            client_id: req.client_id.clone(),
            client_host: req.client_host.clone(),
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            session_timeout_ms: req.session_timeout_ms,
            protocol_type: req.protocol_type.clone(),
            protocols: req.protocols.clone(),
            assignment: Bytes::new(),
            join_waiter: Some(token),
            sync_waiter: None,
            is_new: true,
            // A new member cannot heartbeat before it has its generation; bound its wait.
            heartbeat_deadline_ms: Some(self.now_ms + NEW_MEMBER_JOIN_TIMEOUT_MS),
        };
        if group.is(GroupState::PreparingRebalance) && group.generation_id == 0 {
            group.new_member_added = true;
        }
        group.add_member(member);
        self.maybe_prepare_rebalance(group);
    }

    fn update_member_and_rebalance(
        &mut self,
        group: &mut ClassicGroup,
        token: Token,
        req: &JoinRequest,
    ) {
        let member = group
            .members
            .get_mut(&req.member_id)
            .expect("caller checked the member exists");
        member.protocols = req.protocols.clone();
        member.rebalance_timeout_ms = req.rebalance_timeout_ms;
        member.session_timeout_ms = req.session_timeout_ms;
        member.client_id = req.client_id.clone();
        member.client_host = req.client_host.clone();
        if let Some(old) = member.join_waiter.replace(token) {
            // A client never has two JoinGroups in flight; the older one is from a connection
            // it gave up on.
            let old_response =
                JoinResponse::error(&req.member_id, ResponseError::RebalanceInProgress);
            self.reply_join(old, old_response);
        }
        self.maybe_prepare_rebalance(group);
    }

    fn maybe_prepare_rebalance(&mut self, group: &mut ClassicGroup) {
        if group.can_rebalance() {
            self.prepare_rebalance(group);
        }
    }

    fn prepare_rebalance(&mut self, group: &mut ClassicGroup) {
        if group.is(GroupState::CompletingRebalance) {
            // Members waiting for an assignment that will not come must rejoin.
            self.reset_and_propagate_assignment_error(group, ResponseError::RebalanceInProgress);
        }
        group.pending_sync.clear();
        group.sync_deadline_ms = None;
        let rebalance_timeout_ms = group.rebalance_timeout_ms();
        if group.is(GroupState::Empty) {
            let delay_ms = self.config.group_initial_rebalance_delay_ms;
            group.initial_delay = Some(InitialDelay {
                delay_ms,
                remaining_ms: (rebalance_timeout_ms - delay_ms).max(0),
            });
            group.join_deadline_ms = Some(self.now_ms + delay_ms);
        } else {
            group.initial_delay = None;
            group.join_deadline_ms = Some(self.now_ms + rebalance_timeout_ms);
        }
        group.new_member_added = false;
        group.transition(GroupState::PreparingRebalance, self.now_ms);
        self.try_complete_join(group);
    }

    fn reset_and_propagate_assignment_error(
        &mut self,
        group: &mut ClassicGroup,
        error: ResponseError,
    ) {
        for m in group.members.values_mut() {
            m.assignment = Bytes::new();
            if let Some(t) = m.sync_waiter.take() {
                self.fx
                    .replies
                    .push(Reply::Sync(t, SyncResponse::error(error)));
            }
        }
    }

    /// Complete the rebalance early once everyone is in (not during the initial delay,
    /// which exists to let more members arrive).
    fn try_complete_join(&mut self, group: &mut ClassicGroup) {
        if group.is(GroupState::PreparingRebalance)
            && group.initial_delay.is_none()
            && group.has_all_members_joined()
        {
            self.complete_join(group);
        }
    }

    fn complete_join(&mut self, group: &mut ClassicGroup) {
        group.join_deadline_ms = None;
        group.initial_delay = None;
        // Dynamic members that did not rejoin in time are gone; static ones keep their place.
        let gone: Vec<String> = group
            .members
            .values()
            .filter(|m| m.join_waiter.is_none() && m.group_instance_id.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for id in gone {
            tracing::info!(
                group = %group.group_id,
                member = %id,
                "member removed: it did not rejoin within the rebalance timeout"
            );
            if let Some(m) = group.remove_member(&id) {
                if let Some(t) = m.sync_waiter {
                    self.reply_sync(t, SyncResponse::error(ResponseError::UnknownMemberId));
                }
            }
        }
        if !group.maybe_elect_new_joined_leader() && !group.members.is_empty() {
            // Only static members that have not rejoined remain: wait for them (or for
            // their sessions to expire) another rebalance timeout.
            group.join_deadline_ms = Some(self.now_ms + group.rebalance_timeout_ms());
            return;
        }
        group.generation_id += 1;
        group.pending_sync.clear();
        if group.members.is_empty() {
            group.protocol_name = None;
            group.subscribed_topics = None;
            group.transition(GroupState::Empty, self.now_ms);
            self.fx.records.push(group.metadata_record());
            return;
        }
        group.protocol_name = group.select_protocol();
        group.subscribed_topics = group.compute_subscribed_topics();
        group.transition(GroupState::CompletingRebalance, self.now_ms);
        let members = join_members(group);
        let now_ms = self.now_ms;
        let ids: Vec<String> = group.members.keys().cloned().collect();
        for id in ids {
            let is_leader = group.is_leader(&id);
            let response = JoinResponse {
                error: None,
                generation_id: group.generation_id,
                protocol_type: group.protocol_type.clone(),
                protocol_name: group.protocol_name.clone(),
                leader: group.leader_id.clone().unwrap_or_default(),
                member_id: id.clone(),
                members: if is_leader {
                    members.clone()
                } else {
                    Vec::new()
                },
                skip_assignment: false,
            };
            let m = group.members.get_mut(&id).expect("id came from the map");
            if let Some(t) = m.join_waiter.take() {
                self.fx.replies.push(Reply::Join(t, response));
            }
            m.heartbeat_deadline_ms = Some(now_ms + m.session_timeout_ms as i64);
            m.is_new = false;
            group.pending_sync.insert(id);
        }
        // Members that do not sync within the rebalance timeout are removed.
        group.sync_deadline_ms = Some(now_ms + group.rebalance_timeout_ms());
    }

    fn sync(
        &mut self,
        group: &mut ClassicGroup,
        token: Token,
        req: SyncRequest,
    ) -> Result<(), ResponseError> {
        if group.is_static_member_fenced(&req.member_id, req.group_instance_id.as_deref()) {
            return Err(ResponseError::FencedInstanceId);
        }
        if !group.members.contains_key(&req.member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if req.generation_id != group.generation_id {
            return Err(ResponseError::IllegalGeneration);
        }
        if req
            .protocol_type
            .as_ref()
            .is_some_and(|t| Some(t) != group.protocol_type.as_ref())
            || req
                .protocol_name
                .as_ref()
                .is_some_and(|n| Some(n) != group.protocol_name.as_ref())
        {
            return Err(ResponseError::InconsistentGroupProtocol);
        }
        match group.state {
            GroupState::Empty => Err(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => Err(ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance => {
                self.synced(group, &req.member_id);
                let member = group
                    .members
                    .get_mut(&req.member_id)
                    .expect("member was just found");
                if let Some(old) = member.sync_waiter.replace(token) {
                    self.fx.replies.push(Reply::Sync(
                        old,
                        SyncResponse::error(ResponseError::RebalanceInProgress),
                    ));
                }
                if group.is_leader(&req.member_id) {
                    let assignment = group.fill_assignment(&req.assignments);
                    for (id, bytes) in assignment {
                        if let Some(m) = group.members.get_mut(&id) {
                            m.assignment = bytes;
                        }
                    }
                    group.transition(GroupState::Stable, self.now_ms);
                    self.fx.records.push(group.metadata_record());
                    let now_ms = self.now_ms;
                    for m in group.members.values_mut() {
                        if let Some(t) = m.sync_waiter.take() {
                            self.fx.replies.push(Reply::Sync(
                                t,
                                SyncResponse {
                                    error: None,
                                    protocol_type: group.protocol_type.clone(),
                                    protocol_name: group.protocol_name.clone(),
                                    assignment: m.assignment.clone(),
                                },
                            ));
                            m.heartbeat_deadline_ms = Some(now_ms + m.session_timeout_ms as i64);
                        }
                    }
                }
                Ok(())
            }
            GroupState::Stable => {
                self.synced(group, &req.member_id);
                let member = group
                    .members
                    .get_mut(&req.member_id)
                    .expect("member was just found");
                member.heartbeat_deadline_ms = Some(self.now_ms + member.session_timeout_ms as i64);
                let response = SyncResponse {
                    error: None,
                    protocol_type: group.protocol_type.clone(),
                    protocol_name: group.protocol_name.clone(),
                    assignment: member.assignment.clone(),
                };
                self.reply_sync(token, response);
                Ok(())
            }
        }
    }

    fn synced(&mut self, group: &mut ClassicGroup, member_id: &str) {
        group.pending_sync.remove(member_id);
        if group.pending_sync.is_empty() {
            group.sync_deadline_ms = None;
        }
    }

    fn leave_one(&mut self, group: &mut ClassicGroup, leaving: &LeavingMember) -> ErrorCode {
        match &leaving.group_instance_id {
            None => {
                if group.pending_members.remove(&leaving.member_id).is_some() {
                    self.try_complete_join(group);
                    return None;
                }
                if !group.members.contains_key(&leaving.member_id) {
                    return Some(ResponseError::UnknownMemberId);
                }
                self.remove_member_and_update_group(group, &leaving.member_id.clone());
                None
            }
            Some(instance) => {
                let Some(holder) = group.static_members.get(instance).cloned() else {
                    return Some(ResponseError::UnknownMemberId);
                };
                // An empty member id lets an admin remove a static member by instance id.
                if !leaving.member_id.is_empty() && holder != leaving.member_id {
                    return Some(ResponseError::FencedInstanceId);
                }
                self.remove_member_and_update_group(group, &holder);
                None
            }
        }
    }

    fn remove_member_and_update_group(&mut self, group: &mut ClassicGroup, member_id: &str) {
        let Some(member) = group.remove_member(member_id) else {
            return;
        };
        if let Some(t) = member.join_waiter {
            self.reply_join(
                t,
                JoinResponse::error(member_id, ResponseError::UnknownMemberId),
            );
        }
        if let Some(t) = member.sync_waiter {
            self.reply_sync(t, SyncResponse::error(ResponseError::UnknownMemberId));
        }
        match group.state {
            GroupState::Empty => {}
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.maybe_prepare_rebalance(group)
            }
            GroupState::PreparingRebalance => self.try_complete_join(group),
        }
    }

    /// Fire whatever is due in one group; true if something fired.
    fn fire_group_timers(&mut self, group: &mut ClassicGroup) -> bool {
        let now_ms = self.now_ms;
        let due = |t: Option<i64>| t.is_some_and(|t| t <= now_ms);
        let mut fired = false;

        if due(group.join_deadline_ms) {
            fired = true;
            match group.initial_delay {
                Some(delay) if group.new_member_added && delay.remaining_ms > 0 => {
                    group.new_member_added = false;
                    let next_delay_ms = self
                        .config
                        .group_initial_rebalance_delay_ms
                        .min(delay.remaining_ms);
                    let remaining_ms = (delay.remaining_ms - delay.delay_ms).max(0);
                    group.initial_delay = Some(InitialDelay {
                        delay_ms: next_delay_ms,
                        remaining_ms,
                    });
                    group.join_deadline_ms = Some(now_ms + next_delay_ms);
                }
                _ => self.complete_join(group),
            }
        }

        if due(group.sync_deadline_ms) {
            fired = true;
            group.sync_deadline_ms = None;
            if matches!(
                group.state,
                GroupState::CompletingRebalance | GroupState::Stable
            ) {
                let laggards: Vec<String> = std::mem::take(&mut group.pending_sync)
                    .into_iter()
                    .collect();
                for id in laggards {
                    if let Some(m) = group.remove_member(&id) {
                        if let Some(t) = m.sync_waiter {
                            self.reply_sync(t, SyncResponse::error(ResponseError::UnknownMemberId));
                        }
                    }
                }
                self.prepare_rebalance(group);
            }
        }

        let expired_pending: Vec<String> = group
            .pending_members
            .iter()
            .filter(|(_, d)| **d <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        if !expired_pending.is_empty() {
            fired = true;
            for id in expired_pending {
                group.pending_members.remove(&id);
            }
            self.try_complete_join(group);
        }

        let expired: Vec<String> = group
            .members
            .values()
            .filter(|m| m.heartbeat_deadline_ms.is_some_and(|d| d <= now_ms))
            .map(|m| m.member_id.clone())
            .collect();
        for id in expired {
            fired = true;
            // Removing one member can complete a rebalance that drops others of this list,
            // or answers their JoinGroup and so gives them a new deadline.
            let Some(member) = group.members.get_mut(&id) else {
                continue;
            };
            if member.heartbeat_deadline_ms.is_none_or(|d| d > now_ms) {
                continue;
            }
            if member.excused_from_heartbeat() {
                member.heartbeat_deadline_ms = None;
            } else {
                tracing::info!(
                    group = %group.group_id,
                    member = %id,
                    session_timeout_ms = member.session_timeout_ms,
                    "member removed: no heartbeat within its session timeout"
                );
                self.remove_member_and_update_group(group, &id);
            }
        }
        fired
    }
}

fn join_members(group: &ClassicGroup) -> Vec<JoinMember> {
    let protocol = group.protocol_name.clone().unwrap_or_default();
    group
        .members
        .values()
        .map(|m| JoinMember {
            member_id: m.member_id.clone(),
            group_instance_id: m.group_instance_id.clone(),
            metadata: m.metadata(&protocol),
        })
        .collect()
}
