//! KIP-848 consumer groups (`group.protocol=consumer`): the broker assigns partitions and
//! members reconcile through ConsumerGroupHeartbeat. A plain state machine like the classic
//! coordinator: heartbeats and time in, answers out.
//!
//! What is kept: group and member epochs, a server-side range assignment recomputed when the
//! membership, the subscriptions or the subscribed topics' partition counts change, and
//! reconciliation that never gives a partition to a member before its previous owner has
//! revoked it. Membership lives in memory only: after a restart members are told they are
//! unknown and rejoin with epoch 0 (their committed offsets are in `__consumer_offsets`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kafka_protocol::error::ResponseError;

use super::api::ErrorCode;

/// A topic as the assignor sees it: its id (KIP-516) and partition count.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    pub id: u128,
    pub partitions: i32,
}

/// Partitions by topic id.
pub type Assignment = BTreeMap<u128, BTreeSet<i32>>;

/// `group.consumer.session.timeout.ms`.
pub const CONSUMER_SESSION_TIMEOUT_MS: i64 = 45_000;
/// `group.consumer.heartbeat.interval.ms`.
pub const CONSUMER_HEARTBEAT_INTERVAL_MS: i32 = 5_000;
/// Members one consumer group may hold.
pub const MAX_CONSUMER_GROUP_MEMBERS: usize = 10_000;
/// Topics one member may subscribe to.
pub const MAX_SUBSCRIBED_TOPICS: usize = 10_000;

#[derive(Clone, Debug)]
pub struct HeartbeatIn {
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    /// -1 when unchanged.
    pub rebalance_timeout_ms: i32,
    /// `None` when unchanged.
    pub subscribed_topic_names: Option<Vec<String>>,
    /// The partitions the member owns now; `None` when unchanged.
    pub owned: Option<Assignment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatOut {
    pub error: ErrorCode,
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// The partitions the member should own now.
    pub assignment: Option<Assignment>,
}

impl HeartbeatOut {
    fn error(member_id: &str, error: ResponseError) -> HeartbeatOut {
        HeartbeatOut {
            error: Some(error),
            member_id: member_id.to_owned(),
            member_epoch: -1,
            heartbeat_interval_ms: 0,
            assignment: None,
        }
    }
}

#[derive(Clone, Debug)]
struct Member {
    member_epoch: i32,
    previous_epoch: i32,
    instance_id: Option<String>,
    subscribed: BTreeSet<String>,
    rebalance_timeout_ms: i32,
    /// What the member has been told it owns and has not given up yet.
    owned: Assignment,
    /// Set while the member must revoke partitions: by when.
    revoke_deadline_ms: Option<i64>,
    session_deadline_ms: i64,
}

#[derive(Clone, Debug, Default)]
pub struct ConsumerGroup {
    group_epoch: i32,
    /// The epoch the target assignment was computed at.
    assignment_epoch: i32,
    members: BTreeMap<String, Member>,
    target: BTreeMap<String, Assignment>,
    /// The subscribed topics as they were when the target was computed.
    topics_seen: BTreeMap<String, TopicInfo>,
}

impl ConsumerGroup {
    /// KIP-848 state names, for ListGroups / DescribeGroups.
    pub fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.assignment_epoch != self.group_epoch {
            "Assigning"
        } else if self.members.iter().any(|(id, m)| {
            m.member_epoch != self.assignment_epoch || self.target.get(id) != Some(&m.owned)
        }) {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    pub fn member_epoch(&self, member_id: &str) -> Option<(i32, i32)> {
        self.members
            .get(member_id)
            .map(|m| (m.member_epoch, m.previous_epoch))
    }

    pub fn members(&self) -> impl Iterator<Item = (&String, &Assignment, Option<&String>)> {
        self.members
            .iter()
            .map(|(id, m)| (id, &m.owned, m.instance_id.as_ref()))
    }

    /// Bytes the members keep: their ids and subscribed topic names.
    pub fn metadata_bytes(&self) -> usize {
        self.members
            .iter()
            .map(|(id, m)| {
                id.len()
                    + m.instance_id.as_ref().map_or(0, String::len)
                    + m.subscribed.iter().map(String::len).sum::<usize>()
            })
            .sum()
    }

    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members
            .values()
            .flat_map(|m| m.subscribed.iter().cloned())
            .collect()
    }

