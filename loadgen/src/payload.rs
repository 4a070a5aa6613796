//! Record values: their sizes (fixed or a uniform range), their bytes (slices of a random
//! pool, so compression sees data that does not shrink to nothing), and the end-to-end stamp
//! (run id and intended send time) that e2e producers put at the start of each value.

use std::str::FromStr;

use anyhow::{bail, Context};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

/// Bytes of the e2e stamp: run id (u64) then intended send time in ns since the run's clock
/// origin (u64), both big-endian.
pub const STAMP_BYTES: usize = 16;
/// Size of the random pool values are cut from.
pub const POOL_BYTES: usize = 64 << 10;

/// Value size: fixed, or uniform in `min..=max`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RecordSize {
    pub min: usize,
    pub max: usize,
}

impl RecordSize {
    pub fn fixed(bytes: usize) -> RecordSize {
        RecordSize {
            min: bytes,
            max: bytes,
        }
    }
    pub fn min(&self) -> usize {
        self.min
    }
    pub fn max(&self) -> usize {
        self.max
    }
    pub fn mean(&self) -> f64 {
        (self.min + self.max) as f64 / 2.0
    }
}

impl FromStr for RecordSize {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<RecordSize> {
        let parse = |v: &str| -> anyhow::Result<usize> {
            v.trim().parse().with_context(|| format!("bad size {v:?}"))
        };
        let size = match s.split_once("..") {
            Some((lo, hi)) => RecordSize {
                min: parse(lo)?,
                max: parse(hi.trim_start_matches('='))?,
            },
            None => RecordSize::fixed(parse(s)?),
        };
        if size.min > size.max {
            bail!("record size range {s:?} is empty");
        }
        Ok(size)
    }
}

impl std::fmt::Display for RecordSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{} B", self.min)
        } else {
            write!(f, "{}..{} B", self.min, self.max)
        }
    }
}

/// Random bytes that values are sliced from, and the generator of sizes and offsets.
pub struct Payloads {
    pool: Vec<u8>,
    size: RecordSize,
    rng: SmallRng,
}

impl Payloads {
    pub fn new(size: RecordSize, seed: u64) -> Payloads {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut pool = vec![0u8; POOL_BYTES + size.max];
        rng.fill_bytes(&mut pool);
        Payloads { pool, size, rng }
    }

    /// The next value: a slice of the pool of the next size.
    pub fn next_value(&mut self) -> &[u8] {
        let len = if self.size.min == self.size.max {
            self.size.min
        } else {
            self.rng.random_range(self.size.min..=self.size.max)
        };
        let start = self.rng.random_range(0..POOL_BYTES);
        &self.pool[start..start + len]
    }
}

/// Writes the e2e stamp into the first [`STAMP_BYTES`] of `value`.
pub fn write_stamp(value: &mut [u8], run_id: u64, intended_ns: u64) {
    value[..8].copy_from_slice(&run_id.to_be_bytes());
    value[8..STAMP_BYTES].copy_from_slice(&intended_ns.to_be_bytes());
}

/// The intended send time stamped in `value` by this run, or None for a record without a
/// stamp of this run (another run's, another producer's, too short).
pub fn read_stamp(value: &[u8], run_id: u64) -> Option<u64> {
    let stamp = value.get(..STAMP_BYTES)?;
    let (id, ns) = stamp.split_at(8);
    if u64::from_be_bytes(id.try_into().ok()?) != run_id {
        return None;
    }
    Some(u64::from_be_bytes(ns.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_fixed_and_ranges() {
        assert_eq!("100".parse::<RecordSize>().unwrap(), RecordSize::fixed(100));
        assert_eq!(
            "10..20".parse::<RecordSize>().unwrap(),
            RecordSize { min: 10, max: 20 }
        );
        assert_eq!(
            "10..=20".parse::<RecordSize>().unwrap(),
            RecordSize { min: 10, max: 20 }
        );
        assert!("20..10".parse::<RecordSize>().is_err());
        assert!("x".parse::<RecordSize>().is_err());
    }

    #[test]
    fn values_have_sizes_in_range() {
        let mut p = Payloads::new(RecordSize { min: 5, max: 9 }, 1);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let len = p.next_value().len();
            assert!((5..=9).contains(&len));
            seen[len] = true;
        }
        assert!(seen[5] && seen[9], "both ends of the range occur");
        let mut fixed = Payloads::new(RecordSize::fixed(1024), 1);
        assert!((0..100).all(|_| fixed.next_value().len() == 1024));
    }

    #[test]
    fn stamps_round_trip_and_other_runs_are_ignored() {
        let mut v = vec![0u8; 32];
        write_stamp(&mut v, 42, 123_456_789);
        assert_eq!(read_stamp(&v, 42), Some(123_456_789));
        assert_eq!(read_stamp(&v, 43), None);
        assert_eq!(read_stamp(&v[..10], 42), None);
    }
}
