//! Kafka's record compression codecs, with the framings Kafka uses: gzip (RFC 1952),
//! snappy in snappy-java's block framing (raw snappy accepted on input, as Kafka does),
//! LZ4 frames (RFC-like LZ4 frame format with independent 64 KiB blocks) and zstd frames.
//!
//! Decompression is bounded: input comes from clients, and a few bytes of it may claim
//! gigabytes. Every decoder stops one byte past `max_bytes` and the caller gets
//! [`CodecError::TooLarge`]; zstd's window is capped too, since its decoder allocates the
//! window a frame asks for.
//!
//! KAFKA-3160: Kafka clients before 0.10 computed the LZ4 frame's header checksum over the
//! magic number too. Kafka accepts any header checksum in message format v0 and writes the
//! broken one back to v0 readers; [`Lz4Header::BrokenMagicV0`] does the same.

use std::io::{Read, Write};

use crate::batch::Compression;

/// Why a payload could not be compressed or decompressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("{codec:?} data is corrupt: {reason}")]
    Corrupt { codec: Compression, reason: String },
    #[error("{codec:?} data decompresses to more than {max_bytes} bytes")]
    TooLarge {
        codec: Compression,
        max_bytes: usize,
    },
    #[error("cannot compress with {codec:?}: {reason}")]
    Compress { codec: Compression, reason: String },
}

/// Which LZ4 frame header checksum (HC) to read and write.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Lz4Header {
    /// The LZ4 frame format's: xxHash32 of the frame descriptor.
    Standard,
    /// Message format v0's (KAFKA-3160): on input any checksum is accepted; on output the
    /// checksum also covers the magic number, as pre-0.10 clients expect.
    BrokenMagicV0,
}

/// Compression levels (Kafka's `compression.<codec>.level`, KIP-390).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Levels {
    /// 1..=9 (Kafka's default: 6, zlib's).
    pub gzip: u32,
    /// 1..=17; 1 and 2 use LZ4's fast mode, 3 and up its high-compression mode (Kafka's
    /// default: 9).
    pub lz4: u32,
    /// -131072..=22 (Kafka's default: 3).
    pub zstd: i32,
}

impl Levels {
    /// The fastest level of each codec: for data compressed to be read once (message sets
    /// converted down for a Fetch v0–3 reader), where time matters more than size.
    pub const FASTEST: Levels = Levels {
        gzip: 1,
        lz4: 1,
        zstd: 1,
    };
}

impl Default for Levels {
    fn default() -> Levels {
        Levels {
            gzip: 6,
            lz4: 9,
            zstd: 3,
        }
    }
}

/// snappy-java's stream header: magic, then version 1 and minimum compatible version 1.
const SNAPPY_JAVA_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
const SNAPPY_JAVA_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
/// snappy-java's uncompressed block size (Kafka writes with its default).
const SNAPPY_BLOCK_BYTES: usize = 32 * 1024;
/// The LZ4 frame magic number, little-endian on the wire.
const LZ4_MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];
/// The largest zstd window accepted, whatever `max_bytes` is (Kafka's own producers use
/// windows of at most a few MiB).
const ZSTD_MAX_WINDOW_LOG: u32 = 27;
const ZSTD_MIN_WINDOW_LOG: u32 = 23;

fn corrupt(codec: Compression, reason: impl std::fmt::Display) -> CodecError {
    CodecError::Corrupt {
        codec,
        reason: reason.to_string(),
    }
}

/// Decompresses `input` written with `codec`; fails with [`CodecError::TooLarge`] rather
/// than produce more than `max_bytes`.
pub fn decompress(
    codec: Compression,
    input: &[u8],
    max_bytes: usize,
    lz4_header: Lz4Header,
) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    decompress_into(codec, input, max_bytes, lz4_header, &mut out)?;
    Ok(out)
}

