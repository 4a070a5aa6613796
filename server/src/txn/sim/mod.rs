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

mod checks;
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
            "transaction simulation seed {} broke an invariant at {} ms: {}\n  replay: {SEED_ENV}={} {TRACE_ENV}=1 cargo test -p wharf-server --test txn_sim -- --nocapture",
            self.seed, self.at_ms, self.message, self.seed
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
    // The log
    // -----------------------------------------------------------------------------------

    fn push_log(&mut self, record: &TransactionLogRecord) {
        let (key, value) = record
            .encode()
            .expect("the coordinator writes records Kafka's format can hold");
        self.log.push((key, value));
        self.oracle.on_logged(record);
    }

    fn decoded_log(&self) -> Result<Vec<TransactionLogRecord>, String> {
        self.log
            .iter()
            .map(|(k, v)| {
                TransactionLogRecord::decode(k, v.as_deref())
                    .map_err(|e| format!("the log holds a record that does not decode: {e}"))
            })
            .collect()
    }

    // -----------------------------------------------------------------------------------
    // Effects of the coordinator
    // -----------------------------------------------------------------------------------

    fn carry(&mut self, fx: Effects) -> Result<(), String> {
        for reply in fx.replies {
            self.on_coordinator_reply(&reply)?;
            if self.faulty(self.opts.loss_per_mille) {
                self.trace(|| format!("answer {} lost", reply.token()));
                continue;
            }
            let delay = self.delay();
            self.schedule(delay, Event::Reply { reply });
        }
        for append in fx.appends {
            self.stats.appends += 1;
            let generation = self.generation;
            let id = append.id;
            self.trace(|| format!("append {id}: {:?}", append.record));
            self.inflight.insert(id, append);
            let delay = self.rng.range(1, 30);
            self.schedule(delay, Event::AppendDone { generation, id });
        }
        for request in fx.markers {
            let generation = self.generation;
            // Now and then a request sits in a broker's queue for long: if its coordinator
            // crashes meanwhile, its markers arrive after the next one's (and must be
            // refused by coordinator epoch).
            let delay = if self.faulty(30) {
                self.rng.range(3_000, 15_000)
            } else {
                self.delay()
            };
            self.schedule(
                delay,
                Event::MarkersArrive {
                    generation,
                    request,
                },
            );
        }
        if fx.want_producer_ids {
            let generation = self.generation;
            let delay = self.rng.range(5, 300);
            self.schedule(delay, Event::ProducerIds { generation });
        }
        Ok(())
    }

    /// Checks an answer as the coordinator gives it, before the network may lose it.
    fn on_coordinator_reply(&mut self, reply: &Reply) -> Result<(), String> {
        let Some(call) = self.calls.get(&reply.token()).cloned() else {
            return Ok(());
        };
        let txn_id = self.producers[call.slot].transactional_id.clone();
        match (&call.kind, reply) {
            (CallKind::Init(_), Reply::InitProducerId(_, r)) if r.error.is_none() => {
                self.stats.inits += 1;
                if let Some(prev) = self.oracle.latest.get(&txn_id) {
                    if r.producer_id != prev.producer_id {
                        self.stats.rotations += u64::from(prev.epoch >= i16::MAX - 1);
                    }
                }
                self.oracle.on_init(
                    &txn_id,
                    Grant {
                        producer_id: r.producer_id,
                        epoch: r.producer_epoch,
                        slot: call.slot,
                        incarnation: call.incarnation,
                    },
                )?;
            }
            (CallKind::Add(req), Reply::AddPartitions(_, results))
                if results.iter().all(|(_, e)| e.is_none()) =>
            {
                self.oracle.check_current(
                    &txn_id,
                    req.producer_id,
                    req.producer_epoch,
                    "AddPartitionsToTxn",
                )?;
            }
            (CallKind::Offsets(req), Reply::AddOffsets(_, None)) => {
                self.oracle.check_current(
                    &txn_id,
                    req.producer_id,
                    req.producer_epoch,
                    "AddOffsetsToTxn",
                )?;
            }
            (CallKind::End(req), Reply::EndTxn(_, None)) => {
                self.oracle.check_current(
                    &txn_id,
                    req.producer_id,
                    req.producer_epoch,
                    "EndTxn",
                )?;
                let result = TransactionResult::from_committed(req.committed);
                self.oracle
                    .on_decided((call.slot, call.incarnation, call.txn_seq), result)?;
            }
            _ => {}
        }
        Ok(())
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

    /// The partition's leadership is gone (crash or move): appends in flight land in the
    /// log or not, and every answer still on its way is dropped.
    fn lose_leadership(&mut self) {
        self.generation += 1;
        for (_, append) in std::mem::take(&mut self.inflight) {
            if self.rng.chance(1, 2) {
                self.stats.appends_landed_anyway += 1;
                self.trace(|| format!("in-flight append {} landed", append.id));
                self.push_log(&append.record);
            }
        }
    }

    fn bounce(&mut self) -> Result<(), String> {
        let active = self
            .coordinator
            .as_ref()
            .is_some_and(|c| matches!(c.status(), Status::Active { .. }));
        if active {
            self.stats.bounces += 1;
            self.trace(|| "leadership moved away and back".into());
            self.lose_leadership();
            self.coordinator_epoch += 1;
            let epoch = self.coordinator_epoch;
            let Some(c) = self.coordinator.as_mut() else {
                return Ok(());
            };
            let mut fx = c.unload();
            fx.append(c.begin_load(epoch));
            self.carry(fx)?;
            let generation = self.generation;
            let delay = self.rng.range(10, 500);
            self.schedule(delay, Event::FinishLoad { generation });
        }
        if !self.calm {
            let next = self.rng.range(500, self.opts.bounce_every_ms * 2);
            self.schedule(next, Event::Bounce { last: false });
        }
        Ok(())
    }

    fn append_done(&mut self, generation: u64, id: AppendId) -> Result<(), String> {
        if generation != self.generation {
            return Ok(());
        }
        let Some(append) = self.inflight.remove(&id) else {
            return Ok(());
        };
        let result = if self.faulty(self.opts.append_failure_per_mille) {
            self.stats.appends_failed += 1;
            let error = [
                ResponseError::NotEnoughReplicas,
                ResponseError::RequestTimedOut,
                ResponseError::NotLeaderOrFollower,
                ResponseError::NotEnoughReplicasAfterAppend,
            ][self.rng.index(4)];
            // A timeout or a short ISR after the append: the record may be in the log.
            let landed = matches!(
                error,
                ResponseError::RequestTimedOut | ResponseError::NotEnoughReplicasAfterAppend
            ) && self.rng.chance(1, 2);
            if landed {
                self.stats.appends_landed_anyway += 1;
                self.ambiguous = true;
                self.push_log(&append.record);
            }
            if error == ResponseError::NotLeaderOrFollower {
                // The leadership is moving: this node will unload the partition soon.
                let delay = self.rng.range(1, 200);
                self.schedule(delay, Event::Bounce { last: false });
            }
            self.trace(|| format!("append {id} failed: {error:?} (landed: {landed})"));
            Err(error)
        } else {
            self.push_log(&append.record);
            if append.record.value.is_none() {
                self.stats.expirations += 1;
            }
            Ok(())
        };
        let now = self.now;
        if let Some(c) = self.coordinator.as_mut() {
            let fx = c.append_done(now, id, result);
            self.carry(fx)?;
        }
        Ok(())
    }

    fn markers_arrive(&mut self, generation: u64, request: MarkerRequest) -> Result<(), String> {
        let marker = EndTxnMarker {
            result: request.result,
            coordinator_epoch: request.coordinator_epoch,
        };
        let mut outcomes = Vec::with_capacity(request.partitions.len());
        for tp in &request.partitions {
            if self.faulty(self.opts.marker_failure_per_mille) {
                outcomes.push((
                    tp.clone(),
                    MarkerOutcome::Failed(ResponseError::NotLeaderOrFollower),
                ));
                continue;
            }
            let outcome = self.write_marker(tp, &request, &marker)?;
            // Written, but the answer is lost on the way back.
            let outcome = if outcome == MarkerOutcome::Written
                && self.faulty(self.opts.marker_failure_per_mille / 2)
            {
                MarkerOutcome::Failed(ResponseError::NetworkException)
            } else {
                outcome
            };
            outcomes.push((tp.clone(), outcome));
        }
        let delay = self.delay();
        self.schedule(
            delay,
            Event::MarkersAnswered {
                generation,
                request,
                outcomes,
            },
        );
        Ok(())
    }

    /// A partition leader appends a marker (WriteTxnMarkers).
    fn write_marker(
        &mut self,
        tp: &TopicPartition,
        request: &MarkerRequest,
        marker: &EndTxnMarker,
    ) -> Result<MarkerOutcome, String> {
        let Some(p) = self.partitions.get_mut(tp) else {
            return Ok(MarkerOutcome::PartitionGone);
        };
        if let Err(e) = p
            .txns
            .check_marker(request.producer_id, request.producer_epoch, marker)
        {
            self.stats.markers_refused += 1;
            return Ok(MarkerOutcome::Failed(e.code()));
        }
        let offset = p.log_end;
        p.log_end += 1;
        let (completed, entry) = p.txns.apply_marker(
            request.producer_id,
            request.producer_epoch,
            marker,
            offset,
            self.now,
        );
        self.stats.markers_written += 1;
        if self.opts.trace {
            println!(
                "{:>8} {tp:?} marker {:?} at {offset} for {}/{} from coordinator epoch {}: {completed:?}",
                self.now,
                request.result,
                request.producer_id,
                request.producer_epoch,
                request.coordinator_epoch
            );
        }
        let model_open = p.open.remove(&request.producer_id);
        if completed.map(|c| c.first_offset) != model_open {
            return Err(format!(
                "{tp:?}: the marker at {offset} completed {completed:?} but the open transaction of producer {} starts at {model_open:?}",
                request.producer_id
            ));
        }
        let Some(done) = completed else {
            return Ok(MarkerOutcome::Written);
        };
        p.unreplicated.push((done.first_offset, offset));
        if done.aborted {
            p.aborted
                .push((done.producer_id, done.first_offset, done.last_offset));
            if entry.is_none() {
                return Err(format!("{tp:?}: an abort at {offset} gave no index entry"));
            }
        }
        let mut decided = Vec::new();
        for b in p.batches.iter_mut() {
            if b.producer_id == done.producer_id
                && b.first >= done.first_offset
                && b.first < done.last_offset
                && b.outcome.is_none()
            {
                b.outcome = Some(request.result);
                if !b.stray {
                    decided.push((b.identity, b.zombie));
                }
            }
        }
        for (identity, zombie) in decided {
            self.oracle.on_outcome(identity, request.result, zombie)?;
        }
        Ok(MarkerOutcome::Written)
    }

    // -----------------------------------------------------------------------------------
    // Producers
    // -----------------------------------------------------------------------------------

    fn step(&mut self, slot: usize, incarnation: u64) -> Result<(), String> {
        if self.producers[slot].incarnation != incarnation {
            return Ok(());
        }
        let data = self.data_partitions.clone();
        let groups = self.groups.clone();
        let now = self.now;
        let calm = self.calm;
        let action = self.producers[slot].decide(&mut self.rng, now, calm, &data, &groups);
        let mut next = Some(self.rng.range(10, 150));
        match action {
            Action::Wait(ms) => next = Some(ms.max(1)),
            Action::Stop => next = None,
            Action::Start => {
                let p = &mut self.producers[slot];
                p.incarnation += 1;
                p.phase = Phase::Initializing;
                p.producer_id = -1;
                p.epoch = -1;
                p.txn_seq = 0;
                p.timeout_ms = self.rng.range(2_000, 10_000) as i32;
                p.stalled_until_ms = 0;
                p.strays = 0;
                let version = self.rng.range(0, 6) as i16;
                let req = InitProducerIdRequest {
                    transactional_id: Some(p.transactional_id.clone()),
                    transaction_timeout_ms: p.timeout_ms,
                    producer_id: -1,
                    producer_epoch: -1,
                    version,
                };
                self.trace(|| {
                    format!(
                        "producer {slot} starts instance {}",
                        self.producers[slot].incarnation
                    )
                });
                self.send(slot, CallKind::Init(req));
                let incarnation = self.producers[slot].incarnation;
                let delay = self.rng.range(10, 150);
                self.schedule(delay, Event::Step { slot, incarnation });
                return Ok(());
            }
            Action::Reinit => {
                let p = &mut self.producers[slot];
                p.phase = Phase::Initializing;
                let req = InitProducerIdRequest {
                    transactional_id: Some(p.transactional_id.clone()),
                    transaction_timeout_ms: p.timeout_ms,
                    producer_id: p.producer_id,
                    producer_epoch: p.epoch,
                    version: 4,
                };
                self.send(slot, CallKind::Init(req));
            }
            Action::Begin => {
                let p = &mut self.producers[slot];
                p.phase = Phase::InTxn;
                p.txn_seq += 1;
                p.added.clear();
                p.coordinator_txn = false;
                p.abortable = false;
            }
            Action::Add(partitions) => {
                let p = &self.producers[slot];
                let version = self.rng.range(0, 4) as i16;
                let req = AddPartitionsRequest {
                    transactional_id: p.transactional_id.clone(),
                    producer_id: p.producer_id,
                    producer_epoch: p.epoch,
                    partitions,
                    verify_only: false,
                    version,
                };
                self.send(slot, CallKind::Add(req));
            }
            Action::AddOffsets(group_id) => {
                let p = &self.producers[slot];
                let req = AddOffsetsRequest {
                    transactional_id: p.transactional_id.clone(),
                    producer_id: p.producer_id,
                    producer_epoch: p.epoch,
                    group_id,
                    version: self.rng.range(0, 5) as i16,
                };
                self.send(slot, CallKind::Offsets(req));
            }
            Action::Produce(tp) => self.produce(slot, tp, true, false),
            Action::Stray(tp) => {
                let counted = self.producers[slot].phase == Phase::InTxn;
                self.produce(slot, tp, counted, true);
            }
            Action::End { commit } => {
                let p = &mut self.producers[slot];
                if !p.coordinator_txn {
                    // Nothing reached the coordinator: the client ends it by itself.
                    p.phase = Phase::Ready;
                } else {
                    p.phase = Phase::Ending;
                    let req = EndTxnRequest {
                        transactional_id: p.transactional_id.clone(),
                        producer_id: p.producer_id,
                        producer_epoch: p.epoch,
                        committed: commit,
                        version: self.rng.range(0, 5) as i16,
                    };
                    self.send(slot, CallKind::End(req));
                }
            }
        }
        if let Some(delay) = next {
            self.schedule(delay, Event::Step { slot, incarnation });
        }
        Ok(())
    }

    fn send(&mut self, slot: usize, kind: CallKind) {
        self.next_token += 1;
        let token = self.next_token;
        let p = &mut self.producers[slot];
        p.pending = Some(token);
        let call = Call {
            slot,
            incarnation: p.incarnation,
            txn_seq: p.txn_seq,
            kind,
        };
        self.trace(|| format!("producer {slot} sends {token}: {:?}", call.kind));
        self.calls.insert(token, call);
        let delay = self.delay();
        self.schedule(delay, Event::Request { token });
        self.schedule(REQUEST_TIMEOUT_MS, Event::Timeout { token });
    }

    /// The same request again, under a new token (a retry after an error or a timeout).
    fn resend(&mut self, old: Token, call: Call) {
        self.calls.remove(&old);
        let slot = call.slot;
        if self.producers[slot].incarnation != call.incarnation {
            return;
        }
        self.producers[slot].pending = None;
        let backoff = self.rng.range(20, 300);
        self.next_token += 1;
        let token = self.next_token;
        self.producers[slot].pending = Some(token);
        self.calls.insert(token, call);
        self.schedule(backoff, Event::Request { token });
        self.schedule(backoff + REQUEST_TIMEOUT_MS, Event::Timeout { token });
    }

    fn request_arrives(&mut self, token: Token) -> Result<(), String> {
        let Some(call) = self.calls.get(&token).cloned() else {
            return Ok(());
        };
        let now = self.now;
        let Some(c) = self.coordinator.as_mut() else {
            // The connection is refused; the producer finds out at its timeout.
            return Ok(());
        };
        let fx = match call.kind {
            CallKind::Init(req) => c.init_producer_id(now, token, req),
            CallKind::Add(req) => c.add_partitions(now, token, req, &|_| true),
            CallKind::Offsets(req) => c.add_offsets(now, token, req),
            CallKind::End(req) => c.end_txn(now, token, req),
        };
        self.carry(fx)
    }

    fn reply_arrives(&mut self, reply: Reply) -> Result<(), String> {
        let token = reply.token();
        let Some(call) = self.calls.get(&token).cloned() else {
            return Ok(());
        };
        let slot = call.slot;
        if self.producers[slot].pending != Some(token)
            || self.producers[slot].incarnation != call.incarnation
        {
            return Ok(());
        }
        self.trace(|| format!("producer {slot} gets {reply:?}"));
        let error = match &reply {
            Reply::InitProducerId(_, r) => r.error,
            Reply::AddPartitions(_, results) => results.iter().find_map(|(_, e)| *e),
            Reply::AddOffsets(_, e) | Reply::EndTxn(_, e) => *e,
        };
        if let Some(error) = error {
            match classify(error) {
                Reaction::Retry => {
                    self.resend(token, call);
                    return Ok(());
                }
                Reaction::Abortable => {
                    self.calls.remove(&token);
                    let p = &mut self.producers[slot];
                    p.pending = None;
                    p.abortable = true;
                }
                Reaction::Fatal => {
                    self.calls.remove(&token);
                    if matches!(
                        error,
                        ResponseError::ProducerFenced | ResponseError::InvalidProducerEpoch
                    ) {
                        self.stats.fenced_answers += 1;
                    }
                    self.trace(|| format!("producer {slot} dies: {error:?}"));
                    self.producers[slot].die(&mut self.rng);
                }
            }
            return Ok(());
        }
        self.calls.remove(&token);
        let p = &mut self.producers[slot];
        p.pending = None;
        match (call.kind, reply) {
            (CallKind::Init(_), Reply::InitProducerId(_, r)) => {
                p.producer_id = r.producer_id;
                p.epoch = r.producer_epoch;
                p.phase = Phase::Ready;
            }
            (CallKind::Add(req), Reply::AddPartitions(..))
                if p.phase == Phase::InTxn && p.txn_seq == call.txn_seq =>
            {
                p.added.extend(req.partitions);
                p.coordinator_txn = true;
            }
            (CallKind::Offsets(_), Reply::AddOffsets(..))
                if p.phase == Phase::InTxn && p.txn_seq == call.txn_seq =>
            {
                p.coordinator_txn = true;
            }
            (CallKind::End(req), Reply::EndTxn(..)) => {
                p.phase = Phase::Ready;
                if req.committed {
                    self.stats.commits += 1;
                } else {
                    self.stats.aborts += 1;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn produce(&mut self, slot: usize, tp: TopicPartition, counted: bool, stray: bool) {
        let p = &mut self.producers[slot];
        if p.producer_id < 0 {
            return;
        }
        if counted {
            p.outstanding += 1;
        }
        self.next_produce += 1;
        let id = self.next_produce;
        let records = self.rng.range(1, 4);
        let produce = Produce {
            slot,
            incarnation: p.incarnation,
            txn_seq: p.txn_seq,
            transactional_id: p.transactional_id.clone(),
            tp,
            producer_id: p.producer_id,
            epoch: p.epoch,
            records,
            counted,
            stray,
            guard: None,
        };
        self.trace(|| format!("producer {slot} writes {id}: {produce:?}"));
        self.produces.insert(id, produce);
        let delay = self.delay();
        self.schedule(delay, Event::ProduceArrive { id });
        if counted {
            self.schedule(DELIVERY_TIMEOUT_MS, Event::DeliveryTimeout { id });
        }
    }

    fn produce_arrives(&mut self, id: u64) -> Result<(), String> {
        let Some(produce) = self.produces.get(&id).cloned() else {
            return Ok(());
        };
        let now = self.now;
        let Some(p) = self.partitions.get_mut(&produce.tp) else {
            return Ok(());
        };
        match p
            .txns
            .start_verification(produce.producer_id, produce.epoch, 0, now)
        {
            None => self.try_append(id)?,
            Some(guard) => {
                if let Some(pr) = self.produces.get_mut(&id) {
                    pr.guard = Some(guard);
                }
                let delay = self.delay();
                self.schedule(delay, Event::VerifyArrive { id });
            }
        }
        Ok(())
    }

    /// The partition leader appends a transactional batch, if the partition accepts it.
    fn try_append(&mut self, id: u64) -> Result<(), String> {
        let Some(produce) = self.produces.get(&id).cloned() else {
            return Ok(());
        };
        let zombie = self.oracle.is_zombie(
            &produce.transactional_id,
            produce.producer_id,
            produce.epoch,
        );
        let now = self.now;
        let Some(p) = self.partitions.get_mut(&produce.tp) else {
            return Ok(());
        };
        if let Err(e) = p.txns.check_data_batch(
            produce.producer_id,
            produce.epoch,
            true,
            produce.guard,
            true,
        ) {
            self.stats.batches_refused += 1;
            self.trace(|| format!("{:?} refuses {id}: {e:?}", produce.tp));
            self.produce_answered(id, Some(e.code()));
            return Ok(());
        }
        if zombie {
            return Err(format!(
                "{:?} appended a batch of {} with {}/{} after a newer epoch was handed out",
                produce.tp, produce.transactional_id, produce.producer_id, produce.epoch
            ));
        }
        let first = p.log_end;
        let last = first + produce.records - 1;
        p.log_end = last + 1;
        p.txns
            .apply_data_batch(produce.producer_id, produce.epoch, first, last, true, now);
        p.open.entry(produce.producer_id).or_insert(first);
        p.batches.push(SimBatch {
            producer_id: produce.producer_id,
            first,
            identity: (produce.slot, produce.incarnation, produce.txn_seq),
            zombie,
            stray: produce.stray,
            outcome: None,
        });
        self.stats.batches += 1;
        self.trace(|| {
            format!(
                "{:?} appends {id} at {first}..={last} (zombie: {zombie})",
                produce.tp
            )
        });
        self.produce_answered(id, None);
        Ok(())
    }

    fn produce_answered(&mut self, id: u64, error: ErrorCode) {
        // Produce answers are never lost; a producer waits for them up to its delivery
        // timeout, then gives up and aborts.
        let delay = self.rng.range(1, 40);
        self.schedule(delay, Event::ProduceDone { id, error });
    }

    fn produce_done(&mut self, id: u64, error: ErrorCode) {
        let Some(produce) = self.produces.remove(&id) else {
            return;
        };
        let p = &mut self.producers[produce.slot];
        if p.incarnation != produce.incarnation || !produce.counted {
            return;
        }
        let Some(error) = error else {
            p.outstanding -= 1;
            return;
        };
        match classify(error) {
            Reaction::Retry if p.phase == Phase::InTxn => {
                // Sent again (still outstanding), verified again at the partition.
                self.next_produce += 1;
                let new_id = self.next_produce;
                self.produces.insert(
                    new_id,
                    Produce {
                        guard: None,
                        ..produce
                    },
                );
                let delay = self.rng.range(20, 200);
                self.schedule(delay, Event::ProduceArrive { id: new_id });
                self.schedule(DELIVERY_TIMEOUT_MS, Event::DeliveryTimeout { id: new_id });
            }
            Reaction::Retry | Reaction::Abortable => {
                p.outstanding -= 1;
                p.abortable = true;
            }
            Reaction::Fatal => {
                p.outstanding -= 1;
                if matches!(
                    error,
                    ResponseError::InvalidProducerEpoch | ResponseError::ProducerFenced
                ) {
                    self.stats.fenced_answers += 1;
                }
                self.producers[produce.slot].die(&mut self.rng);
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Invariants
    // -----------------------------------------------------------------------------------

    fn check(&mut self) -> Result<(), String> {
        if let Some(c) = &self.coordinator {
            if matches!(c.status(), Status::Active { .. }) && !self.ambiguous {
                self.oracle.compare(c)?;
            }
        }
        for (tp, p) in &self.partitions {
            let lso = p.txns.last_stable_offset(p.high_watermark);
            if lso > p.high_watermark {
                return Err(format!(
                    "{tp:?}: LSO {lso} above the high watermark {}",
                    p.high_watermark
                ));
            }
            if let Some(first) = p.open.values().min() {
                if lso > *first {
                    return Err(format!(
                        "{tp:?}: LSO {lso} passed the open transaction at {first}"
                    ));
                }
            }
            let unstable = p
                .open
                .values()
                .copied()
                .chain(p.unreplicated.iter().map(|(first, _)| *first))
                .min();
            let expect = unstable.map_or(p.high_watermark, |u| u.min(p.high_watermark));
            if lso != expect {
                return Err(format!("{tp:?}: LSO {lso}, the model says {expect}"));
            }
        }
        Ok(())
    }

    fn final_checks(&mut self) -> Result<(), String> {
        let Some(c) = &self.coordinator else {
            return Err("no coordinator at the end".into());
        };
        if !matches!(c.status(), Status::Active { .. }) {
            return Err(format!("the coordinator is {:?} at the end", c.status()));
        }
        for m in c.transactions() {
            if m.pending.is_some()
                || matches!(
                    m.state,
                    TransactionState::Ongoing
                        | TransactionState::PrepareCommit
                        | TransactionState::PrepareAbort
                )
            {
                return Err(format!(
                    "{} did not settle: {:?} (pending {:?})",
                    m.transactional_id, m.state, m.pending
                ));
            }
        }
        // The state is what a coordinator loading the log from its bytes gets.
        let mut fresh = TxnCoordinator::new(self.config.clone(), 0);
        let records = self.decoded_log()?;
        fresh.load(self.now, self.coordinator_epoch + 1, &records);
        for m in c.transactions() {
            let f = fresh.transaction(&m.transactional_id);
            let same = f.is_some_and(|f| {
                (
                    f.producer_id,
                    f.producer_epoch,
                    f.state,
                    &f.partitions,
                    f.timeout_ms,
                ) == (
                    m.producer_id,
                    m.producer_epoch,
                    m.state,
                    &m.partitions,
                    m.timeout_ms,
                )
            });
            if !same && m.producer_epoch >= 0 {
                return Err(format!(
                    "{} differs from a fresh load of the log: {m:?} vs {f:?}",
                    m.transactional_id
                ));
            }
        }
        for (tp, p) in &self.partitions {
            if let Some((first, pid)) = p.txns.ongoing().next() {
                return Err(format!(
                    "{tp:?}: the transaction of producer {pid} from offset {first} never ended"
                ));
            }
            if p.txns.last_stable_offset(p.log_end) != p.log_end {
                return Err(format!("{tp:?}: the LSO did not reach the log end"));
            }
            if let Some(b) = p.batches.iter().find(|b| b.outcome.is_none()) {
                return Err(format!("{tp:?}: batch {b:?} was never decided"));
            }
            let indexed: Vec<(i64, i64, i64)> = p
                .txns
                .aborted_in_range(0, p.log_end)
                .iter()
                .map(|e| (e.producer_id, e.first_offset, e.last_offset))
                .collect();
            if indexed != p.aborted {
                return Err(format!(
                    "{tp:?}: the aborted index {indexed:?} differs from the aborts {:?}",
                    p.aborted
                ));
            }
        }
        for (identity, result) in self.oracle.decided() {
            if let Some(outcome) = self.oracle.outcome(identity) {
                if outcome != *result {
                    return Err(format!(
                        "{identity:?}: answered {result:?}, ended {outcome:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// FNV-1a over the log and the partitions' offsets.
    fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for (k, v) in &self.log {
            eat(k);
            eat(v.as_deref().unwrap_or(b"-"));
        }
        for (tp, p) in &self.partitions {
            eat(tp.topic.as_bytes());
            eat(&tp.partition.to_be_bytes());
            eat(&p.log_end.to_be_bytes());
        }
        eat(&self.stats.events.to_be_bytes());
        h
    }
}
