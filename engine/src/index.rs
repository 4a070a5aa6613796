//! Sparse offset and time indexes of one segment, in Kafka's file formats:
//! `.index` entries are `(relative offset u32, position u32)` keyed by a batch's last offset,
//! `.timeindex` entries are `(timestamp i64, relative offset u32)` with strictly growing
//! timestamps. All big-endian. Lookups are binary searches.
//!
//! Every prefix of a valid index is a valid (sparser) index, so a torn index file is either
//! still correct or detectably broken, and a broken one is rebuilt from the log.

/// Size of one `.index` entry.
pub const OFFSET_ENTRY_BYTES: usize = 8;
/// Size of one `.timeindex` entry.
pub const TIME_ENTRY_BYTES: usize = 12;

/// `(relative last offset of a batch, position of that batch in the segment)`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// `(largest timestamp so far, relative offset of the record that has it)`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp_ms: i64,
    pub relative_offset: u32,
}

/// Both sparse indexes of one segment. Invariant: offsets and positions strictly grow
/// along `offsets`; timestamps strictly grow along `times`.
#[derive(Clone, Debug, Default)]
pub struct SegmentIndex {
    offsets: Vec<OffsetEntry>,
    times: Vec<TimeEntry>,
    bytes_since_entry: u64,
}

impl SegmentIndex {
    pub fn new() -> SegmentIndex {
        SegmentIndex::default()
    }

    pub fn offset_entries(&self) -> &[OffsetEntry] {
        &self.offsets
    }

    pub fn time_entries(&self) -> &[TimeEntry] {
        &self.times
    }

    /// Heap bytes held by the entries.
    pub fn memory_bytes(&self) -> usize {
        self.offsets.capacity() * std::mem::size_of::<OffsetEntry>()
            + self.times.capacity() * std::mem::size_of::<TimeEntry>()
    }

