//! Behaviour of a partition log through its public API, against real files.

mod common;

use std::rc::Rc;

use bytes::Bytes;
use common::*;
use wharf_engine::{BatchCache, Durability, EngineError, LogConfig, Offset, TimestampType};
use wharf_protocol::batch::{batches, validate_batch, BatchBuilder, BatchTimestampType};

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    names
}

#[test]
fn appends_get_dense_offsets_and_reads_return_exactly_the_bytes_from_cache_and_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t-0");
    run(async move {
        // A zero budget forces every read to disk.
        for budget in [64 << 20, 0] {
            let path = path.join(format!("budget-{budget}"));
            let log = open_with_cache(&path, small_config(), BatchCache::new(budget)).await;
            let mut expected = Vec::new();
            for i in 0..60u64 {
                let b = tagged_batch(
                    i,
                    1 + (i as usize % 4),
                    100 + 37 * i as usize,
                    1000 + i as i64,
                );
                let (base, last) = append(&log, b.clone(), Durability::Written).await;
                assert_eq!(
                    base,
                    expected.last().map_or(0, |(_, l, _)| l + 1),
                    "offsets are dense"
                );
                expected.push((base, last, as_stored(&b, base, 0)));
            }
            assert!(
                log.segment_count() > 1,
                "the small segment size made the log roll"
            );
            let all: Vec<(i64, Bytes)> = expected
                .iter()
                .map(|(b, _, bytes)| (*b, bytes.clone()))
                .collect();
            assert_eq!(read_all(&log, 0).await, all);
            // From any offset, the first batch returned is the one containing it.
            for (base, last, bytes) in &expected {
                for offset in [*base, *last] {
                    let got = log.read(Offset(offset), 1).await.expect("read");
                    assert_eq!(
                        &got, bytes,
                        "offset {offset} is served by its whole batch, even past max_bytes"
                    );
                }
            }
            log.close().await.expect("close");
        }
    });
}

#[test]
fn disk_reads_serve_whole_batches_up_to_max_bytes_from_any_offset() {
    // Batches around the size of one read from disk (64 KiB at least), so that reads start
    // at an index entry before the batch asked for and batches run past what one read
    // fetched.
    let dir = tempfile::tempdir().expect("tempdir");
    run(async move {
        let log = open_with_cache(dir.path(), LogConfig::default(), BatchCache::new(0)).await;
        let shapes = [(1, 500), (3, 7_000), (2, 35_000), (1, 3_000), (2, 65_000)];
        let mut expected = Vec::new();
        for i in 0..40u64 {
            let (records, value_bytes) = shapes[i as usize % shapes.len()];
            let b = tagged_batch(i, records, value_bytes, 1000 + i as i64);
            let (base, last) = append(&log, b.clone(), Durability::Written).await;
            expected.push((base, last, as_stored(&b, base, 0)));
        }
        for max_bytes in [1, 30_000, 65_536, 200_000, 1 << 20] {
            for (k, (base, last, _)) in expected.iter().enumerate() {
                let mut want = Vec::new();
                for (_, _, bytes) in &expected[k..] {
                    if !want.is_empty() && want.len() + bytes.len() > max_bytes {
                        break;
                    }
                    want.extend_from_slice(bytes);
                }
                for offset in [*base, *last] {
                    let got = log.read(Offset(offset), max_bytes).await.expect("read");
                    assert_eq!(
                        got.len(),
                        want.len(),
                        "offset {offset}, max_bytes {max_bytes}: whole batches up to the limit"
                    );
                    assert!(
                        got[..] == want[..],
                        "offset {offset}, max_bytes {max_bytes}"
                    );
                }
            }
        }
        log.close().await.expect("close");
    });
}

#[test]
fn reads_stop_at_max_bytes_and_the_log_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async move {
        let log = open(dir.path(), LogConfig::default()).await;
        let b = batch(2, 1000, 5);
        for _ in 0..10 {
            append(&log, b.clone(), Durability::Written).await;
        }
        let got = log.read(Offset(0), 3 * b.len()).await.expect("read");
        assert_eq!(batches(&got).count(), 3);
        let got = log.read(Offset(0), 3 * b.len() - 1).await.expect("read");
        assert_eq!(batches(&got).count(), 2);
        assert!(log
            .read(Offset(20), 1 << 20)
            .await
            .expect("read at the end")
            .is_empty());
        assert!(matches!(
            log.read(Offset(21), 1 << 20).await,
            Err(EngineError::OffsetOutOfRange { requested: 21, .. })
        ));
        assert!(matches!(
            log.read(Offset(-1), 1 << 20).await,
            Err(EngineError::OffsetOutOfRange { .. })
        ));
    });
}

