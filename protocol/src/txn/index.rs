//! The aborted-transaction index (Kafka's `.txnindex`, one per segment): a flat file of
//! fixed-size entries, one per aborted transaction whose ABORT marker is in the segment,
//! in the order the markers were written (so `last_offset` increases).
//!
//! An entry is 34 bytes, big-endian:
//!
//! ```text
//!  0 version             i16   0
//!  2 producer id         i64
//! 10 first offset        i64   the transaction's first record in this partition
//! 18 last offset         i64   the ABORT marker's offset
//! 26 last stable offset  i64   the partition's LSO once the abort completed
//! ```
//!
//! A read_committed Fetch returns, with its records, the aborted transactions that overlap
//! them ([`collect_aborted`]); the consumer drops those producers' records from the first
//! offset until the marker.

use super::codec::TxnRecordError;

/// Size of one entry.
pub const ABORTED_TXN_BYTES: usize = 34;
/// The only entry version.
pub const ABORTED_TXN_VERSION: i16 = 0;

/// One aborted transaction of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// The offset of the ABORT marker.
    pub last_offset: i64,
    /// The partition's last stable offset right after the abort: the first offset of the
    /// earliest transaction still open, or `last_offset + 1`.
    pub last_stable_offset: i64,
}

impl AbortedTxn {
    pub fn encode(&self) -> [u8; ABORTED_TXN_BYTES] {
        let mut out = [0u8; ABORTED_TXN_BYTES];
        out[0..2].copy_from_slice(&ABORTED_TXN_VERSION.to_be_bytes());
        out[2..10].copy_from_slice(&self.producer_id.to_be_bytes());
        out[10..18].copy_from_slice(&self.first_offset.to_be_bytes());
        out[18..26].copy_from_slice(&self.last_offset.to_be_bytes());
        out[26..34].copy_from_slice(&self.last_stable_offset.to_be_bytes());
        out
    }

    /// Reads one entry from exactly [`ABORTED_TXN_BYTES`] bytes. Kafka refuses entries of
    /// a newer version; so does this (and of a negative one).
    pub fn decode(bytes: &[u8]) -> Result<AbortedTxn, TxnRecordError> {
        if bytes.len() < ABORTED_TXN_BYTES {
            return Err(TxnRecordError::Truncated {
                at: bytes.len(),
                needed: ABORTED_TXN_BYTES - bytes.len(),
            });
        }
        if bytes.len() > ABORTED_TXN_BYTES {
            return Err(TxnRecordError::TrailingBytes {
                extra: bytes.len() - ABORTED_TXN_BYTES,
            });
        }
        let version = i16::from_be_bytes([bytes[0], bytes[1]]);
        if version != ABORTED_TXN_VERSION {
            return Err(TxnRecordError::UnknownVersion {
                what: "aborted transaction index entry",
                version,
            });
        }
        let i64_at = |at: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&bytes[at..at + 8]);
            i64::from_be_bytes(raw)
        };
        Ok(AbortedTxn {
            producer_id: i64_at(2),
            first_offset: i64_at(10),
            last_offset: i64_at(18),
            last_stable_offset: i64_at(26),
        })
    }
}

/// Reads the entries of an index file's bytes in order. A torn tail (fewer than 34 bytes
/// left) is reported as a last `Truncated` error, so the caller can cut it off; reading
/// stops after the first error.
pub fn decode_entries(
    bytes: &[u8],
) -> impl Iterator<Item = Result<AbortedTxn, TxnRecordError>> + '_ {
    let mut at = 0usize;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || at >= bytes.len() {
            return None;
        }
        let end = (at + ABORTED_TXN_BYTES).min(bytes.len());
        let entry = AbortedTxn::decode(&bytes[at..end]).map_err(|e| match e {
            TxnRecordError::Truncated { needed, .. } => TxnRecordError::Truncated {
                at: bytes.len(),
                needed,
            },
            other => other,
        });
        failed = entry.is_err();
        at = end;
        Some(entry)
    })
}

/// What one index answered for a fetch range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnIndexSearch {
    /// The aborted transactions overlapping `[fetch_offset, upper_bound_offset)`.
    pub aborted: Vec<AbortedTxn>,
    /// True when no later index can hold another overlapping transaction, so the search
    /// across segments may stop here.
    pub complete: bool,
}

