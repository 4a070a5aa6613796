//! A deterministic stand-in for the cluster's controller: brokers register and heartbeat,
//! a silent broker is fenced after its session timeout, leaders are elected cleanly from
//! the ISR with a new leader epoch, and AlterPartition is checked and committed as
//! KRaft's controller does (KIP-497, KIP-903). It never fails; its messages to and from
//! the nodes go through the simulated network.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;

use crate::metadata::{LeaderEpoch, NodeId};
use crate::replica::{AlterPartitionAnswer, AlterPartitionProposal, LeaderAndIsr};

#[derive(Clone, Debug)]
pub struct Broker {
    pub broker_epoch: i64,
    pub incarnation: u64,
    pub last_heartbeat_ms: i64,
    pub fenced: bool,
}

#[derive(Debug)]
pub struct Controller {
    pub partitions: Vec<LeaderAndIsr>,
    pub brokers: BTreeMap<NodeId, Broker>,
    /// Grows with every change: the metadata log's offset.
    pub version: u64,
    next_broker_epoch: i64,
    pub session_timeout_ms: i64,
    pub elections: u64,
    pub isr_changes: u64,
    pub alter_refusals: u64,
}

impl Controller {
    /// Partitions on `nodes` (all in the ISR), each led by its first replica, which rotate.
    pub fn new(nodes: &[NodeId], partitions: usize, session_timeout_ms: i64) -> Controller {
        let partitions = (0..partitions)
            .map(|p| {
                let mut replicas = nodes.to_vec();
                replicas.rotate_left(p % nodes.len());
                LeaderAndIsr {
                    isr: replicas.clone(),
                    leader: None,
                    replicas,
                    leader_epoch: LeaderEpoch(0),
                    partition_epoch: 0,
                }
            })
            .collect();
        Controller {
            partitions,
            brokers: BTreeMap::new(),
            version: 1,
            next_broker_epoch: 1,
            session_timeout_ms,
            elections: 0,
            isr_changes: 0,
            alter_refusals: 0,
        }
    }

    fn alive(&self, node: NodeId) -> bool {
        self.brokers.get(&node).is_some_and(|b| !b.fenced)
    }

    /// A (re-)registration. A new process of a broker loses the leaderships of the old
    /// one (it has to catch up first, and it may have lost what it had not synced); it
    /// stays in the ISRs, because what it reported to leaders was on its disk. Another
    /// process than the registered one, while that one is still heard from, is refused
    /// (KRaft's DUPLICATE_BROKER_REGISTRATION): it retries.
    pub fn register(&mut self, node: NodeId, incarnation: u64, now_ms: i64) -> Option<i64> {
        if let Some(b) = self.brokers.get(&node) {
            if b.incarnation == incarnation {
                return Some(b.broker_epoch);
            }
            if !b.fenced && now_ms - b.last_heartbeat_ms <= self.session_timeout_ms {
                return None;
            }
        }
        let broker_epoch = self.next_broker_epoch;
        self.next_broker_epoch += 1;
        self.brokers.insert(
            node,
            Broker {
                broker_epoch,
                incarnation,
                last_heartbeat_ms: now_ms,
                fenced: true,
            },
        );
        for p in 0..self.partitions.len() {
            if self.partitions[p].leader == Some(node) {
                self.elect(p, None);
            }
        }
        self.unfence(node);
        self.version += 1;
        Some(broker_epoch)
    }

    /// A heartbeat; `false` if it comes from a registration that is no longer current
    /// (STALE_BROKER_EPOCH: that process must go).
    pub fn heartbeat(&mut self, node: NodeId, broker_epoch: i64, now_ms: i64) -> bool {
        let Some(b) = self.brokers.get_mut(&node) else {
            return false;
        };
        if b.broker_epoch != broker_epoch {
            return false;
        }
        b.last_heartbeat_ms = now_ms;
        if b.fenced {
            self.unfence(node);
        }
        true
    }

    fn unfence(&mut self, node: NodeId) {
        if let Some(b) = self.brokers.get_mut(&node) {
            b.fenced = false;
        }
        // Partitions without a leader take this broker if it is in their ISR.
        for p in 0..self.partitions.len() {
            let part = &self.partitions[p];
            if part.leader.is_none() && part.isr.contains(&node) {
                self.elect(p, None);
            }
        }
        self.version += 1;
    }

