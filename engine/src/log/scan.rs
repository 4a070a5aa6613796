//! The validating walk over a segment's batches, shared by recovery, truncation and the
//! rebuilding of indexes: from a start position, every batch must pass validation (framing,
//! magic, CRC-32C, counts) and start exactly where the previous one ended in offsets; the
//! walk stops at the first byte that does not — a torn write, preallocated zeroes, damage.
//! Everything the log keeps in memory about the segment (indexes, largest timestamp,
//! leader epochs, producers, the partial tail page) is rebuilt from the batches that passed.
//!
//! A batch that fails is read again once before the walk stops at it: a flipped bit on
//! the way from the disk must not cost data that is intact on it.

use std::io;

use wharf_protocol::batch::{validate_batch_with, BatchHeader, CountRule, BATCH_HEADER_BYTES};

use crate::index::SegmentIndex;
use crate::producer::ProducerStates;
use crate::records::offset_of_max_timestamp;
use crate::storage::{align_down, SegmentFile};

/// Bytes read from disk at a time while scanning.
pub(crate) const SCAN_CHUNK_BYTES: usize = 1 << 20;
/// Reads of a batch whose new leader epoch keeps reading differently before the walk
/// stops there.
const MAX_EPOCH_READS: u32 = 4;

/// Where a walk starts. At the segment start the first batch must start at the segment's
/// base offset; at a position taken from the offset index, the first batch must end at the
/// offset the index entry names (the entry's batch), and the index and time index carry
/// what is known about the batches before it.
#[derive(Clone, Debug)]
pub(crate) struct ScanStart {
    pub position: u64,
    pub expect: Expect,
    pub index: SegmentIndex,
    pub max_timestamp: (i64, i64),
    /// Offsets from which the producers' batches are also replayed on their own (the
    /// offsets of producer snapshots inside the segment, for recovery).
    pub replay_from: Vec<i64>,
    /// The leader-epoch cache, when known: a batch's partitionLeaderEpoch (outside the
    /// CRC) must be the one the cache gives its offset.
    pub epochs: Vec<(i32, i64)>,
    /// Batches wholly below this offset (the recorded log start) carry epochs nobody
    /// checks or needs: they are neither held to the epoch rules nor reported in
    /// [`ScanOutcome::epochs`], so that a damaged one below the log start can neither stop
    /// the walk nor put its epoch in the cache.
    pub epochs_from: i64,
}

/// What the first batch of a walk must be.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Its base offset.
    BaseOffset(i64),
    /// Its last offset (a batch found through the offset index).
    LastOffset(i64),
}

impl ScanStart {
    /// The start of a segment whose base offset is `base_offset`.
    pub fn segment_start(base_offset: i64) -> ScanStart {
        ScanStart {
            position: 0,
            expect: Expect::BaseOffset(base_offset),
            index: SegmentIndex::new(),
            max_timestamp: (-1, -1),
            replay_from: Vec::new(),
            epochs: Vec::new(),
            epochs_from: i64::MIN,
        }
    }

    /// The batch of offset-index entry `k` of a segment whose in-memory index is `index`
    /// (built from validated batches): the index and time index keep what they knew up to
    /// that batch, and the walk goes on from it.
    pub fn at_entry(base_offset: i64, index: &SegmentIndex, k: usize) -> ScanStart {
        let entry = index.offset_entries()[k];
        let truncated = index.truncated_through(k);
        let max_timestamp = truncated.last_time_entry().map_or((-1, -1), |t| {
            (t.timestamp_ms, base_offset + i64::from(t.relative_offset))
        });
        ScanStart {
            position: u64::from(entry.position),
            expect: Expect::LastOffset(base_offset + i64::from(entry.relative_offset)),
            index: truncated,
            max_timestamp,
            replay_from: Vec::new(),
            epochs: Vec::new(),
            epochs_from: i64::MIN,
        }
    }
}

