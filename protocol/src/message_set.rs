//! Message sets: Kafka's record format before v2 (magic 0 and 1), which Produce v0–2 carry
//! and Fetch v0–3 return. All integers big-endian:
//!
//! ```text
//!  0 offset       i64    absolute; inside a magic-1 compressed wrapper, relative (0..n-1)
//!  8 messageSize  i32    bytes after this field
//! 12 crc          u32    CRC-32 (IEEE) of bytes 16..end
//! 16 magic        i8     0 or 1
//! 17 attributes   i8     compression (bits 0-2), timestamp type (bit 3, magic 1)
//! 18 timestamp    i64    magic 1 only
//!    key          bytes  int32 length, -1 for null
//!    value        bytes  int32 length, -1 for null
//! ```
//!
//! A compressed message is a wrapper: its value is a compressed message set (the "inner"
//! messages) and its offset is that of the last inner message.
//!
//! Parsing never panics and never allocates by a length read from the input; building is
//! for the broker's down-conversion and for tests.

use crate::batch::Compression;
use crate::compression::{self, CodecError, Levels, Lz4Header};

/// Bytes before `messageSize`'s scope starts (offset + messageSize).
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// CRC + magic + attributes + key length + value length.
pub const RECORD_OVERHEAD_V0_BYTES: usize = 14;
/// [`RECORD_OVERHEAD_V0_BYTES`] + timestamp.
pub const RECORD_OVERHEAD_V1_BYTES: usize = 22;

const ATTR_COMPRESSION_MASK: i8 = 0x07;
const ATTR_TIMESTAMP_TYPE: i8 = 1 << 3;

/// Why a message set was refused. [`MessageSetError::is_corrupt`] separates damaged bytes
/// (CORRUPT_MESSAGE) from well-formed ones that break a rule (INVALID_RECORD).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageSetError {
    #[error("message at byte {at} is cut short")]
    Truncated { at: usize },
    #[error("message at byte {at} has an impossible size {size}")]
    BadSize { at: usize, size: i32 },
    #[error("message at byte {at} has magic {magic} (only 0 and 1 are message sets)")]
    BadMagic { at: usize, magic: i8 },
    #[error(
        "message at byte {at}: CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
    )]
    BadCrc {
        at: usize,
        stored: u32,
        computed: u32,
    },
    #[error("message at byte {at}: key or value length disagrees with the message size")]
    BadFields { at: usize },
    #[error("message at byte {at} has unknown compression codec {codec}")]
    BadCompression { at: usize, codec: i8 },
}

impl MessageSetError {
    /// Damaged bytes, as opposed to an unknown codec (a rule).
    pub fn is_corrupt(&self) -> bool {
        !matches!(self, MessageSetError::BadCompression { .. })
    }
}

/// Timestamp type of a magic-1 message (attribute bit 3).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MessageTimestampType {
    CreateTime,
    LogAppendTime,
}

/// One message of a message set, borrowed from its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub offset: i64,
    pub magic: i8,
    pub attributes: i8,
    /// -1 (Kafka's `NO_TIMESTAMP`) for magic 0.
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

impl Message<'_> {
    pub fn compression(&self) -> Option<Compression> {
        Compression::from_code((self.attributes & ATTR_COMPRESSION_MASK) as i16)
    }
    pub fn is_compressed(&self) -> bool {
        self.attributes & ATTR_COMPRESSION_MASK != 0
    }
    pub fn timestamp_type(&self) -> MessageTimestampType {
        if self.magic > 0 && self.attributes & ATTR_TIMESTAMP_TYPE != 0 {
            MessageTimestampType::LogAppendTime
        } else {
            MessageTimestampType::CreateTime
        }
    }
}

/// Reads `len`-prefixed bytes at `pos` of `body`; -1 is null.
fn field<'a>(body: &'a [u8], pos: &mut usize) -> Option<Option<&'a [u8]>> {
    let len = i32::from_be_bytes(body.get(*pos..*pos + 4)?.try_into().ok()?);
    *pos += 4;
    if len == -1 {
        return Some(None);
    }
    let len = usize::try_from(len).ok()?;
    let end = pos.checked_add(len).filter(|end| *end <= body.len())?;
    let bytes = &body[*pos..end];
    *pos = end;
    Some(Some(bytes))
}

