//! Produce and Fetch rules clients depend on, over a raw connection: acks=0 gets no response,
//! one Produce fans out to partitions on both shards, the Fetch size limits still return the
//! first batch whole, a batch starting before the fetch offset comes back whole, out-of-range
//! offsets, read_committed's last stable offset, and a partition named twice in one Fetch
//! answered once, as Kafka does. (Produce v0–2 and Fetch v0–3 are in old_records.rs.)

mod common;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, FetchRequest, FetchResponse, ProduceRequest,
};
use kafka_protocol::records::Compression;

use common::raw::{
    encode_request, ensure_topic, error_code, pick_version, produce_one, produce_request,
    record_batch, topic_name, KafkaConn,
};
use common::{unique_topic, Broker};

const OFFSET_OUT_OF_RANGE: i16 = 1;

struct Versions {
    produce: i16,
    fetch: i16,
}

fn versions(conn: &mut KafkaConn) -> Versions {
    let v = conn.api_versions();
    Versions {
        produce: pick_version(&v, ApiKey::Produce, 3, 12),
        // v4+ has isolation_level and last_stable_offset; v13+ names topics by id.
        fetch: pick_version(&v, ApiKey::Fetch, 4, 12),
    }
}

/// One partition's fetch position and limits.
#[derive(Clone, Copy)]
struct At {
    partition: i32,
    offset: i64,
    max_bytes: i32,
    partition_max_bytes: i32,
    isolation_level: i8,
    max_wait_ms: i32,
}

impl At {
    fn offset(offset: i64) -> At {
        At {
            partition: 0,
            offset,
            max_bytes: 1 << 20,
            partition_max_bytes: 1 << 20,
            isolation_level: 0,
            max_wait_ms: 1000,
        }
    }
}

fn fetch(
    conn: &mut KafkaConn,
    version: i16,
    topic: &str,
    at: At,
) -> kafka_protocol::messages::fetch_response::PartitionData {
    let At {
        partition,
        offset,
        max_bytes,
        partition_max_bytes,
        isolation_level,
        max_wait_ms,
    } = at;
    let req = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_isolation_level(isolation_level)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(partition_max_bytes)])]);
    let resp: FetchResponse = conn.request(version, &req);
    assert_eq!(resp.error_code, error_code::NONE);
    resp.responses
        .into_iter()
        .flat_map(|t| t.partitions)
        .find(|p| p.partition_index == partition)
        .expect("the partition is in the Fetch response")
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes(b.try_into().expect("4 bytes"))
}

fn be_i64(b: &[u8]) -> i64 {
    i64::from_be_bytes(b.try_into().expect("8 bytes"))
}

/// (base offset, total length) of each whole batch, and whether a partial one follows.
fn batches(records: &[u8]) -> (Vec<(i64, usize)>, bool) {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 12 <= records.len() {
        let len = 12 + be_i32(&records[pos + 8..pos + 12]) as usize;
        if pos + len > records.len() {
            return (out, true);
        }
        out.push((be_i64(&records[pos..pos + 8]), len));
        pos += len;
    }
    (out, pos < records.len())
}

fn incompressible(len: usize, seed: u32) -> Bytes {
    let mut state = seed | 1;
    Bytes::from(
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect::<Vec<u8>>(),
    )
}

#[test]
fn acks_0_produce_gets_no_response_and_the_next_request_is_answered() {
    let broker = Broker::start();
    let topic = unique_topic("acks0");
    let mut conn = KafkaConn::connect(broker.addr());
    ensure_topic(&mut conn, &topic);
    let v = versions(&mut conn);
    let mut wire = Vec::new();
    for i in 0..5 {
        let batch = record_batch(
            &[Bytes::from(format!("fire and forget {i}"))],
            Compression::None,
        );
        let payload = encode_request(100 + i, v.produce, &produce_request(&topic, 0, 0, batch));
        wire.extend_from_slice(&(payload.len() as i32).to_be_bytes());
        wire.extend_from_slice(&payload);
    }
    let payload = encode_request(200, 0, &ApiVersionsRequest::default());
    wire.extend_from_slice(&(payload.len() as i32).to_be_bytes());
    wire.extend_from_slice(&payload);
    conn.write_raw(&wire).expect("write");
    let frame = conn.read_frame();
    assert_eq!(
        be_i32(&frame[0..4]),
        200,
        "the first response must be the ApiVersions one"
    );

    // The acks=0 records were appended, in order.
    let part = fetch(&mut conn, v.fetch, &topic, At::offset(0));
    assert_eq!(part.high_watermark, 5);
    broker.assert_no_panic();
}

