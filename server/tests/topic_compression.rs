//! `compression.type` per topic and broker-wide, and KIP-467, over a raw connection: a
//! batch sent in another codec than the topic's is stored recompressed with every header
//! field kept (offsets, timestamps, producer id, epoch and sequence, a fresh CRC); a batch
//! already in the topic's codec is stored byte for byte; keyless records on a compacted
//! topic fail with per-record errors from Produce v8, plain INVALID_RECORD before.

mod common;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{CreateTopicsRequest, DescribeConfigsRequest, FetchRequest};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;

use common::raw::{produce_request, topic_name, KafkaConn, BATCH_ATTRIBUTES_OFFSET};
use common::{unique_topic, Broker};
use wharf_protocol::batch::{validate_batch, BatchBuilder, BatchHeader};
use wharf_protocol::compression::Levels;

const NONE: i16 = 0;
const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
const INVALID_RECORD: i16 = 87;

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
    let resp = conn.request(5, &req);
    assert_eq!(
        resp.topics[0].error_code, NONE,
        "{:?}",
        resp.topics[0].error_message
    );
}

/// A batch of an idempotent producer (id 4242, epoch 3, from `sequence`): records with
/// headers and distinct timestamps, compressible values.
fn producer_batch(
    codec: wharf_protocol::batch::Compression,
    keys: &[Option<&str>],
    sequence: i32,
) -> Bytes {
    let mut b = BatchBuilder::new().producer(4242, 3, sequence);
    for (i, key) in keys.iter().enumerate() {
        let value = format!("telemetry reading {i} ").repeat(30);
        b.push(
            key.map(str::as_bytes),
            Some(value.as_bytes()),
            &[(b"sensor", Some(b"t1"))],
            1_700_000_000_000 + i as i64,
        );
    }
    Bytes::from(
        b.build_compressed(codec, Levels::default())
            .expect("builds"),
    )
}

/// The raw bytes of partition 0 from offset 0 (Fetch v12).
fn fetch_raw(conn: &mut KafkaConn, topic: &str) -> Bytes {
    let mut p = FetchPartition::default();
    p.partition_max_bytes = 1 << 20;
    let mut t = FetchTopic::default();
    t.topic = topic_name(topic);
    t.partitions = vec![p];
    let mut req = FetchRequest::default();
    req.max_wait_ms = 100;
    req.max_bytes = 1 << 20;
    req.topics = vec![t];
    let resp = conn.request(12, &req);
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, NONE);
    p.records.clone().unwrap_or_default()
}

/// Produce one batch at `version`: the partition's response.
fn produce(
    conn: &mut KafkaConn,
    version: i16,
    topic: &str,
    records: Bytes,
) -> kafka_protocol::messages::produce_response::PartitionProduceResponse {
    let resp = conn.request(version, &produce_request(topic, 0, -1, records));
    resp.responses[0].partition_responses[0].clone()
}

/// (key, value, timestamp, headers) of every record, decoded by kafka-protocol.
type Row = (Option<Bytes>, Option<Bytes>, i64, usize);

fn rows(records: &Bytes) -> Vec<Row> {
    let mut b = records.clone();
    RecordBatchDecoder::decode_all(&mut b)
        .expect("decodes")
        .into_iter()
        .flat_map(|s| s.records)
        .map(|r| (r.key, r.value, r.timestamp, r.headers.len()))
        .collect()
}

#[test]
fn a_topic_codec_recompresses_other_codecs_and_keeps_its_own_as_sent() {
    use wharf_protocol::batch::Compression as C;
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    for (topic_codec, codec) in [
        ("zstd", C::Zstd),
        ("lz4", C::Lz4),
        ("gzip", C::Gzip),
        ("snappy", C::Snappy),
        ("uncompressed", C::None),
    ] {
        let topic = unique_topic(&format!("tc-{topic_codec}"));
        create_topic(&mut conn, &topic, &[("compression.type", topic_codec)]);
        let keys = [Some("a"), Some("b"), None];
        let mut sent = Vec::new();
        for from in [C::None, C::Gzip, C::Snappy, C::Lz4, C::Zstd] {
            let batch = producer_batch(from, &keys, 3 * sent.len() as i32);
            let p = produce(&mut conn, 9, &topic, batch.clone());
            assert_eq!(p.error_code, NONE, "{from:?} into {topic_codec}");
            assert_eq!(p.base_offset, 3 * sent.len() as i64);
            sent.push((from, batch));
        }
        let stored = fetch_raw(&mut conn, &topic);
        let mut at = 0;
        for (i, (from, batch)) in sent.iter().enumerate() {
            let info = validate_batch(&stored[at..], usize::MAX).expect("a valid stored batch");
            let bytes = &stored[at..at + info.size_bytes];
            at += info.size_bytes;
            assert_eq!(info.compression, codec, "{from:?} into {topic_codec}");
            assert_eq!(info.base_offset, 3 * i as i64);
            let sent_header = BatchHeader::view(batch).unwrap();
            assert_eq!(
                (info.producer_id, info.producer_epoch, info.base_sequence),
                (4242, 3, 3 * i as i32)
            );
            assert_eq!(
                (info.base_timestamp, info.max_timestamp, info.records_count),
                (sent_header.base_timestamp(), sent_header.max_timestamp(), 3)
            );
            if *from == codec {
                // Zero-copy: everything after the offset and epoch fields is as sent.
                assert_eq!(&bytes[16..], &batch[16..], "{from:?} kept as sent");
            }
            assert_eq!(
                rows(&Bytes::copy_from_slice(bytes)),
                rows(batch),
                "{from:?} into {topic_codec}"
            );
        }
        assert_eq!(at, stored.len());
    }
    broker.assert_no_panic();
}

