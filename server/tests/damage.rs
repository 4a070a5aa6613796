//! Damaged and missing data with a real broker: a partition's files are damaged while the
//! broker is stopped (a flipped byte inside a batch's CRC, a base offset that no longer
//! follows its predecessor, a segment deleted from the middle, a torn tail after a
//! SIGKILL), then the broker is started again. What a consumer must see: every valid
//! batch before the damage, never a damaged byte, never a silent skip — the log start
//! moves past what cannot be read (Fetch answers OFFSET_OUT_OF_RANGE with the new log
//! start, ListOffsets earliest names it) and the broker says what was lost, with offsets.

mod common;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse};
use kafka_protocol::records::Compression;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;

use common::client;
use common::raw::{error_code, pick_version, produce_one, record_batch, topic_name, KafkaConn};
use common::{unique_topic, Broker};

const OFFSET_OUT_OF_RANGE: i16 = 1;
/// One record per batch, so a batch is an offset and damage to one loses one offset.
const VALUE_BYTES: usize = 1000;
/// About 15 batches per segment.
const SEGMENT_BYTES: &str = "16384";

fn value(partition: i32, offset: i64) -> Bytes {
    let mut v = format!("p{partition}-o{offset:06}-").into_bytes();
    v.resize(VALUE_BYTES, b'a' + (offset % 26) as u8);
    Bytes::from(v)
}

/// Produces `count` one-record batches to `partition`; each lands at the next offset.
fn produce(conn: &mut KafkaConn, topic: &str, partition: i32, count: i64) {
    let version = pick_version(&conn.api_versions(), ApiKey::Produce, 3, 9);
    for offset in 0..count {
        let batch = record_batch(&[value(partition, offset)], Compression::None);
        let (code, base) = produce_one(conn, version, topic, partition, batch);
        assert_eq!((code, base), (error_code::NONE, offset), "produce {offset}");
    }
}

fn fetch(conn: &mut KafkaConn, topic: &str, partition: i32, offset: i64) -> PartitionData {
    // v5+ answers the log start offset.
    let version = pick_version(&conn.api_versions(), ApiKey::Fetch, 5, 12);
    let req = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(1 << 20)])]);
    let resp: FetchResponse = conn.request(version, &req);
    assert_eq!(resp.error_code, error_code::NONE);
    resp.responses
        .into_iter()
        .flat_map(|t| t.partitions)
        .find(|p| p.partition_index == partition)
        .expect("the partition is in the Fetch response")
}

/// `(base offset, the record's value)` of each batch a fetch returned, after checking
/// each batch's CRC-32C as a consumer does.
fn served(part: &PartitionData) -> Vec<(i64, Bytes)> {
    let records = part.records.clone().unwrap_or_default();
    let mut out = Vec::new();
    for (base, batch) in batches_in(&records) {
        let info = wharf_protocol::batch::validate_batch(&batch, usize::MAX)
            .unwrap_or_else(|e| panic!("a batch that fails validation was served at {base}: {e}"));
        assert_eq!(info.records_count, 1);
        // One uncompressed record without headers: its value is the VALUE_BYTES before
        // the batch's last byte (the header count, 0).
        let end = batch.len() - 1;
        out.push((base, batch.slice(end - VALUE_BYTES..end)));
    }
    out
}

/// Whole batches in `bytes` as `(base offset, bytes)`, stopping at a partial one.
fn batches_in(bytes: &Bytes) -> Vec<(i64, Bytes)> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 12 <= bytes.len() {
        let base = i64::from_be_bytes(bytes[pos..pos + 8].try_into().expect("8 bytes"));
        let len = i32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().expect("4 bytes"));
        let end = pos + 12 + len.max(0) as usize;
        if len <= 0 || end > bytes.len() {
            break;
        }
        out.push((base, bytes.slice(pos..end)));
        pos = end;
    }
    out
}

