//! Produce v0–2 and Fetch v0–3 byte by byte: message sets of magic 0 and 1 (plain and in
//! compressed wrappers) are stored as v2 batches with their offsets, keys, values and
//! timestamps; stored batches are served back to old readers converted down to the magic
//! they read, LZ4's magic-0 header checksum quirk (KAFKA-3160) included. Every answer,
//! errors included, is read field by field as a client of that version reads it.

mod common;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{CreateTopicsRequest, FetchRequest};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder};

use common::old::{
    call, codec_code, compress, decompress, message, parse_messages, send_only, Body, Msg,
};
use common::raw::{produce_one, record_batch, topic_name, KafkaConn};
use common::{unique_topic, Broker};

const NONE: i16 = 0;
const OFFSET_OUT_OF_RANGE: i16 = 1;
const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const INVALID_REQUIRED_ACKS: i16 = 21;
const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
const INVALID_RECORD: i16 = 87;

const PRODUCE: i16 = 0;
const FETCH: i16 = 1;

/// What a Produce v0–2 response says about its one partition.
#[derive(Debug, PartialEq, Eq)]
struct Produced {
    error: i16,
    base_offset: i64,
}

/// Produce v0–2 of one partition's message set; reads the whole response of `version`.
fn produce_old(
    conn: &mut KafkaConn,
    version: i16,
    topic: &str,
    acks: i16,
    records: &[u8],
) -> Produced {
    let body = Body::new()
        .i16(acks)
        .i32(10_000)
        .i32(1)
        .str(topic)
        .i32(1)
        .i32(0)
        .bytes(records);
    let mut r = call(conn, PRODUCE, version, body);
    assert_eq!(r.len(), 1);
    assert_eq!(r.str(), topic);
    assert_eq!(r.len(), 1);
    assert_eq!(r.i32(), 0);
    let produced = Produced {
        error: r.i16(),
        base_offset: r.i64(),
    };
    if version >= 2 {
        // CreateTime topics: -1.
        assert_eq!(r.i64(), -1, "log_append_time_ms");
    }
    if version >= 1 {
        assert_eq!(r.i32(), 0, "throttle_time_ms");
    }
    r.end();
    produced
}

/// Fetch v0–3 of one partition: (error, high watermark, records).
fn fetch_old(conn: &mut KafkaConn, version: i16, topic: &str, offset: i64) -> (i16, i64, Bytes) {
    let mut body = Body::new().i32(-1).i32(100).i32(1);
    if version >= 3 {
        body = body.i32(1 << 20);
    }
    let body = body
        .i32(1)
        .str(topic)
        .i32(1)
        .i32(0)
        .i64(offset)
        .i32(1 << 20);
    let mut r = call(conn, FETCH, version, body);
    if version >= 1 {
        assert_eq!(r.i32(), 0, "throttle_time_ms");
    }
    assert_eq!(r.len(), 1);
    assert_eq!(r.str(), topic);
    assert_eq!(r.len(), 1);
    assert_eq!(r.i32(), 0);
    let error = r.i16();
    let high_watermark = r.i64();
    let records = r.nullable_bytes().unwrap_or_default();
    r.end();
    (error, high_watermark, records)
}

/// Every record stored in partition 0, read with a current Fetch (v12) and decoded by
/// kafka-protocol: the batches' codecs and (offset, key, value, timestamp) per record.
fn stored(conn: &mut KafkaConn, topic: &str) -> (Vec<Compression>, Vec<StoredRow>) {
    let mut partition = FetchPartition::default();
    partition.partition_max_bytes = 1 << 20;
    let mut t = FetchTopic::default();
    t.topic = topic_name(topic);
    t.partitions = vec![partition];
    let mut req = FetchRequest::default();
    req.max_wait_ms = 100;
    req.max_bytes = 1 << 20;
    req.topics = vec![t];
    let resp = conn.request(12, &req);
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, NONE);
    let mut records = p.records.clone().unwrap_or_default();
    let sets = RecordBatchDecoder::decode_all(&mut records).expect("stored batches decode");
    let codecs = sets.iter().map(|s| s.compression).collect();
    let rows = sets
        .into_iter()
        .flat_map(|s| s.records)
        .map(|r: Record| (r.offset, r.key, r.value, r.timestamp))
        .collect();
    (codecs, rows)
}

