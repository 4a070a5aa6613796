//! What a cluster adds to a topic's metadata: each partition's replicas, in-sync replicas,
//! leader and epochs, and the registered brokers. Written by the controller's metadata log
//! (`crate::controller`), read by every node.

use crate::metadata::{LeaderEpoch, NodeId};

pub use wharf_protocol::controller::Listener;

/// The listener names a broker registers (KRaft's `listener.security.protocol.map` names).
pub const CLIENT_LISTENER: &str = "PLAINTEXT";
pub const CONTROLLER_LISTENER: &str = "CONTROLLER";
pub const REPLICATION_LISTENER: &str = "REPLICATION";

/// One partition's placement and leadership (Kafka's PartitionRegistration).
///
/// Invariants the controller keeps: `replicas` is non-empty and has no duplicates; `isr` is a
/// non-empty subset of `replicas`; `leader`, if any, is in `isr`; `leader_epoch` grows by one
/// whenever the leader changes and `partition_epoch` whenever anything changes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PartitionState {
    /// The brokers that hold a replica, the preferred leader first.
    pub replicas: Vec<NodeId>,
    /// The replicas in sync with the leader (all of them, until replication exists).
    pub isr: Vec<NodeId>,
    /// `None` while no in-sync replica is on an unfenced broker (the partition is offline;
    /// Kafka's leader -1).
    pub leader: Option<NodeId>,
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: i32,
}

impl PartitionState {
    /// The leader as Kafka's wire fields carry it: -1 for none.
    pub fn leader_id(&self) -> i32 {
        self.leader.map_or(-1, |n| n.0)
    }
}

/// A registered broker (Kafka's BrokerRegistration).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BrokerRegistration {
    pub node_id: NodeId,
    /// Random per process start: tells a restarted broker from the one before it.
    pub incarnation_id: u128,
    /// The metadata log offset of the registration (Kafka's broker epoch). Heartbeats carry
    /// it; one from an older registration is refused.
    pub broker_epoch: i64,
    pub listeners: Vec<Listener>,
    pub rack: Option<String>,
    /// A fenced broker leads nothing and is not given new replicas.
    pub fenced: bool,
}

impl BrokerRegistration {
    /// The address of the listener called `name`, if the broker has one.
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }
}
