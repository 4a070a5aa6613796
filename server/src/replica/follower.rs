//! The follower's rules: when and from where to fetch, what to make of the leader's answer
//! (append after checking every batch, truncate where the logs diverge by leader epoch,
//! KIP-101/279/320, never by high watermark), the follower's high watermark and log start.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use wharf_protocol::batch::{batches, validate_batch_with, CountRule, IterEnd};
use wharf_protocol::replication::{EpochEndOffset, FetchPartition, PartitionHeader};

use super::api::*;
use super::state::*;

/// How many of a follower's latest fetch answers may be appended and not yet synced when
/// it fetches again: its disk syncs while it fetches, and a sync slower than a round
/// does not stop the stream. Only synced records count toward the high watermark.
pub const MAX_UNSYNCED_ANSWERS: usize = 4;

impl ReplicaState {
    /// Whether the log has appended data not yet on disk (the driver syncs it; the next
    /// fetch reports what the sync covered).
    pub fn needs_sync(&self) -> bool {
        self.durable_end_offset < self.log_end_offset
    }

    /// The fetch to send now, if any: a follower with a leader, nothing in flight, not
    /// backing off or fenced. The fetch is then in flight until its answer
    /// ([`ReplicaState::on_fetch_response`]) or [`ReplicaState::fetch_failed`].
    ///
    /// A follower asks for more while it syncs what the last answers brought, but not
    /// further than [`MAX_UNSYNCED_ANSWERS`]: everything below the offset it fetched from
    /// that many fetches ago must be on disk first. Each fetch reports how far the log is
    /// synced (`synced_offset`), which is all the leader counts toward the high watermark.
    pub fn next_fetch(&mut self, now_ms: i64) -> Option<FetchPosition> {
        let position = FetchPosition {
            leader: self.known_leader()?,
            current_leader_epoch: self.leader_epoch,
            fetch_offset: self.log_end_offset,
            synced_offset: self.durable_end_offset.min(self.log_end_offset),
            last_fetched_epoch: self.epochs.latest_epoch().unwrap_or(-1),
            log_start_offset: self.log_start_offset,
        };
        let durable = self.durable_end_offset;
        let needs_sync = self.needs_sync();
        let Role::Follower(f) = &mut self.role else {
            return None;
        };
        if f.in_flight.is_some() || f.fenced || now_ms < f.retry_at_ms {
            return None;
        }
        if needs_sync
            && f.recent_fetch_offsets
                .front()
                .is_none_or(|&oldest| durable < oldest)
        {
            return None;
        }
        if position.leader == self.local {
            return None;
        }
        f.in_flight = Some(position);
        if f.recent_fetch_offsets.len() == MAX_UNSYNCED_ANSWERS {
            f.recent_fetch_offsets.pop_front();
        }
        f.recent_fetch_offsets.push_back(position.fetch_offset);
        Some(position)
    }

    /// Wait `replica.fetch.backoff.ms` before the next fetch (the driver's log operation
    /// for the last answer failed).
    pub fn delay_next_fetch(&mut self, now_ms: i64) {
        self.back_off(now_ms);
    }

    /// The fetch in flight got no answer (its connection closed, or it timed out): fetch
    /// again after `replica.fetch.backoff.ms`.
    pub fn fetch_failed(&mut self, now_ms: i64) {
        let backoff = self.config.replica_fetch_backoff_ms;
        if let Role::Follower(f) = &mut self.role {
            if f.in_flight.take().is_some() {
                f.retry_at_ms = now_ms + backoff;
            }
        }
    }

