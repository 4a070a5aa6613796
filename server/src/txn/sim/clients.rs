//! The producers' side: what each producer does next, its requests, their answers and
//! retries, its writes.

use super::*;

impl World {
    pub(super) fn step(&mut self, slot: usize, incarnation: u64) -> Result<(), String> {
        if self.producers[slot].incarnation != incarnation {
            return Ok(());
        }
        let data = self.data_partitions.clone();
        let groups = self.groups.clone();
        let now = self.now;
        let calm = self.calm;
        let action = self.producers[slot].decide(&mut self.rng, now, calm, &data, &groups);
        let mut next = Some(self.rng.range(10, 150));
        match action {
            Action::Wait(ms) => next = Some(ms.max(1)),
            Action::Stop => next = None,
            Action::Start => {
                let p = &mut self.producers[slot];
                p.incarnation += 1;
                p.phase = Phase::Initializing;
                p.producer_id = -1;
                p.epoch = -1;
                p.txn_seq = 0;
                p.timeout_ms = self.rng.range(2_000, 10_000) as i32;
                p.stalled_until_ms = 0;
                p.strays = 0;
                let version = self.rng.range(0, 6) as i16;
                let req = InitProducerIdRequest {
                    transactional_id: Some(p.transactional_id.clone()),
                    transaction_timeout_ms: p.timeout_ms,
                    producer_id: -1,
                    producer_epoch: -1,
                    version,
                };
                self.trace(|| {
                    format!(
                        "producer {slot} starts instance {}",
                        self.producers[slot].incarnation
                    )
                });
                self.send(slot, CallKind::Init(req));
                let incarnation = self.producers[slot].incarnation;
                let delay = self.rng.range(10, 150);
                self.schedule(delay, Event::Step { slot, incarnation });
                return Ok(());
            }
            Action::Reinit => {
                let p = &mut self.producers[slot];
                p.phase = Phase::Initializing;
                let req = InitProducerIdRequest {
                    transactional_id: Some(p.transactional_id.clone()),
                    transaction_timeout_ms: p.timeout_ms,
                    producer_id: p.producer_id,
                    producer_epoch: p.epoch,
                    version: 4,
                };
                self.send(slot, CallKind::Init(req));
            }
            Action::Begin => {
                let p = &mut self.producers[slot];
                p.phase = Phase::InTxn;
                p.txn_seq += 1;
                p.added.clear();
                p.coordinator_txn = false;
                p.abortable = false;
            }
            Action::Add(partitions) => {
                let p = &self.producers[slot];
                let version = self.rng.range(0, 4) as i16;
                let req = AddPartitionsRequest {
                    transactional_id: p.transactional_id.clone(),
                    producer_id: p.producer_id,
                    producer_epoch: p.epoch,
                    partitions,
                    verify_only: false,
                    version,
                };
                self.send(slot, CallKind::Add(req));
            }
            Action::AddOffsets(group_id) => {
                let p = &self.producers[slot];
                let req = AddOffsetsRequest {
                    transactional_id: p.transactional_id.clone(),
                    producer_id: p.producer_id,
                    producer_epoch: p.epoch,
                    group_id,
                    version: self.rng.range(0, 5) as i16,
                };
                self.send(slot, CallKind::Offsets(req));
            }
            Action::Produce(tp) => self.produce(slot, tp, true, false),
            Action::Stray(tp) => {
                let counted = self.producers[slot].phase == Phase::InTxn;
                self.produce(slot, tp, counted, true);
            }
            Action::End { commit } => {
                let p = &mut self.producers[slot];
                if !p.coordinator_txn {
                    // Nothing reached the coordinator: the client ends it by itself.
                    p.phase = Phase::Ready;
                } else {
                    p.phase = Phase::Ending;
                    let req = EndTxnRequest {
                        transactional_id: p.transactional_id.clone(),
                        producer_id: p.producer_id,
                        producer_epoch: p.epoch,
                        committed: commit,
                        version: self.rng.range(0, 5) as i16,
                    };
                    self.send(slot, CallKind::End(req));
                }
            }
        }
        if let Some(delay) = next {
            self.schedule(delay, Event::Step { slot, incarnation });
        }
        Ok(())
    }

    pub(super) fn send(&mut self, slot: usize, kind: CallKind) {
        self.next_token += 1;
        let token = self.next_token;
        let p = &mut self.producers[slot];
        p.pending = Some(token);
        let call = Call {
            slot,
            incarnation: p.incarnation,
            txn_seq: p.txn_seq,
            kind,
        };
        self.trace(|| format!("producer {slot} sends {token}: {:?}", call.kind));
        self.calls.insert(token, call);
        let delay = self.delay();
        self.schedule(delay, Event::Request { token });
        self.schedule(REQUEST_TIMEOUT_MS, Event::Timeout { token });
    }

    /// The same request again, under a new token (a retry after an error or a timeout).
    pub(super) fn resend(&mut self, old: Token, call: Call) {
        self.calls.remove(&old);
        let slot = call.slot;
        if self.producers[slot].incarnation != call.incarnation {
            return;
        }
        self.producers[slot].pending = None;
        let backoff = self.rng.range(20, 300);
        self.next_token += 1;
        let token = self.next_token;
        self.producers[slot].pending = Some(token);
        self.calls.insert(token, call);
        self.schedule(backoff, Event::Request { token });
        self.schedule(backoff + REQUEST_TIMEOUT_MS, Event::Timeout { token });
    }

