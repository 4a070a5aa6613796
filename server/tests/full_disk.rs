//! A real broker whose data dir is on a small ext4 file system of its own (made from a
//! file with mkfs.ext4 and mounted through a loop device), filled by a producer: appends
//! fail cleanly with KAFKA_STORAGE_ERROR, reads go on, a broker restarted on the full
//! disk starts and serves every record, producing resumes by itself once a filler file
//! is deleted, and every acknowledged record is still there at its offset. A topic created
//! on the full disk is committed (the metadata log keeps space in reserve) and takes
//! records once there is room.
//!
//! Needs root (mount) and loop devices; without them it says why and does nothing.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

use common::client;
use common::{unique_topic, Broker};

/// Size of the file system the broker's data lives on.
const FS_BYTES: u64 = 64 << 20;
/// Room left for the broker once the filler took the rest.
const ROOM_BYTES: u64 = 6 << 20;
const RECORD_BYTES: usize = 2048;
const PARTITIONS: i32 = 2;
/// Guard against a broker that never takes appends again; not a timing assertion (the
/// engine pauses up to 30 s between tries on a disk that stays full).
const RESUME_GUARD: Duration = Duration::from_secs(120);

/// An ext4 file system in a file, mounted on a loop device; unmounted on drop.
struct LoopFs {
    mountpoint: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    /// `Err(reason)` when this machine cannot do it (not root, no loop devices).
    fn mount(size_bytes: u64) -> Result<LoopFs, String> {
        // SAFETY: a plain syscall without arguments.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root, so no file system can be mounted".into());
        }
        if !Path::new("/dev/loop-control").exists() {
            return Err("this machine has no loop devices (/dev/loop-control)".into());
        }
        let dir = tempfile::Builder::new()
            .prefix("wharf-fullfs-")
            .tempdir()
            .expect("tempdir");
        let image = dir.path().join("fs.img");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).expect("mkdir");
        File::create(&image)
            .and_then(|f| f.set_len(size_bytes))
            .expect("create the image file");
        // No blocks reserved for root: the broker runs as root here and must see the
        // disk full like any other user.
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run mkfs.ext4 ({e}); scripts/install-test-deps.sh installs it")
            });
        assert!(mkfs.success(), "mkfs.ext4 failed: {mkfs}");
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mountpoint)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run mount ({e}); scripts/install-test-deps.sh installs it")
            });
        if !out.status.success() {
            return Err(format!(
                "cannot mount a loop device here: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(LoopFs {
            mountpoint,
            _dir: dir,
        })
    }

    fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes())
            .expect("no NUL in the path");
        // SAFETY: statvfs fills the struct it is given; the path is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
        assert_eq!(rc, 0, "statvfs failed");
        st.f_bavail as u64 * st.f_frsize as u64
    }

    /// Fills the file system with `filler`, then gives `leave_bytes` back.
    fn fill_leaving(&self, filler: &Path, leave_bytes: u64) {
        let mut file = File::create(filler).expect("create the filler");
        let chunk = vec![0xf1u8; 1 << 20];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        let _ = file.sync_all();
        let len = file.metadata().expect("stat").len();
        file.set_len(len.saturating_sub(leave_bytes))
            .expect("give some room back");
        file.sync_all().expect("sync the filler");
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // Lazily: a broker killed a moment ago may still hold files open.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .status();
    }
}

/// What one produce attempt came back with.
enum Outcome {
    Acked(i32, i64),
    StorageError,
}

fn produce(
    rt: &tokio::runtime::Runtime,
    producer: &FutureProducer,
    topic: &str,
    payloads: &[String],
) -> Vec<Outcome> {
    rt.block_on(async {
        // Round robin over the partitions, so each of them meets the full disk.
        let sends: Vec<_> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| {
                producer
                    .send_result(
                        FutureRecord::<(), _>::to(topic)
                            .partition(i as i32 % PARTITIONS)
                            .payload(p.as_bytes()),
                    )
                    .map_err(|(e, _)| e)
            })
            .collect();
        let mut out = Vec::new();
        for send in sends {
            let delivery = send
                .expect("the producer queue has room")
                .await
                .expect("the delivery is reported");
            out.push(match delivery {
                Ok(d) => Outcome::Acked(d.partition, d.offset),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::KafkaStorageError), _)) => {
                    Outcome::StorageError
                }
                Err((e, _)) => panic!("a produce failed with {e}, not KAFKA_STORAGE_ERROR"),
            });
        }
        out
    })
}

fn payload(seq: u64) -> String {
    let mut p = format!("record-{seq:010}-");
    while p.len() < RECORD_BYTES {
        p.push((b'a' + (seq % 26) as u8) as char);
    }
    p
}

/// Every acknowledged record is at its offset, byte for byte, and nothing else is there.
fn check_all_there(bootstrap: &str, topic: &str, acked: &BTreeMap<(i32, i64), String>) {
    let got = client::read_all(bootstrap, topic);
    let mut found = BTreeMap::new();
    for (partition, messages) in got {
        for m in messages {
            let value = String::from_utf8(m.payload().expect("a value").to_vec()).expect("utf-8");
            assert!(
                found.insert((partition, m.offset()), value).is_none(),
                "offset {} of partition {partition} read twice",
                m.offset()
            );
        }
    }
    for (at, value) in acked {
        assert_eq!(
            found.get(at),
            Some(value),
            "acknowledged record at {at:?} is gone"
        );
    }
    assert_eq!(found.len(), acked.len(), "records nobody acknowledged");
}

