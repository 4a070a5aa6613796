//! The primitive types of Kafka's generated record schemas (big-endian integers, strings
//! with an int16 or varint length, arrays, tagged fields), for the transaction formats.

use bytes::{BufMut, Bytes, BytesMut};

/// Why a transaction record, marker or index entry could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnRecordError {
    #[error("record ends early: needed {needed} more bytes at byte {at}")]
    Truncated { at: usize, needed: usize },
    #[error("unknown {what} schema version {version}")]
    UnknownVersion { what: &'static str, version: i16 },
    #[error("invalid {what} at byte {at}")]
    Invalid { what: &'static str, at: usize },
    #[error("{extra} bytes left after the record")]
    TrailingBytes { extra: usize },
    #[error("{what} of {len} does not fit the schema's {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

/// The longest string a non-flexible schema can hold (a 16-bit length).
pub const MAX_SCHEMA_STRING_BYTES: usize = i16::MAX as usize;

#[derive(Default)]
pub(crate) struct Writer {
    buf: BytesMut,
}

impl Writer {
    pub(crate) fn finish(self) -> Bytes {
        self.buf.freeze()
    }
    pub(crate) fn i8(&mut self, v: i8) {
        self.buf.put_i8(v);
    }
    pub(crate) fn i16(&mut self, v: i16) {
        self.buf.put_i16(v);
    }
    pub(crate) fn i32(&mut self, v: i32) {
        self.buf.put_i32(v);
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.buf.put_i64(v);
    }
    pub(crate) fn raw(&mut self, b: &[u8]) {
        self.buf.put_slice(b);
    }
    pub(crate) fn uvarint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.put_u8((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.put_u8(v as u8);
    }
    /// A string: int16 length, or (flexible) unsigned varint length + 1.
    pub(crate) fn string(
        &mut self,
        what: &'static str,
        s: &str,
        flexible: bool,
    ) -> Result<(), TxnRecordError> {
        if flexible {
            let max = i32::MAX as usize - 1;
            if s.len() > max {
                return Err(TxnRecordError::TooLong {
                    what,
                    len: s.len(),
                    max,
                });
            }
            self.uvarint(s.len() as u64 + 1);
        } else {
            if s.len() > MAX_SCHEMA_STRING_BYTES {
                return Err(TxnRecordError::TooLong {
                    what,
                    len: s.len(),
                    max: MAX_SCHEMA_STRING_BYTES,
                });
            }
            self.i16(s.len() as i16);
        }
        self.buf.put_slice(s.as_bytes());
        Ok(())
    }
    /// An array length: int32 (-1 for null), or (flexible) unsigned varint length + 1
    /// (0 for null).
    pub(crate) fn array_len(
        &mut self,
        what: &'static str,
        n: Option<usize>,
        flexible: bool,
    ) -> Result<(), TxnRecordError> {
        let max = i32::MAX as usize - 1;
        match n {
            Some(n) if n > max => {
                return Err(TxnRecordError::TooLong { what, len: n, max });
            }
            Some(n) if flexible => self.uvarint(n as u64 + 1),
            Some(n) => self.i32(n as i32),
            None if flexible => self.uvarint(0),
            None => self.i32(-1),
        }
        Ok(())
    }
}

pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }
    pub(crate) fn at(&self) -> usize {
        self.at
    }
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], TxnRecordError> {
        if self.remaining() < n {
            return Err(TxnRecordError::Truncated {
                at: self.at,
                needed: n - self.remaining(),
            });
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }
    pub(crate) fn end(&self) -> Result<(), TxnRecordError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(TxnRecordError::TrailingBytes { extra }),
        }
    }
    pub(crate) fn i8(&mut self) -> Result<i8, TxnRecordError> {
        Ok(self.take(1)?[0] as i8)
    }
    pub(crate) fn i16(&mut self) -> Result<i16, TxnRecordError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn i32(&mut self) -> Result<i32, TxnRecordError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn i64(&mut self) -> Result<i64, TxnRecordError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    pub(crate) fn uvarint(&mut self) -> Result<u64, TxnRecordError> {
        let start = self.at;
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(TxnRecordError::Invalid {
            what: "varint",
            at: start,
        })
    }
    fn bounded_len(
        &self,
        len: u64,
        what: &'static str,
        at: usize,
    ) -> Result<usize, TxnRecordError> {
        if len > self.remaining() as u64 {
            return Err(TxnRecordError::Invalid { what, at });
        }
        Ok(len as usize)
    }
    /// A non-null string.
    pub(crate) fn string(&mut self, flexible: bool) -> Result<String, TxnRecordError> {
        let at = self.at;
        let len = if flexible {
            match self.uvarint()? {
                0 => {
                    return Err(TxnRecordError::Invalid {
                        what: "null string",
                        at,
                    })
                }
                n => n - 1,
            }
        } else {
            let n = self.i16()?;
            if n < 0 {
                return Err(TxnRecordError::Invalid {
                    what: "string length",
                    at,
                });
            }
            n as u64
        };
        let len = self.bounded_len(len, "string length", at)?;
        let start = self.at;
        let raw = self.take(len)?;
        let s = std::str::from_utf8(raw).map_err(|_| TxnRecordError::Invalid {
            what: "utf-8 string",
            at: start,
        })?;
        Ok(s.to_owned())
    }
    /// An array count (`None` for a null array), bounded by how many elements of at least
    /// `min_element_bytes` the remaining bytes could hold.
    pub(crate) fn array_len(
        &mut self,
        flexible: bool,
        min_element_bytes: usize,
    ) -> Result<Option<usize>, TxnRecordError> {
        let at = self.at;
        let n = if flexible {
            match self.uvarint()? {
                0 => return Ok(None),
                n => n - 1,
            }
        } else {
            match self.i32()? {
                -1 => return Ok(None),
                n if n < 0 => {
                    return Err(TxnRecordError::Invalid {
                        what: "array length",
                        at,
                    })
                }
                n => n as u64,
            }
        };
        if n > (self.remaining() / min_element_bytes.max(1)) as u64 {
            return Err(TxnRecordError::Invalid {
                what: "array length",
                at,
            });
        }
        Ok(Some(n as usize))
    }
    /// A tagged-field section: calls `field(tag, bytes)` for each field, bounded by the
    /// bytes that remain.
    pub(crate) fn tagged_fields(
        &mut self,
        mut field: impl FnMut(u64, &'a [u8], usize) -> Result<(), TxnRecordError>,
    ) -> Result<(), TxnRecordError> {
        let at = self.at;
        let count = self.uvarint()?;
        // Each field takes at least two bytes (tag and size).
        if count > (self.remaining() / 2) as u64 {
            return Err(TxnRecordError::Invalid {
                what: "tagged field count",
                at,
            });
        }
        for _ in 0..count {
            let tag = self.uvarint()?;
            let size_at = self.at;
            let size = self.uvarint()?;
            let size = self.bounded_len(size, "tagged field size", size_at)?;
            let start = self.at;
            let data = self.take(size)?;
            field(tag, data, start)?;
        }
        Ok(())
    }
}