/// Kafka's search of one segment's index: every aborted transaction with
/// `last_offset >= fetch_offset` and `first_offset < upper_bound_offset`. The search is
/// complete at the first entry whose `last_stable_offset >= upper_bound_offset`: when that
/// abort completed, every transaction starting below the bound was already decided, so
/// later entries (later markers) can only be for transactions starting at or above it.
pub fn collect_aborted<'a>(
    entries: impl IntoIterator<Item = &'a AbortedTxn>,
    fetch_offset: i64,
    upper_bound_offset: i64,
) -> TxnIndexSearch {
    let mut out = TxnIndexSearch::default();
    for entry in entries {
        if entry.last_offset >= fetch_offset && entry.first_offset < upper_bound_offset {
            out.aborted.push(*entry);
        }
        if entry.last_stable_offset >= upper_bound_offset {
            out.complete = true;
            return out;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn entry_bytes_match_kafka() {
        let e = AbortedTxn {
            producer_id: 1,
            first_offset: 2,
            last_offset: 3,
            last_stable_offset: 4,
        };
        let bytes = e.encode();
        let mut expect = vec![0, 0];
        for v in [1i64, 2, 3, 4] {
            expect.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(&bytes[..], &expect[..]);
        assert_eq!(bytes.len(), 34);
        assert_eq!(AbortedTxn::decode(&bytes).unwrap(), e);
    }

    #[test]
    fn wrong_lengths_and_versions_are_errors() {
        let e = AbortedTxn {
            producer_id: 1,
            first_offset: 2,
            last_offset: 3,
            last_stable_offset: 4,
        }
        .encode();
        assert!(matches!(
            AbortedTxn::decode(&e[..33]),
            Err(TxnRecordError::Truncated { needed: 1, .. })
        ));
        let mut long = e.to_vec();
        long.push(0);
        assert!(matches!(
            AbortedTxn::decode(&long),
            Err(TxnRecordError::TrailingBytes { extra: 1 })
        ));
        let mut v1 = e;
        v1[1] = 1;
        assert!(matches!(
            AbortedTxn::decode(&v1),
            Err(TxnRecordError::UnknownVersion { version: 1, .. })
        ));
    }

    #[test]
    fn a_torn_tail_ends_the_entries_with_an_error() {
        let a = AbortedTxn {
            producer_id: 1,
            first_offset: 0,
            last_offset: 5,
            last_stable_offset: 6,
        };
        let mut file = a.encode().to_vec();
        file.extend_from_slice(&a.encode()[..10]);
        let read: Vec<_> = decode_entries(&file).collect();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0], Ok(a));
        assert!(matches!(read[1], Err(TxnRecordError::Truncated { .. })));
        assert_eq!(decode_entries(&[]).count(), 0);
    }

    #[test]
    fn search_stops_at_an_entry_whose_lso_covers_the_bound() {
        let entries = [
            AbortedTxn {
                producer_id: 1,
                first_offset: 0,
                last_offset: 4,
                last_stable_offset: 5,
            },
            AbortedTxn {
                producer_id: 2,
                first_offset: 6,
                last_offset: 9,
                last_stable_offset: 20,
            },
            AbortedTxn {
                producer_id: 3,
                first_offset: 21,
                last_offset: 25,
                last_stable_offset: 26,
            },
        ];
        let s = collect_aborted(&entries, 3, 10);
        assert_eq!(s.aborted, entries[..2].to_vec());
        assert!(s.complete);
        let s = collect_aborted(&entries, 5, 30);
        assert_eq!(s.aborted, entries[1..].to_vec());
        assert!(!s.complete);
    }

    proptest! {
        #[test]
        fn entries_round_trip(pid in any::<i64>(), first in any::<i64>(), last in any::<i64>(), lso in any::<i64>()) {
            let e = AbortedTxn { producer_id: pid, first_offset: first, last_offset: last, last_stable_offset: lso };
            prop_assert_eq!(AbortedTxn::decode(&e.encode()).unwrap(), e);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let n = decode_entries(&bytes).count();
            prop_assert!(n <= bytes.len() / ABORTED_TXN_BYTES + 1);
            let _ = AbortedTxn::decode(&bytes);
        }
    }
}