    /// Range assignment per topic over the members subscribed to it, in member id order.
    fn compute_target(&mut self, topics: &BTreeMap<String, TopicInfo>) {
        let mut target: BTreeMap<String, Assignment> = self
            .members
            .keys()
            .map(|id| (id.clone(), Assignment::new()))
            .collect();
        for (name, info) in topics {
            let subscribers: Vec<&String> = self
                .members
                .iter()
                .filter(|(_, m)| m.subscribed.contains(name))
                .map(|(id, _)| id)
                .collect();
            if subscribers.is_empty() || info.partitions <= 0 {
                continue;
            }
            let n = subscribers.len() as i32;
            let (per, extra) = (info.partitions / n, info.partitions % n);
            let mut next = 0;
            for (i, id) in subscribers.iter().enumerate() {
                let count = per + if (i as i32) < extra { 1 } else { 0 };
                let parts: BTreeSet<i32> = (next..next + count).collect();
                next += count;
                if !parts.is_empty() {
                    target
                        .get_mut(*id)
                        .expect("every member has a target")
                        .insert(info.id, parts);
                }
            }
        }
        self.target = target;
        self.topics_seen = topics.clone();
        self.assignment_epoch = self.group_epoch;
    }

    /// Partitions of `assignment` some other member still owns.
    fn held_by_others(&self, member_id: &str, assignment: &Assignment) -> Assignment {
        let mut out = Assignment::new();
        for (other, m) in &self.members {
            if other == member_id {
                continue;
            }
            for (topic, parts) in &m.owned {
                if let Some(wanted) = assignment.get(topic) {
                    let both: BTreeSet<i32> = wanted.intersection(parts).copied().collect();
                    if !both.is_empty() {
                        out.entry(*topic).or_default().extend(both);
                    }
                }
            }
        }
        out
    }
}

fn subtract(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (topic, parts) in a {
        let left: BTreeSet<i32> = match b.get(topic) {
            Some(drop) => parts.difference(drop).copied().collect(),
            None => parts.clone(),
        };
        if !left.is_empty() {
            out.insert(*topic, left);
        }
    }
    out
}

fn is_empty(a: &Assignment) -> bool {
    a.values().all(BTreeSet::is_empty)
}

/// Every consumer group of a shard.
#[derive(Default)]
pub struct ConsumerGroups {
    groups: HashMap<String, ConsumerGroup>,
    member_id_counter: u64,
}

impl ConsumerGroups {
    pub fn group(&self, group_id: &str) -> Option<&ConsumerGroup> {
        self.groups.get(group_id)
    }

    pub fn groups(&self) -> impl Iterator<Item = (&String, &ConsumerGroup)> {
        self.groups.iter()
    }