#[test]
fn invalid_batches_are_rejected_and_nothing_is_appended() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async move {
        let config = LogConfig {
            max_message_bytes: 4096,
            ..LogConfig::default()
        };
        let log = open(dir.path(), config).await;
        let good = batch(1, 10, 0);
        let mut bad_crc = good.to_vec();
        *bad_crc.last_mut().expect("non-empty") ^= 0xff;
        let mut two = good.to_vec();
        two.extend_from_slice(&bad_crc);
        let mut trailing = good.to_vec();
        trailing.extend_from_slice(&[0u8; 30]);
        let mut bad_count = good.to_vec();
        bad_count[57..61].copy_from_slice(&5i32.to_be_bytes());
        let crc = crc32c::crc32c(&bad_count[21..]);
        bad_count[17..21].copy_from_slice(&crc.to_be_bytes());
        type Expect = fn(&EngineError) -> bool;
        let cases: Vec<(Vec<u8>, Expect)> = vec![
            (bad_crc, |e| matches!(e, EngineError::CorruptMessage(_))),
            (two, |e| matches!(e, EngineError::CorruptMessage(_))),
            (trailing, |e| matches!(e, EngineError::CorruptMessage(_))),
            (bad_count, |e| matches!(e, EngineError::InvalidRecord(_))),
            (batch(1, 5000, 0).to_vec(), |e| {
                matches!(e, EngineError::MessageTooLarge { max: 4096, .. })
            }),
            (Vec::new(), |e| matches!(e, EngineError::InvalidRecord(_))),
        ];
        for (bytes, expected) in cases {
            let err = log
                .append(Bytes::from(bytes), 0, Durability::Written)
                .await
                .expect_err("rejected");
            assert!(expected(&err), "unexpected error {err:?}");
        }
        assert_eq!(log.log_end_offset(), Offset(0));
        // Several valid batches in one call are appended together.
        let mut three = Vec::new();
        for _ in 0..3 {
            three.extend_from_slice(&good);
        }
        let info = log
            .append(Bytes::from(three), 0, Durability::Synced)
            .await
            .expect("append");
        assert_eq!((info.base_offset, info.last_offset), (Offset(0), Offset(2)));
    });
}

#[test]
fn concurrent_synced_appends_share_writes_and_fdatasyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async move {
        let log = Rc::new(open(dir.path(), LogConfig::default()).await);
        let tasks: Vec<_> = (0..64u64)
            .map(|i| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    log.append(tagged_batch(i, 2, 300, 0), 0, Durability::Synced)
                        .await
                        .expect("append")
                })
            })
            .collect();
        let mut offsets = Vec::new();
        for t in tasks {
            let info = t.await;
            offsets.push((info.base_offset.0, info.last_offset.0));
        }
        offsets.sort_unstable();
        for (i, (base, last)) in offsets.iter().enumerate() {
            assert_eq!((*base, *last), (2 * i as i64, 2 * i as i64 + 1));
        }
        let stats = log.stats();
        assert_eq!(stats.appended_batches, 64);
        assert!(
            stats.writes < 32,
            "appends queued during a write go out together: {stats:?}"
        );
        assert!(
            stats.fdatasyncs < 32,
            "one fdatasync serves many waiters: {stats:?}"
        );
        assert_eq!(read_all(&log, 0).await.len(), 64);
        log.sync().await.expect("sync with nothing new");
    });
}

#[test]
fn segments_are_named_by_base_offset_and_sealed_with_indexes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(async move {
        let config = LogConfig {
            segment_bytes: 10_000,
            index_interval_bytes: 500,
            ..LogConfig::default()
        };
        let log = open(&path, config).await;
        let b = batch(5, 400, 7);
        for _ in 0..12 {
            append(&log, b.clone(), Durability::Written).await;
        }
        log.close().await.expect("close");
        let names = files_in(&path);
        let logs: Vec<&String> = names.iter().filter(|n| n.ends_with(".log")).collect();
        assert!(logs.len() >= 2, "{names:?}");
        assert_eq!(logs[0], "00000000000000000000.log");
        let per_segment = 10_000 / b.len();
        assert_eq!(logs[1], &format!("{:020}.log", per_segment * 5));
        for log_name in &logs {
            let stem = log_name.trim_end_matches(".log");
            assert!(names.contains(&format!("{stem}.index")), "{names:?}");
            assert!(names.contains(&format!("{stem}.timeindex")), "{names:?}");
            // Sealed segments are trimmed to whole batches.
            let size = std::fs::metadata(path.join(log_name)).expect("stat").len();
            assert_eq!(size % b.len() as u64, 0);
        }
        assert!(names.contains(&"leader-epoch-checkpoint".to_string()));
    });
}

