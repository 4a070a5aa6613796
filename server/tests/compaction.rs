//! Log compaction with a real broker and librdkafka: keyed records with overwrites and
//! tombstones go to a `cleanup.policy=compact` topic, the broker's cleaner runs (its
//! thresholds made small through topic configs), and a fresh consumer reads the latest
//! value of every key, tombstones included, at the offsets the producer was given; an
//! idempotent producer goes on after the cleaning; a broker killed with SIGKILL while it
//! cleans comes back with every acknowledged latest value.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureRecord;

use common::{client, http, unique_topic, Broker};

/// Guard against a cleaner that never gets there; not a timing assertion.
const CLEAN_GUARD: Duration = Duration::from_secs(120);

/// Broker settings that make the cleaner look often and roll segments by age quickly.
const SETTINGS: &str =
    "\"log.cleaner.backoff.ms\" = 50\n\"log.retention.check.interval.ms\" = 100\n";

/// What a key's latest record is: its offset and its value (`None`: a tombstone).
type Latest = BTreeMap<String, (i64, Option<String>)>;

/// Produces `records` (key, value or tombstone) with acks=all and returns the latest
/// acknowledged record of every key, with its offset.
fn produce(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    records: &[(String, Option<String>)],
    latest: &mut Latest,
) {
    let rt = client::runtime();
    rt.block_on(async {
        let mut pending = Vec::with_capacity(records.len());
        for (key, value) in records {
            let mut record = FutureRecord::to(topic).key(key.as_str()).partition(0);
            if let Some(v) = value {
                record = record.payload(v.as_str());
            }
            let fut = producer
                .send_result(record)
                .unwrap_or_else(|(e, _)| panic!("cannot enqueue: {e}"));
            pending.push((key.clone(), value.clone(), fut));
        }
        for (key, value, fut) in pending {
            let delivery = fut
                .await
                .expect("delivery future")
                .unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
            assert_eq!(delivery.partition, 0);
            let offset = delivery.offset;
            let newer = latest.get(&key).is_none_or(|(o, _)| *o < offset);
            if newer {
                latest.insert(key, (offset, value));
            }
        }
    });
}

/// Every record of partition 0, as (offset, key, value).
fn read_back(bootstrap: &str, topic: &str) -> Vec<(i64, String, Option<String>)> {
    let all = client::read_all(bootstrap, topic);
    all.get(&0)
        .map(|msgs| msgs.iter().map(decode).collect())
        .unwrap_or_default()
}

fn decode(m: &OwnedMessage) -> (i64, String, Option<String>) {
    let key =
        String::from_utf8(m.key().expect("every record has a key").to_vec()).expect("utf-8 key");
    let value = m
        .payload()
        .map(|p| String::from_utf8(p.to_vec()).expect("utf-8 value"));
    (m.offset(), key, value)
}

/// What a compacted read must be: each key once, at its latest offset, in offset order.
fn compacted(latest: &Latest) -> Vec<(i64, String, Option<String>)> {
    let mut out: Vec<_> = latest
        .iter()
        .map(|(k, (o, v))| (*o, k.clone(), v.clone()))
        .collect();
    out.sort();
    out
}

