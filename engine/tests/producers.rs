//! Idempotent producers (KIP-98) through the log's public API: duplicates answered with
//! their first offsets, gaps and fenced epochs refused, and the state rebuilt on reopen.

mod common;

use bytes::Bytes;
use common::*;
use wharf_engine::{Durability, EngineError, Offset};
use wharf_protocol::batch::BatchBuilder;

/// `records` records from producer `pid`/`epoch` starting at sequence `seq`, values tagged.
fn idempotent(pid: i64, epoch: i16, seq: i32, records: usize, value_bytes: usize) -> Bytes {
    let mut b = BatchBuilder::new().producer(pid, epoch, seq);
    for i in 0..records {
        let mut value = vec![0u8; value_bytes.max(8)];
        value[..4].copy_from_slice(&seq.to_be_bytes());
        value[4..8].copy_from_slice(&(i as u32).to_be_bytes());
        b.push(None, Some(&value), &[], 1_000 + i as i64);
    }
    Bytes::from(b.build())
}

#[test]
fn a_retried_batch_is_not_appended_again_and_gets_its_first_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t-0");
    run(async move {
        let log = open(&path, small_config()).await;
        append(&log, batch(2, 10, 0), Durability::Written).await;
        let first = idempotent(7, 0, 0, 3, 10);
        assert_eq!(
            append(&log, first.clone(), Durability::Written).await,
            (2, 4)
        );
        assert_eq!(
            append(&log, first.clone(), Durability::Synced).await,
            (2, 4)
        );
        assert_eq!(log.log_end_offset(), Offset(5));
        assert_eq!(
            append(&log, idempotent(7, 0, 3, 2, 10), Durability::Written).await,
            (5, 6)
        );
        // The first batch is still among the last five: still a duplicate.
        assert_eq!(append(&log, first, Durability::Written).await, (2, 4));
        assert_eq!(log.log_end_offset(), Offset(7));
        assert_eq!(read_all(&log, 0).await.len(), 3);
    });
}

#[test]
fn gaps_and_fenced_epochs_are_refused_and_append_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t-0");
    run(async move {
        let log = open(&path, small_config()).await;
        append(&log, idempotent(1, 3, 0, 2, 10), Durability::Written).await;
        let gap = log
            .append(idempotent(1, 3, 5, 1, 10), 0, Durability::Written)
            .await;
        assert!(
            matches!(gap, Err(EngineError::OutOfOrderSequence(_))),
            "{gap:?}"
        );
        let old = log
            .append(idempotent(1, 2, 2, 1, 10), 0, Durability::Written)
            .await;
        assert!(
            matches!(old, Err(EngineError::InvalidProducerEpoch(_))),
            "{old:?}"
        );
        let new_epoch_mid = log
            .append(idempotent(1, 4, 2, 1, 10), 0, Durability::Written)
            .await;
        assert!(matches!(
            new_epoch_mid,
            Err(EngineError::OutOfOrderSequence(_))
        ));
        let txn = log
            .append(
                Bytes::from(
                    {
                        let mut b = BatchBuilder::new()
                            .producer(9, 0, -1)
                            .transactional(true)
                            .control(true);
                        b.push(None, Some(b"x"), &[], 1);
                        b
                    }
                    .build(),
                ),
                0,
                Durability::Written,
            )
            .await;
        assert!(
            matches!(txn, Err(EngineError::InvalidTransactionalBatch(_))),
            "a client may not write a control batch"
        );
        assert_eq!(log.log_end_offset(), Offset(2));
        // A bumped epoch starting at 0 is accepted, and fences the old epoch.
        assert_eq!(
            append(&log, idempotent(1, 4, 0, 1, 10), Durability::Written).await,
            (2, 2)
        );
        // Several batches in one append are checked in order, all or nothing.
        let mut two = idempotent(1, 4, 1, 1, 10).to_vec();
        two.extend_from_slice(&idempotent(1, 4, 2, 2, 10));
        assert_eq!(
            append(&log, Bytes::from(two.clone()), Durability::Written).await,
            (3, 5)
        );
        assert_eq!(
            append(&log, Bytes::from(two), Durability::Written).await,
            (3, 5)
        );
        let mut bad = idempotent(1, 4, 4, 1, 10).to_vec();
        bad.extend_from_slice(&idempotent(1, 4, 9, 1, 10));
        assert!(log
            .append(Bytes::from(bad), 0, Durability::Written)
            .await
            .is_err());
        assert_eq!(log.log_end_offset(), Offset(6));
    });
}

#[test]
fn producer_state_survives_clean_close_crash_and_segment_rolls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t-0");
    // Batches of ~5 KiB with 64 KiB segments: several rolls, so snapshots are written.
    let batches: Vec<Bytes> = (0..40).map(|i| idempotent(5, 0, i * 2, 2, 2_500)).collect();
    let expected: Vec<(i64, i64)> = (0..40).map(|i| (i * 2, i * 2 + 1)).collect();
    run({
        let (path, batches) = (path.clone(), batches.clone());
        async move {
            let log = open(&path, small_config()).await;
            for b in &batches[..20] {
                append(&log, b.clone(), Durability::Synced).await;
            }
            log.close().await.expect("close");
        }
    });
    assert!(
        std::fs::read_dir(&path).expect("list").any(|e| e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .ends_with(".snapshot")),
        "snapshots are written"
    );
    run({
        let (path, batches, expected) = (path.clone(), batches.clone(), expected.clone());
        async move {
            // Clean reopen: the last acknowledged batches are still duplicates.
            let log = open(&path, small_config()).await;
            for i in 15..20 {
                assert_eq!(
                    append(&log, batches[i].clone(), Durability::Written).await,
                    expected[i]
                );
            }
            assert_eq!(log.log_end_offset(), Offset(40));
            for b in &batches[20..] {
                append(&log, b.clone(), Durability::Synced).await;
            }
            // Dropped without close: a crash for the log.
        }
    });
    run(async move {
        let log = open(&path, small_config()).await;
        assert!(log.segment_count() > 1);
        for i in 35..40 {
            assert_eq!(
                append(&log, batches[i].clone(), Durability::Written).await,
                expected[i]
            );
        }
        assert_eq!(log.log_end_offset(), Offset(80));
        // And the producer continues where it left off; a gap is still a gap.
        assert_eq!(
            append(&log, idempotent(5, 0, 80, 1, 10), Durability::Written).await,
            (80, 80)
        );
        assert!(matches!(
            log.append(idempotent(5, 0, 90, 1, 10), 0, Durability::Written)
                .await,
            Err(EngineError::OutOfOrderSequence(_))
        ));
    });
}

