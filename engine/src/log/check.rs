//! The log's invariants, checked against its files: for tests and the simulator, which call
//! [`PartitionLog::check_invariants`] after every step. Reads go through the log's storage,
//! so a simulated disk must not inject read faults while this runs.

use wharf_protocol::batch::{validate_batch_with, BatchHeader, CountRule};

use crate::storage::{OpenMode, SegmentFile, Storage};
use crate::Offset;

use super::manifest::{self, SEALED_SEGMENTS_FILE};
use super::segment::{segment_path, SegmentState, LOG_SUFFIX};
use super::state::Health;
use super::{PartitionLog, SMALL_FILE_MAX_BYTES};

impl<S: Storage> PartitionLog<S> {
    /// Checks that the log's state agrees with itself and with its files: segments
    /// contiguous from the log start, offsets and sizes ordered, every index entry pointing
    /// at the batch it names, the sealed-segments file agreeing with the sealed segments,
    /// and every batch the producer state remembers being in the log with that producer's
    /// id, epoch and sequences. Returns the first violation found.
    ///
    /// `damaged` names segments (by base offset) whose bytes the caller knows were damaged
    /// on disk (bit rot, bad sectors: a simulation injects them): an index entry there that
    /// points at a batch whose offsets the damage changed is the damage, not the index.
    pub async fn check_invariants(&self, damaged: &[i64]) -> Result<(), String> {
        let inner = &self.inner;
        struct SegCheck {
            base: i64,
            readable: u64,
            next_offset: i64,
            entries: Vec<(u32, u32)>,
            sealed: bool,
            size: u64,
        }
        let (segs, log_start, next_offset, written_next, producers, healthy) = {
            let st = inner.state.borrow();
            if st.closed {
                return Ok(());
            }
            let n = st.segments.len();
            for (i, s) in st.segments.iter().enumerate() {
                if !(s.synced_bytes <= s.written_bytes && s.written_bytes <= s.size_bytes) {
                    return Err(format!(
                        "segment {}: synced {} written {} size {} out of order",
                        s.base_offset, s.synced_bytes, s.written_bytes, s.size_bytes
                    ));
                }
                if s.next_offset < s.base_offset {
                    return Err(format!("segment {} ends before it starts", s.base_offset));
                }
                if let Some(next) = st.segments.get(i + 1) {
                    if next.base_offset > st.log_start_offset && s.next_offset != next.base_offset {
                        return Err(format!(
                            "segment {} ends at {} but the next starts at {}",
                            s.base_offset, s.next_offset, next.base_offset
                        ));
                    }
                    if s.state != SegmentState::Sealed
                        && st.segments[i + 1..]
                            .iter()
                            .any(|t| t.state == SegmentState::Sealed)
                    {
                        return Err(format!(
                            "segment {} is not sealed but a later one is",
                            s.base_offset
                        ));
                    }
                }
                if i + 1 == n && s.next_offset != st.next_offset {
                    return Err(format!(
                        "the active segment ends at {} but the log end is {}",
                        s.next_offset, st.next_offset
                    ));
                }
            }
            if st.log_start_offset > st.next_offset || st.written_next_offset > st.next_offset {
                return Err(format!(
                    "log start {} / written end {} past the log end {}",
                    st.log_start_offset, st.written_next_offset, st.next_offset
                ));
            }
            if st.log_start_offset < st.segments[0].base_offset {
                return Err(format!(
                    "log start {} before the first segment {}",
                    st.log_start_offset, st.segments[0].base_offset
                ));
            }
            let max = st
                .segments
                .iter()
                .map(|s| s.max_timestamp.0)
                .max()
                .unwrap_or(-1);
            if st.max_timestamp.0 != max.max(-1) {
                return Err(format!(
                    "largest timestamp {} but the segments' is {max}",
                    st.max_timestamp.0
                ));
            }
            let segs: Vec<SegCheck> = st
                .segments
                .iter()
                .map(|s| SegCheck {
                    base: s.base_offset,
                    readable: s.readable_bytes(),
                    next_offset: s.next_offset,
                    entries: s
                        .index
                        .as_ref()
                        .map(|ix| {
                            ix.offset_entries()
                                .iter()
                                .map(|e| (e.relative_offset, e.position))
                                .collect()
                        })
                        .unwrap_or_default(),
                    sealed: s.state == SegmentState::Sealed,
                    size: s.size_bytes,
                })
                .collect();
            (
                segs,
                st.log_start_offset,
                st.next_offset,
                st.written_next_offset,
                st.producers.clone(),
                st.health == Health::Healthy,
            )
        };
        let _ = next_offset;
        if self.reloading() {
            // A failure's reload from disk has yet to succeed: the state may still name
            // files a failed structural change removed. Its files are checked once it has.
            return Ok(());
        }
        // Index entries name the batch at their position.
        for seg in &segs {
            if seg.next_offset <= log_start || seg.entries.is_empty() {
                continue;
            }
            let path = segment_path(&inner.dir, seg.base, LOG_SUFFIX);
            let file = inner
                .storage
                .open_segment(&path, OpenMode::Read)
                .await
                .map_err(|e| format!("cannot open segment {}: {e}", seg.base))?;
            for &(relative, position) in &seg.entries {
                if u64::from(position) >= seg.readable {
                    continue;
                }
                let header = file
                    .read_at(
                        u64::from(position),
                        wharf_protocol::batch::BATCH_HEADER_BYTES,
                    )
                    .await
                    .map_err(|e| format!("cannot read segment {}: {e}", seg.base))?;
                // A batch that fails validation is damage (found by reads when they get
                // there), not an index out of step with the log.
                let Some(size) = BatchHeader::view(&header).and_then(BatchHeader::total_bytes)
                else {
                    continue;
                };
                // Read twice at most: a flipped bit on the way from the disk is not damage.
                let mut last = None;
                for _ in 0..2 {
                    let bytes = file
                        .read_at(u64::from(position), size)
                        .await
                        .map_err(|e| format!("cannot read segment {}: {e}", seg.base))?;
                    if let Ok(info) = validate_batch_with(&bytes, usize::MAX, CountRule::AtMost) {
                        last = Some(info.last_offset());
                        if info.last_offset() == seg.base + i64::from(relative) {
                            break;
                        }
                    }
                }
                let Some(last) = last else {
                    continue;
                };
                if last != seg.base + i64::from(relative) && !damaged.contains(&seg.base) {
                    return Err(format!(
                        "segment {}: the index says the batch at {position} ends at {}, it ends at {last}",
                        seg.base,
                        seg.base + i64::from(relative),
                    ));
                }
            }
        }
        // The sealed-segments file agrees with the sealed segments it names.
        if healthy {
            if let Ok(Some(bytes)) = inner
                .storage
                .read_file(&inner.dir.join(SEALED_SEGMENTS_FILE), SMALL_FILE_MAX_BYTES)
                .await
            {
                let listed = manifest::decode(&bytes).ok_or_else(|| {
                    format!(
                        "the sealed-segments file does not decode: {:?}",
                        String::from_utf8_lossy(&bytes)
                    )
                })?;
                for entry in listed {
                    // Open trusts an entry whose base offset and size match a segment's.
                    if let Some(seg) = segs
                        .iter()
                        .find(|s| s.base == entry.base_offset && s.size == entry.size_bytes)
                    {
                        if !seg.sealed || seg.next_offset != entry.next_offset {
                            return Err(format!(
                                "segment {} is listed as sealed with {} bytes to offset {}, but is {} bytes to offset {} (sealed: {})",
                                seg.base, entry.size_bytes, entry.next_offset, seg.size, seg.next_offset, seg.sealed
                            ));
                        }
                    }
                }
            }
        }
        // Every batch the producer state remembers is in the log, as remembered.
        // In id order: reads may find damage, and what they do must not depend on a hash.
        let mut producers: Vec<_> = producers.iter().collect();
        producers.sort_unstable_by_key(|(pid, _)| **pid);
        for (pid, entry) in producers {
            for b in &entry.batches {
                if b.base_offset < log_start || b.last_offset >= written_next {
                    continue;
                }
                let bytes = match self.read(Offset(b.base_offset), 1).await {
                    Ok(bytes) => bytes,
                    // Damage found by this read moved the log start: not this check's.
                    Err(crate::EngineError::OffsetOutOfRange { .. }) => continue,
                    // A log whose write path failed is being (or could not yet be)
                    // reloaded from disk: what it remembers is checked once it is.
                    Err(crate::EngineError::Storage { .. }) if !healthy => return Ok(()),
                    Err(e) => {
                        return Err(format!(
                            "cannot read producer {pid}'s batch at {}: {e}",
                            b.base_offset
                        ))
                    }
                };
                let Some(view) = BatchHeader::view(&bytes) else {
                    return Err(format!(
                        "producer {pid}'s batch at {} is not in the log",
                        b.base_offset
                    ));
                };
                let last = view.last_offset();
                // Compaction removed it (a producer's older batches are not kept, as in
                // Kafka): a filler covers its offsets. A retry is still answered from
                // the state.
                let filler = view.records_count() == 0 && view.producer_id() < 0;
                if filler && view.base_offset() <= b.base_offset && b.last_offset <= last {
                    continue;
                }
                if view.base_offset() != b.base_offset
                    || last != b.last_offset
                    || view.producer_id() != *pid
                    || view.producer_epoch() != entry.epoch
                    || view.base_sequence() != b.first_sequence
                {
                    return Err(format!(
                        "producer {pid} remembers a batch {}..={} seq {} epoch {}, the log has {}..={} from producer {} epoch {} seq {}",
                        b.base_offset, b.last_offset, b.first_sequence, entry.epoch,
                        view.base_offset(), last, view.producer_id(), view.producer_epoch(), view.base_sequence()
                    ));
                }
            }
        }
        Ok(())
    }
}
