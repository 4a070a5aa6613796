//! A simulated disk: files and directories in memory, with what a real disk and file system
//! may do to them.
//!
//! Durability model (ext4-like, pessimistic where POSIX allows):
//! - A file's content as readers see it is its *durable* content with every completed,
//!   unsynced operation (write, size change, preallocation) applied in order.
//!   `fdatasync` makes durable every operation of that file that completed before it was
//!   issued.
//! - Directory entries (create, rename, remove, mkdir) are journaled in order; syncing a
//!   directory commits the journal up to the last entry that touched that directory. At a
//!   crash a random prefix of the uncommitted entries survives.
//! - At a crash, each unsynced operation of a file (writes in flight included) is lost,
//!   applied, or torn (only some of its 512-byte sectors persist), in a random order, so
//!   later writes may persist while earlier ones do not.
//!
//! Faults, each drawn from the disk's own seeded generator: a failed `fdatasync` (EIO;
//! the operations it covered are then made durable, kept pending or dropped, as after
//! PostgreSQL's "fsyncgate"), ENOSPC when a write or preallocation would pass the capacity
//! (a failed write may leave some of its sectors behind) or at random, reads that return
//! flipped bits in chosen sectors (once, or until the sector is rewritten), and damage to
//! stored bytes (bit rot). Every injected fault is recorded, so a checker can tell data
//! the engine lost from data the disk destroyed.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::runtime::{Completion, Runtime};
use super::Rng;

/// Sector size of the simulated device: the unit of torn writes and read faults.
pub const SECTOR_BYTES: u64 = 512;
/// Space is allocated in blocks of this size.
const BLOCK_BYTES: u64 = 4096;

const EIO: i32 = 5;
const ENOSPC: i32 = 28;
const EINVAL: i32 = 22;

/// Probabilities (per million operations) of the faults the disk injects on its own.
#[derive(Clone, Debug, Default)]
pub struct FaultConfig {
    /// An `fdatasync` of a segment or small file fails with EIO.
    pub fsync_eio_per_million: u32,
    /// A write or preallocation fails with ENOSPC although there is space.
    pub enospc_per_million: u32,
    /// A read of a segment returns a flipped bit in one of its sectors, once.
    pub transient_read_flip_per_million: u32,
    /// Only files whose name ends with one of these get read faults (empty: all).
    pub read_fault_suffixes: Vec<String>,
}

/// A fault the disk injected, for the checker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InjectedFault {
    /// `fdatasync` of `path` failed.
    FsyncFailed { path: PathBuf },
    /// A read of `path` returned flipped bits in the sector at `position` (once).
    TransientReadFlip { path: PathBuf, position: u64 },
    /// Reads of `path` return flipped bits in the sector at `position` until it is rewritten.
    BadSector { path: PathBuf, position: u64 },
    /// The stored byte at `position` of `path` was changed.
    Rot { path: PathBuf, position: u64 },
    /// `path` was deleted behind the log's back.
    Deleted { path: PathBuf },
}

#[derive(Clone, Debug)]
enum DataOp {
    Write {
        pos: u64,
        data: Vec<u8>,
    },
    SetLen(u64),
    /// Preallocation that extends the size with zeroes (fallocate without KEEP_SIZE).
    Extend(u64),
}

#[derive(Default)]
struct FileData {
    durable: Vec<u8>,
    live: Vec<u8>,
    /// Completed operations not yet durable: `(sequence, op)`, oldest first.
    pending: Vec<(u64, DataOp)>,
    next_seq: u64,
    modified_ms: i64,
    /// Sectors whose reads return flipped bits until rewritten.
    bad_sectors: BTreeSet<u64>,
    /// Sectors whose next read returns flipped bits.
    transient: BTreeSet<u64>,
    /// Sectors that already returned a transient fault: never again.
    flipped_once: BTreeSet<u64>,
    /// Byte ranges that just returned a transient fault, with how many more reads of the
    /// file they stay clear of new ones: the fault is transient, so reading the range
    /// again right away sees the truth (two independent faults on the same bytes in a row
    /// are too rare on real disks to model).
    recently_flipped: Vec<(u64, u64, u32)>,
    /// Space allocated beyond the size ([`SimAppendFile::reserve`], `FALLOC_FL_KEEP_SIZE`):
    /// counted as used, so writes into it fit on a full disk. A cut frees it.
    reserved_bytes: u64,
}

/// `WHARF_SIM_DISK_TRACE=<part of a path>`: print every operation on matching files (for
/// debugging a seed).
fn trace(path: &Path, what: impl FnOnce() -> String) {
    static FILTER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let filter = FILTER.get_or_init(|| std::env::var("WHARF_SIM_DISK_TRACE").ok());
    if let Some(f) = filter {
        if path.to_string_lossy().contains(f.as_str()) {
            println!("    disk {}: {}", path.display(), what());
        }
    }
}

fn apply(content: &mut Vec<u8>, op: &DataOp) {
    match op {
        DataOp::Write { pos, data } => {
            let end = *pos as usize + data.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[*pos as usize..end].copy_from_slice(data);
        }
        DataOp::SetLen(len) => content.resize(*len as usize, 0),
        DataOp::Extend(len) => {
            if content.len() < *len as usize {
                content.resize(*len as usize, 0);
            }
        }
    }
}

impl FileData {
    fn rebuild_live(&mut self) {
        let mut live = self.durable.clone();
        for (_, op) in &self.pending {
            apply(&mut live, op);
        }
        self.live = live;
    }