/// What a walk found.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    /// Bytes from the segment start that hold valid batches; the rest is to be cut.
    pub valid_bytes: u64,
    /// The offset after the last valid batch (the first batch's expected start if none).
    pub next_offset: i64,
    pub index: SegmentIndex,
    /// Largest timestamp and the offset of its record, `(-1, -1)` if none.
    pub max_timestamp: (i64, i64),
    /// `(epoch, base offset)` where the batches' partitionLeaderEpoch grows.
    pub epochs: Vec<(i32, i64)>,
    /// The segment's bytes from `align_down(valid_bytes)` to `valid_bytes`.
    pub tail: Vec<u8>,
    pub batches: u64,
    /// Idempotent producers' batches walked, replayed (timestamps are the caller's to set).
    pub producers: ProducerStates,
    /// The same, from each of `ScanStart::replay_from` on.
    pub producers_from: Vec<(i64, ProducerStates)>,
    /// Why the walk stopped before `end_bytes`, if it did: the first bad batch.
    pub stopped: Option<String>,
    /// The base offset of the first batch that passed, if one did.
    pub first_offset: Option<i64>,
}

/// Where a walk stops besides damage.
#[derive(Copy, Clone, Debug)]
pub(crate) struct ScanLimits {
    /// Bytes of the file to look at.
    pub end_bytes: u64,
    /// Stop before the first batch whose last offset is at or past this (truncation).
    pub stop_at_offset: Option<i64>,
    pub index_interval_bytes: u32,
}

