//! Carrying out the metadata log's writes ([`DiskOp`]s) on this node's disk.
//!
//! The log store returns its writes as effects; [`MetadataDisk`] is the one place that
//! performs them, in order, durably. [`StorageDisk`] does it on the storage engine's
//! [`Storage`] trait: with `DmaStorage` on the controller's shard in the broker, and on the
//! engine's simulated disk (with its crash and fault rules) in the controller simulator,
//! so the code the simulator checks is the code that runs.
//!
//! Appends go through the engine's [`AppendFile`] (a file written through the page cache),
//! not through its direct-I/O segment files. The log is small and written rarely; its
//! durability comes from `fdatasync`, not from O_DIRECT. With aligned direct writes, each
//! append would rewrite the unaligned tail page and then `truncate` the file back to its
//! real size (the on-disk format has no padding), and that truncate frees every block past
//! the end, the reserve below included, so the reserve would have to be allocated again
//! before each append: on a full disk exactly when it is needed. Through the page cache the
//! file's size is always what was written and the reserve stays. A replacement is the
//! engine's small-file path (`write_file` of a temporary file, which syncs it, `rename`,
//! `sync_dir`); a truncation is `truncate` and `fdatasync`.
//!
//! Failures come in two kinds ([`DiskFailure`]). A failed write (the disk is full, a quota,
//! any error before `fdatasync`) leaves nothing acknowledged behind it: the log in memory is
//! unchanged and the write can be made again from the same position, so [`perform_all`]
//! retries it after a pause while the broker keeps serving. A failed `fdatasync` is never
//! retried: the kernel may have dropped the pages it was meant to make durable
//! (fsyncgate), so the caller stops the process and the log is recovered from what is on
//! disk at the next start.
//!
//! The log file keeps [`LOG_RESERVE_BYTES`] of space allocated ahead of its end, so the
//! metadata log goes on working for a while when partition data has filled the disk (an
//! election, a broker registering after a restart).
//!
//! Start-up reads the directory with [`read_metadata_dir`] and makes its repairs with
//! [`repair_blocking`] on the main thread, before any shard runs (plain blocking I/O: no
//! executor exists yet, and the node's configuration depends on what is read). The
//! simulator performs the same repairs through [`StorageDisk`].

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use wharf_engine::storage::{tmp_path, AppendFile, Storage};

use crate::controller::log_store::DiskOp;

/// The metadata log's directory under the data directory (Kafka's name for it).
pub use crate::metadata::store::METADATA_LOG_DIR as METADATA_DIR;
/// Space kept allocated beyond the log's end (`fallocate` with `FALLOC_FL_KEEP_SIZE`): a
/// few thousand records of headroom when the disk fills up.
pub const LOG_RESERVE_BYTES: u64 = 1 << 20;

/// Why a metadata log write did not happen.
#[derive(Debug)]
pub enum DiskFailure {
    /// A write before any `fdatasync` failed; nothing that counts depends on it, so it can
    /// be made again (the disk is full, a quota, a short write).
    Write(io::Error),
    /// `fdatasync` failed: what it covered may be lost from the page cache. Not retried.
    Sync(io::Error),
}

impl DiskFailure {
    pub fn error(&self) -> &io::Error {
        match self {
            DiskFailure::Write(e) | DiskFailure::Sync(e) => e,
        }
    }
}

/// Performs the metadata log's writes, one at a time. An op that fails with
/// [`DiskFailure::Write`] may be performed again from the start.
#[allow(async_fn_in_trait)]
pub trait MetadataDisk {
    async fn perform(&self, op: &DiskOp) -> Result<(), DiskFailure>;
}

/// How [`perform_all`] waits between attempts of a failed write: the pause doubles from
/// `first_pause` up to `max_pause`.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub first_pause: Duration,
    pub max_pause: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            first_pause: Duration::from_millis(200),
            max_pause: Duration::from_secs(5),
        }
    }
}

/// A write that is being retried, as [`perform_all`] reports it.
pub struct Stalled<'a> {
    pub op: &'a DiskOp,
    pub error: &'a io::Error,
    /// Failed attempts of this op so far (1 on the first failure).
    pub attempts: u32,
}