#[test]
fn one_produce_request_for_sixteen_partitions_is_answered_for_each() {
    let broker = Broker::start_with(&["--num-partitions", "16"]);
    let topic = unique_topic("fan-out-produce");
    let mut conn = KafkaConn::connect(broker.addr());
    assert_eq!(ensure_topic(&mut conn, &topic), 16);
    let v = versions(&mut conn);
    for round in 0..3i64 {
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic_name(&topic))
                .with_partition_data(
                    (0..16)
                        .map(|p| {
                            PartitionProduceData::default()
                                .with_index(p)
                                .with_records(Some(record_batch(
                                    &[
                                        Bytes::from(format!("p{p} r{round}")),
                                        Bytes::from(format!("p{p} r{round}b")),
                                    ],
                                    Compression::None,
                                )))
                        })
                        .collect(),
                )]);
        let resp = conn.request(v.produce, &req);
        let parts: Vec<_> = resp
            .responses
            .iter()
            .flat_map(|t| t.partition_responses.iter())
            .collect();
        let mut indexes: Vec<i32> = parts.iter().map(|p| p.index).collect();
        indexes.sort();
        assert_eq!(
            indexes,
            (0..16).collect::<Vec<_>>(),
            "every partition answered once"
        );
        for p in parts {
            assert_eq!(p.error_code, error_code::NONE, "partition {}", p.index);
            assert_eq!(p.base_offset, round * 2, "partition {}", p.index);
        }
    }
    broker.assert_no_panic();
}

#[test]
fn fetch_limits_still_return_the_first_batch_whole() {
    let broker = Broker::start();
    let topic = unique_topic("fetch-limits");
    let mut conn = KafkaConn::connect(broker.addr());
    ensure_topic(&mut conn, &topic);
    let v = versions(&mut conn);
    for i in 0..4u32 {
        let batch = record_batch(&[incompressible(10_000, i + 1)], Compression::None);
        assert_eq!(
            produce_one(&mut conn, v.produce, &topic, 0, batch).0,
            error_code::NONE
        );
    }

    // partition_max_bytes far below one batch: the first batch still comes back whole
    // (KIP-74), so a consumer always makes progress.
    let part = fetch(
        &mut conn,
        v.fetch,
        &topic,
        At {
            partition_max_bytes: 100,
            ..At::offset(0)
        },
    );
    let records = part.records.unwrap_or_default();
    let (whole, _) = batches(&records);
    assert!(!whole.is_empty(), "the first batch must be returned whole");
    assert_eq!(whole[0].0, 0);
    assert!(
        records.len() <= whole[0].1.max(100),
        "no more than the first batch past the limit"
    );

    // A partition limit of 2.5 batches: at most that much beyond the first batch.
    let limit = 25_000;
    let part = fetch(
        &mut conn,
        v.fetch,
        &topic,
        At {
            partition_max_bytes: limit,
            ..At::offset(0)
        },
    );
    let records = part.records.unwrap_or_default();
    let (whole, _) = batches(&records);
    assert!(
        records.len() <= limit as usize,
        "partition_max_bytes {limit}, got {}",
        records.len()
    );
    assert!(
        whole.len() >= 2,
        "two whole batches fit in {limit} bytes, got {}",
        whole.len()
    );
    assert_eq!(whole.iter().map(|b| b.0).collect::<Vec<_>>()[..2], [0, 1]);

    // The response-wide max_bytes limits the same way.
    let part = fetch(
        &mut conn,
        v.fetch,
        &topic,
        At {
            max_bytes: 100,
            ..At::offset(0)
        },
    );
    let (whole, _) = batches(&part.records.unwrap_or_default());
    assert!(
        !whole.is_empty() && whole[0].0 == 0,
        "max_bytes below one batch still returns it"
    );
    broker.assert_no_panic();
}

#[test]
fn fetch_from_inside_a_batch_returns_that_batch_whole() {
    let broker = Broker::start();
    let topic = unique_topic("mid-batch");
    let mut conn = KafkaConn::connect(broker.addr());
    ensure_topic(&mut conn, &topic);
    let v = versions(&mut conn);
    let values: Vec<Bytes> = (0..10).map(|i| Bytes::from(format!("r{i}"))).collect();
    let batch = record_batch(&values, Compression::Lz4); // one batch, offsets 0..=9
    assert_eq!(
        produce_one(&mut conn, v.produce, &topic, 0, batch).0,
        error_code::NONE
    );
    let part = fetch(&mut conn, v.fetch, &topic, At::offset(5));
    let (whole, _) = batches(&part.records.unwrap_or_default());
    assert_eq!(
        whole.first().map(|b| b.0),
        Some(0),
        "the batch holding offset 5 starts at 0"
    );
    broker.assert_no_panic();
}