/// Walks the segment with base offset `base_offset` in `file` from `start`.
pub(crate) async fn scan_segment<F: SegmentFile>(
    file: &F,
    base_offset: i64,
    start: ScanStart,
    limits: ScanLimits,
) -> io::Result<ScanOutcome> {
    let mut out = ScanOutcome {
        valid_bytes: start.position,
        next_offset: match start.expect {
            Expect::BaseOffset(b) => b,
            Expect::LastOffset(_) => -1,
        },
        index: start.index,
        max_timestamp: start.max_timestamp,
        epochs: Vec::new(),
        tail: Vec::new(),
        batches: 0,
        producers: ProducerStates::default(),
        producers_from: start
            .replay_from
            .iter()
            .map(|o| (*o, ProducerStates::default()))
            .collect(),
        stopped: None,
        first_offset: None,
    };
    let mut first = Some(start.expect);
    // `buf` holds the file's bytes from `buf_start`; `pos` is the next batch's position.
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_start: u64 = align_down(start.position);
    let mut pos: u64 = start.position;
    let mut reread_at: Option<u64> = None;
    // A new leader epoch seen at a position: `(position, epoch, reads that saw it)`.
    let mut new_epoch: Option<(u64, i32, u32)> = None;
    let mut last_epoch = i32::MIN;
    // Below the cache's first entry the cache says nothing (check_batch checks nothing).
    let epochs_from = start
        .epochs
        .first()
        .map_or(start.epochs_from, |&(_, first)| {
            first.max(start.epochs_from)
        });
    loop {
        let have = (buf_start + buf.len() as u64).saturating_sub(pos);
        let left_in_file = limits.end_bytes.saturating_sub(pos);
        if left_in_file == 0 {
            break;
        }
        // Enough for a header, then for the whole batch, reading more as needed.
        let mut need = BATCH_HEADER_BYTES as u64;
        let mut bad: Option<String> = None;
        if have >= need {
            let at = (pos - buf_start) as usize;
            match BatchHeader::view(&buf[at..]).and_then(BatchHeader::total_bytes) {
                Some(size) => need = size as u64,
                // Zeroes where a header belongs: preallocated space never written, the
                // clean end of the segment's batches, not damage.
                None if buf[at..at + BATCH_HEADER_BYTES].iter().all(|b| *b == 0) => break,
                None => bad = Some(format!("no record batch at position {pos}")),
            }
        }
        if bad.is_none() && need > left_in_file {
            bad = Some(format!(
                "a batch of {need} bytes at position {pos} runs past the end at {}",
                limits.end_bytes
            ));
        }
        if bad.is_none() && have < need {
            // Drop what is consumed, keeping the page of `pos` for the tail.
            let keep_from = align_down(pos).max(buf_start);
            buf.drain(..((keep_from - buf_start) as usize).min(buf.len()));
            buf_start = keep_from;
            let read_at = buf_start + buf.len() as u64;
            let want = (pos + need - read_at)
                .max(SCAN_CHUNK_BYTES as u64)
                .min(limits.end_bytes - read_at);
            let chunk = file.read_at(read_at, want as usize).await?;
            if chunk.is_empty() {
                out.stopped = Some(format!(
                    "the file ends at {read_at}, before {}",
                    limits.end_bytes
                ));
                break;
            }
            buf.extend_from_slice(&chunk);
            continue;
        }
        let verdict = match bad {
            Some(reason) => Err(reason),
            None => {
                let at = (pos - buf_start) as usize;
                let bytes = &buf[at..at + need as usize];
                check_batch(
                    bytes,
                    pos,
                    base_offset,
                    out.next_offset,
                    first,
                    &start.epochs,
                    start.epochs_from,
                )
            }
        };
        // Without an epoch cache to check against (recovery), the leader epoch a batch
        // carries (outside the CRC) must never go back, and a new one is believed only
        // once a second read from the disk gives the same, so a flipped bit cannot enter
        // the cache.
        let verdict = verdict.and_then(|info| {
            let epoch = info.partition_leader_epoch;
            if info.last_offset() < epochs_from {
                return Ok(Ok(info));
            }
            if !start.epochs.is_empty() || epoch == last_epoch {
                return Ok(Ok(info));
            }
            if epoch < last_epoch && last_epoch != i32::MIN {
                return Err(format!(
                    "batch at position {pos} carries leader epoch {epoch}, older than the {last_epoch} before it"
                ));
            }
            match new_epoch {
                Some((at, seen, _)) if at == pos && seen == epoch => Ok(Ok(info)),
                Some((at, _, reads)) if at == pos && reads >= MAX_EPOCH_READS => Err(format!(
                    "batch at position {pos}: its leader epoch reads differently each time"
                )),
                _ => Ok(Err(epoch)),
            }
        });
        let info = match verdict {
            Ok(Ok(info)) => info,
            Ok(Err(epoch)) => {
                // A new epoch (or one that read differently the last time): read again.
                let reads = match new_epoch {
                    Some((at, _, reads)) if at == pos => reads + 1,
                    _ => 1,
                };
                new_epoch = Some((pos, epoch, reads));
                buf.truncate(((pos - buf_start) as usize).min(buf.len()));
                continue;
            }
            Err(reason) => {
                if reread_at != Some(pos) {
                    // Once more from the disk before believing it.
                    // What is before it was validated (and may be the tail): kept.
                    reread_at = Some(pos);
                    buf.truncate(((pos - buf_start) as usize).min(buf.len()));
                    continue;
                }
                out.stopped = Some(reason);
                break;
            }
        };
        let at = (pos - buf_start) as usize;
        let bytes = &buf[at..at + need as usize];
        if limits
            .stop_at_offset
            .is_some_and(|stop| info.last_offset() >= stop)
        {
            break;
        }
        first = None;
        let relative_last = info.last_offset() - base_offset;
        if info.max_timestamp > out.max_timestamp.0 {
            out.max_timestamp = (info.max_timestamp, offset_of_max_timestamp(bytes, &info));
        }
        if info.partition_leader_epoch > last_epoch && info.last_offset() >= epochs_from {
            last_epoch = info.partition_leader_epoch;
            out.epochs.push((last_epoch, info.base_offset));
        }
        let relative_max = (out.max_timestamp.1 - base_offset).clamp(0, relative_last) as u32;
        out.index.on_batch(
            pos as u32,
            need as u32,
            relative_last as u32,
            out.max_timestamp.0,
            relative_max,
            limits.index_interval_bytes,
        );
        out.producers.record(&info, info.base_offset, 0);
        for (from, producers) in out.producers_from.iter_mut() {
            if info.base_offset >= *from {
                producers.record(&info, info.base_offset, 0);
            }
        }
        pos += need;
        out.valid_bytes = pos;
        out.next_offset = info.last_offset() + 1;
        out.batches += 1;
        out.first_offset.get_or_insert(info.base_offset);
    }
    if out.next_offset < 0 {
        // Not even the indexed batch it started at is valid: the caller starts earlier.
        return Ok(out);
    }
    let tail_from = (align_down(pos).max(buf_start) - buf_start) as usize;
    let tail_to = ((pos - buf_start) as usize).min(buf.len());
    out.tail = buf
        .get(tail_from..tail_to)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    if out.tail.len() as u64 != pos - align_down(pos) {
        // The walk did not keep the page it stopped in: read it for the writer, twice, as
        // the next write puts these bytes back and a flipped bit must not go with them.
        let len = (pos - align_down(pos)) as usize;
        let first = file.read_at(align_down(pos), len).await?;
        let second = file.read_at(align_down(pos), len).await?;
        if first.len() != len || first != second {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "cannot read back the last page of the segment reliably",
            ));
        }
        out.tail = first;
    }
    Ok(out)
}

