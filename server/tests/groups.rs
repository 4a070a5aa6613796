//! Consumer group APIs over a raw connection to a real broker: the KIP-394 handshake by
//! version, SyncGroup handing out the leader's exact bytes, heartbeat and commit errors,
//! batched FindCoordinator, multi-group OffsetFetch, commits stored in
//! `__consumer_offsets` in Kafka's own record format, and offsets surviving a restart.

mod common;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest,
    JoinGroupResponse, OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;
use wharf_protocol::offsets_topic::{partition_for_group, OffsetsRecord, OFFSETS_TOPIC_NAME};

use common::raw::{ensure_topic, pick_version, topic_name, KafkaConn};
use common::{unique_topic, Broker};

const MEMBER_ID_REQUIRED: i16 = 79;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn broker() -> Broker {
    Broker::start_with(&["--group-initial-rebalance-delay-ms", "0"])
}

fn join(conn: &mut KafkaConn, version: i16, group: &str, member_id: &str) -> JoinGroupResponse {
    let req = JoinGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(s(member_id))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(s("range"))
            .with_metadata(Bytes::from_static(b"sub"))]);
    conn.request(version, &req)
}

/// JoinGroup as a v4+ client does it: come back with the member id handed out.
fn join_as_new_member(conn: &mut KafkaConn, group: &str) -> JoinGroupResponse {
    let first = join(conn, 5, group, "");
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    join(conn, 5, group, first.member_id.as_str())
}

fn sync(
    conn: &mut KafkaConn,
    group: &str,
    member_id: &str,
    generation: i32,
    assignments: &[(&str, &'static [u8])],
) -> (i16, Bytes) {
    let req = SyncGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id(generation)
        .with_member_id(s(member_id))
        .with_assignments(
            assignments
                .iter()
                .map(|(m, a)| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id(s(m))
                        .with_assignment(Bytes::from_static(a))
                })
                .collect(),
        );
    let resp = conn.request(3, &req);
    (resp.error_code, resp.assignment)
}

fn heartbeat(conn: &mut KafkaConn, group: &str, member_id: &str, generation: i32) -> i16 {
    let req = HeartbeatRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_member_id(s(member_id))
        .with_generation_id(generation);
    conn.request(3, &req).error_code
}

fn commit(
    conn: &mut KafkaConn,
    group: &str,
    member_id: &str,
    generation: i32,
    topic: &str,
    offset: i64,
    metadata: &str,
) -> i16 {
    let req = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member_id))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(offset)
                .with_committed_leader_epoch(-1)
                .with_committed_metadata(Some(s(metadata)))])]);
    let resp = conn.request(8, &req);
    resp.topics[0].partitions[0].error_code
}

fn fetch_committed(conn: &mut KafkaConn, group: &str, topic: &str) -> (i64, String) {
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partition_indexes(vec![0])]));
    let resp = conn.request(7, &req);
    assert_eq!(resp.error_code, 0);
    let p = &resp.topics[0].partitions[0];
    (
        p.committed_offset,
        p.metadata
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
    )
}

#[test]
fn join_v3_joins_in_one_round_trip_and_v4_first_gets_a_member_id() {
    let b = broker();
    let mut conn = KafkaConn::connect(b.addr());
    let v3 = join(&mut conn, 3, "g-v3", "");
    assert_eq!(v3.error_code, 0);
    assert_eq!(v3.generation_id, 1);
    assert!(!v3.member_id.is_empty());
    assert_eq!(v3.leader, v3.member_id);

    let first = join(&mut conn, 4, "g-v4", "");
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    assert!(!first.member_id.is_empty());
    let second = join(&mut conn, 4, "g-v4", first.member_id.as_str());
    assert_eq!(second.error_code, 0);
    assert_eq!(second.member_id, first.member_id);
    assert_eq!(second.generation_id, 1);
    b.assert_no_panic();
}

