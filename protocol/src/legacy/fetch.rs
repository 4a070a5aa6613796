//! Fetch v0–3: v4 without `isolation_level` (and before v3 without `max_bytes`). Their
//! readers understand message sets of magic 0 (v0–1) or 1 (v2–3) only, so the broker
//! converts stored batches down (see [`crate::message_set`]). Responses: v1 adds
//! `throttle_time_ms` in front; partitions carry index, error, high watermark and records.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};

use super::{LegacyError, LegacyRequest, LegacyResponse, Reader, Writer};

/// The highest Fetch version this module handles.
pub const MAX_LEGACY_FETCH_VERSION: i16 = 3;

/// Smallest encodings: topic = name length + partition count; partition = index + offset +
/// max bytes.
const MIN_TOPIC_BYTES: usize = 6;
const MIN_PARTITION_BYTES: usize = 16;

/// The message format (magic) a Fetch of `version` reads: 0 before v2, 1 for v2–3, 2 after.
pub fn fetch_magic(version: i16) -> i8 {
    match version {
        i16::MIN..=1 => 0,
        2..=3 => 1,
        _ => 2,
    }
}

impl LegacyRequest for FetchRequest {
    fn decode_legacy(body: &mut Bytes, version: i16) -> Result<Self, LegacyError> {
        if !(0..=MAX_LEGACY_FETCH_VERSION).contains(&version) {
            return Err(LegacyError::Version("Fetch", version));
        }
        let mut r = Reader::new(body);
        let mut request = FetchRequest::default();
        request.replica_id = BrokerId(r.i32()?);
        request.max_wait_ms = r.i32()?;
        request.min_bytes = r.i32()?;
        // Kafka's default for a request without the field: no response limit.
        request.max_bytes = if version >= 3 { r.i32()? } else { i32::MAX };
        // Sessions (KIP-227) came with v7: an old fetch is always a full one.
        request.session_id = 0;
        request.session_epoch = -1;
        let topics = r.array_len(MIN_TOPIC_BYTES)?;
        request.topics = r.elements(topics, |r| {
            let mut topic = FetchTopic::default();
            topic.topic = TopicName(r.string()?);
            let partitions = r.array_len(MIN_PARTITION_BYTES)?;
            topic.partitions = r.elements(partitions, |r| {
                let mut p = FetchPartition::default();
                p.partition = r.i32()?;
                p.fetch_offset = r.i64()?;
                p.partition_max_bytes = r.i32()?;
                p.current_leader_epoch = -1;
                Ok(p)
            })?;
            Ok(topic)
        })?;
        Ok(request)
    }
}

impl LegacyResponse for FetchResponse {
    fn encode_legacy(&self, version: i16, out: &mut BytesMut) -> Result<(), LegacyError> {
        if !(0..=MAX_LEGACY_FETCH_VERSION).contains(&version) {
            return Err(LegacyError::Version("Fetch", version));
        }
        let records_bytes: usize = self
            .responses
            .iter()
            .flat_map(|t| t.partitions.iter())
            .map(|p| p.records.as_ref().map_or(0, |r| r.len()))
            .sum();
        out.reserve(records_bytes + 64);
        let mut w = Writer::new(out);
        if version >= 1 {
            w.i32(self.throttle_time_ms);
        }
        w.array_len(self.responses.len())?;
        for topic in &self.responses {
            w.string(&topic.topic.0)?;
            w.array_len(topic.partitions.len())?;
            for p in &topic.partitions {
                w.i32(p.partition_index);
                w.i16(p.error_code);
                w.i64(p.high_watermark);
                w.nullable_bytes(p.records.as_deref())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::Out;
    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::protocol::StrBytes;
    use proptest::prelude::*;

    fn request(version: i16) -> Bytes {
        let mut out = Out::new().i32(-1).i32(500).i32(1);
        if version >= 3 {
            out = out.i32(1 << 20);
        }
        out.i32(1)
            .str("events")
            .i32(2)
            .i32(0)
            .i64(10)
            .i32(4096)
            .i32(3)
            .i64(0)
            .i32(100)
            .freeze()
    }

    #[test]
    fn decodes_every_old_version() {
        for version in 0..=3 {
            let req = FetchRequest::decode_legacy(&mut request(version), version).expect("decodes");
            assert_eq!(req.replica_id.0, -1);
            assert_eq!((req.max_wait_ms, req.min_bytes), (500, 1));
            assert_eq!(req.max_bytes, if version >= 3 { 1 << 20 } else { i32::MAX });
            assert_eq!(req.isolation_level, 0);
            assert_eq!(req.session_id, 0);
            assert_eq!(req.topics[0].topic.0.as_str(), "events");
            let p = &req.topics[0].partitions;
            assert_eq!(
                (p[0].partition, p[0].fetch_offset, p[0].partition_max_bytes),
                (0, 10, 4096)
            );
            assert_eq!(
                (p[1].partition, p[1].fetch_offset, p[1].partition_max_bytes),
                (3, 0, 100)
            );
            assert_eq!(p[0].current_leader_epoch, -1);
        }
    }

    #[test]
    fn response_layout_per_version() {
        let mut response = FetchResponse::default();
        response.throttle_time_ms = 3;
        let mut topic = FetchableTopicResponse::default();
        topic.topic = TopicName(StrBytes::from_static_str("t"));
        let mut p = PartitionData::default();
        p.partition_index = 1;
        p.error_code = 0;
        p.high_watermark = 12;
        p.last_stable_offset = 12;
        p.records = Some(Bytes::from_static(b"abc"));
        topic.partitions.push(p);
        response.responses.push(topic);
        for version in 0..=3 {
            let mut out = BytesMut::new();
            response.encode_legacy(version, &mut out).expect("encodes");
            let mut expect = Out::new();
            if version >= 1 {
                expect = expect.i32(3);
            }
            let expect = expect
                .i32(1)
                .str("t")
                .i32(1)
                .i32(1)
                .i16(0)
                .i64(12)
                .bytes(b"abc");
            assert_eq!(out.freeze(), expect.freeze(), "v{version}");
        }
    }

    #[test]
    fn magic_per_version() {
        assert_eq!([0, 1, 2, 3, 4, 12].map(fetch_magic), [0, 0, 1, 1, 2, 2]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256), v in 0i16..=3) {
            let _ = FetchRequest::decode_legacy(&mut Bytes::from(data), v);
        }
    }
}
