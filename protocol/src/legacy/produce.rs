//! Produce v0–2: v3 without `transactional_id`; their records are message sets of magic 0
//! (v0–1) or 1 (v2), which the broker converts to v2 batches (see [`crate::message_set`]).
//! Responses: v1 adds `throttle_time_ms` at the end, v2 `log_append_time_ms` per partition.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};

use super::{LegacyError, LegacyRequest, LegacyResponse, Reader, Writer};

/// The highest Produce version this module handles.
pub const MAX_LEGACY_PRODUCE_VERSION: i16 = 2;

/// Smallest encodings: topic = name length + partition count; partition = index + records
/// length.
const MIN_TOPIC_BYTES: usize = 6;
const MIN_PARTITION_BYTES: usize = 8;

impl LegacyRequest for ProduceRequest {
    fn decode_legacy(body: &mut Bytes, version: i16) -> Result<Self, LegacyError> {
        if !(0..=MAX_LEGACY_PRODUCE_VERSION).contains(&version) {
            return Err(LegacyError::Version("Produce", version));
        }
        let mut r = Reader::new(body);
        let mut request = ProduceRequest::default();
        request.acks = r.i16()?;
        request.timeout_ms = r.i32()?;
        let topics = r.array_len(MIN_TOPIC_BYTES)?;
        request.topic_data = r.elements(topics, |r| {
            let mut topic = TopicProduceData::default();
            topic.name = TopicName(r.string()?);
            let partitions = r.array_len(MIN_PARTITION_BYTES)?;
            topic.partition_data = r.elements(partitions, |r| {
                let mut p = PartitionProduceData::default();
                p.index = r.i32()?;
                p.records = r.nullable_bytes()?;
                Ok(p)
            })?;
            Ok(topic)
        })?;
        Ok(request)
    }
}

impl LegacyResponse for ProduceResponse {
    fn encode_legacy(&self, version: i16, out: &mut BytesMut) -> Result<(), LegacyError> {
        if !(0..=MAX_LEGACY_PRODUCE_VERSION).contains(&version) {
            return Err(LegacyError::Version("Produce", version));
        }
        let mut w = Writer::new(out);
        w.array_len(self.responses.len())?;
        for topic in &self.responses {
            w.string(&topic.name.0)?;
            w.array_len(topic.partition_responses.len())?;
            for p in &topic.partition_responses {
                w.i32(p.index);
                w.i16(p.error_code);
                w.i64(p.base_offset);
                if version >= 2 {
                    w.i64(p.log_append_time_ms);
                }
            }
        }
        if version >= 1 {
            w.i32(self.throttle_time_ms);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::Out;
    use super::*;
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::protocol::StrBytes;
    use proptest::prelude::*;

    /// A topic and its (partition, records) entries.
    type Topic<'a> = (&'a str, &'a [(i32, Option<&'a [u8]>)]);

    fn request(acks: i16, topics: &[Topic]) -> Bytes {
        let mut out = Out::new().i16(acks).i32(1500).i32(topics.len() as i32);
        for (name, partitions) in topics {
            out = out.str(name).i32(partitions.len() as i32);
            for (index, records) in partitions.iter() {
                out = out.i32(*index);
                out = match records {
                    Some(r) => out.bytes(r),
                    None => out.i32(-1),
                };
            }
        }
        out.freeze()
    }

    #[test]
    fn decodes_topics_partitions_records_and_acks() {
        let mut body = request(
            -1,
            &[
                ("a", &[(0, Some(b"xyz")), (3, None)]),
                ("bb", &[(1, Some(b""))]),
            ],
        );
        let req = ProduceRequest::decode_legacy(&mut body, 1).expect("decodes");
        assert_eq!(req.acks, -1);
        assert_eq!(req.timeout_ms, 1500);
        assert_eq!(req.transactional_id, None);
        assert_eq!(req.topic_data.len(), 2);
        assert_eq!(req.topic_data[0].name.0.as_str(), "a");
        let p = &req.topic_data[0].partition_data;
        assert_eq!(
            (p[0].index, p[0].records.as_deref()),
            (0, Some(&b"xyz"[..]))
        );
        assert_eq!((p[1].index, p[1].records.as_deref()), (3, None));
        assert_eq!(req.topic_data[1].partition_data[0].index, 1);
    }

    #[test]
    fn huge_counts_are_rejected_before_allocation() {
        let mut body = Out::new().i16(1).i32(0).i32(i32::MAX).freeze();
        assert!(ProduceRequest::decode_legacy(&mut body, 0).is_err());
        let mut body = Out::new()
            .i16(1)
            .i32(0)
            .i32(1)
            .str("t")
            .i32(1)
            .i32(0)
            .i32(1 << 30)
            .freeze();
        assert!(ProduceRequest::decode_legacy(&mut body, 2).is_err());
    }

    #[test]
    fn response_layout_per_version() {
        let mut response = ProduceResponse::default();
        let mut topic = TopicProduceResponse::default();
        topic.name = TopicName(StrBytes::from_static_str("t"));
        let mut p = PartitionProduceResponse::default();
        p.index = 7;
        p.error_code = 35;
        p.base_offset = 42;
        p.log_append_time_ms = 99;
        topic.partition_responses.push(p);
        response.responses.push(topic);
        response.throttle_time_ms = 5;
        let encode = |v| {
            let mut out = BytesMut::new();
            response.encode_legacy(v, &mut out).expect("encodes");
            out.freeze()
        };
        let partition = |v: i16| {
            let mut o = Out::new().i32(1).str("t").i32(1).i32(7).i16(35).i64(42);
            if v >= 2 {
                o = o.i64(99);
            }
            if v >= 1 {
                o = o.i32(5);
            }
            o.freeze()
        };
        for v in 0..=2 {
            assert_eq!(encode(v), partition(v), "v{v}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256), v in 0i16..=2) {
            let _ = ProduceRequest::decode_legacy(&mut Bytes::from(data), v);
        }
    }
}
