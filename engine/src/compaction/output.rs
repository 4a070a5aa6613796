//! Lays out the cleaned segment of one group of segments, batch after batch, without I/O:
//! the bytes to write, the offset and time indexes, the largest timestamp, and the
//! fillers.
//!
//! Every offset of the group is covered by exactly one batch of the output, as in the
//! segments it replaces: a run of dropped batches becomes one filler (an empty batch over
//! their offsets, [`super::filter::filler_batch`]), split where the dropped batches' leader
//! epoch changes (so the epochs a walk reads back from the batches start where they did)
//! and where its `lastOffsetDelta` would overflow. So the cleaned segment starts at its
//! base offset, each batch starts where the previous one ended, and it ends where the
//! next segment starts: the same proof of integrity every other segment gives.

use wharf_protocol::batch::{BatchInfo, BATCH_HEADER_BYTES};

use crate::config::MAX_SEGMENT_BYTES;
use crate::index::SegmentIndex;
use crate::records::offset_of_max_timestamp;

use super::filter::filler_batch;

/// The most offsets one filler covers (`lastOffsetDelta` is an i32).
const MAX_FILLER_SPAN: i64 = i32::MAX as i64 + 1;

/// What the cleaned segment holds, once laid out.
#[derive(Clone, Debug)]
pub(crate) struct CleanedSegment {
    pub base_offset: i64,
    pub size_bytes: u64,
    /// The offset after its last batch: the group's end.
    pub next_offset: i64,
    pub max_timestamp: (i64, i64),
    pub index: SegmentIndex,
    pub fillers: u64,
}

/// A run of dropped offsets not yet written: `[start, end)` under `epoch`.
#[derive(Copy, Clone)]
struct Gap {
    start: i64,
    end: i64,
    epoch: i32,
}

/// Builds a cleaned segment. `take_bytes` hands out what is laid out so far, for the
/// driver to write; positions count from the segment start.
pub(crate) struct SegmentBuilder {
    base_offset: i64,
    next_offset: i64,
    size_bytes: u64,
    index: SegmentIndex,
    interval: u32,
    max_timestamp: (i64, i64),
    gap: Option<Gap>,
    out: Vec<u8>,
    fillers: u64,
    /// The leader epoch of the last batch laid out (-1 before any).
    last_epoch: i32,
}

impl SegmentBuilder {
    pub fn new(base_offset: i64, index_interval_bytes: u32) -> SegmentBuilder {
        SegmentBuilder {
            base_offset,
            next_offset: base_offset,
            size_bytes: 0,
            index: SegmentIndex::new(),
            interval: index_interval_bytes,
            max_timestamp: (-1, -1),
            gap: None,
            out: Vec::new(),
            fillers: 0,
            last_epoch: -1,
        }
    }

    /// The offset the next batch (or dropped range) must start at.
    pub fn next_offset(&self) -> i64 {
        self.gap.map_or(self.next_offset, |g| g.end)
    }

    /// Bytes laid out and not taken yet.
    pub fn pending_bytes(&self) -> usize {
        self.out.len()
    }

