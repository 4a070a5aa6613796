//! A simulated metadata directory with a disk's crash rules: appends are not durable until
//! a sync; a crash keeps a random prefix of the unsynced bytes of each file, may tear the
//! kept part (garbage where a write was half done) or leave a hole (a later write landed,
//! an earlier one did not). Synced bytes and atomic replacements always survive.
//!
//! This follows the shape of the engine's simulated disk rules (lost, torn or reordered
//! unsynced writes); it is the smallest disk the metadata log needs, on [`DiskOp`]s.

use std::collections::BTreeMap;

use crate::controller::log_store::DiskOp;
use crate::controller::rng::Rng;

#[derive(Clone, Debug, Default)]
struct SimFile {
    durable: Vec<u8>,
    unsynced: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    files: BTreeMap<&'static str, SimFile>,
}

/// What a crash did to the unsynced bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashDamage {
    pub lost_bytes: usize,
    pub torn: bool,
}

impl SimDisk {
    /// Performs one write.
    pub fn apply(&mut self, op: &DiskOp) {
        match op {
            DiskOp::Append { file, bytes } => self
                .files
                .entry(file)
                .or_default()
                .unsynced
                .extend_from_slice(bytes),
            DiskOp::Sync { file } => {
                if let Some(f) = self.files.get_mut(file) {
                    let pending = std::mem::take(&mut f.unsynced);
                    f.durable.extend_from_slice(&pending);
                }
            }
            DiskOp::Replace { file, bytes } => {
                self.files.insert(
                    file,
                    SimFile {
                        durable: bytes.to_vec(),
                        unsynced: Vec::new(),
                    },
                );
            }
            DiskOp::Truncate { file, len } => {
                if let Some(f) = self.files.get_mut(file) {
                    let mut all = std::mem::take(&mut f.durable);
                    all.append(&mut f.unsynced);
                    all.truncate(*len as usize);
                    f.durable = all;
                }
            }
        }
    }

    /// A file as a reader sees it now.
    pub fn read(&self, file: &str) -> Option<Vec<u8>> {
        self.files.get(file).map(|f| {
            let mut all = f.durable.clone();
            all.extend_from_slice(&f.unsynced);
            all
        })
    }

    /// The process died: unsynced writes are lost, partly or wholly, torn or with holes.
    pub fn crash(&mut self, rng: &mut Rng) -> CrashDamage {
        let mut damage = CrashDamage::default();
        for f in self.files.values_mut() {
            let unsynced = std::mem::take(&mut f.unsynced);
            if unsynced.is_empty() {
                continue;
            }
            let keep = match rng.range(0, 4) {
                0 => 0,
                1 => unsynced.len(),
                _ => rng.range(0, unsynced.len() as u64 + 1) as usize,
            };
            let mut kept = unsynced[..keep].to_vec();
            damage.lost_bytes += unsynced.len() - keep;
            if !kept.is_empty() && rng.chance(1, 3) {
                damage.torn = true;
                let from = rng.range(0, kept.len() as u64) as usize;
                let to = (from + rng.range(1, 64) as usize).min(kept.len());
                let zero = rng.chance(1, 2);
                for b in &mut kept[from..to] {
                    // A hole reads as zeros; a torn sector as garbage.
                    *b = if zero { 0 } else { rng.next_u64() as u8 };
                }
            }
            f.durable.extend_from_slice(&kept);
        }
        damage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn synced_bytes_survive_a_crash_and_unsynced_ones_may_not() {
        let mut rng = Rng::new(1);
        for _ in 0..100 {
            let mut disk = SimDisk::default();
            let op = |b: &'static [u8]| DiskOp::Append {
                file: "f",
                bytes: Bytes::from_static(b),
            };
            disk.apply(&op(b"durable"));
            disk.apply(&DiskOp::Sync { file: "f" });
            disk.apply(&op(b"maybe"));
            disk.crash(&mut rng);
            let after = disk.read("f").unwrap();
            assert!(after.starts_with(b"durable"));
            assert!(after.len() <= b"durablemaybe".len());
        }
        let mut disk = SimDisk::default();
        disk.apply(&DiskOp::Replace {
            file: "g",
            bytes: Bytes::from_static(b"whole"),
        });
        disk.crash(&mut rng);
        assert_eq!(disk.read("g").unwrap(), b"whole");
    }
}
