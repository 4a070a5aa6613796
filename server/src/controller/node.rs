//! One voter of the metadata quorum: Raft ([`Quorum`]), its durable log, the committed
//! [`ClusterImage`] and the [`Controller`] logic, glued together as one state machine that a
//! driver feeds (time, Raft messages, requests) and whose effects it carries out (messages
//! to send, writes to make durable, replies). The broker's glommio driver and the simulator
//! drive this same code.
//!
//! The driver's loop:
//!
//! ```text
//! on a tick / message / request:  node.tick(now) | node.step(msg) | node.request(now, token, req)
//! then, while let Some(rd) = node.ready():
//!     send rd.send; perform rd.writes (in order, durable); send rd.send_after_writes
//!     let adv = node.advance(); send adv.send; perform adv.writes
//! deliver node.take_replies()
//! ```
//!
//! Raft decides; this file only sequences. A newly elected leader first appends its
//! announcement (`ControllerChanged`); once that is committed and applied, everything before
//! it is applied too, and only then does the controller answer requests (held until then).
//! The first leader of an empty log then bootstraps the cluster (its id, and the topics of a
//! data directory written before clusters existed).

use bytes::Bytes;
use raft::eraftpb::Entry;
use wharf_protocol::controller as wire;

use crate::controller::image::{ApplyError, ClusterImage};
use crate::controller::log_store::{DiskOp, LogStore, LogStoreError};
use crate::controller::quorum::{Quorum, QuorumConfig, QuorumStatus};
use crate::controller::records::{decode_records, encode_records, MetadataRecord, RecordError};
use crate::controller::requests::*;
use crate::controller::rng::Rng;
use crate::controller::state::{Controller, ControllerConfig, Outcome, Proposal};
use crate::controller::wire::{from_wire, to_wire, RaftWireError};
use crate::metadata::controller::MetadataError;
use crate::metadata::{cluster_id_from_bits, NodeId};

/// The largest entry the controller proposes; well inside a frame, so that every append
/// message (which carries at least one entry) fits one.
pub const MAX_ENTRY_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// `controller.quorum.voters`, this node among them.
    pub voters: Vec<NodeId>,
    pub controller: ControllerConfig,
    /// Raft ticks are `tick_ms` apart ([`crate::controller::quorum::TICK_MS`]).
    pub tick_ms: i64,
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// Snapshot the image once this many entries were applied since the last snapshot.
    pub snapshot_every_entries: u64,
    /// Entries kept before the snapshot, for followers a little behind.
    pub keep_entries: u64,
    /// What the first leader of an empty log writes.
    pub bootstrap: Bootstrap,
    /// Keep every applied entry for [`ControllerNode::take_applied`] (the simulator checks
    /// them against the committed log).
    pub report_applied: bool,
}

/// The cluster's first records, written once by the first controller.
#[derive(Clone, Debug, Default)]
pub struct Bootstrap {
    /// The cluster id to use (a data dir written before clusters keeps its own); `None`
    /// for a new one.
    pub cluster_id: Option<String>,
    /// Topics and producer-id high water of such a data dir ([`crate::controller::migration`]).
    pub records: Vec<MetadataRecord>,
}

impl NodeConfig {
    pub fn new(node_id: NodeId, voters: Vec<NodeId>) -> NodeConfig {
        NodeConfig {
            node_id,
            voters,
            controller: ControllerConfig::new(node_id),
            tick_ms: crate::controller::quorum::TICK_MS,
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot_every_entries: 1000,
            keep_entries: 500,
            bootstrap: Bootstrap::default(),
            report_applied: false,
        }
    }
}

/// Why a node cannot start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Log(#[from] LogStoreError),
    #[error("the metadata snapshot cannot be read: {0}")]
    Snapshot(String),
    #[error("node {0} is not among controller.quorum.voters {1:?}")]
    NotAVoter(i32, Vec<i32>),
    #[error("the metadata quorum cannot start: {0}")]
    Raft(String),
}

/// Something the driver may want to know (and log, count or act on).
#[derive(Debug, Clone, PartialEq)]
pub enum NodeEvent {
    /// A committed record did not fit the image (skipped on every node alike).
    ApplyError(ApplyError),
    /// A committed entry's records could not be decoded (skipped on every node alike).
    BadEntry { index: u64, error: RecordError },
    /// The cluster's bootstrap record was applied.
    ClusterBootstrapped { cluster_id: String },
    /// This node's view of the quorum leader changed.
    LeaderChanged { term: u64, leader: Option<NodeId> },
    /// The image was replaced by a snapshot from the leader.
    SnapshotInstalled { index: u64 },
    /// The log was compacted at this index.
    Compacted { index: u64 },
}

