//! Old (pre-Kafka 2.1) request versions by hand: `kafka-protocol` no longer encodes them, so
//! these tests write each request's fields in the order of Kafka 3.9's message schemas and
//! read each response field by field, failing on a short or over-long response. Written
//! independently of the broker's own codecs, so a layout mistake there shows here.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::raw::{header_v1, KafkaConn};

/// A request body under construction.
#[derive(Default)]
pub struct Body(pub BytesMut);

impl Body {
    pub fn new() -> Body {
        Body::default()
    }
    pub fn i8(mut self, v: i8) -> Body {
        self.0.put_i8(v);
        self
    }
    pub fn i16(mut self, v: i16) -> Body {
        self.0.put_i16(v);
        self
    }
    pub fn i32(mut self, v: i32) -> Body {
        self.0.put_i32(v);
        self
    }
    pub fn i64(mut self, v: i64) -> Body {
        self.0.put_i64(v);
        self
    }
    pub fn str(mut self, s: &str) -> Body {
        self.0.put_i16(s.len() as i16);
        self.0.put_slice(s.as_bytes());
        self
    }
    pub fn null_str(mut self) -> Body {
        self.0.put_i16(-1);
        self
    }
    pub fn bytes(mut self, b: &[u8]) -> Body {
        self.0.put_i32(b.len() as i32);
        self.0.put_slice(b);
        self
    }
}

/// A response body being read; every read panics (fails the test) if the bytes run out.
pub struct Parse(pub Bytes);

impl Parse {
    fn need(&self, n: usize, what: &str) {
        assert!(
            self.0.remaining() >= n,
            "response ends before {what}: {} bytes left, {n} needed",
            self.0.remaining()
        );
    }
    pub fn i8(&mut self) -> i8 {
        self.need(1, "an int8");
        self.0.get_i8()
    }
    pub fn bool(&mut self) -> bool {
        self.i8() != 0
    }
    pub fn i16(&mut self) -> i16 {
        self.need(2, "an int16");
        self.0.get_i16()
    }
    pub fn i32(&mut self) -> i32 {
        self.need(4, "an int32");
        self.0.get_i32()
    }
    pub fn i64(&mut self) -> i64 {
        self.need(8, "an int64");
        self.0.get_i64()
    }
    pub fn nullable_str(&mut self) -> Option<String> {
        let len = self.i16();
        if len < 0 {
            assert_eq!(len, -1, "string length");
            return None;
        }
        self.need(len as usize, "a string");
        let b = self.0.split_to(len as usize);
        Some(String::from_utf8(b.to_vec()).expect("UTF-8 string"))
    }
    pub fn str(&mut self) -> String {
        self.nullable_str().expect("a non-null string")
    }
    pub fn nullable_bytes(&mut self) -> Option<Bytes> {
        let len = self.i32();
        if len < 0 {
            assert_eq!(len, -1, "bytes length");
            return None;
        }
        self.need(len as usize, "bytes");
        Some(self.0.split_to(len as usize))
    }
    /// An array length, checked to be sane.
    pub fn len(&mut self) -> usize {
        let n = self.i32();
        assert!(
            (0..100_000).contains(&n),
            "array length {n} is out of range"
        );
        n as usize
    }
    /// The whole response was read: a client of this version would find nothing left over.
    pub fn end(&self) {
        assert_eq!(
            self.0.remaining(),
            0,
            "{} bytes after the response body",
            self.0.remaining()
        );
    }
}

/// Sends `body` as API `api_key` at `version` (request header v1) and returns the response
/// body, after checking the response header v0 (correlation id only).
pub fn call(conn: &mut KafkaConn, api_key: i16, version: i16, body: Body) -> Parse {
    let correlation_id = conn.next_correlation_id();
    let mut frame = header_v1(api_key, version, correlation_id);
    frame.put_slice(&body.0);
    conn.write_frame(&frame).expect("cannot write a request");
    let mut response = conn.read_frame();
    assert!(
        response.remaining() >= 4,
        "response shorter than its header"
    );
    assert_eq!(
        response.get_i32(),
        correlation_id,
        "correlation id of api {api_key} v{version}"
    );
    Parse(response)
}

