//! The request versions Kafka 3.9 served below Kafka 4's floor (KIP-896), byte by byte:
//! ListOffsets v0, OffsetForLeaderEpoch v0–1, CreateTopics v0–1, DeleteTopics v0,
//! DescribeConfigs v0, OffsetCommit v0–1 and OffsetFetch v0. Each answer, errors included,
//! must be a complete response of the request's version: the test reads every field and
//! fails on a byte too many or too few.

mod common;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::records::Compression;

use common::old::{call, Body, Parse};
use common::raw::{ensure_topic, produce_one, record_batch, KafkaConn};
use common::{unique_topic, Broker};

const NONE: i16 = 0;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const UNSUPPORTED_VERSION: i16 = 35;
const TOPIC_ALREADY_EXISTS: i16 = 36;

const LIST_OFFSETS: i16 = 2;
const OFFSET_COMMIT: i16 = 8;
const OFFSET_FETCH: i16 = 9;
const CREATE_TOPICS: i16 = 19;
const DELETE_TOPICS: i16 = 20;
const OFFSET_FOR_LEADER_EPOCH: i16 = 23;
const DESCRIBE_CONFIGS: i16 = 32;

/// A topic with `records` records in partition 0, produced with a current Produce version.
fn topic_with_records(conn: &mut KafkaConn, prefix: &str, records: usize) -> String {
    let topic = unique_topic(prefix);
    ensure_topic(conn, &topic);
    let values: Vec<Bytes> = (0..records).map(|i| Bytes::from(format!("v{i}"))).collect();
    let (error, base) = produce_one(conn, 9, &topic, 0, record_batch(&values, Compression::None));
    assert_eq!((error, base), (NONE, 0));
    topic
}

/// ListOffsets v0 for one partition: (error, offsets).
fn list_offsets_v0(
    conn: &mut KafkaConn,
    topic: &str,
    partition: i32,
    timestamp: i64,
    max: i32,
) -> (i16, Vec<i64>) {
    let body = Body::new()
        .i32(-1)
        .i32(1)
        .str(topic)
        .i32(1)
        .i32(partition)
        .i64(timestamp)
        .i32(max);
    let mut r = call(conn, LIST_OFFSETS, 0, body);
    assert_eq!(r.len(), 1);
    assert_eq!(r.str(), topic);
    assert_eq!(r.len(), 1);
    assert_eq!(r.i32(), partition);
    let error = r.i16();
    let n = r.len();
    let offsets = (0..n).map(|_| r.i64()).collect();
    r.end();
    (error, offsets)
}

#[test]
fn every_old_version_is_advertised() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let versions = conn.api_versions();
    for (api, min) in [
        (ApiKey::ListOffsets, 0),
        (ApiKey::OffsetForLeaderEpoch, 0),
        (ApiKey::CreateTopics, 0),
        (ApiKey::DeleteTopics, 0),
        (ApiKey::DescribeConfigs, 0),
        (ApiKey::OffsetCommit, 0),
        (ApiKey::OffsetFetch, 0),
        (ApiKey::Metadata, 0),
        (ApiKey::FindCoordinator, 0),
        (ApiKey::JoinGroup, 0),
    ] {
        assert_eq!(
            versions.get(&(api as i16)).map(|v| v.0),
            Some(min),
            "{api:?}"
        );
    }
}

#[test]
fn list_offsets_v0_answers_offsets_newest_first() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let topic = topic_with_records(&mut conn, "lo0", 5);
    // Burrow's question: the newest offset.
    assert_eq!(
        list_offsets_v0(&mut conn, &topic, 0, -1, 1),
        (NONE, vec![5])
    );
    assert_eq!(
        list_offsets_v0(&mut conn, &topic, 0, -2, 1),
        (NONE, vec![0])
    );
    // More than one: the log end, then segment base offsets (one segment here).
    assert_eq!(
        list_offsets_v0(&mut conn, &topic, 0, -1, 10),
        (NONE, vec![5, 0])
    );
    // A time before any segment was written: nothing.
    assert_eq!(list_offsets_v0(&mut conn, &topic, 0, 1, 10), (NONE, vec![]));
    // A time after: the log end first.
    assert_eq!(
        list_offsets_v0(&mut conn, &topic, 0, i64::MAX, 1),
        (NONE, vec![5])
    );
    // Errors: still complete v0 responses.
    assert_eq!(
        list_offsets_v0(&mut conn, &topic, 0, -3, 1),
        (UNSUPPORTED_VERSION, vec![])
    );
    assert_eq!(
        list_offsets_v0(&mut conn, &topic, 7, -1, 1),
        (UNKNOWN_TOPIC_OR_PARTITION, vec![])
    );
    assert_eq!(
        list_offsets_v0(&mut conn, "no-such-topic", 0, -1, 1),
        (UNKNOWN_TOPIC_OR_PARTITION, vec![])
    );
}

