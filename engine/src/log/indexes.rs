//! Index files of sealed segments: loaded when a read first needs them, rebuilt from the
//! log (and rewritten) when missing or damaged.

use std::io;
use std::path::Path;

use crate::error::EngineError;
use crate::index::SegmentIndex;
use crate::storage::{replace_file, OpenMode, Storage};

use super::scan::{scan_segment, ScanLimits, ScanOutcome, ScanStart};
use super::segment::{segment_path, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use super::{Inner, MAX_INDEX_FILE_BYTES};

/// Reads a sealed segment's index files, or rebuilds them from the log when they are
/// missing or damaged (and rewrites them, best effort). Also returns the scan when one
/// was needed.
pub(super) async fn load_or_rebuild_index<S: Storage>(
    storage: &S,
    dir: &Path,
    base: i64,
    size: u64,
    next_offset: i64,
    interval: u32,
) -> io::Result<(SegmentIndex, Option<ScanOutcome>)> {
    let index_path = segment_path(dir, base, INDEX_SUFFIX);
    let time_path = segment_path(dir, base, TIME_INDEX_SUFFIX);
    let offsets = storage
        .read_file(&index_path, MAX_INDEX_FILE_BYTES)
        .await
        .ok()
        .flatten();
    let times = storage
        .read_file(&time_path, MAX_INDEX_FILE_BYTES)
        .await
        .ok()
        .flatten();
    let relative_end = (next_offset - base).max(0) as u64;
    if let (Some(offsets), Some(times)) = (&offsets, &times) {
        if let Some(index) = SegmentIndex::decode(offsets, times, size, relative_end) {
            return Ok((index, None));
        }
    }
    tracing::info!(dir = %dir.display(), base, "rebuilding segment index from the log");
    let file = storage
        .open_segment(&segment_path(dir, base, LOG_SUFFIX), OpenMode::Read)
        .await?;
    let scan = scan_segment(
        &file,
        base,
        ScanStart::segment_start(base),
        ScanLimits {
            end_bytes: size,
            stop_at_offset: None,
            index_interval_bytes: interval,
        },
    )
    .await?;
    let mut index = scan.index.clone();
    let (max_ts, max_offset) = scan.max_timestamp;
    index.maybe_append_time(max_ts, (max_offset - base).max(0) as u32);
    if scan.valid_bytes == size {
        // Best effort: a failure here only means another rebuild next time.
        let _ = replace_file(storage, &index_path, index.encode_offsets(), false).await;
        let _ = replace_file(storage, &time_path, index.encode_times(), false).await;
    }
    Ok((index, Some(scan)))
}

impl<S: Storage> Inner<S> {
    /// Loads (or rebuilds from the log) the indexes of a sealed segment.
    pub(super) async fn load_index(&self, base_offset: i64) -> Result<(), EngineError> {
        let (size, next_offset, interval) = {
            let st = self.state.borrow();
            let Some(seg) = st.segment(base_offset) else {
                return Ok(());
            };
            if seg.index.is_some() {
                return Ok(());
            }
            (
                seg.size_bytes,
                seg.next_offset,
                st.config.index_interval_bytes,
            )
        };
        let (index, _) = load_or_rebuild_index(
            &self.storage,
            &self.dir,
            base_offset,
            size,
            next_offset,
            interval,
        )
        .await
        .map_err(|e| EngineError::io("cannot load a segment index", e))?;
        let mut st = self.state.borrow_mut();
        if let Some(seg) = st.segment_mut(base_offset) {
            seg.index.get_or_insert(index);
        }
        Ok(())
    }
}
