//! Consuming as members of a classic consumer group (`--group`), over the Kafka protocol
//! only, so it works against any Kafka-compatible broker.
//!
//! Each consumer connection of the run is one member. A member is two kinds of glommio task
//! on its core's executor:
//!
//! - one **control task** ([`Member::run`]) that owns the connection to the group
//!   coordinator: FindCoordinator, JoinGroup/SyncGroup (the leader runs Kafka's range
//!   assignor, see `assignor.rs`), OffsetFetch for the start positions, Heartbeat every
//!   `--heartbeat-interval-ms`, OffsetCommit every `--auto-commit-interval-ms` and at the
//!   end, and LeaveGroup. It wakes at least every [`CONTROL_TICK`] to see whether the run
//!   is over.
//! - one **fetcher** per leader of its assigned partitions: the same [`Consumer`] fetch loop
//!   as without a group, on its own connection (one Fetch in flight per broker, as Kafka
//!   consumers do).
//!
//! Heartbeats therefore never wait behind a long poll, and the fetch loop stays as cheap as
//! without a group: per Fetch response it reads a `Cell<bool>` (stop) and writes the new
//! positions into a `RefCell` map the control task reads when it commits. Both tasks run on
//! the same thread, so there is no lock; no borrow is held across an await.
//!
//! Members join before the load starts (the core reports ready once each of its members
//! has a first assignment and its start positions) and keep heartbeating while the other
//! cores get ready; their fetchers start with the load. A
//! rebalance is Kafka's eager protocol: stop the fetchers, commit what they consumed, rejoin,
//! fetch the committed offsets of the new assignment (where there are none, `--from` says
//! earliest or latest, as `auto.offset.reset` does), start the fetchers again.
//!
//! Every error code is counted by its Kafka name. Two codes are the protocol's normal
//! signalling rather than failures and are counted apart as signals: MEMBER_ID_REQUIRED
//! (KIP-394: JoinGroup v4+ asks a new member to rejoin with the id it was given) and
//! REBALANCE_IN_PROGRESS (rejoin).
//!
//! In a group the run ends for every member at once: when the record target is reached,
//! the time is up, every acknowledged record is in (e2e), or no member consumed anything
//! for the drain timeout while no member was rebalancing.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::RangeInclusive;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::{Request, StrBytes};

use crate::admin::{list_offsets, topic_name, TopicLayout, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};
use crate::assignor::{
    decode_assignment, decode_subscription, encode_assignment, encode_subscription, range_assign,
    CONSUMER_PROTOCOL_TYPE, RANGE_ASSIGNOR,
};
use crate::cli::StartFrom;
use crate::conn::Conn;
use crate::consumer::Consumer;
use crate::run::{Shared, Workload};
use crate::schedule::Clock;
use crate::stats::{kafka_error_name, GroupStats, Stats};

/// The rebalance timeout members ask for in JoinGroup: how long the coordinator waits for
/// every member to rejoin. (The Java consumer sends `max.poll.interval.ms`, 300 s; members
/// here rejoin at once, so a minute is ample.)
pub const REBALANCE_TIMEOUT_MS: i32 = 60_000;
/// Longest sleep of a member's control task between looks at the run and its fetchers.
pub const CONTROL_TICK: Duration = Duration::from_millis(10);
/// Pause before retrying after a coordinator error (Kafka's `retry.backoff.ms`).
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// JoinGroup/SyncGroup rounds a member tries before it gives up joining.
const MAX_JOIN_ROUNDS: u32 = 100;

// API versions spoken to the coordinator. FindCoordinator stops below v4 (batched keys);
// JoinGroup starts at v1 (rebalance timeout) and stops below v8; OffsetCommit stops below
// v9 (KIP-848 member epochs); OffsetFetch below v8 (batched groups); LeaveGroup below v5.
const FIND_COORDINATOR_VERSIONS: RangeInclusive<i16> = 0..=3;
const JOIN_GROUP_VERSIONS: RangeInclusive<i16> = 1..=7;
const SYNC_GROUP_VERSIONS: RangeInclusive<i16> = 0..=5;
const HEARTBEAT_VERSIONS: RangeInclusive<i16> = 0..=4;
const OFFSET_COMMIT_VERSIONS: RangeInclusive<i16> = 2..=8;
const OFFSET_FETCH_VERSIONS: RangeInclusive<i16> = 1..=7;
const LEAVE_GROUP_VERSIONS: RangeInclusive<i16> = 0..=4;
/// JoinGroup v4 brought MEMBER_ID_REQUIRED; SyncGroup v5 the protocol type and name;
/// LeaveGroup v3 the batch of members.
const SYNC_GROUP_PROTOCOL_FIELDS_VERSION: i16 = 5;
const LEAVE_GROUP_MEMBERS_VERSION: i16 = 3;