/// Sends a request that expects no response (Produce with acks=0).
pub fn send_only(conn: &mut KafkaConn, api_key: i16, version: i16, body: Body) {
    let correlation_id = conn.next_correlation_id();
    let mut frame = header_v1(api_key, version, correlation_id);
    frame.put_slice(&body.0);
    conn.write_frame(&frame).expect("cannot write a request");
}

/// One message of format v0/v1 (offset, size, CRC-32, magic, attributes, [timestamp],
/// key, value), written from Kafka's layout.
pub fn message(
    offset: i64,
    magic: i8,
    attributes: i8,
    timestamp: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Vec<u8> {
    let mut body = vec![magic as u8, attributes as u8];
    if magic == 1 {
        body.extend_from_slice(&timestamp.to_be_bytes());
    }
    for f in [key, value] {
        match f {
            Some(b) => {
                body.extend_from_slice(&(b.len() as i32).to_be_bytes());
                body.extend_from_slice(b);
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    let crc = crc32fast::hash(&body);
    let mut out = offset.to_be_bytes().to_vec();
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Kafka's attribute code of a codec name.
pub fn codec_code(codec: &str) -> i8 {
    match codec {
        "none" => 0,
        "gzip" => 1,
        "snappy" => 2,
        "lz4" => 3,
        "zstd" => 4,
        other => panic!("unknown codec {other}"),
    }
}

/// Compresses with kafka-protocol's codecs (Kafka's framings, LZ4 header checksum of
/// the frame format).
pub fn compress(codec: &str, data: &[u8]) -> Vec<u8> {
    use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};
    let mut out = BytesMut::new();
    let copy = |b: &mut BytesMut| -> anyhow::Result<()> {
        b.put_slice(data);
        Ok(())
    };
    match codec {
        "gzip" => Gzip::compress(&mut out, copy),
        "snappy" => Snappy::compress(&mut out, copy),
        "lz4" => Lz4::compress(&mut out, copy),
        "zstd" => Zstd::compress(&mut out, copy),
        other => panic!("unknown codec {other}"),
    }
    .expect("compresses");
    out.to_vec()
}

/// Decompresses with kafka-protocol's codecs.
pub fn decompress(codec: &str, data: &[u8]) -> Vec<u8> {
    use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};
    let mut input = Bytes::copy_from_slice(data);
    let take = |b: &mut Bytes| -> anyhow::Result<Vec<u8>> { Ok(b.to_vec()) };
    match codec {
        "gzip" => Gzip::decompress(&mut input, take),
        "snappy" => Snappy::decompress(&mut input, take),
        "lz4" => Lz4::decompress(&mut input, take),
        "zstd" => Zstd::decompress(&mut input, take),
        other => panic!("unknown codec {other}"),
    }
    .unwrap_or_else(|e| panic!("{codec} data does not decompress: {e}"))
}

/// A message read back from a fetched message set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msg {
    pub offset: i64,
    pub magic: i8,
    pub attributes: i8,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Parses a message set, checking every CRC; a partial message at the end is allowed
/// (old readers skip it), anything else malformed fails the test.
pub fn parse_messages(mut b: &[u8]) -> Vec<Msg> {
    let mut out = Vec::new();
    while b.len() >= 12 {
        let offset = i64::from_be_bytes(b[..8].try_into().unwrap());
        let size = i32::from_be_bytes(b[8..12].try_into().unwrap()) as usize;
        if b.len() < 12 + size {
            break;
        }
        let body = &b[12..12 + size];
        let crc = u32::from_be_bytes(body[..4].try_into().unwrap());
        assert_eq!(
            crc,
            crc32fast::hash(&body[4..]),
            "message CRC at offset {offset}"
        );
        let magic = body[4] as i8;
        assert!(magic == 0 || magic == 1, "magic {magic}");
        let attributes = body[5] as i8;
        let mut p = Parse(Bytes::copy_from_slice(&body[6..]));
        let timestamp = if magic == 1 { p.i64() } else { -1 };
        let key = p.nullable_bytes().map(|b| b.to_vec());
        let value = p.nullable_bytes().map(|b| b.to_vec());
        p.end();
        out.push(Msg {
            offset,
            magic,
            attributes,
            timestamp,
            key,
            value,
        });
        b = &b[12 + size..];
    }
    out
}
