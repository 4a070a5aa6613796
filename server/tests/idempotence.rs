//! Idempotent producers (KIP-98) over a raw connection: InitProducerId hands out ids that
//! never repeat (across restarts too), a resent batch is stored once and answered with its
//! first offsets (after a SIGKILL too), sequence gaps and fenced epochs are refused, and a
//! client's control batch is refused (only the broker writes transaction markers).

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, InitProducerIdRequest, ProduceRequest, ProducerId,
};
use wharf_protocol::batch::BatchBuilder;

use common::raw::{ensure_topic, pick_version, produce_request, topic_name, KafkaConn};
use common::{unique_topic, Broker};

const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const INVALID_TXN_STATE: i16 = 48;
const INVALID_RECORD: i16 = 87;

/// InitProducerId without a transactional id: (error, producer id, epoch).
fn init_producer_id(conn: &mut KafkaConn, version: i16, id: i64, epoch: i16) -> (i16, i64, i16) {
    let req = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(id))
        .with_producer_epoch(epoch);
    let resp = conn.request(version, &req);
    (resp.error_code, resp.producer_id.0, resp.producer_epoch)
}

fn new_producer(conn: &mut KafkaConn) -> i64 {
    let (error, id, epoch) = init_producer_id(conn, 4, -1, -1);
    assert_eq!((error, epoch), (0, 0));
    assert!(id >= 0);
    id
}

/// A batch of `count` records from producer `pid`/`epoch` from sequence `seq`; the values
/// name the sequence of each record.
fn batch(pid: i64, epoch: i16, seq: i32, count: i32) -> Bytes {
    let mut b = BatchBuilder::new().producer(pid, epoch, seq);
    for i in 0..count {
        b.push(
            None,
            Some(format!("seq-{}", seq + i).as_bytes()),
            &[],
            1_000,
        );
    }
    Bytes::from(b.build())
}

/// Produce acks=all to partition 0: (error, base offset).
fn produce(conn: &mut KafkaConn, topic: &str, records: Bytes) -> (i16, i64) {
    let resp = conn.request(9, &produce_request(topic, 0, -1, records));
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// Every record value of partition 0 from offset 0, in order, with its offset.
fn fetch_all(conn: &mut KafkaConn, topic: &str) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut next = 0;
    loop {
        let req = FetchRequest::default()
            .with_replica_id((-1).into())
            .with_max_wait_ms(0)
            .with_min_bytes(0)
            .with_max_bytes(1 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_fetch_offset(next)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(1 << 20)])]);
        let resp: FetchResponse = conn.request(11, &req);
        let p = &resp.responses[0].partitions[0];
        assert_eq!(p.error_code, 0);
        let records = p.records.clone().unwrap_or_default();
        let before = out.len();
        for (_, bytes) in wharf_protocol::batch::batches(&records) {
            let info = wharf_protocol::batch::validate_batch(bytes, usize::MAX).expect("valid");
            let recs = wharf_protocol::batch::records(bytes).expect("records");
            for r in recs {
                let r = r.expect("record");
                let offset = info.base_offset + i64::from(r.offset_delta);
                if offset >= next {
                    let value = r.value.map(|v| String::from_utf8_lossy(v).into_owned());
                    out.push((offset, value.unwrap_or_default()));
                }
            }
        }
        if out.len() == before {
            return out;
        }
        next = out.last().map_or(next, |(o, _)| o + 1);
    }
}

#[test]
fn init_producer_id_hands_out_ids_that_never_repeat_even_after_a_crash() {
    let mut broker = Broker::start();
    let mut seen = Vec::new();
    for version in 0..=4 {
        // New connections land on either shard; each shard has its own block of ids.
        let mut conn = KafkaConn::connect(broker.addr());
        let (error, id, epoch) = init_producer_id(&mut conn, version, -1, -1);
        assert_eq!((error, epoch), (0, 0), "v{version}");
        assert!(
            id >= 0 && !seen.contains(&id),
            "v{version}: {id} in {seen:?}"
        );
        seen.push(id);
    }
    broker.restart(); // SIGKILL, then start on the same data dir.
    let max_before = *seen.iter().max().expect("ids");
    for _ in 0..4 {
        let mut conn = KafkaConn::connect(broker.addr());
        let id = new_producer(&mut conn);
        assert!(id > max_before, "{id} after a restart, {max_before} before");
    }
    broker.assert_no_panic();
}

