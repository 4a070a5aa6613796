//! Clusters of real `wharf` processes on loopback: voters of one metadata quorum sharing one
//! view of topics, partitions and leaders; the loss of the active controller; a node that
//! comes back and catches up; hostile frames on the controller port; and the one-node
//! cluster's metadata log (restart after SIGKILL, taking over a data dir written before
//! clusters existed).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_topic_partitions_request::TopicRequest;
use kafka_protocol::messages::{
    CreateTopicsRequest, DescribeClusterRequest, DescribeClusterResponse, DescribeQuorumRequest,
    DescribeQuorumResponse, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse,
    InitProducerIdRequest, MetadataRequest, MetadataResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use rdkafka::admin::ResourceSpecifier;
use rdkafka::producer::FutureRecord;
use wharf_protocol::controller::{
    decode_frame, encode_frame, AlterPartitionData, AlterPartitionRequest, AlterPartitionTopic,
    Body, BrokerRegistrationRequest, ErrorKind, Frame, IsrMember, Listener, RaftMessage, TopicRef,
};

use common::raw::{error_code, produce_one, record_batch, topic_name, KafkaConn};
use common::{client, http, unique_topic, Broker};

const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const TOPIC_ALREADY_EXISTS: i16 = 36;
/// Not a performance assertion: a generous bound on a failover, on a busy debug build.
const FAILOVER_GUARD: Duration = Duration::from_secs(30);

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// `n` free loopback ports of this file's own range, so a restarted node gets its port back
/// and no other test file's cluster takes it meanwhile.
fn free_ports(n: usize) -> Vec<u16> {
    common::free_ports_in(26_000..32_000, n)
}

/// Starts `n` voters of one quorum at once (each waits for the others before it serves).
/// Returns the nodes (node id `i + 1` at index `i`) and their controller ports.
fn start_cluster(n: usize) -> (Vec<Broker>, Vec<u16>) {
    start_cluster_with_brokers_and(n, 0, "")
}

/// Like [`start_cluster`], with these settings in each node's configuration file.
fn start_cluster_with(n: usize, settings: &str) -> (Vec<Broker>, Vec<u16>) {
    start_cluster_with_brokers_and(n, 0, settings)
}

/// Starts `n` voters and `brokers` broker-only nodes (ids `n + 1` ...) at once. Returns
/// the nodes (node id `i + 1` at index `i`) and the voters' controller ports.
fn start_cluster_with_brokers(n: usize, brokers: usize) -> (Vec<Broker>, Vec<u16>) {
    start_cluster_with_brokers_and(n, brokers, "")
}

/// Like [`start_cluster_with_brokers`], with these settings in each node's configuration
/// file.
fn start_cluster_with_brokers_and(
    n: usize,
    brokers: usize,
    settings: &str,
) -> (Vec<Broker>, Vec<u16>) {
    let ports = free_ports(n);
    let voters = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let starting: Vec<_> = (0..n + brokers)
        .map(|i| {
            let voters = voters.clone();
            let settings = settings.to_string();
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
                        "--metrics-listen",
                        "127.0.0.1:0",
                    ],
                )
            })
        })
        .collect();
    let nodes = starting
        .into_iter()
        .map(|t| t.join().expect("a node did not start"))
        .collect();
    (nodes, ports)
}

fn metadata(addr: SocketAddr) -> MetadataResponse {
    let mut conn = KafkaConn::connect(addr);
    conn.request(12, &MetadataRequest::default().with_topics(None))
}

/// A topic as one node describes it: its id and, per partition, (leader, replicas).
type TopicView = (uuid::Uuid, Vec<(i32, Vec<i32>)>);

fn topic_view(md: &MetadataResponse, topic: &str) -> Option<TopicView> {
    let t = md
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))?;
    let mut partitions: Vec<(i32, (i32, Vec<i32>))> = t
        .partitions
        .iter()
        .map(|p| {
            (
                p.partition_index,
                (
                    p.leader_id.0,
                    p.replica_nodes.iter().map(|r| r.0).collect::<Vec<_>>(),
                ),
            )
        })
        .collect();
    partitions.sort_by_key(|(i, _)| *i);
    Some((t.topic_id, partitions.into_iter().map(|(_, p)| p).collect()))
}

/// CreateTopics through `addr`: the topic's error code.
fn create_topic(addr: SocketAddr, topic: &str, partitions: i32) -> i16 {
    let mut conn = KafkaConn::connect(addr);
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(topic))
            .with_num_partitions(partitions)
            .with_replication_factor(-1)]);
    let resp = conn.request(5, &req);
    resp.topics[0].error_code
}

