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
    self, fence_records, leave_partitions, unfence_records, Sessions,
};
use crate::controller::placement::{assign_replicas, least_loaded};
use crate::controller::records::MetadataRecord;
use crate::controller::requests::*;
use crate::controller::rng::Rng;
use crate::metadata::cluster::{BrokerRegistration, PartitionState};
use crate::metadata::controller::{
    apply_ops, check_partition_increase, deletion_target, validate_new_topic, MetadataError,
    NewTopic,
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
        }
    }
}

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
        sessions.reset_all(committed.brokers().map(|b| b.node_id), now_ms);
        self.state = State::Active(Box::new(Active {
            term,
            image: committed.clone(),
            pending: VecDeque::new(),
            sessions,
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
            ControllerRequest::RegisterBroker(r) => register_broker(active, now_ms, r, next_index),
            ControllerRequest::Heartbeat(h) => heartbeat(active, now_ms, h),
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

    /// A change the passage of time calls for (a broker whose session ran out is fenced),
    /// one at a time: propose it, report it with [`proposed`], then ask again.
    ///
    /// [`proposed`]: Controller::proposed
    pub fn next_timer_proposal(&mut self, now_ms: i64) -> Option<Proposal> {
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
                        self.config.session_timeout_ms
                    );
                    return Some(Proposal {
                        records: fence_records(&active.image, node),
                        reply: None,
                    });
                }
                Some(_) => {}
            }
        }
        None
    }
}

// -------------------------------------------------------------------------------------
// Request handlers: (records to propose, reply). No records: the reply stands alone.
// -------------------------------------------------------------------------------------

type Planned = (Vec<MetadataRecord>, Reply);

fn leader_counts(image: &ClusterImage) -> BTreeMap<NodeId, usize> {
    let mut counts = BTreeMap::new();
    for (_, _, state) in image.all_partitions() {
        if let Some(l) = state.leader {
            *counts.entry(l).or_insert(0) += 1;
        }
    }
    counts
}

