//! Idempotent producing (KIP-98): a producer id and epoch from InitProducerId, and a
//! sequence number per partition stamped into every batch.
//!
//! A batch's base sequence is the number of records this producer sent to the partition
//! before it, so the broker can tell a retried batch (a duplicate) from a lost one (a gap,
//! OUT_OF_ORDER_SEQUENCE_NUMBER). Sequences are assigned when a batch is put into a request,
//! in the order requests go out on the one connection, so with at most
//! [`MAX_IN_FLIGHT_IDEMPOTENT`] requests in flight they reach each partition in order.
//!
//! The load generator never retries: a refused batch is counted by its error name and its
//! sequence stays used, so later batches to that partition may be refused as out of order
//! (Kafka's producer would bump its epoch and start again at 0; counting shows the damage).

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, TransactionalId};
use kafka_protocol::protocol::StrBytes;
use wharf_protocol::batch::BatchBuilder;

use crate::conn::Conn;
use crate::stats::kafka_error_name;

/// InitProducerId versions spoken: v0 (KIP-98) to v4 (flexible from v2; v3 adds the producer
/// id and epoch for KIP-360 epoch bumps, sent here as "none").
pub const INIT_PRODUCER_ID_VERSIONS: std::ops::RangeInclusive<i16> = 0..=4;
/// Kafka's limit on `max.in.flight.requests.per.connection` for an idempotent producer: the
/// broker keeps the last 5 batches per producer to recognise duplicates.
pub const MAX_IN_FLIGHT_IDEMPOTENT: usize = 5;
/// `transaction.timeout.ms` the Java producer sends in InitProducerId (its default), which a
/// broker ignores without a transactional id.
pub const TRANSACTION_TIMEOUT_MS: i32 = 60_000;

/// A producer id and epoch the broker handed out.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ProducerIdentity {
    pub producer_id: i64,
    pub producer_epoch: i16,
}

/// Asks the broker for a producer id, with a transactional id or without (then the default
/// is "", which a broker refuses, so none is sent). `Ok(Err((code, name)))` is the broker's
/// refusal by code and Kafka error name, for the caller to count; `Err` means there is no
/// answer to count: the broker does not speak InitProducerId, or the connection failed.
pub async fn init_producer_id(
    conn: &mut Conn,
    transactional_id: Option<&str>,
    transaction_timeout_ms: i32,
    timeout: Duration,
) -> anyhow::Result<Result<ProducerIdentity, (i16, String)>> {
    let version = conn
        .version(ApiKey::InitProducerId, INIT_PRODUCER_ID_VERSIONS)
        .map_err(|e| anyhow!("{e} (--idempotent and --transactional need it)"))?;
    let mut request = InitProducerIdRequest::default();
    request.transactional_id =
        transactional_id.map(|id| TransactionalId(StrBytes::from_string(id.to_string())));
    request.transaction_timeout_ms = transaction_timeout_ms;
    let response = conn
        .call_by(version, &request, Instant::now() + timeout)
        .await
        .with_context(|| format!("InitProducerId v{version} with {}", conn.peer()))?
        .ok_or_else(|| {
            anyhow!(
                "no InitProducerId answer from {} within {} ms",
                conn.peer(),
                timeout.as_millis()
            )
        })?;
    if response.error_code != 0 {
        let code = response.error_code;
        return Ok(Err((code, kafka_error_name(code))));
    }
    Ok(Ok(ProducerIdentity {
        producer_id: response.producer_id.0,
        producer_epoch: response.producer_epoch,
    }))
}

/// Kafka's `DefaultRecordBatch.incrementSequence`: sequences wrap from `i32::MAX` to 0.
pub fn increment_sequence(sequence: i32, increment: i32) -> i32 {
    debug_assert!(sequence >= 0 && increment >= 0);
    if sequence > i32::MAX - increment {
        increment - (i32::MAX - sequence) - 1
    } else {
        sequence + increment
    }
}

/// One producer's identity and the next sequence of each of its partitions (by slot).
#[derive(Debug)]
pub struct Sequencer {
    identity: ProducerIdentity,
    next_sequence: Vec<i32>,
    /// Batches are part of a transaction (attribute bit 4).
    transactional: bool,
}

impl Sequencer {
    /// Every partition starts at sequence 0.
    pub fn new(identity: ProducerIdentity, partitions: usize) -> Sequencer {
        Sequencer {
            identity,
            next_sequence: vec![0; partitions],
            transactional: false,
        }
    }

