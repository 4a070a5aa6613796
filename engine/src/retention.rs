//! Which segments retention deletes: a pure decision over segment summaries, so it can be
//! tested without files. Deletion is always of whole segments, oldest first, and never of
//! the active (last) segment.

/// What retention needs to know about one segment.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    pub base_offset: i64,
    pub size_bytes: u64,
    /// The largest record timestamp, or when the segment was last written if no record
    /// has a timestamp (Kafka's `LogSegment.largestTimestamp`).
    pub largest_timestamp_ms: i64,
}

/// How many of the oldest `segments` to delete (in order). `segments.last()` is the active
/// segment and is never counted. Applies, like Kafka's `deleteOldSegments`:
/// segments wholly below `log_start_offset`, then `retention.ms`, then `retention.bytes`.
pub fn segments_to_delete(
    segments: &[SegmentSummary],
    log_start_offset: i64,
    retention_ms: i64,
    retention_bytes: i64,
    now_ms: i64,
) -> usize {
    let Some(deletable) = segments.len().checked_sub(1) else {
        return 0;
    };
    let mut count = 0;
    // Below the log start: the next segment starts at or before it.
    while count < deletable && segments[count + 1].base_offset <= log_start_offset {
        count += 1;
    }
    if retention_ms >= 0 {
        while count < deletable
            && now_ms.saturating_sub(segments[count].largest_timestamp_ms) > retention_ms
        {
            count += 1;
        }
    }
    if retention_bytes >= 0 {
        let mut size: u64 = segments[count..].iter().map(|s| s.size_bytes).sum();
        let limit = retention_bytes as u64;
        while count < deletable
            && size.saturating_sub(segments[count].size_bytes) >= limit
            && size > limit
        {
            size -= segments[count].size_bytes;
            count += 1;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seg(base_offset: i64, size_bytes: u64, largest_timestamp_ms: i64) -> SegmentSummary {
        SegmentSummary {
            base_offset,
            size_bytes,
            largest_timestamp_ms,
        }
    }

    #[test]
    fn time_and_size_limits_delete_oldest_first() {
        let segs = [
            seg(0, 100, 1000),
            seg(10, 100, 2000),
            seg(20, 100, 3000),
            seg(30, 10, 4000),
        ];
        assert_eq!(segments_to_delete(&segs, 0, -1, -1, 10_000), 0);
        assert_eq!(segments_to_delete(&segs, 0, 7_500, -1, 10_000), 2);
        assert_eq!(segments_to_delete(&segs, 0, 0, -1, 10_000), 3);
        assert_eq!(segments_to_delete(&segs, 0, -1, 110, 10_000), 2);
        assert_eq!(segments_to_delete(&segs, 0, -1, 0, 10_000), 3);
        assert_eq!(segments_to_delete(&segs, 25, -1, -1, 10_000), 2);
        assert_eq!(segments_to_delete(&segs, 20, -1, -1, 10_000), 2);
        assert_eq!(segments_to_delete(&segs[3..], 100, 0, 0, 10_000), 0);
    }

    proptest! {
        #[test]
        fn retention_never_deletes_the_active_segment(
            sizes in proptest::collection::vec((0u64..1000, -1i64..10_000), 1..30),
            log_start in 0i64..400,
            retention_ms in -1i64..10_000,
            retention_bytes in -1i64..5000,
            now_ms in 0i64..20_000,
        ) {
            let segs: Vec<_> = sizes.iter().enumerate().map(|(i, &(size, ts))| seg(i as i64 * 10, size, ts)).collect();
            let n = segments_to_delete(&segs, log_start, retention_ms, retention_bytes, now_ms);
            prop_assert!(n < segs.len());
            if retention_bytes >= 0 {
                // What is left is either within the limit or only the active segment would break it.
                let kept: u64 = segs[n..].iter().map(|s| s.size_bytes).sum();
                let next_kept = kept - segs[n].size_bytes;
                prop_assert!(n + 1 == segs.len() || next_kept < retention_bytes as u64 || kept <= retention_bytes as u64);
            }
        }
    }
}
