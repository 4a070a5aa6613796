//! DescribeLogDirs v0: the same layout as v1 both ways (v1 only changed when throttled
//! responses are sent).

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse};

use super::{decode_as, encode_as, LegacyError, LegacyRequest, LegacyResponse};

impl LegacyRequest for DescribeLogDirsRequest {
    fn decode_legacy(body: &mut Bytes, version: i16) -> Result<Self, LegacyError> {
        match version {
            0 => decode_as(body, 1),
            _ => Err(LegacyError::Version("DescribeLogDirs", version)),
        }
    }
}

impl LegacyResponse for DescribeLogDirsResponse {
    fn encode_legacy(&self, version: i16, out: &mut BytesMut) -> Result<(), LegacyError> {
        match version {
            0 => encode_as(self, 1, out),
            _ => Err(LegacyError::Version("DescribeLogDirs", version)),
        }
    }
}
