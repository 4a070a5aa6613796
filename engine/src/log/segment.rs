//! One segment of a partition log as the log knows it in memory: `<base offset>.log` with
//! its `.index` and `.timeindex`, named by the 20-digit base offset as in Kafka. No I/O
//! here; the driver holds the open files.

use std::path::{Path, PathBuf};

use crate::index::SegmentIndex;

pub(crate) const LOG_SUFFIX: &str = ".log";
pub(crate) const INDEX_SUFFIX: &str = ".index";
pub(crate) const TIME_INDEX_SUFFIX: &str = ".timeindex";

/// `<dir>/<20-digit base offset><suffix>`.
pub(crate) fn segment_path(dir: &Path, base_offset: i64, suffix: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}{suffix}"))
}

/// The base offset named by a file name with `suffix`, if it is one of ours.
pub(crate) fn parse_segment_name(name: &str, suffix: &str) -> Option<i64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|base: &i64| *base >= 0)
}

/// Where a segment is in its life.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum SegmentState {
    /// The active segment before its file is opened for writes (an empty log, a fresh
    /// roll, a log reopened after a clean shutdown); costs no file descriptor.
    Closed,
    /// The active segment (or one just rolled) with its file open for writes.
    Open,
    /// Rolled: synced, trimmed to its size, indexes written, listed in the sealed-segments
    /// file. Immutable.
    Sealed,
}

/// What the log knows about one segment. Invariants: `synced_bytes <= written_bytes <=
/// size_bytes`; offsets of the segment are in `[base_offset, next_offset)`; only the last
/// segments of a log (the active one and ones rolled but not yet sealed) are not `Sealed`.
pub(crate) struct Segment {
    pub base_offset: i64,
    /// Bytes assigned to the segment, including appends not yet written.
    pub size_bytes: u64,
    /// Bytes whose write to the file completed.
    pub written_bytes: u64,
    /// Bytes covered by a completed `fdatasync`.
    pub synced_bytes: u64,
    /// Bytes of the file allocated ahead (fallocate), 0 when unknown or none.
    pub allocated_bytes: u64,
    /// The offset after the segment's last assigned record.
    pub next_offset: i64,
    /// Largest record timestamp and the offset of its record, `(-1, -1)` if none.
    pub max_timestamp: (i64, i64),
    /// Broker time of the first append to this segment (for `segment.ms`).
    pub first_append_ms: Option<i64>,
    /// When the segment was last written, for retention of segments without timestamps.
    pub last_modified_ms: i64,
    /// The sparse indexes; `None` for a sealed segment until a read needs them.
    pub index: Option<SegmentIndex>,
    pub state: SegmentState,
    /// The producer-state snapshot as of `base_offset`, taken when the segment was rolled
    /// and written as `<base_offset>.snapshot` when the segment before it is sealed.
    pub start_producers: Option<Vec<u8>>,
}

impl Segment {
    /// A new, empty active segment whose file does not exist yet.
    pub fn new_active(base_offset: i64, now_ms: i64) -> Segment {
        Segment {
            base_offset,
            size_bytes: 0,
            written_bytes: 0,
            synced_bytes: 0,
            allocated_bytes: 0,
            next_offset: base_offset,
            max_timestamp: (-1, -1),
            first_append_ms: None,
            last_modified_ms: now_ms,
            index: Some(SegmentIndex::new()),
            state: SegmentState::Closed,
            start_producers: None,
        }
    }

    /// A sealed segment of `size_bytes` holding `[base_offset, next_offset)`.
    pub fn sealed(
        base_offset: i64,
        size_bytes: u64,
        next_offset: i64,
        modified_ms: i64,
    ) -> Segment {
        Segment {
            size_bytes,
            written_bytes: size_bytes,
            synced_bytes: size_bytes,
            allocated_bytes: size_bytes,
            next_offset,
            index: None,
            state: SegmentState::Sealed,
            ..Segment::new_active(base_offset, modified_ms)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.size_bytes == 0
    }

    /// The bytes a reader may read: everything of a sealed segment, what is written of
    /// the others.
    pub fn readable_bytes(&self) -> u64 {
        if self.state == SegmentState::Sealed {
            self.size_bytes
        } else {
            self.written_bytes
        }
    }

    /// The timestamp retention compares with `retention.ms`.
    pub fn largest_timestamp_ms(&self) -> i64 {
        if self.max_timestamp.0 >= 0 {
            self.max_timestamp.0
        } else {
            self.last_modified_ms
        }
    }

    pub fn log_path(&self, dir: &Path) -> PathBuf {
        segment_path(dir, self.base_offset, LOG_SUFFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafka() {
        let path = segment_path(Path::new("d"), 1234, LOG_SUFFIX);
        assert_eq!(path, Path::new("d/00000000000000001234.log"));
        assert_eq!(
            parse_segment_name("00000000000000001234.log", LOG_SUFFIX),
            Some(1234)
        );
        assert_eq!(
            parse_segment_name("00000000000000001234.index", LOG_SUFFIX),
            None
        );
        assert_eq!(parse_segment_name("1234.log", LOG_SUFFIX), None);
        assert_eq!(
            parse_segment_name("0000000000000000123x.log", LOG_SUFFIX),
            None
        );
    }
}
