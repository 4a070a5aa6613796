//! Loading the partition from its log (resuming unfinished commits and aborts) and
//! unloading it.

use super::*;

impl TxnCoordinator {
    // Loading and unloading
    // ---------------------------------------------------------------------------------

    /// This node became the partition's leader at `coordinator_epoch`: forget everything
    /// and start replaying the partition ([`Self::replay`], then [`Self::finish_load`]).
    /// Requests waiting for an append from before are answered NOT_COORDINATOR.
    pub fn begin_load(&mut self, coordinator_epoch: i32) -> Effects {
        let fx = self.unload();
        self.status = Status::Loading { coordinator_epoch };
        fx
    }

    /// One record of the partition, in log order: the last value of each id wins, a
    /// tombstone removes it. A value no coordinator writes (state Dead or
    /// PrepareEpochFence, a negative producer id or epoch) counts as a tombstone, so
    /// damaged records cannot lead the state machine into a transition it refuses.
    pub fn replay(&mut self, record: &TransactionLogRecord) {
        if !matches!(self.status, Status::Loading { .. }) {
            debug_assert!(false, "replay outside a load");
            return;
        }
        let id = &record.transactional_id;
        let usable = record.value.as_ref().filter(|v| {
            !matches!(
                v.state,
                TransactionState::Dead | TransactionState::PrepareEpochFence
            ) && v.producer_id >= 0
                && v.producer_epoch >= 0
        });
        match usable {
            Some(value) => {
                self.txns
                    .insert(id.clone(), TxnMetadata::from_log(id, value));
            }
            None => {
                self.txns.remove(id);
            }
        }
    }

    /// The partition is replayed: serve it, and finish every transaction the previous
    /// coordinator left in PrepareCommit or PrepareAbort by writing its markers again.
    pub fn finish_load(&mut self, now_ms: i64) -> Effects {
        let mut fx = Effects::default();
        let Status::Loading { coordinator_epoch } = self.status else {
            return fx;
        };
        self.status = Status::Active { coordinator_epoch };
        self.next_abort_check_ms =
            Some(now_ms + self.config.abort_timed_out_transaction_cleanup_interval_ms);
        self.next_expiration_check_ms =
            Some(now_ms + self.config.remove_expired_transaction_cleanup_interval_ms);
        let unfinished: Vec<(String, TransactionResult)> = self
            .txns
            .values()
            .filter_map(|m| match m.state {
                TransactionState::PrepareCommit => {
                    Some((m.transactional_id.clone(), TransactionResult::Commit))
                }
                TransactionState::PrepareAbort => {
                    Some((m.transactional_id.clone(), TransactionResult::Abort))
                }
                _ => None,
            })
            .collect();
        for (txn_id, result) in unfinished {
            self.start_completion(now_ms, &txn_id, result, &mut fx);
        }
        fx.want_producer_ids |= self.producer_ids.take_block_wanted();
        fx
    }

    /// Replay `records` and serve: [`Self::begin_load`], [`Self::replay`] each,
    /// [`Self::finish_load`].
    pub fn load<'a>(
        &mut self,
        now_ms: i64,
        coordinator_epoch: i32,
        records: impl IntoIterator<Item = &'a TransactionLogRecord>,
    ) -> Effects {
        let mut fx = self.begin_load(coordinator_epoch);
        for record in records {
            self.replay(record);
        }
        fx.append(self.finish_load(now_ms));
        fx
    }

    /// The partition moved away: forget its state. Requests waiting for an append are
    /// answered NOT_COORDINATOR; answers to appends and markers that arrive later are
    /// ignored. Producer ids not handed out are kept (they are this node's).
    pub fn unload(&mut self) -> Effects {
        let mut fx = Effects::default();
        let error = Some(ResponseError::NotCoordinator);
        for (_, pending) in std::mem::take(&mut self.appends) {
            match pending.then {
                AfterAppend::InitProducerId { token, .. }
                | AfterAppend::EndTxn {
                    caller: EndTxnCaller::InitFence { token, .. },
                    ..
                } => fx.replies.push(Reply::InitProducerId(
                    token,
                    InitProducerIdResult {
                        error,
                        producer_id: NO_PRODUCER_ID,
                        producer_epoch: NO_PRODUCER_EPOCH,
                    },
                )),
                AfterAppend::AddPartitions {
                    token, partitions, ..
                } => fx.replies.push(Reply::AddPartitions(
                    token,
                    partitions.into_iter().map(|tp| (tp, error)).collect(),
                )),
                AfterAppend::AddOffsets { token, .. } => {
                    fx.replies.push(Reply::AddOffsets(token, error))
                }
                AfterAppend::EndTxn {
                    caller: EndTxnCaller::Client { token, .. },
                    ..
                } => fx.replies.push(Reply::EndTxn(token, error)),
                AfterAppend::EndTxn {
                    caller: EndTxnCaller::Timeout,
                    ..
                }
                | AfterAppend::Complete
                | AfterAppend::Expire => {}
            }
        }
        self.txns.clear();
        self.completions.clear();
        self.next_abort_check_ms = None;
        self.next_expiration_check_ms = None;
        self.status = Status::NotCoordinator;
        fx
    }
}
