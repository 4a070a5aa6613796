//! What a failed fdatasync and a full disk do to a partition log, on the simulated disk
//! (the only place a failed fdatasync can be made to happen on demand): the log is run
//! through the same code as in production, only its `Storage` is simulated.

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wharf_engine::sim::{FaultConfig, Runtime, SimDisk, SimStorage};
use wharf_engine::{
    AppendInfo, BatchCache, Durability, EngineError, LogConfig, Offset, PartitionLog,
};
use wharf_protocol::batch::{batches, simple_batch, BatchBuilder};

type Log = PartitionLog<SimStorage>;

struct Sim {
    rt: Runtime,
    disk: SimDisk,
}

impl Sim {
    fn new(capacity_bytes: u64) -> Sim {
        Sim::with_seed(capacity_bytes, 7)
    }

    fn with_seed(capacity_bytes: u64, seed: u64) -> Sim {
        let rt = Runtime::new(seed);
        let disk = SimDisk::new(&rt, seed, capacity_bytes, FaultConfig::default());
        Sim { rt, disk }
    }

    fn run<T: 'static>(&self, fut: impl std::future::Future<Output = T> + 'static) -> T {
        let result = self.rt.spawn_with_result(fut);
        self.rt.run_until_stalled();
        result.take().expect("the task finished")
    }

    fn open(&self, dir: &str) -> Rc<Log> {
        let storage = SimStorage::new(self.disk.clone());
        let config = LogConfig {
            segment_bytes: 1 << 20,
            ..LogConfig::default()
        };
        let dir = PathBuf::from(dir);
        Rc::new(
            self.run(Log::open_with(storage, dir, config, BatchCache::new(0)))
                .expect("the log opens"),
        )
    }

    fn append(&self, log: &Rc<Log>, durability: Durability) -> Result<AppendInfo, EngineError> {
        let log = log.clone();
        self.run(async move {
            log.append(Bytes::from(simple_batch(4, 200, 0)), 0, durability)
                .await
        })
    }

    /// Every batch the log serves from its start, as `(base offset, last offset)`.
    fn read_all(&self, log: &Rc<Log>) -> Vec<(i64, i64)> {
        let log = log.clone();
        self.run(async move {
            let mut out = Vec::new();
            let mut from = log.log_start_offset().0;
            loop {
                let bytes = log.read(Offset(from), 1 << 20).await.expect("reads work");
                if bytes.is_empty() {
                    return out;
                }
                for (_, b) in batches(&bytes) {
                    let info = wharf_protocol::batch::validate_batch(b, usize::MAX)
                        .expect("a valid batch");
                    out.push((info.base_offset, info.last_offset()));
                    from = info.last_offset() + 1;
                }
            }
        })
    }
}

fn segment(dir: &str, base: i64) -> PathBuf {
    Path::new(dir).join(format!("{base:020}.log"))
}

/// Tests that log the same error line run one at a time: tracing caches a call site's
/// interest process-wide, and a test thread without a subscriber that reaches the call site
/// while another installs its own can leave the capture empty.
static LOGGING_TESTS: Mutex<()> = Mutex::new(());

/// Error-level log lines written while `f` runs.
fn error_lines<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::ERROR)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, || {
        tracing::callsite::rebuild_interest_cache();
        f()
    });
    let text = String::from_utf8(lines.0.lock().expect("not poisoned").clone()).expect("utf-8");
    (out, text.lines().map(str::to_string).collect())
}

