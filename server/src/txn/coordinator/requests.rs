//! The requests producers (and partition leaders) send to the coordinator.

use super::*;

impl TxnCoordinator {
    // InitProducerId
    // ---------------------------------------------------------------------------------

    pub fn init_producer_id(
        &mut self,
        now_ms: i64,
        token: Token,
        req: InitProducerIdRequest,
    ) -> Effects {
        let mut fx = Effects::default();
        let version = req.version;
        let fail = |fx: &mut Effects, error: ResponseError| {
            fx.replies.push(Reply::InitProducerId(
                token,
                InitProducerIdResult {
                    error: Some(for_version(error, init_knows_fenced(version))),
                    producer_id: NO_PRODUCER_ID,
                    producer_epoch: NO_PRODUCER_EPOCH,
                },
            ))
        };
        // Both or neither of the producer id and epoch (checked before anything else).
        let expected = match (req.producer_id, req.producer_epoch) {
            (NO_PRODUCER_ID, NO_PRODUCER_EPOCH) => None,
            (NO_PRODUCER_ID, _) | (_, NO_PRODUCER_EPOCH) => {
                fail(&mut fx, ResponseError::InvalidRequest);
                return fx;
            }
            (id, epoch) => Some((id, epoch)),
        };
        let Some(transactional_id) = req.transactional_id else {
            // An idempotent producer: a new id at epoch 0, from any broker.
            match self.next_producer_id(&mut fx) {
                Some(producer_id) => fx.replies.push(Reply::InitProducerId(
                    token,
                    InitProducerIdResult {
                        error: None,
                        producer_id,
                        producer_epoch: 0,
                    },
                )),
                None => fail(&mut fx, ResponseError::CoordinatorLoadInProgress),
            }
            return fx;
        };
        // An id the log's key cannot hold could never be stored (Kafka fails to serialize
        // it); refusing it up front is clearer.
        if transactional_id.is_empty() || transactional_id.len() > MAX_SCHEMA_STRING_BYTES {
            fail(&mut fx, ResponseError::InvalidRequest);
            return fx;
        }
        let timeout_ms = req.transaction_timeout_ms;
        if timeout_ms <= 0 || timeout_ms > self.config.transaction_max_timeout_ms {
            fail(&mut fx, ResponseError::InvalidTransactionTimeout);
            return fx;
        }
        if let Err(error) = self.check_owner(&transactional_id) {
            fail(&mut fx, error);
            return fx;
        }
        if !self.txns.contains_key(&transactional_id) {
            let Some(producer_id) = self.next_producer_id(&mut fx) else {
                fail(&mut fx, ResponseError::CoordinatorLoadInProgress);
                return fx;
            };
            self.txns.insert(
                transactional_id.clone(),
                TxnMetadata::new(&transactional_id, producer_id, timeout_ms, now_ms),
            );
        }
        let meta = self
            .txns
            .get_mut(&transactional_id)
            .expect("the transactional id was just found or created");
        if meta.pending.is_some() {
            fail(&mut fx, ResponseError::ConcurrentTransactions);
            return fx;
        }
        if let Some((producer_id, producer_epoch)) = expected {
            // A producer asking to keep its id (KIP-360) is fenced unless the id is new,
            // is its current one, or is the one just rotated away from at an exhausted
            // epoch (a retry whose answer was lost).
            let valid = meta.producer_epoch == NO_PRODUCER_EPOCH
                || producer_id == meta.producer_id
                || (producer_id == meta.last_producer_id && is_epoch_exhausted(producer_epoch));
            if !valid {
                fail(&mut fx, ResponseError::ProducerFenced);
                return fx;
            }
        }
        let (transit, then) = match meta.state {
            TransactionState::PrepareAbort | TransactionState::PrepareCommit => {
                fail(&mut fx, ResponseError::ConcurrentTransactions);
                return fx;
            }
            TransactionState::CompleteAbort
            | TransactionState::CompleteCommit
            | TransactionState::Empty => {
                let rotate = meta.is_epoch_exhausted()
                    && expected.is_none_or(|(_, epoch)| epoch == meta.producer_epoch);
                let transit = if rotate {
                    let id = self.producer_ids.next_id();
                    fx.want_producer_ids |= self.producer_ids.take_block_wanted();
                    let Some(new_producer_id) = id else {
                        fail(&mut fx, ResponseError::CoordinatorLoadInProgress);
                        return fx;
                    };
                    meta.prepare_producer_id_rotation(
                        new_producer_id,
                        timeout_ms,
                        now_ms,
                        expected.is_some(),
                    )
                } else {
                    match meta.prepare_increment_epoch(
                        timeout_ms,
                        expected.map(|(_, epoch)| epoch),
                        now_ms,
                    ) {
                        Ok(transit) => transit,
                        Err(error) => {
                            fail(&mut fx, error);
                            return fx;
                        }
                    }
                };
                (transit, AfterAppend::InitProducerId { token, version })
            }
            TransactionState::Ongoing => {
                // Abort the open transaction under a bumped epoch first. That epoch is
                // never handed out: the producer is answered CONCURRENT_TRANSACTIONS and
                // retries, which bumps the epoch again (and rotates the producer id if the
                // fencing used up the epochs).
                match meta.prepare_fence_and_abort(now_ms) {
                    Ok(transit) => (
                        transit,
                        AfterAppend::EndTxn {
                            caller: EndTxnCaller::InitFence { token, version },
                            result: TransactionResult::Abort,
                            epoch_fence: true,
                        },
                    ),
                    Err(error) => {
                        fail(&mut fx, error);
                        return fx;
                    }
                }
            }
            TransactionState::Dead | TransactionState::PrepareEpochFence => {
                debug_assert!(false, "{:?} is never a current state", meta.state);
                fail(&mut fx, ResponseError::UnknownServerError);
                return fx;
            }
        };
        self.append(&transactional_id, transit, then, &mut fx);
        fx
    }

