//! Clients that try to exhaust the broker, with real sockets against a real `wharf`: ids
//! longer than Kafka's formats hold, bare request headers claiming large frames on many
//! connections, requests trickled a byte at a
//! time (slowloris), connections left idle, fetches naming one partition hundreds of times
//! and never read, compressed batches that decompress to far more than they weigh. Each
//! test asserts that a well-behaved client is served throughout and
//! that the broker's resident memory stays within its configured budgets plus a small
//! fixed allowance per connection (the settings below are small so that the bound means
//! something).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, GroupId, JoinGroupRequest, OffsetCommitRequest,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;

use common::http::{must, scrape};
use common::old::{call, codec_code, compress, message, Body};
use common::raw::{
    encode_request, ensure_topic, error_code, header_v1, produce_one, record_batch, topic_name,
    KafkaConn,
};
use common::{unique_topic, Broker};

const SHARDS: usize = 2;
const MIB: usize = 1024 * 1024;
const PRODUCE_BUDGET: usize = 16 * MIB;
const REQUEST_BUDGET: usize = 8 * MIB;
const CACHE_BUDGET: usize = 8 * MIB;
const CONVERSION_BUDGET: usize = 4 * MIB;
const FETCH_MAX_BYTES: usize = MIB;
const RESPONSE_QUEUE_BYTES: usize = 2 * MIB;
const READ_TIMEOUT_MS: u64 = 2_000;
const IDLE_MS: u64 = 3_000;
/// What one connection may cost beyond the budgets: its tasks, its queue of in-flight
/// requests, a read buffer while a request arrives (about 11 KiB measured).
const PER_CONNECTION_ALLOWANCE: usize = 32 * 1024;
/// Room for the allocator's own rounding and fragmentation across the run.
const SLACK: usize = 16 * MIB;

fn settings() -> String {
    format!(
        "socket.request.max.bytes = {}\n\
         produce.inflight.max.bytes = {PRODUCE_BUDGET}\n\
         request.inflight.max.bytes = {REQUEST_BUDGET}\n\
         log.cache.bytes = {CACHE_BUDGET}\n\
         conversion.inflight.max.bytes = {CONVERSION_BUDGET}\n\
         fetch.max.bytes = {FETCH_MAX_BYTES}\n\
         socket.response.queue.max.bytes = {RESPONSE_QUEUE_BYTES}\n\
         socket.request.read.timeout.ms = {READ_TIMEOUT_MS}\n\
         connections.max.idle.ms = {IDLE_MS}\n",
        8 * MIB
    )
}

fn broker() -> Broker {
    Broker::start_with_settings(&settings(), &[])
}

/// The most the broker may hold once `baseline` (measured after a warm-up) is known:
/// every shard's budgets full (the conversion budget with the one batch being decompressed,
/// at most as large again), each connection's allowance, and for connections that are
/// owed responses, their response queue and one more response.
fn memory_bound(baseline: usize, connections: usize, owed_responses: usize) -> usize {
    baseline
        + SHARDS * (PRODUCE_BUDGET + REQUEST_BUDGET + CACHE_BUDGET + 2 * CONVERSION_BUDGET)
        + connections * PER_CONNECTION_ALLOWANCE
        + owed_responses * (RESPONSE_QUEUE_BYTES + FETCH_MAX_BYTES)
        + SLACK
}

/// A well-behaved client: it produces a record and reads it back. Returns the offset.
fn serve_a_normal_client(broker: &Broker, topic: &str, tag: &str) -> i64 {
    let mut conn = KafkaConn::connect(broker.addr());
    let value = Bytes::from(format!("normal-{tag}"));
    let (error, offset) = produce_one(
        &mut conn,
        9,
        topic,
        0,
        record_batch(std::slice::from_ref(&value), Compression::None),
    );
    assert_eq!(error, error_code::NONE, "a normal produce failed");
    let resp = fetch(&mut conn, topic, &[(0, offset)], MIB as i32);
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, error_code::NONE);
    let records = p.records.as_ref().expect("records");
    assert!(
        records.windows(value.len()).any(|w| w == value),
        "the normal client's record did not come back"
    );
    offset
}