#[test]
fn a_failed_fdatasync_poisons_the_partition_until_it_is_reloaded_from_disk() {
    let _serial = LOGGING_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let sim = Sim::new(64 << 20);
    let a = sim.open("/data/a-0");
    let b = sim.open("/data/b-0");
    for _ in 0..3 {
        sim.append(&a, Durability::Synced).expect("append to a");
        sim.append(&b, Durability::Synced).expect("append to b");
    }
    let durable_end = a.log_end_offset().0;
    sim.append(&a, Durability::Written)
        .expect("a written append");

    sim.disk.fail_next_fdatasync(&segment("/data/a-0", 0));
    let (failed, lines) = error_lines(|| sim.append(&a, Durability::Synced));
    let err = failed.expect_err("an append waiting on a failed fdatasync fails");
    assert!(matches!(err, EngineError::Storage { .. }), "{err:?}");
    assert!(err.to_string().contains("fdatasync"), "{err}");
    assert_eq!(lines.len(), 1, "one log line for the failure: {lines:?}");
    assert!(
        lines[0].contains("fdatasync failed") && lines[0].contains("/data/a-0"),
        "{lines:?}"
    );

    // Never reported durable afterwards: a sync right after answers the failure.
    let sync = {
        let a = a.clone();
        sim.run(async move { a.sync().await })
    };
    assert!(
        sync.is_err(),
        "a sync after a failed fdatasync is not a success"
    );
    // Appends are refused while the partition is reloaded and during the pause after it;
    // reads go on.
    assert!(matches!(
        sim.append(&a, Durability::Written),
        Err(EngineError::Storage { .. })
    ));
    assert!(a.write_error().is_some());
    let served = sim.read_all(&a);
    assert!(served.iter().any(|(base, _)| *base == 0), "{served:?}");
    // The other partition carries on.
    sim.append(&b, Durability::Synced)
        .expect("b is not affected");
    assert!(b.write_error().is_none());

    // Reloaded from disk, no restart: after the pause appends go on from what is there,
    // and everything acknowledged as synced before the failure is still there.
    assert!(!a.reloading(), "the reload from disk finished");
    sim.rt.advance_ms(1_500);
    let info = sim
        .append(&a, Durability::Synced)
        .expect("appends resume after the pause");
    assert!(info.base_offset.0 >= durable_end);
    assert!(a.write_error().is_none());
    let served = sim.read_all(&a);
    let mut next = 0;
    for (base, last) in &served {
        assert_eq!(*base, next, "offsets are contiguous: {served:?}");
        next = last + 1;
    }
    assert!(next >= durable_end && next == a.log_end_offset().0);
    assert_eq!(a.stats().failures, 1);
}

#[test]
fn a_full_disk_refuses_appends_serves_reads_and_takes_appends_again_once_space_is_freed() {
    let sim = Sim::new(64 << 20);
    let log = sim.open("/data/t-0");
    for _ in 0..5 {
        sim.append(&log, Durability::Synced).expect("append");
    }
    // Nothing left: appends fill what is allocated, then find the disk full.
    sim.disk.set_capacity(sim.disk.used_bytes());
    let mut first_failure = None;
    for i in 0..100 {
        if let Err(e) = sim.append(&log, Durability::Written) {
            assert!(matches!(e, EngineError::Storage { .. }), "{e:?}");
            assert!(e.to_string().contains("No space left"), "{e}");
            first_failure = Some(i);
            break;
        }
    }
    assert!(first_failure.is_some(), "the disk fills up");
    let before = sim.read_all(&log);
    for _ in 0..5 {
        assert!(
            matches!(
                sim.append(&log, Durability::Written),
                Err(EngineError::Storage { .. })
            ),
            "appends keep failing while the disk is full"
        );
    }
    sim.rt.advance_ms(60_000);
    assert!(
        sim.append(&log, Durability::Written).is_err(),
        "and after the pause too, while it stays full"
    );
    assert!(log.write_error().is_some());
    assert_eq!(
        sim.read_all(&log),
        before,
        "reads go on, nothing partial served"
    );

    // A restart on the full disk opens the log and serves it.
    let reopened = {
        let log = log.clone();
        let _ = sim.run(async move { log.close().await });
        sim.open("/data/t-0")
    };
    assert_eq!(sim.read_all(&reopened), before);
    assert!(sim.append(&reopened, Durability::Written).is_err());

    // Space comes back: appends resume by themselves after the pause, no restart.
    sim.disk.set_capacity(64 << 20);
    sim.rt.advance_ms(31_000);
    let info = sim
        .append(&reopened, Durability::Synced)
        .expect("appends resume once space is freed");
    assert_eq!(info.base_offset.0, before.last().expect("batches").1 + 1);
    let after = sim.read_all(&reopened);
    assert_eq!(&after[..before.len()], &before[..]);
    assert_eq!(after.len(), before.len() + 1);
}