/// (offset, key, value, timestamp) of a stored record.
type StoredRow = (i64, Option<Bytes>, Option<Bytes>, i64);
/// (offset, key, value, timestamp) of a record read from a message set.
type SetRow = (i64, Option<Vec<u8>>, Option<Vec<u8>>, i64);

/// Three messages of `magic` (one without a key), plain or in one `codec` wrapper.
fn message_set(magic: i8, codec: &str, first_timestamp: i64) -> Vec<u8> {
    let keys: [Option<&[u8]>; 3] = [Some(b"k0"), None, Some(b"k2")];
    let value = |i: usize| format!("value {i} ").repeat(20).into_bytes();
    let mut plain = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        // A client numbers a wrapper's inner messages 0..n (relative, magic 1) or leaves
        // offsets for the broker to assign.
        let offset = i as i64;
        plain.extend(message(
            offset,
            magic,
            0,
            first_timestamp + i as i64,
            *key,
            Some(&value(i)),
        ));
    }
    if codec == "none" {
        return plain;
    }
    message(
        2,
        magic,
        codec_code(codec),
        first_timestamp + 2,
        None,
        Some(&compress(codec, &plain)),
    )
}

fn create_topic(conn: &mut KafkaConn, topic: &str, configs: &[(&str, &str)]) {
    let mut t = CreatableTopic::default();
    t.name = topic_name(topic);
    t.num_partitions = 1;
    t.replication_factor = 1;
    t.configs = configs
        .iter()
        .map(|(k, v)| {
            let mut c = CreatableTopicConfig::default();
            c.name = StrBytes::from_string(k.to_string());
            c.value = Some(StrBytes::from_string(v.to_string()));
            c
        })
        .collect();
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 10_000;
    let resp = conn.request(4, &req);
    assert_eq!(
        resp.topics[0].error_code, NONE,
        "{:?}",
        resp.topics[0].error_message
    );
}

#[test]
fn produce_v0_to_v2_message_sets_are_stored_as_v2_batches() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    for (version, magic) in [(0i16, 0i8), (1, 0), (2, 1)] {
        for codec in ["none", "gzip", "snappy", "lz4"] {
            let topic = unique_topic(&format!("p{version}-{codec}"));
            create_topic(&mut conn, &topic, &[]);
            for round in 0..2i64 {
                let produced = produce_old(
                    &mut conn,
                    version,
                    &topic,
                    1,
                    &message_set(magic, codec, 1_000),
                );
                assert_eq!(
                    produced,
                    Produced {
                        error: NONE,
                        base_offset: 3 * round
                    },
                    "v{version} {codec}"
                );
            }
            let (codecs, rows) = stored(&mut conn, &topic);
            // The producer's codec is kept (compression.type=producer), one batch a request.
            let want_codec = match codec {
                "gzip" => Compression::Gzip,
                "snappy" => Compression::Snappy,
                "lz4" => Compression::Lz4,
                _ => Compression::None,
            };
            assert_eq!(codecs, vec![want_codec; 2], "v{version} {codec}");
            let ts = |i: i64| if magic == 0 { -1 } else { 1_000 + i };
            let want: Vec<_> = (0..6)
                .map(|o| {
                    let i = (o % 3) as usize;
                    let key = [Some(&b"k0"[..]), None, Some(&b"k2"[..])][i].map(Bytes::from_static);
                    let value = Bytes::from(format!("value {i} ").repeat(20));
                    (o, key, Some(value), ts(i as i64))
                })
                .collect();
            assert_eq!(rows, want, "v{version} {codec}");
        }
    }
    broker.assert_no_panic();
}

#[test]
fn produce_v0_to_v2_errors_are_complete_responses() {
    let broker = Broker::start_with(&["--auto-create-topics", "false"]);
    let mut conn = KafkaConn::connect(broker.addr());
    let topic = unique_topic("perr");
    create_topic(&mut conn, &topic, &[]);
    let good = message_set(1, "none", 5);
    for version in 0..=2 {
        assert_eq!(
            produce_old(&mut conn, version, "no-such-topic", 1, &good).error,
            UNKNOWN_TOPIC_OR_PARTITION
        );
        assert_eq!(
            produce_old(&mut conn, version, &topic, 5, &good).error,
            INVALID_REQUIRED_ACKS
        );
        let mut damaged = message_set(if version == 2 { 1 } else { 0 }, "gzip", 5);
        let n = damaged.len();
        damaged[n - 1] ^= 0xff;
        assert_eq!(
            produce_old(&mut conn, version, &topic, 1, &damaged).error,
            CORRUPT_MESSAGE
        );
        // Two compressed wrappers in one request: Kafka's "more than one batch".
        let mut two = message_set(0, "gzip", 5);
        two.extend(message_set(0, "gzip", 5));
        assert_eq!(
            produce_old(&mut conn, version, &topic, 1, &two).error,
            INVALID_RECORD
        );
    }
    // acks=0: no response at all, and the connection goes on.
    send_only(
        &mut conn,
        PRODUCE,
        1,
        Body::new()
            .i16(0)
            .i32(1000)
            .i32(1)
            .str(&topic)
            .i32(1)
            .i32(0)
            .bytes(&good),
    );
    let (error, high_watermark, _) = fetch_old(&mut conn, 0, &topic, 0);
    assert_eq!((error, high_watermark), (NONE, 3));
    broker.assert_no_panic();
}