/// Parses the message at the start of `bytes` (which is `at` bytes into its message set,
/// for error messages), checking size, magic, CRC and field lengths. Returns the message
/// and its total size.
pub fn parse_message(bytes: &[u8], at: usize) -> Result<(Message<'_>, usize), MessageSetError> {
    let truncated = MessageSetError::Truncated { at };
    let head = bytes.get(..LOG_OVERHEAD_BYTES).ok_or(truncated.clone())?;
    let offset = i64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
    let size = i32::from_be_bytes(head[8..12].try_into().expect("4 bytes"));
    let bad_size = MessageSetError::BadSize { at, size };
    let body_len = usize::try_from(size).map_err(|_| bad_size.clone())?;
    if body_len < RECORD_OVERHEAD_V0_BYTES {
        return Err(bad_size);
    }
    let total = LOG_OVERHEAD_BYTES + body_len;
    let body = bytes.get(LOG_OVERHEAD_BYTES..total).ok_or(truncated)?;
    let stored = u32::from_be_bytes(body[..4].try_into().expect("4 bytes"));
    let magic = body[4] as i8;
    if !(0..=1).contains(&magic) {
        return Err(MessageSetError::BadMagic { at, magic });
    }
    if magic == 1 && body_len < RECORD_OVERHEAD_V1_BYTES {
        return Err(bad_size);
    }
    let computed = crc32fast::hash(&body[4..]);
    if computed != stored {
        return Err(MessageSetError::BadCrc {
            at,
            stored,
            computed,
        });
    }
    let attributes = body[5] as i8;
    let mut pos = 6;
    let timestamp = if magic == 1 {
        pos += 8;
        i64::from_be_bytes(body[6..14].try_into().expect("8 bytes"))
    } else {
        -1
    };
    let bad_fields = MessageSetError::BadFields { at };
    let key = field(body, &mut pos).ok_or(bad_fields.clone())?;
    let value = field(body, &mut pos).ok_or(bad_fields.clone())?;
    if pos != body.len() {
        return Err(bad_fields);
    }
    let message = Message {
        offset,
        magic,
        attributes,
        timestamp,
        key,
        value,
    };
    if message.compression().is_none() {
        return Err(MessageSetError::BadCompression {
            at,
            codec: attributes & ATTR_COMPRESSION_MASK,
        });
    }
    Ok((message, total))
}

/// The messages of a message set, in order; the first bad one ends the iteration with its
/// error. A set that ends inside a message yields [`MessageSetError::Truncated`].
pub struct Messages<'a> {
    bytes: &'a [u8],
    pos: usize,
    failed: bool,
}

