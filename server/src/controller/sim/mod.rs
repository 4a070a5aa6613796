//! A seeded, deterministic, single-threaded simulator of the metadata quorum and the
//! controller: 3 or 5 voters (each also a broker, KRaft's combined mode) and up to two
//! brokers that are not voters, all on simulated time, a simulated network and simulated
//! disks. From one seed it plays:
//!
//! - a network that loses, duplicates, delays and so reorders Raft messages, and splits the
//!   voters into groups that cannot talk for a while;
//! - crashes at random moments, including in the middle of the writes of one Raft Ready,
//!   and restarts that recover from what is on the disk. Each node's metadata directory is
//!   on the storage engine's simulated disk, written by the broker's own `StorageDisk`
//!   ([`metadata_dir`]): at a crash its unsynced writes (those in flight included) are lost,
//!   applied or torn in 512-byte sectors, in any order; `fdatasync` fails now and then
//!   (the node stops and restarts from what is on the disk, as the broker does) and writes
//!   find the disk full (they are made again, as the broker does);
//! - an admin client creating and deleting topics, adding partitions, altering configs and
//!   asking for producer-id blocks at whichever node it believes is the controller (frames
//!   encoded and decoded as on the wire), retrying where NOT_CONTROLLER points;
//! - brokers registering and heartbeating, falling silent (and being fenced), coming back
//!   as the same process or a restarted one; non-voter brokers following the log with
//!   FetchMetadata;
//! - partitions with up to three replicas whose leaders send AlterPartition from what
//!   their broker's image says (so often with stale epochs), shrinking and growing the ISR,
//!   sometimes with a bad ISR or member epoch; unclean election turned on and off per
//!   topic, preferred leaders moved back every few seconds;
//! - malformed, oversized and misaddressed frames thrown at the voters.
//!
//! After every event it checks: at most one leader per term; every entry any node applies
//! equals the one first applied at that index anywhere (a committed entry is never lost or
//! changed, and all nodes apply the same sequence); each node's image equals a replay of the
//! committed log from nothing; the controller's images keep their invariants (no partition
//! led by a fenced broker); acknowledged changes are in the committed log and producer-id
//! blocks never overlap; from one committed partition state to the next, epochs only grow,
//! the leader is in the ISR or there is none, a new leader was in the ISR before (unless its
//! topic allows unclean election, and then it is the whole ISR), a member joins the ISR only
//! under the same leader and epoch, and an acknowledged AlterPartition is what was asked. Then it heals everything and checks that the cluster converges:
//! one active controller, every node and follower at the same image, a last change
//! acknowledged, no request left unanswered, live brokers unfenced and a silent one fenced.

mod checks;
mod clients;
mod leaders;
pub mod metadata_dir;
mod network;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt;
use std::hash::{Hash, Hasher};

use bytes::{Bytes, BytesMut};
use raft::StateRole;
use wharf_protocol::controller::{
    self as wire, decode_frame, encode_frame, split_frame, MAX_FRAME_BYTES,
};

use crate::controller::follower::MetadataFollower;
use crate::controller::image::ClusterImage;
use crate::controller::log_store::{LogStore, LOG_FILE, SNAPSHOT_FILE};
use crate::controller::node::{ControllerNode, MetadataFetch, NodeConfig, NodeEvent};
use crate::controller::records::{decode_records, encode_records, MetadataRecord};
use crate::controller::requests::*;
use crate::controller::rng::Rng;
use crate::controller::rpc::{
    describe_quorum_reply_to_frame, fetch_reply_from_frame, fetch_reply_to_frame,
    fetch_request_to_frame, incoming_from_frame, reply_from_frame, reply_to_frame,
    request_to_frame, Incoming,
};
use crate::metadata::cluster::Listener;
use crate::metadata::controller::{AlterOp, NewTopic, TopicRef};
use crate::metadata::NodeId;

use checks::{digest, Oracle};
use metadata_dir::{Outcome, SimMetadataDir};

/// The simulator's name for this target (`scripts/simulate.sh --target controller`).
pub const TARGET: &str = "controller";
/// The environment variable that replays one seed.
pub const SEED_ENV: &str = "WHARF_SIM_SEED";
/// How many seeds to run (from `WHARF_SIM_SEED_START`, default 0).
pub const SEEDS_ENV: &str = "WHARF_SIM_SEEDS";
pub const SEED_START_ENV: &str = "WHARF_SIM_SEED_START";
/// Set to print every event of a run.
pub const TRACE_ENV: &str = "WHARF_SIM_TRACE";

