//! A seeded, deterministic simulator of one transaction coordinator with the world around
//! it: transactional producers, the partitions they write to (each running
//! [`crate::txn::partition::PartitionTxns`]), the coordinator's `__transaction_state` log,
//! the controller handing out producer ids, and a network, all on simulated time. From one
//! seed it plays:
//!
//! - producers initializing, adding partitions and a group's offsets, writing (with KIP-890
//!   verification at the partitions), committing and aborting; retries after lost or
//!   failed answers; a second instance of a transactional id fencing the first; zombies
//!   that keep writing with an old epoch; stalls past the transaction timeout; writes to
//!   partitions never added;
//! - the coordinator crashing or losing its partition's leadership at any moment, with
//!   appends in flight landing in the log or not, and reloading from the log (decoded
//!   from the bytes Kafka's format gives) under a new coordinator epoch;
//! - appends failing (short ISR, timeouts that still land, a lost leadership), markers
//!   failing or landing without an answer, markers from a crashed coordinator arriving
//!   late, producer-id blocks that come late or not at all;
//! - timeouts aborting transactions, transactional ids expiring, producer ids rotating at
//!   exhausted epochs (the log starts with some ids near the last epoch).
//!
//! After every event it checks: at most one producer epoch per transactional id is ever
//! current, and only it gets anything done; no batch of a fenced epoch is appended (KIP-890
//! verification refuses it), so none is committed; no transaction is both committed and
//! aborted, nor ends otherwise than its producer was told; no partition's last stable
//! offset passes an open transaction, and it equals a model's; the coordinator's state is
//! the replay of its log. Then the faults stop, the coordinator is reloaded once more, and
//! it checks that everything settles: every prepared transaction completed, nothing left
//! open anywhere, every batch decided, every aborted transaction in its partition's index.
//!
//! A producer waits for every write before it ends a transaction, up to its delivery
//! timeout; then it gives up on the write and aborts. A write that lands after its
//! producer gave up, or one to a partition never added, can join another transaction of
//! the same producer epoch under Kafka 3.9's rules (closed by KIP-890 part 2, which Wharf
//! does not implement), so for those writes only the epoch is checked, not the outcome;
//! they must still never leave a transaction open (KIP-890 part 1's promise).

// The world's parts: `coordinator` (its log, effects and leadership), `partitions` (markers
// and writes arriving at partition leaders), `clients` (the producers' requests and
// writes), `invariants` (the checks), `checks` (the oracle they use), `producer` (what a
// producer does next).
mod checks;
mod clients;
mod coordinator;
mod invariants;
mod partitions;
mod producer;
mod rng;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use wharf_protocol::offsets_topic::{partition_for_group, OFFSETS_TOPIC_NAME};
use wharf_protocol::txn::control::{EndTxnMarker, TransactionResult};
use wharf_protocol::txn::log::{
    TransactionLogRecord, TransactionLogValue, TransactionState, TxnTopicPartitions,
};

use crate::txn::api::*;
use crate::txn::config::TxnConfig;
use crate::txn::coordinator::{Status, TxnCoordinator};
use crate::txn::partition::{verification_error, PartitionTxns, VerificationGuard};

use checks::{Grant, Identity, Oracle};
use producer::{classify, Action, Phase, Producer, Reaction};
use rng::Rng;

/// The simulator's name for this target (`scripts/simulate.sh --target txn`).
pub const TARGET: &str = "txn";
/// The environment variable that replays one seed.
pub const SEED_ENV: &str = "WHARF_TXN_SIM_SEED";
/// How many seeds to run (from `WHARF_TXN_SIM_SEED_START`, default 0).
pub const SEEDS_ENV: &str = "WHARF_TXN_SIM_SEEDS";
pub const SEED_START_ENV: &str = "WHARF_TXN_SIM_SEED_START";
/// Set to print every event of a run.
pub const TRACE_ENV: &str = "WHARF_TXN_SIM_TRACE";