/// Checks a manual replica assignment for one partition.
fn check_assignment(
    image: &ClusterImage,
    config: &ControllerConfig,
    partition: i32,
    replicas: &[NodeId],
    expected_len: Option<usize>,
) -> Result<(), MetadataError> {
    let bad = |m: String| Err(MetadataError::InvalidReplicaAssignment(m));
    if replicas.is_empty() {
        return bad(format!(
            "The manual partition assignment for partition {partition} is empty."
        ));
    }
    let unique: BTreeSet<NodeId> = replicas.iter().copied().collect();
    if unique.len() != replicas.len() {
        return bad(format!(
            "Duplicate brokers not allowed in replica assignment: {}",
            replicas
                .iter()
                .map(|n| n.0.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(len) = expected_len {
        if replicas.len() != len {
            return bad(format!(
                "The manual partition assignment includes a partition with {} replica(s), but this is not consistent with previous partitions, which have {len} replica(s).",
                replicas.len()
            ));
        }
    }
    if replicas.len() > config.max_replication_factor.max(1) as usize {
        return Err(MetadataError::InvalidReplicationFactor(unsupported_rf(
            replicas.len() as i16,
        )));
    }
    if let Some(unknown) = replicas.iter().find(|n| image.broker(**n).is_none()) {
        return bad(format!(
            "The manual partition assignment includes broker {}, but no broker with that ID is registered.",
            unknown.0
        ));
    }
    if !replicas.iter().any(|n| image.is_usable(*n)) {
        return bad(format!(
            "All brokers specified in the manual partition assignment for partition {partition} are fenced or in controlled shutdown."
        ));
    }
    Ok(())
}

fn unsupported_rf(rf: i16) -> String {
    format!(
        "Replication factor {rf} is not supported yet: this version of Wharf keeps one replica of each partition (replicated partitions are not built yet); use a replication factor of 1."
    )
}

/// A new partition on `replicas`: all in sync, led by the first usable one.
fn new_partition(image: &ClusterImage, replicas: Vec<NodeId>) -> PartitionState {
    let mut state = PartitionState {
        isr: replicas.clone(),
        replicas,
        leader: None,
        leader_epoch: LeaderEpoch(0),
        partition_epoch: 0,
    };
    state.leader = liveness::choose_leader(&state, |n| image.is_usable(n));
    state
}

/// Replicas for `count` new partitions from `first`, spread over the usable brokers.
fn place(
    rng: &mut Rng,
    usable: &[NodeId],
    leaders: &BTreeMap<NodeId, usize>,
    first: i32,
    count: i32,
    rf: usize,
) -> Vec<Vec<NodeId>> {
    let start = least_loaded(
        usable,
        |b| leaders.get(&b).copied().unwrap_or(0),
        rng.next_u64(),
    );
    let shift = rng.range(0, usable.len() as u64) as usize;
    // Offset the start so that partition `first` lands on the least loaded broker.
    let start = (start + usable.len() - (first.max(0) as usize % usable.len())) % usable.len();
    assign_replicas(usable, first, count, rf, start, shift)
}

fn fresh_topic_id(rng: &mut Rng, image: &ClusterImage, taken: &[TopicId]) -> TopicId {
    loop {
        let id = topic_id_from_bits(rng.next_u128());
        if image.topic_by_id(id).is_none() && !taken.contains(&id) {
            return id;
        }
    }
}

fn create_topics(
    config: &ControllerConfig,
    rng: &mut Rng,
    image: &ClusterImage,
    topics: Vec<CreateTopic>,
    validate_only: bool,
) -> Planned {
    let usable = image.usable_brokers();
    let mut leaders = leader_counts(image);
    let mut total = image.partition_count_total();
    let mut taken_names: Vec<String> = Vec::new();
    let mut taken_ids: Vec<TopicId> = Vec::new();
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(topics.len());
    for ct in topics {
        let planned = plan_topic(
            config,
            rng,
            image,
            &usable,
            &leaders,
            &taken_names,
            &taken_ids,
            total,
            ct,
        );
        match planned {
            Ok((created, topic_records)) => {
                total += created.topic.partition_count as usize;
                taken_names.push(created.topic.name.clone());
                taken_ids.push(created.topic.id);
                for r in &topic_records {
                    if let MetadataRecord::Partition {
                        state:
                            PartitionState {
                                leader: Some(l), ..
                            },
                        ..
                    } = r
                    {
                        *leaders.entry(*l).or_insert(0) += 1;
                    }
                }
                if !validate_only {
                    records.extend(topic_records);
                }
                results.push(Ok(created));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    (records, Ok(ControllerReply::CreateTopics(results)))
}

#[allow(clippy::too_many_arguments)]
fn plan_topic(
    config: &ControllerConfig,
    rng: &mut Rng,
    image: &ClusterImage,
    usable: &[NodeId],
    leaders: &BTreeMap<NodeId, usize>,
    taken_names: &[String],
    taken_ids: &[TopicId],
    total: usize,
    ct: CreateTopic,
) -> Result<(CreatedTopic, Vec<MetadataRecord>), MetadataError> {
    let CreateTopic {
        topic,
        replication_factor,
        mut assignments,
    } = ct;
    let replicas: Vec<Vec<NodeId>>;
    let partitions: i32;
    if !assignments.is_empty() {
        if topic.partitions != -1 || replication_factor != -1 {
            return Err(MetadataError::InvalidRequest(
                "Both numPartitions or replicationFactor and replicasAssignments were set. Both cannot be used at the same time.".into(),
            ));
        }
        assignments.sort_by_key(|a| a.partition);
        if assignments
            .iter()
            .enumerate()
            .any(|(i, a)| a.partition != i as i32)
        {
            return Err(MetadataError::InvalidReplicaAssignment(
                "Partitions should be a consecutive 0-based integer sequence".into(),
            ));
        }
        let len = assignments[0].replicas.len();
        for a in &assignments {
            check_assignment(image, config, a.partition, &a.replicas, Some(len))?;
        }
        partitions = assignments.len() as i32;
        replicas = assignments.into_iter().map(|a| a.replicas).collect();
    } else {
        partitions = if topic.partitions == -1 {
            config.num_partitions
        } else {
            topic.partitions
        };
        let rf = if replication_factor == -1 {
            config.default_replication_factor
        } else {
            replication_factor
        };
        if rf < 1 {
            return Err(MetadataError::InvalidReplicationFactor(
                "Replication factor must be larger than 0, or -1 to use the default value.".into(),
            ));
        }
        if rf > config.max_replication_factor {
            return Err(MetadataError::InvalidReplicationFactor(unsupported_rf(rf)));
        }
        if rf as usize > usable.len() {
            return Err(MetadataError::InvalidReplicationFactor(format!(
                "Unable to replicate the partition {rf} time(s): The target replication factor of {rf} cannot be reached because only {} broker(s) are registered.",
                usable.len()
            )));
        }
        // Checked again with the name below; needed here to bound the placement.
        if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&partitions) {
            return Err(MetadataError::InvalidPartitions(format!(
                "Number of partitions must be between 1 and {MAX_PARTITIONS_PER_TOPIC}, got {partitions}"
            )));
        }
        replicas = place(rng, usable, leaders, 0, partitions, rf as usize);
    }
    let new_topic = NewTopic {
        partitions,
        ..topic
    };
    let taken: Vec<&str> = taken_names.iter().map(String::as_str).collect();
    let overrides = validate_new_topic(image.metadata(), &new_topic, &taken)?;
    if total + partitions as usize > config.max_cluster_partitions {
        return Err(MetadataError::InvalidPartitions(format!(
            "Creating {partitions} partitions would take the cluster past its limit of {} partitions.",
            config.max_cluster_partitions
        )));
    }
    let id = fresh_topic_id(rng, image, taken_ids);
    let rf = replicas[0].len() as i16;
    let mut records = Vec::with_capacity(1 + partitions as usize);
    records.push(MetadataRecord::TopicCreated {
        name: new_topic.name.clone(),
        id,
        configs: overrides.clone(),
        internal: new_topic.internal,
    });
    for (p, r) in replicas.into_iter().enumerate() {
        records.push(MetadataRecord::Partition {
            topic: id,
            partition: PartitionId(p as i32),
            state: new_partition(image, r),
        });
    }
    let created = CreatedTopic {
        topic: crate::metadata::TopicMeta {
            name: new_topic.name,
            id,
            partition_count: partitions,
            overrides,
            internal: new_topic.internal,
        },
        replication_factor: rf,
    };
    Ok((created, records))
}

fn delete_topics(
    image: &ClusterImage,
    targets: Vec<crate::metadata::controller::TopicRef>,
) -> Planned {
    let mut deleted: Vec<TopicId> = Vec::new();
    let mut records = Vec::new();
    let results = targets
        .iter()
        .map(|target| {
            let topic = deletion_target(image.metadata(), target)?;
            if deleted.contains(&topic.id) {
                return Err(match target {
                    crate::metadata::controller::TopicRef::Name(_) => MetadataError::UnknownTopic,
                    crate::metadata::controller::TopicRef::Id(_) => MetadataError::UnknownTopicId,
                });
            }
            deleted.push(topic.id);
            records.push(MetadataRecord::TopicDeleted { id: topic.id });
            Ok(topic.clone())
        })
        .collect();
    (records, Ok(ControllerReply::DeleteTopics(results)))
}

fn create_partitions(
    config: &ControllerConfig,
    rng: &mut Rng,
    image: &ClusterImage,
    topics: Vec<PartitionsIncrease>,
    validate_only: bool,
) -> Planned {
    let usable = image.usable_brokers();
    let mut leaders = leader_counts(image);
    let mut total = image.partition_count_total();
    let mut records = Vec::new();
    let names: Vec<&str> = topics.iter().map(|t| t.topic.as_str()).collect();
    let mut results = Vec::with_capacity(topics.len());
    for t in &topics {
        let result = (|| {
            if names.iter().filter(|n| **n == t.topic).count() > 1 {
                return Err(MetadataError::InvalidRequest(format!(
                    "Duplicate topic in request: {}",
                    t.topic
                )));
            }
            let topic = image.topic(&t.topic).ok_or(MetadataError::UnknownTopic)?;
            check_partition_increase(topic, t.total)?;
            let added = t.total - topic.partition_count;
            if total + added as usize > config.max_cluster_partitions {
                return Err(MetadataError::InvalidPartitions(format!(
                    "Adding {added} partitions would take the cluster past its limit of {} partitions.",
                    config.max_cluster_partitions
                )));
            }
            let rf = image
                .partitions(topic.id)
                .first()
                .map_or(1, |p| p.replicas.len());
            let replicas = if t.assignments.is_empty() {
                if rf > usable.len() {
                    return Err(MetadataError::InvalidReplicationFactor(format!(
                        "Unable to replicate the partition {rf} time(s): The target replication factor of {rf} cannot be reached because only {} broker(s) are registered.",
                        usable.len()
                    )));
                }
                place(rng, &usable, &leaders, topic.partition_count, added, rf)
            } else {
                if t.assignments.len() != added as usize {
                    return Err(MetadataError::InvalidReplicaAssignment(format!(
                        "Increasing the number of partitions by {added} but {} assignments provided.",
                        t.assignments.len()
                    )));
                }
                for (i, r) in t.assignments.iter().enumerate() {
                    check_assignment(image, config, topic.partition_count + i as i32, r, Some(rf))?;
                }
                t.assignments.clone()
            };
            let mut topic_records = Vec::with_capacity(replicas.len());
            for (i, r) in replicas.into_iter().enumerate() {
                let state = new_partition(image, r);
                if let Some(l) = state.leader {
                    *leaders.entry(l).or_insert(0) += 1;
                }
                topic_records.push(MetadataRecord::Partition {
                    topic: topic.id,
                    partition: PartitionId(topic.partition_count + i as i32),
                    state,
                });
            }
            total += added as usize;
            if !validate_only {
                records.extend(topic_records);
            }
            Ok(())
        })();
        results.push(result);
    }
    (records, Ok(ControllerReply::CreatePartitions(results)))
}

fn alter_configs(
    config: &ControllerConfig,
    image: &ClusterImage,
    topics: Vec<(String, Vec<crate::metadata::controller::AlterOp>)>,
    validate_only: bool,
) -> Planned {
    let names: Vec<String> = topics.iter().map(|(n, _)| n.clone()).collect();
    let mut records = Vec::new();
    let results = topics
        .into_iter()
        .map(|(name, ops)| {
            if names.iter().filter(|n| **n == name).count() > 1 {
                return Err(MetadataError::InvalidRequest(format!(
                    "Duplicate resource in request: topic {name}"
                )));
            }
            let topic = image.topic(&name).ok_or(MetadataError::UnknownTopic)?;
            let next = apply_ops(&topic.overrides, ops, &config.topic_defaults)?;
            if !validate_only {
                for (k, v) in &next {
                    if topic.overrides.get(k) != Some(v) {
                        records.push(MetadataRecord::ConfigChanged {
                            topic: topic.id,
                            name: k.clone(),
                            value: Some(v.clone()),
                        });
                    }
                }
                for k in topic.overrides.keys().filter(|k| !next.contains_key(*k)) {
                    records.push(MetadataRecord::ConfigChanged {
                        topic: topic.id,
                        name: k.clone(),
                        value: None,
                    });
                }
            }
            Ok(())
        })
        .collect();
    (records, Ok(ControllerReply::AlterConfigs(results)))
}

fn check_broker_epoch(
    image: &ClusterImage,
    node: NodeId,
    broker_epoch: i64,
) -> Result<&BrokerRegistration, ControllerError> {
    let broker = image.broker(node).ok_or_else(|| {
        ControllerError::BrokerIdNotRegistered(format!("Broker {} is not registered.", node.0))
    })?;
    if broker.broker_epoch != broker_epoch {
        return Err(ControllerError::StaleBrokerEpoch(format!(
            "Expected broker epoch {} for broker {}, but got {broker_epoch}.",
            broker.broker_epoch, node.0
        )));
    }
    Ok(broker)
}

fn allocate_producer_ids(image: &ClusterImage, node: NodeId, broker_epoch: i64) -> Planned {
    if let Err(e) = check_broker_epoch(image, node, broker_epoch) {
        return (Vec::new(), Err(e));
    }
    let first = image.next_producer_id();
    let Some(next) = first.checked_add(PRODUCER_ID_BLOCK_SIZE) else {
        return (
            Vec::new(),
            Err(ControllerError::Metadata(MetadataError::Storage(
                "producer ids are exhausted".into(),
            ))),
        );
    };
    (
        vec![MetadataRecord::ProducerIdsAllocated {
            node,
            broker_epoch,
            next_producer_id: next,
        }],
        Ok(ControllerReply::ProducerIds(ProducerIdBlock {
            first,
            count: PRODUCER_ID_BLOCK_SIZE as i32,
        })),
    )
}

fn register_broker(
    active: &mut Active,
    now_ms: i64,
    r: RegisterBroker,
    next_index: u64,
) -> Planned {
    let image = &active.image;
    if let Some(cluster_id) = image.cluster_id() {
        if !r.cluster_id.is_empty() && r.cluster_id != cluster_id {
            return (
                Vec::new(),
                Err(ControllerError::InconsistentClusterId(format!(
                    "Expected cluster ID {cluster_id}, but broker {} has cluster ID {}.",
                    r.node.0, r.cluster_id
                ))),
            );
        }
    }
    if r.node.0 < 0 {
        return (
            Vec::new(),
            Err(ControllerError::Metadata(MetadataError::InvalidRequest(
                format!("Broker id {} is negative.", r.node.0),
            ))),
        );
    }
    let existing = image.broker(r.node);
    if let Some(b) = existing {
        if b.incarnation_id == r.incarnation_id {
            // A retried registration of the same process: the same epoch, unless it moved.
            active.sessions.touch(r.node, now_ms);
            if b.listeners == r.listeners && b.rack == r.rack {
                return (
                    Vec::new(),
                    Ok(ControllerReply::BrokerRegistration {
                        broker_epoch: b.broker_epoch,
                    }),
                );
            }
        } else if active.sessions.is_alive(r.node, now_ms) {
            return (
                Vec::new(),
                Err(ControllerError::DuplicateBrokerRegistration(format!(
                    "Another broker is registered with broker id {}; it was heard from less than broker.session.timeout.ms ago. Retry once it has stopped.",
                    r.node.0
                ))),
            );
        }
    }
    let same_process = existing.is_some_and(|b| b.incarnation_id == r.incarnation_id);
    let broker_epoch = if same_process {
        existing.map_or(0, |b| b.broker_epoch)
    } else {
        next_index as i64
    };
    let mut records = vec![MetadataRecord::BrokerRegistered(BrokerRegistration {
        node_id: r.node,
        incarnation_id: r.incarnation_id,
        broker_epoch,
        listeners: r.listeners,
        rack: r.rack,
        // A new process starts fenced: it leads nothing until it has caught up.
        fenced: if same_process {
            existing.is_some_and(|b| b.fenced)
        } else {
            true
        },
    })];
    if !same_process {
        records.extend(leave_partitions(image, r.node));
    }
    active.sessions.touch(r.node, now_ms);
    (
        records,
        Ok(ControllerReply::BrokerRegistration { broker_epoch }),
    )
}

fn heartbeat(active: &mut Active, now_ms: i64, h: Heartbeat) -> Planned {
    let broker = match check_broker_epoch(&active.image, h.node, h.broker_epoch) {
        Ok(b) => b,
        Err(e) => return (Vec::new(), Err(e)),
    };
    active.sessions.touch(h.node, now_ms);
    let caught_up = h.applied_offset >= broker.broker_epoch as u64;
    let fenced = broker.fenced;
    let reply = |is_fenced: bool, should_shut_down: bool| {
        Ok(ControllerReply::BrokerHeartbeat(HeartbeatReply {
            is_caught_up: caught_up,
            is_fenced,
            should_shut_down,
        }))
    };
    if h.want_shut_down || h.want_fence {
        // Controlled shutdown: leadership moves away before the broker is told to stop.
        let records = if fenced {
            Vec::new()
        } else {
            fence_records(&active.image, h.node)
        };
        return (records, reply(true, h.want_shut_down));
    }
    if fenced && caught_up {
        return (unfence_records(&active.image, h.node), reply(false, false));
    }
    (Vec::new(), reply(fenced, false))
}

#[cfg(test)]
mod tests;
