//! Record formats of Kafka's internal `__consumer_offsets` topic, byte for byte as Kafka
//! writes them, so that tools reading that topic (Burrow, kafka-consumer-groups, a broker
//! replaying it on start) understand what Wharf stored.
//!
//! Every record key and value starts with a big-endian `int16` schema version:
//! - key v0 / v1: offset commit `(group, topic, partition)`; key v2: group metadata `(group)`.
//! - offset commit value v0–v3 (v4, flexible, is read but not written);
//! - group metadata value v0–v3 (v4, flexible, is read and can be written).
//!
//! A record with a null value is a tombstone: the offset or the group is gone.
//!
//! Decoders never trust a length or count: each is checked against the bytes that remain
//! before anything is allocated.

use bytes::{BufMut, Bytes, BytesMut};

/// Kafka's name for the internal topic holding committed offsets and group metadata.
pub const OFFSETS_TOPIC_NAME: &str = "__consumer_offsets";

/// `offsets.topic.num.partitions`: Kafka's default partition count of the offsets topic.
pub const OFFSETS_TOPIC_DEFAULT_PARTITIONS: u32 = 50;

/// The value version Kafka writes for a commit without an explicit expire timestamp.
pub const OFFSET_COMMIT_VALUE_VERSION: i16 = 3;
/// The value version Kafka writes for a commit with an explicit expire timestamp
/// (OffsetCommit v2–v4 `retention_time_ms`): only v1 carries the field.
pub const OFFSET_COMMIT_VALUE_VERSION_WITH_EXPIRE: i16 = 1;
/// The group metadata value version Kafka writes (it carries `group.instance.id`).
pub const GROUP_METADATA_VALUE_VERSION: i16 = 3;

/// Java's `String.hashCode()`: `s[0]*31^(n-1) + ... + s[n-1]` over UTF-16 code units,
/// with 32-bit wrapping arithmetic.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, unit| h.wrapping_mul(31).wrapping_add(unit as i32))
}

/// The `__consumer_offsets` partition of a group: Kafka's
/// `Utils.abs(groupId.hashCode) % partitions`, where `Utils.abs(i32::MIN)` is 0 (a plain
/// `abs` would overflow, or in Java stay negative).
pub fn partition_for_group(group_id: &str, partitions: u32) -> i32 {
    assert!(
        partitions > 0,
        "the offsets topic has at least one partition"
    );
    let hash = java_string_hash(group_id);
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    (positive as i64 % partitions as i64) as i32
}

/// Why a key or value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OffsetsRecordError {
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

/// The longest string Kafka's non-flexible record schemas can hold (a 16-bit length): the
/// limit of every string in an offset commit key and a group metadata value up to v3.
pub const MAX_SCHEMA_STRING_BYTES: usize = i16::MAX as usize;

/// A `__consumer_offsets` record key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsKey {
    /// Key v0 or v1 (same layout): the committed offset of one partition for one group.
    OffsetCommit {
        version: i16,
        group: String,
        topic: String,
        partition: i32,
    },
    /// Key v2: the membership and assignment of one group.
    GroupMetadata { group: String },
}

impl OffsetsKey {
    /// The key Kafka writes for an offset commit (v1).
    pub fn offset_commit(group: &str, topic: &str, partition: i32) -> OffsetsKey {
        OffsetsKey::OffsetCommit {
            version: 1,
            group: group.to_owned(),
            topic: topic.to_owned(),
            partition,
        }
    }

    /// The key for a group's metadata (v2).
    pub fn group_metadata(group: &str) -> OffsetsKey {
        OffsetsKey::GroupMetadata {
            group: group.to_owned(),
        }
    }

    /// The group this record belongs to.
    pub fn group(&self) -> &str {
        match self {
            OffsetsKey::OffsetCommit { group, .. } | OffsetsKey::GroupMetadata { group } => group,
        }
    }

