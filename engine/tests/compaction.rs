//! Log compaction: what a cleaned log holds (the latest record of every key, at its
//! offset), tombstones and their delete horizon, the offset map's bound, idempotent
//! producers, reads across removed ranges, and crashes at every point of a cleaning.
//!
//! `WHARF_COMPACTION_RECORDS` sets the size of the large test (1,000,000 records over
//! 10,000 keys by default: a few seconds, the engine being optimized in test builds).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use wharf_engine::compaction::{CleanRequest, CleanStats, CompactionConfig, OffsetMap, Throttle};
use wharf_engine::sim::{FaultConfig, Runtime, SimDisk, SimStorage};
use wharf_engine::{BatchCache, Durability, LogConfig, Offset, PartitionLog, Storage};
use wharf_protocol::batch::{
    batches, records_in, records_section, validate_batch_with, BatchBuilder, Compression, CountRule,
};
use wharf_protocol::compression::{decompress, Levels, Lz4Header};

const DELETE_RETENTION_MS: i64 = 60_000;

/// One record as a consumer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rec {
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

fn config() -> CompactionConfig {
    CompactionConfig {
        delete_retention_ms: DELETE_RETENTION_MS,
        ..CompactionConfig::default()
    }
}

fn log_config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        // Compact only: retention never deletes (as the broker configures it).
        retention_ms: -1,
        retention_bytes: -1,
        index_interval_bytes: 4096,
        preallocate_bytes: 0,
        ..LogConfig::default()
    }
}

/// A batch of `(key, value)` records (None value: a tombstone).
fn keyed_batch(records: &[(Vec<u8>, Option<Vec<u8>>)], codec: Compression) -> Bytes {
    let mut b = BatchBuilder::new();
    for (k, v) in records {
        b.push(Some(k), v.as_deref(), &[], 1_000);
    }
    Bytes::from(match codec {
        Compression::None => b.build(),
        codec => b
            .build_compressed(codec, Levels::default())
            .expect("compress"),
    })
}

/// Every record of `bytes` (whole batches), decompressed.
fn records_of(bytes: &[u8]) -> Vec<Rec> {
    let mut out = Vec::new();
    for (_, batch) in batches(bytes) {
        let info =
            validate_batch_with(batch, usize::MAX, CountRule::AtMost).expect("a valid batch");
        let section = records_section(batch).expect("a section");
        let plain = if info.compression == Compression::None {
            section.to_vec()
        } else {
            decompress(info.compression, section, 64 << 20, Lz4Header::Standard)
                .expect("decompress")
        };
        for r in records_in(&plain, info.records_count) {
            let r = r.expect("a record");
            out.push(Rec {
                offset: info.base_offset + i64::from(r.offset_delta),
                key: r.key.map(<[u8]>::to_vec),
                value: r.value.map(<[u8]>::to_vec),
            });
        }
    }
    out
}

/// Reads the whole log as a consumer from the start would, checking that batches are
/// contiguous and record offsets strictly grow; returns the records.
async fn consume<S: Storage>(log: &PartitionLog<S>) -> Vec<Rec> {
    let mut out: Vec<Rec> = Vec::new();
    let mut from = log.log_start_offset().0;
    let end = log.log_end_offset().0;
    while from < end {
        let bytes = log.read(Offset(from), 256 << 10).await.expect("read");
        assert!(
            !bytes.is_empty(),
            "a read at {from} below the end {end} returned nothing"
        );
        let mut next = None;
        for (_, batch) in batches(&bytes) {
            let info = validate_batch_with(batch, usize::MAX, CountRule::AtMost).expect("valid");
            match next {
                None => assert!(info.base_offset <= from && from <= info.last_offset()),
                Some(n) => assert_eq!(info.base_offset, n, "batches are contiguous"),
            }
            next = Some(info.last_offset() + 1);
        }
        for r in records_of(&bytes) {
            if r.offset < from {
                continue;
            }
            if let Some(last) = out.last() {
                assert!(r.offset > last.offset, "offsets strictly grow");
            }
            out.push(r);
        }
        from = next.expect("at least one batch");
    }
    out
}

