//! Sealing a rolled segment: its writes synced, its file trimmed to its size (dropping
//! preallocated space), its index files and the producer snapshot as of the next segment
//! written, and only then the segment listed in the sealed-segments file, which is what
//! lets a later open trust it without reading it.

use std::io;
use std::rc::Rc;

use crate::index::SegmentIndex;
use crate::storage::{replace_file, SegmentFile, Storage};

use super::manifest::{self, SEALED_SEGMENTS_FILE};
use super::segment::{segment_path, SegmentState, INDEX_SUFFIX, TIME_INDEX_SUFFIX};
use super::state::FailureKind;
use super::{snapshot, Inner};

/// Errors come with what kind of failure they are: a failed `fdatasync` means nothing since
/// the last good one can be vouched for.
pub(super) async fn seal<S: Storage>(
    inner: &Rc<Inner<S>>,
    base_offset: i64,
) -> Result<(), (FailureKind, io::Error)> {
    let other = |e: io::Error| {
        let kind = if crate::storage::is_no_space(&e) {
            FailureKind::NoSpace
        } else {
            FailureKind::Write
        };
        (kind, e)
    };
    let (size, offsets, times) = {
        let mut st = inner.state.borrow_mut();
        let seg = st
            .segment_mut(base_offset)
            .expect("segments change only under the io lock");
        let (max_ts, max_offset) = seg.max_timestamp;
        let index = seg.index.get_or_insert_with(SegmentIndex::new);
        index.maybe_append_time(max_ts, (max_offset - base_offset).max(0) as u32);
        (seg.size_bytes, index.encode_offsets(), index.encode_times())
    };
    let file = inner.files.borrow().writable(base_offset);
    if let Some(file) = &file {
        // Trimmed, then synced: the fdatasync covers the size too. A trim that could be
        // lost in a crash would bring back what lies past the segment's end (preallocated
        // zeroes, or what a failed write left behind, which may hold a whole batch with
        // the offsets the next segment gave out again).
        file.truncate(size).await.map_err(other)?;
        inner.sync_file(file).await?;
    }
    let dir = &inner.dir;
    replace_file(
        &inner.storage,
        &segment_path(dir, base_offset, INDEX_SUFFIX),
        offsets,
        false,
    )
    .await
    .map_err(other)?;
    replace_file(
        &inner.storage,
        &segment_path(dir, base_offset, TIME_INDEX_SUFFIX),
        times,
        false,
    )
    .await
    .map_err(other)?;
    // The producer state as of the next segment's base, so recovery replays only the
    // active segment (Kafka writes its `.snapshot` when a segment rolls too).
    let snapshot = {
        let mut st = inner.state.borrow_mut();
        st.segment_index(base_offset)
            .and_then(|idx| st.segments.get_mut(idx + 1))
            .and_then(|next| Some((next.base_offset, next.start_producers.take()?)))
    };
    if let Some((offset, bytes)) = snapshot {
        snapshot::write_snapshot(inner, offset, bytes)
            .await
            .map_err(other)?;
    }
    let listed = {
        let mut st = inner.state.borrow_mut();
        let now = inner.storage.now_ms();
        if let Some(seg) = st.segment_mut(base_offset) {
            seg.state = SegmentState::Sealed;
            seg.synced_bytes = seg.size_bytes;
            seg.written_bytes = seg.size_bytes;
            seg.allocated_bytes = seg.size_bytes;
            seg.last_modified_ms = now;
        }
        manifest::encode(&st.sealed_segments())
    };
    write_manifest(inner, listed).await.map_err(other)?;
    inner.files.borrow_mut().take_writable(base_offset);
    Ok(())
}

/// Replaces the sealed-segments file (synced, directory too).
pub(super) async fn write_manifest<S: Storage>(inner: &Inner<S>, bytes: Vec<u8>) -> io::Result<()> {
    replace_file(
        &inner.storage,
        &inner.dir.join(SEALED_SEGMENTS_FILE),
        bytes,
        true,
    )
    .await
}
