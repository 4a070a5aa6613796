//! What cleaning does to one batch (Kafka's `MemoryRecords.filterTo` with the cleaner's
//! filter), decided on the batch's bytes alone: no I/O.
//!
//! A record stays when it is the latest of its key that the offset map knows (or lies past
//! what the map covers); a tombstone (a null value) stays too until its batch's delete
//! horizon has passed. A record without a key does not stay (a compacted topic refuses them
//! at produce, KIP-467; any left from before the topic was compacted go, as in Kafka).
//!
//! What becomes of the batch:
//! - every record stays and no delete horizon is to be set: copied as it is;
//! - some stay, or a tombstone stays in a batch without a delete horizon: rewritten with
//!   the same base offset, `lastOffsetDelta`, epoch, producer id, epoch and base sequence
//!   (so the producer's last sequence is unchanged), each record keeping its offset delta
//!   and timestamp, and, for a batch whose tombstones are cleaned for the first time, the
//!   delete horizon `now + delete.retention.ms` in `baseTimestamp` with attribute bit 6
//!   (KIP-534); compressed batches are compressed again with their codec;
//! - none stays: dropped, unless the producer state remembers it (its producer's last
//!   batches, needed to answer retries and to rebuild the state), which stays as an empty
//!   batch (Kafka's `RETAIN_EMPTY`).
//!
//! A batch whose records cannot be decoded (a codec error, a malformed record inside a
//! valid CRC) is kept whole: cleaning never loses what it cannot read.
//!
//! Transactions: a transactional batch of an aborted transaction (the `aborted` input)
//! loses its records; control batches (transaction markers) are kept as they are until the
//! engine knows transactions (Kafka removes a marker once its transaction's records are
//! gone and its delete horizon passed).

use std::collections::HashSet;

use wharf_protocol::batch::{
    records_in, records_section, BatchInfo, Compression, Record, CRC_COVERED_FROM,
    LOG_OVERHEAD_BYTES, MAGIC_V2, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, NO_TIMESTAMP,
};
use wharf_protocol::compression::{compress_into, decompress, Levels, Lz4Header};

use super::{AbortedTxn, OffsetMap};

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_LOG_APPEND_TIME: i16 = 1 << 3;
/// KIP-534: `baseTimestamp` holds the batch's delete horizon.
pub(crate) const ATTR_DELETE_HORIZON: i16 = 1 << 6;

/// What decides which records stay.
pub(crate) struct Rules<'a> {
    pub map: &'a OffsetMap,
    pub now_ms: i64,
    pub delete_retention_ms: i64,
    /// `(producer id, last offset)` of every batch the producer state remembers.
    pub producer_batches: &'a HashSet<(i64, i64)>,
    pub aborted: &'a [AbortedTxn],
    pub max_decompressed_bytes: usize,
}

/// What becomes of a batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Filtered {
    /// Unchanged.
    Keep,
    /// Replaced by these bytes (a valid batch at the same offsets).
    Rewrite(Vec<u8>),
    /// Nothing of it stays.
    Drop,
}

/// Counts for the cleaner's statistics.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub records_read: u64,
    pub records_retained: u64,
    pub tombstones_removed: u64,
    pub keyless_removed: u64,
    pub undecodable_batches: u64,
}