    fn complete(&mut self, op: DataOp, now_ms: i64) {
        if let DataOp::Write { pos, data } = &op {
            self.heal(*pos, data.len() as u64);
        }
        apply(&mut self.live, &op);
        if let DataOp::SetLen(len) = &op {
            self.forget_sectors_from(*len);
            self.reserved_bytes = self.reserved_bytes.min(*len);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push((seq, op));
        self.modified_ms = now_ms;
    }

    /// A rewritten sector reads back right: a bad sector is remapped on write.
    fn heal(&mut self, pos: u64, len: u64) {
        let first = pos / SECTOR_BYTES;
        let last = (pos + len).div_ceil(SECTOR_BYTES);
        for s in first..last {
            self.bad_sectors.remove(&s);
            self.transient.remove(&s);
        }
    }

    /// Sectors wholly past `len` are no longer the file's: a cut frees their blocks, and
    /// growing the file again (a write, a preallocation) gets fresh ones, so their read
    /// faults go with them. Without this a preallocated extent would read back as zeroes
    /// with a flipped bit where an old bad sector was, which no real disk does.
    fn forget_sectors_from(&mut self, len: u64) {
        let first_gone = len.div_ceil(SECTOR_BYTES);
        self.bad_sectors.retain(|s| *s < first_gone);
        self.transient.retain(|s| *s < first_gone);
        self.flipped_once.retain(|s| *s < first_gone);
        self.recently_flipped.retain(|(from, _, _)| *from < len);
    }

    fn sync_through(&mut self, seq: u64) {
        let (done, rest): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|(s, _)| *s < seq);
        for (_, op) in &done {
            apply(&mut self.durable, op);
        }
        self.pending = rest;
    }

    fn allocated_bytes(&self) -> u64 {
        (self.live.len() as u64)
            .max(self.reserved_bytes)
            .div_ceil(BLOCK_BYTES)
            * BLOCK_BYTES
    }
}

#[derive(Clone, Debug)]
enum NsOp {
    Link(PathBuf, u64),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
    MkDir(PathBuf),
    RmDir(PathBuf),
}

impl NsOp {
    fn touches(&self, dir: &Path) -> bool {
        let parent = |p: &PathBuf| p.parent() == Some(dir) || p == dir;
        match self {
            NsOp::Link(p, _) | NsOp::Unlink(p) | NsOp::MkDir(p) | NsOp::RmDir(p) => parent(p),
            NsOp::Rename(a, b) => parent(a) || parent(b),
        }
    }
}

#[derive(Clone, Default)]
struct Namespace {
    files: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
}

impl Namespace {
    fn apply(&mut self, op: &NsOp) {
        match op {
            NsOp::Link(p, inode) => {
                self.files.insert(p.clone(), *inode);
            }
            NsOp::Unlink(p) => {
                self.files.remove(p);
            }
            NsOp::Rename(a, b) => {
                if let Some(inode) = self.files.remove(a) {
                    self.files.insert(b.clone(), inode);
                }
            }
            NsOp::MkDir(p) => {
                self.dirs.insert(p.clone());
            }
            NsOp::RmDir(p) => {
                self.dirs.remove(p);
            }
        }
    }
}

struct DiskState {
    rng: Rng,
    faults: FaultConfig,
    capacity_bytes: u64,
    inodes: BTreeMap<u64, FileData>,
    next_inode: u64,
    live: Namespace,
    durable: Namespace,
    journal: Vec<NsOp>,
    /// Writes submitted and not completed: `(id, inode, pos, data)`.
    in_flight: Vec<(u64, u64, u64, Vec<u8>)>,
    next_io: u64,
    injected: Vec<InjectedFault>,
    /// When false, no fault is injected (a run's fault-free phases).
    faults_enabled: bool,
    /// Files whose next `fdatasync` fails.
    fail_next_sync: BTreeSet<PathBuf>,
}

impl DiskState {
    fn err(code: i32, what: impl std::fmt::Display) -> io::Error {
        let os = io::Error::from_raw_os_error(code);
        io::Error::new(os.kind(), format!("{what}: {os}"))
    }

    fn used_bytes(&self) -> u64 {
        self.live
            .files
            .values()
            .filter_map(|i| self.inodes.get(i))
            .map(FileData::allocated_bytes)
            .sum()
    }

    /// Whether growing `inode` to `new_len` bytes fits in the capacity.
    fn fits(&self, inode: u64, new_len: u64) -> bool {
        let current = self.inodes.get(&inode).map_or(0, FileData::allocated_bytes);
        let wanted = new_len.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        wanted <= current || self.used_bytes() + (wanted - current) <= self.capacity_bytes
    }

    /// Whether this `fdatasync` of `path` fails: armed by
    /// [`SimDisk::fail_next_fdatasync`], or drawn.
    fn sync_fails(&mut self, path: &Path) -> bool {
        if self.fail_next_sync.remove(path) {
            return true;
        }
        let p = self.faults.fsync_eio_per_million;
        self.faults_enabled && p > 0 && self.rng.chance(p)
    }

    fn random_enospc(&mut self) -> bool {
        let p = self.faults.enospc_per_million;
        self.faults_enabled && p > 0 && self.rng.chance(p)
    }

    fn journal(&mut self, op: NsOp) {
        match &op {
            NsOp::Link(p, i) => trace(p, || format!("create (inode {i})")),
            NsOp::Unlink(p) => trace(p, || "remove".into()),
            NsOp::Rename(a, b) => {
                trace(a, || format!("rename to {}", b.display()));
                trace(b, || format!("renamed from {}", a.display()));
            }
            _ => {}
        }
        self.live.apply(&op);
        self.journal.push(op);
    }

    fn parent_exists(&self, path: &Path) -> bool {
        path.parent()
            .is_none_or(|p| p.as_os_str().is_empty() || self.live.dirs.contains(p))
    }
}

/// Handle on a simulated disk; clones share it.
#[derive(Clone)]
pub struct SimDisk {
    state: Rc<RefCell<DiskState>>,
    rt: Runtime,
}

/// A file opened on a [`SimDisk`]: it keeps its inode, as an open descriptor would.
pub struct SimFile {
    disk: SimDisk,
    inode: u64,
    path: PathBuf,
    writable: bool,
}

/// A file opened on a [`SimDisk`] for writes through the page cache: writes at any
/// position and length, and space reserved beyond the end without changing the size. Its
/// writes follow the same crash rules as a segment's (lost, applied or torn in 512-byte
/// sectors of the file, in any order).
pub struct SimAppendFile {
    file: SimFile,
}

