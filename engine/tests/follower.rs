//! A follower's log on the simulated disk: the leader's batches appended as they are
//! (offsets, leader epochs and bytes kept), refusals that append nothing, idempotent
//! producers' state rebuilt from replicated batches, truncation and truncate-fully with
//! their epoch checkpoint and producer state, OffsetForLeaderEpoch answers, and crashes at
//! every step of a follower's truncate-then-append that recover to a log the follower can
//! go on from.

use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;
use proptest::prelude::*;
use wharf_engine::log::{check_follower_batches, FollowerRefusal};
use wharf_engine::sim::{FaultConfig, Runtime, SimDisk, SimStorage};
use wharf_engine::{
    BatchCache, Durability, EngineError, LogConfig, Offset, PartitionLog, TimestampType,
};
use wharf_protocol::batch::{
    batches, set_base_offset, set_partition_leader_epoch, validate_batch_with, BatchBuilder,
    CountRule,
};
use wharf_protocol::txn::control::{EndTxnMarker, TransactionResult};

type Log = PartitionLog<SimStorage>;

const DIR: &str = "/data/replicated-0";

struct Sim {
    rt: Runtime,
    disk: SimDisk,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let rt = Runtime::new(seed);
        let disk = SimDisk::new(&rt, seed, 64 << 20, FaultConfig::default());
        Sim { rt, disk }
    }

    fn run<T: 'static>(&self, fut: impl std::future::Future<Output = T> + 'static) -> T {
        let result = self.rt.spawn_with_result(fut);
        self.rt.run_until_stalled();
        result.take().expect("the task finished")
    }

    fn open_with(&self, config: LogConfig) -> Rc<Log> {
        let storage = SimStorage::new(self.disk.clone());
        Rc::new(
            self.run(Log::open_with(
                storage,
                PathBuf::from(DIR),
                config,
                BatchCache::new(1 << 20),
            ))
            .expect("the log opens"),
        )
    }

    fn open(&self) -> Rc<Log> {
        self.open_with(config())
    }

    /// A machine crash: tasks dropped, what was not synced lost, torn or reordered.
    fn crash(&self) {
        self.rt.crash();
        self.disk.crash();
    }

    fn follow(&self, log: &Rc<Log>, records: Bytes) -> Result<(i64, i64), EngineError> {
        let log = log.clone();
        self.run(async move {
            log.append_as_follower(records, Durability::Synced)
                .await
                .map(|a| (a.base_offset.0, a.last_offset.0))
        })
    }

    /// Every batch the log serves from its start: `(base offset, bytes)`.
    fn read_all(&self, log: &Rc<Log>) -> Vec<(i64, Bytes)> {
        let log = log.clone();
        self.run(async move {
            let mut out = Vec::new();
            let mut from = log.log_start_offset().0;
            loop {
                let bytes = log.read(Offset(from), 1 << 20).await.expect("reads work");
                if bytes.is_empty() {
                    return out;
                }
                for (pos, b) in batches(&bytes) {
                    let info =
                        validate_batch_with(b, usize::MAX, CountRule::AtMost).expect("valid");
                    out.push((info.base_offset, bytes.slice(pos..pos + b.len())));
                    from = info.last_offset() + 1;
                }
            }
        })
    }

    fn check_invariants(&self, log: &Rc<Log>) {
        let log = log.clone();
        let checked = self.run(async move { log.check_invariants(&[]).await });
        if let Err(e) = checked {
            panic!("the log's invariants: {e}");
        }
    }
}

/// Small segments and a dense index, so that appends roll and truncations cut old segments.
fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 900,
        index_interval_bytes: 128,
        ..LogConfig::default()
    }
}

/// A batch as a leader stored it: offsets from `base`, leader epoch `epoch`, `records`
/// records whose values name `tag`.
fn stored(base: i64, epoch: i32, records: usize, tag: u64) -> Bytes {
    stamp(BatchBuilder::new(), base, epoch, records, tag)
}

