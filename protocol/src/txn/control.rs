//! Control records and control batches: the markers a transaction coordinator has the
//! leader of every partition in a transaction append when the transaction ends
//! (WriteTxnMarkers), as Kafka encodes them.
//!
//! A control batch is a RecordBatch v2 with the transactional and control attribute bits
//! set, the producer's id and epoch, base sequence -1 and one record, whose
//! - key is the control record key `(int16 version = 0, int16 type)`, type 0 ABORT or
//!   1 COMMIT (2–6 are KRaft's own control records);
//! - value is the end transaction marker `(int16 version = 0, int32 coordinator epoch)`.
//!
//! Readers follow Kafka's: a key or marker of a newer version is read as version 0 (its
//! first fields keep their meaning), a negative version is corruption, and a control batch
//! whose record was removed by compaction is a marker of nothing.

use crate::batch::{
    records, validate_batch_with, BatchBuilder, BatchError, BatchInfo, Compression, CountRule,
    NO_SEQUENCE,
};

use super::codec::TxnRecordError;

/// Size of a control record key: version and type.
pub const CONTROL_KEY_BYTES: usize = 4;
/// Size of an end transaction marker value (version 0): version and coordinator epoch.
pub const END_TXN_MARKER_VALUE_BYTES: usize = 6;

/// The type in a control record's key (Kafka's `ControlRecordType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlRecordType {
    Abort,
    Commit,
    /// KRaft: a new leader of the metadata log.
    LeaderChange,
    SnapshotHeader,
    SnapshotFooter,
    KraftVersion,
    KraftVoters,
    /// A type this code does not know; readers skip such records, as Kafka's do.
    Unknown(i16),
}

impl ControlRecordType {
    pub fn from_id(id: i16) -> ControlRecordType {
        match id {
            0 => ControlRecordType::Abort,
            1 => ControlRecordType::Commit,
            2 => ControlRecordType::LeaderChange,
            3 => ControlRecordType::SnapshotHeader,
            4 => ControlRecordType::SnapshotFooter,
            5 => ControlRecordType::KraftVersion,
            6 => ControlRecordType::KraftVoters,
            other => ControlRecordType::Unknown(other),
        }
    }

    pub fn id(self) -> i16 {
        match self {
            ControlRecordType::Abort => 0,
            ControlRecordType::Commit => 1,
            ControlRecordType::LeaderChange => 2,
            ControlRecordType::SnapshotHeader => 3,
            ControlRecordType::SnapshotFooter => 4,
            ControlRecordType::KraftVersion => 5,
            ControlRecordType::KraftVoters => 6,
            ControlRecordType::Unknown(id) => id,
        }
    }

    /// The control record key `(version 0, type)`.
    pub fn encode_key(self) -> [u8; CONTROL_KEY_BYTES] {
        let mut key = [0u8; CONTROL_KEY_BYTES];
        key[2..].copy_from_slice(&self.id().to_be_bytes());
        key
    }

    /// Reads a control record key; bytes after the first four are ignored.
    pub fn decode_key(key: &[u8]) -> Result<ControlRecordType, TxnRecordError> {
        if key.len() < CONTROL_KEY_BYTES {
            return Err(TxnRecordError::Truncated {
                at: key.len(),
                needed: CONTROL_KEY_BYTES - key.len(),
            });
        }
        let version = i16::from_be_bytes([key[0], key[1]]);
        if version < 0 {
            return Err(TxnRecordError::Invalid {
                what: "control record key version",
                at: 0,
            });
        }
        Ok(ControlRecordType::from_id(i16::from_be_bytes([
            key[2], key[3],
        ])))
    }
}

/// How a transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TransactionResult {
    Abort,
    Commit,
}

impl TransactionResult {
    pub fn control_type(self) -> ControlRecordType {
        match self {
            TransactionResult::Abort => ControlRecordType::Abort,
            TransactionResult::Commit => ControlRecordType::Commit,
        }
    }

    /// WriteTxnMarkers' `transaction_result` field: true commits.
    pub fn from_committed(committed: bool) -> TransactionResult {
        if committed {
            TransactionResult::Commit
        } else {
            TransactionResult::Abort
        }
    }
}

/// An end transaction marker: the outcome and the epoch of the coordinator that decided it
/// (a partition refuses markers from a coordinator older than the last one it heard).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndTxnMarker {
    pub result: TransactionResult,
    pub coordinator_epoch: i32,
}

impl EndTxnMarker {
    pub fn key(&self) -> [u8; CONTROL_KEY_BYTES] {
        self.result.control_type().encode_key()
    }

    pub fn value(&self) -> [u8; END_TXN_MARKER_VALUE_BYTES] {
        let mut value = [0u8; END_TXN_MARKER_VALUE_BYTES];
        value[2..].copy_from_slice(&self.coordinator_epoch.to_be_bytes());
        value
    }

