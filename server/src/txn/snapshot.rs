//! A partition's transaction snapshot, `<offset>.txnsnapshot` next to its segments: the
//! transaction state of the partition as of `offset` (every batch below it applied, none
//! at or above it), so that opening the partition replays only the log from `offset` on.
//! Kafka keeps the same facts (each producer's epoch, coordinator epoch and the first
//! offset of its open transaction) in its producer-state `.snapshot`; Wharf's producer
//! snapshot is the engine's and knows no transactions, so the broker writes its own at the
//! same kind of points (a segment roll, a clean close, the end of a replay).
//!
//! The aborted transactions are not here: they are in the segments' `.txnindex` files,
//! synced before the snapshot is written. The snapshot records how far they were written
//! then (the last file and its length): only that much of them is trusted at open, since
//! Kafka's entries carry no checksum and a crash can leave an unsynced tail that reads as
//! entries (zeroes, say).
//!
//! Format, big-endian:
//!
//! ```text
//! magic "WTXS"  version:u16=1  offset:i64
//! index_file_base:i64 (-1: none)  index_file_bytes:i64
//! producers:u32      × [producer_id:i64 epoch:i16 coordinator_epoch:i32
//!                       current_txn_first_offset:i64 (-1: none) last_timestamp_ms:i64]
//! unreplicated:u32   × [first_offset:i64 producer_id:i64 marker_offset:i64]
//! crc32c:u32 of every byte before it
//! ```
//!
//! Sans-IO: bytes in, values out. A snapshot that does not decode is ignored (an older
//! one, or a replay from the log start, takes its place).

use super::partition::ProducerTxnState;

const MAGIC: &[u8; 4] = b"WTXS";
const VERSION: u16 = 1;
const HEADER_BYTES: usize = 4 + 2 + 8 + 8 + 8;
const PRODUCER_BYTES: usize = 8 + 2 + 4 + 8 + 8;
const UNREPLICATED_BYTES: usize = 8 + 8 + 8;
const CRC_BYTES: usize = 4;
/// Largest snapshot read: about five million producers.
pub const MAX_TXN_SNAPSHOT_BYTES: u64 = 128 << 20;
/// Snapshot files are named `<20-digit offset>.txnsnapshot`.
pub const TXN_SNAPSHOT_SUFFIX: &str = ".txnsnapshot";

/// A partition's transaction state as of `offset`, but for its aborted index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnSnapshot {
    pub offset: i64,
    /// How far the `.txnindex` files were written and synced when the snapshot was:
    /// every file with a lower base, and this file up to this many bytes.
    pub index_end: Option<(i64, u64)>,
    /// Every producer the partition knows from its batches and markers, by producer id.
    pub producers: Vec<(i64, ProducerTxnState)>,
    /// Completed transactions whose marker may not be below the high watermark yet:
    /// (first offset, producer id, marker offset).
    pub unreplicated: Vec<(i64, i64, i64)>,
}