impl SimDisk {
    /// An empty disk of `capacity_bytes`, completing its operations on `rt`.
    pub fn new(rt: &Runtime, seed: u64, capacity_bytes: u64, faults: FaultConfig) -> SimDisk {
        SimDisk {
            state: Rc::new(RefCell::new(DiskState {
                rng: Rng::new(seed),
                faults,
                capacity_bytes,
                inodes: BTreeMap::new(),
                next_inode: 1,
                live: Namespace::default(),
                durable: Namespace::default(),
                journal: Vec::new(),
                in_flight: Vec::new(),
                next_io: 0,
                injected: Vec::new(),
                faults_enabled: true,
                fail_next_sync: BTreeSet::new(),
            })),
            rt: rt.clone(),
        }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// Attaches the disk to another runtime (the process restarted after a crash).
    pub fn attach(&mut self, rt: &Runtime) {
        self.rt = rt.clone();
    }

    pub fn set_capacity(&self, capacity_bytes: u64) {
        self.state.borrow_mut().capacity_bytes = capacity_bytes;
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.state.borrow().capacity_bytes
    }

    pub fn used_bytes(&self) -> u64 {
        self.state.borrow().used_bytes()
    }

    pub fn faults_enabled(&self) -> bool {
        self.state.borrow().faults_enabled
    }

    pub fn set_faults_enabled(&self, enabled: bool) {
        self.state.borrow_mut().faults_enabled = enabled;
    }

    pub fn faults(&self) -> FaultConfig {
        self.state.borrow().faults.clone()
    }

    pub fn set_faults(&self, faults: FaultConfig) {
        self.state.borrow_mut().faults = faults;
    }

    /// Every fault injected so far, oldest first.
    pub fn injected(&self) -> Vec<InjectedFault> {
        self.state.borrow().injected.clone()
    }

    /// Files (live view) under `dir`, with their sizes.
    pub fn files_in(&self, dir: &Path) -> Vec<(PathBuf, u64)> {
        let st = self.state.borrow();
        st.live
            .files
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, i)| {
                (
                    p.clone(),
                    st.inodes.get(i).map_or(0, |f| f.live.len() as u64),
                )
            })
            .collect()
    }

    /// The live content of a file, without faults.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.state.borrow();
        let inode = st.live.files.get(path)?;
        st.inodes.get(inode).map(|f| f.live.clone())
    }

    /// The durable content of a file: what a crash of the machine now would leave of it
    /// at least (`None` if its directory entry is not durable).
    pub fn durable_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.state.borrow();
        let inode = st.durable.files.get(path)?;
        st.inodes.get(inode).map(|f| f.durable.clone())
    }

    /// Reads of the sector holding `position` return flipped bits: once when
    /// `persistent` is false, else until the sector is rewritten.
    pub fn inject_read_fault(&self, path: &Path, position: u64, persistent: bool) -> bool {
        let mut st = self.state.borrow_mut();
        let Some(&inode) = st.live.files.get(path) else {
            return false;
        };
        let sector = position / SECTOR_BYTES;
        let Some(file) = st.inodes.get_mut(&inode) else {
            return false;
        };
        if position >= file.live.len() as u64 {
            return false;
        }
        if persistent {
            file.bad_sectors.insert(sector);
        } else if !file.flipped_once.contains(&sector) {
            file.transient.insert(sector);
        } else {
            return false;
        }
        let fault = if persistent {
            InjectedFault::BadSector {
                path: path.to_path_buf(),
                position,
            }
        } else {
            InjectedFault::TransientReadFlip {
                path: path.to_path_buf(),
                position,
            }
        };
        st.injected.push(fault);
        true
    }

    /// The next `fdatasync` of `path` (of a segment, or of a small file written whole)
    /// fails with EIO, whatever the fault configuration says; what it covered is then
    /// made durable, kept in the cache or dropped, as after any failed one.
    pub fn fail_next_fdatasync(&self, path: &Path) {
        self.state
            .borrow_mut()
            .fail_next_sync
            .insert(path.to_path_buf());
    }

    /// Changes the stored byte at `position` (live and durable): bit rot.
    pub fn rot(&self, path: &Path, position: u64, xor: u8) -> bool {
        let mut st = self.state.borrow_mut();
        let Some(&inode) = st.live.files.get(path) else {
            return false;
        };
        let Some(file) = st.inodes.get_mut(&inode) else {
            return false;
        };
        let at = position as usize;
        if at >= file.live.len() || xor == 0 {
            return false;
        }
        file.live[at] ^= xor;
        if at < file.durable.len() {
            file.durable[at] ^= xor;
        }
        for (_, op) in file.pending.iter_mut() {
            if let DataOp::Write { pos, data } = op {
                if at >= *pos as usize && at < *pos as usize + data.len() {
                    data[at - *pos as usize] ^= xor;
                }
            }
        }
        st.injected.push(InjectedFault::Rot {
            path: path.to_path_buf(),
            position,
        });
        true
    }

    /// Deletes a file durably, as an operator would (the log must be closed).
    pub fn delete(&self, path: &Path) -> bool {
        let mut st = self.state.borrow_mut();
        if !st.live.files.contains_key(path) {
            return false;
        }
        st.journal(NsOp::Unlink(path.to_path_buf()));
        let journal = std::mem::take(&mut st.journal);
        for op in &journal {
            st.durable.apply(op);
        }
        st.injected.push(InjectedFault::Deleted {
            path: path.to_path_buf(),
        });
        true
    }

    /// A crash of the machine: what was not made durable is lost, torn or reordered, and
    /// what is left becomes the disk's content. Writes in flight count as unsynced.
    pub fn crash(&self) {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        // Directory entries: a random prefix of the journal survives.
        let keep = st.rng.range(0, st.journal.len() as u64) as usize;
        let journal = std::mem::take(&mut st.journal);
        for op in &journal[..keep] {
            st.durable.apply(op);
        }
        for op in &journal[keep..] {
            if let NsOp::Link(p, _) | NsOp::Unlink(p) | NsOp::Rename(p, _) = op {
                trace(p, || format!("crash: directory entry change lost ({op:?})"));
            }
        }
        st.live = st.durable.clone();
        // Writes in flight are unsynced writes too.
        for (_, inode, pos, data) in std::mem::take(&mut st.in_flight) {
            if let Some(file) = st.inodes.get_mut(&inode) {
                let seq = file.next_seq;
                file.next_seq += 1;
                file.pending.push((seq, DataOp::Write { pos, data }));
            }
        }
        let names: BTreeMap<u64, PathBuf> = st
            .durable
            .files
            .iter()
            .map(|(p, i)| (*i, p.clone()))
            .collect();
        let inodes: Vec<u64> = st.inodes.keys().copied().collect();
        for inode in inodes {
            let name = names.get(&inode).cloned().unwrap_or_default();
            let Some(file) = st.inodes.get_mut(&inode) else {
                continue;
            };
            let mut pending = std::mem::take(&mut file.pending);
            // Out of order: shuffle, then each op is lost, torn or kept.
            for i in (1..pending.len()).rev() {
                let j = st.rng.below(i as u64 + 1) as usize;
                pending.swap(i, j);
            }
            for (_, op) in pending {
                let fate = st.rng.below(3);
                trace(&name, || {
                    let what = match &op {
                        DataOp::Write { pos, data } => format!("write {pos}+{}", data.len()),
                        DataOp::SetLen(l) => format!("setlen {l}"),
                        DataOp::Extend(l) => format!("extend {l}"),
                    };
                    format!("crash: {what} {}", ["lost", "kept", "torn"][fate as usize])
                });
                match fate {
                    0 => {}
                    1 => {
                        // A write in flight that reached the device heals what it wrote.
                        if let DataOp::Write { pos, data } = &op {
                            file.heal(*pos, data.len() as u64);
                        }
                        apply(&mut file.durable, &op)
                    }
                    _ => match op {
                        DataOp::Write { pos, data } => {
                            // Torn along the file's sectors (a write at an unaligned
                            // position straddles them).
                            let first = pos / SECTOR_BYTES;
                            let end = pos + data.len() as u64;
                            let sectors = end.div_ceil(SECTOR_BYTES) - first;
                            let prefix = st.rng.coin();
                            let cut = st.rng.below(sectors + 1);
                            for s in 0..sectors {
                                let persists = if prefix { s < cut } else { st.rng.coin() };
                                if persists {
                                    let from =
                                        (((first + s) * SECTOR_BYTES).max(pos) - pos) as usize;
                                    let to =
                                        (((first + s + 1) * SECTOR_BYTES).min(end) - pos) as usize;
                                    file.heal(pos + from as u64, (to - from) as u64);
                                    apply(
                                        &mut file.durable,
                                        &DataOp::Write {
                                            pos: pos + from as u64,
                                            data: data[from..to].to_vec(),
                                        },
                                    );
                                }
                            }
                        }
                        other => apply(&mut file.durable, &other),
                    },
                }
            }
            file.live = file.durable.clone();
            file.transient.clear();
            // What the crash cut off (an unsynced extension lost) is no longer the file's.
            let len = file.live.len() as u64;
            file.forget_sectors_from(len);
        }
        // Inodes no longer named anywhere are gone.
        let named: BTreeSet<u64> = st.durable.files.values().copied().collect();
        st.inodes.retain(|i, _| named.contains(i));
    }

    /// Runs `f` on the disk state when the runtime completes the operation.
    fn op<T: 'static>(
        &self,
        f: impl FnOnce(&mut DiskState, i64) -> io::Result<T> + 'static,
    ) -> Completion<io::Result<T>> {
        let (done, slot) = Completion::new();
        let state = self.state.clone();
        let rt = self.rt.clone();
        self.rt.submit(Box::new(move || {
            let result = f(&mut state.borrow_mut(), rt.now_ms());
            slot.complete(result);
        }));
        done
    }

    pub(crate) async fn open(
        &self,
        path: &Path,
        writable: bool,
        create: bool,
    ) -> io::Result<SimFile> {
        let path_buf = path.to_path_buf();
        let inode = self
            .op(move |st, _| {
                if let Some(&inode) = st.live.files.get(&path_buf) {
                    return Ok(inode);
                }
                if !create {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("cannot open {}: no such file", path_buf.display()),
                    ));
                }
                if !st.parent_exists(&path_buf) {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("cannot create {}: no such directory", path_buf.display()),
                    ));
                }
                let inode = st.next_inode;
                st.next_inode += 1;
                st.inodes.insert(inode, FileData::default());
                st.journal(NsOp::Link(path_buf.clone(), inode));
                Ok(inode)
            })
            .await?;
        Ok(SimFile {
            disk: self.clone(),
            inode,
            path: path.to_path_buf(),
            writable,
        })
    }

    pub(crate) async fn read_file(
        &self,
        path: &Path,
        max_bytes: u64,
    ) -> io::Result<Option<Vec<u8>>> {
        let path = path.to_path_buf();
        self.op(move |st, _| {
            let Some(inode) = st.live.files.get(&path) else {
                return Ok(None);
            };
            let data = st
                .inodes
                .get(inode)
                .map(|f| f.live.clone())
                .unwrap_or_default();
            if data.len() as u64 > max_bytes {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is {} bytes, more than {max_bytes}",
                        path.display(),
                        data.len()
                    ),
                ));
            }
            Ok(Some(data))
        })
        .await
    }

    pub(crate) async fn write_file(&self, path: &Path, data: Vec<u8>) -> io::Result<()> {
        let path = path.to_path_buf();
        self.op(move |st, now| {
            if !st.parent_exists(&path) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("cannot create {}: no such directory", path.display()),
                ));
            }
            let existing = st.live.files.get(&path).copied();
            let inode = existing.unwrap_or(u64::MAX);
            if !st.fits(inode, data.len() as u64) || st.random_enospc() {
                return Err(DiskState::err(
                    ENOSPC,
                    format!("cannot write {}", path.display()),
                ));
            }
            let inode = match existing {
                Some(inode) => inode,
                None => {
                    let inode = st.next_inode;
                    st.next_inode += 1;
                    st.inodes.insert(inode, FileData::default());
                    st.journal(NsOp::Link(path.clone(), inode));
                    inode
                }
            };
            let eio = st.sync_fails(&path);
            let file = st.inodes.get_mut(&inode).expect("linked inodes exist");
            file.complete(DataOp::SetLen(0), now);
            file.complete(DataOp::Write { pos: 0, data }, now);
            if eio {
                st.injected
                    .push(InjectedFault::FsyncFailed { path: path.clone() });
                return Err(DiskState::err(
                    EIO,
                    format!("cannot sync {}", path.display()),
                ));
            }
            let seq = file.next_seq;
            file.sync_through(seq);
            Ok(())
        })
        .await
    }

    pub(crate) async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (from.to_path_buf(), to.to_path_buf());
        self.op(move |st, _| {
            if !st.live.files.contains_key(&from) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("cannot rename {}: no such file", from.display()),
                ));
            }
            st.journal(NsOp::Rename(from, to));
            Ok(())
        })
        .await
    }

    pub(crate) async fn remove_file(&self, path: &Path) -> io::Result<()> {
        let path = path.to_path_buf();
        self.op(move |st, _| {
            if st.live.files.contains_key(&path) {
                st.journal(NsOp::Unlink(path));
            }
            Ok(())
        })
        .await
    }

    pub(crate) async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let dir = dir.to_path_buf();
        self.op(move |st, _| {
            if !st.live.dirs.contains(&dir) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("cannot sync {}: no such directory", dir.display()),
                ));
            }
            if let Some(last) = st.journal.iter().rposition(|op| op.touches(&dir)) {
                let committed: Vec<NsOp> = st.journal.drain(..=last).collect();
                for op in &committed {
                    st.durable.apply(op);
                }
            }
            Ok(())
        })
        .await
    }

    pub(crate) async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let dir = dir.to_path_buf();
        self.op(move |st, _| {
            let missing: Vec<PathBuf> = dir
                .ancestors()
                .take_while(|p| !p.as_os_str().is_empty() && !st.live.dirs.contains(*p))
                .map(Path::to_path_buf)
                .collect();
            for p in missing.into_iter().rev() {
                st.journal(NsOp::MkDir(p));
            }
            Ok(())
        })
        .await
    }

    pub(crate) async fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        let dir = dir.to_path_buf();
        self.op(move |st, _| {
            if st.live.files.keys().any(|p| p.parent() == Some(&dir)) {
                return Err(io::Error::new(
                    io::ErrorKind::DirectoryNotEmpty,
                    format!("cannot remove {}: not empty", dir.display()),
                ));
            }
            st.journal(NsOp::RmDir(dir));
            Ok(())
        })
        .await
    }

    pub(crate) fn list_dir(&self, dir: &Path) -> io::Result<Vec<crate::storage::DirEntry>> {
        let st = self.state.borrow();
        if !st.live.dirs.contains(dir) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("cannot list {}: no such directory", dir.display()),
            ));
        }
        Ok(st
            .live
            .files
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .filter_map(|(p, inode)| {
                let file = st.inodes.get(inode)?;
                Some(crate::storage::DirEntry {
                    name: p.file_name()?.to_str()?.to_string(),
                    size_bytes: file.live.len() as u64,
                    modified_ms: file.modified_ms,
                })
            })
            .collect())
    }
}