    /// Fails, rather than writing a record Kafka could not read, when a string is longer
    /// than the schema's 16-bit length.
    pub fn encode(&self) -> Result<Bytes, OffsetsRecordError> {
        let mut w = Writer::default();
        match self {
            OffsetsKey::OffsetCommit {
                version,
                group,
                topic,
                partition,
            } => {
                w.i16(*version);
                w.string("group id", group)?;
                w.string("topic", topic)?;
                w.i32(*partition);
            }
            OffsetsKey::GroupMetadata { group } => {
                w.i16(2);
                w.string("group id", group)?;
            }
        }
        Ok(w.finish())
    }

    pub fn decode(bytes: &[u8]) -> Result<OffsetsKey, OffsetsRecordError> {
        let mut r = Reader::new(bytes);
        let version = r.i16()?;
        let key = match version {
            0 | 1 => {
                let group = r.string()?;
                let topic = r.string()?;
                let partition = r.i32()?;
                OffsetsKey::OffsetCommit {
                    version,
                    group,
                    topic,
                    partition,
                }
            }
            2 => OffsetsKey::GroupMetadata { group: r.string()? },
            _ => {
                return Err(OffsetsRecordError::UnknownVersion {
                    what: "key",
                    version,
                })
            }
        };
        r.end()?;
        Ok(key)
    }
}

/// An offset commit value (v0–v4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitValue {
    pub version: i16,
    pub offset: i64,
    /// v3+; -1 when unknown.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// v1 only; -1 when absent.
    pub expire_timestamp_ms: i64,
}

impl OffsetCommitValue {
    /// The value Kafka writes for a commit: v1 when an explicit expire timestamp is set
    /// (the only version with the field), v3 otherwise.
    pub fn new(
        offset: i64,
        leader_epoch: i32,
        metadata: &str,
        commit_timestamp_ms: i64,
        expire_timestamp_ms: i64,
    ) -> Self {
        let version = if expire_timestamp_ms >= 0 {
            OFFSET_COMMIT_VALUE_VERSION_WITH_EXPIRE
        } else {
            OFFSET_COMMIT_VALUE_VERSION
        };
        OffsetCommitValue {
            version,
            offset,
            leader_epoch: if version >= 3 { leader_epoch } else { -1 },
            metadata: metadata.to_owned(),
            commit_timestamp_ms,
            expire_timestamp_ms: if version == 1 {
                expire_timestamp_ms
            } else {
                -1
            },
        }
    }

    /// Encode at `self.version`; fields that version lacks are not written.
    pub fn encode(&self) -> Result<Bytes, OffsetsRecordError> {
        let mut w = Writer::default();
        let flexible = self.version >= 4;
        w.i16(self.version);
        w.i64(self.offset);
        if self.version >= 3 {
            w.i32(self.leader_epoch);
        }
        w.string_v("offset metadata", &self.metadata, flexible)?;
        w.i64(self.commit_timestamp_ms);
        if self.version == 1 {
            w.i64(self.expire_timestamp_ms);
        }
        if flexible {
            w.uvarint(0); // no tagged fields
        }
        Ok(w.finish())
    }

    pub fn decode(bytes: &[u8]) -> Result<OffsetCommitValue, OffsetsRecordError> {
        let mut r = Reader::new(bytes);
        let version = r.i16()?;
        if !(0..=4).contains(&version) {
            return Err(OffsetsRecordError::UnknownVersion {
                what: "offset commit value",
                version,
            });
        }
        let flexible = version >= 4;
        let offset = r.i64()?;
        let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
        let metadata = r.string_v(flexible)?;
        let commit_timestamp_ms = r.i64()?;
        let expire_timestamp_ms = if version == 1 { r.i64()? } else { -1 };
        if flexible {
            r.skip_tagged_fields()?;
        }
        // KIP-915: readers must accept (and ignore) trailing bytes from newer versions.
        Ok(OffsetCommitValue {
            version,
            offset,
            leader_epoch,
            metadata,
            commit_timestamp_ms,
            expire_timestamp_ms,
        })
    }
}

