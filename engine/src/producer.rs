//! Idempotent producers (KIP-98, without transactions): per partition, each producer id's
//! epoch and the metadata of its last [`MAX_BATCHES_PER_PRODUCER`] batches, so that a retried
//! batch is recognised as a duplicate and answered with the offsets it got the first time,
//! and a gap or a fenced epoch is refused.
//!
//! A plain state machine: the log checks and updates it in the same step that assigns
//! offsets, recovery rebuilds it from a snapshot plus the batches after it, and it knows
//! nothing of files or time beyond the timestamps it is given.

use std::collections::{HashMap, VecDeque};

use wharf_protocol::batch::BatchInfo;

/// Batches remembered per producer (Kafka's `ProducerStateEntry.NUM_BATCHES_TO_RETAIN`,
/// which is why a producer may have at most 5 requests in flight).
pub const MAX_BATCHES_PER_PRODUCER: usize = 5;
/// `producer.id.expiration.ms` default: a producer silent this long is forgotten.
pub const DEFAULT_PRODUCER_ID_EXPIRATION_MS: i64 = 86_400_000;
/// Largest snapshot file read on recovery.
pub const MAX_SNAPSHOT_BYTES: u64 = 256 << 20;
/// Snapshot files are named `<20-digit offset>.snapshot`, like Kafka's.
pub(crate) const SNAPSHOT_SUFFIX: &str = ".snapshot";

const SNAPSHOT_MAGIC: &[u8; 4] = b"WPST";
const SNAPSHOT_VERSION: u16 = 1;
const SNAPSHOT_HEADER_BYTES: usize = 4 + 2 + 4 + 8 + 4;
const PRODUCER_BYTES: usize = 8 + 2 + 8 + 1;
const BATCH_BYTES: usize = 4 + 4 + 8 + 8 + 8;

/// One remembered batch of a producer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BatchMetadata {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: i64,
    pub last_offset: i64,
    pub timestamp_ms: i64,
}

/// What a partition knows about one producer id. Invariant: `batches` holds at most
/// [`MAX_BATCHES_PER_PRODUCER`] batches of `epoch`, oldest first, in sequence order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<BatchMetadata>,
    /// Broker time of the producer's last append (for `producer.id.expiration.ms`).
    pub last_timestamp_ms: i64,
}

/// Why a producer's batch is refused; each maps to one Kafka error code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProducerError {
    /// INVALID_PRODUCER_EPOCH: an epoch older than the partition has seen (a zombie).
    InvalidProducerEpoch(String),
    /// OUT_OF_ORDER_SEQUENCE_NUMBER: a gap (or a new epoch not starting at 0).
    OutOfOrderSequence(String),
    /// Transactional batches need a transaction coordinator, which is not built.
    Transactional(String),
    /// A producer id with no epoch or sequence: INVALID_RECORD.
    Invalid(String),
}

/// What to do with one batch.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No producer id: append without bookkeeping.
    NotIdempotent,
    /// Append, then record it with [`ProducerStates::record`].
    Append,
    /// Already in the log: append nothing and answer with the first attempt's offsets.
    Duplicate(BatchMetadata),
}

/// The batch's last sequence; sequences wrap from `i32::MAX` to 0 (Kafka's
/// `DefaultRecordBatch.incrementSequence`).
pub fn last_sequence(base_sequence: i32, last_offset_delta: i32) -> i32 {
    increment_sequence(base_sequence, last_offset_delta)
}

fn increment_sequence(sequence: i32, increment: i32) -> i32 {
    if sequence > i32::MAX - increment {
        increment - (i32::MAX - sequence) - 1
    } else {
        sequence + increment
    }
}

fn in_sequence(last: i32, next: i32) -> bool {
    i64::from(next) == i64::from(last) + 1 || (next == 0 && last == i32::MAX)
}