    // ---------------------------------------------------------------------------------
    // AddPartitionsToTxn / AddOffsetsToTxn
    // ---------------------------------------------------------------------------------

    /// One transaction of an AddPartitionsToTxn request. `partition_exists` tells whether
    /// the metadata knows a partition (Kafka answers UNKNOWN_TOPIC_OR_PARTITION otherwise).
    pub fn add_partitions(
        &mut self,
        now_ms: i64,
        token: Token,
        req: AddPartitionsRequest,
        partition_exists: &dyn Fn(&TopicPartition) -> bool,
    ) -> Effects {
        let mut fx = Effects::default();
        let mut partitions: Vec<TopicPartition> = Vec::with_capacity(req.partitions.len());
        for tp in req.partitions {
            if !partitions.contains(&tp) {
                partitions.push(tp);
            }
        }
        let version = req.version;
        let all = |fx: &mut Effects, partitions: &[TopicPartition], error: ErrorCode| {
            let error = error.map(|e| for_version(e, add_knows_fenced(version)));
            fx.replies.push(Reply::AddPartitions(
                token,
                partitions.iter().map(|tp| (tp.clone(), error)).collect(),
            ))
        };
        // Partition checks come first (Kafka makes them before asking the coordinator):
        // clients may not add internal topics, and unknown partitions fail the whole
        // transaction, the others answered OPERATION_NOT_ATTEMPTED.
        let checked: Vec<(TopicPartition, ErrorCode)> = partitions
            .iter()
            .map(|tp| {
                let error = if version < 4 && is_internal_topic(&tp.topic) {
                    Some(ResponseError::TopicAuthorizationFailed)
                } else if !partition_exists(tp) {
                    Some(ResponseError::UnknownTopicOrPartition)
                } else {
                    None
                };
                (tp.clone(), error)
            })
            .collect();
        if checked.iter().any(|(_, e)| e.is_some()) {
            let errors = checked
                .into_iter()
                .map(|(tp, e)| (tp, e.or(Some(ResponseError::OperationNotAttempted))))
                .collect();
            fx.replies.push(Reply::AddPartitions(token, errors));
            return fx;
        }
        if req.transactional_id.is_empty() {
            all(&mut fx, &partitions, Some(ResponseError::InvalidRequest));
            return fx;
        }
        if req.verify_only {
            let knows_abortable = add_knows_transaction_abortable(version);
            let results = self
                .verify_partitions(
                    &req.transactional_id,
                    req.producer_id,
                    req.producer_epoch,
                    &partitions,
                )
                .into_iter()
                .map(|(tp, error)| match error {
                    Some(ResponseError::TransactionAbortable) if !knows_abortable => {
                        (tp, Some(ResponseError::InvalidTxnState))
                    }
                    other => (tp, other),
                })
                .collect();
            fx.replies.push(Reply::AddPartitions(token, results));
            return fx;
        }
        match self.prepare_add(
            now_ms,
            &req.transactional_id,
            req.producer_id,
            req.producer_epoch,
            &partitions,
        ) {
            Err(error) => all(&mut fx, &partitions, error),
            Ok(transit) => self.append(
                &req.transactional_id,
                transit,
                AfterAppend::AddPartitions {
                    token,
                    version,
                    partitions,
                },
                &mut fx,
            ),
        }
        fx
    }