fn partition_dir(broker: &Broker, topic: &str, partition: i32) -> PathBuf {
    broker.data_dir().join(format!("{topic}-{partition}"))
}

/// Base offsets of the partition's segment files, in order.
fn segments(dir: &Path) -> Vec<i64> {
    let mut bases: Vec<i64> = std::fs::read_dir(dir)
        .expect("the partition directory")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    bases
}

fn segment_path(dir: &Path, base: i64, suffix: &str) -> PathBuf {
    dir.join(format!("{base:020}{suffix}"))
}

/// `(position, length)` of the batch holding `offset` in the segment file at `path`.
fn batch_on_disk(path: &Path, offset: i64) -> (u64, usize) {
    let bytes = Bytes::from(std::fs::read(path).expect("read the segment"));
    let mut pos = 0u64;
    for (base, batch) in batches_in(&bytes) {
        if base == offset {
            return (pos, batch.len());
        }
        pos += batch.len() as u64;
    }
    panic!("no batch at offset {offset} in {}", path.display());
}

/// Rewrites `bytes` at `position` of the file, durably.
fn overwrite(path: &Path, position: u64, bytes: &[u8]) {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open the segment");
    file.write_all_at(bytes, position).expect("write");
    file.sync_all().expect("sync");
}

/// ListOffsets earliest and latest, as a client sees them.
fn watermarks(broker: &Broker, topic: &str, partition: i32) -> (i64, i64) {
    client::consumer(&broker.bootstrap(), &[])
        .fetch_watermarks(topic, partition, Duration::from_secs(30))
        .expect("ListOffsets")
}

/// Everything a consumer reading from the earliest offset (auto.offset.reset=earliest)
/// gets, by offset; every record must be the one produced at that offset.
fn consume_all(broker: &Broker, topic: &str) -> BTreeMap<(i32, i64), ()> {
    let mut out = BTreeMap::new();
    for (partition, messages) in client::read_all(&broker.bootstrap(), topic) {
        for m in messages {
            assert_eq!(
                m.payload(),
                Some(&value(partition, m.offset())[..]),
                "partition {partition} offset {} holds another record",
                m.offset()
            );
            out.insert((partition, m.offset()), ());
        }
    }
    out
}

