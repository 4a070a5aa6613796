//! The decisions of recovery, made on what opening a log found on disk (no I/O here):
//! where the log starts, what a gap or damage between segments does to it, and where the
//! log goes on when its last segment was cut below its recorded start. `open` gathers the
//! facts (lists, reads and validates the files) and carries the outcome out.

use super::damage::{DamageKind, DamageReport};
use super::segment::{Segment, SegmentState};

/// What opening found, segment by segment, in base-offset order.
pub(super) struct Found {
    /// The segments as validated or trusted; the last one is the active segment.
    pub segments: Vec<Segment>,
    /// For each segment: where and why its batches stopped short of its end (damage), or
    /// `None` when they ran to it.
    pub stopped_short: Vec<Option<(u64, String)>>,
    /// The log start recorded in `log-start-offset`, if any.
    pub recorded_log_start: Option<i64>,
}

/// What recovery decided.
pub(super) struct Settled {
    pub segments: Vec<Segment>,
    pub log_start_offset: i64,
    /// Damage and gaps the log start moved past, in order.
    pub reports: Vec<DamageReport>,
    /// The log start moved past a gap or damage: it is to be recorded.
    pub log_start_moved: bool,
    /// The last segment was cut below the recorded log start: it is sealed as it is and
    /// the log goes on in a new, empty active segment at the log start.
    pub restarted_at_log_start: bool,
}