/// The files of partition 0 of `topic` under `data_dir`.
fn partition_files(data_dir: &Path, topic: &str) -> Vec<String> {
    let dir = data_dir.join(format!("{topic}-0"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn overwrites(keys: usize, rounds: usize, tag: &str, pad: usize) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for round in 0..rounds {
        for k in 0..keys {
            out.push((
                format!("key-{k:04}"),
                Some(format!("{tag}-r{round}-k{k}-{}", "x".repeat(pad))),
            ));
        }
    }
    out
}

#[test]
fn a_consumer_reads_the_latest_value_of_every_key_after_the_cleaner_ran() {
    let mut broker = Broker::start_with_settings(SETTINGS, &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = broker.metrics_addr();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("compacted");
    client::create_topic(
        &bootstrap,
        &topic,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "16384"),
            ("segment.ms", "500"),
            ("min.cleanable.dirty.ratio", "0.01"),
        ],
    );
    let producer = client::producer(
        &bootstrap,
        &[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
        ],
    );
    let mut latest = Latest::new();
    // 60 keys written 15 times each, then every fifth key deleted with a tombstone.
    let mut records = overwrites(60, 15, "a", 150);
    for k in (0..60).step_by(5) {
        records.push((format!("key-{k:04}"), None));
    }
    produce(&producer, &topic, &records, &mut latest);
    let produced = records.len();

    // segment.ms passes and the retention check rolls the active segment; the next append
    // seals it, so every record above is in a sealed segment the cleaner may clean.
    std::thread::sleep(Duration::from_millis(700));
    let sentinel = vec![("zz-sentinel".to_string(), Some("end".to_string()))];
    produce(&producer, &topic, &sentinel, &mut latest);

    let want = compacted(&latest);
    let deadline = Instant::now() + CLEAN_GUARD;
    let mut got = read_back(&bootstrap, &topic);
    while got != want {
        // A consumer reading while the cleaner runs sees every key's latest value.
        for record in &want {
            assert!(
                got.contains(record),
                "the latest record {record:?} is missing from a read of {} records",
                got.len()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the log was not compacted within {CLEAN_GUARD:?}: read {} records (of {} \
             produced), want {}; first records read: {:?}",
            got.len(),
            produced + 1,
            want.len(),
            &got[..got.len().min(10)]
        );
        std::thread::sleep(Duration::from_millis(200));
        got = read_back(&bootstrap, &topic);
    }
    // Tombstones stay (delete.retention.ms is a day) and are read as null values.
    let tombstones = got.iter().filter(|r| r.2.is_none()).count();
    assert_eq!(tombstones, 12);

    let series = |name: &str| format!("{name}{{topic=\"{topic}\",partition=\"0\"}}");
    let body = http::scrape(metrics);
    assert!(http::must(&body, &series("wharf_log_cleaner_runs_total")) >= 1.0);
    assert!(http::must(&body, &series("wharf_log_cleaner_bytes_read_total")) > 0.0);
    assert!(http::must(&body, &series("wharf_log_cleaner_bytes_written_total")) > 0.0);
    assert!(http::must(&body, &series("wharf_log_cleaner_last_run_timestamp_ms")) > 0.0);
    let ratio = http::must(&body, &series("wharf_log_cleaner_dirty_ratio"));
    assert!((0.0..=1.0).contains(&ratio), "{ratio}");

    // `wharf topics` shows the partition's offsets, size and the cleaner's progress.
    let out = std::process::Command::new(common::wharf_bin())
        .args(["topics", "--bootstrap", &bootstrap, "--topic", &topic])
        .args(["--metrics", &metrics.to_string()])
        .output()
        .expect("run wharf topics");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let header: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "TOPIC",
            "PARTITION",
            "LEADER",
            "START-OFFSET",
            "END-OFFSET",
            "SIZE-BYTES",
            "DIRTY",
            "CLEANS",
            "BYTES-CLEANED",
            "LAST-CLEAN"
        ],
        "{text}"
    );
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with(topic.as_str()))
        .unwrap_or_else(|| panic!("no row for {topic}:\n{text}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[1], "0", "{text}");
    assert_eq!(row[3], "0", "the log start does not move: {text}");
    assert_eq!(row[4], (produced + 1).to_string(), "the log end: {text}");
    assert!(row[5].parse::<u64>().is_ok_and(|size| size > 0), "{text}");
    assert!(row[7].parse::<u64>().is_ok_and(|runs| runs >= 1), "{text}");
    assert!(row[8].parse::<u64>().is_ok_and(|bytes| bytes > 0), "{text}");
    assert!(row[9].ends_with('Z'), "the last clean's time: {text}");

    // The idempotent producer's state survived the cleaning: the same producer goes on
    // (an out-of-order or unknown-producer answer would fail its sends), and its records
    // land after everything else.
    let more = overwrites(10, 1, "b", 20);
    produce(&producer, &topic, &more, &mut latest);
    let end = latest.values().map(|(o, _)| *o).max().unwrap_or(0);
    assert!(end >= produced as i64, "offsets are never reused: {end}");

    // After a SIGKILL the compacted log reads back the same, at the same offsets.
    broker.kill();
    broker.restart();
    let bootstrap = broker.bootstrap();
    let got = read_back(&bootstrap, &topic);
    let got_latest: Vec<_> = {
        let mut by_key: BTreeMap<String, (i64, Option<String>)> = BTreeMap::new();
        for (o, k, v) in &got {
            by_key.insert(k.clone(), (*o, v.clone()));
        }
        let mut v: Vec<_> = by_key.into_iter().map(|(k, (o, v))| (o, k, v)).collect();
        v.sort();
        v
    };
    let want = compacted(&latest);
    assert_eq!(
        got_latest, want,
        "the latest value of every key, at its offset"
    );
    broker.assert_no_panic();
}

#[test]
fn sigkill_while_cleaning_loses_no_acknowledged_latest_value() {
    // The cleaner's I/O is paced so a round takes a while and the kills land inside it.
    let settings = format!("{SETTINGS}\"log.cleaner.io.max.bytes.per.second\" = 400000\n");
    let mut broker = Broker::start_with_settings(&settings, &[]);
    let topic = unique_topic("compact-kill");
    client::create_topic(
        &broker.bootstrap(),
        &topic,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "65536"),
            ("min.cleanable.dirty.ratio", "0.01"),
        ],
    );
    let mut latest = Latest::new();
    let mut kills_while_cleaning = 0;
    for run in 0..4u32 {
        // Batches of at most 16 KiB (the Java producer's default; librdkafka's is 1 MB), so
        // the 64 KiB segments roll and there are sealed segments to clean.
        let producer = client::producer(
            &broker.bootstrap(),
            &[("acks", "all"), ("linger.ms", "5"), ("batch.size", "16384")],
        );
        let mut records = overwrites(200, 8, &format!("run{run}"), 300);
        for k in (run as usize..200).step_by(17) {
            records.push((format!("key-{k:04}"), None));
        }
        produce(&producer, &topic, &records, &mut latest);
        drop(producer);

        // Kill once a cleaned segment is being written or swapped in, a little later on
        // each run so the kills land in different steps of the round.
        let deadline = Instant::now() + CLEAN_GUARD;
        loop {
            let files = partition_files(&broker.data_dir(), &topic);
            if files
                .iter()
                .any(|f| f.ends_with(".cleaned") || f.ends_with(".swap"))
            {
                std::thread::sleep(Duration::from_millis(u64::from(run) * 150));
                kills_while_cleaning += 1;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cleaner never started on run {run}; files: {files:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        broker.kill();
        broker.restart();

        // Recovery finished or discarded the interrupted swap.
        let files = partition_files(&broker.data_dir(), &topic);
        assert!(
            !files
                .iter()
                .any(|f| f.ends_with(".cleaned") || f.ends_with(".swap")),
            "an interrupted swap was left behind: {files:?}"
        );
        let got = read_back(&broker.bootstrap(), &topic);
        let mut by_key: BTreeMap<String, (i64, Option<String>)> = BTreeMap::new();
        let mut last_offset = -1;
        for (o, k, v) in got {
            assert!(o > last_offset, "offsets go up: {o} after {last_offset}");
            last_offset = o;
            by_key.insert(k, (o, v));
        }
        for (key, (offset, value)) in &latest {
            assert_eq!(
                by_key.get(key),
                Some(&(*offset, value.clone())),
                "run {run}: the latest acknowledged record of {key} is at offset {offset}"
            );
        }
    }
    assert_eq!(kills_while_cleaning, 4);
    let stderr = broker.stderr();
    for damage in [
        "damaged record batch",
        "are missing after segment",
        "cut the log",
    ] {
        assert!(
            !stderr.contains(damage),
            "recovery found damage ({damage}):\n{stderr}"
        );
    }
    broker.assert_no_panic();
}

/// Records the scale test writes; `WHARF_COMPACTION_RECORDS` raises it
/// (`scripts/compaction-check.sh` runs 1,000,000 on a release build).
fn scale_records() -> usize {
    std::env::var("WHARF_COMPACTION_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

#[test]
fn many_keys_with_updates_and_tombstones_compact_to_the_latest_live_value_of_each() {
    let records = scale_records();
    let keys = 10_000.min(records);
    let broker = Broker::start_with_settings(SETTINGS, &["--metrics-listen", "127.0.0.1:0"]);
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("compact-scale");
    // Tombstones expire at once: once cleaned twice, a deleted key is gone entirely.
    client::create_topic(
        &bootstrap,
        &topic,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "1048576"),
            ("segment.ms", "300"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("delete.retention.ms", "0"),
        ],
    );
    let producer = client::producer(
        &bootstrap,
        &[("acks", "1"), ("linger.ms", "5"), ("batch.size", "65536")],
    );
    // Keys in a scrambled order, one write in ten a tombstone (a deleted key may be
    // written again later).
    let mut latest = Latest::new();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let started = Instant::now();
    for chunk_start in (0..records).step_by(50_000) {
        let chunk: Vec<(String, Option<String>)> = (chunk_start..records.min(chunk_start + 50_000))
            .map(|i| {
                let r = next();
                let key = format!("key-{:05}", r % keys as u64);
                let value = (r >> 32) % 10 != 0;
                (key, value.then(|| format!("v{i}-{:08x}", r >> 40)))
            })
            .collect();
        produce(&producer, &topic, &chunk, &mut latest);
    }
    eprintln!(
        "produced {records} records over {keys} keys in {:?}",
        started.elapsed()
    );
    let live = |latest: &Latest| -> Vec<(i64, String, Option<String>)> {
        compacted(latest)
            .into_iter()
            .filter(|(_, _, v)| v.is_some())
            .collect()
    };

    // A reader while the cleaner works sees every live key's latest value; then the log
    // keeps being made dirty (and rolled) until it holds exactly the live keys' latest
    // values: every superseded record and every expired tombstone gone.
    let deadline = Instant::now() + CLEAN_GUARD * 2;
    let mut round = 0;
    loop {
        let got = read_back(&bootstrap, &topic);
        let want = live(&latest);
        let got_set: std::collections::HashSet<_> = got.iter().collect();
        for record in &want {
            assert!(
                got_set.contains(record),
                "the latest value {record:?} is missing from a read of {} records",
                got.len()
            );
        }
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not compacted after {round} rounds: read {} records, want {} (tombstones read: {})",
            got.len(),
            want.len(),
            got.iter().filter(|r| r.2.is_none()).count()
        );
        std::thread::sleep(Duration::from_millis(350));
        let sentinel = vec![(format!("zz-sentinel-{round}"), Some("end".to_string()))];
        produce(&producer, &topic, &sentinel, &mut latest);
        round += 1;
    }
    eprintln!(
        "compacted to {} live keys in {:?} after producing, {round} rolls",
        live(&latest).len(),
        started.elapsed()
    );
    broker.assert_no_panic();
}
