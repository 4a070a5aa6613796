//! The Prometheus endpoint of a real broker: after records are produced (raw Produce
//! requests), consumed (librdkafka) and committed for a group, a scrape over plain TCP
//! reports the requests, the partition's offsets and the group's lag; unknown paths get
//! 404, and garbage on the metrics port harms neither the broker nor later scrapes.

mod common;

use bytes::Bytes;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{ApiKey, GroupId, OffsetCommitRequest};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;

use common::http::{http, must, scrape};
use common::raw::{ensure_topic, pick_version, produce_one, record_batch, topic_name, KafkaConn};
use common::{client, unique_topic, Broker};

fn commit(conn: &mut KafkaConn, group: &str, topic: &str, offset: i64) -> i16 {
    let s = |v: &str| StrBytes::from_string(v.to_string());
    let req = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(s(""))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(offset)
                .with_committed_leader_epoch(-1)])]);
    conn.request(8, &req).topics[0].partitions[0].error_code
}

fn values(n: usize) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from(format!("record-{i}"))).collect()
}

#[test]
fn a_scrape_reports_requests_offsets_and_lag_and_survives_garbage() {
    let broker = Broker::start_with(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--group-initial-rebalance-delay-ms",
        "0",
    ]);
    let metrics = broker.metrics_addr();
    let topic = unique_topic("metrics");
    let mut conn = KafkaConn::connect(broker.addr());
    assert_eq!(ensure_topic(&mut conn, &topic), 1);
    let version = pick_version(&conn.api_versions(), ApiKey::Produce, 3, 9);

    // Four produce requests of 1..=4 records: ten records at offsets 0..10.
    let mut produced = 0i64;
    for n in 1..=4 {
        let (error, base) = produce_one(
            &mut conn,
            version,
            &topic,
            0,
            record_batch(&values(n), Compression::None),
        );
        assert_eq!((error, base), (0, produced));
        produced += n as i64;
    }
    let read = client::read_all(&broker.bootstrap(), &topic);
    assert_eq!(read[&0].len() as i64, produced);
    let committed = 4;
    assert_eq!(commit(&mut conn, "metrics-group", &topic, committed), 0);

    let body = scrape(metrics);
    let produce_requests = must(&body, "wharf_requests_total{api=\"Produce\"}");
    assert!(produce_requests >= 4.0, "{produce_requests}");
    assert!(must(&body, "wharf_requests_total{api=\"Fetch\"}") >= 1.0);
    assert!(must(&body, "wharf_requests_total{api=\"OffsetCommit\"}") >= 1.0);
    assert_eq!(
        must(&body, "wharf_request_errors_total{api=\"Produce\"}"),
        0.0
    );
    assert!(must(&body, "wharf_request_bytes_total") > 0.0);
    assert!(must(&body, "wharf_response_bytes_total") > 0.0);
    assert!(must(&body, "wharf_open_connections") >= 1.0);
    assert_eq!(must(&body, "wharf_shards"), 2.0);
    // Every Produce fans out to the owning shard as a typed call; the metadata image
    // reached both shards as one each.
    assert!(must(&body, "wharf_shard_calls_total{call=\"Produce\"}") >= 4.0);
    assert!(must(&body, "wharf_shard_calls_total{call=\"ApplyMetadata\"}") >= 2.0);
    assert!(body.contains("wharf_shard_calls_total{call=\"AlterPartitions\"} "));
    assert!(body.contains("# TYPE wharf_request_latency_seconds histogram\n"));
    assert!(body.contains(&format!(
        "wharf_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    )));

    let partition = format!("topic=\"{topic}\",partition=\"0\"");
    assert_eq!(
        must(
            &body,
            &format!("wharf_partition_log_end_offset{{{partition}}}")
        ),
        produced as f64
    );
    assert_eq!(
        must(
            &body,
            &format!("wharf_partition_log_start_offset{{{partition}}}")
        ),
        0.0
    );
    assert!(must(&body, &format!("wharf_partition_size_bytes{{{partition}}}")) > 0.0);
    let group = format!("group=\"metrics-group\",{partition}");
    assert_eq!(
        must(&body, &format!("wharf_group_committed_offset{{{group}}}")),
        committed as f64
    );
    assert_eq!(
        must(&body, &format!("wharf_group_lag_records{{{group}}}")),
        (produced - committed) as f64
    );
    assert_eq!(
        must(&body, "wharf_group_members{group=\"metrics-group\"}"),
        0.0
    );

    // Produce's latency histogram: cumulative buckets ending with +Inf == _count.
    let buckets: Vec<(String, f64)> = body
        .lines()
        .filter_map(|l| {
            l.strip_prefix("wharf_request_latency_seconds_bucket{api=\"Produce\",le=\"")
        })
        .map(|rest| {
            let (le, v) = rest.split_once("\"} ").expect("a bucket line");
            (le.to_string(), v.parse().expect("a count"))
        })
        .collect();
    assert!(buckets.len() > 2, "{buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "not cumulative: {buckets:?}"
    );
    let (last_le, last) = buckets.last().expect("buckets").clone();
    assert_eq!(last_le, "+Inf");
    assert_eq!(
        last,
        must(
            &body,
            "wharf_request_latency_seconds_count{api=\"Produce\"}"
        )
    );
    assert!(last >= 4.0);

    // Other paths and methods, and garbage.
    let (status, _, _) = http(metrics, b"GET /nope HTTP/1.1\r\n\r\n").expect("answered");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _, _) = http(metrics, b"POST /metrics HTTP/1.1\r\n\r\n").expect("answered");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    for garbage in [
        b"\x00\x01\x02 not http at all\r\n\r\n".to_vec(),
        vec![b'A'; 64 * 1024],
        Vec::new(),
    ] {
        if let Some((status, _, _)) = http(metrics, &garbage) {
            assert_eq!(status, "HTTP/1.1 400 Bad Request");
        }
    }

    // The broker still serves Kafka and metrics, and counted the new request.
    let (error, base) = produce_one(
        &mut conn,
        version,
        &topic,
        0,
        record_batch(&values(1), Compression::None),
    );
    assert_eq!((error, base), (0, produced));
    let body = scrape(metrics);
    assert!(must(&body, "wharf_requests_total{api=\"Produce\"}") >= produce_requests + 1.0);
    assert_eq!(
        must(
            &body,
            &format!("wharf_partition_log_end_offset{{{partition}}}")
        ),
        (produced + 1) as f64
    );
    broker.assert_no_panic();
}