#[test]
fn produce_v2_with_a_v2_batch_is_stored_as_kafka_3_9_did() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let topic = unique_topic("p2v2");
    create_topic(&mut conn, &topic, &[]);
    let batch = record_batch(&[Bytes::from_static(b"new format")], Compression::None);
    assert_eq!(
        produce_old(&mut conn, 2, &topic, 1, &batch),
        Produced {
            error: NONE,
            base_offset: 0
        }
    );
    let (_, rows) = stored(&mut conn, &topic);
    assert_eq!(rows[0].2.as_deref(), Some(&b"new format"[..]));
}

/// The records of a fetched message set, wrappers opened: (offset, key, value, timestamp)
/// with absolute offsets, and the wrappers themselves.
fn flatten(magic: i8, set: &[u8]) -> (Vec<SetRow>, Vec<Msg>) {
    let mut rows = Vec::new();
    let mut wrappers = Vec::new();
    for m in parse_messages(set) {
        assert_eq!(m.magic, magic, "every message is in the reader's format");
        let codec = match m.attributes & 7 {
            0 => {
                rows.push((m.offset, m.key.clone(), m.value.clone(), m.timestamp));
                continue;
            }
            1 => "gzip",
            2 => "snappy",
            3 => "lz4",
            other => panic!("codec {other} in a message set"),
        };
        let value = m.value.clone().expect("a wrapper has a value");
        let plain = if codec == "lz4" {
            check_lz4_header(magic, &value);
            // kafka-protocol's LZ4 (liblz4) checks the standard header checksum.
            let mut fixed = value.clone();
            fixed[6] = (twox_hash::XxHash32::oneshot(0, &fixed[4..6]) >> 8) as u8;
            decompress(codec, &fixed)
        } else {
            decompress(codec, &value)
        };
        let inner = parse_messages(&plain);
        let last_inner = inner.last().expect("a wrapper holds messages").offset;
        for im in inner {
            assert_eq!(im.magic, magic);
            assert_eq!(im.attributes & 7, 0, "inner messages are not compressed");
            // Magic 1 numbers inner messages relative to the wrapper's (last) offset.
            let offset = if magic == 0 {
                im.offset
            } else {
                m.offset - (last_inner - im.offset)
            };
            rows.push((offset, im.key, im.value, im.timestamp));
        }
        wrappers.push(m);
    }
    (rows, wrappers)
}

/// KAFKA-3160: magic 0 carries the pre-0.10 LZ4 header checksum (over the magic number
/// too); magic 1 the frame format's.
fn check_lz4_header(magic: i8, frame: &[u8]) {
    assert_eq!(&frame[..4], &[0x04, 0x22, 0x4d, 0x18], "LZ4 frame magic");
    assert_eq!(frame[4] & 0x08, 0, "no content size in the descriptor");
    let covered = if magic == 0 {
        &frame[..6]
    } else {
        &frame[4..6]
    };
    let want = (twox_hash::XxHash32::oneshot(0, covered) >> 8) as u8;
    assert_eq!(frame[6], want, "LZ4 header checksum for magic {magic}");
}