impl SimFile {
    pub(crate) async fn write_at(&self, data: Vec<u8>, pos: u64) -> io::Result<usize> {
        self.write(data, pos, true).await
    }

    /// A direct write (aligned, as O_DIRECT wants) or one through the page cache.
    async fn write(&self, data: Vec<u8>, pos: u64, direct: bool) -> io::Result<usize> {
        if !self.writable {
            return Err(DiskState::err(
                9,
                format!("{} is open read-only", self.path.display()),
            ));
        }
        if direct
            && (!pos.is_multiple_of(BLOCK_BYTES)
                || !(data.len() as u64).is_multiple_of(BLOCK_BYTES))
        {
            return Err(DiskState::err(
                EINVAL,
                format!("unaligned direct write of {} bytes at {pos}", data.len()),
            ));
        }
        let (inode, path) = (self.inode, self.path.clone());
        let id = {
            let mut st = self.disk.state.borrow_mut();
            let id = st.next_io;
            st.next_io += 1;
            st.in_flight.push((id, inode, pos, data.clone()));
            id
        };
        self.disk
            .op(move |st, now| {
                st.in_flight.retain(|(i, ..)| *i != id);
                let len = data.len();
                let end = pos + len as u64;
                let fits = st.fits(
                    inode,
                    end.max(st.inodes.get(&inode).map_or(0, |f| f.live.len() as u64)),
                );
                if !fits || st.random_enospc() {
                    // A failed write may leave some of its sectors (through the page
                    // cache: some of its bytes) behind.
                    let keep = if direct {
                        let sectors = len as u64 / SECTOR_BYTES;
                        st.rng.below(sectors + 1) * SECTOR_BYTES
                    } else {
                        st.rng.below(len as u64 + 1)
                    };
                    if keep > 0 && st.fits(inode, pos + keep) {
                        if let Some(file) = st.inodes.get_mut(&inode) {
                            file.complete(
                                DataOp::Write {
                                    pos,
                                    data: data[..keep as usize].to_vec(),
                                },
                                now,
                            );
                        }
                    }
                    return Err(DiskState::err(
                        ENOSPC,
                        format!("write to {} failed", path.display()),
                    ));
                }
                let file = st
                    .inodes
                    .get_mut(&inode)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the file is gone"))?;
                trace(&path, || format!("write {pos}+{len}"));
                file.complete(DataOp::Write { pos, data }, now);
                Ok(len)
            })
            .await
    }

