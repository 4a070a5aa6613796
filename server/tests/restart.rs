//! A clean restart: SIGTERM finishes in-flight work, flushes and exits 0; topics, their
//! configs and their data are all there when the broker comes back on the same data dir.

mod common;

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rdkafka::admin::{NewPartitions, ResourceSpecifier};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use common::client;
use common::raw::KafkaConn;
use common::{unique_topic, Broker};

fn produce_keyed(
    bootstrap: &str,
    topic: &str,
    count: usize,
    tag: &str,
) -> Vec<(i32, i64, String, String)> {
    let producer = client::producer(bootstrap, &[("acks", "1"), ("linger.ms", "2")]);
    client::runtime().block_on(async {
        let mut pending = Vec::new();
        for i in 0..count {
            let key = format!("{tag}-key-{}", i % 7);
            let value = format!("{tag}-value-{i}");
            let fut = producer
                .send_result(FutureRecord::to(topic).key(&key).payload(&value))
                .map_err(|(e, _)| e)
                .expect("enqueue");
            pending.push((key, value, fut));
        }
        let mut out = Vec::new();
        for (key, value, fut) in pending {
            let d = fut
                .await
                .expect("delivery")
                .map_err(|(e, _)| e)
                .expect("delivered");
            out.push((d.partition, d.offset, key, value));
        }
        out
    })
}

fn topic_config(bootstrap: &str, topic: &str, name: &str) -> Option<String> {
    let admin = client::admin(bootstrap);
    let results = client::runtime()
        .block_on(
            admin.describe_configs([&ResourceSpecifier::Topic(topic)], &client::admin_options()),
        )
        .expect("DescribeConfigs request failed");
    let resource = results
        .into_iter()
        .next()
        .expect("one resource")
        .expect("DescribeConfigs error");
    resource.get(name).and_then(|e| e.value.clone())
}

