//! The requests mutations start from: for every API and version the broker advertises (read
//! from the router's `ROUTES`, so new versions are fuzzed as soon as they are routed), valid
//! bodies naming the topics, groups and producers the fuzzer sets up first (a
//! transactional producer among them, so the transaction APIs start from requests its
//! coordinator accepts).
//!
//! Each API has a few candidate requests (fields differ between version eras); a version
//! gets every candidate that encodes at it. The versions `kafka-protocol` no longer knows
//! (those Kafka 3.9 served below Kafka 4.0's floor) are written by hand from Kafka 3.9's
//! schemas, message sets of format v0/v1 included. A routed version without a seed stops
//! the fuzzer at once: every served version is fuzzed from real requests.
//!
//! The records cover the conversion paths: plain and compressed batches (gzip, snappy, lz4,
//! zstd) and message sets (plain and in compressed wrappers) into a topic stored as sent
//! and into one whose `compression.type` and `cleanup.policy=compact` make the broker
//! decompress, check keys (KIP-467) and recompress; Fetch v0-3 converts them back down.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::alter_configs_request::{
    AlterConfigsResource as AlterConfigsRequestResource, AlterableConfig as AlterConfigsEntry,
};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use wharf_protocol::batch::{BatchBuilder, Compression as Codec};
use wharf_protocol::compression::Levels;
use wharf_protocol::message_set::{write_message, write_wrapper};
use wharf_server::kafka::router::ROUTES;

/// The topic most requests name; created by the setup requests.
pub const TOPIC: &str = "fuzz-a";
/// A second topic, for CreatePartitions and DeleteTopics.
pub const OTHER_TOPIC: &str = "fuzz-b";
/// A topic whose records the broker converts: `compression.type=lz4` (recompression) and
/// `cleanup.policy=compact` (KIP-467 key checks).
pub const CONVERTED_TOPIC: &str = "fuzz-z";
pub const GROUP: &str = "fuzz-group";

/// The setup's topics by name with their ids (KIP-516), for the versions that name topics
/// by id; empty before the topics exist.
pub type TopicIds = std::collections::HashMap<String, uuid::Uuid>;

/// The transactional id the transaction requests name; the setup makes its producer.
pub const TRANSACTIONAL_ID: &str = "fuzz-txn";

/// The setup's transactional producer (its id and epoch), so that the transaction
/// requests start from ones the coordinator accepts and reach its deeper paths.
#[derive(Clone, Copy, Debug)]
pub struct Producer {
    pub producer_id: i64,
    pub producer_epoch: i16,
}

impl Default for Producer {
    fn default() -> Self {
        Producer {
            producer_id: -1,
            producer_epoch: -1,
        }
    }
}

/// One (API, version) and the bodies that start its mutations.
pub struct Seeds {
    pub api_key: ApiKey,
    pub version: i16,
    pub bodies: Vec<Bytes>,
}

type Candidate = Box<dyn Fn(i16) -> Option<Bytes>>;

fn candidate<R: Encodable + 'static>(request: R) -> Candidate {
    Box::new(move |version| {
        let mut buf = BytesMut::new();
        request.encode(&mut buf, version).ok()?;
        Some(buf.freeze())
    })
}

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

fn topic(name: &str) -> TopicName {
    TopicName(s(name))
}

/// One valid v2 record batch; `producer_id` -1 for a plain producer.
pub fn record_batch(values: &[&[u8]], producer_id: i64) -> Bytes {
    record_batch_in(values, producer_id, Compression::None, true)
}

/// One valid v2 record batch in `compression`, with keys or without.
pub fn record_batch_in(
    values: &[&[u8]],
    producer_id: i64,
    compression: Compression,
    keyed: bool,
) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: if producer_id >= 0 { 0 } else { -1 },
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: if producer_id >= 0 {
                i as i32
            } else {
                i as i32 - 1
            },
            timestamp: 1_700_000_000_000,
            key: keyed.then(|| Bytes::from_static(b"key")),
            value: Some(Bytes::copy_from_slice(v)),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("a record batch encodes");
    buf.freeze()
}

fn subscription() -> Bytes {
    let sub = ConsumerProtocolSubscription::default().with_topics(vec![s(TOPIC)]);
    let mut buf = BytesMut::new();
    buf.put_i16(1);
    sub.encode(&mut buf, 1).expect("a subscription encodes");
    buf.freeze()
}

fn produce(acks: i16, records: Bytes) -> ProduceRequest {
    produce_to(TOPIC, acks, records)
}

fn produce_to(name: &str, acks: i16, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(1000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic(name))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])])
}