/// Waits (bounded) until `check` holds for every node's Metadata.
fn wait_for_metadata(nodes: &[&Broker], what: &str, check: impl Fn(&MetadataResponse) -> bool) {
    let deadline = Instant::now() + FAILOVER_GUARD;
    loop {
        if nodes.iter().all(|n| check(&metadata(n.addr()))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never true on every node: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `bytes` to a controller port and tells whether the node closed the connection
/// (rather than leaving it open) within a bounded time.
fn closed_after(port: u16, bytes: &[u8]) -> bool {
    closed_within(port, bytes, Duration::from_secs(10))
}

/// Like [`closed_after`], waiting at most `wait`.
fn closed_within(port: u16, bytes: &[u8], wait: Duration) -> bool {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the controller");
    stream.set_read_timeout(Some(wait)).expect("read timeout");
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

/// Sends one request frame to a controller port and reads the answer.
fn controller_answer(port: u16, request: &[u8]) -> Frame {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the controller");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    stream.write_all(request).expect("send");
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).expect("an answer");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).expect("the whole answer");
    decode_frame(&Bytes::from(body)).expect("a well-formed answer")
}

fn metric(metrics: SocketAddr, series: &str) -> f64 {
    http::must(&http::scrape(metrics), series)
}

fn produce_everywhere(bootstrap: &str, topic: &str, partitions: i32, per_partition: usize) {
    let producer = client::producer(bootstrap, &[]);
    let rt = client::runtime();
    for p in 0..partitions {
        for i in 0..per_partition {
            let value = format!("p{p}-r{i}");
            rt.block_on(
                producer.send(
                    FutureRecord::<(), _>::to(topic)
                        .partition(p)
                        .payload(&value),
                    Duration::from_secs(30),
                ),
            )
            .unwrap_or_else(|(e, _)| panic!("producing to {topic}/{p} failed: {e}"));
        }
    }
}

fn record_counts(bootstrap: &str, topic: &str) -> BTreeMap<i32, usize> {
    client::read_all(bootstrap, topic)
        .into_iter()
        .map(|(p, records)| (p, records.len()))
        .collect()
}

#[test]
fn three_voters_share_metadata_survive_the_controllers_loss_and_catch_up() {
    let (mut nodes, controller_ports) = start_cluster(3);
    let bootstrap = nodes
        .iter()
        .map(|n| n.bootstrap())
        .collect::<Vec<_>>()
        .join(",");

    // A topic created through node 1 appears on every node, with the same id and the same
    // placement: one leader per partition, spread over the three nodes.
    let spread = unique_topic("spread");
    assert_eq!(create_topic(nodes[0].addr(), &spread, 6), error_code::NONE);
    let views: Vec<TopicView> = nodes
        .iter()
        .map(|n| topic_view(&metadata(n.addr()), &spread).expect("the topic on every node"))
        .collect();
    assert!(views.iter().all(|v| *v == views[0]), "{views:?}");
    let (_, partitions) = &views[0];
    assert_eq!(partitions.len(), 6);
    for node in 1..=3 {
        assert_eq!(
            partitions
                .iter()
                .filter(|(leader, _)| *leader == node)
                .count(),
            2,
            "leaders spread evenly: {partitions:?}"
        );
    }
    assert!(partitions.iter().all(|(l, r)| r == &vec![*l]));
    for n in &nodes {
        let md = metadata(n.addr());
        assert_eq!(md.brokers.len(), 3, "every node lists every broker");
        assert_eq!(md.controller_id, metadata(nodes[0].addr()).controller_id);
    }

    // A real client finds each partition's leader; a node that does not lead a partition
    // says so.
    produce_everywhere(&bootstrap, &spread, 6, 10);
    assert_eq!(
        record_counts(&bootstrap, &spread),
        (0..6).map(|p| (p, 10)).collect()
    );
    let (p, (leader, _)) = partitions
        .iter()
        .enumerate()
        .find(|(_, (leader, _))| *leader != 1)
        .expect("a partition node 1 does not lead");
    let mut conn = KafkaConn::connect(nodes[0].addr());
    let (answer, _) = produce_one(
        &mut conn,
        7,
        &spread,
        p as i32,
        record_batch(&[Bytes::from_static(b"x")], Compression::None),
    );
    assert_eq!(
        answer, NOT_LEADER_OR_FOLLOWER,
        "node 1 does not lead partition {p} (node {leader} does)"
    );

    // Hostile frames on a controller port close that connection and change nothing.
    let metrics = nodes[1].metrics_addr();
    let term_before = metric(metrics, "wharf_metadata_quorum_term");
    let port = controller_ports[1];
    let mut garbage = vec![0, 0, 0, 16];
    garbage.extend_from_slice(&[0xAB; 16]);
    assert!(closed_after(port, &garbage), "garbage");
    assert!(
        closed_after(port, &[0x7f, 0xff, 0xff, 0xff, 1, 2, 3]),
        "an oversized length"
    );
    let stranger = encode_frame(&Frame::new(
        0,
        Body::Raft(RaftMessage {
            msg_type: 17, // a pre-vote request
            from: 9,
            to: 2,
            term: 1_000,
            ..RaftMessage::default()
        }),
    ))
    .expect("encode");
    assert!(
        closed_after(port, &stranger),
        "a raft message from node 9, which is not a voter"
    );
    assert_eq!(metric(metrics, "wharf_controller_bad_frames_total"), 3.0);
    assert_eq!(
        metric(metrics, "wharf_metadata_quorum_term"),
        term_before,
        "the quorum's term is untouched"
    );
    // A registration with a negative node id is refused, and changes nothing. (Any other
    // node id may register: brokers need not be voters.)
    let registration = encode_frame(&Frame::new(
        5,
        Body::BrokerRegistrationRequest(BrokerRegistrationRequest {
            node_id: -1,
            incarnation_id: 1,
            cluster_id: String::new(),
            listeners: vec![Listener {
                name: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 1,
            }],
            rack: None,
        }),
    ))
    .expect("encode");
    let active = metadata(nodes[0].addr()).controller_id.0;
    assert!((1..=3).contains(&active), "a controller: {active}");
    let answer = controller_answer(controller_ports[(active - 1) as usize], &registration);
    assert!(
        matches!(&answer.body, Body::ErrorResponse(e) if e.kind == ErrorKind::InvalidRequest),
        "{answer:?}"
    );
    assert_eq!(metadata(nodes[2].addr()).brokers.len(), 3);
    let after_garbage = unique_topic("after-garbage");
    assert_eq!(
        create_topic(nodes[1].addr(), &after_garbage, 1),
        error_code::NONE
    );

    // kill -9 the active controller: the other two elect one and take changes again.
    let controller = metadata(nodes[0].addr()).controller_id.0;
    assert!((1..=3).contains(&controller), "a controller: {controller}");
    let dead = (controller - 1) as usize;
    let alive: Vec<usize> = (0..3).filter(|i| *i != dead).collect();
    nodes[dead].kill();
    let killed_at = Instant::now();
    let failover = unique_topic("after-failover");
    let mut attempt = 0;
    loop {
        let via = nodes[alive[attempt % 2]].addr();
        let code = create_topic(via, &failover, 3);
        if code == error_code::NONE || code == TOPIC_ALREADY_EXISTS {
            break;
        }
        assert!(
            killed_at.elapsed() < FAILOVER_GUARD,
            "no metadata change accepted {FAILOVER_GUARD:?} after the controller was killed (last error {code})"
        );
        attempt += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = killed_at.elapsed();
    println!(
        "failover: CreateTopics accepted {} ms after the active controller (node {controller}) was killed",
        took.as_millis()
    );
    let new_controller = metadata(nodes[alive[0]].addr()).controller_id.0;
    assert_ne!(new_controller, controller);

    // The killed node comes back, catches up (the topic created while it was down is
    // there, with the same id) and leads its partitions again.
    nodes[dead].restart();
    let survivors = [&nodes[alive[0]], &nodes[alive[1]], &nodes[dead]];
    let expected = topic_view(&metadata(nodes[alive[0]].addr()), &failover).expect("created");
    wait_for_metadata(&survivors, "the new topic and every leader back", |md| {
        topic_view(md, &failover).is_some_and(|v| v.0 == expected.0)
            && topic_view(md, &spread)
                .is_some_and(|(_, parts)| parts.iter().all(|(leader, _)| *leader > 0))
    });
    assert_eq!(
        record_counts(&bootstrap_of(&nodes), &spread),
        (0..6).map(|p| (p, 10)).collect(),
        "every record is still there, the restarted node's partitions included"
    );

    // `wharf cluster status`, asked through a node that may not lead the quorum: the new
    // controller, every node serving, each node's log end known to the leader.
    let status = cluster_status(&nodes[dead].bootstrap());
    assert!(
        status.contains(&format!("Active controller:  node {new_controller}")),
        "{status}"
    );
    let rows: Vec<&str> = status
        .lines()
        .filter(|l| l.contains("broker,controller"))
        .collect();
    assert_eq!(rows.len(), 3, "{status}");
    assert!(rows.iter().all(|r| r.contains("serving")), "{status}");
    assert!(
        rows.iter().all(|r| r
            .split_whitespace()
            .last()
            .is_some_and(|lag| lag.parse::<i64>().is_ok())),
        "every node's lag is known: {status}"
    );

    // All three stop and start again: everything is there.
    for n in nodes.iter_mut() {
        n.terminate();
    }
    let restarting: Vec<_> = nodes
        .into_iter()
        .map(|mut n| {
            std::thread::spawn(move || {
                n.restart();
                n
            })
        })
        .collect();
    let nodes: Vec<Broker> = restarting
        .into_iter()
        .map(|t| t.join().expect("a node did not come back"))
        .collect();
    let refs: Vec<&Broker> = nodes.iter().collect();
    wait_for_metadata(&refs, "all topics after a full restart", |md| {
        topic_view(md, &failover).is_some_and(|v| v.0 == expected.0)
            && topic_view(md, &spread).is_some_and(|v| v.0 == views[0].0)
            && topic_view(md, &after_garbage).is_some()
    });
    assert_eq!(
        record_counts(&bootstrap_of(&nodes), &spread),
        (0..6).map(|p| (p, 10)).collect()
    );
    for n in &nodes {
        n.assert_no_panic();
    }
}

/// One partition as Metadata shows it: (leader, error, replicas, ISR, offline replicas).
type PartitionView = (i32, i16, Vec<i32>, Vec<i32>, Vec<i32>);

fn partition_views(md: &MetadataResponse, topic: &str) -> Vec<PartitionView> {
    let Some(t) = md
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
    else {
        return Vec::new();
    };
    let ids = |v: &[kafka_protocol::messages::BrokerId]| v.iter().map(|b| b.0).collect();
    let mut parts: Vec<(i32, PartitionView)> = t
        .partitions
        .iter()
        .map(|p| {
            (
                p.partition_index,
                (
                    p.leader_id.0,
                    p.error_code,
                    ids(&p.replica_nodes),
                    ids(&p.isr_nodes),
                    ids(&p.offline_replicas),
                ),
            )
        })
        .collect();
    parts.sort_by_key(|(i, _)| *i);
    parts.into_iter().map(|(_, v)| v).collect()
}

#[test]
fn a_killed_broker_is_fenced_and_its_partitions_shown_offline_until_it_returns() {
    const LEADER_NOT_AVAILABLE: i16 = 5;
    // Short sessions, so that the silent broker is fenced within seconds.
    let settings = "broker.session.timeout.ms = 2000\nbroker.heartbeat.interval.ms = 500\n";
    let (mut nodes, controller_ports) = start_cluster_with(3, settings);
    let topic = unique_topic("offline");
    assert_eq!(create_topic(nodes[0].addr(), &topic, 6), error_code::NONE);
    let controller = metadata(nodes[0].addr()).controller_id.0;
    let victim = (1..=3)
        .find(|n| *n != controller)
        .expect("a node that does not control");
    let before = partition_views(&metadata(nodes[0].addr()), &topic);
    let led: Vec<usize> = (0..before.len())
        .filter(|p| before[*p].0 == victim)
        .collect();
    assert_eq!(
        led.len(),
        2,
        "two of six partitions on each node: {before:?}"
    );

    nodes[(victim - 1) as usize].kill();
    let killed_at = Instant::now();
    let survivors: Vec<&Broker> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as i32 != victim - 1)
        .map(|(_, n)| n)
        .collect();
    // Fenced once its session runs out: not listed, its partitions without a leader (RF=1:
    // their only replica is the last ISR member, kept), reported offline; the others as
    // they were.
    wait_for_metadata(&survivors, "the killed broker fenced", |md| {
        let parts = partition_views(md, &topic);
        !md.brokers.iter().any(|b| b.node_id.0 == victim)
            && parts.len() == 6
            && parts.iter().enumerate().all(|(p, v)| {
                if led.contains(&p) {
                    *v == (
                        -1,
                        LEADER_NOT_AVAILABLE,
                        vec![victim],
                        vec![victim],
                        vec![victim],
                    )
                } else {
                    *v == before[p]
                }
            })
    });
    println!(
        "fencing: the killed broker's partitions were shown offline {} ms after SIGKILL (session timeout 2000 ms)",
        killed_at.elapsed().as_millis()
    );
    // DescribeTopicPartitions (what Kafka 3.7+ admin tools use) says the same.
    let mut conn = KafkaConn::connect(survivors[0].addr());
    let described: DescribeTopicPartitionsResponse = conn.request(
        0,
        &DescribeTopicPartitionsRequest::default()
            .with_topics(vec![TopicRequest::default().with_name(topic_name(&topic))])
            .with_response_partition_limit(2000),
    );
    let t = &described.topics[0];
    assert_eq!(t.error_code, error_code::NONE);
    assert_eq!(t.partitions.len(), 6);
    for p in &t.partitions {
        let offline: Vec<i32> = p.offline_replicas.iter().map(|b| b.0).collect();
        if led.contains(&(p.partition_index as usize)) {
            assert_eq!((p.leader_id.0, offline), (-1, vec![victim]), "{p:?}");
        } else {
            assert_eq!(p.leader_id.0, before[p.partition_index as usize].0);
            assert!(offline.is_empty(), "{p:?}");
        }
    }

    // AlterPartition reaches the controller over the controller listener: from a broker
    // epoch that is not the registered one the whole request is refused; a voter that
    // does not control names the one that does.
    let topic_id = topic_view(&metadata(survivors[0].addr()), &topic)
        .expect("the topic")
        .0;
    let alter = |port: u16| {
        let request = encode_frame(&Frame::new(
            9,
            Body::AlterPartitionRequest(AlterPartitionRequest {
                version: 3,
                broker_id: controller,
                broker_epoch: -5,
                topics: vec![AlterPartitionTopic {
                    topic: TopicRef::Id(topic_id.as_u128()),
                    partitions: vec![AlterPartitionData {
                        partition: 0,
                        leader_epoch: 0,
                        new_isr: vec![IsrMember {
                            broker_id: controller,
                            broker_epoch: -1,
                        }],
                        leader_recovery_state: 0,
                        partition_epoch: 0,
                    }],
                }],
            }),
        ))
        .expect("encode");
        controller_answer(port, &request)
    };
    let answer = alter(controller_ports[(controller - 1) as usize]);
    assert!(
        matches!(&answer.body, Body::ErrorResponse(e) if e.kind == ErrorKind::StaleBrokerEpoch),
        "{answer:?}"
    );
    let other = (1..=3)
        .find(|n| *n != controller && *n != victim)
        .expect("a third node");
    let answer = alter(controller_ports[(other - 1) as usize]);
    assert!(
        matches!(&answer.body, Body::NotController(n) if n.leader_id == controller),
        "{answer:?}"
    );

    // It comes back, catches up and is unfenced: its partitions are led by it again.
    nodes[(victim - 1) as usize].restart();
    let all: Vec<&Broker> = nodes.iter().collect();
    wait_for_metadata(&all, "the broker back, leading its partitions", |md| {
        let parts = partition_views(md, &topic);
        md.brokers.iter().any(|b| b.node_id.0 == victim)
            && parts.len() == 6
            && led.iter().all(|p| {
                parts[*p].0 == victim && parts[*p].1 == error_code::NONE && parts[*p].4.is_empty()
            })
    });
    for n in &nodes {
        n.assert_no_panic();
    }
}

/// The output of `wharf cluster status --bootstrap ADDR`, which must succeed.
fn cluster_status(bootstrap: &str) -> String {
    let out = std::process::Command::new(common::wharf_bin())
        .args(["cluster", "status", "--bootstrap", bootstrap])
        .output()
        .expect("run wharf cluster status");
    assert!(
        out.status.success(),
        "wharf cluster status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn bootstrap_of(nodes: &[Broker]) -> String {
    nodes
        .iter()
        .map(|n| n.bootstrap())
        .collect::<Vec<_>>()
        .join(",")
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

fn init_producer_id(addr: SocketAddr) -> i64 {
    let mut conn = KafkaConn::connect(addr);
    let resp = conn.request(
        1,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000),
    );
    assert_eq!(resp.error_code, 0);
    resp.producer_id.0
}

#[test]
fn a_one_node_cluster_replays_its_metadata_log_after_sigkill() {
    let mut broker = Broker::start();
    let topic = unique_topic("replayed");
    let mut conn = KafkaConn::connect(broker.addr());
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(&topic))
            .with_num_partitions(3)
            .with_replication_factor(1)
            .with_configs(vec![CreatableTopicConfig::default()
                .with_name(s("retention.ms"))
                .with_value(Some(s("3600000")))])]);
    assert_eq!(conn.request(5, &req).topics[0].error_code, 0);
    let before = metadata(broker.addr());
    let first_id = init_producer_id(broker.addr());
    produce_everywhere(&broker.bootstrap(), &topic, 3, 4);

    broker.kill();
    broker.restart();
    let after = metadata(broker.addr());
    assert_eq!(before.cluster_id, after.cluster_id);
    assert_eq!(topic_view(&before, &topic), topic_view(&after, &topic));
    assert_eq!(
        topic_config(&broker.bootstrap(), &topic, "retention.ms").as_deref(),
        Some("3600000")
    );
    assert_eq!(
        record_counts(&broker.bootstrap(), &topic),
        (0..3).map(|p| (p, 4)).collect()
    );
    assert!(
        init_producer_id(broker.addr()) > first_id,
        "producer ids are never handed out twice"
    );
    let dir = broker.data_dir();
    assert!(dir.join("__cluster_metadata-0/metadata.log").is_file());
    assert!(!dir.join("wharf-metadata.toml").exists());
    broker.assert_no_panic();
}

