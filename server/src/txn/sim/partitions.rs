//! The partitions' side: markers and transactional writes arriving at partition leaders.

use super::*;

impl World {
    pub(super) fn markers_arrive(
        &mut self,
        generation: u64,
        request: MarkerRequest,
    ) -> Result<(), String> {
        let marker = EndTxnMarker {
            result: request.result,
            coordinator_epoch: request.coordinator_epoch,
        };
        let mut outcomes = Vec::with_capacity(request.partitions.len());
        for tp in &request.partitions {
            if self.faulty(self.opts.marker_failure_per_mille) {
                outcomes.push((
                    tp.clone(),
                    MarkerOutcome::Failed(ResponseError::NotLeaderOrFollower),
                ));
                continue;
            }
            let outcome = self.write_marker(tp, &request, &marker)?;
            // Written, but the answer is lost on the way back.
            let outcome = if outcome == MarkerOutcome::Written
                && self.faulty(self.opts.marker_failure_per_mille / 2)
            {
                MarkerOutcome::Failed(ResponseError::NetworkException)
            } else {
                outcome
            };
            outcomes.push((tp.clone(), outcome));
        }
        let delay = self.delay();
        self.schedule(
            delay,
            Event::MarkersAnswered {
                generation,
                request,
                outcomes,
            },
        );
        Ok(())
    }

    /// A partition leader appends a marker (WriteTxnMarkers).
    pub(super) fn write_marker(
        &mut self,
        tp: &TopicPartition,
        request: &MarkerRequest,
        marker: &EndTxnMarker,
    ) -> Result<MarkerOutcome, String> {
        let Some(p) = self.partitions.get_mut(tp) else {
            return Ok(MarkerOutcome::PartitionGone);
        };
        if let Err(e) = p
            .txns
            .check_marker(request.producer_id, request.producer_epoch, marker)
        {
            self.stats.markers_refused += 1;
            return Ok(MarkerOutcome::Failed(e.code()));
        }
        let offset = p.log_end;
        p.log_end += 1;
        let (completed, entry) = p.txns.apply_marker(
            request.producer_id,
            request.producer_epoch,
            marker,
            offset,
            self.now,
        );
        self.stats.markers_written += 1;
        if self.opts.trace {
            println!(
                "{:>8} {tp:?} marker {:?} at {offset} for {}/{} from coordinator epoch {}: {completed:?}",
                self.now,
                request.result,
                request.producer_id,
                request.producer_epoch,
                request.coordinator_epoch
            );
        }
        let model_open = p.open.remove(&request.producer_id);
        if completed.map(|c| c.first_offset) != model_open {
            return Err(format!(
                "{tp:?}: the marker at {offset} completed {completed:?} but the open transaction of producer {} starts at {model_open:?}",
                request.producer_id
            ));
        }
        let Some(done) = completed else {
            return Ok(MarkerOutcome::Written);
        };
        p.unreplicated.push((done.first_offset, offset));
        if done.aborted {
            p.aborted
                .push((done.producer_id, done.first_offset, done.last_offset));
            if entry.is_none() {
                return Err(format!("{tp:?}: an abort at {offset} gave no index entry"));
            }
        }
        let mut decided = Vec::new();
        for b in p.batches.iter_mut() {
            if b.producer_id == done.producer_id
                && b.first >= done.first_offset
                && b.first < done.last_offset
                && b.outcome.is_none()
            {
                b.outcome = Some(request.result);
                if !b.stray {
                    decided.push((b.identity, b.zombie));
                }
            }
        }
        for (identity, zombie) in decided {
            self.oracle.on_outcome(identity, request.result, zombie)?;
        }
        Ok(MarkerOutcome::Written)
    }

    pub(super) fn produce_arrives(&mut self, id: u64) -> Result<(), String> {
        let Some(produce) = self.produces.get(&id).cloned() else {
            return Ok(());
        };
        let now = self.now;
        let Some(p) = self.partitions.get_mut(&produce.tp) else {
            return Ok(());
        };
        match p
            .txns
            .start_verification(produce.producer_id, produce.epoch, 0, now)
        {
            None => self.try_append(id)?,
            Some(guard) => {
                if let Some(pr) = self.produces.get_mut(&id) {
                    pr.guard = Some(guard);
                }
                let delay = self.delay();
                self.schedule(delay, Event::VerifyArrive { id });
            }
        }
        Ok(())
    }

    /// The partition leader appends a transactional batch, if the partition accepts it.
    pub(super) fn try_append(&mut self, id: u64) -> Result<(), String> {
        let Some(produce) = self.produces.get(&id).cloned() else {
            return Ok(());
        };
        let zombie = self.oracle.is_zombie(
            &produce.transactional_id,
            produce.producer_id,
            produce.epoch,
        );
        let now = self.now;
        let Some(p) = self.partitions.get_mut(&produce.tp) else {
            return Ok(());
        };
        if let Err(e) = p.txns.check_data_batch(
            produce.producer_id,
            produce.epoch,
            true,
            produce.guard,
            true,
        ) {
            self.stats.batches_refused += 1;
            self.trace(|| format!("{:?} refuses {id}: {e:?}", produce.tp));
            self.produce_answered(id, Some(e.code()));
            return Ok(());
        }
        if zombie {
            return Err(format!(
                "{:?} appended a batch of {} with {}/{} after a newer epoch was handed out",
                produce.tp, produce.transactional_id, produce.producer_id, produce.epoch
            ));
        }
        let first = p.log_end;
        let last = first + produce.records - 1;
        p.log_end = last + 1;
        p.txns
            .apply_data_batch(produce.producer_id, produce.epoch, first, last, true, now);
        p.open.entry(produce.producer_id).or_insert(first);
        p.batches.push(SimBatch {
            producer_id: produce.producer_id,
            first,
            identity: (produce.slot, produce.incarnation, produce.txn_seq),
            zombie,
            stray: produce.stray,
            outcome: None,
        });
        self.stats.batches += 1;
        self.trace(|| {
            format!(
                "{:?} appends {id} at {first}..={last} (zombie: {zombie})",
                produce.tp
            )
        });
        self.produce_answered(id, None);
        Ok(())
    }

    pub(super) fn produce_answered(&mut self, id: u64, error: ErrorCode) {
        // Produce answers are never lost; a producer waits for them up to its delivery
        // timeout, then gives up and aborts.
        let delay = self.rng.range(1, 40);
        self.schedule(delay, Event::ProduceDone { id, error });
    }
}
