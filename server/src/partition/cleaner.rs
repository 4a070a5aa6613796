//! The log cleaner of one shard (Kafka's `LogCleaner`): compacts the shard's partitions
//! whose topic has `cleanup.policy=compact` (or `compact,delete`), one round at a time,
//! in the background.
//!
//! Every `log.cleaner.backoff.ms` it looks at each compacted partition it owns (how dirty,
//! in [`wharf_engine::PartitionLog::cleanable`]), picks the dirtiest one that is due
//! (`min.cleanable.dirty.ratio`, or a record older than `max.compaction.lag.ms`) and runs
//! one cleaning round on it; while rounds are due it goes on without waiting. The rounds
//! run in their own task queue with a small share of the shard, their I/O paced to
//! `log.cleaner.io.max.bytes.per.second`, and yield after every chunk (a MiB) read or
//! written, so requests on the shard keep their latency. The offset map takes at most
//! this shard's share of `log.cleaner.dedupe.buffer.size`, and less for small logs.
//!
//! Nothing at or past the partition's last stable offset is cleaned (the high watermark
//! without transactions; on a single node, the end of what is written, and the engine
//! cleans only sealed, synced segments below it).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use wharf_engine::compaction::{
    CleanRequest, Cleanable, CompactionConfig, OffsetMap, Throttle, OFFSET_MAP_SLOT_BYTES,
};

use crate::metadata::topic_config::EffectiveConfig;
use crate::node::Shard;
use crate::partition::PartitionHandle;
use crate::shard::event::Latch;
use crate::shard::now_ms;

/// Kafka's `log.cleaner.backoff.ms` default.
pub const DEFAULT_CLEANER_BACKOFF_MS: u64 = 15_000;
/// Kafka's `log.cleaner.dedupe.buffer.size` default, shared by the shards.
pub const DEFAULT_DEDUPE_BUFFER_BYTES: usize = 128 * 1024 * 1024;
/// The smallest offset map a round gets (a few tens of thousands of keys).
const MIN_OFFSET_MAP_BYTES: usize = 1024 * 1024;
/// Offset map bytes per byte of dirty log when sizing the map for a small log: a keyed
/// record takes at least 8 bytes, a slot 24. Compressed records may hold more keys; the
/// round then cleans what the map covers and the next round goes on.
const OFFSET_MAP_BYTES_PER_DIRTY_BYTE: usize = OFFSET_MAP_SLOT_BYTES / 8;
/// How long a partition whose round failed is left alone (Kafka marks it uncleanable).
const FAILED_PARTITION_PAUSE_MS: i64 = 60_000;
/// The cleaner's share of its shard when requests compete for it (requests have 1000).
const CLEANER_SHARES: usize = 100;

/// The cleaner's broker settings.
#[derive(Clone, Debug, PartialEq)]
pub struct CleanerConfig {
    /// `log.cleaner.enable`.
    pub enable: bool,
    /// `log.cleaner.backoff.ms`: how long the cleaner sleeps when no log is due.
    pub backoff_ms: u64,
    /// `log.cleaner.dedupe.buffer.size`, for the whole broker; each shard gets its share.
    pub dedupe_buffer_bytes: usize,
    /// `log.cleaner.io.max.bytes.per.second`: bytes read plus written per second, per
    /// shard; infinite by default (Kafka's).
    pub io_max_bytes_per_second: f64,
}

impl Default for CleanerConfig {
    fn default() -> Self {
        CleanerConfig {
            enable: true,
            backoff_ms: DEFAULT_CLEANER_BACKOFF_MS,
            dedupe_buffer_bytes: DEFAULT_DEDUPE_BUFFER_BYTES,
            io_max_bytes_per_second: f64::INFINITY,
        }
    }
}

/// What the cleaner did to one partition, for the metrics endpoint.
#[derive(Default)]
pub struct PartitionCleanerStats {
    /// Dirty bytes over all bytes, as of the cleaner's last look.
    pub dirty_ratio: Cell<f64>,
    pub runs: Cell<u64>,
    pub errors: Cell<u64>,
    pub bytes_read: Cell<u64>,
    pub bytes_written: Cell<u64>,
    /// Wall-clock ms of the last round that finished; 0 before the first.
    pub last_run_ms: Cell<i64>,
    /// A failed round leaves the partition alone until then.
    retry_after_ms: Cell<i64>,
}

