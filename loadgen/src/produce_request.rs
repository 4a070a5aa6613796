//! Produce request bodies (v3–v8) written by hand straight into the connection's write
//! buffer, so each batch is copied once (from its builder) instead of three times (builder
//! → `Bytes` → request struct → buffer). Profiling the load generator with 100-byte records
//! showed those copies as its largest cost.
//!
//! Layout (non-flexible versions; all integers big-endian): transactional_id (nullable
//! string, i16 length; null unless the producer is transactional), acks (i16), timeout_ms (i32), topics (i32 count) of name (string)
//! and partitions (i32 count) of index (i32) and records (nullable bytes, i32 length).

use anyhow::{bail, ensure};

/// Produce versions this encoder writes: v3 is the first with RecordBatch v2; v9 is the first
/// flexible (tagged-field) version, which this encoder does not write.
pub const PRODUCE_VERSIONS: std::ops::RangeInclusive<i16> = 3..=8;

/// Writes everything up to the first partition of a one-topic Produce body.
pub fn put_produce_head(
    buf: &mut Vec<u8>,
    version: i16,
    transactional_id: Option<&str>,
    acks: i16,
    timeout_ms: i32,
    topic: &str,
    partitions: usize,
) -> anyhow::Result<()> {
    if !PRODUCE_VERSIONS.contains(&version) {
        bail!("Produce v{version} is not written by hand");
    }
    let name_len = i16::try_from(topic.len())?;
    ensure!(name_len >= 0, "topic name too long");
    match transactional_id {
        None => buf.extend_from_slice(&(-1i16).to_be_bytes()),
        Some(id) => {
            let len = i16::try_from(id.len())?;
            ensure!(len >= 0, "transactional id too long");
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(id.as_bytes());
        }
    }
    buf.extend_from_slice(&acks.to_be_bytes());
    buf.extend_from_slice(&timeout_ms.to_be_bytes());
    buf.extend_from_slice(&1i32.to_be_bytes()); // one topic
    buf.extend_from_slice(&name_len.to_be_bytes());
    buf.extend_from_slice(topic.as_bytes());
    buf.extend_from_slice(&i32::try_from(partitions)?.to_be_bytes());
    Ok(())
}

/// Writes a partition's index and the length of its records; the caller appends exactly
/// `records_len` bytes of record batches next.
pub fn put_partition_head(
    buf: &mut Vec<u8>,
    partition: i32,
    records_len: usize,
) -> anyhow::Result<()> {
    buf.extend_from_slice(&partition.to_be_bytes());
    buf.extend_from_slice(&i32::try_from(records_len)?.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::ProduceRequest;
    use kafka_protocol::protocol::{Decodable, Encodable};
    use wharf_protocol::batch::simple_batch;

    fn by_hand(version: i16, txn: Option<&str>, batches: &[Vec<u8>]) -> Vec<u8> {
        let mut buf = Vec::new();
        put_produce_head(&mut buf, version, txn, -1, 1500, "topic-x", batches.len()).unwrap();
        for (i, b) in batches.iter().enumerate() {
            put_partition_head(&mut buf, i as i32 * 3, b.len()).unwrap();
            buf.extend_from_slice(b);
        }
        buf
    }

    #[test]
    fn hand_encoding_is_byte_for_byte_what_kafka_protocol_writes() {
        let batches = vec![simple_batch(3, 10, 1), simple_batch(1, 50, 2)];
        for (version, txn) in PRODUCE_VERSIONS.flat_map(|v| [(v, None), (v, Some("txn-7"))]) {
            let mut topic = TopicProduceData::default();
            topic.name = crate::admin::topic_name("topic-x");
            topic.partition_data = batches
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let mut d = PartitionProduceData::default();
                    d.index = i as i32 * 3;
                    d.records = Some(Bytes::from(b.clone()));
                    d
                })
                .collect();
            let mut request = ProduceRequest::default();
            request.transactional_id = txn.map(|id| {
                kafka_protocol::messages::TransactionalId(
                    kafka_protocol::protocol::StrBytes::from_static_str(id),
                )
            });
            request.acks = -1;
            request.timeout_ms = 1500;
            request.topic_data = vec![topic];
            let mut expected = Vec::new();
            request.encode(&mut expected, version).unwrap();
            let ours = by_hand(version, txn, &batches);
            assert_eq!(ours, expected, "v{version}");
            let decoded = ProduceRequest::decode(&mut Bytes::from(ours), version).unwrap();
            assert_eq!(decoded, request, "v{version}");
        }
    }

    #[test]
    fn flexible_versions_are_refused() {
        assert!(put_produce_head(&mut Vec::new(), 9, None, 1, 1, "t", 1).is_err());
        assert!(put_produce_head(&mut Vec::new(), 2, None, 1, 1, "t", 1).is_err());
    }
}
