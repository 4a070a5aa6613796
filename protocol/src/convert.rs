//! What a broker does to records it does not store, or serve, as they are:
//!
//! - [`prepare_append`]: a producer's records on their way to the log. Message sets of
//!   magic 0/1 (Produce v0–2) become one v2 batch; a batch in another codec than the
//!   topic's `compression.type` is recompressed; on a compacted topic every record must
//!   have a key (KIP-467). Offsets (the log assigns them), timestamps and producer fields
//!   survive, as in Kafka's `LogValidator`.
//! - [`down_convert`]: stored v2 batches for a Fetch v0–3 reader, as message sets of the
//!   magic it reads (Kafka 3.x's `RecordsUtil.downConvert`).
//!
//! Neither runs for a v2 producer on a topic that keeps the producer's codec and is not
//! compacted, nor for a v4+ consumer: that path stays zero-copy. Every decompression is
//! bounded by `max_decompressed_bytes`, and what a conversion builds by
//! `max_output_bytes`, so the caller knows the most memory a call can take before making
//! it. Per-record errors (KIP-467) are listed for the first [`MAX_RECORD_ERRORS`] records
//! only; the message counts them all.

use crate::batch::{
    self, batches, records_in, records_section, validate_batch_with, BatchBuilder,
    BatchTimestampType, Compression, CountRule, IterEnd, Record, MAGIC_V2,
};
use crate::compression::{self, CodecError, Levels, Lz4Header};
use crate::message_set::{self, first_magic, messages, MessageTimestampType};

/// How a topic wants its records stored.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AppendPolicy {
    /// The topic's `compression.type`: `None` for `producer` (keep what was sent).
    pub target: Option<Compression>,
    pub levels: Levels,
    /// `cleanup.policy` includes `compact`: every record needs a key (KIP-467).
    pub compacted: bool,
    /// The most bytes one batch may decompress to; for a message set (whose records all
    /// go into one new batch), all of its wrappers together.
    pub max_decompressed_bytes: usize,
    /// The most bytes of records the conversion may build; past this the records are
    /// refused with [`AppendError::TooLarge`].
    pub max_output_bytes: usize,
}

/// Records of one batch listed with their own error (KIP-467); a batch with more bad
/// records lists these and counts the rest in the message.
pub const MAX_RECORD_ERRORS: usize = 1000;

impl AppendPolicy {
    /// Whether v2 batches are stored as sent, untouched and unread.
    pub fn is_passthrough(&self) -> bool {
        self.target.is_none() && !self.compacted
    }

    /// The codec a batch sent in `codec` is stored in.
    pub fn codec_for(&self, codec: Compression) -> Compression {
        self.target.unwrap_or(codec)
    }
}

/// Why a producer's records were refused; each variant is one Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// CORRUPT_MESSAGE: damaged bytes.
    #[error("{0}")]
    Corrupt(String),
    /// INVALID_RECORD: well-formed bytes that break a rule.
    #[error("{0}")]
    Invalid(String),
    /// INVALID_TIMESTAMP.
    #[error("{0}")]
    InvalidTimestamp(String),
    /// UNSUPPORTED_COMPRESSION_TYPE.
    #[error("{0}")]
    UnsupportedCompression(String),
    /// MESSAGE_TOO_LARGE: the converted records would pass `max_output_bytes` (as Kafka
    /// refuses a converted batch past `max.message.bytes`).
    #[error("{0}")]
    TooLarge(String),
    /// INVALID_RECORD with per-record errors (KIP-467): (index in the batch, reason).
    #[error("{message}")]
    RecordErrors {
        errors: Vec<(i32, String)>,
        message: String,
    },
}

impl AppendError {
    /// `errors` lists at most [`MAX_RECORD_ERRORS`] of the `total` bad records.
    fn record_errors(errors: Vec<(i32, String)>, total: usize) -> AppendError {
        // Kafka's wording (LogValidator.processRecordErrors).
        let shown: Vec<String> = errors
            .iter()
            .take(3)
            .map(|(index, message)| format!("RecordError(batchIndex={index}, message='{message}')"))
            .collect();
        let message = format!(
            "One or more records have been rejected due to {total} record errors in total, and only showing the first three errors at most: [{}]",
            shown.join(", ")
        );
        AppendError::RecordErrors { errors, message }
    }
}

/// Per-record errors (KIP-467) as they are found: the first [`MAX_RECORD_ERRORS`] kept,
/// all counted.
#[derive(Default)]
struct RecordErrors {
    listed: Vec<(i32, String)>,
    total: usize,
}

impl RecordErrors {
    fn push(&mut self, index: i32, message: impl FnOnce() -> String) {
        if self.listed.len() < MAX_RECORD_ERRORS {
            self.listed.push((index, message()));
        }
        self.total += 1;
    }

