//! A node's metadata directory on the storage engine's simulated disk: the same
//! [`StorageDisk`] the broker runs on `DmaStorage`, here on [`SimStorage`], driven by the
//! engine's seeded [`Runtime`]. The disk's rules are the engine's: unsynced writes are lost,
//! applied or torn in 512-byte sectors, in any order, at a crash (writes in flight
//! included); directory entries not synced may be lost; `fdatasync` may fail with EIO, and
//! a write may fail with ENOSPC (leaving part of itself behind).
//!
//! Each call runs the runtime until it stalls, so a node's writes complete before the
//! simulator goes on, except when it asks to stop after some steps: then the simulator
//! crashes the node, whatever the runtime has not done yet is dropped with the process,
//! and the disk crashes with the writes in flight.

use std::cell::Cell;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use wharf_engine::sim::{FaultConfig, Runtime, SimDisk, SimStorage, SIM_EPOCH_MS};
use wharf_engine::storage::Storage;

use crate::cluster::disk::{op_name, perform_all, RetryPolicy, StorageDisk, METADATA_DIR};
use crate::controller::log_store::DiskOp;

/// The simulated disk's size: far more than a metadata log needs, so ENOSPC comes only
/// from the injected faults and a retried write always succeeds in the end.
const CAPACITY_BYTES: u64 = 1 << 30;
/// Largest file read back at a restart.
const MAX_FILE_BYTES: u64 = 1 << 30;

/// How a batch of writes ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// All performed (failed writes retried until they succeeded).
    Done,
    /// An `fdatasync` failed: the node must stop (what it covered may be lost).
    SyncFailed(String),
    /// The process crashed part way (asked for by the caller).
    Crashed,
}

/// One node's metadata directory on its own simulated disk and runtime.
pub struct SimMetadataDir {
    rt: Runtime,
    disk: SimDisk,
    dir: PathBuf,
    writer: Rc<StorageDisk<SimStorage>>,
    /// Writes that failed and were made again.
    retried: Rc<Cell<u64>>,
}

impl Default for SimMetadataDir {
    /// A disk that injects no faults of its own (crashes still lose unsynced writes).
    fn default() -> SimMetadataDir {
        SimMetadataDir::new(0, FaultConfig::default())
    }
}

impl SimMetadataDir {
    pub fn new(seed: u64, faults: FaultConfig) -> SimMetadataDir {
        let rt = Runtime::new(seed);
        let disk = SimDisk::new(&rt, seed ^ 0x00D1_5C0F_D15C, CAPACITY_BYTES, faults);
        let dir = PathBuf::from("/data").join(METADATA_DIR);
        let storage = SimStorage::new(disk.clone());
        let writer = Rc::new(StorageDisk::new(storage.clone(), dir.clone()));
        let me = SimMetadataDir {
            rt,
            disk,
            dir,
            writer,
            retried: Rc::new(Cell::new(0)),
        };
        // The directory exists before the node first starts, as the broker's start-up
        // creates it.
        let dir = me.dir.clone();
        let created = me.run(async move {
            storage.create_dir_all(&dir).await?;
            storage.sync_dir(&dir).await?;
            storage
                .sync_dir(dir.parent().unwrap_or(Path::new("/")))
                .await
        });
        if let Some(Err(e)) = created {
            panic!("the simulated disk cannot create the metadata directory: {e}");
        }
        me
    }

    fn storage(&self) -> SimStorage {
        SimStorage::new(self.disk.clone())
    }

