//! AlterConfigs (the non-incremental API) and DescribeLogDirs at every version, over a raw
//! connection: AlterConfigs replaces a topic's dynamic configs (configs not named revert
//! to their defaults), honours validate_only and refuses what Kafka refuses;
//! DescribeLogDirs reports the data directory with each partition's size.

mod common;

use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::{
    AlterConfigsRequest, CreateTopicsRequest, DescribeConfigsRequest, DescribeLogDirsRequest,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;

use bytes::Bytes;
use common::old::{call, Body};
use common::raw::{produce_one, record_batch, topic_name, KafkaConn};
use common::{unique_topic, Broker};

const NONE: i16 = 0;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const INVALID_CONFIG: i16 = 40;
const INVALID_REQUEST: i16 = 42;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn create_topic(conn: &mut KafkaConn, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut t = CreatableTopic::default();
    t.name = topic_name(topic);
    t.num_partitions = partitions;
    t.replication_factor = 1;
    t.configs = configs
        .iter()
        .map(|(k, v)| {
            let mut c = CreatableTopicConfig::default();
            c.name = s(k);
            c.value = Some(s(v));
            c
        })
        .collect();
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 10_000;
    let resp = conn.request(5, &req);
    assert_eq!(resp.topics[0].error_code, NONE);
}

fn resource(kind: i8, name: &str, configs: &[(&str, Option<&str>)]) -> AlterConfigsResource {
    let mut r = AlterConfigsResource::default();
    r.resource_type = kind;
    r.resource_name = s(name);
    r.configs = configs
        .iter()
        .map(|(k, v)| {
            let mut c = AlterableConfig::default();
            c.name = s(k);
            c.value = v.map(s);
            c
        })
        .collect();
    r
}

/// AlterConfigs: (error code, message) per resource, in request order.
fn alter(
    conn: &mut KafkaConn,
    version: i16,
    resources: Vec<AlterConfigsResource>,
    validate_only: bool,
) -> Vec<(i16, Option<String>)> {
    let mut req = AlterConfigsRequest::default();
    req.resources = resources;
    req.validate_only = validate_only;
    let resp = conn.request(version, &req);
    resp.responses
        .iter()
        .map(|r| {
            (
                r.error_code,
                r.error_message.as_ref().map(|m| m.to_string()),
            )
        })
        .collect()
}

/// A topic's overrides (configs whose source is the topic), by name.
fn overrides(conn: &mut KafkaConn, topic: &str) -> Vec<(String, String)> {
    let mut r = DescribeConfigsResource::default();
    r.resource_type = RESOURCE_TOPIC;
    r.resource_name = s(topic);
    r.configuration_keys = None;
    let mut req = DescribeConfigsRequest::default();
    req.resources = vec![r];
    let resp = conn.request(4, &req);
    assert_eq!(resp.results[0].error_code, NONE);
    resp.results[0]
        .configs
        .iter()
        .filter(|c| c.config_source == 1)
        .map(|c| {
            (
                c.name.to_string(),
                c.value.as_deref().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn alter_configs_replaces_a_topics_configs_at_every_version() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    for version in 0..=2 {
        let topic = unique_topic(&format!("ac{version}"));
        create_topic(
            &mut conn,
            &topic,
            1,
            &[("cleanup.policy", "compact"), ("retention.ms", "1000")],
        );
        // validate_only: checked, answered, nothing changes.
        let only = resource(RESOURCE_TOPIC, &topic, &[("segment.ms", Some("60000"))]);
        assert_eq!(
            alter(&mut conn, version, vec![only], true),
            vec![(NONE, None)]
        );
        assert_eq!(
            overrides(&mut conn, &topic),
            pairs(&[("cleanup.policy", "compact"), ("retention.ms", "1000")])
        );
        // The real thing: cleanup.policy and retention.ms revert to their defaults.
        let set = resource(
            RESOURCE_TOPIC,
            &topic,
            &[
                ("segment.ms", Some("60000")),
                ("compression.type", Some("lz4")),
            ],
        );
        assert_eq!(
            alter(&mut conn, version, vec![set], false),
            vec![(NONE, None)]
        );
        assert_eq!(
            overrides(&mut conn, &topic),
            pairs(&[("compression.type", "lz4"), ("segment.ms", "60000")])
        );
        // No configs at all: every override goes.
        let clear = resource(RESOURCE_TOPIC, &topic, &[]);
        assert_eq!(
            alter(&mut conn, version, vec![clear], false),
            vec![(NONE, None)]
        );
        assert_eq!(overrides(&mut conn, &topic), vec![]);
    }
    broker.assert_no_panic();
}

#[test]
fn alter_configs_refuses_what_kafka_refuses() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let topic = unique_topic("acr");
    create_topic(&mut conn, &topic, 1, &[("retention.ms", "1000")]);
    let answers = alter(
        &mut conn,
        1,
        vec![
            resource(RESOURCE_TOPIC, &topic, &[("retention.ms", Some("soon"))]),
            resource(
                RESOURCE_TOPIC,
                "no-such-topic",
                &[("retention.ms", Some("1"))],
            ),
            resource(
                RESOURCE_TOPIC,
                &unique_topic("x"),
                &[("no.such.config", Some("1"))],
            ),
            resource(RESOURCE_BROKER, "1", &[("num.partitions", Some("3"))]),
            resource(RESOURCE_BROKER, "7", &[("num.partitions", Some("3"))]),
            resource(99, "whatever", &[]),
            resource(RESOURCE_TOPIC, "dup", &[("a", Some("1")), ("a", Some("2"))]),
            resource(RESOURCE_TOPIC, "nulls", &[("retention.ms", None)]),
        ],
        false,
    );
    let codes: Vec<i16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(
        codes,
        vec![
            INVALID_CONFIG,
            UNKNOWN_TOPIC_OR_PARTITION,
            UNKNOWN_TOPIC_OR_PARTITION,
            INVALID_REQUEST,
            INVALID_REQUEST,
            INVALID_REQUEST,
            INVALID_REQUEST,
            INVALID_REQUEST,
        ]
    );
    let message = |i: usize| answers[i].1.clone().unwrap_or_default();
    assert!(message(0).contains("retention.ms"), "{}", message(0));
    assert!(message(3).contains("configuration file"), "{}", message(3));
    assert!(
        message(6).contains("duplicate config keys"),
        "{}",
        message(6)
    );
    assert!(message(7).contains("Null value"), "{}", message(7));
    // A resource named twice: both refused.
    let twice = alter(
        &mut conn,
        0,
        vec![
            resource(RESOURCE_TOPIC, &topic, &[]),
            resource(RESOURCE_TOPIC, &topic, &[]),
        ],
        false,
    );
    assert_eq!(
        twice.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![INVALID_REQUEST; 2]
    );
    // The refused alterations changed nothing.
    assert_eq!(
        overrides(&mut conn, &topic),
        pairs(&[("retention.ms", "1000")])
    );
    broker.assert_no_panic();
}

/// One log directory as DescribeLogDirs reports it: path, [(topic, [(partition, size)])],
/// total bytes, usable bytes.
type LogDir = (String, Vec<(String, Vec<(i32, i64)>)>, i64, i64);

/// DescribeLogDirs v1+.
fn describe_log_dirs(
    conn: &mut KafkaConn,
    version: i16,
    topics: Option<Vec<(&str, Vec<i32>)>>,
) -> LogDir {
    let mut req = DescribeLogDirsRequest::default();
    req.topics = topics.map(|ts| {
        ts.into_iter()
            .map(|(t, ps)| {
                let mut d = DescribableLogDirTopic::default();
                d.topic = topic_name(t);
                d.partitions = ps;
                d
            })
            .collect()
    });
    let resp = conn.request(version, &req);
    assert_eq!(resp.results.len(), 1, "one log directory");
    let r = &resp.results[0];
    assert_eq!(r.error_code, NONE);
    let topics = r
        .topics
        .iter()
        .map(|t| {
            let parts = t
                .partitions
                .iter()
                .map(|p| {
                    assert_eq!(p.offset_lag, 0);
                    assert!(!p.is_future_key);
                    (p.partition_index, p.partition_size)
                })
                .collect();
            (t.name.0.to_string(), parts)
        })
        .collect();
    (r.log_dir.to_string(), topics, r.total_bytes, r.usable_bytes)
}

#[test]
fn describe_log_dirs_reports_partition_sizes_at_every_version() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let topic = unique_topic("ld");
    create_topic(&mut conn, &topic, 2, &[]);
    let values: Vec<Bytes> = (0..10).map(|i| Bytes::from(format!("v{i}"))).collect();
    let batch = record_batch(&values, Compression::None);
    assert_eq!(produce_one(&mut conn, 9, &topic, 0, batch.clone()).0, NONE);
    let data_dir = std::fs::canonicalize(broker.data_dir()).expect("data dir exists");
    for version in 1..=4 {
        let (dir, topics, total, usable) = describe_log_dirs(
            &mut conn,
            version,
            Some(vec![(&topic, vec![0, 1, 9]), ("no-such-topic", vec![0])]),
        );
        assert_eq!(dir, data_dir.display().to_string());
        assert_eq!(
            topics,
            vec![(topic.clone(), vec![(0, batch.len() as i64), (1, 0)])]
        );
        if version >= 4 {
            assert!(
                total > 0 && usable > 0 && usable <= total,
                "{total} {usable}"
            );
        } else {
            assert_eq!((total, usable), (-1, -1), "not in v{version}");
        }
        // Every partition of every topic.
        let (_, all, ..) = describe_log_dirs(&mut conn, version, None);
        assert!(
            all.contains(&(topic.clone(), vec![(0, batch.len() as i64), (1, 0)])),
            "{all:?}"
        );
    }
    // v0 by hand: throttle, [error, dir, [topic, [partition, size, lag, future]]].
    let body = Body::new().i32(1).str(&topic).i32(1).i32(0);
    let mut r = call(&mut conn, 35, 0, body);
    assert_eq!(r.i32(), 0);
    assert_eq!(r.len(), 1);
    assert_eq!(r.i16(), NONE);
    assert_eq!(r.str(), data_dir.display().to_string());
    assert_eq!(r.len(), 1);
    assert_eq!(r.str(), topic);
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r.i32(), r.i64(), r.i64(), r.bool()),
        (0, batch.len() as i64, 0, false)
    );
    r.end();
    broker.assert_no_panic();
}