/// Batches in every codec, keyed and not, for the topic whose records are converted.
fn converted_batches() -> Vec<Bytes> {
    let codecs = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];
    let mut out: Vec<Bytes> = codecs
        .iter()
        .map(|c| record_batch_in(&[b"alpha", b"beta", b"gamma"], -1, *c, true))
        .collect();
    out.push(record_batch_in(&[b"no key"], -1, Compression::Gzip, false));
    out
}

/// The candidate requests of one API.
fn candidates(api_key: ApiKey, ids: &TopicIds, producer: Producer) -> Vec<Candidate> {
    let id = |name: &str| ids.get(name).copied().unwrap_or_default();
    let fetch = |max_wait_ms: i32, min_bytes: i32, max_bytes: i32, named: &[(&str, i32)]| {
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(min_bytes)
            .with_max_bytes(max_bytes)
            .with_session_epoch(-1)
            .with_topics(
                named
                    .iter()
                    .map(|(name, partition)| {
                        FetchTopic::default()
                            .with_topic(topic(name))
                            .with_topic_id(id(name))
                            .with_partitions(vec![FetchPartition::default()
                                .with_partition(*partition)
                                .with_fetch_offset(0)
                                .with_log_start_offset(-1)
                                .with_current_leader_epoch(-1)
                                .with_partition_max_bytes(1 << 20)])
                    })
                    .collect(),
            )
    };
    match api_key {
        ApiKey::Produce => {
            let mut out = vec![
                candidate(produce(1, record_batch(&[b"one", b"two"], -1))),
                candidate(produce(-1, record_batch(&[b"durable"], -1))),
                candidate(produce(0, record_batch(&[b"fire and forget"], -1))),
                candidate(produce(-1, record_batch(&[b"idempotent"], 4242))),
                candidate(produce(
                    1,
                    record_batch_in(&[&b"squeezed"[..]; 8], -1, Compression::Gzip, true),
                )),
            ];
            out.extend(
                converted_batches()
                    .into_iter()
                    .map(|b| candidate(produce_to(CONVERTED_TOPIC, 1, b))),
            );
            out
        }
        ApiKey::Fetch => vec![
            candidate(fetch(0, 0, 1 << 20, &[(TOPIC, 0)])),
            candidate(fetch(
                0,
                0,
                64,
                &[(CONVERTED_TOPIC, 0), (TOPIC, 1), (TOPIC, 0)],
            )),
            candidate(fetch(10, 1 << 20, 1 << 20, &[(OTHER_TOPIC, 0)])),
        ],
        ApiKey::ListOffsets => [-1i64, -2, 0]
            .into_iter()
            .map(|timestamp| {
                candidate(
                    ListOffsetsRequest::default()
                        .with_replica_id(BrokerId(-1))
                        .with_topics(vec![ListOffsetsTopic::default()
                            .with_name(topic(TOPIC))
                            .with_partitions(vec![ListOffsetsPartition::default()
                                .with_partition_index(0)
                                .with_current_leader_epoch(-1)
                                .with_timestamp(timestamp)])]),
                )
            })
            .collect(),
        ApiKey::Metadata => vec![
            candidate(
                MetadataRequest::default()
                    .with_topics(Some(vec![
                        MetadataRequestTopic::default().with_name(Some(topic(TOPIC)))
                    ]))
                    .with_allow_auto_topic_creation(true),
            ),
            candidate(MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic(TOPIC))),
            ]))),
            candidate(MetadataRequest::default().with_topics(None)),
        ],
        ApiKey::OffsetForLeaderEpoch => vec![candidate(
            OffsetForLeaderEpochRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![OffsetForLeaderTopic::default()
                    .with_topic(topic(TOPIC))
                    .with_partitions(vec![OffsetForLeaderPartition::default()
                        .with_partition(0)
                        .with_current_leader_epoch(0)
                        .with_leader_epoch(0)])]),
        )],
        ApiKey::ApiVersions => vec![
            candidate(
                ApiVersionsRequest::default()
                    .with_client_software_name(s("wharf-fuzz"))
                    .with_client_software_version(s("1.0")),
            ),
            candidate(ApiVersionsRequest::default()),
        ],
        ApiKey::CreateTopics => vec![
            candidate(
                CreateTopicsRequest::default()
                    .with_timeout_ms(1000)
                    .with_topics(vec![CreatableTopic::default()
                        .with_name(topic(OTHER_TOPIC))
                        .with_num_partitions(1)
                        .with_replication_factor(1)]),
            ),
            candidate(
                CreateTopicsRequest::default()
                    .with_timeout_ms(1000)
                    .with_validate_only(true)
                    .with_topics(vec![CreatableTopic::default()
                        .with_name(topic("fuzz-c"))
                        .with_num_partitions(2)
                        .with_replication_factor(-1)
                        .with_configs(vec![CreatableTopicConfig::default()
                            .with_name(s("retention.ms"))
                            .with_value(Some(s("60000")))])]),
            ),
        ],
        ApiKey::DeleteTopics => vec![
            candidate(
                DeleteTopicsRequest::default()
                    .with_timeout_ms(1000)
                    .with_topic_names(vec![topic("fuzz-c")]),
            ),
            candidate(
                DeleteTopicsRequest::default()
                    .with_timeout_ms(1000)
                    .with_topics(vec![
                        DeleteTopicState::default().with_name(Some(topic("fuzz-c")))
                    ]),
            ),
        ],
        ApiKey::DeleteRecords => vec![candidate(
            DeleteRecordsRequest::default()
                .with_timeout_ms(1000)
                .with_topics(vec![DeleteRecordsTopic::default()
                    .with_name(topic(TOPIC))
                    .with_partitions(vec![DeleteRecordsPartition::default()
                        .with_partition_index(0)
                        .with_offset(0)])]),
        )],
        ApiKey::DescribeConfigs => vec![candidate(
            DescribeConfigsRequest::default().with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s(TOPIC)),
                DescribeConfigsResource::default()
                    .with_resource_type(4)
                    .with_resource_name(s("1"))
                    .with_configuration_keys(Some(vec![s("num.partitions")])),
            ]),
        )],
        ApiKey::CreatePartitions => vec![candidate(
            CreatePartitionsRequest::default()
                .with_timeout_ms(1000)
                .with_validate_only(true)
                .with_topics(vec![CreatePartitionsTopic::default()
                    .with_name(topic(OTHER_TOPIC))
                    .with_count(2)]),
        )],
        ApiKey::IncrementalAlterConfigs => vec![
            candidate(
                IncrementalAlterConfigsRequest::default().with_resources(vec![
                    AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(s(TOPIC))
                        .with_configs(vec![AlterableConfig::default()
                            .with_name(s("retention.ms"))
                            .with_config_operation(0)
                            .with_value(Some(s("86400000")))]),
                ]),
            ),
            candidate(
                IncrementalAlterConfigsRequest::default().with_resources(vec![
                    AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(s(OTHER_TOPIC))
                        .with_configs(vec![AlterableConfig::default()
                            .with_name(s("cleanup.policy"))
                            .with_config_operation(2)
                            .with_value(Some(s("compact,delete")))]),
                ]),
            ),
        ],
        ApiKey::AlterConfigs => vec![
            candidate(AlterConfigsRequest::default().with_resources(vec![
                    AlterConfigsRequestResource::default()
                        .with_resource_type(2)
                        .with_resource_name(s(TOPIC))
                        .with_configs(vec![
                            AlterConfigsEntry::default()
                                .with_name(s("retention.ms"))
                                .with_value(Some(s("86400000"))),
                            AlterConfigsEntry::default()
                                .with_name(s("min.cleanable.dirty.ratio"))
                                .with_value(Some(s("0.25"))),
                        ]),
                ])),
            candidate(
                AlterConfigsRequest::default()
                    .with_validate_only(true)
                    .with_resources(vec![
                        AlterConfigsRequestResource::default()
                            .with_resource_type(4)
                            .with_resource_name(s("1")),
                        AlterConfigsRequestResource::default()
                            .with_resource_type(2)
                            .with_resource_name(s(CONVERTED_TOPIC))
                            .with_configs(vec![AlterConfigsEntry::default()
                                .with_name(s("cleanup.policy"))
                                .with_value(Some(s("compact")))]),
                    ]),
            ),
        ],
        ApiKey::DescribeLogDirs => vec![
            candidate(DescribeLogDirsRequest::default().with_topics(None)),
            candidate(DescribeLogDirsRequest::default().with_topics(Some(vec![
                    DescribableLogDirTopic::default()
                        .with_topic(topic(TOPIC))
                        .with_partitions(vec![0, 1, 7]),
                ]))),
        ],
        ApiKey::DescribeCluster => vec![candidate(
            DescribeClusterRequest::default().with_endpoint_type(1),
        )],
        ApiKey::DescribeTopicPartitions => vec![
            candidate(kafka_protocol::messages::DescribeTopicPartitionsRequest::default()),
            candidate(
                kafka_protocol::messages::DescribeTopicPartitionsRequest::default()
                    .with_topics(vec![
                        kafka_protocol::messages::describe_topic_partitions_request::TopicRequest::default()
                            .with_name(topic(TOPIC)),
                    ])
                    .with_response_partition_limit(1)
                    .with_cursor(Some(
                        kafka_protocol::messages::describe_topic_partitions_request::Cursor::default()
                            .with_topic_name(topic(TOPIC))
                            .with_partition_index(1),
                    )),
            ),
        ],
        ApiKey::DescribeQuorum => vec![candidate(
            kafka_protocol::messages::DescribeQuorumRequest::default().with_topics(vec![
                kafka_protocol::messages::describe_quorum_request::TopicData::default()
                    .with_topic_name(topic("__cluster_metadata"))
                    .with_partitions(vec![
                        kafka_protocol::messages::describe_quorum_request::PartitionData::default()
                            .with_partition_index(0),
                    ]),
            ]),
        )],
        ApiKey::InitProducerId => vec![
            candidate(InitProducerIdRequest::default().with_transaction_timeout_ms(60_000)),
            candidate(
                InitProducerIdRequest::default()
                    .with_transactional_id(Some(TransactionalId(s("txn"))))
                    .with_transaction_timeout_ms(60_000),
            ),
        ],
        ApiKey::FindCoordinator => vec![
            candidate(FindCoordinatorRequest::default().with_key(s(GROUP))),
            candidate(FindCoordinatorRequest::default().with_coordinator_keys(vec![s(GROUP)])),
        ],
        ApiKey::JoinGroup => vec![candidate(
            JoinGroupRequest::default()
                .with_group_id(GroupId(s(GROUP)))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(10_000)
                .with_member_id(s(""))
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(s("range"))
                    .with_metadata(subscription())]),
        )],
        ApiKey::SyncGroup => vec![candidate(
            SyncGroupRequest::default()
                .with_group_id(GroupId(s(GROUP)))
                .with_generation_id(1)
                .with_member_id(s("member"))
                .with_assignments(vec![SyncGroupRequestAssignment::default()
                    .with_member_id(s("member"))
                    .with_assignment(Bytes::from_static(b"\0\x01assignment"))]),
        )],
        ApiKey::Heartbeat => vec![candidate(
            HeartbeatRequest::default()
                .with_group_id(GroupId(s(GROUP)))
                .with_generation_id(1)
                .with_member_id(s("member")),
        )],
        ApiKey::LeaveGroup => vec![
            candidate(
                LeaveGroupRequest::default()
                    .with_group_id(GroupId(s(GROUP)))
                    .with_member_id(s("member")),
            ),
            candidate(
                LeaveGroupRequest::default()
                    .with_group_id(GroupId(s(GROUP)))
                    .with_members(vec![MemberIdentity::default().with_member_id(s("member"))]),
            ),
        ],
        ApiKey::OffsetCommit => vec![candidate(
            OffsetCommitRequest::default()
                .with_group_id(GroupId(s(GROUP)))
                .with_generation_id_or_member_epoch(-1)
                .with_member_id(s(""))
                .with_retention_time_ms(-1)
                .with_topics(vec![OffsetCommitRequestTopic::default()
                    .with_name(topic(TOPIC))
                    .with_partitions(vec![OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(1)
                        .with_committed_leader_epoch(-1)
                        .with_committed_metadata(Some(s("meta")))])]),
        )],
        ApiKey::OffsetFetch => vec![
            candidate(
                OffsetFetchRequest::default()
                    .with_group_id(GroupId(s(GROUP)))
                    .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                        .with_name(topic(TOPIC))
                        .with_partition_indexes(vec![0])])),
            ),
            candidate(OffsetFetchRequest::default().with_groups(vec![
                OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(s(GROUP)))
                    .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                        .with_name(topic(TOPIC))
                        .with_partition_indexes(vec![0])])),
            ])),
        ],
        ApiKey::DescribeGroups => vec![candidate(
            DescribeGroupsRequest::default().with_groups(vec![GroupId(s(GROUP))]),
        )],
        ApiKey::ListGroups => vec![
            candidate(ListGroupsRequest::default()),
            candidate(ListGroupsRequest::default().with_states_filter(vec![s("Stable")])),
        ],
        ApiKey::DeleteGroups => vec![candidate(
            DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("fuzz-gone"))]),
        )],
        ApiKey::OffsetDelete => vec![candidate(
            OffsetDeleteRequest::default()
                .with_group_id(GroupId(s(GROUP)))
                .with_topics(vec![OffsetDeleteRequestTopic::default()
                    .with_name(topic(TOPIC))
                    .with_partitions(vec![
                        OffsetDeleteRequestPartition::default().with_partition_index(0)
                    ])]),
        )],
        ApiKey::ConsumerGroupHeartbeat => vec![candidate(
            ConsumerGroupHeartbeatRequest::default()
                .with_group_id(GroupId(s("fuzz-kip848")))
                .with_member_id(s("fuzz-member-1"))
                .with_member_epoch(0)
                .with_rebalance_timeout_ms(10_000)
                .with_subscribed_topic_names(Some(vec![topic(TOPIC)]))
                .with_topic_partitions(Some(vec![])),
        )],
        ApiKey::AddPartitionsToTxn
        | ApiKey::AddOffsetsToTxn
        | ApiKey::EndTxn
        | ApiKey::TxnOffsetCommit
        | ApiKey::DescribeProducers
        | ApiKey::DescribeTransactions
        | ApiKey::ListTransactions
        | ApiKey::WriteTxnMarkers => txn_candidates(api_key, producer),
        _ => Vec::new(),
    }
}