/// One run's shape, derived from its seed.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub voters: usize,
    pub broker_only: usize,
    /// Simulated milliseconds of faults, then of calm.
    pub fault_ms: i64,
    pub heal_ms: i64,
    pub session_timeout_ms: i64,
    pub heartbeat_interval_ms: i64,
    /// Per mille of Raft messages lost / duplicated during the faults.
    pub loss_per_mille: u64,
    pub duplicate_per_mille: u64,
    /// Mean milliseconds between crashes during the faults.
    pub crash_every_ms: i64,
    pub snapshot_every_entries: u64,
    pub keep_entries: u64,
    /// The controllers' `default.replication.factor` (1 to 3).
    pub default_replication_factor: i16,
    pub leader_imbalance_check_interval_ms: i64,
    pub unclean_leader_election_check_interval_ms: i64,
    /// Per million `fdatasync`s that fail with EIO, and writes that find the disk full,
    /// during the faults.
    pub fsync_eio_per_million: u32,
    pub enospc_per_million: u32,
    pub trace: bool,
}

impl SimOptions {
    pub fn for_seed(seed: u64) -> SimOptions {
        let mut r = Rng::new(seed ^ 0x005E_ED0F_C017_2011);
        let mut opts = SimOptions {
            seed,
            voters: if r.chance(1, 2) { 3 } else { 5 },
            broker_only: r.range(0, 3) as usize,
            fault_ms: 15_000 + r.range(0, 15_000) as i64,
            heal_ms: 14_000,
            session_timeout_ms: 3_000,
            heartbeat_interval_ms: 1_000,
            loss_per_mille: r.range(0, 150),
            duplicate_per_mille: r.range(0, 50),
            crash_every_ms: 1_000 + r.range(0, 4_000) as i64,
            snapshot_every_entries: r.range(4, 40),
            keep_entries: r.range(0, 8),
            default_replication_factor: r.range(1, 4) as i16,
            leader_imbalance_check_interval_ms: r.range(1_000, 6_000) as i64,
            unclean_leader_election_check_interval_ms: r.range(1_000, 6_000) as i64,
            fsync_eio_per_million: 0,
            enospc_per_million: 0,
            trace: false,
        };
        // Drawn last, so the shape above is what it was before disk faults existed.
        opts.fsync_eio_per_million = r.range(0, 3_000) as u32;
        opts.enospc_per_million = r.range(0, 20_000) as u32;
        opts
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    pub events: u64,
    pub sim_ms: i64,
    pub max_term: u64,
    pub committed_entries: u64,
    pub crashes: u64,
    pub crashes_mid_write: u64,
    /// Crashes that lost or tore some of the metadata log's unsynced writes.
    pub torn_crashes: u64,
    /// Failed `fdatasync`s (each stopped its node), and writes made again after ENOSPC.
    pub sync_failures: u64,
    pub retried_writes: u64,
    pub snapshots_installed: u64,
    pub compactions: u64,
    pub raft_messages: u64,
    pub raft_messages_lost: u64,
    pub partitions: u64,
    pub garbage_refused: u64,
    pub requests: u64,
    pub requests_ok: u64,
    pub not_controller: u64,
    pub disconnected: u64,
    pub brokers_fenced: u64,
    /// AlterPartition requests answered, and partitions whose ISR they changed.
    pub alter_partition_answered: u64,
    pub isr_changes_acknowledged: u64,
    /// Committed leader changes to a broker; of those, out of the ISR (unclean).
    pub elections: u64,
    pub unclean_elections: u64,
    /// Simulated milliseconds during which some node was the active controller.
    pub controller_ms: i64,
    /// Same seed, same fingerprint: the run is deterministic.
    pub fingerprint: u64,
}

/// A broken invariant, with the seed that replays it.
#[derive(Clone, Debug)]
pub struct Violation {
    pub seed: u64,
    pub at_ms: i64,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "controller simulation seed {} broke an invariant at {} ms: {}\n  replay: {}\n      or: {SEED_ENV}={} {TRACE_ENV}=1 cargo test --release -p wharf-server --test controller_sim -- --nocapture",
            self.seed,
            self.at_ms,
            self.message,
            wharf_engine::sim::runner::replay_command(TARGET, self.seed),
            self.seed
        )
    }
}

