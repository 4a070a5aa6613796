//! DescribeTopicPartitions (KIP-966, API 75): what Kafka 3.7+ admin clients use to describe
//! topics (`kafka-topics.sh --describe`): per partition the leader, leader epoch, replicas,
//! ISR and offline replicas, from this node's image of the cluster metadata, in pages of at
//! most `ResponsePartitionLimit` partitions with a cursor to the next, as Kafka's brokers
//! answer it (`DescribeTopicPartitionsRequestHandler`).

use std::collections::BTreeSet;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse,
};
use kafka_protocol::ResponseError;

use super::metadata::TOPIC_OPERATIONS;
use super::{topic_name, HandlerResult, RequestContext};
use crate::controller::image::ClusterImage;
use crate::metadata::{validate_topic_name, NodeId};

/// Kafka's `max.request.partition.size.limit` default: the most partitions one response
/// carries, whatever the request asks.
pub const MAX_REQUEST_PARTITION_SIZE_LIMIT: i32 = 2_000;

pub async fn handle(ctx: Rc<RequestContext>, mut body: Bytes) -> HandlerResult {
    let request: DescribeTopicPartitionsRequest =
        ctx.decode(ApiKey::DescribeTopicPartitions, &mut body)?;
    let response = describe(&ctx.shard.metadata(), &request);
    ctx.respond(ApiKey::DescribeTopicPartitions, &response)
}

/// The answer to `request` from `image`.
pub fn describe(
    image: &ClusterImage,
    request: &DescribeTopicPartitionsRequest,
) -> DescribeTopicPartitionsResponse {
    let all_topics = request.topics.is_empty();
    let cursor = request.cursor.as_ref();
    let cursor_topic = cursor.map_or("", |c| c.topic_name.0.as_str());
    // Sorted by name, from the cursor's topic on; a name asked for twice is described once.
    let names: BTreeSet<&str> = if all_topics {
        image
            .topics()
            .map(|t| t.name.as_str())
            .filter(|n| *n >= cursor_topic)
            .collect()
    } else {
        request
            .topics
            .iter()
            .map(|t| t.name.0.as_str())
            .filter(|n| *n >= cursor_topic)
            .collect()
    };
    let invalid_cursor = cursor.is_some_and(|c| {
        c.partition_index < 0 || (!all_topics && !names.contains(c.topic_name.0.as_str()))
    });
    if invalid_cursor {
        // Kafka fails the request: every topic asked for gets INVALID_REQUEST.
        let mut response = DescribeTopicPartitionsResponse::default();
        response.topics = request
            .topics
            .iter()
            .map(|t| {
                let mut topic = DescribeTopicPartitionsResponseTopic::default();
                topic.error_code = ResponseError::InvalidRequest.code();
                topic.name = Some(t.name.clone());
                topic
            })
            .collect();
        return response;
    }
    let limit = request
        .response_partition_limit
        .min(MAX_REQUEST_PARTITION_SIZE_LIMIT)
        .max(1) as usize;
    let mut remaining = limit;
    let mut response = DescribeTopicPartitionsResponse::default();
    for name in names {
        if remaining == 0 {
            // The next page starts at this topic.
            response.next_cursor = Some(cursor_at(name, 0));
            break;
        }
        let Some(meta) = image.topic(name) else {
            if !all_topics {
                let mut topic = DescribeTopicPartitionsResponseTopic::default();
                topic.error_code = if validate_topic_name(name).is_ok() {
                    ResponseError::UnknownTopicOrPartition.code()
                } else {
                    ResponseError::InvalidTopicException.code()
                };
                topic.name = Some(topic_name(name));
                topic.topic_authorized_operations = TOPIC_OPERATIONS;
                response.topics.push(topic);
            }
            continue;
        };
        let states = image.partitions(meta.id);
        let start = match cursor {
            Some(c) if c.topic_name.0.as_str() == name => c.partition_index as usize,
            _ => 0,
        };
        let end = states.len().min(start.saturating_add(remaining));
        let ids = |nodes: &[NodeId]| nodes.iter().map(|n| BrokerId(n.0)).collect::<Vec<_>>();
        let partitions: Vec<DescribeTopicPartitionsResponsePartition> = (start..end)
            .map(|p| {
                let state = &states[p];
                let mut part = DescribeTopicPartitionsResponsePartition::default();
                part.partition_index = p as i32;
                part.leader_id = BrokerId(state.leader_id());
                part.leader_epoch = state.leader_epoch.0;
                part.replica_nodes = ids(&state.replicas);
                part.isr_nodes = ids(&state.isr);
                // KIP-966's eligible leader replicas are not kept (ELR is off, as in
                // Kafka 3.9 by default): empty lists.
                part.eligible_leader_replicas = Some(Vec::new());
                part.last_known_elr = Some(Vec::new());
                part.offline_replicas = state
                    .replicas
                    .iter()
                    .filter(|r| !image.is_usable(**r))
                    .map(|r| BrokerId(r.0))
                    .collect();
                part
            })
            .collect();
        let mut topic = DescribeTopicPartitionsResponseTopic::default();
        topic.name = Some(topic_name(name));
        topic.topic_id = meta.id.0;
        topic.is_internal = meta.internal;
        topic.topic_authorized_operations = TOPIC_OPERATIONS;
        remaining -= partitions.len();
        topic.partitions = partitions;
        response.topics.push(topic);
        if end < states.len() {
            response.next_cursor = Some(cursor_at(name, end as i32));
            break;
        }
    }
    response
}