/// The transaction APIs' candidates, for the setup's producer (the versions differ in
/// form: AddPartitionsToTxn v4+ is a broker's batch of transactions).
fn txn_candidates(api_key: ApiKey, producer: Producer) -> Vec<Candidate> {
    use kafka_protocol::messages::add_partitions_to_txn_request::{
        AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
    };
    use kafka_protocol::messages::describe_producers_request::TopicRequest;
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    let id = || TransactionalId(s(TRANSACTIONAL_ID));
    let pid = ProducerId(producer.producer_id);
    let epoch = producer.producer_epoch;
    let add_topic = |name: &str, partitions: &[i32]| {
        AddPartitionsToTxnTopic::default()
            .with_name(topic(name))
            .with_partitions(partitions.to_vec())
    };
    let transaction = |name: &str, verify_only: bool, topics: Vec<AddPartitionsToTxnTopic>| {
        AddPartitionsToTxnTransaction::default()
            .with_transactional_id(TransactionalId(s(name)))
            .with_producer_id(pid)
            .with_producer_epoch(epoch)
            .with_verify_only(verify_only)
            .with_topics(topics)
    };
    let txn_commit = |generation_id: i32, member_id: &str| {
        TxnOffsetCommitRequest::default()
            .with_transactional_id(id())
            .with_group_id(GroupId(s(GROUP)))
            .with_producer_id(pid)
            .with_producer_epoch(epoch)
            .with_generation_id(generation_id)
            .with_member_id(s(member_id))
            .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                .with_name(topic(TOPIC))
                .with_partitions(vec![
                    TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(1)
                        .with_committed_leader_epoch(-1)
                        .with_committed_metadata(Some(s("txn meta"))),
                    TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(1)
                        .with_committed_offset(2),
                ])])
    };
    let end = |committed: bool| {
        EndTxnRequest::default()
            .with_transactional_id(id())
            .with_producer_id(pid)
            .with_producer_epoch(epoch)
            .with_committed(committed)
    };
    match api_key {
        ApiKey::AddPartitionsToTxn => vec![
            // v0-v3, from producers.
            candidate(
                AddPartitionsToTxnRequest::default()
                    .with_v3_and_below_transactional_id(id())
                    .with_v3_and_below_producer_id(pid)
                    .with_v3_and_below_producer_epoch(epoch)
                    .with_v3_and_below_topics(vec![
                        add_topic(TOPIC, &[0, 1]),
                        add_topic(OTHER_TOPIC, &[0]),
                    ]),
            ),
            // v4+, from partition leaders: verifications (the offsets partition too)
            // next to an addition, and an id nobody initialized.
            candidate(AddPartitionsToTxnRequest::default().with_transactions(vec![
                transaction(
                    TRANSACTIONAL_ID,
                    true,
                    vec![
                        add_topic(TOPIC, &[0, 1]),
                        add_topic("__consumer_offsets", &[0, 3]),
                    ],
                ),
                transaction("fuzz-txn-unknown", true, vec![add_topic(TOPIC, &[0])]),
            ])),
            candidate(
                AddPartitionsToTxnRequest::default().with_transactions(vec![transaction(
                    TRANSACTIONAL_ID,
                    false,
                    vec![add_topic(TOPIC, &[1]), add_topic(CONVERTED_TOPIC, &[0])],
                )]),
            ),
        ],
        ApiKey::AddOffsetsToTxn => vec![candidate(
            AddOffsetsToTxnRequest::default()
                .with_transactional_id(id())
                .with_producer_id(pid)
                .with_producer_epoch(epoch)
                .with_group_id(GroupId(s(GROUP))),
        )],
        ApiKey::TxnOffsetCommit => vec![
            candidate(txn_commit(-1, "")),
            // v3+ (KIP-447): the consumer's generation and member.
            candidate(txn_commit(1, "member").with_group_instance_id(Some(s("instance")))),
        ],
        ApiKey::EndTxn => vec![candidate(end(true)), candidate(end(false))],
        ApiKey::DescribeProducers => vec![candidate(
            DescribeProducersRequest::default().with_topics(vec![
                TopicRequest::default()
                    .with_name(topic(TOPIC))
                    .with_partition_indexes(vec![0, 1, 9]),
                TopicRequest::default()
                    .with_name(topic("no-such-topic"))
                    .with_partition_indexes(vec![0]),
            ]),
        )],
        ApiKey::DescribeTransactions => vec![candidate(
            DescribeTransactionsRequest::default()
                .with_transactional_ids(vec![id(), TransactionalId(s("fuzz-txn-unknown"))]),
        )],
        ApiKey::ListTransactions => vec![
            candidate(ListTransactionsRequest::default()),
            candidate(
                ListTransactionsRequest::default()
                    .with_state_filters(vec![s("Ongoing"), s("NoSuchState")])
                    .with_producer_id_filters(vec![pid]),
            ),
            // v1 (KIP-994): transactions open longer than a duration.
            candidate(ListTransactionsRequest::default().with_duration_filter(0)),
        ],
        // A coordinator's markers: the setup's producer in a partition led here, one that
        // does not exist, and an unknown topic.
        ApiKey::WriteTxnMarkers => {
            use kafka_protocol::messages::write_txn_markers_request::{
                WritableTxnMarker, WritableTxnMarkerTopic,
            };
            use kafka_protocol::messages::WriteTxnMarkersRequest;
            vec![candidate(WriteTxnMarkersRequest::default().with_markers(
                vec![
                WritableTxnMarker::default()
                    .with_producer_id(pid)
                    .with_producer_epoch(epoch)
                    .with_transaction_result(false)
                    .with_coordinator_epoch(0)
                    .with_topics(vec![
                        WritableTxnMarkerTopic::default()
                            .with_name(topic(TOPIC))
                            .with_partition_indexes(vec![0, 99]),
                        WritableTxnMarkerTopic::default()
                            .with_name(topic("no-such-topic"))
                            .with_partition_indexes(vec![0]),
                    ]),
            ],
            ))]
        }
        _ => Vec::new(),
    }
}

