//! The active controller's logic, as a pure state machine: requests and time in, metadata
//! records to propose and replies out. A reply that depends on a change is released only
//! once the change is committed and applied; a reply computed from state that is not
//! committed yet waits for it too, so no caller ever sees a change that could still be lost.
//!
//! The controller validates each request against its *speculative* image: the committed
//! image plus the changes it has proposed and not yet seen committed (Kafka's controller
//! does the same with its timeline structures). When it stops being the leader, every
//! pending reply fails with NOT_CONTROLLER and the speculative image is dropped; the next
//! controller starts from the committed log.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::config::MAX_PARTITIONS_PER_TOPIC;
use crate::controller::image::{ApplyError, ClusterImage};
use crate::controller::liveness::{
    self, fence_records, leave_partitions, preferred_leader_records, unclean_election_records,
    unfence_records, Sessions, MAX_ELECTIONS_PER_CHANGE,
};
use crate::controller::placement::{assign_replicas, least_loaded};
use crate::controller::records::MetadataRecord;
use crate::controller::requests::*;
use crate::controller::rng::Rng;
use crate::metadata::cluster::{BrokerRegistration, PartitionState};
use crate::metadata::controller::{
    apply_ops, check_partition_increase, deletion_target, validate_new_topic, MetadataError,
    NewTopic, TopicRef,
};
use crate::metadata::producer_ids::PRODUCER_ID_BLOCK_SIZE;
use crate::metadata::topic_config::TopicDefaults;
use crate::metadata::{topic_id_from_bits, LeaderEpoch, NodeId, PartitionId, TopicId};

/// Partitions the whole cluster may hold: keeps a snapshot of the image (about 90 bytes a
/// partition with three replicas) within half a controller frame, since raft-rs sends a
/// snapshot as one message.
pub const MAX_CLUSTER_PARTITIONS: usize = 150_000;

/// The most replicas a partition may have until replicated partitions exist.
pub const SUPPORTED_REPLICATION_FACTOR: i16 = 1;

#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub node_id: NodeId,
    /// `num.partitions`: partitions of a topic created without a count.
    pub num_partitions: i32,
    /// `default.replication.factor`.
    pub default_replication_factor: i16,
    /// Refused above this (with a message saying why).
    pub max_replication_factor: i16,
    pub topic_defaults: TopicDefaults,
    /// `broker.session.timeout.ms`.
    pub session_timeout_ms: i64,
    /// Requests held while a new controller catches up; more are refused.
    pub max_waiting_requests: usize,
    pub max_cluster_partitions: usize,
    /// `max.broker.partitions`: replicas one broker may hold over all topics; more are
    /// refused with POLICY_VIOLATION (internal topics are never refused, but count).
    pub max_broker_partitions: i64,
    /// `auto.leader.rebalance.enable`: move leadership back to each partition's first
    /// replica once it is in sync (checked every `leader_imbalance_check_interval_ms`).
    pub auto_leader_rebalance_enable: bool,
    /// `leader.imbalance.check.interval.seconds`, in ms.
    pub leader_imbalance_check_interval_ms: i64,
    /// How often partitions without a leader are checked for an unclean election, for
    /// topics that allow one (Kafka's controller checks every 5 minutes).
    pub unclean_leader_election_check_interval_ms: i64,
    /// The incarnation of the broker running in this controller's own process, when there
    /// is one (combined mode). A new controller gives every registered broker a fresh
    /// session, except this node's earlier process: that one has certainly stopped, so its
    /// restart registers at once instead of waiting out the old session.
    pub local_incarnation: Option<u128>,
}

impl ControllerConfig {
    pub fn new(node_id: NodeId) -> ControllerConfig {
        ControllerConfig {
            node_id,
            num_partitions: 1,
            default_replication_factor: 1,
            max_replication_factor: SUPPORTED_REPLICATION_FACTOR,
            topic_defaults: TopicDefaults::default(),
            session_timeout_ms: liveness::DEFAULT_SESSION_TIMEOUT_MS,
            max_waiting_requests: 1024,
            max_cluster_partitions: MAX_CLUSTER_PARTITIONS,
            max_broker_partitions: i64::MAX,
            auto_leader_rebalance_enable: true,
            leader_imbalance_check_interval_ms: DEFAULT_LEADER_IMBALANCE_CHECK_INTERVAL_MS,
            unclean_leader_election_check_interval_ms: UNCLEAN_LEADER_ELECTION_CHECK_INTERVAL_MS,
            local_incarnation: None,
        }
    }

