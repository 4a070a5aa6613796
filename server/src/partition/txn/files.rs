//! A transactional partition's files next to its segments: Kafka's aborted-transaction
//! index, one `<base offset>.txnindex` per segment (named as the segment whose ABORT
//! markers it lists), and the broker's transaction snapshots, `<offset>.txnsnapshot`
//! ([`crate::txn::snapshot`]).
//!
//! Data plane, on the partition's shard, through the engine's [`Storage`] (glommio in the
//! broker). The rules that keep the files true to the log:
//!
//! - an index entry is appended (not synced) when an ABORT marker is applied, to the file
//!   of the segment holding the marker; entries go out in marker order;
//! - a snapshot is written only once every index file written since the last one is
//!   synced, and records how far the files then reached (the last file and its length):
//!   that prefix is all a snapshot proves, since Kafka's entries carry no checksum and a
//!   crash can leave an unsynced tail that reads as entries;
//! - loading takes the newest intact snapshot inside the log and keeps, of the prefix it
//!   proves, the entries whose markers are below its offset: the rest of the files (a torn
//!   or damaged tail, entries the replay of the log from the snapshot writes again) is
//!   cut, and entries below the log start are forgotten. Without a usable snapshot every
//!   index file goes, and the replay from the log start writes them again;
//! - before a follower's log is cut at `offset`, snapshots past it are removed (durably),
//!   so a restart can never pair one with a log that grew differently after the cut;
//! - when retention deletes segments, the index files of segments older than the first
//!   one left go with them. A cleaned (compacted) segment keeps the index files as they
//!   are: the cleaner keeps every marker and moves no offset, so each entry still names
//!   the transaction's first offset and its marker (Kafka's cleaner, too, keeps the
//!   entries of the aborted transactions whose markers the cleaned segment retains).
//!
//! A failed write stops the files for the partition until it reopens: no snapshot is
//! written after it, so the next open replays from an older snapshot (or the log start),
//! which rewrites whatever the failure left behind.

use std::cell::{Cell, RefCell};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use wharf_engine::storage::{tmp_path, AppendFile, Storage};
use wharf_protocol::txn::index::{decode_entries, AbortedTxn, ABORTED_TXN_BYTES};

use crate::txn::snapshot::{TxnSnapshot, MAX_TXN_SNAPSHOT_BYTES, TXN_SNAPSHOT_SUFFIX};

/// Kafka's suffix for a segment's aborted-transaction index.
pub const TXN_INDEX_SUFFIX: &str = ".txnindex";
/// Largest index file read: Kafka's default `segment.index.bytes` worth of entries.
const MAX_TXN_INDEX_BYTES: u64 = 10 << 20;

/// `<dir>/<20-digit offset><suffix>`, as the engine names segment files.
pub fn file_path(dir: &Path, offset: i64, suffix: &str) -> PathBuf {
    dir.join(format!("{offset:020}{suffix}"))
}

/// The lock is closed only when the partition goes away.
fn closed() -> io::Error {
    io::Error::other("the partition's transaction files are closed")
}

