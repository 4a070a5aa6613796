//! AlterPartition (KIP-497) and leader elections on partitions with three replicas.

use super::*;
use crate::controller::requests::{
    AlterPartition, AlterPartitionCommitted, AlterPartitionItem, AlterPartitionTopic,
    AlterPartitionTopicResult, IsrMember,
};
use kafka_protocol::error::ResponseError;

/// Three brokers and topic `t`: one partition, three replicas, all in sync.
pub(super) fn three_replicas() -> (Harness, TopicId) {
    let mut config = ControllerConfig::new(NodeId(1));
    config.max_replication_factor = 3;
    let mut h = Harness::with_config(&[1, 2, 3], config);
    let items = created(h.call(create("t", 1, 3)));
    let topic = items[0].as_ref().expect("created").topic.id;
    (h, topic)
}

pub(super) fn state(h: &Harness, topic: TopicId) -> PartitionState {
    h.committed
        .partition(topic, PartitionId(0))
        .expect("partition 0")
        .clone()
}

/// A proposal from the current leader with the current epochs.
fn proposal(h: &Harness, topic: TopicId, isr: &[NodeId]) -> AlterPartition {
    let s = state(h, topic);
    AlterPartition {
        version: 3,
        broker: s.leader.expect("led"),
        broker_epoch: 1,
        topics: vec![AlterPartitionTopic {
            topic: TopicRef::Id(topic),
            partitions: vec![AlterPartitionItem {
                partition: PartitionId(0),
                leader_epoch: s.leader_epoch,
                partition_epoch: s.partition_epoch,
                new_isr: isr
                    .iter()
                    .map(|n| IsrMember {
                        node: *n,
                        broker_epoch: 1,
                    })
                    .collect(),
                leader_recovery_state: 0,
            }],
        }],
    }
}

fn answer(reply: Reply) -> Result<AlterPartitionCommitted, ResponseError> {
    match reply {
        Ok(ControllerReply::AlterPartition(mut topics)) => {
            let AlterPartitionTopicResult { mut partitions, .. } = topics.remove(0);
            partitions.remove(0).result
        }
        other => panic!("not an AlterPartition reply: {other:?}"),
    }
}

fn alter(
    h: &mut Harness,
    request: AlterPartition,
) -> Result<AlterPartitionCommitted, ResponseError> {
    answer(h.call(ControllerRequest::AlterPartition(request)))
}

#[test]
fn alter_partition_commits_a_shrink_and_an_expansion_before_answering() {
    let (mut h, topic) = three_replicas();
    let before = state(&h, topic);
    let leader = before.leader.unwrap();
    let follower = before.replicas[2];
    let shrunk: Vec<NodeId> = before
        .isr
        .iter()
        .copied()
        .filter(|n| *n != follower)
        .collect();
    h.hold = true;
    h.send(
        5,
        ControllerRequest::AlterPartition(proposal(&h, topic, &shrunk)),
    );
    assert!(h.replies.is_empty(), "no answer before the commit");
    h.commit_all();
    h.hold = false;
    let (token, reply) = h.replies.pop().unwrap();
    assert_eq!(token, 5);
    let committed = answer(reply).unwrap();
    let after = state(&h, topic);
    assert_eq!(after.isr, shrunk);
    assert_eq!(after.partition_epoch, before.partition_epoch + 1);
    assert_eq!(after.leader_epoch, before.leader_epoch, "the leader stays");
    assert_eq!(
        committed,
        AlterPartitionCommitted {
            leader: Some(leader),
            leader_epoch: after.leader_epoch,
            isr: after.isr.clone(),
            partition_epoch: after.partition_epoch,
        }
    );
    // The follower rejoins; members are answered in replica order whatever the order asked.
    let mut grown = vec![follower];
    grown.extend(&shrunk);
    let p = proposal(&h, topic, &grown);
    let committed = alter(&mut h, p).unwrap();
    assert_eq!(committed.isr, before.replicas);
    assert_eq!(state(&h, topic).partition_epoch, before.partition_epoch + 2);
}