#[test]
fn sync_returns_the_leaders_bytes_and_errors_are_kafkas() {
    let b = broker();
    let topic = unique_topic("grp");
    let mut conn = KafkaConn::connect(b.addr());
    ensure_topic(&mut conn, &topic);
    let j = join_as_new_member(&mut conn, "g-sync");
    let me = j.member_id.to_string();
    let (error, assignment) = sync(
        &mut conn,
        "g-sync",
        &me,
        1,
        &[(me.as_str(), b"\x00\x01exact")],
    );
    assert_eq!(error, 0);
    assert_eq!(&assignment[..], b"\x00\x01exact");
    assert_eq!(heartbeat(&mut conn, "g-sync", &me, 1), 0);
    assert_eq!(heartbeat(&mut conn, "g-sync", &me, 0), ILLEGAL_GENERATION);
    assert_eq!(
        heartbeat(&mut conn, "g-sync", "stranger", 1),
        UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        commit(&mut conn, "g-sync", &me, 0, &topic, 5, ""),
        ILLEGAL_GENERATION
    );
    assert_eq!(
        commit(&mut conn, "g-sync", "stranger", 1, &topic, 5, ""),
        UNKNOWN_MEMBER_ID
    );
    // A commit from the member keeps the group stable.
    assert_eq!(commit(&mut conn, "g-sync", &me, 1, &topic, 5, "meta"), 0);
    assert_eq!(heartbeat(&mut conn, "g-sync", &me, 1), 0);
    assert_eq!(
        fetch_committed(&mut conn, "g-sync", &topic),
        (5, "meta".to_string())
    );
    // A second member makes the first rejoin.
    let mut other = KafkaConn::connect(b.addr());
    let waiter = std::thread::spawn(move || {
        let r = join_as_new_member(&mut other, "g-sync");
        (r.error_code, r.generation_id)
    });
    let mut rejoin_needed = false;
    for _ in 0..100 {
        if heartbeat(&mut conn, "g-sync", &me, 1) == REBALANCE_IN_PROGRESS {
            rejoin_needed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(rejoin_needed, "the member is told to rejoin");
    let again = join(&mut conn, 5, "g-sync", &me);
    assert_eq!((again.error_code, again.generation_id), (0, 2));
    assert_eq!(waiter.join().expect("joiner thread"), (0, 2));
    b.assert_no_panic();
}

#[test]
fn batched_find_coordinator_names_this_node_for_every_group() {
    let b = broker();
    let mut conn = KafkaConn::connect(b.addr());
    let versions = conn.api_versions();
    let v = pick_version(&versions, ApiKey::FindCoordinator, 4, 5);
    let req = FindCoordinatorRequest::default()
        .with_key_type(0)
        .with_coordinator_keys(vec![s("a"), s("b")]);
    let resp = conn.request(v, &req);
    assert_eq!(resp.coordinators.len(), 2);
    for c in &resp.coordinators {
        assert_eq!(c.error_code, 0);
        assert_eq!(c.port, i32::from(b.addr().port()));
    }
    let old = conn.request(0, &FindCoordinatorRequest::default().with_key(s("a")));
    assert_eq!((old.error_code, old.port), (0, i32::from(b.addr().port())));
}

#[test]
fn simple_commits_land_in_consumer_offsets_in_kafkas_format_and_multi_group_fetch_returns_them() {
    let b = broker();
    let topic = unique_topic("grp");
    let mut conn = KafkaConn::connect(b.addr());
    ensure_topic(&mut conn, &topic);
    assert_eq!(commit(&mut conn, "burrow-a", "", -1, &topic, 11, "x"), 0);
    assert_eq!(commit(&mut conn, "burrow-b", "", -1, &topic, 22, ""), 0);

    let req = OffsetFetchRequest::default().with_groups(
        ["burrow-a", "burrow-b"]
            .iter()
            .map(|g| {
                OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(s(g)))
                    .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                        .with_name(topic_name(&topic))
                        .with_partition_indexes(vec![0])]))
            })
            .collect(),
    );
    let resp = conn.request(8, &req);
    let offsets: Vec<i64> = resp
        .groups
        .iter()
        .map(|g| g.topics[0].partitions[0].committed_offset)
        .collect();
    assert_eq!(offsets, vec![11, 22]);

    // What a lag monitor reading __consumer_offsets sees.
    let partition = partition_for_group("burrow-a", 50);
    let fetch = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(OFFSETS_TOPIC_NAME))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(0)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(1 << 20)])]);
    let resp = conn.request(12, &fetch);
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    let mut records = p.records.clone().expect("records");
    let mut found = None;
    while !records.is_empty() {
        let set = RecordBatchDecoder::decode(&mut records).expect("valid batches");
        for r in set.records {
            let key = r.key.expect("offsets records have keys");
            if let Ok(OffsetsRecord::OffsetCommit {
                group,
                topic: t,
                partition: 0,
                value: Some(v),
            }) = OffsetsRecord::decode(&key, r.value.as_deref())
            {
                if group == "burrow-a" && t == topic {
                    found = Some((v.offset, v.metadata, v.version));
                }
            }
        }
    }
    assert_eq!(found, Some((11, "x".to_string(), 3)));
    b.assert_no_panic();
}

