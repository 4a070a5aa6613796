//! Replicated partitions with real processes: three `wharf` nodes on loopback (one shard
//! each, their own data dirs), a topic with replication factor 3, producers with acks=all
//! through librdkafka. Every acknowledged record is on every replica's disk, the replicas'
//! logs hold the same batches, and after the leader's process is killed with SIGKILL the
//! controller elects another in-sync replica: producing goes on there, nothing acknowledged
//! is lost, offsets continue, and the old leader comes back as a follower with the new
//! leader's log. A follower stopped with SIGSTOP leaves the ISR for lagging and rejoins;
//! after every node stops cleanly and starts again, the leader shows the committed records
//! at once, from its high-watermark checkpoint; after every node crashes, the leader that
//! comes back alone with an old checkpoint does not tell consumers the latest offset
//! (KIP-207) until its followers are back. Transactions and consumer groups go on when
//! their coordinator's node is killed: the coordinator moves with its internal partition.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::{CreateTopicsRequest, MetadataRequest, MetadataResponse};
use kafka_protocol::records::Compression;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use common::raw::{produce_request, record_batch, topic_name, KafkaConn};
use common::{client, unique_topic, Broker};

/// Not a performance assertion: a generous bound for a failover on a busy debug build.
const GUARD: Duration = Duration::from_secs(60);
const PARTITIONS: i32 = 3;

/// `n` free loopback ports of this file's own range, so a restarted node gets its port back
/// and no other test file's cluster takes it meanwhile.
fn free_ports(n: usize) -> Vec<u16> {
    common::free_ports_in(20_000..26_000, n)
}

/// Three voters, one shard each, each with a replication listener. Sessions are short
/// (`session_ms`) so that a killed node is fenced (and its partitions get new leaders)
/// within seconds.
fn start_cluster(session_ms: u32) -> Vec<Broker> {
    start_nodes(3, 0, session_ms)
}

/// `voter_count` voters and `brokers` broker-only nodes (ids after the voters'), as
/// [`start_cluster`] starts them.
fn start_nodes(voter_count: usize, brokers: usize, session_ms: u32) -> Vec<Broker> {
    start_nodes_with(voter_count, brokers, session_ms, "")
}

/// [`start_nodes`] with more settings for every node's file.
fn start_nodes_with(
    voter_count: usize,
    brokers: usize,
    session_ms: u32,
    more_settings: &str,
) -> Vec<Broker> {
    let settings = format!(
        "broker.session.timeout.ms = {session_ms}\nbroker.heartbeat.interval.ms = 500\n{more_settings}"
    );
    let ports = free_ports(voter_count);
    let voters = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let starting: Vec<_> = (0..voter_count + brokers)
        .map(|i| {
            let voters = voters.clone();
            let settings = settings.clone();
            std::thread::spawn(move || {
                let id = (i + 1).to_string();
                Broker::start_custom(
                    1,
                    &settings,
                    &[
                        "--node-id",
                        &id,
                        "--controller-quorum-voters",
                        &voters,
                        "--replication-listen",
                        "127.0.0.1:0",
                    ],
                )
            })
        })
        .collect();
    starting
        .into_iter()
        .map(|t| t.join().expect("a node did not start"))
        .collect()
}

fn metadata(addr: SocketAddr) -> MetadataResponse {
    let mut conn = KafkaConn::connect(addr);
    conn.request(12, &MetadataRequest::default().with_topics(None))
}

/// Per partition: (leader, leader epoch, replicas, ISR), as `addr` describes `topic`.
type PartitionView = (i32, i32, Vec<i32>, Vec<i32>);

fn partitions(addr: SocketAddr, topic: &str) -> Vec<PartitionView> {
    let md = metadata(addr);
    let Some(t) = md
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
    else {
        return Vec::new();
    };
    let mut out: Vec<(i32, PartitionView)> = t
        .partitions
        .iter()
        .map(|p| {
            (
                p.partition_index,
                (
                    p.leader_id.0,
                    p.leader_epoch,
                    p.replica_nodes.iter().map(|r| r.0).collect(),
                    p.isr_nodes.iter().map(|r| r.0).collect(),
                ),
            )
        })
        .collect();
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, p)| p).collect()
}

/// Waits until every partition of `topic`, as `addr` sees it, has a leader and three
/// replicas in sync, and each leader serves its partition. (A node names a leader as soon
/// as its metadata image does; the leader itself answers NOT_LEADER_OR_FOLLOWER, which
/// clients retry, until it has applied that image too.)
fn wait_for_full_isr(addr: SocketAddr, topic: &str) {
    wait_until(
        "every partition led and served, with three replicas in sync",
        || {
            let ps = partitions(addr, topic);
            ps.len() == PARTITIONS as usize
                && ps
                    .iter()
                    .all(|(leader, _, _, isr)| *leader > 0 && isr.len() == 3)
                && ps.iter().enumerate().all(|(p, (leader, ..))| {
                    let (_, host, port) = listed_endpoint(addr, *leader);
                    let leader_addr: SocketAddr = format!("{host}:{port}")
                        .parse()
                        .expect("a listed broker's address");
                    latest_offset(leader_addr, topic, p as i32, 0).0 == 0
                })
        },
    );
}

/// The clients' bootstrap list for `nodes`.
fn bootstrap_of<'a>(nodes: impl IntoIterator<Item = &'a Broker>) -> String {
    nodes
        .into_iter()
        .map(|n| n.bootstrap())
        .collect::<Vec<_>>()
        .join(",")
}

/// Each partition's log end after the acknowledged records: one past the highest offset.
fn log_ends(acked: &Acked) -> BTreeMap<i32, i64> {
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for &(p, offset) in acked.keys() {
        let end = ends.entry(p).or_insert(0);
        *end = (*end).max(offset + 1);
    }
    ends
}

fn wait_until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + GUARD;
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn create_replicated_topic(addr: SocketAddr, topic: &str) -> i16 {
    create_topic_with(addr, topic, &[])
}

/// CreateTopics of `topic` with replication factor 3 and these configs: its error code.
fn create_topic_with(addr: SocketAddr, topic: &str, configs: &[(&str, &str)]) -> i16 {
    create_topic_rf(addr, topic, 3, configs)
}

/// CreateTopics of `topic` with `replication_factor` and these configs: its error code.
fn create_topic_rf(
    addr: SocketAddr,
    topic: &str,
    replication_factor: i16,
    configs: &[(&str, &str)],
) -> i16 {
    use kafka_protocol::messages::create_topics_request::CreatableTopicConfig;
    let mut conn = KafkaConn::connect(addr);
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(topic))
            .with_num_partitions(PARTITIONS)
            .with_replication_factor(replication_factor)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(kafka_protocol::protocol::StrBytes::from_string(
                                k.to_string(),
                            ))
                            .with_value(Some(kafka_protocol::protocol::StrBytes::from_string(
                                v.to_string(),
                            )))
                    })
                    .collect(),
            )]);
    conn.request(5, &req).topics[0].error_code
}

/// What a producer had acknowledged: (partition, offset) → value.
type Acked = BTreeMap<(i32, i64), String>;

fn produce_acks_all(bootstrap: &str, topic: &str, from: usize, count: usize, acked: &mut Acked) {
    let producer = client::producer(
        bootstrap,
        &[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("message.timeout.ms", "60000"),
            ("linger.ms", "5"),
        ],
    );
    let rt = client::runtime();
    let sends: Vec<_> = (from..from + count)
        .map(|i| {
            let key = format!("key-{}", i % 17);
            let value = format!("value-{i}");
            let producer = producer.clone();
            let topic = topic.to_string();
            rt.spawn(async move {
                let record = FutureRecord::to(&topic).key(&key).payload(&value);
                let sent = producer.send(record, Duration::from_secs(60)).await;
                (value, sent)
            })
        })
        .collect();
    for send in sends {
        let (value, sent) = rt.block_on(send).expect("a send task");
        let delivery =
            sent.unwrap_or_else(|(e, _)| panic!("acks=all produce of {value} failed: {e}"));
        let (partition, offset) = (delivery.partition, delivery.offset);
        assert!(
            acked.insert((partition, offset), value.clone()).is_none(),
            "two records acknowledged at partition {partition} offset {offset}"
        );
    }
}

/// Every record of `topic` readable through `bootstrap`, per partition, up to `ends`.
fn consume(bootstrap: &str, topic: &str, ends: &BTreeMap<i32, i64>) -> Acked {
    let consumer: BaseConsumer = client::consumer(bootstrap, &[]);
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&tpl).expect("assign");
    let mut read = Acked::new();
    let deadline = Instant::now() + GUARD;
    let done = |read: &Acked| {
        ends.iter()
            .all(|(p, end)| *end == 0 || read.keys().any(|(rp, o)| rp == p && *o == end - 1))
    };
    while !done(&read) {
        assert!(Instant::now() < deadline, "could not read everything back");
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
            let again = read.insert((m.partition(), m.offset()), value);
            assert!(again.is_none(), "offset {} read twice", m.offset());
        }
    }
    read
}

/// The record batches in a partition directory's segments, as (base offset, bytes), in
/// offset order.
fn batches_on_disk(dir: &Path) -> Vec<(i64, Vec<u8>)> {
    let mut segments: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_else(|_| Vec::new());
    segments.retain(|p| p.extension().is_some_and(|e| e == "log"));
    segments.sort();
    let mut out = Vec::new();
    for segment in segments {
        let bytes = std::fs::read(&segment).unwrap_or_default();
        let mut at = 0;
        while at + 12 <= bytes.len() {
            let base = i64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
            let len = i32::from_be_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            if len <= 0 || at + 12 + len as usize > bytes.len() {
                break;
            }
            let end = at + 12 + len as usize;
            out.push((base, bytes[at..end].to_vec()));
            at = end;
        }
    }
    out
}

