//! Metadata: the cluster's live brokers, its id and active controller, and the topics asked
//! for (or all) with each partition's leader, replicas and in-sync replicas, from this
//! node's image of the cluster metadata. Unknown topics are created when the request allows
//! it and `auto.create.topics.enable` is on (Kafka's default); they are answered ready at
//! once.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{ApiKey, BrokerId, MetadataRequest, MetadataResponse};
use kafka_protocol::ResponseError;

use super::produce::auto_create;
use super::{brokers, str_bytes, topic_name, HandlerResult, RequestContext};
use crate::controller::image::ClusterImage;
use crate::metadata::{validate_topic_name, NodeId, TopicId, TopicMeta};
use crate::node::Shard;

/// "Authorized operations were not requested" (Kafka's Integer.MIN_VALUE).
pub const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;
/// Without ACLs every client may do everything a topic allows: READ, WRITE, CREATE, DELETE,
/// ALTER, DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS (Kafka's AclOperation codes 3–8, 10, 11).
pub const TOPIC_OPERATIONS: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
/// CREATE, ALTER, DESCRIBE, CLUSTER_ACTION, DESCRIBE_CONFIGS, ALTER_CONFIGS, IDEMPOTENT_WRITE.
pub const CLUSTER_OPERATIONS: i32 =
    (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Wanted {
    Name(String),
    Id(TopicId),
}

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: MetadataRequest = ctx.decode(ApiKey::Metadata, &mut body)?;
    let version = ctx.api_version;
    // v0: an empty list means all topics; v1+: null means all, empty means none.
    let wanted: Option<Vec<Wanted>> = match request.topics {
        None => None,
        Some(topics) if version == 0 && topics.is_empty() => None,
        // A topic named twice is described once, as Kafka (a set of topics).
        Some(topics) => Some(super::first_mentions(
            topics.into_iter().map(|t| match t.name {
                Some(name) => Wanted::Name(name.0.to_string()),
                None => Wanted::Id(TopicId(t.topic_id)),
            }),
            Wanted::clone,
        )),
    };
    let allow_auto_create = version < 4 || request.allow_auto_topic_creation;
    if let (Some(wanted), true) = (&wanted, allow_auto_create) {
        let names = wanted.iter().filter_map(|w| match w {
            Wanted::Name(n) => Some(n.as_str()),
            Wanted::Id(_) => None,
        });
        auto_create(&ctx.shard, names).await;
    }

    let shard = &ctx.shard;
    let image = shard.metadata();
    let topic_ops = if request.include_topic_authorized_operations {
        TOPIC_OPERATIONS
    } else {
        AUTHORIZED_OPERATIONS_OMITTED
    };
    let describe_topic = |t: &TopicMeta| describe_topic(&image, t, topic_ops, version);
    let topics: Vec<MetadataResponseTopic> = match wanted {
        None => image.topics().map(describe_topic).collect(),
        Some(wanted) => wanted
            .into_iter()
            .map(|w| match w {
                Wanted::Name(name) => match image.topic(&name) {
                    Some(t) => describe_topic(t),
                    None => {
                        let error = if validate_topic_name(&name).is_err() {
                            ResponseError::InvalidTopicException
                        } else {
                            ResponseError::UnknownTopicOrPartition
                        };
                        let mut t = MetadataResponseTopic::default();
                        t.error_code = error.code();
                        t.name = Some(topic_name(&name));
                        t.topic_authorized_operations = topic_ops;
                        t
                    }
                },
                Wanted::Id(id) => match image.topic_by_id(id) {
                    Some(t) => describe_topic(t),
                    None => {
                        let mut t = MetadataResponseTopic::default();
                        t.error_code = ResponseError::UnknownTopicId.code();
                        t.topic_id = id.0;
                        t.topic_authorized_operations = topic_ops;
                        t
                    }
                },
            })
            .collect(),
    };

    let mut response = MetadataResponse::default();
    response.brokers = live_brokers(shard, &image);
    if version >= 1 {
        response.controller_id = BrokerId(image.controller().map_or(-1, |(node, _)| node.0));
    }
    if version >= 2 {
        response.cluster_id = Some(str_bytes(image.metadata().cluster_id.clone()));
    }
    response.topics = topics;
    if (8..=10).contains(&version) && request.include_cluster_authorized_operations {
        response.cluster_authorized_operations = CLUSTER_OPERATIONS;
    }
    ctx.respond(ApiKey::Metadata, &response)
}

/// The registered, unfenced brokers with their client listeners; this node at least.
pub fn live_brokers(shard: &Shard, image: &ClusterImage) -> Vec<MetadataResponseBroker> {
    brokers::live_brokers(image, &brokers::this_broker(shard))
        .into_iter()
        .map(|b| {
            let mut m = MetadataResponseBroker::default();
            m.node_id = BrokerId(b.node_id.0);
            m.host = str_bytes(b.host);
            m.port = i32::from(b.port);
            m.rack = b.rack.map(str_bytes);
            m
        })
        .collect()
}