#[test]
fn committed_offsets_survive_a_restart() {
    let mut b = broker();
    let topic = unique_topic("grp");
    {
        let mut conn = KafkaConn::connect(b.addr());
        ensure_topic(&mut conn, &topic);
        assert_eq!(commit(&mut conn, "durable", "", -1, &topic, 42, "kept"), 0);
    }
    b.restart();
    let mut conn = KafkaConn::connect(b.addr());
    let mut got = (-2, String::new());
    for _ in 0..100 {
        // COORDINATOR_LOAD_IN_PROGRESS is retried, as clients do.
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(s("durable")))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(topic_name(&topic))
                .with_partition_indexes(vec![0])]));
        let resp = conn.request(7, &req);
        if resp.error_code == 0 {
            let p = &resp.topics[0].partitions[0];
            got = (
                p.committed_offset,
                p.metadata
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            );
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(got, (42, "kept".to_string()));
    b.assert_no_panic();
}

fn log_start(conn: &mut KafkaConn, topic: &str, partition: i32) -> i64 {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::ListOffsetsRequest;
    let req = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(-2)])]);
    let resp = conn.request(4, &req);
    let p = &resp.topics[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.offset
}

#[test]
fn superseded_commits_are_compacted_away_and_the_last_one_survives_a_restart() {
    // Small offsets segments and a cleaner that looks often, so segments roll and are
    // cleaned while the test commits.
    let mut b = Broker::start_with_settings(
        "\"offsets.topic.segment.bytes\" = 1024\n\"log.cleaner.backoff.ms\" = 50\n",
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let metrics = b.metrics_addr();
    let topic = unique_topic("grp");
    let partition = partition_for_group("compact-me", 50);
    let series =
        |name: &str| format!("{name}{{topic=\"{OFFSETS_TOPIC_NAME}\",partition=\"{partition}\"}}");
    {
        let mut conn = KafkaConn::connect(b.addr());
        ensure_topic(&mut conn, &topic);
        // The first commit alone in the active segment (never cleaned) gives the size of
        // one; the cleaner runs while the rest are committed, so the partition's size after
        // them says nothing of what was written.
        assert_eq!(commit(&mut conn, "compact-me", "", -1, &topic, 0, "m"), 0);
        let one = common::http::must(
            &common::http::scrape(metrics),
            &series("wharf_partition_size_bytes"),
        );
        assert!(one > 0.0, "one commit takes space");
        for offset in 1..200 {
            assert_eq!(
                commit(&mut conn, "compact-me", "", -1, &topic, offset, "m"),
                0
            );
        }
        let written = one * 200.0;
        // Guard against a cleaner that never runs; not a timing assertion.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let body = common::http::scrape(metrics);
            let size = common::http::must(&body, &series("wharf_partition_size_bytes"));
            let runs = common::http::must(&body, &series("wharf_log_cleaner_runs_total"));
            if runs >= 1.0 && size * 4.0 < written {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{OFFSETS_TOPIC_NAME}-{partition} was not compacted: {size} bytes of \
                 {written} after {runs} cleaner runs"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // Compaction removes records, never offsets: the log still starts at 0.
        assert_eq!(log_start(&mut conn, OFFSETS_TOPIC_NAME, partition), 0);
    }
    b.restart();
    let mut conn = KafkaConn::connect(b.addr());
    let mut got = (-2, String::new());
    for _ in 0..100 {
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(s("compact-me")))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(topic_name(&topic))
                .with_partition_indexes(vec![0])]));
        let resp = conn.request(7, &req);
        if resp.error_code == 0 {
            let p = &resp.topics[0].partitions[0];
            got = (
                p.committed_offset,
                p.metadata
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            );
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(got, (199, "m".to_string()));
    b.assert_no_panic();
}