    pub(crate) async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let (inode, path) = (self.inode, self.path.clone());
        self.disk
            .op(move |st, _| {
                let faults_enabled = st.faults_enabled;
                let transient_p = st.faults.transient_read_flip_per_million;
                let faulty_name = st.faults.read_fault_suffixes.is_empty()
                    || st
                        .faults
                        .read_fault_suffixes
                        .iter()
                        .any(|s| path.to_string_lossy().ends_with(s.as_str()));
                let draw =
                    faults_enabled && faulty_name && transient_p > 0 && st.rng.chance(transient_p);
                let pick = st.rng.next_u64();
                let file = st
                    .inodes
                    .get_mut(&inode)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the file is gone"))?;
                let start = (pos as usize).min(file.live.len());
                let end = (pos as usize + len).min(file.live.len());
                let mut out = file.live[start..end].to_vec();
                let read_end = pos + out.len() as u64;
                let clear = file
                    .recently_flipped
                    .iter()
                    .any(|(from, to, _)| pos < *to && *from < read_end);
                file.recently_flipped.retain_mut(|(_, _, left)| {
                    *left -= 1;
                    *left > 0
                });
                if out.is_empty() {
                    return Ok(out);
                }
                let first = pos / SECTOR_BYTES;
                let last = (pos + out.len() as u64).div_ceil(SECTOR_BYTES);
                let mut new_fault = None;
                if draw && !clear {
                    let sector = first + pick % (last - first);
                    if !file.flipped_once.contains(&sector) {
                        file.transient.insert(sector);
                        new_fault = Some(sector);
                    }
                }
                for sector in first..last {
                    let bad = file.bad_sectors.contains(&sector);
                    let once = file.transient.remove(&sector);
                    if once {
                        file.flipped_once.insert(sector);
                        file.recently_flipped
                            .push((pos, pos + out.len() as u64, 16));
                    }
                    if bad || once {
                        // Flip one bit inside the part of the sector that was read.
                        let s_from = (sector * SECTOR_BYTES).max(pos) - pos;
                        let s_to = ((sector + 1) * SECTOR_BYTES).min(pos + out.len() as u64) - pos;
                        let at = s_from + (sector.wrapping_mul(2_654_435_761) % (s_to - s_from));
                        out[at as usize] ^= 1 << (sector % 8);
                    }
                }
                trace(&path, || {
                    format!(
                        "read {pos}+{}{}",
                        out.len(),
                        match new_fault {
                            Some(s) => format!(" (flipped sector {s})"),
                            None => String::new(),
                        }
                    )
                });
                if let Some(sector) = new_fault {
                    st.injected.push(InjectedFault::TransientReadFlip {
                        path: path.clone(),
                        position: sector * SECTOR_BYTES,
                    });
                }
                Ok(out)
            })
            .await
    }

    pub(crate) async fn fdatasync(&self) -> io::Result<()> {
        let (inode, path) = (self.inode, self.path.clone());
        // Covers what completed before the call was issued.
        let through = {
            let st = self.disk.state.borrow();
            st.inodes.get(&inode).map_or(0, |f| f.next_seq)
        };
        self.disk
            .op(move |st, _| {
                if st.sync_fails(&path) {
                    trace(&path, || format!("fdatasync through {through}: EIO"));
                    st.injected
                        .push(InjectedFault::FsyncFailed { path: path.clone() });
                    let DiskState { rng, inodes, .. } = st;
                    if let Some(file) = inodes.get_mut(&inode) {
                        // The covered operations are written, kept in the cache, or dropped.
                        let pending = std::mem::take(&mut file.pending);
                        let mut kept = Vec::new();
                        for (seq, op) in pending {
                            if seq >= through {
                                kept.push((seq, op));
                                continue;
                            }
                            let fate = rng.below(3);
                            trace(&path, || {
                                format!(
                                    "  op {seq} {}",
                                    ["made durable", "kept", "dropped"][fate as usize]
                                )
                            });
                            match fate {
                                0 => {
                                    apply(&mut file.durable, &op);
                                    // An older operation still in the cache must not end
                                    // up over this one when it is written later: a page
                                    // holds its newest content, so this one goes again
                                    // after it.
                                    if !kept.is_empty() {
                                        kept.push((seq, op));
                                    }
                                }
                                1 => kept.push((seq, op)),
                                _ => {}
                            }
                        }
                        file.pending = kept;
                        file.rebuild_live();
                        let len = file.live.len() as u64;
                        file.forget_sectors_from(len);
                    }
                    return Err(DiskState::err(
                        EIO,
                        format!("fdatasync of {} failed", path.display()),
                    ));
                }
                trace(&path, || format!("fdatasync through {through}"));
                if let Some(file) = st.inodes.get_mut(&inode) {
                    file.sync_through(through);
                }
                Ok(())
            })
            .await
    }

    pub(crate) async fn truncate(&self, len: u64) -> io::Result<()> {
        let inode = self.inode;
        let path = self.path.clone();
        self.disk
            .op(move |st, now| {
                trace(&path, || format!("truncate {len}"));
                let file = st
                    .inodes
                    .get_mut(&inode)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the file is gone"))?;
                file.complete(DataOp::SetLen(len), now);
                Ok(())
            })
            .await
    }

    pub(crate) async fn preallocate(&self, len: u64) -> io::Result<()> {
        let (inode, path) = (self.inode, self.path.clone());
        self.disk
            .op(move |st, now| {
                if !st.fits(inode, len) || st.random_enospc() {
                    return Err(DiskState::err(
                        ENOSPC,
                        format!("preallocation of {} failed", path.display()),
                    ));
                }
                let file = st
                    .inodes
                    .get_mut(&inode)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the file is gone"))?;
                trace(&path, || format!("preallocate {len}"));
                file.complete(DataOp::Extend(len), now);
                Ok(())
            })
            .await
    }
}

