//! The durable metadata log of a voter: Raft entries, the hard state (term, vote, commit)
//! and the latest snapshot, kept in memory (raft-rs reads them through [`raft::Storage`])
//! and written to two files in our own framed format. No I/O happens here: every change
//! returns the [`DiskOp`]s that make it durable, and the driver (a glommio task in the
//! broker, a simulated disk in the simulator) carries them out in order before the Raft
//! messages that depend on them leave the node.
//!
//! `metadata.log` is append-only between compactions:
//!
//! ```text
//! magic "WMLG" | version u16 = 1
//! frame*: length u32 | crc32c u32 (of kind and payload) | kind u8 | payload
//!   kind 1, start:      index u64 | term u64        entries begin after `index`
//!   kind 2, hard state: term u64 | vote u64 | commit u64
//!   kind 3, entry:      term u64 | index u64 | type u8 | data length u32 | data
//!                       | context length u32 | context
//!   kind 4, synced:     length u64                the file's first `length` bytes were
//!                                                 durable before this frame was written
//! ```
//!
//! (all integers big-endian). Replaying frames in order rebuilds the state: an entry at an
//! index at or below the last one replaces that suffix (Raft overwrote a conflicting tail),
//! the last hard state wins.
//!
//! A frame that is short, too long or fails its CRC is either a write torn by a crash or
//! damage to bytes that were durable (bit rot, a bad sector). The file alone cannot tell
//! them apart by what follows the bad frame: at a crash the unsynced writes are lost, kept
//! or torn in any order, so a lost write followed by a later one that persisted is a torn
//! tail too, never acknowledged, and whole frames may follow it. What tells them apart is
//! whether the bad bytes had been synced, and the synced frames record that: after each
//! `fdatasync` ([`LogStore::sync`]), the next write begins with a synced frame holding the
//! file's length at that sync. The driver performs writes in order and stops the node when
//! a sync fails, so such a frame exists only once the bytes it covers were durable.
//! Recovery therefore looks past a bad frame for a synced frame (whole, CRC-checked, found
//! at any byte position since the bad frame's length cannot be trusted) that covers the bad
//! frame's start. If there is one, the bad frame was durable and is now damaged: it may
//! hold entries this voter acknowledged, so recovery refuses ([`LogStoreError::Corrupt`])
//! instead of cutting committed entries. If there is none, nothing says the frame was ever
//! durable: it is a torn tail, and the file is cut there. Bytes made durable by the last
//! sync are vouched for only once the write after it lands; until then, damage to them is
//! cut like a torn write (as is damage anywhere in a log written before synced frames
//! existed, until a sync and a write after it).
//!
//! `metadata.snapshot` holds the image as the records that rebuild it:
//!
//! ```text
//! magic "WMSN" | version u16 = 1 | crc32c u32 (of the rest) | index u64 | term u64
//! | voters u32 | voter u64* | data length u32 | data
//! ```
//!
//! Compaction writes a new snapshot (atomically: temporary file, fsync, rename, fsync of the
//! directory) and then rewrites the log from a start frame, keeping the last entries before
//! the snapshot for followers that are a little behind. A crash between the two leaves a
//! newer snapshot beside the older log, which recovery reconciles.

use bytes::{BufMut, Bytes, BytesMut};
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use wharf_protocol::controller::MAX_FRAME_BYTES;

/// The log file's name in the metadata directory.
pub const LOG_FILE: &str = "metadata.log";
/// The snapshot file's name in the metadata directory.
pub const SNAPSHOT_FILE: &str = "metadata.snapshot";

const LOG_MAGIC: &[u8; 4] = b"WMLG";
const SNAPSHOT_MAGIC: &[u8; 4] = b"WMSN";
const FORMAT_VERSION: u16 = 1;
const LOG_HEADER_BYTES: usize = 6;
/// Largest frame accepted on replay: one entry of the largest frame, plus its fields.
const MAX_LOG_FRAME_BYTES: usize = MAX_FRAME_BYTES + 64;
/// Most voters a snapshot may list.
const MAX_VOTERS: usize = 64;

const KIND_START: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_ENTRY: u8 = 3;
const KIND_SYNCED: u8 = 4;
/// A synced frame in full: header, kind and its length field.
const SYNCED_FRAME_BYTES: usize = 8 + 1 + 8;