/// A request body of the non-flexible wire types, written by hand.
#[derive(Default)]
struct W(BytesMut);

impl W {
    fn i8(mut self, v: i8) -> W {
        self.0.put_i8(v);
        self
    }
    fn i16(mut self, v: i16) -> W {
        self.0.put_i16(v);
        self
    }
    fn i32(mut self, v: i32) -> W {
        self.0.put_i32(v);
        self
    }
    fn i64(mut self, v: i64) -> W {
        self.0.put_i64(v);
        self
    }
    fn str(mut self, v: &str) -> W {
        self.0.put_i16(v.len() as i16);
        self.0.put_slice(v.as_bytes());
        self
    }
    fn null(mut self) -> W {
        self.0.put_i16(-1);
        self
    }
    fn bytes(mut self, v: &[u8]) -> W {
        self.0.put_i32(v.len() as i32);
        self.0.put_slice(v);
        self
    }
    fn done(self) -> Bytes {
        self.0.freeze()
    }
}

/// A message set of `magic`: two plain messages, or one wrapper of `codec` around them.
fn message_set(magic: i8, codec: Codec, keyed: bool) -> Vec<u8> {
    let key = keyed.then_some(&b"key"[..]);
    let mut plain = Vec::new();
    for (i, value) in [&b"old one"[..], b"old two"].into_iter().enumerate() {
        // Inner offsets: relative in magic 1 wrappers, absolute otherwise (both start at 0).
        let offset = if codec == Codec::None { 0 } else { i as i64 };
        write_message(
            &mut plain,
            offset,
            magic,
            0,
            1_700_000_000_000,
            key,
            Some(value),
        );
    }
    if codec == Codec::None {
        return plain;
    }
    let mut out = Vec::new();
    write_wrapper(
        &mut out,
        1,
        magic,
        codec,
        false,
        1_700_000_000_000,
        &plain,
        Levels::default(),
    )
    .expect("a wrapper compresses");
    out
}

