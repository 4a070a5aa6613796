//! Record keys: none, uniform over N keys, or Zipf-distributed over N keys; and Kafka's
//! default partitioner (murmur2 of the key), so keyed records land where a Java or
//! librdkafka (`murmur2_random`) producer would put them.

use std::str::FromStr;

use anyhow::{bail, Context};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// Bytes in every generated key: `k` and 11 decimal digits.
pub const KEY_BYTES: usize = 12;
/// Most distinct keys a distribution can have (11 decimal digits).
pub const MAX_KEYS: u64 = 99_999_999_999;

/// Which keys records carry.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum KeySpec {
    None,
    Uniform { keys: u64 },
    Zipf { keys: u64, exponent: f64 },
}

impl FromStr for KeySpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<KeySpec> {
        let mut parts = s.split(':');
        let kind = parts.next().unwrap_or_default();
        let keys = |p: Option<&str>| -> anyhow::Result<u64> {
            let n: u64 = p
                .context("missing key count, e.g. uniform:1000")?
                .parse()
                .context("bad key count")?;
            if n == 0 || n > MAX_KEYS {
                bail!("key count must be 1..={MAX_KEYS}");
            }
            Ok(n)
        };
        let spec = match kind {
            "none" => KeySpec::None,
            "uniform" => KeySpec::Uniform {
                keys: keys(parts.next())?,
            },
            "zipf" => {
                let keys = keys(parts.next())?;
                let exponent: f64 = match parts.next() {
                    Some(e) => e.parse().context("bad zipf exponent")?,
                    None => 1.0,
                };
                if !(exponent.is_finite() && exponent > 0.0) {
                    bail!("zipf exponent must be positive");
                }
                KeySpec::Zipf { keys, exponent }
            }
            _ => bail!("keys must be none, uniform:N or zipf:N[:EXPONENT], not {s:?}"),
        };
        if parts.next().is_some() {
            bail!("too many ':' parts in {s:?}");
        }
        Ok(spec)
    }
}

impl std::fmt::Display for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySpec::None => write!(f, "none"),
            KeySpec::Uniform { keys } => write!(f, "uniform:{keys}"),
            KeySpec::Zipf { keys, exponent } => write!(f, "zipf:{keys}:{exponent}"),
        }
    }
}

enum Sampler {
    None,
    Uniform(u64),
    Zipf(Zipf<f64>),
}

/// Draws key indexes from a [`KeySpec`]; one per producer, so no sharing.
pub struct KeySampler {
    rng: SmallRng,
    sampler: Sampler,
}

impl KeySampler {
    pub fn new(spec: &KeySpec, seed: u64) -> anyhow::Result<KeySampler> {
        let sampler = match *spec {
            KeySpec::None => Sampler::None,
            KeySpec::Uniform { keys } => Sampler::Uniform(keys),
            KeySpec::Zipf { keys, exponent } => {
                Sampler::Zipf(Zipf::new(keys as f64, exponent).context("zipf parameters")?)
            }
        };
        Ok(KeySampler {
            rng: SmallRng::seed_from_u64(seed),
            sampler,
        })
    }

    /// The next key's index in `0..keys` (rank order for Zipf: 0 is the most frequent), or
    /// None when records have no key.
    pub fn next_index(&mut self) -> Option<u64> {
        match &self.sampler {
            Sampler::None => None,
            Sampler::Uniform(n) => Some(self.rng.random_range(0..*n)),
            // Zipf samples 1..=n as floats; rank 1 is the most frequent.
            Sampler::Zipf(z) => Some((z.sample(&mut self.rng) as u64).saturating_sub(1)),
        }
    }
}

/// The key bytes for index `i`: `k` followed by 11 zero-padded decimal digits.
pub fn key_bytes(mut i: u64) -> [u8; KEY_BYTES] {
    let mut key = [b'0'; KEY_BYTES];
    key[0] = b'k';
    for slot in key[1..].iter_mut().rev() {
        *slot = b'0' + (i % 10) as u8;
        i /= 10;
    }
    key
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), seed 0x9747b28c.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len() as u32;
    let mut h: u32 = SEED ^ length;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's default partitioner for a keyed record: `toPositive(murmur2(key)) % partitions`.
