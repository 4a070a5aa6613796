//! Damage on disk: flipped bytes, zeroed tails, files cut mid-batch, damaged indexes.
//! Recovery must cut the log exactly at the first damaged batch and serve nothing corrupt.

mod common;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use wharf_engine::{BatchCache, DamageKind, Durability, EngineError, LogConfig, Offset};

const SEGMENT: &str = "00000000000000000000.log";

/// Writes `sizes.len()` batches (one segment) and drops the log without closing it, as a
/// crash would. Returns the stored batches as `(base offset, position, bytes)`.
fn write_log(dir: &Path, sizes: &[(usize, usize)]) -> Vec<(i64, u64, Bytes)> {
    let dir = dir.to_path_buf();
    let sizes = sizes.to_vec();
    run(async move {
        let log = open(&dir, LogConfig::default()).await;
        let mut out = Vec::new();
        let mut position = 0u64;
        for (i, (records, value_bytes)) in sizes.into_iter().enumerate() {
            let b = tagged_batch(i as u64, records, value_bytes, i as i64);
            let (base, _) = append(&log, b.clone(), Durability::Written).await;
            out.push((base, position, as_stored(&b, base, 0)));
            position += b.len() as u64;
        }
        out
    })
}

/// Reopens the log and checks it holds exactly `expected`, its segment file cut right after.
fn assert_recovered_to(dir: &Path, expected: &[(i64, u64, Bytes)]) {
    let dir: PathBuf = dir.to_path_buf();
    let expected = expected.to_vec();
    run(async move {
        let log = open_with_cache(&dir, LogConfig::default(), BatchCache::new(0)).await;
        let end = expected
            .last()
            .map_or(0, |(_, pos, b)| pos + b.len() as u64);
        assert_eq!(
            std::fs::metadata(dir.join(SEGMENT)).expect("segment").len(),
            end,
            "cut exactly at the damage"
        );
        let got = read_all(&log, 0).await;
        let want: Vec<(i64, Bytes)> = expected.iter().map(|(o, _, b)| (*o, b.clone())).collect();
        assert_eq!(got, want);
        assert_eq!(
            log.log_end_offset(),
            Offset(expected.last().map_or(0, |(o, _, b)| o + records_in(b)))
        );
        // The log takes appends right where it was cut.
        let (base, _) = append(&log, batch(1, 10, 0), Durability::Synced).await;
        assert_eq!(base, log.log_end_offset().0 - 1);
    });
}

fn records_in(batch: &Bytes) -> i64 {
    i64::from(
        wharf_protocol::batch::validate_batch(batch, usize::MAX)
            .expect("valid")
            .records_count,
    )
}

fn damage(dir: &Path, f: impl FnOnce(&mut std::fs::File)) {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(SEGMENT))
        .expect("open the segment");
    f(&mut file);
    file.sync_all().expect("sync");
}