#[test]
fn fetch_v0_to_v3_convert_stored_batches_down() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let topic = unique_topic("f");
    create_topic(&mut conn, &topic, &[]);
    // Offsets 0-2 plain, 3-5 gzip, 6-8 snappy, 9-11 lz4 (current Produce, v2 batches).
    let mut want = Vec::new();
    for (i, codec) in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
    ]
    .into_iter()
    .enumerate()
    {
        let values: Vec<Bytes> = (0..3)
            .map(|j| Bytes::from(format!("value {} ", 3 * i + j).repeat(10)))
            .collect();
        let (error, base) = produce_one(&mut conn, 9, &topic, 0, record_batch(&values, codec));
        assert_eq!((error, base), (NONE, 3 * i as i64));
        want.extend(
            values
                .into_iter()
                .enumerate()
                .map(|(j, v)| ((3 * i + j) as i64, v.to_vec())),
        );
    }
    let (_, stored_rows) = stored(&mut conn, &topic);
    for version in 0..=3i16 {
        let magic = if version < 2 { 0 } else { 1 };
        // From offset 1: the plain batch's offset 0 is left out, as Kafka does.
        let (error, high_watermark, records) = fetch_old(&mut conn, version, &topic, 1);
        assert_eq!((error, high_watermark), (NONE, 12), "v{version}");
        let (rows, wrappers) = flatten(magic, &records);
        assert_eq!(wrappers.len(), 3, "one wrapper per compressed batch");
        let got: Vec<(i64, Vec<u8>)> = rows
            .iter()
            .map(|(o, k, v, _)| {
                assert_eq!(*k, None);
                (*o, v.clone().expect("a value"))
            })
            .collect();
        assert_eq!(got, want[1..], "v{version}");
        for (row, stored_row) in rows.iter().zip(&stored_rows[1..]) {
            let ts = if magic == 0 { -1 } else { stored_row.3 };
            assert_eq!(row.3, ts, "v{version} timestamp of offset {}", row.0);
        }
        for w in &wrappers {
            assert_eq!(
                w.timestamp,
                if magic == 0 {
                    -1
                } else {
                    stored_rows[w.offset as usize].3
                }
            );
        }
    }
    broker.assert_no_panic();
}

#[test]
fn fetch_v0_to_v3_errors_and_zstd() {
    let broker = Broker::start_with(&["--auto-create-topics", "false"]);
    let mut conn = KafkaConn::connect(broker.addr());
    let plain = unique_topic("fz-plain");
    create_topic(&mut conn, &plain, &[]);
    let values = [Bytes::from_static(b"zstd value")];
    assert_eq!(
        produce_one(
            &mut conn,
            9,
            &plain,
            0,
            record_batch(&values, Compression::Zstd)
        )
        .0,
        NONE
    );
    let zstd_topic = unique_topic("fz-zstd");
    create_topic(&mut conn, &zstd_topic, &[("compression.type", "zstd")]);
    assert_eq!(
        produce_one(
            &mut conn,
            9,
            &zstd_topic,
            0,
            record_batch(&values, Compression::None)
        )
        .0,
        NONE
    );
    for version in 0..=3 {
        let (error, ..) = fetch_old(&mut conn, version, "no-such-topic", 0);
        assert_eq!(error, UNKNOWN_TOPIC_OR_PARTITION);
        let (error, ..) = fetch_old(&mut conn, version, &plain, 99);
        assert_eq!(error, OFFSET_OUT_OF_RANGE);
        // A zstd batch has no message-set form.
        let (error, high_watermark, records) = fetch_old(&mut conn, version, &plain, 0);
        assert_eq!(
            (error, high_watermark, records.len()),
            (UNSUPPORTED_COMPRESSION_TYPE, 1, 0)
        );
        // compression.type=zstd refuses readers older than Fetch v10, as Kafka 3.x.
        let (error, ..) = fetch_old(&mut conn, version, &zstd_topic, 0);
        assert_eq!(error, UNSUPPORTED_COMPRESSION_TYPE);
    }
    broker.assert_no_panic();
}

#[test]
fn keyless_message_sets_on_a_compacted_topic_are_invalid() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let topic = unique_topic("pc");
    create_topic(&mut conn, &topic, &[("cleanup.policy", "compact")]);
    for (version, magic) in [(0i16, 0i8), (2, 1)] {
        for codec in ["none", "gzip"] {
            let produced =
                produce_old(&mut conn, version, &topic, 1, &message_set(magic, codec, 7));
            assert_eq!(produced.error, INVALID_RECORD, "v{version} {codec}");
        }
    }
    // Keyed messages are fine.
    let keyed = message(0, 1, 0, 7, Some(b"k"), Some(b"v"));
    assert_eq!(produce_old(&mut conn, 2, &topic, 1, &keyed).error, NONE);
    let (_, rows) = stored(&mut conn, &topic);
    assert_eq!(rows.len(), 1);
}