/// [`decompress`] appending to `out` (which may hold other data: `max_bytes` bounds what is
/// added).
pub fn decompress_into(
    codec: Compression,
    input: &[u8],
    max_bytes: usize,
    lz4_header: Lz4Header,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let start = out.len();
    let limit = max_bytes.saturating_add(1) as u64;
    let too_large = || CodecError::TooLarge { codec, max_bytes };
    match codec {
        Compression::None => {
            if input.len() > max_bytes {
                return Err(too_large());
            }
            out.extend_from_slice(input);
        }
        Compression::Gzip => {
            // Kafka's GZIPInputStream reads concatenated members too.
            flate2::read::MultiGzDecoder::new(input)
                .take(limit)
                .read_to_end(out)
                .map_err(|e| corrupt(codec, e))?;
        }
        Compression::Snappy => snappy_decompress(input, max_bytes, out)?,
        Compression::Lz4 => lz4_decompress(input, limit, lz4_header, out)?,
        Compression::Zstd => {
            // A window larger than the output allowed is never needed: the smallest power
            // of two that holds `max_bytes` (libzstd allocates the window a frame asks for).
            let window_log = usize::BITS - max_bytes.saturating_sub(1).leading_zeros();
            let window_log = window_log.clamp(ZSTD_MIN_WINDOW_LOG, ZSTD_MAX_WINDOW_LOG);
            let mut decoder =
                zstd::stream::read::Decoder::with_buffer(input).map_err(|e| corrupt(codec, e))?;
            decoder
                .window_log_max(window_log)
                .map_err(|e| corrupt(codec, e))?;
            decoder
                .take(limit)
                .read_to_end(out)
                .map_err(|e| corrupt(codec, e))?;
        }
    }
    if out.len() - start > max_bytes {
        out.truncate(start);
        return Err(too_large());
    }
    Ok(())
}

fn snappy_decompress(input: &[u8], max_bytes: usize, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let codec = Compression::Snappy;
    let start = out.len();
    let mut decoder = snap::raw::Decoder::new();
    let mut block = |compressed: &[u8], out: &mut Vec<u8>| -> Result<(), CodecError> {
        let len = snap::raw::decompress_len(compressed).map_err(|e| corrupt(codec, e))?;
        if out.len() - start + len > max_bytes {
            return Err(CodecError::TooLarge { codec, max_bytes });
        }
        let at = out.len();
        out.resize(at + len, 0);
        let written = decoder
            .decompress(compressed, &mut out[at..])
            .map_err(|e| corrupt(codec, e))?;
        out.truncate(at + written);
        Ok(())
    };
    if !input.starts_with(SNAPPY_JAVA_MAGIC) {
        // Raw snappy, which Kafka also reads.
        return block(input, out);
    }
    if input.len() < SNAPPY_JAVA_HEADER.len() {
        return Err(corrupt(codec, "snappy-java header cut short"));
    }
    let mut rest = &input[SNAPPY_JAVA_HEADER.len()..];
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(corrupt(codec, "block length cut short"));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len > tail.len() {
            return Err(corrupt(codec, "block runs past the data"));
        }
        let (compressed, tail) = tail.split_at(len);
        block(compressed, out)?;
        rest = tail;
    }
    Ok(())
}

/// Length of the LZ4 frame header up to and including the header checksum, or `None` if
/// `input` does not start with one.
fn lz4_header_len(input: &[u8]) -> Option<usize> {
    if input.len() < 7 || input[..4] != LZ4_MAGIC {
        return None;
    }
    let content_size = input[4] & 0x08 != 0;
    let len = if content_size { 15 } else { 7 };
    (input.len() >= len).then_some(len)
}

/// The frame header checksum of `header` (magic, descriptor, checksum byte).
fn lz4_header_checksum(header: &[u8], kind: Lz4Header) -> u8 {
    let covered = match kind {
        Lz4Header::Standard => &header[4..header.len() - 1],
        Lz4Header::BrokenMagicV0 => &header[..header.len() - 1],
    };
    (twox_hash::XxHash32::oneshot(0, covered) >> 8) as u8
}