/// Work from one Raft Ready; see the module docs for the order.
#[derive(Debug, Default)]
pub struct NodeReady {
    pub send: Vec<wire::RaftMessage>,
    pub writes: Vec<DiskOp>,
    pub send_after_writes: Vec<wire::RaftMessage>,
}

#[derive(Debug, Default)]
pub struct NodeAdvance {
    pub send: Vec<wire::RaftMessage>,
    /// Not required before anything is sent (commit index, compaction).
    pub writes: Vec<DiskOp>,
}

/// What a broker that is not a voter gets from FetchMetadata.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataFetch {
    /// The log before `from_offset` was compacted: load this snapshot first.
    Snapshot { index: u64, term: u64, data: Bytes },
    /// Committed entries from `from_offset` (possibly none), up to about `max_bytes`.
    Entries {
        committed_offset: u64,
        entries: Vec<(u64, u64, Bytes)>,
    },
}

/// An entry this node applied, or a snapshot it installed (`snapshot` set, `data` its
/// records).
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub index: u64,
    pub term: u64,
    pub data: Bytes,
    pub snapshot: bool,
}

/// One node's status, for `wharf cluster status`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatus {
    pub quorum: QuorumStatus,
    pub active_controller: bool,
    pub applied_offset: u64,
    pub snapshot_index: u64,
}

pub struct ControllerNode {
    config: NodeConfig,
    voters: Vec<u64>,
    quorum: Quorum,
    image: ClusterImage,
    controller: Controller,
    rng: Rng,
    now_ms: i64,
    next_tick_ms: i64,
    /// The term whose announcement this node proposed.
    announced_term: Option<u64>,
    /// The term in which this node proposed the bootstrap.
    bootstrap_term: Option<u64>,
    last_leader: (u64, Option<u64>),
    replies: Vec<(Token, Reply)>,
    events: Vec<NodeEvent>,
    applied: Vec<Applied>,
    /// Followers sent a snapshot in the current Ready, reported once it is advanced.
    snapshots_sent: Vec<u64>,
    /// When a Raft message last came from each other voter.
    last_heard_ms: std::collections::BTreeMap<u64, i64>,
    /// Set once a voter of the quorum said entries past this log's end are committed
    /// here: this voter has forgotten entries it acknowledged (its metadata log was lost or
    /// replaced), or a node of another cluster reaches its address. From then on it takes
    /// no part in Raft (steps nothing, never campaigns) until it is restarted: voting or
    /// acknowledging with a forgotten log could lose committed metadata, and raft-rs would
    /// panic stepping that message.
    out_of_quorum: Option<RaftWireError>,
}

/// The metadata quorum as this node sees it (DescribeQuorum).
#[derive(Clone, Debug, PartialEq)]
pub struct QuorumView {
    pub term: u64,
    pub leader: Option<NodeId>,
    /// The committed index: the log's high watermark.
    pub committed: u64,
    /// Each voter's progress, when this node leads.
    pub voters: Option<Vec<VoterProgress>>,
    /// Brokers that are not voters, following the log with FetchMetadata (KRaft's
    /// observers), as the leader last heard from them; filled in by the driver.
    pub observers: Vec<VoterProgress>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VoterProgress {
    pub node: NodeId,
    /// How far its log is known to agree with the leader's.
    pub log_end: u64,
    /// When the leader last heard from it (the leader itself: now).
    pub last_heard_ms: Option<i64>,
}

impl ControllerNode {
    /// Starts a node from its recovered log (see [`LogStore::recover`]) at time `now_ms`.
    pub fn open(
        config: NodeConfig,
        store: LogStore,
        mut rng: Rng,
        now_ms: i64,
    ) -> Result<ControllerNode, NodeError> {
        let voters: Vec<u64> = config.voters.iter().map(|n| n.0 as u64).collect();
        if !config.voters.contains(&config.node_id) || config.voters.iter().any(|n| n.0 < 0) {
            return Err(NodeError::NotAVoter(
                config.node_id.0,
                config.voters.iter().map(|n| n.0).collect(),
            ));
        }
        let snapshot = store.snapshot_ref().clone();
        let snap_index = snapshot.get_metadata().index;
        let image = if snap_index > 0 {
            let records =
                decode_records(&snapshot.data).map_err(|e| NodeError::Snapshot(e.to_string()))?;
            ClusterImage::from_snapshot(snap_index, snapshot.get_metadata().term, &records)
                .map_err(|e| NodeError::Snapshot(e.to_string()))?
        } else {
            ClusterImage::empty()
        };
        let mut qc = QuorumConfig::new(config.node_id.0 as u64, voters.clone(), snap_index);
        qc.election_tick = config.election_tick;
        qc.heartbeat_tick = config.heartbeat_tick;
        let quorum = Quorum::new(
            &qc,
            store,
            rng.fork(),
            &crate::controller::quorum::raft_logger(config.node_id.0 as u64),
        )
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let controller = Controller::new(config.controller.clone(), rng.fork());
        Ok(ControllerNode {
            next_tick_ms: now_ms + config.tick_ms,
            config,
            voters,
            quorum,
            image,
            controller,
            rng,
            now_ms,
            announced_term: None,
            bootstrap_term: None,
            last_leader: (0, None),
            replies: Vec::new(),
            events: Vec::new(),
            applied: Vec::new(),
            snapshots_sent: Vec::new(),
            last_heard_ms: Default::default(),
            out_of_quorum: None,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// The committed, applied image.
    pub fn image(&self) -> &ClusterImage {
        &self.image
    }

    pub fn is_active_controller(&self) -> bool {
        self.controller.is_active()
    }

    /// The quorum leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.quorum.leader().map(|l| NodeId(l as i32))
    }

    pub fn store(&self) -> &LogStore {
        self.quorum.store()
    }

    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            quorum: self.quorum.status(),
            active_controller: self.controller.is_active(),
            applied_offset: self.image.applied_offset(),
            snapshot_index: self.quorum.store().snapshot_index(),
        }
    }