    /// Every batch stamped from now on is marked transactional.
    pub fn transactional(mut self) -> Sequencer {
        self.transactional = true;
        self
    }

    pub fn identity(&self) -> ProducerIdentity {
        self.identity
    }

    /// Stamps `batch` (about to be sent to the partition in `slot`) with this producer's id,
    /// epoch and the partition's next sequence, and advances that by the batch's records.
    pub fn stamp(&mut self, slot: usize, batch: &mut BatchBuilder) {
        debug_assert!(
            batch.records_count() > 0,
            "only batches with records are sent"
        );
        let next = &mut self.next_sequence[slot];
        let base_sequence = *next;
        *next = increment_sequence(base_sequence, batch.records_count());
        *batch = std::mem::take(batch)
            .producer(
                self.identity.producer_id,
                self.identity.producer_epoch,
                base_sequence,
            )
            .transactional(self.transactional);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    #[test]
    fn sequences_advance_by_record_count_and_wrap_to_zero_like_kafka() {
        assert_eq!(increment_sequence(0, 7), 7);
        assert_eq!(increment_sequence(i32::MAX - 3, 3), i32::MAX);
        assert_eq!(increment_sequence(i32::MAX - 3, 4), 0);
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 10), 8);
    }

    fn batch_of(records: usize, first_value: u8) -> BatchBuilder {
        let mut b = BatchBuilder::new();
        for i in 0..records {
            let v = first_value.wrapping_add(i as u8);
            b.push(
                Some(&[v; 3]),
                Some(&[v; 20]),
                &[],
                1_700_000_000_000 + i as i64,
            );
        }
        b
    }

    #[test]
    fn each_partition_counts_its_own_sequence_from_zero() {
        let identity = ProducerIdentity {
            producer_id: 4242,
            producer_epoch: 3,
        };
        let mut s = Sequencer::new(identity, 2);
        let mut stamped = Vec::new();
        for (slot, records) in [(0, 5), (1, 2), (0, 3), (0, 1), (1, 4)] {
            let mut b = batch_of(records, 0);
            s.stamp(slot, &mut b);
            stamped.push(b.build());
        }
        let header = |bytes: &Vec<u8>| {
            let info = wharf_protocol::batch::validate_batch(bytes, 1 << 20).unwrap();
            (info.producer_id, info.producer_epoch, info.base_sequence)
        };
        let seen: Vec<_> = stamped.iter().map(header).collect();
        assert_eq!(
            seen,
            vec![
                (4242, 3, 0),
                (4242, 3, 0),
                (4242, 3, 5),
                (4242, 3, 8),
                (4242, 3, 2)
            ]
        );
    }

    #[test]
    fn a_stamped_batch_is_byte_for_byte_what_kafka_protocol_writes() {
        let identity = ProducerIdentity {
            producer_id: 0x0102_0304_0506,
            producer_epoch: 7,
        };
        // Near the wrap, so the sequence is a value the broker checks closely.
        let base_sequence = i32::MAX - 10;
        let mut s = Sequencer::new(identity, 3);
        s.next_sequence[2] = base_sequence;
        let mut ours = batch_of(6, 40);
        s.stamp(2, &mut ours);
        assert_eq!(s.next_sequence[2], increment_sequence(base_sequence, 6));
        let ours = ours.build();

        let records: Vec<Record> = (0..6)
            .map(|i| {
                let v = 40u8 + i as u8;
                Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: -1,
                    producer_id: identity.producer_id,
                    producer_epoch: identity.producer_epoch,
                    timestamp_type: TimestampType::Creation,
                    offset: i,
                    sequence: base_sequence.wrapping_add(i as i32),
                    timestamp: 1_700_000_000_000 + i,
                    key: Some(Bytes::from(vec![v; 3])),
                    value: Some(Bytes::from(vec![v; 20])),
                    headers: Default::default(),
                }
            })
            .collect();
        let mut theirs = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut theirs,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        assert_eq!(ours, theirs.to_vec());

        // And the CRC covers the producer fields: kafka-protocol's decoder checks it.
        let decoded = RecordBatchDecoder::decode(&mut Bytes::from(ours.clone())).unwrap();
        assert_eq!(decoded.records[0].producer_id, identity.producer_id);
        assert_eq!(decoded.records[0].sequence, base_sequence);
        let mut damaged = ours;
        damaged[56] ^= 1; // last byte of baseSequence
        assert!(RecordBatchDecoder::decode(&mut Bytes::from(damaged)).is_err());
    }
}
