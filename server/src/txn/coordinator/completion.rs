//! Log appends and their results, markers and completion records, and the passage of time.

use super::*;

impl TxnCoordinator {
    // Log appends
    // ---------------------------------------------------------------------------------

    pub(super) fn append(
        &mut self,
        transactional_id: &str,
        transit: TxnTransit,
        then: AfterAppend,
        fx: &mut Effects,
    ) {
        let coordinator_epoch = self
            .active_epoch()
            .expect("transitions are prepared only by an active coordinator");
        let id = self.next_append_id;
        self.next_append_id += 1;
        let value = (transit.state != TransactionState::Dead).then(|| transit.to_log_value());
        fx.appends.push(LogAppend {
            id,
            coordinator_epoch,
            record: TransactionLogRecord {
                transactional_id: transactional_id.to_owned(),
                value,
            },
            timeout_ms: i64::from(transit.timeout_ms),
        });
        self.appends.insert(
            id,
            PendingAppend {
                transactional_id: transactional_id.to_owned(),
                transit,
                then,
            },
        );
    }

    /// An append this coordinator asked for went through (`Ok`) or failed with the log's
    /// error. Unknown ids (from before an unload) are ignored.
    pub fn append_done(
        &mut self,
        now_ms: i64,
        id: AppendId,
        result: Result<(), ResponseError>,
    ) -> Effects {
        let mut fx = Effects::default();
        let Some(pending) = self.appends.remove(&id) else {
            return fx;
        };
        let txn_id = pending.transactional_id;
        let Some(meta) = self.txns.get_mut(&txn_id) else {
            debug_assert!(false, "a transactional id with a pending append is kept");
            return fx;
        };
        let error = result.err().map(append_error);
        match (pending.then, error) {
            (AfterAppend::Expire, None) => {
                if meta.pending == Some(TransactionState::Dead)
                    && meta.producer_epoch == pending.transit.producer_epoch
                {
                    self.txns.remove(&txn_id);
                } else {
                    meta.pending = None;
                }
            }
            (AfterAppend::Expire, Some(_)) => meta.pending = None,
            (AfterAppend::Complete, None) => {
                meta.complete_transition(&pending.transit);
                self.completions.remove(&txn_id);
            }
            (AfterAppend::Complete, Some(error)) => match error {
                // The partition moved away; its next coordinator completes the transaction.
                ResponseError::NotCoordinator | ResponseError::CoordinatorLoadInProgress => {
                    meta.pending = None;
                    self.completions.remove(&txn_id);
                }
                // Anything else is written again after a pause, the transition still
                // pending (Kafka retries COORDINATOR_NOT_AVAILABLE and stops on the rest;
                // retrying them too keeps the transaction from hanging in Prepare*).
                _ => {
                    if let Some(c) = self.completions.get_mut(&txn_id) {
                        c.appending = false;
                        c.append_retry_at_ms = Some(now_ms + self.config.retry_backoff_ms);
                    }
                }
            },
            (then, Some(error)) => {
                meta.pending = None;
                match then {
                    AfterAppend::InitProducerId { token, version } => {
                        fx.replies.push(Reply::InitProducerId(
                            token,
                            InitProducerIdResult {
                                error: Some(for_version(error, init_knows_fenced(version))),
                                producer_id: NO_PRODUCER_ID,
                                producer_epoch: NO_PRODUCER_EPOCH,
                            },
                        ))
                    }
                    AfterAppend::AddPartitions {
                        token,
                        version,
                        partitions,
                    } => {
                        let error = Some(for_version(error, add_knows_fenced(version)));
                        fx.replies.push(Reply::AddPartitions(
                            token,
                            partitions.into_iter().map(|tp| (tp, error)).collect(),
                        ))
                    }
                    AfterAppend::AddOffsets { token, version } => {
                        fx.replies.push(Reply::AddOffsets(
                            token,
                            Some(for_version(error, add_knows_fenced(version))),
                        ))
                    }
                    AfterAppend::EndTxn {
                        caller,
                        epoch_fence,
                        ..
                    } => {
                        if epoch_fence {
                            // The bumped epoch stays in memory but was never handed out:
                            // the next fencing reuses it.
                            meta.has_failed_epoch_fence = true;
                        }
                        match caller {
                            EndTxnCaller::Client { token, version } => {
                                fx.replies.push(Reply::EndTxn(
                                    token,
                                    Some(for_version(error, end_txn_knows_fenced(version))),
                                ))
                            }
                            EndTxnCaller::InitFence { token, version } => {
                                fx.replies.push(Reply::InitProducerId(
                                    token,
                                    InitProducerIdResult {
                                        error: Some(for_version(error, init_knows_fenced(version))),
                                        producer_id: NO_PRODUCER_ID,
                                        producer_epoch: NO_PRODUCER_EPOCH,
                                    },
                                ))
                            }
                            EndTxnCaller::Timeout => {}
                        }
                    }
                    AfterAppend::Complete | AfterAppend::Expire => {
                        unreachable!("handled above")
                    }
                }
            }
            (then, None) => {
                meta.complete_transition(&pending.transit);
                match then {
                    AfterAppend::InitProducerId { token, .. } => {
                        fx.replies.push(Reply::InitProducerId(
                            token,
                            InitProducerIdResult {
                                error: None,
                                producer_id: meta.producer_id,
                                producer_epoch: meta.producer_epoch,
                            },
                        ))
                    }
                    AfterAppend::AddPartitions {
                        token, partitions, ..
                    } => fx.replies.push(Reply::AddPartitions(
                        token,
                        partitions.into_iter().map(|tp| (tp, None)).collect(),
                    )),
                    AfterAppend::AddOffsets { token, .. } => {
                        fx.replies.push(Reply::AddOffsets(token, None))
                    }
                    AfterAppend::EndTxn { caller, result, .. } => {
                        match caller {
                            EndTxnCaller::Client { token, .. } => {
                                fx.replies.push(Reply::EndTxn(token, None))
                            }
                            EndTxnCaller::InitFence { token, .. } => {
                                fx.replies.push(Reply::InitProducerId(
                                    token,
                                    InitProducerIdResult {
                                        error: Some(ResponseError::ConcurrentTransactions),
                                        producer_id: NO_PRODUCER_ID,
                                        producer_epoch: NO_PRODUCER_EPOCH,
                                    },
                                ))
                            }
                            EndTxnCaller::Timeout => {}
                        }
                        self.start_completion(now_ms, &txn_id, result, &mut fx);
                    }
                    AfterAppend::Complete | AfterAppend::Expire => {
                        unreachable!("handled above")
                    }
                }
            }
        }
        fx
    }