fn stamp(mut builder: BatchBuilder, base: i64, epoch: i32, records: usize, tag: u64) -> Bytes {
    for i in 0..records {
        let value = format!("batch {tag} record {i}");
        builder.push(
            Some(&tag.to_be_bytes()),
            Some(value.as_bytes()),
            &[],
            1_000 + i as i64,
        );
    }
    let mut bytes = builder.build();
    set_base_offset(&mut bytes, base);
    set_partition_leader_epoch(&mut bytes, epoch);
    Bytes::from(bytes)
}

/// A leader's log: batches with their offsets and epochs, built as a leader would.
#[derive(Clone, Default)]
struct Leader {
    batches: Vec<(i64, i32, Bytes)>,
    end: i64,
    tags: u64,
}

impl Leader {
    fn starting_at(end: i64) -> Leader {
        Leader {
            end,
            ..Leader::default()
        }
    }

    fn write(&mut self, epoch: i32, records: usize) -> Bytes {
        self.tags += 1;
        let bytes = stored(self.end, epoch, records, self.tags + 1000 * epoch as u64);
        self.batches.push((self.end, epoch, bytes.clone()));
        self.end += records as i64;
        bytes
    }

    /// The batches from `from` (a batch's base offset) to the end, laid end to end.
    fn from(&self, from: i64) -> Bytes {
        let mut out = Vec::new();
        for (base, _, b) in &self.batches {
            if *base >= from {
                out.extend_from_slice(b);
            }
        }
        Bytes::from(out)
    }

    /// The leader's history cut at `offset` (a batch boundary).
    fn truncated(&self, offset: i64) -> Leader {
        let mut cut = self.clone();
        cut.batches.retain(|(base, _, _)| *base < offset);
        cut.end = offset;
        cut
    }
}

fn concat(parts: &[Bytes]) -> Bytes {
    Bytes::from(parts.iter().flat_map(|b| b.to_vec()).collect::<Vec<u8>>())
}

/// The epoch cache the batches imply: each epoch at its first offset.
fn epochs_of(batches: &[(i64, Bytes)]) -> Vec<(i32, Offset)> {
    let mut out: Vec<(i32, Offset)> = Vec::new();
    for (base, b) in batches {
        let epoch = validate_batch_with(b, usize::MAX, CountRule::AtMost)
            .expect("valid")
            .partition_leader_epoch;
        if out.last().is_none_or(|&(e, _)| e < epoch) {
            out.push((epoch, Offset(*base)));
        }
    }
    out
}

#[test]
fn a_follower_keeps_the_leaders_bytes_offsets_and_epochs() {
    let sim = Sim::new(1);
    // LogAppendTime on the follower must not restamp what the leader stored.
    let log = sim.open_with(LogConfig {
        message_timestamp_type: TimestampType::LogAppendTime,
        ..config()
    });
    let mut leader = Leader::default();
    for (epoch, records) in [(1, 3), (1, 2), (3, 4), (4, 1), (4, 5), (4, 2)] {
        leader.write(epoch, records);
    }
    // Two fetches: up to offset 9 (epochs 1 and 3), then the rest.
    let first = concat(&[
        leader.batches[0].2.clone(),
        leader.batches[1].2.clone(),
        leader.batches[2].2.clone(),
    ]);
    assert_eq!(sim.follow(&log, first).expect("follows"), (0, 8));
    assert_eq!(sim.follow(&log, leader.from(9)).expect("follows"), (9, 16));
    let expect: Vec<(i64, Bytes)> = leader
        .batches
        .iter()
        .map(|(base, _, b)| (*base, b.clone()))
        .collect();
    assert_eq!(
        sim.read_all(&log),
        expect,
        "byte for byte, at the leader's offsets"
    );
    assert_eq!(
        log.leader_epochs(),
        vec![(1, Offset(0)), (3, Offset(5)), (4, Offset(9))]
    );
    assert_eq!(log.log_end_offset(), Offset(17));
    assert!(log.segment_count() > 1, "the appends rolled segments");
    sim.check_invariants(&log);
    // Synced: a crash keeps it all, epochs included.
    drop(log);
    sim.crash();
    let log = sim.open();
    assert_eq!(sim.read_all(&log), expect);
    assert_eq!(
        log.leader_epochs(),
        vec![(1, Offset(0)), (3, Offset(5)), (4, Offset(9))]
    );
    sim.check_invariants(&log);
}

