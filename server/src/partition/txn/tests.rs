//! The partition side's transaction state against real logs: followers, restarts,
//! cuts, retention, damaged files, and crashes on the engine's simulated disk.

use super::*;
use wharf_engine::{BatchCache, Durability, LogConfig};
use wharf_protocol::batch::{set_base_offset, set_partition_leader_epoch, BatchBuilder};
use wharf_protocol::txn::control::TransactionResult;

/// A batch as a leader stored it at `base` in leader epoch `epoch`.
fn stored(mut bytes: Vec<u8>, base: i64, epoch: i32) -> Bytes {
    set_base_offset(&mut bytes, base);
    set_partition_leader_epoch(&mut bytes, epoch);
    Bytes::from(bytes)
}

fn txn_batch(pid: i64, epoch: i16, base: i64) -> Bytes {
    let mut b = BatchBuilder::new()
        .producer(pid, epoch, 0)
        .transactional(true);
    b.push(None, Some(b"v"), &[], 1_000);
    stored(b.build(), base, 1)
}

fn marker(pid: i64, epoch: i16, commit: bool, base: i64, leader_epoch: i32) -> Bytes {
    let m = EndTxnMarker {
        result: TransactionResult::from_committed(commit),
        coordinator_epoch: 0,
    };
    stored(m.to_batch(pid, epoch, 2_000), base, leader_epoch)
}

#[test]
fn a_follower_follows_batches_and_markers_and_a_truncation_gives_back_what_the_cut_tail_ended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t-0");
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .expect("executor")
        .run(async move {
            let log = PartitionLog::open(path, LogConfig::default(), BatchCache::new(1 << 20))
                .await
                .expect("opens");
            let state = PartitionTxnState::new(log.dir().to_path_buf());
            let follow = |records: Bytes| {
                let log = &log;
                let state = &state;
                async move {
                    log.append_as_follower(records.clone(), Durability::Written)
                        .await
                        .expect("follows");
                    state.apply_replicated(log, &records);
                }
            };
            // Producers 9 and 10 open transactions at 0 and 1; 9 commits at 2; the old
            // leader then aborted 10's under a bumped epoch at 3 (its last, divergent,
            // batch).
            let head = [
                txn_batch(9, 0, 0),
                txn_batch(10, 0, 1),
                marker(9, 0, true, 2, 1),
            ];
            assert!(head.iter().all(has_transactional_or_control));
            for b in head {
                follow(b).await;
            }
            assert_eq!(state.ongoing(), vec![(1, 10)]);
            assert_eq!(state.last_stable_offset(3), 1);
            follow(marker(10, 1, false, 3, 1)).await;
            assert_eq!(state.ongoing(), vec![]);
            assert_eq!(state.last_stable_offset(4), 4);
            // Unreplicated: the abort is not stable before the high watermark passes it.
            assert_eq!(state.last_stable_offset(3), 1);
            let aborted = state.aborted_in_range(0, 4);
            assert_eq!(aborted.len(), 1);
            assert_eq!((aborted[0].producer_id, aborted[0].first_offset), (10, 1));
            assert_eq!(state.producer(10).map(|p| p.producer_epoch), Some(1));

            // The new leader's log ends at 3: the follower cuts the abort off, and the
            // state is what the remaining log implies, producer 10's epoch included.
            log.truncate_to(Offset(3)).await.expect("truncates");
            state.replay(&log, 3).await.expect("replays");
            assert_eq!(state.ongoing(), vec![(1, 10)]);
            assert_eq!(state.last_stable_offset(3), 1);
            assert!(state.aborted_in_range(0, 3).is_empty());
            assert_eq!(state.producer(10).map(|p| p.producer_epoch), Some(0));
            assert_eq!(
                state.producer(9).and_then(|p| p.current_txn_first_offset),
                None
            );

            // The new leader committed it instead.
            follow(marker(10, 0, true, 3, 2)).await;
            assert_eq!(state.ongoing(), vec![]);
            assert_eq!(state.last_stable_offset(4), 4);
            assert!(state.aborted_in_range(0, 4).is_empty());
            log.close().await.expect("closes");
        });
}