    // ---------------------------------------------------------------------------------
    // Markers and completion
    // ---------------------------------------------------------------------------------

    /// PrepareCommit or PrepareAbort is in the log: write the markers, then the completion.
    pub(super) fn start_completion(
        &mut self,
        now_ms: i64,
        txn_id: &str,
        result: TransactionResult,
        fx: &mut Effects,
    ) {
        let Some(meta) = self.txns.get_mut(txn_id) else {
            return;
        };
        let transit = meta.prepare_complete(now_ms);
        let completion = PendingCompletion {
            producer_id: meta.producer_id,
            producer_epoch: meta.producer_epoch,
            result,
            transit,
            retry: BTreeSet::new(),
            retry_at_ms: None,
            appending: false,
            append_retry_at_ms: None,
        };
        let partitions: Vec<TopicPartition> = meta.partitions.iter().cloned().collect();
        self.completions.insert(txn_id.to_owned(), completion);
        if !partitions.is_empty() {
            self.send_markers(txn_id, partitions, fx);
        }
        self.maybe_write_completion(txn_id, fx);
    }

    fn send_markers(&self, txn_id: &str, partitions: Vec<TopicPartition>, fx: &mut Effects) {
        let (Some(coordinator_epoch), Some(c)) =
            (self.active_epoch(), self.completions.get(txn_id))
        else {
            return;
        };
        fx.markers.push(MarkerRequest {
            transactional_id: txn_id.to_owned(),
            producer_id: c.producer_id,
            producer_epoch: c.producer_epoch,
            coordinator_epoch,
            result: c.result,
            partitions,
        });
    }