#[test]
fn an_isr_already_as_proposed_is_answered_without_a_change() {
    let (mut h, topic) = three_replicas();
    let before = state(&h, topic);
    let index = h.next_index;
    let p = proposal(&h, topic, &before.isr);
    let committed = alter(&mut h, p).unwrap();
    assert_eq!(committed.partition_epoch, before.partition_epoch);
    assert_eq!(h.next_index, index, "nothing proposed");
}

fn check_passes(
    h: &mut Harness,
    isr: &[NodeId],
    topic: TopicId,
    edit: impl Fn(&mut AlterPartition),
) {
    let mut request = proposal(h, topic, isr);
    edit(&mut request);
    assert!(alter(h, request).is_ok());
}

#[test]
fn alter_partition_refuses_what_kafka_refuses() {
    let (mut h, topic) = three_replicas();
    let s = state(&h, topic);
    let leader = s.leader.unwrap();
    let follower = s.replicas[1];
    let isr = s.isr.clone();
    let check = |h: &mut Harness, edit: &dyn Fn(&mut AlterPartition), want: ResponseError| {
        let mut request = proposal(h, topic, &isr);
        edit(&mut request);
        assert_eq!(alter(h, request), Err(want), "{want:?}");
    };
    // Unknown topic: by id from version 2, by name before.
    check(
        &mut h,
        &|r| r.topics[0].topic = TopicRef::Id(TopicId(uuid::Uuid::from_u128(99))),
        ResponseError::UnknownTopicId,
    );
    check(
        &mut h,
        &|r| {
            r.version = 1;
            r.topics[0].topic = TopicRef::Name("nope".into());
        },
        ResponseError::UnknownTopicOrPartition,
    );
    check(
        &mut h,
        &|r| r.topics[0].partitions[0].partition = PartitionId(7),
        ResponseError::UnknownTopicOrPartition,
    );
    // Epochs: ahead of the controller's, then behind.
    check(
        &mut h,
        &|r| r.topics[0].partitions[0].leader_epoch.0 += 1,
        ResponseError::NotController,
    );
    check(
        &mut h,
        &|r| r.topics[0].partitions[0].partition_epoch += 1,
        ResponseError::NotController,
    );
    // Not the leader (with the current epochs).
    let mut from_follower = proposal(&h, topic, &isr);
    from_follower.broker = follower;
    assert_eq!(
        alter(&mut h, from_follower),
        Err(ResponseError::InvalidRequest)
    );
    // Bad ISRs: not a replica, twice the same, without the leader, recovering.
    let mut outsider = proposal(&h, topic, &isr);
    outsider.topics[0].partitions[0].new_isr.push(IsrMember {
        node: NodeId(9),
        broker_epoch: -1,
    });
    assert_eq!(alter(&mut h, outsider), Err(ResponseError::InvalidRequest));
    let doubled = proposal(&h, topic, &[leader, leader]);
    assert_eq!(alter(&mut h, doubled), Err(ResponseError::InvalidRequest));
    let leaderless = proposal(&h, topic, &[follower]);
    assert_eq!(
        alter(&mut h, leaderless),
        Err(ResponseError::InvalidRequest)
    );
    let empty = proposal(&h, topic, &[]);
    assert_eq!(alter(&mut h, empty), Err(ResponseError::InvalidRequest));
    check(
        &mut h,
        &|r| r.topics[0].partitions[0].leader_recovery_state = 1,
        ResponseError::InvalidRequest,
    );
    // A member with another broker epoch than its registration's (KIP-903).
    check(
        &mut h,
        &|r| r.topics[0].partitions[0].new_isr[1].broker_epoch = 5,
        ResponseError::IneligibleReplica,
    );
    // Before version 3 member epochs are not on the wire: not checked.
    check_passes(&mut h, &isr, topic, |r| {
        r.version = 2;
        r.topics[0].partitions[0].new_isr[1].broker_epoch = 5;
    });
    // -1 skips the epoch check.
    let mut unchecked = proposal(&h, topic, &isr);
    for m in &mut unchecked.topics[0].partitions[0].new_isr {
        m.broker_epoch = -1;
    }
    assert!(alter(&mut h, unchecked).is_ok());
    // Stale epochs once the partition moved on: shrink, then ask with the old epochs.
    let old = proposal(&h, topic, &isr);
    let shrunk: Vec<NodeId> = isr.iter().copied().filter(|n| *n != follower).collect();
    let p = proposal(&h, topic, &shrunk);
    alter(&mut h, p).unwrap();
    assert_eq!(
        alter(&mut h, old.clone()),
        Err(ResponseError::InvalidUpdateVersion)
    );
    // The whole request: a requester that is not registered with that epoch.
    let mut stale = proposal(&h, topic, &shrunk);
    stale.broker_epoch = 0;
    assert!(matches!(
        h.call(ControllerRequest::AlterPartition(stale)),
        Err(ControllerError::StaleBrokerEpoch(_))
    ));
    let mut unsupported = proposal(&h, topic, &shrunk);
    unsupported.version = 4;
    assert!(matches!(
        h.call(ControllerRequest::AlterPartition(unsupported)),
        Err(ControllerError::Metadata(MetadataError::InvalidRequest(_)))
    ));
}