/// One write to the metadata directory. The driver performs them in order; a later op may
/// rely on an earlier one having completed.
#[derive(Clone, Debug, PartialEq)]
pub enum DiskOp {
    /// Append `bytes` at the end of `file` (creating it). Not durable until a `Sync`.
    Append { file: &'static str, bytes: Bytes },
    /// `fdatasync` the file: every append before it is durable once it returns. A failed
    /// sync is not retried (the node stops; see docs/cluster.md).
    Sync { file: &'static str },
    /// Replace the whole file atomically and durably (write a temporary file, fsync it,
    /// rename it over `file`, fsync the directory).
    Replace { file: &'static str, bytes: Bytes },
    /// Cut `file` to `len` bytes and make that durable (recovery of a torn tail).
    Truncate { file: &'static str, len: u64 },
}

/// Why the metadata directory cannot be used; the node does not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogStoreError {
    #[error("{SNAPSHOT_FILE} is damaged: {0}")]
    BadSnapshot(String),
    #[error("{LOG_FILE} is damaged: {0}")]
    BadLog(String),
    /// A frame that had been made durable is damaged (it fails its CRC or its length is
    /// impossible), and later frames say so: cutting there would drop entries this voter
    /// may have acknowledged.
    #[error(
        "{LOG_FILE} is damaged at byte {offset}: the frame there fails its checksum, but a later write records it as synced (bit rot or a bad sector, not a write torn by a crash), and it may hold committed entries, so it is not cut"
    )]
    Corrupt { offset: u64 },
    #[error(
        "the metadata log was written for controller.quorum.voters {found:?}, not {configured:?} (changing the voter set is not supported)"
    )]
    VotersChanged {
        found: Vec<u64>,
        configured: Vec<u64>,
    },
}

/// What recovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub entries: usize,
    pub snapshot_index: u64,
    /// Bytes cut off the end of the log (a torn write), if any.
    pub torn_bytes: u64,
    /// Entries dropped because a newer snapshot replaced them (a crash during install).
    pub stale_entries: usize,
    /// The hard state's term was below the log's last term and was raised to it.
    pub term_raised: bool,
}

/// The metadata log of one voter, in memory, mirroring its files.
#[derive(Clone, Debug)]
pub struct LogStore {
    voters: Vec<u64>,
    hard_state: HardState,
    snapshot: Snapshot,
    /// The index before `entries[0]` and its term: where the log was last compacted.
    start_index: u64,
    start_term: u64,
    entries: Vec<Entry>,
    /// The log file's length once the ops returned so far are carried out.
    log_len: u64,
    /// The file's length at a sync not yet recorded in the file: the next write begins
    /// with a synced frame holding it.
    synced_len: Option<u64>,
}

impl LogStore {
    /// The log of a node that has never written one.
    pub fn new(voters: Vec<u64>) -> LogStore {
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().mut_conf_state().voters = voters.clone();
        LogStore {
            voters,
            hard_state: HardState::default(),
            snapshot,
            start_index: 0,
            start_term: 0,
            entries: Vec::new(),
            log_len: 0,
            synced_len: None,
        }
    }