/// One member in a group metadata value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberMetadata {
    pub member_id: String,
    /// v3+: `group.instance.id` of a static member.
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// v1+; v0 readers take the session timeout.
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// The member's metadata for the group's selected protocol.
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// A group metadata value (v0–v4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadataValue {
    pub version: i16,
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// v2+; -1 when absent.
    pub current_state_timestamp_ms: i64,
    pub members: Vec<MemberMetadata>,
}

/// The fewest bytes a member takes in a value, used to bound the member count.
const MIN_MEMBER_BYTES: usize = 2 + 2 + 2 + 4 + 4 + 4;

impl GroupMetadataValue {
    /// Fails when a string or the member count does not fit the version's schema.
    pub fn encode(&self) -> Result<Bytes, OffsetsRecordError> {
        let mut w = Writer::default();
        let v = self.version;
        let flexible = v >= 4;
        w.i16(v);
        w.string_v("protocol type", &self.protocol_type, flexible)?;
        w.i32(self.generation);
        w.nullable_string_v("protocol", self.protocol.as_deref(), flexible)?;
        w.nullable_string_v("leader", self.leader.as_deref(), flexible)?;
        if v >= 2 {
            w.i64(self.current_state_timestamp_ms);
        }
        w.array_len("members", self.members.len(), flexible)?;
        for m in &self.members {
            w.string_v("member id", &m.member_id, flexible)?;
            if v >= 3 {
                w.nullable_string_v(
                    "group instance id",
                    m.group_instance_id.as_deref(),
                    flexible,
                )?;
            }
            w.string_v("client id", &m.client_id, flexible)?;
            w.string_v("client host", &m.client_host, flexible)?;
            if v >= 1 {
                w.i32(m.rebalance_timeout_ms);
            }
            w.i32(m.session_timeout_ms);
            w.bytes_v("subscription", &m.subscription, flexible)?;
            w.bytes_v("assignment", &m.assignment, flexible)?;
            if flexible {
                w.uvarint(0);
            }
        }
        if flexible {
            w.uvarint(0);
        }
        Ok(w.finish())
    }

    pub fn decode(bytes: &[u8]) -> Result<GroupMetadataValue, OffsetsRecordError> {
        let mut r = Reader::new(bytes);
        let version = r.i16()?;
        if !(0..=4).contains(&version) {
            return Err(OffsetsRecordError::UnknownVersion {
                what: "group metadata value",
                version,
            });
        }
        let flexible = version >= 4;
        let protocol_type = r.string_v(flexible)?;
        let generation = r.i32()?;
        let protocol = r.nullable_string_v(flexible)?;
        let leader = r.nullable_string_v(flexible)?;
        let current_state_timestamp_ms = if version >= 2 { r.i64()? } else { -1 };
        let count = r.array_len(flexible, MIN_MEMBER_BYTES)?;
        let mut members = Vec::with_capacity(count);
        for _ in 0..count {
            let member_id = r.string_v(flexible)?;
            let group_instance_id = if version >= 3 {
                r.nullable_string_v(flexible)?
            } else {
                None
            };
            let client_id = r.string_v(flexible)?;
            let client_host = r.string_v(flexible)?;
            let rebalance_timeout_ms = if version >= 1 { Some(r.i32()?) } else { None };
            let session_timeout_ms = r.i32()?;
            let subscription = r.bytes_v(flexible)?;
            let assignment = r.bytes_v(flexible)?;
            if flexible {
                r.skip_tagged_fields()?;
            }
            members.push(MemberMetadata {
                member_id,
                group_instance_id,
                client_id,
                client_host,
                rebalance_timeout_ms: rebalance_timeout_ms.unwrap_or(session_timeout_ms),
                session_timeout_ms,
                subscription,
                assignment,
            });
        }
        if flexible {
            r.skip_tagged_fields()?;
        }
        Ok(GroupMetadataValue {
            version,
            protocol_type,
            generation,
            protocol,
            leader,
            current_state_timestamp_ms,
            members,
        })
    }
}

/// A decoded `__consumer_offsets` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsRecord {
    /// A committed offset, or its tombstone (`None`).
    OffsetCommit {
        group: String,
        topic: String,
        partition: i32,
        value: Option<OffsetCommitValue>,
    },
    /// A group's metadata, or its tombstone (`None`): the group is gone.
    GroupMetadata {
        group: String,
        value: Option<GroupMetadataValue>,
    },
}