/// The cleaner's pacing: `log.cleaner.io.max.bytes.per.second` and shutdown.
struct IoThrottle {
    bytes_per_second: f64,
    shutdown: Rc<Latch>,
    window_start: Cell<Instant>,
    window_bytes: Cell<u64>,
}

/// How long a throttle window lasts before it starts again (Kafka checks every 300 ms).
const THROTTLE_WINDOW: Duration = Duration::from_millis(300);

impl Throttle for IoThrottle {
    fn pace(&self, bytes: u64) -> Pin<Box<dyn Future<Output = bool> + '_>> {
        Box::pin(async move {
            if self.shutdown.is_set() {
                return false;
            }
            if self.bytes_per_second.is_finite() && self.bytes_per_second > 0.0 {
                let total = self.window_bytes.get().saturating_add(bytes);
                self.window_bytes.set(total);
                let elapsed = self.window_start.get().elapsed();
                let allowed =
                    Duration::from_secs_f64((total as f64 / self.bytes_per_second).min(3600.0));
                if allowed > elapsed {
                    glommio::timer::sleep(allowed - elapsed).await;
                }
                if self.window_start.get().elapsed() >= THROTTLE_WINDOW {
                    self.window_start.set(Instant::now());
                    self.window_bytes.set(0);
                }
            }
            glommio::yield_if_needed().await;
            !self.shutdown.is_set()
        })
    }
}

/// Starts the shard's cleaner in its own task queue, unless `log.cleaner.enable` is off.
pub fn start(shard: &Rc<Shard>) {
    if !shard.config.cleaner.enable {
        return;
    }
    let queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(CLEANER_SHARES),
        glommio::Latency::NotImportant,
        "log-cleaner",
    );
    let task = clean_logs_periodically(shard.clone());
    match glommio::spawn_local_into(task, queue) {
        Ok(task) => {
            task.detach();
        }
        Err(error) => {
            tracing::error!(%error, "cannot start the log cleaner in its own task queue");
        }
    }
}

/// The compaction settings of `handle`'s topic, `None` when it is not compacted.
pub fn compaction_config(shard: &Shard, handle: &PartitionHandle) -> Option<CompactionConfig> {
    let image = shard.metadata();
    let topic = image.topic_by_id(handle.tp.topic_id)?;
    EffectiveConfig {
        overrides: &topic.overrides,
        defaults: &shard.config.topic_defaults,
    }
    .compaction()
}

/// Runs until shutdown: one cleaning round after another while logs are due, a pause of
/// `log.cleaner.backoff.ms` when none is.
async fn clean_logs_periodically(shard: Rc<Shard>) {
    let backoff = Duration::from_millis(shard.config.cleaner.backoff_ms);
    let throttle = IoThrottle {
        bytes_per_second: shard.config.cleaner.io_max_bytes_per_second,
        shutdown: shard.shutdown.clone(),
        window_start: Cell::new(Instant::now()),
        window_bytes: Cell::new(0),
    };
    let map_limit = (shard.config.cleaner.dedupe_buffer_bytes / shard.shard_count.max(1))
        .max(MIN_OFFSET_MAP_BYTES);
    let mut map: Option<OffsetMap> = None;
    loop {
        if shard.shutdown.is_set() {
            return;
        }
        let cleaned = match filthiest(&shard).await {
            Some((handle, config, cleanable)) => {
                let wanted = cleanable
                    .cleanable_bytes
                    .saturating_mul(OFFSET_MAP_BYTES_PER_DIRTY_BYTE as u64)
                    .clamp(MIN_OFFSET_MAP_BYTES as u64, map_limit as u64)
                    as usize;
                // Grown when a log needs more, shrunk when a much smaller one follows.
                let current = map.as_ref().map_or(0, |m| m.memory_bytes());
                if current < wanted || current / 4 > wanted {
                    // The old map goes before the new one is allocated.
                    drop(map.take());
                    map = Some(OffsetMap::new(wanted));
                }
                let map = map.as_mut().expect("the offset map was just made");
                clean_one(&shard, &handle, &config, map, &throttle).await;
                true
            }
            None => false,
        };
        if cleaned {
            glommio::yield_if_needed().await;
        } else if shard
            .unless_shutdown(glommio::timer::sleep(backoff))
            .await
            .is_none()
        {
            return;
        }
    }
}