    /// Reads a marker from a control record's key and value. Fails for a key that is not
    /// ABORT or COMMIT, and for a value too short or of a negative version.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<EndTxnMarker, TxnRecordError> {
        let result = match ControlRecordType::decode_key(key)? {
            ControlRecordType::Abort => TransactionResult::Abort,
            ControlRecordType::Commit => TransactionResult::Commit,
            _ => {
                return Err(TxnRecordError::Invalid {
                    what: "end transaction marker type",
                    at: 2,
                })
            }
        };
        if value.len() < END_TXN_MARKER_VALUE_BYTES {
            return Err(TxnRecordError::Truncated {
                at: value.len(),
                needed: END_TXN_MARKER_VALUE_BYTES - value.len(),
            });
        }
        let version = i16::from_be_bytes([value[0], value[1]]);
        if version < 0 {
            return Err(TxnRecordError::Invalid {
                what: "end transaction marker version",
                at: 0,
            });
        }
        let coordinator_epoch = i32::from_be_bytes([value[2], value[3], value[4], value[5]]);
        Ok(EndTxnMarker {
            result,
            coordinator_epoch,
        })
    }

    /// The control batch a partition leader appends for this marker: base offset 0 (the
    /// log assigns the real one), partition leader epoch -1 (set on append), CreateTime.
    pub fn to_batch(&self, producer_id: i64, producer_epoch: i16, timestamp_ms: i64) -> Vec<u8> {
        let mut builder = BatchBuilder::new()
            .producer(producer_id, producer_epoch, NO_SEQUENCE)
            .transactional(true)
            .control(true);
        builder.push(Some(&self.key()), Some(&self.value()), &[], timestamp_ms);
        builder.build()
    }
}

/// Why a control batch could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlBatchError {
    #[error("not a valid record batch: {0}")]
    Batch(#[from] BatchError),
    #[error("the batch's control attribute is not set")]
    NotControl,
    #[error("a control batch must not be compressed")]
    Compressed,
    #[error("a control record has no key")]
    NullKey,
    #[error("a transaction marker has no value")]
    NullValue,
    #[error("bad control record: {0}")]
    Record(#[from] TxnRecordError),
}

/// What a control batch holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlContent {
    /// A COMMIT or ABORT marker.
    EndTxn(EndTxnMarker),
    /// Another control record (KRaft's, or a type from a newer version).
    Other(ControlRecordType),
    /// No records: compaction removed the marker (its transaction's data is gone too).
    Empty,
}

/// A decoded control batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlBatch {
    pub info: BatchInfo,
    pub content: ControlContent,
}

