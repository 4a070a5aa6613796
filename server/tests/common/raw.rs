//! A raw Kafka-protocol connection: size-prefixed frames over a plain `TcpStream`, with
//! request/response encoding from the `kafka-protocol` crate. Used by the tests that send
//! bytes no well-behaved client would send, and by those that inspect what the broker
//! stores (e.g. a batch's compression attribute).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    metadata_request::MetadataRequestTopic, produce_request::PartitionProduceData,
    produce_request::TopicProduceData, ApiKey, ApiVersionsRequest, MetadataRequest, ProduceRequest,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// Guard against a broker that neither answers nor closes; not a timing assertion.
pub const READ_GUARD: Duration = Duration::from_secs(30);
/// The largest response frame these tests accept.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Kafka error codes the tests check.
pub mod error_code {
    pub const NONE: i16 = 0;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const INVALID_REQUEST: i16 = 42;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const INVALID_RECORD: i16 = 87;
}

/// What the broker did with a request it should not like.
#[derive(Debug)]
pub enum Outcome {
    /// A response frame (its bytes after the 4-byte length).
    Response(Bytes),
    /// The broker closed (or reset) the connection.
    Closed,
}

pub struct KafkaConn {
    stream: TcpStream,
    next_correlation_id: i32,
    client_id: String,
}

impl KafkaConn {
    pub fn connect(addr: SocketAddr) -> KafkaConn {
        let stream = TcpStream::connect(addr)
            .unwrap_or_else(|e| panic!("cannot connect to the broker at {addr}: {e}"));
        stream
            .set_read_timeout(Some(READ_GUARD))
            .expect("set_read_timeout");
        stream
            .set_write_timeout(Some(READ_GUARD))
            .expect("set_write_timeout");
        stream.set_nodelay(true).expect("set_nodelay");
        KafkaConn {
            stream,
            next_correlation_id: 1,
            client_id: DEFAULT_CLIENT_ID.to_string(),
        }
    }

    /// Sends `client_id` in the header of every request from now on.
    pub fn set_client_id(&mut self, client_id: &str) {
        self.client_id = client_id.to_string();
    }

    /// The underlying socket, for tests that need its options or its raw descriptor.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn next_correlation_id(&mut self) -> i32 {
        let id = self.next_correlation_id;
        self.next_correlation_id += 1;
        id
    }

    /// Writes bytes as they are; a broker that already closed is not an error here.
    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Writes one frame: a 4-byte big-endian length, then the payload.
    pub fn write_frame(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(4 + payload.len());
        frame.extend_from_slice(&(payload.len() as i32).to_be_bytes());
        frame.extend_from_slice(payload);
        self.write_raw(&frame)
    }

    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads one response frame, or `Closed` if the broker closed or reset the connection.
    /// Panics if the broker does neither within `READ_GUARD`.
    pub fn read_outcome(&mut self) -> Outcome {
        let mut len = [0u8; 4];
        if let Err(e) = self.stream.read_exact(&mut len) {
            return closed_or_panic(e);
        }
        let len = i32::from_be_bytes(len);
        assert!(
            len >= 4 && (len as usize) <= MAX_RESPONSE_BYTES,
            "response frame length {len} is out of range"
        );
        let mut body = vec![0u8; len as usize];
        if let Err(e) = self.stream.read_exact(&mut body) {
            return closed_or_panic(e);
        }
        Outcome::Response(Bytes::from(body))
    }

    /// Reads one response frame; fails the test if the connection closed.
    pub fn read_frame(&mut self) -> Bytes {
        match self.read_outcome() {
            Outcome::Response(b) => b,
            Outcome::Closed => panic!("the broker closed the connection instead of answering"),
        }
    }

    /// Waits until the broker closes this connection; a response instead fails the test.
    pub fn expect_closed(&mut self) {
        match self.read_outcome() {
            Outcome::Closed => {}
            Outcome::Response(b) => panic!(
                "expected a closed connection, got a {}-byte response",
                b.len()
            ),
        }
    }

    /// Sends `req` at `version` and returns its correlation id.
    pub fn send<R: Request>(&mut self, version: i16, req: &R) -> i32 {
        let correlation_id = self.next_correlation_id();
        let payload = encode_request_as(&self.client_id, correlation_id, version, req);
        self.write_frame(&payload).expect("cannot write a request");
        correlation_id
    }

    /// Reads the response to a request sent with `send`.
    pub fn receive<R: Request>(&mut self, version: i16, correlation_id: i32) -> R::Response {
        let mut frame = self.read_frame();
        let header = ResponseHeader::decode(&mut frame, R::Response::header_version(version))
            .expect("cannot decode the response header");
        assert_eq!(
            header.correlation_id, correlation_id,
            "correlation id mismatch"
        );
        let response = R::Response::decode(&mut frame, version).unwrap_or_else(|e| {
            panic!(
                "cannot decode the {} v{version} response: {e}",
                std::any::type_name::<R>()
            )
        });
        assert_eq!(
            frame.remaining(),
            0,
            "trailing bytes after the response body"
        );
        response
    }

    pub fn request<R: Request>(&mut self, version: i16, req: &R) -> R::Response {
        let correlation_id = self.send(version, req);
        self.receive::<R>(version, correlation_id)
    }

    /// The broker's advertised version ranges, by API key (ApiVersions v0 works everywhere).
    pub fn api_versions(&mut self) -> HashMap<i16, (i16, i16)> {
        let resp = self.request(0, &ApiVersionsRequest::default());
        assert_eq!(resp.error_code, error_code::NONE, "ApiVersions v0 failed");
        resp.api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect()
    }
}

