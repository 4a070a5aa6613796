//! One member of a classic-protocol group.

use bytes::Bytes;

use super::api::{Protocol, Token};

/// Bytes of protocol names and metadata.
pub fn protocols_bytes(protocols: &[Protocol]) -> usize {
    protocols
        .iter()
        .map(|p| p.name.len() + p.metadata.len())
        .sum()
}

/// A joined member. Invariant: `protocols` is non-empty and in the member's preference order.
#[derive(Clone, Debug)]
pub struct Member {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<Protocol>,
    /// The leader's assignment for this member in the current generation.
    pub assignment: Bytes,
    /// A JoinGroup parked until the rebalance completes.
    pub join_waiter: Option<Token>,
    /// A SyncGroup parked until the leader's assignment arrives.
    pub sync_waiter: Option<Token>,
    /// Joined during the current rebalance and not yet given a generation.
    pub is_new: bool,
    /// When the member is removed unless it heartbeats (or a rebalance step excuses it).
    pub heartbeat_deadline_ms: Option<i64>,
}

impl Member {
    /// The member's metadata for `protocol`, empty if it does not support it.
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|p| p.name == protocol)
            .map(|p| p.metadata.clone())
            .unwrap_or_default()
    }

    /// Whether a rejoin carries exactly the protocols (names, order and metadata) it had.
    pub fn matches(&self, protocols: &[Protocol]) -> bool {
        self.protocols == protocols
    }

    /// The member's first-choice protocol among `candidates` (Kafka's `vote`).
    pub fn vote<'a>(&'a self, candidates: &[&str]) -> Option<&'a str> {
        self.protocols
            .iter()
            .map(|p| p.name.as_str())
            .find(|name| candidates.contains(name))
    }

    /// Bytes the member keeps in its group: its strings and its protocols' metadata.
    pub fn metadata_bytes(&self) -> usize {
        self.member_id.len()
            + self.group_instance_id.as_ref().map_or(0, String::len)
            + self.client_id.len()
            + self.client_host.len()
            + self.protocol_type.len()
            + protocols_bytes(&self.protocols)
    }

    /// A member waiting in a rebalance step needs no heartbeat; the rebalance timeout
    /// bounds the wait instead. A new member has no such excuse (Kafka's
    /// `hasSatisfiedHeartbeat`).
    pub fn excused_from_heartbeat(&self) -> bool {
        !self.is_new && (self.join_waiter.is_some() || self.sync_waiter.is_some())
    }
}