/// Key → latest record, as a changelog restore folds it (tombstones delete).
fn fold(records: &[Rec]) -> BTreeMap<Vec<u8>, (i64, Vec<u8>)> {
    let mut map = BTreeMap::new();
    for r in records {
        let Some(k) = &r.key else { continue };
        match &r.value {
            Some(v) => {
                map.insert(k.clone(), (r.offset, v.clone()));
            }
            None => {
                map.remove(k);
            }
        }
    }
    map
}

/// The latest record of every key (tombstones included).
fn latest(records: &[Rec]) -> BTreeMap<Vec<u8>, Rec> {
    let mut map = BTreeMap::new();
    for r in records {
        if let Some(k) = &r.key {
            map.insert(k.clone(), r.clone());
        }
    }
    map
}

fn request(now_ms: i64, upper_bound_offset: i64) -> CleanRequest<'static> {
    CleanRequest {
        now_ms,
        upper_bound_offset,
        aborted: &[],
        max_decompressed_batch_bytes: 64 << 20,
        throttle: None,
    }
}

/// Rolls the active segment and seals it: `segment.ms` has passed at `now_ms` (retention
/// is off), and the append that follows lets the writer seal the rolled segment first.
async fn roll<S: Storage>(log: &PartitionLog<S>, now_ms: i64, marker: &[u8]) -> i64 {
    log.maintain(now_ms).await.expect("maintain");
    let batch = keyed_batch(&[(marker.to_vec(), Some(b"x".to_vec()))], Compression::None);
    let info = log
        .append(batch, 0, Durability::Written)
        .await
        .expect("append");
    info.base_offset.0
}

async fn clean_until_done<S: Storage>(
    log: &PartitionLog<S>,
    map: &mut OffsetMap,
    now_ms: i64,
) -> Vec<CleanStats> {
    let mut rounds = Vec::new();
    loop {
        let upper = log.log_end_offset().0;
        let stats = log
            .clean(map, &config(), &request(now_ms, upper))
            .await
            .expect("clean");
        let done = stats.end_offset == stats.first_dirty_offset;
        rounds.push(stats);
        if done || rounds.len() > 1_000 {
            return rounds;
        }
    }
}