#[test]
fn offset_for_leader_epoch_v0_and_v1() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let topic = topic_with_records(&mut conn, "ofle", 3);
    for version in 0..=1 {
        for (name, partition, want_error, want_end) in [
            (topic.as_str(), 0, NONE, 3),
            ("no-such-topic", 0, UNKNOWN_TOPIC_OR_PARTITION, -1),
        ] {
            let body = Body::new().i32(1).str(name).i32(1).i32(partition).i32(0);
            let mut r = call(&mut conn, OFFSET_FOR_LEADER_EPOCH, version, body);
            assert_eq!(r.len(), 1);
            assert_eq!(r.str(), name);
            assert_eq!(r.len(), 1);
            assert_eq!(r.i16(), want_error, "v{version} {name}");
            assert_eq!(r.i32(), partition);
            if version >= 1 {
                let epoch = r.i32();
                assert_eq!(epoch, if want_error == NONE { 0 } else { -1 });
            }
            assert_eq!(r.i64(), want_end, "v{version} {name}");
            r.end();
        }
    }
}

/// CreateTopics v0/v1 for one topic with one config: (error, message of v1).
fn create_topic(
    conn: &mut KafkaConn,
    version: i16,
    name: &str,
    partitions: i32,
    validate_only: bool,
) -> (i16, Option<String>) {
    let mut body = Body::new()
        .i32(1)
        .str(name)
        .i32(partitions)
        .i16(1)
        .i32(0)
        .i32(1)
        .str("retention.ms")
        .str("3600000")
        .i32(10_000);
    if version >= 1 {
        body = body.i8(validate_only as i8);
    }
    let mut r = call(conn, CREATE_TOPICS, version, body);
    assert_eq!(r.len(), 1);
    assert_eq!(r.str(), name);
    let error = r.i16();
    let message = if version >= 1 { r.nullable_str() } else { None };
    r.end();
    (error, message)
}

fn partition_count_v0(conn: &mut KafkaConn, topic: &str) -> Option<usize> {
    // Metadata v0 (kafka-protocol still speaks it).
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::MetadataRequest;
    let req = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(common::raw::topic_name(topic)))
    ]));
    let resp = conn.request(0, &req);
    let t = resp.topics.first()?;
    (t.error_code == NONE).then_some(t.partitions.len())
}

#[test]
fn create_and_delete_topics_v0_and_v1() {
    let broker = Broker::start_with(&["--auto-create-topics", "false"]);
    let mut conn = KafkaConn::connect(broker.addr());
    let a = unique_topic("ct0");
    assert_eq!(create_topic(&mut conn, 0, &a, 3, false), (NONE, None));
    assert_eq!(partition_count_v0(&mut conn, &a), Some(3));
    assert_eq!(
        create_topic(&mut conn, 0, &a, 3, false).0,
        TOPIC_ALREADY_EXISTS
    );
    let (error, message) = create_topic(&mut conn, 1, &a, 3, false);
    assert_eq!(error, TOPIC_ALREADY_EXISTS);
    assert!(message.is_some_and(|m| m.contains(&a)));

    // v1's validate_only: answered as if created, nothing created.
    let b = unique_topic("ct1");
    assert_eq!(create_topic(&mut conn, 1, &b, 2, true).0, NONE);
    assert_eq!(partition_count_v0(&mut conn, &b), None);

    // DeleteTopics v0: name and error per topic, no throttle time.
    let body = Body::new().i32(2).str(&a).str(&b).i32(10_000);
    let mut r = call(&mut conn, DELETE_TOPICS, 0, body);
    assert_eq!(r.len(), 2);
    assert_eq!((r.str(), r.i16()), (a.clone(), NONE));
    assert_eq!((r.str(), r.i16()), (b.clone(), UNKNOWN_TOPIC_OR_PARTITION));
    r.end();
    assert_eq!(partition_count_v0(&mut conn, &a), None);
}