    /// Every marker is written: log CompleteCommit or CompleteAbort.
    fn maybe_write_completion(&mut self, txn_id: &str, fx: &mut Effects) {
        let done = self
            .txns
            .get(txn_id)
            .is_some_and(|meta| meta.partitions.is_empty());
        let Some(c) = self.completions.get_mut(txn_id) else {
            return;
        };
        if !done || c.appending || c.append_retry_at_ms.is_some() {
            return;
        }
        c.appending = true;
        let transit = c.transit.clone();
        self.append(txn_id, transit, AfterAppend::Complete, fx);
    }

    /// The outcome of writing `request`'s markers, per partition. Answers for another
    /// coordinator epoch or producer than the transaction being completed are ignored.
    pub fn markers_done(
        &mut self,
        now_ms: i64,
        request: &MarkerRequest,
        outcomes: &[(TopicPartition, MarkerOutcome)],
    ) -> Effects {
        let mut fx = Effects::default();
        let txn_id = &request.transactional_id;
        if self.active_epoch() != Some(request.coordinator_epoch) {
            return fx;
        }
        let Some(c) = self.completions.get_mut(txn_id) else {
            return fx;
        };
        if c.producer_id != request.producer_id || c.producer_epoch != request.producer_epoch {
            return fx;
        }
        let Some(meta) = self.txns.get_mut(txn_id) else {
            return fx;
        };
        let mut abandon = false;
        for (tp, outcome) in outcomes {
            if !meta.partitions.contains(tp) {
                continue;
            }
            match outcome {
                MarkerOutcome::Written | MarkerOutcome::PartitionGone => {
                    meta.partitions.remove(tp);
                }
                // The producer could not have written to such a partition.
                MarkerOutcome::Failed(
                    ResponseError::UnsupportedForMessageFormat | ResponseError::UnsupportedVersion,
                ) => {
                    meta.partitions.remove(tp);
                }
                // A newer producer epoch or coordinator exists: this coordinator is stale
                // and stops; the transaction stays pending until the partition is loaded
                // again (as in Kafka).
                MarkerOutcome::Failed(
                    ResponseError::InvalidProducerEpoch
                    | ResponseError::TransactionCoordinatorFenced,
                ) => abandon = true,
                // Leadership moving, ISR short, timeouts, a lost connection: send again.
                MarkerOutcome::Failed(_) => {
                    c.retry.insert(tp.clone());
                }
            }
        }
        if abandon {
            self.completions.remove(txn_id);
            return fx;
        }
        if !c.retry.is_empty() && c.retry_at_ms.is_none() {
            c.retry_at_ms = Some(now_ms + self.config.retry_backoff_ms);
        }
        self.maybe_write_completion(txn_id, &mut fx);
        fx
    }

    // ---------------------------------------------------------------------------------
    // Time
    // ---------------------------------------------------------------------------------

