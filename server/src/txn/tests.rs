//! The transaction coordinator driven deterministically: requests, explicit time, a log
//! that takes (or refuses) every append, and markers answered by hand.

use kafka_protocol::error::ResponseError as E;
use wharf_protocol::txn::control::TransactionResult;
use wharf_protocol::txn::log::{
    TransactionLogRecord, TransactionLogValue, TransactionState as S, TxnTopicPartitions,
};

use super::*;

const TIMEOUT_MS: i32 = 60_000;

struct Harness {
    c: TxnCoordinator,
    now: i64,
    next_token: Token,
    /// Every record the coordinator appended successfully, in order.
    log: Vec<TransactionLogRecord>,
    /// Marker requests waiting for an answer.
    markers: Vec<MarkerRequest>,
    /// When set, appends fail with this error instead of going into the log.
    fail_appends: Option<E>,
    replies: Vec<Reply>,
}

fn config() -> TxnConfig {
    TxnConfig {
        transaction_state_log_num_partitions: 1,
        ..TxnConfig::default()
    }
}

impl Harness {
    fn new() -> Harness {
        let mut c = TxnCoordinator::new(config(), 0);
        c.add_producer_ids(1000, 1000);
        let mut h = Harness {
            c,
            now: 1_000_000,
            next_token: 1,
            log: Vec::new(),
            markers: Vec::new(),
            fail_appends: None,
            replies: Vec::new(),
        };
        let fx = h.c.load(h.now, 1, &[]);
        h.carry(fx);
        h
    }

    /// Carries out effects: appends go to the log at once (or fail), markers wait.
    fn carry(&mut self, fx: Effects) {
        let mut queue = vec![fx];
        while let Some(fx) = queue.pop() {
            self.replies.extend(fx.replies);
            self.markers.extend(fx.markers);
            for append in fx.appends {
                let result = match self.fail_appends {
                    Some(error) => Err(error),
                    None => {
                        self.log.push(append.record.clone());
                        Ok(())
                    }
                };
                queue.push(self.c.append_done(self.now, append.id, result));
            }
        }
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        self.next_token
    }

    fn reply(&mut self, token: Token) -> Reply {
        let at = self
            .replies
            .iter()
            .position(|r| r.token() == token)
            .expect("the request was answered");
        self.replies.remove(at)
    }