/// Offsets topic partitions as the group coordinator's default.
const OFFSETS_PARTITIONS: u32 = 50;
/// How long a producer waits for an answer before it sends the request again.
const REQUEST_TIMEOUT_MS: i64 = 3_000;
/// How long a producer waits for a write before it gives up on it and aborts (Kafka's
/// `delivery.timeout.ms`, short here). The write may still land later.
const DELIVERY_TIMEOUT_MS: i64 = 1_500;

/// One run's shape, derived from its seed.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub transactional_ids: usize,
    /// Producer slots; more than transactional ids, so instances fence each other.
    pub producers: usize,
    pub partitions: usize,
    pub groups: usize,
    /// Transactional ids the log starts with (some near the last epoch, some unfinished).
    pub seeded_ids: usize,
    /// Simulated milliseconds of faults, then of calm.
    pub fault_ms: i64,
    pub heal_ms: i64,
    /// Mean milliseconds between coordinator crashes, and between leadership bounces.
    pub crash_every_ms: i64,
    pub bounce_every_ms: i64,
    /// Per mille of appends, marker writes and answers that fail or are lost.
    pub append_failure_per_mille: u64,
    pub marker_failure_per_mille: u64,
    pub loss_per_mille: u64,
    pub transactional_id_expiration_ms: i64,
    pub trace: bool,
}