/// The metadata file exactly as wharf wrote it before clusters (format version 1).
fn legacy_metadata_file(cluster_id: &str, topic: &str, id: &str) -> String {
    format!(
        "format_version = 1\ncluster_id = \"{cluster_id}\"\nnext_producer_id = 7000\n\n\
         [[topics]]\nname = \"{topic}\"\nid = \"{id}\"\npartitions = 2\ninternal = false\n\n\
         [topics.configs]\n\"retention.ms\" = \"123456\"\n"
    )
}

#[test]
fn a_data_dir_from_before_clusters_is_taken_over_with_its_ids_configs_and_producer_ids() {
    // Partition directories with records, as an older wharf left them: written by this
    // wharf, then its metadata log removed and the older metadata file put in its place.
    let mut broker = Broker::start();
    let topic = unique_topic("legacy");
    client::create_topic(&broker.bootstrap(), &topic, 2, &[]);
    produce_everywhere(&broker.bootstrap(), &topic, 2, 5);
    broker.terminate();
    let dir = broker.data_dir();
    std::fs::remove_dir_all(dir.join("__cluster_metadata-0")).expect("remove the log");
    let id = "5b3c1f0e-8a7d-4c2b-9e61-0d4f2a9b7c31";
    let cluster_id = "LegacyClusterIdAAAAAAA";
    std::fs::write(
        dir.join("wharf-metadata.toml"),
        legacy_metadata_file(cluster_id, &topic, id),
    )
    .expect("write the old metadata file");

    broker.restart();
    let md = metadata(broker.addr());
    assert_eq!(md.cluster_id.as_ref().map(|c| c.as_str()), Some(cluster_id));
    let (topic_id, partitions) = topic_view(&md, &topic).expect("the old topic");
    assert_eq!(topic_id.to_string(), id, "the topic keeps its id");
    assert_eq!(partitions, vec![(1, vec![1]), (1, vec![1])]);
    assert_eq!(
        topic_config(&broker.bootstrap(), &topic, "retention.ms").as_deref(),
        Some("123456")
    );
    assert_eq!(
        record_counts(&broker.bootstrap(), &topic),
        (0..2).map(|p| (p, 5)).collect()
    );
    assert!(init_producer_id(broker.addr()) >= 7000);
    assert!(!dir.join("wharf-metadata.toml").exists());
    assert!(dir.join("wharf-metadata.toml.migrated").is_file());

    // From now on the metadata log is what counts.
    broker.kill();
    broker.restart();
    let again = metadata(broker.addr());
    assert_eq!(again.cluster_id, md.cluster_id);
    assert_eq!(
        topic_view(&again, &topic).map(|v| v.0.to_string()),
        Some(id.to_string())
    );
    broker.assert_no_panic();
}

#[test]
fn partition_directories_without_any_metadata_become_topics() {
    let mut broker = Broker::start();
    let topic = unique_topic("dirs-only");
    client::create_topic(&broker.bootstrap(), &topic, 3, &[]);
    produce_everywhere(&broker.bootstrap(), &topic, 3, 2);
    broker.terminate();
    std::fs::remove_dir_all(broker.data_dir().join("__cluster_metadata-0")).expect("remove");
    broker.restart();
    assert_eq!(
        record_counts(&broker.bootstrap(), &topic),
        (0..3).map(|p| (p, 2)).collect()
    );
    broker.assert_no_panic();
}