    /// AddOffsetsToTxn: the group's `__consumer_offsets` partition joins the transaction,
    /// so its TxnOffsetCommits are committed or aborted with it.
    pub fn add_offsets(&mut self, now_ms: i64, token: Token, req: AddOffsetsRequest) -> Effects {
        let mut fx = Effects::default();
        let version = req.version;
        let reply = |fx: &mut Effects, error: ErrorCode| {
            let error = error.map(|e| for_version(e, add_knows_fenced(version)));
            fx.replies.push(Reply::AddOffsets(token, error))
        };
        if req.transactional_id.is_empty() {
            reply(&mut fx, Some(ResponseError::InvalidRequest));
            return fx;
        }
        let offsets_partition = TopicPartition::new(
            OFFSETS_TOPIC_NAME,
            partition_for_group(
                &req.group_id,
                self.config.offsets_topic_num_partitions.max(1),
            ),
        );
        match self.prepare_add(
            now_ms,
            &req.transactional_id,
            req.producer_id,
            req.producer_epoch,
            std::slice::from_ref(&offsets_partition),
        ) {
            Err(error) => reply(&mut fx, error),
            Ok(transit) => self.append(
                &req.transactional_id,
                transit,
                AfterAppend::AddOffsets { token, version },
                &mut fx,
            ),
        }
        fx
    }

    /// Kafka's `handleAddPartitionsToTransaction` checks. `Err(None)` means nothing to
    /// write: the partitions are already in the open transaction.
    fn prepare_add(
        &mut self,
        now_ms: i64,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[TopicPartition],
    ) -> Result<TxnTransit, ErrorCode> {
        self.check_owner(transactional_id).map_err(Some)?;
        let meta = self
            .txns
            .get_mut(transactional_id)
            .ok_or(Some(ResponseError::InvalidProducerIdMapping))?;
        // An id whose InitProducerId never reached the log has no producer yet.
        if meta.producer_id != producer_id || meta.producer_epoch < 0 {
            return Err(Some(ResponseError::InvalidProducerIdMapping));
        }
        if meta.producer_epoch != producer_epoch {
            return Err(Some(ResponseError::ProducerFenced));
        }
        if meta.pending.is_some()
            || matches!(
                meta.state,
                TransactionState::PrepareCommit | TransactionState::PrepareAbort
            )
        {
            return Err(Some(ResponseError::ConcurrentTransactions));
        }
        if meta.state == TransactionState::Ongoing
            && partitions.iter().all(|tp| meta.partitions.contains(tp))
        {
            return Err(None);
        }
        if matches!(
            meta.state,
            TransactionState::Dead | TransactionState::PrepareEpochFence
        ) {
            debug_assert!(false, "{:?} is never a current state", meta.state);
            return Err(Some(ResponseError::UnknownServerError));
        }
        Ok(meta.prepare_add_partitions(partitions.iter().cloned(), now_ms))
    }