fn cursor_at(name: &str, partition: i32) -> Cursor {
    let mut c = Cursor::default();
    c.topic_name = topic_name(name);
    c.partition_index = partition;
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::records::MetadataRecord;
    use crate::metadata::cluster::{BrokerRegistration, PartitionState};
    use crate::metadata::{LeaderEpoch, PartitionId, TopicId};
    use kafka_protocol::messages::describe_topic_partitions_request::{
        Cursor as RequestCursor, TopicRequest,
    };

    /// Brokers 1-3 (3 fenced); topic `a` with 3 partitions on 1, 2, 3 (RF 2), `b` with 2.
    fn image() -> ClusterImage {
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
        for (t, name, count) in [(1u128, "a", 3), (2, "b", 2)] {
            let id = TopicId(uuid::Uuid::from_u128(t));
            records.push(MetadataRecord::TopicCreated {
                name: name.into(),
                id,
                configs: Default::default(),
                internal: false,
            });
            for p in 0..count {
                let first = NodeId(p % 3 + 1);
                let second = NodeId((p + 1) % 3 + 1);
                let usable = first.0 != 3;
                records.push(MetadataRecord::Partition {
                    topic: id,
                    partition: PartitionId(p),
                    state: PartitionState {
                        replicas: vec![first, second],
                        isr: if usable { vec![first] } else { vec![second] },
                        leader: Some(if usable { first } else { second }),
                        leader_epoch: LeaderEpoch(2),
                        partition_epoch: 5,
                    },
                });
            }
        }
        let mut image = ClusterImage::empty();
        assert_eq!(image.apply(1, 1, &records), vec![]);
        image
    }

    fn request(
        topics: &[&str],
        limit: i32,
        cursor: Option<(&str, i32)>,
    ) -> DescribeTopicPartitionsRequest {
        let mut r = DescribeTopicPartitionsRequest::default();
        r.topics = topics
            .iter()
            .map(|n| {
                let mut t = TopicRequest::default();
                t.name = topic_name(n);
                t
            })
            .collect();
        r.response_partition_limit = limit;
        r.cursor = cursor.map(|(n, p)| {
            let mut c = RequestCursor::default();
            c.topic_name = topic_name(n);
            c.partition_index = p;
            c
        });
        r
    }

    fn summary(r: &DescribeTopicPartitionsResponse) -> Vec<(String, i16, Vec<i32>)> {
        r.topics
            .iter()
            .map(|t| {
                (
                    t.name.as_ref().map_or(String::new(), |n| n.0.to_string()),
                    t.error_code,
                    t.partitions.iter().map(|p| p.partition_index).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn partitions_show_leader_replicas_isr_and_offline_replicas() {
        let r = describe(&image(), &request(&["a"], 2000, None));
        let parts = &r.topics[0].partitions;
        assert_eq!(parts.len(), 3);
        let p1 = &parts[1];
        assert_eq!(p1.leader_id, BrokerId(2));
        assert_eq!(p1.replica_nodes, vec![BrokerId(2), BrokerId(3)]);
        assert_eq!(p1.isr_nodes, vec![BrokerId(2)]);
        assert_eq!(p1.offline_replicas, vec![BrokerId(3)], "broker 3 is fenced");
        let p2 = &parts[2];
        assert_eq!(p2.leader_id, BrokerId(1));
        assert_eq!(p2.offline_replicas, vec![BrokerId(3)]);
        assert_eq!(r.topics[0].topic_id, uuid::Uuid::from_u128(1));
        assert!(r.next_cursor.is_none());
    }

    #[test]
    fn pages_follow_the_cursor_across_topics() {
        let img = image();
        // All topics, two partitions a page: a0 a1 | a2 b0 | b1.
        let first = describe(&img, &request(&[], 2, None));
        assert_eq!(summary(&first), vec![("a".into(), 0, vec![0, 1])]);
        let c = first.next_cursor.expect("more");
        assert_eq!((c.topic_name.0.as_str(), c.partition_index), ("a", 2));
        let second = describe(&img, &request(&[], 2, Some(("a", 2))));
        assert_eq!(
            summary(&second),
            vec![("a".into(), 0, vec![2]), ("b".into(), 0, vec![0])]
        );
        let c = second.next_cursor.expect("more");
        assert_eq!((c.topic_name.0.as_str(), c.partition_index), ("b", 1));
        let third = describe(&img, &request(&[], 2, Some(("b", 1))));
        assert_eq!(summary(&third), vec![("b".into(), 0, vec![1])]);
        assert!(third.next_cursor.is_none());
        // A page that ends with a topic points at the start of the next one.
        let exact = describe(&img, &request(&[], 3, None));
        let c = exact.next_cursor.expect("more");
        assert_eq!((c.topic_name.0.as_str(), c.partition_index), ("b", 0));
    }

    #[test]
    fn unknown_invalid_and_cursor_errors() {
        let img = image();
        let r = describe(&img, &request(&["b", "zz", "bad name!"], 2000, None));
        assert_eq!(
            summary(&r),
            vec![
                ("b".into(), 0, vec![0, 1]),
                (
                    "bad name!".into(),
                    ResponseError::InvalidTopicException.code(),
                    vec![]
                ),
                (
                    "zz".into(),
                    ResponseError::UnknownTopicOrPartition.code(),
                    vec![]
                ),
            ]
        );
        // The cursor's topic must be among those asked for, its partition not negative.
        for bad in [
            request(&["b"], 10, Some(("a", 0))),
            request(&["a"], 10, Some(("a", -1))),
        ] {
            let r = describe(&img, &bad);
            assert!(r
                .topics
                .iter()
                .all(|t| t.error_code == ResponseError::InvalidRequest.code()));
        }
    }
}