    /// Runs `fut` on the runtime until it stalls; `None` if it did not finish (it waits for
    /// nothing but the disk, so only a crash stops it).
    fn run<T: 'static>(&self, fut: impl Future<Output = T> + 'static) -> Option<T> {
        let result = self.rt.spawn_with_result(fut);
        self.rt.run_until_stalled();
        result.take()
    }

    /// The simulated clock follows the simulator's (milliseconds since its start).
    pub fn set_now(&self, now_ms: i64) {
        let behind = SIM_EPOCH_MS + now_ms - self.rt.now_ms();
        self.rt.advance_ms(behind);
    }

    /// Writes that failed (ENOSPC) and were made again, so far.
    pub fn retried_writes(&self) -> u64 {
        self.retried.get()
    }

    /// A file as a process reading it now would see it (`None`: absent).
    pub fn read(&self, file: &str) -> Result<Option<Vec<u8>>, String> {
        let storage = self.storage();
        let path = self.dir.join(file);
        self.run(async move { storage.read_file(&path, MAX_FILE_BYTES).await })
            .unwrap_or(Ok(None))
            .map_err(|e| format!("cannot read {file}: {e}"))
    }

    /// Performs `ops` in order with the broker's retry rules. With `crash_after_steps`, the
    /// runtime stops after that many steps; if the writes are not done by then the answer
    /// is [`Outcome::Crashed`] and the caller must [`SimMetadataDir::crash`] (the writes
    /// in flight are the disk's to lose or keep).
    pub fn perform(&mut self, ops: &[DiskOp], crash_after_steps: Option<u64>) -> Outcome {
        if ops.is_empty() {
            // Most Readies' second half writes nothing: no task for it.
            return match crash_after_steps {
                Some(_) => Outcome::Crashed,
                None => Outcome::Done,
            };
        }
        let writer = self.writer.clone();
        let retried = self.retried.clone();
        let ops = ops.to_vec();
        let task = self.rt.spawn_with_result(async move {
            // No pause between attempts: the simulated clock does not move inside a Ready,
            // and the disk's next draw decides whether the write fits.
            perform_all(
                &*writer,
                &ops,
                RetryPolicy::default(),
                |_| async {},
                |_| retried.set(retried.get() + 1),
            )
            .await
            .map_err(|(op, e)| format!("{}: {e}", op_name(op)))
        });
        match crash_after_steps {
            Some(steps) => {
                self.rt.run_for(steps);
            }
            None => {
                self.rt.run_until_stalled();
            }
        }
        match task.take() {
            Some(Ok(())) => Outcome::Done,
            Some(Err(e)) => {
                // The process stops; its page cache (the disk's live view) stays.
                self.stop();
                Outcome::SyncFailed(e)
            }
            None => Outcome::Crashed,
        }
    }

    /// Performs one write that must succeed (a disk without faults, in unit tests).
    pub fn apply(&mut self, op: &DiskOp) {
        let outcome = self.perform(std::slice::from_ref(op), None);
        assert_eq!(outcome, Outcome::Done, "{}", op_name(op));
    }

    /// The process stops: its tasks and open files are gone, the disk keeps what it has.
    fn stop(&mut self) {
        self.rt.crash();
        self.writer = Rc::new(StorageDisk::new(self.storage(), self.dir.clone()));
    }

    /// The machine crashes: the process stops, and what was not durable on the disk is
    /// lost, torn or reordered. Returns whether the crash changed the log's content.
    pub fn crash(&mut self) -> bool {
        self.stop();
        let log = self.dir.join(crate::controller::log_store::LOG_FILE);
        let before = self.disk.contents(&log);
        self.disk.crash();
        self.disk.contents(&log) != before
    }

    /// Changes a stored byte of `file` (bit rot), for tests.
    #[cfg(test)]
    fn rot(&self, file: &str, position: u64) -> bool {
        self.disk.rot(&self.dir.join(file), position, 0x20)
    }

    /// Whether the disk injects its faults (off once the simulator calms down).
    pub fn set_faults_enabled(&self, enabled: bool) {
        self.disk.set_faults_enabled(enabled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::log_store::{LOG_FILE, SNAPSHOT_FILE};
    use bytes::Bytes;

    fn append(bytes: &'static [u8]) -> DiskOp {
        DiskOp::Append {
            file: LOG_FILE,
            bytes: Bytes::from_static(bytes),
        }
    }

    #[test]
    fn synced_appends_survive_a_crash_and_unsynced_ones_may_not() {
        let mut lost = 0;
        for seed in 0..100 {
            let mut dir = SimMetadataDir::new(seed, FaultConfig::default());
            dir.apply(&append(b"durable"));
            dir.apply(&DiskOp::Sync { file: LOG_FILE });
            dir.apply(&append(b"maybe"));
            assert_eq!(dir.read(LOG_FILE).unwrap().unwrap(), b"durablemaybe");
            dir.crash();
            let after = dir.read(LOG_FILE).unwrap().unwrap();
            assert!(after.starts_with(b"durable"), "seed {seed}: {after:?}");
            assert!(after.len() <= b"durablemaybe".len());
            if after.len() < b"durablemaybe".len() {
                lost += 1;
            }
        }
        assert!(lost > 0, "some crash lost the unsynced append");
        let mut dir = SimMetadataDir::default();
        dir.apply(&DiskOp::Replace {
            file: SNAPSHOT_FILE,
            bytes: Bytes::from_static(b"whole"),
        });
        dir.crash();
        assert_eq!(dir.read(SNAPSHOT_FILE).unwrap().unwrap(), b"whole");
    }

    /// The log store's own writes on the simulated disk: whatever a crash does to the
    /// unsynced writes (lost, kept or torn in any order, so whole frames may follow a lost
    /// one), recovery cuts them and keeps every synced entry; bit rot in a synced entry is
    /// refused, not cut.
    #[test]
    fn a_crash_only_tears_the_unsynced_tail_and_rot_in_synced_entries_is_refused() {
        use crate::controller::log_store::{LogStore, LogStoreError};
        use raft::eraftpb::Entry;
        let entry = |index: u64| {
            let mut e = Entry::default();
            e.index = index;
            e.term = 1;
            // Over a sector each, so a crash can tear one write in several ways.
            e.data = Bytes::from(vec![index as u8; 700]);
            e
        };
        let mut torn = 0;
        for seed in 0..50 {
            let mut dir = SimMetadataDir::new(seed, FaultConfig::default());
            let (mut store, repairs, _) = LogStore::recover(vec![1], None, None).unwrap();
            assert_eq!(dir.perform(&repairs, None), Outcome::Done);
            let mut second_write_at = 0;
            for i in 1..=3 {
                if i == 2 {
                    second_write_at = dir.read(LOG_FILE).unwrap().unwrap().len() as u64;
                }
                let mut ops = store.append(&[entry(i)]);
                ops.extend(store.sync());
                assert_eq!(dir.perform(&ops, None), Outcome::Done);
            }
            // Three writes nobody waits for: lost to the crash, kept, or torn.
            let mut ops = store.set_commit(3);
            ops.extend(store.append(&[entry(4)]));
            ops.extend(store.append(&[entry(5)]));
            assert_eq!(dir.perform(&ops, None), Outcome::Done);
            dir.crash();
            let log = dir.read(LOG_FILE).unwrap();
            let (back, _, report) = LogStore::recover(vec![1], log.as_deref(), None)
                .unwrap_or_else(|e| panic!("seed {seed}: a crash taken for damage: {e}"));
            assert!(
                back.last_index() >= 3,
                "seed {seed}: a synced entry was cut"
            );
            if report.torn_bytes > 0 {
                torn += 1;
            }
            // Entry 2 was synced, and entry 3's write (led by a synced frame) says so.
            assert!(dir.rot(LOG_FILE, second_write_at + 200));
            let log = dir.read(LOG_FILE).unwrap();
            assert!(
                matches!(
                    LogStore::recover(vec![1], log.as_deref(), None),
                    Err(LogStoreError::Corrupt { .. })
                ),
                "seed {seed}: rot in a synced entry was not refused"
            );
        }
        assert!(torn > 0, "some crash tore the unsynced writes");
    }

    #[test]
    fn a_failed_fdatasync_stops_the_writes_and_a_full_disk_is_retried() {
        let faults = FaultConfig {
            fsync_eio_per_million: 1_000_000,
            ..FaultConfig::default()
        };
        let mut dir = SimMetadataDir::new(1, faults);
        let outcome = dir.perform(
            &[
                append(b"one"),
                DiskOp::Sync { file: LOG_FILE },
                append(b"two"),
            ],
            None,
        );
        assert!(matches!(outcome, Outcome::SyncFailed(_)), "{outcome:?}");
        let faults = FaultConfig {
            enospc_per_million: 500_000,
            ..FaultConfig::default()
        };
        let mut dir = SimMetadataDir::new(2, faults);
        for _ in 0..20 {
            assert_eq!(dir.perform(&[append(b"0123456789")], None), Outcome::Done);
        }
        assert!(dir.retried_writes() > 0);
        assert_eq!(
            dir.read(LOG_FILE).unwrap().unwrap(),
            b"0123456789".repeat(20)
        );
    }
}