    fn is_empty(&self) -> bool {
        self.total == 0
    }

    fn into_error(self) -> AppendError {
        AppendError::record_errors(self.listed, self.total)
    }
}

fn too_large(max_output_bytes: usize, topic_partition: &str) -> AppendError {
    AppendError::TooLarge(format!(
        "The records for topic partition {topic_partition} come to more than {max_output_bytes} bytes once converted"
    ))
}

fn codec_error(e: CodecError) -> AppendError {
    match e {
        CodecError::TooLarge { .. } => AppendError::Invalid(e.to_string()),
        CodecError::Corrupt { .. } => AppendError::Corrupt(e.to_string()),
        CodecError::Compress { .. } => AppendError::Invalid(e.to_string()),
    }
}

fn keyless(topic_partition: &str) -> String {
    format!(
        "Compacted topic cannot accept message without key in topic partition {topic_partition}"
    )
}

/// Makes a producer's records for one partition ready for the log under `policy`:
/// `Ok(None)` to store them as sent, `Ok(Some(bytes))` to store `bytes` instead.
/// `topic_partition` (`name-index`) names the partition in error messages, as Kafka's do.
///
/// Bytes that are not whole, valid v2 batches are returned as sent, so the log refuses
/// them with its own error, as it would without a policy.
pub fn prepare_append(
    records: &[u8],
    policy: &AppendPolicy,
    topic_partition: &str,
) -> Result<Option<Vec<u8>>, AppendError> {
    match first_magic(records) {
        Some(0 | 1) => up_convert(records, policy, topic_partition).map(Some),
        Some(MAGIC_V2) if !policy.is_passthrough() => prepare_v2(records, policy, topic_partition),
        _ => Ok(None),
    }
}

/// v2 batches: check keys, recompress where the codec differs.
fn prepare_v2(
    records: &[u8],
    policy: &AppendPolicy,
    topic_partition: &str,
) -> Result<Option<Vec<u8>>, AppendError> {
    let mut rebuilt: Option<Vec<u8>> = None;
    let mut iter = batches(records);
    let mut scratch = Vec::new();
    for (position, bytes) in iter.by_ref() {
        let Ok(info) = validate_batch_with(bytes, usize::MAX, CountRule::Exact) else {
            return Ok(None);
        };
        let target = policy.codec_for(info.compression);
        let recompress = target != info.compression;
        if info.is_control() || (!recompress && !policy.compacted) {
            if let Some(out) = rebuilt.as_mut() {
                out.extend_from_slice(bytes);
                if out.len() > policy.max_output_bytes {
                    return Err(too_large(policy.max_output_bytes, topic_partition));
                }
            }
            continue;
        }
        let section = records_section(bytes).unwrap_or_default();
        let plain: &[u8] = if info.compression == Compression::None {
            section
        } else {
            scratch.clear();
            compression::decompress_into(
                info.compression,
                section,
                policy.max_decompressed_bytes,
                Lz4Header::Standard,
                &mut scratch,
            )
            .map_err(codec_error)?;
            &scratch
        };
        check_records(plain, info.records_count, policy.compacted, topic_partition)?;
        if recompress {
            let out = rebuilt.get_or_insert_with(|| {
                let mut out = Vec::with_capacity(records.len());
                out.extend_from_slice(&records[..position]);
                out
            });
            let batch = batch::rebuild_with_codec(bytes, plain, target, policy.levels)
                .map_err(codec_error)?;
            out.extend_from_slice(&batch);
        } else if let Some(out) = rebuilt.as_mut() {
            out.extend_from_slice(bytes);
        }
        if rebuilt
            .as_ref()
            .is_some_and(|out| out.len() > policy.max_output_bytes)
        {
            return Err(too_large(policy.max_output_bytes, topic_partition));
        }
    }
    if iter.end() != IterEnd::Clean {
        return Ok(None);
    }
    Ok(rebuilt)
}

/// Reads every record of a (decompressed) records section: the count must match, and on
/// a compacted topic every record needs a key.
fn check_records(
    section: &[u8],
    records_count: i32,
    compacted: bool,
    topic_partition: &str,
) -> Result<(), AppendError> {
    let mut iter = records_in(section, records_count);
    let mut read = 0i32;
    let mut errors = RecordErrors::default();
    while let Some(record) = iter.next() {
        let record: Record = match record {
            Ok(record) => record,
            // The section ran out before the declared count: the count is wrong.
            Err(_) if iter.rest() == 0 => break,
            Err(e) => return Err(AppendError::Corrupt(e.to_string())),
        };
        if compacted && record.key.is_none() {
            errors.push(read, || keyless(topic_partition));
        }
        read += 1;
    }
    if read != records_count || iter.rest() != 0 {
        return Err(AppendError::Invalid(format!(
            "Incorrect declared batch size: {records_count} records declared, {read} read and {} bytes left over",
            iter.rest()
        )));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.into_error())
    }
}