    /// The leader's answer for this partition: `asked` is the partition of the request it
    /// answers, `records` the bytes that followed its header.
    pub fn on_fetch_response(
        &mut self,
        asked: &FetchPartition,
        header: &PartitionHeader,
        records: &Bytes,
        now_ms: i64,
    ) -> (FetchOutcome, Effects) {
        let mut effects = Effects::default();
        let Role::Follower(f) = &mut self.role else {
            return (FetchOutcome::Stale, effects);
        };
        if !f.in_flight.is_some_and(|p| p.matches(asked)) {
            return (FetchOutcome::Stale, effects);
        }
        f.in_flight = None;
        if header.error_code != 0 {
            let error = ResponseError::try_from_code(header.error_code)
                .unwrap_or(ResponseError::UnknownServerError);
            return match error {
                ResponseError::OffsetOutOfRange
                    if header.log_start_offset > self.log_end_offset =>
                {
                    // The leader's log starts past ours (retention or DeleteRecords there):
                    // there is nothing to keep, start over at its start.
                    let to = header.log_start_offset;
                    self.truncate_fully_and_start_at(to, &mut effects);
                    (FetchOutcome::Truncated { to }, effects)
                }
                ResponseError::OffsetOutOfRange if header.log_start_offset >= 0 => {
                    // Past the leader's end with no epoch to compare (our log has no
                    // batch): refetch what the leader has. Never cut at a high watermark.
                    let to = header.log_start_offset;
                    self.truncate_fully_and_start_at(to, &mut effects);
                    (FetchOutcome::Truncated { to }, effects)
                }
                ResponseError::FencedLeaderEpoch => {
                    // Our epoch is old: newer metadata will say whom to follow.
                    if let Role::Follower(f) = &mut self.role {
                        f.fenced = true;
                    }
                    (FetchOutcome::LeaderError(error), effects)
                }
                _ => {
                    self.back_off(now_ms);
                    (FetchOutcome::LeaderError(error), effects)
                }
            };
        }
        if let Some(diverging) = header.diverging_epoch {
            return match self.truncation_offset(diverging) {
                Some(to) => {
                    self.truncate_to(to, &mut effects);
                    (FetchOutcome::Truncated { to }, effects)
                }
                None => {
                    self.back_off(now_ms);
                    (
                        FetchOutcome::Refused(format!(
                            "diverging epoch {} without an end offset ({})",
                            diverging.epoch, diverging.end_offset
                        )),
                        effects,
                    )
                }
            };
        }
        let checked = match self.check_batches(records, header.leader_epoch) {
            Ok(checked) => checked,
            Err(reason) => {
                self.back_off(now_ms);
                return (FetchOutcome::Refused(reason), effects);
            }
        };
        if let Some(end_offset) = checked.end_offset {
            for &(epoch, base) in &checked.new_epochs {
                self.epochs.assign(epoch, base);
            }
            effects.log.push(LogOp::AppendAsFollower {
                records: records.clone(),
                base_offset: self.log_end_offset,
                end_offset,
            });
            self.log_end_offset = end_offset;
        }
        // The follower's high watermark is the leader's, as far as its own log goes.
        if header.high_watermark >= 0 {
            let high_watermark = header.high_watermark.min(self.log_end_offset);
            if high_watermark != self.high_watermark {
                self.high_watermark = high_watermark;
                effects.high_watermark = Some(high_watermark);
            }
        }
        // KIP-107: the log start follows the leader's, never past what is committed here.
        if header.log_start_offset > self.log_start_offset {
            let start = header
                .log_start_offset
                .min(self.high_watermark)
                .min(self.log_end_offset);
            if start > self.log_start_offset {
                self.log_start_offset = start;
                self.epochs.truncate_from_start(start);
                effects.log.push(LogOp::AdvanceLogStart { offset: start });
            }
        }
        (
            FetchOutcome::Appended {
                batches: checked.batches,
                bytes: records.len(),
            },
            effects,
        )
    }

    fn back_off(&mut self, now_ms: i64) {
        let backoff = self.config.replica_fetch_backoff_ms;
        if let Role::Follower(f) = &mut self.role {
            f.retry_at_ms = now_ms + backoff;
        }
    }

