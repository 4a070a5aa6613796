//! Compaction in the engine workload: the seeds that run a compacted topic, the cleaning
//! step, and what the model checks of a cleaned log.
//!
//! A compacted seed's records have keys from a small key space (a few without a key, as
//! records written before a topic became compacted would), one in six is a tombstone,
//! some batches are compressed, and every record carries its batch's tag in a header
//! (the first record of a batch may be cleaned away). Cleaning rounds run with a small
//! offset map (so rounds end early), an upper bound drawn below the log end (the high
//! watermark; truncations never go below the highest one given), crashes in the middle
//! and the seed's disk faults.
//!
//! After every step, besides the model's own checks:
//! - a batch that is not what was appended is a cleaned version of it: same base offset,
//!   last offset, epoch and producer fields, a subset of its records, each byte for byte
//!   at its original offset with its timestamp (so no record appears that was not
//!   produced, and offsets strictly grow); or a filler (no records, no producer) where
//!   whole batches went;
//! - a record gone from a batch still in the log went legitimately: it had no key, or a
//!   later record of its key is in the log's range, or it was the key's last record, a
//!   tombstone, and `delete.retention.ms` had passed since it was sent;
//! - so the latest value of every key is readable at its original offset, and the log
//!   from its start folds to the same key → value map as the history it replaces.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use wharf_protocol::batch::{
    batches, records_in, records_section, validate_batch_with, BatchBuilder, BatchInfo,
    BatchTimestampType, Compression, CountRule,
};
use wharf_protocol::compression::{decompress, Levels, Lz4Header};

use super::{Event, World};
use crate::compaction::{CleanRequest, CompactionConfig, OffsetMap, OFFSET_MAP_SLOT_BYTES};

/// The tag header every record of a compacted seed carries.
const TAG_HEADER: &[u8] = b"t";

/// How a compacted seed runs.
#[derive(Clone, Debug)]
pub(super) struct CompactMode {
    pub keys: u64,
    pub config: CompactionConfig,
    pub map_bytes: usize,
    /// The highest upper bound given to the cleaner: truncations stay above it (a
    /// replica never truncates below its high watermark).
    pub cleaned_below: i64,
    pub cleanings: u64,
    /// Groups swapped in, tombstones removed, over the seed.
    pub groups_cleaned: u64,
    pub tombstones_removed: u64,
}

impl CompactMode {
    pub fn draw(rng: &mut crate::sim::Rng) -> CompactMode {
        CompactMode {
            keys: rng.range(2, 40),
            config: CompactionConfig {
                delete_retention_ms: [0, 500, 5_000, 30_000][rng.below(4) as usize],
                min_compaction_lag_ms: if rng.below(4) == 0 {
                    rng.range(1, 5_000) as i64
                } else {
                    0
                },
                ..CompactionConfig::default()
            },
            // From a handful of keys to more than the key space.
            map_bytes: OFFSET_MAP_SLOT_BYTES * rng.range(2, 80) as usize,
            cleaned_below: 0,
            cleanings: 0,
            groups_cleaned: 0,
            tombstones_removed: 0,
        }
    }
}

/// One record as the model compares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ModelRecord {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub timestamp: i64,
}

/// The records of a batch (decompressed), `None` if it does not decode.
pub(super) fn records_of(batch: &[u8]) -> Option<(BatchInfo, Vec<ModelRecord>)> {
    let info = validate_batch_with(batch, usize::MAX, CountRule::AtMost).ok()?;
    let section = records_section(batch)?;
    let plain = if info.compression == Compression::None {
        section.to_vec()
    } else {
        decompress(info.compression, section, 16 << 20, Lz4Header::Standard).ok()?
    };
    let log_append = info.timestamp_type() == BatchTimestampType::LogAppendTime;
    let mut out = Vec::new();
    for r in records_in(&plain, info.records_count) {
        let r = r.ok()?;
        out.push(ModelRecord {
            offset: info.base_offset + i64::from(r.offset_delta),
            key: r.key.map(<[u8]>::to_vec),
            value: r.value.map(<[u8]>::to_vec),
            headers: r
                .headers()
                .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                .collect(),
            timestamp: if log_append {
                info.max_timestamp
            } else {
                info.base_timestamp.wrapping_add(r.timestamp_delta)
            },
        });
    }
    (out.len() as i32 == info.records_count).then_some((info, out))
}

/// The tag of a compacted seed's batch: the header of any of its records.
pub(super) fn header_tag(batch: &[u8]) -> Option<u64> {
    let (_, records) = records_of(batch)?;
    let record = records.first()?;
    let (_, value) = record.headers.iter().find(|(k, _)| k == TAG_HEADER)?;
    Some(u64::from_be_bytes(
        value.as_deref()?.get(..8)?.try_into().ok()?,
    ))
}

/// An empty batch without a producer: offsets whose records were all cleaned away.
pub(super) fn is_filler(batch: &[u8]) -> bool {
    validate_batch_with(batch, usize::MAX, CountRule::AtMost)
        .is_ok_and(|i| i.records_count == 0 && i.producer_id < 0)
}