/// Reads the control batch at the start of `batch`: checks framing and CRC as for any
/// stored batch (compaction may have emptied it), then the first record's key and value.
pub fn decode_control_batch(
    batch: &[u8],
    max_batch_bytes: usize,
) -> Result<ControlBatch, ControlBatchError> {
    let info = validate_batch_with(batch, max_batch_bytes, CountRule::AtMost)?;
    if !info.is_control() {
        return Err(ControlBatchError::NotControl);
    }
    if info.compression != Compression::None {
        return Err(ControlBatchError::Compressed);
    }
    let content = match records(batch)?.next() {
        None => ControlContent::Empty,
        Some(record) => {
            let record = record?;
            let key = record.key.ok_or(ControlBatchError::NullKey)?;
            match ControlRecordType::decode_key(key)? {
                ControlRecordType::Abort | ControlRecordType::Commit => {
                    let value = record.value.ok_or(ControlBatchError::NullValue)?;
                    ControlContent::EndTxn(EndTxnMarker::decode(key, value)?)
                }
                other => ControlContent::Other(other),
            }
        }
    };
    Ok(ControlBatch { info, content })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{validate_batch, BatchHeader, MAGIC_V2};
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    #[test]
    fn marker_key_and_value_bytes_match_kafka() {
        let m = EndTxnMarker {
            result: TransactionResult::Commit,
            coordinator_epoch: 5,
        };
        assert_eq!(m.key(), [0, 0, 0, 1]);
        assert_eq!(m.value(), [0, 0, 0, 0, 0, 5]);
        let abort = EndTxnMarker {
            result: TransactionResult::Abort,
            coordinator_epoch: -1,
        };
        assert_eq!(abort.key(), [0, 0, 0, 0]);
        assert_eq!(abort.value(), [0, 0, 0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn control_batch_header_is_kafkas() {
        let m = EndTxnMarker {
            result: TransactionResult::Abort,
            coordinator_epoch: 3,
        };
        let batch = m.to_batch(4000, 7, 123);
        let info = validate_batch(&batch, MAX).unwrap();
        assert!(info.is_control() && info.is_transactional());
        assert_eq!(info.attributes, 0b0011_0000);
        assert_eq!(info.producer_id, 4000);
        assert_eq!(info.producer_epoch, 7);
        assert_eq!(info.base_sequence, -1);
        assert_eq!(info.records_count, 1);
        assert_eq!(info.last_offset_delta, 0);
        assert_eq!(info.base_timestamp, 123);
        let header = BatchHeader::view(&batch).unwrap();
        assert_eq!(header.magic(), MAGIC_V2);
        let decoded = decode_control_batch(&batch, MAX).unwrap();
        assert_eq!(decoded.content, ControlContent::EndTxn(m));
    }

    #[test]
    fn newer_versions_read_as_version_zero() {
        let key = [0, 3, 0, 1];
        let value = [0, 9, 0, 0, 0, 2, 0xaa, 0xbb];
        assert_eq!(
            EndTxnMarker::decode(&key, &value).unwrap(),
            EndTxnMarker {
                result: TransactionResult::Commit,
                coordinator_epoch: 2
            }
        );
    }

    #[test]
    fn negative_versions_and_short_values_are_errors() {
        assert!(ControlRecordType::decode_key(&[0xff, 0xff, 0, 0]).is_err());
        assert!(ControlRecordType::decode_key(&[0, 0, 0]).is_err());
        assert!(EndTxnMarker::decode(&[0, 0, 0, 0], &[0, 0, 0, 0, 0]).is_err());
        assert!(EndTxnMarker::decode(&[0, 0, 0, 0], &[0x80, 0, 0, 0, 0, 0]).is_err());
        // A KRaft control type is not an end transaction marker.
        assert!(EndTxnMarker::decode(&[0, 0, 0, 2], &[0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn other_control_types_are_reported_not_refused() {
        let mut b = BatchBuilder::new().control(true);
        b.push(Some(&[0, 0, 0, 2]), Some(&[1, 2, 3]), &[], 0);
        let decoded = decode_control_batch(&b.build(), MAX).unwrap();
        assert_eq!(
            decoded.content,
            ControlContent::Other(ControlRecordType::LeaderChange)
        );
        let mut b = BatchBuilder::new().control(true);
        b.push(Some(&[0, 0, 0x7f, 0]), None, &[], 0);
        let decoded = decode_control_batch(&b.build(), MAX).unwrap();
        assert_eq!(
            decoded.content,
            ControlContent::Other(ControlRecordType::Unknown(0x7f00))
        );
    }

    #[test]
    fn data_batches_and_bad_markers_are_refused() {
        let mut b = BatchBuilder::new().transactional(true);
        b.push(None, Some(b"v"), &[], 0);
        assert_eq!(
            decode_control_batch(&b.build(), MAX),
            Err(ControlBatchError::NotControl)
        );
        let mut b = BatchBuilder::new().control(true);
        b.push(None, Some(&[0, 0, 0, 0, 0, 0]), &[], 0);
        assert_eq!(
            decode_control_batch(&b.build(), MAX),
            Err(ControlBatchError::NullKey)
        );
        let mut b = BatchBuilder::new().control(true);
        b.push(Some(&[0, 0, 0, 1]), None, &[], 0);
        assert_eq!(
            decode_control_batch(&b.build(), MAX),
            Err(ControlBatchError::NullValue)
        );
    }

    #[test]
    fn a_compacted_control_batch_is_empty() {
        // A batch as compaction leaves it once its transaction's data is gone: no records.
        let batch = BatchBuilder::new()
            .control(true)
            .transactional(true)
            .build();
        let decoded = decode_control_batch(&batch, MAX).unwrap();
        assert_eq!(decoded.content, ControlContent::Empty);
    }

    proptest! {
        #[test]
        fn markers_round_trip_through_batches(commit in any::<bool>(), epoch in any::<i32>(), pid in 0i64..i64::MAX, pe in 0i16..i16::MAX, ts in any::<i64>()) {
            let m = EndTxnMarker { result: TransactionResult::from_committed(commit), coordinator_epoch: epoch };
            prop_assert_eq!(EndTxnMarker::decode(&m.key(), &m.value()).unwrap(), m);
            let batch = m.to_batch(pid, pe, ts);
            let decoded = decode_control_batch(&batch, MAX).unwrap();
            prop_assert_eq!(decoded.content, ControlContent::EndTxn(m));
            prop_assert_eq!(decoded.info.producer_id, pid);
            prop_assert_eq!(decoded.info.producer_epoch, pe);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = decode_control_batch(&bytes, MAX);
            let _ = ControlRecordType::decode_key(&bytes);
            if bytes.len() >= 4 {
                let _ = EndTxnMarker::decode(&bytes[..4], &bytes[4..]);
            }
        }

        #[test]
        fn damaged_control_batches_are_errors_not_panics(at in 0usize..200, b in any::<u8>()) {
            let m = EndTxnMarker { result: TransactionResult::Commit, coordinator_epoch: 1 };
            let mut batch = m.to_batch(1, 0, 0);
            let n = batch.len();
            let before = batch[at % n];
            batch[at % n] = b;
            let result = decode_control_batch(&batch, MAX);
            // Bytes outside the CRC (base offset, partition leader epoch) may change freely;
            // anything else must be caught.
            let unprotected = (0..8).contains(&(at % n)) || (12..16).contains(&(at % n));
            if before != b && !unprotected {
                prop_assert!(result.is_err());
            }
        }
    }
}
