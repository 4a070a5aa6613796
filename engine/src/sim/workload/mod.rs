//! The engine's simulation workload: one partition log on a simulated disk.
//!
//! Each seed draws a configuration (segment size, index interval, preallocation, cache
//! size, retention) and a fault plan (which of: failed fdatasyncs, full disk, random
//! ENOSPC, flipped bits on reads, bad sectors, bit rot, a deleted segment), then runs a
//! random workload: concurrent appends (Written and Synced, random sizes, idempotent
//! producers with retries of acknowledged batches), reads, time passing, retention,
//! truncation, DeleteRecords, clean restarts and crashes at any point — during appends,
//! structural changes and recovery itself — where the disk loses, tears or reorders what
//! was not synced.
//!
//! A model holds what the log must contain: every acknowledged batch, byte for byte, at
//! its offset. After every step the whole log is read back and checked:
//! - every batch returned passes its CRC and batches are contiguous in offsets;
//! - every batch at an offset the model knows is exactly the acknowledged one; nothing
//!   appears that no append sent, and no idempotent batch appears twice;
//! - nothing below the durable end (the end of the last batch acknowledged as Synced)
//!   is lost, and the log start moves only for DeleteRecords, retention, or reported
//!   damage where the disk really was damaged; the log end goes back only for a
//!   truncation, a crash or a failed write (and then not below the durable end);
//! - a retried idempotent batch is answered with its first offsets;
//! - the log's own invariants hold ([`PartitionLog::check_invariants`]: indexes agree with
//!   the log, segments contiguous, producer state agrees with the log).
//!
//! A third of the seeds run a compacted topic, with cleaning rounds among the steps
//! (see [`compact`] for what they add to the model and the checks).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;
use wharf_protocol::batch::{
    records, set_base_offset, set_partition_leader_epoch, validate_batch_with, BatchBuilder,
    CountRule,
};

use super::runner::{Trace, Violation};
use super::{FaultConfig, Rng, Runtime, SimDisk, SimStorage};
use crate::{
    AppendInfo, BatchCache, DamageReport, Durability, EngineError, LogConfig, Offset, PartitionLog,
};

mod check;
mod compact;

use compact::CompactMode;

/// The name of this target for `wharf-sim --target` and replay commands.
pub const TARGET: &str = "engine";

/// What one seed did, for the summary.
#[derive(Clone, Debug, Default)]
pub struct SeedStats {
    pub steps: u64,
    pub appends_acked: u64,
    pub crashes: u64,
    pub failures: u64,
    pub damage_reports: u64,
    /// Cleaning rounds started, groups of segments cleaned and swapped in, tombstones
    /// removed (compacted seeds).
    pub cleanings: u64,
    pub groups_cleaned: u64,
    pub tombstones_removed: u64,
}

type Log = PartitionLog<SimStorage>;

/// Steps per seed.
const MIN_STEPS: u64 = 20;
const MAX_STEPS: u64 = 60;
/// Crashes in a row while recovering, at most.
const MAX_NESTED_CRASHES: u32 = 3;

/// An append the workload sent.
#[derive(Clone)]
struct Issued {
    /// The batch as the producer sent it.
    payload: Bytes,
    leader_epoch: i32,
    /// `(producer index, sequence)` for idempotent batches.
    producer: Option<(usize, i32)>,
    /// When it was first sent (simulated clock).
    issued_ms: i64,
}

/// A batch the log must hold at its offset.
#[derive(Clone)]
struct Entry {
    last: i64,
    tag: u64,
    bytes: Bytes,
}

#[derive(Clone)]
struct Producer {
    pid: i64,
    epoch: i16,
    next_seq: i32,
    /// The batch to send again (its append failed or its answer is unknown).
    retry: Option<u64>,
    /// The last acknowledged batch and the offset it got.
    last_acked: Option<(u64, i64)>,
    busy: bool,
}

/// What happened to one spawned operation.
enum Event {
    Appended {
        tag: u64,
        durability: Durability,
        leader_epoch: i32,
        result: Result<AppendInfo, EngineError>,
    },
    Read {
        from: i64,
        result: Result<Bytes, EngineError>,
    },
    Truncated {
        offset: i64,
        /// Nothing of the log survives it (Kafka's truncateFullyAndStartAt).
        fully: bool,
        result: Result<(), EngineError>,
    },
    Deleted {
        offset: i64,
        result: Result<Offset, EngineError>,
    },
    Maintained(Result<(), EngineError>),
    Cleaned(Result<crate::compaction::CleanStats, EngineError>),
}

