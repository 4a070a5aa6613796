//! RecordBatch v2 (magic 2) header view, validation and encoding.
//!
//! Layout of a batch (Kafka's `DefaultRecordBatch`), all integers big-endian:
//!
//! ```text
//!  0 baseOffset            i64   rewritten by the broker, not covered by the CRC
//!  8 batchLength           i32   bytes after this field (total size - 12)
//! 12 partitionLeaderEpoch  i32   rewritten by the broker, not covered by the CRC
//! 16 magic                 i8    2
//! 17 crc                   u32   CRC-32C of bytes 21..end
//! 21 attributes            i16   compression (bits 0-2), timestamp type (3),
//!                                transactional (4), control (5), delete horizon (6)
//! 23 lastOffsetDelta       i32
//! 27 baseTimestamp         i64
//! 35 maxTimestamp          i64
//! 43 producerId            i64
//! 51 producerEpoch         i16
//! 53 baseSequence          i32
//! 57 recordsCount          i32
//! 61 records ...
//! ```
//!
//! Nothing here allocates by a count or length read from the input, and nothing panics on
//! any input: every function takes arbitrary bytes.

use zerocopy::byteorder::big_endian::{I16, I32, I64, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of the v2 batch header in bytes; also the smallest possible batch (no records).
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before `batchLength`'s scope starts (baseOffset + batchLength).
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// The only record batch format this code accepts.
pub const MAGIC_V2: i8 = 2;
/// Offset of the first CRC-covered byte (attributes).
pub const CRC_COVERED_FROM: usize = 21;
/// The smallest encoded record: length, attributes, timestamp delta, offset delta, key
/// length, value length and header count, one byte each.
pub const MIN_RECORD_BYTES: usize = 7;
/// Kafka's `RecordBatch.NO_PRODUCER_ID`, `NO_PRODUCER_EPOCH`, `NO_SEQUENCE`.
pub const NO_PRODUCER_ID: i64 = -1;
pub const NO_PRODUCER_EPOCH: i16 = -1;
pub const NO_SEQUENCE: i32 = -1;
/// `RecordBatch.NO_TIMESTAMP`.
pub const NO_TIMESTAMP: i64 = -1;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TIMESTAMP_TYPE: i16 = 1 << 3;
const ATTR_TRANSACTIONAL: i16 = 1 << 4;
const ATTR_CONTROL: i16 = 1 << 5;
const ATTR_DELETE_HORIZON: i16 = 1 << 6;

/// The compression codec named by a batch's attributes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    fn from_attributes(attributes: i16) -> Option<Compression> {
        Compression::from_code(attributes & ATTR_COMPRESSION_MASK)
    }

    /// The codec of Kafka's attribute code (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn from_code(code: i16) -> Option<Compression> {
        match code {
            0 => Some(Compression::None),
            1 => Some(Compression::Gzip),
            2 => Some(Compression::Snappy),
            3 => Some(Compression::Lz4),
            4 => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// Kafka's attribute code for this codec.
    pub fn code(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// Kafka's name for the codec (`compression.type` values; `uncompressed` for none).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// How the batch's timestamps were set (attribute bit 3).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BatchTimestampType {
    CreateTime,
    LogAppendTime,
}

/// A zero-copy view of the 61-byte RecordBatch v2 header. Any 61 bytes are a valid view;
/// whether they describe a valid batch is [`validate_batch`]'s business.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug)]
#[repr(C)]
pub struct BatchHeader {
    base_offset: I64,
    batch_length: I32,
    partition_leader_epoch: I32,
    magic: i8,
    crc: U32,
    attributes: I16,
    last_offset_delta: I32,
    base_timestamp: I64,
    max_timestamp: I64,
    producer_id: I64,
    producer_epoch: I16,
    base_sequence: I32,
    records_count: I32,
}

const _: () = assert!(std::mem::size_of::<BatchHeader>() == BATCH_HEADER_BYTES);

impl BatchHeader {
    /// The header at the start of `bytes`, or `None` if fewer than 61 bytes are given.
    pub fn view(bytes: &[u8]) -> Option<&BatchHeader> {
        BatchHeader::ref_from_prefix(bytes)
            .ok()
            .map(|(header, _)| header)
    }

    /// A mutable header view at the start of `bytes`, or `None` if too short.
    pub fn view_mut(bytes: &mut [u8]) -> Option<&mut BatchHeader> {
        BatchHeader::mut_from_prefix(bytes)
            .ok()
            .map(|(header, _)| header)
    }

    pub fn base_offset(&self) -> i64 {
        self.base_offset.get()
    }
    /// Offset of the batch's last record (`baseOffset + lastOffsetDelta`).
    pub fn last_offset(&self) -> i64 {
        self.base_offset() + i64::from(self.last_offset_delta())
    }
    pub fn batch_length(&self) -> i32 {
        self.batch_length.get()
    }
    pub fn partition_leader_epoch(&self) -> i32 {
        self.partition_leader_epoch.get()
    }
    pub fn magic(&self) -> i8 {
        self.magic
    }
    pub fn crc(&self) -> u32 {
        self.crc.get()
    }
    pub fn attributes(&self) -> i16 {
        self.attributes.get()
    }
    /// The codec, or `None` for the reserved values 5-7.
    pub fn compression(&self) -> Option<Compression> {
        Compression::from_attributes(self.attributes())
    }
    pub fn timestamp_type(&self) -> BatchTimestampType {
        if self.attributes() & ATTR_TIMESTAMP_TYPE != 0 {
            BatchTimestampType::LogAppendTime
        } else {
            BatchTimestampType::CreateTime
        }
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes() & ATTR_TRANSACTIONAL != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes() & ATTR_CONTROL != 0
    }
    pub fn has_delete_horizon(&self) -> bool {
        self.attributes() & ATTR_DELETE_HORIZON != 0
    }
    pub fn last_offset_delta(&self) -> i32 {
        self.last_offset_delta.get()
    }
    pub fn base_timestamp(&self) -> i64 {
        self.base_timestamp.get()
    }
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp.get()
    }
    pub fn producer_id(&self) -> i64 {
        self.producer_id.get()
    }
    pub fn producer_epoch(&self) -> i16 {
        self.producer_epoch.get()
    }
    pub fn base_sequence(&self) -> i32 {
        self.base_sequence.get()
    }
    pub fn records_count(&self) -> i32 {
        self.records_count.get()
    }
    /// Total size of the batch in bytes as the header claims it (`batchLength + 12`),
    /// or `None` when `batchLength` cannot describe a batch.
    pub fn total_bytes(&self) -> Option<usize> {
        let batch_length = usize::try_from(self.batch_length()).ok()?;
        let total = batch_length.checked_add(LOG_OVERHEAD_BYTES)?;
        (total >= BATCH_HEADER_BYTES).then_some(total)
    }

    pub fn set_base_offset(&mut self, base_offset: i64) {
        self.base_offset.set(base_offset);
    }
    pub fn set_partition_leader_epoch(&mut self, epoch: i32) {
        self.partition_leader_epoch.set(epoch);
    }
}