pub fn partition_for_key(key: &[u8], partitions: usize) -> usize {
    debug_assert!(partitions > 0, "a topic has at least one partition");
    ((murmur2(key) & 0x7fff_ffff) as usize) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_reference_values() {
        // The cases of Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971
        );
        assert_eq!(murmur2(b"abc"), 479470107);
    }

    #[test]
    fn key_specs_parse_and_reject_nonsense() {
        assert_eq!("none".parse::<KeySpec>().unwrap(), KeySpec::None);
        assert_eq!(
            "uniform:10".parse::<KeySpec>().unwrap(),
            KeySpec::Uniform { keys: 10 }
        );
        assert_eq!(
            "zipf:100".parse::<KeySpec>().unwrap(),
            KeySpec::Zipf {
                keys: 100,
                exponent: 1.0
            }
        );
        assert_eq!(
            "zipf:100:1.2".parse::<KeySpec>().unwrap(),
            KeySpec::Zipf {
                keys: 100,
                exponent: 1.2
            }
        );
        for bad in [
            "",
            "uniform",
            "uniform:0",
            "uniform:x",
            "zipf:10:-1",
            "zipf:10:1:2",
            "hash:3",
        ] {
            assert!(bad.parse::<KeySpec>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn keys_are_fixed_width_and_distinct() {
        assert_eq!(&key_bytes(0), b"k00000000000");
        assert_eq!(&key_bytes(1234), b"k00000001234");
        assert_eq!(&key_bytes(MAX_KEYS), b"k99999999999");
    }

    #[test]
    fn no_keys_yields_none() {
        let mut s = KeySampler::new(&KeySpec::None, 1).unwrap();
        assert!((0..100).all(|_| s.next_index().is_none()));
    }

    #[test]
    fn uniform_keys_cover_the_range_evenly() {
        let mut s = KeySampler::new(&KeySpec::Uniform { keys: 10 }, 7).unwrap();
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            let i = s.next_index().unwrap();
            counts[i as usize] += 1;
        }
        // Each key expects 10,000; 5 standard deviations is about 475.
        for c in counts {
            assert!((9_500..=10_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn zipf_keys_favour_low_ranks_by_the_exponent() {
        let mut s = KeySampler::new(
            &KeySpec::Zipf {
                keys: 1000,
                exponent: 1.0,
            },
            11,
        )
        .unwrap();
        let mut counts = vec![0u32; 1000];
        for _ in 0..200_000 {
            let i = s.next_index().unwrap();
            assert!(i < 1000);
            counts[i as usize] += 1;
        }
        // With s = 1, rank 1 is twice as frequent as rank 2 and ten times rank 10; the
        // top rank holds 1/H(1000) = 13.4% of all draws.
        let share = counts[0] as f64 / 200_000.0;
        assert!((0.12..0.15).contains(&share), "top key share {share}");
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((1.8..2.2).contains(&ratio), "rank1/rank2 {ratio}");
        let ratio10 = counts[0] as f64 / counts[9] as f64;
        assert!((8.0..12.5).contains(&ratio10), "rank1/rank10 {ratio10}");
    }

    #[test]
    fn samplers_with_the_same_seed_agree() {
        let spec = KeySpec::Zipf {
            keys: 50,
            exponent: 0.9,
        };
        let mut a = KeySampler::new(&spec, 3).unwrap();
        let mut b = KeySampler::new(&spec, 3).unwrap();
        assert!((0..1000).all(|_| a.next_index() == b.next_index()));
    }

    #[test]
    fn keyed_partitioning_is_stable_and_in_range() {
        for i in 0..1000 {
            let p = partition_for_key(&key_bytes(i), 16);
            assert!(p < 16);
            assert_eq!(p, partition_for_key(&key_bytes(i), 16));
        }
    }
}