/// What may have changed the log this step beyond the acknowledged appends.
#[derive(Default)]
struct Disruption {
    /// A crash, a failed write or fdatasync: unsynced batches may be gone, and batches
    /// whose answers were lost may be there.
    unsynced_lost: bool,
    /// A truncation that may or may not have happened: from this offset on.
    truncated_from: Option<i64>,
    /// A truncation that emptied the log may have set the log start here.
    truncated_fully_to: Option<i64>,
    /// DeleteRecords up to this offset may have happened.
    deleted_to: Option<i64>,
    /// Retention may have moved the log start.
    retention: bool,
    /// A recovery was cut short (a crash, a failed open): what it did (and reported) may
    /// stand without a report from the recovery that finished.
    recovery_interrupted: bool,
}

struct World {
    seed: u64,
    rng: Rng,
    rt: Runtime,
    disk: SimDisk,
    dir: PathBuf,
    config: LogConfig,
    cache_bytes: usize,
    faults: FaultConfig,
    persistent_faults: bool,
    full_disk_episodes: bool,
    capacity_bytes: u64,
    log: Option<Rc<Log>>,
    leader_epoch: i32,
    events: Rc<RefCell<Vec<Event>>>,
    // The model.
    entries: BTreeMap<i64, Entry>,
    log_start: i64,
    durable_end: i64,
    issued: BTreeMap<u64, Issued>,
    next_tag: u64,
    producers: Vec<Producer>,
    next_pid: i64,
    disruption: Disruption,
    /// Damage reports of earlier incarnations, and how many of this one's were seen.
    reports: Vec<DamageReport>,
    seen_reports: usize,
    stats: SeedStats,
    trace: Trace,
    /// The last check saw the whole log.
    checked: bool,
    /// A compacted topic: keyed records and cleaning rounds.
    compact: Option<CompactMode>,
}

/// Runs one seed of the engine target.
pub fn run(seed: u64, verbose: bool) -> Result<SeedStats, Violation> {
    let mut world = World::new(seed, verbose);
    let result = world.run_all();
    match result {
        Ok(()) => Ok(world.stats),
        Err(message) => Err(world.trace.violation(message)),
    }
}

fn tag_of(batch: &[u8]) -> Option<u64> {
    if let Some(tag) = compact::header_tag(batch) {
        return Some(tag);
    }
    let record = records(batch).ok()?.next()?.ok()?;
    let key = record.key?;
    Some(u64::from_be_bytes(key.get(..8)?.try_into().ok()?))
}

fn stored(payload: &Bytes, base: i64, epoch: i32) -> Bytes {
    let mut v = payload.to_vec();
    set_base_offset(&mut v, base);
    set_partition_leader_epoch(&mut v, epoch);
    Bytes::from(v)
}