/// The compacted partition to clean next: of those due, the one whose oldest record
/// waited longest past `max.compaction.lag.ms`, else the dirtiest (Kafka's
/// `grabFilthiestCompactedLog`). Records every partition's dirty ratio on the way.
async fn filthiest(
    shard: &Rc<Shard>,
) -> Option<(Rc<PartitionHandle>, CompactionConfig, Cleanable)> {
    let now = now_ms();
    let mut best: Option<(Rc<PartitionHandle>, CompactionConfig, Cleanable)> = None;
    for tp in shard.partitions.keys() {
        if shard.shutdown.is_set() {
            return None;
        }
        let Some(handle) = shard.partitions.get(tp) else {
            continue;
        };
        let Some(config) = compaction_config(shard, &handle) else {
            continue;
        };
        // Kafka's upper bound: nothing past the last stable offset (replication and
        // transactions narrow it; the engine also stops at the first unsealed segment).
        let upper_bound = handle.last_stable_offset();
        let cleanable = match handle.log.cleanable(&config, now, upper_bound).await {
            Ok(c) => c,
            Err(error) => {
                tracing::debug!(partition = ?tp, %error, "cannot tell how dirty the log is");
                continue;
            }
        };
        handle.cleaner.dirty_ratio.set(cleanable.dirty_ratio);
        if !cleanable.is_due(&config) || handle.cleaner.retry_after_ms.get() > now {
            continue;
        }
        let better = match &best {
            None => true,
            Some((_, _, b)) => {
                (cleanable.compaction_delay_ms, cleanable.dirty_ratio)
                    > (b.compaction_delay_ms, b.dirty_ratio)
            }
        };
        if better {
            best = Some((handle, config, cleanable));
        }
    }
    best
}

/// One round on `handle`, its outcome counted and logged.
async fn clean_one(
    shard: &Rc<Shard>,
    handle: &Rc<PartitionHandle>,
    config: &CompactionConfig,
    map: &mut OffsetMap,
    throttle: &IoThrottle,
) {
    let upper_bound_offset = handle.last_stable_offset();
    // Aborted transactions' batches are dropped, and never stand for their keys' latest value.
    let aborted: Vec<wharf_engine::compaction::AbortedTxn> = handle
        .txns
        .aborted_in_range(handle.log.log_start_offset().0, upper_bound_offset)
        .into_iter()
        .map(|a| wharf_engine::compaction::AbortedTxn {
            producer_id: a.producer_id,
            first_offset: a.first_offset,
            last_offset: a.last_offset,
        })
        .collect();
    let request = CleanRequest {
        now_ms: now_ms(),
        upper_bound_offset,
        aborted: &aborted,
        max_decompressed_batch_bytes: crate::config::MAX_DECOMPRESSED_BATCH_BYTES,
        throttle: Some(throttle),
    };
    let started = Instant::now();
    let stats = &handle.cleaner;
    match handle.log.clean(map, config, &request).await {
        Ok(round) => {
            stats.runs.set(stats.runs.get() + 1);
            stats
                .bytes_read
                .set(stats.bytes_read.get().wrapping_add(round.bytes_read));
            stats
                .bytes_written
                .set(stats.bytes_written.get().wrapping_add(round.bytes_written));
            stats.last_run_ms.set(now_ms());
            tracing::info!(
                topic = %handle.topic,
                partition = handle.tp.partition.0,
                first_dirty_offset = round.first_dirty_offset,
                end_offset = round.end_offset,
                segments_before = round.segments_before,
                segments_after = round.segments_after,
                bytes_read = round.bytes_read,
                bytes_written = round.bytes_written,
                records_read = round.records_read,
                records_retained = round.records_retained,
                tombstones_removed = round.tombstones_removed,
                keys = round.map_keys,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "log cleaned"
            );
        }
        Err(error) => {
            if shard.shutdown.is_set() {
                return;
            }
            stats.errors.set(stats.errors.get() + 1);
            stats
                .retry_after_ms
                .set(now_ms().saturating_add(FAILED_PARTITION_PAUSE_MS));
            tracing::warn!(
                topic = %handle.topic,
                partition = handle.tp.partition.0,
                %error,
                "cleaning the log failed; trying again in a minute"
            );
        }
    }
}