fn sizes() -> impl Strategy<Value = Vec<(usize, usize)>> {
    proptest::collection::vec((1usize..6, 0usize..3000), 2..25)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn a_flipped_byte_cuts_the_log_at_its_batch(sizes in sizes(), which in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), bits in 1u8..=255) {
        let dir = tempfile::tempdir().expect("tempdir");
        let batches = write_log(dir.path(), &sizes);
        let k = which.index(batches.len());
        let (_, pos, bytes) = &batches[k];
        // Any byte the CRC covers, the length, the magic or the base offset.
        let candidates: Vec<usize> = (0..bytes.len()).filter(|i| *i < 12 || *i == 16 || *i >= 17).collect();
        let i = candidates[at.index(candidates.len())];
        damage(dir.path(), |f| {
            f.seek(SeekFrom::Start(pos + i as u64)).expect("seek");
            f.write_all(&[bytes[i] ^ bits]).expect("write");
        });
        assert_recovered_to(dir.path(), &batches[..k]);
    }

    #[test]
    fn a_zeroed_tail_cuts_the_log_at_its_batch(sizes in sizes(), which in any::<prop::sample::Index>(), into in any::<prop::sample::Index>()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let batches = write_log(dir.path(), &sizes);
        let k = which.index(batches.len());
        let (_, pos, bytes) = &batches[k];
        let from = pos + into.index(bytes.len()) as u64;
        let end = batches.last().map_or(0, |(_, p, b)| p + b.len() as u64);
        damage(dir.path(), |f| {
            f.seek(SeekFrom::Start(from)).expect("seek");
            f.write_all(&vec![0u8; (end - from) as usize]).expect("zero");
        });
        // Zeroes over bytes that were zero already (padding in a value) damage nothing.
        let first_changed = batches.iter().position(|(_, p, b)| {
            b.iter().enumerate().any(|(i, byte)| p + i as u64 >= from && *byte != 0)
        });
        assert_recovered_to(dir.path(), &batches[..first_changed.unwrap_or(batches.len())]);
    }

    #[test]
    fn a_file_cut_mid_batch_is_cut_at_that_batch(sizes in sizes(), which in any::<prop::sample::Index>(), into in any::<prop::sample::Index>()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let batches = write_log(dir.path(), &sizes);
        let k = which.index(batches.len());
        let (_, pos, bytes) = &batches[k];
        let cut = pos + 1 + into.index(bytes.len() - 1) as u64;
        damage(dir.path(), |f| f.set_len(cut).expect("truncate"));
        assert_recovered_to(dir.path(), &batches[..k]);
    }
}

#[test]
fn garbage_after_the_last_batch_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let batches = write_log(dir.path(), &[(2, 100), (3, 5000), (1, 0)]);
    damage(dir.path(), |f| {
        f.seek(SeekFrom::End(0)).expect("seek");
        f.write_all(&[0x42; 777]).expect("write");
    });
    assert_recovered_to(dir.path(), &batches);
}

#[test]
fn damage_after_a_clean_shutdown_is_never_served_and_moves_the_log_start_past_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run({
        let path = path.clone();
        async move {
            let log = open(&path, LogConfig::default()).await;
            for i in 0..5 {
                append(&log, tagged_batch(i, 2, 1000, 0), Durability::Written).await;
            }
            log.close().await.expect("close");
        }
    });
    let size = std::fs::metadata(path.join(SEGMENT)).expect("stat").len();
    damage(&path, |f| {
        f.seek(SeekFrom::Start(size - 10)).expect("seek");
        f.write_all(&[0xee]).expect("write");
    });
    run({
        let path = path.clone();
        async move {
            let log = open_with_cache(&path, LogConfig::default(), BatchCache::new(0)).await;
            assert_eq!(
                log.read(Offset(0), 1)
                    .await
                    .expect("first batch is intact")
                    .len() as u64,
                size / 5
            );
            // A read returns the valid batches before the damaged one.
            let prefix = log
                .read(Offset(0), 1 << 20)
                .await
                .expect("the batches before it");
            assert_eq!(prefix.len() as u64, 4 * size / 5);
            // A read of the damaged batch moves the log start past it: the reader gets
            // OFFSET_OUT_OF_RANGE, not the bytes and not a silent skip.
            let err = log
                .read(Offset(9), 1 << 20)
                .await
                .expect_err("the damaged batch is not served");
            assert!(
                matches!(err, EngineError::OffsetOutOfRange { log_start: 10, .. }),
                "{err:?}"
            );
            assert_eq!(log.log_start_offset(), Offset(10));
            let reports = log.damage_reports();
            assert_eq!(reports.len(), 1, "{reports:?}");
            assert_eq!(reports[0].kind, DamageKind::Skipped);
            assert_eq!((reports[0].first_offset, reports[0].end_offset), (8, 10));
            // Writes go on after it.
            let (base, _) = append(&log, batch(1, 10, 0), Durability::Synced).await;
            assert_eq!(base, 10);
            log.close().await.expect("close");
        }
    });
    // The moved log start survives a restart.
    run(async move {
        let log = open(&path, LogConfig::default()).await;
        assert_eq!(log.log_start_offset(), Offset(10));
        assert_eq!(log.log_end_offset(), Offset(11));
    });
}