impl World {
    fn new(seed: u64, verbose: bool) -> World {
        let mut rng = Rng::new(seed);
        let rt = Runtime::new(rng.next_u64());
        rt.set_io_bias(rng.range(100_000, 700_000) as u32);
        // A third of the seeds run without faults (crashes only): strict durability.
        let faulty = rng.below(3) > 0;
        let mut faults = FaultConfig {
            read_fault_suffixes: vec![".log".into()],
            ..FaultConfig::default()
        };
        if faulty {
            if rng.coin() {
                faults.transient_read_flip_per_million = rng.range(2_000, 40_000) as u32;
            }
            if rng.below(3) == 0 {
                faults.fsync_eio_per_million = rng.range(2_000, 40_000) as u32;
            }
            if rng.below(4) == 0 {
                faults.enospc_per_million = rng.range(1_000, 20_000) as u32;
            }
        }
        let persistent_faults = faulty && rng.below(5) == 0;
        let full_disk_episodes = faulty && rng.below(3) == 0;
        let capacity_bytes = 64 << 20;
        let disk = SimDisk::new(&rt, rng.next_u64(), capacity_bytes, faults.clone());
        let segment_bytes = [2_000u64, 6_000, 16_000, 40_000][rng.below(4) as usize];
        let config = LogConfig {
            segment_bytes,
            segment_ms: rng.range(1_000, 60_000),
            retention_ms: if rng.coin() {
                -1
            } else {
                rng.range(10_000, 300_000) as i64
            },
            retention_bytes: if rng.coin() {
                -1
            } else {
                rng.range(segment_bytes, 8 * segment_bytes) as i64
            },
            index_interval_bytes: [64u32, 500, 1500, 4096][rng.below(4) as usize],
            preallocate_bytes: [0u64, 8 << 10, 64 << 10][rng.below(3) as usize],
            ..LogConfig::default()
        };
        let cache_bytes = [0usize, 3_000, 30_000, 1 << 20][rng.below(4) as usize];
        let producers = (0..rng.range(1, 3))
            .map(|i| Producer {
                pid: 1000 + i as i64,
                epoch: 0,
                next_seq: 0,
                retry: None,
                last_acked: None,
                busy: false,
            })
            .collect::<Vec<_>>();
        let next_pid = 1000 + producers.len() as i64;
        let compact = (rng.below(3) == 0).then(|| CompactMode::draw(&mut rng));
        let mut config = config;
        if compact.is_some() {
            // Small segments: cleaning works on whole sealed segments.
            config.segment_bytes = config
                .segment_bytes
                .min([1_000, 2_000, 5_000][rng.below(3) as usize]);
        }
        World {
            seed,
            rng,
            rt,
            disk,
            dir: PathBuf::from("/data/topic-0"),
            config,
            cache_bytes,
            faults,
            persistent_faults,
            full_disk_episodes,
            capacity_bytes,
            log: None,
            leader_epoch: 0,
            events: Rc::new(RefCell::new(Vec::new())),
            entries: BTreeMap::new(),
            log_start: 0,
            durable_end: 0,
            issued: BTreeMap::new(),
            next_tag: 1,
            producers,
            next_pid,
            disruption: Disruption::default(),
            reports: Vec::new(),
            seen_reports: 0,
            stats: SeedStats::default(),
            trace: Trace::new(verbose),
            checked: true,
            compact,
        }
    }

    fn note(&mut self, line: String) {
        self.trace.note(line);
    }

    fn run_all(&mut self) -> Result<(), String> {
        let c = &self.config;
        let line = format!(
            "seed {}: segment.bytes {} index.interval.bytes {} preallocate {} cache {} retention.ms {} retention.bytes {} faults {:?} persistent {} full-disk {}",
            self.seed, c.segment_bytes, c.index_interval_bytes, c.preallocate_bytes, self.cache_bytes,
            c.retention_ms, c.retention_bytes, self.faults, self.persistent_faults, self.full_disk_episodes
        );
        self.note(line);
        if let Some(mode) = &self.compact {
            let line = format!("compacted: {mode:?}");
            self.note(line);
        }
        self.open()?;
        let steps = self.rng.range(MIN_STEPS, MAX_STEPS);
        for step in 0..steps {
            self.stats.steps += 1;
            // What may have happened is forgotten only once a check saw the whole log.
            if self.checked {
                self.disruption = Disruption::default();
            }
            self.step(step)?;
            self.check().map_err(|e| format!("step {step}: {e}"))?;
        }
        if let Some(mode) = &self.compact {
            self.stats.cleanings = mode.cleanings;
            self.stats.groups_cleaned = mode.groups_cleaned;
            self.stats.tombstones_removed = mode.tombstones_removed;
        }
        // The end: a full disk freed, faults off, a clean restart, everything checked again.
        self.disk.set_capacity(self.capacity_bytes);
        self.disk.set_faults_enabled(false);
        // What may have happened since the last check that saw the whole log stays.
        if self.checked {
            self.disruption = Disruption::default();
        }
        self.restart_clean()?;
        self.check()
            .map_err(|e| format!("after the final restart: {e}"))?;
        Ok(())
    }

    fn log(&self) -> Rc<Log> {
        self.log.clone().expect("the log is open")
    }

