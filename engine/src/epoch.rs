//! The leader-epoch cache (KIP-101): for each leader epoch, the first offset written in it.
//! Persisted in Kafka's `leader-epoch-checkpoint` text format:
//! a version line `0`, a count line, then one `epoch start_offset` line per entry.

/// File name of the checkpoint inside a partition directory (Kafka's name).
pub const CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";
const CHECKPOINT_VERSION: &str = "0";
/// More entries than this in a checkpoint file is damage, not history.
pub const MAX_CHECKPOINT_ENTRIES: usize = 1 << 20;

/// Epochs and their start offsets. Invariant: epochs and start offsets both strictly grow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    entries: Vec<(i32, i64)>,
}

impl LeaderEpochCache {
    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.0)
    }

    /// Records that `epoch` starts at `start_offset`, when it is newer than the latest epoch.
    /// Returns whether the cache changed. Entries that start at or after `start_offset`
    /// belong to a divergent history and are replaced.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        if epoch < 0 || self.latest_epoch().is_some_and(|latest| latest >= epoch) {
            return false;
        }
        self.entries.retain(|&(_, start)| start < start_offset);
        self.entries.push((epoch, start_offset));
        true
    }

    /// OffsetForLeaderEpoch: the largest known epoch <= `epoch` and the offset where it ends
    /// (the start of the next epoch, or the log end for the latest). Mirrors Kafka's
    /// `LeaderEpochFileCache.endOffsetFor`.
    pub fn end_offset_for(&self, epoch: i32, log_end_offset: i64) -> Option<(i32, i64)> {
        let latest = self.entries.last()?;
        if epoch < 0 {
            return None;
        }
        if epoch == latest.0 {
            return Some((epoch, log_end_offset));
        }
        let higher = self.entries.partition_point(|e| e.0 <= epoch);
        let &(_, next_start) = self.entries.get(higher)?;
        match higher.checked_sub(1) {
            Some(floor) => Some((self.entries[floor].0, next_start)),
            // Older than every epoch we know: it ends where our history starts.
            None => Some((epoch, next_start)),
        }
    }

    /// Forgets epochs that start at or after `end_offset` (after a truncation of the log).
    pub fn truncate_from_end(&mut self, end_offset: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|&(_, start)| start < end_offset);
        before != self.entries.len()
    }

    /// Forgets history below `start_offset` (log start moved), keeping the epoch that
    /// covers it, now starting at `start_offset`.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> bool {
        let below = self.entries.partition_point(|e| e.1 <= start_offset);
        if below == 0 {
            return false;
        }
        let covering = self.entries[below - 1].0;
        let changed = below > 1 || self.entries[0].1 != start_offset;
        self.entries.drain(..below - 1);
        self.entries[0] = (covering, start_offset);
        changed
    }

    pub fn encode(&self) -> String {
        let mut out = format!("{CHECKPOINT_VERSION}\n{}\n", self.entries.len());
        for (epoch, start) in &self.entries {
            out.push_str(&format!("{epoch} {start}\n"));
        }
        out
    }

    /// Parses a checkpoint; `None` if it is not one (the caller rebuilds from the log).
    pub fn decode(text: &str) -> Option<LeaderEpochCache> {
        let mut lines = text.lines();
        if lines.next()?.trim() != CHECKPOINT_VERSION {
            return None;
        }
        let count: usize = lines.next()?.trim().parse().ok()?;
        if count > MAX_CHECKPOINT_ENTRIES {
            return None;
        }
        let mut cache = LeaderEpochCache::default();
        for _ in 0..count {
            let mut fields = lines.next()?.split_whitespace();
            let epoch: i32 = fields.next()?.parse().ok()?;
            let start: i64 = fields.next()?.parse().ok()?;
            let in_order = cache
                .entries
                .last()
                .is_none_or(|&(e, s)| e < epoch && s < start);
            if epoch < 0 || start < 0 || !in_order {
                return None;
            }
            cache.entries.push((epoch, start));
        }
        Some(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        let mut cache = LeaderEpochCache::default();
        for &(epoch, start) in entries {
            assert!(cache.assign(epoch, start));
        }
        cache
    }

    #[test]
    fn end_offset_follows_kafka() {
        let c = cache(&[(1, 0), (3, 10), (5, 20)]);
        assert_eq!(c.end_offset_for(5, 30), Some((5, 30)));
        assert_eq!(c.end_offset_for(4, 30), Some((3, 20)));
        assert_eq!(c.end_offset_for(3, 30), Some((3, 20)));
        assert_eq!(c.end_offset_for(1, 30), Some((1, 10)));
        assert_eq!(c.end_offset_for(0, 30), Some((0, 0)));
        assert_eq!(c.end_offset_for(6, 30), None);
        assert_eq!(c.end_offset_for(-1, 30), None);
        assert_eq!(LeaderEpochCache::default().end_offset_for(0, 0), None);
    }

    #[test]
    fn older_epochs_are_not_assigned_and_truncation_trims() {
        let mut c = cache(&[(1, 0), (3, 10)]);
        assert!(!c.assign(2, 15));
        assert!(!c.assign(3, 15));
        assert!(c.truncate_from_end(10));
        assert_eq!(c.entries(), &[(1, 0)]);
        let mut c = cache(&[(1, 0), (3, 10), (5, 20)]);
        assert!(c.truncate_from_start(15));
        assert_eq!(c.entries(), &[(3, 15), (5, 20)]);
        assert!(!c.truncate_from_start(15));
    }

    #[test]
    fn checkpoint_round_trips_and_rejects_garbage() {
        let c = cache(&[(0, 0), (2, 7), (9, 100)]);
        assert_eq!(c.encode(), "0\n3\n0 0\n2 7\n9 100\n");
        assert_eq!(LeaderEpochCache::decode(&c.encode()), Some(c));
        assert_eq!(LeaderEpochCache::decode("0\n2\n1 5\n"), None);
        assert_eq!(LeaderEpochCache::decode("0\n2\n3 5\n1 9\n"), None);
        assert_eq!(LeaderEpochCache::decode("1\n0\n"), None);
        assert_eq!(LeaderEpochCache::decode("0\n99999999999\n"), None);
        assert_eq!(LeaderEpochCache::decode(""), None);
    }
}