#[test]
fn reopening_after_a_clean_close_or_a_crash_keeps_every_written_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let expected = run({
        let path = path.clone();
        async move {
            let log = open(&path, small_config()).await;
            let mut expected = Vec::new();
            for i in 0..40u64 {
                let b = tagged_batch(i, 3, 700, 100 * i as i64);
                let (base, _) = append(&log, b.clone(), Durability::Written).await;
                expected.push((base, as_stored(&b, base, 0)));
            }
            log.close().await.expect("close");
            assert!(
                log.read(Offset(0), 100).await.is_err(),
                "a closed log serves nothing"
            );
            assert!(log
                .append(batch(1, 1, 0), 0, Durability::Written)
                .await
                .is_err());
            expected
        }
    });
    let expected = run({
        let path = path.clone();
        async move {
            let log = open(&path, small_config()).await;
            assert!(
                !path.join("wharf-clean-shutdown").exists(),
                "the marker is consumed on open"
            );
            assert_eq!(read_all(&log, 0).await, expected);
            assert_eq!(log.max_timestamp(), Some((39 * 100 + 2, Offset(119))));
            // Keep appending, then drop without closing: a crash for the log.
            let mut expected = expected;
            for i in 40..50u64 {
                let b = tagged_batch(i, 3, 700, 100 * i as i64);
                let (base, _) = append(&log, b.clone(), Durability::Written).await;
                expected.push((base, as_stored(&b, base, 0)));
            }
            expected
        }
    });
    run(async move {
        let log = open(&path, small_config()).await;
        assert_eq!(log.log_end_offset(), Offset(150));
        assert_eq!(read_all(&log, 0).await, expected);
        let (base, _) = append(&log, batch(1, 10, 0), Durability::Synced).await;
        assert_eq!(base, 150);
    });
}

#[test]
fn offset_for_timestamp_finds_the_exact_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async move {
        let config = LogConfig {
            segment_bytes: 4000,
            index_interval_bytes: 300,
            ..LogConfig::default()
        };
        let log = open(dir.path(), config).await;
        // Batch i holds records stamped 1000*i + 0, 10, 20 ...
        for i in 0..30i64 {
            let mut builder = BatchBuilder::new();
            for r in 0..4 {
                builder.push(None, Some(&[1u8; 200]), &[], 1000 * i + 10 * r);
            }
            append(&log, Bytes::from(builder.build()), Durability::Written).await;
        }
        assert!(log.segment_count() > 3);
        assert_eq!(
            log.offset_for_timestamp(0).await.expect("lookup"),
            Some((Offset(0), 0))
        );
        assert_eq!(
            log.offset_for_timestamp(5015).await.expect("lookup"),
            Some((Offset(22), 5020))
        );
        assert_eq!(
            log.offset_for_timestamp(5030).await.expect("lookup"),
            Some((Offset(23), 5030))
        );
        assert_eq!(
            log.offset_for_timestamp(5031).await.expect("lookup"),
            Some((Offset(24), 6000))
        );
        assert_eq!(
            log.offset_for_timestamp(29_030).await.expect("lookup"),
            Some((Offset(119), 29_030))
        );
        assert_eq!(
            log.offset_for_timestamp(29_031).await.expect("lookup"),
            None
        );
        assert_eq!(log.max_timestamp(), Some((29_030, Offset(119))));
        // Below the log start nothing is found.
        log.delete_records_before(Offset(50))
            .await
            .expect("delete records");
        assert_eq!(
            log.offset_for_timestamp(0).await.expect("lookup"),
            Some((Offset(50), 12_020))
        );
    });
}

#[test]
fn log_append_time_restamps_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async move {
        let config = LogConfig {
            message_timestamp_type: TimestampType::LogAppendTime,
            ..LogConfig::default()
        };
        let log = open(dir.path(), config).await;
        let info = log
            .append(batch(3, 10, 5), 0, Durability::Written)
            .await
            .expect("append");
        assert!(info.log_append_time_ms > 1_600_000_000_000);
        let got = log.read(Offset(0), 1 << 20).await.expect("read");
        let stored = validate_batch(&got, 1 << 20).expect("the CRC was recomputed");
        assert_eq!(stored.timestamp_type(), BatchTimestampType::LogAppendTime);
        assert_eq!(stored.max_timestamp, info.log_append_time_ms);
        assert_eq!(
            log.offset_for_timestamp(info.log_append_time_ms)
                .await
                .expect("lookup"),
            Some((Offset(0), info.log_append_time_ms))
        );
    });
}