#[test]
fn damaged_or_missing_indexes_are_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let config = LogConfig {
        segment_bytes: 20_000,
        index_interval_bytes: 1000,
        ..LogConfig::default()
    };
    let expected = run({
        let path = path.clone();
        let config = config.clone();
        async move {
            let log = open(&path, config).await;
            let mut expected = Vec::new();
            for i in 0..60u64 {
                let b = tagged_batch(i, 2, 600, 1000 * i as i64);
                let (base, _) = append(&log, b.clone(), Durability::Written).await;
                expected.push((base, as_stored(&b, base, 0)));
            }
            assert!(log.segment_count() >= 3);
            log.close().await.expect("close");
            expected
        }
    });
    let mut names: Vec<PathBuf> = std::fs::read_dir(&path)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    for (i, p) in names
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "index"))
        .enumerate()
    {
        if i % 2 == 0 {
            std::fs::write(p, [0xffu8; 13]).expect("damage an index");
        } else {
            std::fs::remove_file(p).expect("remove an index");
        }
    }
    for p in names
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "timeindex"))
    {
        std::fs::remove_file(p).expect("remove a time index");
    }
    run(async move {
        let log = open_with_cache(&path, config, BatchCache::new(0)).await;
        assert_eq!(read_all(&log, 0).await, expected);
        for offset in [0, 17, 64, 119] {
            let got = log.read(Offset(offset), 1).await.expect("read");
            assert_eq!(got, expected[offset as usize / 2].1);
        }
        assert_eq!(log.max_timestamp(), Some((59_001, Offset(119))));
        assert_eq!(
            log.offset_for_timestamp(30_500).await.expect("lookup"),
            Some((Offset(62), 31_000))
        );
    });
}

/// Six batches of two records (offsets 0..12) in one segment, the log dropped without a
/// close (a crash). Returns the stored batches as `(base offset, position, bytes)`.
fn six_batches(dir: &Path) -> Vec<(i64, u64, Bytes)> {
    write_log(dir, &[(2, 300); 6])
}

#[test]
fn recovery_reports_the_offsets_a_cut_loses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let batches = six_batches(dir.path());
    let (_, pos, _) = batches[3];
    // A byte of the fourth batch's records (inside the CRC).
    damage(dir.path(), |f| {
        f.seek(SeekFrom::Start(pos + 70)).expect("seek");
        f.write_all(&[0x5a]).expect("write");
    });
    let path = dir.path().to_path_buf();
    run(async move {
        let log = open_with_cache(&path, LogConfig::default(), BatchCache::new(0)).await;
        assert_eq!(log.log_end_offset(), Offset(6));
        let reports = log.damage_reports();
        assert_eq!(reports.len(), 1, "{reports:?}");
        let r = &reports[0];
        assert_eq!(r.kind, DamageKind::TailCut);
        assert_eq!((r.first_offset, r.end_offset), (6, 12));
        assert_eq!(r.position, pos);
        assert!(
            r.describe().contains("offsets 6..12 are lost"),
            "{}",
            r.describe()
        );
    });
}

#[test]
fn a_batch_whose_base_offset_does_not_follow_is_damage_never_a_skip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let batches = six_batches(dir.path());
    let (_, pos, _) = batches[3];
    // The base offset is outside the CRC: 6 becomes 16, as if ten records were missing.
    damage(dir.path(), |f| {
        f.seek(SeekFrom::Start(pos + 7)).expect("seek");
        f.write_all(&[16]).expect("write");
    });
    let path = dir.path().to_path_buf();
    run(async move {
        let log = open_with_cache(&path, LogConfig::default(), BatchCache::new(0)).await;
        // Cut at the batch: offsets 6.. are reported lost, not skipped to 16.
        assert_eq!(log.log_end_offset(), Offset(6));
        let got: Vec<i64> = read_all(&log, 0).await.iter().map(|(o, _)| *o).collect();
        assert_eq!(got, vec![0, 2, 4]);
        let reports = log.damage_reports();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].kind, DamageKind::TailCut);
        assert!(
            reports[0]
                .reason
                .contains("starts at offset 16 where offset 6 belongs"),
            "{}",
            reports[0].reason
        );
    });
}

