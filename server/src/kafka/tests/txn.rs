//! The transaction APIs through the router, at every version Kafka 3.9 served.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};

use super::*;

const TOPIC: &str = "txn-versions";

async fn create_topic(shard: &Rc<Shard>, name: &str, partitions: i32) {
    let mut t = CreatableTopic::default();
    t.name = topic_name(name);
    t.num_partitions = partitions;
    t.replication_factor = 1;
    let mut r = CreateTopicsRequest::default();
    r.topics = vec![t];
    r.timeout_ms = 5000;
    let answer = call(shard, &r, 5).await;
    assert_eq!(answer.topics[0].error_code, 0, "create {name}");
}

fn tid(id: &str) -> TransactionalId {
    TransactionalId(str_bytes(id))
}

/// A transactional producer's id and epoch; retried while the coordinator loads.
async fn init(shard: &Rc<Shard>, id: &str, version: i16) -> (i64, i16) {
    let mut r = InitProducerIdRequest::default();
    r.transactional_id = Some(tid(id));
    r.transaction_timeout_ms = 60_000;
    r.producer_id = ProducerId(-1);
    r.producer_epoch = -1;
    for _ in 0..500 {
        let answer = call(shard, &r, version).await;
        match answer.error_code {
            0 => return (answer.producer_id.0, answer.producer_epoch),
            c if c == E::CoordinatorLoadInProgress.code()
                || c == E::ConcurrentTransactions.code() =>
            {
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await
            }
            c => panic!("InitProducerId v{version}: error {c}"),
        }
    }
    panic!("InitProducerId v{version}: the coordinator never answered");
}

fn add_topic(name: &str, partitions: &[i32]) -> AddPartitionsToTxnTopic {
    let mut t = AddPartitionsToTxnTopic::default();
    t.name = topic_name(name);
    t.partitions = partitions.to_vec();
    t
}

/// AddPartitionsToTxn v0–v3 (a producer's): the error of each partition.
async fn add_v3(
    shard: &Rc<Shard>,
    version: i16,
    id: &str,
    (pid, epoch): (i64, i16),
    topics: Vec<AddPartitionsToTxnTopic>,
) -> Vec<(String, i32, i16)> {
    let mut r = AddPartitionsToTxnRequest::default();
    r.v3_and_below_transactional_id = tid(id);
    r.v3_and_below_producer_id = ProducerId(pid);
    r.v3_and_below_producer_epoch = epoch;
    r.v3_and_below_topics = topics;
    let answer = call(shard, &r, version).await;
    answer
        .results_by_topic_v3_and_below
        .iter()
        .flat_map(|t| {
            t.results_by_partition.iter().map(|p| {
                (
                    t.name.0.to_string(),
                    p.partition_index,
                    p.partition_error_code,
                )
            })
        })
        .collect()
}

fn txn(
    id: &str,
    (pid, epoch): (i64, i16),
    verify_only: bool,
    topics: Vec<AddPartitionsToTxnTopic>,
) -> AddPartitionsToTxnTransaction {
    let mut t = AddPartitionsToTxnTransaction::default();
    t.transactional_id = tid(id);
    t.producer_id = ProducerId(pid);
    t.producer_epoch = epoch;
    t.verify_only = verify_only;
    t.topics = topics;
    t
}

/// AddPartitionsToTxn v4+ (a broker's): the top-level error, and each transaction's
/// partition errors.
async fn add_batched(
    shard: &Rc<Shard>,
    version: i16,
    transactions: Vec<AddPartitionsToTxnTransaction>,
) -> (i16, Vec<(String, Vec<(String, i32, i16)>)>) {
    let mut r = AddPartitionsToTxnRequest::default();
    r.transactions = transactions;
    let answer = call(shard, &r, version).await;
    let results = answer
        .results_by_transaction
        .iter()
        .map(|t| {
            let partitions = t
                .topic_results
                .iter()
                .flat_map(|topic| {
                    topic.results_by_partition.iter().map(|p| {
                        (
                            topic.name.0.to_string(),
                            p.partition_index,
                            p.partition_error_code,
                        )
                    })
                })
                .collect();
            (t.transactional_id.0.to_string(), partitions)
        })
        .collect();
    (answer.error_code, results)
}

