//! Opening a log: list its directory, trust what has proof of a clean close, validate the
//! rest batch by batch, and rebuild the state.
//!
//! - A sealed segment listed in the sealed-segments file with its size is trusted as it is
//!   (its end offset and largest timestamp come from that file). Any other segment but the
//!   last is validated from its start: when its batches run to the next segment's base
//!   offset (trailing preallocated zeroes are trimmed) it is sealed and listed; when they
//!   stop short, the damage is reported and the log start moves past it (see
//!   [`super::damage`]).
//! - The last segment is trusted after a clean close (the `wharf-clean-shutdown` marker
//!   with its size and end offset); otherwise it is validated and cut at the first byte
//!   that fails (a torn write, preallocated zeroes, damage), which is reported when it
//!   held data.
//! - Segments whose offsets do not follow each other (a missing segment, an overlap) are
//!   a gap: reported, and the log start moves past it.
//!
//! Opening writes nothing it cannot do without (a broker on a full disk starts and serves
//! reads): only the cut of a torn tail (which frees space) and the removal of markers;
//! the sealed-segments file and the log start are rewritten best effort. Segment data it
//! finds without proof of a clean close is synced before the log counts it as durable
//! (and before a segment is listed as sealed); an open whose `fdatasync` fails fails.

use std::path::Path;
use std::rc::Rc;

use crate::config::LogConfig;
use crate::epoch::{LeaderEpochCache, CHECKPOINT_FILE};
use crate::error::EngineError;
use crate::producer::{ProducerStates, SNAPSHOT_SUFFIX};
use crate::storage::{replace_file, OpenMode, SegmentFile, Storage, TMP_SUFFIX};
use wharf_protocol::batch::BatchHeader;

use super::damage::{DamageKind, DamageReport};
use super::indexes::load_or_rebuild_index;
use super::manifest::{self, SealedSegment, SEALED_SEGMENTS_FILE};
use super::recovery;
use super::scan::{scan_segment, ScanLimits, ScanOutcome, ScanStart};
use super::segment::{
    parse_segment_name, Segment, SegmentState, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX,
};
use super::snapshot::{load_snapshot, recover_producers};
use super::state::LogState;
use super::{Files, CLEAN_SHUTDOWN_FILE, LOG_START_FILE, SMALL_FILE_MAX_BYTES};

/// Bytes read past a cut to tell lost data from preallocated zeroes, at most.
const CUT_INSPECT_BYTES: usize = 1 << 20;

/// Builds the in-memory state of the log in `dir`, recovering it.
pub(super) async fn open_state<S: Storage>(
    storage: &S,
    dir: &Path,
    config: LogConfig,
) -> Result<(LogState, Files<S::File>), EngineError> {
    let mut reports = Vec::new();
    open_state_reporting(storage, dir, config, &mut reports).await
}

