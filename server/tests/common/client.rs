//! Small helpers around the `rdkafka` crate (librdkafka), the client most Kafka users run.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};

/// Guard against a broker that stops answering; not a timing assertion.
pub const CLIENT_GUARD: Duration = Duration::from_secs(60);

fn base_config(bootstrap: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("client.id", "wharf-it")
        // A single broker: fail fast rather than hang on a dead address.
        .set("socket.timeout.ms", "30000")
        .set("log_level", "4");
    cfg
}

pub fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> FutureProducer {
    let mut cfg = base_config(bootstrap);
    cfg.set("message.timeout.ms", "30000");
    for (k, v) in extra {
        cfg.set(*k, *v);
    }
    cfg.create().expect("cannot create an rdkafka producer")
}

/// A consumer whose partitions are assigned by the test, as `assign()` users do. librdkafka
/// refuses assign() without a group.id, but with no subscribe() and no commits the group is
/// never joined.
pub fn consumer(bootstrap: &str, extra: &[(&str, &str)]) -> BaseConsumer {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let group = format!(
        "assign-only-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut cfg = base_config(bootstrap);
    cfg.set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest");
    for (k, v) in extra {
        cfg.set(*k, *v);
    }
    cfg.create().expect("cannot create an rdkafka consumer")
}

pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    base_config(bootstrap)
        .create()
        .expect("cannot create an rdkafka admin client")
}

pub fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(30)))
        .operation_timeout(Some(Duration::from_secs(30)))
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime")
}

/// Creates `topic` with `partitions` partitions and the given configs; fails the test on error.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin = admin(bootstrap);
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        new_topic = new_topic.set(k, v);
    }
    let results = runtime()
        .block_on(admin.create_topics([&new_topic], &admin_options()))
        .expect("CreateTopics request failed");
    for r in results {
        if let Err((name, code)) = r {
            panic!("CreateTopics {name} failed: {code:?}");
        }
    }
}

/// Partition count of `topic` as the broker's metadata reports it, waiting (bounded) until
/// every partition has a leader.
pub fn partition_count(consumer: &BaseConsumer, topic: &str) -> usize {
    let deadline = Instant::now() + CLIENT_GUARD;
    loop {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("Metadata request failed");
        if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
            if t.error().is_none()
                && !t.partitions().is_empty()
                && t.partitions()
                    .iter()
                    .all(|p| p.leader() >= 0 && p.error().is_none())
            {
                return t.partitions().len();
            }
        }
        assert!(
            Instant::now() < deadline,
            "topic {topic} never became available"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Assigns every partition of `topic` from its beginning and reads until each partition's
/// high watermark; returns the records per partition in the order received.
pub fn read_all(bootstrap: &str, topic: &str) -> HashMap<i32, Vec<OwnedMessage>> {
    let consumer = consumer(bootstrap, &[]);
    let partitions = partition_count(&consumer, topic) as i32;
    let mut tpl = TopicPartitionList::new();
    let mut high = HashMap::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("add partition");
        let (_, hw) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(30))
            .expect("ListOffsets for watermarks failed");
        high.insert(p, hw);
    }
    consumer.assign(&tpl).expect("assign failed");
    let mut out: HashMap<i32, Vec<OwnedMessage>> =
        (0..partitions).map(|p| (p, Vec::new())).collect();
    let done = |out: &HashMap<i32, Vec<OwnedMessage>>| {
        high.iter()
            .all(|(p, hw)| *hw == 0 || out[p].last().is_some_and(|m| m.offset() + 1 >= *hw))
    };
    let deadline = Instant::now() + CLIENT_GUARD;
    while !done(&out) {
        assert!(
            Instant::now() < deadline,
            "did not read up to the high watermarks {high:?}; got {:?}",
            out.iter()
                .map(|(p, v)| (*p, v.len()))
                .collect::<HashMap<_, _>>()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let m = m.detach();
                out.get_mut(&m.partition())
                    .expect("known partition")
                    .push(m);
            }
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
    out
}
