//! What every answer must be, whatever the request: a well-framed response carrying the
//! request's correlation id, in the request's version (Kafka's schema for it decodes it
//! whole), no larger than a bound; or, for an API or version the broker does not serve,
//! Kafka's UNSUPPORTED_VERSION answer.

use bytes::{Buf, Bytes};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;
use wharf_server::kafka::router::route_for;

const UNSUPPORTED_VERSION: i16 = 35;

/// Decodes `body` as the response of `api_key` at `version`; `None` when this check does
/// not know the API (the frame is still checked).
fn decode_body(api_key: ApiKey, version: i16, body: &mut Bytes) -> Option<Result<(), String>> {
    macro_rules! decode_as {
        ($($key:ident => $response:ty),* $(,)?) => {
            match api_key {
                $(ApiKey::$key => Some(
                    <$response>::decode(body, version).map(|_| ()).map_err(|e| e.to_string())
                ),)*
                _ => None,
            }
        };
    }
    decode_as! {
        Produce => ProduceResponse,
        Fetch => FetchResponse,
        ListOffsets => ListOffsetsResponse,
        Metadata => MetadataResponse,
        OffsetCommit => OffsetCommitResponse,
        OffsetFetch => OffsetFetchResponse,
        FindCoordinator => FindCoordinatorResponse,
        JoinGroup => JoinGroupResponse,
        Heartbeat => HeartbeatResponse,
        LeaveGroup => LeaveGroupResponse,
        SyncGroup => SyncGroupResponse,
        DescribeGroups => DescribeGroupsResponse,
        ListGroups => ListGroupsResponse,
        ApiVersions => ApiVersionsResponse,
        CreateTopics => CreateTopicsResponse,
        DeleteTopics => DeleteTopicsResponse,
        DeleteRecords => DeleteRecordsResponse,
        InitProducerId => InitProducerIdResponse,
        OffsetForLeaderEpoch => OffsetForLeaderEpochResponse,
        DescribeConfigs => DescribeConfigsResponse,
        AlterConfigs => AlterConfigsResponse,
        CreatePartitions => CreatePartitionsResponse,
        DeleteGroups => DeleteGroupsResponse,
        IncrementalAlterConfigs => IncrementalAlterConfigsResponse,
        OffsetDelete => OffsetDeleteResponse,
        DescribeCluster => DescribeClusterResponse,
        ConsumerGroupHeartbeat => ConsumerGroupHeartbeatResponse,
        ConsumerGroupDescribe => ConsumerGroupDescribeResponse,
        DescribeProducers => DescribeProducersResponse,
        SaslHandshake => SaslHandshakeResponse,
        AddPartitionsToTxn => AddPartitionsToTxnResponse,
        EndTxn => EndTxnResponse,
        TxnOffsetCommit => TxnOffsetCommitResponse,
    }
}

/// Checks a response frame (size prefix included) to a request of `api_key` at `version`
/// with `correlation_id`.
pub fn check(
    api_key: i16,
    version: i16,
    correlation_id: i32,
    frame: &Bytes,
    max_bytes: usize,
) -> Result<(), String> {
    if frame.len() > max_bytes {
        return Err(format!(
            "a {}-byte response, past the bound of {max_bytes}",
            frame.len()
        ));
    }
    let mut b = frame.clone();
    if b.remaining() < 8 {
        return Err(format!("a {}-byte response frame", frame.len()));
    }
    let size = b.get_i32();
    if size < 0 || size as usize != b.remaining() {
        return Err(format!(
            "size prefix {size} for a frame of {} bytes",
            frame.len()
        ));
    }
    let route = route_for(api_key);
    let known = ApiKey::try_from(api_key).ok();
    let served = route.is_some_and(|r| r.supports(version));
    let Some(key) =
        known.filter(|_| served || route.is_some_and(|r| r.api_key == ApiKey::ApiVersions))
    else {
        // Not served: header v0 and UNSUPPORTED_VERSION alone.
        let got = b.get_i32();
        if got != correlation_id || b.remaining() != 2 || b.get_i16() != UNSUPPORTED_VERSION {
            return Err("an unserved API or version must get UNSUPPORTED_VERSION".into());
        }
        return Ok(());
    };
    // KIP-511: a version ApiVersions does not serve is answered in v0.
    let version = if served { version } else { 0 };
    let header = ResponseHeader::decode(&mut b, key.response_header_version(version))
        .map_err(|e| format!("response header: {e}"))?;
    if header.correlation_id != correlation_id {
        return Err(format!(
            "correlation id {} for request {correlation_id}",
            header.correlation_id
        ));
    }
    let schema = key.valid_versions();
    if !(schema.min..=schema.max).contains(&version) {
        return Ok(()); // a version only the broker's own codec knows
    }
    match decode_body(key, version, &mut b) {
        None => Ok(()),
        Some(Err(e)) => Err(format!(
            "the {key:?} v{version} response does not decode: {e}"
        )),
        Some(Ok(())) if b.has_remaining() => Err(format!(
            "{} bytes after the {key:?} v{version} response",
            b.remaining()
        )),
        Some(Ok(())) => Ok(()),
    }
}