/// [`open_state`], with the damage it finds collected in `reports` as it goes: a cut it
/// made before a later step failed (the fdatasync after it, say) stays known to a log
/// that reloads itself and goes on with its old state.
pub(super) async fn open_state_reporting<S: Storage>(
    storage: &S,
    dir: &Path,
    config: LogConfig,
    reports: &mut Vec<DamageReport>,
) -> Result<(LogState, Files<S::File>), EngineError> {
    let io = |context: &str| {
        let context = format!("{context} in {}", dir.display());
        move |e: std::io::Error| EngineError::io(context, e)
    };
    storage
        .create_dir_all(dir)
        .await
        .map_err(io("cannot create the log directory"))?;
    super::swap::finish_interrupted_cleaning(storage, dir).await?;
    let entries = storage
        .list_dir(dir)
        .map_err(io("cannot list the log directory"))?;
    let mut logs: Vec<(i64, u64, i64)> = Vec::new();
    let mut snapshots: Vec<i64> = entries
        .iter()
        .filter_map(|e| parse_segment_name(&e.name, SNAPSHOT_SUFFIX))
        .collect();
    snapshots.sort_unstable();
    for entry in &entries {
        if entry.name.ends_with(TMP_SUFFIX) {
            storage
                .remove_file(&dir.join(&entry.name))
                .await
                .map_err(io("cannot remove a leftover file"))?;
        } else if let Some(base) = parse_segment_name(&entry.name, LOG_SUFFIX) {
            logs.push((base, entry.size_bytes, entry.modified_ms));
        }
    }
    logs.sort_unstable();
    // Index files without a log belong to a segment whose deletion was interrupted.
    for entry in &entries {
        let base = parse_segment_name(&entry.name, INDEX_SUFFIX)
            .or_else(|| parse_segment_name(&entry.name, TIME_INDEX_SUFFIX));
        if base.is_some_and(|b| logs.binary_search_by_key(&b, |l| l.0).is_err()) {
            storage
                .remove_file(&dir.join(&entry.name))
                .await
                .map_err(io("cannot remove a stray index"))?;
        }
    }
    // Only files the listing showed are read: an open of a missing file costs as much.
    let read_small = |name: &'static str| {
        let path = dir.join(name);
        let listed = entries.iter().any(|e| e.name == name);
        async move {
            if !listed {
                return None;
            }
            storage
                .read_file(&path, SMALL_FILE_MAX_BYTES)
                .await
                .ok()
                .flatten()
        }
    };
    let text = |bytes: Option<Vec<u8>>| bytes.and_then(|b| String::from_utf8(b).ok());
    let persisted_log_start: Option<i64> = text(read_small(LOG_START_FILE).await)
        .and_then(|t| t.trim().parse().ok())
        .filter(|o: &i64| *o >= 0);
    let checkpoint =
        text(read_small(CHECKPOINT_FILE).await).and_then(|t| LeaderEpochCache::decode(&t));
    let high_watermark_checkpoint = read_small(super::HIGH_WATERMARK_FILE)
        .await
        .and_then(|b| super::high_watermark::decode(&b));
    let marker: Option<(i64, u64, i64)> =
        text(read_small(CLEAN_SHUTDOWN_FILE).await).and_then(|t| {
            let mut fields = t.split_whitespace().map(|f| f.parse::<i64>().ok());
            Some((
                fields.next()??,
                u64::try_from(fields.next()??).ok()?,
                fields.next()??,
            ))
        });
    let proofs: Vec<SealedSegment> = read_small(SEALED_SEGMENTS_FILE)
        .await
        .and_then(|bytes| {
            let decoded = manifest::decode(&bytes);
            if decoded.is_none() {
                tracing::warn!(dir = %dir.display(), "the sealed-segments file is damaged; every segment will be validated");
            }
            decoded
        })
        .unwrap_or_default();
    let rebuild_epochs = checkpoint.is_none();
    // A new epoch reaches the checkpoint (synced) before any batch carrying it is written,
    // so every batch of a segment validated here must carry the epoch the checkpoint
    // gives its offsets: one that does not is damage (the epoch is outside the CRC) or
    // a batch the log had cut. Without a checkpoint the walk has its own rule.
    let known_epochs: Vec<(i32, i64)> = checkpoint
        .as_ref()
        .map(|c| c.entries().to_vec())
        .unwrap_or_default();
    // Epochs read back from batches count only from the recorded log start: a batch below
    // it may be damaged (that may be why the log start moved), and its epoch (outside the
    // CRC) must not outrank the real ones.
    let epoch_floor = persisted_log_start.unwrap_or(0);
    let mut epochs = checkpoint.clone().unwrap_or_default();
    let interval = config.index_interval_bytes;
    let now = storage.now_ms();
    let mut segments: Vec<Segment> = Vec::with_capacity(logs.len().max(1));
    let mut files: Files<S::File> = Files::default();
    let mut tail = None;
    // Why a segment's batches stopped short, for the gap that follows it.
    let mut stopped_short: Vec<Option<(u64, String)>> = Vec::new();
    let mut manifest_dirty = false;
    // Idempotent producers' batches in the active segment, when it was scanned.
    let mut active_producers: Option<(ProducerStates, Vec<(i64, ProducerStates)>)> = None;
    // The producer state at the log end after a clean close.
    let mut clean_producers: Option<ProducerStates> = None;
    let limits = |end_bytes| ScanLimits {
        end_bytes,
        stop_at_offset: None,
        index_interval_bytes: interval,
    };

    for (i, &(base, size, modified_ms)) in
        logs.iter().enumerate().take(logs.len().saturating_sub(1))
    {
        let next_base = logs[i + 1].0;
        let proof = proofs
            .iter()
            .find(|p| p.base_offset == base && p.size_bytes == size);
        if let Some(proof) = proof {
            let seg = load_proven(
                storage,
                dir,
                proof,
                modified_ms,
                rebuild_epochs.then_some(epoch_floor),
                &mut epochs,
                interval,
            )
            .await?;
            segments.push(seg);
            stopped_short.push(None);
            continue;
        }
        // No proof of a clean close: every batch is validated.
        let file = storage
            .open_segment(&segments_path(dir, base), OpenMode::Read)
            .await
            .map_err(io("cannot open a segment"))?;
        // Its batches end where the next segment starts: bytes after that (a write that
        // failed part way, before the segment was sealed) are not part of it.
        let bounded = ScanLimits {
            stop_at_offset: Some(next_base),
            ..limits(size)
        };
        let start = ScanStart {
            epochs: known_epochs.clone(),
            epochs_from: epoch_floor,
            ..ScanStart::segment_start(base)
        };
        let scan = scan_segment(&file, base, start, bounded)
            .await
            .map_err(io("cannot validate a segment"))?;
        drop(file);
        let complete = scan.next_offset == next_base;
        let mut seg = Segment::sealed(base, scan.valid_bytes, scan.next_offset, modified_ms);
        seg.max_timestamp = scan.max_timestamp;
        let mut index = scan.index;
        let (max_ts, max_offset) = scan.max_timestamp;
        index.maybe_append_time(max_ts, (max_offset - base).max(0) as u32);
        seg.index = Some(index);
        assign_scanned_epochs(&mut epochs, &scan.epochs, scan.next_offset, epoch_floor);
        if complete {
            // Rolled before the broker stopped, but not yet listed (or listed with
            // preallocated space not trimmed yet): trimmed, synced (a seal lost in a crash
            // may not have synced it; the listing is the proof that it was), then listed.
            seal_found(storage, dir, base, scan.valid_bytes, size)
                .await
                .map_err(io("cannot seal a segment found unsealed"))?;
            manifest_dirty = true;
            stopped_short.push(None);
        } else {
            // Stopped by a bad batch: damage. Ran to its end: the next segment does not
            // follow it (a gap, reported as such below).
            stopped_short.push(scan.stopped.map(|reason| (scan.valid_bytes, reason)));
        }
        segments.push(seg);
    }

    match logs.last() {
        None => {
            let base = persisted_log_start.unwrap_or(0);
            segments.push(Segment::new_active(base, now));
            stopped_short.push(None);
            tail = Some(Vec::new());
        }
        Some(&(base, size, modified_ms))
            if proofs
                .iter()
                .any(|p| p.base_offset == base && p.size_bytes == size) =>
        {
            // Sealed, and the broker stopped before the next segment's file was durable:
            // the log goes on in a new segment at its end.
            let proof = proofs
                .iter()
                .find(|p| p.base_offset == base && p.size_bytes == size)
                .expect("just found");
            let seg = load_proven(
                storage,
                dir,
                proof,
                modified_ms,
                rebuild_epochs.then_some(epoch_floor),
                &mut epochs,
                interval,
            )
            .await?;
            let next = seg.next_offset;
            segments.push(seg);
            stopped_short.push(None);
            segments.push(Segment::new_active(next, now));
            stopped_short.push(None);
            tail = Some(Vec::new());
        }
        Some(&(base, size, modified_ms)) => {
            let mut seg = Segment::new_active(base, modified_ms);
            let trusted = match marker {
                Some((m_base, m_size, m_next))
                    if m_base == base && m_size == size && m_next >= base =>
                {
                    load_or_rebuild_index(storage, dir, base, size, m_next, interval)
                        .await
                        .ok()
                        .map(|(index, scan)| (index, scan, m_next))
                }
                _ => None,
            };
            match trusted {
                Some((index, None, next_offset)) => {
                    // Clean shutdown: the marker vouches for size and end offset, the index
                    // files for the rest. The file is opened on the first write.
                    seg.size_bytes = size;
                    seg.written_bytes = size;
                    seg.synced_bytes = size;
                    seg.allocated_bytes = size;
                    seg.next_offset = next_offset;
                    if let Some(entry) = index.last_time_entry() {
                        seg.max_timestamp =
                            (entry.timestamp_ms, base + i64::from(entry.relative_offset));
                    }
                    seg.index = Some(index);
                    // The snapshot written at close is the state; without a readable one the
                    // segment is scanned for it like after a crash.
                    clean_producers = load_snapshot(storage, dir, &snapshots, next_offset).await;
                    if (rebuild_epochs || clean_producers.is_none()) && size > 0 {
                        let file = storage
                            .open_segment(&seg.log_path(dir), OpenMode::Read)
                            .await
                            .map_err(io("cannot open a segment"))?;
                        let scan = scan_segment(
                            &file,
                            base,
                            active_start(base, &snapshots, &known_epochs, epoch_floor),
                            limits(size),
                        )
                        .await
                        .map_err(io("cannot scan a segment"))?;
                        if rebuild_epochs {
                            assign_scanned_epochs(
                                &mut epochs,
                                &scan.epochs,
                                scan.next_offset,
                                epoch_floor,
                            );
                        }
                        active_producers = Some((scan.producers, scan.producers_from));
                    }
                }
                _ => {
                    // No proof of a clean close: validate every batch, cut at the first bad byte.
                    let file = storage
                        .open_segment(&seg.log_path(dir), OpenMode::ReadWrite)
                        .await
                        .map_err(io("cannot open the active segment"))?;
                    let scan = scan_segment(
                        &file,
                        base,
                        active_start(base, &snapshots, &known_epochs, epoch_floor),
                        limits(size),
                    )
                    .await
                    .map_err(io("cannot recover the active segment"))?;
                    let cut = scan.valid_bytes < size;
                    if cut {
                        if let Some(report) = inspect_cut(&file, base, &scan, size).await {
                            tracing::error!(dir = %dir.display(), "{}", report.describe());
                            reports.push(report);
                        }
                        file.truncate(scan.valid_bytes)
                            .await
                            .map_err(io("cannot truncate the active segment"))?;
                    }
                    // What was read back may not be durable (the broker stopped without
                    // syncing it, or after a failed fdatasync): it is synced before the log
                    // counts it as durable, so that a producer's retry of a batch found
                    // here is never answered as synced without it (acks=all).
                    if cut || scan.valid_bytes > 0 {
                        file.fdatasync()
                            .await
                            .map_err(io("cannot sync the active segment"))?;
                    }
                    seg.size_bytes = scan.valid_bytes;
                    seg.written_bytes = scan.valid_bytes;
                    seg.synced_bytes = scan.valid_bytes;
                    seg.allocated_bytes = scan.valid_bytes;
                    seg.next_offset = scan.next_offset;
                    seg.max_timestamp = scan.max_timestamp;
                    seg.index = Some(scan.index);
                    // The batches that passed are the truth for the segment's offsets: an
                    // epoch the checkpoint names from its base on may have come with
                    // appends that never became durable.
                    epochs.truncate_from_end(base);
                    assign_scanned_epochs(&mut epochs, &scan.epochs, scan.next_offset, epoch_floor);
                    let sealed_before = proofs.iter().any(|p| {
                        p.base_offset == base
                            && p.size_bytes == scan.valid_bytes
                            && p.next_offset == scan.next_offset
                    });
                    if sealed_before && scan.valid_bytes > 0 {
                        // Sealed and listed, then its trim was lost in a crash, and the next
                        // segment's file with it: it is sealed as listed, and the log goes
                        // on in a new segment at its end.
                        seg.state = SegmentState::Sealed;
                        seg.synced_bytes = seg.size_bytes;
                        let next = seg.next_offset;
                        segments.push(seg);
                        stopped_short.push(None);
                        seg = Segment::new_active(next, now);
                        tail = Some(Vec::new());
                    } else {
                        seg.state = SegmentState::Open;
                        files.writable.push((base, Rc::new(file)));
                        tail = Some(scan.tail);
                        active_producers = Some((scan.producers, scan.producers_from));
                    }
                }
            }
            segments.push(seg);
            stopped_short.push(None);
        }
    }

    let settled = recovery::settle(
        recovery::Found {
            segments,
            stopped_short,
            recorded_log_start: persisted_log_start,
        },
        now,
    );
    if settled.restarted_at_log_start {
        // The cut segment is sealed as it is: no write handle, no producers from it.
        files.writable.clear();
        manifest_dirty = true;
        active_producers = None;
        tail = Some(Vec::new());
    }
    for report in &settled.reports {
        tracing::error!(dir = %dir.display(), "{}", report.describe());
    }
    reports.extend(settled.reports);
    let segments = settled.segments;
    let log_start_offset = settled.log_start_offset;
    let next_offset = segments.last().map_or(0, |s| s.next_offset);
    let mut log_start_unrecorded = false;
    if settled.log_start_moved && persisted_log_start != Some(log_start_offset) {
        // Best effort: a crash finds the same gap on the next open's scan; a clean close
        // writes it (it skips that scan).
        let text = format!("{log_start_offset}\n").into_bytes();
        if let Err(err) = replace_file(storage, &dir.join(LOG_START_FILE), text, true).await {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot record the log start offset");
            log_start_unrecorded = true;
        }
    }
    if marker.is_some() {
        // From here on a crash must lead to a scan.
        storage
            .remove_file(&dir.join(CLEAN_SHUTDOWN_FILE))
            .await
            .map_err(io("cannot remove the clean-shutdown marker"))?;
        storage
            .sync_dir(dir)
            .await
            .map_err(io("cannot sync the log directory"))?;
    }

    let producers = recover_producers(
        storage,
        dir,
        &mut snapshots,
        segments.last().map_or(0, |s| s.base_offset),
        next_offset,
        clean_producers,
        active_producers,
        now,
    )
    .await
    .map_err(io("cannot recover the producer state"))?;
    epochs.truncate_from_end(next_offset);
    epochs.truncate_from_start(log_start_offset);
    let mut state = LogState::new(config, segments);
    state.log_start_offset = log_start_offset;
    state.tail = tail;
    state.epochs_dirty = match &checkpoint {
        Some(loaded) => *loaded != epochs,
        None => !epochs.entries().is_empty(),
    };
    state.epochs = epochs;
    state.producers = producers;
    state.snapshots = snapshots;
    state.reports = std::mem::take(reports);
    state.log_start_unrecorded = log_start_unrecorded;
    state.high_watermark_checkpoint = high_watermark_checkpoint;
    state.recompute_max_timestamp();
    // An entry for a segment that is not sealed as listed (a sealed segment whose trim
    // was lost and is active again, one cut since) must go.
    manifest_dirty |= proofs.iter().any(|p| {
        state.segments.iter().any(|s| {
            s.base_offset == p.base_offset
                && (s.state != SegmentState::Sealed
                    || s.size_bytes != p.size_bytes
                    || s.next_offset != p.next_offset)
        })
    });
    if manifest_dirty {
        // Best effort: without it those segments are validated again next time.
        let bytes = manifest::encode(&state.sealed_segments());
        if let Err(err) = replace_file(storage, &dir.join(SEALED_SEGMENTS_FILE), bytes, true).await
        {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot record the sealed segments");
        }
    }
    Ok((state, files))
}

