//! Frames on the controller listener, sans-IO: Raft messages between the voters of the
//! metadata quorum, broker registration and heartbeats, metadata fetches and forwarded admin
//! requests; and the verified reading of metadata record batches.
//!
//! A frame is `length: u32` (big-endian) followed by `length` bytes of a flatbuffers `Frame`
//! (schema `protocol/schema/controller.fbs`). The length is checked against
//! [`MAX_FRAME_BYTES`] before anything is allocated for the frame, and the bytes are run
//! through the flatbuffers verifier, with bounded depth and table count, before any field
//! is read. Decoding into the owned types below never trusts a count: every vector it reads
//! has been verified to lie inside the frame.

#[rustfmt::skip]
#[allow(clippy::all, unsafe_op_in_unsafe_fn, mismatched_lifetime_syntaxes, non_camel_case_types)]
mod generated;

mod codec;
mod types;

pub use codec::{decode_frame, encode_frame};
pub use generated::wharf::controller as fb;
pub use types::*;

use bytes::Bytes;

/// The largest frame (length prefix excluded) a node sends or accepts. It bounds the memory
/// one peer can make this node hold; the controller keeps every Raft entry and every
/// snapshot well below it (see `MAX_ENTRY_BYTES` in the server's controller).
pub const MAX_FRAME_BYTES: usize = 32 * 1024 * 1024;

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Deepest table nesting accepted (the schema nests at most 6 deep).
pub const MAX_DEPTH: usize = 16;

/// Most tables accepted in one buffer. A snapshot of the largest image holds one table per
/// record (two with its union wrapper) plus a few per vector element.
pub const MAX_TABLES: usize = 4_000_000;

/// Why a frame or a record batch was refused. The peer that sent it gets its connection
/// closed; the bytes never reach Raft or the controller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("controller frame of {size} bytes exceeds the limit of {max_bytes} bytes")]
    TooLarge { size: usize, max_bytes: usize },
    #[error("controller frame is empty")]
    Empty,
    #[error("malformed controller frame: {0}")]
    Malformed(String),
    #[error("controller frame carries an unknown body type {0}")]
    UnknownBody(u8),
    #[error("controller frame is missing {0}")]
    Missing(&'static str),
    #[error("controller frame has a bad value: {0}")]
    BadValue(String),
}

/// Reads the length prefix of a frame and checks it against `max_bytes`, before anything
/// of the frame is read or allocated.
pub fn frame_length(
    prefix: [u8; LENGTH_PREFIX_BYTES],
    max_bytes: usize,
) -> Result<usize, FrameError> {
    let size = u32::from_be_bytes(prefix) as usize;
    if size == 0 {
        return Err(FrameError::Empty);
    }
    if size > max_bytes {
        return Err(FrameError::TooLarge { size, max_bytes });
    }
    Ok(size)
}

/// Takes one whole frame off the front of `buf` (a connection's read buffer): `Ok(None)` if
/// more bytes are needed, else the frame's bytes (length prefix removed). A bad length is an
/// error at once, whatever follows it.
pub fn split_frame(
    buf: &mut bytes::BytesMut,
    max_bytes: usize,
) -> Result<Option<Bytes>, FrameError> {
    let Some(prefix) = buf.get(..LENGTH_PREFIX_BYTES) else {
        return Ok(None);
    };
    let prefix: [u8; LENGTH_PREFIX_BYTES] = prefix.try_into().expect("slice of the prefix length");
    let size = frame_length(prefix, max_bytes)?;
    if buf.len() < LENGTH_PREFIX_BYTES + size {
        return Ok(None);
    }
    let mut frame = buf.split_to(LENGTH_PREFIX_BYTES + size);
    let _ = frame.split_to(LENGTH_PREFIX_BYTES);
    Ok(Some(frame.freeze()))
}

/// Who speaks on a connection to the controller listener, which serves two protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// Another node of the cluster: the frames of this module.
    Node,
    /// A Kafka client talking to the controllers (KIP-919), with Kafka requests.
    KafkaClient,
}

/// Bytes of a connection that tell who speaks on it: the length prefix and the first byte
/// after it.
pub const SPEAKER_BYTES: usize = LENGTH_PREFIX_BYTES + 1;

/// Tells who speaks on a connection from its first [`SPEAKER_BYTES`] bytes (`None`: fewer
/// arrived). Decided once per connection, from its first frame, before any of that frame
/// beyond these bytes is read, so that the right size limit applies to it.
///
/// Both protocols put a 4-byte big-endian length first. A Kafka request then starts with
/// its API key, a big-endian `int16`; every Kafka API key is below 256, so the first byte
/// after the length is 0. A node's frame starts with the flatbuffers root offset, a
/// little-endian `u32`; [`encode_frame`] builds the root table (the `Frame`) last, so it
/// sits right behind that offset and the offset is between 4 and 255 (a few bytes of
/// padding and the root's small vtable): that byte is never 0. Hostile or broken input goes
/// the way its first byte points and is refused there: a Kafka client's request must fit
/// the Kafka size limit, have a request header and name an API the listener serves; a
/// node's frame must fit [`MAX_FRAME_BYTES`] and pass the verifier.
pub fn speaker(first: &[u8]) -> Option<Speaker> {
    let byte = *first.get(LENGTH_PREFIX_BYTES)?;
    Some(if byte == 0 {
        Speaker::KafkaClient
    } else {
        Speaker::Node
    })
}

/// The verifier limits for a buffer of `len` bytes.
pub fn verifier_options() -> flatbuffers::VerifierOptions {
    flatbuffers::VerifierOptions {
        max_depth: MAX_DEPTH,
        max_tables: MAX_TABLES,
        // Shared sub-objects could make a small buffer look huge when walked as a tree;
        // honest writers never share, so the tree is at most the frame.
        max_apparent_size: MAX_FRAME_BYTES * 2,
        ignore_missing_null_terminator: false,
    }
}

/// Verifies `bytes` as a `RecordBatch` (a Raft entry's data or a snapshot's) and returns
/// its reader. Nothing is read from an unverified buffer.
pub fn verify_record_batch(bytes: &[u8]) -> Result<fb::RecordBatch<'_>, FrameError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            size: bytes.len(),
            max_bytes: MAX_FRAME_BYTES,
        });
    }
    flatbuffers::root_with_opts::<fb::RecordBatch>(&verifier_options(), bytes)
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Verifies `bytes` as a `Frame` and returns its reader.
pub fn verify_frame(bytes: &[u8]) -> Result<fb::Frame<'_>, FrameError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            size: bytes.len(),
            max_bytes: MAX_FRAME_BYTES,
        });
    }
    flatbuffers::root_with_opts::<fb::Frame>(&verifier_options(), bytes)
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