impl SimOptions {
    pub fn for_seed(seed: u64) -> SimOptions {
        let mut r = Rng::new(seed ^ 0x7A11_5EED_0F0C_0DE5);
        let transactional_ids = r.range(1, 5) as usize;
        SimOptions {
            seed,
            transactional_ids,
            producers: transactional_ids + r.range(0, 4) as usize,
            partitions: r.range(1, 6) as usize,
            groups: r.range(1, 3) as usize,
            seeded_ids: r.range(0, 4) as usize,
            fault_ms: r.range(15_000, 40_000),
            heal_ms: 70_000,
            crash_every_ms: r.range(3_000, 20_000),
            bounce_every_ms: r.range(5_000, 30_000),
            append_failure_per_mille: r.range(0, 120) as u64,
            marker_failure_per_mille: r.range(0, 150) as u64,
            loss_per_mille: r.range(0, 60) as u64,
            transactional_id_expiration_ms: r.range(20_000, 200_000),
            trace: false,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    pub events: u64,
    pub sim_ms: i64,
    pub crashes: u64,
    pub bounces: u64,
    pub loads: u64,
    pub appends: u64,
    pub appends_failed: u64,
    /// Appends that failed (or were in flight at a crash) but landed in the log.
    pub appends_landed_anyway: u64,
    pub inits: u64,
    pub commits: u64,
    pub aborts: u64,
    pub fenced_answers: u64,
    pub markers_written: u64,
    pub markers_refused: u64,
    pub batches: u64,
    pub batches_refused: u64,
    pub verifications: u64,
    pub rotations: u64,
    pub expirations: u64,
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
            "transaction simulation seed {} broke an invariant at {} ms: {}\n  replay: {}\n      or: {SEED_ENV}={} {TRACE_ENV}=1 cargo test -p wharf-server --test txn_sim -- --nocapture",
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
    world.stats.fingerprint = world.fingerprint();
    Ok(world.stats)
}

// ---------------------------------------------------------------------------------------

/// A produce request on its way.
#[derive(Clone, Debug)]
struct Produce {
    slot: usize,
    incarnation: u64,
    txn_seq: u64,
    transactional_id: String,
    tp: TopicPartition,
    producer_id: i64,
    epoch: i16,
    records: i64,
    /// Counted in the producer's outstanding requests (a live instance's write).
    counted: bool,
    /// A write to a partition the producer never added (a client bug) or by an instance
    /// that is dead.
    stray: bool,
    guard: Option<VerificationGuard>,
}

/// A coordinator request a producer sent.
#[derive(Clone, Debug)]
enum CallKind {
    Init(InitProducerIdRequest),
    Add(AddPartitionsRequest),
    Offsets(AddOffsetsRequest),
    End(EndTxnRequest),
}

#[derive(Clone, Debug)]
struct Call {
    slot: usize,
    incarnation: u64,
    txn_seq: u64,
    kind: CallKind,
}

#[derive(Debug)]
enum Event {
    Tick,
    AppendDone {
        generation: u64,
        id: AppendId,
    },
    MarkersArrive {
        generation: u64,
        request: MarkerRequest,
    },
    MarkersAnswered {
        generation: u64,
        request: MarkerRequest,
        outcomes: Vec<(TopicPartition, MarkerOutcome)>,
    },
    ProducerIds {
        generation: u64,
    },
    Crash,
    /// The partition's leadership moves away and back. During the calm only the one final
    /// bounce happens.
    Bounce {
        last: bool,
    },
    Restart,
    FinishLoad {
        generation: u64,
    },
    Step {
        slot: usize,
        incarnation: u64,
    },
    Request {
        token: Token,
    },
    Reply {
        reply: Reply,
    },
    Timeout {
        token: Token,
    },
    ProduceArrive {
        id: u64,
    },
    VerifyArrive {
        id: u64,
    },
    VerifyDone {
        id: u64,
        result: Vec<(TopicPartition, ErrorCode)>,
    },
    /// The producer gives up on a write still unanswered.
    DeliveryTimeout {
        id: u64,
    },
    ProduceDone {
        id: u64,
        error: ErrorCode,
    },
    AdvanceHighWatermark {
        tp: TopicPartition,
    },
    Calm,
    End,
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

/// A batch as the simulator remembers it, to check what markers make of it.
#[derive(Clone, Debug)]
struct SimBatch {
    producer_id: i64,
    first: i64,
    identity: Identity,
    zombie: bool,
    /// Written to a partition the producer never added: with KIP-890 part 1 (Kafka 3.9)
    /// such a write, arriving before the marker of the producer's previous transaction on
    /// that partition, joins that transaction; only its epoch is checked, not its outcome.
    stray: bool,
    outcome: Option<TransactionResult>,
}

/// A partition: its transactions, its offsets, and what was written to it.
#[derive(Default)]
struct SimPartition {
    txns: PartitionTxns,
    log_end: i64,
    high_watermark: i64,
    batches: Vec<SimBatch>,
    /// Open transactions by producer id: their first offset (the simulator's own model).
    open: BTreeMap<i64, i64>,
    /// Completed transactions whose marker may still be at or above the high watermark:
    /// (first offset, marker offset).
    unreplicated: Vec<(i64, i64)>,
    /// Every aborted transaction: (producer id, first offset, marker offset).
    aborted: Vec<(i64, i64, i64)>,
}

struct World {
    opts: SimOptions,
    rng: Rng,
    now: i64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    config: TxnConfig,
    coordinator: Option<TxnCoordinator>,
    /// Bumped at every crash and leadership change: answers from before are dropped.
    generation: u64,
    coordinator_epoch: i32,
    /// The `__transaction_state` partition: encoded keys and values, in order.
    log: Vec<(Bytes, Option<Bytes>)>,
    inflight: BTreeMap<AppendId, LogAppend>,
    next_producer_id_block: i64,
    partitions: BTreeMap<TopicPartition, SimPartition>,
    data_partitions: Vec<TopicPartition>,
    groups: Vec<String>,
    producers: Vec<Producer>,
    calls: BTreeMap<Token, Call>,
    next_token: Token,
    produces: BTreeMap<u64, Produce>,
    next_produce: u64,
    oracle: Oracle,
    stats: SimStats,
    calm: bool,
    /// Since the last load, an append may have landed in the log without the coordinator
    /// knowing (a failure that was not one): memory and log may differ until the next load.
    ambiguous: bool,
    done: bool,
}

impl World {
    fn new(opts: SimOptions) -> World {
        let mut rng = Rng::new(opts.seed);
        let config = TxnConfig {
            transaction_state_log_num_partitions: 1,
            transaction_max_timeout_ms: 20_000,
            transactional_id_expiration_ms: opts.transactional_id_expiration_ms,
            abort_timed_out_transaction_cleanup_interval_ms: 1_000,
            remove_expired_transaction_cleanup_interval_ms: 5_000,
            offsets_topic_num_partitions: OFFSETS_PARTITIONS,
            ..TxnConfig::default()
        };
        let data_partitions: Vec<TopicPartition> = (0..opts.partitions)
            .map(|p| TopicPartition::new("t", p as i32))
            .collect();
        let groups: Vec<String> = (0..opts.groups).map(|g| format!("group-{g}")).collect();
        let mut partitions: BTreeMap<TopicPartition, SimPartition> = data_partitions
            .iter()
            .map(|tp| (tp.clone(), SimPartition::default()))
            .collect();
        for g in &groups {
            let tp = TopicPartition::new(
                OFFSETS_TOPIC_NAME,
                partition_for_group(g, OFFSETS_PARTITIONS),
            );
            partitions.entry(tp).or_default();
        }
        let producers = (0..opts.producers)
            .map(|slot| Producer::new(format!("txn-{}", slot % opts.transactional_ids)))
            .collect();
        let mut world = World {
            rng: Rng::new(rng.next_u64()),
            opts,
            now: 0,
            queue: BinaryHeap::new(),
            seq: 0,
            config,
            coordinator: None,
            generation: 0,
            coordinator_epoch: 0,
            log: Vec::new(),
            inflight: BTreeMap::new(),
            next_producer_id_block: 1000,
            partitions,
            data_partitions,
            groups,
            producers,
            calls: BTreeMap::new(),
            next_token: 0,
            produces: BTreeMap::new(),
            next_produce: 0,
            oracle: Oracle::default(),
            stats: SimStats::default(),
            calm: false,
            ambiguous: false,
            done: false,
        };
        world.seed_log();
        world
    }

    /// The log a previous coordinator left: ids at the last epochs (their next
    /// InitProducerId rotates the producer id) and unfinished transactions.
    fn seed_log(&mut self) {
        for i in 0..self.opts.seeded_ids {
            // The first seeded ids are ones the producers use.
            let id = format!("txn-{}", i % self.opts.transactional_ids);
            let state = [
                TransactionState::Empty,
                TransactionState::Ongoing,
                TransactionState::PrepareCommit,
                TransactionState::PrepareAbort,
                TransactionState::CompleteCommit,
            ][self.rng.index(5)];
            let epoch = i16::MAX - 1 - self.rng.range(0, 3) as i16;
            let tp = &self.data_partitions[self.rng.index(self.data_partitions.len())];
            let value = TransactionLogValue {
                version: 0,
                producer_id: 1 + i as i64,
                previous_producer_id: -1,
                next_producer_id: -1,
                producer_epoch: epoch,
                transaction_timeout_ms: 5_000,
                state,
                partitions: (state != TransactionState::Empty).then(|| {
                    vec![TxnTopicPartitions {
                        topic: tp.topic.clone(),
                        partitions: vec![tp.partition],
                    }]
                }),
                last_update_timestamp_ms: 0,
                start_timestamp_ms: if state == TransactionState::Empty {
                    -1
                } else {
                    0
                },
                client_transaction_version: 0,
            };
            self.push_log(&TransactionLogRecord {
                transactional_id: id,
                value: Some(value),
            });
        }
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.opts.trace {
            println!("{:>8} {}", self.now, what());
        }
    }

    fn schedule(&mut self, delay_ms: i64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + delay_ms.max(0),
            seq: self.seq,
            event,
        }));
    }

