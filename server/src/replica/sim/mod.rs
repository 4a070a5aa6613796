//! A seeded, deterministic simulator of replicated partitions: three nodes, each running a
//! [`crate::replica::ReplicaState`] per partition over a small log model that loses its
//! unsynced tail at a crash; a network that delays, reorders, loses, duplicates and
//! corrupts, with links cut and healed; a controller that registers brokers, fences silent
//! ones, elects leaders cleanly from the ISR and commits AlterPartition; producers with
//! acks=all and acks=1. Replication frames are the real codec's bytes.
//!
//! After every event it checks: no record acknowledged to an acks=all producer is lost
//! (it is on disk on every member of the acking leader's maximal ISR, and in the log of
//! every later leader at its offset); at most one leader (node and process) per epoch; a
//! leader's high watermark never goes back; every replica's log below its high watermark
//! is the committed history every leader agreed on; no follower truncates below its high
//! watermark; no log takes a batch that fails its CRC, leaves a gap or lowers the epoch;
//! each replica's view of its log matches the log. Then faults stop and it checks that
//! everything converges: every node back, a leader per partition, every replica's log
//! equal to the leader's and the high watermark at its end.

mod checks;
mod controller;
mod log;
mod network;
mod node;
mod producer;
mod rng;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;

use crate::metadata::NodeId;
use crate::replica::ReplicaConfig;

use checks::Oracle;
use controller::Controller;
use network::{Endpoint, Msg, Network};
use node::Node;
use producer::Producer;
use rng::Rng;

/// The simulator's name for this target (`scripts/simulate.sh --target replica`).
pub const TARGET: &str = "replica";
/// The environment variable that replays one seed.
pub const SEED_ENV: &str = "WHARF_REPLICA_SIM_SEED";
/// How many seeds to run (from `WHARF_REPLICA_SIM_SEED_START`, default 0).
pub const SEEDS_ENV: &str = "WHARF_REPLICA_SIM_SEEDS";
pub const SEED_START_ENV: &str = "WHARF_REPLICA_SIM_SEED_START";
/// Set to print every event of a run.
pub const TRACE_ENV: &str = "WHARF_REPLICA_SIM_TRACE";

/// The topic id every simulated partition belongs to.
const TOPIC_ID: u128 = 0x5157_0000_0000_0000_0000_0000_0000_0001;
const NODES: usize = 3;
const NODE_TICK_MS: i64 = 5;
const CONTROLLER_TICK_MS: i64 = 20;
/// A fetch with no answer for this long: the connection is given up.
const FETCH_TIMEOUT_MS: i64 = 250;
/// An AlterPartition with no answer for this long is reported as timed out.
const ALTER_PARTITION_TIMEOUT_MS: i64 = 300;
/// Record bytes a follower asks for per partition (small, so reads are often partial).
const FETCH_PARTITION_MAX_BYTES: i32 = 700;
const PRODUCE_TIMEOUT_MS: i64 = 1_000;
/// Simulated time after the faults for everything to settle.
const HEAL_MS: i64 = 12_000;

/// One run's shape, derived from its seed.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub partitions: usize,
    pub producers: usize,
    pub min_insync_replicas: usize,
    /// Simulated milliseconds of faults (then `HEAL_MS` of calm).
    pub fault_ms: i64,
    /// Mean milliseconds between crashes, and between network splits.
    pub crash_every_ms: i64,
    pub split_every_ms: i64,
    pub loss_per_mille: u64,
    pub duplicate_per_mille: u64,
    pub corrupt_per_mille: u64,
    pub max_delay_ms: i64,
    /// Per mille of messages held up for 100-800 ms (a stalled path): they arrive after
    /// timeouts, behind newer messages.
    pub stall_per_mille: u64,
    /// Longest gap between two group commits (fdatasync) of a node.
    pub sync_every_ms: i64,
    /// Per mille of requests from an already closed connection that the leader still
    /// serves (they were queued before the close).
    pub late_request_per_mille: u64,
    pub acks_all_per_mille: u64,
    pub replica_lag_time_max_ms: i64,
    pub session_timeout_ms: i64,
    /// `replica.high.watermark.checkpoint.interval.ms`: from every group commit to
    /// seconds apart, so crashes find checkpoints fresh and stale.
    pub high_watermark_checkpoint_interval_ms: i64,
    pub trace: bool,
}