/// Runs the simulation for `opts`.
/// A panic anywhere (ours or raft-rs's) is a violation too, reported with its seed.
pub fn run(opts: &SimOptions) -> Result<SimStats, Violation> {
    let mut world = World::new(opts.clone());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.run()));
    let result = match outcome {
        Ok(result) => result,
        Err(panic) => Err(format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        )),
    };
    result.map_err(|message| Violation {
        seed: opts.seed,
        at_ms: world.now,
        message,
    })?;
    world.stats.sim_ms = world.now;
    Ok(world.stats)
}

// ---------------------------------------------------------------------------------------

type Idx = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    Admin,
    Broker(usize),
    /// A broker as the leader of its partitions (AlterPartition).
    Leader(usize),
}

#[derive(Debug)]
enum Event {
    Tick(Idx),
    Raft {
        to: Idx,
        from: Idx,
        bytes: Bytes,
    },
    Garbage {
        to: Idx,
        bytes: Bytes,
        must_refuse: bool,
    },
    Request {
        to: Idx,
        caller: Caller,
        token: Token,
        bytes: Bytes,
    },
    Reply {
        caller: Caller,
        token: Token,
        bytes: Option<Bytes>,
    },
    Crash,
    Restart(Idx),
    Partition,
    HealPartition,
    Admin,
    Broker(usize),
    Follow(usize),
    Lead(usize),
    Calm,
    FinalChange,
    Resend {
        caller: Caller,
        to: Idx,
        request: ControllerRequest,
        attempts: u32,
    },
    Mark,
}

struct Scheduled {
    at: i64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct SimNode {
    id: NodeId,
    disk: SimMetadataDir,
    live: Option<ControllerNode>,
    /// Requests delivered and not answered: token → who asked.
    inflight: BTreeMap<Token, (Caller, i64)>,
    /// The next index this node must apply.
    next_apply: u64,
    /// The applied offset whose image was last checked.
    checked_offset: u64,
}

#[derive(Clone, Debug)]
enum Sent {
    Request(ControllerRequest),
    Fetch,
}

struct Outstanding {
    sent: Sent,
    to: Idx,
    at_ms: i64,
    attempts: u32,
}

struct SimBroker {
    id: NodeId,
    /// The voter this broker runs in (combined mode), if any.
    voter: Option<Idx>,
    incarnation: u128,
    epoch: Option<i64>,
    up: bool,
    down_until: i64,
    /// Stays silent through the calm phase: must end fenced.
    silent_in_calm: bool,
    target: Option<Idx>,
    follower: Option<MetadataFollower>,
}

struct World {
    opts: SimOptions,
    rng: Rng,
    now: i64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<SimNode>,
    voters: Vec<NodeId>,
    brokers: Vec<SimBroker>,
    admin_target: Option<Idx>,
    outstanding: BTreeMap<(u8, Token), Outstanding>,
    next_token: Token,
    /// Voters in the same group talk; `None`: no partition.
    groups: Option<Vec<u8>>,
    calm: bool,
    final_change_acknowledged: bool,
    final_change_sent: bool,
    /// The committed log's length two seconds before the end.
    marked_committed: u64,
    topic_counter: u64,
    oracle: Oracle,
    stats: SimStats,
}

fn caller_key(c: Caller) -> u8 {
    match c {
        Caller::Admin => 0,
        Caller::Broker(b) => 1 + b as u8,
        Caller::Leader(b) => 128 + b as u8,
    }
}

const TOPIC_NAMES: [&str; 8] = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"];

impl World {
    fn new(opts: SimOptions) -> World {
        let mut rng = Rng::new(opts.seed);
        let voters: Vec<NodeId> = (1..=opts.voters as i32).map(NodeId).collect();
        let faults = wharf_engine::sim::FaultConfig {
            fsync_eio_per_million: opts.fsync_eio_per_million,
            enospc_per_million: opts.enospc_per_million,
            ..Default::default()
        };
        let disk_seeds: Vec<u64> = voters.iter().map(|_| rng.next_u64()).collect();
        let mut world = World {
            nodes: voters
                .iter()
                .zip(disk_seeds)
                .map(|(id, disk_seed)| SimNode {
                    id: *id,
                    disk: SimMetadataDir::new(disk_seed, faults.clone()),
                    live: None,
                    inflight: BTreeMap::new(),
                    next_apply: 1,
                    checked_offset: 0,
                })
                .collect(),
            voters,
            brokers: Vec::new(),
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            admin_target: None,
            outstanding: BTreeMap::new(),
            next_token: 1,
            groups: None,
            calm: false,
            final_change_acknowledged: false,
            final_change_sent: false,
            marked_committed: 0,
            topic_counter: 0,
            oracle: Oracle {
                image: ClusterImage::empty(),
                digests: vec![digest(&ClusterImage::empty())],
                ..Oracle::default()
            },
            stats: SimStats::default(),
            opts,
        };
        for i in 0..world.nodes.len() {
            world.brokers.push(SimBroker {
                id: world.nodes[i].id,
                voter: Some(i),
                incarnation: 0,
                epoch: None,
                up: false,
                down_until: 0,
                silent_in_calm: false,
                target: None,
                follower: None,
            });
        }
        for b in 0..world.opts.broker_only {
            world.brokers.push(SimBroker {
                id: NodeId(100 + b as i32),
                voter: None,
                incarnation: world.rng.next_u128(),
                epoch: None,
                up: true,
                down_until: 0,
                silent_in_calm: b == 0,
                target: None,
                follower: Some(MetadataFollower::default()),
            });
        }
        world
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.opts.trace {
            println!("[{:>6} ms] {}", self.now, what());
        }
    }

