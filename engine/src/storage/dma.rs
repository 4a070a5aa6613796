//! [`Storage`] on glommio: segments are O_DIRECT `DmaFile`s, small files are buffered files
//! written whole, and everything runs on the calling shard's executor. The only module of
//! the engine that names glommio's I/O types.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use glommio::io::{BufferedFile, DmaBuffer, DmaFile, OpenOptions};

use super::{AppendFile, DirEntry, OpenMode, SegmentFile, Storage, WriteBuffer, PAGE_BYTES};

/// Production storage: glommio on the calling thread's executor. A unit handle.
#[derive(Clone, Copy, Debug, Default)]
pub struct DmaStorage;

/// A segment file opened for direct I/O.
pub struct DmaSegmentFile {
    file: DmaFile,
}

fn io_error(
    context: impl FnOnce() -> String,
) -> impl FnOnce(glommio::GlommioError<()>) -> io::Error {
    move |err| {
        let err = io::Error::from(err);
        io::Error::new(err.kind(), format!("{}: {err}", context()))
    }
}

/// An io::Error that keeps the OS error code (so ENOSPC stays recognisable) with context.
fn with_context(err: glommio::GlommioError<()>, context: &str) -> io::Error {
    let err = io::Error::from(err);
    match err.raw_os_error() {
        Some(code) => {
            let os = io::Error::from_raw_os_error(code);
            io::Error::new(
                os.kind(),
                OsError {
                    code,
                    context: context.to_string(),
                },
            )
        }
        None => io::Error::new(err.kind(), format!("{context}: {err}")),
    }
}

/// An OS error with the operation it came from; `raw_os_error` of the wrapping error is
/// lost, so [`super::is_no_space`] also looks at the kind.
#[derive(Debug)]
struct OsError {
    code: i32,
    context: String,
}

impl std::fmt::Display for OsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.context,
            io::Error::from_raw_os_error(self.code)
        )
    }
}

impl std::error::Error for OsError {}

impl WriteBuffer for DmaBuffer {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.as_bytes_mut()
    }

    fn len(&self) -> usize {
        DmaBuffer::len(self)
    }
}

impl SegmentFile for DmaSegmentFile {
    type Buffer = DmaBuffer;

    fn alloc_buffer(&self, len: usize) -> DmaBuffer {
        // Not zeroed: the writer lays out every byte of it (zeroing it first was a second
        // pass over each write, about 8% of the append path's CPU).
        self.file.alloc_dma_buffer(len)
    }

    async fn write_at(&self, buf: DmaBuffer, pos: u64) -> io::Result<usize> {
        self.file
            .write_at(buf, pos)
            .await
            .map_err(|e| with_context(e, "segment write failed"))
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let start = super::align_down(pos);
        let skip = (pos - start) as usize;
        let aligned_len = super::align_up(skip as u64 + len as u64) as usize;
        let read = self
            .file
            .read_at_aligned(start, aligned_len)
            .await
            .map_err(|e| with_context(e, &format!("cannot read at {start}")))?;
        let available = read.len().saturating_sub(skip).min(len);
        Ok(read[skip..skip + available].to_vec())
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.file
            .fdatasync()
            .await
            .map_err(|e| with_context(e, "fdatasync failed"))
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.file
            .truncate(len)
            .await
            .map_err(|e| with_context(e, "truncate failed"))
    }

    async fn preallocate(&self, len: u64) -> io::Result<()> {
        self.file
            .pre_allocate(len, false)
            .await
            .map_err(|e| with_context(e, "preallocation failed"))
    }
}

/// A file written through the page cache (glommio's `BufferedFile`).
pub struct DmaAppendFile {
    file: BufferedFile,
}

impl AppendFile for DmaAppendFile {
    async fn write_at(&self, data: Vec<u8>, pos: u64) -> io::Result<usize> {
        self.file
            .write_at(data, pos)
            .await
            .map_err(|e| with_context(e, "write failed"))
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.file
            .fdatasync()
            .await
            .map_err(|e| with_context(e, "fdatasync failed"))
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.file
            .truncate(len)
            .await
            .map_err(|e| with_context(e, "truncate failed"))
    }

    async fn reserve(&self, len: u64) -> io::Result<()> {
        self.file
            .pre_allocate(len, true)
            .await
            .map_err(|e| with_context(e, "reservation failed"))
    }

    async fn size(&self) -> io::Result<u64> {
        self.file
            .file_size()
            .await
            .map_err(|e| with_context(e, "stat failed"))
    }
}