const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const MEMBER_ID_REQUIRED: i16 = 79;

/// The group settings of the run.
#[derive(Clone, Debug)]
pub struct GroupSettings {
    pub group_id: String,
    pub session_timeout_ms: i32,
    pub heartbeat_interval_ms: i32,
    pub auto_commit_interval_ms: u64,
}

/// What a member and its fetchers share (same thread, no lock).
#[derive(Default, Debug)]
pub struct MemberLink {
    /// Set by the member: fetchers stop after their current Fetch.
    pub stop: Cell<bool>,
    /// Next offset to consume of each assigned partition, as the fetchers advance.
    pub positions: RefCell<BTreeMap<i32, i64>>,
    /// Fetchers still running.
    pub running: Cell<usize>,
}

/// What a core's members share with the core: readiness before the start, the start itself,
/// and the group facts of the whole run.
#[derive(Default, Debug)]
pub struct CoreGroup {
    /// The run's timing, once every core is ready.
    pub started: RefCell<Option<Rc<Workload>>>,
    /// Members that have their first assignment.
    pub assigned: Cell<usize>,
    /// Why a member could not join.
    pub failure: RefCell<Option<String>>,
    pub stats: RefCell<GroupStats>,
}

/// How a member reacts to an error code from the coordinator.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Reaction {
    Retry,
    FindCoordinator,
    Rejoin,
    /// Rejoin with an empty member id.
    RejoinAsNew,
    /// Nothing to do about it but count it.
    GiveUp,
}

fn reaction(code: i16) -> Reaction {
    match code {
        COORDINATOR_NOT_AVAILABLE | NOT_COORDINATOR => Reaction::FindCoordinator,
        COORDINATOR_LOAD_IN_PROGRESS => Reaction::Retry,
        REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION => Reaction::Rejoin,
        UNKNOWN_MEMBER_ID => Reaction::RejoinAsNew,
        _ => Reaction::GiveUp,
    }
}

/// Whether a group run is over; the same answer for every member, so they stop together.
/// The first caller to see it over records why, if that is an error.
pub fn run_over(w: &Workload, shared: &Shared, stats: &RefCell<Stats>, now: u64) -> bool {
    if shared.group_done.load(Ordering::Acquire) {
        return true;
    }
    let produced = shared.produced.load(Ordering::Relaxed);
    let consumed = shared.consumed.load(Ordering::Relaxed);
    let e2e = w.run_id.is_some();
    let mut missing = false;
    let mut stalled = false;
    let over = if now >= w.stop_ns.saturating_add(w.drain_ns) {
        missing = e2e && consumed < produced;
        true
    } else {
        match (e2e, w.consume_target) {
            (true, _) => {
                if shared.producers_done.load(Ordering::Acquire) < w.total_producers {
                    false
                } else {
                    let done_at = match shared.producers_done_ns.compare_exchange(
                        0,
                        now,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => now,
                        Err(at) => at,
                    };
                    if consumed >= produced {
                        true
                    } else {
                        missing = now >= done_at.saturating_add(w.drain_ns);
                        missing
                    }
                }
            }
            (false, Some(target)) => {
                let since = shared
                    .last_progress_ns
                    .load(Ordering::Relaxed)
                    .max(w.start_ns);
                stalled = shared.rebalancing.load(Ordering::Acquire) == 0
                    && now.saturating_sub(since) >= w.drain_ns;
                consumed >= target || stalled || now >= w.stop_ns
            }
            (false, None) => now >= w.stop_ns,
        }
    };
    if !over {
        return false;
    }
    if !shared.group_done.swap(true, Ordering::AcqRel) {
        if missing && !shared.missing_reported.swap(true, Ordering::AcqRel) {
            stats.borrow_mut().record_error(
                "ACKED_BUT_NOT_CONSUMED_BEFORE_DRAIN_TIMEOUT",
                produced.saturating_sub(consumed),
            );
        }
        if stalled && consumed < w.consume_target.unwrap_or(0) {
            stats
                .borrow_mut()
                .record_error("NO_NEW_RECORDS_WITHIN_DRAIN_TIMEOUT", 0);
        }
    }
    true
}

