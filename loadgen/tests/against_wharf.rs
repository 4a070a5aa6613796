//! wharf-loadgen against a real `wharf` process on an ephemeral port: every mode runs to
//! completion, counts what the broker acknowledged, and reports the broker's errors.
//!
//! The broker binary is the workspace's `wharf` in the same target directory (built by
//! `cargo test --workspace`, or here with `cargo build -p wharf-server` if it is missing).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

fn wharf_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/<this test> → target/<profile>/wharf
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>");
        let bin = profile_dir.join("wharf");
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build.args(["build", "-p", "wharf-server", "--bin", "wharf"]);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                build.arg("--release");
            }
            let status = build.status().expect("cargo runs");
            assert!(status.success(), "building wharf failed");
        }
        assert!(bin.exists(), "no wharf binary at {}", bin.display());
        bin
    })
    .clone()
}

/// A `wharf` with one shard, its own data directory and a free port; killed on drop.
struct Broker {
    child: Child,
    addr: String,
    _data: tempfile::TempDir,
}

impl Broker {
    fn start(extra: &[&str]) -> Broker {
        let data = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(wharf_binary())
            .args(["--listen", "127.0.0.1:0", "--shards", "1", "--data-dir"])
            .arg(data.path())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("wharf starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("wharf prints its address");
        let addr = line
            .trim()
            .strip_prefix("wharf listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from wharf: {line:?}"))
            .to_string();
        Broker {
            child,
            addr,
            _data: data,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs wharf-loadgen with `args` against `broker`; returns its exit code and JSON report.
/// Consumes `records` records of `topic` from the start (plus `extra` flags) and checks
/// that the run succeeded with exactly that many; returns its report.
fn consume_back(broker: &Broker, topic: &str, records: u64, extra: &[&str]) -> Value {
    let count = records.to_string();
    let mut args = vec![
        "consume",
        "--topic",
        topic,
        "--from",
        "earliest",
        "--records",
        &count,
    ];
    args.extend_from_slice(extra);
    let (code, report) = loadgen(broker, &args);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["consume"]["records"], records);
    report
}

/// wharf-loadgen with `args` against `broker`: no warm-up, quiet, `drain` seconds of
/// --drain-timeout, its JSON report written to `json`.
fn loadgen_command(broker: &Broker, args: &[&str], drain: &str, json: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wharf-loadgen"));
    command
        .args(args)
        .args([
            "--bootstrap",
            &broker.addr,
            "--warmup",
            "0",
            "--quiet",
            "--drain-timeout",
            drain,
        ])
        .arg("--json")
        .arg(json);
    command
}

fn loadgen(broker: &Broker, args: &[&str]) -> (i32, Value) {
    loadgen_draining(broker, args, "20")
}

/// [`loadgen`] with `drain` seconds of --drain-timeout (a consumer with --records stops
/// after that long without new records).
fn loadgen_draining(broker: &Broker, args: &[&str], drain: &str) -> (i32, Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let output = loadgen_command(broker, args, drain, &json)
        .output()
        .expect("wharf-loadgen runs");
    let code = output.status.code().unwrap_or(-1);
    let text = std::fs::read_to_string(&json).unwrap_or_else(|_| {
        panic!(
            "no report (exit {code}); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (
        code,
        serde_json::from_str(&text).expect("the report is JSON"),
    )
}

#[test]
fn closed_loop_produce_counts_every_acknowledged_record_then_consume_reads_them_back() {
    let broker = Broker::start(&[]);
    let (code, report) = loadgen(
        &broker,
        &[
            "produce",
            "--topic",
            "closed",
            "--create-topic",
            "--partitions",
            "4",
            "--records",
            "20000",
            "--record-size",
            "100..300",
        ],
    );
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["partitions"], 4);
    assert_eq!(report["produce"]["records"], 20000);
    assert_eq!(
        report["produce_latency"]["count"], 20000,
        "one latency per record"
    );
    assert!(
        report["errors"].as_object().unwrap().is_empty(),
        "{}",
        report["errors"]
    );
    let bytes = report["produce"]["bytes"].as_u64().unwrap();
    assert!(
        (20000 * 100..=20000 * 300).contains(&bytes),
        "value bytes {bytes}"
    );

    let report = consume_back(&broker, "closed", 20000, &["--consumers", "2"]);
    assert!(
        report["errors"].as_object().unwrap().is_empty(),
        "{}",
        report["errors"]
    );
}

#[test]
fn open_loop_sends_exactly_the_scheduled_records_with_keys_and_compression() {
    let broker = Broker::start(&[]);
    // 2,000 records/s for 1 s: the schedule holds exactly 2,000 intended send times.
    let (code, report) = loadgen(
        &broker,
        &[
            "produce",
            "--topic",
            "open",
            "--create-topic",
            "--partitions",
            "3",
            "--rate",
            "2000",
            "--duration",
            "1",
            "--keys",
            "zipf:50",
            "--compression",
            "lz4",
            "--acks",
            "all",
        ],
    );
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["workload"]["load"], "open");
    let records = report["produce"]["records"].as_u64().unwrap();
    assert!((1999..=2001).contains(&records), "{records} records");
    assert_eq!(
        report["produce_latency"]["count"].as_u64().unwrap(),
        records
    );
    let dist = report["produce_latency"]["distribution"]
        .as_array()
        .unwrap();
    assert_eq!(dist.last().unwrap()["percentile"], 100.0);
}

#[test]
fn acks_zero_records_count_once_written_and_all_arrive() {
    let broker = Broker::start(&[]);
    let (code, report) = loadgen(
        &broker,
        &[
            "produce",
            "--topic",
            "fire",
            "--create-topic",
            "--acks",
            "0",
            "--records",
            "10000",
            "--in-flight",
            "2",
        ],
    );
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["produce"]["records"], 10000);
    assert_eq!(report["produce_latency"]["count"], 10000);
    // Nothing acknowledged them, so read them back to see that they all arrived.
    consume_back(&broker, "fire", 10000, &[]);
}

#[test]
fn e2e_consumes_every_acknowledged_record_and_measures_each() {
    let broker = Broker::start(&[]);
    let (code, report) = loadgen(
        &broker,
        &[
            "e2e",
            "--topic",
            "e2e",
            "--create-topic",
            "--partitions",
            "2",
            "--records",
            "5000",
            "--rate",
            "5000",
            "--consumers",
            "2",
        ],
    );
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["produce"]["records"], 5000);
    assert_eq!(
        report["e2e_latency"]["count"], 5000,
        "every record seen once by a consumer"
    );
    let e2e_p50 = report["e2e_latency"]["p50_ms"].as_f64().unwrap();
    assert!(e2e_p50 > 0.0);
}