    fn schedule(&mut self, after_ms: i64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + after_ms.max(0),
            seq: self.seq,
            event,
        }));
    }

    fn node_config(&self, i: Idx) -> NodeConfig {
        let mut c = NodeConfig::new(self.nodes[i].id, self.voters.clone());
        c.controller.session_timeout_ms = self.opts.session_timeout_ms;
        c.controller.num_partitions = 2;
        c.controller.max_replication_factor = 3;
        c.controller.default_replication_factor = self.opts.default_replication_factor;
        c.controller.leader_imbalance_check_interval_ms =
            self.opts.leader_imbalance_check_interval_ms;
        c.controller.unclean_leader_election_check_interval_ms =
            self.opts.unclean_leader_election_check_interval_ms;
        c.snapshot_every_entries = self.opts.snapshot_every_entries;
        c.keep_entries = self.opts.keep_entries;
        c.report_applied = true;
        c
    }

    fn voter_ids(&self) -> Vec<u64> {
        self.voters.iter().map(|n| n.0 as u64).collect()
    }

    fn run(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            self.start_node(i)?;
            let phase = self.rng.range(0, 100) as i64;
            self.schedule(phase, Event::Tick(i));
        }
        for b in 0..self.brokers.len() {
            let phase = self.rng.range(0, self.opts.heartbeat_interval_ms as u64) as i64;
            self.schedule(phase, Event::Broker(b));
            if self.brokers[b].follower.is_some() {
                self.schedule(phase, Event::Follow(b));
            }
            self.schedule(phase + 150, Event::Lead(b));
        }
        self.schedule(200, Event::Admin);
        let crash_in = self.rng.range(0, 2 * self.opts.crash_every_ms as u64) as i64;
        self.schedule(crash_in, Event::Crash);
        let partition_in = self.rng.range(500, 4_000) as i64;
        self.schedule(partition_in, Event::Partition);
        self.schedule(self.opts.fault_ms, Event::Calm);
        self.schedule(
            self.opts.fault_ms + self.opts.heal_ms / 3,
            Event::FinalChange,
        );
        let end = self.opts.fault_ms + self.opts.heal_ms;
        self.schedule(end - 2_000, Event::Mark);

        while let Some(Reverse(next)) = self.queue.pop() {
            if next.at > end {
                break;
            }
            if self.nodes.iter().any(|n| {
                n.live
                    .as_ref()
                    .is_some_and(ControllerNode::is_active_controller)
            }) {
                self.stats.controller_ms += next.at - self.now;
            }
            self.now = next.at;
            self.stats.events += 1;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (
                self.stats.fingerprint,
                next.at,
                next.seq,
                self.stats.committed_entries,
            )
                .hash(&mut h);
            self.stats.fingerprint = h.finish();
            self.handle(next.event)?;
            self.check_leaders()?;
        }
        self.now = end;
        self.stats.retried_writes = self.nodes.iter().map(|n| n.disk.retried_writes()).sum();
        self.final_checks()
    }

    // -----------------------------------------------------------------------------------
    // Nodes
    // -----------------------------------------------------------------------------------

    fn start_node(&mut self, i: Idx) -> Result<(), String> {
        let voters = self.voter_ids();
        let now = self.now;
        let disk = &mut self.nodes[i].disk;
        disk.set_now(now);
        let log = disk.read(LOG_FILE)?;
        let snapshot = disk.read(SNAPSHOT_FILE)?;
        let (store, repairs, report) =
            LogStore::recover(voters, log.as_deref(), snapshot.as_deref())
                .map_err(|e| format!("node {} cannot recover its metadata log: {e}", i + 1))?;
        match disk.perform(&repairs, None) {
            Outcome::Done => {}
            Outcome::SyncFailed(e) => {
                // The repair's fdatasync failed: this start fails, a later one tries again.
                self.stats.sync_failures += 1;
                self.trace(|| format!("node {} cannot start: {e}", i + 1));
                let again = self.rng.range(100, 1_000) as i64;
                self.schedule(again, Event::Restart(i));
                return Ok(());
            }
            Outcome::Crashed => unreachable!("a write without a crash step always finishes"),
        }
        let config = self.node_config(i);
        let rng = self.rng.fork();
        let node = ControllerNode::open(config, store, rng, self.now)
            .map_err(|e| format!("node {} cannot start: {e}", i + 1))?;
        self.trace(|| format!("node {} starts: {report:?}", i + 1));
        let n = &mut self.nodes[i];
        n.next_apply = node.image().applied_offset() + 1;
        n.checked_offset = u64::MAX;
        n.live = Some(node);
        // Its broker is a new process.
        let incarnation = self.rng.next_u128();
        if let Some(b) = self.brokers.iter_mut().find(|b| b.voter == Some(i)) {
            b.incarnation = incarnation;
            b.epoch = None;
            b.up = true;
        }
        self.check_node(i)
    }

    fn crash(&mut self, i: Idx, mid_write: bool) {
        let Some(_) = self.nodes[i].live.take() else {
            return;
        };
        self.stats.crashes += 1;
        if mid_write {
            self.stats.crashes_mid_write += 1;
        }
        let damaged = self.nodes[i].disk.crash();
        if damaged {
            self.stats.torn_crashes += 1;
        }
        self.trace(|| {
            format!(
                "node {} crashes (mid write: {mid_write}, unsynced log writes lost or torn: {damaged})",
                i + 1
            )
        });
        self.node_down(i);
    }

    /// A failed `fdatasync` stopped the node's process (the broker exits): the disk keeps
    /// what it has, the node restarts from it.
    fn stop_after_failed_sync(&mut self, i: Idx, error: &str) {
        if self.nodes[i].live.take().is_none() {
            return;
        }
        self.stats.sync_failures += 1;
        self.trace(|| format!("node {} stops: {error}", i + 1));
        self.node_down(i);
    }

    /// What follows a node going down: its requests are left unanswered and it restarts.
    fn node_down(&mut self, i: Idx) {
        let inflight = std::mem::take(&mut self.nodes[i].inflight);
        for (token, (caller, _)) in inflight {
            self.schedule(
                1,
                Event::Reply {
                    caller,
                    token,
                    bytes: None,
                },
            );
        }
        if let Some(b) = self.brokers.iter_mut().find(|b| b.voter == Some(i)) {
            b.up = false;
        }
        let restart = if self.calm {
            10
        } else {
            self.rng.range(100, 4_000) as i64
        };
        self.schedule(restart, Event::Restart(i));
    }

    /// Runs a node's Ready loop after an input, carrying its effects out.
    fn pump(&mut self, i: Idx) -> Result<(), String> {
        loop {
            let Some(node) = self.nodes[i].live.as_mut() else {
                return Ok(());
            };
            let Some(rd) = node.ready() else {
                break;
            };
            if let (true, Some(node)) = (self.opts.trace, self.nodes[i].live.as_ref()) {
                let st = node.store();
                println!(
                    "[{:>6} ms] node {} ready: log {}..={}, snapshot {}, {} writes, {} messages",
                    self.now,
                    i + 1,
                    st.first_index(),
                    st.last_index(),
                    st.snapshot_index(),
                    rd.writes.len(),
                    rd.send.len() + rd.send_after_writes.len()
                );
            }
            for m in rd.send {
                self.send_raft(i, m);
            }
            // Now and then the process crashes part way through the writes (after a
            // random number of the disk runtime's steps, a few per write) or just after
            // them, before their messages leave.
            let crash_after = if !self.calm && !rd.writes.is_empty() && self.rng.chance(1, 150) {
                Some(self.rng.range(0, 6 * rd.writes.len() as u64))
            } else {
                None
            };
            let now = self.now;
            self.nodes[i].disk.set_now(now);
            match self.nodes[i].disk.perform(&rd.writes, crash_after) {
                Outcome::Done if crash_after.is_none() => {}
                Outcome::Done | Outcome::Crashed => {
                    // The replies and applied entries of this Ready were produced before
                    // the crash; check them first.
                    self.collect(i)?;
                    self.crash(i, true);
                    return Ok(());
                }
                Outcome::SyncFailed(e) => {
                    self.collect(i)?;
                    self.stop_after_failed_sync(i, &e);
                    return Ok(());
                }
            }
            for m in rd.send_after_writes {
                self.send_raft(i, m);
            }
            let node = self.nodes[i].live.as_mut().expect("checked live above");
            let adv = node.advance();
            match self.nodes[i].disk.perform(&adv.writes, None) {
                Outcome::Done => {}
                Outcome::SyncFailed(e) => {
                    self.collect(i)?;
                    self.stop_after_failed_sync(i, &e);
                    return Ok(());
                }
                Outcome::Crashed => unreachable!("a write without a crash step always finishes"),
            }
            for m in adv.send {
                self.send_raft(i, m);
            }
        }
        self.collect(i)?;
        self.check_node(i)
    }

    /// Replies, applied entries and events out of a node.
    fn collect(&mut self, i: Idx) -> Result<(), String> {
        let Some(node) = self.nodes[i].live.as_mut() else {
            return Ok(());
        };
        let replies = node.take_replies();
        let applied = node.take_applied();
        let events = node.take_events();
        for e in events {
            match e {
                NodeEvent::ApplyError(e) => return Err(format!("node {}: {e}", i + 1)),
                NodeEvent::BadEntry { index, error } => {
                    return Err(format!(
                        "node {}: entry {index} does not decode: {error}",
                        i + 1
                    ))
                }
                NodeEvent::SnapshotInstalled { .. } => self.stats.snapshots_installed += 1,
                NodeEvent::Compacted { .. } => self.stats.compactions += 1,
                NodeEvent::LeaderChanged { term, leader } => {
                    self.trace(|| format!("node {} sees term {term} leader {leader:?}", i + 1))
                }
                NodeEvent::ClusterBootstrapped { .. } => {}
            }
        }
        for a in applied {
            self.trace(|| {
                format!(
                    "node {} applies {} {} (snapshot: {})",
                    i + 1,
                    a.index,
                    a.term,
                    a.snapshot
                )
            });
            if a.snapshot {
                if a.index < self.nodes[i].next_apply {
                    return Err(format!(
                        "node {} installed a snapshot at {} behind what it applied ({})",
                        i + 1,
                        a.index,
                        self.nodes[i].next_apply - 1
                    ));
                }
                let index = a.index as usize;
                if index >= self.oracle.digests.len() {
                    return Err(format!(
                        "node {} installed a snapshot at {} beyond the committed log ({})",
                        i + 1,
                        a.index,
                        self.oracle.entries.len()
                    ));
                }
                self.nodes[i].next_apply = a.index + 1;
                continue;
            }
            if a.index != self.nodes[i].next_apply {
                return Err(format!(
                    "node {} applied entry {} but {} was next",
                    i + 1,
                    a.index,
                    self.nodes[i].next_apply
                ));
            }
            self.nodes[i].next_apply += 1;
            self.oracle_apply(i, a.index, a.term, a.data)?;
        }
        for (token, reply) in replies {
            let Some((caller, _)) = self.nodes[i].inflight.remove(&token) else {
                return Err(format!(
                    "node {} answered request {token} twice or unasked",
                    i + 1
                ));
            };
            let frame = reply_to_frame(token, &reply);
            let bytes = encode_frame(&frame).map_err(|e| format!("reply does not encode: {e}"))?;
            let delay = self.rng.range(1, 10) as i64;
            self.schedule(
                delay,
                Event::Reply {
                    caller,
                    token,
                    bytes: Some(bytes),
                },
            );
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Tick(i) => {
                let jitter = self.rng.range(0, 10) as i64;
                self.schedule(95 + jitter, Event::Tick(i));
                let now = self.now;
                if let Some(node) = self.nodes[i].live.as_mut() {
                    node.tick(now);
                    self.pump(i)?;
                }
            }
            Event::Raft { to, from, bytes } => self.deliver_raft(to, from, bytes)?,
            Event::Garbage {
                to,
                bytes,
                must_refuse,
            } => self.deliver_garbage(to, bytes, must_refuse)?,
            Event::Request {
                to,
                caller,
                token,
                bytes,
            } => self.deliver_request(to, caller, token, bytes)?,
            Event::Reply {
                caller,
                token,
                bytes,
            } => self.deliver_reply(caller, token, bytes)?,
            Event::Crash => {
                if !self.calm {
                    let i = self.random_live();
                    self.crash(i, false);
                    let next = self.rng.range(0, 2 * self.opts.crash_every_ms as u64) as i64;
                    self.schedule(next, Event::Crash);
                    // Garbage now and then, on the same clock.
                    let (bytes, must_refuse) = self.garbage();
                    let to = self.rng.range(0, self.nodes.len() as u64) as usize;
                    self.schedule(
                        1,
                        Event::Garbage {
                            to,
                            bytes,
                            must_refuse,
                        },
                    );
                }
            }
            Event::Restart(i) => {
                if self.nodes[i].live.is_none() {
                    self.start_node(i)?;
                    self.pump(i)?;
                }
            }
            Event::Partition => {
                if !self.calm {
                    let groups: Vec<u8> = (0..self.nodes.len())
                        .map(|_| self.rng.range(0, 2) as u8)
                        .collect();
                    self.trace(|| format!("partition {groups:?}"));
                    self.groups = Some(groups);
                    self.stats.partitions += 1;
                    let heal = self.rng.range(300, 5_000) as i64;
                    self.schedule(heal, Event::HealPartition);
                }
            }
            Event::HealPartition => {
                self.groups = None;
                if !self.calm {
                    let next = self.rng.range(500, 5_000) as i64;
                    self.schedule(next, Event::Partition);
                }
            }
            Event::Admin => self.admin(),
            Event::Broker(b) => self.broker(b),
            Event::Follow(b) => self.follow(b),
            Event::Lead(b) => self.lead(b),
            Event::Calm => {
                self.trace(|| "calm: faults stop, everything heals".into());
                self.calm = true;
                self.groups = None;
                for n in &self.nodes {
                    n.disk.set_faults_enabled(false);
                }
                for i in 0..self.nodes.len() {
                    if self.nodes[i].live.is_none() {
                        self.schedule(1, Event::Restart(i));
                    }
                }
            }
            Event::Resend {
                caller,
                to,
                request,
                attempts,
            } => self.send(caller, to, Sent::Request(request), attempts),
            Event::Mark => self.marked_committed = self.oracle.entries.len() as u64,
            Event::FinalChange => {
                self.final_change_sent = true;
                self.topic_counter += 1;
                let request = ControllerRequest::CreateTopics {
                    topics: vec![CreateTopic {
                        topic: NewTopic {
                            name: format!("final-{}", self.topic_counter),
                            partitions: 1,
                            configs: vec![],
                            internal: false,
                        },
                        replication_factor: -1,
                        assignments: vec![],
                    }],
                    validate_only: false,
                };
                let to = self.random_live();
                self.send(Caller::Admin, to, Sent::Request(request), 0);
            }
        }
        Ok(())
    }
}