    /// Rebuilds the log from the files' contents (`None`: no such file). Returns the repairs
    /// to make before anything else is written.
    pub fn recover(
        voters: Vec<u64>,
        log: Option<&[u8]>,
        snapshot: Option<&[u8]>,
    ) -> Result<(LogStore, Vec<DiskOp>, RecoveryReport), LogStoreError> {
        let mut store = LogStore::new(voters.clone());
        let mut report = RecoveryReport::default();
        let mut repairs = Vec::new();
        if let Some(bytes) = snapshot {
            store.snapshot = decode_snapshot(bytes).map_err(LogStoreError::BadSnapshot)?;
            let found = &store.snapshot.get_metadata().get_conf_state().voters;
            if *found != voters {
                return Err(LogStoreError::VotersChanged {
                    found: found.clone(),
                    configured: voters,
                });
            }
        }
        let snap_index = store.snapshot.get_metadata().index;
        let snap_term = store.snapshot.get_metadata().term;
        report.snapshot_index = snap_index;

        let mut valid_len = 0usize;
        match log {
            None => {}
            Some(bytes) if bytes.len() < LOG_HEADER_BYTES => {
                // A log whose header was torn holds nothing: start it again.
                report.torn_bytes = bytes.len() as u64;
            }
            Some(bytes) => {
                if &bytes[..4] != LOG_MAGIC
                    || u16::from_be_bytes([bytes[4], bytes[5]]) != FORMAT_VERSION
                {
                    return Err(LogStoreError::BadLog("unknown header".into()));
                }
                valid_len = LOG_HEADER_BYTES;
                let mut at = LOG_HEADER_BYTES;
                while at < bytes.len() {
                    let Some((kind, payload, next)) = read_frame(bytes, at) else {
                        // Torn, unless a later synced frame says these bytes were durable.
                        if synced_past(bytes, at) {
                            return Err(LogStoreError::Corrupt { offset: at as u64 });
                        }
                        break;
                    };
                    store
                        .replay(kind, payload, at as u64)
                        .map_err(LogStoreError::BadLog)?;
                    at = next;
                    valid_len = next;
                }
                report.torn_bytes = (bytes.len() - valid_len) as u64;
            }
        }

        // A snapshot newer than the log's start covers part of it. If the log does not
        // reach the snapshot with the same term there, its tail belongs to a history the
        // leader discarded when it sent the snapshot (a crash came between the two writes):
        // the log restarts at the snapshot.
        let mut rewrite = false;
        if snap_index > store.start_index {
            if store.log_term(snap_index) != Some(snap_term) {
                report.stale_entries = store.entries.len();
                store.entries.clear();
                store.start_index = snap_index;
                store.start_term = snap_term;
                rewrite = true;
            }
        } else if snap_index < store.start_index {
            return Err(LogStoreError::BadLog(format!(
                "the log starts after index {} but the snapshot is at {snap_index}",
                store.start_index
            )));
        }
        store.hard_state.commit = store
            .hard_state
            .commit
            .max(snap_index)
            .min(store.last_index());
        // A node's term is never below its log's last term. Logs written before the hard
        // state went first in each write could lose a hard state that a crash cut off
        // after the entries; the term then moves up to the log's, and the vote recorded
        // for the older term (never sent: nothing was synced) is dropped.
        let last_term = store
            .log_term(store.last_index())
            .unwrap_or(store.start_term)
            .max(snap_term);
        if store.hard_state.term < last_term {
            report.term_raised = true;
            store.hard_state.term = last_term;
            store.hard_state.vote = 0;
        }
        report.entries = store.entries.len();

        match log {
            Some(bytes) if bytes.len() >= LOG_HEADER_BYTES && !rewrite => {
                store.log_len = valid_len as u64;
                if valid_len < bytes.len() {
                    repairs.push(DiskOp::Truncate {
                        file: LOG_FILE,
                        len: valid_len as u64,
                    });
                }
                // What was read may not be durable yet: a process that crashed leaves its
                // unsynced writes to the kernel, where this one finds them, but a machine
                // crash later can still lose them. Synced before the node acknowledges any
                // of it (the Raft leader counts what a voter acknowledged), as Kafka
                // flushes what it recovered past its recovery point.
                repairs.push(DiskOp::Sync { file: LOG_FILE });
                store.synced_len = Some(valid_len as u64);
            }
            _ => repairs.extend(store.replace_log()),
        }
        Ok((store, repairs, report))
    }