/// A segment the sealed-segments file vouches for, trusted without reading it (unless the
/// leader-epoch checkpoint is gone and its epochs must be read back).
async fn load_proven<S: Storage>(
    storage: &S,
    dir: &Path,
    proof: &SealedSegment,
    modified_ms: i64,
    rebuild_epochs_from: Option<i64>,
    epochs: &mut LeaderEpochCache,
    interval: u32,
) -> Result<Segment, EngineError> {
    let io = |context: &str| {
        let context = format!("{context} in {}", dir.display());
        move |e: std::io::Error| EngineError::io(context, e)
    };
    let (base, size) = (proof.base_offset, proof.size_bytes);
    let mut seg = Segment::sealed(base, size, proof.next_offset, modified_ms);
    seg.max_timestamp = proof.max_timestamp;
    if let Some(epoch_floor) = rebuild_epochs_from {
        let (index, scan) =
            load_or_rebuild_index(storage, dir, base, size, proof.next_offset, interval)
                .await
                .map_err(io("cannot rebuild a segment index"))?;
        let scan = match scan {
            Some(scan) => scan,
            None => {
                let file = storage
                    .open_segment(&seg.log_path(dir), OpenMode::Read)
                    .await
                    .map_err(io("cannot open a segment"))?;
                let limits = ScanLimits {
                    end_bytes: size,
                    stop_at_offset: None,
                    index_interval_bytes: interval,
                };
                scan_segment(&file, base, ScanStart::segment_start(base), limits)
                    .await
                    .map_err(io("cannot scan a segment"))?
            }
        };
        assign_scanned_epochs(epochs, &scan.epochs, scan.next_offset, epoch_floor);
        seg.index = Some(index);
    }
    Ok(seg)
}

