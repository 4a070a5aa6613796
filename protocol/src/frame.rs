//! Kafka request/response framing: the 4-byte size prefix, the request header, and
//! response encoding with the right response header version.
//!
//! A request frame is `size: i32` followed by `size` bytes: the request header (api key,
//! api version, correlation id, client id, and tagged fields from header v2 on) and the
//! body. The size is checked against a limit before anything is allocated for the frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::splice::SplicingBuf;

/// Bytes of the size prefix in front of every request and response.
pub const SIZE_PREFIX_BYTES: usize = 4;

/// Bytes every request header starts with: api key (2), api version (2), correlation id (4).
pub const REQUEST_ID_BYTES: usize = 8;

/// Why a frame or a request header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("request size {0} is negative")]
    NegativeSize(i32),
    #[error("request of {size} bytes exceeds the limit of {max_bytes} bytes")]
    TooLarge { size: usize, max_bytes: usize },
    #[error("request of {0} bytes is too short for a request header")]
    TooShort(usize),
    #[error("malformed request header: {0}")]
    Header(String),
    #[error("cannot encode response: {0}")]
    Encode(String),
}

/// Reads the size prefix of a request frame and checks it against `max_bytes`.
pub fn request_frame_size(
    prefix: [u8; SIZE_PREFIX_BYTES],
    max_bytes: usize,
) -> Result<usize, FrameError> {
    let size = i32::from_be_bytes(prefix);
    if size < 0 {
        return Err(FrameError::NegativeSize(size));
    }
    let size = size as usize;
    if size < REQUEST_ID_BYTES {
        return Err(FrameError::TooShort(size));
    }
    if size > max_bytes {
        return Err(FrameError::TooLarge { size, max_bytes });
    }
    Ok(size)
}

/// The fixed start of every request header, readable before the rest of the frame.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RequestIds {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

/// Reads api key, api version and correlation id from the first bytes of a request frame
/// (after the size prefix). `None` if fewer than [`REQUEST_ID_BYTES`] are given.
pub fn peek_request_ids(frame: &[u8]) -> Option<RequestIds> {
    if frame.len() < REQUEST_ID_BYTES {
        return None;
    }
    let mut b = &frame[..REQUEST_ID_BYTES];
    Some(RequestIds {
        api_key: b.get_i16(),
        api_version: b.get_i16(),
        correlation_id: b.get_i32(),
    })
}

/// A decoded request header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<StrBytes>,
    /// The header version this request used (1 or 2), which fixes the response header's.
    pub header_version: i16,
}

/// Decodes the request header at the start of `frame` (the bytes after the size prefix) and
/// advances `frame` to the body. For an API key this crate does not know, only the fixed
/// part is read; the caller can still answer with the correlation id.
pub fn decode_request_header(frame: &mut Bytes) -> Result<RequestHead, FrameError> {
    let ids = peek_request_ids(frame).ok_or(FrameError::TooShort(frame.len()))?;
    let Ok(api_key) = ApiKey::try_from(ids.api_key) else {
        frame.advance(REQUEST_ID_BYTES);
        return Ok(RequestHead {
            api_key: ids.api_key,
            api_version: ids.api_version,
            correlation_id: ids.correlation_id,
            client_id: None,
            header_version: 1,
        });
    };
    let header_version = api_key.request_header_version(ids.api_version);
    let header = RequestHeader::decode(frame, header_version)
        .map_err(|e| FrameError::Header(e.to_string()))?;
    Ok(RequestHead {
        api_key: header.request_api_key,
        api_version: header.request_api_version,
        correlation_id: header.correlation_id,
        client_id: header.client_id,
        header_version,
    })
}

/// Encodes a complete response frame (size prefix, response header, body) for `api_key` at
/// `version`, choosing the response header version the way Kafka does (always v0 for
/// ApiVersions, KIP-511).
pub fn encode_response<M: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &M,
) -> Result<Bytes, FrameError> {
    encode_frame_into(
        api_key,
        version,
        correlation_id,
        body,
        BytesMut::with_capacity,
    )
    .map(BytesMut::freeze)
}

/// [`encode_response`] without copying the byte strings in `splice` (fetched records) into
/// the frame: they stay parts of their own, and the frame is the parts, in order, to be
/// sent with one vectored write. Byte strings too short to be worth a part are copied.
pub fn encode_response_parts<M: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &M,
    splice: &[Bytes],
) -> Result<Vec<Bytes>, FrameError> {
    let spliced = SplicingBuf::spliced_bytes(splice);
    encode_frame_into(api_key, version, correlation_id, body, |frame_bytes| {
        SplicingBuf::new(frame_bytes.saturating_sub(spliced), splice)
    })
    .map(SplicingBuf::into_parts)
}