fn partition_dir(node: &Broker, topic: &str, partition: i32) -> std::path::PathBuf {
    node.data_dir().join(format!("{topic}-{partition}"))
}

/// Waits until every node in `nodes` holds the same batches for every partition, and
/// returns them from the first.
fn wait_for_identical_replicas(nodes: &[&Broker], topic: &str) {
    for p in 0..PARTITIONS {
        wait_until(&format!("partition {p} identical on every replica"), || {
            let first = batches_on_disk(&partition_dir(nodes[0], topic, p));
            !first.is_empty()
                && nodes[1..]
                    .iter()
                    .all(|n| batches_on_disk(&partition_dir(n, topic, p)) == first)
        });
    }
}

#[test]
fn acks_all_records_reach_every_replica_and_survive_the_leader_being_killed() {
    let mut nodes = start_cluster(3_000);
    let topic = unique_topic("replicated");
    assert_eq!(create_replicated_topic(nodes[0].addr(), &topic), 0);
    wait_until("every partition led, with three replicas in sync", || {
        nodes.iter().all(|n| {
            let ps = partitions(n.addr(), &topic);
            ps.len() == PARTITIONS as usize
                && ps.iter().all(|(leader, _, replicas, isr)| {
                    *leader > 0 && replicas.len() == 3 && isr.len() == 3
                })
        })
    });
    let bootstrap = bootstrap_of(&nodes);

    let mut acked = Acked::new();
    produce_acks_all(&bootstrap, &topic, 0, 300, &mut acked);
    assert_eq!(acked.len(), 300);

    // Every acknowledged record is in every replica's log, and the logs hold the same
    // batches byte for byte (offsets, leader epochs, CRCs: nothing re-encoded).
    wait_for_identical_replicas(&[&nodes[0], &nodes[1], &nodes[2]], &topic);
    for node in &nodes {
        for &(p, offset) in acked.keys() {
            let batches = batches_on_disk(&partition_dir(node, &topic, p));
            assert!(
                batches.iter().any(|(base, bytes)| {
                    let last_delta = i32::from_be_bytes(bytes[23..27].try_into().unwrap());
                    *base <= offset && offset <= base + i64::from(last_delta)
                }),
                "acknowledged offset {offset} of partition {p} missing on a replica"
            );
        }
    }
    let ends = log_ends(&acked);
    let read = consume(&bootstrap, &topic, &ends);
    for (key, value) in &acked {
        assert_eq!(read.get(key), Some(value), "acknowledged record {key:?}");
    }

    // Kill the leader of partition 0: the controller fences it and elects another replica
    // of the ISR with a higher leader epoch.
    let before = partitions(nodes[0].addr(), &topic);
    let (victim_id, victim_epoch, _, _) = before[0].clone();
    let victim = (victim_id - 1) as usize;
    nodes[victim].kill();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let killed_at = Instant::now();
    wait_until(
        "a new leader for every partition the killed node led",
        || {
            survivors.iter().all(|&i| {
                let ps = partitions(nodes[i].addr(), &topic);
                ps.len() == PARTITIONS as usize
                    && ps.iter().zip(&before).all(
                        |((leader, epoch, _, _), (old, old_epoch, _, _))| {
                            *leader > 0
                                && *leader != victim_id
                                && (*old != victim_id || *epoch > *old_epoch)
                        },
                    )
            })
        },
    );
    eprintln!(
        "new leaders elected {:.1} s after SIGKILL of node {victim_id} (session timeout 3 s)",
        killed_at.elapsed().as_secs_f64()
    );
    assert!(partitions(nodes[survivors[0]].addr(), &topic)[0].1 > victim_epoch);

    let bootstrap = bootstrap_of(survivors.iter().map(|&i| &nodes[i]));
    let before_kill = acked.clone();
    produce_acks_all(&bootstrap, &topic, 300, 200, &mut acked);
    assert_eq!(acked.len(), 500);

    // Offsets continue where each partition ended before the kill: nothing acknowledged is
    // taken back and the new records come after it.
    for &(p, offset) in acked.keys() {
        if !before_kill.contains_key(&(p, offset)) {
            assert!(
                offset >= *ends.get(&p).unwrap_or(&0),
                "partition {p}: a new record at offset {offset}, below the old end"
            );
        }
    }
    let mut ends_after: BTreeMap<i32, i64> = BTreeMap::new();
    for &(p, offset) in acked.keys() {
        let end = ends_after.entry(p).or_insert(0);
        *end = (*end).max(offset + 1);
    }
    let read = consume(&bootstrap, &topic, &ends_after);
    for (key, value) in &acked {
        assert_eq!(
            read.get(key),
            Some(value),
            "acknowledged record {key:?} after the failover"
        );
    }
    wait_for_identical_replicas(&[&nodes[survivors[0]], &nodes[survivors[1]]], &topic);

    // The old leader comes back as a follower: whatever its log held past what the new
    // leaders have is cut where the epochs diverge, and it copies the rest.
    nodes[victim].restart();
    wait_for_identical_replicas(&[&nodes[0], &nodes[1], &nodes[2]], &topic);
    for node in &nodes {
        node.assert_no_panic();
    }
}

/// One acks=all Produce of one record to `partition` with `timeout_ms`: its error code.
fn produce_acks_all_raw(addr: SocketAddr, topic: &str, partition: i32, timeout_ms: i32) -> i16 {
    produce_raw(addr, topic, partition, -1, timeout_ms)
}

/// One Produce of one record with `acks` and `timeout_ms`: its error code.
fn produce_raw(addr: SocketAddr, topic: &str, partition: i32, acks: i16, timeout_ms: i32) -> i16 {
    let mut conn = KafkaConn::connect(addr);
    let records = record_batch(&[Bytes::from_static(b"raw")], Compression::None);
    let request = produce_request(topic, partition, acks, records).with_timeout_ms(timeout_ms);
    let resp = conn.request(9, &request);
    resp.responses[0].partition_responses[0].error_code
}

const REQUEST_TIMED_OUT: i16 = 7;
const NOT_ENOUGH_REPLICAS: i16 = 19;

#[test]
fn acks_all_waits_for_a_dead_follower_until_fencing_takes_it_out_of_the_isr_and_it_rejoins_once_caught_up(
) {
    // A long session, so the produce right after the kill is certain to come while the
    // controller still counts the follower in the ISR.
    let mut nodes = start_cluster(8_000);
    let topic = unique_topic("isr");
    assert_eq!(create_replicated_topic(nodes[0].addr(), &topic), 0);
    wait_for_full_isr(nodes[0].addr(), &topic);
    let (leader_id, _, replicas, _) = partitions(nodes[0].addr(), &topic)[0].clone();
    let leader = (leader_id - 1) as usize;
    let follower_id = *replicas
        .iter()
        .find(|r| **r != leader_id)
        .expect("a follower");
    let follower = (follower_id - 1) as usize;
    assert_eq!(
        produce_acks_all_raw(nodes[leader].addr(), &topic, 0, 10_000),
        0,
        "acks=all with every replica up"
    );
    nodes[follower].kill();
    // The ISR still lists the follower: acks=all cannot be answered and times out, as in
    // Kafka (the record is written on the leader and will be committed later).
    assert_eq!(
        produce_acks_all_raw(nodes[leader].addr(), &topic, 0, 1_000),
        REQUEST_TIMED_OUT,
        "acks=all while a dead follower is still in the ISR"
    );
    // Fencing the silent broker takes it out of every ISR; acks=all goes on with two.
    wait_until("the dead follower out of the ISR", || {
        !partitions(nodes[leader].addr(), &topic)[0]
            .3
            .contains(&follower_id)
    });
    assert_eq!(
        produce_acks_all_raw(nodes[leader].addr(), &topic, 0, 10_000),
        0,
        "acks=all once the ISR shrank"
    );

    // The follower comes back and catches up with the leader's log.
    nodes[follower].restart();
    let alive = [&nodes[leader], &nodes[follower]];
    wait_until("the restarted follower holds the leader's batches", || {
        let lead = batches_on_disk(&partition_dir(alive[0], &topic, 0));
        lead.len() >= 3 && batches_on_disk(&partition_dir(alive[1], &topic, 0)) == lead
    });
    // Caught up, it is proposed back into the ISR by the leader (AlterPartition, KIP-497)
    // and the controller commits it; acks=all then needs it again.
    wait_until("the caught-up follower back in the ISR", || {
        partitions(nodes[leader].addr(), &topic)[0]
            .3
            .contains(&follower_id)
    });
    assert_eq!(
        produce_acks_all_raw(nodes[leader].addr(), &topic, 0, 10_000),
        0,
        "acks=all with the follower back in the ISR"
    );
    for node in &nodes {
        node.assert_no_panic();
    }
}

/// Sends `bytes` to a replication port and tells whether the node closed the connection
/// (rather than leaving it open) within a bounded time.
fn closed_after(stream: &mut std::net::TcpStream, bytes: &[u8]) -> bool {
    use std::io::{Read, Write};
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let _ = stream.write_all(bytes);
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
    }
}

fn fetch_request(correlation_id: i32, topic_id: u128) -> wharf_protocol::replication::FetchRequest {
    wharf_protocol::replication::FetchRequest {
        correlation_id,
        replica_id: 7,
        broker_epoch: -1,
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes: 1 << 20,
        partitions: vec![wharf_protocol::replication::FetchPartition {
            topic_id,
            partition: 0,
            current_leader_epoch: -1,
            fetch_offset: 0,
            last_fetched_epoch: -1,
            log_start_offset: 0,
            max_bytes: 1 << 20,
            synced_offset: -1,
        }],
    }
}

/// A request frame with `correlation_id` (the codec numbers from what it is given).
fn request_frame(correlation_id: i32, topic_id: u128) -> Bytes {
    wharf_protocol::replication::encode_request(&fetch_request(correlation_id, topic_id))
        .expect("encode a fetch request")
}

