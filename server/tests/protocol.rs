//! Wire-level behaviour clients depend on, checked byte for byte over a raw connection:
//! pipelined requests answered in order across shards, compressed batches stored and served
//! exactly as produced, a Fetch spanning every partition, and Fetch long polling.

mod common;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, FetchRequest, FetchResponse, MetadataRequest, ProduceRequest,
    ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, HeaderVersion};
use kafka_protocol::records::{Compression, RecordBatchDecoder};

use common::raw::{
    encode_request, ensure_topic, error_code, pick_version, produce_one, produce_request,
    record_batch, topic_name, KafkaConn, BATCH_ATTRIBUTES_OFFSET,
};
use common::{unique_topic, Broker};

fn fetch_request(topic: &str, partitions: &[(i32, i64)], max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(50 << 20)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(
                partitions
                    .iter()
                    .map(|(p, offset)| {
                        FetchPartition::default()
                            .with_partition(*p)
                            .with_fetch_offset(*offset)
                            .with_log_start_offset(-1)
                            .with_partition_max_bytes(10 << 20)
                    })
                    .collect(),
            )])
}

/// Records bytes per partition from a Fetch response, failing on any partition error.
fn fetched_records(resp: &FetchResponse) -> Vec<(i32, Bytes)> {
    assert_eq!(resp.error_code, error_code::NONE, "Fetch top-level error");
    let mut out = Vec::new();
    for t in &resp.responses {
        for p in &t.partitions {
            assert_eq!(
                p.error_code,
                error_code::NONE,
                "Fetch error on partition {}",
                p.partition_index
            );
            out.push((p.partition_index, p.records.clone().unwrap_or_default()));
        }
    }
    out
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes(b.try_into().expect("4 bytes"))
}

fn be_i64(b: &[u8]) -> i64 {
    i64::from_be_bytes(b.try_into().expect("8 bytes"))
}

/// Whole v2 batches in a records blob, by their length field.
fn split_batches(records: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 12 <= records.len() {
        let len = be_i32(&records[pos + 8..pos + 12]) as usize;
        if pos + 12 + len > records.len() {
            break; // a fetch may end with a partial batch
        }
        out.push(records.slice(pos..pos + 12 + len));
        pos += 12 + len;
    }
    out
}

/// The leader epoch Metadata reports for one partition.
fn leader_epoch(conn: &mut KafkaConn, topic: &str, partition: i32) -> i32 {
    let versions = conn.api_versions();
    let version = pick_version(&versions, ApiKey::Metadata, 7, 12); // leader_epoch from v7
    let req = MetadataRequest::default()
        .with_topics(Some(vec![
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(topic_name(topic))),
        ]))
        .with_allow_auto_topic_creation(false);
    let resp = conn.request(version, &req);
    resp.topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == partition)
        .map(|p| p.leader_epoch)
        .expect("partition in Metadata")
}

#[test]
fn compressed_batches_are_stored_and_served_as_produced() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let versions = conn.api_versions();
    let produce_v = pick_version(&versions, ApiKey::Produce, 3, 12);
    let fetch_v = pick_version(&versions, ApiKey::Fetch, 4, 12);
    for (codec, name) in [
        (Compression::None, "none"),
        (Compression::Gzip, "gzip"),
        (Compression::Snappy, "snappy"),
        (Compression::Lz4, "lz4"),
        (Compression::Zstd, "zstd"),
    ] {
        let topic = unique_topic(&format!("codec-{name}"));
        ensure_topic(&mut conn, &topic);
        let values: Vec<Bytes> = (0..50)
            .map(|i| Bytes::from(format!("{name} record {i} {}", "abc".repeat(20))))
            .collect();
        let sent = record_batch(&values, codec);
        let (code, base_offset) = produce_one(&mut conn, produce_v, &topic, 0, sent.clone());
        assert_eq!(code, error_code::NONE, "{name}: produce failed");
        assert_eq!(base_offset, 0);

        let resp = conn.request(fetch_v, &fetch_request(&topic, &[(0, 0)], 1000));
        let records = fetched_records(&resp);
        let (_, got) = records.first().expect("one partition");
        let epoch = leader_epoch(&mut conn, &topic, 0);
        let sent_batches = split_batches(&sent);
        assert_eq!(sent_batches.len(), 1, "{name}: the test sends one batch");
        let got_batches = split_batches(got);
        assert_eq!(
            got_batches.len(),
            sent_batches.len(),
            "{name}: number of batches served"
        );
        let mut next_offset = 0i64;
        for (i, (g, s)) in got_batches.iter().zip(&sent_batches).enumerate() {
            // Only baseOffset (0..8) and partitionLeaderEpoch (12..16) may be rewritten.
            assert!(
                g.len() == s.len() && g[8..12] == s[8..12],
                "{name}: batch {i} length changed"
            );
            assert!(
                g[16..] == s[16..],
                "{name}: batch {i}: bytes after the leader epoch changed"
            );
            assert_eq!(
                be_i64(&g[0..8]),
                next_offset,
                "{name}: batch {i} base offset"
            );
            next_offset += i64::from(be_i32(&g[57..61]));
            assert_eq!(
                be_i32(&g[12..16]),
                epoch,
                "{name}: batch {i} must carry the partition's leader epoch (as Metadata reports it)"
            );
            assert_eq!(
                g[BATCH_ATTRIBUTES_OFFSET + 1] & 0x07,
                codec as u8,
                "{name}: codec bits"
            );
        }
        let mut buf = got.clone();
        let decoded: Vec<_> = RecordBatchDecoder::decode_all(&mut buf)
            .expect("served batches decode")
            .into_iter()
            .flat_map(|set| set.records)
            .collect();
        let decoded_values: Vec<Bytes> = decoded
            .iter()
            .map(|r| r.value.clone().unwrap_or_default())
            .collect();
        assert!(decoded_values == values, "{name}: values differ");
        let offsets: Vec<i64> = decoded.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (0..50).collect::<Vec<i64>>(), "{name}: offsets");
    }
    broker.assert_no_panic();
}

