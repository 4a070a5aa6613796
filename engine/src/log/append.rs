//! The append path: validate every batch, check idempotent producers, assign offsets and
//! queue the batches (the state machine, no I/O), then wait for the group commit to write
//! (and sync) them.

use std::rc::Rc;

use bytes::Bytes;
use wharf_protocol::batch::{batches, set_log_append_time, validate_batch, BatchInfo, IterEnd};

use crate::cache::{BatchCache, PartitionCache};
use crate::config::TimestampType;
use crate::error::EngineError;
use crate::producer::{AppendOrigin, ProducerError, ProducerStates, Verdict};
use crate::storage::Storage;
use crate::Offset;

use super::state::LogState;
use super::{write, AppendInfo, Durability, Inner, PartitionLog};

/// Every batch of a Produce request's `records`, validated: `(position, info)`.
fn validate_all(
    batches_bytes: &Bytes,
    max_message_bytes: u32,
) -> Result<Vec<(usize, BatchInfo)>, EngineError> {
    let mut infos = Vec::new();
    let mut iter = batches(batches_bytes);
    for (pos, bytes) in iter.by_ref() {
        let info = validate_batch(bytes, max_message_bytes as usize)
            .map_err(|e| EngineError::from_batch(e, max_message_bytes))?;
        infos.push((pos, info));
    }
    if iter.end() != IterEnd::Clean {
        let rest = &batches_bytes[iter.position()..];
        return Err(match validate_batch(rest, max_message_bytes as usize) {
            Err(e) => EngineError::from_batch(e, max_message_bytes),
            Ok(_) => {
                EngineError::CorruptMessage("trailing bytes after the last record batch".into())
            }
        });
    }
    if infos.is_empty() {
        return Err(EngineError::InvalidRecord("no record batches".into()));
    }
    Ok(infos)
}

/// The verdict on each batch of one append, in order: later batches of the same append see
/// the earlier ones (several batches of one request for one partition). Nothing changes
/// unless every batch passes, so an append stays all-or-nothing.
fn check_producers(
    producers: &ProducerStates,
    next_offset: i64,
    infos: &[(usize, BatchInfo)],
    now: i64,
    origin: AppendOrigin,
) -> Result<Vec<Verdict>, ProducerError> {
    if let [(_, info)] = infos {
        return Ok(vec![producers.check_from(info, origin)?]);
    }
    if infos
        .iter()
        .all(|(_, i)| i.producer_id < 0 && !i.is_transactional() && !i.is_control())
    {
        return Ok(vec![Verdict::NotIdempotent; infos.len()]);
    }
    let mut scratch = producers.subset(infos.iter().map(|(_, i)| i.producer_id));
    let mut next = next_offset;
    let mut verdicts = Vec::with_capacity(infos.len());
    for (_, info) in infos {
        let verdict = scratch.check_from(info, origin)?;
        if verdict == Verdict::Append {
            scratch.record(info, next, now);
        }
        if !matches!(verdict, Verdict::Duplicate(_)) {
            next += i64::from(info.last_offset_delta) + 1;
        }
        verdicts.push(verdict);
    }
    Ok(verdicts)
}

/// What one append assigned.
pub(crate) struct Assigned {
    pub(super) seq: u64,
    pub(super) first: i64,
    pub(super) last: i64,
    pub(super) log_append_time_ms: i64,
    pub(super) log_start: i64,
    pub(super) start_writer: bool,
}

impl<S: Storage> PartitionLog<S> {
    /// Append one or more RecordBatch v2 laid end to end (a Produce request's `records`).
    /// All are validated before anything is written; all-or-nothing. Offsets are assigned by
    /// rewriting `baseOffset` (and `partitionLeaderEpoch` to `leader_epoch`).
    pub async fn append(
        &self,
        batches_bytes: Bytes,
        leader_epoch: i32,
        durability: Durability,
    ) -> Result<AppendInfo, EngineError> {
        self.append_from(
            batches_bytes,
            leader_epoch,
            durability,
            AppendOrigin::Client,
        )
        .await
    }

