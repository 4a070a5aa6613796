//! Broker liveness as KRaft has it (KIP-631): brokers register, then heartbeat every
//! `broker.heartbeat.interval.ms`; one silent for `broker.session.timeout.ms` is fenced. A
//! fenced broker leads nothing: its partitions get another leader from their ISR where one
//! is usable, else none (offline). A broker is unfenced once its heartbeat shows it has
//! applied the metadata log up to its own registration, and takes back the leadership of
//! partitions left without one (with a new leader epoch).
//!
//! Session deadlines live only on the active controller, not in the metadata log: a newly
//! elected controller gives every registered broker a fresh session timeout.

use std::collections::BTreeMap;

use crate::controller::image::ClusterImage;
use crate::controller::records::MetadataRecord;
use crate::metadata::cluster::PartitionState;
use crate::metadata::{LeaderEpoch, NodeId, TopicId};

/// Kafka's default `broker.session.timeout.ms`.
pub const DEFAULT_SESSION_TIMEOUT_MS: i64 = 9_000;

/// Kafka's default `broker.heartbeat.interval.ms`.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: i64 = 2_000;

/// Each registered broker's session deadline on the active controller.
#[derive(Clone, Debug, Default)]
pub struct Sessions {
    timeout_ms: i64,
    deadlines_ms: BTreeMap<NodeId, i64>,
}

impl Sessions {
    pub fn new(timeout_ms: i64) -> Sessions {
        Sessions {
            timeout_ms,
            deadlines_ms: BTreeMap::new(),
        }
    }

    /// A new controller's view: every registered broker gets a full timeout from `now_ms`.
    pub fn reset_all(&mut self, brokers: impl IntoIterator<Item = NodeId>, now_ms: i64) {
        self.deadlines_ms = brokers
            .into_iter()
            .map(|b| (b, now_ms.saturating_add(self.timeout_ms)))
            .collect();
    }

    /// Moves every deadline `ms` later: time in which this controller could not work (its
    /// log could not be written) does not count against the brokers. A session that had run
    /// out before the pause has still run out after it.
    pub fn pause(&mut self, ms: i64) {
        for deadline in self.deadlines_ms.values_mut() {
            *deadline = deadline.saturating_add(ms.max(0));
        }
    }

    /// A heartbeat or registration from `node`.
    pub fn touch(&mut self, node: NodeId, now_ms: i64) {
        self.deadlines_ms
            .insert(node, now_ms.saturating_add(self.timeout_ms));
    }

    pub fn remove(&mut self, node: NodeId) {
        self.deadlines_ms.remove(&node);
    }

    /// Whether `node` has been heard from within the session timeout.
    pub fn is_alive(&self, node: NodeId, now_ms: i64) -> bool {
        self.deadlines_ms.get(&node).is_some_and(|d| *d > now_ms)
    }

    /// Brokers whose session ran out by `now_ms`, in id order.
    pub fn expired(&self, now_ms: i64) -> impl Iterator<Item = NodeId> + '_ {
        self.deadlines_ms
            .iter()
            .filter(move |(_, d)| **d <= now_ms)
            .map(|(n, _)| *n)
    }
}

/// The preferred usable leader of a partition: the first replica, in replica order, that is
/// in the ISR and passes `usable`.
pub fn choose_leader(state: &PartitionState, usable: impl Fn(NodeId) -> bool) -> Option<NodeId> {
    state
        .replicas
        .iter()
        .copied()
        .find(|r| state.isr.contains(r) && usable(*r))
}

/// Kafka's most elections written in one change by a periodic election (its
/// `maxElectionsPerImbalance`); the rest follow in the next change at once.
pub const MAX_ELECTIONS_PER_CHANGE: usize = 1_000;

/// `old` changed to `isr` and `leader`, with its epochs moved on; `None` if nothing changes.
fn change(
    old: &PartitionState,
    isr: Vec<NodeId>,
    leader: Option<NodeId>,
) -> Option<PartitionState> {
    if isr == old.isr && leader == old.leader {
        return None;
    }
    let leader_epoch = if leader != old.leader {
        LeaderEpoch(old.leader_epoch.0 + 1)
    } else {
        old.leader_epoch
    };
    Some(PartitionState {
        replicas: old.replicas.clone(),
        isr,
        leader,
        leader_epoch,
        partition_epoch: old.partition_epoch + 1,
    })
}