#[test]
fn bad_replication_frames_close_the_connection_and_are_counted() {
    use std::io::{Read, Write};
    let port = free_ports(1)[0];
    let listen = format!("127.0.0.1:{port}");
    let node = Broker::start_custom(
        1,
        "",
        &[
            "--replication-listen",
            &listen,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let metrics = node.metrics_addr();
    let bad_frames = || {
        common::http::must(
            &common::http::scrape(metrics),
            "wharf_replication_bad_frames_total",
        )
    };
    assert_eq!(bad_frames(), 0.0);

    // A length past any cap: closed before anything else is read.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    assert!(closed_after(
        &mut stream,
        &[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]
    ));
    // Garbage that fits the length: the header's CRC fails.
    let mut garbage = vec![0u8, 0, 0, 40, 0, 0, 0, 8];
    garbage.extend([0xabu8; 36]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    assert!(closed_after(&mut stream, &garbage));
    wait_until("two bad frames counted", || bad_frames() == 2.0);

    // A well-formed fetch for a partition this node does not have is answered, with an
    // error for that partition; a request going back in correlation ids then closes it.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
        .write_all(&request_frame(5, 0xfeed))
        .expect("send a fetch");
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).expect("an answer");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).expect("the whole answer");
    match wharf_protocol::replication::decode_frame(&Bytes::from(body)).expect("a good frame") {
        wharf_protocol::replication::Message::FetchResponse(r) => {
            assert_eq!(r.correlation_id, 5);
            assert_eq!(r.partitions.len(), 1);
            assert_eq!(
                r.partitions[0].header.error_code, 3,
                "UNKNOWN_TOPIC_OR_PARTITION"
            );
            assert!(r.partitions[0].records.is_empty());
        }
        other => panic!("a fetch answered with {other:?}"),
    }
    assert!(closed_after(&mut stream, &request_frame(4, 0xfeed)));
    wait_until("three bad frames counted", || bad_frames() == 3.0);
    node.assert_no_panic();
}

#[test]
fn with_two_followers_down_acks_all_gets_not_enough_replicas_and_acks_1_goes_on() {
    // One voter and two broker-only nodes: the quorum survives the brokers' deaths, so the
    // controller fences them and shrinks the ISRs.
    let mut nodes = start_nodes(1, 2, 3_000);
    let topic = unique_topic("min-isr");
    assert_eq!(
        create_topic_with(nodes[0].addr(), &topic, &[("min.insync.replicas", "2")]),
        0
    );
    wait_for_full_isr(nodes[0].addr(), &topic);
    // Kill both broker-only nodes: node 1 (the voter) ends up leading every partition,
    // alone in its ISR (KRaft keeps the last member).
    nodes[1].kill();
    nodes[2].kill();
    wait_until("node 1 alone in every ISR, leading every partition", || {
        partitions(nodes[0].addr(), &topic)
            .iter()
            .all(|(leader, _, _, isr)| *leader == 1 && isr == &vec![1])
    });
    let partition = 0;
    assert_eq!(
        produce_raw(nodes[0].addr(), &topic, partition, -1, 10_000),
        NOT_ENOUGH_REPLICAS,
        "acks=all with one in-sync replica and min.insync.replicas=2"
    );
    assert_eq!(
        produce_raw(nodes[0].addr(), &topic, partition, 1, 10_000),
        0,
        "acks=1 with one in-sync replica"
    );
    nodes[0].assert_no_panic();
}

/// ListOffsets LATEST (-1) of `topic`'s `partition` at `addr` with `isolation_level` (0
/// read_uncommitted: the high watermark; 1 read_committed: the last stable offset):
/// (error code, offset).
fn latest_offset(addr: SocketAddr, topic: &str, partition: i32, isolation_level: i8) -> (i16, i64) {
    list_offset(addr, topic, partition, -1, isolation_level, 4)
}

/// ListOffsets at `version` of `topic`'s `partition` at `addr` for `timestamp` (-1 latest,
/// -2 earliest, or a time in ms) with `isolation_level`: (error code, offset).
fn list_offset(
    addr: SocketAddr,
    topic: &str,
    partition: i32,
    timestamp: i64,
    isolation_level: i8,
    version: i16,
) -> (i16, i64) {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::ListOffsetsRequest;
    let mut conn = KafkaConn::connect(addr);
    let req = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_isolation_level(isolation_level)
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(timestamp)])]);
    let resp = conn.request(version, &req);
    let p = &resp.topics[0].partitions[0];
    (p.error_code, p.offset)
}

/// IncrementalAlterConfigs SET of one config of `topic`: the resource's error code.
fn set_topic_config(addr: SocketAddr, topic: &str, name: &str, value: &str) -> i16 {
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    use kafka_protocol::messages::IncrementalAlterConfigsRequest;
    use kafka_protocol::protocol::StrBytes;
    let s = |t: &str| StrBytes::from_string(t.to_string());
    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(s(topic))
            .with_configs(vec![AlterableConfig::default()
                .with_name(s(name))
                .with_config_operation(0)
                .with_value(Some(s(value)))]),
    ]);
    let mut conn = KafkaConn::connect(addr);
    conn.request(0, &req).responses[0].error_code
}

/// Every record of `topic` a consumer with `extra` settings reads through `bootstrap`, up
/// to `ends`.
fn consume_with(
    bootstrap: &str,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    extra: &[(&str, &str)],
) -> Acked {
    let consumer: BaseConsumer = client::consumer(bootstrap, extra);
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&tpl).expect("assign");
    let mut read = Acked::new();
    let deadline = Instant::now() + GUARD;
    let done = |read: &Acked| {
        ends.iter()
            .all(|(p, end)| *end == 0 || read.keys().any(|(rp, o)| rp == p && *o == end - 1))
    };
    while !done(&read) {
        assert!(Instant::now() < deadline, "could not read everything back");
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
            let again = read.insert((m.partition(), m.offset()), value);
            assert!(again.is_none(), "offset {} read twice", m.offset());
        }
    }
    read
}

#[test]
fn after_every_node_stops_and_starts_again_the_leader_shows_the_committed_records_before_any_follower_fetches(
) {
    // One voter and two broker-only nodes: the voter alone keeps the quorum, so it can
    // restart with the brokers still down and no follower fetching.
    let mut nodes = start_nodes(1, 2, 3_000);
    let topic = unique_topic("hw-checkpoint");
    assert_eq!(create_replicated_topic(nodes[0].addr(), &topic), 0);
    wait_for_full_isr(nodes[0].addr(), &topic);
    let bootstrap = bootstrap_of(&nodes);
    let mut acked = Acked::new();
    produce_acks_all(&bootstrap, &topic, 0, 300, &mut acked);
    let ends = log_ends(&acked);
    assert_eq!(
        ends.len(),
        PARTITIONS as usize,
        "every partition has records"
    );

    // The brokers stop cleanly (controlled shutdown takes them out of the ISRs); node 1
    // leads every partition alone and shows consumers every acknowledged record.
    nodes[1].terminate();
    nodes[2].terminate();
    wait_until(
        "node 1 alone in every ISR, its high watermark at the log end",
        || {
            partitions(nodes[0].addr(), &topic)
                .iter()
                .all(|(leader, _, _, isr)| *leader == 1 && isr == &vec![1])
                && ends
                    .iter()
                    .all(|(&p, &end)| latest_offset(nodes[0].addr(), &topic, p, 0) == (0, end))
        },
    );
    // With min.insync.replicas=2, a lone in-sync replica cannot move its high watermark
    // (KIP-966): after the restart only the checkpoint can say what was committed.
    assert_eq!(
        set_topic_config(nodes[0].addr(), &topic, "min.insync.replicas", "2"),
        0
    );
    wait_until("min.insync.replicas=2 in force on node 1", || {
        produce_acks_all_raw(nodes[0].addr(), &topic, 0, 1_000) == NOT_ENOUGH_REPLICAS
    });

    // Node 1 stops too (SIGTERM), then starts again alone: no follower can fetch.
    nodes[0].terminate();
    nodes[0].restart();
    wait_until("node 1 leads every partition again", || {
        let ps = partitions(nodes[0].addr(), &topic);
        ps.len() == PARTITIONS as usize && ps.iter().all(|(leader, _, _, _)| *leader == 1)
    });
    for (&p, &end) in &ends {
        assert_eq!(
            latest_offset(nodes[0].addr(), &topic, p, 0),
            (0, end),
            "partition {p}: the high watermark after the restart is the one consumers were shown"
        );
        assert_eq!(
            latest_offset(nodes[0].addr(), &topic, p, 1),
            (0, end),
            "partition {p}: read_committed sees as far"
        );
    }
    // Consumers, plain and read_committed, read every acknowledged record from node 1.
    for isolation in ["read_uncommitted", "read_committed"] {
        let read = consume_with(
            &nodes[0].bootstrap(),
            &topic,
            &ends,
            &[("isolation.level", isolation)],
        );
        for (key, value) in &acked {
            assert_eq!(read.get(key), Some(value), "{isolation}: record {key:?}");
        }
    }

    // The brokers come back, catch up and rejoin the ISRs; the high watermark never went
    // back, and acks=all works again.
    nodes[1].restart();
    nodes[2].restart();
    wait_until("every replica back in the ISR", || {
        partitions(nodes[0].addr(), &topic)
            .iter()
            .all(|(leader, _, _, isr)| *leader > 0 && isr.len() == 3)
    });
    wait_for_identical_replicas(&[&nodes[0], &nodes[1], &nodes[2]], &topic);
    for (&p, &end) in &ends {
        let leader = partitions(nodes[0].addr(), &topic)[p as usize].0;
        let (error, hw) = latest_offset(nodes[(leader - 1) as usize].addr(), &topic, p, 0);
        assert_eq!(error, 0);
        assert!(
            hw >= end,
            "partition {p}: the high watermark went back to {hw}"
        );
    }
    let bootstrap = bootstrap_of(&nodes);
    produce_acks_all(&bootstrap, &topic, 300, 30, &mut acked);
    for node in &nodes {
        node.assert_no_panic();
    }
}