impl SimOptions {
    pub fn for_seed(seed: u64) -> SimOptions {
        let mut r = Rng::new(seed ^ 0x5E9_11CA_7E5E_ED00);
        SimOptions {
            seed,
            partitions: r.range(1, 4) as usize,
            producers: r.range(1, 6) as usize,
            min_insync_replicas: [1, 2, 2, 2, 3][r.index(5)],
            fault_ms: r.range(4_000, 12_000),
            crash_every_ms: r.range(300, 3_000),
            split_every_ms: r.range(300, 4_000),
            loss_per_mille: r.range(0, 60) as u64,
            duplicate_per_mille: r.range(0, 40) as u64,
            corrupt_per_mille: r.range(0, 40) as u64,
            max_delay_ms: r.range(1, 25),
            stall_per_mille: r.range(0, 20) as u64,
            sync_every_ms: r.range(2, 80),
            late_request_per_mille: r.range(0, 500) as u64,
            acks_all_per_mille: r.range(300, 1_000) as u64,
            replica_lag_time_max_ms: r.range(300, 1_500),
            session_timeout_ms: r.range(300, 900),
            high_watermark_checkpoint_interval_ms: [0, 50, 300, 2_000][r.index(4)],
            trace: false,
        }
    }

    fn replica_config(&self) -> ReplicaConfig {
        ReplicaConfig {
            replica_lag_time_max_ms: self.replica_lag_time_max_ms,
            min_insync_replicas: self.min_insync_replicas,
            replica_fetch_backoff_ms: 30,
            alter_partition_retry_ms: 40,
            high_watermark_checkpoint_interval_ms: self.high_watermark_checkpoint_interval_ms,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    pub events: u64,
    pub sim_ms: i64,
    pub crashes: u64,
    /// Batches lost from unsynced tails at crashes.
    pub batches_lost_at_crash: u64,
    pub splits: u64,
    pub elections: u64,
    pub isr_changes: u64,
    pub alter_partition_refusals: u64,
    pub produced: u64,
    pub acked_all: u64,
    pub acked_one: u64,
    pub not_enough_replicas: u64,
    pub not_enough_replicas_after_append: u64,
    pub produce_errors: u64,
    pub produce_timeouts: u64,
    pub fetches: u64,
    pub truncations: u64,
    /// Follower fetch answers refused (a batch failing its CRC, offsets or epochs).
    pub refused: u64,
    pub frames_corrupted: u64,
    /// Connections closed for a bad or out-of-order frame.
    pub connections_closed: u64,
    pub late_requests_served: u64,
    pub diverging_answers: u64,
    pub fenced_answers: u64,
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
            "replica simulation seed {} broke an invariant at {} ms: {}\n  replay: {}\n      or: {SEED_ENV}={} {TRACE_ENV}=1 cargo test -p wharf-server --test replica_sim -- --nocapture",
            self.seed,
            self.at_ms,
            self.message,
            wharf_engine::sim::runner::replay_command(TARGET, self.seed),
            self.seed
        )
    }
}

/// Runs the simulation for `opts`. A panic anywhere is a violation too, with its seed.
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
    world.stats.elections = world.controller.elections;
    world.stats.isr_changes = world.controller.isr_changes;
    world.stats.alter_partition_refusals = world.controller.alter_refusals;
    world.stats.fingerprint = world.fingerprint();
    Ok(world.stats)
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: Endpoint,
        to: Endpoint,
        msg: Msg,
    },
    NodeTick(usize),
    ControllerTick,
    ProducerWake(usize),
    Crash,
    Restart(usize),
    Split,
    Heal,
    EndFaults,
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

pub(super) struct World {
    opts: SimOptions,
    rng: Rng,
    now: i64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    net: Network,
    controller: Controller,
    nodes: Vec<Node>,
    producers: Vec<Producer>,
    oracle: Oracle,
    stats: SimStats,
    faults_over: bool,
    next_generation: u64,
}