/// Every batch in `partition` of `topic` as (producer id, producer epoch, base sequence,
/// records), read from the start with plain Fetch v4 requests.
fn batch_headers(broker: &Broker, topic: &str, partition: i32) -> Vec<(i64, i16, i32, i32)> {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::ResponseHeader;
    use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, RequestHeader};
    use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};
    use std::io::{Read, Write};

    const VERSION: i16 = 4;
    let mut stream = std::net::TcpStream::connect(&broker.addr).expect("connect");
    let mut headers = Vec::new();
    let mut offset = 0i64;
    for correlation_id in 1.. {
        let mut fp = FetchPartition::default();
        fp.partition = partition;
        fp.fetch_offset = offset;
        fp.partition_max_bytes = 1 << 20;
        let mut ft = FetchTopic::default();
        ft.topic = kafka_protocol::messages::TopicName(topic.to_string().into());
        ft.partitions = vec![fp];
        let mut request = FetchRequest::default();
        request.max_wait_ms = 0;
        request.max_bytes = 1 << 20;
        request.topics = vec![ft];
        let mut header = RequestHeader::default();
        header.request_api_key = ApiKey::Fetch as i16;
        header.request_api_version = VERSION;
        header.correlation_id = correlation_id;
        let mut body = Vec::new();
        header
            .encode(&mut body, FetchRequest::header_version(VERSION))
            .unwrap();
        request.encode(&mut body, VERSION).unwrap();
        stream
            .write_all(&(body.len() as i32).to_be_bytes())
            .unwrap();
        stream.write_all(&body).unwrap();
        let mut size = [0u8; 4];
        stream.read_exact(&mut size).unwrap();
        let mut frame = vec![0u8; i32::from_be_bytes(size) as usize];
        stream.read_exact(&mut frame).unwrap();
        let mut frame = bytes::Bytes::from(frame);
        ResponseHeader::decode(&mut frame, FetchResponse::header_version(VERSION)).unwrap();
        let response = FetchResponse::decode(&mut frame, VERSION).unwrap();
        let p = &response.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "fetch {topic}-{partition} at {offset}");
        let records = p.records.clone().unwrap_or_default();
        for (_, batch) in wharf_protocol::batch::batches(&records) {
            let info = wharf_protocol::batch::validate_batch(batch, 1 << 20).expect("valid batch");
            headers.push((
                info.producer_id,
                info.producer_epoch,
                info.base_sequence,
                info.records_count,
            ));
            offset = info.last_offset() + 1;
        }
        if offset >= p.high_watermark {
            break;
        }
    }
    headers
}