thread_local! {
    /// Devices on which this thread's executor already probed direct I/O.
    static PROBED_DEVICES: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Name of the scratch file of [`ensure_dma_reads_work`], used only when no file on the
/// device has data to probe with.
pub(crate) const DMA_PROBE_FILE: &str = ".wharf-dma-probe";

/// glommio decides once per thread and device whether a device supports polled I/O, by
/// reading the first `DmaFile` opened there. If that file is empty the read "succeeds"
/// without reaching the device, the device is taken as pollable, and every direct read then
/// fails with EOPNOTSUPP on devices that are not (virtio disks, most SATA). So the first
/// direct open on each device reads a file that has data: the file being opened if it has
/// some, else another one of its directory or the directory above (a segment, an index, a
/// checkpoint), and only when there is none a scratch file written for the purpose. A
/// broker on a full disk therefore starts without writing anything.
async fn ensure_dma_reads_work(path: &Path) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let device = std::fs::metadata(dir)?.dev();
    if PROBED_DEVICES.with(|p| p.borrow().contains(&device)) {
        return Ok(());
    }
    let candidate = std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file() && m.len() > 0)
        .map(|_| path.to_path_buf())
        .or_else(|| file_with_data(dir, device))
        .or_else(|| dir.parent().and_then(|up| file_with_data(up, device)));
    let (probe, scratch) = match candidate {
        Some(file) => (file, false),
        None => {
            let scratch = dir.join(DMA_PROBE_FILE);
            write_scratch(&scratch).await?;
            (scratch, true)
        }
    };
    let read = async {
        let file = DmaFile::open(&probe)
            .await
            .map_err(io_error(|| format!("cannot open {}", probe.display())))?;
        let read = file.read_at_aligned(0, PAGE_BYTES as usize).await;
        let _ = file.close().await;
        read.map(|_| ()).map_err(io::Error::from)
    }
    .await;
    if scratch {
        let _ = glommio::io::remove(&probe).await;
    }
    match read {
        Ok(()) => {
            PROBED_DEVICES.with(|p| p.borrow_mut().push(device));
            Ok(())
        }
        Err(err) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "direct reads fail on the device of {} ({err}); was a direct-I/O file opened on it on this thread before the storage engine?",
                dir.display(),
            ),
        )),
    }
}

/// A regular file with data in `dir` on `device`, if any (one directory listing).
fn file_with_data(dir: &Path, device: u64) -> Option<std::path::PathBuf> {
    std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let meta = entry.metadata().ok()?;
        (meta.is_file() && meta.len() > 0 && meta.dev() == device).then(|| entry.path())
    })
}

async fn write_scratch(path: &Path) -> io::Result<()> {
    let scratch = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .buffered_open(path)
        .await
        .map_err(io_error(|| format!("cannot create {}", path.display())))?;
    let written = scratch
        .write_at(vec![0u8; PAGE_BYTES as usize], 0)
        .await
        .map_err(io_error(|| format!("cannot write {}", path.display())));
    let _ = scratch.close().await;
    written.map(|_| ())
}

impl Storage for DmaStorage {
    type File = DmaSegmentFile;
    type AppendFile = DmaAppendFile;

    async fn open_append(&self, path: &Path) -> io::Result<DmaAppendFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .buffered_open(path)
            .await
            .map_err(|e| with_context(e, &format!("cannot open {}", path.display())))?;
        Ok(DmaAppendFile { file })
    }

    async fn open_segment(&self, path: &Path, mode: OpenMode) -> io::Result<DmaSegmentFile> {
        // Before the open: a file created by it is empty and must not be the probe.
        ensure_dma_reads_work(path).await?;
        let mut options = OpenOptions::new();
        options.read(true);
        match mode {
            OpenMode::Read => {}
            OpenMode::ReadWrite => {
                options.write(true);
            }
            OpenMode::Create => {
                options.write(true).create(true);
            }
        }
        let file = options
            .dma_open(path)
            .await
            .map_err(|e| with_context(e, &format!("cannot open {}", path.display())))?;
        Ok(DmaSegmentFile { file })
    }

    async fn read_file(&self, path: &Path, max_bytes: u64) -> io::Result<Option<Vec<u8>>> {
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

    async fn write_file(&self, path: &Path, data: Vec<u8>) -> io::Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .buffered_open(path)
            .await
            .map_err(|e| with_context(e, &format!("cannot create {}", path.display())))?;
        let result = async {
            if !data.is_empty() {
                file.write_at(data, 0)
                    .await
                    .map_err(|e| with_context(e, &format!("cannot write {}", path.display())))?;
            }
            file.fdatasync()
                .await
                .map_err(|e| with_context(e, &format!("cannot sync {}", path.display())))
        }
        .await;
        let closed = file
            .close()
            .await
            .map_err(|e| with_context(e, &format!("cannot close {}", path.display())));
        result.and(closed)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        glommio::io::rename(from, to)
            .await
            .map_err(|e| with_context(e, &format!("cannot rename {}", from.display())))
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
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

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let handle = glommio::io::Directory::open(dir)
            .await
            .map_err(io_error(|| format!("cannot open {}", dir.display())))?;
        let synced = handle
            .sync()
            .await
            .map_err(|e| with_context(e, &format!("cannot sync {}", dir.display())));
        let _ = handle.close().await;
        synced
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
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

    async fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        // One rmdir of an empty directory; glommio has no asynchronous one.
        std::fs::remove_dir(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot remove {}: {e}", dir.display())))
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        // Runs once per partition when the log is opened (glommio offers no asynchronous
        // directory listing).
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
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as i64);
            out.push(DirEntry {
                name,
                size_bytes: meta.len(),
                modified_ms,
            });
        }
        Ok(out)
    }

    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }

    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()>>>) {
        glommio::spawn_local(task).detach();
    }
}
