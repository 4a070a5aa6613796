//! The `wharf` command line as a person meets it: starting on an ephemeral port, `--help`,
//! and the errors a person can act on (port in use, unwritable data dir, bad config), each
//! one clear line on stderr and a non-zero exit.

mod common;

use std::net::TcpListener;

use common::raw::KafkaConn;
use common::{parse_listening_line, run_wharf_to_exit, Broker, Finished, LISTENING_PREFIX};

#[test]
fn listening_line_parser_accepts_the_contract_format_only() {
    assert_eq!(
        parse_listening_line("wharf listening on 127.0.0.1:40123\n"),
        Some("127.0.0.1:40123".parse().expect("valid address"))
    );
    assert_eq!(parse_listening_line("wharf listening on 127.0.0.1:0"), None);
    assert_eq!(parse_listening_line("listening on 127.0.0.1:1"), None);
    assert_eq!(parse_listening_line("wharf listening on nowhere"), None);
}

#[test]
fn broker_on_port_zero_prints_its_port_and_serves_it() {
    let broker = Broker::start();
    assert_ne!(broker.addr().port(), 0);
    let versions = KafkaConn::connect(broker.addr()).api_versions();
    assert!(
        versions.contains_key(&18),
        "ApiVersions must advertise itself"
    );
    broker.assert_no_panic();
}

#[test]
fn help_explains_every_flag_of_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_wharf_to_exit(&["--help"], dir.path());
    assert!(out.status.success(), "wharf --help failed: {}", out.stderr);
    for flag in [
        "--config",
        "--listen",
        "--advertised-listener",
        "--data-dir",
        "--shards",
        "--num-partitions",
        "--auto-create-topics",
        "--node-id",
    ] {
        assert!(
            out.stdout.contains(flag),
            "--help does not mention {flag}:\n{}",
            out.stdout
        );
    }
}

/// Exactly one non-empty line on stderr, naming the problem; non-zero exit; never ready.
fn assert_one_clear_error_line(out: &Finished, mentions_any: &[&str]) {
    assert!(
        !out.status.success(),
        "expected a non-zero exit, got {:?}",
        out.status
    );
    assert!(
        !out.stdout.contains(LISTENING_PREFIX),
        "the broker said it was listening despite the error:\n{}",
        out.stdout
    );
    assert!(
        !out.stderr.contains("panicked"),
        "the broker panicked:\n{}",
        out.stderr
    );
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got:\n{}",
        out.stderr
    );
    let line = lines[0].to_lowercase();
    assert!(
        mentions_any
            .iter()
            .any(|m| line.contains(&m.to_lowercase())),
        "the error line does not name the problem (expected one of {mentions_any:?}): {}",
        lines[0]
    );
}

#[test]
fn port_in_use_is_one_clear_line_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A plain listener without SO_REUSEPORT: nobody else may bind this port now.
    let blocker = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = blocker.local_addr().expect("local_addr").to_string();
    let data = dir.path().join("data");
    let out = run_wharf_to_exit(
        &[
            "--listen",
            &addr,
            "--data-dir",
            data.to_str().expect("utf-8 path"),
            "--shards",
            "2",
        ],
        dir.path(),
    );
    let port = blocker.local_addr().expect("local_addr").port().to_string();
    assert_one_clear_error_line(&out, &[&port]);
    drop(blocker);
}

#[test]
fn a_second_broker_on_a_port_a_broker_serves_is_one_clear_line() {
    // The first broker's listeners share their port with SO_REUSEPORT; the second broker
    // must still be refused, not join it.
    let first = Broker::start();
    let addr = first.addr().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let out = run_wharf_to_exit(
        &[
            "--listen",
            &addr,
            "--data-dir",
            data.to_str().expect("utf-8 path"),
            "--shards",
            "1",
        ],
        dir.path(),
    );
    assert_one_clear_error_line(&out, &[&addr]);
    assert!(
        out.stderr.contains("address already in use"),
        "{}",
        out.stderr
    );
    KafkaConn::connect(first.addr()).api_versions();
    first.assert_no_panic();
}

#[test]
fn metrics_port_in_use_is_one_clear_line_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = blocker.local_addr().expect("local_addr").to_string();
    let data = dir.path().join("data");
    let out = run_wharf_to_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &addr,
            "--data-dir",
            data.to_str().expect("utf-8 path"),
            "--shards",
            "1",
        ],
        dir.path(),
    );
    assert_one_clear_error_line(&out, &["metrics"]);
    assert!(out.stderr.contains(&addr), "{}", out.stderr);
    drop(blocker);
}

