//! The two places the engine looks inside a batch's records: which record holds the batch's
//! largest timestamp (ListOffsets MAX_TIMESTAMP, KIP-734) and which is the first at or after
//! a timestamp (ListOffsets by time). Only uncompressed CreateTime batches are decoded; for
//! a compressed batch the answer is its base offset, since decompressing on a lookup would
//! allocate without a bound the batch itself can vouch for.

use wharf_protocol::batch::{records, BatchInfo, BatchTimestampType, Compression};

/// The offset of the first record whose timestamp equals the batch's `maxTimestamp`.
pub(crate) fn offset_of_max_timestamp(batch: &[u8], info: &BatchInfo) -> i64 {
    first_record_at_or_after(batch, info, info.max_timestamp, info.base_offset)
        .map_or(info.base_offset, |(offset, _)| offset)
}

/// The first record of the batch with a timestamp >= `timestamp_ms` and an offset
/// >= `min_offset`: `(offset, timestamp)`.
pub(crate) fn first_record_at_or_after(
    batch: &[u8],
    info: &BatchInfo,
    timestamp_ms: i64,
    min_offset: i64,
) -> Option<(i64, i64)> {
    if info.max_timestamp < timestamp_ms || info.last_offset() < min_offset {
        return None;
    }
    // LogAppendTime: every record carries the batch's maxTimestamp.
    if info.timestamp_type() == BatchTimestampType::LogAppendTime
        || info.compression != Compression::None
    {
        return Some((info.base_offset.max(min_offset), info.max_timestamp));
    }
    let iter = records(batch).ok()?;
    for record in iter {
        let record = record.ok()?;
        let offset = info.base_offset + i64::from(record.offset_delta);
        let timestamp = info.base_timestamp.wrapping_add(record.timestamp_delta);
        if offset >= min_offset && timestamp >= timestamp_ms {
            return Some((offset, timestamp));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_protocol::batch::{set_base_offset, validate_batch, BatchBuilder};

    #[test]
    fn finds_exact_records_by_timestamp() {
        let mut builder = BatchBuilder::new();
        for ts in [100, 300, 200, 300, 50] {
            builder.push(None, Some(b"v"), &[], ts);
        }
        let mut bytes = builder.build();
        set_base_offset(&mut bytes, 1000);
        let info = validate_batch(&bytes, 1 << 20).expect("valid");
        assert_eq!(offset_of_max_timestamp(&bytes, &info), 1001);
        assert_eq!(
            first_record_at_or_after(&bytes, &info, 150, 0),
            Some((1001, 300))
        );
        assert_eq!(
            first_record_at_or_after(&bytes, &info, 150, 1002),
            Some((1002, 200))
        );
        assert_eq!(first_record_at_or_after(&bytes, &info, 301, 0), None);
        assert_eq!(
            first_record_at_or_after(&bytes, &info, 0, 0),
            Some((1000, 100))
        );
    }
}
