//! OffsetForLeaderEpoch v0–1: v2 without `current_leader_epoch`. Responses: v0 has no
//! `leader_epoch` per partition, v1 adds it; neither has `throttle_time_ms` (v2).

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    BrokerId, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, TopicName,
};

use super::{LegacyError, LegacyRequest, LegacyResponse, Reader, Writer};

/// Smallest encodings: topic = name length + partition count; partition = index + epoch.
const MIN_TOPIC_BYTES: usize = 6;
const MIN_PARTITION_BYTES: usize = 8;

fn check(version: i16) -> Result<(), LegacyError> {
    if (0..=1).contains(&version) {
        Ok(())
    } else {
        Err(LegacyError::Version("OffsetForLeaderEpoch", version))
    }
}

impl LegacyRequest for OffsetForLeaderEpochRequest {
    fn decode_legacy(body: &mut Bytes, version: i16) -> Result<Self, LegacyError> {
        check(version)?;
        let mut r = Reader::new(body);
        let mut request = OffsetForLeaderEpochRequest::default();
        // v3 added the field; before it the requester was a consumer (-1 by Kafka's rule).
        request.replica_id = BrokerId(-1);
        let topics = r.array_len(MIN_TOPIC_BYTES)?;
        request.topics = r.elements(topics, |r| {
            let mut topic = OffsetForLeaderTopic::default();
            topic.topic = TopicName(r.string()?);
            let partitions = r.array_len(MIN_PARTITION_BYTES)?;
            topic.partitions = r.elements(partitions, |r| {
                let mut p = OffsetForLeaderPartition::default();
                p.partition = r.i32()?;
                p.current_leader_epoch = -1;
                p.leader_epoch = r.i32()?;
                Ok(p)
            })?;
            Ok(topic)
        })?;
        Ok(request)
    }
}

impl LegacyResponse for OffsetForLeaderEpochResponse {
    fn encode_legacy(&self, version: i16, out: &mut BytesMut) -> Result<(), LegacyError> {
        check(version)?;
        let mut w = Writer::new(out);
        w.array_len(self.topics.len())?;
        for topic in &self.topics {
            w.string(&topic.topic.0)?;
            w.array_len(topic.partitions.len())?;
            for p in &topic.partitions {
                w.i16(p.error_code);
                w.i32(p.partition);
                if version >= 1 {
                    w.i32(p.leader_epoch);
                }
                w.i64(p.end_offset);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::Out;
    use super::*;
    use kafka_protocol::messages::offset_for_leader_epoch_response::{
        EpochEndOffset, OffsetForLeaderTopicResult,
    };
    use kafka_protocol::protocol::StrBytes;
    use proptest::prelude::*;

    #[test]
    fn request_and_response_per_version() {
        let mut body = Out::new().i32(1).str("t").i32(1).i32(2).i32(0).freeze();
        let req = OffsetForLeaderEpochRequest::decode_legacy(&mut body, 0).expect("decodes");
        assert_eq!(req.topics[0].topic.0.as_str(), "t");
        assert_eq!(
            (
                req.topics[0].partitions[0].partition,
                req.topics[0].partitions[0].leader_epoch
            ),
            (2, 0)
        );
        let mut response = OffsetForLeaderEpochResponse::default();
        let mut t = OffsetForLeaderTopicResult::default();
        t.topic = TopicName(StrBytes::from_static_str("t"));
        let mut e = EpochEndOffset::default();
        e.partition = 2;
        e.leader_epoch = 0;
        e.end_offset = 17;
        t.partitions.push(e);
        response.topics.push(t);
        for v in 0..=1 {
            let mut out = BytesMut::new();
            response.encode_legacy(v, &mut out).expect("encodes");
            let mut expect = Out::new().i32(1).str("t").i32(1).i16(0).i32(2);
            if v >= 1 {
                expect = expect.i32(0);
            }
            assert_eq!(out.freeze(), expect.i64(17).freeze(), "v{v}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256), v in 0i16..=1) {
            let _ = OffsetForLeaderEpochRequest::decode_legacy(&mut Bytes::from(data), v);
        }
    }
}