impl OffsetsRecord {
    /// Decode a record's key and (nullable) value.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<OffsetsRecord, OffsetsRecordError> {
        match OffsetsKey::decode(key)? {
            OffsetsKey::OffsetCommit {
                group,
                topic,
                partition,
                ..
            } => {
                let value = value.map(OffsetCommitValue::decode).transpose()?;
                Ok(OffsetsRecord::OffsetCommit {
                    group,
                    topic,
                    partition,
                    value,
                })
            }
            OffsetsKey::GroupMetadata { group } => {
                let value = value.map(GroupMetadataValue::decode).transpose()?;
                Ok(OffsetsRecord::GroupMetadata { group, value })
            }
        }
    }

    /// The key and (nullable) value as Kafka writes them; an error when a field does not
    /// fit Kafka's schema (the record is then not written at all).
    pub fn encode(&self) -> Result<(Bytes, Option<Bytes>), OffsetsRecordError> {
        match self {
            OffsetsRecord::OffsetCommit {
                group,
                topic,
                partition,
                value,
            } => Ok((
                OffsetsKey::offset_commit(group, topic, *partition).encode()?,
                value.as_ref().map(|v| v.encode()).transpose()?,
            )),
            OffsetsRecord::GroupMetadata { group, value } => Ok((
                OffsetsKey::group_metadata(group).encode()?,
                value.as_ref().map(|v| v.encode()).transpose()?,
            )),
        }
    }

    pub fn group(&self) -> &str {
        match self {
            OffsetsRecord::OffsetCommit { group, .. }
            | OffsetsRecord::GroupMetadata { group, .. } => group,
        }
    }
}

#[derive(Default)]
struct Writer {
    buf: BytesMut,
}