    /// The quorum's term, leader, committed index and, on the leader, each voter's progress.
    pub fn quorum_view(&self) -> QuorumView {
        let status = self.quorum.status();
        let me = self.config.node_id.0 as u64;
        QuorumView {
            term: status.term,
            leader: status.leader.map(|l| NodeId(l as i32)),
            committed: status.commit,
            voters: self.quorum.progress().map(|progress| {
                progress
                    .into_iter()
                    .map(|(id, matched)| VoterProgress {
                        node: NodeId(id as i32),
                        log_end: matched,
                        last_heard_ms: if id == me {
                            Some(self.now_ms)
                        } else {
                            self.last_heard_ms.get(&id).copied()
                        },
                    })
                    .collect()
            }),
            observers: Vec::new(),
        }
    }

    /// The speculative image of the active controller (tests and the simulator).
    pub fn controller_image(&self) -> Option<&ClusterImage> {
        self.controller.image()
    }

    pub fn take_replies(&mut self) -> Vec<(Token, Reply)> {
        std::mem::take(&mut self.replies)
    }

    pub fn take_events(&mut self) -> Vec<NodeEvent> {
        std::mem::take(&mut self.events)
    }

    /// Entries applied and snapshots installed since the last call (only with
    /// `report_applied`).
    pub fn take_applied(&mut self) -> Vec<Applied> {
        std::mem::take(&mut self.applied)
    }

    /// Time passes: Raft ticks for every `tick_ms` elapsed, broker sessions are checked.
    pub fn tick(&mut self, now_ms: i64) {
        self.now_ms = self.now_ms.max(now_ms);
        // Bounded: after a long pause, at most one election timeout's worth of ticks.
        let mut ticks = 0;
        while self.next_tick_ms <= self.now_ms && ticks < 2 * self.config.election_tick {
            if self.out_of_quorum.is_none() {
                self.quorum.tick();
            }
            self.next_tick_ms += self.config.tick_ms;
            ticks += 1;
        }
        if self.next_tick_ms <= self.now_ms {
            self.next_tick_ms = self.now_ms + self.config.tick_ms;
        }
        self.drive();
    }

    /// Starts an election now; for a lone voter, which then leads at once instead of after
    /// an election timeout.
    pub fn campaign(&mut self) {
        if !self.quorum.is_leader() && self.out_of_quorum.is_none() {
            let _ = self.quorum.campaign();
            self.drive();
        }
    }

    /// Whether this voter has stopped taking part in the quorum (see `out_of_quorum`): its
    /// broker then asks to be fenced, so that its partitions are led elsewhere.
    pub fn is_out_of_quorum(&self) -> bool {
        self.out_of_quorum.is_some()
    }

