//! Seeded simulation: a deterministic executor with a simulated clock ([`Runtime`]), a
//! simulated disk that injects the faults real disks have ([`SimDisk`]), [`SimStorage`]
//! (the [`Storage`] that runs partition logs on them), a seed runner that reports a broken
//! invariant with the steps that led to it and the command that replays it ([`runner`]),
//! and the engine's workload ([`workload`]: one partition log under random appends, reads,
//! retention, truncation, crashes and disk faults, checked against a model after every
//! step). Each run is reproducible from its seed.
//!
//! The harness is not the log's: any state machine written against [`Storage`] (or taking
//! its time and I/O from a [`Runtime`]) runs on it, so other crates' simulations (the
//! controller, the replicas) reuse the disk, the clock, the executor and the runner.
//! Compiled always (it has no dependency of its own) so that they and the `wharf-sim`
//! binary can use it.

mod disk;
mod rng;
pub mod runner;
mod runtime;
pub mod workload;

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;

pub use disk::{FaultConfig, InjectedFault, SimAppendFile, SimDisk, SimFile, SECTOR_BYTES};
pub use rng::Rng;
pub use runtime::{Runtime, TaskResult, SIM_EPOCH_MS};

use crate::storage::{AppendFile, DirEntry, OpenMode, SegmentFile, Storage, WriteBuffer};

/// What a fresh write buffer holds before the writer lays it out: a batch header read from
/// it would have a length and magic byte that fail validation.
const POISON: u8 = 0xA5;

/// [`Storage`] on a [`SimDisk`], with the disk's runtime as clock and executor.
#[derive(Clone)]
pub struct SimStorage {
    disk: SimDisk,
}

impl SimStorage {
    pub fn new(disk: SimDisk) -> SimStorage {
        SimStorage { disk }
    }

    pub fn disk(&self) -> &SimDisk {
        &self.disk
    }
}

impl WriteBuffer for Vec<u8> {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self
    }

    fn len(&self) -> usize {
        Vec::len(self)
    }
}

impl SegmentFile for SimFile {
    type Buffer = Vec<u8>;

    fn alloc_buffer(&self, len: usize) -> Vec<u8> {
        // Not zeroed, like a DMA buffer from the pool: a byte the writer forgets to lay
        // out reaches the simulated disk as garbage the checks then see.
        vec![POISON; len]
    }

    async fn write_at(&self, buf: Vec<u8>, pos: u64) -> io::Result<usize> {
        SimFile::write_at(self, buf, pos).await
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        SimFile::read_at(self, pos, len).await
    }

    async fn fdatasync(&self) -> io::Result<()> {
        SimFile::fdatasync(self).await
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        SimFile::truncate(self, len).await
    }

    async fn preallocate(&self, len: u64) -> io::Result<()> {
        SimFile::preallocate(self, len).await
    }
}

impl AppendFile for SimAppendFile {
    async fn write_at(&self, data: Vec<u8>, pos: u64) -> io::Result<usize> {
        SimAppendFile::write_at(self, data, pos).await
    }

    async fn fdatasync(&self) -> io::Result<()> {
        SimAppendFile::fdatasync(self).await
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        SimAppendFile::truncate(self, len).await
    }

    async fn reserve(&self, len: u64) -> io::Result<()> {
        SimAppendFile::reserve(self, len).await
    }

    async fn size(&self) -> io::Result<u64> {
        SimAppendFile::size(self).await
    }
}

impl Storage for SimStorage {
    type File = SimFile;
    type AppendFile = SimAppendFile;

    async fn open_append(&self, path: &Path) -> io::Result<SimAppendFile> {
        let file = self.disk.open(path, true, true).await?;
        Ok(SimAppendFile::new(file))
    }

    async fn open_segment(&self, path: &Path, mode: OpenMode) -> io::Result<SimFile> {
        let writable = mode != OpenMode::Read;
        self.disk
            .open(path, writable, mode == OpenMode::Create)
            .await
    }

    async fn read_file(&self, path: &Path, max_bytes: u64) -> io::Result<Option<Vec<u8>>> {
        self.disk.read_file(path, max_bytes).await
    }

    async fn write_file(&self, path: &Path, data: Vec<u8>) -> io::Result<()> {
        self.disk.write_file(path, data).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.disk.rename(from, to).await
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.disk.remove_file(path).await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.disk.sync_dir(dir).await
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.disk.create_dir_all(dir).await
    }

    async fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        self.disk.remove_dir(dir).await
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        self.disk.list_dir(dir)
    }

    fn now_ms(&self) -> i64 {
        self.disk.runtime().now_ms()
    }

    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()>>>) {
        self.disk.runtime().spawn_boxed(task);
    }
}
