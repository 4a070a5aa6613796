//! Which part of a log a cleaning round may touch, how dirty the log is, and how its
//! segments are grouped (Kafka's `LogCleanerManager.cleanableOffsets`, `LogToClean` and
//! `Cleaner.groupSegmentsBySize`), decided on what the log knows of its segments: no I/O.

use super::Cleanable;

/// What the plan needs to know of one segment.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentView {
    pub base_offset: i64,
    /// The offset after its last batch.
    pub next_offset: i64,
    pub size_bytes: u64,
    /// Synced, trimmed and listed: immutable. Only sealed segments are cleaned.
    pub sealed: bool,
    pub largest_timestamp_ms: i64,
}

/// The first offset a round must not clean, as a segment base: nothing at or past
/// `upper_bound` (the high watermark or last stable offset), nothing in a segment that is
/// not sealed (the active one and any rolled but not yet synced), nothing from the first
/// segment whose newest record is younger than `min_compaction_lag_ms`. Only whole
/// segments are cleaned, so it is the base of the segment that holds the first of these.
pub(crate) fn first_uncleanable_offset(
    segments: &[SegmentView],
    first_dirty: i64,
    upper_bound: i64,
    now_ms: i64,
    min_compaction_lag_ms: i64,
) -> i64 {
    let lag = min_compaction_lag_ms.max(0);
    for seg in segments {
        let too_young = lag > 0
            && seg.next_offset > first_dirty
            && seg.largest_timestamp_ms > now_ms.saturating_sub(lag);
        if !seg.sealed || seg.next_offset > upper_bound || too_young {
            return seg.base_offset;
        }
    }
    segments.last().map_or(0, |s| s.next_offset)
}

/// How much of the log is clean and how much may be cleaned now (Kafka's `LogToClean`):
/// clean bytes are the segments wholly below `first_dirty`, cleanable ones those from the
/// one holding `first_dirty` up to `first_uncleanable`.
pub(crate) fn cleanable(
    segments: &[SegmentView],
    first_dirty: i64,
    first_uncleanable: i64,
) -> Cleanable {
    let first_uncleanable = first_uncleanable.max(first_dirty);
    let clean_bytes: u64 = segments
        .iter()
        .filter(|s| s.next_offset <= first_dirty)
        .map(|s| s.size_bytes)
        .sum();
    let cleanable_bytes: u64 = segments
        .iter()
        .filter(|s| s.next_offset > first_dirty && s.base_offset < first_uncleanable)
        .map(|s| s.size_bytes)
        .sum();
    let total = clean_bytes + cleanable_bytes;
    Cleanable {
        first_dirty_offset: first_dirty,
        first_uncleanable_offset: first_uncleanable,
        clean_bytes,
        cleanable_bytes,
        dirty_ratio: if total == 0 {
            0.0
        } else {
            cleanable_bytes as f64 / total as f64
        },
        compaction_delay_ms: 0,
    }
}

/// Groups the segments a round rewrites — every segment that starts below `end_offset` —
/// into runs whose sizes add up to at most `max_group_bytes` (`segment.bytes`) and whose
/// offsets span at most `i32::MAX` past their base, so each run becomes one segment.
/// Returns index ranges into `segments`.
pub(crate) fn group_segments(
    segments: &[SegmentView],
    end_offset: i64,
    max_group_bytes: u64,
) -> Vec<std::ops::Range<usize>> {
    let count = segments
        .iter()
        .take_while(|s| s.base_offset < end_offset && s.sealed)
        .count();
    let mut groups = Vec::new();
    let mut i = 0;
    while i < count {
        let start = i;
        let base = segments[i].base_offset;
        let mut bytes = segments[i].size_bytes;
        i += 1;
        while i < count
            && bytes + segments[i].size_bytes <= max_group_bytes
            && segments[i].next_offset - 1 - base <= i64::from(i32::MAX)
        {
            bytes += segments[i].size_bytes;
            i += 1;
        }
        groups.push(start..i);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base: i64, next: i64, size: u64, ts: i64) -> SegmentView {
        SegmentView {
            base_offset: base,
            next_offset: next,
            size_bytes: size,
            sealed: true,
            largest_timestamp_ms: ts,
        }
    }

    fn log() -> Vec<SegmentView> {
        let mut active = seg(40, 45, 100, 900);
        active.sealed = false;
        vec![
            seg(0, 10, 1000, 100),
            seg(10, 20, 1000, 200),
            seg(20, 30, 1000, 300),
            seg(30, 40, 1000, 400),
            active,
        ]
    }

    #[test]
    fn never_past_the_active_segment_the_upper_bound_or_the_lag() {
        let segs = log();
        assert_eq!(first_uncleanable_offset(&segs, 0, 1_000, 1_000, 0), 40);
        // The high watermark inside segment 20..30: that segment stays dirty.
        assert_eq!(first_uncleanable_offset(&segs, 0, 25, 1_000, 0), 20);
        assert_eq!(first_uncleanable_offset(&segs, 0, 30, 1_000, 0), 30);
        // min.compaction.lag.ms: the first segment whose newest record is younger than 750 ms.
        assert_eq!(first_uncleanable_offset(&segs, 0, 1_000, 1_000, 750), 20);
        // Old segments below the first dirty offset do not count for the lag.
        assert_eq!(first_uncleanable_offset(&segs, 35, 1_000, 1_000, 950), 30);
        // A rolled segment not yet sealed is not cleaned.
        let mut segs = log();
        segs[2].sealed = false;
        assert_eq!(first_uncleanable_offset(&segs, 0, 1_000, 1_000, 0), 20);
    }

    #[test]
    fn dirty_ratio_is_cleanable_over_total() {
        let segs = log();
        let c = cleanable(&segs, 20, 40);
        assert_eq!((c.clean_bytes, c.cleanable_bytes), (2000, 2000));
        assert!((c.dirty_ratio - 0.5).abs() < 1e-9);
        let c = cleanable(&segs, 25, 40);
        assert_eq!((c.clean_bytes, c.cleanable_bytes), (2000, 2000));
        let c = cleanable(&segs, 40, 40);
        assert_eq!(c.cleanable_bytes, 0);
        assert_eq!(c.dirty_ratio, 0.0);
    }

    #[test]
    fn groups_fit_a_segment_and_stop_at_the_end_offset() {
        let segs = log();
        assert_eq!(group_segments(&segs, 40, 2_500), vec![0..2, 2..4]);
        assert_eq!(group_segments(&segs, 25, 10_000), vec![0..3]);
        assert_eq!(group_segments(&segs, 40, 500), vec![0..1, 1..2, 2..3, 3..4]);
        // Never the active segment, whatever the end offset.
        assert_eq!(group_segments(&segs, 45, 100_000), vec![0..4]);
    }

    #[test]
    fn a_group_spans_at_most_i32_max_offsets() {
        let big = i64::from(i32::MAX);
        let segs = vec![
            seg(0, big, 10, 0),
            seg(big, big + 5, 10, 0),
            seg(big + 5, big + 9, 10, 0),
        ];
        assert_eq!(group_segments(&segs, big + 9, 1_000), vec![0..1, 1..3]);
    }
}