    /// A Raft message from another voter. A refused one is not stepped (the driver closes
    /// that peer's connection).
    pub fn step(&mut self, message: wire::RaftMessage) -> Result<(), RaftWireError> {
        let message = from_wire(message, &self.voters, self.config.node_id.0 as u64)?;
        if let Some(why) = &self.out_of_quorum {
            return Err(why.clone());
        }
        if let Some((commit, last_index)) = self.quorum.commit_beyond_log(&message) {
            let why = RaftWireError::CommitBeyondLog {
                from: message.from,
                commit,
                last_index,
            };
            self.out_of_quorum = Some(why.clone());
            return Err(why);
        }
        self.last_heard_ms.insert(message.from, self.now_ms);
        // raft-rs refuses some messages itself (a response from an unknown peer): harmless.
        let _ = self.quorum.step(message);
        self.drive();
        Ok(())
    }

    /// A request for the controller. The reply comes out of [`take_replies`] with `token`.
    ///
    /// [`take_replies`]: ControllerNode::take_replies
    pub fn request(&mut self, now_ms: i64, token: Token, request: ControllerRequest) {
        self.now_ms = self.now_ms.max(now_ms);
        self.handle_request(token, request);
        self.drive();
    }

    /// FetchMetadata from a broker that is not a voter: committed entries from
    /// `from_offset`, or the snapshot when those were compacted away.
    pub fn fetch_metadata(
        &self,
        from_offset: u64,
        max_bytes: u64,
    ) -> Result<MetadataFetch, ControllerError> {
        if !self.controller.is_active() {
            return Err(ControllerError::NotController {
                leader: self.leader(),
            });
        }
        let store = self.quorum.store();
        let from = from_offset.max(1);
        if from < store.first_index() && store.snapshot_index() > 0 {
            let s = store.snapshot_ref();
            return Ok(MetadataFetch::Snapshot {
                index: s.get_metadata().index,
                term: s.get_metadata().term,
                data: s.data.clone(),
            });
        }
        let committed = self.image.applied_offset();
        let entries = if from > committed {
            Vec::new()
        } else {
            store
                .entries_between(from, committed + 1, max_bytes)
                .map_err(|_| ControllerError::Metadata(MetadataError::Unavailable))?
                .into_iter()
                .map(|e| (e.index, e.term, e.data))
                .collect()
        };
        Ok(MetadataFetch::Entries {
            committed_offset: committed,
            entries,
        })
    }

    /// The next Ready's work, if any.
    pub fn ready(&mut self) -> Option<NodeReady> {
        let rd = self.quorum.ready()?;
        if let Some(snapshot) = &rd.snapshot {
            self.install_snapshot(snapshot);
        }
        self.apply(rd.committed);
        let out = NodeReady {
            send: rd.messages.into_iter().map(to_wire).collect(),
            writes: rd.writes,
            send_after_writes: rd.persisted_messages.into_iter().map(to_wire).collect(),
        };
        self.note_snapshots(out.send.iter().chain(&out.send_after_writes));
        Some(out)
    }

    /// Completes the Ready: its writes are durable and its messages sent.
    pub fn advance(&mut self) -> NodeAdvance {
        let adv = self.quorum.advance();
        self.apply(adv.committed);
        let mut out = NodeAdvance {
            send: adv.messages.into_iter().map(to_wire).collect(),
            writes: adv.writes,
        };
        self.note_snapshots(out.send.iter());
        for to in std::mem::take(&mut self.snapshots_sent) {
            self.quorum.report_snapshot_sent(to);
        }
        let applied = self.image.applied_offset();
        if applied >= self.quorum.store().snapshot_index() + self.config.snapshot_every_entries {
            let data = encode_records(&self.image.snapshot_records());
            out.writes
                .extend(self.quorum.compact(applied, data, self.config.keep_entries));
            self.events.push(NodeEvent::Compacted { index: applied });
        }
        self.drive();
        out
    }

    fn note_snapshots<'a>(&mut self, messages: impl Iterator<Item = &'a wire::RaftMessage>) {
        const MSG_SNAPSHOT: u8 = raft::eraftpb::MessageType::MsgSnapshot as u8;
        self.snapshots_sent.extend(
            messages
                .filter(|m| m.msg_type == MSG_SNAPSHOT)
                .map(|m| m.to),
        );
    }

    /// The driver could not write the metadata log for `ms`; see
    /// [`Controller::pause_sessions`].
    pub fn pause_sessions(&mut self, ms: i64) {
        self.controller.pause_sessions(ms);
    }

    /// The connection to voter `node` failed (the driver's report): the leader probes it
    /// instead of streaming into the void.
    pub fn report_unreachable(&mut self, node: NodeId) {
        if self.voters.contains(&(node.0 as u64)) && node != self.config.node_id {
            self.quorum.report_unreachable(node.0 as u64);
            self.drive();
        }
    }