/// Produce v0-2: acks, timeout, [topic, [partition, message set]].
fn legacy_produce(name: &str, acks: i16, records: &[u8]) -> Bytes {
    W::default()
        .i16(acks)
        .i32(1000)
        .i32(1)
        .str(name)
        .i32(1)
        .i32(0)
        .bytes(records)
        .done()
}

/// Fetch v0-3 of partition 0 of each topic from offset 0 (v3 adds the response's
/// max_bytes).
fn legacy_fetch(version: i16, max_wait_ms: i32, max_bytes: i32, topics: &[&str]) -> Bytes {
    let mut w = W::default().i32(-1).i32(max_wait_ms).i32(0);
    if version >= 3 {
        w = w.i32(max_bytes);
    }
    w = w.i32(topics.len() as i32);
    for name in topics {
        w = w.str(name).i32(1).i32(0).i64(0).i32(max_bytes);
    }
    w.done()
}

/// The bodies of a version below `kafka-protocol`'s floor, from Kafka 3.9's schemas;
/// `None` for one this file does not know.
fn legacy_bodies(api_key: ApiKey, version: i16) -> Option<Vec<Bytes>> {
    let bodies = match (api_key, version) {
        (ApiKey::Produce, 0..=2) => {
            let magic = if version == 2 { 1 } else { 0 };
            let mut out = Vec::new();
            for codec in [Codec::None, Codec::Gzip, Codec::Snappy, Codec::Lz4] {
                out.push(legacy_produce(TOPIC, 1, &message_set(magic, codec, true)));
                out.push(legacy_produce(
                    CONVERTED_TOPIC,
                    1,
                    &message_set(magic, codec, true),
                ));
            }
            out.push(legacy_produce(
                TOPIC,
                0,
                &message_set(magic, Codec::None, false),
            ));
            out.push(legacy_produce(
                CONVERTED_TOPIC,
                -1,
                &message_set(magic, Codec::Gzip, false),
            ));
            // Kafka 3.9 stored a v2 batch sent in Produce v0-2 as it was.
            out.push(legacy_produce(
                TOPIC,
                1,
                &record_batch(&[b"new in old"], -1),
            ));
            out
        }
        (ApiKey::Fetch, 0..=3) => vec![
            legacy_fetch(version, 0, 1 << 20, &[TOPIC]),
            legacy_fetch(version, 0, 1 << 20, &[CONVERTED_TOPIC, TOPIC]),
            legacy_fetch(version, 0, 64, &[TOPIC, CONVERTED_TOPIC]),
            legacy_fetch(version, 100, 1 << 20, &[OTHER_TOPIC]),
        ],
        // ListOffsets v0: replica, [topic, [partition, timestamp, max_num_offsets]].
        (ApiKey::ListOffsets, 0) => [(-1i64, 1), (-2, 10), (0, i32::MAX)]
            .into_iter()
            .map(|(timestamp, max)| {
                W::default()
                    .i32(-1)
                    .i32(1)
                    .str(TOPIC)
                    .i32(1)
                    .i32(0)
                    .i64(timestamp)
                    .i32(max)
                    .done()
            })
            .collect(),
        // OffsetForLeaderEpoch v0-1: [topic, [partition, leader_epoch]].
        (ApiKey::OffsetForLeaderEpoch, 0..=1) => [0, 5]
            .into_iter()
            .map(|epoch| {
                W::default()
                    .i32(1)
                    .str(TOPIC)
                    .i32(2)
                    .i32(0)
                    .i32(epoch)
                    .i32(1)
                    .i32(epoch)
                    .done()
            })
            .collect(),
        // CreateTopics v0-1: [name, partitions, replication, [assignment], [config]],
        // timeout, (v1) validate_only.
        (ApiKey::CreateTopics, 0..=1) => {
            let plain = W::default()
                .i32(1)
                .str("fuzz-c")
                .i32(2)
                .i16(1)
                .i32(0)
                .i32(1)
                .str("retention.ms")
                .str("60000")
                .i32(1000);
            let assigned = W::default()
                .i32(1)
                .str("fuzz-d")
                .i32(-1)
                .i16(-1)
                .i32(1)
                .i32(0)
                .i32(1)
                .i32(1)
                .i32(1)
                .str("cleanup.policy")
                .null()
                .i32(1000);
            let finish = |w: W| {
                if version == 1 {
                    w.i8(1).done()
                } else {
                    w.done()
                }
            };
            vec![finish(plain), finish(assigned)]
        }
        // DeleteTopics v0: [name], timeout.
        (ApiKey::DeleteTopics, 0) => vec![W::default().i32(1).str("fuzz-c").i32(1000).done()],
        // DescribeConfigs v0: [type, name, [config name] or null].
        (ApiKey::DescribeConfigs, 0) => vec![
            W::default().i32(1).i8(2).str(TOPIC).i32(-1).done(),
            W::default()
                .i32(2)
                .i8(4)
                .str("1")
                .i32(1)
                .str("num.partitions")
                .i8(2)
                .str(CONVERTED_TOPIC)
                .i32(0)
                .done(),
        ],
        // OffsetCommit v0: group, [topic, [partition, offset, metadata]]; v1 adds the
        // generation and member id, and a commit timestamp per partition.
        (ApiKey::OffsetCommit, 0..=1) => {
            let mut w = W::default().str(GROUP);
            if version == 1 {
                w = w.i32(-1).str("");
            }
            w = w.i32(1).str(TOPIC).i32(1).i32(0).i64(1);
            if version == 1 {
                w = w.i64(-1);
            }
            vec![w.str("old meta").done()]
        }
        // OffsetFetch v0: group, [topic, [partition]].
        (ApiKey::OffsetFetch, 0) => vec![W::default()
            .str(GROUP)
            .i32(1)
            .str(TOPIC)
            .i32(2)
            .i32(0)
            .i32(1)
            .done()],
        // DescribeLogDirs v0: [topic, [partition]] or null.
        (ApiKey::DescribeLogDirs, 0) => vec![
            W::default().i32(-1).done(),
            W::default().i32(1).str(TOPIC).i32(1).i32(0).done(),
        ],
        _ => return None,
    };
    Some(bodies)
}

