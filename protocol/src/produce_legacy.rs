//! Produce v0–v2, which carry message sets of magic 0/1 that this broker does not store.
//!
//! KAFKA-18659: librdkafka turns compression off unless the broker advertises Produce from
//! version 0, so the broker advertises v0 and answers these versions with a per-partition
//! UNSUPPORTED_VERSION, as Kafka 4 does. kafka-protocol only knows Produce v3 and later, so
//! the few fields needed to answer (acks, topic and partition names) are decoded here, with
//! every count bounded by the bytes that could hold it.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The highest Produce version this module handles.
pub const MAX_LEGACY_PRODUCE_VERSION: i16 = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed Produce v0-v2 request: {0}")]
pub struct LegacyProduceError(&'static str);

/// What an answer to a Produce v0–v2 request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyProduceRequest {
    pub acks: i16,
    pub timeout_ms: i32,
    /// Topic name and the partition indexes named under it, in request order.
    pub topics: Vec<(Bytes, Vec<i32>)>,
}

/// Smallest encoding of a topic entry: name length (2) + partition count (4).
const MIN_TOPIC_BYTES: usize = 6;
/// Smallest encoding of a partition entry: index (4) + records length (4).
const MIN_PARTITION_BYTES: usize = 8;

fn need(buf: &Bytes, n: usize) -> Result<(), LegacyProduceError> {
    if buf.remaining() < n {
        Err(LegacyProduceError("truncated"))
    } else {
        Ok(())
    }
}

fn count(buf: &mut Bytes, min_element_bytes: usize) -> Result<usize, LegacyProduceError> {
    need(buf, 4)?;
    let n = buf.get_i32();
    if n < 0 {
        return Err(LegacyProduceError("negative array length"));
    }
    let n = n as usize;
    if n.saturating_mul(min_element_bytes) > buf.remaining() {
        return Err(LegacyProduceError("array length exceeds the request"));
    }
    Ok(n)
}

/// Decodes the body of a Produce v0–v2 request (after the request header).
pub fn decode_legacy_produce_request(
    mut body: Bytes,
) -> Result<LegacyProduceRequest, LegacyProduceError> {
    let buf = &mut body;
    need(buf, 6)?;
    let acks = buf.get_i16();
    let timeout_ms = buf.get_i32();
    let topic_count = count(buf, MIN_TOPIC_BYTES)?;
    let mut topics = Vec::with_capacity(topic_count);
    for _ in 0..topic_count {
        need(buf, 2)?;
        let name_len = buf.get_i16();
        if name_len < 0 {
            return Err(LegacyProduceError("null topic name"));
        }
        need(buf, name_len as usize)?;
        let name = buf.split_to(name_len as usize);
        let partition_count = count(buf, MIN_PARTITION_BYTES)?;
        let mut partitions = Vec::with_capacity(partition_count);
        for _ in 0..partition_count {
            need(buf, MIN_PARTITION_BYTES)?;
            partitions.push(buf.get_i32());
            let records_len = buf.get_i32();
            if records_len > 0 {
                need(buf, records_len as usize)?;
                buf.advance(records_len as usize);
            } else if records_len < -1 {
                return Err(LegacyProduceError("negative records length"));
            }
        }
        topics.push((name, partitions));
    }
    Ok(LegacyProduceRequest {
        acks,
        timeout_ms,
        topics,
    })
}

/// Encodes the body of a Produce v0–v2 response giving every partition of `request` the
/// same `error_code` (offsets -1).
pub fn encode_legacy_produce_response(
    version: i16,
    request: &LegacyProduceRequest,
    error_code: i16,
) -> Bytes {
    debug_assert!((0..=MAX_LEGACY_PRODUCE_VERSION).contains(&version));
    let mut buf = BytesMut::new();
    buf.put_i32(request.topics.len() as i32);
    for (name, partitions) in &request.topics {
        buf.put_i16(name.len() as i16);
        buf.put_slice(name);
        buf.put_i32(partitions.len() as i32);
        for &partition in partitions {
            buf.put_i32(partition);
            buf.put_i16(error_code);
            buf.put_i64(-1); // base_offset
            if version >= 2 {
                buf.put_i64(-1); // log_append_time_ms
            }
        }
    }
    if version >= 1 {
        buf.put_i32(0); // throttle_time_ms
    }
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_request(acks: i16, topics: &[(&str, &[(i32, &[u8])])]) -> Bytes {
        let mut buf = BytesMut::new();
        buf.put_i16(acks);
        buf.put_i32(1500);
        buf.put_i32(topics.len() as i32);
        for (name, partitions) in topics {
            buf.put_i16(name.len() as i16);
            buf.put_slice(name.as_bytes());
            buf.put_i32(partitions.len() as i32);
            for (index, records) in partitions.iter() {
                buf.put_i32(*index);
                buf.put_i32(records.len() as i32);
                buf.put_slice(records);
            }
        }
        buf.freeze()
    }

    #[test]
    fn decodes_topics_partitions_and_acks() {
        let body = encode_request(-1, &[("a", &[(0, b"xyz"), (3, b"")]), ("bb", &[(1, b"q")])]);
        let req = decode_legacy_produce_request(body).expect("decodes");
        assert_eq!(req.acks, -1);
        assert_eq!(req.timeout_ms, 1500);
        assert_eq!(
            req.topics,
            vec![
                (Bytes::from_static(b"a"), vec![0, 3]),
                (Bytes::from_static(b"bb"), vec![1])
            ]
        );
    }

    #[test]
    fn huge_counts_are_rejected_before_allocation() {
        let mut buf = BytesMut::new();
        buf.put_i16(1);
        buf.put_i32(0);
        buf.put_i32(i32::MAX);
        assert!(decode_legacy_produce_request(buf.freeze()).is_err());
    }

    #[test]
    fn response_layout_per_version() {
        let req = LegacyProduceRequest {
            acks: 1,
            timeout_ms: 0,
            topics: vec![(Bytes::from_static(b"t"), vec![7])],
        };
        // topics(4) + name(2+1) + partitions(4) + index(4) + error(2) + base_offset(8)
        assert_eq!(encode_legacy_produce_response(0, &req, 35).len(), 25);
        assert_eq!(encode_legacy_produce_response(1, &req, 35).len(), 29);
        assert_eq!(encode_legacy_produce_response(2, &req, 35).len(), 37);
        let v0 = encode_legacy_produce_response(0, &req, 35);
        assert_eq!(&v0[15..17], &35i16.to_be_bytes());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_legacy_produce_request(Bytes::from(data));
        }
    }
}
