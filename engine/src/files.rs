//! File operations on the shard's glommio executor: the only module besides the write path
//! that names glommio's I/O types. Segment data goes through `DmaFile` (O_DIRECT); small
//! metadata files (indexes, checkpoints) through buffered files written to a temporary name,
//! synced and renamed, so a reader sees the old or the new content, never a mix.

use std::cell::RefCell;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{BufferedFile, DmaFile, OpenOptions};

/// Alignment of every direct-I/O write and read position.
pub(crate) const PAGE_BYTES: u64 = 4096;
/// Suffix of files being replaced; leftovers are removed on open.
pub(crate) const TMP_SUFFIX: &str = ".tmp";

pub(crate) fn align_down(value: u64) -> u64 {
    value & !(PAGE_BYTES - 1)
}

pub(crate) fn align_up(value: u64) -> u64 {
    align_down(value + PAGE_BYTES - 1)
}

pub(crate) fn io_error(
    context: impl FnOnce() -> String,
) -> impl FnOnce(glommio::GlommioError<()>) -> io::Error {
    move |err| {
        let err = io::Error::from(err);
        io::Error::new(err.kind(), format!("{}: {err}", context()))
    }
}

/// Name of the scratch file used by [`ensure_dma_reads_work`].
pub(crate) const DMA_PROBE_FILE: &str = ".wharf-dma-probe";

thread_local! {
    /// Devices on which this thread's executor already probed direct I/O.
    static PROBED_DEVICES: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// glommio decides once per thread and device whether a device supports polled I/O, by
/// reading the first `DmaFile` opened there. If that file is empty the read "succeeds"
/// without reaching the device, the device is taken as pollable, and every direct read
/// then fails with EOPNOTSUPP on devices that are not (virtio disks, most SATA). So the
/// first direct open on each device is of a scratch file that has data; then a read
/// checks the outcome.
pub(crate) async fn ensure_dma_reads_work(dir: &Path) -> io::Result<()> {
    let device = std::fs::metadata(dir)?.dev();
    if PROBED_DEVICES.with(|p| p.borrow().contains(&device)) {
        return Ok(());
    }
    let path = dir.join(DMA_PROBE_FILE);
    let scratch = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .buffered_open(&path)
        .await
        .map_err(io_error(|| format!("cannot create {}", path.display())))?;
    scratch
        .write_at(vec![0u8; PAGE_BYTES as usize], 0)
        .await
        .map_err(io_error(|| format!("cannot write {}", path.display())))?;
    scratch
        .fdatasync()
        .await
        .map_err(io_error(|| format!("cannot sync {}", path.display())))?;
    scratch
        .close()
        .await
        .map_err(io_error(|| format!("cannot close {}", path.display())))?;
    let file = DmaFile::open(&path)
        .await
        .map_err(io_error(|| format!("cannot open {}", path.display())))?;
    let read = file.read_at_aligned(0, PAGE_BYTES as usize).await;
    let _ = file.close().await;
    remove_file(&path).await?;
    match read {
        Ok(_) => {
            PROBED_DEVICES.with(|p| p.borrow_mut().push(device));
            Ok(())
        }
        Err(err) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "direct reads fail on the device of {} ({}); was a direct-I/O file opened on it on this thread before the storage engine?",
                dir.display(),
                io::Error::from(err)
            ),
        )),
    }
}

/// Opens a segment file for direct reads and writes, creating it if asked.
pub(crate) async fn open_dma(path: &Path, create: bool) -> io::Result<Rc<DmaFile>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .dma_open(path)
        .await
        .map_err(io_error(|| format!("cannot open {}", path.display())))?;
    Ok(Rc::new(file))
}

/// Opens a segment file for direct reads only.
pub(crate) async fn open_dma_read(path: &Path) -> io::Result<Rc<DmaFile>> {
    let file = DmaFile::open(path)
        .await
        .map_err(io_error(|| format!("cannot open {}", path.display())))?;
    Ok(Rc::new(file))
}

/// Reads `len` bytes at `pos` (any alignment) from a direct-I/O file; shorter at its end.
pub(crate) async fn read_dma(file: &DmaFile, pos: u64, len: usize) -> io::Result<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let start = align_down(pos);
    let skip = (pos - start) as usize;
    let aligned_len = align_up(skip as u64 + len as u64) as usize;
    let read = file
        .read_at_aligned(start, aligned_len)
        .await
        .map_err(io_error(|| format!("cannot read at {start}")))?;
    let available = read.len().saturating_sub(skip).min(len);
    Ok(read[skip..skip + available].to_vec())
}

