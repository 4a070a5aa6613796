//! Every advertised version of every routed non-group API, through the router, against a
//! real one-shard broker context (real engine, temporary directory): each answer must be a
//! response the version's schema decodes, with the outcome Kafka gives.

use std::future::Future;
use std::rc::Rc;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request};
use wharf_protocol::frame::RequestHead;

use super::router::{self, route_for};
use super::{str_bytes, topic_name, Reply, RequestContext};
use crate::config::{self, BrokerArgs};
use crate::controller::image::ClusterImage;
use crate::node::calls::{mesh_builder, ShardMesh};
use crate::node::Shard;
use crate::shard::{oneshot, ShardId};

pub(crate) fn with_shard<F, Fut>(test: F)
where
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().to_path_buf();
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .expect("executor");
    ex.run(async move {
        let args = BrokerArgs {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(data_dir),
            shards: Some(1),
            ..BrokerArgs::default()
        };
        let config = config::resolve(&args, 1)
            .expect("test config resolves")
            .with_bound_port(9092);
        let prepared = crate::cluster::startup::prepare(&config).expect("metadata log opens");
        let mesh = ShardMesh::join(mesh_builder(1)).await.expect("mesh of one");
        let shard = Rc::new(Shard::new(ShardId(0), config, ClusterImage::empty(), mesh));
        ShardMesh::start(&shard);
        crate::cluster::startup::bring_up(&shard, prepared, None)
            .await
            .expect("a one-node cluster comes up");
        test(shard).await;
    });
    drop(dir);
}

/// Sends `request` at `version` through the router and decodes the response.
pub(crate) async fn call<R: Request>(shard: &Rc<Shard>, request: &R, version: i16) -> R::Response {
    let frame = call_raw(shard, R::KEY, version, request).await;
    let mut body = skip_response_header(frame, R::KEY, version);
    let response = R::Response::decode(&mut body, version)
        .unwrap_or_else(|e| panic!("api {} v{version}: response does not decode: {e}", R::KEY));
    assert!(
        !body.has_remaining(),
        "api {} v{version}: {} bytes left after the response",
        R::KEY,
        body.remaining()
    );
    response
}

async fn call_raw<M: Encodable>(
    shard: &Rc<Shard>,
    api_key: i16,
    version: i16,
    request: &M,
) -> Bytes {
    let mut body = BytesMut::new();
    request
        .encode(&mut body, version)
        .unwrap_or_else(|e| panic!("api {api_key} v{version}: request does not encode: {e}"));
    let (tx, _rx) = oneshot::channel();
    let head = RequestHead {
        api_key,
        api_version: version,
        correlation_id: 7,
        client_id: None,
        header_version: 1,
    };
    let ctx = RequestContext::new(shard.clone(), head, None, None, tx);
    match router::handle(ctx, body.freeze()).await {
        reply @ (Reply::Frame(_) | Reply::Parts(_)) => reply.into_frame().unwrap(),
        Reply::NoResponse => panic!("api {api_key} v{version}: no response"),
        Reply::Close => panic!("api {api_key} v{version}: the connection would be closed"),
    }
}

fn skip_response_header(mut frame: Bytes, api_key: i16, version: i16) -> Bytes {
    let size = frame.get_i32() as usize;
    assert_eq!(size, frame.remaining(), "size prefix");
    assert_eq!(frame.get_i32(), 7, "correlation id");
    let key = ApiKey::try_from(api_key).expect("known api");
    if key.response_header_version(version) >= 1 {
        assert_eq!(frame.get_u8(), 0, "no tagged fields in the response header");
    }
    frame
}

/// The routed versions `kafka-protocol` encodes; older ones (wharf_protocol::legacy) are
/// checked byte by byte in server/tests/old_versions.rs.
fn versions(key: ApiKey) -> std::ops::RangeInclusive<i16> {
    let route = route_for(key as i16).expect("routed");
    route.min_version.max(key.valid_versions().min)..=route.max_version
}