/// Walks from offset-index entry `entry` (the segment start when `None`); when the indexed
/// batch itself is bad, from the entry before it, down to the segment start, whose base
/// offset is known; and from an earlier entry again when the walk ends in a page that
/// begins before where it started (that page is written back with the next write, so
/// every byte of it must have been validated).
pub(crate) async fn scan_from_entry<F: SegmentFile>(
    file: &F,
    base_offset: i64,
    index: Option<&SegmentIndex>,
    mut entry: Option<usize>,
    epochs: &[(i32, i64)],
    limits: ScanLimits,
) -> io::Result<ScanOutcome> {
    loop {
        let mut start = match (index, entry) {
            (Some(index), Some(k)) => ScanStart::at_entry(base_offset, index, k),
            _ => ScanStart::segment_start(base_offset),
        };
        start.epochs = epochs.to_vec();
        let from = start.position;
        let out = scan_segment(file, base_offset, start, limits).await?;
        if out.next_offset < 0 {
            entry = entry.and_then(|k| k.checked_sub(1));
            continue;
        }
        // The last page goes back to disk with the next write: all of it must have been
        // validated, so the walk must have started at or before that page.
        let page = align_down(out.valid_bytes);
        if page < from {
            entry = index.and_then(|ix| ix.entry_at_or_before(page));
            continue;
        }
        return Ok(out);
    }
}