fn env_records() -> usize {
    std::env::var("WHARF_COMPACTION_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

#[test]
fn a_compacted_log_holds_exactly_the_latest_value_of_every_key() {
    let total = env_records();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("changelog-0");
    common::run(async move {
        let log = common::open(&path, log_config(1 << 20)).await;
        const KEYS: u64 = 10_000;
        const PER_BATCH: usize = 100;
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut produced: Vec<Rec> = Vec::with_capacity(total);
        let mut n = 0usize;
        let started = std::time::Instant::now();
        while n < total {
            let count = PER_BATCH.min(total - n);
            let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..count)
                .map(|i| {
                    let key = format!("key-{:05}", next() % KEYS).into_bytes();
                    // One record in 20 is a tombstone.
                    let value = (next() % 20 != 0).then(|| format!("value-{}", n + i).into_bytes());
                    (key, value)
                })
                .collect();
            let codec = if (n / PER_BATCH) % 4 == 3 {
                Compression::Lz4
            } else {
                Compression::None
            };
            let info = log
                .append(keyed_batch(&records, codec), 0, Durability::Written)
                .await
                .expect("append");
            for (i, (k, v)) in records.into_iter().enumerate() {
                produced.push(Rec {
                    offset: info.base_offset.0 + i as i64,
                    key: Some(k),
                    value: v,
                });
            }
            n += count;
        }
        let produced_in = started.elapsed();
        let end = roll(&log, i64::MAX / 2, b"sentinel").await;
        produced.push(Rec {
            offset: end,
            key: Some(b"sentinel".to_vec()),
            value: Some(b"x".to_vec()),
        });
        let size_before = log.size_bytes();
        let segments_before = log.segment_count();
        let history = latest(&produced);

        let mut map = OffsetMap::new(16 << 20);
        let now = 1_000_000;
        let started = std::time::Instant::now();
        let rounds = clean_until_done(&log, &mut map, now).await;
        let cleaned_in = started.elapsed();
        let stats = &rounds[0];
        assert_eq!(stats.first_dirty_offset, 0);
        assert_eq!(
            stats.end_offset, end,
            "the round covers every sealed segment"
        );
        assert!(stats.map_keys as u64 <= KEYS);
        assert!(stats.groups_cleaned > 0 && stats.groups_abandoned == 0);

        let after = consume(&log).await;
        // Exactly the latest record of every key (tombstones stay until their horizon),
        // each at its original offset.
        let expected: Vec<Rec> = {
            let mut v: Vec<Rec> = history.values().cloned().collect();
            v.sort_by_key(|r| r.offset);
            v
        };
        assert_eq!(after.len(), expected.len());
        assert!(
            after == expected,
            "the cleaned log is not the latest record of every key"
        );
        assert_eq!(
            fold(&after),
            fold(&produced),
            "a changelog restore ends the same"
        );
        assert!(
            log.size_bytes() < size_before / 10,
            "{} of {size_before} bytes left",
            log.size_bytes()
        );
        assert_eq!(log.log_end_offset().0, end + 1, "offsets never change");

        // The same after a restart: the cleaned segments are trusted or validated.
        log.close().await.expect("close");
        let log = common::open(&path, log_config(1 << 20)).await;
        assert!(
            log.damage_reports().is_empty(),
            "{:?}",
            log.damage_reports()
        );
        assert!(consume(&log).await == expected);

        // After delete.retention.ms, the next round (more updates make one due) drops the
        // tombstones, and the keys they deleted are gone.
        let updates: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            vec![(b"key-00000".to_vec(), Some(b"late".to_vec()))];
        let info = log
            .append(
                keyed_batch(&updates, Compression::None),
                0,
                Durability::Written,
            )
            .await
            .expect("append");
        produced.push(Rec {
            offset: info.base_offset.0,
            key: Some(b"key-00000".to_vec()),
            value: Some(b"late".to_vec()),
        });
        let end2 = roll(&log, i64::MAX / 2 + 1, b"sentinel-2").await;
        produced.push(Rec {
            offset: end2,
            key: Some(b"sentinel-2".to_vec()),
            value: Some(b"x".to_vec()),
        });
        let rounds = clean_until_done(&log, &mut map, now + DELETE_RETENTION_MS).await;
        let after = consume(&log).await;
        assert!(
            after.iter().all(|r| r.value.is_some()),
            "no tombstone is left"
        );
        assert_eq!(fold(&after), fold(&produced));
        assert_eq!(after.len(), fold(&produced).len());
        assert!(rounds[0].tombstones_removed > 0);
        // Groups are made by the segments' sizes before cleaning (as in Kafka), so the
        // segments the first round shrank are merged by the next one.
        assert!(log.segment_count() < segments_before);
        println!(
            "{total} records over {KEYS} keys: produced in {:.1} s, cleaned in {:.1} s ({} -> {} bytes, {} -> {} segments, {} rounds)",
            produced_in.as_secs_f64(),
            cleaned_in.as_secs_f64(),
            size_before,
            log.size_bytes(),
            segments_before,
            log.segment_count(),
            rounds.len(),
        );
        log.close().await.expect("close");
    });
}

#[test]
fn tombstones_go_only_once_delete_retention_ms_has_passed_since_they_were_cleaned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t-0");
    common::run(async move {
        let log = common::open(&path, log_config(16 << 10)).await;
        let put = |k: &str, v: Option<&str>| {
            keyed_batch(
                &[(k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec()))],
                Compression::None,
            )
        };
        for batch in [put("a", Some("1")), put("b", Some("1")), put("b", None)] {
            log.append(batch, 0, Durability::Written)
                .await
                .expect("append");
        }
        roll(&log, i64::MAX / 4, b"m1").await;
        let mut map = OffsetMap::new(1 << 20);
        let t0 = 5_000_000;
        clean_until_done(&log, &mut map, t0).await;
        let keys = |recs: &[Rec]| -> Vec<(String, bool)> {
            recs.iter()
                .map(|r| {
                    (
                        String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into(),
                        r.value.is_some(),
                    )
                })
                .collect()
        };
        // The tombstone stays (it got its horizon, t0 + delete.retention.ms); the value
        // it deleted is gone.
        assert_eq!(
            keys(&consume(&log).await),
            vec![("a".into(), true), ("b".into(), false), ("m1".into(), true)]
        );
        // Just before the horizon: still there.
        log.append(put("a", Some("2")), 0, Durability::Written)
            .await
            .expect("append");
        roll(&log, i64::MAX / 4 + 1, b"m2").await;
        clean_until_done(&log, &mut map, t0 + DELETE_RETENTION_MS - 1).await;
        assert_eq!(
            keys(&consume(&log).await),
            vec![
                ("b".into(), false),
                ("m1".into(), true),
                ("a".into(), true),
                ("m2".into(), true)
            ]
        );
        // At the horizon: gone.
        log.append(put("a", Some("3")), 0, Durability::Written)
            .await
            .expect("append");
        roll(&log, i64::MAX / 4 + 2, b"m3").await;
        let rounds = clean_until_done(&log, &mut map, t0 + DELETE_RETENTION_MS).await;
        assert_eq!(rounds[0].tombstones_removed, 1);
        assert_eq!(
            keys(&consume(&log).await),
            vec![
                ("m1".into(), true),
                ("m2".into(), true),
                ("a".into(), true),
                ("m3".into(), true)
            ]
        );
        log.close().await.expect("close");
    });
}