#[test]
fn a_metadata_log_started_with_other_voters_is_refused_with_one_line() {
    let mut broker = Broker::start();
    broker.terminate();
    let ports = free_ports(2);
    let voters = format!("1@127.0.0.1:{},2@127.0.0.1:{}", ports[0], ports[1]);
    let data_dir = broker.data_dir();
    let data_dir = data_dir.to_str().expect("utf-8 path");
    let run = common::run_wharf_to_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir,
            "--controller-quorum-voters",
            &voters,
        ],
        &std::env::temp_dir(),
    );
    assert!(!run.status.success());
    assert!(
        run.stderr
            .contains("changing the voter set is not supported"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_damaged_frame_in_the_middle_of_the_metadata_log_is_refused_with_one_line_not_cut() {
    let mut broker = Broker::start();
    client::create_topic(&broker.bootstrap(), &unique_topic("rot"), 1, &[]);
    broker.terminate();
    let dir = broker.data_dir();
    let log_path = dir.join("__cluster_metadata-0/metadata.log");
    let log = std::fs::read(&log_path).expect("read the log");
    // Bit rot in the first frame (the start frame, after the 6-byte header), which was
    // synced long before the topic was created: many frames follow it.
    let mut damaged = log.clone();
    damaged[20] ^= 0x08;
    std::fs::write(&log_path, &damaged).expect("damage the log");
    let data_dir = dir.to_str().expect("utf-8 path");
    let run = common::run_wharf_to_exit(
        &["--listen", "127.0.0.1:0", "--data-dir", data_dir],
        &std::env::temp_dir(),
    );
    assert!(!run.status.success());
    let line = run.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.starts_with("wharf: cannot use the metadata log in ")
            && line.contains("__cluster_metadata-0: metadata.log is damaged at byte 6:")
            && line.contains("so it is not cut; this node is the only voter")
            && line.contains("restore "),
        "{line}"
    );
    // Nothing was cut: the file is as it was left, and mended, the node starts again.
    assert_eq!(std::fs::read(&log_path).expect("read the log"), damaged);
    std::fs::write(&log_path, &log).expect("mend the log");
    broker.restart();
    broker.assert_no_panic();
}

#[test]
fn a_voter_with_a_damaged_metadata_log_is_refused_with_one_line_and_the_others_go_on() {
    let (mut nodes, ports) = start_cluster(3);
    let topic = unique_topic("rot3");
    assert_eq!(create_topic(nodes[0].addr(), &topic, 3), error_code::NONE);
    let all: Vec<&Broker> = nodes.iter().collect();
    wait_for_metadata(&all, "the topic on every node", |md| {
        topic_view(md, &topic).is_some()
    });
    let third = &mut nodes[2];
    third.terminate();
    let dir = third.data_dir();
    let log_path = dir.join("__cluster_metadata-0/metadata.log");
    let mut log = std::fs::read(&log_path).expect("read the log");
    log[20] ^= 0x08; // in the start frame, synced before everything after it
    std::fs::write(&log_path, &log).expect("damage the log");
    let voters = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let data_dir = dir.to_str().expect("utf-8 path").to_string();
    let run = common::run_wharf_to_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_dir,
            "--node-id",
            "3",
            "--controller-quorum-voters",
            &voters,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &std::env::temp_dir(),
    );
    assert!(!run.status.success());
    let line = run.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains("metadata.log is damaged at byte 6:")
            && line.contains("so it is not cut; the other voters go on without this one")
            && line.contains("Wharf cannot rebuild a voter's metadata log from them")
            && !line.contains("empty data directory"),
        "{line}"
    );
    assert_eq!(
        std::fs::read(&log_path).expect("read the log"),
        log,
        "nothing was cut"
    );

    // The other two voters are a majority and go on without it.
    let later = unique_topic("rot3-later");
    assert_eq!(create_topic(nodes[0].addr(), &later, 1), error_code::NONE);
    wait_for_metadata(&[&nodes[0], &nodes[1]], "the later topic", |md| {
        topic_view(md, &later).is_some()
    });
    nodes[0].assert_no_panic();
    nodes[1].assert_no_panic();
}

#[test]
fn a_heartbeat_committing_past_a_voters_log_is_refused_and_the_voter_stays_out_until_restarted() {
    // What a voter whose metadata log was wiped hears from the leader that remembers what
    // it acknowledged, and what a node of another cluster at its address may send: raft-rs
    // panics stepping it. The voter refuses it, says why and takes no part in the quorum
    // until it is restarted; the other two go on.
    let (mut nodes, ports) = start_cluster(3);
    let topic = unique_topic("commit-past");
    assert_eq!(create_topic(nodes[0].addr(), &topic, 1), error_code::NONE);
    let all: Vec<&Broker> = nodes.iter().collect();
    wait_for_metadata(&all, "the topic on every node", |md| {
        topic_view(md, &topic).is_some()
    });
    let leader = agreed_quorum_leader(&nodes) as usize;
    let v = (0..3).find(|i| i + 1 != leader).expect("a follower");
    // Any term at or above the voter's (an election meanwhile must not make it stale).
    let term = describe_quorum(nodes[v].addr(), 2).1.leader_epoch as u64 + 1_000;
    let heartbeat = encode_frame(&Frame::new(
        0,
        Body::Raft(RaftMessage {
            msg_type: 8,
            from: leader as u64,
            to: v as u64 + 1,
            term,
            commit: 1_000_000,
            ..RaftMessage::default()
        }),
    ))
    .expect("encode");
    let mut conn = TcpStream::connect(("127.0.0.1", ports[v])).expect("connect");
    conn.write_all(&heartbeat).expect("send");
    let deadline = Instant::now() + Duration::from_secs(30);
    let said = "says entries up to 1000000 of the metadata log are committed here";
    while !nodes[v].stderr().contains(said) {
        nodes[v].assert_no_panic();
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            nodes[v].stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    nodes[v].assert_no_panic();
    assert!(nodes[v].is_running(), "{}", nodes[v].stderr());

    // The other two go on; the refusing voter no longer follows the log, and its broker
    // is fenced (it asks to be), so it leads nothing on its stale image.
    let later = unique_topic("commit-past-later");
    let others: Vec<&Broker> = (0..3).filter(|i| *i != v).map(|i| &nodes[i]).collect();
    let id = v as i32 + 1;
    let fenced = |fenced: bool| {
        let deadline = Instant::now() + FAILOVER_GUARD;
        loop {
            let brokers = listed_brokers(&describe_cluster_v2(others[0].addr(), 1, true));
            if brokers.contains(&(id, fenced)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} fenced={fenced}? {brokers:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    fenced(true);
    assert_eq!(create_topic(others[0].addr(), &later, 1), error_code::NONE);
    wait_for_metadata(&others, "the later topic", |md| {
        topic_view(md, &later).is_some()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        topic_view(&metadata(nodes[v].addr()), &later).is_none(),
        "the refusing voter still follows the log"
    );
    // Restarted (its log is whole), it catches up and is unfenced.
    drop(others);
    nodes[v].restart();
    wait_for_metadata(&[&nodes[v]], "the later topic after a restart", |md| {
        topic_view(md, &later).is_some()
    });
    let others: Vec<&Broker> = (0..3).filter(|i| *i != v).map(|i| &nodes[i]).collect();
    let deadline = Instant::now() + FAILOVER_GUARD;
    while !listed_brokers(&describe_cluster_v2(others[0].addr(), 1, true)).contains(&(id, false)) {
        assert!(Instant::now() < deadline, "node {id} never unfenced");
        std::thread::sleep(Duration::from_millis(100));
    }
    for n in &nodes {
        n.assert_no_panic();
    }
}

#[test]
fn a_node_that_is_not_a_voter_but_has_a_controller_listener_is_refused_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let run = common::run_wharf_to_exit(
        &[
            "--node-id",
            "4",
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
            "--controller-quorum-voters",
            "1@127.0.0.1:19301,2@127.0.0.1:19302,3@127.0.0.1:19303",
            "--controller-listen",
            "127.0.0.1:19304",
        ],
        dir.path(),
    );
    assert!(!run.status.success());
    let line = run.stderr.trim();
    assert!(
        line.starts_with("wharf: node.id 4 is not among controller.quorum.voters (1, 2, 3)")
            && !line.contains('\n'),
        "{line}"
    );
}

/// Metadata changes after which a voter has certainly snapshotted its log and dropped the
/// entries before the snapshot (it does so every 1000 entries, keeping the last 500).
const SNAPSHOT_FORCING_CHANGES: i64 = 1_100;

/// IncrementalAlterConfigs: sets a topic's `retention.ms`; the resource's error code.
fn set_retention_ms(conn: &mut KafkaConn, topic: &str, ms: i64) -> i16 {
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    use kafka_protocol::messages::IncrementalAlterConfigsRequest;
    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(s(topic))
            .with_configs(vec![AlterableConfig::default()
                .with_name(s("retention.ms"))
                .with_config_operation(0)
                .with_value(Some(s(&ms.to_string())))]),
    ]);
    conn.request(0, &req).responses[0].error_code
}

/// DescribeConfigs to one node: a topic's `retention.ms` as that node serves it.
fn retention_ms_on(addr: SocketAddr, topic: &str) -> Option<String> {
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::DescribeConfigsRequest;
    let mut conn = KafkaConn::connect(addr);
    let req =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(s(topic))
            .with_configuration_keys(Some(vec![s("retention.ms")]))]);
    let resp = conn.request(1, &req);
    let result = resp.results.first()?;
    assert_eq!(result.error_code, 0, "DescribeConfigs of {topic}");
    result
        .configs
        .iter()
        .find(|c| c.name.as_str() == "retention.ms")
        .and_then(|c| c.value.as_ref().map(|v| v.to_string()))
}