/// Rewrites `baseOffset` of the batch at the start of `batch` (not covered by the CRC).
/// Returns false when `batch` is shorter than a header.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) -> bool {
    match BatchHeader::view_mut(batch) {
        Some(header) => {
            header.set_base_offset(base_offset);
            true
        }
        None => false,
    }
}

/// Rewrites `partitionLeaderEpoch` of the batch at the start of `batch` (not covered by the
/// CRC). Returns false when `batch` is shorter than a header.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) -> bool {
    match BatchHeader::view_mut(batch) {
        Some(header) => {
            header.set_partition_leader_epoch(epoch);
            true
        }
        None => false,
    }
}

/// Marks the batch at the start of `batch` as LogAppendTime with `max_timestamp_ms` (what a
/// broker does for `message.timestamp.type=LogAppendTime`). Both fields are CRC-covered, so
/// the CRC is recomputed. Returns false when `batch` is not a whole batch.
pub fn set_log_append_time(batch: &mut [u8], max_timestamp_ms: i64) -> bool {
    let Some(size) = BatchHeader::view(batch).and_then(BatchHeader::total_bytes) else {
        return false;
    };
    if size > batch.len() {
        return false;
    }
    let Some(header) = BatchHeader::view_mut(batch) else {
        return false;
    };
    let attributes = header.attributes() | ATTR_TIMESTAMP_TYPE;
    header.attributes.set(attributes);
    header.max_timestamp.set(max_timestamp_ms);
    let crc = crc32c::crc32c(&batch[CRC_COVERED_FROM..size]);
    if let Some(header) = BatchHeader::view_mut(batch) {
        header.crc.set(crc);
    }
    true
}

/// Why a batch was rejected. [`BatchError::kind`] groups these into Kafka's error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("{available} bytes cannot hold a record batch of {needed} bytes")]
    Truncated { needed: usize, available: usize },
    #[error("batchLength {0} is outside what a record batch can be")]
    BadLength(i32),
    #[error("record batch of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("magic {0} is not supported (only v2 record batches)")]
    BadMagic(i8),
    #[error("CRC-32C mismatch: header says {stored:#010x}, bytes give {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("unknown compression codec {0}")]
    BadCompression(i16),
    #[error("recordsCount {records_count} does not match lastOffsetDelta {last_offset_delta}")]
    CountMismatch {
        records_count: i32,
        last_offset_delta: i32,
    },
    #[error("recordsCount {records_count} cannot fit in {records_bytes} bytes of records")]
    CountTooLarge {
        records_count: i32,
        records_bytes: usize,
    },
    #[error("malformed record: {0}")]
    BadRecord(&'static str),
}

/// The Kafka error family a [`BatchError`] belongs to.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BatchErrorKind {
    /// CORRUPT_MESSAGE: the bytes are damaged or not a batch.
    Corrupt,
    /// INVALID_RECORD: well-formed bytes that break a rule.
    Invalid,
    /// MESSAGE_TOO_LARGE.
    TooLarge,
}