pub(super) fn node_id(index: usize) -> NodeId {
    NodeId(index as i32 + 1)
}

pub(super) fn node_index(id: NodeId) -> Option<usize> {
    usize::try_from(id.0 - 1).ok().filter(|&i| i < NODES)
}

impl World {
    fn new(opts: SimOptions) -> World {
        let ids: Vec<NodeId> = (0..NODES).map(node_id).collect();
        let config = opts.replica_config();
        World {
            rng: Rng::new(opts.seed),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            net: Network::new(
                opts.loss_per_mille,
                opts.duplicate_per_mille,
                opts.corrupt_per_mille,
                opts.max_delay_ms,
                opts.stall_per_mille,
            ),
            controller: Controller::new(&ids, opts.partitions, opts.session_timeout_ms),
            nodes: (0..NODES)
                .map(|i| Node::new(node_id(i), opts.partitions, config))
                .collect(),
            producers: (0..opts.producers)
                .map(|i| Producer::new(i, opts.partitions))
                .collect(),
            oracle: Oracle::new(opts.partitions),
            stats: SimStats::default(),
            faults_over: false,
            next_generation: 1,
            opts,
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

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.opts.trace {
            println!("{:>7} ms  {}", self.now, what());
        }
    }

    /// Sends `msg` through the network: lost, delayed or duplicated as it may be.
    pub(super) fn send(&mut self, from: Endpoint, to: Endpoint, msg: Msg) {
        if !self.net.connected(from, to) {
            return;
        }
        for delay in self.net.delays(&mut self.rng) {
            let msg = msg.clone();
            self.schedule(delay, Event::Deliver { from, to, msg });
        }
    }

    fn run(&mut self) -> Result<(), String> {
        for i in 0..NODES {
            let offset = self.rng.range(0, NODE_TICK_MS);
            self.schedule(offset, Event::NodeTick(i));
        }
        self.schedule(CONTROLLER_TICK_MS, Event::ControllerTick);
        for i in 0..self.producers.len() {
            let at = self.rng.range(50, 300);
            self.schedule(at, Event::ProducerWake(i));
        }
        let crash_in = self.rng.range(0, 2 * self.opts.crash_every_ms);
        self.schedule(crash_in, Event::Crash);
        let split_in = self.rng.range(0, 2 * self.opts.split_every_ms);
        self.schedule(split_in, Event::Split);
        self.schedule(self.opts.fault_ms, Event::EndFaults);
        let end = self.opts.fault_ms + HEAL_MS;
        while let Some(Reverse(next)) = self.queue.pop() {
            if next.at > end {
                break;
            }
            self.now = next.at;
            self.stats.events += 1;
            self.handle(next.event)?;
            self.check()?;
        }
        self.now = end;
        self.check_converged()
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Deliver { from, to, msg } => {
                // A link cut while the message was on its way drops it.
                if !self.net.connected(from, to) {
                    return Ok(());
                }
                match to {
                    Endpoint::Controller => self.controller_receive(from, msg),
                    Endpoint::Node(i) => self.node_receive(i, from, msg)?,
                    Endpoint::Producer(i) => self.producer_receive(i, msg),
                }
            }
            Event::NodeTick(i) => {
                self.node_tick(i)?;
                self.schedule(NODE_TICK_MS, Event::NodeTick(i));
            }
            Event::ControllerTick => {
                self.controller.tick(self.now);
                self.schedule(CONTROLLER_TICK_MS, Event::ControllerTick);
            }
            Event::ProducerWake(i) => self.producer_wake(i),
            Event::Crash => {
                if !self.faults_over {
                    let up: Vec<usize> = (0..NODES).filter(|&i| self.nodes[i].up).collect();
                    if !up.is_empty() {
                        let i = up[self.rng.index(up.len())];
                        self.crash(i);
                        let down_ms = self.rng.range(20, 1_500);
                        self.schedule(down_ms, Event::Restart(i));
                    }
                    let next = self.rng.range(1, 2 * self.opts.crash_every_ms);
                    self.schedule(next, Event::Crash);
                }
            }
            Event::Restart(i) => self.restart(i),
            Event::Split => {
                if !self.faults_over {
                    self.split();
                    let heal = self.rng.range(50, 2_000);
                    self.schedule(heal, Event::Heal);
                    let next = self.rng.range(1, 2 * self.opts.split_every_ms);
                    self.schedule(next, Event::Split);
                }
            }
            Event::Heal => {
                self.net.heal_all();
                self.trace(|| "network healed".to_string());
            }
            Event::EndFaults => {
                self.faults_over = true;
                self.net.heal_all();
                self.net.loss_per_mille = 0;
                self.net.duplicate_per_mille = 0;
                self.net.corrupt_per_mille = 0;
                self.net.stall_per_mille = 0;
                self.opts.late_request_per_mille = 0;
                for i in 0..NODES {
                    if !self.nodes[i].up {
                        self.restart(i);
                    }
                }
                self.trace(|| "faults end".to_string());
            }
        }
        Ok(())
    }