fn produce_request(topic: &str, records: Bytes, acks: i16) -> ProduceRequest {
    let mut p = PartitionProduceData::default();
    p.index = 0;
    p.records = Some(records);
    let mut t = TopicProduceData::default();
    t.name = topic_name(topic);
    t.partition_data = vec![p];
    let mut r = ProduceRequest::default();
    r.acks = acks;
    r.timeout_ms = 5000;
    r.topic_data = vec![t];
    r
}

fn batch(records: usize) -> Bytes {
    Bytes::from(wharf_protocol::batch::simple_batch(
        records,
        10,
        1_700_000_000_000,
    ))
}

#[test]
fn produce_then_fetch_list_offsets_and_epochs_at_every_version() {
    with_shard(|shard| async move {
        for v in versions(ApiKey::Produce).filter(|v| *v >= 3) {
            let topic = format!("produce-v{v}");
            for (i, acks) in [1i16, -1].into_iter().enumerate() {
                let r = call(&shard, &produce_request(&topic, batch(3), acks), v).await;
                let p = &r.responses[0].partition_responses[0];
                assert_eq!(p.error_code, 0, "produce v{v} acks {acks}");
                assert_eq!(
                    p.base_offset,
                    3 * i as i64,
                    "produce v{v}: offsets are dense"
                );
            }
            for fv in versions(ApiKey::Fetch) {
                let mut fp = FetchPartition::default();
                fp.partition_max_bytes = 1 << 20;
                fp.fetch_offset = 1;
                let mut ft = FetchTopic::default();
                ft.topic = topic_name(&topic);
                // KIP-516: v13+ name the topic by id.
                ft.topic_id = shard.metadata().topic(&topic).expect("created").id.0;
                ft.partitions = vec![fp];
                let mut fr = FetchRequest::default();
                fr.max_bytes = 1 << 20;
                fr.max_wait_ms = 0;
                fr.isolation_level = (fv % 2) as i8;
                fr.topics = vec![ft];
                let r = call(&shard, &fr, fv).await;
                let d = &r.responses[0].partitions[0];
                assert_eq!(d.error_code, 0, "fetch v{fv}");
                assert_eq!(d.high_watermark, 6, "fetch v{fv}");
                let records = d.records.clone().expect("records");
                // The batch holding offset 1 comes whole: it starts at 0.
                assert_eq!(
                    i64::from_be_bytes(records[..8].try_into().unwrap()),
                    0,
                    "fetch v{fv}"
                );
            }
            for lv in versions(ApiKey::ListOffsets) {
                let mut timestamps = vec![(-2i64, 0, 0i64), (-1, 0, 6), (0, 0, 0)];
                // Special timestamps need the version that introduced them (Kafka's rule);
                // max timestamp: every record has the same one, the first holds it; no
                // tiered storage: no latest tiered offset.
                for (timestamp, since, found) in [(-3, 7, 0), (-4, 8, 0), (-5, 9, -1)] {
                    if lv >= since {
                        timestamps.push((timestamp, 0, found));
                    } else {
                        timestamps.push((timestamp, 35, -1));
                    }
                }
                for (timestamp, error, expected) in timestamps {
                    let mut lp = ListOffsetsPartition::default();
                    lp.timestamp = timestamp;
                    let mut lt = ListOffsetsTopic::default();
                    lt.name = topic_name(&topic);
                    lt.partitions = vec![lp];
                    let mut lr = ListOffsetsRequest::default();
                    lr.replica_id = BrokerId(-1);
                    lr.topics = vec![lt];
                    let r = call(&shard, &lr, lv).await;
                    let p = &r.topics[0].partitions[0];
                    assert_eq!(
                        (p.error_code, p.offset),
                        (error, expected),
                        "list offsets v{lv} timestamp {timestamp}"
                    );
                }
            }
            for ev in versions(ApiKey::OffsetForLeaderEpoch) {
                let mut op = OffsetForLeaderPartition::default();
                op.leader_epoch = 0;
                let mut ot = OffsetForLeaderTopic::default();
                ot.topic = topic_name(&topic);
                ot.partitions = vec![op];
                let mut or = OffsetForLeaderEpochRequest::default();
                or.topics = vec![ot];
                let r = call(&shard, &or, ev).await;
                let e = &r.topics[0].partitions[0];
                assert_eq!(
                    (e.error_code, e.leader_epoch, e.end_offset),
                    (0, 0, 6),
                    "offset for leader epoch v{ev}"
                );
            }
        }
        // acks=0: appended, no response.
        let mut body = BytesMut::new();
        produce_request("produce-v3", batch(1), 0)
            .encode(&mut body, 3)
            .unwrap();
        let (tx, _rx) = oneshot::channel();
        let head = RequestHead {
            api_key: 0,
            api_version: 3,
            correlation_id: 1,
            client_id: None,
            header_version: 1,
        };
        assert!(matches!(
            router::handle(
                RequestContext::new(shard.clone(), head, None, None, tx),
                body.freeze()
            )
            .await,
            Reply::NoResponse
        ));
    });
}