impl BatchError {
    pub fn kind(&self) -> BatchErrorKind {
        match self {
            BatchError::TooLarge { .. } => BatchErrorKind::TooLarge,
            BatchError::CountMismatch { .. }
            | BatchError::CountTooLarge { .. }
            | BatchError::BadCompression(_) => BatchErrorKind::Invalid,
            BatchError::Truncated { .. }
            | BatchError::BadLength(_)
            | BatchError::BadMagic(_)
            | BatchError::BadCrc { .. }
            | BatchError::BadRecord(_) => BatchErrorKind::Corrupt,
        }
    }
}

/// The facts about one validated batch that a log needs, copied out of the header.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BatchInfo {
    /// Total size of the batch in bytes.
    pub size_bytes: usize,
    pub base_offset: i64,
    pub partition_leader_epoch: i32,
    pub attributes: i16,
    pub compression: Compression,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchInfo {
    /// Offset of the batch's last record (`baseOffset + lastOffsetDelta`).
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }
    pub fn timestamp_type(&self) -> BatchTimestampType {
        if self.attributes & ATTR_TIMESTAMP_TYPE != 0 {
            BatchTimestampType::LogAppendTime
        } else {
            BatchTimestampType::CreateTime
        }
    }
}

/// How strictly the record count is checked.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CountRule {
    /// A producer's batch: `recordsCount == lastOffsetDelta + 1 > 0` (Kafka's LogValidator).
    Exact,
    /// A batch already in a log: compaction may have removed records, so
    /// `recordsCount <= lastOffsetDelta + 1` and an empty batch is allowed.
    AtMost,
}

/// Validates the batch at the start of `bytes` as a producer's batch: framing, size limit,
/// magic 2, CRC-32C over attributes..end, codec, and `recordsCount == lastOffsetDelta + 1`.
/// Bytes after the batch are ignored. Never panics, never allocates.
pub fn validate_batch(bytes: &[u8], max_batch_bytes: usize) -> Result<BatchInfo, BatchError> {
    validate_batch_with(bytes, max_batch_bytes, CountRule::Exact)
}

/// [`validate_batch`] with a chosen [`CountRule`].
pub fn validate_batch_with(
    bytes: &[u8],
    max_batch_bytes: usize,
    rule: CountRule,
) -> Result<BatchInfo, BatchError> {
    let header = BatchHeader::view(bytes).ok_or(BatchError::Truncated {
        needed: BATCH_HEADER_BYTES,
        available: bytes.len(),
    })?;
    let size_bytes = header
        .total_bytes()
        .ok_or(BatchError::BadLength(header.batch_length()))?;
    if size_bytes > max_batch_bytes {
        return Err(BatchError::TooLarge {
            size: size_bytes,
            max: max_batch_bytes,
        });
    }
    if size_bytes > bytes.len() {
        return Err(BatchError::Truncated {
            needed: size_bytes,
            available: bytes.len(),
        });
    }
    if header.magic() != MAGIC_V2 {
        return Err(BatchError::BadMagic(header.magic()));
    }
    let computed = crc32c::crc32c(&bytes[CRC_COVERED_FROM..size_bytes]);
    if computed != header.crc() {
        return Err(BatchError::BadCrc {
            stored: header.crc(),
            computed,
        });
    }
    let compression = header.compression().ok_or(BatchError::BadCompression(
        header.attributes() & ATTR_COMPRESSION_MASK,
    ))?;
    let records_count = header.records_count();
    let last_offset_delta = header.last_offset_delta();
    let mismatch = BatchError::CountMismatch {
        records_count,
        last_offset_delta,
    };
    if records_count < 0 || last_offset_delta < 0 {
        return Err(mismatch);
    }
    match rule {
        CountRule::Exact if i64::from(records_count) != i64::from(last_offset_delta) + 1 => {
            return Err(mismatch)
        }
        CountRule::AtMost if i64::from(records_count) > i64::from(last_offset_delta) + 1 => {
            return Err(mismatch)
        }
        _ => {}
    }
    let records_bytes = size_bytes - BATCH_HEADER_BYTES;
    // Uncompressed records take at least MIN_RECORD_BYTES each; a larger count is a lie
    // (and a reader trusting it would loop or allocate for nothing).
    if compression == Compression::None
        && (records_count as usize).saturating_mul(MIN_RECORD_BYTES) > records_bytes
    {
        return Err(BatchError::CountTooLarge {
            records_count,
            records_bytes,
        });
    }
    Ok(BatchInfo {
        size_bytes,
        base_offset: header.base_offset(),
        partition_leader_epoch: header.partition_leader_epoch(),
        attributes: header.attributes(),
        compression,
        last_offset_delta,
        base_timestamp: header.base_timestamp(),
        max_timestamp: header.max_timestamp(),
        producer_id: header.producer_id(),
        producer_epoch: header.producer_epoch(),
        base_sequence: header.base_sequence(),
        records_count,
    })
}

/// Why a [`BatchIter`] stopped.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum IterEnd {
    /// Not stopped yet.
    Running,
    /// Every byte was consumed by whole batches.
    Clean,
    /// The bytes from `position()` on are a partial header or a batch cut short.
    Torn,
    /// The header at `position()` has an impossible `batchLength`.
    BadLength,
}