    /// One ConsumerGroupHeartbeat. `topics` resolves the subscribed topic names against the
    /// broker's metadata (unknown topics are absent).
    pub fn heartbeat(
        &mut self,
        now_ms: i64,
        req: HeartbeatIn,
        topics: &dyn Fn(&str) -> Option<TopicInfo>,
        seed: u64,
    ) -> HeartbeatOut {
        if req.group_id.is_empty() {
            return HeartbeatOut::error(&req.member_id, ResponseError::InvalidRequest);
        }
        let mut member_id = req.member_id.clone();
        if member_id.is_empty() {
            // v0: the coordinator names the member.
            self.member_id_counter += 1;
            member_id = format!("{:016x}{:016x}", seed, self.member_id_counter);
        }
        // As Kafka: only a member joining (epoch 0) creates its group.
        if req.member_epoch != 0 && !self.groups.contains_key(&req.group_id) {
            return if req.member_epoch < 0 {
                HeartbeatOut {
                    error: None,
                    member_id,
                    member_epoch: req.member_epoch,
                    heartbeat_interval_ms: 0,
                    assignment: None,
                }
            } else {
                HeartbeatOut::error(&member_id, ResponseError::UnknownMemberId)
            };
        }
        let joining = req.member_epoch == 0
            && !self
                .groups
                .get(&req.group_id)
                .is_some_and(|g| g.members.contains_key(&member_id));
        if joining {
            // Kafka validates a join before it creates anything.
            match &req.subscribed_topic_names {
                Some(names) if names.len() <= MAX_SUBSCRIBED_TOPICS => {}
                _ => return HeartbeatOut::error(&member_id, ResponseError::InvalidRequest),
            }
        }
        let group = self.groups.entry(req.group_id.clone()).or_default();

        // Leaving (-1), or a static member leaving for a restart (-2).
        if req.member_epoch < 0 {
            if group.members.remove(&member_id).is_some() {
                group.group_epoch += 1;
            }
            let out = HeartbeatOut {
                error: None,
                member_id,
                member_epoch: req.member_epoch,
                heartbeat_interval_ms: 0,
                assignment: None,
            };
            if group.members.is_empty() && group.group_epoch > 0 {
                group.target.clear();
            }
            return out;
        }

        match group.members.get(&member_id) {
            None if req.member_epoch != 0 => {
                return HeartbeatOut::error(&member_id, ResponseError::UnknownMemberId)
            }
            None => {
                if group.members.len() >= MAX_CONSUMER_GROUP_MEMBERS {
                    return HeartbeatOut::error(&member_id, ResponseError::GroupMaxSizeReached);
                }
                let Some(subscribed) = req.subscribed_topic_names.clone() else {
                    return HeartbeatOut::error(&member_id, ResponseError::InvalidRequest);
                };
                if subscribed.len() > MAX_SUBSCRIBED_TOPICS {
                    return HeartbeatOut::error(&member_id, ResponseError::InvalidRequest);
                }
                let incoming = member_id.len()
                    + req.instance_id.as_ref().map_or(0, String::len)
                    + subscribed.iter().map(String::len).sum::<usize>();
                if group.metadata_bytes() + incoming > crate::limits::MAX_GROUP_METADATA_BYTES {
                    return HeartbeatOut::error(&member_id, ResponseError::GroupMaxSizeReached);
                }
                group.members.insert(
                    member_id.clone(),
                    Member {
                        member_epoch: 0,
                        previous_epoch: 0,
                        instance_id: req.instance_id.clone(),
                        subscribed: subscribed.into_iter().collect(),
                        rebalance_timeout_ms: req.rebalance_timeout_ms.max(0),
                        owned: Assignment::new(),
                        revoke_deadline_ms: None,
                        session_deadline_ms: now_ms + CONSUMER_SESSION_TIMEOUT_MS,
                    },
                );
                group.group_epoch += 1;
            }
            Some(m) => {
                // A member that lost its assignment rejoins with epoch 0 and the same id.
                if req.member_epoch == 0 {
                    let m = group
                        .members
                        .get_mut(&member_id)
                        .expect("member was just found");
                    m.owned.clear();
                    m.member_epoch = 0;
                    m.previous_epoch = 0;
                } else if req.member_epoch != m.member_epoch && req.member_epoch != m.previous_epoch
                {
                    return HeartbeatOut::error(&member_id, ResponseError::FencedMemberEpoch);
                }
                if let Some(subscribed) = &req.subscribed_topic_names {
                    let subscribed: BTreeSet<String> = subscribed
                        .iter()
                        .take(MAX_SUBSCRIBED_TOPICS)
                        .cloned()
                        .collect();
                    let current = &group.members[&member_id].subscribed;
                    if subscribed != *current {
                        let before: usize = current.iter().map(String::len).sum();
                        let after: usize = subscribed.iter().map(String::len).sum();
                        if group.metadata_bytes() - before + after
                            > crate::limits::MAX_GROUP_METADATA_BYTES
                        {
                            return HeartbeatOut::error(
                                &member_id,
                                ResponseError::GroupMaxSizeReached,
                            );
                        }
                        let m = group
                            .members
                            .get_mut(&member_id)
                            .expect("member was just found");
                        m.subscribed = subscribed;
                        group.group_epoch += 1;
                    }
                }
                if req.rebalance_timeout_ms >= 0 {
                    let m = group
                        .members
                        .get_mut(&member_id)
                        .expect("member was just found");
                    m.rebalance_timeout_ms = req.rebalance_timeout_ms;
                }
            }
        }
        let group = self
            .groups
            .get_mut(&req.group_id)
            .expect("group was just found or created");
        let m = group
            .members
            .get_mut(&member_id)
            .expect("member was just found or added");
        m.session_deadline_ms = now_ms + CONSUMER_SESSION_TIMEOUT_MS;
        // What the member reports owning is what it still holds (it revokes on its side).
        if let Some(owned) = &req.owned {
            let reported: Assignment = owned
                .iter()
                .filter(|(_, p)| !p.is_empty())
                .map(|(t, p)| (*t, p.clone()))
                .collect();
            // Only shrink: a member cannot claim partitions it was never given.
            let kept: Assignment = m
                .owned
                .iter()
                .filter_map(|(t, parts)| {
                    let still: BTreeSet<i32> = parts
                        .intersection(reported.get(t).unwrap_or(&BTreeSet::new()))
                        .copied()
                        .collect();
                    (!still.is_empty()).then_some((*t, still))
                })
                .collect();
            m.owned = kept;
        }

        // The subscribed topics' metadata changed (created, deleted, partitions added).
        let subscribed = group.subscribed_topics();
        let now_topics: BTreeMap<String, TopicInfo> = subscribed
            .iter()
            .filter_map(|t| topics(t).map(|i| (t.clone(), i)))
            .collect();
        if now_topics != group.topics_seen && group.assignment_epoch == group.group_epoch {
            group.group_epoch += 1;
        }
        if group.assignment_epoch != group.group_epoch {
            group.compute_target(&now_topics);
        }
        self.reconcile(now_ms, &req.group_id, &member_id)
    }