/// Settles the log: the log start is the first segment's base or the recorded one,
/// whichever is later. A last segment cut below it (damage that had already moved the log
/// start past it, then a torn tail) is sealed, and the log goes on from the log start in
/// a new segment, never giving the offsets below it out again. Offsets must run on from
/// one segment to the next above the log start: where they do not (a segment missing or
/// overlapping the next, or one whose batches stopped short at damage) the log start
/// moves past the gap, and each is reported — never crossed silently.
pub(super) fn settle(found: Found, now_ms: i64) -> Settled {
    let Found {
        mut segments,
        mut stopped_short,
        recorded_log_start,
    } = found;
    assert_eq!(segments.len(), stopped_short.len());
    let mut log_start = segments[0].base_offset.max(recorded_log_start.unwrap_or(0));
    let mut restarted_at_log_start = false;
    if let Some(last) = segments.last_mut() {
        if last.next_offset < log_start && last.state != SegmentState::Sealed {
            last.state = SegmentState::Sealed;
            last.synced_bytes = last.size_bytes;
            segments.push(Segment::new_active(log_start, now_ms));
            stopped_short.push(None);
            restarted_at_log_start = true;
        }
    }
    let mut reports = Vec::new();
    let mut log_start_moved = false;
    for i in 0..segments.len() - 1 {
        let (end, next_base) = (segments[i].next_offset, segments[i + 1].base_offset);
        // Gaps below the log start lose nothing that was still in the log.
        if end == next_base || next_base <= log_start {
            continue;
        }
        let previous = log_start;
        log_start = next_base;
        log_start_moved = true;
        let seg = &segments[i];
        reports.push(match &stopped_short[i] {
            Some((position, reason)) => DamageReport {
                kind: DamageKind::Skipped,
                segment_base_offset: seg.base_offset,
                position: *position,
                first_offset: end,
                end_offset: next_base,
                previous_log_start_offset: previous,
                reason: reason.clone(),
            },
            None => DamageReport {
                kind: DamageKind::Gap,
                segment_base_offset: seg.base_offset,
                position: seg.size_bytes,
                first_offset: end.min(next_base),
                end_offset: next_base,
                previous_log_start_offset: previous,
                reason: if end < next_base {
                    format!(
                        "segment {} ends at offset {end} and the next one starts at {next_base}",
                        seg.base_offset
                    )
                } else {
                    format!(
                        "segment {} runs to offset {end}, past the start of the next one at {next_base}",
                        seg.base_offset
                    )
                },
            },
        });
    }
    let next_offset = segments.last().map_or(0, |s| s.next_offset);
    Settled {
        segments,
        log_start_offset: log_start.min(next_offset),
        reports,
        log_start_moved,
        restarted_at_log_start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(base: i64, next: i64) -> Segment {
        Segment::sealed(base, 1000, next, 0)
    }

    fn active(base: i64, next: i64) -> Segment {
        let mut seg = Segment::new_active(base, 0);
        seg.next_offset = next;
        seg.size_bytes = 500;
        seg.written_bytes = 500;
        seg
    }

    fn settle_these(segments: Vec<Segment>, recorded: Option<i64>) -> Settled {
        let stopped_short = vec![None; segments.len()];
        settle(
            Found {
                segments,
                stopped_short,
                recorded_log_start: recorded,
            },
            0,
        )
    }

    #[test]
    fn contiguous_segments_start_at_the_first_base_or_the_recorded_start() {
        let s = settle_these(vec![sealed(0, 10), sealed(10, 25), active(25, 30)], None);
        assert_eq!((s.log_start_offset, s.reports.len()), (0, 0));
        let s = settle_these(vec![sealed(0, 10), active(10, 30)], Some(17));
        assert_eq!((s.log_start_offset, s.log_start_moved), (17, false));
    }

    #[test]
    fn a_missing_segment_moves_the_log_start_past_it_and_is_reported() {
        // Segment 10..25 deleted from the middle.
        let s = settle_these(vec![sealed(0, 10), sealed(25, 40), active(40, 45)], None);
        assert_eq!(s.log_start_offset, 25);
        assert!(s.log_start_moved);
        assert_eq!(s.reports.len(), 1);
        let r = &s.reports[0];
        assert_eq!(r.kind, DamageKind::Gap);
        assert_eq!((r.first_offset, r.end_offset), (10, 25));
        assert_eq!(r.previous_log_start_offset, 0);
        assert!(
            r.describe().contains("offsets 10..25 are missing"),
            "{}",
            r.describe()
        );
    }

    #[test]
    fn damage_that_stops_a_segment_short_is_skipped_and_reported_with_its_position() {
        let segments = vec![sealed(0, 7), sealed(10, 20), active(20, 22)];
        let s = settle(
            Found {
                segments,
                stopped_short: vec![Some((4096, "CRC-32C mismatch".into())), None, None],
                recorded_log_start: None,
            },
            0,
        );
        assert_eq!(s.log_start_offset, 10);
        assert_eq!(s.reports[0].kind, DamageKind::Skipped);
        assert_eq!(s.reports[0].position, 4096);
        assert_eq!(
            (s.reports[0].first_offset, s.reports[0].end_offset),
            (7, 10)
        );
    }

    #[test]
    fn a_gap_below_the_recorded_log_start_loses_nothing() {
        let s = settle_these(
            vec![sealed(0, 10), sealed(25, 40), active(40, 45)],
            Some(30),
        );
        assert_eq!((s.log_start_offset, s.reports.len()), (30, 0));
    }

    #[test]
    fn a_last_segment_cut_below_the_log_start_goes_on_in_a_new_segment_there() {
        let s = settle_these(vec![sealed(0, 10), active(10, 12)], Some(15));
        assert!(s.restarted_at_log_start);
        assert_eq!(s.log_start_offset, 15);
        assert_eq!(s.segments.len(), 3);
        assert_eq!(s.segments[1].state, SegmentState::Sealed);
        assert_eq!(
            (s.segments[2].base_offset, s.segments[2].next_offset),
            (15, 15)
        );
        assert!(s.reports.is_empty(), "{:?}", s.reports);
    }

    #[test]
    fn the_log_start_never_passes_the_log_end() {
        let s = settle_these(vec![active(0, 5)], Some(3));
        assert_eq!(s.log_start_offset, 3);
        let s = settle_these(vec![sealed(0, 10), active(20, 20)], None);
        assert_eq!(s.log_start_offset, 20);
    }
}