/// Adds the epochs a walk read from batches to the cache, from `floor` (the recorded log
/// start) on: a batch wholly below it may be damaged (that may be why the log start
/// moved), and its epoch (outside the CRC) must not outrank the real ones; an epoch in
/// force at the floor counts from the floor, as the cache keeps it after the log start
/// moved (Kafka's `truncateFromStart`).
fn assign_scanned_epochs(
    epochs: &mut LeaderEpochCache,
    scanned: &[(i32, i64)],
    end_offset: i64,
    floor: i64,
) {
    for (i, &(epoch, start)) in scanned.iter().enumerate() {
        let ends = scanned.get(i + 1).map_or(end_offset, |next| next.1);
        if ends > floor {
            epochs.assign(epoch, start.max(floor));
        }
    }
}

/// The start of a walk over the active segment, replaying producers also from each
/// snapshot inside it (the newest intact one is the state to replay over), checking
/// epochs against `epochs` (the checkpoint's; none without one).
fn active_start(base: i64, snapshots: &[i64], epochs: &[(i32, i64)], floor: i64) -> ScanStart {
    ScanStart {
        replay_from: snapshots.iter().copied().filter(|o| *o > base).collect(),
        epochs: epochs.to_vec(),
        epochs_from: floor,
        ..ScanStart::segment_start(base)
    }
}