#[test]
fn metadata_lists_and_auto_creates_at_every_version() {
    with_shard(|shard| async move {
        for v in versions(ApiKey::Metadata) {
            let name = format!("meta-v{v}");
            let mut t = MetadataRequestTopic::default();
            t.name = Some(topic_name(&name));
            let mut r = MetadataRequest::default();
            r.topics = Some(vec![t]);
            r.allow_auto_topic_creation = true;
            r.include_topic_authorized_operations = v >= 8;
            let resp = call(&shard, &r, v).await;
            assert_eq!(resp.brokers.len(), 1, "metadata v{v}");
            assert_eq!(resp.brokers[0].port, 9092, "metadata v{v}: the bound port");
            let topic = &resp.topics[0];
            assert_eq!(topic.error_code, 0, "metadata v{v}: auto-created");
            assert_eq!(topic.partitions.len(), 1, "metadata v{v}: num.partitions");
            // All topics: null (v1+) or an empty list (v0).
            let mut all = MetadataRequest::default();
            all.topics = if v == 0 { Some(vec![]) } else { None };
            let resp = call(&shard, &all, v).await;
            assert!(
                resp.topics
                    .iter()
                    .any(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == name)),
                "metadata v{v}: all topics"
            );
        }
        // Not created when the client does not allow it (v4+), and illegal names are refused.
        let mut t = MetadataRequestTopic::default();
        t.name = Some(topic_name("no-auto"));
        let mut r = MetadataRequest::default();
        r.topics = Some(vec![t]);
        r.allow_auto_topic_creation = false;
        assert_eq!(call(&shard, &r, 9).await.topics[0].error_code, 3);
        let mut t = MetadataRequestTopic::default();
        t.name = Some(topic_name("bad/name"));
        let mut r = MetadataRequest::default();
        r.topics = Some(vec![t]);
        assert_eq!(call(&shard, &r, 9).await.topics[0].error_code, 17);
    });
}

