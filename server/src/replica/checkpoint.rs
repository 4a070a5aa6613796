//! The high-watermark checkpoint (Kafka's `replication-offset-checkpoint`): when the
//! replica's high watermark is recorded on disk, so that a restart knows what was
//! committed without waiting for its peers. The driver writes what these say; the log
//! lowers the checkpoint itself before a truncation cuts below it.

use super::state::ReplicaState;

impl ReplicaState {
    /// The high watermark to checkpoint now, if it changed since the last checkpoint and
    /// `replica.high.watermark.checkpoint.interval.ms` has passed since that one. It counts
    /// as recorded from now on; the driver reports a failed write with
    /// [`ReplicaState::high_watermark_checkpoint_failed`].
    pub fn high_watermark_checkpoint_due(&mut self, now_ms: i64) -> Option<i64> {
        let interval = self.config.high_watermark_checkpoint_interval_ms;
        if self
            .last_checkpoint_ms
            .is_some_and(|at| now_ms - at < interval)
        {
            return None;
        }
        let high_watermark = self.high_watermark_to_checkpoint()?;
        self.last_checkpoint_ms = Some(now_ms);
        Some(high_watermark)
    }

    /// The high watermark to checkpoint at a clean shutdown, whatever the interval: the
    /// restart then starts from everything consumers were shown.
    pub fn high_watermark_to_checkpoint(&mut self) -> Option<i64> {
        if self.checkpointed_high_watermark == Some(self.high_watermark) {
            return None;
        }
        self.checkpointed_high_watermark = Some(self.high_watermark);
        Some(self.high_watermark)
    }

    /// A checkpoint write failed: the next one is due after the interval, whatever the
    /// high watermark then (the file holds the old value or the new one, either a high
    /// watermark this replica had; a failing disk is not written to every tick).
    pub fn high_watermark_checkpoint_failed(&mut self) {
        self.checkpointed_high_watermark = None;
    }

    /// What the checkpoint on disk holds, as far as this replica knows (`None`: unknown).
    pub fn checkpointed_high_watermark(&self) -> Option<i64> {
        self.checkpointed_high_watermark
    }
}