#[test]
fn topics_configs_and_data_survive_a_sigterm_restart() {
    let mut broker = Broker::start_with(&["--num-partitions", "2"]);
    let created = unique_topic("restart-created");
    let auto = unique_topic("restart-auto");
    client::create_topic(
        &broker.bootstrap(),
        &created,
        3,
        &[
            ("retention.ms", "123456789"),
            ("max.message.bytes", "500000"),
        ],
    );
    let mut expected = produce_keyed(&broker.bootstrap(), &created, 90, "a");
    let auto_expected = produce_keyed(&broker.bootstrap(), &auto, 20, "b");

    let status = broker.terminate();
    assert!(
        status.success(),
        "SIGTERM must exit 0, got {status:?}; stderr:\n{}",
        broker.stderr()
    );
    broker.restart();

    let consumer = client::consumer(&broker.bootstrap(), &[]);
    assert_eq!(client::partition_count(&consumer, &created), 3);
    assert_eq!(
        client::partition_count(&consumer, &auto),
        2,
        "auto-created with --num-partitions 2"
    );
    assert_eq!(
        topic_config(&broker.bootstrap(), &created, "retention.ms").as_deref(),
        Some("123456789")
    );
    assert_eq!(
        topic_config(&broker.bootstrap(), &created, "max.message.bytes").as_deref(),
        Some("500000")
    );

    for (topic, want) in [(&created, &expected), (&auto, &auto_expected)] {
        let read = client::read_all(&broker.bootstrap(), topic);
        let mut got: Vec<(i32, i64, String, String)> = read
            .values()
            .flatten()
            .map(|m| {
                (
                    m.partition(),
                    m.offset(),
                    String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        got.sort();
        let mut want = want.clone();
        want.sort();
        assert_eq!(got, want, "{topic}: records after restart");
    }

    // New records continue each partition's offsets.
    let more = produce_keyed(&broker.bootstrap(), &created, 30, "c");
    let mut next_offset: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, o, _, _) in &expected {
        let e = next_offset.entry(*p).or_insert(0);
        *e = (*e).max(o + 1);
    }
    for (p, o, _, _) in &more {
        let e = next_offset.entry(*p).or_insert(0);
        assert_eq!(*o, *e, "partition {p}: offsets continue after restart");
        *e += 1;
    }
    expected.extend(more);

    let status = broker.terminate();
    assert!(
        status.success(),
        "second SIGTERM must exit 0, got {status:?}"
    );
    broker.assert_no_panic();
}

#[test]
fn added_partitions_and_deleted_records_survive_a_sigterm_restart() {
    let mut broker = Broker::start();
    let topic = unique_topic("restart-admin");
    client::create_topic(&broker.bootstrap(), &topic, 1, &[]);
    let first = produce_keyed(&broker.bootstrap(), &topic, 20, "d");
    assert!(first.iter().all(|(p, ..)| *p == 0));

    let admin = client::admin(&broker.bootstrap());
    let rt = client::runtime();
    let results = rt
        .block_on(
            admin.create_partitions([&NewPartitions::new(&topic, 3)], &client::admin_options()),
        )
        .expect("CreatePartitions request failed");
    assert!(
        results.iter().all(|r| r.is_ok()),
        "CreatePartitions: {results:?}"
    );
    let mut before = TopicPartitionList::new();
    before
        .add_partition_offset(&topic, 0, Offset::Offset(8))
        .expect("add");
    let deleted = rt
        .block_on(admin.delete_records(&before, &client::admin_options()))
        .expect("DeleteRecords request failed");
    let low = deleted
        .find_partition(&topic, 0)
        .expect("partition 0 in the result");
    assert_eq!(low.offset(), Offset::Offset(8));
    assert!(low.error().is_ok(), "DeleteRecords: {:?}", low.error());
    drop(admin);

    let status = broker.terminate();
    assert!(status.success(), "SIGTERM must exit 0, got {status:?}");
    broker.restart();

    let consumer = client::consumer(&broker.bootstrap(), &[]);
    assert_eq!(
        client::partition_count(&consumer, &topic),
        3,
        "added partitions are kept"
    );
    let (low, high) = consumer
        .fetch_watermarks(&topic, 0, Duration::from_secs(30))
        .expect("watermarks");
    assert_eq!(
        (low, high),
        (8, 20),
        "the log start offset set by DeleteRecords is kept"
    );
    let read = client::read_all(&broker.bootstrap(), &topic);
    let offsets: Vec<i64> = read[&0].iter().map(|m| m.offset()).collect();
    assert_eq!(offsets, (8..20).collect::<Vec<_>>());
    broker.assert_no_panic();
}

#[test]
fn sigterm_while_producing_keeps_every_acknowledged_record() {
    let mut broker = Broker::start_with(&["--num-partitions", "4"]);
    let topic = unique_topic("sigterm-inflight");
    let producer = client::producer(
        &broker.bootstrap(),
        &[
            ("acks", "1"),
            ("linger.ms", "1"),
            ("message.timeout.ms", "10000"),
        ],
    );
    let mut acked: BTreeMap<(i32, i64), String> = BTreeMap::new();
    let mut status = None;
    let deadline = Instant::now() + Duration::from_secs(180);
    client::runtime().block_on(async {
        let mut pending = VecDeque::new();
        let mut seq = 0u64;
        loop {
            while status.is_none() && pending.len() < 200 {
                let payload = format!("seq{seq}");
                let fut = producer
                    .send_result(FutureRecord::to(&topic).key(&payload).payload(&payload))
                    .map_err(|(e, _)| e)
                    .expect("enqueue");
                pending.push_back((payload, fut));
                seq += 1;
            }
            let Some((payload, fut)) = pending.pop_front() else {
                break;
            };
            if let Ok(Ok(d)) = fut.await {
                let previous = acked.insert((d.partition, d.offset), payload);
                assert!(
                    previous.is_none(),
                    "offset {}/{} acknowledged twice",
                    d.partition,
                    d.offset
                );
            }
            if status.is_none() && acked.len() >= 500 {
                // The broker gets SIGTERM with requests in flight on the same connection.
                status = Some(broker.terminate());
            }
            assert!(
                Instant::now() < deadline,
                "only {} acknowledgements",
                acked.len()
            );
        }
    });
    drop(producer);
    let status = status.expect("terminated");
    assert!(
        status.success(),
        "SIGTERM must exit 0, got {status:?}; stderr:\n{}",
        broker.stderr()
    );

    broker.restart();
    let read = client::read_all(&broker.bootstrap(), &topic);
    for ((p, offset), payload) in &acked {
        let m = read[p]
            .iter()
            .find(|m| m.offset() == *offset)
            .unwrap_or_else(|| {
                panic!("acknowledged record {p}/{offset} lost over a clean shutdown")
            });
        assert_eq!(
            String::from_utf8_lossy(m.payload().unwrap_or_default()),
            *payload
        );
    }
    broker.assert_no_panic();
}

/// Sockets in TIME_WAIT whose local port is `port` (from /proc/net/tcp, IPv4).
fn time_wait_sockets_on(port: u16) -> usize {
    const TIME_WAIT: &str = "06";
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|local| local.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && fields.get(3) == Some(&TIME_WAIT)
        })
        .count()
}

/// Stops a broker that has served clients with `stop`, then starts it again on the same
/// port while the old connections' sockets sit in TIME_WAIT: it must come up at the first
/// attempt (a systemd restart loop gets no second chance for a minute otherwise).
fn restarts_on_the_same_port_after(stop: impl FnOnce(&mut Broker)) {
    let mut broker = Broker::start();
    let port = broker.addr().port();
    let mut clients: Vec<KafkaConn> = (0..8)
        .map(|_| {
            let mut conn = KafkaConn::connect(broker.addr());
            conn.api_versions();
            conn
        })
        .collect();
    stop(&mut broker);
    // The broker's side closed first; once the clients close theirs it sits in TIME_WAIT.
    for conn in &mut clients {
        conn.expect_closed();
    }
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(10);
    while time_wait_sockets_on(port) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        time_wait_sockets_on(port) > 0,
        "the scenario needs the old connections in TIME_WAIT"
    );

    let started = Instant::now();
    broker.start_again_on_the_same_port(port);
    eprintln!(
        "listening again on port {port} after {:?}",
        started.elapsed()
    );
    assert_eq!(broker.addr().port(), port);
    KafkaConn::connect(broker.addr()).api_versions();
    broker.assert_no_panic();
}

#[test]
fn a_broker_killed_with_sigkill_listens_again_on_its_port_at_once() {
    restarts_on_the_same_port_after(|broker| broker.kill());
}

#[test]
fn a_broker_stopped_with_sigterm_listens_again_on_its_port_at_once() {
    restarts_on_the_same_port_after(|broker| {
        assert!(broker.terminate().success());
    });
}
