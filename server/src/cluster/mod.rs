//! The cluster's control plane at run time: the glommio driver of this node's
//! [`ControllerNode`] (the pure state machine of `crate::controller`), on shard 0.
//!
//! - [`ControlPlane`] owns the node: it ticks it, steps the Raft messages and requests that
//!   arrive, carries out each Ready (sends messages, makes the metadata log durable through
//!   [`disk`] before anything that depends on it leaves, applies what is committed) and
//!   hands every new committed image to all shards, the way metadata always reached them.
//! - [`call`] is how any shard asks for a metadata change: the request goes to this node's
//!   controller when it is the active one, else it is forwarded to the active controller
//!   over the controller listener ([`net`]); the answer comes once the change is committed
//!   and this node's shards serve it.
//! - On a node that is not a voter (a broker only) there is no Raft: [`follow`] pulls the
//!   committed metadata log from the active controller with FetchMetadata and hands each new
//!   image to the shards the same way.
//! - [`lifecycle`] registers this node as a broker and heartbeats (KIP-631), and says when
//!   the node has caught up and may serve clients.
//! - [`startup`] opens the metadata log at start (and takes over a data directory written
//!   before clusters existed).
//!
//! See docs/cluster.md.

pub mod alter_partition;
pub mod disk;
pub mod follow;
pub mod kafka_peer;
pub mod lifecycle;
pub mod net;
pub mod observers;
pub mod startup;

pub use alter_partition::{alter_partition, alter_partitions};

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use wharf_engine::storage::DmaStorage;
use wharf_protocol::controller as wire;

use crate::controller::follower::MetadataFollower;
use crate::controller::image::ClusterImage;
use crate::controller::node::{ControllerNode, NodeEvent};
use crate::controller::quorum::TICK_MS;
use crate::controller::requests::{ControllerError, ControllerRequest, Reply, Token};
use crate::metadata::controller::CONTROLLER_SHARD;
use crate::metadata::NodeId;
use crate::node::calls::Call;
use crate::node::Shard;
use crate::reply;
use crate::shard::event::{Notify, Watchers};
use crate::shard::{now_ms, oneshot};

use disk::StorageDisk;

/// How long a metadata change may take, elections and forwarding included, before the
/// caller gets a retriable error.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one forwarded request may wait for its answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a request waiting on a remote controller looks whether another node leads
/// now.
const LEADER_CHANGE_POLL: Duration = Duration::from_millis(50);
/// How long the controller works on a forwarded request before answering that it timed
/// out: within the forwarder's own wait, so the answer reaches it.
const FORWARDED_REQUEST_TIMEOUT: Duration = Duration::from_millis(4_500);
/// How long DescribeQuorum looks for the quorum leader's view before answering
/// NOT_LEADER_OR_FOLLOWER: within a Kafka client's default request timeout (30 s).
const DESCRIBE_QUORUM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answer waits for this node's own image to reach the change it reports.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between attempts to reach the active controller.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Pause between attempts to create partitions that did not fit on a full disk.
const OPEN_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// Most inputs queued for the node (they pile up only while the driver waits for the disk).
pub const MAX_QUEUED_INPUTS: usize = 4096;

/// The answer to a request that was not committed in time.
fn timed_out() -> ControllerError {
    ControllerError::Metadata(crate::metadata::controller::MetadataError::TimedOut(
        "The metadata change was not committed in time: the controller cannot write its metadata log (is its disk full?). The change may still be made once it can; check before retrying.".into(),
    ))
}

/// Something for the node, queued until the driver is between two Readys (raft-rs takes no
/// input between `ready()` and `advance()`).
pub enum Input {
    Raft(wire::RaftMessage),
    Request(Token, ControllerRequest),
    Unreachable(NodeId),
}

/// What the metrics endpoint shows of the control plane.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ControlSnapshot {
    pub term: u64,
    pub leader: i32,
    pub active_controller: bool,
    pub applied_offset: u64,
    pub bad_frames: u64,
    pub writes_stalled: bool,
    pub write_stalls: u64,
}