#[test]
fn offset_for_leader_epoch_follows_kafka() {
    let sim = Sim::new(2);
    let log = sim.open();
    // Nothing yet: every answer is UNDEFINED.
    assert_eq!(log.end_offset_for_leader_epoch(0), None);
    let mut leader = Leader::default();
    for (epoch, records) in [(2, 3), (2, 2), (5, 4), (7, 1)] {
        leader.write(epoch, records);
    }
    sim.follow(&log, leader.from(0)).expect("follows");
    // KIP-101/279: for epoch E, the largest epoch <= E that the log knows and the start
    // of the first epoch after it; the log end for the latest.
    assert_eq!(log.end_offset_for_leader_epoch(7), Some((7, Offset(10))));
    assert_eq!(log.end_offset_for_leader_epoch(6), Some((5, Offset(9))));
    assert_eq!(log.end_offset_for_leader_epoch(5), Some((5, Offset(9))));
    assert_eq!(log.end_offset_for_leader_epoch(3), Some((2, Offset(5))));
    assert_eq!(log.end_offset_for_leader_epoch(2), Some((2, Offset(5))));
    // Below the earliest epoch known: Kafka answers the epoch asked for, ending where
    // the known history starts (LeaderEpochFileCache.endOffsetFor).
    assert_eq!(log.end_offset_for_leader_epoch(1), Some((1, Offset(0))));
    // Past the latest, or no epoch: UNDEFINED.
    assert_eq!(log.end_offset_for_leader_epoch(8), None);
    assert_eq!(log.end_offset_for_leader_epoch(-1), None);
    // A truncation to the end of epoch 2 makes it the latest: it ends at the new log
    // end, and the epochs past it are unknown again.
    let cut = {
        let log = log.clone();
        sim.run(async move { log.truncate_to(Offset(5)).await })
    };
    cut.expect("truncates");
    assert_eq!(log.leader_epochs(), vec![(2, Offset(0))]);
    assert_eq!(log.end_offset_for_leader_epoch(2), Some((2, Offset(5))));
    assert_eq!(log.end_offset_for_leader_epoch(5), None);
}

#[test]
fn refused_batches_append_nothing() {
    let sim = Sim::new(3);
    let log = sim.open();
    let mut leader = Leader::default();
    leader.write(1, 3);
    leader.write(3, 2);
    sim.follow(&log, leader.from(0)).expect("follows");
    let before = sim.read_all(&log);
    let next = stored(5, 3, 2, 99);
    let refusals: Vec<(&str, Bytes)> = vec![
        ("a gap", stored(7, 3, 2, 99)),
        ("an overlap", stored(3, 3, 2, 99)),
        ("an older epoch", stored(5, 2, 2, 99)),
        ("no epoch", stored(5, -1, 2, 99)),
        ("a flipped bit under the CRC", {
            let mut v = next.to_vec();
            let at = v.len() - 3;
            v[at] ^= 0x10;
            Bytes::from(v)
        }),
        (
            "a good batch, then a partial one",
            concat(&[next.clone(), stored(7, 3, 2, 100).slice(..40)]),
        ),
        (
            "a good batch, then one that does not follow",
            concat(&[next.clone(), stored(8, 3, 2, 100)]),
        ),
        ("nothing", Bytes::new()),
    ];
    for (what, records) in refusals {
        let refused = sim.follow(&log, records);
        assert!(refused.is_err(), "{what}: refused");
        assert_eq!(log.log_end_offset(), Offset(5), "{what}: nothing appended");
        assert_eq!(sim.read_all(&log), before, "{what}: the log is as it was");
    }
    assert!(matches!(
        sim.follow(&log, stored(7, 3, 1, 1)),
        Err(EngineError::FollowerRefused(_))
    ));
    // The log takes the right batch after all that.
    assert_eq!(sim.follow(&log, next).expect("follows"), (5, 6));
    sim.check_invariants(&log);
}

