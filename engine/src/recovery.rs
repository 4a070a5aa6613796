//! Recovery: walk a segment from its start, validate every batch (framing, magic, CRC-32C,
//! counts, offsets that only grow) and stop at the first byte that is not a valid batch — a
//! torn write, preallocated zeroes, damage. Everything the log keeps in memory about the
//! segment (indexes, largest timestamp, leader epochs, the partial tail page) is rebuilt
//! from the batches that passed.

use std::io;

use glommio::io::DmaFile;
use wharf_protocol::batch::{validate_batch_with, BatchHeader, CountRule, BATCH_HEADER_BYTES};

use crate::files::{align_down, read_dma};
use crate::index::SegmentIndex;
use crate::producer::ProducerStates;
use crate::records::offset_of_max_timestamp;

/// Bytes read from disk at a time while scanning.
pub(crate) const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// What a scan of one segment found.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    /// Bytes from the segment start that hold valid batches; the rest is to be cut.
    pub valid_bytes: u64,
    /// The offset after the last valid batch (the segment's base offset if none).
    pub next_offset: i64,
    pub index: SegmentIndex,
    /// Largest timestamp and the offset of its record, `(-1, -1)` if none.
    pub max_timestamp: (i64, i64),
    /// `(epoch, base offset)` where the batches' partitionLeaderEpoch grows.
    pub epochs: Vec<(i32, i64)>,
    /// The segment's bytes from `align_down(valid_bytes)` to `valid_bytes`.
    pub tail: Vec<u8>,
    pub batches: u64,
    /// Idempotent producers' batches in this segment, replayed (timestamps are the
    /// caller's to set).
    pub producers: ProducerStates,
}

/// Where a scan stops besides damage.
#[derive(Copy, Clone, Debug)]
pub(crate) struct ScanLimits {
    /// Bytes of the file to look at.
    pub file_bytes: u64,
    /// Stop before the first batch whose last offset is at or past this (truncation).
    pub stop_at_offset: Option<i64>,
    pub index_interval_bytes: u32,
}

/// Scans the segment with base offset `base_offset` in `file`.
pub(crate) async fn scan_segment(
    file: &DmaFile,
    base_offset: i64,
    limits: ScanLimits,
) -> io::Result<ScanOutcome> {
    let mut out = ScanOutcome {
        valid_bytes: 0,
        next_offset: base_offset,
        index: SegmentIndex::new(),
        max_timestamp: (-1, -1),
        epochs: Vec::new(),
        tail: Vec::new(),
        batches: 0,
        producers: ProducerStates::default(),
    };
    // `buf` holds the file's bytes from `buf_start`; `pos` is the next batch's position.
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_start: u64 = 0;
    let mut pos: u64 = 0;
    let mut last_epoch = i32::MIN;
    loop {
        let have = buf_start + buf.len() as u64 - pos;
        let left_in_file = limits.file_bytes.saturating_sub(pos);
        // Enough for a header, then for the whole batch, reading more as needed.
        let mut need = BATCH_HEADER_BYTES as u64;
        if have >= need {
            let at = (pos - buf_start) as usize;
            match BatchHeader::view(&buf[at..]).and_then(BatchHeader::total_bytes) {
                Some(size) => need = size as u64,
                None => break,
            }
        }
        if need > left_in_file {
            break;
        }
        if have < need {
            // Drop what is consumed, keeping the page of `pos` for the tail.
            let keep_from = align_down(pos).max(buf_start);
            buf.drain(..(keep_from - buf_start) as usize);
            buf_start = keep_from;
            let read_at = buf_start + buf.len() as u64;
            let want = (need - have)
                .max(SCAN_CHUNK_BYTES as u64)
                .min(limits.file_bytes - read_at);
            let chunk = read_dma(file, read_at, want as usize).await?;
            if chunk.is_empty() {
                break;
            }
            buf.extend_from_slice(&chunk);
            continue;
        }
        let at = (pos - buf_start) as usize;
        let bytes = &buf[at..at + need as usize];
        let Ok(info) = validate_batch_with(bytes, usize::MAX, CountRule::AtMost) else {
            break;
        };
        let relative_last = info.last_offset() - base_offset;
        // Offsets are dense (no compaction yet): a batch that does not start where the
        // previous one ended has a damaged baseOffset, which the CRC does not cover.
        if info.base_offset != out.next_offset
            || relative_last > i64::from(u32::MAX)
            || pos + need > u64::from(u32::MAX)
        {
            break;
        }
        if limits
            .stop_at_offset
            .is_some_and(|stop| info.last_offset() >= stop)
        {
            break;
        }
        if info.max_timestamp > out.max_timestamp.0 {
            out.max_timestamp = (info.max_timestamp, offset_of_max_timestamp(bytes, &info));
        }
        if info.partition_leader_epoch > last_epoch {
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
        pos += need;
        out.next_offset = info.last_offset() + 1;
        out.batches += 1;
    }
    out.valid_bytes = pos;
    let tail_from = (align_down(pos).max(buf_start) - buf_start) as usize;
    let tail_to = ((pos - buf_start) as usize).min(buf.len());
    out.tail = buf
        .get(tail_from..tail_to)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    debug_assert_eq!(out.tail.len() as u64, pos - align_down(pos));
    Ok(out)
}