#[test]
fn init_producer_id_gives_fresh_ids_to_idempotent_producers() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let id = new_producer(&mut conn);
    // KIP-360 (v3+) lets the request name an id and epoch; without a transactional id Kafka
    // answers with a fresh id anyway, so nobody can bump (fence) another producer's id.
    let (error, fresh, epoch) = init_producer_id(&mut conn, 3, id, 0);
    assert_eq!((error, epoch), (0, 0));
    assert!(fresh > id, "{fresh} after {id}");
    let (error, again, epoch) = init_producer_id(&mut conn, 4, fresh, 7);
    assert_eq!((error, epoch), (0, 0));
    assert!(again > fresh, "{again} after {fresh}");

    broker.assert_no_panic();
}

#[test]
fn a_resent_batch_is_stored_once_and_answered_with_its_first_offset() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let topic = unique_topic("idem");
    ensure_topic(&mut conn, &topic);
    let pid = new_producer(&mut conn);
    assert_eq!(produce(&mut conn, &topic, batch(pid, 0, 0, 3)), (0, 0));
    assert_eq!(produce(&mut conn, &topic, batch(pid, 0, 0, 3)), (0, 0));
    // The log end advanced once: the next batch lands right after the first.
    assert_eq!(produce(&mut conn, &topic, batch(pid, 0, 3, 2)), (0, 3));
    assert_eq!(produce(&mut conn, &topic, batch(pid, 0, 0, 3)), (0, 0));
    let values: Vec<String> = fetch_all(&mut conn, &topic)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(values, ["seq-0", "seq-1", "seq-2", "seq-3", "seq-4"]);

    // A gap, and a batch of an older epoch once a newer one has written.
    let (error, _) = produce(&mut conn, &topic, batch(pid, 0, 9, 1));
    assert_eq!(error, OUT_OF_ORDER_SEQUENCE_NUMBER);
    assert_eq!(produce(&mut conn, &topic, batch(pid, 1, 0, 1)), (0, 5));
    let (error, _) = produce(&mut conn, &topic, batch(pid, 0, 5, 1));
    assert_eq!(error, INVALID_PRODUCER_EPOCH);
    // A control batch: only the broker writes transaction markers.
    let control = {
        let mut b = BatchBuilder::new()
            .producer(pid, 1, -1)
            .transactional(true)
            .control(true);
        b.push(Some(&[0, 0, 0, 1]), Some(&[0, 0, 0, 0, 0, 0]), &[], 1_000);
        Bytes::from(b.build())
    };
    assert_eq!(produce(&mut conn, &topic, control).0, INVALID_RECORD);
    assert_eq!(fetch_all(&mut conn, &topic).len(), 6);
    broker.assert_no_panic();
}

#[test]
fn pipelined_requests_and_several_batches_per_request_are_checked_in_order() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let topic = unique_topic("idem-pipe");
    ensure_topic(&mut conn, &topic);
    let pid = new_producer(&mut conn);
    // Five requests in flight at once (max.in.flight=5), sent twice: the second round is
    // all duplicates.
    for _round in 0..2 {
        let ids: Vec<i32> = (0..5)
            .map(|i| conn.send(9, &produce_request(&topic, 0, -1, batch(pid, 0, i * 2, 2))))
            .collect();
        for (i, id) in ids.into_iter().enumerate() {
            let resp = conn.receive::<ProduceRequest>(9, id);
            let p = &resp.responses[0].partition_responses[0];
            assert_eq!((p.error_code, p.base_offset), (0, i as i64 * 2));
        }
    }
    // Two batches for one partition in one request: the second follows the first.
    let mut two = batch(pid, 0, 10, 1).to_vec();
    two.extend_from_slice(&batch(pid, 0, 11, 1));
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(&topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(two)))])]);
    let resp = conn.request(9, &req);
    let p = &resp.responses[0].partition_responses[0];
    assert_eq!((p.error_code, p.base_offset), (0, 10));
    let got = fetch_all(&mut conn, &topic);
    let expected: Vec<(i64, String)> = (0..12).map(|i| (i, format!("seq-{i}"))).collect();
    assert_eq!(got, expected);
    broker.assert_no_panic();
}