#[test]
fn idempotent_producers_stamp_in_order_sequences_and_every_record_lands_once() {
    let broker = Broker::start(&[]);
    let partitions = 4;
    let (code, report) = loadgen(
        &broker,
        &[
            "produce",
            "--topic",
            "exactly",
            "--create-topic",
            "--partitions",
            "4",
            "--records",
            "30000",
            "--record-size",
            "100..300",
            "--batch-size",
            "4096",
            "--producers",
            "2",
            "--in-flight",
            "5",
            "--acks",
            "all",
            "--idempotent",
        ],
    );
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["workload"]["idempotent"], true);
    assert_eq!(report["produce"]["records"], 30000);
    assert!(
        report["errors"].as_object().unwrap().is_empty(),
        "{}",
        report["errors"]
    );
    // Many more batches than requests in flight, so pipelining was exercised.
    assert!(
        report["produce"]["requests"].as_u64().unwrap() > 100,
        "{report}"
    );

    // Every batch carries a producer id, and each producer's sequences in each partition
    // start at 0 and advance by the records of its batches, in log order.
    let mut producer_ids = std::collections::BTreeSet::new();
    let mut stored = 0i64;
    for partition in 0..partitions {
        let mut next: std::collections::BTreeMap<i64, i32> = Default::default();
        for (producer_id, epoch, base_sequence, records) in
            batch_headers(&broker, "exactly", partition)
        {
            assert!(
                producer_id >= 0,
                "partition {partition}: a batch without producer id"
            );
            assert_eq!(epoch, 0);
            let expected = next.entry(producer_id).or_insert(0);
            assert_eq!(
                base_sequence, *expected,
                "partition {partition}, producer {producer_id}"
            );
            *expected += records;
            producer_ids.insert(producer_id);
            stored += i64::from(records);
        }
    }
    assert_eq!(producer_ids.len(), 2, "one producer id per connection");
    assert_eq!(stored, 30000);

    consume_back(&broker, "exactly", 30000, &["--consumers", "2"]);
}