/// One group member: its coordinator connection, its membership, its fetchers.
pub struct Member {
    /// Global member index, for messages.
    index: usize,
    settings: GroupSettings,
    group_id: GroupId,
    layout: Rc<TopicLayout>,
    bootstrap: SocketAddr,
    /// The workload before the start (topic, client id, --from, timeouts).
    setup: Rc<Workload>,
    shared: Arc<Shared>,
    clock: Clock,
    stats: Rc<RefCell<Stats>>,
    core: Rc<CoreGroup>,
    coordinator: Option<Conn>,
    member_id: String,
    generation_id: i32,
    /// Partitions of the topic assigned in the current generation.
    assignment: Vec<i32>,
    /// Offsets the group holds for the assigned partitions, as far as this member knows.
    committed: BTreeMap<i32, i64>,
    /// Positions of the assigned partitions while no fetcher runs (between a stop and the
    /// next assignment).
    positions: BTreeMap<i32, i64>,
    /// Set from the moment the assignment's fetchers are prepared until they are stopped.
    link: Option<Rc<MemberLink>>,
    /// Fetchers with their start positions, waiting for the load to start.
    prepared: Vec<Consumer>,
    fetchers: Vec<glommio::Task<Consumer>>,
    /// Connections to partition leaders not in use, kept for the next assignment.
    idle_conns: BTreeMap<SocketAddr, Conn>,
    /// `Some(as_new)`: rejoin before anything else (with an empty member id if `as_new`).
    rejoin: Option<bool>,
    next_heartbeat_ns: u64,
    next_commit_ns: u64,
}