    /// Let time pass: resend failed markers and completions, abort transactions past their
    /// timeout, expire idle transactional ids.
    pub fn tick(&mut self, now_ms: i64) -> Effects {
        let mut fx = Effects::default();
        if self.active_epoch().is_none() {
            return fx;
        }
        let due: Vec<String> = self
            .completions
            .iter()
            .filter(|(_, c)| {
                c.retry_at_ms.is_some_and(|t| t <= now_ms)
                    || c.append_retry_at_ms.is_some_and(|t| t <= now_ms)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for txn_id in due {
            let Some(c) = self.completions.get_mut(&txn_id) else {
                continue;
            };
            if c.retry_at_ms.is_some_and(|t| t <= now_ms) {
                c.retry_at_ms = None;
                let retry: Vec<TopicPartition> = std::mem::take(&mut c.retry).into_iter().collect();
                self.send_markers(&txn_id, retry, &mut fx);
            }
            let Some(c) = self.completions.get_mut(&txn_id) else {
                continue;
            };
            if c.append_retry_at_ms.is_some_and(|t| t <= now_ms) {
                c.append_retry_at_ms = None;
                self.maybe_write_completion(&txn_id, &mut fx);
            }
        }
        let interval = self.config.abort_timed_out_transaction_cleanup_interval_ms;
        match self.next_abort_check_ms {
            Some(at) if at <= now_ms => {
                self.abort_timed_out(now_ms, &mut fx);
                self.next_abort_check_ms = Some(now_ms + interval);
            }
            Some(_) => {}
            None => self.next_abort_check_ms = Some(now_ms + interval),
        }
        let interval = self.config.remove_expired_transaction_cleanup_interval_ms;
        match self.next_expiration_check_ms {
            Some(at) if at <= now_ms => {
                self.expire(now_ms, &mut fx);
                self.next_expiration_check_ms = Some(now_ms + interval);
            }
            Some(_) => {}
            None => self.next_expiration_check_ms = Some(now_ms + interval),
        }
        fx.want_producer_ids |= self.producer_ids.take_block_wanted();
        fx
    }

    /// The earliest time at which `tick` has something to do.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        self.active_epoch()?;
        let mut next = self.next_abort_check_ms.min(self.next_expiration_check_ms);
        for c in self.completions.values() {
            for t in [c.retry_at_ms, c.append_retry_at_ms].into_iter().flatten() {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }

    /// Abort every open transaction older than its timeout, fencing its producer (Kafka's
    /// `abortTimedOutTransactions`): a zombie that wakes up finds its epoch fenced.
    fn abort_timed_out(&mut self, now_ms: i64, fx: &mut Effects) {
        let timed_out: Vec<String> = self
            .txns
            .values()
            .filter(|m| {
                m.pending.is_none()
                    && m.state == TransactionState::Ongoing
                    && m.start_timestamp_ms.saturating_add(i64::from(m.timeout_ms)) < now_ms
            })
            .map(|m| m.transactional_id.clone())
            .collect();
        for txn_id in timed_out {
            let Some(meta) = self.txns.get_mut(&txn_id) else {
                continue;
            };
            if let Ok(transit) = meta.prepare_fence_and_abort(now_ms) {
                self.append(
                    &txn_id,
                    transit,
                    AfterAppend::EndTxn {
                        caller: EndTxnCaller::Timeout,
                        result: TransactionResult::Abort,
                        epoch_fence: true,
                    },
                    fx,
                );
            }
        }
    }

    /// Remove transactional ids idle for `transactional.id.expiration.ms` with no open
    /// transaction: their tombstones go to the log, and they go once those are written.
    fn expire(&mut self, now_ms: i64, fx: &mut Effects) {
        let horizon = now_ms.saturating_sub(self.config.transactional_id_expiration_ms);
        let expired: Vec<String> = self
            .txns
            .values()
            .filter(|m| {
                m.pending.is_none()
                    && matches!(
                        m.state,
                        TransactionState::Empty
                            | TransactionState::CompleteCommit
                            | TransactionState::CompleteAbort
                    )
                    && m.last_update_timestamp_ms <= horizon
            })
            .map(|m| m.transactional_id.clone())
            .collect();
        for txn_id in expired {
            let Some(meta) = self.txns.get_mut(&txn_id) else {
                continue;
            };
            let transit = meta.prepare_dead();
            self.append(&txn_id, transit, AfterAppend::Expire, fx);
        }
    }

    // ---------------------------------------------------------------------------------
}