    /// Where to cut the log for the leader's diverging epoch (Kafka's
    /// `getOffsetTruncationState`, KIP-279): if this log knows the leader's epoch, at the
    /// earlier of the two ends of that epoch; if not, at the end of our largest epoch below
    /// it, and the next fetch compares again from there. `None` if the leader gave no end.
    fn truncation_offset(&self, diverging: EpochEndOffset) -> Option<i64> {
        if diverging.end_offset < 0 {
            return None;
        }
        let end = self.log_end_offset;
        if diverging.epoch < 0 {
            return Some(diverging.end_offset.min(end));
        }
        Some(match self.epochs.end_offset_for(diverging.epoch, end) {
            Some((epoch, offset)) if epoch != diverging.epoch => offset.min(end),
            Some((_, offset)) => offset.min(diverging.end_offset).min(end),
            None => diverging.end_offset.min(end),
        })
    }

    fn truncate_to(&mut self, offset: i64, effects: &mut Effects) {
        if offset < self.log_start_offset {
            self.truncate_fully_and_start_at(offset, effects);
            return;
        }
        // Even at the log end this can drop an epoch with no batch (one this replica
        // started as leader), which would otherwise diverge again and again.
        self.epochs.truncate_from_end(offset);
        self.log_end_offset = offset;
        self.durable_end_offset = self.durable_end_offset.min(offset);
        self.high_watermark = self.high_watermark.min(offset);
        // The log lowers its checkpoint before it cuts.
        self.checkpointed_high_watermark = self.checkpointed_high_watermark.map(|c| c.min(offset));
        effects.log.push(LogOp::TruncateTo { offset });
    }

    fn truncate_fully_and_start_at(&mut self, offset: i64, effects: &mut Effects) {
        self.epochs = Default::default();
        self.log_start_offset = offset;
        self.log_end_offset = offset;
        self.durable_end_offset = offset;
        self.high_watermark = offset;
        self.checkpointed_high_watermark = self.checkpointed_high_watermark.map(|c| c.min(offset));
        effects.log.push(LogOp::TruncateFullyAndStartAt { offset });
    }

    /// The checks before a follower appends the leader's bytes: whole batches laid end to
    /// end, each passing its CRC-32C and framing checks, the first starting at our log end
    /// and each where the previous ended, with leader epochs that never go down and never
    /// pass the leader's.
    fn check_batches(&self, records: &Bytes, leader_epoch: i32) -> Result<CheckedBatches, String> {
        let mut checked = CheckedBatches::default();
        let mut expected = self.log_end_offset;
        let mut latest_epoch = self.epochs.latest_epoch().unwrap_or(-1);
        let max_epoch = if leader_epoch >= 0 {
            leader_epoch.min(self.leader_epoch)
        } else {
            self.leader_epoch
        };
        let mut walk = batches(records);
        for (position, batch) in &mut walk {
            let info = validate_batch_with(batch, batch.len(), CountRule::AtMost)
                .map_err(|e| format!("batch at byte {position}: {e}"))?;
            if info.base_offset != expected {
                return Err(format!(
                    "batch at byte {position} starts at offset {}, the log ends at {expected}",
                    info.base_offset
                ));
            }
            let epoch = info.partition_leader_epoch;
            if epoch < 0 || epoch < latest_epoch || epoch > max_epoch {
                return Err(format!(
                    "batch at offset {expected} has leader epoch {epoch}, outside {}..={max_epoch}",
                    latest_epoch.max(0)
                ));
            }
            if epoch > latest_epoch {
                checked.new_epochs.push((epoch, info.base_offset));
                latest_epoch = epoch;
            }
            expected = info.last_offset() + 1;
            checked.batches += 1;
        }
        if walk.end() != IterEnd::Clean {
            return Err(format!(
                "records end in a partial batch at byte {}",
                walk.position()
            ));
        }
        if checked.batches > 0 {
            checked.end_offset = Some(expected);
        }
        Ok(checked)
    }
}

#[derive(Default)]
struct CheckedBatches {
    batches: usize,
    end_offset: Option<i64>,
    /// Epochs that begin in these batches, with their first offsets.
    new_epochs: Vec<(i32, i64)>,
}