impl Member {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        layout: Rc<TopicLayout>,
        bootstrap: SocketAddr,
        setup: Rc<Workload>,
        shared: Arc<Shared>,
        clock: Clock,
        stats: Rc<RefCell<Stats>>,
        core: Rc<CoreGroup>,
    ) -> Member {
        let settings = setup
            .group
            .clone()
            .expect("members exist only in runs with --group");
        Member {
            index,
            group_id: GroupId(StrBytes::from_string(settings.group_id.clone())),
            settings,
            layout,
            bootstrap,
            setup,
            shared,
            clock,
            stats,
            core,
            coordinator: None,
            member_id: String::new(),
            generation_id: -1,
            assignment: Vec::new(),
            committed: BTreeMap::new(),
            positions: BTreeMap::new(),
            link: None,
            prepared: Vec::new(),
            fetchers: Vec::new(),
            idle_conns: BTreeMap::new(),
            rejoin: None,
            next_heartbeat_ns: 0,
            next_commit_ns: 0,
        }
    }

    /// Joins, reports the first assignment to the core, then consumes once the run starts,
    /// until it is over; then commits and leaves.
    pub async fn run(mut self) {
        match self.join().await {
            Ok(true) => {
                // Start positions before the load starts (an e2e run's first records must
                // not be skipped by a late --from latest); retried in the loop if it fails.
                if !self.assignment.is_empty() {
                    self.prepare_fetching().await;
                }
                self.core.assigned.set(self.core.assigned.get() + 1);
                self.core.stats.borrow_mut().members += 1;
            }
            Ok(false) => return,
            Err(e) => {
                *self.core.failure.borrow_mut() =
                    Some(format!("group member {}: {e:#}", self.index));
                return;
            }
        }
        let mut workload: Option<Rc<Workload>> = None;
        loop {
            if workload.is_none() {
                let started = self.core.started.borrow().clone();
                if let Some(w) = started {
                    workload = Some(w);
                    self.next_commit_ns = self.after(self.settings.auto_commit_interval_ms);
                }
            }
            if self.link.is_none() && self.rejoin.is_none() && !self.assignment.is_empty() {
                self.prepare_fetching().await;
            }
            let now = self.clock.now_ns();
            if let Some(w) = &workload {
                if run_over(w, &self.shared, &self.stats, now) {
                    break;
                }
                // Fetchers stop by themselves only when the run is over or their
                // connection failed: either way this member is done.
                let running = self.link.as_ref().map_or(0, |l| l.running.get());
                if !self.fetchers.is_empty() && running == 0 {
                    break;
                }
                if !self.prepared.is_empty() {
                    let w = w.clone();
                    self.spawn_fetchers(w);
                }
            }
            if let Some(as_new) = self.rejoin.take() {
                self.stop_fetching().await;
                self.commit().await;
                self.core.stats.borrow_mut().rebalances += 1;
                if as_new {
                    self.member_id.clear();
                }
                match self.join().await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        self.error(&format!("{e:#}"));
                        break;
                    }
                }
            }
            if now >= self.next_heartbeat_ns {
                self.heartbeat().await;
                continue;
            }
            if workload.is_some() && now >= self.next_commit_ns {
                self.next_commit_ns = self.after(self.settings.auto_commit_interval_ms);
                self.commit().await;
                continue;
            }
            let mut wake = self.next_heartbeat_ns;
            if workload.is_some() {
                wake = wake.min(self.next_commit_ns);
            }
            let nap = Duration::from_nanos(wake.saturating_sub(now)).min(CONTROL_TICK);
            glommio::timer::sleep(nap).await;
        }
        self.stop_fetching().await;
        self.commit().await;
        self.leave().await;
    }

    /// Run-clock time `ms` from now.
    fn after(&self, ms: u64) -> u64 {
        self.clock
            .now_ns()
            .saturating_add(ms.saturating_mul(1_000_000))
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.setup.request_timeout_ms.max(1) as u64)
    }

    fn error(&self, name: &str) {
        self.stats.borrow_mut().record_error(name, 0);
    }

    /// Counts a non-zero code from the coordinator: a signal or an error.
    fn count_code(&self, code: i16) {
        let name = kafka_error_name(code);
        if matches!(code, REBALANCE_IN_PROGRESS | MEMBER_ID_REQUIRED) {
            self.core.stats.borrow_mut().record_signal(&name);
        } else {
            self.error(&name);
        }
    }

    /// Counts `code` and acts on it; returns its reaction.
    /// A JoinGroup or SyncGroup answered `code`: an error on a fatal code; otherwise the
    /// member is ready to join again (as a new member after UNKNOWN_MEMBER_ID).
    fn join_step_failed(&mut self, step: &str, code: i16) -> anyhow::Result<()> {
        if self.react(code) == Reaction::GiveUp {
            bail!(
                "{step} {}: {}",
                self.settings.group_id,
                kafka_error_name(code)
            );
        }
        if code == UNKNOWN_MEMBER_ID {
            self.member_id.clear();
        }
        self.rejoin = None;
        Ok(())
    }

    fn react(&mut self, code: i16) -> Reaction {
        self.count_code(code);
        let r = reaction(code);
        match r {
            Reaction::FindCoordinator => self.coordinator = None,
            Reaction::Rejoin => self.rejoin = Some(self.rejoin.unwrap_or(false)),
            Reaction::RejoinAsNew => self.rejoin = Some(true),
            Reaction::Retry | Reaction::GiveUp => {}
        }
        r
    }

    /// FindCoordinator on a fresh bootstrap connection, then a connection to the coordinator
    /// (the same one if the bootstrap broker is the coordinator). Errors are counted.
    async fn find_coordinator(&mut self) -> Option<Conn> {
        let found = async {
            let mut conn = Conn::connect(self.bootstrap, &self.setup.client_id).await?;
            let version = conn.version(ApiKey::FindCoordinator, FIND_COORDINATOR_VERSIONS)?;
            let mut request = FindCoordinatorRequest::default();
            request.key = StrBytes::from_string(self.settings.group_id.clone());
            let deadline = Instant::now() + self.request_timeout();
            let response = conn
                .call_by(version, &request, deadline)
                .await?
                .context("no answer in time")?;
            if response.error_code != 0 {
                return Ok(Err(response.error_code));
            }
            let (host, port) = (response.host.to_string(), response.port);
            let addr = (
                host.as_str(),
                u16::try_from(port).context("coordinator port")?,
            )
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve coordinator {host}:{port}"))?
                .next()
                .with_context(|| format!("coordinator {host}:{port} resolves to nothing"))?;
            let coordinator = if addr == conn.peer() {
                conn
            } else {
                Conn::connect(addr, &self.setup.client_id).await?
            };
            for (key, versions) in [
                (ApiKey::JoinGroup, JOIN_GROUP_VERSIONS),
                (ApiKey::SyncGroup, SYNC_GROUP_VERSIONS),
                (ApiKey::Heartbeat, HEARTBEAT_VERSIONS),
                (ApiKey::OffsetCommit, OFFSET_COMMIT_VERSIONS),
                (ApiKey::OffsetFetch, OFFSET_FETCH_VERSIONS),
                (ApiKey::LeaveGroup, LEAVE_GROUP_VERSIONS),
            ] {
                coordinator.version(key, versions)?;
            }
            anyhow::Ok(Ok(coordinator))
        }
        .await;
        match found {
            Ok(Ok(conn)) => Some(conn),
            Ok(Err(code)) => {
                self.count_code(code);
                None
            }
            Err(e) => {
                self.error(&format!("FindCoordinator: {e:#}"));
                None
            }
        }
    }

    /// Sends a request to the coordinator (finding it first if need be) and waits for the
    /// answer up to `timeout`. A failed or silent connection is counted as an error and
    /// dropped (found again next time); `None` then.
    async fn call_coordinator<R: Request>(
        &mut self,
        key: ApiKey,
        versions: RangeInclusive<i16>,
        request: impl FnOnce(i16) -> R,
        timeout: Duration,
    ) -> Option<(i16, R::Response)> {
        let mut conn = match self.coordinator.take() {
            Some(conn) => conn,
            None => self.find_coordinator().await?,
        };
        let version = match conn.version(key, versions) {
            Ok(v) => v,
            Err(e) => {
                self.error(&format!("{e:#}"));
                return None;
            }
        };
        let request = request(version);
        let peer = conn.peer();
        match conn
            .call_by(version, &request, Instant::now() + timeout)
            .await
        {
            Ok(Some(response)) => {
                self.coordinator = Some(conn);
                Some((version, response))
            }
            Ok(None) => {
                self.error(&format!("NO_{key:?}_ANSWER_IN_TIME"));
                None
            }
            Err(e) => {
                self.error(&format!("{key:?} to coordinator {peer}: {e:#}"));
                None
            }
        }
    }

    /// JoinGroup and SyncGroup until this member has an assignment (true), the run ends
    /// while it joins (false), or the group refuses it (error).
    async fn join(&mut self) -> anyhow::Result<bool> {
        let started = self.clock.now_ns();
        self.shared.rebalancing.fetch_add(1, Ordering::AcqRel);
        let joined = self.join_rounds().await;
        self.shared.rebalancing.fetch_sub(1, Ordering::AcqRel);
        if let Ok(true) = joined {
            let now = self.clock.now_ns();
            // Time spent rebalancing is not time without records.
            self.shared
                .last_progress_ns
                .fetch_max(now, Ordering::Relaxed);
            let mut g = self.core.stats.borrow_mut();
            g.joins += 1;
            g.record_rebalance_time(now.saturating_sub(started));
            g.max_generation = g.max_generation.max(self.generation_id);
            drop(g);
            self.next_heartbeat_ns = self.after(self.settings.heartbeat_interval_ms as u64);
        }
        joined
    }

    async fn join_rounds(&mut self) -> anyhow::Result<bool> {
        let subscription = encode_subscription(&[self.setup.topic.as_str()])?;
        let join_timeout =
            Duration::from_millis(REBALANCE_TIMEOUT_MS as u64) + self.request_timeout();
        let mut backoff = false;
        for _ in 0..MAX_JOIN_ROUNDS {
            if backoff {
                glommio::timer::sleep(RETRY_BACKOFF).await;
            }
            backoff = true;
            if self.shared.group_done.load(Ordering::Acquire) {
                return Ok(false);
            }
            let (group_id, member_id, settings) = (
                self.group_id.clone(),
                self.member_id.clone(),
                self.settings.clone(),
            );
            let protocol_metadata = subscription.clone();
            let Some((_, joined)) = self
                .call_coordinator(
                    ApiKey::JoinGroup,
                    JOIN_GROUP_VERSIONS,
                    move |_| {
                        let mut protocol = JoinGroupRequestProtocol::default();
                        protocol.name = StrBytes::from_static_str(RANGE_ASSIGNOR);
                        protocol.metadata = protocol_metadata;
                        let mut r = JoinGroupRequest::default();
                        r.group_id = group_id;
                        r.session_timeout_ms = settings.session_timeout_ms;
                        r.rebalance_timeout_ms = REBALANCE_TIMEOUT_MS;
                        r.member_id = StrBytes::from_string(member_id);
                        r.protocol_type = StrBytes::from_static_str(CONSUMER_PROTOCOL_TYPE);
                        r.protocols = vec![protocol];
                        r
                    },
                    join_timeout,
                )
                .await
            else {
                continue;
            };
            match joined.error_code {
                0 => {}
                MEMBER_ID_REQUIRED => {
                    // KIP-394: rejoin at once with the id the coordinator handed out.
                    self.count_code(MEMBER_ID_REQUIRED);
                    self.member_id = joined.member_id.to_string();
                    backoff = false;
                    continue;
                }
                code => {
                    self.join_step_failed("JoinGroup", code)?;
                    continue;
                }
            }
            self.member_id = joined.member_id.to_string();
            self.generation_id = joined.generation_id;
            let assignments = if joined.leader == joined.member_id {
                self.assign(&joined.members)?
            } else {
                Vec::new()
            };
            let (group_id, member_id, generation_id) = (
                self.group_id.clone(),
                self.member_id.clone(),
                self.generation_id,
            );
            let protocol_name = joined.protocol_name.clone();
            let Some((_, synced)) = self
                .call_coordinator(
                    ApiKey::SyncGroup,
                    SYNC_GROUP_VERSIONS,
                    move |version| {
                        let mut r = SyncGroupRequest::default();
                        r.group_id = group_id;
                        r.generation_id = generation_id;
                        r.member_id = StrBytes::from_string(member_id);
                        if version >= SYNC_GROUP_PROTOCOL_FIELDS_VERSION {
                            r.protocol_type =
                                Some(StrBytes::from_static_str(CONSUMER_PROTOCOL_TYPE));
                            r.protocol_name = protocol_name;
                        }
                        r.assignments = assignments;
                        r
                    },
                    self.request_timeout(),
                )
                .await
            else {
                continue;
            };
            if synced.error_code != 0 {
                let code = synced.error_code;
                self.join_step_failed("SyncGroup", code)?;
                backoff = code != REBALANCE_IN_PROGRESS;
                continue;
            }
            let mine = match decode_assignment(synced.assignment) {
                Ok(a) => a.get(&self.setup.topic).cloned().unwrap_or_default(),
                Err(e) => {
                    self.error(&format!("UNDECODABLE_ASSIGNMENT ({e:#})"));
                    Vec::new()
                }
            };
            self.assignment = mine
                .into_iter()
                .filter(|p| self.layout.leaders.contains_key(p))
                .collect();
            self.committed.clear();
            self.positions.clear();
            self.rejoin = None;
            return Ok(true);
        }
        bail!(
            "could not join group {} in {MAX_JOIN_ROUNDS} rounds",
            self.settings.group_id
        )
    }

    /// The leader's work: the range assignment of every member's subscription, encoded
    /// for SyncGroup.
    fn assign(
        &self,
        members: &[kafka_protocol::messages::join_group_response::JoinGroupResponseMember],
    ) -> anyhow::Result<Vec<SyncGroupRequestAssignment>> {
        let subscriptions: Vec<(String, Vec<String>)> = members
            .iter()
            .map(|m| {
                let topics = decode_subscription(m.metadata.clone()).unwrap_or_else(|e| {
                    self.error(&format!("UNDECODABLE_SUBSCRIPTION ({e:#})"));
                    Vec::new()
                });
                (m.member_id.to_string(), topics)
            })
            .collect();
        // The leader knows the partition count of its own topic only; members subscribed
        // to other topics get nothing of those.
        let counts = BTreeMap::from([(
            self.setup.topic.clone(),
            i32::try_from(self.layout.leaders.len()).context("partition count")?,
        )]);
        range_assign(&subscriptions, &counts)
            .into_iter()
            .map(|(member_id, assignment)| {
                let mut a = SyncGroupRequestAssignment::default();
                a.member_id = StrBytes::from_string(member_id);
                a.assignment = encode_assignment(&assignment)?;
                Ok(a)
            })
            .collect()
    }

    async fn heartbeat(&mut self) {
        self.next_heartbeat_ns = self.after(self.settings.heartbeat_interval_ms as u64);
        let (group_id, member_id, generation_id) = (
            self.group_id.clone(),
            self.member_id.clone(),
            self.generation_id,
        );
        let answered = self
            .call_coordinator(
                ApiKey::Heartbeat,
                HEARTBEAT_VERSIONS,
                move |_| {
                    let mut r = HeartbeatRequest::default();
                    r.group_id = group_id;
                    r.generation_id = generation_id;
                    r.member_id = StrBytes::from_string(member_id);
                    r
                },
                self.request_timeout(),
            )
            .await;
        match answered {
            Some((_, response)) => {
                self.core.stats.borrow_mut().heartbeats += 1;
                if response.error_code != 0
                    && self.react(response.error_code) == Reaction::FindCoordinator
                {
                    self.next_heartbeat_ns = self.after(RETRY_BACKOFF.as_millis() as u64);
                }
            }
            None => self.next_heartbeat_ns = self.after(RETRY_BACKOFF.as_millis() as u64),
        }
    }

    /// The positions the fetchers reached (or reached before they were stopped).
    fn current_positions(&self) -> BTreeMap<i32, i64> {
        match &self.link {
            Some(link) => link.positions.borrow().clone(),
            None => self.positions.clone(),
        }
    }

    /// OffsetCommit of every position that differs from what the group holds.
    async fn commit(&mut self) {
        if self.generation_id < 0 || self.member_id.is_empty() {
            return;
        }
        let changed: Vec<(i32, i64)> = self
            .current_positions()
            .into_iter()
            .filter(|(p, offset)| self.committed.get(p) != Some(offset))
            .collect();
        if changed.is_empty() {
            return;
        }
        let (group_id, member_id, generation_id, topic) = (
            self.group_id.clone(),
            self.member_id.clone(),
            self.generation_id,
            topic_name(&self.setup.topic),
        );
        let partitions = changed.clone();
        let sent_ns = self.clock.now_ns();
        let answered = self
            .call_coordinator(
                ApiKey::OffsetCommit,
                OFFSET_COMMIT_VERSIONS,
                move |_| {
                    let mut t = OffsetCommitRequestTopic::default();
                    t.name = topic;
                    t.partitions = partitions
                        .iter()
                        .map(|(p, offset)| {
                            let mut cp = OffsetCommitRequestPartition::default();
                            cp.partition_index = *p;
                            cp.committed_offset = *offset;
                            cp
                        })
                        .collect();
                    let mut r = OffsetCommitRequest::default();
                    r.group_id = group_id;
                    r.generation_id_or_member_epoch = generation_id;
                    r.member_id = StrBytes::from_string(member_id);
                    r.topics = vec![t];
                    r
                },
                self.request_timeout(),
            )
            .await;
        let latency_ns = self.clock.now_ns().saturating_sub(sent_ns);
        let Some((_, response)) = answered else {
            self.core.stats.borrow_mut().failed_commits += 1;
            return;
        };
        let mut codes: BTreeMap<i16, u64> = BTreeMap::new();
        let mut stored: BTreeMap<i32, i64> = BTreeMap::new();
        let offsets: BTreeMap<i32, i64> = changed.into_iter().collect();
        for t in &response.topics {
            for p in &t.partitions {
                if p.error_code != 0 {
                    *codes.entry(p.error_code).or_default() += 1;
                } else if let Some(offset) = offsets.get(&p.partition_index) {
                    stored.insert(p.partition_index, *offset);
                }
            }
        }
        self.committed.extend(stored);
        let mut g = self.core.stats.borrow_mut();
        if codes.is_empty() {
            g.commits += 1;
            g.commit_latency.saturating_record(latency_ns.max(1));
            return;
        }
        g.failed_commits += 1;
        drop(g);
        // One count per code per request, not per partition.
        for code in codes.into_keys() {
            self.react(code);
        }
    }

    /// Committed offsets of the assignment (OffsetFetch), `--from` where there are none
    /// (ListOffsets on each leader), and one fetcher per leader, ready to start. Something
    /// that failed is counted; the member tries again on its next round (after a pause).
    async fn prepare_fetching(&mut self) {
        if !self.try_prepare_fetching().await {
            glommio::timer::sleep(RETRY_BACKOFF).await;
        }
    }

    async fn try_prepare_fetching(&mut self) -> bool {
        let w = self.setup.clone();
        let (group_id, topic, partitions) = (
            self.group_id.clone(),
            topic_name(&self.setup.topic),
            self.assignment.clone(),
        );
        let Some((version, fetched)) = self
            .call_coordinator(
                ApiKey::OffsetFetch,
                OFFSET_FETCH_VERSIONS,
                move |_| {
                    let mut t = OffsetFetchRequestTopic::default();
                    t.name = topic;
                    t.partition_indexes = partitions;
                    let mut r = OffsetFetchRequest::default();
                    r.group_id = group_id;
                    r.topics = Some(vec![t]);
                    r
                },
                self.request_timeout(),
            )
            .await
        else {
            return false;
        };
        // The top-level error code exists from v2.
        if version >= 2 && fetched.error_code != 0 {
            self.react(fetched.error_code);
            return false;
        }
        let mut committed = BTreeMap::new();
        for t in &fetched.topics {
            for p in &t.partitions {
                if p.error_code != 0 {
                    self.react(p.error_code);
                    return false;
                }
                if p.committed_offset >= 0 && self.assignment.contains(&p.partition_index) {
                    committed.insert(p.partition_index, p.committed_offset);
                }
            }
        }
        let mut by_leader: BTreeMap<SocketAddr, Vec<i32>> = BTreeMap::new();
        for p in &self.assignment {
            if let Some(leader) = self.layout.leaders.get(p) {
                by_leader.entry(*leader).or_default().push(*p);
            }
        }
        let timestamp = match self.setup.from {
            StartFrom::Earliest => EARLIEST_TIMESTAMP,
            StartFrom::Latest => LATEST_TIMESTAMP,
        };
        let link = Rc::new(MemberLink::default());
        let mut consumers = Vec::new();
        for (leader, partitions) in by_leader {
            let conn = match self.idle_conns.remove(&leader) {
                Some(conn) => conn,
                None => match Conn::connect(leader, &self.setup.client_id).await {
                    Ok(conn) => conn,
                    Err(e) => {
                        self.error(&format!("{e:#}"));
                        self.keep_conns(consumers);
                        return false;
                    }
                },
            };
            let mut conn = conn;
            let reset: Vec<i32> = partitions
                .iter()
                .copied()
                .filter(|p| !committed.contains_key(p))
                .collect();
            let mut offsets: BTreeMap<i32, i64> = partitions
                .iter()
                .filter_map(|p| committed.get(p).map(|o| (*p, *o)))
                .collect();
            if !reset.is_empty() {
                let isolation = self.setup.isolation_level.wire();
                match list_offsets(&mut conn, &self.setup.topic, &reset, timestamp, isolation).await
                {
                    Ok(found) => offsets.extend(found),
                    Err(e) => {
                        self.error(&format!("{e:#}"));
                        self.keep_conns(consumers);
                        return false;
                    }
                }
            }
            link.positions
                .borrow_mut()
                .extend(offsets.iter().map(|(p, o)| (*p, *o)));
            match Consumer::for_member(
                conn,
                offsets,
                link.clone(),
                w.clone(),
                self.shared.clone(),
                self.clock,
                self.stats.clone(),
            ) {
                Ok(c) => consumers.push(c),
                Err(e) => {
                    self.error(&format!("{e:#}"));
                    self.keep_conns(consumers);
                    return false;
                }
            }
        }
        self.committed = committed;
        self.prepared = consumers;
        self.link = Some(link);
        true
    }

    /// Starts the prepared fetchers with the run's timing.
    fn spawn_fetchers(&mut self, w: Rc<Workload>) {
        let Some(link) = self.link.clone() else {
            return;
        };
        link.running.set(link.running.get() + self.prepared.len());
        for c in std::mem::take(&mut self.prepared) {
            let (link, w) = (link.clone(), w.clone());
            self.fetchers.push(glommio::spawn_local(async move {
                let c = c.run_for_member(w).await;
                link.running.set(link.running.get() - 1);
                c
            }));
        }
    }

    fn keep_conns(&mut self, consumers: Vec<Consumer>) {
        for c in consumers {
            if let Some(conn) = c.into_conn() {
                self.idle_conns.insert(conn.peer(), conn);
            }
        }
    }

    /// Stops the fetchers after their current Fetch and keeps their positions and
    /// connections.
    async fn stop_fetching(&mut self) {
        let Some(link) = self.link.take() else {
            return;
        };
        link.stop.set(true);
        let mut stopped = std::mem::take(&mut self.prepared);
        for task in std::mem::take(&mut self.fetchers) {
            stopped.push(task.await);
        }
        self.keep_conns(stopped);
        self.positions = std::mem::take(&mut *link.positions.borrow_mut());
    }

    async fn leave(&mut self) {
        if self.member_id.is_empty() || self.coordinator.is_none() {
            return;
        }
        let (group_id, member_id) = (self.group_id.clone(), self.member_id.clone());
        let answered = self
            .call_coordinator(
                ApiKey::LeaveGroup,
                LEAVE_GROUP_VERSIONS,
                move |version| {
                    let mut r = LeaveGroupRequest::default();
                    r.group_id = group_id;
                    if version >= LEAVE_GROUP_MEMBERS_VERSION {
                        let mut m = MemberIdentity::default();
                        m.member_id = StrBytes::from_string(member_id);
                        r.members = vec![m];
                    } else {
                        r.member_id = StrBytes::from_string(member_id);
                    }
                    r
                },
                self.request_timeout(),
            )
            .await;
        if let Some((_, response)) = answered {
            let code = response
                .members
                .iter()
                .map(|m| m.error_code)
                .find(|c| *c != 0)
                .unwrap_or(response.error_code);
            if code != 0 {
                self.count_code(code);
            }
        }
        self.member_id.clear();
        self.generation_id = -1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinator_errors_lead_to_kafkas_reactions() {
        assert_eq!(reaction(NOT_COORDINATOR), Reaction::FindCoordinator);
        assert_eq!(
            reaction(COORDINATOR_NOT_AVAILABLE),
            Reaction::FindCoordinator
        );
        assert_eq!(reaction(REBALANCE_IN_PROGRESS), Reaction::Rejoin);
        assert_eq!(reaction(ILLEGAL_GENERATION), Reaction::Rejoin);
        assert_eq!(reaction(UNKNOWN_MEMBER_ID), Reaction::RejoinAsNew);
        assert_eq!(reaction(COORDINATOR_LOAD_IN_PROGRESS), Reaction::Retry);
        assert_eq!(reaction(30), Reaction::GiveUp); // GROUP_AUTHORIZATION_FAILED
        assert_eq!(kafka_error_name(MEMBER_ID_REQUIRED), "MEMBER_ID_REQUIRED");
        assert_eq!(
            kafka_error_name(REBALANCE_IN_PROGRESS),
            "REBALANCE_IN_PROGRESS"
        );
    }
}