#[test]
fn describe_configs_v0_flags_topic_overrides() {
    let broker = Broker::start_with(&["--auto-create-topics", "false"]);
    let mut conn = KafkaConn::connect(broker.addr());
    let topic = unique_topic("dc0");
    assert_eq!(create_topic(&mut conn, 0, &topic, 1, false).0, NONE);
    let body = Body::new()
        .i32(2)
        .i8(2)
        .str(&topic)
        .i32(2)
        .str("retention.ms")
        .str("segment.bytes")
        .i8(2)
        .str("no-such-topic")
        .i32(-1);
    let mut r: Parse = call(&mut conn, DESCRIBE_CONFIGS, 0, body);
    let _throttle = r.i32();
    assert_eq!(r.len(), 2);
    // The topic: its override is not default, the other config is.
    assert_eq!(r.i16(), NONE);
    let _message = r.nullable_str();
    assert_eq!((r.i8(), r.str()), (2, topic.clone()));
    assert_eq!(r.len(), 2);
    let mut configs = Vec::new();
    for _ in 0..2 {
        let name = r.str();
        let value = r.nullable_str();
        let read_only = r.bool();
        let is_default = r.bool();
        let _sensitive = r.bool();
        configs.push((name, value, read_only, is_default));
    }
    assert_eq!(
        configs,
        vec![
            (
                "retention.ms".to_string(),
                Some("3600000".to_string()),
                false,
                false
            ),
            (
                "segment.bytes".to_string(),
                Some("1073741824".to_string()),
                false,
                true
            ),
        ]
    );
    // An unknown topic: its error in the v0 shape.
    assert_eq!(r.i16(), UNKNOWN_TOPIC_OR_PARTITION);
    assert!(r.nullable_str().is_some());
    assert_eq!((r.i8(), r.str()), (2, "no-such-topic".to_string()));
    assert_eq!(r.len(), 0);
    r.end();
}

/// OffsetCommit v0/v1 of one partition: its error.
fn commit(conn: &mut KafkaConn, version: i16, group: &str, topic: &str, offset: i64) -> i16 {
    let mut body = Body::new().str(group);
    if version >= 1 {
        body = body.i32(-1).str("");
    }
    body = body.i32(1).str(topic).i32(1).i32(0).i64(offset);
    if version >= 1 {
        body = body.i64(-1);
    }
    let body = body.str("from v0");
    let mut r = call(conn, OFFSET_COMMIT, version, body);
    assert_eq!(r.len(), 1);
    assert_eq!(r.str(), topic);
    assert_eq!(r.len(), 1);
    assert_eq!(r.i32(), 0);
    let error = r.i16();
    r.end();
    error
}

/// OffsetFetch v0 of one partition: (offset, metadata, error).
fn fetch_offset_v0(conn: &mut KafkaConn, group: &str, topic: &str) -> (i64, String, i16) {
    let body = Body::new().str(group).i32(1).str(topic).i32(1).i32(0);
    let mut r = call(conn, OFFSET_FETCH, 0, body);
    assert_eq!(r.len(), 1);
    assert_eq!(r.str(), topic);
    assert_eq!(r.len(), 1);
    assert_eq!(r.i32(), 0);
    let offset = r.i64();
    let metadata = r.nullable_str().unwrap_or_default();
    let error = r.i16();
    r.end();
    (offset, metadata, error)
}

#[test]
fn offset_commit_v0_v1_and_offset_fetch_v0() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let topic = topic_with_records(&mut conn, "oc0", 10);
    let group = unique_topic("g");
    assert_eq!(
        fetch_offset_v0(&mut conn, &group, &topic),
        (-1, String::new(), NONE)
    );
    assert_eq!(commit(&mut conn, 0, &group, &topic, 4), NONE);
    assert_eq!(
        fetch_offset_v0(&mut conn, &group, &topic),
        (4, "from v0".to_string(), NONE)
    );
    assert_eq!(commit(&mut conn, 1, &group, &topic, 7), NONE);
    assert_eq!(fetch_offset_v0(&mut conn, &group, &topic).0, 7);
    // An unknown topic: the error in the same shape.
    assert_eq!(
        commit(&mut conn, 0, &group, "no-such-topic", 1),
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        commit(&mut conn, 1, &group, "no-such-topic", 1),
        UNKNOWN_TOPIC_OR_PARTITION
    );
}