    pub(super) fn request_arrives(&mut self, token: Token) -> Result<(), String> {
        let Some(call) = self.calls.get(&token).cloned() else {
            return Ok(());
        };
        let now = self.now;
        let Some(c) = self.coordinator.as_mut() else {
            // The connection is refused; the producer finds out at its timeout.
            return Ok(());
        };
        let fx = match call.kind {
            CallKind::Init(req) => c.init_producer_id(now, token, req),
            CallKind::Add(req) => c.add_partitions(now, token, req, &|_| true),
            CallKind::Offsets(req) => c.add_offsets(now, token, req),
            CallKind::End(req) => c.end_txn(now, token, req),
        };
        self.carry(fx)
    }

    pub(super) fn reply_arrives(&mut self, reply: Reply) -> Result<(), String> {
        let token = reply.token();
        let Some(call) = self.calls.get(&token).cloned() else {
            return Ok(());
        };
        let slot = call.slot;
        if self.producers[slot].pending != Some(token)
            || self.producers[slot].incarnation != call.incarnation
        {
            return Ok(());
        }
        self.trace(|| format!("producer {slot} gets {reply:?}"));
        let error = match &reply {
            Reply::InitProducerId(_, r) => r.error,
            Reply::AddPartitions(_, results) => results.iter().find_map(|(_, e)| *e),
            Reply::AddOffsets(_, e) | Reply::EndTxn(_, e) => *e,
        };
        if let Some(error) = error {
            match classify(error) {
                Reaction::Retry => {
                    self.resend(token, call);
                    return Ok(());
                }
                Reaction::Abortable => {
                    self.calls.remove(&token);
                    let p = &mut self.producers[slot];
                    p.pending = None;
                    p.abortable = true;
                }
                Reaction::Fatal => {
                    self.calls.remove(&token);
                    if matches!(
                        error,
                        ResponseError::ProducerFenced | ResponseError::InvalidProducerEpoch
                    ) {
                        self.stats.fenced_answers += 1;
                    }
                    self.trace(|| format!("producer {slot} dies: {error:?}"));
                    self.producers[slot].die(&mut self.rng);
                }
            }
            return Ok(());
        }
        self.calls.remove(&token);
        let p = &mut self.producers[slot];
        p.pending = None;
        match (call.kind, reply) {
            (CallKind::Init(_), Reply::InitProducerId(_, r)) => {
                p.producer_id = r.producer_id;
                p.epoch = r.producer_epoch;
                p.phase = Phase::Ready;
            }
            (CallKind::Add(req), Reply::AddPartitions(..))
                if p.phase == Phase::InTxn && p.txn_seq == call.txn_seq =>
            {
                p.added.extend(req.partitions);
                p.coordinator_txn = true;
            }
            (CallKind::Offsets(_), Reply::AddOffsets(..))
                if p.phase == Phase::InTxn && p.txn_seq == call.txn_seq =>
            {
                p.coordinator_txn = true;
            }
            (CallKind::End(req), Reply::EndTxn(..)) => {
                p.phase = Phase::Ready;
                if req.committed {
                    self.stats.commits += 1;
                } else {
                    self.stats.aborts += 1;
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn produce(&mut self, slot: usize, tp: TopicPartition, counted: bool, stray: bool) {
        let p = &mut self.producers[slot];
        if p.producer_id < 0 {
            return;
        }
        if counted {
            p.outstanding += 1;
        }
        self.next_produce += 1;
        let id = self.next_produce;
        let records = self.rng.range(1, 4);
        let produce = Produce {
            slot,
            incarnation: p.incarnation,
            txn_seq: p.txn_seq,
            transactional_id: p.transactional_id.clone(),
            tp,
            producer_id: p.producer_id,
            epoch: p.epoch,
            records,
            counted,
            stray,
            guard: None,
        };
        self.trace(|| format!("producer {slot} writes {id}: {produce:?}"));
        self.produces.insert(id, produce);
        let delay = self.delay();
        self.schedule(delay, Event::ProduceArrive { id });
        if counted {
            self.schedule(DELIVERY_TIMEOUT_MS, Event::DeliveryTimeout { id });
        }
    }

    pub(super) fn produce_done(&mut self, id: u64, error: ErrorCode) {
        let Some(produce) = self.produces.remove(&id) else {
            return;
        };
        let p = &mut self.producers[produce.slot];
        if p.incarnation != produce.incarnation || !produce.counted {
            return;
        }
        let Some(error) = error else {
            p.outstanding -= 1;
            return;
        };
        match classify(error) {
            Reaction::Retry if p.phase == Phase::InTxn => {
                // Sent again (still outstanding), verified again at the partition.
                self.next_produce += 1;
                let new_id = self.next_produce;
                self.produces.insert(
                    new_id,
                    Produce {
                        guard: None,
                        ..produce
                    },
                );
                let delay = self.rng.range(20, 200);
                self.schedule(delay, Event::ProduceArrive { id: new_id });
                self.schedule(DELIVERY_TIMEOUT_MS, Event::DeliveryTimeout { id: new_id });
            }
            Reaction::Retry | Reaction::Abortable => {
                p.outstanding -= 1;
                p.abortable = true;
            }
            Reaction::Fatal => {
                p.outstanding -= 1;
                if matches!(
                    error,
                    ResponseError::InvalidProducerEpoch | ResponseError::ProducerFenced
                ) {
                    self.stats.fenced_answers += 1;
                }
                self.producers[produce.slot].die(&mut self.rng);
            }
        }
    }
}