/// How this node holds the cluster's metadata.
pub(crate) enum Metadata {
    /// A voter (broker and controller, KRaft's combined mode): Raft, the durable metadata
    /// log and the controller.
    Voter {
        node: RefCell<ControllerNode>,
        disk: StorageDisk<DmaStorage>,
    },
    /// A broker only: the image it follows from the active controller ([`follow`]).
    Follower(RefCell<MetadataFollower>),
}

/// This node's control plane: a voter's controller and its driver, or a broker-only node's
/// follower. Lives on shard 0 only.
pub struct ControlPlane {
    shard: Rc<Shard>,
    me: NodeId,
    metadata: Metadata,
    inbox: RefCell<VecDeque<Input>>,
    wake: Notify,
    waiters: RefCell<HashMap<Token, oneshot::Sender<(Reply, u64)>>>,
    next_token: Cell<Token>,
    leader: Cell<Option<NodeId>>,
    /// A broker-only node's turn through the voters while it knows no active controller.
    next_voter: Cell<usize>,
    /// The committed offset the active controller last reported (broker-only nodes).
    known_committed: Cell<u64>,
    /// Fired whenever this voter's applied offset moves (FetchMetadata long polls).
    applied_watchers: Watchers,
    /// Brokers following the log through this voter, by node id (registered ones only).
    observers: observers::Observers,
    /// The newest committed image not yet handed to the shards.
    pending_image: RefCell<Option<ClusterImage>>,
    offered_offset: Cell<u64>,
    publish_wake: Notify,
    published_offset: Cell<u64>,
    published_waiters: RefCell<Vec<(u64, oneshot::Sender<()>)>>,
    /// Partitions that failed to open or delete while applying an image.
    publish_failures: RefCell<Vec<String>>,
    peers: net::Peers,
    pub broker: lifecycle::BrokerState,
    /// Frames refused on the controller listener (the peer's connection was closed).
    bad_frames: Cell<u64>,
    /// A metadata log write is failing and being retried.
    writes_stalled: Cell<bool>,
    /// Times a metadata log write failed and had to wait (each stall counted once).
    write_stalls: Cell<u64>,
    /// Inputs dropped or refused because the queue was full during a stall.
    dropped_inputs: Cell<u64>,
    /// When a Raft message that cannot be stepped safely was last logged (at most every
    /// `UNSAFE_RAFT_WARN_INTERVAL_MS`: the leader sends one each heartbeat).
    unsafe_raft_warned_ms: Cell<i64>,
}

const UNSAFE_RAFT_WARN_INTERVAL_MS: i64 = 10_000;

impl ControlPlane {
    /// The control plane of this shard, if it runs one (shard 0 of a started broker).
    pub fn get(shard: &Shard) -> Option<Rc<ControlPlane>> {
        shard.control.borrow().clone()
    }

    pub fn node_id(&self) -> NodeId {
        self.me
    }

    /// Whether this node is a voter of the metadata quorum (else a broker only).
    pub fn is_voter(&self) -> bool {
        matches!(self.metadata, Metadata::Voter { .. })
    }

    /// A voter that stopped taking part in its quorum (it was told entries past its log
    /// are committed): its image no longer follows the cluster.
    pub fn is_out_of_quorum(&self) -> bool {
        self.voter().is_some_and(|n| n.borrow().is_out_of_quorum())
    }

    /// This voter's controller node; `None` on a broker-only node.
    pub(crate) fn voter(&self) -> Option<&RefCell<ControllerNode>> {
        match &self.metadata {
            Metadata::Voter { node, .. } => Some(node),
            Metadata::Follower(_) => None,
        }
    }

    /// The controller node of a voter, for the Raft driver, which runs on voters only.
    fn node(&self) -> &RefCell<ControllerNode> {
        self.voter()
            .expect("the Raft driver runs on voters only (started by startup::start)")
    }

    /// Reads this node's committed image without copying it.
    pub fn with_image<T>(&self, f: impl FnOnce(&ClusterImage) -> T) -> T {
        match &self.metadata {
            Metadata::Voter { node, .. } => f(node.borrow().image()),
            Metadata::Follower(follower) => f(follower.borrow().image()),
        }
    }

