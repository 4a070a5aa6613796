//! Closing a log: flush what is queued, seal what was rolled, sync and trim the active
//! segment, write its indexes, the checkpoints, a producer snapshot at the log end and the
//! clean-shutdown marker that lets the next open skip the scan. A log whose writes failed
//! closes without the marker, so the next open validates it.

use std::rc::Rc;

use crate::epoch::CHECKPOINT_FILE;
use crate::error::EngineError;
use crate::index::SegmentIndex;
use crate::storage::{replace_file, SegmentFile, Storage};

use super::segment::{segment_path, SegmentState, INDEX_SUFFIX, TIME_INDEX_SUFFIX};
use super::state::Health;
use super::{seal, snapshot, Inner, PartitionLog, CLEAN_SHUTDOWN_FILE};

impl<S: Storage> PartitionLog<S> {
    /// Flush and close every file. Later calls on this log fail.
    pub async fn close(&self) -> Result<(), EngineError> {
        self.inner.close().await
    }

    /// Close and remove the partition's directory (DeleteTopics).
    pub async fn delete(self) -> Result<(), EngineError> {
        let inner = &self.inner;
        let _ = inner.close().await;
        let entries = inner
            .storage
            .list_dir(&inner.dir)
            .map_err(|e| EngineError::io("cannot delete the log", e))?;
        for entry in entries {
            inner
                .storage
                .remove_file(&inner.dir.join(&entry.name))
                .await
                .map_err(|e| EngineError::io("cannot delete the log", e))?;
        }
        inner
            .storage
            .remove_dir(&inner.dir)
            .await
            .map_err(|e| EngineError::io(format!("cannot remove {}", inner.dir.display()), e))
    }
}

impl<S: Storage> Inner<S> {
    async fn close(self: &Rc<Self>) -> Result<(), EngineError> {
        let seq = {
            let st = self.state.borrow();
            if st.closed {
                return Ok(());
            }
            st.appended_seq
        };
        let flushed = self.written.wait(seq).await;
        let _lock = self
            .io_lock
            .acquire()
            .await
            .map_err(|_| self.closed_error())?;
        let failed = match &self.state.borrow().health {
            Health::Healthy => None,
            Health::Failed { reason, .. } => Some(reason.clone()),
        };
        let result = match (flushed, failed) {
            (Err(reason), _) | (Ok(()), Some(reason)) => Err(self.storage_error(reason)),
            (Ok(()), None) => self.close_files().await,
        };
        // No fdatasync of the syncer's is left in flight.
        let _sync = self.sync_lock.acquire().await;
        let mut st = self.state.borrow_mut();
        st.closed = true;
        self.files.borrow_mut().clear();
        self.cache.clear(&self.cached);
        drop(st);
        self.io_lock.close();
        self.sync_lock.close();
        self.append_gate.close();
        self.written.close("the log is closed");
        self.synced.close("the log is closed");
        result
    }

    /// Seals what was rolled, syncs and trims the active segment, writes its indexes, the
    /// checkpoints and the clean-shutdown marker.
    async fn close_files(self: &Rc<Self>) -> Result<(), EngineError> {
        let to_io = |e: std::io::Error| EngineError::io("cannot close the log", e);
        let unsealed: Vec<i64> = {
            let st = self.state.borrow();
            st.segments[..st.segments.len() - 1]
                .iter()
                .filter(|s| s.state != SegmentState::Sealed)
                .map(|s| s.base_offset)
                .collect()
        };
        for base in unsealed {
            seal::seal(self, base).await.map_err(|(_, e)| to_io(e))?;
        }
        let (base, written, next_offset, offsets, times, epochs) = {
            let mut st = self.state.borrow_mut();
            let epochs = st.epochs.encode();
            let seg = st
                .segments
                .last_mut()
                .expect("a log always has an active segment");
            let (max_ts, max_offset) = seg.max_timestamp;
            let base = seg.base_offset;
            let index = seg.index.get_or_insert_with(SegmentIndex::new);
            index.maybe_append_time(max_ts, (max_offset - base).max(0) as u32);
            (
                base,
                seg.written_bytes,
                seg.next_offset,
                index.encode_offsets(),
                index.encode_times(),
                epochs,
            )
        };
        let file = self.files.borrow_mut().take_writable(base);
        let exists = file.is_some() || written > 0;
        if !exists
            && self.state.borrow().segments.len() == 1
            && self.state.borrow().epochs.entries().is_empty()
        {
            // Never written: leave nothing behind but the directory.
            return Ok(());
        }
        if let Some(file) = file {
            // Trimmed, then synced (the size too), as when sealing.
            file.truncate(written).await.map_err(to_io)?;
            self.sync_file(&file).await.map_err(|(_, e)| to_io(e))?;
        }
        // The three files are independent: written and synced concurrently.
        let storage = &self.storage;
        let dir = &self.dir;
        let (checkpoint_path, index_path, time_path) = (
            dir.join(CHECKPOINT_FILE),
            segment_path(dir, base, INDEX_SUFFIX),
            segment_path(dir, base, TIME_INDEX_SUFFIX),
        );
        let checkpoint = replace_file(storage, &checkpoint_path, epochs.into_bytes(), false);
        if exists {
            let index = replace_file(storage, &index_path, offsets, false);
            let time = replace_file(storage, &time_path, times, false);
            let (a, (b, c)) =
                futures_lite::future::zip(checkpoint, futures_lite::future::zip(index, time)).await;
            a.and(b).and(c).map_err(to_io)?;
            // The producer state as of the log end, so a clean restart needs no scan.
            let bytes = self.state.borrow().producers.encode();
            snapshot::write_snapshot(self, next_offset, bytes)
                .await
                .map_err(to_io)?;
            // The restart skips the scan that would find the damage below it again.
            self.record_unrecorded_log_start().await.map_err(to_io)?;
            let marker = format!("{base} {written} {next_offset}\n").into_bytes();
            replace_file(storage, &dir.join(CLEAN_SHUTDOWN_FILE), marker, true)
                .await
                .map_err(to_io)?;
        } else {
            checkpoint.await.map_err(to_io)?;
        }
        Ok(())
    }
}