/// Decides what cleaning does to `batch` (validated; `info` is its header).
pub(crate) fn filter_batch(
    batch: &[u8],
    info: &BatchInfo,
    rules: &Rules<'_>,
    counts: &mut Counts,
) -> Filtered {
    let count = u64::try_from(info.records_count).unwrap_or(0);
    if info.is_control() {
        counts.records_read += count;
        counts.records_retained += count;
        return Filtered::Keep;
    }
    let remembered = info.producer_id >= 0
        && rules
            .producer_batches
            .contains(&(info.producer_id, info.last_offset()));
    if info.records_count == 0 {
        // An empty batch: a filler (offsets whose records went) or a producer's batch kept
        // for its sequence numbers.
        return if remembered {
            Filtered::Keep
        } else {
            Filtered::Drop
        };
    }
    let aborted = info.is_transactional()
        && rules.aborted.iter().any(|a| {
            a.producer_id == info.producer_id
                && a.first_offset <= info.base_offset
                && info.base_offset <= a.last_offset
        });
    let decompressed;
    let section = records_section(batch).unwrap_or_default();
    let plain: &[u8] = if info.compression == Compression::None {
        section
    } else {
        match decompress(
            info.compression,
            section,
            rules.max_decompressed_bytes,
            Lz4Header::Standard,
        ) {
            Ok(bytes) => {
                decompressed = bytes;
                &decompressed
            }
            Err(_) => {
                counts.undecodable_batches += 1;
                return Filtered::Keep;
            }
        }
    };
    let horizon = (info.attributes & ATTR_DELETE_HORIZON != 0).then_some(info.base_timestamp);
    // KIP-534: tombstones stay until the horizon their batch got when first cleaned.
    let keep_tombstones = horizon.is_none_or(|h| rules.now_ms < h);
    let mut kept: Vec<Record<'_>> = Vec::new();
    let mut decoded = 0u64;
    let mut local = Counts::default();
    let mut iter = records_in(plain, info.records_count);
    for record in iter.by_ref() {
        let Ok(record) = record else {
            counts.undecodable_batches += 1;
            return Filtered::Keep;
        };
        decoded += 1;
        let offset = info.base_offset + i64::from(record.offset_delta);
        let stays = !aborted
            && match record.key {
                _ if offset > rules.map.latest_offset() => true,
                None => {
                    local.keyless_removed += 1;
                    false
                }
                Some(key) => {
                    let latest = rules.map.get(key).is_none_or(|o| offset >= o);
                    match (latest, record.value.is_some()) {
                        (false, _) => false,
                        (true, true) => true,
                        (true, false) if keep_tombstones => true,
                        (true, false) => {
                            local.tombstones_removed += 1;
                            false
                        }
                    }
                }
            };
        if stays {
            kept.push(record);
        }
    }
    if decoded != count || iter.rest() != 0 {
        counts.undecodable_batches += 1;
        return Filtered::Keep;
    }
    counts.records_read += decoded;
    counts.records_retained += kept.len() as u64;
    counts.tombstones_removed += local.tombstones_removed;
    counts.keyless_removed += local.keyless_removed;
    if kept.is_empty() {
        return if remembered {
            Filtered::Rewrite(empty_batch(batch, info))
        } else {
            Filtered::Drop
        };
    }
    let tombstone_kept = kept.iter().any(|r| r.value.is_none());
    let new_horizon = match horizon {
        Some(h) => Some(h),
        None if tombstone_kept => Some(rules.now_ms.saturating_add(rules.delete_retention_ms)),
        None => None,
    };
    if kept.len() as u64 == count && new_horizon == horizon {
        return Filtered::Keep;
    }
    match rebuild(batch, info, &kept, new_horizon) {
        Some(bytes) => Filtered::Rewrite(bytes),
        None => {
            counts.undecodable_batches += 1;
            Filtered::Keep
        }
    }
}