fn fetch_request(topic: &str, partitions: &[(i32, i64)], max_bytes: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(max_bytes)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(
                partitions
                    .iter()
                    .map(|&(partition, offset)| {
                        FetchPartition::default()
                            .with_partition(partition)
                            .with_fetch_offset(offset)
                            .with_log_start_offset(-1)
                            .with_current_leader_epoch(-1)
                            .with_partition_max_bytes(MIB as i32)
                    })
                    .collect(),
            )])
}

fn fetch(
    conn: &mut KafkaConn,
    topic: &str,
    partitions: &[(i32, i64)],
    max_bytes: i32,
) -> FetchResponse {
    conn.request(11, &fetch_request(topic, partitions, max_bytes))
}

/// Samples the broker's RSS every few milliseconds while `during` runs; the highest.
fn peak_rss_while(broker: &Broker, during: impl FnOnce()) -> usize {
    let pid = broker.pid();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            loop {
                if let Some(rss) = rss_of(pid) {
                    peak = peak.max(rss);
                }
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return peak;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    during();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().expect("the sampler thread")
}

fn rss_of(pid: i32) -> Option<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: usize = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// A topic with a partition to serve normal clients, warmed up; and the RSS after that.
fn warmed_up(broker: &Broker) -> (String, usize) {
    let topic = unique_topic("dos");
    let mut conn = KafkaConn::connect(broker.addr());
    ensure_topic(&mut conn, &topic);
    for i in 0..3 {
        serve_a_normal_client(broker, &topic, &format!("warm-{i}"));
    }
    (topic, broker.rss_bytes())
}

fn assert_within(peak: usize, bound: usize, what: &str) {
    eprintln!(
        "{what}: peak RSS {:.1} MiB, bound {:.1} MiB",
        peak as f64 / MIB as f64,
        bound as f64 / MIB as f64
    );
    assert!(
        peak <= bound,
        "{what}: the broker's RSS reached {peak} bytes, past its bound of {bound}"
    );
}

/// A request header whose size prefix claims `size` bytes, and nothing more.
fn bare_header(api_key: ApiKey, version: i16, size: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&(size as i32).to_be_bytes());
    bytes.extend_from_slice(&header_v1(api_key as i16, version, 1));
    bytes
}

#[test]
fn over_long_ids_from_many_clients_are_refused_and_hold_nothing() {
    let broker =
        Broker::start_with_settings(&settings(), &["--group-initial-rebalance-delay-ms", "0"]);
    let (topic, baseline) = warmed_up(&broker);
    let s = |v: &str| StrBytes::from_string(v.to_string());
    const CLIENTS: usize = 20;
    let peak = peak_rss_while(&broker, || {
        for client in 0..CLIENTS {
            let mut conn = KafkaConn::connect(broker.addr());
            // The two crashes, over and over: a 40,000-byte group id in a flexible
            // OffsetCommit, and a JoinGroup from a client id of the longest legal length.
            let long_group = format!("{client}-{}", "g".repeat(40_000));
            for _ in 0..10 {
                let req = OffsetCommitRequest::default()
                    .with_group_id(GroupId(s(&long_group)))
                    .with_generation_id_or_member_epoch(-1)
                    .with_member_id(s(""))
                    .with_topics(vec![OffsetCommitRequestTopic::default()
                        .with_name(topic_name(&topic))
                        .with_partitions(vec![OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(1)])]);
                let resp = conn.request(8, &req);
                assert_eq!(
                    resp.topics[0].partitions[0].error_code,
                    error_code::INVALID_GROUP_ID
                );
            }
            conn.set_client_id(&"c".repeat(i16::MAX as usize));
            let join = JoinGroupRequest::default()
                .with_group_id(GroupId(s(&format!("long-client-{client}"))))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(10_000)
                .with_member_id(s(""))
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(s("range"))
                    .with_metadata(Bytes::from_static(b"sub"))]);
            let resp = conn.request(6, &join);
            assert_eq!(resp.error_code, error_code::MEMBER_ID_REQUIRED);
            assert!(resp.member_id.len() <= i16::MAX as usize);
        }
        serve_a_normal_client(&broker, &topic, "during");
    });
    assert_within(
        peak,
        memory_bound(baseline, CLIENTS + 2, 0),
        "over-long ids",
    );
    serve_a_normal_client(&broker, &topic, "after");
    broker.assert_no_panic();
}