/// Kafka's `PartitionChangeBuilder` election (without eligible leader replicas): the
/// current leader stays if it is in `isr` and `acceptable`; otherwise the first replica, in
/// replica order, that is; otherwise, when `unclean` (the topic's
/// `unclean.leader.election.enable`), the first acceptable replica at all, which becomes
/// the whole ISR — it may lack records the old ISR acknowledged (data loss); otherwise no
/// leader (the partition is offline). Returns the new ISR and leader.
pub fn elect(
    state: &PartitionState,
    isr: Vec<NodeId>,
    acceptable: impl Fn(NodeId) -> bool,
    unclean: bool,
) -> (Vec<NodeId>, Option<NodeId>) {
    if let Some(l) = state.leader.filter(|l| isr.contains(l) && acceptable(*l)) {
        return (isr, Some(l));
    }
    if let Some(l) = state
        .replicas
        .iter()
        .copied()
        .find(|r| isr.contains(r) && acceptable(*r))
    {
        return (isr, Some(l));
    }
    if unclean {
        if let Some(l) = state.replicas.iter().copied().find(|r| acceptable(*r)) {
            return (vec![l], Some(l));
        }
    }
    (isr, None)
}

/// The partition changes that take `node` out of leadership and out of every ISR it is in
/// (KRaft keeps the last ISR member, so the partition can come back with it). A partition
/// left without an acceptable ISR member goes offline, or, where `unclean(topic)`, is led by
/// another live replica.
pub fn leave_partitions(
    image: &ClusterImage,
    node: NodeId,
    unclean: impl Fn(TopicId) -> bool,
) -> Vec<MetadataRecord> {
    let acceptable = |n: NodeId| n != node && image.is_usable(n);
    let mut records = Vec::new();
    for (topic, partition, state) in image.all_partitions() {
        if state.leader != Some(node) && !state.isr.contains(&node) {
            continue;
        }
        let isr: Vec<NodeId> = if state.isr.len() > 1 {
            state.isr.iter().copied().filter(|n| *n != node).collect()
        } else {
            state.isr.clone()
        };
        let (isr, leader) = elect(state, isr, acceptable, unclean(topic));
        if let Some(new) = change(state, isr, leader) {
            records.push(MetadataRecord::Partition {
                topic,
                partition,
                state: new,
            });
        }
    }
    records
}

/// Fences `node`: the fence record, then its partitions' new leaders.
pub fn fence_records(
    image: &ClusterImage,
    node: NodeId,
    unclean: impl Fn(TopicId) -> bool,
) -> Vec<MetadataRecord> {
    let mut records = vec![MetadataRecord::BrokerFenced { node }];
    records.extend(leave_partitions(image, node, unclean));
    records
}

/// Unfences `node`: the unfence record, then a leader for every partition that has none:
/// `node` (or another live member) where it is in the ISR, or, where `unclean(topic)`, any
/// live replica (Kafka's `handleBrokerUnfenced`).
pub fn unfence_records(
    image: &ClusterImage,
    node: NodeId,
    unclean: impl Fn(TopicId) -> bool,
) -> Vec<MetadataRecord> {
    let acceptable = |n: NodeId| n == node || image.is_usable(n);
    let mut records = vec![MetadataRecord::BrokerUnfenced { node }];
    for (topic, partition, state) in image.all_partitions() {
        if state.leader.is_some() {
            continue;
        }
        let (isr, leader) = elect(state, state.isr.clone(), acceptable, unclean(topic));
        if let Some(new) = change(state, isr, leader) {
            records.push(MetadataRecord::Partition {
                topic,
                partition,
                state: new,
            });
        }
    }
    records
}

/// Unclean elections for partitions without a leader whose topic allows them (Kafka's
/// `maybeElectUncleanLeaders`, run periodically so that turning
/// `unclean.leader.election.enable` on brings offline partitions back): at most `max`.
pub fn unclean_election_records(
    image: &ClusterImage,
    unclean: impl Fn(TopicId) -> bool,
    max: usize,
) -> Vec<MetadataRecord> {
    let acceptable = |n: NodeId| image.is_usable(n);
    let mut records = Vec::new();
    for (topic, partition, state) in image.all_partitions() {
        if records.len() >= max {
            break;
        }
        if state.leader.is_some() || !unclean(topic) {
            continue;
        }
        let (isr, leader) = elect(state, state.isr.clone(), acceptable, true);
        if let Some(new) = change(state, isr, leader) {
            tracing::warn!(
                topic = %topic.0,
                partition = partition.0,
                leader = new.leader_id(),
                "unclean leader election: an out-of-sync replica leads, records acknowledged by the old in-sync replicas may be lost"
            );
            records.push(MetadataRecord::Partition {
                topic,
                partition,
                state: new,
            });
        }
    }
    records
}

/// Preferred-leader elections (`auto.leader.rebalance.enable`, Kafka's
/// `maybeBalancePartitionLeaders`): a partition led by another replica than its first one
/// moves back to the first once it is in the ISR and on an unfenced broker. At most `max`.
pub fn preferred_leader_records(image: &ClusterImage, max: usize) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for (topic, partition, state) in image.all_partitions() {
        if records.len() >= max {
            break;
        }
        let Some(&preferred) = state.replicas.first() else {
            continue;
        };
        if state.leader == Some(preferred)
            || !state.isr.contains(&preferred)
            || !image.is_usable(preferred)
        {
            continue;
        }
        if let Some(new) = change(state, state.isr.clone(), Some(preferred)) {
            records.push(MetadataRecord::Partition {
                topic,
                partition,
                state: new,
            });
        }
    }
    records
}