    /// Opens the log, crashing during recovery now and then.
    fn open(&mut self) -> Result<(), String> {
        let mut nested = 0;
        let mut failed_opens = 0;
        loop {
            self.leader_epoch += 1;
            // After three failed opens the operator repairs the disk: random faults stop for
            // the next attempt (a log of many segments to seal at open may otherwise keep
            // meeting a failing fdatasync at the high fault rates seeds draw).
            let repaired = failed_opens >= 3 && self.disk.faults_enabled();
            if repaired {
                self.disk.set_faults_enabled(false);
            }
            let storage = SimStorage::new(self.disk.clone());
            let cache = BatchCache::new(self.cache_bytes);
            let opening = self.rt.spawn_with_result(Log::open_with(
                storage,
                self.dir.clone(),
                self.config.clone(),
                cache,
            ));
            if nested < MAX_NESTED_CRASHES && self.rng.below(6) == 0 {
                let steps = self.rng.below(60);
                self.rt.run_for(steps);
                if !opening.is_finished() {
                    nested += 1;
                    self.disruption.recovery_interrupted = true;
                    self.note(format!("crash during recovery after {steps} steps"));
                    self.crash_now();
                    continue;
                }
            }
            self.rt.run_until_stalled();
            if repaired {
                self.disk.set_faults_enabled(true);
            }
            let log = match opening.take().ok_or("opening the log never finished")? {
                Ok(log) => log,
                // An injected I/O error (a failed fdatasync of the cut tail, a full disk):
                // opening is tried again, as an operator would after fixing the disk.
                Err(e) if failed_opens < 5 && !self.disk.injected().is_empty() => {
                    failed_opens += 1;
                    self.note(format!("open failed: {e}"));
                    self.disruption.unsynced_lost = true;
                    // What it cut (and reported, in a log line) stands without a report
                    // from the open that succeeds.
                    self.disruption.recovery_interrupted = true;
                    continue;
                }
                Err(e) => return Err(format!("the log did not open: {e}")),
            };
            self.log = Some(Rc::new(log));
            self.seen_reports = 0;
            let log = self.log();
            self.note(format!(
                "opened: [{}, {}), {} segments",
                log.log_start_offset().0,
                log.log_end_offset().0,
                log.segment_count()
            ));
            return Ok(());
        }
    }

    /// A machine crash right now: tasks and I/O in flight dropped, unsynced data lost,
    /// torn or reordered.
    fn crash_now(&mut self) {
        self.stats.crashes += 1;
        if let Some(log) = self.log.take() {
            self.reports.extend(log.damage_reports());
        }
        self.rt.crash();
        self.disk.crash();
        self.events.borrow_mut().clear();
        self.disruption.unsynced_lost = true;
        for p in &mut self.producers {
            p.busy = false;
        }
    }

    fn restart_clean(&mut self) -> Result<(), String> {
        let log = self.log();
        let state = log.debug_state();
        let closing = self.rt.spawn_with_result(async move { log.close().await });
        self.rt.run_until_stalled();
        match closing.take() {
            // A log whose writes failed closes without the clean-shutdown marker.
            Some(Err(e)) => {
                self.note(format!("close: {e}"));
                self.disruption.unsynced_lost = true;
            }
            Some(Ok(())) => {}
            None => return Err(format!("closing the log never finished (before: {state})")),
        }
        if let Some(log) = self.log.take() {
            self.reports.extend(log.damage_reports());
        }
        self.note("clean restart".into());
        self.open()
    }

    /// Runs until everything spawned finished, or crashes part way now and then.
    fn run_or_crash(&mut self) -> Result<(), String> {
        if self.rng.below(10) == 0 {
            let steps = self.rng.below(150);
            self.rt.run_for(steps);
            self.note(format!("crash after {steps} steps"));
            self.process_events()?;
            self.crash_now();
            self.open()?;
            return Ok(());
        }
        self.rt.run_until_stalled();
        if self.rt.task_count() > 0 {
            let state = self
                .log
                .as_ref()
                .map(|l| l.debug_state())
                .unwrap_or_default();
            let done: Vec<String> = self
                .events
                .borrow()
                .iter()
                .map(|e| match e {
                    Event::Appended { tag, .. } => format!("#{tag}"),
                    Event::Read { from, .. } => format!("read {from}"),
                    _ => "other".into(),
                })
                .collect();
            let state = format!("{state}; finished: {done:?}");
            return Err(format!("{} tasks are stuck: {state}", self.rt.task_count()));
        }
        self.process_events()
    }