#[test]
fn a_failed_fdatasync_of_one_partition_leaves_the_others_on_the_same_disk_alone() {
    let _serial = LOGGING_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let sim = Sim::new(64 << 20);
    let logs: Vec<Rc<Log>> = (0..4).map(|p| sim.open(&format!("/data/t-{p}"))).collect();
    for log in &logs {
        sim.append(log, Durability::Synced).expect("append");
    }
    sim.disk.fail_next_fdatasync(&segment("/data/t-2", 0));
    let outcomes = RefCell::new(Vec::new());
    for log in &logs {
        outcomes
            .borrow_mut()
            .push(sim.append(log, Durability::Synced).is_ok());
    }
    assert_eq!(outcomes.into_inner(), vec![true, true, false, true]);
    for (p, log) in logs.iter().enumerate() {
        assert_eq!(log.write_error().is_some(), p == 2, "partition {p}");
    }
}

#[test]
fn a_retried_batch_found_on_disk_after_a_restart_is_answered_as_synced_only_once_it_is() {
    // What a failed fdatasync does to the writes it covered is drawn per disk seed (made
    // durable, kept in the cache, dropped); the seeds that keep the batch in the cache
    // only are the case.
    let mut cases = 0;
    for seed in 0..64 {
        if retried_batch_case(seed) {
            cases += 1;
        }
    }
    assert!(cases >= 5, "only {cases} seeds kept the batch in the cache");
}

/// One disk seed of the test above; false when the seed does not make the case.
fn retried_batch_case(seed: u64) -> bool {
    let sim = Sim::with_seed(64 << 20, seed);
    let dir = "/data/retry-0";
    let mut builder = BatchBuilder::new().producer(7, 0, 0);
    builder.push(Some(b"key"), Some(&[0x5a; 300]), &[], 1_700_000_000_000);
    let batch = Bytes::from(builder.build());
    let append = |log: &Rc<Log>, durability| {
        let (log, batch) = (log.clone(), batch.clone());
        sim.run(async move { log.append(batch, 0, durability).await })
    };
    let log = sim.open(dir);
    let first = append(&log, Durability::Written).expect("written (acks=1)");
    // The broker stops; closing trims the segment to its size, then its fdatasync fails.
    // The machine keeps running, so the batch may still be in the file without being
    // durable.
    sim.disk.fail_next_fdatasync(&segment(dir, 0));
    let closed = {
        let log = log.clone();
        sim.run(async move { log.close().await })
    };
    assert!(closed.is_err(), "the close's fdatasync failed");
    drop(log);
    let durable_len = |sim: &Sim| {
        sim.disk
            .durable_contents(&segment(dir, 0))
            .map_or(0, |c| c.len())
    };
    let end = batch.len();
    let in_file = sim
        .disk
        .contents(&segment(dir, 0))
        .is_some_and(|c| c.len() >= end);
    if durable_len(&sim) >= end || !in_file {
        return false;
    }

    // The restarted broker finds the batch; the producer retries it with acks=all: a
    // duplicate (KIP-98), answered with its first offsets, and only once it is durable.
    let log = sim.open(dir);
    let retried = append(&log, Durability::Synced).expect("the retry is answered");
    assert_eq!(retried.base_offset, first.base_offset, "seed {seed}");
    assert_eq!(
        log.log_end_offset().0,
        first.last_offset.0 + 1,
        "seed {seed}: not appended twice"
    );
    assert!(
        durable_len(&sim) >= end,
        "seed {seed}: a batch answered as synced is durable"
    );
    true
}
