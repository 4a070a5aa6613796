//! Carrying out the metadata log's writes ([`DiskOp`]s) on this node's disk.
//!
//! The log store returns its writes as effects; [`MetadataDisk`] is the one place that
//! performs them, in order, durably. [`GlommioDisk`] does it with glommio's buffered files
//! on the controller's shard (the log is small and written rarely; its durability comes
//! from `fdatasync`, not from O_DIRECT). The storage engine's `Storage` abstraction, when it
//! lands, can take this over: the operations are the same (append, sync, atomic
//! replacement, truncation).
//!
//! Start-up reads the directory with [`read_metadata_dir`] on the main thread, before any
//! shard runs.

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};

use glommio::io::{BufferedFile, OpenOptions};

use crate::controller::log_store::DiskOp;

/// The metadata log's directory under the data directory (Kafka's name for it).
pub use crate::metadata::store::METADATA_LOG_DIR as METADATA_DIR;
/// Suffix of a file being replaced.
const TMP_SUFFIX: &str = ".tmp";

/// A glommio error as an I/O error (its text; glommio's carries a non-`Sync` payload).
fn gio<T>(e: glommio::GlommioError<T>) -> io::Error {
    io::Error::other(e.to_string())
}

/// Performs the metadata log's writes. A failed write or sync is never retried: the caller
/// stops the node (fsyncgate; docs/cluster.md).
#[allow(async_fn_in_trait)]
pub trait MetadataDisk {
    async fn perform(&self, op: &DiskOp) -> io::Result<()>;
}

/// The metadata directory on a real disk, through glommio.
pub struct GlommioDisk {
    dir: PathBuf,
    /// The log file, open for appends, and its length.
    log: RefCell<Option<(std::rc::Rc<BufferedFile>, &'static str, u64)>>,
}

impl GlommioDisk {
    pub fn new(dir: PathBuf) -> GlommioDisk {
        GlommioDisk {
            dir,
            log: RefCell::new(None),
        }
    }

    /// The file open for appends, opened (and its length read) on first use.
    async fn appender(&self, file: &'static str) -> io::Result<(std::rc::Rc<BufferedFile>, u64)> {
        if let Some((f, name, len)) = self.log.borrow().as_ref() {
            if *name == file {
                return Ok((f.clone(), *len));
            }
        }
        let f = OpenOptions::new()
            .write(true)
            .read(true)
            .create(true)
            .buffered_open(self.dir.join(file))
            .await
            .map_err(gio)?;
        let len = f.file_size().await.map_err(gio)?;
        let f = std::rc::Rc::new(f);
        *self.log.borrow_mut() = Some((f.clone(), file, len));
        Ok((f, len))
    }

    fn forget(&self, file: &str) {
        let mut log = self.log.borrow_mut();
        if log.as_ref().is_some_and(|(_, name, _)| *name == file) {
            *log = None;
        }
    }
}

async fn write_all(file: &BufferedFile, bytes: &[u8], mut pos: u64) -> io::Result<u64> {
    let mut at = 0;
    while at < bytes.len() {
        let n = file
            .write_at(bytes[at..].to_vec(), pos)
            .await
            .map_err(gio)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
        }
        at += n;
        pos += n as u64;
    }
    Ok(pos)
}

impl MetadataDisk for GlommioDisk {
    async fn perform(&self, op: &DiskOp) -> io::Result<()> {
        match op {
            DiskOp::Append { file, bytes } => {
                let (f, len) = self.appender(file).await?;
                let end = write_all(&f, bytes, len).await?;
                if let Some((_, _, l)) = self.log.borrow_mut().as_mut() {
                    *l = end;
                }
                Ok(())
            }
            DiskOp::Sync { file } => {
                let (f, _) = self.appender(file).await?;
                f.fdatasync().await.map_err(gio)
            }
            DiskOp::Replace { file, bytes } => {
                self.forget(file);
                let path = self.dir.join(file);
                let tmp = self.dir.join(format!("{file}{TMP_SUFFIX}"));
                let f = BufferedFile::create(&tmp).await.map_err(gio)?;
                write_all(&f, bytes, 0).await?;
                f.fdatasync().await.map_err(gio)?;
                f.close().await.map_err(gio)?;
                glommio::io::rename(&tmp, &path).await.map_err(gio)?;
                sync_dir(&self.dir).await
            }
            DiskOp::Truncate { file, len } => {
                let (f, _) = self.appender(file).await?;
                f.truncate(*len).await.map_err(gio)?;
                f.fdatasync().await.map_err(gio)?;
                if let Some((_, _, l)) = self.log.borrow_mut().as_mut() {
                    *l = *len;
                }
                Ok(())
            }
        }
    }
}

async fn sync_dir(dir: &Path) -> io::Result<()> {
    let d = glommio::io::Directory::open(dir).await.map_err(gio)?;
    d.sync().await.map_err(gio)?;
    d.close().await.map_err(gio)
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
                let tmp = dir.join(format!("{file}{TMP_SUFFIX}"));
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