    fn step(&mut self, step: u64) -> Result<(), String> {
        // Time passes.
        if self.rng.below(4) == 0 {
            let ms = if self.rng.below(10) == 0 {
                self.rng.range(1_000, 600_000)
            } else {
                self.rng.range(1, 2_000)
            } as i64;
            self.rt.advance_ms(ms);
        }
        let roll = self.rng.below(100);
        match roll {
            0..=44 => self.appends(step),
            45..=54 => self.read_step(),
            55..=62 => {
                self.note(format!("step {step}: maintain"));
                let log = self.log();
                let now = self.rt.now_ms();
                let events = self.events.clone();
                self.disruption.retention = true;
                self.rt.spawn(async move {
                    let result = log.maintain(now).await;
                    events.borrow_mut().push(Event::Maintained(result));
                });
                self.run_or_crash()
            }
            63..=66 => {
                let log = self.log();
                let (start, end) = (log.log_start_offset().0, log.log_end_offset().0);
                // A compacted seed truncates only above what it let the cleaner clean.
                let low = (start - 2).max(0).max(self.truncation_floor());
                if low >= end {
                    return self.appends(step);
                }
                let offset = self.rng.range(low as u64, end as u64) as i64;
                self.note(format!("step {step}: truncate to {offset}"));
                // An earlier truncation that failed may still take effect when the log is
                // reloaded: what may be gone runs from the lowest of them.
                let from = self
                    .disruption
                    .truncated_from
                    .map_or(offset, |t| t.min(offset));
                self.disruption.truncated_from = Some(from);
                let fully =
                    offset <= start || self.entries.keys().next().is_some_and(|b| offset <= *b);
                if fully {
                    let to = self
                        .disruption
                        .truncated_fully_to
                        .map_or(offset, |t| t.min(offset));
                    self.disruption.truncated_fully_to = Some(to);
                }
                let events = self.events.clone();
                self.rt.spawn(async move {
                    let result = log.truncate_to(Offset(offset)).await;
                    events.borrow_mut().push(Event::Truncated {
                        offset,
                        fully,
                        result,
                    });
                });
                self.run_or_crash()
            }
            67..=70 => {
                let log = self.log();
                let (start, end) = (log.log_start_offset().0, log.log_end_offset().0);
                let offset = self.rng.range(start as u64, end as u64) as i64;
                self.note(format!("step {step}: delete records before {offset}"));
                self.disruption.deleted_to = Some(offset);
                let events = self.events.clone();
                self.rt.spawn(async move {
                    let result = log.delete_records_before(Offset(offset)).await;
                    events.borrow_mut().push(Event::Deleted { offset, result });
                });
                self.run_or_crash()
            }
            71..=74 => {
                self.note(format!("step {step}: clean restart"));
                self.restart_clean()
            }
            75..=80 => {
                self.note(format!("step {step}: crash"));
                self.crash_now();
                self.open()
            }
            81..=86 if self.full_disk_episodes => {
                if self.disk.capacity_bytes() < self.capacity_bytes {
                    self.note(format!("step {step}: space freed"));
                    self.disk.set_capacity(self.capacity_bytes);
                } else {
                    let slack = self.rng.below(12_000);
                    let capacity = self.disk.used_bytes() + slack;
                    self.note(format!(
                        "step {step}: disk nearly full ({slack} bytes left)"
                    ));
                    self.disk.set_capacity(capacity);
                }
                Ok(())
            }
            87..=89 if self.persistent_faults => self.inject_damage(step),
            90 if self.persistent_faults => self.delete_a_segment(step),
            91..=99 if self.compact.is_some() => self.clean_step(step),
            _ => self.appends(step),
        }
    }

    fn segment_files(&self) -> Vec<(PathBuf, u64)> {
        self.disk
            .files_in(&self.dir)
            .into_iter()
            .filter(|(p, _)| p.extension().is_some_and(|e| e == "log"))
            .collect()
    }

