//! Producer-state snapshots (`<offset>.snapshot`): written when a segment is sealed (the
//! state as of the next segment's base) and on a clean close (as of the log end); read on
//! open so that recovery replays only the active segment. Format in docs/engine.md.

use std::io;
use std::path::{Path, PathBuf};

use crate::producer::{ProducerStates, MAX_SNAPSHOT_BYTES, SNAPSHOT_SUFFIX};
use crate::storage::{replace_file, Storage};

use super::segment::segment_path;
use super::Inner;

pub(super) fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    segment_path(dir, offset, SNAPSHOT_SUFFIX)
}

/// Writes `<offset>.snapshot` (synced, directory too) and removes the snapshots that are
/// neither at a segment's base nor the newest. One per segment stays, as in Kafka, so that
/// recovery finds one at the base of whichever segment ends up last (after a truncation
/// cut back into an older segment, say); retention removes them with their segments.
pub(super) async fn write_snapshot<S: Storage>(
    inner: &Inner<S>,
    offset: i64,
    bytes: Vec<u8>,
) -> io::Result<()> {
    replace_file(
        &inner.storage,
        &snapshot_path(&inner.dir, offset),
        bytes,
        true,
    )
    .await?;
    let stale: Vec<i64> = {
        let mut st = inner.state.borrow_mut();
        if let Err(at) = st.snapshots.binary_search(&offset) {
            st.snapshots.insert(at, offset);
        }
        let newest = st.snapshots.last().copied();
        let bases: Vec<i64> = st.segments.iter().map(|s| s.base_offset).collect();
        let (keep, stale) = st
            .snapshots
            .iter()
            .partition(|&&o| Some(o) == newest || bases.binary_search(&o).is_ok());
        st.snapshots = keep;
        stale
    };
    for old in stale {
        inner
            .storage
            .remove_file(&snapshot_path(&inner.dir, old))
            .await?;
    }
    Ok(())
}

/// Removes snapshots below `offset` (the first segment's base, after retention).
pub(super) async fn remove_snapshots_before<S: Storage>(
    inner: &Inner<S>,
    offset: i64,
) -> io::Result<()> {
    let stale: Vec<i64> = {
        let mut st = inner.state.borrow_mut();
        let first_kept = st.snapshots.partition_point(|&o| o < offset);
        st.snapshots.drain(..first_kept).collect()
    };
    for old in stale {
        inner
            .storage
            .remove_file(&snapshot_path(&inner.dir, old))
            .await?;
    }
    Ok(())
}

/// Removes snapshots of offsets past `end_offset` (after the log was cut there).
pub(super) async fn remove_snapshots_after<S: Storage>(
    inner: &Inner<S>,
    end_offset: i64,
) -> io::Result<()> {
    let stale: Vec<i64> = {
        let mut st = inner.state.borrow_mut();
        let keep = st.snapshots.partition_point(|&o| o <= end_offset);
        st.snapshots.split_off(keep)
    };
    for old in &stale {
        inner
            .storage
            .remove_file(&snapshot_path(&inner.dir, *old))
            .await?;
    }
    // Durably: once the log grows past them again, a stale one must not come back.
    if !stale.is_empty() {
        inner.storage.sync_dir(&inner.dir).await?;
    }
    Ok(())
}

/// The snapshot `<offset>.snapshot` if it is listed and intact.
pub(super) async fn load_snapshot<S: Storage>(
    storage: &S,
    dir: &Path,
    snapshots: &[i64],
    offset: i64,
) -> Option<ProducerStates> {
    if snapshots.binary_search(&offset).is_err() {
        return None;
    }
    let bytes = storage
        .read_file(&snapshot_path(dir, offset), MAX_SNAPSHOT_BYTES)
        .await
        .ok()
        .flatten()?;
    let decoded = ProducerStates::decode(&bytes);
    if decoded.is_none() {
        tracing::warn!(dir = %dir.display(), offset, "ignoring a damaged producer snapshot");
    }
    decoded
}

/// Rebuilds the idempotent producers' state (KIP-98) on open: the snapshot at the log end
/// when the active segment was not scanned (clean shutdown); else the newest intact snapshot
/// from the active segment's base on (one is written when a segment is sealed, when the log
/// is truncated, and on a clean close) with the scanned batches after it replayed over it.
/// Snapshots past the log end (data cut by recovery) are removed. Without any, the state
/// holds the active segment's producers only, as Kafka does on upgrade with its last
/// segments.
#[allow(clippy::too_many_arguments)]
pub(super) async fn recover_producers<S: Storage>(
    storage: &S,
    dir: &Path,
    snapshots: &mut Vec<i64>,
    active_base: i64,
    next_offset: i64,
    clean_producers: Option<ProducerStates>,
    active_producers: Option<(ProducerStates, Vec<(i64, ProducerStates)>)>,
    now: i64,
) -> io::Result<ProducerStates> {
    let keep = snapshots.partition_point(|&o| o <= next_offset);
    let stale = snapshots.split_off(keep);
    for offset in &stale {
        storage.remove_file(&snapshot_path(dir, *offset)).await?;
    }
    // Durably: once the log grows past them again, a stale one must not come back.
    if !stale.is_empty() {
        storage.sync_dir(dir).await?;
    }
    Ok(match (clean_producers, active_producers) {
        (_, Some((all, mut from_snapshots))) => {
            // Newest first: the snapshot with the fewest batches to replay over it.
            from_snapshots.sort_by_key(|(offset, _)| std::cmp::Reverse(*offset));
            for (offset, mut replayed) in from_snapshots {
                if let Some(mut producers) = load_snapshot(storage, dir, snapshots, offset).await {
                    replayed.set_last_timestamps(now);
                    producers.extend_with_later(replayed);
                    return Ok(producers);
                }
            }
            let mut replayed = all;
            // Replayed batches count as seen now: their expiry starts with this open.
            replayed.set_last_timestamps(now);
            let mut producers = load_snapshot(storage, dir, snapshots, active_base)
                .await
                .unwrap_or_default();
            producers.extend_with_later(replayed);
            producers
        }
        (Some(producers), None) => producers,
        // An empty active segment: the state at its base is the state at the log end.
        (None, None) => load_snapshot(storage, dir, snapshots, next_offset)
            .await
            .unwrap_or_default(),
    })
}