#[test]
fn a_batch_acknowledged_before_a_sigkill_or_a_clean_restart_is_still_a_duplicate() {
    // Small segments, so the state also crosses segment rolls and their snapshots.
    let mut broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let topic = unique_topic("idem-crash");
    common::client::create_topic(&broker.bootstrap(), &topic, 1, &[("segment.bytes", "300")]);
    ensure_topic(&mut conn, &topic);
    let pid = new_producer(&mut conn);
    let mut next_offset = 0;
    for seq in (0..40).step_by(4) {
        assert_eq!(
            produce(&mut conn, &topic, batch(pid, 0, seq, 4)),
            (0, next_offset)
        );
        next_offset += 4;
    }
    let segments = std::fs::read_dir(broker.data_dir().join(format!("{topic}-0")))
        .expect("the partition directory")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
        })
        .count();
    assert!(
        segments > 1,
        "segment.bytes=300 rolls segments, got {segments}"
    );
    for restart in ["sigkill", "sigterm"] {
        if restart == "sigkill" {
            broker.restart();
        } else {
            let status = broker.terminate();
            assert!(status.success(), "{status:?}");
            broker.restart();
        }
        let mut conn = KafkaConn::connect(broker.addr());
        ensure_topic(&mut conn, &topic);
        let last_seq = next_offset as i32 - 4;
        // The last five acknowledged batches are duplicates.
        for back in 0..5 {
            let seq = last_seq - back * 4;
            assert_eq!(
                produce(&mut conn, &topic, batch(pid, 0, seq, 4)),
                (0, i64::from(seq)),
                "after {restart}"
            );
        }
        // The producer goes on where it stopped.
        assert_eq!(
            produce(&mut conn, &topic, batch(pid, 0, last_seq + 4, 4)),
            (0, next_offset),
            "after {restart}"
        );
        next_offset += 4;
        let (error, _) = produce(&mut conn, &topic, batch(pid, 0, last_seq + 100, 1));
        assert_eq!(error, OUT_OF_ORDER_SEQUENCE_NUMBER);
    }
    let mut conn = KafkaConn::connect(broker.addr());
    let got = fetch_all(&mut conn, &topic);
    let expected: Vec<(i64, String)> = (0..next_offset).map(|i| (i, format!("seq-{i}"))).collect();
    assert_eq!(got, expected);
    broker.assert_no_panic();
}

#[test]
fn init_producer_id_is_advertised_v0_to_v5_as_kafka_3_9() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let versions = conn.api_versions();
    assert_eq!(
        versions.get(&(ApiKey::InitProducerId as i16)),
        Some(&(0, 5))
    );
    assert_eq!(pick_version(&versions, ApiKey::InitProducerId, 0, 5), 5);
    let (error, id, epoch) = init_producer_id(&mut conn, 5, -1, -1);
    assert_eq!((error, epoch), (0, 0));
    assert!(id >= 0);
}

/// A small deterministic generator (xorshift64*), so a failure names a reproducible case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[(self.next() % from.len() as u64) as usize]
    }
}

