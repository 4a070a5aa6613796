//! Partition leaders asking the controller for ISR changes (AlterPartition, KIP-497) from
//! what their broker's image says, as the data plane's replicas do: often a little stale,
//! now and then wrong on purpose.

use super::*;
use crate::controller::image::ClusterImage;
use crate::metadata::cluster::PartitionState;
use crate::metadata::{PartitionId, TopicId};

impl World {
    /// This broker's view of the committed metadata: its voter's image, or what it has
    /// followed.
    fn broker_view(&self, b: usize) -> Option<&ClusterImage> {
        let broker = &self.brokers[b];
        match (broker.voter, &broker.follower) {
            (Some(i), _) => self.nodes[i].live.as_ref().map(|n| n.image()),
            (None, Some(f)) => Some(f.image()),
            (None, None) => None,
        }
    }

    pub(super) fn lead(&mut self, b: usize) {
        let next = self.rng.range(200, 800) as i64;
        self.schedule(next, Event::Lead(b));
        let key = caller_key(Caller::Leader(b));
        let busy = self.outstanding.keys().any(|(c, _)| *c == key);
        if busy || !self.brokers[b].up {
            return;
        }
        let Some(request) = self.alter_partition_request(b) else {
            return;
        };
        let to = self.brokers[b].target.unwrap_or_else(|| self.random_live());
        self.send(Caller::Leader(b), to, Sent::Request(request), 0);
    }

    fn alter_partition_request(&mut self, b: usize) -> Option<ControllerRequest> {
        let me = self.brokers[b].id;
        let broker_epoch = self.brokers[b].epoch?;
        // Now and then a follower asks, as if it still thought it led.
        let as_follower = self.rng.chance(1, 10);
        let view = self.broker_view(b)?;
        let led: Vec<(String, TopicId, PartitionId, PartitionState)> = view
            .all_partitions()
            .filter(|(_, _, s)| {
                if as_follower {
                    s.leader != Some(me) && s.replicas.contains(&me)
                } else {
                    s.leader == Some(me)
                }
            })
            .filter_map(|(t, p, s)| {
                let name = view.topic_by_id(t)?.name.clone();
                Some((name, t, p, s.clone()))
            })
            .collect();
        let epochs: BTreeMap<NodeId, i64> = view
            .brokers()
            .map(|r| (r.node_id, r.broker_epoch))
            .collect();
        let fenced: Vec<NodeId> = view
            .brokers()
            .filter(|r| r.fenced)
            .map(|r| r.node_id)
            .collect();
        if led.is_empty() {
            return None;
        }
        let (name, topic, partition, state) =
            led[self.rng.range(0, led.len() as u64) as usize].clone();
        let mut isr = state.isr.clone();
        match self.rng.range(0, 10) {
            // Shrink: a follower falls behind.
            0..=3 => {
                let followers: Vec<NodeId> = isr.iter().copied().filter(|n| *n != me).collect();
                if !followers.is_empty() {
                    let out = followers[self.rng.range(0, followers.len() as u64) as usize];
                    isr.retain(|n| *n != out);
                }
            }
            // Expand: a follower caught up; or one the leader still counts as fetching
            // although the controller has fenced it (it must be refused).
            4..=7 => {
                let fenced_first = self.rng.chance(1, 3);
                let mut outside: Vec<NodeId> = state
                    .replicas
                    .iter()
                    .copied()
                    .filter(|n| !isr.contains(n))
                    .collect();
                if fenced_first && outside.iter().any(|n| fenced.contains(n)) {
                    outside.retain(|n| fenced.contains(n));
                }
                if !outside.is_empty() {
                    isr.push(outside[self.rng.range(0, outside.len() as u64) as usize]);
                }
            }
            // Wrong on purpose: a broker that is not a replica, or the leader left out.
            8 => {
                if self.rng.chance(1, 2) {
                    isr.push(NodeId(77));
                } else {
                    isr.retain(|n| *n != me);
                }
            }
            // The same ISR again.
            _ => {}
        }
        let new_isr = isr
            .into_iter()
            .map(|n| IsrMember {
                node: n,
                broker_epoch: match self.rng.range(0, 20) {
                    0..=3 => -1,
                    4 => 12_345,
                    _ => epochs.get(&n).copied().unwrap_or(-1),
                },
            })
            .collect();
        let version = self.rng.range(0, 4) as i16;
        Some(ControllerRequest::AlterPartition(AlterPartition {
            version,
            broker: me,
            broker_epoch,
            topics: vec![AlterPartitionTopic {
                topic: if version < 2 {
                    TopicRef::Name(name)
                } else {
                    TopicRef::Id(topic)
                },
                partitions: vec![AlterPartitionItem {
                    partition,
                    leader_epoch: state.leader_epoch,
                    partition_epoch: state.partition_epoch,
                    new_isr,
                    leader_recovery_state: 0,
                }],
            }],
        }))
    }
}