    /// Records a batch of `size_bytes` at `position` whose last record is `relative_last_offset`.
    /// Kafka's rule (`LogSegment.append`): an entry is added for a batch once more than
    /// `index_interval_bytes` of log were appended since the previous entry, so the first
    /// batch of a segment never has one. `max_timestamp` is the segment's largest timestamp
    /// so far, including this batch, at `relative_offset_of_max`.
    pub fn on_batch(
        &mut self,
        position: u32,
        size_bytes: u32,
        relative_last_offset: u32,
        max_timestamp_ms: i64,
        relative_offset_of_max: u32,
        index_interval_bytes: u32,
    ) {
        if self.bytes_since_entry > u64::from(index_interval_bytes) {
            let fits = self
                .offsets
                .last()
                .is_none_or(|e| e.relative_offset < relative_last_offset && e.position < position);
            if fits {
                self.offsets.push(OffsetEntry {
                    relative_offset: relative_last_offset,
                    position,
                });
            }
            self.maybe_append_time(max_timestamp_ms, relative_offset_of_max);
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += u64::from(size_bytes);
    }

    /// Adds a time entry if `timestamp_ms` is larger than the last one (also done when a
    /// segment is sealed, so its last time entry holds its largest timestamp).
    pub fn maybe_append_time(&mut self, timestamp_ms: i64, relative_offset: u32) {
        if timestamp_ms >= 0
            && self
                .times
                .last()
                .is_none_or(|e| timestamp_ms > e.timestamp_ms)
        {
            self.times.push(TimeEntry {
                timestamp_ms,
                relative_offset,
            });
        }
    }

    /// Where to start scanning for the batch that contains `relative_offset`: the position of
    /// the last indexed batch that ends at or before it, else the segment start.
    pub fn lookup(&self, relative_offset: u32) -> u32 {
        let after = self
            .offsets
            .partition_point(|e| e.relative_offset <= relative_offset);
        if after == 0 {
            0
        } else {
            self.offsets[after - 1].position
        }
    }

    /// A relative offset from which scanning finds the first record with a timestamp at or
    /// after `timestamp_ms`: every record before it is older (the last entry strictly
    /// older), else the segment start.
    pub fn lookup_time(&self, timestamp_ms: i64) -> u32 {
        let after = self
            .times
            .partition_point(|e| e.timestamp_ms < timestamp_ms);
        if after == 0 {
            0
        } else {
            self.times[after - 1].relative_offset
        }
    }

    /// The last indexed batch that ends at or before `relative_offset`, if any: where to
    /// start scanning for the batch that contains it.
    pub fn lookup_entry(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let after = self
            .offsets
            .partition_point(|e| e.relative_offset <= relative_offset);
        after.checked_sub(1).map(|k| self.offsets[k])
    }

    /// Where the first indexed batch that ends after `relative_offset` starts: the batch
    /// holding that offset starts there or before.
    pub fn next_entry_position(&self, relative_offset: u32) -> Option<u32> {
        let after = self
            .offsets
            .partition_point(|e| e.relative_offset <= relative_offset);
        self.offsets.get(after).map(|e| e.position)
    }

    /// The last offset entry at or before byte `position`.
    pub fn entry_at_or_before(&self, position: u64) -> Option<usize> {
        self.offsets
            .partition_point(|e| u64::from(e.position) <= position)
            .checked_sub(1)
    }

    /// The last offset entry whose batch ends before `relative_offset`.
    pub fn entry_before_offset(&self, relative_offset: u64) -> Option<usize> {
        self.offsets
            .partition_point(|e| u64::from(e.relative_offset) < relative_offset)
            .checked_sub(1)
    }

    /// The index as it was right after the batch of offset entry `k` was added: entries
    /// `0..=k`, and the time entries recorded with them. A time entry is only added with
    /// an offset entry (or when the segment is sealed), and holds the largest timestamp of
    /// the batches up to that entry's batch, so those with a relative offset up to entry
    /// `k`'s are exactly the ones recorded by then.
    pub fn truncated_through(&self, k: usize) -> SegmentIndex {
        let last = self.offsets[k].relative_offset;
        SegmentIndex {
            offsets: self.offsets[..=k].to_vec(),
            times: self
                .times
                .iter()
                .copied()
                .filter(|t| t.relative_offset <= last)
                .collect(),
            bytes_since_entry: 0,
        }
    }

    /// The segment's largest timestamp as the time index knows it.
    pub fn last_time_entry(&self) -> Option<TimeEntry> {
        self.times.last().copied()
    }

    pub fn encode_offsets(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.offsets.len() * OFFSET_ENTRY_BYTES);
        for e in &self.offsets {
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
        }
        out
    }