const LEADER_NOT_AVAILABLE: i16 = 5;
const OFFSET_NOT_AVAILABLE: i16 = 78;

#[test]
fn kip_207_a_leader_whose_high_watermark_is_behind_its_epoch_start_answers_offset_not_available_until_it_catches_up(
) {
    // One voter and two broker-only nodes, as above. The high watermark is checkpointed
    // when it first moves and then not for ten minutes, so a crash leaves an old one.
    let mut nodes = start_nodes_with(
        1,
        2,
        3_000,
        "replica.high.watermark.checkpoint.interval.ms = 600000\n",
    );
    let topic = unique_topic("kip-207");
    assert_eq!(
        create_topic_with(nodes[0].addr(), &topic, &[("min.insync.replicas", "2")]),
        0
    );
    wait_for_full_isr(nodes[0].addr(), &topic);
    let bootstrap = bootstrap_of(&nodes);
    let mut acked = Acked::new();
    produce_acks_all(&bootstrap, &topic, 0, 30, &mut acked);
    // Let the first checkpoint be written; what follows is not checkpointed.
    std::thread::sleep(Duration::from_secs(1));
    produce_acks_all(&bootstrap, &topic, 30, 300, &mut acked);
    let ends = log_ends(&acked);
    assert_eq!(
        ends.len(),
        PARTITIONS as usize,
        "every partition has records"
    );
    wait_for_identical_replicas(&[&nodes[0], &nodes[1], &nodes[2]], &topic);

    // The brokers crash and are fenced: node 1 is left alone in every ISR (under
    // min.insync.replicas=2, so its high watermark no longer moves: KIP-966). Then it
    // crashes too and comes back alone. It leads every partition in a new epoch from its
    // log end, with the old checkpoint as high watermark.
    nodes[1].kill();
    nodes[2].kill();
    wait_until("node 1 alone in every ISR", || {
        let ps = partitions(nodes[0].addr(), &topic);
        ps.len() == PARTITIONS as usize
            && ps
                .iter()
                .all(|(leader, _, _, isr)| *leader == 1 && isr == &vec![1])
    });
    nodes[0].kill();
    nodes[0].restart();
    let addr = nodes[0].addr();
    wait_until("node 1 leads every partition", || {
        let ps = partitions(addr, &topic);
        ps.len() == PARTITIONS as usize
            && ps.iter().all(|(leader, _, _, _)| *leader == 1)
            && (0..PARTITIONS).all(|p| list_offset(addr, &topic, p, -2, 0, 7) == (0, 0))
    });
    let year_2100_ms = 4_102_444_800_000;
    for p in 0..PARTITIONS {
        assert_eq!(
            list_offset(addr, &topic, p, -1, 0, 7),
            (OFFSET_NOT_AVAILABLE, -1),
            "partition {p}: latest, behind the epoch start"
        );
        assert_eq!(
            list_offset(addr, &topic, p, -1, 1, 7),
            (OFFSET_NOT_AVAILABLE, -1),
            "partition {p}: latest, read_committed"
        );
        assert_eq!(
            list_offset(addr, &topic, p, -1, 0, 4),
            (LEADER_NOT_AVAILABLE, -1),
            "partition {p}: latest before v5"
        );
        assert_eq!(
            list_offset(addr, &topic, p, -2, 0, 7),
            (0, 0),
            "partition {p}: earliest is always answered"
        );
        assert_eq!(
            list_offset(addr, &topic, p, year_2100_ms, 0, 7),
            (OFFSET_NOT_AVAILABLE, -1),
            "partition {p}: a search that finds nothing below the high watermark"
        );
    }

    // A librdkafka consumer asking for the end retries meanwhile: it must not start from
    // the old high watermark, nor reset to the beginning.
    let consumer: BaseConsumer = client::consumer(&nodes[0].bootstrap(), &[]);
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&topic, p, Offset::End)
            .expect("assign");
    }
    consumer.assign(&tpl).expect("assign");
    let mut read = Acked::new();
    let poll = |read: &mut Acked| {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
            read.insert((m.partition(), m.offset()), value);
        }
    };
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        poll(&mut read);
    }
    assert!(read.is_empty(), "read while the end was unknown: {read:?}");

    // The brokers come back and rejoin the ISRs: the high watermark reaches the epoch
    // start and the latest offset is the log end again.
    nodes[1].restart();
    nodes[2].restart();
    for (&p, &end) in &ends {
        wait_until(&format!("partition {p}: latest offset {end}"), || {
            let leader = partitions(nodes[0].addr(), &topic)
                .get(p as usize)
                .map_or(0, |view| view.0);
            leader > 0
                && list_offset(nodes[(leader - 1) as usize].addr(), &topic, p, -1, 0, 7) == (0, end)
        });
    }
    // The consumer starts at the log end as it was when the leader answered (its retry
    // may come after a record produced now): it reads only records produced from here on,
    // never the old ones (from the old checkpoint, or from the beginning after a reset).
    let bootstrap = bootstrap_of(&nodes);
    let mut new_records = Acked::new();
    let mut next = 330;
    let deadline = Instant::now() + GUARD;
    while read.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the consumer did not read any new record"
        );
        produce_acks_all(&bootstrap, &topic, next, 3, &mut new_records);
        next += 3;
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            poll(&mut read);
        }
    }
    for (key, value) in &read {
        assert!(
            key.1 >= ends[&key.0] && new_records.get(key) == Some(value),
            "the consumer read {key:?} ({value}), not a new record past the log end {ends:?}"
        );
    }
    for node in &nodes {
        node.assert_no_panic();
    }
}

/// Sends `signal` to a node's process.
fn signal(node: &Broker, signal: i32) {
    // SAFETY: a plain syscall on a pid this test spawned and has not reaped.
    let rc = unsafe { libc::kill(node.pid(), signal) };
    assert_eq!(rc, 0, "kill({signal}) failed");
}

/// The node ids Metadata lists as live brokers (registered and not fenced).
fn live_broker_ids(addr: SocketAddr) -> Vec<i32> {
    let mut ids: Vec<i32> = metadata(addr).brokers.iter().map(|b| b.node_id.0).collect();
    ids.sort();
    ids
}

#[test]
fn a_follower_that_stops_fetching_leaves_the_isr_after_the_lag_time_and_rejoins_once_caught_up() {
    // One voter and two broker-only nodes, so stopping a broker leaves the quorum alone. The
    // session is long and the lag time short: the follower leaves the ISR for lagging, long
    // before the controller could fence it for silence.
    let nodes = start_nodes_with(1, 2, 60_000, "replica.lag.time.max.ms = 2000\n");
    let topic = unique_topic("lag");
    assert_eq!(
        create_topic_with(nodes[0].addr(), &topic, &[("min.insync.replicas", "2")]),
        0
    );
    wait_for_full_isr(nodes[0].addr(), &topic);
    // A partition that node 3 follows (not leads).
    let (p, leader_id) = partitions(nodes[0].addr(), &topic)
        .iter()
        .enumerate()
        .find(|(_, (leader, _, _, _))| *leader != 3)
        .map(|(p, (leader, _, _, _))| (p as i32, *leader))
        .expect("a partition node 3 does not lead");
    let leader = &nodes[(leader_id - 1) as usize];
    assert_eq!(produce_acks_all_raw(leader.addr(), &topic, p, 10_000), 0);

    // Node 3 stops (SIGSTOP: alive, registered, silent). Records keep coming; it fetches
    // none of them.
    signal(&nodes[2], libc::SIGSTOP);
    assert_eq!(
        produce_raw(leader.addr(), &topic, p, 1, 10_000),
        0,
        "acks=1 goes on"
    );
    wait_until("the stopped follower out of the ISR", || {
        !partitions(nodes[0].addr(), &topic)[p as usize]
            .3
            .contains(&3)
    });
    assert!(
        live_broker_ids(nodes[0].addr()).contains(&3),
        "node 3 left the ISR for lagging, not by being fenced"
    );
    // acks=all goes on with the two replicas left (min.insync.replicas=2).
    for _ in 0..3 {
        assert_eq!(
            produce_acks_all_raw(leader.addr(), &topic, p, 10_000),
            0,
            "acks=all with the smaller ISR"
        );
    }
    assert_eq!(
        partitions(nodes[0].addr(), &topic)[p as usize].3.len(),
        2,
        "the leader and the other follower stay in the ISR"
    );

    // Node 3 resumes: it fetches what it missed and is proposed back into the ISR.
    signal(&nodes[2], libc::SIGCONT);
    wait_until("the resumed follower back in the ISR", || {
        partitions(nodes[0].addr(), &topic)[p as usize]
            .3
            .contains(&3)
    });
    let lead = batches_on_disk(&partition_dir(leader, &topic, p));
    wait_until("node 3 holds every batch the leader had", || {
        let copy = batches_on_disk(&partition_dir(&nodes[2], &topic, p));
        copy.len() >= lead.len() && copy[..lead.len()] == lead[..]
    });
    assert_eq!(
        produce_acks_all_raw(leader.addr(), &topic, p, 10_000),
        0,
        "acks=all with node 3 back in the ISR"
    );
    wait_until(&format!("partition {p} identical on every replica"), || {
        let first = batches_on_disk(&partition_dir(&nodes[0], &topic, p));
        !first.is_empty()
            && nodes[1..]
                .iter()
                .all(|n| batches_on_disk(&partition_dir(n, &topic, p)) == first)
    });
    for node in &nodes {
        node.assert_no_panic();
    }
}

const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const FENCED_LEADER_EPOCH: i16 = 74;

/// What a node answered for one partition, with KIP-951's fields: (error code, current
/// leader id, current leader epoch, node endpoints as (id, host, port)).
type LeaderHint = (i16, i32, i32, Vec<(i32, String, i32)>);

