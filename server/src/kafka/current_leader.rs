//! KIP-951: leader discovery without a Metadata round trip.
//!
//! A Produce (v10+) partition answered NOT_LEADER_OR_FOLLOWER, or a Fetch (v16+) partition
//! answered NOT_LEADER_OR_FOLLOWER or FENCED_LEADER_EPOCH, carries the partition's current
//! leader and leader epoch, and the response lists the endpoints of the leaders it names,
//! so a client that reads them re-routes at once (the Java client 3.7+, franz-go). Both come from
//! this node's metadata image, the one Metadata answers from, and endpoints only of brokers
//! Metadata lists as live. A partition without a leader is named with leader -1 and no
//! endpoint; one the image does not know with leader -1 and epoch -1 (Kafka's defaults,
//! which the encoder leaves out). Produce names a leader only after NOT_LEADER_OR_FOLLOWER,
//! as Kafka: a produce carries no leader epoch to be fenced by.

use std::collections::BTreeMap;

use kafka_protocol::messages::{fetch_response, produce_response};
use kafka_protocol::messages::{BrokerId, FetchResponse, ProduceResponse};
use kafka_protocol::ResponseError;

use super::brokers::{live_broker, BrokerEndpoint};
use super::str_bytes;
use crate::controller::image::ClusterImage;
use crate::metadata::{PartitionId, TopicId};

/// The first Produce version whose responses carry the current leader (KIP-951).
pub const MIN_PRODUCE_VERSION: i16 = 10;
/// The first Fetch version whose responses carry the current leader (KIP-951; the field is
/// in the schema from v12, but Kafka fills it from v16 on).
pub const MIN_FETCH_VERSION: i16 = 16;

/// A partition's leader as this node's image has it (Kafka's LeaderIdAndEpoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CurrentLeader {
    /// -1 when the partition has no leader (or is unknown).
    pub leader_id: i32,
    /// -1 when the partition is unknown.
    pub leader_epoch: i32,
}

impl CurrentLeader {
    pub const UNKNOWN: CurrentLeader = CurrentLeader {
        leader_id: -1,
        leader_epoch: -1,
    };
}

/// The leaders one response names, and the endpoints of those that are live, each once.
pub struct LeaderHints<'a> {
    image: &'a ClusterImage,
    this: &'a BrokerEndpoint,
    endpoints: BTreeMap<i32, BrokerEndpoint>,
}

impl<'a> LeaderHints<'a> {
    /// `this` is this node's own endpoint (listed even before the image lists it, as
    /// Metadata does).
    pub fn new(image: &'a ClusterImage, this: &'a BrokerEndpoint) -> LeaderHints<'a> {
        LeaderHints {
            image,
            this,
            endpoints: BTreeMap::new(),
        }
    }

    /// The current leader of `partition` of `topic` (`None`: a topic the image does not
    /// know); its endpoint is kept for [`LeaderHints::endpoints`] if the broker is live.
    pub fn leader_of(&mut self, topic: Option<TopicId>, partition: i32) -> CurrentLeader {
        let Some(state) = topic.and_then(|t| self.image.partition(t, PartitionId(partition)))
        else {
            return CurrentLeader::UNKNOWN;
        };
        if let Some(leader) = state.leader {
            if let Some(endpoint) = live_broker(self.image, self.this, leader) {
                self.endpoints.entry(leader.0).or_insert(endpoint);
            }
        }
        CurrentLeader {
            leader_id: state.leader_id(),
            leader_epoch: state.leader_epoch.0,
        }
    }

    /// The endpoints of the live leaders named so far, by node id.
    pub fn endpoints(self) -> impl Iterator<Item = BrokerEndpoint> {
        self.endpoints.into_values()
    }
}

fn is_error(error_code: i16, error: ResponseError) -> bool {
    error_code == error.code()
}