    fn init_with(
        &mut self,
        id: &str,
        timeout_ms: i32,
        pid: i64,
        epoch: i16,
        version: i16,
    ) -> InitProducerIdResult {
        let token = self.token();
        let fx = self.c.init_producer_id(
            self.now,
            token,
            InitProducerIdRequest {
                transactional_id: Some(id.to_owned()),
                transaction_timeout_ms: timeout_ms,
                producer_id: pid,
                producer_epoch: epoch,
                version,
            },
        );
        self.carry(fx);
        match self.reply(token) {
            Reply::InitProducerId(_, r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn init(&mut self, id: &str) -> InitProducerIdResult {
        self.init_with(id, TIMEOUT_MS, -1, -1, 4)
    }

    fn add_with(
        &mut self,
        id: &str,
        pid: i64,
        epoch: i16,
        parts: &[(&str, i32)],
        version: i16,
        verify_only: bool,
    ) -> Vec<(TopicPartition, ErrorCode)> {
        let token = self.token();
        let fx = self.c.add_partitions(
            self.now,
            token,
            AddPartitionsRequest {
                transactional_id: id.to_owned(),
                producer_id: pid,
                producer_epoch: epoch,
                partitions: parts
                    .iter()
                    .map(|(t, p)| TopicPartition::new(t, *p))
                    .collect(),
                verify_only,
                version,
            },
            &|tp| tp.topic != "missing",
        );
        self.carry(fx);
        match self.reply(token) {
            Reply::AddPartitions(_, r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn add(&mut self, id: &str, pid: i64, epoch: i16, parts: &[(&str, i32)]) -> ErrorCode {
        let results = self.add_with(id, pid, epoch, parts, 3, false);
        let first = results[0].1;
        assert!(results.iter().all(|(_, e)| *e == first), "{results:?}");
        first
    }

    fn end_with(
        &mut self,
        id: &str,
        pid: i64,
        epoch: i16,
        commit: bool,
        version: i16,
    ) -> ErrorCode {
        let token = self.token();
        let fx = self.c.end_txn(
            self.now,
            token,
            EndTxnRequest {
                transactional_id: id.to_owned(),
                producer_id: pid,
                producer_epoch: epoch,
                committed: commit,
                version,
            },
        );
        self.carry(fx);
        match self.reply(token) {
            Reply::EndTxn(_, e) => e,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn end(&mut self, id: &str, pid: i64, epoch: i16, commit: bool) -> ErrorCode {
        self.end_with(id, pid, epoch, commit, 3)
    }

    /// Answers every waiting marker request with `outcome` for each partition.
    fn answer_markers(&mut self, outcome: MarkerOutcome) {
        for request in std::mem::take(&mut self.markers) {
            let outcomes: Vec<_> = request
                .partitions
                .iter()
                .map(|tp| (tp.clone(), outcome.clone()))
                .collect();
            let fx = self.c.markers_done(self.now, &request, &outcomes);
            self.carry(fx);
        }
    }

    fn tick_at(&mut self, now: i64) {
        self.now = now;
        let fx = self.c.tick(now);
        self.carry(fx);
    }

    fn last_value(&self) -> &TransactionLogValue {
        self.log
            .last()
            .and_then(|r| r.value.as_ref())
            .expect("a value was logged")
    }

    fn states(&self) -> Vec<S> {
        self.log
            .iter()
            .filter_map(|r| r.value.as_ref().map(|v| v.state))
            .collect()
    }

    fn state(&self, id: &str) -> S {
        self.c.transaction(id).expect("known id").state
    }
}

fn ok(pid: i64, epoch: i16) -> InitProducerIdResult {
    InitProducerIdResult {
        error: None,
        producer_id: pid,
        producer_epoch: epoch,
    }
}

fn err(error: E) -> InitProducerIdResult {
    InitProducerIdResult {
        error: Some(error),
        producer_id: -1,
        producer_epoch: -1,
    }
}

#[test]
fn init_gives_a_new_id_epoch_zero_then_bumps_the_epoch() {
    let mut h = Harness::new();
    assert_eq!(h.init("tx"), ok(1000, 0));
    assert_eq!(h.init("tx"), ok(1000, 1));
    assert_eq!(h.init("other"), ok(1001, 0));
    assert_eq!(h.states(), vec![S::Empty; 3]);
    let v = h.last_value();
    assert_eq!(
        (v.producer_id, v.producer_epoch, v.partitions.clone()),
        (1001, 0, None)
    );
}

#[test]
fn init_rejects_bad_requests_as_kafka_does() {
    let mut h = Harness::new();
    assert_eq!(
        h.init_with("tx", 0, -1, -1, 4),
        err(E::InvalidTransactionTimeout)
    );
    assert_eq!(
        h.init_with("tx", 900_001, -1, -1, 4),
        err(E::InvalidTransactionTimeout)
    );
    assert_eq!(
        h.init_with("", TIMEOUT_MS, -1, -1, 4),
        err(E::InvalidRequest)
    );
    assert_eq!(
        h.init_with("tx", TIMEOUT_MS, 5, -1, 4),
        err(E::InvalidRequest)
    );
    assert_eq!(
        h.init_with("tx", TIMEOUT_MS, -1, 5, 4),
        err(E::InvalidRequest)
    );
    assert!(h.log.is_empty());
}

#[test]
fn an_idempotent_producer_gets_a_fresh_id_at_epoch_zero() {
    let mut h = Harness::new();
    let token = h.token();
    let fx = h.c.init_producer_id(
        h.now,
        token,
        InitProducerIdRequest {
            transactional_id: None,
            transaction_timeout_ms: -1,
            producer_id: -1,
            producer_epoch: -1,
            version: 4,
        },
    );
    assert!(fx.appends.is_empty());
    h.carry(fx);
    assert_eq!(h.reply(token), Reply::InitProducerId(token, ok(1000, 0)));
}

#[test]
fn without_producer_ids_init_is_retriable_and_asks_for_a_block() {
    let mut c = TxnCoordinator::new(config(), 0);
    let fx = c.load(0, 1, &[]);
    assert!(fx.want_producer_ids);
    let fx = c.init_producer_id(
        0,
        7,
        InitProducerIdRequest {
            transactional_id: Some("tx".into()),
            transaction_timeout_ms: TIMEOUT_MS,
            producer_id: -1,
            producer_epoch: -1,
            version: 4,
        },
    );
    assert_eq!(
        fx.replies,
        vec![Reply::InitProducerId(7, err(E::CoordinatorLoadInProgress))]
    );
    c.add_producer_ids(50, 10);
    let fx = c.init_producer_id(
        0,
        8,
        InitProducerIdRequest {
            transactional_id: Some("tx".into()),
            transaction_timeout_ms: TIMEOUT_MS,
            producer_id: -1,
            producer_epoch: -1,
            version: 4,
        },
    );
    assert_eq!(fx.appends.len(), 1);
}

#[test]
fn a_coordinator_that_is_not_active_says_so() {
    let mut c = TxnCoordinator::new(config(), 0);
    c.add_producer_ids(0, 10);
    let req = || InitProducerIdRequest {
        transactional_id: Some("tx".into()),
        transaction_timeout_ms: TIMEOUT_MS,
        producer_id: -1,
        producer_epoch: -1,
        version: 4,
    };
    let fx = c.init_producer_id(0, 1, req());
    assert_eq!(
        fx.replies,
        vec![Reply::InitProducerId(1, err(E::NotCoordinator))]
    );
    c.begin_load(3);
    let fx = c.init_producer_id(0, 2, req());
    assert_eq!(
        fx.replies,
        vec![Reply::InitProducerId(2, err(E::CoordinatorLoadInProgress))]
    );
    assert_eq!(c.describe("tx").error, Some(E::CoordinatorLoadInProgress));
    assert_eq!(
        c.list(0, &ListTransactionsFilter::default()).error,
        Some(E::CoordinatorLoadInProgress)
    );
    // An id of another partition is not this coordinator's.
    let mut c = TxnCoordinator::new(
        TxnConfig {
            transaction_state_log_num_partitions: 50,
            ..TxnConfig::default()
        },
        0,
    );
    c.load(0, 1, &[]);
    let id = (0..)
        .map(|i| format!("id-{i}"))
        .find(|id| wharf_protocol::txn::log::partition_for_transactional_id(id, 50) != 0)
        .expect("some id maps elsewhere");
    assert_eq!(c.describe(&id).error, Some(E::NotCoordinator));
}

#[test]
fn a_commit_logs_prepare_then_writes_markers_then_logs_completion() {
    let mut h = Harness::new();
    let p = h.init("tx");
    assert_eq!(h.add("tx", p.producer_id, 0, &[("t", 0), ("t", 1)]), None);
    assert_eq!(h.state("tx"), S::Ongoing);
    let v = h.last_value();
    assert_eq!(v.state, S::Ongoing);
    assert_eq!(
        v.partitions,
        Some(vec![TxnTopicPartitions {
            topic: "t".into(),
            partitions: vec![0, 1]
        }])
    );
    assert_eq!(v.start_timestamp_ms, h.now);
    // Already in the transaction: answered at once, nothing logged.
    let logged = h.log.len();
    assert_eq!(h.add("tx", p.producer_id, 0, &[("t", 1)]), None);
    assert_eq!(h.log.len(), logged);

    h.now += 5;
    assert_eq!(
        h.end("tx", p.producer_id, 0, true),
        None,
        "answered once PrepareCommit is logged"
    );
    assert_eq!(h.state("tx"), S::PrepareCommit);
    assert_eq!(
        h.markers,
        vec![MarkerRequest {
            transactional_id: "tx".into(),
            producer_id: p.producer_id,
            producer_epoch: 0,
            coordinator_epoch: 1,
            result: TransactionResult::Commit,
            partitions: vec![TopicPartition::new("t", 0), TopicPartition::new("t", 1)],
        }]
    );
    // While markers are written the completion is pending: both outcomes are refused as
    // concurrent (Kafka checks the pending transition before the state).
    assert_eq!(
        h.end("tx", p.producer_id, 0, true),
        Some(E::ConcurrentTransactions)
    );
    assert_eq!(
        h.end("tx", p.producer_id, 0, false),
        Some(E::ConcurrentTransactions)
    );
    assert_eq!(
        h.c.describe("tx").topics,
        vec![("t".to_owned(), vec![0, 1])]
    );
    h.answer_markers(MarkerOutcome::Written);
    assert_eq!(h.state("tx"), S::CompleteCommit);
    assert_eq!(
        h.states(),
        vec![S::Empty, S::Ongoing, S::PrepareCommit, S::CompleteCommit]
    );
    let v = h.last_value();
    assert_eq!(v.partitions, Some(vec![]));
    // A retry of the commit after it completed succeeds; an abort does not.
    assert_eq!(h.end("tx", p.producer_id, 0, true), None);
    assert_eq!(
        h.end("tx", p.producer_id, 0, false),
        Some(E::InvalidTxnState)
    );
    // The next transaction starts afresh.
    h.now += 5;
    assert_eq!(h.add("tx", p.producer_id, 0, &[("t", 2)]), None);
    assert_eq!(h.last_value().start_timestamp_ms, h.now);
}

#[test]
fn end_txn_errors_are_kafkas() {
    let mut h = Harness::new();
    assert_eq!(
        h.end("nobody", 1, 0, true),
        Some(E::InvalidProducerIdMapping)
    );
    let p = h.init("tx");
    assert_eq!(
        h.end("tx", p.producer_id, 0, true),
        Some(E::InvalidTxnState),
        "nothing open"
    );
    assert_eq!(
        h.end("tx", p.producer_id + 1, 0, true),
        Some(E::InvalidProducerIdMapping)
    );
    h.init("tx"); // epoch 1 fences epoch 0
    assert_eq!(
        h.end_with("tx", p.producer_id, 0, true, 2),
        Some(E::ProducerFenced)
    );
    assert_eq!(
        h.end_with("tx", p.producer_id, 0, true, 1),
        Some(E::InvalidProducerEpoch)
    );
    assert_eq!(
        h.end_with("", p.producer_id, 0, true, 1),
        Some(E::InvalidRequest)
    );
}

#[test]
fn add_partitions_errors_are_kafkas() {
    let mut h = Harness::new();
    assert_eq!(
        h.add("nobody", 1, 0, &[("t", 0)]),
        Some(E::InvalidProducerIdMapping)
    );
    let p = h.init("tx");
    assert_eq!(
        h.add("tx", p.producer_id + 1, 0, &[("t", 0)]),
        Some(E::InvalidProducerIdMapping)
    );
    assert_eq!(
        h.add("tx", p.producer_id, 1, &[("t", 0)]),
        Some(E::ProducerFenced)
    );
    assert_eq!(
        h.add_with("tx", p.producer_id, 1, &[("t", 0)], 1, false),
        vec![(TopicPartition::new("t", 0), Some(E::InvalidProducerEpoch))]
    );
    // An unknown partition fails the whole transaction; the rest are not attempted.
    assert_eq!(
        h.add_with(
            "tx",
            p.producer_id,
            0,
            &[("t", 0), ("missing", 0)],
            3,
            false
        ),
        vec![
            (TopicPartition::new("t", 0), Some(E::OperationNotAttempted)),
            (
                TopicPartition::new("missing", 0),
                Some(E::UnknownTopicOrPartition)
            ),
        ]
    );
    // Clients may not add internal topics directly.
    assert_eq!(
        h.add_with(
            "tx",
            p.producer_id,
            0,
            &[("__consumer_offsets", 3)],
            3,
            false
        ),
        vec![(
            TopicPartition::new("__consumer_offsets", 3),
            Some(E::TopicAuthorizationFailed)
        )]
    );
    assert_eq!(h.add("tx", p.producer_id, 0, &[("t", 0)]), None);
    assert_eq!(h.end("tx", p.producer_id, 0, false), None);
    assert_eq!(
        h.add("tx", p.producer_id, 0, &[("t", 1)]),
        Some(E::ConcurrentTransactions)
    );
}

#[test]
fn add_offsets_adds_the_groups_offsets_partition() {
    let mut h = Harness::new();
    let p = h.init("tx");
    let token = h.token();
    let fx = h.c.add_offsets(
        h.now,
        token,
        AddOffsetsRequest {
            transactional_id: "tx".into(),
            producer_id: p.producer_id,
            producer_epoch: 0,
            group_id: "my-group".into(),
            version: 3,
        },
    );
    h.carry(fx);
    assert_eq!(h.reply(token), Reply::AddOffsets(token, None));
    let partition = wharf_protocol::offsets_topic::partition_for_group("my-group", 50);
    assert!(h
        .c
        .transaction("tx")
        .unwrap()
        .partitions
        .contains(&TopicPartition::new("__consumer_offsets", partition)));
    let fx = h.c.add_offsets(
        h.now,
        99,
        AddOffsetsRequest {
            transactional_id: "tx".into(),
            producer_id: p.producer_id,
            producer_epoch: 7,
            group_id: "my-group".into(),
            version: 1,
        },
    );
    assert_eq!(
        fx.replies,
        vec![Reply::AddOffsets(99, Some(E::InvalidProducerEpoch))]
    );
}

#[test]
fn an_id_whose_init_never_reached_the_log_has_no_producer() {
    let mut h = Harness::new();
    h.fail_appends = Some(E::NotLeaderOrFollower);
    assert_eq!(h.init("tx"), err(E::NotCoordinator));
    h.fail_appends = None;
    let meta =
        h.c.transaction("tx")
            .expect("kept in memory, as Kafka does");
    assert_eq!(meta.producer_epoch, -1);
    assert_eq!(
        h.add("tx", meta.producer_id, -1, &[("t", 0)]),
        Some(E::InvalidProducerIdMapping)
    );
    assert_eq!(h.init("tx"), ok(1000, 0));
}

#[test]
fn init_during_an_open_transaction_fences_aborts_and_asks_to_retry() {
    let mut h = Harness::new();
    let old = h.init("tx");
    h.add("tx", old.producer_id, 0, &[("t", 0)]);
    assert_eq!(h.init("tx"), err(E::ConcurrentTransactions));
    assert_eq!(
        h.init_with("tx", TIMEOUT_MS, -1, -1, 3),
        err(E::ConcurrentTransactions)
    );
    let v = h.last_value();
    assert_eq!(
        (v.state, v.producer_epoch),
        (S::PrepareAbort, 1),
        "aborted under a bumped epoch"
    );
    assert_eq!(h.markers[0].result, TransactionResult::Abort);
    assert_eq!(h.markers[0].producer_epoch, 1);
    // The old producer is fenced at once.
    assert_eq!(
        h.add("tx", old.producer_id, 0, &[("t", 1)]),
        Some(E::ProducerFenced)
    );
    assert_eq!(
        h.end("tx", old.producer_id, 0, true),
        Some(E::ProducerFenced)
    );
    h.answer_markers(MarkerOutcome::Written);
    assert_eq!(h.state("tx"), S::CompleteAbort);
    assert_eq!(h.init("tx"), ok(old.producer_id, 2));
}

#[test]
fn a_failed_fencing_append_does_not_bump_the_epoch_twice() {
    let mut h = Harness::new();
    let old = h.init("tx");
    h.add("tx", old.producer_id, 0, &[("t", 0)]);
    h.fail_appends = Some(E::RequestTimedOut);
    assert_eq!(h.init("tx"), err(E::CoordinatorNotAvailable));
    // The old producer is fenced even though the abort is not logged (as in Kafka).
    assert_eq!(
        h.add("tx", old.producer_id, 0, &[("t", 1)]),
        Some(E::ProducerFenced)
    );
    h.fail_appends = None;
    assert_eq!(h.init("tx"), err(E::ConcurrentTransactions));
    assert_eq!(h.last_value().producer_epoch, 1);
    h.answer_markers(MarkerOutcome::Written);
    assert_eq!(h.init("tx"), ok(old.producer_id, 2));
}

#[test]
fn a_producer_keeping_its_id_after_an_error_gets_a_bump_and_its_retry_the_same() {
    // KIP-360: InitProducerId v3+ with the producer's id and epoch.
    let mut h = Harness::new();
    let p = h.init("tx");
    h.init("tx"); // epoch 1
    assert_eq!(
        h.init_with("tx", TIMEOUT_MS, p.producer_id, 1, 4),
        ok(p.producer_id, 2)
    );
    // The answer was lost; the same request again gets the same epoch.
    assert_eq!(
        h.init_with("tx", TIMEOUT_MS, p.producer_id, 1, 4),
        ok(p.producer_id, 2)
    );
    // A stale producer with an older epoch is fenced.
    assert_eq!(
        h.init_with("tx", TIMEOUT_MS, p.producer_id, 0, 4),
        err(E::ProducerFenced)
    );
    assert_eq!(
        h.init_with("tx", TIMEOUT_MS, p.producer_id, 0, 3),
        err(E::InvalidProducerEpoch)
    );
    // Another producer id entirely.
    assert_eq!(
        h.init_with("tx", TIMEOUT_MS, 77, 0, 4),
        err(E::ProducerFenced)
    );
    // A new instance (no id) fences the last epoch: the retry is no longer recognised.
    assert_eq!(h.init("tx"), ok(p.producer_id, 3));
    assert_eq!(
        h.init_with("tx", TIMEOUT_MS, p.producer_id, 1, 4),
        err(E::ProducerFenced)
    );
}

fn value(
    pid: i64,
    epoch: i16,
    state: S,
    partitions: &[(&str, i32)],
    start: i64,
) -> TransactionLogValue {
    TransactionLogValue {
        version: 0,
        producer_id: pid,
        previous_producer_id: -1,
        next_producer_id: -1,
        producer_epoch: epoch,
        transaction_timeout_ms: TIMEOUT_MS,
        state,
        partitions: if state == S::Empty {
            None
        } else {
            Some(
                partitions
                    .iter()
                    .map(|(t, p)| TxnTopicPartitions {
                        topic: t.to_string(),
                        partitions: vec![*p],
                    })
                    .collect(),
            )
        },
        last_update_timestamp_ms: 5,
        start_timestamp_ms: start,
        client_transaction_version: 0,
    }
}

fn record(id: &str, value: Option<TransactionLogValue>) -> TransactionLogRecord {
    TransactionLogRecord {
        transactional_id: id.into(),
        value,
    }
}

#[test]
fn exhausted_epochs_rotate_to_a_new_producer_id() {
    let mut h = Harness::new();
    let fx = h.c.load(
        h.now,
        2,
        &[record(
            "tx",
            Some(value(7, i16::MAX - 1, S::CompleteCommit, &[], 1)),
        )],
    );
    h.carry(fx);
    assert_eq!(h.init("tx"), ok(1000, 0));
    let meta = h.c.transaction("tx").unwrap();
    assert_eq!((meta.last_producer_id, meta.last_producer_epoch), (7, -1));
    // A producer that kept its id at the exhausted epoch retries: rotated, and its retry
    // recognised by the last producer id.
    let fx = h.c.load(
        h.now,
        3,
        &[record(
            "tx",
            Some(value(7, i16::MAX - 1, S::Empty, &[], -1)),
        )],
    );
    h.carry(fx);
    assert_eq!(
        h.init_with("tx", TIMEOUT_MS, 7, i16::MAX - 1, 4),
        ok(1001, 0)
    );
    assert_eq!(
        h.init_with("tx", TIMEOUT_MS, 7, i16::MAX - 1, 4),
        ok(1001, 0)
    );
}

#[test]
fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
    let mut h = Harness::new();
    let p = h.init_with("tx", 20_000, -1, -1, 4);
    h.add("tx", p.producer_id, 0, &[("t", 0)]);
    let start = h.now;
    h.tick_at(start + 10_000);
    assert_eq!(h.state("tx"), S::Ongoing);
    h.tick_at(start + 30_000); // the check runs every 10 s; the timeout passed at 20 s
    assert_eq!(h.state("tx"), S::PrepareAbort);
    assert_eq!(h.last_value().producer_epoch, 1);
    h.answer_markers(MarkerOutcome::Written);
    assert_eq!(h.state("tx"), S::CompleteAbort);
    assert_eq!(h.end("tx", p.producer_id, 0, true), Some(E::ProducerFenced));
    assert_eq!(h.init("tx"), ok(p.producer_id, 2));
}

#[test]
fn idle_transactional_ids_expire_with_a_tombstone() {
    let mut h = Harness::new();
    let p = h.init("tx");
    h.add("tx", p.producer_id, 0, &[("t", 0)]);
    h.init("idle");
    let week = 7 * 24 * 3600 * 1000;
    h.tick_at(h.now + week + 3_600_000);
    // The open transaction timed out long ago (aborted, not expired yet: just updated).
    assert_eq!(h.state("tx"), S::PrepareAbort);
    assert!(h.c.transaction("idle").is_none());
    assert_eq!(
        h.log
            .last()
            .map(|r| (r.transactional_id.as_str(), r.value.is_none())),
        Some(("idle", true))
    );
    assert_eq!(h.c.describe("idle").error, Some(E::TransactionalIdNotFound));
}

#[test]
fn loading_resumes_unfinished_commits_with_the_new_coordinator_epoch() {
    let mut h = Harness::new();
    let records = vec![
        record("a", Some(value(1, 0, S::Ongoing, &[("t", 0)], 3))),
        record(
            "a",
            Some(value(1, 0, S::PrepareCommit, &[("t", 0), ("u", 1)], 3)),
        ),
        record("b", Some(value(2, 4, S::PrepareAbort, &[("t", 0)], 3))),
        record("c", Some(value(3, 0, S::Empty, &[], -1))),
        record("c", None),
    ];
    let fx = h.c.load(h.now, 9, &records);
    assert_eq!(fx.markers.len(), 2);
    assert!(fx.markers.iter().all(|m| m.coordinator_epoch == 9));
    h.carry(fx);
    assert!(h.c.transaction("c").is_none(), "the tombstone removed it");
    assert_eq!(h.end("a", 1, 0, true), Some(E::ConcurrentTransactions));
    h.answer_markers(MarkerOutcome::Written);
    assert_eq!(h.state("a"), S::CompleteCommit);
    assert_eq!(h.state("b"), S::CompleteAbort);
    assert_eq!(h.end("a", 1, 0, true), None);
}

#[test]
fn marker_failures_are_retried_and_deleted_partitions_skipped() {
    let mut h = Harness::new();
    let p = h.init("tx");
    h.add("tx", p.producer_id, 0, &[("t", 0), ("t", 1), ("gone", 0)]);
    h.end("tx", p.producer_id, 0, true);
    let request = h.markers.pop().unwrap();
    let fx = h.c.markers_done(
        h.now,
        &request,
        &[
            (TopicPartition::new("t", 0), MarkerOutcome::Written),
            (
                TopicPartition::new("t", 1),
                MarkerOutcome::Failed(E::NotLeaderOrFollower),
            ),
            (TopicPartition::new("gone", 0), MarkerOutcome::PartitionGone),
        ],
    );
    h.carry(fx);
    assert!(
        h.markers.is_empty(),
        "retried after the backoff, not at once"
    );
    assert_eq!(h.c.next_deadline_ms(), Some(h.now + 100));
    h.tick_at(h.now + 100);
    assert_eq!(h.markers.len(), 1);
    assert_eq!(h.markers[0].partitions, vec![TopicPartition::new("t", 1)]);
    // An answer for another coordinator epoch is ignored.
    let mut stale = h.markers[0].clone();
    stale.coordinator_epoch = 0;
    let fx = h.c.markers_done(
        h.now,
        &stale,
        &[(TopicPartition::new("t", 1), MarkerOutcome::Written)],
    );
    assert!(fx.is_empty());
    assert_eq!(h.state("tx"), S::PrepareCommit);
    h.answer_markers(MarkerOutcome::Written);
    assert_eq!(h.state("tx"), S::CompleteCommit);
}

#[test]
fn a_failed_completion_record_is_written_again() {
    let mut h = Harness::new();
    let p = h.init("tx");
    h.add("tx", p.producer_id, 0, &[("t", 0)]);
    h.end("tx", p.producer_id, 0, false);
    h.fail_appends = Some(E::NotEnoughReplicas);
    h.answer_markers(MarkerOutcome::Written);
    assert_eq!(h.state("tx"), S::PrepareAbort);
    h.fail_appends = None;
    h.tick_at(h.now + 100);
    assert_eq!(h.state("tx"), S::CompleteAbort);
}

#[test]
fn verification_answers_whether_partitions_are_in_the_transaction() {
    let mut h = Harness::new();
    let p = h.init("tx");
    h.add("tx", p.producer_id, 0, &[("t", 0)]);
    let logged = h.log.len();
    assert_eq!(
        h.add_with("tx", p.producer_id, 0, &[("t", 0), ("t", 1)], 5, true),
        vec![
            (TopicPartition::new("t", 0), None),
            (TopicPartition::new("t", 1), Some(E::TransactionAbortable)),
        ]
    );
    // v4 callers predate TRANSACTION_ABORTABLE (KIP-890): they get INVALID_TXN_STATE.
    assert_eq!(
        h.add_with("tx", p.producer_id, 0, &[("t", 0), ("t", 1)], 4, true),
        vec![
            (TopicPartition::new("t", 0), None),
            (TopicPartition::new("t", 1), Some(E::InvalidTxnState)),
        ]
    );
    assert_eq!(h.log.len(), logged, "verification writes nothing");
    assert_eq!(
        h.add_with("tx", p.producer_id, 1, &[("t", 0)], 4, true),
        vec![(TopicPartition::new("t", 0), Some(E::ProducerFenced))]
    );
    assert_eq!(
        h.add_with("nobody", 1, 0, &[("t", 0)], 4, true),
        vec![(
            TopicPartition::new("t", 0),
            Some(E::InvalidProducerIdMapping)
        )]
    );
    // Brokers may verify internal partitions (TxnOffsetCommit's).
    assert_eq!(
        h.add_with(
            "tx",
            p.producer_id,
            0,
            &[("__consumer_offsets", 1)],
            5,
            true
        ),
        vec![(
            TopicPartition::new("__consumer_offsets", 1),
            Some(E::TransactionAbortable)
        )]
    );
    h.end("tx", p.producer_id, 0, true);
    assert_eq!(
        h.add_with("tx", p.producer_id, 0, &[("t", 0)], 4, true),
        vec![(TopicPartition::new("t", 0), Some(E::ConcurrentTransactions))]
    );
}

#[test]
fn unloading_answers_waiting_requests_and_ignores_late_results() {
    let mut c = TxnCoordinator::new(config(), 0);
    c.add_producer_ids(0, 10);
    c.load(0, 1, &[]);
    let fx = c.init_producer_id(
        0,
        5,
        InitProducerIdRequest {
            transactional_id: Some("tx".into()),
            transaction_timeout_ms: TIMEOUT_MS,
            producer_id: -1,
            producer_epoch: -1,
            version: 4,
        },
    );
    let append = fx.appends[0].clone();
    let fx = c.unload();
    assert_eq!(
        fx.replies,
        vec![Reply::InitProducerId(5, err(E::NotCoordinator))]
    );
    assert!(c.append_done(0, append.id, Ok(())).is_empty());
    assert!(c.transaction("tx").is_none());
}

#[test]
fn describe_and_list_show_the_state() {
    let mut h = Harness::new();
    let a = h.init("a");
    h.add("a", a.producer_id, 0, &[("t", 0), ("u", 2)]);
    let b = h.init("b");
    let d = h.c.describe("a");
    assert_eq!(d.error, None);
    assert_eq!(d.state, "Ongoing");
    assert_eq!((d.producer_id, d.producer_epoch), (a.producer_id, 0));
    assert_eq!(d.transaction_timeout_ms, TIMEOUT_MS);
    assert_eq!(d.transaction_start_time_ms, h.now);
    assert_eq!(
        d.topics,
        vec![("t".to_owned(), vec![0]), ("u".to_owned(), vec![2])]
    );
    assert_eq!(h.c.describe("").error, Some(E::InvalidRequest));
    assert_eq!(h.c.describe("zz").error, Some(E::TransactionalIdNotFound));

    let all = h.c.list(
        h.now,
        &ListTransactionsFilter {
            duration_ms: -1,
            ..Default::default()
        },
    );
    assert_eq!(all.transactions.len(), 2);
    let ongoing = h.c.list(
        h.now,
        &ListTransactionsFilter {
            states: vec!["Ongoing".into(), "Bogus".into()],
            duration_ms: -1,
            ..Default::default()
        },
    );
    assert_eq!(ongoing.unknown_state_filters, vec!["Bogus".to_owned()]);
    assert_eq!(
        ongoing.transactions,
        vec![TransactionListing {
            transactional_id: "a".into(),
            producer_id: a.producer_id,
            state: "Ongoing"
        }]
    );
    let by_pid = h.c.list(
        h.now,
        &ListTransactionsFilter {
            producer_ids: vec![b.producer_id],
            duration_ms: -1,
            ..Default::default()
        },
    );
    assert_eq!(by_pid.transactions[0].transactional_id, "b");
    // KIP-994: only transactions open longer than the duration.
    let long = h.c.list(
        h.now + 1000,
        &ListTransactionsFilter {
            states: vec!["Ongoing".into()],
            duration_ms: 999,
            ..Default::default()
        },
    );
    assert_eq!(long.transactions.len(), 1);
    let longer = h.c.list(
        h.now + 1000,
        &ListTransactionsFilter {
            states: vec!["Ongoing".into()],
            duration_ms: 1000,
            ..Default::default()
        },
    );
    assert!(longer.transactions.is_empty());
}

#[test]
fn the_state_is_the_replay_of_the_log() {
    let mut h = Harness::new();
    let a = h.init("a");
    h.add("a", a.producer_id, 0, &[("t", 0)]);
    h.end("a", a.producer_id, 0, true);
    h.answer_markers(MarkerOutcome::Written);
    let b = h.init("b");
    h.add("b", b.producer_id, 0, &[("t", 1)]);
    let mut replayed = TxnCoordinator::new(config(), 0);
    replayed.load(h.now, 2, &h.log);
    for meta in h.c.transactions() {
        let other = replayed
            .transaction(&meta.transactional_id)
            .expect("replayed");
        assert_eq!(
            (
                meta.producer_id,
                meta.producer_epoch,
                meta.state,
                &meta.partitions,
                meta.start_timestamp_ms,
                meta.last_update_timestamp_ms
            ),
            (
                other.producer_id,
                other.producer_epoch,
                other.state,
                &other.partitions,
                other.start_timestamp_ms,
                other.last_update_timestamp_ms
            ),
        );
    }
}

mod replaying_damaged_logs {
    use super::*;
    use proptest::prelude::*;

    fn arb_value() -> impl Strategy<Value = TransactionLogValue> {
        (
            -2i64..5,
            any::<i16>(),
            -5i32..100_000,
            0usize..8,
            proptest::option::of(proptest::collection::vec(0i32..3, 0..3)),
            any::<i64>(),
            any::<i64>(),
        )
            .prop_map(|(pid, epoch, timeout, state, parts, upd, start)| {
                TransactionLogValue {
                    version: 0,
                    producer_id: pid,
                    previous_producer_id: -1,
                    next_producer_id: -1,
                    producer_epoch: epoch,
                    transaction_timeout_ms: timeout,
                    state: S::ALL[state],
                    partitions: parts.map(|ps| {
                        vec![TxnTopicPartitions {
                            topic: "t".into(),
                            partitions: ps,
                        }]
                    }),
                    last_update_timestamp_ms: upd,
                    start_timestamp_ms: start,
                    client_transaction_version: 0,
                }
            })
    }

    proptest! {
        /// Whatever the log holds, loading it and serving requests never panics.
        #[test]
        fn serving_after_any_log_never_panics(
            values in proptest::collection::vec((0usize..3, proptest::option::of(arb_value())), 0..12),
            ops in proptest::collection::vec((0usize..3, 0u8..6, any::<i16>(), 0i64..5), 0..30),
        ) {
            let ids = ["a", "b", "c"];
            let records: Vec<_> = values
                .into_iter()
                .map(|(i, v)| record(ids[i], v))
                .collect();
            let mut h = Harness::new();
            let fx = h.c.load(h.now, 2, &records);
            h.carry(fx);
            for (i, op, epoch, pid) in ops {
                let id = ids[i];
                h.now += 7_000;
                match op {
                    0 => { h.init(id); }
                    1 => { h.init_with(id, TIMEOUT_MS, pid, epoch.max(0), 4); }
                    2 => { h.add_with(id, pid, epoch, &[("t", 1)], 3, false); }
                    3 => { h.end(id, pid, epoch, epoch % 2 == 0); }
                    4 => h.answer_markers(MarkerOutcome::Written),
                    _ => { let now = h.now + 600_000; h.tick_at(now); }
                }
            }
        }
    }
}