fn closed_or_panic(e: std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe => Outcome::Closed,
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            panic!("the broker neither answered nor closed the connection within {READ_GUARD:?}")
        }
        _ => panic!("unexpected read error: {e}"),
    }
}

/// The client id the raw connection sends unless told otherwise.
pub const DEFAULT_CLIENT_ID: &str = "wharf-it";

/// Request header + body, without the length prefix.
pub fn encode_request<R: Request>(correlation_id: i32, version: i16, req: &R) -> BytesMut {
    encode_request_as(DEFAULT_CLIENT_ID, correlation_id, version, req)
}

/// Like [`encode_request`], with the given client id in the header.
pub fn encode_request_as<R: Request>(
    client_id: &str,
    correlation_id: i32,
    version: i16,
    req: &R,
) -> BytesMut {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_string())));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, R::header_version(version))
        .expect("cannot encode a request header");
    req.encode(&mut buf, version)
        .expect("cannot encode a request body");
    buf
}

/// The highest version of `key` that both the broker and `[lo, hi]` accept.
pub fn pick_version(versions: &HashMap<i16, (i16, i16)>, key: ApiKey, lo: i16, hi: i16) -> i16 {
    let (min, max) = *versions
        .get(&(key as i16))
        .unwrap_or_else(|| panic!("the broker does not advertise {key:?}"));
    let v = max.min(hi);
    assert!(
        v >= lo.max(min),
        "no common {key:?} version: broker {min}..={max}, test {lo}..={hi}"
    );
    v
}

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// Asks for `topic` with auto-create on until every partition has a leader; returns its
/// partition count. Bounded retries: clients retry the same way while a topic is created.
pub fn ensure_topic(conn: &mut KafkaConn, topic: &str) -> usize {
    let versions = conn.api_versions();
    let version = pick_version(&versions, ApiKey::Metadata, 4, 12);
    for _ in 0..100 {
        let req = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name(topic)))
            ]))
            .with_allow_auto_topic_creation(true);
        let resp = conn.request(version, &req);
        if let Some(t) = resp.topics.first() {
            if t.error_code == error_code::NONE
                && !t.partitions.is_empty()
                && t.partitions
                    .iter()
                    .all(|p| p.error_code == 0 && p.leader_id.0 >= 0)
            {
                return t.partitions.len();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("topic {topic} never got a leader for every partition");
}

/// One v2 record batch holding `values`, uncompressed or compressed, with a correct CRC.
pub fn record_batch(values: &[Bytes], compression: Compression) -> Bytes {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // kafka-protocol starts a new batch unless offset - sequence stays constant;
            // this keeps every record in one batch whose base sequence is -1 (none).
            sequence: i as i32 - 1,
            timestamp: now_ms,
            key: None,
            value: Some(v.clone()),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("cannot encode a record batch");
    buf.freeze()
}

/// Byte offset of the CRC-32C field in a v2 batch header; everything after it is covered.
pub const BATCH_CRC_OFFSET: usize = 17;
/// Byte offset of the attributes field (compression codec in the low 3 bits).
pub const BATCH_ATTRIBUTES_OFFSET: usize = 21;

/// A Produce request for one partition.
pub fn produce_request(topic: &str, partition: i32, acks: i16, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])])
}

/// Sends one Produce and returns (error_code, base_offset) of its single partition.
pub fn produce_one(
    conn: &mut KafkaConn,
    version: i16,
    topic: &str,
    partition: i32,
    records: Bytes,
) -> (i16, i64) {
    let resp = conn.request(version, &produce_request(topic, partition, 1, records));
    let t = resp
        .responses
        .first()
        .expect("a produce response has the topic");
    let p = t
        .partition_responses
        .first()
        .expect("a produce response has the partition");
    (p.error_code, p.base_offset)
}

/// Puts a big-endian i32 at `pos` (for hand-built frames).
pub fn put_i32_at(buf: &mut [u8], pos: usize, v: i32) {
    buf[pos..pos + 4].copy_from_slice(&v.to_be_bytes());
}

/// A hand-built request header v1 (non-flexible): api key, version, correlation id, client id.
pub fn header_v1(api_key: i16, version: i16, correlation_id: i32) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_i16(api_key);
    b.put_i16(version);
    b.put_i32(correlation_id);
    b.put_i16(8);
    b.put_slice(b"wharf-it");
    b
}

/// A hand-built request header v2 (flexible): header v1 plus an empty tagged-field section.
pub fn header_v2(api_key: i16, version: i16, correlation_id: i32) -> BytesMut {
    let mut b = header_v1(api_key, version, correlation_id);
    b.put_u8(0);
    b
}