/// Names the current leader in every partition of a Produce response of `version` that
/// NOT_LEADER_OR_FOLLOWER answered, and the live ones' endpoints. Below v10 it does nothing
/// (the fields do not exist there).
pub fn fill_produce(
    response: &mut ProduceResponse,
    version: i16,
    image: &ClusterImage,
    this: &BrokerEndpoint,
) {
    if version < MIN_PRODUCE_VERSION {
        return;
    }
    let mut hints = LeaderHints::new(image, this);
    for topic in &mut response.responses {
        // Produce names topics by name up to v12, by id from v13 (KIP-516).
        let id = image
            .topic(topic.name.0.as_str())
            .map(|t| t.id)
            .or_else(|| image.topic_by_id(TopicId(topic.topic_id)).map(|t| t.id));
        for p in &mut topic.partition_responses {
            if !is_error(p.error_code, ResponseError::NotLeaderOrFollower) {
                continue;
            }
            let leader = hints.leader_of(id, p.index);
            p.current_leader = produce_response::LeaderIdAndEpoch::default()
                .with_leader_id(BrokerId(leader.leader_id))
                .with_leader_epoch(leader.leader_epoch);
        }
    }
    response.node_endpoints = hints
        .endpoints()
        .map(|b| {
            produce_response::NodeEndpoint::default()
                .with_node_id(BrokerId(b.node_id.0))
                .with_host(str_bytes(b.host))
                .with_port(i32::from(b.port))
                .with_rack(b.rack.map(str_bytes))
        })
        .collect();
}