/// The header fields of a batch to write.
pub(crate) struct Header {
    pub base_offset: i64,
    pub partition_leader_epoch: i32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

/// Appends a batch with header `h` and records section `section` (already compressed as
/// the attributes say), computing `batchLength` and the CRC-32C.
pub(crate) fn write_batch(out: &mut Vec<u8>, h: &Header, section: &[u8]) {
    let start = out.len();
    let batch_length =
        (wharf_protocol::batch::BATCH_HEADER_BYTES + section.len() - LOG_OVERHEAD_BYTES) as i32;
    out.extend_from_slice(&h.base_offset.to_be_bytes());
    out.extend_from_slice(&batch_length.to_be_bytes());
    out.extend_from_slice(&h.partition_leader_epoch.to_be_bytes());
    out.push(MAGIC_V2 as u8);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&h.attributes.to_be_bytes());
    out.extend_from_slice(&h.last_offset_delta.to_be_bytes());
    out.extend_from_slice(&h.base_timestamp.to_be_bytes());
    out.extend_from_slice(&h.max_timestamp.to_be_bytes());
    out.extend_from_slice(&h.producer_id.to_be_bytes());
    out.extend_from_slice(&h.producer_epoch.to_be_bytes());
    out.extend_from_slice(&h.base_sequence.to_be_bytes());
    out.extend_from_slice(&h.records_count.to_be_bytes());
    out.extend_from_slice(section);
    let crc = crc32c::crc32c(&out[start + CRC_COVERED_FROM..]);
    out[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
}

/// An empty batch standing for offsets `[base_offset, base_offset + span)` whose records
/// were all removed: no records, no producer, no timestamp. It keeps the offsets of a
/// cleaned segment contiguous batch to batch, which is what lets every reader and the
/// recovery walk tell a removed range from damage (see the module `compaction`).
pub(crate) fn filler_batch(out: &mut Vec<u8>, base_offset: i64, span: i64, epoch: i32) {
    debug_assert!((1..=i64::from(i32::MAX) + 1).contains(&span));
    write_batch(
        out,
        &Header {
            base_offset,
            partition_leader_epoch: epoch,
            attributes: 0,
            last_offset_delta: (span - 1) as i32,
            base_timestamp: NO_TIMESTAMP,
            max_timestamp: NO_TIMESTAMP,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            records_count: 0,
        },
        &[],
    );
}

/// The batch with no records left, kept for its producer fields (Kafka's `writeEmptyHeader`:
/// uncompressed, both timestamps the batch's largest).
fn empty_batch(batch: &[u8], info: &BatchInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(wharf_protocol::batch::BATCH_HEADER_BYTES);
    write_batch(
        &mut out,
        &Header {
            base_offset: info.base_offset,
            partition_leader_epoch: info.partition_leader_epoch,
            attributes: info.attributes & !(ATTR_COMPRESSION_MASK | ATTR_DELETE_HORIZON),
            last_offset_delta: info.last_offset_delta,
            base_timestamp: info.max_timestamp,
            max_timestamp: info.max_timestamp,
            producer_id: info.producer_id,
            producer_epoch: info.producer_epoch,
            base_sequence: info.base_sequence,
            records_count: 0,
        },
        &[],
    );
    debug_assert!(batch.len() >= out.len());
    out
}

/// The batch with only `kept` records, each with its offset delta and timestamp, the delete
/// horizon (if any) in `baseTimestamp`, compressed again with the batch's codec. `None` if
/// the codec fails.
fn rebuild(
    batch: &[u8],
    info: &BatchInfo,
    kept: &[Record<'_>],
    horizon: Option<i64>,
) -> Option<Vec<u8>> {
    let log_append_time = info.attributes & ATTR_LOG_APPEND_TIME != 0;
    let base_timestamp = horizon.unwrap_or(info.base_timestamp);
    let mut records = Vec::with_capacity(batch.len());
    let mut max_timestamp = NO_TIMESTAMP;
    for record in kept {
        let timestamp = info.base_timestamp.wrapping_add(record.timestamp_delta);
        max_timestamp = max_timestamp.max(timestamp);
        encode_record(&mut records, record, timestamp.wrapping_sub(base_timestamp));
    }
    if log_append_time {
        // Readers take every record's time from maxTimestamp.
        max_timestamp = info.max_timestamp;
    }
    let section = if info.compression == Compression::None {
        records
    } else {
        let mut compressed = Vec::with_capacity(records.len() / 2 + 64);
        compress_into(
            info.compression,
            &records,
            Levels::default(),
            Lz4Header::Standard,
            &mut compressed,
        )
        .ok()?;
        compressed
    };
    let mut out = Vec::with_capacity(wharf_protocol::batch::BATCH_HEADER_BYTES + section.len());
    let attributes = match horizon {
        Some(_) => info.attributes | ATTR_DELETE_HORIZON,
        None => info.attributes,
    };
    write_batch(
        &mut out,
        &Header {
            base_offset: info.base_offset,
            partition_leader_epoch: info.partition_leader_epoch,
            attributes,
            last_offset_delta: info.last_offset_delta,
            base_timestamp,
            max_timestamp,
            producer_id: info.producer_id,
            producer_epoch: info.producer_epoch,
            base_sequence: info.base_sequence,
            records_count: kept.len() as i32,
        },
        &section,
    );
    Some(out)
}

/// Appends one record in the v2 format: a varint length, then attributes, timestamp delta,
/// offset delta, key, value and headers.
fn encode_record(out: &mut Vec<u8>, record: &Record<'_>, timestamp_delta: i64) {
    let mut body = Vec::with_capacity(
        16 + record.key.map_or(0, <[u8]>::len) + record.value.map_or(0, <[u8]>::len),
    );
    body.push(record.attributes as u8);
    put_varlong(&mut body, timestamp_delta);
    put_varlong(&mut body, i64::from(record.offset_delta));
    put_bytes(&mut body, record.key);
    put_bytes(&mut body, record.value);
    let headers: Vec<_> = record.headers().collect();
    put_varlong(&mut body, headers.len() as i64);
    for (key, value) in headers {
        put_bytes(&mut body, Some(key));
        put_bytes(&mut body, value);
    }
    put_varlong(out, body.len() as i64);
    out.extend_from_slice(&body);
}

fn put_bytes(out: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        Some(bytes) => {
            put_varlong(out, bytes.len() as i64);
            out.extend_from_slice(bytes);
        }
        None => put_varlong(out, -1),
    }
}

/// Zigzag varint (the same bytes as a varint for any value that fits 32 bits).
fn put_varlong(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_protocol::batch::{records, validate_batch_with, BatchBuilder, CountRule};

    fn info(batch: &[u8]) -> BatchInfo {
        validate_batch_with(batch, usize::MAX, CountRule::AtMost).expect("valid batch")
    }

    /// `(key, value)` records at offsets from `base`, timestamps 1000 + i.
    fn batch(base: i64, recs: &[(Option<&str>, Option<&str>)]) -> Vec<u8> {
        let mut b = BatchBuilder::new()
            .base_offset(base)
            .partition_leader_epoch(3);
        for (i, (k, v)) in recs.iter().enumerate() {
            b.push(
                k.map(str::as_bytes),
                v.map(str::as_bytes),
                &[(b"h", Some(b"x"))],
                1000 + i as i64,
            );
        }
        b.build()
    }

    fn contents(batch: &[u8]) -> Vec<(i64, Option<String>, Option<String>, i64)> {
        let i = info(batch);
        records(batch)
            .expect("uncompressed")
            .map(|r| {
                let r = r.expect("record");
                (
                    i.base_offset + i64::from(r.offset_delta),
                    r.key.map(|k| String::from_utf8_lossy(k).into()),
                    r.value.map(|v| String::from_utf8_lossy(v).into()),
                    i.base_timestamp.wrapping_add(r.timestamp_delta),
                )
            })
            .collect()
    }

    fn rules<'a>(map: &'a OffsetMap, producers: &'a HashSet<(i64, i64)>, now: i64) -> Rules<'a> {
        Rules {
            map,
            now_ms: now,
            delete_retention_ms: 100,
            producer_batches: producers,
            aborted: &[],
            max_decompressed_bytes: 1 << 20,
        }
    }

    #[test]
    fn keeps_the_latest_record_of_each_key_at_its_offset() {
        let b = batch(
            10,
            &[
                (Some("a"), Some("1")),
                (Some("b"), Some("1")),
                (Some("a"), Some("2")),
            ],
        );
        let mut map = OffsetMap::new(1 << 10);
        map.put(b"a", 12);
        map.put(b"b", 20);
        map.set_latest_offset(30);
        let producers = HashSet::new();
        let mut counts = Counts::default();
        let out = filter_batch(&b, &info(&b), &rules(&map, &producers, 0), &mut counts);
        let Filtered::Rewrite(bytes) = out else {
            panic!("expected a rewrite, got {out:?}")
        };
        let i = info(&bytes);
        assert_eq!(
            (i.base_offset, i.last_offset(), i.records_count),
            (10, 12, 1)
        );
        assert_eq!(i.partition_leader_epoch, 3);
        assert_eq!(
            contents(&bytes),
            vec![(12, Some("a".into()), Some("2".into()), 1002)]
        );
        assert_eq!((counts.records_read, counts.records_retained), (3, 1));
    }

    #[test]
    fn an_untouched_batch_is_copied_and_an_emptied_one_dropped() {
        let b = batch(0, &[(Some("a"), Some("1")), (Some("b"), Some("1"))]);
        let producers = HashSet::new();
        let mut map = OffsetMap::new(1 << 10);
        map.put(b"a", 0);
        map.put(b"b", 1);
        map.set_latest_offset(1);
        let mut counts = Counts::default();
        assert_eq!(
            filter_batch(&b, &info(&b), &rules(&map, &producers, 0), &mut counts),
            Filtered::Keep
        );
        map.put(b"a", 5);
        map.put(b"b", 6);
        map.set_latest_offset(6);
        assert_eq!(
            filter_batch(&b, &info(&b), &rules(&map, &producers, 0), &mut counts),
            Filtered::Drop
        );
    }

    #[test]
    fn records_past_the_map_stay_and_keyless_records_go() {
        let b = batch(
            0,
            &[(None, Some("x")), (Some("a"), Some("1")), (None, Some("y"))],
        );
        let mut map = OffsetMap::new(1 << 10);
        map.put(b"a", 7);
        map.set_latest_offset(1);
        let producers = HashSet::new();
        let mut counts = Counts::default();
        let Filtered::Rewrite(bytes) =
            filter_batch(&b, &info(&b), &rules(&map, &producers, 0), &mut counts)
        else {
            panic!("expected a rewrite")
        };
        // Offset 1 ("a") is superseded, offset 0 has no key, offset 2 is past the map.
        assert_eq!(contents(&bytes), vec![(2, None, Some("y".into()), 1002)]);
        assert_eq!(counts.keyless_removed, 1);
    }

    #[test]
    fn tombstones_get_a_delete_horizon_then_go_after_it() {
        let b = batch(0, &[(Some("a"), Some("1")), (Some("b"), None)]);
        let mut map = OffsetMap::new(1 << 10);
        map.put(b"a", 0);
        map.put(b"b", 1);
        map.set_latest_offset(1);
        let producers = HashSet::new();
        let mut counts = Counts::default();
        let Filtered::Rewrite(first) =
            filter_batch(&b, &info(&b), &rules(&map, &producers, 5_000), &mut counts)
        else {
            panic!("the horizon is set")
        };
        let i = info(&first);
        assert_ne!(i.attributes & ATTR_DELETE_HORIZON, 0);
        assert_eq!(i.base_timestamp, 5_100);
        // Timestamps survive the new base.
        assert_eq!(
            contents(&first),
            vec![
                (0, Some("a".into()), Some("1".into()), 1000),
                (1, Some("b".into()), None, 1001)
            ]
        );
        assert_eq!(i.max_timestamp, 1001);
        // Before the horizon: unchanged.
        assert_eq!(
            filter_batch(&first, &i, &rules(&map, &producers, 5_099), &mut counts),
            Filtered::Keep
        );
        // At it: the tombstone goes, the horizon stays.
        let Filtered::Rewrite(second) =
            filter_batch(&first, &i, &rules(&map, &producers, 5_100), &mut counts)
        else {
            panic!("the tombstone goes")
        };
        assert_eq!(
            contents(&second),
            vec![(0, Some("a".into()), Some("1".into()), 1000)]
        );
        let j = info(&second);
        assert_eq!((j.base_timestamp, j.last_offset()), (5_100, 1));
        assert_eq!(counts.tombstones_removed, 1);
    }

    #[test]
    fn a_remembered_producer_batch_stays_empty_with_its_sequences() {
        let mut b = BatchBuilder::new().base_offset(40).producer(9, 2, 17);
        b.push(Some(b"a"), Some(b"1"), &[], 100);
        b.push(Some(b"a"), Some(b"2"), &[], 200);
        let b = b.build();
        let mut map = OffsetMap::new(1 << 10);
        map.put(b"a", 99);
        map.set_latest_offset(99);
        let producers: HashSet<(i64, i64)> = [(9, 41)].into_iter().collect();
        let mut counts = Counts::default();
        let Filtered::Rewrite(bytes) =
            filter_batch(&b, &info(&b), &rules(&map, &producers, 0), &mut counts)
        else {
            panic!("kept empty")
        };
        let i = info(&bytes);
        assert_eq!(
            (i.base_offset, i.last_offset(), i.records_count),
            (40, 41, 0)
        );
        assert_eq!(
            (i.producer_id, i.producer_epoch, i.base_sequence),
            (9, 2, 17)
        );
        assert_eq!((i.base_timestamp, i.max_timestamp), (200, 200));
        let other: HashSet<(i64, i64)> = HashSet::new();
        assert_eq!(
            filter_batch(&b, &info(&b), &rules(&map, &other, 0), &mut counts),
            Filtered::Drop
        );
        // Cleaned again, it stays as it is.
        assert_eq!(
            filter_batch(&bytes, &i, &rules(&map, &producers, 0), &mut counts),
            Filtered::Keep
        );
    }

    #[test]
    fn compressed_batches_are_compressed_again() {
        let mut b = BatchBuilder::new().base_offset(0);
        for i in 0..20 {
            b.push(Some(&[i % 4]), Some(&[i; 50]), &[], 1_000 + i64::from(i));
        }
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let bytes = b
                .build_compressed(codec, Levels::default())
                .expect("compress");
            let mut map = OffsetMap::new(1 << 10);
            for k in 0..4u8 {
                map.put(&[k], 16 + i64::from(k));
            }
            map.set_latest_offset(19);
            let producers = HashSet::new();
            let mut counts = Counts::default();
            let Filtered::Rewrite(out) = filter_batch(
                &bytes,
                &info(&bytes),
                &rules(&map, &producers, 0),
                &mut counts,
            ) else {
                panic!("{codec:?}: expected a rewrite")
            };
            let i = info(&out);
            assert_eq!(i.compression, codec);
            assert_eq!((i.records_count, i.last_offset()), (4, 19));
            let plain = decompress(
                codec,
                records_section(&out).unwrap(),
                1 << 20,
                Lz4Header::Standard,
            )
            .expect("decompress");
            let offsets: Vec<i32> = records_in(&plain, 4)
                .map(|r| r.expect("record").offset_delta)
                .collect();
            assert_eq!(offsets, vec![16, 17, 18, 19]);
        }
    }