#[test]
fn transactions_commit_and_abort_and_read_committed_sees_exactly_the_committed_records() {
    let broker = Broker::start(&[]);
    let (code, report) = loadgen(
        &broker,
        &[
            "produce",
            "--topic",
            "txn",
            "--create-topic",
            "--partitions",
            "2",
            "--records",
            "4000",
            "--record-size",
            "100",
            "--batch-size",
            "2048",
            "--producers",
            "2",
            "--acks",
            "all",
            "--transactional",
            "--records-per-txn",
            "100",
            // Half the transactions aborted at random: with 40 of them, both kinds occur
            // (all of one kind has a chance of 2^-39).
            "--abort-ratio",
            "0.5",
        ],
    );
    assert_eq!(code, 0, "{report}");
    assert!(
        report["errors"].as_object().unwrap().is_empty(),
        "{}",
        report["errors"]
    );
    assert_eq!(report["workload"]["transactional"], true);
    assert_eq!(report["workload"]["idempotent"], true);
    assert_eq!(report["produce"]["records"], 4000);
    let txn = &report["transactions"];
    let count = |key: &str| txn[key].as_u64().unwrap_or_else(|| panic!("{key}: {txn}"));
    let (committed, aborted) = (count("committed"), count("aborted"));
    let (committed_records, aborted_records) =
        (count("committed_records"), count("aborted_records"));
    // Each producer's 2,000 records in transactions of 100.
    assert_eq!(committed + aborted, 40, "{txn}");
    assert!(committed > 0 && aborted > 0, "{txn}");
    assert_eq!(committed_records, committed * 100, "{txn}");
    assert_eq!(aborted_records, aborted * 100, "{txn}");
    assert_eq!(txn["commit_latency"]["count"].as_u64(), Some(committed));
    assert!(txn["transactions_per_sec"].as_f64().unwrap() > 0.0, "{txn}");

    // read_committed: exactly the committed records. Asking for one more than that, the
    // consumer gets everything there is and stops once nothing new comes.
    let want = (committed_records + 1).to_string();
    let (code, report) = loadgen_draining(
        &broker,
        &[
            "consume",
            "--topic",
            "txn",
            "--from",
            "earliest",
            "--records",
            &want,
            "--isolation-level",
            "read_committed",
        ],
        "5",
    );
    assert_eq!(report["workload"]["isolation_level"], "read_committed");
    assert_eq!(
        report["consume"]["records"], committed_records,
        "read_committed: {report}"
    );
    assert_eq!(code, 2, "{report}");
    assert_eq!(
        report["errors"]["NO_NEW_RECORDS_WITHIN_DRAIN_TIMEOUT"], 1,
        "{}",
        report["errors"]
    );
    // read_uncommitted: every record of both kinds (the markers are not records).
    let want = (4000 + 1).to_string();
    let (_, report) = loadgen_draining(
        &broker,
        &[
            "consume",
            "--topic",
            "txn",
            "--from",
            "earliest",
            "--records",
            &want,
            "--isolation-level",
            "read_uncommitted",
        ],
        "5",
    );
    assert_eq!(
        report["consume"]["records"], 4000,
        "read_uncommitted: {report}"
    );
}