/// Names the current leader in every partition of a Fetch response of `version` that
/// NOT_LEADER_OR_FOLLOWER or FENCED_LEADER_EPOCH answered, and the live ones' endpoints.
/// Below v16 it does nothing, as Kafka.
pub fn fill_fetch(
    response: &mut FetchResponse,
    version: i16,
    image: &ClusterImage,
    this: &BrokerEndpoint,
) {
    if version < MIN_FETCH_VERSION {
        return;
    }
    let mut hints = LeaderHints::new(image, this);
    for topic in &mut response.responses {
        // From v13 on, Fetch names topics by id (KIP-516).
        let id = image.topic_by_id(TopicId(topic.topic_id)).map(|t| t.id);
        for p in &mut topic.partitions {
            let names_leader = is_error(p.error_code, ResponseError::NotLeaderOrFollower)
                || is_error(p.error_code, ResponseError::FencedLeaderEpoch);
            if !names_leader {
                continue;
            }
            let leader = hints.leader_of(id, p.partition_index);
            p.current_leader = fetch_response::LeaderIdAndEpoch::default()
                .with_leader_id(BrokerId(leader.leader_id))
                .with_leader_epoch(leader.leader_epoch);
        }
    }
    response.node_endpoints = hints
        .endpoints()
        .map(|b| {
            fetch_response::NodeEndpoint::default()
                .with_node_id(BrokerId(b.node_id.0))
                .with_host(str_bytes(b.host))
                .with_port(i32::from(b.port))
                .with_rack(b.rack.map(str_bytes))
        })
        .collect();
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::{Decodable, Encodable};

    use super::*;
    use crate::controller::records::MetadataRecord;
    use crate::metadata::cluster::{BrokerRegistration, Listener, PartitionState, CLIENT_LISTENER};
    use crate::metadata::{LeaderEpoch, NodeId};

    const NOT_LEADER: i16 = 6;
    const FENCED_EPOCH: i16 = 74;
    const UNKNOWN_EPOCH: i16 = 75;

    fn topic_id() -> TopicId {
        TopicId(uuid::Uuid::from_u128(7))
    }

    fn this() -> BrokerEndpoint {
        BrokerEndpoint {
            node_id: NodeId(1),
            host: "node-1".into(),
            port: 9001,
            rack: None,
        }
    }

    /// Brokers 1-3 (3 fenced, 2 in rack "r2"); topic `t`: partition 0 led by 2 (epoch 4),
    /// partition 1 by 3 (fenced, not yet replaced, epoch 6), partition 2 by none (epoch 9),
    /// partition 3 by 1 (epoch 2).
    fn image() -> ClusterImage {
        let mut records = vec![MetadataRecord::ClusterBootstrap {
            cluster_id: "c".into(),
        }];
        for n in 1..=3 {
            records.push(MetadataRecord::BrokerRegistered(BrokerRegistration {
                node_id: NodeId(n),
                incarnation_id: n as u128,
                broker_epoch: 1,
                listeners: vec![Listener {
                    name: CLIENT_LISTENER.to_string(),
                    host: format!("node-{n}"),
                    port: 9000 + n as u16,
                }],
                rack: (n == 2).then(|| "r2".to_string()),
                fenced: n == 3,
            }));
        }
        records.push(MetadataRecord::TopicCreated {
            name: "t".into(),
            id: topic_id(),
            configs: Default::default(),
            internal: false,
        });
        for (p, leader, epoch) in [
            (0, Some(2), 4),
            (1, Some(3), 6),
            (2, None, 9),
            (3, Some(1), 2),
        ] {
            let replicas = vec![NodeId(1), NodeId(2), NodeId(3)];
            records.push(MetadataRecord::Partition {
                topic: topic_id(),
                partition: PartitionId(p),
                state: PartitionState {
                    isr: leader.map_or(vec![NodeId(1)], |l| vec![NodeId(l)]),
                    replicas,
                    leader: leader.map(NodeId),
                    leader_epoch: LeaderEpoch(epoch),
                    partition_epoch: 1,
                },
            });
        }
        let mut image = ClusterImage::empty();
        assert_eq!(image.apply(1, 1, &records), vec![]);
        image
    }

    fn produce_response(errors: &[(i32, i16)]) -> ProduceResponse {
        let partitions = errors
            .iter()
            .map(|(index, error)| {
                PartitionProduceResponse::default()
                    .with_index(*index)
                    .with_error_code(*error)
            })
            .collect();
        ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
            .with_name(TopicName(str_bytes("t")))
            .with_partition_responses(partitions)])
    }

    fn fetch_response(topic: uuid::Uuid, errors: &[(i32, i16)]) -> FetchResponse {
        let partitions = errors
            .iter()
            .map(|(index, error)| {
                PartitionData::default()
                    .with_partition_index(*index)
                    .with_error_code(*error)
            })
            .collect();
        FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic_id(topic)
            .with_partitions(partitions)])
    }

    fn produce_leaders(r: &ProduceResponse) -> Vec<(i32, i32)> {
        r.responses[0]
            .partition_responses
            .iter()
            .map(|p| (p.current_leader.leader_id.0, p.current_leader.leader_epoch))
            .collect()
    }

    fn fetch_leaders(r: &FetchResponse) -> Vec<(i32, i32)> {
        r.responses[0]
            .partitions
            .iter()
            .map(|p| (p.current_leader.leader_id.0, p.current_leader.leader_epoch))
            .collect()
    }

    #[test]
    fn a_produce_sent_to_a_follower_names_the_leader_and_its_endpoint() {
        let image = image();
        let this = this();
        let mut r = produce_response(&[(0, NOT_LEADER), (0, 0)]);
        fill_produce(&mut r, 10, &image, &this);
        assert_eq!(produce_leaders(&r), [(2, 4), (-1, -1)]);
        assert_eq!(r.node_endpoints.len(), 1);
        let e = &r.node_endpoints[0];
        assert_eq!(
            (e.node_id.0, e.host.as_str(), e.port, e.rack.as_deref()),
            (2, "node-2", 9002, Some("r2"))
        );
    }

    #[test]
    fn a_leader_that_is_fenced_or_missing_is_named_without_an_endpoint() {
        let image = image();
        let this = this();
        let mut r = produce_response(&[(1, NOT_LEADER), (2, NOT_LEADER), (99, NOT_LEADER)]);
        fill_produce(&mut r, 11, &image, &this);
        assert_eq!(produce_leaders(&r), [(3, 6), (-1, 9), (-1, -1)]);
        assert!(r.node_endpoints.is_empty(), "{:?}", r.node_endpoints);
    }

    #[test]
    fn each_leader_is_listed_once_in_node_id_order() {
        let image = image();
        let this = this();
        let mut r = produce_response(&[(3, NOT_LEADER), (0, NOT_LEADER), (0, NOT_LEADER)]);
        fill_produce(&mut r, 10, &image, &this);
        let ids: Vec<i32> = r.node_endpoints.iter().map(|e| e.node_id.0).collect();
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn this_node_is_named_as_metadata_lists_it_even_before_its_registration_is_applied() {
        let mut image = ClusterImage::empty();
        let records = [
            MetadataRecord::ClusterBootstrap {
                cluster_id: "c".into(),
            },
            MetadataRecord::TopicCreated {
                name: "t".into(),
                id: topic_id(),
                configs: Default::default(),
                internal: false,
            },
            MetadataRecord::Partition {
                topic: topic_id(),
                partition: PartitionId(0),
                state: PartitionState {
                    replicas: vec![NodeId(1)],
                    isr: vec![NodeId(1)],
                    leader: Some(NodeId(1)),
                    leader_epoch: LeaderEpoch(0),
                    partition_epoch: 0,
                },
            },
        ];
        assert_eq!(image.apply(1, 1, &records), vec![]);
        let this = this();
        let mut r = produce_response(&[(0, NOT_LEADER)]);
        fill_produce(&mut r, 10, &image, &this);
        assert_eq!(produce_leaders(&r), [(1, 0)]);
        assert_eq!(r.node_endpoints[0].host.as_str(), "node-1");
    }

    #[test]
    fn produce_below_v10_and_other_errors_are_left_alone() {
        let image = image();
        let this = this();
        let mut old = produce_response(&[(0, NOT_LEADER)]);
        fill_produce(&mut old, 9, &image, &this);
        assert_eq!(old, produce_response(&[(0, NOT_LEADER)]));
        // v9 has neither field: the response still encodes.
        old.encode(&mut BytesMut::new(), 9).expect("v9 encodes");
        let mut fenced = produce_response(&[(0, FENCED_EPOCH), (0, 3)]);
        fill_produce(&mut fenced, 11, &image, &this);
        assert_eq!(fenced, produce_response(&[(0, FENCED_EPOCH), (0, 3)]));
    }

    #[test]
    fn a_fetch_names_the_leader_after_not_leader_or_a_fenced_epoch_only() {
        let image = image();
        let this = this();
        let errors = [
            (0, NOT_LEADER),
            (3, FENCED_EPOCH),
            (0, UNKNOWN_EPOCH),
            (0, 0),
        ];
        let mut r = fetch_response(topic_id().0, &errors);
        fill_fetch(&mut r, 16, &image, &this);
        assert_eq!(fetch_leaders(&r), [(2, 4), (1, 2), (-1, -1), (-1, -1)]);
        let hosts: Vec<(i32, &str, i32)> = r
            .node_endpoints
            .iter()
            .map(|e| (e.node_id.0, e.host.as_str(), e.port))
            .collect();
        assert_eq!(hosts, [(1, "node-1", 9001), (2, "node-2", 9002)]);

        let mut unknown = fetch_response(uuid::Uuid::from_u128(99), &[(0, NOT_LEADER)]);
        fill_fetch(&mut unknown, 17, &image, &this);
        assert_eq!(fetch_leaders(&unknown), [(-1, -1)]);
        assert!(unknown.node_endpoints.is_empty());
    }

    #[test]
    fn fetch_below_v16_is_left_alone() {
        let image = image();
        let this = this();
        for version in [4, 12, 15] {
            let mut r = fetch_response(topic_id().0, &[(0, NOT_LEADER)]);
            fill_fetch(&mut r, version, &image, &this);
            assert_eq!(
                r,
                fetch_response(topic_id().0, &[(0, NOT_LEADER)]),
                "v{version}"
            );
        }
    }

    #[test]
    fn the_filled_fields_survive_encoding_in_every_version_that_has_them() {
        let image = image();
        let this = this();
        for version in 10..=11 {
            let mut r = produce_response(&[(0, NOT_LEADER)]);
            fill_produce(&mut r, version, &image, &this);
            let mut buf = BytesMut::new();
            r.encode(&mut buf, version).expect("encodes");
            let back = ProduceResponse::decode(&mut buf.freeze(), version).expect("decodes");
            assert_eq!(back, r, "v{version}");
        }
        for version in 16..=17 {
            let mut r = fetch_response(topic_id().0, &[(0, NOT_LEADER)]);
            fill_fetch(&mut r, version, &image, &this);
            let mut buf = BytesMut::new();
            r.encode(&mut buf, version).expect("encodes");
            let back = FetchResponse::decode(&mut buf.freeze(), version).expect("decodes");
            assert_eq!(back, r, "v{version}");
        }
    }
}