impl Writer {
    fn finish(self) -> Bytes {
        self.buf.freeze()
    }
    fn i16(&mut self, v: i16) {
        self.buf.put_i16(v);
    }
    fn i32(&mut self, v: i32) {
        self.buf.put_i32(v);
    }
    fn i64(&mut self, v: i64) {
        self.buf.put_i64(v);
    }
    fn uvarint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.put_u8((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.put_u8(v as u8);
    }
    fn string(&mut self, what: &'static str, s: &str) -> Result<(), OffsetsRecordError> {
        self.string_v(what, s, false)
    }
    fn string_v(
        &mut self,
        what: &'static str,
        s: &str,
        flexible: bool,
    ) -> Result<(), OffsetsRecordError> {
        self.nullable_string_v(what, Some(s), flexible)
    }
    fn nullable_string_v(
        &mut self,
        what: &'static str,
        s: Option<&str>,
        flexible: bool,
    ) -> Result<(), OffsetsRecordError> {
        match (s, flexible) {
            (None, false) => self.i16(-1),
            (None, true) => self.uvarint(0),
            (Some(s), false) => {
                let len = fits(what, s.len(), MAX_SCHEMA_STRING_BYTES)?;
                self.i16(len as i16);
                self.buf.put_slice(s.as_bytes());
            }
            (Some(s), true) => {
                let len = fits(what, s.len(), i32::MAX as usize - 1)?;
                self.uvarint(len as u64 + 1);
                self.buf.put_slice(s.as_bytes());
            }
        }
        Ok(())
    }
    fn bytes_v(
        &mut self,
        what: &'static str,
        b: &[u8],
        flexible: bool,
    ) -> Result<(), OffsetsRecordError> {
        let len = fits(what, b.len(), i32::MAX as usize - 1)?;
        if flexible {
            self.uvarint(len as u64 + 1);
        } else {
            self.i32(len as i32);
        }
        self.buf.put_slice(b);
        Ok(())
    }
    fn array_len(
        &mut self,
        what: &'static str,
        n: usize,
        flexible: bool,
    ) -> Result<(), OffsetsRecordError> {
        let n = fits(what, n, i32::MAX as usize - 1)?;
        if flexible {
            self.uvarint(n as u64 + 1);
        } else {
            self.i32(n as i32);
        }
        Ok(())
    }
}

/// `len` if it is at most `max`, else the error naming the field.
fn fits(what: &'static str, len: usize, max: usize) -> Result<usize, OffsetsRecordError> {
    if len > max {
        return Err(OffsetsRecordError::TooLong { what, len, max });
    }
    Ok(len)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], OffsetsRecordError> {
        if self.remaining() < n {
            return Err(OffsetsRecordError::Truncated {
                at: self.at,
                needed: n - self.remaining(),
            });
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }
    fn end(&self) -> Result<(), OffsetsRecordError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(OffsetsRecordError::TrailingBytes { extra }),
        }
    }
    fn i16(&mut self) -> Result<i16, OffsetsRecordError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32, OffsetsRecordError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Result<i64, OffsetsRecordError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    fn uvarint(&mut self) -> Result<u64, OffsetsRecordError> {
        let start = self.at;
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(OffsetsRecordError::Invalid {
            what: "varint",
            at: start,
        })
    }
    /// A length read from the wire, checked against the bytes left.
    fn bounded_len(&mut self, len: u64, what: &'static str) -> Result<usize, OffsetsRecordError> {
        if len > self.remaining() as u64 {
            return Err(OffsetsRecordError::Invalid { what, at: self.at });
        }
        Ok(len as usize)
    }
    fn string(&mut self) -> Result<String, OffsetsRecordError> {
        self.string_v(false)
    }
    fn string_v(&mut self, flexible: bool) -> Result<String, OffsetsRecordError> {
        let at = self.at;
        self.nullable_string_v(flexible)?
            .ok_or(OffsetsRecordError::Invalid {
                what: "null string",
                at,
            })
    }
    fn nullable_string_v(&mut self, flexible: bool) -> Result<Option<String>, OffsetsRecordError> {
        let len = if flexible {
            match self.uvarint()? {
                0 => return Ok(None),
                n => n - 1,
            }
        } else {
            match self.i16()? {
                -1 => return Ok(None),
                n if n < 0 => {
                    return Err(OffsetsRecordError::Invalid {
                        what: "string length",
                        at: self.at - 2,
                    })
                }
                n => n as u64,
            }
        };
        let len = self.bounded_len(len, "string length")?;
        let at = self.at;
        let raw = self.take(len)?;
        let s = std::str::from_utf8(raw).map_err(|_| OffsetsRecordError::Invalid {
            what: "utf-8 string",
            at,
        })?;
        Ok(Some(s.to_owned()))
    }
    fn bytes_v(&mut self, flexible: bool) -> Result<Bytes, OffsetsRecordError> {
        let at = self.at;
        let len = if flexible {
            match self.uvarint()? {
                0 => {
                    return Err(OffsetsRecordError::Invalid {
                        what: "null bytes",
                        at,
                    })
                }
                n => n - 1,
            }
        } else {
            let n = self.i32()?;
            if n < 0 {
                return Err(OffsetsRecordError::Invalid {
                    what: "bytes length",
                    at,
                });
            }
            n as u64
        };
        let len = self.bounded_len(len, "bytes length")?;
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }
    /// An array count, bounded by how many elements of at least `min_element_bytes` the
    /// remaining bytes could hold.
    fn array_len(
        &mut self,
        flexible: bool,
        min_element_bytes: usize,
    ) -> Result<usize, OffsetsRecordError> {
        let at = self.at;
        let n = if flexible {
            match self.uvarint()? {
                0 => {
                    return Err(OffsetsRecordError::Invalid {
                        what: "null array",
                        at,
                    })
                }
                n => n - 1,
            }
        } else {
            let n = self.i32()?;
            if n < 0 {
                return Err(OffsetsRecordError::Invalid {
                    what: "array length",
                    at,
                });
            }
            n as u64
        };
        if n > (self.remaining() / min_element_bytes.max(1)) as u64 {
            return Err(OffsetsRecordError::Invalid {
                what: "array length",
                at,
            });
        }
        Ok(n as usize)
    }
    fn skip_tagged_fields(&mut self) -> Result<(), OffsetsRecordError> {
        let at = self.at;
        let count = self.uvarint()?;
        if count > self.remaining() as u64 {
            return Err(OffsetsRecordError::Invalid {
                what: "tagged field count",
                at,
            });
        }
        for _ in 0..count {
            let _tag = self.uvarint()?;
            let size = self.uvarint()?;
            let size = self.bounded_len(size, "tagged field size")?;
            self.take(size)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn java_hash_matches_java() {
        // Values computed by java.lang.String#hashCode.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("hello"), 99162322);
        assert_eq!(java_string_hash("Aa"), 2112);
        assert_eq!(java_string_hash("BB"), 2112);
    }

    #[test]
    fn partition_of_min_hash_is_zero() {
        // "polygenelubricants" hashes to i32::MIN in Java; Kafka's Utils.abs maps it to 0.
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(partition_for_group("polygenelubricants", 50), 0);
    }

    #[test]
    fn partition_of_negative_hash_uses_abs() {
        for g in [
            "my-group",
            "test-group",
            "console-consumer-1",
            "zz",
            "\u{1F600}",
        ] {
            let h = java_string_hash(g);
            let p = partition_for_group(g, 50);
            assert!((0..50).contains(&p));
            assert_eq!(p as i64, (h as i64).abs() % 50);
        }
    }

    #[test]
    fn non_bmp_chars_hash_as_utf16_surrogates() {
        // U+1F600 is the surrogate pair D83D DE00: 0xD83D * 31 + 0xDE00.
        assert_eq!(java_string_hash("\u{1F600}"), 0xD83D * 31 + 0xDE00);
    }

    #[test]
    fn offset_commit_key_bytes_match_kafka() {
        let key = OffsetsKey::offset_commit("g", "t", 7).encode().unwrap();
        assert_eq!(&key[..], &[0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 7]);
        let key = OffsetsKey::group_metadata("g").encode().unwrap();
        assert_eq!(&key[..], &[0, 2, 0, 1, b'g']);
    }

    #[test]
    fn offset_commit_value_v3_bytes_match_kafka() {
        let v = OffsetCommitValue::new(5, 2, "m", 9, -1);
        assert_eq!(v.version, 3);
        let mut expect = vec![0, 3];
        expect.extend_from_slice(&5i64.to_be_bytes());
        expect.extend_from_slice(&2i32.to_be_bytes());
        expect.extend_from_slice(&[0, 1, b'm']);
        expect.extend_from_slice(&9i64.to_be_bytes());
        assert_eq!(&v.encode().unwrap()[..], &expect[..]);
    }

    #[test]
    fn offset_commit_value_with_expiry_is_v1() {
        let v = OffsetCommitValue::new(5, 2, "", 9, 100);
        assert_eq!(v.version, 1);
        let mut expect = vec![0, 1];
        expect.extend_from_slice(&5i64.to_be_bytes());
        expect.extend_from_slice(&[0, 0]);
        expect.extend_from_slice(&9i64.to_be_bytes());
        expect.extend_from_slice(&100i64.to_be_bytes());
        assert_eq!(&v.encode().unwrap()[..], &expect[..]);
        assert_eq!(OffsetCommitValue::decode(&expect).unwrap(), v);
    }

    #[test]
    fn group_metadata_value_v3_bytes_match_kafka() {
        let v = GroupMetadataValue {
            version: 3,
            protocol_type: "consumer".into(),
            generation: 1,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            current_state_timestamp_ms: 42,
            members: vec![MemberMetadata {
                member_id: "m1".into(),
                group_instance_id: None,
                client_id: "c".into(),
                client_host: "/h".into(),
                rebalance_timeout_ms: 300,
                session_timeout_ms: 100,
                subscription: Bytes::from_static(&[1, 2]),
                assignment: Bytes::from_static(&[3]),
            }],
        };
        let mut e = vec![0, 3, 0, 8];
        e.extend_from_slice(b"consumer");
        e.extend_from_slice(&1i32.to_be_bytes());
        e.extend_from_slice(&[0, 5]);
        e.extend_from_slice(b"range");
        e.extend_from_slice(&[0, 2, b'm', b'1']);
        e.extend_from_slice(&42i64.to_be_bytes());
        e.extend_from_slice(&1i32.to_be_bytes());
        e.extend_from_slice(&[0, 2, b'm', b'1']);
        e.extend_from_slice(&[0xff, 0xff]); // null group instance id
        e.extend_from_slice(&[0, 1, b'c', 0, 2, b'/', b'h']);
        e.extend_from_slice(&300i32.to_be_bytes());
        e.extend_from_slice(&100i32.to_be_bytes());
        e.extend_from_slice(&[0, 0, 0, 2, 1, 2, 0, 0, 0, 1, 3]);
        assert_eq!(&v.encode().unwrap()[..], &e[..]);
        assert_eq!(GroupMetadataValue::decode(&e).unwrap(), v);
    }

    #[test]
    fn group_metadata_v0_reads_session_timeout_as_rebalance_timeout() {
        let mut e = vec![0, 0, 0, 1, b'x'];
        e.extend_from_slice(&3i32.to_be_bytes());
        e.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]); // null protocol, null leader
        e.extend_from_slice(&1i32.to_be_bytes());
        e.extend_from_slice(&[0, 1, b'm', 0, 1, b'c', 0, 1, b'h']);
        e.extend_from_slice(&7000i32.to_be_bytes());
        e.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        let v = GroupMetadataValue::decode(&e).unwrap();
        assert_eq!(v.members[0].rebalance_timeout_ms, 7000);
        assert_eq!(v.protocol, None);
        assert_eq!(v.current_state_timestamp_ms, -1);
    }

    #[test]
    fn strings_longer_than_the_schema_holds_are_errors_not_panics() {
        let longest = "g".repeat(MAX_SCHEMA_STRING_BYTES);
        let key = OffsetsKey::offset_commit(&longest, "t", 0)
            .encode()
            .unwrap();
        assert_eq!(OffsetsKey::decode(&key).unwrap().group(), longest);
        let too_long = "g".repeat(MAX_SCHEMA_STRING_BYTES + 1);
        assert_eq!(
            OffsetsKey::group_metadata(&too_long).encode(),
            Err(OffsetsRecordError::TooLong {
                what: "group id",
                len: MAX_SCHEMA_STRING_BYTES + 1,
                max: MAX_SCHEMA_STRING_BYTES
            })
        );
        let value = GroupMetadataValue {
            version: GROUP_METADATA_VALUE_VERSION,
            protocol_type: "consumer".into(),
            generation: 1,
            protocol: Some("range".into()),
            leader: Some("m".into()),
            current_state_timestamp_ms: 0,
            members: vec![MemberMetadata {
                member_id: too_long.clone(),
                group_instance_id: None,
                client_id: "c".into(),
                client_host: "/h".into(),
                rebalance_timeout_ms: 1,
                session_timeout_ms: 1,
                subscription: Bytes::new(),
                assignment: Bytes::new(),
            }],
        };
        assert!(matches!(
            value.encode(),
            Err(OffsetsRecordError::TooLong {
                what: "member id",
                ..
            })
        ));
        // The flexible version has no 16-bit limit.
        let flexible = GroupMetadataValue {
            version: 4,
            ..value
        };
        assert!(flexible.encode().is_ok());
    }

    #[test]
    fn huge_member_count_is_rejected_without_allocating() {
        let mut e = vec![0, 3, 0, 0];
        e.extend_from_slice(&1i32.to_be_bytes());
        e.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        e.extend_from_slice(&0i64.to_be_bytes());
        e.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            GroupMetadataValue::decode(&e),
            Err(OffsetsRecordError::Invalid { .. })
        ));
    }

    #[test]
    fn tombstones_decode_as_none() {
        let key = OffsetsKey::offset_commit("g", "t", 0).encode().unwrap();
        let r = OffsetsRecord::decode(&key, None).unwrap();
        assert_eq!(
            r,
            OffsetsRecord::OffsetCommit {
                group: "g".into(),
                topic: "t".into(),
                partition: 0,
                value: None
            }
        );
    }

    #[test]
    fn unknown_key_version_is_an_error() {
        assert!(matches!(
            OffsetsKey::decode(&[0, 9, 0, 0]),
            Err(OffsetsRecordError::UnknownVersion { .. })
        ));
    }

    fn arb_string() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._\\-\u{e9}\u{1F600}]{0,20}"
    }

    fn arb_member(version: i16) -> impl Strategy<Value = MemberMetadata> {
        (
            arb_string(),
            proptest::option::of(arb_string()),
            arb_string(),
            arb_string(),
            any::<i32>(),
            any::<i32>(),
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(
                move |(member_id, gi, client_id, client_host, rt, st, sub, asg)| MemberMetadata {
                    member_id,
                    group_instance_id: if version >= 3 { gi } else { None },
                    client_id,
                    client_host,
                    rebalance_timeout_ms: if version >= 1 { rt } else { st },
                    session_timeout_ms: st,
                    subscription: Bytes::from(sub),
                    assignment: Bytes::from(asg),
                },
            )
    }

    fn arb_group_value() -> impl Strategy<Value = GroupMetadataValue> {
        (0i16..=4).prop_flat_map(|version| {
            (
                arb_string(),
                any::<i32>(),
                proptest::option::of(arb_string()),
                proptest::option::of(arb_string()),
                any::<i64>(),
                proptest::collection::vec(arb_member(version), 0..5),
            )
                .prop_map(
                    move |(protocol_type, generation, protocol, leader, ts, members)| {
                        GroupMetadataValue {
                            version,
                            protocol_type,
                            generation,
                            protocol,
                            leader,
                            current_state_timestamp_ms: if version >= 2 { ts } else { -1 },
                            members,
                        }
                    },
                )
        })
    }

    proptest! {
        #[test]
        fn offset_commit_key_round_trips(group in arb_string(), topic in arb_string(), partition in any::<i32>(), version in 0i16..=1) {
            let key = OffsetsKey::OffsetCommit { version, group, topic, partition };
            prop_assert_eq!(OffsetsKey::decode(&key.encode().unwrap()).unwrap(), key);
        }

        #[test]
        fn group_key_round_trips(group in arb_string()) {
            let key = OffsetsKey::group_metadata(&group);
            prop_assert_eq!(OffsetsKey::decode(&key.encode().unwrap()).unwrap(), key);
        }

        #[test]
        fn offset_commit_value_round_trips(version in 0i16..=4, offset in any::<i64>(), epoch in any::<i32>(), metadata in arb_string(), ts in any::<i64>(), expire in any::<i64>()) {
            let v = OffsetCommitValue {
                version,
                offset,
                leader_epoch: if version >= 3 { epoch } else { -1 },
                metadata,
                commit_timestamp_ms: ts,
                expire_timestamp_ms: if version == 1 { expire } else { -1 },
            };
            prop_assert_eq!(OffsetCommitValue::decode(&v.encode().unwrap()).unwrap(), v);
        }

        #[test]
        fn group_metadata_value_round_trips(v in arb_group_value()) {
            prop_assert_eq!(GroupMetadataValue::decode(&v.encode().unwrap()).unwrap(), v);
        }

        #[test]
        fn decoders_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = OffsetsKey::decode(&bytes);
            let _ = OffsetCommitValue::decode(&bytes);
            let _ = GroupMetadataValue::decode(&bytes);
        }

        #[test]
        fn truncated_values_are_errors_not_panics(v in arb_group_value(), cut in 0usize..1000) {
            let bytes = v.encode().unwrap();
            if cut < bytes.len() {
                prop_assert!(GroupMetadataValue::decode(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn partition_is_in_range(group in ".{0,30}", partitions in 1u32..200) {
            let p = partition_for_group(&group, partitions);
            prop_assert!(p >= 0 && (p as u32) < partitions);
        }
    }
}