    /// A network delay: mostly short, sometimes long while faults are on.
    fn delay(&mut self) -> i64 {
        if !self.calm && self.rng.chance(1, 30) {
            self.rng.range(200, 2_000)
        } else {
            self.rng.range(1, 40)
        }
    }

    fn faulty(&mut self, per_mille: u64) -> bool {
        !self.calm && self.rng.per_mille(per_mille)
    }

    fn run(&mut self) -> Result<(), String> {
        self.schedule(0, Event::Restart);
        self.schedule(50, Event::Tick);
        for slot in 0..self.producers.len() {
            let delay = self.rng.range(0, 500);
            self.schedule(
                delay,
                Event::Step {
                    slot,
                    incarnation: 0,
                },
            );
        }
        for tp in self.partitions.keys().cloned().collect::<Vec<_>>() {
            let delay = self.rng.range(10, 200);
            self.schedule(delay, Event::AdvanceHighWatermark { tp });
        }
        let crash_in = self.rng.range(500, self.opts.crash_every_ms * 2);
        self.schedule(crash_in, Event::Crash);
        let bounce_in = self.rng.range(500, self.opts.bounce_every_ms * 2);
        self.schedule(bounce_in, Event::Bounce { last: false });
        self.schedule(self.opts.fault_ms, Event::Calm);
        while let Some(Reverse(next)) = self.queue.pop() {
            self.now = next.at;
            self.stats.events += 1;
            self.handle(next.event)?;
            self.check()?;
            if self.done {
                return Ok(());
            }
        }
        Err("the event queue ran dry before the end".into())
    }