fn txn_record(pid: i64, epoch: i16, seq: i32, base: i64) -> Bytes {
    let mut b = BatchBuilder::new()
        .producer(pid, epoch, seq)
        .transactional(true);
    b.push(None, Some(b"v"), &[], 1_000);
    stored(b.build(), base, 1)
}

/// Segments of a few batches each, so that the log rolls often.
fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 400,
        ..LogConfig::default()
    }
}

fn run<F, Fut>(test: F)
where
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t-0");
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .expect("executor")
        .run(test(path));
}

/// Opens the partition's log and rebuilds its transactions, as the broker does.
async fn open(path: &Path) -> (PartitionLog, PartitionTxnState) {
    let log = PartitionLog::open(
        path.to_path_buf(),
        small_segments(),
        BatchCache::new(1 << 20),
    )
    .await
    .expect("opens");
    let state = PartitionTxnState::new(path.to_path_buf());
    state
        .rebuild(path, &log, log.log_end_offset().0)
        .await
        .expect("rebuilds");
    (log, state)
}

/// A follower's partition: appends the leader's batches one offset each.
#[derive(Default)]
struct Writer {
    next: i64,
    seqs: std::collections::HashMap<i64, i32>,
}

impl Writer {
    async fn data(&mut self, log: &PartitionLog, state: &PartitionTxnState, pid: i64) {
        let seq = self.seqs.entry(pid).or_insert(0);
        let batch = txn_record(pid, 0, *seq, self.next);
        *seq += 1;
        self.next += 1;
        state
            .append_as_follower(log, &batch)
            .await
            .expect("appends");
    }

    async fn end(&mut self, log: &PartitionLog, state: &PartitionTxnState, pid: i64, commit: bool) {
        let batch = marker(pid, 0, commit, self.next, 1);
        self.next += 1;
        state
            .append_as_follower(log, &batch)
            .await
            .expect("appends");
    }
}

/// Lets the snapshot written in the background after a roll land.
async fn settle(state: &PartitionTxnState, log: &PartitionLog) {
    for _ in 0..200 {
        if state.newest_snapshot() >= log.active_segment_base().0 {
            break;
        }
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
    }
    state.flush_index().await;
}

/// Kafka's 34-byte entry, built field by field: version 0, producer id, first offset,
/// last offset, last stable offset, all big-endian.
fn kafka_entry(pid: i64, first: i64, last: i64, lso: i64) -> Vec<u8> {
    let mut out = vec![0u8, 0u8];
    for v in [pid, first, last, lso] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    assert_eq!(out.len(), 34);
    out
}

