//! One classic-protocol group: its state, generation, members, and committed offsets.
//! The transitions that need the coordinator's timers and outputs live in `coordinator.rs`;
//! this file holds what can be decided from the group alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use wharf_protocol::offsets_topic::{
    GroupMetadataValue, MemberMetadata, OffsetsRecord, GROUP_METADATA_VALUE_VERSION,
};

use super::api::CommittedOffset;
use super::member::Member;

/// Kafka's classic group states.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum GroupState {
    /// No members; the group may still hold committed offsets.
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Joined; waiting for the leader's assignment.
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The name Kafka uses in DescribeGroups and ListGroups.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// The first rebalance of an empty group waits `group.initial.rebalance.delay.ms`, and again
/// while new members keep arriving, but no longer than the rebalance timeout in total.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct InitialDelay {
    /// The delay now running.
    pub delay_ms: i64,
    /// What is left of the rebalance timeout after it.
    pub remaining_ms: i64,
}

#[derive(Debug)]
pub struct ClassicGroup {
    pub group_id: String,
    pub state: GroupState,
    /// When the group entered its current state.
    pub state_timestamp_ms: i64,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader_id: Option<String>,
    /// Ordered so leader re-election and join responses are deterministic.
    pub members: BTreeMap<String, Member>,
    /// `group.instance.id` -> member id of the static member holding it.
    pub static_members: HashMap<String, String>,
    /// KIP-394: member ids handed out with MEMBER_ID_REQUIRED, with the deadline by which
    /// they must rejoin.
    pub pending_members: BTreeMap<String, i64>,
    /// Members that got the current generation's JoinGroup answer but have not synced.
    pub pending_sync: BTreeSet<String>,
    pub sync_deadline_ms: Option<i64>,
    /// When the current rebalance completes whatever happens (delayed join).
    pub join_deadline_ms: Option<i64>,
    /// Set while the delayed join is the initial one of an empty group.
    pub initial_delay: Option<InitialDelay>,
    /// A member joined during the initial delay: extend it once more.
    pub new_member_added: bool,
    pub offsets: BTreeMap<(String, i32), CommittedOffset>,
    /// Topics the members subscribe to (consumer protocol), known after a join completes.
    pub subscribed_topics: Option<BTreeSet<String>>,
}

impl ClassicGroup {
    pub fn new(group_id: &str, now_ms: i64) -> ClassicGroup {
        ClassicGroup {
            group_id: group_id.to_owned(),
            state: GroupState::Empty,
            state_timestamp_ms: now_ms,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader_id: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending_members: BTreeMap::new(),
            pending_sync: BTreeSet::new(),
            sync_deadline_ms: None,
            join_deadline_ms: None,
            initial_delay: None,
            new_member_added: false,
            offsets: BTreeMap::new(),
            subscribed_topics: None,
        }
    }

    pub fn transition(&mut self, to: GroupState, now_ms: i64) {
        debug_assert!(
            matches!(
                (self.state, to),
                (
                    GroupState::Empty | GroupState::Stable | GroupState::CompletingRebalance,
                    GroupState::PreparingRebalance
                ) | (
                    GroupState::PreparingRebalance,
                    GroupState::CompletingRebalance | GroupState::Empty
                ) | (GroupState::CompletingRebalance, GroupState::Stable)
            ),
            "illegal group transition {:?} -> {:?}",
            self.state,
            to
        );
        // As Kafka's coordinator logs them: what an operator reads to follow a rebalance.
        tracing::info!(
            group = %self.group_id,
            from = ?self.state,
            to = ?to,
            generation = self.generation_id,
            members = self.members.len(),
            "group state"
        );
        self.state = to;
        self.state_timestamp_ms = now_ms;
    }

    pub fn is(&self, state: GroupState) -> bool {
        self.state == state
    }

    pub fn is_leader(&self, member_id: &str) -> bool {
        self.leader_id.as_deref() == Some(member_id)
    }

    /// A static member's instance id is held by a different member id: the caller is a
    /// zombie of an old incarnation (KIP-345) and is fenced.
    pub fn is_static_member_fenced(
        &self,
        member_id: &str,
        group_instance_id: Option<&str>,
    ) -> bool {
        match group_instance_id.and_then(|id| self.static_members.get(id)) {
            Some(holder) => holder != member_id,
            None => false,
        }
    }