#[test]
fn a_full_offset_map_cleans_up_to_the_last_offset_it_covers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m-0");
    common::run(async move {
        let log = common::open(&path, log_config(8 << 10)).await;
        let mut produced = Vec::new();
        for round in 0..3 {
            for k in 0..400u32 {
                let key = format!("k{k}").into_bytes();
                let value = format!("{round}-{k}").into_bytes();
                let info = log
                    .append(
                        keyed_batch(&[(key.clone(), Some(value.clone()))], Compression::None),
                        0,
                        Durability::Written,
                    )
                    .await
                    .expect("append");
                produced.push(Rec {
                    offset: info.base_offset.0,
                    key: Some(key),
                    value: Some(value),
                });
            }
        }
        let end = roll(&log, i64::MAX / 4, b"end").await;
        produced.push(Rec {
            offset: end,
            key: Some(b"end".to_vec()),
            value: Some(b"x".to_vec()),
        });
        // Room for 90 keys (100 slots at a 0.9 load factor).
        let mut map = OffsetMap::new(24 * 100);
        assert_eq!(map.capacity(), 90);
        let rounds = clean_until_done(&log, &mut map, 0).await;
        assert!(rounds.len() > 10, "{} rounds", rounds.len());
        let mut from = 0;
        for stats in &rounds {
            assert!(stats.map_keys <= 90, "{stats:?}");
            assert_eq!(
                stats.first_dirty_offset, from,
                "each round starts where the last ended"
            );
            assert!(stats.end_offset >= from);
            from = stats.end_offset;
        }
        assert_eq!(from, end);
        let after = consume(&log).await;
        let mut expected: Vec<Rec> = latest(&produced).into_values().collect();
        expected.sort_by_key(|r| r.offset);
        assert!(
            after == expected,
            "{} records left, {} expected",
            after.len(),
            expected.len()
        );
        log.close().await.expect("close");
    });
}

#[test]
fn reads_inside_a_removed_range_get_a_filler_and_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f-0");
    common::run(async move {
        let log = common::open(&path, log_config(64 << 10)).await;
        // 50 batches of key "a", then one of "b": everything but the last "a" goes.
        for i in 0..50 {
            let recs = vec![(b"a".to_vec(), Some(format!("{i}").into_bytes())); 3];
            log.append(
                keyed_batch(&recs, Compression::None),
                0,
                Durability::Written,
            )
            .await
            .expect("append");
        }
        log.append(
            keyed_batch(&[(b"b".to_vec(), Some(b"1".to_vec()))], Compression::None),
            0,
            Durability::Written,
        )
        .await
        .expect("append");
        roll(&log, i64::MAX / 4, b"end").await;
        let mut map = OffsetMap::new(1 << 20);
        let stats = clean_until_done(&log, &mut map, 0).await;
        assert!(stats[0].fillers >= 1);
        // Offset 10 is gone: the read returns the filler over it (no records), then the
        // batch holding the last "a" (offset 149, its batch 147..=149 with two gaps).
        let bytes = log.read(Offset(10), 1 << 20).await.expect("read");
        let layout: Vec<(i64, i64, i32)> = batches(&bytes)
            .map(|(_, b)| {
                let i = validate_batch_with(b, usize::MAX, CountRule::AtMost).expect("valid");
                (i.base_offset, i.last_offset(), i.records_count)
            })
            .collect();
        assert_eq!(layout[0], (0, 146, 0), "{layout:?}");
        assert_eq!(layout[1], (147, 149, 1), "{layout:?}");
        let recs = records_of(&bytes);
        assert_eq!(recs[0].offset, 149);
        assert_eq!(recs[0].value.as_deref(), Some(&b"49"[..]));
        // The index still finds batches, and the time lookup too.
        assert!(log.read(Offset(148), 1).await.expect("read").len() > 61);
        let found = log.offset_for_timestamp(0).await.expect("lookup");
        assert_eq!(found.map(|(o, _)| o.0), Some(149));
        log.close().await.expect("close");
    });
}

