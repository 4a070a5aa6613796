//! The `rdkafka` crate (librdkafka) against a real broker: a FutureProducer and a
//! BaseConsumer with assign(), as a Rust application would use them.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use common::client::{self, CLIENT_GUARD};
use common::{unique_topic, Broker};

#[test]
fn future_producer_and_assigned_consumer_round_trip_keys_values_and_headers() {
    let broker = Broker::start();
    let topic = unique_topic("rdkafka-rt");
    client::create_topic(&broker.bootstrap(), &topic, 8, &[]);
    let producer = client::producer(&broker.bootstrap(), &[("acks", "all"), ("linger.ms", "5")]);
    let rt = client::runtime();

    // Delivery reports per partition, in send order.
    let mut delivered: HashMap<i32, Vec<(i64, String)>> = HashMap::new();
    rt.block_on(async {
        let mut pending = Vec::new();
        for i in 0..400u32 {
            let key = format!("key-{}", i % 37);
            let value = format!("value-{i}");
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "seq",
                    value: Some(i.to_string().as_bytes()),
                })
                .insert(Header {
                    key: "empty",
                    value: None::<&[u8]>,
                });
            let record = FutureRecord::to(&topic)
                .key(&key)
                .payload(&value)
                .headers(headers);
            let fut = producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("enqueue");
            pending.push((value, fut));
        }
        for (value, fut) in pending {
            let delivery = fut
                .await
                .expect("delivery future")
                .map_err(|(e, _)| e)
                .expect("delivered");
            delivered
                .entry(delivery.partition)
                .or_default()
                .push((delivery.offset, value));
        }
    });
    assert!(
        delivered.len() > 1,
        "37 keys over 8 partitions must use more than one partition"
    );
    for (p, acks) in &delivered {
        let offsets: Vec<i64> = acks.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            (0..acks.len() as i64).collect::<Vec<_>>(),
            "partition {p}: dense offsets from 0"
        );
    }

    let read = client::read_all(&broker.bootstrap(), &topic);
    let mut keys_seen: HashMap<String, i32> = HashMap::new();
    for (p, msgs) in &read {
        let expected = delivered.get(p).cloned().unwrap_or_default();
        let got: Vec<(i64, String)> = msgs
            .iter()
            .map(|m| {
                (
                    m.offset(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            got, expected,
            "partition {p}: records read back differ from those delivered"
        );
        for m in msgs {
            let key = String::from_utf8_lossy(m.key().expect("keyed")).into_owned();
            if let Some(prev) = keys_seen.insert(key.clone(), *p) {
                assert_eq!(prev, *p, "key {key} landed in two partitions");
            }
            let headers = m.headers().expect("headers survive");
            assert_eq!(headers.count(), 2);
            let seq = headers.get(0);
            assert_eq!(seq.key, "seq");
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            assert_eq!(
                Some(format!(
                    "value-{}",
                    String::from_utf8_lossy(seq.value.expect("seq value"))
                )),
                Some(value)
            );
            let empty = headers.get(1);
            assert_eq!(
                (empty.key, empty.value),
                ("empty", None),
                "a null header value stays null"
            );
        }
    }
    broker.assert_no_panic();
}

#[test]
fn assigned_consumer_starts_at_the_requested_offset_and_sees_watermarks() {
    let broker = Broker::start();
    let topic = unique_topic("rdkafka-offset");
    client::create_topic(&broker.bootstrap(), &topic, 1, &[]);
    let producer = client::producer(&broker.bootstrap(), &[("acks", "1")]);
    client::runtime().block_on(async {
        for i in 0..50 {
            let value = format!("m{i}");
            let d = producer
                .send(
                    FutureRecord::<(), _>::to(&topic).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("delivered");
            assert_eq!(d.offset, i);
        }
    });
    let consumer = client::consumer(&broker.bootstrap(), &[]);
    let (low, high) = consumer
        .fetch_watermarks(&topic, 0, Duration::from_secs(30))
        .expect("watermarks");
    assert_eq!((low, high), (0, 50));

    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(42))
        .expect("add");
    consumer.assign(&tpl).expect("assign");
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + CLIENT_GUARD;
    while got.len() < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} records after offset 42",
            got.len()
        );
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("consumer error");
            got.push((
                m.offset(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            ));
        }
    }
    let expected: Vec<(i64, String)> = (42..50).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(got, expected);
    broker.assert_no_panic();
}