#[test]
fn bare_headers_claiming_large_frames_hold_no_memory_and_are_closed() {
    let broker = broker();
    let (topic, baseline) = warmed_up(&broker);
    const CONNECTIONS: usize = 300;
    let mut hostile = Vec::with_capacity(CONNECTIONS);
    let peak = peak_rss_while(&broker, || {
        for i in 0..CONNECTIONS {
            let mut conn = KafkaConn::connect(broker.addr());
            // Produce may claim the whole socket.request.max.bytes; the others 8 MiB.
            let header = if i % 2 == 0 {
                bare_header(ApiKey::Produce, 9, 8 * MIB)
            } else {
                bare_header(ApiKey::Metadata, 12, 8 * MIB)
            };
            conn.write_raw(&header).expect("write a header");
            hostile.push(conn);
        }
        // Meanwhile a normal client, producing too, is served: the claimed sizes took
        // nothing from the produce budget.
        serve_a_normal_client(&broker, &topic, "during");
    });
    assert_within(
        peak,
        memory_bound(baseline, CONNECTIONS + 2, 0),
        "bare headers",
    );
    // None of these requests arrives whole within the read timeout: each is closed.
    for conn in &mut hostile {
        conn.expect_closed();
    }
    serve_a_normal_client(&broker, &topic, "after");
    broker.assert_no_panic();
}

#[test]
fn requests_trickled_a_few_bytes_at_a_time_are_closed_after_the_read_timeout() {
    let broker = broker();
    let (topic, baseline) = warmed_up(&broker);
    const CONNECTIONS: usize = 100;
    let started = Instant::now();
    let mut streams: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| {
            let mut s = TcpStream::connect(broker.addr()).expect("connect");
            s.write_all(&bare_header(ApiKey::Produce, 9, MIB))
                .expect("write a header");
            s
        })
        .collect();
    let mut closed = vec![false; CONNECTIONS];
    let peak = peak_rss_while(&broker, || {
        // 64 bytes per connection every 100 ms: the request would take minutes to arrive.
        while closed.iter().any(|c| !c) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "trickling connections were never closed"
            );
            for (stream, closed) in streams.iter_mut().zip(closed.iter_mut()) {
                if !*closed && stream.write_all(&[0x55; 64]).is_err() {
                    *closed = true;
                }
            }
            serve_a_normal_client(&broker, &topic, "during");
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(READ_TIMEOUT_MS),
        "closed after {took:?}, before the read timeout"
    );
    assert_within(
        peak,
        memory_bound(baseline, CONNECTIONS + 2, 0),
        "slowloris",
    );
    serve_a_normal_client(&broker, &topic, "after");
    broker.assert_no_panic();
}

#[test]
fn idle_connections_are_closed_but_a_long_poll_is_not_idle() {
    let broker = broker();
    let (topic, _) = warmed_up(&broker);
    let mut idle: Vec<KafkaConn> = (0..20)
        .map(|_| {
            let mut conn = KafkaConn::connect(broker.addr());
            conn.api_versions();
            conn
        })
        .collect();
    // A fetch waiting for data longer than the idle timeout: the connection has a request
    // in flight, so it is not idle, and gets its answer.
    let mut polling = KafkaConn::connect(broker.addr());
    let end = serve_a_normal_client(&broker, &topic, "before") + 1;
    let wait_ms = IDLE_MS as i32 + 2_000;
    let req = fetch_request(&topic, &[(0, end)], MIB as i32)
        .with_max_wait_ms(wait_ms)
        .with_min_bytes(1);
    let sent = Instant::now();
    let correlation_id = polling.send(11, &req);
    for conn in &mut idle {
        conn.expect_closed();
    }
    let resp: FetchResponse = polling.receive::<FetchRequest>(11, correlation_id);
    assert!(sent.elapsed() >= Duration::from_millis(wait_ms as u64 - 100));
    assert_eq!(resp.responses[0].partitions[0].error_code, error_code::NONE);
    serve_a_normal_client(&broker, &topic, "after");
    broker.assert_no_panic();
}