#[test]
fn an_idempotent_producers_batches_survive_cleaning_and_a_retry_is_still_a_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p-0");
    common::run(async move {
        let log = common::open(&path, log_config(16 << 10)).await;
        let mut sent = Vec::new();
        for seq in 0..3 {
            let mut b = BatchBuilder::new().producer(77, 0, seq);
            b.push(Some(b"k"), Some(format!("{seq}").as_bytes()), &[], 1_000);
            let batch = Bytes::from(b.build());
            let info = log
                .append(batch.clone(), 0, Durability::Written)
                .await
                .expect("append");
            sent.push((batch, info.base_offset.0));
        }
        // Another writer supersedes every record of producer 77.
        log.append(
            keyed_batch(
                &[(b"k".to_vec(), Some(b"other".to_vec()))],
                Compression::None,
            ),
            0,
            Durability::Written,
        )
        .await
        .expect("append");
        roll(&log, i64::MAX / 4, b"end").await;
        let producers = log.producer_states();
        let mut map = OffsetMap::new(1 << 20);
        clean_until_done(&log, &mut map, 0).await;
        // Producer 77's batches stay, empty, with their sequences.
        for (i, (_, base)) in sent.iter().enumerate() {
            let bytes = log.read(Offset(*base), 1).await.expect("read");
            let info = validate_batch_with(&bytes, usize::MAX, CountRule::AtMost).expect("a batch");
            assert_eq!(info.base_offset, *base);
            assert_eq!(
                (info.producer_id, info.base_sequence, info.records_count),
                (77, i as i32, 0)
            );
        }
        assert_eq!(log.producer_states(), producers);
        // A retry of the last batch is answered with its first offsets.
        let (batch, base) = sent.last().expect("sent").clone();
        let end = log.log_end_offset();
        let info = log
            .append(batch, 0, Durability::Written)
            .await
            .expect("a duplicate");
        assert_eq!(info.base_offset.0, base);
        assert_eq!(log.log_end_offset(), end, "nothing appended");
        // And after a restart, from the cleaned segments' snapshots.
        log.close().await.expect("close");
        let log = common::open(&path, log_config(16 << 10)).await;
        let (batch, base) = sent.last().expect("sent").clone();
        let info = log
            .append(batch, 0, Durability::Written)
            .await
            .expect("a duplicate");
        assert_eq!(info.base_offset.0, base);
        log.close().await.expect("close");
    });
}

#[test]
fn a_cleaned_log_opens_without_the_sealed_segments_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v-0");
    common::run({
        let path = path.clone();
        async move {
            let log = common::open(&path, log_config(8 << 10)).await;
            for i in 0..600u32 {
                let key = format!("k{}", i % 37).into_bytes();
                let value = (i % 11 != 0).then(|| format!("{i}").into_bytes());
                log.append(
                    keyed_batch(&[(key, value)], Compression::None),
                    0,
                    Durability::Written,
                )
                .await
                .expect("append");
            }
            roll(&log, i64::MAX / 4, b"end").await;
            let mut map = OffsetMap::new(1 << 20);
            clean_until_done(&log, &mut map, 0).await;
            let before = consume(&log).await;
            log.close().await.expect("close");
            std::fs::remove_file(path.join(wharf_engine::log::SEALED_SEGMENTS_FILE))
                .expect("remove the proof");
            std::fs::write(path.join("before"), format!("{before:?}")).expect("write");
        }
    });
    common::run(async move {
        // Every segment is validated batch by batch: the fillers keep them contiguous.
        let log = common::open(&path, log_config(8 << 10)).await;
        assert!(
            log.damage_reports().is_empty(),
            "{:?}",
            log.damage_reports()
        );
        let before = std::fs::read_to_string(path.join("before")).expect("read");
        assert_eq!(format!("{:?}", consume(&log).await), before);
        log.close().await.expect("close");
    });
}

