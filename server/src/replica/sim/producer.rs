//! Producers: each sends one Produce at a time, acks=all or acks=1, to the partition
//! leader the controller names, with fresh values, and gives up on an answer after a
//! timeout. What was acknowledged is recorded where the acknowledgement is sent (the
//! node), so a lost answer still counts.

use kafka_protocol::error::ResponseError;

use super::network::{Endpoint, Msg};
use super::*;
use crate::replica::Acks;

/// How long producers keep producing after the faults end.
const PRODUCE_AFTER_FAULTS_MS: i64 = 2_000;

pub struct Producer {
    next_value: u64,
    next_request: u64,
    /// The request in flight and when it was sent.
    in_flight: Option<(u64, i64)>,
}

impl Producer {
    pub fn new(id: usize, _partitions: usize) -> Producer {
        Producer {
            next_value: (id as u64 + 1) << 40,
            next_request: 1,
            in_flight: None,
        }
    }
}

impl World {
    pub(super) fn producer_wake(&mut self, k: usize) {
        let now = self.now;
        if now > self.opts.fault_ms + PRODUCE_AFTER_FAULTS_MS {
            return;
        }
        if let Some((_, sent)) = self.producers[k].in_flight {
            if now - sent > PRODUCE_TIMEOUT_MS {
                self.producers[k].in_flight = None;
                self.stats.produce_timeouts += 1;
            }
        }
        if self.producers[k].in_flight.is_none() {
            let p = self.rng.index(self.opts.partitions);
            if let Some(leader) = self.controller.partitions[p].leader.and_then(node_index) {
                let count = self.rng.range(1, 4) as u64;
                let acks = if self.rng.per_mille(self.opts.acks_all_per_mille) {
                    Acks::All
                } else {
                    Acks::Leader
                };
                let producer = &mut self.producers[k];
                let values: Vec<u64> = (producer.next_value..producer.next_value + count).collect();
                producer.next_value += count;
                let request = producer.next_request;
                producer.next_request += 1;
                producer.in_flight = Some((request, now));
                self.stats.produced += 1;
                self.send(
                    Endpoint::Producer(k),
                    Endpoint::Node(leader),
                    Msg::Produce {
                        request,
                        partition: p,
                        acks,
                        values,
                    },
                );
            }
        }
        let next = self.rng.range(1, 12);
        self.schedule(next, Event::ProducerWake(k));
    }

    pub(super) fn producer_receive(&mut self, k: usize, msg: Msg) {
        let Msg::ProduceAnswer { request, result } = msg else {
            return;
        };
        let producer = &mut self.producers[k];
        if producer.in_flight.is_some_and(|(r, _)| r == request) {
            producer.in_flight = None;
        }
        match result {
            Ok(_) => {}
            Err(ResponseError::NotEnoughReplicas) => self.stats.not_enough_replicas += 1,
            // Counted where it is answered.
            Err(ResponseError::NotEnoughReplicasAfterAppend) => {}
            Err(_) => self.stats.produce_errors += 1,
        }
    }
}