    /// Fences brokers silent past the session timeout: they lose their leaderships and
    /// leave every ISR in which they are not the last member.
    pub fn tick(&mut self, now_ms: i64) {
        let silent: Vec<NodeId> = self
            .brokers
            .iter()
            .filter(|(_, b)| !b.fenced && now_ms - b.last_heartbeat_ms > self.session_timeout_ms)
            .map(|(&n, _)| n)
            .collect();
        for node in silent {
            self.brokers.get_mut(&node).expect("listed above").fenced = true;
            for p in 0..self.partitions.len() {
                let part = &mut self.partitions[p];
                let mut changed = false;
                if part.isr.contains(&node) && part.isr.len() > 1 {
                    part.isr.retain(|&n| n != node);
                    changed = true;
                }
                if part.leader == Some(node) {
                    self.elect(p, Some(node));
                } else if changed {
                    self.partitions[p].partition_epoch += 1;
                    self.isr_changes += 1;
                }
            }
            self.version += 1;
        }
    }

    /// A clean election: the first replica in the ISR on a live broker, other than
    /// `excluded`, with the next leader epoch; none if there is no such replica.
    fn elect(&mut self, p: usize, excluded: Option<NodeId>) {
        let part = &self.partitions[p];
        let leader = part
            .replicas
            .iter()
            .copied()
            .find(|&n| part.isr.contains(&n) && Some(n) != excluded && self.alive(n));
        let part = &mut self.partitions[p];
        if leader.is_none() && part.leader.is_none() {
            return;
        }
        part.leader = leader;
        part.leader_epoch = LeaderEpoch(part.leader_epoch.0 + 1);
        part.partition_epoch += 1;
        self.elections += 1;
    }

    /// KRaft's AlterPartition checks, then the change.
    pub fn alter_partition(
        &mut self,
        from: NodeId,
        p: usize,
        proposal: &AlterPartitionProposal,
    ) -> AlterPartitionAnswer {
        let answer = self.check_alter_partition(from, p, proposal);
        if matches!(answer, AlterPartitionAnswer::Error(_)) {
            self.alter_refusals += 1;
        }
        answer
    }

    fn check_alter_partition(
        &mut self,
        from: NodeId,
        p: usize,
        proposal: &AlterPartitionProposal,
    ) -> AlterPartitionAnswer {
        let refuse = AlterPartitionAnswer::Error;
        let Some(part) = self.partitions.get(p) else {
            return refuse(ResponseError::UnknownTopicOrPartition);
        };
        if !self.alive(from) {
            return refuse(ResponseError::StaleBrokerEpoch);
        }
        if proposal.leader_epoch < part.leader_epoch {
            return refuse(ResponseError::FencedLeaderEpoch);
        }
        if part.leader != Some(from) || proposal.leader_epoch != part.leader_epoch {
            return refuse(ResponseError::InvalidRequest);
        }
        if proposal.partition_epoch != part.partition_epoch {
            return refuse(ResponseError::InvalidUpdateVersion);
        }
        let new_isr: Vec<NodeId> = proposal.new_isr.iter().map(|m| m.node).collect();
        if !new_isr.contains(&from) || new_isr.iter().any(|n| !part.replicas.contains(n)) {
            return refuse(ResponseError::InvalidRequest);
        }
        for member in &proposal.new_isr {
            let eligible = self.brokers.get(&member.node).is_some_and(|b| {
                !b.fenced && (member.broker_epoch == -1 || member.broker_epoch == b.broker_epoch)
            });
            if !eligible {
                // As the real controller: the refusal moves the partition epoch on, so an
                // earlier copy of the proposal still on its way cannot be committed later.
                let part = &mut self.partitions[p];
                part.partition_epoch += 1;
                self.version += 1;
                return refuse(ResponseError::IneligibleReplica);
            }
        }
        let part = &mut self.partitions[p];
        let mut sorted = new_isr.clone();
        sorted.sort();
        let mut current = part.isr.clone();
        current.sort();
        if sorted != current {
            part.isr = new_isr;
            part.partition_epoch += 1;
            self.isr_changes += 1;
            self.version += 1;
        }
        AlterPartitionAnswer::Committed {
            isr: part.isr.clone(),
            leader_epoch: part.leader_epoch,
            partition_epoch: part.partition_epoch,
        }
    }

    /// Brokers that may not join an ISR.
    pub fn ineligible(&self) -> Vec<NodeId> {
        self.brokers
            .iter()
            .filter(|(_, b)| b.fenced)
            .map(|(&n, _)| n)
            .collect()
    }
}