/// Walks batches laid end to end by their framing (`batchLength`) only; the caller validates
/// each. Stops, without error, at a short or torn tail; [`BatchIter::end`] says why and
/// [`BatchIter::position`] where.
pub struct BatchIter<'a> {
    bytes: &'a [u8],
    position: usize,
    end: IterEnd,
}

/// Iterates over the batches laid end to end in `bytes`.
pub fn batches(bytes: &[u8]) -> BatchIter<'_> {
    BatchIter {
        bytes,
        position: 0,
        end: IterEnd::Running,
    }
}

impl<'a> BatchIter<'a> {
    /// Byte position of the next batch (after the last one yielded).
    pub fn position(&self) -> usize {
        self.position
    }
    pub fn end(&self) -> IterEnd {
        self.end
    }
}

impl<'a> Iterator for BatchIter<'a> {
    /// `(position, batch bytes)`.
    type Item = (usize, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.end != IterEnd::Running {
            return None;
        }
        let rest = &self.bytes[self.position..];
        if rest.is_empty() {
            self.end = IterEnd::Clean;
            return None;
        }
        let Some(header) = BatchHeader::view(rest) else {
            self.end = IterEnd::Torn;
            return None;
        };
        let Some(size) = header.total_bytes() else {
            self.end = IterEnd::BadLength;
            return None;
        };
        if size > rest.len() {
            self.end = IterEnd::Torn;
            return None;
        }
        let at = self.position;
        self.position += size;
        Some((at, &rest[..size]))
    }
}

// ---------------------------------------------------------------------------------------
// Records: varints, decoding (for timestamp lookups and tests) and the encoder.
// ---------------------------------------------------------------------------------------

fn put_varlong(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

fn varlong_len(value: i64) -> usize {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let mut len = 1;
    while zigzag >= 0x80 {
        zigzag >>= 7;
        len += 1;
    }
    len
}

/// Reads a zigzag varint of at most `max_bytes` bytes from `bytes[*pos..]`.
fn get_varlong(bytes: &[u8], pos: &mut usize, max_bytes: usize) -> Result<i64, BatchError> {
    let mut raw: u64 = 0;
    for i in 0..max_bytes {
        let byte = *bytes
            .get(*pos)
            .ok_or(BatchError::BadRecord("varint runs past the end"))?;
        *pos += 1;
        raw |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
        }
    }
    Err(BatchError::BadRecord("varint too long"))
}

fn get_varint(bytes: &[u8], pos: &mut usize) -> Result<i32, BatchError> {
    let value = get_varlong(bytes, pos, 5)?;
    i32::try_from(value).map_err(|_| BatchError::BadRecord("varint out of range"))
}

/// Reads a varint length and that many bytes; -1 is null.
fn get_nullable_bytes<'a>(
    bytes: &'a [u8],
    pos: &mut usize,
) -> Result<Option<&'a [u8]>, BatchError> {
    let len = get_varint(bytes, pos)?;
    if len < 0 {
        return if len == -1 {
            Ok(None)
        } else {
            Err(BatchError::BadRecord("negative length"))
        };
    }
    let end = pos
        .checked_add(len as usize)
        .filter(|end| *end <= bytes.len());
    let end = end.ok_or(BatchError::BadRecord("field runs past the record"))?;
    let field = &bytes[*pos..end];
    *pos = end;
    Ok(Some(field))
}

/// One record of an uncompressed batch, borrowed from the batch's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub attributes: i8,
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    headers_count: usize,
    headers_bytes: &'a [u8],
}

impl<'a> Record<'a> {
    /// The record's headers, in order.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter {
            bytes: self.headers_bytes,
            pos: 0,
            remaining: self.headers_count,
        }
    }
}

/// Headers of one record: `(key, value)`. Keys are raw bytes (UTF-8 by Kafka's rules).
pub struct HeaderIter<'a> {
    bytes: &'a [u8],
    pos: usize,
    remaining: usize,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);
    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // The record decoder already checked every header's framing.
        let key = get_nullable_bytes(self.bytes, &mut self.pos)
            .ok()
            .flatten()
            .unwrap_or(&[]);
        let value = get_nullable_bytes(self.bytes, &mut self.pos).ok().flatten();
        Some((key, value))
    }
}

/// Iterates over the records of an uncompressed batch, checking every length against the
/// bytes that remain. Yields at most `recordsCount` records and stops at the first error.
pub struct RecordIter<'a> {
    bytes: &'a [u8],
    pos: usize,
    remaining: usize,
    failed: bool,
}

/// The records of the batch at the start of `batch`, which must have passed validation.
/// Fails for compressed batches: their records are not readable without decompression.
pub fn records(batch: &[u8]) -> Result<RecordIter<'_>, BatchError> {
    let header = BatchHeader::view(batch).ok_or(BatchError::Truncated {
        needed: BATCH_HEADER_BYTES,
        available: batch.len(),
    })?;
    let size = header
        .total_bytes()
        .ok_or(BatchError::BadLength(header.batch_length()))?;
    if size > batch.len() {
        return Err(BatchError::Truncated {
            needed: size,
            available: batch.len(),
        });
    }
    if header.compression() != Some(Compression::None) {
        return Err(BatchError::BadCompression(
            header.attributes() & ATTR_COMPRESSION_MASK,
        ));
    }
    let remaining = usize::try_from(header.records_count()).unwrap_or(0);
    Ok(RecordIter {
        bytes: &batch[BATCH_HEADER_BYTES..size],
        pos: 0,
        remaining,
        failed: false,
    })
}