/// Whether `got` is `original` (as stored) after cleaning: the same offsets, epoch and
/// producer fields, and a subset of its records, each as it was at its offset.
pub(super) fn cleaned_from(original: &[u8], got: &[u8]) -> Result<(), String> {
    let (o, orig) = records_of(original).ok_or("the original batch does not decode")?;
    let (g, kept) = records_of(got).ok_or("a cleaned batch does not decode")?;
    const HORIZON: i16 = 1 << 6;
    const CODEC: i16 = 0x07;
    let same_attributes = if kept.is_empty() {
        (o.attributes & !(HORIZON | CODEC)) == (g.attributes & !(HORIZON | CODEC))
    } else {
        (o.attributes & !HORIZON) == (g.attributes & !HORIZON)
    };
    if (o.base_offset, o.last_offset(), o.partition_leader_epoch)
        != (g.base_offset, g.last_offset(), g.partition_leader_epoch)
        || (o.producer_id, o.producer_epoch, o.base_sequence)
            != (g.producer_id, g.producer_epoch, g.base_sequence)
        || !same_attributes
    {
        return Err(format!(
            "the batch at {} is not a cleaned version of what was appended there (header)",
            g.base_offset
        ));
    }
    if kept.is_empty() && g.producer_id < 0 {
        return Err(format!(
            "an emptied batch at {} kept no producer",
            g.base_offset
        ));
    }
    let mut from = 0;
    for record in &kept {
        let Some(at) = orig[from..].iter().position(|r| r == record) else {
            return Err(format!(
                "the record at {} is not one appended there (or out of order)",
                record.offset
            ));
        };
        from += at + 1;
    }
    Ok(())
}

/// Key → `(offset, value)` of the latest record, tombstones deleting (a changelog restore).
fn fold<'a>(records: impl Iterator<Item = &'a ModelRecord>) -> BTreeMap<Vec<u8>, (i64, Vec<u8>)> {
    let mut map = BTreeMap::new();
    for r in records {
        let Some(k) = &r.key else { continue };
        match &r.value {
            Some(v) => {
                map.insert(k.clone(), (r.offset, v.clone()));
            }
            None => {
                map.remove(k);
            }
        }
    }
    map
}

impl World {
    /// A batch of a compacted seed: keyed records (a few keyless, one in six a tombstone),
    /// each with the tag header, sometimes compressed.
    pub(super) fn compact_batch(
        &mut self,
        mut builder: BatchBuilder,
        tag: u64,
        keys: u64,
    ) -> Bytes {
        let now = self.rt.now_ms();
        for i in 0..1 + self.rng.below(5) {
            let key = (self.rng.below(30) != 0)
                .then(|| format!("key-{}", self.rng.below(keys)).into_bytes());
            let value = (self.rng.below(6) != 0).then(|| {
                let mut v = vec![(tag % 251) as u8; 16 + self.rng.below(200) as usize];
                v[..8].copy_from_slice(&tag.to_be_bytes());
                v[8..16].copy_from_slice(&i.to_be_bytes());
                v
            });
            let ts = now - self.rng.below(5_000) as i64;
            builder.push(
                key.as_deref(),
                value.as_deref(),
                &[(TAG_HEADER, Some(&tag.to_be_bytes()))],
                ts,
            );
        }
        let codec = match self.rng.below(6) {
            0 => Compression::Gzip,
            1 => Compression::Lz4,
            _ => Compression::None,
        };
        Bytes::from(match codec {
            Compression::None => builder.build(),
            codec => builder
                .build_compressed(codec, Levels::default())
                .expect("compression of a small batch"),
        })
    }

    /// A cleaning round as a step of its own.
    pub(super) fn clean_step(&mut self, step: u64) -> Result<(), String> {
        self.note(format!("step {step}: clean"));
        self.spawn_clean();
        if self.rng.below(3) == 0 {
            self.spawn_read();
        }
        self.run_or_crash()
    }

    /// Starts a cleaning round, with an upper bound drawn between the log start and its
    /// end (the high watermark).
    pub(super) fn spawn_clean(&mut self) {
        let log = self.log();
        let (start, end) = (log.log_start_offset().0, log.log_end_offset().0);
        let upper = if self.rng.below(3) > 0 {
            end
        } else {
            self.rng.range(start as u64, end as u64 + 1) as i64
        };
        let mode = self.compact.as_mut().expect("a compacted seed");
        mode.cleaned_below = mode.cleaned_below.max(upper);
        mode.cleanings += 1;
        let config = mode.config.clone();
        let map_bytes = mode.map_bytes;
        let now = self.rt.now_ms();
        self.note(format!(
            "clean below {upper} at {now} (first dirty {})",
            log.first_dirty_offset().0
        ));
        let events = self.events.clone();
        self.rt.spawn(async move {
            let mut map = OffsetMap::new(map_bytes);
            let request = CleanRequest {
                now_ms: now,
                upper_bound_offset: upper,
                aborted: &[],
                max_decompressed_batch_bytes: 16 << 20,
                throttle: None,
            };
            let result = log.clean(&mut map, &config, &request).await;
            events.borrow_mut().push(Event::Cleaned(result));
        });
    }