/// Validates one batch at `pos`: framing, magic, CRC, counts, and that it starts right
/// after the previous one (`next_offset`) or is the batch `first` names. The base offset is
/// outside the CRC, so a batch that does not follow its predecessor is damage, never a skip.
pub(crate) fn check_batch(
    bytes: &[u8],
    pos: u64,
    base_offset: i64,
    next_offset: i64,
    first: Option<Expect>,
    epochs: &[(i32, i64)],
    epochs_from: i64,
) -> Result<wharf_protocol::batch::BatchInfo, String> {
    let info = validate_batch_with(bytes, usize::MAX, CountRule::AtMost)
        .map_err(|e| format!("batch at position {pos}: {e}"))?;
    // A batch wholly below `epochs_from` (the recorded log start) is never served, and its
    // epoch is nobody's business: a cleaned segment's filler for the offsets below the log
    // start carries the epoch of the first batch the cleaner read, while a checkpoint
    // written before the log start moved may still name older epochs for those offsets.
    let epochs = if info.last_offset() < epochs_from {
        &[][..]
    } else {
        epochs
    };
    // The epoch the cache gives the batch's offsets (none below its first entry). Epochs
    // start at batch boundaries, except at the log start once it moved inside a batch:
    // that batch straddles it and carries the epoch of the offset at the log start (the
    // cache's first entry, or `epochs_from` when a checkpoint written before the move
    // still names older epochs; a cleaner's filler that covers the unread offsets below
    // the log start and the dropped batch at it carries that batch's epoch).
    let mut probe = info.base_offset;
    for floor in [epochs.first().map(|e| e.1), Some(epochs_from)]
        .into_iter()
        .flatten()
    {
        if probe < floor && info.last_offset() >= floor {
            probe = floor;
        }
    }
    let k = epochs.partition_point(|(_, start)| *start <= probe);
    if let Some(&(epoch, _)) = k.checked_sub(1).map(|k| &epochs[k]) {
        if info.partition_leader_epoch != epoch {
            return Err(format!(
                "batch at position {pos} carries leader epoch {} where the log has {epoch}",
                info.partition_leader_epoch
            ));
        }
    }
    let follows = match first {
        Some(Expect::BaseOffset(b)) => info.base_offset == b,
        Some(Expect::LastOffset(l)) => info.last_offset() == l && info.base_offset >= base_offset,
        None => info.base_offset == next_offset,
    };
    if !follows {
        let wanted = match first {
            Some(Expect::LastOffset(l)) => format!("a batch ending at offset {l}"),
            Some(Expect::BaseOffset(b)) => format!("offset {b}"),
            None => format!("offset {next_offset}"),
        };
        return Err(format!(
            "batch at position {pos} starts at offset {} where {wanted} belongs",
            info.base_offset
        ));
    }
    let relative_last = info.last_offset() - base_offset;
    if relative_last > i64::from(u32::MAX) || pos + bytes.len() as u64 > u64::from(u32::MAX) {
        return Err(format!(
            "batch at position {pos} is beyond what a segment's index can address"
        ));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_protocol::batch::BatchBuilder;

    /// A batch of `records` records at `base_offset` carrying `epoch`.
    fn batch(base_offset: i64, records: usize, epoch: i32) -> Vec<u8> {
        let mut builder = BatchBuilder::new()
            .base_offset(base_offset)
            .partition_leader_epoch(epoch);
        for i in 0..records {
            builder.push(None, Some(&[i as u8; 8]), &[], 1_000);
        }
        builder.build()
    }

    #[test]
    fn a_batch_must_carry_the_epoch_the_cache_gives_its_offsets() {
        let epochs = [(3, 0), (5, 10)];
        let check = |b: &[u8], next| check_batch(b, 0, 0, next, None, &epochs, i64::MIN);
        assert!(check(&batch(4, 3, 3), 4).is_ok());
        assert!(check(&batch(10, 2, 5), 10).is_ok());
        assert!(check(&batch(10, 2, 3), 10).is_err(), "an older epoch");
        assert!(
            check(&batch(4, 3, 3 | 1 << 17), 4).is_err(),
            "a flipped bit"
        );
    }

    #[test]
    fn a_batch_straddling_the_log_start_carries_the_first_epoch() {
        // The log start moved to 83, inside the batch 80..=83 (DeleteRecords).
        let epochs = [(18, 83), (19, 90)];
        let check = |b: &[u8]| check_batch(b, 0, 61, 80, None, &epochs, i64::MIN);
        assert!(check(&batch(80, 4, 18)).is_ok());
        assert!(
            check(&batch(80, 4, 18 | 1 << 17)).is_err(),
            "a flipped bit in the epoch of a batch straddling the log start is damage"
        );
        // Wholly below the first entry: nothing to check it against.
        let below = |b: &[u8]| check_batch(b, 0, 61, 70, None, &epochs, i64::MIN);
        assert!(below(&batch(70, 4, 7)).is_ok());
    }

    #[test]
    fn a_batch_below_the_recorded_log_start_is_not_held_to_a_stale_checkpoint() {
        // The checkpoint was written before DeleteRecords moved the log start to 104; the
        // cleaner's filler for 81..=103 carries the epoch of the batch at 104.
        let epochs = [(5, 60), (7, 95)];
        let check = |b: &[u8], next| check_batch(b, 0, 81, next, None, &epochs, 104);
        assert!(check(&batch(81, 23, 7), 81).is_ok());
        assert!(check(&batch(104, 2, 7), 104).is_ok());
        assert!(
            check(&batch(100, 6, 5), 100).is_err(),
            "a batch reaching the log start is still checked"
        );
        // A filler over 81..=110 straddling the log start, with the epoch at 104.
        assert!(check(&batch(81, 30, 7), 81).is_ok());
        assert!(check(&batch(81, 30, 5), 81).is_err());
        let stale = |b: &[u8]| check_batch(b, 0, 81, 81, None, &epochs, i64::MIN);
        assert!(
            stale(&batch(81, 23, 7)).is_err(),
            "without a floor it is checked"
        );
    }
}