/// Performs `ops` in order. A failed write is made again after a pause (growing up to the
/// policy's maximum, waited with `pause_for`: glommio's timer in the broker) until it succeeds,
/// with `on_stall` told of each failure; the ops after it wait. A failed `fdatasync` ends
/// it: `Err` with the op, and the caller must stop.
pub async fn perform_all<'a, D: MetadataDisk, P: Future<Output = ()>>(
    disk: &D,
    ops: &'a [DiskOp],
    policy: RetryPolicy,
    pause_for: impl Fn(Duration) -> P,
    mut on_stall: impl FnMut(Stalled<'_>),
) -> Result<(), (&'a DiskOp, io::Error)> {
    for op in ops {
        let mut attempts = 0u32;
        let mut wait = policy.first_pause;
        loop {
            match disk.perform(op).await {
                Ok(()) => break,
                Err(DiskFailure::Sync(e)) => return Err((op, e)),
                Err(DiskFailure::Write(e)) => {
                    attempts = attempts.saturating_add(1);
                    on_stall(Stalled {
                        op,
                        error: &e,
                        attempts,
                    });
                    pause_for(wait).await;
                    wait = (wait * 2).min(policy.max_pause);
                }
            }
        }
    }
    Ok(())
}

/// A person's name for an op, for log lines.
pub fn op_name(op: &DiskOp) -> String {
    match op {
        DiskOp::Append { file, .. } => format!("append to {file}"),
        DiskOp::Sync { file } => format!("fdatasync of {file}"),
        DiskOp::Replace { file, .. } => format!("replacing {file}"),
        DiskOp::Truncate { file, .. } => format!("truncating {file}"),
    }
}

/// The log file open for appends.
struct Appender<F> {
    file: Rc<F>,
    name: &'static str,
    /// The file's length: where the next append goes.
    len: u64,
    /// Space known to be allocated for the file (at least `len`).
    allocated: u64,
}

/// The metadata directory on any [`Storage`]: [`DmaStorage`] in the broker, the engine's
/// simulated disk in the controller simulator, so both run this same code.
///
/// [`DmaStorage`]: wharf_engine::storage::DmaStorage
pub struct StorageDisk<S: Storage> {
    storage: S,
    dir: PathBuf,
    log: RefCell<Option<Appender<S::AppendFile>>>,
}

impl<S: Storage> StorageDisk<S> {
    pub fn new(storage: S, dir: PathBuf) -> StorageDisk<S> {
        StorageDisk {
            storage,
            dir,
            log: RefCell::new(None),
        }
    }

    /// The file open for appends and its length, opened (and its length read) on first use.
    async fn appender(&self, file: &'static str) -> Result<(Rc<S::AppendFile>, u64), DiskFailure> {
        if let Some(a) = self.log.borrow().as_ref() {
            if a.name == file {
                return Ok((a.file.clone(), a.len));
            }
        }
        let f = self
            .storage
            .open_append(&self.dir.join(file))
            .await
            .map_err(DiskFailure::Write)?;
        let len = f.size().await.map_err(DiskFailure::Write)?;
        if len == 0 {
            // Perhaps created just now: its directory entry must be durable before a `Sync`
            // of the file can promise anything (the log is normally created by a `Replace`,
            // which syncs the directory, but an `Append` may create it too).
            self.storage
                .sync_dir(&self.dir)
                .await
                .map_err(DiskFailure::Write)?;
        }
        let f = Rc::new(f);
        *self.log.borrow_mut() = Some(Appender {
            file: f.clone(),
            name: file,
            len,
            allocated: len,
        });
        Ok((f, len))
    }

    fn set_len(&self, len: u64) {
        if let Some(a) = self.log.borrow_mut().as_mut() {
            a.len = len;
            a.allocated = a.allocated.max(len);
        }
    }

    /// Keeps [`LOG_RESERVE_BYTES`] allocated beyond `end`. Best effort: on a full disk the
    /// append that follows may still fit in what is allocated, and if not it fails itself.
    async fn reserve(&self, file: &S::AppendFile, end: u64) {
        let allocated = self.log.borrow().as_ref().map_or(0, |a| a.allocated);
        if end <= allocated {
            return;
        }
        let want = end + LOG_RESERVE_BYTES;
        match file.reserve(want).await {
            Ok(()) => {
                if let Some(a) = self.log.borrow_mut().as_mut() {
                    a.allocated = a.allocated.max(want);
                }
            }
            Err(e) => tracing::debug!("cannot reserve space for the metadata log: {e}"),
        }
    }

    fn forget(&self, file: &str) {
        let mut log = self.log.borrow_mut();
        if log.as_ref().is_some_and(|a| a.name == file) {
            *log = None;
        }
    }
}

async fn write_all<F: AppendFile>(
    file: &F,
    bytes: &[u8],
    mut pos: u64,
) -> Result<u64, DiskFailure> {
    let mut at = 0;
    while at < bytes.len() {
        let n = file
            .write_at(bytes[at..].to_vec(), pos)
            .await
            .map_err(DiskFailure::Write)?;
        if n == 0 {
            return Err(DiskFailure::Write(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write",
            )));
        }
        at += n;
        pos += n as u64;
    }
    Ok(pos)
}