/// A COMMIT or ABORT marker of producer `pid` as a leader stored it at `base`.
fn marker(pid: i64, epoch: i16, commit: bool, base: i64, leader_epoch: i32) -> Bytes {
    let marker = EndTxnMarker {
        result: TransactionResult::from_committed(commit),
        coordinator_epoch: 0,
    };
    let mut bytes = marker.to_batch(pid, epoch, 2_000);
    set_base_offset(&mut bytes, base);
    set_partition_leader_epoch(&mut bytes, leader_epoch);
    Bytes::from(bytes)
}

#[test]
fn a_follower_takes_transactional_batches_and_markers_as_the_leader_stored_them() {
    let sim = Sim::new(7);
    let log = sim.open();
    // Producer 9's transaction (two batches) committed, producer 10's aborted, with plain
    // records in between: what a leader writes for two transactions.
    let txn = |seq: i32| BatchBuilder::new().producer(9, 2, seq).transactional(true);
    let parts = vec![
        (0, stamp(txn(0), 0, 1, 2, 1)),
        (
            2,
            stamp(
                BatchBuilder::new().producer(10, 0, 0).transactional(true),
                2,
                1,
                1,
                2,
            ),
        ),
        (3, stored(3, 1, 1, 3)),
        (4, stamp(txn(2), 4, 1, 2, 4)),
        (6, marker(9, 2, true, 6, 1)),
        (7, marker(10, 0, false, 7, 2)),
    ];
    let all = concat(&parts.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>());
    assert_eq!(sim.follow(&log, all).expect("follows"), (0, 7));
    assert_eq!(sim.read_all(&log), parts, "byte for byte, markers included");
    // The transactional batches' sequences make the idempotence state, as on the leader
    // (markers carry no sequence and add no producer).
    let states = log.producer_states();
    assert_eq!(states.len(), 2);
    sim.check_invariants(&log);
    // A marker with a bad CRC is still refused.
    let mut bad = marker(9, 2, false, 8, 2).to_vec();
    let at = bad.len() - 2;
    bad[at] ^= 0x01;
    assert!(sim.follow(&log, Bytes::from(bad)).is_err());
    assert_eq!(log.log_end_offset(), Offset(8));
}

/// A batch builder for producer `pid`/`epoch` from sequence `seq`.
fn idempotent(pid: i64, epoch: i16, seq: i32) -> BatchBuilder {
    BatchBuilder::new().producer(pid, epoch, seq)
}

#[test]
fn producer_state_comes_from_the_replicated_batches_so_a_retry_after_failover_is_a_duplicate() {
    let sim = Sim::new(4);
    let log = sim.open();
    // The old leader's log: producer 42 wrote sequences 0-2 and 3-4, producer 43 0-1.
    let b0 = stamp(idempotent(42, 0, 0), 0, 1, 3, 1);
    let b1 = stamp(BatchBuilder::new(), 3, 1, 2, 2);
    let b2 = stamp(idempotent(42, 0, 3), 5, 2, 2, 3);
    let b3 = stamp(idempotent(43, 5, 0), 7, 2, 2, 4);
    sim.follow(&log, concat(&[b0, b1, b2.clone(), b3]))
        .expect("follows");
    let states = log.producer_states();
    assert_eq!(states.len(), 2, "both producers are known");
    // This replica becomes leader (epoch 3); producer 42 retries its last batch because
    // the old leader's answer was lost: it is answered with the offsets it got there.
    let retry = |sim: &Sim, log: &Rc<Log>, batch: Bytes| {
        let log = log.clone();
        sim.run(async move { log.append(batch, 3, Durability::Synced).await })
    };
    // A producer's batch is not stamped: strip the leader's stamping to base 0, epoch -1.
    let as_sent = |stored: &Bytes| {
        let mut v = stored.to_vec();
        set_base_offset(&mut v, 0);
        set_partition_leader_epoch(&mut v, -1);
        Bytes::from(v)
    };
    let answer = retry(&sim, &log, as_sent(&b2)).expect("a duplicate is answered");
    assert_eq!(
        (answer.base_offset, answer.last_offset),
        (Offset(5), Offset(6))
    );
    assert_eq!(log.log_end_offset(), Offset(9), "not appended again");
    // The next sequence goes on; a gap is refused.
    let next = as_sent(&stamp(idempotent(42, 0, 5), 0, 0, 1, 5));
    let answer = retry(&sim, &log, next).expect("the next sequence");
    assert_eq!(answer.base_offset, Offset(9));
    let gap = as_sent(&stamp(idempotent(42, 0, 9), 0, 0, 1, 6));
    assert!(matches!(
        retry(&sim, &log, gap),
        Err(EngineError::OutOfOrderSequence(_))
    ));
    // And after a crash, from what is on disk: the duplicate is still one.
    drop(log);
    sim.crash();
    let log = sim.open();
    let answer = retry(&sim, &log, as_sent(&b2)).expect("still a duplicate");
    assert_eq!(
        (answer.base_offset, answer.last_offset),
        (Offset(5), Offset(6))
    );
    assert_eq!(log.log_end_offset(), Offset(10));
    sim.check_invariants(&log);
}