    /// [`Self::append`] for batches of the given origin: the broker's own transaction
    /// markers and transactional offset commits use [`AppendOrigin::Coordinator`].
    pub async fn append_from(
        &self,
        batches_bytes: Bytes,
        leader_epoch: i32,
        durability: Durability,
        origin: AppendOrigin,
    ) -> Result<AppendInfo, EngineError> {
        let inner = &self.inner;
        while inner.state.borrow().truncating {
            drop(
                inner
                    .append_gate
                    .acquire()
                    .await
                    .map_err(|_| inner.closed_error())?,
            );
        }
        let max_message_bytes = inner.state.borrow().config.max_message_bytes;
        let infos = validate_all(&batches_bytes, max_message_bytes)?;
        let now = inner.storage.now_ms();
        inner.check_writable_at(now)?;
        let assigned = inner
            .state
            .borrow_mut()
            .append(
                &batches_bytes,
                infos,
                leader_epoch,
                now,
                &inner.cache,
                &inner.cached,
                origin,
            )
            .map_err(EngineError::from_producer)?;
        // Spawned outside the state borrow: an executor may run a new task right away.
        if assigned.start_writer {
            write::start_writer(inner);
        }
        inner
            .written
            .wait(assigned.seq)
            .await
            .map_err(|reason| inner.storage_error(reason))?;
        if durability == Durability::Synced {
            inner.wait_synced(assigned.seq).await?;
        }
        Ok(AppendInfo {
            base_offset: Offset(assigned.first),
            last_offset: Offset(assigned.last),
            log_append_time_ms: assigned.log_append_time_ms,
            log_start_offset: Offset(assigned.log_start),
        })
    }

    /// Resolves when everything appended before the call is durable; one `fdatasync` serves
    /// every waiter of an I/O cycle.
    pub async fn sync(&self) -> Result<(), EngineError> {
        let inner = &self.inner;
        let seq = {
            let st = inner.state.borrow();
            inner.check_open(&st)?;
            if let super::state::Health::Failed { reason, .. } = &st.health {
                return Err(inner.storage_error(reason.clone()));
            }
            st.appended_seq
        };
        inner
            .written
            .wait(seq)
            .await
            .map_err(|reason| inner.storage_error(reason))?;
        inner.wait_synced(seq).await
    }
}

impl LogState {
    /// One append's decisions, all or nothing: the producer checks (a retried batch
    /// answers with its first offsets, KIP-98), LogAppendTime stamping, offset assignment,
    /// rolls and index updates ([`LogState::assign`]), and whether the writer must start.
    /// No I/O: the batches are queued for the writer.
    pub fn append(
        &mut self,
        batches_bytes: &Bytes,
        infos: Vec<(usize, BatchInfo)>,
        leader_epoch: i32,
        now: i64,
        cache: &BatchCache,
        cached: &Rc<PartitionCache>,
        origin: AppendOrigin,
    ) -> Result<Assigned, ProducerError> {
        let verdicts = check_producers(&self.producers, self.next_offset, &infos, now, origin)?;
        let log_append = self.config.message_timestamp_type == TimestampType::LogAppendTime;
        let mut first = None;
        let mut last = 0;
        // With LogAppendTime, the append time of the first batch answered (as Kafka, a
        // duplicate's is that of its first append).
        let mut append_time = None;
        for ((pos, mut info), verdict) in infos.into_iter().zip(verdicts) {
            if let Verdict::Duplicate(original) = verdict {
                // KIP-98: a retried batch is not appended again; it answers with the
                // offsets of its first append.
                first.get_or_insert(original.base_offset);
                append_time.get_or_insert(original.timestamp_ms);
                last = last.max(original.last_offset);
                continue;
            }
            append_time.get_or_insert(now);
            let mut bytes = batches_bytes.slice(pos..pos + info.size_bytes);
            if log_append {
                let mut owned = bytes.to_vec();
                set_log_append_time(&mut owned, now);
                info.max_timestamp = now;
                info.attributes |= 1 << 3;
                bytes = Bytes::from(owned);
            }
            // Recorded after `assign`: a roll inside it snapshots the state before this batch.
            let producer_info = (verdict == Verdict::Append).then_some(info);
            let (base, end) = self.assign(bytes, info, leader_epoch, now, cache, cached);
            if let Some(producer_info) = producer_info {
                self.producers.record(&producer_info, base, now);
            }
            first.get_or_insert(base);
            last = end;
        }
        let start_writer =
            !self.pending.is_empty() && !std::mem::replace(&mut self.writer_running, true);
        Ok(Assigned {
            seq: self.appended_seq,
            first: first.expect("at least one batch was assigned or found"),
            last,
            log_append_time_ms: if log_append {
                append_time.unwrap_or(now)
            } else {
                -1
            },
            log_start: self.log_start_offset,
            start_writer,
        })
    }
}

impl<S: Storage> Inner<S> {
    pub(super) async fn wait_synced(self: &Rc<Self>, seq: u64) -> Result<(), EngineError> {
        if let Some(outcome) = self.synced.outcome(seq) {
            return outcome.map_err(|reason| self.storage_error(reason));
        }
        {
            let mut st = self.state.borrow_mut();
            st.sync_wanted = st.sync_wanted.max(seq);
        }
        write::maybe_start_syncer(self);
        self.synced
            .wait(seq)
            .await
            .map_err(|reason| self.storage_error(reason))
    }
}