fn segments_path(dir: &Path, base: i64) -> std::path::PathBuf {
    super::segment::segment_path(dir, base, LOG_SUFFIX)
}

/// Seals a segment found complete but not listed: trims the preallocated space after its
/// `valid` bytes (if any) and syncs it, as a seal does before the listing.
async fn seal_found<S: Storage>(
    storage: &S,
    dir: &Path,
    base: i64,
    valid: u64,
    size: u64,
) -> std::io::Result<()> {
    let file = storage
        .open_segment(&segments_path(dir, base), OpenMode::ReadWrite)
        .await?;
    if valid < size {
        file.truncate(valid).await?;
    }
    file.fdatasync().await
}

/// What a cut of the last segment at `scan.valid_bytes` drops: nothing worth a report when
/// the bytes after it are zeroes (preallocated, never written); else the offsets the
/// headers found after the cut claim, as far as they can be followed.
async fn inspect_cut<F: SegmentFile>(
    file: &F,
    base: i64,
    scan: &ScanOutcome,
    size: u64,
) -> Option<DamageReport> {
    let from = scan.valid_bytes;
    let len = ((size - from) as usize).min(CUT_INSPECT_BYTES);
    let bytes = file.read_at(from, len).await.ok()?;
    if bytes.iter().all(|b| *b == 0) {
        return None;
    }
    // Follow the length fields of what is left for the offsets it held.
    let mut end = scan.next_offset;
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..).and_then(BatchHeader::view) {
        let last = header.last_offset();
        let Some(total) = header.total_bytes() else {
            break;
        };
        if header.base_offset() < end || last < header.base_offset() || last > end + (1 << 31) {
            break;
        }
        end = last + 1;
        at += total;
    }
    Some(DamageReport {
        kind: DamageKind::TailCut,
        segment_base_offset: base,
        position: from,
        first_offset: scan.next_offset,
        end_offset: end,
        previous_log_start_offset: -1,
        reason: scan
            .stopped
            .clone()
            .unwrap_or_else(|| "the segment has bytes after its last valid batch".into()),
    })
}
