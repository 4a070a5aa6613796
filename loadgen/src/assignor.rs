//! The consumer protocol of classic consumer groups, without any I/O: the subscription a
//! member sends in JoinGroup, the assignment the leader sends in SyncGroup, and Kafka's
//! range assignor that the leader runs over every member's subscription.
//!
//! Both payloads are an int16 version followed by the struct of that version
//! (`ConsumerProtocolSubscription` / `ConsumerProtocolAssignment`). Later versions only
//! append fields, so a reader takes a newer version as the newest it knows.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    consumer_protocol_assignment, ConsumerProtocolAssignment, ConsumerProtocolSubscription,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::admin::topic_name;

/// JoinGroup's protocol_type for consumers.
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";
/// The one assignment strategy offered (Kafka's `RangeAssignor`, `partition.assignment.strategy`
/// default of the Java consumer and librdkafka).
pub const RANGE_ASSIGNOR: &str = "range";
/// Subscription version sent: v3 (topics, user data, owned partitions, generation, rack),
/// what the Java consumer 3.x and librdkafka 2.x send. Its first fields are those of v0, so
/// older members read it as the version they know.
pub const SUBSCRIPTION_VERSION: i16 = 3;
/// Assignment version sent: v0. Every version has the same fields (partitions, user data);
/// v0 is what librdkafka writes and what every client, however old, accepts.
pub const ASSIGNMENT_VERSION: i16 = 0;
/// The newest consumer protocol version this crate knows how to read.
const NEWEST_CONSUMER_PROTOCOL_VERSION: i16 = 3;

/// Topic → partitions, each list sorted.
pub type Assignment = BTreeMap<String, Vec<i32>>;

/// The JoinGroup metadata of a member subscribed to `topics`.
pub fn encode_subscription(topics: &[&str]) -> anyhow::Result<Bytes> {
    let mut s = ConsumerProtocolSubscription::default();
    s.topics = topics
        .iter()
        .map(|t| StrBytes::from_string(t.to_string()))
        .collect();
    s.generation_id = -1;
    let mut buf = BytesMut::new();
    buf.put_i16(SUBSCRIPTION_VERSION);
    s.encode(&mut buf, SUBSCRIPTION_VERSION)
        .context("encoding the consumer subscription")?;
    Ok(buf.freeze())
}

/// The topics of a member's JoinGroup metadata.
pub fn decode_subscription(mut bytes: Bytes) -> anyhow::Result<Vec<String>> {
    let version = read_version(&mut bytes)?;
    let s = ConsumerProtocolSubscription::decode(&mut bytes, version)
        .context("undecodable consumer subscription")?;
    Ok(s.topics.iter().map(|t| t.to_string()).collect())
}

/// The SyncGroup assignment bytes for one member.
pub fn encode_assignment(assignment: &Assignment) -> anyhow::Result<Bytes> {
    let mut a = ConsumerProtocolAssignment::default();
    a.assigned_partitions = assignment
        .iter()
        .map(|(topic, partitions)| {
            let mut tp = consumer_protocol_assignment::TopicPartition::default();
            tp.topic = topic_name(topic);
            tp.partitions = partitions.clone();
            tp
        })
        .collect();
    let mut buf = BytesMut::new();
    buf.put_i16(ASSIGNMENT_VERSION);
    a.encode(&mut buf, ASSIGNMENT_VERSION)
        .context("encoding the consumer assignment")?;
    Ok(buf.freeze())
}

/// A member's assignment from SyncGroup. Empty bytes are an empty assignment (what the
/// coordinator returns to a member the leader did not mention).
pub fn decode_assignment(mut bytes: Bytes) -> anyhow::Result<Assignment> {
    let mut out = Assignment::new();
    if bytes.is_empty() {
        return Ok(out);
    }
    let version = read_version(&mut bytes)?;
    let a = ConsumerProtocolAssignment::decode(&mut bytes, version)
        .context("undecodable consumer assignment")?;
    for tp in a.assigned_partitions {
        out.entry(tp.topic.0.to_string())
            .or_default()
            .extend(tp.partitions);
    }
    for partitions in out.values_mut() {
        partitions.sort_unstable();
        partitions.dedup();
    }
    Ok(out)
}

fn read_version(bytes: &mut Bytes) -> anyhow::Result<i16> {
    if bytes.remaining() < 2 {
        bail!("consumer protocol payload shorter than its version");
    }
    let version = bytes.get_i16();
    if version < 0 {
        bail!("consumer protocol version {version}");
    }
    Ok(version.min(NEWEST_CONSUMER_PROTOCOL_VERSION))
}

