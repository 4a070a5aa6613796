//! Request and response versions that Kafka 3.9 served but that `kafka-protocol` (generated
//! from Kafka 4's schemas, KIP-896) no longer knows: Produce v0–2, Fetch v0–3, ListOffsets
//! v0, OffsetForLeaderEpoch v0–1, CreateTopics v0–1, DeleteTopics v0, DescribeConfigs v0,
//! OffsetCommit v0–1, OffsetFetch v0 and DescribeLogDirs v0.
//!
//! Each old version is decoded into (and encoded from) `kafka-protocol`'s own message
//! structs, so a handler has one code path for every version; the few fields that exist
//! only in old versions come back beside the struct. Versions whose layout equals one the
//! crate knows are handed to the crate at that version. All of them are non-flexible:
//! strings and arrays carry `int16` / `int32` lengths, and the response header is v0.
//!
//! Like the rest of this crate: no I/O, nothing allocated by a count before the bytes that
//! must follow it are known to be there, no panic on any input.

pub mod create_topics;
pub mod delete_topics;
pub mod describe_configs;
pub mod describe_log_dirs;
pub mod fetch;
pub mod list_offsets;
pub mod offset_commit;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::frame::{FrameError, SIZE_PREFIX_BYTES};

/// Why an old-version request could not be decoded (the connection is closed, as Kafka
/// does with a request it cannot parse) or a response not encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegacyError {
    #[error("{0} v{1} is not an old version handled here")]
    Version(&'static str, i16),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("a {0} does not fit its length field")]
    TooLong(&'static str),
}

/// A request type whose versions below `kafka-protocol`'s floor are decoded here.
pub trait LegacyRequest: Decodable + Sized {
    /// Decodes the body of a request at `version`, an old version this module knows.
    fn decode_legacy(body: &mut Bytes, version: i16) -> Result<Self, LegacyError>;
}

/// A response type whose versions below `kafka-protocol`'s floor are encoded here.
pub trait LegacyResponse: Encodable {
    /// Encodes the body of a response at `version`, an old version this module knows.
    fn encode_legacy(&self, version: i16, out: &mut BytesMut) -> Result<(), LegacyError>;
}

/// Whether `version` of `api` is below what `kafka-protocol` decodes, i.e. this module's.
pub fn is_legacy(api: ApiKey, version: i16) -> bool {
    version >= 0 && version < api.valid_versions().min
}

/// Decodes a request body at any version Kafka 3.9 served.
pub fn decode_request<R: LegacyRequest>(
    api: ApiKey,
    body: &mut Bytes,
    version: i16,
) -> Result<R, LegacyError> {
    if is_legacy(api, version) {
        R::decode_legacy(body, version)
    } else {
        R::decode(body, version).map_err(|e| LegacyError::Malformed(e.to_string()))
    }
}

/// Encodes a complete response frame (size, header v0 or the version's header, body) at
/// any version Kafka 3.9 served.
pub fn encode_response<M: LegacyResponse>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &M,
) -> Result<Bytes, FrameError> {
    if !is_legacy(api, version) {
        return crate::frame::encode_response(api, version, correlation_id, body);
    }
    encode_frame(correlation_id, |out| body.encode_legacy(version, out))
}

/// A response frame with header v0 (every old version is non-flexible) around the body
/// `encode_body` writes.
pub fn encode_frame(
    correlation_id: i32,
    encode_body: impl FnOnce(&mut BytesMut) -> Result<(), LegacyError>,
) -> Result<Bytes, FrameError> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0); // size, filled in below
    buf.put_i32(correlation_id);
    encode_body(&mut buf).map_err(|e| FrameError::Encode(e.to_string()))?;
    let size = buf.len() - SIZE_PREFIX_BYTES;
    let size =
        i32::try_from(size).map_err(|_| FrameError::Encode(format!("response of {size} bytes")))?;
    buf[..SIZE_PREFIX_BYTES].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}

/// Decodes with `kafka-protocol` at `version`, an equal layout to the old one.
fn decode_as<R: Decodable>(body: &mut Bytes, version: i16) -> Result<R, LegacyError> {
    R::decode(body, version).map_err(|e| LegacyError::Malformed(e.to_string()))
}