    fn inject_damage(&mut self, step: u64) -> Result<(), String> {
        let files = self.segment_files();
        let candidates: Vec<_> = files.into_iter().filter(|(_, size)| *size > 0).collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let (path, size) = candidates[self.rng.below(candidates.len() as u64) as usize].clone();
        let position = self.rng.below(size);
        let kind = self.rng.below(3);
        let done = match kind {
            0 => self.disk.inject_read_fault(&path, position, true),
            _ => {
                let xor = 1u8 << self.rng.below(8);
                self.disk.rot(&path, position, xor)
            }
        };
        if done {
            self.note(format!(
                "step {step}: {} {} at {position}",
                if kind == 0 {
                    "bad sector in"
                } else {
                    "bit rot in"
                },
                path.display()
            ));
        }
        Ok(())
    }

    fn delete_a_segment(&mut self, step: u64) -> Result<(), String> {
        let mut files = self.segment_files();
        files.sort();
        if files.len() < 3 {
            return Ok(());
        }
        // Close first: an operator deleting a file under a running broker is not modelled.
        let log = self.log();
        let closing = self.rt.spawn_with_result(async move { log.close().await });
        self.rt.run_until_stalled();
        if let Some(Err(e)) = closing.take() {
            // Closed without the clean-shutdown marker: unsynced batches may be gone.
            self.note(format!("close: {e}"));
            self.disruption.unsynced_lost = true;
        }
        if let Some(log) = self.log.take() {
            self.reports.extend(log.damage_reports());
        }
        let k = 1 + self.rng.below(files.len() as u64 - 2) as usize;
        let path = files[k].0.clone();
        self.disk.delete(&path);
        self.note(format!(
            "step {step}: deleted {} while closed",
            path.display()
        ));
        self.open()
    }

    fn new_batch(&mut self, producer: Option<(usize, i32)>) -> (u64, Bytes) {
        let tag = self.next_tag;
        self.next_tag += 1;
        let records = 1 + self.rng.below(5) as usize;
        let value_bytes = if self.rng.below(10) == 0 {
            self.rng.below(6_000)
        } else {
            self.rng.below(1_200)
        } as usize;
        let mut builder = BatchBuilder::new();
        if let Some((p, seq)) = producer {
            let pr = &self.producers[p];
            builder = builder.producer(pr.pid, pr.epoch, seq);
        }
        let now = self.rt.now_ms();
        if let Some(keys) = self.compact.as_ref().map(|m| m.keys) {
            let payload = self.compact_batch(builder, tag, keys);
            self.issued.insert(
                tag,
                Issued {
                    payload: payload.clone(),
                    leader_epoch: self.leader_epoch,
                    producer,
                    issued_ms: now,
                },
            );
            return (tag, payload);
        }
        for i in 0..records {
            let mut value = vec![(tag % 251) as u8; value_bytes.max(16)];
            value[..8].copy_from_slice(&tag.to_be_bytes());
            value[8..16].copy_from_slice(&(i as u64).to_be_bytes());
            let ts = now - self.rng.below(5_000) as i64;
            builder.push(Some(&tag.to_be_bytes()), Some(&value), &[], ts);
        }
        let payload = Bytes::from(builder.build());
        self.issued.insert(
            tag,
            Issued {
                payload: payload.clone(),
                leader_epoch: self.leader_epoch,
                producer,
                issued_ms: now,
            },
        );
        (tag, payload)
    }

