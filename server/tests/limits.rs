//! Lengths and strings from the wire past Kafka's own limits: each request is answered with
//! Kafka's error code for the field (or its connection is closed), the broker never stops,
//! and a well-behaved client is served afterwards.

mod common;

use bytes::Bytes;
use kafka_protocol::messages::alter_configs_request::AlterConfigsResource as AlterConfigsRequestResource;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    AlterConfigsRequest, ApiKey, ConsumerGroupHeartbeatRequest, CreatePartitionsRequest,
    CreateTopicsRequest, DescribeConfigsRequest, DescribeGroupsRequest, DescribeLogDirsRequest,
    GroupId, IncrementalAlterConfigsRequest, JoinGroupRequest, MetadataRequest,
    OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use common::raw::{ensure_topic, error_code, topic_name, KafkaConn};
use common::{unique_topic, Broker};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn broker() -> Broker {
    Broker::start_with(&["--group-initial-rebalance-delay-ms", "0"])
}

/// The broker is alive, has not panicked, and answers a fresh connection.
fn assert_still_serving(broker: &mut Broker) {
    assert!(
        broker.is_running(),
        "the broker exited; stderr:\n{}",
        broker.stderr()
    );
    let versions = KafkaConn::connect(broker.addr()).api_versions();
    assert!(versions.contains_key(&(ApiKey::Metadata as i16)));
    broker.assert_no_panic();
}

fn commit_v8(conn: &mut KafkaConn, group: &str, topic: &str, offset: i64) -> i16 {
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
    let resp = conn.request(8, &req);
    resp.topics[0].partitions[0].error_code
}

#[test]
fn offset_commit_with_a_group_id_longer_than_kafka_can_store_is_refused() {
    let mut broker = broker();
    let topic = unique_topic("long-group");
    let mut conn = KafkaConn::connect(broker.addr());
    ensure_topic(&mut conn, &topic);

    // OffsetCommit v8 is flexible: its compact string carries 40,000 bytes, more than the
    // 16-bit length of the `__consumer_offsets` key can hold.
    let long_group = "g".repeat(40_000);
    assert_eq!(
        commit_v8(&mut conn, &long_group, &topic, 5),
        error_code::INVALID_GROUP_ID
    );

    // The longest group id the key can hold is stored like any other.
    let longest = "h".repeat(32_767);
    assert_eq!(commit_v8(&mut conn, &longest, &topic, 6), error_code::NONE);
    assert_eq!(commit_v8(&mut conn, "plain", &topic, 7), error_code::NONE);
    assert_still_serving(&mut broker);
}

fn join_request(group: &str, member_id: &str) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(s(member_id))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(s("range"))
            .with_metadata(Bytes::from_static(b"sub"))])
}

fn join_v6(conn: &mut KafkaConn, group: &str, member_id: &str) -> (i16, String, i32) {
    let resp = conn.request(6, &join_request(group, member_id));
    (
        resp.error_code,
        resp.member_id.to_string(),
        resp.generation_id,
    )
}

#[test]
fn a_client_id_of_the_longest_legal_length_joins_and_syncs_a_group() {
    let mut broker = broker();
    let mut conn = KafkaConn::connect(broker.addr());
    // The request header's client id is a 16-bit string even in flexible versions.
    conn.set_client_id(&"c".repeat(i16::MAX as usize));
    let group = unique_topic("long-client");

    let (error, member_id, _) = join_v6(&mut conn, &group, "");
    assert_eq!(error, error_code::MEMBER_ID_REQUIRED);
    let (error, joined_id, generation) = join_v6(&mut conn, &group, &member_id);
    assert_eq!(error, error_code::NONE);
    assert_eq!(joined_id, member_id);

    let req = SyncGroupRequest::default()
        .with_group_id(GroupId(s(&group)))
        .with_generation_id(generation)
        .with_member_id(s(&member_id))
        .with_assignments(vec![SyncGroupRequestAssignment::default()
            .with_member_id(s(&member_id))
            .with_assignment(Bytes::from_static(b"mine"))]);
    let resp = conn.request(4, &req);
    assert_eq!(resp.error_code, error_code::NONE);
    assert_eq!(&resp.assignment[..], b"mine");
    // Kafka names a member `client id-UUID`; the id must still fit a 16-bit string.
    assert!(member_id.len() <= i16::MAX as usize, "{}", member_id.len());
    assert_still_serving(&mut broker);
}

