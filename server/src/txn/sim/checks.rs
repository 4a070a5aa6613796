//! What the simulator knows independently of the coordinator, and the invariants it checks
//! against it.

use std::collections::BTreeMap;

use wharf_protocol::txn::control::TransactionResult;
use wharf_protocol::txn::log::{TransactionLogRecord, TransactionState};

use crate::txn::coordinator::TxnCoordinator;
use crate::txn::metadata::TxnMetadata;

/// One transaction as its producer sees it: producer slot, incarnation of the producer in
/// that slot, and the transaction's number within the incarnation.
pub(super) type Identity = (usize, u64, u64);

/// Who last got a producer id and epoch for a transactional id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Grant {
    pub producer_id: i64,
    pub epoch: i16,
    pub slot: usize,
    pub incarnation: u64,
}

#[derive(Default)]
pub(super) struct Oracle {
    /// The last successful InitProducerId answer per transactional id.
    pub latest: BTreeMap<String, Grant>,
    /// What EndTxn answered each transaction's producer (success only).
    decided: BTreeMap<Identity, TransactionResult>,
    /// What markers made of each transaction's batches.
    outcomes: BTreeMap<Identity, TransactionResult>,
    /// The log's records replayed as a loading coordinator would.
    replayed: BTreeMap<String, TxnMetadata>,
}

fn result_name(r: TransactionResult) -> &'static str {
    match r {
        TransactionResult::Commit => "commit",
        TransactionResult::Abort => "abort",
    }
}

impl Oracle {
    /// An InitProducerId succeeded. At most one producer epoch is current per
    /// transactional id: every grant is newer than the last (a new producer id or a higher
    /// epoch), except a retry by the same producer, which gets the same again.
    pub fn on_init(&mut self, transactional_id: &str, grant: Grant) -> Result<(), String> {
        if let Some(prev) = self.latest.get(transactional_id) {
            let newer = (grant.producer_id, grant.epoch) > (prev.producer_id, prev.epoch);
            let retry = (
                grant.producer_id,
                grant.epoch,
                grant.slot,
                grant.incarnation,
            ) == (prev.producer_id, prev.epoch, prev.slot, prev.incarnation);
            if !newer && !retry {
                return Err(format!(
                    "InitProducerId for {transactional_id} handed out {}/{} to producer {}.{} after {}/{} went to {}.{}",
                    grant.producer_id, grant.epoch, grant.slot, grant.incarnation,
                    prev.producer_id, prev.epoch, prev.slot, prev.incarnation
                ));
            }
        }
        self.latest.insert(transactional_id.to_owned(), grant);
        Ok(())
    }

    /// A producer request other than InitProducerId succeeded: it must come from the
    /// current producer epoch (a fenced producer never gets anything done).
    pub fn check_current(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        what: &str,
    ) -> Result<(), String> {
        match self.latest.get(transactional_id) {
            Some(g) if (g.producer_id, g.epoch) == (producer_id, epoch) => Ok(()),
            Some(g) => Err(format!(
                "{what} for {transactional_id} succeeded with {producer_id}/{epoch} while {}/{} is current",
                g.producer_id, g.epoch
            )),
            None => Err(format!(
                "{what} for {transactional_id} succeeded with {producer_id}/{epoch} before any InitProducerId"
            )),
        }
    }

    /// A batch written with this producer id and epoch comes from a fenced producer.
    pub fn is_zombie(&self, transactional_id: &str, producer_id: i64, epoch: i16) -> bool {
        self.latest
            .get(transactional_id)
            .is_some_and(|g| (producer_id, epoch) < (g.producer_id, g.epoch))
    }

    /// EndTxn answered success for `identity`.
    pub fn on_decided(
        &mut self,
        identity: Identity,
        result: TransactionResult,
    ) -> Result<(), String> {
        if let Some(outcome) = self.outcomes.get(&identity) {
            if *outcome != result {
                return Err(format!(
                    "transaction {identity:?} was answered {} but its markers made it {}",
                    result_name(result),
                    result_name(*outcome)
                ));
            }
        }
        if let Some(before) = self.decided.insert(identity, result) {
            if before != result {
                return Err(format!(
                    "transaction {identity:?} was answered both {} and {}",
                    result_name(before),
                    result_name(result)
                ));
            }
        }
        Ok(())
    }

    /// A marker decided a batch of `identity`.
    pub fn on_outcome(
        &mut self,
        identity: Identity,
        result: TransactionResult,
        zombie: bool,
    ) -> Result<(), String> {
        if zombie && result == TransactionResult::Commit {
            return Err(format!(
                "a batch of transaction {identity:?} written by a fenced producer epoch was committed"
            ));
        }
        if let Some(before) = self.outcomes.insert(identity, result) {
            if before != result {
                return Err(format!(
                    "transaction {identity:?} was both committed and aborted"
                ));
            }
        }
        if let Some(decided) = self.decided.get(&identity) {
            if *decided != result {
                return Err(format!(
                    "transaction {identity:?} was answered {} but a marker made it {}",
                    result_name(*decided),
                    result_name(result)
                ));
            }
        }
        Ok(())
    }

    pub fn decided(&self) -> &BTreeMap<Identity, TransactionResult> {
        &self.decided
    }

    pub fn outcome(&self, identity: &Identity) -> Option<TransactionResult> {
        self.outcomes.get(identity).copied()
    }

    /// A record became durable in the log.
    pub fn on_logged(&mut self, record: &TransactionLogRecord) {
        let id = &record.transactional_id;
        match &record.value {
            Some(value) => {
                self.replayed
                    .insert(id.clone(), TxnMetadata::from_log(id, value));
            }
            None => {
                self.replayed.remove(id);
            }
        }
    }

    /// The coordinator's state is the replay of its log: every transactional id with the
    /// same producer, epoch, state, timeout, timestamps and partitions. What the log cannot
    /// show yet is allowed: an id whose first InitProducerId is not written, the epoch a
    /// fencing abort bumped in memory before its record is written (or after it failed),
    /// and partitions whose markers are written (they leave the in-memory set).
    pub fn compare(&self, live: &TxnCoordinator) -> Result<(), String> {
        for m in live.transactions() {
            let id = &m.transactional_id;
            let Some(r) = self.replayed.get(id) else {
                if m.producer_epoch >= 0 {
                    return Err(format!("{id} is in memory ({m:?}) but not in the log"));
                }
                continue;
            };
            let fenced_in_memory = m.state == TransactionState::Ongoing
                && (m.has_failed_epoch_fence || m.pending == Some(TransactionState::PrepareAbort))
                && i32::from(m.producer_epoch) == i32::from(r.producer_epoch) + 1;
            let epoch_ok = m.producer_epoch == r.producer_epoch || fenced_in_memory;
            let partitions_ok = match m.state {
                TransactionState::PrepareCommit | TransactionState::PrepareAbort => {
                    m.partitions.is_subset(&r.partitions)
                }
                _ => m.partitions == r.partitions,
            };
            let same = m.producer_id == r.producer_id
                && epoch_ok
                && m.state == r.state
                && m.timeout_ms == r.timeout_ms
                && m.start_timestamp_ms == r.start_timestamp_ms
                && m.last_update_timestamp_ms == r.last_update_timestamp_ms
                && partitions_ok;
            if !same {
                return Err(format!(
                    "{id} in memory differs from the log's replay:\n  memory {m:?}\n  replay {r:?}"
                ));
            }
        }
        for id in self.replayed.keys() {
            if live.transaction(id).is_none() {
                return Err(format!("{id} is in the log but not in memory"));
            }
        }
        Ok(())
    }
}
