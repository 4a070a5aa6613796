//! OffsetCommit v0–1. v0 carries group id and offsets only (a commit outside any group
//! generation); v1 adds generation and member id, and a commit timestamp per partition
//! (-1: the broker's time), which v2 replaced with a retention time. Responses of v0–1
//! have v2's layout.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{GroupId, OffsetCommitRequest, OffsetCommitResponse, TopicName};

use super::{encode_as, LegacyError, LegacyRequest, LegacyResponse, Reader};

/// Smallest encodings: topic = name length + partition count; partition = index + offset
/// (+ timestamp in v1) + metadata length.
const MIN_TOPIC_BYTES: usize = 6;
const MIN_PARTITION_BYTES: usize = 14;

/// An OffsetCommit v0–1 request and the commit timestamps of v1, one per partition in
/// request order (-1 in v0).
pub fn decode(
    body: &mut Bytes,
    version: i16,
) -> Result<(OffsetCommitRequest, Vec<i64>), LegacyError> {
    if !(0..=1).contains(&version) {
        return Err(LegacyError::Version("OffsetCommit", version));
    }
    let mut r = Reader::new(body);
    let mut request = OffsetCommitRequest::default();
    request.group_id = GroupId(r.string()?);
    if version >= 1 {
        request.generation_id_or_member_epoch = r.i32()?;
        request.member_id = r.string()?;
    } else {
        // v0 commits outside any generation: Kafka's "simple consumer" commit.
        request.generation_id_or_member_epoch = -1;
    }
    request.retention_time_ms = -1;
    let mut timestamps = Vec::new();
    let topics = r.array_len(MIN_TOPIC_BYTES)?;
    request.topics = r.elements(topics, |r| {
        let mut topic = OffsetCommitRequestTopic::default();
        topic.name = TopicName(r.string()?);
        let partitions = r.array_len(MIN_PARTITION_BYTES)?;
        topic.partitions = r.elements(partitions, |r| {
            let mut p = OffsetCommitRequestPartition::default();
            p.partition_index = r.i32()?;
            p.committed_offset = r.i64()?;
            p.committed_leader_epoch = -1;
            timestamps.push(if version >= 1 { r.i64()? } else { -1 });
            p.committed_metadata = r.nullable_string()?;
            Ok(p)
        })?;
        Ok(topic)
    })?;
    Ok((request, timestamps))
}

impl LegacyRequest for OffsetCommitRequest {
    fn decode_legacy(body: &mut Bytes, version: i16) -> Result<Self, LegacyError> {
        decode(body, version).map(|(request, _)| request)
    }
}

impl LegacyResponse for OffsetCommitResponse {
    fn encode_legacy(&self, version: i16, out: &mut BytesMut) -> Result<(), LegacyError> {
        if !(0..=1).contains(&version) {
            return Err(LegacyError::Version("OffsetCommit", version));
        }
        encode_as(self, 2, out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::Out;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn v0_and_v1_decode_with_their_fields() {
        let mut v0 = Out::new()
            .str("g")
            .i32(1)
            .str("t")
            .i32(1)
            .i32(4)
            .i64(100)
            .str("m")
            .freeze();
        let (req, ts) = decode(&mut v0, 0).expect("v0 decodes");
        assert_eq!(req.group_id.0.as_str(), "g");
        assert_eq!(req.generation_id_or_member_epoch, -1);
        assert_eq!(req.member_id.as_str(), "");
        let p = &req.topics[0].partitions[0];
        assert_eq!((p.partition_index, p.committed_offset), (4, 100));
        assert_eq!(p.committed_metadata.as_deref(), Some("m"));
        assert_eq!(ts, vec![-1]);

        let mut v1 = Out::new()
            .str("g")
            .i32(7)
            .str("member-1")
            .i32(1)
            .str("t")
            .i32(1)
            .i32(4)
            .i64(100)
            .i64(1_700_000_000_000)
            .i16(-1)
            .freeze();
        let (req, ts) = decode(&mut v1, 1).expect("v1 decodes");
        assert_eq!(req.generation_id_or_member_epoch, 7);
        assert_eq!(req.member_id.as_str(), "member-1");
        assert_eq!(req.topics[0].partitions[0].committed_metadata, None);
        assert_eq!(ts, vec![1_700_000_000_000]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256), v in 0i16..=1) {
            let _ = decode(&mut Bytes::from(data), v);
        }
    }
}