/// The records of a records section (a batch's bytes after its header, decompressed if
/// the batch is compressed) that claims `records_count` records. Stops at the first
/// malformed record; [`RecordIter::rest`] tells whether bytes were left over.
pub fn records_in(section: &[u8], records_count: i32) -> RecordIter<'_> {
    RecordIter {
        bytes: section,
        pos: 0,
        remaining: usize::try_from(records_count).unwrap_or(0),
        failed: false,
    }
}

/// The records section of a batch that passed validation (the bytes after its header;
/// still compressed if the batch is).
pub fn records_section(batch: &[u8]) -> Option<&[u8]> {
    let size = BatchHeader::view(batch)?.total_bytes()?;
    batch.get(BATCH_HEADER_BYTES..size)
}

impl<'a> RecordIter<'a> {
    /// Bytes of the section not consumed by the records read so far.
    pub fn rest(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn decode_one(&mut self) -> Result<Record<'a>, BatchError> {
        let len = get_varint(self.bytes, &mut self.pos)?;
        let len =
            usize::try_from(len).map_err(|_| BatchError::BadRecord("negative record length"))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or(BatchError::BadRecord("record runs past the batch"))?;
        let body = &self.bytes[self.pos..end];
        self.pos = end;
        let mut pos = 0;
        let attributes = *body.first().ok_or(BatchError::BadRecord("empty record"))? as i8;
        pos += 1;
        let timestamp_delta = get_varlong(body, &mut pos, 10)?;
        let offset_delta = get_varint(body, &mut pos)?;
        let key = get_nullable_bytes(body, &mut pos)?;
        let value = get_nullable_bytes(body, &mut pos)?;
        let headers_count = get_varint(body, &mut pos)?;
        let headers_count = usize::try_from(headers_count)
            .map_err(|_| BatchError::BadRecord("negative header count"))?;
        let headers_start = pos;
        for _ in 0..headers_count {
            // Each header takes at least two bytes, so this loop is bounded by the body.
            match get_nullable_bytes(body, &mut pos)? {
                Some(_) => {}
                None => return Err(BatchError::BadRecord("null header key")),
            }
            get_nullable_bytes(body, &mut pos)?;
        }
        if pos != body.len() {
            return Err(BatchError::BadRecord(
                "record length disagrees with its fields",
            ));
        }
        Ok(Record {
            attributes,
            timestamp_delta,
            offset_delta,
            key,
            value,
            headers_count,
            headers_bytes: &body[headers_start..],
        })
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, BatchError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let record = self.decode_one();
        self.failed = record.is_err();
        Some(record)
    }
}

/// Encodes one RecordBatch v2 from records. For tests, benchmarks and the load generator,
/// and for the broker's conversion of message format v0/v1 (`crate::convert`); batches
/// produced in v2 are never re-encoded record by record.
#[derive(Clone, Debug)]
pub struct BatchBuilder {
    base_offset: i64,
    partition_leader_epoch: i32,
    attributes: i16,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    records_count: i32,
    records: Vec<u8>,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder::new()
    }
}

impl BatchBuilder {
    /// An empty batch without producer id (non-idempotent), CreateTime timestamps.
    pub fn new() -> BatchBuilder {
        BatchBuilder {
            base_offset: 0,
            partition_leader_epoch: -1,
            attributes: 0,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            base_timestamp: NO_TIMESTAMP,
            max_timestamp: NO_TIMESTAMP,
            records_count: 0,
            records: Vec::new(),
        }
    }