/// Whether any partition is led by another replica than its first, which could lead.
pub fn leaders_imbalanced(image: &ClusterImage) -> bool {
    !preferred_leader_records(image, 1).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::cluster::BrokerRegistration;
    use crate::metadata::{PartitionId, TopicId};

    fn topic() -> TopicId {
        TopicId(uuid::Uuid::from_u128(11))
    }

    fn image(partitions: &[(&[i32], &[i32], i32)]) -> ClusterImage {
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
                fenced: false,
            }));
        }
        records.push(MetadataRecord::TopicCreated {
            name: "t".into(),
            id: topic(),
            configs: Default::default(),
            internal: false,
        });
        for (p, (replicas, isr, leader)) in partitions.iter().enumerate() {
            records.push(MetadataRecord::Partition {
                topic: topic(),
                partition: PartitionId(p as i32),
                state: PartitionState {
                    replicas: replicas.iter().copied().map(NodeId).collect(),
                    isr: isr.iter().copied().map(NodeId).collect(),
                    leader: (*leader >= 0).then_some(NodeId(*leader)),
                    leader_epoch: LeaderEpoch(0),
                    partition_epoch: 0,
                },
            });
        }
        let mut image = ClusterImage::empty();
        assert_eq!(image.apply(1, 1, &records), vec![]);
        image
    }

    fn apply(image: &mut ClusterImage, records: &[MetadataRecord]) {
        let offset = image.applied_offset() + 1;
        assert_eq!(image.apply(offset, 1, records), vec![]);
        image.check_invariants().unwrap();
    }

    #[test]
    fn a_pause_of_the_controller_does_not_count_against_sessions() {
        let mut s = Sessions::new(9_000);
        s.touch(NodeId(1), 0);
        s.touch(NodeId(2), 5_000);
        // Node 1's session ran out at 9 000, before the controller stalled at 10 000.
        s.pause(60_000);
        assert!(!s.is_alive(NodeId(1), 70_000));
        assert!(s.is_alive(NodeId(2), 70_000));
        assert!(!s.is_alive(NodeId(2), 74_000));
        assert_eq!(s.expired(70_000).collect::<Vec<_>>(), vec![NodeId(1)]);
    }

    #[test]
    fn sessions_expire_after_the_timeout_and_reset_for_a_new_controller() {
        let mut s = Sessions::new(9_000);
        s.touch(NodeId(1), 0);
        s.touch(NodeId(2), 5_000);
        assert!(s.is_alive(NodeId(1), 8_999));
        assert_eq!(s.expired(9_000).collect::<Vec<_>>(), vec![NodeId(1)]);
        s.reset_all([NodeId(1), NodeId(2)], 10_000);
        assert_eq!(s.expired(18_999).count(), 0);
        assert_eq!(s.expired(19_000).count(), 2);
    }

    #[test]
    fn fencing_moves_leadership_to_another_isr_member_or_takes_the_partition_offline() {
        let mut img = image(&[
            (&[1], &[1], 1),
            (&[1, 2], &[1, 2], 1),
            (&[2, 1], &[2, 1], 2),
        ]);
        let records = fence_records(&img, NodeId(1), |_| false);
        apply(&mut img, &records);
        let p = |i| img.partition(topic(), PartitionId(i)).unwrap().clone();
        // RF=1: offline, the last ISR member kept, a new leader epoch.
        assert_eq!(p(0).leader, None);
        assert_eq!(p(0).isr, vec![NodeId(1)]);
        assert_eq!(p(0).leader_epoch, LeaderEpoch(1));
        // The other ISR member leads.
        assert_eq!(p(1).leader, Some(NodeId(2)));
        assert_eq!(p(1).isr, vec![NodeId(2)]);
        // Leader unchanged, follower leaves the ISR, same leader epoch.
        assert_eq!(p(2).leader, Some(NodeId(2)));
        assert_eq!(p(2).isr, vec![NodeId(2)]);
        assert_eq!(p(2).leader_epoch, LeaderEpoch(0));
        assert_eq!(p(2).partition_epoch, 1);
    }

    #[test]
    fn unfencing_gives_leaderless_partitions_back_with_a_new_epoch() {
        let mut img = image(&[(&[1], &[1], 1), (&[2], &[2], 2)]);
        let fence = fence_records(&img, NodeId(1), |_| false);
        apply(&mut img, &fence);
        let unfence = unfence_records(&img, NodeId(1), |_| false);
        apply(&mut img, &unfence);
        let p0 = img.partition(topic(), PartitionId(0)).unwrap();
        assert_eq!(p0.leader, Some(NodeId(1)));
        assert_eq!(p0.leader_epoch, LeaderEpoch(2));
        assert_eq!(p0.partition_epoch, 2);
        let p1 = img.partition(topic(), PartitionId(1)).unwrap();
        assert_eq!(p1.partition_epoch, 0, "untouched");
    }
}