#[test]
fn join_group_fields_past_their_limits_get_kafkas_errors() {
    let mut broker = broker();
    let mut conn = KafkaConn::connect(broker.addr());
    let too_long = "x".repeat(40_000);

    let resp = conn.request(6, &join_request(&too_long, ""));
    assert_eq!(resp.error_code, error_code::INVALID_GROUP_ID);

    let req = join_request("g1", "").with_group_instance_id(Some(s(&too_long)));
    assert_eq!(
        conn.request(6, &req).error_code,
        error_code::INVALID_REQUEST
    );

    // More than a megabyte of subscription metadata for one member.
    let req = join_request("g1", "").with_protocols(vec![JoinGroupRequestProtocol::default()
        .with_name(s("range"))
        .with_metadata(Bytes::from(vec![1u8; 1_100_000]))]);
    assert_eq!(
        conn.request(6, &req).error_code,
        error_code::INVALID_REQUEST
    );

    let (error, _, _) = join_v6(&mut conn, "g1", "");
    assert_eq!(error, error_code::MEMBER_ID_REQUIRED);
    assert_still_serving(&mut broker);
}

#[test]
fn a_consumer_group_subscription_must_name_legal_topics() {
    let mut broker = broker();
    let mut conn = KafkaConn::connect(broker.addr());
    let heartbeat = |topic: &str| {
        ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(s("kip848")))
            .with_member_id(s("m1"))
            .with_member_epoch(0)
            .with_rebalance_timeout_ms(5000)
            .with_subscribed_topic_names(Some(vec![TopicName(s(topic))]))
            .with_topic_partitions(Some(vec![]))
    };
    let resp = conn.request(0, &heartbeat(&"t".repeat(250)));
    assert_eq!(resp.error_code, error_code::INVALID_TOPIC_EXCEPTION);
    let resp = conn.request(0, &heartbeat("no spaces allowed"));
    assert_eq!(resp.error_code, error_code::INVALID_TOPIC_EXCEPTION);
    let resp = conn.request(0, &heartbeat("events"));
    assert_eq!(resp.error_code, error_code::NONE);
    assert_still_serving(&mut broker);
}

#[test]
fn errors_quoting_a_long_name_are_cut_to_fit_the_response() {
    let mut broker = broker();
    let topic = unique_topic("configs");
    let mut conn = KafkaConn::connect(broker.addr());
    ensure_topic(&mut conn, &topic);
    let longest = "n".repeat(i16::MAX as usize);

    // IncrementalAlterConfigs v0 carries the message in a 16-bit string: quoting a config
    // name of 32,767 bytes in full would not fit, and the broker must still answer.
    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(s(&topic))
            .with_configs(vec![AlterableConfig::default()
                .with_name(s(&longest))
                .with_config_operation(0)
                .with_value(Some(s("1")))]),
    ]);
    let resp = conn.request(0, &req);
    assert_eq!(resp.responses[0].error_code, 40, "INVALID_CONFIG");
    let message = resp.responses[0].error_message.as_deref().unwrap_or("");
    assert!(
        message.starts_with("Unknown topic config name: nnn"),
        "{message}"
    );
    assert!(message.len() <= 1024, "{} bytes", message.len());

    // DescribeConfigs v1 for a topic whose name is as long as the field allows.
    let req =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(s(&longest))]);
    let resp = conn.request(1, &req);
    assert_eq!(
        resp.results[0].error_code,
        error_code::UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_still_serving(&mut broker);
}