/// Every node's view of `topic` once they all agree (bounded wait).
fn agreed_view(nodes: &[&Broker], topic: &str) -> TopicView {
    let deadline = Instant::now() + FAILOVER_GUARD;
    loop {
        let views: Vec<Option<TopicView>> = nodes
            .iter()
            .map(|n| topic_view(&metadata(n.addr()), topic))
            .collect();
        if let Some(Some(first)) = views.first() {
            if views.iter().all(|v| v.as_ref() == Some(first)) {
                return first.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the nodes never agreed on {topic}: {views:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_broker_only_node_follows_the_quorum_hosts_partitions_and_catches_up_after_sigkill() {
    // Three voters and node 4, a broker only: not in controller.quorum.voters, no
    // controller listener, following the metadata log with FetchMetadata.
    let (mut nodes, _) = start_cluster_with_brokers(3, 1);
    let broker = 3;
    {
        let all: Vec<&Broker> = nodes.iter().collect();
        wait_for_metadata(&all, "every node lists the four brokers", |md| {
            md.brokers.len() == 4
        });
    }

    // A topic created through the broker-only node (forwarded to the active controller)
    // appears on every node with one id; placement spreads its leaders onto node 4 too.
    let spread = unique_topic("via-broker");
    assert_eq!(
        create_topic(nodes[broker].addr(), &spread, 8),
        error_code::NONE
    );
    let (_, partitions) = topic_view(&metadata(nodes[broker].addr()), &spread)
        .expect("the broker-only node serves the topic it created at once");
    let view = agreed_view(&nodes.iter().collect::<Vec<_>>(), &spread);
    assert_eq!(view.1, partitions);
    for node in 1..=4 {
        assert_eq!(
            partitions.iter().filter(|(l, _)| *l == node).count(),
            2,
            "leaders spread evenly over the four brokers: {partitions:?}"
        );
    }

    // Real clients produce to and consume from every partition, node 4's included.
    let bootstrap = bootstrap_of(&nodes);
    produce_everywhere(&bootstrap, &spread, 8, 5);
    assert_eq!(
        record_counts(&bootstrap, &spread),
        (0..8).map(|p| (p, 5)).collect()
    );

    // `wharf cluster status` through the broker-only node: node 4 is a broker (not a
    // controller), serving, and the quorum leader knows how far its log goes.
    let status = cluster_status(&nodes[broker].bootstrap());
    let row = status
        .lines()
        .find(|l| l.starts_with("4 "))
        .unwrap_or_else(|| panic!("node 4 listed: {status}"));
    assert!(
        row.contains("broker") && !row.contains("controller") && row.contains("serving"),
        "{status}"
    );
    assert!(
        row.split_whitespace()
            .last()
            .is_some_and(|lag| lag.parse::<i64>().is_ok()),
        "node 4's lag is known: {status}"
    );

    // kill -9 the active controller: the broker-only node finds the new one, and a
    // metadata change through it works again.
    let controller = metadata(nodes[broker].addr()).controller_id.0;
    assert!(
        (1..=3).contains(&controller),
        "a voter controls: {controller}"
    );
    let dead = (controller - 1) as usize;
    nodes[dead].kill();
    let killed_at = Instant::now();
    let failover = unique_topic("via-broker-after-failover");
    loop {
        let code = create_topic(nodes[broker].addr(), &failover, 2);
        if code == error_code::NONE || code == TOPIC_ALREADY_EXISTS {
            break;
        }
        assert!(
            killed_at.elapsed() < FAILOVER_GUARD,
            "no metadata change through the broker-only node {FAILOVER_GUARD:?} after the controller was killed (last error {code})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "failover: CreateTopics through the broker-only node accepted {} ms after the active controller (node {controller}) was killed",
        killed_at.elapsed().as_millis()
    );
    let new_controller = metadata(nodes[broker].addr()).controller_id.0;
    assert!(
        new_controller != controller && (1..=3).contains(&new_controller),
        "a new controller: {new_controller}"
    );
    assert!(topic_view(&metadata(nodes[broker].addr()), &failover).is_some());
    // The killed voter comes back, and its partitions with it.
    nodes[dead].restart();

    // SIGKILL the broker-only node; a topic is created while it is down, and changed so
    // often that the controller snapshots its log and drops the entries before the
    // snapshot. The broker comes back (serving only once unfenced): it starts from the
    // snapshot, has caught up, and leads its partitions again.
    nodes[broker].kill();
    let while_down = unique_topic("while-broker-down");
    assert_eq!(
        create_topic(nodes[dead].addr(), &while_down, 1),
        error_code::NONE
    );
    let active = metadata(nodes[dead].addr()).controller_id.0;
    assert!((1..=3).contains(&active), "a controller: {active}");
    let active_addr = nodes[(active - 1) as usize].addr();
    let changing: Vec<_> = (0..4)
        .map(|t| {
            let topic = while_down.clone();
            std::thread::spawn(move || {
                let mut conn = KafkaConn::connect(active_addr);
                for i in 0..SNAPSHOT_FORCING_CHANGES / 4 {
                    let code = set_retention_ms(&mut conn, &topic, 1_000_000 + t * 10_000 + i);
                    assert_eq!(code, error_code::NONE, "a config change");
                }
            })
        })
        .collect();
    for t in changing {
        t.join().expect("config changes");
    }
    let mut conn = KafkaConn::connect(active_addr);
    assert_eq!(
        set_retention_ms(&mut conn, &while_down, 7_777_777),
        error_code::NONE
    );
    nodes[broker].restart();
    assert!(
        nodes[broker]
            .stderr()
            .contains("loaded the controller's metadata snapshot"),
        "the restarted broker-only node started from the controller's snapshot"
    );
    assert_eq!(
        retention_ms_on(nodes[broker].addr(), &while_down).as_deref(),
        Some("7777777"),
        "the broker-only node has the last change"
    );
    let expected = topic_view(&metadata(nodes[dead].addr()), &while_down).expect("created");
    let all: Vec<&Broker> = nodes.iter().collect();
    wait_for_metadata(
        &all,
        "the topic created meanwhile and every leader back",
        |md| {
            topic_view(md, &while_down).is_some_and(|v| v.0 == expected.0)
                && topic_view(md, &spread).is_some_and(|(_, parts)| {
                    parts.iter().all(|(leader, _)| *leader > 0)
                        && parts.iter().filter(|(leader, _)| *leader == 4).count() == 2
                })
        },
    );
    assert_eq!(
        record_counts(&bootstrap_of(&nodes), &spread),
        (0..8).map(|p| (p, 5)).collect(),
        "every record is still there, node 4's partitions included"
    );
    for n in &nodes {
        n.assert_no_panic();
    }
}

/// A stand-in for a voter that answers the first FetchMetadata of every connection with
/// `answer` and counts the connections the other side then closed. Runs until the test ends.
fn misbehaving_voter(answer: Vec<u8>) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a fake voter");
    let port = listener.local_addr().expect("local addr").port();
    let closed = Arc::new(AtomicUsize::new(0));
    let counter = closed.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (answer, counter) = (answer.clone(), counter.clone());
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                // Requests other than FetchMetadata (the registration) go unanswered.
                loop {
                    let mut len = [0u8; 4];
                    if stream.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
                    if stream.read_exact(&mut frame).is_err() {
                        return;
                    }
                    let fetch = decode_frame(&Bytes::from(frame))
                        .is_ok_and(|f| matches!(f.body, Body::FetchMetadataRequest(_)));
                    if fetch {
                        break;
                    }
                }
                if stream.write_all(&answer).is_err() {
                    return;
                }
                // The broker must close the connection now; whatever else it sent before
                // seeing the answer is read and dropped.
                let mut sink = [0u8; 4096];
                loop {
                    match stream.read(&mut sink) {
                        Ok(0) => {
                            counter.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(_) => continue,
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::ConnectionReset
                                    | std::io::ErrorKind::BrokenPipe
                            ) =>
                        {
                            counter.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Err(_) => return,
                    }
                }
            });
        }
    });
    (port, closed)
}

#[test]
fn a_broker_only_node_drops_a_voter_that_answers_garbage_and_tries_the_others() {
    use std::sync::atomic::Ordering;
    // Voter 1 answers with an oversized length, voter 2 with bytes that are no frame.
    let (oversized_port, oversized_closed) = misbehaving_voter(vec![0x7f, 0xff, 0xff, 0xff, 1]);
    let mut garbage = vec![0, 0, 0, 16];
    garbage.extend_from_slice(&[0xAB; 16]);
    let (garbage_port, garbage_closed) = misbehaving_voter(garbage);
    let dir = tempfile::tempdir().expect("tempdir");
    let stderr_path = dir.path().join("stderr");
    let voters = format!("1@127.0.0.1:{oversized_port},2@127.0.0.1:{garbage_port}");
    let mut child = std::process::Command::new(common::wharf_bin())
        .args([
            "--node-id",
            "3",
            "--shards",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().join("data").to_str().expect("utf-8 path"),
            "--controller-quorum-voters",
            &voters,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("start wharf");
    // Each voter gets the broker back after its connection was closed: it keeps trying
    // both, and stays up.
    let deadline = Instant::now() + FAILOVER_GUARD;
    while oversized_closed.load(Ordering::SeqCst) < 2 || garbage_closed.load(Ordering::SeqCst) < 2 {
        let running = child.try_wait().expect("try_wait").is_none();
        assert!(
            running && Instant::now() < deadline,
            "the broker did not keep closing bad connections and trying again (running: {running}); stderr:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_voters_data_dir_is_refused_to_a_broker_only_node_with_one_line() {
    // A one-node cluster's data dir (node 1, a voter), started again as node 2, a broker
    // only: the voter set would change under the log it holds.
    let mut broker = Broker::start();
    broker.terminate();
    let ports = free_ports(1);
    let voters = format!("1@127.0.0.1:{}", ports[0]);
    let data_dir = broker.data_dir();
    let run = common::run_wharf_to_exit(
        &[
            "--node-id",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
            "--controller-quorum-voters",
            &voters,
        ],
        &std::env::temp_dir(),
    );
    assert!(!run.status.success());
    let line = run.stderr.trim();
    assert!(
        line.contains("holds the metadata log of a voter")
            && line.contains("changing the voter set is not supported")
            && !line.contains('\n'),
        "{line}"
    );
}

/// DescribeQuorum for `__cluster_metadata-0`, asked of `addr`: the top-level error and the
/// partition's answer.
fn describe_quorum(
    addr: SocketAddr,
    version: i16,
) -> (
    i16,
    kafka_protocol::messages::describe_quorum_response::PartitionData,
    Vec<i32>,
) {
    use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
    let request = DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
        .with_topic_name(topic_name("__cluster_metadata"))
        .with_partitions(vec![PartitionData::default().with_partition_index(0)])]);
    let mut conn = KafkaConn::connect(addr);
    let response: DescribeQuorumResponse = conn.request(version, &request);
    assert_eq!(response.topics.len(), 1, "{response:?}");
    assert_eq!(response.topics[0].partitions.len(), 1, "{response:?}");
    let nodes = response.nodes.iter().map(|n| n.node_id.0).collect();
    (
        response.error_code,
        response.topics[0].partitions[0].clone(),
        nodes,
    )
}

/// DescribeCluster v2 asked of `addr`: each listed broker's id and whether it is fenced.
fn describe_cluster_v2(
    addr: SocketAddr,
    endpoint_type: i8,
    include_fenced_brokers: bool,
) -> DescribeClusterResponse {
    let mut conn = KafkaConn::connect(addr);
    conn.request(
        2,
        &DescribeClusterRequest::default()
            .with_endpoint_type(endpoint_type)
            .with_include_fenced_brokers(include_fenced_brokers),
    )
}

fn listed_brokers(response: &DescribeClusterResponse) -> Vec<(i32, bool)> {
    response
        .brokers
        .iter()
        .map(|b| (b.broker_id.0, b.is_fenced))
        .collect()
}

#[test]
fn every_node_answers_describe_quorum_with_the_leaders_view_and_describe_cluster_lists_fenced_brokers(
) {
    // Three voters and node 4, a broker only; short sessions, so a killed node is fenced
    // within seconds.
    let settings = "broker.session.timeout.ms = 2000\nbroker.heartbeat.interval.ms = 500\n";
    let (mut nodes, _) = start_cluster_with_brokers_and(3, 1, settings);
    {
        let all: Vec<&Broker> = nodes.iter().collect();
        wait_for_metadata(&all, "every node lists the four brokers", |md| {
            md.brokers.len() == 4 && md.controller_id.0 > 0
        });
    }
    let leader = metadata(nodes[0].addr()).controller_id.0;
    assert!((1..=3).contains(&leader), "a voter leads: {leader}");

    // Asked of the leader, of each voter that does not lead and of the broker-only node:
    // the same leader, the three voters with their progress, node 4 among the observers
    // (once it has fetched from the leader). Before forwarding, all but the leader
    // answered NOT_LEADER_OR_FOLLOWER.
    let deadline = Instant::now() + FAILOVER_GUARD;
    for (i, node) in nodes.iter().enumerate() {
        loop {
            let (top, p, listed_nodes) = describe_quorum(node.addr(), 2);
            let mut voters: Vec<i32> = p.current_voters.iter().map(|v| v.replica_id.0).collect();
            voters.sort_unstable();
            let observers: Vec<i32> = p.observers.iter().map(|o| o.replica_id.0).collect();
            let answered = top == error_code::NONE
                && p.error_code == error_code::NONE
                && p.leader_id.0 == leader
                && voters == [1, 2, 3]
                && observers == [4];
            if answered {
                assert!(p.leader_epoch > 0, "the leader's term: {p:?}");
                assert!(p.high_watermark > 0, "{p:?}");
                assert!(
                    p.current_voters
                        .iter()
                        .chain(p.observers.iter())
                        .all(|r| r.log_end_offset <= p.high_watermark
                            && r.last_fetch_timestamp > 0),
                    "every node's progress as the leader knows it: {p:?}"
                );
                assert_eq!(listed_nodes, [1, 2, 3], "v2 lists the voters' endpoints");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} never answered DescribeQuorum with the leader's view: top-level error {top}, {p:?}",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // v0 (no timestamps, no nodes) from the broker-only node too.
    let (top, p, _) = describe_quorum(nodes[3].addr(), 0);
    assert_eq!((top, p.error_code, p.leader_id.0), (0, 0, leader), "{p:?}");
    assert_eq!(p.current_voters.len(), 3);

    // DescribeCluster v2: a broker endpoint refuses a request for controllers, as Kafka's
    // brokers do; with every broker serving, none is fenced.
    let refused = describe_cluster_v2(nodes[3].addr(), 2, false);
    assert_eq!(
        refused.error_code,
        kafka_protocol::ResponseError::MismatchedEndpointType.code()
    );
    assert!(refused.brokers.is_empty());
    let unknown = describe_cluster_v2(nodes[3].addr(), 9, false);
    assert_eq!(
        unknown.error_code,
        kafka_protocol::ResponseError::UnsupportedEndpointType.code()
    );
    let all = describe_cluster_v2(nodes[3].addr(), 1, true);
    assert_eq!(all.error_code, error_code::NONE);
    assert_eq!(all.controller_id.0, leader);
    assert_eq!(
        listed_brokers(&all),
        [(1, false), (2, false), (3, false), (4, false)]
    );

    // kill -9 a voter that does not lead: once fenced, DescribeCluster v2 lists it as
    // fenced when asked to and not otherwise (nor in v1); DescribeQuorum through the
    // broker-only node still gives the leader's view, the dead voter still a voter.
    let victim = (1..=3).find(|n| *n != leader).expect("a follower");
    nodes[(victim - 1) as usize].kill();
    let deadline = Instant::now() + FAILOVER_GUARD;
    loop {
        let with_fenced = describe_cluster_v2(nodes[3].addr(), 1, true);
        let mut expected: Vec<(i32, bool)> = (1..=4).map(|n| (n, n == victim)).collect();
        expected.sort_unstable();
        if with_fenced.error_code == error_code::NONE && listed_brokers(&with_fenced) == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {victim} was never listed as fenced: {with_fenced:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let serving = describe_cluster_v2(nodes[3].addr(), 1, false);
    assert!(
        !listed_brokers(&serving).iter().any(|(n, _)| *n == victim),
        "{serving:?}"
    );
    let mut conn = KafkaConn::connect(nodes[3].addr());
    let v1: DescribeClusterResponse = conn.request(1, &DescribeClusterRequest::default());
    assert!(
        !v1.brokers.iter().any(|b| b.broker_id.0 == victim),
        "{v1:?}"
    );
    let (top, p, _) = describe_quorum(nodes[3].addr(), 2);
    assert_eq!((top, p.error_code, p.leader_id.0), (0, 0, leader), "{p:?}");
    assert!(p.current_voters.iter().any(|v| v.replica_id.0 == victim));

    // With the leader killed too, the last voter cannot be elected: no node leads the
    // quorum. The broker-only node answers NOT_LEADER_OR_FOLLOWER in bounded time rather
    // than waiting for a leader.
    nodes[(leader - 1) as usize].kill();
    let asked_at = Instant::now();
    let deadline = asked_at + FAILOVER_GUARD;
    loop {
        let (top, p, _) = describe_quorum(nodes[3].addr(), 2);
        assert_eq!(top, error_code::NONE);
        if p.error_code == NOT_LEADER_OR_FOLLOWER {
            assert!(p.current_voters.is_empty(), "{p:?}");
            break;
        }
        // Only a live leader gives its view, and none is left.
        assert!(
            Instant::now() < deadline,
            "DescribeQuorum still answered as if a leader were there: {p:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let survivor = (1..=3)
        .find(|n| *n != leader && *n != victim)
        .expect("the last voter");
    let (top, p, _) = describe_quorum(nodes[(survivor - 1) as usize].addr(), 2);
    assert_eq!((top, p.error_code), (0, NOT_LEADER_OR_FOLLOWER), "{p:?}");
    for n in [&nodes[3], &nodes[(survivor - 1) as usize]] {
        n.assert_no_panic();
    }
}

/// A voter's controller listener, as a Kafka client reaches it.
fn controller_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// DescribeCluster at `version` asking for `endpoint_type`, sent on `conn`.
fn describe_cluster_on(
    conn: &mut KafkaConn,
    version: i16,
    endpoint_type: i8,
) -> DescribeClusterResponse {
    conn.request(
        version,
        &DescribeClusterRequest::default().with_endpoint_type(endpoint_type),
    )
}

/// The quorum leader the voters agree on, as the client listeners' DescribeQuorum gives it
/// (bounded wait for every voter to report the same one).
fn agreed_quorum_leader(nodes: &[Broker]) -> i32 {
    let deadline = Instant::now() + FAILOVER_GUARD;
    loop {
        let leaders: Vec<i32> = nodes
            .iter()
            .map(|n| describe_quorum(n.addr(), 2).1.leader_id.0)
            .collect();
        if leaders[0] > 0 && leaders.iter().all(|l| *l == leaders[0]) {
            return leaders[0];
        }
        assert!(
            Instant::now() < deadline,
            "the voters never agreed on a leader: {leaders:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kafka_clients_are_served_on_every_voters_controller_listener() {
    let (nodes, ports) = start_cluster(3);
    {
        let all: Vec<&Broker> = nodes.iter().collect();
        wait_for_metadata(&all, "every node lists the three brokers", |md| {
            md.brokers.len() == 3 && md.controller_id.0 > 0
        });
    }
    let leader = agreed_quorum_leader(&nodes);
    let mut client_side = KafkaConn::connect(nodes[0].addr());
    let brokers_view = describe_cluster_on(&mut client_side, 2, 1);
    assert_eq!(brokers_view.error_code, error_code::NONE);
    assert_eq!(brokers_view.controller_id.0, leader);
    let cluster_id = brokers_view.cluster_id.to_string();
    assert!(!cluster_id.is_empty());
    let controllers: Vec<(i32, String, i32)> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| (i as i32 + 1, "127.0.0.1".to_string(), i32::from(*p)))
        .collect();

    // The active controller and each voter that is not: the same answers.
    for (i, port) in ports.iter().enumerate() {
        let node = i + 1;
        let mut conn = KafkaConn::connect(controller_addr(*port));

        // ApiVersions: only what the controller listener serves, newest version too.
        let served = conn.api_versions();
        let expected: std::collections::HashMap<i16, (i16, i16)> =
            [(18, (0, 4)), (60, (0, 2)), (55, (0, 2))]
                .into_iter()
                .collect();
        assert_eq!(served, expected, "node {node}");
        let v4 = conn.request(
            4,
            &kafka_protocol::messages::ApiVersionsRequest::default()
                .with_client_software_name(s("wharf-test"))
                .with_client_software_version(s("1")),
        );
        assert_eq!(v4.error_code, error_code::NONE);
        assert_eq!(v4.api_keys.len(), 3);

        // DescribeCluster for controllers, v1 and v2: the voters with their controller
        // listeners and the active controller, as the broker side names it.
        for version in [1, 2] {
            let r = describe_cluster_on(&mut conn, version, 2);
            assert_eq!(
                r.error_code,
                error_code::NONE,
                "node {node} v{version}: {r:?}"
            );
            assert_eq!(r.endpoint_type, 2);
            assert_eq!(r.cluster_id.to_string(), cluster_id);
            assert_eq!(r.controller_id.0, leader, "node {node} v{version}");
            let listed: Vec<(i32, String, i32)> = r
                .brokers
                .iter()
                .map(|b| (b.broker_id.0, b.host.to_string(), b.port))
                .collect();
            assert_eq!(listed, controllers, "node {node} v{version}");
            assert!(r.brokers.iter().all(|b| b.rack.is_none() && !b.is_fenced));
        }
        // For brokers: this is no broker endpoint. v0 cannot name a type, so it asks for
        // brokers: INVALID_REQUEST, as from Kafka's controllers.
        for version in [1, 2] {
            let r = describe_cluster_on(&mut conn, version, 1);
            assert_eq!(
                r.error_code,
                kafka_protocol::ResponseError::MismatchedEndpointType.code(),
                "node {node} v{version}"
            );
            assert!(r.brokers.is_empty());
        }
        let v0: DescribeClusterResponse = conn.request(0, &DescribeClusterRequest::default());
        assert_eq!(v0.error_code, error_code::INVALID_REQUEST);

        // DescribeQuorum: the leader's view, from every voter.
        let (top, p, listed_nodes) = describe_quorum(controller_addr(*port), 2);
        assert_eq!((top, p.error_code, p.leader_id.0), (0, 0, leader), "{p:?}");
        let mut voters: Vec<i32> = p.current_voters.iter().map(|v| v.replica_id.0).collect();
        voters.sort_unstable();
        assert_eq!(voters, [1, 2, 3]);
        assert_eq!(listed_nodes, [1, 2, 3]);
        let quorum: DescribeQuorumResponse = {
            use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
            conn.request(
                2,
                &DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
                    .with_topic_name(topic_name("__cluster_metadata"))
                    .with_partitions(vec![PartitionData::default().with_partition_index(0)])]),
            )
        };
        let endpoints: Vec<(i32, i32)> = quorum
            .nodes
            .iter()
            .map(|n| {
                (
                    n.node_id.0,
                    n.listeners.first().map_or(0, |l| i32::from(l.port)),
                )
            })
            .collect();
        assert_eq!(
            endpoints,
            controllers
                .iter()
                .map(|(id, _, p)| (*id, *p))
                .collect::<Vec<_>>()
        );

        // KIP-511: an ApiVersions newer than served gets a v0 answer with
        // UNSUPPORTED_VERSION, on the same connection.
        let mut newer = Vec::new();
        newer.extend_from_slice(&18i16.to_be_bytes());
        newer.extend_from_slice(&99i16.to_be_bytes());
        newer.extend_from_slice(&77i32.to_be_bytes());
        newer.extend_from_slice(&[0, 1, b'x', 0]);
        conn.write_frame(&newer).expect("send");
        let answer = conn.read_frame();
        assert_eq!(&answer[..4], &77i32.to_be_bytes());
        assert_eq!(
            &answer[4..6],
            &error_code::UNSUPPORTED_VERSION.to_be_bytes()
        );

        // An API the controller listener does not serve closes the connection, as a Kafka
        // controller's does.
        conn.send(12, &MetadataRequest::default().with_topics(None));
        conn.expect_closed();
        // So does a version past the served range (DescribeCluster v3: key, version,
        // correlation id, client id, no tagged fields).
        let mut conn = KafkaConn::connect(controller_addr(*port));
        conn.write_frame(&[0, 60, 0, 3, 0, 0, 0, 9, 0, 1, b'x', 0, 0, 0])
            .expect("send");
        conn.expect_closed();
    }

    // `wharf cluster status --bootstrap-controller` through a voter that does not lead:
    // the active controller, and the three voters on their controller listeners.
    let follower = (1..=3)
        .find(|n| *n != leader)
        .expect("a voter that does not lead");
    let controller = format!("127.0.0.1:{}", ports[(follower - 1) as usize]);
    let out = std::process::Command::new(common::wharf_bin())
        .args(["cluster", "status", "--bootstrap-controller", &controller])
        .output()
        .expect("run wharf cluster status");
    assert!(
        out.status.success(),
        "wharf cluster status --bootstrap-controller failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        status.contains(&format!("Cluster id:         {cluster_id}")),
        "{status}"
    );
    assert!(
        status.contains(&format!("Active controller:  node {leader}")),
        "{status}"
    );
    assert!(
        status.contains(&format!("Quorum leader:      node {leader}")),
        "{status}"
    );
    for (id, host, port) in &controllers {
        let line = status
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&id.to_string()))
            .unwrap_or_else(|| panic!("no line for node {id}: {status}"));
        assert!(line.contains("broker,controller"), "{line}");
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| *w == format!("{host}:{port}"))
            .unwrap_or_else(|| panic!("its controller listener: {line}"));
        assert_eq!(
            words.get(at + 1),
            Some(&"-"),
            "serving or not is unknown: {line}"
        );
    }
    for n in &nodes {
        n.assert_no_panic();
    }
}

#[test]
fn hostile_kafka_input_on_the_controller_listener_leaves_the_quorum_working() {
    let (nodes, ports) = start_cluster(3);
    {
        let all: Vec<&Broker> = nodes.iter().collect();
        wait_for_metadata(&all, "every node lists the three brokers", |md| {
            md.brokers.len() == 3 && md.controller_id.0 > 0
        });
    }
    let leader = agreed_quorum_leader(&nodes);
    let metrics = nodes[0].metrics_addr();
    let before = metric(metrics, "wharf_controller_bad_frames_total");
    let port = ports[0];

    // Garbage: a node's frame that does not verify; a Kafka request whose header does not
    // decode (a client id longer than the frame); an API key no Kafka knows.
    assert!(closed_after(port, b"\x00\x00\x00\x10GARBAGE-GARBAGE!"));
    assert!(closed_after(
        port,
        &[0, 0, 0, 10, 0, 18, 0, 3, 0, 0, 0, 1, 0x7f, 0xff]
    ));
    assert!(closed_after(
        port,
        &[0, 0, 0, 10, 0, 250, 0, 0, 0, 0, 0, 1, 0, 0]
    ));
    // Oversized lengths, Kafka's (past the controller listener's 64 KiB for Kafka clients)
    // and a node's (past its frame limit): closed before anything of the frame is read.
    assert!(closed_after(port, &[0, 2, 0, 0, 0, 18, 0, 3]));
    assert!(closed_after(port, &[0x7f, 0xff, 0xff, 0xff, 0x10]));
    // A length no frame of either kind may have is refused as soon as it has arrived,
    // before the byte that tells who speaks (a new connection gets 10 s to show that).
    assert!(closed_within(
        port,
        &[0x7f, 0xff, 0xff, 0xff],
        Duration::from_secs(5)
    ));
    assert!(closed_within(port, &[0, 0, 0, 0], Duration::from_secs(5)));
    // Too many Kafka clients at once: past eight, a new one is closed; the nodes still get
    // their connections (the topic below needs them).
    let mut held: Vec<KafkaConn> = (0..8)
        .map(|_| {
            let mut c = KafkaConn::connect(controller_addr(port));
            assert_eq!(c.api_versions().len(), 3);
            c
        })
        .collect();
    let mut extra = KafkaConn::connect(controller_addr(port));
    extra.send(0, &kafka_protocol::messages::ApiVersionsRequest::default());
    extra.expect_closed();

    // A Kafka request, then a node's frame on the same connection: the frame is a bad Kafka
    // request and closes the connection; it never reaches the quorum.
    let conn = &mut held[0];
    let r = describe_cluster_on(conn, 1, 2);
    assert_eq!(r.controller_id.0, leader);
    let registration = encode_frame(&Frame::new(
        1,
        Body::BrokerRegistrationRequest(BrokerRegistrationRequest {
            node_id: 1,
            incarnation_id: 1,
            cluster_id: String::new(),
            listeners: Vec::new(),
            rack: None,
        }),
    ))
    .expect("encode");
    conn.write_raw(&registration).expect("send");
    conn.expect_closed();
    // The other way round: after a node's frame, a Kafka request is no frame.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let ask = encode_frame(&Frame::new(
        9,
        Body::DescribeQuorumRequest(wharf_protocol::controller::DescribeQuorumRequest {
            node_id: 2,
        }),
    ))
    .expect("encode");
    stream.write_all(&ask).expect("send");
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).expect("a node's answer");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).expect("the whole answer");
    let mut kafka = Vec::new();
    kafka.extend_from_slice(&8u32.to_be_bytes());
    kafka.extend_from_slice(&[0, 18, 0, 0, 0, 0, 0, 5]);
    stream.write_all(&kafka).expect("send");
    let mut rest = [0u8; 16];
    assert!(
        matches!(stream.read(&mut rest), Ok(0) | Err(_)),
        "a Kafka request after a node's frame closes the connection"
    );
    drop(held);

    // Refused frames of the node protocol were counted; the quorum did not move and still
    // makes changes: a topic created now is on every node.
    let after = metric(metrics, "wharf_controller_bad_frames_total");
    assert!(
        after >= before + 3.0,
        "bad frames counted: {before} -> {after}"
    );
    let topic = unique_topic("after-hostile");
    assert_eq!(create_topic(nodes[1].addr(), &topic, 3), error_code::NONE);
    {
        let all: Vec<&Broker> = nodes.iter().collect();
        wait_for_metadata(&all, "the new topic on every node", |md| {
            topic_view(md, &topic).is_some()
        });
    }
    assert_eq!(agreed_quorum_leader(&nodes), leader);
    for n in &nodes {
        n.assert_no_panic();
    }
}

#[test]
fn a_one_node_cluster_shows_the_controller_port_it_picked_and_serves_kafka_clients_there() {
    let node = Broker::start_with(&["--controller-listen", "127.0.0.1:0"]);
    // DescribeQuorum v2 on the client listener names the controller listener...
    let quorum: DescribeQuorumResponse = {
        use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
        KafkaConn::connect(node.addr()).request(
            2,
            &DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
                .with_topic_name(topic_name("__cluster_metadata"))
                .with_partitions(vec![PartitionData::default().with_partition_index(0)])]),
        )
    };
    let port = quorum
        .nodes
        .first()
        .and_then(|n| n.listeners.first())
        .map(|l| l.port)
        .expect("the voter's controller listener");
    assert_ne!(port, 0, "the port picked, not the one asked for");
    // ...where a Kafka client finds the same endpoint and this node as the controller.
    let mut conn = KafkaConn::connect(controller_addr(port));
    let r = describe_cluster_on(&mut conn, 2, 2);
    assert_eq!(r.error_code, error_code::NONE, "{r:?}");
    assert_eq!(r.controller_id.0, 1);
    let listed: Vec<(i32, i32)> = r.brokers.iter().map(|b| (b.broker_id.0, b.port)).collect();
    assert_eq!(listed, [(1, i32::from(port))]);
    node.assert_no_panic();
}