/// Message format v0/v1 to one v2 batch (Kafka's LogValidator with a v2 log): every
/// record keeps key, value and (magic 1) timestamp; magic 0 records have none (-1).
fn up_convert(
    records: &[u8],
    policy: &AppendPolicy,
    topic_partition: &str,
) -> Result<Vec<u8>, AppendError> {
    let mut builder = BatchBuilder::new();
    let mut first_magic: Option<i8> = None;
    let mut source_codec = Compression::None;
    let (mut wrappers, mut shallow) = (0usize, 0usize);
    let mut decompressed_bytes = 0usize;
    for message in messages(records) {
        let message = message.map_err(|e| {
            if e.is_corrupt() {
                AppendError::Corrupt(e.to_string())
            } else {
                AppendError::Invalid(e.to_string())
            }
        })?;
        let magic = *first_magic.get_or_insert(message.magic);
        if message.magic != magic {
            return Err(AppendError::Invalid(format!(
                "Batch magic {} is not the same as the first batch's magic byte {magic} in topic partition {topic_partition}",
                message.magic
            )));
        }
        if message.magic > 0 && message.timestamp_type() == MessageTimestampType::LogAppendTime {
            return Err(AppendError::InvalidTimestamp(
                "Invalid timestamp type in message. Producer should not set timestamp type to LogAppendTime."
                    .into(),
            ));
        }
        if !message.is_compressed() {
            shallow += 1;
            // Each uncompressed message is a batch of its own, record index 0 (Kafka).
            if policy.compacted && message.key.is_none() {
                return Err(AppendError::record_errors(
                    vec![(0, keyless(topic_partition))],
                    1,
                ));
            }
            builder.push(message.key, message.value, &[], message.timestamp);
            continue;
        }
        wrappers += 1;
        let codec = message.compression().unwrap_or(Compression::None);
        if codec == Compression::Zstd {
            return Err(AppendError::UnsupportedCompression(format!(
                "zstd is not allowed in message format v{magic} (Produce v7 and record batches v2 only)"
            )));
        }
        let inner = compression::decompress(
            codec,
            message.value.unwrap_or_default(),
            policy
                .max_decompressed_bytes
                .saturating_sub(decompressed_bytes),
            message_set::lz4_header(magic),
        )
        .map_err(codec_error)?;
        decompressed_bytes += inner.len();
        let mut errors = RecordErrors::default();
        let mut count = 0i32;
        for inner_message in messages(&inner) {
            let inner_message = inner_message.map_err(|e| AppendError::Corrupt(e.to_string()))?;
            if inner_message.magic != magic {
                errors.push(count, || {
                    format!("Record's magic {} does not match outer magic {magic} in topic partition {topic_partition}", inner_message.magic)
                });
            } else if inner_message.is_compressed() {
                errors.push(count, || {
                    "Compressed outer record should not have an inner record with a compression attribute set".into()
                });
            } else if policy.compacted && inner_message.key.is_none() {
                errors.push(count, || keyless(topic_partition));
            } else {
                builder.push(
                    inner_message.key,
                    inner_message.value,
                    &[],
                    inner_message.timestamp,
                );
            }
            count += 1;
        }
        if !errors.is_empty() {
            return Err(errors.into_error());
        }
        if count == 0 {
            return Err(AppendError::Invalid(
                "Compressed wrapper message holds no records".into(),
            ));
        }
        source_codec = codec;
    }
    if wrappers > 0 && wrappers + shallow > 1 {
        return Err(AppendError::Invalid(
            "Compressed outer record has more than one batch".into(),
        ));
    }
    if builder.records_count() == 0 {
        return Err(AppendError::Invalid(
            "Record batch has no batches at all".into(),
        ));
    }
    let codec = policy.codec_for(source_codec);
    let built = builder
        .build_compressed(codec, policy.levels)
        .map_err(codec_error)?;
    if built.len() > policy.max_output_bytes {
        return Err(too_large(policy.max_output_bytes, topic_partition));
    }
    Ok(built)
}

/// Why stored batches could not be converted down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownConvertError {
    /// UNSUPPORTED_COMPRESSION_TYPE: the first batch is zstd, which message sets cannot hold.
    #[error("zstd-compressed batches cannot be converted down to message format v{0}")]
    Zstd(i8),
    /// A stored batch that does not decode (should not happen: the log validates reads).
    #[error("{0}")]
    Corrupt(String),
    /// The first batch alone decompresses or converts to more than the limits allow.
    #[error("the first batch converts to more than {0} bytes")]
    TooLarge(usize),
}