    /// The largest rebalance timeout of any member: how long a rebalance may wait.
    pub fn rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|m| m.rebalance_timeout_ms as i64)
            .max()
            .unwrap_or(0)
    }

    pub fn awaiting_join_count(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.join_waiter.is_some())
            .count()
    }

    /// Every member has rejoined and no MEMBER_ID_REQUIRED member is still expected.
    pub fn has_all_members_joined(&self) -> bool {
        self.members.len() == self.awaiting_join_count() && self.pending_members.is_empty()
    }

    pub fn can_rebalance(&self) -> bool {
        matches!(
            self.state,
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty
        )
    }

    /// Protocols every member supports.
    pub fn candidate_protocols(&self) -> Vec<&str> {
        let mut members = self.members.values();
        let Some(first) = members.next() else {
            return Vec::new();
        };
        let mut candidates: Vec<&str> = first.protocols.iter().map(|p| p.name.as_str()).collect();
        for m in members {
            candidates.retain(|c| m.protocols.iter().any(|p| p.name == *c));
        }
        candidates
    }

    /// Whether a member with this protocol type and these protocols can be part of the group:
    /// an empty group takes any non-empty choice; otherwise the type must match and at least
    /// one protocol must be supported by every current member.
    pub fn supports_protocols(&self, protocol_type: &str, protocols: &[&str]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols.iter().any(|p| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|mp| mp.name == *p))
        })
    }

    /// Each member votes for its favourite protocol among those all support; the most votes
    /// win. Ties go to the protocol listed first by the earliest-ordered member.
    pub fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: Vec<(&str, usize)> = candidates.iter().map(|c| (*c, 0)).collect();
        for m in self.members.values() {
            if let Some(choice) = m.vote(&candidates) {
                if let Some(v) = votes.iter_mut().find(|(name, _)| *name == choice) {
                    v.1 += 1;
                }
            }
        }
        let best = votes.iter().map(|(_, n)| *n).max()?;
        votes
            .into_iter()
            .find(|(_, n)| *n == best)
            .map(|(name, _)| name.to_owned())
    }

    /// Bytes of what the members brought (see `Member::metadata_bytes`).
    pub fn metadata_bytes(&self) -> usize {
        self.members.values().map(Member::metadata_bytes).sum()
    }

    /// Add a member; the first member of a group sets its protocol type and leads.
    pub fn add_member(&mut self, member: Member) {
        if self.members.is_empty() {
            self.protocol_type = Some(member.protocol_type.clone());
        }
        if self.leader_id.is_none() {
            self.leader_id = Some(member.member_id.clone());
        }
        if let Some(instance) = &member.group_instance_id {
            self.static_members
                .insert(instance.clone(), member.member_id.clone());
        }
        self.pending_members.remove(&member.member_id);
        self.members.insert(member.member_id.clone(), member);
    }

    /// Remove a member; a departing leader is replaced by any remaining member.
    pub fn remove_member(&mut self, member_id: &str) -> Option<Member> {
        let member = self.members.remove(member_id)?;
        if let Some(instance) = &member.group_instance_id {
            if self.static_members.get(instance).map(String::as_str) == Some(member_id) {
                self.static_members.remove(instance);
            }
        }
        self.pending_sync.remove(member_id);
        if self.is_leader(member_id) {
            self.leader_id = self.members.keys().next().cloned();
        }
        Some(member)
    }

    /// If the leader has not rejoined, hand leadership to a member that has. False when no
    /// member has rejoined at all.
    pub fn maybe_elect_new_joined_leader(&mut self) -> bool {
        let Some(leader) = self.leader_id.clone() else {
            return false;
        };
        if self
            .members
            .get(&leader)
            .is_some_and(|m| m.join_waiter.is_some())
        {
            return true;
        }
        match self.members.values().find(|m| m.join_waiter.is_some()) {
            Some(m) => {
                self.leader_id = Some(m.member_id.clone());
                true
            }
            None => false,
        }
    }

    /// The topics the members subscribe to, when every member speaks the consumer protocol
    /// and its subscription parses; `None` when unknown.
    pub fn compute_subscribed_topics(&self) -> Option<BTreeSet<String>> {
        use kafka_protocol::messages::ConsumerProtocolSubscription;
        use kafka_protocol::protocol::Decodable;
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = self.protocol_name.as_deref()?;
        let mut topics = BTreeSet::new();
        for m in self.members.values() {
            let mut buf = m.metadata(protocol);
            if buf.len() < 2 {
                return None;
            }
            let version = i16::from_be_bytes([buf[0], buf[1]]);
            bytes::Buf::advance(&mut buf, 2);
            // Newer subscription versions only add fields: read them as the newest we know.
            let version = version.clamp(0, 3);
            let sub = ConsumerProtocolSubscription::decode(&mut buf, version).ok()?;
            topics.extend(sub.topics.into_iter().map(|t| t.to_string()));
        }
        Some(topics)
    }

    /// Whether offsets of `topic` are in use (unknown subscriptions count as in use).
    pub fn is_subscribed_to(&self, topic: &str) -> bool {
        match &self.subscribed_topics {
            Some(topics) => topics.contains(topic),
            None => true,
        }
    }

    /// The group metadata record Kafka writes for the group as it is now.
    pub fn metadata_record(&self) -> OffsetsRecord {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let members = self
            .members
            .values()
            .map(|m| MemberMetadata {
                member_id: m.member_id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                session_timeout_ms: m.session_timeout_ms,
                subscription: m.metadata(&protocol),
                assignment: m.assignment.clone(),
            })
            .collect();
        OffsetsRecord::GroupMetadata {
            group: self.group_id.clone(),
            value: Some(GroupMetadataValue {
                version: GROUP_METADATA_VALUE_VERSION,
                protocol_type: self.protocol_type.clone().unwrap_or_default(),
                generation: self.generation_id,
                protocol: self.protocol_name.clone(),
                leader: self.leader_id.clone(),
                current_state_timestamp_ms: self.state_timestamp_ms,
                members,
            }),
        }
    }

    /// The assignment each member will get: the leader's bytes for it, empty if unmentioned.
    pub fn fill_assignment(
        &self,
        leader_assignment: &[(String, Bytes)],
    ) -> BTreeMap<String, Bytes> {
        self.members
            .keys()
            .map(|id| {
                let bytes = leader_assignment
                    .iter()
                    .find(|(m, _)| m == id)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default();
                (id.clone(), bytes)
            })
            .collect()
    }
}
