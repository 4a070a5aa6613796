//! `sealed-segments`: the proof that segments were closed cleanly. Written (replaced
//! atomically, directory synced) each time a segment is sealed, after the segment's data
//! is synced, its file trimmed and its indexes and producer snapshot written; it lists every
//! sealed segment with its size, end offset and largest timestamp.
//!
//! On open, a segment whose base offset and size match an entry is trusted without reading
//! it (and its end offset is known, so a missing segment shows as a gap); any other
//! segment is scanned batch by batch. Kafka keeps the same kind of proof as a recovery
//! point per data directory.
//!
//! Format, text like Kafka's checkpoint files:
//! ```text
//! 1
//! <count>
//! <base offset> <size bytes> <end offset> <max timestamp> <offset of max timestamp>
//! ...
//! crc32c <hex of the CRC-32C of every line above, newlines included>
//! ```

/// File name inside a partition directory.
pub const SEALED_SEGMENTS_FILE: &str = "sealed-segments";
const VERSION: &str = "1";
/// More entries than this is damage, not history.
const MAX_ENTRIES: usize = 1 << 20;

/// What the log knew about a sealed segment when it sealed it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct SealedSegment {
    pub base_offset: i64,
    pub size_bytes: u64,
    /// The offset after its last record.
    pub next_offset: i64,
    pub max_timestamp: (i64, i64),
}

pub(crate) fn encode(segments: &[SealedSegment]) -> Vec<u8> {
    let mut text = format!("{VERSION}\n{}\n", segments.len());
    for s in segments {
        text.push_str(&format!(
            "{} {} {} {} {}\n",
            s.base_offset, s.size_bytes, s.next_offset, s.max_timestamp.0, s.max_timestamp.1
        ));
    }
    let crc = crc32c::crc32c(text.as_bytes());
    text.push_str(&format!("crc32c {crc:08x}\n"));
    text.into_bytes()
}

/// The entries, in base-offset order; `None` for anything damaged (then every segment is
/// scanned, as after a crash).
pub(crate) fn decode(bytes: &[u8]) -> Option<Vec<SealedSegment>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let crc_at = text.rfind("crc32c ")?;
    let (body, crc_line) = text.split_at(crc_at);
    let crc = u32::from_str_radix(crc_line.strip_prefix("crc32c ")?.trim(), 16).ok()?;
    if crc32c::crc32c(body.as_bytes()) != crc {
        return None;
    }
    let mut lines = body.lines();
    if lines.next()? != VERSION {
        return None;
    }
    let count: usize = lines.next()?.parse().ok()?;
    if count > MAX_ENTRIES {
        return None;
    }
    let mut out: Vec<SealedSegment> = Vec::new();
    for _ in 0..count {
        let mut f = lines.next()?.split(' ');
        let s = SealedSegment {
            base_offset: f.next()?.parse().ok()?,
            size_bytes: f.next()?.parse().ok()?,
            next_offset: f.next()?.parse().ok()?,
            max_timestamp: (f.next()?.parse().ok()?, f.next()?.parse().ok()?),
        };
        let in_order = out.last().is_none_or(|p| p.next_offset <= s.base_offset);
        if s.base_offset < 0 || s.next_offset < s.base_offset || !in_order {
            return None;
        }
        out.push(s);
    }
    lines.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let segs = vec![
            SealedSegment {
                base_offset: 0,
                size_bytes: 4000,
                next_offset: 17,
                max_timestamp: (1_700_000_000_123, 9),
            },
            SealedSegment {
                base_offset: 17,
                size_bytes: 100,
                next_offset: 18,
                max_timestamp: (-1, -1),
            },
        ];
        let bytes = encode(&segs);
        assert_eq!(decode(&bytes), Some(segs.clone()));
        assert_eq!(decode(&encode(&[])), Some(vec![]));
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x04;
            assert_ne!(decode(&damaged), Some(segs.clone()), "byte {i}");
        }
        assert_eq!(decode(&bytes[..bytes.len() - 3]), None);
    }
}