#[test]
fn pipelined_requests_are_answered_in_request_order_across_shards() {
    let broker = Broker::start_with(&["--num-partitions", "16"]);
    let topic = unique_topic("pipeline");
    let mut conn = KafkaConn::connect(broker.addr());
    assert_eq!(ensure_topic(&mut conn, &topic), 16);
    let versions = conn.api_versions();
    let produce_v = pick_version(&versions, ApiKey::Produce, 3, 12);
    let metadata_v = pick_version(&versions, ApiKey::Metadata, 4, 12);

    // Write 48 requests in one go: produces to all 16 partitions (both shards) interleaved
    // with ApiVersions and Metadata, which a shard answers locally and at once.
    enum Kind {
        Produce(i32),
        ApiVersions,
        Metadata,
    }
    let mut wire = Vec::new();
    let mut sent = Vec::new();
    for i in 0..48i32 {
        let correlation_id = 1000 + i;
        let (kind, payload) = match i % 3 {
            0 => {
                let p = (i / 3) % 16;
                let batch =
                    record_batch(&[Bytes::from(format!("pipelined {i}"))], Compression::None);
                (
                    Kind::Produce(p),
                    encode_request(
                        correlation_id,
                        produce_v,
                        &produce_request(&topic, p, 1, batch),
                    ),
                )
            }
            1 => (
                Kind::ApiVersions,
                encode_request(correlation_id, 0, &ApiVersionsRequest::default()),
            ),
            _ => (
                Kind::Metadata,
                encode_request(correlation_id, metadata_v, &MetadataRequest::default()),
            ),
        };
        wire.extend_from_slice(&(payload.len() as i32).to_be_bytes());
        wire.extend_from_slice(&payload);
        sent.push((correlation_id, kind));
    }
    conn.write_raw(&wire).expect("write");

    for (correlation_id, kind) in sent {
        let mut frame = conn.read_frame();
        let version = match kind {
            Kind::Produce(_) => produce_v,
            Kind::ApiVersions => 0,
            Kind::Metadata => metadata_v,
        };
        let header_version = match kind {
            Kind::Produce(_) => {
                <ProduceRequest as kafka_protocol::protocol::Request>::Response::header_version(
                    version,
                )
            }
            Kind::ApiVersions => 0,
            Kind::Metadata => {
                <MetadataRequest as kafka_protocol::protocol::Request>::Response::header_version(
                    version,
                )
            }
        };
        let header = ResponseHeader::decode(&mut frame, header_version).expect("response header");
        assert_eq!(
            header.correlation_id, correlation_id,
            "responses must leave in request order"
        );
        if let Kind::Produce(p) = kind {
            let resp = kafka_protocol::messages::ProduceResponse::decode(&mut frame, version)
                .expect("produce response");
            let part = &resp.responses[0].partition_responses[0];
            assert_eq!(part.index, p);
            assert_eq!(
                part.error_code,
                error_code::NONE,
                "produce to partition {p}"
            );
        }
    }
    broker.assert_no_panic();
}