/// One Produce of one record to `partition` at `version`, acks=1.
fn produce_hint(addr: SocketAddr, version: i16, topic: &str, partition: i32) -> LeaderHint {
    let mut conn = KafkaConn::connect(addr);
    let records = record_batch(&[Bytes::from_static(b"hint")], Compression::None);
    let resp = conn.request(version, &produce_request(topic, partition, 1, records));
    let p = &resp.responses[0].partition_responses[0];
    let endpoints = resp
        .node_endpoints
        .iter()
        .map(|e| (e.node_id.0, e.host.to_string(), e.port))
        .collect();
    (
        p.error_code,
        p.current_leader.leader_id.0,
        p.current_leader.leader_epoch,
        endpoints,
    )
}

/// One Fetch (v13+: the topic by id) of `partition` from offset 0 at `version`, telling the
/// node the client knows `current_leader_epoch`.
fn fetch_hint(
    addr: SocketAddr,
    version: i16,
    topic_id: uuid::Uuid,
    partition: i32,
    current_leader_epoch: i32,
) -> LeaderHint {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::FetchRequest;
    let mut conn = KafkaConn::connect(addr);
    let req = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic_id(topic_id)
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(current_leader_epoch)
                .with_fetch_offset(0)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(1 << 20)])]);
    let resp = conn.request(version, &req);
    let p = &resp.responses[0].partitions[0];
    let endpoints = resp
        .node_endpoints
        .iter()
        .map(|e| (e.node_id.0, e.host.to_string(), e.port))
        .collect();
    (
        p.error_code,
        p.current_leader.leader_id.0,
        p.current_leader.leader_epoch,
        endpoints,
    )
}

/// Broker `node` as `addr`'s Metadata lists it: (id, host, port).
fn listed_endpoint(addr: SocketAddr, node: i32) -> (i32, String, i32) {
    let md = metadata(addr);
    let b = md
        .brokers
        .iter()
        .find(|b| b.node_id.0 == node)
        .unwrap_or_else(|| panic!("Metadata does not list node {node}: {:?}", md.brokers));
    (node, b.host.to_string(), b.port)
}

fn topic_id(addr: SocketAddr, topic: &str) -> uuid::Uuid {
    metadata(addr)
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
        .map(|t| t.topic_id)
        .expect("the topic is listed")
}

#[test]
fn a_node_that_does_not_lead_names_the_leader_in_produce_and_fetch_answers_before_and_after_a_failover(
) {
    // One voter and two broker-only nodes: a broker-only leader is killed and fenced while
    // the quorum carries on.
    let mut nodes = start_nodes(1, 2, 3_000);
    let topic = unique_topic("kip951");
    assert_eq!(create_replicated_topic(nodes[0].addr(), &topic), 0);
    wait_for_full_isr(nodes[0].addr(), &topic);
    // A partition led by a broker-only node.
    let (p, (leader, epoch, _, _)) = partitions(nodes[0].addr(), &topic)
        .into_iter()
        .enumerate()
        .find(|(_, (leader, _, _, _))| *leader != 1)
        .map(|(p, view)| (p as i32, view))
        .expect("a partition led by node 2 or 3");
    let follower = (1..=3).find(|n| *n != leader).expect("a follower");
    let at = nodes[(follower - 1) as usize].addr();
    wait_until("the follower's image agrees on the leader", || {
        partitions(at, &topic)[p as usize].0 == leader
    });
    let id = topic_id(at, &topic);
    let endpoint = listed_endpoint(at, leader);

    // Sent to a follower: NOT_LEADER_OR_FOLLOWER naming the leader, its epoch and its
    // endpoint as Metadata lists it, in every version that has the fields.
    for version in [10, 11] {
        assert_eq!(
            produce_hint(at, version, &topic, p),
            (
                NOT_LEADER_OR_FOLLOWER,
                leader,
                epoch,
                vec![endpoint.clone()]
            ),
            "Produce v{version}"
        );
    }
    for version in [16, 17] {
        assert_eq!(
            fetch_hint(at, version, id, p, epoch),
            (
                NOT_LEADER_OR_FOLLOWER,
                leader,
                epoch,
                vec![endpoint.clone()]
            ),
            "Fetch v{version}"
        );
    }
    // Older versions have no such fields and still get a well-formed answer.
    assert_eq!(
        produce_hint(at, 9, &topic, p),
        (NOT_LEADER_OR_FOLLOWER, -1, -1, vec![])
    );
    assert_eq!(
        fetch_hint(at, 15, id, p, epoch),
        (NOT_LEADER_OR_FOLLOWER, -1, -1, vec![])
    );

    // The leader dies; once it is fenced another in-sync replica leads with a newer epoch.
    nodes[(leader - 1) as usize].kill();
    let survivors: Vec<i32> = (1..=3).filter(|n| *n != leader).collect();
    wait_until(
        "a new leader with a newer epoch, seen by both survivors",
        || {
            let views: Vec<(i32, i32)> = survivors
                .iter()
                .map(|n| {
                    let (l, e, _, _) =
                        partitions(nodes[(*n - 1) as usize].addr(), &topic)[p as usize].clone();
                    (l, e)
                })
                .collect();
            views[0] == views[1] && views[0].1 > epoch && survivors.contains(&views[0].0)
        },
    );
    let (new_leader, new_epoch, _, _) =
        partitions(nodes[(survivors[0] - 1) as usize].addr(), &topic)[p as usize].clone();
    let other = *survivors
        .iter()
        .find(|n| **n != new_leader)
        .expect("the other survivor");
    let other_at = nodes[(other - 1) as usize].addr();
    let new_endpoint = listed_endpoint(other_at, new_leader);

    // A client that still knows the old epoch is fenced by the new leader, which names
    // itself (once its replica has taken the leadership).
    let new_leader_at = nodes[(new_leader - 1) as usize].addr();
    wait_until("the new leader fences the old epoch", || {
        fetch_hint(new_leader_at, 17, id, p, epoch).0 == FENCED_LEADER_EPOCH
    });
    assert_eq!(
        fetch_hint(new_leader_at, 17, id, p, epoch),
        (
            FENCED_LEADER_EPOCH,
            new_leader,
            new_epoch,
            vec![new_endpoint.clone()]
        )
    );
    // The other survivor names the new leader; the dead one is named nowhere.
    assert_eq!(
        produce_hint(other_at, 11, &topic, p),
        (
            NOT_LEADER_OR_FOLLOWER,
            new_leader,
            new_epoch,
            vec![new_endpoint.clone()]
        )
    );
    assert_eq!(
        fetch_hint(other_at, 16, id, p, new_epoch),
        (
            NOT_LEADER_OR_FOLLOWER,
            new_leader,
            new_epoch,
            vec![new_endpoint]
        )
    );
    for n in survivors {
        nodes[(n - 1) as usize].assert_no_panic();
    }
}

/// The node coordinating `transactional_id` (FindCoordinator key type 1), once one is.
fn transaction_coordinator(addr: SocketAddr, transactional_id: &str) -> i32 {
    use kafka_protocol::messages::FindCoordinatorRequest;
    let node = std::cell::Cell::new(-1);
    wait_until("a transaction coordinator", || {
        let mut conn = KafkaConn::connect(addr);
        let resp = conn.request(
            3,
            &FindCoordinatorRequest::default()
                .with_key(kafka_protocol::protocol::StrBytes::from_string(
                    transactional_id.to_string(),
                ))
                .with_key_type(1),
        );
        node.set(resp.node_id.0);
        resp.error_code == 0 && node.get() > 0
    });
    node.get()
}