#[test]
fn truncation_forgets_the_epochs_and_producers_past_the_cut() {
    let sim = Sim::new(5);
    let log = sim.open();
    let b0 = stamp(idempotent(42, 0, 0), 0, 1, 3, 1);
    let b1 = stamp(idempotent(42, 0, 3), 3, 2, 2, 2);
    let b2 = stamp(idempotent(77, 0, 0), 5, 3, 2, 3);
    sim.follow(&log, concat(&[b0, b1, b2])).expect("follows");
    let cut = {
        let log = log.clone();
        sim.run(async move { log.truncate_to(Offset(3)).await })
    };
    cut.expect("truncates");
    assert_eq!(log.leader_epochs(), vec![(1, Offset(0))]);
    let states = log.producer_states();
    assert_eq!(states.len(), 1, "producer 77 had only batches past the cut");
    // The new leader's batch at the cut carries an epoch the old log had past it.
    let mut leader = Leader::starting_at(3);
    leader.write(2, 4);
    sim.follow(&log, leader.from(3))
        .expect("follows after the cut");
    assert_eq!(log.leader_epochs(), vec![(1, Offset(0)), (2, Offset(3))]);
    sim.check_invariants(&log);
    drop(log);
    sim.crash();
    let log = sim.open();
    assert_eq!(log.leader_epochs(), vec![(1, Offset(0)), (2, Offset(3))]);
    assert_eq!(log.log_end_offset(), Offset(7));
    sim.check_invariants(&log);
}

/// What a follower does at a divergence: `change` (a truncation), then the leader's
/// branch appended, synced. Crashes the machine after every number of executor steps
/// until the whole thing finishes before the crash; after each crash the reopened log
/// must be one the follower can go on from (`check`), and doing the change and the append
/// again must give the leader's log.
fn crash_at_every_step(
    setup: &Leader,
    change: impl Fn(
        Rc<Log>,
    )
        -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), EngineError>>>>,
    branch: &Leader,
    branch_from: i64,
    check: impl Fn(&[(i64, Bytes)], &Rc<Log>),
) -> u64 {
    let expect: Vec<(i64, Bytes)> = branch
        .batches
        .iter()
        .map(|(base, _, b)| (*base, b.clone()))
        .collect();
    for steps in 0..5_000u64 {
        let sim = Sim::new(steps);
        let log = sim.open();
        sim.follow(&log, setup.from(0)).expect("the setup follows");
        let records = branch.from(branch_from);
        let task = {
            let log = log.clone();
            let changed = change(log.clone());
            sim.rt.spawn_with_result(async move {
                changed.await?;
                log.append_as_follower(records, Durability::Synced).await
            })
        };
        sim.rt.run_for(steps);
        let finished = task.take();
        drop(log);
        sim.crash();
        let log = sim.open();
        let found = sim.read_all(&log);
        sim.check_invariants(&log);
        assert_eq!(
            log.leader_epochs(),
            epochs_of(&found),
            "after {steps} steps: the epochs are the batches'"
        );
        check(&found, &log);
        if let Some(result) = &finished {
            result.as_ref().expect("the truncation and append succeed");
            assert_eq!(
                found, expect,
                "after {steps} steps: finished and synced before the crash"
            );
            return steps;
        }
        // The follower starts over: the change again, then the branch.
        let again = change(log.clone());
        sim.run(again).expect("the change again after the crash");
        sim.follow(&log, branch.from(branch_from))
            .expect("the branch follows after recovery");
        assert_eq!(sim.read_all(&log), expect, "after {steps} steps: converged");
        sim.check_invariants(&log);
    }
    panic!("the truncation and append never finished");
}