fn parse_name(name: &str, suffix: &str) -> Option<i64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What [`TxnFiles::load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The newest intact snapshot inside the log, if any: replay from its offset.
    pub snapshot: Option<TxnSnapshot>,
    /// The aborted transactions whose markers are in `[log start, snapshot offset)`, in
    /// marker order (empty without a snapshot).
    pub aborted: Vec<AbortedTxn>,
}

struct OpenIndex<F> {
    base_offset: i64,
    file: Rc<F>,
    len_bytes: u64,
}

/// The `.txnindex` and `.txnsnapshot` files of one partition.
pub struct TxnFiles<S: Storage> {
    storage: S,
    dir: PathBuf,
    /// Entries to append, with the base offset of the segment holding the marker, in
    /// marker order.
    pending: RefCell<Vec<(i64, AbortedTxn)>>,
    /// The index file appended to last.
    open: RefCell<Option<OpenIndex<S::AppendFile>>>,
    /// The end of what the index files hold: the file appended to last and its length.
    index_end: Cell<Option<(i64, u64)>>,
    /// Index files written since the last snapshot, to sync before the next one.
    unsynced: RefCell<Vec<Rc<S::AppendFile>>>,
    /// An index file was created since the directory was last synced.
    created: Cell<bool>,
    /// Snapshot offsets on disk, ascending.
    snapshots: RefCell<Vec<i64>>,
    /// Every change to the files holds it, so appends, snapshots and cuts never interleave.
    lock: glommio::sync::Semaphore,
    /// Bumped by a cut of the log: a snapshot taken before it must not be written after.
    generation: Cell<u64>,
    failed: Cell<bool>,
}

impl<S: Storage> TxnFiles<S> {
    pub fn new(storage: S, dir: PathBuf) -> TxnFiles<S> {
        TxnFiles {
            storage,
            dir,
            pending: RefCell::default(),
            open: RefCell::default(),
            index_end: Cell::new(None),
            unsynced: RefCell::default(),
            created: Cell::new(false),
            snapshots: RefCell::default(),
            lock: glommio::sync::Semaphore::new(1),
            generation: Cell::new(0),
            failed: Cell::new(false),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The newest snapshot's offset, -1 without one.
    pub fn newest_snapshot(&self) -> i64 {
        self.snapshots.borrow().last().copied().unwrap_or(-1)
    }

    /// Whether a write failed since the partition opened (no snapshot is written then).
    pub fn failed(&self) -> bool {
        self.failed.get()
    }

    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Snapshots taken before now are not written: the state is being rebuilt.
    pub fn forget_taken_snapshots(&self) {
        self.generation.set(self.generation.get() + 1);
    }

    /// Queues an index entry for the segment at `segment_base`; [`Self::flush`] writes it.
    pub fn queue(&self, segment_base: i64, entry: AbortedTxn) {
        self.pending.borrow_mut().push((segment_base, entry));
    }

    /// Appends the queued entries to their index files (not synced).
    pub async fn flush(&self) -> io::Result<()> {
        let _permit = self.lock.acquire_permit(1).await.map_err(|_| closed())?;
        self.flush_locked().await
    }

    async fn flush_locked(&self) -> io::Result<()> {
        let pending: Vec<(i64, AbortedTxn)> = std::mem::take(&mut *self.pending.borrow_mut());
        if self.failed.get() {
            return Err(io::Error::other(
                "an earlier write of the transaction index failed",
            ));
        }
        for (base, entry) in pending {
            if let Err(e) = self.append_entry(base, entry).await {
                self.failed.set(true);
                *self.open.borrow_mut() = None;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn append_entry(&self, base: i64, entry: AbortedTxn) -> io::Result<()> {
        let current = self
            .open
            .borrow()
            .as_ref()
            .filter(|o| o.base_offset == base)
            .map(|o| (o.file.clone(), o.len_bytes));
        let (file, len) = match current {
            Some(open) => open,
            None => {
                let path = file_path(&self.dir, base, TXN_INDEX_SUFFIX);
                let file = Rc::new(self.storage.open_append(&path).await?);
                let len = file.size().await?;
                if len == 0 {
                    self.created.set(true);
                }
                self.unsynced.borrow_mut().push(file.clone());
                (file, len)
            }
        };
        // A torn tail left by a crash was cut at load; a length off the entry size here
        // means another writer, which must not be mixed with.
        if len % ABORTED_TXN_BYTES as u64 != 0 {
            return Err(io::Error::other(format!(
                "transaction index of segment {base} has a partial entry"
            )));
        }
        let written = file.write_at(entry.encode().to_vec(), len).await?;
        if written != ABORTED_TXN_BYTES {
            return Err(io::Error::other("short write to the transaction index"));
        }
        *self.open.borrow_mut() = Some(OpenIndex {
            base_offset: base,
            file,
            len_bytes: len + ABORTED_TXN_BYTES as u64,
        });
        self.index_end
            .set(Some((base, len + ABORTED_TXN_BYTES as u64)));
        Ok(())
    }

    /// Writes `snapshot` once the index entries below its offset are durable. Skipped (Ok(false)) after a failed write, when a cut
    /// of the log came after the snapshot was taken (`generation`), or when a newer one is
    /// on disk.
    pub async fn write_snapshot(
        &self,
        mut snapshot: TxnSnapshot,
        generation: u64,
    ) -> io::Result<bool> {
        let _permit = self.lock.acquire_permit(1).await.map_err(|_| closed())?;
        if self.failed.get()
            || generation != self.generation.get()
            || snapshot.offset <= self.newest_snapshot()
        {
            return Ok(false);
        }
        let written = self.write_snapshot_locked(&mut snapshot).await;
        if written.is_err() {
            self.failed.set(true);
        }
        written.map(|()| true)
    }

    async fn write_snapshot_locked(&self, snapshot: &mut TxnSnapshot) -> io::Result<()> {
        self.flush_locked().await?;
        // Entries past the snapshot's offset may be in it already; the load cuts those.
        snapshot.index_end = self.index_end.get();
        let unsynced: Vec<_> = std::mem::take(&mut *self.unsynced.borrow_mut());
        for file in &unsynced {
            file.fdatasync().await?;
        }
        if let Some(open) = self.open.borrow().as_ref() {
            self.unsynced.borrow_mut().push(open.file.clone());
        }
        let path = file_path(&self.dir, snapshot.offset, TXN_SNAPSHOT_SUFFIX);
        let tmp = tmp_path(&path);
        self.storage.write_file(&tmp, snapshot.encode()).await?;
        self.storage.rename(&tmp, &path).await?;
        // One directory sync covers the snapshot's name and the index files created.
        self.storage.sync_dir(&self.dir).await?;
        self.created.set(false);
        // One per roll stays, as Kafka keeps one per segment, so that a follower whose
        // log is cut finds one close below the cut; they go with the log start.
        self.snapshots.borrow_mut().push(snapshot.offset);
        Ok(())
    }

    /// The log is about to be cut at `offset`: snapshots past it go (durably), queued
    /// entries of markers at or past it are dropped, and snapshots taken before now are
    /// not written. The index files are cut by the [`Self::load`] that follows the cut.
    pub async fn before_truncation(&self, offset: i64) -> io::Result<()> {
        self.generation.set(self.generation.get() + 1);
        let _permit = self.lock.acquire_permit(1).await.map_err(|_| closed())?;
        self.pending
            .borrow_mut()
            .retain(|(_, e)| e.last_offset < offset);
        let stale: Vec<i64> = {
            let mut snapshots = self.snapshots.borrow_mut();
            let keep = snapshots.partition_point(|&o| o <= offset);
            snapshots.split_off(keep)
        };
        for old in &stale {
            self.storage
                .remove_file(&file_path(&self.dir, *old, TXN_SNAPSHOT_SUFFIX))
                .await?;
        }
        if !stale.is_empty() {
            self.storage.sync_dir(&self.dir).await?;
        }
        Ok(())
    }

    /// Retention moved the log start to `log_start`: the index files of segments older
    /// than the first one left (`first_segment_base`) list only markers below it, and go;
    /// so do the snapshots below the log start, which a replay cannot continue from.
    pub async fn after_log_start_moved(
        &self,
        log_start: i64,
        first_segment_base: i64,
    ) -> io::Result<()> {
        let _permit = self.lock.acquire_permit(1).await.map_err(|_| closed())?;
        let stale: Vec<i64> = {
            let mut snapshots = self.snapshots.borrow_mut();
            let first_kept = snapshots.partition_point(|&o| o < log_start);
            snapshots.drain(..first_kept).collect()
        };
        for offset in stale {
            self.storage
                .remove_file(&file_path(&self.dir, offset, TXN_SNAPSHOT_SUFFIX))
                .await?;
        }
        let entries = self.storage.list_dir(&self.dir)?;
        for entry in entries {
            let Some(base) = parse_name(&entry.name, TXN_INDEX_SUFFIX) else {
                continue;
            };
            if base >= first_segment_base {
                continue;
            }
            if self
                .open
                .borrow()
                .as_ref()
                .is_some_and(|o| o.base_offset == base)
            {
                *self.open.borrow_mut() = None;
            }
            self.storage
                .remove_file(&self.dir.join(&entry.name))
                .await?;
        }
        Ok(())
    }

    /// Reads the files for a log holding `[log_start, log_end)` and makes them agree with
    /// it (see the module's rules): the snapshot to replay from and the aborted
    /// transactions below it. Queued entries are dropped: the replay queues them again.
    pub async fn load(&self, log_start: i64, log_end: i64) -> io::Result<Loaded> {
        let _permit = self.lock.acquire_permit(1).await.map_err(|_| closed())?;
        self.pending.borrow_mut().clear();
        *self.open.borrow_mut() = None;
        self.unsynced.borrow_mut().clear();
        self.failed.set(false);
        let entries = self.storage.list_dir(&self.dir)?;
        let mut snapshot_offsets: Vec<i64> = entries
            .iter()
            .filter_map(|e| parse_name(&e.name, TXN_SNAPSHOT_SUFFIX))
            .collect();
        snapshot_offsets.sort_unstable();
        let mut index_bases: Vec<i64> = entries
            .iter()
            .filter_map(|e| parse_name(&e.name, TXN_INDEX_SUFFIX))
            .collect();
        index_bases.sort_unstable();

        let mut snapshot = None;
        let mut kept = Vec::new();
        let mut removed = false;
        for &offset in snapshot_offsets.iter().rev() {
            let path = file_path(&self.dir, offset, TXN_SNAPSHOT_SUFFIX);
            let usable = snapshot.is_none() && (log_start..=log_end).contains(&offset);
            if usable {
                let bytes = self.storage.read_file(&path, MAX_TXN_SNAPSHOT_BYTES).await;
                match bytes.ok().flatten().and_then(|b| TxnSnapshot::decode(&b)) {
                    Some(s) if s.offset == offset => {
                        snapshot = Some(s);
                        kept.push(offset);
                        continue;
                    }
                    _ => tracing::warn!(
                        dir = %self.dir.display(),
                        offset,
                        "ignoring a damaged transaction snapshot"
                    ),
                }
            }
            // Older ones below the chosen one stay for a later cut of the log, as long
            // as they are inside it.
            if snapshot.is_some() && (log_start..=log_end).contains(&offset) {
                kept.push(offset);
                continue;
            }
            self.storage.remove_file(&path).await?;
            removed = true;
        }
        kept.sort_unstable();
        *self.snapshots.borrow_mut() = kept;

        let mut aborted: Vec<AbortedTxn> = Vec::new();
        let mut last_marker = -1i64;
        let mut index_end = None;
        let upto = snapshot.as_ref().map(|s| s.offset);
        // What the snapshot proves of the files: they were synced up to here before it.
        let proven = snapshot.as_ref().and_then(|s| s.index_end);
        for base in index_bases {
            let path = file_path(&self.dir, base, TXN_INDEX_SUFFIX);
            let proven_bytes = match proven {
                Some((end_base, _)) if base < end_base => u64::MAX,
                Some((end_base, bytes)) if base == end_base => bytes,
                _ => 0,
            };
            let Some(upto) = upto.filter(|&u| base < u && proven_bytes > 0) else {
                self.storage.remove_file(&path).await?;
                removed = true;
                continue;
            };
            let bytes = self
                .storage
                .read_file(&path, MAX_TXN_INDEX_BYTES)
                .await?
                .unwrap_or_default();
            let mut good_bytes = 0u64;
            let readable = bytes
                .len()
                .min(usize::try_from(proven_bytes).unwrap_or(usize::MAX));
            for entry in decode_entries(&bytes[..readable]) {
                // A torn tail (a partial entry) or damage ends what the file proves.
                let Ok(entry) = entry else { break };
                // Markers only go forward, and each file lists its own segment's.
                if entry.last_offset >= upto || entry.last_offset < base.max(last_marker + 1) {
                    break;
                }
                good_bytes += ABORTED_TXN_BYTES as u64;
                last_marker = entry.last_offset;
                // Below the log start an entry overlaps no data any more.
                if entry.last_offset >= log_start {
                    aborted.push(entry);
                }
            }
            // A file created by an append that a crash lost is empty: it goes too.
            if good_bytes < bytes.len() as u64 || bytes.is_empty() {
                tracing::info!(
                    dir = %self.dir.display(),
                    segment = base,
                    kept_bytes = good_bytes,
                    file_bytes = bytes.len(),
                    "cutting the transaction index to what the log and its snapshot prove"
                );
                if good_bytes == 0 {
                    self.storage.remove_file(&path).await?;
                    removed = true;
                    continue;
                }
                let file = self.storage.open_append(&path).await?;
                file.truncate(good_bytes).await?;
                file.fdatasync().await?;
            }
            index_end = Some((base, good_bytes));
        }
        self.index_end.set(index_end);
        if removed {
            self.storage.sync_dir(&self.dir).await?;
        }
        Ok(Loaded { snapshot, aborted })
    }
}