/// `count` batches of about 64 KiB into partition 0; returns the offset after them.
fn fill_partition(broker: &Broker, topic: &str, count: usize) -> i64 {
    let mut conn = KafkaConn::connect(broker.addr());
    let value = Bytes::from(vec![0x5au8; 64 * 1024 - 100]);
    let mut end = 0;
    for _ in 0..count {
        let (error, offset) = produce_one(
            &mut conn,
            9,
            topic,
            0,
            record_batch(std::slice::from_ref(&value), Compression::None),
        );
        assert_eq!(error, error_code::NONE);
        end = offset + 1;
    }
    end
}

#[test]
fn a_fetch_naming_one_partition_many_times_is_answered_once_within_fetch_max_bytes() {
    let broker = broker();
    let (topic, baseline) = warmed_up(&broker);
    fill_partition(&broker, &topic, 48);

    let mut conn = KafkaConn::connect(broker.addr());
    let named = vec![(0, 0); 256];
    let resp = fetch(&mut conn, &topic, &named, i32::MAX);
    assert_eq!(resp.responses.len(), 1);
    let partitions = &resp.responses[0].partitions;
    assert_eq!(partitions.len(), 1, "the partition is answered once");
    let records = partitions[0].records.as_ref().expect("records");
    assert!(!records.is_empty());
    assert!(
        records.len() <= FETCH_MAX_BYTES,
        "{} bytes of records past fetch.max.bytes",
        records.len()
    );

    // Four of them pipelined and left unread for a while, on each of four connections.
    const CONNECTIONS: usize = 4;
    let frame = {
        let payload = encode_request(1, 11, &fetch_request(&topic, &named, i32::MAX));
        let mut b = BytesMut::new();
        b.put_i32(payload.len() as i32);
        b.put_slice(&payload);
        b.freeze()
    };
    let mut greedy: Vec<KafkaConn> = (0..CONNECTIONS)
        .map(|_| KafkaConn::connect(broker.addr()))
        .collect();
    let peak = peak_rss_while(&broker, || {
        for conn in &mut greedy {
            for _ in 0..4 {
                conn.write_raw(&frame).expect("write a fetch");
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        serve_a_normal_client(&broker, &topic, "during");
    });
    assert_within(
        peak,
        memory_bound(baseline, CONNECTIONS + 2, CONNECTIONS),
        "fetch amplification",
    );
    for conn in &mut greedy {
        for _ in 0..4 {
            let frame = conn.read_frame();
            assert!(
                frame.len() <= FETCH_MAX_BYTES + 64 * 1024,
                "{}",
                frame.len()
            );
        }
    }
    broker.assert_no_panic();
}

#[test]
fn a_client_that_never_reads_its_responses_stops_being_read() {
    let broker = Broker::start_with_settings(&settings(), &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = broker.metrics_addr();
    let (topic, baseline) = warmed_up(&broker);
    fill_partition(&broker, &topic, 24);
    let fetches_answered = || must(&scrape(metrics), "wharf_requests_total{api=\"Fetch\"}");
    let before = fetches_answered();
    let mut frame = BytesMut::new();
    let payload = encode_request(1, 11, &fetch_request(&topic, &[(0, 0)], i32::MAX));
    frame.put_i32(payload.len() as i32);
    frame.put_slice(&payload);
    let frame = frame.freeze();

    let mut stream = TcpStream::connect(broker.addr()).expect("connect");
    stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .expect("write timeout");
    let mut sent = 0usize;
    let peak = peak_rss_while(&broker, || {
        // Send fetches of a megabyte each for two seconds and read nothing.
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(2) {
            match stream.write_all(&frame) {
                Ok(()) => sent += 1,
                Err(_) => break,
            }
        }
        serve_a_normal_client(&broker, &topic, "during");
    });
    let answered = fetches_answered() - before;
    eprintln!("sent {sent} fetches, the broker answered {answered}");
    // What fits the socket buffers and the response queue, not what was sent.
    assert!(sent > 1_000, "only {sent} fetches were sent");
    assert!(
        answered < 100.0,
        "the broker kept answering fetches nobody reads: {answered}"
    );
    assert_within(peak, memory_bound(baseline, 3, 1), "unread responses");
    // With nothing moving either way, the connection is closed once idle.
    let open = || must(&scrape(metrics), "wharf_open_connections");
    let deadline = Instant::now() + Duration::from_secs(30);
    while open() > 0.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(open(), 0.0, "the connection nobody reads was never closed");
    drop(stream);
    serve_a_normal_client(&broker, &topic, "after");
    broker.assert_no_panic();
}

#[test]
fn idle_connections_to_the_metrics_port_do_not_lock_scrapers_out() {
    let broker = Broker::start_with_settings(&settings(), &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = broker.metrics_addr();
    let (_, baseline) = warmed_up(&broker);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Hundreds of connections that send nothing, re-opened in bursts as they are closed.
    let hog = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held: std::collections::VecDeque<TcpStream> = Default::default();
            let mut opened = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..50 {
                    if let Ok(s) = TcpStream::connect(metrics) {
                        held.push_back(s);
                        opened += 1;
                    }
                }
                while held.len() > 300 {
                    held.pop_front();
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            opened
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let mut scrapes = 0;
    let peak = peak_rss_while(&broker, || {
        for _ in 0..30 {
            let body = scrape(metrics);
            assert!(body.contains("wharf_build_info"));
            scrapes += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let opened = hog.join().expect("the hog thread");
    eprintln!("{scrapes} scrapes answered while {opened} idle connections were opened");
    assert_eq!(scrapes, 30);
    assert_within(peak, memory_bound(baseline, 64, 0), "metrics lockout");
    broker.assert_no_panic();
}

/// Produce v2 of one message set into partition 0: the partition's error code.
fn produce_v2(conn: &mut KafkaConn, topic: &str, message_set: &[u8]) -> i16 {
    let body = Body::new()
        .i16(1)
        .i32(10_000)
        .i32(1)
        .str(topic)
        .i32(1)
        .i32(0)
        .bytes(message_set);
    let mut r = call(conn, ApiKey::Produce as i16, 2, body);
    assert_eq!(r.len(), 1);
    assert_eq!(r.str(), topic);
    assert_eq!(r.len(), 1);
    assert_eq!(r.i32(), 0);
    let error = r.i16();
    let _base_offset = r.i64();
    let _log_append_time = r.i64();
    let _throttle_time = r.i32();
    r.end();
    error
}

/// Fetch v1 of partition 0 from `offset`: (error, message set bytes).
fn fetch_v1(conn: &mut KafkaConn, topic: &str, offset: i64) -> (i16, usize) {
    let body = Body::new()
        .i32(-1)
        .i32(0)
        .i32(0)
        .i32(1)
        .str(topic)
        .i32(1)
        .i32(0)
        .i64(offset)
        .i32(MIB as i32);
    let mut r = call(conn, ApiKey::Fetch as i16, 1, body);
    let _throttle_time = r.i32();
    assert_eq!(r.len(), 1);
    assert_eq!(r.str(), topic);
    assert_eq!(r.len(), 1);
    assert_eq!(r.i32(), 0);
    let error = r.i16();
    let _high_watermark = r.i64();
    let records = r.nullable_bytes().unwrap_or_default();
    r.end();
    (error, records.len())
}

#[test]
fn compression_bombs_are_converted_within_the_conversion_budget() {
    // Every topic is stored uncompressed, so each compressed batch is decompressed and kept
    // whole until it is written: a few kilobytes sent become megabytes held.
    let broker = Broker::start_with_settings(
        &format!(
            "{}compression.type = \"uncompressed\"\nmessage.max.bytes = {}\n",
            settings(),
            8 * MIB
        ),
        &[],
    );
    let (topic, baseline) = warmed_up(&broker);
    let zeros = Bytes::from(vec![0u8; 3 * MIB]);
    let gzip_bomb = record_batch(std::slice::from_ref(&zeros), Compression::Gzip);
    let zstd_bomb = record_batch(std::slice::from_ref(&zeros), Compression::Zstd);
    assert!(gzip_bomb.len() < 64 * 1024 && zstd_bomb.len() < 64 * 1024);
    // Forty in one partition: 120 MiB once converted, far more than the whole budget.
    let forty: Bytes = (0..40).flat_map(|_| gzip_bomb.iter().copied()).collect();
    // Message format v1: a gzip wrapper around one 3 MiB message.
    let inner = message(0, 1, 0, 1_700_000_000_000, None, Some(&zeros));
    let wrapper = message(
        0,
        1,
        codec_code("gzip"),
        1_700_000_000_000,
        None,
        Some(&compress("gzip", &inner)),
    );
    const CLIENTS: usize = 3;
    let peak = peak_rss_while(&broker, || {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (addr, topic) = (broker.addr(), topic.clone());
                let (gzip_bomb, zstd_bomb, forty, wrapper) = (
                    gzip_bomb.clone(),
                    zstd_bomb.clone(),
                    forty.clone(),
                    wrapper.clone(),
                );
                std::thread::spawn(move || {
                    let mut conn = KafkaConn::connect(addr);
                    for _ in 0..2 {
                        let (error, offset) =
                            produce_one(&mut conn, 9, &topic, 0, gzip_bomb.clone());
                        assert_eq!(error, error_code::NONE, "one bomb fits the budget");
                        let (error, _) = produce_one(&mut conn, 9, &topic, 0, zstd_bomb.clone());
                        assert_eq!(error, error_code::NONE);
                        let (error, _) = produce_one(&mut conn, 9, &topic, 0, forty.clone());
                        assert_eq!(error, error_code::MESSAGE_TOO_LARGE, "forty do not");
                        assert_eq!(produce_v2(&mut conn, &topic, &wrapper), error_code::NONE);
                        // An old reader gets the 3 MiB record converted down, whole.
                        let (error, bytes) = fetch_v1(&mut conn, &topic, offset);
                        assert_eq!(error, error_code::NONE);
                        assert!(bytes > 3 * MIB, "{bytes} bytes fetched");
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().expect("a client thread failed");
        }
        serve_a_normal_client(&broker, &topic, "during");
    });
    assert_within(
        peak,
        memory_bound(baseline, CLIENTS + 2, CLIENTS),
        "compression bombs",
    );
    serve_a_normal_client(&broker, &topic, "after");
    broker.assert_no_panic();
}

#[test]
fn requests_left_waiting_do_not_stop_the_shard_reading_other_clients() {
    let broker = broker();
    let (topic, baseline) = warmed_up(&broker);
    let quiet = unique_topic("quiet");
    ensure_topic(&mut KafkaConn::connect(broker.addr()), &quiet);
    // Long polls of about 0.7 MiB each (one partition named over and over, which the fetch
    // answers once), waiting for data that does not come: together more than the request
    // budget of every shard.
    const POLLS: usize = 4 * REQUEST_BUDGET / MIB;
    const WAIT_MS: i32 = 10_000;
    let named = vec![(0, 0); MIB / 40];
    let poll = fetch_request(&quiet, &named, MIB as i32)
        .with_max_wait_ms(WAIT_MS)
        .with_min_bytes(1);
    let mut polling: Vec<(KafkaConn, i32)> = (0..POLLS)
        .map(|_| {
            let mut conn = KafkaConn::connect(broker.addr());
            let correlation_id = conn.send(11, &poll);
            (conn, correlation_id)
        })
        .collect();
    let peak = peak_rss_while(&broker, || {
        std::thread::sleep(Duration::from_millis(500));
        // Served while every long poll still waits.
        serve_a_normal_client(&broker, &topic, "during");
        let mut admin = KafkaConn::connect(broker.addr());
        assert!(admin
            .api_versions()
            .contains_key(&(ApiKey::Metadata as i16)));
    });
    for (conn, _) in &mut polling {
        conn.stream()
            .set_nonblocking(true)
            .expect("a non-blocking socket");
        let mut byte = [0u8; 1];
        assert!(
            matches!(conn.stream().peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a long poll was answered before the normal client was served"
        );
        conn.stream()
            .set_nonblocking(false)
            .expect("a blocking socket");
    }
    assert_within(
        peak,
        memory_bound(baseline, POLLS + 3, POLLS),
        "requests left waiting",
    );
    // Each poll is answered, empty, when its wait ends.
    for (conn, correlation_id) in &mut polling {
        let resp: FetchResponse = conn.receive::<FetchRequest>(11, *correlation_id);
        assert_eq!(resp.responses.len(), 1);
        assert_eq!(resp.responses[0].partitions.len(), 1);
        assert_eq!(resp.responses[0].partitions[0].error_code, error_code::NONE);
    }
    broker.assert_no_panic();
}