    /// `controller.quorum.voters` as Raft knows them.
    pub fn voter_ids(&self) -> Vec<u64> {
        self.shard
            .config
            .cluster
            .voters
            .iter()
            .map(|v| v.id as u64)
            .collect()
    }

    /// The quorum leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader.get()
    }

    /// The image this node's shards serve is at least at this metadata offset.
    pub fn published_offset(&self) -> u64 {
        self.published_offset.get()
    }

    /// The committed image this node has applied (possibly ahead of the shards').
    pub fn image(&self) -> ClusterImage {
        self.with_image(ClusterImage::clone)
    }

    pub fn snapshot(&self) -> ControlSnapshot {
        let (term, active_controller, applied_offset) = match &self.metadata {
            Metadata::Voter { node, .. } => {
                let status = node.borrow().status();
                (
                    status.quorum.term,
                    status.active_controller,
                    status.applied_offset,
                )
            }
            // A broker only takes part in no election: it knows no term.
            Metadata::Follower(f) => (0, false, f.borrow().image().applied_offset()),
        };
        ControlSnapshot {
            term,
            leader: self.leader.get().map_or(-1, |l| l.0),
            active_controller,
            applied_offset,
            bad_frames: self.bad_frames.get(),
            writes_stalled: self.writes_stalled.get(),
            write_stalls: self.write_stalls.get(),
        }
    }

    /// Where to send the next request for the active controller: the one this node knows
    /// of; on a broker-only node that knows none, the next voter in turn (a voter that is
    /// not the controller answers NOT_CONTROLLER, naming it when it knows).
    pub(crate) fn controller_guess(&self) -> Option<NodeId> {
        if let Some(leader) = self.leader.get() {
            return Some(leader);
        }
        if self.is_voter() {
            // Raft tells a voter who leads.
            return None;
        }
        let voters = &self.shard.config.cluster.voters;
        if voters.is_empty() {
            return None;
        }
        let i = self.next_voter.get();
        self.next_voter.set(i.wrapping_add(1));
        Some(NodeId(voters[i % voters.len()].id))
    }

    /// A broker-only node learnt where the active controller is (`None`: not there any
    /// more, try the others). A voter learns it from Raft and ignores this.
    pub(crate) fn controller_hint(&self, leader: Option<NodeId>) {
        if self.is_voter() {
            return;
        }
        if self.leader.get() != leader {
            match leader {
                Some(l) => tracing::debug!(controller = l.0, "following the active controller"),
                None => tracing::debug!("looking for the active controller"),
            }
        }
        self.leader.set(leader);
    }

    /// Hands a new committed image to the publisher, which gives it to every shard.
    fn offer_image(&self, image: ClusterImage) {
        let applied = image.applied_offset();
        if applied > self.offered_offset.get() {
            self.offered_offset.set(applied);
            *self.pending_image.borrow_mut() = Some(image);
            self.publish_wake.notify();
        }
    }

    /// A broker following the log fetched from `from_offset`: remember it, so
    /// DescribeQuorum can show it as an observer with its lag.
    pub(crate) fn observe_fetch(&self, node: NodeId, from_offset: u64) {
        self.with_image(|image| self.observers.fetched(image, node, from_offset, now_ms()));
    }

    /// The metadata quorum as this node sees it.
    pub fn quorum_view(&self) -> QuorumView {
        match &self.metadata {
            Metadata::Voter { node, .. } => {
                let mut view = node.borrow().quorum_view();
                if view.voters.is_some() {
                    view.observers = self.with_image(|image| self.observers.progress(image));
                }
                view
            }
            // A broker only knows the controller it follows and how far the log goes.
            Metadata::Follower(_) => QuorumView {
                term: 0,
                leader: self.leader.get(),
                committed: self.known_committed.get(),
                voters: None,
                observers: Vec::new(),
            },
        }
    }

    /// The metadata quorum as its leader sees it, wherever the leader is: this node's own
    /// view when it leads, else the leader's, asked over the controller listener (KRaft
    /// brokers forward DescribeQuorum to the active controller the same way). A voter that
    /// does not lead names the one that does, which is asked next. Bounded by
    /// [`DESCRIBE_QUORUM_TIMEOUT`]: without the leader's answer by then (no leader, or it
    /// cannot be reached) this node's own view is returned, which lists no voters.
    pub async fn leader_quorum_view(self: &Rc<Self>) -> QuorumView {
        let deadline = Instant::now() + DESCRIBE_QUORUM_TIMEOUT;
        let mut hint: Option<NodeId> = None;
        loop {
            let view = self.quorum_view();
            let left = deadline.saturating_duration_since(Instant::now());
            if view.voters.is_some() || left.is_zero() {
                return view;
            }
            let pause = RETRY_BACKOFF.min(left);
            let target = hint
                .take()
                .or_else(|| self.controller_guess())
                .filter(|t| *t != self.me);
            let Some(target) = target else {
                // An election is under way (or this voter's Raft has not caught up yet).
                glommio::timer::sleep(pause).await;
                continue;
            };
            match self.peers.describe_quorum(target, self.me, left).await {
                Ok(Ok(leader_view)) => return leader_view,
                Ok(Err(leader)) => {
                    // As in `call`: follow the answer's pointer, never back to the node
                    // that just said no.
                    hint = leader.filter(|l| *l != target);
                    if self.leader.get() == Some(target) || hint.is_some() {
                        self.controller_hint(hint);
                    }
                    if hint.is_none() {
                        glommio::timer::sleep(pause).await;
                    }
                }
                Err(e) => {
                    tracing::debug!(leader = target.0, "cannot reach the quorum leader: {e}");
                    if self.leader.get() == Some(target) {
                        self.controller_hint(None);
                    }
                    glommio::timer::sleep(pause).await;
                }
            }
        }
    }

    pub(crate) fn count_bad_frame(&self) {
        self.bad_frames.set(self.bad_frames.get() + 1);
    }

    /// Queues something for the node and wakes the driver. The queue is bounded: while the
    /// driver waits for the disk, Raft messages beyond [`MAX_QUEUED_INPUTS`] are dropped
    /// (Raft resends) and requests are refused at once, as if they had timed out.
    pub(crate) fn input(&self, input: Input) {
        if !self.is_voter() {
            // A broker only runs no Raft and no controller: it has nobody to give this to.
            if let Input::Request(token, _) = input {
                if let Some(tx) = self.waiters.borrow_mut().remove(&token) {
                    tx.send((
                        Err(ControllerError::NotController {
                            leader: self.leader.get(),
                        }),
                        0,
                    ));
                }
            }
            return;
        }
        let mut inbox = self.inbox.borrow_mut();
        if inbox.len() >= MAX_QUEUED_INPUTS {
            self.dropped_inputs.set(self.dropped_inputs.get() + 1);
            if let Input::Request(token, _) = input {
                drop(inbox);
                if let Some(tx) = self.waiters.borrow_mut().remove(&token) {
                    tx.send((Err(timed_out()), 0));
                }
            }
            return;
        }
        inbox.push_back(input);
        drop(inbox);
        self.wake.notify();
    }

    /// A request for this node's own controller (the node answers NOT_CONTROLLER when it is
    /// not the active one). Resolves to the answer and the metadata offset it was given at.
    ///
    /// Without an answer within `timeout` (the metadata log cannot be written) the answer is
    /// REQUEST_TIMED_OUT; the change may still be made later, as with Kafka's timeouts.
    pub(crate) async fn submit_local(
        &self,
        request: ControllerRequest,
        timeout: Duration,
    ) -> (Reply, u64) {
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().insert(token, tx);
        self.input(Input::Request(token, request));
        let answer = futures_lite::future::or(async { Some(rx.await) }, async {
            glommio::timer::sleep(timeout).await;
            None
        })
        .await;
        match answer {
            Some(Some(answer)) => answer,
            Some(None) => (Err(ControllerError::NotController { leader: None }), 0),
            None => {
                self.waiters.borrow_mut().remove(&token);
                (Err(timed_out()), 0)
            }
        }
    }

    /// Asks the active controller, wherever it is, and answers once the change is served by
    /// this node's shards. NOT_CONTROLLER from a node that lost leadership sends the request
    /// to the one it names; without a controller for [`CALL_TIMEOUT`] the answer is
    /// NOT_CONTROLLER, which clients retry.
    pub async fn call(self: &Rc<Self>, request: ControllerRequest) -> Reply {
        let deadline = Instant::now() + CALL_TIMEOUT;
        let mut hint: Option<NodeId> = None;
        let mut last_error = ControllerError::NotController { leader: None };
        while Instant::now() < deadline {
            let target = hint.take().or_else(|| self.controller_guess());
            let Some(target) = target else {
                glommio::timer::sleep(RETRY_BACKOFF).await;
                continue;
            };
            let (reply, offset) = if target == self.me {
                let left = deadline.saturating_duration_since(Instant::now());
                self.submit_local(request.clone(), left).await
            } else {
                let asked = futures_lite::future::or(
                    async { Some(self.peers.request(target, &request, FORWARD_TIMEOUT).await) },
                    async {
                        self.until_another_leader(target).await;
                        None
                    },
                )
                .await;
                let Some(asked) = asked else {
                    // The node asked stopped leading while the request waited (a voter
                    // hears it from Raft, a broker from a hint): ask the new one now rather
                    // than after FORWARD_TIMEOUT. A controller that stopped answering (a
                    // stopped process, a lost link) must not keep this node's heartbeats
                    // away from its successor past the session timeout.
                    tracing::debug!(
                        controller = target.0,
                        "the active controller changed while a request waited; asking the new one"
                    );
                    continue;
                };
                match asked {
                    Ok(answer) => answer,
                    Err(e) => {
                        tracing::debug!(
                            controller = target.0,
                            "cannot reach the active controller: {e}"
                        );
                        if self.leader.get() == Some(target) {
                            self.controller_hint(None);
                        }
                        glommio::timer::sleep(RETRY_BACKOFF).await;
                        continue;
                    }
                }
            };
            match reply {
                Err(ControllerError::NotController { leader }) => {
                    last_error = ControllerError::NotController { leader };
                    // Retry where the answer points, unless it points back to the node
                    // that just said no; two nodes with stale views must not bounce a
                    // request between them without pause.
                    hint = leader.filter(|l| *l != target);
                    if self.leader.get() == Some(target) || hint.is_some() {
                        self.controller_hint(hint);
                    }
                    let pause = if hint.is_some() {
                        Duration::from_millis(10)
                    } else {
                        RETRY_BACKOFF
                    };
                    glommio::timer::sleep(pause).await;
                }
                answer => {
                    self.wait_published(offset, CATCH_UP_TIMEOUT).await;
                    return answer;
                }
            }
        }
        Err(last_error)
    }

    /// Resolves once this node knows of an active controller other than `target`.
    async fn until_another_leader(&self, target: NodeId) {
        loop {
            glommio::timer::sleep(LEADER_CHANGE_POLL).await;
            if self.leader.get().is_some_and(|l| l != target) {
                return;
            }
        }
    }

    /// Waits until this node's shards serve an image at `offset` or later (bounded).
    pub async fn wait_published(&self, offset: u64, timeout: Duration) -> bool {
        if self.published_offset.get() >= offset {
            return true;
        }
        let (tx, rx) = oneshot::channel();
        self.published_waiters.borrow_mut().push((offset, tx));
        futures_lite::future::or(async { rx.await.is_some() }, async {
            glommio::timer::sleep(timeout).await;
            false
        })
        .await
    }

    /// The driver: inputs and ticks in, Readys carried out.
    async fn run(self: Rc<Self>) {
        let tick = Duration::from_millis(TICK_MS as u64);
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            futures_lite::future::or(self.wake.notified(), glommio::timer::sleep(wait)).await;
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + tick;
            }
            self.turn().await;
        }
    }

    /// One turn of the driver: everything queued goes in, then every Ready is carried out.
    async fn turn(&self) {
        let now = now_ms();
        {
            let inputs: Vec<Input> = self.inbox.borrow_mut().drain(..).collect();
            let mut node = self.node().borrow_mut();
            for input in inputs {
                match input {
                    Input::Raft(m) => {
                        // Checked on arrival; a refusal here is a message that became
                        // stray meanwhile, harmless.
                        match node.step(m) {
                            Ok(()) => {}
                            Err(
                                e @ crate::controller::wire::RaftWireError::CommitBeyondLog {
                                    ..
                                },
                            ) => {
                                let last = self.unsafe_raft_warned_ms.get();
                                if now - last >= UNSAFE_RAFT_WARN_INTERVAL_MS {
                                    self.unsafe_raft_warned_ms.set(now);
                                    tracing::error!("raft message refused: {e}");
                                }
                            }
                            Err(e) => tracing::debug!("raft message not stepped: {e}"),
                        }
                    }
                    Input::Request(token, request) => node.request(now, token, request),
                    Input::Unreachable(peer) => node.report_unreachable(peer),
                }
            }
            node.tick(now);
        }
        loop {
            let ready = self.node().borrow_mut().ready();
            let Some(ready) = ready else { break };
            self.peers.send(ready.send);
            self.perform(&ready.writes).await;
            self.peers.send(ready.send_after_writes);
            let advance = self.node().borrow_mut().advance();
            self.peers.send(advance.send);
            self.perform(&advance.writes).await;
        }
        self.after_turn();
    }

    /// Makes writes durable, in order. A failed write (a full disk) is made again after a
    /// pause until it succeeds: this Ready's messages, answers and everything after it wait,
    /// the broker keeps serving what it has, and callers of [`ControlPlane::call`] get an
    /// error once their timeout passes. A failed `fdatasync` stops the process: the kernel
    /// may have dropped the unsynced pages (fsyncgate), so only a restart from what is
    /// really on disk is safe. KRaft halts the process the same way.
    async fn perform(&self, writes: &[crate::controller::log_store::DiskOp]) {
        let stalled_since: Cell<Option<Instant>> = Cell::new(None);
        let Metadata::Voter { disk, .. } = &self.metadata else {
            return;
        };
        let result = disk::perform_all(
            disk,
            writes,
            disk::RetryPolicy::default(),
            glommio::timer::sleep,
            |s| {
            if s.attempts == 1 {
                stalled_since.set(Some(Instant::now()));
                self.write_stalls.set(self.write_stalls.get() + 1);
                let what = if wharf_engine::storage::is_no_space(s.error) {
                    "the disk is full"
                } else {
                    "a write failed"
                };
                tracing::error!(
                    "{what}: the metadata log cannot be written ({op}: {error}); metadata changes wait (and time out) until it can, the broker goes on serving; trying again",
                    op = disk::op_name(s.op),
                    error = s.error
                );
            } else {
                tracing::debug!(
                    attempts = s.attempts,
                    "the metadata log still cannot be written ({}: {})",
                    disk::op_name(s.op),
                    s.error
                );
            }
            self.writes_stalled.set(true);
        })
        .await;
        if let Err((op, e)) = result {
            tracing::error!(
                "fdatasync of the metadata log failed ({op_name}): {e}; stopping, since what it covered may be lost: restart the broker to recover from what is on disk",
                op_name = disk::op_name(op)
            );
            eprintln!(
                "wharf: fdatasync of the metadata log failed: {e}; stopping (restart to recover from what is on disk)"
            );
            std::process::exit(74);
        }
        if let Some(since) = stalled_since.get() {
            let stalled = since.elapsed();
            tracing::info!(
                stalled_ms = stalled.as_millis() as u64,
                "the metadata log is written again"
            );
            self.writes_stalled.set(false);
            // The time the controller could not work does not count against the brokers'
            // sessions: their heartbeats waited in the queue meanwhile.
            self.node()
                .borrow_mut()
                .pause_sessions(stalled.as_millis() as i64);
        }
    }

    /// Answers, events and the new image after a turn.
    fn after_turn(&self) {
        let (replies, events, applied) = {
            let mut node = self.node().borrow_mut();
            (
                node.take_replies(),
                node.take_events(),
                node.image().applied_offset(),
            )
        };
        for (token, reply) in replies {
            if let Some(tx) = self.waiters.borrow_mut().remove(&token) {
                tx.send((reply, applied));
            }
        }
        for event in events {
            match event {
                NodeEvent::LeaderChanged { term, leader } => {
                    self.leader.set(leader);
                    match leader {
                        Some(l) if l == self.me => {
                            tracing::info!(term, "this node leads the metadata quorum")
                        }
                        Some(l) => {
                            tracing::info!(term, leader = l.0, "the metadata quorum has a leader")
                        }
                        None => tracing::info!(term, "the metadata quorum is electing a leader"),
                    }
                }
                NodeEvent::ClusterBootstrapped { cluster_id } => {
                    tracing::info!(cluster_id = %cluster_id, "cluster metadata bootstrapped")
                }
                NodeEvent::ApplyError(e) => tracing::error!("{e}"),
                NodeEvent::BadEntry { index, error } => {
                    tracing::error!("metadata entry {index} cannot be read: {error}")
                }
                NodeEvent::SnapshotInstalled { index } => {
                    tracing::info!(index, "installed a metadata snapshot from the leader")
                }
                NodeEvent::Compacted { index } => {
                    tracing::debug!(index, "metadata log compacted")
                }
            }
        }
        if applied > self.offered_offset.get() {
            self.offer_image(self.image());
            // FetchMetadata long polls waiting for news.
            self.applied_watchers.notify_all();
        }
    }

    /// Hands each new image to every shard, one after the other, newest first when several
    /// piled up; then releases whoever waits for it. Partitions that could not be created
    /// for want of space are tried again every [`OPEN_RETRY_INTERVAL`] until they open.
    async fn publish(self: Rc<Self>) {
        let mut waiting_for_space = false;
        loop {
            if waiting_for_space {
                let woken = futures_lite::future::or(
                    async {
                        self.publish_wake.notified().await;
                        true
                    },
                    async {
                        glommio::timer::sleep(OPEN_RETRY_INTERVAL).await;
                        false
                    },
                )
                .await;
                if !woken && self.pending_image.borrow().is_none() {
                    let image = self.image();
                    *self.pending_image.borrow_mut() = Some(image);
                }
            } else {
                self.publish_wake.notified().await;
            }
            let Some(image) = self.pending_image.borrow_mut().take() else {
                continue;
            };
            let offset = image.applied_offset();
            let failures: Vec<crate::node::PartitionFailure> = self
                .shard
                .call_all(|| Call::ApplyMetadata(image.clone()))
                .await
                .into_iter()
                .flat_map(|r| match r {
                    Ok(reply) => reply!(reply, MetadataApplied),
                    Err(e) => vec![crate::node::PartitionFailure {
                        message: e.to_string(),
                        no_space: false,
                    }],
                })
                .collect();
            let (no_space, failures): (Vec<_>, Vec<_>) =
                failures.into_iter().partition(|f| f.no_space);
            match (no_space.first(), waiting_for_space) {
                (Some(first), false) => tracing::error!(
                    partitions = no_space.len(),
                    "the disk is full: some partitions cannot be created; they are served once there is room ({})",
                    first.message
                ),
                (None, true) => {
                    tracing::info!("the partitions that were waiting for disk space are open")
                }
                _ => {}
            }
            waiting_for_space = !no_space.is_empty();
            if let Some(first) = failures.first() {
                tracing::error!(
                    failures = failures.len(),
                    "applying a metadata change failed on some partitions: {}",
                    first.message
                );
                self.publish_failures
                    .borrow_mut()
                    .extend(failures.into_iter().map(|f| f.message));
            }
            self.published_offset.set(offset);
            let released: Vec<oneshot::Sender<()>> = {
                let mut waiters = self.published_waiters.borrow_mut();
                let (done, rest): (Vec<_>, Vec<_>) =
                    waiters.drain(..).partition(|(o, _)| *o <= offset);
                *waiters = rest;
                done.into_iter().map(|(_, tx)| tx).collect()
            };
            for tx in released {
                tx.send(());
            }
        }
    }
}

