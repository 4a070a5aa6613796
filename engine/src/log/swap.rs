//! Swapping a cleaned segment in for the group it replaces, so that a crash at any point
//! leaves a log that opens whole (Kafka's `replaceSegments` and its recovery of `.swap`
//! files), and no reader ever sees a half-cleaned log.
//!
//! Under the log's I/O lock (no seal, retention, truncation or recovery meanwhile), once
//! the group is found unchanged:
//! 1. the sealed-segments file stops vouching for the group's segments: a crash from here
//!    on makes the next open validate them batch by batch, never trust a size that now
//!    belongs to another file;
//! 2. `<base>.index.cleaned` and `.timeindex.cleaned` are renamed to `.swap`, then
//!    `<base>.log.cleaned` to `<base>.log.swap`, and the directory is synced: the commit
//!    point. Before it, the next open removes the `.cleaned` files (and index `.swap`
//!    files without a log `.swap`); after it, the next open finishes the swap;
//! 3. the log's state takes the new segment (reads of the group start over; the batch
//!    cache forgets the range; reads of the new segment use a handle on the `.swap` file
//!    until it has its final name);
//! 4. the group's other segments are removed, the `.swap` files renamed over the first
//!    segment's files, the directory synced;
//! 5. the sealed-segments file lists the new segment.
//!
//! Finishing a swap on open: the `.swap` log is read through (every batch validated) to
//! find where it ends; every segment starting after its base and before that end is one it
//! replaces and is removed; its index files take their names (an index file without a
//! `.swap` is removed, to be rebuilt: it may be the old segment's); the log takes its name.
//! Each step can be done again, so a crash while finishing is finished by the next open.

use std::collections::HashSet;
use std::path::Path;
use std::rc::Rc;

use crate::compaction::output::CleanedSegment;
use crate::compaction::plan::SegmentView;
use crate::error::EngineError;
use crate::storage::{OpenMode, Storage};

use super::clean::{suffixed, CLEANED_SUFFIX};
use super::manifest;
use super::scan::{scan_segment, ScanLimits, ScanStart};
use super::seal::write_manifest;
use super::segment::{
    parse_segment_name, segment_path, Segment, SegmentState, INDEX_SUFFIX, LOG_SUFFIX,
    TIME_INDEX_SUFFIX,
};
use super::state::{FailureKind, Health};
use super::{failure, Inner};

/// Suffix of a cleaned segment's files once the swap has committed.
pub(crate) const SWAP_SUFFIX: &str = ".swap";

impl<S: Storage> Inner<S> {
    /// Swaps `segment` (written and synced as `.cleaned` files) in for `group`; false
    /// (and the `.cleaned` files removed) when the group is not what it was.
    pub(super) async fn swap_in(
        self: &Rc<Self>,
        group: &[SegmentView],
        segment: CleanedSegment,
        producer_batches: &HashSet<(i64, i64)>,
    ) -> Result<bool, EngineError> {
        let base = segment.base_offset;
        let end = segment.next_offset;
        let Ok(_io) = self.io_lock.acquire().await else {
            self.remove_cleaned(base).await;
            return Err(self.closed_error());
        };
        let listed = {
            let st = self.state.borrow();
            let first = st.segment_index(base);
            let same = !st.closed
                && st.health == Health::Healthy
                && first.is_some_and(|k| {
                    group.iter().enumerate().all(|(i, view)| {
                        st.segments.get(k + i).is_some_and(|s| {
                            s.base_offset == view.base_offset
                                && s.next_offset == view.next_offset
                                && s.size_bytes == view.size_bytes
                                && s.state == SegmentState::Sealed
                        })
                    })
                })
                // Every batch the producers remember in the range was kept.
                && st.producers.iter().all(|(pid, entry)| {
                    entry.batches.iter().all(|b| {
                        b.last_offset < base
                            || b.last_offset >= end
                            || producer_batches.contains(&(*pid, b.last_offset))
                    })
                });
            if !same {
                None
            } else {
                let members: Vec<i64> = group.iter().map(|v| v.base_offset).collect();
                Some(
                    st.sealed_segments()
                        .into_iter()
                        .filter(|s| !members.contains(&s.base_offset))
                        .collect::<Vec<_>>(),
                )
            }
        };
        let Some(listed) = listed else {
            tracing::debug!(dir = %self.dir.display(), base, "the log changed under the cleaner; the group is left for a later round");
            self.remove_cleaned(base).await;
            return Ok(false);
        };
        let dir = &self.dir;
        let [cleaned_log, cleaned_index, cleaned_time] = suffixed(dir, base, CLEANED_SUFFIX);
        let [swap_log, swap_index, swap_time] = suffixed(dir, base, SWAP_SUFFIX);
        // 1. and 2.: up to the commit, a failure leaves the old segments as they are.
        let before_commit = async {
            write_manifest(self, manifest::encode(&listed)).await?;
            self.storage.rename(&cleaned_index, &swap_index).await?;
            self.storage.rename(&cleaned_time, &swap_time).await
        }
        .await;
        if let Err(err) = before_commit {
            self.remove_cleaned(base).await;
            for path in [&swap_index, &swap_time] {
                let _ = self.storage.remove_file(path).await;
            }
            return Err(EngineError::io("cannot swap in a cleaned segment", err));
        }
        let committed = async {
            self.storage.rename(&cleaned_log, &swap_log).await?;
            self.storage.sync_dir(dir).await?;
            self.storage.open_segment(&swap_log, OpenMode::Read).await
        }
        .await;
        let handle = match committed {
            Ok(handle) => Rc::new(handle),
            Err(err) => return Err(self.fail_swap(err)),
        };
        // 3. The log serves the new segment from here on.
        {
            let mut st = self.state.borrow_mut();
            let k = st
                .segment_index(base)
                .expect("segments change only under the io lock");
            let modified = st.segments[k + group.len() - 1].last_modified_ms;
            let mut seg = Segment::sealed(base, segment.size_bytes, end, modified);
            seg.max_timestamp = segment.max_timestamp;
            seg.index = Some(segment.index);
            st.segments.splice(k..k + group.len(), [seg]);
            st.recompute_max_timestamp();
            st.generation += 1;
            self.cache.drop_before(&self.cached, end);
            let mut files = self.files.borrow_mut();
            files.read = None;
            // A sealed segment may still have its write handle (a seal whose
            // sealed-segments write failed keeps it): it is the old file.
            for view in group {
                files.take_writable(view.base_offset);
            }
            files.pinned = Some((base, handle));
        }
        // 4. The old files go; the new ones take their names.
        let renamed = async {
            for view in group[1..].iter().rev() {
                for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
                    self.storage
                        .remove_file(&segment_path(dir, view.base_offset, suffix))
                        .await?;
                }
            }
            self.storage
                .rename(&swap_index, &segment_path(dir, base, INDEX_SUFFIX))
                .await?;
            self.storage
                .rename(&swap_time, &segment_path(dir, base, TIME_INDEX_SUFFIX))
                .await?;
            self.storage
                .rename(&swap_log, &segment_path(dir, base, LOG_SUFFIX))
                .await?;
            self.storage.sync_dir(dir).await
        }
        .await;
        if let Err(err) = renamed {
            return Err(self.fail_swap(err));
        }
        self.files.borrow_mut().pinned = None;
        // 5. Vouched for again (best effort: without it the segment is validated on open).
        let listed = manifest::encode(&self.state.borrow().sealed_segments());
        if let Err(err) = write_manifest(self, listed).await {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot record the sealed segments");
        }
        Ok(true)
    }

    /// A failure after the swap committed: the files are part way, so the log is reloaded
    /// from disk, which finishes the swap.
    fn fail_swap(self: &Rc<Self>, err: std::io::Error) -> EngineError {
        let reason = format!("swapping in a cleaned segment failed: {err}");
        failure::on_failure(self, FailureKind::Structural, reason.clone());
        self.storage_error(reason)
    }
}