fn lz4_decompress(
    input: &[u8],
    limit: u64,
    kind: Lz4Header,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let codec = Compression::Lz4;
    let header_len = lz4_header_len(input).ok_or_else(|| corrupt(codec, "no LZ4 frame header"))?;
    // Message format v0 may carry any checksum (KAFKA-3160): give liblz4 the right one.
    let mut header = [0u8; 15];
    header[..header_len].copy_from_slice(&input[..header_len]);
    if kind == Lz4Header::BrokenMagicV0 {
        header[header_len - 1] = lz4_header_checksum(&header[..header_len], Lz4Header::Standard);
    }
    let reader = (&header[..header_len]).chain(&input[header_len..]);
    let mut decoder = lz4::Decoder::new(reader).map_err(|e| corrupt(codec, e))?;
    (&mut decoder)
        .take(limit)
        .read_to_end(out)
        .map_err(|e| corrupt(codec, e))?;
    // A frame cut short reads as a short end; only a finished frame is whole.
    if (out.len() as u64) < limit {
        let (_, finished) = decoder.finish();
        finished.map_err(|_| corrupt(codec, "the LZ4 frame ends early"))?;
    }
    Ok(())
}

/// Compresses `input` with `codec` at `levels`, in the framing Kafka writes.
pub fn compress(
    codec: Compression,
    input: &[u8],
    levels: Levels,
    lz4_header: Lz4Header,
) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    compress_into(codec, input, levels, lz4_header, &mut out)?;
    Ok(out)
}