    /// The lowest offset a truncation may go to in a compacted seed.
    pub(super) fn truncation_floor(&self) -> i64 {
        self.compact.as_ref().map_or(0, |m| m.cleaned_below)
    }

    /// Whether `got`, at the base offset of the model's `original`, is it or a cleaned
    /// version of it.
    pub(super) fn same_or_cleaned(&self, original: &[u8], got: &[u8]) -> bool {
        original == got || (self.compact.is_some() && cleaned_from(original, got).is_ok())
    }

    /// Whether offsets `[base, last]` lie wholly inside a filler the log returned.
    pub(super) fn in_filler(&self, base: i64, last: i64, found: &[(i64, i64, Bytes)]) -> bool {
        if self.compact.is_none() {
            return false;
        }
        let k = found.partition_point(|(_, l, _)| *l < base);
        found
            .get(k)
            .is_some_and(|(b, l, bytes)| *b <= base && last <= *l && is_filler(bytes))
    }

    /// The compaction checks of the module doc, on what the log returned (`found`, from
    /// `start`) against the model before it takes it.
    pub(super) fn check_compaction(
        &self,
        found: &[(i64, i64, Bytes)],
        start: i64,
    ) -> Result<(), String> {
        let Some(mode) = &self.compact else {
            return Ok(());
        };
        let now = self.rt.now_ms();
        // The model's records whose batch is still in the log (as it was, cleaned, or
        // under a filler), with when their batch was sent.
        let mut covered: Vec<(ModelRecord, i64)> = Vec::new();
        let mut covered_ranges: BTreeMap<i64, i64> = BTreeMap::new();
        let by_base: HashMap<i64, &(i64, i64, Bytes)> = found.iter().map(|f| (f.0, f)).collect();
        for (base, e) in &self.entries {
            if e.last < start {
                continue;
            }
            let kept = by_base
                .get(base)
                .is_some_and(|(_, l, b)| *l == e.last && self.same_or_cleaned(&e.bytes, b));
            if !kept && !self.in_filler(*base, e.last, found) {
                continue;
            }
            covered_ranges.insert(*base, e.last);
            let Some((_, records)) = records_of(&e.bytes) else {
                return Err(format!("the model's batch at {base} does not decode"));
            };
            let sent = self.issued.get(&e.tag).map_or(i64::MAX, |i| i.issued_ms);
            covered.extend(
                records
                    .into_iter()
                    .filter(|r| r.offset >= start)
                    .map(|r| (r, sent)),
            );
        }
        let mut present: BTreeMap<i64, ModelRecord> = BTreeMap::new();
        for (_, _, bytes) in found {
            for (_, batch) in batches(bytes) {
                let (_, records) =
                    records_of(batch).ok_or("a batch the log returned does not decode")?;
                present.extend(records.into_iter().map(|r| (r.offset, r)));
            }
        }
        let mut last_of_key: HashMap<&[u8], i64> = HashMap::new();
        for (r, _) in &covered {
            if let Some(k) = &r.key {
                let last = last_of_key.entry(k).or_insert(r.offset);
                *last = (*last).max(r.offset);
            }
        }
        for (r, sent) in &covered {
            if present.contains_key(&r.offset) {
                continue;
            }
            let Some(key) = &r.key else {
                continue;
            };
            if last_of_key
                .get(key.as_slice())
                .is_some_and(|l| r.offset < *l)
            {
                continue;
            }
            let key = String::from_utf8_lossy(key);
            match &r.value {
                Some(_) => {
                    return Err(format!(
                        "the latest value of {key} (offset {}) is gone",
                        r.offset
                    ))
                }
                None if now < sent.saturating_add(mode.config.delete_retention_ms) => {
                    return Err(format!(
                        "the tombstone of {key} at {} went before delete.retention.ms {} (sent at {sent}, now {now})",
                        r.offset, mode.config.delete_retention_ms
                    ))
                }
                None => {}
            }
        }
        // Batches the model does not know (appends whose answers a crash lost) are part
        // of the history as the log has them.
        let unknown = present.values().filter(|r| {
            let k = covered_ranges.range(..=r.offset).next_back();
            r.offset >= start && k.is_none_or(|(_, last)| *last < r.offset)
        });
        let mut history: Vec<&ModelRecord> =
            covered.iter().map(|(r, _)| r).chain(unknown).collect();
        history.sort_by_key(|r| r.offset);
        let history = fold(history.into_iter());
        let log = fold(present.values().filter(|r| r.offset >= start));
        if history != log {
            let differs = history
                .keys()
                .chain(log.keys())
                .find(|k| history.get(*k) != log.get(*k))
                .cloned()
                .unwrap_or_default();
            return Err(format!(
                "the log folds {} to {:?}, its history to {:?}",
                String::from_utf8_lossy(&differs),
                log.get(&differs).map(|(o, _)| o),
                history.get(&differs).map(|(o, _)| o),
            ));
        }
        Ok(())
    }
}
