//! Frames of the replication stream, sans-IO: a follower's fetch request for many partitions,
//! and the leader's response, whose header is followed by the RecordBatch bytes of each
//! partition exactly as the leader stored them (no re-encoding on either side).
//!
//! On the wire, all integers big-endian:
//!
//! ```text
//! frame_length  u32   bytes after this field: 8 + header_length + payload
//! header_length u32
//! header_crc32c u32   CRC-32C of the header bytes
//! header              a flatbuffers `Frame` (protocol/schema/replication.fbs)
//! payload             a response's records: each partition's `records_bytes`, in order
//! ```
//!
//! A receiver checks `frame_length` against its cap (the follower's derives from what it
//! asked for, [`max_frame_bytes_for`]) and `header_length` against [`MAX_HEADER_BYTES`]
//! before it reads or allocates anything for the frame. The header's CRC-32C must match and
//! the flatbuffers verifier, with bounded depth and table count, must accept the header
//! before any field is read; every value is then range-checked and the records lengths
//! must add up to the payload exactly. The records themselves are not looked at here: the
//! follower checks every batch's CRC-32C before it appends (the header CRC covers the
//! header only, so the leader does no per-byte work when it sends).
//!
//! The connection types check the order: a leader takes requests with increasing
//! correlation ids from one follower ([`LeaderConnection`]); a follower takes responses in
//! the order of its requests, each answering exactly the partitions asked for
//! ([`FollowerConnection`]). Any [`FrameError`] means the peer cannot be trusted: the caller
//! closes that replication connection and counts it.

#[rustfmt::skip]
#[allow(clippy::all, unsafe_op_in_unsafe_fn, mismatched_lifetime_syntaxes, non_camel_case_types)]
mod generated;

mod codec;
mod connection;
mod types;

pub use codec::{decode_frame, encode_request, encode_response, encode_response_head};
pub use connection::{FollowerConnection, LeaderConnection};
pub use generated::wharf::replication as fb;
pub use types::*;

use bytes::{Buf, Bytes, BytesMut};

/// Bytes in front of the header: frame length, header length, header CRC-32C.
pub const PREFIX_BYTES: usize = 12;

/// Bytes of the frame-length field alone.
pub const LENGTH_BYTES: usize = 4;

/// The largest frame (frame-length field excluded) anyone sends or accepts. A follower
/// accepts less: what it asked for ([`max_frame_bytes_for`]).
pub const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;

/// The largest flatbuffers header. A partition costs under 100 bytes of header, so this
/// holds [`MAX_FETCH_PARTITIONS`] with room to spare.
pub const MAX_HEADER_BYTES: usize = 8 * 1024 * 1024;

/// Most partitions in one fetch request or response.
pub const MAX_FETCH_PARTITIONS: usize = 50_000;

/// Most requests a follower keeps in flight on one connection.
pub const MAX_IN_FLIGHT_REQUESTS: usize = 64;

/// Deepest table nesting accepted (the schema nests 3 deep).
pub const MAX_DEPTH: usize = 8;

/// Most tables accepted in one header: a frame, a body and one table per partition.
pub const MAX_TABLES: usize = MAX_FETCH_PARTITIONS + 16;

/// Why a frame was refused. The connection it came on is closed; nothing of it reaches a
/// partition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("replication frame of {size} bytes exceeds the limit of {max_bytes} bytes")]
    TooLarge { size: usize, max_bytes: usize },
    #[error("replication frame of {0} bytes is shorter than its fixed prefix")]
    TooShort(usize),
    #[error("replication frame header fails its CRC-32C: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("malformed replication frame: {0}")]
    Malformed(String),
    #[error("replication frame carries an unknown body type {0}")]
    UnknownBody(u8),
    #[error("replication frame is missing {0}")]
    Missing(&'static str),
    #[error("replication frame has a bad value: {0}")]
    BadValue(String),
    #[error("replication frame out of order: {0}")]
    OutOfOrder(String),
}