#[test]
fn alter_partition_refuses_fenced_members() {
    let (mut h, topic) = three_replicas();
    let s = state(&h, topic);
    let leader = s.leader.unwrap();
    let other = *s.replicas.iter().find(|n| **n != leader).unwrap();
    // A follower that is fenced (silent, or in controlled shutdown) leaves the ISR...
    let shut_down = h.call(ControllerRequest::Heartbeat(Heartbeat {
        node: other,
        broker_epoch: 1,
        applied_offset: 100,
        want_fence: false,
        want_shut_down: true,
    }));
    assert!(shut_down.is_ok());
    let s = state(&h, topic);
    assert!(!s.isr.contains(&other));
    // ... and may not be proposed back while fenced: INELIGIBLE_REPLICA from version 2,
    // OPERATION_NOT_ATTEMPTED before (KIP-841).
    let mut back = s.isr.clone();
    back.push(other);
    let request = proposal(&h, topic, &back);
    let epoch_before = state(&h, topic).partition_epoch;
    assert_eq!(
        alter(&mut h, request.clone()),
        Err(ResponseError::IneligibleReplica)
    );
    // The refusal moves the partition epoch on (Kafka's controller does not): a copy of the
    // same proposal arriving later (a resend overtaken by its original) is stale, so it
    // cannot be committed after the leader went back to the committed ISR.
    let after = state(&h, topic);
    assert_eq!(after.partition_epoch, epoch_before + 1);
    assert_eq!(after.isr, s.isr);
    assert_eq!(
        alter(&mut h, request),
        Err(ResponseError::InvalidUpdateVersion)
    );
    let mut request = proposal(&h, topic, &back);
    request.version = 1;
    request.topics[0].topic = TopicRef::Name("t".into());
    assert_eq!(
        alter(&mut h, request),
        Err(ResponseError::OperationNotAttempted)
    );
}

#[test]
fn items_of_one_request_see_each_other() {
    let (mut h, topic) = three_replicas();
    let s = state(&h, topic);
    let follower = s.replicas[2];
    let shrunk: Vec<NodeId> = s.isr.iter().copied().filter(|n| *n != follower).collect();
    let mut request = proposal(&h, topic, &shrunk);
    let again = request.topics[0].partitions[0].clone();
    request.topics[0].partitions.push(again);
    match h.call(ControllerRequest::AlterPartition(request)) {
        Ok(ControllerReply::AlterPartition(topics)) => {
            let results = &topics[0].partitions;
            assert!(results[0].result.is_ok());
            assert_eq!(results[1].result, Err(ResponseError::InvalidUpdateVersion));
        }
        other => panic!("{other:?}"),
    }
}

fn heartbeat_from(h: &mut Harness, node: NodeId) {
    let reply = h.call(ControllerRequest::Heartbeat(Heartbeat {
        node,
        broker_epoch: 1,
        applied_offset: 1_000,
        want_fence: false,
        want_shut_down: false,
    }));
    assert!(reply.is_ok(), "{reply:?}");
}

/// Every broker but `silent` heartbeats, then time passes beyond the session timeout.
fn silence(h: &mut Harness, silent: &[NodeId]) {
    let now = h.now_ms + 8_000;
    h.now_ms = now;
    for n in [1, 2, 3].map(NodeId) {
        if !silent.contains(&n) {
            heartbeat_from(h, n);
        }
    }
    h.tick(now + 2_000);
}

