//! Damage: what the log reports when data on disk is not what it wrote, and the rule for
//! damage it cannot cut off the end.
//!
//! A log is a contiguous range of offsets, `[log start, log end)`, and Kafka clients know
//! only those two bounds. So:
//! - a torn or damaged tail of the segment being written when the broker stopped is cut
//!   (the log end moves back, as Kafka's recovery does);
//! - damage anywhere else (a sealed segment's batch that fails its CRC or does not follow
//!   its predecessor, a missing segment) cannot be cut off without deleting everything
//!   written after it, so the log start moves past it: consumers positioned before it get
//!   OFFSET_OUT_OF_RANGE and reset (to the new log start with `auto.offset.reset=earliest`)
//!   instead of being stuck on an error, and nothing is ever skipped silently.
//!
//! Each case is logged once and kept as a [`DamageReport`].

use wharf_protocol::batch::{validate_batch_with, CountRule};

use crate::cache::{BatchCache, PartitionCache};
use crate::index::SegmentIndex;
use crate::records::offset_of_max_timestamp;

use super::segment::{Segment, SegmentState};
use super::state::{LogState, Pending};

/// What kind of damage, and what the log did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DamageKind {
    /// The last segment was cut at its first bad batch (torn writes, damage): the log end
    /// moved back to `first_offset`.
    TailCut,
    /// A bad batch in a segment with data after it: the log start moved past it to
    /// `end_offset`.
    Skipped,
    /// Offsets missing between two segments (a segment deleted from the middle, or one
    /// that overlaps the next): the log start moved past the gap to `end_offset`.
    Gap,
}

/// Damage the log found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamageReport {
    pub kind: DamageKind,
    /// The segment where it was found, by base offset, and the byte position in it.
    pub segment_base_offset: i64,
    pub position: u64,
    /// The first offset that could not be read (for a cut: the new log end).
    pub first_offset: i64,
    /// The offset where readable data resumes: for a cut, the end of what was cut as far
    /// as it could be told (`first_offset` when nothing readable followed); otherwise the
    /// new log start.
    pub end_offset: i64,
    /// The log start before the damage moved it (equal to the log start for a cut).
    pub previous_log_start_offset: i64,
    pub reason: String,
}

impl DamageReport {
    /// One line for the broker's log.
    pub fn describe(&self) -> String {
        match self.kind {
            DamageKind::TailCut => format!(
                "cut the log at offset {} (segment {}, position {}): {}; offsets {}..{} are lost",
                self.first_offset,
                self.segment_base_offset,
                self.position,
                self.reason,
                self.first_offset,
                self.end_offset.max(self.first_offset)
            ),
            DamageKind::Skipped => format!(
                "damaged record batch at offset {} (segment {}, position {}): {}; records from {} to {} can no longer be read, the log start moved from {} to {}",
                self.first_offset,
                self.segment_base_offset,
                self.position,
                self.reason,
                self.previous_log_start_offset,
                self.end_offset - 1,
                self.previous_log_start_offset,
                self.end_offset
            ),
            DamageKind::Gap => format!(
                "offsets {}..{} are missing after segment {} ({}); the log start moved from {} to {}",
                self.first_offset,
                self.end_offset,
                self.segment_base_offset,
                self.reason,
                self.previous_log_start_offset,
                self.end_offset
            ),
        }
    }
}