impl SimAppendFile {
    pub(crate) fn new(file: SimFile) -> SimAppendFile {
        SimAppendFile { file }
    }

    pub(crate) async fn write_at(&self, data: Vec<u8>, pos: u64) -> io::Result<usize> {
        self.file.write(data, pos, false).await
    }

    pub(crate) async fn fdatasync(&self) -> io::Result<()> {
        self.file.fdatasync().await
    }

    pub(crate) async fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.truncate(len).await
    }

    pub(crate) async fn reserve(&self, len: u64) -> io::Result<()> {
        let (inode, path) = (self.file.inode, self.file.path.clone());
        self.file
            .disk
            .op(move |st, _| {
                if !st.fits(inode, len) || st.random_enospc() {
                    return Err(DiskState::err(
                        ENOSPC,
                        format!("reservation for {} failed", path.display()),
                    ));
                }
                let file = st
                    .inodes
                    .get_mut(&inode)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the file is gone"))?;
                trace(&path, || format!("reserve {len}"));
                file.reserved_bytes = file.reserved_bytes.max(len);
                Ok(())
            })
            .await
    }

    pub(crate) async fn size(&self) -> io::Result<u64> {
        let inode = self.file.inode;
        self.file
            .disk
            .op(move |st, _| {
                st.inodes
                    .get(&inode)
                    .map(|f| f.live.len() as u64)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the file is gone"))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T: 'static>(rt: &Runtime, fut: impl std::future::Future<Output = T> + 'static) -> T {
        let result = rt.spawn_with_result(fut);
        rt.run_until_stalled();
        result.take().expect("the task finished")
    }

    #[test]
    fn synced_writes_survive_a_crash_and_unsynced_ones_may_not() {
        for seed in 0..50 {
            let rt = Runtime::new(seed);
            let disk = SimDisk::new(&rt, seed, 1 << 20, FaultConfig::default());
            let d = disk.clone();
            run(&rt, async move {
                d.create_dir_all(Path::new("/d")).await.expect("mkdir");
                d.sync_dir(Path::new("/")).await.expect("sync");
                let f = d.open(Path::new("/d/f"), true, true).await.expect("open");
                d.sync_dir(Path::new("/d")).await.expect("sync");
                f.write_at(vec![1; 4096], 0).await.expect("write");
                f.fdatasync().await.expect("sync");
                f.write_at(vec![2; 8192], 4096).await.expect("write");
            });
            disk.crash();
            let data = disk
                .contents(Path::new("/d/f"))
                .expect("the synced file survives");
            assert_eq!(&data[..4096], &[1; 4096][..], "seed {seed}");
            assert!(data[4096..].iter().all(|b| *b == 0 || *b == 2));
        }
    }

    #[test]
    fn a_full_disk_refuses_writes_until_space_is_freed() {
        let rt = Runtime::new(3);
        let disk = SimDisk::new(&rt, 3, 8192, FaultConfig::default());
        let d = disk.clone();
        let results = run(&rt, async move {
            d.create_dir_all(Path::new("/d")).await.expect("mkdir");
            let f = d.open(Path::new("/d/f"), true, true).await.expect("open");
            let a = f.write_at(vec![1; 8192], 0).await.is_ok();
            let b = f.write_at(vec![1; 4096], 8192).await;
            (a, b.map_err(|e| is_enospc(&e)))
        });
        assert_eq!(results, (true, Err(true)));
        disk.set_capacity(1 << 20);
        let d = disk.clone();
        assert!(run(&rt, async move {
            let f = d.open(Path::new("/d/f"), true, false).await.expect("open");
            f.write_at(vec![1; 4096], 8192).await.is_ok()
        }));
    }

    fn is_enospc(e: &io::Error) -> bool {
        crate::storage::is_no_space(e)
    }

    #[test]
    fn read_faults_flip_bits_once_or_until_rewritten() {
        let rt = Runtime::new(9);
        let disk = SimDisk::new(&rt, 9, 1 << 20, FaultConfig::default());
        let d = disk.clone();
        let f = run(&rt, async move {
            d.create_dir_all(Path::new("/d")).await.expect("mkdir");
            let f = d.open(Path::new("/d/f"), true, true).await.expect("open");
            f.write_at(vec![7; 4096], 0).await.expect("write");
            f
        });
        let f = Rc::new(f);
        assert!(disk.inject_read_fault(Path::new("/d/f"), 100, false));
        assert!(disk.inject_read_fault(Path::new("/d/f"), 2000, true));
        let g = f.clone();
        let (first, second) = run(&rt, async move {
            (
                g.read_at(0, 4096).await.expect("read"),
                g.read_at(0, 4096).await.expect("read"),
            )
        });
        let diff = |v: &[u8]| v.iter().filter(|b| **b != 7).count();
        assert_eq!((diff(&first), diff(&second)), (2, 1));
        let g = f.clone();
        let third = run(&rt, async move {
            g.write_at(vec![7; 4096], 0).await.expect("write");
            g.read_at(0, 4096).await.expect("read")
        });
        assert_eq!(diff(&third), 0, "a rewrite heals a bad sector");
    }

    #[test]
    fn a_failed_fdatasync_never_shows_older_data_over_what_it_made_durable() {
        let mut made_durable = 0;
        for seed in 0..64 {
            let rt = Runtime::new(seed);
            let disk = SimDisk::new(&rt, seed, 1 << 20, FaultConfig::default());
            let d = disk.clone();
            let path = Path::new("/d/f");
            run(&rt, async move {
                d.create_dir_all(Path::new("/d")).await.expect("mkdir");
                let f = d.open(path, true, true).await.expect("open");
                f.write_at(vec![1; 4096], 0).await.expect("write");
                f.write_at(vec![2; 4096], 0).await.expect("write");
                d.fail_next_fdatasync(path);
                assert!(f.fdatasync().await.is_err(), "the armed fdatasync fails");
            });
            let durable = {
                let st = disk.state.borrow();
                let inode = st.live.files[path];
                st.inodes[&inode].durable.clone()
            };
            if durable.first() == Some(&2) {
                made_durable += 1;
                let live = disk.contents(path).expect("the file");
                assert_eq!(live[0], 2, "seed {seed}: the page holds its newest content");
            }
        }
        assert!(
            made_durable > 0,
            "some failed fdatasync wrote the newest write"
        );
    }

    #[test]
    fn a_cut_takes_the_faults_of_the_sectors_it_frees() {
        let rt = Runtime::new(5);
        let disk = SimDisk::new(&rt, 5, 1 << 20, FaultConfig::default());
        let d = disk.clone();
        let f = Rc::new(run(&rt, async move {
            d.create_dir_all(Path::new("/d")).await.expect("mkdir");
            let f = d.open(Path::new("/d/f"), true, true).await.expect("open");
            f.write_at(vec![7; 8192], 0).await.expect("write");
            f
        }));
        assert!(disk.inject_read_fault(Path::new("/d/f"), 100, true));
        assert!(disk.inject_read_fault(Path::new("/d/f"), 6000, true));
        let g = f.clone();
        let (kept, regrown) = run(&rt, async move {
            g.truncate(4096).await.expect("truncate");
            g.preallocate(8192).await.expect("preallocate");
            (
                g.read_at(0, 4096).await.expect("read"),
                g.read_at(4096, 4096).await.expect("read"),
            )
        });
        assert_eq!(
            kept.iter().filter(|b| **b != 7).count(),
            1,
            "below the cut it stays bad"
        );
        assert!(
            regrown.iter().all(|b| *b == 0),
            "space allocated again past a cut reads as zeroes"
        );
    }

    #[test]
    fn a_crash_that_loses_an_extension_takes_its_faults() {
        let mut lost = 0;
        for seed in 0..40 {
            let rt = Runtime::new(seed);
            let disk = SimDisk::new(&rt, seed, 1 << 20, FaultConfig::default());
            let d = disk.clone();
            run(&rt, async move {
                d.create_dir_all(Path::new("/d")).await.expect("mkdir");
                d.sync_dir(Path::new("/")).await.expect("sync");
                let f = d.open(Path::new("/d/f"), true, true).await.expect("open");
                d.sync_dir(Path::new("/d")).await.expect("sync");
                f.write_at(vec![1; 4096], 0).await.expect("write");
                f.fdatasync().await.expect("sync");
                f.write_at(vec![2; 4096], 4096).await.expect("write");
            });
            assert!(disk.inject_read_fault(Path::new("/d/f"), 5000, true));
            disk.crash();
            if disk.contents(Path::new("/d/f")).map(|c| c.len()) != Some(4096) {
                continue;
            }
            lost += 1;
            let d = disk.clone();
            let regrown = run(&rt, async move {
                let f = d.open(Path::new("/d/f"), true, false).await.expect("open");
                f.preallocate(8192).await.expect("preallocate");
                f.read_at(4096, 4096).await.expect("read")
            });
            assert!(regrown.iter().all(|b| *b == 0), "seed {seed}");
        }
        assert!(lost > 0, "some crash lost the unsynced extension");
    }

    #[test]
    fn unaligned_appends_survive_fdatasync_and_an_unsynced_one_is_lost_or_torn_in_sectors() {
        let mut outcomes = BTreeSet::new();
        for seed in 0..64 {
            let rt = Runtime::new(seed);
            let disk = SimDisk::new(&rt, seed, 1 << 20, FaultConfig::default());
            let d = disk.clone();
            let path = Path::new("/d/log");
            run(&rt, async move {
                d.create_dir_all(Path::new("/d")).await.expect("mkdir");
                d.sync_dir(Path::new("/d")).await.expect("sync dir");
                let f = SimAppendFile::new(d.open(path, true, true).await.expect("open"));
                f.write_at(vec![1; 700], 0).await.expect("write");
                f.fdatasync().await.expect("sync");
                d.sync_dir(Path::new("/d")).await.expect("sync dir");
                f.write_at(vec![2; 1000], 700).await.expect("write");
                assert_eq!(f.size().await.expect("size"), 1700);
            });
            disk.crash();
            let after = disk.contents(path).expect("the file survives");
            assert!(after.len() >= 700 && after.len() <= 1700, "seed {seed}");
            assert!(after[..700].iter().all(|b| *b == 1), "seed {seed}");
            // What survived of the second write is whole sectors of the file (bytes 700..
            // 1024, 1024..1536, 1536..1700), each all there or all zeroes.
            let mut kept = Vec::new();
            for (from, to) in [(700, 1024), (1024, 1536), (1536, 1700)] {
                if to <= after.len() {
                    let part = &after[from..to];
                    assert!(
                        part.iter().all(|b| *b == 2) || part.iter().all(|b| *b == 0),
                        "seed {seed}: a sector is half written"
                    );
                    kept.push(part[0] == 2);
                }
            }
            outcomes.insert(kept);
        }
        assert!(
            outcomes.len() > 2,
            "crashes keep different parts: {outcomes:?}"
        );
    }

    #[test]
    fn a_reservation_keeps_the_size_and_lets_appends_fit_on_a_full_disk() {
        let rt = Runtime::new(1);
        let disk = SimDisk::new(&rt, 1, 64 * 1024, FaultConfig::default());
        let d = disk.clone();
        let (size, filled, appended) = run(&rt, async move {
            d.create_dir_all(Path::new("/d")).await.expect("mkdir");
            let f =
                SimAppendFile::new(d.open(Path::new("/d/log"), true, true).await.expect("open"));
            f.write_at(vec![1; 100], 0).await.expect("write");
            f.reserve(16 * 1024).await.expect("reserve");
            let size = f.size().await.expect("size");
            // Something else fills the disk.
            let other = d
                .open(Path::new("/d/other"), true, true)
                .await
                .expect("open");
            let filled = other.write_at(vec![0; 48 * 1024], 0).await.is_ok();
            let appended = f.write_at(vec![2; 8000], 100).await.is_ok();
            (size, filled, appended)
        });
        assert_eq!(size, 100, "a reservation does not change the size");
        assert!(filled && appended, "{filled} {appended}");
        assert!(disk.used_bytes() <= 64 * 1024);
    }
}