    // -----------------------------------------------------------------------------------
    // Events
    // -----------------------------------------------------------------------------------

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Tick => {
                if let Some(c) = self.coordinator.as_mut() {
                    let fx = c.tick(self.now);
                    self.carry(fx)?;
                }
                let next = self
                    .coordinator
                    .as_ref()
                    .and_then(|c| c.next_deadline_ms())
                    .map_or(500, |t| (t - self.now).clamp(1, 500));
                let jitter = self.rng.range(0, 50);
                self.schedule(next + jitter, Event::Tick);
            }
            Event::AppendDone { generation, id } => self.append_done(generation, id)?,
            Event::MarkersArrive {
                generation,
                request,
            } => self.markers_arrive(generation, request)?,
            Event::MarkersAnswered {
                generation,
                request,
                outcomes,
            } => {
                if generation == self.generation {
                    if let Some(c) = self.coordinator.as_mut() {
                        let fx = c.markers_done(self.now, &request, &outcomes);
                        self.carry(fx)?;
                    }
                }
            }
            Event::ProducerIds { generation } => {
                if generation != self.generation {
                    return Ok(());
                }
                let fail = self.faulty(100);
                let size = self.rng.range(2, 20);
                if let Some(c) = self.coordinator.as_mut() {
                    if fail {
                        c.producer_ids_unavailable();
                    } else {
                        c.add_producer_ids(self.next_producer_id_block, size);
                        self.next_producer_id_block += size;
                    }
                }
            }
            Event::Crash => {
                if !self.calm {
                    if self.coordinator.is_some() {
                        self.stats.crashes += 1;
                        self.trace(|| "coordinator crashed".into());
                        self.lose_leadership();
                        self.coordinator = None;
                        let delay = self.rng.range(100, 3_000);
                        self.schedule(delay, Event::Restart);
                    }
                    let next = self.rng.range(500, self.opts.crash_every_ms * 2);
                    self.schedule(next, Event::Crash);
                }
            }
            Event::Bounce { last } => {
                if !self.calm || last {
                    self.bounce()?;
                }
            }
            Event::Restart => {
                self.coordinator_epoch += 1;
                let mut c = TxnCoordinator::new(self.config.clone(), 0);
                let fx = c.begin_load(self.coordinator_epoch);
                self.coordinator = Some(c);
                self.carry(fx)?;
                let generation = self.generation;
                let delay = self.rng.range(10, 500);
                self.schedule(delay, Event::FinishLoad { generation });
            }
            Event::FinishLoad { generation } => {
                if generation != self.generation {
                    return Ok(());
                }
                let records = self.decoded_log()?;
                let now = self.now;
                let Some(c) = self.coordinator.as_mut() else {
                    return Ok(());
                };
                for record in &records {
                    c.replay(record);
                }
                let fx = c.finish_load(now);
                self.stats.loads += 1;
                self.ambiguous = false;
                self.trace(|| format!("loaded at coordinator epoch {}", self.coordinator_epoch));
                self.carry(fx)?;
            }
            Event::Step { slot, incarnation } => self.step(slot, incarnation)?,
            Event::Request { token } => self.request_arrives(token)?,
            Event::Reply { reply } => self.reply_arrives(reply)?,
            Event::Timeout { token } => {
                let Some(call) = self.calls.get(&token).cloned() else {
                    return Ok(());
                };
                if self.producers[call.slot].pending == Some(token) {
                    self.trace(|| format!("request {token} timed out"));
                    self.resend(token, call);
                }
            }
            Event::ProduceArrive { id } => self.produce_arrives(id)?,
            Event::VerifyArrive { id } => {
                let Some(p) = self.produces.get(&id).cloned() else {
                    return Ok(());
                };
                self.stats.verifications += 1;
                let result = match self.coordinator.as_ref() {
                    // The partition leader's request finds no coordinator.
                    None => vec![(p.tp.clone(), Some(ResponseError::NetworkException))],
                    Some(c) => c.verify_partitions(
                        &p.transactional_id,
                        p.producer_id,
                        p.epoch,
                        std::slice::from_ref(&p.tp),
                    ),
                };
                let delay = self.delay();
                self.schedule(delay, Event::VerifyDone { id, result });
            }
            Event::VerifyDone { id, result } => {
                let error = result.iter().find_map(|(_, e)| *e);
                match error {
                    Some(error) => {
                        let knows_abortable = self.rng.chance(1, 2);
                        let error = verification_error(error, knows_abortable);
                        self.produce_answered(id, Some(error));
                    }
                    None => self.try_append(id)?,
                }
            }
            Event::ProduceDone { id, error } => self.produce_done(id, error),
            Event::DeliveryTimeout { id } => {
                let Some(produce) = self.produces.get_mut(&id) else {
                    return Ok(());
                };
                if produce.counted {
                    // Abandoned: it no longer holds EndTxn back, and if it lands after the
                    // abort it may join another transaction (KIP-890 part 2's case), so
                    // only its epoch is checked from now on.
                    produce.counted = false;
                    produce.stray = true;
                    let slot = produce.slot;
                    let incarnation = produce.incarnation;
                    self.trace(|| format!("producer {slot} gives up on write {id}"));
                    let p = &mut self.producers[slot];
                    if p.incarnation == incarnation {
                        p.outstanding -= 1;
                        p.abortable = true;
                    }
                }
            }
            Event::AdvanceHighWatermark { tp } => {
                let calm = self.calm;
                let step = self.rng.range(0, 6);
                if let Some(p) = self.partitions.get_mut(&tp) {
                    p.high_watermark = if calm {
                        p.log_end
                    } else {
                        (p.high_watermark + step).min(p.log_end)
                    };
                    let hw = p.high_watermark;
                    p.txns.on_high_watermark(hw);
                    p.unreplicated.retain(|(_, last)| *last >= hw);
                }
                let delay = self.rng.range(10, 300);
                self.schedule(delay, Event::AdvanceHighWatermark { tp });
            }
            Event::Calm => {
                self.calm = true;
                self.trace(|| "calm: no more faults".into());
                if self.coordinator.is_none() {
                    // A restart is already scheduled.
                } else {
                    // One more load, so the end state is checked against a fresh replay.
                    self.schedule(self.opts.heal_ms / 2, Event::Bounce { last: true });
                }
                self.schedule(self.opts.heal_ms, Event::End);
            }
            Event::End => {
                self.final_checks()?;
                self.done = true;
            }
        }
        Ok(())
    }
}
