//! Transactions over a raw connection, request by request: the coordinator is found and
//! answers with Kafka's errors, a transaction's partitions hold back the last stable offset
//! until its marker, read_committed fetches get the aborted transactions, fenced producers
//! are refused, and `kafka-transactions`' requests describe what is going on.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, ApiKey, DescribeProducersRequest, DescribeTransactionsRequest,
    EndTxnRequest, FetchRequest, FindCoordinatorRequest, InitProducerIdRequest, ListOffsetsRequest,
    ListTransactionsRequest, ProducerId, TransactionalId, TxnOffsetCommitRequest,
};
use kafka_protocol::protocol::StrBytes;
use wharf_protocol::batch::BatchBuilder;

use common::raw::{ensure_topic, produce_request, topic_name, KafkaConn};
use common::{unique_topic, Broker};

const GUARD: Duration = Duration::from_secs(30);

fn txn_id(s: &str) -> TransactionalId {
    TransactionalId(StrBytes::from_string(s.to_owned()))
}

/// InitProducerId for `id`, retried while the coordinator loads or finishes a transaction:
/// (error, producer id, epoch).
fn init(conn: &mut KafkaConn, version: i16, id: &str, timeout_ms: i32) -> (i16, i64, i16) {
    let req = InitProducerIdRequest::default()
        .with_transactional_id(Some(txn_id(id)))
        .with_transaction_timeout_ms(timeout_ms)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let deadline = Instant::now() + GUARD;
    loop {
        let resp = conn.request(version, &req);
        let retriable = [
            ResponseError::CoordinatorLoadInProgress.code(),
            ResponseError::ConcurrentTransactions.code(),
        ];
        if !retriable.contains(&resp.error_code) {
            return (resp.error_code, resp.producer_id.0, resp.producer_epoch);
        }
        assert!(Instant::now() < deadline, "InitProducerId kept failing");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn add_partition(conn: &mut KafkaConn, id: &str, pid: i64, epoch: i16, topic: &str) -> i16 {
    let req = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(txn_id(id))
        .with_v3_and_below_producer_id(ProducerId(pid))
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![0])]);
    let resp = conn.request(3, &req);
    resp.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code
}

fn end_txn(
    conn: &mut KafkaConn,
    version: i16,
    id: &str,
    pid: i64,
    epoch: i16,
    commit: bool,
) -> i16 {
    let req = EndTxnRequest::default()
        .with_transactional_id(txn_id(id))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_committed(commit);
    conn.request(version, &req).error_code
}

fn txn_batch(pid: i64, epoch: i16, seq: i32, values: &[&str]) -> Bytes {
    let mut b = BatchBuilder::new()
        .producer(pid, epoch, seq)
        .transactional(true);
    for v in values {
        b.push(None, Some(v.as_bytes()), &[], 1_000);
    }
    Bytes::from(b.build())
}

fn produce(conn: &mut KafkaConn, topic: &str, records: Bytes) -> (i16, i64) {
    let req = produce_request(topic, 0, -1, records).with_transactional_id(Some(txn_id("raw-tx")));
    let resp = conn.request(9, &req);
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn latest(conn: &mut KafkaConn, topic: &str, isolation: i8) -> i64 {
    let req = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_isolation_level(isolation)
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)])]);
    let resp = conn.request(4, &req);
    let p = &resp.topics[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.offset
}

/// A read_committed fetch of partition 0 from offset 0: (last stable offset, aborted
/// transactions as (producer id, first offset), number of record batches).
fn fetch_committed(conn: &mut KafkaConn, topic: &str) -> (i64, Vec<(i64, i64)>, usize) {
    let req = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(1 << 20)
        .with_isolation_level(1)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_fetch_offset(0)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(1 << 20)])]);
    let resp = conn.request(11, &req);
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    let aborted = p
        .aborted_transactions
        .iter()
        .flatten()
        .map(|a| (a.producer_id.0, a.first_offset))
        .collect();
    let records = p.records.clone().unwrap_or_default();
    let batches = wharf_protocol::batch::batches(&records).count();
    (p.last_stable_offset, aborted, batches)
}

#[test]
fn api_versions_advertise_the_transaction_apis() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let versions = conn.api_versions();
    // Kafka 3.9's ranges: KIP-890 part 1, not part 2 (EndTxn v5, TxnOffsetCommit v5).
    for (key, max) in [
        (ApiKey::InitProducerId, 5),
        (ApiKey::AddPartitionsToTxn, 5),
        (ApiKey::AddOffsetsToTxn, 4),
        (ApiKey::EndTxn, 4),
        (ApiKey::TxnOffsetCommit, 4),
        (ApiKey::DescribeProducers, 0),
        (ApiKey::DescribeTransactions, 0),
        (ApiKey::ListTransactions, 1),
    ] {
        assert_eq!(versions.get(&(key as i16)), Some(&(0, max)), "{key:?}");
    }
    // Markers from a coordinator on another broker: v1 only (Kafka 4.0's range).
    assert_eq!(
        versions.get(&(ApiKey::WriteTxnMarkers as i16)),
        Some(&(1, 1))
    );
    broker.assert_no_panic();
}

