//! Crash test with real processes: a child appends with durable waits and reports every
//! acknowledged batch; it is killed with SIGKILL at random moments, the log is reopened, and
//! every acknowledged batch must be there byte for byte, with nothing but valid, dense
//! batches around them.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use wharf_engine::Offset;

const ROUNDS: u64 = 10;

/// xorshift64*: reproducible from the printed seed, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn every_acknowledged_batch_survives_sigkill() {
    let seed = std::env::var("WHARF_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64
                | 1
        });
    println!("crash test seed {seed} (set WHARF_CRASH_SEED to repeat)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let log_dir = dir.path().join("crash-0");
    // tag -> (base, last) for every acknowledged batch, over all rounds.
    let mut acked: BTreeMap<u64, (i64, i64)> = BTreeMap::new();
    let mut mid_append_rounds = 0;
    for round in 1..=ROUNDS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wharf-engine-crash-writer"))
            .arg(&log_dir)
            .arg(round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the crash writer");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill at a random moment: sometimes during open/recovery (a random time from the
        // start), mostly mid-append: once the writer has acknowledged a random number of
        // batches, plus a random fraction of a millisecond. Counting acknowledgements, not
        // time, keeps the test meaningful however slow the machine is.
        let during_open = round > 1 && rng.below(5) == 0;
        let kill_after = Duration::from_micros(rng.below(20_000));
        let acks_wanted = 4 + rng.below(16) as usize;
        let extra = Duration::from_micros(rng.below(1_000));
        let started = Instant::now();
        let mut lines: Vec<String> = Vec::new();
        let mut acks_seen = 0;
        let mut enough_at: Option<Instant> = None;
        loop {
            if during_open && started.elapsed() >= kill_after {
                break;
            }
            if enough_at.is_some_and(|t| t.elapsed() >= extra) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the writer acknowledged {acks_seen} batches in 120 s"
            );
            match rx.recv_timeout(Duration::from_micros(200)) {
                Ok(line) => {
                    if line.starts_with("ack ") {
                        acks_seen += 1;
                        if acks_seen >= acks_wanted && enough_at.is_none() {
                            enough_at = Some(Instant::now());
                        }
                    }
                    lines.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        if !during_open {
            mid_append_rounds += 1;
        }
        child.kill().expect("SIGKILL the writer");
        let status = child.wait().expect("reap the writer");
        assert!(
            !status.success(),
            "the writer runs until killed: {status:?}"
        );
        reader.join().expect("reader thread");
        lines.extend(rx.try_iter());
        let mut round_acks = 0;
        for line in &lines {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.first() == Some(&"ack") {
                let tag: u64 = fields[1].parse().expect("tag");
                let base: i64 = fields[2].parse().expect("base");
                let last: i64 = fields[3].parse().expect("last");
                acked.insert(tag, (base, last));
                round_acks += 1;
            }
        }
        println!(
            "round {round}: killed {} after {:?}, {round_acks} acknowledged",
            if during_open { "early" } else { "mid-append" },
            started.elapsed()
        );
        verify(&log_dir, &acked, round % 2 == 0);
    }
    assert!(mid_append_rounds >= 1);
    assert!(
        acked.len() >= 4 * mid_append_rounds,
        "every mid-append round waited for 4 acknowledgements at least: {}",
        acked.len()
    );
}

/// Reopens the log and checks it against the acknowledged batches.
fn verify(dir: &std::path::Path, acked: &BTreeMap<u64, (i64, i64)>, close: bool) {
    let dir = dir.to_path_buf();
    let acked = acked.clone();
    run(async move {
        let log = open_with_cache(&dir, crash_config(), wharf_engine::BatchCache::new(0)).await;
        // Every batch in the log is valid, dense, and exactly one the writer appended.
        let all = read_all(&log, 0).await;
        let mut next = 0;
        let mut by_base = BTreeMap::new();
        for (base, bytes) in &all {
            assert_eq!(*base, next, "offsets are dense");
            let info = wharf_protocol::batch::validate_batch(bytes, usize::MAX).expect("valid");
            let tag = first_key(bytes);
            let epoch = (tag / TAGS_PER_ROUND) as i32;
            assert_eq!(
                bytes,
                &as_stored(&crash_batch(tag), *base, epoch),
                "batch at {base} is the one tagged {tag}"
            );
            by_base.insert(*base, tag);
            next = info.last_offset() + 1;
        }
        assert_eq!(log.log_end_offset(), Offset(next));
        for (tag, (base, last)) in &acked {
            assert_eq!(
                by_base.get(base),
                Some(tag),
                "acknowledged batch {tag} at {base}..={last} is in the log"
            );
        }
        if close {
            log.close().await.expect("close");
        }
    });
}

fn first_key(batch: &[u8]) -> u64 {
    let mut records = wharf_protocol::batch::records(batch).expect("uncompressed");
    let record = records.next().expect("a record").expect("well-formed");
    u64::from_be_bytes(record.key.expect("a key").try_into().expect("8-byte key"))
}