pub use crate::controller::node::QuorumView;

/// The metadata quorum as its leader sees it, from any shard (see
/// [`ControlPlane::leader_quorum_view`]; `None`: no control plane, the node is stopping).
pub async fn leader_quorum_view(shard: &Rc<Shard>) -> Option<QuorumView> {
    match shard.call(CONTROLLER_SHARD, Call::QuorumView).await {
        Ok(reply) => reply!(reply, QuorumView),
        Err(_) => None,
    }
}

/// Runs on the controller's shard for [`leader_quorum_view`].
pub(crate) async fn quorum_view_here(shard: &Shard) -> Option<QuorumView> {
    match ControlPlane::get(shard) {
        Some(control) => Some(control.leader_quorum_view().await),
        None => None,
    }
}

/// Asks the active controller for a metadata change, from any shard (see
/// [`ControlPlane::call`]).
pub async fn call(shard: &Rc<Shard>, request: ControllerRequest) -> Reply {
    match shard
        .call(CONTROLLER_SHARD, Call::Controller(request))
        .await
    {
        Ok(reply) => reply!(reply, Controller),
        Err(_) => Err(ControllerError::NotController { leader: None }),
    }
}

/// Runs on the controller's shard for [`call`].
pub(crate) async fn call_here(shard: &Shard, request: ControllerRequest) -> Reply {
    match ControlPlane::get(shard) {
        Some(control) => control.call(request).await,
        None => Err(ControllerError::NotController { leader: None }),
    }
}