    fn appends(&mut self, step: u64) -> Result<(), String> {
        let log = self.log();
        let count = 1 + self.rng.below(5);
        let mut described = Vec::new();
        for _ in 0..count {
            let durability = if self.rng.coin() {
                Durability::Synced
            } else {
                Durability::Written
            };
            let idle: Vec<usize> = (0..self.producers.len())
                .filter(|p| !self.producers[*p].busy)
                .collect();
            let (tag, payload) = if !idle.is_empty() && self.rng.below(5) < 2 {
                let p = idle[self.rng.below(idle.len() as u64) as usize];
                self.producers[p].busy = true;
                let resend_acked = self.rng.below(6) == 0;
                match (self.producers[p].retry, self.producers[p].last_acked) {
                    (Some(tag), _) => (tag, self.issued[&tag].payload.clone()),
                    (None, Some((tag, _))) if resend_acked => {
                        (tag, self.issued[&tag].payload.clone())
                    }
                    _ => {
                        let seq = self.producers[p].next_seq;
                        let (tag, payload) = self.new_batch(Some((p, seq)));
                        // Sequences count records (KIP-98).
                        let records = validate_batch_with(&payload, usize::MAX, CountRule::AtMost)
                            .map_or(1, |i| i.records_count);
                        self.producers[p].next_seq += records;
                        self.producers[p].retry = Some(tag);
                        (tag, payload)
                    }
                }
            } else {
                self.new_batch(None)
            };
            described.push(format!(
                "#{tag}{}{}",
                if durability == Durability::Synced {
                    " synced"
                } else {
                    ""
                },
                self.issued[&tag]
                    .producer
                    .map(|(p, s)| format!(" p{p}/{s}"))
                    .unwrap_or_default()
            ));
            let events = self.events.clone();
            let log = log.clone();
            let epoch = self.issued[&tag].leader_epoch.max(self.leader_epoch);
            self.rt.spawn(async move {
                let result = log.append(payload, epoch, durability).await;
                events.borrow_mut().push(Event::Appended {
                    tag,
                    durability,
                    leader_epoch: epoch,
                    result,
                });
            });
        }
        if self.rng.below(3) == 0 {
            self.spawn_read();
        }
        if self.compact.is_some() && self.rng.below(5) == 0 {
            // A cleaning round while appends are in flight.
            self.spawn_clean();
        }
        self.note(format!("step {step}: append {}", described.join(", ")));
        self.run_or_crash()
    }

    pub(super) fn spawn_read(&mut self) {
        let log = self.log();
        let (start, end) = (log.log_start_offset().0, log.log_end_offset().0);
        let from = self.rng.range(start as u64, end as u64) as i64;
        let max_bytes = 1 + self.rng.below(20_000) as usize;
        let events = self.events.clone();
        self.rt.spawn(async move {
            let result = log.read(Offset(from), max_bytes).await;
            events.borrow_mut().push(Event::Read { from, result });
        });
    }

    fn read_step(&mut self) -> Result<(), String> {
        for _ in 0..1 + self.rng.below(3) {
            self.spawn_read();
        }
        self.run_or_crash()
    }

    /// Applies what the operations answered to the model.
    fn process_events(&mut self) -> Result<(), String> {
        let events = std::mem::take(&mut *self.events.borrow_mut());
        let failures_before = self.stats.failures;
        let mut reads = Vec::new();
        for event in events {
            match event {
                Event::Appended {
                    tag,
                    durability,
                    leader_epoch,
                    result,
                } => self.on_appended(tag, durability, leader_epoch, result)?,
                Event::Read { from, result } => reads.push((from, result)),
                Event::Truncated {
                    offset,
                    fully,
                    result,
                } => {
                    self.note(format!("truncated to {offset}: {result:?}"));
                    self.disruption.unsynced_lost |= result.is_err();
                    if result.is_ok() {
                        self.entries.retain(|_, e| e.last < offset);
                        if fully {
                            self.entries.clear();
                            self.log_start = offset;
                        }
                        self.durable_end = self.durable_end.min(offset);
                        if self.log_start > offset {
                            self.log_start = offset;
                        }
                    }
                }
                Event::Deleted { offset, result } => {
                    self.note(format!("deleted records before {offset}: {result:?}"));
                    self.disruption.unsynced_lost |= result.is_err();
                    if let Ok(start) = result {
                        if start.0 < offset {
                            return Err(format!(
                                "DeleteRecords to {offset} left the log start at {}",
                                start.0
                            ));
                        }
                    }
                }
                Event::Cleaned(result) => match result {
                    Ok(stats) => {
                        if let Some(mode) = &mut self.compact {
                            mode.groups_cleaned += stats.groups_cleaned;
                            mode.tombstones_removed += stats.tombstones_removed;
                        }
                        self.note(format!(
                        "cleaned [{}, {}): {} groups ({} given up), {} -> {} segments, {} of {} records kept, {} tombstones and {} keyless records removed, {} fillers, map {}/{}",
                        stats.first_dirty_offset, stats.end_offset, stats.groups_cleaned,
                        stats.groups_abandoned, stats.segments_before, stats.segments_after,
                        stats.records_retained, stats.records_read, stats.tombstones_removed,
                        stats.keyless_removed, stats.fillers, stats.map_keys, stats.map_capacity
                        ))
                    }
                    Err(e) => {
                        self.note(format!("clean: {e}"));
                        // A swap that failed after its commit reloads the log from disk.
                        self.disruption.unsynced_lost |= matches!(e, EngineError::Storage { .. });
                    }
                },
                Event::Maintained(result) => {
                    if let Err(e) = result {
                        self.note(format!("maintain: {e}"));
                        self.disruption.unsynced_lost |= matches!(e, EngineError::Storage { .. });
                    }
                }
            }
        }
        if let Some(log) = &self.log {
            let failures = log.stats().failures;
            if failures > 0 {
                self.stats.failures = self.stats.failures.max(failures);
            }
        }
        let _ = failures_before;
        for (from, result) in reads {
            self.check_read(from, result)?;
        }
        Ok(())
    }