#[test]
fn a_full_disk_fails_appends_cleanly_serves_reads_and_recovers_when_space_is_freed() {
    let fs = match LoopFs::mount(FS_BYTES) {
        Ok(fs) => fs,
        Err(reason) => {
            println!("SKIPPED full-disk test: {reason}");
            return;
        }
    };
    let data_dir = fs.mountpoint.join("data");
    let partitions = PARTITIONS.to_string();
    let mut broker = Broker::start_in(Some(data_dir), &["--num-partitions", &partitions]);
    let topic = unique_topic("full-disk");
    client::create_topic(
        &broker.bootstrap(),
        &topic,
        PARTITIONS,
        &[("segment.bytes", "1048576")],
    );
    let rt = client::runtime();
    let producer_config = [
        ("acks", "all"),
        ("linger.ms", "5"),
        // Each failure comes back as the broker's answer, not a retry.
        ("message.send.max.retries", "0"),
        ("enable.idempotence", "false"),
        ("message.timeout.ms", "30000"),
    ];
    let producer = client::producer(&broker.bootstrap(), &producer_config);
    let mut acked: BTreeMap<(i32, i64), String> = BTreeMap::new();
    let mut seq = 0u64;
    let mut next_batch = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                seq += 1;
                payload(seq)
            })
            .collect()
    };

    // Some records while there is room.
    let batch = next_batch(200);
    for (outcome, p) in produce(&rt, &producer, &topic, &batch)
        .into_iter()
        .zip(batch)
    {
        match outcome {
            Outcome::Acked(partition, offset) => {
                acked.insert((partition, offset), p);
            }
            Outcome::StorageError => panic!("a storage error with room on the disk"),
        }
    }

    // Fill the disk but for a little room, then produce until appends fail.
    let filler = fs.mountpoint.join("filler");
    fs.fill_leaving(&filler, ROOM_BYTES);
    let mut refused = 0;
    for _ in 0..(4 * ROOM_BYTES as usize / RECORD_BYTES / 100) {
        let batch = next_batch(100);
        for (outcome, p) in produce(&rt, &producer, &topic, &batch)
            .into_iter()
            .zip(batch)
        {
            match outcome {
                Outcome::Acked(partition, offset) => {
                    acked.insert((partition, offset), p);
                }
                Outcome::StorageError => refused += 1,
            }
        }
        if refused >= 200 {
            break;
        }
    }
    assert!(
        refused >= 200,
        "the disk never filled: {} bytes free",
        fs.free_bytes()
    );
    assert!(broker.is_running(), "the broker stays up on a full disk");
    assert!(
        broker.stderr().contains("the disk is full"),
        "the broker says why appends fail"
    );
    // Reads go on.
    check_all_there(&broker.bootstrap(), &topic, &acked);

    // A broker started on the full disk serves every record.
    broker.restart();
    check_all_there(&broker.bootstrap(), &topic, &acked);
    let producer = client::producer(&broker.bootstrap(), &producer_config);
    let still_full = produce(&rt, &producer, &topic, &next_batch(10));
    assert!(
        still_full
            .iter()
            .all(|o| matches!(o, Outcome::StorageError)),
        "appends still fail while the disk is full"
    );

    // A topic created on the full disk: the metadata log keeps space in reserve, so the
    // change is committed; its partition is created once there is room.
    let late = unique_topic("full-disk-late");
    client::create_topic(&broker.bootstrap(), &late, 1, &[]);
    assert!(broker.is_running(), "the broker stays up");

    // Space freed: produce resumes by itself, no restart.
    std::fs::remove_file(&filler).expect("delete the filler");
    let freed = Instant::now();
    let deadline = freed + RESUME_GUARD;
    let mut resumed = std::collections::BTreeSet::new();
    while resumed.len() < PARTITIONS as usize {
        assert!(
            Instant::now() < deadline,
            "produce did not resume within {RESUME_GUARD:?} of freeing space"
        );
        let batch = next_batch(10);
        for (outcome, p) in produce(&rt, &producer, &topic, &batch)
            .into_iter()
            .zip(batch)
        {
            if let Outcome::Acked(partition, offset) = outcome {
                acked.insert((partition, offset), p);
                resumed.insert(partition);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let resumed_after = freed.elapsed();
    // The topic created on the full disk takes records too.
    let mut late_offset = None;
    while late_offset.is_none() {
        assert!(
            Instant::now() < deadline,
            "the topic created on the full disk never took a record"
        );
        late_offset = rt.block_on(async {
            let send = producer
                .send_result(
                    FutureRecord::<(), _>::to(&late)
                        .partition(0)
                        .payload("late"),
                )
                .map_err(|(e, _)| e)
                .expect("the producer queue has room");
            send.await
                .expect("the delivery is reported")
                .ok()
                .map(|d| d.offset)
        });
        if late_offset.is_none() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    assert_eq!(late_offset, Some(0));
    let batch = next_batch(300);
    for (outcome, p) in produce(&rt, &producer, &topic, &batch)
        .into_iter()
        .zip(batch)
    {
        match outcome {
            Outcome::Acked(partition, offset) => {
                acked.insert((partition, offset), p);
            }
            Outcome::StorageError => panic!("a storage error after space was freed"),
        }
    }
    check_all_there(&broker.bootstrap(), &topic, &acked);
    broker.assert_no_panic();
    println!(
        "{} records acknowledged, {refused} refused with KAFKA_STORAGE_ERROR on the full disk, produce resumed {:.1} s after space was freed",
        acked.len(),
        resumed_after.as_secs_f64()
    );
}