#[test]
fn transactional_refuses_acks_one_in_one_line_before_connecting() {
    let output = Command::new(env!("CARGO_BIN_EXE_wharf-loadgen"))
        .args(["produce", "--transactional", "--bootstrap", "127.0.0.1:1"])
        .output()
        .expect("wharf-loadgen runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--transactional needs --acks all"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn idempotent_e2e_sees_every_record_once() {
    let broker = Broker::start(&[]);
    let (code, report) = loadgen(
        &broker,
        &[
            "e2e",
            "--topic",
            "e2e-idempotent",
            "--create-topic",
            "--partitions",
            "3",
            "--records",
            "3000",
            "--rate",
            "3000",
            "--acks",
            "all",
            "--idempotent",
        ],
    );
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["workload"]["idempotent"], true);
    assert_eq!(report["produce"]["records"], 3000);
    assert_eq!(report["e2e_latency"]["count"], 3000);
}

#[test]
fn idempotent_refuses_acks_one_in_one_line_before_connecting() {
    let output = Command::new(env!("CARGO_BIN_EXE_wharf-loadgen"))
        .args([
            "produce",
            "--idempotent",
            "--acks",
            "1",
            "--bootstrap",
            "127.0.0.1:1",
        ])
        .output()
        .expect("wharf-loadgen runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--idempotent needs --acks all"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn broker_errors_are_counted_and_reported_not_retried() {
    let broker = Broker::start(&[]);
    // A 1 MiB value makes a batch over Kafka's default max.message.bytes (1,048,588).
    let (code, report) = loadgen(
        &broker,
        &[
            "produce",
            "--topic",
            "big",
            "--create-topic",
            "--record-size",
            "1048576",
            "--batch-size",
            "1048576",
            "--records",
            "3",
            "--producers",
            "1",
        ],
    );
    assert_eq!(
        code, 2,
        "exit status 2 says the broker answered with errors: {report}"
    );
    assert_eq!(report["produce"]["records"], 0);
    assert_eq!(
        report["errors"]["MESSAGE_TOO_LARGE"], 3,
        "each refused batch once: {}",
        report["errors"]
    );
    assert_eq!(report["error_records"], 3);
}

#[test]
fn an_unknown_topic_without_auto_create_is_a_one_line_failure() {
    let broker = Broker::start(&["--auto-create-topics", "false"]);
    let output = Command::new(env!("CARGO_BIN_EXE_wharf-loadgen"))
        .args([
            "produce",
            "--topic",
            "absent",
            "--records",
            "10",
            "--bootstrap",
            &broker.addr,
        ])
        .output()
        .expect("wharf-loadgen runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("UNKNOWN_TOPIC_OR_PARTITION"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// Committed offset and log end offset of each partition of `topic` in `group`, from
/// `wharf group describe` (FindCoordinator, OffsetFetch and ListOffsets over the protocol).
fn committed_and_end_offsets(broker: &Broker, group: &str, topic: &str) -> Vec<(i64, i64)> {
    let output = Command::new(wharf_binary())
        .args(["group", "describe", group, "--bootstrap", &broker.addr])
        .output()
        .expect("wharf group describe runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
    let mut rows: Vec<(i32, i64, i64)> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cols| cols.len() >= 6 && cols[0] == group && cols[1] == topic)
        .map(|cols| {
            let number = |s: &str| s.parse::<i64>().unwrap_or(-1); // "-": none committed
            (
                cols[2].parse().expect("partition"),
                number(cols[3]),
                number(cols[4]),
            )
        })
        .collect();
    rows.sort();
    rows.into_iter().map(|(_, c, e)| (c, e)).collect()
}

/// A group run succeeded: exit status 0, or 2 when the only errors counted were
/// COORDINATOR_LOAD_IN_PROGRESS (a broker that has just started may still be loading its
/// group state; members count it and retry, as Kafka clients retry it).
fn group_run_ok(code: i32, report: &Value) -> bool {
    let errors = report["errors"].as_object().expect("errors");
    let only_loading = errors.keys().all(|k| k == "COORDINATOR_LOAD_IN_PROGRESS");
    only_loading && (code == 0 || (code == 2 && !errors.is_empty()))
}

#[test]
fn group_members_share_the_partitions_commit_what_they_consumed_and_resume_from_it() {
    // A short initial rebalance delay: the members of one run still join one generation.
    let broker = Broker::start(&["--group-initial-rebalance-delay-ms", "500"]);
    let (code, report) = loadgen(
        &broker,
        &[
            "produce",
            "--topic",
            "grouped",
            "--create-topic",
            "--partitions",
            "4",
            "--records",
            "8000",
            "--record-size",
            "200",
        ],
    );
    assert_eq!(code, 0, "{report}");

    let consume = |records: &str| {
        loadgen(
            &broker,
            &[
                "consume",
                "--topic",
                "grouped",
                "--group",
                "readers",
                "--consumers",
                "2",
                "--records",
                records,
                "--from",
                "earliest",
            ],
        )
    };
    let (code, report) = consume("8000");
    assert!(group_run_ok(code, &report), "exit {code}: {report}");
    assert_eq!(
        report["consume"]["records"], 8000,
        "every record exactly once"
    );
    let group = &report["group"];
    assert_eq!(group["group_id"], "readers");
    assert_eq!(group["members"], 2);
    assert!(group["commits"].as_u64().unwrap() >= 1, "{group}");
    assert_eq!(group["failed_commits"], 0);
    let offsets = committed_and_end_offsets(&broker, "readers", "grouped");
    assert_eq!(offsets.len(), 4, "{offsets:?}");
    assert!(
        offsets.iter().all(|(c, e)| c == e),
        "committed = end: {offsets:?}"
    );
    assert_eq!(offsets.iter().map(|(_, e)| e).sum::<i64>(), 8000);

    // More records, then the same group again: it starts at its committed offsets, not at
    // --from earliest, so it reads exactly the new records.
    let (code, report) = loadgen(
        &broker,
        &[
            "produce",
            "--topic",
            "grouped",
            "--records",
            "1000",
            "--record-size",
            "200",
        ],
    );
    assert_eq!(code, 0, "{report}");
    let (code, report) = consume("1000");
    assert!(group_run_ok(code, &report), "exit {code}: {report}");
    assert_eq!(report["consume"]["records"], 1000, "only the new records");
    let offsets = committed_and_end_offsets(&broker, "readers", "grouped");
    assert!(
        offsets.iter().all(|(c, e)| c == e),
        "committed = end: {offsets:?}"
    );
    assert_eq!(offsets.iter().map(|(_, e)| e).sum::<i64>(), 9000);
}

#[test]
fn a_group_with_more_members_than_partitions_completes_and_commits_everything() {
    // No initial delay: members joining one after another make the group rebalance.
    let broker = Broker::start(&["--group-initial-rebalance-delay-ms", "0"]);
    let (code, report) = loadgen(
        &broker,
        &[
            "produce",
            "--topic",
            "few",
            "--create-topic",
            "--partitions",
            "2",
            "--records",
            "5000",
            "--record-size",
            "100",
        ],
    );
    assert_eq!(code, 0, "{report}");
    let (code, report) = loadgen(
        &broker,
        &[
            "consume",
            "--topic",
            "few",
            "--group",
            "crowd",
            "--cores",
            "2",
            "--consumers",
            "3",
            "--records",
            "5000",
            "--from",
            "earliest",
            "--heartbeat-interval-ms",
            "300",
        ],
    );
    assert!(group_run_ok(code, &report), "exit {code}: {report}");
    assert_eq!(report["consume"]["records"], 5000);
    assert_eq!(report["group"]["members"], 6, "idle members join too");
    let offsets = committed_and_end_offsets(&broker, "crowd", "few");
    assert_eq!(offsets.len(), 2, "{offsets:?}");
    assert!(
        offsets.iter().all(|(c, e)| c == e),
        "committed = end: {offsets:?}"
    );
    assert_eq!(offsets.iter().map(|(_, e)| e).sum::<i64>(), 5000);
}

#[test]
fn e2e_in_a_group_sees_every_acknowledged_record() {
    let broker = Broker::start(&["--group-initial-rebalance-delay-ms", "200"]);
    let (code, report) = loadgen(
        &broker,
        &[
            "e2e",
            "--topic",
            "e2e-group",
            "--create-topic",
            "--partitions",
            "3",
            "--records",
            "3000",
            "--rate",
            "3000",
            "--consumers",
            "2",
            "--group",
            "watchers",
        ],
    );
    assert!(group_run_ok(code, &report), "exit {code}: {report}");
    assert_eq!(report["produce"]["records"], 3000);
    assert_eq!(
        report["e2e_latency"]["count"], 3000,
        "every record seen once"
    );
    assert_eq!(report["group"]["members"], 2);
}

#[test]
fn a_broker_that_stops_answering_ends_the_run_with_its_records_counted_as_lost() {
    let broker = Broker::start(&[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    // A run bounded only by a record count it will never reach.
    let args = [
        "produce",
        "--topic",
        "frozen",
        "--create-topic",
        "--records",
        "1000000000",
        "--rate",
        "2000",
        "--producers",
        "1",
        "--request-timeout-ms",
        "1000",
    ];
    let mut run = loadgen_command(&broker, &args, "1", &json)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wharf-loadgen runs");
    std::thread::sleep(Duration::from_secs(2));
    let pid = broker.child.id().to_string();
    let stopped = Command::new("kill").args(["-STOP", &pid]).status();
    assert!(stopped.expect("kill runs").success());
    // Answers are due within the Produce timeout plus the drain timeout (2 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = run.try_wait().expect("wait for wharf-loadgen") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = run.kill();
            let _ = run.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    let status = status.expect("wharf-loadgen ends once the broker stops answering");
    assert_eq!(status.code(), Some(2), "errors make the exit status 2");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("a report")).expect("JSON");
    assert_eq!(
        report["errors"]["NO_ANSWER_WITHIN_REQUEST_TIMEOUT"], 1,
        "{}",
        report["errors"]
    );
    assert!(
        report["error_records"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
}
