//! Seeded mutations of request bytes: bit flips, interesting values over lengths and counts,
//! inserted, deleted, duplicated and spliced ranges, truncation. Every choice comes from a
//! SplitMix64 stream, so a seed and a case number give the same bytes on every machine.

/// SplitMix64: small, fast, and enough for choosing mutations.
pub struct Rng(u64);

impl Rng {
    /// The stream of case `case` of run `seed`, independent of every other case.
    pub fn for_case(seed: u64, case: u64) -> Rng {
        let mut rng = Rng(seed ^ case.wrapping_mul(0xA24B_AED4_963E_E407));
        rng.next();
        rng
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Lengths a string or byte field is resized to: Kafka's name limit, the 16-bit limit, past
/// it.
const INTERESTING_LENGTHS: [usize; 9] = [0, 1, 249, 250, 255, 4096, 32_767, 32_768, 40_000];

/// Bodies longer than this are not searched for string fields.
const MAX_SCANNED_BYTES: usize = 4096;
/// Strings longer than this are not taken for fields (nor searched through).
const MAX_FIELD_BYTES: usize = 256;

/// A string field found in a request: where its length starts, the length's encoding,
/// and where its content starts and ends.
struct StringField {
    at: usize,
    compact: bool,
    content: std::ops::Range<usize>,
}

/// Reads an unsigned varint at `at`: (value, bytes it takes).
fn varint_at(bytes: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in bytes.get(at..)?.iter().take(5).enumerate() {
        value |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Every place where a length (16-bit, or a compact varint of length + 1) is followed by
/// that many printable bytes: the request's strings, more or less.
fn string_fields(bytes: &[u8]) -> Vec<StringField> {
    let printable = |r: &[u8]| !r.is_empty() && r.iter().all(|b| (0x20..0x7f).contains(b));
    let mut out = Vec::new();
    // Seeds are small; a body this long was grown by an earlier mutation already.
    if bytes.len() > MAX_SCANNED_BYTES {
        return out;
    }
    for at in 0..bytes.len() {
        if at + 2 <= bytes.len() {
            let len = i16::from_be_bytes([bytes[at], bytes[at + 1]]);
            let content = at + 2..at + 2 + len.max(0) as usize;
            if (1..=MAX_FIELD_BYTES as i16).contains(&len)
                && content.end <= bytes.len()
                && printable(&bytes[content.clone()])
            {
                out.push(StringField {
                    at,
                    compact: false,
                    content,
                });
            }
        }
        if let Some((value, width)) = varint_at(bytes, at) {
            if value > 1 && value <= MAX_FIELD_BYTES as u64 + 1 {
                let content = at + width..at + width + value as usize - 1;
                if content.end <= bytes.len() && printable(&bytes[content.clone()]) {
                    out.push(StringField {
                        at,
                        compact: true,
                        content,
                    });
                }
            }
        }
    }
    out
}

/// Resizes one of the request's string fields to an interesting length, rewriting its
/// length so the request still frames: the handler sees an id of 40,000 bytes, or one
/// of 250 characters where topic names stop at 249.
fn resize_field(rng: &mut Rng, bytes: &mut Vec<u8>) {
    let fields = string_fields(bytes);
    if fields.is_empty() {
        return;
    }
    let field = &fields[rng.below(fields.len())];
    let new_len = *rng.pick(&INTERESTING_LENGTHS);
    let filler = bytes[field.content.start];
    let mut length = Vec::new();
    if field.compact {
        let mut v = new_len as u64 + 1;
        while v >= 0x80 {
            length.push((v as u8) | 0x80);
            v >>= 7;
        }
        length.push(v as u8);
    } else {
        if new_len > i16::MAX as usize {
            return;
        }
        length.extend_from_slice(&(new_len as i16).to_be_bytes());
    }
    let mut content = bytes[field.content.clone()].to_vec();
    content.resize(new_len, filler);
    length.extend_from_slice(&content);
    bytes.splice(field.at..field.content.end, length);
}

/// Values that sit on the edges of lengths, counts and varints.
const INTERESTING_I16: [i16; 7] = [-1, 0, 1, 0x7f, 0x80, i16::MAX, i16::MIN];
const INTERESTING_I32: [i32; 9] = [
    -1,
    0,
    1,
    0x7f,
    0x100,
    0x10000,
    0x0100_0000,
    i32::MAX,
    i32::MIN,
];
const INTERESTING_BYTES: [u8; 6] = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff];
/// The longest a mutated body may grow: past this the frame size check, not the handlers,
/// would be what is tested.
pub const MAX_MUTATED_BYTES: usize = 64 * 1024;

/// Applies one to four mutations to `bytes`; `other` is another seed of the same API, for
/// splicing.
pub fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>, other: &[u8]) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        mutate_once(rng, bytes, other);
    }
    bytes.truncate(MAX_MUTATED_BYTES);
}

