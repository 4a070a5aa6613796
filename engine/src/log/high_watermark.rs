//! The high-watermark checkpoint: the last high watermark a replicated partition recorded,
//! so a replica that restarts knows what was committed without waiting for its peers
//! (Kafka's `replication-offset-checkpoint`, kept per partition here rather than per data
//! directory).
//!
//! The log does not decide the high watermark; it keeps what it is given. Its one rule:
//! the checkpoint never covers records the log no longer holds. A truncation below it
//! lowers it, durably, before any record goes, so that no crash can leave a checkpoint
//! over offsets the log later fills with other records.

use crate::error::EngineError;
use crate::storage::{replace_file, Storage};
use crate::Offset;

use super::{Inner, PartitionLog};

/// `<offset>\n`: the high watermark last checkpointed.
pub const HIGH_WATERMARK_FILE: &str = "high-watermark-checkpoint";

/// Parses the checkpoint file's content; `None` if it is not one non-negative offset.
pub(super) fn decode(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes)
        .ok()?
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|o| *o >= 0)
}

impl<S: Storage> PartitionLog<S> {
    /// The high watermark last checkpointed, within the log (capped at its end, raised to
    /// its start); `None` if none was ever recorded.
    pub fn high_watermark_checkpoint(&self) -> Option<Offset> {
        let st = self.inner.state.borrow();
        st.high_watermark_checkpoint
            .map(|hw| Offset(hw.min(st.next_offset).max(st.log_start_offset)))
    }

    /// Records `high_watermark` (capped at the log end) as the checkpoint, crash-safely
    /// (a reader finds the old value or the new one). A machine crash may bring back the
    /// value before, never a higher one: the directory is not synced, an older high
    /// watermark being always safe to restart from. Returns the offset recorded.
    pub async fn checkpoint_high_watermark(
        &self,
        high_watermark: Offset,
    ) -> Result<Offset, EngineError> {
        let inner = &self.inner;
        // Truncations hold this lock for their whole length: a checkpoint is written
        // before one starts or after it has finished, against the log end it left.
        let _lock = inner
            .high_watermark_lock
            .acquire()
            .await
            .map_err(|_| inner.closed_error())?;
        let offset = {
            let st = inner.state.borrow();
            inner.check_open(&st)?;
            high_watermark.0.clamp(0, st.next_offset)
        };
        if inner.state.borrow().high_watermark_checkpoint == Some(offset) {
            return Ok(Offset(offset));
        }
        inner.write_high_watermark(offset, false).await?;
        Ok(Offset(offset))
    }
}

impl<S: Storage> Inner<S> {
    /// Before a truncation at `offset`: a checkpoint above it is lowered to it and made
    /// durable (the directory synced), so a crash during or after the cut cannot restart
    /// the log with a checkpoint over records it did not have. The caller holds
    /// `high_watermark_lock`.
    pub(super) async fn lower_high_watermark_checkpoint(
        &self,
        offset: i64,
    ) -> Result<(), EngineError> {
        let above = self
            .state
            .borrow()
            .high_watermark_checkpoint
            .is_some_and(|hw| hw > offset);
        if above {
            self.write_high_watermark(offset.max(0), true).await?;
        }
        Ok(())
    }

    async fn write_high_watermark(&self, offset: i64, sync_dir: bool) -> Result<(), EngineError> {
        let text = format!("{offset}\n").into_bytes();
        let path = self.dir.join(HIGH_WATERMARK_FILE);
        let result = replace_file(&self.storage, &path, text, sync_dir).await;
        let mut st = self.state.borrow_mut();
        // After a failure the file holds the old value or this one: the higher counts, so
        // that a later lowering is never skipped as done already.
        st.high_watermark_checkpoint = match (result.is_ok(), st.high_watermark_checkpoint) {
            (true, _) | (false, None) => Some(offset),
            (false, Some(old)) => Some(old.max(offset)),
        };
        drop(st);
        result.map_err(|e| EngineError::io("cannot write the high-watermark checkpoint", e))
    }
}