#[test]
fn data_dir_that_cannot_be_created_is_one_clear_line_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A regular file where a directory must be: unwritable even for root.
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").expect("write");
    let data = file.join("data");
    let data_str = data.to_str().expect("utf-8 path");
    let out = run_wharf_to_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_str,
            "--shards",
            "2",
        ],
        dir.path(),
    );
    assert_one_clear_error_line(&out, &["not-a-directory"]);
}

#[test]
fn read_only_data_dir_is_one_clear_line_and_a_nonzero_exit() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Root writes through permission bits; a read-only bind mount would need
        // privileges this test should not use. The regular-file case above covers root.
        eprintln!("running as root: permission bits do not stop root, checking a read-only filesystem path instead");
        let dir = tempfile::tempdir().expect("tempdir");
        // /proc refuses mkdir even for root.
        let out = run_wharf_to_exit(
            &[
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                "/proc/wharf-data",
                "--shards",
                "2",
            ],
            dir.path(),
        );
        assert_one_clear_error_line(&out, &["/proc/wharf-data"]);
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let ro = dir.path().join("read-only");
    std::fs::create_dir(&ro).expect("mkdir");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let data = ro.join("data");
    let out = run_wharf_to_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf-8 path"),
            "--shards",
            "2",
        ],
        dir.path(),
    );
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).expect("chmod back");
    assert_one_clear_error_line(&out, &["read-only"]);
}

#[test]
fn bad_config_file_is_one_clear_line_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("broken.toml");
    std::fs::write(&config, "listen = [\"unterminated\n").expect("write");
    let data = dir.path().join("data");
    let out = run_wharf_to_exit(
        &[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf-8 path"),
        ],
        dir.path(),
    );
    assert_one_clear_error_line(&out, &["broken.toml"]);
}

#[test]
fn missing_config_file_is_one_clear_line_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("absent.toml");
    let out = run_wharf_to_exit(
        &[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
        ],
        dir.path(),
    );
    assert_one_clear_error_line(&out, &["absent.toml"]);
}

#[test]
fn a_second_broker_on_the_same_data_dir_is_refused_with_one_clear_line() {
    let first = Broker::start();
    let data = first.data_dir();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_wharf_to_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf-8 path"),
            "--shards",
            "1",
        ],
        dir.path(),
    );
    assert_one_clear_error_line(&out, &["in use", "lock"]);
    // The first broker is unharmed.
    KafkaConn::connect(first.addr()).api_versions();
    first.assert_no_panic();
}

#[test]
fn unknown_setting_in_the_config_file_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("typo.toml");
    std::fs::write(&config, "num.partitons = 4\n").expect("write");
    let data = dir.path().join("data");
    let out = run_wharf_to_exit(
        &[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf-8 path"),
        ],
        dir.path(),
    );
    assert_one_clear_error_line(&out, &["num.partitons"]);
}

/// Partition count of an auto-created topic, asked for over a raw connection.
fn auto_created_partitions(broker: &Broker) -> usize {
    let mut conn = KafkaConn::connect(broker.addr());
    common::raw::ensure_topic(&mut conn, &common::unique_topic("cfg"))
}

#[test]
fn config_file_settings_apply_and_flags_override_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("wharf.toml");
    std::fs::write(&config, "num.partitions = 3\n\"node.id\" = 5\n").expect("write");
    let config = config.to_str().expect("utf-8 path").to_string();

    let from_file = Broker::start_with(&["--config", &config]);
    assert_eq!(
        auto_created_partitions(&from_file),
        3,
        "num.partitions from the file"
    );
    let mut conn = KafkaConn::connect(from_file.addr());
    let version = common::raw::pick_version(
        &conn.api_versions(),
        kafka_protocol::messages::ApiKey::Metadata,
        1,
        12,
    );
    let md = conn.request(
        version,
        &kafka_protocol::messages::MetadataRequest::default(),
    );
    let nodes: Vec<i32> = md.brokers.iter().map(|b| b.node_id.0).collect();
    assert_eq!(nodes, vec![5], "node.id from the file");
    drop(from_file);

    let overridden = Broker::start_with(&["--config", &config, "--num-partitions", "6"]);
    assert_eq!(
        auto_created_partitions(&overridden),
        6,
        "the flag wins over the file"
    );
}