/// Kafka's `RangeAssignor`: per topic, the partitions in order are cut into ranges, one per
/// subscribed member in member id order; the first `partitions % members` members get one
/// more. `members` is (member id, subscribed topics); `partitions` the partition count of
/// each topic the leader knows. Topics it does not know are not assigned. Every member gets
/// an entry, empty if it gets nothing.
pub fn range_assign(
    members: &[(String, Vec<String>)],
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = members
        .iter()
        .map(|(id, _)| (id.clone(), Assignment::new()))
        .collect();
    for (topic, &count) in partitions {
        let mut subscribers: Vec<&str> = members
            .iter()
            .filter(|(_, topics)| topics.iter().any(|t| t == topic))
            .map(|(id, _)| id.as_str())
            .collect();
        if subscribers.is_empty() || count <= 0 {
            continue;
        }
        subscribers.sort_unstable();
        subscribers.dedup();
        let m = subscribers.len() as i32;
        let (per_member, extra) = (count / m, count % m);
        for (i, member) in subscribers.iter().enumerate() {
            let i = i as i32;
            let start = i * per_member + i.min(extra);
            let len = per_member + i32::from(i < extra);
            if len > 0 {
                out.entry(member.to_string())
                    .or_default()
                    .insert(topic.clone(), (start..start + len).collect());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[&str], topic: &str) -> Vec<(String, Vec<String>)> {
        ids.iter()
            .map(|id| (id.to_string(), vec![topic.to_string()]))
            .collect()
    }

    #[test]
    fn range_gives_the_first_members_one_extra_partition() {
        // Kafka's RangeAssignor javadoc: 3 partitions, 2 consumers → [0, 1] and [2].
        let counts = BTreeMap::from([("t".to_string(), 3)]);
        let out = range_assign(&members(&["b", "a"], "t"), &counts);
        assert_eq!(out["a"]["t"], vec![0, 1], "sorted by member id: a first");
        assert_eq!(out["b"]["t"], vec![2]);

        let counts = BTreeMap::from([("t".to_string(), 10)]);
        let out = range_assign(&members(&["m1", "m2", "m3", "m4"], "t"), &counts);
        let sizes: Vec<usize> = ["m1", "m2", "m3", "m4"]
            .iter()
            .map(|m| out[*m]["t"].len())
            .collect();
        assert_eq!(sizes, vec![3, 3, 2, 2]);
        assert_eq!(out["m2"]["t"], vec![3, 4, 5]);
        assert_eq!(out["m4"]["t"], vec![8, 9]);
    }

    #[test]
    fn members_beyond_the_partition_count_get_an_empty_assignment() {
        let counts = BTreeMap::from([("t".to_string(), 2)]);
        let out = range_assign(&members(&["a", "b", "c"], "t"), &counts);
        assert_eq!(out["a"]["t"], vec![0]);
        assert_eq!(out["b"]["t"], vec![1]);
        assert!(out["c"].is_empty());
        let bytes = encode_assignment(&out["c"]).unwrap();
        assert!(decode_assignment(bytes).unwrap().is_empty());
    }

    #[test]
    fn only_subscribers_of_a_topic_share_it_and_unknown_topics_are_not_assigned() {
        let ms = vec![
            ("a".to_string(), vec!["t".to_string()]),
            ("b".to_string(), vec!["other".to_string()]),
        ];
        let counts = BTreeMap::from([("t".to_string(), 4)]);
        let out = range_assign(&ms, &counts);
        assert_eq!(out["a"]["t"], vec![0, 1, 2, 3]);
        assert!(out["b"].is_empty());
    }

    #[test]
    fn subscription_and_assignment_round_trip() {
        let bytes = encode_subscription(&["t1", "t2"]).unwrap();
        assert_eq!(&bytes[..2], &SUBSCRIPTION_VERSION.to_be_bytes());
        assert_eq!(decode_subscription(bytes).unwrap(), vec!["t1", "t2"]);

        let a = Assignment::from([("t".to_string(), vec![2, 0, 5])]);
        let decoded = decode_assignment(encode_assignment(&a).unwrap()).unwrap();
        assert_eq!(decoded["t"], vec![0, 2, 5]);
    }

    #[test]
    fn newer_versions_are_read_as_the_newest_known_and_garbage_is_an_error() {
        // A v7 subscription (from some future client) with v3's fields first.
        let mut s = ConsumerProtocolSubscription::default();
        s.topics = vec![StrBytes::from_static_str("t")];
        let mut buf = BytesMut::new();
        buf.put_i16(7);
        s.encode(&mut buf, 3).unwrap();
        assert_eq!(decode_subscription(buf.freeze()).unwrap(), vec!["t"]);

        assert!(decode_subscription(Bytes::from_static(&[0])).is_err());
        assert!(decode_subscription(Bytes::from_static(&[0xff, 0xff])).is_err());
        assert!(decode_assignment(Bytes::from_static(&[0, 0, 0x7f, 0xff, 0xff, 0xff])).is_err());
    }
}