// On the simulated disk: crashes at every point of a cleaning, and reads while it runs.

type SimLog = PartitionLog<SimStorage>;

struct Sim {
    rt: Runtime,
    disk: SimDisk,
    dir: PathBuf,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let rt = Runtime::new(seed);
        let disk = SimDisk::new(&rt, seed, 1 << 30, FaultConfig::default());
        Sim {
            rt,
            disk,
            dir: PathBuf::from("/data/c-0"),
        }
    }

    fn run<T: 'static>(&self, fut: impl std::future::Future<Output = T> + 'static) -> T {
        let result = self.rt.spawn_with_result(fut);
        self.rt.run_until_stalled();
        result.take().expect("the task finished")
    }

    fn open(&self) -> Rc<SimLog> {
        let storage = SimStorage::new(self.disk.clone());
        let dir = self.dir.clone();
        Rc::new(
            self.run(SimLog::open_with(
                storage,
                dir,
                log_config(4 << 10),
                BatchCache::new(1 << 20),
            ))
            .expect("the log opens"),
        )
    }

    /// A log of keyed records over a few keys, with tombstones, several segments, all
    /// synced; returns what was produced.
    fn fill(&self, log: &Rc<SimLog>) -> Vec<Rec> {
        let log = log.clone();
        self.run(async move {
            let mut produced = Vec::new();
            for i in 0..300u32 {
                let key = format!("k{}", (i * 7) % 23).into_bytes();
                let value = (i % 9 != 4).then(|| format!("v{i}").into_bytes());
                let codec = if i % 5 == 0 {
                    Compression::Gzip
                } else {
                    Compression::None
                };
                let info = log
                    .append(
                        keyed_batch(&[(key.clone(), value.clone())], codec),
                        0,
                        Durability::Written,
                    )
                    .await
                    .expect("append");
                produced.push(Rec {
                    offset: info.base_offset.0,
                    key: Some(key),
                    value,
                });
            }
            let end = roll(&log, i64::MAX / 4, b"end").await;
            produced.push(Rec {
                offset: end,
                key: Some(b"end".to_vec()),
                value: Some(b"x".to_vec()),
            });
            log.sync().await.expect("sync");
            produced
        })
    }
}

