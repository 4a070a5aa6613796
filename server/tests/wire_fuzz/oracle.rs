//! What every answer must be, whatever the request: a well-framed response carrying the
//! request's correlation id, in the request's version (Kafka's schema for it decodes it
//! whole), no larger than a bound; or, for an API or version the broker does not serve,
//! Kafka's UNSUPPORTED_VERSION answer.
//!
//! The versions `kafka-protocol` no longer knows (below Kafka 4.0's floor) are read with
//! the layouts of Kafka 3.9's schemas, written out below independently of the broker's own
//! codecs; the records a Fetch v0-3 gets must be a message set of the magic that version
//! reads, every message whole (but a last one cut short) and its CRC right.

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
    if version < schema.min {
        let Some(layout) = legacy_layout(key, version) else {
            return Err(format!("no layout for the {key:?} v{version} response"));
        };
        let mut records = Vec::new();
        walk(layout, &mut b, &mut records).map_err(|e| {
            format!("the {key:?} v{version} response does not follow Kafka 3.9's schema: {e}")
        })?;
        if b.has_remaining() {
            return Err(format!(
                "{} bytes after the {key:?} v{version} response",
                b.remaining()
            ));
        }
        if key == ApiKey::Fetch {
            let magic = if version <= 1 { 0 } else { 1 };
            for set in records.iter().flatten() {
                check_message_set(set, magic)
                    .map_err(|e| format!("Fetch v{version} records: {e}"))?;
            }
        }
        return Ok(());
    }
    if version > schema.max {
        return Err(format!("{key:?} v{version} is newer than Kafka's schemas"));
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

/// A field of a non-flexible response, as Kafka's schemas type it.
#[derive(Clone, Copy, Debug)]
enum F {
    I8,
    Bool,
    I16,
    I32,
    I64,
    Str,
    NullableStr,
    /// Nullable bytes holding records: kept for the message-set check.
    Records,
    Array(&'static [F]),
}

use F::*;

/// Response layouts of the versions Kafka 3.9 served below Kafka 4.0's floor.
fn legacy_layout(api_key: ApiKey, version: i16) -> Option<&'static [F]> {
    const PRODUCE_PARTITION_V0: &[F] = &[I32, I16, I64];
    const PRODUCE_PARTITION_V2: &[F] = &[I32, I16, I64, I64];
    const FETCH_TOPICS: F = Array(&[Str, Array(&[I32, I16, I64, Records])]);
    Some(match (api_key, version) {
        (ApiKey::Produce, 0) => &[Array(&[Str, Array(PRODUCE_PARTITION_V0)])],
        (ApiKey::Produce, 1) => &[Array(&[Str, Array(PRODUCE_PARTITION_V0)]), I32],
        (ApiKey::Produce, 2) => &[Array(&[Str, Array(PRODUCE_PARTITION_V2)]), I32],
        (ApiKey::Fetch, 0) => &[FETCH_TOPICS],
        (ApiKey::Fetch, 1..=3) => &[I32, FETCH_TOPICS],
        (ApiKey::ListOffsets, 0) => &[Array(&[Str, Array(&[I32, I16, Array(&[I64])])])],
        (ApiKey::OffsetForLeaderEpoch, 0) => &[Array(&[Str, Array(&[I16, I32, I64])])],
        (ApiKey::OffsetForLeaderEpoch, 1) => &[Array(&[Str, Array(&[I16, I32, I32, I64])])],
        (ApiKey::CreateTopics, 0) => &[Array(&[Str, I16])],
        (ApiKey::CreateTopics, 1) => &[Array(&[Str, I16, NullableStr])],
        (ApiKey::DeleteTopics, 0) => &[Array(&[Str, I16])],
        (ApiKey::DescribeConfigs, 0) => &[
            I32,
            Array(&[
                I16,
                NullableStr,
                I8,
                Str,
                Array(&[Str, NullableStr, Bool, Bool, Bool]),
            ]),
        ],
        (ApiKey::OffsetCommit, 0..=1) => &[Array(&[Str, Array(&[I32, I16])])],
        (ApiKey::OffsetFetch, 0) => &[Array(&[Str, Array(&[I32, I64, NullableStr, I16])])],
        (ApiKey::DescribeLogDirs, 0) => &[
            I32,
            Array(&[I16, Str, Array(&[Str, Array(&[I32, I64, I64, Bool])])]),
        ],
        _ => return None,
    })
}

fn need(b: &Bytes, n: usize, what: &str) -> Result<(), String> {
    if b.remaining() < n {
        return Err(format!("ends inside {what}"));
    }
    Ok(())
}

/// Reads `fields` from `b`, failing on anything a client of that version could not read;
/// the records fields found go to `records`.
fn walk(fields: &[F], b: &mut Bytes, records: &mut Vec<Option<Bytes>>) -> Result<(), String> {
    for field in fields {
        match field {
            I8 => {
                need(b, 1, "an int8")?;
                b.get_i8();
            }
            Bool => {
                need(b, 1, "a boolean")?;
                let v = b.get_u8();
                if v > 1 {
                    return Err(format!("boolean {v}"));
                }
            }
            I16 => {
                need(b, 2, "an int16")?;
                b.get_i16();
            }
            I32 => {
                need(b, 4, "an int32")?;
                b.get_i32();
            }
            I64 => {
                need(b, 8, "an int64")?;
                b.get_i64();
            }
            Str | NullableStr => {
                need(b, 2, "a string length")?;
                let len = b.get_i16();
                if len == -1 && matches!(field, NullableStr) {
                    continue;
                }
                if len < 0 {
                    return Err(format!("string length {len}"));
                }
                need(b, len as usize, "a string")?;
                let text = b.split_to(len as usize);
                if std::str::from_utf8(&text).is_err() {
                    return Err("a string that is not UTF-8".into());
                }
            }
            Records => {
                need(b, 4, "a records length")?;
                let len = b.get_i32();
                if len == -1 {
                    records.push(None);
                    continue;
                }
                if len < 0 {
                    return Err(format!("records length {len}"));
                }
                need(b, len as usize, "records")?;
                records.push(Some(b.split_to(len as usize)));
            }
            Array(element) => {
                need(b, 4, "an array length")?;
                let n = b.get_i32();
                if n < 0 {
                    return Err(format!("array length {n}"));
                }
                for _ in 0..n {
                    walk(element, b, records)?;
                }
            }
        }
    }
    Ok(())
}

/// A message set as a Fetch v0-3 reader reads it: messages of `magic` whose CRC-32 covers
/// what follows it, with keys and values that fill each message exactly; the last one may
/// be cut short (readers skip it). Compressed wrappers are only checked as messages.
fn check_message_set(mut set: &[u8], magic: i8) -> Result<(), String> {
    while set.len() >= 12 {
        let size = i32::from_be_bytes(set[8..12].try_into().expect("4 bytes"));
        let min = if magic == 0 { 14 } else { 22 };
        if size < min {
            return Err(format!("a message of size {size}"));
        }
        let size = size as usize;
        if set.len() < 12 + size {
            return Ok(()); // a partial message at the end
        }
        let body = &set[12..12 + size];
        let crc = u32::from_be_bytes(body[..4].try_into().expect("4 bytes"));
        if crc != crc32fast::hash(&body[4..]) {
            return Err("a message whose CRC is wrong".into());
        }
        if body[4] as i8 != magic {
            return Err(format!(
                "a message of magic {} for a magic {magic} reader",
                body[4]
            ));
        }
        let mut rest = Bytes::copy_from_slice(&body[if magic == 0 { 6 } else { 14 }..]);
        for what in ["key", "value"] {
            need(&rest, 4, what)?;
            let len = rest.get_i32();
            if len >= 0 {
                need(&rest, len as usize, what)?;
                rest.advance(len as usize);
            } else if len != -1 {
                return Err(format!("{what} length {len}"));
            }
        }
        if rest.has_remaining() {
            return Err(format!(
                "{} bytes after a message's value",
                rest.remaining()
            ));
        }
        set = &set[12 + size..];
    }
    Ok(())
}