#[test]
fn a_transaction_holds_back_the_lso_and_an_abort_is_listed_for_read_committed() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let topic = unique_topic("txn-raw");
    ensure_topic(&mut conn, &topic);
    let id = "raw-tx";

    // The coordinator is this node.
    let resp = conn.request(
        3,
        &FindCoordinatorRequest::default()
            .with_key(StrBytes::from_static_str("raw-tx"))
            .with_key_type(1),
    );
    assert_eq!(resp.error_code, 0);
    assert!(resp.port > 0);

    // transaction.timeout.ms above transaction.max.timeout.ms (900000).
    let (error, _, _) = init(&mut conn, 4, id, 900_001);
    assert_eq!(error, ResponseError::InvalidTransactionTimeout.code());
    let (error, pid, epoch) = init(&mut conn, 4, id, 60_000);
    assert_eq!((error, epoch), (0, 0));
    assert!(pid >= 0);

    // Two committed records first, as an idempotent-free plain producer would not do.
    assert_eq!(add_partition(&mut conn, id, pid, epoch, &topic), 0);
    assert_eq!(
        produce(&mut conn, &topic, txn_batch(pid, epoch, 0, &["a", "b"])),
        (0, 0)
    );
    assert_eq!(latest(&mut conn, &topic, 1), 0, "read_committed: the LSO");
    assert_eq!(latest(&mut conn, &topic, 0), 2);

    // What kafka-transactions sees meanwhile.
    let resp = conn.request(
        0,
        &DescribeTransactionsRequest::default().with_transactional_ids(vec![txn_id(id)]),
    );
    let state = &resp.transaction_states[0];
    assert_eq!(state.error_code, 0);
    assert_eq!(state.transaction_state.as_str(), "Ongoing");
    assert_eq!((state.producer_id.0, state.producer_epoch), (pid, epoch));
    assert_eq!(state.topics.len(), 1);
    assert_eq!(state.topics[0].topic.0.as_str(), topic);
    assert_eq!(state.topics[0].partitions, vec![0]);
    let resp = conn.request(
        1,
        &ListTransactionsRequest::default().with_state_filters(vec![
            StrBytes::from_static_str("Ongoing"),
            StrBytes::from_static_str("NoSuchState"),
        ]),
    );
    assert_eq!(resp.error_code, 0);
    assert!(resp
        .transaction_states
        .iter()
        .any(|t| t.transactional_id.0.as_str() == id && t.producer_id.0 == pid));
    assert_eq!(resp.unknown_state_filters.len(), 1);
    let resp = conn.request(
        0,
        &DescribeProducersRequest::default().with_topics(vec![TopicRequest::default()
            .with_name(topic_name(&topic))
            .with_partition_indexes(vec![0])]),
    );
    let producers = &resp.topics[0].partitions[0].active_producers;
    assert_eq!(producers.len(), 1);
    assert_eq!(producers[0].producer_id.0, pid);
    assert_eq!(producers[0].last_sequence, 1);
    assert_eq!(producers[0].current_txn_start_offset, 0);

    // Abort: the marker lands at offset 2, and the LSO passes it.
    assert_eq!(end_txn(&mut conn, 3, id, pid, epoch, false), 0);
    let deadline = Instant::now() + GUARD;
    let (lso, aborted, batches) = loop {
        let got = fetch_committed(&mut conn, &topic);
        if got.0 == 3 {
            break got;
        }
        assert!(Instant::now() < deadline, "the marker never came: {got:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(lso, 3);
    assert_eq!(
        aborted,
        vec![(pid, 0)],
        "the consumer must drop the aborted batch"
    );
    assert_eq!(batches, 2, "the data and the marker, as stored");

    // A new producer instance fences the old epoch everywhere.
    let (error, pid2, epoch2) = init(&mut conn, 4, id, 60_000);
    assert_eq!((error, pid2, epoch2), (0, pid, epoch + 1));
    let (error, _) = produce(&mut conn, &topic, txn_batch(pid, epoch, 2, &["zombie"]));
    assert_eq!(error, ResponseError::InvalidProducerEpoch.code());
    assert_eq!(
        end_txn(&mut conn, 3, id, pid, epoch, true),
        ResponseError::ProducerFenced.code()
    );
    assert_eq!(
        end_txn(&mut conn, 1, id, pid, epoch, true),
        ResponseError::InvalidProducerEpoch.code(),
        "clients before KIP-588 get INVALID_PRODUCER_EPOCH"
    );
    // Nothing was open: the new epoch's EndTxn is out of place.
    assert_eq!(
        end_txn(&mut conn, 3, id, pid2, epoch2, true),
        ResponseError::InvalidTxnState.code()
    );
    // Plain data from a producer inside its transaction is refused.
    assert_eq!(add_partition(&mut conn, id, pid2, epoch2, &topic), 0);
    assert_eq!(
        produce(&mut conn, &topic, txn_batch(pid2, epoch2, 0, &["c"])),
        (0, 3)
    );
    let plain = {
        let mut b = BatchBuilder::new().producer(pid2, epoch2, 1);
        b.push(None, Some(b"plain"), &[], 1_000);
        Bytes::from(b.build())
    };
    assert_eq!(
        produce(&mut conn, &topic, plain).0,
        ResponseError::InvalidTxnState.code()
    );
    assert_eq!(end_txn(&mut conn, 3, id, pid2, epoch2, true), 0);
    let deadline = Instant::now() + GUARD;
    while latest(&mut conn, &topic, 1) != 5 {
        assert!(Instant::now() < deadline, "the commit marker never came");
        std::thread::sleep(Duration::from_millis(20));
    }

    // KIP-890 part 1: a transactional batch for a partition the transaction does not hold
    // (here: no transaction at all) is refused, INVALID_TXN_STATE below Produce v11. Until
    // the coordinator has logged the commit's completion (the marker can be in the
    // partition before), it cannot answer the verification: CONCURRENT_TRANSACTIONS, which
    // the partition answers NOT_ENOUGH_REPLICAS so that the producer retries, as Kafka does.
    let deadline = Instant::now() + GUARD;
    let error = loop {
        let (error, _) = produce(&mut conn, &topic, txn_batch(pid2, epoch2, 1, &["stray"]));
        if error != ResponseError::NotEnoughReplicas.code() {
            break error;
        }
        assert!(
            Instant::now() < deadline,
            "the coordinator never completed the commit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(error, ResponseError::InvalidTxnState.code());
    // Transactional records need the producer's transactional id.
    let resp = conn.request(
        9,
        &produce_request(&topic, 0, -1, txn_batch(pid2, epoch2, 1, &["anon"])),
    );
    assert_eq!(
        resp.responses[0].partition_responses[0].error_code,
        ResponseError::TransactionalIdAuthorizationFailed.code()
    );
    assert_eq!(
        latest(&mut conn, &topic, 0),
        5,
        "nothing refused was stored"
    );
    broker.assert_no_panic();
}

/// What another broker (Kafka's partition leaders) sends a coordinator: AddPartitionsToTxn
/// v4+, a batch of transactions to verify (KIP-890 part 1), answered per transaction in
/// the error each version knows. And a TxnOffsetCommit for a group whose offsets partition
/// is not in the transaction is refused (TRANSACTION_ABORTABLE at v4).
#[test]
fn a_coordinator_answers_the_batched_verification_over_the_wire() {
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let (added, other) = (unique_topic("txn-added"), unique_topic("txn-other"));
    ensure_topic(&mut conn, &added);
    ensure_topic(&mut conn, &other);
    let id = "wire-verify";
    let (error, pid, epoch) = init(&mut conn, 5, id, 60_000);
    assert_eq!(error, 0);
    assert_eq!(add_partition(&mut conn, id, pid, epoch, &added), 0);

    let verify = |topics: &[&str]| {
        AddPartitionsToTxnRequest::default().with_transactions(vec![
            AddPartitionsToTxnTransaction::default()
                .with_transactional_id(txn_id(id))
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch)
                .with_verify_only(true)
                .with_topics(
                    topics
                        .iter()
                        .map(|t| {
                            AddPartitionsToTxnTopic::default()
                                .with_name(topic_name(t))
                                .with_partitions(vec![0])
                        })
                        .collect(),
                ),
        ])
    };
    for (version, outside) in [
        (5, ResponseError::TransactionAbortable),
        (4, ResponseError::InvalidTxnState),
    ] {
        let resp = conn.request(version, &verify(&[&added, &other]));
        assert_eq!(resp.error_code, 0, "v{version}");
        assert_eq!(resp.results_by_transaction.len(), 1, "v{version}");
        let result = &resp.results_by_transaction[0];
        assert_eq!(result.transactional_id.0.as_str(), id);
        let codes: Vec<(String, i16)> = result
            .topic_results
            .iter()
            .map(|t| {
                (
                    t.name.0.to_string(),
                    t.results_by_partition[0].partition_error_code,
                )
            })
            .collect();
        assert_eq!(
            codes,
            vec![(added.clone(), 0), (other.clone(), outside.code())],
            "v{version}"
        );
    }

    let commit = TxnOffsetCommitRequest::default()
        .with_transactional_id(txn_id(id))
        .with_group_id(kafka_protocol::messages::GroupId(
            StrBytes::from_static_str("wire-verify-group"),
        ))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_generation_id(-1)
        .with_topics(vec![TxnOffsetCommitRequestTopic::default()
            .with_name(topic_name(&added))
            .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(3)])]);
    for (version, expected) in [
        (4, ResponseError::TransactionAbortable),
        (3, ResponseError::InvalidTxnState),
    ] {
        let resp = conn.request(version, &commit);
        assert_eq!(
            resp.topics[0].partitions[0].error_code,
            expected.code(),
            "TxnOffsetCommit v{version}"
        );
    }
    assert_eq!(end_txn(&mut conn, 4, id, pid, epoch, false), 0);
    broker.assert_no_panic();
}