    fn on_appended(
        &mut self,
        tag: u64,
        durability: Durability,
        leader_epoch: i32,
        result: Result<AppendInfo, EngineError>,
    ) -> Result<(), String> {
        let issued = self.issued[&tag].clone();
        if let Some((p, _)) = issued.producer {
            self.producers[p].busy = false;
        }
        match result {
            Ok(info) => {
                self.stats.appends_acked += 1;
                let (base, last) = (info.base_offset.0, info.last_offset.0);
                if let Some((p, _)) = issued.producer {
                    let producer = &mut self.producers[p];
                    // KIP-98: a retry of a batch the log still has gets its first offsets.
                    if let Some(existing) = self.entries.iter().find(|(_, e)| e.tag == tag) {
                        if *existing.0 != base {
                            return Err(format!(
                                "a retry of #{tag} was answered with offset {base}, but it is at {}",
                                existing.0
                            ));
                        }
                    }
                    producer.retry = None;
                    producer.last_acked = Some((tag, base));
                }
                // A duplicate is answered from the first append, which keeps its bytes.
                let bytes = match self.entries.get(&base) {
                    Some(e) if e.tag == tag => e.bytes.clone(),
                    _ => stored(&issued.payload, base, leader_epoch),
                };
                let records = i64::from(
                    validate_batch_with(&issued.payload, usize::MAX, CountRule::AtMost)
                        .map_err(|e| e.to_string())?
                        .records_count,
                );
                if last - base + 1 != records {
                    return Err(format!(
                        "#{tag} of {records} records was answered with offsets {base}..={last}"
                    ));
                }
                if let Some(old) = self.entries.get(&base) {
                    if old.tag != tag && base < self.durable_end {
                        return Err(format!(
                            "#{tag} was given offset {base}, which holds #{} acknowledged as durable",
                            old.tag
                        ));
                    }
                }
                // Entries it replaces were lost (a failed write or fdatasync this step).
                self.entries
                    .retain(|b, e| e.last < base || *b > last || e.tag == tag);
                self.entries.insert(base, Entry { last, tag, bytes });
                if durability == Durability::Synced {
                    self.durable_end = self.durable_end.max(last + 1);
                }
                Ok(())
            }
            Err(EngineError::Storage { reason, .. }) => {
                self.note(format!("#{tag}: storage error: {reason}"));
                self.disruption.unsynced_lost = true;
                Ok(())
            }
            Err(EngineError::OutOfOrderSequence(m)) | Err(EngineError::InvalidProducerEpoch(m)) => {
                // Its state was lost with unsynced batches (a crash, a failed write): the
                // producer starts over with a new id, as a client would.
                let Some((p, _)) = issued.producer else {
                    return Err(format!("#{tag} without producer refused: {m}"));
                };
                self.note(format!("#{tag}: {m}; producer {p} starts over"));
                let pid = self.next_pid;
                self.next_pid += 1;
                self.producers[p] = Producer {
                    pid,
                    epoch: 0,
                    next_seq: 0,
                    retry: None,
                    last_acked: None,
                    busy: false,
                };
                Ok(())
            }
            Err(e) => Err(format!("append #{tag} failed: {e}")),
        }
    }
}