#[test]
fn a_crash_at_any_step_of_a_truncation_and_append_recovers_to_a_log_the_follower_goes_on_from() {
    let mut old = Leader::default();
    for (epoch, records) in [(1, 4), (1, 3), (2, 5), (2, 2), (3, 6), (3, 3), (3, 2)] {
        old.write(epoch, records);
    }
    // The new leader's log: the same up to offset 12 (inside epoch 2), then epoch 4.
    let mut branch = old.truncated(12);
    branch.tags = 500;
    for records in [3, 4, 2, 5] {
        branch.write(4, records);
    }
    let old_batches: Vec<(i64, Bytes)> = old
        .batches
        .iter()
        .map(|(b, _, x)| (*b, x.clone()))
        .collect();
    let new_batches: Vec<(i64, Bytes)> = branch
        .batches
        .iter()
        .map(|(b, _, x)| (*b, x.clone()))
        .collect();
    let steps = crash_at_every_step(
        &old,
        |log| Box::pin(async move { log.truncate_to(Offset(12)).await }),
        &branch,
        12,
        |found, _| {
            // Below the cut: the common history; past it, all old or all new, in order.
            let from_old = found.iter().all(|b| old_batches.contains(b));
            let from_new = found.iter().all(|b| new_batches.contains(b));
            assert!(
                from_old || from_new,
                "a prefix of one history: {:?}",
                found.iter().map(|b| b.0).collect::<Vec<_>>()
            );
            assert!(
                found.len() >= 3 && found[..3] == old_batches[..3],
                "the synced common history (to offset 12) survives"
            );
        },
    );
    assert!(
        steps > 10,
        "the crash points covered the work ({steps} steps)"
    );
}

#[test]
fn a_crash_at_any_step_of_truncate_fully_and_start_at_recovers_to_either_log() {
    let mut old = Leader::default();
    for (epoch, records) in [(1, 4), (2, 5), (3, 6), (3, 3)] {
        old.write(epoch, records);
    }
    // The leader's log starts at 100 and its epoch there (2) is older than the follower's
    // latest (3): only a restart that forgets the old epochs lets the follower take it.
    let mut branch = Leader::starting_at(100);
    branch.tags = 500;
    for (epoch, records) in [(2, 3), (2, 4), (5, 2)] {
        branch.write(epoch, records);
    }
    let old_batches: Vec<(i64, Bytes)> = old
        .batches
        .iter()
        .map(|(b, _, x)| (*b, x.clone()))
        .collect();
    let new_batches: Vec<(i64, Bytes)> = branch
        .batches
        .iter()
        .map(|(b, _, x)| (*b, x.clone()))
        .collect();
    let steps = crash_at_every_step(
        &old,
        |log| Box::pin(async move { log.truncate_fully_and_start_at(Offset(100)).await }),
        &branch,
        100,
        |found, log| {
            let from_old = found.iter().all(|b| old_batches.contains(b))
                && found.first().is_none_or(|b| b.0 == 0);
            let from_new = found.iter().all(|b| new_batches.contains(b))
                && log.log_start_offset() == Offset(100);
            assert!(
                from_old || from_new,
                "the old log from its start, or the new one from 100: start {:?} batches {:?}",
                log.log_start_offset(),
                found.iter().map(|b| b.0).collect::<Vec<_>>()
            );
        },
    );
    assert!(
        steps > 10,
        "the crash points covered the work ({steps} steps)"
    );
}