    /// Moves one member toward its target: first it gives up what it must, then (once
    /// nobody else holds them) it gets its new partitions and the new epoch.
    fn reconcile(&mut self, now_ms: i64, group_id: &str, member_id: &str) -> HeartbeatOut {
        let group = self
            .groups
            .get_mut(group_id)
            .expect("caller found the group");
        let target = group.target.get(member_id).cloned().unwrap_or_default();
        let (owned, rebalance_timeout_ms) = {
            let m = &group.members[member_id];
            (m.owned.clone(), m.rebalance_timeout_ms)
        };
        let to_revoke = subtract(&owned, &target);
        let m_epoch;
        let assignment;
        if !is_empty(&to_revoke) {
            // Keep the epoch until the member has let go.
            let m = group.members.get_mut(member_id).expect("member exists");
            if m.revoke_deadline_ms.is_none() {
                m.revoke_deadline_ms = Some(now_ms + rebalance_timeout_ms.max(0) as i64);
            }
            m_epoch = m.member_epoch;
            assignment = subtract(&owned, &to_revoke);
        } else {
            let unreleased = group.held_by_others(member_id, &target);
            let grant = subtract(&target, &unreleased);
            let assignment_epoch = group.assignment_epoch;
            let m = group.members.get_mut(member_id).expect("member exists");
            m.revoke_deadline_ms = None;
            if m.member_epoch != assignment_epoch {
                m.previous_epoch = m.member_epoch;
                m.member_epoch = assignment_epoch;
            }
            m.owned = grant.clone();
            m_epoch = m.member_epoch;
            assignment = grant;
        }
        HeartbeatOut {
            error: None,
            member_id: member_id.to_owned(),
            member_epoch: m_epoch,
            heartbeat_interval_ms: CONSUMER_HEARTBEAT_INTERVAL_MS,
            assignment: Some(assignment),
        }
    }

    /// Members whose session expired, or that did not revoke in time, are removed.
    pub fn tick(&mut self, now_ms: i64) {
        for group in self.groups.values_mut() {
            let gone: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| {
                    m.session_deadline_ms <= now_ms
                        || m.revoke_deadline_ms.is_some_and(|d| d <= now_ms)
                })
                .map(|(id, _)| id.clone())
                .collect();
            if !gone.is_empty() {
                for id in gone {
                    group.members.remove(&id);
                }
                group.group_epoch += 1;
            }
        }
    }

    /// OffsetCommit from a member of a consumer group: the member must exist and commit with
    /// its current (or previous) epoch. Generation -1 with no member is accepted when the
    /// group is empty.
    pub fn validate_commit(
        &self,
        group_id: &str,
        member_id: &str,
        epoch: i32,
    ) -> Result<(), ResponseError> {
        let Some(group) = self.groups.get(group_id) else {
            return Ok(());
        };
        if epoch < 0 && member_id.is_empty() {
            return if group.members.is_empty() {
                Ok(())
            } else {
                Err(ResponseError::UnknownMemberId)
            };
        }
        match group.members.get(member_id) {
            None => Err(ResponseError::UnknownMemberId),
            Some(m) if epoch == m.member_epoch || epoch == m.previous_epoch => Ok(()),
            Some(_) => Err(ResponseError::StaleMemberEpoch),
        }
    }

    /// Forgets the groups without members for which `unused` holds.
    pub fn forget_empty(&mut self, mut unused: impl FnMut(&str) -> bool) {
        self.groups
            .retain(|id, group| !group.members.is_empty() || !unused(id));
    }

