//! What a partition log needs from the machine: segment files for direct I/O, small files
//! written whole, directories, a clock and a way to run its background tasks.
//!
//! The log is written against the [`Storage`] trait only. Besides segments it offers
//! [`AppendFile`]s, small files appended to through the page cache, for logs too small and
//! too rarely written for direct I/O (the cluster's metadata log). In production [`DmaStorage`]
//! carries every call out with glommio on the calling shard (O_DIRECT `DmaFile`s for
//! segments); the seeded simulator uses [`crate::sim::SimStorage`], an in-memory disk that
//! loses, tears and reorders unsynced writes at a crash, flips bits on reads, fails
//! `fdatasync` and runs out of space, with a simulated clock and executor. Everything else
//! (the state machine and the code that drives it) is the same in both.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;

mod dma;

pub use dma::{DmaAppendFile, DmaSegmentFile, DmaStorage};

/// Alignment of every direct-I/O write and read position.
pub const PAGE_BYTES: u64 = 4096;
/// Suffix of files being replaced; leftovers are removed when a log is opened.
pub const TMP_SUFFIX: &str = ".tmp";

pub(crate) fn align_down(value: u64) -> u64 {
    value & !(PAGE_BYTES - 1)
}

pub(crate) fn align_up(value: u64) -> u64 {
    align_down(value + PAGE_BYTES - 1)
}

/// How a segment file is opened.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Reads only; the file must exist.
    Read,
    /// Reads and writes; the file must exist.
    ReadWrite,
    /// Reads and writes, created empty if missing.
    Create,
}

/// One file of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub size_bytes: u64,
    pub modified_ms: i64,
}

/// A buffer for one direct write, aligned as the file needs.
pub trait WriteBuffer {
    fn as_mut_slice(&mut self) -> &mut [u8];
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An open segment file. Writes and reads of segment data go through here; positions of
/// writes are [`PAGE_BYTES`]-aligned and so are their lengths.
#[allow(async_fn_in_trait)]
pub trait SegmentFile: 'static {
    type Buffer: WriteBuffer;
    /// A buffer of `len` bytes for [`SegmentFile::write_at`]. Its content is unspecified:
    /// the caller writes every byte of it before the write.
    fn alloc_buffer(&self, len: usize) -> Self::Buffer;
    /// Writes the whole buffer at `pos`; returns the bytes written (short on failure paths).
    async fn write_at(&self, buf: Self::Buffer, pos: u64) -> io::Result<usize>;
    /// Reads `len` bytes at `pos` (any alignment); fewer at the end of the file.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Makes every write that completed before the call durable, with the file's size.
    async fn fdatasync(&self) -> io::Result<()>;
    /// Sets the file's size.
    async fn truncate(&self, len: u64) -> io::Result<()>;
    /// Allocates the file's space up to `len` bytes; a smaller file grows to `len` with
    /// zeroes (`fallocate` mode 0), which the log trims when it seals or opens the segment.
    async fn preallocate(&self, len: u64) -> io::Result<()>;
}

/// A small file written through the page cache at any position and length, made durable
/// by `fdatasync`: for a log whose records are small and rare (the cluster's metadata log),
/// where direct I/O would rewrite the unaligned tail page with each record and would need
/// a `truncate` after each to keep the file's size exact, and that truncate would free
/// the space reserved beyond the end. The file's size is always exactly what was written.
#[allow(async_fn_in_trait)]
pub trait AppendFile: 'static {
    /// Writes `data` at `pos` (any alignment; the writer's end for an append). Returns the
    /// bytes written: fewer, or an error, when the disk filled part way, in which case a
    /// prefix of `data` may be in the file.
    async fn write_at(&self, data: Vec<u8>, pos: u64) -> io::Result<usize>;
    /// Makes every write, truncation and size change that completed before the call
    /// durable.
    async fn fdatasync(&self) -> io::Result<()>;
    /// Sets the file's size; space beyond it is freed (a reservation included).
    async fn truncate(&self, len: u64) -> io::Result<()>;
    /// Allocates the file's space up to `len` bytes *without* changing its size
    /// (`fallocate` with `FALLOC_FL_KEEP_SIZE`), so appends into it succeed on a full disk.
    async fn reserve(&self, len: u64) -> io::Result<()>;
    /// The file's size in bytes.
    async fn size(&self) -> io::Result<u64>;
}

/// The environment of a partition log: files, directories, a clock and an executor.
/// Implementations are cheap handles (`Clone`) used from one thread.
#[allow(async_fn_in_trait)]
pub trait Storage: Clone + 'static {
    type File: SegmentFile;
    type AppendFile: AppendFile;

    /// Opens a segment file for direct I/O.
    async fn open_segment(&self, path: &Path, mode: OpenMode) -> io::Result<Self::File>;
    /// Opens a file for writes through the page cache, created empty if missing (its
    /// directory entry is durable once the directory is synced).
    async fn open_append(&self, path: &Path) -> io::Result<Self::AppendFile>;
    /// The whole content of a small file, `None` if it does not exist; an error if it is
    /// larger than `max_bytes`.
    async fn read_file(&self, path: &Path, max_bytes: u64) -> io::Result<Option<Vec<u8>>>;
    /// Creates (or empties) `path`, writes `data` and syncs the file. Its directory entry
    /// is durable only once the directory is synced.
    async fn write_file(&self, path: &Path, data: Vec<u8>) -> io::Result<()>;
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file; a file already gone is not an error.
    async fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (created, renamed, removed files) durable.
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates the directory and its missing parents.
    async fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    async fn remove_dir(&self, dir: &Path) -> io::Result<()>;
    /// The regular files of a directory.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>>;
    /// Wall-clock time in milliseconds since the Unix epoch: the log's only clock.
    fn now_ms(&self) -> i64;
    /// Runs one of the log's background tasks (its writer, its syncer, a recovery) on the
    /// calling thread's executor.
    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()>>>);
}

/// Replaces `path` with `data`: written to a temporary file, synced, renamed over `path`, so
/// a reader sees the old or the new content, never a mix. With `sync_dir` the directory is
/// synced too, so the rename survives a machine crash.
pub(crate) async fn replace_file<S: Storage>(
    storage: &S,
    path: &Path,
    data: Vec<u8>,
    sync_dir: bool,
) -> io::Result<()> {
    let tmp = tmp_path(path);
    storage.write_file(&tmp, data).await?;
    storage.rename(&tmp, path).await?;
    if sync_dir {
        if let Some(dir) = path.parent() {
            storage.sync_dir(dir).await?;
        }
    }
    Ok(())
}

/// The temporary file [`replace_file`] writes before renaming it over `path`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(TMP_SUFFIX);
    PathBuf::from(name)
}

/// Linux's ENOSPC and EDQUOT: the file system (or a quota) is full.
pub fn is_no_space(err: &io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    err.kind() == io::ErrorKind::StorageFull
        || matches!(err.raw_os_error(), Some(ENOSPC) | Some(EDQUOT))
}