/// The values a consumer with `isolation` reads from `partition`, in offset order, once
/// nothing more comes for a while.
fn read_partition(bootstrap: &str, topic: &str, partition: i32, isolation: &str) -> Vec<String> {
    let consumer: BaseConsumer = client::consumer(bootstrap, &[("isolation.level", isolation)]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .expect("assign");
    consumer.assign(&tpl).expect("assign");
    let mut got: Vec<(i64, String)> = Vec::new();
    let deadline = Instant::now() + GUARD;
    let mut quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(3) {
        assert!(
            Instant::now() < deadline,
            "{isolation} never settled: {got:?}"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("consumer error");
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            got.push((m.offset(), value));
            quiet = Instant::now();
        }
    }
    got.sort();
    got.into_iter().map(|(_, v)| v).collect()
}

#[test]
fn transactions_on_a_replicated_partition_survive_the_leader_being_killed() {
    use rdkafka::producer::Producer;

    let mut nodes = start_cluster(3_000);
    let topic = unique_topic("txn-replicated");
    assert_eq!(create_replicated_topic(nodes[0].addr(), &topic), 0);
    wait_for_full_isr(nodes[0].addr(), &topic);
    // The transactions go to the partition the coordinator's node leads, so the kill
    // below takes the coordinator too: what the new leader knows of the open transaction
    // comes from replication alone (the new coordinator aborts it only once it times out,
    // after this test's checks).
    let txn_id = format!("{topic}-tx");
    let coordinator = transaction_coordinator(nodes[0].addr(), &txn_id);
    let partition = partitions(nodes[0].addr(), &topic)
        .iter()
        .position(|(leader, ..)| *leader == coordinator)
        .expect("the coordinator's node leads a partition (round-robin placement)")
        as i32;

    let bootstrap = bootstrap_of(&nodes);
    let producer = transactional_producer(&bootstrap, &txn_id);
    let rt = client::runtime();
    let send = |value: &str| -> i64 {
        let record = FutureRecord::<(), _>::to(&topic)
            .partition(partition)
            .payload(value);
        rt.block_on(producer.send(record, GUARD))
            .unwrap_or_else(|(e, _)| panic!("transactional send of {value}: {e}"))
            .offset
    };
    let mut committed = Vec::new();
    let mut everything = Vec::new();
    for (round, commit) in [("c1", true), ("a1", false), ("c2", true)] {
        producer.begin_transaction().expect("begin_transaction");
        for i in 0..3 {
            let value = format!("{round}-{i}");
            send(&value);
            everything.push(value.clone());
            if commit {
                committed.push(value);
            }
        }
        if commit {
            producer.commit_transaction(GUARD).expect("commit");
        } else {
            producer.abort_transaction(GUARD).expect("abort");
        }
    }
    // A fourth transaction stays open when its leader dies: it holds the LSO back.
    producer.begin_transaction().expect("begin_transaction");
    let open_first = send("open-0");
    let open_last = send("open-1");
    everything.extend(["open-0".to_string(), "open-1".to_string()]);

    // acks=all: every replica holds the batches and markers, as the leader stored them.
    let replica_dirs: Vec<_> = nodes
        .iter()
        .map(|n| partition_dir(n, &topic, partition))
        .collect();
    wait_until("the partition identical on every replica", || {
        let first = batches_on_disk(&replica_dirs[0]);
        first.last().is_some_and(|(base, _)| *base == open_last)
            && replica_dirs[1..]
                .iter()
                .all(|d| batches_on_disk(d) == first)
    });

    // Each follower is killed and started again: what it knows of the transactions must
    // come back from its own log (it rebuilds them at open, as a leader does).
    let victim = (coordinator - 1) as usize;
    for follower in (0..3).filter(|i| *i != victim) {
        nodes[follower].restart();
        wait_until("the restarted follower up and back in the ISR", || {
            partitions(nodes[follower].addr(), &topic).len() == PARTITIONS as usize
                && partitions(nodes[victim].addr(), &topic)[partition as usize]
                    .3
                    .len()
                    == 3
        });
    }

    // Kill the leader (and coordinator): a follower takes over with the same transaction
    // state.
    nodes[victim].kill();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let new_leader = std::cell::Cell::new(-1);
    wait_until("a new leader for the transactional partition", || {
        let leader = partitions(nodes[survivors[0]].addr(), &topic)[partition as usize].0;
        new_leader.set(leader);
        leader > 0 && leader != coordinator
    });
    let leader_addr = nodes[(new_leader.get() - 1) as usize].addr();
    let log_end = open_last + 1;
    wait_until("the new leader serving the whole log", || {
        latest_offset(leader_addr, &topic, partition, 0) == (0, log_end)
    });
    // read_committed stops at the open transaction's first offset.
    assert_eq!(
        latest_offset(leader_addr, &topic, partition, 1),
        (0, open_first),
        "the LSO on the new leader"
    );

    let bootstrap = bootstrap_of(survivors.iter().map(|&i| &nodes[i]));
    assert_eq!(
        read_partition(&bootstrap, &topic, partition, "read_committed"),
        committed,
        "read_committed on the new leader: the committed records only"
    );
    assert_eq!(
        read_partition(&bootstrap, &topic, partition, "read_uncommitted"),
        everything,
        "read_uncommitted on the new leader: every data record, no control record"
    );
    for &i in &survivors {
        nodes[i].assert_no_panic();
    }
    // Closing the producer would wait for its open transaction to end.
    std::mem::forget(producer);
}

/// Every value of `topic` a consumer with `isolation` reads from all its partitions, as
/// (partition, value), sorted, once nothing more comes for a while.
/// A librdkafka transactional producer (acks=all) with its transactions initialised.
fn transactional_producer(bootstrap: &str, txn_id: &str) -> rdkafka::producer::FutureProducer {
    use rdkafka::producer::Producer;
    let producer = client::producer(bootstrap, &[("transactional.id", txn_id), ("acks", "all")]);
    producer
        .init_transactions(GUARD)
        .expect("init_transactions");
    producer
}

fn read_all_partitions(bootstrap: &str, topic: &str, isolation: &str) -> Vec<(i32, String)> {
    let mut all = Vec::new();
    for p in 0..PARTITIONS {
        for v in read_partition(bootstrap, topic, p, isolation) {
            all.push((p, v));
        }
    }
    all.sort();
    all
}

#[test]
fn a_transaction_reaches_a_single_replica_partition_the_coordinators_node_does_not_hold() {
    use rdkafka::producer::Producer;

    let nodes = start_cluster(3_000);
    let topic = unique_topic("txn-rf1");
    assert_eq!(create_topic_rf(nodes[0].addr(), &topic, 1, &[]), 0);
    wait_until("every partition has a leader", || {
        let ps = partitions(nodes[0].addr(), &topic);
        ps.len() == PARTITIONS as usize && ps.iter().all(|(leader, ..)| *leader > 0)
    });
    let leader = partitions(nodes[0].addr(), &topic)[0].0;
    // A transactional id whose coordinator is on a node without a replica of partition 0.
    let txn_id = (0..200)
        .map(|i| format!("{topic}-tx-{i}"))
        .find(|id| transaction_coordinator(nodes[0].addr(), id) != leader)
        .expect("some transactional id is coordinated elsewhere");

    let bootstrap = bootstrap_of(&nodes);
    let producer = transactional_producer(&bootstrap, &txn_id);
    let rt = client::runtime();
    for (value, commit) in [("committed", true), ("aborted", false)] {
        producer.begin_transaction().expect("begin_transaction");
        let record = FutureRecord::<(), _>::to(&topic)
            .partition(0)
            .payload(value);
        rt.block_on(producer.send(record, GUARD))
            .unwrap_or_else(|(e, _)| panic!("transactional send of {value}: {e}"));
        if commit {
            producer.commit_transaction(GUARD).expect("commit");
        } else {
            producer.abort_transaction(GUARD).expect("abort");
        }
    }
    let addr = nodes[(leader - 1) as usize].addr();
    wait_until("both markers on partition 0", || {
        latest_offset(addr, &topic, 0, 1) == (0, 4)
    });
    assert_eq!(
        read_partition(&bootstrap, &topic, 0, "read_committed"),
        vec!["committed".to_string()]
    );
    drop(producer);
    for node in &nodes {
        node.assert_no_panic();
    }
}

#[test]
fn a_transaction_over_partitions_led_by_different_brokers_commits_and_aborts_everywhere() {
    use rdkafka::producer::Producer;

    let nodes = start_cluster(3_000);
    let topic = unique_topic("txn-spread");
    assert_eq!(create_replicated_topic(nodes[0].addr(), &topic), 0);
    wait_for_full_isr(nodes[0].addr(), &topic);
    let leaders: Vec<i32> = partitions(nodes[0].addr(), &topic)
        .iter()
        .map(|(leader, ..)| *leader)
        .collect();
    let txn_id = format!("{topic}-tx");
    let coordinator = transaction_coordinator(nodes[0].addr(), &txn_id);
    assert!(
        leaders.iter().filter(|l| **l != coordinator).count() >= 2,
        "partitions led by brokers other than the coordinator's: {leaders:?}, coordinator {coordinator}"
    );

    let bootstrap = bootstrap_of(&nodes);
    let producer = transactional_producer(&bootstrap, &txn_id);
    let rt = client::runtime();
    let mut committed = Vec::new();
    let mut everything = Vec::new();
    for (round, commit) in [("c1", true), ("a1", false), ("c2", true), ("a2", false)] {
        producer.begin_transaction().expect("begin_transaction");
        for p in 0..PARTITIONS {
            let value = format!("{round}-p{p}");
            let record = FutureRecord::<(), _>::to(&topic)
                .partition(p)
                .payload(&value);
            rt.block_on(producer.send(record, GUARD))
                .unwrap_or_else(|(e, _)| panic!("transactional send of {value}: {e}"));
            everything.push((p, value.clone()));
            if commit {
                committed.push((p, value));
            }
        }
        if commit {
            producer.commit_transaction(GUARD).expect("commit");
        } else {
            producer.abort_transaction(GUARD).expect("abort");
        }
    }
    committed.sort();
    everything.sort();
    // Every partition gets its markers (the coordinator writes them after answering
    // EndTxn; the next transaction waits for them): then no transaction is open anywhere,
    // and the LSO is the log end, past four markers and the records.
    for (p, leader) in leaders.iter().enumerate() {
        let addr = nodes[(*leader - 1) as usize].addr();
        let records = 4 + 4;
        wait_until(
            &format!("partition {p} (leader {leader}): every marker"),
            || {
                latest_offset(addr, &topic, p as i32, 0) == (0, records)
                    && latest_offset(addr, &topic, p as i32, 1) == (0, records)
            },
        );
    }
    assert_eq!(
        read_all_partitions(&bootstrap, &topic, "read_committed"),
        committed,
        "read_committed: the committed transactions on every partition"
    );
    assert_eq!(
        read_all_partitions(&bootstrap, &topic, "read_uncommitted"),
        everything
    );
    // Every leader has it on disk that its partition holds transactions, so that a restart
    // rebuilds them (AddPartitionsToTxn reaches only the coordinator's node; without the
    // mark, a leader restarted there forgot its aborts and served them as committed).
    for (p, leader) in leaders.iter().enumerate() {
        let dir = nodes[(*leader - 1) as usize]
            .data_dir()
            .join(format!("{topic}-{p}"));
        assert!(
            dir.join("transactional").exists(),
            "partition {p}: its leader, node {leader}, has no transaction marker file (coordinator: node {coordinator})"
        );
    }
    drop(producer);
    for node in &nodes {
        node.assert_no_panic();
    }
}

#[test]
fn a_marker_counts_as_written_only_once_the_in_sync_replicas_have_it() {
    use rdkafka::producer::Producer;

    // One voter and two broker-only nodes, as above: with the brokers dead, node 1 leads
    // alone, below `min.insync.replicas`. `__transaction_state` keeps one replica here, so
    // that its coordinator on node 1 goes on alone (with three replicas and
    // `transaction.state.log.min.isr` 2 it would wait for the brokers too, as Kafka's).
    let mut nodes = start_nodes_with(
        1,
        2,
        3_000,
        "transaction.state.log.replication.factor = 1\n",
    );
    let topic = unique_topic("txn-min-isr");
    assert_eq!(
        create_topic_with(nodes[0].addr(), &topic, &[("min.insync.replicas", "2")]),
        0
    );
    wait_for_full_isr(nodes[0].addr(), &topic);
    // A transactional id coordinated by node 1, which survives.
    let txn_id = (0..200)
        .map(|i| format!("{topic}-tx-{i}"))
        .find(|id| transaction_coordinator(nodes[0].addr(), id) == 1)
        .expect("an id coordinated by node 1");
    let partition = partitions(nodes[0].addr(), &topic)
        .iter()
        .position(|(leader, ..)| *leader == 1)
        .expect("node 1 leads a partition") as i32;

    let producer = transactional_producer(&bootstrap_of(&nodes), &txn_id);
    producer.begin_transaction().expect("begin_transaction");
    let rt = client::runtime();
    let mut first = -1;
    for value in ["m-0", "m-1"] {
        let record = FutureRecord::<(), _>::to(&topic)
            .partition(partition)
            .payload(value);
        let delivered = rt
            .block_on(producer.send(record, GUARD))
            .unwrap_or_else(|(e, _)| panic!("transactional send of {value}: {e}"));
        if first < 0 {
            first = delivered.offset;
        }
    }
    let records_end = first + 2;

    nodes[1].kill();
    nodes[2].kill();
    wait_until("node 1 alone in the partition's ISR", || {
        partitions(nodes[0].addr(), &topic)[partition as usize].3 == vec![1]
    });
    // EndTxn is answered once the coordinator logged the commit; the marker cannot be
    // written (NOT_ENOUGH_REPLICAS, as Kafka's acks=-1 append), so the transaction stays
    // open for read_committed while the coordinator tries again.
    producer.commit_transaction(GUARD).expect("commit");
    std::thread::sleep(Duration::from_secs(3));
    let addr = nodes[0].addr();
    assert_eq!(
        latest_offset(addr, &topic, partition, 0),
        (0, records_end),
        "no marker in the log"
    );
    assert_eq!(
        latest_offset(addr, &topic, partition, 1),
        (0, first),
        "the LSO held at the transaction's first record"
    );

    // The followers come back and rejoin the ISR: the coordinator's next try writes the
    // marker, every replica has it, and the transaction is committed.
    nodes[1].restart();
    nodes[2].restart();
    wait_until("the marker written and committed", || {
        latest_offset(addr, &topic, partition, 1) == (0, records_end + 1)
            && latest_offset(addr, &topic, partition, 0) == (0, records_end + 1)
    });
    // The marker reaches every replica, byte for byte.
    let dirs: Vec<_> = nodes
        .iter()
        .map(|n| partition_dir(n, &topic, partition))
        .collect();
    wait_until("the marker on every replica", || {
        let lead = batches_on_disk(&dirs[0]);
        lead.last().is_some_and(|(base, _)| *base == records_end)
            && dirs[1..].iter().all(|d| batches_on_disk(d) == lead)
    });
    assert_eq!(
        read_partition(&nodes[0].bootstrap(), &topic, partition, "read_committed"),
        vec!["m-0".to_string(), "m-1".to_string()]
    );
    drop(producer);
    for node in &nodes {
        node.assert_no_panic();
    }
}

/// The node FindCoordinator (as `addr` answers it) names for `group`, once it names one.
fn group_coordinator(addr: SocketAddr, group: &str) -> Option<i32> {
    use kafka_protocol::messages::FindCoordinatorRequest;
    let mut conn = KafkaConn::connect(addr);
    let req = FindCoordinatorRequest::default()
        .with_key(kafka_protocol::protocol::StrBytes::from_string(
            group.into(),
        ))
        .with_key_type(0);
    let resp = conn.request(3, &req);
    (resp.error_code == 0 && resp.node_id.0 > 0).then_some(resp.node_id.0)
}

/// A consumer of `group`, subscribed to `topic`, committing by hand.
fn group_consumer(bootstrap: &str, group: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("log_level", "4")
        .create()
        .expect("a group consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// Polls `consumer` until it has read `count` records (none twice); returns them.
fn read_records(consumer: &BaseConsumer, count: usize) -> Acked {
    let mut read = Acked::new();
    let deadline = Instant::now() + GUARD;
    while read.len() < count {
        assert!(
            Instant::now() < deadline,
            "read {} of {count} records",
            read.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
                let again = read.insert((m.partition(), m.offset()), value);
                assert!(again.is_none(), "offset {} read twice", m.offset());
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    read
}

/// Commits the consumer's positions, retrying while the coordinator moves; each attempt
/// waits for the answer.
fn commit_positions(consumer: &BaseConsumer) {
    let deadline = Instant::now() + GUARD;
    loop {
        match consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            Ok(()) => return,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the commit never went through: {e}"
                );
                eprintln!("commit retried: {e}");
                let _ = consumer.poll(Duration::from_millis(200));
            }
        }
    }
}

#[test]
fn a_consumer_group_keeps_its_committed_offsets_and_goes_on_when_its_coordinator_is_killed() {
    let mut nodes = start_cluster(3_000);
    let topic = unique_topic("group-failover");
    assert_eq!(create_replicated_topic(nodes[0].addr(), &topic), 0);
    wait_for_full_isr(nodes[0].addr(), &topic);
    let bootstrap = bootstrap_of(&nodes);
    let mut acked = Acked::new();
    produce_acks_all(&bootstrap, &topic, 0, 300, &mut acked);

    let group = format!("failover-{}", std::process::id());
    let consumer = group_consumer(&bootstrap, &group, &topic);
    let first = read_records(&consumer, 300);
    assert_eq!(first, acked, "the group read every record once");
    commit_positions(&consumer);

    // `__consumer_offsets` is created with three replicas on three brokers (min(3, live
    // brokers), as Kafka's default), and the commit was answered once every in-sync
    // replica had it.
    let offsets = partitions(nodes[0].addr(), "__consumer_offsets");
    assert!(!offsets.is_empty(), "__consumer_offsets is listed");
    assert!(
        offsets
            .iter()
            .all(|(_, _, replicas, _)| replicas.len() == 3),
        "every __consumer_offsets partition has three replicas: {offsets:?}"
    );
    let coordinator = group_coordinator(nodes[0].addr(), &group).expect("a coordinator");

    // Kill the coordinator's node: the controller elects another leader for the group's
    // offsets partition, and that node becomes the coordinator with the group's state.
    let victim = (coordinator - 1) as usize;
    nodes[victim].kill();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let killed_at = Instant::now();
    let moved_to = std::cell::Cell::new(None);
    wait_until("another node coordinates the group", || {
        moved_to.set(
            group_coordinator(nodes[survivors[0]].addr(), &group).filter(|n| *n != coordinator),
        );
        moved_to.get().is_some()
    });
    eprintln!(
        "node {} coordinates the group {:.1} s after SIGKILL of node {coordinator}",
        moved_to.get().unwrap_or(-1),
        killed_at.elapsed().as_secs_f64()
    );

    // The same consumer goes on: it finds the new coordinator, reads what comes next (not
    // what it read before) and commits again.
    let survivors_bootstrap = bootstrap_of(survivors.iter().map(|&i| &nodes[i]));
    let mut more = Acked::new();
    produce_acks_all(&survivors_bootstrap, &topic, 300, 200, &mut more);
    let second = read_records(&consumer, 200);
    assert_eq!(
        second, more,
        "after the failover the group read the new records once"
    );
    commit_positions(&consumer);
    drop(consumer);

    // The new coordinator holds both commits: a new member of the group starts from them,
    // so it reads only what is produced after.
    let mut last = Acked::new();
    produce_acks_all(&survivors_bootstrap, &topic, 500, 30, &mut last);
    let consumer = group_consumer(&survivors_bootstrap, &group, &topic);
    let third = read_records(&consumer, 30);
    assert_eq!(
        third, last,
        "a new member starts from the committed offsets"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        consumer.poll(Duration::from_millis(500)).is_none(),
        "nothing older is read again"
    );
    drop(consumer);

    // The old coordinator comes back as a follower of the offsets partition; the group
    // stays where it is.
    nodes[victim].restart();
    for node in &nodes {
        node.assert_no_panic();
    }
}

#[test]
fn a_coordinator_that_loses_its_offsets_partition_and_gets_it_back_serves_what_the_other_one_committed(
) {
    // Leadership goes back to preferred replicas within a second of them being in sync.
    let nodes = start_nodes_with(3, 0, 3_000, "leader.imbalance.check.interval.seconds = 1\n");
    let topic = unique_topic("coordinator-back");
    assert_eq!(create_replicated_topic(nodes[0].addr(), &topic), 0);
    wait_for_full_isr(nodes[0].addr(), &topic);
    let bootstrap = bootstrap_of(&nodes);
    let group = format!("back-{}", std::process::id());

    // A member reads 100 records and commits; the group's coordinator is node A.
    let mut acked = Acked::new();
    produce_acks_all(&bootstrap, &topic, 0, 100, &mut acked);
    let consumer = group_consumer(&bootstrap, &group, &topic);
    assert_eq!(read_records(&consumer, 100), acked);
    commit_positions(&consumer);
    drop(consumer);
    let a = group_coordinator(nodes[0].addr(), &group).expect("a coordinator");
    let a_node = &nodes[(a - 1) as usize];
    // Node ids are 1, 2, 3 in start order.
    let others: Vec<&Broker> = (0..3)
        .filter(|i| *i != (a - 1) as usize)
        .map(|i| &nodes[i])
        .collect();

    // A stops (alive, silent): it is fenced and another node coordinates the group, with
    // the offsets A's coordinator committed.
    signal(a_node, libc::SIGSTOP);
    wait_until("another node coordinates the group", || {
        group_coordinator(others[0].addr(), &group).is_some_and(|n| n != a)
    });
    let others_bootstrap = bootstrap_of(others.iter().copied());
    let mut second = Acked::new();
    produce_acks_all(&others_bootstrap, &topic, 100, 50, &mut second);
    let consumer = group_consumer(&others_bootstrap, &group, &topic);
    assert_eq!(
        read_records(&consumer, 50),
        second,
        "the new coordinator starts the group from A's commits"
    );
    commit_positions(&consumer);
    drop(consumer);

    // A comes back, catches up, and leads its preferred partitions again: its coordinator
    // must serve the commits made while it was away, not what it held before.
    signal(a_node, libc::SIGCONT);
    wait_until("node A coordinates the group again", || {
        group_coordinator(others[0].addr(), &group) == Some(a)
    });
    let mut third = Acked::new();
    produce_acks_all(&bootstrap, &topic, 150, 30, &mut third);
    let consumer = group_consumer(&bootstrap, &group, &topic);
    assert_eq!(
        read_records(&consumer, 30),
        third,
        "back on node A, the group starts from the commits made while A was away"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        consumer.poll(Duration::from_millis(500)).is_none(),
        "nothing older is read again"
    );
    drop(consumer);
    for node in &nodes {
        node.assert_no_panic();
    }
}

/// The record values of `topic` a read_committed consumer of `bootstrap` sees, sorted.
fn committed_values(bootstrap: &str, topic: &str) -> Vec<String> {
    let mut values: Vec<String> = read_all_partitions(bootstrap, topic, "read_committed")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    values.sort();
    values
}

/// Whether every partition of `topic` is led by one of the `live` nodes (by index; node
/// ids count from 1) and has its last stable offset at its high watermark there (no
/// transaction open).
fn no_transaction_open(nodes: &[Broker], live: &[usize], topic: &str) -> bool {
    let view = partitions(nodes[live[0]].addr(), topic);
    view.len() == PARTITIONS as usize
        && view.iter().enumerate().all(|(p, (leader, ..))| {
            let index = (*leader - 1) as usize;
            if *leader <= 0 || !live.contains(&index) {
                return false;
            }
            let node = &nodes[index];
            let (e1, hw) = latest_offset(node.addr(), topic, p as i32, 0);
            let (e2, lso) = latest_offset(node.addr(), topic, p as i32, 1);
            e1 == 0 && e2 == 0 && lso == hw
        })
}

/// KIP-98 coordinator failover: `__transaction_state` is replicated, and when the node
/// coordinating a transaction is killed after the PrepareCommit is in the log but before
/// its markers are written, the partition's new leader becomes the coordinator (with the
/// new leader epoch), finishes the commit on its own, and fences the old producer epoch.
#[test]
fn a_commit_logged_before_its_coordinator_is_killed_is_finished_by_the_new_coordinator() {
    use rdkafka::producer::Producer;

    // Three voters and a fourth broker. The data topic has a replica on every node and
    // min.insync.replicas = 4: with the fourth broker stopped, a marker cannot be written
    // (it waits for enough in-sync replicas), while `__transaction_state` (3 replicas,
    // transaction.state.log.min.isr = 2) still takes the coordinator's records.
    let mut nodes = start_nodes_with(
        3,
        1,
        3_000,
        "transaction.state.log.num.partitions = 3\ntransaction.state.log.min.isr = 2\n",
    );
    let topic = unique_topic("txn-failover");
    assert_eq!(
        create_topic_rf(nodes[0].addr(), &topic, 4, &[("min.insync.replicas", "4")]),
        0
    );
    wait_until("every replica of the data topic in sync", || {
        let ps = partitions(nodes[0].addr(), &topic);
        ps.len() == PARTITIONS as usize && ps.iter().all(|(l, _, _, isr)| *l > 0 && isr.len() == 4)
    });
    // A transactional id coordinated by a voter (so that the controller quorum survives its
    // kill while the fourth broker is stopped).
    let (txn_id, coordinator) = (0..)
        .map(|i| format!("{topic}-tx{i}"))
        .map(|id| {
            let c = transaction_coordinator(nodes[0].addr(), &id);
            (id, c)
        })
        .find(|(_, c)| *c != 4)
        .expect("some id is coordinated by a voter");
    let txn_log = wharf_protocol::txn::log::TRANSACTION_STATE_TOPIC_NAME;
    wait_until(
        "__transaction_state replicated three times, all in sync",
        || {
            let ps = partitions(nodes[0].addr(), txn_log);
            ps.len() == 3
                && ps
                    .iter()
                    .all(|(l, _, replicas, isr)| *l > 0 && replicas.len() == 3 && isr.len() == 3)
        },
    );

    // The transaction writes to two partitions the fourth broker does not lead: their
    // leaders stay, and answer for their last stable offset while it is stopped (a leader
    // elected then could not: KIP-966 keeps the high watermark still below
    // min.insync.replicas, and KIP-207 has the new leader wait for it).
    let txn_partitions: Vec<i32> = partitions(nodes[0].addr(), &topic)
        .iter()
        .enumerate()
        .filter(|(_, (leader, ..))| *leader != 4)
        .map(|(p, _)| p as i32)
        .take(2)
        .collect();
    assert_eq!(
        txn_partitions.len(),
        2,
        "the fourth broker leads one partition at most"
    );
    let other_partition = (0..PARTITIONS)
        .find(|p| !txn_partitions.contains(p))
        .expect("a third partition");

    let bootstrap = bootstrap_of(&nodes);
    let producer = client::producer(
        &bootstrap,
        &[
            ("transactional.id", txn_id.as_str()),
            ("transaction.timeout.ms", "60000"),
        ],
    );
    producer
        .init_transactions(GUARD)
        .expect("init_transactions");
    let rt = client::runtime();
    let send = |producer: &rdkafka::producer::FutureProducer, partition: i32, value: &str| {
        let record = FutureRecord::<(), _>::to(&topic)
            .partition(partition)
            .payload(value);
        rt.block_on(producer.send(record, Duration::from_secs(20)))
            .map(|_| ())
            .map_err(|(e, _)| e)
    };
    let mut committed = Vec::new();
    for round in ["c1", "c2"] {
        producer.begin_transaction().expect("begin_transaction");
        for &partition in &txn_partitions {
            let value = format!("{round}-{partition}");
            send(&producer, partition, &value).expect("transactional send");
            committed.push(value);
        }
        if round == "c1" {
            producer.commit_transaction(GUARD).expect("commit c1");
        }
    }

    // The fourth broker stops: once it is fenced, the data partitions have three replicas
    // in sync, too few for a marker.
    let fourth = 3;
    signal(&nodes[fourth], libc::SIGSTOP);
    wait_until("the stopped broker out of every ISR", || {
        partitions(nodes[0].addr(), &topic)
            .iter()
            .all(|(l, _, _, isr)| *l > 0 && *l != 4 && !isr.contains(&4))
    });
    // EndTxn is answered once PrepareCommit is in `__transaction_state` (on two replicas).
    producer.commit_transaction(GUARD).expect("commit c2");
    let leader_of = |p: i32| {
        let node = partitions(nodes[0].addr(), &topic)[p as usize].0;
        nodes[(node - 1) as usize].addr()
    };
    std::thread::sleep(Duration::from_secs(1));
    for &p in &txn_partitions {
        let (e1, hw) = latest_offset(leader_of(p), &topic, p, 0);
        let (e2, lso) = latest_offset(leader_of(p), &topic, p, 1);
        assert_eq!((e1, e2), (0, 0), "partition {p}: ListOffsets");
        assert!(
            lso < hw,
            "partition {p}: its marker is not written yet ({lso} < {hw})"
        );
    }

    // The coordinator is killed with the commit half done.
    let victim = (coordinator - 1) as usize;
    nodes[victim].kill();
    let survivors: Vec<usize> = (0..4).filter(|i| *i != victim).collect();
    let voter = survivors[0];
    let new_coordinator = std::cell::Cell::new(-1);
    wait_until("another node coordinating the transactional id", || {
        let c = transaction_coordinator(nodes[voter].addr(), &txn_id);
        new_coordinator.set(c);
        c != coordinator
    });
    assert!(
        [1, 2, 3].contains(&new_coordinator.get()),
        "the new coordinator {} is a live in-sync replica",
        new_coordinator.get()
    );
    // Markers can be written again; nobody asks the new coordinator anything, yet it
    // finishes the commit it loaded from the log.
    assert_eq!(
        set_topic_config(nodes[voter].addr(), &topic, "min.insync.replicas", "2"),
        0
    );
    signal(&nodes[fourth], libc::SIGCONT);
    wait_until("the commit finished on every partition", || {
        no_transaction_open(&nodes, &survivors, &topic)
    });
    let bootstrap = bootstrap_of(survivors.iter().map(|&i| &nodes[i]));
    committed.sort();
    assert_eq!(committed_values(&bootstrap, &topic), committed);

    // A new instance of the producer takes over the transactional id (a new epoch) ...
    let successor = client::producer(&bootstrap, &[("transactional.id", txn_id.as_str())]);
    successor
        .init_transactions(GUARD)
        .expect("init_transactions of the new instance");
    successor.begin_transaction().expect("begin_transaction");
    send(&successor, other_partition, "c3").expect("transactional send");
    successor.commit_transaction(GUARD).expect("commit c3");
    committed.push("c3".to_string());
    committed.sort();

    // ... and the old instance is a zombie: fenced, its records never committed.
    let zombie = (|| {
        producer.begin_transaction()?;
        send(&producer, txn_partitions[0], "zombie")?;
        producer.commit_transaction(Duration::from_secs(30))
    })();
    assert!(zombie.is_err(), "the old producer epoch is fenced");
    wait_until("no transaction left open", || {
        no_transaction_open(&nodes, &survivors, &topic)
    });
    assert_eq!(committed_values(&bootstrap, &topic), committed);
    for &i in &survivors {
        nodes[i].assert_no_panic();
    }
    std::mem::forget(producer);
    std::mem::forget(successor);
}