/// Finishes or discards a cleaning that a crash interrupted (see the module doc); run by
/// open before it lists the segments.
pub(super) async fn finish_interrupted_cleaning<S: Storage>(
    storage: &S,
    dir: &Path,
) -> Result<(), EngineError> {
    let io = |context: &'static str| move |e: std::io::Error| EngineError::io(context, e);
    let entries = storage
        .list_dir(dir)
        .map_err(io("cannot list the log directory"))?;
    let names: HashSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let swap_log = format!("{LOG_SUFFIX}{SWAP_SUFFIX}");
    let mut swaps: Vec<(i64, u64)> = entries
        .iter()
        .filter_map(|e| Some((parse_segment_name(&e.name, &swap_log)?, e.size_bytes)))
        .collect();
    swaps.sort_unstable();
    let mut changed = false;
    for entry in &entries {
        let unfinished_index = [INDEX_SUFFIX, TIME_INDEX_SUFFIX].iter().any(|kind| {
            parse_segment_name(&entry.name, &format!("{kind}{SWAP_SUFFIX}"))
                .is_some_and(|b| !swaps.iter().any(|(s, _)| *s == b))
        });
        if entry.name.ends_with(CLEANED_SUFFIX) || unfinished_index {
            storage
                .remove_file(&dir.join(&entry.name))
                .await
                .map_err(io("cannot remove an unfinished cleaning"))?;
            changed = true;
        }
    }
    for &(base, size) in &swaps {
        let path = segment_path(dir, base, &swap_log);
        let file = storage
            .open_segment(&path, OpenMode::Read)
            .await
            .map_err(io("cannot open a swapped segment"))?;
        let scan = scan_segment(
            &file,
            base,
            ScanStart::segment_start(base),
            ScanLimits {
                end_bytes: size,
                stop_at_offset: None,
                index_interval_bytes: 4096,
            },
        )
        .await
        .map_err(io("cannot read a swapped segment"))?;
        drop(file);
        let end = scan.next_offset;
        tracing::info!(dir = %dir.display(), base, end, "finishing the swap of a cleaned segment interrupted by a stop");
        for entry in &entries {
            let replaced = [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX]
                .iter()
                .filter_map(|kind| parse_segment_name(&entry.name, kind))
                .any(|b| b > base && b < end);
            if replaced {
                storage
                    .remove_file(&dir.join(&entry.name))
                    .await
                    .map_err(io("cannot remove a replaced segment"))?;
            }
        }
        for kind in [INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            let final_path = segment_path(dir, base, kind);
            let swapped = format!("{}{SWAP_SUFFIX}", segment_name(base, kind));
            if names.contains(swapped.as_str()) {
                storage
                    .rename(&dir.join(&swapped), &final_path)
                    .await
                    .map_err(io("cannot rename a swapped index"))?;
            } else {
                storage
                    .remove_file(&final_path)
                    .await
                    .map_err(io("cannot remove a replaced index"))?;
            }
        }
        storage
            .rename(&path, &segment_path(dir, base, LOG_SUFFIX))
            .await
            .map_err(io("cannot rename a swapped segment"))?;
        changed = true;
    }
    if changed {
        storage
            .sync_dir(dir)
            .await
            .map_err(io("cannot sync the log directory"))?;
    }
    Ok(())
}

fn segment_name(base: i64, suffix: &str) -> String {
    format!("{base:020}{suffix}")
}