#[test]
fn truncation_forgets_the_batches_it_removes_and_expiry_forgets_silent_producers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t-0");
    run(async move {
        let log = open(&path, small_config()).await;
        for i in 0..4 {
            append(&log, idempotent(3, 0, i, 1, 10), Durability::Written).await;
        }
        log.truncate_to(Offset(2)).await.expect("truncate");
        // Sequence 2 is gone from the log, so resending it appends it again.
        assert_eq!(
            append(&log, idempotent(3, 0, 2, 1, 10), Durability::Written).await,
            (2, 2)
        );
        assert_eq!(log.producer_count(), 1);
        assert_eq!(log.expire_producers(i64::MAX, 86_400_000), 1);
        assert_eq!(log.producer_count(), 0);
    });
}

#[test]
fn delete_records_keeps_the_state_so_a_late_retry_is_still_a_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t-0");
    run(async move {
        let log = open(&path, small_config()).await;
        append(&log, idempotent(4, 0, 0, 2, 10), Durability::Written).await;
        append(&log, idempotent(4, 0, 2, 2, 10), Durability::Written).await;
        log.delete_records_before(Offset(4)).await.expect("delete");
        // As in Kafka: the retry gets its original offsets, nothing is appended.
        assert_eq!(
            append(&log, idempotent(4, 0, 2, 2, 10), Durability::Written).await,
            (2, 3)
        );
        assert_eq!(log.log_end_offset(), Offset(4));
        assert_eq!(
            append(&log, idempotent(4, 0, 4, 1, 10), Durability::Written).await,
            (4, 4)
        );
    });
}

#[test]
fn a_damaged_snapshot_after_a_clean_close_falls_back_to_scanning_the_active_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t-0");
    run({
        let path = path.clone();
        async move {
            let log = open(&path, small_config()).await;
            for i in 0..3 {
                append(&log, idempotent(6, 0, i, 1, 10), Durability::Written).await;
            }
            log.close().await.expect("close");
        }
    });
    let snapshot = path.join(format!("{:020}.snapshot", 3));
    let mut bytes = std::fs::read(&snapshot).expect("a snapshot at the log end");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&snapshot, bytes).expect("damage");
    run(async move {
        let log = open(&path, small_config()).await;
        assert_eq!(
            append(&log, idempotent(6, 0, 2, 1, 10), Durability::Written).await,
            (2, 2)
        );
        assert_eq!(log.log_end_offset(), Offset(3));
    });
}

#[test]
fn the_snapshot_at_the_active_segment_base_survives_repeated_clean_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t-0");
    // Producer 1 writes once; producer 2 then fills segments, so producer 1's batch is in a
    // sealed segment and known after a crash only through the snapshot at the active base.
    run({
        let path = path.clone();
        async move {
            let log = open(&path, small_config()).await;
            append(&log, idempotent(1, 0, 0, 1, 10), Durability::Written).await;
            for i in 0..30 {
                append(&log, idempotent(2, 0, i, 1, 5_000), Durability::Written).await;
            }
            assert!(log.segment_count() > 1);
            log.close().await.expect("close");
        }
    });
    // Each clean run moves the log end, so each close writes a snapshot at a new offset.
    for k in 0..2 {
        run({
            let path = path.clone();
            async move {
                let log = open(&path, small_config()).await;
                append(&log, idempotent(2, 0, 30 + k, 1, 10), Durability::Written).await;
                log.close().await.expect("close")
            }
        });
    }
    run({
        let path = path.clone();
        async move {
            let log = open(&path, small_config()).await;
            append(&log, idempotent(2, 0, 32, 1, 10), Durability::Written).await;
            // Dropped without close: a crash.
        }
    });
    run(async move {
        let log = open(&path, small_config()).await;
        assert_eq!(
            append(&log, idempotent(1, 0, 0, 1, 10), Durability::Written).await,
            (0, 0)
        );
        assert_eq!(log.log_end_offset(), Offset(34));
    });
}

#[test]
fn with_log_append_time_a_duplicate_answers_the_first_append_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t-0");
    run(async move {
        let config = wharf_engine::LogConfig {
            message_timestamp_type: wharf_engine::TimestampType::LogAppendTime,
            ..small_config()
        };
        let log = open(&path, config).await;
        let b = idempotent(8, 0, 0, 2, 10);
        let first = log
            .append(b.clone(), 0, Durability::Written)
            .await
            .expect("append");
        assert!(first.log_append_time_ms > 0);
        // Later than the first append's millisecond, so "now" would differ.
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        let retry = log.append(b, 0, Durability::Written).await.expect("retry");
        assert_eq!(
            (retry.base_offset, retry.log_append_time_ms),
            (first.base_offset, first.log_append_time_ms)
        );
    });
}