    /// Whether topic `topic` allows unclean leader elections: its
    /// `unclean.leader.election.enable`, or the broker's default.
    pub fn unclean_enabled(&self, image: &ClusterImage, topic: TopicId) -> bool {
        const NAME: &str = "unclean.leader.election.enable";
        let value = image
            .topic_by_id(topic)
            .and_then(|t| t.overrides.get(NAME).map(String::as_str))
            .unwrap_or_else(|| self.topic_defaults.value(NAME));
        value == "true"
    }
}

/// Kafka's default `leader.imbalance.check.interval.seconds` (300), in ms.
pub const DEFAULT_LEADER_IMBALANCE_CHECK_INTERVAL_MS: i64 = 300_000;

/// How often Kafka's controller looks for offline partitions to elect uncleanly.
pub const UNCLEAN_LEADER_ELECTION_CHECK_INTERVAL_MS: i64 = 300_000;

/// Records to propose as one entry, and the reply to release once it is committed.
#[derive(Clone, Debug)]
pub struct Proposal {
    pub records: Vec<MetadataRecord>,
    pub reply: Option<Reply>,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Outcome {
    /// Answer now.
    Reply(Reply),
    /// Propose these records; answer when they are committed.
    Propose(Proposal),
    /// Held until pending changes are committed (or until this controller is active).
    Held,
}

struct Pending {
    index: u64,
    term: u64,
    /// The proposal's own reply, then replies that waited for it.
    replies: Vec<(Token, Reply)>,
}

struct Active {
    term: u64,
    image: ClusterImage,
    pending: VecDeque<Pending>,
    sessions: Sessions,
    /// When the next preferred-leader rebalance and unclean-election checks are due.
    next_rebalance_ms: i64,
    next_unclean_check_ms: i64,
}

enum State {
    Inactive,
    /// Raft leader in `term`, catching up with the log before it answers.
    Activating {
        term: u64,
        waiting: VecDeque<(Token, ControllerRequest)>,
    },
    Active(Box<Active>),
}

pub struct Controller {
    config: ControllerConfig,
    rng: Rng,
    state: State,
}

fn not_controller(leader: Option<NodeId>) -> ControllerError {
    ControllerError::NotController { leader }
}

impl Controller {
    pub fn new(config: ControllerConfig, rng: Rng) -> Controller {
        Controller {
            config,
            rng,
            state: State::Inactive,
        }
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    pub fn is_active(&self) -> bool {
        matches!(self.state, State::Active(_))
    }

    /// The Raft term this controller leads (active or catching up).
    pub fn leader_term(&self) -> Option<u64> {
        match &self.state {
            State::Inactive => None,
            State::Activating { term, .. } => Some(*term),
            State::Active(a) => Some(a.term),
        }
    }

    /// The speculative image of the active controller.
    pub fn image(&self) -> Option<&ClusterImage> {
        match &self.state {
            State::Active(a) => Some(&a.image),
            _ => None,
        }
    }

    pub fn pending_count(&self) -> usize {
        match &self.state {
            State::Active(a) => a.pending.len(),
            State::Activating { waiting, .. } => waiting.len(),
            State::Inactive => 0,
        }
    }

    /// This node became the Raft leader in `term`: requests are held until [`activate`].
    /// Anything left from an earlier term fails.
    ///
    /// [`activate`]: Controller::activate
    pub fn become_leader(&mut self, term: u64) -> Vec<(Token, Reply)> {
        let failed = self.resign(None);
        self.state = State::Activating {
            term,
            waiting: VecDeque::new(),
        };
        failed
    }

    /// This node is not the leader (any more): every pending and held request fails with
    /// NOT_CONTROLLER naming `leader`, so callers retry there.
    pub fn resign(&mut self, leader: Option<NodeId>) -> Vec<(Token, Reply)> {
        let state = std::mem::replace(&mut self.state, State::Inactive);
        let err = || Err(not_controller(leader));
        match state {
            State::Inactive => Vec::new(),
            State::Activating { waiting, .. } => {
                waiting.into_iter().map(|(t, _)| (t, err())).collect()
            }
            State::Active(active) => active
                .pending
                .into_iter()
                .flat_map(|p| p.replies)
                .map(|(t, _)| (t, err()))
                .collect(),
        }
    }

    /// This controller could not work for `ms` (its metadata log could not be written):
    /// the brokers' sessions are moved on by as much.
    pub fn pause_sessions(&mut self, ms: i64) {
        if let State::Active(active) = &mut self.state {
            active.sessions.pause(ms);
        }
    }

    /// The log is applied up to this controller's own announcement: start answering, from
    /// `committed`. Every registered broker gets a fresh session. Returns the held requests
    /// to handle now, in order.
    pub fn activate(
        &mut self,
        committed: &ClusterImage,
        now_ms: i64,
    ) -> Vec<(Token, ControllerRequest)> {
        let State::Activating { term, waiting } =
            std::mem::replace(&mut self.state, State::Inactive)
        else {
            return Vec::new();
        };
        let mut sessions = Sessions::new(self.config.session_timeout_ms);
        let me = self.config.node_id;
        let local = self.config.local_incarnation;
        sessions.reset_all(
            committed
                .brokers()
                .filter(|b| b.node_id != me || local.is_none_or(|i| i == b.incarnation_id))
                .map(|b| b.node_id),
            now_ms,
        );
        self.state = State::Active(Box::new(Active {
            term,
            image: committed.clone(),
            pending: VecDeque::new(),
            sessions,
            next_rebalance_ms: now_ms
                .saturating_add(self.config.leader_imbalance_check_interval_ms),
            next_unclean_check_ms: now_ms
                .saturating_add(self.config.unclean_leader_election_check_interval_ms),
        }));
        waiting.into()
    }

    /// Handles one request. `next_index` is where the next proposal will land in the log
    /// (a broker's epoch is the offset of its registration).
    pub fn handle(
        &mut self,
        now_ms: i64,
        token: Token,
        request: ControllerRequest,
        next_index: u64,
    ) -> Outcome {
        let max_waiting = self.config.max_waiting_requests;
        let me = self.config.node_id;
        let active = match &mut self.state {
            State::Inactive => return Outcome::Reply(Err(not_controller(None))),
            State::Activating { waiting, .. } => {
                if waiting.len() >= max_waiting {
                    return Outcome::Reply(Err(not_controller(Some(me))));
                }
                waiting.push_back((token, request));
                return Outcome::Held;
            }
            State::Active(active) => active,
        };
        let (records, reply) = match request {
            ControllerRequest::CreateTopics {
                topics,
                validate_only,
            } => create_topics(
                &self.config,
                &mut self.rng,
                &active.image,
                topics,
                validate_only,
            ),
            ControllerRequest::DeleteTopics { topics } => delete_topics(&active.image, topics),
            ControllerRequest::CreatePartitions {
                topics,
                validate_only,
            } => create_partitions(
                &self.config,
                &mut self.rng,
                &active.image,
                topics,
                validate_only,
            ),
            ControllerRequest::AlterConfigs {
                topics,
                validate_only,
            } => alter_configs(&self.config, &active.image, topics, validate_only),
            ControllerRequest::AllocateProducerIds { node, broker_epoch } => {
                allocate_producer_ids(&active.image, node, broker_epoch)
            }
            ControllerRequest::RegisterBroker(r) => {
                register_broker(&self.config, active, now_ms, r, next_index)
            }
            ControllerRequest::Heartbeat(h) => heartbeat(&self.config, active, now_ms, h),
            ControllerRequest::AlterPartition(r) => alter_partition(&active.image, r),
        };
        if !records.is_empty() {
            return Outcome::Propose(Proposal {
                records,
                reply: Some(reply),
            });
        }
        // Computed from state that may not be committed yet: wait for it.
        match active.pending.back_mut() {
            Some(last) => {
                last.replies.push((token, reply));
                Outcome::Held
            }
            None => Outcome::Reply(reply),
        }
    }

    /// The proposal made for `token` (or for the controller itself) was accepted by Raft at
    /// `index` in `term`. Its records now count in the speculative image.
    pub fn proposed(
        &mut self,
        index: u64,
        term: u64,
        token: Option<Token>,
        proposal: Proposal,
    ) -> Vec<ApplyError> {
        let State::Active(active) = &mut self.state else {
            debug_assert!(false, "proposals are made by the active controller only");
            return Vec::new();
        };
        let errors = active.image.apply(index, term, &proposal.records);
        let replies = match (token, proposal.reply) {
            (Some(t), Some(r)) => vec![(t, r)],
            _ => Vec::new(),
        };
        active.pending.push_back(Pending {
            index,
            term,
            replies,
        });
        errors
    }

    /// The entry at `index` (of `term`) was committed and applied: release the replies
    /// waiting for it. A pending entry that was replaced by another term's fails.
    pub fn committed(&mut self, index: u64, term: u64) -> Vec<(Token, Reply)> {
        let State::Active(active) = &mut self.state else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while active.pending.front().is_some_and(|p| p.index <= index) {
            let p = active.pending.pop_front().expect("checked front");
            if p.index == index && p.term == term {
                out.extend(p.replies);
            } else {
                out.extend(
                    p.replies
                        .into_iter()
                        .map(|(t, _)| (t, Err(not_controller(None)))),
                );
            }
        }
        out
    }

    /// A change the passage of time calls for, one at a time: a broker whose session ran out
    /// is fenced; every `leader.imbalance.check.interval.seconds` leadership moves back to
    /// preferred replicas (`auto.leader.rebalance.enable`); every few minutes offline
    /// partitions of topics that allow it get an unclean leader. Propose it, report it with
    /// [`proposed`], then ask again.
    ///
    /// [`proposed`]: Controller::proposed
    pub fn next_timer_proposal(&mut self, now_ms: i64) -> Option<Proposal> {
        let config = &self.config;
        let State::Active(active) = &mut self.state else {
            return None;
        };
        let expired: Vec<NodeId> = active.sessions.expired(now_ms).collect();
        for node in expired {
            match active.image.broker(node) {
                None => active.sessions.remove(node),
                Some(b) if !b.fenced => {
                    tracing::info!(
                        broker = node.0,
                        "fencing broker {}: no heartbeat for {} ms",
                        node.0,
                        config.session_timeout_ms
                    );
                    let image = &active.image;
                    return Some(Proposal {
                        records: fence_records(image, node, |t| config.unclean_enabled(image, t)),
                        reply: None,
                    });
                }
                Some(_) => {}
            }
        }
        if now_ms >= active.next_unclean_check_ms {
            let image = &active.image;
            let records = unclean_election_records(
                image,
                |t| config.unclean_enabled(image, t),
                MAX_ELECTIONS_PER_CHANGE,
            );
            // More than one change's worth: the rest at once, in the next.
            active.next_unclean_check_ms = if records.len() >= MAX_ELECTIONS_PER_CHANGE {
                now_ms
            } else {
                now_ms.saturating_add(config.unclean_leader_election_check_interval_ms)
            };
            if !records.is_empty() {
                return Some(Proposal {
                    records,
                    reply: None,
                });
            }
        }
        if config.auto_leader_rebalance_enable && now_ms >= active.next_rebalance_ms {
            let records = preferred_leader_records(&active.image, MAX_ELECTIONS_PER_CHANGE);
            active.next_rebalance_ms = if records.len() >= MAX_ELECTIONS_PER_CHANGE {
                now_ms
            } else {
                now_ms.saturating_add(config.leader_imbalance_check_interval_ms)
            };
            if !records.is_empty() {
                tracing::info!(
                    partitions = records.len(),
                    "moving leadership back to preferred replicas"
                );
                return Some(Proposal {
                    records,
                    reply: None,
                });
            }
        }
        None
    }
}

/// A request handler's plan: records to propose and the reply; no records: the reply
/// stands alone.
type Planned = (Vec<MetadataRecord>, Reply);

mod brokers;
mod partitions;
mod topics;

use brokers::{allocate_producer_ids, heartbeat, register_broker};
use partitions::alter_partition;
use topics::{alter_configs, create_partitions, create_topics, delete_topics};

#[cfg(test)]
mod tests;