/// Encodes with `kafka-protocol` at `version`, an equal layout to the old one.
fn encode_as<M: Encodable>(body: &M, version: i16, out: &mut BytesMut) -> Result<(), LegacyError> {
    body.encode(out, version)
        .map_err(|e| LegacyError::Malformed(e.to_string()))
}

/// Reads the non-flexible wire types from a request body. Every length is checked against
/// the bytes that remain before anything is read or allocated.
pub(crate) struct Reader<'a> {
    buf: &'a mut Bytes,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a mut Bytes) -> Reader<'a> {
        Reader { buf }
    }

    fn need(&self, n: usize) -> Result<(), LegacyError> {
        if self.buf.remaining() < n {
            Err(LegacyError::Malformed(format!(
                "truncated: {n} more bytes needed, {} left",
                self.buf.remaining()
            )))
        } else {
            Ok(())
        }
    }

    pub(crate) fn i8(&mut self) -> Result<i8, LegacyError> {
        self.need(1)?;
        Ok(self.buf.get_i8())
    }
    pub(crate) fn i16(&mut self) -> Result<i16, LegacyError> {
        self.need(2)?;
        Ok(self.buf.get_i16())
    }
    pub(crate) fn i32(&mut self) -> Result<i32, LegacyError> {
        self.need(4)?;
        Ok(self.buf.get_i32())
    }
    pub(crate) fn i64(&mut self) -> Result<i64, LegacyError> {
        self.need(8)?;
        Ok(self.buf.get_i64())
    }

    /// An `int16`-length string; -1 (null) only where `nullable`.
    fn string_or_null(&mut self) -> Result<Option<StrBytes>, LegacyError> {
        let len = self.i16()?;
        if len < 0 {
            return if len == -1 {
                Ok(None)
            } else {
                Err(LegacyError::Malformed(format!("string length {len}")))
            };
        }
        let len = len as usize;
        self.need(len)?;
        let bytes = self.buf.split_to(len);
        StrBytes::from_utf8(bytes)
            .map(Some)
            .map_err(|_| LegacyError::Malformed("a string is not UTF-8".into()))
    }
    pub(crate) fn string(&mut self) -> Result<StrBytes, LegacyError> {
        self.string_or_null()?
            .ok_or_else(|| LegacyError::Malformed("null where a string is required".into()))
    }
    pub(crate) fn nullable_string(&mut self) -> Result<Option<StrBytes>, LegacyError> {
        self.string_or_null()
    }

    /// `int32`-length bytes, -1 for null; shares the request's buffer (no copy).
    pub(crate) fn nullable_bytes(&mut self) -> Result<Option<Bytes>, LegacyError> {
        let len = self.i32()?;
        if len < 0 {
            return if len == -1 {
                Ok(None)
            } else {
                Err(LegacyError::Malformed(format!("bytes length {len}")))
            };
        }
        let len = len as usize;
        self.need(len)?;
        Ok(Some(self.buf.split_to(len)))
    }

    /// An array length, -1 (null) only where `nullable`; refused if that many elements of
    /// at least `min_element_bytes` each cannot fit in what remains.
    fn array_len_or_null(
        &mut self,
        min_element_bytes: usize,
    ) -> Result<Option<usize>, LegacyError> {
        let n = self.i32()?;
        if n < 0 {
            return if n == -1 {
                Ok(None)
            } else {
                Err(LegacyError::Malformed(format!("array length {n}")))
            };
        }
        let n = n as usize;
        if n.saturating_mul(min_element_bytes.max(1)) > self.buf.remaining() {
            return Err(LegacyError::Malformed(format!(
                "array of {n} elements cannot fit in {} bytes",
                self.buf.remaining()
            )));
        }
        Ok(Some(n))
    }
    pub(crate) fn array_len(&mut self, min_element_bytes: usize) -> Result<usize, LegacyError> {
        self.array_len_or_null(min_element_bytes)?
            .ok_or_else(|| LegacyError::Malformed("null where an array is required".into()))
    }
    pub(crate) fn nullable_array_len(
        &mut self,
        min_element_bytes: usize,
    ) -> Result<Option<usize>, LegacyError> {
        self.array_len_or_null(min_element_bytes)
    }

    /// Reads `n` elements with `f` (`n` already bounded by [`Reader::array_len`]).
    pub(crate) fn elements<T>(
        &mut self,
        n: usize,
        mut f: impl FnMut(&mut Reader<'_>) -> Result<T, LegacyError>,
    ) -> Result<Vec<T>, LegacyError> {
        let mut out = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            out.push(f(self)?);
        }
        Ok(out)
    }

    /// An array of `i32`.
    pub(crate) fn i32_array(&mut self) -> Result<Vec<i32>, LegacyError> {
        let n = self.array_len(4)?;
        self.elements(n, |r| r.i32())
    }
}