#[test]
fn partitions_past_max_broker_partitions_are_a_policy_violation() {
    const POLICY_VIOLATION: i16 = 44;
    let mut broker = Broker::start_with_settings(
        "max.broker.partitions = 10\n",
        &["--group-initial-rebalance-delay-ms", "0"],
    );
    let mut conn = KafkaConn::connect(broker.addr());
    let create = |name: &str, partitions: i32| {
        CreateTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(name))
                .with_num_partitions(partitions)
                .with_replication_factor(1)])
    };
    let resp = conn.request(5, &create("eight", 8));
    assert_eq!(resp.topics[0].error_code, error_code::NONE);
    let resp = conn.request(5, &create("four", 4));
    assert_eq!(resp.topics[0].error_code, POLICY_VIOLATION);
    let message = resp.topics[0].error_message.as_deref().unwrap_or("");
    assert!(message.contains("max.broker.partitions"), "{message}");
    let grow = CreatePartitionsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![CreatePartitionsTopic::default()
            .with_name(topic_name("eight"))
            .with_count(11)]);
    let resp = conn.request(1, &grow);
    assert_eq!(resp.results[0].error_code, POLICY_VIOLATION);
    let resp = conn.request(5, &create("two", 2));
    assert_eq!(resp.topics[0].error_code, error_code::NONE);

    // The internal __consumer_offsets (50 partitions) is still created for a group.
    assert_eq!(commit_v8(&mut conn, "g", "eight", 1), error_code::NONE);
    assert_still_serving(&mut broker);
}

#[test]
fn a_request_naming_the_same_state_many_times_lists_it_once() {
    let mut broker = broker();
    let topic = unique_topic("named-often");
    let mut conn = KafkaConn::connect(broker.addr());
    ensure_topic(&mut conn, &topic);

    // Metadata: a set of topics in Kafka.
    let req = MetadataRequest::default().with_topics(Some(
        (0..10_000)
            .map(|_| MetadataRequestTopic::default().with_name(Some(topic_name(&topic))))
            .collect(),
    ));
    let resp = conn.request(12, &req);
    assert_eq!(resp.topics.len(), 1);

    // DescribeConfigs: thirty configs listed once, not ten thousand times.
    let resource = DescribeConfigsResource::default()
        .with_resource_type(2)
        .with_resource_name(s(&topic));
    let req = DescribeConfigsRequest::default().with_resources(vec![resource; 10_000]);
    let resp = conn.request(4, &req);
    assert_eq!(resp.results.len(), 1);
    assert!(resp.results[0].configs.len() > 10);

    // OffsetFetch: a committed offset with 4 KiB of metadata, asked for 100,000 times.
    let metadata = "m".repeat(4096);
    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(s("often")))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(s(""))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(topic_name(&topic))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(7)
                .with_committed_metadata(Some(s(&metadata)))])]);
    let resp = conn.request(8, &commit);
    assert_eq!(resp.topics[0].partitions[0].error_code, error_code::NONE);
    let asked = OffsetFetchRequestTopic::default()
        .with_name(topic_name(&topic))
        .with_partition_indexes(vec![0; 50_000]);
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(s("often")))
        .with_topics(Some(vec![asked.clone(), asked]));
    let resp = conn.request(7, &req);
    assert_eq!(resp.topics.len(), 1);
    assert_eq!(resp.topics[0].partitions.len(), 1);
    assert_eq!(resp.topics[0].partitions[0].committed_offset, 7);
    let group = OffsetFetchRequestGroup::default()
        .with_group_id(GroupId(s("often")))
        .with_topics(None);
    let req = OffsetFetchRequest::default().with_groups(vec![group; 1_000]);
    let resp = conn.request(8, &req);
    assert_eq!(resp.groups.len(), 1);

    // DescribeGroups: a group's members are its state too.
    let req = DescribeGroupsRequest::default().with_groups(vec![GroupId(s("often")); 1_000]);
    let resp = conn.request(5, &req);
    assert_eq!(resp.groups.len(), 1);

    // DescribeLogDirs: a set of partitions, grouped by topic, as in Kafka.
    let asked = DescribableLogDirTopic::default()
        .with_topic(topic_name(&topic))
        .with_partitions(vec![0; 100_000]);
    let req = DescribeLogDirsRequest::default().with_topics(Some(vec![asked.clone(), asked]));
    let resp = conn.request(4, &req);
    let topics = &resp.results[0].topics;
    assert_eq!(topics.len(), 1);
    assert_eq!(topics[0].partitions.len(), 1);
    assert_still_serving(&mut broker);
}

