//! The cleaner's key → offset map, in memory of a fixed size (Kafka's `SkimpyOffsetMap`,
//! sized by `log.cleaner.dedupe.buffer.size`).
//!
//! Keys are not stored: each is reduced to a 128-bit hash, with the offset of its latest
//! record beside it, 24 bytes a slot, in one array allocated once. Two keys with the same
//! 128-bit hash would be taken for one (Kafka takes the same risk with MD5); at a billion
//! keys the chance is around 10^-21. The map is filled to a load factor only, so probing
//! stays short, and a cleaning round that fills it cleans up to the last offset it covers.

use std::hash::{DefaultHasher, Hasher};

/// Bytes one slot takes: a 128-bit key hash and an offset.
pub const OFFSET_MAP_SLOT_BYTES: usize = 24;
/// How full the map is allowed to get (Kafka's `log.cleaner.io.buffer.load.factor`).
pub const OFFSET_MAP_LOAD_FACTOR: f64 = 0.9;
/// Kafka's `log.cleaner.dedupe.buffer.size` default.
pub const DEFAULT_DEDUPE_BUFFER_BYTES: usize = 128 << 20;

#[derive(Copy, Clone)]
struct Slot {
    hash: [u64; 2],
    /// `EMPTY` when the slot is free (offsets are never negative).
    offset: i64,
}

const EMPTY: i64 = -1;

/// A bounded map from record key to the offset of its latest record. Invariants: at most
/// `max_entries` keys; its memory is fixed when it is made.
pub struct OffsetMap {
    slots: Vec<Slot>,
    entries: usize,
    max_entries: usize,
    /// The last offset the map covers: every keyed record at or below it (from where
    /// the map was started) was put; `-1` before any.
    latest_offset: i64,
}

impl OffsetMap {
    /// A map that uses `buffer_bytes` of memory (at least two slots).
    pub fn new(buffer_bytes: usize) -> OffsetMap {
        let slots = (buffer_bytes / OFFSET_MAP_SLOT_BYTES).max(2);
        let max_entries = ((slots as f64 * OFFSET_MAP_LOAD_FACTOR) as usize).clamp(1, slots - 1);
        OffsetMap {
            slots: vec![
                Slot {
                    hash: [0, 0],
                    offset: EMPTY
                };
                slots
            ],
            entries: 0,
            max_entries,
            latest_offset: -1,
        }
    }

    /// Empties the map (its memory stays).
    pub fn clear(&mut self) {
        if self.entries > 0 {
            self.slots.iter_mut().for_each(|s| s.offset = EMPTY);
        }
        self.entries = 0;
        self.latest_offset = -1;
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The most keys the map takes.
    pub fn capacity(&self) -> usize {
        self.max_entries
    }

    /// No more keys fit.
    pub fn is_full(&self) -> bool {
        self.entries >= self.max_entries
    }

    /// Bytes of memory the map holds.
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * OFFSET_MAP_SLOT_BYTES
    }

    /// Share of the capacity in use.
    pub fn utilization(&self) -> f64 {
        self.entries as f64 / self.slots.len() as f64
    }

    pub fn latest_offset(&self) -> i64 {
        self.latest_offset
    }

    pub(crate) fn set_latest_offset(&mut self, offset: i64) {
        self.latest_offset = self.latest_offset.max(offset);
    }

    /// Records `offset` as the latest of `key` (a later put of the same key replaces it).
    /// Returns false, changing nothing, when the key is new and the map is full.
    pub fn put(&mut self, key: &[u8], offset: i64) -> bool {
        debug_assert!(offset >= 0, "offsets are never negative");
        let hash = hash_key(key);
        let at = self.find(hash);
        let slot = &mut self.slots[at];
        if slot.offset == EMPTY {
            if self.entries >= self.max_entries {
                return false;
            }
            self.entries += 1;
            slot.hash = hash;
        }
        slot.offset = offset;
        true
    }

    /// The offset of `key`'s latest record, if the map holds the key.
    pub fn get(&self, key: &[u8]) -> Option<i64> {
        let slot = self.slots[self.find(hash_key(key))];
        (slot.offset != EMPTY).then_some(slot.offset)
    }

    /// The slot holding `hash`, or the free slot where it belongs (linear probing; the load
    /// factor keeps a free slot, so the probe ends).
    fn find(&self, hash: [u64; 2]) -> usize {
        let n = self.slots.len();
        let mut at = (hash[0] % n as u64) as usize;
        loop {
            let slot = &self.slots[at];
            if slot.offset == EMPTY || slot.hash == hash {
                return at;
            }
            at = if at + 1 == n { 0 } else { at + 1 };
        }
    }
}

/// Two independent 64-bit SipHashes of the key: 128 bits. Only compared within one
/// process, so the std hasher's fixed keys are fine.
fn hash_key(key: &[u8]) -> [u64; 2] {
    let mut a = DefaultHasher::new();
    a.write(key);
    let mut b = DefaultHasher::new();
    b.write_u8(0x5c);
    b.write(key);
    [a.finish(), b.finish()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_offset_of_each_key() {
        let mut map = OffsetMap::new(24 * 100);
        assert!(map.put(b"a", 1));
        assert!(map.put(b"b", 2));
        assert!(map.put(b"a", 7));
        assert_eq!(map.get(b"a"), Some(7));
        assert_eq!(map.get(b"b"), Some(2));
        assert_eq!(map.get(b"c"), None);
        assert_eq!(map.len(), 2);
        map.clear();
        assert_eq!(map.get(b"a"), None);
        assert!(map.is_empty());
    }

    #[test]
    fn never_holds_more_than_its_capacity() {
        let mut map = OffsetMap::new(24 * 10);
        assert_eq!(map.capacity(), 9);
        assert_eq!(map.memory_bytes(), 240);
        for i in 0..9u32 {
            assert!(map.put(&i.to_be_bytes(), i64::from(i)));
        }
        assert!(map.is_full());
        assert!(!map.put(b"one more", 100), "a new key does not fit");
        assert!(map.put(&3u32.to_be_bytes(), 50), "a known key is updated");
        assert_eq!(map.get(&3u32.to_be_bytes()), Some(50));
        assert_eq!(map.len(), 9);
        for i in 0..9u32 {
            assert!(map.get(&i.to_be_bytes()).is_some());
        }
    }

    #[test]
    fn a_tiny_buffer_still_holds_one_key() {
        let mut map = OffsetMap::new(0);
        assert_eq!(map.capacity(), 1);
        assert!(map.put(b"k", 0));
        assert!(!map.put(b"l", 1));
    }
}