    fn install_snapshot(&mut self, snapshot: &raft::eraftpb::Snapshot) {
        let meta = snapshot.get_metadata();
        let loaded = decode_records(&snapshot.data)
            .map_err(|e| e.to_string())
            .and_then(|records| {
                ClusterImage::from_snapshot(meta.index, meta.term, &records)
                    .map_err(|e| e.to_string())
            });
        match loaded {
            Ok(image) => {
                self.image = image;
                self.events
                    .push(NodeEvent::SnapshotInstalled { index: meta.index });
                if self.config.report_applied {
                    self.applied.push(Applied {
                        index: meta.index,
                        term: meta.term,
                        data: snapshot.data.clone(),
                        snapshot: true,
                    });
                }
            }
            Err(reason) => {
                // Checked when the message arrived; a snapshot the leader built itself
                // always loads. Keep the offset moving so entries after it apply.
                tracing::error!(
                    "metadata snapshot at {} does not load: {reason}",
                    meta.index
                );
                self.events.push(NodeEvent::ApplyError(ApplyError {
                    offset: meta.index,
                    reason,
                }));
                self.image.apply(meta.index, meta.term, &[]);
            }
        }
    }

    /// Applies committed entries in order and releases the replies waiting for them.
    fn apply(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            if entry.index <= self.image.applied_offset() {
                continue;
            }
            debug_assert_eq!(
                entry.index,
                self.image.applied_offset() + 1,
                "entries apply in order"
            );
            let records = if entry.data.is_empty() {
                // A new leader's empty entry.
                Vec::new()
            } else {
                match decode_records(&entry.data) {
                    Ok(records) => records,
                    Err(error) => {
                        tracing::error!("metadata entry {} cannot be read: {error}", entry.index);
                        self.events.push(NodeEvent::BadEntry {
                            index: entry.index,
                            error,
                        });
                        Vec::new()
                    }
                }
            };
            for error in self.image.apply(entry.index, entry.term, &records) {
                tracing::error!("{error}");
                self.events.push(NodeEvent::ApplyError(error));
            }
            for r in &records {
                if let MetadataRecord::ClusterBootstrap { cluster_id } = r {
                    self.events.push(NodeEvent::ClusterBootstrapped {
                        cluster_id: cluster_id.clone(),
                    });
                }
            }
            let released = self.controller.committed(entry.index, entry.term);
            self.replies.extend(released);
            if self.config.report_applied {
                self.applied.push(Applied {
                    index: entry.index,
                    term: entry.term,
                    data: entry.data,
                    snapshot: false,
                });
            }
        }
    }

    /// Follows leadership changes and does what the state calls for: announce a new
    /// leadership, bootstrap an empty cluster, activate the controller, fence silent
    /// brokers. Runs after every input, never inside a Ready.
    fn drive(&mut self) {
        let term = self.quorum.term();
        let leader = self.quorum.leader();
        if (term, leader) != self.last_leader {
            self.last_leader = (term, leader);
            self.events.push(NodeEvent::LeaderChanged {
                term,
                leader: leader.map(|l| NodeId(l as i32)),
            });
        }
        let me = self.config.node_id;
        if !self.quorum.is_leader() {
            if self.controller.leader_term().is_some() {
                let failed = self.controller.resign(self.leader());
                self.replies.extend(failed);
            }
            return;
        }
        if self.controller.leader_term() != Some(term) {
            let failed = self.controller.become_leader(term);
            self.replies.extend(failed);
        }
        if self.announced_term != Some(term) {
            let data = encode_records(&[MetadataRecord::ControllerChanged { node: me, term }]);
            if self.quorum.propose(data).is_ok() {
                self.announced_term = Some(term);
            }
        }
        if !self.controller.is_active() && self.image.controller() == Some((me, term)) {
            if self.image.cluster_id().is_none() {
                if self.bootstrap_term != Some(term) {
                    let cluster_id = self
                        .config
                        .bootstrap
                        .cluster_id
                        .clone()
                        .unwrap_or_else(|| cluster_id_from_bits(self.rng.next_u128()));
                    let mut records = vec![MetadataRecord::ClusterBootstrap { cluster_id }];
                    records.extend(self.config.bootstrap.records.iter().cloned());
                    if self.quorum.propose(encode_records(&records)).is_ok() {
                        self.bootstrap_term = Some(term);
                    }
                }
            } else {
                let held = self.controller.activate(&self.image, self.now_ms);
                for (token, request) in held {
                    self.handle_request(token, request);
                }
            }
        }
        if self.controller.is_active() {
            while let Some(proposal) = self.controller.next_timer_proposal(self.now_ms) {
                if !self.propose(None, proposal) {
                    break;
                }
            }
        }
    }

    fn handle_request(&mut self, token: Token, request: ControllerRequest) {
        if !self.quorum.is_leader() {
            self.replies.push((
                token,
                Err(ControllerError::NotController {
                    leader: self.leader(),
                }),
            ));
            return;
        }
        if self.controller.leader_term() != Some(self.quorum.term()) {
            let failed = self.controller.become_leader(self.quorum.term());
            self.replies.extend(failed);
        }
        let next_index = self.quorum.next_index();
        match self
            .controller
            .handle(self.now_ms, token, request, next_index)
        {
            Outcome::Reply(reply) => self.replies.push((token, reply)),
            Outcome::Held => {}
            Outcome::Propose(proposal) => {
                self.propose(Some(token), proposal);
            }
        }
    }

    /// Proposes the controller's records; `false` if Raft did not take them (the reply, if
    /// any, is failed).
    fn propose(&mut self, token: Option<Token>, proposal: Proposal) -> bool {
        let data = encode_records(&proposal.records);
        let fail = |reply: &Option<Reply>, error: ControllerError| match reply {
            Some(Ok(r)) => match &error {
                ControllerError::Metadata(e) => r.all_failed(e.clone()),
                _ => Err(error),
            },
            _ => Err(error),
        };
        if data.len() > MAX_ENTRY_BYTES {
            if let Some(token) = token {
                let error = ControllerError::Metadata(MetadataError::InvalidRequest(format!(
                    "the change is {} bytes of metadata, more than the {MAX_ENTRY_BYTES} bytes one change may hold; split the request",
                    data.len()
                )));
                self.replies.push((token, fail(&proposal.reply, error)));
            }
            return false;
        }
        let expected = self.quorum.next_index();
        match self.quorum.propose(data) {
            Ok((index, term)) => {
                debug_assert_eq!(index, expected, "a proposal lands at next_index");
                for error in self.controller.proposed(index, term, token, proposal) {
                    tracing::error!(
                        "the controller proposed a record that does not apply: {error}"
                    );
                    self.events.push(NodeEvent::ApplyError(error));
                }
                true
            }
            Err(_) => {
                if let Some(token) = token {
                    let error = ControllerError::NotController {
                        leader: self.leader(),
                    };
                    self.replies.push((token, fail(&proposal.reply, error)));
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::follower::MetadataFollower;
    use crate::controller::log_store::{LOG_FILE, SNAPSHOT_FILE};
    use crate::controller::migration::{migration_applied, migration_records};
    use crate::controller::sim::metadata_dir::SimMetadataDir;
    use crate::metadata::cluster::Listener;
    use crate::metadata::topic_config::TopicOverrides;
    use crate::metadata::{new_topic_id, MetadataImage, TopicMeta};

    fn open(config: &NodeConfig, disk: &mut SimMetadataDir, now_ms: i64) -> ControllerNode {
        let voters = config.voters.iter().map(|n| n.0 as u64).collect();
        let (store, repairs, _) = LogStore::recover(
            voters,
            disk.read(LOG_FILE).unwrap().as_deref(),
            disk.read(SNAPSHOT_FILE).unwrap().as_deref(),
        )
        .unwrap();
        for op in &repairs {
            disk.apply(op);
        }
        ControllerNode::open(config.clone(), store, Rng::new(1), now_ms).unwrap()
    }

    /// A lone voter's driver: writes go to `disk`, there is no one to send to.
    fn pump(node: &mut ControllerNode, disk: &mut SimMetadataDir) {
        while let Some(rd) = node.ready() {
            assert!(rd.send.is_empty() && rd.send_after_writes.is_empty());
            for op in &rd.writes {
                disk.apply(op);
            }
            for op in &node.advance().writes {
                disk.apply(op);
            }
        }
        for e in node.take_events() {
            assert!(
                !matches!(e, NodeEvent::ApplyError(_) | NodeEvent::BadEntry { .. }),
                "{e:?}"
            );
        }
    }

    fn run_until(
        node: &mut ControllerNode,
        disk: &mut SimMetadataDir,
        now: &mut i64,
        until: impl Fn(&ControllerNode) -> bool,
    ) {
        for _ in 0..200 {
            if until(node) {
                return;
            }
            *now += 100;
            node.tick(*now);
            pump(node, disk);
        }
        panic!("the node never got there");
    }

    fn call(
        node: &mut ControllerNode,
        disk: &mut SimMetadataDir,
        now: i64,
        request: ControllerRequest,
    ) -> Reply {
        node.request(now, 42, request);
        pump(node, disk);
        let mut replies = node.take_replies();
        assert_eq!(replies.len(), 1, "{replies:?}");
        replies.pop().unwrap().1
    }

    fn register(node: &mut ControllerNode, disk: &mut SimMetadataDir, now: i64) -> i64 {
        let r = call(
            node,
            disk,
            now,
            ControllerRequest::RegisterBroker(RegisterBroker {
                node: NodeId(1),
                incarnation_id: 5,
                cluster_id: String::new(),
                listeners: vec![Listener {
                    name: "PLAINTEXT".into(),
                    host: "localhost".into(),
                    port: 9092,
                }],
                rack: None,
            }),
        );
        let Ok(ControllerReply::BrokerRegistration { broker_epoch }) = r else {
            panic!("{r:?}");
        };
        let applied = node.image().applied_offset();
        let r = call(
            node,
            disk,
            now,
            ControllerRequest::Heartbeat(Heartbeat {
                node: NodeId(1),
                broker_epoch,
                applied_offset: applied,
                want_fence: false,
                want_shut_down: false,
            }),
        );
        assert!(
            matches!(
                r,
                Ok(ControllerReply::BrokerHeartbeat(HeartbeatReply {
                    is_fenced: false,
                    ..
                }))
            ),
            "{r:?}"
        );
        broker_epoch
    }

    #[test]
    fn a_lone_voter_bootstraps_a_cluster_and_replays_it_after_a_restart() {
        let mut config = NodeConfig::new(NodeId(1), vec![NodeId(1)]);
        config.snapshot_every_entries = 4;
        config.keep_entries = 1;
        let mut disk = SimMetadataDir::default();
        let mut now = 0;
        let mut node = open(&config, &mut disk, now);
        run_until(
            &mut node,
            &mut disk,
            &mut now,
            ControllerNode::is_active_controller,
        );
        assert!(node.image().cluster_id().is_some());
        register(&mut node, &mut disk, now);
        for name in ["a", "b", "c"] {
            let r = call(
                &mut node,
                &mut disk,
                now,
                ControllerRequest::CreateTopics {
                    topics: vec![CreateTopic {
                        topic: crate::metadata::controller::NewTopic {
                            name: name.into(),
                            partitions: 2,
                            configs: vec![],
                            internal: false,
                        },
                        replication_factor: -1,
                        assignments: vec![],
                    }],
                    validate_only: false,
                },
            );
            assert!(
                matches!(&r, Ok(ControllerReply::CreateTopics(items)) if items[0].is_ok()),
                "{r:?}"
            );
        }
        assert!(node.store().snapshot_index() > 0, "compacted on the way");
        let before = node.image().clone();
        before.check_invariants().unwrap();

        // A broker that is not a voter follows: snapshot first (the log was compacted),
        // then entries.
        let mut follower = MetadataFollower::default();
        for _ in 0..10 {
            match node
                .fetch_metadata(follower.next_offset(), 1 << 20)
                .unwrap()
            {
                MetadataFetch::Snapshot { index, term, data } => {
                    follower.load_snapshot(index, term, &data).unwrap()
                }
                MetadataFetch::Entries { entries, .. } => {
                    assert_eq!(follower.apply_entries(&entries).unwrap(), vec![]);
                }
            }
        }
        assert_eq!(follower.image(), node.image());

        // A crash loses nothing that was synced: the restarted node replays its log (the
        // commit index may lag until it is leader again) to the same topics.
        disk.crash();
        drop(node);
        let mut node = open(&config, &mut disk, now);
        pump(&mut node, &mut disk);
        run_until(
            &mut node,
            &mut disk,
            &mut now,
            ControllerNode::is_active_controller,
        );
        assert_eq!(node.image().topics().count(), 3);
        for topic in before.topics() {
            assert_eq!(node.image().topic(&topic.name), Some(topic));
            assert_eq!(
                node.image().partitions(topic.id),
                before.partitions(topic.id)
            );
        }
        assert_eq!(node.image().cluster_id(), before.cluster_id());
    }

    #[test]
    fn the_first_controller_takes_over_a_data_dir_from_before_clusters() {
        let old = {
            let mut overrides = TopicOverrides::new();
            overrides.insert("retention.ms".into(), "60000".into());
            let mut image = MetadataImage::new(
                "kept-cluster-id".into(),
                [TopicMeta {
                    name: "orders".into(),
                    id: new_topic_id(),
                    partition_count: 3,
                    overrides,
                    internal: false,
                }],
            );
            image.next_producer_id = 7000;
            image
        };
        let mut config = NodeConfig::new(NodeId(1), vec![NodeId(1)]);
        config.bootstrap = Bootstrap {
            cluster_id: Some(old.cluster_id.clone()),
            records: migration_records(&old, NodeId(1)),
        };
        let mut disk = SimMetadataDir::default();
        let mut now = 0;
        let mut node = open(&config, &mut disk, now);
        run_until(
            &mut node,
            &mut disk,
            &mut now,
            ControllerNode::is_active_controller,
        );
        assert!(migration_applied(node.image(), &old));
        let orders = node.image().topic("orders").unwrap().clone();
        assert!(node
            .image()
            .partitions(orders.id)
            .iter()
            .all(|p| p.leader.is_none()));
        // The broker registers and catches up: its partitions are led again, epoch 1.
        let epoch = register(&mut node, &mut disk, now);
        assert!(epoch > 0);
        for p in node.image().partitions(orders.id) {
            assert_eq!(p.leader, Some(NodeId(1)));
            assert_eq!(p.leader_epoch.0, 1);
        }
        let r = call(
            &mut node,
            &mut disk,
            now,
            ControllerRequest::AllocateProducerIds {
                node: NodeId(1),
                broker_epoch: epoch,
            },
        );
        assert!(
            matches!(r, Ok(ControllerReply::ProducerIds(b)) if b.first == 7000),
            "{r:?}"
        );
    }

    #[test]
    fn a_heartbeat_committing_past_this_voters_log_is_refused_not_a_panic() {
        // What a voter whose metadata log was emptied hears from the leader that remembers
        // what it acknowledged (or a voter from a node of another cluster at its address):
        // raft-rs would panic stepping it.
        let config = NodeConfig::new(NodeId(2), vec![NodeId(1), NodeId(2), NodeId(3)]);
        let heartbeat = |term, commit| wire::RaftMessage {
            msg_type: 8,
            from: 1,
            to: 2,
            term,
            commit,
            ..wire::RaftMessage::default()
        };
        // A heartbeat that commits nothing past the log is stepped as before.
        let mut disk = SimMetadataDir::default();
        let mut healthy = open(&config, &mut disk, 0);
        assert_eq!(healthy.step(heartbeat(5, 0)), Ok(()));
        assert_eq!(healthy.status().quorum.term, 5);

        let mut disk = SimMetadataDir::default();
        let mut node = open(&config, &mut disk, 0);
        let refused = Err(RaftWireError::CommitBeyondLog {
            from: 1,
            commit: 40,
            last_index: 0,
        });
        assert_eq!(node.step(heartbeat(5, 40)), refused);
        assert_eq!(node.status().quorum.term, 0, "the quorum is not disturbed");
        // From then on it takes no part: it steps nothing and never campaigns.
        assert_eq!(node.step(heartbeat(5, 0)), refused);
        for now in (0..10_000).step_by(100) {
            node.tick(now);
        }
        node.campaign();
        assert_eq!(node.status().quorum.term, 0);
        assert!(node.ready().is_none_or(|r| r.send.is_empty()));
    }

    #[test]
    fn a_voter_that_is_not_the_leader_says_who_is_and_refuses_stray_frames() {
        let config = NodeConfig::new(NodeId(2), vec![NodeId(1), NodeId(2), NodeId(3)]);
        let mut disk = SimMetadataDir::default();
        let mut node = open(&config, &mut disk, 0);
        let r = call(
            &mut node,
            &mut disk,
            0,
            ControllerRequest::AllocateProducerIds {
                node: NodeId(1),
                broker_epoch: 1,
            },
        );
        assert_eq!(r, Err(ControllerError::NotController { leader: None }));
        assert!(matches!(
            node.fetch_metadata(1, 100),
            Err(ControllerError::NotController { .. })
        ));
        let stray = wire::RaftMessage {
            msg_type: 5,
            from: 9,
            to: 2,
            term: 99,
            ..wire::RaftMessage::default()
        };
        assert_eq!(node.step(stray), Err(RaftWireError::NotAVoter(9)));
        assert_eq!(node.status().quorum.term, 0, "the quorum is not disturbed");
        assert!(matches!(
            ControllerNode::open(
                NodeConfig::new(NodeId(7), vec![NodeId(1)]),
                LogStore::new(vec![1]),
                Rng::new(1),
                0
            ),
            Err(NodeError::NotAVoter(7, _))
        ));
    }
}