/// [`compress`] appending to `out`.
pub fn compress_into(
    codec: Compression,
    input: &[u8],
    levels: Levels,
    lz4_header: Lz4Header,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let failed = |e: std::io::Error| CodecError::Compress {
        codec,
        reason: e.to_string(),
    };
    match codec {
        Compression::None => out.extend_from_slice(input),
        Compression::Gzip => {
            let level = flate2::Compression::new(levels.gzip.clamp(1, 9));
            let mut encoder = flate2::write::GzEncoder::new(out, level);
            encoder.write_all(input).map_err(failed)?;
            encoder.finish().map_err(failed)?;
        }
        Compression::Snappy => {
            out.extend_from_slice(SNAPPY_JAVA_HEADER);
            let mut encoder = snap::raw::Encoder::new();
            for chunk in input.chunks(SNAPPY_BLOCK_BYTES) {
                let len_at = out.len();
                out.extend_from_slice(&[0; 4]);
                let at = out.len();
                out.resize(at + snap::raw::max_compress_len(chunk.len()), 0);
                let written =
                    encoder
                        .compress(chunk, &mut out[at..])
                        .map_err(|e| CodecError::Compress {
                            codec,
                            reason: e.to_string(),
                        })?;
                out.truncate(at + written);
                out[len_at..at].copy_from_slice(&(written as u32).to_be_bytes());
            }
        }
        Compression::Lz4 => {
            let start = out.len();
            // Kafka's reader wants independent blocks; no content checksum, as Kafka writes.
            let mut encoder = lz4::EncoderBuilder::new()
                .block_size(lz4::BlockSize::Max64KB)
                .block_mode(lz4::BlockMode::Independent)
                .block_checksum(lz4::liblz4::BlockChecksum::NoBlockChecksum)
                .checksum(lz4::ContentChecksum::NoChecksum)
                .level(levels.lz4.clamp(1, 17))
                .build(&mut *out)
                .map_err(failed)?;
            encoder.write_all(input).map_err(failed)?;
            let (_, finished) = encoder.finish();
            finished.map_err(failed)?;
            if lz4_header == Lz4Header::BrokenMagicV0 {
                if let Some(len) = lz4_header_len(&out[start..]) {
                    let header = &out[start..start + len];
                    let broken = lz4_header_checksum(header, Lz4Header::BrokenMagicV0);
                    out[start + len - 1] = broken;
                }
            }
        }
        Compression::Zstd => {
            let compressed = zstd::bulk::compress(input, levels.zstd).map_err(failed)?;
            out.extend_from_slice(&compressed);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i / 1000) as u8)
            .collect()
    }

    #[test]
    fn every_codec_round_trips() {
        for codec in CODECS {
            for len in [0, 1, 100, 70_000, 300_000] {
                let data = sample(len);
                let packed = compress(codec, &data, Levels::default(), Lz4Header::Standard)
                    .expect("compresses");
                let unpacked =
                    decompress(codec, &packed, len, Lz4Header::Standard).expect("decompresses");
                assert_eq!(unpacked, data, "{codec:?} {len}");
            }
        }
    }

    #[test]
    fn decompression_stops_at_the_limit() {
        let data = vec![0u8; 1 << 20];
        for codec in CODECS {
            let packed =
                compress(codec, &data, Levels::default(), Lz4Header::Standard).expect("compresses");
            let err = decompress(codec, &packed, (1 << 20) - 1, Lz4Header::Standard).unwrap_err();
            assert!(
                matches!(err, CodecError::TooLarge { .. }),
                "{codec:?}: {err}"
            );
        }
    }

    #[test]
    fn magic_v0_lz4_header_checksum_is_kafkas_broken_one() {
        let data = sample(1000);
        let standard = compress(
            Compression::Lz4,
            &data,
            Levels::default(),
            Lz4Header::Standard,
        )
        .unwrap();
        let broken = compress(
            Compression::Lz4,
            &data,
            Levels::default(),
            Lz4Header::BrokenMagicV0,
        )
        .unwrap();
        assert_eq!(standard.len(), broken.len());
        assert_ne!(standard[6], broken[6], "only the header checksum differs");
        assert_eq!(standard[7..], broken[7..]);
        assert_eq!(
            broken[6],
            (twox_hash::XxHash32::oneshot(0, &broken[..6]) >> 8) as u8
        );
        // A v0 reader takes either; a standard reader refuses the broken one.
        for frame in [&standard, &broken] {
            let out = decompress(Compression::Lz4, frame, 1000, Lz4Header::BrokenMagicV0)
                .expect("v0 accepts any header checksum");
            assert_eq!(out, data);
        }
        assert!(decompress(Compression::Lz4, &broken, 1000, Lz4Header::Standard).is_err());
    }

    #[test]
    fn raw_snappy_is_read_too() {
        let data = sample(5000);
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        let out = decompress(Compression::Snappy, &raw, 5000, Lz4Header::Standard).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn truncated_frames_are_corrupt() {
        let data = sample(100_000);
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let packed = compress(codec, &data, Levels::default(), Lz4Header::Standard).unwrap();
            let cut = &packed[..packed.len() / 2];
            let result = decompress(codec, cut, 1 << 20, Lz4Header::Standard);
            assert!(
                result.is_err() || result.as_ref().is_ok_and(|d| d.len() < data.len()),
                "{codec:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512), codec in 0usize..5) {
            let codec = CODECS[codec];
            let _ = decompress(codec, &data, 1 << 16, Lz4Header::Standard);
            let _ = decompress(codec, &data, 1 << 16, Lz4Header::BrokenMagicV0);
        }

        #[test]
        fn garbage_after_a_valid_header_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512), codec in 1usize..5) {
            let codec = CODECS[codec];
            let mut packed = compress(codec, b"hello hello hello", Levels::default(), Lz4Header::Standard).unwrap();
            let keep = packed.len().min(16);
            packed.truncate(keep);
            packed.extend_from_slice(&data);
            let _ = decompress(codec, &packed, 1 << 16, Lz4Header::BrokenMagicV0);
        }
    }
}