/// Writes the frame into the buffer `new_buf` makes for a frame of the given size.
fn encode_frame_into<M: Encodable, B: ByteBufMut>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &M,
    new_buf: impl FnOnce(usize) -> B,
) -> Result<B, FrameError> {
    let header_version = api_key.response_header_version(version);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let size = header.compute_size(header_version).map_err(enc)?
        + body.compute_size(version).map_err(enc)?;
    let size_i32 =
        i32::try_from(size).map_err(|_| FrameError::Encode(format!("response of {size} bytes")))?;
    let mut buf = new_buf(SIZE_PREFIX_BYTES + size);
    buf.put_i32(size_i32);
    header.encode(&mut buf, header_version).map_err(enc)?;
    body.encode(&mut buf, version).map_err(enc)?;
    debug_assert_eq!(
        buf.offset(),
        SIZE_PREFIX_BYTES + size,
        "compute_size must match encode"
    );
    Ok(buf)
}

/// A response frame for a request whose API key or version is not served: response header
/// v0 (the correlation id) and a body holding only an error code. Clients that sent such a
/// request did not negotiate it, so this is a courtesy that names the error before they
/// give up on the connection, rather than a silent close.
pub fn encode_error_code_only_response(correlation_id: i32, error_code: i16) -> Bytes {
    let mut buf = BytesMut::with_capacity(SIZE_PREFIX_BYTES + 6);
    buf.put_i32(6);
    buf.put_i32(correlation_id);
    buf.put_i16(error_code);
    buf.freeze()
}

