//! Encoding a response without copying its largest byte strings: a buffer for
//! `kafka-protocol`'s encoders that leaves chosen byte strings (fetched records) out of the
//! copy and keeps them as parts of their own, so the frame goes to the socket as a list of
//! parts in one vectored write.
//!
//! A byte string is recognised by its address and length: the encoder passes the very
//! slice of the `Bytes` the response holds, so the part sent is the same memory, never a
//! look-alike.

use ahash::AHashMap as HashMap;
use std::ops::Range;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;

/// Byte strings shorter than this are copied: a part of its own costs more than the copy.
pub const MIN_SPLICED_BYTES: usize = 2048;

/// A buffer that copies what is written into it, except the byte strings it was given,
/// which it keeps as parts.
pub struct SplicingBuf {
    /// Finished parts, in order.
    parts: Vec<Bytes>,
    /// What is being written after them.
    current: BytesMut,
    /// Bytes in `parts`.
    done: usize,
    /// The byte strings to keep as parts, by (address, length).
    splice: HashMap<(usize, usize), Bytes>,
}

impl SplicingBuf {
    /// A buffer for a frame of about `copied_bytes` besides the byte strings in `splice`
    /// (those shorter than [`MIN_SPLICED_BYTES`] are copied like the rest).
    pub fn new(copied_bytes: usize, splice: &[Bytes]) -> SplicingBuf {
        let splice: HashMap<(usize, usize), Bytes> = worth_splicing(splice)
            .map(|b| ((b.as_ptr() as usize, b.len()), b.clone()))
            .collect();
        SplicingBuf {
            parts: Vec::with_capacity(2 * splice.len() + 1),
            current: BytesMut::with_capacity(copied_bytes),
            done: 0,
            splice,
        }
    }

    /// Bytes that will be spliced rather than copied, of those given.
    pub fn spliced_bytes(splice: &[Bytes]) -> usize {
        worth_splicing(splice).map(Bytes::len).sum()
    }

    /// The frame's parts, in order; none is empty.
    pub fn into_parts(mut self) -> Vec<Bytes> {
        if !self.current.is_empty() {
            self.parts.push(self.current.freeze());
        }
        self.parts
    }

    /// Gathers every part back into one buffer: for a seek into what was spliced, which
    /// message encoders never do (they size fields ahead instead of filling gaps).
    fn unsplice(&mut self) {
        if self.done == 0 {
            return;
        }
        let mut all = BytesMut::with_capacity(self.done + self.current.len());
        for part in self.parts.drain(..) {
            all.extend_from_slice(&part);
        }
        all.extend_from_slice(&self.current);
        self.current = all;
        self.done = 0;
        self.splice.clear();
    }
}

/// The byte strings of `splice` long enough to be parts of their own.
fn worth_splicing(splice: &[Bytes]) -> impl Iterator<Item = &Bytes> {
    splice.iter().filter(|b| b.len() >= MIN_SPLICED_BYTES)
}

// SAFETY: every method forwards to `current`, a `BytesMut`, whose guarantees hold; a
// spliced part is added between writes, never inside one.
unsafe impl BufMut for SplicingBuf {
    fn remaining_mut(&self) -> usize {
        self.current.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialised `cnt` bytes of `chunk_mut`, which is `current`'s.
        unsafe { self.current.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.current.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= MIN_SPLICED_BYTES {
            if let Some(part) = self.splice.get(&(src.as_ptr() as usize, src.len())) {
                if !self.current.is_empty() {
                    let head = self.current.split();
                    self.done += head.len();
                    self.parts.push(head.freeze());
                }
                self.done += part.len();
                self.parts.push(part.clone());
                return;
            }
        }
        self.current.extend_from_slice(src);
    }
}

impl ByteBufMut for SplicingBuf {
    fn offset(&self) -> usize {
        self.done + self.current.len()
    }

    fn seek(&mut self, offset: usize) {
        if offset < self.done {
            self.unsplice();
        }
        self.current.resize(offset - self.done, 0);
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        if r.start < self.done {
            self.unsplice();
        }
        let done = self.done;
        &mut self.current[r.start - done..r.end - done]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_byte_strings_become_parts_and_the_rest_is_copied() {
        let big = Bytes::from(vec![7u8; 5000]);
        let look_alike = vec![7u8; 5000];
        let small = Bytes::from(vec![9u8; 10]);
        let mut buf = SplicingBuf::new(64, &[big.clone(), small.clone()]);
        buf.put_i32(5);
        buf.put_slice(&big);
        buf.put_slice(&look_alike);
        buf.put_slice(&small);
        buf.put_slice(&big[..4999]);
        assert_eq!(buf.offset(), 4 + 5000 * 2 + 10 + 4999);
        let parts = buf.into_parts();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0][..], 5i32.to_be_bytes());
        assert_eq!(
            parts[1].as_ptr(),
            big.as_ptr(),
            "the records themselves, not a copy"
        );
        assert_eq!(parts[2].len(), 5000 + 10 + 4999);
    }

    #[test]
    fn a_seek_into_what_was_spliced_gathers_the_parts() {
        let big = Bytes::from(vec![1u8; 4096]);
        let mut buf = SplicingBuf::new(64, &[big.clone()]);
        buf.put_u8(2);
        buf.put_slice(&big);
        buf.range(0..1)[0] = 3;
        buf.put_slice(&big);
        let parts = buf.into_parts();
        assert_eq!(parts.len(), 1);
        let mut want = vec![3u8];
        want.extend_from_slice(&big);
        want.extend_from_slice(&big);
        assert_eq!(parts[0][..], want[..]);
    }
}