impl<S: Storage> MetadataDisk for StorageDisk<S> {
    async fn perform(&self, op: &DiskOp) -> Result<(), DiskFailure> {
        match op {
            DiskOp::Append { file, bytes } => {
                // Always from the recorded length: a failed attempt's partial bytes are
                // overwritten by the next one.
                let (f, len) = self.appender(file).await?;
                self.reserve(&f, len + bytes.len() as u64).await;
                let end = write_all(&*f, bytes, len).await?;
                self.set_len(end);
                Ok(())
            }
            DiskOp::Sync { file } => {
                let (f, _) = self.appender(file).await?;
                f.fdatasync().await.map_err(DiskFailure::Sync)
            }
            DiskOp::Replace { file, bytes } => {
                self.forget(file);
                let path = self.dir.join(file);
                let tmp = tmp_path(&path);
                // Until the rename, only the temporary file is touched; it is written from
                // scratch by every attempt, so any failure before the rename is a write
                // failure (even its fdatasync's: nothing counts on that file yet).
                self.storage
                    .write_file(&tmp, bytes.to_vec())
                    .await
                    .map_err(DiskFailure::Write)?;
                self.storage
                    .rename(&tmp, &path)
                    .await
                    .map_err(DiskFailure::Write)?;
                self.storage
                    .sync_dir(&self.dir)
                    .await
                    .map_err(DiskFailure::Sync)
            }
            DiskOp::Truncate { file, len } => {
                let (f, _) = self.appender(file).await?;
                f.truncate(*len).await.map_err(DiskFailure::Write)?;
                f.fdatasync().await.map_err(DiskFailure::Sync)?;
                if let Some(a) = self.log.borrow_mut().as_mut() {
                    a.len = *len;
                    a.allocated = *len;
                }
                Ok(())
            }
        }
    }
}

/// The metadata directory's files as they are on disk (`None`: absent), read at start-up
/// with blocking I/O, before any shard runs.
pub struct DirContents {
    pub log: Option<Vec<u8>>,
    pub snapshot: Option<Vec<u8>>,
}

pub fn read_metadata_dir(dir: &Path) -> io::Result<DirContents> {
    let read = |name: &str| match std::fs::read(dir.join(name)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    };
    Ok(DirContents {
        log: read(crate::controller::log_store::LOG_FILE)?,
        snapshot: read(crate::controller::log_store::SNAPSHOT_FILE)?,
    })
}