fn enc(e: impl std::fmt::Display) -> FrameError {
    FrameError::Encode(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsResponse, MetadataRequest, MetadataResponse};

    /// A Fetch response with records large and small, aborted transactions and the tagged
    /// fields of the newer versions.
    fn fetch_response(big: &Bytes, small: &Bytes) -> kafka_protocol::messages::FetchResponse {
        use kafka_protocol::messages::fetch_response::{
            AbortedTransaction, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint,
            PartitionData,
        };
        use kafka_protocol::messages::{BrokerId, ProducerId, TopicName};
        let partition = |index: i32, records: Option<Bytes>| {
            let mut p = PartitionData::default();
            p.partition_index = index;
            p.high_watermark = 1000 + i64::from(index);
            p.last_stable_offset = 990;
            p.log_start_offset = 3;
            p.records = records;
            p
        };
        let mut with_leader = partition(1, Some(small.clone()));
        with_leader.current_leader = LeaderIdAndEpoch::default()
            .with_leader_id(BrokerId(2))
            .with_leader_epoch(7);
        let mut with_aborted = partition(2, Some(big.clone()));
        with_aborted.aborted_transactions = Some(vec![AbortedTransaction::default()
            .with_producer_id(ProducerId(9))
            .with_first_offset(11)]);
        let mut topic = FetchableTopicResponse::default();
        topic.topic = TopicName(StrBytes::from_static_str("events"));
        topic.partitions = vec![
            partition(0, Some(big.clone())),
            with_leader,
            with_aborted,
            partition(3, None),
        ];
        let mut response = kafka_protocol::messages::FetchResponse::default();
        response.responses = vec![topic];
        response.node_endpoints = vec![NodeEndpoint::default()
            .with_node_id(BrokerId(2))
            .with_host(StrBytes::from_static_str("broker2"))
            .with_port(9093)];
        response
    }

    #[test]
    fn a_response_in_parts_is_the_same_frame_with_the_records_not_copied() {
        let big = Bytes::from((0..6000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let small = Bytes::from_static(b"a few records");
        for version in 4..=18 {
            let mut response = fetch_response(&big, &small);
            if version < 12 {
                for p in &mut response.responses[0].partitions {
                    p.current_leader = Default::default();
                }
            }
            if version < 16 {
                response.node_endpoints.clear();
            }
            let whole = encode_response(ApiKey::Fetch, version, 77, &response).unwrap();
            let parts = encode_response_parts(
                ApiKey::Fetch,
                version,
                77,
                &response,
                &[big.clone(), small.clone()],
            )
            .unwrap();
            let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
            assert_eq!(joined, whole[..], "Fetch v{version}");
            let spliced = parts.iter().filter(|p| p.as_ptr() == big.as_ptr()).count();
            assert_eq!(
                spliced, 2,
                "Fetch v{version}: both large record sets are parts"
            );
            assert!(parts.iter().all(|p| !p.is_empty()));
        }
    }

    #[test]
    fn frame_size_rejects_negative_short_and_oversized_frames() {
        assert_eq!(
            request_frame_size((-1i32).to_be_bytes(), 100),
            Err(FrameError::NegativeSize(-1))
        );
        assert_eq!(
            request_frame_size(7i32.to_be_bytes(), 100),
            Err(FrameError::TooShort(7))
        );
        assert_eq!(
            request_frame_size(101i32.to_be_bytes(), 100),
            Err(FrameError::TooLarge {
                size: 101,
                max_bytes: 100
            })
        );
        assert_eq!(request_frame_size(100i32.to_be_bytes(), 100), Ok(100));
        assert_eq!(
            request_frame_size(i32::MAX.to_be_bytes(), 100 << 20),
            Err(FrameError::TooLarge {
                size: i32::MAX as usize,
                max_bytes: 100 << 20
            })
        );
    }

    fn request_frame(
        api_key: i16,
        api_version: i16,
        correlation_id: i32,
        header_version: i16,
        body: &[u8],
    ) -> Bytes {
        let header = RequestHeader::default()
            .with_request_api_key(api_key)
            .with_request_api_version(api_version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("test-client")));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, header_version)
            .expect("header encodes");
        buf.put_slice(body);
        buf.freeze()
    }

    #[test]
    fn header_v1_and_v2_decode_to_the_body() {
        // Metadata v9 is flexible: header v2 with tagged fields.
        for (version, header_version) in [(1i16, 1i16), (9, 2)] {
            let mut body = BytesMut::new();
            MetadataRequest::default()
                .encode(&mut body, version)
                .expect("encodes");
            let mut frame = request_frame(3, version, 77, header_version, &body);
            let head = decode_request_header(&mut frame).expect("decodes");
            assert_eq!(head.api_key, 3);
            assert_eq!(head.api_version, version);
            assert_eq!(head.correlation_id, 77);
            assert_eq!(head.header_version, header_version);
            assert_eq!(head.client_id.as_deref(), Some("test-client"));
            assert_eq!(&frame[..], &body[..], "the frame is left at the body");
        }
    }

    #[test]
    fn unknown_api_key_still_yields_the_correlation_id() {
        let mut frame = Bytes::from_static(&[0x7f, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x2a, 0xff]);
        let head = decode_request_header(&mut frame).expect("fixed part decodes");
        assert_eq!(head.api_key, 0x7f00);
        assert_eq!(head.correlation_id, 42);
    }

    #[test]
    fn truncated_header_is_an_error_not_a_panic() {
        let mut frame = Bytes::from_static(&[0, 3, 0, 1, 0, 0, 0, 1, 0x7f]);
        assert!(matches!(
            decode_request_header(&mut frame),
            Err(FrameError::Header(_))
        ));
        let mut short = Bytes::from_static(&[0, 3, 0]);
        assert_eq!(
            decode_request_header(&mut short),
            Err(FrameError::TooShort(3))
        );
    }

    #[test]
    fn huge_array_count_is_rejected_without_allocating() {
        // Metadata v1 body: topics array claiming i32::MAX entries, then nothing.
        let mut body = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff]);
        assert!(MetadataRequest::decode(&mut body, 1).is_err());
        // Flexible (v9): compact array length varint 0xffffffff.
        let mut body = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(MetadataRequest::decode(&mut body, 9).is_err());
    }

    #[test]
    fn api_versions_response_header_is_v0_even_when_flexible() {
        let body = ApiVersionsResponse::default();
        let frame = encode_response(ApiKey::ApiVersions, 3, 9, &body).expect("encodes");
        let mut b = &frame[..];
        let size = b.get_i32() as usize;
        assert_eq!(size, frame.len() - SIZE_PREFIX_BYTES);
        assert_eq!(b.get_i32(), 9, "correlation id");
        // Header v0 has no tagged fields: the body's error code follows at once.
        assert_eq!(b.get_i16(), 0);
    }

    #[test]
    fn flexible_responses_carry_header_v1() {
        let frame =
            encode_response(ApiKey::Metadata, 9, 5, &MetadataResponse::default()).expect("encodes");
        let mut b = &frame[SIZE_PREFIX_BYTES..];
        assert_eq!(b.get_i32(), 5);
        assert_eq!(b.get_u8(), 0, "empty tagged fields of response header v1");
    }

    #[test]
    fn error_code_only_response_is_well_framed() {
        let frame = encode_error_code_only_response(3, 35);
        assert_eq!(&frame[..], &[0, 0, 0, 6, 0, 0, 0, 3, 0, 35]);
    }
}