#[test]
fn topic_admin_apis_at_every_version() {
    with_shard(|shard| async move {
        for v in versions(ApiKey::CreateTopics) {
            let name = format!("admin-v{v}");
            let mut c = CreatableTopicConfig::default();
            c.name = str_bytes("retention.ms");
            c.value = Some(str_bytes("60000"));
            let mut t = CreatableTopic::default();
            t.name = topic_name(&name);
            t.num_partitions = 2;
            t.replication_factor = 1;
            t.configs = vec![c];
            let mut r = CreateTopicsRequest::default();
            r.topics = vec![t.clone()];
            r.timeout_ms = 5000;
            assert_eq!(
                call(&shard, &r, v).await.topics[0].error_code,
                0,
                "create topics v{v}"
            );
            assert_eq!(
                call(&shard, &r, v).await.topics[0].error_code,
                36,
                "create topics v{v}: already exists"
            );
            let mut bad = t.clone();
            bad.name = topic_name(&format!("{name}-bad"));
            bad.replication_factor = 3;
            r.topics = vec![bad];
            assert_eq!(
                call(&shard, &r, v).await.topics[0].error_code,
                38,
                "create topics v{v}: replication factor"
            );
            let mut bad = t.clone();
            bad.name = topic_name(&format!("{name}-bad"));
            bad.configs[0].name = str_bytes("no.such.config");
            r.topics = vec![bad];
            assert_eq!(
                call(&shard, &r, v).await.topics[0].error_code,
                40,
                "create topics v{v}: config"
            );
        }
        for v in versions(ApiKey::CreatePartitions) {
            let mut t = CreatePartitionsTopic::default();
            t.name = topic_name("admin-v2");
            t.count = 3 + v as i32;
            let mut r = CreatePartitionsRequest::default();
            r.topics = vec![t];
            assert_eq!(
                call(&shard, &r, v).await.results[0].error_code,
                0,
                "create partitions v{v}"
            );
        }
        assert_eq!(
            shard
                .metadata()
                .topic("admin-v2")
                .map(|t| t.partition_count),
            Some(6)
        );
        for v in versions(ApiKey::IncrementalAlterConfigs) {
            let mut c = AlterableConfig::default();
            c.name = str_bytes("retention.ms");
            c.config_operation = 0;
            c.value = Some(str_bytes(format!("{}", 1000 + v)));
            let mut res = AlterConfigsResource::default();
            res.resource_type = 2;
            res.resource_name = str_bytes("admin-v3");
            res.configs = vec![c];
            let mut r = IncrementalAlterConfigsRequest::default();
            r.resources = vec![res];
            assert_eq!(
                call(&shard, &r, v).await.responses[0].error_code,
                0,
                "incremental alter configs v{v}"
            );
        }
        for v in versions(ApiKey::DescribeConfigs) {
            let mut topic = DescribeConfigsResource::default();
            topic.resource_type = 2;
            topic.resource_name = str_bytes("admin-v3");
            let mut broker = DescribeConfigsResource::default();
            broker.resource_type = 4;
            broker.resource_name = str_bytes("1");
            let mut r = DescribeConfigsRequest::default();
            r.resources = vec![topic, broker];
            r.include_synonyms = true;
            let resp = call(&shard, &r, v).await;
            assert_eq!(resp.results[0].error_code, 0, "describe configs v{v}");
            let retention = resp.results[0]
                .configs
                .iter()
                .find(|c| c.name.as_str() == "retention.ms")
                .expect("retention.ms");
            assert_eq!(
                retention.value.as_ref().map(|v| v.as_str()),
                Some("1001"),
                "describe configs v{v}"
            );
            assert_eq!(
                retention.config_source, 1,
                "describe configs v{v}: a topic override"
            );
            assert_eq!(
                resp.results[1].error_code, 0,
                "describe configs v{v}: broker"
            );
            assert!(resp.results[1]
                .configs
                .iter()
                .any(|c| c.name.as_str() == "num.partitions"));
        }
        for v in versions(ApiKey::DeleteRecords) {
            let name = format!("records-v{v}");
            // Auto-created by the first produce.
            for _ in 0..3 {
                let r = call(&shard, &produce_request(&name, batch(1), 1), 3).await;
                assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
            }
            let mut p = DeleteRecordsPartition::default();
            p.offset = 2;
            let mut t = DeleteRecordsTopic::default();
            t.name = topic_name(&name);
            t.partitions = vec![p];
            let mut r = DeleteRecordsRequest::default();
            r.topics = vec![t];
            let resp = call(&shard, &r, v).await;
            let p = &resp.topics[0].partitions[0];
            assert_eq!(p.error_code, 0, "delete records v{v}");
            assert!(
                p.low_watermark <= 2 && p.low_watermark >= 0,
                "delete records v{v}"
            );
            r.topics[0].partitions[0].offset = 99;
            assert_eq!(
                call(&shard, &r, v).await.topics[0].partitions[0].error_code,
                1,
                "delete records v{v}: past the end"
            );
        }
        let cluster_id = shard.metadata().metadata().cluster_id.clone();
        assert_eq!(cluster_id.len(), 22, "a Kafka-style cluster id");
        for v in versions(ApiKey::DescribeCluster) {
            let r = call(&shard, &DescribeClusterRequest::default(), v).await;
            assert_eq!(
                (
                    r.error_code,
                    r.brokers.len(),
                    r.cluster_id.as_str(),
                    r.controller_id.0
                ),
                (0, 1, cluster_id.as_str(), 1),
                "describe cluster v{v}"
            );
        }
        for v in versions(ApiKey::DeleteTopics) {
            let name = format!("admin-v{}", 2 + (v as usize % 6));
            let mut r = DeleteTopicsRequest::default();
            if v >= 6 {
                let mut s = DeleteTopicState::default();
                s.name = Some(topic_name(&name));
                r.topics = vec![s];
            } else {
                r.topic_names = vec![topic_name(&name)];
            }
            let resp = call(&shard, &r, v).await;
            assert_eq!(resp.responses[0].error_code, 0, "delete topics v{v} {name}");
            assert_eq!(
                call(&shard, &r, v).await.responses[0].error_code,
                3,
                "delete topics v{v}: gone"
            );
        }
    });
}