#[test]
fn a_damaged_batch_in_a_sealed_segment_serves_what_precedes_it_then_moves_the_log_start() {
    let mut broker = Broker::start();
    let topic = unique_topic("damaged");
    client::create_topic(
        &broker.bootstrap(),
        &topic,
        2,
        &[("segment.bytes", SEGMENT_BYTES)],
    );
    let mut conn = KafkaConn::connect(broker.addr());
    const COUNT: i64 = 40;
    const BAD: i64 = 5;
    for partition in 0..2 {
        produce(&mut conn, &topic, partition, COUNT);
    }
    drop(conn);
    assert!(broker.terminate().success());

    // Partition 0: a flipped byte in a record (inside the CRC). Partition 1: a base offset
    // moved on by 10 (outside the CRC; once served as a silent skip of 10 records).
    let p0 = partition_dir(&broker, &topic, 0);
    let p1 = partition_dir(&broker, &topic, 1);
    assert!(
        segments(&p0).len() >= 3,
        "several segments: {:?}",
        segments(&p0)
    );
    let seg0 = segment_path(&p0, 0, ".log");
    let (pos, len) = batch_on_disk(&seg0, BAD);
    let mut byte = [0u8; 1];
    std::fs::File::open(&seg0)
        .expect("open")
        .read_exact_at(&mut byte, pos + len as u64 - 10)
        .expect("read");
    overwrite(&seg0, pos + len as u64 - 10, &[byte[0] ^ 0x20]);
    let seg1 = segment_path(&p1, 0, ".log");
    let (pos, _) = batch_on_disk(&seg1, BAD);
    overwrite(&seg1, pos, &(BAD + 10).to_be_bytes());

    broker.restart();
    let mut conn = KafkaConn::connect(broker.addr());
    for partition in 0..2 {
        // A read from the start returns every valid batch before the damaged one.
        let part = fetch(&mut conn, &topic, partition, 0);
        assert_eq!(part.error_code, error_code::NONE, "partition {partition}");
        let got = served(&part);
        let want: Vec<(i64, Bytes)> = (0..BAD).map(|o| (o, value(partition, o))).collect();
        assert_eq!(
            got, want,
            "partition {partition}: the batches before the damage"
        );

        // A read at the damaged batch is told the log start moved past it, never handed
        // the damaged bytes nor what follows as if it were that offset.
        let part = fetch(&mut conn, &topic, partition, BAD);
        assert_eq!(
            part.error_code, OFFSET_OUT_OF_RANGE,
            "partition {partition}: a read at the damage"
        );
        let start = part.log_start_offset;
        assert!(
            start > BAD && start < COUNT,
            "partition {partition}: log start {start}"
        );
        assert_eq!(watermarks(&broker, &topic, partition), (start, COUNT));
        let part = fetch(&mut conn, &topic, partition, start);
        assert_eq!(part.error_code, error_code::NONE);
        let got = served(&part);
        assert_eq!(got.first().map(|(o, _)| *o), Some(start));
        for (offset, v) in got {
            assert_eq!(
                v,
                value(partition, offset),
                "partition {partition} offset {offset}"
            );
        }
    }
    let stderr = broker.stderr();
    assert!(
        stderr.contains(&format!("damaged record batch at offset {BAD} (segment 0")),
        "the broker says where the damage is:\n{stderr}"
    );
    assert!(
        stderr.matches("the log start moved from 0 to").count() >= 2,
        "the broker says what can no longer be read:\n{stderr}"
    );

    // A consumer from the earliest offset reads on from the new log start: every record
    // it gets is the one produced at its offset, up to the end.
    let got = consume_all(&broker, &topic);
    for partition in 0..2 {
        let (start, _) = watermarks(&broker, &topic, partition);
        let offsets: Vec<i64> = got
            .keys()
            .filter(|k| k.0 == partition)
            .map(|k| k.1)
            .collect();
        assert_eq!(offsets, (start..COUNT).collect::<Vec<_>>());
    }

    // The moved log start is kept across a restart.
    broker.restart();
    for partition in 0..2 {
        let (start, end) = watermarks(&broker, &topic, partition);
        assert!(
            start > BAD && end == COUNT,
            "partition {partition}: {start}..{end}"
        );
    }
    broker.assert_no_panic();
}

#[test]
fn a_segment_missing_from_the_middle_is_reported_at_startup_and_never_crossed_silently() {
    let mut broker = Broker::start();
    let topic = unique_topic("gap");
    client::create_topic(
        &broker.bootstrap(),
        &topic,
        1,
        &[("segment.bytes", SEGMENT_BYTES)],
    );
    let mut conn = KafkaConn::connect(broker.addr());
    const COUNT: i64 = 60;
    produce(&mut conn, &topic, 0, COUNT);
    drop(conn);
    assert!(broker.terminate().success());

    let dir = partition_dir(&broker, &topic, 0);
    let bases = segments(&dir);
    assert!(bases.len() >= 4, "several segments: {bases:?}");
    // Someone deletes the second segment's log file.
    std::fs::remove_file(segment_path(&dir, bases[1], ".log")).expect("delete a segment");

    broker.restart();
    let stderr = broker.stderr();
    assert!(
        stderr.contains(&format!(
            "offsets {}..{} are missing after segment {}",
            bases[1], bases[2], bases[0]
        )) && stderr.contains(&format!("the log start moved from 0 to {}", bases[2])),
        "the broker reports the gap at startup:\n{stderr}"
    );
    assert_eq!(watermarks(&broker, &topic, 0), (bases[2], COUNT));
    let mut conn = KafkaConn::connect(broker.addr());
    // Neither before the gap (still on disk) nor in it: the reader is told where the log
    // starts now.
    for offset in [0, bases[1] - 1, bases[1]] {
        let part = fetch(&mut conn, &topic, 0, offset);
        assert_eq!(part.error_code, OFFSET_OUT_OF_RANGE, "a read at {offset}");
        assert_eq!(part.log_start_offset, bases[2]);
    }
    let got = consume_all(&broker, &topic);
    let offsets: Vec<i64> = got.keys().map(|(_, o)| *o).collect();
    assert_eq!(offsets, (bases[2]..COUNT).collect::<Vec<_>>());
    broker.assert_no_panic();
}

