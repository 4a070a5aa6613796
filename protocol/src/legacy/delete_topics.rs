//! DeleteTopics v0: the request is v1's layout; the response lacks v1's
//! `throttle_time_ms`.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};

use super::{decode_as, LegacyError, LegacyRequest, LegacyResponse, Writer};

impl LegacyRequest for DeleteTopicsRequest {
    fn decode_legacy(body: &mut Bytes, version: i16) -> Result<Self, LegacyError> {
        match version {
            0 => decode_as(body, 1),
            _ => Err(LegacyError::Version("DeleteTopics", version)),
        }
    }
}

impl LegacyResponse for DeleteTopicsResponse {
    fn encode_legacy(&self, version: i16, out: &mut BytesMut) -> Result<(), LegacyError> {
        if version != 0 {
            return Err(LegacyError::Version("DeleteTopics", version));
        }
        let mut w = Writer::new(out);
        w.array_len(self.responses.len())?;
        for r in &self.responses {
            w.string(r.name.as_ref().map_or("", |n| n.0.as_str()))?;
            w.i16(r.error_code);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::Out;
    use super::*;
    use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;

    #[test]
    fn v0_round_the_wire() {
        let mut body = Out::new().i32(2).str("a").str("b").i32(1000).freeze();
        let req = DeleteTopicsRequest::decode_legacy(&mut body, 0).expect("decodes");
        let names: Vec<&str> = req.topic_names.iter().map(|n| n.0.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(req.timeout_ms, 1000);
        let mut response = DeleteTopicsResponse::default();
        let mut r = DeletableTopicResult::default();
        r.name = Some(TopicName(StrBytes::from_static_str("a")));
        r.error_code = 3;
        response.responses.push(r);
        let mut out = BytesMut::new();
        response.encode_legacy(0, &mut out).expect("encodes");
        assert_eq!(out.freeze(), Out::new().i32(1).str("a").i16(3).freeze());
    }
}