/// Stored v2 batches (whole, laid end to end) as a message set of `to_magic` (0 or 1) for
/// a Fetch v0–3 reader reading from `fetch_offset`, as Kafka 3.x converted them:
///
/// - control batches are left out; headers are dropped;
/// - an uncompressed batch becomes one message per record, records before `fetch_offset`
///   left out;
/// - a compressed batch becomes one wrapper message in the same codec (its offset the
///   last record's, inner offsets relative for magic 1, absolute for magic 0);
/// - magic 1 keeps each record's timestamp (LogAppendTime: the batch's, flagged);
/// - zstd cannot be carried: a first zstd batch is [`DownConvertError::Zstd`], a later one
///   ends the conversion before it.
///
/// Memory is bounded, as Kafka's lazy down-conversion (KIP-283) bounds it: one batch is
/// decompressed at a time, to at most `max_decompressed_bytes`, and the message set (with
/// the wrapper being built) stays within `max_output_bytes`: the conversion ends before
/// the message, or the batch, that would pass either, like a response that is full. Only
/// when the first one does is it an error ([`DownConvertError::TooLarge`]).
pub fn down_convert(
    stored: &[u8],
    to_magic: i8,
    fetch_offset: i64,
    levels: Levels,
    max_decompressed_bytes: usize,
    max_output_bytes: usize,
) -> Result<Vec<u8>, DownConvertError> {
    debug_assert!((0..=1).contains(&to_magic));
    let mut out = Vec::with_capacity((stored.len() + stored.len() / 2).min(max_output_bytes));
    let mut scratch = Vec::new();
    let mut inner = Vec::new();
    // The first message or wrapper that does not fit: the end of the set, or an error.
    let full = |out: &Vec<u8>, limit: usize| {
        if out.is_empty() {
            Err(DownConvertError::TooLarge(limit))
        } else {
            Ok(())
        }
    };
    'batches: for (_, bytes) in batches(stored) {
        let info = validate_batch_with(bytes, usize::MAX, CountRule::AtMost)
            .map_err(|e| DownConvertError::Corrupt(e.to_string()))?;
        if info.is_control() {
            continue;
        }
        if info.compression == Compression::Zstd {
            if out.is_empty() {
                return Err(DownConvertError::Zstd(to_magic));
            }
            break;
        }
        let section = records_section(bytes).unwrap_or_default();
        let plain: &[u8] = if info.compression == Compression::None {
            section
        } else {
            scratch.clear();
            match compression::decompress_into(
                info.compression,
                section,
                max_decompressed_bytes,
                Lz4Header::Standard,
                &mut scratch,
            ) {
                Ok(()) => {}
                Err(CodecError::TooLarge { .. }) => {
                    full(&out, max_decompressed_bytes)?;
                    break;
                }
                Err(e) => return Err(DownConvertError::Corrupt(e.to_string())),
            }
            &scratch
        };
        let log_append_time = info.timestamp_type() == BatchTimestampType::LogAppendTime;
        let timestamp_of = |record: &Record| -> i64 {
            if to_magic == 0 {
                -1
            } else if log_append_time {
                info.max_timestamp
            } else {
                info.base_timestamp.wrapping_add(record.timestamp_delta)
            }
        };
        let attributes = message_set::attributes(to_magic, Compression::None, log_append_time);
        if info.compression == Compression::None {
            for record in records_in(plain, info.records_count) {
                let record = record.map_err(|e| DownConvertError::Corrupt(e.to_string()))?;
                let offset = info.base_offset + i64::from(record.offset_delta);
                if offset < fetch_offset {
                    continue;
                }
                let before = out.len();
                message_set::write_message(
                    &mut out,
                    offset,
                    to_magic,
                    attributes,
                    timestamp_of(&record),
                    record.key,
                    record.value,
                );
                if out.len() > max_output_bytes {
                    out.truncate(before);
                    full(&out, max_output_bytes)?;
                    break 'batches;
                }
            }
            continue;
        }
        inner.clear();
        let mut first_offset = None;
        let mut last_offset = info.base_offset;
        let mut max_timestamp = -1i64;
        for record in records_in(plain, info.records_count) {
            let record = record.map_err(|e| DownConvertError::Corrupt(e.to_string()))?;
            let offset = info.base_offset + i64::from(record.offset_delta);
            let first = *first_offset.get_or_insert(offset);
            let inner_offset = if to_magic == 0 {
                offset
            } else {
                offset - first
            };
            let timestamp = timestamp_of(&record);
            max_timestamp = max_timestamp.max(timestamp);
            last_offset = offset;
            message_set::write_message(
                &mut inner,
                inner_offset,
                to_magic,
                attributes,
                timestamp,
                record.key,
                record.value,
            );
            if out.len() + inner.len() > max_output_bytes {
                full(&out, max_output_bytes)?;
                break 'batches;
            }
        }
        if first_offset.is_none() {
            continue;
        }
        let wrapper_timestamp = if to_magic == 0 {
            -1
        } else if log_append_time {
            info.max_timestamp
        } else {
            max_timestamp
        };
        let before = out.len();
        message_set::write_wrapper(
            &mut out,
            last_offset,
            to_magic,
            info.compression,
            log_append_time,
            wrapper_timestamp,
            &inner,
            levels,
        )
        .map_err(|e| DownConvertError::Corrupt(e.to_string()))?;
        if out.len() > max_output_bytes {
            out.truncate(before);
            full(&out, max_output_bytes)?;
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{validate_batch, BatchHeader};
    use crate::message_set::{write_message, write_wrapper, Message};

    const CODECS: [Compression; 4] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
    ];

    fn policy(target: Option<Compression>, compacted: bool) -> AppendPolicy {
        AppendPolicy {
            target,
            levels: Levels::default(),
            compacted,
            max_decompressed_bytes: 1 << 20,
            max_output_bytes: 1 << 20,
        }
    }

    /// A record to build: (key, value, timestamp).
    type Input<'a> = (Option<&'a [u8]>, &'a [u8], i64);

    /// A v2 batch of records in `codec`, with producer fields.
    fn v2_batch(records: &[Input], codec: Compression) -> Vec<u8> {
        let mut builder = BatchBuilder::new().producer(77, 3, 10);
        for (key, value, ts) in records {
            builder.push(*key, Some(value), &[(b"h", Some(b"v"))], *ts);
        }
        builder.build_compressed(codec, Levels::default()).unwrap()
    }

    /// (key, value, timestamp) of one record.
    type Row = (Option<Vec<u8>>, Option<Vec<u8>>, i64);

    /// (key, value, timestamp) of every record of the v2 batches in `bytes`.
    fn v2_records(bytes: &[u8]) -> Vec<Row> {
        let mut out = Vec::new();
        for (_, b) in batches(bytes) {
            let info = validate_batch(b, usize::MAX).expect("valid batch");
            let plain = compression::decompress(
                info.compression,
                records_section(b).unwrap(),
                1 << 20,
                Lz4Header::Standard,
            )
            .unwrap();
            for r in records_in(&plain, info.records_count) {
                let r = r.unwrap();
                out.push((
                    r.key.map(<[u8]>::to_vec),
                    r.value.map(<[u8]>::to_vec),
                    info.base_timestamp + r.timestamp_delta,
                ));
            }
        }
        out
    }

    #[test]
    fn recompression_keeps_everything_but_the_codec() {
        let records: Vec<Input> = vec![
            (Some(b"a"), b"one", 1000),
            (Some(b"b"), b"two", 1005),
            (None, b"three", 999),
        ];
        for from in CODECS {
            for to in CODECS.iter().copied().chain([Compression::Zstd]) {
                let sent = v2_batch(&records, from);
                let stored = prepare_append(&sent, &policy(Some(to), false), "t-0").unwrap();
                if from == to {
                    assert_eq!(stored, None, "{from:?} is kept as sent");
                    continue;
                }
                let stored = stored.expect("recompressed");
                let old = BatchHeader::view(&sent).unwrap();
                let info = validate_batch(&stored, usize::MAX).expect("valid with a fresh CRC");
                assert_eq!(info.compression, to);
                assert_eq!(info.records_count, 3);
                assert_eq!(info.last_offset_delta, 2);
                assert_eq!(
                    (info.base_timestamp, info.max_timestamp),
                    (old.base_timestamp(), old.max_timestamp())
                );
                assert_eq!(
                    (info.producer_id, info.producer_epoch, info.base_sequence),
                    (77, 3, 10)
                );
                assert_eq!(v2_records(&stored), v2_records(&sent), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn keyless_records_on_a_compacted_topic_fail_one_by_one() {
        let records: Vec<Input> = vec![
            (Some(b"a"), b"1", 1),
            (None, b"2", 1),
            (Some(b"c"), b"3", 1),
            (None, b"4", 1),
        ];
        for codec in CODECS {
            let sent = v2_batch(&records, codec);
            let err = prepare_append(&sent, &policy(None, true), "events-3").unwrap_err();
            let AppendError::RecordErrors { errors, message } = err else {
                panic!("record errors expected");
            };
            assert_eq!(errors.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 3]);
            assert_eq!(
                errors[0].1,
                "Compacted topic cannot accept message without key in topic partition events-3"
            );
            assert!(
                message
                    .starts_with("One or more records have been rejected due to 2 record errors"),
                "{message}"
            );
        }
        // All keyed: stored as sent (no rebuild).
        let keyed = v2_batch(&[(Some(b"k"), b"v", 1)], Compression::Lz4);
        assert_eq!(prepare_append(&keyed, &policy(None, true), "t-0"), Ok(None));
    }

    #[test]
    fn a_passthrough_policy_never_looks_at_v2_batches() {
        let garbage_but_v2 = {
            let mut b = v2_batch(&[(None, b"x", 1)], Compression::Gzip);
            let n = b.len();
            b[n - 3] ^= 0xff;
            b
        };
        assert_eq!(
            prepare_append(&garbage_but_v2, &policy(None, false), "t-0"),
            Ok(None)
        );
        // With a policy, a batch the log would refuse is left for the log to refuse.
        assert_eq!(
            prepare_append(
                &garbage_but_v2,
                &policy(Some(Compression::Zstd), false),
                "t-0"
            ),
            Ok(None)
        );
    }

    #[test]
    fn a_wrong_record_count_under_a_good_crc_is_invalid() {
        let mut b = BatchBuilder::new();
        b.push(Some(b"k"), Some(b"v"), &[], 1);
        b.push(Some(b"k"), Some(b"v"), &[], 1);
        let mut sent = b
            .build_compressed(Compression::Gzip, Levels::default())
            .unwrap();
        // Claim 3 records (and last offset delta 2) with the CRC fixed up.
        sent[23..27].copy_from_slice(&2i32.to_be_bytes());
        sent[57..61].copy_from_slice(&3i32.to_be_bytes());
        let crc = crc32c::crc32c(&sent[21..]);
        sent[17..21].copy_from_slice(&crc.to_be_bytes());
        let err = prepare_append(&sent, &policy(Some(Compression::Lz4), false), "t-0").unwrap_err();
        assert!(matches!(err, AppendError::Invalid(_)), "{err:?}");
    }

    fn message_set(magic: i8, codec: Compression, keys: &[Option<&[u8]>]) -> Vec<u8> {
        let mut plain = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let offset = if magic == 1 && codec != Compression::None {
                i as i64
            } else {
                0
            };
            write_message(
                &mut plain,
                offset,
                magic,
                0,
                1_000 + i as i64,
                *key,
                Some(format!("value {i}").as_bytes()),
            );
        }
        if codec == Compression::None {
            return plain;
        }
        let mut set = Vec::new();
        write_wrapper(
            &mut set,
            keys.len() as i64 - 1,
            magic,
            codec,
            false,
            1_000,
            &plain,
            Levels::default(),
        )
        .unwrap();
        set
    }

    #[test]
    fn message_sets_become_one_v2_batch_keeping_keys_values_and_timestamps() {
        for magic in [0i8, 1] {
            for codec in CODECS {
                let set = message_set(magic, codec, &[Some(b"k0"), None, Some(b"k2")]);
                for target in [None, Some(Compression::Zstd), Some(Compression::None)] {
                    let stored = prepare_append(&set, &policy(target, false), "t-0")
                        .unwrap()
                        .expect("converted");
                    let info = validate_batch(&stored, usize::MAX).expect("a valid v2 batch");
                    assert_eq!(
                        info.compression,
                        target.unwrap_or(codec),
                        "magic {magic} {codec:?}"
                    );
                    assert_eq!(info.records_count, 3);
                    assert_eq!(info.producer_id, -1);
                    let ts = |i: i64| if magic == 0 { -1 } else { 1_000 + i };
                    assert_eq!(
                        v2_records(&stored),
                        vec![
                            (Some(b"k0".to_vec()), Some(b"value 0".to_vec()), ts(0)),
                            (None, Some(b"value 1".to_vec()), ts(1)),
                            (Some(b"k2".to_vec()), Some(b"value 2".to_vec()), ts(2)),
                        ]
                    );
                }
                // Keyless on a compacted topic.
                let err = prepare_append(&set, &policy(None, true), "t-0").unwrap_err();
                assert!(matches!(err, AppendError::RecordErrors { .. }), "{err:?}");
            }
        }
    }

    #[test]
    fn message_set_damage_and_rule_breaking() {
        let mut set = message_set(1, Compression::None, &[Some(b"k")]);
        let n = set.len();
        set[n - 1] ^= 1;
        assert!(matches!(
            prepare_append(&set, &policy(None, false), "t-0"),
            Err(AppendError::Corrupt(_))
        ));
        let mut two = message_set(1, Compression::Gzip, &[Some(b"k")]);
        two.extend(message_set(1, Compression::Gzip, &[Some(b"k")]));
        assert!(matches!(
            prepare_append(&two, &policy(None, false), "t-0"),
            Err(AppendError::Invalid(_))
        ));
        let mut mixed = message_set(0, Compression::None, &[Some(b"k")]);
        mixed.extend(message_set(1, Compression::None, &[Some(b"k")]));
        assert!(matches!(
            prepare_append(&mixed, &policy(None, false), "t-0"),
            Err(AppendError::Invalid(_))
        ));
        let mut zstd = Vec::new();
        write_message(&mut zstd, 0, 1, 4, 1, None, Some(b"x"));
        assert!(matches!(
            prepare_append(&zstd, &policy(None, false), "t-0"),
            Err(AppendError::UnsupportedCompression(_))
        ));
        let mut log_append = Vec::new();
        write_message(&mut log_append, 0, 1, 8, 1, Some(b"k"), Some(b"x"));
        assert!(matches!(
            prepare_append(&log_append, &policy(None, false), "t-0"),
            Err(AppendError::InvalidTimestamp(_))
        ));
    }

    fn parse_set(bytes: &[u8]) -> Vec<Message<'_>> {
        messages(bytes)
            .collect::<Result<_, _>>()
            .expect("a valid message set")
    }

    /// Stored batches: offsets 10..13 uncompressed, 13..16 in `codec`.
    fn stored(codec: Compression, log_append_time: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for (base, codec) in [(10, Compression::None), (13, codec)] {
            let mut b = BatchBuilder::new()
                .base_offset(base)
                .log_append_time(log_append_time);
            for i in 0..3 {
                b.push(
                    Some(format!("k{}", base + i).as_bytes()),
                    Some(b"v"),
                    &[(b"h", None)],
                    500 + base + i,
                );
            }
            let mut bytes = b.build_compressed(codec, Levels::default()).unwrap();
            if log_append_time {
                batch::set_log_append_time(&mut bytes, 9_999);
            }
            out.extend(bytes);
        }
        out
    }

    #[test]
    fn down_conversion_to_each_magic() {
        for codec in CODECS {
            for magic in [0i8, 1] {
                let out = down_convert(
                    &stored(codec, false),
                    magic,
                    11,
                    Levels::default(),
                    1 << 20,
                    1 << 20,
                )
                .unwrap();
                let shallow = parse_set(&out);
                // Offset 10 is left out of the uncompressed batch.
                let mut flat = Vec::new();
                for m in &shallow {
                    assert_eq!(m.magic, magic);
                    if !m.is_compressed() {
                        flat.push((m.offset, m.key.unwrap().to_vec(), m.timestamp));
                        continue;
                    }
                    assert_eq!(m.compression(), Some(codec));
                    assert_eq!(m.offset, 15, "a wrapper carries its last offset");
                    let inner = compression::decompress(
                        codec,
                        m.value.unwrap(),
                        1 << 20,
                        // A standard reader first: magic 0's LZ4 must fail it (below).
                        Lz4Header::Standard,
                    );
                    let inner = match (codec, magic) {
                        // A standard LZ4 reader refuses v0's broken header checksum.
                        (Compression::Lz4, 0) => {
                            assert!(inner.is_err());
                            compression::decompress(
                                codec,
                                m.value.unwrap(),
                                1 << 20,
                                Lz4Header::BrokenMagicV0,
                            )
                            .unwrap()
                        }
                        _ => inner.unwrap(),
                    };
                    let inner_messages = parse_set(&inner);
                    let last_inner = inner_messages.last().unwrap().offset;
                    for im in &inner_messages {
                        let absolute = if magic == 0 {
                            im.offset
                        } else {
                            m.offset - (last_inner - im.offset)
                        };
                        flat.push((absolute, im.key.unwrap().to_vec(), im.timestamp));
                    }
                }
                let ts = |o: i64| if magic == 0 { -1 } else { 500 + o };
                let want: Vec<(i64, Vec<u8>, i64)> = (11..16)
                    .map(|o| (o, format!("k{o}").into_bytes(), ts(o)))
                    .collect();
                assert_eq!(flat, want, "{codec:?} magic {magic}");
            }
        }
    }

    #[test]
    fn down_conversion_stops_before_the_message_that_would_pass_its_output_bound() {
        for codec in CODECS {
            let all = down_convert(
                &stored(codec, false),
                1,
                10,
                Levels::FASTEST,
                1 << 20,
                1 << 20,
            )
            .unwrap();
            let (_, first) = message_set::parse_message(&all, 0).unwrap();
            // Room for the first message only: a whole message, nothing cut.
            let one = down_convert(
                &stored(codec, false),
                1,
                10,
                Levels::FASTEST,
                1 << 20,
                first + 1,
            )
            .unwrap();
            assert_eq!(one, all[..first], "{codec:?}");
            // Not even the first: an error, never an empty answer that looks like no data.
            assert_eq!(
                down_convert(
                    &stored(codec, false),
                    1,
                    10,
                    Levels::FASTEST,
                    1 << 20,
                    first - 1
                ),
                Err(DownConvertError::TooLarge(first - 1))
            );
        }
        // A compressed batch that decompresses past its bound after a first batch that
        // fits ends the set; as the first batch it is an error.
        let mut big = BatchBuilder::new().base_offset(20);
        big.push(Some(b"k"), Some(&[7u8; 4096]), &[], 1);
        let big = big
            .build_compressed(Compression::Gzip, Levels::default())
            .unwrap();
        let mut two = stored(Compression::None, false);
        two.extend_from_slice(&big);
        let out = down_convert(&two, 1, 0, Levels::FASTEST, 1024, 1 << 20).unwrap();
        assert_eq!(parse_set(&out).len(), 6, "the uncompressed batches only");
        assert_eq!(
            down_convert(&big, 1, 0, Levels::FASTEST, 1024, 1 << 20),
            Err(DownConvertError::TooLarge(1024))
        );
    }

    #[test]
    fn conversions_for_the_log_are_refused_past_their_output_bound() {
        let records: Vec<Input> = vec![(Some(b"a"), &[0u8; 2000], 1), (Some(b"b"), b"x", 2)];
        let sent = v2_batch(&records, Compression::Gzip);
        let mut p = policy(Some(Compression::None), false);
        p.max_output_bytes = 2000;
        let err = prepare_append(&sent, &p, "t-0").unwrap_err();
        assert!(
            matches!(&err, AppendError::TooLarge(m) if m.contains("t-0") && m.contains("2000")),
            "{err:?}"
        );
        p.max_output_bytes = 4000;
        assert!(prepare_append(&sent, &p, "t-0").unwrap().is_some());
        // A message set becomes one batch: the same bound.
        let set = message_set(1, Compression::Gzip, &[Some(b"k"), Some(b"l")]);
        let mut p = policy(None, false);
        p.max_output_bytes = 40;
        assert!(matches!(
            prepare_append(&set, &p, "t-0"),
            Err(AppendError::TooLarge(_))
        ));
    }

    #[test]
    fn per_record_errors_list_a_bounded_number_and_count_them_all() {
        let keyless: Vec<Input> = (0..MAX_RECORD_ERRORS + 500)
            .map(|_| (None, &b"v"[..], 1))
            .collect();
        let sent = v2_batch(&keyless, Compression::Lz4);
        match prepare_append(&sent, &policy(None, true), "t-0") {
            Err(AppendError::RecordErrors { errors, message }) => {
                assert_eq!(errors.len(), MAX_RECORD_ERRORS);
                assert_eq!(errors[0].0, 0);
                assert!(message.contains("1500 record errors in total"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn log_append_time_is_carried_by_magic_1() {
        let out = down_convert(
            &stored(Compression::None, true),
            1,
            0,
            Levels::default(),
            1 << 20,
            1 << 20,
        )
        .unwrap();
        for m in parse_set(&out) {
            assert_eq!(m.timestamp_type(), MessageTimestampType::LogAppendTime);
            assert_eq!(m.timestamp, 9_999);
        }
    }

    #[test]
    fn zstd_cannot_go_down() {
        let zstd = v2_batch(&[(Some(b"k"), b"v", 1)], Compression::Zstd);
        assert_eq!(
            down_convert(&zstd, 1, 0, Levels::default(), 1 << 20, 1 << 20),
            Err(DownConvertError::Zstd(1))
        );
        let mut both = v2_batch(&[(Some(b"k"), b"v", 1)], Compression::None);
        let first =
            parse_set(&down_convert(&both, 1, 0, Levels::default(), 1 << 20, 1 << 20).unwrap())
                .len();
        both.extend(zstd);
        let out = down_convert(&both, 1, 0, Levels::default(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(
            parse_set(&out).len(),
            first,
            "the conversion stops before the zstd batch"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_input_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            magic in 0u8..3,
            target in 0i16..5,
        ) {
            let mut bytes = bytes;
            if bytes.len() > 16 {
                bytes[16] = magic;
            }
            let p = policy(Compression::from_code(target), true);
            let _ = prepare_append(&bytes, &p, "t-0");
            let _ = down_convert(&bytes, (magic % 2) as i8, 0, Levels::default(), 1 << 16, 1 << 16);
        }

        #[test]
        fn damaged_message_sets_never_panic(
            flip_at in proptest::prelude::any::<proptest::sample::Index>(),
            codec in 0usize..4,
            magic in 0i8..2,
        ) {
            let mut set = message_set(magic, CODECS[codec], &[Some(b"k"), None]);
            let at = flip_at.index(set.len());
            set[at] ^= 0x5a;
            let _ = prepare_append(&set, &policy(Some(Compression::Gzip), true), "t-0");
        }
    }
}