/// Performs start-up repairs (a torn tail cut off, a log rewritten) with blocking I/O,
/// before any shard runs.
pub fn repair_blocking(dir: &Path, ops: &[DiskOp]) -> io::Result<()> {
    use std::io::Write;
    for op in ops {
        match op {
            DiskOp::Append { file, bytes } => {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(dir.join(file))?;
                f.write_all(bytes)?;
            }
            DiskOp::Sync { file } => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join(file))?
                    .sync_data()?;
            }
            DiskOp::Replace { file, bytes } => {
                let tmp = tmp_path(&dir.join(file));
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(bytes)?;
                f.sync_all()?;
                drop(f);
                std::fs::rename(&tmp, dir.join(file))?;
                std::fs::File::open(dir)?.sync_all()?;
            }
            DiskOp::Truncate { file, len } => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join(file))?;
                f.set_len(*len)?;
                f.sync_all()?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io::{Seek, SeekFrom, Write};

    use bytes::Bytes;
    use raft::eraftpb::{Entry, HardState};

    use wharf_engine::storage::DmaStorage;

    use super::*;
    use crate::controller::log_store::{LogStore, LOG_FILE};

    /// The real metadata directory, with a disk that fills up: the next `full_writes`
    /// appends each leave half their bytes at the end of the file (what a write cut short by
    /// ENOSPC leaves) and fail with ENOSPC; `failing_sync` makes the next `fdatasync` fail.
    struct FillingDisk {
        inner: StorageDisk<DmaStorage>,
        dir: PathBuf,
        full_writes: Cell<u32>,
        failing_sync: Cell<bool>,
    }

    impl MetadataDisk for FillingDisk {
        async fn perform(&self, op: &DiskOp) -> Result<(), DiskFailure> {
            match op {
                DiskOp::Append { file, bytes } if self.full_writes.get() > 0 => {
                    self.full_writes.set(self.full_writes.get() - 1);
                    let (_, len) = self.inner.appender(file).await?;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(self.dir.join(file))
                        .expect("open the log");
                    f.seek(SeekFrom::Start(len)).expect("seek");
                    f.write_all(&bytes[..bytes.len() / 2])
                        .expect("partial write");
                    Err(DiskFailure::Write(io::Error::from_raw_os_error(28)))
                }
                DiskOp::Sync { .. } if self.failing_sync.get() => {
                    Err(DiskFailure::Sync(io::Error::from_raw_os_error(5)))
                }
                _ => self.inner.perform(op).await,
            }
        }
    }

    fn entry(index: u64, data: &'static [u8]) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = 1;
        e.data = Bytes::from_static(data);
        e
    }

    fn run<T>(f: impl std::future::Future<Output = T> + 'static) -> T
    where
        T: Send + 'static,
    {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor")
            .run(f)
    }

    async fn write(
        disk: &FillingDisk,
        ops: Vec<DiskOp>,
        stalls: &mut Vec<u32>,
    ) -> Result<(), String> {
        perform_all(disk, &ops, QUICK, glommio::timer::sleep, |s| {
            assert!(wharf_engine::storage::is_no_space(s.error));
            stalls.push(s.attempts);
        })
        .await
        .map_err(|(op, e)| format!("{}: {e}", op_name(op)))
    }

    const QUICK: RetryPolicy = RetryPolicy {
        first_pause: Duration::from_millis(1),
        max_pause: Duration::from_millis(4),
    };

    #[test]
    fn a_write_that_finds_the_disk_full_is_made_again_and_the_log_continues() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let recovered = run({
            let dir = dir.clone();
            async move {
                let disk = FillingDisk {
                    inner: StorageDisk::new(DmaStorage, dir.clone()),
                    dir: dir.clone(),
                    full_writes: Cell::new(0),
                    failing_sync: Cell::new(false),
                };
                let (mut store, repairs, _) =
                    LogStore::recover(vec![1], None, None).expect("a new log");
                let mut hs = HardState::default();
                hs.term = 1;
                hs.vote = 1;
                let mut stalls = Vec::new();
                write(&disk, repairs, &mut stalls).await.expect("a new log");
                write(&disk, store.set_hard_state(hs), &mut stalls)
                    .await
                    .expect("hard state");
                write(&disk, store.append(&[entry(1, b"one")]), &mut stalls)
                    .await
                    .expect("first entry");
                // The disk fills: three attempts fail part way, the fourth finds room.
                disk.full_writes.set(3);
                write(
                    &disk,
                    store.append(&[entry(2, b"two, written on a disk that filled up")]),
                    &mut stalls,
                )
                .await
                .expect("the entry is written once there is room");
                assert_eq!(stalls, vec![1, 2, 3]);
                write(&disk, store.append(&[entry(3, b"three")]), &mut stalls)
                    .await
                    .expect("the log continues");
                store.entries_len()
            }
        });
        assert_eq!(recovered, 3);
        // What is on disk replays to the same log: nothing of the failed attempts is left.
        let log = std::fs::read(dir.join(LOG_FILE)).expect("read the log");
        let (back, repairs, report) =
            LogStore::recover(vec![1], Some(&log), None).expect("the log replays");
        assert_eq!(
            repairs,
            vec![DiskOp::Sync { file: LOG_FILE }],
            "no torn tail, only the sync of what was read"
        );
        assert_eq!(report.torn_bytes, 0);
        assert_eq!(back.last_index(), 3);
        assert_eq!(
            back.entry(2).map(|e| e.data.clone()),
            Some(Bytes::from_static(b"two, written on a disk that filled up"))
        );
        assert_eq!(back.hard_state().vote, 1);
    }

    #[test]
    fn a_failed_fdatasync_is_not_retried() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let outcome = run(async move {
            let disk = FillingDisk {
                inner: StorageDisk::new(DmaStorage, dir.clone()),
                dir,
                full_writes: Cell::new(0),
                failing_sync: Cell::new(true),
            };
            let (mut store, mut ops, _) =
                LogStore::recover(vec![1], None, None).expect("a new log");
            ops.extend(store.append(&[entry(1, b"one")]));
            ops.push(DiskOp::Sync { file: LOG_FILE });
            let mut stalls = 0;
            let result =
                perform_all(&disk, &ops, QUICK, glommio::timer::sleep, |_| stalls += 1).await;
            (
                result.map_err(|(op, e)| (op_name(op), e.raw_os_error())),
                stalls,
            )
        });
        assert_eq!(
            outcome,
            (Err((format!("fdatasync of {LOG_FILE}"), Some(5))), 0)
        );
    }
}