/// The `.txnindex` files of `dir` by base offset, with their bytes.
fn index_files(dir: &Path) -> Vec<(i64, Vec<u8>)> {
    let mut out: Vec<(i64, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("lists")
        .filter_map(|e| {
            let e = e.expect("entry");
            let name = e.file_name().into_string().expect("utf-8");
            let base = name.strip_suffix(".txnindex")?.parse().ok()?;
            Some((base, std::fs::read(e.path()).expect("reads")))
        })
        .collect();
    out.sort();
    out
}

/// What a restart must give back.
fn observed(state: &PartitionTxnState, end: i64) -> (Vec<(i64, i64)>, Vec<AbortedTxn>, i64) {
    (
        state.ongoing(),
        state.aborted_index(),
        state.last_stable_offset(end),
    )
}

/// Producers 2.. come and go, every third aborted; `n` transactions in all.
async fn write_history(log: &PartitionLog, state: &PartitionTxnState, w: &mut Writer, n: i64) {
    for pid in 2..2 + n {
        w.data(log, state, pid).await;
        w.end(log, state, pid, pid % 3 != 0).await;
    }
}

/// Producer 1's transaction opened at offset 0 and left open, then [`write_history`] of
/// `n` transactions, and the snapshots of its rolls landed; the writer goes on after it.
async fn open_transaction_then_history(
    log: &PartitionLog,
    state: &PartitionTxnState,
    n: i64,
) -> Writer {
    let mut w = Writer::default();
    w.data(log, state, 1).await;
    write_history(log, state, &mut w, n).await;
    settle(state, log).await;
    w
}

#[test]
fn aborts_are_written_to_their_segments_txnindex_in_kafkas_format() {
    run(|path| async move {
        let (log, state) = open(&path).await;
        open_transaction_then_history(&log, &state, 12).await;
        assert!(log.segment_count() > 2, "the log rolled");
        // Producer p (from 2) writes at 2p-3 and ends at 2p-2; 3, 6, 9, 12 abort,
        // each while producer 1 holds the LSO at 0.
        let expected: Vec<(i64, Vec<u8>)> = [3i64, 6, 9, 12]
            .iter()
            .map(|&pid| (2 * pid - 2, kafka_entry(pid, 2 * pid - 3, 2 * pid - 2, 0)))
            .collect();
        let bases = log.segment_base_offsets();
        let mut want: Vec<(i64, Vec<u8>)> = Vec::new();
        for (marker_offset, bytes) in expected {
            let base = bases
                .iter()
                .rev()
                .find(|b| b.0 <= marker_offset)
                .expect("segment")
                .0;
            match want.last_mut() {
                Some((b, all)) if *b == base => all.extend(bytes),
                _ => want.push((base, bytes)),
            }
        }
        assert_eq!(index_files(&path), want);
        assert_eq!(state.aborted_index().len(), 4);
        log.close().await.expect("closes");
    });
}

#[test]
fn a_restart_replays_only_the_log_after_the_snapshot_and_gives_the_same_state() {
    run(|path| async move {
        let (log, state) = open(&path).await;
        let mut w = open_transaction_then_history(&log, &state, 12).await;
        // After the last snapshot: an abort (its entry must come back from the replay
        // even if the index lost it) and a transaction left open.
        let snapshot = state.newest_snapshot();
        assert!(snapshot > 0, "a roll wrote a snapshot");
        w.data(&log, &state, 50).await;
        w.end(&log, &state, 50, false).await;
        w.data(&log, &state, 51).await;
        settle(&state, &log).await;
        let snapshot = state.newest_snapshot().max(snapshot);
        let end = log.log_end_offset().0;
        assert_eq!(end, w.next);
        let before = observed(&state, end);
        assert_eq!(before.0, vec![(0, 1), (end - 1, 51)]);
        assert_eq!(before.1.len(), 5);
        // As after kill -9: nothing written at close.
        drop(state);
        log.close().await.expect("closes");

        let (log, state) = open(&path).await;
        let replay = state.last_replay().expect("replayed");
        assert_eq!(replay.from_offset, snapshot);
        assert_eq!(
            replay.batches as i64,
            end - snapshot,
            "only the batches after it"
        );
        assert!(replay.batches < end as u64 / 2);
        assert_eq!(observed(&state, end), before);
        assert_eq!(state.producer(50).map(|p| p.producer_epoch), Some(0));
        // The index entries after the snapshot were written again, once.
        assert_eq!(
            index_files(&path)
                .iter()
                .map(|(_, b)| b.len())
                .sum::<usize>(),
            5 * 34
        );
        // The replay snapshotted its result: the next open reads nothing.
        assert_eq!(state.newest_snapshot(), end);
        drop(state);
        log.close().await.expect("closes");

        // A partition written before these files existed: the marker file only. It
        // replays from the log start once, and writes them.
        for e in std::fs::read_dir(&path).expect("lists") {
            let e = e.expect("entry");
            let name = e.file_name().into_string().expect("utf-8");
            if name.ends_with(".txnindex") || name.ends_with(".txnsnapshot") {
                std::fs::remove_file(e.path()).expect("removes");
            }
        }
        let (log, state) = open(&path).await;
        let replay = state.last_replay().expect("replayed");
        assert_eq!((replay.from_offset, replay.batches as i64), (0, end));
        assert_eq!(observed(&state, end), before);
        assert_eq!(state.newest_snapshot(), end);
        assert_eq!(
            index_files(&path)
                .iter()
                .map(|(_, b)| b.len())
                .sum::<usize>(),
            5 * 34
        );
        log.close().await.expect("closes");
    });
}

#[test]
fn a_torn_or_stale_txnindex_is_cut_at_open() {
    run(|path| async move {
        let (log, state) = open(&path).await;
        open_transaction_then_history(&log, &state, 12).await;
        let end = log.log_end_offset().0;
        let before = observed(&state, end);
        let snapshot = state.newest_snapshot();
        drop(state);
        log.close().await.expect("closes");

        // The last index file gets half an entry (a torn write), and an entry for a
        // marker past its snapshot that the log does not prove.
        let files = index_files(&path);
        let (base, bytes) = files.last().expect("an index file");
        let file = path.join(format!("{base:020}.txnindex"));
        let mut damaged = bytes.clone();
        damaged.extend(kafka_entry(77, snapshot, end + 5, end + 6));
        damaged.extend_from_slice(&[0u8; 17]);
        std::fs::write(&file, &damaged).expect("writes");

        let (log, state) = open(&path).await;
        assert_eq!(observed(&state, end), before);
        assert_eq!(
            std::fs::read(&file).expect("reads"),
            *bytes,
            "cut back to what is proven"
        );
        log.close().await.expect("closes");
    });
}

#[test]
fn a_follower_truncation_replays_from_the_snapshot_below_it_and_drops_index_entries() {
    run(|path| async move {
        let (log, state) = open(&path).await;
        let mut w = open_transaction_then_history(&log, &state, 16).await;
        let newest = state.newest_snapshot();
        // Cut below the newest snapshot, right at producer 12's abort (offset 22).
        let cut = 22;
        assert!(
            cut < newest,
            "the cut is below the newest snapshot {newest}"
        );
        let kept_snapshots: Vec<i64> = std::fs::read_dir(&path)
            .expect("lists")
            .filter_map(|e| {
                let name = e.expect("entry").file_name().into_string().ok()?;
                name.strip_suffix(".txnsnapshot")?.parse().ok()
            })
            .filter(|&o| o <= cut)
            .collect();
        state.before_truncation(Some(cut)).await.expect("prepares");
        log.truncate_to(Offset(cut)).await.expect("truncates");
        state.replay(&log, cut).await.expect("replays");
        let replay = state.last_replay().expect("replayed");
        let nearest = kept_snapshots
            .iter()
            .copied()
            .max()
            .expect("a snapshot below the cut");
        assert_eq!(
            replay.from_offset, nearest,
            "from the nearest snapshot below the cut"
        );
        assert_eq!(replay.batches as i64, cut - nearest);
        // Producer 12's transaction is open again; its abort is gone from the index,
        // in memory and on disk.
        assert_eq!(state.ongoing(), vec![(0, 1), (21, 12)]);
        assert_eq!(
            state
                .aborted_index()
                .iter()
                .map(|e| e.producer_id)
                .collect::<Vec<_>>(),
            vec![3, 6, 9]
        );
        let on_disk: usize = index_files(&path).iter().map(|(_, b)| b.len()).sum();
        assert_eq!(on_disk, 3 * 34);
        // The new leader committed it instead; a restart agrees.
        w.next = cut;
        w.end(&log, &state, 12, true).await;
        let end = log.log_end_offset().0;
        let before = observed(&state, end);
        drop(state);
        log.close().await.expect("closes");
        let (log, state) = open(&path).await;
        assert_eq!(observed(&state, end), before);
        log.close().await.expect("closes");
    });
}

#[test]
fn deleting_segments_prunes_the_aborted_list_and_their_txnindex_files() {
    run(|path| async move {
        let (log, state) = open(&path).await;
        let mut w = Writer::default();
        // No transaction stays open here, so records can be deleted past the aborts.
        write_history(&log, &state, &mut w, 12).await;
        settle(&state, &log).await;
        // Producer p ends at 2p-3 here; 3, 6, 9, 12 abort at 3, 9, 15, 21.
        assert_eq!(state.aborted_index().len(), 4);
        let start = 16;
        log.delete_records_before(Offset(start))
            .await
            .expect("deletes");
        state.after_log_start_moved(&log).await;
        assert_eq!(
            state
                .aborted_index()
                .iter()
                .map(|e| e.last_offset)
                .collect::<Vec<_>>(),
            vec![21],
            "only what overlaps the retained log"
        );
        let first_base = log.segment_base_offsets()[0].0;
        assert!(first_base > 9, "segments went");
        assert!(index_files(&path)
            .iter()
            .all(|(base, _)| *base >= first_base));
        let snapshots: Vec<i64> = std::fs::read_dir(&path)
            .expect("lists")
            .filter_map(|e| {
                let name = e.expect("entry").file_name().into_string().ok()?;
                name.strip_suffix(".txnsnapshot")?.parse().ok()
            })
            .collect();
        assert!(!snapshots.is_empty() && snapshots.iter().all(|&o| o >= start));
        let end = log.log_end_offset().0;
        let before = observed(&state, end);
        drop(state);
        log.close().await.expect("closes");
        let (log, state) = open(&path).await;
        assert_eq!(observed(&state, end), before);
        log.close().await.expect("closes");
    });
}

mod on_a_simulated_disk {
    //! The files under crashes: a seeded run appends a follower's transactional
    //! batches and markers to a log on the engine's simulated disk (whose crashes lose,
    //! tear and reorder what was not synced), cuts the log as a follower does, crashes
    //! and closes, and after every open or cut checks the state and the `.txnindex`
    //! files against a replay of the whole surviving log, the state the partition had
    //! before these files existed.

    use super::*;
    use std::collections::HashMap;
    use wharf_engine::sim::{FaultConfig, Rng, Runtime, SimDisk, SimStorage};
    use wharf_protocol::txn::index::ABORTED_TXN_BYTES;

    /// Seeds run by `cargo test`; `WHARF_TXN_FILES_SIM_SEEDS` runs more.
    const SEEDS: u64 = 40;
    const STEPS: usize = 300;
    const PRODUCERS: i64 = 4;

    struct Sim {
        seed: u64,
        rt: Runtime,
        disk: SimDisk,
        dir: PathBuf,
        rng: Rng,
        log: Option<Rc<PartitionLog<SimStorage>>>,
        state: Option<Rc<PartitionTxnState<SimStorage>>>,
        seqs: HashMap<i64, i32>,
        trace: Vec<String>,
    }

    impl Sim {
        fn run<T: 'static>(&self, fut: impl std::future::Future<Output = T> + 'static) -> T {
            let result = self.rt.spawn_with_result(fut);
            self.rt.run_until_stalled();
            match result.take() {
                Some(value) => value,
                None => self.fail("a task never finished"),
            }
        }

        fn fail(&self, what: &str) -> ! {
            panic!(
                "seed {}: {what}\nsteps:\n  {}\nreplay: WHARF_TXN_FILES_SIM_SEED={} cargo test -p wharf-server --lib on_a_simulated_disk",
                self.seed,
                self.trace.join("\n  "),
                self.seed
            )
        }

        fn log(&self) -> Rc<PartitionLog<SimStorage>> {
            self.log.clone().expect("open")
        }

        fn state(&self) -> Rc<PartitionTxnState<SimStorage>> {
            self.state.clone().expect("open")
        }

        fn open(&mut self) {
            let storage = SimStorage::new(self.disk.clone());
            let dir = self.dir.clone();
            let (log, state) = self.run(async move {
                let log = PartitionLog::open_with(
                    storage.clone(),
                    dir.clone(),
                    small_segments(),
                    BatchCache::new(1 << 20),
                )
                .await
                .expect("opens");
                let state = PartitionTxnState::with_storage(storage, dir.clone());
                let end = log.log_end_offset().0;
                state.rebuild(&dir, &log, end).await.expect("rebuilds");
                (Rc::new(log), Rc::new(state))
            });
            self.trace.push(format!(
                "opened [{}, {}), replay {:?}",
                log.log_start_offset().0,
                log.log_end_offset().0,
                state.last_replay()
            ));
            self.log = Some(log);
            self.state = Some(state);
            self.check();
        }

        /// The state and the index files equal what a replay of the whole log gives.
        fn check(&self) {
            let (log, state) = (self.log(), self.state());
            let full = {
                let log = log.clone();
                self.run(async move {
                    let mut txns = PartitionTxns::default();
                    let mut next = log.log_start_offset().0;
                    while next < log.log_end_offset().0 {
                        let bytes = log.read(Offset(next), 1 << 20).await.expect("reads");
                        for (_, batch) in batches(&bytes) {
                            let h = BatchHeader::view(batch).expect("a batch");
                            let last = h.base_offset() + i64::from(h.last_offset_delta());
                            if last >= next {
                                next = last + 1;
                                apply_stored_batch(&mut txns, batch);
                            }
                        }
                    }
                    txns
                })
            };
            let end = log.log_end_offset().0;
            let full_ongoing: Vec<(i64, i64)> = full.ongoing().collect();
            if state.ongoing() != full_ongoing {
                self.fail(&format!(
                    "open transactions {:?}, the log has {full_ongoing:?}",
                    state.ongoing()
                ));
            }
            if state.aborted_index() != full.aborted_index() {
                self.fail(&format!(
                    "aborted {:?}, the log has {:?}",
                    state.aborted_index(),
                    full.aborted_index()
                ));
            }
            if state.last_stable_offset(end) != full.last_stable_offset(end) {
                self.fail("the last stable offset differs");
            }
            for pid in 1..=PRODUCERS {
                if state.producer(pid).as_ref() != full.producer(pid) {
                    self.fail(&format!("producer {pid} differs"));
                }
            }
            // Every index file, in base order, is exactly the aborted list.
            {
                let state = state.clone();
                self.run(async move { state.flush_index().await });
            }
            let mut files: Vec<(i64, Vec<u8>)> = self
                .disk
                .files_in(&self.dir)
                .into_iter()
                .filter_map(|(path, _)| {
                    let name = path.file_name()?.to_str()?.to_string();
                    let base: i64 = name.strip_suffix(".txnindex")?.parse().ok()?;
                    Some((base, self.disk.contents(&path)?))
                })
                .collect();
            files.sort();
            let bases = log.segment_base_offsets();
            let mut want: Vec<(i64, Vec<u8>)> = Vec::new();
            for e in full.aborted_index() {
                let base = bases
                    .iter()
                    .rev()
                    .find(|b| b.0 <= e.last_offset)
                    .map_or(-1, |b| b.0);
                match want.last_mut() {
                    Some((b, bytes)) if *b == base => bytes.extend(e.encode()),
                    _ => want.push((base, e.encode().to_vec())),
                }
            }
            if files != want {
                self.fail(&format!(
                    "index files {:?} (bytes), want {:?}",
                    files
                        .iter()
                        .map(|(b, f)| (*b, f.len() / ABORTED_TXN_BYTES))
                        .collect::<Vec<_>>(),
                    want.iter()
                        .map(|(b, f)| (*b, f.len() / ABORTED_TXN_BYTES))
                        .collect::<Vec<_>>()
                ));
            }
        }

        fn append(&mut self, batch: Bytes, what: String) {
            let (log, state) = (self.log(), self.state());
            self.trace.push(what);
            self.run(async move {
                state
                    .append_as_follower(&log, &batch)
                    .await
                    .expect("appends")
            });
        }

        fn step(&mut self) {
            let (log, state) = (self.log(), self.state());
            let next = log.log_end_offset().0;
            let pid = 1 + self.rng.below(PRODUCERS as u64) as i64;
            match self.rng.below(20) {
                0..=7 => {
                    let seq = self.seqs.entry(pid).or_insert(0);
                    let batch = txn_record(pid, 0, *seq, next);
                    *seq += 1;
                    self.append(batch, format!("data {pid} at {next}"));
                }
                8..=12 if state.has_ongoing_txn(pid) => {
                    let commit = self.rng.coin();
                    self.append(
                        marker(pid, 0, commit, next, 1),
                        format!(
                            "{} {pid} at {next}",
                            if commit { "commit" } else { "abort" }
                        ),
                    );
                }
                13..=14 => {
                    self.trace.push("sync".into());
                    self.run(async move { log.sync().await.expect("syncs") });
                }
                15 if next > 0 => {
                    let cut = next - 1 - self.rng.below(next.min(10) as u64) as i64;
                    self.trace.push(format!("follower cut at {cut}"));
                    self.run(async move {
                        state.before_truncation(Some(cut)).await.expect("prepares");
                        log.truncate_to(Offset(cut)).await.expect("truncates");
                        state.replay(&log, cut).await.expect("replays");
                    });
                    self.trace
                        .push(format!("replay {:?}", self.state().last_replay()));
                    self.check();
                }
                16 => {
                    self.trace.push("crash".into());
                    self.log = None;
                    self.state = None;
                    self.rt.crash();
                    self.disk.crash();
                    self.open();
                }
                17 => {
                    self.trace.push("clean close".into());
                    self.run(async move {
                        state.snapshot_at_close(&log).await;
                        log.close().await.expect("closes");
                    });
                    self.log = None;
                    self.state = None;
                    self.open();
                }
                _ => {
                    // Time for background snapshots to land.
                    self.rt.run_until_stalled();
                }
            }
        }
    }

    fn run_seed(seed: u64) {
        let rt = Runtime::new(seed);
        let disk = SimDisk::new(&rt, seed ^ 0x7A11_0000, 1 << 30, FaultConfig::default());
        let mut sim = Sim {
            seed,
            rt,
            disk,
            dir: PathBuf::from("/data/t-0"),
            rng: Rng::new(seed),
            log: None,
            state: None,
            seqs: HashMap::new(),
            trace: Vec::new(),
        };
        let storage = SimStorage::new(sim.disk.clone());
        let dir = sim.dir.clone();
        sim.run(async move {
            storage.create_dir_all(&dir).await.expect("mkdir");
            storage.sync_dir(&dir).await.expect("syncs");
            storage.sync_dir(Path::new("/data")).await.expect("syncs");
            // A partition that joined a transaction before its first batch.
            storage
                .write_file(&dir.join(TXN_MARKER_FILE), Vec::new())
                .await
                .expect("marker");
            storage.sync_dir(&dir).await.expect("syncs");
        });
        sim.open();
        for _ in 0..STEPS {
            sim.step();
        }
        sim.trace.push("final close".into());
        let (log, state) = (sim.log(), sim.state());
        sim.run(async move {
            state.snapshot_at_close(&log).await;
            log.close().await.expect("closes");
        });
        sim.open();
        let replay = sim.state().last_replay().expect("replayed");
        if replay.batches != 0 {
            sim.fail("a clean close left something to replay");
        }
    }

    #[test]
    fn crashes_and_cuts_leave_the_state_and_the_index_a_full_replay_gives() {
        if let Some(seed) = std::env::var("WHARF_TXN_FILES_SIM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            run_seed(seed);
            return;
        }
        let seeds = std::env::var("WHARF_TXN_FILES_SIM_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(SEEDS);
        for seed in 0..seeds {
            run_seed(seed);
        }
    }
}

#[test]
fn idle_producers_are_forgotten_unless_a_transaction_of_theirs_is_open() {
    run(|path| async move {
        let (log, state) = open(&path).await;
        let mut w = Writer::default();
        // Producer 7 commits; producer 8 aborts one transaction and leaves the next open.
        w.data(&log, &state, 7).await;
        w.end(&log, &state, 7, true).await;
        w.data(&log, &state, 8).await;
        w.end(&log, &state, 8, false).await;
        w.data(&log, &state, 8).await;
        let end = log.log_end_offset().0;
        let before = observed(&state, end);
        assert!(state.producer(7).is_some() && state.producer(8).is_some());

        // Batches carry timestamps of 1 and 2 s: a day later both are idle.
        let day = 86_400_000;
        state.remove_expired(day + 10_000, day);
        assert_eq!(state.producer(7), None, "idle with nothing open: forgotten");
        assert!(
            state.producer(8).is_some(),
            "an open transaction keeps its producer"
        );
        assert_eq!(
            observed(&state, end),
            before,
            "open transactions, aborted list and LSO unchanged"
        );

        // Not yet idle long enough: kept.
        w.end(&log, &state, 8, true).await;
        state.remove_expired(day, day);
        assert!(state.producer(8).is_some());
        state.remove_expired(day + 10_000, day);
        assert_eq!(state.producer(8), None);
        assert_eq!(state.aborted_index().len(), 1, "the abort stays listed");
    });
}