/// The bodies of one (API, version).
fn bodies(api_key: ApiKey, version: i16, ids: &TopicIds, producer: Producer) -> Vec<Bytes> {
    let known = api_key.valid_versions();
    let out: Vec<Bytes> = if version < known.min {
        legacy_bodies(api_key, version).unwrap_or_default()
    } else {
        candidates(api_key, ids, producer)
            .iter()
            .filter_map(|c| c(version))
            .collect()
    };
    assert!(
        !out.is_empty(),
        "{api_key:?} v{version} is routed but the fuzzer has no request to start from: add one to corpus.rs"
    );
    out
}

/// Every routed (API, version) with its seed bodies.
pub fn all(ids: &TopicIds, producer: Producer) -> Vec<Seeds> {
    let mut out = Vec::new();
    for route in ROUTES {
        for version in route.min_version..=route.max_version {
            out.push(Seeds {
                api_key: route.api_key,
                version,
                bodies: bodies(route.api_key, version, ids, producer),
            });
        }
    }
    out
}

/// Requests that set the stage before any mutation: the topics, some records, a group with
/// committed offsets, an idempotent producer.
pub fn setup() -> Vec<(ApiKey, i16, Bytes)> {
    let mut out = Vec::new();
    let mut add = |key: ApiKey, version: i16, request: Candidate| {
        out.push((
            key,
            version,
            request(version).expect("a setup request encodes"),
        ));
    };
    add(
        ApiKey::CreateTopics,
        5,
        candidate(
            CreateTopicsRequest::default()
                .with_timeout_ms(1000)
                .with_topics(vec![
                    CreatableTopic::default()
                        .with_name(topic(TOPIC))
                        .with_num_partitions(2)
                        .with_replication_factor(1),
                    CreatableTopic::default()
                        .with_name(topic(OTHER_TOPIC))
                        .with_num_partitions(1)
                        .with_replication_factor(1),
                    CreatableTopic::default()
                        .with_name(topic(CONVERTED_TOPIC))
                        .with_num_partitions(1)
                        .with_replication_factor(1)
                        .with_configs(vec![
                            CreatableTopicConfig::default()
                                .with_name(s("compression.type"))
                                .with_value(Some(s("lz4"))),
                            CreatableTopicConfig::default()
                                .with_name(s("cleanup.policy"))
                                .with_value(Some(s("compact"))),
                        ]),
                ]),
        ),
    );
    for _ in 0..3 {
        add(
            ApiKey::Produce,
            9,
            candidate(produce(-1, record_batch(&[b"seed-1", b"seed-2"], -1))),
        );
    }
    // Compressed batches to convert down for Fetch v0-3 (zstd last: an old reader stops
    // before it), and records in the converted topic.
    for codec in [
        Compression::Gzip,
        Compression::Lz4,
        Compression::Snappy,
        Compression::Zstd,
    ] {
        let batch = record_batch_in(&[b"packed-1", b"packed-2"], -1, codec, true);
        add(ApiKey::Produce, 9, candidate(produce(-1, batch)));
    }
    let mut keyed = BatchBuilder::new();
    keyed.push(Some(b"k"), Some(b"converted"), &[], 1_700_000_000_000);
    let keyed = Bytes::from(
        keyed
            .build_compressed(Codec::Gzip, Levels::default())
            .expect("compresses"),
    );
    add(
        ApiKey::Produce,
        9,
        candidate(produce_to(CONVERTED_TOPIC, -1, keyed)),
    );
    for key in [
        ApiKey::OffsetCommit,
        ApiKey::JoinGroup,
        ApiKey::ConsumerGroupHeartbeat,
    ] {
        let version = ROUTES
            .iter()
            .find(|r| r.api_key == key)
            .map(|r| r.max_version)
            .expect("routed");
        if let Some(mut c) = candidates(key, &TopicIds::new(), Producer::default())
            .into_iter()
            .next()
        {
            if let Some(body) = c(version) {
                c = Box::new(move |_| Some(body.clone()));
                add(key, version, c);
            }
        }
    }
    out
}