#[test]
fn one_fetch_spanning_every_partition_gathers_from_both_shards() {
    let broker = Broker::start_with(&["--num-partitions", "16"]);
    let topic = unique_topic("fanout");
    let mut conn = KafkaConn::connect(broker.addr());
    assert_eq!(ensure_topic(&mut conn, &topic), 16);
    let versions = conn.api_versions();
    let produce_v = pick_version(&versions, ApiKey::Produce, 3, 12);
    let fetch_v = pick_version(&versions, ApiKey::Fetch, 4, 12);
    for p in 0..16 {
        for n in 0..3 {
            let batch = record_batch(&[Bytes::from(format!("p{p} n{n}"))], Compression::None);
            let (code, base_offset) = produce_one(&mut conn, produce_v, &topic, p, batch);
            assert_eq!((code, base_offset), (error_code::NONE, n), "partition {p}");
        }
    }
    let all: Vec<(i32, i64)> = (0..16).map(|p| (p, 0)).collect();
    let resp = conn.request(fetch_v, &fetch_request(&topic, &all, 1000));
    let records = fetched_records(&resp);
    assert_eq!(records.len(), 16, "every requested partition is answered");
    for t in &resp.responses {
        for p in &t.partitions {
            assert_eq!(p.high_watermark, 3, "partition {}", p.partition_index);
        }
    }
    for (p, bytes) in records {
        let mut buf = bytes;
        let sets = RecordBatchDecoder::decode_all(&mut buf).expect("batches decode");
        let values: Vec<String> = sets
            .iter()
            .flat_map(|s| s.records.iter())
            .map(|r| String::from_utf8_lossy(&r.value.clone().unwrap_or_default()).into_owned())
            .collect();
        assert_eq!(
            values,
            (0..3).map(|n| format!("p{p} n{n}")).collect::<Vec<_>>(),
            "partition {p}"
        );
    }
    broker.assert_no_panic();
}

#[test]
fn fetch_at_the_log_end_waits_for_new_data() {
    let broker = Broker::start();
    let topic = unique_topic("long-poll");
    let mut conn = KafkaConn::connect(broker.addr());
    ensure_topic(&mut conn, &topic);
    let versions = conn.api_versions();
    let produce_v = pick_version(&versions, ApiKey::Produce, 3, 12);
    let fetch_v = pick_version(&versions, ApiKey::Fetch, 4, 12);

    // A long poll far longer than the test needs: Kafka holds it until min_bytes arrive.
    let correlation_id = conn.send(fetch_v, &fetch_request(&topic, &[(0, 0)], 25_000));
    let mut producer = KafkaConn::connect(broker.addr());
    let (code, _) = produce_one(
        &mut producer,
        produce_v,
        &topic,
        0,
        record_batch(&[Bytes::from_static(b"wake up")], Compression::None),
    );
    assert_eq!(code, error_code::NONE);
    let resp = conn.receive::<FetchRequest>(fetch_v, correlation_id);
    let records = fetched_records(&resp);
    let mut buf = records[0].1.clone();
    let set = RecordBatchDecoder::decode(&mut buf).expect("a batch came back");
    assert_eq!(set.records[0].value.as_deref(), Some(&b"wake up"[..]));
    broker.assert_no_panic();
}

fn metadata_brokers_and_leaders(
    conn: &mut KafkaConn,
    topic: &str,
) -> (Vec<(i32, String, i32)>, Vec<i32>) {
    let versions = conn.api_versions();
    let version = pick_version(&versions, ApiKey::Metadata, 4, 12);
    let req = MetadataRequest::default()
        .with_topics(Some(vec![
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(topic_name(topic))),
        ]))
        .with_allow_auto_topic_creation(true);
    let resp = conn.request(version, &req);
    let brokers = resp
        .brokers
        .iter()
        .map(|b| (b.node_id.0, b.host.as_str().to_string(), b.port))
        .collect();
    let leaders = resp
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.leader_id.0))
        .collect();
    (brokers, leaders)
}

#[test]
fn metadata_advertises_the_bound_port_and_node_id_1_by_default() {
    let broker = Broker::start();
    let topic = unique_topic("md-default");
    let mut conn = KafkaConn::connect(broker.addr());
    ensure_topic(&mut conn, &topic);
    let (brokers, leaders) = metadata_brokers_and_leaders(&mut conn, &topic);
    assert_eq!(
        brokers,
        vec![(1, "127.0.0.1".to_string(), i32::from(broker.addr().port()))]
    );
    assert!(
        !leaders.is_empty() && leaders.iter().all(|l| *l == 1),
        "leaders {leaders:?}"
    );
}

#[test]
fn metadata_advertises_the_configured_listener_and_node_id() {
    let broker =
        Broker::start_with(&["--advertised-listener", "localhost:19092", "--node-id", "7"]);
    let topic = unique_topic("md-advertised");
    let mut conn = KafkaConn::connect(broker.addr());
    ensure_topic(&mut conn, &topic);
    let (brokers, leaders) = metadata_brokers_and_leaders(&mut conn, &topic);
    assert_eq!(brokers, vec![(7, "localhost".to_string(), 19092)]);
    assert!(
        !leaders.is_empty() && leaders.iter().all(|l| *l == 7),
        "leaders {leaders:?}"
    );
}