    /// Cuts the network: one link, or one endpoint (a node or the controller) from all.
    fn split(&mut self) {
        let endpoints = [
            Endpoint::Controller,
            Endpoint::Node(0),
            Endpoint::Node(1),
            Endpoint::Node(2),
        ];
        let a = endpoints[self.rng.index(endpoints.len())];
        if self.rng.per_mille(500) {
            let b = endpoints[self.rng.index(endpoints.len())];
            self.net.cut(a, b);
            self.trace(|| format!("link {a:?} - {b:?} cut"));
        } else {
            for b in endpoints {
                self.net.cut(a, b);
            }
            self.trace(|| format!("{a:?} cut off"));
        }
        self.stats.splits += 1;
    }

    fn controller_receive(&mut self, from: Endpoint, msg: Msg) {
        let Endpoint::Node(i) = from else {
            return;
        };
        let node = node_id(i);
        let now = self.now;
        match msg {
            Msg::Register { incarnation } => {
                let Some(broker_epoch) = self.controller.register(node, incarnation, now) else {
                    return;
                };
                let version = self.controller.version;
                self.send(
                    Endpoint::Controller,
                    from,
                    Msg::Registered {
                        incarnation,
                        broker_epoch,
                        version,
                    },
                );
            }
            Msg::Heartbeat { broker_epoch } => {
                if !self.controller.heartbeat(node, broker_epoch, now) {
                    self.send(
                        Endpoint::Controller,
                        from,
                        Msg::StaleBrokerEpoch { broker_epoch },
                    );
                }
            }
            Msg::MetadataFetch => {
                let msg = Msg::Metadata {
                    version: self.controller.version,
                    partitions: self.controller.partitions.clone(),
                    ineligible: self.controller.ineligible(),
                };
                self.send(Endpoint::Controller, from, msg);
            }
            Msg::AlterPartition {
                incarnation,
                partition,
                proposal,
            } => {
                let answer = self.controller.alter_partition(node, partition, &proposal);
                self.trace(|| format!("controller: AlterPartition from {node:?} p{partition} {proposal:?} -> {answer:?}"));
                self.send(
                    Endpoint::Controller,
                    from,
                    Msg::AlterPartitionAnswer {
                        incarnation,
                        partition,
                        proposal,
                        answer,
                    },
                );
            }
            _ => {}
        }
    }

    /// A deterministic digest of the final logs and counters.
    fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut mix = |v: u64| {
            h ^= v;
            h = h.wrapping_mul(0x0100_0000_01b3);
        };
        for node in &self.nodes {
            for log in &node.logs {
                mix(log.end() as u64);
                for b in log.batches() {
                    // The batch's own CRC-32C (it passed validation) and its position.
                    mix(
                        u32::from_be_bytes([b.bytes[17], b.bytes[18], b.bytes[19], b.bytes[20]])
                            as u64,
                    );
                    mix(b.base_offset as u64 ^ ((b.epoch as u64) << 48));
                }
            }
        }
        mix(self.stats.events);
        mix(self.stats.acked_all);
        mix(self.controller.elections);
        h
    }
}