    /// Everything laid out since the last call.
    pub fn take_bytes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Offsets `[next_offset, end)` hold nothing that stays (dropped batches, or batches
    /// below the log start that are not read), under leader epoch `epoch`.
    pub fn skip(&mut self, end: i64, epoch: i32) {
        let start = self.next_offset();
        assert!(end >= start, "a cleaned segment's offsets only grow");
        if end == start {
            return;
        }
        match &mut self.gap {
            Some(gap) if gap.epoch == epoch && end - gap.start <= MAX_FILLER_SPAN => gap.end = end,
            _ => {
                self.flush_gap();
                let mut start = start;
                // A range too long for one filler: all but its last part now.
                while end - start > MAX_FILLER_SPAN {
                    self.write_filler(start, start + MAX_FILLER_SPAN, epoch);
                    start += MAX_FILLER_SPAN;
                }
                self.gap = Some(Gap { start, end, epoch });
            }
        }
    }

    /// A dropped batch.
    pub fn drop_batch(&mut self, info: &BatchInfo) {
        assert_eq!(
            info.base_offset,
            self.next_offset(),
            "batches reach the cleaner contiguous"
        );
        self.skip(info.last_offset() + 1, info.partition_leader_epoch);
    }

    /// A batch that stays (as it was or rewritten): `bytes` passed validation, `info` is
    /// its header. Fails when the segment would outgrow what its index can address.
    pub fn place(&mut self, bytes: &[u8], info: &BatchInfo) -> Result<(), String> {
        assert_eq!(
            info.base_offset,
            self.next_offset(),
            "batches reach the cleaner contiguous"
        );
        self.flush_gap();
        self.push(bytes, info)
    }

    /// Finishes the segment at `end_offset` (the group's end), covering what is left with
    /// a filler.
    pub fn finish(mut self, end_offset: i64) -> Result<(CleanedSegment, Vec<u8>), String> {
        let epoch = self.gap.map_or(self.last_epoch, |g| g.epoch);
        self.skip(end_offset, epoch);
        self.flush_gap();
        if self.size_bytes > MAX_SEGMENT_BYTES {
            return Err(format!(
                "the cleaned segment at {} would be {} bytes, more than a segment can hold",
                self.base_offset, self.size_bytes
            ));
        }
        let (max_ts, max_offset) = self.max_timestamp;
        self.index
            .maybe_append_time(max_ts, (max_offset - self.base_offset).max(0) as u32);
        let segment = CleanedSegment {
            base_offset: self.base_offset,
            size_bytes: self.size_bytes,
            next_offset: self.next_offset,
            max_timestamp: self.max_timestamp,
            index: self.index,
            fillers: self.fillers,
        };
        Ok((segment, self.out))
    }

    fn flush_gap(&mut self) {
        if let Some(gap) = self.gap.take() {
            self.write_filler(gap.start, gap.end, gap.epoch);
        }
    }

    fn write_filler(&mut self, start: i64, end: i64, epoch: i32) {
        let mut bytes = Vec::with_capacity(BATCH_HEADER_BYTES);
        filler_batch(&mut bytes, start, end - start, epoch);
        let info = wharf_protocol::batch::validate_batch_with(
            &bytes,
            usize::MAX,
            wharf_protocol::batch::CountRule::AtMost,
        )
        .expect("a filler is a valid batch");
        self.fillers += 1;
        // A filler's size never overflows: it is a header.
        let _ = self.push(&bytes, &info);
    }

    fn push(&mut self, bytes: &[u8], info: &BatchInfo) -> Result<(), String> {
        let position = self.size_bytes;
        let size = bytes.len() as u64;
        let relative_last = info.last_offset() - self.base_offset;
        if position + size > MAX_SEGMENT_BYTES || relative_last > i64::from(u32::MAX) {
            return Err(format!(
                "the cleaned segment at {} cannot address the batch at offset {}",
                self.base_offset, info.base_offset
            ));
        }
        if info.max_timestamp > self.max_timestamp.0 {
            self.max_timestamp = (info.max_timestamp, offset_of_max_timestamp(bytes, info));
        }
        let relative_max = (self.max_timestamp.1 - self.base_offset).clamp(0, relative_last) as u32;
        self.index.on_batch(
            position as u32,
            size as u32,
            relative_last as u32,
            self.max_timestamp.0,
            relative_max,
            self.interval,
        );
        self.out.extend_from_slice(bytes);
        self.size_bytes += size;
        self.next_offset = info.last_offset() + 1;
        self.last_epoch = info.partition_leader_epoch;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_protocol::batch::{batches, validate_batch_with, BatchBuilder, CountRule};

    fn batch(base: i64, records: usize, epoch: i32) -> (Vec<u8>, BatchInfo) {
        let mut b = BatchBuilder::new()
            .base_offset(base)
            .partition_leader_epoch(epoch);
        for i in 0..records {
            b.push(Some(b"k"), Some(b"v"), &[], 1_000 + i as i64);
        }
        let bytes = b.build();
        let info = validate_batch_with(&bytes, usize::MAX, CountRule::AtMost).expect("valid");
        (bytes, info)
    }

    fn s_batches(out: &[u8]) -> usize {
        batches(out).count()
    }

    fn layout(out: &[u8]) -> Vec<(i64, i64, i32, i32)> {
        batches(out)
            .map(|(_, b)| {
                let i = validate_batch_with(b, usize::MAX, CountRule::AtMost).expect("valid");
                (
                    i.base_offset,
                    i.last_offset(),
                    i.records_count,
                    i.partition_leader_epoch,
                )
            })
            .collect()
    }

    #[test]
    fn dropped_runs_become_fillers_split_at_epoch_changes() {
        let mut s = SegmentBuilder::new(100, 4096);
        let (a, ai) = batch(100, 2, 1);
        let (b, bi) = batch(102, 3, 1);
        let (c, ci) = batch(105, 1, 2);
        let (d, di) = batch(106, 4, 2);
        let (e, ei) = batch(110, 1, 2);
        s.drop_batch(&ai);
        s.drop_batch(&bi);
        s.drop_batch(&ci);
        s.place(&d, &di).expect("fits");
        s.drop_batch(&ei);
        let (seg, rest) = s.finish(120).expect("finished");
        let _ = (a, b, c, e);
        assert_eq!(
            layout(&rest),
            vec![
                (100, 104, 0, 1),
                (105, 105, 0, 2),
                (106, 109, 4, 2),
                (110, 119, 0, 2)
            ]
        );
        assert_eq!(
            (seg.next_offset, seg.size_bytes as usize),
            (120, rest.len())
        );
        assert_eq!((s_batches(&rest), seg.fillers), (4, 3));
        assert_eq!(seg.max_timestamp, (1_003, 109));
    }

    #[test]
    fn a_group_with_nothing_left_is_one_filler() {
        let mut s = SegmentBuilder::new(0, 4096);
        s.skip(10, 4);
        let (seg, out) = s.finish(10).expect("finished");
        assert_eq!(layout(&out), vec![(0, 9, 0, 4)]);
        assert_eq!(seg.max_timestamp, (-1, -1));
    }

    #[test]
    fn index_entries_follow_the_new_positions() {
        let mut s = SegmentBuilder::new(0, 100);
        let mut next = 0;
        for _ in 0..10 {
            let (b, i) = batch(next, 3, 0);
            s.place(&b, &i).expect("fits");
            next = i.last_offset() + 1;
            let (_, d) = batch(next, 2, 0);
            s.drop_batch(&d);
            next = d.last_offset() + 1;
        }
        let (seg, out) = s.finish(next).expect("finished");
        for e in seg.index.offset_entries() {
            let i = validate_batch_with(&out[e.position as usize..], usize::MAX, CountRule::AtMost)
                .expect("an entry points at a batch");
            assert_eq!(i.last_offset(), i64::from(e.relative_offset));
        }
        assert!(!seg.index.offset_entries().is_empty());
    }
}