    /// KIP-890 part 1 (AddPartitionsToTxn v4+ `verify_only`, from a partition leader about
    /// to append a producer's first transactional batch, or from this broker's own Produce
    /// and TxnOffsetCommit): is each partition in the open transaction of this producer?
    /// Nothing is written. A partition that is not gets TRANSACTION_ABORTABLE (the leader
    /// turns it into the error its client's version knows).
    pub fn verify_partitions(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[TopicPartition],
    ) -> Vec<(TopicPartition, ErrorCode)> {
        let all = |error: ResponseError| {
            partitions
                .iter()
                .map(|tp| (tp.clone(), Some(error)))
                .collect::<Vec<_>>()
        };
        if transactional_id.is_empty() {
            return all(ResponseError::InvalidRequest);
        }
        if let Err(error) = self.check_owner(transactional_id) {
            return all(error);
        }
        let Some(meta) = self.txns.get(transactional_id) else {
            return all(ResponseError::InvalidProducerIdMapping);
        };
        if meta.producer_id != producer_id {
            return all(ResponseError::InvalidProducerIdMapping);
        }
        if meta.producer_epoch != producer_epoch {
            return all(ResponseError::ProducerFenced);
        }
        if matches!(
            meta.state,
            TransactionState::PrepareCommit | TransactionState::PrepareAbort
        ) {
            return all(ResponseError::ConcurrentTransactions);
        }
        partitions
            .iter()
            .map(|tp| {
                let error =
                    (!meta.partitions.contains(tp)).then_some(ResponseError::TransactionAbortable);
                (tp.clone(), error)
            })
            .collect()
    }

    // ---------------------------------------------------------------------------------
    // EndTxn
    // ---------------------------------------------------------------------------------

    pub fn end_txn(&mut self, now_ms: i64, token: Token, req: EndTxnRequest) -> Effects {
        let mut fx = Effects::default();
        let version = req.version;
        let result = TransactionResult::from_committed(req.committed);
        match self.prepare_end(
            now_ms,
            &req.transactional_id,
            req.producer_id,
            req.producer_epoch,
            result,
        ) {
            Err(error) => {
                let error = error.map(|e| for_version(e, end_txn_knows_fenced(version)));
                fx.replies.push(Reply::EndTxn(token, error));
            }
            Ok(transit) => self.append(
                &req.transactional_id,
                transit,
                AfterAppend::EndTxn {
                    caller: EndTxnCaller::Client { token, version },
                    result,
                    epoch_fence: false,
                },
                &mut fx,
            ),
        }
        fx
    }

    /// Kafka's `endTransaction` checks for a producer's EndTxn. `Err(None)` is a retry of
    /// an EndTxn that already completed: success without a write.
    fn prepare_end(
        &mut self,
        now_ms: i64,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        result: TransactionResult,
    ) -> Result<TxnTransit, ErrorCode> {
        if transactional_id.is_empty() {
            return Err(Some(ResponseError::InvalidRequest));
        }
        self.check_owner(transactional_id).map_err(Some)?;
        let meta = self
            .txns
            .get_mut(transactional_id)
            .ok_or(Some(ResponseError::InvalidProducerIdMapping))?;
        if meta.producer_id != producer_id {
            return Err(Some(ResponseError::InvalidProducerIdMapping));
        }
        // A producer's request must carry the current epoch exactly.
        if producer_epoch != meta.producer_epoch {
            return Err(Some(ResponseError::ProducerFenced));
        }
        if meta.pending.is_some() {
            return Err(Some(ResponseError::ConcurrentTransactions));
        }
        let commit = result == TransactionResult::Commit;
        match meta.state {
            TransactionState::Ongoing => {
                let state = if commit {
                    TransactionState::PrepareCommit
                } else {
                    TransactionState::PrepareAbort
                };
                Ok(meta.prepare_abort_or_commit(state, now_ms))
            }
            TransactionState::CompleteCommit if commit => Err(None),
            TransactionState::CompleteAbort if !commit => Err(None),
            TransactionState::PrepareCommit if commit => {
                Err(Some(ResponseError::ConcurrentTransactions))
            }
            TransactionState::PrepareAbort if !commit => {
                Err(Some(ResponseError::ConcurrentTransactions))
            }
            TransactionState::Dead | TransactionState::PrepareEpochFence => {
                debug_assert!(false, "{:?} is never a current state", meta.state);
                Err(Some(ResponseError::UnknownServerError))
            }
            // Empty, or the other outcome than the one asked for.
            _ => Err(Some(ResponseError::InvalidTxnState)),
        }
    }

    // ---------------------------------------------------------------------------------
}