async fn add_offsets(
    shard: &Rc<Shard>,
    version: i16,
    id: &str,
    (pid, epoch): (i64, i16),
    group: &str,
) -> i16 {
    let mut r = AddOffsetsToTxnRequest::default();
    r.transactional_id = tid(id);
    r.producer_id = ProducerId(pid);
    r.producer_epoch = epoch;
    r.group_id = GroupId(str_bytes(group));
    call(shard, &r, version).await.error_code
}

/// TxnOffsetCommit of offset `offset` for partition 0 of [`TOPIC`], without membership
/// (generation -1): the partition's error.
async fn commit_offsets(
    shard: &Rc<Shard>,
    version: i16,
    id: &str,
    (pid, epoch): (i64, i16),
    group: &str,
    offset: i64,
) -> i16 {
    let mut p = TxnOffsetCommitRequestPartition::default();
    p.partition_index = 0;
    p.committed_offset = offset;
    p.committed_leader_epoch = -1;
    let mut t = TxnOffsetCommitRequestTopic::default();
    t.name = topic_name(TOPIC);
    t.partitions = vec![p];
    let mut r = TxnOffsetCommitRequest::default();
    r.transactional_id = tid(id);
    r.group_id = GroupId(str_bytes(group));
    r.producer_id = ProducerId(pid);
    r.producer_epoch = epoch;
    r.generation_id = -1;
    r.topics = vec![t];
    let answer = call(shard, &r, version).await;
    answer.topics[0].partitions[0].error_code
}

/// EndTxn, retried while the previous transaction's markers are being written.
async fn end(shard: &Rc<Shard>, version: i16, id: &str, (pid, epoch): (i64, i16), commit: bool) {
    let mut r = EndTxnRequest::default();
    r.transactional_id = tid(id);
    r.producer_id = ProducerId(pid);
    r.producer_epoch = epoch;
    r.committed = commit;
    let answer = call(shard, &r, version).await;
    assert_eq!(answer.error_code, 0, "EndTxn v{version}");
}

