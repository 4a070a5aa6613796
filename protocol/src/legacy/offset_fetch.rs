//! OffsetFetch v0: the same layout as v1 both ways. (Kafka 3.9 read v0 offsets from
//! ZooKeeper; without ZooKeeper they come from the group coordinator like v1's.)

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse};

use super::{decode_as, encode_as, LegacyError, LegacyRequest, LegacyResponse};

impl LegacyRequest for OffsetFetchRequest {
    fn decode_legacy(body: &mut Bytes, version: i16) -> Result<Self, LegacyError> {
        match version {
            0 => decode_as(body, 1),
            _ => Err(LegacyError::Version("OffsetFetch", version)),
        }
    }
}

impl LegacyResponse for OffsetFetchResponse {
    fn encode_legacy(&self, version: i16, out: &mut BytesMut) -> Result<(), LegacyError> {
        match version {
            0 => encode_as(self, 1, out),
            _ => Err(LegacyError::Version("OffsetFetch", version)),
        }
    }
}