/// A leader's history for the property below: `(epoch bump, records)` per batch.
fn history() -> impl Strategy<Value = Vec<(i32, usize)>> {
    prop::collection::vec((0..3i32, 1..6usize), 1..8)
}

#[derive(Clone, Debug)]
enum Damage {
    None,
    /// The base offset of batch `n` moved by `by` (not 0).
    Offset(usize, i64),
    /// A byte under the CRC of batch `n` flipped.
    Flip(usize, usize),
    /// Batch `n` carries an epoch below the one before it (or the log's latest).
    EpochBack(usize),
    /// The bytes cut short by `by` (1 or more).
    Short(usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        2 => Just(Damage::None),
        1 => (0..8usize, prop_oneof![-3..0i64, 1..4i64]).prop_map(|(n, by)| Damage::Offset(n, by)),
        1 => (0..8usize, 21..200usize).prop_map(|(n, at)| Damage::Flip(n, at)),
        1 => (0..8usize).prop_map(Damage::EpochBack),
        1 => (1..40usize).prop_map(Damage::Short),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The follower's checks accept exactly a leader's contiguous, intact batches with
    /// epochs that never go down, and say where each one is.
    #[test]
    fn the_follower_checks_accept_exactly_a_leaders_intact_batches(
        log_end in 0..1_000i64,
        latest in prop::option::of(0..5i32),
        shape in history(),
        damage in damage(),
    ) {
        let mut leader = Leader::starting_at(log_end);
        let mut epoch = latest.unwrap_or(0);
        for (bump, records) in &shape {
            epoch += bump;
            leader.write(epoch, *records);
        }
        let mut parts: Vec<Vec<u8>> = leader.batches.iter().map(|(_, _, b)| b.to_vec()).collect();
        let n = parts.len();
        let mut damaged = true;
        match damage {
            Damage::None => damaged = false,
            Damage::Offset(i, by) => {
                let i = i % n;
                let base = leader.batches[i].0 + by;
                set_base_offset(&mut parts[i], base);
            }
            Damage::Flip(i, at) => {
                let i = i % n;
                let at = at % parts[i].len();
                parts[i][at.max(21)] ^= 0x01;
            }
            Damage::EpochBack(i) => {
                let i = i % n;
                let floor = if i == 0 { latest.unwrap_or(0) } else { leader.batches[i - 1].1 };
                set_partition_leader_epoch(&mut parts[i], floor - 1);
            }
            Damage::Short(by) => {
                let last = parts.last_mut().expect("a batch");
                let keep = last.len().saturating_sub(by);
                last.truncate(keep);
            }
        }
        let bytes: Vec<u8> = parts.concat();
        let checked = check_follower_batches(&bytes, log_end, latest);
        if damaged {
            prop_assert!(checked.is_err(), "{:?} was accepted", damage);
        } else {
            let infos = checked.expect("a leader's intact batches");
            prop_assert_eq!(infos.len(), n);
            for ((_, info), (base, epoch, b)) in infos.iter().zip(&leader.batches) {
                prop_assert_eq!(info.base_offset, *base);
                prop_assert_eq!(info.partition_leader_epoch, *epoch);
                prop_assert_eq!(info.size_bytes, b.len());
            }
        }
        if let Err(FollowerRefusal::NotContiguous { expected, .. }) = check_follower_batches(&bytes, log_end, latest) {
            prop_assert!(expected >= log_end);
        }
    }
}

#[test]
fn the_high_watermark_checkpoint_survives_a_restart_within_the_log() {
    let sim = Sim::new(7);
    let log = sim.open();
    assert_eq!(
        log.high_watermark_checkpoint(),
        None,
        "none before one is written"
    );
    let mut leader = Leader::default();
    for (epoch, records) in [(1, 4), (1, 3), (2, 5)] {
        leader.write(epoch, records);
    }
    sim.follow(&log, leader.from(0)).expect("follows");
    let l = log.clone();
    let recorded = sim.run(async move { l.checkpoint_high_watermark(Offset(7)).await });
    assert_eq!(recorded.expect("written"), Offset(7));
    let l = log.clone();
    sim.run(async move { l.close().await }).expect("closes");
    drop(log);
    let log = sim.open();
    assert_eq!(log.high_watermark_checkpoint(), Some(Offset(7)));

    // Never past the log end, whatever it is given.
    let l = log.clone();
    let recorded = sim.run(async move { l.checkpoint_high_watermark(Offset(1_000)).await });
    assert_eq!(
        recorded.expect("written"),
        Offset(12),
        "capped at the log end"
    );
    let l = log.clone();
    sim.run(async move { l.close().await }).expect("closes");
    drop(log);
    let log = sim.open();
    assert_eq!(log.high_watermark_checkpoint(), Some(Offset(12)));

    // A truncation below it lowers it.
    let l = log.clone();
    sim.run(async move { l.truncate_to(Offset(7)).await })
        .expect("truncates");
    assert_eq!(log.high_watermark_checkpoint(), Some(Offset(7)));
    drop(log);
    sim.crash();
    let log = sim.open();
    assert_eq!(
        log.high_watermark_checkpoint(),
        Some(Offset(7)),
        "the lowering is durable"
    );
}

#[test]
fn a_crash_at_any_step_of_a_truncation_never_leaves_the_checkpoint_over_other_records() {
    let mut old = Leader::default();
    for (epoch, records) in [(1, 4), (1, 3), (2, 5), (2, 2), (3, 6), (3, 3), (3, 2)] {
        old.write(epoch, records);
    }
    // The new leader's log: the same up to offset 12, then epoch 4 (an unclean election:
    // the old log's checkpoint covers records the new leader never had).
    let mut branch = old.truncated(12);
    branch.tags = 500;
    for records in [3, 4, 2, 5] {
        branch.write(4, records);
    }
    let old_batches: Vec<(i64, Bytes)> = old
        .batches
        .iter()
        .map(|(b, _, x)| (*b, x.clone()))
        .collect();
    let expect: Vec<(i64, Bytes)> = branch
        .batches
        .iter()
        .map(|(b, _, x)| (*b, x.clone()))
        .collect();
    for steps in 0..5_000u64 {
        let sim = Sim::new(steps);
        let log = sim.open();
        sim.follow(&log, old.from(0)).expect("the setup follows");
        let l = log.clone();
        let end = old.end;
        sim.run(async move {
            l.checkpoint_high_watermark(Offset(end)).await?;
            l.close().await
        })
        .expect("checkpointed and closed");
        drop(log);
        let log = sim.open();
        assert_eq!(log.high_watermark_checkpoint(), Some(Offset(old.end)));
        let task = {
            let log = log.clone();
            let records = branch.from(12);
            sim.rt.spawn_with_result(async move {
                log.truncate_to(Offset(12)).await?;
                log.append_as_follower(records, Durability::Synced).await?;
                // A checkpoint of the new leader's high watermark as it goes on.
                log.checkpoint_high_watermark(Offset(14)).await
            })
        };
        sim.rt.run_for(steps);
        let finished = task.take();
        drop(log);
        sim.crash();
        let log = sim.open();
        let found = sim.read_all(&log);
        let hw = log
            .high_watermark_checkpoint()
            .expect("a checkpoint is always there")
            .0;
        let covered: Vec<&(i64, Bytes)> = found.iter().filter(|(base, _)| *base < hw).collect();
        let all_old = covered.iter().all(|b| old_batches.contains(b));
        let all_new = covered.iter().all(|b| expect.contains(b));
        assert!(
            all_old || (all_new && hw <= 14),
            "after {steps} steps: the checkpoint {hw} covers {:?}, not one history's committed records",
            covered.iter().map(|b| b.0).collect::<Vec<_>>()
        );
        sim.check_invariants(&log);
        if let Some(result) = finished {
            result.expect("the truncation, append and checkpoint succeed");
            assert_eq!(
                found, expect,
                "after {steps} steps: finished before the crash"
            );
            // The last checkpoint, or the lowered one before it: the directory is not
            // synced after a checkpoint, and an older one is always safe.
            assert!(
                hw == 14 || hw == 12,
                "after {steps} steps: the checkpoint is {hw}"
            );
            return;
        }
    }
    panic!("the truncation never finished");
}
