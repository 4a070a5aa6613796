//! Memory per open partition: ten thousand empty partitions on one shard must stay well
//! under 640 MiB of resident memory (64 KiB each) and hold no file descriptors.

mod common;

use common::*;
use wharf_engine::{BatchCache, Durability, LogConfig, PartitionLog};

const PARTITIONS: usize = 10_000;
const BUDGET_PER_PARTITION_BYTES: u64 = 64 << 10;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[test]
fn ten_thousand_empty_partitions_fit_in_a_small_memory_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_path_buf();
    run(async move {
        let cache = BatchCache::new(64 << 20);
        // Warm up the executor and the allocator with one partition.
        let first = PartitionLog::open(data.join("warm-0"), LogConfig::default(), cache.clone())
            .await
            .expect("open");
        let (rss_before, fds_before) = (rss_bytes(), open_fds());
        let started = std::time::Instant::now();
        // Opened 100 at a time, as a shard starting up would: directory creation waits on
        // the file system and overlaps in io_uring's workers.
        let mut logs = Vec::with_capacity(PARTITIONS);
        for chunk in (0..PARTITIONS).collect::<Vec<_>>().chunks(100) {
            let tasks: Vec<_> = chunk
                .iter()
                .map(|p| {
                    let (path, cache) = (data.join(format!("topic-{p}")), cache.clone());
                    glommio::spawn_local(async move {
                        PartitionLog::open(path, LogConfig::default(), cache)
                            .await
                            .expect("open")
                    })
                })
                .collect();
            for task in tasks {
                logs.push(task.await);
            }
        }
        let (rss_after, fds_after) = (rss_bytes(), open_fds());
        println!("opened in {:?}", started.elapsed());
        let per_partition = rss_after.saturating_sub(rss_before) / PARTITIONS as u64;
        println!(
            "{PARTITIONS} empty partitions: RSS {:.1} MiB -> {:.1} MiB, {per_partition} bytes each; fds {fds_before} -> {fds_after}",
            rss_before as f64 / (1 << 20) as f64,
            rss_after as f64 / (1 << 20) as f64
        );
        assert!(
            per_partition < BUDGET_PER_PARTITION_BYTES,
            "{per_partition} bytes per empty partition"
        );
        assert!(
            fds_after < fds_before + 16,
            "empty partitions hold no file descriptors ({fds_before} -> {fds_after})"
        );
        assert!(
            std::fs::read_dir(data.join("topic-0"))
                .expect("dir")
                .next()
                .is_none(),
            "and no files"
        );

        // For scale, on a fiftieth of them: one small batch each (a segment file, its first
        // extent, an open file descriptor).
        let before = rss_bytes();
        let written = PARTITIONS / 50;
        for log in &logs[..written] {
            append(log, batch(1, 100, 0), Durability::Written).await;
        }
        let per_written = rss_bytes().saturating_sub(before) / written as u64;
        println!(
            "after one 100-byte record in {written} of them: {per_written} more bytes each, fds {}",
            open_fds()
        );
        // Closing many logs at once lets their syncs overlap (as a shutdown should).
        let logs: Vec<std::rc::Rc<PartitionLog>> = logs.into_iter().map(std::rc::Rc::new).collect();
        let closing: Vec<_> = logs
            .iter()
            .map(|log| {
                let log = log.clone();
                glommio::spawn_local(async move { log.close().await })
            })
            .collect();
        for task in closing {
            task.await.expect("close");
        }
        println!("opened, written and closed in {:?}", started.elapsed());
        first.close().await.expect("close");
    });
}