#[test]
fn api_versions_follows_kip_511() {
    with_shard(|shard| async move {
        for v in versions(ApiKey::ApiVersions) {
            let r = call(&shard, &ApiVersionsRequest::default(), v).await;
            assert_eq!(r.error_code, 0);
            assert!(r
                .api_keys
                .iter()
                .any(|k| k.api_key == 0 && k.min_version == 0));
        }
        // A newer version than ours: a v0 answer with UNSUPPORTED_VERSION and the ranges.
        // (The body of a version nobody knows yet: v4's will do, it is not read.)
        let newer = versions(ApiKey::ApiVersions).end() + 1;
        let mut body = BytesMut::new();
        ApiVersionsRequest::default()
            .encode(&mut body, 4)
            .expect("v4 encodes");
        let (tx, _rx) = oneshot::channel();
        let head = RequestHead {
            api_key: ApiKey::ApiVersions as i16,
            api_version: newer,
            correlation_id: 7,
            client_id: None,
            header_version: 2,
        };
        let Reply::Frame(frame) = router::handle(
            RequestContext::new(shard.clone(), head, None, None, tx),
            body.freeze(),
        )
        .await
        else {
            panic!("ApiVersions v{newer}: expected a response");
        };
        let mut body = skip_response_header(frame, ApiKey::ApiVersions as i16, 0);
        let r = ApiVersionsResponse::decode(&mut body, 0).expect("v0 response");
        assert_eq!(r.error_code, 35);
        assert!(!r.api_keys.is_empty());
        assert_eq!(
            ApiVersionsResponse::header_version(3),
            0,
            "the response header is always v0"
        );
        // Unknown API key: an error, not a dropped connection.
        let frame = call_raw(&shard, 999, 0, &ApiVersionsRequest::default()).await;
        assert_eq!(&frame[..], &[0, 0, 0, 6, 0, 0, 0, 7, 0, 35]);
    });
}

#[test]
fn fetch_names_topics_by_id_from_v13() {
    with_shard(|shard| async move {
        let r = call(&shard, &produce_request("by-id", batch(2), 1), 9).await;
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
        let id = shard.metadata().topic("by-id").expect("auto-created").id.0;
        for (fv, topic_id, want) in [
            (12i16, uuid::Uuid::nil(), 0i16),
            (13, id, 0),
            (17, id, 0),
            (13, uuid::Uuid::from_u128(42), 100),
        ] {
            let mut fp = FetchPartition::default();
            fp.partition_max_bytes = 1 << 20;
            let mut ft = FetchTopic::default();
            ft.topic = topic_name("by-id");
            ft.topic_id = topic_id;
            ft.partitions = vec![fp];
            let mut fr = FetchRequest::default();
            fr.max_bytes = 1 << 20;
            fr.topics = vec![ft];
            let r = call(&shard, &fr, fv).await;
            assert_eq!(r.responses[0].topic_id, topic_id, "fetch v{fv}");
            let d = &r.responses[0].partitions[0];
            assert_eq!(
                d.error_code, want,
                "fetch v{fv}: UNKNOWN_TOPIC_ID for an unknown id"
            );
            if want == 0 {
                assert_eq!(d.high_watermark, 2);
            }
        }
    });
}

mod txn;