/// The transaction's state name once its markers are all written.
async fn settled_state(shard: &Rc<Shard>, id: &str) -> String {
    let mut r = DescribeTransactionsRequest::default();
    r.transactional_ids = vec![tid(id)];
    for _ in 0..500 {
        let answer = call(shard, &r, 0).await;
        let state = answer.transaction_states[0].transaction_state.to_string();
        if !state.starts_with("Prepare") {
            return state;
        }
        glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{id}: the transaction never completed");
}

/// The committed offset of partition 0 of [`TOPIC`] for `group`, asked with
/// `require_stable` (KIP-447): its error code and offset.
async fn stable_offset(shard: &Rc<Shard>, group: &str) -> (i16, i64) {
    let mut t = OffsetFetchRequestTopic::default();
    t.name = topic_name(TOPIC);
    t.partition_indexes = vec![0];
    let mut r = OffsetFetchRequest::default();
    r.group_id = GroupId(str_bytes(group));
    r.topics = Some(vec![t]);
    r.require_stable = true;
    let answer = call(shard, &r, 7).await;
    let p = &answer.topics[0].partitions[0];
    (p.error_code, p.committed_offset)
}

#[test]
fn a_transaction_commits_at_every_version_of_its_apis() {
    with_shard(|shard| async move {
        create_topic(&shard, TOPIC, 2).await;
        // One whole transaction per version, each API at the version or its newest below.
        for v in 0..=5i16 {
            let id = format!("every-v{v}");
            let group = format!("every-group-v{v}");
            let at = |key: ApiKey| v.min(route_for(key as i16).expect("routed").max_version);
            let producer = init(&shard, &id, at(ApiKey::InitProducerId)).await;
            let added = if v < 4 {
                add_v3(&shard, v, &id, producer, vec![add_topic(TOPIC, &[0, 1])]).await
            } else {
                // The batched form adds too (KIP-890 part 2's brokers use it so).
                let (top, mut results) = add_batched(
                    &shard,
                    v,
                    vec![txn(&id, producer, false, vec![add_topic(TOPIC, &[0, 1])])],
                )
                .await;
                assert_eq!(top, 0, "v{v}");
                let (named, partitions) = results.remove(0);
                assert_eq!(named, id);
                partitions
            };
            assert_eq!(
                added,
                vec![(TOPIC.to_string(), 0, 0), (TOPIC.to_string(), 1, 0)],
                "AddPartitionsToTxn v{v}"
            );
            let av = at(ApiKey::AddOffsetsToTxn);
            assert_eq!(
                add_offsets(&shard, av, &id, producer, &group).await,
                0,
                "AddOffsetsToTxn v{av}"
            );
            let cv = at(ApiKey::TxnOffsetCommit);
            assert_eq!(
                commit_offsets(&shard, cv, &id, producer, &group, 40 + v as i64).await,
                0,
                "TxnOffsetCommit v{cv}"
            );
            end(&shard, at(ApiKey::EndTxn), &id, producer, true).await;
            assert_eq!(settled_state(&shard, &id).await, "CompleteCommit", "v{v}");
            assert_eq!(
                stable_offset(&shard, &group).await,
                (0, 40 + v as i64),
                "the offsets committed at v{v} reached the group"
            );
        }
    });
}

#[test]
fn the_batched_form_verifies_without_adding_and_adds_when_asked() {
    with_shard(|shard| async move {
        create_topic(&shard, TOPIC, 2).await;
        let producer = init(&shard, "batched", 5).await;
        let (pid, epoch) = producer;
        let other = init(&shard, "batched-other", 5).await;
        // v5: an addition and a verification of another producer in one request, answered
        // per transaction.
        let (top, results) = add_batched(
            &shard,
            5,
            vec![
                txn("batched", producer, false, vec![add_topic(TOPIC, &[0])]),
                txn("batched-other", other, true, vec![add_topic(TOPIC, &[0])]),
            ],
        )
        .await;
        assert_eq!(top, 0);
        assert_eq!(
            results,
            vec![
                ("batched".into(), vec![(TOPIC.into(), 0, 0)]),
                (
                    "batched-other".into(),
                    vec![(TOPIC.into(), 0, E::TransactionAbortable.code())]
                ),
            ]
        );
        // Verification answers per partition and writes nothing.
        for _ in 0..2 {
            let (top, results) = add_batched(
                &shard,
                5,
                vec![txn(
                    "batched",
                    producer,
                    true,
                    vec![add_topic(TOPIC, &[0, 1])],
                )],
            )
            .await;
            assert_eq!(top, 0);
            assert_eq!(
                results[0].1,
                vec![
                    (TOPIC.into(), 0, 0),
                    (TOPIC.into(), 1, E::TransactionAbortable.code())
                ]
            );
        }
        // v4 callers predate TRANSACTION_ABORTABLE: INVALID_TXN_STATE, as the coordinators
        // of their time answered.
        let (_, results) = add_batched(
            &shard,
            4,
            vec![txn(
                "batched",
                producer,
                true,
                vec![add_topic(TOPIC, &[0, 1])],
            )],
        )
        .await;
        assert_eq!(
            results[0].1,
            vec![
                (TOPIC.into(), 0, 0),
                (TOPIC.into(), 1, E::InvalidTxnState.code())
            ]
        );
        // The producer's own errors, per transaction.
        let (top, results) = add_batched(
            &shard,
            5,
            vec![
                txn(
                    "batched",
                    (pid, epoch + 1),
                    true,
                    vec![add_topic(TOPIC, &[0])],
                ),
                txn("nobody", (pid, epoch), true, vec![add_topic(TOPIC, &[0])]),
                txn("", (pid, epoch), true, vec![add_topic(TOPIC, &[0])]),
                txn(
                    "batched-other",
                    other,
                    true,
                    vec![add_topic(TOPIC, &[0]), add_topic("no-such-topic", &[0])],
                ),
            ],
        )
        .await;
        assert_eq!(top, 0);
        let codes: Vec<Vec<i16>> = results
            .iter()
            .map(|(_, ps)| ps.iter().map(|p| p.2).collect())
            .collect();
        assert_eq!(
            codes,
            vec![
                vec![E::ProducerFenced.code()],
                vec![E::InvalidProducerIdMapping.code()],
                vec![E::InvalidRequest.code()],
                vec![
                    E::OperationNotAttempted.code(),
                    E::UnknownTopicOrPartition.code()
                ],
            ]
        );
        // Brokers may name internal topics (a group coordinator verifies the offsets
        // partition of a TxnOffsetCommit); producers may not.
        assert_eq!(add_offsets(&shard, 4, "batched", producer, "g").await, 0);
        let offsets_partition = wharf_protocol::offsets_topic::partition_for_group(
            "g",
            shard.config.offsets_topic_num_partitions.max(1) as u32,
        );
        let (_, results) = add_batched(
            &shard,
            5,
            vec![txn(
                "batched",
                producer,
                true,
                vec![add_topic("__consumer_offsets", &[offsets_partition])],
            )],
        )
        .await;
        assert_eq!(
            results[0].1,
            vec![("__consumer_offsets".into(), offsets_partition, 0)]
        );
        assert_eq!(
            add_v3(
                &shard,
                3,
                "batched",
                producer,
                vec![add_topic("__consumer_offsets", &[offsets_partition])]
            )
            .await,
            vec![(
                "__consumer_offsets".into(),
                offsets_partition,
                E::TopicAuthorizationFailed.code()
            )]
        );
        // A request naming a transactional id twice has no answer per id: refused whole.
        let (top, results) = add_batched(
            &shard,
            5,
            vec![
                txn("batched", producer, true, vec![add_topic(TOPIC, &[0])]),
                txn("batched", producer, true, vec![add_topic(TOPIC, &[1])]),
            ],
        )
        .await;
        assert_eq!((top, results.len()), (E::InvalidRequest.code(), 0));
        end(&shard, 4, "batched", producer, false).await;
        assert_eq!(settled_state(&shard, "batched").await, "CompleteAbort");
    });
}

#[test]
fn offsets_outside_the_transaction_are_refused_in_the_error_each_version_knows() {
    with_shard(|shard| async move {
        create_topic(&shard, TOPIC, 1).await;
        let producer = init(&shard, "stray", 4).await;
        // No AddOffsetsToTxn: the group's offsets partition is not in the transaction.
        for (version, expected) in [
            (4, E::TransactionAbortable),
            (3, E::InvalidTxnState),
            (2, E::InvalidTxnState),
            (0, E::InvalidTxnState),
        ] {
            assert_eq!(
                commit_offsets(&shard, version, "stray", producer, "stray-group", 7).await,
                expected.code(),
                "TxnOffsetCommit v{version}"
            );
        }
        // Nothing was written: no transaction holds the offsets partition, so a stable
        // fetch is answered at once.
        assert_eq!(stable_offset(&shard, "stray-group").await, (0, -1));
        // An epoch other than the current one is INVALID_PRODUCER_EPOCH, as for Produce.
        let (pid, epoch) = producer;
        assert_eq!(
            commit_offsets(&shard, 4, "stray", (pid, epoch + 1), "stray-group", 7).await,
            E::InvalidProducerEpoch.code()
        );
        // Added, the commit goes through; once the transaction ended, a late commit is
        // refused again.
        assert_eq!(
            add_offsets(&shard, 4, "stray", producer, "stray-group").await,
            0
        );
        assert_eq!(
            commit_offsets(&shard, 4, "stray", producer, "stray-group", 8).await,
            0
        );
        end(&shard, 4, "stray", producer, true).await;
        assert_eq!(settled_state(&shard, "stray").await, "CompleteCommit");
        assert_eq!(
            commit_offsets(&shard, 4, "stray", producer, "stray-group", 9).await,
            E::TransactionAbortable.code()
        );
        assert_eq!(stable_offset(&shard, "stray-group").await, (0, 8));
    });
}