/// WriteTxnMarkers v1 of one marker for `producer_id` at `producer_epoch` from coordinator
/// epoch `coordinator_epoch`, naming `partitions` of each topic: per (topic, partition),
/// the error code.
fn write_marker(
    conn: &mut KafkaConn,
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    partitions: &[(&str, &[i32])],
) -> Vec<(String, i32, i16)> {
    use kafka_protocol::messages::write_txn_markers_request::{
        WritableTxnMarker, WritableTxnMarkerTopic,
    };
    use kafka_protocol::messages::WriteTxnMarkersRequest;
    let req = WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(producer_epoch)
        .with_transaction_result(commit)
        .with_coordinator_epoch(coordinator_epoch)
        .with_topics(
            partitions
                .iter()
                .map(|(t, ps)| {
                    WritableTxnMarkerTopic::default()
                        .with_name(topic_name(t))
                        .with_partition_indexes(ps.to_vec())
                })
                .collect(),
        )]);
    let resp = conn.request(1, &req);
    assert_eq!(resp.markers.len(), 1);
    assert_eq!(resp.markers[0].producer_id.0, producer_id);
    resp.markers[0]
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.to_string(), p.partition_index, p.error_code))
        })
        .collect()
}

#[test]
fn write_txn_markers_from_another_coordinator_ends_the_transaction_in_the_partitions_led_here() {
    let broker = Broker::start();
    let mut conn = KafkaConn::connect(broker.addr());
    let topic = unique_topic("txn-markers");
    ensure_topic(&mut conn, &topic);
    let id = "raw-tx";
    let (error, pid, epoch) = init(&mut conn, 4, id, 60_000);
    assert_eq!(error, 0);
    assert_eq!(add_partition(&mut conn, id, pid, epoch, &topic), 0);
    assert_eq!(
        produce(&mut conn, &topic, txn_batch(pid, epoch, 0, &["a", "b"])),
        (0, 0)
    );
    assert_eq!(
        latest(&mut conn, &topic, 1),
        0,
        "the open transaction holds the LSO"
    );

    // An abort for the partition, and for partitions that do not exist.
    let answers = write_marker(
        &mut conn,
        pid,
        epoch,
        false,
        0,
        &[(&topic, &[0, 999]), ("no-such-topic", &[0])],
    );
    let unknown = ResponseError::UnknownTopicOrPartition.code();
    assert_eq!(
        answers,
        vec![
            (topic.clone(), 0, 0),
            (topic.clone(), 999, unknown),
            ("no-such-topic".to_string(), 0, unknown),
        ]
    );
    // The marker is at offset 2: the transaction is decided, and aborted.
    assert_eq!(latest(&mut conn, &topic, 1), 3);
    let (lso, aborted, _) = fetch_committed(&mut conn, &topic);
    assert_eq!((lso, aborted), (3, vec![(pid, 0)]));

    // Markers from an older coordinator, or for an older producer epoch, are refused.
    let fenced = write_marker(&mut conn, pid, epoch, true, -1, &[(&topic, &[0])]);
    assert_eq!(
        fenced,
        vec![(
            topic.clone(),
            0,
            ResponseError::TransactionCoordinatorFenced.code()
        )]
    );
    let old_epoch = write_marker(&mut conn, pid, epoch - 1, true, 0, &[(&topic, &[0])]);
    assert_eq!(
        old_epoch,
        vec![(topic.clone(), 0, ResponseError::InvalidProducerEpoch.code())]
    );
    assert_eq!(latest(&mut conn, &topic, 0), 3, "nothing written for them");
    broker.assert_no_panic();
}
