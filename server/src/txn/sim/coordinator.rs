//! The coordinator's side of the world: its log, carrying out its effects, checking its
//! answers, and its leadership coming and going.

use super::*;

impl World {
    pub(super) fn push_log(&mut self, record: &TransactionLogRecord) {
        let (key, value) = record
            .encode()
            .expect("the coordinator writes records Kafka's format can hold");
        self.log.push((key, value));
        self.oracle.on_logged(record);
    }

    pub(super) fn decoded_log(&self) -> Result<Vec<TransactionLogRecord>, String> {
        self.log
            .iter()
            .map(|(k, v)| {
                TransactionLogRecord::decode(k, v.as_deref())
                    .map_err(|e| format!("the log holds a record that does not decode: {e}"))
            })
            .collect()
    }

    pub(super) fn carry(&mut self, fx: Effects) -> Result<(), String> {
        for reply in fx.replies {
            self.on_coordinator_reply(&reply)?;
            if self.faulty(self.opts.loss_per_mille) {
                self.trace(|| format!("answer {} lost", reply.token()));
                continue;
            }
            let delay = self.delay();
            self.schedule(delay, Event::Reply { reply });
        }
        for append in fx.appends {
            self.stats.appends += 1;
            let generation = self.generation;
            let id = append.id;
            self.trace(|| format!("append {id}: {:?}", append.record));
            self.inflight.insert(id, append);
            let delay = self.rng.range(1, 30);
            self.schedule(delay, Event::AppendDone { generation, id });
        }
        for request in fx.markers {
            let generation = self.generation;
            // Now and then a request sits in a broker's queue for long: if its coordinator
            // crashes meanwhile, its markers arrive after the next one's (and must be
            // refused by coordinator epoch).
            let delay = if self.faulty(30) {
                self.rng.range(3_000, 15_000)
            } else {
                self.delay()
            };
            self.schedule(
                delay,
                Event::MarkersArrive {
                    generation,
                    request,
                },
            );
        }
        if fx.want_producer_ids {
            let generation = self.generation;
            let delay = self.rng.range(5, 300);
            self.schedule(delay, Event::ProducerIds { generation });
        }
        Ok(())
    }

    /// Checks an answer as the coordinator gives it, before the network may lose it.
    pub(super) fn on_coordinator_reply(&mut self, reply: &Reply) -> Result<(), String> {
        let Some(call) = self.calls.get(&reply.token()).cloned() else {
            return Ok(());
        };
        let txn_id = self.producers[call.slot].transactional_id.clone();
        match (&call.kind, reply) {
            (CallKind::Init(_), Reply::InitProducerId(_, r)) if r.error.is_none() => {
                self.stats.inits += 1;
                if let Some(prev) = self.oracle.latest.get(&txn_id) {
                    if r.producer_id != prev.producer_id {
                        self.stats.rotations += u64::from(prev.epoch >= i16::MAX - 1);
                    }
                }
                self.oracle.on_init(
                    &txn_id,
                    Grant {
                        producer_id: r.producer_id,
                        epoch: r.producer_epoch,
                        slot: call.slot,
                        incarnation: call.incarnation,
                    },
                )?;
            }
            (CallKind::Add(req), Reply::AddPartitions(_, results))
                if results.iter().all(|(_, e)| e.is_none()) =>
            {
                self.oracle.check_current(
                    &txn_id,
                    req.producer_id,
                    req.producer_epoch,
                    "AddPartitionsToTxn",
                )?;
            }
            (CallKind::Offsets(req), Reply::AddOffsets(_, None)) => {
                self.oracle.check_current(
                    &txn_id,
                    req.producer_id,
                    req.producer_epoch,
                    "AddOffsetsToTxn",
                )?;
            }
            (CallKind::End(req), Reply::EndTxn(_, None)) => {
                self.oracle.check_current(
                    &txn_id,
                    req.producer_id,
                    req.producer_epoch,
                    "EndTxn",
                )?;
                let result = TransactionResult::from_committed(req.committed);
                self.oracle
                    .on_decided((call.slot, call.incarnation, call.txn_seq), result)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The partition's leadership is gone (crash or move): appends in flight land in the
    /// log or not, and every answer still on its way is dropped.
    pub(super) fn lose_leadership(&mut self) {
        self.generation += 1;
        for (_, append) in std::mem::take(&mut self.inflight) {
            if self.rng.chance(1, 2) {
                self.stats.appends_landed_anyway += 1;
                self.trace(|| format!("in-flight append {} landed", append.id));
                self.push_log(&append.record);
            }
        }
    }

    pub(super) fn bounce(&mut self) -> Result<(), String> {
        let active = self
            .coordinator
            .as_ref()
            .is_some_and(|c| matches!(c.status(), Status::Active { .. }));
        if active {
            self.stats.bounces += 1;
            self.trace(|| "leadership moved away and back".into());
            self.lose_leadership();
            self.coordinator_epoch += 1;
            let epoch = self.coordinator_epoch;
            let Some(c) = self.coordinator.as_mut() else {
                return Ok(());
            };
            let mut fx = c.unload();
            fx.append(c.begin_load(epoch));
            self.carry(fx)?;
            let generation = self.generation;
            let delay = self.rng.range(10, 500);
            self.schedule(delay, Event::FinishLoad { generation });
        }
        if !self.calm {
            let next = self.rng.range(500, self.opts.bounce_every_ms * 2);
            self.schedule(next, Event::Bounce { last: false });
        }
        Ok(())
    }

    pub(super) fn append_done(&mut self, generation: u64, id: AppendId) -> Result<(), String> {
        if generation != self.generation {
            return Ok(());
        }
        let Some(append) = self.inflight.remove(&id) else {
            return Ok(());
        };
        let result = if self.faulty(self.opts.append_failure_per_mille) {
            self.stats.appends_failed += 1;
            let error = [
                ResponseError::NotEnoughReplicas,
                ResponseError::RequestTimedOut,
                ResponseError::NotLeaderOrFollower,
                ResponseError::NotEnoughReplicasAfterAppend,
            ][self.rng.index(4)];
            // A timeout or a short ISR after the append: the record may be in the log.
            let landed = matches!(
                error,
                ResponseError::RequestTimedOut | ResponseError::NotEnoughReplicasAfterAppend
            ) && self.rng.chance(1, 2);
            if landed {
                self.stats.appends_landed_anyway += 1;
                self.ambiguous = true;
                self.push_log(&append.record);
            }
            if error == ResponseError::NotLeaderOrFollower {
                // The leadership is moving: this node will unload the partition soon.
                let delay = self.rng.range(1, 200);
                self.schedule(delay, Event::Bounce { last: false });
            }
            self.trace(|| format!("append {id} failed: {error:?} (landed: {landed})"));
            Err(error)
        } else {
            self.push_log(&append.record);
            if append.record.value.is_none() {
                self.stats.expirations += 1;
            }
            Ok(())
        };
        let now = self.now;
        if let Some(c) = self.coordinator.as_mut() {
            let fx = c.append_done(now, id, result);
            self.carry(fx)?;
        }
        Ok(())
    }
}