#[test]
fn duplicate_checks_over_hundreds_of_thousands_of_resources_answer_each() {
    // Each of these checks every resource against the others for duplicates; done pairwise
    // that is 10^10 comparisons, a shard stalled for minutes by one request.
    const COUNT: usize = 100_000;
    let mut broker = broker();
    let mut conn = KafkaConn::connect(broker.addr());
    let names: Vec<String> = (0..COUNT).map(|i| format!("absent-{i}")).collect();

    let req = AlterConfigsRequest::default().with_resources(
        names
            .iter()
            .map(|n| {
                AlterConfigsRequestResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s(n))
            })
            .collect(),
    );
    let resp = conn.request(1, &req);
    assert_eq!(resp.responses.len(), COUNT);
    assert!(resp
        .responses
        .iter()
        .all(|r| r.error_code == error_code::UNKNOWN_TOPIC_OR_PARTITION));

    let req = IncrementalAlterConfigsRequest::default().with_resources(
        names
            .iter()
            .map(|n| {
                AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s(n))
            })
            .collect(),
    );
    let resp = conn.request(1, &req);
    assert_eq!(resp.responses.len(), COUNT);

    let req = CreatePartitionsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(
            names
                .iter()
                .map(|n| {
                    CreatePartitionsTopic::default()
                        .with_name(topic_name(n))
                        .with_count(2)
                })
                .collect(),
        );
    let resp = conn.request(1, &req);
    assert_eq!(resp.results.len(), COUNT);
    assert_still_serving(&mut broker);
}

#[test]
fn config_values_longer_than_any_config_takes_are_invalid() {
    const INVALID_CONFIG: i16 = 40;
    let mut broker = broker();
    let topic = unique_topic("long-values");
    let mut conn = KafkaConn::connect(broker.addr());
    ensure_topic(&mut conn, &topic);
    let alter = |name: &str, operation: i8, value: String| {
        IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s(&topic))
                .with_configs(vec![AlterableConfig::default()
                    .with_name(s(name))
                    .with_config_operation(operation)
                    .with_value(Some(s(&value)))]),
        ])
    };
    // A DOUBLE is kept as written: a megabyte of zeros would be a megabyte in the metadata.
    let long_ratio = format!("0.5{}", "0".repeat(1 << 20));
    let resp = conn.request(1, &alter("min.cleanable.dirty.ratio", 0, long_ratio));
    assert_eq!(resp.responses[0].error_code, INVALID_CONFIG);
    // APPEND of a million list items.
    let many = "compact,".repeat(1_000_000);
    let resp = conn.request(1, &alter("cleanup.policy", 2, many));
    assert_eq!(resp.responses[0].error_code, INVALID_CONFIG);
    // Normal values still work.
    let resp = conn.request(1, &alter("min.cleanable.dirty.ratio", 0, "0.25".into()));
    assert_eq!(resp.responses[0].error_code, error_code::NONE);
    let resp = conn.request(1, &alter("cleanup.policy", 2, "compact".into()));
    assert_eq!(resp.responses[0].error_code, error_code::NONE);
    assert_still_serving(&mut broker);
}