    #[test]
    fn aborted_transactional_records_go() {
        let mut b = BatchBuilder::new()
            .base_offset(5)
            .producer(3, 0, 0)
            .transactional(true);
        b.push(Some(b"a"), Some(b"1"), &[], 1);
        let b = b.build();
        let map = OffsetMap::new(1 << 10);
        let producers = HashSet::new();
        let aborted = [AbortedTxn {
            producer_id: 3,
            first_offset: 5,
            last_offset: 9,
        }];
        let r = Rules {
            aborted: &aborted,
            ..rules(&map, &producers, 0)
        };
        let mut counts = Counts::default();
        assert_eq!(filter_batch(&b, &info(&b), &r, &mut counts), Filtered::Drop);
        let committed = Rules {
            aborted: &[],
            ..rules(&map, &producers, 0)
        };
        assert_eq!(
            filter_batch(&b, &info(&b), &committed, &mut counts),
            Filtered::Keep
        );
    }

    #[test]
    fn a_filler_is_a_valid_empty_batch_over_its_range() {
        let mut out = Vec::new();
        filler_batch(&mut out, 100, 50, 7);
        let i = info(&out);
        assert_eq!(
            (i.base_offset, i.last_offset(), i.records_count),
            (100, 149, 0)
        );
        assert_eq!((i.producer_id, i.partition_leader_epoch), (-1, 7));
        assert_eq!(out.len(), wharf_protocol::batch::BATCH_HEADER_BYTES);
    }
}
