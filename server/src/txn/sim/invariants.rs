//! The invariants checked after every event, and at the end once everything settled.

use super::*;

impl World {
    pub(super) fn check(&mut self) -> Result<(), String> {
        if let Some(c) = &self.coordinator {
            if matches!(c.status(), Status::Active { .. }) && !self.ambiguous {
                self.oracle.compare(c)?;
            }
        }
        for (tp, p) in &self.partitions {
            let lso = p.txns.last_stable_offset(p.high_watermark);
            if lso > p.high_watermark {
                return Err(format!(
                    "{tp:?}: LSO {lso} above the high watermark {}",
                    p.high_watermark
                ));
            }
            if let Some(first) = p.open.values().min() {
                if lso > *first {
                    return Err(format!(
                        "{tp:?}: LSO {lso} passed the open transaction at {first}"
                    ));
                }
            }
            let unstable = p
                .open
                .values()
                .copied()
                .chain(p.unreplicated.iter().map(|(first, _)| *first))
                .min();
            let expect = unstable.map_or(p.high_watermark, |u| u.min(p.high_watermark));
            if lso != expect {
                return Err(format!("{tp:?}: LSO {lso}, the model says {expect}"));
            }
        }
        Ok(())
    }

    pub(super) fn final_checks(&mut self) -> Result<(), String> {
        let Some(c) = &self.coordinator else {
            return Err("no coordinator at the end".into());
        };
        if !matches!(c.status(), Status::Active { .. }) {
            return Err(format!("the coordinator is {:?} at the end", c.status()));
        }
        for m in c.transactions() {
            if m.pending.is_some()
                || matches!(
                    m.state,
                    TransactionState::Ongoing
                        | TransactionState::PrepareCommit
                        | TransactionState::PrepareAbort
                )
            {
                return Err(format!(
                    "{} did not settle: {:?} (pending {:?})",
                    m.transactional_id, m.state, m.pending
                ));
            }
        }
        // The state is what a coordinator loading the log from its bytes gets.
        let mut fresh = TxnCoordinator::new(self.config.clone(), 0);
        let records = self.decoded_log()?;
        fresh.load(self.now, self.coordinator_epoch + 1, &records);
        for m in c.transactions() {
            let f = fresh.transaction(&m.transactional_id);
            let same = f.is_some_and(|f| {
                (
                    f.producer_id,
                    f.producer_epoch,
                    f.state,
                    &f.partitions,
                    f.timeout_ms,
                ) == (
                    m.producer_id,
                    m.producer_epoch,
                    m.state,
                    &m.partitions,
                    m.timeout_ms,
                )
            });
            if !same && m.producer_epoch >= 0 {
                return Err(format!(
                    "{} differs from a fresh load of the log: {m:?} vs {f:?}",
                    m.transactional_id
                ));
            }
        }
        for (tp, p) in &self.partitions {
            if let Some((first, pid)) = p.txns.ongoing().next() {
                return Err(format!(
                    "{tp:?}: the transaction of producer {pid} from offset {first} never ended"
                ));
            }
            if p.txns.last_stable_offset(p.log_end) != p.log_end {
                return Err(format!("{tp:?}: the LSO did not reach the log end"));
            }
            if let Some(b) = p.batches.iter().find(|b| b.outcome.is_none()) {
                return Err(format!("{tp:?}: batch {b:?} was never decided"));
            }
            let indexed: Vec<(i64, i64, i64)> = p
                .txns
                .aborted_in_range(0, p.log_end)
                .iter()
                .map(|e| (e.producer_id, e.first_offset, e.last_offset))
                .collect();
            if indexed != p.aborted {
                return Err(format!(
                    "{tp:?}: the aborted index {indexed:?} differs from the aborts {:?}",
                    p.aborted
                ));
            }
        }
        for (identity, result) in self.oracle.decided() {
            if let Some(outcome) = self.oracle.outcome(identity) {
                if outcome != *result {
                    return Err(format!(
                        "{identity:?}: answered {result:?}, ended {outcome:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// FNV-1a over the log and the partitions' offsets.
    pub(super) fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for (k, v) in &self.log {
            eat(k);
            eat(v.as_deref().unwrap_or(b"-"));
        }
        for (tp, p) in &self.partitions {
            eat(tp.topic.as_bytes());
            eat(&tp.partition.to_be_bytes());
            eat(&p.log_end.to_be_bytes());
        }
        eat(&self.stats.events.to_be_bytes());
        h
    }
}