/// Four closed segments of three batches (offsets 0..24); returns each segment's base.
fn four_segments(dir: &Path) -> Vec<i64> {
    let dir = dir.to_path_buf();
    run(async move {
        let config = LogConfig {
            segment_bytes: 7000,
            ..LogConfig::default()
        };
        let log = open(&dir, config).await;
        for i in 0..12 {
            append(&log, tagged_batch(i, 2, 1000, 0), Durability::Written).await;
        }
        log.close().await.expect("close");
        let mut bases: Vec<i64> = std::fs::read_dir(&dir)
            .expect("list")
            .filter_map(|e| {
                let name = e.expect("entry").file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        bases.sort_unstable();
        assert_eq!(bases.len(), 4, "{bases:?}");
        bases
    })
}

fn segment_file(dir: &Path, base: i64, suffix: &str) -> PathBuf {
    dir.join(format!("{base:020}{suffix}"))
}

#[test]
fn a_missing_segment_is_reported_at_startup_and_never_crossed_silently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bases = four_segments(dir.path());
    for suffix in [".log", ".index", ".timeindex"] {
        std::fs::remove_file(segment_file(dir.path(), bases[1], suffix)).expect("delete");
    }
    let path = dir.path().to_path_buf();
    run({
        let (path, bases) = (path.clone(), bases.clone());
        async move {
            let log = open_with_cache(&path, LogConfig::default(), BatchCache::new(0)).await;
            let reports = log.damage_reports();
            assert_eq!(reports.len(), 1, "{reports:?}");
            assert_eq!(reports[0].kind, DamageKind::Gap);
            assert_eq!(
                (reports[0].first_offset, reports[0].end_offset),
                (bases[1], bases[2])
            );
            // The log start moved past the gap: a consumer at the old start is told so
            // (OFFSET_OUT_OF_RANGE with the new start), and is never handed offsets after
            // the gap as if they followed.
            assert_eq!(log.log_start_offset(), Offset(bases[2]));
            let err = log
                .read(Offset(0), 1 << 20)
                .await
                .expect_err("offsets before the gap are out of range");
            assert!(
                matches!(err, EngineError::OffsetOutOfRange { log_start, .. } if log_start == bases[2]),
                "{err:?}"
            );
            let got: Vec<i64> = read_all(&log, bases[2])
                .await
                .iter()
                .map(|(o, _)| *o)
                .collect();
            assert_eq!(got.first(), Some(&bases[2]));
            assert_eq!(log.log_end_offset(), Offset(24));
            log.close().await.expect("close");
        }
    });
    // Recorded: the next start finds the log where this one left it.
    run(async move {
        let log = open(&path, LogConfig::default()).await;
        assert_eq!(log.log_start_offset(), Offset(bases[2]));
    });
}

#[test]
fn segments_without_proof_of_a_clean_close_are_validated_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bases = four_segments(dir.path());
    // Damage in the second segment, and no sealed-segments file to vouch for it.
    std::fs::remove_file(dir.path().join(wharf_engine::log::SEALED_SEGMENTS_FILE))
        .expect("remove the sealed-segments file");
    let seg = segment_file(dir.path(), bases[1], ".log");
    let mut file = OpenOptions::new().write(true).open(&seg).expect("open");
    file.seek(SeekFrom::Start(200)).expect("seek");
    file.write_all(&[0x77]).expect("write");
    file.sync_all().expect("sync");
    let path = dir.path().to_path_buf();
    run(async move {
        let log = open_with_cache(&path, LogConfig::default(), BatchCache::new(0)).await;
        // Found at startup, before any read: the log start moved past the damaged
        // segment's batches, reported with what was lost.
        let reports = log.damage_reports();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].kind, DamageKind::Skipped);
        assert_eq!(reports[0].segment_base_offset, bases[1]);
        assert_eq!(
            (reports[0].first_offset, reports[0].end_offset),
            (bases[1], bases[2])
        );
        assert_eq!(log.log_start_offset(), Offset(bases[2]));
        let got = read_all(&log, bases[2]).await;
        assert_eq!(got.last().map(|(o, _)| *o), Some(22));
    });
}