/// Writes the non-flexible wire types of a response body.
pub(crate) struct Writer<'a> {
    out: &'a mut BytesMut,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(out: &'a mut BytesMut) -> Writer<'a> {
        Writer { out }
    }
    pub(crate) fn i8(&mut self, v: i8) {
        self.out.put_i8(v);
    }
    pub(crate) fn bool(&mut self, v: bool) {
        self.out.put_i8(v as i8);
    }
    pub(crate) fn i16(&mut self, v: i16) {
        self.out.put_i16(v);
    }
    pub(crate) fn i32(&mut self, v: i32) {
        self.out.put_i32(v);
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.out.put_i64(v);
    }
    pub(crate) fn string(&mut self, s: &str) -> Result<(), LegacyError> {
        let len = i16::try_from(s.len()).map_err(|_| LegacyError::TooLong("string"))?;
        self.out.put_i16(len);
        self.out.put_slice(s.as_bytes());
        Ok(())
    }
    pub(crate) fn nullable_string(&mut self, s: Option<&str>) -> Result<(), LegacyError> {
        match s {
            Some(s) => self.string(s),
            None => {
                self.out.put_i16(-1);
                Ok(())
            }
        }
    }
    pub(crate) fn nullable_bytes(&mut self, b: Option<&[u8]>) -> Result<(), LegacyError> {
        match b {
            Some(b) => {
                let len = i32::try_from(b.len()).map_err(|_| LegacyError::TooLong("bytes"))?;
                self.out.put_i32(len);
                self.out.put_slice(b);
            }
            None => self.out.put_i32(-1),
        }
        Ok(())
    }
    pub(crate) fn array_len(&mut self, n: usize) -> Result<(), LegacyError> {
        let n = i32::try_from(n).map_err(|_| LegacyError::TooLong("array"))?;
        self.out.put_i32(n);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! A request writer for the tests: the layouts written out by hand, independently of
    //! the decoders they check.
    use bytes::{BufMut, BytesMut};

    pub struct Out(pub BytesMut);

    impl Out {
        pub fn new() -> Out {
            Out(BytesMut::new())
        }
        pub fn i8(mut self, v: i8) -> Out {
            self.0.put_i8(v);
            self
        }
        pub fn i16(mut self, v: i16) -> Out {
            self.0.put_i16(v);
            self
        }
        pub fn i32(mut self, v: i32) -> Out {
            self.0.put_i32(v);
            self
        }
        pub fn i64(mut self, v: i64) -> Out {
            self.0.put_i64(v);
            self
        }
        pub fn str(mut self, s: &str) -> Out {
            self.0.put_i16(s.len() as i16);
            self.0.put_slice(s.as_bytes());
            self
        }
        pub fn bytes(mut self, b: &[u8]) -> Out {
            self.0.put_i32(b.len() as i32);
            self.0.put_slice(b);
            self
        }
        pub fn freeze(self) -> bytes::Bytes {
            self.0.freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_refuses_counts_the_bytes_cannot_hold() {
        let mut b = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 0, 0]);
        assert!(Reader::new(&mut b).array_len(4).is_err());
        let mut b = Bytes::from_static(&[0x00, 0x05, b'a']);
        assert!(Reader::new(&mut b).string().is_err());
        let mut b = Bytes::from_static(&[0xff, 0xff]);
        assert_eq!(Reader::new(&mut b).nullable_string(), Ok(None));
        let mut b = Bytes::from_static(&[0xff, 0xfe]);
        assert!(Reader::new(&mut b).nullable_string().is_err());
    }

    #[test]
    fn legacy_versions_are_those_below_the_crates_floor() {
        assert!(is_legacy(ApiKey::Produce, 2));
        assert!(!is_legacy(ApiKey::Produce, 3));
        assert!(is_legacy(ApiKey::Fetch, 0));
        assert!(!is_legacy(ApiKey::Metadata, 0));
        assert!(is_legacy(ApiKey::ListOffsets, 0));
    }
}