pub fn messages(bytes: &[u8]) -> Messages<'_> {
    Messages {
        bytes,
        pos: 0,
        failed: false,
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, MessageSetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.bytes.len() {
            return None;
        }
        match parse_message(&self.bytes[self.pos..], self.pos) {
            Ok((message, size)) => {
                self.pos += size;
                Some(Ok(message))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// The magic of the entry at the start of `records` (a message set or v2 batches share
/// the byte's position), if there are enough bytes to tell.
pub fn first_magic(records: &[u8]) -> Option<i8> {
    records.get(16).map(|m| *m as i8)
}

/// Appends one message to `out`.
#[allow(clippy::too_many_arguments)]
pub fn write_message(
    out: &mut Vec<u8>,
    offset: i64,
    magic: i8,
    attributes: i8,
    timestamp: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) {
    debug_assert!((0..=1).contains(&magic));
    let field_len = |f: Option<&[u8]>| 4 + f.map_or(0, <[u8]>::len);
    let overhead = if magic == 0 {
        RECORD_OVERHEAD_V0_BYTES - 8
    } else {
        RECORD_OVERHEAD_V1_BYTES - 8
    };
    let size = overhead + field_len(key) + field_len(value);
    out.reserve(LOG_OVERHEAD_BYTES + size);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&(size as i32).to_be_bytes());
    let crc_at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(magic as u8);
    out.push(attributes as u8);
    if magic == 1 {
        out.extend_from_slice(&timestamp.to_be_bytes());
    }
    for f in [key, value] {
        match f {
            Some(bytes) => {
                out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                out.extend_from_slice(bytes);
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    let crc = crc32fast::hash(&out[crc_at + 4..]);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
}

/// The attributes of a message: codec, and for magic 1 the timestamp type.
pub fn attributes(magic: i8, codec: Compression, log_append_time: bool) -> i8 {
    let mut attributes = codec.code() as i8;
    if magic > 0 && log_append_time {
        attributes |= ATTR_TIMESTAMP_TYPE;
    }
    attributes
}

/// The LZ4 frame header checksum messages of `magic` carry (KAFKA-3160).
pub fn lz4_header(magic: i8) -> Lz4Header {
    if magic == 0 {
        Lz4Header::BrokenMagicV0
    } else {
        Lz4Header::Standard
    }
}

/// Appends a compressed wrapper around `inner` (a message set written at `magic`).
#[allow(clippy::too_many_arguments)]
pub fn write_wrapper(
    out: &mut Vec<u8>,
    offset: i64,
    magic: i8,
    codec: Compression,
    log_append_time: bool,
    timestamp: i64,
    inner: &[u8],
    levels: Levels,
) -> Result<(), CodecError> {
    let compressed = compression::compress(codec, inner, levels, lz4_header(magic))?;
    write_message(
        out,
        offset,
        magic,
        attributes(magic, codec, log_append_time),
        timestamp,
        None,
        Some(&compressed),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn written_messages_parse_back() {
        let mut set = Vec::new();
        write_message(&mut set, 5, 0, 0, -1, Some(b"k"), Some(b"value"));
        write_message(&mut set, 6, 1, 8, 1234, None, Some(b""));
        write_message(&mut set, 7, 1, 0, 99, Some(b""), None);
        let parsed: Vec<Message> = messages(&set).collect::<Result<_, _>>().expect("parses");
        assert_eq!(parsed.len(), 3);
        assert_eq!(
            (parsed[0].offset, parsed[0].magic, parsed[0].timestamp),
            (5, 0, -1)
        );
        assert_eq!(
            (parsed[0].key, parsed[0].value),
            (Some(&b"k"[..]), Some(&b"value"[..]))
        );
        assert_eq!(
            parsed[1].timestamp_type(),
            MessageTimestampType::LogAppendTime
        );
        assert_eq!((parsed[1].key, parsed[1].value), (None, Some(&b""[..])));
        assert_eq!((parsed[2].timestamp, parsed[2].value), (99, None));
        // magic 0 is 14 + 12 bytes of overhead, magic 1 22 + 12.
        assert_eq!(set.len(), (26 + 1 + 5) + 34 + 34);
    }

    #[test]
    fn damage_is_reported_not_panicked_on() {
        let mut set = Vec::new();
        write_message(&mut set, 0, 1, 0, 1, Some(b"k"), Some(b"v"));
        let mut flipped = set.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            messages(&flipped).next(),
            Some(Err(MessageSetError::BadCrc { .. }))
        ));
        assert!(matches!(
            messages(&set[..set.len() - 1]).next(),
            Some(Err(MessageSetError::Truncated { .. }))
        ));
        let mut magic2 = set.clone();
        magic2[16] = 2;
        assert!(matches!(
            messages(&magic2).next(),
            Some(Err(MessageSetError::BadMagic { .. }))
        ));
    }

    #[test]
    fn wrappers_hold_compressed_message_sets() {
        for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4] {
            for magic in [0, 1] {
                let mut inner = Vec::new();
                for i in 0..3 {
                    write_message(&mut inner, i, magic, 0, 10 + i, None, Some(b"x"));
                }
                let mut set = Vec::new();
                write_wrapper(
                    &mut set,
                    2,
                    magic,
                    codec,
                    false,
                    12,
                    &inner,
                    Levels::default(),
                )
                .expect("compresses");
                let (wrapper, _) = parse_message(&set, 0).expect("parses");
                assert_eq!(wrapper.compression(), Some(codec));
                let unpacked = compression::decompress(
                    codec,
                    wrapper.value.expect("a value"),
                    1 << 20,
                    lz4_header(magic),
                )
                .expect("decompresses");
                assert_eq!(unpacked, inner, "{codec:?} magic {magic}");
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for m in messages(&bytes).take(100) {
                let _ = m;
            }
        }
    }
}
