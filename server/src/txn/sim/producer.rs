//! A transactional producer as the simulator plays it: the shape of Kafka's
//! `TransactionManager` (InitProducerId, then transactions of AddPartitionsToTxn,
//! AddOffsetsToTxn, produce requests and EndTxn, one coordinator request at a time, every
//! produce answered before EndTxn), with the faults real applications have: a second
//! instance of the same transactional id starting (fencing the first), stalls longer than
//! the transaction timeout, writes to partitions never added, and fenced instances that
//! keep writing for a while.

use std::collections::BTreeSet;

use kafka_protocol::error::ResponseError;

use super::rng::Rng;
use crate::txn::api::{Token, TopicPartition};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// No instance runs in this slot.
    Idle,
    /// Waiting for InitProducerId.
    Initializing,
    /// Has a producer id and epoch; no transaction.
    Ready,
    InTxn,
    /// Waiting for EndTxn.
    Ending,
    /// Fenced or failed for good.
    Dead,
}

/// What a producer does next.
#[derive(Clone, Debug)]
pub(super) enum Action {
    /// Nothing now; think again after this many ms.
    Wait(i64),
    /// A new instance of the application: InitProducerId without an id.
    Start,
    /// KIP-360: InitProducerId with its own id and epoch, after an aborted transaction.
    Reinit,
    Begin,
    Add(Vec<TopicPartition>),
    AddOffsets(String),
    Produce(TopicPartition),
    End {
        commit: bool,
    },
    /// A write by a producer that does not know (or ignores) it was fenced, or that never
    /// added the partition.
    Stray(TopicPartition),
    /// Done for this run.
    Stop,
}

/// How a producer reacts to an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reaction {
    Retry,
    Abortable,
    Fatal,
}

pub(super) fn classify(error: ResponseError) -> Reaction {
    match error {
        ResponseError::CoordinatorLoadInProgress
        | ResponseError::CoordinatorNotAvailable
        | ResponseError::NotCoordinator
        | ResponseError::ConcurrentTransactions
        | ResponseError::NetworkException
        | ResponseError::NotEnoughReplicas
        | ResponseError::RequestTimedOut => Reaction::Retry,
        ResponseError::TransactionAbortable
        | ResponseError::OperationNotAttempted
        | ResponseError::UnknownTopicOrPartition => Reaction::Abortable,
        _ => Reaction::Fatal,
    }
}

pub(super) struct Producer {
    pub transactional_id: String,
    /// 0 until the first instance starts; each start is a new instance.
    pub incarnation: u64,
    pub phase: Phase,
    pub producer_id: i64,
    pub epoch: i16,
    pub timeout_ms: i32,
    /// Transactions begun by this instance; the current one's number.
    pub txn_seq: u64,
    /// Partitions the coordinator accepted into the current transaction.
    pub added: BTreeSet<TopicPartition>,
    /// The coordinator has an open transaction for this one (something was added).
    pub coordinator_txn: bool,
    /// The coordinator request waiting for an answer.
    pub pending: Option<Token>,
    /// Produce requests waiting for an answer.
    pub outstanding: usize,
    /// The transaction can only be aborted.
    pub abortable: bool,
    pub stalled_until_ms: i64,
    /// Writes a fenced instance still makes before it notices.
    pub strays: u32,
}

impl Producer {
    pub fn new(transactional_id: String) -> Producer {
        Producer {
            transactional_id,
            incarnation: 0,
            phase: Phase::Idle,
            producer_id: -1,
            epoch: -1,
            timeout_ms: 0,
            txn_seq: 0,
            added: BTreeSet::new(),
            coordinator_txn: false,
            pending: None,
            outstanding: 0,
            abortable: false,
            stalled_until_ms: 0,
            strays: 0,
        }
    }

    /// The instance was fenced or failed: it stops, perhaps after a few stray writes.
    pub fn die(&mut self, rng: &mut Rng) {
        self.phase = Phase::Dead;
        self.pending = None;
        self.strays = if rng.chance(1, 3) {
            rng.range(1, 4) as u32
        } else {
            0
        };
    }

    pub fn decide(
        &mut self,
        rng: &mut Rng,
        now_ms: i64,
        calm: bool,
        partitions: &[TopicPartition],
        groups: &[String],
    ) -> Action {
        if self.pending.is_some() {
            return Action::Wait(rng.range(20, 200));
        }
        if now_ms < self.stalled_until_ms {
            return Action::Wait(self.stalled_until_ms - now_ms);
        }
        match self.phase {
            Phase::Idle | Phase::Dead => {
                if self.strays > 0 && !partitions.is_empty() {
                    self.strays -= 1;
                    return Action::Stray(partitions[rng.index(partitions.len())].clone());
                }
                if calm {
                    Action::Stop
                } else if rng.chance(1, 4) {
                    Action::Start
                } else {
                    Action::Wait(rng.range(200, 2000))
                }
            }
            Phase::Initializing | Phase::Ending => Action::Wait(rng.range(20, 200)),
            Phase::Ready => {
                if calm {
                    Action::Stop
                } else if rng.chance(1, 12) {
                    Action::Reinit
                } else {
                    Action::Begin
                }
            }
            Phase::InTxn => {
                if self.outstanding == 0 && (self.abortable || calm) {
                    return if self.coordinator_txn {
                        Action::End {
                            commit: !self.abortable,
                        }
                    } else {
                        Action::End { commit: false }
                    };
                }
                if self.abortable || calm {
                    return Action::Wait(rng.range(10, 100));
                }
                let roll = rng.range(0, 100);
                if roll < 20 {
                    let mut wanted = Vec::new();
                    for _ in 0..rng.range(1, 3) {
                        let tp = &partitions[rng.index(partitions.len())];
                        if !self.added.contains(tp) && !wanted.contains(tp) {
                            wanted.push(tp.clone());
                        }
                    }
                    if wanted.is_empty() {
                        Action::Wait(rng.range(5, 50))
                    } else {
                        Action::Add(wanted)
                    }
                } else if roll < 25 {
                    Action::AddOffsets(groups[rng.index(groups.len())].clone())
                } else if roll < 75 {
                    let data: Vec<&TopicPartition> = self
                        .added
                        .iter()
                        .filter(|tp| partitions.contains(tp))
                        .collect();
                    if rng.chance(1, 40) {
                        Action::Stray(partitions[rng.index(partitions.len())].clone())
                    } else if data.is_empty() {
                        Action::Wait(rng.range(5, 50))
                    } else {
                        Action::Produce(data[rng.index(data.len())].clone())
                    }
                } else if roll < 83 {
                    if self.outstanding > 0 {
                        Action::Wait(rng.range(5, 50))
                    } else {
                        Action::End {
                            commit: rng.chance(7, 10),
                        }
                    }
                } else if roll < 85 {
                    // The application stalls past its transaction timeout.
                    self.stalled_until_ms = now_ms + i64::from(self.timeout_ms) * 3 / 2;
                    Action::Wait(i64::from(self.timeout_ms) * 3 / 2)
                } else {
                    Action::Wait(rng.range(5, 100))
                }
            }
        }
    }
}