/// The whole content of a small file, or `None` if it does not exist.
pub(crate) async fn read_small_file(path: &Path, max_bytes: u64) -> io::Result<Option<Vec<u8>>> {
    let file = match BufferedFile::open(path).await {
        Ok(file) => file,
        Err(err) => {
            let err = io::Error::from(err);
            return if err.kind() == io::ErrorKind::NotFound {
                Ok(None)
            } else {
                Err(err)
            };
        }
    };
    let size = file
        .file_size()
        .await
        .map_err(io_error(|| format!("cannot stat {}", path.display())))?;
    if size > max_bytes {
        let _ = file.close().await;
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is {size} bytes, more than {max_bytes}", path.display()),
        ));
    }
    let data = if size == 0 {
        Vec::new()
    } else {
        let read = file
            .read_at(0, size as usize)
            .await
            .map_err(io_error(|| format!("cannot read {}", path.display())))?;
        read.to_vec()
    };
    let _ = file.close().await;
    Ok(Some(data))
}

/// Replaces `path` with `data`: written to a temporary file, synced, renamed over `path`.
/// With `sync_dir`, the directory is synced too so the rename survives a machine crash.
pub(crate) async fn replace_file(path: &Path, data: Vec<u8>, sync_dir: bool) -> io::Result<()> {
    let tmp = tmp_path(path);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .buffered_open(&tmp)
        .await
        .map_err(io_error(|| format!("cannot create {}", tmp.display())))?;
    if !data.is_empty() {
        file.write_at(data, 0)
            .await
            .map_err(io_error(|| format!("cannot write {}", tmp.display())))?;
    }
    file.fdatasync()
        .await
        .map_err(io_error(|| format!("cannot sync {}", tmp.display())))?;
    file.close()
        .await
        .map_err(io_error(|| format!("cannot close {}", tmp.display())))?;
    glommio::io::rename(&tmp, path)
        .await
        .map_err(io_error(|| format!("cannot rename {}", tmp.display())))?;
    if sync_dir {
        if let Some(dir) = path.parent() {
            sync_dir_path(dir).await?;
        }
    }
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(TMP_SUFFIX);
    PathBuf::from(name)
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub(crate) async fn sync_dir_path(dir: &Path) -> io::Result<()> {
    let handle = glommio::io::Directory::open(dir)
        .await
        .map_err(io_error(|| format!("cannot open {}", dir.display())))?;
    handle
        .sync()
        .await
        .map_err(io_error(|| format!("cannot sync {}", dir.display())))?;
    let _ = handle.close().await;
    Ok(())
}

/// Creates the directory, and its missing parents, if it does not exist.
pub(crate) async fn create_dir(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
        .collect();
    for path in missing.into_iter().rev().chain(std::iter::once(dir)) {
        let handle = glommio::io::Directory::create(path)
            .await
            .map_err(io_error(|| format!("cannot create {}", path.display())))?;
        let _ = handle.close().await;
    }
    Ok(())
}

/// Removes a file; a file already gone is not an error.
pub(crate) async fn remove_file(path: &Path) -> io::Result<()> {
    match glommio::io::remove(path).await {
        Ok(()) => Ok(()),
        Err(err) => {
            let err = io::Error::from(err);
            if err.kind() == io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(io::Error::new(
                    err.kind(),
                    format!("cannot remove {}: {err}", path.display()),
                ))
            }
        }
    }
}

/// One file of a partition directory as listed on open.
pub(crate) struct DirEntry {
    pub name: String,
    pub size_bytes: u64,
    pub modified_ms: i64,
}

/// Lists a partition directory. Runs once per partition when the log is opened (glommio
/// offers no asynchronous directory listing).
pub(crate) fn list_dir(dir: &Path) -> io::Result<Vec<DirEntry>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot list {}: {e}", dir.display())))?
    {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        let modified_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        out.push(DirEntry {
            name,
            size_bytes: meta.len(),
            modified_ms,
        });
    }
    Ok(out)
}