#[test]
fn when_the_active_controller_stops_answering_the_other_brokers_stay_unfenced() {
    // Sessions shorter than the 5 s a forwarded request may wait: a broker whose heartbeat
    // waited out that time on the frozen controller would be fenced by its successor.
    let (nodes, _) = start_cluster_with(
        3,
        "broker.session.timeout.ms = 3000\nbroker.heartbeat.interval.ms = 500\n",
    );
    let status = cluster_status(&nodes[0].bootstrap());
    let active: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("Active controller:"))
        .and_then(|rest| rest.trim().strip_prefix("node "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no active controller in:\n{status}"));
    let frozen = &nodes[active - 1];
    // SAFETY: a plain syscall on a pid this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(frozen.pid(), libc::SIGSTOP) }, 0);
    let others: Vec<&Broker> = nodes.iter().filter(|n| n.pid() != frozen.pid()).collect();
    // A new controller is elected and fences the frozen node only.
    wait_for_metadata(&others, "the frozen controller's node fenced", |md| {
        md.brokers.len() == 2
    });
    std::thread::sleep(Duration::from_secs(5));
    for node in &others {
        let md = metadata(node.addr());
        assert_eq!(md.brokers.len(), 2, "the two answering brokers stay live");
    }
    let fenced: Vec<String> = others
        .iter()
        .flat_map(|n| {
            n.stderr()
                .lines()
                .filter(|l| l.contains("fencing broker"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        fenced
            .iter()
            .all(|l| l.contains(&format!("broker={active}"))),
        "only the frozen node is fenced: {fenced:#?}"
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(frozen.pid(), libc::SIGCONT) }, 0);
    for node in &nodes {
        node.assert_no_panic();
    }
}