impl TxnSnapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            HEADER_BYTES
                + 8
                + self.producers.len() * PRODUCER_BYTES
                + self.unreplicated.len() * UNREPLICATED_BYTES
                + CRC_BYTES,
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        let (base, bytes) = self.index_end.unwrap_or((-1, 0));
        out.extend_from_slice(&base.to_be_bytes());
        out.extend_from_slice(&(bytes as i64).to_be_bytes());
        let count = u32::try_from(self.producers.len()).expect("fewer than 2^32 producers");
        out.extend_from_slice(&count.to_be_bytes());
        for (pid, p) in &self.producers {
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&p.producer_epoch.to_be_bytes());
            out.extend_from_slice(&p.coordinator_epoch.to_be_bytes());
            out.extend_from_slice(&p.current_txn_first_offset.unwrap_or(-1).to_be_bytes());
            out.extend_from_slice(&p.last_timestamp_ms.to_be_bytes());
        }
        let count = u32::try_from(self.unreplicated.len()).expect("fewer than 2^32 transactions");
        out.extend_from_slice(&count.to_be_bytes());
        for (first, pid, last) in &self.unreplicated {
            out.extend_from_slice(&first.to_be_bytes());
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&last.to_be_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// `None` for anything but an intact snapshot of this version: a wrong magic, version
    /// or checksum, a count longer than the bytes left, trailing bytes.
    pub fn decode(bytes: &[u8]) -> Option<TxnSnapshot> {
        if bytes.len() < HEADER_BYTES + 8 + CRC_BYTES {
            return None;
        }
        let (body, crc) = bytes.split_at(bytes.len() - CRC_BYTES);
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut r = Reader { bytes: body, at: 0 };
        if r.take(4)? != MAGIC || u16::from_be_bytes(r.take(2)?.try_into().ok()?) != VERSION {
            return None;
        }
        let offset = r.i64()?;
        let index_base = r.i64()?;
        let index_bytes = u64::try_from(r.i64()?).ok()?;
        let index_end = (index_base >= 0).then_some((index_base, index_bytes));
        let count = r.u32()? as usize;
        // Never trust a count: it must fit in what is left.
        if count > r.left() / PRODUCER_BYTES {
            return None;
        }
        let mut producers = Vec::with_capacity(count);
        for _ in 0..count {
            let pid = r.i64()?;
            let producer_epoch = i16::from_be_bytes(r.take(2)?.try_into().ok()?);
            let coordinator_epoch = i32::from_be_bytes(r.take(4)?.try_into().ok()?);
            let first = r.i64()?;
            let last_timestamp_ms = r.i64()?;
            producers.push((
                pid,
                ProducerTxnState {
                    producer_epoch,
                    coordinator_epoch,
                    current_txn_first_offset: (first >= 0).then_some(first),
                    last_timestamp_ms,
                },
            ));
        }
        let count = r.u32()? as usize;
        if count > r.left() / UNREPLICATED_BYTES {
            return None;
        }
        let mut unreplicated = Vec::with_capacity(count);
        for _ in 0..count {
            unreplicated.push((r.i64()?, r.i64()?, r.i64()?));
        }
        if r.left() != 0 {
            return None;
        }
        Some(TxnSnapshot {
            offset,
            index_end,
            producers,
            unreplicated,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn producer() -> impl Strategy<Value = (i64, ProducerTxnState)> {
        (
            any::<i64>(),
            any::<i16>(),
            any::<i32>(),
            proptest::option::of(0..i64::MAX),
            any::<i64>(),
        )
            .prop_map(|(pid, producer_epoch, coordinator_epoch, first, ts)| {
                (
                    pid,
                    ProducerTxnState {
                        producer_epoch,
                        coordinator_epoch,
                        current_txn_first_offset: first,
                        last_timestamp_ms: ts,
                    },
                )
            })
    }

    proptest! {
        #[test]
        fn a_snapshot_round_trips(
            offset in any::<i64>(),
            index_end in proptest::option::of((0..i64::MAX, 0..i64::MAX as u64)),
            producers in proptest::collection::vec(producer(), 0..20),
            unreplicated in proptest::collection::vec(any::<(i64, i64, i64)>(), 0..20),
        ) {
            let s = TxnSnapshot { offset, index_end, producers, unreplicated };
            prop_assert_eq!(TxnSnapshot::decode(&s.encode()), Some(s));
        }

        #[test]
        fn a_damaged_or_cut_snapshot_is_refused(
            producers in proptest::collection::vec(producer(), 1..5),
            flip in any::<prop::sample::Index>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let bytes = TxnSnapshot {
                offset: 7,
                index_end: Some((0, 34)),
                producers,
                unreplicated: vec![(1, 2, 3)],
            }
            .encode();
            let mut flipped = bytes.clone();
            flipped[flip.index(bytes.len())] ^= 0x10;
            prop_assert_eq!(TxnSnapshot::decode(&flipped), None);
            prop_assert_eq!(TxnSnapshot::decode(&bytes[..cut.index(bytes.len())]), None);
        }
    }
}