#[test]
fn the_broker_wide_compression_type_applies_to_topics_without_their_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("wharf.toml");
    std::fs::write(&config, "compression.type = \"gzip\"\n").expect("write config");
    let broker = Broker::start_with(&["--config", config.to_str().expect("utf-8")]);
    let mut conn = KafkaConn::connect(broker.addr());
    let topic = unique_topic("bw");
    create_topic(&mut conn, &topic, &[]);
    let p = produce(
        &mut conn,
        9,
        &topic,
        producer_batch(wharf_protocol::batch::Compression::None, &[Some("k")], 0),
    );
    assert_eq!(p.error_code, NONE);
    let stored = fetch_raw(&mut conn, &topic);
    assert_eq!(stored[BATCH_ATTRIBUTES_OFFSET + 1] & 7, 1, "stored as gzip");

    // DescribeConfigs names where the value comes from.
    let mut r = DescribeConfigsResource::default();
    r.resource_type = 2;
    r.resource_name = StrBytes::from_string(topic.clone());
    r.configuration_keys = Some(vec![StrBytes::from_static_str("compression.type")]);
    let mut req = DescribeConfigsRequest::default();
    req.resources = vec![r];
    let resp = conn.request(4, &req);
    let c = &resp.results[0].configs[0];
    assert_eq!(c.value.as_deref(), Some("gzip"));
    assert_eq!(c.config_source, 4, "STATIC_BROKER_CONFIG");
}

#[test]
fn keyless_records_on_a_compacted_topic_fail_per_record() {
    use wharf_protocol::batch::Compression as C;
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let topic = unique_topic("kip467");
    create_topic(&mut conn, &topic, &[("cleanup.policy", "compact,delete")]);
    for codec in [C::None, C::Gzip, C::Zstd] {
        let batch = producer_batch(codec, &[Some("a"), None, Some("c"), None], 0);
        let p = produce(&mut conn, 9, &topic, batch.clone());
        assert_eq!(p.error_code, INVALID_RECORD, "{codec:?}");
        let indexes: Vec<i32> = p.record_errors.iter().map(|e| e.batch_index).collect();
        assert_eq!(indexes, vec![1, 3], "{codec:?}");
        let tp = format!("{topic}-0");
        for e in &p.record_errors {
            assert_eq!(
                e.batch_index_error_message.as_deref(),
                Some(
                    format!(
                        "Compacted topic cannot accept message without key in topic partition {tp}"
                    )
                    .as_str()
                )
            );
        }
        let message = p.error_message.as_deref().unwrap_or_default();
        assert!(
            message.starts_with("One or more records have been rejected due to 2 record errors"),
            "{message}"
        );
        // Before v8 the response has no room for record errors: the code alone.
        let p = produce(&mut conn, 7, &topic, batch);
        assert_eq!(p.error_code, INVALID_RECORD);
    }
    // Nothing was stored; keyed records are.
    let p = produce(
        &mut conn,
        9,
        &topic,
        producer_batch(C::Lz4, &[Some("k")], 0),
    );
    assert_eq!((p.error_code, p.base_offset), (NONE, 0));
    broker.assert_no_panic();
}

#[test]
fn zstd_needs_produce_v7() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let topic = unique_topic("zstd6");
    create_topic(&mut conn, &topic, &[]);
    let batch = producer_batch(wharf_protocol::batch::Compression::Zstd, &[Some("k")], 0);
    assert_eq!(
        produce(&mut conn, 6, &topic, batch.clone()).error_code,
        UNSUPPORTED_COMPRESSION_TYPE
    );
    assert_eq!(produce(&mut conn, 7, &topic, batch).error_code, NONE);
}