fn set_topic_config(h: &mut Harness, name: &str, value: &str) {
    let reply = h.call(ControllerRequest::AlterConfigs {
        topics: vec![("t".into(), vec![AlterOp::Set(name.into(), value.into())])],
        validate_only: false,
    });
    assert_eq!(reply, Ok(ControllerReply::AlterConfigs(vec![Ok(())])));
}

#[test]
fn a_fenced_leader_is_replaced_by_the_first_live_isr_member_with_a_new_epoch() {
    let (mut h, topic) = three_replicas();
    let before = state(&h, topic);
    let leader = before.leader.unwrap();
    assert_eq!(
        Some(before.replicas[0]),
        before.leader,
        "the first replica leads"
    );
    silence(&mut h, &[leader]);
    let after = state(&h, topic);
    assert_eq!(after.leader, Some(before.replicas[1]));
    assert_eq!(after.leader_epoch, LeaderEpoch(before.leader_epoch.0 + 1));
    assert_eq!(
        after.isr,
        before.replicas[1..].to_vec(),
        "the fenced leader left the ISR"
    );
    assert!(after.partition_epoch > before.partition_epoch);
}

#[test]
fn the_last_isr_member_stays_and_takes_the_partition_back_when_it_returns() {
    let (mut h, topic) = three_replicas();
    let s = state(&h, topic);
    let leader = s.leader.unwrap();
    let p = proposal(&h, topic, &[leader]);
    alter(&mut h, p).unwrap();
    silence(&mut h, &[leader]);
    let offline = state(&h, topic);
    assert_eq!(offline.leader, None, "no clean leader: offline");
    assert_eq!(offline.isr, vec![leader], "Kafka keeps the last ISR member");
    assert_eq!(offline.leader_epoch, LeaderEpoch(s.leader_epoch.0 + 1));
    // The other replicas are live but out of sync: unclean election is off by default,
    // also when the periodic check comes.
    let later = h.now_ms + UNCLEAN_LEADER_ELECTION_CHECK_INTERVAL_MS;
    for n in [1, 2, 3].map(NodeId).into_iter().filter(|n| *n != leader) {
        h.now_ms = later;
        heartbeat_from(&mut h, n);
    }
    h.tick(later);
    assert_eq!(state(&h, topic).leader, None);
    // The last member comes back (registered, caught up, unfenced): it leads again.
    heartbeat_from(&mut h, leader);
    let back = state(&h, topic);
    assert_eq!(back.leader, Some(leader));
    assert_eq!(back.leader_epoch, LeaderEpoch(offline.leader_epoch.0 + 1));
}

#[test]
fn unclean_leader_election_picks_a_live_replica_outside_the_isr_when_allowed() {
    let (mut h, topic) = three_replicas();
    set_topic_config(&mut h, "unclean.leader.election.enable", "true");
    let s = state(&h, topic);
    let leader = s.leader.unwrap();
    let p = proposal(&h, topic, &[leader]);
    alter(&mut h, p).unwrap();
    silence(&mut h, &[leader]);
    let after = state(&h, topic);
    let first_live = s.replicas[1];
    assert_eq!(
        after.leader,
        Some(first_live),
        "an out-of-sync replica leads"
    );
    assert_eq!(after.isr, vec![first_live], "and is the whole ISR");
    assert_eq!(after.leader_epoch, LeaderEpoch(s.leader_epoch.0 + 1));
}

#[test]
fn turning_unclean_election_on_brings_an_offline_partition_back_at_the_next_check() {
    let (mut h, topic) = three_replicas();
    let s = state(&h, topic);
    let leader = s.leader.unwrap();
    let p = proposal(&h, topic, &[leader]);
    alter(&mut h, p).unwrap();
    silence(&mut h, &[leader]);
    assert_eq!(state(&h, topic).leader, None);
    set_topic_config(&mut h, "unclean.leader.election.enable", "true");
    let later = UNCLEAN_LEADER_ELECTION_CHECK_INTERVAL_MS + 1;
    for n in [1, 2, 3].map(NodeId).into_iter().filter(|n| *n != leader) {
        h.now_ms = later;
        heartbeat_from(&mut h, n);
    }
    h.tick(later);
    let after = state(&h, topic);
    assert_eq!(after.leader, Some(s.replicas[1]));
    assert_eq!(after.isr, vec![s.replicas[1]]);
}