impl LogState {
    /// A read found a bad batch at `position` of segment `base_offset`, where offset
    /// `first_offset` should have been, and reading it again did not help. The log start
    /// moves to the first offset known to be readable after it: the end of the next batch
    /// the offset index names, else the next segment (for the active segment, the written
    /// end).
    pub fn skip_damage(
        &mut self,
        base_offset: i64,
        position: u64,
        first_offset: i64,
        reason: String,
        cache: &BatchCache,
        cached: &PartitionCache,
    ) -> Option<DamageReport> {
        let k = self.segment_index(base_offset)?;
        let seg = &self.segments[k];
        let last = k + 1 == self.segments.len();
        let log_start = self.log_start_offset;
        let after = seg.index.as_ref().and_then(|index| {
            index
                .offset_entries()
                .iter()
                .map(|e| (e.position, base_offset + i64::from(e.relative_offset) + 1))
                .find(|(p, resume)| u64::from(*p) > position && *resume > log_start)
                .map(|(_, resume)| resume)
        });
        let resume = after
            .unwrap_or(if last {
                self.written_next_offset
            } else {
                seg.next_offset
            })
            .min(self.written_next_offset);
        if resume <= self.log_start_offset {
            return None;
        }
        let report = DamageReport {
            kind: DamageKind::Skipped,
            segment_base_offset: base_offset,
            position,
            first_offset: first_offset.max(self.log_start_offset),
            end_offset: resume,
            previous_log_start_offset: self.log_start_offset,
            reason,
        };
        self.move_log_start(resume, cache, cached);
        self.reports.push(report.clone());
        Some(report)
    }
}

impl LogState {
    /// The last page of the segment being written, read back for the next write, holds a
    /// bad batch (at `position`, where `first_offset` belongs) that the write would
    /// otherwise carry forward. The log start moves past the damage and the queued
    /// batches move, with the same offsets, to a new segment at the written end; the
    /// damaged segment is sealed as it is and goes with retention.
    pub fn leave_damaged_segment(
        &mut self,
        position: u64,
        first_offset: i64,
        reason: String,
        now_ms: i64,
        cache: &BatchCache,
        cached: &PartitionCache,
    ) -> Option<DamageReport> {
        let k = self
            .segments
            .iter()
            .position(|s| s.state != SegmentState::Sealed)?;
        let queued: Vec<Pending> = self.pending.drain(..).collect();
        self.segments.truncate(k + 1);
        let written_end = self.written_next_offset;
        let seg = &mut self.segments[k];
        let base = seg.base_offset;
        seg.size_bytes = seg.written_bytes;
        seg.next_offset = written_end;
        if let Some(index) = seg.index.as_mut() {
            *index = match index.entry_at_or_before(seg.written_bytes.saturating_sub(1)) {
                Some(e) => index.truncated_through(e),
                None => SegmentIndex::new(),
            };
            seg.max_timestamp = index.last_time_entry().map_or((-1, -1), |t| {
                (t.timestamp_ms, base + i64::from(t.relative_offset))
            });
        }
        let report = self.skip_damage(base, position, first_offset, reason, cache, cached);
        // The new segment's snapshot is the producer state before the queued batches.
        let mut before = self.producers.clone();
        before.truncate_from(written_end);
        let mut fresh = Segment::new_active(written_end, now_ms);
        fresh.start_producers = Some(before.encode());
        self.segments.push(fresh);
        let interval = self.config.index_interval_bytes;
        for mut p in queued {
            let seg = self
                .segments
                .last_mut()
                .expect("a log always has an active segment");
            let position = seg.size_bytes;
            let size = p.bytes.len() as u64;
            let last = p.next_offset - 1;
            if let Ok(info) = validate_batch_with(&p.bytes, usize::MAX, CountRule::AtMost) {
                if info.max_timestamp > seg.max_timestamp.0 {
                    let mut info = info;
                    info.base_offset = p.base_offset;
                    seg.max_timestamp =
                        (info.max_timestamp, offset_of_max_timestamp(&p.bytes, &info));
                }
            }
            let relative_max =
                (seg.max_timestamp.1 - seg.base_offset).clamp(0, last - seg.base_offset) as u32;
            if let Some(index) = seg.index.as_mut() {
                index.on_batch(
                    position as u32,
                    size as u32,
                    (last - seg.base_offset) as u32,
                    seg.max_timestamp.0,
                    relative_max,
                    interval,
                );
            }
            seg.size_bytes += size;
            seg.next_offset = p.next_offset;
            seg.first_append_ms.get_or_insert(now_ms);
            p.segment_base = seg.base_offset;
            self.pending.push_back(p);
        }
        self.recompute_max_timestamp();
        report
    }
}