    pub fn base_offset(mut self, base_offset: i64) -> Self {
        self.base_offset = base_offset;
        self
    }
    pub fn partition_leader_epoch(mut self, epoch: i32) -> Self {
        self.partition_leader_epoch = epoch;
        self
    }
    /// Idempotent producer fields.
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }
    pub fn transactional(mut self, transactional: bool) -> Self {
        self.set_attribute(ATTR_TRANSACTIONAL, transactional);
        self
    }
    pub fn control(mut self, control: bool) -> Self {
        self.set_attribute(ATTR_CONTROL, control);
        self
    }
    pub fn log_append_time(mut self, log_append_time: bool) -> Self {
        self.set_attribute(ATTR_TIMESTAMP_TYPE, log_append_time);
        self
    }
    fn set_attribute(&mut self, bit: i16, on: bool) {
        if on {
            self.attributes |= bit;
        } else {
            self.attributes &= !bit;
        }
    }

    pub fn records_count(&self) -> i32 {
        self.records_count
    }

    /// Empties the builder for the next batch, keeping its attributes, producer fields and
    /// buffer capacity (so a load generator builds batch after batch without allocating).
    pub fn clear(&mut self) {
        self.records.clear();
        self.records_count = 0;
        self.base_timestamp = NO_TIMESTAMP;
        self.max_timestamp = NO_TIMESTAMP;
    }

    /// Appends one record. The first record's timestamp becomes the batch's base timestamp.
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
        timestamp_ms: i64,
    ) {
        if self.records_count == 0 {
            self.base_timestamp = timestamp_ms;
            self.max_timestamp = timestamp_ms;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        let timestamp_delta = timestamp_ms.wrapping_sub(self.base_timestamp);
        let offset_delta = i64::from(self.records_count);
        let field_len = |field: Option<&[u8]>| match field {
            Some(bytes) => varlong_len(bytes.len() as i64) + bytes.len(),
            None => 1,
        };
        let mut body_len = 1 + varlong_len(timestamp_delta) + varlong_len(offset_delta);
        body_len += field_len(key) + field_len(value) + varlong_len(headers.len() as i64);
        for (header_key, header_value) in headers {
            body_len += field_len(Some(header_key)) + field_len(*header_value);
        }
        let put_field = |out: &mut Vec<u8>, field: Option<&[u8]>| match field {
            Some(bytes) => {
                put_varlong(out, bytes.len() as i64);
                out.extend_from_slice(bytes);
            }
            None => put_varlong(out, -1),
        };
        let out = &mut self.records;
        put_varlong(out, body_len as i64);
        out.push(0); // record attributes: unused
        put_varlong(out, timestamp_delta);
        put_varlong(out, offset_delta);
        put_field(out, key);
        put_field(out, value);
        put_varlong(out, headers.len() as i64);
        for (header_key, header_value) in headers {
            put_field(out, Some(header_key));
            put_field(out, *header_value);
        }
        self.records_count += 1;
    }

    /// Size of the encoded batch.
    pub fn encoded_len(&self) -> usize {
        BATCH_HEADER_BYTES + self.records.len()
    }

    /// Encodes the batch into `out`, computing `batchLength`, `lastOffsetDelta` and the CRC.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let batch_length = (self.encoded_len() - LOG_OVERHEAD_BYTES) as i32;
        out.extend_from_slice(&self.base_offset.to_be_bytes());
        out.extend_from_slice(&batch_length.to_be_bytes());
        out.extend_from_slice(&self.partition_leader_epoch.to_be_bytes());
        out.push(MAGIC_V2 as u8);
        out.extend_from_slice(&[0; 4]); // CRC, filled in below
        out.extend_from_slice(&self.attributes.to_be_bytes());
        out.extend_from_slice(&(self.records_count - 1).max(0).to_be_bytes());
        out.extend_from_slice(&self.base_timestamp.to_be_bytes());
        out.extend_from_slice(&self.max_timestamp.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&self.records_count.to_be_bytes());
        out.extend_from_slice(&self.records);
        let crc = crc32c::crc32c(&out[start + CRC_COVERED_FROM..]);
        out[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
    }

    /// The encoded batch.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// The encoded batch with its records compressed with `codec`.
    pub fn build_compressed(
        &self,
        codec: Compression,
        levels: crate::compression::Levels,
    ) -> Result<Vec<u8>, crate::compression::CodecError> {
        let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + self.records.len() / 2);
        out.extend_from_slice(&self.header_prefix());
        crate::compression::compress_into(
            codec,
            &self.records,
            levels,
            crate::compression::Lz4Header::Standard,
            &mut out,
        )?;
        finish_header(&mut out, codec);
        Ok(out)
    }

    /// The 61 header bytes as for an uncompressed batch (length and CRC left to fill in).
    fn header_prefix(&self) -> [u8; BATCH_HEADER_BYTES] {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        let mut header = [0u8; BATCH_HEADER_BYTES];
        header.copy_from_slice(&out[..BATCH_HEADER_BYTES]);
        header
    }
}