    /// Applies the frame found at byte `at` of the file.
    fn replay(&mut self, kind: u8, payload: &[u8], at: u64) -> Result<(), String> {
        let mut r = Reader(payload);
        match kind {
            KIND_SYNCED => {
                let length = r.u64()?;
                if length > at {
                    return Err(format!(
                        "the frame at byte {at} says {length} bytes were synced before it"
                    ));
                }
            }
            KIND_START => {
                self.start_index = r.u64()?;
                self.start_term = r.u64()?;
                self.entries.clear();
            }
            KIND_HARD_STATE => {
                let mut hs = HardState::default();
                hs.term = r.u64()?;
                hs.vote = r.u64()?;
                hs.commit = r.u64()?;
                self.hard_state = hs;
            }
            KIND_ENTRY => {
                let mut e = Entry::default();
                e.term = r.u64()?;
                e.index = r.u64()?;
                let entry_type = r.u8()?;
                if entry_type != EntryType::EntryNormal as u8 {
                    return Err(format!("entry {} has type {entry_type}", e.index));
                }
                e.data = Bytes::copy_from_slice(r.bytes()?);
                e.context = Bytes::copy_from_slice(r.bytes()?);
                if e.index <= self.start_index {
                    return Err(format!(
                        "entry {} is at or before the log's start {}",
                        e.index, self.start_index
                    ));
                }
                if e.index > self.last_index() + 1 {
                    return Err(format!(
                        "entry {} leaves a gap after {}",
                        e.index,
                        self.last_index()
                    ));
                }
                self.entries
                    .truncate((e.index - self.start_index - 1) as usize);
                self.entries.push(e);
            }
            other => return Err(format!("unknown frame kind {other}")),
        }
        Ok(())
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn snapshot_ref(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    pub fn first_index(&self) -> u64 {
        self.start_index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.start_index + self.entries.len() as u64
    }

    /// The entry at `index`, if the log holds it.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        let at = index.checked_sub(self.first_index())?;
        self.entries.get(at as usize)
    }

    /// The term of the entry at `index`, if the log holds it or starts right after it.
    fn log_term(&self, index: u64) -> Option<u64> {
        if index == self.start_index {
            return Some(self.start_term);
        }
        self.entry(index).map(|e| e.term)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index < self.start_index {
            return Err(StorageError::Compacted);
        }
        self.log_term(index).ok_or(StorageError::Unavailable)
    }

    /// Entries `[low, high)` up to about `max_bytes` (at least one), for followers and
    /// brokers fetching the log.
    pub fn entries_between(
        &self,
        low: u64,
        high: u64,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if low < self.first_index() {
            return Err(StorageError::Compacted);
        }
        if high > self.last_index() + 1 || low > high {
            return Err(StorageError::Unavailable);
        }
        let from = (low - self.first_index()) as usize;
        let to = (high - self.first_index()) as usize;
        let mut out = Vec::new();
        let mut size = 0u64;
        for e in &self.entries[from..to] {
            size += (e.data.len() + e.context.len() + 32) as u64;
            if !out.is_empty() && size > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    /// Appends entries from Raft (which may replace a conflicting suffix). Durable after the
    /// `Sync` the caller adds.
    pub fn append(&mut self, entries: &[Entry]) -> Vec<DiskOp> {
        let Some(first) = entries.first() else {
            return Vec::new();
        };
        assert!(
            first.index > self.start_index && first.index <= self.last_index() + 1,
            "raft appends entries {}.. to a log holding {}..={}",
            first.index,
            self.first_index(),
            self.last_index()
        );
        self.entries
            .truncate((first.index - self.start_index - 1) as usize);
        let mut bytes = self.start_write();
        for e in entries {
            self.entries.push(e.clone());
            put_entry_frame(&mut bytes, e);
        }
        self.finish_write(bytes)
    }

    /// `fdatasync` of the log: everything written so far is durable once it returns. The
    /// next write records that in a synced frame, which recovery relies on to tell damage
    /// from a torn write (see the module doc), so every sync of the log goes through here.
    pub fn sync(&mut self) -> Vec<DiskOp> {
        self.synced_len = Some(self.log_len);
        vec![DiskOp::Sync { file: LOG_FILE }]
    }

    /// A buffer for the next append, led by the synced frame a sync before it is owed.
    fn start_write(&mut self) -> BytesMut {
        let mut bytes = BytesMut::new();
        if let Some(length) = self.synced_len.take() {
            put_frame(&mut bytes, KIND_SYNCED, |b| b.put_u64(length));
        }
        bytes
    }

    fn finish_write(&mut self, bytes: BytesMut) -> Vec<DiskOp> {
        self.log_len += bytes.len() as u64;
        vec![DiskOp::Append {
            file: LOG_FILE,
            bytes: bytes.freeze(),
        }]
    }

    /// Rewrites the whole log file (atomically and durably) as it should be now.
    fn replace_log(&mut self) -> Vec<DiskOp> {
        let bytes = self.encode_log();
        self.log_len = bytes.len() as u64;
        self.synced_len = Some(self.log_len);
        vec![DiskOp::Replace {
            file: LOG_FILE,
            bytes,
        }]
    }

    /// Records a new hard state (synced by the caller when Raft says it must be).
    pub fn set_hard_state(&mut self, hs: HardState) -> Vec<DiskOp> {
        self.hard_state = hs;
        let mut bytes = self.start_write();
        put_hard_state_frame(&mut bytes, &self.hard_state);
        self.finish_write(bytes)
    }

    /// The commit index moved on. Written without a sync: a commit index lost in a crash is
    /// learnt again from the leader.
    pub fn set_commit(&mut self, commit: u64) -> Vec<DiskOp> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(hs)
    }

    /// Installs a snapshot the leader sent: it replaces the whole log.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Vec<DiskOp> {
        let index = snapshot.get_metadata().index;
        let term = snapshot.get_metadata().term;
        self.snapshot = snapshot;
        self.start_index = index;
        self.start_term = term;
        self.entries.clear();
        self.hard_state.commit = self.hard_state.commit.max(index);
        self.hard_state.term = self.hard_state.term.max(term);
        let mut ops = vec![DiskOp::Replace {
            file: SNAPSHOT_FILE,
            bytes: encode_snapshot(&self.snapshot),
        }];
        ops.extend(self.replace_log());
        ops
    }

    /// Takes a snapshot of the applied image at `index` (its records in `data`) and drops
    /// the entries before `index - keep_entries`.
    pub fn compact(&mut self, index: u64, data: Bytes, keep_entries: u64) -> Vec<DiskOp> {
        assert!(
            index <= self.hard_state.commit && index >= self.snapshot_index(),
            "a snapshot at {index} must be of committed state after the last one ({})",
            self.snapshot_index()
        );
        let term = self
            .term(index)
            .expect("the applied index is in the log or is the last snapshot's");
        let mut snapshot = Snapshot::default();
        snapshot.data = data;
        snapshot.mut_metadata().index = index;
        snapshot.mut_metadata().term = term;
        snapshot.mut_metadata().mut_conf_state().voters = self.voters.clone();
        self.snapshot = snapshot;
        let new_start = index.saturating_sub(keep_entries).max(self.start_index);
        if new_start > self.start_index {
            let new_start_term = self
                .term(new_start)
                .expect("the compaction point is in the log");
            self.entries
                .drain(..(new_start - self.start_index) as usize);
            self.start_index = new_start;
            self.start_term = new_start_term;
        }
        let mut ops = vec![DiskOp::Replace {
            file: SNAPSHOT_FILE,
            bytes: encode_snapshot(&self.snapshot),
        }];
        ops.extend(self.replace_log());
        ops
    }

    /// The whole log file as it should be now.
    fn encode_log(&self) -> Bytes {
        let mut bytes = BytesMut::new();
        bytes.put_slice(LOG_MAGIC);
        bytes.put_u16(FORMAT_VERSION);
        put_frame(&mut bytes, KIND_START, |b| {
            b.put_u64(self.start_index);
            b.put_u64(self.start_term);
        });
        put_hard_state_frame(&mut bytes, &self.hard_state);
        for e in &self.entries {
            put_entry_frame(&mut bytes, e);
        }
        bytes.freeze()
    }

    /// Bytes of the log's entries (for deciding when to compact).
    pub fn entries_len(&self) -> usize {
        self.entries.len()
    }
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let mut conf_state = ConfState::default();
        conf_state.voters = self.voters.clone();
        Ok(RaftState::new(self.hard_state.clone(), conf_state))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let from = (low - self.first_index()) as usize;
        let to = (high - self.first_index()) as usize;
        let mut entries = self.entries[from..to].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        LogStore::term(self, idx).map_err(raft::Error::Store)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(LogStore::first_index(self))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(LogStore::last_index(self))
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot_index() < request_index || self.snapshot_index() == 0 {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

fn put_frame(bytes: &mut BytesMut, kind: u8, payload: impl FnOnce(&mut BytesMut)) {
    let start = bytes.len();
    bytes.put_u32(0);
    bytes.put_u32(0);
    bytes.put_u8(kind);
    payload(bytes);
    let body = &bytes[start + 8..];
    let len = body.len() as u32;
    let crc = crc32c::crc32c(body);
    bytes[start..start + 4].copy_from_slice(&len.to_be_bytes());
    bytes[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

fn put_hard_state_frame(bytes: &mut BytesMut, hs: &HardState) {
    put_frame(bytes, KIND_HARD_STATE, |b| {
        b.put_u64(hs.term);
        b.put_u64(hs.vote);
        b.put_u64(hs.commit);
    });
}

fn put_entry_frame(bytes: &mut BytesMut, e: &Entry) {
    put_frame(bytes, KIND_ENTRY, |b| {
        b.put_u64(e.term);
        b.put_u64(e.index);
        b.put_u8(e.get_entry_type() as u8);
        b.put_u32(e.data.len() as u32);
        b.put_slice(&e.data);
        b.put_u32(e.context.len() as u32);
        b.put_slice(&e.context);
    });
}

/// Whether a synced frame after the bad frame at `bad_at` says the bytes at `bad_at` had
/// been durable. The bad frame's length cannot be trusted, so every byte position after it
/// is tried; a position holds a synced frame if it has the synced frame's length and kind,
/// passes its CRC and claims no more than the bytes before it. Linear in the file's size:
/// only the positions whose length field and kind match are checksummed, over 9 bytes.
fn synced_past(bytes: &[u8], bad_at: usize) -> bool {
    let frame_len = (SYNCED_FRAME_BYTES - 8) as u32;
    let last = bytes.len().saturating_sub(SYNCED_FRAME_BYTES);
    (bad_at + 1..=last).any(|at| {
        let frame = &bytes[at..at + SYNCED_FRAME_BYTES];
        if frame[..4] != frame_len.to_be_bytes()[..] || frame[8] != KIND_SYNCED {
            return false;
        }
        let crc = u32::from_be_bytes(frame[4..8].try_into().expect("4 bytes"));
        let length = u64::from_be_bytes(frame[9..].try_into().expect("8 bytes"));
        crc32c::crc32c(&frame[8..]) == crc && length > bad_at as u64 && length <= at as u64
    })
}

/// The frame at `at`: its kind, payload and the offset after it; `None` if it is short,
/// too long or fails its CRC (a torn write, or damage: see [`synced_past`]).
fn read_frame(bytes: &[u8], at: usize) -> Option<(u8, &[u8], usize)> {
    let header = bytes.get(at..at + 8)?;
    let len = u32::from_be_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(header[4..8].try_into().ok()?);
    if len == 0 || len > MAX_LOG_FRAME_BYTES {
        return None;
    }
    let body = bytes.get(at + 8..at + 8 + len)?;
    if crc32c::crc32c(body) != crc {
        return None;
    }
    Some((body[0], &body[1..], at + 8 + len))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("a field of {n} bytes runs past its frame"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// A length-prefixed byte string; the length is checked against what is left.
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}

fn encode_snapshot(s: &Snapshot) -> Bytes {
    let meta = s.get_metadata();
    let voters = &meta.get_conf_state().voters;
    let mut body = BytesMut::with_capacity(32 + voters.len() * 8 + s.data.len());
    body.put_u64(meta.index);
    body.put_u64(meta.term);
    body.put_u32(voters.len() as u32);
    for v in voters {
        body.put_u64(*v);
    }
    body.put_u32(s.data.len() as u32);
    body.put_slice(&s.data);
    let mut out = BytesMut::with_capacity(10 + body.len());
    out.put_slice(SNAPSHOT_MAGIC);
    out.put_u16(FORMAT_VERSION);
    out.put_u32(crc32c::crc32c(&body));
    out.put_slice(&body);
    out.freeze()
}

fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, String> {
    if bytes.len() < 10 || &bytes[..4] != SNAPSHOT_MAGIC {
        return Err("bad magic".into());
    }
    let version = u16::from_be_bytes([bytes[4], bytes[5]]);
    if version != FORMAT_VERSION {
        return Err(format!("unknown version {version}"));
    }
    let crc = u32::from_be_bytes(bytes[6..10].try_into().expect("4 bytes"));
    let body = &bytes[10..];
    if crc32c::crc32c(body) != crc {
        return Err("checksum mismatch".into());
    }
    let mut r = Reader(body);
    let mut s = Snapshot::default();
    s.mut_metadata().index = r.u64()?;
    s.mut_metadata().term = r.u64()?;
    let count = r.u32()? as usize;
    if count > MAX_VOTERS {
        return Err(format!("{count} voters"));
    }
    let mut voters = Vec::with_capacity(count);
    for _ in 0..count {
        voters.push(r.u64()?);
    }
    s.mut_metadata().mut_conf_state().voters = voters;
    let data = r.bytes()?;
    if data.len() > MAX_FRAME_BYTES {
        return Err(format!("{} bytes of data", data.len()));
    }
    s.data = Bytes::copy_from_slice(data);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64, data: &'static [u8]) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = Bytes::from_static(data);
        e
    }

    /// A file as the ops leave it (everything synced).
    #[derive(Default)]
    struct Files {
        log: Vec<u8>,
        snapshot: Option<Vec<u8>>,
    }

    impl Files {
        fn run(&mut self, ops: &[DiskOp]) {
            for op in ops {
                match op {
                    DiskOp::Append { file, bytes } if *file == LOG_FILE => {
                        self.log.extend_from_slice(bytes)
                    }
                    DiskOp::Replace { file, bytes } if *file == LOG_FILE => {
                        self.log = bytes.to_vec()
                    }
                    DiskOp::Replace { file, bytes } if *file == SNAPSHOT_FILE => {
                        self.snapshot = Some(bytes.to_vec())
                    }
                    DiskOp::Truncate { file, len } if *file == LOG_FILE => {
                        self.log.truncate(*len as usize)
                    }
                    DiskOp::Sync { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }

        fn recover(&self) -> (LogStore, Vec<DiskOp>, RecoveryReport) {
            LogStore::recover(vec![1, 2, 3], Some(&self.log), self.snapshot.as_deref()).unwrap()
        }
    }

    fn fresh(files: &mut Files) -> LogStore {
        let (store, repairs, _) = LogStore::recover(vec![1, 2, 3], None, None).unwrap();
        files.run(&repairs);
        store
    }

    #[test]
    fn entries_and_hard_state_are_replayed_with_overwritten_suffixes() {
        let mut files = Files::default();
        let mut store = fresh(&mut files);
        files.run(&store.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")]));
        let mut hs = HardState::default();
        hs.term = 2;
        hs.vote = 3;
        hs.commit = 1;
        files.run(&store.set_hard_state(hs.clone()));
        // A new leader overwrote index 2 onwards.
        files.run(&store.append(&[entry(2, 2, b"B")]));
        files.run(&store.set_commit(2));
        let (back, repairs, report) = files.recover();
        // Nothing to cut; what was read is synced before it is used.
        assert_eq!(repairs, vec![DiskOp::Sync { file: LOG_FILE }]);
        assert_eq!(report.entries, 2);
        assert_eq!(back.last_index(), 2);
        assert_eq!(back.entry(2).unwrap().data, Bytes::from_static(b"B"));
        assert_eq!(back.hard_state().vote, 3);
        assert_eq!(back.hard_state().commit, 2);
        assert_eq!(back.entries, store.entries);
    }

    #[test]
    fn a_torn_tail_is_cut_and_reported() {
        // With a sync between the writes, the second begins with a synced frame (of the
        // first's end): a tear anywhere after it is still a torn tail, cut, not refused.
        for synced in [false, true] {
            let mut files = Files::default();
            let mut store = fresh(&mut files);
            files.run(&store.append(&[entry(1, 1, b"a")]));
            if synced {
                files.run(&store.sync());
            }
            let first_end = files.log.len();
            files.run(&store.append(&[entry(2, 1, b"bbbb")]));
            let full = files.log.len();
            for cut in 1..full - first_end {
                let mut torn = Files {
                    log: files.log[..full - cut].to_vec(),
                    snapshot: None,
                };
                let (back, repairs, report) = torn.recover();
                assert_eq!(back.last_index(), 1, "cut {cut}");
                let kept = if synced && full - cut >= first_end + SYNCED_FRAME_BYTES {
                    first_end + SYNCED_FRAME_BYTES
                } else {
                    first_end
                };
                assert_eq!(report.torn_bytes as usize, full - cut - kept);
                torn.run(&repairs);
                let (again, repairs, _) = torn.recover();
                assert_eq!(repairs, vec![DiskOp::Sync { file: LOG_FILE }]);
                assert_eq!(again.last_index(), 1);
            }
        }
        let mut files = Files::default();
        let mut store = fresh(&mut files);
        files.run(&store.append(&[entry(1, 1, b"a")]));
        files.run(&store.append(&[entry(2, 1, b"bbbb")]));
        // A flipped bit in the last frame ends the log there too.
        let mut flipped = Files {
            log: files.log.clone(),
            snapshot: None,
        };
        let at = flipped.log.len() - 2;
        flipped.log[at] ^= 0x40;
        assert_eq!(flipped.recover().0.last_index(), 1);
    }

    /// Entries 1..=4, each its own write, each synced but the last; returns the files and
    /// where each entry's frame begins.
    fn four_synced_writes() -> (Files, Vec<usize>) {
        let mut files = Files::default();
        let mut store = fresh(&mut files);
        let mut starts = Vec::new();
        for i in 1..=4u64 {
            let ops = store.append(&[entry(i, 1, b"entry")]);
            let DiskOp::Append { bytes, .. } = &ops[0] else {
                unreachable!("an append")
            };
            // The entry frame ends the write, after any synced frame.
            starts.push(files.log.len() + bytes.len() - (8 + 1 + 8 + 8 + 1 + 4 + 5 + 4));
            files.run(&ops);
            if i < 4 {
                files.run(&store.sync());
            }
        }
        (files, starts)
    }

    #[test]
    fn a_damaged_frame_that_was_synced_is_refused_not_cut() {
        let (files, starts) = four_synced_writes();
        assert_eq!(files.recover().0.last_index(), 4);
        // Entry 2 was synced, and the synced frames of the writes after it say so: a bit
        // flipped in its payload, CRC or length is damage, and entries 2..=4 must not be cut.
        for at in [starts[1] + 20, starts[1] + 5, starts[1] + 2] {
            let mut damaged = files.log.clone();
            damaged[at] ^= 0x10;
            let err = LogStore::recover(vec![1, 2, 3], Some(&damaged), None)
                .expect_err("damage is refused");
            assert_eq!(
                err,
                LogStoreError::Corrupt {
                    offset: starts[1] as u64
                },
                "flip at {at}"
            );
            let message = err.to_string();
            assert!(message.starts_with(&format!("{LOG_FILE} is damaged at byte {}", starts[1])));
            assert!(!message.contains('\n'));
        }
    }

    #[test]
    fn a_damaged_last_frame_with_nothing_synced_after_it_is_cut_as_torn() {
        let (mut files, starts) = four_synced_writes();
        // Entry 3 was synced, but no write after it says so (the next write, led by the
        // synced frame that would, never happened): damage to it cannot be told from a
        // torn write, so it is cut.
        files.log.truncate(starts[3] - SYNCED_FRAME_BYTES);
        files.log[starts[2] + 20] ^= 0x10;
        let (back, repairs, report) = files.recover();
        assert_eq!(back.last_index(), 2);
        assert_eq!(report.torn_bytes as usize, files.log.len() - starts[2]);
        files.run(&repairs);
        assert_eq!(files.recover().0.last_index(), 2);
    }

    #[test]
    fn a_lost_write_before_a_kept_one_is_a_torn_tail_not_damage() {
        let mut files = Files::default();
        let mut store = fresh(&mut files);
        files.run(&store.append(&[entry(1, 1, b"a")]));
        files.run(&store.sync());
        // Two writes, neither synced; a crash loses the first (it reads as zeros) and keeps
        // the second, whole frames and all. Nothing of either was acknowledged.
        let lost_from = files.log.len();
        files.run(&store.set_commit(1));
        let lost_to = files.log.len();
        files.run(&store.append(&[entry(2, 1, b"b"), entry(3, 1, b"c")]));
        files.log[lost_from..lost_to].fill(0);
        let (mut back, repairs, report) = files.recover();
        assert_eq!(back.last_index(), 1);
        assert_eq!(report.torn_bytes as usize, files.log.len() - lost_from);
        files.run(&repairs);
        assert_eq!(files.log.len(), lost_from);
        // The cut was synced: the next write records it, so damage below it is refused.
        files.run(&back.append(&[entry(2, 2, b"B")]));
        assert_eq!(files.recover().0.last_index(), 2);
        let mut damaged = files.log.clone();
        damaged[lost_from - 3] ^= 1;
        assert!(matches!(
            LogStore::recover(vec![1, 2, 3], Some(&damaged), None),
            Err(LogStoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_term_lost_behind_its_entries_is_raised_to_the_log_term() {
        let mut files = Files::default();
        let mut store = fresh(&mut files);
        let mut hs = HardState::default();
        hs.term = 1;
        hs.vote = 2;
        files.run(&store.set_hard_state(hs));
        // Entries of term 3 made it to disk, the hard state of term 3 did not.
        files.run(&store.append(&[entry(1, 3, b"a")]));
        let (back, _, report) = files.recover();
        assert!(report.term_raised);
        assert_eq!(back.hard_state().term, 3);
        assert_eq!(back.hard_state().vote, 0, "the vote was for term 1");
    }

    #[test]
    fn compaction_keeps_a_tail_and_survives_restart() {
        let mut files = Files::default();
        let mut store = fresh(&mut files);
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1, b"x")).collect();
        files.run(&store.append(&entries));
        files.run(&store.set_commit(10));
        files.run(&store.compact(8, Bytes::from_static(b"image"), 3));
        assert_eq!(store.first_index(), 6);
        assert_eq!(store.snapshot_index(), 8);
        assert_eq!(Storage::term(&store, 5).unwrap(), 1);
        assert!(Storage::term(&store, 4).is_err());
        let (back, _, report) = files.recover();
        assert_eq!(report.snapshot_index, 8);
        assert_eq!(back.first_index(), 6);
        assert_eq!(back.last_index(), 10);
        assert_eq!(back.snapshot_ref().data, Bytes::from_static(b"image"));
        assert_eq!(
            Storage::snapshot(&back, 0, 2).unwrap().get_metadata().index,
            8
        );
        // The rewritten log was durable: the next write says so, and damage in it is
        // refused rather than cut.
        let rewritten = files.log.len();
        files.run(&store.append(&[entry(11, 1, b"y")]));
        let mut damaged = files.log.clone();
        damaged[rewritten - 10] ^= 4;
        assert!(matches!(
            LogStore::recover(vec![1, 2, 3], Some(&damaged), files.snapshot.as_deref()),
            Err(LogStoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn an_installed_snapshot_replaces_the_log_even_if_the_crash_came_between_the_writes() {
        let mut files = Files::default();
        let mut store = fresh(&mut files);
        files.run(&store.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")]));
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 5;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        snap.data = Bytes::from_static(b"img");
        let ops = store.apply_snapshot(snap);
        // Only the snapshot made it.
        let mut crashed = Files {
            log: files.log.clone(),
            snapshot: None,
        };
        crashed.run(&ops[..1]);
        let (back, repairs, report) = crashed.recover();
        assert_eq!(back.first_index(), 6);
        assert_eq!(back.last_index(), 5);
        assert_eq!(back.hard_state().commit, 5);
        assert_eq!(report.stale_entries, 3);
        crashed.run(&repairs);
        assert_eq!(crashed.recover().0.last_index(), 5);
        // Both made it.
        files.run(&ops);
        let (back, _, _) = files.recover();
        assert_eq!((back.first_index(), back.last_index()), (6, 5));
    }

    #[test]
    fn a_damaged_snapshot_or_other_voters_refuse_to_start() {
        let mut files = Files::default();
        let mut store = fresh(&mut files);
        files.run(&store.append(&[entry(1, 1, b"a")]));
        files.run(&store.set_commit(1));
        files.run(&store.compact(1, Bytes::from_static(b"i"), 0));
        let mut bad = files.snapshot.clone().unwrap();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            LogStore::recover(vec![1, 2, 3], Some(&files.log), Some(&bad)),
            Err(LogStoreError::BadSnapshot(_))
        ));
        assert!(matches!(
            LogStore::recover(vec![1, 2], Some(&files.log), files.snapshot.as_deref()),
            Err(LogStoreError::VotersChanged { .. })
        ));
    }

    #[test]
    fn garbage_files_never_panic() {
        let mut seed = 7u64;
        for len in 0..400 {
            let mut bytes = Vec::with_capacity(len);
            bytes.extend_from_slice(b"WMLG\x00\x01");
            for _ in 0..len {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                bytes.push((seed >> 56) as u8);
            }
            let _ = LogStore::recover(vec![1], Some(&bytes), None);
            let _ = LogStore::recover(vec![1], None, Some(&bytes));
        }
    }
}
