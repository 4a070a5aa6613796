//! Record formats of Kafka's internal `__transaction_state` topic, byte for byte as Kafka
//! writes them (Kafka's `TransactionLogKey.json` and `TransactionLogValue.json`), so that
//! tools reading the topic (`kafka-dump-log --transaction-log-decoder`, a console consumer
//! with the transaction log formatter) understand what Wharf stored, and a coordinator can
//! rebuild its state from it.
//!
//! Every key and value starts with a big-endian `int16` schema version:
//! - key v0: `(transactional id)`;
//! - value v0: producer id, epoch, timeout, state, partitions (nullable), last update and
//!   start timestamps. Kafka 3.9 writes v0 (and so does Wharf: readers from Kafka 2.x on
//!   understand it);
//! - value v1 (KIP-915, flexible): the same fields with compact strings and arrays, plus
//!   tagged fields Kafka 4.0 defines: 0 `PreviousProducerId`, 1 `NextProducerId`, 2
//!   `ClientTransactionVersion`. Read, and written when asked for.
//!
//! A record with a null value is a tombstone: the transactional id expired.

use bytes::Bytes;

use super::codec::{Reader, TxnRecordError, Writer};

/// Kafka's name for the internal topic holding transaction state.
pub const TRANSACTION_STATE_TOPIC_NAME: &str = "__transaction_state";

/// `transaction.state.log.num.partitions`: Kafka's default partition count of the topic.
pub const TRANSACTION_STATE_DEFAULT_PARTITIONS: u32 = 50;

/// The value version Kafka 3.9 writes (and Kafka 4.x while `transaction.version` is 0).
pub const TRANSACTION_LOG_VALUE_VERSION: i16 = 0;

/// The highest value version this code reads.
pub const TRANSACTION_LOG_VALUE_MAX_VERSION: i16 = 1;

/// The `__transaction_state` partition of a transactional id: Kafka's
/// `Utils.abs(transactionalId.hashCode) % partitions`, the same rule as for groups.
pub fn partition_for_transactional_id(transactional_id: &str, partitions: u32) -> i32 {
    crate::offsets_topic::partition_for_group(transactional_id, partitions)
}

/// A transactional id's state, with Kafka's numbering (stored as an `int8`) and names
/// (shown by DescribeTransactions and ListTransactions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TransactionState {
    /// No transaction open (just initialized, or the previous one was completed and the
    /// producer called InitProducerId again).
    Empty,
    /// Partitions (or a group's offsets) were added; the transaction is open.
    Ongoing,
    /// EndTxn(commit) was logged; COMMIT markers are being written.
    PrepareCommit,
    /// EndTxn(abort), a timeout or a fencing InitProducerId was logged; ABORT markers are
    /// being written.
    PrepareAbort,
    /// Every partition has its COMMIT marker.
    CompleteCommit,
    /// Every partition has its ABORT marker.
    CompleteAbort,
    /// The transactional id expired and is being removed.
    Dead,
    /// An InitProducerId is fencing the current producer (a transient state, never logged
    /// by Kafka, but part of the numbering).
    PrepareEpochFence,
}

impl TransactionState {
    pub const ALL: [TransactionState; 8] = [
        TransactionState::Empty,
        TransactionState::Ongoing,
        TransactionState::PrepareCommit,
        TransactionState::PrepareAbort,
        TransactionState::CompleteCommit,
        TransactionState::CompleteAbort,
        TransactionState::Dead,
        TransactionState::PrepareEpochFence,
    ];

    /// The `int8` Kafka stores in `TransactionStatus`.
    pub fn id(self) -> i8 {
        match self {
            TransactionState::Empty => 0,
            TransactionState::Ongoing => 1,
            TransactionState::PrepareCommit => 2,
            TransactionState::PrepareAbort => 3,
            TransactionState::CompleteCommit => 4,
            TransactionState::CompleteAbort => 5,
            TransactionState::Dead => 6,
            TransactionState::PrepareEpochFence => 7,
        }
    }