/// Every producer a partition remembers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerStates {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Every producer, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&i64, &ProducerEntry)> {
        self.producers.iter()
    }

    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// A copy of the entries of the given producer ids only (to check a multi-batch append
    /// without copying every producer of the partition).
    pub fn subset(&self, producer_ids: impl Iterator<Item = i64>) -> ProducerStates {
        let mut out = ProducerStates::default();
        for pid in producer_ids {
            if let Some(entry) = self.producers.get(&pid) {
                out.producers.insert(pid, entry.clone());
            }
        }
        out
    }

    /// Checks a client's batch against the state (Kafka's
    /// `UnifiedLog.analyzeAndValidateProducerState` and `ProducerAppendInfo`). Changes nothing.
    pub fn check(&self, info: &BatchInfo) -> Result<Verdict, ProducerError> {
        if info.producer_id < 0 {
            if info.is_transactional() {
                return Err(ProducerError::Transactional(
                    "a transactional batch without a producer id".into(),
                ));
            }
            return Ok(Verdict::NotIdempotent);
        }
        let pid = info.producer_id;
        if info.is_transactional() || info.is_control() {
            return Err(ProducerError::Transactional(format!(
                "producer {pid} sent a transactional batch; this broker does not support transactions"
            )));
        }
        if info.producer_epoch < 0 || info.base_sequence < 0 {
            return Err(ProducerError::Invalid(format!(
                "producer {pid} sent epoch {} and sequence {}",
                info.producer_epoch, info.base_sequence
            )));
        }
        let first = info.base_sequence;
        let last = last_sequence(first, info.last_offset_delta);
        let Some(entry) = self.producers.get(&pid) else {
            // Kafka accepts any sequence from a producer it has no state for (its records
            // may have gone with retention or DeleteRecords); UNKNOWN_PRODUCER_ID is no
            // longer returned since KIP-360.
            return Ok(Verdict::Append);
        };
        if info.producer_epoch < entry.epoch {
            return Err(ProducerError::InvalidProducerEpoch(format!(
                "epoch {} of producer {pid} is older than the last seen epoch {}",
                info.producer_epoch, entry.epoch
            )));
        }
        if info.producer_epoch == entry.epoch {
            if let Some(dup) = entry
                .batches
                .iter()
                .find(|b| b.first_sequence == first && b.last_sequence == last)
            {
                return Ok(Verdict::Duplicate(*dup));
            }
            match entry.batches.back() {
                Some(prev) if !in_sequence(prev.last_sequence, first) => {
                    Err(ProducerError::OutOfOrderSequence(format!(
                        "out of order sequence for producer {pid}: {first} (incoming), {} (current end)",
                        prev.last_sequence
                    )))
                }
                _ => Ok(Verdict::Append),
            }
        } else if first != 0 {
            Err(ProducerError::OutOfOrderSequence(format!(
                "producer {pid} starts epoch {} at sequence {first}, not 0",
                info.producer_epoch
            )))
        } else {
            Ok(Verdict::Append)
        }
    }

    /// Records a batch appended at `base_offset..=last_offset` (client appends after
    /// [`ProducerStates::check`], and recovery replaying the log, which does not check).
    pub fn record(&mut self, info: &BatchInfo, base_offset: i64, now_ms: i64) {
        if info.producer_id < 0 || info.producer_epoch < 0 || info.base_sequence < 0 {
            return;
        }
        let batch = BatchMetadata {
            first_sequence: info.base_sequence,
            last_sequence: last_sequence(info.base_sequence, info.last_offset_delta),
            base_offset,
            last_offset: base_offset + i64::from(info.last_offset_delta),
            timestamp_ms: info.max_timestamp,
        };
        let entry = self
            .producers
            .entry(info.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: info.producer_epoch,
                batches: VecDeque::new(),
                last_timestamp_ms: now_ms,
            });
        if info.producer_epoch != entry.epoch {
            entry.epoch = info.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == MAX_BATCHES_PER_PRODUCER {
            entry.batches.pop_front();
        }
        entry.batches.push_back(batch);
        entry.last_timestamp_ms = entry.last_timestamp_ms.max(now_ms);
    }

    /// Sets every producer's last append time (recovery: replayed batches count as seen
    /// when the log was opened).
    pub fn set_last_timestamps(&mut self, now_ms: i64) {
        for e in self.producers.values_mut() {
            e.last_timestamp_ms = now_ms;
        }
    }

    /// Forgets producers silent for `expiration_ms` (`producer.id.expiration.ms`); returns
    /// how many went.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_timestamp_ms) < expiration_ms);
        before - self.producers.len()
    }

    /// Forgets every batch at or after `offset` (the log was truncated there); a producer
    /// left with no batch is forgotten, as Kafka rebuilds its state from what remains.
    pub fn truncate_from(&mut self, offset: i64) {
        self.producers.retain(|_, e| {
            while e.batches.back().is_some_and(|b| b.last_offset >= offset) {
                e.batches.pop_back();
            }
            !e.batches.is_empty()
        });
    }

    /// Applies state rebuilt from later batches of the log over this (earlier) state, as if
    /// those batches had been recorded here one by one.
    pub fn extend_with_later(&mut self, later: ProducerStates) {
        for (pid, newer) in later.producers {
            match self.producers.get_mut(&pid) {
                Some(entry) if entry.epoch == newer.epoch => {
                    for b in newer.batches {
                        if entry.batches.len() == MAX_BATCHES_PER_PRODUCER {
                            entry.batches.pop_front();
                        }
                        entry.batches.push_back(b);
                    }
                    entry.last_timestamp_ms = entry.last_timestamp_ms.max(newer.last_timestamp_ms);
                }
                _ => {
                    self.producers.insert(pid, newer);
                }
            }
        }
    }

    /// The snapshot file's bytes (format in docs/engine.md), producers in id order.
    pub fn encode(&self) -> Vec<u8> {
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort_unstable();
        let batches: usize = self.producers.values().map(|e| e.batches.len()).sum();
        let mut body =
            Vec::with_capacity(PRODUCER_BYTES * self.producers.len() + BATCH_BYTES * batches);
        for pid in ids {
            let e = &self.producers[pid];
            body.extend_from_slice(&pid.to_be_bytes());
            body.extend_from_slice(&e.epoch.to_be_bytes());
            body.extend_from_slice(&e.last_timestamp_ms.to_be_bytes());
            body.push(e.batches.len() as u8);
            for b in &e.batches {
                body.extend_from_slice(&b.first_sequence.to_be_bytes());
                body.extend_from_slice(&b.last_sequence.to_be_bytes());
                body.extend_from_slice(&b.base_offset.to_be_bytes());
                body.extend_from_slice(&b.last_offset.to_be_bytes());
                body.extend_from_slice(&b.timestamp_ms.to_be_bytes());
            }
        }
        let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + body.len());
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Parses a snapshot; `None` for anything damaged, truncated or of another version.
    pub fn decode(bytes: &[u8]) -> Option<ProducerStates> {
        let mut r = Reader(bytes);
        if r.take(4)? != SNAPSHOT_MAGIC || u16::from_be_bytes(r.array()?) != SNAPSHOT_VERSION {
            return None;
        }
        let crc = u32::from_be_bytes(r.array()?);
        let body_len = u64::from_be_bytes(r.array()?);
        let count = u32::from_be_bytes(r.array()?) as usize;
        if body_len != r.0.len() as u64 || crc32c::crc32c(r.0) != crc {
            return None;
        }
        // Bounded by what the bytes can hold, not by the count field.
        if count > r.0.len() / PRODUCER_BYTES {
            return None;
        }
        let mut producers = HashMap::with_capacity(count);
        for _ in 0..count {
            let pid = i64::from_be_bytes(r.array()?);
            let epoch = i16::from_be_bytes(r.array()?);
            let last_timestamp_ms = i64::from_be_bytes(r.array()?);
            let n = r.take(1)?[0] as usize;
            if n > MAX_BATCHES_PER_PRODUCER {
                return None;
            }
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                batches.push_back(BatchMetadata {
                    first_sequence: i32::from_be_bytes(r.array()?),
                    last_sequence: i32::from_be_bytes(r.array()?),
                    base_offset: i64::from_be_bytes(r.array()?),
                    last_offset: i64::from_be_bytes(r.array()?),
                    timestamp_ms: i64::from_be_bytes(r.array()?),
                });
            }
            producers.insert(
                pid,
                ProducerEntry {
                    epoch,
                    batches,
                    last_timestamp_ms,
                },
            );
        }
        r.0.is_empty().then_some(ProducerStates { producers })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_protocol::batch::Compression;

    fn batch(pid: i64, epoch: i16, seq: i32, count: i32) -> BatchInfo {
        BatchInfo {
            size_bytes: 100,
            base_offset: 0,
            partition_leader_epoch: 0,
            attributes: 0,
            compression: Compression::None,
            last_offset_delta: count - 1,
            base_timestamp: 1,
            max_timestamp: 1,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            records_count: count,
        }
    }

    fn apply(s: &mut ProducerStates, b: &BatchInfo, offset: i64) -> Result<Verdict, ProducerError> {
        let v = s.check(b)?;
        if v == Verdict::Append {
            s.record(b, offset, 0);
        }
        Ok(v)
    }

    #[test]
    fn a_retried_batch_is_a_duplicate_with_its_first_offsets() {
        let mut s = ProducerStates::default();
        assert_eq!(apply(&mut s, &batch(7, 0, 0, 3), 10), Ok(Verdict::Append));
        assert_eq!(apply(&mut s, &batch(7, 0, 3, 2), 13), Ok(Verdict::Append));
        match s.check(&batch(7, 0, 0, 3)) {
            Ok(Verdict::Duplicate(b)) => assert_eq!((b.base_offset, b.last_offset), (10, 12)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut s = ProducerStates::default();
        for i in 0..6 {
            apply(&mut s, &batch(1, 0, i, 1), i64::from(i)).unwrap();
        }
        // Sequence 0 is forgotten: no longer a duplicate, and out of order.
        assert!(matches!(
            s.check(&batch(1, 0, 0, 1)),
            Err(ProducerError::OutOfOrderSequence(_))
        ));
        assert!(matches!(
            s.check(&batch(1, 0, 1, 1)),
            Ok(Verdict::Duplicate(_))
        ));
    }

    #[test]
    fn gaps_old_epochs_and_new_epochs_follow_kafkas_rules() {
        let mut s = ProducerStates::default();
        // Unknown producer: any sequence (KIP-360).
        assert_eq!(apply(&mut s, &batch(1, 2, 5, 1), 0), Ok(Verdict::Append));
        assert!(matches!(
            s.check(&batch(1, 2, 7, 1)),
            Err(ProducerError::OutOfOrderSequence(_))
        ));
        assert!(matches!(
            s.check(&batch(1, 1, 6, 1)),
            Err(ProducerError::InvalidProducerEpoch(_))
        ));
        assert!(matches!(
            s.check(&batch(1, 3, 6, 1)),
            Err(ProducerError::OutOfOrderSequence(_))
        ));
        assert_eq!(apply(&mut s, &batch(1, 3, 0, 1), 1), Ok(Verdict::Append));
        assert_eq!(s.get(1).map(|e| e.batches.len()), Some(1));
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut s = ProducerStates::default();
        apply(&mut s, &batch(1, 0, i32::MAX - 1, 2), 0).unwrap();
        assert_eq!(s.get(1).unwrap().batches[0].last_sequence, i32::MAX);
        assert_eq!(apply(&mut s, &batch(1, 0, 0, 3), 2), Ok(Verdict::Append));
        assert_eq!(last_sequence(i32::MAX, 2), 1);
    }

    #[test]
    fn transactional_and_malformed_batches_are_refused() {
        let s = ProducerStates::default();
        let mut t = batch(1, 0, 0, 1);
        t.attributes = 1 << 4;
        assert!(matches!(s.check(&t), Err(ProducerError::Transactional(_))));
        assert!(matches!(
            s.check(&batch(1, 0, -1, 1)),
            Err(ProducerError::Invalid(_))
        ));
        assert_eq!(s.check(&batch(-1, -1, -1, 1)), Ok(Verdict::NotIdempotent));
    }

    #[test]
    fn snapshots_round_trip_and_damage_is_refused() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            s.record(&batch(i64::from(i % 3), 0, i / 3, 1), i64::from(i), 5);
        }
        let bytes = s.encode();
        assert_eq!(ProducerStates::decode(&bytes), Some(s.clone()));
        for at in [0, 5, 12, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert_eq!(ProducerStates::decode(&bad), None, "flip at {at}");
        }
        assert_eq!(ProducerStates::decode(&bytes[..bytes.len() - 3]), None);
    }

    #[test]
    fn expiry_truncation_and_replay_keep_state_consistent() {
        let mut s = ProducerStates::default();
        s.record(&batch(1, 0, 0, 1), 0, 100);
        s.record(&batch(2, 0, 0, 1), 1, 200);
        s.record(&batch(2, 0, 1, 1), 2, 200);
        let mut later = ProducerStates::default();
        later.record(&batch(2, 0, 2, 1), 3, 300);
        s.extend_with_later(later);
        assert_eq!(s.get(2).unwrap().batches.len(), 3);
        s.truncate_from(2);
        assert_eq!(s.get(2).unwrap().batches.len(), 1);
        assert_eq!(s.expire(1100, 1000), 1);
        assert!(s.get(1).is_none() && s.get(2).is_some());
    }
}