#[test]
fn fetch_past_the_log_end_gets_offset_out_of_range() {
    let broker = Broker::start();
    let topic = unique_topic("out-of-range");
    let mut conn = KafkaConn::connect(broker.addr());
    ensure_topic(&mut conn, &topic);
    let v = versions(&mut conn);
    let batch = record_batch(&[Bytes::from_static(b"only")], Compression::None);
    assert_eq!(
        produce_one(&mut conn, v.produce, &topic, 0, batch).0,
        error_code::NONE
    );
    let part = fetch(
        &mut conn,
        v.fetch,
        &topic,
        At {
            max_wait_ms: 100,
            ..At::offset(50)
        },
    );
    assert_eq!(part.error_code, OFFSET_OUT_OF_RANGE);
    // At the log end exactly it is not an error: the fetch waits and returns nothing.
    let part = fetch(
        &mut conn,
        v.fetch,
        &topic,
        At {
            max_wait_ms: 100,
            ..At::offset(1)
        },
    );
    assert_eq!(part.error_code, error_code::NONE);
    assert!(part.records.unwrap_or_default().is_empty());
    assert_eq!(part.high_watermark, 1);
    broker.assert_no_panic();
}

#[test]
fn read_committed_fetch_reports_the_last_stable_offset() {
    let broker = Broker::start();
    let topic = unique_topic("lso");
    let mut conn = KafkaConn::connect(broker.addr());
    ensure_topic(&mut conn, &topic);
    let v = versions(&mut conn);
    for i in 0..3 {
        let batch = record_batch(&[Bytes::from(format!("c{i}"))], Compression::None);
        assert_eq!(
            produce_one(&mut conn, v.produce, &topic, 0, batch).0,
            error_code::NONE
        );
    }
    let part = fetch(
        &mut conn,
        v.fetch,
        &topic,
        At {
            isolation_level: 1,
            ..At::offset(0)
        },
    );
    assert_eq!(part.error_code, error_code::NONE);
    assert_eq!(part.high_watermark, 3);
    // No open transactions: everything is stable.
    assert_eq!(part.last_stable_offset, 3);
    let (whole, _) = batches(&part.records.unwrap_or_default());
    assert_eq!(whole.len(), 3);
    broker.assert_no_panic();
}

#[test]
fn fetch_with_nothing_to_return_answers_after_max_wait() {
    let broker = Broker::start();
    let topic = unique_topic("empty-wait");
    let mut conn = KafkaConn::connect(broker.addr());
    ensure_topic(&mut conn, &topic);
    let v = versions(&mut conn);
    // Answered at all (the read guard is 30 s); empty and error-free.
    let part = fetch(
        &mut conn,
        v.fetch,
        &topic,
        At {
            max_wait_ms: 200,
            ..At::offset(0)
        },
    );
    assert_eq!(part.error_code, error_code::NONE);
    assert!(part.records.unwrap_or_default().is_empty());
    assert_eq!(part.high_watermark, 0);
    broker.assert_no_panic();
}

#[test]
fn a_partition_named_twice_in_one_fetch_is_answered_once_where_first_named() {
    // Kafka keys a fetch by partition (a LinkedHashMap): a later mention replaces the
    // earlier one's offset and limits but keeps its place, and the response lists a topic
    // again only when its partitions are not consecutive.
    let b = Broker::start_with(&["--num-partitions", "2"]);
    let topic = unique_topic("fetch-dup");
    let mut conn = KafkaConn::connect(b.addr());
    ensure_topic(&mut conn, &topic);
    let v = versions(&mut conn);
    for i in 0..3 {
        let value = Bytes::from(format!("p0-{i}"));
        let (error, _) = produce_one(
            &mut conn,
            v.produce,
            &topic,
            0,
            record_batch(&[value], Compression::None),
        );
        assert_eq!(error, error_code::NONE);
    }
    let part = |partition: i32, offset: i64| {
        FetchPartition::default()
            .with_partition(partition)
            .with_fetch_offset(offset)
            .with_log_start_offset(-1)
            .with_partition_max_bytes(1 << 20)
    };
    let req = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(topic_name(&topic))
                .with_partitions(vec![part(0, 0), part(1, 0)]),
            FetchTopic::default()
                .with_topic(topic_name(&topic))
                .with_partitions(vec![part(0, 2)]),
        ]);
    let resp: FetchResponse = conn.request(v.fetch, &req);
    let listed: Vec<(String, Vec<i32>)> = resp
        .responses
        .iter()
        .map(|t| {
            (
                t.topic.to_string(),
                t.partitions.iter().map(|p| p.partition_index).collect(),
            )
        })
        .collect();
    assert_eq!(listed, vec![(topic.clone(), vec![0, 1])]);
    let p0 = &resp.responses[0].partitions[0];
    let (batches, _) = batches(p0.records.as_ref().expect("records"));
    let first_offsets: Vec<i64> = batches.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(
        first_offsets,
        vec![2],
        "partition 0 is read from the last offset named"
    );
}
