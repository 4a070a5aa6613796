//! Whole batches as a read returns them: one or more buffers laid end to end, which
//! together hold whole RecordBatches in offset order. A read from the cache hands out the
//! cached buffers themselves (a batch whose header still carries what its producer sent
//! goes out as a fixed copy of its header followed by the rest of its buffer) instead of
//! copying every batch into one buffer; a read from disk is one part of its read buffer.
//! Writers send the parts with vectored writes.

use bytes::{Bytes, BytesMut};
use wharf_protocol::batch::{BatchHeader, BATCH_HEADER_BYTES};

/// Whole batches in offset order, as buffers laid end to end.
/// Invariant: `len` is the sum of the parts' lengths, and no part is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batches {
    parts: Vec<Bytes>,
    len: usize,
}

impl Batches {
    pub fn new() -> Batches {
        Batches::default()
    }

    /// Appends a buffer (nothing if it is empty).
    pub fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.len += part.len();
            self.parts.push(part);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffers, in order.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// All of it in one buffer: the part itself when there is one, else a copy.
    pub fn into_contiguous(mut self) -> Bytes {
        match self.parts.len() {
            0 => Bytes::new(),
            1 => self.parts.pop().expect("one part"),
            _ => {
                let mut out = BytesMut::with_capacity(self.len);
                for part in &self.parts {
                    out.extend_from_slice(part);
                }
                out.freeze()
            }
        }
    }

    /// Keeps the first `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        let mut kept = 0;
        let mut keep_parts = 0;
        for part in &mut self.parts {
            if kept == len {
                break;
            }
            if kept + part.len() > len {
                part.truncate(len - kept);
            }
            kept += part.len();
            keep_parts += 1;
        }
        self.parts.truncate(keep_parts);
        self.len = len;
    }

    /// Copies the `out.len()` bytes at `at` into `out`; false if they run past the end.
    fn copy_at(&self, mut at: usize, out: &mut [u8]) -> bool {
        let mut filled = 0;
        for part in &self.parts {
            if filled == out.len() {
                break;
            }
            if at >= part.len() {
                at -= part.len();
                continue;
            }
            let n = (part.len() - at).min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&part[at..at + n]);
            filled += n;
            at = 0;
        }
        filled == out.len()
    }

    /// A copy of the batch header at `at`, if the bytes hold one there.
    fn header_at(&self, at: usize) -> Option<[u8; BATCH_HEADER_BYTES]> {
        let mut head = [0u8; BATCH_HEADER_BYTES];
        self.copy_at(at, &mut head).then_some(head)
    }

    /// The whole batches laid out from the start: (position, base offset, size in bytes)
    /// of each, as far as their framing holds (a batch cut short ends the walk).
    pub fn batch_spans(&self) -> impl Iterator<Item = (usize, i64, usize)> + '_ {
        let mut at = 0usize;
        std::iter::from_fn(move || {
            let head = self.header_at(at)?;
            let header = BatchHeader::view(&head)?;
            let size = header.total_bytes()?;
            if at.checked_add(size)? > self.len {
                return None;
            }
            let span = (at, header.base_offset(), size);
            at += size;
            Some(span)
        })
    }

    /// Bytes of the whole batches at the start whose base offset is below `end`.
    pub fn len_before(&self, end: i64) -> usize {
        self.batch_spans()
            .take_while(|&(_, base_offset, _)| base_offset < end)
            .last()
            .map_or(0, |(at, _, size)| at + size)
    }

    /// The offset after the last whole batch, if there is one.
    pub fn end_offset(&self) -> Option<i64> {
        let (at, _, _) = self.batch_spans().last()?;
        let head = self.header_at(at)?;
        Some(BatchHeader::view(&head)?.last_offset() + 1)
    }
}

impl From<Bytes> for Batches {
    fn from(bytes: Bytes) -> Batches {
        let mut batches = Batches::new();
        batches.push(bytes);
        batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_protocol::batch::{set_base_offset, simple_batch, validate_batch};

    fn batch_at(base_offset: i64, records: usize) -> Bytes {
        let mut b = simple_batch(records, 10, 0);
        assert!(set_base_offset(&mut b, base_offset));
        Bytes::from(b)
    }

    /// The same batches cut into parts at every position.
    fn cut_everywhere(whole: &Bytes) -> Vec<Batches> {
        (1..whole.len())
            .map(|cut| {
                let mut b = Batches::new();
                b.push(whole.slice(..cut));
                b.push(whole.slice(cut..));
                b
            })
            .collect()
    }

    #[test]
    fn batches_read_the_same_however_their_bytes_are_cut() {
        let mut whole = BytesMut::new();
        whole.extend_from_slice(&batch_at(100, 2));
        whole.extend_from_slice(&batch_at(102, 3));
        let whole = whole.freeze();
        let first = batch_at(100, 2).len();
        for cut in cut_everywhere(&whole) {
            assert_eq!(cut.len(), whole.len());
            assert_eq!(cut.end_offset(), Some(105));
            assert_eq!(cut.len_before(102), first);
            assert_eq!(cut.len_before(103), whole.len());
            assert_eq!(cut.len_before(100), 0);
            let spans: Vec<_> = cut.batch_spans().map(|(at, base, _)| (at, base)).collect();
            assert_eq!(spans, vec![(0, 100), (first, 102)]);
            assert_eq!(cut.clone().into_contiguous(), whole);
            let mut short = cut.clone();
            short.truncate(first);
            assert_eq!(short.len(), first);
            assert_eq!(short.end_offset(), Some(102));
            assert!(validate_batch(&short.into_contiguous(), 1 << 20).is_ok());
        }
    }

    #[test]
    fn a_batch_cut_short_ends_the_walk() {
        let whole = batch_at(7, 2);
        let mut cut = Batches::from(whole.slice(..whole.len() - 1));
        assert_eq!(cut.end_offset(), None);
        assert_eq!(cut.len_before(i64::MAX), 0);
        cut.push(Bytes::new());
        assert_eq!(cut.parts().len(), 1, "empty parts are not kept");
        assert!(Batches::new().end_offset().is_none());
    }
}