#[test]
fn after_a_crash_damage_is_found_at_startup_and_the_offsets_lost_are_reported() {
    let mut broker = Broker::start();
    let topic = unique_topic("crash-damage");
    client::create_topic(
        &broker.bootstrap(),
        &topic,
        2,
        &[("segment.bytes", SEGMENT_BYTES)],
    );
    let mut conn = KafkaConn::connect(broker.addr());
    const COUNT: i64 = 40;
    for partition in 0..2 {
        produce(&mut conn, &topic, partition, COUNT);
    }
    drop(conn);
    broker.kill();

    // Partition 0: the segment being written when the broker died is damaged at its
    // third batch. Partition 1: a sealed segment is damaged and the file that vouches for
    // the sealed segments is gone, so nothing proves it was closed cleanly.
    let p0 = partition_dir(&broker, &topic, 0);
    let last = *segments(&p0).last().expect("segments");
    let cut_at = last + 2;
    assert!(cut_at < COUNT, "the last segment holds a few batches");
    let seg = segment_path(&p0, last, ".log");
    let (pos, _) = batch_on_disk(&seg, cut_at);
    overwrite(&seg, pos + 20, &[0xff, 0xff]);
    let p1 = partition_dir(&broker, &topic, 1);
    let bases = segments(&p1);
    std::fs::remove_file(p1.join("sealed-segments")).expect("remove the proof");
    let seg = segment_path(&p1, bases[1], ".log");
    let (pos, len) = batch_on_disk(&seg, bases[1] + 1);
    overwrite(&seg, pos + len as u64 - 1, b"#");

    broker.restart();
    let stderr = broker.stderr();
    assert!(
        stderr.contains(&format!(
            "cut the log at offset {cut_at} (segment {last}, position"
        )) && stderr.contains(&format!("offsets {cut_at}..{COUNT} are lost")),
        "the cut is reported with the offsets lost:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "damaged record batch at offset {} (segment {}",
            bases[1] + 1,
            bases[1]
        )) && stderr.contains(&format!("the log start moved from 0 to {}", bases[2])),
        "damage in a segment without proof of a clean close is found at startup:\n{stderr}"
    );
    assert_eq!(watermarks(&broker, &topic, 0), (0, cut_at));
    assert_eq!(watermarks(&broker, &topic, 1), (bases[2], COUNT));
    let got = consume_all(&broker, &topic);
    let p0: Vec<i64> = got.keys().filter(|k| k.0 == 0).map(|k| k.1).collect();
    let p1: Vec<i64> = got.keys().filter(|k| k.0 == 1).map(|k| k.1).collect();
    assert_eq!(p0, (0..cut_at).collect::<Vec<_>>());
    assert_eq!(p1, (bases[2]..COUNT).collect::<Vec<_>>());

    // The cut partition takes appends at the offset it was cut at.
    let mut conn = KafkaConn::connect(broker.addr());
    let version = pick_version(&conn.api_versions(), ApiKey::Produce, 3, 9);
    let batch = record_batch(&[value(0, cut_at)], Compression::None);
    assert_eq!(
        produce_one(&mut conn, version, &topic, 0, batch),
        (error_code::NONE, cut_at)
    );
    broker.assert_no_panic();
}