#[test]
fn leader_epochs_are_tracked_persisted_and_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run({
        let path = path.clone();
        async move {
            let log = open(&path, small_config()).await;
            for (epoch, n) in [(1, 3), (3, 2), (3, 2), (7, 1)] {
                for _ in 0..n {
                    log.append(batch(2, 50, 0), epoch, Durability::Written)
                        .await
                        .expect("append");
                }
            }
            // Epoch 1: offsets 0-5, epoch 3: 6-13, epoch 7: 14-15.
            assert_eq!(log.end_offset_for_leader_epoch(1), Some((1, Offset(6))));
            assert_eq!(log.end_offset_for_leader_epoch(2), Some((1, Offset(6))));
            assert_eq!(log.end_offset_for_leader_epoch(5), Some((3, Offset(14))));
            assert_eq!(log.end_offset_for_leader_epoch(7), Some((7, Offset(16))));
            assert_eq!(log.end_offset_for_leader_epoch(8), None);
            let stored = log.read(Offset(6), 1).await.expect("read");
            assert_eq!(
                validate_batch(&stored, 1 << 20)
                    .expect("valid")
                    .partition_leader_epoch,
                3
            );
            log.close().await.expect("close");
            let checkpoint =
                std::fs::read_to_string(path.join("leader-epoch-checkpoint")).expect("checkpoint");
            assert_eq!(checkpoint, "0\n3\n1 0\n3 6\n7 14\n");
        }
    });
    // Without the checkpoint, the epochs come back from the batches themselves.
    std::fs::remove_file(path.join("leader-epoch-checkpoint")).expect("remove");
    run(async move {
        let log = open(&path, small_config()).await;
        assert_eq!(
            log.leader_epochs(),
            vec![(1, Offset(0)), (3, Offset(6)), (7, Offset(14))]
        );
        log.truncate_to(Offset(9)).await.expect("truncate");
        // The batch holding offset 9 (8-9) goes whole.
        assert_eq!(log.log_end_offset(), Offset(8));
        assert_eq!(log.end_offset_for_leader_epoch(3), Some((3, Offset(8))));
        assert_eq!(log.leader_epochs(), vec![(1, Offset(0)), (3, Offset(6))]);
    });
}

#[test]
fn truncation_removes_the_tail_across_segments_and_appends_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(async move {
        for cache_budget in [64 << 20, 0] {
            let path = path.join(format!("c{cache_budget}"));
            let log = open_with_cache(&path, small_config(), BatchCache::new(cache_budget)).await;
            let mut expected = Vec::new();
            for i in 0..100u64 {
                let b = tagged_batch(i, 1, 2000, i as i64);
                let (base, _) = append(&log, b.clone(), Durability::Written).await;
                expected.push((base, as_stored(&b, base, 0)));
            }
            let segments = log.segment_count();
            assert!(segments > 2);
            log.truncate_to(Offset(30)).await.expect("truncate");
            assert_eq!(log.log_end_offset(), Offset(30));
            assert!(log.segment_count() < segments);
            expected.truncate(30);
            assert_eq!(read_all(&log, 0).await, expected);
            assert_eq!(log.max_timestamp(), Some((29, Offset(29))));
            let b = tagged_batch(1000, 1, 10, 0);
            let (base, _) = append(&log, b.clone(), Durability::Synced).await;
            assert_eq!(base, 30);
            expected.push((30, as_stored(&b, 30, 0)));
            assert_eq!(read_all(&log, 0).await, expected);
            log.close().await.expect("close");
            let log = open(&path, small_config()).await;
            assert_eq!(read_all(&log, 0).await, expected);
            // Truncating below the log start empties the log and starts it there.
            log.truncate_to(Offset(0))
                .await
                .expect("truncate everything");
            assert_eq!(
                (log.log_start_offset(), log.log_end_offset()),
                (Offset(0), Offset(0))
            );
            assert!(read_all(&log, 0).await.is_empty());
        }
    });
}