/// How long a stopping broker waits for the controller to fence it.
const CONTROLLED_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Controlled shutdown (KIP-631): before a broker of a cluster of several nodes stops, it
/// asks the controller to fence it, so its partitions are marked without a leader at once
/// (not after `broker.session.timeout.ms`) and its next process registers without waiting
/// for this one's session to run out. A lone voter skips it: nobody else serves anything
/// (a broker-only node beside a lone voter does not skip it).
/// Bounded: without an answer the broker stops anyway.
pub async fn controlled_shutdown(shard: &Rc<Shard>) {
    let Some(control) = ControlPlane::get(shard) else {
        return;
    };
    let cluster = &shard.config.cluster;
    if cluster.voters.len() < 2 && cluster.is_voter(shard.config.node_id) {
        return;
    }
    let Some(broker_epoch) = control.broker.epoch() else {
        return;
    };
    control.broker.stop();
    let request = ControllerRequest::Heartbeat(crate::controller::requests::Heartbeat {
        node: control.me,
        broker_epoch,
        applied_offset: control.published_offset(),
        want_fence: false,
        want_shut_down: true,
    });
    let answered = futures_lite::future::or(async { Some(control.call(request).await) }, async {
        glommio::timer::sleep(CONTROLLED_SHUTDOWN_TIMEOUT).await;
        None
    })
    .await;
    match answered {
        Some(Ok(_)) => tracing::info!("controlled shutdown: the controller fenced this broker"),
        Some(Err(e)) => tracing::warn!("controlled shutdown not acknowledged: {e}"),
        None => tracing::warn!(
            "controlled shutdown not acknowledged within {} s; stopping anyway",
            CONTROLLED_SHUTDOWN_TIMEOUT.as_secs()
        ),
    }
}

/// The current registration epoch of this broker, once registered (from any shard).
pub async fn broker_epoch(shard: &Rc<Shard>) -> Option<i64> {
    match shard.call(CONTROLLER_SHARD, Call::BrokerEpoch).await {
        Ok(reply) => reply!(reply, BrokerEpoch),
        Err(_) => None,
    }
}

/// Runs on the controller's shard for [`broker_epoch`].
pub(crate) fn broker_epoch_here(shard: &Shard) -> Option<i64> {
    ControlPlane::get(shard).and_then(|c| c.broker.epoch())
}