/// One topic's entry; fields a version lacks keep their defaults (the encoder refuses
/// anything else).
fn describe_topic(
    image: &ClusterImage,
    topic: &TopicMeta,
    topic_ops: i32,
    version: i16,
) -> MetadataResponseTopic {
    let mut t = MetadataResponseTopic::default();
    t.name = Some(topic_name(&topic.name));
    if version >= 10 {
        t.topic_id = topic.id.0;
    }
    if version >= 1 {
        t.is_internal = topic.internal;
    }
    t.topic_authorized_operations = topic_ops;
    let ids = |nodes: &[NodeId]| nodes.iter().map(|n| BrokerId(n.0)).collect::<Vec<_>>();
    t.partitions = image
        .partitions(topic.id)
        .iter()
        .enumerate()
        .map(|(p, state)| {
            let mut mp = MetadataResponsePartition::default();
            mp.partition_index = p as i32;
            mp.leader_id = BrokerId(state.leader_id());
            if state.leader.is_none() {
                mp.error_code = ResponseError::LeaderNotAvailable.code();
            }
            if version >= 7 {
                mp.leader_epoch = state.leader_epoch.0;
            }
            mp.replica_nodes = ids(&state.replicas);
            mp.isr_nodes = ids(&state.isr);
            if version == 0 {
                // Kafka answers v0 with the replicas and ISR members on live brokers only,
                // and REPLICA_NOT_AVAILABLE when that leaves some out (v0 has no offline
                // replicas field).
                let live = |nodes: &[NodeId]| {
                    nodes
                        .iter()
                        .filter(|n| image.is_usable(**n))
                        .map(|n| BrokerId(n.0))
                        .collect::<Vec<_>>()
                };
                mp.replica_nodes = live(&state.replicas);
                mp.isr_nodes = live(&state.isr);
                let filtered = mp.replica_nodes.len() < state.replicas.len()
                    || mp.isr_nodes.len() < state.isr.len();
                if state.leader.is_some() && filtered {
                    mp.error_code = ResponseError::ReplicaNotAvailable.code();
                }
            }
            if version >= 5 {
                mp.offline_replicas = state
                    .replicas
                    .iter()
                    .filter(|r| !image.is_usable(**r))
                    .map(|r| BrokerId(r.0))
                    .collect();
            }
            mp
        })
        .collect();
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::records::MetadataRecord;
    use crate::metadata::cluster::{BrokerRegistration, PartitionState};
    use crate::metadata::{LeaderEpoch, PartitionId};

    /// Brokers 1-3, broker 3 fenced; topic `t` with three replicas on 2, 3, 1, led by 2,
    /// broker 3 out of the ISR.
    fn image() -> (ClusterImage, TopicMeta) {
        let id = TopicId(uuid::Uuid::from_u128(5));
        let mut records = vec![MetadataRecord::ClusterBootstrap {
            cluster_id: "c".into(),
        }];
        for n in 1..=3 {
            records.push(MetadataRecord::BrokerRegistered(BrokerRegistration {
                node_id: NodeId(n),
                incarnation_id: n as u128,
                broker_epoch: 1,
                listeners: vec![],
                rack: None,
                fenced: n == 3,
            }));
        }
        records.push(MetadataRecord::TopicCreated {
            name: "t".into(),
            id,
            configs: Default::default(),
            internal: false,
        });
        records.push(MetadataRecord::Partition {
            topic: id,
            partition: PartitionId(0),
            state: PartitionState {
                replicas: vec![NodeId(2), NodeId(3), NodeId(1)],
                isr: vec![NodeId(2), NodeId(1)],
                leader: Some(NodeId(2)),
                leader_epoch: LeaderEpoch(4),
                partition_epoch: 9,
            },
        });
        let mut image = ClusterImage::empty();
        assert_eq!(image.apply(1, 1, &records), vec![]);
        let topic = image.topic("t").cloned().expect("created");
        (image, topic)
    }

    fn ids(nodes: &[i32]) -> Vec<BrokerId> {
        nodes.iter().copied().map(BrokerId).collect()
    }

    #[test]
    fn replicated_partitions_show_replicas_isr_leader_and_offline_replicas() {
        let (image, topic) = image();
        for version in [1, 5, 9, 12] {
            let t = describe_topic(&image, &topic, AUTHORIZED_OPERATIONS_OMITTED, version);
            let p = &t.partitions[0];
            assert_eq!(p.error_code, 0, "v{version}");
            assert_eq!(p.leader_id, BrokerId(2));
            assert_eq!(p.replica_nodes, ids(&[2, 3, 1]), "every replica, in order");
            assert_eq!(p.isr_nodes, ids(&[2, 1]));
            let offline = if version >= 5 { ids(&[3]) } else { vec![] };
            assert_eq!(p.offline_replicas, offline, "v{version}");
        }
    }

    #[test]
    fn version_0_lists_live_replicas_only_with_replica_not_available() {
        let (image, topic) = image();
        let t = describe_topic(&image, &topic, AUTHORIZED_OPERATIONS_OMITTED, 0);
        let p = &t.partitions[0];
        assert_eq!(p.error_code, ResponseError::ReplicaNotAvailable.code());
        assert_eq!(p.leader_id, BrokerId(2));
        assert_eq!(p.replica_nodes, ids(&[2, 1]));
        assert_eq!(p.isr_nodes, ids(&[2, 1]));
    }
}