#[test]
fn leadership_moves_back_to_the_preferred_replica_once_it_is_in_sync() {
    let (mut h, topic) = three_replicas();
    let s = state(&h, topic);
    let preferred = s.replicas[0];
    silence(&mut h, &[preferred]);
    let moved = state(&h, topic);
    assert_eq!(moved.leader, Some(s.replicas[1]));
    // Back, unfenced, but not yet in the ISR: leadership stays.
    heartbeat_from(&mut h, preferred);
    let due = DEFAULT_LEADER_IMBALANCE_CHECK_INTERVAL_MS + 1;
    h.now_ms = due - 1_000;
    for n in [1, 2, 3].map(NodeId) {
        heartbeat_from(&mut h, n);
    }
    h.tick(due);
    assert_eq!(state(&h, topic).leader, Some(s.replicas[1]));
    // The new leader adds it back to the ISR; at the next check it leads again.
    let p = proposal(&h, topic, &s.replicas);
    alter(&mut h, p).unwrap();
    h.now_ms = due + 1_000;
    for n in [1, 2, 3].map(NodeId) {
        heartbeat_from(&mut h, n);
    }
    h.tick(due + 1_000);
    assert_eq!(state(&h, topic).leader, Some(s.replicas[1]), "not due yet");
    let next = 2 * DEFAULT_LEADER_IMBALANCE_CHECK_INTERVAL_MS + 1;
    h.now_ms = next - 1_000;
    for n in [1, 2, 3].map(NodeId) {
        heartbeat_from(&mut h, n);
    }
    h.tick(next);
    let back = state(&h, topic);
    assert_eq!(back.leader, Some(preferred));
    assert_eq!(back.leader_epoch, LeaderEpoch(moved.leader_epoch.0 + 1));
    assert_eq!(back.isr, s.replicas, "the ISR is unchanged");
}

#[test]
fn no_rebalance_when_auto_leader_rebalance_is_off() {
    let mut config = ControllerConfig::new(NodeId(1));
    config.max_replication_factor = 3;
    config.auto_leader_rebalance_enable = false;
    let mut h = Harness::with_config(&[1, 2, 3], config);
    let topic = created(h.call(create("t", 1, 3)))[0]
        .as_ref()
        .unwrap()
        .topic
        .id;
    let s = state(&h, topic);
    silence(&mut h, &[s.replicas[0]]);
    heartbeat_from(&mut h, s.replicas[0]);
    let p = proposal(&h, topic, &s.replicas);
    alter(&mut h, p).unwrap();
    let next = 3 * DEFAULT_LEADER_IMBALANCE_CHECK_INTERVAL_MS;
    h.now_ms = next - 1_000;
    for n in [1, 2, 3].map(NodeId) {
        heartbeat_from(&mut h, n);
    }
    h.tick(next);
    assert_eq!(state(&h, topic).leader, Some(s.replicas[1]));
}

#[test]
fn replicas_and_leaders_spread_evenly_with_the_default_replication_factor() {
    let mut config = ControllerConfig::new(NodeId(1));
    config.max_replication_factor = 3;
    config.default_replication_factor = 3;
    let mut h = Harness::with_config(&[1, 2, 3], config);
    let topic = created(h.call(create("spread", 6, -1)))[0]
        .as_ref()
        .map(|c| {
            assert_eq!(c.replication_factor, 3);
            c.topic.id
        })
        .unwrap();
    let mut leaders = std::collections::BTreeMap::new();
    for p in h.committed.partitions(topic) {
        let mut distinct = p.replicas.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "{p:?}");
        assert_eq!(p.isr, p.replicas, "every replica starts in sync");
        assert_eq!(p.leader, Some(p.replicas[0]), "the preferred replica leads");
        *leaders.entry(p.replicas[0]).or_insert(0) += 1;
    }
    assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    // More replicas than registered brokers: Kafka's refusal.
    let refused = created(h.call(create("four", 1, 4)));
    assert!(
        matches!(&refused[0], Err(MetadataError::InvalidReplicationFactor(m)) if m.contains("only 3 broker(s)")),
        "{refused:?}"
    );
}