fn mutate_once(rng: &mut Rng, bytes: &mut Vec<u8>, other: &[u8]) {
    let len = bytes.len();
    let at = |rng: &mut Rng| if len == 0 { 0 } else { rng.below(len) };
    match rng.below(13) {
        11 | 12 => resize_field(rng, bytes),
        0 if len > 0 => {
            let i = at(rng);
            bytes[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = at(rng);
            bytes[i] = *rng.pick(&INTERESTING_BYTES);
        }
        2 if len >= 2 => {
            let i = rng.below(len - 1);
            bytes[i..i + 2].copy_from_slice(&rng.pick(&INTERESTING_I16).to_be_bytes());
        }
        3 if len >= 4 => {
            let i = rng.below(len - 3);
            bytes[i..i + 4].copy_from_slice(&rng.pick(&INTERESTING_I32).to_be_bytes());
        }
        4 => {
            // An unsigned varint claiming 2^32 - 1 (a compact length or count).
            let i = at(rng);
            let varint = [0xff, 0xff, 0xff, 0xff, 0x0f];
            let end = (i + varint.len()).min(len);
            bytes.splice(i..end, varint);
        }
        5 => {
            let i = at(rng);
            let n = 1 + rng.below(16);
            let fresh: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            bytes.splice(i..i, fresh);
        }
        6 if len > 0 => {
            let i = at(rng);
            let n = 1 + rng.below((len - i).min(32));
            bytes.drain(i..i + n);
        }
        7 if len > 0 => {
            let cut = at(rng);
            bytes.truncate(cut);
        }
        8 if len > 0 => {
            // Duplicate a range (repeats an array element, a string, a record).
            let i = at(rng);
            let n = 1 + rng.below((len - i).min(256));
            let copy = bytes[i..i + n].to_vec();
            let to = rng.below(len + 1);
            bytes.splice(to..to, copy);
        }
        9 if !other.is_empty() => {
            // Splice in part of another request of the same API.
            let from = rng.below(other.len());
            let n = 1 + rng.below((other.len() - from).min(256));
            let to = at(rng);
            let end = (to + n).min(len);
            bytes.splice(to..end, other[from..from + n].iter().copied());
        }
        _ => {
            let n = 1 + rng.below(8);
            bytes.extend((0..n).map(|_| rng.next() as u8));
        }
    }
}

/// Recomputes the checksum of everything in `bytes` that looks like a record batch v2
/// (CRC-32C over what follows its CRC field) or a message of format v0/v1 (CRC-32 over what
/// follows it): a mutation inside records then reaches the decompressors and record
/// parsers instead of stopping at the checksum.
pub fn fix_checksums(bytes: &mut [u8]) {
    let len = bytes.len();
    let be_i32 = |b: &[u8], at: usize| i32::from_be_bytes(b[at..at + 4].try_into().expect("4"));
    // Innermost first is not needed: a wrapper's inner messages are compressed.
    for at in (0..len.saturating_sub(17)).rev() {
        let size = be_i32(bytes, at + 8);
        let Ok(size) = usize::try_from(size) else {
            continue;
        };
        let Some(end) = (at + 12).checked_add(size).filter(|end| *end <= len) else {
            continue;
        };
        match bytes[at + 16] {
            2 if size >= 49 => {
                let crc = crc32c::crc32c(&bytes[at + 21..end]);
                bytes[at + 17..at + 21].copy_from_slice(&crc.to_be_bytes());
            }
            0 | 1 if size >= 14 => {
                let crc = crc32fast::hash(&bytes[at + 16..end]);
                bytes[at + 12..at + 16].copy_from_slice(&crc.to_be_bytes());
            }
            _ => {}
        }
    }
}
