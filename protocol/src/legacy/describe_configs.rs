//! DescribeConfigs v0: v1 without `include_synonyms`. Its response has `is_default` where
//! v1 has `config_source`, and no synonyms.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use super::{LegacyError, LegacyRequest, LegacyResponse, Reader, Writer};

/// Kafka's `ConfigResource.Type.TOPIC` and the `ConfigSource` codes v0 folds into a flag.
const RESOURCE_TOPIC: i8 = 2;
const SOURCE_TOPIC_CONFIG: i8 = 1;
const SOURCE_DEFAULT_CONFIG: i8 = 5;

/// Smallest encodings: resource = type + name length + keys length.
const MIN_RESOURCE_BYTES: usize = 7;

impl LegacyRequest for DescribeConfigsRequest {
    fn decode_legacy(body: &mut Bytes, version: i16) -> Result<Self, LegacyError> {
        if version != 0 {
            return Err(LegacyError::Version("DescribeConfigs", version));
        }
        let mut r = Reader::new(body);
        let mut request = DescribeConfigsRequest::default();
        let resources = r.array_len(MIN_RESOURCE_BYTES)?;
        request.resources = r.elements(resources, |r| {
            let mut resource = DescribeConfigsResource::default();
            resource.resource_type = r.i8()?;
            resource.resource_name = r.string()?;
            resource.configuration_keys = match r.nullable_array_len(2)? {
                Some(n) => Some(r.elements(n, |r| r.string())?),
                None => None,
            };
            Ok(resource)
        })?;
        Ok(request)
    }
}

/// v0's `is_default`, as a v0 client reads it back (Kafka's `DescribeConfigsResponse`):
/// a topic config that is not a topic override counts as default, a broker config only
/// when it is Kafka's own default.
fn is_default(resource_type: i8, config_source: i8) -> bool {
    if resource_type == RESOURCE_TOPIC {
        config_source != SOURCE_TOPIC_CONFIG
    } else {
        config_source == SOURCE_DEFAULT_CONFIG
    }
}

impl LegacyResponse for DescribeConfigsResponse {
    fn encode_legacy(&self, version: i16, out: &mut BytesMut) -> Result<(), LegacyError> {
        if version != 0 {
            return Err(LegacyError::Version("DescribeConfigs", version));
        }
        let mut w = Writer::new(out);
        w.i32(self.throttle_time_ms);
        w.array_len(self.results.len())?;
        for result in &self.results {
            w.i16(result.error_code);
            w.nullable_string(result.error_message.as_deref())?;
            w.i8(result.resource_type);
            w.string(&result.resource_name)?;
            w.array_len(result.configs.len())?;
            for c in &result.configs {
                w.string(&c.name)?;
                w.nullable_string(c.value.as_deref())?;
                w.bool(c.read_only);
                w.bool(is_default(result.resource_type, c.config_source));
                w.bool(c.is_sensitive);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::Out;
    use super::*;
    use kafka_protocol::messages::describe_configs_response::{
        DescribeConfigsResourceResult, DescribeConfigsResult,
    };
    use kafka_protocol::protocol::StrBytes;
    use proptest::prelude::*;

    #[test]
    fn v0_round_the_wire() {
        let mut body = Out::new()
            .i32(2)
            .i8(2)
            .str("t")
            .i32(1)
            .str("retention.ms")
            .i8(4)
            .str("1")
            .i32(-1)
            .freeze();
        let req = DescribeConfigsRequest::decode_legacy(&mut body, 0).expect("decodes");
        assert_eq!(req.resources.len(), 2);
        assert_eq!(req.resources[0].resource_name.as_str(), "t");
        assert_eq!(
            req.resources[0].configuration_keys.as_ref().map(Vec::len),
            Some(1)
        );
        assert_eq!(req.resources[1].configuration_keys, None);
        assert!(!req.include_synonyms);

        let mut response = DescribeConfigsResponse::default();
        let mut result = DescribeConfigsResult::default();
        result.resource_type = 2;
        result.error_message = None;
        result.resource_name = StrBytes::from_static_str("t");
        for (name, source) in [("retention.ms", 1), ("segment.bytes", 5), ("segment.ms", 4)] {
            let mut c = DescribeConfigsResourceResult::default();
            c.name = StrBytes::from_static_str(name);
            c.value = Some(StrBytes::from_static_str("9"));
            c.config_source = source;
            result.configs.push(c);
        }
        response.results.push(result);
        let mut out = BytesMut::new();
        response.encode_legacy(0, &mut out).expect("encodes");
        let expect = Out::new()
            .i32(0)
            .i32(1)
            .i16(0)
            .i16(-1)
            .i8(2)
            .str("t")
            .i32(3)
            .str("retention.ms")
            .str("9")
            .i8(0)
            .i8(0)
            .i8(0)
            .str("segment.bytes")
            .str("9")
            .i8(0)
            .i8(1)
            .i8(0)
            .str("segment.ms")
            .str("9")
            .i8(0)
            .i8(1)
            .i8(0);
        assert_eq!(out.freeze(), expect.freeze());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = DescribeConfigsRequest::decode_legacy(&mut Bytes::from(data), 0);
        }
    }
}