    /// Whether `group_id` is a consumer-protocol group with members.
    pub fn is_active(&self, group_id: &str) -> bool {
        self.groups
            .get(group_id)
            .is_some_and(|g| !g.members.is_empty())
    }

    pub fn delete_empty(&mut self, group_id: &str) -> bool {
        match self.groups.get(group_id) {
            Some(g) if g.members.is_empty() => {
                self.groups.remove(group_id);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u128 = 7;

    fn topics(name: &str) -> Option<TopicInfo> {
        (name == "t").then_some(TopicInfo {
            id: T,
            partitions: 4,
        })
    }

    fn beat(
        g: &mut ConsumerGroups,
        now: i64,
        member: &str,
        epoch: i32,
        owned: Option<Vec<i32>>,
    ) -> HeartbeatOut {
        g.heartbeat(
            now,
            HeartbeatIn {
                group_id: "g".into(),
                member_id: member.into(),
                member_epoch: epoch,
                instance_id: None,
                rebalance_timeout_ms: 30_000,
                subscribed_topic_names: Some(vec!["t".into()]),
                owned: owned.map(|p| [(T, p.into_iter().collect())].into_iter().collect()),
            },
            &topics,
            1,
        )
    }

    fn parts(out: &HeartbeatOut) -> Vec<i32> {
        out.assignment
            .as_ref()
            .and_then(|a| a.get(&T))
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default()
    }

    #[test]
    fn first_member_gets_everything_at_epoch_one() {
        let mut g = ConsumerGroups::default();
        let out = beat(&mut g, 0, "a", 0, None);
        assert_eq!(out.error, None);
        assert_eq!(out.member_epoch, 1);
        assert_eq!(parts(&out), vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_partition_moves_only_after_its_owner_revoked_it() {
        let mut g = ConsumerGroups::default();
        beat(&mut g, 0, "a", 0, None);
        let b = beat(&mut g, 10, "b", 0, None);
        assert_eq!(parts(&b), Vec::<i32>::new(), "a still holds everything");
        let a = beat(&mut g, 20, "a", 1, Some(vec![0, 1, 2, 3]));
        assert_eq!(parts(&a), vec![0, 1], "a is told to give up 2 and 3");
        assert_eq!(a.member_epoch, 1, "epoch kept until it has let go");
        let b = beat(&mut g, 30, "b", b.member_epoch, Some(vec![]));
        assert_eq!(parts(&b), Vec::<i32>::new(), "not yet released");
        let a = beat(&mut g, 40, "a", 1, Some(vec![0, 1]));
        assert_eq!(a.member_epoch, 2);
        let b = beat(&mut g, 50, "b", b.member_epoch, Some(vec![]));
        assert_eq!((parts(&b), b.member_epoch), (vec![2, 3], 2));
        assert_eq!(g.group("g").unwrap().state(), "Stable");
    }

    #[test]
    fn stale_epochs_are_fenced_and_unknown_members_rejoin() {
        let mut g = ConsumerGroups::default();
        beat(&mut g, 0, "a", 0, None);
        assert_eq!(
            beat(&mut g, 1, "a", 7, None).error,
            Some(ResponseError::FencedMemberEpoch)
        );
        assert_eq!(
            beat(&mut g, 1, "zz", 3, None).error,
            Some(ResponseError::UnknownMemberId)
        );
        assert_eq!(g.validate_commit("g", "a", 1), Ok(()));
        assert_eq!(
            g.validate_commit("g", "a", 5),
            Err(ResponseError::StaleMemberEpoch)
        );
        assert_eq!(
            g.validate_commit("g", "zz", 1),
            Err(ResponseError::UnknownMemberId)
        );
    }

    #[test]
    fn silent_members_expire_and_leaving_members_free_their_partitions() {
        let mut g = ConsumerGroups::default();
        beat(&mut g, 0, "a", 0, None);
        beat(&mut g, 0, "b", 0, None);
        g.tick(CONSUMER_SESSION_TIMEOUT_MS + 1);
        assert!(g.group("g").unwrap().members.is_empty());
        let a = beat(&mut g, CONSUMER_SESSION_TIMEOUT_MS + 2, "a", 0, None);
        assert_eq!(parts(&a), vec![0, 1, 2, 3]);
        let left = beat(&mut g, CONSUMER_SESSION_TIMEOUT_MS + 3, "a", -1, None);
        assert_eq!(left.member_epoch, -1);
        assert_eq!(g.group("g").unwrap().state(), "Empty");
    }
}