fn dir_names(disk: &SimDisk, dir: &Path) -> Vec<String> {
    disk.files_in(dir)
        .into_iter()
        .filter_map(|(p, _)| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

#[test]
fn a_crash_at_any_point_of_a_cleaning_leaves_a_log_that_restores_the_same() {
    let mut k = 0;
    let mut crashed_mid_swap = 0;
    loop {
        let sim = Sim::new(11);
        let log = sim.open();
        let produced = sim.fill(&log);
        let cleaning = {
            let log = log.clone();
            sim.rt.spawn_with_result(async move {
                let mut map = OffsetMap::new(1 << 20);
                log.clean(&mut map, &config(), &request(0, i64::MAX)).await
            })
        };
        sim.rt.run_for(k);
        let finished = cleaning.is_finished();
        let log = if finished {
            sim.rt.run_until_stalled();
            assert!(cleaning.take().expect("finished").is_ok());
            log
        } else {
            let names = dir_names(&sim.disk, &sim.dir);
            if names.iter().any(|n| n.ends_with(".swap")) {
                crashed_mid_swap += 1;
            }
            drop(log);
            sim.rt.crash();
            sim.disk.crash();
            sim.open()
        };
        assert!(
            log.damage_reports().is_empty(),
            "step {k}: {:?}",
            log.damage_reports()
        );
        let l = log.clone();
        let after = sim.run(async move { consume(&l).await });
        assert_eq!(
            fold(&after),
            fold(&produced),
            "step {k}: the log restores differently"
        );
        // Whatever it holds is what was produced, at the offsets it was produced at.
        let by_offset: BTreeMap<i64, &Rec> = produced.iter().map(|r| (r.offset, r)).collect();
        for r in &after {
            assert_eq!(Some(&r), by_offset.get(&r.offset), "step {k}");
        }
        let names = dir_names(&sim.disk, &sim.dir);
        assert!(
            !names
                .iter()
                .any(|n| n.ends_with(".cleaned") || n.ends_with(".swap")),
            "step {k}: {names:?}"
        );
        // The log still works: append, clean again, read.
        let l = log.clone();
        let again = sim.run(async move {
            let end = roll(&l, i64::MAX / 3, b"again").await;
            let mut map = OffsetMap::new(1 << 20);
            l.clean(&mut map, &config(), &request(0, i64::MAX))
                .await
                .map(|_| end)
        });
        assert!(again.is_ok(), "step {k}: {again:?}");
        if finished {
            break;
        }
        k += 1 + k / 40;
    }
    assert!(
        crashed_mid_swap > 0,
        "no crash landed between the commit and the end of a swap"
    );
}

#[test]
fn readers_during_a_cleaning_see_every_keys_latest_value() {
    let sim = Sim::new(5);
    let log = sim.open();
    let produced = sim.fill(&log);
    let expected = fold(&produced);
    let cleaning = {
        let log = log.clone();
        sim.rt.spawn_with_result(async move {
            let mut map = OffsetMap::new(1 << 20);
            log.clean(&mut map, &config(), &request(0, i64::MAX)).await
        })
    };
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let log = log.clone();
            sim.rt.spawn_with_result(async move {
                let mut folds = Vec::new();
                for _ in 0..4 {
                    folds.push(fold(&consume(&log).await));
                }
                folds
            })
        })
        .collect();
    sim.rt.run_until_stalled();
    let stats = cleaning.take().expect("finished").expect("cleaned");
    assert!(stats.groups_cleaned > 0);
    for reader in readers {
        for f in reader.take().expect("a reader finished") {
            assert_eq!(f, expected);
        }
    }
}

#[test]
fn a_truncation_below_the_cleaned_range_moves_the_first_dirty_offset_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tr-0");
    common::run(async move {
        let log = common::open(&path, log_config(4 << 10)).await;
        for i in 0..200u32 {
            let key = format!("k{}", i % 10).into_bytes();
            log.append(
                keyed_batch(
                    &[(key, Some(format!("{i}").into_bytes()))],
                    Compression::None,
                ),
                0,
                Durability::Written,
            )
            .await
            .expect("append");
        }
        let end = roll(&log, i64::MAX / 4, b"end").await;
        let mut map = OffsetMap::new(1 << 20);
        clean_until_done(&log, &mut map, 0).await;
        assert_eq!(log.first_dirty_offset().0, end);
        log.truncate_to(Offset(end - 1)).await.expect("truncate");
        assert_eq!(log.first_dirty_offset().0, end - 1);
        // Records appended again from there are mapped by the next round.
        let info = log
            .append(
                keyed_batch(
                    &[(b"k3".to_vec(), Some(b"new".to_vec()))],
                    Compression::None,
                ),
                0,
                Durability::Written,
            )
            .await
            .expect("append");
        roll(&log, i64::MAX / 3, b"end2").await;
        let rounds = clean_until_done(&log, &mut map, 0).await;
        assert_eq!(rounds[0].first_dirty_offset, end - 1);
        let after = consume(&log).await;
        let k3: Vec<i64> = after
            .iter()
            .filter(|r| r.key.as_deref() == Some(&b"k3"[..]))
            .map(|r| r.offset)
            .collect();
        assert_eq!(k3, vec![info.base_offset.0]);
        log.close().await.expect("close");
    });
}

/// A throttle that counts what it is told and stops the round after `go_on` calls.
struct Counting {
    go_on: u32,
    calls: std::cell::Cell<u32>,
    bytes: std::cell::Cell<u64>,
}

impl Counting {
    fn new(go_on: u32) -> Counting {
        Counting {
            go_on,
            calls: std::cell::Cell::new(0),
            bytes: std::cell::Cell::new(0),
        }
    }
}