    pub fn from_id(id: i8) -> Option<TransactionState> {
        TransactionState::ALL.into_iter().find(|s| s.id() == id)
    }

    /// Kafka's name for the state, as DescribeTransactions and ListTransactions show it.
    pub fn name(self) -> &'static str {
        match self {
            TransactionState::Empty => "Empty",
            TransactionState::Ongoing => "Ongoing",
            TransactionState::PrepareCommit => "PrepareCommit",
            TransactionState::PrepareAbort => "PrepareAbort",
            TransactionState::CompleteCommit => "CompleteCommit",
            TransactionState::CompleteAbort => "CompleteAbort",
            TransactionState::Dead => "Dead",
            TransactionState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    /// The state named `name` exactly (Kafka's ListTransactions filter is case-sensitive).
    pub fn from_name(name: &str) -> Option<TransactionState> {
        TransactionState::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A `__transaction_state` record key (v0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionLogKey {
    pub transactional_id: String,
}

impl TransactionLogKey {
    /// Fails, rather than writing a key Kafka could not read, when the id is longer than
    /// the schema's 16-bit string length.
    pub fn encode(&self) -> Result<Bytes, TxnRecordError> {
        let mut w = Writer::default();
        w.i16(0);
        w.string("transactional id", &self.transactional_id, false)?;
        Ok(w.finish())
    }

    /// An unknown version is an error the caller may skip, as Kafka's loader does (a key
    /// from a newer broker that was downgraded).
    pub fn decode(bytes: &[u8]) -> Result<TransactionLogKey, TxnRecordError> {
        let mut r = Reader::new(bytes);
        let version = r.i16()?;
        if version != 0 {
            return Err(TxnRecordError::UnknownVersion {
                what: "transaction log key",
                version,
            });
        }
        let transactional_id = r.string(false)?;
        r.end()?;
        Ok(TransactionLogKey { transactional_id })
    }
}

/// The partitions of one topic in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnTopicPartitions {
    pub topic: String,
    pub partitions: Vec<i32>,
}

/// A `__transaction_state` record value (v0–v1): the whole state of one transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionLogValue {
    pub version: i16,
    pub producer_id: i64,
    /// v1 tag 0 (Kafka 4.0): the producer id of the last committed transaction; -1 if none.
    pub previous_producer_id: i64,
    /// v1 tag 1 (Kafka 4.0): the producer id last handed to the producer; -1 if none.
    pub next_producer_id: i64,
    pub producer_epoch: i16,
    pub transaction_timeout_ms: i32,
    pub state: TransactionState,
    /// The partitions in the transaction; Kafka writes null for `Empty`.
    pub partitions: Option<Vec<TxnTopicPartitions>>,
    pub last_update_timestamp_ms: i64,
    /// When the transaction started (its first AddPartitions); -1 when none is open.
    pub start_timestamp_ms: i64,
    /// v1 tag 2 (Kafka 4.0): the `transaction.version` the client used; 0 by default.
    pub client_transaction_version: i16,
}

/// The fewest bytes a topic entry takes in a value: its name's length, the partition
/// array's length and (flexible) its tagged-field count.
const MIN_TOPIC_BYTES_V0: usize = 2 + 4;
const MIN_TOPIC_BYTES_V1: usize = 1 + 1 + 1;

const TAG_PREVIOUS_PRODUCER_ID: u64 = 0;
const TAG_NEXT_PRODUCER_ID: u64 = 1;
const TAG_CLIENT_TRANSACTION_VERSION: u64 = 2;

impl TransactionLogValue {
    /// Encode at `self.version`. v0 has no tagged fields: the three v1-only fields are not
    /// written. Fails when a topic name or a count does not fit the schema.
    pub fn encode(&self) -> Result<Bytes, TxnRecordError> {
        let v = self.version;
        if !(0..=TRANSACTION_LOG_VALUE_MAX_VERSION).contains(&v) {
            return Err(TxnRecordError::UnknownVersion {
                what: "transaction log value",
                version: v,
            });
        }
        let flexible = v >= 1;
        let mut w = Writer::default();
        w.i16(v);
        w.i64(self.producer_id);
        w.i16(self.producer_epoch);
        w.i32(self.transaction_timeout_ms);
        w.i8(self.state.id());
        w.array_len(
            "transaction partitions",
            self.partitions.as_ref().map(Vec::len),
            flexible,
        )?;
        for topic in self.partitions.iter().flatten() {
            w.string("topic", &topic.topic, flexible)?;
            w.array_len("partition ids", Some(topic.partitions.len()), flexible)?;
            for p in &topic.partitions {
                w.i32(*p);
            }
            if flexible {
                w.uvarint(0);
            }
        }
        w.i64(self.last_update_timestamp_ms);
        w.i64(self.start_timestamp_ms);
        if flexible {
            // Tagged fields in tag order, each only when it differs from its default.
            let mut tagged: Vec<(u64, Vec<u8>)> = Vec::new();
            if self.previous_producer_id != -1 {
                tagged.push((
                    TAG_PREVIOUS_PRODUCER_ID,
                    self.previous_producer_id.to_be_bytes().to_vec(),
                ));
            }
            if self.next_producer_id != -1 {
                tagged.push((
                    TAG_NEXT_PRODUCER_ID,
                    self.next_producer_id.to_be_bytes().to_vec(),
                ));
            }
            if self.client_transaction_version != 0 {
                tagged.push((
                    TAG_CLIENT_TRANSACTION_VERSION,
                    self.client_transaction_version.to_be_bytes().to_vec(),
                ));
            }
            w.uvarint(tagged.len() as u64);
            for (tag, data) in tagged {
                w.uvarint(tag);
                w.uvarint(data.len() as u64);
                w.raw(&data);
            }
        }
        Ok(w.finish())
    }

    pub fn decode(bytes: &[u8]) -> Result<TransactionLogValue, TxnRecordError> {
        let mut r = Reader::new(bytes);
        let version = r.i16()?;
        if !(0..=TRANSACTION_LOG_VALUE_MAX_VERSION).contains(&version) {
            return Err(TxnRecordError::UnknownVersion {
                what: "transaction log value",
                version,
            });
        }
        let flexible = version >= 1;
        let producer_id = r.i64()?;
        let producer_epoch = r.i16()?;
        let transaction_timeout_ms = r.i32()?;
        let state_at = r.at();
        let state = TransactionState::from_id(r.i8()?).ok_or(TxnRecordError::Invalid {
            what: "transaction status",
            at: state_at,
        })?;
        let min_topic_bytes = if flexible {
            MIN_TOPIC_BYTES_V1
        } else {
            MIN_TOPIC_BYTES_V0
        };
        let partitions = match r.array_len(flexible, min_topic_bytes)? {
            None => None,
            Some(count) => {
                let mut topics = Vec::with_capacity(count);
                for _ in 0..count {
                    let topic = r.string(flexible)?;
                    let at = r.at();
                    let n = r.array_len(flexible, 4)?.ok_or(TxnRecordError::Invalid {
                        what: "null partition ids",
                        at,
                    })?;
                    let mut partitions = Vec::with_capacity(n);
                    for _ in 0..n {
                        partitions.push(r.i32()?);
                    }
                    if flexible {
                        r.tagged_fields(|_, _, _| Ok(()))?;
                    }
                    topics.push(TxnTopicPartitions { topic, partitions });
                }
                Some(topics)
            }
        };
        let last_update_timestamp_ms = r.i64()?;
        let start_timestamp_ms = r.i64()?;
        let mut value = TransactionLogValue {
            version,
            producer_id,
            previous_producer_id: -1,
            next_producer_id: -1,
            producer_epoch,
            transaction_timeout_ms,
            state,
            partitions,
            last_update_timestamp_ms,
            start_timestamp_ms,
            client_transaction_version: 0,
        };
        if flexible {
            r.tagged_fields(|tag, data, at| {
                let bad = TxnRecordError::Invalid {
                    what: "tagged field size",
                    at,
                };
                match tag {
                    TAG_PREVIOUS_PRODUCER_ID | TAG_NEXT_PRODUCER_ID => {
                        let raw: [u8; 8] = data.try_into().map_err(|_| bad)?;
                        if tag == TAG_PREVIOUS_PRODUCER_ID {
                            value.previous_producer_id = i64::from_be_bytes(raw);
                        } else {
                            value.next_producer_id = i64::from_be_bytes(raw);
                        }
                    }
                    TAG_CLIENT_TRANSACTION_VERSION => {
                        let raw: [u8; 2] = data.try_into().map_err(|_| bad)?;
                        value.client_transaction_version = i16::from_be_bytes(raw);
                    }
                    // Fields a newer version added: skipped, as Kafka's readers do.
                    _ => {}
                }
                Ok(())
            })?;
        }
        // KIP-915: readers accept (and ignore) trailing bytes from newer versions.
        Ok(value)
    }
}

/// A decoded `__transaction_state` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionLogRecord {
    pub transactional_id: String,
    /// `None` is a tombstone: the transactional id expired.
    pub value: Option<TransactionLogValue>,
}

impl TransactionLogRecord {
    /// Decode a record's key and (nullable) value.
    pub fn decode(
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<TransactionLogRecord, TxnRecordError> {
        let key = TransactionLogKey::decode(key)?;
        let value = value.map(TransactionLogValue::decode).transpose()?;
        Ok(TransactionLogRecord {
            transactional_id: key.transactional_id,
            value,
        })
    }

    /// The key and (nullable) value as Kafka writes them.
    pub fn encode(&self) -> Result<(Bytes, Option<Bytes>), TxnRecordError> {
        let key = TransactionLogKey {
            transactional_id: self.transactional_id.clone(),
        }
        .encode()?;
        let value = self.value.as_ref().map(|v| v.encode()).transpose()?;
        Ok((key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_v0() -> TransactionLogValue {
        TransactionLogValue {
            version: 0,
            producer_id: 1000,
            previous_producer_id: -1,
            next_producer_id: -1,
            producer_epoch: 3,
            transaction_timeout_ms: 60_000,
            state: TransactionState::Ongoing,
            partitions: Some(vec![TxnTopicPartitions {
                topic: "t".into(),
                partitions: vec![0, 2],
            }]),
            last_update_timestamp_ms: 9,
            start_timestamp_ms: 8,
            client_transaction_version: 0,
        }
    }

    #[test]
    fn key_bytes_match_kafka() {
        let key = TransactionLogKey {
            transactional_id: "tx".into(),
        };
        assert_eq!(&key.encode().unwrap()[..], &[0, 0, 0, 2, b't', b'x']);
        assert_eq!(
            TransactionLogKey::decode(&[0, 0, 0, 2, b't', b'x']).unwrap(),
            key
        );
    }

    #[test]
    fn value_v0_bytes_match_kafka() {
        let mut e = vec![0, 0];
        e.extend_from_slice(&1000i64.to_be_bytes());
        e.extend_from_slice(&3i16.to_be_bytes());
        e.extend_from_slice(&60_000i32.to_be_bytes());
        e.push(1); // Ongoing
        e.extend_from_slice(&1i32.to_be_bytes()); // one topic
        e.extend_from_slice(&[0, 1, b't']);
        e.extend_from_slice(&2i32.to_be_bytes());
        e.extend_from_slice(&0i32.to_be_bytes());
        e.extend_from_slice(&2i32.to_be_bytes());
        e.extend_from_slice(&9i64.to_be_bytes());
        e.extend_from_slice(&8i64.to_be_bytes());
        assert_eq!(&sample_v0().encode().unwrap()[..], &e[..]);
        assert_eq!(TransactionLogValue::decode(&e).unwrap(), sample_v0());
    }

    #[test]
    fn empty_state_writes_null_partitions() {
        let v = TransactionLogValue {
            state: TransactionState::Empty,
            partitions: None,
            ..sample_v0()
        };
        let bytes = v.encode().unwrap();
        // version, pid, epoch, timeout, status, then int32 -1 for the null array.
        assert_eq!(&bytes[17..21], &(-1i32).to_be_bytes());
        assert_eq!(TransactionLogValue::decode(&bytes).unwrap(), v);
    }

    #[test]
    fn value_v1_bytes_match_kafka_with_tagged_fields() {
        let v = TransactionLogValue {
            version: 1,
            previous_producer_id: 7,
            client_transaction_version: 2,
            ..sample_v0()
        };
        let mut e = vec![0, 1];
        e.extend_from_slice(&1000i64.to_be_bytes());
        e.extend_from_slice(&3i16.to_be_bytes());
        e.extend_from_slice(&60_000i32.to_be_bytes());
        e.push(1);
        e.push(2); // compact array: one topic
        e.extend_from_slice(&[2, b't']);
        e.push(3); // two partitions
        e.extend_from_slice(&0i32.to_be_bytes());
        e.extend_from_slice(&2i32.to_be_bytes());
        e.push(0); // topic's tagged fields
        e.extend_from_slice(&9i64.to_be_bytes());
        e.extend_from_slice(&8i64.to_be_bytes());
        e.push(2); // two tagged fields
        e.extend_from_slice(&[0, 8]);
        e.extend_from_slice(&7i64.to_be_bytes());
        e.extend_from_slice(&[2, 2, 0, 2]);
        assert_eq!(&v.encode().unwrap()[..], &e[..]);
        assert_eq!(TransactionLogValue::decode(&e).unwrap(), v);
    }

    #[test]
    fn unknown_tagged_fields_are_skipped() {
        let v = TransactionLogValue {
            version: 1,
            ..sample_v0()
        };
        let mut bytes = v.encode().unwrap().to_vec();
        assert_eq!(bytes.pop(), Some(0)); // no tagged fields
        bytes.extend_from_slice(&[1, 9, 3, 1, 2, 3]); // tag 9, three bytes
        assert_eq!(TransactionLogValue::decode(&bytes).unwrap(), v);
    }

    #[test]
    fn a_known_tag_of_the_wrong_size_is_an_error() {
        let v = TransactionLogValue {
            version: 1,
            ..sample_v0()
        };
        let mut bytes = v.encode().unwrap().to_vec();
        bytes.pop();
        bytes.extend_from_slice(&[1, 0, 2, 1, 2]);
        assert!(matches!(
            TransactionLogValue::decode(&bytes),
            Err(TxnRecordError::Invalid { .. })
        ));
    }

    #[test]
    fn unknown_versions_and_states_are_errors() {
        assert!(matches!(
            TransactionLogKey::decode(&[0, 1, 0, 0]),
            Err(TxnRecordError::UnknownVersion { .. })
        ));
        let mut bytes = sample_v0().encode().unwrap().to_vec();
        bytes[1] = 2;
        assert!(matches!(
            TransactionLogValue::decode(&bytes),
            Err(TxnRecordError::UnknownVersion { .. })
        ));
        let mut bytes = sample_v0().encode().unwrap().to_vec();
        bytes[16] = 8; // no such state
        assert!(matches!(
            TransactionLogValue::decode(&bytes),
            Err(TxnRecordError::Invalid {
                what: "transaction status",
                ..
            })
        ));
    }

    #[test]
    fn huge_counts_are_rejected_without_allocating() {
        let mut bytes = sample_v0().encode().unwrap().to_vec();
        bytes[17..21].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            TransactionLogValue::decode(&bytes),
            Err(TxnRecordError::Invalid { .. })
        ));
    }

    #[test]
    fn an_id_too_long_for_the_schema_is_not_encoded() {
        let key = TransactionLogKey {
            transactional_id: "x".repeat(40_000),
        };
        assert!(matches!(key.encode(), Err(TxnRecordError::TooLong { .. })));
    }

    #[test]
    fn state_names_and_ids_round_trip() {
        for s in TransactionState::ALL {
            assert_eq!(TransactionState::from_id(s.id()), Some(s));
            assert_eq!(TransactionState::from_name(s.name()), Some(s));
        }
        assert_eq!(TransactionState::from_name("ongoing"), None);
    }

    #[test]
    fn tombstones_decode_as_none() {
        let key = TransactionLogKey {
            transactional_id: "a".into(),
        }
        .encode()
        .unwrap();
        let r = TransactionLogRecord::decode(&key, None).unwrap();
        assert_eq!(r.value, None);
        assert_eq!(r.transactional_id, "a");
    }

    #[test]
    fn partition_matches_the_group_rule() {
        // Kafka places transactional ids exactly as it places groups.
        assert_eq!(partition_for_transactional_id("polygenelubricants", 50), 0);
        assert_eq!(
            partition_for_transactional_id("my-txn", 50),
            crate::offsets_topic::partition_for_group("my-txn", 50)
        );
    }

    fn arb_string() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._\\-\u{e9}\u{1F600}]{0,20}"
    }

