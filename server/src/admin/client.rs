//! A minimal blocking Kafka client for the admin subcommands: one connection, one request
//! at a time, versions negotiated with ApiVersions.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

/// The largest response accepted.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("connection to the broker failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the broker does not support {0:?} in a version this tool speaks")]
    Unsupported(ApiKey),
    #[error("bad response from the broker: {0}")]
    Protocol(String),
}

/// A Kafka error code as a person reads it: its name and number.
pub fn error_name(code: i16) -> String {
    match kafka_protocol::ResponseError::try_from_code(code) {
        Some(e) => format!("{e} ({code})"),
        None if code == 0 => "no error".to_string(),
        None => format!("error {code}"),
    }
}

pub struct AdminClient {
    stream: TcpStream,
    next_correlation_id: i32,
    versions: HashMap<i16, (i16, i16)>,
}

impl AdminClient {
    /// Connects to `addr` (`host:port`) and asks which API versions the broker speaks.
    pub fn connect(addr: &str) -> Result<AdminClient, AdminError> {
        let stream = TcpStream::connect(addr).map_err(|e| AdminError::Connect {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut client = AdminClient {
            stream,
            next_correlation_id: 0,
            versions: HashMap::new(),
        };
        let response: ApiVersionsResponse = client.send_at(&ApiVersionsRequest::default(), 3)?;
        client.versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(client)
    }

    /// Sends `request` at the newest version both sides speak, up to `max_version`.
    pub fn send<R: Request>(
        &mut self,
        request: &R,
        max_version: i16,
    ) -> Result<R::Response, AdminError> {
        let key =
            ApiKey::try_from(R::KEY).map_err(|_| AdminError::Protocol("unknown api key".into()))?;
        let (min, max) = self
            .versions
            .get(&R::KEY)
            .copied()
            .ok_or(AdminError::Unsupported(key))?;
        let version = max.min(max_version).min(R::VERSIONS.max);
        if version < min.max(R::VERSIONS.min) {
            return Err(AdminError::Unsupported(key));
        }
        self.send_at(request, version)
    }

    fn send_at<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, AdminError> {
        let key =
            ApiKey::try_from(R::KEY).map_err(|_| AdminError::Protocol("unknown api key".into()))?;
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("wharf-admin")));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, key.request_header_version(version))
            .map_err(|e| AdminError::Protocol(e.to_string()))?;
        request
            .encode(&mut body, version)
            .map_err(|e| AdminError::Protocol(e.to_string()))?;
        let mut frame = BytesMut::with_capacity(4 + body.len());
        frame.put_i32(body.len() as i32);
        frame.put_slice(&body);
        self.stream.write_all(&frame)?;

        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let size = i32::from_be_bytes(size);
        if size < 4 || size as usize > MAX_RESPONSE_BYTES {
            return Err(AdminError::Protocol(format!("response size {size}")));
        }
        let mut buf = vec![0u8; size as usize];
        self.stream.read_exact(&mut buf)?;
        let mut buf = Bytes::from(buf);
        if buf.get_i32() != correlation_id {
            return Err(AdminError::Protocol("correlation id mismatch".into()));
        }
        if key.response_header_version(version) >= 1 {
            // Response header v1: tagged fields (a varint count, expected to be zero).
            kafka_protocol::messages::ResponseHeader::decode(
                &mut Bytes::from_static(&[0, 0, 0, 0, 0]),
                1,
            )
            .ok();
            skip_tagged_fields(&mut buf)?;
        }
        R::Response::decode(&mut buf, version).map_err(|e| AdminError::Protocol(e.to_string()))
    }
}

fn skip_tagged_fields(buf: &mut Bytes) -> Result<(), AdminError> {
    let count = read_varint(buf)?;
    for _ in 0..count {
        let _tag = read_varint(buf)?;
        let size = read_varint(buf)? as usize;
        if buf.remaining() < size {
            return Err(AdminError::Protocol("truncated tagged field".into()));
        }
        buf.advance(size);
    }
    Ok(())
}

fn read_varint(buf: &mut Bytes) -> Result<u32, AdminError> {
    let mut value: u32 = 0;
    for shift in (0..35).step_by(7) {
        if !buf.has_remaining() {
            return Err(AdminError::Protocol("truncated varint".into()));
        }
        let b = buf.get_u8();
        value |= ((b & 0x7f) as u32) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(AdminError::Protocol("varint too long".into()))
}
