//! Storage engine throughput: appends of 1 KiB and 64 KiB batches with and without a
//! durable wait, one or many writers; reads from the batch cache and from disk.
//!
//! The log lives in a temporary directory under `WHARF_BENCH_DIR` (default: the system temp
//! dir); put it on the disk you measure, and compare with fio on the same file system.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glommio::{LocalExecutor, LocalExecutorBuilder};
use wharf_engine::{BatchCache, Durability, LogConfig, Offset, PartitionLog};

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("WHARF_BENCH_DIR") {
        Some(dir) => {
            std::fs::create_dir_all(&dir).expect("create WHARF_BENCH_DIR");
            tempfile::tempdir_in(dir).expect("tempdir")
        }
        None => tempfile::tempdir().expect("tempdir"),
    }
}

fn executor() -> LocalExecutor {
    LocalExecutorBuilder::default()
        .make()
        .expect("glommio executor")
}

/// A batch of 1 KiB records adding up to `batch_bytes`.
fn batch_of(batch_bytes: usize) -> Bytes {
    let records = (batch_bytes / 1024).max(1);
    let value_bytes = batch_bytes / records - 20;
    Bytes::from(wharf_protocol::batch::simple_batch(
        records,
        value_bytes,
        1_700_000_000_000,
    ))
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 << 20,
        retention_ms: -1,
        ..LogConfig::default()
    }
}

/// Appends `total` batches from `writers` tasks, each keeping `in_flight` appends
/// outstanding, into a fresh log; returns the time the appends took.
fn run_appends(
    ex: &LocalExecutor,
    path: PathBuf,
    batch: Bytes,
    total: u64,
    writers: u64,
    in_flight: u64,
    durability: Durability,
) -> Duration {
    ex.run(async move {
        let log = Rc::new(
            PartitionLog::open(path.clone(), config(), BatchCache::new(64 << 20))
                .await
                .expect("open"),
        );
        // Exactly `total` appends, spread over the tasks.
        let tasks_count = writers * in_flight;
        let started = Instant::now();
        let tasks: Vec<_> = (0..tasks_count)
            .map(|t| {
                let (log, batch) = (log.clone(), batch.clone());
                let count = total / tasks_count + u64::from(t < total % tasks_count);
                glommio::spawn_local(async move {
                    for _ in 0..count {
                        log.append(batch.clone(), 0, durability)
                            .await
                            .expect("append");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        let elapsed = started.elapsed();
        let stats = log.stats();
        if std::env::var_os("WHARF_BENCH_VERBOSE").is_some() {
            eprintln!(
                "  {} batches in {} writes ({} KiB each on average), {} fdatasyncs",
                stats.appended_batches,
                stats.writes,
                stats.written_bytes / stats.writes.max(1) / 1024,
                stats.fdatasyncs
            );
        }
        let log = Rc::try_unwrap(log).ok().expect("tasks are done");
        log.delete().await.expect("delete");
        elapsed
    })
}

fn appends(c: &mut Criterion) {
    let dir = bench_dir();
    let ex = executor();
    let mut group = c.benchmark_group("engine_append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    // (label, batch bytes, writers, appends in flight per writer, durability)
    let cases = [
        ("1KiB/written/1x1", 1 << 10, 1, 1, Durability::Written),
        ("1KiB/written/1x64", 1 << 10, 1, 64, Durability::Written),
        ("64KiB/written/1x1", 64 << 10, 1, 1, Durability::Written),
        ("64KiB/written/1x16", 64 << 10, 1, 16, Durability::Written),
        ("64KiB/written/1x64", 64 << 10, 1, 64, Durability::Written),
        ("1KiB/synced/1x1", 1 << 10, 1, 1, Durability::Synced),
        ("1KiB/synced/8x1", 1 << 10, 8, 1, Durability::Synced),
        ("64KiB/synced/1x1", 64 << 10, 1, 1, Durability::Synced),
        ("64KiB/synced/8x1", 64 << 10, 8, 1, Durability::Synced),
        ("64KiB/synced/8x8", 64 << 10, 8, 8, Durability::Synced),
    ];
    let mut run = 0u64;
    for (label, batch_bytes, writers, in_flight, durability) in cases {
        let batch = batch_of(batch_bytes);
        group.throughput(Throughput::Bytes(batch.len() as u64));
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter_custom(|iters| {
                run += 1;
                let path = dir.path().join(format!("append-{run}"));
                // iter_custom's count is per batch; the time covers all of them.
                run_appends(
                    &ex,
                    path,
                    batch.clone(),
                    iters,
                    writers,
                    in_flight,
                    durability,
                )
            })
        });
    }
    group.finish();
}

fn reads(c: &mut Criterion) {
    let dir = bench_dir();
    let ex = executor();
    let mut group = c.benchmark_group("engine_read");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    const LOG_BYTES: usize = 256 << 20;
    const READ_BYTES: usize = 1 << 20;
    for (label, batch_bytes, cache_bytes) in [
        ("cache/64KiB", 64 << 10, 512 << 20),
        ("disk/64KiB", 64 << 10, 0),
        ("cache/1KiB", 1 << 10, 512 << 20),
        ("disk/1KiB", 1 << 10, 0),
    ] {
        let path = dir.path().join(format!("read-{}", label.replace('/', "-")));
        let batch = batch_of(batch_bytes);
        // Filled on first use, so filtering the bench out skips it.
        let filled: std::cell::OnceCell<(Rc<PartitionLog>, i64)> = std::cell::OnceCell::new();
        let fill = || {
            let log = ex.run({
                let (path, batch) = (path.clone(), batch.clone());
                async move {
                    let log = PartitionLog::open(path, config(), BatchCache::new(cache_bytes))
                        .await
                        .expect("open");
                    let mut written = 0;
                    while written < LOG_BYTES {
                        // Appended in groups so the fill itself is quick.
                        let mut group = Vec::with_capacity(16 * batch.len());
                        for _ in 0..16 {
                            group.extend_from_slice(&batch);
                        }
                        written += group.len();
                        log.append(Bytes::from(group), 0, Durability::Written)
                            .await
                            .expect("append");
                    }
                    log
                }
            });
            let end = log.log_end_offset().0;
            (Rc::new(log), end)
        };
        group.throughput(Throughput::Bytes(READ_BYTES as u64));
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter_custom(|iters| {
                let (log, end) = filled.get_or_init(fill);
                let (log, end) = (log.clone(), *end);
                ex.run(async move {
                    // Sequential consumer: read on from where the last read ended, wrapping.
                    let mut next = 0;
                    let started = Instant::now();
                    for _ in 0..iters {
                        let bytes = log.read(Offset(next), READ_BYTES).await.expect("read");
                        let mut last = next;
                        for (_, b) in wharf_protocol::batch::batches(&bytes) {
                            last = wharf_protocol::batch::BatchHeader::view(b).map_or(last, |h| {
                                h.base_offset() + i64::from(h.last_offset_delta())
                            });
                        }
                        next = if last + 1 >= end { 0 } else { last + 1 };
                    }
                    started.elapsed()
                })
            })
        });
        if let Some((log, _)) = filled.into_inner() {
            ex.run(async move {
                if let Ok(log) = Rc::try_unwrap(log) {
                    log.delete().await.expect("delete");
                }
            });
        }
    }
    group.finish();
}

criterion_group!(benches, appends, reads);
criterion_main!(benches);