#[test]
fn random_producer_fields_never_break_the_log_or_the_broker() {
    // Whatever producer ids, epochs, sequences and flags clients send, every answer is a
    // success or one of the idempotence errors, each success either appends at the log end
    // or names the offset where that very batch was stored before, and the log holds
    // exactly the appended records.
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let topic = unique_topic("idem-random");
    ensure_topic(&mut conn, &topic);
    let pids = [
        -1,
        new_producer(&mut conn),
        new_producer(&mut conn),
        7_777_777,
    ];
    let mut rng = Rng(0x5EED_1DE5_7A7E);
    // Per producer id: its current epoch and next sequence, so most batches are in order.
    let mut current: HashMap<i64, (i16, i32)> = HashMap::new();
    // Batches answered with success, to resend some of them verbatim.
    let mut sent: Vec<(i64, i16, i32, i32)> = Vec::new();
    let mut stored: HashMap<i64, (i64, i16, i32, i32)> = HashMap::new();
    let mut end = 0i64;
    let (mut duplicates, mut refused) = (0, 0);
    for round in 0..400 {
        let pid = rng.pick(&pids);
        let (epoch_now, next) = *current.get(&pid).unwrap_or(&(0, 0));
        let mut count = 1 + (rng.next() % 3) as i32;
        let mut transactional = false;
        let (epoch, seq) = match rng.next() % 20 {
            _ if pid < 0 => (-1, -1),
            0..=3 if sent.iter().any(|s| s.0 == pid) => {
                // A retry of one of this producer's last batches: a duplicate, or too old.
                let mine: Vec<_> = sent.iter().filter(|s| s.0 == pid).collect();
                let back = (rng.next() % mine.len().min(7) as u64) as usize;
                let &(_, e, q, c) = mine[mine.len() - 1 - back];
                count = c;
                (e, q)
            }
            4 => (
                epoch_now.saturating_add(1),
                if rng.next() % 4 == 0 { 3 } else { 0 },
            ),
            5 => (epoch_now.saturating_sub(1).max(0), next),
            6 => (epoch_now, next.wrapping_add(2) & i32::MAX),
            7 => (-1, next),
            8 => {
                // A control batch, which clients may not send.
                transactional = true;
                (epoch_now, -1)
            }
            9 => (epoch_now, i32::MAX - (rng.next() % 2) as i32),
            _ => (epoch_now, next),
        };
        let mut b = BatchBuilder::new()
            .producer(pid, epoch, seq)
            .transactional(transactional)
            .control(transactional);
        for i in 0..count {
            b.push(None, Some(format!("r{round}-{i}").as_bytes()), &[], 1_000);
        }
        let (error, base) = produce(&mut conn, &topic, Bytes::from(b.build()));
        match error {
            0 => {
                assert!(
                    !transactional,
                    "round {round}: a client's control batch was stored"
                );
                if base == end {
                    stored.insert(base, (pid, epoch, seq, count));
                    sent.push((pid, epoch, seq, count));
                    end += i64::from(count);
                    if pid >= 0 {
                        current.insert(pid, (epoch, seq.wrapping_add(count) & i32::MAX));
                    }
                } else {
                    duplicates += 1;
                    assert_eq!(
                        stored.get(&base),
                        Some(&(pid, epoch, seq, count)),
                        "round {round}: success at {base}, log end {end}, not a duplicate"
                    );
                }
            }
            OUT_OF_ORDER_SEQUENCE_NUMBER | INVALID_PRODUCER_EPOCH | INVALID_TXN_STATE => {
                assert!(pid >= 0, "round {round}: error {error} for a plain batch");
                refused += 1;
            }
            // A producer id without an epoch is a malformed batch; so is a client's
            // control batch.
            INVALID_RECORD if pid >= 0 && (epoch < 0 || transactional) => refused += 1,
            other => panic!(
                "round {round}: unexpected error {other} for pid {pid} epoch {epoch} \
                 seq {seq} count {count} transactional {transactional}"
            ),
        }
    }
    assert!(
        end > 100 && duplicates > 5 && refused > 5,
        "{end} records, {duplicates} duplicates, {refused} refusals: too little exercised"
    );
    assert_eq!(fetch_all(&mut conn, &topic).len() as i64, end);
    broker.assert_no_panic();
}