#[test]
fn idempotent_producer_delivers_each_record_once_in_order_per_partition() {
    let broker = Broker::start();
    let topic = unique_topic("rdkafka-idem");
    client::create_topic(&broker.bootstrap(), &topic, 6, &[]);
    let producer = client::producer(
        &broker.bootstrap(),
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("max.in.flight.requests.per.connection", "5"),
            ("linger.ms", "2"),
            ("batch.num.messages", "50"),
        ],
    );
    let mut delivered: HashMap<i32, Vec<(i64, String)>> = HashMap::new();
    client::runtime().block_on(async {
        let mut pending = Vec::new();
        for i in 0..3000u32 {
            let key = format!("key-{}", i % 101);
            let value = format!("value-{i}");
            let fut = producer
                .send_result(FutureRecord::to(&topic).key(&key).payload(&value))
                .map_err(|(e, _)| e)
                .expect("enqueue");
            pending.push((value, fut));
        }
        for (value, fut) in pending {
            let d = fut
                .await
                .expect("delivery future")
                .map_err(|(e, _)| e)
                .expect("delivered");
            delivered
                .entry(d.partition)
                .or_default()
                .push((d.offset, value));
        }
    });
    assert!(delivered.len() > 1);
    let read = client::read_all(&broker.bootstrap(), &topic);
    let mut total = 0;
    for (p, msgs) in &read {
        let got: Vec<(i64, String)> = msgs
            .iter()
            .map(|m| {
                (
                    m.offset(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        let mut expected = delivered.get(p).cloned().unwrap_or_default();
        expected.sort();
        assert_eq!(
            got, expected,
            "partition {p}: exactly the delivered records"
        );
        // Within a partition, records are stored in the order they were sent.
        let sent_order: Vec<u32> = got
            .iter()
            .map(|(_, v)| v["value-".len()..].parse().expect("value number"))
            .collect();
        assert!(sent_order.windows(2).all(|w| w[0] < w[1]), "partition {p}");
        total += got.len();
    }
    assert_eq!(total, 3000);
    broker.assert_no_panic();
}

#[test]
fn transactional_producer_commits_and_aborts_and_read_committed_sees_only_commits() {
    use rdkafka::producer::Producer;

    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topic = unique_topic("rdk-txn");
    client::create_topic(&bootstrap, &topic, 2, &[]);
    let producer = client::producer(&bootstrap, &[("transactional.id", "wharf-tx")]);
    producer
        .init_transactions(CLIENT_GUARD)
        .expect("init_transactions");
    let rt = client::runtime();
    for (round, commit) in [(0, true), (1, false), (2, true)] {
        producer.begin_transaction().expect("begin_transaction");
        for p in 0..2 {
            let value = format!("r{round}-p{p}");
            rt.block_on(
                producer.send(
                    FutureRecord::<(), _>::to(&topic)
                        .partition(p)
                        .payload(&value),
                    CLIENT_GUARD,
                ),
            )
            .expect("transactional send");
        }
        if commit {
            producer.commit_transaction(CLIENT_GUARD).expect("commit");
        } else {
            producer.abort_transaction(CLIENT_GUARD).expect("abort");
        }
    }
    let read = |isolation: &str| {
        let consumer = client::consumer(&bootstrap, &[("isolation.level", isolation)]);
        let mut tpl = TopicPartitionList::new();
        for p in 0..2 {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .expect("add partition");
        }
        consumer.assign(&tpl).expect("assign");
        let mut got: Vec<(i32, String)> = Vec::new();
        let deadline = std::time::Instant::now() + CLIENT_GUARD;
        let mut quiet = std::time::Instant::now();
        while quiet.elapsed() < Duration::from_millis(1500) {
            assert!(std::time::Instant::now() < deadline, "{got:?}");
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m.expect("consumer error");
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                got.push((m.partition(), value));
                quiet = std::time::Instant::now();
            }
        }
        got.sort();
        got
    };
    let values = |rounds: &[i32]| {
        let mut v: Vec<(i32, String)> = rounds
            .iter()
            .flat_map(|r| (0..2).map(move |p| (p, format!("r{r}-p{p}"))))
            .collect();
        v.sort();
        v
    };
    assert_eq!(read("read_committed"), values(&[0, 2]));
    assert_eq!(read("read_uncommitted"), values(&[0, 1, 2]));
    broker.assert_no_panic();
}