    fn arb_value() -> impl Strategy<Value = TransactionLogValue> {
        (
            0i16..=1,
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
            any::<i16>(),
            any::<i32>(),
            0usize..8,
            proptest::option::of(proptest::collection::vec(
                (arb_string(), proptest::collection::vec(any::<i32>(), 0..6)),
                0..4,
            )),
            any::<i64>(),
            any::<i64>(),
            any::<i16>(),
        )
            .prop_map(
                |(version, pid, prev, next, epoch, timeout, state, parts, upd, start, ctv)| {
                    let v1 = version >= 1;
                    TransactionLogValue {
                        version,
                        producer_id: pid,
                        previous_producer_id: if v1 { prev } else { -1 },
                        next_producer_id: if v1 { next } else { -1 },
                        producer_epoch: epoch,
                        transaction_timeout_ms: timeout,
                        state: TransactionState::ALL[state],
                        partitions: parts.map(|ts| {
                            ts.into_iter()
                                .map(|(topic, partitions)| TxnTopicPartitions { topic, partitions })
                                .collect()
                        }),
                        last_update_timestamp_ms: upd,
                        start_timestamp_ms: start,
                        client_transaction_version: if v1 { ctv } else { 0 },
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn keys_round_trip(id in arb_string()) {
            let key = TransactionLogKey { transactional_id: id };
            prop_assert_eq!(TransactionLogKey::decode(&key.encode().unwrap()).unwrap(), key);
        }

        #[test]
        fn values_round_trip(v in arb_value()) {
            prop_assert_eq!(TransactionLogValue::decode(&v.encode().unwrap()).unwrap(), v);
        }

        #[test]
        fn records_round_trip(id in arb_string(), v in proptest::option::of(arb_value())) {
            let record = TransactionLogRecord { transactional_id: id, value: v };
            let (key, value) = record.encode().unwrap();
            prop_assert_eq!(TransactionLogRecord::decode(&key, value.as_deref()).unwrap(), record);
        }

        #[test]
        fn decoders_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = TransactionLogKey::decode(&bytes);
            let _ = TransactionLogValue::decode(&bytes);
        }

        #[test]
        fn decoders_never_panic_on_mutated_values(v in arb_value(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
            let mut bytes = v.encode().unwrap().to_vec();
            for (at, b) in flips {
                let n = bytes.len();
                bytes[at % n] = b;
            }
            let _ = TransactionLogValue::decode(&bytes);
        }

        #[test]
        fn truncated_values_are_errors(v in arb_value(), cut in 0usize..400) {
            let bytes = v.encode().unwrap();
            if cut < bytes.len() {
                prop_assert!(TransactionLogValue::decode(&bytes[..cut]).is_err());
            }
        }
    }
}