#[test]
fn delete_records_moves_the_log_start_and_deletes_whole_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run({
        let path = path.clone();
        async move {
            let log = open(&path, small_config()).await;
            for i in 0..60u64 {
                append(&log, tagged_batch(i, 1, 2000, 0), Durability::Written).await;
            }
            let before = log.segment_count();
            assert_eq!(
                log.delete_records_before(Offset(45)).await.expect("delete"),
                Offset(45)
            );
            assert_eq!(log.log_start_offset(), Offset(45));
            assert!(log.segment_count() < before);
            assert!(matches!(
                log.read(Offset(44), 100).await,
                Err(EngineError::OffsetOutOfRange { .. })
            ));
            let got = read_all(&log, 45).await;
            assert_eq!(got.first().map(|(b, _)| *b), Some(45));
            assert!(matches!(
                log.delete_records_before(Offset(61)).await,
                Err(EngineError::OffsetOutOfRange { .. })
            ));
            log.close().await.expect("close");
        }
    });
    run(async move {
        let log = open(&path, small_config()).await;
        assert_eq!(
            log.log_start_offset(),
            Offset(45),
            "the log start survives a restart"
        );
        assert_eq!(log.log_end_offset(), Offset(60));
    });
}

#[test]
fn retention_deletes_old_and_excess_segments_but_never_the_active_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async move {
        let config = LogConfig {
            segment_bytes: 8000,
            retention_ms: -1,
            retention_bytes: -1,
            ..LogConfig::default()
        };
        let log = open(dir.path(), config.clone()).await;
        for i in 0..40i64 {
            append(
                &log,
                tagged_batch(i as u64, 1, 1000, 1_000_000 + i * 1000),
                Durability::Written,
            )
            .await;
        }
        let segments = log.segment_count();
        assert!(segments >= 5);
        log.maintain(2_000_000).await.expect("maintain");
        assert_eq!(
            log.segment_count(),
            segments,
            "nothing to do without limits"
        );

        log.set_config(LogConfig {
            retention_bytes: 20_000,
            ..config.clone()
        });
        log.maintain(2_000_000).await.expect("maintain");
        assert!(
            log.size_bytes() <= 20_000 + 8000,
            "size {}",
            log.size_bytes()
        );
        assert!(log.size_bytes() > 20_000 - 8000);
        let start = log.log_start_offset();
        assert!(start > Offset(0));
        assert_eq!(
            read_all(&log, start.0).await.first().map(|(b, _)| *b),
            Some(start.0)
        );

        // Records up to 1_029_000 are older than the retention at this time.
        log.set_config(LogConfig {
            retention_ms: 1_000_000,
            ..config.clone()
        });
        log.maintain(2_030_000).await.expect("maintain");
        assert!(log.log_start_offset() > start);
        assert!(log.log_start_offset() <= Offset(30));

        // Everything expired: only the active segment stays.
        log.set_config(LogConfig {
            retention_ms: 0,
            ..config.clone()
        });
        log.maintain(10_000_000).await.expect("maintain");
        assert_eq!(log.segment_count(), 1);
        assert!(log.size_bytes() > 0, "the active segment is kept");
        assert_eq!(log.log_end_offset(), Offset(40));
    });
}

#[test]
fn segment_ms_rolls_on_upkeep_so_retention_can_delete_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async move {
        let config = LogConfig {
            segment_ms: 1000,
            retention_ms: -1,
            ..LogConfig::default()
        };
        let log = open(dir.path(), config.clone()).await;
        append(&log, batch(1, 10, 0), Durability::Written).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        log.maintain(now).await.expect("maintain");
        assert_eq!(log.segment_count(), 1, "not old enough to roll");
        log.maintain(now + 2000).await.expect("maintain");
        assert_eq!(log.segment_count(), 2, "rolled");
        log.maintain(now + 4000).await.expect("maintain");
        assert_eq!(
            log.segment_count(),
            2,
            "an empty active segment does not roll"
        );
        log.set_config(LogConfig {
            retention_ms: 0,
            ..config
        });
        log.maintain(now + 5000).await.expect("maintain");
        assert_eq!(log.segment_count(), 1);
        assert_eq!(log.log_start_offset(), Offset(1));
        assert_eq!(
            append(&log, batch(1, 10, 0), Durability::Written).await.0,
            1
        );
    });
}

#[test]
fn delete_removes_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("topic-3");
    run(async move {
        let log = open(&path, small_config()).await;
        append(&log, batch(10, 10, 0), Durability::Written).await;
        log.delete().await.expect("delete");
        assert!(!path.exists());
    });
}

#[test]
fn an_empty_log_leaves_no_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("empty-0");
    run({
        let path = path.clone();
        async move {
            let log = open(&path, LogConfig::default()).await;
            assert_eq!(
                (log.log_start_offset(), log.log_end_offset()),
                (Offset(0), Offset(0))
            );
            assert_eq!(log.max_timestamp(), None);
            assert_eq!(log.offset_for_timestamp(0).await.expect("lookup"), None);
            assert!(log.read(Offset(0), 100).await.expect("read").is_empty());
            log.close().await.expect("close");
        }
    });
    assert!(files_in(&path).is_empty(), "{:?}", files_in(&path));
}