/// Fixes up a batch whose first 61 bytes are a header and whose records section follows:
/// sets the codec, `batchLength` and the CRC.
fn finish_header(batch: &mut [u8], codec: Compression) {
    let batch_length = (batch.len() - LOG_OVERHEAD_BYTES) as i32;
    batch[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let attributes = i16::from_be_bytes([batch[21], batch[22]]);
    let attributes = (attributes & !ATTR_COMPRESSION_MASK) | codec.code();
    batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_COVERED_FROM..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// A copy of the batch at the start of `batch` (which passed validation) with its records
/// section replaced by `records` (uncompressed) compressed with `codec`: every header field
/// but the codec, `batchLength` and the CRC is kept (offsets, timestamps, producer id,
/// epoch and sequence).
pub fn rebuild_with_codec(
    batch: &[u8],
    records: &[u8],
    codec: Compression,
    levels: crate::compression::Levels,
) -> Result<Vec<u8>, crate::compression::CodecError> {
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + records.len() / 2 + 64);
    out.extend_from_slice(&batch[..BATCH_HEADER_BYTES]);
    crate::compression::compress_into(
        codec,
        records,
        levels,
        crate::compression::Lz4Header::Standard,
        &mut out,
    )?;
    finish_header(&mut out, codec);
    Ok(out)
}

/// A batch of `records_count` records whose values are `value_bytes` long (keys and headers
/// absent), timestamps `timestamp_ms`. A convenience for tests and benchmarks.
pub fn simple_batch(records_count: usize, value_bytes: usize, timestamp_ms: i64) -> Vec<u8> {
    let value = vec![0x5a; value_bytes];
    let mut builder = BatchBuilder::new();
    for _ in 0..records_count {
        builder.push(None, Some(&value), &[], timestamp_ms);
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type OwnedRecord = (
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Vec<(Vec<u8>, Option<Vec<u8>>)>,
        i64,
    );

    fn build(records: &[OwnedRecord]) -> Vec<u8> {
        let mut builder = BatchBuilder::new()
            .producer(7, 3, 11)
            .partition_leader_epoch(5);
        for (key, value, headers, timestamp) in records {
            let headers: Vec<(&[u8], Option<&[u8]>)> = headers
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_deref()))
                .collect();
            builder.push(key.as_deref(), value.as_deref(), &headers, *timestamp);
        }
        builder.build()
    }

    fn record_strategy() -> impl Strategy<Value = OwnedRecord> {
        let bytes = proptest::collection::vec(any::<u8>(), 0..40);
        (
            proptest::option::of(bytes.clone()),
            proptest::option::of(bytes.clone()),
            proptest::collection::vec((bytes.clone(), proptest::option::of(bytes)), 0..3),
            -10_000i64..1i64 << 45,
        )
    }

    #[test]
    fn header_is_61_bytes_and_reads_fields() {
        let batch = BatchBuilder::new()
            .producer(42, 2, 9)
            .partition_leader_epoch(4)
            .base_offset(100)
            .transactional(true);
        let mut batch = batch;
        batch.push(Some(b"k"), Some(b"v"), &[], 1000);
        batch.push(None, Some(b"w"), &[], 1500);
        let bytes = batch.build();
        let header = BatchHeader::view(&bytes).expect("a built batch has a header");
        assert_eq!(header.base_offset(), 100);
        assert_eq!(header.total_bytes(), Some(bytes.len()));
        assert_eq!(header.partition_leader_epoch(), 4);
        assert_eq!(header.magic(), 2);
        assert_eq!(header.compression(), Some(Compression::None));
        assert_eq!(header.timestamp_type(), BatchTimestampType::CreateTime);
        assert!(header.is_transactional());
        assert!(!header.is_control());
        assert_eq!(header.last_offset_delta(), 1);
        assert_eq!(header.base_timestamp(), 1000);
        assert_eq!(header.max_timestamp(), 1500);
        assert_eq!(header.producer_id(), 42);
        assert_eq!(header.producer_epoch(), 2);
        assert_eq!(header.base_sequence(), 9);
        assert_eq!(header.records_count(), 2);
        assert_eq!(header.crc(), crc32c::crc32c(&bytes[21..]));
    }

    #[test]
    fn rewriting_offset_and_epoch_keeps_crc_valid() {
        let mut bytes = simple_batch(3, 10, 5);
        assert!(set_base_offset(&mut bytes, 1 << 40));
        assert!(set_partition_leader_epoch(&mut bytes, 77));
        let info = validate_batch(&bytes, 1 << 20).expect("still valid");
        assert_eq!(info.base_offset, 1 << 40);
        assert_eq!(info.partition_leader_epoch, 77);
        assert_eq!(info.last_offset(), (1 << 40) + 2);
        assert!(!set_base_offset(&mut bytes[..60], 0));
        assert!(set_log_append_time(&mut bytes, 99));
        let info = validate_batch(&bytes, 1 << 20).expect("CRC recomputed");
        assert_eq!(
            (info.timestamp_type(), info.max_timestamp),
            (BatchTimestampType::LogAppendTime, 99)
        );
    }

    #[test]
    fn validation_rejects_each_kind_of_damage() {
        let good = simple_batch(2, 8, 0);
        assert!(validate_batch(&good, 1 << 20).is_ok());
        assert_eq!(
            validate_batch(&good, good.len() - 1).unwrap_err().kind(),
            BatchErrorKind::TooLarge
        );
        assert!(matches!(
            validate_batch(&good[..good.len() - 1], 1 << 20),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(
            validate_batch(&good[..10], 1 << 20),
            Err(BatchError::Truncated { .. })
        ));

        let mut bad_magic = good.clone();
        bad_magic[16] = 1;
        assert_eq!(
            validate_batch(&bad_magic, 1 << 20),
            Err(BatchError::BadMagic(1))
        );

        let mut bad_crc = good.clone();
        *bad_crc.last_mut().expect("non-empty") ^= 1;
        assert!(matches!(
            validate_batch(&bad_crc, 1 << 20),
            Err(BatchError::BadCrc { .. })
        ));

        let mut bad_length = good.clone();
        bad_length[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(
            validate_batch(&bad_length, 1 << 20),
            Err(BatchError::BadLength(-5))
        );

        // A count that disagrees with lastOffsetDelta, with the CRC recomputed so only the
        // count is wrong.
        let mut bad_count = good.clone();
        bad_count[57..61].copy_from_slice(&3i32.to_be_bytes());
        let crc = crc32c::crc32c(&bad_count[21..]);
        bad_count[17..21].copy_from_slice(&crc.to_be_bytes());
        let err = validate_batch(&bad_count, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), BatchErrorKind::Invalid);
        assert!(validate_batch_with(&bad_count, 1 << 20, CountRule::AtMost).is_err());
    }

    #[test]
    fn iterator_stops_cleanly_at_a_torn_tail() {
        let mut bytes = simple_batch(1, 5, 0);
        let first = bytes.len();
        bytes.extend(simple_batch(2, 5, 0));
        let two = bytes.len();
        let mut it = batches(&bytes);
        assert_eq!(it.by_ref().count(), 2);
        assert_eq!(it.end(), IterEnd::Clean);
        assert_eq!(it.position(), two);

        for cut in [first + 1, first + 60, two - 1] {
            let mut it = batches(&bytes[..cut]);
            assert_eq!(it.by_ref().count(), 1);
            assert_eq!(it.end(), IterEnd::Torn);
            assert_eq!(it.position(), first);
        }
        let mut zeroed = bytes.clone();
        zeroed[first..].fill(0);
        let mut it = batches(&zeroed);
        assert_eq!(it.by_ref().count(), 1);
        assert_eq!(it.end(), IterEnd::BadLength);
        assert_eq!(it.position(), first);
    }

    proptest! {
        #[test]
        fn builder_round_trips_through_validation_and_decoding(records in proptest::collection::vec(record_strategy(), 1..20)) {
            let bytes = build(&records);
            let info = validate_batch(&bytes, usize::MAX).expect("built batches are valid");
            prop_assert_eq!(info.size_bytes, bytes.len());
            prop_assert_eq!(info.records_count as usize, records.len());
            prop_assert_eq!(info.base_timestamp, records[0].3);
            prop_assert_eq!(info.max_timestamp, records.iter().map(|r| r.3).max().expect("non-empty"));
            let decoded: Vec<Record> = records_of(&bytes);
            prop_assert_eq!(decoded.len(), records.len());
            for (i, (record, original)) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(record.offset_delta as usize, i);
                prop_assert_eq!(info.base_timestamp + record.timestamp_delta, original.3);
                prop_assert_eq!(record.key, original.0.as_deref());
                prop_assert_eq!(record.value, original.1.as_deref());
                let headers: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                    record.headers().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect();
                prop_assert_eq!(&headers, &original.2);
            }
        }

        #[test]
        fn validation_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = validate_batch(&bytes, 1 << 20);
            let _ = validate_batch_with(&bytes, 1 << 20, CountRule::AtMost);
            let mut it = batches(&bytes);
            for (pos, batch) in it.by_ref() {
                prop_assert!(pos + batch.len() <= bytes.len());
            }
            prop_assert!(it.position() <= bytes.len());
            if let Ok(records) = records(&bytes) {
                for record in records.take(1000).flatten() {
                    let _ = record.headers().count();
                }
            }
        }

        #[test]
        fn garbage_records_under_a_valid_crc_never_panic(
            count in -3i32..100_000,
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            // A header whose CRC is right but whose records are arbitrary: the count checks
            // and the record decoder must cope without panicking or looping on the count.
            let mut bytes = simple_batch(1, 0, 0);
            bytes.truncate(BATCH_HEADER_BYTES);
            bytes.extend_from_slice(&body);
            let batch_length = (bytes.len() - LOG_OVERHEAD_BYTES) as i32;
            bytes[8..12].copy_from_slice(&batch_length.to_be_bytes());
            bytes[23..27].copy_from_slice(&count.wrapping_sub(1).to_be_bytes());
            bytes[57..61].copy_from_slice(&count.to_be_bytes());
            let crc = crc32c::crc32c(&bytes[CRC_COVERED_FROM..]);
            bytes[17..21].copy_from_slice(&crc.to_be_bytes());
            let result = validate_batch(&bytes, 1 << 20);
            if count <= 0 || count as usize * MIN_RECORD_BYTES > body.len() {
                prop_assert!(result.is_err());
            }
            if let Ok(iter) = super::records(&bytes) {
                // Every record takes at least two bytes; a failed one ends the iteration.
                prop_assert!(iter.count() <= body.len() / 2 + 1);
            }
        }

        #[test]
        fn damaged_valid_batches_never_panic_and_crc_catches_flips(
            records in proptest::collection::vec(record_strategy(), 1..5),
            flip_at in any::<prop::sample::Index>(),
            flip_bits in 1u8..=255,
        ) {
            let mut bytes = build(&records);
            let at = flip_at.index(bytes.len());
            bytes[at] ^= flip_bits;
            let result = validate_batch(&bytes, 1 << 20);
            // Only the CRC-uncovered fields may change without validation noticing.
            if at >= CRC_COVERED_FROM {
                prop_assert!(result.is_err());
            }
            if let Ok(iter) = super::records(&bytes) {
                for record in iter { let _ = record; }
            }
        }
    }

    fn records_of(bytes: &[u8]) -> Vec<Record<'_>> {
        records(bytes)
            .expect("uncompressed")
            .collect::<Result<_, _>>()
            .expect("well-formed records")
    }
}
