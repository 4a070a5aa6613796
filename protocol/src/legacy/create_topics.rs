//! CreateTopics v0–1: v1 is v2's layout; v0 lacks `validate_only`. Responses: v0 has name
//! and error code, v1 adds the error message; `throttle_time_ms` came with v2.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::{BrokerId, CreateTopicsRequest, CreateTopicsResponse, TopicName};

use super::{decode_as, LegacyError, LegacyRequest, LegacyResponse, Reader, Writer};

/// Smallest encodings: topic = name length + partitions + replication factor + two array
/// lengths; assignment = index + broker count; config = name length + value length.
const MIN_TOPIC_BYTES: usize = 16;
const MIN_ASSIGNMENT_BYTES: usize = 8;
const MIN_CONFIG_BYTES: usize = 4;

impl LegacyRequest for CreateTopicsRequest {
    fn decode_legacy(body: &mut Bytes, version: i16) -> Result<Self, LegacyError> {
        match version {
            0 => decode_v0(body),
            1 => decode_as(body, 2),
            _ => Err(LegacyError::Version("CreateTopics", version)),
        }
    }
}

fn decode_v0(body: &mut Bytes) -> Result<CreateTopicsRequest, LegacyError> {
    let mut r = Reader::new(body);
    let mut request = CreateTopicsRequest::default();
    let topics = r.array_len(MIN_TOPIC_BYTES)?;
    request.topics = r.elements(topics, |r| {
        let mut topic = CreatableTopic::default();
        topic.name = TopicName(r.string()?);
        topic.num_partitions = r.i32()?;
        topic.replication_factor = r.i16()?;
        let assignments = r.array_len(MIN_ASSIGNMENT_BYTES)?;
        topic.assignments = r.elements(assignments, |r| {
            let mut a = CreatableReplicaAssignment::default();
            a.partition_index = r.i32()?;
            a.broker_ids = r.i32_array()?.into_iter().map(BrokerId).collect();
            Ok(a)
        })?;
        let configs = r.array_len(MIN_CONFIG_BYTES)?;
        topic.configs = r.elements(configs, |r| {
            let mut c = CreatableTopicConfig::default();
            c.name = r.string()?;
            c.value = r.nullable_string()?;
            Ok(c)
        })?;
        Ok(topic)
    })?;
    request.timeout_ms = r.i32()?;
    request.validate_only = false;
    Ok(request)
}

impl LegacyResponse for CreateTopicsResponse {
    fn encode_legacy(&self, version: i16, out: &mut BytesMut) -> Result<(), LegacyError> {
        if !(0..=1).contains(&version) {
            return Err(LegacyError::Version("CreateTopics", version));
        }
        let mut w = Writer::new(out);
        w.array_len(self.topics.len())?;
        for topic in &self.topics {
            w.string(&topic.name.0)?;
            w.i16(topic.error_code);
            if version >= 1 {
                w.nullable_string(topic.error_message.as_deref())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::Out;
    use super::*;
    use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
    use kafka_protocol::protocol::StrBytes;
    use proptest::prelude::*;

    fn topic(out: Out) -> Out {
        out.str("t")
            .i32(3)
            .i16(1)
            .i32(0)
            .i32(1)
            .str("cleanup.policy")
            .str("compact")
    }

    #[test]
    fn decodes_v0_and_v1() {
        let mut v0 = topic(Out::new().i32(1)).i32(5000).freeze();
        let req = CreateTopicsRequest::decode_legacy(&mut v0, 0).expect("v0 decodes");
        let mut v1 = topic(Out::new().i32(1)).i32(5000).i8(1).freeze();
        let req1 = CreateTopicsRequest::decode_legacy(&mut v1, 1).expect("v1 decodes");
        for (req, validate_only) in [(req, false), (req1, true)] {
            assert_eq!(req.timeout_ms, 5000);
            assert_eq!(req.validate_only, validate_only);
            let t = &req.topics[0];
            assert_eq!(
                (t.name.0.as_str(), t.num_partitions, t.replication_factor),
                ("t", 3, 1)
            );
            assert_eq!(t.configs[0].name.as_str(), "cleanup.policy");
            assert_eq!(t.configs[0].value.as_deref(), Some("compact"));
        }
    }

    #[test]
    fn response_per_version() {
        let mut response = CreateTopicsResponse::default();
        let mut r = CreatableTopicResult::default();
        r.name = TopicName(StrBytes::from_static_str("t"));
        r.error_code = 36;
        r.error_message = Some(StrBytes::from_static_str("exists"));
        response.topics.push(r);
        let mut out = BytesMut::new();
        response.encode_legacy(0, &mut out).expect("encodes");
        assert_eq!(out.freeze(), Out::new().i32(1).str("t").i16(36).freeze());
        let mut out = BytesMut::new();
        response.encode_legacy(1, &mut out).expect("encodes");
        assert_eq!(
            out.freeze(),
            Out::new().i32(1).str("t").i16(36).str("exists").freeze()
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256), v in 0i16..=1) {
            let _ = CreateTopicsRequest::decode_legacy(&mut Bytes::from(data), v);
        }
    }
}