impl Throttle for Counting {
    fn pace(&self, bytes: u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + '_>> {
        self.calls.set(self.calls.get() + 1);
        self.bytes.set(self.bytes.get() + bytes);
        let go_on = self.calls.get() <= self.go_on;
        Box::pin(async move { go_on })
    }
}

#[test]
fn a_throttle_paces_every_chunk_and_a_stopped_round_leaves_the_log_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("paced-0");
    common::run(async move {
        let log = common::open(&path, log_config(64 << 10)).await;
        let mut produced = Vec::new();
        // 40 keys written over and over, in many segments and more than a MiB.
        for n in 0..2_000usize {
            let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..4)
                .map(|i| {
                    let key = format!("key-{:02}", (n * 4 + i) % 40).into_bytes();
                    (
                        key,
                        Some(format!("{n}-{i}-{}", "v".repeat(150)).into_bytes()),
                    )
                })
                .collect();
            let info = log
                .append(
                    keyed_batch(&records, Compression::None),
                    0,
                    Durability::Written,
                )
                .await
                .expect("append");
            for (i, (k, v)) in records.into_iter().enumerate() {
                produced.push(Rec {
                    offset: info.base_offset.0 + i as i64,
                    key: Some(k),
                    value: v,
                });
            }
        }
        let end = roll(&log, i64::MAX / 2, b"sentinel").await;
        produced.push(Rec {
            offset: end,
            key: Some(b"sentinel".to_vec()),
            value: Some(b"x".to_vec()),
        });
        let before = consume(&log).await;
        let size_before = log.size_bytes();
        let mut map = OffsetMap::new(1 << 20);

        // Stopped while the offset map is built: an error, nothing changed.
        let stop = Counting::new(0);
        let mut req = request(1_000, end);
        req.throttle = Some(&stop);
        assert!(log.clean(&mut map, &config(), &req).await.is_err());
        assert_eq!(stop.calls.get(), 1);
        assert!(consume(&log).await == before);
        assert_eq!(log.first_dirty_offset().0, 0);

        // Stopped while the first group is rewritten: the group is given up, its
        // .cleaned files removed, the log as it was, and the round records no progress.
        // Stopped at each later chunk until the stop lands in the rewrite of the first
        // group: the group is given up, its .cleaned files removed, the log as it was, and
        // the round records no progress.
        let mut go_on = 1;
        loop {
            let stop = Counting::new(go_on);
            let mut req = request(1_000, end);
            req.throttle = Some(&stop);
            let result = log.clean(&mut map, &config(), &req).await;
            assert_eq!(log.first_dirty_offset().0, 0);
            assert!(consume(&log).await == before);
            match result {
                Err(_) => go_on += 1,
                Ok(stats) => {
                    assert_eq!(stats.groups_cleaned, 0, "{stats:?}");
                    assert!(stats.groups_abandoned > 0, "{stats:?}");
                    break;
                }
            }
            assert!(go_on < 1_000, "the round never reached its rewrite");
        }
        let names: Vec<String> = std::fs::read_dir(&path)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names
                .iter()
                .any(|n| n.contains(".cleaned") || n.contains(".swap")),
            "{names:?}"
        );
        assert_eq!(fold(&consume(&log).await), fold(&before));

        // Let through: every chunk read or written is paced, and the log is compacted.
        let pace = Counting::new(u32::MAX);
        let mut req = request(1_000, end);
        req.throttle = Some(&pace);
        let stats = log.clean(&mut map, &config(), &req).await.expect("clean");
        assert!(stats.groups_cleaned > 0 && stats.groups_abandoned == 0);
        assert!(pace.calls.get() >= 2, "{}", pace.calls.get());
        assert!(
            pace.bytes.get() >= stats.bytes_read,
            "paced {} bytes, read {}",
            pace.bytes.get(),
            stats.bytes_read
        );
        let after = consume(&log).await;
        let mut expected: Vec<Rec> = latest(&produced).into_values().collect();
        expected.sort_by_key(|r| r.offset);
        assert!(after == expected, "the latest record of every key");
        assert!(log.size_bytes() < size_before / 10);
    });
}