/// The frame cap of a follower that asked for `max_bytes` of records in a request with
/// `partitions` partitions, whose partitions accept batches of up to `max_batch_bytes`: a
/// leader returns the first batch whole even past the limit, so one batch more may come,
/// plus the header.
pub fn max_frame_bytes_for(max_bytes: i32, max_batch_bytes: usize) -> usize {
    (8 + MAX_HEADER_BYTES)
        .saturating_add(usize::try_from(max_bytes).unwrap_or(0))
        .saturating_add(max_batch_bytes)
        .min(MAX_FRAME_BYTES)
}

/// Reads the frame-length field and checks it against `max_frame_bytes` (and that the frame
/// can hold its prefix), before anything of the frame is read.
pub fn frame_length(
    field: [u8; LENGTH_BYTES],
    max_frame_bytes: usize,
) -> Result<usize, FrameError> {
    let size = u32::from_be_bytes(field) as usize;
    if size < PREFIX_BYTES - LENGTH_BYTES {
        return Err(FrameError::TooShort(size));
    }
    let max_bytes = max_frame_bytes.min(MAX_FRAME_BYTES);
    if size > max_bytes {
        return Err(FrameError::TooLarge { size, max_bytes });
    }
    Ok(size)
}

/// Takes one whole frame off the front of `buf` (a connection's read buffer): `Ok(None)` if
/// more bytes are needed, else the frame's bytes after the frame-length field. A bad length
/// or header length is an error at once, whatever follows it.
pub fn split_frame(
    buf: &mut BytesMut,
    max_frame_bytes: usize,
) -> Result<Option<Bytes>, FrameError> {
    let Some(field) = buf.get(..LENGTH_BYTES) else {
        return Ok(None);
    };
    let field: [u8; LENGTH_BYTES] = field.try_into().expect("a slice of the field's length");
    let size = frame_length(field, max_frame_bytes)?;
    if let Some(header_field) = buf.get(LENGTH_BYTES..2 * LENGTH_BYTES) {
        let header_field: [u8; 4] = header_field.try_into().expect("a slice of four bytes");
        check_header_length(u32::from_be_bytes(header_field) as usize, size)?;
    }
    if buf.len() < LENGTH_BYTES + size {
        return Ok(None);
    }
    let mut frame = buf.split_to(LENGTH_BYTES + size);
    frame.advance(LENGTH_BYTES);
    Ok(Some(frame.freeze()))
}

fn check_header_length(header_length: usize, frame_length: usize) -> Result<(), FrameError> {
    if header_length > MAX_HEADER_BYTES {
        return Err(FrameError::TooLarge {
            size: header_length,
            max_bytes: MAX_HEADER_BYTES,
        });
    }
    if header_length > frame_length - (PREFIX_BYTES - LENGTH_BYTES) {
        return Err(FrameError::Malformed(format!(
            "header of {header_length} bytes does not fit a frame of {frame_length} bytes"
        )));
    }
    Ok(())
}

/// The verifier limits for a replication header.
pub fn verifier_options() -> flatbuffers::VerifierOptions {
    flatbuffers::VerifierOptions {
        max_depth: MAX_DEPTH,
        max_tables: MAX_TABLES,
        // Shared sub-objects could make a small buffer look huge when walked as a tree;
        // honest writers never share, so the tree is at most the header.
        max_apparent_size: MAX_HEADER_BYTES * 2,
        ignore_missing_null_terminator: false,
    }
}

/// Verifies `header` (bytes of a flatbuffers `Frame`) and returns its reader. Nothing is
/// read from an unverified buffer.
pub fn verify_header(header: &[u8]) -> Result<fb::Frame<'_>, FrameError> {
    if header.len() > MAX_HEADER_BYTES {
        return Err(FrameError::TooLarge {
            size: header.len(),
            max_bytes: MAX_HEADER_BYTES,
        });
    }
    flatbuffers::root_with_opts::<fb::Frame>(&verifier_options(), header)
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

/// A 128-bit id as the schema stores it.
pub fn uuid_to_fb(id: u128) -> fb::Uuid {
    fb::Uuid::new((id >> 64) as u64, id as u64)
}

pub fn uuid_from_fb(id: &fb::Uuid) -> u128 {
    ((id.high() as u128) << 64) | id.low() as u128
}

#[cfg(test)]
mod tests;
