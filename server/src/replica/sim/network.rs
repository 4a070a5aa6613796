//! The simulated network: every message is delayed at random (so messages overtake each
//! other), some are lost, some delivered twice, and links between endpoints are cut for a
//! while and heal. Replication frames travel as the bytes the codec makes; some arrive
//! with a bit flipped.

use std::collections::BTreeSet;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;

use super::rng::Rng;
use crate::metadata::NodeId;
use crate::replica::{Acks, AlterPartitionAnswer, AlterPartitionProposal, LeaderAndIsr};

/// Who sends and receives: the controller, a node, or a producer.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Controller,
    Node(usize),
    Producer(usize),
}

#[derive(Clone, Debug)]
pub enum Msg {
    /// A fetch request frame (after its length field) on connection `generation`.
    Fetch {
        generation: u64,
        frame: Bytes,
    },
    FetchResponse {
        generation: u64,
        frame: Bytes,
    },
    /// The leader closed connection `generation` (a bad frame): the follower sees a reset.
    ConnectionClosed {
        generation: u64,
    },
    Produce {
        request: u64,
        partition: usize,
        acks: Acks,
        values: Vec<u64>,
    },
    ProduceAnswer {
        request: u64,
        /// The base offset, or the error.
        result: Result<i64, ResponseError>,
    },
    AlterPartition {
        incarnation: u64,
        partition: usize,
        proposal: AlterPartitionProposal,
    },
    AlterPartitionAnswer {
        incarnation: u64,
        partition: usize,
        proposal: AlterPartitionProposal,
        answer: AlterPartitionAnswer,
    },
    Register {
        incarnation: u64,
    },
    Registered {
        incarnation: u64,
        broker_epoch: i64,
        version: u64,
    },
    Heartbeat {
        broker_epoch: i64,
    },
    /// The controller no longer knows that registration: the process must stop.
    StaleBrokerEpoch {
        broker_epoch: i64,
    },
    MetadataFetch,
    Metadata {
        version: u64,
        partitions: Vec<LeaderAndIsr>,
        ineligible: Vec<NodeId>,
    },
}

#[derive(Debug)]
pub struct Network {
    /// Cut links (smaller endpoint first).
    cuts: BTreeSet<(Endpoint, Endpoint)>,
    pub loss_per_mille: u64,
    pub duplicate_per_mille: u64,
    pub corrupt_per_mille: u64,
    pub max_delay_ms: i64,
    pub stall_per_mille: u64,
}

impl Network {
    pub fn new(
        loss_per_mille: u64,
        duplicate_per_mille: u64,
        corrupt_per_mille: u64,
        max_delay_ms: i64,
        stall_per_mille: u64,
    ) -> Network {
        Network {
            cuts: BTreeSet::new(),
            loss_per_mille,
            duplicate_per_mille,
            corrupt_per_mille,
            max_delay_ms,
            stall_per_mille,
        }
    }

    fn key(a: Endpoint, b: Endpoint) -> (Endpoint, Endpoint) {
        if a <= b {
            (a, b)
        } else {
            (b, a)
        }
    }

    pub fn connected(&self, a: Endpoint, b: Endpoint) -> bool {
        !self.cuts.contains(&Network::key(a, b))
    }

    pub fn cut(&mut self, a: Endpoint, b: Endpoint) {
        if a != b {
            self.cuts.insert(Network::key(a, b));
        }
    }

    pub fn heal_all(&mut self) {
        self.cuts.clear();
    }

    /// The delays at which a message sent now arrives: none (lost), one, or two copies.
    pub fn delays(&self, rng: &mut Rng) -> Vec<i64> {
        if rng.per_mille(self.loss_per_mille) {
            return Vec::new();
        }
        let mut delays = vec![self.delay(rng)];
        if rng.per_mille(self.duplicate_per_mille) {
            delays.push(self.delay(rng));
        }
        delays
    }

    fn delay(&self, rng: &mut Rng) -> i64 {
        if rng.per_mille(self.stall_per_mille) {
            rng.range(100, 800)
        } else {
            rng.range(1, self.max_delay_ms + 1)
        }
    }
}

/// Flips one bit of a response frame (after its length field) where a check must catch
/// it: in the header (its CRC-32C) or in a batch's CRC-covered bytes. The 21 bytes of a
/// batch that its CRC does not cover are left alone but for offsets, length, magic and
/// CRC, which the follower's other checks catch; a flipped `partitionLeaderEpoch` could
/// pass as another plausible epoch (as in Kafka, which relies on TCP's checksum there).
pub fn corrupt_response(frame: &Bytes, rng: &mut Rng) -> Bytes {
    let mut bytes = frame.to_vec();
    if bytes.len() < 8 {
        return frame.clone();
    }
    let header_length = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let payload_start = 8 + header_length;
    let mut targets: Vec<(usize, usize)> = vec![(4, payload_start.min(bytes.len()))];
    if payload_start < bytes.len() {
        let payload = &bytes[payload_start..];
        for (position, batch) in wharf_protocol::batch::batches(payload) {
            let at = payload_start + position;
            // baseOffset, batchLength, magic and crc; then attributes..end.
            targets.push((at, at + 12));
            targets.push((at + 16, at + batch.len()));
        }
    }
    let (from, to) = targets[rng.index(targets.len())];
    if to <= from {
        return frame.clone();
    }
    let i = rng.range(from as i64, to as i64) as usize;
    bytes[i] ^= 1 << rng.index(8);
    Bytes::from(bytes)
}