    pub fn encode_times(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.times.len() * TIME_ENTRY_BYTES);
        for e in &self.times {
            out.extend_from_slice(&e.timestamp_ms.to_be_bytes());
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
        }
        out
    }

    /// Parses index files of a segment of `log_size_bytes` whose offsets end before
    /// `relative_end_offset`. `None` when either file is not a valid index (torn, zeroed,
    /// out of order, pointing past the log): the caller rebuilds it from the log.
    pub fn decode(
        offsets: &[u8],
        times: &[u8],
        log_size_bytes: u64,
        relative_end_offset: u64,
    ) -> Option<SegmentIndex> {
        if !offsets.len().is_multiple_of(OFFSET_ENTRY_BYTES)
            || !times.len().is_multiple_of(TIME_ENTRY_BYTES)
        {
            return None;
        }
        let mut index = SegmentIndex::new();
        for chunk in offsets.chunks_exact(OFFSET_ENTRY_BYTES) {
            let relative_offset = u32::from_be_bytes(chunk[0..4].try_into().ok()?);
            let position = u32::from_be_bytes(chunk[4..8].try_into().ok()?);
            // Position 0 is never indexed (the first batch has no entry): zeroes are damage.
            let in_order = index
                .offsets
                .last()
                .is_none_or(|e| e.relative_offset < relative_offset && e.position < position);
            if position == 0
                || !in_order
                || u64::from(position) >= log_size_bytes
                || u64::from(relative_offset) >= relative_end_offset
            {
                return None;
            }
            index.offsets.push(OffsetEntry {
                relative_offset,
                position,
            });
        }
        for chunk in times.chunks_exact(TIME_ENTRY_BYTES) {
            let timestamp_ms = i64::from_be_bytes(chunk[0..8].try_into().ok()?);
            let relative_offset = u32::from_be_bytes(chunk[8..12].try_into().ok()?);
            let in_order = index
                .times
                .last()
                .is_none_or(|e| e.timestamp_ms < timestamp_ms);
            if timestamp_ms < 0 || !in_order || u64::from(relative_offset) >= relative_end_offset {
                return None;
            }
            index.times.push(TimeEntry {
                timestamp_ms,
                relative_offset,
            });
        }
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Simulated batches: (position, size, relative base offset, relative last offset).
    fn layout(batches: &[(u32, u32)]) -> Vec<(u32, u32, u32, u32)> {
        let mut position = 0;
        let mut offset = 0;
        batches
            .iter()
            .map(|&(size, records)| {
                let batch = (position, size, offset, offset + records - 1);
                position += size;
                offset += records;
                batch
            })
            .collect()
    }

    fn build(batches: &[(u32, u32, u32, u32)], interval: u32) -> SegmentIndex {
        let mut index = SegmentIndex::new();
        for (i, &(position, size, _, last)) in batches.iter().enumerate() {
            index.on_batch(position, size, last, i as i64 * 10, last, interval);
        }
        index
    }

    proptest! {
        #[test]
        fn index_lookup_agrees_with_a_linear_scan(
            batches in proptest::collection::vec((61u32..5000, 1u32..20), 1..200),
            interval in 1u32..20_000,
            probe in any::<prop::sample::Index>(),
        ) {
            let batches = layout(&batches);
            let index = build(&batches, interval);
            let end = batches.last().map(|b| b.3 + 1).unwrap_or(0);
            let target = probe.index(end as usize) as u32;
            let linear = batches.iter().find(|b| b.3 >= target).expect("target is in the segment");
            // Scanning forward from the looked-up position finds the same batch.
            let start = index.lookup(target);
            prop_assert!(start <= linear.0);
            let from_index = batches.iter().filter(|b| b.0 >= start).find(|b| b.3 >= target).expect("found");
            prop_assert_eq!(from_index, linear);
            // And the files round trip.
            let size = batches.last().map(|b| u64::from(b.0 + b.1)).unwrap_or(0);
            let decoded = SegmentIndex::decode(&index.encode_offsets(), &index.encode_times(), size, u64::from(end))
                .expect("an encoded index decodes");
            prop_assert_eq!(decoded.offset_entries(), index.offset_entries());
            prop_assert_eq!(decoded.time_entries(), index.time_entries());
        }

        #[test]
        fn time_lookup_never_skips_a_newer_record(
            timestamps in proptest::collection::vec(0i64..1000, 1..300),
            target in 0i64..1100,
        ) {
            let mut index = SegmentIndex::new();
            let mut max = (-1i64, 0u32);
            for (i, ts) in timestamps.iter().enumerate() {
                if *ts > max.0 { max = (*ts, i as u32); }
                index.on_batch(i as u32 * 100, 100, i as u32, max.0, max.1, 150);
            }
            let start = index.lookup_time(target) as usize;
            // No record before `start` reaches the target.
            prop_assert!(timestamps[..start].iter().all(|ts| *ts < target));
        }
    }

    #[test]
    fn damaged_index_files_are_rejected() {
        let batches = layout(&[(100, 1); 50]);
        let index = build(&batches, 250);
        let offsets = index.encode_offsets();
        assert!(!offsets.is_empty());
        assert!(SegmentIndex::decode(&offsets, &[], 5000, 50).is_some());
        assert!(SegmentIndex::decode(&offsets[..offsets.len() - 3], &[], 5000, 50).is_none());
        let mut zeroed = offsets.clone();
        zeroed.extend_from_slice(&[0; 16]);
        assert!(SegmentIndex::decode(&zeroed, &[], 5000, 50).is_none());
        // An index that points past the log belongs to a longer log.
        assert!(SegmentIndex::decode(&offsets, &[], 1000, 50).is_none());
        // A torn prefix of whole entries is still a valid, sparser index.
        assert!(SegmentIndex::decode(&offsets[..OFFSET_ENTRY_BYTES], &[], 5000, 50).is_some());
    }
}
